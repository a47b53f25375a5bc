use prost::Message;

use super::*;

#[path = "../../tests/kserve/mod.rs"]
mod kserve;

use kserve::{
    InferInputTensor, ModelInferRequest, ModelReadyRequest, ParameterChoice, frame_bytes, grpc_frame, param,
    prompt, text_request,
};

const INFER: ScanTarget = ScanTarget {
    model: true,
    infer: true,
    block_tokens: Some(16),
    also_block_tokens: [0; 3],
    default_max_tokens: 64,
};
const MODEL_ONLY: ScanTarget = ScanTarget {
    model: true,
    infer: false,
    block_tokens: Some(16),
    also_block_tokens: [0; 3],
    default_max_tokens: 64,
};

fn scan_pieces(target: ScanTarget, pieces: &[&[u8]]) -> (BodyKeys, Option<Stop>) {
    let mut s = Scanner::new(target);
    for piece in pieces {
        s.feed(piece);
    }
    let stop = s.stopped();
    (s.finish(), stop)
}

fn scan(target: ScanTarget, wire: &[u8]) -> BodyKeys {
    scan_pieces(target, &[wire]).0
}

fn expect(model: &str, prompt_tokens: u32, max_tokens: u32, prefix: PrefixBlocks) -> BodyKeys {
    BodyKeys {
        model: Some(ModelName::new(model)),
        size: Some(RequestSize::new(prompt_tokens, max_tokens)),
        prefix: Some(prefix),
        by_size: Vec::new(),
    }
}

#[test]
fn reads_the_keys_of_a_text_request() {
    let text = prompt(1000);
    let wire = grpc_frame(&text_request("llama", &text, Some(17)));
    assert_eq!(scan(INFER, &wire), expect("llama", 250, 17, PrefixBlocks::from_text(&text, 16)));

    // No max_tokens: the default. The text length rounds up to whole tokens.
    let wire = grpc_frame(&text_request("llama", &text[..9], None));
    assert_eq!(scan(INFER, &wire), expect("llama", 3, 64, PrefixBlocks::from_text("", 16)));
}

#[test]
fn hashes_the_text_at_every_block_size_asked_for_in_one_pass() {
    let text = prompt(1000);
    let wire = grpc_frame(&text_request("llama", &text, Some(17)));
    let target = ScanTarget { also_block_tokens: [8, 0, 16], ..INFER };
    let keys = scan(target, &wire);
    assert_eq!(keys.prefix, Some(PrefixBlocks::from_text(&text, 16)));
    assert_eq!(keys.by_size, vec![(8, PrefixBlocks::from_text(&text, 8))], "16 is the layer's own");
    // Cut in pieces, the same blocks.
    let (pieces, _) = scan_pieces(target, &wire.chunks(7).collect::<Vec<_>>());
    assert_eq!(pieces.by_size, keys.by_size);
    // A prefix_hashes parameter wins at every size: nothing is hashed.
    let mut req = text_request("m", &text, None);
    req.parameters.insert(PREFIX_HASHES.into(), param(ParameterChoice::StringParam("4,5".into())));
    let keys = scan(target, &grpc_frame(&req));
    assert_eq!((keys.prefix, keys.by_size), (Some(PrefixBlocks::new(vec![4, 5])), vec![]));
}

#[test]
fn parameters_override_the_text_in_every_integer_form() {
    let text = prompt(300);
    for (prompt_param, max_param) in [
        (ParameterChoice::Int64Param(2048), ParameterChoice::StringParam(" 17 ".into())),
        (ParameterChoice::Uint64Param(2048), ParameterChoice::DoubleParam(17.0)),
        (ParameterChoice::StringParam("2048".into()), ParameterChoice::Uint64Param(17)),
    ] {
        let mut req = text_request("m", &text, None);
        req.parameters.insert(PROMPT_TOKENS.into(), param(prompt_param));
        req.parameters.insert(MAX_TOKENS.into(), param(max_param));
        req.parameters.insert(PREFIX_HASHES.into(), param(ParameterChoice::StringParam("4, 5,6".into())));
        req.parameters.insert("temperature".into(), param(ParameterChoice::DoubleParam(0.5)));
        assert_eq!(scan(INFER, &grpc_frame(&req)), expect("m", 2048, 17, PrefixBlocks::new(vec![4, 5, 6])));
    }
    // Values the worker refuses are ignored here: the text and the default apply.
    let mut req = text_request("m", &text, None);
    req.parameters.insert(PROMPT_TOKENS.into(), param(ParameterChoice::Int64Param(0)));
    req.parameters.insert(MAX_TOKENS.into(), param(ParameterChoice::BoolParam(true)));
    req.parameters.insert(PREFIX_HASHES.into(), param(ParameterChoice::StringParam("1,x".into())));
    assert_eq!(scan(INFER, &grpc_frame(&req)), expect("m", 75, 64, PrefixBlocks::from_text(&text, 16)));
}

