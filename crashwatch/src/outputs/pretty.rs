//! The readable form of a report, for a terminal. It escapes every string a process could
//! have chosen ([`crate::util::escape`]): names, command lines, paths, panic messages, function
//! names.

use crate::{model::report::Report, pipeline::symbolize::Frame, util::escape::escape as esc};

/// The width of the labels (`container` is the longest): every value starts in one column.
const LABEL: usize = 9;

/// A readable block per crash: the crashed thread's stack in full, the process's other
/// threads (from a dump) one line each.
pub fn pretty(r: &Report, color: bool) -> String {
    pretty_with(r, color, false)
}

/// [`pretty`], with every thread's stack in full when `all_threads` (`report --threads`).
pub fn pretty_with(r: &Report, color: bool, all_threads: bool) -> String {
    let (bold, red, dim, reset) = if color {
        ("\x1b[1m", "\x1b[1;31m", "\x1b[2m", "\x1b[0m")
    } else {
        ("", "", "", "")
    };
    let mut s = String::new();
    let go = r.go.as_ref();
    let what = esc(&crate::pipeline::cluster::headline(r)).into_owned();
    s += &format!(
        // A headline is any text a runtime printed: a dash keeps it from running into the name.
        "{red}✗ {} {}{reset} — {bold}{}{reset} pid {} tid {}  {dim}{} on {}{reset}\n",
        r.kind,
        what,
        esc(&r.comm),
        r.pid,
        r.tid,
        r.time,
        esc(&r.host)
    );
    let field =
        |s: &mut String, k: &str, v: &str| *s += &format!("  {dim}{k:<LABEL$}{reset} {v}\n");
    if let Some(exe) = &r.exe {
        field(&mut s, "exe", &esc(exe));
    }
    if !r.cmdline.is_empty() {
        let args: Vec<_> = r.cmdline.iter().map(|a| esc(a)).collect();
        let more = if r.cmdline_truncated { " …" } else { "" };
        field(&mut s, "cmdline", &format!("{}{more}", args.join(" ")));
    }
    field(&mut s, "process", &format!("ppid {} uid {}", r.ppid, r.uid));
    if let Some(cg) = &r.cgroup {
        field(&mut s, "cgroup", &esc(cg));
    }
    if let Some(c) = &r.container {
        let mut v = format!("{} {}", c.runtime.name(), esc(&c.id));
        if let Some(n) = &c.name {
            v = format!("{} ({v})", esc(n));
        }
        if let Some(i) = &c.image {
            v += &format!(" image {}", esc(i));
        }
        field(&mut s, "container", &v);
    }
    if let Some(k) = &r.k8s {
        let opt = |v: &Option<String>| v.as_deref().map_or("?".to_string(), |x| esc(x).to_string());
        field(
            &mut s,
            "pod",
            &format!(
                "{}/{} container {} uid {} node {}",
                opt(&k.namespace),
                opt(&k.pod),
                opt(&k.container),
                opt(&k.pod_uid),
                esc(&k.node)
            ),
        );
    }
    if let Some(c) = &r.cluster {
        let mut v = format!(
            "#{} {}: {} crash{} since {}",
            c.id,
            r.fingerprint,
            c.count,
            if c.count == 1 { "" } else { "es" },
            c.first_seen
        );
        if c.new {
            v += ", new";
        }
        if c.looping {
            v += &format!(", CRASH LOOP: {} in {} s", c.recent, c.window_secs);
        }
        field(&mut s, "cluster", &v);
    } else if !r.fingerprint.is_empty() {
        field(&mut s, "cluster", &r.fingerprint);
    }
    if let Some(sig) = &r.signal {
        let mut parts = vec![format!("{} ({}) code {}", sig.name, sig.number, sig.code)];
        if let Some(a) = sig.addr {
            parts.push(format!("addr {a:#x}"));
        }
        if let Some(from) = sig.sender {
            parts.push(format!("sent by pid {} uid {}", from.pid, from.uid));
        }
        if let Some(ip) = sig.ip {
            parts.push(format!("ip {ip:#x}"));
        }
        if let Some(sp) = sig.sp {
            parts.push(format!("sp {sp:#x}"));
        }
        if sig.handled {
            parts.push("handled, then died".into());
        }
        field(&mut s, "signal", &parts.join("  "));
    }
    let e = &r.exit;
    let exit = match (e.code, &e.signal_name) {
        (Some(c), _) => format!("exited with code {c}"),
        (None, Some(n)) => format!(
            "killed by {n}{}",
            if e.core_dumped { " (core dumped)" } else { "" }
        ),
        _ => format!("status {:#x}", e.status),
    };
    field(&mut s, "exit", &exit);
    if let Some(o) = &r.oom {
        field(&mut s, "oom", &oom(o));
    }
    if let Some(t) = &r.termination {
        if let (Some(after), Some(secs)) = (&t.after, t.after_secs) {
            let grace = if t.grace_expired {
                ": its grace period ran out"
            } else {
                ""
            };
            field(
                &mut s,
                "asked",
                &format!("{after} {secs:.1} s before{grace}"),
            );
        }
    }
    if let Some(d) = &r.error {
        error(&mut s, d, go.is_none(), color);
    } else if let Some(w) = &r.last_words {
        // Unrecognised words (`abort()` after "fatal: cannot continue"): the last lines.
        last_words(&mut s, &w.text, dim, reset);
    }
    if let Some(g) = go {
        let mut parts =
            vec![esc(g.version.as_deref().unwrap_or("Go (version unknown)")).into_owned()];
        if let Some(t) = &g.panic_type {
            parts.push(format!("value type {}", esc(t)));
        }
        if let Some(id) = g.goroutine {
            parts.push(format!("goroutine {id}"));
        }
        if let Some(rev) = g.build.as_ref().and_then(|b| b.vcs_revision.as_deref()) {
            let short: String = rev.chars().take(12).collect();
            parts.push(format!("revision {}", esc(&short)));
        }
        field(&mut s, "go", &parts.join("  "));
        if let Some(first) = g.goroutines.first() {
            s += &format!(
                "  {dim}goroutine {} [{}]{reset}\n",
                first.id,
                esc(first.wait_reason.as_deref().unwrap_or(&first.state))
            );
            for f in first.frames.iter().take(8) {
                let at = match (&f.file, f.line) {
                    (Some(file), Some(line)) => format!("  {dim}{}:{line}{reset}", esc(file)),
                    _ => String::new(),
                };
                s += &format!("    {bold}{}{reset}{at}\n", esc(&f.function));
            }
        }
    }
    if r.lost_before > 0 {
        field(
            &mut s,
            "lost",
            &format!(
                "{red}{} kernel events lost before this report{reset}",
                r.lost_before
            ),
        );
    }
    if !r.stack.is_empty() {
        s += &format!("  {dim}stack{reset}\n");
        for (i, f) in r.stack.iter().enumerate() {
            s += &format!("    #{i:<2} {}\n", frame(f, r.exe.as_deref(), color));
        }
    }
    threads(&mut s, r, all_threads, color);
    s.push('\n');
    s
}

