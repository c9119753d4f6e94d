//! Decode: ring buffer bytes → typed records. Owns the conversion from the kernel's
//! fixed-size C structs (crashwatch-common) to plain Rust values; checks sizes, never trusts
//! lengths the kernel wrote.
use anyhow::{bail, Result};
use crashwatch_common as c;

use crate::elf::FileId;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Head {
    pub pid: u32,
    pub tid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub ktime_ns: u64,
    pub start_ns: u64,
    pub comm: String,
}

#[derive(Clone, Debug)]
pub struct Exec {
    pub head: Head,
    /// The executable's identity, as the kernel saw it at exec.
    pub file: FileId,
    /// The path given to execve, as the process saw it: maybe relative, never opened.
    pub filename: String,
    pub args: Vec<String>,
    /// The argument list was longer than what was read.
    pub args_truncated: bool,
    pub cgroup: String,
    /// Absolute path of the executable, resolved by the agent when the record arrives.
    pub exe: Option<String>,
    /// The process's root directory when it is not the agent's (a container), noted by the
    /// agent when the record arrives.
    pub root: Option<crate::symbolize::RootKey>,
}

#[derive(Clone, Debug)]
pub struct Signal {
    pub head: Head,
    pub sig: i32,
    pub code: i32,
    pub handled: bool,
    /// The first word of siginfo's union: a fault's address, or the sender's pid and uid.
    pub fields: u64,
    pub start_code: u64,
    /// Raw `struct pt_regs` words; the probe's layout names them.
    pub regs: Vec<u64>,
    pub stack: Vec<u64>,
    pub args: Vec<String>,
    pub args_truncated: bool,
    /// The process's mappings, captured by the agent when the record arrives (the process is
    /// usually still alive then: dumping core or running its handler).
    pub maps: Option<std::sync::Arc<crate::symbolize::Maps>>,
    /// The stack copy and loaded objects the kernel sent with this signal.
    pub captured: Option<std::sync::Arc<Stack>>,
}

/// A copy of the top of a thread's user stack and the objects its process had loaded.
#[derive(Clone, Debug, Default)]
pub struct Stack {
    pub head: Head,
    pub sp: u64,
    /// Bytes from `sp` on; `missing` lists the pieces that could not be read.
    pub data: Vec<u8>,
    /// Byte ranges of `data` that hold nothing (pages that were not resident).
    pub missing: Vec<std::ops::Range<usize>>,
    pub modules: Vec<Module>,
    /// The list of loaded objects was cut at its kernel-side limit.
    pub modules_truncated: bool,
    /// The list could not be read at all (no auxv, unreadable program headers).
    pub modules_unreadable: bool,
    /// The hook does not read the list (Go's fatal-path probes).
    pub modules_not_taken: bool,
}

impl Stack {
    /// The 8-byte word at `addr`, when the copy holds it.
    pub fn word(&self, addr: u64) -> Option<u64> {
        let off = usize::try_from(addr.checked_sub(self.sp)?).ok()?;
        let end = off.checked_add(8)?;
        let b = self.data.get(off..end)?;
        if self.missing.iter().any(|r| r.start < end && off < r.end) {
            return None;
        }
        Some(u64::from_le_bytes(b.try_into().ok()?))
    }
}

/// An object the dynamic linker loaded, as the kernel read it from the process's memory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Module {
    /// Load bias (`l_addr`): runtime address minus link-time address.
    pub bias: u64,
    /// Path in the process's view; empty for the executable (the first module).
    pub path: String,
    /// Where its dynamic section was in memory (0 when it has none).
    pub dynamic: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GoWhat {
    Panic,
    Fatal,
}

/// A Go runtime fatal path: an unrecovered panic or a fatal error.
#[derive(Clone, Debug)]
pub struct Go {
    pub head: Head,
    pub what: GoWhat,
    /// The panic's string value, or the fatal error's message.
    pub text: Option<String>,
    /// The panic value's type descriptor in the process (0 for fatal errors).
    pub type_ptr: u64,
    pub start_code: u64,
    pub stack: Vec<u64>,
    /// The return address at the probe: the probed function's caller.
    pub caller: u64,
    /// RBP at the probe.
    pub bp: u64,
    /// The probed thread's user registers, raw `pt_regs` words (empty when unread).
    pub regs: Vec<u64>,
    /// Mappings captured when the record arrived (the process is printing, so alive).
    pub maps: Option<std::sync::Arc<crate::symbolize::Maps>>,
    pub captured: Option<std::sync::Arc<Stack>>,
}

