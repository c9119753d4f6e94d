//! Hub: what agents send. A report is checked before anything is stored — a JSON object of
//! the report's schema (docs/report.md), a kind the agents write, its node, pid, time and
//! fingerprint present and sane — and stored with its key in one statement ([`STORE`]; its
//! cluster found or made first, without a lock for a cluster that exists): the report,
//! its cluster (made on its fingerprint's first crash anywhere), the cluster's hourly count
//! per node, namespace and workload, its count per minute (`crash_minutes`, the loop lists), its nodes, namespaces and workloads (`cluster_facets`:
//! one row per name, the page's counts and filters), its count per build and image, the
//! node's last crash and the build's first sighting.
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
    // Read once, straight into the report (a tree of values first cost as much again).
    let report: Report = serde_json::from_str(text).map_err(|e| match e.classify() {
        serde_json::error::Category::Data if !text.trim_start().starts_with('{') => {
            anyhow::anyhow!("not a report: a JSON object is expected")
        }
        serde_json::error::Category::Data => {
            anyhow::anyhow!("not a report (docs/report.md): {e}")
        }
        _ => anyhow::anyhow!("not JSON: {e}"),
    })?;
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

/// The cluster of `r`'s fingerprint, made when it is the first anywhere: (id, made). A plain
/// read first, so the reports of a hot cluster (a fleet-wide loop) take no lock here.
async fn cluster_of(client: &deadpool_postgres::Client, r: &Report, t: i64) -> Result<(i64, bool)> {
    let find = client
        .prepare_cached("SELECT id FROM clusters WHERE fingerprint = $1")
        .await?;
    let found = client.query_opt(&find, &[&r.fingerprint]).await?;
    if let Some(row) = found {
        return Ok((row.get(0), false));
    }
    let headline = crate::pipeline::cluster::headline(r);
    let top = crate::pipeline::cluster::top_frame(r);
    let made = client
        .query_opt(
            "INSERT INTO clusters (fingerprint, kind, headline, top_frame, first_seen_ns,
                 last_seen_ns)
             VALUES ($1, $2, $3, $4, $5, $5)
             ON CONFLICT (fingerprint) DO NOTHING RETURNING id",
            &[&r.fingerprint, &r.kind, &headline, &top, &t],
        )
        .await?;
    if let Some(row) = made {
        return Ok((row.get(0), true));
    }
    // Another replica made it in between.
    let row = client.query_one(&find, &[&r.fingerprint]).await?;
    Ok((row.get(0), false))
}

/// One statement stores a new crash and everything it counts, or, for a key stored before,
/// nothing but the node's last word: the report (its key unique), then — only when it went
/// in — the cluster's count and times (and its regression, when this is its first report:
/// a cluster made by an attempt that failed after is still opened by the retry),
/// the hourly and per-build counts, the build's first sighting; the node's last crash.
/// Prepared once per connection. The live pages hear of it from [`super::db::Changed`], not
/// from a NOTIFY here. A name already filed this hour, a build already first seen earlier,
/// is not upserted again: an upsert locks its row (and writes a new version of it) even when
/// nothing changes, and every report of a fleet in one build upserted that build's one row.
/// Autocommitted, so a hot row (a cluster crash-looping fleet-wide) is locked for this
/// statement only.
const STORE: &str = "
WITH r AS (
    INSERT INTO reports (node, boot_id, pid, start_key, cluster, time_ns, received_ns,
        namespace, pod, workload, image, signal, revision, exe, body)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
    ON CONFLICT (node, boot_id, pid, start_key) DO NOTHING
    RETURNING id
), c AS (
    UPDATE clusters SET count = count + 1,
        last_seen_ns = GREATEST(last_seen_ns, $6), first_seen_ns = LEAST(first_seen_ns, $6),
        regression = CASE WHEN count = 0 AND $17::text <> '' AND COALESCE(
                (SELECT first_seen_ns FROM builds WHERE revision = $17::text), $6) >= $18
            THEN $17::text ELSE regression END
    WHERE id = $5 AND EXISTS (SELECT 1 FROM r)
), h AS (
    INSERT INTO cluster_hours
    SELECT $5::bigint, $16::bigint, $1::text, $8::text, $10::text, 1 FROM r
    ON CONFLICT (cluster, hour, node, namespace, workload)
    DO UPDATE SET count = cluster_hours.count + 1
), m AS (
    INSERT INTO crash_minutes
    SELECT $6::bigint / 60000000000, $8::text, $10::text, $1::text, $5::bigint, 1 FROM r
    ON CONFLICT (minute, namespace, workload, node, cluster)
    DO UPDATE SET count = crash_minutes.count + 1
), f AS (
    INSERT INTO cluster_facets
    SELECT $5::bigint, x.facet, x.value, $16::bigint
    FROM r, (VALUES ('node', $1::text), ('namespace', $8::text), ('workload', $10::text))
        AS x (facet, value)
    WHERE x.value <> '' AND NOT EXISTS (SELECT 1 FROM cluster_facets k
        WHERE k.cluster = $5 AND k.facet = x.facet AND k.value = x.value
            AND k.last_hour >= $16)
    ON CONFLICT (cluster, facet, value) DO UPDATE SET last_hour = EXCLUDED.last_hour
    WHERE cluster_facets.last_hour < EXCLUDED.last_hour
), b AS (
    INSERT INTO cluster_builds
    SELECT $5::bigint, $13::text, $11::text, 1, $6::bigint, $6::bigint FROM r
    WHERE $13::text <> '' OR $11::text <> ''
    ON CONFLICT (cluster, revision, image) DO UPDATE SET count = cluster_builds.count + 1,
        first_seen_ns = LEAST(cluster_builds.first_seen_ns, EXCLUDED.first_seen_ns),
        last_seen_ns = GREATEST(cluster_builds.last_seen_ns, EXCLUDED.last_seen_ns)
), v AS (
    INSERT INTO builds SELECT $13::text, $6::bigint FROM r WHERE $13::text <> ''
        AND NOT EXISTS (SELECT 1 FROM builds k WHERE k.revision = $13 AND k.first_seen_ns <= $6)
    ON CONFLICT (revision)
    DO UPDATE SET first_seen_ns = LEAST(builds.first_seen_ns, EXCLUDED.first_seen_ns)
), n AS (
    INSERT INTO nodes (name, first_seen_ns, heard_ns, last_crash_ns) VALUES ($1, $7, $7, $6)
    ON CONFLICT (name) DO UPDATE SET heard_ns = GREATEST(nodes.heard_ns, EXCLUDED.heard_ns),
        last_crash_ns = GREATEST(nodes.last_crash_ns, EXCLUDED.last_crash_ns)
)
SELECT id FROM r";

