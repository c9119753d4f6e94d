//! The kernel side's own time, per event, read from the kernel's BPF run statistics
//! (`kernel.bpf_stats_enabled`: each program's total run time and run count, kept by the
//! kernel). Wall-time ratios on this 2-core machine move by 5–10 % between rounds; these
//! counts are exact to a few nanoseconds, so they show the cost of the programs themselves
//! well below 1 % of a workload. What they cannot show is said beside them: the time the
//! kernel spends reaching a program (tracepoint dispatch, and with the syscalls tracepoints
//! the slower syscall path every task then takes).
//!
//! Own code over a crate: two bpf(2) commands and four fields of `struct bpf_prog_info`;
//! the xtask does not otherwise need aya, and aya's program listing opens every program on
//! the host rather than the agent's.
use std::{collections::BTreeMap, fs};

use anyhow::{bail, Context, Result};

const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
/// Offsets in `struct bpf_prog_info` (include/uapi/linux/bpf.h), stable since 5.1.
const NAME_AT: usize = 64;
const RUN_TIME_NS_AT: usize = 192;
const RUN_CNT_AT: usize = 200;
const INFO_LEN: usize = 216;

/// One program's counters: total nanoseconds run, and runs.
#[derive(Clone, Copy, Default, Debug)]
pub struct Counters {
    pub ns: u64,
    pub runs: u64,
}

/// Turns the kernel's statistics on until dropped (they cost ~20 ns per program run, so the
/// timed rounds run without them).
pub struct Enabled(String);

impl Enabled {
    pub fn new() -> Result<Enabled> {
        const P: &str = "/proc/sys/kernel/bpf_stats_enabled";
        let old = fs::read_to_string(P).context("reading kernel.bpf_stats_enabled")?;
        fs::write(P, "1").context("setting kernel.bpf_stats_enabled")?;
        Ok(Enabled(old.trim().to_string()))
    }
}

impl Drop for Enabled {
    fn drop(&mut self) {
        let _ = fs::write("/proc/sys/kernel/bpf_stats_enabled", &self.0);
    }
}

fn sys_bpf(cmd: libc::c_long, attr: &mut [u8]) -> i64 {
    // SAFETY: attr is a live, writable buffer of the length passed.
    unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            attr.len() as libc::c_uint,
        )
    }
}

fn read_u64(b: &[u8], at: usize) -> u64 {
    u64::from_ne_bytes(b[at..at + 8].try_into().unwrap())
}

/// The counters of one program, by id, and its name.
fn program(id: u32) -> Result<(String, Counters)> {
    let mut attr = [0u8; 16];
    attr[..4].copy_from_slice(&id.to_ne_bytes());
    let fd = sys_bpf(BPF_PROG_GET_FD_BY_ID, &mut attr);
    if fd < 0 {
        bail!(
            "BPF_PROG_GET_FD_BY_ID {id}: {}",
            std::io::Error::last_os_error()
        );
    }
    let mut info = [0u8; INFO_LEN];
    let mut attr = [0u8; 16];
    attr[..4].copy_from_slice(&(fd as u32).to_ne_bytes());
    attr[4..8].copy_from_slice(&(INFO_LEN as u32).to_ne_bytes());
    attr[8..16].copy_from_slice(&(info.as_mut_ptr() as u64).to_ne_bytes());
    let rc = sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr);
    let err = std::io::Error::last_os_error();
    // SAFETY: fd came from the kernel above and is ours alone.
    unsafe { libc::close(fd as i32) };
    if rc < 0 {
        bail!("BPF_OBJ_GET_INFO_BY_FD for program {id}: {err}");
    }
    let name = &info[NAME_AT..NAME_AT + 16];
    let name = String::from_utf8_lossy(&name[..name.iter().position(|b| *b == 0).unwrap_or(16)]);
    Ok((
        name.into_owned(),
        Counters {
            ns: read_u64(&info, RUN_TIME_NS_AT),
            runs: read_u64(&info, RUN_CNT_AT),
        },
    ))
}

/// The counters of every program `pid` holds open, by program name. The kernel keeps only
/// 15 bytes of a name (the copies `sched_process_exec_2`, `sched_process_exit_3`… all read
/// `sched_process_e`), so the full names come from `loaded`, the agent's own list in load
/// order: program ids rise in load order, and each pairing is checked against the kernel's
/// truncated name (a mismatch keeps the kernel's). Programs of one name are summed.
pub fn snapshot(pid: u32, loaded: &[String]) -> Result<BTreeMap<String, Counters>> {
    let mut ids = Vec::new();
    for e in fs::read_dir(format!("/proc/{pid}/fdinfo"))? {
        let Ok(text) = fs::read_to_string(e?.path()) else {
            continue;
        };
        // Program fds and link fds both name their program.
        if let Some(id) = text
            .lines()
            .find_map(|l| l.strip_prefix("prog_id:"))
            .and_then(|v| v.trim().parse::<u32>().ok())
        {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    ids.dedup();
    let mut out: BTreeMap<String, Counters> = BTreeMap::new();
    for (i, id) in ids.into_iter().enumerate() {
        let (short, c) = program(id)?;
        let name = loaded
            .get(i)
            .filter(|full| full.as_bytes().starts_with(short.as_bytes()))
            .cloned()
            .unwrap_or(short);
        let e = out.entry(name).or_default();
        e.ns += c.ns;
        e.runs += c.runs;
    }
    Ok(out)
}

/// The program names in the agent's start-up details (`… programs loaded (a, b, …)`, at
/// `--log-level debug`), in load order.
pub fn loaded_names(log: &[String]) -> Vec<String> {
    log.iter()
        .find_map(|l| {
            l.split_once("programs loaded (")
                .map(|(_, r)| r.to_string())
        })
        .and_then(|r| r.split_once(')').map(|(names, _)| names.to_string()))
        .map(|names| names.split(", ").map(str::to_string).collect())
        .unwrap_or_default()
}

/// What ran between two snapshots, program by program (only those that ran).
pub fn delta(
    before: &BTreeMap<String, Counters>,
    after: &BTreeMap<String, Counters>,
) -> BTreeMap<String, Counters> {
    after
        .iter()
        .filter_map(|(k, a)| {
            let b = before.get(k).copied().unwrap_or_default();
            let d = Counters {
                ns: a.ns.saturating_sub(b.ns),
                runs: a.runs.saturating_sub(b.runs),
            };
            (d.runs > 0).then(|| (k.clone(), d))
        })
        .collect()
}
