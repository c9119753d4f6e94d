//! What `crashwatch exec` says when the command is done: the exit status with meaning, a
//! summary by cluster, GitHub Actions annotations, a JUnit XML report and a JSON summary.
use std::{collections::BTreeMap, fmt::Write as _, sync::Arc};

use serde::Serialize;

use crate::{outputs::Item, pipeline::cluster, util::escape::escape};

/// A crash of the command's tree, and in which run of it.
pub struct Seen {
    pub item: Arc<Item>,
    /// 0 for the first run, n for the n-th restart.
    pub restart: u32,
}

/// The exit status per crash class (docs/exec.md, "Exit status"); the first crash decides.
pub fn class_code(kind: &str) -> u8 {
    use crate::model::crash::Kind;
    match Kind::parse(kind) {
        Some(Kind::GoPanic | Kind::GoFatal) => 111,
        Some(Kind::Signal) => 112,
        Some(Kind::OomKill) => 113,
        Some(Kind::RuntimeError) => 114,
        _ => 115,
    }
}

/// `crashwatch exec` itself could not do its job.
pub const FAILED: u8 = 125;

#[derive(Serialize)]
pub struct Cluster {
    pub fingerprint: String,
    pub count: usize,
    pub kind: &'static str,
    pub headline: String,
    pub top_frame: String,
    pub file: Option<String>,
    pub line: Option<u32>,
    /// The executables that crashed (file names).
    pub programs: Vec<String>,
}

/// Crashes by fingerprint, most first (ties: first seen first).
pub fn clusters(seen: &[Seen]) -> Vec<Cluster> {
    let mut by: BTreeMap<&str, (usize, Cluster)> = BTreeMap::new();
    for (i, s) in seen.iter().enumerate() {
        let r = &s.item.report;
        let program = r
            .exe
            .as_deref()
            .map(|e| e.rsplit('/').next().unwrap_or(e).to_string())
            .unwrap_or_else(|| r.comm.clone());
        let e = by.entry(&r.fingerprint).or_insert_with(|| {
            let site = cluster::top_site(r);
            (
                i,
                Cluster {
                    fingerprint: r.fingerprint.clone(),
                    count: 0,
                    kind: r.kind,
                    headline: cluster::headline(r),
                    top_frame: cluster::top_frame(r),
                    file: site.as_ref().and_then(|s| s.file.clone()),
                    line: site.and_then(|s| s.line),
                    programs: Vec::new(),
                },
            )
        });
        e.1.count += 1;
        if !e.1.programs.contains(&program) && e.1.programs.len() < 8 {
            e.1.programs.push(program);
        }
    }
    let mut v: Vec<(usize, Cluster)> = by.into_values().collect();
    v.sort_by_key(|(first, c)| (std::cmp::Reverse(c.count), *first));
    v.into_iter().map(|(_, c)| c).collect()
}

/// The summary for a human, on stderr.
pub fn summary(clusters: &[Cluster], crashes: usize, ended: &str) -> String {
    let mut o = String::new();
    if crashes == 0 {
        return o;
    }
    let _ = writeln!(
        o,
        "crashwatch exec: {crashes} crash{} in the command's tree, {} cluster{} ({ended}):",
        if crashes == 1 { "" } else { "es" },
        clusters.len(),
        if clusters.len() == 1 { "" } else { "s" }
    );
    for c in clusters {
        let _ = writeln!(
            o,
            "  {:>3}×  {:<13} {}  [{}]",
            c.count,
            c.kind,
            escape(&c.headline),
            escape(&c.programs.join(", "))
        );
        if !c.top_frame.is_empty() {
            let _ = writeln!(o, "        at {}", escape(&c.top_frame));
        }
        let _ = writeln!(o, "        {}", c.fingerprint);
    }
    o
}

