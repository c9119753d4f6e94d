//! Decode (the kernel layer's last step; the pipeline starts with its records): ring buffer bytes →
//! typed records. Owns the conversion from the kernel's fixed-size C structs (crashwatch-common) to
//! plain Rust values; checks sizes, never trusts lengths the kernel wrote.
pub use crate::model::record::*;
use anyhow::{bail, Result};
use crashwatch_common as c;

use crate::read::elf::FileId;

pub fn decode(bytes: &[u8]) -> Result<Record> {
    let Some(kind) = bytes
        .get(..4)
        .map(|b| u32::from_ne_bytes(b.try_into().unwrap()))
    else {
        bail!("record of {} bytes has no header", bytes.len())
    };
    Ok(match kind {
        c::KIND_EXEC | c::KIND_IDENT => {
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
                mnt_ns: r.mnt_ns,
                path: exe_path(&r.path),
                at_exec: r.hdr.kind == c::KIND_EXEC,
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
        c::KIND_LAST_WORDS => Record::LastWords(last_words(bytes)?),
        c::KIND_EXIT => {
            let r: c::ExitRecord = read(bytes)?;
            Record::Exit(Exit {
                head: head(&r.hdr),
                status: r.status,
                asked: (r.asked_sig != 0).then_some((r.asked_sig as i32, r.asked_ns)),
            })
        }
        c::KIND_OOM => {
            let r: c::OomRecord = read(bytes)?;
            Record::Oom(Oom {
                head: head(&r.hdr),
                victim_read: r.victim_read != 0,
                oom_score_adj: r.oom_score_adj,
                rss_pages: r.rss_pages,
                memcg: r.memcg[..(r.levels as usize).min(c::OOM_LEVELS)]
                    .iter()
                    .map(|[usage, max]| (*usage, *max))
                    .collect(),
            })
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

/// A last-words record: the fixed fields, the tail ring whole, the head as far as it goes.
fn last_words(bytes: &[u8]) -> Result<LastWords> {
    let at = c::WORDS_FIXED + c::WORDS_TAIL;
    if bytes.len() < at {
        bail!("last-words record truncated: {} bytes", bytes.len());
    }
    let mut whole = vec![0u8; std::mem::size_of::<c::LastWordsRecord>()];
    let n = bytes.len().min(whole.len());
    whole[..n].copy_from_slice(&bytes[..n]);
    let r: Box<c::LastWordsRecord> = Box::new(read(&whole)?);
    let (total, head_len, lookback) = (r.total, r.head_len as usize, r.lookback as u64);
    if head_len > c::WORDS_HEAD || head_len > bytes.len() - at || lookback > head_len as u64 {
        bail!("last-words record with a head of {head_len} bytes ({lookback} looked back)");
    }
    if r.marked > total + 1 {
        bail!("last-words record marked past its end");
    }
    // The tail ring in order.
    let kept = total.min(c::WORDS_TAIL as u64) as usize;
    let mut tail = Vec::with_capacity(kept);
    if total as usize <= c::WORDS_TAIL {
        tail.extend_from_slice(&r.tail[..kept]);
    } else {
        let wrap = (total % c::WORDS_TAIL as u64) as usize;
        tail.extend_from_slice(&r.tail[wrap..]);
        tail.extend_from_slice(&r.tail[..wrap]);
    }
    let tail_start = total - kept as u64;
    // Writes the kernel could not read: (position, length) in the stream.
    let spans: Vec<(u64, u64)> = r
        .unread
        .iter()
        .filter(|u| u.len != 0)
        .map(|u| (u.pos, u.len as u64))
        .collect();
    let unknown = Unread {
        spans: &spans,
        nul_runs: r.unread_over > 0,
    };
    let mut text = Vec::new();
    let mut gap = tail_start;
    let mut unreadable = 0;
    if r.marked != 0 && head_len > 0 {
        let head_start = (r.marked - 1).saturating_sub(lookback);
        let head_end = (head_start + head_len as u64).min(total);
        unreadable += unknown.mark(&r.head[..head_len], head_start, &mut text);
        gap = tail_start.saturating_sub(head_end);
        // The tail from where the head ends (they overlap when little was written).
        let skip = head_end.saturating_sub(tail_start).min(kept as u64) as usize;
        if gap > 0 {
            text.extend_from_slice(
                format!("\n[... crashwatch: {gap} bytes not kept ...]\n").as_bytes(),
            );
        }
        unreadable += unknown.mark(&tail[skip..], tail_start + skip as u64, &mut text);
    } else {
        unreadable += unknown.mark(&tail, tail_start, &mut text);
    }
    Ok(LastWords {
        head: head(&r.hdr),
        text,
        written: total + r.skipped,
        truncated: gap > 0 || r.skipped > 0,
        unreadable,
    })
}

/// Where the kernel could not read what a process wrote: those bytes are zeroes in the
/// record, and are shown as unreadable, never as text.
struct Unread<'a> {
    spans: &'a [(u64, u64)],
    /// More writes failed than the record could place: every NUL byte may be one of theirs.
    nul_runs: bool,
}

impl Unread<'_> {
    /// Appends `bytes` (stream positions from `start`) to `out`, each run of unreadable bytes
    /// as a marker; returns how many bytes were unreadable.
    fn mark(&self, bytes: &[u8], start: u64, out: &mut Vec<u8>) -> u64 {
        let unread = |i: usize| {
            let p = start + i as u64;
            self.spans.iter().any(|&(at, n)| p >= at && p < at + n)
                || (self.nul_runs && bytes[i] == 0)
        };
        let (mut i, mut marked) = (0, 0);
        while i < bytes.len() {
            if !unread(i) {
                out.push(bytes[i]);
                i += 1;
                continue;
            }
            let from = i;
            while i < bytes.len() && unread(i) {
                i += 1;
            }
            let n = i - from;
            marked += n as u64;
            out.extend_from_slice(format!("[crashwatch: {n} bytes unreadable]").as_bytes());
        }
        marked
    }
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
/// A path the kernel read leaf first, whole: `/dir/app`; None when incomplete or empty.
fn exe_path(p: &c::ExePath) -> Option<String> {
    let depth = (p.depth as usize).min(c::EXE_PATH_DEPTH);
    if p.complete == 0 || depth == 0 {
        return None;
    }
    let parts: Vec<String> = p.names[..depth].iter().map(|n| cstr(n)).collect();
    if parts
        .iter()
        .any(|n| n.is_empty() || n.contains('/') || n == "." || n == "..")
    {
        return None;
    }
    Some(parts.iter().rev().fold(String::new(), |mut out, part| {
        out.push('/');
        out.push_str(part);
        out
    }))
}

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
mod tests;
