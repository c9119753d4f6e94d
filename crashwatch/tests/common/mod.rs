//! Test harness: runs the real agent (root, real eBPF programs) and real crashing programs,
//! and finds each program's report by its pid.
#![allow(dead_code)]

mod cgroup;
mod dirs;
pub mod gobuild;
pub mod podman;

#[allow(unused_imports)]
pub use cgroup::MemCgroup;
pub use dirs::state_dir;

use std::{
    collections::HashMap,
    io::{BufRead, BufReader},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{mpsc, Arc, Condvar, Mutex, OnceLock},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

/// How long a report may take to come: 20 s, or `CRASHWATCH_TEST_REPORT_TIMEOUT` seconds (the
/// VMs set 120: under TCG, with a second agent watching, a burst's reports queue for longer).
pub fn report_timeout() -> Duration {
    static T: OnceLock<Duration> = OnceLock::new();
    *T.get_or_init(|| {
        let secs = std::env::var("CRASHWATCH_TEST_REPORT_TIMEOUT")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(20);
        Duration::from_secs(secs)
    })
}

/// A running `crashwatch run --output json` and the reports it printed so far.
pub struct Agent {
    reports: Arc<(Mutex<Vec<Value>>, Condvar)>,
    pub stderr: Arc<Mutex<Vec<String>>>,
    /// Stdout lines, for agents started with [`Setup::text`].
    pub text: Arc<Mutex<Vec<String>>>,
    pub pid: u32,
    /// How the agent ended, once it has.
    pub exit: Arc<Mutex<Option<std::process::ExitStatus>>>,
    /// The read end of the agent's stdout, for [`Setup::keep_stdout`].
    pub stdout: Mutex<Option<std::process::ChildStdout>>,
}

/// A change to the agent's command (working directory, a cgroup to join).
pub type CommandSetup = Box<dyn FnOnce(&mut Command) + Send>;

/// How to start an agent beyond its arguments.
#[derive(Default)]
pub struct Setup {
    pub command: Option<CommandSetup>,
    /// Stdout is text (`--output pretty`), kept in [`Agent::text`].
    pub text: bool,
    /// Leave stdout unread, in [`Agent::stdout`]: the test decides what happens to it.
    pub keep_stdout: bool,
    /// Run the agent through this command (`setpriv ... --`), the agent's path and arguments
    /// appended.
    pub wrap: Vec<String>,
    /// Another build of the agent than [`agent_bin`] (the upgrade test's).
    pub program: Option<PathBuf>,
}

impl Agent {
    /// Starts an agent with `args` on a thread that lives as long as the test binary, so the
    /// agent (killed by PR_SET_PDEATHSIG when that thread ends) outlives each test.
    pub fn start(args: &[&str]) -> Agent {
        Self::start_with(args, Setup::default())
    }

    pub fn start_with(args: &[&str], setup: Setup) -> Agent {
        assert!(
            unsafe { libc::geteuid() } == 0,
            "crashwatch's integration tests load eBPF programs: run them as root"
        );
        let mut args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        // A test that gives a configuration file of its own names its state and pin
        // directories there.
        let own_config = args.iter().any(|a| a == "--config");
        // A crash history of its own, so no test counts another's crashes (and none writes
        // to this host's /var/lib/crashwatch).
        // Removed when the agent has ended: nothing else knows its name.
        let mut own_state = None;
        if !own_config && !args.iter().any(|a| a == "--state-dir" || a == "--no-store") {
            let dir = state_dir("agent");
            args.push("--state-dir".into());
            args.push(dir.display().to_string());
            own_state = Some(dir);
        }
        if !setup.text {
            args.splice(0..0, ["--output".to_string(), "json".to_string()]);
        }
        // Agents run side by side: none may take over another's pinned programs, so only a
        // test that names a pin directory of its own pins.
        if !own_config && !args.iter().any(|a| a == "--pin-dir") {
            args.push("--no-pin".into());
        }
        // Agents run side by side: each listens on a port of its own (see `metrics_addr`).
        if !args.iter().any(|a| a == "--listen") {
            args.push("--listen".into());
            args.push("127.0.0.1:0".into());
        }
        let reports = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let text = Arc::new(Mutex::new(Vec::new()));
        let exit = Arc::new(Mutex::new(None));
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
        let (pid_tx, pid_rx) = mpsc::channel::<(u32, Option<std::process::ChildStdout>)>();
        let (r2, e2, t2, x2) = (reports.clone(), stderr.clone(), text.clone(), exit.clone());
        let (as_text, keep) = (setup.text, setup.keep_stdout);
        let program = setup.program.clone().unwrap_or_else(agent_bin);
        thread::spawn(move || {
            let mut cmd = match setup.wrap.split_first() {
                Some((prog, rest)) => {
                    let mut c = Command::new(prog);
                    c.args(rest).arg(&program);
                    c
                }
                None => Command::new(&program),
            };
            cmd.arg("run").args(&args);
            // A test's agent is configured by its flags alone, never by the machine's
            // /etc/crashwatch/config.toml (an empty file is an empty configuration).
            if std::env::var_os("CRASHWATCH_CONFIG").is_none() {
                cmd.env("CRASHWATCH_CONFIG", "/dev/null");
            }
            cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                    Ok(())
                })
            };
            if let Some(f) = setup.command {
                f(&mut cmd);
            }
            let mut child = cmd.spawn().expect("spawning crashwatch");
            let out = child.stdout.take().unwrap();
            let (out, kept) = if keep {
                (None, Some(out))
            } else {
                (Some(out), None)
            };
            let _ = pid_tx.send((child.id(), kept));
            let err = child.stderr.take().unwrap();
            let tx = ready_tx.clone();
            thread::spawn(move || {
                for line in BufReader::new(err).lines().map_while(Result::ok) {
                    if line.contains("crashwatch: ready") {
                        let _ = tx.send(Ok(()));
                    }
                    e2.lock().unwrap().push(line);
                }
                let _ = tx.send(Err(e2.lock().unwrap().join("\n")));
            });
            for line in out
                .into_iter()
                .flat_map(|o| BufReader::new(o).lines().map_while(Result::ok))
            {
                if as_text {
                    t2.lock().unwrap().push(line);
                    r2.1.notify_all();
                    continue;
                }
                let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| {
                    panic!("agent printed a line that is not JSON ({e}): {line}")
                });
                let (lock, cv) = &*r2;
                lock.lock().unwrap().push(v);
                cv.notify_all();
            }
            let st = child.wait().ok();
            if let Some(dir) = own_state {
                let _ = std::fs::remove_dir_all(dir);
            }
            *x2.lock().unwrap() = st;
            // Keep this thread (the agent's parent for PDEATHSIG) alive.
            loop {
                thread::park();
            }
        });
        let (pid, kept) = pid_rx.recv().expect("the agent was spawned");
        // Loading and verifying the programs under TCG takes longer (the VMs' 6.1 run once
        // passed 60 s): three report timeouts, 60 s here and 360 s there.
        let ready = report_timeout() * 3;
        match ready_rx.recv_timeout(ready) {
            Ok(Ok(())) => {}
            Ok(Err(log)) => panic!("crashwatch exited before it was ready:\n{log}"),
            Err(_) => panic!("crashwatch did not become ready within {ready:?}"),
        }
        Agent {
            reports,
            stderr,
            text,
            pid,
            exit,
            stdout: Mutex::new(kept),
        }
    }

    /// Sends `sig` to the agent.
    pub fn signal(&self, sig: i32) {
        unsafe { libc::kill(self.pid as i32, sig) };
    }

    /// Waits up to `timeout` for the agent to end; its exit status.
    pub fn wait_exit(&self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = *self.exit.lock().unwrap() {
                return Some(st);
            }
            if Instant::now() > deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The agent's open file descriptors now.
    pub fn fd_count(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// The agent's resident memory now, in KiB.
    pub fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            })
            .unwrap_or(0)
    }

    /// How many log lines contain `needle`.
    pub fn log_count(&self, needle: &str) -> usize {
        self.stderr
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Waits up to `timeout` until at least `n` log lines contain `needle`.
    pub fn wait_log_count(&self, needle: &str, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.log_count(needle) < n {
            if Instant::now() > deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(20));
        }
        true
    }

    /// The first report for `pid`, waiting up to [`report_timeout`].
    pub fn report_for(&self, pid: u32) -> Value {
        self.wait_for(|| self.reports_for(pid).into_iter().next())
            .unwrap_or_else(|| {
                panic!(
                    "no report for pid {pid} within {:?}; agent log:\n{}",
                    report_timeout(),
                    self.log()
                )
            })
    }

    /// The first report for `pid`, or None after [`report_timeout`].
    pub fn try_report_for(&self, pid: u32) -> Option<Value> {
        self.wait_for(|| self.reports_for(pid).into_iter().next())
    }

    /// Every report so far.
    pub fn reports(&self) -> Vec<Value> {
        self.reports.0.lock().unwrap().clone()
    }

    pub fn reports_for(&self, pid: u32) -> Vec<Value> {
        let lock = &self.reports.0;
        lock.lock()
            .unwrap()
            .iter()
            .filter(|r| r["pid"] == pid)
            .cloned()
            .collect()
    }

    pub fn wait_for<T>(&self, mut f: impl FnMut() -> Option<T>) -> Option<T> {
        let deadline = Instant::now() + report_timeout();
        let (lock, cv) = &*self.reports;
        let mut guard = lock.lock().unwrap();
        loop {
            drop(guard);
            if let Some(v) = f() {
                return Some(v);
            }
            guard = lock.lock().unwrap();
            let left = deadline.checked_duration_since(Instant::now())?;
            guard = cv
                .wait_timeout(guard, left.min(Duration::from_millis(200)))
                .unwrap()
                .0;
        }
    }

    /// Returns once every kernel record written so far was handled: a crash started now is
    /// reported after all of them.
    pub fn flush(&self) {
        let sentinel = Crasher::run("null");
        self.report_for(sentinel.pid);
    }

    /// Proves `pid` got no report (`pid` must have ended already).
    pub fn assert_no_report(&self, pid: u32) {
        self.flush();
        let got = self.reports_for(pid);
        assert!(
            got.is_empty(),
            "unexpected report(s) for pid {pid}: {got:#?}"
        );
    }

    /// Waits until the agent logged a line containing `needle` (probing Go binaries queues
    /// behind the toolchain's own binaries and can take seconds each on a loaded host).
    pub fn wait_log(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(180);
        let found = loop {
            if self
                .stderr
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.contains(needle))
            {
                break Some(());
            }
            if Instant::now() > deadline {
                break None;
            }
            thread::sleep(Duration::from_millis(50));
        };
        assert!(
            found.is_some(),
            "agent never logged {needle:?}; log:\n{}",
            self.log()
        );
    }

    /// Where the agent serves /metrics (from its log).
    pub fn metrics_addr(&self) -> Option<String> {
        let log = self.log();
        let at = log.split("metrics on http://").nth(1)?;
        Some(at.split('/').next()?.to_string())
    }

    pub fn log(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }
}

