#![allow(clippy::unwrap_used, clippy::expect_used)]
//! ORCA decoding against bytes encoded by hand from `xds/data/orca/v3/orca_load_report.proto`
//! (the protobuf wire format, not this crate's encoder), the way another implementation sends
//! them, and against every truncation of those bytes.

use switchyard_core::orca;

/// Bytes of an `OrcaLoadReport`, field by field, with the offsets where a field ends.
fn golden() -> (Vec<u8>, Vec<usize>) {
    let mut bytes = Vec::new();
    let mut ends = Vec::new();
    // 1: cpu_utilization = 0.5 (double: tag 1 << 3 | 1, then 8 bytes little-endian).
    bytes.extend([0x09, 0, 0, 0, 0, 0, 0, 0xe0, 0x3f]);
    ends.push(bytes.len());
    // 3: rps = 150 (uint64: tag 3 << 3 | 0, varint 0x96 0x01); deprecated, ignored.
    bytes.extend([0x18, 0x96, 0x01]);
    ends.push(bytes.len());
    // 8: named_metrics, one map entry each (tag 8 << 3 | 2, length; inside: key = 1 string,
    // value = 2 double).
    for (key, le) in [
        ("queue_depth", [0, 0, 0, 0, 0, 0, 0x08, 0x40]),     // 3.0
        ("running_requests", [0, 0, 0, 0, 0, 0, 0, 0x40]),   // 2.0
        ("max_batch", [0, 0, 0, 0, 0, 0, 0x70, 0x40]),       // 256.0
        ("prefix_hit_rate", [0, 0, 0, 0, 0, 0, 0xd0, 0x3f]), // 0.25
    ] {
        let mut entry = vec![0x0a, key.len() as u8];
        entry.extend(key.as_bytes());
        entry.push(0x11);
        entry.extend(le);
        bytes.extend([0x42, entry.len() as u8]);
        bytes.extend(entry);
        ends.push(bytes.len());
    }
    // 9: application_utilization = 0.75 (tag 9 << 3 | 1 = 0x49), the KV-cache use when no
    // `kv_cache_utilization` named metric is sent.
    bytes.extend([0x49, 0, 0, 0, 0, 0, 0, 0xe8, 0x3f]);
    ends.push(bytes.len());
    // 15: a field this version does not know (varint 133), as a newer sender may add.
    bytes.extend([0x78, 0x85, 0x01]);
    ends.push(bytes.len());
    (bytes, ends)
}

#[test]
fn a_report_encoded_by_hand_decodes_field_for_field() {
    let (bytes, _) = golden();
    let load = orca::decode(&bytes).unwrap();
    assert_eq!((load.queue_depth, load.running, load.capacity), (3, 2, 256));
    assert_eq!(load.kv_cache_utilization, 0.75, "from application_utilization");
    assert_eq!(load.cpu_utilization, 0.5);
    assert_eq!(load.named, [("prefix_hit_rate".to_string(), 0.25)].into(), "other named metrics kept");

    // The same bytes as a gRPC binary header value, padded or not.
    use base64::Engine as _;
    let padded = base64::engine::general_purpose::STANDARD.encode(&bytes);
    let unpadded = padded.trim_end_matches('=');
    assert_ne!(padded, unpadded, "the golden bytes need padding, so both forms are tried");
    assert_eq!(orca::decode_base64(padded.as_bytes()).unwrap(), load);
    assert_eq!(orca::decode_base64(unpadded.as_bytes()).unwrap(), load);
}

#[test]
fn this_encoder_writes_what_the_proto_defines() {
    // What the replica sends, read back as the generic message: the named metrics and
    // application_utilization, by their field numbers.
    let (bytes, _) = golden();
    let load = orca::decode(&bytes).unwrap();
    let report: orca::OrcaLoadReport = prost::Message::decode(orca::encode(&load).as_slice()).unwrap();
    assert_eq!(report.named_metrics["queue_depth"], 3.0);
    assert_eq!(report.named_metrics["running_requests"], 2.0);
    assert_eq!(report.named_metrics["max_batch"], 256.0);
    assert_eq!(report.named_metrics["kv_cache_utilization"], 0.75);
    assert_eq!(report.application_utilization, 0.75);
    assert_eq!(report.cpu_utilization, 0.5);
}

#[test]
fn every_truncation_is_an_error_or_a_shorter_report_never_a_panic() {
    let (bytes, ends) = golden();
    for cut in 1..bytes.len() {
        let result = orca::decode(&bytes[..cut]);
        if ends.contains(&cut) {
            // A cut between fields is a valid, shorter message.
            result.unwrap_or_else(|e| panic!("cut at a field boundary {cut}: {e}"));
        } else {
            let err = result.expect_err(&format!("cut inside a field at {cut} of {}", bytes.len()));
            assert!(err.to_string().contains("not an OrcaLoadReport"), "{err}");
        }
    }
    assert_eq!(orca::decode(&[]).unwrap(), Default::default(), "no bytes: an empty report");
    // A length that claims more than there is.
    assert!(orca::decode(&[0x42, 0x7f, 0x0a, 0x01, b'x']).is_err());
}
