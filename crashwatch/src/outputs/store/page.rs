//! What the crash page and its API (`web`) read, each answer bounded by the page asked for,
//! never by the size of the history: a page of clusters found by walking at most [`SCAN`]
//! clusters in order of last activity (the listing says where it stopped, so a search goes
//! on page by page); a cluster's timeline from `cluster_hours`, crash counts per hour kept
//! exactly whatever the report retention thinned; a page of a cluster's reports; one report.
use anyhow::Result;
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

use super::{query::row, ClusterRow, Filter, Store};

/// `cluster_hours`: crashes per cluster and hour, the timelines; report retention does not
/// touch it, hours past [`HOURS_KEPT`] go. `cluster_exes`: the binaries each cluster hit
/// (at most [`EXES`]), what a search by binary reads instead of every kept report.
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS cluster_hours (
    cluster INTEGER NOT NULL,
    hour INTEGER NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (cluster, hour)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS cluster_exes (
    cluster INTEGER NOT NULL,
    exe TEXT NOT NULL,
    PRIMARY KEY (cluster, exe)
) WITHOUT ROWID;
";

/// Binaries remembered per cluster (`go test` makes a new one per run).
const EXES: i64 = 50;

pub const HOUR_NS: u64 = 3_600_000_000_000;
/// Hours of counts kept: the 30-day timeline and a day to spare.
pub const HOURS_KEPT: u64 = 31 * 24;
/// Clusters one listing walks at most, matching or not: what a filtered page costs.
pub const SCAN: u32 = 5_000;
/// Clusters, or reports, on one page at most.
pub const MAX_PAGE: u32 = 200;

/// Counts a crash of `cluster` at `t_ns` by `exe`.
pub(super) fn record(tx: &Connection, cluster: i64, t_ns: u64, exe: Option<&str>) -> Result<()> {
    tx.prepare_cached(
        "INSERT INTO cluster_hours VALUES (?1, ?2, 1)
         ON CONFLICT DO UPDATE SET count = count + 1",
    )?
    .execute(params![cluster, (t_ns / HOUR_NS) as i64])?;
    if let Some(exe) = exe {
        tx.prepare_cached(
            "INSERT OR IGNORE INTO cluster_exes SELECT ?1, ?2
             WHERE (SELECT COUNT(*) FROM cluster_exes WHERE cluster = ?1) < ?3",
        )?
        .execute(params![cluster, exe, EXES])?;
    }
    Ok(())
}

pub(super) fn prune_hours(conn: &Connection, now_ns: u64) -> Result<()> {
    let oldest = (now_ns / HOUR_NS).saturating_sub(HOURS_KEPT);
    conn.execute(
        "DELETE FROM cluster_hours WHERE hour < ?1",
        params![oldest as i64],
    )?;
    Ok(())
}

/// A database from before version 3: the kept reports are all there is to go by.
pub(super) fn backfill(conn: &Connection) -> Result<()> {
    conn.execute(
        "INSERT OR IGNORE INTO cluster_hours
         SELECT cluster, time / ?1, COUNT(*) FROM reports GROUP BY 1, 2",
        params![HOUR_NS as i64],
    )?;
    conn.execute(
        "INSERT OR IGNORE INTO cluster_exes
         SELECT cluster, exe FROM reports WHERE exe IS NOT NULL GROUP BY 1, 2",
        [],
    )?;
    Ok(())
}

/// Where a listing goes on: the last cluster it showed or walked past, in (last activity,
/// id) order. Written `LASTSEEN.ID` in URLs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cursor {
    pub last_seen_ns: i64,
    pub id: i64,
}

impl Cursor {
    pub fn parse(s: &str) -> Option<Cursor> {
        let (t, id) = s.split_once('.')?;
        Some(Cursor {
            last_seen_ns: t.parse().ok()?,
            id: id.parse().ok()?,
        })
    }
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "{}.{}", self.last_seen_ns, self.id)
    }
}

/// One page of clusters.
#[derive(Debug, Serialize)]
pub struct Listing {
    pub clusters: Vec<ClusterRow>,
    /// Where the next page starts; None: nothing older.
    #[serde(serialize_with = "cursor_text")]
    pub next: Option<Cursor>,
    /// The walk stopped at [`SCAN`] clusters before the page was full: older clusters were
    /// not searched yet (`next` goes on from there).
    pub partial: bool,
}

fn cursor_text<S: serde::Serializer>(c: &Option<Cursor>, s: S) -> Result<S::Ok, S::Error> {
    match c {
        Some(c) => s.serialize_str(&c.to_string()),
        None => s.serialize_none(),
    }
}

