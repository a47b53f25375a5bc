//! The KV-event protocol `switchyard.kv.v1` (`proto/switchyard/kv/v1/kv_events.proto`),
//! generated at build time: the client the subscriber uses and the server `switchyard worker`
//! implements.

#[allow(missing_docs, unreachable_pub, clippy::all, rust_2018_idioms)]
mod generated {
    tonic::include_proto!("switchyard.kv.v1");
}

pub use generated::*;

/// The protocol's encoded `FileDescriptorSet`, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/kv_events_descriptor.bin"));

impl From<switchyard_core::KvEvent> for KvEvent {
    fn from(e: switchyard_core::KvEvent) -> Self {
        let kind = match e.kind {
            switchyard_core::KvEventKind::Stored => kv_event::Kind::Stored,
            switchyard_core::KvEventKind::Removed => kv_event::Kind::Removed,
        };
        Self { sequence: e.sequence, kind: kind as i32, block: e.block }
    }
}

impl KvEvent {
    /// The event in the workspace's vocabulary, or `None` for an unknown kind.
    pub fn to_core(&self) -> Option<switchyard_core::KvEvent> {
        let kind = match kv_event::Kind::try_from(self.kind).ok()? {
            kv_event::Kind::Stored => switchyard_core::KvEventKind::Stored,
            kv_event::Kind::Removed => switchyard_core::KvEventKind::Removed,
            kv_event::Kind::Unspecified => return None,
        };
        Some(switchyard_core::KvEvent { sequence: self.sequence, kind, block: self.block })
    }
}
