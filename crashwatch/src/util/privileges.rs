//! What the agent may do on this host: the capabilities it holds, and which of crashwatch's
//! features each one is needed for. `run` says at start what is off and why; `check` says the
//! same per capability.
//!
//! The minimal set, found by running the agent as an unprivileged user with each capability
//! taken away in turn (docs/install.md, "Requirements"):
//! - `CAP_BPF`: create maps, load programs;
//! - `CAP_PERFMON`: load tracing programs (tp_btf, uprobes), attach the Go probes as
//!   uprobe_multi links (Linux 6.6+);
//! - `CAP_SYS_PTRACE`: open another user's `/proc/<pid>/exe` and `/proc/<pid>/root`. Without
//!   it (CAP_PERFMON still reads their `maps`) their binaries are opened at the paths they ran
//!   from, checked against the kernel's identity of the file, which works on the host and fails
//!   for processes in containers (another mount namespace);
//! - `CAP_DAC_READ_SEARCH`: read a binary whose mode does not let the agent's user read it.
//!
//! - `CAP_SYS_ADMIN`, only on kernels without uprobe_multi (before 6.6): the Go probes are then
//!   perf-event uprobes, which need it since the fix for CVE-2025-38466 (5.15.189, 6.1.146,
//!   6.6.99, 6.12.39 and later; a probe the kernel cannot check lands inside an instruction).
//!
//! Root holds them all. Nothing needs tracefs: the tracepoints are BTF ones and uprobes go
//! through uprobe_multi links or the `uprobe` perf PMU.

pub const CAP_DAC_OVERRIDE: u32 = 1;
pub const CAP_DAC_READ_SEARCH: u32 = 2;
pub const CAP_SYS_PTRACE: u32 = 19;
pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_PERFMON: u32 = 38;
pub const CAP_BPF: u32 = 39;

/// The capabilities crashwatch uses, with what each is for.
pub const USED: [(u32, &str, &str); 4] = [
    (CAP_BPF, "CAP_BPF", "create maps and load the eBPF programs"),
    (
        CAP_PERFMON,
        "CAP_PERFMON",
        "load tracing programs and attach the Go uprobes",
    ),
    (
        CAP_SYS_PTRACE,
        "CAP_SYS_PTRACE",
        "open other users' processes' executables and roots (containers: Go probes, exe paths, frame names)",
    ),
    (
        CAP_DAC_READ_SEARCH,
        "CAP_DAC_READ_SEARCH",
        "read binaries whose file mode does not allow it (Go probes, frame names)",
    ),
];

/// The effective capability set of this process.
#[derive(Clone, Copy, Debug)]
pub struct Caps(u64);

impl Caps {
    pub fn current() -> Caps {
        Caps(
            std::fs::read_to_string("/proc/self/status")
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find_map(|l| l.strip_prefix("CapEff:"))
                        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
                })
                .unwrap_or(0),
        )
    }

    pub fn has(self, cap: u32) -> bool {
        self.0 & (1 << cap) != 0
    }

    /// Enough to load and attach the programs: the agent can run at all.
    pub fn can_load(self) -> bool {
        self.has(CAP_SYS_ADMIN) || (self.has(CAP_BPF) && self.has(CAP_PERFMON))
    }

    /// Holds the capability, or one that implies it.
    pub fn effectively(self, cap: u32) -> bool {
        self.has(cap)
            || match cap {
                CAP_BPF | CAP_PERFMON => self.has(CAP_SYS_ADMIN),
                CAP_DAC_READ_SEARCH => self.has(CAP_DAC_OVERRIDE),
                _ => false,
            }
    }

    /// What is off for lack of a capability, one sentence each. `uprobe_multi`: the kernel
    /// attaches the Go probes as uprobe_multi links (else as perf-event uprobes).
    pub fn degraded(self, uprobe_multi: bool) -> Vec<String> {
        // SAFETY: plain syscall.
        let uid = unsafe { libc::geteuid() };
        let mut out = Vec::new();
        if !uprobe_multi && !self.has(CAP_SYS_ADMIN) {
            out.push(
                "no CAP_SYS_ADMIN and no uprobe_multi in this kernel: its perf-event uprobes need CAP_SYS_ADMIN (since the fix for CVE-2025-38466), so no Go binary gets runtime probes (Go panics are reported as plain exits or signals)"
                    .into(),
            );
        }
        if !self.effectively(CAP_SYS_PTRACE) {
            out.push(format!(
                "no CAP_SYS_PTRACE: binaries of processes of users other than uid {uid} are read only at paths in this agent's own view, so processes in containers get no Go runtime probes (their Go panics are reported as plain exits or signals), no executable path and no frame names"
            ));
        }
        if !self.effectively(CAP_DAC_READ_SEARCH) {
            out.push(
                "no CAP_DAC_READ_SEARCH: binaries this user may not read get no Go probes and no frame names"
                    .into(),
            );
        }
        out
    }
}

pub fn require_privileges() -> anyhow::Result<()> {
    if !Caps::current().can_load() {
        anyhow::bail!(
            "needs root, or CAP_BPF and CAP_PERFMON (with CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH for everything), to load eBPF programs: run it with sudo"
        );
    }
    Ok(())
}
