//! What the kernel side lost: the ring buffer's failed reserves (`LOST`), the runs the
//! kernel's recursion guard skipped (each program's `recursion_misses`), and what the copy
//! guard redid; read apart from [`super::Probe`] so the record loop can count while the Go
//! prober owns the programs.
use std::os::fd::AsRawFd;

use anyhow::{bail, Result};
use crashwatch_common::COPIES;

use super::{tracepoint_programs, Role};
use aya::maps::{MapData, PerCpuArray};

/// Reads the kernel side's loss counters; independent of [`Probe`], so the record loop can
/// keep it while another thread attaches uprobes.
pub struct LossReader {
    pub(super) lost: PerCpuArray<MapData, u64>,
    pub(super) covered: PerCpuArray<MapData, u64>,
    /// First-copy misses of events no copy wanted, per site: no loss.
    pub(super) unwanted: PerCpuArray<MapData, u64>,
    pub(super) programs: Vec<(&'static str, std::os::fd::OwnedFd)>,
}

/// Everything the kernel side dropped so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Losses {
    /// Ring buffer reserves that failed (buffer full), summed over CPUs.
    pub ring_full: u64,
    /// Events lost to the kernel's recursion guard: runs it skipped that no later copy redid.
    pub recursion_misses: u64,
    /// Runs the guard skipped in a first copy that a later copy redid: nothing lost.
    pub redone: u64,
}

impl Losses {
    pub fn total(&self) -> u64 {
        self.ring_full + self.recursion_misses
    }
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

    pub fn losses(&self) -> Losses {
        let ring_full = self.lost.get(&0, 0).map(|v| v.iter().sum()).unwrap_or(0);
        // Misses before redos: a redo always follows its miss, so this order never shows a
        // loss that a redo already made good.
        let misses = self.recursion_misses();
        let mut out = Losses {
            ring_full,
            ..Losses::default()
        };
        for t in tracepoint_programs(COPIES) {
            let n = misses
                .iter()
                .find(|(name, _)| *name == t.name)
                .map_or(0, |m| m.1);
            match t.copy {
                // Alone, a later copy's miss loses nothing: the first copy ran.
                Some((Role::Later, _)) => {}
                Some((Role::First, site)) => {
                    let redone: u64 = self
                        .covered
                        .get(&site, 0)
                        .map(|v| v.iter().sum())
                        .unwrap_or(0);
                    // Misses of events no copy wanted lose nothing.
                    let unwanted: u64 = self
                        .unwanted
                        .get(&site, 0)
                        .map(|v| v.iter().sum())
                        .unwrap_or(0);
                    let wanted = n.saturating_sub(unwanted);
                    out.recursion_misses += wanted.saturating_sub(redone);
                    out.redone += redone.min(wanted);
                }
                None => out.recursion_misses += n,
            }
        }
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