/// A piece of the Go runtime's printed output.
#[derive(Clone, Debug)]
pub struct GoOutput {
    pub head: Head,
    pub data: Vec<u8>,
    /// The write was longer than what the kernel sent.
    pub cut: bool,
}

#[derive(Clone, Debug)]
pub struct Exit {
    pub head: Head,
    pub status: u32,
}

#[derive(Clone, Debug)]
pub enum Record {
    Exec(Exec),
    Signal(Signal),
    Exit(Exit),
    Oom(Head),
    Go(Go),
    GoOutput(GoOutput),
    Stack(Stack),
}

pub fn decode(bytes: &[u8]) -> Result<Record> {
    let Some(kind) = bytes
        .get(..4)
        .map(|b| u32::from_ne_bytes(b.try_into().unwrap()))
    else {
        bail!("record of {} bytes has no header", bytes.len())
    };
    Ok(match kind {
        c::KIND_EXEC => {
            let r: c::ExecRecord =
                read_with_args(bytes, std::mem::offset_of!(c::ExecRecord, args))?;
            let n = (r.args_len as usize).min(c::ARGS_LEN);
            Record::Exec(Exec {
                head: head(&r.hdr),
                file: FileId {
                    dev: r.dev as u64,
                    ino: r.ino,
                    ctime_ns: r.ctime_ns,
                    size: r.size,
                },
                filename: cstr(&r.filename),
                args: split_args(&r.args[..n]),
                args_truncated: r.args_total as usize > n,
                cgroup: cgroup_path(&r.cgroup),
                exe: None,
                root: None,
            })
        }
        c::KIND_SIGNAL => {
            let r: c::SignalRecord =
                read_with_args(bytes, std::mem::offset_of!(c::SignalRecord, args))?;
            let n = (r.args_len as usize).min(c::ARGS_LEN);
            let regs = (r.regs_len as usize / 8).min(c::REGS_WORDS);
            let frames = (r.stack_len as usize / 8).min(c::STACK_DEPTH);
            Record::Signal(Signal {
                head: head(&r.hdr),
                sig: r.sig,
                code: r.code,
                handled: r.handled != 0,
                fields: r.fields,
                start_code: r.start_code,
                regs: r.regs[..regs].to_vec(),
                stack: r.stack[..frames]
                    .iter()
                    .copied()
                    .take_while(|&ip| ip != 0)
                    .collect(),
                args: split_args(&r.args[..n]),
                args_truncated: r.args_total as usize > n,
                maps: None,
                captured: None,
            })
        }
        c::KIND_STACK => Record::Stack(stack(bytes)?),
        c::KIND_EXIT => {
            let r: c::ExitRecord = read(bytes)?;
            Record::Exit(Exit {
                head: head(&r.hdr),
                status: r.status,
            })
        }
        c::KIND_OOM => {
            let r: c::OomRecord = read(bytes)?;
            Record::Oom(head(&r.hdr))
        }
        c::KIND_GO => {
            let r: c::GoRecord = read(bytes)?;
            let n = (r.text_len as usize).min(c::GO_TEXT_LEN);
            let frames = (r.stack_len as usize / 8).min(c::STACK_DEPTH);
            Record::Go(Go {
                head: head(&r.hdr),
                what: if r.what == c::GO_FATAL {
                    GoWhat::Fatal
                } else {
                    GoWhat::Panic
                },
                text: (n > 0).then(|| String::from_utf8_lossy(&r.text[..n]).into_owned()),
                type_ptr: r.type_ptr,
                start_code: r.start_code,
                stack: r.stack[..frames]
                    .iter()
                    .copied()
                    .take_while(|&ip| ip != 0)
                    .collect(),
                caller: r.caller,
                bp: r.bp,
                regs: r.regs[..(r.regs_len as usize / 8).min(c::REGS_WORDS)].to_vec(),
                maps: None,
                captured: None,
            })
        }
        c::KIND_GO_OUTPUT => {
            let r: c::GoOutputRecord = read(bytes)?;
            let n = (r.len as usize).min(c::GO_CHUNK_LEN);
            Record::GoOutput(GoOutput {
                head: Head {
                    pid: r.pid,
                    tid: r.tid,
                    ktime_ns: r.ktime_ns,
                    start_ns: r.start_ns,
                    ..Default::default()
                },
                data: r.data[..n].to_vec(),
                cut: r.cut != 0,
            })
        }
        k => bail!("unknown record kind {k} ({} bytes)", bytes.len()),
    })
}

