//! `crashwatch check`: can crashwatch run on this host, what of it works, and what to do about
//! what does not. Every line names a real cause: a capability by name, a kernel option by
//! name, the program the kernel refused with the verifier's words.
use std::path::Path;

use crate::util::privileges::{Caps, USED};

/// The perf PMU the kernel offers for uprobes (CONFIG_UPROBE_EVENTS); world-readable.
const UPROBE_PMU: &str = "/sys/bus/event_source/devices/uprobe/type";

struct Line {
    ok: bool,
    /// Not a failure: crashwatch runs, with something off.
    warn: bool,
    what: String,
    detail: String,
    fix: String,
}

fn line(ok: bool, what: &str, detail: String, fix: &str) -> Line {
    Line {
        ok,
        warn: false,
        what: what.into(),
        detail,
        fix: fix.into(),
    }
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn version_at_least(release: &str, major: u32, minor: u32) -> bool {
    let mut it = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse::<u32>().ok());
    let (a, b) = (it.next().unwrap_or(0), it.next().unwrap_or(0));
    (a, b) >= (major, minor)
}

/// Prints one line per requirement, the programs loaded with `settings` (`run`'s flags);
/// returns whether crashwatch can run.
pub fn run(settings: crate::kernel::probe::Settings) -> bool {
    let mut lines = Vec::new();
    let rel = kernel_release();
    lines.push(line(
        version_at_least(&rel, 5, 15),
        "kernel",
        format!(
            "Linux {rel} (5.15 or newer needed: BTF tracepoints, ring buffer, bpf_task_pt_regs)"
        ),
        "upgrade the kernel",
    ));
    let btf = crate::kernel::probe::btf::load(0, 0, 0);
    lines.push(line(
        btf.is_ok(),
        "BTF",
        match &btf {
            Ok(l) => format!(
                "{} readable, all struct fields found (sched_process_exit {} group_dead)",
                crate::kernel::probe::btf::VMLINUX,
                if l.exit_has_group_dead {
                    "with"
                } else {
                    "without"
                }
            ),
            Err(e) => format!("{e:#}"),
        },
        "use a kernel built with CONFIG_DEBUG_INFO_BTF=y (all major distributions ship one)",
    ));
    let caps = Caps::current();
    for (cap, name, what_for) in USED {
        let held = caps.effectively(cap);
        let essential = matches!(name, "CAP_BPF" | "CAP_PERFMON");
        let mut l = line(
            held || !essential,
            name,
            if held {
                format!("held: {what_for}")
            } else {
                format!("missing: cannot {what_for}")
            },
            "run as root, or grant it (systemd: AmbientCapabilities=; Kubernetes: securityContext.capabilities.add)",
        );
        l.warn = !held && !essential;
        lines.push(l);
    }
    let uprobes = Path::new(UPROBE_PMU).exists();
    lines.push(line(
        uprobes,
        "uprobes",
        if uprobes {
            format!("{UPROBE_PMU} present (Go runtime probes)")
        } else {
            format!("{UPROBE_PMU} missing: no Go runtime probes (Go crashes reported as exits and signals only)")
        },
        "use a kernel built with CONFIG_UPROBE_EVENTS=y",
    ));
    if caps.can_load() && btf.is_ok() {
        let ring_kib = settings.ring_bytes / 1024;
        let loaded = crate::kernel::probe::Probe::load(settings, None);
        if let Ok(p) = &loaded {
            for off in caps.degraded(p.has_uprobe_multi()) {
                let mut l = line(true, "less", off, "grant the capability it names");
                l.warn = true;
                lines.push(l);
            }
            use crate::kernel::probe::writes::Attached;
            // Without last words the agent still runs: a warning.
            let mut l = line(
                true,
                "last words",
                p.last_words.to_string(),
                "fentry needs a kernel that lets BPF trampolines attach (no lockdown or LSM refusing them); --last-words off spares the syscall path and drops last words",
            );
            l.warn = matches!(
                p.last_words,
                Attached::Tracepoint(_) | Attached::Unavailable(_)
            );
            lines.push(l);
        }
        lines.push(line(
            loaded.is_ok(),
            "programs",
            match &loaded {
                Ok(p) => {
                    let copies = p.layout.config.guard_copies;
                    format!(
                        "ring buffer of {} KiB created; {} verified and attached; recursion guard: {copies} {} of each tracepoint program; Go binaries: {}",
                        ring_kib,
                        p.program_names().join(", "),
                        if copies == 1 { "copy" } else { "copies" },
                        p.go_attach_mode()
                    )
                }
                Err(e) => format!("{e:#}"),
            },
            "report this with the output of `crashwatch check`: the kernel refused a program",
        ));
    }
    print(
        &lines,
        "crashwatch can run on this host",
        "crashwatch cannot run on this host yet",
    )
}

