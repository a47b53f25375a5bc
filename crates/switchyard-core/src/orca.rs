//! ORCA load reports: how a replica tells the balancer about its own load.
//!
//! [ORCA](https://github.com/cncf/xds/blob/main/xds/data/orca/v3/orca_load_report.proto) (Open
//! Request Cost Aggregation) is the load-report format of Envoy and gRPC: a replica attaches an
//! `xds.data.orca.v3.OrcaLoadReport` to each response, protobuf-encoded in the binary metadata
//! entry `endpoint-load-metrics-bin` (a trailer, or a header on a trailers-only response). Binary
//! metadata travels base64-encoded in HTTP/2, as gRPC specifies for keys ending in `-bin`.
//!
//! Switchyard's replicas put their LLM-engine load in the report's `named_metrics`:
//!
//! | named metric | [`ReportedLoad`] field |
//! | --- | --- |
//! | `queue_depth` | `queue_depth` |
//! | `running_requests` | `running` |
//! | `kv_cache_utilization` | `kv_cache_utilization` |
//! | `max_batch` | `capacity` |
//!
//! `cpu_utilization` maps to the report's own field, and `application_utilization` carries the
//! KV-cache utilisation so that ORCA consumers that know nothing of LLMs (gRPC's weighted round
//! robin) still see how full the replica is. Other named metrics are kept in
//! [`ReportedLoad::named`]; among them [`PREFILL_BACKLOG_TOKENS`], the prompt tokens the replica
//! has still to prefill (queued prompts and the rest of those prefilling), which the
//! `load-report` policy reads as the work ahead of a new request that other balancers sent.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

use crate::ReportedLoad;

/// The metadata key that carries the report.
pub const TRAILER_NAME: &str = "endpoint-load-metrics-bin";

/// [`TRAILER_NAME`] as a parsed header name, for lookups that do not parse it again.
pub const TRAILER_HEADER: http::HeaderName = http::HeaderName::from_static(TRAILER_NAME);

/// Named-metric key for [`ReportedLoad::queue_depth`].
pub const QUEUE_DEPTH: &str = "queue_depth";
/// Named-metric key for [`ReportedLoad::running`].
pub const RUNNING_REQUESTS: &str = "running_requests";
/// Named-metric key for [`ReportedLoad::kv_cache_utilization`].
pub const KV_CACHE_UTILIZATION: &str = "kv_cache_utilization";
/// Named-metric key for [`ReportedLoad::capacity`].
pub const MAX_BATCH: &str = "max_batch";
/// Named metric (kept in [`ReportedLoad::named`]): the prompt tokens the replica has still to
/// prefill, those of the queued prompts and the rest of the ones prefilling. A new prompt's
/// time to first token waits on them.
pub const PREFILL_BACKLOG_TOKENS: &str = "prefill_backlog_tokens";

/// `xds.data.orca.v3.OrcaLoadReport`, field for field (see `proto/xds/data/orca/v3/`).
///
/// The generated gRPC code of the root package maps the proto message onto this type, so there is
/// one definition of it in the workspace.
#[derive(Clone, PartialEq, prost::Message)]
pub struct OrcaLoadReport {
    /// CPU utilisation, normally in \[0, 1\].
    #[prost(double, tag = "1")]
    pub cpu_utilization: f64,
    /// Memory utilisation in \[0, 1\].
    #[prost(double, tag = "2")]
    pub mem_utilization: f64,
    /// Deprecated integer requests per second; use `rps_fractional`.
    #[prost(uint64, tag = "3")]
    pub rps: u64,
    /// Per-request costs by name.
    #[prost(btree_map = "string, double", tag = "4")]
    pub request_cost: BTreeMap<String, f64>,
    /// Resource utilisations by name, each in \[0, 1\].
    #[prost(btree_map = "string, double", tag = "5")]
    pub utilization: BTreeMap<String, f64>,
    /// Queries per second.
    #[prost(double, tag = "6")]
    pub rps_fractional: f64,
    /// Errors per second.
    #[prost(double, tag = "7")]
    pub eps: f64,
    /// Application-specific metrics by name.
    #[prost(btree_map = "string, double", tag = "8")]
    pub named_metrics: BTreeMap<String, f64>,
    /// Application-specific utilisation, in \[0, 1\].
    #[prost(double, tag = "9")]
    pub application_utilization: f64,
}

