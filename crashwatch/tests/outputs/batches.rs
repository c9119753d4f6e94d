//! The network outputs' requests: many waiting reports to one, over a kept connection.
use super::{
    alone, common,
    common::{state_dir, Agent, Crasher},
    endpoints::{self, Endpoint, OtlpReceiver},
    wait_until,
};

/// Reports that waited for an endpoint go out many to a request (OTLP's log records, a
/// webhook's JSON array with `--webhook-batch`), each exactly once, and later requests
/// reuse the connection instead of opening one each.
#[test]
fn waiting_reports_go_many_to_a_request_over_a_kept_connection() {
    let _alone = alone();
    let dir = state_dir("batch");
    std::fs::create_dir_all(&dir).unwrap();
    let ep = Endpoint::start();
    ep.take_down();
    let otlp_port = endpoints::free_port();
    let a = Agent::start(&[
        "--webhook",
        &format!("http://127.0.0.1:{}/hook", ep.port),
        "--webhook-batch",
        "50",
        "--otlp-endpoint",
        &format!("http://127.0.0.1:{otlp_port}"),
        "--webhook-retry-max",
        "1",
    ]);
    // Twenty crashes while both endpoints are down: they wait in the spools.
    let mut pids: Vec<u64> = (0..20)
        .map(|_| Crasher::finish(common::spawn(&mut Crasher::command("null"))).pid)
        .map(|p| {
            a.report_for(p);
            p as u64
        })
        .collect();
    wait_until("both spools holding all twenty", || {
        a.metric("crashwatch_reports_spooled")
            .is_some_and(|n| n >= 40.0)
    });
    ep.bring_up();
    let rx = OtlpReceiver::start_on(&dir, otlp_port);
    // Three more, one at a time, each delivered before the next.
    for _ in 0..3 {
        let p = Crasher::finish(common::spawn(&mut Crasher::command("null"))).pid as u64;
        pids.push(p);
        wait_until("the crash at both endpoints", || {
            ep.pids().contains(&p)
                && rx
                    .records()
                    .iter()
                    .any(|r| r["attributes"]["process.pid"] == p)
        });
    }
    pids.sort_unstable();
    let hits = ep.got.lock().unwrap().clone();
    let mut got: Vec<u64> = hits.iter().map(|h| h.pid).collect();
    got.sort_unstable();
    assert_eq!(got, pids, "each report exactly once at the webhook");
    let requests: std::collections::BTreeSet<usize> = hits.iter().map(|h| h.request).collect();
    let conns: std::collections::BTreeSet<usize> = hits.iter().map(|h| h.conn).collect();
    assert!(
        hits.iter().any(|h| h.in_request > 1) && requests.len() < 20,
        "the waiting reports in few requests: {} requests",
        requests.len()
    );
    assert!(
        hits.iter()
            .filter(|h| h.in_request > 1)
            .all(|h| h.key.starts_with("crashwatch-batch-")),
        "a batch has a key of its own"
    );
    assert!(
        conns.len() < requests.len(),
        "{} requests over {} connections: none kept alive",
        requests.len(),
        conns.len()
    );
    let records = rx.records();
    let mut otlp: Vec<u64> = records
        .iter()
        .filter_map(|r| r["attributes"]["process.pid"].as_u64())
        .collect();
    otlp.sort_unstable();
    assert_eq!(otlp, pids, "each report exactly once at the OTLP receiver");
    assert!(
        records.iter().any(|r| r["in_request"].as_u64() > Some(1)),
        "the waiting reports in few OTLP requests"
    );
    drop(a);
    let _ = std::fs::remove_dir_all(&dir);
}
