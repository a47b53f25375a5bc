//! [`KeysLayer`] and its service [`Keys`]: the keys into the extensions, then the inner service.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::Body;
use pin_project_lite::pin_project;
use switchyard_core::Deadline;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tower::{BoxError, Layer, Service};

use crate::config::KeysConfig;
use crate::metadata::extract_metadata;
use crate::peek::Peek;
use crate::replay::Replay;
use crate::scan::Scanner;

/// Builds [`Keys`] services from one [`KeysConfig`].
///
/// Each service it builds has its own connection budget; see [`Keys::for_connection`].
#[derive(Clone, Debug)]
pub struct KeysLayer {
    config: Arc<KeysConfig>,
}

impl KeysLayer {
    /// A layer extracting keys as `config` says.
    pub fn new(config: KeysConfig) -> Self {
        Self { config: Arc::new(config) }
    }
}

impl Default for KeysLayer {
    fn default() -> Self {
        Self::new(KeysConfig::default())
    }
}

impl<S> Layer<S> for KeysLayer {
    type Service = Keys<S>;

    fn layer(&self, inner: S) -> Keys<S> {
        Keys::from_shared(inner, self.config.clone())
    }
}

/// Puts a request's keys into its extensions, then calls the inner service with the body
/// replayed ([`Replay`]).
///
/// Clones share one connection budget: the bytes their peeks may hold back at once. A server
/// gives each accepted connection its own with [`Keys::for_connection`], so that one client's
/// streams cannot use up the budget of another's.
pub struct Keys<S> {
    inner: S,
    config: Arc<KeysConfig>,
    budget: Arc<Semaphore>,
}

impl<S> Keys<S> {
    /// `inner` behind key extraction as `config` says, with a fresh budget.
    pub fn new(inner: S, config: KeysConfig) -> Self {
        Self::from_shared(inner, Arc::new(config))
    }

    fn from_shared(inner: S, config: Arc<KeysConfig>) -> Self {
        let budget = Arc::new(Semaphore::new(config.budget_permits()));
        Self { inner, config, budget }
    }

    /// A clone with a budget of its own: call it once per accepted connection.
    pub fn for_connection(&self) -> Self
    where
        S: Clone,
    {
        Self::from_shared(self.inner.clone(), self.config.clone())
    }

    /// The settings.
    pub fn config(&self) -> &KeysConfig {
        &self.config
    }

    /// Bytes of the budget not held by peeks now.
    pub fn budget_available(&self) -> usize {
        self.budget.available_permits()
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: Clone> Clone for Keys<S> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone(), config: self.config.clone(), budget: self.budget.clone() }
    }
}

impl<S: fmt::Debug> fmt::Debug for Keys<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keys")
            .field("inner", &self.inner)
            .field("config", &self.config)
            .field("budget_available", &self.budget.available_permits())
            .finish()
    }
}

impl<S, B> Service<http::Request<B>> for Keys<S>
where
    S: Service<http::Request<Replay<B>>> + Clone,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Unpin,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let now = Instant::now();
        let (mut parts, body) = req.into_parts();
        let target =
            extract_metadata(&self.config, parts.uri.path(), &parts.headers, &mut parts.extensions, now);
        let Some(target) = target else {
            let future = self.inner.call(http::Request::from_parts(parts, Replay::new(body)));
            return ResponseFuture { state: State::Calling { future } };
        };
        let mut deadline = Deadline::after(now, self.config.peek_timeout).0;
        if let Some(Deadline(own)) = parts.extensions.get::<Deadline>() {
            deadline = deadline.min(*own);
        }
        let peek = Peek::new(body, Scanner::new(target), self.config.clone(), self.budget.clone(), deadline);
        // The inner service said it is ready: that one is called after the peek (tower's rule).
        let clone = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, clone);
        ResponseFuture { state: State::Peeking { peek, parts: Some(parts), inner: Some(ready) } }
    }
}

pin_project! {
    /// The response future of [`Keys`]: the peek, if any, then the inner service's call.
    pub struct ResponseFuture<S, B>
    where
        S: Service<http::Request<Replay<B>>>,
        B: Body,
    {
        #[pin]
        state: State<S, B>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, B>
    where
        S: Service<http::Request<Replay<B>>>,
        B: Body,
    {
        Peeking { peek: Peek<B>, parts: Option<http::request::Parts>, inner: Option<S> },
        Calling { #[pin] future: S::Future },
    }
}

impl<S, B> fmt::Debug for ResponseFuture<S, B>
where
    S: Service<http::Request<Replay<B>>>,
    B: Body,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Peeking { .. } => "peeking",
            State::Calling { .. } => "calling",
        };
        f.debug_struct("ResponseFuture").field("state", &state).finish()
    }
}

impl<S, B> Future for ResponseFuture<S, B>
where
    S: Service<http::Request<Replay<B>>>,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Unpin,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let mut state = self.as_mut().project().state;
            let future = match state.as_mut().project() {
                StateProj::Peeking { peek, parts, inner } => {
                    if let Err(e) = ready!(peek.poll(cx)) {
                        tracing::debug!(error = %e, "refused a request while reading its keys");
                        // Let go of the frames held and their budget now, not when the future
                        // is dropped.
                        drop(peek.finish());
                        return Poll::Ready(Err(Box::new(e)));
                    }
                    let (Some(mut parts), Some(mut inner)) = (parts.take(), inner.take()) else {
                        return Poll::Ready(Err("keys future polled after completion".into()));
                    };
                    let (keys, body) = peek.finish();
                    keys.insert_into(&mut parts.extensions);
                    inner.call(http::Request::from_parts(parts, body))
                }
                StateProj::Calling { future } => return future.poll(cx).map_err(Into::into),
            };
            state.set(State::Calling { future });
        }
    }
}
