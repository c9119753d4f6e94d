//! The crash matrix on the running kernel: real programs die, the real agent reports them.
//! Needs root (CI runs as root).
mod common;

use std::{os::unix::process::CommandExt, path::PathBuf, process::Stdio};

use common::{agent, hex, Agent, Crasher, MemCgroup};

#[test]
fn null_write_reports_the_address_written() {
    let a = agent();
    let c = Crasher::run("null");
    assert_eq!(c.signal, Some(11));
    let r = a.report_for(c.pid);
    assert_eq!(r["kind"], "signal");
    assert_eq!(r["tid"], c.pid);
    assert!(
        r["comm"].as_str().unwrap().starts_with("crasher"),
        "comm: {}",
        r["comm"]
    );
    assert_eq!(r["exe"].as_str(), common::crasher_bin().to_str());
    assert_eq!(r["cmdline"][1], "null");
    let s = &r["signal"];
    assert_eq!(
        (s["name"].as_str(), s["code_name"].as_str()),
        (Some("SIGSEGV"), Some("SEGV_MAPERR"))
    );
    assert_eq!(hex(&s["addr"]), c.fact("addr"));
    assert_eq!(s["handled"], false);
    assert_eq!(hex(&s["ip"]), hex(&s["registers"]["ip"]));
    assert_eq!(r["exit"]["signal"], 11);
    assert_eq!(
        r["stack"][0]["function"], "null_write",
        "stack: {:#}",
        r["stack"]
    );
    assert_eq!(r["stack"][1]["function"], "main");
    assert!(r["cgroup"].as_str().unwrap().starts_with('/'));
}

/// Fingerprint v1 on real crashes: two runs of one bug (other pids; other code addresses
/// under ASLR where the crasher is PIE, as on the host but not in the VMs) group; another
/// signal or another site does not.
#[test]
fn one_bug_has_one_fingerprint_and_others_differ() {
    let a = agent();
    let fp = |mode: &str| {
        let c = Crasher::run(mode);
        let r = a.report_for(c.pid);
        let v = r["fingerprint"].as_str().unwrap_or_default().to_string();
        assert!(
            v.starts_with("v1:") && v.len() == 19,
            "fingerprint {v:?} in {r:#}"
        );
        v
    };
    let first = fp("null");
    let second = fp("null");
    assert_eq!(first, second);
    let fpe = fp("fpe");
    let abort = fp("abort");
    assert_ne!(first, fpe);
    assert_ne!(first, abort);
    assert_ne!(fpe, abort);
}

#[test]
fn abort_reports_sigabrt_and_the_core_flag() {
    let a = agent();
    let dir = tempdir("abort");
    let mut cmd = Crasher::command("abort");
    cmd.current_dir(&dir);
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: libc::RLIM_INFINITY,
                rlim_max: libc::RLIM_INFINITY,
            };
            libc::setrlimit(libc::RLIMIT_CORE, &lim);
            Ok(())
        })
    };
    let c = Crasher::finish(cmd.spawn().unwrap());
    assert_eq!(c.signal, Some(6));
    let r = a.report_for(c.pid);
    assert_eq!(
        (r["kind"].as_str(), r["signal"]["name"].as_str()),
        (Some("signal"), Some("SIGABRT"))
    );
    assert_eq!(r["signal"]["code_name"], "SI_TKILL");
    assert_eq!(r["exit"]["signal"], 6);
    // What the kernel says in the wait status, the report says; a core file proves it.
    let wrote_core = std::fs::read_dir(&dir).unwrap().count() > 0;
    assert_eq!(
        r["exit"]["core_dumped"], wrote_core,
        "core file present: {wrote_core}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn divide_by_zero_reports_sigfpe_at_the_instruction() {
    let a = agent();
    let c = Crasher::run("fpe");
    assert_eq!(c.signal, Some(8));
    let r = a.report_for(c.pid);
    let s = &r["signal"];
    assert_eq!(
        (s["name"].as_str(), s["code_name"].as_str()),
        (Some("SIGFPE"), Some("FPE_INTDIV"))
    );
    assert_eq!(
        hex(&s["addr"]),
        hex(&s["ip"]),
        "SIGFPE's si_addr is the faulting instruction"
    );
    assert_eq!(r["stack"][0]["function"], "divide");
}

