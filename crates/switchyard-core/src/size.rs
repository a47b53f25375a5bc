//! The size of a request, for policies that weigh work rather than count requests.

/// How much work a request asks for, as a key-extraction layer (or the caller) estimated it.
///
/// An LLM request's cost is uneven: its prompt must be prefilled before the first token (compute
/// in proportion to `prompt_tokens`), and then it holds a batch slot and KV memory for
/// `max_tokens` decode steps. Policies that balance prefill backlog, and admission layers that
/// budget KV memory, read it from the request's extensions; a request without one counts as one
/// unit of work.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RequestSize {
    /// Tokens in the prompt (estimated from the text when no tokenizer is at hand: see
    /// [`BYTES_PER_TOKEN`](crate::BYTES_PER_TOKEN)).
    pub prompt_tokens: u32,
    /// The most tokens the request may generate.
    pub max_tokens: u32,
}

impl RequestSize {
    /// A request of `prompt_tokens` prompt tokens that may generate `max_tokens` tokens.
    pub fn new(prompt_tokens: u32, max_tokens: u32) -> Self {
        Self { prompt_tokens, max_tokens }
    }
}
