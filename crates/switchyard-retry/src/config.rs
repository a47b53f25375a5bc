//! What a retry layer does: how many attempts, which methods are idempotent, which statuses are
//! retried, the budget, the backoff and the replay buffer's bound, as a config file writes them.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use switchyard_core::Code;

/// gRPC's cap on attempts (the first one included), whatever a policy asks (gRFC A6).
pub const MAX_ATTEMPTS: u32 = 5;

/// A retry policy, after gRPC's `retryPolicy` (gRFC A6) plus a budget.
///
/// Read from TOML or JSON with every field optional (the defaults below); durations are
/// strings (`"25ms"`):
///
/// ```toml
/// retry = { attempts = 3, idempotent = ["/inference.GRPCInferenceService/*"] }
/// ```
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct RetryConfig {
    /// Attempts per request, the first one included: 2 to [`MAX_ATTEMPTS`]; 3 by default.
    pub attempts: u32,
    /// Methods whose calls may run twice (`/pkg.Service/Method`, or `/pkg.Service/*` for all of
    /// a service's): only these are retried on a retryable status. None by default.
    pub idempotent: Vec<MethodPattern>,
    /// The statuses retried for idempotent methods, by name: `["UNAVAILABLE"]` by default.
    pub codes: Vec<CodeName>,
    /// The first backoff's upper bound (each wait is drawn uniformly below the current bound):
    /// `"25ms"` by default.
    #[serde(with = "duration")]
    pub initial_backoff: Duration,
    /// The bound's ceiling: `"1s"` by default.
    #[serde(with = "duration")]
    pub max_backoff: Duration,
    /// The bound's growth per retry: 2 by default.
    pub backoff_multiplier: f64,
    /// Retries allowed: a share of recent requests plus a floor (hedges come out of it too).
    pub budget: BudgetConfig,
    /// Hedging (gRFC A6's `hedgingDelay`): a unary call of an idempotent method that has no
    /// response this long after it was sent, and whose request has been sent whole, is sent once
    /// more; the first answer wins and the other attempt is cancelled. Off by default.
    #[serde(with = "optional_duration")]
    pub hedge_after: Option<Duration>,
    /// Request bytes kept for a replay (gRPC's per-RPC buffer limit): a request that sends more
    /// before its response begins is committed to its first endpoint. 256 KiB by default.
    pub buffer_bytes: usize,
    /// Methods, among the idempotent ones, whose response is held until its trailers before the
    /// caller sees any of it: a stream reset or a connection lost mid-response, or trailers with a
    /// retryable status after a message, is then retried as a call that never answered (gRFC A6
    /// commits a call at its response's headers, so these would fail). Meant for unary methods:
    /// a streaming method's messages would wait for its end. None by default.
    pub hold_responses: Vec<MethodPattern>,
    /// The most response bytes held for one call: past it, what was held and the rest are passed
    /// on, and the call is committed. 4 MiB by default (gRPC's default largest message).
    pub hold_bytes: usize,
}

/// A retry budget, as tower's `TpsBudget` (and linkerd's) keeps it: retries may be `ratio` of
/// the requests of the last `ttl`, plus `min_per_second`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BudgetConfig {
    /// Retries per request at steady state: 0.1 by default (retries add at most 10 % to the
    /// requests sent upstream).
    pub ratio: f32,
    /// Retries allowed per second whatever the traffic (a client that has just started): 10 by
    /// default.
    pub min_per_second: u32,
    /// How long a request counts towards the budget: 1 to 60 s, `"10s"` by default.
    #[serde(with = "duration")]
    pub ttl: Duration,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        Self { ratio: 0.1, min_per_second: 10, ttl: Duration::from_secs(10) }
    }
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            attempts: 3,
            idempotent: Vec::new(),
            codes: vec![CodeName(Code::Unavailable)],
            initial_backoff: Duration::from_millis(25),
            max_backoff: Duration::from_secs(1),
            backoff_multiplier: 2.0,
            budget: BudgetConfig::default(),
            hedge_after: None,
            buffer_bytes: 256 << 10,
            hold_responses: Vec::new(),
            hold_bytes: 4 << 20,
        }
    }
}

