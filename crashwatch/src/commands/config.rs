//! The configuration file and the environment. Every flag of `run` can also be given as
//! `CRASHWATCH_<FLAG>` in the environment (upper case, `-` as `_`) or as `<flag> = value` in a
//! TOML file (`--config FILE`; default [`DEFAULT_PATH`] when it exists). Precedence: flag >
//! environment > file > default. `check` takes every key (it takes every flag of `run`), and
//! `report` the keys it shares with `run` (the state directory, the crash-loop window), so
//! they look where the agent writes.
//!
//! Built on clap's own model of the flags rather than a second struct: the file's keys are
//! the flags' long names, checked against clap's list (an unknown key is an error naming it),
//! and its values go through the same parsers and range checks as flags, so a flag added to
//! `run` is configurable in all three places with no line here. clap says where each value
//! came from (`ValueSource`), which gives the precedence and `--print-config`'s annotations.
use std::{collections::HashSet, ffi::OsString, fmt::Write as _, path::PathBuf};

use anyhow::{bail, Context, Result};
use clap::{parser::ValueSource, ArgAction, ArgMatches, Command};

/// Where `run`, `check` and `report` look for a configuration file when `--config` is not
/// given (a missing file there is not an error).
pub const DEFAULT_PATH: &str = "/etc/crashwatch/config.toml";

/// The largest configuration file read: far more than every flag with long values.
const MAX_FILE_BYTES: u64 = 1 << 20;

/// Subcommands that read the configuration.
const CONFIGURED: [&str; 3] = ["run", "check", "report"];

/// Flags that are about reading the configuration, not part of it.
const NOT_KEYS: [&str; 3] = ["config", "print-config", "help"];

/// `CRASHWATCH_OUTPUT_FILE` for `--output-file`.
pub fn env_name(long: &str) -> String {
    format!("CRASHWATCH_{}", long.to_ascii_uppercase().replace('-', "_"))
}

