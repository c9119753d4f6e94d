//! The HTTP outputs: webhooks (`--webhook URL`) and OTLP/HTTP logs (`--otlp-endpoint`, its
//! body from [`super::otlp`]). One POST per report: the report's JSON (or, with
//! `--webhook-format slack`, a Slack-compatible `{"text": …}`; for OTLP, protobuf), with an
//! `Idempotency-Key` header that is the same for every attempt at one report, so a receiver
//! can drop a duplicate (a POST whose answer was lost is sent again).
//!
//! Every report goes through the spool ([`super::spool`]) first: a sender thread delivers the
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

struct Sender {
    agent: ureq::Agent,
    /// The URL in use: 0 `opts.url`, else `opts.fallbacks[at - 1]`.
    at: usize,
    next_beat: std::time::Instant,
    totals: Arc<super::metrics::Totals>,
    opts: WebhookOptions,
    spool: Arc<Spool>,
    stop: Arc<AtomicBool>,
    counts: Arc<Counts>,
    errors: prometheus_client::metrics::counter::Counter,
    spooled: prometheus_client::metrics::gauge::Gauge,
    delivered: prometheus_client::metrics::counter::Counter,
}

/// What became of one attempt.
enum Outcome {
    Delivered,
    /// Why, and how long the endpoint asked us to wait (`Retry-After`, Sentry's
    /// `X-Sentry-Rate-Limits`).
    Retry(String, Option<Duration>),
    Refused(String),
}

