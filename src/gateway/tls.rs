//! TLS on the gateway's gRPC listener (`[tls]`): rustls with the ring provider, ALPN `h2`,
//! optional mutual TLS, and certificates reloaded from disk while the gateway runs.
//!
//! The listener's certificate chain and key are PEM files. The server answers every handshake
//! with the [`CertifiedKey`] a resolver holds now; a task polls the two files' modification times
//! and sizes every `reload_interval` (10 s by default) and, when either changed, loads the pair
//! again and swaps it in: new handshakes present the new certificate, open connections keep
//! theirs, and nothing restarts. A pair that does not load (a file half-written, a key that is
//! not the certificate's) is logged and the old one stays in force; the next change is tried
//! again. This is how cert-manager's or an ACME client's renewals reach a running gateway, as
//! Envoy's SDS file watch and nginx's reload do.
//!
//! With `client_ca`, clients must present a certificate that chains to one of that file's CAs
//! (rustls' WebPKI client verifier); a client without one, or with one from another CA, fails
//! the handshake. The CA file is read at start.
//!
//! The handshake runs on the connection's own task on its serving thread, inside the connection
//! future that then starts HTTP/2 (see `downstream`), never on the accept loop, and gives up after
//! [`HANDSHAKE_TIMEOUT`]. Plain-TCP listeners do not go through this module at all: their
//! connections are served over the bare `TcpStream`, as before.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// How often the certificate and key files are checked for a change unless told otherwise.
pub const DEFAULT_RELOAD_INTERVAL: Duration = Duration::from_secs(10);

/// The longest a client may take to complete its TLS handshake before its connection is closed.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The gateway listener's TLS (`[tls]` in the config).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TlsConfig {
    /// The certificate chain, PEM, the server's own certificate first.
    pub cert: PathBuf,
    /// The private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA certificates, PEM: when set, clients must present a certificate signed by one of them.
    pub client_ca: Option<PathBuf>,
    /// How often `cert` and `key` are checked for a change (10 s by default).
    pub reload_interval: Duration,
}

impl TlsConfig {
    /// TLS with the chain in `cert` and the key in `key`, no client certificates, the default
    /// reload interval.
    pub fn new(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        Self { cert: cert.into(), key: key.into(), client_ca: None, reload_interval: DEFAULT_RELOAD_INTERVAL }
    }

    /// The same, requiring client certificates signed by a CA of `client_ca` (mutual TLS).
    pub fn with_client_ca(mut self, client_ca: impl Into<PathBuf>) -> Self {
        self.client_ca = Some(client_ca.into());
        self
    }

    /// The same, checking the files for a change every `interval`.
    pub fn with_reload_interval(mut self, interval: Duration) -> Self {
        self.reload_interval = interval;
        self
    }
}

/// A TLS file that cannot be used: which field, which file, and why.
#[derive(Debug, thiserror::Error)]
#[error("TLS `{field}` {}: {message}", path.display())]
pub struct TlsError {
    /// The config field that names the file (`tls.cert`, `pool[0].tls.ca`, ...).
    pub field: String,
    /// The file.
    pub path: PathBuf,
    /// What is wrong.
    pub message: String,
}

impl TlsError {
    pub(crate) fn new(field: impl Into<String>, path: &Path, message: impl Into<String>) -> Self {
        Self { field: field.into(), path: path.to_owned(), message: message.into() }
    }
}

/// The crypto provider of every TLS connection the gateway makes or takes: ring.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads a PEM certificate chain (at least one certificate).
pub(crate) fn load_certs(field: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = std::fs::read(path).map_err(|e| TlsError::new(field, path, format!("cannot read: {e}")))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::new(field, path, format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(TlsError::new(field, path, "no CERTIFICATE in the file"));
    }
    Ok(certs)
}

/// Reads a PEM private key.
pub(crate) fn load_key(field: &str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = std::fs::read(path).map_err(|e| TlsError::new(field, path, format!("cannot read: {e}")))?;
    PrivateKeyDer::from_pem_slice(&bytes)
        .map_err(|e| TlsError::new(field, path, format!("no PEM private key: {e}")))
}

