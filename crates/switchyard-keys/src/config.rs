//! What the key layer reads and how much it may hold back: [`KeysConfig`].

use std::time::Duration;

use http::HeaderName;
use serde::{Deserialize, Deserializer};

/// The default routing-key header.
pub const DEFAULT_SESSION_HEADER: &str = "x-session-id";
/// The default priority header.
pub const DEFAULT_PRIORITY_HEADER: &str = "x-priority";
/// The default model header (the gateway's, too).
pub const DEFAULT_MODEL_HEADER: &str = "x-model-name";
/// Tokens per prefix block by default: 512, the block of the Mooncake traces and the sim engine.
pub const DEFAULT_BLOCK_TOKENS: u32 = 512;
/// Tokens a request may generate when it does not say: 64, as the worker assumes.
pub const DEFAULT_MAX_TOKENS: u32 = 64;
/// Body bytes read, at most, to find the keys of one request: 1 MiB.
pub const DEFAULT_MAX_PEEK_BYTES: usize = 1024 * 1024;
/// Body frames read, at most, to find the keys of one request: 1024.
pub const DEFAULT_MAX_PEEK_FRAMES: u32 = 1024;
/// How long a request's first message may take to arrive: 5 s.
pub const DEFAULT_PEEK_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes the peeks of one connection may hold back at once: 16 MiB.
pub const DEFAULT_CONNECTION_BUDGET: usize = 16 * 1024 * 1024;

/// The settings of the key layer.
///
/// Build it with [`KeysConfig::default`] and the `with_*` methods, or read it from TOML (for
/// instance a gateway's `[keys]` or `[pool.keys]` table); every field may be left out:
///
/// ```toml
/// session_header = "x-session-id"
/// priority_header = "x-priority"
/// model_header = "x-model-name"
/// read_body = true
/// prefix_from_text = true
/// block_tokens = 512
/// default_max_tokens = 64
/// max_peek_bytes = 1048576
/// max_peek_frames = 1024
/// peek_timeout = "5s"
/// connection_budget = 16777216
/// ```
///
/// Unknown fields are refused, so that a typo is found when the file is read. Numbers that must
/// be positive (`max_peek_frames`, `connection_budget`) are checked then too.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct KeysConfig {
    /// The header whose value is the request's [`RoutingKey`](switchyard_core::RoutingKey).
    /// Default `x-session-id`.
    #[serde(deserialize_with = "header_name")]
    pub session_header: HeaderName,
    /// The header whose value is the request's [`Priority`](switchyard_core::Priority)
    /// (`critical`, `standard` or `sheddable`). Default `x-priority`. A value that is none of
    /// these is ignored (logged at debug level): the request keeps the default priority rather
    /// than being refused for an advisory header.
    #[serde(deserialize_with = "header_name")]
    pub priority_header: HeaderName,
    /// The header naming the [`ModelName`](switchyard_core::ModelName); it takes precedence
    /// over the `model_name` of the first message. Default `x-model-name`.
    #[serde(deserialize_with = "header_name")]
    pub model_header: HeaderName,
    /// Whether to read the first message of KServe model methods at all. Default `true`; with
    /// `false`, only metadata keys are extracted and no body is held back.
    pub read_body: bool,
    /// Whether [`PrefixBlocks`](switchyard_core::PrefixBlocks) are hashed from the prompt's
    /// text when the request has no `prefix_hashes` parameter. Default `true`. Hashing costs
    /// about 1.2 ns per byte of prompt (1.3 ms for the 1 MiB a peek reads at most); with
    /// `false` the text is skipped (its length, read from its length prefix, still gives the
    /// size), for pools whose policy does not route on prefixes.
    pub prefix_from_text: bool,
    /// Tokens per prefix block when [`PrefixBlocks`](switchyard_core::PrefixBlocks) are hashed
    /// from the prompt's text. Default 512.
    pub block_tokens: u32,
    /// The [`RequestSize::max_tokens`](switchyard_core::RequestSize) of a request without a
    /// `max_tokens` parameter. Default 64, the worker's.
    pub default_max_tokens: u32,
    /// Body bytes read, at most, per request. Past it the scan stops, the keys found so far are
    /// kept (a prompt's size is known from its length prefix, its prefix blocks from the blocks
    /// read) and the request goes on. Default 1 MiB.
    pub max_peek_bytes: usize,
    /// Body frames read, at most, per request, before its keys are known: a request whose first
    /// message needs more is refused (`RESOURCE_EXHAUSTED`), since only a client trying to make
    /// the proxy work per byte sends them so. Default 1024.
    #[serde(deserialize_with = "positive_u32")]
    pub max_peek_frames: u32,
    /// How long a request's first message may take to arrive (or the request's own deadline,
    /// if sooner); past it the request is refused (`DEADLINE_EXCEEDED`). A `ModelStreamInfer`
    /// client must send its first message within this time. Default 5 s; in TOML a string
    /// such as `"5s"` or `"500ms"`.
    #[serde(deserialize_with = "duration")]
    pub peek_timeout: Duration,
    /// Bytes the peeks of one connection may hold back at once (see
    /// [`Keys::for_connection`](crate::Keys::for_connection)); each frame held is charged 64
    /// bytes more than its length, for the memory a frame pins besides its data. A peek that
    /// finds it used up stops at the frame it could not pay for (held all the same), with the
    /// keys found so far, and its request goes on. Default 16 MiB.
    #[serde(deserialize_with = "positive_usize")]
    pub connection_budget: usize,
    /// Other block sizes the prompt's text is hashed with in the same pass, for pools that set
    /// their own ([`PoolKeys`](crate::PoolKeys)); at most
    /// [`MAX_EXTRA_BLOCK_SIZES`](crate::MAX_EXTRA_BLOCK_SIZES). Set in code
    /// ([`with_also_block_tokens`](Self::with_also_block_tokens)), not read from TOML.
    #[serde(skip)]
    pub(crate) also_block_tokens: [u32; crate::MAX_EXTRA_BLOCK_SIZES],
}

