//! Hub: what the fleet's page and API read from PostgreSQL ([`PgHistory`], the web's
//! [`History`]), in the node page's shapes
//! ([`crate::outputs::store`]'s `Listing`, `ClusterRow`, `ReportRow`, `Timeline`) plus each
//! cluster's fleet (`fleet`: nodes, namespaces, workloads) and the nodes' inventory. Every
//! answer is one bounded page: at most [`MAX_PAGE`] clusters or reports, a few names per
//! cluster; the listing walks the activity index (`clusters_by_activity`) from the cursor,
//! at most [`SCAN`] clusters per request as the node's does: a filter few clusters match
//! reads a bounded slice of the index and answers `partial` with a cursor to go on from,
//! rather than reading every cluster of the fleet to fill a page.
use anyhow::Result;
use deadpool_postgres::Pool;

use crate::{
    model::clock,
    outputs::store::{
        page::{cut, SCAN},
        BuildRow, ClusterRow, Cursor, Filter, Fleet, Listing, ReportRow, Timeline,
    },
    web::{
        api::ClusterDetail,
        read::{Answer, Failed, History, LoopRow, NodeRow},
    },
};

pub const MAX_PAGE: u32 = 200;
/// Names shown per cluster for each list: in the listing, on the cluster's own page.
const NAMES: i32 = 5;
const DETAIL_NAMES: i32 = 50;
const HOUR_NS: u64 = 3_600_000_000_000;
/// A minute of `crash_minutes` (its `minute` is `time_ns` divided by this).
pub const MINUTE_NS: u64 = 60_000_000_000;
/// A node not heard from (report or heartbeat) for this long is silent: three heartbeats.
pub const SILENT_NS: u64 = 95_000_000_000;

const COLUMNS: &str = "c.id, c.fingerprint, c.kind, c.headline, c.top_frame, c.count, \
                       c.first_seen_ns, c.last_seen_ns, c.regression";

fn row(r: &tokio_postgres::Row) -> ClusterRow {
    let (first, last): (i64, i64) = (r.get(6), r.get(7));
    ClusterRow {
        id: r.get(0),
        fingerprint: r.get(1),
        kind: r.get(2),
        headline: r.get(3),
        top_frame: r.get(4),
        count: r.get::<_, i64>(5) as u64,
        first_seen: clock::rfc3339(first as u64),
        last_seen: clock::rfc3339(last as u64),
        first_seen_ns: first as u64,
        last_seen_ns: last as u64,
        regression: r.get(8),
        ..ClusterRow::default()
    }
}

