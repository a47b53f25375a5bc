//! The end of a removed endpoint's connections: a drain timeout after the removal, whatever is
//! still open on them is cut.
//!
//! A removed endpoint gets no new request (the balancer stops picking it), and its requests in
//! flight go on. An HTTP/2 client connection, though, lives as long as one of its streams does:
//! a server-streaming call that never ends would keep the removed endpoint's connection, and the
//! task running it, for ever. So each connection to an endpoint is opened through its
//! [`ConnectionDrain`]: [`wrap`](ConnectionDrain::wrap) puts the connection's socket in a
//! [`DrainIo`], and once the endpoint is [`retire`](ConnectionDrain::retire)d and its drain
//! timeout has passed, every read and write of that socket fails with a [`DrainTimedOut`] error.
//! The HTTP/2 connection then ends its open streams with that error and closes, and its task ends.
//! Envoy's `drain_timeout` and linkerd's balancer eviction do the same at the connection level.
//!
//! On the request path this costs one atomic load per read or write of the socket, and an
//! `AtomicWaker` registration when a read has to wait (so that the retirement wakes an idle
//! connection); nothing per request, and no task or timer until the endpoint is retired (then one
//! timer per connection, in the connection's own task).
//!
//! A call cut this way ends with an error whose chain names the drain timeout
//! ([`is_drain_timeout`]); the gateway answers it with `UNAVAILABLE` and that message.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// How long a removed endpoint's connections stay open for its requests in flight, unless
/// configured otherwise.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// The start of the error message of a call cut by a drain timeout.
const MESSAGE: &str = "the endpoint was removed and its drain timeout";

/// The drain of one endpoint's connections: open ones are registered by
/// [`wrap`](Self::wrap), and cut a drain timeout after [`retire`](Self::retire). Cloning gives
/// another handle on the same drain.
///
/// ```
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// use std::time::Duration;
/// use switchyard_discovery::drain::ConnectionDrain;
/// use tokio::io::AsyncReadExt;
///
/// let drain = ConnectionDrain::new(Duration::from_millis(300));
/// let (socket, _peer) = tokio::io::duplex(64);
/// let mut socket = drain.wrap(socket);
/// assert_eq!(drain.open_connections(), 1);
/// drain.retire();
/// // The peer never writes: the read waits, and fails once the drain timeout has passed.
/// let error = socket.read(&mut [0; 8]).await.unwrap_err();
/// assert!(switchyard_discovery::drain::is_drain_timeout(&error));
/// drop(socket);
/// assert_eq!(drain.open_connections(), 0);
/// # }
/// ```
#[derive(Clone)]
pub struct ConnectionDrain {
    shared: Arc<Shared>,
}

struct Shared {
    timeout: Duration,
    state: Mutex<State>,
    open: AtomicUsize,
}

#[derive(Default)]
struct State {
    retired_at: Option<Instant>,
    /// The connections opened through this drain (those dropped since are pruned as it goes).
    links: Vec<Weak<Link>>,
}

/// What a connection shares with its drain: whether the endpoint is retired, and how to wake
/// the connection's task when it is.
#[derive(Default)]
struct Link {
    retired: AtomicBool,
    waker: AtomicWaker,
}

impl ConnectionDrain {
    /// A drain whose connections are cut `timeout` after the endpoint is retired.
    pub fn new(timeout: Duration) -> Self {
        Self {
            shared: Arc::new(Shared {
                timeout,
                state: Mutex::new(State::default()),
                open: AtomicUsize::new(0),
            }),
        }
    }

    /// The drain timeout.
    pub fn timeout(&self) -> Duration {
        self.shared.timeout
    }

    /// Puts a new connection's socket under this drain. A connection opened after the retirement
    /// is cut at the same time as the others (at once, if the timeout has passed).
    pub fn wrap<IO>(&self, io: IO) -> DrainIo<IO> {
        let link = Arc::new(Link::default());
        let mut state = self.shared.state.lock().unwrap_or_else(PoisonError::into_inner);
        link.retired.store(state.retired_at.is_some(), Ordering::Release);
        state.links.retain(|l| l.strong_count() > 0);
        state.links.push(Arc::downgrade(&link));
        drop(state);
        self.shared.open.fetch_add(1, Ordering::AcqRel);
        DrainIo { io, link, shared: self.shared.clone(), deadline: None, cut: false }
    }