/// The configuration keys: `run`'s long flag names.
fn keys(cmd: &Command) -> Vec<String> {
    cmd.find_subcommand("run")
        .map(|run| {
            run.get_arguments()
                .filter_map(|a| a.get_long())
                .filter(|l| !NOT_KEYS.contains(l))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// The command line with an environment variable for every configuration key.
pub fn command(cmd: Command) -> Command {
    let keys: HashSet<String> = keys(&cmd).into_iter().collect();
    let mut cmd = cmd;
    for name in CONFIGURED {
        let keys = keys.clone();
        cmd = cmd.mut_subcommand(name, move |sub| {
            sub.mut_args(|a| match a.get_long() {
                Some(l) if keys.contains(l) => {
                    let env = env_name(l);
                    a.env(env)
                }
                _ => a,
            })
        });
    }
    cmd
}

/// What the file added to a subcommand's flags, for the second parse and `--print-config`.
pub struct FromFile {
    pub path: Option<PathBuf>,
    /// `--key=value` arguments to append to the command line.
    pub args: Vec<OsString>,
    /// The flags (clap ids) those arguments set.
    pub ids: HashSet<String>,
}

/// Reads the configuration file for subcommand `sub` (matched by the first parse, which
/// already applied flags and the environment) and turns the keys that neither set into
/// arguments. `explicit`: the file came from `--config` or `CRASHWATCH_CONFIG`, so its
/// absence is an error.
pub fn from_file(cmd: &Command, sub: &str, m: &ArgMatches) -> Result<FromFile> {
    let (path, explicit) = match m.get_one::<PathBuf>("config") {
        Some(p) => (p.clone(), true),
        None => (PathBuf::from(DEFAULT_PATH), false),
    };
    let mut out = FromFile {
        path: None,
        args: Vec::new(),
        ids: HashSet::new(),
    };
    let text = match read_bounded(&path) {
        Ok(t) => t,
        Err(e) if !explicit && e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let table: toml::Table =
        toml::from_str(&text).with_context(|| format!("{} is not valid TOML", path.display()))?;
    let keys = keys(cmd);
    let Some(subcmd) = cmd.find_subcommand(sub) else {
        return Ok(out);
    };
    for (key, value) in &table {
        if !keys.contains(key) {
            bail!(
                "{}: unknown key `{key}` (keys are the long flags of `crashwatch run`, as \
                 `output-file`; see crashwatch run --help)",
                path.display()
            );
        }
        let Some(arg) = subcmd.get_arguments().find(|a| a.get_long() == Some(key)) else {
            continue; // a key of `run` that this subcommand does not take
        };
        let id = arg.get_id().as_str();
        if matches!(
            m.value_source(id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ) {
            continue;
        }
        let takes_values = arg.get_action().takes_values();
        let many = matches!(arg.get_action(), ArgAction::Append);
        let scalars: Vec<&toml::Value> = match value {
            toml::Value::Array(items) if many => items.iter().collect(),
            toml::Value::Array(_) => {
                bail!("{}: `{key}` takes one value, not a list", path.display())
            }
            v => vec![v],
        };
        for v in scalars {
            if !takes_values {
                let toml::Value::Boolean(b) = v else {
                    bail!("{}: `{key}` is a switch: true or false", path.display())
                };
                if *b {
                    out.args.push(format!("--{key}").into());
                    out.ids.insert(id.to_string());
                }
                continue;
            }
            let text = match v {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(i) => i.to_string(),
                other => bail!(
                    "{}: `{key}` = {other}: expected a string or a number",
                    path.display()
                ),
            };
            out.args.push(format!("--{key}={text}").into());
            out.ids.insert(id.to_string());
        }
    }
    out.path = Some(path);
    Ok(out)
}

/// Why a command line and its configuration file do not parse.
pub enum Refused {
    /// The command line itself (clap says it, or prints help or the version).
    Args(clap::Error),
    /// The file: unreadable, not TOML, an unknown key.
    File(anyhow::Error),
    /// A value the file gave, refused by the flag's parser.
    InFile(Option<PathBuf>, clap::Error),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Args(e) => write!(f, "{}", e.render()),
            Refused::File(e) => write!(f, "{e:#}"),
            Refused::InFile(p, e) => {
                let at = p.as_ref().map(|p| p.display().to_string());
                write!(f, "in {}: {}", at.unwrap_or_default(), e.render())
            }
        }
    }
}

/// `argv` parsed, and for the commands that read the configuration, parsed again with the
/// file's keys appended (flags and environment were applied by the first parse, so the file
/// only fills what they left).
pub fn parse(cmd: &Command, argv: &[OsString]) -> Result<(ArgMatches, Option<FromFile>), Refused> {
    let matches = cmd
        .clone()
        .try_get_matches_from(argv)
        .map_err(Refused::Args)?;
    let file = match matches.subcommand() {
        Some((name, sub)) if CONFIGURED.contains(&name) => {
            from_file(cmd, name, sub).map_err(Refused::File)?
        }
        _ => return Ok((matches, None)),
    };
    if file.args.is_empty() {
        return Ok((matches, Some(file)));
    }
    let mut all = argv.to_vec();
    all.extend(file.args.iter().cloned());
    match cmd.clone().try_get_matches_from(all) {
        Ok(m) => Ok((m, Some(file))),
        Err(e) => Err(Refused::InFile(file.path, e)),
    }
}

fn read_bounded(path: &std::path::Path) -> std::io::Result<String> {
    use std::io::Read;
    let f = std::fs::File::open(path)?;
    let mut text = String::new();
    f.take(MAX_FILE_BYTES + 1).read_to_string(&mut text)?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(std::io::Error::other(format!(
            "larger than {MAX_FILE_BYTES} bytes"
        )));
    }
    Ok(text)
}

/// The effective configuration of `run` as a TOML file would say it, each value annotated
/// with where it came from; webhook URLs, OTLP endpoints and headers masked.
pub fn print(cmd: &Command, m: &ArgMatches, file: &FromFile) -> String {
    let mut s = String::from(
        "# crashwatch run: effective configuration (flag > CRASHWATCH_* environment > file > default)\n",
    );
    match &file.path {
        Some(p) => {
            let _ = writeln!(s, "# file: {}", p.display());
        }
        None => {
            let _ = writeln!(s, "# file: none ({DEFAULT_PATH} absent, no --config)");
        }
    }
    let Some(run) = cmd.find_subcommand("run") else {
        return s;
    };
    for arg in run.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if NOT_KEYS.contains(&long) {
            continue;
        }
        let id = arg.get_id().as_str();
        let source = match m.value_source(id) {
            Some(ValueSource::DefaultValue) => "default".to_string(),
            Some(ValueSource::EnvVariable) => format!("environment {}", env_name(long)),
            Some(ValueSource::CommandLine) if file.ids.contains(id) => "file".to_string(),
            Some(ValueSource::CommandLine) => "flag".to_string(),
            _ => {
                let _ = writeln!(s, "# {long} =   # unset");
                continue;
            }
        };
        let values: Vec<String> = m
            .get_raw(id)
            .into_iter()
            .flatten()
            .map(|v| toml_value(&mask(long, &v.to_string_lossy())))
            .collect();
        let value = if matches!(arg.get_action(), ArgAction::Append) {
            format!("[{}]", values.join(", "))
        } else {
            values.into_iter().next().unwrap_or_default()
        };
        let _ = writeln!(s, "{long} = {value}   # {source}");
    }
    s
}

/// A raw flag value as TOML: numbers and booleans bare, everything else a quoted string.
fn toml_value(raw: &str) -> String {
    if raw == "true" || raw == "false" || raw.parse::<i64>().is_ok() {
        raw.to_string()
    } else {
        toml::Value::String(raw.to_string()).to_string()
    }
}

/// Secrets hide in webhook URLs (a Slack hook's path is its key), in userinfo and query
/// strings, and in header values.
fn mask(long: &str, v: &str) -> String {
    match long {
        "webhook" | "otlp-endpoint" | "hub" => crate::pipeline::redact::mask_url(v),
        "webhook-header" | "otlp-header" => match v.split_once(':') {
            Some((name, _)) => format!("{name}: ***"),
            None => "***".to_string(),
        },
        _ => v.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_headers_are_masked() {
        assert_eq!(
            mask("webhook", "https://hooks.slack.com/services/T0/B0/XyZ"),
            "https://hooks.slack.com/***"
        );
        assert_eq!(
            mask("webhook-header", "Authorization: Bearer abc"),
            "Authorization: ***"
        );
    }

    #[test]
    fn env_names() {
        assert_eq!(env_name("output-file"), "CRASHWATCH_OUTPUT_FILE");
    }
}
