//! Web: who may read the crash page and its API. Crash reports hold command lines, paths
//! and error messages, so the page is closed unless the listener is private:
//!
//! - a token (`--listen-token-file`): every page and API request carries it, as
//!   `Authorization: Bearer TOKEN` or as the cookie `/login` sets (a browser cannot add a
//!   header to a link); `/metrics` too with `--listen-token-metrics`;
//! - no token: only this host's own loopback connections are answered (whatever address
//!   the listener is bound to, so `kubectl port-forward` reaches a DaemonSet listening on
//!   0.0.0.0), and only when their `Host` is `localhost` or a loopback address — a web page
//!   elsewhere cannot read the agent through a DNS name it points at 127.0.0.1 (DNS
//!   rebinding). Any other peer gets 403 saying why; `/metrics`, `/healthz` and `/readyz`
//!   stay open, as the DaemonSet's probes and Prometheus need them.
use std::{fs, os::unix::fs::PermissionsExt, path::Path};

use anyhow::{bail, Context, Result};
use axum::{
    body::Body,
    extract::{Request, State},
    http::{header, HeaderMap, HeaderValue, StatusCode},
    middleware::Next,
    response::{IntoResponse, Redirect, Response},
    Form,
};

/// The shortest token accepted: guessing it over HTTP must be hopeless.
const MIN_TOKEN: usize = 16;
/// The largest token file read.
const MAX_TOKEN_FILE: u64 = 4096;
pub const COOKIE: &str = "crashwatch_token";

#[derive(Clone, Debug)]
pub enum Access {
    /// No token: loopback peers naming a loopback host.
    Loopback,
    Token(String),
}

impl Access {
    pub fn new(token: Option<String>) -> Access {
        match token {
            Some(t) => Access::Token(t),
            None => Access::Loopback,
        }
    }

    /// What the start-up line says.
    pub fn describe(&self, addr: std::net::SocketAddr) -> &'static str {
        match self {
            Access::Token(_) => "bearer token required",
            Access::Loopback if addr.ip().is_loopback() => "open to this host only",
            Access::Loopback => {
                "to this host's loopback connections only: other peers need --listen-token-file"
            }
        }
    }
}

/// Reads the token: the file's first line, trimmed. A file others may read is said.
pub fn read_token(path: &Path) -> Result<String> {
    let meta =
        fs::metadata(path).with_context(|| format!("--listen-token-file {}", path.display()))?;
    if meta.len() > MAX_TOKEN_FILE {
        bail!(
            "--listen-token-file {}: {} bytes; a token file holds one line",
            path.display(),
            meta.len()
        );
    }
    let text = fs::read_to_string(path)
        .with_context(|| format!("reading --listen-token-file {}", path.display()))?;
    let token = text.lines().next().unwrap_or("").trim().to_string();
    if token.len() < MIN_TOKEN || !token.bytes().all(|b| b.is_ascii_graphic()) {
        bail!(
            "--listen-token-file {}: the first line must be a token of at least {MIN_TOKEN} \
             printable characters without spaces (`openssl rand -hex 32` makes one)",
            path.display()
        );
    }
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(
            "--listen-token-file {} can be read by others (mode {:o}): chmod 600 it",
            path.display(),
            meta.permissions().mode() & 0o777
        );
    }
    Ok(token)
}

/// Compares without leaving the length of the common prefix in the time taken.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

fn presented(h: &HeaderMap) -> Option<&str> {
    if let Some(v) = h.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        return v.strip_prefix("Bearer ").map(str::trim);
    }
    h.get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(COOKIE)?.strip_prefix('='))
}

/// A `Host` naming this host's loopback: `localhost`, `127.x.x.x` or `[::1]`, any port.
fn loopback_host(h: &HeaderMap) -> bool {
    let Some(host) = h.get(header::HOST).and_then(|v| v.to_str().ok()) else {
        // HTTP/1.0 without Host: no browser sends that.
        return true;
    };
    let name = match host.rsplit_once(':') {
        Some((n, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !n.ends_with(':') => n,
        _ => host,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// None when the request from `peer` may be answered; else the refusal.
pub fn check(
    access: &Access,
    h: &HeaderMap,
    peer: Option<std::net::IpAddr>,
    api: bool,
) -> Option<Response> {
    match access {
        Access::Loopback if !peer.is_some_and(|p| p.is_loopback()) => Some(refuse(
            StatusCode::FORBIDDEN,
            api,
            "this agent's crash page answers its own host's loopback connections only; \
             start it with --listen-token-file to serve others",
        )),
        Access::Loopback if loopback_host(h) => None,
        Access::Loopback => Some(refuse(
            StatusCode::FORBIDDEN,
            api,
            "this agent's crash page answers requests to localhost only (the Host header \
             named another host); start it with --listen-token-file to serve other names",
        )),
        Access::Token(t) => match presented(h) {
            Some(p) if same(p.as_bytes(), t.as_bytes()) => None,
            _ if api => Some(refuse(
                StatusCode::UNAUTHORIZED,
                true,
                "a bearer token is required: Authorization: Bearer TOKEN",
            )),
            _ => Some(Redirect::to("/login").into_response()),
        },
    }
}

fn refuse(status: StatusCode, api: bool, why: &str) -> Response {
    let mut r = if api {
        (status, axum::Json(serde_json::json!({ "error": why }))).into_response()
    } else {
        (status, format!("{why}\n")).into_response()
    };
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"crashwatch\""),
        );
    }
    r
}

/// The middleware in front of the page (`api` false) and the API (`api` true).
pub async fn guard(
    State((access, api)): State<(Access, bool)>,
    req: Request,
    next: Next,
) -> Response {
    let peer = req
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip());
    match check(&access, req.headers(), peer, api) {
        None => next.run(req).await,
        Some(r) => r,
    }
}

