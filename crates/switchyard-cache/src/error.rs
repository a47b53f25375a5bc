//! An upstream error shared by every caller of a coalesced call.

use std::fmt;
use std::sync::Arc;

use switchyard_core::Error;
use tower::BoxError;

/// The error of the one upstream call that identical requests shared, as each of them gets it:
/// its `Display` and source are the original's, and a typed [`switchyard_core::Error`] in the
/// original's chain is rebuilt on top (same kind, pool and endpoint), so every caller gets the
/// status the one who made the call would have.
#[derive(Clone)]
pub struct SharedError(Arc<dyn std::error::Error + Send + Sync>);

impl SharedError {
    pub(crate) fn new(error: BoxError) -> Self {
        Self(Arc::from(error))
    }

    /// The error as one caller gets it.
    pub(crate) fn to_box(&self) -> BoxError {
        let mut next: Option<&(dyn std::error::Error + 'static)> = Some(&*self.0);
        while let Some(e) = next {
            if let Some(typed) = e.downcast_ref::<Error>() {
                let mut rebuilt = Error::new(typed.kind().clone());
                if let Some(pool) = typed.pool() {
                    rebuilt = rebuilt.in_pool(pool);
                }
                if let Some(endpoint) = typed.endpoint() {
                    rebuilt = rebuilt.at_endpoint(endpoint.clone());
                }
                return Box::new(rebuilt.with_source(self.clone()));
            }
            next = e.source();
        }
        Box::new(self.clone())
    }
}

impl fmt::Debug for SharedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for SharedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&*self.0, f)
    }
}

impl std::error::Error for SharedError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_core::{Code, ErrorKind, status_of};

    #[test]
    fn every_caller_gets_the_status_of_the_original() {
        let original: BoxError = Box::new(Error::new(ErrorKind::ConnectFailed).in_pool("llama"));
        let shared = SharedError::new(original);
        let a = shared.to_box();
        let b = shared.to_box();
        assert_eq!(status_of(&*a), status_of(&*b));
        assert_eq!(status_of(&*a).code, Code::Unavailable);
        assert!(a.to_string().contains("llama"), "{a}");

        let untyped = SharedError::new("boom".into()).to_box();
        assert_eq!(status_of(&*untyped).code, Code::Unknown);
        assert_eq!(untyped.to_string(), "boom");
    }
}
