//! `--register-etcd`: the worker registers its endpoint in etcd under a lease it keeps alive, so
//! gateways watching the prefix add it, and drop it when it stops (at once) or dies (after the
//! lease's TTL). Needs a build with `--features etcd`.

use std::net::SocketAddr;

use super::{WorkerArgs, WorkerError};

/// The worker's registration while it serves.
pub(crate) struct Registered {
    #[cfg(feature = "etcd")]
    registration: switchyard_discovery::etcd::Registration,
}

/// Registers the worker if `--register-etcd` names servers; `None` if it does not.
pub(crate) async fn register(
    args: &WorkerArgs,
    local: Option<SocketAddr>,
) -> Result<Option<Registered>, WorkerError> {
    if args.register_etcd.is_empty() {
        return Ok(None);
    }
    let address = match (&args.advertise, local) {
        (Some(address), _) => address.clone(),
        (None, Some(addr)) if !addr.ip().is_unspecified() => format!("http://{addr}"),
        _ => {
            return Err(WorkerError::Registration(
                "--register-etcd: listening on an unspecified address; give --advertise http://HOST:PORT"
                    .into(),
            ));
        }
    };
    let id =
        address.split_once("://").map_or(address.as_str(), |(_, rest)| rest).trim_end_matches('/').to_owned();
    let endpoint = switchyard_core::Endpoint::new(id, address).with_label("model", args.model.clone());
    registered(args, endpoint).await.map(Some)
}

#[cfg(feature = "etcd")]
async fn registered(
    args: &WorkerArgs,
    endpoint: switchyard_core::Endpoint,
) -> Result<Registered, WorkerError> {
    let tls = match &args.etcd_ca {
        Some(ca) => {
            let identity = args.etcd_cert.as_deref().zip(args.etcd_key.as_deref());
            let tls = switchyard_discovery::etcd::EtcdTls::from_files(ca, identity, None)
                .map_err(|e| WorkerError::Registration(format!("--etcd-ca/--etcd-cert/--etcd-key: {e}")))?;
            Some(tls)
        }
        None => None,
    };
    let registration = switchyard_discovery::etcd::Registration::register_with_tls(
        args.register_etcd.clone(),
        &args.etcd_prefix,
        &endpoint,
        args.etcd_ttl,
        tls,
    )
    .await
    .map_err(|e| WorkerError::Registration(e.to_string()))?;
    tracing::info!(key = registration.key(), "worker registered in etcd");
    Ok(Registered { registration })
}

#[cfg(not(feature = "etcd"))]
async fn registered(_: &WorkerArgs, _: switchyard_core::Endpoint) -> Result<Registered, WorkerError> {
    Err(WorkerError::Registration(
        "--register-etcd is not in this build: build with `cargo build --release --features etcd` \
         (etcd-client's build runs `protoc`: scripts/install-test-deps.sh installs it)"
            .into(),
    ))
}

impl Registered {
    /// Removes the worker from etcd (before it drains, so that gateways stop sending to it).
    pub(crate) async fn deregister(self) {
        #[cfg(feature = "etcd")]
        match self.registration.deregister().await {
            Ok(()) => tracing::info!("worker removed from etcd"),
            Err(e) => tracing::warn!("{e}; the key goes when its lease runs out"),
        }
    }
}
