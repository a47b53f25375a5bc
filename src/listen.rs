//! Reading the address a server listens on, as users write it: `127.0.0.1:9001`, `[::1]:9001`,
//! or a host name such as `localhost:9001`, resolved once at startup.

use std::net::{SocketAddr, ToSocketAddrs};

/// The socket address `text` names: an `IP:PORT` literal, or `HOST:PORT` resolved through the
/// system resolver (its first answer, in the system's order of preference). The error says
/// what is wrong: no port, a port out of range (above 65535), a host that does not resolve.
pub fn parse_listen_address(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(format!("{text:?} has no port: expected HOST:PORT, e.g. 127.0.0.1:9001"));
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("{text:?} has no host: expected HOST:PORT, e.g. 127.0.0.1:9001"));
    }
    let port: u16 = match port.parse::<u64>() {
        Ok(p) => u16::try_from(p).map_err(|_| format!("{text:?}: port {p} is out of range (0-65535)"))?,
        Err(_) => return Err(format!("{text:?}: port {port:?} is not a number")),
    };
    let mut addrs =
        (host, port).to_socket_addrs().map_err(|e| format!("{text:?}: cannot resolve host {host:?}: {e}"))?;
    addrs.next().ok_or_else(|| format!("{text:?}: host {host:?} resolves to no address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_host_names_and_bad_ports() {
        assert_eq!(parse_listen_address("127.0.0.1:9001"), Ok("127.0.0.1:9001".parse().unwrap()));
        assert_eq!(parse_listen_address("[::1]:0"), Ok("[::1]:0".parse().unwrap()));
        let local = parse_listen_address("localhost:9001").unwrap();
        assert!(local.ip().is_loopback() && local.port() == 9001, "{local}");
        let e = parse_listen_address("127.0.0.1:99999").unwrap_err();
        assert_eq!(e, "\"127.0.0.1:99999\": port 99999 is out of range (0-65535)");
        assert!(parse_listen_address("127.0.0.1").unwrap_err().contains("no port"));
        assert!(parse_listen_address(":80").unwrap_err().contains("no host"));
        assert!(parse_listen_address("localhost:http").unwrap_err().contains("not a number"));
        assert!(parse_listen_address("no-such-host.invalid:80").unwrap_err().contains("cannot resolve"));
    }
}