    /// The endpoint is removed: its connections are cut once the drain timeout has passed from
    /// now (the first call counts; later ones change nothing).
    pub fn retire(&self) {
        let mut state = self.shared.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.retired_at.is_some() {
            return;
        }
        state.retired_at = Some(Instant::now());
        state.links.retain(|link| match link.upgrade() {
            Some(link) => {
                link.retired.store(true, Ordering::Release);
                link.waker.wake();
                true
            }
            None => false,
        });
    }

    /// Whether the endpoint has been retired.
    pub fn is_retired(&self) -> bool {
        self.retired_at().is_some()
    }

    /// The connections opened through this drain whose socket is still open (not dropped).
    pub fn open_connections(&self) -> usize {
        self.shared.open.load(Ordering::Acquire)
    }

    fn retired_at(&self) -> Option<Instant> {
        self.shared.retired_at()
    }
}

impl Shared {
    fn retired_at(&self) -> Option<Instant> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).retired_at
    }
}

impl fmt::Debug for ConnectionDrain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionDrain")
            .field("timeout", &self.shared.timeout)
            .field("retired", &self.is_retired())
            .field("open_connections", &self.open_connections())
            .finish()
    }
}

/// The error of every read and write on a connection whose endpoint was removed and whose drain
/// timeout has passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainTimedOut {
    /// The drain timeout that passed.
    pub timeout: Duration,
}

impl fmt::Display for DrainTimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{MESSAGE} ({:?}) passed; the connection is closed", self.timeout)
    }
}

impl std::error::Error for DrainTimedOut {}

/// Whether `error`, or an error in its chain of sources, is a [`DrainTimedOut`]: the call was cut
/// because its endpoint was removed and the drain timeout passed.
///
/// The HTTP/2 layer keeps an I/O error's message but not its type, so an error in the chain
/// whose message is the drain timeout's counts too. Meant for the path of a failed call, not the
/// path of every call: it formats the errors of the chain.
pub fn is_drain_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(error) = next {
        if error.is::<DrainTimedOut>()
            || error
                .downcast_ref::<io::Error>()
                .and_then(io::Error::get_ref)
                .is_some_and(|inner| inner.is::<DrainTimedOut>())
            || error.to_string().starts_with(MESSAGE)
        {
            return true;
        }
        next = error.source();
    }
    false
}

/// A connection's socket under a [`ConnectionDrain`]: reads and writes pass through until the
/// endpoint is retired and the drain timeout has passed, then fail with [`DrainTimedOut`].
/// Dropping it counts the connection closed.
pub struct DrainIo<IO> {
    io: IO,
    link: Arc<Link>,
    shared: Arc<Shared>,
    /// When the connection is cut, armed once the retirement is seen.
    deadline: Option<Pin<Box<Sleep>>>,
    cut: bool,
}

impl<IO> DrainIo<IO> {
    /// The socket inside.
    pub fn get_ref(&self) -> &IO {
        &self.io
    }

    fn error(&self) -> io::Error {
        io::Error::new(io::ErrorKind::ConnectionAborted, DrainTimedOut { timeout: self.shared.timeout })
    }

    /// Whether the connection is cut (`Ready`); on the way, arms the timer of a retired one.
    fn poll_cut(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.cut {
            return Poll::Ready(());
        }
        if !self.link.retired.load(Ordering::Acquire) {
            return Poll::Pending;
        }
        let deadline = match &mut self.deadline {
            Some(deadline) => deadline,
            None => {
                let retired_at = self.shared.retired_at().unwrap_or_else(Instant::now);
                let at = retired_at.checked_add(self.shared.timeout).unwrap_or_else(far_future);
                self.deadline.insert(Box::pin(tokio::time::sleep_until(at)))
            }
        };
        if deadline.as_mut().poll(cx).is_ready() {
            self.cut = true;
            self.deadline = None;
            return Poll::Ready(());
        }
        Poll::Pending
    }