/// `check --sinks`: each configured output tried once; the crash history under `state_dir`
/// unless `no_store`.
pub fn sinks(outputs: &super::outputs::OutputArgs, state_dir: &Path, no_store: bool) -> bool {
    let mut lines = Vec::new();
    let fix = "see the detail; `crashwatch run --help` describes the flag";
    let mut record = |what: &str, r: anyhow::Result<String>, fix: &str| {
        lines.push(match r {
            Ok(d) => line(true, what, d, fix),
            Err(e) => line(false, what, format!("{e:#}"), fix),
        })
    };
    if no_store {
        record("crash history", Ok("none kept (--no-store)".into()), "");
    } else {
        record(
            "crash history",
            crate::outputs::store::Store::open(state_dir).map(|s| {
                format!(
                    "{} usable ({} clusters)",
                    state_dir.join(crate::outputs::store::FILE).display(),
                    s.clusters().map_or(0, |c| c.len())
                )
            }),
            "give --state-dir a directory root can write, or run with --no-store",
        );
    }
    if let Some(f) = outputs.file() {
        record("file", crate::outputs::FileSink::probe(&f), fix);
    }
    let hooks = match outputs.network(state_dir) {
        Ok(h) => h,
        Err(e) => {
            record("hub", Err(e), "give --hub and --hub-token-file together");
            Vec::new()
        }
    };
    for w in &hooks {
        record(
            w.name,
            crate::outputs::Webhook::probe(w),
            "check the URL, the endpoint and its TLS certificate (--webhook-ca, --otlp-ca, --hub-ca)",
        );
    }
    if let Some(addr) = outputs.listen() {
        let fix = "pick a free address with --listen, or --listen off";
        lines.push(match std::net::TcpListener::bind(addr) {
            Ok(_) => line(
                true,
                "listen",
                format!("{addr} can be bound for /metrics"),
                fix,
            ),
            // Most likely the agent itself: a warning, not a failure.
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                let mut l = line(
                    true,
                    "listen",
                    format!("{addr} is in use (a running agent, or another program)"),
                    fix,
                );
                l.warn = true;
                l
            }
            Err(e) => line(false, "listen", format!("{addr}: {e}"), fix),
        });
        lines.push(match outputs.listen_token() {
            Ok(Some(_)) => line(
                true,
                "crash page",
                "the --listen-token-file token is read: page and API need it".into(),
                "",
            ),
            Ok(None) => line(
                true,
                "crash page",
                "no token: page and API answer this host's loopback connections only".into(),
                "",
            ),
            Err(e) => line(
                false,
                "crash page",
                format!("{e:#}"),
                "write a token of 16+ printable characters on the file's first line",
            ),
        });
    }
    print(&lines, "every output works", "some outputs do not work")
}

/// Prints the lines; whether all passed (and were written, or the reader went away).
fn print(lines: &[Line], good: &str, bad: &str) -> bool {
    use std::fmt::Write;
    let (mut ok, mut text) = (true, String::new());
    for l in lines {
        ok &= l.ok;
        let mark = match (l.ok, l.warn) {
            (true, false) => "ok  ",
            (true, true) => "warn",
            (false, _) => "FAIL",
        };
        let _ = writeln!(text, "{mark} {:<19} {}", l.what, l.detail);
        if !l.ok || l.warn {
            let _ = writeln!(text, "     {:<19} fix: {}", "", l.fix);
        }
    }
    let _ = writeln!(text, "{}", if ok { good } else { bad });
    match super::out::write(&text) {
        Ok(()) => ok,
        Err(e) => {
            crate::say!("crashwatch check: writing the output: {e}");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn kernel_versions_compare() {
        assert!(super::version_at_least("6.18.44-fc-v445", 5, 15));
        assert!(super::version_at_least("5.15.0", 5, 15));
        assert!(!super::version_at_least("5.4.0-100-generic", 5, 15));
    }
}
