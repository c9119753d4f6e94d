//! The Go crash matrix on the running kernel: programs built by six Go toolchains in four
//! flavours panic and die in every way the runtime has; the real agent must explain each.
//! Needs root (CI runs as root).
mod common;

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Mutex, OnceLock},
};

use common::{
    agent,
    gobuild::{self, Flavour, VERSIONS},
    podman::{Container, Image},
    Agent,
};
use serde_json::Value;

/// Cases every flavour runs; `static` runs all of [`ALL_CASES`].
const CORE_CASES: [&str; 6] = [
    "string",
    "error",
    "nilptr",
    "mapwrite",
    "goroutine",
    "inlined",
];
const ALL_CASES: [&str; 12] = [
    "inlined",
    "string",
    "error",
    "custom",
    "stringer",
    "nilmap",
    "nilptr",
    "index",
    "mapwrite",
    "overflow",
    "deadlock",
    "goroutine",
];

struct Run {
    pid: u32,
    facts: HashMap<String, Vec<String>>,
    code: Option<i32>,
}

impl Run {
    fn fact(&self, k: &str) -> u64 {
        self.facts
            .get(k)
            .and_then(|v| v.first())
            .and_then(|v| v.parse().ok())
            .unwrap_or(u64::MAX)
    }
}

fn run(bin: &Path, mode: &str, env: &[(&str, &str)], dir: Option<&Path>) -> Run {
    let mut cmd = Command::new(bin);
    cmd.arg(mode)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if let Some(d) = dir {
        cmd.current_dir(d);
    }
    let child = cmd.spawn().unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    let mut facts: HashMap<String, Vec<String>> = HashMap::new();
    for l in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some((k, v)) = l.split_once('=') {
            facts.entry(k.into()).or_default().push(v.into());
        }
    }
    Run {
        pid,
        facts,
        code: out.status.code(),
    }
}

/// The binary for (version, flavour), run once so the agent has probed it before it crashes.
fn primed(a: &Agent, v: &str, f: Flavour) -> PathBuf {
    // Per agent: each one probes for itself.
    type Primed = Mutex<HashMap<(usize, String, Flavour), PathBuf>>;
    static DONE: OnceLock<Primed> = OnceLock::new();
    let key = (a as *const Agent as usize, v.to_string(), f);
    let done = DONE.get_or_init(Default::default);
    if let Some(p) = done.lock().unwrap().get(&key) {
        return p.clone();
    }
    let bin = gobuild::build(v, f);
    run(&bin, "noop", &[], None);
    a.wait_log(&format!("probing Go binary {}", bin.display()));
    done.lock().unwrap().insert(key, bin.clone());
    bin
}

fn s<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter()
        .try_fold(v, |v, k| v.get(*k))
        .and_then(Value::as_str)
}

macro_rules! check {
    ($cond:expr, $($msg:tt)*) => {
        if !$cond {
            return Err(format!($($msg)*));
        }
    };
}

