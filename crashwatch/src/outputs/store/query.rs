//! What `crashwatch report` asks of the store: the clusters, most recent activity first, with
//! what they hit; one cluster with its latest reports. Each answer is bounded by what was
//! asked for (a page of clusters, a few names per cluster, N reports).
use anyhow::Result;
use rusqlite::{params, OptionalExtension};
use serde::Serialize;

use super::Store;

/// Names shown per cluster for each of binaries, containers, pods, nodes and revisions.
const NAMES: i64 = 5;

#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Clusters with a crash at or after this Unix time (ns).
    pub since_ns: Option<u64>,
    pub kind: Option<String>,
    pub namespace: Option<String>,
    /// The hub's facets: a cluster with a crash on this node, in this workload (a node's
    /// store has neither: the web refuses them there).
    pub node: Option<String>,
    pub workload: Option<String>,
    /// The hub's too: a cluster with a crash in this container image, in this build
    /// (revision: Go's `vcs.revision` or the binary's GNU build id).
    pub image: Option<String>,
    pub build: Option<String>,
    /// Words a cluster's kind, headline, top frame, fingerprint or a binary holds (the
    /// crash page's search; [`Store::list_page`] only).
    pub text: Option<String>,
    /// Clusters listed at most.
    pub limit: u32,
    /// A loop: this many crashes within `loop_window_ns`.
    pub loop_count: u32,
    pub loop_window_ns: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ClusterRow {
    pub id: i64,
    pub fingerprint: String,
    pub kind: String,
    pub headline: String,
    pub top_frame: String,
    pub count: u64,
    pub first_seen: String,
    pub last_seen: String,
    #[serde(skip)]
    pub first_seen_ns: u64,
    #[serde(skip)]
    pub last_seen_ns: u64,
    #[serde(rename = "loop")]
    pub looping: bool,
    pub binaries: Vec<String>,
    pub containers: Vec<String>,
    pub pods: Vec<String>,
    pub nodes: Vec<String>,
    pub revisions: Vec<String>,
    /// The builds it hit, most recently hit first (at most a few).
    pub builds: Vec<BuildRow>,
    /// The build whose arrival it followed (`cluster.regression.revision` in its first
    /// report), if any.
    pub regression: Option<String>,
    /// Crashes per hour over the last 24 hours (the crash page's listing).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_24h: Option<super::Timeline>,
    /// The hub's only: the fleet this cluster hit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fleet: Option<Fleet>,
}

/// What a cluster hit across the fleet (the hub's listing; a node's store has one node).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Fleet {
    /// Nodes, namespaces and workloads with a crash of it.
    pub node_count: u64,
    pub namespace_count: u64,
    pub workload_count: u64,
    /// Container images and builds (revisions) with a crash of it.
    pub image_count: u64,
    pub build_count: u64,
    /// A few of each, by name (on a cluster's own page, up to 50).
    pub namespaces: Vec<String>,
    pub workloads: Vec<String>,
    pub images: Vec<String>,
}

/// One build a cluster hit: revision (Go `vcs.revision` or GNU build id), Go module version,
/// container image; each empty when unknown.
#[derive(Clone, Debug, Default, Serialize)]
pub struct BuildRow {
    pub revision: String,
    pub version: String,
    pub image: String,
    pub count: u64,
    pub first_seen: String,
    pub last_seen: String,
}

/// Column `i`, Unix ns, as RFC 3339.
fn when(r: &rusqlite::Row, i: usize) -> rusqlite::Result<String> {
    Ok(crate::model::clock::rfc3339(r.get::<_, i64>(i)? as u64))
}

/// A `clusters` row, its columns selected in table order.
pub(super) fn row(r: &rusqlite::Row) -> rusqlite::Result<ClusterRow> {
    Ok(ClusterRow {
        id: r.get(0)?,
        fingerprint: r.get(1)?,
        kind: r.get(2)?,
        headline: r.get(3)?,
        top_frame: r.get(4)?,
        count: r.get::<_, i64>(5)? as u64,
        first_seen: when(r, 6)?,
        last_seen: when(r, 7)?,
        first_seen_ns: r.get::<_, i64>(6)? as u64,
        last_seen_ns: r.get::<_, i64>(7)? as u64,
        regression: r.get(8)?,
        ..ClusterRow::default()
    })
}

