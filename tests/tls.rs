#![allow(clippy::unwrap_used, clippy::expect_used)]
//! TLS and mutual TLS on the gateway's listener and towards its replicas, the certificates
//! reloaded from disk, and the admin API's bearer token: in-process gateways and workers over
//! loopback, with certificates made at test time by `rcgen` (no key is committed).

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use switchyard::gateway::{AdminToken, Gateway, GatewayConfig, GatewayError};
use switchyard::proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use switchyard::worker::{self, WorkerArgs};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// A certificate authority that issues certificates into a folder.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

/// A certificate and its key, as PEM text.
struct Issued {
    cert: String,
    key: String,
}

impl Ca {
    fn new(name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let pem = params.self_signed(&key).unwrap().pem();
        Self { issuer: Issuer::new(params, key), pem }
    }

    /// A certificate for `localhost` and 127.0.0.1 (a server's, or a client's), valid now, or
    /// expired when `expired`.
    fn issue(&self, name: &str, expired: bool) -> Issued {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Issued { cert: cert.pem(), key: key.serialize_pem() }
    }
}

impl Issued {
    /// Writes the pair as `NAME.crt` and `NAME.key` into `dir`; their paths.
    fn write(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let (cert, key) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
        std::fs::write(&cert, &self.cert).unwrap();
        std::fs::write(&key, &self.key).unwrap();
        (cert, key)
    }

    fn identity(&self) -> Identity {
        Identity::from_pem(&self.cert, &self.key)
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// An in-process worker over TLS with `cert`/`key`, requiring client certificates from
/// `client_ca` if given; it stops when dropped.
struct Worker {
    addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

async fn tls_worker(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Worker {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let args = WorkerArgs {
        speed: 20.0,
        tls_cert: Some(cert.to_owned()),
        tls_key: Some(key.to_owned()),
        tls_client_ca: client_ca.map(Path::to_owned),
        ..WorkerArgs::default()
    };
    let (tx, rx) = oneshot::channel();
    tokio::spawn(worker::serve(args, listener, async move {
        let _ = rx.await;
    }));
    Worker { addr, _stop: tx }
}

async fn start(config: &str, admin: Option<TcpListener>) -> Result<Gateway, GatewayError> {
    let config = GatewayConfig::from_toml(config).unwrap();
    Gateway::start(config, TcpListener::bind("127.0.0.1:0").await.unwrap(), admin)
}

/// A gRPC client of `addr` over TLS trusting `ca`, presenting `identity` if given.
async fn tls_client(
    addr: SocketAddr,
    ca: &str,
    identity: Option<Identity>,
) -> Result<GrpcInferenceServiceClient<Channel>, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)).domain_name("localhost");
    if let Some(identity) = identity {
        tls = tls.identity(identity);
    }
    let channel = Channel::from_shared(format!("https://{addr}")).unwrap().tls_config(tls)?.connect().await?;
    Ok(GrpcInferenceServiceClient::new(channel))
}

/// One inference call: its answer's text, or the error with its causes.
async fn infer(client: &mut GrpcInferenceServiceClient<Channel>) -> Result<usize, String> {
    let request = worker::request::text_request("sim-llm", "Hello over TLS.", 5);
    match client.model_infer(request).await {
        Ok(response) => Ok(response.into_inner().outputs.len()),
        Err(status) => Err(format!("{status:?}")),
    }
}

/// The error and every cause under it, as one line.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

#[tokio::test]
async fn a_tonic_client_reaches_a_mutual_tls_worker_through_a_tls_gateway_and_side_channels_go_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("switchyard test CA");
    let ca_file = write(dir.path(), "ca.pem", &ca.pem);
    let (server_cert, server_key) = ca.issue("server", false).write(dir.path(), "server");
    let (client_cert, client_key) = ca.issue("gateway", false).write(dir.path(), "gateway");
    let worker = tls_worker(&server_cert, &server_key, Some(&ca_file)).await;

