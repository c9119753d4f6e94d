//! Hub: the PostgreSQL side: the pool every request borrows a connection from, and the
//! schema's versioned migrations.
//!
//! The client is tokio-postgres (the Rust PostgreSQL driver most projects run, async on the
//! hub's tokio runtime) with deadpool-postgres for the pool (small, tokio-native, recycles a
//! connection with a cheap check). Connections are plain TCP or a Unix socket: TLS to the
//! database is not built yet (run the hub beside the database, or through a TLS sidecar
//! such as the CloudNativePG pooler); a `sslmode=require` DSN is refused with that said.
//!
//! Migrations run at start inside one transaction that first takes a transaction-scoped
//! advisory lock, so replicas starting at once apply each migration once: the second waits
//! for the first's commit, then finds nothing left to do. A database a newer hub migrated
//! further than this one knows is refused, so an old replica never writes into a schema it
//! does not understand.
use std::time::Duration;

use anyhow::{bail, Context, Result};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;

/// The advisory lock's key: "crashwatch" in ASCII, folded to 63 bits.
const LOCK: i64 = 0x6372_6173_6877_6174;

/// Each migration, in order; version N is `MIGRATIONS[N - 1]`. Add, never edit.
const MIGRATIONS: &[&str] = &[
    "
CREATE TABLE clusters (
    id BIGSERIAL PRIMARY KEY,
    fingerprint TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    headline TEXT NOT NULL,
    top_frame TEXT NOT NULL,
    count BIGINT NOT NULL DEFAULT 0,
    first_seen_ns BIGINT NOT NULL,
    last_seen_ns BIGINT NOT NULL,
    regression TEXT
);
CREATE INDEX clusters_by_activity ON clusters (last_seen_ns DESC, id DESC);
CREATE TABLE reports (
    id BIGSERIAL PRIMARY KEY,
    node TEXT NOT NULL,
    boot_id TEXT NOT NULL,
    pid BIGINT NOT NULL,
    start_key TEXT NOT NULL,
    cluster BIGINT NOT NULL REFERENCES clusters (id) ON DELETE CASCADE,
    time_ns BIGINT NOT NULL,
    received_ns BIGINT NOT NULL,
    namespace TEXT NOT NULL,
    pod TEXT NOT NULL,
    workload TEXT NOT NULL,
    image TEXT NOT NULL,
    signal TEXT NOT NULL,
    revision TEXT NOT NULL,
    exe TEXT NOT NULL,
    body TEXT NOT NULL,
    UNIQUE (node, boot_id, pid, start_key)
);
CREATE INDEX reports_of_cluster ON reports (cluster, id DESC);
CREATE INDEX reports_by_time ON reports (time_ns);
CREATE TABLE cluster_hours (
    cluster BIGINT NOT NULL REFERENCES clusters (id) ON DELETE CASCADE,
    hour BIGINT NOT NULL,
    node TEXT NOT NULL,
    namespace TEXT NOT NULL,
    workload TEXT NOT NULL,
    count BIGINT NOT NULL,
    PRIMARY KEY (cluster, hour, node, namespace, workload)
);
CREATE TABLE nodes (
    name TEXT PRIMARY KEY,
    first_seen_ns BIGINT NOT NULL,
    heard_ns BIGINT NOT NULL,
    last_crash_ns BIGINT,
    inventory TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE builds (
    revision TEXT PRIMARY KEY,
    first_seen_ns BIGINT NOT NULL
);
CREATE TABLE terminations (
    hour BIGINT NOT NULL,
    node TEXT NOT NULL,
    namespace TEXT NOT NULL,
    workload TEXT NOT NULL,
    signal TEXT NOT NULL,
    count BIGINT NOT NULL,
    PRIMARY KEY (hour, node, namespace, workload, signal)
);
",
    "
CREATE TABLE cluster_builds (
    cluster BIGINT NOT NULL REFERENCES clusters (id) ON DELETE CASCADE,
    revision TEXT NOT NULL,
    image TEXT NOT NULL,
    count BIGINT NOT NULL,
    first_seen_ns BIGINT NOT NULL,
    last_seen_ns BIGINT NOT NULL,
    PRIMARY KEY (cluster, revision, image)
);
CREATE INDEX cluster_builds_by_image ON cluster_builds (image);
CREATE INDEX cluster_builds_by_revision ON cluster_builds (revision);
CREATE INDEX reports_of_cluster_by_time ON reports (cluster, time_ns);
CREATE INDEX cluster_hours_by_hour ON cluster_hours (hour);
",
    "
CREATE TABLE cluster_facets (
    cluster BIGINT NOT NULL REFERENCES clusters (id) ON DELETE CASCADE,
    facet TEXT NOT NULL,
    value TEXT NOT NULL,
    last_hour BIGINT NOT NULL,
    PRIMARY KEY (cluster, facet, value)
);
INSERT INTO cluster_facets
SELECT cluster, 'node', node, MAX(hour) FROM cluster_hours GROUP BY cluster, node
UNION ALL
SELECT cluster, 'namespace', namespace, MAX(hour) FROM cluster_hours
WHERE namespace <> '' GROUP BY cluster, namespace
UNION ALL
SELECT cluster, 'workload', workload, MAX(hour) FROM cluster_hours
WHERE workload <> '' GROUP BY cluster, workload;
",
];

/// The schema version this hub writes.
pub const VERSION: i32 = MIGRATIONS.len() as i32;

/// Connections per replica at most: PostgreSQL's default allows 100 in all.
pub const POOL: usize = 16;

/// The connection settings of `url` (`postgres://user:password@host:port/db`, or the
/// key=value form).
pub fn config(url: &str) -> Result<tokio_postgres::Config> {
    let mut cfg: tokio_postgres::Config = url
        .parse()
        .context("--database: not a PostgreSQL connection string (postgres://user@host/db)")?;
    if cfg.get_ssl_mode() == tokio_postgres::config::SslMode::Require {
        bail!(
            "--database asks for sslmode=require: the hub does not speak TLS to PostgreSQL \
             yet; run it beside the database or through a TLS-terminating pooler"
        );
    }
    cfg.connect_timeout(Duration::from_secs(5));
    if cfg.get_application_name().is_none() {
        cfg.application_name("crashwatch-hub");
    }
    Ok(cfg)
}

/// A pool for the database at `url`; nothing is connected until the first use.
pub fn pool(url: &str) -> Result<Pool> {
    let cfg = config(url)?;
    let mgr = Manager::from_config(
        cfg,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(mgr)
        .max_size(POOL)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_secs(10)))
        .create_timeout(Some(Duration::from_secs(5)))
        .recycle_timeout(Some(Duration::from_secs(5)))
        .build()
        .context("making the database pool")
}

