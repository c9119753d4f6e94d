//! The fleet's facets, loops and metrics over the page test's four nodes (main.rs).
use serde_json::Value;

use crate::{as_node, servers::Hub, INGEST};

/// The value of the /metrics sample `series` (with its labels), if the hub has it.
fn sample(hub: &Hub, series: &str) -> Option<f64> {
    let (_, body) = hub.get("/metrics", None);
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// The fleet's facets, loops and metrics over the four nodes' crashes of `r`'s cluster:
/// filters by image and build, the cluster's own page listing its nodes, workloads and
/// images, a workload in a crash loop, the fleet's series on /metrics.
pub fn facets_loops_and_metrics(a: &Hub, r: &Value) {
    let get = |path: &str| -> Value {
        let (st, body) = a.get(path, None);
        assert_eq!(st, 200, "{path}: {body}");
        serde_json::from_str(&body).unwrap()
    };
    let fp = r["fingerprint"].as_str().unwrap();
    let listed = |q: &str| {
        get(&format!("/api/clusters?{q}"))["clusters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["fingerprint"] == fp)
    };
    assert!(listed("image=registry.example/shop/api:1.1"));
    assert!(listed("build=rev-0"));
    assert!(!listed("image=registry.example/shop/api:9"));
    assert!(!listed("build=rev-9"));
    let id = get("/api/clusters?workload=api")["clusters"][0]["id"].clone();
    let d = get(&format!("/api/clusters/{id}"));
    let fleet = &d["cluster"]["fleet"];
    assert_eq!(
        (&fleet["image_count"], &fleet["build_count"]),
        (&2.into(), &2.into()),
        "{d}"
    );
    assert_eq!(d["cluster"]["nodes"].as_array().unwrap().len(), 4, "{d}");
    assert_eq!(d["cluster"]["builds"].as_array().unwrap().len(), 2, "{d}");
    let (_, page) = a.get(&format!("/cluster/{id}"), None);
    for said in ["nodes (4)", "workloads (1)", "images (2)", "rev-1"] {
        assert!(page.contains(said), "{said} on the cluster's page");
    }

    // Two more crashes: six in workload shop/api within the window, a loop (default 5).
    for n in 4..6 {
        let (st, body) = a.post("/api/v1/reports", Some(INGEST), &as_node(r, "node-a", n));
        assert_eq!(st, 200, "{body}");
    }
    let loops = get("/api/loops");
    let workload = loops["loops"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["scope"] == "workload")
        .unwrap_or_else(|| panic!("a workload loop: {loops}"));
    assert_eq!(
        (
            &workload["name"],
            &workload["namespace"],
            &workload["crashes"]
        ),
        (&"api".into(), &"shop".into(), &6.into()),
        "{loops}"
    );
    assert_eq!(workload["nodes"], 4, "{loops}");
    let (_, page) = a.get("/nodes", None);
    assert!(page.contains("Crash loops now") && page.contains("shop/api"));

    // A termination is counted, never clustered.
    let mut t: Value = serde_json::from_slice(&as_node(r, "node-b", 7)).unwrap();
    t["kind"] = "termination".into();
    t["signal"] = serde_json::json!({
        "number": 15, "name": "SIGTERM", "code": 0, "code_name": null, "addr": null
    });
    let (st, body) = a.post(
        "/api/v1/reports",
        Some(INGEST),
        &serde_json::to_vec(&t).unwrap(),
    );
    assert_eq!((st, body.contains("counted")), (200, true), "{body}");
    let kind = r["kind"].as_str().unwrap();
    let crashes = format!(
        "crashwatch_fleet_crashes_24h{{kind=\"{kind}\",namespace=\"shop\",workload=\"api\"}}"
    );
    assert_eq!(sample(a, &crashes), Some(6.0), "{crashes}");
    let terms =
        "crashwatch_fleet_terminations_24h{namespace=\"shop\",workload=\"api\",signal=\"SIGTERM\"}";
    assert_eq!(sample(a, terms), Some(1.0));
    assert_eq!(
        sample(a, "crashwatch_fleet_nodes{state=\"silent\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample(a, "crashwatch_fleet_loops{scope=\"workload\"}"),
        Some(1.0)
    );
    assert_eq!(sample(a, "crashwatch_hub_database_up"), Some(1.0));
}

/// A filter few clusters match reads at most 5,000 clusters per request: the first page
/// says `partial` with a cursor after the last one walked, and the next request finds the
/// old match there.
#[test]
fn a_filtered_listing_walks_at_most_5000_clusters_then_goes_on() {
    let _alone = crate::alone();
    let pg = crate::servers::Postgres::start();
    let dir = crate::common::state_dir("hub-walk");
    let ingest = crate::servers::token_file(&dir, "ingest", INGEST);
    let hub = Hub::start(&pg.url(), &ingest, None);
    // 6,000 clusters, the newest with the highest id; two of them in workload "rare".
    pg.query(
        "INSERT INTO clusters (id, fingerprint, kind, headline, top_frame, count,
             first_seen_ns, last_seen_ns)
         SELECT i, 'v1:' || i, 'signal', 'SIGSEGV', 'f', 1, i, i
         FROM generate_series(1, 6000) i",
    );
    pg.query(
        "INSERT INTO cluster_facets VALUES (5999, 'workload', 'rare', 0), (1, 'workload', 'rare', 0)",
    );
    let page = |q: &str| -> Value {
        let (st, body) = hub.get(&format!("/api/clusters?workload=rare{q}"), None);
        assert_eq!(st, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    };
    let ids = |p: &Value| -> Vec<i64> {
        p["clusters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["id"].as_i64().unwrap())
            .collect()
    };
    let first = page("");
    assert_eq!(ids(&first), [5999], "{first}");
    assert_eq!(first["partial"], true, "{first}");
    assert_eq!(first["next"], "1001.1001", "the 5,000th cluster walked");
    let next = first["next"].as_str().unwrap();
    let second = page(&format!("&before={next}"));
    assert_eq!(ids(&second), [1], "{second}");
    assert_eq!(
        (&second["partial"], &second["next"]),
        (&false.into(), &Value::Null),
        "{second}"
    );
    // Unfiltered, a page fills from the newest as before.
    let (_, body) = hub.get("/api/clusters?limit=3", None);
    let all: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ids(&all), [6000, 5999, 5998]);
    assert_eq!(all["partial"], false);
    let _ = std::fs::remove_dir_all(&dir);
}
