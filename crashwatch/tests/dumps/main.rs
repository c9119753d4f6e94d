//! The agent as the kernel's core handler (`run --dumps`), on this host's kernel (the
//! coredump socket on Linux 6.16+, the pipe helper before: the VMs): every thread of a native crash in its report, each
//! stack named as gdb names it; a deadlock's two lock holders; a dump past its timeout cut
//! and the process let go; an agent killed mid-dump holding nothing, its crash reported by
//! the next agent; the previous `core_pattern` back at the stop, and another tool's change
//! left alone; whole cores kept and debugged ([`cores`]); a CPython's frames among the
//! native ones ([`python`]). Each test sets `core_pattern` through the agent and puts the
//! original back even when it fails ([`Pattern`]); they run one at a time. Needs root, gcc
//! and gdb.
#[path = "../common/mod.rs"]
mod common;
mod cores;
mod minidump;
mod python;
mod sentry;

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::Mutex,
    time::Duration,
};

use common::{Agent, Crasher, Setup};
use serde_json::Value;

const CORE_PATTERN: &str = "/proc/sys/kernel/core_pattern";

/// One test at a time holds the host's core_pattern.
static ONE: Mutex<()> = Mutex::new(());

/// The core_pattern before the test, written back when the test ends, passed or not.
pub(crate) struct Pattern {
    before: String,
    _one: std::sync::MutexGuard<'static, ()>,
}

impl Pattern {
    pub(crate) fn hold() -> Pattern {
        let one = ONE.lock().unwrap_or_else(|e| e.into_inner());
        Pattern {
            before: now(),
            _one: one,
        }
    }
}

impl Drop for Pattern {
    fn drop(&mut self) {
        let _ = std::fs::write(CORE_PATTERN, &self.before);
    }
}

pub(crate) fn now() -> String {
    std::fs::read_to_string(CORE_PATTERN)
        .unwrap()
        .trim_end_matches('\n')
        .to_string()
}

/// The pattern the agent sets for `sock` on this kernel: the request protocol from 6.17, the
/// plain socket on 6.16, the pipe helper before.
fn is_ours(pattern: &str, sock: &str) -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut v = release
        .trim()
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    match (v.next().unwrap_or(0), v.next().unwrap_or(0)) {
        r if r >= (6, 17) => pattern == format!("@@{sock}"),
        (6, 16) => pattern == format!("@{sock}"),
        _ => pattern.starts_with('|') && pattern.contains(&format!(" core-helper -s {sock} ")),
    }
}

pub(crate) fn socket(tag: &str) -> String {
    format!("/run/crashwatch-test/{tag}-{}.sock", std::process::id())
}

/// threads.c built here, or prebuilt where no compiler is (`CRASHWATCH_DUMP_PROGRAM`: the VMs).
pub(crate) fn program() -> &'static Path {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("CRASHWATCH_DUMP_PROGRAM") {
            return PathBuf::from(p);
        }
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/dumps/threads.c");
        let out = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("dump-threads-{}", std::process::id()));
        let st = Command::new("gcc")
            .args(["-O1", "-g", "-pthread", "-o"])
            .arg(&out)
            .arg(&src)
            .status()
            .expect("running gcc (scripts/setup.sh installs it)");
        assert!(st.success());
        out
    })
}

/// The program run to its end with `args`.
pub(crate) fn run(args: &[&str]) -> Crasher {
    let mut cmd = Command::new(program());
    cmd.args(args).stdout(std::process::Stdio::piped());
    Crasher::finish(common::spawn(&mut cmd))
}

pub(crate) fn dumping_agent(tag: &str, extra: &[&str]) -> Agent {
    let sock = socket(tag);
    let mut args = vec!["--dumps", "--dump-socket", &sock];
    args.extend_from_slice(extra);
    let a = Agent::start(&args);
    a.wait_log("dumps: the kernel hands cores to");
    a
}

pub(crate) fn functions(stack: &Value) -> Vec<String> {
    stack
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["function"].as_str().unwrap_or("?").to_string())
        .collect()
}

