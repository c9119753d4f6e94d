//! Hub: retention. Reports are kept by count per cluster (the latest), by age and by the
//! reports table's size; the counts go on (`clusters.count`, and `cluster_hours`, the
//! terminations' hourly counts and the clusters' names (`cluster_facets`) kept 31 days
//! whatever the reports' retention did, as on a node). The per-minute counts behind the loop
//! lists (`crash_minutes`) are kept for the loop window and an hour more.
//!
//! One replica at a time does it (a session advisory lock, tried, never waited for), every
//! `--retention-interval`, in batches of [`BATCH`] rows, each its own short transaction: a
//! fleet of millions of reports is thinned without a long lock or a table rewrite, and ingest
//! goes on between batches. Old reports go by the `reports_by_time` index; the excess of a
//! cluster by its `(cluster, id)` index, for the clusters active since the last pass.
use std::time::Duration;

use anyhow::Result;
use deadpool_postgres::Pool;

/// Rows deleted per statement.
pub const BATCH: i64 = 5_000;
/// Clusters whose excess one statement looks for.
const CLUSTERS_PER_BATCH: usize = 100;
/// Hours of counts kept: the 30-day timeline and a day to spare (as on a node).
const HOURS_KEPT: i64 = 31 * 24;
const HOUR_NS: i64 = 3_600_000_000_000;
/// The retention's advisory lock (the migrations' key + 1).
const LOCK: i64 = 0x6372_6173_6877_6175;

#[derive(Clone, Debug)]
pub struct Retention {
    pub keep_per_cluster: u32,
    pub keep_days: u64,
    pub max_bytes: u64,
    pub every: Duration,
    /// Minutes of per-minute counts kept: the loop window's and an hour.
    pub minutes_kept: i64,
}

/// What one pass removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Removed {
    pub by_count: u64,
    pub by_age: u64,
    pub by_size: u64,
}

/// Runs a pass every `r.every`, for the life of the hub.
pub async fn run(pool: Pool, r: Retention) {
    // The newest report id the last pass saw: reports are numbered as they are stored, so
    // clusters that took reports since are those with ids past it (a report's own time says
    // when it crashed: a spooled one arrives hours later, and a cluster it lands in must still
    // be thinned).
    let mut since_id = 0i64;
    loop {
        tokio::time::sleep(r.every).await;
        match pass(&pool, &r, since_id).await {
            Ok(Some((n, seen))) => {
                since_id = seen;
                if n != Removed::default() {
                    tracing::info!(
                        "retention: removed {} reports past {} per cluster, {} older than {} days, {} for size",
                        n.by_count, r.keep_per_cluster, n.by_age, r.keep_days, n.by_size
                    );
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!("retention: {e:#}"),
        }
    }
}

/// One pass over what was stored after report `since_id`, if no other replica is doing one
/// (None: another is); what it removed, and the newest report id it saw at its start.
pub async fn pass(pool: &Pool, r: &Retention, since_id: i64) -> Result<Option<(Removed, i64)>> {
    let client = pool.get().await?;
    let got: bool = client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&LOCK])
        .await?
        .get(0);
    if !got {
        return Ok(None);
    }
    let seen: i64 = client
        .query_one("SELECT COALESCE(MAX(id), 0)::BIGINT FROM reports", &[])
        .await?
        .get(0);
    let done = thin(&client, r, since_id).await;
    client
        .execute("SELECT pg_advisory_unlock($1)", &[&LOCK])
        .await?;
    done.map(|n| Some((n, seen)))
}

