//! Enrich (the pipeline's third stage, after symbolize): adds what the kernel records do not carry
//! (host name, resolved executable path, signal and register names, wall-clock time, the container
//! and pod from the cgroup path: [`cgroup`]) and builds the [`Report`]. Also owns reading /proc for
//! processes that were running before the agent started.
pub mod cgroup;
pub mod container;

use std::collections::BTreeMap;

use crate::{
    kernel::decode::{Exec, GoWhat},
    model::crash::{Crash, Output, ProcInfo},
    model::frame::Frame,
    model::report::{ExitInfo, GoInfo, LastWordsInfo, Report, Sender, SignalInfo},
    model::signals,
    read::gobin::GoBinary,
    read::parse::{self, go as goroutines},
};

pub struct Enricher {
    host: String,
    boot_id: String,
    /// Containers and pods, noted by the record loop at a process's first sight.
    containers: std::sync::Arc<container::Containers>,
    /// `struct pt_regs` member names and byte offsets, from BTF.
    regs: Vec<(String, u32)>,
    last_words_max: usize,
}

impl Enricher {
    /// `last_words_max`: bytes of a process's last words kept in its report.
    pub fn new(
        regs: Vec<(String, u32)>,
        last_words_max: usize,
        containers: std::sync::Arc<container::Containers>,
    ) -> Self {
        Enricher {
            host: hostname(),
            boot_id: crate::util::boot_id(),
            containers,
            regs,
            last_words_max,
        }
    }

    /// Raw `pt_regs` words as `{name: hex}`, named as the kernel's struct names them.
    fn named_registers(&self, regs: &[u64]) -> BTreeMap<String, String> {
        self.regs
            .iter()
            .filter_map(|(n, off)| {
                Some((n.clone(), format!("{:#x}", regs.get(*off as usize / 8)?)))
            })
            .collect()
    }

    /// The Kubernetes namespace of a dead process's pod, when it ran in one.
    pub fn namespace(&self, c: &Crash) -> Option<String> {
        let place = self.containers.note(&c.proc.as_ref()?.cgroup)?;
        place.k8s.as_ref()?.namespace.clone()
    }

    /// `go` is the Go binary the process ran, when it was one.
    pub fn report(
        &self,
        c: &Crash,
        stack: Vec<Frame>,
        lost_before: u64,
        go: Option<&GoBinary>,
    ) -> Report {
        let signal = c.signal.as_ref().map(|s| {
            // The kernel's group kill clears a SIGKILL's siginfo (every SIGKILL that ends a
            // process goes that way): no sender, no code to name.
            let cleared = s.sig == 9 && s.code == 0 && s.fields == 0;
            let registers = self.named_registers(&s.regs);
            let reg = |n: &str| {
                let off = self.regs.iter().find(|(name, _)| name == n)?.1;
                s.regs.get(off as usize / 8).copied()
            };
            SignalInfo {
                number: s.sig,
                name: signals::name(s.sig),
                code: s.code,
                code_name: signals::code_name(s.sig, s.code).filter(|_| !cleared),
                addr: signals::has_fault_addr(s.sig, s.code).then_some(s.fields),
                // siginfo's `_kill`: si_pid, then si_uid.
                sender: (signals::has_sender(s.code) && !cleared).then_some(Sender {
                    pid: s.fields as u32,
                    uid: (s.fields >> 32) as u32,
                }),
                ip: reg("ip").or_else(|| s.stack.first().copied()),
                sp: reg("sp"),
                handled: s.handled,
                registers,
            }
        });
        // With no signal record, the exit status still names the signal (SIGTERM's fast path).
        let signal = signal.or_else(|| {
            let sig = (c.status & 0x7f) as i32;
            (sig != 0).then(|| SignalInfo {
                number: sig,
                name: signals::name(sig),
                code: 0,
                code_name: None,
                addr: None,
                sender: None,
                ip: None,
                sp: None,
                handled: false,
                registers: BTreeMap::new(),
            })
        });
        let proc = c.proc.as_ref();
        let (cmdline, cmdline_truncated) = match &c.signal {
            Some(s) if !s.args.is_empty() => (s.args.clone(), s.args_truncated),
            _ => proc
                .map(|p| (p.args.clone(), p.args_truncated))
                .unwrap_or_default(),
        };
        let place = proc.and_then(|p| self.containers.note(&p.cgroup));
        let go_info = go_info(
            c,
            go,
            self.named_registers(c.go.as_ref().map_or(&[], |r| &r.regs)),
        );
        Report {
            time: crate::model::clock::rfc3339(crate::model::clock::monotonic_to_unix_ns(
                c.head.ktime_ns,
            )),
            host: self.host.clone(),
            kind: c.kind.as_str(),
            pid: c.head.pid,
            tid: c.signal.as_ref().map_or(c.head.pid, |s| s.head.tid),
            ppid: c.head.ppid,
            uid: c.head.uid,
            start_time_ns: c.head.start_ns,
            boot_id: self.boot_id.clone(),
            comm: c.head.comm.clone(),
            exe: proc.and_then(|p| p.exe.clone()),
            cmdline,
            cmdline_truncated,
            cgroup: proc.map(|p| p.cgroup.clone()).filter(|g| !g.is_empty()),
            container: place.as_ref().and_then(|p| p.container.clone()),
            k8s: place.as_ref().and_then(|p| p.k8s.clone()),
            signal,
            exit: ExitInfo::from_status(c.status),
            error: death(c, go_info.as_ref()),
            last_words: c.last_words.as_ref().map(|w| {
                let (text, cut) = capped_text(&w.text, self.last_words_max);
                LastWordsInfo {
                    text,
                    bytes: w.written,
                    truncated: w.truncated || cut,
                    unreadable: w.unreadable,
                }
            }),
            go: go_info,
            stack,
            oom: c
                .oom
                .as_ref()
                .map(|o| oom(o, proc.map(|p| p.cgroup.as_str()))),
            termination: (c.kind == crate::model::crash::Kind::Termination).then(|| termination(c)),
            // The cluster stage's.
            fingerprint: String::new(),
            cluster: None,
            lost_before,
            report_error: None,
            // The symbolize stage's, from a dump.
            threads: Vec::new(),
            dump: None,
        }
    }
}

