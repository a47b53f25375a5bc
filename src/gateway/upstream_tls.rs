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
//! field. A connection to an endpoint opened more than 10 s after they were
//! last read reads them again (off the serving thread), and when one changed and they load, it
//! and every later one use what they hold: a renewed client certificate or a rotated CA reaches
//! the replicas without a restart, while open connections keep theirs. Files that do not load
//! are logged and the ones in force stay. The pool's health checks (`[pool.health]`),
//! out-of-band load reports (`load_reports`) and KV-event streams (`prefix-aware-precise`) go
//! over TLS with the same settings, as read when the pool starts.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use http::uri::Authority;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::tls::{TlsError, parse_certs, parse_key, parse_roots, provider};

/// How long a pool's TLS files are trusted before a new connection reads them again.
pub(crate) const RELOAD_CHECK: Duration = Duration::from_secs(10);

impl UpstreamTlsConfig {
    /// The files it names.
    fn files(&self) -> impl Iterator<Item = &Path> {
        [&self.ca, &self.cert, &self.key].into_iter().filter_map(|path| path.as_deref())
    }
}

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

/// A pool's TLS connector, loaded, and reloaded when its files change.
#[derive(Clone)]
pub(crate) struct UpstreamTls {
    current: Arc<Mutex<Loaded>>,
    config: Arc<UpstreamTlsConfig>,
    /// The config field the files are named under (`pool "llama" tls`), for errors.
    field: Arc<str>,
    server_name: Option<ServerName<'static>>,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls").field("server_name", &self.server_name).finish()
    }
}

/// The connector in force, the files' bytes it was made from, and when they were last read.
struct Loaded {
    connector: TlsConnector,
    client: Arc<ClientConfig>,
    files: Files,
    read_at: Instant,
}

/// The bytes of a pool's TLS files (each `None` when not configured).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Files {
    ca: Option<Vec<u8>>,
    cert: Option<Vec<u8>>,
    key: Option<Vec<u8>>,
}

impl Files {
    /// Reads the files `config` names; an error names the field under `field`.
    fn read(config: &UpstreamTlsConfig, field: &str) -> Result<Self, TlsError> {
        let read = |name: &str, path: &Option<PathBuf>| {
            path.as_deref()
                .map(|path| {
                    std::fs::read(path).map_err(|e| {
                        TlsError::new(format!("{field}.{name}"), path, format!("cannot read: {e}"))
                    })
                })
                .transpose()
        };
        Ok(Self {
            ca: read("ca", &config.ca)?,
            cert: read("cert", &config.cert)?,
            key: read("key", &config.key)?,
        })
    }

    /// The client configuration these bytes make.
    fn client(&self, config: &UpstreamTlsConfig, field: &str) -> Result<ClientConfig, TlsError> {
        let sub = |name: &str| format!("{field}.{name}");
        let roots = match (&config.ca, &self.ca) {
            (Some(path), Some(bytes)) => parse_roots(&sub("ca"), path, bytes)?,
            _ => system_roots(),
        };
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::new(field, Path::new(""), e.to_string()))?
            .with_root_certificates(roots);
        let mut client = match (&config.cert, &self.cert, &config.key, &self.key) {
            (Some(cert), Some(cert_bytes), Some(key), Some(key_bytes)) => {
                let chain = parse_certs(&sub("cert"), cert, cert_bytes)?;
                let key_der = parse_key(&sub("key"), key, key_bytes)?;
                builder
                    .with_client_auth_cert(chain, key_der)
                    .map_err(|e| TlsError::new(sub("key"), key, format!("does not fit `cert`: {e}")))?
            }
            _ => builder.with_no_client_auth(),
        };
        client.alpn_protocols = vec![b"h2".to_vec()];
        Ok(client)
    }
}

impl UpstreamTls {
    /// Loads the files `config` names; errors name the field under `field` (`pool[0].tls`).
    pub(crate) fn new(config: &UpstreamTlsConfig, field: &str) -> Result<Self, TlsError> {
        let sub = |name: &str| format!("{field}.{name}");
        config.validate().map_err(|(name, message)| TlsError::new(sub(name), Path::new(""), message))?;
        let files = Files::read(config, field)?;
        let client = Arc::new(files.client(config, field)?);
        let server_name =
            match &config.server_name {
                None => None,
                Some(name) => Some(ServerName::try_from(name.clone()).map_err(|e| {
                    TlsError::new(sub("server_name"), Path::new(""), format!("{name:?}: {e}"))
                })?),
            };
        let loaded =
            Loaded { connector: TlsConnector::from(client.clone()), client, files, read_at: Instant::now() };
        Ok(Self {
            current: Arc::new(Mutex::new(loaded)),
            config: Arc::new(config.clone()),
            field: field.into(),
            server_name,
        })
    }

