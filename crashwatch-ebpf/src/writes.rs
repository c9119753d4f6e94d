//! Last words: what each process writes to stderr (fd 2), through `write` and `writev`, kept
//! per process in a kernel map from its first instruction and sent only if it dies
//! abnormally (`exec_exit` sends or drops it at death). Independent of uprobes: a freshly
//! built binary that panics in its first millisecond is covered.
//!
//! Stdout (fd 1) is kept only from a `write` that begins the JVM's fatal-error banner (the
//! JVM prints it there, in dozens of small writes): ordinary stdout writes cost a length test
//! and one array read ([`STDOUT_KEPT`]).
//!
//! Two ways in, chosen by the agent at load: fentry on `ksys_write` and `do_writev` (a few ns
//! per write), else the `syscalls:sys_enter_write`/`sys_enter_writev` tracepoints where the
//! kernel refuses fentry (they put every task on the slow syscall path: the agent says so).
//!
//! Per process: the last `WORDS_TAIL` bytes in a ring, and a head that starts
//! `WORDS_LOOKBACK` bytes before the first write that begins the way a runtime begins its
//! dying words (`panic: `, `Traceback (most recent call last):`, ...), so a long goroutine
//! dump keeps both its first lines and its last. A head long complete is replaced by the next
//! such write: a service that logged a handled traceback hours ago still gets its real death.
//! Threads writing at once may interleave, as they do on the terminal.
//!
//! Per write to stderr the program reads the process's bytes once, into the tail (a read of
//! user memory is most of its cost), and tests a marker only when the first byte is one a
//! marker begins with; the syscall tracepoints' arguments are loaded from the record
//! directly, not through a helper.
use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_task, bpf_probe_read_kernel_buf,
        bpf_probe_read_user_buf,
    },
    macros::{fentry, map, tracepoint},
    maps::{Array, LruHashMap, PerCpuArray},
    programs::{FEntryContext, TracePointContext},
    EbpfContext,
};
use crashwatch_common::*;

/// Per process (tgid). An entry is made at a process's first write to stderr and removed at
/// its death; the least recently written go first when full.
#[map]
pub static WORDS: LruHashMap<u32, LastWordsRecord> = LruHashMap::with_max_entries(256, 0);
/// Never written: the source of a new entry's zeroes.
#[map]
static WORDS_ZERO: PerCpuArray<LastWordsRecord> = PerCpuArray::with_max_entries(1, 0);

/// Processes whose stdout is being kept (see the module doc), each in slot `tgid % 64`:
/// plain stores, as the BPF target has no atomic read-modify-write in Rust. Two processes
/// mid-banner in one slot at once: the later keeps its stdout, the earlier only what it had.
#[map]
pub static STDOUT_KEPT: Array<[u32; STDOUT_SLOTS]> = Array::with_max_entries(1, 0);
const STDOUT_SLOTS: usize = 64;

const BPF_NOEXIST: u64 = 1;
/// `# A fatal error has been detected by the Java Runtime Environment:`, with or without its
/// newline, as one write: only stdout writes of its length are looked at.
const BANNER_LEN: core::ops::RangeInclusive<u64> = 66..=67;
const BANNER: Marker = marker(b"# A fatal error ");
/// iovecs of one `writev` looked at (glibc's fatal messages use a handful).
const IOVECS: u64 = 6;

/// How runtimes begin their dying words, as the first bytes of a write.
static MARKERS: [Marker; 22] = [
    marker(b"panic: "),
    marker(b"fatal error: "),
    marker(b"thread '"),
    marker(b"\nthread '"),
    marker(b"Traceback (most "),
    marker(b"  + Exception Gr"),
    marker(b"Fatal Python err"),
    marker(b"Exception in thr"),
    marker(b"terminate called"),
    marker(b"FATAL ERROR: "),
    marker(b"<--- Last few GC"),
    marker(b"*** "),
    marker(b"memory allocatio"),
    marker(b"free(): "),
    marker(b"malloc(): "),
    marker(b"realloc(): "),
    marker(b"double free or c"),
    marker(b"corrupted "),
    marker(b"munmap_chunk(): "),
    marker(b"================"),
    marker(b"fatal runtime er"),
    BANNER,
];

/// The first bytes of [`MARKERS`] and of `SIGxxx: `, as a 256-bit set.
static FIRST_BYTES: [u64; 4] = first_bytes_of(&MARKERS);