/// A memory cgroup counter this close to its limit (pages) is at it: the charge that failed
/// was at most a huge page, and reclaim ran before the OOM killer.
const AT_LIMIT_PAGES: u64 = 1024;
/// A limit this high is none (the kernel's `PAGE_COUNTER_MAX` and the like).
const NO_LIMIT_PAGES: u64 = 1 << 50;

/// The `oom` section: the lowest memory cgroup at its limit (its path: the process's
/// `cgroup` less one component per level up), or none.
fn oom(o: &crate::kernel::decode::Oom, cgroup: Option<&str>) -> crate::model::report::OomInfo {
    // SAFETY: sysconf only reads.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
    let at_limit = o.memcg.iter().position(|&(usage, max)| {
        max < NO_LIMIT_PAGES && usage.saturating_add(AT_LIMIT_PAGES) >= max
    });
    let bytes = |pages: i64| (o.victim_read).then_some(pages.max(0) as u64 * page);
    let mut info = crate::model::report::OomInfo {
        constraint: match (at_limit, o.memcg.is_empty()) {
            (Some(_), _) => Some("cgroup"),
            (None, false) => Some("system"),
            (None, true) => None,
        },
        rss_file_bytes: bytes(o.rss_pages[0]),
        rss_anon_bytes: bytes(o.rss_pages[1]),
        swap_bytes: bytes(o.rss_pages[2]),
        rss_shmem_bytes: bytes(o.rss_pages[3]),
        oom_score_adj: o.victim_read.then_some(o.oom_score_adj),
        ..Default::default()
    };
    if let Some(level) = at_limit {
        let (usage, max) = o.memcg[level];
        info.limit_bytes = Some(max * page);
        info.usage_bytes = Some(usage * page);
        info.cgroup = cgroup.map(|c| {
            let parts: Vec<&str> = c.split('/').filter(|p| !p.is_empty()).collect();
            let keep = parts.len().saturating_sub(level);
            format!("/{}", parts[..keep].join("/"))
        });
    }
    info
}

/// The death the runtime announced: from the last words; for a Go death, from the runtime's
/// own output when its probes caught it (the uprobes have no recursion guard, while on 7.x
/// the write hooks can skip a write and leave a gap in the last words: the 7.3 VM once headed
/// a nested panic with a frame line so); a Go binary's own output where the kernel kept no
/// last words (the write hooks could not be attached).
fn death(c: &Crash, go: Option<&GoInfo>) -> Option<crate::model::death::Death> {
    let printed = || go.and_then(|g| parse::recognise(&g.stderr));
    match &c.error {
        Some(d) if d.runtime == "go" && c.output.total > 0 => Some(
            printed()
                .filter(|p| p.runtime == "go")
                .unwrap_or_else(|| d.clone()),
        ),
        Some(d) => Some(d.clone()),
        None => printed(),
    }
}

/// A Go runtime's dying words as the process's last words hold them (from the first line
/// of its death on), and whether they were cut; None when they are not a Go death.
fn go_words(c: &Crash) -> Option<(String, bool)> {
    let d = c.error.as_ref().filter(|d| d.runtime == "go")?;
    let w = c.last_words.as_ref()?;
    let text = String::from_utf8_lossy(&w.text);
    Some((text.get(d.start..)?.to_string(), w.truncated))
}

