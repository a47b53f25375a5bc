//! TLS on the gateway's gRPC listener (`[tls]`): rustls with the ring provider, ALPN `h2`,
//! optional mutual TLS, and certificates reloaded from disk while the gateway runs.
//!
//! The listener's certificate chain and key, and the client CA if any, are PEM files. Each
//! handshake uses the server configuration in force when it starts; a task reads the files every
//! `reload_interval` (10 s by default) and, when one differs from what is in force, loads them
//! again and swaps the whole configuration in: new handshakes present the new certificate and
//! check clients against the new CA, open connections keep what they were handshaken with, and
//! nothing restarts. Files that do not load (one half-written, a key that is not the
//! certificate's, a CA file with no certificate) are logged and the configuration in force stays;
//! the next change is tried again. The files' bytes are compared rather than their modification times, which many
//! filesystems keep at a few milliseconds' granularity (a renewal written twice within one tick of
//! that clock would go unseen); a few kilobytes read every few seconds cost nothing. This is how cert-manager's or an ACME client's renewals reach a running gateway, as
//! Envoy's SDS file watch and nginx's reload do.
//!
//! With `client_ca`, clients must present a certificate that chains to one of that file's CAs
//! (rustls' WebPKI client verifier); a client without one, or with one from another CA, fails
//! the handshake. The CA file is reloaded as the certificate is (a CA rotated on disk reaches new
//! handshakes without a restart).
//!
//! The handshake runs on the connection's own task on its serving thread, inside the connection
//! future that then starts HTTP/2 (see `downstream`), never on the accept loop, and gives up after
//! [`HANDSHAKE_TIMEOUT`]. Plain-TCP listeners do not go through this module at all: their
//! connections are served over the bare `TcpStream`, as before.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::danger::ClientCertVerifier;
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
    /// How often `cert`, `key` and `client_ca` are checked for a change (10 s by default).
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

/// Reads a file, an error naming its field.
fn read(field: &str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::new(field, path, format!("cannot read: {e}")))
}

/// Parses the PEM certificate chain `bytes` read from `path` (at least one certificate).
pub(crate) fn parse_certs(
    field: &str,
    path: &Path,
    bytes: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::new(field, path, format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(TlsError::new(field, path, "no CERTIFICATE in the file"));
    }
    Ok(certs)
}

/// Parses the PEM private key `bytes` read from `path`.
pub(crate) fn parse_key(field: &str, path: &Path, bytes: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(bytes)
        .map_err(|e| TlsError::new(field, path, format!("no PEM private key: {e}")))
}

/// Parses the PEM CA certificates `bytes` read from `path` into a root store.
pub(crate) fn parse_roots(field: &str, path: &Path, bytes: &[u8]) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in parse_certs(field, path, bytes)? {
        roots.add(cert).map_err(|e| TlsError::new(field, path, format!("not a CA certificate: {e}")))?;
    }
    Ok(roots)
}

/// The bytes of the listener's TLS files (certificate, key, client CA), as last read.
#[derive(PartialEq, Eq)]
struct FileBytes {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
}

impl FileBytes {
    fn read(config: &TlsConfig) -> Result<Self, TlsError> {
        Ok(Self {
            cert: read("tls.cert", &config.cert)?,
            key: read("tls.key", &config.key)?,
            client_ca: config.client_ca.as_deref().map(|path| read("tls.client_ca", path)).transpose()?,
        })
    }

    /// The certified key these bytes hold, checking that the key is the certificate's.
    fn certified_key(&self, config: &TlsConfig, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
        let certs = parse_certs("tls.cert", &config.cert, &self.cert)?;
        let key = parse_key("tls.key", &config.key, &self.key)?;
        CertifiedKey::from_der(certs, key, provider)
            .map_err(|e| TlsError::new("tls.key", &config.key, format!("does not fit tls.cert: {e}")))
    }

    /// The server configuration these bytes make: their certificate, and with a client CA its
    /// client verifier; ALPN `h2`.
    fn load(&self, config: &TlsConfig, provider: &Arc<CryptoProvider>) -> Result<Loaded, TlsError> {
        let key = Arc::new(self.certified_key(config, provider)?);
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::new("tls", &config.cert, e.to_string()))?;
        let (builder, verifier) = match (&config.client_ca, &self.client_ca) {
            (Some(path), Some(bytes)) => {
                let roots = parse_roots("tls.client_ca", path, bytes)?;
                let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| TlsError::new("tls.client_ca", path, e.to_string()))?;
                (builder.with_client_cert_verifier(verifier.clone()), Some(verifier))
            }
            _ => (builder.with_no_client_auth(), None),
        };
        let mut server = builder.with_cert_resolver(Arc::new(Presented(key.clone())));
        server.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Loaded { server: Arc::new(server), key, verifier })
    }
}

