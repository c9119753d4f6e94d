//! Web: the agent's HTTP listener (`--listen`, loopback by default), served by axum on the
//! agent's own runtime: `/metrics` (Prometheus text format, [`crate::sink::metrics`]),
//! `/healthz` (alive: the record loop ran within the last 10 s) and `/readyz` (the programs
//! are attached and the crash history opened). Read-only; each answer costs what its page
//! holds, nothing a request chooses.
use std::sync::{
    atomic::{AtomicBool, AtomicU64, Ordering},
    Arc,
};

use axum::{
    extract::State,
    http::{header, StatusCode},
    response::IntoResponse,
    routing::get,
    Router,
};

use crate::sink::metrics::Metrics;

/// The default address: loopback only. 9721 is crashwatch's choice (documented in the
/// README); `--listen` moves it.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9721";

/// What the probes answer, set by the agent's record loop.
#[derive(Default)]
pub struct Health {
    /// Past start-up: programs attached, crash history opened.
    pub ready: AtomicBool,
    /// The record loop's last turn (monotonic ns).
    pub last_turn_ns: AtomicU64,
}

impl Health {
    pub fn turned(&self) {
        self.last_turn_ns
            .store(crate::context::monotonic_ns(), Ordering::Relaxed);
    }
}

/// How long the record loop may be silent (it turns at least every second) before the agent
/// is not healthy.
const STALL_NS: u64 = 10_000_000_000;

#[derive(Clone)]
struct Shared {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

/// Serves until the runtime ends.
pub async fn serve(listener: tokio::net::TcpListener, metrics: Arc<Metrics>, health: Arc<Health>) {
    let app = Router::new()
        .route("/metrics", get(metrics_page))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(Shared { metrics, health });
    if let Err(e) = axum::serve(listener, app).await {
        tracing::warn!("the HTTP listener stopped: {e}");
    }
}

async fn metrics_page(State(s): State<Shared>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        )],
        s.metrics.encode(),
    )
}

async fn healthz(State(s): State<Shared>) -> (StatusCode, String) {
    let last = s.health.last_turn_ns.load(Ordering::Relaxed);
    let silent = crate::context::monotonic_ns().saturating_sub(last);
    if last == 0 || silent <= STALL_NS {
        (StatusCode::OK, "ok\n".into())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the record loop has not run for {} s\n",
                silent / 1_000_000_000
            ),
        )
    }
}

async fn readyz(State(s): State<Shared>) -> (StatusCode, &'static str) {
    if s.health.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n")
    }
}