/// What a termination followed: a stop request the process handled, and whether the kill
/// came as its grace period ran out.
fn termination(c: &Crash) -> crate::model::report::TerminationInfo {
    let killed = c.status & 0x7f == 9;
    crate::model::report::TerminationInfo {
        after: c.asked.map(|(sig, _)| signals::name(sig)),
        after_secs: c.asked.map(|(_, ns)| (ns / 1_000_000) as f64 / 1e3),
        grace_expired: killed
            && c.asked
                .is_some_and(|(_, ns)| ns <= crate::model::crash::GRACE_WINDOW_NS),
    }
}

/// The `go` section: from the runtime's fatal-path record, its printed output and the binary.
/// When the probes missed the death (a binary's first run, a new agent), what the runtime
/// printed is taken from the process's last words, from its first dying line on, and parsed
/// as `analyze` parses logs: what that text does not say stays null.
fn go_info(
    c: &Crash,
    bin: Option<&GoBinary>,
    registers: BTreeMap<String, String>,
) -> Option<GoInfo> {
    let printed = go_words(c);
    if bin.is_none() && c.go.is_none() && printed.is_none() {
        return None;
    }
    let (stderr, stderr_bytes, stderr_truncated) = match (&printed, c.output.total) {
        (Some((text, cut)), 0) => (text.clone(), text.len() as u64, *cut),
        _ => (
            render_output(&c.output),
            c.output.total,
            c.output.dropped() > 0 || c.output.cut,
        ),
    };
    let tb = goroutines::parse(&stderr);
    let rec = c.go.as_ref();
    let (mut panic_value, mut panic_type, mut fatal_message) = (None, None, None);
    match rec.map(|g| g.what) {
        Some(GoWhat::Panic) => {
            let g = rec.unwrap();
            // The runtime's text (error/Stringer values are printed as text); the kernel's copy
            // of a string value when the output was not captured.
            panic_value = tb.panics.last().cloned().or_else(|| g.text.clone());
            panic_type = bin.and_then(|b| b.type_name(g.type_ptr, g.start_code));
        }
        Some(GoWhat::Fatal) => {
            fatal_message = rec
                .and_then(|g| g.text.clone())
                .or_else(|| tb.fatal_message());
        }
        // No fatal-path record: the runtime's signal handler killed it (cgo), or the probes
        // missed the death and its printed words tell.
        None if c.kind == crate::model::crash::Kind::GoPanic => {
            panic_value = tb.panics.last().cloned()
        }
        None if c.kind == crate::model::crash::Kind::GoFatal => fatal_message = tb.fatal_message(),
        None => {}
    }
    Some(GoInfo {
        version: bin.and_then(|b| b.version.clone()),
        panic_value,
        panic_type,
        fatal_message,
        goroutine: tb.goroutines.first().map(|g| g.id),
        stderr_bytes,
        stderr_truncated,
        stderr,
        goroutines: tb.goroutines,
        build: bin.and_then(|b| b.build.clone()),
        registers,
    })
}

/// `text` within `max` bytes: its head and its tail with a marker between when longer.
fn capped_text(text: &[u8], max: usize) -> (String, bool) {
    if text.len() <= max {
        return (String::from_utf8_lossy(text).into_owned(), false);
    }
    let half = max / 2;
    let cut = text.len() - 2 * half;
    let mut s = String::from_utf8_lossy(&text[..half]).into_owned();
    s.push_str(&format!("\n[... crashwatch: {cut} bytes not kept ...]\n"));
    s.push_str(&String::from_utf8_lossy(&text[text.len() - half..]));
    (s, true)
}

fn render_output(o: &Output) -> String {
    let mut s = String::from_utf8_lossy(&o.head).into_owned();
    if o.dropped() > 0 {
        s.push_str(&format!(
            "\n[... crashwatch: {} bytes not kept ...]\n",
            o.dropped()
        ));
    }
    let (a, b) = o.tail.as_slices();
    s.push_str(&String::from_utf8_lossy(&[a, b].concat()));
    s
}

