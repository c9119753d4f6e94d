//! Go deaths outside the matrix: what must not be a panic, nested panics, `GOTRACEBACK=crash`
//! and a panic inside a podman container.
use std::{
    path::PathBuf,
    process::{Command, Stdio},
};

use super::{
    common::{
        agent,
        gobuild::{self, Flavour, VERSIONS},
        podman::{Container, Image},
        Agent,
    },
    primed, run,
};

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
    let a = Agent::start(&[]);
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
