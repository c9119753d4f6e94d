//! `cargo xtask bench --hub-only`: what a hub costs and takes, on real PostgreSQL 15 and real
//! replicas (the fleet simulation's servers and reports).
//!
//! - Ingest: 20,000 distinct reports (real ones, rewritten per node as fleet-sim does,
//!   serialized before the clock starts) posted by 32 keep-alive clients as fast as they are
//!   answered, into one replica and into two; beside it, in the same run, `GET /healthz` by
//!   the same clients (the HTTP floor). Every report is checked stored exactly once.
//! - Reads at scale: the database filled by SQL with 1,000,000 reports of 20,000 clusters on
//!   1,000 nodes over 30 days (one real report's JSON as every body; the hourly counts,
//!   names and builds derived from them as ingest would), then the page and API timed over
//!   interleaved rounds beside `/healthz`; the replica's peak RSS after.
use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{bail, Result};
use serde_json::Value;

use super::{
    load::{quantile_ms, rewrite, Job, Origin, Pool, Rng},
    servers::{token_file, Hub, Postgres},
    INGEST, READ,
};
use crate::bench::observer::{cpu_and_rss, peak_rss_kib};

const REPORTS: usize = 20_000;
const CLIENTS: usize = 32;
const ROUNDS: usize = 40;

pub struct Ingest {
    pub replicas: usize,
    pub per_sec: f64,
    pub healthz_per_sec: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    /// CPU µs per report stored: the replicas', PostgreSQL's (all its processes), the
    /// clients' (this process).
    pub hub_us: f64,
    pub pg_us: f64,
    pub client_us: f64,
}

/// CPU seconds of `pid` and of its children alive now, and of those it reaped.
fn tree_cpu(pid: u32) -> f64 {
    let mut total = cpu_and_rss(pid).0 + reaped_cpu(pid);
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for e in entries.flatten() {
            let Some(child) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
            let ppid = stat.rsplit(") ").next().and_then(|r| r.split(' ').nth(1));
            if ppid == Some(&pid.to_string()) {
                total += cpu_and_rss(child).0;
            }
        }
    }
    total
}

/// CPU seconds of the children `pid` waited for (`cutime` + `cstime`).
fn reaped_cpu(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let f: Vec<f64> = stat
        .rsplit(") ")
        .next()
        .unwrap_or("")
        .split(' ')
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (f.get(13).unwrap_or(&0.0) + f.get(14).unwrap_or(&0.0)) / ticks
}