/// The dump's threads: one line each (name, id, state, where in the program's own code it
/// was), or each stack in full.
fn threads(s: &mut String, r: &Report, all: bool, color: bool) {
    let (dim, reset) = if color {
        ("\x1b[2m", "\x1b[0m")
    } else {
        ("", "")
    };
    let Some(d) = &r.dump else { return };
    let cut = d
        .cut
        .as_deref()
        .map(|c| format!("; cut: {}", esc(c)))
        .unwrap_or_default();
    *s += &format!(
        "  {dim}threads ({} from the core dump, {} MiB, held {} ms{cut}){reset}\n",
        r.threads.len(),
        d.bytes >> 20,
        d.held_ms
    );
    let exe = r.exe.as_deref();
    for t in &r.threads {
        let name = esc(t.name.as_deref().unwrap_or("?")).into_owned();
        let head = format!("{name:<16} tid {:<7} {:<22}", t.tid, esc(&t.state));
        if all || (t.crashed && r.stack.is_empty()) {
            *s += &format!("    {head}\n");
            for (i, f) in t.stack.iter().enumerate() {
                *s += &format!("      #{i:<2} {}\n", frame(f, exe, color));
            }
            continue;
        }
        let own = t
            .stack
            .iter()
            .find(|f| f.module.as_deref() == exe && f.function.is_some())
            .or(t.stack.first());
        let at = match own {
            _ if t.crashed => format!("{dim}crashed: its stack is above{reset}"),
            Some(f) => frame(f, exe, color),
            None => format!(
                "{dim}{}{reset}",
                esc(t.reason.as_deref().unwrap_or("no stack"))
            ),
        };
        *s += &format!("    {head} {at}\n");
    }
}