const fn first_bytes_of(markers: &[Marker]) -> [u64; 4] {
    let mut set = [0u64; 4];
    let mut i = 0;
    while i < markers.len() {
        let b = (markers[i].words[0] & 0xff) as usize;
        set[b >> 6] |= 1 << (b & 63);
        i += 1;
    }
    set[(b'S' as usize) >> 6] |= 1 << (b'S' as usize & 63);
    set
}

/// A prefix of up to 16 bytes as two little-endian words and their masks: numbers only, so
/// the table needs no relocation in the program's read-only data (a table of slices would).
struct Marker {
    words: [u64; 2],
    masks: [u64; 2],
    len: usize,
}

const fn marker(s: &[u8]) -> Marker {
    let mut m = Marker {
        words: [0; 2],
        masks: [0; 2],
        len: s.len(),
    };
    let mut i = 0;
    while i < s.len() && i < 16 {
        m.words[i / 8] |= (s[i] as u64) << (8 * (i % 8));
        m.masks[i / 8] |= 0xff << (8 * (i % 8));
        i += 1;
    }
    m
}

#[fentry(function = "ksys_write")]
pub fn write_fentry(ctx: FEntryContext) -> u32 {
    let fd: u64 = ctx.arg(0);
    on_write(fd, ctx.arg(1), ctx.arg(2));
    0
}

#[fentry(function = "do_writev")]
pub fn writev_fentry(ctx: FEntryContext) -> u32 {
    let fd: u64 = ctx.arg(0);
    on_writev(fd, ctx.arg(1), ctx.arg(2));
    0
}

// `syscalls:sys_enter_*`: the arguments at 16, 24, 32 (after the common fields and the
// syscall number).
#[tracepoint]
pub fn write_tp(ctx: TracePointContext) -> u32 {
    let [fd, buf, count] = syscall_args(&ctx);
    on_write(fd, buf, count);
    0
}

#[tracepoint]
pub fn writev_tp(ctx: TracePointContext) -> u32 {
    let [fd, vec, vlen] = syscall_args(&ctx);
    on_writev(fd, vec, vlen);
    0
}

/// The first three arguments of a `sys_enter_*` record, loaded from the context directly:
/// the verifier allows loads inside a tracepoint's record, and a helper call per write
/// (`read_at`'s `bpf_probe_read_kernel`) costs every write on the host.
#[inline(always)]
fn syscall_args(ctx: &TracePointContext) -> [u64; 3] {
    let p = ctx.as_ptr() as *const u64;
    // SAFETY: aligned loads at 16, 24 and 32 inside the record (its format's offsets).
    unsafe { [*p.add(2), *p.add(3), *p.add(4)] }
}

#[inline(always)]
fn on_write(fd: u64, buf: u64, count: u64) {
    if count == 0 {
        return;
    }
    let w = match fd as u32 {
        2 => words(),
        1 if BANNER_LEN.contains(&count) && begins(buf, &BANNER) => banner_begun(),
        1 => stdout_kept(),
        _ => None,
    };
    if let Some(w) = w {
        keep(w, buf, count, true);
    }
}

#[inline(always)]
fn on_writev(fd: u64, vec: u64, vlen: u64) {
    if vlen == 0 {
        return;
    }
    // The banner starts with a `write`; a `writev` to stdout is kept only after it.
    let w = match fd as u32 {
        2 => words(),
        1 => stdout_kept(),
        _ => None,
    };
    let Some(w) = w else {
        return;
    };
    // Only a message's first piece can start it.
    let first = iovec(vec, 0);
    if first[1] != 0 {
        keep(w, first[0], first[1], true);
    }
    for i in 1..IOVECS {
        if i >= vlen {
            break;
        }
        let iov = iovec(vec, i);
        if iov[1] != 0 {
            keep(w, iov[0], iov[1], false);
        }
    }
}

/// The `i`-th `struct iovec` (base, length) of the array at `vec`; zeroes when unreadable.
#[inline(always)]
fn iovec(vec: u64, i: u64) -> [u64; 2] {
    // SAFETY: bpf_probe_read_user faults safely.
    unsafe { aya_ebpf::helpers::bpf_probe_read_user((vec + 16 * i) as *const [u64; 2]) }
        .unwrap_or([0; 2])
}