/// Runs one case and checks its report: kind, exact message, goroutine, runtime text, build.
fn case(a: &Agent, v: &str, f: Flavour, mode: &str) -> Result<(), String> {
    let bin = primed(a, v, f);
    let r = run(&bin, mode, &[], None);
    check!(
        r.code == Some(2),
        "exit code {:?}, want 2 (the runtime's)",
        r.code
    );
    let rep = a.try_report_for(r.pid).ok_or("no report")?;
    let go = rep.get("go").ok_or("no go section")?;
    let stderr = s(go, &["stderr"]).unwrap_or("");
    check!(
        s(go, &["version"]).is_some_and(|x| x.starts_with(&format!("go{v}"))),
        "version {:?}",
        go["version"]
    );
    let rev = &gobuild::source().1;
    check!(
        s(go, &["build", "vcs_revision"]) == Some(rev.as_str()),
        "vcs_revision {:?}",
        go["build"]["vcs_revision"]
    );
    let goroutine = go["goroutine"].as_u64();
    let (kind, text, ty): (&str, &str, Option<&str>) = match mode {
        "string" => ("go_panic", "boom: a string", Some("string")),
        "error" => ("go_panic", "boom: an error", Some("*errors.errorString")),
        "custom" => ("go_panic", "(main.custom) 0x", Some("main.custom")),
        "stringer" => ("go_panic", "i am a stringer", Some("main.stringer")),
        "nilmap" => (
            "go_panic",
            "assignment to entry in nil map",
            Some("runtime.plainError"),
        ),
        "nilptr" => (
            "go_panic",
            "runtime error: invalid memory address or nil pointer dereference",
            Some("runtime.errorString"),
        ),
        "index" => (
            "go_panic",
            "runtime error: index out of range [5] with length 3",
            Some("runtime.boundsError"),
        ),
        "goroutine" => ("go_panic", "boom: in a goroutine", Some("string")),
        "inlined" => ("go_panic", "boom: inlined", Some("string")),
        "mapwrite" => ("go_fatal", "concurrent map writes", None),
        "overflow" => ("go_fatal", "stack overflow", None),
        "deadlock" => ("go_fatal", "all goroutines are asleep - deadlock!", None),
        // Go 1.19 throws for a signal in cgo code; later runtimes print a signal crash header.
        "cgo" if v == "1.19" => (
            "go_fatal",
            "unexpected signal during runtime execution",
            None,
        ),
        "cgo" => (
            "go_fatal",
            "SIGSEGV: segmentation violation (signal arrived during cgo execution)",
            None,
        ),
        _ => unreachable!(),
    };
    check!(rep["kind"] == kind, "kind {}, want {kind}", rep["kind"]);
    if kind == "go_panic" {
        let val = s(go, &["panic_value"]).unwrap_or("");
        let exact = if mode == "custom" {
            val.starts_with(text)
        } else {
            val == text
        };
        check!(exact, "panic_value {val:?}, want {text:?}");
        check!(
            s(go, &["panic_type"]) == ty,
            "panic_type {:?}, want {ty:?}",
            go["panic_type"]
        );
        check!(
            stderr.contains(&format!("panic: {val}")),
            "stderr lacks the panic line: {stderr:?}"
        );
    } else {
        check!(
            s(go, &["fatal_message"]) == Some(text),
            "fatal_message {:?}, want {text:?}",
            go["fatal_message"]
        );
        let line = match mode {
            "cgo" if v != "1.19" => "signal arrived during cgo execution".to_string(),
            _ => format!("fatal error: {text}"),
        };
        check!(stderr.contains(&line), "stderr lacks {line:?}: {stderr:?}");
    }
    let want_goroutine = match mode {
        "goroutine" => Some(r.fact("panicker")),
        "mapwrite" => None, // either writer may be caught
        _ => Some(r.fact("goid")),
    };
    match want_goroutine {
        Some(g) => check!(goroutine == Some(g), "goroutine {goroutine:?}, want {g}"),
        None => {
            let writers: Vec<u64> = r.facts["writer"]
                .iter()
                .filter_map(|w| w.parse().ok())
                .collect();
            check!(
                goroutine.is_some_and(|g| writers.contains(&g)),
                "goroutine {goroutine:?}, writers {writers:?}"
            );
        }
    }
    let first = &go["goroutines"][0];
    check!(
        first["id"].as_u64() == goroutine,
        "goroutines[0] is {:?}",
        first["id"]
    );
    stack_agrees_with_the_runtime(&rep, first, mode, f)?;
    match mode {
        "goroutine" => check!(
            s(first, &["created_by", "function"]) == Some("main.main"),
            "created_by {:?}",
            first["created_by"]
        ),
        "nilptr" => {
            check!(
                s(&rep, &["signal", "name"]) == Some("SIGSEGV"),
                "signal {:?}",
                rep["signal"]
            );
            check!(rep["signal"]["handled"] == true, "SIGSEGV handled by Go");
        }
        "cgo" => check!(
            s(&rep, &["signal", "addr"]) == Some("0x18"),
            "fault addr {:?}",
            rep["signal"]
        ),
        "overflow" => check!(
            stderr.contains("goroutine stack exceeds"),
            "stderr lacks the overflow line"
        ),
        _ => {}
    }
    Ok(())
}