/// Answers every handshake with one certified key.
#[derive(Debug)]
struct Presented(Arc<CertifiedKey>);

impl ResolvesServerCert for Presented {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// What the files loaded into: the server configuration, and (to look at) its key and client
/// verifier.
#[derive(Debug)]
struct Loaded {
    server: Arc<ServerConfig>,
    #[cfg_attr(not(test), allow(dead_code))]
    key: Arc<CertifiedKey>,
    #[cfg_attr(not(test), allow(dead_code))]
    verifier: Option<Arc<dyn ClientCertVerifier>>,
}

/// The TLS configuration new connections are handshaken with, swapped in whole when the files
/// change; the serving threads share it.
#[derive(Debug, Clone)]
pub(crate) struct Acceptors {
    current: Arc<RwLock<Arc<Loaded>>>,
}

impl Acceptors {
    fn current(&self) -> Arc<Loaded> {
        self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    fn swap(&self, loaded: Loaded) {
        *self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(loaded);
    }

    /// An acceptor with the configuration in force now.
    fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current().server.clone())
    }
}

/// The listener's TLS, loaded: the configuration the serving threads share, and what reloads it.
pub(crate) struct ListenerTls {
    acceptors: Acceptors,
    config: TlsConfig,
    provider: Arc<CryptoProvider>,
    /// The files' bytes when they were last read.
    seen: FileBytes,
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
        let seen = FileBytes::read(config)?;
        let loaded = seen.load(config, &provider)?;
        Ok(Self {
            acceptors: Acceptors { current: Arc::new(RwLock::new(Arc::new(loaded))) },
            config: config.clone(),
            provider,
            seen,
        })
    }

    /// What new connections are handshaken with: the configuration in force at each handshake.
    pub(crate) fn acceptors(&self) -> Acceptors {
        self.acceptors.clone()
    }

    /// Reads the certificate, key and client CA files every `reload_interval` until `stop`,
    /// swapping in the configuration they make when one changed and they load; files that do
    /// not load (or cannot be read) are logged and the configuration in force stays.
    pub(crate) async fn reload_until(mut self, mut stop: watch::Receiver<bool>) {
        let interval = self.config.reload_interval;
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = async { drop(stop.wait_for(|stop| *stop).await) } => return,
                _ = tick.tick() => {}
            }
            let now = match FileBytes::read(&self.config) {
                Ok(now) if now == self.seen => continue,
                Ok(now) => now,
                Err(e) => {
                    tracing::warn!("TLS files not reloaded, the ones in force stay: {e}");
                    continue;
                }
            };
            match now.load(&self.config, &self.provider) {
                Ok(loaded) => {
                    self.acceptors.swap(loaded);
                    tracing::info!(cert = %self.config.cert.display(), "TLS files reloaded");
                }
                Err(e) => tracing::warn!("TLS files not reloaded, the ones in force stay: {e}"),
            }
            // Files that do not load are not tried again until one changes.
            self.seen = now;
        }
    }
}

