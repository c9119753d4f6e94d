//! What the agent opens at start besides the kernel side and the outputs
//! (`outputs::Outputs::open`): the crash history with the clusters it knows, and the
//! listener. Each says what it opened, and a history that cannot be opened leaves the agent
//! running with clusters counted from zero.
use std::sync::Arc;

use super::Options;
use crate::{outputs as sink, outputs::store, pipeline::cluster::Clusters};

/// The crash history and the clusters it knows; without one (`--no-store`, or a directory
/// the agent cannot use), clusters are counted from zero in memory and the agent says so.
pub(super) fn open_store(
    opts: &Options,
    metrics: &sink::metrics::Metrics,
) -> (Clusters, Option<store::Writer>) {
    let fresh = || Clusters::new(Vec::new(), Vec::new(), opts.policy);
    let Some(dir) = &opts.state_dir else {
        return (fresh(), None);
    };
    let opened = store::Store::open(dir).and_then(|s| {
        let (known, builds) = (s.clusters()?, s.builds()?);
        Ok((
            known,
            builds,
            store::Writer::spawn(
                s,
                opts.retention,
                metrics.sink_errors("store"),
                metrics.delivered("store"),
            )?,
        ))
    });
    match opened {
        Ok((known, builds, w)) => {
            tracing::info!(
                "crash history in {}: {} clusters known",
                dir.display(),
                known.len()
            );
            (Clusters::new(known, builds, opts.policy), Some(w))
        }
        Err(e) => {
            tracing::warn!(
                "running with less: no crash history ({e:#}); clusters are counted from zero"
            );
            (fresh(), None)
        }
    }
}

/// The HTTP listener: metrics, probes and the crash page. The agent's job is the crashes:
/// without the listener it still reports them, said.
pub(super) async fn start_listener(
    opts: &Options,
    metrics: &Arc<sink::metrics::Metrics>,
    health: &Arc<crate::web::Health>,
    store: Option<&store::Writer>,
    host: &str,
) {
    let Some(addr) = opts.listen else { return };
    let l = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(
                "running with less: no HTTP listener on {addr} ({e}): no /metrics, no crash page"
            );
            return;
        }
    };
    let at = l.local_addr().map_or(addr, |a| a);
    let access = crate::web::Access::new(opts.listen_token.clone());
    let history = match (&opts.state_dir, store) {
        (Some(dir), Some(_)) => Ok(dir.clone()),
        (None, _) => Err(
            "this agent keeps no crash history (--no-store): reports go to its outputs only"
                .to_string(),
        ),
        (Some(dir), None) => Err(format!(
            "this agent could not open its crash history in {} (its log says why)",
            dir.display()
        )),
    };
    tracing::info!(
        "metrics on http://{at}/metrics; crash page on http://{at}/ ({})",
        access.describe(at)
    );
    tokio::spawn(crate::web::serve(
        l,
        metrics.clone(),
        health.clone(),
        crate::web::PageOptions {
            history,
            access,
            token_for_metrics: opts.listen_token_metrics,
            changes: store.map(|s| s.changes()),
            node: crate::pipeline::enrich::container::node_name(host),
            loop_count: opts.policy.loop_count,
            loop_window_ns: opts.policy.loop_window.as_nanos() as u64,
        },
    ));
}
