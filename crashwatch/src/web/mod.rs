//! Web: the agent's HTTP listener (`--listen`, loopback by default), served by axum on the
//! agent's own runtime: `/metrics` (Prometheus text format, [`crate::sink::metrics`]) and
//! `/healthz`. Read-only; each answer costs what its page holds, nothing a request chooses.
use std::sync::Arc;

use axum::{extract::State, http::header, response::IntoResponse, routing::get, Router};

use crate::sink::metrics::Metrics;

/// The default address: loopback only. 9721 is crashwatch's choice (documented in the
/// README); `--listen` moves it.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9721";

/// Serves until the runtime ends.
pub async fn serve(listener: tokio::net::TcpListener, metrics: Arc<Metrics>) {
    let app = Router::new()
        .route("/metrics", get(metrics_page))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(metrics);
    if let Err(e) = axum::serve(listener, app).await {
        eprintln!("crashwatch: the HTTP listener stopped: {e}");
    }
}

async fn metrics_page(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        )],
        m.encode(),
    )
}