/// A page of clusters, most recent activity first, from `before` on.
pub async fn list(pool: &Pool, f: &Filter, before: Option<Cursor>) -> Result<Listing> {
    let limit = f.limit.clamp(1, MAX_PAGE) as i64;
    let (b_t, b_id) = before.map_or((i64::MAX, i64::MAX), |c| (c.last_seen_ns, c.id));
    let text = f.text.as_ref().map(|t| t.to_lowercase());
    let client = pool.get().await?;
    let sql = format!(
        "SELECT {COLUMNS} FROM (SELECT * FROM clusters
                WHERE (last_seen_ns, id) < ($1, $2)
                ORDER BY last_seen_ns DESC, id DESC LIMIT $11) c
         WHERE ($3::text IS NULL OR c.kind = $3)
           AND ($4::text IS NULL OR EXISTS (SELECT 1 FROM cluster_facets f
                WHERE f.cluster = c.id AND f.facet = 'namespace' AND f.value = $4))
           AND ($5::text IS NULL OR EXISTS (SELECT 1 FROM cluster_facets f
                WHERE f.cluster = c.id AND f.facet = 'node' AND f.value = $5))
           AND ($6::text IS NULL OR EXISTS (SELECT 1 FROM cluster_facets f
                WHERE f.cluster = c.id AND f.facet = 'workload' AND f.value = $6))
           AND ($7::text IS NULL OR strpos(lower(c.kind || ' ' || c.headline || ' ' ||
                c.top_frame || ' ' || c.fingerprint), $7) > 0)
           AND ($9::text IS NULL OR EXISTS (SELECT 1 FROM cluster_builds b
                WHERE b.cluster = c.id AND b.image = $9))
           AND ($10::text IS NULL OR EXISTS (SELECT 1 FROM cluster_builds b
                WHERE b.cluster = c.id AND b.revision = $10))
         ORDER BY c.last_seen_ns DESC, c.id DESC
         LIMIT $8"
    );
    let rows = client
        .query(
            &sql,
            &[
                &b_t,
                &b_id,
                &f.kind,
                &f.namespace,
                &f.node,
                &f.workload,
                &text,
                &(limit + 1),
                &f.image,
                &f.build,
                &i64::from(SCAN),
            ],
        )
        .await?;
    let mut clusters: Vec<ClusterRow> = rows.iter().map(row).collect();
    let mut next = cut(&mut clusters, limit as u32, |c| Cursor {
        last_seen_ns: c.last_seen_ns as i64,
        id: c.id,
    });
    let mut partial = false;
    if next.is_none() {
        // Not a full page: the walk reached the oldest cluster, or stopped at SCAN with
        // older clusters left for the next request, which goes on after the last walked.
        let walked = client
            .query_opt(
                "SELECT last_seen_ns, id FROM clusters WHERE (last_seen_ns, id) < ($1, $2)
                 ORDER BY last_seen_ns DESC, id DESC OFFSET $3 LIMIT 1",
                &[&b_t, &b_id, &(i64::from(SCAN) - 1)],
            )
            .await?;
        if let Some(w) = walked {
            next = Some(Cursor {
                last_seen_ns: w.get(0),
                id: w.get(1),
            });
            partial = true;
        }
    }
    facets(&client, &mut clusters, f, NAMES).await?;
    Ok(Listing {
        clusters,
        next,
        partial,
    })
}

/// Fills each cluster's fleet (`names` of each list), builds, last 24 hours and loop flag:
/// four queries for the page.
async fn facets(
    client: &tokio_postgres::Client,
    clusters: &mut [ClusterRow],
    f: &Filter,
    names: i32,
) -> Result<()> {
    let ids: Vec<i64> = clusters.iter().map(|c| c.id).collect();
    let now = clock::now_ns();
    // One row per name (cluster_facets), not per hour: a hot cluster's page costs its
    // distinct names, not its history.
    let rows = client
        .query(
            "SELECT cluster, facet, COUNT(*), (ARRAY_AGG(value ORDER BY value))[1:$2]
             FROM cluster_facets WHERE cluster = ANY($1) GROUP BY cluster, facet",
            &[&ids, &names],
        )
        .await?;
    for c in clusters.iter_mut() {
        let mut fleet = Fleet::default();
        for r in rows.iter().filter(|r| r.get::<_, i64>(0) == c.id) {
            let (n, some) = (r.get::<_, i64>(2) as u64, r.get::<_, Vec<String>>(3));
            match r.get::<_, &str>(1) {
                "node" => (fleet.node_count, c.nodes) = (n, some),
                "namespace" => (fleet.namespace_count, fleet.namespaces) = (n, some),
                "workload" => (fleet.workload_count, fleet.workloads) = (n, some),
                _ => {}
            }
        }
        c.fleet = Some(fleet);
    }
    builds(client, clusters, names).await?;
    let (first, _) = Timeline::hours(24, 1, now);
    let hours = client
        .query(
            "SELECT cluster, hour, SUM(count)::BIGINT FROM cluster_hours
             WHERE cluster = ANY($1) AND hour >= $2 GROUP BY cluster, hour",
            &[&ids, &(first as i64)],
        )
        .await?;
    let window = now.saturating_sub(f.loop_window_ns) as i64;
    // A loop needs --loop-count crashes in the window: each cluster's index range is read
    // that far and no further (a fleet-wide loop has thousands in its window; fleet-sim saw
    // the page slow down with them before).
    let recent = client
        .query(
            "SELECT c.cluster, (SELECT COUNT(*) FROM (SELECT 1 FROM reports r
                 WHERE r.cluster = c.cluster AND r.time_ns >= $2 LIMIT $3) x)
             FROM unnest($1::bigint[]) AS c (cluster)",
            &[&ids, &window, &(f.loop_count.max(1) as i64)],
        )
        .await?;
    for c in clusters.iter_mut() {
        let mine = hours
            .iter()
            .filter(|r| r.get::<_, i64>(0) == c.id)
            .map(|r| (r.get::<_, i64>(1) as u64, r.get::<_, i64>(2) as u64));
        c.last_24h = Some(Timeline::of(mine, 24, 1, now));
        c.looping = f.loop_count > 0
            && recent
                .iter()
                .find(|r| r.get::<_, i64>(0) == c.id)
                .is_some_and(|r| r.get::<_, i64>(1) >= f.loop_count as i64);
    }
    Ok(())
}

