//! Web: the JSON API the page is built from (docs/api.md): `/api/clusters`,
//! `/api/clusters/ID`, `/api/reports/ID`, and `/api/events`, a server-sent event each time
//! the store took reports, which the page follows to update itself. Every answer is a page of
//! bounded size (`store::page`); the number of event streams open at once is bounded too.
use std::{
    convert::Infallible,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
};

use axum::{
    extract::{Path, Query, State},
    http::{header, StatusCode},
    response::{
        sse::{Event, KeepAlive, Sse},
        IntoResponse, Response,
    },
    Json,
};
use serde::{Deserialize, Serialize};

use super::{read::Failed, Site};
use crate::outputs::store::{ClusterRow, Cursor, Filter, ReportRow, Timeline};

/// Clusters on a page unless `limit` says otherwise.
pub const PAGE: u32 = 50;
/// Reports listed on a cluster's page unless `limit` says otherwise.
pub const REPORTS: u32 = 20;
/// Event streams open at once; past it, 503.
const STREAMS: usize = 64;

/// The listing's query: `/` and `/api/clusters` take the same.
#[derive(Debug, Default, Deserialize)]
pub struct ListQuery {
    pub kind: Option<String>,
    pub namespace: Option<String>,
    /// The hub's facets.
    pub node: Option<String>,
    pub workload: Option<String>,
    pub image: Option<String>,
    pub build: Option<String>,
    pub q: Option<String>,
    pub before: Option<String>,
    pub limit: Option<u32>,
    /// `/` only: just the list, for the page's live update.
    pub fragment: Option<String>,
}

fn given(s: &Option<String>) -> Option<String> {
    s.as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

impl ListQuery {
    /// The listing's filter; Err: why a parameter is refused (a `kind` that is not one).
    pub fn filter(&self, site: &Site) -> Result<Filter, String> {
        let (node, workload) = (given(&self.node), given(&self.workload));
        let (image, build) = (given(&self.image), given(&self.build));
        let fleet_only = [&node, &workload, &image, &build];
        if !site.fleet && fleet_only.iter().any(|f| f.is_some()) {
            return Err(
                "node, workload, image and build are the hub's filters: a node's page shows \
                 its own crashes"
                    .into(),
            );
        }
        Ok(Filter {
            kind: self.kind()?,
            namespace: given(&self.namespace),
            node,
            workload,
            image,
            build,
            text: given(&self.q),
            limit: self.limit.unwrap_or(PAGE),
            ..site.filter()
        })
    }

    /// `kind`, when given; Err: it names no kind (the answer says which there are).
    fn kind(&self) -> Result<Option<String>, String> {
        let kinds = crate::pipeline::assemble::Kind::names();
        match given(&self.kind) {
            Some(k) if !kinds.contains(&k.as_str()) => Err(format!(
                "kind={k:?} is not a kind; the kinds are {}",
                kinds.join(", ")
            )),
            k => Ok(k),
        }
    }

    /// `before`; Err: why it is not a cursor.
    pub fn cursor(&self) -> Result<Option<Cursor>, String> {
        match given(&self.before) {
            None => Ok(None),
            Some(b) => Cursor::parse(&b).map(Some).ok_or_else(|| {
                format!("before={b:?}: a cursor as a listing's `next` gave it (LASTSEEN.ID)")
            }),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct ClusterQuery {
    /// Reports older than this report id.
    pub before: Option<i64>,
    pub limit: Option<u32>,
    /// The page only: the report shown in full (else the latest).
    pub report: Option<i64>,
    pub fragment: Option<String>,
}

/// A cluster with its timelines and a page of its reports.
#[derive(Debug, Serialize)]
pub struct ClusterDetail {
    pub cluster: ClusterRow,
    /// Crashes per day over the last 30 days (`cluster.last_24h` has the last day by hour).
    pub timeline_30d: Timeline,
    pub reports: Vec<ReportRow>,
    /// `before` for the next page of reports; None: no older report is kept.
    pub next_reports: Option<i64>,
}

pub fn bad(why: String) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(serde_json::json!({ "error": why })),
    )
        .into_response()
}

pub fn not_found(what: String) -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(serde_json::json!({ "error": what })),
    )
        .into_response()
}