fn thread<'a>(r: &'a Value, name: &str) -> &'a Value {
    r["threads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == name)
        .unwrap_or_else(|| panic!("no thread {name:?} in {:#}", r["threads"]))
}

/// gdb's `thread apply all bt` of the program run to its crash: each thread's name and its
/// frames' functions, innermost first.
fn gdb_threads(args: &[&str]) -> Vec<(String, Vec<String>)> {
    let out = Command::new("gdb")
        .args(["-nx", "-batch", "-ex", "set backtrace past-main on"])
        .args(["-ex", "run", "-ex", "thread apply all bt", "--args"])
        .arg(program())
        .args(args)
        .output()
        .expect("running gdb (scripts/setup.sh installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut threads: Vec<(String, Vec<String>)> = Vec::new();
    for l in text.lines() {
        if l.starts_with("Thread ") && l.contains("(LWP ") {
            // Thread 3 (Thread 0x7ffff75cf6c0 (LWP 30296) "pipe-reader"):
            let name = l.rsplit('"').nth(1).unwrap_or("?").to_string();
            threads.push((name, Vec::new()));
        } else if let (Some(t), Some(rest)) = (threads.last_mut(), l.strip_prefix('#')) {
            let rest = rest.split_once(' ').map_or("", |r| r.1).trim_start();
            let rest = match rest.split_once(" in ") {
                Some((addr, r)) if addr.starts_with("0x") => r,
                _ => rest,
            };
            t.1.push(rest.split(" (").next().unwrap_or("?").trim().to_string());
        }
    }
    assert!(!threads.is_empty(), "gdb printed no threads:\n{text}");
    threads
}

/// The report's frames are gdb's, in gdb's order, less the frames gdb makes up for tail
/// calls (a `jmp` leaves no frame on the stack; gdb shows one from DWARF call-site
/// information): every gdb frame in the program's own code must be there.
fn assert_agrees_with_gdb(name: &str, ours: &[String], gdb: &[String], own: &[&str]) {
    let mut at = 0;
    for f in ours {
        match gdb[at..].iter().position(|g| g == f) {
            Some(k) => at += k + 1,
            None => panic!("thread {name}: {f} is not in gdb's stack after frame {at}\nours: {ours:?}\ngdb:  {gdb:?}"),
        }
    }
    for g in gdb.iter().filter(|g| own.contains(&g.as_str())) {
        assert!(
            ours.contains(g),
            "thread {name}: gdb's {g} is missing\nours: {ours:?}\ngdb:  {gdb:?}"
        );
    }
}

pub(crate) const OWN: &[&str] = &[
    "crash_here",
    "crash_after_the_others",
    "park_on_cond",
    "park_on_pipe",
    "park_in_sleep",
    "park_on_mutex",
    "park_in_pause",
    "spin_forever",
    "worker",
    "main",
];

#[test]
fn every_thread_of_a_native_crash_is_in_its_report_named_as_gdb_names_it() {
    let _p = Pattern::hold();
    let state = common::state_dir("dumps-threads");
    let a = dumping_agent("threads", &["--state-dir", state.to_str().unwrap()]);
    let c = run(&["threads"]);
    assert_eq!(c.signal, Some(11));
    let r = a.report_for(c.pid);
    let threads = r["threads"].as_array().expect("threads in the report");
    assert_eq!(
        threads.len() as u64,
        c.fact("threads"),
        "{:#}",
        r["threads"]
    );
    assert!(r["dump"]["bytes"].as_u64().unwrap() > 0);
    assert_eq!(r["dump"]["cut"], Value::Null, "{:#}", r["dump"]);
    assert_eq!(r["exit"]["core_dumped"], true);
    // The crashed thread first, agreeing with the stack the kernel copied at the signal.
    let first = &threads[0];
    assert_eq!(
        (first["name"].as_str(), first["crashed"].as_bool()),
        (Some("crasher"), Some(true))
    );
    assert_eq!(first["tid"], r["tid"]);
    assert_eq!(functions(&first["stack"]), functions(&r["stack"]));
    assert_eq!(first["registers"]["ip"], r["signal"]["registers"]["ip"]);
    // Each thread where it was parked, in a state that says how.
    let expect = [
        ("cond-waiter", "park_on_cond", "in syscall futex"),
        ("pipe-reader", "park_on_pipe", "in syscall read"),
        ("sleeper", "park_in_sleep", "in syscall clock_nanosleep"),
        ("lock-waiter", "park_on_mutex", "in syscall futex"),
        ("pauser", "park_in_pause", "in syscall pause"),
        ("spinner", "spin_forever", "running"),
    ];
    for (name, func, state) in expect {
        let t = thread(&r, name);
        assert_eq!(t["state"], state, "{name}: {t:#}");
        assert_eq!(t["crashed"], false);
        let f = functions(&t["stack"]);
        assert!(
            f.contains(&func.to_string()) && f.contains(&"worker".to_string()),
            "{name}: {f:?}"
        );
        for frame in t["stack"].as_array().unwrap() {
            assert!(
                frame["function"].is_string(),
                "{name}: unnamed frame {frame}"
            );
        }
    }
    let main = threads
        .iter()
        .find(|t| t["tid"] == c.pid)
        .expect("the main thread");
    assert!(
        functions(&main["stack"]).contains(&"main".to_string()),
        "{main:#}"
    );
    // The crash page shows each thread, collapsed.
    let at = a.metrics_addr().expect("the agent's listener");
    let cluster = r["cluster"]["id"].as_i64().unwrap();
    let (status, page) = common::http_get(&at, &format!("/cluster/{cluster}")).unwrap();
    assert!(status.contains("200"), "{status}");
    assert!(
        page.contains("Threads <span class=\"sub\">8 from the core dump"),
        "{page}"
    );
    assert_eq!(page.matches("<details class=\"thread\">").count(), 8);
    assert!(
        page.contains("lock-waiter <span class=\"sub\">tid "),
        "{page}"
    );
    // The minidump kept with it, written out by `crashwatch dump`, read by rust-minidump.
    let (_, body) = common::http_get(&at, &format!("/api/clusters/{cluster}")).unwrap();
    let detail: Value = serde_json::from_str(&body).unwrap();
    let rid = detail["reports"][0]["id"].to_string();
    let out = state.join("out.dmp");
    let st = Command::new(common::agent_bin())
        .args(["dump", &rid, "-o", out.to_str().unwrap(), "--state-dir"])
        .arg(&state)
        .status()
        .unwrap();
    assert!(st.success());
    let kept = r["dump"]["minidump"].as_str().expect("a minidump kept");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(kept).unwrap().permissions().mode() & 0o777,
        0o600
    );
    minidump::assert_agrees(&out, &r);
    // gdb, running the same program to the same crash, agrees thread by thread.
    if std::env::var_os("CRASHWATCH_TEST_NO_GDB").is_some() {
        println!("gdb's thread-by-thread comparison not run: no gdb here (the VMs)");
        return;
    }
    for (name, gdb) in gdb_threads(&["threads"]) {
        assert_agrees_with_gdb(&name, &functions(&thread(&r, &name)["stack"]), &gdb, OWN);
    }
}

