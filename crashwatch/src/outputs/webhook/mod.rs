//! The HTTP outputs: webhooks (`--webhook URL`) and OTLP/HTTP logs (`--otlp-endpoint`, its
//! body from [`super::otlp`]). One POST per report: the report's JSON (or, with
//! `--webhook-format slack`, a Slack-compatible `{"text": …}`; for OTLP, protobuf), with an
//! `Idempotency-Key` header that is the same for every attempt at one report, so a receiver
//! can drop a duplicate (a POST whose answer was lost is sent again).
//!
//! Every report goes through the spool ([`super::spool`]) first: a sender thread ([`sender`]) delivers the
//! oldest waiting report, and only a 2xx answer removes it. A connection error, a timeout, a
//! 408, 429 or 5xx is retried after an exponential backoff with jitter (1 s doubling up to
//! `--webhook-retry-max`), the reports behind it waiting in order, across agent restarts;
//! any other 4xx is a refusal for good: that report is dropped, counted and said. https
//! verifies with the system's CA store, or only with `--webhook-ca FILE`'s certificates.
//! ureq (blocking) fits: the sender is a thread of its own.
use std::{
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc, Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{bail, Context, Result};

use super::{spool::Spool, Item, Output};

mod sender;
use sender::{heartbeat_url, Sender};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum WebhookFormat {
    /// The report's JSON object, as `--output json` prints it.
    Json,
    /// `{"text": "…"}`: one line per crash, for Slack-compatible incoming webhooks.
    Slack,
}

#[derive(Clone, Debug)]
pub struct WebhookOptions {
    /// `webhook` or `otlp`: in log lines and the exported error count.
    pub name: &'static str,
    /// OTLP logs (with the command line or not) instead of the webhook's formats.
    pub otlp: Option<bool>,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub format: WebhookFormat,
    /// Reports per request at most: OTLP's log records, a webhook's JSON array
    /// (`--webhook-batch`); 1 sends each report alone, as its own body.
    pub batch: usize,
    /// PEM certificates trusted instead of the system's.
    pub ca: Option<PathBuf>,
    pub spool_dir: PathBuf,
    pub spool_max_bytes: u64,
    pub retry_max: Duration,
    /// URLs tried in turn after `url` when it cannot take a report (the hub's other
    /// addresses); the sender stays with the one that answered.
    pub fallbacks: Vec<String>,
    /// The hub: every [`HEARTBEAT`], POST the node's inventory to `/api/v1/heartbeat` beside
    /// the reports' path.
    pub heartbeat: bool,
    /// Sentry: each report as an event in an envelope ([`super::sentry`]).
    pub sentry: bool,
}

/// Log records per OTLP request at most (an export request carries many; the collector's
/// usual limits are far above 100 crash reports).
pub const OTLP_BATCH: usize = 100;

/// How often the hub hears from a node that has nothing to report.
pub const HEARTBEAT: Duration = Duration::from_secs(30);

impl WebhookOptions {
    /// The output as the log and `check` name it: `webhook https://host/***`, credentials
    /// masked ([`crate::pipeline::redact::mask_url`]).
    pub fn shown(&self) -> String {
        format!(
            "{} {}",
            self.name,
            crate::pipeline::redact::mask_url(&self.url)
        )
    }
}

/// Delivery counts, shared with the sender thread.
#[derive(Default)]
struct Counts {
    delivered: AtomicU64,
    refused: AtomicU64,
    retries: AtomicU64,
}

pub struct Webhook {
    opts: WebhookOptions,
    spool: Arc<Spool>,
    wake: mpsc::Sender<()>,
    stop: Arc<AtomicBool>,
    sender: Option<JoinHandle<()>>,
    counts: Arc<Counts>,
    errors: prometheus_client::metrics::counter::Counter,
    spooled: prometheus_client::metrics::gauge::Gauge,
}

impl Webhook {
    /// Checks the options, opens the spool (with what an earlier agent left) and starts the
    /// sender. `errors`, `spooled`: the exported counts.
    pub fn start(opts: WebhookOptions, metrics: &super::metrics::Metrics) -> Result<Webhook> {
        let (errors, spooled) = (metrics.sink_errors(opts.name), metrics.spooled.clone());
        let totals = metrics.totals.clone();
        let delivered = metrics.delivered(opts.name);
        let uri: ureq::http::Uri = opts.url.parse().with_context(|| opts.shown())?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
            bail!("{}: an http:// or https:// URL", opts.shown());
        }
        if opts.batch > 1 && opts.otlp.is_none() && opts.format != WebhookFormat::Json {
            bail!(
                "{}: --webhook-batch takes the JSON format only (a Slack message is one text)",
                opts.shown()
            );
        }
        let agent = client(&opts)?;
        let spool = Arc::new(Spool::open(&opts.spool_dir, opts.spool_max_bytes)?);
        spooled.inc_by(spool.len() as i64);
        let (wake, woken) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(Counts::default());
        let sender = {
            let (spool, stop, counts) = (spool.clone(), stop.clone(), counts.clone());
            let (opts, errors, spooled) = (opts.clone(), errors.clone(), spooled.clone());
            let delivered = delivered.clone();
            std::thread::Builder::new()
                .name("webhook".into())
                .spawn(move || {
                    Sender {
                        agent,
                        at: 0,
                        next_beat: std::time::Instant::now(),
                        totals,
                        opts,
                        spool,
                        stop,
                        counts,
                        errors,
                        spooled,
                        delivered,
                    }
                    .run(woken)
                })?
        };
        Ok(Webhook {
            opts,
            spool,
            wake,
            stop,
            sender: Some(sender),
            counts,
            errors,
            spooled,
        })
    }
}