/// Crash counts in equal buckets ending with the current one, oldest first.
#[derive(Clone, Debug, Serialize)]
pub struct Timeline {
    /// The first bucket's start, RFC 3339.
    pub start: String,
    /// The same, in seconds since the epoch.
    pub start_unix: u64,
    pub bucket_secs: u64,
    pub counts: Vec<u64>,
}

/// Cuts `rows`, fetched with one more than `limit`, to `limit`; the key of the last row kept
/// when there were more (where the next page starts), else None.
pub fn cut<T, K>(rows: &mut Vec<T>, limit: u32, key: impl Fn(&T) -> K) -> Option<K> {
    if rows.len() <= limit as usize {
        return None;
    }
    rows.truncate(limit as usize);
    rows.last().map(key)
}

impl Timeline {
    /// The first and the last hour (hours since the epoch) of `buckets` buckets of
    /// `bucket_hours` ending with the current one.
    pub fn hours(buckets: u32, bucket_hours: u32, now_ns: u64) -> (u64, u64) {
        let (n, width) = (buckets.max(1) as u64, bucket_hours.max(1) as u64);
        let now_hour = now_ns / HOUR_NS;
        ((now_hour + 1).saturating_sub(n * width), now_hour)
    }

    /// The timeline of `(hour, count)` rows within [`Timeline::hours`] (others are left out).
    pub fn of(
        rows: impl IntoIterator<Item = (u64, u64)>,
        buckets: u32,
        bucket_hours: u32,
        now_ns: u64,
    ) -> Timeline {
        let (first, last) = Timeline::hours(buckets, bucket_hours, now_ns);
        let width = bucket_hours.max(1) as u64;
        let mut counts = vec![0u64; buckets.max(1) as usize];
        for (hour, count) in rows {
            if (first..=last).contains(&hour) {
                counts[((hour - first) / width) as usize] += count;
            }
        }
        Timeline {
            start: crate::model::clock::rfc3339(first * HOUR_NS),
            start_unix: first * 3600,
            bucket_secs: width * 3600,
            counts,
        }
    }
}

/// A report in a cluster's list of reports.
#[derive(Clone, Debug, Serialize)]
pub struct ReportRow {
    pub id: i64,
    pub time: String,
    pub pid: Option<i64>,
    pub exe: Option<String>,
    pub container: Option<String>,
    pub pod: Option<String>,
    pub revision: Option<String>,
    /// The fatal signal's name, when one killed it.
    pub signal: Option<String>,
    /// The hub's only: the node it crashed on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

impl Store {
    /// Clusters, most recent activity first, from `before` on: at most `f.limit` (capped at
    /// [`MAX_PAGE`]) of those matching `f`, among the next [`SCAN`] clusters. `f.text`
    /// matches the kind, headline, top frame, fingerprint or a crashed binary's path, ASCII
    /// case-insensitively.
    pub fn list_page(&self, f: &Filter, before: Option<Cursor>, now_ns: u64) -> Result<Listing> {
        let limit = f.limit.clamp(1, MAX_PAGE);
        let (b_t, b_id) = before.map_or((i64::MAX, i64::MAX), |c| (c.last_seen_ns, c.id));
        let text = f
            .text
            .as_deref()
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_ascii_lowercase);
        let mut st = self.conn.prepare_cached(
            select_cluster!(
                "FROM (SELECT * FROM clusters
                   WHERE (last_seen, id) < (?1, ?2) AND last_seen >= ?3
                   ORDER BY last_seen DESC, id DESC LIMIT ?4) c
             WHERE (?5 IS NULL OR kind = ?5)
               AND (?6 IS NULL OR EXISTS (
                   SELECT 1 FROM reports r WHERE r.cluster = c.id AND r.namespace = ?6))
               AND (?7 IS NULL
                    OR instr(lower(kind || ' ' || headline || ' ' || top_frame || ' ' || fingerprint), ?7)
                    OR EXISTS (SELECT 1 FROM cluster_exes e
                               WHERE e.cluster = c.id AND instr(lower(e.exe), ?7)))
             ORDER BY last_seen DESC, id DESC LIMIT ?8"
            ),
        )?;
        let rows = st.query_map(
            params![
                b_t,
                b_id,
                f.since_ns.unwrap_or(0) as i64,
                SCAN,
                f.kind,
                f.namespace,
                text,
                limit + 1
            ],
            row,
        )?;
        let mut clusters = rows.collect::<rusqlite::Result<Vec<_>>>()?;
        let (next, partial) = if clusters.len() > limit as usize {
            clusters.truncate(limit as usize);
            let last = clusters.last().expect("a full page");
            (Some(cursor_of(&self.conn, last.id)?), false)
        } else {
            // The page is not full: either the walk reached the oldest cluster, or it
            // stopped at SCAN and older clusters wait for the next page.
            let walked: Option<(i64, i64)> = self
                .conn
                .query_row(
                    "SELECT last_seen, id FROM clusters
                     WHERE (last_seen, id) < (?1, ?2) AND last_seen >= ?3
                     ORDER BY last_seen DESC, id DESC LIMIT 1 OFFSET ?4",
                    params![b_t, b_id, f.since_ns.unwrap_or(0) as i64, SCAN - 1],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            match walked {
                Some((t, id)) => (
                    Some(Cursor {
                        last_seen_ns: t,
                        id,
                    }),
                    true,
                ),
                None => (None, false),
            }
        };
        for c in &mut clusters {
            self.fill(c, f)?;
            c.last_24h = Some(self.timeline(c.id, 24, 1, now_ns)?);
        }
        Ok(Listing {
            clusters,
            next,
            partial,
        })
    }

