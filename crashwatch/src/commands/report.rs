//! `crashwatch report`: the crash history, read from the store while the agent runs; and the
//! history's flags of `run`, which the two commands share.
use std::{io::IsTerminal, path::PathBuf, process::ExitCode, time::Duration};

use clap::Args;

use crate::{
    outputs as sink,
    outputs::store::{self, ClusterRow, Filter, Store},
    pipeline::assemble::Kind,
    util::escape::escape as esc,
};

/// Where the crash history is kept, and how long.
#[derive(Args, Clone, Debug)]
pub struct History {
    /// Directory of the crash history (SQLite, `crashwatch.db`; made 0700, the file 0600).
    #[arg(long, default_value_os_t = store::default_dir())]
    pub state_dir: PathBuf,
    /// Keep no history: clusters are counted in memory from zero at each start.
    #[arg(long)]
    pub no_store: bool,
    /// Reports kept per cluster (the latest); the cluster's count goes on.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub keep_per_cluster: u32,
    /// Days a report is kept.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub keep_days: u64,
    /// MiB the history may take; the oldest reports go first.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u64).range(1..))]
    pub store_max_mib: u64,
    /// A cluster that crashes this many times within --loop-window is a crash loop.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(2..))]
    pub loop_count: u32,
    /// Seconds of the crash-loop window.
    #[arg(long, default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..))]
    pub loop_window: u64,
    /// Hours after a program's new build first appears on the node during which a crash
    /// cluster it opens is marked a regression of that build.
    #[arg(long, default_value_t = 24, value_parser = clap::value_parser!(u64).range(1..=8760))]
    pub regression_window_hours: u64,
}

impl History {
    pub fn policy(&self) -> crate::pipeline::cluster::Policy {
        crate::pipeline::cluster::Policy {
            loop_count: self.loop_count,
            loop_window: Duration::from_secs(self.loop_window),
            regression_window: Duration::from_secs(self.regression_window_hours * 3600),
        }
    }

    pub fn retention(&self) -> store::Retention {
        store::Retention {
            per_cluster: self.keep_per_cluster,
            max_age: Duration::from_secs(self.keep_days * 86_400),
            max_bytes: self.store_max_mib << 20,
        }
    }
}

#[derive(Args, Clone, Debug)]
pub struct ReportArgs {
    /// One cluster, by its number (`cluster.id` in reports).
    pub cluster: Option<i64>,
    #[command(flatten)]
    pub config: super::ConfigFile,
    #[arg(long, default_value_os_t = store::default_dir())]
    pub state_dir: PathBuf,
    /// Only clusters with a crash in this past window (30m, 12h, 7d).
    #[arg(long, value_parser = parse_age)]
    pub since: Option<Duration>,
    /// Only this kind (docs/report.md says what each is).
    #[arg(long, value_enum)]
    pub kind: Option<Kind>,
    /// Only clusters that hit this Kubernetes namespace.
    #[arg(long)]
    pub namespace: Option<String>,
    /// JSON instead of text (a cluster's reports as stored; without it, each reads as the
    /// agent prints it on a terminal).
    #[arg(long)]
    pub json: bool,
    /// Every thread's stack in full (reports with a core dump, `run --dumps`); without it,
    /// the crashed thread's in full and the others one line each.
    #[arg(long)]
    pub threads: bool,
    /// Clusters listed at most.
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    /// Reports shown with one cluster.
    #[arg(long, default_value_t = 3)]
    pub reports: u32,
    /// A crash loop, as `run` flags it: this many crashes within --loop-window seconds.
    #[arg(long, default_value_t = 5)]
    pub loop_count: u32,
    #[arg(long, default_value_t = 600)]
    pub loop_window: u64,
}

/// `30s`, `15m`, `2h`, `7d`.
pub fn parse_age(s: &str) -> Result<Duration, String> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?}: a number and s, m, h or d (30m, 7d)"))?;
    let secs = match unit {
        "s" | "" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{s:?}: the unit is s, m, h or d")),
    };
    Ok(Duration::from_secs(n.saturating_mul(secs)))
}

