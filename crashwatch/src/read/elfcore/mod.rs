//! The ELF core stream the kernel writes for a dying process (`fs/coredump.c`,
//! `binfmt_elf.c`), read front to back as it arrives on a socket or pipe: the program headers,
//! the notes (each thread's `NT_PRSTATUS`: its id, its signal, its registers), then the
//! memory, of which only the top of each thread's stack is kept. Nothing is seeked and
//! nothing is held but what is kept, so a 4 GiB process costs its reading, not its size.
//!
//! Written here rather than taken from a crate: the ELF readers (object, goblin) parse a whole
//! file in memory, and the minidump writers read a live process through ptrace; a core
//! arrives once, as a stream, while the kernel holds the process for it.
//!
//! Every count and size in the stream bounds nothing by itself: threads, notes and kept stack
//! bytes are capped by [`Limits`], and what a cap left out is said in [`Core::cut`].
use std::io::Read;

use crate::model::record::Stack;

const EHDR: usize = 64;
const PHDR: usize = 56;
const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
const PN_XNUM: u16 = 0xffff;
const NT_PRSTATUS: u32 = 1;
const NT_SIGINFO: u32 = 0x5349_4749;
/// Bytes of memory kept on each side of a fault's address.
const AROUND_FAULT: u64 = 256;
/// x86_64 `struct elf_prstatus`: `pr_cursig` at 12, `pr_pid` at 32, `pr_reg` (27 words) at 112.
const PRSTATUS_SIZE: usize = 336;
const PR_REG: usize = 112;
const PR_REG_WORDS: usize = 27;
/// Memory is read and dropped in pieces of this size.
const CHUNK: usize = 1 << 20;

/// What one core may cost the reader.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub threads: usize,
    pub notes_bytes: u64,
    /// Bytes of a thread's stack kept, from its stack pointer up.
    pub stack_per_thread: usize,
    /// Bytes of stack kept for all threads together.
    pub stack_total: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            threads: 4096,
            notes_bytes: 64 << 20,
            stack_per_thread: 256 << 10,
            stack_total: 32 << 20,
        }
    }
}

/// What a core stream held, as far as it was read.
#[derive(Debug, Default)]
pub struct Core {
    /// In the order the kernel wrote them: the thread that took the fatal signal first.
    pub threads: Vec<CoreThread>,
    /// Bytes read from the stream.
    pub bytes: u64,
    /// Memory segments in the core.
    pub segments: usize,
    /// What was left out and why; empty when nothing was.
    pub cut: Vec<String>,
    /// The fatal signal's siginfo (`NT_SIGINFO`).
    pub fault: Option<Fault>,
    /// The memory around the fault's address, where the core holds it.
    pub around_fault: Option<(u64, Vec<u8>)>,
}

pub use crate::model::dump::Fault;

#[derive(Debug, Default)]
pub struct CoreThread {
    /// As the core gives it: in the dying process's pid namespace.
    pub tid: u32,
    /// The signal it was taking (`pr_cursig`), 0 for the others.
    pub signal: u16,
    pub regs: Vec<u64>,
    pub stack: Option<Stack>,
}

struct Segment {
    kind: u32,
    offset: u64,
    vaddr: u64,
    filesz: u64,
}

/// The stream read so far: how many bytes, for skipping forward.
struct Stream<'a, R: Read> {
    r: &'a mut R,
    pos: u64,
}

impl<R: Read> Stream<'_, R> {
    fn exact(&mut self, buf: &mut [u8]) -> std::io::Result<()> {
        self.r.read_exact(buf)?;
        self.pos += buf.len() as u64;
        Ok(())
    }

    /// Reads and drops bytes up to `to`; false when the stream ended first.
    fn skip_to(&mut self, to: u64, buf: &mut [u8]) -> std::io::Result<bool> {
        while self.pos < to {
            let want = (to - self.pos).min(buf.len() as u64) as usize;
            let n = self.r.read(&mut buf[..want])?;
            if n == 0 {
                return Ok(false);
            }
            self.pos += n as u64;
        }
        Ok(true)
    }
}

/// Reads a whole core stream. An I/O error (a timeout included) or a malformed stream ends
/// the read: what was read until then is returned, and `cut` says why it stopped.
pub fn read(r: &mut impl Read, lim: &Limits) -> Core {
    let mut core = Core::default();
    let mut s = Stream { r, pos: 0 };
    if let Err(why) = read_into(&mut s, lim, &mut core) {
        core.cut.push(why);
    }
    core.bytes = s.pos;
    core
}