impl Default for KeysConfig {
    fn default() -> Self {
        Self {
            session_header: HeaderName::from_static(DEFAULT_SESSION_HEADER),
            priority_header: HeaderName::from_static(DEFAULT_PRIORITY_HEADER),
            model_header: HeaderName::from_static(DEFAULT_MODEL_HEADER),
            read_body: true,
            prefix_from_text: true,
            block_tokens: DEFAULT_BLOCK_TOKENS,
            default_max_tokens: DEFAULT_MAX_TOKENS,
            max_peek_bytes: DEFAULT_MAX_PEEK_BYTES,
            max_peek_frames: DEFAULT_MAX_PEEK_FRAMES,
            peek_timeout: DEFAULT_PEEK_TIMEOUT,
            connection_budget: DEFAULT_CONNECTION_BUDGET,
            also_block_tokens: [0; crate::MAX_EXTRA_BLOCK_SIZES],
        }
    }
}

impl KeysConfig {
    /// The same config, reading the routing key from `header`.
    pub fn with_session_header(mut self, header: HeaderName) -> Self {
        self.session_header = header;
        self
    }

    /// The same config, reading the priority from `header`.
    pub fn with_priority_header(mut self, header: HeaderName) -> Self {
        self.priority_header = header;
        self
    }

    /// The same config, reading the model from `header`.
    pub fn with_model_header(mut self, header: HeaderName) -> Self {
        self.model_header = header;
        self
    }

    /// The same config, reading first messages (`true`) or metadata only (`false`).
    pub fn with_read_body(mut self, read_body: bool) -> Self {
        self.read_body = read_body;
        self
    }

    /// The same config, hashing prefix blocks from the text (`true`) or taking them from the
    /// `prefix_hashes` parameter only (`false`).
    pub fn with_prefix_from_text(mut self, hash: bool) -> Self {
        self.prefix_from_text = hash;
        self
    }

    /// The same config, hashing prefix blocks of `tokens` tokens.
    pub fn with_block_tokens(mut self, tokens: u32) -> Self {
        self.block_tokens = tokens;
        self
    }

    /// The same config, assuming `tokens` generated tokens when a request does not say.
    pub fn with_default_max_tokens(mut self, tokens: u32) -> Self {
        self.default_max_tokens = tokens;
        self
    }

    /// The same config, reading at most `bytes` body bytes per request.
    pub fn with_max_peek_bytes(mut self, bytes: usize) -> Self {
        self.max_peek_bytes = bytes;
        self
    }

    /// The same config, reading at most `frames` body frames per request (at least 1).
    pub fn with_max_peek_frames(mut self, frames: u32) -> Self {
        self.max_peek_frames = frames.max(1);
        self
    }

