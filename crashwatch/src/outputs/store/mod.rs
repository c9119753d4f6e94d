//! Store (an output, read back by the web layer and `crashwatch report`): this node's crash history
//! in SQLite (rusqlite, bundled) under `--state-dir`: clusters and their reports with the full
//! report JSON, kept by count per cluster, by age and by size. The agent writes through [`Writer`],
//! a thread of its own behind a bounded queue, so a slow disk delays no report; `crashwatch report`
//! reads it while the agent runs (WAL).
//!
//! The agent never crash-loops on its own state: a database it cannot open or read is moved
//! aside with one warning and a fresh one started; a directory it cannot write leaves the
//! agent without a history, said at start.

/// A SELECT of a `clusters` row's columns in the order [`query::row`] reads them, then `$rest`
/// (FROM, WHERE, ...): the one list of them.
macro_rules! select_cluster {
    ($rest:literal) => {
        concat!(
            "SELECT id, fingerprint, kind, headline, top_frame, count, first_seen, last_seen, regression ",
            $rest
        )
    };
}

mod dumps;
pub mod page;
mod query;

use std::{
    fs,
    os::unix::fs::{DirBuilderExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc, Arc,
    },
    time::Duration,
};

use anyhow::{Context, Result};
use rusqlite::{params, Connection, OpenFlags};

pub use page::{Cursor, Listing, ReportRow, Timeline};
pub use query::{BuildRow, ClusterRow, Filter, Fleet};

use crate::pipeline::cluster::{
    attribution::{Sighting, MAX_BUILDS},
    Cluster,
};

pub const FILE: &str = "crashwatch.db";
/// Reports waiting for the disk; beyond, a report is not stored (and counted).
const QUEUE: usize = 1024;
/// Reports stored in one transaction at most.
const BATCH: usize = 256;

