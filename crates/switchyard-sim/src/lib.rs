//! A simulated LLM engine replica, and the workloads to drive it.
//!
//! Switchyard's policy lab and its worker need replicas that behave like a real model server
//! (vLLM serving Llama 3.1 8B on one H100) without a GPU: requests queue, batch, prefill, decode
//! and contend for KV-cache memory, and a replica full of long contexts slows every request it
//! runs. This crate is that replica, in process, as a tower [`Service`](tower::Service):
//! [`EngineHandle::spawn`] starts one, [`EngineHandle::submit`] (or `call`) returns a
//! [`Generation`], a stream of [`Token`]s. All time comes from `tokio::time`, and nothing in the
//! engine is random or depends on hash-map order, so under tokio's paused clock a run is
//! deterministic and takes no wall time.
//!
//! The [`trace`] module reads the bundled workload traces (Azure LLM inference 2023, Mooncake);
//! the [`workload`] module makes synthetic ones (Poisson, step, spike, sine arrival rates) and
//! replays any of them at their recorded pace.
//!
//! # The model
//!
//! One task per replica runs a step loop of continuous batching with chunked prefill, like vLLM:
//!
//! 1. **Admit** waiting requests in FIFO order while fewer than `max_batch` run and the KV cache
//!    has room. A request reserves `prompt_tokens + max_tokens` KV tokens at admission (there is
//!    no preemption), and is admitted only if the running reservations plus its own fit in
//!    `kv_capacity_tokens`, after evicting prefix-cache blocks as needed. The head of the queue
//!    blocks the rest: a big request waits, and later ones wait behind it. A request that could
//!    not fit even an empty replica is refused at submission ([`SubmitError::PromptTooLong`]), so
//!    the queue never deadlocks.
//! 2. **Build the step.** Each decoding request contributes one token; the rest of the token
//!    budget (`max_batched_tokens − decodes`) goes to prefill chunks of the requests still
//!    prefilling, in admission order.
//! 3. **Cost the step** ([`EngineConfig::step_time`]), a roofline:
//!
//!    ```text
//!    step         = (step_overhead + max(memory_time, compute_time)) / speed
//!    memory_time  = (weights_bytes + context_tokens × kv_bytes_per_token)
//!                   / (hbm_bandwidth × bandwidth_efficiency)
//!    compute_time = (step_tokens × flops_per_token
//!                    + Σ_prefill_tokens position × attention_flops_per_token_per_position)
//!                   / (peak_flops × compute_efficiency)
//!    ```
//!
//!    where `context_tokens` is the KV already resident for the sequences in the step (what
//!    attention reads) and `position` is a prompt token's 1-based position in its prompt (the
//!    quadratic attention term of prefill). Decode is bandwidth-bound, prefill compute-bound.
//!    `speed` divides the whole step, overhead included, so a half-speed replica takes exactly
//!    twice as long for everything.
//! 4. **Sleep** until the step ends; deadlines accumulate from one step to the next, so the
//!    replica does not drift under a real clock.
//! 5. **Emit**: a request whose prefill completed in the step emits its first token at the
//!    step's end (its time to first token); decoding requests emit one token each; a request
//!    that has emitted `max_tokens` tokens finishes and frees its reservation. A request may
//!    stop earlier, as a real model does at its end-of-sequence token
//!    ([`GenerationRequest::output_tokens`]); it still reserved KV for `max_tokens` (as a
//!    server that budgets `max_new_tokens` at admission, TGI's way; vLLM allocates blocks as
//!    tokens come and preempts when it runs out, which the sim does not model).
//!
//! An idle engine waits for a submission; it never polls.
//!
//! **The parallel kind.** Not every model server batches: a classic one (an embedding or
//! classification server, a CPU service) runs `k` requests in parallel at a near fixed time each
//! and queues the rest. [`ReplicaKind::Parallel`] (`EngineConfig::parallel(k, service_time)`)
//! is that replica: `max_batch` slots, each request served in `service_time / speed` however
//! many run beside it, FIFO admission into a free slot, the same queue bound, deadlines,
//! cancellation and load reports as the LLM engine. Its capacity is `k / service_time × speed`
//! requests per second, and its latency stays flat until all `k` slots are busy, then grows by a
//! whole service time per `k` requests queued: the knee a concurrency limit should find.
//!
//! **Prefix cache.** Blocks of `block_tokens` tokens, keyed by the request's
//! [`PrefixBlocks`](switchyard_core::PrefixBlocks) ids, kept in least-recently-used order. At
//! admission the request's leading cached blocks (up to the first miss) are hits: their tokens
//! (capped at `prompt_tokens − 1`, since the last prompt token is always computed) skip prefill.
//! When a prefill completes, the ids of the prompt's full blocks are cached. The cache lives in
//! the KV memory that no running request has reserved (`cached + reserved ≤ capacity`), LRU
//! blocks being evicted to admit requests. A running request's reservation covers its whole
//! prompt even when part of it was cached, a conservative simplification. KV-cache utilisation is
//! `(reserved + cached tokens) / kv_capacity_tokens`. Every block the cache stores or evicts is a
//! numbered [`KvEvent`](switchyard_core::KvEvent), kept in a ring of `kv_event_buffer` for
//! subscribers ([`EngineHandle::kv_read`], [`EngineHandle::watch_kv_sequence`]): the worker streams
//! them to gateways that route on the exact cache contents.
//!
//! **Cancellation.** Dropping a [`Generation`] cancels its request (its client has gone): it
//! leaves the engine at once, whether queued, prefilling or decoding, and its batch slot and KV
//! reservation are free for the next admission (counted in [`ReplicaLoad::cancelled`]). A
//! request may carry a deadline ([`GenerationRequest::with_deadline`], a gRPC call's
//! `grpc-timeout`): if it is still queued when the deadline passes, the engine drops it before
//! its prefill ([`SimError::DeadlineExceeded`], counted in [`ReplicaLoad::expired`]), as a real
//! server should not spend a prefill on an answer nobody will read.
//!
//! # Calibration
//!
//! The defaults of [`EngineConfig`] are Llama 3.1 8B in bf16 on one H100 SXM 80 GB: 16.06 GB of
//! weights, 128 KiB of KV per token (32 layers × 8 KV heads × 128 dims × K and V × 2 bytes),
//! 400 k tokens of KV (≈ 50 GB left at vLLM's `gpu_memory_utilization` 0.9), 3.35 TB/s of HBM at
//! 80 % efficiency, 989 TFLOP/s dense bf16 at 50 %, `max_num_seqs` 256, `max_num_batched_tokens`
//! 8,192, 0.5 ms per-step overhead. The model then gives (tested in `config.rs`):
//!
//! | case | model | published |
//! | --- | --- | --- |
//! | decode step, batch 1, 1 k context | 6.5 ms | 6-8 ms inter-token latency at low concurrency |
//! | decode step, 64 × 2 k context | 12.8 ms | ≥ 9.8 ms (bandwidth bound) |
//! | prefill, 2 k-token prompt | 68 ms | 60-80 ms (25-35 k prompt tokens/s) |
//! | prefill, 10 k-token prompt | 379 ms (two chunks) | > 300 ms |
//! | saturated decode, 256 × 1 k context | ≈ 13.5 k tokens/s | ≈ 12.5 k output tokens/s |
//!
//! The published figures are vLLM benchmarks of Llama 3.1 8B on H100: the Azure HPC blog
//! ("Performance of Llama 3.1 8B AI Inference using vLLM on ND-H100-v5", 2025), Lambda's vLLM
//! benchmark report, and Ori's "Benchmarking Llama 3.1 8B Instruct on Nvidia H100 and A100",
//! together with the roofline bounds of the H100 datasheet. An A100 80 GB is about half as fast
//! in both phases: `speed = 0.5`.
//!
//! # Example
//!
//! ```
//! use futures::StreamExt;
//! use switchyard_sim::{EngineConfig, EngineHandle, GenerationRequest};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let replica = EngineHandle::spawn(EngineConfig::default()).unwrap();
//! let mut generation = replica.submit(GenerationRequest::new(2000, 3)).unwrap();
//! let first = generation.next().await.unwrap();
//! assert_eq!(first.index, 0);
//! assert!(replica.load().running == 1);
//!
//! let outcome = replica.submit(GenerationRequest::new(100, 10)).unwrap().collect_outcome().await.unwrap();
//! assert_eq!(outcome.output_tokens, 10);
//! assert!(outcome.ttft < outcome.total);
//! # }
//! ```
#![warn(missing_docs)]

mod config;
mod engine;
mod generation;
mod kv_log;
mod load;
mod prefix_cache;
mod service;
pub mod trace;
pub mod workload;

pub use config::{ConfigError, EngineConfig, ReplicaKind, StepShape};
pub use generation::{Generation, GenerationOutcome, SimError, Token};
pub use kv_log::KvRead;
pub use load::{PREFIX_HIT_RATE, ReplicaLoad};
pub use service::{EngineHandle, GenerationRequest, SubmitError};
pub use trace::{TraceError, TraceFormat, TraceRecord, read_trace};
pub use workload::{LengthSampler, Pattern, Synthetic, WorkloadError, paced};
