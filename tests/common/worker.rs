//! A `switchyard worker` served in the test's own process, for tests that need replicas but not
//! their processes.

use std::net::SocketAddr;

use switchyard::worker::{self, WorkerArgs};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// An in-process worker on a loopback port; it stops when dropped.
pub(crate) struct Worker {
    /// Where it serves.
    pub(crate) addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

/// Starts a worker with `args` on a free loopback port.
pub(crate) async fn in_process(args: WorkerArgs) -> Worker {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel();
    tokio::spawn(worker::serve(args, listener, async move {
        let _ = rx.await;
    }));
    Worker { addr, _stop: tx }
}
