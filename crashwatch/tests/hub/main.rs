//! The fleet's hub on a real PostgreSQL 15 (started by the test, torn down after): real
//! agents send real crashes through two hub replicas; a replica is killed with SIGKILL and
//! the database stopped mid-storm, a second agent on the node sends every crash again —
//! every crash is stored exactly once, none lost. Forged, malformed and oversized bodies and
//! the wrong token are refused and store nothing. Headless chromium reads the fleet's page:
//! a cluster on three nodes, a silent node, markup as text, a live update through another
//! replica; the facets, loops and fleet metrics over them. The hub over HTTPS (tls.rs).
//! Needs root (agents load eBPF programs).
#[path = "../common/mod.rs"]
mod common;
#[path = "../web/driver.rs"]
#[allow(dead_code)]
mod driver;
mod facets;
mod retain;
mod servers;
mod tls;

use std::time::{Duration, Instant};

use common::{state_dir, Agent, Crasher};
use serde_json::Value;
use servers::{token_file, Hub, Postgres};

const INGEST: &str = "ingest-0123456789abcdef";
const READ: &str = "read-0123456789abcdef";

/// Every agent sees every crash on the host: one test at a time.
static ALONE: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn alone() -> std::sync::MutexGuard<'static, ()> {
    ALONE.lock().unwrap_or_else(|e| e.into_inner())
}

fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A sample of a hub's /metrics.
fn metric(hub: &Hub, series: &str) -> f64 {
    let (_, body) = hub.get("/metrics", None);
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn every_crash_is_stored_once_through_a_replica_kill_a_database_outage_agents_offline_and_a_second_agent(
) {
    let _alone = alone();
    let mut pg = Postgres::start();
    let dir = state_dir("hub");
    let (ingest, read) = (
        token_file(&dir, "ingest", INGEST),
        token_file(&dir, "read", READ),
    );
    // Two replicas starting at once migrate the schema once.
    let mut a = Hub::spawn(&pg.url(), &ingest, Some(&read));
    let b = Hub::spawn(&pg.url(), &ingest, Some(&read));
    a.wait_ready();
    b.wait_ready();
    // Each version once, none missing (the versions are 1..=N).
    assert_eq!(
        pg.query(
            "SELECT COUNT(*) = COUNT(DISTINCT version) AND COUNT(*) = MAX(version) \
             FROM crashwatch_schema"
        ),
        ["t"]
    );
    let args = [
        "--hub",
        &a.url(),
        "--hub",
        &b.url(),
        "--hub-token-file",
        &ingest,
        "--webhook-retry-max",
        "2",
    ];
    let agent = Agent::start(&args);
    // A second agent on the same node reports every crash again: the same key.
    let second = Agent::start(&args);
    let mut pids = Vec::new();
    let crash = |pids: &mut Vec<i64>, n: usize| {
        for _ in 0..n {
            let c = Crasher::run("null");
            agent.report_for(c.pid);
            second.report_for(c.pid);
            pids.push(c.pid as i64);
        }
    };
    // Of this test's crashes (other tests' crashes on the host reach the hub too).
    let stored = |pg: &Postgres, pids: &[i64]| {
        let list: Vec<String> = pids.iter().map(|p| p.to_string()).collect();
        pg.one(&format!(
            "SELECT COUNT(*) FROM reports WHERE pid IN ({})",
            list.join(",")
        ))
    };

    crash(&mut pids, 5);
    wait_until("5 reports stored", 60, || stored(&pg, &pids) == 5);

    a.kill();
    crash(&mut pids, 5);
    wait_until("10 reports stored through the other replica", 60, || {
        stored(&pg, &pids) == 10
    });

    // PostgreSQL stopped for 30 s, crashes before and during.
    pg.down();
    let down = Instant::now();
    crash(&mut pids, 5);
    std::thread::sleep(Duration::from_secs(15));
    crash(&mut pids, 5);
    std::thread::sleep(Duration::from_secs(30).saturating_sub(down.elapsed()));
    assert!(
        metric(&b, "crashwatch_hub_reports_total{result=\"failed\"}") > 0.0,
        "the agents tried while the database was down: {:?}",
        b.log()
    );
    pg.up();
    wait_until("20 reports stored after the outage", 90, || {
        stored(&pg, &pids) == 20
    });
    wait_until(
        "the second agent's copies answered as duplicates",
        60,
        || metric(&b, "crashwatch_hub_reports_total{result=\"duplicate\"}") >= 15.0,
    );

    // The agents offline for minutes: every hub they know is gone (a replica they do not
    // know stays, to read from). The node goes silent; back, its spool delivers.
    let reader = Hub::start(&pg.url(), &ingest, Some(&read));
    let b_addr = b.addr.clone();
    drop(b);
    let offline = Instant::now();
    crash(&mut pids, 5);
    wait_until("the node shown silent", 240, || {
        let (_, body) = reader.get("/api/nodes", Some(READ));
        body.contains("\"silent\":true")
    });
    assert!(offline.elapsed() >= Duration::from_secs(90));
    let b = Hub::spawn_with(&pg.url(), &ingest, Some(&read), &["--listen", &b_addr]);
    b.wait_ready();
    wait_until("25 reports stored once the agents are back", 120, || {
        stored(&pg, &pids) == 25
    });
    let back = |b: &Hub| {
        let (_, body) = b.get("/api/nodes", Some(READ));
        body.contains("\"silent\":false")
    };
    wait_until("the node heard again", 60, || back(&reader));
    std::thread::sleep(Duration::from_secs(3));

    // Exactly once: every pid once, nothing else.
    let list: Vec<String> = pids.iter().map(|p| p.to_string()).collect();
    let mine = format!("pid IN ({})", list.join(","));
    let mut got: Vec<i64> = pg
        .query(&format!("SELECT pid FROM reports WHERE {mine}"))
        .iter()
        .map(|p| p.parse().unwrap())
        .collect();
    got.sort();
    pids.sort();
    assert_eq!(got, pids, "every crash stored once");

    // The fleet API: the crashes' cluster, on one node; the node heard from.
    let id = pg.query(&format!(
        "SELECT DISTINCT cluster FROM reports WHERE {mine}"
    ));
    assert_eq!(id.len(), 1, "one cluster: {id:?}");
    let (st, body) = b.get("/api/clusters?kind=signal", Some(READ));
    assert_eq!(st, 200, "{body}");
    let l: Value = serde_json::from_str(&body).unwrap();
    let c = l["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"].as_i64() == id[0].parse().ok())
        .unwrap_or_else(|| panic!("cluster {} listed: {body}", id[0]));
    assert!(c["count"].as_u64().unwrap() >= 25, "{c}");
    assert_eq!(c["fleet"]["node_count"], 1, "{c}");
    let last_day: u64 = c["last_24h"]["counts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert_eq!(last_day, c["count"].as_u64().unwrap(), "{c}");
    let (st, body) = b.get(&format!("/api/clusters/{}", c["id"]), Some(READ));
    assert_eq!(st, 200, "{body}");
    let d: Value = serde_json::from_str(&body).unwrap();
    let rid = d["reports"][0]["id"].as_i64().unwrap();
    let (st, body) = b.get(&format!("/api/reports/{rid}"), Some(READ));
    assert_eq!(st, 200);
    let r: Value = serde_json::from_str(&body).unwrap();
    assert!(
        pids.contains(&r["report"]["pid"].as_i64().unwrap()),
        "{body}"
    );
    let (_, body) = b.get("/api/nodes", Some(READ));
    let nodes: Value = serde_json::from_str(&body).unwrap();
    let node = &nodes["nodes"][0];
    assert_eq!(node["silent"], false, "{body}");
    assert!(
        node["inventory"]["kernel"].is_string(),
        "a heartbeat's inventory: {body}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The status of a POST that announces 2 MiB of report (the body is never sent: a server
/// that reads only the headers answers at once).
fn announce_huge(hub: &Hub) -> u16 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(&hub.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "POST /api/v1/reports HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {INGEST}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        hub.addr,
        2 << 20
    )
    .unwrap();
    let mut head = [0u8; 12];
    s.read_exact(&mut head).unwrap();
    String::from_utf8_lossy(&head[9..12]).parse().unwrap()
}

#[test]
fn forged_malformed_oversized_and_wrongly_tokened_bodies_store_nothing() {
    let _alone = alone();
    let pg = Postgres::start();
    let dir = state_dir("hub-refuse");
    let (ingest, read) = (
        token_file(&dir, "ingest", INGEST),
        token_file(&dir, "read", READ),
    );
    let hub = Hub::start(&pg.url(), &ingest, Some(&read));
    // A real report, from a real crash.
    let agent = Agent::start(&[]);
    let c = Crasher::run("null");
    let good = agent.report_for(c.pid);
    let with = |f: &dyn Fn(&mut Value)| {
        let mut r = good.clone();
        f(&mut r);
        serde_json::to_vec(&r).unwrap()
    };
    let post = |token: Option<&str>, body: &[u8]| hub.post("/api/v1/reports", token, body);
    let body = serde_json::to_vec(&good).unwrap();

    assert_eq!(post(None, &body).0, 401, "no token");
    assert_eq!(post(Some(READ), &body).0, 401, "a read token cannot write");
    assert_eq!(
        hub.get("/api/clusters", Some(INGEST)).0,
        401,
        "an ingest token cannot read"
    );
    assert_eq!(hub.get("/api/clusters", None).0, 401, "no token, no reads");
    for (body, why) in [
        (b"not json".to_vec(), "not JSON"),
        (b"[1, 2]".to_vec(), "a JSON object"),
        (with(&|r| r["kind"] = "nope".into()), "is not a kind"),
        (with(&|r| r["fingerprint"] = "".into()), "fingerprint"),
        (with(&|r| r["host"] = "".into()), "host"),
        (with(&|r| r["pid"] = "twelve".into()), "not a report"),
        (with(&|r| r["time"] = "yesterday".into()), "time"),
    ] {
        let (st, answer) = post(Some(INGEST), &body);
        assert_eq!(st, 400, "{why}: {answer}");
        assert!(answer.contains(why), "{why}: {answer}");
    }
    assert_eq!(
        announce_huge(&hub),
        413,
        "over 1 MiB, refused before it is read"
    );
    let (st, answer) = hub.post("/api/v1/heartbeat", Some(INGEST), b"{\"node\": \"\"}");
    assert_eq!(st, 400, "{answer}");
    assert_eq!(pg.one("SELECT COUNT(*) FROM reports"), 0, "nothing stored");
    assert_eq!(pg.one("SELECT COUNT(*) FROM nodes"), 0, "no node made");

    let (st, answer) = post(Some(INGEST), &body);
    assert_eq!((st, answer.contains("\"stored\"")), (200, true), "{answer}");
    let (st, answer) = post(Some(INGEST), &body);
    assert_eq!(
        (st, answer.contains("\"duplicate\"")),
        (200, true),
        "{answer}"
    );
    assert_eq!(pg.one("SELECT COUNT(*) FROM reports"), 1);

    // One token for both powers is refused at start.
    let out = std::process::Command::new(common::agent_bin())
        .args(["hub", "--database", &pg.url(), "--listen", "127.0.0.1:0"])
        .args(["--ingest-token-file", &ingest, "--read-token-file", &ingest])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("the same token"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A report of `r`'s crash as the agent of `node` would send it (its own pid, start and pod).
fn as_node(r: &Value, node: &str, n: u64) -> Vec<u8> {
    let mut r = r.clone();
    r["host"] = node.into();
    r["pid"] = (40_000 + n).into();
    r["start_time_ns"] = (1_000_000 + n).into();
    r["k8s"] = serde_json::json!({
        "namespace": "shop", "pod": format!("api-7c9f8d6b5-x2k4{}", ["q", "z", "w", "p"][n as usize % 4]),
        "container": "api", "node": node
    });
    // Two images, two builds: the fleet's facets.
    r["container"] = serde_json::json!({
        "id": format!("{:064x}", n), "runtime": "containerd", "name": "api",
        "image": format!("registry.example/shop/api:1.{}", n % 2)
    });
    r["go"] = serde_json::json!({ "build": { "vcs_revision": format!("rev-{}", n % 2) } });
    serde_json::to_vec(&r).unwrap()
}

#[test]
fn the_fleet_page_shows_a_cluster_on_three_nodes_a_silent_node_and_markup_as_text() {
    let _alone = alone();
    let pg = Postgres::start();
    let dir = state_dir("hub-page");
    let ingest = token_file(&dir, "ingest", INGEST);
    // No read token: the page answers this host's loopback, as a node's does.
    let a = Hub::start(&pg.url(), &ingest, None);
    let b = Hub::start(&pg.url(), &ingest, None);
    // A real crash whose message is markup, sent as three nodes' agents would.
    let agent = Agent::start(&[]);
    let py = std::process::Command::new("python3")
        .args(["-c", "raise RuntimeError('<img src=x onerror=alert(1)>')"])
        .output()
        .unwrap();
    assert_eq!(py.status.code(), Some(1));
    let r = agent
        .wait_for(|| {
            agent
                .reports()
                .into_iter()
                .find(|r| r["kind"] == "runtime_error" && r["comm"] == "python3")
        })
        .expect("the Python crash's report");
    for (n, node) in ["node-a", "node-b", "node-c"].iter().enumerate() {
        let (st, body) = a.post(
            "/api/v1/reports",
            Some(INGEST),
            &as_node(&r, node, n as u64),
        );
        assert_eq!(st, 200, "{body}");
    }
    // node-c's agent has not been heard from for five minutes.
    pg.query("UPDATE nodes SET heard_ns = heard_ns - 300000000000 WHERE name = 'node-c'");

    let d = driver::Driver::start();
    d.cdp(
        "Page.addScriptToEvaluateOnNewDocument",
        serde_json::json!({ "source": "window.__alerts = []; window.alert = function (m) { window.__alerts.push(String(m)); };" }),
    );
    d.open(&format!("{}/", a.url()));
    d.wait_for(".cluster");
    let row = |d: &driver::Driver| -> Value {
        serde_json::from_str(
            d.js(
                "JSON.stringify([...document.querySelectorAll('.cluster')].map(li => ({
                    headline: li.querySelector('.headline').textContent,
                    fleet: (li.querySelector('.fleet') || {}).textContent || '',
                    imgs: li.querySelectorAll('img').length })))",
            )
            .as_str()
            .unwrap(),
        )
        .unwrap()
    };
    let rows = row(&d);
    let c = &rows[0];
    assert_eq!(
        c["headline"].as_str().unwrap(),
        "RuntimeError: <img src=x onerror=alert(1)>",
        "markup stays text: {rows}"
    );
    assert_eq!(c["imgs"], 0, "{rows}");
    let fleet = c["fleet"].as_str().unwrap();
    assert!(
        fleet.contains("on 3 nodes")
            && fleet.contains("1 namespace")
            && fleet.contains("1 workload"),
        "{fleet}"
    );
    assert_eq!(d.js("window.__alerts.length"), 0);

    // A fourth node's crash, stored through the other replica, reaches this page live.
    let (st, body) = b.post("/api/v1/reports", Some(INGEST), &as_node(&r, "node-d", 3));
    assert_eq!(st, 200, "{body}");
    let t0 = Instant::now();
    while !row(&d)[0]["fleet"]
        .as_str()
        .unwrap_or("")
        .contains("on 4 nodes")
    {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no live update: {}",
            row(&d)
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    d.open(&format!("{}/nodes", a.url()));
    d.wait_for("table.nodes");
    let nodes: Value = serde_json::from_str(
        d.js(
            "JSON.stringify([...document.querySelectorAll('table.nodes tbody tr')].map(tr => ({
                name: tr.querySelector('td').textContent, silent: tr.classList.contains('silent'),
                text: tr.textContent })))",
        )
        .as_str()
        .unwrap(),
    )
    .unwrap();
    let silent: Vec<&Value> = nodes
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["silent"] == true)
        .collect();
    assert_eq!(silent.len(), 1, "{nodes}");
    assert_eq!(silent[0]["name"], "node-c", "{nodes}");
    assert!(
        silent[0]["text"].as_str().unwrap().contains("silent for"),
        "{nodes}"
    );
    facets::facets_loops_and_metrics(&a, &r);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Retention keeps the latest reports of a cluster and none past the age, while the cluster's