/// Each cluster's images and builds: how many, a few by name, and its `names` most recently
/// hit (revision, image) pairs.
async fn builds(
    client: &tokio_postgres::Client,
    clusters: &mut [ClusterRow],
    names: i32,
) -> Result<()> {
    let ids: Vec<i64> = clusters.iter().map(|c| c.id).collect();
    let counts = client
        .query(
            "SELECT cluster, COUNT(DISTINCT image) FILTER (WHERE image <> ''),
                 COUNT(DISTINCT revision) FILTER (WHERE revision <> ''),
                 (ARRAY_AGG(DISTINCT image ORDER BY image) FILTER (WHERE image <> ''))[1:$2]
             FROM cluster_builds WHERE cluster = ANY($1) GROUP BY cluster",
            &[&ids, &names],
        )
        .await?;
    let recent = client
        .query(
            "SELECT cluster, revision, image, count, first_seen_ns, last_seen_ns FROM (
                 SELECT *, ROW_NUMBER() OVER (PARTITION BY cluster
                     ORDER BY last_seen_ns DESC, revision, image) AS n
                 FROM cluster_builds WHERE cluster = ANY($1)) b
             WHERE n <= $2 ORDER BY cluster, n",
            &[&ids, &(names as i64)],
        )
        .await?;
    for c in clusters.iter_mut() {
        let fleet = c.fleet.get_or_insert_with(Fleet::default);
        if let Some(r) = counts.iter().find(|r| r.get::<_, i64>(0) == c.id) {
            fleet.image_count = r.get::<_, i64>(1) as u64;
            fleet.build_count = r.get::<_, i64>(2) as u64;
            fleet.images = r.get::<_, Option<Vec<String>>>(3).unwrap_or_default();
        }
        c.builds = recent
            .iter()
            .filter(|r| r.get::<_, i64>(0) == c.id)
            .map(|r| BuildRow {
                revision: r.get(1),
                image: r.get(2),
                count: r.get::<_, i64>(3) as u64,
                first_seen: clock::rfc3339(r.get::<_, i64>(4) as u64),
                last_seen: clock::rfc3339(r.get::<_, i64>(5) as u64),
                ..BuildRow::default()
            })
            .collect();
        c.revisions.clear();
        for b in c.builds.iter().filter(|b| !b.revision.is_empty()) {
            if !c.revisions.contains(&b.revision) {
                c.revisions.push(b.revision.clone());
            }
        }
    }
    Ok(())
}