/// This process's entry, made on its first write.
#[inline(always)]
fn words() -> Option<&'static mut LastWordsRecord> {
    // Checked here, past the cheap fd test every write takes: an inactive generation must
    // not append a second copy of the words.
    if !crate::shared::active() {
        return None;
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if let Some(p) = WORDS.get_ptr_mut(tgid) {
        // SAFETY: a map value; other threads of the process may write it too (see above).
        return Some(unsafe { &mut *p });
    }
    let zero = WORDS_ZERO.get_ptr(0)?;
    // SAFETY: the zero template is a map value of the same type.
    #[allow(
        clippy::needless_borrows_for_generic_args,
        reason = "by value it would be copied onto the 512-byte BPF stack"
    )]
    if WORDS.insert(tgid, unsafe { &*zero }, BPF_NOEXIST).is_err() {
        return WORDS.get_ptr_mut(tgid).map(|p| unsafe { &mut *p });
    }
    // SAFETY: the entry just made.
    let w = unsafe { &mut *WORDS.get_ptr_mut(tgid)? };
    // At death its memory is gone: who it is must be read now, if the agent will not know.
    if !crate::ident::is_tracked(tgid) {
        crate::ident::fill_ident(&mut w.ident, unsafe { bpf_get_current_task() });
        w.has_ident = 1;
    }
    Some(w)
}

/// This process began the JVM banner on stdout: keep its stdout from now on.
#[inline(always)]
fn banner_begun() -> Option<&'static mut LastWordsRecord> {
    let w = words()?;
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if let Some(slots) = STDOUT_KEPT.get_ptr_mut(0) {
        // SAFETY: a map value; the index is masked into the array.
        unsafe { (*slots)[tgid as usize & (STDOUT_SLOTS - 1)] = tgid };
        w.stdout = 1;
    }
    Some(w)
}

/// This process's entry if its stdout is being kept.
#[inline(always)]
fn stdout_kept() -> Option<&'static mut LastWordsRecord> {
    if !crate::shared::active() {
        return None;
    }
    let slots = STDOUT_KEPT.get_ptr(0)?;
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: a map value; the index is masked into the array.
    if unsafe { (*slots)[tgid as usize & (STDOUT_SLOTS - 1)] } != tgid {
        return None;
    }
    // SAFETY: a map value; other threads of the process may write it too (see above).
    let w = unsafe { &mut *WORDS.get_ptr_mut(tgid)? };
    (w.stdout != 0).then_some(w)
}

/// Process `tgid`'s entry is going: its slot is free again.
#[inline(always)]
pub fn stdout_done(w: &LastWordsRecord, tgid: u32) {
    if w.stdout == 0 {
        return;
    }
    if let Some(slots) = STDOUT_KEPT.get_ptr_mut(0) {
        let i = tgid as usize & (STDOUT_SLOTS - 1);
        // SAFETY: as in `banner_begun`.
        unsafe {
            if (*slots)[i] == tgid {
                (*slots)[i] = 0;
            }
        }
    }
}

/// A mask the compiler cannot see through: it drops masks it can prove change nothing, and
/// the verifier needs them.
#[inline(always)]
fn masked(v: usize, mask: usize) -> usize {
    // SAFETY: a read of a local.
    unsafe { core::ptr::read_volatile(&v) & mask }
}

#[inline(always)]
fn keep(w: &mut LastWordsRecord, buf: u64, count: u64, may_start: bool) {
    // What earlier writes left unread is resident now: the kernel copied it since.
    retry_unread(w);
    let n = if count >= WORDS_CHUNK as u64 {
        WORDS_CHUNK - 1
    } else {
        count as usize
    };
    w.skipped += count - n as u64;
    let pos = w.total;
    // Into the tail first, read once: the marker test reads its first bytes there. The
    // look-back a mark copies ends before `pos`, and the tail is longer than a look-back
    // and a write together, so this write never overwrites it.
    let mut read = into_tail(w, pos, buf, n);
    let head_done = w.head_len as usize >= WORDS_HEAD
        && pos >= w.marked.wrapping_sub(1).saturating_add(WORDS_HEAD as u64);
    if may_start && (w.marked == 0 || head_done) && starts_dying_words(w, pos, n) {
        mark(w, pos);
    }
    let h = w.head_len as usize;
    if w.marked != 0 && h < WORDS_HEAD {
        let h = masked(h, WORDS_HEAD - 1);
        let k = masked(n.min(WORDS_HEAD - h), WORDS_CHUNK - 1);
        read &= into_head(w, h, buf, k);
        // Advanced whether read or not: the head's bytes stay at their stream positions.
        w.head_len = (h + k) as u32;
    }
    if !read {
        note_unread(w, pos, buf, n);
    }
    w.total = pos + n as u64;
}

