//! The engine's settings and its roofline cost model: how long one step takes.

use std::time::Duration;

/// Settings of one simulated replica; the defaults model vLLM serving Llama 3.1 8B (bf16) on one
/// H100 SXM 80 GB.
///
/// See the [crate docs](crate) for the model these parameters feed and where the defaults come
/// from. Deserialising fills every missing field from [`EngineConfig::default`]; call
/// [`validate`](EngineConfig::validate) (as [`EngineHandle::spawn`](crate::EngineHandle::spawn)
/// does) before use.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct EngineConfig {
    /// Most sequences in one batch (vLLM `max_num_seqs`): 256.
    pub max_batch: u32,
    /// KV-cache capacity in tokens: 400,000 (≈ 50 GB at 128 KiB per token).
    pub kv_capacity_tokens: u64,
    /// Tokens per prefix-cache block: 512, as in the Mooncake trace's `hash_ids`.
    pub block_tokens: u32,
    /// Token budget of one step, shared by decodes and prefill chunks (vLLM
    /// `max_num_batched_tokens`): 8,192.
    pub max_batched_tokens: u32,
    /// Most requests waiting for admission; one more is refused with
    /// [`SubmitError::QueueFull`](crate::SubmitError::QueueFull): 1,024.
    pub max_queue: usize,
    /// Most output tokens one request may ask for: 32,768.
    pub max_tokens_limit: u32,
    /// Relative replica speed: every step, overhead included, takes `1 / speed` as long (0.5 =
    /// half as fast, about an A100 next to an H100). 1.0.
    pub speed: f64,
    /// Bytes of model weights read by every step: 16.06e9 (8.03 B parameters in bf16).
    pub weights_bytes: f64,
    /// KV-cache bytes per token: 131,072 (2 × 32 layers × 8 KV heads × 128 dims × 2 bytes).
    pub kv_bytes_per_token: f64,
    /// HBM bandwidth in bytes per second: 3.35e12 (H100 SXM).
    pub hbm_bandwidth: f64,
    /// Share of the HBM bandwidth a step achieves: 0.8.
    pub bandwidth_efficiency: f64,
    /// Peak dense bf16 throughput in FLOP/s: 989e12 (H100 SXM).
    pub peak_flops: f64,
    /// Share of the peak a prefill achieves: 0.5.
    pub compute_efficiency: f64,
    /// Linear FLOPs per token (2 × parameters): 16.06e9.
    pub flops_per_token: f64,
    /// Attention FLOPs per prompt token per position it attends to (4 × 32 layers × 4,096
    /// hidden): 524,288. This is the quadratic term of prefill.
    pub attention_flops_per_token_per_position: f64,
    /// Fixed cost of every step (scheduling, sampling, kernel launches): 0.5 ms. Serialised as
    /// `step_overhead_ms`, fractional milliseconds.
    #[serde(with = "duration_ms", rename = "step_overhead_ms")]
    pub step_overhead: Duration,
    /// What kind of server the replica is: an LLM engine (the default, everything above) or a
    /// classic server of `max_batch` parallel slots ([`ReplicaKind::Parallel`]).
    pub kind: ReplicaKind,
    /// KV-cache block events the replica keeps for its subscribers (a ring: the oldest go
    /// first); a subscriber that falls further behind gets a snapshot instead: 16,384.
    pub kv_event_buffer: usize,
}

