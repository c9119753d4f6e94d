//! CPython's own stack, read from a process's memory as py-spy and the OpenTelemetry profiler
//! read it: `_PyRuntime` → the main interpreter → each thread state → its chain of frames →
//! each frame's code object (function, file, line table) and where in it the frame is. Pure:
//! it reads through a [`Memory`] the caller gives (the kernel side reads a dying process's
//! memory while the kernel holds it) and never fails on what it reads: bounds on threads,
//! frames, strings and tables, and a frame it cannot read ends its thread's walk, said.
//!
//! The layouts are CPython's internal structures, which change with each minor version, so
//! each version's offsets are here ([`offsets`]), for x86_64 release builds: measured with
//! gdb's `ptype /o` on CPython 3.9.18, 3.10.13, 3.11.7, 3.12.1 and 3.13.0 and checked by the
//! tests against those builds' real crashes. (3.13 also publishes `_Py_DebugOffsets`; one
//! table for every version is simpler and is what the tests prove.)
pub mod lines;

use crate::model::dump::{PyFrame, PyThread};

/// Reads another process's memory: false when `addr..addr+buf.len()` is not readable.
pub trait Memory {
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool;
}

pub const MAX_THREADS: usize = 64;
pub const MAX_FRAMES: usize = 128;
const MAX_CHARS: u64 = 512;
const MAX_TABLE: u64 = 64 << 10;

/// How a thread state leads to its innermost frame.
#[derive(Clone, Copy)]
enum Current {
    /// `tstate->frame` (3.9, 3.10: a `PyFrameObject`) or `tstate->current_frame` (3.13).
    Direct(u64),
    /// `tstate->cframe->current_frame` (3.11, 3.12).
    ViaCFrame(u64, u64),
}

/// Where a frame is in its code.
#[derive(Clone, Copy)]
enum At {
    /// `f_lasti`, an int: in bytes (3.9) or in code units (3.10).
    Lasti { off: u64, units: bool },
    /// A pointer to the instruction (3.11+: `prev_instr`, `instr_ptr`).
    Instr(u64),
}

struct Offsets {
    interp_head: u64,
    threads_head: u64,
    ts_next: u64,
    current: Current,
    ts_thread_id: u64,
    ts_native_id: Option<u64>,
    f_code: u64,
    f_previous: u64,
    at: At,
    /// 3.11: `is_entry`; 3.12+: `owner` (3: a shim the C stack owns, between eval calls).
    f_is_entry: Option<u64>,
    f_owner: Option<u64>,
    co_filename: u64,
    co_name: u64,
    co_qualname: Option<u64>,
    co_firstlineno: u64,
    co_table: u64,
    co_code: u64,
    /// `sizeof(PyASCIIObject)`, `sizeof(PyCompactUnicodeObject)`.
    ascii: u64,
    compact: u64,
}

/// The offsets of CPython 3.`minor`; None for a version not read.
fn offsets(minor: u32) -> Option<Offsets> {
    let legacy = |lasti: u64, units: bool| Offsets {
        interp_head: 32,
        threads_head: 8,
        ts_next: 8,
        current: Current::Direct(24),
        ts_thread_id: 176,
        ts_native_id: None,
        f_code: 32,
        f_previous: 24,
        at: At::Lasti { off: lasti, units },
        f_is_entry: None,
        f_owner: None,
        co_filename: 104,
        co_name: 112,
        co_qualname: None,
        co_firstlineno: 40,
        co_table: 120,
        co_code: 0,
        ascii: 48,
        compact: 72,
    };
    Some(match minor {
        9 => legacy(104, false),
        10 => legacy(96, true),
        11 => Offsets {
            interp_head: 40,
            threads_head: 16,
            ts_next: 8,
            current: Current::ViaCFrame(56, 8),
            ts_thread_id: 152,
            ts_native_id: Some(160),
            f_code: 32,
            f_previous: 48,
            at: At::Instr(56),
            f_is_entry: Some(68),
            f_owner: None,
            co_filename: 112,
            co_name: 120,
            co_qualname: Some(128),
            co_firstlineno: 72,
            co_table: 136,
            co_code: 184,
            ascii: 48,
            compact: 72,
        },
        12 | 13 => Offsets {
            interp_head: if minor == 12 { 40 } else { 632 },
            threads_head: if minor == 12 { 72 } else { 7344 },
            ts_next: 8,
            current: if minor == 12 {
                Current::ViaCFrame(56, 0)
            } else {
                Current::Direct(72)
            },
            ts_thread_id: if minor == 12 { 136 } else { 152 },
            ts_native_id: Some(if minor == 12 { 144 } else { 160 }),
            f_code: 0,
            f_previous: 8,
            at: At::Instr(56),
            f_is_entry: None,
            f_owner: Some(70),
            co_filename: 112,
            co_name: 120,
            co_qualname: Some(128),
            co_firstlineno: 68,
            co_table: 136,
            co_code: if minor == 12 { 192 } else { 200 },
            ascii: 40,
            compact: 56,
        },
        _ => return None,
    })
}

