//! `cargo xtask bench --hub-retention`: the hub's retention at 10,000,000 reports on real
//! PostgreSQL 15: one pass thinning by count and by age in batches, timed, while another
//! replica takes reports (their POST latency before and during the pass).
use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{bail, Result};
use serde_json::Value;

use super::{
    load::{quantile_ms, rewrite, Origin, Rng},
    servers::{token_file, Hub, Postgres},
    INGEST,
};

const ROWS: i64 = 10_000_000;
const CLUSTERS: i64 = 20_000;
/// Reports kept per cluster in the pass (each has 500): the oldest 100 of each go by count.
const KEEP: &str = "400";
/// Days kept (the reports span 40): what the count left older than 30 days goes by age.
const DAYS: &str = "30";

pub struct RetentionBench {
    pub fill_secs: f64,
    pub db_mib: i64,
    pub after: i64,
    pub pass_secs: f64,
    pub said: String,
    /// POST p50 / p95 ms before the pass and during it, and how many posts during it.
    pub before_ms: (f64, f64),
    pub during_ms: (f64, f64),
    pub during_posts: usize,
}

/// 10,000,000 reports of 20,000 clusters over 40 days, 500 per cluster, each body 300 bytes;
/// ids in time order, as ingest makes them.
fn fill(pg: &Postgres) -> f64 {
    let t = Instant::now();
    let now = super::clock::now_ns() as i64;
    let step = 40 * 86_400_000_000_000 / ROWS;
    pg.query(&format!(
        "INSERT INTO clusters (id, fingerprint, kind, headline, top_frame, count,
             first_seen_ns, last_seen_ns)
         SELECT g, 'v1:r' || g, 'signal', 'SIGSEGV', 'f', {per}, {now} - 3456000000000000, {now}
         FROM generate_series(1, {CLUSTERS}) g;
         SELECT setval('clusters_id_seq', {CLUSTERS});
         INSERT INTO reports (node, boot_id, pid, start_key, cluster, time_ns, received_ns,
             namespace, pod, workload, image, signal, revision, exe, body)
         SELECT 'node-' || (g % 1000), 'boot', g, g::text, 1 + g % {CLUSTERS},
             {now} - ({ROWS} - g)::bigint * {step}, {now}, 'ns', 'pod', 'svc', 'img', 'SIGSEGV', 'rev', '/bin/x',
             repeat('x', 300)
         FROM generate_series(1, {ROWS}) g;
         ANALYZE;",
        per = ROWS / CLUSTERS
    ));
    t.elapsed().as_secs_f64()
}

/// Posts distinct copies of `template` to `hub` until `until` says stop; latencies in µs.
fn post_until(
    hub: &Hub,
    template: &Value,
    first: u64,
    mut until: impl FnMut() -> bool,
) -> Vec<u64> {
    let mut rng = Rng(0x7e7e);
    let mut us = Vec::new();
    let mut n = first;
    while !until() {
        let o = Origin {
            node: (n % 1000) as usize,
            namespace: "ns",
            workload: "svc",
            build: "1.0",
        };
        let r = rewrite(
            template,
            &o,
            n,
            &format!("v1:{:016x}", 0xf000 + n % 50),
            &mut rng,
        );
        let body = serde_json::to_vec(&r).unwrap();
        let t = Instant::now();
        let (st, _) = hub.post("/api/v1/reports", Some(INGEST), &body);
        if st == 200 {
            us.push(t.elapsed().as_micros() as u64);
        }
        n += 1;
        std::thread::sleep(Duration::from_millis(10));
    }
    us
}

pub fn run(template: &Value, dir: &Path) -> Result<RetentionBench> {
    let pg = Postgres::start();
    let ingest = token_file(dir, "ingest", INGEST);
    // The taker: migrates the schema, never thins during the run.
    let taker = Hub::spawn_with(&pg.url(), &ingest, None, &["--retention-interval", "86400"]);
    taker.wait_ready();
    eprintln!("xtask bench: filling {ROWS} reports");
    let fill_secs = fill(&pg);
    let db_mib = pg.one("SELECT pg_database_size('postgres')") >> 20;
    let mut k = 0;
    let before = post_until(&taker, template, 1, || {
        k += 1;
        k > 300
    });
    // The thinner: its first pass one second after it starts.
    let thinner = Hub::spawn_with(
        &pg.url(),
        &ingest,
        None,
        &[
            "--retention-interval",
            "1",
            "--keep-per-cluster",
            KEEP,
            "--keep-days",
            DAYS,
            // Size is out of this measurement: the newest rows' mean (the estimate's) is
            // the taker's real reports, twenty times the fill's.
            "--store-max-mib",
            "1000000",
        ],
    );
    thinner.wait_ready();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(1800);
    let said = || {
        thinner
            .log()
            .into_iter()
            .find(|l| l.contains("retention: removed"))
    };
    let during = post_until(&taker, template, 1_000, || {
        said().is_some() || Instant::now() > deadline
    });
    let pass_secs = started.elapsed().as_secs_f64() - 1.0;
    let Some(said) = said() else {
        bail!(
            "no retention pass ended within 30 minutes: {:?}",
            thinner.log()
        );
    };
    Ok(RetentionBench {
        fill_secs,
        db_mib,
        after: pg.one("SELECT COUNT(*) FROM reports"),
        pass_secs,
        said: said
            .split("retention: ")
            .nth(1)
            .unwrap_or(&said)
            .to_string(),
        before_ms: (quantile_ms(&before, 0.5), quantile_ms(&before, 0.95)),
        during_ms: (quantile_ms(&during, 0.5), quantile_ms(&during, 0.95)),
        during_posts: during.len(),
    })
}

pub fn markdown(b: &RetentionBench) -> String {
    format!(
        "## Hub retention\n\n\
         `crashwatch hub`'s retention on Debian's PostgreSQL 15 (`fsync=off`) at {ROWS} reports \
         of {CLUSTERS} clusters over 40 days, 500 per cluster, 300-byte bodies (filled by SQL \
         in {:.0} s, {} MiB of database). One replica thins with `--keep-per-cluster {KEEP} \
         --keep-days {DAYS}` (size left out; batches of 5,000 rows, each its own statement) while another \
         takes a real report every 10 ms.\n\n\
         | pass | reports after | POST p50 / p95 ms before the pass | during it ({} posts) |\n\
         |---|---|---|---|\n\
         | {:.0} s: {} | {} | {:.1} / {:.1} | {:.1} / {:.1} |\n",
        b.fill_secs,
        b.db_mib,
        b.during_posts,
        b.pass_secs,
        b.said,
        b.after,
        b.before_ms.0,
        b.before_ms.1,
        b.during_ms.0,
        b.during_ms.1,
    )
}
