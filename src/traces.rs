//! The workload traces bundled with the project (see `traces/README.md` for their sources and
//! licences), embedded in the binary so that the cluster, the lab and the load generator run from anywhere.

use switchyard_sim::trace::{self, TraceError, TraceRecord};

/// The Azure LLM inference trace 2023, conversation service: one hour, 19,366 requests
/// (CC-BY 4.0; Patel et al., "Splitwise", ISCA 2024).
pub const AZURE_CONV_CSV: &str = include_str!("../traces/azure_llm_2023_conv.csv");

/// The Mooncake FAST'25 conversation trace: 12,031 requests with KV-block prefix ids
/// (Apache-2.0; Qin et al., "Mooncake", FAST 2025).
pub const MOONCAKE_CONVERSATION_JSONL: &str = include_str!("../traces/mooncake_conversation.jsonl");

/// The bundled Azure conversation trace, parsed.
pub fn azure_conv() -> Result<Vec<TraceRecord>, TraceError> {
    trace::read_azure_csv(AZURE_CONV_CSV.as_bytes())
}

/// The bundled Mooncake conversation trace, parsed.
pub fn mooncake_conversation() -> Result<Vec<TraceRecord>, TraceError> {
    trace::read_mooncake_jsonl(MOONCAKE_CONVERSATION_JSONL.as_bytes())
}
