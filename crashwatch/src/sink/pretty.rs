//! The readable form of a report, for a terminal. It escapes every string a process could
//! have chosen ([`crate::escape`]): names, command lines, paths, panic messages, function
//! names.

use crate::{escape::escape as esc, report::Report, symbolize::Frame};

/// The width of the labels (`container` is the longest): every value starts in one column.
const LABEL: usize = 9;

/// A readable block per crash.
pub fn pretty(r: &Report, color: bool) -> String {
    let (bold, red, dim, reset) = if color {
        ("\x1b[1m", "\x1b[1;31m", "\x1b[2m", "\x1b[0m")
    } else {
        ("", "", "", "")
    };
    let mut s = String::new();
    let go = r.go.as_ref();
    let what = match (&r.signal, r.kind) {
        (_, "oom_kill") => "killed by the OOM killer".to_string(),
        (_, "go_panic") => format!(
            "panic: {}",
            esc(go.and_then(|g| g.panic_value.as_deref()).unwrap_or("?"))
        ),
        (_, "go_fatal") => format!(
            "fatal error: {}",
            esc(go.and_then(|g| g.fatal_message.as_deref()).unwrap_or("?"))
        ),
        (_, "runtime_error") => {
            esc(r.error.as_ref().map_or("?", |e| e.headline.as_str())).into_owned()
        }
        (Some(sig), _) => {
            let code = sig.code_name.map(|c| format!(" ({c})")).unwrap_or_default();
            format!("{}{code}", sig.name)
        }
        _ => format!("exit code {}", r.exit.code.unwrap_or(0)),
    };
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
    if let Some(d) = &r.error {
        error(&mut s, d, go.is_none(), color);
    }
    if let Some(g) = go {
        let mut parts = vec![esc(g.version.as_deref().unwrap_or("go?")).into_owned()];
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
    s.push('\n');
    s
}

/// The runtime's account: its error line, the chain of errors when there is more than one,
/// and (for runtimes without a section of their own) the first frames of its stack.
fn error(s: &mut String, d: &crate::parse::Death, frames: bool, color: bool) {
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

/// One frame as people read it: address, `function (file:line)`, the module's file name when
/// the frame is outside the executable `exe`, `[inlined]` for a call inlined into the frame
/// below it, and why a frame has no name.
pub fn frame(f: &Frame, exe: Option<&str>, color: bool) -> String {
    let (bold, dim, reset) = if color {
        ("\x1b[1m", "\x1b[2m", "\x1b[0m")
    } else {
        ("", "", "")
    };
    let mut s = format!("{:#014x} ", f.ip);
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

    #[test]
    fn labels_line_up_and_the_headline_is_set_apart_from_the_process() {
        let text = "Traceback (most recent call last):\n  File \"/app/job.py\", line 3, in <module>\n    run()\nValueError: bad row 17\n";
        let r = Report {
            kind: "runtime_error",
            comm: "python3".into(),
            pid: 7,
            tid: 7,
            exe: Some("/usr/bin/python3.11".into()),
            error: crate::parse::recognise(text),
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
}