/// One cluster with its fleet and 30-day timeline, and a page of its reports.
pub async fn cluster(
    pool: &Pool,
    id: i64,
    f: &Filter,
    before: Option<i64>,
    limit: u32,
) -> Result<Option<ClusterDetail>> {
    let client = pool.get().await?;
    let sql = format!("SELECT {COLUMNS} FROM clusters c WHERE c.id = $1");
    let Some(r) = client.query_opt(&sql, &[&id]).await? else {
        return Ok(None);
    };
    let mut one = [row(&r)];
    facets(&client, &mut one, f, DETAIL_NAMES).await?;
    let [c] = one;
    let now = clock::now_ns();
    let (first, _) = Timeline::hours(30, 24, now);
    let hours = client
        .query(
            "SELECT hour, SUM(count)::BIGINT FROM cluster_hours
             WHERE cluster = $1 AND hour >= $2 GROUP BY hour",
            &[&id, &(first as i64)],
        )
        .await?;
    let timeline = Timeline::of(
        hours
            .iter()
            .map(|r| (r.get::<_, i64>(0) as u64, r.get::<_, i64>(1) as u64)),
        30,
        24,
        now,
    );
    let limit = limit.clamp(1, MAX_PAGE) as i64;
    let rows = client
        .query(
            "SELECT id, time_ns, pid, exe, image, pod, namespace, revision, signal, node
             FROM reports WHERE cluster = $1 AND id < $2 ORDER BY id DESC LIMIT $3",
            &[&id, &before.unwrap_or(i64::MAX), &(limit + 1)],
        )
        .await?;
    let text =
        |r: &tokio_postgres::Row, i: usize| Some(r.get::<_, String>(i)).filter(|s| !s.is_empty());
    let mut reports: Vec<ReportRow> = rows
        .iter()
        .map(|r| ReportRow {
            id: r.get(0),
            time: clock::rfc3339(r.get::<_, i64>(1) as u64),
            pid: Some(r.get(2)),
            exe: text(r, 3),
            container: text(r, 4),
            pod: text(r, 5).map(|p| format!("{}/{p}", r.get::<_, String>(6))),
            revision: text(r, 7),
            signal: text(r, 8),
            node: text(r, 9),
        })
        .collect();
    let next = cut(&mut reports, limit as u32, |r| r.id);
    Ok(Some(ClusterDetail {
        cluster: c,
        timeline_30d: timeline,
        reports,
        next_reports: next,
    }))
}

/// One report: its cluster and its JSON as the agent sent it.
pub async fn report(pool: &Pool, id: i64) -> Result<Option<(i64, String)>> {
    let client = pool.get().await?;
    Ok(client
        .query_opt("SELECT cluster, body FROM reports WHERE id = $1", &[&id])
        .await?
        .map(|r| (r.get(0), r.get(1))))
}

/// Every node, silent ones first, then by name; at most `limit`.
pub async fn nodes(pool: &Pool, limit: u32) -> Result<Vec<NodeRow>> {
    let client = pool.get().await?;
    let now = clock::now_ns();
    let since = (now / HOUR_NS).saturating_sub(23) as i64;
    let rows = client
        .query(
            // The last day's counts in one pass over the hour index, not one per node
            // (fleet-sim: 80 ms at 300 nodes, growing with the table, before).
            "SELECT n.name, n.first_seen_ns, n.heard_ns, n.last_crash_ns, n.inventory,
                 COALESCE(d.crashes, 0)::BIGINT
             FROM nodes n LEFT JOIN (SELECT node, SUM(count) AS crashes FROM cluster_hours
                 WHERE hour >= $1 GROUP BY node) d ON d.node = n.name
             ORDER BY n.heard_ns >= $2, n.name LIMIT $3",
            &[
                &since,
                &((now - SILENT_NS.min(now)) as i64),
                &(limit.clamp(1, 10_000) as i64),
            ],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let heard = r.get::<_, i64>(2) as u64;
            let quiet = now.saturating_sub(heard);
            NodeRow {
                name: r.get(0),
                first_seen: clock::rfc3339(r.get::<_, i64>(1) as u64),
                heard: clock::rfc3339(heard),
                silent: quiet >= SILENT_NS,
                silent_secs: quiet / 1_000_000_000,
                last_crash: r.get::<_, Option<i64>>(3).map(|t| clock::rfc3339(t as u64)),
                crashes_24h: r.get::<_, i64>(5) as u64,
                inventory: serde_json::from_str(r.get::<_, &str>(4))
                    .unwrap_or(serde_json::Value::Null),
            }
        })
        .collect())
}