#[test]
fn truncated_mmap_reports_sigbus_at_the_page() {
    let a = agent();
    let c = Crasher::run("bus");
    assert_eq!(c.signal, Some(7));
    let r = a.report_for(c.pid);
    let s = &r["signal"];
    assert_eq!(
        (s["name"].as_str(), s["code_name"].as_str()),
        (Some("SIGBUS"), Some("BUS_ADRERR"))
    );
    assert_eq!(hex(&s["addr"]), c.fact("addr"));
}

/// `kill -9` is a termination someone asked for, not a crash: no report by default; one
/// `termination` report with `--report-terminations`, whose signal names the sender.
#[test]
fn kill_9_is_a_termination_reported_only_when_asked() {
    let a = agent();
    let t = Agent::start(&["--report-terminations", "KILL"]);
    let child = Crasher::spawn_started(Crasher::command("sleep"));
    let pid = child.id();
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let c = Crasher::finish(child);
    assert_eq!(c.signal, Some(9));
    let r = t.report_for(pid);
    assert_eq!(
        (r["kind"].as_str(), r["signal"]["name"].as_str()),
        (Some("termination"), Some("SIGKILL"))
    );
    assert_eq!(r["exit"]["signal"], 9);
    assert!(
        r.get("cluster").is_none(),
        "a termination is never clustered: {r:#}"
    );
    t.flush();
    assert_eq!(t.reports_for(pid).len(), 1);
    a.assert_no_report(pid);
}

/// Dying words written straight from a string constant whose page the program never
/// touched: the kernel's read at the write finds the page not in memory (and a failed read
/// leaves zeroes). They are read again where the memory is whole and the write has brought
/// the page in — at the fatal signal; at the death from Linux 6.16 — and what stays unread
/// is said so, never shown as NUL bytes. Written to /dev/null, which reads nothing, the page
/// may never come in at all.
#[test]
fn words_from_a_constant_not_yet_in_memory_are_read_or_said_unreadable() {
    let a = agent();
    let words = |mode: &str, stderr: Stdio| {
        let mut cmd = Crasher::command(mode);
        cmd.stderr(stderr);
        let c = Crasher::finish(cmd.spawn().unwrap());
        let r = a.report_for(c.pid);
        let w = &r["last_words"];
        let said = (
            w["text"].as_str().unwrap_or("?").to_string(),
            w["unreadable"].as_u64(),
        );
        (c, said, r)
    };
    let text = ("fatal: cannot continue\n".to_string(), Some(0));
    let unread = ("[crashwatch: 23 bytes unreadable]".to_string(), Some(23));
    let (c, said, r) = words("cold-abort", Stdio::piped());
    assert_eq!(c.signal, Some(6));
    assert_eq!(said, text, "{r:#}");
    let (c, said, r) = words("cold-exit", Stdio::piped());
    assert_eq!(c.code, Some(3));
    assert!(said == text || said == unread, "{r:#}");
    // Where the binary's pages are not in memory until touched (a disk's page cache here; in
    // the VMs the initramfs maps them at once) the words are unreadable, never zeroes.
    let (_, said, r) = words("cold-abort", Stdio::null());
    assert!(said == unread || said == text, "{r:#}");
}

