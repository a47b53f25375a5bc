//! The admin API's bearer token: who may read the gateway's state and who may change it.
//!
//! The admin API listens on loopback (127.0.0.1:9900) by default, where only the machine's own
//! users reach it. With a token (`--admin-token-file FILE`, `admin_token_file` in the config, or
//! the `SWITCHYARD_ADMIN_TOKEN` environment variable; never a flag's value, which `ps` would
//! show), every call that changes something (`PUT /policy`, any method but `GET` and `HEAD`)
//! needs `Authorization: Bearer TOKEN`, wherever the API listens. Off loopback every call needs
//! it, reads too, and the gateway refuses to start without a token. A call without it, or with
//! another, is answered 401 with a body that says which header is missing; tokens are compared
//! in constant time (`subtle`), so the answer's timing does not reveal how much of one matched.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode};
use http_body_util::Full;
use subtle::ConstantTimeEq;

/// The environment variable a token may come from, when no file is given.
pub const ADMIN_TOKEN_ENV: &str = "SWITCHYARD_ADMIN_TOKEN";

/// The admin API's bearer token. Its `Debug` does not show it.
#[derive(Clone)]
pub struct AdminToken(Arc<[u8]>);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

impl PartialEq for AdminToken {
    fn eq(&self, other: &Self) -> bool {
        bool::from(self.0.ct_eq(&other.0))
    }
}

impl Eq for AdminToken {}

impl AdminToken {
    /// A token: `text` without its surrounding white space, which must leave at least 16
    /// characters, each a visible ASCII character (as an HTTP header value can carry it).
    pub fn new(text: &str) -> Result<Self, String> {
        let token = text.trim();
        if token.len() < 16 {
            return Err(format!("the token has {} characters: at least 16 are needed", token.len()));
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("the token may hold only visible ASCII characters (no spaces)".into());
        }
        Ok(Self(token.as_bytes().into()))
    }

    /// The token in the file at `path` (its first line; surrounding white space ignored).
    pub fn from_file(path: &Path) -> Result<Self, String> {
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Self::new(text.lines().next().unwrap_or("")).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Whether `header` is `Bearer` and this token (compared in constant time).
    fn admits(&self, header: Option<&HeaderValue>) -> bool {
        let Some(value) = header.map(HeaderValue::as_bytes) else { return false };
        let Some(scheme) = value.get(..7) else { return false };
        scheme.eq_ignore_ascii_case(b"bearer ") && bool::from(value[7..].ct_eq(&self.0))
    }
}

/// Whether an admin API on `addr` may run with `token`: off loopback a token is required.
pub(crate) fn check_exposure(addr: SocketAddr, token: Option<&AdminToken>) -> Result<(), String> {
    if token.is_none() && !addr.ip().is_loopback() {
        return Err(format!(
            "the admin API on {addr} is not on loopback, so it needs a bearer token: give \
             --admin-token-file FILE, `admin_token_file` in the config, or {ADMIN_TOKEN_ENV} \
             (or bind --admin to 127.0.0.1)"
        ));
    }
    Ok(())
}

/// Who may call an admin API: its token, if any, and whether reads need it too (off loopback).
#[derive(Debug, Clone)]
pub(crate) struct AdminAccess {
    token: Option<AdminToken>,
    reads_need_token: bool,
}

impl AdminAccess {
    /// The access of an admin API listening on `addr` with `token`.
    pub(crate) fn new(addr: SocketAddr, token: Option<AdminToken>) -> Self {
        Self { token, reads_need_token: !addr.ip().is_loopback() }
    }

    /// `None` when `req` may go on; else the 401 to answer it with.
    pub(crate) fn refuse<B>(&self, req: &http::Request<B>) -> Option<http::Response<Full<Bytes>>> {
        let Some(token) = &self.token else { return None };
        let reads = matches!(*req.method(), Method::GET | Method::HEAD);
        if reads && !self.reads_need_token {
            return None;
        }
        let header = req.headers().get(http::header::AUTHORIZATION);
        if token.admits(header) {
            return None;
        }
        let why = if header.is_none() { "no Authorization header" } else { "a wrong token" };
        let message = if reads {
            format!("this admin API needs `Authorization: Bearer TOKEN` on every call; the request had {why}")
        } else {
            format!("changes through the admin API need `Authorization: Bearer TOKEN`; the request had {why}")
        };
        let body = serde_json::json!({ "error": message }).to_string();
        let mut response = http::Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = StatusCode::UNAUTHORIZED;
        let headers = response.headers_mut();
        headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(http::header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        Some(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "s3cret-token-0123456789";

    fn request(method: Method, auth: Option<&str>) -> http::Request<()> {
        let mut builder = http::Request::builder().method(method).uri("/policy");
        if let Some(auth) = auth {
            builder = builder.header(http::header::AUTHORIZATION, auth);
        }
        builder.body(()).expect("a request")
    }

    fn status(access: &AdminAccess, method: Method, auth: Option<&str>) -> StatusCode {
        access.refuse(&request(method, auth)).map_or(StatusCode::OK, |r| r.status())
    }

    #[test]
    fn on_loopback_a_token_guards_changes_only() {
        let token = AdminToken::new(TOKEN).expect("a token");
        let access = AdminAccess::new("127.0.0.1:9900".parse().expect("addr"), Some(token));
        assert_eq!(status(&access, Method::GET, None), StatusCode::OK);
        assert_eq!(status(&access, Method::PUT, None), StatusCode::UNAUTHORIZED);
        assert_eq!(status(&access, Method::POST, Some("Bearer nope")), StatusCode::UNAUTHORIZED);
        assert_eq!(status(&access, Method::PUT, Some(&format!("Bearer {TOKEN}x"))), StatusCode::UNAUTHORIZED);
        assert_eq!(status(&access, Method::PUT, Some(&format!("Bearer {TOKEN}"))), StatusCode::OK);
        assert_eq!(status(&access, Method::PUT, Some(&format!("bearer {TOKEN}"))), StatusCode::OK);
        assert_eq!(status(&access, Method::PUT, Some(TOKEN)), StatusCode::UNAUTHORIZED, "no scheme");
        let open = AdminAccess::new("127.0.0.1:9900".parse().expect("addr"), None);
        assert_eq!(status(&open, Method::PUT, None), StatusCode::OK);
    }

    #[test]
    fn off_loopback_every_call_needs_the_token() {
        let token = AdminToken::new(TOKEN).expect("a token");
        let addr: SocketAddr = "0.0.0.0:9900".parse().expect("addr");
        assert!(check_exposure(addr, None).is_err_and(|e| e.contains("--admin-token-file")));
        assert!(check_exposure(addr, Some(&token)).is_ok());
        assert!(check_exposure("127.0.0.1:9900".parse().expect("addr"), None).is_ok());
        let access = AdminAccess::new(addr, Some(token));
        assert_eq!(status(&access, Method::GET, None), StatusCode::UNAUTHORIZED);
        assert_eq!(status(&access, Method::GET, Some(&format!("Bearer {TOKEN}"))), StatusCode::OK);
    }

    #[test]
    fn a_token_is_long_and_printable_and_never_shown() {
        assert!(AdminToken::new("short").is_err());
        assert!(AdminToken::new("has a space inside it").is_err());
        let token = AdminToken::new(&format!("  {TOKEN}\n")).expect("trimmed");
        assert_eq!(token, AdminToken::new(TOKEN).expect("a token"));
        assert!(!format!("{token:?}").contains(TOKEN));
    }
}
