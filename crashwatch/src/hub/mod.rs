//! Hub (`crashwatch hub`, above the web: it serves the node page's API shapes fleet-wide):
//! receives every node's reports and heartbeats, stores them in PostgreSQL ([`db`],
//! [`ingest`]), and serves the crash page and its API over the fleet (the web's routes over
//! [`read::PgHistory`], plus the nodes page; docs/fleet.md) and `/metrics`. Live pages
//! follow every replica's writes through PostgreSQL's LISTEN/NOTIFY.
//!
//! Stateless: every answer is read from the database and every write goes to it, so any
//! number of replicas can run behind one Service and any replica answers any request; a
//! replica killed mid-request loses nothing an agent does not send again (an agent's spool
//! lets a report go only on a 2xx, which comes after the commit).
//!
//! Two tokens, two powers: the ingest token (`--ingest-token-file`, given to agents) may only
//! send reports and heartbeats; reads need the read token (`--read-token-file`), or, without
//! one, come from this host's loopback only, as on a node. One token for both is refused.
pub mod db;
pub mod ingest;
mod metrics;
pub mod read;
pub mod retain;

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use anyhow::Result;
use axum::{
    body::Bytes,
    extract::State,
    http::{header, StatusCode},
    middleware,
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use deadpool_postgres::Pool;
use serde::Deserialize;

use crate::web::{auth::Access, bad};

/// The hub's default address: loopback, beside the node's 9721.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9722";
/// The largest heartbeat accepted.
const MAX_HEARTBEAT: usize = 64 << 10;

pub struct Options {
    pub database: db::Database,
    pub ingest_token: String,
    /// Who may read: the read token, or loopback only.
    pub access: Access,
    pub loop_count: u32,
    pub loop_window_ns: u64,
    pub regression_window_ns: u64,
    pub retention: retain::Retention,
    /// HTTPS with this certificate; None: plain HTTP (TLS ends at an ingress, or loopback).
    pub tls: Option<Arc<crate::web::tls::Certificate>>,
}

/// What this replica counts (each replica its own; Prometheus sums them).
#[derive(Default)]
struct Counts {
    stored: AtomicU64,
    duplicates: AtomicU64,
    terminations: AtomicU64,
    refused: AtomicU64,
    failed: AtomicU64,
    heartbeats: AtomicU64,
}

#[derive(Clone)]
struct Hub {
    pool: Pool,
    ready: Arc<AtomicBool>,
    counts: Arc<Counts>,
    changed: Arc<db::Changed>,
    regression_window_ns: u64,
    loop_count: u32,
    loop_window_ns: u64,
}

/// Serves on `listener` until the runtime ends; the schema is brought up to date first,
/// retried while the database cannot be reached (`/readyz` says 503 meanwhile).
pub async fn serve(listener: tokio::net::TcpListener, opts: Options) -> Result<()> {
    let hub = Hub {
        pool: db::pool(&opts.database)?,
        ready: Arc::default(),
        counts: Arc::default(),
        changed: Arc::default(),
        regression_window_ns: opts.regression_window_ns,
        loop_count: opts.loop_count,
        loop_window_ns: opts.loop_window_ns,
    };
    tokio::spawn(hub.changed.clone().run(hub.pool.clone()));
    let (pool, ready) = (hub.pool.clone(), hub.ready.clone());
    let retention = opts.retention.clone();
    tokio::spawn(async move {
        let mut said = false;
        loop {
            match db::migrate(&pool).await {
                Ok(n) => {
                    if n > 0 {
                        tracing::info!("database schema brought to version {}", db::VERSION);
                    }
                    ready.store(true, Ordering::Relaxed);
                    tokio::spawn(retain::run(pool, retention));
                    return;
                }
                Err(e) if !said => {
                    tracing::warn!("the database is not ready ({e:#}); trying again every 2 s");
                    said = true;
                }
                Err(_) => {}
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    });
    let ingest_access = Access::Token(opts.ingest_token);
    let ingest = Router::new()
        .route("/api/v1/reports", post(take_report))
        .route("/api/v1/heartbeat", post(take_heartbeat))
        .with_state(hub.clone())
        .layer(middleware::from_fn_with_state(
            (ingest_access, true),
            crate::web::auth::guard,
        ));
    let (changed, changes) = tokio::sync::watch::channel(0u64);
    tokio::spawn(db::listen(opts.database.clone(), changed));
    let site = crate::web::Site::fleet(
        Arc::new(read::PgHistory(hub.pool.clone())),
        changes,
        opts.loop_count,
        opts.loop_window_ns,
    );
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics::serve))
        .with_state(hub)
        .merge(ingest)
        .merge(crate::web::routes(site, opts.access))
        .layer(middleware::map_response(crate::web::secure));
    if let Some(cert) = opts.tls {
        return crate::web::tls::serve(listener, cert, app).await;
    }
    let app = app.into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, app).await?;
    Ok(())
}

