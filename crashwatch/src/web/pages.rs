//! Web: the crash page's HTML, rendered on the server from the templates under
//! `web/templates/` (minijinja, built into the binary): `/` the clusters, `/cluster/ID` one
//! cluster and a report in full, `/login`, and the two assets. Everything is readable
//! without JavaScript; `app.js` adds the live update (it follows `/api/events` and fetches
//! the same page's `fragment=1`, HTML the server rendered, so escaping is done in one place).
use std::sync::OnceLock;

use axum::{
    extract::{Path, Query, State},
    http::{header, StatusCode},
    response::{Html, IntoResponse, Response},
};
use minijinja::{context, Environment, Value};

use super::{
    api::{self, ClusterQuery, ListQuery},
    read::Failed,
    view::{self, ClusterView},
    Site,
};

pub const CSS: &str = include_str!("assets/app.css");
pub const JS: &str = include_str!("assets/app.js");
const VERSION: &str = env!("CARGO_PKG_VERSION");

fn env() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        // The list repeats its rows up to 200 times: no indentation or blank lines sent.
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        for (name, text) in [
            ("base.html", include_str!("templates/base.html")),
            ("list.html", include_str!("templates/list.html")),
            ("rows.html", include_str!("templates/rows.html")),
            ("cluster.html", include_str!("templates/cluster.html")),
            ("summary.html", include_str!("templates/summary.html")),
            ("report.html", include_str!("templates/report.html")),
            ("login.html", include_str!("templates/login.html")),
            ("message.html", include_str!("templates/message.html")),
            ("nodes.html", include_str!("templates/nodes.html")),
        ] {
            env.add_template(name, text)
                .unwrap_or_else(|e| panic!("template {name}: {e}"));
        }
        // Text from crashed processes reaches the page through here: made visible, then
        // HTML-escaped (the .html templates escape every value).
        env.set_formatter(|out, state, value| match value.as_str() {
            Some(s) if !value.is_safe() => {
                minijinja::escape_formatter(out, state, &Value::from(view::visible(s).as_ref()))
            }
            _ => minijinja::escape_formatter(out, state, value),
        });
        env.add_filter("urlencode", |s: String| encode(&s));
        env.add_filter("basename", |s: String| {
            s.rsplit('/').next().unwrap_or_default().to_string()
        });
        env
    })
}

fn render(name: &str, ctx: Value) -> Response {
    match env().get_template(name).and_then(|t| t.render(ctx)) {
        Ok(html) => Html(html).into_response(),
        Err(e) => {
            tracing::warn!("rendering {name}: {e:#}");
            message(
                StatusCode::INTERNAL_SERVER_ERROR,
                "The page could not be rendered",
                &format!("{e}"),
            )
        }
    }
}

fn message(status: StatusCode, title: &str, text: &str) -> Response {
    let html = env()
        .get_template("message.html")
        .and_then(|t| t.render(context! { title, text, version => VERSION }))
        .unwrap_or_else(|_| format!("{title}: {text}"));
    (status, Html(html)).into_response()
}

