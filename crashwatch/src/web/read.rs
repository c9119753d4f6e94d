//! Web: where the page reads from ([`History`]: this node's crash history, or the hub's
//! database), and the node's reads of its crash history, on one read-only connection of their own
//! (WAL: the agent's writer is never blocked). Reads take turns on it; at most [`WAITING`]
//! requests wait for their turn, beyond that a request is answered 503 at once: however
//! many requests come, the agent does one read at a time, each bounded by its page.
use std::{path::PathBuf, sync::Arc};

use tokio::sync::{Mutex, Semaphore};

use super::api::ClusterDetail;
use crate::outputs::store::{Cursor, Filter, Listing, Store};

/// Requests that may wait for the connection.
const WAITING: usize = 32;

pub struct Reader {
    /// None: the agent keeps no history (`--no-store`, or it could not open one), said here.
    dir: Result<PathBuf, String>,
    conn: Arc<Mutex<Option<Store>>>,
    turns: Semaphore,
}

/// Why a read gave no answer.
pub enum Failed {
    /// No history to read: the page says this.
    NoHistory(String),
    Busy,
    Error(String),
}

impl Reader {
    pub fn new(dir: Result<PathBuf, String>) -> Reader {
        Reader {
            dir,
            conn: Arc::new(Mutex::new(None)),
            turns: Semaphore::new(WAITING),
        }
    }

    pub async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> anyhow::Result<T> + Send + 'static,
    ) -> Result<T, Failed> {
        let dir = self.dir.clone().map_err(Failed::NoHistory)?;
        let _turn = self.turns.try_acquire().map_err(|_| Failed::Busy)?;
        let mut conn = self.conn.clone().lock_owned().await;
        tokio::task::spawn_blocking(move || {
            if conn.is_none() {
                *conn = Some(Store::open_read(&dir).map_err(|e| format!("{e:#}"))?);
            }
            let store = conn.as_ref().expect("opened above");
            match f(store) {
                Ok(v) => Ok(v),
                Err(e) => {
                    // A connection that failed may be what is wrong: the next read opens anew.
                    *conn = None;
                    Err(format!("{e:#}"))
                }
            }
        })
        .await
        .map_err(|e| Failed::Error(format!("the read stopped: {e}")))?
        .map_err(Failed::Error)
    }
}

/// What a read answers.
pub type Answer<'a, T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, Failed>> + Send + 'a>>;

/// Where the page and the API read crashes from: this node's history ([`Reader`]), or the
/// fleet's database on the hub. Every answer is one bounded page.
pub trait History: Send + Sync + 'static {
    /// A page of clusters, most recent activity first, from `before` on.
    fn list(&self, f: Filter, before: Option<Cursor>) -> Answer<'_, Listing>;
    /// A cluster with its timelines and a page of its reports; None: no such cluster.
    fn detail(
        &self,
        id: i64,
        f: Filter,
        before: Option<i64>,
        limit: u32,
    ) -> Answer<'_, Option<ClusterDetail>>;
    /// Report `id`: its cluster and its JSON.
    fn report(&self, id: i64) -> Answer<'_, Option<(i64, String)>>;
    /// The id of the cluster's latest report kept.
    fn latest(&self, cluster: i64) -> Answer<'_, Option<i64>>;
    /// The nodes (the hub's); None: a node's page has no such list.
    fn nodes(&self) -> Answer<'_, Option<Vec<NodeRow>>> {
        Box::pin(async { Ok(None) })
    }
    /// The workloads and nodes in a crash loop now (`f`'s loop count within its window;
    /// the hub's); None: a node's page has no such list.
    fn loops(&self, f: Filter) -> Answer<'_, Option<Vec<LoopRow>>> {
        let _ = f;
        Box::pin(async { Ok(None) })
    }
}

/// A workload or a node crashing in a loop across the fleet (the hub's nodes page).
#[derive(Debug, serde::Serialize)]
pub struct LoopRow {
    /// "workload" or "node".
    pub scope: &'static str,
    /// The workload's or the node's name.
    pub name: String,
    /// The workload's namespace (empty for a node).
    pub namespace: String,
    /// Its crashes within the loop window, in how many clusters, on how many nodes.
    pub crashes: u64,
    pub clusters: u64,
    pub nodes: u64,
}

/// A node as the hub's nodes page shows it.
#[derive(Debug, serde::Serialize)]
pub struct NodeRow {
    pub name: String,
    pub first_seen: String,
    /// Its last report or heartbeat.
    pub heard: String,
    /// Not heard from for three heartbeats: its agent is down or cut off, which is not
    /// "no crashes".
    pub silent: bool,
    pub silent_secs: u64,
    pub last_crash: Option<String>,
    pub crashes_24h: u64,
    /// Its last heartbeat's inventory (agent version, kernel, losses, spool).
    pub inventory: serde_json::Value,
}

impl History for Reader {
    fn list(&self, f: Filter, before: Option<Cursor>) -> Answer<'_, Listing> {
        Box::pin(self.read(move |s| s.list_page(&f, before, crate::model::clock::now_ns())))
    }

    fn detail(
        &self,
        id: i64,
        f: Filter,
        before: Option<i64>,
        limit: u32,
    ) -> Answer<'_, Option<ClusterDetail>> {
        Box::pin(self.read(move |s| {
            let now = crate::model::clock::now_ns();
            let Some(cluster) = s.cluster_row(id, &f, now)? else {
                return Ok(None);
            };
            let limit = limit.clamp(1, crate::outputs::store::page::MAX_PAGE);
            let mut reports = s.reports_of(id, before, limit + 1)?;
            let next_reports = crate::outputs::store::page::cut(&mut reports, limit, |r| r.id);
            Ok(Some(ClusterDetail {
                cluster,
                timeline_30d: s.timeline(id, 30, 24, now)?,
                reports,
                next_reports,
            }))
        }))
    }

    fn report(&self, id: i64) -> Answer<'_, Option<(i64, String)>> {
        Box::pin(self.read(move |s| s.report(id)))
    }

    fn latest(&self, cluster: i64) -> Answer<'_, Option<i64>> {
        Box::pin(self.read(move |s| s.latest_report(cluster)))
    }
}
