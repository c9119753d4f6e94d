//! Who a process is, sent only when the agent needs it: the identity records (executable
//! file, command line, cgroup) and the two maps that decide when.
//!
//! Most processes never crash, so an exec costs a ring-buffer record only when the agent has
//! something to learn: an executable it has not classified yet (or whose answer is stale), a
//! file it watches (Go binaries: their probes follow their processes), a process it already
//! tracks, or every exec under `--exits nonzero`. The agent writes its answers into
//! [`KNOWN`]. A process whose exec was sent is [`TRACKED`] until its exit, which is then sent
//! whatever its status. Any other process that shows a crash sign is read from the dying
//! task itself (`mm->exe_file`, its argument list, its cgroup) and sent as a `KIND_IDENT`
//! record before the crash's own records, and tracked from then on.
use aya_ebpf::{
    helpers::{bpf_get_current_task, bpf_ktime_get_ns, bpf_probe_read_kernel_str_bytes},
    macros::map,
    maps::{LruHashMap, PerCpuArray},
};
use crashwatch_common::*;

use crate::shared::{fill_header, output_with_args, rd, read_args, word};

/// The agent's answers about executables it has seen, keyed by file identity.
#[map]
pub static KNOWN: LruHashMap<FileKey, KnownFile> = LruHashMap::with_max_entries(16384, 0);
/// Processes (tgid) the agent holds an identity for: their exit is always sent. One evicted
/// only costs the agent a stale entry until its periodic sweep; a crash sign of that pid
/// sends a fresh identity.
#[map]
pub static TRACKED: LruHashMap<u32, u32> = LruHashMap::with_max_entries(32768, 0);
/// Identity records built at a crash sign, one per program copy (the copies can all be
/// mid-run on one CPU when tasks are preempted).
#[map]
static SCRATCH_IDENT: PerCpuArray<ExecRecord> = PerCpuArray::with_max_entries(COPIES, 0);

#[inline(always)]
pub fn is_tracked(pid: u32) -> bool {
    // SAFETY: a lookup; the value is not kept.
    unsafe { TRACKED.get(pid) }.is_some()
}

#[inline(always)]
pub fn track(pid: u32) {
    let _ = TRACKED.insert(pid, 0, 0);
}

/// Forgets `pid`; true when it was tracked.
#[inline(always)]
pub fn untrack(pid: u32) -> bool {
    TRACKED.remove(pid).is_ok()
}

/// The identity of the file behind `file` (a `struct file *`).
#[inline(always)]
pub fn file_key(file: u64) -> FileKey {
    let inode: u64 = rd(file, config!(off.file_inode));
    let sb: u64 = rd(inode, config!(off.inode_sb));
    let sec: u64 = rd(inode, config!(off.inode_ctime_sec));
    let nsec: u32 = rd(inode, config!(off.inode_ctime_nsec));
    FileKey {
        dev: rd(sb, config!(off.sb_dev)),
        _pad: 0,
        ino: rd(inode, config!(off.inode_ino)),
        // Since 6.13 the top bit of i_ctime_nsec flags a queried time: not part of the time.
        ctime_ns: sec
            .wrapping_mul(1_000_000_000)
            .wrapping_add((nsec & 0x3fff_ffff) as u64),
        size: rd(inode, config!(off.inode_size)),
    }
}

/// The agent classified this file and wants none of its execs (and the answer is fresh).
#[inline(always)]
pub fn quiet(key: &FileKey) -> bool {
    // SAFETY: a lookup; the value is copied out.
    match unsafe { KNOWN.get(key) } {
        Some(k) => k.flags == KNOWN_QUIET && unsafe { bpf_ktime_get_ns() } < k.until_ns,
        None => false,
    }
}

fn read_cgroup(task: u64, out: &mut CgroupPath) {
    let css_set: u64 = rd(task, config!(off.task_cgroups));
    let mut cg: u64 = rd(css_set, config!(off.cgroup_hop1));
    if config!(off.cgroup_hop2) != NO_OFFSET {
        cg = rd(cg, config!(off.cgroup_hop2));
    }
    let mut kn: u64 = rd(cg, config!(off.cgroup_kn));
    for i in 0..CGROUP_DEPTH {
        out.names[i][0] = 0;
        if kn == 0 {
            continue;
        }
        let name: u64 = rd(kn, config!(off.kn_name));
        if name != 0 {
            let _ =
                unsafe { bpf_probe_read_kernel_str_bytes(name as *const u8, &mut out.names[i]) };
        }
        kn = rd(kn, config!(off.kn_parent));
    }
}