    let config = format!(
        "threads = 1\n[tls]\ncert = {server_cert:?}\nkey = {server_key:?}\n\
         [[pool]]\nname = \"default\"\nendpoints = [{{ address = \"http://{}\" }}]\n\
         tls = {{ ca = {ca_file:?}, server_name = \"localhost\", cert = {client_cert:?}, key = {client_key:?} }}\n\
         load_reports = \"20ms\"\n[pool.health]\ncheck_interval = \"100ms\"\n",
        worker.addr
    );
    let gateway = start(&config, None).await.unwrap();
    // The endpoint joins once its health, checked over TLS, says SERVING; its out-of-band load
    // reports come over TLS too, before any call could have brought one in its trailers.
    let give_up = Instant::now() + Duration::from_secs(10);
    while gateway.pools()[0].board().snapshot().first().is_none_or(|e| e.load.report.is_none()) {
        assert!(Instant::now() < give_up, "no healthy endpoint with an out-of-band load report in 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut client = tls_client(gateway.local_addr(), &ca.pem, None).await.unwrap();
    let answer = infer(&mut client).await;
    assert_eq!(answer, Ok(1), "the call went through the gateway over TLS to the worker over mTLS");
    assert_eq!(gateway.pools()[0].board().snapshot()[0].load.completed, 1);
    gateway.shutdown().await.unwrap();
}

#[tokio::test]
async fn kv_event_streams_reach_a_tls_worker_over_tls() {
    use switchyard_hash::precise::{KvFeed, KvSubscriber, SubscriberConfig};
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("switchyard test CA");
    let (cert, key) = ca.issue("server", false).write(dir.path(), "server");
    let worker = tls_worker(&cert, &key, None).await;
    let feed = Arc::new(KvFeed::new(1000, Duration::from_secs(60)));
    let fast = SubscriberConfig { min_backoff: Duration::from_millis(10), ..SubscriberConfig::default() };
    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&ca.pem)).domain_name("localhost");
    let subscriber = KvSubscriber::new(feed.clone(), fast).with_tls(tls);
    let id = switchyard_core::EndpointId::from("r0");
    subscriber.insert(id.clone(), &format!("http://{}", worker.addr));
    let give_up = Instant::now() + Duration::from_secs(10);
    while !feed.is_live(&id) {
        assert!(Instant::now() < give_up, "the KV-event stream did not come up over TLS in 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_replica_that_wants_a_client_certificate_refuses_a_pool_without_one() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("switchyard test CA");
    let ca_file = write(dir.path(), "ca.pem", &ca.pem);
    let (cert, key) = ca.issue("server", false).write(dir.path(), "server");
    let worker = tls_worker(&cert, &key, Some(&ca_file)).await;
    let config = format!(
        "threads = 1\n[[pool]]\nname = \"default\"\nendpoints = [{{ address = \"http://{}\" }}]\n\
         tls = {{ ca = {ca_file:?} }}\n",
        worker.addr
    );
    let gateway = start(&config, None).await.unwrap();
    let channel =
        Channel::from_shared(format!("http://{}", gateway.local_addr())).unwrap().connect().await.unwrap();
    let error = infer(&mut GrpcInferenceServiceClient::new(channel)).await.unwrap_err();
    assert!(error.contains("Unavailable"), "{error}");
    gateway.shutdown().await.unwrap();
}

#[tokio::test]
async fn trusting_another_ca_fails_the_handshake_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, other) = (Ca::new("switchyard test CA"), Ca::new("another CA"));
    let other_file = write(dir.path(), "other.pem", &other.pem);
    let (cert, key) = ca.issue("server", false).write(dir.path(), "server");
    let worker = tls_worker(&cert, &key, None).await;
    let config = format!(
        "threads = 1\n[tls]\ncert = {cert:?}\nkey = {key:?}\n\
         [[pool]]\nname = \"default\"\nendpoints = [{{ address = \"https://localhost:{}\" }}]\n\
         tls = {{ ca = {other_file:?} }}\n",
        worker.addr.port()
    );
    let gateway = start(&config, None).await.unwrap();

    // A client that trusts another CA refuses the gateway's certificate.
    let refused = tls_client(gateway.local_addr(), &other.pem, None).await;
    let error = chain(&refused.expect_err("the handshake fails"));
    assert!(error.contains("UnknownIssuer"), "{error}");

