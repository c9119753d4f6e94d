//! Whole cores kept (`run --dumps --keep-cores`): written out by `crashwatch dump --core` as
//! the kernel wrote them, opened by `crashwatch debug` in gdb with every thread named, kept
//! per cluster as minidumps are (its first and latest) and removed with their reports; a
//! core past its quota dropped as it grows and said, the report whole without it; a
//! container's crash debugged through the container's root while it runs.
use std::{path::PathBuf, process::Command};

use serde_json::Value;

use super::{common, dumping_agent, functions, program, run, Pattern, OWN};

/// The store's id of the report `r` (its cluster's page lists each report's pid).
fn report_id(a: &common::Agent, r: &Value) -> String {
    let at = a.metrics_addr().expect("the agent's listener");
    let cluster = r["cluster"]["id"].as_i64().unwrap();
    let (_, body) = common::http_get(&at, &format!("/api/clusters/{cluster}")).unwrap();
    let detail: Value = serde_json::from_str(&body).unwrap();
    detail["reports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|row| row["pid"] == r["pid"])
        .unwrap_or_else(|| panic!("pid {} not in {detail:#}", r["pid"]))["id"]
        .to_string()
}

/// `crashwatch debug ID -- -batch -ex 'thread apply all bt'`: gdb's output.
fn debug(state: &std::path::Path, id: &str, extra: &[&str]) -> (bool, String) {
    let out = Command::new(common::agent_bin())
        .args(["debug", id, "--state-dir"])
        .arg(state)
        .args(extra)
        .args(["--", "-nx", "-batch", "-ex", "thread apply all bt"])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn a_kept_core_opens_in_gdb_thread_by_thread_and_goes_with_its_report() {
    let _p = Pattern::hold();
    let state = common::state_dir("dumps-cores");
    let a = dumping_agent(
        "cores",
        &["--keep-cores", "--state-dir", state.to_str().unwrap()],
    );
    // Six crashes of one bug: the cluster keeps the cores of its first and latest four.
    let reports: Vec<Value> = (0..6)
        .map(|_| {
            let c = run(&["threads"]);
            assert_eq!(c.signal, Some(11));
            a.report_for(c.pid)
        })
        .collect();
    a.flush();
    let cores: Vec<PathBuf> = reports
        .iter()
        .map(|r| PathBuf::from(r["dump"]["core"].as_str().expect("a core kept")))
        .collect();
    for (r, core) in reports.iter().zip(&cores) {
        assert_eq!(core.parent(), Some(state.join("dumps").as_path()));
        assert!(core.to_str().unwrap().ends_with(".core.zst"), "{core:?}");
        assert!(
            r["dump"]["core_bytes"].as_u64().unwrap() > 0,
            "{}",
            r["dump"]
        );
        assert_eq!(r["dump"]["core_missing"], Value::Null);
    }
    let gone: Vec<bool> = cores.iter().map(|c| !c.exists()).collect();
    assert_eq!(gone, [false, true, false, false, false, false], "{cores:?}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&cores[0]).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    // Written out whole: the ELF core the kernel wrote, as many bytes as it streamed.
    let r = &reports[5];
    let id = report_id(&a, r);
    let out = state.join("out.core");
    let st = Command::new(common::agent_bin())
        .args([
            "dump",
            &id,
            "--core",
            "-o",
            out.to_str().unwrap(),
            "--state-dir",
        ])
        .arg(&state)
        .status()
        .unwrap();
    assert!(st.success());
    let core = std::fs::read(&out).unwrap();
    assert_eq!(&core[..4], b"\x7fELF");
    assert_eq!(u16::from_le_bytes([core[16], core[17]]), 4, "ET_CORE");
    assert_eq!(core.len() as u64, r["dump"]["bytes"].as_u64().unwrap());

    // gdb on it through `crashwatch debug` names each thread's frames as the report does.
    let (ok, text) = debug(&state, &id, &[]);
    assert!(ok, "{text}");
    let threads = text.lines().filter(|l| l.starts_with("Thread ")).count();
    assert_eq!(threads, r["threads"].as_array().unwrap().len(), "{text}");
    for t in r["threads"].as_array().unwrap() {
        for f in functions(&t["stack"])
            .iter()
            .filter(|f| OWN.contains(&f.as_str()))
        {
            assert!(text.contains(&format!(" {f} (")), "gdb lacks {f}:\n{text}");
        }
    }
    assert!(text.contains("crash_here"), "{text}");
    // The temporary uncompressed core is gone with gdb.
    let left: Vec<_> = std::fs::read_dir("/var/tmp")
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&format!("crashwatch-{id}-"))
        })
        .collect();
    assert!(left.is_empty(), "{left:?}");

    // A report without a kept core says why it cannot be debugged.
    let (ok, text) = debug(&state, "999999", &[]);
    assert!(!ok && text.contains("no report 999999"), "{text}");
}

