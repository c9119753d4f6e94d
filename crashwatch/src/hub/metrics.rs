//! Hub: `/metrics`. Two kinds of series: this replica's counters (`crashwatch_hub_*`: what it
//! received and what became of it; each replica its own, so Prometheus sums them), and the
//! fleet's (`crashwatch_fleet_*`: read from the database at each scrape, the same on every
//! replica — aggregate them with `max`, not `sum`). Fleet series are gauges over a window
//! (crashes and terminations in the last 24 hours by hour buckets, nodes heard and silent,
//! workloads and nodes in a crash loop now): the hourly counts behind them are thinned after
//! 31 days, so a total would go down. At most [`MAX_SERIES`] label sets per family, the
//! largest first; how many were left out is a series too. Terminations are counted here, never
//! clustered.
use std::sync::atomic::{AtomicU64, Ordering};

use axum::{extract::State, http::header, response::IntoResponse};
use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use super::{read, Hub};
use crate::model::clock;

/// Label sets per fleet family at most.
const MAX_SERIES: i64 = 1000;
const HOUR_NS: u64 = 3_600_000_000_000;

type Labels = Vec<(&'static str, String)>;

pub(super) async fn serve(State(hub): State<Hub>) -> impl IntoResponse {
    let mut registry = Registry::default();
    replica(&hub, &mut registry);
    let up = Gauge::<i64>::default();
    match fleet(&hub, &mut registry).await {
        Ok(()) => {
            up.set(1);
        }
        Err(e) => tracing::debug!("/metrics: the fleet's series could not be read: {e:#}"),
    }
    registry.register(
        "crashwatch_hub_database_up",
        "1 when this scrape could read the fleet's series from the database",
        up,
    );
    let mut text = String::new();
    let _ = encode(&mut text, &registry);
    (
        [(
            header::CONTENT_TYPE,
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        )],
        text,
    )
}

/// This replica's counters.
fn replica(hub: &Hub, registry: &mut Registry) {
    let c = &hub.counts;
    let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let reports = Family::<Vec<(&'static str, &'static str)>, Counter>::default();
    for (result, v) in [
        ("stored", n(&c.stored)),
        ("duplicate", n(&c.duplicates)),
        ("termination", n(&c.terminations)),
        ("refused", n(&c.refused)),
        ("failed", n(&c.failed)),
    ] {
        reports.get_or_create(&vec![("result", result)]).inc_by(v);
    }
    registry.register(
        "crashwatch_hub_reports",
        "Reports this replica received, by what became of them",
        reports,
    );
    let heartbeats = Counter::<u64>::default();
    heartbeats.inc_by(n(&c.heartbeats));
    registry.register(
        "crashwatch_hub_heartbeats",
        "Heartbeats this replica stored",
        heartbeats,
    );
}

/// Registers `rows` (labels, value) as the gauge family `name`, with its left-out count.
fn family(registry: &mut Registry, name: &str, help: &str, rows: Vec<(Labels, i64)>) -> u64 {
    let f = Family::<Labels, Gauge>::default();
    let dropped = rows.len().saturating_sub(MAX_SERIES as usize) as u64;
    for (labels, v) in rows.into_iter().take(MAX_SERIES as usize) {
        f.get_or_create(&labels).set(v);
    }
    registry.register(name, help, f);
    dropped
}

/// The fleet's series, from the database.
async fn fleet(hub: &Hub, registry: &mut Registry) -> anyhow::Result<()> {
    let client = hub.pool.get().await?;
    let now = clock::now_ns();
    let since_hour = (now / HOUR_NS).saturating_sub(23) as i64;
    let mut dropped = 0;
    for (name, help, names, sql) in [
        (
            "crashwatch_fleet_crashes_24h",
            "Crashes in the fleet in the last 24 hours (hour buckets), by kind, namespace and \
             workload",
            ["kind", "namespace", "workload"],
            "SELECT c.kind, h.namespace, h.workload, SUM(h.count)::BIGINT
             FROM cluster_hours h JOIN clusters c ON c.id = h.cluster
             WHERE h.hour >= $1 GROUP BY 1, 2, 3 ORDER BY 4 DESC LIMIT $2",
        ),
        (
            "crashwatch_fleet_terminations_24h",
            "Terminations (SIGTERM, SIGKILL and the like: not crashes) in the last 24 hours, \
             by namespace, workload and signal",
            ["namespace", "workload", "signal"],
            "SELECT namespace, workload, signal, SUM(count)::BIGINT FROM terminations
             WHERE hour >= $1 GROUP BY 1, 2, 3 ORDER BY 4 DESC LIMIT $2",
        ),
    ] {
        let found = client.query(sql, &[&since_hour, &(MAX_SERIES + 1)]).await?;
        let rows = found
            .iter()
            .map(|r| {
                let labels = (0..3).map(|i| (names[i], r.get::<_, String>(i))).collect();
                (labels, r.get::<_, i64>(3))
            })
            .collect();
        dropped += family(registry, name, help, rows);
    }
    let silent_since = now.saturating_sub(read::SILENT_NS) as i64;
    let nodes = client
        .query_one(
            "SELECT COUNT(*) FILTER (WHERE heard_ns >= $1), COUNT(*) FILTER (WHERE heard_ns < $1)
             FROM nodes",
            &[&silent_since],
        )
        .await?;
    let rows = vec![
        (vec![("state", "heard".to_string())], nodes.get::<_, i64>(0)),
        (
            vec![("state", "silent".to_string())],
            nodes.get::<_, i64>(1),
        ),
    ];
    family(
        registry,
        "crashwatch_fleet_nodes",
        "Nodes whose agent was heard from within three heartbeats, and silent ones",
        rows,
    );
    drop(client);
    let filter = crate::outputs::store::Filter {
        loop_count: hub.loop_count,
        loop_window_ns: hub.loop_window_ns,
        ..Default::default()
    };
    let loops = read::loops(&hub.pool, &filter).await?;
    let rows = ["workload", "node"]
        .into_iter()
        .map(|scope| {
            let n = loops.iter().filter(|l| l.scope == scope).count() as i64;
            (vec![("scope", scope.to_string())], n)
        })
        .collect();
    family(
        registry,
        "crashwatch_fleet_loops",
        "Workloads and nodes in a crash loop now (--loop-count crashes within --loop-window)",
        rows,
    );
    let left_out = Gauge::<i64>::default();
    left_out.set(dropped as i64);
    registry.register(
        "crashwatch_fleet_series_dropped",
        "Label sets left out of this scrape's fleet families (over 1000 each; the largest kept)",
        left_out,
    );
    Ok(())
}
