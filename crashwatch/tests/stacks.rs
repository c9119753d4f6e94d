//! Stacks under the real agent, judged by gdb: the same program, built the way distro
//! binaries are (optimized, no frame pointers), is run under gdb in the test, and the agent's
//! frames must name the same functions in the same order. Needs root, gcc, g++ and gdb.
mod common;

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use common::{agent, Crasher};
use serde_json::Value;

/// Builds `src` (in tests/stacks) with `compiler` and `flags`, once per test binary and name.
fn build(name: &str, compiler: &str, src: &str, flags: &[&str]) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/stacks")
        .join(src);
    let out = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("stacks-{name}-{}", std::process::id()));
    if !out.exists() {
        let st = Command::new(compiler)
            .args(flags)
            .arg("-o")
            .arg(&out)
            .arg(&src)
            .status()
            .expect("running the compiler (scripts/setup.sh installs it)");
        assert!(st.success(), "{compiler} failed on {}", src.display());
    }
    out
}

fn deep() -> PathBuf {
    build(
        "deep",
        "gcc",
        "deep.c",
        &["-O2", "-g", "-fomit-frame-pointer"],
    )
}

/// gdb's `bt` of `bin args` run to its crash: the function of each frame, innermost first.
fn gdb_functions(bin: &Path, args: &[&str]) -> Vec<String> {
    gdb_frames(bin, args).into_iter().map(|f| f.0).collect()
}

/// gdb's `bt`: each frame's function and, where gdb has one, `file-name:line`.
fn gdb_frames(bin: &Path, args: &[&str]) -> Vec<(String, Option<String>)> {
    let out = Command::new("gdb")
        .args(["-nx", "-batch", "-ex", "set backtrace past-main on"])
        .args([
            "-ex",
            "set backtrace past-entry on",
            "-ex",
            "run",
            "-ex",
            "bt",
            "--args",
        ])
        .arg(bin)
        .args(args)
        .output()
        .expect("running gdb (scripts/setup.sh installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    let frames: Vec<(String, Option<String>)> = text
        .lines()
        .filter(|l| l.starts_with('#'))
        .filter_map(|l| {
            let at = l.rsplit_once(") at ").map(|(_, w)| base_line(w));
            // "#1  0x... in name (args) at file:line" or "#0  name (args) at file:line"
            // The frame number's width varies ("#9  0x…", "#10 0x…").
            let rest = l.split_once(' ')?.1.trim_start();
            let rest = match rest.split_once(" in ") {
                Some((addr, r)) if addr.starts_with("0x") => r,
                _ => rest,
            };
            Some((rest.split(" (").next()?.trim().to_string(), at))
        })
        .collect();
    assert!(!frames.is_empty(), "gdb printed no backtrace:\n{text}");
    frames
}

/// `dir/file.rs:12` → `file.rs:12`.
fn base_line(at: &str) -> String {
    at.trim().rsplit('/').next().unwrap_or(at).to_string()
}

/// The report's frames as gdb prints positions: `file-name:line`, where it has one.
fn positions(r: &Value) -> Vec<Option<String>> {
    r["stack"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let file = f["file"].as_str()?;
            Some(base_line(&format!("{file}:{}", f["line"].as_u64()?)))
        })
        .collect()
}

fn quiet(bin: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(bin);
    cmd.args(args).stdout(Stdio::null()).stderr(Stdio::null());
    cmd
}

fn functions(r: &Value) -> Vec<String> {
    r["stack"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["function"].as_str().unwrap_or("?").to_string())
        .collect()
}

fn run(bin: &Path, args: &[&str]) -> Value {
    let a = agent();
    let c = Crasher::finish(common::spawn(&mut quiet(bin, args)));
    a.report_for(c.pid)
}

/// Every frame has a function, and a source line where gdb had one.
fn assert_all_named(r: &Value) {
    for f in r["stack"].as_array().unwrap() {
        assert!(
            f["function"].is_string(),
            "unnamed frame {f}\nstack: {:#}",
            r["stack"]
        );
    }
}

