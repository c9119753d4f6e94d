//! The listener's guard and the API over plain HTTP: a bad token file stops the agent, the
//! bearer token and the login cookie, the metrics left open, the loopback-only page without
//! a token (peer and Host), and the API's bounded pages and errors.
use std::{
    process::Command,
    time::{Duration, Instant},
};

use serde_json::Value;

use super::{
    common::{self, Agent, Crasher},
    get, http,
};

#[test]
fn the_api_answers_bounded_pages_and_the_guard_holds() {
    let dir = common::state_dir("web-token");
    std::fs::create_dir_all(&dir).unwrap();
    let token_file = dir.join("token");
    let token = "5f0c2a9e3b7d41c6a8e2f1d0b9c7a6e5";
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    std::fs::set_permissions(
        &token_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    // A token file without a token stops the agent before it starts, saying why.
    std::fs::write(&token_file, "short\n").unwrap();
    let bad = Command::new(common::agent_bin())
        .args(["run", "--listen-token-file"])
        .arg(&token_file)
        .env("CRASHWATCH_CONFIG", "/dev/null")
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("at least 16"));
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let guarded = Agent::start(&[
        "--listen",
        "0.0.0.0:0",
        "--listen-token-file",
        token_file.to_str().unwrap(),
    ]);
    assert!(
        guarded.log().contains("bearer token required"),
        "{}",
        guarded.log()
    );
    let at = guarded
        .metrics_addr()
        .unwrap()
        .replace("0.0.0.0", "127.0.0.1");
    // Not the other test's crashes: its agent counts this one too.
    Crasher::run("bus");
    let bearer = format!("Authorization: Bearer {token}\r\n");

    let (code, head, _) = get(&at, "/api/clusters", "");
    assert_eq!(code, 401);
    assert!(head.contains("www-authenticate: Bearer"), "{head}");
    let (code, _, _) = get(
        &at,
        "/api/clusters",
        "Authorization: Bearer wrong-token-0123456789\r\n",
    );
    assert_eq!(code, 401);
    let (code, head, _) = get(&at, "/", "");
    assert_eq!(code, 303);
    assert!(head.contains("location: /login"), "{head}");
    let (code, _, metrics) = get(&at, "/metrics", "");
    assert_eq!(code, 200, "the metrics need no token unless asked");
    assert!(metrics.contains("crashwatch_"), "{metrics}");
    let (code, _, _) = get(&at, "/healthz", "");
    assert_eq!(code, 200);

    // The browser's way in: the form sets a cookie; a wrong token does not.
    let form = |t: &str| {
        let body = format!("token={t}");
        http(
            &at,
            &format!(
                "POST /login HTTP/1.1\r\nHost: {at}\r\nConnection: close\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ),
        )
    };
    let (code, _, _) = form("not-the-token-0123456789");
    assert_eq!(code, 401);
    let (code, head, _) = form(token);
    assert_eq!(code, 303);
    let cookie = head
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .unwrap_or_else(|| panic!("no cookie: {head}"));
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let pair = cookie.split(';').next().unwrap();
    let (code, head, page) = get(&at, "/", &format!("Cookie: {pair}\r\n"));
    assert_eq!(code, 200, "{page}");
    assert!(
        head.contains("content-security-policy: default-src 'none'; script-src 'self'"),
        "{head}"
    );
    assert!(head.contains("x-content-type-options: nosniff"));

    // Pages of the API: bounded, and bad input is a 4xx that says why.
    let t0 = Instant::now();
    let list = loop {
        let (code, _, body) = get(&at, "/api/clusters?limit=1", &bearer);
        assert_eq!(code, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        if !v["clusters"].as_array().unwrap().is_empty() {
            break v;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the crash never listed: {v}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(list["clusters"].as_array().unwrap().len(), 1);
    let id = &list["clusters"][0]["id"];
    let (code, _, body) = get(&at, &format!("/api/clusters/{id}"), &bearer);
    assert_eq!(code, 200);
    let detail: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        detail["timeline_30d"]["counts"].as_array().unwrap().len(),
        30
    );
    let rid = &detail["reports"][0]["id"];
    let (code, _, body) = get(&at, &format!("/api/reports/{rid}"), &bearer);
    assert_eq!(code, 200);
    let report: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(report["cluster"], *id);
    assert!(report["report"]["fingerprint"]
        .as_str()
        .unwrap()
        .starts_with("v1:"));
    for (path, want) in [
        ("/api/clusters?before=garbage", 400),
        ("/api/clusters/99999999", 404),
        ("/api/reports/99999999", 404),
        ("/api/reports/abc", 400),
        ("/api/clusters?limit=-1", 400),
        ("/api/clusters?kind=nope", 400),
    ] {
        let (code, _, body) = get(&at, path, &bearer);
        assert_eq!(code, want, "{path}: {body}");
    }
    // docs/api.md: an error is `{"error": "..."}`; a kind that is not one is told the kinds.
    let (_, head, body) = get(&at, "/api/clusters?kind=nope", &bearer);
    assert!(head.contains("content-type: application/json"), "{head}");
    let e: Value = serde_json::from_str(&body).unwrap();
    let why = e["error"].as_str().unwrap_or_default();
    assert!(
        why.contains("nope") && why.contains("go_panic") && why.contains("runtime_error"),
        "{body}"
    );
    assert_eq!(e.as_object().map(|o| o.len()), Some(1), "{body}");
    let (code, _, _) = get(&at, "/api/clusters?kind=go_panic", &bearer);
    assert_eq!(code, 200);
    // A limit past the page size is capped, not obeyed.
    let (_, _, body) = get(&at, "/api/clusters?limit=100000", &bearer);
    let all: Value = serde_json::from_str(&body).unwrap();
    assert!(all["clusters"].as_array().unwrap().len() <= 200);

    // Without a token only this host's loopback connections are answered, and only when
    // they name a loopback host, whatever address the listener is bound to.
    let open = Agent::start(&["--listen", "0.0.0.0:0"]);
    assert!(
        open.log().contains("loopback connections only"),
        "{}",
        open.log()
    );
    let port = open
        .metrics_addr()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .to_string();
    let lo = format!("127.0.0.1:{port}");
    let (code, _, _) = get(&lo, "/api/clusters", "");
    assert_eq!(code, 200);
    let (code, _, body) = http(
        &lo,
        "GET /api/clusters HTTP/1.1\r\nHost: rebound.example:9721\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(code, 403, "{body}");
    // This host's own address on its network: a peer that is not loopback.
    let probe = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    probe.connect("192.0.2.1:9").expect("a route off this host");
    let ip = probe.local_addr().unwrap().ip();
    assert!(!ip.is_loopback());
    let there = format!("{ip}:{port}");
    let (code, _, body) = get(&there, "/api/clusters", "");
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("--listen-token-file"), "{body}");
    let (code, _, _) = get(&there, "/", "");
    assert_eq!(code, 403);
    let (code, _, _) = get(&there, "/metrics", "");
    assert_eq!(code, 200, "the metrics stay open to Prometheus");
}
