//! `crashwatch check`: can crashwatch run on this host, and if not, what to do about it.
use std::path::Path;

use anyhow::{bail, Result};

const TRACEFS: &str = "/sys/kernel/tracing";

/// The capabilities crashwatch needs (bit numbers from linux/capability.h).
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

fn effective_caps() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0)
}

pub fn privileged() -> bool {
    let caps = effective_caps();
    let has = |c: u32| caps & (1 << c) != 0;
    has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON))
}

pub fn require_privileges() -> Result<()> {
    if !privileged() {
        bail!("needs root (or CAP_BPF + CAP_PERFMON) to load eBPF programs: run it with sudo");
    }
    Ok(())
}

/// Mounts tracefs when it is missing (tracepoints and uprobes need it); true when available.
pub fn ensure_tracefs() -> bool {
    if Path::new(TRACEFS).join("events").exists() {
        return true;
    }
    // SAFETY: valid C strings; mount(2) fails cleanly without privileges.
    let rc = unsafe {
        libc::mount(
            c"nodev".as_ptr(),
            c"/sys/kernel/tracing".as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    rc == 0 && Path::new(TRACEFS).join("events").exists()
}

fn tracefs_in_mountinfo() -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|m| {
            m.lines()
                .any(|l| l.contains(" /sys/kernel/tracing ") && l.contains(" - tracefs "))
        })
        .unwrap_or(false)
}

struct Line {
    /// None: could not be checked (without root tracefs is unreadable).
    ok: Option<bool>,
    what: &'static str,
    detail: String,
    fix: &'static str,
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

/// Prints one line per requirement; returns whether crashwatch can run.
pub fn run() -> bool {
    let mut lines = Vec::new();
    let rel = kernel_release();
    lines.push(Line {
        ok: Some(version_at_least(&rel, 5, 15)),
        what: "kernel",
        detail: format!(
            "Linux {rel} (5.15 or newer needed: BTF tracepoints, ring buffer, bpf_task_pt_regs)"
        ),
        fix: "upgrade the kernel",
    });
    let btf = crate::probe::btf::load(0);
    lines.push(Line {
        ok: Some(btf.is_ok()),
        what: "BTF",
        detail: match &btf {
            Ok(l) => format!(
                "{} readable, all struct fields found (sched_process_exit {} group_dead)",
                crate::probe::btf::VMLINUX,
                if l.exit_has_group_dead {
                    "with"
                } else {
                    "without"
                }
            ),
            Err(e) => format!("{e:#}"),
        },
        fix: "use a kernel built with CONFIG_DEBUG_INFO_BTF=y (all major distributions ship one)",
    });
    let priv_ok = privileged();
    lines.push(Line {
        ok: Some(priv_ok),
        what: "privileges",
        detail: if priv_ok {
            "CAP_BPF + CAP_PERFMON (or CAP_SYS_ADMIN) held".into()
        } else {
            "not root, no CAP_BPF/CAP_PERFMON".into()
        },
        fix: "run as root (sudo crashwatch ...) or grant CAP_BPF, CAP_PERFMON, CAP_SYS_RESOURCE",
    });
    let tracefs = if priv_ok {
        ensure_tracefs()
    } else {
        tracefs_in_mountinfo()
    };
    lines.push(Line {
        ok: Some(tracefs),
        what: "tracefs",
        detail: match (tracefs, priv_ok) {
            (true, _) => format!("{TRACEFS} mounted"),
            (false, true) => format!("{TRACEFS} not mounted and mounting it failed"),
            (false, false) => format!("{TRACEFS} not mounted (crashwatch mounts it as root)"),
        },
        fix: "mount -t tracefs nodev /sys/kernel/tracing",
    });
    // tracefs is root-only: without root, uprobe support cannot be seen.
    let uprobes = Path::new(TRACEFS).join("uprobe_events").exists();
    lines.push(Line {
        ok: priv_ok.then_some(uprobes),
        what: "uprobes",
        detail: if uprobes {
            "uprobe events available (Go runtime probes)".into()
        } else {
            "no uprobe_events in tracefs".into()
        },
        fix: "use a kernel with CONFIG_UPROBE_EVENTS=y",
    });
    if priv_ok && btf.is_ok() && tracefs {
        let loaded = crate::probe::Probe::load(1 << 16, 0);
        lines.push(Line {
            ok: Some(loaded.is_ok()),
            what: "programs",
            detail: match &loaded {
                Ok(p) => format!(
                    "ring buffer created; {} verified and attached",
                    p.program_names().join(", ")
                ),
                Err(e) => format!("{e:#}"),
            },
            fix: "report this with the output of `crashwatch check`: the kernel refused a program",
        });
    }
    let mut ok = true;
    for l in &lines {
        ok &= l.ok == Some(true);
        let (mark, detail) = match l.ok {
            Some(true) => ("ok  ", l.detail.as_str()),
            Some(false) => ("FAIL", l.detail.as_str()),
            None => ("??  ", "not checked: needs root to read tracefs"),
        };
        println!("{mark} {:<11} {detail}", l.what);
        if l.ok == Some(false) {
            println!("     {:<11} fix: {}", "", l.fix);
        }
    }
    println!(
        "{}",
        if ok {
            "crashwatch can run on this host"
        } else {
            "crashwatch cannot run on this host yet"
        }
    );
    ok
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
