//! Last words: real programs of every runtime installed here die under the real agent, and
//! their reports carry what they printed and what it means. Needs root and the toolchains
//! `scripts/setup.sh` installs (Go, rustc, CPython, Node, a JDK, g++).
mod common;

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    sync::OnceLock,
};

use common::Agent;
use serde_json::Value;

/// One agent for the file, without `--exits nonzero`: an exit is reported only when its
/// last words explain it.
fn agent() -> &'static Agent {
    static A: OnceLock<Agent> = OnceLock::new();
    A.get_or_init(|| Agent::start(&[]))
}

fn dir() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("lastwords-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn write(name: &str, text: &str) -> PathBuf {
    let p = dir().join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// Runs `cmd` to its end with stdout and stderr discarded (the words go to fd 2 all the
/// same); its pid and wait status.
fn run(cmd: &mut Command) -> (u32, std::process::ExitStatus) {
    let mut c = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let pid = c.id();
    (pid, c.wait().unwrap())
}

fn compile(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn error(r: &Value) -> (&str, &str, &str) {
    let e = &r["error"];
    (
        r["kind"].as_str().unwrap_or("?"),
        e["runtime"].as_str().unwrap_or("?"),
        e["reason"].as_str().unwrap_or("?"),
    )
}

/// Freshly built Go binaries, each run once, die before their uprobes could be attached:
/// a panic in `init` and a deadlock at once. 20 distinct binaries (a different string linked
/// into each), all reported with the runtime's kind and message.
#[test]
fn fresh_go_binaries_dying_at_once_are_reported() {
    let a = agent();
    let src = dir().join("gofresh");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("go.mod"), "module gofresh\n\ngo 1.19\n").unwrap();
    std::fs::write(
        src.join("main.go"),
        "package main\n\nimport \"os\"\n\nvar id string\n\nfunc init() {\n\tif os.Getenv(\"DEADLOCK\") != \"\" {\n\t\tselect {}\n\t}\n\tpanic(\"init failed in \" + id)\n}\n\nfunc main() {}\n",
    )
    .unwrap();
    let go = common::gobuild::go_tool("1.19");
    for i in 0..20 {
        let bin = src.join(format!("fresh-{i}"));
        compile(
            Command::new(&go)
                .args(["build", "-o"])
                .arg(&bin)
                .arg(format!("-ldflags=-X main.id=build{i}"))
                .arg(".")
                .current_dir(&src)
                .env("GOTOOLCHAIN", "local")
                .env("GOFLAGS", "-buildvcs=false"),
        );
        let deadlock = i % 4 == 3;
        let mut cmd = Command::new(&bin);
        if deadlock {
            cmd.env("DEADLOCK", "1");
        }
        let (pid, st) = run(&mut cmd);
        assert_eq!(st.code(), Some(2), "{}", bin.display());
        let r = a.report_for(pid);
        // The probes missed it (a first run): the Go section comes from what the runtime
        // printed, as its last words hold it.
        let g = &r["go"];
        assert_eq!(g["goroutine"], 1, "{r:#}");
        if deadlock {
            assert_eq!(r["kind"], "go_fatal", "{r}");
            assert_eq!(
                r["error"]["message"],
                "all goroutines are asleep - deadlock!"
            );
            assert_eq!(g["fatal_message"], "all goroutines are asleep - deadlock!");
        } else {
            assert_eq!(r["kind"], "go_panic", "{r}");
            assert_eq!(r["error"]["message"], format!("init failed in build{i}"));
            assert_eq!(r["error"]["frames"][0]["function"], "main.init.0", "{r}");
            assert_eq!(
                g["panic_value"],
                format!("init failed in build{i}"),
                "{r:#}"
            );
            assert_eq!(
                g["goroutines"][0]["frames"][0]["function"], "main.init.0",
                "{r:#}"
            );
        }
    }
}

#[test]
fn python_uncaught_exception_with_its_cause() {
    let a = agent();
    let py = write(
        "chained.py",
        "def parse(s):\n    return int(s)\n\ndef load():\n    try:\n        parse('x1')\n    except ValueError as e:\n        raise RuntimeError('config broken') from e\n\nload()\n",
    );
    let (pid, st) = run(Command::new("python3").arg(&py));
    assert_eq!(st.code(), Some(1));
    let r = a.report_for(pid);
    assert_eq!(
        error(&r),
        ("runtime_error", "python", "uncaught_exception"),
        "{r}"
    );
    let e = &r["error"];
    assert_eq!(e["headline"], "RuntimeError: config broken");
    assert_eq!(e["chain"][0]["type"], "ValueError");
    assert_eq!(e["chain"][1]["relation"], "direct_cause");
    assert_eq!(
        (
            e["frames"][0]["function"].as_str(),
            e["frames"][0]["line"].as_u64()
        ),
        (Some("load"), Some(8))
    );
    // What the process wrote before (here, maybe a pyenv shim's complaint) is looked back
    // at, then the whole traceback.
    let words = r["last_words"]["text"].as_str().unwrap();
    assert!(
        words.contains("\nTraceback (most recent call last):\n")
            || words.starts_with("Traceback (most recent call last):\n"),
        "{words:?}"
    );
    assert!(
        words.ends_with("RuntimeError: config broken\n"),
        "{words:?}"
    );
}

#[test]
fn node_throw() {
    let a = agent();
    let js = write(
        "throw.js",
        "function load(cfg) {\n  if (!cfg) throw new TypeError('cfg is required');\n}\nload(null);\n",
    );
    let (pid, st) = run(Command::new("node").arg(&js));
    assert_eq!(st.code(), Some(1));
    let r = a.report_for(pid);
    assert_eq!(
        error(&r),
        ("runtime_error", "node", "uncaught_exception"),
        "{r}"
    );
    assert_eq!(r["error"]["headline"], "TypeError: cfg is required");
    assert_eq!(r["error"]["frames"][0]["function"], "load");
    assert_eq!(r["error"]["location"]["line"], 2);
}

#[test]
fn java_uncaught_exception_with_caused_by() {
    let a = agent();
    let d = dir().join("java");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(
        d.join("Main.java"),
        "public class Main {\n  static void parse(String s) { Integer.parseInt(s); }\n  public static void main(String[] a) {\n    try { parse(\"x1\"); } catch (NumberFormatException e) { throw new IllegalStateException(\"config broken\", e); }\n  }\n}\n",
    )
    .unwrap();
    compile(Command::new("javac").arg("Main.java").current_dir(&d));
    let (pid, st) = run(Command::new("java")
        .args(["-cp", "."])
        .arg("Main")
        .current_dir(&d));
    assert_eq!(st.code(), Some(1));
    let r = a.report_for(pid);
    assert_eq!(
        error(&r),
        ("runtime_error", "java", "uncaught_exception"),
        "{r}"
    );
    let e = &r["error"];
    assert_eq!(e["type"], "java.lang.IllegalStateException");
    assert_eq!(e["thread"], "main");
    assert_eq!(e["chain"][1]["relation"], "caused_by");
    assert_eq!(e["chain"][1]["type"], "java.lang.NumberFormatException");
}

/// A JVM dying of a native fault prints its fatal-error banner to stdout, in dozens of small
/// writes, then aborts (or exits 1 with `-XX:-CreateCoredumpOnCrash`): both are reported with
/// the banner's headline and problematic frame. Stdout is otherwise not kept: a program that
/// prints a Java exception to stdout and exits 1 gives no report.
#[test]
fn jvm_fatal_error_banner_on_stdout() {
    let a = agent();
    let d = dir().join("jvm");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(
        d.join("Crash.java"),
        "public class Crash {\n  public static void main(String[] a) throws Exception {\n    System.out.println(\"before-the-banner\");\n    java.lang.reflect.Field f = sun.misc.Unsafe.class.getDeclaredField(\"theUnsafe\");\n    f.setAccessible(true);\n    ((sun.misc.Unsafe) f.get(null)).putAddress(0, 0);\n  }\n}\n",
    )
    .unwrap();
    compile(
        Command::new("javac")
            .args(["-nowarn", "Crash.java"])
            .current_dir(&d),
    );
    let java = |extra: &[&str]| {
        run(Command::new("java")
            .args(["-Xshare:auto", "-XX:ErrorFile=/dev/null", "-cp", "."])
            .args(extra)
            .arg("Crash")
            .current_dir(&d))
    };
    use std::os::unix::process::ExitStatusExt;
    let (pid, st) = java(&[]);
    assert_eq!(st.signal(), Some(libc::SIGABRT), "{st:?}");
    let r = a.report_for(pid);
    assert_eq!(error(&r), ("signal", "java", "fatal_error"), "{r}");
    let e = &r["error"];
    assert!(
        e["headline"]
            .as_str()
            .is_some_and(|h| h.starts_with("SIGSEGV (0xb) at pc=")),
        "{r}"
    );
    assert!(
        e["frames"][0]["function"]
            .as_str()
            .is_some_and(|f| f.contains("libjvm.so")),
        "{r}"
    );
    let words = r["last_words"]["text"].as_str().unwrap_or_default();
    assert!(
        !words.contains("before-the-banner"),
        "stdout before the banner kept: {r}"
    );

    let (pid, st) = java(&["-XX:-CreateCoredumpOnCrash"]);
    assert_eq!(st.code(), Some(1), "{st:?}");
    let r = a.report_for(pid);
    assert_eq!(error(&r), ("runtime_error", "java", "fatal_error"), "{r}");

    let fake = "import os, sys\nos.write(1, b'Exception in thread \"main\" java.lang.IllegalStateException: x\\n')\nsys.exit(1)\n";
    let (pid, st) = run(Command::new("python3").args(["-c", fake]));
    assert_eq!(st.code(), Some(1));
    a.assert_no_report(pid);
}

/// A panic in a named thread of a program built with `panic=abort`: the process dies of
/// SIGABRT and the report says which thread panicked, where and why.
#[test]
fn rust_panic_in_a_named_thread_takes_the_process_down() {
    let a = agent();
    let src = write(
        "worker.rs",
        "fn main() {\n    let h = std::thread::Builder::new().name(\"worker-7\".into()).spawn(|| {\n        let v: Vec<u32> = Vec::new();\n        v[std::env::args().count() + 3]\n    }).unwrap();\n    h.join().unwrap();\n}\n",
    );
    let bin = dir().join("worker");
    compile(
        Command::new("rustc")
            .args(["-C", "panic=abort", "-o"])
            .arg(&bin)
            .arg(&src),
    );
    let (pid, st) = run(Command::new(&bin).env_remove("RUST_BACKTRACE"));
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(st.signal(), Some(libc::SIGABRT));
    let r = a.report_for(pid);
    assert_eq!(error(&r), ("signal", "rust", "panic"), "{r}");
    let e = &r["error"];
    assert_eq!(e["thread"], "worker-7");
    assert_eq!(
        e["message"],
        "index out of bounds: the len is 0 but the index is 4"
    );
    assert_eq!(e["location"]["line"], 4);
    // An unwinding panic exits 101 instead.
    let bin = dir().join("worker-unwind");
    compile(Command::new("rustc").arg("-o").arg(&bin).arg(&src));
    let (pid, st) = run(Command::new(&bin).env_remove("RUST_BACKTRACE"));
    assert_eq!(st.code(), Some(101));
    let r = a.report_for(pid);
    assert_eq!(error(&r), ("runtime_error", "rust", "panic"), "{r}");
}

#[test]
fn cpp_uncaught_exception() {
    let a = agent();
    let src = write(
        "throw.cc",
        "#include <stdexcept>\nint main() { throw std::runtime_error(\"config broken\"); }\n",
    );
    let bin = dir().join("throw-cc");
    compile(Command::new("g++").arg("-o").arg(&bin).arg(&src));
    let (pid, _) = run(&mut Command::new(&bin));
    let r = a.report_for(pid);
    assert_eq!(error(&r), ("signal", "c++", "uncaught_exception"), "{r}");
    assert_eq!(r["error"]["type"], "std::runtime_error");
    assert_eq!(r["error"]["message"], "config broken");
}

/// A launcher that writes to stderr and then execs the program (pyenv's shim, a shell script
/// ending in `exec python3`): the report names what died, not the launcher, however often the
/// agent has seen both files (once it knows them, their execs are no longer sent).
#[test]
fn a_launchers_words_before_its_exec_do_not_name_the_process() {
    let a = agent();
    let script = write(
        "launcher.sh",
        // bash itself writes to fd 2 (as pyenv's shim does: `enable: cannot open shared
        // object`); `echo >&2` would write to fd 1, dup'ed.
        "#!/bin/bash\nenable no_such_builtin\nexec /usr/bin/python3 -c 'raise ValueError(\"from the launched\")'\n",
    );
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let python = std::fs::canonicalize("/usr/bin/python3").unwrap();
    // The agent classifies both files from their first execs (reading each while a process
    // runs it); from then on their execs are not sent, and only what the kernel read at the
    // crash names the process.
    for _ in 0..3 {
        run(Command::new("/bin/bash").args(["-c", "sleep 0.3"]));
        run(Command::new("/usr/bin/python3").args(["-c", "import time; time.sleep(0.3)"]));
        a.flush();
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    for run_no in 0..4 {
        let (pid, st) = run(&mut Command::new(&script));
        assert_eq!(st.code(), Some(1));
        let r = a.report_for(pid);
        assert_eq!(
            (r["exe"].as_str(), r["cmdline"][0].as_str()),
            (python.to_str(), Some("/usr/bin/python3")),
            "run {run_no}: {r:#}"
        );
        assert_eq!(error(&r), ("runtime_error", "python", "uncaught_exception"));
        // Time for the agent to classify both files, so later execs are not sent.
        a.flush();
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
}

/// What looks like dying words is nothing without the death it explains: a fake traceback
/// then exit 0, and a usage message then exit 1, give no report.
#[test]
fn words_without_the_death_they_explain_are_no_crash() {
    let a = agent();
    let fake = "import sys\nsys.stderr.write('Traceback (most recent call last):\\n  File \"x\", line 1, in <module>\\nValueError: fake\\n')\n";
    let (pid, st) = run(Command::new("python3").args(["-c", fake]));
    assert_eq!(st.code(), Some(0));
    a.assert_no_report(pid);
    let usage = "import sys\nsys.stderr.write('usage: tool [-h] FILE\\n')\nsys.exit(1)\n";
    let (pid, st) = run(Command::new("python3").args(["-c", usage]));
    assert_eq!(st.code(), Some(1));
    a.assert_no_report(pid);
    // The same traceback with exit 1 is a crash.
    let real = format!("{fake}sys.exit(1)\n");
    let (pid, _) = run(Command::new("python3").args(["-c", &real]));
    assert_eq!(
        error(&a.report_for(pid)),
        ("runtime_error", "python", "uncaught_exception")
    );
}