pub fn run(a: ReportArgs) -> ExitCode {
    let store = match Store::open_read(&a.state_dir) {
        Ok(s) => s,
        Err(e) => {
            crate::say!("crashwatch: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let filter = Filter {
        since_ns: a
            .since
            .map(|d| crate::model::clock::now_ns().saturating_sub(d.as_nanos() as u64)),
        kind: a.kind.map(|k| k.as_str().to_string()),
        namespace: a.namespace,
        limit: a.limit,
        loop_count: a.loop_count,
        loop_window_ns: a.loop_window.saturating_mul(1_000_000_000),
        ..Filter::default()
    };
    let shown = match a.cluster {
        Some(id) => one(&store, id, a.reports, &filter, (a.json, a.threads)),
        None => all(&store, &filter, a.json).map(Some),
    };
    match shown {
        Ok(Some(text)) => super::out::print(&text, ExitCode::SUCCESS),
        Ok(None) => ExitCode::FAILURE,
        Err(e) => {
            crate::say!("crashwatch: reading the crash history: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The clusters `f` lets through, as text or JSON.
fn all(store: &Store, f: &Filter, json: bool) -> anyhow::Result<String> {
    let rows = store.list(f)?;
    if json {
        return Ok(format!("{}\n", serde_json::to_string_pretty(&rows)?));
    }
    if rows.is_empty() {
        let filtered = f.since_ns.is_some() || f.kind.is_some() || f.namespace.is_some();
        let that = if filtered { " that match" } else { "" };
        return Ok(format!("no crashes recorded{that}\n"));
    }
    Ok(rows.iter().map(summary).collect())
}

/// Cluster `id` and its latest `n` reports, as text or JSON; None: no such cluster (said).
/// `how`: JSON, and every thread in full.
fn one(
    store: &Store,
    id: i64,
    n: u32,
    f: &Filter,
    (json, threads): (bool, bool),
) -> anyhow::Result<Option<String>> {
    let Some((row, reports)) = store.cluster(id, n, f)? else {
        crate::say!("crashwatch: no cluster {id} in the crash history");
        return Ok(None);
    };
    if json {
        let reports: Vec<serde_json::Value> = reports
            .iter()
            .filter_map(|j| serde_json::from_str(j).ok())
            .collect();
        let v = serde_json::json!({ "cluster": row, "reports": reports });
        return Ok(Some(format!("{}\n", serde_json::to_string_pretty(&v)?)));
    }
    // The cluster, a blank line, and each report's block (which ends with one).
    let color = sink::color(std::io::stdout().is_terminal());
    let mut text = summary(&row) + "\n";
    for r in &reports {
        text += &block(r, color, threads);
    }
    Ok(Some(text))
}

/// A stored report as the agent's readable block; one it cannot read back (written by a
/// build whose fields this one does not know the types of) as its JSON, said.
fn block(json: &str, color: bool, threads: bool) -> String {
    match crate::model::report::Report::from_json(json) {
        Ok(r) => sink::pretty::pretty_with(&r, color, threads),
        Err(e) => {
            let v: serde_json::Value = serde_json::from_str(json).unwrap_or_default();
            format!(
                "(a report this build cannot show ({e}); its JSON:)\n{:#}\n",
                v
            )
        }
    }
}

/// A revision as people quote one: 12 digits of a git hash or build id.
fn short(rev: &str) -> &str {
    match rev.char_indices().nth(12) {
        Some((i, _)) if rev[..i].bytes().all(|b| b.is_ascii_hexdigit()) => &rev[..i],
        _ => rev,
    }
}

/// One cluster as a block of text; every value a process could choose is escaped.
fn summary(r: &ClusterRow) -> String {
    let mut s = format!(
        "#{} {} {}{} — {} crash{}, first {}, last {}\n",
        r.id,
        r.kind,
        esc(&r.headline),
        if r.looping { " [CRASH LOOP]" } else { "" },
        r.count,
        if r.count == 1 { "" } else { "es" },
        r.first_seen,
        r.last_seen
    );
    let list = |v: &[String]| {
        v.iter()
            .map(|x| esc(x).to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    for (k, v) in [
        ("at", vec![r.top_frame.clone()]),
        ("binaries", r.binaries.clone()),
        ("containers", r.containers.clone()),
        ("pods", r.pods.clone()),
        ("nodes", r.nodes.clone()),
    ] {
        if v.iter().any(|x| !x.is_empty()) {
            s += &format!("    {k:<10} {}\n", list(&v));
        }
    }
    if let Some(rev) = &r.regression {
        s += &format!(
            "    {:<10} opened right after build {} appeared\n",
            "regression",
            esc(short(rev))
        );
    }
    // One line per build: revision, version, image, and when it was hit.
    for (i, b) in r.builds.iter().enumerate() {
        let what = [short(&b.revision), &b.version, &b.image]
            .iter()
            .filter(|x| !x.is_empty())
            .map(|x| esc(x).to_string())
            .collect::<Vec<_>>()
            .join(" ");
        s += &format!(
            "    {:<10} {what} — {} crash{}, {} .. {}\n",
            if i == 0 { "builds" } else { "" },
            b.count,
            if b.count == 1 { "" } else { "es" },
            b.first_seen,
            b.last_seen
        );
    }
    s += &format!("    {:<10} {}\n", "group", r.fingerprint);
    s
}

#[cfg(test)]
mod tests {
    use clap::ValueEnum;

    use crate::pipeline::assemble::Kind;

    /// `--kind` takes each kind by the name reports give it.
    #[test]
    fn the_kinds_flag_takes_the_names_reports_use() {
        for k in Kind::value_variants() {
            let v = k.to_possible_value().unwrap();
            assert_eq!(v.get_name(), k.as_str());
            assert_eq!(Kind::from_str(k.as_str(), false), Ok(*k));
        }
        assert_eq!(Kind::names().len(), Kind::value_variants().len());
        assert!(!Kind::names().contains(&"termination"), "never stored");
        assert!(Kind::names().contains(&"runtime_error"));
    }
}
