//! A resumable scan of a request's first gRPC message for the keys a KServe request carries.
//!
//! A gRPC message travels as a 5-byte prefix (a compression flag, then the length as a big-endian
//! `u32`) and the protobuf bytes, in as many HTTP/2 DATA frames as the client likes. The
//! [`Scanner`] is a state machine over the protobuf wire format that is fed each frame's bytes
//! once, in order, and never needs them contiguous: a varint, a length prefix or the 5-byte
//! prefix split across frames is carried over in a few bytes of state; a field it does not need is
//! skipped by its length, whatever its size; the prompt is hashed block by block as it streams by
//! ([`PrefixHasher`]). The work is one step per byte at most, however the bytes are framed (the
//! test `work_is_linear_in_the_bytes` pins it), and the memory a few small fields (the model
//! name, a parameter's key, a tensor's name, each bounded).
//!
//! It reads a `ModelInferRequest` (KServe v2: `model_name` = 1, `parameters` = 4, a map of
//! `InferParameter`, `inputs` = 5, `raw_input_contents` = 7), descending into:
//! - the parameters `max_tokens`, `prompt_tokens` (integers: `int64_param`, `uint64_param`, an
//!   integral `double_param` or a `string_param` holding an integer) and `prefix_hashes` (a
//!   `string_param` of comma-separated ids);
//! - the input tensor named `text_input` (its name written before its contents, as encoders do):
//!   the first element of its `contents.bytes_contents`, or, when it has no contents, its element
//!   of `raw_input_contents` (a 4-byte little-endian length, then the bytes).
//!
//! For the other KServe model methods it reads field 1 alone. Protobuf encoders write fields in
//! number order, so the scan stops as soon as every key it looks for is known or can no longer
//! come: `max_tokens` is taken as absent once a field numbered 5 or more is seen, the text once
//! the inputs (or the raw contents, when the text tensor had none) are past. A field written out
//! of order after that point is not seen. A compressed message (flag 1) is not inflated: it gives
//! no key. A malformed one stops the scan, keeping the keys read before the fault (the server
//! will refuse it with a better message than a proxy could).

use switchyard_core::{BYTES_PER_TOKEN, ModelName, PrefixBlocks, RequestSize};

use crate::prefix::HashListParser;
use switchyard_core::PrefixHasher;

/// The size of a gRPC message prefix.
pub(crate) const GRPC_PREFIX: usize = 5;

/// The longest model name read; a longer field 1 gives no model.
const MAX_MODEL_NAME: usize = 1024;
/// The longest parameter key, tensor name or integer string read (ours are at most 13 bytes).
const MAX_SHORT: usize = 64;
/// Nesting the scan descends into: the message, a parameter entry or an input tensor, and the
/// parameter's value or the tensor's contents.
const MAX_DEPTH: usize = 3;

/// The name of the prompt's input tensor.
pub const TEXT_INPUT: &str = "text_input";
/// The parameter giving the prompt's length in tokens.
pub const PROMPT_TOKENS: &str = "prompt_tokens";
/// The parameter giving the most tokens to generate.
pub const MAX_TOKENS: &str = "max_tokens";
/// The parameter giving the prompt's KV-cache block ids, comma-separated.
pub const PREFIX_HASHES: &str = "prefix_hashes";

/// What a scan looks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ScanTarget {
    /// Field 1, the model's name.
    pub(crate) model: bool,
    /// The `ModelInferRequest` keys: the size and the prefix blocks.
    pub(crate) infer: bool,
    /// Tokens per prefix block, when prefix blocks are hashed from the text (`None`: only
    /// the `prefix_hashes` parameter gives them).
    pub(crate) block_tokens: Option<u32>,
    /// Other block sizes the text is hashed with at the same time (0: none), for pools whose
    /// own block size differs ([`PoolKeys`](crate::PoolKeys)).
    pub(crate) also_block_tokens: [u32; MAX_EXTRA_BLOCK_SIZES],
    /// The size's `max_tokens` when the request gives none.
    pub(crate) default_max_tokens: u32,
}

/// The most block sizes besides the layer's own that one scan hashes the text with.
pub const MAX_EXTRA_BLOCK_SIZES: usize = 3;

/// The keys a scan found.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct BodyKeys {
    pub(crate) model: Option<ModelName>,
    pub(crate) size: Option<RequestSize>,
    pub(crate) prefix: Option<PrefixBlocks>,
    /// The text's blocks at the other sizes asked for, when the prefix came from the text.
    pub(crate) by_size: Vec<(u32, PrefixBlocks)>,
}

