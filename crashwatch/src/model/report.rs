//! The report: one JSON object per crash. Field meanings are documented in docs/report.md;
//! change both together.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize, Serializer};

use crate::model::frame::Frame;

// Read back by `crashwatch report ID` ([`crate::model::readback`]): every type here derives
// Deserialize, with defaults for fields an older or newer agent did not write.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Report {
    /// Time of death (the kernel's exit timestamp), RFC 3339 UTC.
    pub time: String,
    pub host: String,
    /// `signal`, `oom_kill`, `exit`, `go_panic`, `go_fatal`, `runtime_error` or `termination`
    /// (`model::crash::Kind`).
    #[serde(deserialize_with = "crate::model::readback::interned")]
    pub kind: crate::model::readback::Name,
    pub pid: u32,
    /// The thread the fatal signal was delivered to (the pid when there was none).
    pub tid: u32,
    pub ppid: u32,
    pub uid: u32,
    /// The process's start (the kernel's `start_time` of its leader, ns since boot): with
    /// `boot_id`, `host` and `pid`, names one process of one node for good (the hub's key).
    #[serde(skip_serializing_if = "is_zero")]
    pub start_time_ns: u64,
    /// The node's boot (`/proc/sys/kernel/random/boot_id`); empty when unreadable.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub boot_id: String,
    pub comm: String,
    /// Absolute path of the executable in the process's view, or absent.
    pub exe: Option<String>,
    pub cmdline: Vec<String>,
    /// `cmdline` is the start of a longer argument list (`--cmdline-max`).
    pub cmdline_truncated: bool,
    pub cgroup: Option<String>,
    /// The container it ran in, from the cgroup path and the runtime's files.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<crate::model::container::ContainerInfo>,
    /// Its Kubernetes pod, for a container in one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub k8s: Option<crate::model::container::K8sInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<SignalInfo>,
    pub exit: ExitInfo,
    /// Go runtime details, for processes running a Go binary.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub go: Option<GoInfo>,
    pub stack: Vec<Frame>,
    /// The runtime's own account of the death, parsed from what the process printed on its
    /// way down (docs/report.md, "error").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<crate::model::death::Death>,
    /// What the process wrote to stderr before it died.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_words: Option<LastWordsInfo>,
    /// Which crashes are the same bug: `v1:<16 hex>` (docs/fingerprint.md); absent for a
    /// termination.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub fingerprint: String,
    /// Its cluster on this node: how often, since when, looping.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<crate::model::cluster::ClusterInfo>,
    /// For an `oom_kill`: which limit was hit and how much the process held.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oom: Option<OomInfo>,
    /// For a `termination` (a death someone asked for; reported only with
    /// `--report-terminations`): the stop request it followed, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub termination: Option<TerminationInfo>,
    /// Kernel events lost (ring buffer full, recursion misses not redone) since the previous
    /// report.
    pub lost_before: u64,
    /// Why this report is less than whole (building it failed; what is here was known
    /// without it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report_error: Option<String>,
    /// Every thread of the process, from its core dump (`--dumps`): the one that took the
    /// fatal signal first. Empty without a dump.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub threads: Vec<ThreadInfo>,
    /// The core dump the threads came from (`--dumps`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dump: Option<DumpInfo>,
}