/// Lines of unrecognised last words shown.
const LAST_LINES: usize = 6;

/// The last lines of what the process wrote to stderr.
fn last_words(s: &mut String, text: &str, dim: &str, reset: &str) {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let skip = lines.len().saturating_sub(LAST_LINES);
    for (i, l) in lines[skip..].iter().enumerate() {
        let label = if i == 0 { "stderr" } else { "" };
        let more = if i == 0 && skip > 0 {
            format!("{dim}[{skip} lines before]{reset} ")
        } else {
            String::new()
        };
        *s += &format!("  {dim}{label:<LABEL$}{reset} {more}{}\n", esc(l));
    }
}

/// The OOM killer's figures on one line.
fn oom(o: &crate::model::report::OomInfo) -> String {
    use crate::model::report::human_bytes as b;
    let mut parts = Vec::new();
    match (o.constraint, &o.cgroup, o.limit_bytes, o.usage_bytes) {
        (Some("cgroup"), Some(cg), Some(limit), Some(usage)) => parts.push(format!(
            "cgroup {} at its limit: {} used of {}",
            esc(cg),
            b(usage),
            b(limit)
        )),
        (Some("system"), ..) => parts.push("no cgroup at its limit: the host ran out".into()),
        _ => {}
    }
    if let (Some(anon), Some(file), Some(shmem)) =
        (o.rss_anon_bytes, o.rss_file_bytes, o.rss_shmem_bytes)
    {
        parts.push(format!(
            "rss anon {} file {} shmem {}",
            b(anon),
            b(file),
            b(shmem)
        ));
    }
    if let Some(adj) = o.oom_score_adj {
        parts.push(format!("oom_score_adj {adj}"));
    }
    parts.join("  ")
}

/// The runtime's account: its error line, the chain of errors when there is more than one,
/// and (for runtimes without a section of their own) the first frames of its stack.
fn error(s: &mut String, d: &crate::read::parse::Death, frames: bool, color: bool) {
    let (bold, dim, reset) = if color {
        ("\x1b[1m", "\x1b[2m", "\x1b[0m")
    } else {
        ("", "", "")
    };
    let mut line = format!("{} {}", d.runtime, esc(&d.headline));
    let first = d.message.lines().next().unwrap_or("");
    if !first.is_empty() && !d.headline.contains(first) {
        line += &format!(": {}", esc(first));
    }
    if let Some(l) = &d.location {
        match (&l.file, l.line) {
            (Some(file), Some(n)) if !d.headline.contains(&format!("{file}:{n}")) => {
                line += &format!("  {dim}at {}:{n}{reset}", esc(file));
            }
            _ => {}
        }
    }
    *s += &format!("  {dim}{:<LABEL$}{reset} {line}\n", "error");
    for (i, l) in d.chain.iter().enumerate() {
        let ty = l
            .error_type
            .as_deref()
            .map(|t| format!("{t}: "))
            .unwrap_or_default();
        let rel = l
            .relation
            .map(|r| format!(" {dim}({r}){reset}"))
            .unwrap_or_default();
        let first = l.message.lines().next().unwrap_or("");
        *s += &format!("    {dim}{i}{reset} {}{}{rel}\n", esc(&ty), esc(first));
    }
    if !frames {
        return;
    }
    for f in d.frames.iter().take(8) {
        let at = match (&f.file, f.line) {
            (Some(file), Some(line)) => format!("  {dim}{}:{line}{reset}", esc(file)),
            (Some(file), None) => format!("  {dim}{}{reset}", esc(file)),
            _ => String::new(),
        };
        *s += &format!(
            "    {bold}{}{reset}{at}\n",
            esc(f.function.as_deref().unwrap_or("?"))
        );
    }
}