/// Every thread's Python stack, innermost frame first, and what bounds or unreadable memory
/// left out. `runtime`: `_PyRuntime`'s address; `code_type`: `PyCode_Type`'s, to take only
/// code objects for code.
pub fn read(
    mem: &dyn Memory,
    minor: u32,
    runtime: u64,
    code_type: Option<u64>,
) -> Result<(Vec<PyThread>, Vec<String>), String> {
    let o = offsets(minor)
        .ok_or_else(|| format!("CPython 3.{minor} is not a version read (3.9 to 3.13)"))?;
    let r = Reader {
        mem,
        o: &o,
        minor,
        code_type,
    };
    let interp = r.ptr(runtime + o.interp_head).filter(|&p| p != 0);
    let interp = interp.ok_or("no interpreter in _PyRuntime")?;
    let mut ts = r.ptr(interp + o.threads_head).unwrap_or(0);
    let (mut threads, mut cut) = (Vec::new(), Vec::new());
    while ts != 0 {
        if threads.len() == MAX_THREADS {
            cut.push(format!("threads past {MAX_THREADS} not read"));
            break;
        }
        let frame = match o.current {
            Current::Direct(off) => r.ptr(ts + off),
            Current::ViaCFrame(c, cur) => match r.ptr(ts + c) {
                Some(0) => Some(0),
                Some(cf) => r.ptr(cf + cur),
                None => None,
            },
        };
        let mut t = PyThread {
            thread_id: r.ptr(ts + o.ts_thread_id).unwrap_or(0),
            native_id: o.ts_native_id.and_then(|off| r.ptr(ts + off)),
            frames: Vec::new(),
        };
        if let Err(why) = r.frames(frame.unwrap_or(0), &mut t.frames) {
            cut.push(format!("thread {:#x}: {why}", t.thread_id));
        }
        threads.push(t);
        ts = r.ptr(ts + o.ts_next).unwrap_or(0);
    }
    Ok((threads, cut))
}

struct Reader<'a> {
    mem: &'a dyn Memory,
    o: &'a Offsets,
    minor: u32,
    code_type: Option<u64>,
}