/// What kind of server a simulated replica models.
///
/// Serialised as a table tagged by `type`: `{ type = "llm" }` or
/// `{ type = "parallel", service_time_ms = 10 }`.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum ReplicaKind {
    /// An LLM engine: continuous batching with chunked prefill under the roofline cost model.
    #[default]
    Llm,
    /// A classic server: `max_batch` requests run in parallel, each for `service_time / speed`
    /// whatever its size; the rest wait in FIFO order (at most `max_queue`). A request's tokens
    /// all come at the end of its service, so its time to first token is its latency. The token
    /// budget, KV cache and prefix cache play no part (a request must still fit the KV capacity,
    /// which is checked at submission for both kinds).
    Parallel {
        /// Time one request takes at speed 1.0, however many run beside it.
        #[serde(with = "duration_ms", rename = "service_time_ms")]
        service_time: Duration,
    },
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_batch: 256,
            kv_capacity_tokens: 400_000,
            block_tokens: 512,
            max_batched_tokens: 8192,
            max_queue: 1024,
            max_tokens_limit: 32_768,
            speed: 1.0,
            weights_bytes: 16.06e9,
            kv_bytes_per_token: 131_072.0,
            hbm_bandwidth: 3.35e12,
            bandwidth_efficiency: 0.8,
            peak_flops: 989e12,
            compute_efficiency: 0.5,
            flops_per_token: 2.0 * 8.03e9,
            attention_flops_per_token_per_position: 524_288.0,
            step_overhead: Duration::from_micros(500),
            kind: ReplicaKind::Llm,
            kv_event_buffer: 16_384,
        }
    }
}

/// A setting that cannot work, naming the field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field} {reason}")]
pub struct ConfigError {
    /// The field's name, as in [`EngineConfig`].
    pub field: &'static str,
    /// What is wrong with it, with the value given.
    pub reason: String,
}

impl ConfigError {
    fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Self { field, reason: reason.into() }
    }
}

/// What one engine step computes: the input of [`EngineConfig::step_time`].
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StepShape {
    /// Tokens already in the KV cache of the sequences in the step (prompt tokens prefilled or
    /// cached, output tokens generated): what the step's attention reads.
    pub context_tokens: u64,
    /// Decoding sequences in the step; each computes one token.
    pub decode_tokens: u64,
    /// Prompt tokens prefilled in the step.
    pub prefill_tokens: u64,
    /// Sum over those prompt tokens of their 1-based position in their prompt: the number of
    /// earlier tokens each attends to, itself included.
    pub prefill_positions: f64,
}

impl StepShape {
    /// A pure decode step: `seqs` sequences of `context_per_seq` tokens each.
    pub fn decode(seqs: u64, context_per_seq: u64) -> Self {
        Self { context_tokens: seqs.saturating_mul(context_per_seq), decode_tokens: seqs, ..Self::default() }
    }

    /// Adds a prefill chunk: `tokens` prompt tokens of one sequence that already has `start`
    /// tokens in the KV cache (positions `start + 1 ..= start + tokens`).
    pub fn add_prefill_chunk(&mut self, start: u64, tokens: u64) {
        self.context_tokens = self.context_tokens.saturating_add(start);
        self.prefill_tokens = self.prefill_tokens.saturating_add(tokens);
        // Σ_{p = start+1}^{start+tokens} p, in f64 so that no prompt length overflows.
        let (s, n) = (start as f64, tokens as f64);
        self.prefill_positions += n * (2.0 * s + n + 1.0) / 2.0;
    }

    /// A step that only prefills `tokens` prompt tokens of one sequence after `start` resident
    /// ones.
    pub fn prefill(start: u64, tokens: u64) -> Self {
        let mut shape = Self::default();
        shape.add_prefill_chunk(start, tokens);
        shape
    }

    /// Tokens computed by the step.
    pub fn batch_tokens(&self) -> u64 {
        self.decode_tokens.saturating_add(self.prefill_tokens)
    }
}

impl EngineConfig {
    /// A classic server of `slots` parallel slots, each request taking `service_time` at speed
    /// 1.0 ([`ReplicaKind::Parallel`]); the other settings are the defaults.
    pub fn parallel(slots: u32, service_time: Duration) -> Self {
        Self { max_batch: slots, kind: ReplicaKind::Parallel { service_time }, ..Self::default() }
    }

    /// For a [`ReplicaKind::Parallel`] replica, the time one request takes at this replica's
    /// speed (`service_time / speed`); `None` for an LLM engine.
    pub fn parallel_service_time(&self) -> Option<Duration> {
        match self.kind {
            ReplicaKind::Llm => None,
            ReplicaKind::Parallel { service_time } => Some(
                Duration::try_from_secs_f64(service_time.as_secs_f64() / self.speed).unwrap_or(Duration::MAX),
            ),
        }
    }