#[test]
fn reads_the_text_from_raw_input_contents() {
    let text = prompt(200);
    let mut req = text_request("m", "", Some(5));
    req.inputs.insert(0, InferInputTensor { name: "other".into(), ..Default::default() });
    req.inputs[1].contents = None;
    let mut raw = u32::try_from(text.len()).unwrap().to_le_bytes().to_vec();
    raw.extend_from_slice(text.as_bytes());
    req.raw_input_contents = vec![vec![1, 2, 3, 4, 5], raw];
    assert_eq!(scan(INFER, &grpc_frame(&req)), expect("m", 50, 5, PrefixBlocks::from_text(&text, 16)));
}

#[test]
fn a_request_without_text_or_size_has_only_a_model() {
    let mut req = text_request("m", "", Some(5));
    req.inputs.clear();
    let keys = scan(INFER, &grpc_frame(&req));
    assert_eq!(
        keys,
        BodyKeys { model: Some(ModelName::new("m")), size: None, prefix: None, by_size: vec![] }
    );
}

#[test]
fn reads_only_the_model_of_other_model_methods() {
    let wire = grpc_frame(&ModelReadyRequest { name: "llama".into(), version: "1".into() });
    let (keys, stop) = scan_pieces(MODEL_ONLY, &[&wire]);
    assert_eq!(keys, BodyKeys { model: Some(ModelName::new("llama")), ..Default::default() });
    assert_eq!(stop, Some(Stop::Complete));
}

#[test]
fn every_split_gives_the_same_keys() {
    let mut req = text_request("llama-3-8b", &prompt(150), Some(300));
    req.parameters.insert(PREFIX_HASHES.into(), param(ParameterChoice::StringParam("11,22,33".into())));
    req.parameters.insert(PROMPT_TOKENS.into(), param(ParameterChoice::StringParam("1234567".into())));
    req.parameters.insert("z_last".into(), param(ParameterChoice::DoubleParam(1.5)));
    let mut wire = grpc_frame(&req);
    wire.extend_from_slice(b"next message bytes");
    let whole = scan(INFER, &wire);
    assert_eq!(whole, expect("llama-3-8b", 1_234_567, 300, PrefixBlocks::new(vec![11, 22, 33])));
    // One cut anywhere: inside the prefix, a varint, a length, a name, the hash list.
    for i in 0..=wire.len() {
        let (keys, _) = scan_pieces(INFER, &[&wire[..i], &wire[i..]]);
        assert_eq!(keys, whole, "split at {i}");
    }
    // Two cuts anywhere.
    for i in 0..wire.len() {
        for j in i..wire.len() {
            let (keys, _) = scan_pieces(INFER, &[&wire[..i], &wire[i..j], &wire[j..]]);
            assert_eq!(keys, whole, "split at {i} and {j}");
        }
    }
    // One byte at a time.
    let pieces: Vec<&[u8]> = wire.chunks(1).collect();
    assert_eq!(scan_pieces(INFER, &pieces).0, whole);
}

#[test]
fn the_model_behind_other_fields_is_found() {
    // Field 3 (id, 100 KiB) and field 2 written before field 1.
    let mut bytes = ModelInferRequest { id: "i".repeat(100 * 1024), ..Default::default() }.encode_to_vec();
    bytes.extend(ModelInferRequest { model_version: "7".into(), ..Default::default() }.encode_to_vec());
    bytes.extend(text_request("hidden", &prompt(64), Some(3)).encode_to_vec());
    let wire = frame_bytes(&bytes);
    let pieces: Vec<&[u8]> = wire.chunks(1000).collect();
    assert_eq!(
        scan_pieces(INFER, &pieces).0,
        expect("hidden", 16, 3, PrefixBlocks::from_text(&prompt(64), 16))
    );
    let (keys, _) = scan_pieces(MODEL_ONLY, &pieces);
    assert_eq!(keys.model, Some(ModelName::new("hidden")));
}

