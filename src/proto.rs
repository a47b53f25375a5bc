//! The gRPC protocols Switchyard speaks, generated from `proto/` at build time.
//!
//! - [`inference`]: the KServe Open Inference Protocol v2 service `inference.GRPCInferenceService`,
//!   with Triton's `ModelStreamInfer` and `RepositoryIndex` extensions.
//! - [`orca_service`]: ORCA's out-of-band load reporting, `xds.service.orca.v3.OpenRcaService`.
//! - [`FILE_DESCRIPTOR_SET`]: the encoded descriptors, for gRPC server reflection.
//!
//! The ORCA `xds.data.orca.v3.OrcaLoadReport` message maps onto
//! [`switchyard_core::orca::OrcaLoadReport`].

/// KServe Open Inference Protocol v2 (package `inference`).
#[allow(missing_docs, unreachable_pub, clippy::all, rust_2018_idioms)]
pub mod inference {
    tonic::include_proto!("inference");
}

/// ORCA out-of-band load reporting (package `xds.service.orca.v3`): the `OpenRcaService`
/// through which a replica streams its load to a balancer at an interval, off the request
/// path; see [`crate::worker::oob`] and [`crate::oob_reports`].
#[allow(missing_docs, unreachable_pub, clippy::all, rust_2018_idioms)]
pub mod orca_service {
    tonic::include_proto!("xds.service.orca.v3");
}

/// Every message and service in `proto/`, as an encoded `FileDescriptorSet`.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/switchyard_descriptor.bin"));

/// Every gRPC status code, in numeric order.
pub const ALL_CODES: [tonic::Code; 17] = [
    tonic::Code::Ok,
    tonic::Code::Cancelled,
    tonic::Code::Unknown,
    tonic::Code::InvalidArgument,
    tonic::Code::DeadlineExceeded,
    tonic::Code::NotFound,
    tonic::Code::AlreadyExists,
    tonic::Code::PermissionDenied,
    tonic::Code::ResourceExhausted,
    tonic::Code::FailedPrecondition,
    tonic::Code::Aborted,
    tonic::Code::OutOfRange,
    tonic::Code::Unimplemented,
    tonic::Code::Internal,
    tonic::Code::Unavailable,
    tonic::Code::DataLoss,
    tonic::Code::Unauthenticated,
];

/// The canonical name of a gRPC status code, as the gRPC specification spells it
/// (`RESOURCE_EXHAUSTED`); reports and in-stream error messages use these.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_names_follow_the_numbering() {
        for (i, code) in ALL_CODES.iter().enumerate() {
            assert_eq!(*code as usize, i);
        }
        assert_eq!(code_name(tonic::Code::ResourceExhausted), "RESOURCE_EXHAUSTED");
    }
}