/// One thread of a dumped process (docs/report.md, `threads`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct ThreadInfo {
    pub tid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The thread that took the fatal signal.
    pub crashed: bool,
    /// `running`, or `in syscall NAME` (the call it was blocked in).
    pub state: String,
    /// Its user registers at the dump, named as `signal.registers` names them.
    pub registers: BTreeMap<String, String>,
    pub stack: Vec<Frame>,
    /// Why its stack is short or missing, when it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The core dump a report's threads came from.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct DumpInfo {
    /// Bytes of the core the kernel streamed to the agent.
    pub bytes: u64,
    /// How long the process was held for it, in milliseconds.
    pub held_ms: u64,
    /// Why it is less than whole (cut at `--dump-timeout`, bounds); absent when whole.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cut: Option<String>,
    /// The minidump kept of it, on the node (`crashwatch dump ID` writes it out).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub minidump: Option<String>,
    /// Why no minidump was kept although the state directory keeps them (its quota, the
    /// free space kept, a write error).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub minidump_missing: Option<String>,
    /// The whole core kept, zstd-compressed, on the node (`--keep-cores`; `crashwatch dump
    /// ID --core` writes it out, `crashwatch debug ID` opens it in gdb).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub core: Option<String>,
    /// Bytes of the kept core file (compressed).
    #[serde(skip_serializing_if = "is_zero")]
    pub core_bytes: u64,
    /// Why the core was not kept although `--keep-cores` asked (its quota, the free space).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub core_missing: Option<String>,
    /// The process's root directory in the node's view when it was not the node's own (a
    /// container's root filesystem, while mounted): the sysroot `crashwatch debug` gives gdb.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub root: Option<String>,
    /// A CPython process's own stacks, read from its memory while it was held: their frames
    /// are among `stack`'s and each thread's (`found_by: python`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub python: Option<PythonInfo>,
    /// The files mapped into the process, for symbolizing its addresses elsewhere.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<ImageInfo>,
}

/// What a dying CPython's memory gave.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct PythonInfo {
    /// The interpreter's version (`3.11`).
    pub version: String,
    /// Its thread states read.
    pub threads: u32,
    /// What was left out, or why nothing was read; absent when whole.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cut: Option<String>,
}

/// A file mapped into a dumped process: where, and which build.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct ImageInfo {
    /// Its path in the process's view.
    pub path: String,
    /// Where its first loadable segment was mapped.
    #[serde(
        serialize_with = "hex",
        deserialize_with = "crate::model::readback::hex"
    )]
    pub base: u64,
    /// Bytes from `base` to the end of its last loadable segment.
    pub size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub build_id: Option<String>,
}

/// What the OOM killer saw as it chose the process (docs/report.md, `oom`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct OomInfo {
    /// `cgroup`: a memory cgroup was at its limit (`cgroup` names it); `system`: none was,
    /// the host (or a cpuset or memory policy) ran out; null when the kernel said nothing.
    #[serde(deserialize_with = "crate::model::readback::interned_opt")]
    pub constraint: Option<crate::model::readback::Name>,
    /// The memory cgroup at its limit: the process's own or a parent's (a pod's), as
    /// `cgroup` paths are written.
    pub cgroup: Option<String>,
    pub limit_bytes: Option<u64>,
    pub usage_bytes: Option<u64>,
    /// The process's resident memory by kind at the kill; null where the kernel named only
    /// its pid (before Linux 6.8, when another task ran the OOM killer).
    pub rss_anon_bytes: Option<u64>,
    pub rss_file_bytes: Option<u64>,
    pub rss_shmem_bytes: Option<u64>,
    pub swap_bytes: Option<u64>,
    pub oom_score_adj: Option<i32>,
}

/// How a termination came about, beyond its signal.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct TerminationInfo {
    /// A stop request (`SIGTERM`, `SIGINT`) the process handled itself before it was
    /// killed; null when it had none.
    pub after: Option<String>,
    /// Seconds from that request to the death.
    pub after_secs: Option<f64>,
    /// A SIGKILL within the grace window after that request: a stop that took longer than
    /// its grace period.
    pub grace_expired: bool,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct LastWordsInfo {
    /// The head of its dying words and the tail of all it wrote, with a marker between
    /// when the middle was not kept.
    pub text: String,
    /// Bytes it wrote to stderr in all.
    pub bytes: u64,
    pub truncated: bool,
    /// Bytes the kernel could not read from the process when it wrote them (nor later):
    /// shown in `text` as `[crashwatch: N bytes unreadable]`.
    pub unreadable: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct SignalInfo {
    pub number: i32,
    pub name: String,
    pub code: i32,
    #[serde(deserialize_with = "crate::model::readback::interned_opt")]
    pub code_name: Option<crate::model::readback::Name>,
    /// Faulting address (SIGSEGV, SIGBUS, SIGFPE, SIGILL raised by the kernel for a fault).
    #[serde(
        serialize_with = "hex_opt",
        deserialize_with = "crate::model::readback::hex_opt"
    )]
    pub addr: Option<u64>,
    /// Who sent the signal, when a process did (`kill`, `tgkill`, `sigqueue`).
    pub sender: Option<Sender>,
    #[serde(
        serialize_with = "hex_opt",
        deserialize_with = "crate::model::readback::hex_opt"
    )]
    pub ip: Option<u64>,
    #[serde(
        serialize_with = "hex_opt",
        deserialize_with = "crate::model::readback::hex_opt"
    )]
    pub sp: Option<u64>,
    /// The process had a handler installed (Go, JVMs) and died after it ran.
    pub handled: bool,
    /// User registers at delivery, named as the kernel's `struct pt_regs` names them.
    pub registers: BTreeMap<String, String>,
}