#[test]
fn optimized_c_without_frame_pointers_matches_gdb() {
    let bin = deep();
    let want = gdb_functions(&bin, &[]);
    let r = run(&bin, &[]);
    assert_eq!(functions(&r), want, "stack: {:#}", r["stack"]);
    assert_all_named(&r);
    let top = &r["stack"][0];
    assert_eq!(
        top["file"].as_str().map(|f| f.ends_with("deep.c")),
        Some(true)
    );
    assert_eq!(top["line"], 5);
    assert_eq!(top["found_by"], "cfi");
}

/// Stripped the way Fedora ships binaries: no `.symtab`, function symbols only in
/// MiniDebugInfo (an xz-compressed ELF in `.gnu_debugdata`). Named as the unstripped build is.
#[test]
fn minidebuginfo_names_a_stripped_binary() {
    let bin = deep();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("mini-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mini = dir.join("deep-mini");
    // The recipe of gdb's manual ("MiniDebugInfo"), as distributions run it.
    let script = format!(
        r#"set -e
cd {dir}
cp {bin} bin
nm -D bin --format=posix --defined-only | awk '{{print $1}}' | sort > dynsyms
nm bin --format=posix --defined-only | awk '{{ if ($2 == "T" || $2 == "t" || $2 == "D") print $1 }}' | sort > funcsyms
comm -13 dynsyms funcsyms > keep
objcopy --only-keep-debug bin debug
objcopy -S --remove-section .gdb_index --remove-section .comment --keep-symbols=keep debug mini
strip --strip-all -R .comment bin
xz -f mini
objcopy --add-section .gnu_debugdata=mini.xz bin {out}
"#,
        dir = dir.display(),
        bin = bin.display(),
        out = mini.display()
    );
    let st = Command::new("sh").arg("-c").arg(&script).status().unwrap();
    assert!(st.success(), "building the MiniDebugInfo binary");
    let has = |name: &str| {
        let out = Command::new("objdump")
            .arg("-h")
            .arg(&mini)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).contains(name)
    };
    assert!(has(".gnu_debugdata") && !has(".symtab"));
    let want = gdb_functions(&bin, &[]);
    let r = run(&mini, &[]);
    assert_eq!(functions(&r), want, "stack: {:#}", r["stack"]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_fault_inside_libc_matches_gdb() {
    let bin = deep();
    let want = gdb_functions(&bin, &["s"]);
    let r = run(&bin, &["s"]);
    assert_eq!(functions(&r), want, "stack: {:#}", r["stack"]);
    assert_all_named(&r);
    let libc = r["stack"][0]["module"].as_str().unwrap();
    assert!(libc.contains("libc.so"), "top frame in {libc}");
}

#[test]
fn cpp_terminate_is_demangled_down_to_main() {
    let bin = build(
        "throw",
        "g++",
        "throw.cc",
        &["-O2", "-g", "-fomit-frame-pointer"],
    );
    // gdb adds a frame no stack holds: `pthread_kill` jumps (a tail call) into
    // `__pthread_kill_implementation`, and gdb rebuilds the caller it left from DWARF
    // call-site records. The rest must match frame for frame, gdb's `??` (libstdc++'s
    // stripped local functions) included.
    let key = |f: &str| -> String {
        let f = if f == "??" { "?" } else { f };
        f.split('(').next().unwrap().to_string()
    };
    let want: Vec<String> = gdb_functions(&bin, &[])
        .iter()
        .filter(|f| f.as_str() != "__pthread_kill_internal")
        .map(|f| key(f))
        .collect();
    let r = run(&bin, &[]);
    let got: Vec<String> = functions(&r).iter().map(|f| key(f)).collect();
    assert_eq!(got, want, "stack: {:#}", r["stack"]);
    assert!(got.iter().any(|f| f == "app::Config::load"), "{got:?}");
    assert!(got.iter().any(|f| f == "std::terminate"), "{got:?}");
}

/// CPython dying inside libc: a C call (through ctypes and libffi) passing NULL to strlen.
/// Frame for frame as gdb names them, `??` where neither has a symbol (libffi's and
/// `_ctypes`' local functions: Debian strips them).
#[test]
fn cpython_dying_in_libc_matches_gdb() {
    let python = Path::new("/usr/bin/python3");
    let args = ["-c", "import ctypes; ctypes.CDLL(None).strlen(None)"];
    let key = |f: &str| {
        if f == "??" {
            "?".to_string()
        } else {
            f.to_string()
        }
    };
    let want: Vec<String> = gdb_functions(python, &args)
        .iter()
        .map(|f| key(f))
        .collect();
    let r = run(python, &args);
    assert_eq!(functions(&r), want, "stack: {:#}", r["stack"]);
    assert!(
        want.iter().any(|f| f == "_PyEval_EvalFrameDefault"),
        "{want:?}"
    );
}

/// Rust built with `panic = "abort"`: the panic ends in abort(). Rust names are spelled
/// differently by gdb (DWARF's) and by symbol tables, so each frame is judged by its position:
/// the same file and line as gdb's, frame for frame, every frame named.
#[test]
fn rust_panic_abort_matches_gdb_frame_for_frame() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/stacks/abort.rs");
    let bin = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("stacks-rust-abort-{}", std::process::id()));
    let st = Command::new("rustc")
        .args(["-O", "-g", "-C", "panic=abort", "-o"])
        .arg(&bin)
        .arg(&src)
        .status()
        .expect("running rustc");
    assert!(st.success());
    // Less gdb's tail-call frame (see the C++ test).
    let want: Vec<(String, Option<String>)> = gdb_frames(&bin, &[])
        .into_iter()
        .filter(|f| f.0 != "__pthread_kill_internal")
        .collect();
    let r = run(&bin, &[]);
    assert_all_named(&r);
    let got = positions(&r);
    let want_at: Vec<Option<String>> = want.iter().map(|f| f.1.clone()).collect();
    assert_eq!(got, want_at, "gdb: {want:#?}\nstack: {:#}", r["stack"]);
    let names = functions(&r);
    assert!(names.iter().any(|n| n == "abort::parse_port"), "{names:?}");
    assert!(names.iter().any(|n| n == "abort::main"), "{names:?}");
}