#[test]
fn a_core_past_its_quota_is_dropped_as_it_grows_and_said() {
    let _p = Pattern::hold();
    let state = common::state_dir("dumps-quota");
    let a = dumping_agent(
        "quota",
        &[
            "--keep-cores",
            "--cores-max",
            "4",
            "--state-dir",
            state.to_str().unwrap(),
        ],
    );
    // 32 MiB no compressor shrinks: past the 4 MiB the cores may take.
    let c = run(&["big", "32", "noise"]);
    assert_eq!(c.signal, Some(11));
    let r = a.report_for(c.pid);
    let d = &r["dump"];
    assert_eq!(d["core"], Value::Null, "{d}");
    let why = d["core_missing"].as_str().expect("why the core is missing");
    assert!(why.contains("outgrew the 4 MiB"), "{why}");
    // Counted where an operator watches.
    assert_eq!(
        a.metric(r#"crashwatch_dump_files_dropped_total{file="core"}"#),
        Some(1.0)
    );
    assert_eq!(
        a.metric(r#"crashwatch_dump_files_dropped_total{file="minidump"}"#),
        None
    );
    // The dump itself is whole: its threads and minidump are there.
    assert_eq!(d["cut"], Value::Null, "{d}");
    assert!(d["minidump"].is_string(), "{d}");
    assert_eq!(functions(&r["threads"][0]["stack"])[0], "crash_here");
    let left: Vec<_> = std::fs::read_dir(state.join("dumps"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".core"))
        .collect();
    assert!(left.is_empty(), "no part left behind: {left:?}");
}

/// A crash in a container that goes on running (another process in it crashed): the
/// report names the container's root as the agent sees it, and `crashwatch debug` gives gdb
/// that root, so the program and libraries are the container's. Once the container is gone,
/// `debug` says so rather than reading the host's files.
#[test]
fn a_containers_core_is_debugged_through_its_root_while_it_runs() {
    use common::podman::{Container, Image, GLOBAL};
    let _p = Pattern::hold();
    let state = common::state_dir("dumps-ctr-cores");
    let a = dumping_agent(
        "ctr-cores",
        &["--keep-cores", "--state-dir", state.to_str().unwrap()],
    );
    let image = Image::of_program("dump-threads", program(), "/threads");
    let ctr = Container::run(&image, &["/threads", "wait"]);
    let out = Command::new("podman")
        .args(GLOBAL)
        .args(["exec", &ctr.id, "/threads", "threads"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(139), "killed by SIGSEGV: {out:?}");
    let r = a
        .wait_for(|| {
            a.reports()
                .into_iter()
                .find(|r| r["exe"] == "/threads" && r["pid"] != ctr.pid)
        })
        .expect("the exec'd process's report");
    let root = r["dump"]["root"].as_str().expect("the container's root");
    assert!(
        std::path::Path::new(root).join("threads").is_file(),
        "{root}"
    );
    a.flush();
    let id = report_id(&a, &r);
    let (ok, text) = debug(&state, &id, &[]);
    assert!(ok, "{text}");
    assert!(
        text.contains(" worker (") && text.contains("crash_here"),
        "{text}"
    );
    assert!(!text.contains("is not at /threads"), "{text}");
    drop(ctr);
    let (ok, text) = debug(&state, &id, &[]);
    assert!(!ok && text.contains("the container stopped"), "{text}");
    let (ok, text) = debug(&state, &id, &["--sysroot", "/"]);
    assert!(ok && text.contains("gdb reads the core alone"), "{text}");
}