/// What is kept.
#[derive(Clone, Copy, Debug)]
pub struct Retention {
    /// Reports kept per cluster (the latest).
    pub per_cluster: u32,
    /// Reports older than this are deleted (clusters stay, with their counts).
    pub max_age: Duration,
    /// Past this size, the oldest reports go first.
    pub max_bytes: u64,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS clusters (
    id INTEGER PRIMARY KEY,
    fingerprint TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    headline TEXT NOT NULL,
    top_frame TEXT NOT NULL,
    count INTEGER NOT NULL,
    first_seen INTEGER NOT NULL,
    last_seen INTEGER NOT NULL,
    regression TEXT
);
CREATE TABLE IF NOT EXISTS reports (
    id INTEGER PRIMARY KEY,
    cluster INTEGER NOT NULL REFERENCES clusters(id),
    time INTEGER NOT NULL,
    exe TEXT,
    container TEXT,
    namespace TEXT,
    pod TEXT,
    node TEXT,
    revision TEXT,
    json TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS reports_by_cluster ON reports(cluster, id);
CREATE INDEX IF NOT EXISTS reports_by_time ON reports(time);
CREATE TABLE IF NOT EXISTS cluster_builds (
    cluster INTEGER NOT NULL,
    revision TEXT NOT NULL,
    version TEXT NOT NULL,
    image TEXT NOT NULL,
    count INTEGER NOT NULL,
    first_seen INTEGER NOT NULL,
    last_seen INTEGER NOT NULL,
    PRIMARY KEY (cluster, revision, version, image)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS builds (
    program TEXT NOT NULL,
    revision TEXT NOT NULL,
    first_seen INTEGER NOT NULL,
    PRIMARY KEY (program, revision)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS clusters_by_last ON clusters(last_seen, id);
-- What a listing shows of each cluster, read from the index alone: the reports' rows hold
-- their JSON, and reading them for a name cost a page each.
CREATE INDEX IF NOT EXISTS reports_facts
    ON reports(cluster, time, exe, container, namespace, pod, node, revision);
PRAGMA user_version = 3;
";

/// Builds kept per cluster (the most recently hit).
const BUILDS_PER_CLUSTER: i64 = 50;

pub struct Store {
    conn: Connection,
    /// Where the minidumps and cores its reports name are ([`dumps`]).
    dumps: PathBuf,
}

impl Store {
    /// Opens (or makes) the database for writing: the directory 0700, the file 0600, WAL.
    pub fn open(dir: &Path) -> Result<Store> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("making the state directory {}", dir.display()))?;
        let path = dir.join(FILE);
        match Self::open_rw(&path) {
            Ok(s) => Ok(s),
            Err(e) if path.exists() => {
                let aside = dir.join(format!(
                    "{FILE}.unreadable-{}",
                    crate::model::clock::rfc3339(crate::model::clock::now_ns()).replace(':', "")
                ));
                tracing::warn!(
                    "the crash history {} cannot be used ({e:#}): moved to {} and starting a new one",
                    path.display(),
                    aside.display()
                );
                fs::rename(&path, &aside).context("moving the database aside")?;
                for side in ["-wal", "-shm"] {
                    let _ = fs::remove_file(format!("{}{side}", path.display()));
                }
                Self::open_rw(&path)
            }
            Err(e) => Err(e),
        }
    }

    fn open_rw(path: &Path) -> Result<Store> {
        let conn = Connection::open(path)?;
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        // Reads every table: a damaged file fails here, not at the first crash.
        let check: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
        anyhow::ensure!(check == "ok", "quick_check: {check}");
        let had_hours = Self::has_table(&conn, "cluster_exes")?;
        conn.execute_batch(SCHEMA)?;
        conn.execute_batch(page::SCHEMA)?;
        conn.execute_batch(dumps::SCHEMA)?;
        if !had_hours {
            // Before version 3 the timeline was not counted: what the kept reports say.
            page::backfill(&conn)?;
        }
        // Version 1 had no regression column; CREATE TABLE IF NOT EXISTS left it out.
        let has: i64 = conn.query_row(
            "SELECT COUNT(*) FROM pragma_table_info('clusters') WHERE name = 'regression'",
            [],
            |r| r.get(0),
        )?;
        if has == 0 {
            conn.execute_batch("ALTER TABLE clusters ADD COLUMN regression TEXT")?;
        }
        let dumps = path.with_file_name("dumps");
        Ok(Store { conn, dumps })
    }

    fn has_table(conn: &Connection, name: &str) -> Result<bool> {
        let n: i64 = conn.query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
            params![name],
            |r| r.get(0),
        )?;
        Ok(n > 0)
    }

    /// Opens an existing database read-only (`crashwatch report`).
    pub fn open_read(dir: &Path) -> Result<Store> {
        let path = dir.join(FILE);
        anyhow::ensure!(
            path.exists(),
            "no crash history at {} yet: `crashwatch run --state-dir {}` keeps one",
            path.display(),
            dir.display()
        );
        let conn = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .with_context(|| format!("opening {}", path.display()))?;
        conn.busy_timeout(Duration::from_secs(5))?;
        // The crash page's queries, each prepared once per connection.
        conn.set_prepared_statement_cache_capacity(64);
        Ok(Store {
            conn,
            dumps: dir.join("dumps"),
        })
    }

    /// Every cluster, for the agent's counts at start.
    pub fn clusters(&self) -> Result<Vec<Cluster>> {
        let mut st = self.conn.prepare(select_cluster!("FROM clusters"))?;
        let rows = st.query_map([], |r| {
            let c = query::row(r)?;
            Ok(Cluster {
                id: c.id,
                fingerprint: c.fingerprint,
                kind: c.kind,
                headline: c.headline,
                top_frame: c.top_frame,
                count: c.count,
                first_seen_ns: c.first_seen_ns,
                last_seen_ns: c.last_seen_ns,
                regression: c.regression,
                ..Cluster::default()
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// When each build was first seen (the newest [`MAX_BUILDS`] sightings).
    pub fn builds(&self) -> Result<Vec<Sighting>> {
        let mut st = self.conn.prepare(
            "SELECT program, revision, first_seen FROM builds ORDER BY first_seen DESC LIMIT ?1",
        )?;
        let rows = st.query_map(params![MAX_BUILDS as i64], |r| {
            Ok(Sighting {
                program: r.get(0)?,
                revision: r.get(1)?,
                at_ns: r.get::<_, i64>(2)? as u64,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Stores a batch of reports in one transaction (whatever queued while the last one was
    /// written).
    fn insert(&mut self, batch: &[Item], keep: &Retention) -> Result<()> {
        let tx = self.conn.transaction()?;
        for item in batch {
            match item {
                Item::Report(w) => Self::insert_one(&tx, w, keep)?,
                Item::Build(s) => {
                    tx.execute(
                        "INSERT INTO builds (program, revision, first_seen) VALUES (?1, ?2, ?3)
                         ON CONFLICT DO UPDATE SET first_seen = min(first_seen, ?3)",
                        params![s.program, s.revision, s.at_ns as i64],
                    )?;
                }
            }
        }
        tx.commit()?;
        dumps::sweep(&self.conn, &self.dumps)?;
        Ok(())
    }

    fn insert_one(tx: &rusqlite::Transaction, w: &Write, keep: &Retention) -> Result<()> {
        let c = &w.cluster;
        tx.execute(
            "INSERT INTO clusters (id, fingerprint, kind, headline, top_frame, count, first_seen, last_seen, regression)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
             ON CONFLICT(id) DO UPDATE SET headline = ?4, top_frame = ?5, count = ?6, last_seen = ?8",
            params![
                c.id,
                c.fingerprint,
                c.kind,
                c.headline,
                c.top_frame,
                c.count as i64,
                c.first_seen_ns as i64,
                c.last_seen_ns as i64,
                c.regression
            ],
        )?;
        let f = &w.facts;
        page::record(tx, c.id, c.last_seen_ns, f.exe.as_deref())?;
        tx.execute(
            "INSERT INTO reports (cluster, time, exe, container, namespace, pod, node, revision, json)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                c.id,
                c.last_seen_ns as i64,
                f.exe,
                f.container,
                f.namespace,
                f.pod,
                f.node,
                f.revision,
                w.json
            ],
        )?;
        let id = tx.last_insert_rowid();
        if let Some(p) = &f.minidump {
            dumps::note(tx, dumps::Kind::Minidump, id, c.id, p)?;
        }
        if let Some(p) = &f.core {
            dumps::note(tx, dumps::Kind::Core, id, c.id, p)?;
        }
        if let Some(rev) = &f.revision {
            let (version, image) = (
                f.version.as_deref().unwrap_or(""),
                f.image.as_deref().unwrap_or(""),
            );
            let new = tx.execute(
                "INSERT INTO cluster_builds VALUES (?1, ?2, ?3, ?4, 1, ?5, ?5)
                 ON CONFLICT DO UPDATE SET count = count + 1, last_seen = ?5",
                params![c.id, rev, version, image, c.last_seen_ns as i64],
            )?;
            // A cluster hit by build after build keeps the latest.
            if new > 0 && c.count as i64 > BUILDS_PER_CLUSTER {
                tx.execute(
                    "DELETE FROM cluster_builds WHERE cluster = ?1 AND last_seen < (
                         SELECT last_seen FROM cluster_builds WHERE cluster = ?1
                         ORDER BY last_seen DESC LIMIT 1 OFFSET ?2)",
                    params![c.id, BUILDS_PER_CLUSTER - 1],
                )?;
            }
        }
        // Only a cluster that can hold more than it keeps: the query walks up to
        // `per_cluster` index entries, which for a large limit made every insert slow.
        if c.count > keep.per_cluster as u64 {
            tx.execute(
                "DELETE FROM reports WHERE cluster = ?1 AND id <= (
                     SELECT id FROM reports WHERE cluster = ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2)",
                params![c.id, keep.per_cluster],
            )?;
        }
        Ok(())
    }

    /// Deletes reports past the age and size bounds; how many went.
    fn prune(&mut self, keep: &Retention) -> Result<u64> {
        let cutoff = crate::model::clock::now_ns().saturating_sub(keep.max_age.as_nanos() as u64);
        let mut gone = self.conn.execute(
            "DELETE FROM reports WHERE time < ?1",
            params![cutoff as i64],
        )? as u64;
        page::prune_hours(&self.conn, crate::model::clock::now_ns())?;
        while self.bytes()? > keep.max_bytes {
            let n = self.conn.execute(
                "DELETE FROM reports WHERE id IN (SELECT id FROM reports ORDER BY id LIMIT 1000)",
                [],
            )?;
            gone += n as u64;
            self.conn
                .execute_batch("PRAGMA wal_checkpoint(TRUNCATE); VACUUM;")?;
            if n == 0 {
                break;
            }
        }
        dumps::sweep(&self.conn, &self.dumps)?;
        Ok(gone)
    }

    /// Bytes the database's pages take.
    pub fn bytes(&self) -> Result<u64> {
        let pages: i64 = self.conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
        let size: i64 = self.conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        Ok((pages * size) as u64)
    }
}

/// What the listing filters and shows by, taken from the report.
#[derive(Clone, Debug, Default)]
pub struct Facts {
    pub exe: Option<String>,
    pub container: Option<String>,
    pub namespace: Option<String>,
    pub pod: Option<String>,
    pub node: Option<String>,
    /// The crashed build (`cluster::attribution`).
    pub revision: Option<String>,
    /// The Go main module's version, when it is a real one.
    pub version: Option<String>,
    pub image: Option<String>,
    /// The minidump kept of it (`run --dumps`).
    pub minidump: Option<String>,
    /// The whole core kept of it (`--keep-cores`).
    pub core: Option<String>,
}

impl Facts {
    /// `build`: the crashed build as [`crate::pipeline::cluster::Observed`] found it.
    pub fn of(r: &crate::model::report::Report, build: Option<(String, String)>) -> Facts {
        let container = r.container.as_ref().map(|c| {
            let name = c
                .name
                .clone()
                .unwrap_or_else(|| c.id.chars().take(12).collect());
            match &c.image {
                Some(i) => format!("{name} ({i})"),
                None => name,
            }
        });
        Facts {
            exe: r.exe.clone(),
            container,
            namespace: r.k8s.as_ref().and_then(|k| k.namespace.clone()),
            pod: r.k8s.as_ref().and_then(|k| k.pod.clone()),
            node: r.k8s.as_ref().map(|k| k.node.clone()),
            revision: build.map(|(_, rev)| rev),
            version: r
                .go
                .as_ref()
                .and_then(|g| g.build.as_ref())
                .and_then(|b| b.main_version.clone())
                .filter(|v| v != "(devel)"),
            image: r.container.as_ref().and_then(|c| c.image.clone()),
            minidump: r.dump.as_ref().and_then(|d| d.minidump.clone()),
            core: r.dump.as_ref().and_then(|d| d.core.clone()),
        }
    }
}

/// What goes to the disk.
pub enum Item {
    Report(Box<Write>),
    /// A build seen for the first time.
    Build(Sighting),
}

/// One report on its way to the disk.
pub struct Write {
    pub cluster: Cluster,
    pub facts: Facts,
    pub json: String,
}

/// The store's thread, fed through a bounded queue.
pub struct Writer {
    queue: Option<mpsc::SyncSender<Item>>,
    thread: Option<std::thread::JoinHandle<()>>,
    sent: u64,
    /// Reports not stored: the queue full, or the write failed.
    dropped: Arc<AtomicU64>,
    /// Build sightings not stored: the queue full.
    builds_dropped: u64,
    /// Time the store thread spent writing (and pruning).
    busy_ns: Arc<AtomicU64>,
    exported: prometheus_client::metrics::counter::Counter,
    /// Counts up after each batch stored: the crash page follows it.
    changes: tokio::sync::watch::Sender<u64>,
}

/// What the store thread did, for the agent's stop line.
pub struct Stored {
    /// Reports queued for the disk, and those not stored (queue full, or the write failed).
    pub sent: u64,
    pub dropped: u64,
    /// Build sightings not stored (queue full).
    pub builds_dropped: u64,
    /// Time spent writing: the store's capacity is `sent / busy` reports a second.
    pub busy: Duration,
}

impl Writer {
    /// `exported`: `crashwatch_sink_errors_total{sink="store"}`, counted with `dropped`;
    /// `stored`: `crashwatch_reports_delivered_total{sink="store"}`.
    pub fn spawn(
        mut store: Store,
        keep: Retention,
        exported: prometheus_client::metrics::counter::Counter,
        stored: prometheus_client::metrics::counter::Counter,
    ) -> Result<Writer> {
        let (queue, rx) = mpsc::sync_channel::<Item>(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let lost = dropped.clone();
        let lost_exported = exported.clone();
        let busy_ns = Arc::new(AtomicU64::new(0));
        let busy = busy_ns.clone();
        let changes = tokio::sync::watch::Sender::new(0u64);
        let changed = changes.clone();
        let thread = std::thread::Builder::new()
            .name("store".into())
            .spawn(move || {
                let mut written = 0u64;
                // Whatever is queued goes in with the report that woke the thread.
                while let Ok(first) = rx.recv() {
                    let mut batch = vec![first];
                    while batch.len() < BATCH {
                        match rx.try_recv() {
                            Ok(w) => batch.push(w),
                            Err(_) => break,
                        }
                    }
                    let t0 = std::time::Instant::now();
                    let reports = batch
                        .iter()
                        .filter(|i| matches!(i, Item::Report(_)))
                        .count();
                    match store.insert(&batch, &keep) {
                        Ok(()) => {
                            stored.inc_by(reports as u64);
                            if reports > 0 {
                                changed.send_modify(|g| *g += 1);
                            }
                        }
                        Err(e) => {
                            lost_exported.inc_by(reports as u64);
                            if lost.fetch_add(reports as u64, Ordering::Relaxed) < 10 {
                                tracing::warn!("storing {reports} reports failed: {e:#}");
                            }
                        }
                    };
                    // Age and size: at the first batch and about every 256 reports.
                    if written == 0 || written / 256 != (written + batch.len() as u64) / 256 {
                        if let Err(e) = store.prune(&keep) {
                            tracing::warn!("pruning the crash history failed: {e:#}");
                        }
                    }
                    written += batch.len() as u64;
                    busy.fetch_add(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
                }
            })
            .context("starting the store thread")?;
        Ok(Writer {
            queue: Some(queue),
            thread: Some(thread),
            sent: 0,
            dropped,
            builds_dropped: 0,
            busy_ns,
            exported,
            changes,
        })
    }

    /// Follows the stored batches (the crash page's live update).
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Queues a report for the disk; never waits.
    pub fn write(&mut self, w: Write) {
        self.sent += 1;
        if !self.send(Item::Report(Box::new(w))) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            self.exported.inc();
        }
    }

    /// Queues a build's first sighting; never waits. One lost to a full queue is seen again
    /// at the program's next exec after a restart, later than it was.
    pub fn write_build(&mut self, s: Sighting) {
        if !self.send(Item::Build(s)) {
            self.builds_dropped += 1;
        }
    }

    fn send(&self, item: Item) -> bool {
        self.queue
            .as_ref()
            .is_some_and(|q| q.try_send(item).is_ok())
    }

    /// Waits for the queue to drain.
    pub fn finish(mut self) -> Stored {
        self.queue.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        Stored {
            sent: self.sent,
            dropped: self.dropped.load(Ordering::Relaxed),
            builds_dropped: self.builds_dropped,
            busy: Duration::from_nanos(self.busy_ns.load(Ordering::Relaxed)),
        }
    }
}

/// The default state directory.
pub fn default_dir() -> PathBuf {
    PathBuf::from("/var/lib/crashwatch")
}

#[cfg(test)]
mod tests;