/// A stack record in its packed form (see `StackRecord`): the fixed fields, `modules_len`
/// module entries, then the copy.
fn stack(bytes: &[u8]) -> Result<Stack> {
    if bytes.len() < c::STACK_HEAD {
        bail!("stack record truncated: {} bytes", bytes.len());
    }
    let mut fixed = vec![0u8; std::mem::size_of::<c::StackRecord>()];
    fixed[..c::STACK_HEAD].copy_from_slice(&bytes[..c::STACK_HEAD]);
    let r: c::StackRecord = read(&fixed)?;
    let n_modules = r.modules_len as usize;
    if n_modules > c::MODULES_MAX {
        bail!(
            "stack record claims {n_modules} loaded objects (at most {})",
            c::MODULES_MAX
        );
    }
    let at = c::STACK_HEAD + n_modules * c::MODULE_SIZE;
    if bytes.len() < at {
        bail!(
            "stack record truncated: {} bytes, {at} needed for its {n_modules} loaded objects",
            bytes.len()
        );
    }
    let len = (r.copy_len as usize)
        .min(c::STACK_COPY_MAX)
        .min(bytes.len() - at);
    let data = bytes[at..at + len].to_vec();
    // The kernel's pieces: up to the first page boundary after sp, then whole pages.
    let mut missing = Vec::new();
    let mut off = 0usize;
    let mut piece = 0;
    while off < len && piece < 32 {
        let addr = r.sp.wrapping_add(off as u64);
        let n = ((4096 - (addr & 4095)) as usize).min(len - off);
        if r.missing & (1 << piece) != 0 {
            missing.push(off..off + n);
        }
        off += n;
        piece += 1;
    }
    let modules = bytes[c::STACK_HEAD..at]
        .chunks_exact(c::MODULE_SIZE)
        .map(|b| {
            let m: c::ModuleRec = read(b)?;
            Ok(Module {
                bias: m.bias,
                // The helper's return: bytes with the NUL, or a negative error.
                path: if (1..=c::MODULE_PATH_LEN as u32).contains(&m.path_len) {
                    cstr(&m.path[..m.path_len as usize])
                } else {
                    String::new()
                },
                dynamic: m.dynamic,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Stack {
        head: head(&r.hdr),
        sp: r.sp,
        data,
        missing,
        modules,
        modules_truncated: r.modules_state == c::MODULES_TRUNCATED,
        modules_unreadable: r.modules_state == c::MODULES_UNREADABLE,
        modules_not_taken: r.modules_state == c::MODULES_NOT_TAKEN,
    })
}

fn read<T: Copy>(bytes: &[u8]) -> Result<T> {
    if bytes.len() < std::mem::size_of::<T>() {
        bail!(
            "record truncated: {} bytes, {} expected for {}",
            bytes.len(),
            std::mem::size_of::<T>(),
            std::any::type_name::<T>()
        );
    }
    // SAFETY: T is a #[repr(C)] plain-data record; length checked; read_unaligned copes with
    // the ring buffer's 8-byte alignment.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const T) })
}

/// A record whose trailing args array is sent only as far as it is used: at least `head`
/// bytes, the rest zero.
fn read_with_args<T: Copy>(bytes: &[u8], head: usize) -> Result<T> {
    let full = std::mem::size_of::<T>();
    if bytes.len() >= full {
        return read(bytes);
    }
    if bytes.len() < head {
        return read(bytes); // the "truncated" error
    }
    let mut buf = vec![0u8; full];
    buf[..bytes.len()].copy_from_slice(bytes);
    read(&buf)
}

fn head(h: &c::Header) -> Head {
    Head {
        pid: h.pid,
        tid: h.tid,
        ppid: h.ppid,
        uid: h.uid,
        ktime_ns: h.ktime_ns,
        start_ns: h.start_ns,
        comm: cstr(&h.comm),
    }
}

pub fn cstr(b: &[u8]) -> String {
    let end = b.iter().position(|&x| x == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// `mm->arg_start..arg_end` holds NUL-separated arguments.
fn split_args(b: &[u8]) -> Vec<String> {
    let b = b.strip_suffix(&[0]).unwrap_or(b);
    if b.is_empty() {
        return Vec::new();
    }
    b.split(|&x| x == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// Components arrive leaf first; the root's own name is empty or "/".
fn cgroup_path(p: &c::CgroupPath) -> String {
    let parts: Vec<String> = p
        .names
        .iter()
        .map(|n| cstr(n))
        .take_while(|n| !n.is_empty() && n != "/")
        .collect();
    let mut out = String::new();
    for part in parts.iter().rev() {
        out.push('/');
        out.push_str(part);
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_of<T>(v: &T) -> Vec<u8> {
        // SAFETY: reading the bytes of a plain-data record.
        unsafe { std::slice::from_raw_parts(v as *const T as *const u8, std::mem::size_of::<T>()) }
            .to_vec()
    }

    #[test]
    fn exit_record_round_trips() {
        let mut r = c::ExitRecord::default();
        r.hdr.kind = c::KIND_EXIT;
        r.hdr.pid = 42;
        r.hdr.comm[..4].copy_from_slice(b"grep");
        r.status = 1 << 8;
        let Record::Exit(e) = decode(&bytes_of(&r)).unwrap() else {
            panic!("not an exit")
        };
        assert_eq!(
            (e.head.pid, e.head.comm.as_str(), e.status),
            (42, "grep", 256)
        );
    }

    #[test]
    fn truncated_and_unknown_records_are_errors() {
        let mut r = c::ExitRecord::default();
        r.hdr.kind = c::KIND_EXIT;
        let b = bytes_of(&r);
        assert!(decode(&b[..10])
            .unwrap_err()
            .to_string()
            .contains("truncated"));
        assert!(decode(&[1, 2]).is_err());
        assert!(decode(&99u32.to_ne_bytes())
            .unwrap_err()
            .to_string()
            .contains("unknown"));
    }

    #[test]
    fn records_sent_only_as_far_as_their_args_decode_whole() {
        let mut r: c::ExecRecord = unsafe { std::mem::zeroed() };
        r.hdr.kind = c::KIND_EXEC;
        r.hdr.pid = 7;
        r.args[..6].copy_from_slice(b"ls\0-l\0");
        r.args_len = 6;
        r.args_total = 9000;
        r.ino = 12;
        let head = std::mem::offset_of!(c::ExecRecord, args);
        let Record::Exec(e) = decode(&bytes_of(&r)[..head + 6]).unwrap() else {
            panic!("not an exec")
        };
        assert_eq!(
            (e.head.pid, e.file.ino, e.args.as_slice()),
            (7, 12, &["ls".to_string(), "-l".to_string()][..])
        );
        assert!(e.args_truncated);
        assert!(
            decode(&bytes_of(&r)[..head - 1]).is_err(),
            "shorter than its fixed part"
        );
    }

    /// The kernel's packed form: fixed fields, only the module entries used, then the copy.
    #[test]
    fn stack_records_decode_from_their_packed_form() {
        let mut r: Box<c::StackRecord> = Box::new(unsafe { std::mem::zeroed() });
        r.hdr.kind = c::KIND_STACK;
        r.hdr.tid = 9;
        r.sp = 0x7000;
        r.copy_len = 100;
        r.modules_len = 2;
        let mut m: c::ModuleRec = unsafe { std::mem::zeroed() };
        m.bias = 0x5000;
        m.path[..9].copy_from_slice(b"/lib/x.so");
        m.path_len = 10;
        let mods = 2 * c::MODULE_SIZE;
        r.body[c::MODULE_SIZE..mods].copy_from_slice(&bytes_of(&m));
        r.body[mods..mods + 100].fill(0xab);
        let packed = bytes_of(&*r)[..c::STACK_HEAD + mods + 100].to_vec();
        let Record::Stack(st) = decode(&packed).unwrap() else {
            panic!("not a stack")
        };
        assert_eq!((st.head.tid, st.sp, st.data.len()), (9, 0x7000, 100));
        assert!(st.data.iter().all(|&b| b == 0xab));
        assert_eq!(st.modules.len(), 2);
        assert_eq!(
            (st.modules[1].bias, st.modules[1].path.as_str()),
            (0x5000, "/lib/x.so")
        );
        // A copy cut short by the record's end is kept as far as it came.
        let Record::Stack(st) = decode(&packed[..packed.len() - 40]).unwrap() else {
            panic!("not a stack")
        };
        assert_eq!(st.data.len(), 60);
        // Module entries the record does not hold, or more than the kernel ever sends.
        assert!(decode(&packed[..c::STACK_HEAD + mods - 1])
            .unwrap_err()
            .to_string()
            .contains("truncated"));
        r.modules_len = c::MODULES_MAX as u32 + 1;
        assert!(decode(&bytes_of(&*r)).is_err());
    }

    #[test]
    fn args_and_cgroups_are_split() {
        assert_eq!(split_args(b"ls\0-l\0/tmp\0"), ["ls", "-l", "/tmp"]);
        assert!(split_args(b"").is_empty());
        let mut p = c::CgroupPath {
            names: [[0; c::CGROUP_NAME_LEN]; c::CGROUP_DEPTH],
        };
        p.names[0][..3].copy_from_slice(b"abc");
        p.names[1][..4].copy_from_slice(b"pod1");
        p.names[2][..1].copy_from_slice(b"/");
        assert_eq!(cgroup_path(&p), "/pod1/abc");
    }
}