/// Resolves the absolute executable path; the kernel's `filename` is what execve was given and
/// may be relative. Through the process while it still runs the file the exec record names (a
/// gone process's pid may be someone else's by now). Once it is gone, a relative path is tried
/// in its parent's working directory (where a shell runs `./bin/app` from), and taken only if
/// the file there is the very one the kernel ran.
pub fn resolve_exe(e: &mut Exec) {
    use crate::read::elf::FileId;
    let path = std::fs::read_link(format!("/proc/{}/exe", e.head.pid)).ok();
    if FileId::of_exe(e.head.pid) == Some(e.file) {
        e.exe = path.map(|p| p.to_string_lossy().into_owned());
        return;
    }
    if e.filename.is_empty() || e.head.ppid == 0 {
        return;
    }
    // The process is gone already (a short run, a busy agent): the path it was started by,
    // looked up through its parent's view, if the file there is the one the kernel ran.
    if e.filename.starts_with('/') {
        let through_parent = format!("/proc/{}/root{}", e.head.ppid, e.filename);
        if e.file.open_at(through_parent).is_some() {
            e.exe = Some(e.filename.clone());
        }
        return;
    }
    // A relative path: where the kernel found the file, when it could spell it whole.
    if let Some(p) = &e.path {
        e.exe = Some(p.clone());
        return;
    }
    let cwd = format!("/proc/{}/cwd", e.head.ppid);
    let same = e.file.open_at(format!("{cwd}/{}", e.filename)).is_some();
    if let (true, Ok(dir)) = (same, std::fs::read_link(&cwd)) {
        let joined: std::path::PathBuf = dir
            .join(&e.filename)
            .components()
            .filter(|c| !matches!(c, std::path::Component::CurDir))
            .collect();
        e.exe = Some(joined.to_string_lossy().into_owned());
    }
}

/// Processes already running: what they run, for reports of their later deaths.
pub fn scan_proc() -> Vec<(u32, ProcInfo)> {
    let Ok(all) = procfs::process::all_processes() else {
        return Vec::new();
    };
    all.filter_map(|p| {
        let p = p.ok()?;
        let pid = p.pid as u32;
        let exe = p.exe().ok().map(|e| e.to_string_lossy().into_owned());
        let args = p.cmdline().unwrap_or_default();
        let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .ok()
            .and_then(|s| {
                // Same hierarchy choice as the kernel side: v2 ("0::") or the memory controller.
                let pick = |pref: &str| {
                    s.lines()
                        .find_map(|l| l.split_once(pref).map(|x| x.1.to_string()))
                };
                pick(":memory:").or_else(|| pick("0::"))
            });
        Some((
            pid,
            ProcInfo {
                exec_at: None,
                exe,
                args,
                args_truncated: false,
                cgroup: cgroup.unwrap_or_default(),
                file: crate::read::elf::FileId::of_exe(pid),
                // Noted by the agent, which holds the roots.
                root: None,
            },
        ))
    })
    .collect()
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::crash::{Kind, Output};

    const FULL: &str = "panic: boom: connection reset\n\tpanic: boom: cleanup failed\n\ngoroutine 1 [running]:\nmain.main.func3.1()\n\t/src/app/main.go:20 +0x1d\nmain.main()\n\t/src/app/main.go:25 +0x25\nexit status 2\n";
    /// The same words with the writes between `panic: ` and the first frame skipped, as the
    /// 7.3 VM's write hook once left them.
    const GAPPED: &str =
        "panic: main.main.func3.1()\n\t/src/app/main.go:20 +0x1d\nmain.main()\n\t/src/app/main.go:25 +0x25\n";

    fn crash(words: &str, output: &str) -> Crash {
        Crash {
            kind: Kind::GoPanic,
            head: Default::default(),
            proc: None,
            signal: None,
            status: 2 << 8,
            go: None,
            output: Output {
                head: output.as_bytes().to_vec(),
                total: output.len() as u64,
                ..Output::default()
            },
            last_words: None,
            error: parse::recognise(words),
            hold: 0,
            asked: None,
            oom: None,
        }
    }

    #[test]
    fn a_go_death_comes_whole_from_the_runtimes_output_over_gapped_last_words() {
        let c = crash(GAPPED, FULL);
        assert_eq!(c.error.as_ref().map(|d| d.runtime), Some("go"));
        let go = GoInfo {
            stderr: FULL.into(),
            ..GoInfo::default()
        };
        let d = death(&c, Some(&go)).unwrap();
        assert_eq!(d.headline, "panic: boom: connection reset");
        assert_eq!(d.chain.len(), 2);
        // Without the runtime's output, the last words are what there is.
        let words_only = crash(GAPPED, "");
        assert_eq!(
            death(&words_only, None).map(|d| d.headline),
            Some("panic: main.main.func3.1()".to_string())
        );
        // A death of another runtime in the last words stays theirs.
        let py = crash("Traceback (most recent call last):\n  File \"/a.py\", line 1, in <module>\nValueError: x\n", FULL);
        assert_eq!(death(&py, Some(&go)).map(|d| d.runtime), Some("python"));
    }
}
