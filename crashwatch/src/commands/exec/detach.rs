//! Leaving the programs' detach to a child that outlives exec.
//!
//! Whoever closes the last descriptor of a syscall tracepoint's program pays its detach,
//! and the kernel detaches only after RCU grace periods: about 60 ms per tracepoint here,
//! 0.12 s of every `crashwatch exec` (a CI job under exec pays it at each step). A child
//! forked just before the agent's stop holds a copy of every descriptor; exec's own closes
//! are then cheap, and the child closes its copies once exec has exited: the detach
//! happens after, not before, exec's exit. The child closes stdin, stdout and stderr at once
//! (a reader of exec's output sees its end with exec's), leaves the terminal's session, and
//! does nothing but wait for exec's end; if it cannot be made, exec detaches as before.
use std::os::fd::RawFd;

/// Forks the child that closes the programs' last descriptors after exec's exit.
pub fn after_exit() {
    let mut fds: [RawFd; 2] = [-1; 2];
    // SAFETY: pipe2 fills the two descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return;
    }
    let [read_end, write_end] = fds;
    // SAFETY: the child calls only async-signal-safe functions (close, setsid, read, _exit)
    // before it exits: no allocation, no lock another thread may have held at the fork.
    match unsafe { libc::fork() } {
        0 => unsafe {
            libc::close(write_end);
            for fd in 0..3 {
                libc::close(fd);
            }
            libc::setsid();
            let mut b = 0u8;
            // Returns 0 (end of file) when exec has exited, the write end's last holder.
            while libc::read(read_end, (&mut b as *mut u8).cast(), 1) < 0
                && *libc::__errno_location() == libc::EINTR
            {}
            libc::_exit(0)
        },
        pid => {
            // SAFETY: our descriptors; the write end stays open until exec's exit.
            unsafe { libc::close(read_end) };
            if pid < 0 {
                // SAFETY: as above; no child: nothing waits on it.
                unsafe { libc::close(write_end) };
            }
        }
    }
}