fn read_into<R: Read>(s: &mut Stream<R>, lim: &Limits, core: &mut Core) -> Result<(), String> {
    let io = |what: &str, e: std::io::Error| format!("the stream ended in {what}: {e}");
    let mut ehdr = [0u8; EHDR];
    s.exact(&mut ehdr).map_err(|e| io("the ELF header", e))?;
    if &ehdr[..4] != b"\x7fELF" || ehdr[4] != 2 || ehdr[5] != 1 {
        return Err("not a 64-bit little-endian ELF core".into());
    }
    let (etype, machine) = (u16_at(&ehdr, 16), u16_at(&ehdr, 18));
    if etype != 4 || machine != 62 {
        return Err(format!(
            "not an x86_64 core (type {etype}, machine {machine})"
        ));
    }
    let phoff = u64_at(&ehdr, 32);
    let (phentsize, phnum) = (u16_at(&ehdr, 54), u16_at(&ehdr, 56));
    if phnum == PN_XNUM {
        return Err("more than 65534 segments: their count is at the stream's end".into());
    }
    if usize::from(phentsize) != PHDR {
        return Err(format!("program header size {phentsize}, not {PHDR}"));
    }
    let mut buf = vec![0u8; CHUNK];
    if !s.skip_to(phoff, &mut buf).map_err(|e| io("padding", e))? {
        return Err("the stream ended before the program headers".into());
    }
    let mut ph = vec![0u8; usize::from(phnum) * PHDR];
    s.exact(&mut ph).map_err(|e| io("the program headers", e))?;
    let mut segs: Vec<Segment> = ph
        .chunks_exact(PHDR)
        .map(|p| Segment {
            kind: u32_at(p, 0),
            offset: u64_at(p, 8),
            vaddr: u64_at(p, 16),
            filesz: u64_at(p, 32),
        })
        .filter(|p| matches!(p.kind, PT_LOAD | PT_NOTE) && p.filesz > 0)
        .collect();
    segs.sort_by_key(|p| p.offset);
    core.segments = segs.iter().filter(|p| p.kind == PT_LOAD).count();
    let mut plan: Option<Vec<Want>> = None;
    for seg in &segs {
        if seg.offset < s.pos {
            return Err(format!("segments overlap at offset {:#x}", seg.offset));
        }
        if !s
            .skip_to(seg.offset, &mut buf)
            .map_err(|e| io("padding", e))?
        {
            return Err("the stream ended before its last segment".into());
        }
        if seg.kind == PT_NOTE {
            notes(s, seg.filesz, lim, core)?;
            continue;
        }
        let wants = plan.get_or_insert_with(|| stack_plan(&segs, lim, core));
        load(s, seg, wants, &mut buf).map_err(|e| io("memory", e))?;
    }
    if let Some(wants) = plan {
        for w in wants {
            match core.threads.get_mut(w.thread) {
                Some(t) => {
                    t.stack = Some(Stack {
                        sp: w.from,
                        data: w.data,
                        ..Stack::default()
                    })
                }
                None => core.around_fault = Some((w.from, w.data)),
            }
        }
    }
    // The kernel may write a last byte or section header past the segments.
    let end = s.skip_to(u64::MAX, &mut buf);
    end.map_err(|e| io("the trailer", e))?;
    Ok(())
}