    /// After the socket said "not yet": makes sure a retirement from now on wakes this task.
    fn wait_for_retirement(&self, cx: &mut Context<'_>) {
        if self.deadline.is_some() {
            return; // Already retired: the timer wakes the task.
        }
        self.link.waker.register(cx.waker());
        // Retired between the check in `poll_cut` and the registration: look again soon.
        if self.link.retired.load(Ordering::Acquire) {
            cx.waker().wake_by_ref();
        }
    }
}

/// An instant no drain reaches (a timeout too large to add).
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365 * 30)
}

impl<IO> Drop for DrainIo<IO> {
    fn drop(&mut self) {
        self.shared.open.fetch_sub(1, Ordering::AcqRel);
    }
}

impl<IO> fmt::Debug for DrainIo<IO> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DrainIo").field("cut", &self.cut).finish_non_exhaustive()
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for DrainIo<IO> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.poll_cut(cx).is_ready() {
            return Poll::Ready(Err(this.error()));
        }
        let read = Pin::new(&mut this.io).poll_read(cx, buf);
        if read.is_pending() {
            this.wait_for_retirement(cx);
        }
        read
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for DrainIo<IO> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.poll_cut(cx).is_ready() {
            return Poll::Ready(Err(this.error()));
        }
        let written = Pin::new(&mut this.io).poll_write(cx, buf);
        if written.is_pending() {
            this.wait_for_retirement(cx);
        }
        written
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.poll_cut(cx).is_ready() {
            return Poll::Ready(Err(this.error()));
        }
        let written = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        if written.is_pending() {
            this.wait_for_retirement(cx);
        }
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.poll_cut(cx).is_ready() {
            return Poll::Ready(Err(this.error()));
        }
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Closing is allowed after the cut too.
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn a_retired_connection_passes_data_until_the_timeout_then_fails() {
        let drain = ConnectionDrain::new(Duration::from_secs(30));
        let (socket, mut peer) = tokio::io::duplex(64);
        let mut socket = drain.wrap(socket);
        drain.retire();
        tokio::time::sleep(Duration::from_secs(29)).await;
        peer.write_all(b"hi").await.unwrap();
        let mut buf = [0; 2];
        socket.read_exact(&mut buf).await.unwrap();
        socket.write_all(b"ok").await.unwrap();
        let start = Instant::now();
        let error = socket.read(&mut buf).await.unwrap_err();
        assert_eq!(start.elapsed(), Duration::from_secs(1), "cut 30 s after the retirement");
        assert!(is_drain_timeout(&error), "{error}");
        assert!(socket.write_all(b"x").await.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_opened_after_the_timeout_is_cut_at_once_and_counted() {
        let drain = ConnectionDrain::new(Duration::from_millis(300));
        drain.retire();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (socket, _peer) = tokio::io::duplex(64);
        let mut socket = drain.wrap(socket);
        assert_eq!(drain.open_connections(), 1);
        let start = Instant::now();
        assert!(socket.read(&mut [0; 1]).await.is_err());
        assert_eq!(start.elapsed(), Duration::ZERO);
        drop(socket);
        assert_eq!(drain.open_connections(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_of_an_endpoint_not_retired_is_never_cut() {
        let drain = ConnectionDrain::new(Duration::from_millis(1));
        let (socket, _peer) = tokio::io::duplex(64);
        let mut socket = drain.wrap(socket);
        let read = tokio::time::timeout(Duration::from_secs(3600), socket.read(&mut [0; 1])).await;
        assert!(read.is_err(), "still waiting for data after an hour");
    }

    #[test]
    fn the_drain_timeout_is_recognised_through_a_chain_that_keeps_only_its_message() {
        #[derive(Debug)]
        struct Outer(io::Error);
        impl fmt::Display for Outer {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("error reading a body from connection")
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let message = DrainTimedOut { timeout: Duration::from_secs(1) }.to_string();
        let kept = Outer(io::Error::new(io::ErrorKind::ConnectionAborted, message));
        assert!(is_drain_timeout(&kept));
        let other = Outer(io::Error::new(io::ErrorKind::ConnectionReset, "connection reset"));
        assert!(!is_drain_timeout(&other));
    }
}