/// The server side of a client's TLS handshake over `tcp`, at most [`HANDSHAKE_TIMEOUT`].
pub(crate) async fn handshake(acceptors: Acceptors, tcp: TcpStream) -> io::Result<TlsStream<TcpStream>> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptors.acceptor().accept(tcp)).await {
        Ok(stream) => stream,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("TLS handshake not done in {HANDSHAKE_TIMEOUT:?}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate for `localhost`: its PEM and its key's PEM.
    fn self_signed() -> (String, String) {
        let made = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("a certificate");
        (made.cert.pem(), made.signing_key.serialize_pem())
    }

    fn der(pem: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(pem.as_bytes()).expect("PEM")
    }

    #[tokio::test(start_paused = true)]
    async fn the_pair_is_swapped_at_the_interval_after_a_change_and_kept_when_the_new_one_is_bad() {
        let dir = tempfile::tempdir().expect("a folder");
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        let write = |pair: &(String, String)| {
            std::fs::write(&cert, &pair.0).expect("write");
            std::fs::write(&key, &pair.1).expect("write");
        };
        let (first, second, third) = (self_signed(), self_signed(), self_signed());
        write(&first);
        let config = TlsConfig::new(&cert, &key).with_reload_interval(Duration::from_secs(10));
        let tls = ListenerTls::new(&config).expect("loads");
        let acceptors = tls.acceptors();
        let presented = move || acceptors.current().key.cert[0].clone();
        assert_eq!(presented(), der(&first.0));
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(tls.reload_until(stopped));

        write(&second);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(presented(), der(&first.0), "not before the interval");
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert_eq!(presented(), der(&second.0), "swapped at the interval");

        // A key that is not the certificate's, then a file that is not PEM: the pair in force stays.
        std::fs::write(&cert, &third.0).expect("write");
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(presented(), der(&second.0), "a mismatched pair is not loaded");
        std::fs::write(&key, "not a key").expect("write");
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(presented(), der(&second.0), "a bad key is not loaded");
        std::fs::remove_file(&key).expect("remove");
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(presented(), der(&second.0), "a missing key is not loaded");

        // The right key arrives: the third pair is complete.
        std::fs::write(&key, &third.1).expect("write");
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(presented(), der(&third.0));

        stop.send_replace(true);
        tokio::time::timeout(Duration::from_secs(1), task).await.expect("stops").expect("no panic");
    }

    /// A self-signed CA certificate named `name`, PEM.
    fn ca(name: &str) -> String {
        let key = rcgen::KeyPair::generate().expect("a key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("parameters");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        params.self_signed(&key).expect("a certificate").pem()
    }

    /// The subjects of the CAs whose client certificates new handshakes accept.
    fn client_cas(acceptors: &Acceptors) -> Vec<Vec<u8>> {
        let loaded = acceptors.current();
        let verifier = loaded.verifier.as_ref().expect("a client verifier");
        verifier.root_hint_subjects().iter().map(|name| name.as_ref().to_vec()).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_ca_rotated_on_disk_is_swapped_in_and_kept_when_the_new_file_is_bad() {
        let dir = tempfile::tempdir().expect("a folder");
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        let ca_file = dir.path().join("ca.pem");
        let (pair, first_ca, second_ca) = (self_signed(), ca("first CA"), ca("second CA"));
        std::fs::write(&cert, &pair.0).expect("write");
        std::fs::write(&key, &pair.1).expect("write");
        std::fs::write(&ca_file, &first_ca).expect("write");
        let config = TlsConfig::new(&cert, &key)
            .with_client_ca(&ca_file)
            .with_reload_interval(Duration::from_secs(10));
        let tls = ListenerTls::new(&config).expect("loads");
        let acceptors = tls.acceptors();
        let first = client_cas(&acceptors);
        assert_eq!(first.len(), 1);
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(tls.reload_until(stopped));

        std::fs::write(&ca_file, &second_ca).expect("write");
        tokio::time::sleep(Duration::from_secs(11)).await;
        let second = client_cas(&acceptors);
        assert_eq!(second.len(), 1);
        assert_ne!(second, first, "the rotated CA is in force");
        assert_eq!(acceptors.current().key.cert[0], der(&pair.0), "the certificate is unchanged");

        std::fs::write(&ca_file, "no certificate here").expect("write");
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(client_cas(&acceptors), second, "a CA file with no certificate is not loaded");

        stop.send_replace(true);
        tokio::time::timeout(Duration::from_secs(1), task).await.expect("stops").expect("no panic");
    }

    #[test]
    fn a_bad_file_is_an_error_that_names_its_field_and_path() {
        let dir = tempfile::tempdir().expect("a folder");
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        let e = ListenerTls::new(&TlsConfig::new(&cert, &key)).expect_err("no files");
        assert!(e.to_string().starts_with("TLS `tls.cert`") && e.to_string().contains("tls.crt"), "{e}");
        let (pem, key_pem) = self_signed();
        std::fs::write(&cert, &pem).expect("write");
        std::fs::write(&key, &pem).expect("write");
        let e = ListenerTls::new(&TlsConfig::new(&cert, &key)).expect_err("a certificate as key");
        assert_eq!(e.field, "tls.key", "{e}");
        std::fs::write(&key, &key_pem).expect("write");
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "nothing").expect("write");
        let e = ListenerTls::new(&TlsConfig::new(&cert, &key).with_client_ca(&ca)).expect_err("no CA");
        assert_eq!(e.field, "tls.client_ca", "{e}");
        assert!(ListenerTls::new(&TlsConfig::new(&cert, &key)).is_ok());
    }
}