impl Webhook {
    /// One request to the endpoint, as `crashwatch check --sinks` makes it: a test message
    /// for a webhook (`{"crashwatch": "check", ...}`, or a Slack text), an empty export for
    /// OTLP. Ok: what the endpoint answered.
    pub fn probe(opts: &WebhookOptions) -> Result<String> {
        let agent = client(opts)?;
        let host = crate::pipeline::enrich::hostname();
        let (body, ctype) = match (opts.otlp, opts.format) {
            _ if opts.sentry => (
                super::sentry::check_envelope(&host),
                "application/x-sentry-envelope",
            ),
            (Some(_), _) => (
                prost::Message::encode_to_vec(
                    &opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest::default(),
                ),
                "application/x-protobuf",
            ),
            (None, WebhookFormat::Slack) => (
                serde_json::to_vec(&serde_json::json!({
                    "text": format!("crashwatch check: {host} sends its crash reports here")
                }))?,
                "application/json",
            ),
            (None, WebhookFormat::Json) => (
                serde_json::to_vec(&serde_json::json!({ "crashwatch": "check", "host": host }))?,
                "application/json",
            ),
        };
        // The hub takes reports only: it is asked through a heartbeat.
        let (url, body) = match opts.heartbeat {
            true => (
                heartbeat_url(&opts.url),
                serde_json::to_vec(&serde_json::json!({ "node": host, "check": true }))?,
            ),
            false => (opts.url.clone(), body),
        };
        let mut req = agent.post(&url).header("Content-Type", ctype).header(
            "Idempotency-Key",
            format!("crashwatch-check-{}", crate::model::clock::now_ns()),
        );
        for (k, v) in &opts.headers {
            req = req.header(k, v);
        }
        let resp = req.send(&body[..]).map_err(|e| anyhow::anyhow!("{e}"))?;
        let code = resp.status().as_u16();
        if !(200..300).contains(&code) {
            bail!("the endpoint answered HTTP {code}");
        }
        Ok(format!(
            "{} answered HTTP {code}",
            crate::pipeline::redact::mask_url(&opts.url)
        ))
    }
}

fn client(opts: &WebhookOptions) -> Result<ureq::Agent> {
    use ureq::tls::{Certificate, RootCerts, TlsConfig};
    let roots = match &opts.ca {
        Some(p) => {
            let pem =
                std::fs::read(p).with_context(|| format!("{} CA {}", opts.name, p.display()))?;
            let certs: Vec<Certificate<'static>> = ureq::tls::parse_pem(&pem)
                .filter_map(|i| match i {
                    Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                    _ => None,
                })
                .collect();
            if certs.is_empty() {
                bail!("{} CA {}: no PEM certificate in it", opts.name, p.display());
            }
            RootCerts::new_with_certs(&certs)
        }
        None => RootCerts::PlatformVerifier,
    };
    let config = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .http_status_as_error(false)
        .tls_config(TlsConfig::builder().root_certs(roots).build())
        .build();
    Ok(ureq::Agent::new_with_config(config))
}

impl Output for Webhook {
    fn write(&mut self, item: &Item) -> Result<()> {
        let body = match (self.opts.otlp, self.opts.format) {
            _ if self.opts.sentry => super::sentry::envelope(&item.report),
            (Some(cmdline), _) => super::otlp::encode(&item.report, cmdline),
            (None, WebhookFormat::Json) => item.json.clone().into_bytes(),
            (None, WebhookFormat::Slack) => serde_json::to_vec(&serde_json::json!({
                "text": slack_text(&item.report)
            }))?,
        };
        let dropped = self.spool.push(&idempotency_key(&item.report), &body)?;
        self.spooled.inc_by(1 - dropped as i64);
        if dropped > 0 {
            self.errors.inc_by(dropped);
            tracing::warn!(
                "{}: the spool is full: dropped the {dropped} oldest reports",
                self.opts.shown()
            );
        }
        let _ = self.wake.send(());
        Ok(())
    }

