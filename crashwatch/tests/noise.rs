//! Signal over noise (docs/report.md, "What is a crash"): on a busy host the deaths someone
//! asked for (kill, timeout, Ctrl-C and Ctrl-\ on a terminal, SIGHUP, a broken pipe, a browser
//! started and stopped, a pod's SIGTERM then SIGKILL) give no report and are counted, while
//! the real crashes among them (a segfault, an abort, an OOM kill, a Go panic, a Python
//! exception) are each reported once. A second agent with `--report-terminations` proves each
//! termination was seen. Needs root (CI runs as root).
mod common;

use std::{
    io::{Read, Write},
    os::{fd::FromRawFd, unix::process::CommandExt},
    path::Path,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use common::{gobuild, Agent, Crasher, MemCgroup};
use serde_json::Value;

/// A command in a new session whose controlling terminal is a fresh pty; returns the child
/// and the pty's master side.
fn on_a_terminal(script: &str) -> (Child, std::fs::File) {
    let (mut master, mut slave) = (0, 0);
    // SAFETY: openpty fills two descriptors.
    let r = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(r, 0, "openpty: {}", std::io::Error::last_os_error());
    let mut cmd = Command::new("sh");
    cmd.args(["-c", script]);
    unsafe {
        cmd.pre_exec(move || {
            // A session of its own with the pty as its terminal: its process group is the
            // terminal's foreground group, the one ^C and ^\ signal. No core file for ^\.
            libc::setsid();
            libc::ioctl(slave, libc::TIOCSCTTY, 0);
            default_signals();
            for fd in 0..3 {
                libc::dup2(slave, fd);
            }
            let none = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            libc::setrlimit(libc::RLIMIT_CORE, &none);
            Ok(())
        })
    };
    let child = cmd.spawn().expect("spawning sh on a pty");
    // SAFETY: the slave is the child's now; the master is ours.
    unsafe { libc::close(slave) };
    (child, unsafe { std::fs::File::from_raw_fd(master) })
}

/// Reads the terminal until `word` shows.
fn wait_for(tty: &mut std::fs::File, word: &str) {
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    while !String::from_utf8_lossy(&seen).contains(word) {
        let n = tty.read(&mut buf).expect("reading the pty");
        assert!(n > 0, "the terminal closed before {word:?}");
        seen.extend_from_slice(&buf[..n]);
    }
}

/// Types `key` on a terminal whose program is ready; returns how its process died.
fn typed(key: u8) -> (u32, Option<i32>) {
    use std::os::unix::process::ExitStatusExt;
    let (mut child, mut tty) = on_a_terminal("echo ready; exec sleep 30");
    wait_for(&mut tty, "ready");
    // `exec sleep` follows the echo at once; a key typed a moment later reaches sleep.
    thread::sleep(Duration::from_millis(200));
    tty.write_all(&[key]).unwrap();
    let pid = child.id();
    (pid, child.wait().unwrap().signal())
}

/// Signals a program started from a terminal has at their default action, whatever the
/// tests were started with: a shell without job control starts background jobs with SIGINT
/// and SIGQUIT ignored, `nohup` ignores SIGHUP, and ignored dispositions survive exec.
fn default_signals() {
    for sig in [libc::SIGINT, libc::SIGQUIT, libc::SIGHUP] {
        // SAFETY: async-signal-safe, between fork and exec.
        unsafe { libc::signal(sig, libc::SIG_DFL) };
    }
}

/// Runs `sh -c script`; its pid and terminating signal.
fn sh(script: &str) -> (u32, Option<i32>) {
    use std::os::unix::process::{CommandExt, ExitStatusExt};
    let mut cmd = Command::new("sh");
    // SAFETY: the hook only resets signal dispositions.
    unsafe {
        cmd.pre_exec(|| {
            default_signals();
            Ok(())
        })
    };
    let mut c = cmd
        .args(["-c", script])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    (c.id(), c.wait().unwrap().signal())
}

/// A process that handles SIGTERM and ignores it, as a slow service does; a pod's deletion
/// then SIGKILLs it after its grace period.
fn pod_style_stop() -> u32 {
    let mut c = Command::new("python3")
        .args([
            "-c",
            "import signal, sys, time\n\
             signal.signal(signal.SIGTERM, lambda *a: print('draining', flush=True))\n\
             print('ready', flush=True)\n\
             time.sleep(60)\n",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = c.stdout.take().unwrap();
    let mut buf = [0u8; 6];
    out.read_exact(&mut buf).unwrap();
    let pid = c.id();
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    thread::sleep(Duration::from_millis(500));
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    c.wait().unwrap();
    pid
}

/// Headless chromium, once to print a page and exit, once started and stopped with SIGTERM.
fn chromium(dir: &Path) -> Vec<u32> {
    let base = |tag: &str| {
        let mut c = Command::new("chromium");
        c.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", dir.join(tag).display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        c
    };
    let dumped = base("dump")
        .args(["--dump-dom", "about:blank"])
        .status()
        .expect("running chromium (scripts/setup.sh installs it)");
    assert!(dumped.success(), "chromium --dump-dom: {dumped}");
    let mut c = base("stop")
        .args(["--remote-debugging-port=0", "about:blank"])
        .spawn()
        .unwrap();
    thread::sleep(Duration::from_secs(3));
    unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
    c.wait().unwrap();
    vec![c.id()]
}

fn is_chromium(r: &Value) -> bool {
    let exe = r["exe"].as_str().unwrap_or_default();
    let comm = r["comm"].as_str().unwrap_or_default();
    exe.contains("chromium") || comm.starts_with("chrom")
}

#[test]
fn a_busy_host_reports_its_crashes_and_only_them() {
    let a = Agent::start(&[]);
    let t = Agent::start(&["--report-terminations"]);
    let dir = std::env::temp_dir().join(format!("crashwatch-noise-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    // Deaths someone asked for.
    let mut asked: Vec<(u32, i32, &str)> = Vec::new();
    let mut sleeper = Command::new("sleep").arg("30").spawn().unwrap();
    thread::sleep(Duration::from_millis(100));
    unsafe { libc::kill(sleeper.id() as i32, libc::SIGTERM) };
    sleeper.wait().unwrap();
    asked.push((sleeper.id(), libc::SIGTERM, "kill PID"));
    let mut timeout = Command::new("timeout")
        .args(["1", "sleep", "5"])
        .spawn()
        .unwrap();
    let st = timeout.wait().unwrap();
    assert_eq!(st.code(), Some(124), "timeout's own exit");
    let (pid, sig) = typed(0x03);
    assert_eq!(sig, Some(libc::SIGINT), "^C on the terminal");
    asked.push((pid, libc::SIGINT, "Ctrl-C"));
    let (pid, sig) = typed(0x1c);
    assert_eq!(sig, Some(libc::SIGQUIT), "^\\ on the terminal");
    asked.push((pid, libc::SIGQUIT, "Ctrl-\\"));
    let (pid, sig) = sh("kill -HUP $$");
    assert_eq!(sig, Some(libc::SIGHUP));
    asked.push((pid, libc::SIGHUP, "kill -HUP"));
    // `yes | head -1`: yes dies of SIGPIPE; its pid is the shell's child, found by report.
    let (_, sig) = sh("yes | head -1");
    assert_eq!(sig, None);
    let pid = pod_style_stop();
    asked.push((pid, libc::SIGKILL, "SIGTERM then SIGKILL"));
    let browser = chromium(&dir);

    // The real crashes, in the same run.
    let segv = Crasher::run("null");
    assert_eq!(segv.signal, Some(libc::SIGSEGV));
    let abort = Crasher::finish(Crasher::command("abort").current_dir(&dir).spawn().unwrap());
    assert_eq!(abort.signal, Some(libc::SIGABRT));
    let oom = {
        let cg = MemCgroup::named(
            &format!("crashwatch-noise-{}", std::process::id()),
            64 << 20,
        );
        let procs = cg.procs_file();
        let mut cmd = Crasher::command("oom");
        unsafe {
            cmd.pre_exec(move || {
                std::fs::write(&procs, std::process::id().to_string())?;
                Ok(())
            })
        };
        let c = Crasher::finish(cmd.spawn().unwrap());
        assert_eq!(c.signal, Some(libc::SIGKILL), "the OOM killer's");
        c.pid
    };
    let go = {
        let bin = gobuild::build("1.27", gobuild::Flavour::Static);
        let c = Command::new(&bin)
            .arg("string")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let pid = c.id();
        assert_eq!(c.wait_with_output().unwrap().status.code(), Some(2));
        pid
    };
    let python = {
        let c = Command::new("python3")
            .args(["-c", "raise ValueError('bad row 17')"])
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let pid = c.id();
        assert_eq!(c.wait_with_output().unwrap().status.code(), Some(1));
        pid
    };
    let crashes = [
        (segv.pid, "signal"),
        (abort.pid, "signal"),
        (oom, "oom_kill"),
        (go, "go_panic"),
        (python, "runtime_error"),
    ];
    for agent in [&a, &t] {
        for (pid, kind) in crashes {
            let r = agent.report_for(pid);
            assert_eq!(r["kind"], kind, "{r:#}");
        }
        agent.flush();
        for (pid, _) in crashes {
            assert_eq!(agent.reports_for(pid).len(), 1, "pid {pid} reported once");
        }
    }

    // The agent that reports terminations saw each one: they happened, and were told apart.
    for (pid, sig, what) in &asked {
        let r = t.report_for(*pid);
        assert_eq!(
            (r["kind"].as_str(), r["exit"]["signal"].as_i64()),
            (Some("termination"), Some(*sig as i64)),
            "{what}: {r:#}"
        );
    }
    let grace = t.report_for(asked.last().unwrap().0);
    assert_eq!(grace["termination"]["after"], "SIGTERM", "{grace:#}");
    assert_eq!(grace["termination"]["grace_expired"], true, "{grace:#}");
    let wait = Instant::now();
    while !t
        .reports()
        .iter()
        .any(|r| r["kind"] == "termination" && r["exit"]["signal"] == libc::SIGPIPE)
    {
        assert!(
            wait.elapsed() < common::report_timeout(),
            "no SIGPIPE termination"
        );
        thread::sleep(Duration::from_millis(100));
    }
    assert!(
        t.reports()
            .iter()
            .any(|r| is_chromium(r) && r["kind"] == "termination"),
        "the browser's stop was not seen at all"
    );
    assert!(browser.iter().all(|p| *p > 0));

    // The default agent: not one of them, and no report that is not a crash.
    for r in a.reports() {
        assert_ne!(r["kind"], "termination", "{r:#}");
        let sig = r["exit"]["signal"].as_i64().unwrap_or(0) as i32;
        assert!(
            sig == 0 || [4, 5, 6, 7, 8, 11, 31].contains(&sig) || r["kind"] == "oom_kill",
            "a death by {sig} reported as a crash: {r:#}"
        );
        assert!(!is_chromium(&r), "the browser's stop reported: {r:#}");
    }
    for (pid, _, what) in &asked {
        assert!(a.reports_for(*pid).is_empty(), "{what} reported");
    }
    // Counted, not reported.
    let count = |sig: &str| {
        a.metric(&format!(
            "crashwatch_terminations_total{{signal=\"{sig}\",namespace=\"\"}}"
        ))
        .unwrap_or(0.0)
    };
    for sig in [
        "SIGTERM", "SIGINT", "SIGQUIT", "SIGHUP", "SIGPIPE", "SIGKILL",
    ] {
        assert!(count(sig) >= 1.0, "{sig} not counted:\n{}", metrics(&a));
    }
    assert!(
        a.metric("crashwatch_grace_period_kills_total{namespace=\"\"}")
            .unwrap_or(0.0)
            >= 1.0,
        "the kill after the grace period not counted:\n{}",
        metrics(&a)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn metrics(a: &Agent) -> String {
    a.metrics_addr()
        .and_then(|m| common::http_get(&m, "/metrics"))
        .map(|(_, b)| b)
        .unwrap_or_default()
}
