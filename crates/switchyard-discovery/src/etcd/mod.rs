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

/// TLS towards the etcd servers (their addresses `https://`): the CA their certificates must
/// chain to (etcd's `--trusted-ca-file` side: a cluster's own CA, as etcd deployments use), and
/// the client certificate and key to present when they ask for one (`--client-cert-auth`).
///
/// ```no_run
/// # fn example() -> Result<(), String> {
/// use switchyard_discovery::etcd::EtcdTls;
/// let tls = EtcdTls::from_files("ca.pem".as_ref(), Some(("client.pem".as_ref(), "client-key.pem".as_ref())), None)?;
/// let source = switchyard_discovery::Source::etcd_with_tls(vec!["https://10.0.0.5:2379".into()], "/pool/", Some(tls));
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct EtcdTls {
    options: etcd_client::TlsOptions,
}

impl EtcdTls {
    /// The CA (PEM), the client's certificate and key (PEM) and the name the servers'
    /// certificates must carry (their address's host if none). An error names the file.
    pub fn from_files(
        ca: &std::path::Path,
        identity: Option<(&std::path::Path, &std::path::Path)>,
        server_name: Option<&str>,
    ) -> Result<Self, String> {
        let read = |path: &std::path::Path| {
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
        };
        let mut options =
            etcd_client::TlsOptions::new().ca_certificate(etcd_client::Certificate::from_pem(read(ca)?));
        if let Some((cert, key)) = identity {
            options = options.identity(etcd_client::Identity::from_pem(read(cert)?, read(key)?));
        }
        if let Some(name) = server_name {
            options = options.domain_name(name);
        }
        Ok(Self { options })
    }
}

/// A client for `servers`, with HTTP/2 keep-alive so a dead server is noticed on an idle watch,
/// over TLS with `tls`.
pub(crate) async fn connect(
    servers: &[String],
    tls: Option<&EtcdTls>,
) -> Result<etcd_client::Client, String> {
    let mut options = etcd_client::ConnectOptions::new()
        .with_connect_timeout(RPC_TIMEOUT)
        .with_timeout(RPC_TIMEOUT)
        .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3))
        .with_keep_alive_while_idle(true);
    if let Some(tls) = tls {
        options = options.with_tls(tls.options.clone());
    }
    match tokio::time::timeout(RPC_TIMEOUT, etcd_client::Client::connect(servers, Some(options))).await {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(e)) => Err(format!("cannot connect to {}: {e}", servers.join(","))),
        Err(_) => Err(format!("cannot connect to {}: no answer in {RPC_TIMEOUT:?}", servers.join(","))),
    }
}