/// The agent under test: this build's, or `CRASHWATCH_AGENT` (the VM runs a static one).
/// A fresh directory under the system's temp dir (the VMs run these tests too, where the
/// build's target dir does not exist), unique to this process and call.
/// (status line and headers, body) of a plain `GET path` at `addr` (HTTP/1.0).
pub fn http_get(addr: &str, path: &str) -> Option<(String, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut all = String::new();
    s.read_to_string(&mut all).ok()?;
    let (head, body) = all.split_once("\r\n\r\n")?;
    Some((head.to_string(), body.to_string()))
}

impl Agent {
    /// A sample's value on the agent's /metrics (`name{labels}` exactly as exposed).
    pub fn metric(&self, series: &str) -> Option<f64> {
        let (_, body) = http_get(&self.metrics_addr()?, "/metrics")?;
        body.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }
}

/// A loopback port free now (for a server a test starts).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn agent_bin() -> PathBuf {
    std::env::var_os("CRASHWATCH_AGENT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_crashwatch")))
}

/// The crash programs (tests/crashers/crasher.c), built once per test binary; or
/// `CRASHWATCH_CRASHER`, prebuilt (inside a VM there is no compiler).
pub fn crasher_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("CRASHWATCH_CRASHER") {
            return PathBuf::from(p);
        }
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/crashers/crasher.c");
        let out =
            Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("crasher-{}", std::process::id()));
        // Frame pointers: the kernel's stack walk follows them (CFI unwinding comes later).
        let st = Command::new("gcc")
            .args(["-O1", "-g", "-fno-omit-frame-pointer", "-pthread", "-o"])
            .arg(&out)
            .arg(&src)
            .status()
            .expect("running gcc (scripts/setup.sh installs it)");
        assert!(st.success(), "gcc failed on {}", src.display());
        out
    })
}