fn unavailable(why: String) -> Response {
    let mut r = (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(serde_json::json!({ "error": why })),
    )
        .into_response();
    r.headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from_static("2"));
    r
}

/// `POST /api/v1/reports`: one report. 200 once it is stored (or was before), 400 naming
/// what is wrong with it, 503 while the database cannot take it (the agent sends it again).
async fn take_report(
    State(hub): State<Hub>,
    headers: axum::http::HeaderMap,
    body: axum::body::Body,
) -> Response {
    let body = match read_body(&headers, body, ingest::MAX_REPORT).await {
        Ok(b) => b,
        Err(r) => {
            hub.counts.refused.fetch_add(1, Ordering::Relaxed);
            return r;
        }
    };
    let incoming = match ingest::check(&body) {
        Ok(i) => i,
        Err(e) => {
            hub.counts.refused.fetch_add(1, Ordering::Relaxed);
            return bad(format!("{e:#}"));
        }
    };
    if !hub.ready.load(Ordering::Relaxed) {
        return unavailable("the hub is starting: the database is not ready".into());
    }
    match ingest::store(&hub.pool, &incoming, hub.regression_window_ns).await {
        Ok(stored) => {
            let (counter, said) = match stored {
                ingest::Stored::New { .. } => {
                    hub.changed.stored();
                    (&hub.counts.stored, "stored")
                }
                ingest::Stored::Duplicate => (&hub.counts.duplicates, "duplicate"),
                ingest::Stored::Counted => (&hub.counts.terminations, "counted"),
            };
            counter.fetch_add(1, Ordering::Relaxed);
            Json(serde_json::json!({ "result": said })).into_response()
        }
        Err(e) => {
            hub.counts.failed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("storing a report failed: {e:#}");
            unavailable(format!("storing the report failed: {e:#}"))
        }
    }
}

/// The body, at most `max` bytes; one that says it is larger is refused before it is read.
async fn read_body(
    headers: &axum::http::HeaderMap,
    body: axum::body::Body,
    max: usize,
) -> Result<Bytes, Response> {
    let too_large = || {
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            Json(serde_json::json!({ "error": format!("the body is over {max} bytes") })),
        )
            .into_response()
    };
    let said = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if said.is_some_and(|n| n > max) {
        return Err(too_large());
    }
    axum::body::to_bytes(body, max)
        .await
        .map_err(|_| too_large())
}

#[derive(Deserialize)]
struct Heartbeat {
    node: String,
}

/// `POST /api/v1/heartbeat`: a node's inventory (a JSON object naming its `node`).
async fn take_heartbeat(
    State(hub): State<Hub>,
    headers: axum::http::HeaderMap,
    body: axum::body::Body,
) -> Response {
    let body = match read_body(&headers, body, MAX_HEARTBEAT).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Ok(text) = std::str::from_utf8(&body) else {
        return bad("not UTF-8".into());
    };
    let node = match serde_json::from_str::<Heartbeat>(text) {
        Ok(h) if ingest::node_name_ok(&h.node) => h.node,
        Ok(_) => return bad("node: a node name is required (1 to 253 characters)".into()),
        Err(e) => return bad(format!("not a heartbeat ({{\"node\": …, …}}): {e}")),
    };
    let now = crate::model::clock::now_ns() as i64;
    let done = async {
        let client = hub.pool.get().await?;
        let heard = client
            .prepare_cached(
                "INSERT INTO nodes (name, first_seen_ns, heard_ns, inventory)
                 VALUES ($1, $2, $2, $3)
                 ON CONFLICT (name) DO UPDATE SET heard_ns = GREATEST(nodes.heard_ns, $2),
                     inventory = $3",
            )
            .await?;
        client.execute(&heard, &[&node, &now, &text]).await?;
        anyhow::Ok(())
    };
    match done.await {
        Ok(()) => {
            hub.counts.heartbeats.fetch_add(1, Ordering::Relaxed);
            Json(serde_json::json!({ "result": "heard" })).into_response()
        }
        Err(e) => unavailable(format!("storing the heartbeat failed: {e:#}")),
    }
}

async fn readyz(State(hub): State<Hub>) -> (StatusCode, &'static str) {
    if hub.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "waiting for the database\n",
        )
    }
}
