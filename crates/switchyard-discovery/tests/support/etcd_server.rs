//! A real etcd server for tests: Debian's `etcd` on loopback ports, its data in a temporary
//! folder, stopped (SIGKILL) and restarted on the same ports and data at will.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use switchyard_discovery::etcd::etcd_client;

pub(crate) struct EtcdServer {
    dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
    /// Served over TLS, client certificates required: the files, in `dir`.
    tls: Option<TlsFiles>,
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate it signed (PEM files,
/// made at test time: no key is committed), and a second CA that signed nothing of these.
#[derive(Clone)]
pub(crate) struct TlsFiles {
    pub(crate) ca: PathBuf,
    pub(crate) other_ca: PathBuf,
    pub(crate) server_cert: PathBuf,
    pub(crate) server_key: PathBuf,
    pub(crate) client_cert: PathBuf,
    pub(crate) client_key: PathBuf,
}

impl TlsFiles {
    fn make(dir: &Path) -> Self {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let ca = |name: &str| {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(DnType::CommonName, name);
            let pem = params.self_signed(&key).unwrap().pem();
            (Issuer::new(params, key), pem)
        };
        let (issuer, ca_pem) = ca("etcd test CA");
        let (_, other_pem) = ca("another CA");
        let issue = |name: &str| {
            let key = KeyPair::generate().unwrap();
            let mut params =
                CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
            params.distinguished_name.push(DnType::CommonName, name);
            (params.signed_by(&key, &issuer).unwrap().pem(), key.serialize_pem())
        };
        let (server_cert, server_key) = issue("etcd");
        let (client_cert, client_key) = issue("gateway");
        let write = |name: &str, pem: &str| {
            let path = dir.join(name);
            std::fs::write(&path, pem).unwrap();
            path
        };
        Self {
            ca: write("ca.pem", &ca_pem),
            other_ca: write("other-ca.pem", &other_pem),
            server_cert: write("server.pem", &server_cert),
            server_key: write("server-key.pem", &server_key),
            client_cert: write("client.pem", &client_cert),
            client_key: write("client-key.pem", &client_key),
        }
    }

    /// The client's TLS: this CA and the client certificate.
    pub(crate) fn client(&self) -> switchyard_discovery::etcd::EtcdTls {
        switchyard_discovery::etcd::EtcdTls::from_files(
            &self.ca,
            Some((&self.client_cert, &self.client_key)),
            None,
        )
        .unwrap()
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl EtcdServer {
    /// Starts etcd and waits until it answers. Fails, naming the setup script, if there is no
    /// `etcd` binary.
    pub(crate) async fn start() -> Self {
        let mut server = Self {
            dir: tempfile::tempdir().unwrap(),
            client_port: free_port(),
            peer_port: free_port(),
            child: None,
            tls: None,
        };
        server.resume().await;
        server
    }

    /// Starts etcd serving its clients over TLS, with client certificates required
    /// (`--client-cert-auth`), and waits until it answers.
    pub(crate) async fn start_tls() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let tls = TlsFiles::make(dir.path());
        let mut server =
            Self { dir, client_port: free_port(), peer_port: free_port(), child: None, tls: Some(tls) };
        server.resume().await;
        server
    }

    /// The certificates of a server started with [`start_tls`](Self::start_tls).
    pub(crate) fn tls(&self) -> &TlsFiles {
        self.tls.as_ref().expect("started with start_tls")
    }

    /// The client URL, `http://127.0.0.1:PORT` (`https://` over TLS).
    pub(crate) fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    fn options(&self) -> Option<etcd_client::ConnectOptions> {
        let tls = self.tls.as_ref()?;
        let identity = etcd_client::Identity::from_pem(
            std::fs::read(&tls.client_cert).unwrap(),
            std::fs::read(&tls.client_key).unwrap(),
        );
        let ca = etcd_client::Certificate::from_pem(std::fs::read(&tls.ca).unwrap());
        Some(
            etcd_client::ConnectOptions::new()
                .with_tls(etcd_client::TlsOptions::new().ca_certificate(ca).identity(identity)),
        )
    }

    /// Kills etcd (SIGKILL: no goodbye to its clients) and waits for it to exit.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts etcd again on the same ports and data, and waits until it answers.
    pub(crate) async fn resume(&mut self) {
        assert!(self.child.is_none(), "etcd is running");
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut command = Command::new("etcd");
        if let Some(tls) = &self.tls {
            let path = |p: &Path| p.display().to_string();
            command.args([
                "--cert-file",
                &path(&tls.server_cert),
                "--key-file",
                &path(&tls.server_key),
                "--trusted-ca-file",
                &path(&tls.ca),
                "--client-cert-auth",
            ]);
        }
        let child = command
            .args([
                "--name",
                "test",
                "--data-dir",
                &self.dir.path().join("data").display().to_string(),
                "--listen-client-urls",
                &self.url(),
                "--advertise-client-urls",
                &self.url(),
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
                "--initial-cluster",
                &format!("test={peer}"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start `etcd` ({e}): install it with scripts/install-test-deps.sh (Debian's etcd-server)")
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(mut client) = etcd_client::Client::connect([self.url()], self.options()).await
                && tokio::time::timeout(Duration::from_secs(2), client.get("probe", None))
                    .await
                    .is_ok_and(|r| r.is_ok())
            {
                return;
            }
            assert!(Instant::now() < deadline, "etcd did not answer within 30 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub(crate) async fn client(&self) -> etcd_client::Client {
        etcd_client::Client::connect([self.url()], self.options()).await.unwrap()
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.kill();
    }
}
