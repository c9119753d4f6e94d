//! A read-only mapping of a file someone else owns, which the agent survives even when the
//! file is truncated while it is being read.
//!
//! Reading a mapped page past a file's new end raises SIGBUS, which would kill the agent. Any
//! user can truncate a binary the agent is looking at (once no process runs it), so while a
//! file is mapped its range is registered here, and a SIGBUS inside a registered range is
//! handled by mapping a page of zeros over the faulting page: the read completes (with
//! zeros), the parse sees garbage it already copes with, and [`Mapped::damaged`] tells the
//! caller to throw the result away. A SIGBUS anywhere else goes to whatever handled it before
//! (Rust's stack-overflow check), or kills the process as usual.
use std::{
    fs::File,
    io,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Once,
    },
};

/// Files mapped at the same time at most. The symbolizer keeps the files it has cached
/// mapped (at most [`SYMBOLIZER_SHARE`]); the prober maps one at a time. Registering and a
/// SIGBUS scan these slots: a thousand atomics is nothing beside an mmap.
const SLOTS: usize = 1024;

/// Mapped files the symbolizer's cache may hold, leaving the rest of the slots to the prober:
/// a full cache must never cost a Go binary its probes.
pub const SYMBOLIZER_SHARE: usize = SLOTS / 4;

struct Slot {
    start: AtomicUsize,
    len: AtomicUsize,
    hit: AtomicBool,
}

#[allow(clippy::declare_interior_mutable_const)]
const FREE: Slot = Slot {
    start: AtomicUsize::new(0),
    len: AtomicUsize::new(0),
    hit: AtomicBool::new(false),
};
static REGISTERED: [Slot; SLOTS] = [FREE; SLOTS];
static INSTALL: Once = Once::new();
static PAGE: AtomicUsize = AtomicUsize::new(4096);
/// The SIGBUS action in place before ours, for faults that are not ours.
static mut PREVIOUS: Option<libc::sigaction> = None;

pub struct Mapped {
    map: Option<memmap2::Mmap>,
    slot: usize,
}

impl Mapped {
    /// Maps `file` read-only. An empty file maps to no bytes.
    pub fn new(file: &File) -> io::Result<Mapped> {
        install();
        if file.metadata()?.len() == 0 {
            return Ok(Mapped {
                map: None,
                slot: SLOTS,
            });
        }
        // SAFETY: a private read-only mapping; truncation while mapped is handled by the
        // SIGBUS guard registered below before any byte is read.
        let map = unsafe { memmap2::MmapOptions::new().map(file)? };
        let (start, len) = (map.as_ptr() as usize, map.len());
        let slot = REGISTERED
            .iter()
            .position(|s| {
                s.start
                    .compare_exchange(0, start, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            })
            .ok_or_else(|| io::Error::other("too many files mapped at once"))?;
        REGISTERED[slot].hit.store(false, Ordering::Release);
        REGISTERED[slot].len.store(len, Ordering::Release);
        Ok(Mapped {
            map: Some(map),
            slot,
        })
    }

    pub fn bytes(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }

    /// The file shrank while it was mapped and a read went past its end: what was parsed is
    /// not to be trusted.
    pub fn damaged(&self) -> bool {
        self.slot < SLOTS && REGISTERED[self.slot].hit.load(Ordering::Acquire)
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        if self.slot < SLOTS {
            let s = &REGISTERED[self.slot];
            s.len.store(0, Ordering::Release);
            s.start.store(0, Ordering::Release);
        }
        // The mapping (with any zero pages put over it) goes with `map`.
    }
}

fn install() {
    INSTALL.call_once(|| {
        // SAFETY: sysconf and sigaction with valid, zero-initialised structs.
        unsafe {
            let page = libc::sysconf(libc::_SC_PAGESIZE);
            if page > 0 {
                PAGE.store(page as usize, Ordering::Relaxed);
            }
            let mut new: libc::sigaction = std::mem::zeroed();
            new.sa_sigaction = on_sigbus as *const () as usize;
            new.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            libc::sigemptyset(&mut new.sa_mask);
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(libc::SIGBUS, &new, &mut old) == 0 {
                PREVIOUS = Some(old);
            }
        }
    });
}

extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers.
    let addr = unsafe { (*info).si_addr() } as usize;
    for s in &REGISTERED {
        let start = s.start.load(Ordering::Acquire);
        let len = s.len.load(Ordering::Acquire);
        if start == 0 || addr < start || addr >= start + len {
            continue;
        }
        let page = addr & !(PAGE.load(Ordering::Relaxed) - 1);
        // SAFETY: replaces one page of our own read-only file mapping with zeros; mmap is a
        // plain system call, safe in a signal handler.
        let p = unsafe {
            libc::mmap(
                page as *mut libc::c_void,
                PAGE.load(Ordering::Relaxed),
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if p != libc::MAP_FAILED {
            s.hit.store(true, Ordering::Release);
            return;
        }
    }
    // Not ours: the previous handler decides, or the default action ends the process.
    // SAFETY: PREVIOUS is written once, before this handler can run.
    unsafe {
        match *std::ptr::addr_of!(PREVIOUS) {
            Some(old)
                if old.sa_flags & libc::SA_SIGINFO != 0
                    && old.sa_sigaction != libc::SIG_DFL
                    && old.sa_sigaction != libc::SIG_IGN =>
            {
                let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                    std::mem::transmute(old.sa_sigaction);
                f(sig, info, ctx);
            }
            _ => {
                let mut dfl: libc::sigaction = std::mem::zeroed();
                dfl.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(libc::SIGBUS, &dfl, std::ptr::null_mut());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_file_truncated_under_the_mapping_reads_as_zeros_and_says_so() {
        let path = std::env::temp_dir().join(format!("cw-mapped-{}", std::process::id()));
        let mut f = File::create(&path).unwrap();
        f.write_all(&vec![0xab; 64 * 1024]).unwrap();
        let file = File::open(&path).unwrap();
        let m = Mapped::new(&file).unwrap();
        assert_eq!(m.bytes()[100], 0xab);
        assert!(!m.damaged());
        f.set_len(4096).unwrap();
        // Past the new end: without the guard this read kills the test process.
        let tail: u64 = m.bytes()[8192..].iter().map(|&b| b as u64).sum();
        assert_eq!(tail, 0);
        assert!(m.damaged());
        drop(m);
        let again = Mapped::new(&file).unwrap();
        assert!(!again.damaged(), "a new mapping starts clean");
        assert_eq!(again.bytes().len(), 4096);
        std::fs::remove_file(&path).unwrap();
    }
}