pub fn failed(f: Failed) -> Response {
    let (status, why) = match f {
        Failed::NoHistory(why) => (StatusCode::SERVICE_UNAVAILABLE, why),
        Failed::Busy => (
            StatusCode::SERVICE_UNAVAILABLE,
            "busy: too many requests waiting; try again".to_string(),
        ),
        Failed::Error(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("reading the crash history: {e}"),
        ),
    };
    let mut r = (status, Json(serde_json::json!({ "error": why }))).into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        r.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    }
    r
}

/// Reads a cluster's detail; Ok(None): no such cluster.
pub async fn detail(
    site: &Site,
    id: i64,
    before: Option<i64>,
    limit: u32,
) -> Result<Option<ClusterDetail>, Failed> {
    site.history.detail(id, site.filter(), before, limit).await
}

pub async fn clusters(State(site): State<Site>, Query(q): Query<ListQuery>) -> Response {
    let before = match q.cursor() {
        Ok(c) => c,
        Err(why) => return bad(why),
    };
    let f = match q.filter(&site) {
        Ok(f) => f,
        Err(why) => return bad(why),
    };
    match site.history.list(f, before).await {
        Ok(l) => Json(l).into_response(),
        Err(e) => failed(e),
    }
}

pub async fn cluster(
    State(site): State<Site>,
    Path(id): Path<i64>,
    Query(q): Query<ClusterQuery>,
) -> Response {
    match detail(&site, id, q.before, q.limit.unwrap_or(REPORTS)).await {
        Ok(Some(d)) => Json(d).into_response(),
        Ok(None) => not_found(format!("no cluster {id}")),
        Err(e) => failed(e),
    }
}

pub async fn report(State(site): State<Site>, Path(id): Path<i64>) -> Response {
    match site.history.report(id).await {
        Ok(Some((cluster, json))) => {
            let report: serde_json::Value =
                serde_json::from_str(&json).unwrap_or(serde_json::Value::String(json));
            Json(serde_json::json!({ "id": id, "cluster": cluster, "report": report }))
                .into_response()
        }
        Ok(None) => not_found(format!(
            "no report {id} (reports past the retention are gone)"
        )),
        Err(e) => failed(e),
    }
}

/// The hub's nodes: silent ones first.
pub async fn nodes(State(site): State<Site>) -> Response {
    match site.history.nodes().await {
        Ok(Some(n)) => Json(serde_json::json!({ "nodes": n })).into_response(),
        Ok(None) => not_found("no nodes list: this is a node's page".into()),
        Err(e) => failed(e),
    }
}

pub async fn loops(State(site): State<Site>) -> Response {
    match site.history.loops(site.filter()).await {
        Ok(Some(l)) => Json(serde_json::json!({ "loops": l })).into_response(),
        Ok(None) => not_found("no loops list: this is a node's page".into()),
        Err(e) => failed(e),
    }
}

/// Gives back its stream's place when the stream ends.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

pub async fn events(State(site): State<Site>) -> Response {
    let Some(rx) = site.changes.clone() else {
        return failed(Failed::NoHistory(site.no_history()));
    };
    if site.streams.fetch_add(1, Ordering::Relaxed) >= STREAMS {
        site.streams.fetch_sub(1, Ordering::Relaxed);
        return failed(Failed::Busy);
    }
    let slot = Slot(site.streams.clone());
    let stream = futures_util::stream::unfold((rx, slot), |(mut rx, slot)| async move {
        // Ends when the agent stops (the store's sender is gone).
        rx.changed().await.ok()?;
        let generation = *rx.borrow_and_update();
        let e = Event::default()
            .event("stored")
            .data(generation.to_string());
        Some((Ok::<_, Infallible>(e), (rx, slot)))
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::ListQuery;

    #[test]
    fn a_kind_is_one_of_the_kinds_or_refused_with_them() {
        let q = |k: &str| {
            ListQuery {
                kind: Some(k.into()),
                ..ListQuery::default()
            }
            .kind()
        };
        assert_eq!(q("go_panic"), Ok(Some("go_panic".into())));
        assert_eq!(q(" "), Ok(None), "an empty select means all");
        let e = q("nope").unwrap_err();
        assert!(e.contains("\"nope\"") && e.contains("oom_kill"), "{e}");
    }
}
