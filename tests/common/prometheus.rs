//! A real Prometheus server for the tests (Debian's `prometheus` package, installed by
//! `scripts/install-test-deps.sh`): started on a loopback port in a temp dir, scraping the given
//! targets every second, killed when dropped.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::Child;

/// The installed tool `name` (`prometheus`, `promtool`); panics naming the install script.
pub(crate) fn tool(name: &str) -> PathBuf {
    for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
        let path = dir.join(name);
        if path.is_file() {
            return path;
        }
    }
    panic!("`{name}` is not installed: run scripts/install-test-deps.sh (Debian's `prometheus` package)");
}

/// A temporary folder, removed when dropped.
pub(crate) struct TempDir(pub(crate) PathBuf);

impl TempDir {
    pub(crate) fn new(name: &str) -> Self {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let path = std::env::temp_dir().join(format!("switchyard-{name}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `GET path` over HTTP/1.1; the status and the body.
pub(crate) async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP response");
    (head.split_whitespace().nth(1).unwrap().parse().unwrap(), body.to_string())
}

/// Percent-encodes a query parameter.
pub(crate) fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A Prometheus server scraping `targets` as the job `job` every second.
pub(crate) struct Prometheus {
    child: Child,
    /// Its query API's address.
    pub(crate) web: SocketAddr,
    _dir: TempDir,
}

impl Prometheus {
    /// Starts it; it answers queries once it is ready (see [`Prometheus::until_result`]).
    pub(crate) async fn start(job: &str, targets: &[SocketAddr]) -> Self {
        let prometheus = tool("prometheus");
        let dir = TempDir::new("prometheus");
        let config = dir.0.join("prometheus.yml");
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: {job}\n    static_configs:\n      - targets: [{}]\n",
                targets.join(", ")
            ),
        )
        .unwrap();
        let web = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
        let child = tokio::process::Command::new(prometheus)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.0.join("data").display()))
            .arg(format!("--web.listen-address={web}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        Self { child, web, _dir: dir }
    }

    /// The server's base URL.
    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.web)
    }

    /// Runs the instant query `query` until `done` holds for its `data.result` (Prometheus scrapes
    /// every second); returns that result. Panics after 60 s.
    pub(crate) async fn until_result(
        &self,
        query: &str,
        mut done: impl FnMut(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let path = format!("/api/v1/query?query={}", encode(query));
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Ok(mut stream)) =
                tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(self.web)).await
            {
                let request =
                    format!("GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", self.web);
                let mut answer = String::new();
                if stream.write_all(request.as_bytes()).await.is_ok()
                    && stream.read_to_string(&mut answer).await.is_ok()
                    && let Some((_, body)) = answer.split_once("\r\n\r\n")
                    && let Ok(json) = serde_json::from_str::<serde_json::Value>(body)
                    && done(&json["data"]["result"])
                {
                    return json["data"]["result"].clone();
                }
            }
            assert!(Instant::now() < deadline, "Prometheus: {query:?} not as expected within 60 s");
            tokio::time::sleep(Duration::from_millis(200)).await; // polling interval
        }
    }

    /// Stops it (SIGKILL) and waits for it to exit.
    pub(crate) async fn stop(&mut self) {
        self.child.kill().await.unwrap();
    }
}

/// Runs `promtool check metrics` on `text`; panics with its report if it finds a problem.
pub(crate) async fn promtool_check(what: &str, text: &str) {
    let mut child = tokio::process::Command::new(tool("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(text.as_bytes()).await.unwrap();
    let output = child.wait_with_output().await.unwrap();
    assert!(
        output.status.success(),
        "promtool check metrics failed on the {what}'s /metrics:\n{}{}\n---\n{text}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