    /// Checks every setting, and names the first one that cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_batch == 0 {
            return Err(ConfigError::new("max_batch", "must be > 0, got 0"));
        }
        if self.kv_capacity_tokens == 0 {
            return Err(ConfigError::new("kv_capacity_tokens", "must be > 0, got 0"));
        }
        if self.block_tokens == 0 {
            return Err(ConfigError::new("block_tokens", "must be > 0, got 0"));
        }
        if self.kind == ReplicaKind::Llm && self.max_batched_tokens < self.max_batch {
            return Err(ConfigError::new(
                "max_batched_tokens",
                format!(
                    "must be >= max_batch ({}) so that every running sequence can decode each step, got {}",
                    self.max_batch, self.max_batched_tokens
                ),
            ));
        }
        if self.max_tokens_limit == 0 {
            return Err(ConfigError::new("max_tokens_limit", "must be > 0, got 0"));
        }
        if self.kv_event_buffer == 0 {
            return Err(ConfigError::new("kv_event_buffer", "must be > 0, got 0"));
        }
        if let ReplicaKind::Parallel { service_time } = self.kind
            && service_time.is_zero()
        {
            return Err(ConfigError::new("kind.service_time_ms", "must be > 0, got 0"));
        }
        let positive = [
            ("speed", self.speed),
            ("hbm_bandwidth", self.hbm_bandwidth),
            ("bandwidth_efficiency", self.bandwidth_efficiency),
            ("peak_flops", self.peak_flops),
            ("compute_efficiency", self.compute_efficiency),
        ];
        for (field, v) in positive {
            if !(v.is_finite() && v > 0.0) {
                return Err(ConfigError::new(field, format!("must be > 0, got {v}")));
            }
        }
        for (field, v) in [
            ("bandwidth_efficiency", self.bandwidth_efficiency),
            ("compute_efficiency", self.compute_efficiency),
        ] {
            if v > 1.0 {
                return Err(ConfigError::new(field, format!("must be <= 1, got {v}")));
            }
        }
        let non_negative = [
            ("weights_bytes", self.weights_bytes),
            ("kv_bytes_per_token", self.kv_bytes_per_token),
            ("flops_per_token", self.flops_per_token),
            ("attention_flops_per_token_per_position", self.attention_flops_per_token_per_position),
        ];
        for (field, v) in non_negative {
            if !(v.is_finite() && v >= 0.0) {
                return Err(ConfigError::new(field, format!("must be >= 0, got {v}")));
            }
        }
        Ok(())
    }

    /// How long one step takes (the roofline model of the crate docs):
    ///
    /// `(step_overhead + max(memory_time, compute_time)) / speed`, where
    /// `memory_time = (weights_bytes + context_tokens × kv_bytes_per_token) / (hbm_bandwidth ×
    /// bandwidth_efficiency)` and `compute_time = (batch_tokens × flops_per_token +
    /// prefill_positions × attention_flops_per_token_per_position) / (peak_flops ×
    /// compute_efficiency)`.
    ///
    /// The result saturates at about a year for absurd inputs instead of panicking.
    pub fn step_time(&self, step: &StepShape) -> Duration {
        let memory_bytes = self.weights_bytes + step.context_tokens as f64 * self.kv_bytes_per_token;
        let memory_time = memory_bytes / (self.hbm_bandwidth * self.bandwidth_efficiency);
        let flops = step.batch_tokens() as f64 * self.flops_per_token
            + step.prefill_positions * self.attention_flops_per_token_per_position;
        let compute_time = flops / (self.peak_flops * self.compute_efficiency);
        let secs = (self.step_overhead.as_secs_f64() + memory_time.max(compute_time)) / self.speed;
        const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);
        Duration::try_from_secs_f64(secs).map_or(YEAR, |d| d.min(YEAR))
    }

    /// One decode step of `batch` sequences with `context_per_seq` tokens each: the time per
    /// output token of a replica in steady decode.
    pub fn decode_step_time(&self, batch: u64, context_per_seq: u64) -> Duration {
        self.step_time(&StepShape::decode(batch, context_per_seq))
    }

    /// Time to prefill a `prompt_tokens` prompt on an otherwise idle replica: the sum of its
    /// chunked-prefill steps of at most `max_batched_tokens` tokens. This is the TTFT of a lone
    /// uncached request.
    pub fn prefill_time(&self, prompt_tokens: u64) -> Duration {
        let chunk = u64::from(self.max_batched_tokens.max(1));
        let mut done = 0;
        let mut total = Duration::ZERO;
        while done < prompt_tokens {
            let n = chunk.min(prompt_tokens - done);
            total = total.saturating_add(self.step_time(&StepShape::prefill(done, n)));
            done += n;
        }
        total
    }
}