/// One frame as people read it: address (`python` for a CPython frame), `function (file:line)`, the module's file name when
/// the frame is outside the executable `exe`, `[inlined]` for a call inlined into the frame
/// below it, and why a frame has no name.
pub fn frame(f: &Frame, exe: Option<&str>, color: bool) -> String {
    let (bold, dim, reset) = if color {
        ("\x1b[1m", "\x1b[2m", "\x1b[0m")
    } else {
        ("", "", "")
    };
    // A CPython frame (`--dumps`) has no address: its language stands there.
    let mut s = match f.found_by {
        "python" => format!("{dim}{:>14}{reset} ", "python"),
        _ => format!("{:#014x} ", f.ip),
    };
    match &f.function {
        Some(n) => s += &format!("{bold}{}{reset}", esc(n)),
        None => s += "?",
    }
    match (&f.file, f.line) {
        (Some(file), Some(line)) => s += &format!(" ({}:{line})", esc(file)),
        (Some(file), None) => s += &format!(" ({})", esc(file)),
        _ => {}
    }
    if f.inlined {
        s += &format!(" {dim}[inlined]{reset}");
    }
    if let Some(m) = f.module.as_deref().filter(|m| Some(*m) != exe) {
        let base = m.rsplit('/').next().unwrap_or(m);
        s += &format!("  {dim}{}{reset}", esc(base));
    }
    if let (None, Some(why)) = (&f.function, &f.reason) {
        s += &format!("  {dim}({}){reset}", esc(why));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::report::{ExitInfo, LastWordsInfo, OomInfo, SignalInfo};

    #[test]
    fn labels_line_up_and_the_headline_is_set_apart_from_the_process() {
        let text = "Traceback (most recent call last):\n  File \"/app/job.py\", line 3, in <module>\n    run()\nValueError: bad row 17\n";
        let r = Report {
            kind: "runtime_error",
            comm: "python3".into(),
            pid: 7,
            tid: 7,
            exe: Some("/usr/bin/python3.11".into()),
            error: crate::read::parse::recognise(text),
            ..Report::default()
        };
        let out = pretty(&r, false);
        let head = out.lines().next().unwrap();
        assert!(
            head.starts_with("✗ runtime_error ValueError: bad row 17 — python3 pid 7 tid 7"),
            "{out}"
        );
        // Every label's value starts in one column.
        let column = |label: &str| {
            let l = out
                .lines()
                .find(|l| l.trim_start().starts_with(label))
                .unwrap_or_else(|| panic!("no {label} line: {out}"));
            l.len() - l[2 + label.len()..].trim_start().len()
        };
        assert_eq!(column("exe"), column("error"), "{out}");
        assert_eq!(column("exe"), column("exit"), "{out}");
    }

    fn signal(name: &str, number: i32) -> SignalInfo {
        SignalInfo {
            number,
            name: name.into(),
            code: -6,
            code_name: Some("SI_TKILL"),
            addr: None,
            sender: None,
            ip: None,
            sp: None,
            handled: false,
            registers: Default::default(),
        }
    }

    /// A signal death's words the parsers do not know (`abort()` after a message of the
    /// program's own) are shown: they are often all there is to say why.
    #[test]
    fn a_signal_deaths_last_words_are_shown() {
        let r = Report {
            kind: "signal",
            comm: "worker".into(),
            signal: Some(signal("SIGABRT", 6)),
            exit: ExitInfo::from_status(6),
            last_words: Some(LastWordsInfo {
                text: "starting\nfatal: cannot continue\n".into(),
                bytes: 31,
                truncated: false,
                unreadable: 0,
            }),
            ..Report::default()
        };
        let text = pretty(&r, false);
        assert!(text.contains("  stderr    starting\n"), "{text}");
        assert!(
            text.contains("            fatal: cannot continue\n"),
            "{text}"
        );
    }

    /// An OOM kill reads as one, with the limit that was hit; never as `SIGKILL (SI_USER)`.
    #[test]
    fn an_oom_kill_says_which_limit() {
        let r = Report {
            kind: "oom_kill",
            comm: "api".into(),
            signal: Some(SignalInfo {
                code: 0,
                code_name: None,
                ..signal("SIGKILL", 9)
            }),
            exit: ExitInfo::from_status(9),
            oom: Some(OomInfo {
                constraint: Some("cgroup"),
                cgroup: Some("/kubepods/pod1".into()),
                limit_bytes: Some(64 << 20),
                usage_bytes: Some(64 << 20),
                rss_anon_bytes: Some(60 << 20),
                rss_file_bytes: Some(1 << 20),
                rss_shmem_bytes: Some(0),
                swap_bytes: Some(0),
                oom_score_adj: Some(0),
            }),
            ..Report::default()
        };
        let text = pretty(&r, false);
        let first = text.lines().next().unwrap();
        assert!(
            first.starts_with("✗ oom_kill OOM kill: cgroup /kubepods/pod1 at its 64 MiB limit"),
            "{text}"
        );
        assert!(
            text.contains("rss anon 60 MiB file 1 MiB shmem 0 B"),
            "{text}"
        );
        assert!(!text.contains("SI_USER"), "{text}");
    }
}