    fn delivers_on_write(&self) -> bool {
        false
    }

    fn shown(&self) -> Option<String> {
        Some(self.opts.shown())
    }

    fn close(&mut self) -> Option<String> {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.wake.send(());
        if let Some(t) = self.sender.take() {
            let _ = t.join();
        }
        Some(format!(
            "{}: {} reports delivered, {} refused by the endpoint, {} dropped from a full spool, {} retries; {} left in the spool for the next start",
            self.opts.shown(),
            self.counts.delivered.load(Ordering::Relaxed),
            self.counts.refused.load(Ordering::Relaxed),
            self.spool.dropped(),
            self.counts.retries.load(Ordering::Relaxed),
            self.spool.len()
        ))
    }
}

/// The same for every attempt at one report, and for every agent's report of one crash (an
/// agent and its successor during a handover): the node, its boot, the process (pid and
/// start). A report without its boot or start (written by an older agent, read back) falls
/// back to its time of death.
pub fn idempotency_key(r: &crate::model::report::Report) -> String {
    let mut id = Vec::with_capacity(96);
    id.extend_from_slice(r.host.as_bytes());
    id.push(0);
    if r.boot_id.is_empty() || r.start_time_ns == 0 {
        id.extend_from_slice(r.time.as_bytes());
    } else {
        id.extend_from_slice(r.boot_id.as_bytes());
        id.push(0);
        id.extend_from_slice(&r.start_time_ns.to_le_bytes());
    }
    id.extend_from_slice(&r.pid.to_le_bytes());
    let h = crate::model::hex::fnv1a(&id);
    format!("crashwatch-{h:016x}")
}

/// One line for a chat: what died, how, where; Slack's `&`, `<` and `>` escaped (the rest
/// of the text is a process's own words, shown as text).
pub fn slack_text(r: &crate::model::report::Report) -> String {
    let mut s = format!(
        "crashwatch: {} on {}: {} (pid {}) — {}",
        r.kind,
        r.host,
        r.comm,
        r.pid,
        crate::pipeline::cluster::headline(r)
    );
    if let Some(k) = &r.k8s {
        if let (Some(ns), Some(pod)) = (&k.namespace, &k.pod) {
            s += &format!(" in pod {ns}/{pod}");
        }
    } else if let Some(c) = r.container.as_ref().and_then(|c| c.name.as_ref()) {
        s += &format!(" in container {c}");
    }
    if let Some(c) = &r.cluster {
        s += &format!(
            " (cluster #{}, {} crashes{})",
            c.id,
            c.count,
            if c.looping { ", crash loop" } else { "" }
        );
    }
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_per_report_and_slack_text_is_escaped() {
        let r = crate::model::report::Report {
            host: "node-1".into(),
            time: "2026-12-02T13:00:00.000000001Z".into(),
            pid: 42,
            kind: "signal",
            comm: "<script>".into(),
            ..Default::default()
        };
        let other = crate::model::report::Report {
            pid: 43,
            ..r.clone()
        };
        assert_eq!(idempotency_key(&r), idempotency_key(&r.clone()));
        assert_ne!(idempotency_key(&r), idempotency_key(&other));
        let t = slack_text(&r);
        assert!(t.contains("&lt;script&gt; (pid 42)"), "{t}");
    }

    #[test]
    fn two_agents_reports_of_one_process_share_the_key() {
        let a = crate::model::report::Report {
            host: "node-1".into(),
            time: "2026-12-02T13:00:00.000000001Z".into(),
            pid: 42,
            boot_id: "b0".into(),
            start_time_ns: 7_000,
            ..Default::default()
        };
        // A successor's clock offset differs by a little: the same process, the same key.
        let b = crate::model::report::Report {
            time: "2026-12-02T13:00:00.000000090Z".into(),
            ..a.clone()
        };
        assert_eq!(idempotency_key(&a), idempotency_key(&b));
        for other in [
            crate::model::report::Report {
                start_time_ns: 8_000,
                ..a.clone()
            },
            crate::model::report::Report {
                boot_id: "b1".into(),
                ..a.clone()
            },
        ] {
            assert_ne!(idempotency_key(&a), idempotency_key(&other));
        }
    }
}