#[test]
fn stops_as_soon_as_the_keys_are_known() {
    let mut req = text_request("m", &prompt(100_000), Some(9));
    req.parameters.insert(PROMPT_TOKENS.into(), param(ParameterChoice::Int64Param(7)));
    req.parameters.insert(PREFIX_HASHES.into(), param(ParameterChoice::StringParam("1,2".into())));
    let wire = grpc_frame(&req);
    let mut s = Scanner::new(INFER);
    s.feed(&wire);
    assert_eq!(s.stopped(), Some(Stop::Complete));
    assert!(s.examined() < 200, "stopped before the text: read {} bytes", s.examined());

    // With prefix_hashes but no prompt_tokens, the text's length prefix is enough.
    req.parameters.remove(PROMPT_TOKENS);
    let mut s = Scanner::new(INFER);
    s.feed(&grpc_frame(&req));
    assert_eq!(s.stopped(), Some(Stop::Complete));
    assert!(s.examined() < 200, "stopped at the text's length: read {} bytes", s.examined());
    assert_eq!(s.finish().size, Some(RequestSize::new(25_000, 9)));

    // The text is hashed, then the outputs after it are not read.
    let wire = grpc_frame(&text_request("m", &prompt(1000), Some(9)));
    let mut s = Scanner::new(INFER);
    s.feed(&wire);
    assert_eq!(s.stopped(), Some(Stop::Complete));
    assert!(s.examined() < wire.len() as u64);
}

#[test]
fn a_cut_scan_keeps_what_it_read() {
    let text = prompt(10_000);
    let wire = grpc_frame(&text_request("m", &text, Some(9)));
    let cut = wire.len() / 2;
    let (keys, stop) = scan_pieces(INFER, &[&wire[..cut]]);
    assert_eq!(stop, None);
    assert_eq!(keys.size, Some(RequestSize::new(2500, 9)), "from the length prefix");
    let prefix = keys.prefix.unwrap();
    let full = PrefixBlocks::from_text(&text, 16);
    assert!(!prefix.is_empty() && prefix.len() < full.len());
    assert_eq!(prefix.common_prefix(&full), prefix.len(), "the blocks read are the text's first blocks");
}

#[test]
fn compressed_empty_and_malformed_messages_give_no_keys() {
    let mut wire = grpc_frame(&text_request("m", "hello", Some(9)));
    wire[0] = 1;
    assert_eq!(scan_pieces(INFER, &[&wire]), (BodyKeys::default(), Some(Stop::Compressed)));

    let (keys, stop) = scan_pieces(INFER, &[&[0, 0, 0, 0, 0]]);
    assert_eq!((keys, stop), (BodyKeys::default(), Some(Stop::MessageEnd)));

    // A length past the message's end; a group; a field number 0; an overlong varint.
    for message in [
        &[0x0a, 0x7f, b'a'][..],
        &[0x0b, 0x0c],
        &[0x02, 0x00],
        &[0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f],
    ] {
        let (keys, stop) = scan_pieces(INFER, &[&frame_bytes(message)]);
        assert_eq!((keys, stop), (BodyKeys::default(), Some(Stop::Malformed)), "{message:?}");
    }
    // A field crossing the end of its parameter entry.
    let mut entry = vec![0x22, 3, 0x0a, 5, b'a'];
    entry.extend_from_slice(b"bcd");
    assert_eq!(scan_pieces(INFER, &[&frame_bytes(&entry)]).1, Some(Stop::Malformed));
    // The model read before the fault is kept.
    let mut bytes = vec![0x0a, 1, b'm'];
    bytes.extend_from_slice(&[0x30]);
    bytes.extend_from_slice(&[0xff; 11]);
    assert_eq!(scan(INFER, &frame_bytes(&bytes)).model, Some(ModelName::new("m")));
}