/// 100 runs each of a program that faults at the first instruction of `main` and one that
/// faults inside libc: they die at once, most before the agent reads their record, and must
/// be named as fully as a process that lingers.
#[test]
fn processes_gone_before_their_record_is_read_are_named_in_full() {
    let first = build("first", "gcc", "first.S", &["-g"]);
    let libc = deep();
    let a = agent();
    for (bin, args, top) in [(&first, vec![], "main"), (&libc, vec!["s"], "strlen")] {
        let mut pids = Vec::new();
        for _ in 0..100 {
            pids.push(Crasher::finish(common::spawn(&mut quiet(bin, &args))).pid);
        }
        for (i, pid) in pids.into_iter().enumerate() {
            let r = a.report_for(pid);
            if r["stack"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| !f["function"].is_string())
            {
                panic!("run {i}: {r:#}\nagent log:\n{}", a.log());
            }
            let f = functions(&r);
            assert!(f[0].contains(top), "pid {pid}: {f:?}");
            assert!(
                f.iter()
                    .any(|n| n == "__libc_start_main_impl" || n == "__libc_start_main"),
                "pid {pid}: {f:?}"
            );
            assert!(f.len() >= 4, "pid {pid}: {f:?}");
        }
    }
}

/// A process in a container, crashed in libc and reaped while the agent is stopped: its libraries are
/// the container's, opened under the container's root the agent has held since the exec, and
/// named as fully as on the host.
#[test]
fn a_container_process_gone_before_its_record_is_read_is_named_in_full() {
    use common::podman::{Container, Image};
    use std::os::unix::fs::MetadataExt;
    let a = common::Agent::start(&[]);
    let image = Image::of_program("crasher", common::crasher_bin(), "/crasher");
    let ctr = Container::run(&image, &["/crasher", "libc-on-usr1"]);
    let pid = ctr.pid;
    // The agent holds the container's root once it has seen the exec.
    let root = std::fs::metadata(format!("/proc/{pid}/root")).unwrap();
    let holds = || {
        std::fs::read_dir(format!("/proc/{}/fd", a.pid))
            .unwrap()
            .flatten()
            .filter_map(|e| std::fs::metadata(e.path()).ok())
            .any(|m| (m.dev(), m.ino()) == (root.dev(), root.ino()))
    };
    assert!(
        a.wait_for(|| holds().then_some(())).is_some(),
        "the agent never held the container's root; log:\n{}",
        a.log()
    );
    // SIGUSR1 (bit 9 of SigCgt) is handled: a container's first process drops the rest.
    let handles_usr1 = || {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let cgt = status.lines().find_map(|l| l.strip_prefix("SigCgt:"))?;
        let mask = u64::from_str_radix(cgt.trim(), 16).ok()?;
        (mask & (1 << (libc::SIGUSR1 - 1)) != 0).then_some(())
    };
    assert!(a.wait_for(handles_usr1).is_some(), "no SIGUSR1 handler");
    a.signal(libc::SIGSTOP);
    unsafe { libc::kill(pid as i32, libc::SIGUSR1) };
    let status = ctr.wait();
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "the container's process outlived `podman wait`"
    );
    a.signal(libc::SIGCONT);
    let r = a.report_for(pid);
    a.signal(libc::SIGTERM);
    assert_eq!(status, "139", "killed by SIGSEGV");
    assert_all_named(&r);
    let f = functions(&r);
    assert!(
        f.iter().any(|n| n == "libc_on_usr1" || n == "main"),
        "{f:?}"
    );
    assert!(
        f.iter()
            .any(|n| n == "__libc_start_main_impl" || n == "__libc_start_main"),
        "{f:?}"
    );
    let top = &r["stack"][0];
    assert_eq!(top["module"], "/lib/x86_64-linux-gnu/libc.so.6", "{top}");
    assert_eq!(top["found_by"], "cfi");
}