/// `step_overhead` as fractional milliseconds in config files.
mod duration_ms {
    use std::time::Duration;

    pub(super) fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64() * 1e3)
    }

    pub(super) fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let ms = <f64 as serde::Deserialize>::deserialize(d)?;
        Duration::try_from_secs_f64(ms / 1e3).map_err(|_| {
            serde::de::Error::custom(format!("step_overhead must be a non-negative number of ms, got {ms}"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(d: Duration) -> f64 {
        d.as_secs_f64() * 1e3
    }

    #[test]
    fn calibration_matches_published_h100_figures() {
        let c = EngineConfig::default();
        let batch1 = ms(c.decode_step_time(1, 1000));
        assert!((6.0..=7.0).contains(&batch1), "batch-1 decode {batch1} ms");
        let p2k = ms(c.prefill_time(2000));
        assert!((60.0..=80.0).contains(&p2k), "2k prefill {p2k} ms");
        let p10k = ms(c.prefill_time(10_000));
        assert!(p10k > 300.0, "10k prefill {p10k} ms");
        let b64 = ms(c.decode_step_time(64, 2000));
        assert!((11.0..=14.0).contains(&b64), "64 x 2k decode {b64} ms");
        // Throughput at a full batch of 1k-token contexts: 256 tokens per step, ~12-14k tok/s.
        let full = c.decode_step_time(256, 1000).as_secs_f64();
        let tput = 256.0 / full;
        assert!((10_000.0..=16_000.0).contains(&tput), "saturated decode {tput} tok/s");
    }

    #[test]
    fn prefill_is_superlinear_and_decode_grows_with_context() {
        let c = EngineConfig::default();
        assert!(c.prefill_time(8000) > c.prefill_time(4000) * 2 - c.step_overhead);
        assert!(c.decode_step_time(8, 4000) > c.decode_step_time(8, 1000));
        assert!(c.decode_step_time(64, 1000) > c.decode_step_time(1, 1000));
    }

    #[test]
    fn half_speed_doubles_the_step() {
        let fast = EngineConfig::default();
        let slow = EngineConfig { speed: 0.5, ..EngineConfig::default() };
        let shape = StepShape::prefill(0, 2000);
        let ratio = slow.step_time(&shape).as_secs_f64() / fast.step_time(&shape).as_secs_f64();
        assert!((ratio - 2.0).abs() < 1e-6, "{ratio}");
    }

    #[test]
    fn validation_names_the_field() {
        assert!(EngineConfig::default().validate().is_ok());
        let err = EngineConfig { speed: -1.0, ..EngineConfig::default() }.validate().unwrap_err();
        assert_eq!(err.field, "speed");
        assert_eq!(err.to_string(), "speed must be > 0, got -1");
        let err = EngineConfig { max_batch: 0, ..EngineConfig::default() }.validate().unwrap_err();
        assert_eq!(err.field, "max_batch");
        let err = EngineConfig { max_batched_tokens: 16, ..EngineConfig::default() }.validate().unwrap_err();
        assert!(err.to_string().starts_with("max_batched_tokens must be >= max_batch"), "{err}");
        let err =
            EngineConfig { compute_efficiency: f64::NAN, ..EngineConfig::default() }.validate().unwrap_err();
        assert_eq!(err.field, "compute_efficiency");
    }

    #[test]
    fn deserialises_with_defaults() {
        let c: EngineConfig = serde_json::from_str(r#"{"max_batch": 8, "step_overhead_ms": 1.5}"#).unwrap();
        assert_eq!(c.max_batch, 8);
        assert_eq!(c.step_overhead, Duration::from_micros(1500));
        assert_eq!(c.kv_capacity_tokens, 400_000);
        let back: EngineConfig = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
    }
}