const _: () = assert!(WORDS_TAIL >= WORDS_LOOKBACK + WORDS_CHUNK);

/// Copies `n` (< [`WORDS_CHUNK`]) bytes at `buf` in the process into the tail ring at
/// stream position `pos`, in at most two pieces; false when any could not be read (a failed
/// read leaves zeroes).
#[inline(always)]
fn into_tail(w: &mut LastWordsRecord, pos: u64, buf: u64, n: usize) -> bool {
    let at = masked(pos as usize, WORDS_TAIL - 1);
    let first = masked(n.min(WORDS_TAIL - at), WORDS_CHUNK - 1);
    let rest = masked(n.saturating_sub(first), WORDS_CHUNK - 1);
    // SAFETY (both reads): `at` < WORDS_TAIL and each length < WORDS_CHUNK: inside the tail
    // and the head behind it (the wrap keeps the bytes in the tail).
    unsafe {
        let dst = core::slice::from_raw_parts_mut(w.tail.as_mut_ptr().add(at), first);
        let a = bpf_probe_read_user_buf(buf as *const u8, dst).is_ok();
        if rest == 0 {
            return a;
        }
        let dst = core::slice::from_raw_parts_mut(w.tail.as_mut_ptr(), rest);
        let b = bpf_probe_read_user_buf((buf + first as u64) as *const u8, dst).is_ok();
        a && b
    }
}

/// Copies `k` (< [`WORDS_CHUNK`]) bytes at `buf` into the head at `h` (< [`WORDS_HEAD`]).
#[inline(always)]
fn into_head(w: &mut LastWordsRecord, h: usize, buf: u64, k: usize) -> bool {
    let h = masked(h, WORDS_HEAD - 1);
    let k = masked(k, WORDS_CHUNK - 1);
    // SAFETY: h < WORDS_HEAD and k < WORDS_CHUNK = WORDS_SLACK.
    let dst = unsafe { core::slice::from_raw_parts_mut(w.head.as_mut_ptr().add(h), k) };
    unsafe { bpf_probe_read_user_buf(buf as *const u8, dst) }.is_ok()
}

/// Remembers a write whose bytes could not be read, for a later retry.
#[inline(always)]
fn note_unread(w: &mut LastWordsRecord, pos: u64, buf: u64, n: usize) {
    for i in 0..UNREAD_SPANS {
        if w.unread[i].len == 0 {
            w.unread[i] = Unread {
                pos,
                addr: buf,
                len: n as u32,
                _pad: 0,
            };
            w.unread_n += 1;
            return;
        }
    }
    w.unread_over += 1;
}

/// Reads again what earlier writes left unread, wherever the stream still holds it (the
/// tail ring, the head); a span read whole, or no longer held anywhere, is done with.
#[inline(always)]
pub fn retry_unread(w: &mut LastWordsRecord) {
    if w.unread_n == 0 {
        return;
    }
    for i in 0..UNREAD_SPANS {
        let u = w.unread[i];
        if u.len == 0 {
            continue;
        }
        let n = masked(u.len as usize, WORDS_CHUNK - 1);
        let (mut ok, mut held) = (true, false);
        if w.total.wrapping_sub(u.pos) <= WORDS_TAIL as u64 {
            held = true;
            ok &= into_tail(w, u.pos, u.addr, n);
        }
        if w.marked != 0 {
            let start = (w.marked - 1).wrapping_sub(w.lookback as u64);
            let at = u.pos.wrapping_sub(start);
            if u.pos >= start && at < w.head_len as u64 {
                held = true;
                let k = n.min((w.head_len as u64 - at) as usize);
                ok &= into_head(w, at as usize, u.addr, k);
            }
        }
        if ok || !held {
            w.unread[i].len = 0;
            w.unread_n = w.unread_n.saturating_sub(1);
        }
    }
}