impl Reader<'_> {
    fn bytes<const N: usize>(&self, addr: u64) -> Option<[u8; N]> {
        let mut b = [0u8; N];
        self.mem.read(addr, &mut b).then_some(b)
    }

    fn ptr(&self, addr: u64) -> Option<u64> {
        self.bytes::<8>(addr).map(u64::from_le_bytes)
    }

    fn i32(&self, addr: u64) -> Option<i32> {
        self.bytes::<4>(addr).map(i32::from_le_bytes)
    }

    /// The frames from `f` on, innermost first, into `out`.
    fn frames(&self, mut f: u64, out: &mut Vec<PyFrame>) -> Result<(), String> {
        let o = self.o;
        while f != 0 {
            if out.len() == MAX_FRAMES {
                return Err(format!("frames past {MAX_FRAMES} not read"));
            }
            let unreadable = || format!("the frame at {f:#x} is unreadable");
            let shim = match o.f_owner {
                Some(off) => self.bytes::<1>(f + off).ok_or_else(unreadable)?[0] == 3,
                None => false,
            };
            if shim {
                // The C stack's frame between two eval calls: the one above ends a call.
                if let Some(last) = out.last_mut() {
                    last.entry = true;
                }
            } else {
                let frame = self.frame(f).ok_or_else(unreadable)?;
                out.extend(frame);
            }
            f = self.ptr(f + o.f_previous).ok_or_else(unreadable)?;
        }
        if let Some(last) = out.last_mut() {
            last.entry = true;
        }
        Ok(())
    }

    /// One frame: None when unreadable, Some(None) when its code is not a code object.
    fn frame(&self, f: u64) -> Option<Option<PyFrame>> {
        let o = self.o;
        let code = self.ptr(f + o.f_code)?;
        if code == 0
            || self
                .code_type
                .is_some_and(|t| self.ptr(code + 8) != Some(t))
        {
            return Some(None);
        }
        let name = self.ptr(code + o.co_qualname.unwrap_or(o.co_name))?;
        let file = self.ptr(code + o.co_filename)?;
        let first = i64::from(self.i32(code + o.co_firstlineno)?);
        let table = self.table(self.ptr(code + o.co_table)?).unwrap_or_default();
        let line = match o.at {
            At::Lasti { off, units } => {
                let lasti = u64::try_from(self.i32(f + off)?).ok();
                let lasti = lasti.map(|l| if units { l * 2 } else { l });
                lasti.and_then(|l| match self.minor {
                    9 => lines::lnotab(&table, first, l),
                    _ => lines::linetable(&table, first, l),
                })
            }
            At::Instr(off) => {
                let at = self.ptr(f + off)?;
                let index = at.checked_sub(code + o.co_code).map(|b| b / 2);
                index.and_then(|i| lines::locations(&table, first, i))
            }
        };
        let entry = match (o.f_is_entry, o.f_owner) {
            (Some(off), _) => self.bytes::<1>(f + off)?[0] != 0,
            (None, Some(_)) => false,
            // Before 3.11 each Python call is its own eval call.
            (None, None) => true,
        };
        Some(Some(PyFrame {
            function: self.string(name).unwrap_or_else(|| "?".into()),
            file: self.string(file).unwrap_or_else(|| "?".into()),
            line,
            entry,
        }))
    }

    /// A `str` (compact, as code objects' names are), cut at [`MAX_CHARS`].
    fn string(&self, s: u64) -> Option<String> {
        let state = u32::from_le_bytes(self.bytes::<4>(s + 32)?);
        let (kind, compact, ascii) = ((state >> 2) & 7, state >> 5 & 1, state >> 6 & 1);
        if compact == 0 || !matches!(kind, 1 | 2 | 4) {
            return None;
        }
        let len = u64::try_from(i64::from_le_bytes(self.bytes::<8>(s + 16)?)).ok()?;
        let n = len.min(MAX_CHARS) * u64::from(kind);
        let at = s + if ascii == 1 {
            self.o.ascii
        } else {
            self.o.compact
        };
        let mut b = vec![0u8; n as usize];
        if !self.mem.read(at, &mut b) {
            return None;
        }
        let chars: String = match kind {
            1 => b.iter().map(|&c| char::from(c)).collect(),
            2 => b
                .chunks_exact(2)
                .map(|c| char::from_u32(u32::from(u16::from_le_bytes([c[0], c[1]]))))
                .map(|c| c.unwrap_or('\u{fffd}'))
                .collect(),
            _ => b
                .chunks_exact(4)
                .map(|c| char::from_u32(u32::from_le_bytes([c[0], c[1], c[2], c[3]])))
                .map(|c| c.unwrap_or('\u{fffd}'))
                .collect(),
        };
        Some(chars)
    }

    /// A `bytes` object's contents, cut at [`MAX_TABLE`].
    fn table(&self, b: u64) -> Option<Vec<u8>> {
        let len = u64::try_from(i64::from_le_bytes(self.bytes::<8>(b + 16)?)).ok()?;
        let mut v = vec![0u8; len.min(MAX_TABLE) as usize];
        self.mem.read(b + 32, &mut v).then_some(v)
    }
}