/// A request's prefix blocks hashed from its text at block sizes other than the key layer's,
/// for the pools that set their own ([`PoolKeys::apply`](crate::PoolKeys::apply) takes them).
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct PrefixBlocksBySize(pub(crate) Vec<(u32, PrefixBlocks)>);

impl BodyKeys {
    /// Puts the keys found into `extensions`; a model already there (from the header) is kept.
    pub(crate) fn insert_into(self, extensions: &mut http::Extensions) {
        if let Some(model) = self.model
            && extensions.get::<ModelName>().is_none()
        {
            extensions.insert(model);
        }
        if let Some(size) = self.size {
            extensions.insert(size);
        }
        if let Some(prefix) = self.prefix {
            extensions.insert(prefix);
        }
        if !self.by_size.is_empty() {
            extensions.insert(PrefixBlocksBySize(self.by_size));
        }
    }
}

/// Why a scan stopped reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// Every key looked for is known, or can no longer come.
    Complete,
    /// The first message ended.
    MessageEnd,
    /// The message is compressed: no key is read from it.
    Compressed,
    /// The bytes are not a protobuf message.
    Malformed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ParamKey {
    Other,
    MaxTokens,
    PromptTokens,
    PrefixHashes,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Context {
    Message,
    ParamEntry { key: ParamKey },
    ParamValue { key: ParamKey },
    Input { index: u32, is_text: bool },
    Contents,
}

/// A message being read, and where (in message bytes) it ends.
#[derive(Debug, Clone, Copy)]
struct Level {
    context: Context,
    end: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Capture {
    Model,
    ParamKey,
    ParamInteger,
    TensorName,
}

/// A varint read a byte at a time.
#[derive(Debug, Clone, Copy, Default)]
struct Varint {
    value: u64,
    shift: u32,
}

impl Varint {
    /// Adds a byte: `Ok(Some(value))` when it was the last, `Err` past ten bytes or 64 bits.
    fn push(&mut self, byte: u8) -> Result<Option<u64>, ()> {
        let bits = u64::from(byte & 0x7f);
        if self.shift > 63 || (self.shift == 63 && bits > 1) {
            return Err(());
        }
        self.value |= bits << self.shift;
        self.shift += 7;
        Ok((byte & 0x80 == 0).then_some(self.value))
    }
}

/// What the scan is in the middle of reading.
#[derive(Debug)]
enum Pending {
    Key(Varint),
    Varint {
        field: u32,
        acc: Varint,
    },
    Fixed {
        field: u32,
        buf: [u8; 8],
        have: u8,
        need: u8,
    },
    Len {
        field: u32,
        acc: Varint,
    },
    Skip {
        left: u64,
    },
    Capture {
        what: Capture,
        buf: Vec<u8>,
        left: u64,
        overflow: bool,
    },
    /// Prompt bytes to hash, then bytes of the same field to skip.
    Text {
        left: u64,
        then_skip: u64,
    },
    Hashes {
        left: u64,
    },
    /// A raw BYTES element: its 4-byte little-endian length, then the text.
    RawLength {
        buf: [u8; 4],
        have: u8,
        left: u64,
    },
}

/// The resumable scan of one request's first message.
#[derive(Debug)]
pub(crate) struct Scanner {
    target: ScanTarget,
    prefix: [u8; GRPC_PREFIX],
    prefix_have: usize,
    stop: Option<Stop>,
    /// Bytes of the message (after the prefix) consumed.
    pos: u64,
    levels: [Level; MAX_DEPTH],
    depth: usize,
    pending: Pending,
    /// The highest field number seen at the top level (encoders write fields in order).
    highest_field: u32,

    model: Option<String>,
    prompt_tokens: Option<u32>,
    max_tokens: Option<u32>,
    hashes: Option<PrefixBlocks>,
    hash_parser: Option<HashListParser>,
    /// The declared length of the prompt's text, once its length prefix is read.
    text_len: Option<u64>,
    text: Option<PrefixHasher>,
    /// The text's hashers at the other block sizes of the target, beside `text`.
    also: Vec<(u32, PrefixHasher)>,
    text_done: bool,
    inputs: u32,
    /// The index of the text tensor when it had no contents (its text is in the raw contents).
    raw_text_index: Option<u32>,
    raws: u32,

    examined: u64,
    steps: u64,
}

impl Scanner {
    pub(crate) fn new(target: ScanTarget) -> Self {
        Self {
            target,
            prefix: [0; GRPC_PREFIX],
            prefix_have: 0,
            stop: None,
            pos: 0,
            levels: [Level { context: Context::Message, end: 0 }; MAX_DEPTH],
            depth: 0,
            pending: Pending::Key(Varint::default()),
            highest_field: 0,
            model: None,
            prompt_tokens: None,
            max_tokens: None,
            hashes: None,
            hash_parser: None,
            text_len: None,
            text: None,
            also: Vec::new(),
            text_done: false,
            inputs: 0,
            raw_text_index: None,
            raws: 0,
            examined: 0,
            steps: 0,
        }
    }

    /// Why the scan stopped, once it has: it reads nothing more after.
    pub(crate) fn stopped(&self) -> Option<Stop> {
        self.stop
    }

    #[cfg(test)]
    /// Bytes consumed so far (prefix included): each byte fed is consumed at most once.
    pub(crate) fn examined(&self) -> u64 {
        self.examined
    }

    #[cfg(test)]
    /// Loop iterations so far: at most one per byte consumed, plus one per field.
    pub(crate) fn steps(&self) -> u64 {
        self.steps
    }

    /// Reads the next bytes of the body. Bytes past the point where the scan stopped are ignored.
    pub(crate) fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() && self.stop.is_none() {
            self.steps += 1;
            let n = if self.prefix_have < GRPC_PREFIX {
                let n = (GRPC_PREFIX - self.prefix_have).min(data.len());
                self.prefix[self.prefix_have..self.prefix_have + n].copy_from_slice(&data[..n]);
                self.prefix_have += n;
                if self.prefix_have == GRPC_PREFIX {
                    self.start_message();
                }
                n
            } else {
                self.step(data)
            };
            self.examined += n as u64;
            data = &data[n..];
        }
    }

    fn start_message(&mut self) {
        if self.prefix[0] != 0 {
            self.stop = Some(Stop::Compressed);
            return;
        }
        let len = u32::from_be_bytes([self.prefix[1], self.prefix[2], self.prefix[3], self.prefix[4]]);
        self.levels[0] = Level { context: Context::Message, end: u64::from(len) };
        self.depth = 1;
        self.item_done();
    }

    /// Consumes a piece of `data` for the item being read: at least one byte, unless `data` is
    /// empty (then it completes an empty field).
    fn step(&mut self, data: &[u8]) -> usize {
        let pending = std::mem::replace(&mut self.pending, Pending::Key(Varint::default()));
        match pending {
            Pending::Key(mut acc) => self.read_varint(data, &mut acc, |s, v| s.on_key(v), Pending::Key),
            Pending::Varint { field, mut acc } => self.read_varint(
                data,
                &mut acc,
                |s, v| s.on_varint(field, v),
                |acc| Pending::Varint { field, acc },
            ),
            Pending::Len { field, mut acc } => {
                self.read_varint(data, &mut acc, |s, v| s.on_len(field, v), |acc| Pending::Len { field, acc })
            }
            Pending::Fixed { field, mut buf, mut have, need } => {
                let n = usize::from(need - have).min(data.len());
                buf[usize::from(have)..usize::from(have) + n].copy_from_slice(&data[..n]);
                have += n as u8;
                self.pos += n as u64;
                if have == need {
                    self.on_fixed(field, buf, need);
                } else {
                    self.pending = Pending::Fixed { field, buf, have, need };
                }
                n
            }
            Pending::Skip { left } => {
                let n = take(left, data);
                self.pos += n as u64;
                if left == n as u64 {
                    self.item_done();
                } else {
                    self.pending = Pending::Skip { left: left - n as u64 };
                }
                n
            }
            Pending::Capture { what, mut buf, left, mut overflow } => {
                let n = take(left, data);
                let cap = if what == Capture::Model { MAX_MODEL_NAME } else { MAX_SHORT };
                if !overflow && buf.len() + n <= cap {
                    buf.extend_from_slice(&data[..n]);
                } else {
                    overflow = true;
                    buf = Vec::new();
                }
                self.pos += n as u64;
                let left = left - n as u64;
                if left == 0 {
                    self.on_capture(what, (!overflow).then_some(buf));
                } else {
                    self.pending = Pending::Capture { what, buf, left, overflow };
                }
                n
            }
            Pending::Text { left, then_skip } => {
                let n = take(left, data);
                if let Some(text) = self.text.as_mut() {
                    text.feed(&data[..n]);
                }
                for (_, hasher) in &mut self.also {
                    hasher.feed(&data[..n]);
                }
                self.pos += n as u64;
                self.continue_text(left - n as u64, then_skip);
                n
            }
            Pending::Hashes { left } => {
                let n = take(left, data);
                if let Some(parser) = self.hash_parser.as_mut() {
                    parser.feed(&data[..n]);
                }
                self.pos += n as u64;
                let left = left - n as u64;
                if left == 0 {
                    self.hashes = self.hash_parser.take().and_then(HashListParser::finish);
                    self.item_done();
                } else {
                    self.pending = Pending::Hashes { left };
                }
                n
            }
            Pending::RawLength { mut buf, mut have, left } => {
                let n = (4 - usize::from(have)).min(data.len());
                buf[usize::from(have)..usize::from(have) + n].copy_from_slice(&data[..n]);
                have += n as u8;
                self.pos += n as u64;
                let left = left - n as u64;
                if have < 4 {
                    self.pending = Pending::RawLength { buf, have, left };
                    return n;
                }
                let declared = u64::from(u32::from_le_bytes(buf));
                self.text_len = Some(declared);
                let text = declared.min(left);
                if let (None, Some(block_tokens)) = (&self.hashes, self.target.block_tokens) {
                    self.start_text(block_tokens);
                    self.continue_text(text, left - text);
                } else {
                    self.text_done = true;
                    self.continue_text(0, left);
                }
                n
            }
        }
    }

    /// Reads varint bytes; `done` takes the value, `again` rebuilds the pending state.
    fn read_varint(
        &mut self,
        data: &[u8],
        acc: &mut Varint,
        done: impl FnOnce(&mut Self, u64),
        again: impl FnOnce(Varint) -> Pending,
    ) -> usize {
        for (i, &byte) in data.iter().enumerate() {
            match acc.push(byte) {
                Err(()) => {
                    self.pos += i as u64 + 1;
                    self.stop = Some(Stop::Malformed);
                    return i + 1;
                }
                Ok(Some(value)) => {
                    self.pos += i as u64 + 1;
                    done(self, value);
                    return i + 1;
                }
                Ok(None) => {}
            }
        }
        self.pos += data.len() as u64;
        self.pending = again(*acc);
        data.len()
    }

    /// The text begins: its hashers at the layer's block size and the others asked for.
    fn start_text(&mut self, block_tokens: u32) {
        self.text = Some(PrefixHasher::new(block_tokens));
        self.also = self
            .target
            .also_block_tokens
            .iter()
            .filter(|&&size| size != 0 && size != block_tokens)
            .map(|&size| (size, PrefixHasher::new(size)))
            .collect();
    }

    fn continue_text(&mut self, left: u64, then_skip: u64) {
        if left > 0 {
            self.pending = Pending::Text { left, then_skip };
            return;
        }
        self.text_done = true;
        if then_skip > 0 {
            self.pending = Pending::Skip { left: then_skip };
            // The text is known: the scan may be complete without skipping the rest.
            self.check_complete();
        } else {
            self.item_done();
        }
    }

    fn context(&self) -> Context {
        self.levels[self.depth.saturating_sub(1)].context
    }

    fn on_key(&mut self, key: u64) {
        let Ok(field) = u32::try_from(key >> 3) else { return self.malformed() };
        if field == 0 {
            return self.malformed();
        }
        if self.depth == 1 && field > self.highest_field {
            self.highest_field = field;
            self.check_complete();
            if self.stop.is_some() {
                return;
            }
        }
        self.pending = match key & 7 {
            0 => Pending::Varint { field, acc: Varint::default() },
            1 => Pending::Fixed { field, buf: [0; 8], have: 0, need: 8 },
            2 => Pending::Len { field, acc: Varint::default() },
            5 => Pending::Fixed { field, buf: [0; 8], have: 0, need: 4 },
            // Groups (3, 4) are not in these messages; 6 and 7 are no wire type.
            _ => return self.malformed(),
        };
    }

    fn on_varint(&mut self, field: u32, value: u64) {
        if let Context::ParamValue { key } = self.context() {
            match field {
                2 => self.set_param(key, value as i64),
                5 => self.set_param(key, i64::try_from(value).unwrap_or(i64::MAX)),
                _ => {}
            }
        }
        self.item_done();
    }

    fn on_fixed(&mut self, field: u32, buf: [u8; 8], need: u8) {
        if let (Context::ParamValue { key }, 4, 8) = (self.context(), field, need) {
            let d = f64::from_le_bytes(buf);
            if d.is_finite() && d.fract() == 0.0 {
                self.set_param(key, d as i64);
            }
        }
        self.item_done();
    }

    fn on_len(&mut self, field: u32, len: u64) {
        let end = self.levels[self.depth - 1].end;
        if len > end.saturating_sub(self.pos) {
            return self.malformed();
        }
        let infer = self.target.infer;
        self.pending = match (self.context(), field) {
            (Context::Message, 1) if self.target.model && self.model.is_none() => {
                Pending::Capture { what: Capture::Model, buf: Vec::new(), left: len, overflow: false }
            }
            (Context::Message, 4) if infer => {
                return self.push(Context::ParamEntry { key: ParamKey::Other }, len);
            }
            (Context::Message, 5) if infer => {
                let index = self.inputs;
                self.inputs = self.inputs.saturating_add(1);
                return self.push(Context::Input { index, is_text: false }, len);
            }
            (Context::Message, 7) if infer => {
                let index = self.raws;
                self.raws = self.raws.saturating_add(1);
                if self.raw_text_index == Some(index) && self.text_len.is_none() && len >= 4 {
                    Pending::RawLength { buf: [0; 4], have: 0, left: len }
                } else {
                    Pending::Skip { left: len }
                }
            }
            (Context::ParamEntry { .. }, 1) => {
                Pending::Capture { what: Capture::ParamKey, buf: Vec::new(), left: len, overflow: false }
            }
            (Context::ParamEntry { key }, 2) if key != ParamKey::Other => {
                return self.push(Context::ParamValue { key }, len);
            }
            (Context::ParamValue { key: ParamKey::PrefixHashes }, 3) => {
                self.hash_parser = Some(HashListParser::default());
                Pending::Hashes { left: len }
            }
            (Context::ParamValue { key: ParamKey::MaxTokens | ParamKey::PromptTokens }, 3) => {
                Pending::Capture { what: Capture::ParamInteger, buf: Vec::new(), left: len, overflow: false }
            }
            (Context::Input { .. }, 1) => {
                Pending::Capture { what: Capture::TensorName, buf: Vec::new(), left: len, overflow: false }
            }
            (Context::Input { is_text: true, .. }, 5) if self.text_len.is_none() => {
                return self.push(Context::Contents, len);
            }
            (Context::Contents, 8) if self.text_len.is_none() => {
                self.text_len = Some(len);
                if let (None, Some(block_tokens)) = (&self.hashes, self.target.block_tokens) {
                    self.start_text(block_tokens);
                    return self.continue_text(len, 0);
                }
                self.text_done = true;
                Pending::Skip { left: len }
            }
            _ => Pending::Skip { left: len },
        };
        if len == 0 {
            // An empty field: complete it now (no byte will come for it).
            self.step(&[]);
        } else {
            self.check_complete();
        }
    }

    fn push(&mut self, context: Context, len: u64) {
        if self.depth == MAX_DEPTH {
            self.pending = Pending::Skip { left: len };
            if len == 0 {
                self.step(&[]);
            }
            return;
        }
        self.levels[self.depth] = Level { context, end: self.pos + len };
        self.depth += 1;
        if len == 0 {
            // An empty message: it ends here.
            self.item_done();
        }
    }

    fn on_capture(&mut self, what: Capture, bytes: Option<Vec<u8>>) {
        let bytes = bytes.unwrap_or_default();
        let level = self.depth - 1;
        match (what, self.levels[level].context) {
            (Capture::Model, _) => {
                if let Ok(name) = String::from_utf8(bytes)
                    && !name.is_empty()
                {
                    self.model = Some(name);
                }
            }
            (Capture::ParamKey, Context::ParamEntry { .. }) => {
                let key = match bytes.as_slice() {
                    b"max_tokens" => ParamKey::MaxTokens,
                    b"prompt_tokens" => ParamKey::PromptTokens,
                    b"prefix_hashes" => ParamKey::PrefixHashes,
                    _ => ParamKey::Other,
                };
                self.levels[level].context = Context::ParamEntry { key };
            }
            (Capture::ParamInteger, Context::ParamValue { key }) => {
                if let Some(n) = std::str::from_utf8(&bytes).ok().and_then(|s| s.trim().parse::<i64>().ok()) {
                    self.set_param(key, n);
                }
            }
            (Capture::TensorName, Context::Input { index, .. }) => {
                let is_text = bytes == TEXT_INPUT.as_bytes();
                self.levels[level].context = Context::Input { index, is_text };
            }
            _ => {}
        }
        self.item_done();
    }

    /// A parameter's integer value; below 1 it is ignored (the server refuses it).
    fn set_param(&mut self, key: ParamKey, n: i64) {
        if n < 1 {
            return;
        }
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        match key {
            ParamKey::MaxTokens => self.max_tokens = Some(n),
            ParamKey::PromptTokens => self.prompt_tokens = Some(n),
            ParamKey::PrefixHashes | ParamKey::Other => {}
        }
    }

    /// The item at the current position is read: pops the messages that end here.
    fn item_done(&mut self) {
        self.pending = Pending::Key(Varint::default());
        while self.depth > 0 {
            let level = self.levels[self.depth - 1];
            if self.pos > level.end {
                return self.malformed();
            }
            if self.pos < level.end {
                break;
            }
            self.depth -= 1;
            match level.context {
                Context::Message => {
                    self.stop = Some(Stop::MessageEnd);
                    return;
                }
                Context::Input { index, is_text: true } if self.text_len.is_none() => {
                    self.raw_text_index = Some(index);
                }
                _ => {}
            }
        }
        self.check_complete();
    }

    fn check_complete(&mut self) {
        if self.stop.is_some() {
            return;
        }
        let model_ok = !self.target.model || self.model.is_some();
        if !self.target.infer {
            if model_ok {
                self.stop = Some(Stop::Complete);
            }
            return;
        }
        let top = self.highest_field;
        let max_ok = self.max_tokens.is_some() || top >= 5;
        // The text can no longer come: past the inputs with no text tensor awaiting raw contents,
        // past the raw contents, or past the text tensor's raw element (too short to hold one).
        let text_gone = self.text_len.is_none()
            && ((top >= 6 && self.raw_text_index.is_none())
                || top >= 8
                || self.raw_text_index.is_some_and(|i| self.raws > i.saturating_add(1)));
        let prompt_ok = self.prompt_tokens.is_some() || self.text_len.is_some() || text_gone;
        let prefix_ok = self.hashes.is_some()
            || self.text_done
            || text_gone
            || (self.target.block_tokens.is_none() && top >= 5);
        if model_ok && max_ok && prompt_ok && prefix_ok {
            self.stop = Some(Stop::Complete);
        }
    }

    fn malformed(&mut self) {
        self.stop = Some(Stop::Malformed);
    }

    /// The keys found, whether the scan stopped or was cut off (then a prompt's length known from
    /// its length prefix still gives the size, and its blocks read so far the prefix).
    pub(crate) fn finish(self) -> BodyKeys {
        if self.stop == Some(Stop::Compressed) {
            return BodyKeys::default();
        }
        let model = self.model.map(ModelName::new);
        if !self.target.infer {
            return BodyKeys { model, size: None, prefix: None, by_size: Vec::new() };
        }
        let hashes = self.hashes.or_else(|| self.hash_parser.and_then(HashListParser::finish_cut));
        let prompt = self.prompt_tokens.or_else(|| {
            self.text_len.map(|len| u32::try_from(len.div_ceil(BYTES_PER_TOKEN as u64)).unwrap_or(u32::MAX))
        });
        let size =
            prompt.map(|p| RequestSize::new(p, self.max_tokens.unwrap_or(self.target.default_max_tokens)));
        let by_size = match (&hashes, &self.text) {
            (None, Some(_)) => self.also.into_iter().map(|(size, hasher)| (size, hasher.finish())).collect(),
            _ => Vec::new(),
        };
        let prefix = hashes.or_else(|| self.text.map(PrefixHasher::finish));
        BodyKeys { model, size, prefix, by_size }
    }
}

fn take(left: u64, data: &[u8]) -> usize {
    usize::try_from(left).unwrap_or(usize::MAX).min(data.len())
}

#[cfg(test)]
mod tests;