impl Sender {
    fn run(mut self, woken: mpsc::Receiver<()>) {
        let mut failures = 0u32;
        let mut rng = seed();
        let mut said_down = false;
        while !self.stop.load(Ordering::Relaxed) {
            if self.opts.heartbeat && std::time::Instant::now() >= self.next_beat {
                self.beat();
            }
            let Some(next) = self.spool.front() else {
                let _ = woken.recv_timeout(Duration::from_secs(1));
                continue;
            };
            match self.post(&next) {
                Outcome::Delivered => {
                    self.spool.pop(next.seq);
                    self.spooled.dec();
                    self.counts.delivered.fetch_add(1, Ordering::Relaxed);
                    self.delivered.inc();
                    if said_down {
                        tracing::info!("{}: delivering again", self.opts.shown());
                        said_down = false;
                    }
                    failures = 0;
                }
                Outcome::Refused(why) => {
                    self.spool.pop(next.seq);
                    self.spooled.dec();
                    self.errors.inc();
                    self.counts.refused.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        "{}: refused a report for good ({why}): dropped",
                        self.opts.shown()
                    );
                }
                Outcome::Retry(why, asked) => {
                    self.counts.retries.fetch_add(1, Ordering::Relaxed);
                    self.at = (self.at + 1) % (1 + self.opts.fallbacks.len());
                    if !said_down {
                        tracing::warn!(
                            "{}: not delivered ({why}): {} reports wait in the spool, retrying",
                            self.opts.shown(),
                            self.spool.len()
                        );
                        said_down = true;
                    }
                    let cap = self.opts.retry_max.as_millis() as u64;
                    let full = (1000u64 << failures.min(20)).min(cap.max(1));
                    failures += 1;
                    // Jitter: somewhere in the second half, so agents restarted together do
                    // not retry together.
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    let wait = full / 2 + rng % (full / 2 + 1);
                    // An endpoint that said how long to wait (a rate limit) is given that,
                    // within an hour.
                    let wait = asked.map_or(Duration::from_millis(wait), |a| {
                        a.min(Duration::from_secs(3600))
                    });
                    self.sleep(wait);
                }
            }
        }
    }

    /// Sleeps, waking early to stop.
    fn sleep(&self, d: Duration) {
        let end = std::time::Instant::now() + d;
        while !self.stop.load(Ordering::Relaxed) && std::time::Instant::now() < end {
            std::thread::sleep(Duration::from_millis(50).min(d));
        }
    }

    fn target(&self) -> &str {
        match self.at {
            0 => &self.opts.url,
            n => &self.opts.fallbacks[n - 1],
        }
    }

    /// The node's inventory to the hub; a failure waits for the next beat (the reports'
    /// retries say the hub is down).
    fn beat(&mut self) {
        self.next_beat = std::time::Instant::now() + HEARTBEAT;
        let url = heartbeat_url(self.target());
        let t = &self.totals;
        let last = t.last_crash_ns.load(Ordering::Relaxed);
        let body = serde_json::json!({
            "node": crate::pipeline::enrich::hostname(),
            "boot_id": crate::util::boot_id(),
            "agent_version": concat!(env!("CARGO_PKG_VERSION"), " (", env!("CRASHWATCH_REVISION"), ")"),
            "kernel": crate::kernel::probe::kernel_release(),
            "attached": t.attached.lock().map(|a| a.clone()).unwrap_or_default(),
            "crashes": t.crashes.load(Ordering::Relaxed),
            "lost": t.lost.load(Ordering::Relaxed),
            "last_crash": (last > 0).then(|| crate::model::clock::rfc3339(last)),
            "spool_depth": self.spool.len(),
            "delivered": self.counts.delivered.load(Ordering::Relaxed),
            "refused": self.counts.refused.load(Ordering::Relaxed),
        });
        let mut req = self
            .agent
            .post(&url)
            .header("Content-Type", "application/json");
        for (k, v) in &self.opts.headers {
            req = req.header(k, v);
        }
        match req.send(body.to_string().as_bytes()) {
            Ok(r) if r.status().is_success() => {}
            Ok(r) => tracing::debug!(
                "{}: heartbeat answered HTTP {}",
                self.opts.shown(),
                r.status()
            ),
            Err(e) => tracing::debug!("{}: heartbeat not sent: {e}", self.opts.shown()),
        }
    }

    fn post(&self, s: &super::spool::Spooled) -> Outcome {
        let body = match std::fs::read(&s.path) {
            Ok(b) => b,
            Err(e) => return Outcome::Refused(format!("the spooled file is unreadable: {e}")),
        };
        let mut req = self
            .agent
            .post(self.target())
            .header(
                "Content-Type",
                match (self.opts.otlp, self.opts.sentry) {
                    (_, true) => "application/x-sentry-envelope",
                    (Some(_), _) => "application/x-protobuf",
                    (None, _) => "application/json",
                },
            )
            .header("Idempotency-Key", &s.key)
            .header(
                "User-Agent",
                concat!("crashwatch/", env!("CARGO_PKG_VERSION")),
            );
        for (k, v) in &self.opts.headers {
            req = req.header(k, v);
        }
        match req.send(&body[..]) {
            Ok(resp) => {
                let code = resp.status().as_u16();
                match code {
                    200..=299 => Outcome::Delivered,
                    408 | 429 | 500..=599 => {
                        Outcome::Retry(format!("HTTP {code}"), retry_after(resp.headers()))
                    }
                    _ => Outcome::Refused(format!("HTTP {code}")),
                }
            }
            Err(e) => Outcome::Retry(e.to_string(), None),
        }
    }
}

/// How long an answer asks the sender to wait: Sentry's `X-Sentry-Rate-Limits`
/// (`SECONDS:CATEGORIES:SCOPE, …`: the longest for events or all categories), else
/// `Retry-After` in seconds.
fn retry_after(h: &ureq::http::HeaderMap) -> Option<Duration> {
    let get = |k: &str| h.get(k).and_then(|v| v.to_str().ok());
    let limits = get("x-sentry-rate-limits").and_then(|v| {
        v.split(',')
            .filter_map(|l| {
                let mut parts = l.trim().split(':');
                let secs: u64 = parts.next()?.trim().parse().ok()?;
                let cats = parts.next().unwrap_or("");
                (cats.is_empty() || cats.split(';').any(|c| c == "error" || c == "default"))
                    .then_some(secs)
            })
            .max()
    });
    limits
        .or_else(|| get("retry-after")?.trim().parse().ok())
        .map(Duration::from_secs)
}

/// The hub's heartbeat URL beside its reports' URL.
fn heartbeat_url(reports: &str) -> String {
    match reports.strip_suffix("/api/v1/reports") {
        Some(base) => format!("{base}/api/v1/heartbeat"),
        None => format!("{}/api/v1/heartbeat", reports.trim_end_matches('/')),
    }
}

fn seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    (t ^ (std::process::id() as u64).rotate_left(32)) | 1
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