/// Brings the schema to [`VERSION`]; returns the versions applied (0 when up to date).
pub async fn migrate(pool: &Pool) -> Result<usize> {
    let mut client = pool.get().await.context("connecting to the database")?;
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK])
        .await?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS crashwatch_schema (version INT NOT NULL)")
        .await?;
    let at: i32 = tx
        .query_one(
            "SELECT COALESCE(MAX(version), 0) FROM crashwatch_schema",
            &[],
        )
        .await?
        .get(0);
    if at > VERSION {
        bail!(
            "the database's schema is at version {at}, a newer hub's; this hub knows up to \
             {VERSION}: run the newer hub"
        );
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(at as usize) {
        tx.batch_execute(sql)
            .await
            .with_context(|| format!("migration {}", i + 1))?;
        tx.execute(
            "INSERT INTO crashwatch_schema VALUES ($1)",
            &[&(i as i32 + 1)],
        )
        .await?;
    }
    tx.commit().await?;
    Ok((VERSION - at) as usize)
}

/// The channel a replica notifies when it stored a report, and every replica listens on.
pub const STORED: &str = "crashwatch_stored";

/// Counts up `changes` at each notification on [`STORED`], from whichever replica stored:
/// the live page's events. Reconnects (every 2 s) when the connection is lost.
pub async fn listen(url: String, changes: tokio::sync::watch::Sender<u64>) {
    use futures_util::StreamExt;
    let Ok(cfg) = config(&url) else { return };
    loop {
        if let Ok((client, mut conn)) = cfg.connect(NoTls).await {
            let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
            let sql = format!("LISTEN {STORED}");
            let listening = client.batch_execute(&sql);
            let mut listening = std::pin::pin!(listening);
            // The connection is driven by polling its messages, the LISTEN with it.
            let mut listened = false;
            loop {
                tokio::select! {
                    r = &mut listening, if !listened => {
                        listened = true;
                        if r.is_err() { break; }
                        // Reports stored while this replica was not listening.
                        changes.send_modify(|g| *g += 1);
                    }
                    m = messages.next() => match m {
                        Some(Ok(tokio_postgres::AsyncMessage::Notification(_))) => {
                            changes.send_modify(|g| *g += 1);
                        }
                        Some(Ok(_)) => {}
                        Some(Err(_)) | None => break,
                    },
                }
            }
        }
        if changes.is_closed() {
            return;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}
