//! The sender thread of one HTTP output: delivers the spool's oldest report, retries with
//! backoff what the endpoint could not take, honours what it asks (`Retry-After`, Sentry's
//! rate limits), fails over to the fallback URLs, and sends the hub its heartbeat.
use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc,
    },
    time::Duration,
};

use super::{Counts, WebhookOptions, HEARTBEAT};
use crate::outputs::spool::{Spool, Spooled};

pub(super) struct Sender {
    pub(super) agent: ureq::Agent,
    /// The URL in use: 0 `opts.url`, else `opts.fallbacks[at - 1]`.
    pub(super) at: usize,
    pub(super) next_beat: std::time::Instant,
    pub(super) totals: Arc<crate::outputs::metrics::Totals>,
    pub(super) opts: WebhookOptions,
    pub(super) spool: Arc<Spool>,
    pub(super) stop: Arc<AtomicBool>,
    pub(super) counts: Arc<Counts>,
    pub(super) errors: prometheus_client::metrics::counter::Counter,
    pub(super) spooled: prometheus_client::metrics::gauge::Gauge,
    pub(super) delivered: prometheus_client::metrics::counter::Counter,
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
    pub(super) fn run(mut self, woken: mpsc::Receiver<()>) {
        let mut failures = 0u32;
        let mut rng = seed();
        let mut said_down = false;
        // A batch that failed is retried as it was: the same reports, the same key.
        let mut batch: Vec<Spooled> = Vec::new();
        while !self.stop.load(Ordering::Relaxed) {
            if self.opts.heartbeat && std::time::Instant::now() >= self.next_beat {
                self.beat();
            }
            if batch.is_empty() {
                batch = self.spool.front_n(self.opts.batch.max(1));
            }
            if batch.is_empty() {
                let _ = woken.recv_timeout(Duration::from_secs(1));
                continue;
            }
            match self.post(&batch) {
                Outcome::Delivered => {
                    let n = batch.len() as u64;
                    for s in batch.drain(..) {
                        self.spool.pop(s.seq);
                    }
                    self.spooled.dec_by(n as i64);
                    self.counts.delivered.fetch_add(n, Ordering::Relaxed);
                    self.delivered.inc_by(n);
                    if said_down {
                        tracing::info!("{}: delivering again", self.opts.shown());
                        said_down = false;
                    }
                    failures = 0;
                }
                Outcome::Refused(why) => {
                    let n = batch.len() as u64;
                    for s in batch.drain(..) {
                        self.spool.pop(s.seq);
                    }
                    self.spooled.dec_by(n as i64);
                    self.errors.inc_by(n);
                    self.counts.refused.fetch_add(n, Ordering::Relaxed);
                    tracing::warn!(
                        "{}: refused {} for good ({why}): dropped",
                        self.opts.shown(),
                        if n == 1 {
                            "a report".to_string()
                        } else {
                            format!("a request of {n} reports")
                        }
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

    /// One request carrying `batch`: a report's own body when it is alone; OTLP's bodies
    /// concatenated (serialized export requests concatenated are one request whose records
    /// are all of theirs: protobuf merges repeated fields); a webhook's as a JSON array.
    fn post(&self, batch: &[Spooled]) -> Outcome {
        let mut bodies = Vec::with_capacity(batch.len());
        for s in batch {
            match std::fs::read(&s.path) {
                Ok(b) => bodies.push(b),
                Err(e) => return Outcome::Refused(format!("a spooled file is unreadable: {e}")),
            }
        }
        let (body, key) = match batch {
            [one] => (bodies.pop().unwrap_or_default(), one.key.clone()),
            _ => (join(bodies, self.opts.otlp.is_some()), batch_key(batch)),
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
            .header("Idempotency-Key", &key)
            .header(
                "User-Agent",
                concat!("crashwatch/", env!("CARGO_PKG_VERSION")),
            );
        for (k, v) in &self.opts.headers {
            req = req.header(k, v);
        }
        match req.send(&body[..]) {
            Ok(mut resp) => {
                // Read to its end (a bounded amount), so the connection goes back to the
                // pool for the next request instead of being closed.
                let _ = std::io::copy(
                    &mut std::io::Read::take(resp.body_mut().as_reader(), ANSWER_READ),
                    &mut std::io::sink(),
                );
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

/// Bytes of an answer read before the connection is given up rather than reused.
const ANSWER_READ: u64 = 64 << 10;

/// Several spooled bodies as one: OTLP's concatenated, JSON reports as an array.
fn join(bodies: Vec<Vec<u8>>, otlp: bool) -> Vec<u8> {
    let total: usize = bodies.iter().map(|b| b.len() + 1).sum();
    let mut out = Vec::with_capacity(total + 2);
    if otlp {
        for b in bodies {
            out.extend_from_slice(&b);
        }
        return out;
    }
    out.push(b'[');
    for (i, b) in bodies.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b.trim_ascii_end());
    }
    out.push(b']');
    out
}

/// A batch's idempotency key: the same for every attempt at the same reports.
fn batch_key(batch: &[Spooled]) -> String {
    let keys: Vec<&str> = batch.iter().map(|s| s.key.as_str()).collect();
    let h = crate::model::hex::fnv1a(keys.join(",").as_bytes());
    format!("crashwatch-batch-{h:016x}")
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
pub(super) fn heartbeat_url(reports: &str) -> String {
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