    // The gateway, trusting another CA than the worker's, refuses the worker's certificate: the
    // call fails with UNAVAILABLE, it never reached the worker.
    let mut client = tls_client(gateway.local_addr(), &ca.pem, None).await.unwrap();
    let error = infer(&mut client).await.unwrap_err();
    assert!(error.contains("Unavailable"), "{error}");
    gateway.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_expired_server_certificate_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("switchyard test CA");
    let (cert, key) = ca.issue("server", true).write(dir.path(), "expired");
    let config = format!(
        "threads = 1\n[tls]\ncert = {cert:?}\nkey = {key:?}\n\
         [[pool]]\nname = \"default\"\nendpoints = [{{ address = \"http://127.0.0.1:9\" }}]\n"
    );
    let gateway = start(&config, None).await.unwrap();
    let refused = tls_client(gateway.local_addr(), &ca.pem, None).await;
    let error = chain(&refused.expect_err("the handshake fails"));
    assert!(error.to_lowercase().contains("expired"), "{error}");
    gateway.shutdown().await.unwrap();
}

#[tokio::test]
async fn with_a_client_ca_only_clients_with_its_certificates_get_through() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, other) = (Ca::new("switchyard test CA"), Ca::new("another CA"));
    let ca_file = write(dir.path(), "ca.pem", &ca.pem);
    let (cert, key) = ca.issue("server", false).write(dir.path(), "server");
    let worker = tls_worker(&cert, &key, None).await;
    let config = format!(
        "threads = 1\n[tls]\ncert = {cert:?}\nkey = {key:?}\nclient_ca = {ca_file:?}\n\
         [[pool]]\nname = \"default\"\nendpoints = [{{ address = \"https://127.0.0.1:{}\" }}]\n\
         tls = {{ ca = {ca_file:?} }}\n",
        worker.addr.port()
    );
    let gateway = start(&config, None).await.unwrap();
    let addr = gateway.local_addr();
    // A client that connects and says nothing holds up no one (its handshake waits on its own
    // task, the serving thread's only one here).
    let silent = TcpStream::connect(addr).await.unwrap();

    // With TLS 1.3 the client's side of the handshake ends before the server checks its
    // certificate: the refusal shows on the first call, or on connecting.
    for identity in [None, Some(other.issue("stranger", false).identity())] {
        let with = if identity.is_some() { "another CA's certificate" } else { "no certificate" };
        match tls_client(addr, &ca.pem, identity).await {
            Err(e) => assert!(chain(&e).contains("tls"), "{with}: {}", chain(&e)),
            // The server closes the connection: the call fails with it (closed, broken pipe).
            Ok(mut client) => {
                let error = infer(&mut client).await.unwrap_err();
                assert!(
                    error.contains("transport error") || error.contains("connection closed"),
                    "{with}: {error}"
                );
            }
        }
    }
    let board = gateway.pools()[0].board().snapshot();
    assert_eq!(board[0].load.completed + board[0].load.failed, 0, "no call reached the pool");
    let mut client = tls_client(addr, &ca.pem, Some(ca.issue("client", false).identity())).await.unwrap();
    assert_eq!(infer(&mut client).await, Ok(1), "a client with a certificate of the client CA");
    // (Else the drain would wait for its handshake's timeout.)
    drop(silent);
    gateway.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_client_ca_rotated_on_disk_admits_its_clients_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, old_clients, new_clients) =
        (Ca::new("server CA"), Ca::new("old client CA"), Ca::new("new client CA"));
    let ca_file = write(dir.path(), "server-ca.pem", &ca.pem);
    let client_ca = write(dir.path(), "client-ca.pem", &old_clients.pem);
    let (cert, key) = ca.issue("server", false).write(dir.path(), "server");
    let worker = tls_worker(&cert, &key, None).await;
    let config = format!(
        "threads = 1\n[tls]\ncert = {cert:?}\nkey = {key:?}\nclient_ca = {client_ca:?}\nreload_interval = \"20ms\"\n\
         [[pool]]\nname = \"default\"\nendpoints = [{{ address = \"https://127.0.0.1:{}\" }}]\n\
         tls = {{ ca = {ca_file:?} }}\n",
        worker.addr.port()
    );
    let gateway = start(&config, None).await.unwrap();
    let addr = gateway.local_addr();
    let call = |issuer: &Ca| {
        let identity = issuer.issue("client", false).identity();
        let pem = ca.pem.clone();
        async move {
            match tls_client(addr, &pem, Some(identity)).await {
                Ok(mut client) => infer(&mut client).await,
                Err(e) => Err(chain(&e)),
            }
        }
    };
    assert_eq!(call(&old_clients).await, Ok(1), "a client of the CA in force");
    assert!(call(&new_clients).await.is_err(), "a client of the next CA, before the rotation");

    write(dir.path(), "client-ca.pem", &new_clients.pem);
    let give_up = Instant::now() + Duration::from_secs(5);
    loop {
        match call(&new_clients).await {
            Ok(1) => break,
            _ if Instant::now() < give_up => tokio::time::sleep(Duration::from_millis(20)).await,
            other => panic!("the rotated client CA was not in force within 5 s: {other:?}"),
        }
    }
    assert!(call(&old_clients).await.is_err(), "the old CA's clients are refused after the rotation");
    gateway.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_gateways_tls_flags_serve_its_listener_over_mutual_tls() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, clients) = (Ca::new("server CA"), Ca::new("client CA"));
    let client_ca = write(dir.path(), "client-ca.pem", &clients.pem);
    let (cert, key) = ca.issue("server", false).write(dir.path(), "server");
    let worker = common::worker::in_process(WorkerArgs { speed: 20.0, ..WorkerArgs::default() }).await;
    let backend = worker.addr.to_string();
    let (_gateway, addrs) = common::spawn_until_all(
        &[
            "gateway",
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--backend",
            &backend,
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            "--tls-client-ca",
            client_ca.to_str().unwrap(),
        ],
        &["gateway serving on "],
    )
    .await;
    let addr: SocketAddr = addrs[0].parse().unwrap();
    let mut client =
        tls_client(addr, &ca.pem, Some(clients.issue("client", false).identity())).await.unwrap();
    assert_eq!(infer(&mut client).await, Ok(1), "a client with a certificate of --tls-client-ca");
    let refused = match tls_client(addr, &ca.pem, None).await {
        Ok(mut client) => infer(&mut client).await.is_err(),
        Err(_) => true,
    };
    assert!(refused, "a client without a certificate is refused");

    // --tls-client-ca alone has no listener to put it on.
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["gateway", "--backend", "127.0.0.1:9", "--tls-client-ca", client_ca.to_str().unwrap()])
        .kill_on_drop(true)
        .output();
    let output =
        tokio::time::timeout(Duration::from_secs(10), output).await.expect("it exits at once").unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("--tls-client-ca"), "{stderr}");
}

