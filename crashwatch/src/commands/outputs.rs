//! The flags of `run` that say where reports go besides stdout, and what is masked in them
//! first ([`crate::outputs`], [`crate::pipeline::redact`]).
use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::{
    outputs::{self as sink, FileOptions, WebhookFormat, WebhookOptions},
    pipeline::redact::Redactor,
};

#[derive(Args, Clone, Debug)]
pub struct OutputArgs {
    /// Also append each report to this file as a JSON line (made 0600; never through a
    /// symlink). Each report is one write(2); the file is synced whenever the agent has
    /// nothing more to write; a torn last line (a power cut) is cut off at the next start.
    #[arg(long, value_name = "PATH")]
    output_file: Option<PathBuf>,
    /// Rotate the output file past this many bytes (PATH.1, PATH.2, ...).
    #[arg(long, value_name = "BYTES", default_value_t = 100 << 20,
          value_parser = clap::value_parser!(u64).range(4096..))]
    output_file_max_bytes: u64,
    /// Rotated output files kept.
    #[arg(long, value_name = "N", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    output_file_keep: u32,
    /// POST each report to this http(s) URL (repeatable: each gets every report). Reports
    /// wait in a spool under --state-dir while the endpoint is down and are delivered in
    /// order when it returns, across restarts.
    #[arg(long, value_name = "URL")]
    webhook: Vec<String>,
    /// A header sent with every webhook request, `Name: value` (repeatable).
    #[arg(long, value_name = "NAME: VALUE", value_parser = parse_header)]
    webhook_header: Vec<(String, String)>,
    /// What a webhook request carries: the report's JSON, or Slack's `{"text": ...}`.
    #[arg(long, value_enum, default_value_t = WebhookFormat::Json)]
    webhook_format: WebhookFormat,
    /// Reports per webhook request, for a receiver that takes a JSON array of reports: up
    /// to N waiting reports go in one POST as `[report, …]` (JSON format only). 1, the
    /// default: one report object per POST.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    webhook_batch: u32,
    /// Trust only the PEM certificates in this file for https webhooks (default: the
    /// system's CA store).
    #[arg(long, value_name = "FILE")]
    webhook_ca: Option<PathBuf>,
    /// Longest wait between two attempts at an endpoint that is down (it doubles from 1 s).
    #[arg(long, value_name = "SECS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    webhook_retry_max: u64,
    /// MiB of reports each network output's spool may hold; past it the oldest are dropped
    /// (and counted).
    #[arg(long, value_name = "MIB", default_value_t = 64,
          value_parser = clap::value_parser!(u64).range(1..))]
    spool_max_mib: u64,
    /// Send each report to the fleet's hub (`crashwatch hub`) at this base URL
    /// (`https://crashwatch-hub:9722`); repeatable: later ones are tried when the first
    /// cannot be reached. Spooled and retried as webhooks are; a heartbeat every 30 s tells
    /// the hub this node is alive. Needs --hub-token-file.
    #[arg(long, value_name = "URL")]
    hub: Vec<String>,
    /// The hub's ingest token (the file's first line), sent as `Authorization: Bearer`.
    #[arg(long, value_name = "FILE")]
    hub_token_file: Option<PathBuf>,
    /// Trust only the PEM certificates in this file for an https hub.
    #[arg(long, value_name = "FILE")]
    hub_ca: Option<PathBuf>,
    /// Send each crash to Sentry as an event (its envelope endpoint, from the project's DSN,
    /// `https://KEY@sentry.example.com/PROJECT`): signal deaths as native events with every
    /// thread, the images' build ids and the minidump (`--dumps`), runtime deaths as their
    /// platform's exception. Spooled and retried as webhooks are; Sentry's rate limits are
    /// honoured. See docs/sentry.md.
    #[arg(long, value_name = "DSN")]
    sentry_dsn: Option<String>,
    /// Send each report as an OpenTelemetry log record (OTLP/HTTP, protobuf) to this
    /// collector: `http://collector:4318` (`/v1/logs` is added) or the full logs URL. Spooled
    /// and retried as webhooks are.
    #[arg(long, value_name = "URL")]
    otlp_endpoint: Option<String>,
    /// A header sent with every OTLP request, `Name: value` (repeatable).
    #[arg(long, value_name = "NAME: VALUE", value_parser = parse_header)]
    otlp_header: Vec<(String, String)>,
    /// Include the command line (`process.command_args`) in OTLP records; off by default, as
    /// the semantic conventions advise (a command line can hold secrets --redact misses).
    #[arg(long)]
    otlp_cmdline: bool,
    /// Trust only the PEM certificates in this file for an https OTLP endpoint.
    #[arg(long, value_name = "FILE")]
    otlp_ca: Option<PathBuf>,
    /// Mask every match of this regular expression (Rust regex syntax) in command lines,
    /// error messages, runtime output and last words before anything is stored or sent;
    /// repeatable. Matches read `[REDACTED]`.
    #[arg(long, value_name = "REGEX")]
    redact: Vec<String>,
    /// Leave out the default rules (values of password=, token=, secret=, api_key=, ...;
    /// Authorization: headers; AWS access key ids; a --password flag's next argument).
    #[arg(long)]
    no_default_redact: bool,
    /// Serve Prometheus metrics at http://ADDR/metrics (with /healthz and /readyz) and the
    /// crash page at http://ADDR/ with its JSON API (docs/api.md); `off` for none. ADDR is
    /// an address and port (`[::1]:9721`) or a host name and port (`localhost:9721`,
    /// resolved at start to its first IPv4 address, else its first). The default is
    /// loopback only. Without --listen-token-file the page and API answer this
    /// host's own loopback connections only, on any address. The agent keeps running, said
    /// at start, when it cannot listen.
    #[arg(long, value_name = "ADDR|off", default_value = crate::web::DEFAULT_LISTEN,
          value_parser = parse_listen)]
    listen: Listen,
    /// A file whose first line is the bearer token the crash page and the API require
    /// (`Authorization: Bearer TOKEN`, or the browser's /login): at least 16 printable
    /// characters, e.g. from `openssl rand -hex 32`. /metrics, /healthz and /readyz need
    /// none unless --listen-token-metrics.
    #[arg(long, value_name = "FILE")]
    listen_token_file: Option<PathBuf>,
    /// /metrics requires the --listen-token-file token too (Prometheus: `authorization`
    /// in the scrape config).
    #[arg(long, requires = "listen_token_file")]
    listen_token_metrics: bool,
}

