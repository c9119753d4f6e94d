//! The flags of `run` that say where reports go besides stdout, and what is masked in them
//! first ([`crate::sink`], [`crate::redact`]).
use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::{redact::Redactor, sink::FileOptions};

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
    /// Mask every match of this regular expression (Rust regex syntax) in command lines,
    /// error messages, runtime output and last words before anything is stored or sent;
    /// repeatable. Matches read `[REDACTED]`.
    #[arg(long, value_name = "REGEX")]
    redact: Vec<String>,
    /// Leave out the default rules (values of password=, token=, secret=, api_key=, ...;
    /// Authorization: headers; AWS access key ids; a --password flag's next argument).
    #[arg(long)]
    no_default_redact: bool,
    /// Serve Prometheus metrics at http://ADDR/metrics (and /healthz); `off` for none. The
    /// default is loopback only; the agent keeps running, said at start, when it cannot
    /// listen.
    #[arg(long, value_name = "ADDR|off", default_value = crate::web::DEFAULT_LISTEN,
          value_parser = parse_listen)]
    listen: Listen,
}

#[derive(Clone, Copy, Debug)]
struct Listen(Option<std::net::SocketAddr>);

fn parse_listen(s: &str) -> Result<Listen, String> {
    if s == "off" {
        return Ok(Listen(None));
    }
    s.parse()
        .map(|a| Listen(Some(a)))
        .map_err(|_| format!("{s:?}: an address and port (127.0.0.1:9721, [::]:9721) or off"))
}

impl OutputArgs {
    pub fn file(&self) -> Option<FileOptions> {
        Some(FileOptions {
            path: self.output_file.clone()?,
            max_bytes: self.output_file_max_bytes,
            keep: self.output_file_keep,
        })
    }

    pub fn listen(&self) -> Option<std::net::SocketAddr> {
        self.listen.0
    }

    pub fn redactor(&self) -> Result<Redactor> {
        Redactor::new(!self.no_default_redact, &self.redact)
    }
}
