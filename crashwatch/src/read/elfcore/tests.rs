//! The reader against cores built here to the kernel's layout, whole and broken. The real
//! kernel's cores are read in tests/dumps.rs.
use super::*;

/// A thread for [`core`]: its tid, signal and stack pointer.
struct T(u32, u16, u64);

/// The `NT_SIGINFO` note of a fault at `addr`.
fn siginfo(addr: u64) -> Vec<u8> {
    let mut n = Vec::new();
    n.extend_from_slice(&5u32.to_le_bytes());
    n.extend_from_slice(&128u32.to_le_bytes());
    n.extend_from_slice(&NT_SIGINFO.to_le_bytes());
    n.extend_from_slice(b"CORE\0\0\0\0");
    let mut d = vec![0u8; 128];
    d[..4].copy_from_slice(&11u32.to_le_bytes());
    d[8..12].copy_from_slice(&1i32.to_le_bytes());
    d[16..24].copy_from_slice(&addr.to_le_bytes());
    n.extend(d);
    n
}

/// An x86_64 core as binfmt_elf writes one: header, program headers, one note segment, then
/// each memory segment page-aligned. `mem` is (address, bytes) per segment.
fn core(threads: &[T], mem: &[(u64, Vec<u8>)]) -> Vec<u8> {
    core_with(threads, mem, &[])
}

fn core_with(threads: &[T], mem: &[(u64, Vec<u8>)], more_notes: &[u8]) -> Vec<u8> {
    let mut notes = more_notes.to_vec();
    for t in threads {
        let mut d = vec![0u8; PRSTATUS_SIZE];
        d[12..14].copy_from_slice(&t.1.to_le_bytes());
        d[32..36].copy_from_slice(&t.0.to_le_bytes());
        let sp = PR_REG + 8 * crate::model::dump::REG_SP;
        d[sp..sp + 8].copy_from_slice(&t.2.to_le_bytes());
        notes.extend_from_slice(&5u32.to_le_bytes());
        notes.extend_from_slice(&(PRSTATUS_SIZE as u32).to_le_bytes());
        notes.extend_from_slice(&NT_PRSTATUS.to_le_bytes());
        notes.extend_from_slice(b"CORE\0\0\0\0");
        notes.extend_from_slice(&d);
    }
    let phnum = 1 + mem.len();
    let notes_at = (EHDR + PHDR * phnum) as u64;
    let mut data_at = (notes_at + notes.len() as u64).next_multiple_of(4096);
    let mut out = vec![0u8; EHDR];
    out[..6].copy_from_slice(b"\x7fELF\x02\x01");
    out[16..18].copy_from_slice(&4u16.to_le_bytes());
    out[18..20].copy_from_slice(&62u16.to_le_bytes());
    out[32..40].copy_from_slice(&(EHDR as u64).to_le_bytes());
    out[54..56].copy_from_slice(&(PHDR as u16).to_le_bytes());
    out[56..58].copy_from_slice(&(phnum as u16).to_le_bytes());
    let ph = |kind: u32, off: u64, vaddr: u64, size: u64| {
        let mut p = vec![0u8; PHDR];
        p[..4].copy_from_slice(&kind.to_le_bytes());
        p[8..16].copy_from_slice(&off.to_le_bytes());
        p[16..24].copy_from_slice(&vaddr.to_le_bytes());
        p[32..40].copy_from_slice(&size.to_le_bytes());
        p[40..48].copy_from_slice(&size.to_le_bytes());
        p
    };
    out.extend(ph(PT_NOTE, notes_at, 0, notes.len() as u64));
    let mut offsets = Vec::new();
    for (addr, bytes) in mem {
        out.extend(ph(PT_LOAD, data_at, *addr, bytes.len() as u64));
        offsets.push(data_at);
        data_at = (data_at + bytes.len() as u64).next_multiple_of(4096);
    }
    out.extend_from_slice(&notes);
    for ((_, bytes), off) in mem.iter().zip(offsets) {
        out.resize(off as usize, 0);
        out.extend_from_slice(bytes);
    }
    out
}

fn counting(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i / 8) as u8).collect()
}

#[test]
fn each_threads_stack_is_kept_from_its_stack_pointer_up() {
    let stack_a = counting(8192);
    let stack_b = counting(3 * 4096);
    let bytes = core(
        &[T(7, 11, 0x10_0100), T(8, 0, 0x20_0000 + 4096)],
        &[(0x10_0000, stack_a.clone()), (0x20_0000, stack_b.clone())],
    );
    let c = read(&mut bytes.as_slice(), &Limits::default());
    assert_eq!(c.cut, Vec::<String>::new());
    assert_eq!(c.bytes, bytes.len() as u64);
    assert_eq!((c.threads.len(), c.segments), (2, 2));
    let (a, b) = (&c.threads[0], &c.threads[1]);
    assert_eq!((a.tid, a.signal, b.tid, b.signal), (7, 11, 8, 0));
    let sa = a.stack.as_ref().unwrap();
    assert_eq!((sa.sp, &sa.data[..]), (0x10_0100, &stack_a[0x100..]));
    let sb = b.stack.as_ref().unwrap();
    assert_eq!(sb.data, stack_b[4096..]);
    assert_eq!(
        sb.word(0x20_0000 + 4096 + 16),
        Some(u64::from_le_bytes([2; 8]))
    );
}

