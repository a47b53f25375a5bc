//! The peers the gateway is measured against: nginx (`grpc_pass`) and HAProxy (HTTP/2 on both
//! sides), each our own instance with its own config file in a temporary folder, filled in from
//! the templates in `bench/` (`nginx.conf`, `haproxy.cfg`).
//!
//! Neither logs its address as our children do, so a peer is ready when its port accepts a TCP
//! connection.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::BenchError;
use super::processes::ChildProcess;

/// The nginx config template.
const NGINX_TEMPLATE: &str = include_str!("../../bench/nginx.conf");
/// The HAProxy config template.
const HAPROXY_TEMPLATE: &str = include_str!("../../bench/haproxy.cfg");

/// The script that installs the peers.
pub(crate) const INSTALL_SCRIPT: &str = "scripts/install-bench-deps.sh";

/// How a peer spreads calls over the workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PeerBalance {
    /// In turn.
    RoundRobin,
    /// To the worker with the fewest calls open.
    LeastConn,
    /// By a consistent hash of the `x-session-id` header ([`SESSION_HEADER`]): nginx's
    /// `hash $http_x_session_id consistent` (ketama), HAProxy's `balance hdr(x-session-id)` with
    /// `hash-type consistent`. Calls without the header go round robin (HAProxy) or to one worker
    /// (nginx hashes the empty value).
    SessionHash,
}

/// The header [`PeerBalance::SessionHash`] hashes on.
pub(crate) const SESSION_HEADER: &str = "x-session-id";

/// A peer proxy kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PeerKind {
    /// nginx with `grpc_pass`.
    Nginx,
    /// HAProxy in HTTP/2 mode.
    Haproxy,
}

impl PeerKind {
    /// The program's name, as on `PATH`.
    pub(crate) fn program(self) -> &'static str {
        match self {
            Self::Nginx => "nginx",
            Self::Haproxy => "haproxy",
        }
    }
}

/// Finds `program` on `PATH` (or in /usr/sbin, where Debian puts both peers).
pub(crate) fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// The path of one peer's program, or an error naming it and the install script.
pub(crate) fn require(kind: PeerKind) -> Result<PathBuf, BenchError> {
    find_program(kind.program()).ok_or_else(|| {
        BenchError::MissingPeers(format!(
            "{} not found on PATH; the bench measures the gateway against it: run {INSTALL_SCRIPT} (Debian: apt-get install {})",
            kind.program(),
            kind.program()
        ))
    })
}

/// The paths of nginx and HAProxy, or an error naming the missing ones and the install script.
pub(crate) fn require_peers() -> Result<(PathBuf, PathBuf), BenchError> {
    let nginx = find_program("nginx");
    let haproxy = find_program("haproxy");
    match (nginx, haproxy) {
        (Some(n), Some(h)) => Ok((n, h)),
        (n, h) => {
            let missing: Vec<&str> = [(n.is_none(), "nginx"), (h.is_none(), "haproxy")]
                .into_iter()
                .filter(|m| m.0)
                .map(|m| m.1)
                .collect();
            Err(BenchError::MissingPeers(format!(
                "{} not found on PATH; the bench measures the gateway against them: run {INSTALL_SCRIPT} (Debian: apt-get install nginx haproxy)",
                missing.join(" and ")
            )))
        }
    }
}

/// A free loopback port: bound, read and released. Another process could take it before the
/// peer binds it; the peer then fails to start with an error that says so.
pub(crate) fn free_port() -> Result<u16, BenchError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| BenchError::Io("bind 127.0.0.1:0".into(), e))?;
    let port = listener.local_addr().map_err(|e| BenchError::Io("local_addr".into(), e))?.port();
    Ok(port)
}

/// The config file text of `kind` listening on `port` in front of `workers`, with its files under `dir`.
pub(crate) fn render(
    kind: PeerKind,
    balance: PeerBalance,
    threads: usize,
    port: u16,
    workers: &[String],
    dir: &Path,
) -> String {
    let (template, balance, servers) = match kind {
        PeerKind::Nginx => (
            NGINX_TEMPLATE,
            match balance {
                PeerBalance::RoundRobin => "# round robin (the default)",
                PeerBalance::LeastConn => "least_conn;",
                PeerBalance::SessionHash => "hash $http_x_session_id consistent;",
            },
            workers.iter().map(|w| format!("        server {w};")).collect::<Vec<_>>().join("\n"),
        ),
        PeerKind::Haproxy => (
            HAPROXY_TEMPLATE,
            match balance {
                PeerBalance::RoundRobin => "roundrobin",
                PeerBalance::LeastConn => "leastconn",
                PeerBalance::SessionHash => "hdr(x-session-id)\n    hash-type consistent",
            },
            workers
                .iter()
                .enumerate()
                .map(|(i, w)| format!("    server worker-{i} {w} proto h2"))
                .collect::<Vec<_>>()
                .join("\n"),
        ),
    };
    template
        .replace("{{DIR}}", &dir.display().to_string())
        .replace("{{PORT}}", &port.to_string())
        .replace("{{BALANCE}}", balance)
        .replace("{{SERVERS}}", &servers)
        .replace("{{THREADS}}", &threads.to_string())
}