#[derive(Clone, Copy, Debug)]
struct Listen(Option<std::net::SocketAddr>);

fn parse_header(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?}: `Name: value`"))?;
    let k = k.trim();
    let ok = !k.is_empty()
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b));
    if !ok || v.bytes().any(|b| b == b'\r' || b == b'\n') {
        return Err(format!(
            "{s:?}: a header name of letters, digits and -, then `: value`"
        ));
    }
    Ok((k.to_string(), v.trim().to_string()))
}

/// `off`, an address and port, or a host name and port: a name is resolved once, here, to its
/// first IPv4 address when it has one (`localhost` is 127.0.0.1 as /etc/hosts says), else
/// its first.
fn parse_listen(s: &str) -> Result<Listen, String> {
    use std::net::ToSocketAddrs;
    if s == "off" {
        return Ok(Listen(None));
    }
    if let Ok(a) = s.parse() {
        return Ok(Listen(Some(a)));
    }
    let usage =
        "an address or host name, and a port (127.0.0.1:9721, [::1]:9721, localhost:9721), or off";
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err(format!("{s:?}: no port: {usage}"));
    };
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(format!("{s:?}: {usage}"));
    }
    let found: Vec<std::net::SocketAddr> = s
        .to_socket_addrs()
        .map_err(|e| format!("{s:?}: the name {host:?} does not resolve ({e}); {usage}"))?
        .collect();
    found
        .iter()
        .find(|a| a.is_ipv4())
        .or(found.first())
        .map(|a| Listen(Some(*a)))
        .ok_or_else(|| format!("{s:?}: the name {host:?} does not resolve to an address"))
}

impl OutputArgs {
    pub fn file(&self) -> Option<FileOptions> {
        Some(FileOptions {
            path: self.output_file.clone()?,
            max_bytes: self.output_file_max_bytes,
            keep: self.output_file_keep,
        })
    }

    /// One set of options per `--webhook`, each with a spool of its own under `state_dir`.
    pub fn webhooks(&self, state_dir: &std::path::Path) -> Vec<WebhookOptions> {
        self.webhook
            .iter()
            .map(|url| WebhookOptions {
                headers: self.webhook_header.clone(),
                format: self.webhook_format,
                batch: self.webhook_batch as usize,
                ca: self.webhook_ca.clone(),
                ..self.http_output("webhook", url.clone(), state_dir)
            })
            .collect()
    }

    /// Every network output: the webhooks, OTLP and the hub, each with its spool.
    pub fn network(&self, state_dir: &std::path::Path) -> anyhow::Result<Vec<WebhookOptions>> {
        let mut all = self.webhooks(state_dir);
        all.extend(self.otlp(state_dir));
        all.extend(self.hub(state_dir)?);
        all.extend(self.sentry(state_dir)?);
        Ok(all)
    }