    /// The same config, waiting at most `timeout` for a request's first message.
    pub fn with_peek_timeout(mut self, timeout: Duration) -> Self {
        self.peek_timeout = timeout;
        self
    }

    /// The same config, letting one connection's peeks hold back `bytes` at once (at least 1).
    pub fn with_connection_budget(mut self, bytes: usize) -> Self {
        self.connection_budget = bytes.max(1);
        self
    }

    /// The same config, also hashing the prompt's text in blocks of each of `sizes` tokens (for
    /// pools with a [`PoolKeys::block_tokens`](crate::PoolKeys) of their own), in the same pass.
    /// Zeros, repeats and [`block_tokens`](Self::block_tokens) itself are left out; past
    /// [`MAX_EXTRA_BLOCK_SIZES`](crate::MAX_EXTRA_BLOCK_SIZES) distinct sizes, the rest are
    /// refused with the first of them, since each costs one more hash of every prompt byte.
    pub fn with_also_block_tokens(mut self, sizes: impl IntoIterator<Item = u32>) -> Result<Self, u32> {
        let mut kept = [0; crate::MAX_EXTRA_BLOCK_SIZES];
        let mut n = 0;
        for size in sizes {
            if size == 0 || size == self.block_tokens || kept[..n].contains(&size) {
                continue;
            }
            let Some(slot) = kept.get_mut(n) else { return Err(size) };
            *slot = size;
            n += 1;
        }
        self.also_block_tokens = kept;
        Ok(self)
    }

    /// The other block sizes the text is hashed with (see
    /// [`with_also_block_tokens`](Self::with_also_block_tokens)).
    pub fn also_block_tokens(&self) -> impl Iterator<Item = u32> + '_ {
        self.also_block_tokens.iter().copied().filter(|&s| s != 0)
    }

    /// The budget as semaphore permits: at least 1, at most what a semaphore and one acquire
    /// (a `u32`) can count.
    pub(crate) fn budget_permits(&self) -> usize {
        self.connection_budget.clamp(1, tokio::sync::Semaphore::MAX_PERMITS.min(u32::MAX as usize))
    }
}

fn header_name<'de, D: Deserializer<'de>>(d: D) -> Result<HeaderName, D::Error> {
    let name = String::deserialize(d)?;
    HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| serde::de::Error::custom(format!("{name:?} is not a valid header name")))
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text)
        .map_err(|e| serde::de::Error::custom(format!("{text:?}: {e} (e.g. \"5s\" or \"500ms\")")))
}

fn positive_u32<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    match u32::deserialize(d)? {
        0 => Err(serde::de::Error::custom("must be at least 1")),
        n => Ok(n),
    }
}

fn positive_usize<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    match usize::deserialize(d)? {
        0 => Err(serde::de::Error::custom("must be at least 1")),
        n => Ok(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_toml_with_defaults_and_refuses_typos() {
        let config: KeysConfig = toml::from_str(
            r#"
            session_header = "X-User"
            peek_timeout = "250ms"
            max_peek_bytes = 4096
            "#,
        )
        .unwrap();
        assert_eq!(
            config,
            KeysConfig::default()
                .with_session_header(HeaderName::from_static("x-user"))
                .with_peek_timeout(Duration::from_millis(250))
                .with_max_peek_bytes(4096)
        );
        assert_eq!(toml::from_str::<KeysConfig>("").unwrap(), KeysConfig::default());

        let typo = toml::from_str::<KeysConfig>("max_peek_byte = 1").unwrap_err().to_string();
        assert!(typo.contains("max_peek_byte"), "{typo}");
        let zero = toml::from_str::<KeysConfig>("max_peek_frames = 0").unwrap_err().to_string();
        assert!(zero.contains("at least 1"), "{zero}");
        let bad = toml::from_str::<KeysConfig>("peek_timeout = \"soon\"").unwrap_err().to_string();
        assert!(bad.contains("soon"), "{bad}");
        let header = toml::from_str::<KeysConfig>("model_header = \"a b\"").unwrap_err().to_string();
        assert!(header.contains("not a valid header name"), "{header}");
    }

    #[test]
    fn embeds_in_a_larger_table() {
        #[derive(Deserialize)]
        struct Pool {
            #[allow(dead_code)]
            name: String,
            #[serde(default)]
            keys: KeysConfig,
        }
        let pool: Pool = toml::from_str("name = \"llama\"\n[keys]\nblock_tokens = 16\n").unwrap();
        assert_eq!(pool.keys.block_tokens, 16);
    }
}