/// Reads PEM CA certificates into a root store.
pub(crate) fn load_roots(field: &str, path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(field, path)? {
        roots.add(cert).map_err(|e| TlsError::new(field, path, format!("not a CA certificate: {e}")))?;
    }
    Ok(roots)
}

/// Loads a certificate chain and its key, checking that they belong together.
fn load_certified_key(config: &TlsConfig, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let certs = load_certs("tls.cert", &config.cert)?;
    let key = load_key("tls.key", &config.key)?;
    CertifiedKey::from_der(certs, key, provider)
        .map_err(|e| TlsError::new("tls.key", &config.key, format!("does not fit tls.cert: {e}")))
}

/// The certified key every handshake is answered with, swapped when the files change.
#[derive(Debug)]
struct ReloadingCert {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone())
    }
}

/// The listener's TLS, loaded: the acceptor the serving threads share, and what reloads it.
#[derive(Clone)]
pub(crate) struct ListenerTls {
    acceptor: TlsAcceptor,
    cert: Arc<ReloadingCert>,
    config: TlsConfig,
    provider: Arc<CryptoProvider>,
}

impl std::fmt::Debug for ListenerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerTls").field("config", &self.config).finish()
    }
}

impl ListenerTls {
    /// Loads the files `config` names; an error names the field and the file.
    pub(crate) fn new(config: &TlsConfig) -> Result<Self, TlsError> {
        let provider = provider();
        let cert = Arc::new(ReloadingCert {
            current: RwLock::new(Arc::new(load_certified_key(config, &provider)?)),
        });
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::new("tls", &config.cert, e.to_string()))?;
        let builder = match &config.client_ca {
            None => builder.with_no_client_auth(),
            Some(path) => {
                let roots = load_roots("tls.client_ca", path)?;
                let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| TlsError::new("tls.client_ca", path, e.to_string()))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut server = builder.with_cert_resolver(cert.clone());
        server.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Self { acceptor: TlsAcceptor::from(Arc::new(server)), cert, config: config.clone(), provider })
    }

    /// The acceptor new connections are handshaken with.
    pub(crate) fn acceptor(&self) -> TlsAcceptor {
        self.acceptor.clone()
    }

    /// Checks the certificate and key files every `reload_interval` until `stop`, swapping in
    /// the pair they hold when either changed and loads; a pair that does not load is logged and
    /// the one in force stays.
    pub(crate) async fn reload_until(self, mut stop: watch::Receiver<bool>) {
        let mut seen = self.stamps();
        let mut tick = tokio::time::interval(self.config.reload_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = async { drop(stop.wait_for(|stop| *stop).await) } => return,
                _ = tick.tick() => {}
            }
            let now = self.stamps();
            if now == seen {
                continue;
            }
            seen = now;
            match load_certified_key(&self.config, &self.provider) {
                Ok(key) => {
                    *self.cert.current.write().unwrap_or_else(std::sync::PoisonError::into_inner) =
                        Arc::new(key);
                    tracing::info!(cert = %self.config.cert.display(), "TLS certificate reloaded");
                }
                Err(e) => tracing::warn!("TLS certificate not reloaded, the previous one stays: {e}"),
            }
        }
    }

    /// The modification time and size of the certificate and key files (`None` for one that
    /// cannot be read now).
    fn stamps(&self) -> [Option<(SystemTime, u64)>; 2] {
        let stamp =
            |path: &Path| std::fs::metadata(path).ok().and_then(|m| Some((m.modified().ok()?, m.len())));
        [stamp(&self.config.cert), stamp(&self.config.key)]
    }
}

/// The server side of a client's TLS handshake over `tcp`, at most [`HANDSHAKE_TIMEOUT`].
pub(crate) async fn handshake(acceptor: TlsAcceptor, tcp: TcpStream) -> io::Result<TlsStream<TcpStream>> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(stream) => stream,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("TLS handshake not done in {HANDSHAKE_TIMEOUT:?}"),
        )),
    }
}