/// The process that sent a signal, as the kernel recorded it in the siginfo.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Sender {
    pub pid: u32,
    pub uid: u32,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct GoInfo {
    /// Toolchain that built the binary (`go1.21.13`).
    pub version: Option<String>,
    /// The panic value as the runtime printed it (error and Stringer values as their text).
    pub panic_value: Option<String>,
    /// The panic value's dynamic type (`string`, `*errors.errorString`, `main.custom`, ...).
    pub panic_type: Option<String>,
    /// `fatal error:` message (`concurrent map writes`, `stack overflow`, ...).
    pub fatal_message: Option<String>,
    /// The panicking (or throwing) goroutine's id.
    pub goroutine: Option<u64>,
    /// What the runtime printed on its way down (head and tail when longer than the cap).
    pub stderr: String,
    /// Bytes the runtime printed in all; more than `stderr` holds when capped.
    pub stderr_bytes: u64,
    pub stderr_truncated: bool,
    /// `stderr` parsed into goroutines.
    pub goroutines: Vec<crate::model::go::Goroutine>,
    /// The binary's build info (`go version -m`).
    pub build: Option<crate::model::go::BuildInfo>,
    /// User registers at the runtime's fatal path (the first instruction of `fatalpanic`,
    /// `throw` or `fatal`), named as `signal.registers` are; absent without a fatal path.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub registers: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ExitInfo {
    /// Exit code when the process exited, null when a signal ended it.
    pub code: Option<u32>,
    /// Terminating signal when a signal ended it.
    pub signal: Option<i32>,
    pub signal_name: Option<String>,
    pub core_dumped: bool,
    /// The raw wait(2) status.
    pub status: u32,
}

impl ExitInfo {
    pub fn from_status(status: u32) -> Self {
        let sig = (status & 0x7f) as i32;
        ExitInfo {
            code: (sig == 0).then_some((status >> 8) & 0xff),
            signal: (sig != 0).then_some(sig),
            signal_name: (sig != 0).then(|| crate::model::signals::name(sig)),
            core_dumped: status & 0x80 != 0,
            status,
        }
    }
}

/// A byte count as people write it: `512 B`, `64 MiB`, `1.5 GiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 || v.fract() == 0.0 {
        format!("{v:.0} {}", UNITS[unit])
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

impl Report {
    /// A report from its JSON, as an agent of any version wrote it (see
    /// [`crate::model::readback`]).
    pub fn from_json(json: &str) -> serde_json::Result<Report> {
        serde_json::from_str(json)
    }
}

pub fn hex<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{v:#x}"))
}

pub fn hex_opt<S: Serializer>(v: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => hex(v, s),
        None => s.serialize_none(),
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_counts_read_as_people_write_them() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(64 << 20), "64 MiB");
        assert_eq!(human_bytes(3 << 29), "1.5 GiB");
    }

    #[test]
    fn wait_status_decodes() {
        let e = ExitInfo::from_status(3 << 8);
        assert_eq!((e.code, e.signal, e.core_dumped), (Some(3), None, false));
        let e = ExitInfo::from_status(11 | 0x80);
        assert_eq!((e.code, e.signal, e.core_dumped), (None, Some(11), true));
        assert_eq!(e.signal_name.as_deref(), Some("SIGSEGV"));
    }
}