/// Why a trailer could not be read as a load report.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The metadata value is not base64.
    #[error("{TRAILER_NAME} is not base64: {0}")]
    Base64(#[from] base64::DecodeError),
    /// The bytes are not an `OrcaLoadReport`.
    #[error("{TRAILER_NAME} is not an OrcaLoadReport: {0}")]
    Protobuf(#[from] prost::DecodeError),
}

// gRPC senders may omit base64 padding; receivers must accept both forms.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

impl From<&ReportedLoad> for OrcaLoadReport {
    fn from(load: &ReportedLoad) -> Self {
        let mut named_metrics = load.named.clone();
        named_metrics.insert(QUEUE_DEPTH.into(), f64::from(load.queue_depth));
        named_metrics.insert(RUNNING_REQUESTS.into(), f64::from(load.running));
        named_metrics.insert(KV_CACHE_UTILIZATION.into(), load.kv_cache_utilization);
        if load.capacity > 0 {
            named_metrics.insert(MAX_BATCH.into(), f64::from(load.capacity));
        }
        OrcaLoadReport {
            cpu_utilization: load.cpu_utilization,
            application_utilization: load.kv_cache_utilization,
            named_metrics,
            ..Default::default()
        }
    }
}

impl From<&OrcaLoadReport> for ReportedLoad {
    fn from(report: &OrcaLoadReport) -> Self {
        ReportedLoad::from(report.clone())
    }
}

impl From<OrcaLoadReport> for ReportedLoad {
    fn from(report: OrcaLoadReport) -> Self {
        let mut named = report.named_metrics;
        let known = KNOWN.map(|key| named.remove(key));
        assemble(report.cpu_utilization, report.application_utilization, known, named)
    }
}

/// The named metrics that have a [`ReportedLoad`] field, in the order [`assemble`] takes them.
const KNOWN: [&str; 4] = [QUEUE_DEPTH, RUNNING_REQUESTS, MAX_BATCH, KV_CACHE_UTILIZATION];

/// A report from a peer's figures: its CPU and application utilisation, the values of the
/// [`KNOWN`] named metrics it sent, and its other named metrics; each clamped to its range.
fn assemble(
    cpu: f64,
    application: f64,
    known: [Option<f64>; 4],
    named: BTreeMap<String, f64>,
) -> ReportedLoad {
    let [queue, running, batch, kv] = known;
    ReportedLoad {
        queue_depth: queue.map_or(0, to_count),
        running: running.map_or(0, to_count),
        kv_cache_utilization: to_fraction(kv.unwrap_or(application)),
        capacity: batch.map_or(0, to_count),
        cpu_utilization: to_fraction(cpu),
        named,
    }
}

/// A count from a double that a peer sent: NaN and negatives are 0, huge values saturate.
fn to_count(v: f64) -> u32 {
    if v.is_nan() || v <= 0.0 {
        0
    } else if v >= f64::from(u32::MAX) {
        u32::MAX
    } else {
        v.round() as u32
    }
}

/// A utilisation from a double that a peer sent, clamped to \[0, 1\] (NaN is 0).
fn to_fraction(v: f64) -> f64 {
    if v.is_nan() { 0.0 } else { v.clamp(0.0, 1.0) }
}

/// The report as protobuf bytes.
pub fn encode(load: &ReportedLoad) -> Vec<u8> {
    prost::Message::encode_to_vec(&OrcaLoadReport::from(load))
}

/// A report from protobuf bytes.
///
/// Read field by field with prost's wire-format functions rather than into an
/// [`OrcaLoadReport`] first: Switchyard's four named metrics (the table above) are matched where
/// they are read, not each built into a `String` of a map only to be taken out again. A gateway
/// whose policy reads reports decodes about one a call (`reports/bench/cost-changes.md`). Other
/// named metrics are kept in [`ReportedLoad::named`]. It gives what decoding an
/// [`OrcaLoadReport`] and converting it gives, and refuses what that refuses.
pub fn decode(bytes: &[u8]) -> Result<ReportedLoad, DecodeError> {
    use prost::encoding::{DecodeContext, decode_key, double, skip_field};

    let mut buf = bytes;
    let (mut cpu, mut application) = (0.0, 0.0);
    // The last value of each of the KNOWN named metrics.
    let mut known = [None::<f64>; 4];
    let mut named = BTreeMap::new();
    // One buffer for every entry's name: a known name costs no allocation of its own.
    let mut name = String::new();
    while bytes::Buf::has_remaining(&buf) {
        let (tag, wire) = decode_key(&mut buf)?;
        match tag {
            1 => double::merge(wire, &mut cpu, &mut buf, DecodeContext::default())?,
            9 => double::merge(wire, &mut application, &mut buf, DecodeContext::default())?,
            8 => {
                let value = named_metric(&mut buf, &mut name)?;
                match KNOWN.iter().position(|k| *k == name) {
                    Some(i) => known[i] = Some(value),
                    None => {
                        named.insert(name.clone(), value);
                    }
                }
            }
            // The fields Switchyard does not read, checked and skipped as the message's own
            // decoding would merge them.
            2 | 6 | 7 => double::merge(wire, &mut 0.0, &mut buf, DecodeContext::default())?,
            3 => prost::encoding::uint64::merge(wire, &mut 0, &mut buf, DecodeContext::default())?,
            4 | 5 => prost::encoding::btree_map::merge(
                prost::encoding::string::merge,
                double::merge,
                &mut BTreeMap::new(),
                &mut buf,
                DecodeContext::default(),
            )?,
            _ => skip_field(wire, tag, &mut buf, DecodeContext::default())?,
        }
    }
    Ok(assemble(cpu, application, known, named))
}

/// One `named_metrics` entry (a map entry: name at tag 1, value at tag 2, either missing for
/// its default) from `buf`, its name into `name`; its value returned.
fn named_metric(buf: &mut &[u8], name: &mut String) -> Result<f64, prost::DecodeError> {
    use prost::encoding::{DecodeContext, decode_key, double, merge_loop, skip_field, string};

    name.clear();
    let mut value = 0.0;
    merge_loop(&mut (name, &mut value), buf, DecodeContext::default(), |(name, value), buf, ctx| {
        let (tag, wire) = decode_key(buf)?;
        match tag {
            1 => string::merge(wire, name, buf, ctx),
            2 => double::merge(wire, value, buf, ctx),
            _ => skip_field(wire, tag, buf, ctx),
        }
    })?;
    Ok(value)
}

/// The report as the value of an `endpoint-load-metrics-bin` header or trailer (base64 of the
/// protobuf bytes, unpadded).
pub fn encode_header_value(load: &ReportedLoad) -> http::HeaderValue {
    let text = BASE64.encode(encode(load));
    // Base64 output is always a valid header value.
    http::HeaderValue::from_str(&text).unwrap_or_else(|_| http::HeaderValue::from_static(""))
}

/// A report from the value of an `endpoint-load-metrics-bin` header or trailer (padded or not).
pub fn decode_header_value(value: &http::HeaderValue) -> Result<ReportedLoad, DecodeError> {
    decode_base64(value.as_bytes())
}

/// A report from the base64 text of an `endpoint-load-metrics-bin` value (padded or not), for
/// callers that keep the value's bytes rather than the header value.
pub fn decode_base64(text: &[u8]) -> Result<ReportedLoad, DecodeError> {
    // A report of a handful of metrics is well under a few hundred bytes: decode it on the stack.
    let mut buf = [0u8; 512];
    match BASE64.decode_slice(text, &mut buf) {
        Ok(len) => return decode(&buf[..len]),
        Err(base64::DecodeSliceError::DecodeError(e)) => return Err(e.into()),
        // A larger report: decode it on the heap.
        Err(base64::DecodeSliceError::OutputSliceTooSmall) => {}
    }
    decode(&BASE64.decode(text)?)
}

/// The report in a header map (trailers, or the headers of a trailers-only response), if there
/// is one. `Some(Err(_))` when the entry is there but malformed.
pub fn from_headers(headers: &http::HeaderMap) -> Option<Result<ReportedLoad, DecodeError>> {
    headers.get(&TRAILER_HEADER).map(decode_header_value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_larger_than_the_stack_buffer_round_trips_and_garbage_is_a_base64_error() {
        let named: BTreeMap<String, f64> =
            (0..40).map(|i| (format!("metric_number_{i}"), f64::from(i))).collect();
        let load = ReportedLoad { queue_depth: 2, named, ..ReportedLoad::default() };
        let value = encode_header_value(&load);
        assert!(value.len() > 700, "{} bytes", value.len());
        assert_eq!(decode_header_value(&value).ok(), Some(load));
        let garbage = http::HeaderValue::from_static("!!not base64!!");
        assert!(matches!(decode_header_value(&garbage), Err(DecodeError::Base64(_))));
    }

    /// What `decode` must give: the generated message's decoding, converted.
    fn reference(bytes: &[u8]) -> Result<ReportedLoad, prost::DecodeError> {
        let report: OrcaLoadReport = prost::Message::decode(bytes)?;
        Ok(ReportedLoad::from(report))
    }

    #[test]
    fn decodes_what_the_generated_message_decodes_and_refuses_what_it_refuses() {
        // xorshift64*: deterministic draws, no dependency.
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            state.wrapping_mul(0x2545_f491_4f6c_dd1d)
        };
        let names =
            [QUEUE_DEPTH, RUNNING_REQUESTS, MAX_BATCH, KV_CACHE_UTILIZATION, PREFILL_BACKLOG_TOKENS, "x", ""];
        let (mut ok, mut refused) = (0, 0);
        for _ in 0..2000 {
            let mut report = OrcaLoadReport {
                cpu_utilization: (next() % 300) as f64 / 100.0 - 1.0,
                mem_utilization: 0.5,
                rps: next() % 3,
                rps_fractional: (next() % 5) as f64,
                application_utilization: (next() % 300) as f64 / 100.0 - 1.0,
                ..Default::default()
            };
            for _ in 0..next() % 6 {
                let name = names[(next() % names.len() as u64) as usize];
                report.named_metrics.insert(name.to_string(), (next() % 1000) as f64 - 100.0);
            }
            if next() % 4 == 0 {
                report.utilization.insert("gpu".into(), 0.5);
            }
            let mut bytes = prost::Message::encode_to_vec(&report);
            // Damage some: a flipped byte, a cut, or a duplicate entry appended.
            match next() % 4 {
                0 if !bytes.is_empty() => {
                    let i = (next() % bytes.len() as u64) as usize;
                    bytes[i] ^= (next() % 255 + 1) as u8;
                }
                1 if !bytes.is_empty() => bytes.truncate((next() % bytes.len() as u64) as usize),
                2 => bytes.extend_from_slice(&bytes.clone()),
                _ => {}
            }
            let (ours, theirs) = (decode(&bytes), reference(&bytes));
            match (&ours, &theirs) {
                (Ok(a), Ok(b)) => {
                    assert_eq!(format!("{a:?}"), format!("{b:?}"), "{bytes:?}");
                    ok += 1;
                }
                (Err(_), Err(_)) => refused += 1,
                _ => panic!("{bytes:?}: ours {ours:?}, the generated message's {theirs:?}"),
            }
        }
        assert!(ok > 500 && refused > 100, "both paths exercised: {ok} decoded, {refused} refused");
    }

    #[test]
    fn round_trips_through_a_header_value() {
        let mut named = BTreeMap::new();
        named.insert("prefix_hit_rate".to_string(), 0.25);
        let load = ReportedLoad {
            queue_depth: 7,
            running: 31,
            kv_cache_utilization: 0.625,
            capacity: 64,
            cpu_utilization: 0.5,
            named,
        };
        let value = encode_header_value(&load);
        assert!(!value.as_bytes().ends_with(b"="), "gRPC binary metadata is sent unpadded");
        assert_eq!(decode_header_value(&value).unwrap(), load);
    }

    #[test]
    fn accepts_padded_base64_and_rejects_garbage() {
        let load = ReportedLoad { queue_depth: 1, ..Default::default() };
        let padded = base64::engine::general_purpose::STANDARD.encode(encode(&load));
        let value = http::HeaderValue::from_str(&padded).unwrap();
        assert_eq!(decode_header_value(&value).unwrap(), load);
        let bad = http::HeaderValue::from_static("!!not base64!!");
        assert!(matches!(decode_header_value(&bad), Err(DecodeError::Base64(_))));
        let not_proto = http::HeaderValue::from_str(&BASE64.encode([0xff, 0xff, 0xff])).unwrap();
        assert!(matches!(decode_header_value(&not_proto), Err(DecodeError::Protobuf(_))));
    }

    #[test]
    fn hostile_values_are_clamped() {
        let mut report =
            OrcaLoadReport { cpu_utilization: f64::NAN, application_utilization: 3.0, ..Default::default() };
        report.named_metrics.insert(QUEUE_DEPTH.into(), -4.0);
        report.named_metrics.insert(RUNNING_REQUESTS.into(), 1e30);
        let load = ReportedLoad::from(&report);
        assert_eq!(load.queue_depth, 0);
        assert_eq!(load.running, u32::MAX);
        assert_eq!(load.cpu_utilization, 0.0);
        assert_eq!(load.kv_cache_utilization, 1.0, "falls back to application_utilization, clamped");
    }

    #[test]
    fn finds_the_report_in_trailers() {
        let mut trailers = http::HeaderMap::new();
        assert!(from_headers(&trailers).is_none());
        trailers
            .insert(TRAILER_NAME, encode_header_value(&ReportedLoad { running: 2, ..Default::default() }));
        assert_eq!(from_headers(&trailers).unwrap().unwrap().running, 2);
    }
}