/// A setting out of its range: the field (`attempts`, `budget.ttl`) and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The field, as a path below the retry table.
    pub field: &'static str,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}`: {}", self.field, self.message)
    }
}

impl std::error::Error for ConfigError {}

impl RetryConfig {
    /// Checks the ranges serde cannot: an error names the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let error = |field, message: String| Err(ConfigError { field, message });
        if !(2..=MAX_ATTEMPTS).contains(&self.attempts) {
            return error("attempts", format!("{} is not between 2 and {MAX_ATTEMPTS}", self.attempts));
        }
        if self.initial_backoff.is_zero() {
            return error("initial_backoff", "must be above zero".into());
        }
        if self.max_backoff < self.initial_backoff {
            return error("max_backoff", "must be at least `initial_backoff`".into());
        }
        if !(self.backoff_multiplier.is_finite() && self.backoff_multiplier >= 1.0) {
            return error(
                "backoff_multiplier",
                format!("{} is not a number of at least 1", self.backoff_multiplier),
            );
        }
        if self.hold_bytes == 0 {
            return error("hold_bytes", "must be above zero".into());
        }
        let budget = &self.budget;
        if !(budget.ratio.is_finite() && (0.0..=1000.0).contains(&budget.ratio)) {
            return error("budget.ratio", format!("{} is not between 0 and 1000", budget.ratio));
        }
        if budget.min_per_second >= i32::MAX as u32 {
            return error("budget.min_per_second", format!("{} is too large", budget.min_per_second));
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(60)).contains(&budget.ttl) {
            return error("budget.ttl", format!("{:?} is not between 1s and 60s", budget.ttl));
        }
        Ok(())
    }

    /// Whether calls of `path` (`/pkg.Service/Method`) are marked idempotent.
    pub fn is_idempotent(&self, path: &str) -> bool {
        self.idempotent.iter().any(|pattern| pattern.matches(path))
    }

    /// The bound on the response bytes held for a call of `path`, if its response is held to its
    /// trailers (an idempotent method listed in `hold_responses`).
    pub fn hold_limit(&self, path: &str) -> Option<usize> {
        let held =
            self.is_idempotent(path) && self.hold_responses.iter().any(|pattern| pattern.matches(path));
        held.then_some(self.hold_bytes)
    }

    /// Whether `code` is a retryable status (for idempotent methods).
    pub fn is_retryable(&self, code: Code) -> bool {
        self.codes.iter().any(|c| c.0 == code)
    }
}

/// A method path, or a service's methods: `/pkg.Service/Method` or `/pkg.Service/*`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MethodPattern {
    /// The full path, or the service's prefix (`/pkg.Service/`) when `wildcard`.
    path: String,
    wildcard: bool,
}

impl MethodPattern {
    /// Reads a pattern: `/pkg.Service/Method` or `/pkg.Service/*`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "{text:?} is not a method (`/pkg.Service/Method`) or a service's methods (`/pkg.Service/*`)"
            )
        };
        let rest = text.strip_prefix('/').ok_or_else(bad)?;
        let (service, method) = rest.split_once('/').ok_or_else(bad)?;
        if service.is_empty() || method.is_empty() || method.contains('/') {
            return Err(bad());
        }
        if method == "*" {
            return Ok(Self { path: text[..text.len() - 1].to_owned(), wildcard: true });
        }
        if method.contains('*') {
            return Err(bad());
        }
        Ok(Self { path: text.to_owned(), wildcard: false })
    }

    /// Whether a call of `path` matches.
    pub fn matches(&self, path: &str) -> bool {
        if self.wildcard { path.starts_with(&self.path) } else { path == self.path }
    }
}