/// A termination: the node's last word and the hour's count, one statement.
const COUNT_TERMINATION: &str = "
WITH n AS (
    INSERT INTO nodes (name, first_seen_ns, heard_ns, last_crash_ns) VALUES ($2, $6, $6, $7)
    ON CONFLICT (name) DO UPDATE SET heard_ns = GREATEST(nodes.heard_ns, EXCLUDED.heard_ns)
)
INSERT INTO terminations VALUES ($1, $2, $3, $4, $5, 1)
ON CONFLICT (hour, node, namespace, workload, signal)
DO UPDATE SET count = terminations.count + 1";

/// Stores `i` once; a cluster it opens is a regression of the build the node blamed when
/// the fleet first saw that build crash within `regression_window_ns`.
pub async fn store(pool: &Pool, i: &Incoming, regression_window_ns: u64) -> Result<Stored> {
    let r = &i.report;
    let now = clock::now_ns() as i64;
    let t = i.time_ns as i64;
    let hour = (i.time_ns / HOUR_NS) as i64;
    let client = pool.get().await?;
    if r.kind == "termination" {
        let signal = r.signal.as_ref().map_or(String::new(), |s| s.name.clone());
        let count = client.prepare_cached(COUNT_TERMINATION).await?;
        client
            .execute(
                &count,
                &[&hour, &r.host, &i.namespace, &i.workload, &signal, &now, &t],
            )
            .await?;
        return Ok(Stored::Counted);
    }
    let (cluster, made) = cluster_of(&client, r, t).await?;
    let image = r
        .container
        .as_ref()
        .and_then(|c| c.image.clone())
        .unwrap_or_default();
    let pod = r
        .k8s
        .as_ref()
        .and_then(|k| k.pod.clone())
        .unwrap_or_default();
    let signal = r.signal.as_ref().map_or(String::new(), |s| s.name.clone());
    let blamed = regression(r).unwrap_or_default();
    let since = t - regression_window_ns.min(i64::MAX as u64) as i64;
    let store = client.prepare_cached(STORE).await?;
    let row = client
        .query_opt(
            &store,
            &[
                &r.host,
                &r.boot_id,
                &(r.pid as i64),
                &start_key(r),
                &cluster,
                &t,
                &now,
                &i.namespace,
                &pod,
                &i.workload,
                &image,
                &signal,
                &revision(r),
                &r.exe.clone().unwrap_or_default(),
                &i.text,
                &hour,
                &blamed,
                &since,
            ],
        )
        .await?;
    let Some(row) = row else {
        if made {
            // Its report was stored before under another fingerprint: no empty cluster.
            client
                .execute(
                    "DELETE FROM clusters WHERE id = $1 AND count = 0",
                    &[&cluster],
                )
                .await?;
        }
        return Ok(Stored::Duplicate);
    };
    Ok(Stored::New {
        report: row.get(0),
        cluster,
    })
}