#[test]
fn an_overlong_model_name_is_no_model() {
    let wire =
        grpc_frame(&ModelReadyRequest { name: "m".repeat(MAX_MODEL_NAME + 1), version: String::new() });
    assert_eq!(scan(MODEL_ONLY, &wire).model, None);
}

/// Today's gateway peek re-scans its buffer from byte 0 on every frame: for a message in 16-byte
/// frames it examines about n²/32 bytes (16 GiB for 1 MiB). The scanner examines each byte once.
#[test]
fn work_is_linear_in_the_bytes() {
    let mut bytes = ModelInferRequest { id: "i".repeat(1024 * 1024), ..Default::default() }.encode_to_vec();
    bytes.extend(text_request("late", &prompt(64 * 1024), Some(3)).encode_to_vec());
    let wire = frame_bytes(&bytes);
    let n = wire.len() as u64;
    for frame in [1, 16, 4096] {
        let mut s = Scanner::new(INFER);
        for piece in wire.chunks(frame) {
            s.feed(piece);
        }
        assert!(s.examined() <= n, "{frame}-byte frames: examined {} of {n}", s.examined());
        // One step per frame for the skipped field, one per byte at most elsewhere.
        assert!(s.steps() <= n.div_ceil(frame as u64) + 70_000, "{frame}-byte frames: {} steps", s.steps());
        assert_eq!(s.finish().model, Some(ModelName::new("late")));
    }
}

/// A small deterministic generator (xorshift64*), so the fuzz cases are the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn hostile_bytes_never_panic_and_are_read_once() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut req = text_request("model", &prompt(700), Some(12));
    req.parameters.insert(PREFIX_HASHES.into(), param(ParameterChoice::StringParam("1,2,3".into())));
    req.parameters.insert(PROMPT_TOKENS.into(), param(ParameterChoice::StringParam("99".into())));
    req.raw_input_contents = vec![vec![4, 0, 0, 0, b'a', b'b', b'c', b'd']];
    let valid = grpc_frame(&req);
    for case in 0..20_000 {
        // Half: a valid message with a few bytes changed (past the flag); half: random bytes.
        let mut wire = if case % 2 == 0 {
            let mut w = valid.clone();
            for _ in 0..1 + rng.below(4) {
                let i = 1 + rng.below(w.len() - 1);
                w[i] = rng.next() as u8;
            }
            w
        } else {
            let mut w: Vec<u8> = (0..rng.below(64)).map(|_| rng.next() as u8).collect();
            if let Some(flag) = w.first_mut() {
                *flag = 0;
            }
            w
        };
        if case % 7 == 0 {
            wire.truncate(rng.below(wire.len() + 1));
        }
        for target in [INFER, MODEL_ONLY] {
            let mut s = Scanner::new(target);
            let mut rest = &wire[..];
            while !rest.is_empty() {
                let n = 1 + rng.below(rest.len().min(40));
                s.feed(&rest[..n]);
                rest = &rest[n..];
            }
            assert!(s.examined() <= wire.len() as u64);
            assert!(s.steps() <= wire.len() as u64);
            let _ = s.finish();
        }
    }
}

#[test]
fn without_text_hashing_the_text_is_skipped() {
    let target = ScanTarget { block_tokens: None, ..INFER };
    let wire = grpc_frame(&text_request("m", &prompt(100_000), Some(9)));
    let mut s = Scanner::new(target);
    s.feed(&wire);
    assert_eq!(s.stopped(), Some(Stop::Complete));
    assert!(s.examined() < 200, "stopped at the text's length: read {} bytes", s.examined());
    assert_eq!(
        s.finish(),
        BodyKeys {
            model: Some(ModelName::new("m")),
            size: Some(RequestSize::new(25_000, 9)),
            prefix: None,
            by_size: vec![]
        }
    );

    // The parameter still gives them.
    let mut req = text_request("m", "hi", Some(9));
    req.parameters.insert(PREFIX_HASHES.into(), param(ParameterChoice::StringParam("5".into())));
    assert_eq!(scan(target, &grpc_frame(&req)).prefix, Some(PrefixBlocks::new(vec![5])));
}
