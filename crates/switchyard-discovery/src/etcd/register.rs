//! A replica's registration: its endpoint under a key prefix, attached to a lease kept alive.

use std::time::Duration;

use etcd_client::{Client, PutOptions};
use switchyard_core::Endpoint;
use tokio::task::JoinHandle;

use super::{EtcdTls, RPC_TIMEOUT, connect};
use crate::error::DiscoveryError;

/// An endpoint registered in etcd under `PREFIX` + its id, on a lease with a TTL that a task of
/// its own keeps alive (a keep-alive every third of the TTL).
///
/// If the process dies, the keep-alives stop and etcd deletes the key when the TTL runs out; the
/// watching balancers remove the endpoint. [`deregister`](Self::deregister) revokes the lease
/// (the key goes at once); dropping the registration stops the keep-alives (the key goes after
/// the TTL). If etcd restarts or the lease is lost, the task grants a new lease and writes the
/// key again, retrying until it can.
#[derive(Debug)]
pub struct Registration {
    key: String,
    task: JoinHandle<()>,
    lease: tokio::sync::watch::Receiver<i64>,
    servers: Vec<String>,
    tls: Option<EtcdTls>,
}

impl Registration {
    /// Registers `endpoint` under `prefix` in the etcd cluster at `servers`, with a lease of
    /// `ttl` (whole seconds, at least 1 s; etcd may raise a very short one to its minimum).
    /// Returns once the key is written.
    pub async fn register(
        servers: Vec<String>,
        prefix: &str,
        endpoint: &Endpoint,
        ttl: Duration,
    ) -> Result<Self, DiscoveryError> {
        Self::register_with_tls(servers, prefix, endpoint, ttl, None).await
    }

    /// [`register`](Self::register) over TLS with `tls` (the servers' addresses `https://`).
    pub async fn register_with_tls(
        servers: Vec<String>,
        prefix: &str,
        endpoint: &Endpoint,
        ttl: Duration,
        tls: Option<EtcdTls>,
    ) -> Result<Self, DiscoveryError> {
        let key = format!("{prefix}{}", endpoint.id);
        let value = serde_json::to_vec(endpoint).map_err(|e| error(&key, e.to_string()))?;
        let ttl = ttl.as_secs().max(1) as i64;
        let mut client = connect(&servers, tls.as_ref()).await.map_err(|e| error(&key, e))?;
        let lease = put(&mut client, &key, &value, ttl).await.map_err(|e| error(&key, e))?;
        let (lease_tx, lease_rx) = tokio::sync::watch::channel(lease);
        let server = Server { servers: servers.clone(), tls: tls.clone() };
        let task = tokio::spawn(keep_alive(server, client, key.clone(), value, ttl, lease, lease_tx));
        tracing::info!(key, ttl, "registered in etcd");
        Ok(Self { key, task, lease: lease_rx, servers, tls })
    }

    /// The key the endpoint is registered under.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The id of the lease in force.
    pub fn lease(&self) -> i64 {
        *self.lease.borrow()
    }

    /// Stops the keep-alives and revokes the lease: the key is deleted at once.
    pub async fn deregister(self) -> Result<(), DiscoveryError> {
        self.task.abort();
        let lease = *self.lease.borrow();
        let mut client = connect(&self.servers, self.tls.as_ref()).await.map_err(|e| error(&self.key, e))?;
        match tokio::time::timeout(RPC_TIMEOUT, client.lease_revoke(lease)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(error(&self.key, format!("cannot revoke lease {lease}: {e}"))),
            Err(_) => Err(error(&self.key, format!("revoking lease {lease} timed out"))),
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn error(key: &str, message: String) -> DiscoveryError {
    DiscoveryError::Backend { source_name: format!("etcd registration {key}"), message }
}

/// Grants a lease of `ttl` seconds and writes `key` on it; the lease's id.
async fn put(client: &mut Client, key: &str, value: &[u8], ttl: i64) -> Result<i64, String> {
    let lease = tokio::time::timeout(RPC_TIMEOUT, client.lease_grant(ttl, None))
        .await
        .map_err(|_| "granting a lease timed out".to_string())?
        .map_err(|e| format!("cannot grant a lease: {e}"))?
        .id();
    tokio::time::timeout(RPC_TIMEOUT, client.put(key, value, Some(PutOptions::new().with_lease(lease))))
        .await
        .map_err(|_| format!("writing {key} timed out"))?
        .map_err(|e| format!("cannot write {key}: {e}"))?;
    Ok(lease)
}

/// Where the registration's etcd is, and how to connect to it.
struct Server {
    servers: Vec<String>,
    tls: Option<EtcdTls>,
}

/// Keeps `lease` alive; when it is lost (expired, etcd restarted without it, connection gone),
/// registers again on a new lease.
async fn keep_alive(
    server: Server,
    mut client: Client,
    key: String,
    value: Vec<u8>,
    ttl: i64,
    mut lease: i64,
    lease_tx: tokio::sync::watch::Sender<i64>,
) {
    let period = Duration::from_millis((ttl as u64 * 1000 / 3).max(100));
    let mut retry = Duration::from_millis(100);
    loop {
        let lost = match client.lease_keep_alive(lease).await {
            Ok((mut keeper, mut responses)) => loop {
                if let Err(e) = keeper.keep_alive().await {
                    break format!("keep-alive failed: {e}");
                }
                match tokio::time::timeout(RPC_TIMEOUT, responses.message()).await {
                    Ok(Ok(Some(response))) if response.ttl() > 0 => {}
                    Ok(Ok(Some(_))) => break format!("lease {lease} expired"),
                    Ok(Ok(None)) => break "keep-alive stream ended".to_string(),
                    Ok(Err(e)) => break format!("keep-alive failed: {e}"),
                    Err(_) => break "keep-alive timed out".to_string(),
                }
                retry = Duration::from_millis(100);
                tokio::time::sleep(period).await;
            },
            Err(e) => format!("keep-alive failed: {e}"),
        };
        tracing::warn!(key, "etcd registration lost ({lost}); registering again");
        loop {
            tokio::time::sleep(retry).await;
            retry = (retry * 2).min(Duration::from_secs(2));
            let attempt = match connect(&server.servers, server.tls.as_ref()).await {
                Ok(mut fresh) => put(&mut fresh, &key, &value, ttl).await.map(|lease| (fresh, lease)),
                Err(e) => Err(e),
            };
            match attempt {
                Ok((fresh, new_lease)) => {
                    client = fresh;
                    lease = new_lease;
                    let _ = lease_tx.send(lease);
                    tracing::info!(key, lease, "registered in etcd again");
                    break;
                }
                Err(e) => tracing::debug!(key, "etcd registration failed: {e}"),
            }
        }
    }
}