/// The certificate the TLS server at `addr` presents to a client that trusts `roots`, or the
/// handshake's error.
async fn presented(addr: SocketAddr, roots: &[&str]) -> Result<Vec<u8>, String> {
    use rustls::pki_types::pem::PemObject;
    let mut store = rustls::RootCertStore::empty();
    for pem in roots {
        store.add(rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let stream = connector.connect(name, tcp).await.map_err(|e| e.to_string())?;
    let (_, connection) = stream.get_ref();
    assert_eq!(connection.alpn_protocol(), Some(&b"h2"[..]), "ALPN h2");
    Ok(connection.peer_certificates().unwrap()[0].to_vec())
}

#[tokio::test]
async fn certificates_replaced_on_disk_are_presented_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (first_ca, second_ca) = (Ca::new("first CA"), Ca::new("second CA"));
    let (cert, key) = first_ca.issue("server", false).write(dir.path(), "server");
    let config = format!(
        "threads = 1\n[tls]\ncert = {cert:?}\nkey = {key:?}\nreload_interval = \"20ms\"\n\
         [[pool]]\nname = \"default\"\nendpoints = [{{ address = \"http://127.0.0.1:9\" }}]\n"
    );
    let gateway = start(&config, None).await.unwrap();
    let addr = gateway.local_addr();
    let first = presented(addr, &[&first_ca.pem]).await.unwrap();
    assert!(presented(addr, &[&second_ca.pem]).await.is_err(), "the second CA's client refuses the first");

    let renewed = second_ca.issue("server", false);
    renewed.write(dir.path(), "server");
    let give_up = Instant::now() + Duration::from_secs(5);
    let second = loop {
        match presented(addr, &[&first_ca.pem, &second_ca.pem]).await {
            Ok(der) if der != first => break der,
            _ if Instant::now() < give_up => tokio::time::sleep(Duration::from_millis(20)).await,
            other => panic!("the renewed certificate was not presented within 5 s: {other:?}"),
        }
    };
    assert!(presented(addr, &[&second_ca.pem]).await.is_ok(), "new handshakes present the new certificate");

    // A bad key on disk is not loaded: the renewed pair stays in force.
    write(dir.path(), "server.key", "not a key");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(presented(addr, &[&second_ca.pem]).await, Ok(second));
    gateway.shutdown().await.unwrap();
}

/// One HTTP/1.1 request to the admin API at `addr` with `authorization`, if given: the status
/// and the body.
async fn admin(addr: SocketAddr, method: &str, path: &str, authorization: Option<&str>) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let auth = authorization.map(|a| format!("Authorization: {a}\r\n")).unwrap_or_default();
    let body = if method == "PUT" { r#"{"policy":"round-robin"}"# } else { "" };
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: admin\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP response");
    (head.split_whitespace().nth(1).unwrap().parse().unwrap(), body.to_owned())
}

const POOL: &str =
    "threads = 1\n[[pool]]\nname = \"default\"\nendpoints = [{ address = \"http://127.0.0.1:9\" }]\n";
const TOKEN: &str = "a-test-token-of-some-length";

#[tokio::test]
async fn an_admin_api_off_loopback_needs_a_token_for_every_call() {
    // Without a token the gateway refuses to start, and says how to give one.
    let exposed = TcpListener::bind("0.0.0.0:0").await.unwrap();
    let error = start(POOL, Some(exposed)).await.expect_err("no start without a token");
    assert!(matches!(error, GatewayError::AdminExposed(_)), "{error}");
    assert!(error.to_string().contains("--admin-token-file"), "{error}");

    let exposed = TcpListener::bind("0.0.0.0:0").await.unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], exposed.local_addr().unwrap().port()));
    let config = GatewayConfig::from_toml(POOL).unwrap().with_admin_token(AdminToken::new(TOKEN).unwrap());
    let gateway =
        Gateway::start(config, TcpListener::bind("127.0.0.1:0").await.unwrap(), Some(exposed)).unwrap();
    let (status, body) = admin(addr, "GET", "/endpoints", None).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("Authorization: Bearer"), "{body}");
    let (status, _) = admin(addr, "GET", "/metrics", Some("Bearer not-the-token-at-all")).await;
    assert_eq!(status, 401);
    let (status, body) = admin(addr, "GET", "/endpoints", Some(&format!("Bearer {TOKEN}"))).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = admin(addr, "PUT", "/policy", Some(&format!("Bearer {TOKEN}"))).await;
    assert_eq!(status, 200, "{body}");
    gateway.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_binary_will_not_expose_its_admin_api_without_a_token() {
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["gateway", "--listen", "127.0.0.1:0", "--admin", "0.0.0.0:0", "--backend", "127.0.0.1:9"])
        .env_remove(switchyard::gateway::ADMIN_TOKEN_ENV)
        .kill_on_drop(true)
        .output();
    // A gateway that started would serve until killed: give up (and kill it) after 10 s.
    let output = tokio::time::timeout(Duration::from_secs(10), run).await.expect("it exits at once").unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("is not on loopback") && stderr.contains("--admin-token-file"), "{stderr}");
}

#[tokio::test]
async fn with_a_token_changes_need_it_on_loopback_too() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = write(dir.path(), "admin-token", &format!("{TOKEN}\n"));
    let config = format!("admin_token_file = {token_file:?}\n{POOL}");
    let admin_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = admin_listener.local_addr().unwrap();
    let gateway = start(&config, Some(admin_listener)).await.unwrap();

    let (status, body) = admin(addr, "PUT", "/policy", None).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(gateway.pools()[0].policy().name(), "load-report", "the policy did not change");
    let (status, _) = admin(addr, "PUT", "/policy", Some("Bearer a-wrong-token-of-some-length")).await;
    assert_eq!(status, 401);
    let (status, body) = admin(addr, "GET", "/endpoints", None).await;
    assert_eq!(status, 200, "reads on loopback need no token: {body}");
    let (status, body) = admin(addr, "PUT", "/policy", Some(&format!("Bearer {TOKEN}"))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(gateway.pools()[0].policy().name(), "round-robin");
    gateway.shutdown().await.unwrap();
}