impl Store {
    pub fn list(&self, f: &Filter) -> Result<Vec<ClusterRow>> {
        let mut st = self.conn.prepare(select_cluster!(
            "FROM clusters c
             WHERE last_seen >= ?1
               AND (?2 IS NULL OR kind = ?2)
               AND (?3 IS NULL OR EXISTS (
                   SELECT 1 FROM reports r WHERE r.cluster = c.id AND r.namespace = ?3))
             ORDER BY last_seen DESC LIMIT ?4"
        ))?;
        let rows = st.query_map(
            params![f.since_ns.unwrap_or(0) as i64, f.kind, f.namespace, f.limit],
            row,
        )?;
        let mut out = rows.collect::<rusqlite::Result<Vec<_>>>()?;
        for c in &mut out {
            self.fill(c, f)?;
        }
        Ok(out)
    }

    /// What the cluster hit, and whether it is looping now.
    pub(super) fn fill(&self, c: &mut ClusterRow, f: &Filter) -> Result<()> {
        let names = |col: &str| -> Result<Vec<String>> {
            let mut st = self.conn.prepare_cached(&format!(
                "SELECT DISTINCT {col} FROM reports WHERE cluster = ?1 AND {col} IS NOT NULL
                 ORDER BY {col} LIMIT ?2"
            ))?;
            let v = st.query_map(params![c.id, NAMES], |r| r.get::<_, String>(0))?;
            Ok(v.collect::<rusqlite::Result<_>>()?)
        };
        c.binaries = names("exe")?;
        c.containers = names("container")?;
        c.pods = {
            let mut st = self.conn.prepare_cached(
                "SELECT DISTINCT namespace || '/' || pod FROM reports
                 WHERE cluster = ?1 AND pod IS NOT NULL LIMIT ?2",
            )?;
            let v = st.query_map(params![c.id, NAMES], |r| r.get::<_, String>(0))?;
            v.collect::<rusqlite::Result<_>>()?
        };
        c.nodes = names("node")?;
        c.revisions = names("revision")?;
        let mut st = self.conn.prepare_cached(
            "SELECT revision, version, image, count, first_seen, last_seen FROM cluster_builds
             WHERE cluster = ?1 ORDER BY last_seen DESC LIMIT ?2",
        )?;
        c.builds = st
            .query_map(params![c.id, NAMES], |r| {
                Ok(BuildRow {
                    revision: r.get(0)?,
                    version: r.get(1)?,
                    image: r.get(2)?,
                    count: r.get::<_, i64>(3)? as u64,
                    first_seen: when(r, 4)?,
                    last_seen: when(r, 5)?,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        let since = crate::model::clock::now_ns().saturating_sub(f.loop_window_ns);
        let recent: i64 = self.conn.query_row(
            "SELECT COUNT(*) FROM (SELECT 1 FROM reports WHERE cluster = ?1 AND time >= ?2 LIMIT ?3)",
            params![c.id, since as i64, f.loop_count],
            |r| r.get(0),
        )?;
        c.looping = f.loop_count > 0 && recent >= f.loop_count as i64;
        Ok(())
    }

    /// One cluster with what it hit; None: no such cluster.
    pub(super) fn cluster_by_id(&self, id: i64, f: &Filter) -> Result<Option<ClusterRow>> {
        let r = self
            .conn
            .query_row(
                select_cluster!("FROM clusters WHERE id = ?1"),
                params![id],
                row,
            )
            .optional()?;
        let Some(mut r) = r else { return Ok(None) };
        self.fill(&mut r, f)?;
        Ok(Some(r))
    }

    /// One cluster and its latest `reports` reports (their JSON), newest first.
    pub fn cluster(
        &self,
        id: i64,
        reports: u32,
        f: &Filter,
    ) -> Result<Option<(ClusterRow, Vec<String>)>> {
        let Some(row) = self.cluster_by_id(id, f)? else {
            return Ok(None);
        };
        let mut st = self
            .conn
            .prepare("SELECT json FROM reports WHERE cluster = ?1 ORDER BY id DESC LIMIT ?2")?;
        let json = st
            .query_map(params![id, reports], |r| r.get::<_, String>(0))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(Some((row, json)))
    }
}