/// Reads one note segment (`len` bytes): each thread's `NT_PRSTATUS`.
fn notes<R: Read>(
    s: &mut Stream<R>,
    len: u64,
    lim: &Limits,
    core: &mut Core,
) -> Result<(), String> {
    let take = len.min(lim.notes_bytes);
    let mut data = vec![0u8; take as usize];
    s.exact(&mut data)
        .map_err(|e| format!("the stream ended in the notes: {e}"))?;
    if take < len {
        core.cut
            .push(format!("notes past {} MiB not read", lim.notes_bytes >> 20));
        let mut buf = vec![0u8; CHUNK];
        s.skip_to(s.pos + (len - take), &mut buf)
            .map_err(|e| format!("the stream ended in the notes: {e}"))?;
    }
    let mut at = 0usize;
    let mut dropped = 0usize;
    while at + 12 <= data.len() {
        let (namesz, descsz, kind) = (
            u32_at(&data, at) as usize,
            u32_at(&data, at + 4) as usize,
            u32_at(&data, at + 8),
        );
        let name_at = at + 12;
        let desc_at = name_at.saturating_add(namesz.next_multiple_of(4));
        let next = desc_at.saturating_add(descsz.next_multiple_of(4));
        if next > data.len() {
            core.cut.push("a note runs past its segment".into());
            break;
        }
        let name = &data[name_at..name_at + namesz];
        if kind == NT_SIGINFO && name.starts_with(b"CORE") && descsz >= 24 {
            let d = &data[desc_at..desc_at + descsz];
            core.fault = Some(Fault {
                signal: u32_at(d, 0),
                code: u32_at(d, 8) as i32,
                addr: u64_at(d, 16),
            });
        }
        if kind == NT_PRSTATUS && name.starts_with(b"CORE") && descsz >= PRSTATUS_SIZE {
            if core.threads.len() >= lim.threads {
                dropped += 1;
            } else {
                let d = &data[desc_at..desc_at + descsz];
                core.threads.push(CoreThread {
                    tid: u32_at(d, 32),
                    signal: u16_at(d, 12),
                    regs: (0..PR_REG_WORDS)
                        .map(|i| u64_at(d, PR_REG + 8 * i))
                        .collect(),
                    stack: None,
                });
            }
        }
        at = next;
    }
    if dropped > 0 {
        core.cut.push(format!(
            "{dropped} threads past the first {} not read",
            lim.threads
        ));
    }
    Ok(())
}

/// Bytes wanted from one segment: a thread's stack, or (`thread` past the last thread) the
/// memory around the fault.
struct Want {
    thread: usize,
    seg_offset: u64,
    from: u64,
    data: Vec<u8>,
    len: usize,
}

/// Which bytes of which segment each thread's stack is: from its stack pointer up to
/// `stack_per_thread` or its segment's end, while `stack_total` lasts.
fn stack_plan(segs: &[Segment], lim: &Limits, core: &mut Core) -> Vec<Want> {
    let mut left = lim.stack_total;
    let mut wants = Vec::new();
    let mut over = 0;
    for (i, t) in core.threads.iter().enumerate() {
        let sp = t.regs.get(crate::model::dump::REG_SP).copied().unwrap_or(0);
        let Some(seg) = segs
            .iter()
            .find(|p| p.kind == PT_LOAD && p.vaddr <= sp && sp - p.vaddr < p.filesz)
        else {
            continue;
        };
        let room = (seg.vaddr + seg.filesz - sp).min(lim.stack_per_thread as u64) as usize;
        if room > left {
            over += 1;
            continue;
        }
        left -= room;
        wants.push(Want {
            thread: i,
            seg_offset: seg.offset,
            from: sp,
            data: Vec::with_capacity(room),
            len: room,
        });
    }
    if over > 0 {
        core.cut.push(format!(
            "{over} threads' stacks not kept: past {} MiB of stack in all",
            lim.stack_total >> 20
        ));
    }
    let addr = core.fault.map_or(0, |f| f.addr);
    let from = addr.saturating_sub(AROUND_FAULT);
    if let Some(seg) = segs
        .iter()
        .find(|p| p.kind == PT_LOAD && p.vaddr <= addr && addr - p.vaddr < p.filesz)
    {
        let from = from.max(seg.vaddr);
        let len = (addr + AROUND_FAULT).min(seg.vaddr + seg.filesz) - from;
        wants.push(Want {
            thread: usize::MAX,
            seg_offset: seg.offset,
            from,
            data: Vec::with_capacity(len as usize),
            len: len as usize,
        });
    }
    wants
}

/// Streams one memory segment, copying what `wants` asks of it.
fn load<R: Read>(
    s: &mut Stream<R>,
    seg: &Segment,
    wants: &mut [Want],
    buf: &mut [u8],
) -> std::io::Result<()> {
    let mut done = 0u64;
    while done < seg.filesz {
        let n = (seg.filesz - done).min(buf.len() as u64) as usize;
        s.exact(&mut buf[..n])?;
        let (lo, hi) = (seg.vaddr + done, seg.vaddr + done + n as u64);
        for w in wants.iter_mut().filter(|w| w.seg_offset == seg.offset) {
            let (want_lo, want_hi) = (w.from + w.data.len() as u64, w.from + w.len as u64);
            let (a, b) = (want_lo.max(lo), want_hi.min(hi));
            if a < b && a == want_lo {
                w.data
                    .extend_from_slice(&buf[(a - lo) as usize..(b - lo) as usize]);
            }
        }
        done += n as u64;
    }
    Ok(())
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap_or_default())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or_default())
}

#[cfg(test)]
mod tests;