fn failed(site: &Site, f: Failed) -> Response {
    match f {
        Failed::NoHistory(why) => message(StatusCode::OK, "No crash history", &why),
        Failed::Busy => {
            let mut r = message(
                StatusCode::SERVICE_UNAVAILABLE,
                "Busy",
                "Too many requests are waiting; reload in a moment.",
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            r
        }
        Failed::Error(e) => message(
            StatusCode::INTERNAL_SERVER_ERROR,
            "The crash history could not be read",
            &format!("{e} (node {})", site.node),
        ),
    }
}

/// `?` and the query without `before` and `fragment`: where the list's links go on.
fn query_without_paging(q: &ListQuery) -> String {
    let mut parts = Vec::new();
    for (k, v) in [
        ("kind", &q.kind),
        ("namespace", &q.namespace),
        ("node", &q.node),
        ("workload", &q.workload),
        ("image", &q.image),
        ("build", &q.build),
        ("q", &q.q),
    ] {
        if let Some(v) = v.as_deref().filter(|v| !v.trim().is_empty()) {
            parts.push(format!("{k}={}", encode(v)));
        }
    }
    if let Some(l) = q.limit {
        parts.push(format!("limit={l}"));
    }
    parts.join("&")
}

/// Percent-encodes all but unreserved characters.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub async fn index(State(site): State<Site>, Query(q): Query<ListQuery>) -> Response {
    let before = match q.cursor() {
        Ok(c) => c,
        Err(why) => return message(StatusCode::BAD_REQUEST, "Bad link", &why),
    };
    let f = match q.filter(&site) {
        Ok(f) => f,
        Err(why) => return message(StatusCode::BAD_REQUEST, "Bad link", &why),
    };
    let filtered = f.kind.is_some()
        || f.namespace.is_some()
        || f.node.is_some()
        || f.workload.is_some()
        || f.image.is_some()
        || f.build.is_some()
        || f.text.is_some();
    let listing = match site.history.list(f, before).await {
        Ok(l) => l,
        Err(e) => return failed(&site, e),
    };
    let now = crate::model::clock::now_ns();
    let rest = query_without_paging(&q);
    let sep = if rest.is_empty() { "" } else { "&" };
    let ctx = context! {
        node => site.node.as_ref(),
        version => VERSION,
        kinds => crate::pipeline::assemble::Kind::names(),
        fleet => site.fleet,
        filter => context! {
            kind => q.kind, namespace => q.namespace, node => q.node, workload => q.workload,
            image => q.image, build => q.build, q => q.q
        },
        filtered,
        clusters => listing.clusters.into_iter().map(|c| ClusterView::new(c, now)).collect::<Vec<_>>(),
        next => listing.next.map(|c| format!("/?{rest}{sep}before={c}")),
        partial => listing.partial,
        first_page => before.is_none(),
        live => format!("/?{rest}{sep}fragment=1"),
        generation => site.generation(),
    };
    let page = if q.fragment.is_some() {
        "rows.html"
    } else {
        "list.html"
    };
    render(page, ctx)
}

pub async fn cluster(
    State(site): State<Site>,
    Path(id): Path<i64>,
    Query(q): Query<ClusterQuery>,
) -> Response {
    let detail = match api::detail(&site, id, q.before, q.limit.unwrap_or(api::REPORTS)).await {
        Ok(Some(d)) => d,
        Ok(None) => {
            return message(
                StatusCode::NOT_FOUND,
                "No such cluster",
                &format!("No cluster {id} on this node."),
            )
        }
        Err(e) => return failed(&site, e),
    };
    let now = crate::model::clock::now_ns();
    let live = format!("/cluster/{id}?fragment=1");
    let generation = site.generation();
    let days = view::bars(&detail.timeline_30d, 300.0, 48.0);
    let hours = detail
        .cluster
        .last_24h
        .as_ref()
        .map(|t| view::bars(t, 300.0, 48.0));
    if q.fragment.is_some() {
        let ctx = context! { d => &detail, c => ClusterView::new(detail.cluster.clone(), now), days, hours };
        return render("summary.html", ctx);
    }
    let wanted = q.report;
    let shown = async {
        let rid = match wanted {
            Some(r) => Some(r),
            None => site.history.latest(id).await?,
        };
        Ok(match rid {
            Some(r) => site.history.report(r).await?.map(|(c, json)| (r, c, json)),
            None => None,
        })
    };
    let shown = match shown.await {
        Ok(r) => r,
        Err(e) => return failed(&site, e),
    };
    let report = match shown {
        Some((rid, cluster, json)) if cluster == id => {
            let value: serde_json::Value = serde_json::from_str(&json).unwrap_or_default();
            Some(context! { id => rid, r => Value::from_serialize(&value) })
        }
        Some(_) => {
            return message(
                StatusCode::NOT_FOUND,
                "No such report",
                "That report belongs to another cluster.",
            )
        }
        None if wanted.is_some() => {
            return message(
                StatusCode::NOT_FOUND,
                "No such report",
                "It is past the retention, or never was.",
            )
        }
        None => None,
    };
    let ctx = context! {
        node => site.node.as_ref(),
        version => VERSION,
        fleet => site.fleet,
        c => ClusterView::new(detail.cluster.clone(), now),
        d => &detail,
        days,
        hours,
        report,
        live,
        generation,
        older => detail.next_reports.map(|b| format!("/cluster/{id}?before={b}")),
    };
    render("cluster.html", ctx)
}