/// One `::error` workflow command per cluster, at its frame in the program's own code
/// (relative to the workspace when under it, as GitHub resolves annotation paths).
pub fn github(clusters: &[Cluster], workspace: Option<&str>) -> String {
    let mut o = String::new();
    for c in clusters {
        let mut props = Vec::new();
        if let Some(f) = &c.file {
            let rel = workspace
                .and_then(|w| f.strip_prefix(w.trim_end_matches('/')))
                .map(|r| r.trim_start_matches('/'))
                .unwrap_or(f);
            props.push(format!("file={}", property(rel)));
            if let Some(l) = c.line {
                props.push(format!("line={l}"));
            }
        }
        props.push(format!(
            "title={}",
            property(&format!("crashwatch: {} ({}×)", c.kind, c.count))
        ));
        let _ = writeln!(
            o,
            "::error {}::{}",
            props.join(","),
            data(&format!(
                "{} in {} — {}{}",
                c.headline,
                c.programs.join(", "),
                c.top_frame,
                if c.count > 1 {
                    format!(" ({} crashes)", c.count)
                } else {
                    String::new()
                }
            ))
        );
    }
    o
}

/// A workflow command's message: `%`, CR and LF escaped.
fn data(s: &str) -> String {
    s.replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

/// A workflow command's property value: also `:` and `,`.
fn property(s: &str) -> String {
    data(s).replace(':', "%3A").replace(',', "%2C")
}

/// A JUnit XML report: one failing test case per crash (a passing one when none).
pub fn junit(seen: &[Seen], command: &str, secs: f64) -> String {
    let mut o = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let n = seen.len().max(1);
    let _ = writeln!(
        o,
        "<testsuites><testsuite name=\"crashwatch exec\" tests=\"{n}\" failures=\"{}\" errors=\"0\" time=\"{secs:.3}\">",
        seen.len()
    );
    let _ = writeln!(
        o,
        "<properties><property name=\"command\" value=\"{}\"/></properties>",
        xml(command)
    );
    if seen.is_empty() {
        let _ = writeln!(
            o,
            "<testcase classname=\"crashwatch\" name=\"no crash in the command's tree\" time=\"{secs:.3}\"/>"
        );
    }
    for s in seen {
        let r = &s.item.report;
        let site = cluster::top_site(r);
        let mut attrs = String::new();
        if let Some(f) = site.as_ref().and_then(|s| s.file.as_deref()) {
            let _ = write!(attrs, " file=\"{}\"", xml(f));
        }
        if let Some(l) = site.as_ref().and_then(|s| s.line) {
            let _ = write!(attrs, " line=\"{l}\"");
        }
        let program = r.exe.as_deref().unwrap_or(&r.comm);
        let _ = writeln!(
            o,
            "<testcase classname=\"{}\" name=\"{}\"{attrs}><failure type=\"{}\" message=\"{}\">{}</failure></testcase>",
            xml(program.rsplit('/').next().unwrap_or(program)),
            xml(&format!(
                "{} (pid {}{})",
                cluster::headline(r),
                r.pid,
                if s.restart > 0 {
                    format!(", restart {}", s.restart)
                } else {
                    String::new()
                }
            )),
            r.kind,
            xml(&cluster::headline(r)),
            xml(&crate::outputs::pretty::pretty(r, false))
        );
    }
    o.push_str("</testsuite></testsuites>\n");
    o
}

/// Text for XML: the five entities escaped, characters XML cannot hold dropped.
fn xml(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&apos;"),
            '\t' | '\n' | '\r' => o.push(c),
            c if (c as u32) < 0x20 || c == '\u{fffe}' || c == '\u{ffff}' => {}
            c => o.push(c),
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workflow_commands_and_xml_are_escaped() {
        assert_eq!(property("a,b:c%\n"), "a%2Cb%3Ac%25%0A");
        assert_eq!(data("50%\r\nx"), "50%25%0D%0Ax");
        assert_eq!(
            xml("<a href=\"x\">&'\u{1}"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&apos;"
        );
        assert_eq!(class_code("go_panic"), 111);
        assert_eq!(class_code("oom_kill"), 113);
    }
}