#[test]
fn a_deadlock_killed_with_sigabrt_shows_both_lock_holders() {
    let _p = Pattern::hold();
    let a = dumping_agent("deadlock", &[]);
    let c = run(&["deadlock"]);
    assert_eq!(c.signal, Some(6));
    let r = a.report_for(c.pid);
    assert_eq!(
        r["threads"].as_array().unwrap().len(),
        3,
        "{:#}",
        r["threads"]
    );
    for (name, waits_in) in [
        ("holder-a", "take_second_holding_first"),
        ("holder-b", "take_first_holding_second"),
    ] {
        let t = thread(&r, name);
        assert_eq!(t["state"], "in syscall futex");
        let f = functions(&t["stack"]);
        let lock = f.iter().position(|f| f.contains("pthread_mutex_lock"));
        let own = f.iter().position(|f| f == waits_in);
        assert!(
            matches!((lock, own), (Some(l), Some(o)) if l < o),
            "{name}: {f:?}"
        );
    }
    let main = functions(&r["threads"][0]["stack"]);
    assert!(
        main.contains(&"give_up_on_the_deadlock".to_string()),
        "{main:?}"
    );
}

#[test]
fn a_dump_past_its_timeout_is_cut_and_said_and_the_process_let_go() {
    let _p = Pattern::hold();
    let a = dumping_agent("timeout", &["--dump-timeout", "0.1"]);
    // A GiB of memory to stream: far more than a tenth of a second's worth.
    let c = run(&["big", "1024"]);
    assert_eq!(c.signal, Some(11));
    let r = a.report_for(c.pid);
    let cut = r["dump"]["cut"]
        .as_str()
        .unwrap_or_else(|| panic!("not cut: {:#}", r["dump"]));
    assert!(cut.starts_with("cut at --dump-timeout (0.1 s)"), "{cut}");
    assert!(
        r["dump"]["bytes"].as_u64().unwrap() < 1 << 30,
        "{:#}",
        r["dump"]
    );
    // Its crash is reported in full from the kernel's records all the same.
    assert_eq!(r["signal"]["name"], "SIGSEGV");
    assert_eq!(functions(&r["stack"])[0], "crash_here");
    // Counted where an operator watches, and said at the stop.
    // At least this one (another process on the host may crash meanwhile).
    assert!(a.metric("crashwatch_dumps_read_total") >= Some(1.0));
    assert_eq!(
        a.metric(r#"crashwatch_dumps_cut_total{reason="timeout"}"#),
        Some(1.0)
    );
    a.signal(libc::SIGTERM);
    a.wait_exit(Duration::from_secs(30));
    assert!(a.log().contains("1 cut at --dump-timeout"), "{}", a.log());
}

#[test]
fn the_previous_pattern_is_back_at_the_stop_and_another_tools_change_is_left_alone() {
    let _p = Pattern::hold();
    let previous = format!("/tmp/crashwatch-test-core-{}.%p", std::process::id());
    std::fs::write(CORE_PATTERN, &previous).unwrap();
    let a = dumping_agent("restore", &[]);
    assert!(is_ours(&now(), &socket("restore")), "{}", now());
    a.signal(libc::SIGTERM);
    assert!(a.wait_exit(Duration::from_secs(30)).is_some());
    assert_eq!(now(), previous, "restored at the stop");
    assert!(
        !Path::new(&socket("restore")).exists(),
        "the socket is removed"
    );

    let b = dumping_agent("other", &[]);
    std::fs::write(CORE_PATTERN, "core.other-tool").unwrap();
    b.wait_log("core_pattern is no longer");
    b.signal(libc::SIGTERM);
    assert!(b.wait_exit(Duration::from_secs(30)).is_some());
    assert_eq!(now(), "core.other-tool", "not fought over");
    assert!(
        b.log()
            .contains("was changed to \"core.other-tool\" while the agent ran"),
        "{}",
        b.log()
    );
}

#[test]
fn an_agent_killed_mid_dump_lets_the_process_go_and_the_next_agent_reports_it() {
    let _p = Pattern::hold();
    let previous = now();
    let pins = format!("/sys/fs/bpf/crashwatch-test-dumps-{}", std::process::id());
    let state = common::state_dir("dumps-kill");
    let (sock, state_s) = (socket("kill"), state.display().to_string());
    let args = [
        "--dumps",
        "--dump-socket",
        &sock,
        "--pin-dir",
        &pins,
        "--state-dir",
        &state_s,
    ];
    let stall = Setup {
        command: Some(Box::new(|c: &mut Command| {
            c.env("CRASHWATCH_FAILPOINT_DUMP_STALL", "dump-stalled");
        })),
        ..Setup::default()
    };
    let a = Agent::start_with(&args, stall);
    a.wait_log("dumps: the kernel hands cores to");
    // A copy named so that the failpoint holds its dump.
    let copy = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dump-stalled");
    std::fs::create_dir_all(copy.parent().unwrap()).unwrap();
    std::fs::copy(program(), &copy).unwrap();
    let child = common::spawn(
        Command::new(&copy)
            .arg("threads")
            .stdout(std::process::Stdio::piped()),
    );
    a.wait_log("stalled (failpoint)");
    a.signal(libc::SIGKILL);
    // The kernel sees the agent's end of the socket close: the process finishes dying.
    let c = Crasher::finish(child);
    assert_eq!(c.signal, Some(11));
    // The next agent finds the dead one's pattern in place and restores what it saved.
    let b = Agent::start(&args);
    let r = b.report_for(c.pid);
    assert_eq!(r["signal"]["name"], "SIGSEGV");
    assert_eq!(r["threads"], Value::Null, "no dump was filed");
    b.signal(libc::SIGTERM);
    assert!(b.wait_exit(Duration::from_secs(30)).is_some());
    assert_eq!(now(), previous);
    let _ = Command::new(common::agent_bin())
        .args(["uninstall-bpf", "--pin-dir", &pins])
        .output();
    let _ = std::fs::remove_dir_all(&state);
    let _ = std::fs::remove_file(&copy);
}

#[test]
fn the_pipe_helper_hands_cores_over_on_any_kernel_and_lets_go_without_an_agent() {
    let _p = Pattern::hold();
    let previous = now();
    let a = dumping_agent("pipe", &["--dump-via", "pipe", "--dump-timeout", "5"]);
    let pattern = now();
    assert!(
        pattern.starts_with('|')
            && pattern.ends_with(&format!(" core-helper -s {} -t 6 %P", socket("pipe"))),
        "{pattern}"
    );
    let c = run(&["threads"]);
    let r = a.report_for(c.pid);
    assert_eq!(
        r["threads"].as_array().unwrap().len() as u64,
        c.fact("threads")
    );
    assert_eq!(thread(&r, "lock-waiter")["state"], "in syscall futex");
    assert_eq!(functions(&r["threads"][0]["stack"]), functions(&r["stack"]));
    // The agent gone (killed: its pattern stays), the helper finds no one and the crash
    // ends at once, reported by no dump.
    a.signal(libc::SIGKILL);
    assert!(a.wait_exit(Duration::from_secs(30)).is_some());
    assert_eq!(now(), pattern);
    let c = run(&["threads"]);
    assert_eq!(c.signal, Some(11));
    std::fs::write(CORE_PATTERN, &previous).unwrap();
    let _ = std::fs::remove_file(socket("pipe"));
}

/// A crash inside a container (podman): its threads' ids are the host's (the core gives the
/// container's), and their stacks are named from the container's files, read through its
/// root.
#[test]
fn a_crash_in_a_container_is_dumped_and_named_through_its_root() {
    use common::podman::{Container, Image};
    let _p = Pattern::hold();
    let a = dumping_agent("container", &[]);
    let image = Image::of_program("dump-threads", program(), "/threads");
    let ctr = Container::run(&image, &["/threads", "threads"]);
    assert_eq!(ctr.wait(), "139", "killed by SIGSEGV");
    let r = a.report_for(ctr.pid);
    assert_eq!(r["exe"], "/threads");
    let threads = r["threads"].as_array().expect("threads in the report");
    assert_eq!(threads.len(), 8, "{:#}", r["threads"]);
    // The crashed thread's id is the host's, as the kernel's records give it.
    assert_eq!(threads[0]["tid"], r["tid"]);
    assert!(
        threads.iter().any(|t| t["tid"] == ctr.pid),
        "the main thread by its host id"
    );
    for name in ["cond-waiter", "lock-waiter", "spinner"] {
        let t = thread(&r, name);
        let own: Vec<&Value> = t["stack"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["module"] == "/threads")
            .collect();
        assert!(
            own.iter()
                .any(|f| f["function"] == "worker" && f["line"].is_u64()),
            "{name}: {:#}",
            t["stack"]
        );
    }
    let libc = r["dump"]["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["path"] == "/lib/x86_64-linux-gnu/libc.so.6")
        .expect("the container's libc among the images");
    assert!(libc["build_id"].is_string());
}
