//! crashwatch's kernel side: BTF tracepoints and Go runtime uprobes feeding one ring buffer.
//!
//! Filtering happens here so userspace sees only what can matter: fatal-class signals,
//! abnormal whole-process deaths, OOM victims, and the execs the agent has something to
//! learn from. Struct fields are read at offsets the agent
//! computes from BTF (`CONFIG`). One file per hook family:
//! - `signal`: `signal_deliver` (and the parked handled faults),
//! - `exec_exit`: `sched_process_exec`, `sched_process_exit`,
//! - `ident`: who a process is (executable, command line, cgroup), sent only when the agent
//!   needs it, and the maps that decide when,
//! - `oom`: `oom/mark_victim`,
//! - `go`: uprobes on the Go runtime's fatal paths and its stderr writer,
//! - `stack`: the stack copy and loaded-object list that go with a signal or Go record,
//! - `writes`: what each process writes to stderr, its last words if it dies,
//! - `copies`: the three-copy guard against the recursion guard on preemptible kernels,
//! - `shared`: the configuration, the ring buffer, and the readers every program uses.
#![no_std]
#![no_main]

#[macro_use]
mod shared;
#[macro_use]
mod copies;
mod exec_exit;
mod go;
mod ident;
mod oom;
mod signal;
mod stack;
mod writes;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
