//! `switchyard relay`: a layer-4 TCP relay, the bench's floor for what any proxy costs.
//!
//! Each client connection is paired, for its whole life, with one new connection to the next
//! backend in turn, and the bytes are copied both ways ([`tokio::io::copy_bidirectional`]). It
//! reads no HTTP/2: no frames, no headers, no per-call balancing. Every proxy in scenario
//! `overhead` must do at least what the relay does (read every byte from one socket and write it
//! to another), so the relay's requests/s is about the most any proxy reaches on the machine the
//! bench runs on, and its CPU per request about the least it spends. The bench runs it as target
//! `tcp-relay`; it is not a product (it balances connections, not calls).
//!
//! ```text
//! switchyard relay --listen 127.0.0.1:0 --backend 127.0.0.1:9001 --backend 127.0.0.1:9002
//! ```

use std::future::Future;
use std::net::SocketAddr;
use std::num::NonZeroUsize;

use tokio::net::{TcpListener, TcpStream};

/// `switchyard relay` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct RelayArgs {
    /// Address to listen on (port 0 picks a free one; the address is logged).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// A backend `HOST:PORT`; repeat for more. Connections go to them in turn.
    #[arg(long = "backend", required = true)]
    pub backends: Vec<String>,
    /// Threads that copy [default: one per CPU].
    #[arg(long)]
    pub threads: Option<NonZeroUsize>,
}

/// Relays connections until `shutdown` completes; open connections are then dropped.
pub async fn run(args: RelayArgs, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
    let threads =
        args.threads.or_else(|| std::thread::available_parallelism().ok()).map_or(1, NonZeroUsize::get);
    let listener = TcpListener::bind(args.listen).await?;
    tracing::info!("relay serving on {}", listener.local_addr()?);
    serve(listener, args.backends, threads, shutdown).await
}

/// Relays the connections `listener` accepts to `backends` in turn, on `threads` threads of its
/// own, until `shutdown` completes.
async fn serve(
    listener: TcpListener,
    backends: Vec<String>,
    threads: usize,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    if backends.is_empty() {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "no backend to relay to"));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .thread_name("relay")
        .enable_io()
        .enable_time()
        .build()?;
    // The listener moves to the relay's own runtime, so every socket it accepts is driven by
    // that runtime's I/O driver, with no wake-ups across runtimes.
    let listener = listener.into_std()?;
    let accepting = runtime.spawn(async move {
        let listener = TcpListener::from_std(listener)?;
        let mut next = 0usize;
        loop {
            let client = match listener.accept().await {
                Ok((client, _)) => client,
                Err(e) => {
                    // Out of file descriptors, most likely: back off rather than spin.
                    tracing::warn!("relay: accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let backend = backends[next % backends.len()].clone();
            next = next.wrapping_add(1);
            tokio::spawn(pair(client, backend));
        }
    });
    let result = tokio::select! {
        () = shutdown => Ok(()),
        ended = accepting => match ended {
            Ok(result) => result,
            Err(e) => Err(std::io::Error::other(format!("relay: accept loop: {e}"))),
        },
    };
    runtime.shutdown_background();
    result
}

/// Copies between `client` and a new connection to `backend` until either side closes.
async fn pair(mut client: TcpStream, backend: String) {
    let mut upstream = match TcpStream::connect(&backend).await {
        Ok(upstream) => upstream,
        Err(e) => {
            tracing::warn!("relay: connect {backend}: {e}");
            return;
        }
    };
    for socket in [&client, &upstream] {
        if let Err(e) = socket.set_nodelay(true) {
            tracing::warn!("relay: TCP_NODELAY: {e}");
        }
    }
    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        tracing::debug!("relay: {backend}: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An echo server that prefixes what it sends back with its own tag.
    async fn tagged_echo(tag: u8) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("bind: {e}"));
        let address = listener.local_addr().unwrap_or_else(|e| panic!("address: {e}"));
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    while let Ok(n) = socket.read(&mut buf).await {
                        if n == 0 || socket.write_all(&[&[tag], &buf[..n]].concat()).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        address
    }

    #[tokio::test]
    async fn pairs_connections_with_backends_in_turn_and_copies_both_ways() {
        let backends = vec![tagged_echo(b'a').await.to_string(), tagged_echo(b'b').await.to_string()];
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("bind: {e}"));
        let listen = listener.local_addr().unwrap_or_else(|e| panic!("address: {e}"));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let relay = tokio::spawn(serve(listener, backends, 1, async {
            let _ = stopped.await;
        }));
        let mut tags = Vec::new();
        for _ in 0..3 {
            let mut socket = TcpStream::connect(listen).await.unwrap_or_else(|e| panic!("connect: {e}"));
            socket.write_all(b"ping").await.unwrap_or_else(|e| panic!("write: {e}"));
            let mut reply = [0u8; 5];
            socket.read_exact(&mut reply).await.unwrap_or_else(|e| panic!("read: {e}"));
            assert_eq!(&reply[1..], b"ping");
            tags.push(reply[0]);
        }
        assert_eq!(tags, b"aba");
        let _ = stop.send(());
        assert!(relay.await.is_ok_and(|r| r.is_ok()));
    }

    #[tokio::test]
    async fn refuses_to_start_without_a_backend() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("bind: {e}"));
        let err = serve(listener, Vec::new(), 1, std::future::pending()).await.err();
        assert_eq!(err.map(|e| e.kind()), Some(std::io::ErrorKind::InvalidInput));
    }
}