impl<'de> Deserialize<'de> for MethodPattern {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// A gRPC status code by its name (`UNAVAILABLE`, `RESOURCE_EXHAUSTED`, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CodeName(pub Code);

/// The codes by name, as gRPC writes them.
const CODE_NAMES: [(&str, Code); 16] = [
    ("CANCELLED", Code::Cancelled),
    ("UNKNOWN", Code::Unknown),
    ("INVALID_ARGUMENT", Code::InvalidArgument),
    ("DEADLINE_EXCEEDED", Code::DeadlineExceeded),
    ("NOT_FOUND", Code::NotFound),
    ("ALREADY_EXISTS", Code::AlreadyExists),
    ("PERMISSION_DENIED", Code::PermissionDenied),
    ("RESOURCE_EXHAUSTED", Code::ResourceExhausted),
    ("FAILED_PRECONDITION", Code::FailedPrecondition),
    ("ABORTED", Code::Aborted),
    ("OUT_OF_RANGE", Code::OutOfRange),
    ("UNIMPLEMENTED", Code::Unimplemented),
    ("INTERNAL", Code::Internal),
    ("UNAVAILABLE", Code::Unavailable),
    ("DATA_LOSS", Code::DataLoss),
    ("UNAUTHENTICATED", Code::Unauthenticated),
];

impl<'de> Deserialize<'de> for CodeName {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        CODE_NAMES
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(&text))
            .map(|&(_, code)| Self(code))
            .ok_or_else(|| {
                let names: Vec<&str> = CODE_NAMES.iter().map(|(name, _)| *name).collect();
                serde::de::Error::custom(format!(
                    "{text:?} is not a retryable gRPC status; expected one of: {}",
                    names.join(", ")
                ))
            })
    }
}

/// An optional duration as a string (`"50ms"`), above zero.
mod optional_duration {
    use std::time::Duration;

    pub(super) fn deserialize<'de, D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Duration>, D::Error> {
        let duration = super::duration::deserialize(deserializer)?;
        if duration.is_zero() {
            return Err(serde::de::Error::custom("must be above zero"));
        }
        Ok(Some(duration))
    }
}

/// Durations as strings (`"25ms"`).
mod duration {
    use std::time::Duration;

    use serde::Deserialize;

    pub(super) fn deserialize<'de, D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        humantime::parse_duration(&text)
            .map_err(|e| serde::de::Error::custom(format!("{text:?}: {e} (e.g. \"25ms\")")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<RetryConfig, String> {
        let config: RetryConfig = toml::from_str(text).map_err(|e| e.message().to_owned())?;
        config.validate().map_err(|e| e.to_string())?;
        Ok(config)
    }

    #[test]
    fn defaults_and_patterns() {
        let config = parse("idempotent = [\"/inference.GRPCInferenceService/*\", \"/a.B/C\"]").unwrap();
        assert_eq!(config.attempts, 3);
        assert!(config.is_idempotent("/inference.GRPCInferenceService/ModelInfer"));
        assert!(config.is_idempotent("/a.B/C"));
        assert!(!config.is_idempotent("/a.B/D"));
        assert!(!config.is_idempotent("/inference.GRPCInferenceServiceX/ModelInfer"));
        assert!(config.is_retryable(Code::Unavailable));
        assert!(!config.is_retryable(Code::Internal));
    }

    #[test]
    fn bad_values_name_their_field() {
        assert!(parse("attempts = 9").unwrap_err().contains("`attempts`"));
        assert!(parse("idempotent = [\"/a.B/C*\"]").unwrap_err().contains("not a method"));
        assert!(parse("codes = [\"UNAVALABLE\"]").unwrap_err().contains("UNAVALABLE"));
        assert!(parse("initial_backoff = \"soon\"").unwrap_err().contains("soon"));
        assert!(parse("budget = { ttl = \"2m\" }").unwrap_err().contains("`budget.ttl`"));
        assert!(parse("atempts = 2").unwrap_err().contains("atempts"));
        assert!(parse("hedge_after = \"0s\"").unwrap_err().contains("above zero"));
        assert_eq!(parse("hedge_after = \"50ms\"").unwrap().hedge_after, Some(Duration::from_millis(50)));
        assert!(parse("hold_bytes = 0").unwrap_err().contains("`hold_bytes`"));
    }

    #[test]
    fn only_idempotent_methods_have_their_responses_held() {
        let config =
            parse("idempotent = [\"/a.B/*\"]\nhold_responses = [\"/a.B/Get\", \"/c.D/Get\"]").unwrap();
        assert_eq!(config.hold_limit("/a.B/Get"), Some(4 << 20));
        assert_eq!(config.hold_limit("/a.B/Stream"), None);
        // Listed but not idempotent: a response cut mid-way could not be retried anyway.
        assert_eq!(config.hold_limit("/c.D/Get"), None);
    }
}