/// The report's stack against the runtime's own traceback of the dying goroutine (printed
/// to stderr, parsed into `goroutines[0]`): every frame named, Go frames with file and line,
/// and each of the program's frames the runtime printed found in the same order with the
/// same line. A crash in C shows the C frames, the cgo call, and past it the goroutine's
/// frames on the other stack.
fn stack_agrees_with_the_runtime(
    rep: &Value,
    g: &Value,
    mode: &str,
    f: Flavour,
) -> Result<(), String> {
    let stack = rep["stack"].as_array().ok_or("no stack")?;
    let fs: Vec<(&str, u64)> = stack
        .iter()
        .map(|x| {
            (
                x["function"].as_str().unwrap_or("?"),
                x["line"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    // Taken at the fatal signal or at the runtime's fatal path alike, the stack copy is
    // unwound in userspace.
    check!(
        stack.first().is_some_and(|x| x["found_by"] == "cfi"),
        "the first frame was not unwound from the stack copy: {:?}",
        stack.first()
    );
    // Every mode but a crash in C reaches the runtime's fatal path, which takes the registers;
    // without a signal the stack starts where they say.
    if mode != "cgo" {
        let ip = rep["go"]["registers"]["ip"].as_str();
        check!(
            ip.is_some(),
            "no registers at the fatal path: {}",
            rep["go"]
        );
        check!(
            !rep["signal"].is_null() || ip == stack[0]["ip"].as_str(),
            "registers' ip {ip:?} is not the first frame's {}",
            stack[0]["ip"]
        );
    }
    if mode == "cgo" {
        check!(
            fs.iter().any(|(n, _)| *n == "runtime.asmcgocall"),
            "cgo stack lacks runtime.asmcgocall: {fs:?}"
        );
        // Without symbols nothing names the C function (gdb prints `??` too).
        if !f.stripped() {
            check!(fs[0].0.contains("crash_in_c"), "cgo stack top: {fs:?}");
        }
    }
    // Past the cgo call, the goroutine's frames: checked below against the runtime's.
    let past_c = stack
        .iter()
        .skip_while(|x| mode == "cgo" && x["function"] != "runtime.asmcgocall");
    for x in past_c {
        check!(x["function"].is_string(), "unnamed frame {x}");
        let go_frame = x["function"].as_str().is_some_and(|n| n.contains('.'));
        check!(
            !go_frame || (x["file"].is_string() && x["line"].is_u64()),
            "Go frame without file and line: {x}"
        );
    }
    // A deadlock is found by the scheduler, on no goroutine's stack: nothing of main's runs.
    if mode == "deadlock" {
        return Ok(());
    }
    // The runtime throws a stack overflow on the scheduler's stack, after `morestack`
    // switched to it (Go 1.19 throws before switching): the recursion is on the goroutine's
    // stack, which is not copied.
    if mode == "overflow" && fs.iter().any(|(n, _)| *n == "runtime.morestack") {
        return Ok(());
    }
    let theirs: Vec<(&str, u64)> = g["frames"]
        .as_array()
        .ok_or("no goroutine frames")?
        .iter()
        .filter_map(|x| Some((x["function"].as_str()?, x["line"].as_u64()?)))
        .filter(|(n, _)| n.starts_with("main."))
        .collect();
    check!(!theirs.is_empty(), "the runtime printed no frame of main");
    // An overflowing recursion is deeper than any walk: its top frames must agree.
    let theirs = if mode == "overflow" {
        &theirs[..theirs.len().min(20)]
    } else {
        &theirs[..]
    };
    if mode == "inlined" {
        check!(
            stack
                .iter()
                .any(|x| x["function"] == "main.mustPositive" && x["inlined"] == true),
            "no inlined main.mustPositive frame in {fs:?}"
        );
    }
    let mut rest = fs.iter();
    for want in theirs {
        check!(
            rest.any(|got| got == want),
            "runtime's frame {want:?} not in order in the stack {fs:?}"
        );
    }
    Ok(())
}

/// Runs `cases` for every version, and fails with the whole version × case table.
fn matrix(f: Flavour, cases: &[&str]) {
    let a = agent();
    let mut table: BTreeMap<(&str, &str), String> = BTreeMap::new();
    for v in VERSIONS {
        for c in cases {
            let res = case(a, v, f, c);
            table.insert((v, c), res.err().unwrap_or_default());
        }
    }
    let failed: Vec<String> = table
        .iter()
        .filter(|(_, e)| !e.is_empty())
        .map(|((v, c), e)| format!("  go{v} {f:?} {c}: {e}"))
        .collect();
    println!(
        "Go matrix {f:?}: {} of {} cases pass",
        table.len() - failed.len(),
        table.len()
    );
    assert!(
        failed.is_empty(),
        "{} failures:\n{}\nagent log:\n{}",
        failed.len(),
        failed.join("\n"),
        a.log()
    );
}

#[test]
fn go_static_all_cases() {
    matrix(Flavour::Static, &ALL_CASES);
}

#[test]
fn go_pie() {
    matrix(Flavour::Pie, &CORE_CASES);
}

#[test]
fn go_stripped() {
    matrix(Flavour::Stripped, &CORE_CASES);
}

#[test]
fn go_cgo_including_a_segfault_in_c() {
    let mut cases = CORE_CASES.to_vec();
    cases.push("cgo");
    matrix(Flavour::Cgo, &cases);
}

/// Built as distributions build Go: cgo, the system linker, PIE, stripped.
#[test]
fn go_distro_shaped_external_link_pie_stripped() {
    let mut cases = CORE_CASES.to_vec();
    cases.push("cgo");
    matrix(Flavour::External, &cases);
}

#[test]
fn recovered_panic_and_plain_exit_are_not_panics() {
    let a = agent();
    for v in VERSIONS {
        let bin = primed(a, v, Flavour::Static);
        let r = run(&bin, "recover", &[], None);
        assert_eq!(
            (r.code, r.facts["recovered"][0].as_str()),
            (Some(0), "boom: recovered"),
            "go{v}"
        );
        a.assert_no_report(r.pid);
        // The shared agent runs with --exits nonzero: os.Exit(3) is an exit, not a panic.
        let r = run(&bin, "exit3", &[], None);
        assert_eq!(r.code, Some(3));
        let rep = a.report_for(r.pid);
        assert_eq!(
            (rep["kind"].as_str(), rep["exit"]["code"].as_u64()),
            (Some("exit"), Some(3)),
            "go{v}"
        );
        assert!(rep["go"]["version"]
            .as_str()
            .unwrap()
            .starts_with(&format!("go{v}")));
    }
    // Without --exits nonzero, os.Exit(3) is no crash at all.
    let plain = Agent::start(&[]);
    let bin = primed(&plain, "1.27", Flavour::Static);
    let r = run(&bin, "exit3", &[], None);
    plain.assert_no_report(r.pid);
}

/// A panic whose deferred cleanup panics again: the report's `error` keeps the chain in Go's
/// order with the root cause as the headline; `go.panic_value` stays the value that killed.
#[test]
fn nested_panics_keep_the_root_cause() {
    let a = agent();
    for v in VERSIONS {
        let bin = primed(a, v, Flavour::Static);
        let r = run(&bin, "nested", &[], None);
        assert_eq!(r.code, Some(2), "go{v}");
        let rep = a.report_for(r.pid);
        let e = &rep["error"];
        assert_eq!(
            (e["runtime"].as_str(), e["reason"].as_str()),
            (Some("go"), Some("panic")),
            "go{v}: {rep}"
        );
        assert_eq!(e["headline"], "panic: boom: connection reset", "go{v}");
        let chain: Vec<(&str, Option<&str>)> = e["chain"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| (l["message"].as_str().unwrap(), l["relation"].as_str()))
            .collect();
        assert_eq!(
            chain,
            [
                ("boom: connection reset", None),
                ("boom: cleanup failed", Some("while_panicking"))
            ],
            "go{v}"
        );
        assert_eq!(rep["go"]["panic_value"], "boom: cleanup failed", "go{v}");
        assert!(
            e["frames"][0]["function"]
                .as_str()
                .unwrap()
                .starts_with("main.main.func"),
            "go{v}: {}",
            e["frames"]
        );
    }
}

#[test]
fn gotraceback_crash_aborts_with_a_core() {
    let a = agent();
    for v in VERSIONS {
        let bin = primed(a, v, Flavour::Static);
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("gocore-{v}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // Raise RLIMIT_CORE for the child through the shell's ulimit.
        let child = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "ulimit -c unlimited; exec {} string",
                bin.display()
            ))
            .env("GOTRACEBACK", "crash")
            .current_dir(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        let st = child.wait_with_output().unwrap().status;
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(st.signal(), Some(6), "go{v}: GOTRACEBACK=crash aborts");
        let rep = a.report_for(pid);
        assert_eq!(rep["kind"], "go_panic", "go{v}");
        assert_eq!(rep["go"]["panic_value"], "boom: a string", "go{v}");
        assert_eq!(
            (
                rep["exit"]["signal"].as_u64(),
                rep["exit"]["signal_name"].as_str()
            ),
            (Some(6), Some("SIGABRT"))
        );
        let wrote_core = std::fs::read_dir(&dir).unwrap().count() > 0;
        assert!(wrote_core, "go{v}: no core file in {}", dir.display());
        assert_eq!(rep["exit"]["core_dumped"], true, "go{v}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// The process is gone before the agent reads its records (the agent is stopped while the
/// container dies): its stack is still named from the file inside the container, which the
/// agent holds through the process it probed.
#[test]
fn go_panic_inside_a_podman_container() {
    // An agent of its own: stopping it must not delay other tests' reports.
    let a = common::Agent::start(&[]);
    // Stripped: its frames are named from the pclntab of the file inside the container.
    let bin = gobuild::build("1.27", Flavour::Stripped);
    let image = Image::of_files(
        "gocrash",
        &[(bin.clone(), "/gocrash-in-a-container".to_string())],
    );
    let ctr = Container::run(&image, &["/gocrash-in-a-container", "on-usr1"]);
    let (id, pid) = (ctr.id.clone(), ctr.pid);
    // Crash only once the agent has probed the binary inside the container.
    a.wait_log("probing Go binary /gocrash-in-a-container");
    a.signal(libc::SIGSTOP);
    unsafe { libc::kill(pid as i32, libc::SIGUSR1) };
    let status = ctr.wait();
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "the container's process outlived `podman wait`"
    );
    a.signal(libc::SIGCONT);
    let rep = a.report_for(pid);
    a.signal(libc::SIGTERM);
    assert_eq!(status, "2", "a Go panic exits 2");
    assert_eq!(rep["kind"], "go_panic");
    assert_eq!(rep["exe"], "/gocrash-in-a-container");
    assert_eq!(rep["go"]["panic_value"], "boom: on SIGUSR1");
    assert_eq!(rep["go"]["panic_type"], "string");
    assert!(rep["go"]["version"].as_str().unwrap().starts_with("go1.27"));
    assert_eq!(rep["go"]["goroutine"], 1);
    assert!(rep["go"]["stderr"]
        .as_str()
        .unwrap()
        .contains("panic: boom: on SIGUSR1"));
    assert!(
        rep["cgroup"].as_str().unwrap().contains(&id[..12]),
        "cgroup {} vs container {id}",
        rep["cgroup"]
    );
    let stack = rep["stack"].as_array().unwrap();
    for f in stack {
        assert!(f["function"].is_string(), "unnamed frame {f}");
        assert_eq!(f["module"], "/gocrash-in-a-container", "{f}");
    }
    assert!(
        stack.iter().any(|f| f["function"]
            .as_str()
            .is_some_and(|n| n.starts_with("main."))
            && f["file"].as_str().is_some_and(|p| p.ends_with("main.go"))
            && f["line"].is_u64()),
        "no frame of main with its line: {stack:#?}"
    );
}

/// Not a test: `cargo xtask integration-test` runs it to stage the programs for VMs, where
/// there are no Go toolchains. It fails when CRASHWATCH_GO_STAGE is not set.
#[test]
#[ignore = "run by cargo xtask integration-test"]
fn stage_go_programs() {
    let dir =
        std::env::var_os("CRASHWATCH_GO_STAGE").expect("CRASHWATCH_GO_STAGE names the directory");
    gobuild::stage(Path::new(&dir));
}
