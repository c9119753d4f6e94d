//! `crashwatch analyze`: crashes already in logs, explained by [`crate::commands::analyze`]. Files
//! are opened by path (this is a user's command: no process's view to go through); `-` is stdin.
use std::{io::IsTerminal, path::PathBuf, process::ExitCode};

use clap::Args;

use crate::{
    commands::analyze::{self, Analyzer, Options},
    read::parse::logs::Format,
};

#[derive(Args, Debug)]
pub struct AnalyzeArgs {
    /// Log files: plain text, Kubernetes CRI (/var/log/pods/…), docker json-file,
    /// `journalctl -o json`, each possibly gzip-compressed (detected per file). `-` or
    /// nothing reads stdin.
    #[arg(value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Read every file as this format instead of detecting it.
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// One JSON document (schema: docs/analyze.md) instead of text.
    #[arg(long)]
    pub json: bool,
    /// The program whose logs these are, as crash fingerprints name it: a Go binary's main
    /// package path (`example.com/app`), else the executable's file name. With it, clusters
    /// are the ones the agent gives the same crashes; without it they group the logs' crashes
    /// among themselves only.
    #[arg(long, value_name = "NAME")]
    pub program: Option<String>,
    /// Crashes listed in full; more are counted in their clusters.
    #[arg(long, default_value_t = 1000)]
    pub max_crashes: usize,
}

pub fn run(a: AnalyzeArgs) -> ExitCode {
    let mut an = Analyzer::new(Options {
        format: a.format,
        program: a.program,
        max_listed: a.max_crashes,
    });
    let files = if a.files.is_empty() {
        vec![PathBuf::from("-")]
    } else {
        a.files
    };
    for f in &files {
        if f.as_os_str() == "-" {
            if std::io::stdin().is_terminal() {
                crate::say!("crashwatch analyze: reading logs from the terminal (Ctrl-D ends)");
            }
            an.read("-", std::io::stdin().lock());
            continue;
        }
        let name = f.display().to_string();
        match std::fs::File::open(f) {
            Ok(file) => an.read(&name, file),
            Err(e) => an.failed(&name, &format!("opening {name}: {e}")),
        }
    }
    let result = an.finish();
    let text = if a.json {
        let mut s = serde_json::to_string(&result).unwrap_or_default();
        s.push('\n');
        s
    } else {
        analyze::pretty(&result)
    };
    // A closed pipe (`| head`) is not an error of the analysis (crate::commands::out).
    if let Err(e) = crate::commands::out::write(&text) {
        crate::say!("crashwatch analyze: writing the output: {e}");
        return ExitCode::from(2);
    }
    // The text names an unreadable input; why, only here (the JSON has it as `error`).
    for i in result.inputs.iter().filter_map(|i| i.error.as_ref()) {
        crate::say!("crashwatch analyze: {i}");
    }
    ExitCode::from(result.exit_code())
}
