//! Sink: writes reports out, one per crash. JSON lines are flushed per report so a consumer
//! (a pipe, a log shipper, the tests) sees each crash as it happens.
use std::io::{self, Write};

use crate::report::Report;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Pretty on a terminal, JSON lines otherwise.
    Auto,
    Pretty,
    Json,
}

pub struct Sink {
    json: bool,
    color: bool,
    out: io::Stdout,
}

impl Sink {
    pub fn new(format: Format) -> Self {
        use std::io::IsTerminal;
        let tty = io::stdout().is_terminal();
        let json = match format {
            Format::Auto => !tty,
            Format::Pretty => false,
            Format::Json => true,
        };
        let color = tty && std::env::var_os("NO_COLOR").is_none();
        Sink {
            json,
            color,
            out: io::stdout(),
        }
    }

    pub fn emit(&mut self, r: &Report) -> io::Result<()> {
        let mut out = self.out.lock();
        if self.json {
            serde_json::to_writer(&mut out, r)?;
            out.write_all(b"\n")?;
        } else {
            out.write_all(pretty(r, self.color).as_bytes())?;
        }
        out.flush()
    }
}

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
            go.and_then(|g| g.panic_value.as_deref()).unwrap_or("?")
        ),
        (_, "go_fatal") => format!(
            "fatal error: {}",
            go.and_then(|g| g.fatal_message.as_deref()).unwrap_or("?")
        ),
        (Some(sig), _) => {
            let code = sig.code_name.map(|c| format!(" ({c})")).unwrap_or_default();
            format!("{}{code}", sig.name)
        }
        _ => format!("exit code {}", r.exit.code.unwrap_or(0)),
    };
    s += &format!(
        "{red}✗ {} {}{reset} {bold}{}{reset} pid {} tid {}  {dim}{} on {}{reset}\n",
        r.kind, what, r.comm, r.pid, r.tid, r.time, r.host
    );
    let field = |s: &mut String, k: &str, v: &str| *s += &format!("  {dim}{k:<8}{reset} {v}\n");
    if let Some(exe) = &r.exe {
        field(&mut s, "exe", exe);
    }
    if !r.cmdline.is_empty() {
        field(&mut s, "cmdline", &r.cmdline.join(" "));
    }
    field(&mut s, "process", &format!("ppid {} uid {}", r.ppid, r.uid));
    if let Some(cg) = &r.cgroup {
        field(&mut s, "cgroup", cg);
    }
    if let Some(sig) = &r.signal {
        let mut parts = vec![format!("{} ({}) code {}", sig.name, sig.number, sig.code)];
        if let Some(a) = sig.addr {
            parts.push(format!("addr {a:#x}"));
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
    if let Some(g) = go {
        let mut parts = vec![g.version.clone().unwrap_or_else(|| "go?".into())];
        if let Some(t) = &g.panic_type {
            parts.push(format!("value type {t}"));
        }
        if let Some(id) = g.goroutine {
            parts.push(format!("goroutine {id}"));
        }
        if let Some(rev) = g.build.as_ref().and_then(|b| b.vcs_revision.as_deref()) {
            parts.push(format!("revision {}", &rev[..rev.len().min(12)]));
        }
        field(&mut s, "go", &parts.join("  "));
        if let Some(first) = g.goroutines.first() {
            s += &format!(
                "  {dim}goroutine {} [{}]{reset}\n",
                first.id,
                first.wait_reason.as_deref().unwrap_or(&first.state)
            );
            for f in first.frames.iter().take(8) {
                let at = match (&f.file, f.line) {
                    (Some(file), Some(line)) => format!("  {dim}{file}:{line}{reset}"),
                    _ => String::new(),
                };
                s += &format!("    {bold}{}{reset}{at}\n", f.function);
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
            let func = match (&f.function, f.function_offset) {
                (Some(n), Some(o)) => format!("{bold}{n}{reset}+{o:#x}"),
                (Some(n), None) => format!("{bold}{n}{reset}"),
                _ => "?".into(),
            };
            let module = f
                .module
                .as_deref()
                .map(|m| format!("  {dim}{m}{reset}"))
                .unwrap_or_default();
            s += &format!("    #{i:<2} {:#014x} {func}{module}\n", f.ip);
        }
    }
    s.push('\n');
    s
}