    /// The Sentry output's options: the envelope URL and the auth header from the DSN.
    fn sentry(&self, state_dir: &std::path::Path) -> anyhow::Result<Option<WebhookOptions>> {
        let Some(dsn) = &self.sentry_dsn else {
            return Ok(None);
        };
        let parsed: sentry_types::Dsn = dsn.parse().map_err(|e| {
            anyhow::anyhow!("--sentry-dsn: {e} (a DSN is https://KEY@HOST/PROJECT)")
        })?;
        let auth = parsed.to_auth(Some(concat!("crashwatch/", env!("CARGO_PKG_VERSION"))));
        Ok(Some(WebhookOptions {
            sentry: true,
            headers: vec![("X-Sentry-Auth".into(), auth.to_string())],
            ..self.http_output("sentry", parsed.envelope_api_url().to_string(), state_dir)
        }))
    }

    /// The hub output's options: its first URL, the others as fallbacks, the token.
    fn hub(&self, state_dir: &std::path::Path) -> anyhow::Result<Option<WebhookOptions>> {
        use anyhow::Context;
        let reports = |base: &String| format!("{}/api/v1/reports", base.trim_end_matches('/'));
        let Some(first) = self.hub.first() else {
            if self.hub_token_file.is_some() {
                anyhow::bail!("--hub-token-file without --hub: where should reports go?");
            }
            return Ok(None);
        };
        let Some(file) = &self.hub_token_file else {
            anyhow::bail!("--hub needs --hub-token-file (the hub's ingest token)");
        };
        let token = crate::web::read_token(file)
            .with_context(|| format!("--hub-token-file {}", file.display()))?;
        Ok(Some(WebhookOptions {
            headers: vec![("Authorization".into(), format!("Bearer {token}"))],
            ca: self.hub_ca.clone(),
            fallbacks: self.hub[1..].iter().map(reports).collect(),
            heartbeat: true,
            ..self.http_output("hub", reports(first), state_dir)
        }))
    }

    /// The OTLP output's options, with a spool of its own under `state_dir`.
    pub fn otlp(&self, state_dir: &std::path::Path) -> Option<WebhookOptions> {
        let base = self.otlp_endpoint.as_ref()?.trim_end_matches('/');
        let url = if base.ends_with("/v1/logs") {
            base.to_string()
        } else {
            format!("{base}/v1/logs")
        };
        Some(WebhookOptions {
            otlp: Some(self.otlp_cmdline),
            batch: sink::OTLP_BATCH,
            headers: self.otlp_header.clone(),
            ca: self.otlp_ca.clone(),
            ..self.http_output("otlp", url, state_dir)
        })
    }

    /// What every HTTP output shares: its spool, named for its URL (another URL must not
    /// replay this one's reports), and the retry policy.
    fn http_output(
        &self,
        name: &'static str,
        url: String,
        state_dir: &std::path::Path,
    ) -> WebhookOptions {
        let h = crate::model::hex::fnv1a(url.as_bytes());
        WebhookOptions {
            name,
            otlp: None,
            headers: Vec::new(),
            format: WebhookFormat::Json,
            batch: 1,
            ca: None,
            spool_dir: state_dir.join(format!("spool/{name}-{h:016x}")),
            spool_max_bytes: self.spool_max_mib << 20,
            retry_max: std::time::Duration::from_secs(self.webhook_retry_max),
            fallbacks: Vec::new(),
            heartbeat: false,
            sentry: false,
            url,
        }
    }

    pub fn listen(&self) -> Option<std::net::SocketAddr> {
        self.listen.0
    }

    /// The crash page's token, read from `--listen-token-file`.
    pub fn listen_token(&self) -> anyhow::Result<Option<String>> {
        self.listen_token_file
            .as_deref()
            .map(crate::web::read_token)
            .transpose()
    }

    pub fn listen_token_metrics(&self) -> bool {
        self.listen_token_metrics
    }

    pub fn redactor(&self) -> Result<Redactor> {
        Redactor::new(!self.no_default_redact, &self.redact)
    }
}

#[cfg(test)]
mod tests {
    use super::parse_listen;

    #[test]
    fn listen_takes_addresses_and_host_names() {
        let at = |s: &str| parse_listen(s).map(|l| l.0);
        assert_eq!(at("off"), Ok(None));
        assert_eq!(
            at("127.0.0.1:9721"),
            Ok(Some("127.0.0.1:9721".parse().unwrap()))
        );
        assert_eq!(at("[::1]:9811"), Ok(Some("[::1]:9811".parse().unwrap())));
        // A name resolves, to its IPv4 address when it has one (as /etc/hosts has it).
        let local = at("localhost:9811").unwrap().unwrap();
        assert!(local.ip().is_loopback(), "{local}");
        assert_eq!(local.port(), 9811);
        assert!(local.is_ipv4(), "{local}");
        let e = at("no-such-host.invalid:9811").unwrap_err();
        assert!(e.contains("does not resolve"), "{e}");
        let e = at("localhost").unwrap_err();
        assert!(e.contains("port"), "{e}");
    }
}