/// Deletes with `sql` (its `$1` the batch size, then `params`) until a batch comes back short.
async fn in_batches(
    client: &tokio_postgres::Client,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<u64> {
    let mut all: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![&BATCH];
    all.extend_from_slice(params);
    let mut removed = 0;
    loop {
        let n = client.execute(sql, &all).await?;
        removed += n;
        if n < BATCH as u64 {
            return Ok(removed);
        }
    }
}

async fn thin(client: &tokio_postgres::Client, r: &Retention, since_id: i64) -> Result<Removed> {
    let now = crate::model::clock::now_ns() as i64;
    let keep = r.keep_per_cluster as i64;
    // The clusters that took reports since the last pass (reports past `since_id`, read from
    // the primary key's newest end) are the only ones that can be over, and only those that
    // ever had more than `keep`. Each is walked once down its (cluster, id) index past its
    // newest `keep`, CLUSTERS_PER_BATCH at a time: a window over every active cluster's
    // reports (the first way) sorted them all again for each batch.
    let over: Vec<i64> = client
        .query(
            "SELECT c.id FROM clusters c WHERE c.count > $2
                 AND c.id IN (SELECT DISTINCT cluster FROM reports WHERE id > $1)
             ORDER BY c.id",
            &[&since_id, &keep],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut by_count = 0;
    for chunk in over.chunks(CLUSTERS_PER_BATCH) {
        by_count += in_batches(
            client,
            "DELETE FROM reports WHERE id IN (
                 SELECT x.id FROM unnest($2::BIGINT[]) AS k (cluster)
                 CROSS JOIN LATERAL (SELECT id FROM reports WHERE cluster = k.cluster
                     ORDER BY id DESC OFFSET $3) x
                 LIMIT $1)",
            &[&chunk, &keep],
        )
        .await?;
    }
    let oldest = now - (r.keep_days.min(100_000) as i64) * 24 * HOUR_NS;
    let by_age = in_batches(
        client,
        "DELETE FROM reports WHERE id IN (
             SELECT id FROM reports WHERE time_ns < $2 ORDER BY time_ns LIMIT $1)",
        &[&oldest],
    )
    .await?;
    // Size: the live rows' bytes, estimated from the planner's row count and the newest
    // rows' mean size (deleted rows' space is reused by new ones, not given back to the disk:
    // the bound is on what is kept, not on the file).
    let row = client
        .query_one(
            "SELECT (SELECT reltuples::BIGINT FROM pg_class WHERE relname = 'reports'),
                 COALESCE((SELECT AVG(pg_column_size(r.*)) FROM
                     (SELECT * FROM reports ORDER BY id DESC LIMIT 1000) r), 0)::FLOAT8",
            &[],
        )
        .await?;
    let (estimate, mean): (i64, f64) = (row.get(0), row.get(1));
    let count = if estimate >= 0 {
        // The planner's count is as of the last ANALYZE: this pass's own deletions are not
        // in it yet (taking it as is deleted millions more "for size" at 10 M rows).
        (estimate - (by_count + by_age) as i64).max(0)
    } else {
        // Never analyzed yet: count.
        client
            .query_one("SELECT COUNT(*) FROM reports", &[])
            .await?
            .get(0)
    };
    let fit = (r.max_bytes as f64 / mean.max(1.0)) as i64;
    let mut over = count - fit;
    let mut by_size = 0;
    while over > 0 {
        let n = client
            .execute(
                "DELETE FROM reports WHERE id IN (
                     SELECT id FROM reports ORDER BY time_ns LIMIT $1)",
                &[&over.min(BATCH)],
            )
            .await?;
        if n == 0 {
            break;
        }
        by_size += n;
        over -= n as i64;
    }
    let oldest = now / HOUR_NS - HOURS_KEPT;
    client
        .execute("DELETE FROM cluster_hours WHERE hour < $1", &[&oldest])
        .await?;
    client
        .execute(
            "DELETE FROM crash_minutes WHERE minute < $1",
            &[&(now / super::read::MINUTE_NS as i64 - r.minutes_kept)],
        )
        .await?;
    for (table, column) in [("terminations", "hour"), ("cluster_facets", "last_hour")] {
        client
            .execute(
                &format!("DELETE FROM {table} WHERE {column} < $1"),
                &[&oldest],
            )
            .await?;
    }
    Ok(Removed {
        by_count,
        by_age,
        by_size,
    })
}