#[test]
fn stacks_past_their_bounds_are_cut_and_said() {
    let bytes = core(
        &[T(1, 6, 0x10_0000), T(2, 0, 0x20_0000), T(3, 0, 0x30_0000)],
        &[
            (0x10_0000, counting(16384)),
            (0x20_0000, counting(16384)),
            (0x30_0000, counting(16384)),
        ],
    );
    let lim = Limits {
        stack_per_thread: 8192,
        stack_total: 16384,
        ..Limits::default()
    };
    let c = read(&mut bytes.as_slice(), &lim);
    let kept: Vec<usize> = c
        .threads
        .iter()
        .map(|t| t.stack.as_ref().map_or(0, |s| s.data.len()))
        .collect();
    assert_eq!(kept, [8192, 8192, 0]);
    assert_eq!(c.cut.len(), 1, "{:?}", c.cut);
    assert!(
        c.cut[0].contains("1 threads' stacks not kept"),
        "{:?}",
        c.cut
    );
    assert_eq!(c.bytes, bytes.len() as u64, "the rest is still read");
}

#[test]
fn threads_past_the_limit_are_counted_not_read() {
    let ts: Vec<T> = (1..=5).map(|i| T(i, 0, 0)).collect();
    let bytes = core(&ts, &[]);
    let lim = Limits {
        threads: 3,
        ..Limits::default()
    };
    let c = read(&mut bytes.as_slice(), &lim);
    assert_eq!(c.threads.len(), 3);
    assert_eq!(c.cut, ["2 threads past the first 3 not read"]);
}

#[test]
fn a_broken_stream_gives_what_was_read_and_why_it_stopped() {
    let whole = core(&[T(9, 11, 0x10_0000)], &[(0x10_0000, counting(8192))]);
    // Cut inside the memory: the thread is known, its stack is not.
    let cut = &whole[..whole.len() - 100];
    let c = read(&mut &cut[..], &Limits::default());
    assert_eq!(c.threads.len(), 1);
    assert!(c.threads[0].stack.is_none());
    assert!(
        c.cut[0].starts_with("the stream ended in memory"),
        "{:?}",
        c.cut
    );
    // Not a core at all, and one with a huge segment count: refused, nothing allocated.
    let c = read(&mut &[b'x'; 100][..], &Limits::default());
    assert_eq!(c.cut, ["not a 64-bit little-endian ELF core"]);
    let mut xnum = whole.clone();
    xnum[56..58].copy_from_slice(&PN_XNUM.to_le_bytes());
    let c = read(&mut xnum.as_slice(), &Limits::default());
    assert!(c.cut[0].starts_with("more than 65534 segments"));
    // A note whose size runs past its segment.
    let mut bad = whole;
    let notes_at = EHDR + 2 * PHDR;
    bad[notes_at + 4..notes_at + 8].copy_from_slice(&u32::MAX.to_le_bytes());
    let c = read(&mut bad.as_slice(), &Limits::default());
    assert_eq!(c.threads.len(), 0);
    assert_eq!(c.cut, ["a note runs past its segment"]);
}

#[test]
fn the_fault_and_the_memory_around_it_are_kept() {
    let data = counting(8192);
    let bytes = core_with(
        &[T(7, 11, 0x10_0100)],
        &[(0x10_0000, data.clone())],
        &siginfo(0x10_0010),
    );
    let c = read(&mut bytes.as_slice(), &Limits::default());
    assert_eq!(c.cut, Vec::<String>::new());
    assert_eq!(
        c.fault,
        Some(Fault {
            signal: 11,
            code: 1,
            addr: 0x10_0010
        })
    );
    // Cut at the segment's start below, 256 bytes above.
    let (at, around) = c.around_fault.unwrap();
    assert_eq!((at, around.as_slice()), (0x10_0000, &data[..0x110]));
    // A fault at an address no segment holds (a null pointer) keeps no memory.
    let bytes = core_with(&[T(7, 11, 0x10_0100)], &[(0x10_0000, data)], &siginfo(0));
    let c = read(&mut bytes.as_slice(), &Limits::default());
    assert_eq!((c.fault.unwrap().addr, c.around_fault), (0, None));
}