#[derive(serde::Deserialize)]
pub struct Login {
    token: String,
}

/// `POST /login`: the token in a form; a cookie for the page on success.
pub async fn login(State(access): State<Access>, Form(l): Form<Login>) -> Response {
    match &access {
        Access::Token(t) if same(l.token.trim().as_bytes(), t.as_bytes()) => {
            let mut r = Redirect::to("/").into_response();
            let cookie = format!("{COOKIE}={t}; HttpOnly; SameSite=Strict; Path=/");
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                r.headers_mut().insert(header::SET_COOKIE, v);
            }
            r
        }
        Access::Token(_) => Response::builder()
            .status(StatusCode::UNAUTHORIZED)
            .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
            .body(Body::from(super::pages::login_html(true)))
            .unwrap_or_default(),
        _ => Redirect::to("/").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn loopback_answers_loopback_names_only() {
        let a = Access::new(None);
        let lo = Some("127.0.0.1".parse().unwrap());
        for host in [
            "localhost:9721",
            "127.0.0.1:9721",
            "[::1]:9721",
            "LOCALHOST",
            "127.0.0.2",
        ] {
            assert!(
                check(&a, &headers(&[("host", host)]), lo, false).is_none(),
                "{host}"
            );
        }
        for host in ["evil.example:9721", "127.0.0.1.nip.io", "10.0.0.1:9721"] {
            let r = check(&a, &headers(&[("host", host)]), lo, true).unwrap();
            assert_eq!(r.status(), StatusCode::FORBIDDEN, "{host}");
        }
    }

    #[test]
    fn a_token_is_taken_from_the_header_or_the_cookie_and_nothing_else() {
        let t = "0123456789abcdef0123";
        let a = Access::new(Some(t.into()));
        let peer = Some("10.1.2.3".parse().unwrap());
        let ok = |h: &[(&'static str, &str)]| check(&a, &headers(h), peer, true).is_none();
        assert!(ok(&[("authorization", &format!("Bearer {t}"))]));
        assert!(ok(&[("cookie", &format!("a=b; {COOKIE}={t}"))]));
        assert!(!ok(&[("authorization", "Bearer 0123456789abcdef012")]));
        assert!(!ok(&[("authorization", &format!("Basic {t}"))]));
        assert!(!ok(&[("cookie", &format!("x{COOKIE}={t}x"))]));
        assert!(!ok(&[]));
        let page = check(&a, &headers(&[]), peer, false).unwrap();
        assert_eq!(page.status(), StatusCode::SEE_OTHER);
    }

    #[test]
    fn without_a_token_other_peers_are_refused() {
        let a = Access::new(None);
        let h = headers(&[("host", "localhost")]);
        for peer in [Some("10.1.2.3".parse().unwrap()), None] {
            let r = check(&a, &h, peer, false).unwrap();
            assert_eq!(r.status(), StatusCode::FORBIDDEN);
        }
        assert!(check(&a, &h, Some("::1".parse().unwrap()), false).is_none());
    }

    #[test]
    fn token_files_must_hold_a_real_token() {
        let dir = std::env::temp_dir().join(format!("crashwatch-token-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let f = dir.join("t");
        fs::write(&f, "short\n").unwrap();
        assert!(read_token(&f).is_err());
        fs::write(&f, "has space in it 0123456789\n").unwrap();
        assert!(read_token(&f).is_err());
        fs::write(&f, "  0123456789abcdef0123  \nrest\n").unwrap();
        assert_eq!(read_token(&f).unwrap(), "0123456789abcdef0123");
        assert!(read_token(&dir.join("missing")).is_err());
        let _ = fs::remove_dir_all(&dir);
    }
}