/// Steps of a path walk: components and mount crossings.
const PATH_STEPS: usize = 24;

/// Fills `out` with the path of `file` (a `struct file *`) in `task`'s view: its dentries'
/// names up to `task`'s root, crossing mounts; incomplete when deeper than
/// [`EXE_PATH_DEPTH`] or a name longer than [`EXE_PATH_NAME`].
///
/// Written for the verifier: no branch on a read's outcome, and the count of names in `out`
/// (map memory, which it does not track by value), so each step's two ways (a name, a mount
/// crossed) end in one state.
#[inline(always)]
pub fn file_path(file: u64, task: u64, out: &mut ExePath) {
    out.depth = 0;
    // Cleared by a name that may have been cut; kept only if the walk reaches the root.
    out.complete = 1;
    let at = file.wrapping_add(config!(off.file_f_path) as u64);
    let mut d = word(at, config!(off.path_dentry));
    let mut mnt = word(at, config!(off.path_mnt));
    let root = word(task, config!(off.task_fs)).wrapping_add(config!(off.fs_root) as u64);
    let root_d = word(root, config!(off.path_dentry));
    let root_m = word(root, config!(off.path_mnt));
    for _ in 0..PATH_STEPS {
        if d == 0 || mnt == 0 {
            break;
        }
        if d == root_d && mnt == root_m {
            return;
        }
        if d == word(mnt, config!(off.vfsmount_root)) {
            // The top of a mount: on to where it is mounted (from the namespace's root, which
            // is not the task's, nowhere: `parent` is itself).
            let m = mnt.wrapping_sub(config!(off.mount_mnt) as u64);
            let parent = word(m, config!(off.mount_parent));
            d = if parent == m {
                0
            } else {
                word(m, config!(off.mount_mountpoint))
            };
            mnt = parent.wrapping_add(config!(off.mount_mnt) as u64);
            continue;
        }
        // SAFETY: a read of map memory.
        let n = unsafe { core::ptr::read_volatile(&out.depth) } as usize;
        if n >= EXE_PATH_DEPTH {
            break;
        }
        let name = word(d, config!(off.dentry_name));
        let got = unsafe { bpf_probe_read_kernel_str_bytes(name as *const u8, &mut out.names[n]) };
        if !got.is_ok_and(|s| s.len() < EXE_PATH_NAME - 1) {
            out.complete = 0;
        }
        // SAFETY: as above.
        unsafe { core::ptr::write_volatile(&mut out.depth, n as u32 + 1) };
        d = word(d, config!(off.dentry_parent));
    }
    // Never reached the root.
    out.complete = 0;
}

/// Fills everything but the file name: header, the file `key`, argument list, cgroup.
#[inline(always)]
pub fn fill(rec: &mut ExecRecord, kind: u32, task: u64, key: &FileKey) {
    fill_header(&mut rec.hdr, kind, task);
    rec.dev = key.dev;
    rec.ino = key.ino;
    rec.ctime_ns = key.ctime_ns;
    rec.size = key.size;
    (rec.args_len, rec.args_total) = read_args(task, &mut rec.args);
    read_cgroup(task, &mut rec.cgroup);
    rec.path.depth = 0;
    rec.path.complete = 0;
    let ns: u64 = rd(task, config!(off.task_nsproxy));
    let mnt: u64 = rd(ns, config!(off.nsproxy_mnt_ns));
    rec.mnt_ns = rd(mnt, config!(off.mnt_ns_inum));
}

/// Fills `rec` as a `KIND_IDENT` record of the current process, read from its memory map.
#[inline(always)]
pub fn fill_ident(rec: &mut ExecRecord, task: u64) {
    let mm: u64 = rd(task, config!(off.task_mm));
    let key = file_key(rd(mm, config!(off.mm_exe_file)));
    fill(rec, KIND_IDENT, task, &key);
    rec.filename[0] = 0;
}

#[inline(always)]
pub fn send(rec: &ExecRecord) {
    output_with_args(rec, core::mem::offset_of!(ExecRecord, args), rec.args_len);
}

/// At a crash sign of process `pid`: its identity, unless the agent has it already.
#[inline(always)]
pub fn send_ident_once(pid: u32, copy: u32) {
    if is_tracked(pid) {
        return;
    }
    let Some(rec) = SCRATCH_IDENT.get_ptr_mut(copy) else {
        return;
    };
    // SAFETY: per-CPU scratch slot owned by this program invocation.
    let rec = unsafe { &mut *rec };
    fill_ident(rec, unsafe { bpf_get_current_task() });
    send(rec);
    track(pid);
}
