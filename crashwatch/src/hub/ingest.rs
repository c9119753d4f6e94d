//! Hub: what agents send. A report is checked before anything is stored — a JSON object of
//! the report's schema (docs/report.md), a kind the agents write, its node, pid, time and
//! fingerprint present and sane — and stored with its key, in one transaction: the report,
//! its cluster (made on its fingerprint's first crash anywhere), the cluster's hourly count
//! per node, namespace and workload, its count per build and image, the node's last crash
//! and the build's first sighting.
//!
//! Exactly once per crash: the key is the node, its boot, the pid and the process's start
//! (`start_time_ns`; a report from an agent that did not write it falls back to its time of
//! death), a unique index in PostgreSQL. A second copy (an agent's retry whose answer was
//! lost, two agents across a handover, two replicas racing) finds the row and changes
//! nothing; it is answered 200 all the same, so the agent's spool lets it go.
//!
//! A cluster a report opens is a regression when the node blamed a build that arrived just
//! before (`cluster.regression`) and the fleet's first crash in that build is recent too.
//!
//! Terminations (SIGTERM and the like, when agents send them) are counted per hour, node,
//! namespace, workload and signal, never clustered.
use anyhow::{bail, Result};
use deadpool_postgres::Pool;

use crate::model::{clock, report::Report};

/// The largest report accepted (its JSON).
pub const MAX_REPORT: usize = 1 << 20;
const HOUR_NS: u64 = 3_600_000_000_000;

/// A report that passed the checks, with what the hub files it by.
pub struct Incoming {
    pub report: Report,
    /// The JSON as the agent sent it: stored as is.
    pub text: String,
    pub time_ns: u64,
    pub namespace: String,
    pub workload: String,
}

/// A node's name as reports and heartbeats give it: 1 to 253 characters, none a control.
pub fn node_name_ok(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && !s.chars().any(char::is_control)
}

/// Why a report is refused (answered 400 with this).
pub fn check(body: &[u8]) -> Result<Incoming> {
    if body.len() > MAX_REPORT {
        bail!("the report is {} bytes; at most {MAX_REPORT}", body.len());
    }
    let text = std::str::from_utf8(body).map_err(|_| anyhow::anyhow!("not UTF-8"))?;
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| anyhow::anyhow!("not JSON: {e}"))?;
    if !value.is_object() {
        bail!("not a report: a JSON object is expected");
    }
    let report: Report = serde_json::from_value(value)
        .map_err(|e| anyhow::anyhow!("not a report (docs/report.md): {e}"))?;
    let kinds = crate::model::crash::Kind::names();
    if !kinds.contains(&report.kind) && report.kind != "termination" {
        bail!(
            "kind {:?} is not a kind; the kinds are {}",
            report.kind,
            kinds.join(", ")
        );
    }
    if !node_name_ok(&report.host) {
        bail!("host: a node name is required (1 to 253 characters, no control characters)");
    }
    if report.boot_id.len() > 64 || report.boot_id.chars().any(char::is_control) {
        bail!("boot_id: at most 64 characters, no control characters");
    }
    if report.pid == 0 {
        bail!("pid: required");
    }
    let Some(time_ns) = clock::parse_rfc3339(&report.time) else {
        bail!("time {:?}: RFC 3339 UTC is required", report.time);
    };
    if report.kind != "termination"
        && (!report.fingerprint.starts_with('v') || report.fingerprint.len() > 128)
    {
        bail!(
            "fingerprint {:?}: a versioned fingerprint (v1:…) is required",
            report.fingerprint
        );
    }
    let k8s = report.k8s.as_ref();
    let namespace = k8s.and_then(|k| k.namespace.clone()).unwrap_or_default();
    let workload = k8s
        .and_then(|k| k.pod.as_deref())
        .map(|p| crate::model::container::workload(p).to_string())
        .unwrap_or_default();
    Ok(Incoming {
        text: text.to_string(),
        report,
        time_ns,
        namespace,
        workload,
    })
}

/// What storing did.
#[derive(Debug, PartialEq, Eq)]
pub enum Stored {
    /// A new crash: its report's and cluster's ids.
    New { report: i64, cluster: i64 },
    /// This key was stored before: nothing changed.
    Duplicate,
    /// A termination, counted.
    Counted,
}

/// The key's last part: the process's start, or its time of death from an older agent.
fn start_key(r: &Report) -> String {
    match r.start_time_ns {
        0 => format!("t:{}", r.time),
        ns => ns.to_string(),
    }
}

/// The build a report crashed in: Go's VCS revision, else the binary's GNU build id.
fn revision(r: &Report) -> String {
    let vcs = r.go.as_ref().and_then(|g| g.build.as_ref());
    if let Some(rev) = vcs.and_then(|b| b.vcs_revision.clone()) {
        return rev;
    }
    r.stack
        .iter()
        .find(|f| f.module.is_some() && f.module == r.exe)
        .and_then(|f| f.build_id.clone())
        .unwrap_or_default()
}

/// The build the node blamed this crash's cluster on (`cluster.regression`), if any.
fn regression(r: &Report) -> Option<String> {
    let rev = &r.cluster.as_ref()?.regression.as_ref()?.revision;
    (!rev.is_empty()).then(|| rev.clone())
}

