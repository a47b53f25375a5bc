//! TLS towards a pool's endpoints: `tls = { ca, server_name, cert, key }` on a pool, or
//! `https://` endpoint addresses.
//!
//! A pool with `tls` speaks TLS (rustls, ring provider, ALPN `h2`) to every one of its
//! endpoints, configured or discovered, whatever scheme their address has: a discovery source
//! that writes `http://` addresses feeds a TLS pool unchanged. The endpoint's certificate must
//! chain to a CA of `ca` (the system's roots without it) and name `server_name` (the host of the
//! endpoint's address without it: an IP address matches an IP SAN). With `cert` and `key` the
//! gateway presents its own certificate (mutual TLS to the replicas). An `https://` endpoint in a
//! pool without `tls` is reached over TLS too, verified against the system's roots.
//!
//! The files are read when the pool starts; a bad one stops the gateway with an error naming the
//! field. The pool's health checks (`[pool.health]`), out-of-band load reports (`load_reports`)
//! and KV-event streams (`prefix-aware-precise`) go over TLS with the same settings.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use http::uri::Authority;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::tls::{TlsError, load_certs, load_key, load_roots, provider};

/// A pool's TLS towards its endpoints (`tls = { ... }` on a `[[pool]]`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct UpstreamTlsConfig {
    /// CA certificates, PEM, that the endpoints' certificates must chain to; the system's roots
    /// when `None`.
    pub ca: Option<PathBuf>,
    /// The name the endpoints' certificates must carry (SNI too); the host of each endpoint's
    /// address when `None`.
    pub server_name: Option<String>,
    /// The gateway's client certificate chain, PEM (mutual TLS); with `key`.
    pub cert: Option<PathBuf>,
    /// The key of `cert`, PEM.
    pub key: Option<PathBuf>,
}

impl UpstreamTlsConfig {
    /// TLS to endpoints whose certificates chain to the CAs in `ca`.
    pub fn with_ca(ca: impl Into<PathBuf>) -> Self {
        Self { ca: Some(ca.into()), ..Self::default() }
    }

    /// The same, expecting `name` in the endpoints' certificates.
    pub fn with_server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }

    /// The same, presenting the client certificate `cert` with its `key` (mutual TLS).
    pub fn with_client_cert(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.cert = Some(cert.into());
        self.key = Some(key.into());
        self
    }

    /// Checks what needs no file: `cert` and `key` together, a valid `server_name`. `Err` holds
    /// the sub-field (`cert`, `server_name`) and what is wrong.
    pub(crate) fn validate(&self) -> Result<(), (&'static str, String)> {
        match (&self.cert, &self.key) {
            (Some(_), None) => return Err(("key", "`cert` needs its `key`".into())),
            (None, Some(_)) => return Err(("cert", "`key` needs its `cert`".into())),
            _ => {}
        }
        if let Some(name) = &self.server_name
            && ServerName::try_from(name.as_str()).is_err()
        {
            return Err(("server_name", format!("{name:?} is not a DNS name or an IP address")));
        }
        Ok(())
    }
}

/// A pool's TLS connector, loaded.
#[derive(Clone)]
pub(crate) struct UpstreamTls {
    connector: TlsConnector,
    server_name: Option<ServerName<'static>>,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls").field("server_name", &self.server_name).finish()
    }
}

impl UpstreamTls {
    /// Loads the files `config` names; errors name the field under `field` (`pool[0].tls`).
    pub(crate) fn new(config: &UpstreamTlsConfig, field: &str) -> Result<Self, TlsError> {
        let sub = |name: &str| format!("{field}.{name}");
        config.validate().map_err(|(name, message)| TlsError::new(sub(name), Path::new(""), message))?;
        let roots = match &config.ca {
            Some(path) => load_roots(&sub("ca"), path)?,
            None => system_roots(),
        };
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::new(field, Path::new(""), e.to_string()))?
            .with_root_certificates(roots);
        let mut client = match (&config.cert, &config.key) {
            (Some(cert), Some(key)) => {
                let chain = load_certs(&sub("cert"), cert)?;
                let key_der = load_key(&sub("key"), key)?;
                builder
                    .with_client_auth_cert(chain, key_der)
                    .map_err(|e| TlsError::new(sub("key"), key, format!("does not fit `cert`: {e}")))?
            }
            _ => builder.with_no_client_auth(),
        };
        client.alpn_protocols = vec![b"h2".to_vec()];
        let server_name =
            match &config.server_name {
                None => None,
                Some(name) => Some(ServerName::try_from(name.clone()).map_err(|e| {
                    TlsError::new(sub("server_name"), Path::new(""), format!("{name:?}: {e}"))
                })?),
            };
        Ok(Self { connector: TlsConnector::from(Arc::new(client)), server_name })
    }

    /// TLS verified against the system's roots, for `https://` endpoints of pools without
    /// `tls`: loaded once per process.
    pub(crate) fn system() -> Result<Self, TlsError> {
        static SYSTEM: OnceLock<Result<UpstreamTls, String>> = OnceLock::new();
        SYSTEM
            .get_or_init(|| Self::new(&UpstreamTlsConfig::default(), "tls").map_err(|e| e.to_string()))
            .clone()
            .map_err(|message| TlsError::new("tls", Path::new("system roots"), message))
    }

    /// The name to verify and send (SNI) for the endpoint at `authority`.
    pub(crate) fn server_name(&self, authority: &Authority) -> Result<ServerName<'static>, String> {
        if let Some(name) = &self.server_name {
            return Ok(name.clone());
        }
        let host = authority.host();
        let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        ServerName::try_from(host.to_owned()).map_err(|e| format!("{host:?} is not a TLS server name: {e}"))
    }

    /// The client side of the TLS handshake with `name` over `stream`.
    pub(crate) async fn connect<S>(&self, name: ServerName<'static>, stream: S) -> io::Result<TlsStream<S>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        self.connector.connect(name, stream).await
    }
}

/// The same settings for tonic, which the pool's health checks and out-of-band load reports
/// connect with: tonic reaches `https://` addresses over TLS with these.
pub(crate) fn tonic_tls(
    config: &UpstreamTlsConfig,
    field: &str,
) -> Result<tonic::transport::ClientTlsConfig, TlsError> {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    let read = |name: &str, path: &Path| {
        std::fs::read(path)
            .map_err(|e| TlsError::new(format!("{field}.{name}"), path, format!("cannot read: {e}")))
    };
    let mut tls = ClientTlsConfig::new();
    tls = match &config.ca {
        Some(ca) => tls.ca_certificate(Certificate::from_pem(read("ca", ca)?)),
        None => tls.trust_anchors(system_roots().roots),
    };
    if let Some(name) = &config.server_name {
        tls = tls.domain_name(name.clone());
    }
    if let (Some(cert), Some(key)) = (&config.cert, &config.key) {
        tls = tls.identity(Identity::from_pem(read("cert", cert)?, read("key", key)?));
    }
    Ok(tls)
}

/// The system's CA certificates (those that fail to parse are skipped, with a warning).
fn system_roots() -> rustls::RootCertStore {
    let found = rustls_native_certs::load_native_certs();
    for error in &found.errors {
        tracing::warn!("system CA certificates: {error}");
    }
    let mut roots = rustls::RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(found.certs);
    if ignored > 0 {
        tracing::warn!(added, ignored, "system CA certificates: some could not be used");
    }
    roots
}