/// Starts the head at stream position `pos`, with the look-back the tail still holds.
#[inline(always)]
fn mark(w: &mut LastWordsRecord, pos: u64) {
    let lb = (pos as usize).min(WORDS_LOOKBACK);
    let from = masked((pos as usize).wrapping_sub(lb), WORDS_TAIL - 1);
    let first = masked(lb.min(WORDS_TAIL - from), 2 * WORDS_LOOKBACK - 1);
    let rest = masked(lb - first, 2 * WORDS_LOOKBACK - 1);
    // SAFETY: sources inside the record (from < WORDS_TAIL, lengths < 2 KiB, the head after
    // the tail), destinations inside the head.
    unsafe {
        let src = w.tail.as_ptr().add(from);
        let dst = core::slice::from_raw_parts_mut(w.head.as_mut_ptr(), first);
        let a = bpf_probe_read_kernel_buf(src, dst);
        let dst = core::slice::from_raw_parts_mut(w.head.as_mut_ptr().add(first), rest);
        let b = bpf_probe_read_kernel_buf(w.tail.as_ptr(), dst);
        let lb = if a.is_ok() && b.is_ok() { lb } else { 0 };
        w.lookback = lb as u32;
        w.head_len = lb as u32;
    }
    w.marked = pos + 1;
}

/// The first 16 bytes at `buf`, and as two little-endian words; `None` when unreadable (a
/// short write's trailing bytes are only compared within its length).
#[inline(always)]
fn first_bytes(buf: u64) -> Option<([u8; 16], [u64; 2])> {
    let mut b = [0u8; 16];
    // SAFETY: faults safely.
    unsafe { bpf_probe_read_user_buf(buf as *const u8, &mut b) }.ok()?;
    Some((b, words_of(&b)))
}

#[inline(always)]
fn words_of(b: &[u8; 16]) -> [u64; 2] {
    [
        u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]),
        u64::from_le_bytes([b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]]),
    ]
}

/// The 16 bytes of the tail ring from stream position `pos` (the write just copied there;
/// past its length, older bytes, never compared).
#[inline(always)]
fn tail_bytes(w: &LastWordsRecord, pos: u64) -> [u8; 16] {
    let at = masked(pos as usize, WORDS_TAIL - 1);
    let mut b = [0u8; 16];
    for (i, d) in b.iter_mut().enumerate() {
        // SAFETY: the index is masked into the tail.
        *d = unsafe { *w.tail.as_ptr().add(masked(at + i, WORDS_TAIL - 1)) };
    }
    b
}

#[inline(always)]
fn matches(m: &Marker, words: &[u64; 2], n: usize) -> bool {
    m.len <= n && words[0] & m.masks[0] == m.words[0] && words[1] & m.masks[1] == m.words[1]
}

/// The write at `buf` (at least 16 bytes long) begins with `m`.
#[inline(always)]
fn begins(buf: u64, m: &Marker) -> bool {
    first_bytes(buf).is_some_and(|(_, w)| matches(m, &w, 16))
}

/// The write at stream position `pos`, `n` bytes, already in the tail, begins with one of
/// [`MARKERS`], or a Go signal dump's `SIGSEGV: `.
#[inline(always)]
fn starts_dying_words(w: &LastWordsRecord, pos: u64, n: usize) -> bool {
    // Most lines (a timestamp, `{`, `[`) begin with no marker's first byte: one load of
    // the tail and a bit test, not the marker table.
    // SAFETY: the index is masked into the tail.
    let first = unsafe { *w.tail.as_ptr().add(masked(pos as usize, WORDS_TAIL - 1)) };
    if FIRST_BYTES[(first >> 6) as usize & 3] & (1 << (first & 63)) == 0 {
        return false;
    }
    let b = tail_bytes(w, pos);
    let words = words_of(&b);
    for m in MARKERS.iter() {
        if matches(m, &words, n) {
            return true;
        }
    }
    // `SIGSEGV: segmentation violation`, `SIGABRT: abort`: SIG, capitals, `: `.
    if n >= 6 && b[..3] == *b"SIG" {
        for i in 3..12 {
            if b[i] == b':' {
                return i > 3 && b[i + 1] == b' ';
            }
            if !b[i].is_ascii_uppercase() {
                return false;
            }
        }
    }
    false
}
