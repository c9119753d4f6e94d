//! The assembler's rules, record by record: one crash per dying process.
use super::*;
use crate::kernel::decode::Exec;

fn head(pid: u32) -> Head {
    Head {
        pid,
        tid: pid,
        ppid: 1,
        start_ns: 7,
        ktime_ns: 100,
        comm: "t".into(),
        ..Default::default()
    }
}

fn sig(pid: u32, tid: u32, sig: i32, handled: bool) -> Record {
    Record::Signal(Signal {
        head: Head { tid, ..head(pid) },
        sig,
        code: 1,
        handled,
        fields: 0,
        start_code: 0,
        regs: vec![],
        stack: vec![],
        args: vec![],
        args_truncated: false,
        maps: None,
        captured: None,
    })
}

fn exit(pid: u32, status: u32) -> Record {
    Record::Exit(Exit {
        head: head(pid),
        status,
        asked: None,
    })
}

#[test]
fn one_report_per_process_however_many_records() {
    let mut a = Assembler::new(false, 64);
    assert!(a.push(sig(5, 6, 11, false)).is_none());
    assert!(a.push(sig(5, 5, 9, false)).is_none());
    let c = a.push(exit(5, 11 | 0x80)).expect("a crash");
    assert_eq!(
        (c.kind, c.signal.as_ref().unwrap().head.tid),
        (Kind::Signal, 6)
    );
    assert!(
        a.push(exit(5, 11)).is_none(),
        "second exit record of the same process"
    );
    assert!(a.push(sig(5, 5, 11, false)).is_none());
}

fn exec(pid: u32, ino: u64) -> Record {
    Record::Exec(Exec {
        head: head(pid),
        file: FileId {
            ino,
            ..FileId::default()
        },
        filename: "./bin/crash".into(),
        args: vec![],
        args_truncated: false,
        cgroup: "/".into(),
        exe: None,
        root: None,
        mnt_ns: 0,
        path: None,
        at_exec: true,
    })
}

/// An identity read at a crash sign (no exec was sent): it names the process and leaves
/// the open case alone, where an exec would close it.
#[test]
fn an_identity_at_a_crash_sign_names_the_process_and_keeps_its_case() {
    let mut a = Assembler::new(false, 64);
    assert!(a.push(sig(7, 7, 11, false)).is_none());
    let Record::Exec(mut id) = exec(7, 42) else {
        unreachable!()
    };
    id.at_exec = false;
    id.filename.clear();
    id.exe = Some("/usr/bin/crash".into());
    assert!(a.push(Record::Exec(id)).is_none());
    let c = a
        .push(exit(7, 11))
        .expect("the signal's case survives the identity");
    assert_eq!(c.kind, Kind::Signal);
    let p = c.proc.expect("named by the identity");
    assert_eq!(
        (p.exe.as_deref(), p.file.map(|f| f.ino)),
        (Some("/usr/bin/crash"), Some(42))
    );
}

#[test]
fn handled_fault_then_exit_2_is_a_signal_crash_of_a_go_binary() {
    let mut a = Assembler::new(false, 64);
    a.push(exec(8, 80));
    a.push(sig(8, 9, 11, true));
    let c = a.push_with(exit(8, 2 << 8), &|f| f.ino == 80).unwrap();
    assert_eq!((c.kind, c.status >> 8), (Kind::Signal, 2));
}

#[test]
fn a_handled_fault_is_not_blamed_for_an_exit_that_does_not_say_so() {
    // A JVM: a fault at start-up, an uncaught exception much later, exit 1.
    let mut a = Assembler::new(true, 64);
    a.push(exec(9, 90));
    a.push(sig(9, 9, 11, true));
    let c = a.push_with(exit(9, 1 << 8), &|_| false).unwrap();
    assert_eq!(c.kind, Kind::Exit);
    assert!(c.signal.is_none());
    // Exit 2 of a binary that is not Go says nothing either.
    a.push(sig(10, 10, 11, true));
    assert!(Assembler::new(false, 64)
        .push_with(exit(10, 2 << 8), &|_| false)
        .is_none());
    // Dying of the signal does.
    a.push(sig(11, 11, 6, true));
    assert_eq!(a.push(exit(11, 6)).unwrap().kind, Kind::Signal);
    // So does the runtime naming it (a JVM's fatal error banner).
    a.push(sig(12, 12, 11, true));
    a.push(out(12, b"#  SIGSEGV (0xb) at pc=0x00007f, pid=12, tid=13"));
    let c = a.push(exit(12, 1 << 8)).unwrap();
    assert_eq!((c.kind, c.signal.is_some()), (Kind::Signal, true));
}

