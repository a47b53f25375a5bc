//! etcd: endpoints registered under a key prefix, and the registration a replica keeps there.
//!
//! Each endpoint is one key under the prefix whose value is a JSON endpoint
//! (`{"id": "...", "address": "http://10.0.0.7:9001", "weight": 1, "labels": {...}}`, as
//! [`EndpointSpec`](crate::EndpointSpec): `id` defaults to the key's part after the prefix). A
//! replica registers itself with a [`Registration`]: its key is attached to a lease that it keeps
//! alive, so a replica that dies disappears when its lease runs out (its TTL), and one that stops
//! cleanly revokes it and disappears at once.
//!
//! [`Source::etcd`](crate::Source::etcd) reads the prefix once (a snapshot at a revision), then
//! watches it from the next revision. After a lost connection or an etcd restart it reconnects
//! (100 ms doubling to 2 s between attempts) and resumes the watch from the revision after the
//! last one it applied, so no update is missed and none is applied twice; if that revision has
//! been compacted away, it reads the prefix again and announces only the difference from what it
//! had announced. It reports the first failure of an outage as an error item (later attempts go
//! to the log), keeping the endpoints it knows.
//!
//! Needs the crate's feature `etcd` (etcd-client's build runs `protoc`;
//! `scripts/install-test-deps.sh` installs it).

mod register;
mod watch;

pub use register::Registration;

/// The etcd client this module uses, for programs that write keys themselves.
pub use etcd_client;

use std::time::Duration;

/// How the etcd client connects: each RPC and the connection itself time out after this.
pub(crate) const RPC_TIMEOUT: Duration = Duration::from_secs(5);

/// A client for `servers`, with HTTP/2 keep-alive so a dead server is noticed on an idle watch.
pub(crate) async fn connect(servers: &[String]) -> Result<etcd_client::Client, String> {
    let options = etcd_client::ConnectOptions::new()
        .with_connect_timeout(RPC_TIMEOUT)
        .with_timeout(RPC_TIMEOUT)
        .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3))
        .with_keep_alive_while_idle(true);
    match tokio::time::timeout(RPC_TIMEOUT, etcd_client::Client::connect(servers, Some(options))).await {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(e)) => Err(format!("cannot connect to {}: {e}", servers.join(","))),
        Err(_) => Err(format!("cannot connect to {}: no answer in {RPC_TIMEOUT:?}", servers.join(","))),
    }
}