/// `crashwatch symbolize --exe` names every instruction of the program's functions as
/// addr2line does from the same DWARF: function, file and line.
#[test]
fn symbolize_command_agrees_with_addr2line() {
    let bin = deep();
    let nm = Command::new("nm")
        .arg(&bin)
        .output()
        .expect("nm (binutils)");
    let funcs: Vec<(u64, String)> = String::from_utf8_lossy(&nm.stdout)
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let (a, t, n) = (w.next()?, w.next()?, w.next()?);
            let keep = t == "T" && (n == "main" || (n.len() == 2 && n.starts_with('d')));
            keep.then(|| (u64::from_str_radix(a, 16).ok(), n.to_string()))
                .and_then(|(a, n)| Some((a?, n)))
        })
        .collect();
    assert_eq!(funcs.len(), 5, "{funcs:?}");
    let addrs: Vec<String> = funcs
        .iter()
        .flat_map(|(a, _)| (0..4).map(move |i| format!("{:#x}", a + i)))
        .collect();
    let ours = Command::new(common::agent_bin())
        .args(["symbolize", "--exe"])
        .arg(&bin)
        .args(&addrs)
        .output()
        .unwrap();
    assert!(ours.status.success(), "{ours:?}");
    let theirs = Command::new("addr2line")
        .args(["-f", "-e"])
        .arg(&bin)
        .args(&addrs)
        .output()
        .unwrap();
    let theirs = String::from_utf8_lossy(&theirs.stdout);
    let theirs: Vec<String> = theirs
        .lines()
        .collect::<Vec<_>>()
        .chunks(2)
        .map(|c| {
            let line = c[1].split(" (discriminator").next().unwrap();
            format!("{} ({line})", c[0])
        })
        .collect();
    let ours: Vec<String> = String::from_utf8_lossy(&ours.stdout)
        .lines()
        .map(|l| l.split_once(' ').unwrap().1.to_string())
        .collect();
    assert_eq!(ours, theirs);
}