/// Spawns `cmd`, retrying while the kernel says the file is busy: a file the test just wrote
/// can still be open for writing in a child another test thread forked meanwhile (until that
/// child execs), and exec refuses it with ETXTBSY.
pub fn spawn(cmd: &mut Command) -> Child {
    for _ in 0..200 {
        match cmd.spawn() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => {
                thread::sleep(Duration::from_millis(10))
            }
            r => return r.unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}")),
        }
    }
    panic!("{cmd:?}: the file stayed busy for 2 s");
}

/// One finished (or still running) crash program.
pub struct Crasher {
    pub pid: u32,
    /// `key=value` facts the program printed.
    pub facts: HashMap<String, String>,
    /// wait(2)-style: Some(code) on exit, None when killed by a signal.
    pub code: Option<i32>,
    pub signal: Option<i32>,
}

impl Crasher {
    pub fn command(mode: &str) -> Command {
        Self::command_of(crasher_bin(), mode)
    }

    /// The crash program at another path (a copy, a modified one).
    pub fn command_of(bin: &Path, mode: &str) -> Command {
        let mut cmd = Command::new(bin);
        cmd.arg(mode).stdout(Stdio::piped()).stderr(Stdio::null());
        cmd
    }

    /// Spawns `cmd` and returns once the program said it started (its first line).
    pub fn spawn_started(mut cmd: Command) -> Child {
        use std::io::BufRead;
        let mut child = cmd.spawn().expect("spawning crasher");
        let out = child.stdout.as_mut().unwrap();
        let mut line = String::new();
        std::io::BufReader::new(out).read_line(&mut line).unwrap();
        assert!(line.starts_with("pid="), "crasher said {line:?}");
        child
    }

    pub fn run(mode: &str) -> Crasher {
        Self::finish(Self::command(mode).spawn().expect("spawning crasher"))
    }

    pub fn finish(child: Child) -> Crasher {
        use std::os::unix::process::ExitStatusExt;
        let pid = child.id();
        let out = child.wait_with_output().expect("waiting for crasher");
        let facts = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                l.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
            })
            .collect();
        Crasher {
            pid,
            facts,
            code: out.status.code(),
            signal: out.status.signal(),
        }
    }

    pub fn fact(&self, k: &str) -> u64 {
        self.facts
            .get(k)
            .unwrap_or_else(|| panic!("crasher printed no {k}: {:?}", self.facts))
            .parse()
            .unwrap()
    }
}

pub fn hex(v: &Value) -> u64 {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("not a hex string: {v}"));
    u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap()
}

/// The agent every test in a binary shares: `--exits nonzero` so exit reports can be checked.
pub fn agent() -> &'static Agent {
    static AGENT: OnceLock<Agent> = OnceLock::new();
    AGENT.get_or_init(|| Agent::start(&["--exits", "nonzero"]))
}