/// Workloads, then nodes, with at least `f.loop_count` crashes within `f.loop_window_ns`
/// (to the minute: the window starts at the start of its first minute); most crashes first,
/// at most [`MAX_PAGE`] of each. Read from the per-minute counts (`crash_minutes`): a window's
/// rows are its minutes times what crashed in each, not every report in it (fleet-sim: the
/// nodes page at 861 ms p95 under 800 reports/s when this grouped the reports).
pub async fn loops(pool: &Pool, f: &Filter) -> Result<Vec<LoopRow>> {
    if f.loop_count == 0 {
        return Ok(Vec::new());
    }
    let client = pool.get().await?;
    let since = (clock::now_ns().saturating_sub(f.loop_window_ns) / MINUTE_NS) as i64;
    let mut out = Vec::new();
    for (scope, by, name, namespace) in [
        ("workload", "namespace, workload", "workload", "namespace"),
        ("node", "node", "node", "''"),
    ] {
        let sql = format!(
            "SELECT {name}, {namespace}, SUM(count)::BIGINT, COUNT(DISTINCT cluster),
                 COUNT(DISTINCT node)
             FROM crash_minutes WHERE minute >= $1 AND {name} <> ''
             GROUP BY {by} HAVING SUM(count)::BIGINT >= $2 ORDER BY 3 DESC, 1 LIMIT $3"
        );
        let rows = client
            .query(&sql, &[&since, &(f.loop_count as i64), &(MAX_PAGE as i64)])
            .await?;
        out.extend(rows.iter().map(|r| LoopRow {
            scope,
            name: r.get(0),
            namespace: r.get(1),
            crashes: r.get::<_, i64>(2) as u64,
            clusters: r.get::<_, i64>(3) as u64,
            nodes: r.get::<_, i64>(4) as u64,
        }));
    }
    Ok(out)
}

/// The hub's history: the fleet's database.
pub struct PgHistory(pub Pool);

fn failed(e: anyhow::Error) -> Failed {
    tracing::warn!("reading the database failed: {e:#}");
    Failed::Error(format!("{e:#}"))
}

impl History for PgHistory {
    fn list(&self, f: Filter, before: Option<Cursor>) -> Answer<'_, Listing> {
        Box::pin(async move { list(&self.0, &f, before).await.map_err(failed) })
    }

    fn detail(
        &self,
        id: i64,
        f: Filter,
        before: Option<i64>,
        limit: u32,
    ) -> Answer<'_, Option<ClusterDetail>> {
        Box::pin(async move {
            cluster(&self.0, id, &f, before, limit)
                .await
                .map_err(failed)
        })
    }

    fn report(&self, id: i64) -> Answer<'_, Option<(i64, String)>> {
        Box::pin(async move { report(&self.0, id).await.map_err(failed) })
    }

    fn latest(&self, cluster: i64) -> Answer<'_, Option<i64>> {
        Box::pin(async move {
            let get = async {
                let client = self.0.get().await?;
                let row = client
                    .query_opt(
                        "SELECT id FROM reports WHERE cluster = $1 ORDER BY id DESC LIMIT 1",
                        &[&cluster],
                    )
                    .await?;
                anyhow::Ok(row.map(|r| r.get(0)))
            };
            get.await.map_err(failed)
        })
    }

    fn nodes(&self) -> Answer<'_, Option<Vec<NodeRow>>> {
        Box::pin(async move { nodes(&self.0, 10_000).await.map(Some).map_err(failed) })
    }

    fn loops(&self, f: Filter) -> Answer<'_, Option<Vec<LoopRow>>> {
        Box::pin(async move { loops(&self.0, &f).await.map(Some).map_err(failed) })
    }
}
