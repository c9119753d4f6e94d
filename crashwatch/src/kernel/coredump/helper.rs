//! The pipe helper (`crashwatch core-helper`), for kernels before 6.16 (and `--dump-via
//! pipe`): the kernel runs it as root for each crash, with the core on its stdin; it hands
//! the stream to the running agent's socket behind a header naming the process, and stays
//! until the agent closes, so that the process stays too where `core_pipe_limit` asks the
//! kernel to wait for the helper.
//!
//! Its whole life is bounded by an alarm: with no agent listening it ends at once, and a
//! stuck agent cannot keep it (or, through it, a crashing process) past `--timeout`.
use std::{
    io::{Read, Write},
    os::{fd::FromRawFd, unix::net::UnixStream},
    path::Path,
};

/// The header's first bytes: the helper's protocol, version 1.
pub(super) const MAGIC: &[u8; 4] = b"CWC1";
pub(super) const HEADER: usize = 8;

/// Hands stdin to the agent; false when there was no agent to hand it to.
pub fn run(socket: &Path, timeout_secs: u32, pid: u32) -> bool {
    // SAFETY: alarm only arms this process's timer; SIGALRM's default action ends it.
    unsafe { libc::alarm(timeout_secs.max(1)) };
    let Ok(mut s) = UnixStream::connect(socket) else {
        return false;
    };
    let mut head = [0u8; HEADER];
    head[..4].copy_from_slice(MAGIC);
    head[4..].copy_from_slice(&pid.to_le_bytes());
    if s.write_all(&head).is_err() {
        return false;
    }
    // SAFETY: fd 0 is the kernel's pipe, owned by this process from here on.
    let mut core = unsafe { std::fs::File::from_raw_fd(0) };
    // The agent may close early (its timeout, busy): the copy ends and so does the dump.
    let _ = std::io::copy(&mut core, &mut s);
    let _ = s.shutdown(std::net::Shutdown::Write);
    // Until the agent has read the process's threads and closed.
    let _ = s.read(&mut [0u8; 1]);
    true
}