#[test]
fn exe_is_absolute_or_absent() {
    let mut a = Assembler::new(true, 64);
    a.push(exec(13, 1));
    let c = a.push(exit(13, 1 << 8)).unwrap();
    assert_eq!(c.proc.unwrap().exe, None, "./bin/crash is nobody's exe");
}

#[test]
fn exits_reported_only_when_asked() {
    let mut a = Assembler::new(false, 64);
    assert!(a.push(exit(3, 1 << 8)).is_none());
    assert!(a.push(exit(4, 0)).is_none());
    let mut a = Assembler::new(true, 64);
    assert_eq!(a.push(exit(3, 1 << 8)).unwrap().kind, Kind::Exit);
    assert!(a.push(exit(4, 0)).is_none());
}

#[test]
fn oom_mark_makes_an_oom_kill() {
    let mut a = Assembler::new(false, 64);
    a.push(Record::Oom(crate::kernel::decode::Oom {
        head: head(11),
        ..Default::default()
    }));
    a.push(sig(11, 11, 9, false));
    assert_eq!(a.push(exit(11, 9)).unwrap().kind, Kind::OomKill);
}

fn go(pid: u32, what: GoWhat, text: &str) -> Record {
    Record::Go(Go {
        head: head(pid),
        what,
        text: Some(text.into()),
        type_ptr: 0,
        start_code: 0,
        stack: vec![],
        caller: 0,
        bp: 0,
        regs: vec![],
        maps: None,
        captured: None,
    })
}

fn out(pid: u32, data: &[u8]) -> Record {
    Record::GoOutput(crate::kernel::decode::GoOutput {
        head: head(pid),
        data: data.to_vec(),
        cut: false,
    })
}

#[test]
fn go_panic_with_its_signal_and_output_is_one_report() {
    let mut a = Assembler::new(false, 64);
    a.push(exec(20, 200));
    a.push(sig(20, 21, 11, true));
    a.push(go(20, GoWhat::Panic, "runtime error"));
    a.push(go(20, GoWhat::Fatal, "panic during panic"));
    a.push(out(20, b"panic: runtime error\n"));
    let c = a.push_with(exit(20, 2 << 8), &|f| f.ino == 200).unwrap();
    assert_eq!(c.kind, Kind::GoPanic);
    assert_eq!(c.go.unwrap().text.as_deref(), Some("runtime error"));
    assert!(c.signal.is_some());
    assert_eq!(c.output.head, b"panic: runtime error\n");
}

#[test]
fn threads_dying_at_once_each_keep_their_stack() {
    // Two goroutines find the map written concurrently: both threads' stack records
    // arrive before either fatal-path record.
    let on = |tid: u32, ktime_ns: u64| Head {
        tid,
        ktime_ns,
        ..head(50)
    };
    let stack = |tid, t, sp| {
        Record::Stack(crate::kernel::decode::Stack {
            head: on(tid, t),
            sp,
            ..Default::default()
        })
    };
    let fatal = |tid, t| match go(50, GoWhat::Fatal, "concurrent map writes") {
        Record::Go(g) => Record::Go(Go {
            head: on(tid, t),
            ..g
        }),
        _ => unreachable!(),
    };
    let mut a = Assembler::new(false, 64);
    a.push(stack(51, 1000, 0x51));
    a.push(stack(52, 1001, 0x52));
    a.push(fatal(51, 1000));
    a.push(fatal(52, 1001));
    let c = a.push(exit(50, 2 << 8)).unwrap();
    assert_eq!(c.go.unwrap().captured.map(|st| st.sp), Some(0x51));
}

#[test]
fn output_keeps_head_and_tail() {
    let mut o = Output::default();
    for i in 0..100u8 {
        o.push(&[i; 3], 20);
    }
    assert_eq!(
        (o.head.len(), o.tail.len(), o.total, o.dropped()),
        (10, 10, 300, 280)
    );
    assert_eq!(o.head[..3], [0, 0, 0]);
    assert_eq!(*o.tail.back().unwrap(), 99);
}

#[test]
fn printing_without_dying_is_not_a_crash() {
    let mut a = Assembler::new(false, 64);
    a.push(out(30, b"gc 1 @0.01s"));
    assert!(a.push(exit(30, 0)).is_none());
}

#[test]
fn a_dying_go_process_is_kept_however_long_it_prints() {
    let mut a = Assembler::new(false, 64);
    a.push(go(40, GoWhat::Fatal, "stack overflow"));
    assert_eq!(a.expire(100 + 300_000_000_000, 30_000_000_000, |_| true), 0);
    assert_eq!(a.push(exit(40, 2 << 8)).unwrap().kind, Kind::GoFatal);
    // ... but not once the process is gone.
    a.push(go(41, GoWhat::Fatal, "stack overflow"));
    assert_eq!(
        a.expire(100 + 300_000_000_000, 30_000_000_000, |pid| pid != 41),
        1
    );
}

