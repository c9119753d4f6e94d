//! The Go crash matrix on the running kernel: programs built by six Go toolchains in four
//! flavours panic and die in every way the runtime has; the real agent must explain each.
//! Needs root (CI runs as root).
#[path = "../common/mod.rs"]
mod common;

/// Fails the case with a message unless `cond` holds (the matrix collects every failure).
macro_rules! check {
    ($cond:expr, $($msg:tt)*) => {
        if !$cond {
            return Err(format!($($msg)*));
        }
    };
}

mod alone;
mod stack;

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Mutex, OnceLock},
};

use common::{
    agent,
    gobuild::{self, Flavour, VERSIONS},
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
        // What the agent held of its output, to tell a lost line from a misread one.
        check!(
            exact,
            "panic_value {val:?}, want {text:?}; go.stderr {stderr:?} ({} bytes, truncated {}), \
             last_words {}",
            go["stderr_bytes"],
            go["stderr_truncated"],
            rep["last_words"]
        );
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
    stack::stack_agrees_with_the_runtime(&rep, first, mode, f)?;
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

/// Not a test: `cargo xtask integration-test` runs it to stage the programs for VMs, where
/// there are no Go toolchains. It fails when CRASHWATCH_GO_STAGE is not set.
#[test]
#[ignore = "run by cargo xtask integration-test"]
fn stage_go_programs() {
    let dir =
        std::env::var_os("CRASHWATCH_GO_STAGE").expect("CRASHWATCH_GO_STAGE names the directory");
    gobuild::stage(Path::new(&dir));
}