    /// The connector for a new connection: the one in force, after reading the files again when
    /// [`RELOAD_CHECK`] has passed since they were last read and swapping in what they make when
    /// they changed and load (files that do not load are logged; the connector in force stays).
    async fn connector(&self) -> TlsConnector {
        let due = {
            let loaded = self.lock();
            if loaded.read_at.elapsed() < RELOAD_CHECK || self.config.files().next().is_none() {
                return loaded.connector.clone();
            }
            loaded.files.clone()
        };
        let (config, field) = (self.config.clone(), self.field.clone());
        // Off the serving thread's runtime: a file read may block.
        let read = tokio::task::spawn_blocking(move || Files::read(&config, &field)).await;
        let mut loaded = self.lock();
        loaded.read_at = Instant::now();
        match read {
            Ok(Ok(files)) if files == due => {}
            Ok(Ok(files)) => match files.client(&self.config, &self.field) {
                Ok(client) => {
                    let client = Arc::new(client);
                    loaded.connector = TlsConnector::from(client.clone());
                    loaded.client = client;
                    tracing::info!(field = %self.field, "TLS files towards the endpoints reloaded");
                    loaded.files = files;
                }
                Err(e) => {
                    tracing::warn!(
                        "TLS files towards the endpoints not reloaded, the ones in force stay: {e}"
                    );
                    // Not tried again until a file changes.
                    loaded.files = files;
                }
            },
            Ok(Err(e)) => {
                tracing::warn!("TLS files towards the endpoints not reloaded, the ones in force stay: {e}")
            }
            Err(e) => tracing::warn!("TLS files towards the endpoints not reloaded: {e}"),
        }
        loaded.connector.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Loaded> {
        self.current.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
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
        self.connector().await.connect(name, stream).await
    }

    /// The client configuration new connections are made with now.
    #[cfg(test)]
    fn client(&self) -> Arc<ClientConfig> {
        self.lock().client.clone()
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

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::SignatureScheme;
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;

    /// A self-signed certificate and its key, PEM.
    fn pair() -> (String, String) {
        let made = rcgen::generate_simple_self_signed(vec!["gateway".to_string()]).expect("a certificate");
        (made.cert.pem(), made.signing_key.serialize_pem())
    }

    /// The first certificate the client presents to a replica that asks for one.
    fn presented(tls: &UpstreamTls) -> CertificateDer<'static> {
        let schemes = [SignatureScheme::ECDSA_NISTP256_SHA256, SignatureScheme::ED25519];
        let key =
            tls.client().client_auth_cert_resolver.resolve(&[], &schemes).expect("a client certificate");
        key.cert[0].clone()
    }

    fn der(pem: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(pem.as_bytes()).expect("PEM")
    }

    #[tokio::test(start_paused = true)]
    async fn a_renewed_client_certificate_reaches_connections_opened_after_the_check_interval() {
        let dir = tempfile::tempdir().expect("a folder");
        let (cert, key) = (dir.path().join("gw.crt"), dir.path().join("gw.key"));
        let write = |pair: &(String, String)| {
            std::fs::write(&cert, &pair.0).expect("write");
            std::fs::write(&key, &pair.1).expect("write");
        };
        let (first, second) = (pair(), pair());
        write(&first);
        let tls =
            UpstreamTls::new(&UpstreamTlsConfig::default().with_client_cert(&cert, &key), "pool[0].tls")
                .expect("loads");
        assert_eq!(presented(&tls), der(&first.0));

        write(&second);
        tokio::time::sleep(RELOAD_CHECK / 2).await;
        tls.connector().await;
        assert_eq!(presented(&tls), der(&first.0), "not read again before the interval");
        tokio::time::sleep(RELOAD_CHECK).await;
        tls.connector().await;
        assert_eq!(presented(&tls), der(&second.0), "a connection after the interval reads the renewal");

        // A key that is not the certificate's: the pair in force stays.
        std::fs::write(&key, pair().1).expect("write");
        tokio::time::sleep(RELOAD_CHECK).await;
        tls.connector().await;
        assert_eq!(presented(&tls), der(&second.0), "a mismatched pair is not loaded");
        std::fs::remove_file(&cert).expect("remove");
        tokio::time::sleep(RELOAD_CHECK).await;
        tls.connector().await;
        assert_eq!(presented(&tls), der(&second.0), "a missing file is not loaded");
    }
}