/// A running peer: its process, its address and the config file (the argument that finds its pid).
#[derive(Debug)]
pub(crate) struct Peer {
    kind: PeerKind,
    child: Option<ChildProcess>,
    pub(crate) address: String,
    pub(crate) config: String,
}

impl Peer {
    /// Stops the peer: nginx with SIGTERM and a wait for its clean exit (a warning if not);
    /// HAProxy is killed, as in the foreground it ends on SIGTERM by the signal, not with status
    /// 0, which would read as unclean.
    pub(crate) async fn stop(mut self) {
        if let (PeerKind::Nginx, Some(child)) = (self.kind, self.child.take())
            && let Err(e) = child.stop(Duration::from_secs(20)).await
        {
            eprintln!("bench: warning: {e}");
        }
    }
}

impl Drop for Peer {
    /// Sends SIGTERM to the peer's descendants (nginx's workers) before its process is killed on
    /// drop: killing nginx's master alone would leave its workers running, holding the port.
    fn drop(&mut self) {
        #[cfg(unix)]
        if let Some(root) = super::cpu::child_with_arg(&self.config) {
            use rustix::process::{Pid, Signal, kill_process};
            for pid in super::cpu::tree(root).into_iter().filter(|pid| *pid != root) {
                if let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) {
                    let _ = kill_process(pid, Signal::TERM);
                }
            }
        }
    }
}

/// Writes `kind`'s config into `dir` (created if missing) and starts it in the foreground; returns once its port accepts.
pub(crate) async fn start(
    kind: PeerKind,
    program: &Path,
    balance: PeerBalance,
    threads: usize,
    workers: &[String],
    dir: &Path,
) -> Result<Peer, BenchError> {
    std::fs::create_dir_all(dir).map_err(|e| BenchError::Io(format!("create {}", dir.display()), e))?;
    let port = free_port()?;
    let name = kind.program();
    let config_path = dir.join(match kind {
        PeerKind::Nginx => "nginx.conf",
        PeerKind::Haproxy => "haproxy.cfg",
    });
    std::fs::write(&config_path, render(kind, balance, threads, port, workers, dir))
        .map_err(|e| BenchError::Io(format!("write {}", config_path.display()), e))?;
    let config = config_path.display().to_string();
    let dir_text = dir.display().to_string();
    let error_log = dir.join("error.log").display().to_string();
    let args: Vec<String> = match kind {
        PeerKind::Nginx => {
            vec![
                "-c".into(),
                config.clone(),
                "-p".into(),
                dir_text,
                "-e".into(),
                error_log,
                "-g".into(),
                "daemon off;".into(),
            ]
        }
        PeerKind::Haproxy => vec!["-f".into(), config.clone(), "-db".into()],
    };
    let (mut child, _) = ChildProcess::start(name, program, &args, &[], Duration::from_secs(10)).await?;
    let address = format!("127.0.0.1:{port}");
    let ready = async {
        loop {
            if tokio::net::TcpStream::connect(&address).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::select! {
        () = ready => {}
        err = child.exited() => return Err(err.into()),
        () = tokio::time::sleep(Duration::from_secs(10)) => {
            return Err(BenchError::Setup(format!("{name} does not accept on {address} after 10s; its last stderr lines:\n{}", child.tail())));
        }
    }
    Ok(Peer { kind, child: Some(child), address, config })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_in_every_placeholder() {
        let workers = ["127.0.0.1:1".to_string(), "127.0.0.1:2".to_string()];
        for kind in [PeerKind::Nginx, PeerKind::Haproxy] {
            for balance in [PeerBalance::RoundRobin, PeerBalance::LeastConn, PeerBalance::SessionHash] {
                let text = render(kind, balance, 3, 4242, &workers, Path::new("/tmp/x"));
                assert!(!text.contains("{{"), "{text}");
                assert!(text.contains("127.0.0.1:4242") && text.contains("127.0.0.1:2"), "{text}");
                assert!(text.contains("worker_processes 3;") || text.contains("nbthread 3"), "{text}");
            }
        }
        let nginx = render(PeerKind::Nginx, PeerBalance::LeastConn, 1, 1, &workers, Path::new("/d"));
        assert!(nginx.contains("least_conn;") && nginx.contains("grpc_pass grpc://workers;"));
        let nginx = render(PeerKind::Nginx, PeerBalance::SessionHash, 1, 1, &workers, Path::new("/d"));
        assert!(nginx.contains("hash $http_x_session_id consistent;"), "{nginx}");
        let haproxy = render(PeerKind::Haproxy, PeerBalance::SessionHash, 1, 1, &workers, Path::new("/d"));
        assert!(haproxy.contains("balance hdr(x-session-id)\n    hash-type consistent"), "{haproxy}");
        let haproxy = render(PeerKind::Haproxy, PeerBalance::LeastConn, 1, 1, &workers, Path::new("/d"));
        assert!(
            haproxy.contains("balance leastconn") && haproxy.contains("server worker-1 127.0.0.1:2 proto h2")
        );
    }
}