/// A program started by a relative path (`./bin/app`) from a directory its parent is not
/// in, gone before the agent reads its exec (the agent is stopped meanwhile): the kernel's
/// own record of the file gives its absolute path, and the frames are named from it.
#[test]
fn a_relative_path_from_another_directory_is_named_whole() {
    let a = Agent::start(&[]);
    let dir = tempdir("relative");
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    let app = dir.join("bin/app");
    std::fs::copy(common::crasher_bin(), &app).unwrap();
    let app = std::fs::canonicalize(&app).unwrap();
    a.signal(libc::SIGSTOP);
    let mut cmd = Crasher::command_of(std::path::Path::new("./bin/app"), "null");
    cmd.current_dir(&dir);
    let c = Crasher::finish(common::spawn(&mut cmd));
    a.signal(libc::SIGCONT);
    assert_eq!(c.signal, Some(11));
    let r = a.report_for(c.pid);
    assert_eq!(r["exe"].as_str(), app.to_str(), "{r:#}");
    assert_eq!(r["stack"][0]["function"], "null_write", "{r:#}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn nonzero_exit_is_reported_only_when_asked() {
    let a = agent();
    let c = Crasher::run("exit3");
    assert_eq!(c.code, Some(3));
    let r = a.report_for(c.pid);
    assert_eq!(r["kind"], "exit");
    assert_eq!(r["exit"]["code"], 3);
    assert!(r.get("signal").is_none(), "an exit has no signal: {r:#}");

    // The default agent leaves plain exits alone (grep exiting 1 is not a crash).
    let plain = Agent::start(&[]);
    let c = Crasher::run("exit3");
    assert_eq!(c.code, Some(3));
    plain.assert_no_report(c.pid);
}

#[test]
fn handled_segv_that_survives_is_not_a_crash() {
    let a = agent();
    let c = Crasher::run("survive");
    assert_eq!((c.code, c.fact("handled_addr")), (Some(0), 16));
    a.assert_no_report(c.pid);
}

#[test]
fn second_thread_fault_is_one_report_with_that_tid() {
    let a = agent();
    let c = Crasher::run("thread");
    assert_eq!(c.signal, Some(11));
    let r = a.report_for(c.pid);
    assert_eq!(r["tid"], c.fact("fault_tid"));
    assert_ne!(r["tid"], c.pid);
    assert_eq!(r["stack"][0]["function"], "null_write");
    assert_eq!(r["stack"][1]["function"], "second_thread");
    a.flush();
    assert_eq!(
        a.reports_for(c.pid).len(),
        1,
        "one report, not one per thread"
    );
}

#[test]
fn oom_kill_in_a_memory_limited_cgroup() {
    let a = agent();
    let cg = MemCgroup::new(64 << 20);
    let mut cmd = Crasher::command("oom");
    let procs = cg.procs_file();
    unsafe {
        cmd.pre_exec(move || {
            std::fs::write(&procs, std::process::id().to_string())?;
            Ok(())
        })
    };
    let c = Crasher::finish(cmd.spawn().unwrap());
    assert_eq!(
        c.signal,
        Some(9),
        "the OOM killer SIGKILLs; crasher said {:?}",
        c.facts
    );
    let r = a.report_for(c.pid);
    assert_eq!(r["kind"], "oom_kill");
    assert_eq!(r["exit"]["signal"], 9);
    assert!(
        r["cgroup"].as_str().unwrap().ends_with(&cg.name),
        "cgroup {} vs {}",
        r["cgroup"],
        cg.name
    );
    // What people need of an OOM kill: which limit, how full, how much the victim held. The
    // group kill's cleared siginfo names no sender.
    let o = &r["oom"];
    assert_eq!(o["constraint"], "cgroup", "{r:#}");
    assert_eq!(o["cgroup"], r["cgroup"], "{r:#}");
    assert_eq!(o["limit_bytes"], 64 << 20, "{r:#}");
    let usage = o["usage_bytes"].as_u64().unwrap();
    assert!(usage > 60 << 20 && usage <= 64 << 20, "{r:#}");
    assert!(o["rss_anon_bytes"].as_u64().unwrap() > 32 << 20, "{r:#}");
    assert!(
        o["rss_file_bytes"].as_u64().is_some() && o["oom_score_adj"] == 0,
        "{r:#}"
    );
    assert!(r["signal"]["sender"].is_null(), "{r:#}");
}

/// The ring buffer alone holds a burst: the agent is stopped while 300 processes crash at
/// once, so nothing is drained until every record is in the kernel's buffer. Each crash is
/// reported whole, with its stack copy, and nothing is counted lost. (About 20 KiB a crash
/// with the default 16 KiB stack copy: the default 8 MiB ring holds some 400.)
#[test]
fn burst_of_300_crashes_fits_in_the_ring_while_the_agent_is_stopped() {
    let a = Agent::start(&[]);
    a.signal(libc::SIGSTOP);
    let children: Vec<_> = (0..300)
        .map(|_| Crasher::command("null").spawn().unwrap())
        .collect();
    let pids: Vec<u32> = children
        .into_iter()
        .map(|c| Crasher::finish(c).pid)
        .collect();
    a.signal(libc::SIGCONT);
    let missing = a.wait_for(|| {
        let missing: Vec<u32> = pids
            .iter()
            .copied()
            .filter(|&p| a.reports_for(p).is_empty())
            .collect();
        missing.is_empty().then_some(())
    });
    let got = pids
        .iter()
        .filter(|&&p| !a.reports_for(p).is_empty())
        .count();
    assert!(
        missing.is_some(),
        "{got} of 300 crashes reported; agent log:\n{}",
        a.log()
    );
    for &p in &pids {
        let r = a.report_for(p);
        assert_eq!(
            (r["kind"].as_str(), r["lost_before"].as_u64()),
            (Some("signal"), Some(0)),
            "agent log:\n{}",
            a.log()
        );
        assert_eq!(r["stack"][0]["function"], "null_write", "{r}");
    }
}

/// glibc's dying words, captured in the kernel from the process's writes to fd 2 (here
/// /dev/null): a failed assertion (one `write`) and a double free (one `writev`) stay
/// `signal` reports and gain the words and what they say.
#[test]
fn glibc_assert_and_double_free_report_their_last_words() {
    let a = agent();
    let c = Crasher::run("assert");
    assert_eq!(c.signal, Some(libc::SIGABRT));
    let r = a.report_for(c.pid);
    let e = &r["error"];
    assert_eq!(
        (
            r["kind"].as_str(),
            e["runtime"].as_str(),
            e["reason"].as_str()
        ),
        (Some("signal"), Some("glibc"), Some("assertion")),
        "{r}"
    );
    assert_eq!(e["message"], "argc < 2");
    assert_eq!(e["location"]["line"].as_u64(), Some(c.fact("line")));
    assert_eq!(e["location"]["function"], "main");
    let words = r["last_words"]["text"].as_str().unwrap();
    assert!(
        words.ends_with("Assertion `argc < 2' failed.\n"),
        "{words:?}"
    );

    let c = Crasher::run("double-free");
    assert_eq!(c.signal, Some(libc::SIGABRT));
    let r = a.report_for(c.pid);
    assert_eq!(r["error"]["reason"], "heap_corruption", "{r}");
    assert_eq!(
        r["error"]["headline"],
        "free(): double free detected in tcache 2"
    );
}

fn tempdir(tag: &str) -> PathBuf {
    let d =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A short run the agent only read after it was gone (a busy agent, here a stopped one)
/// taught it the file's path all the same: once the file is classified its runs send no
/// exec, and a later crash of it, read at its signal after it was gone too, is still named
/// (from the path it was started by, checked through its parent's view against the file the
/// kernel ran).
#[test]
fn a_process_gone_before_the_agent_looked_is_still_named() {
    // An agent of its own: stopping it must not delay other tests' reports.
    let a = Agent::start(&[]);
    let bin = std::env::temp_dir().join(format!("gone-crasher-{}", std::process::id()));
    std::fs::copy(common::crasher_bin(), &bin).unwrap();
    let gone = |mode: &str| {
        a.signal(libc::SIGSTOP);
        // A copy another test thread's fork may still hold open for writing: ETXTBSY.
        let child = (0..50)
            .find_map(|_| match Crasher::command_of(&bin, mode).spawn() {
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    None
                }
                r => Some(r.unwrap()),
            })
            .expect("the copy stayed busy");
        let c = Crasher::finish(child);
        assert!(!std::path::Path::new(&format!("/proc/{}", c.pid)).exists());
        a.signal(libc::SIGCONT);
        c
    };
    gone("ok");
    // Classified: not a Go binary, marked known in the kernel.
    std::thread::sleep(std::time::Duration::from_millis(500));
    a.flush();
    let c = gone("null");
    let r = a.report_for(c.pid);
    let _ = std::fs::remove_file(&bin);
    assert_eq!(r["exe"].as_str(), bin.to_str(), "{r}");
    assert_eq!(r["stack"][0]["function"], "null_write", "{r}");
}
