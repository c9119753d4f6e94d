//! Web (above the outputs, below the agent: it reads the store and the metrics): the agent's
//! HTTP listener (`--listen`, loopback by default), served by axum on the
//! agent's own runtime:
//!
//! - `/metrics` (Prometheus text format, [`crate::outputs::metrics`]), `/healthz` (alive: the
//!   record loop ran within the last 10 s) and `/readyz` (programs attached, history opened);
//! - the crash page (`/`, `/cluster/ID`: [`pages`]) and its JSON API (`/api/...`: [`api`],
//!   docs/api.md), read from the crash history ([`read`]), guarded by [`auth`].
//!
//! Read-only: no request changes the agent or its history, and each answer costs what its
//! page holds, nothing a request chooses. Every response says `nosniff`, may not be framed,
//! and carries a content security policy that lets only the agent's own script run.
pub mod api;
pub mod auth;
mod pages;
pub mod read;
pub mod tls;
mod view;

pub use api::bad;
pub use auth::{read_token, Access};

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

use crate::outputs::metrics::Metrics;

/// The default address: loopback only. 9721 is crashwatch's choice (documented in
/// docs/outputs.md and docs/page.md); `--listen` moves it.
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
            .store(crate::model::clock::monotonic_ns(), Ordering::Relaxed);
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

/// What the crash page needs from the agent.
pub struct PageOptions {
    /// The crash history's directory, or why there is none.
    pub history: Result<std::path::PathBuf, String>,
    pub access: Access,
    /// `/metrics` needs the token too.
    pub token_for_metrics: bool,
    /// Counts up each time the store took reports; None without a history.
    pub changes: Option<tokio::sync::watch::Receiver<u64>>,
    pub node: String,
    pub loop_count: u32,
    pub loop_window_ns: u64,
}

/// The page's and the API's state.
#[derive(Clone)]
pub struct Site {
    history: Arc<dyn read::History>,
    /// The hub's page: the fleet's facets and the nodes page.
    fleet: bool,
    /// Who the page is: the node's name, or the hub's "fleet".
    node: Arc<str>,
    loop_count: u32,
    loop_window_ns: u64,
    changes: Option<tokio::sync::watch::Receiver<u64>>,
    streams: Arc<std::sync::atomic::AtomicUsize>,
    no_history: Arc<str>,
}

impl Site {
    /// The hub's page over `history` (its database); `changes` counts up each time a replica
    /// stored reports.
    pub fn fleet(
        history: Arc<dyn read::History>,
        changes: tokio::sync::watch::Receiver<u64>,
        loop_count: u32,
        loop_window_ns: u64,
    ) -> Site {
        Site {
            history,
            fleet: true,
            node: "fleet".into(),
            loop_count,
            loop_window_ns,
            changes: Some(changes),
            streams: Arc::default(),
            no_history: "".into(),
        }
    }

    /// The loop flag as the agent counts it.
    fn filter(&self) -> crate::outputs::store::Filter {
        crate::outputs::store::Filter {
            loop_count: self.loop_count,
            loop_window_ns: self.loop_window_ns,
            ..crate::outputs::store::Filter::default()
        }
    }

    /// The store's batch count now: a page rendered at it ignores the events up to it.
    fn generation(&self) -> u64 {
        self.changes.as_ref().map_or(0, |c| *c.borrow())
    }

    fn no_history(&self) -> String {
        self.no_history.to_string()
    }
}

/// The most a request body (the login form) may hold.
const MAX_BODY: usize = 4096;

/// Serves until the runtime ends.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    page: PageOptions,
) {
    use axum::middleware;
    let no_history = page.history.clone().err().unwrap_or_default();
    let site = Site {
        history: Arc::new(read::Reader::new(page.history)),
        fleet: false,
        node: page.node.into(),
        loop_count: page.loop_count,
        loop_window_ns: page.loop_window_ns,
        changes: page.changes,
        streams: Arc::default(),
        no_history: no_history.into(),
    };
    let access = page.access;
    let mut metrics_route = Router::new()
        .route("/metrics", get(metrics_page))
        .with_state(Shared {
            metrics: metrics.clone(),
            health: health.clone(),
        });
    if page.token_for_metrics {
        metrics_route = metrics_route.layer(middleware::from_fn_with_state(
            (access.clone(), true),
            auth::guard,
        ));
    }
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(Shared { metrics, health })
        .merge(metrics_route)
        .merge(routes(site, access))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::map_response(secure));
    let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
    if let Err(e) = axum::serve(listener, app).await {
        tracing::warn!("the HTTP listener stopped: {e}");
    }
}

/// The crash page, its API, its assets and its login, each guarded by `access`: what a node
/// and the hub serve alike (the hub adds its nodes page).
pub fn routes(site: Site, access: Access) -> Router {
    use axum::middleware;
    let mut html = Router::new()
        .route("/", get(pages::index))
        .route("/cluster/{id}", get(pages::cluster));
    let mut api = Router::new()
        .route("/api/clusters", get(api::clusters))
        .route("/api/clusters/{id}", get(api::cluster))
        .route("/api/reports/{id}", get(api::report))
        .route("/api/events", get(api::events));
    if site.fleet {
        html = html.route("/nodes", get(pages::nodes));
        api = api
            .route("/api/nodes", get(api::nodes))
            .route("/api/loops", get(api::loops));
    }
    let html = html
        .with_state(site.clone())
        .layer(middleware::from_fn_with_state(
            (access.clone(), false),
            auth::guard,
        ));
    let api = api.with_state(site).layer(middleware::from_fn_with_state(
        (access.clone(), true),
        auth::guard,
    ));
    Router::new()
        .route("/assets/app.css", get(pages::css))
        .route("/assets/app.js", get(pages::js))
        .route(
            "/login",
            get(pages::login_form).post(auth::login).with_state(access),
        )
        .merge(html)
        .merge(api)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
}

/// Headers on every answer: the page's own script only, no framing, no sniffing, no
/// referrer leaving with a crash's URL.
pub async fn secure(mut r: axum::response::Response) -> axum::response::Response {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        header::HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
             connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::X_FRAME_OPTIONS,
        header::HeaderValue::from_static("DENY"),
    );
    h.insert(
        header::REFERRER_POLICY,
        header::HeaderValue::from_static("no-referrer"),
    );
    r
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
    let silent = crate::model::clock::monotonic_ns().saturating_sub(last);
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