/// count and its hourly counts go on; a cluster opened by a build the node blamed is a
/// regression only when the fleet's first crash in that build is recent.
#[test]
fn retention_thins_reports_not_counts_and_regressions_need_a_new_build() {
    let _alone = alone();
    let pg = Postgres::start();
    let dir = state_dir("hub-retain");
    let ingest = token_file(&dir, "ingest", INGEST);
    let hub = Hub::spawn_with(
        &pg.url(),
        &ingest,
        None,
        &[
            "--keep-per-cluster",
            "3",
            "--keep-days",
            "2",
            "--retention-interval",
            "1",
        ],
    );
    hub.wait_ready();
    let agent = Agent::start(&[]);
    let c = Crasher::run("null");
    let real = agent.report_for(c.pid);
    let post = |n: u64, f: &dyn Fn(&mut Value)| {
        let mut r: Value = serde_json::from_slice(&as_node(&real, "node-r", n)).unwrap();
        r["pid"] = (50_000 + n).into();
        r["start_time_ns"] = (2_000_000 + n).into();
        f(&mut r);
        let (st, body) = hub.post(
            "/api/v1/reports",
            Some(INGEST),
            &serde_json::to_vec(&r).unwrap(),
        );
        assert_eq!(st, 200, "{body}");
    };
    let days_ago = |d: u64| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let t = now - d * 86_400;
        // RFC 3339 from the command line's date, as the agent writes it.
        let out = std::process::Command::new("date")
            .args(["-u", "-d", &format!("@{t}"), "+%Y-%m-%dT%H:%M:%S.000000Z"])
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    // Two, then passes, then the rest: every report's time is the crash's, now seconds past,
    // and a cluster that takes reports older than the last pass must still be thinned (the
    // passes once chose clusters by their newest crash time, and never thinned this one).
    for n in 0..2 {
        post(n, &|_| {});
    }
    std::thread::sleep(Duration::from_millis(2500));
    for n in 2..10 {
        post(n, &|_| {});
    }
    // A crash of another cluster 5 days ago: past --keep-days, alone in its cluster.
    let old = days_ago(5);
    post(10, &|r| {
        r["time"] = old.clone().into();
        r["fingerprint"] = "v1:00000000000000dd".into();
    });
    let fp = real["fingerprint"].as_str().unwrap().to_string();
    let kept = |fp: &str| {
        pg.one(&format!(
            "SELECT COUNT(*) FROM reports r JOIN clusters c ON c.id = r.cluster \
             WHERE c.fingerprint = '{fp}'"
        ))
    };
    let hours = |fp: &str| {
        pg.one(&format!(
            "SELECT COALESCE(SUM(h.count), 0)::BIGINT FROM cluster_hours h \
             JOIN clusters c ON c.id = h.cluster WHERE c.fingerprint = '{fp}'"
        ))
    };
    let count = |fp: &str| {
        pg.one(&format!(
            "SELECT count FROM clusters WHERE fingerprint = '{fp}'"
        ))
    };
    wait_until("the cluster thinned to its latest 3 reports", 30, || {
        kept(&fp) == 3
    });
    assert_eq!(
        pg.query(&format!(
            "SELECT r.pid FROM reports r JOIN clusters c ON c.id = r.cluster \
             WHERE c.fingerprint = '{fp}' ORDER BY r.pid"
        )),
        ["50007", "50008", "50009"],
        "the latest three kept"
    );
    wait_until("the old report gone", 30, || {
        kept("v1:00000000000000dd") == 0
    });
    assert_eq!((count(&fp), hours(&fp)), (10, 10), "the counts go on");
    assert_eq!(
        (count("v1:00000000000000dd"), hours("v1:00000000000000dd")),
        (1, 1),
        "the old crash's counts go on"
    );

    // Regressions.
    let build = |rev: &'static str, blamed: bool| {
        move |r: &mut Value| {
            r["go"] = serde_json::json!({ "build": { "vcs_revision": rev } });
            if blamed {
                r["cluster"] =
                    serde_json::json!({ "regression": { "program": "api", "revision": rev } });
            }
        }
    };
    let new = build("r-new", true);
    post(20, &|r| {
        new(r);
        r["fingerprint"] = "v1:00000000000000aa".into();
    });
    // r-old crashed three days ago (in another cluster); a cluster it opens now is no
    // regression, whatever the node says.
    let first = build("r-old", false);
    let three = days_ago(3);
    post(21, &|r| {
        first(r);
        r["fingerprint"] = "v1:00000000000000cc".into();
        r["time"] = three.clone().into();
    });
    let blamed = build("r-old", true);
    post(22, &|r| {
        blamed(r);
        r["fingerprint"] = "v1:00000000000000bb".into();
    });
    let reg = pg.query(
        "SELECT fingerprint || '=' || COALESCE(regression, '') FROM clusters \
         WHERE fingerprint IN ('v1:00000000000000aa', 'v1:00000000000000bb', \
             'v1:00000000000000cc') ORDER BY fingerprint",
    );
    assert_eq!(
        reg,
        [
            "v1:00000000000000aa=r-new",
            "v1:00000000000000bb=",
            "v1:00000000000000cc="
        ],
        "{reg:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