#[test]
fn surviving_a_signal_leaves_nothing_after_expiry() {
    let mut a = Assembler::new(false, 64);
    a.push(sig(12, 12, 15, false));
    assert_eq!(a.expire(100 + 31_000_000_000, 30_000_000_000, |_| true), 1);
    assert!(a.push(exit(12, 0)).is_none());
}

fn words(pid: u32, text: &str) -> Record {
    Record::LastWords(LastWords {
        head: head(pid),
        text: text.as_bytes().to_vec(),
        written: text.len() as u64,
        truncated: false,
        unreadable: 0,
    })
}

/// docs/report.md, "What is a crash": a death by signal is told by that signal.
#[test]
fn deaths_someone_asked_for_are_terminations() {
    let mut a = Assembler::new(true, 64);
    for (pid, status) in [
        (20, 15),
        (21, 2),
        (22, 1),
        (23, 13),
        (24, 9),
        (25, 3 | 0x80),
    ] {
        let c = a.push(exit(pid, status)).expect("a termination");
        assert_eq!(c.kind, Kind::Termination, "status {status:#x}");
    }
    for (pid, status) in [
        (30, 11),
        (31, 6 | 0x80),
        (32, 7),
        (33, 8),
        (34, 4),
        (35, 5),
        (36, 31),
    ] {
        assert_eq!(a.push(exit(pid, status)).unwrap().kind, Kind::Signal);
    }
    // A limit's kill is a crash when the kernel sent it, not when a process did.
    a.push(Record::Signal(match sig(40, 40, 24, false) {
        Record::Signal(s) => Signal { code: 0x80, ..s },
        _ => unreachable!(),
    }));
    assert_eq!(a.push(exit(40, 24 | 0x80)).unwrap().kind, Kind::Signal);
    a.push(Record::Signal(match sig(41, 41, 24, false) {
        Record::Signal(s) => Signal { code: 0, ..s },
        _ => unreachable!(),
    }));
    assert_eq!(a.push(exit(41, 24)).unwrap().kind, Kind::Termination);
}

/// A JVM faults on purpose (null checks); a pod's SIGKILL after that is no segfault, and a
/// SIGKILL after a handled SIGTERM says so.
#[test]
fn a_handled_fault_does_not_make_a_kill_a_crash() {
    let mut a = Assembler::new(false, 64);
    a.push(sig(50, 50, 11, true));
    let c = a
        .push(Record::Exit(Exit {
            head: Head {
                ktime_ns: 2_000_000_100,
                ..head(50)
            },
            status: 9,
            asked: Some((15, 100)),
        }))
        .unwrap();
    assert_eq!(c.kind, Kind::Termination);
    assert!(
        c.signal.is_none(),
        "the handled SIGSEGV is not what killed it"
    );
    assert_eq!(c.asked, Some((15, 2_000_000_000)));
    // A handled fault then abort(): the fault explains the crash.
    a.push(sig(51, 51, 11, true));
    let c = a.push(exit(51, 6)).unwrap();
    assert_eq!((c.kind, c.signal.unwrap().sig), (Kind::Signal, 11));
}

/// Go prints a goroutine dump for SIGQUIT and exits 2: asked for, not a fatal error; a
/// Python KeyboardInterrupt likewise. A fault in cgo code stays a crash.
#[test]
fn runtime_dumps_someone_asked_for_are_terminations() {
    let mut a = Assembler::new(false, 64);
    a.push(out(60, b"SIGQUIT: quit\nPC=0x4 m=0 sigcode=0\n\ngoroutine 1 [running]:\nmain.main()\n\t/x/main.go:9 +0x1d\n"));
    assert_eq!(a.push(exit(60, 2 << 8)).unwrap().kind, Kind::Termination);
    a.push(out(61, b"SIGSEGV: segmentation violation\nPC=0x4 m=0 sigcode=1\nsignal arrived during cgo execution\n\ngoroutine 1 [syscall]:\nmain.main()\n\t/x/main.go:9 +0x1d\n"));
    assert_eq!(a.push(exit(61, 2 << 8)).unwrap().kind, Kind::GoFatal);
    a.push(words(
        62,
        "Traceback (most recent call last):\n  File \"x.py\", line 1, in <module>\nKeyboardInterrupt\n",
    ));
    assert_eq!(a.push(exit(62, 1 << 8)).unwrap().kind, Kind::Termination);
    a.push(words(
        63,
        "Traceback (most recent call last):\n  File \"x.py\", line 1, in <module>\nValueError: bad\n",
    ));
    assert_eq!(a.push(exit(63, 1 << 8)).unwrap().kind, Kind::RuntimeError);
}
