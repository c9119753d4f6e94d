//! Records decode from the bytes the kernel sends, in their packed forms.
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

/// A last-words record as the kernel leaves it after `writes` (the stream `text`, each
/// write's first bytes at most, marked at `marked`): the ring, the head and the counters.
fn words_record(stream: &[u8], marked: Option<usize>) -> Vec<u8> {
    let mut r: Box<c::LastWordsRecord> = Box::new(unsafe { std::mem::zeroed() });
    r.hdr.kind = c::KIND_LAST_WORDS;
    r.hdr.pid = 5;
    for (i, b) in stream.iter().enumerate() {
        r.tail[i % c::WORDS_TAIL] = *b;
    }
    r.total = stream.len() as u64;
    if let Some(m) = marked {
        let lb = m.min(c::WORDS_LOOKBACK);
        let end = (m - lb + c::WORDS_HEAD).min(stream.len());
        let head = &stream[m - lb..end];
        r.head[..head.len()].copy_from_slice(head);
        r.head_len = head.len() as u32;
        r.lookback = lb as u32;
        r.marked = m as u64 + 1;
    }
    let len = c::WORDS_FIXED + c::WORDS_TAIL + r.head_len as usize;
    bytes_of(&*r)[..len].to_vec()
}

fn words(bytes: &[u8]) -> LastWords {
    match decode(bytes).unwrap() {
        Record::LastWords(w) => w,
        _ => panic!("not last words"),
    }
}

#[test]
fn last_words_put_head_and_tail_back_in_order() {
    // Short: all of it, once, though head and tail both hold it.
    let s = b"starting\npanic: boom\n\ngoroutine 1 [running]:\n".to_vec();
    let w = words(&words_record(&s, Some(9)));
    assert_eq!((w.text.as_slice(), w.truncated), (s.as_slice(), false));
    // Long: the head from 1 KiB before the mark, the tail's last 8 KiB, a marker between.
    let mut s: Vec<u8> = (0..40_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    s[5000..5007].copy_from_slice(b"panic: ");
    let w = words(&words_record(&s, Some(5000)));
    let head = &s[5000 - c::WORDS_LOOKBACK..5000 - c::WORDS_LOOKBACK + c::WORDS_HEAD];
    assert!(w.text.starts_with(head));
    assert!(w.text.ends_with(&s[s.len() - c::WORDS_TAIL..]));
    let gap = s.len() - c::WORDS_TAIL - (5000 - c::WORDS_LOOKBACK + c::WORDS_HEAD);
    let marker = format!("\n[... crashwatch: {gap} bytes not kept ...]\n");
    assert_eq!(w.text.len(), head.len() + marker.len() + c::WORDS_TAIL);
    assert!(w.truncated);
    // Nothing marked: the tail alone, in order across the ring's wrap.
    let w = words(&words_record(&s, None));
    assert_eq!(w.text.as_slice(), &s[s.len() - c::WORDS_TAIL..]);
    assert!(w.truncated && w.written == s.len() as u64);
}

#[test]
fn last_words_records_that_contradict_themselves_are_errors() {
    let s = b"panic: x\n".to_vec();
    let good = words_record(&s, Some(0));
    assert!(
        decode(&good[..c::WORDS_FIXED + 10]).is_err(),
        "cut inside the tail"
    );
    let mut r: Box<c::LastWordsRecord> = Box::new(unsafe { std::mem::zeroed() });
    r.hdr.kind = c::KIND_LAST_WORDS;
    r.total = 10;
    r.head_len = 5;
    r.lookback = 6;
    r.marked = 1;
    let b = bytes_of(&*r);
    assert!(decode(&b).is_err(), "a look-back longer than the head");
    r.lookback = 0;
    r.marked = 50;
    assert!(decode(&bytes_of(&*r)).is_err(), "marked past the end");
    r.marked = 1;
    r.head_len = c::WORDS_HEAD as u32 + 1;
    assert!(
        decode(&bytes_of(&*r)).is_err(),
        "a head longer than its room"
    );
}

/// Bytes the kernel could not read (a string constant's page not yet in memory) are zeroes
/// in the record: they are shown as unreadable and counted, never as NUL characters.
#[test]
fn unread_writes_are_marked_not_shown_as_zeroes() {
    let mut s = b"starting worker\nfatal: cannot continue\n".to_vec();
    s[..16].fill(0);
    let mut bytes = words_record(&s, None);
    let mut r: c::LastWordsRecord =
        unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const c::LastWordsRecord) };
    r.unread[3] = c::Unread {
        pos: 0,
        addr: 0x1000,
        len: 16,
        _pad: 0,
    };
    r.unread_n = 1;
    bytes[..c::WORDS_FIXED].copy_from_slice(&bytes_of(&r)[..c::WORDS_FIXED]);
    let w = words(&bytes);
    assert_eq!(
        String::from_utf8_lossy(&w.text),
        "[crashwatch: 16 bytes unreadable]fatal: cannot continue\n"
    );
    assert_eq!(w.unreadable, 16);
    // More failures than places: every NUL may be one.
    r.unread[3].len = 0;
    r.unread_n = 0;
    r.unread_over = 1;
    bytes[..c::WORDS_FIXED].copy_from_slice(&bytes_of(&r)[..c::WORDS_FIXED]);
    let w = words(&bytes);
    assert!(
        !w.text.contains(&0),
        "{:?}",
        String::from_utf8_lossy(&w.text)
    );
    assert_eq!(w.unreadable, 16);
}
