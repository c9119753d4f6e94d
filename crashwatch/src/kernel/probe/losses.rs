//! What the kernel side lost: the ring buffer's failed reserves (`LOST`), and the events the
//! kernel's recursion guard made every copy of a program skip (crashwatch-ebpf's `copies`:
//! copy 1's `recursion_misses` less the events a later copy saw first, `FIRST_LATER`); read
//! apart from [`super::Probe`] so the record loop can count while the Go prober owns the
//! programs. Skipped runs of the stderr write hooks are counted apart: they cost bytes of some
//! process's last words, not a crash record.
use std::{collections::VecDeque, os::fd::AsRawFd, time::Instant};

use anyhow::{bail, Result};
use crashwatch_common::{COPIES, SITES};

use super::{tracepoint_programs, Role};
use aya::maps::{MapData, PerCpuArray};

/// A copy-1 miss is counted lost only once its later copies have had this long to see the
/// event. They run right after it, in the same task, but on a loaded 7.x CPU that task can be
/// preempted between copies for a long while: with one second, the 7.3 VM under load counted
/// events lost that a later copy took.
const LAG: std::time::Duration = std::time::Duration::from_secs(10);

/// Reads the kernel side's loss counters; independent of [`Probe`], so the record loop can
/// keep it while another thread attaches uprobes.
pub struct LossReader {
    pub(super) lost: PerCpuArray<MapData, u64>,
    /// Events a later copy saw first, per site.
    pub(super) first_later: PerCpuArray<MapData, u64>,
    /// Events the copy guard could not note, per site.
    pub(super) unnoted: PerCpuArray<MapData, u64>,
    /// Exits every copy skipped, taken at their task's free (0), and exit records sent from
    /// there (1).
    pub(super) at_free: PerCpuArray<MapData, u64>,
    pub(super) programs: Vec<(&'static str, std::os::fd::OwnedFd)>,
    /// Copy-1 misses per site as read at recent calls, oldest first: losses use the newest
    /// reading at least [`LAG`] old.
    pub(super) readings: VecDeque<(Instant, [u64; SITES as usize])>,
    /// The most recursion losses said so far: what is said never goes down.
    pub(super) said: u64,
}

/// Everything the kernel side dropped so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Losses {
    /// Ring buffer reserves that failed (buffer full), summed over CPUs.
    pub ring_full: u64,
    /// Events lost to the kernel's recursion guard: every copy of their program skipped them.
    pub recursion_misses: u64,
    /// Events whose first copy the guard skipped that a later copy took: nothing lost.
    pub redone: u64,
    /// Writes to stderr the write hooks skipped (their bytes are missing from that process's
    /// last words): not crash records, counted apart.
    pub writes_skipped: u64,
    /// Events the copy guard could not note (its map refused): maybe handled twice, the
    /// second dropped by the agent.
    pub unnoted: u64,
    /// Exits every copy skipped, taken when their task was freed (part of `redone`).
    pub exits_at_free: u64,
    /// Deaths sent from a task's free because every copy skipped the exit.
    pub sent_at_free: u64,
}

impl Losses {
    /// Crash records lost: the ring buffer's and the recursion guard's.
    pub fn total(&self) -> u64 {
        self.ring_full + self.recursion_misses
    }
}

/// Programs whose skipped runs cost last words, not crash records.
fn is_write_hook(name: &str) -> bool {
    name.starts_with("write")
}

impl LossReader {
    /// Programs that lost runs to the kernel's recursion guard, and how many.
    pub fn recursion_misses(&self) -> Vec<(&'static str, u64)> {
        self.programs
            .iter()
            .map(|(name, fd)| (*name, prog_recursion_misses(fd.as_raw_fd()).unwrap_or(0)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    fn per_site(map: &PerCpuArray<MapData, u64>, site: u32) -> u64 {
        map.get(&site, 0).map(|v| v.iter().sum()).unwrap_or(0)
    }

    /// What was lost so far, a copy-1 miss counted once its later copies had their chance.
    pub fn losses(&mut self) -> Losses {
        self.read(false)
    }

    /// [`LossReader::losses`] with nothing in flight (the agent is stopping): no lag.
    pub fn losses_final(&mut self) -> Losses {
        self.read(true)
    }

    fn read(&mut self, now_final: bool) -> Losses {
        let ring_full = self.lost.get(&0, 0).map(|v| v.iter().sum()).unwrap_or(0);
        // Misses first, then what later copies saw: a later copy runs after the miss, so this
        // order never shows a miss without the take that followed it... except in flight.
        let misses = self.recursion_misses();
        let mut out = Losses {
            ring_full,
            ..Losses::default()
        };
        let mut first = [0u64; SITES as usize];
        for t in tracepoint_programs(COPIES) {
            let n = misses
                .iter()
                .find(|(name, _)| *name == t.name)
                .map_or(0, |m| m.1);
            match t.copy {
                // A later copy's miss loses nothing by itself: see `copies`.
                Some((Role::Later, _)) => {}
                Some((Role::First, site)) => first[site as usize] += n,
                None => out.recursion_misses += n,
            }
        }
        out.writes_skipped = misses
            .iter()
            .filter(|(name, _)| is_write_hook(name))
            .map(|m| m.1)
            .sum();
        let at = Instant::now();
        // Kept: the newest reading at least LAG old and those after it, one per 100 ms.
        if self
            .readings
            .back()
            .is_none_or(|(t, _)| at.duration_since(*t) >= LAG / 100)
        {
            self.readings.push_back((at, first));
        }
        while self
            .readings
            .get(1)
            .is_some_and(|(t, _)| at.duration_since(*t) >= LAG)
        {
            self.readings.pop_front();
        }
        let lagged = if now_final {
            // The agent stops: events in flight get a moment to reach their later copies.
            if first.iter().any(|n| *n > 0) {
                std::thread::sleep(std::time::Duration::from_millis(300));
            }
            first
        } else {
            self.readings
                .front()
                .filter(|(t, _)| at.duration_since(*t) >= LAG)
                .map_or([0; SITES as usize], |r| r.1)
        };
        for site in 0..SITES {
            let taken = Self::per_site(&self.first_later, site);
            out.recursion_misses += lagged[site as usize].saturating_sub(taken);
            out.redone += taken;
            out.unnoted += Self::per_site(&self.unnoted, site);
        }
        out.exits_at_free = Self::per_site(&self.at_free, 0);
        out.sent_at_free = Self::per_site(&self.at_free, 1);
        // Said once, never taken back.
        self.said = self.said.max(out.recursion_misses);
        out.recursion_misses = self.said;
        out
    }
}

/// `bpf_prog_info.recursion_misses`, which aya's ProgramInfo does not expose.
fn prog_recursion_misses(fd: i32) -> Result<u64> {
    #[repr(C)]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let mut info: aya_obj::generated::bpf_prog_info = unsafe { std::mem::zeroed() };
    let mut attr = InfoAttr {
        bpf_fd: fd as u32,
        info_len: std::mem::size_of_val(&info) as u32,
        info: &mut info as *mut _ as u64,
    };
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    // SAFETY: attr and info outlive the call; the kernel writes at most info_len bytes.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            &mut attr as *mut InfoAttr,
            std::mem::size_of::<InfoAttr>(),
        )
    };
    if rc != 0 {
        bail!(
            "BPF_OBJ_GET_INFO_BY_FD: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(info.recursion_misses)
}