    /// One cluster as the listing shows it, with its last 24 hours; None: no such cluster.
    pub fn cluster_row(&self, id: i64, f: &Filter, now_ns: u64) -> Result<Option<ClusterRow>> {
        let Some(mut r) = self.cluster_by_id(id, f)? else {
            return Ok(None);
        };
        r.last_24h = Some(self.timeline(id, 24, 1, now_ns)?);
        Ok(Some(r))
    }

    /// `buckets` buckets of `bucket_hours` hours each, the last holding the current hour.
    pub fn timeline(
        &self,
        cluster: i64,
        buckets: u32,
        bucket_hours: u32,
        now_ns: u64,
    ) -> Result<Timeline> {
        let (first, last) = Timeline::hours(buckets, bucket_hours, now_ns);
        let mut st = self.conn.prepare_cached(
            "SELECT hour, count FROM cluster_hours WHERE cluster = ?1 AND hour >= ?2 AND hour <= ?3",
        )?;
        let rows = st
            .query_map(params![cluster, first as i64, last as i64], |r| {
                Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(Timeline::of(rows, buckets, bucket_hours, now_ns))
    }

    /// A page of the cluster's kept reports, newest first, older than report `before`.
    pub fn reports_of(
        &self,
        cluster: i64,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<ReportRow>> {
        let mut st = self.conn.prepare_cached(
            "SELECT id, time,
                    CASE WHEN json_valid(json) THEN json_extract(json, '$.pid') END,
                    exe, container, CASE WHEN pod IS NOT NULL THEN namespace || '/' || pod END,
                    revision,
                    CASE WHEN json_valid(json) THEN json_extract(json, '$.signal.name') END
             FROM reports WHERE cluster = ?1 AND id < ?2 ORDER BY id DESC LIMIT ?3",
        )?;
        let rows = st.query_map(
            params![
                cluster,
                before.unwrap_or(i64::MAX),
                limit.clamp(1, MAX_PAGE)
            ],
            |r| {
                Ok(ReportRow {
                    id: r.get(0)?,
                    time: crate::model::clock::rfc3339(r.get::<_, i64>(1)? as u64),
                    pid: r.get(2).ok().flatten(),
                    exe: r.get(3)?,
                    container: r.get(4)?,
                    pod: r.get(5)?,
                    revision: r.get(6)?,
                    signal: r.get(7).ok().flatten(),
                    node: None,
                })
            },
        )?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// One report: its cluster and its JSON as stored.
    pub fn report(&self, id: i64) -> Result<Option<(i64, String)>> {
        Ok(self
            .conn
            .query_row(
                "SELECT cluster, json FROM reports WHERE id = ?1",
                params![id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?)
    }

    /// The cluster's newest kept report's id.
    pub fn latest_report(&self, cluster: i64) -> Result<Option<i64>> {
        Ok(self
            .conn
            .query_row(
                "SELECT id FROM reports WHERE cluster = ?1 ORDER BY id DESC LIMIT 1",
                params![cluster],
                |r| r.get(0),
            )
            .optional()?)
    }
}

fn cursor_of(conn: &Connection, id: i64) -> Result<Cursor> {
    Ok(conn.query_row(
        "SELECT last_seen, id FROM clusters WHERE id = ?1",
        params![id],
        |r| {
            Ok(Cursor {
                last_seen_ns: r.get(0)?,
                id: r.get(1)?,
            })
        },
    )?)
}