/// This process's CPU seconds, every thread's.
fn own_cpu() -> f64 {
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

pub struct HubBench {
    pub ingest: Vec<Ingest>,
    pub load_secs: f64,
    pub db_mib: i64,
    /// (label, path, p50 ms, p95 ms, bytes)
    pub reads: Vec<(&'static str, String, f64, f64, usize)>,
    pub rss_mib: u64,
}

/// `n` distinct reports from `templates`, serialized.
fn bodies(templates: &[Value], n: usize) -> Vec<Vec<u8>> {
    let mut rng = Rng(0x5eed);
    (0..n)
        .map(|i| {
            let (ns, wl) = (format!("ns-{}", i % 10), format!("svc-{:03}", i % 100));
            let o = Origin {
                node: i % 1000,
                namespace: &ns,
                workload: &wl,
                build: "1.0",
            };
            let fp = format!("v1:{:016x}", 0xb000 + (i % 500));
            let r = rewrite(&templates[i % templates.len()], &o, i as u64, &fp, &mut rng);
            serde_json::to_vec(&r).unwrap()
        })
        .collect()
}

/// Posts `jobs` through `clients` clients on `bases`; (answers per second, latencies µs).
fn blast(bases: &[String], jobs: impl Iterator<Item = Job>) -> (f64, Vec<u64>, u64) {
    let pool = Pool::start(bases, INGEST, CLIENTS);
    let t = Instant::now();
    for j in jobs {
        if pool.queue.send(j).is_err() {
            break;
        }
    }
    let seen = pool.finish();
    let secs = t.elapsed().as_secs_f64();
    let us: Vec<u64> = seen.us.values().flatten().copied().collect();
    let failed = seen.failed.values().sum();
    (us.len() as f64 / secs, us, failed)
}

fn ingest(pg: &Postgres, dir: &Path, templates: &[Value], replicas: usize) -> Result<Ingest> {
    pg.query(
        "TRUNCATE clusters, reports, cluster_hours, cluster_facets, cluster_builds, nodes, \
         builds, terminations, crash_minutes",
    );
    let ingest_token = token_file(dir, "ingest", INGEST);
    let hubs: Vec<Hub> = (0..replicas)
        .map(|_| Hub::start(&pg.url(), &ingest_token, None))
        .collect();
    let bases: Vec<String> = hubs.iter().map(Hub::url).collect();
    let all = bodies(templates, REPORTS);
    let floor = (0..REPORTS).map(|_| Job {
        path: "/healthz",
        body: Vec::new(),
        kind: "healthz",
    });
    let (healthz_per_sec, _, _) = blast(&bases, floor);
    let jobs = all.into_iter().map(|body| Job {
        path: "/api/v1/reports",
        body,
        kind: "report",
    });
    let pg_pid = pg.pid().unwrap_or(0);
    let hubs_cpu = || hubs.iter().map(|h| cpu_and_rss(h.pid()).0).sum::<f64>();
    let cpu0 = (hubs_cpu(), tree_cpu(pg_pid), own_cpu());
    let (per_sec, us, failed) = blast(&bases, jobs);
    let cpu1 = (hubs_cpu(), tree_cpu(pg_pid), own_cpu());
    let per_report = |a: f64, b: f64| (b - a) * 1e6 / REPORTS as f64;
    let stored = pg.one("SELECT COUNT(*) FROM reports");
    if failed > 0 || stored != REPORTS as i64 {
        bail!("ingest: {failed} posts failed, {stored} of {REPORTS} stored");
    }
    Ok(Ingest {
        replicas,
        per_sec,
        healthz_per_sec,
        p50_ms: quantile_ms(&us, 0.5),
        p95_ms: quantile_ms(&us, 0.95),
        hub_us: per_report(cpu0.0, cpu1.0),
        pg_us: per_report(cpu0.1, cpu1.1),
        client_us: per_report(cpu0.2, cpu1.2),
    })
}

/// 1,000,000 reports of 20,000 clusters on 1,000 nodes over 30 days, and what ingest would
/// have derived from them.
fn fill(pg: &Postgres, body: &str) -> f64 {
    let t = Instant::now();
    let now = super::clock::now_ns() as i64;
    let body = body.replace('\'', "''");
    pg.query(&format!(
        "TRUNCATE clusters, reports, cluster_hours, cluster_facets, cluster_builds, nodes, \
             builds, terminations, crash_minutes;
         INSERT INTO clusters (id, fingerprint, kind, headline, top_frame, count,
             first_seen_ns, last_seen_ns)
         SELECT g, 'v1:' || lpad(to_hex(g), 16, '0'), 'signal',
             'SIGSEGV (SEGV_MAPERR) #' || g, 'null_write (crasher.c:21)', 50,
             {now} - 2592000000000000, {now} - g::bigint * 60000000000
         FROM generate_series(1, 20000) g;
         SELECT setval('clusters_id_seq', 20000);
         INSERT INTO reports (node, boot_id, pid, start_key, cluster, time_ns, received_ns,
             namespace, pod, workload, image, signal, revision, exe, body)
         SELECT 'node-' || lpad((g % 1000)::text, 4, '0'), 'boot', g, g::text, 1 + g % 20000,
             {now} - (g::bigint * 2592000) * 1000, {now}, 'ns-' || (g % 10),
             'svc-' || (g % 100) || '-7c9f8d6b5-x2k4q', 'svc-' || (g % 100),
             'registry.example/svc:1.' || (g % 3), 'SIGSEGV', 'rev-1.' || (g % 3),
             '/usr/bin/svc', '{body}'
         FROM generate_series(1, 1000000) g;
         INSERT INTO cluster_hours SELECT cluster, time_ns / 3600000000000, node, namespace,
             workload, COUNT(*) FROM reports GROUP BY 1, 2, 3, 4, 5;
         INSERT INTO cluster_facets
             SELECT cluster, 'node', node, MAX(time_ns / 3600000000000) FROM reports GROUP BY 1, 3
             UNION ALL SELECT cluster, 'namespace', namespace, MAX(time_ns / 3600000000000)
                 FROM reports GROUP BY 1, 3
             UNION ALL SELECT cluster, 'workload', workload, MAX(time_ns / 3600000000000)
                 FROM reports GROUP BY 1, 3;
         INSERT INTO cluster_builds SELECT cluster, revision, image, COUNT(*), MIN(time_ns),
             MAX(time_ns) FROM reports GROUP BY 1, 2, 3;
         INSERT INTO builds SELECT revision, MIN(time_ns) FROM reports GROUP BY 1;
         INSERT INTO crash_minutes SELECT time_ns / 60000000000, namespace, workload, node,
             cluster, COUNT(*) FROM reports WHERE time_ns >= {now} - 86400000000000
             GROUP BY 1, 2, 3, 4, 5;
         INSERT INTO nodes SELECT DISTINCT node, {now} - 2592000000000000, {now}, {now}, '{{}}'
             FROM reports;
         ANALYZE;"
    ));
    t.elapsed().as_secs_f64()
}

pub fn run(templates: Vec<Value>, dir: &Path) -> Result<HubBench> {
    let pg = Postgres::start();
    // The schema: a replica migrates it.
    let ingest_token = token_file(dir, "ingest", INGEST);
    drop(Hub::start(&pg.url(), &ingest_token, None));
    let mut ingests = Vec::new();
    for replicas in [1, 2] {
        eprintln!("xtask bench: hub ingest, {replicas} replica(s)");
        ingests.push(ingest(&pg, dir, &templates, replicas)?);
    }
    eprintln!("xtask bench: filling 1,000,000 reports");
    let load_secs = fill(&pg, &serde_json::to_string(&templates[0])?);
    let read = token_file(dir, "read", READ);
    let hub = Hub::start(&pg.url(), &ingest_token, Some(&read));
    let paths: Vec<(&'static str, String)> = vec![
        ("baseline: /healthz", "/healthz".into()),
        ("page: clusters (first 50)", "/".into()),
        ("API: clusters (50)", "/api/clusters".into()),
        ("API: clusters (200)", "/api/clusters?limit=200".into()),
        (
            "API: clusters of a workload",
            "/api/clusters?workload=svc-7".into(),
        ),
        (
            "API: clusters on a node",
            "/api/clusters?node=node-0007".into(),
        ),
        ("page: one cluster", "/cluster/10".into()),
        ("API: one cluster", "/api/clusters/10".into()),
        ("page: nodes (1,000)", "/nodes".into()),
        ("API: loops", "/api/loops".into()),
        ("/metrics (the fleet's series)", "/metrics".into()),
    ];
    let mut times: Vec<Vec<u64>> = vec![Vec::new(); paths.len()];
    let mut bytes = vec![0; paths.len()];
    for round in 0..ROUNDS + 3 {
        for (i, (_, p)) in paths.iter().enumerate() {
            let t = Instant::now();
            let (st, body) = hub.get(p, Some(READ));
            let us = t.elapsed().as_micros() as u64;
            if st != 200 {
                bail!("GET {p}: {st} {body}");
            }
            bytes[i] = body.len();
            if round >= 3 {
                times[i].push(us);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let reads = paths
        .iter()
        .zip(times.iter().zip(bytes))
        .map(|((label, path), (t, b))| {
            (
                *label,
                path.clone(),
                quantile_ms(t, 0.5),
                quantile_ms(t, 0.95),
                b,
            )
        })
        .collect();
    Ok(HubBench {
        ingest: ingests,
        load_secs,
        db_mib: pg.one("SELECT pg_database_size('postgres')") >> 20,
        reads,
        rss_mib: peak_rss_kib(hub.pid()) / 1024,
    })
}

pub fn markdown(b: &HubBench) -> String {
    let mut s = String::from(
        "## Fleet hub\n\n\
         `crashwatch hub` on Debian's PostgreSQL 15 (started by the benchmark, `fsync=off`), on \
         this 2-core machine shared by PostgreSQL, the replicas and the clients. Ingest: \
         20,000 distinct real reports (a segfault, an abort and a Python exception recorded by \
         `crashwatch exec`, rewritten per node over 1,000 nodes, 500 crashes, 100 workloads) \
         posted by 32 keep-alive clients as fast as answered; every report checked stored \
         once. Beside it in the same run, `GET /healthz` by the same clients: the HTTP floor. \
         CPU per report stored: the replicas', PostgreSQL's (the server and its backends) and \
         the clients' (the benchmark's own threads, on the same two CPUs).\n\n\
         | replicas | reports/s stored | POST p50 / p95 ms | /healthz answers/s | ratio | CPU µs per report: hub / PostgreSQL / clients |\n\
         |---|---|---|---|---|---|\n",
    );
    for i in &b.ingest {
        s += &format!(
            "| {} | {:.0} | {:.1} / {:.1} | {:.0} | {:.2}× | {:.0} / {:.0} / {:.0} |\n",
            i.replicas,
            i.per_sec,
            i.p50_ms,
            i.p95_ms,
            i.healthz_per_sec,
            i.healthz_per_sec / i.per_sec,
            i.hub_us,
            i.pg_us,
            i.client_us
        );
    }
    s += &format!(
        "\nReads at scale: 1,000,000 reports of 20,000 clusters on 1,000 nodes over 30 days \
         (filled by SQL in {:.0} s, {} MiB of database; every body one real report's JSON), \
         one replica, one client (a new connection per request), {ROUNDS} interleaved \
         rounds after 3 warm-up rounds. The \
         replica's peak RSS after: {} MiB.\n\n\
         | request | p50 / p95 ms | / baseline p50 | bytes |\n|---|---|---|---|\n",
        b.load_secs, b.db_mib, b.rss_mib
    );
    let base = b.reads.first().map_or(1.0, |r| r.2);
    for (label, path, p50, p95, bytes) in &b.reads {
        s += &format!(
            "| {label} (`{path}`) | {p50:.2} / {p95:.2} | {:.1}× | {bytes} |\n",
            p50 / base
        );
    }
    s
}