/// Stores `i` once; a cluster it opens is a regression of the build the node blamed when
/// the fleet first saw that build crash within `regression_window_ns`.
pub async fn store(pool: &Pool, i: &Incoming, regression_window_ns: u64) -> Result<Stored> {
    let r = &i.report;
    let now = clock::now_ns() as i64;
    let t = i.time_ns as i64;
    let hour = (i.time_ns / HOUR_NS) as i64;
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    tx.execute(
        "INSERT INTO nodes (name, first_seen_ns, heard_ns, last_crash_ns)
         VALUES ($1, $2, $2, $3)
         ON CONFLICT (name) DO UPDATE SET heard_ns = GREATEST(nodes.heard_ns, $2),
             last_crash_ns = GREATEST(nodes.last_crash_ns, $3)",
        &[&r.host, &now, &t],
    )
    .await?;
    if r.kind == "termination" {
        let signal = r.signal.as_ref().map_or(String::new(), |s| s.name.clone());
        tx.execute(
            "INSERT INTO terminations VALUES ($1, $2, $3, $4, $5, 1)
             ON CONFLICT (hour, node, namespace, workload, signal)
             DO UPDATE SET count = terminations.count + 1",
            &[&hour, &r.host, &i.namespace, &i.workload, &signal],
        )
        .await?;
        tx.commit().await?;
        return Ok(Stored::Counted);
    }
    let headline = crate::pipeline::cluster::headline(r);
    let top = crate::pipeline::cluster::top_frame(r);
    // `made`: this report opened the cluster (PostgreSQL's xmax is 0 on a row just inserted).
    let row = tx
        .query_one(
            "INSERT INTO clusters (fingerprint, kind, headline, top_frame, first_seen_ns,
                 last_seen_ns)
             VALUES ($1, $2, $3, $4, $5, $5)
             ON CONFLICT (fingerprint) DO UPDATE SET fingerprint = EXCLUDED.fingerprint
             RETURNING id, (xmax = 0)",
            &[&r.fingerprint, &r.kind, &headline, &top, &t],
        )
        .await?;
    let (cluster, made): (i64, bool) = (row.get(0), row.get(1));
    let rev = revision(r);
    let image = r
        .container
        .as_ref()
        .and_then(|c| c.image.clone())
        .unwrap_or_default();
    let row = tx
        .query_opt(
            "INSERT INTO reports (node, boot_id, pid, start_key, cluster, time_ns, received_ns,
                 namespace, pod, workload, image, signal, revision, exe, body)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
             ON CONFLICT (node, boot_id, pid, start_key) DO NOTHING
             RETURNING id",
            &[
                &r.host,
                &r.boot_id,
                &(r.pid as i64),
                &start_key(r),
                &cluster,
                &t,
                &now,
                &i.namespace,
                &r.k8s
                    .as_ref()
                    .and_then(|k| k.pod.clone())
                    .unwrap_or_default(),
                &i.workload,
                &image,
                &r.signal.as_ref().map_or(String::new(), |s| s.name.clone()),
                &rev,
                &r.exe.clone().unwrap_or_default(),
                &i.text,
            ],
        )
        .await?;
    let Some(row) = row else {
        // The clusters row was only touched: nothing to keep.
        tx.rollback().await?;
        return Ok(Stored::Duplicate);
    };
    tx.execute(
        "UPDATE clusters SET count = count + 1, last_seen_ns = GREATEST(last_seen_ns, $2),
             first_seen_ns = LEAST(first_seen_ns, $2)
         WHERE id = $1",
        &[&cluster, &t],
    )
    .await?;
    tx.execute(
        "INSERT INTO cluster_hours VALUES ($1, $2, $3, $4, $5, 1)
         ON CONFLICT (cluster, hour, node, namespace, workload)
         DO UPDATE SET count = cluster_hours.count + 1",
        &[&cluster, &hour, &r.host, &i.namespace, &i.workload],
    )
    .await?;
    if !rev.is_empty() || !image.is_empty() {
        tx.execute(
            "INSERT INTO cluster_builds VALUES ($1, $2, $3, 1, $4, $4)
             ON CONFLICT (cluster, revision, image) DO UPDATE SET
                 count = cluster_builds.count + 1,
                 first_seen_ns = LEAST(cluster_builds.first_seen_ns, $4),
                 last_seen_ns = GREATEST(cluster_builds.last_seen_ns, $4)",
            &[&cluster, &rev, &image, &t],
        )
        .await?;
    }
    if !rev.is_empty() {
        tx.execute(
            "INSERT INTO builds VALUES ($1, $2) ON CONFLICT (revision)
             DO UPDATE SET first_seen_ns = LEAST(builds.first_seen_ns, $2)",
            &[&rev, &t],
        )
        .await?;
    }
    if let Some(build) = regression(r).filter(|_| made) {
        // The node saw the build arrive just before this crash; the fleet's first crash in
        // that build is recent too (an old build crashing for the first time is not new).
        tx.execute(
            "UPDATE clusters SET regression = $2 WHERE id = $1
                 AND COALESCE((SELECT first_seen_ns FROM builds WHERE revision = $2), $3) >= $4",
            &[
                &cluster,
                &build,
                &t,
                &(t - regression_window_ns.min(i64::MAX as u64) as i64),
            ],
        )
        .await?;
    }
    // Delivered at the commit, to every replica's live pages.
    tx.batch_execute(&format!("NOTIFY {}", super::db::STORED))
        .await?;
    tx.commit().await?;
    Ok(Stored::New {
        report: row.get(0),
        cluster,
    })
}
