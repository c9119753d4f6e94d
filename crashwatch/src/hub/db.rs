//! Hub: the PostgreSQL side: the pool every request borrows a connection from, and the
//! schema's versioned migrations.
//!
//! The client is tokio-postgres (the Rust PostgreSQL driver most projects run, async on the
//! hub's tokio runtime) with deadpool-postgres for the pool (small, tokio-native, recycles a
//! connection with a cheap check). Connections are plain TCP or a Unix socket, or TLS when
//! the connection string says `sslmode=require` (managed databases ask for it): rustls through
//! tokio-postgres-rustls (the driver's rustls adapter), the server's certificate checked
//! against the system's roots and `--database-ca` — stricter than libpq's `require`, which
//! encrypts without checking whom it talks to.
//!
//! Migrations run at start inside one transaction that first takes a transaction-scoped
//! advisory lock, so replicas starting at once apply each migration once: the second waits
//! for the first's commit, then finds nothing left to do. A database a newer hub migrated
//! further than this one knows is refused, so an old replica never writes into a schema it
//! does not understand.
use std::{path::Path, time::Duration};

use anyhow::{bail, Context, Result};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::{config::SslMode, NoTls};
use tokio_postgres_rustls::MakeRustlsConnect;

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
    // Crashes per minute, workload, node and cluster: the loop lists read a window's few
    // rows here instead of every report in it. No foreign key: nothing joins it to clusters,
    // and a key would cost every report a lookup.
    "
CREATE TABLE crash_minutes (
    minute BIGINT NOT NULL,
    namespace TEXT NOT NULL,
    workload TEXT NOT NULL,
    node TEXT NOT NULL,
    cluster BIGINT NOT NULL,
    count BIGINT NOT NULL,
    PRIMARY KEY (minute, namespace, workload, node, cluster)
);
INSERT INTO crash_minutes
SELECT time_ns / 60000000000, namespace, workload, node, cluster, COUNT(*) FROM reports
WHERE time_ns >= (EXTRACT(EPOCH FROM now())::BIGINT - 86400) * 1000000000
GROUP BY 1, 2, 3, 4, 5;
",
];

/// The schema version this hub writes.
pub const VERSION: i32 = MIGRATIONS.len() as i32;

/// Connections per replica at most: PostgreSQL's default allows 100 in all.
pub const POOL: usize = 16;

/// Where the database is and how to reach it: plain TCP or a Unix socket, or TLS when the
/// connection string asks for it (`sslmode=require`).
#[derive(Clone)]
pub struct Database {
    config: tokio_postgres::Config,
    /// Some: TLS, the server's certificate checked against the system's roots and
    /// `--database-ca`, and its name against the host connected to.
    tls: Option<MakeRustlsConnect>,
}

/// The connection settings of `url` (`postgres://user:password@host:port/db`, or the
/// key=value form), with `ca` (PEM) trusted beside the system's roots when it asks for TLS.
pub fn database(url: &str, ca: Option<&Path>) -> Result<Database> {
    let mut config: tokio_postgres::Config = url
        .parse()
        .context("--database: not a PostgreSQL connection string (postgres://user@host/db)")?;
    config.connect_timeout(Duration::from_secs(5));
    if config.get_application_name().is_none() {
        config.application_name("crashwatch-hub");
    }
    let tls = match config.get_ssl_mode() {
        SslMode::Require => Some(MakeRustlsConnect::new(client_tls(ca)?)),
        _ if ca.is_some() => {
            bail!("--database-ca is for a database reached with TLS: add sslmode=require")
        }
        // `prefer` (the default) stays plain, as before: no certificate to fail on.
        _ => None,
    };
    Ok(Database { config, tls })
}

/// The TLS client: ring (the hub's listener and the agents' client use it already), the
/// system's roots (`/etc/ssl/certs`, as OpenSSL finds them) and `ca`'s certificates.
fn client_tls(ca: Option<&Path>) -> Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    let system = rustls_native_certs::load_native_certs();
    let (_, ignored) = roots.add_parsable_certificates(system.certs);
    if ignored > 0 {
        tracing::debug!("{ignored} of the system's root certificates could not be used");
    }
    if let Some(ca) = ca {
        for c in crate::web::tls::pem_certs(ca, "--database-ca")? {
            roots
                .add(c)
                .with_context(|| format!("--database-ca {}: not a CA certificate", ca.display()))?;
        }
    }
    if roots.is_empty() {
        bail!("sslmode=require: no root certificate to check the database's with (--database-ca)");
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS 1.2/1.3 with ring")?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// A pool for `db`; nothing is connected until the first use.
pub fn pool(db: &Database) -> Result<Pool> {
    let manager = ManagerConfig {
        recycling_method: RecyclingMethod::Fast,
    };
    let mgr = match &db.tls {
        Some(tls) => Manager::from_config(db.config.clone(), tls.clone(), manager),
        None => Manager::from_config(db.config.clone(), NoTls, manager),
    };
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
pub async fn listen(db: Database, changes: tokio::sync::watch::Sender<u64>) {
    loop {
        match &db.tls {
            Some(tls) => {
                if let Ok((client, conn)) = db.config.connect(tls.clone()).await {
                    listen_on(client, conn, &changes).await;
                }
            }
            None => {
                if let Ok((client, conn)) = db.config.connect(NoTls).await {
                    listen_on(client, conn, &changes).await;
                }
            }
        }
        if changes.is_closed() {
            return;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// LISTENs on one connection until it is lost.
async fn listen_on<S, T>(
    client: tokio_postgres::Client,
    mut conn: tokio_postgres::Connection<S, T>,
    changes: &tokio::sync::watch::Sender<u64>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use futures_util::StreamExt;
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
                if r.is_err() { return; }
                // Reports stored while this replica was not listening.
                changes.send_modify(|g| *g += 1);
            }
            m = messages.next() => match m {
                Some(Ok(tokio_postgres::AsyncMessage::Notification(_))) => {
                    changes.send_modify(|g| *g += 1);
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return,
            },
        }
    }
}

/// How often at most a replica tells the others (and itself) that it stored reports.
pub const NOTIFY_EVERY: Duration = Duration::from_millis(250);

/// That this replica stored reports, said on [`STORED`] at most every [`NOTIFY_EVERY`]: the
/// first store after a quiet spell at once, those after it together at the end of the spell.
/// A NOTIFY in every report's statement made each commit take PostgreSQL's notification
/// lock, one commit at a time, and woke every page per report. A replica killed within the
/// spell leaves the pages a quarter second behind until the next store; nothing is lost.
#[derive(Default)]
pub struct Changed {
    pending: std::sync::atomic::AtomicBool,
    wake: tokio::sync::Notify,
}

impl Changed {
    /// A report was stored.
    pub fn stored(&self) {
        self.pending
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.wake.notify_one();
    }

    /// Sends the notifications, on connections from `pool`, for as long as the hub runs.
    pub async fn run(self: std::sync::Arc<Self>, pool: Pool) {
        loop {
            self.wake.notified().await;
            if !self
                .pending
                .swap(false, std::sync::atomic::Ordering::Relaxed)
            {
                continue;
            }
            let sql = format!("NOTIFY {STORED}");
            if let Ok(client) = pool.get().await {
                if let Err(e) = client.batch_execute(&sql).await {
                    tracing::debug!("notifying the other replicas failed: {e}");
                }
            }
            tokio::time::sleep(NOTIFY_EVERY).await;
        }
    }
}
