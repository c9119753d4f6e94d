//! Reading `run`'s configuration again at SIGHUP ([`crate::agent::Reload`]): the same parse
//! as at start (flags and environment as the agent was started with, the file as it is now),
//! so a reload can never accept what a start would refuse.
use std::{collections::BTreeMap, ffi::OsString, path::PathBuf};

use anyhow::{anyhow, bail};
use clap::{Command, FromArgMatches};

use super::{config, Cli, Cmd};
use crate::{agent, outputs as sink};

/// The keys a reload applies; a change to any other is said and waits for the next start.
const RELOADABLE: [&str; 16] = [
    "output-file",
    "output-file-max-bytes",
    "output-file-keep",
    "webhook",
    "webhook-header",
    "webhook-format",
    "webhook-batch",
    "webhook-ca",
    "webhook-retry-max",
    "spool-max-mib",
    "otlp-endpoint",
    "otlp-header",
    "otlp-cmdline",
    "otlp-ca",
    "redact",
    "no-default-redact",
];

/// `key → value` of `--print-config`'s text, for telling what changed (an unset key's value
/// is empty).
fn values(printed: &str) -> BTreeMap<String, String> {
    printed
        .lines()
        .filter_map(|l| {
            if let Some(unset) = l
                .strip_prefix("# ")
                .and_then(|l| l.strip_suffix(" =   # unset"))
            {
                return Some((unset.to_string(), String::new()));
            }
            if l.starts_with('#') {
                return None;
            }
            let (key, rest) = l.split_once(" = ")?;
            let value = rest.rsplit_once("   # ").map_or(rest, |(v, _)| v);
            Some((key.to_string(), value.to_string()))
        })
        .collect()
}

/// A reader of the configuration for the agent started with `argv`, whose configuration
/// `--print-config` would have shown as `started`, with spools under `state_dir`.
pub fn reloader(
    cmd: Command,
    argv: Vec<OsString>,
    started: String,
    state_dir: PathBuf,
) -> agent::Reloader {
    let started = values(&started);
    Box::new(move || {
        let (m, file) = config::parse(&cmd, &argv).map_err(|r| anyhow!("{r}"))?;
        let file = file.ok_or_else(|| anyhow!("not the run command"))?;
        let run = m
            .subcommand_matches("run")
            .ok_or_else(|| anyhow!("not the run command"))?;
        let now = values(&config::print(&cmd, run, &file));
        let fixed_changed = now
            .iter()
            .filter(|(k, v)| !RELOADABLE.contains(&k.as_str()) && started.get(*k) != Some(v))
            .map(|(k, _)| k.clone())
            .collect();
        let Cmd::Run { run, .. } = Cli::from_arg_matches(&m)?.cmd else {
            bail!("not the run command");
        };
        let (output, outputs, history) = (run.output, run.outputs, run.history);
        let redactor = outputs.redactor()?;
        let file = outputs.file();
        let webhooks = outputs.network(&state_dir)?;
        if output == sink::Format::None && file.is_none() && webhooks.is_empty() && history.no_store
        {
            bail!("--output none with --no-store and no --output-file: reports would go nowhere");
        }
        Ok(agent::Reload {
            redactor,
            file,
            webhooks,
            fixed_changed,
        })
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn printed_values_are_read_back() {
        let v = super::values(
            "# header\noutput-file = \"/a b\"   # file\nwebhook = []   # default\n# x =   # unset\n",
        );
        assert_eq!(v["output-file"], "\"/a b\"");
        assert_eq!(v["webhook"], "[]");
        assert_eq!(v["x"], "");
        assert_eq!(v.len(), 3);
    }
}