/// `/nodes` (the hub's): every node, silent ones first, with its inventory.
pub async fn nodes(State(site): State<Site>) -> Response {
    let nodes = match site.history.nodes().await {
        Ok(Some(n)) => n,
        Ok(None) => {
            return message(StatusCode::NOT_FOUND, "No nodes", "This is a node's page.");
        }
        Err(e) => return failed(&site, e),
    };
    let loops = match site.history.loops(site.filter()).await {
        Ok(l) => l.unwrap_or_default(),
        Err(e) => return failed(&site, e),
    };
    let silent = nodes.iter().filter(|n| n.silent).count();
    let ctx = context! {
        node => site.node.as_ref(),
        version => VERSION,
        fleet => site.fleet,
        nodes => Value::from_serialize(&nodes),
        loops => Value::from_serialize(&loops),
        loop_count => site.filter().loop_count,
        loop_minutes => site.filter().loop_window_ns / 60_000_000_000,
        silent,
    };
    render("nodes.html", ctx)
}

pub fn login_html(failed: bool) -> String {
    env()
        .get_template("login.html")
        .and_then(|t| t.render(context! { failed, version => VERSION }))
        .unwrap_or_else(|e| format!("{e}"))
}

pub async fn login_form() -> Html<String> {
    Html(login_html(false))
}

pub async fn css() -> Response {
    asset("text/css; charset=utf-8", CSS)
}

pub async fn js() -> Response {
    asset("text/javascript; charset=utf-8", JS)
}

fn asset(kind: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, kind),
            // The URL carries the version: a new agent's page asks for its own assets.
            (header::CACHE_CONTROL, "public, max-age=86400"),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_parses_and_text_is_escaped_and_made_visible() {
        let html = env()
            .get_template("message.html")
            .unwrap()
            .render(context! { title => "<script>alert(1)</script>", text => "a\u{1b}[2Jb", version => "x" })
            .unwrap();
        assert!(
            html.contains("&lt;script&gt;alert(1)&lt;&#x2f;script&gt;"),
            "{html}"
        );
        assert!(!html.contains("<script>alert"));
        assert!(html.contains("a\\u{1b}[2Jb"), "{html}");
    }

    #[test]
    fn the_nodes_page_says_a_silent_node_and_escapes_names() {
        let nodes = serde_json::json!([
            { "name": "<b>n1</b>", "silent": true, "silent_secs": 300, "heard": "t",
              "crashes_24h": 2, "last_crash": null, "inventory": { "kernel": "6.1" } },
            { "name": "n2", "silent": false, "silent_secs": 1, "heard": "t",
              "crashes_24h": 0, "last_crash": null, "inventory": null }
        ]);
        let html = env()
            .get_template("nodes.html")
            .unwrap()
            .render(context! { fleet => true, nodes => Value::from_serialize(&nodes), silent => 1, version => "x" })
            .unwrap();
        assert!(
            html.contains("1 silent") && html.contains("silent for 300 s"),
            "{html}"
        );
        assert!(
            html.contains("&lt;b&gt;n1") && !html.contains("<b>n1"),
            "{html}"
        );
        assert!(html.contains("/?node=%3Cb%3En1"), "{html}");
    }

    #[test]
    fn links_keep_the_filters_encoded() {
        let q = ListQuery {
            kind: Some("go_panic".into()),
            q: Some("a&b c".into()),
            namespace: Some(" ".into()),
            ..ListQuery::default()
        };
        assert_eq!(query_without_paging(&q), "kind=go_panic&q=a%26b%20c");
    }
}
