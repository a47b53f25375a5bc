//! What a source reports when it cannot read its endpoints.

use std::path::PathBuf;

/// A source could not read its endpoints this time. It keeps the endpoints it announced last
/// and goes on: the error is an item of its stream (the balancer logs it), never its end.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DiscoveryError {
    /// An endpoint file could not be read or parsed; `line` is 1-based when known.
    #[error("endpoint file {}{}: {message}", path.display(), line.map(|l| format!(" line {l}")).unwrap_or_default())]
    File {
        /// The file.
        path: PathBuf,
        /// The line of the error, when the parser says.
        line: Option<usize>,
        /// What is wrong.
        message: String,
    },
    /// A source's backend (DNS, etcd, the Kubernetes API) failed; the source retries.
    #[error("{source_name}: {message}")]
    Backend {
        /// The source, e.g. `etcd:/switchyard/pool/`.
        source_name: String,
        /// What failed.
        message: String,
    },
    /// A source could not be set up (a watch could not be registered, a client not built).
    #[error("cannot start {source_name}: {message}")]
    Setup {
        /// The source.
        source_name: String,
        /// Why.
        message: String,
    },
}
