//! The crash history: clusters counted on the reports, a crash loop flagged, counts kept
//! across an agent restart, a damaged database moved aside, and `crashwatch report` (text
//! and JSON) showing the crashes this test caused. Needs root (CI runs as root).
mod common;

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use common::{agent_bin, state_dir, Agent, Crasher};
use serde_json::Value;

/// Every agent sees every crash on the host: one test at a time, or each counts the other's.
static ALONE: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn alone() -> std::sync::MutexGuard<'static, ()> {
    ALONE.lock().unwrap_or_else(|e| e.into_inner())
}

fn report_cmd(dir: &Path, extra: &[&str]) -> (bool, String, String) {
    let out = Command::new(agent_bin())
        .arg("report")
        .arg("--state-dir")
        .arg(dir)
        // The loop the test's agents flag.
        .args(["--loop-count", "3"])
        .args(extra)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `report --json` once the store holds `count` crashes of cluster `id` (its writes are
/// asynchronous).
fn listing_when(dir: &Path, id: i64, count: u64) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (ok, out, err) = report_cmd(dir, &["--json"]);
        if ok {
            let v: Vec<Value> = serde_json::from_str(&out).unwrap();
            if v.iter().any(|c| c["id"] == id && c["count"] == count) {
                return v;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the store never showed {count} crashes in cluster {id}: {out}{err}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn clusters_loops_restarts_and_the_report_command() {
    let _alone = alone();
    let dir = state_dir("history");
    let d = dir.display().to_string();
    let args = [
        "--state-dir",
        &d,
        "--loop-count",
        "3",
        "--loop-window",
        "600",
    ];
    let (ok, _, err) = report_cmd(&dir, &[]);
    assert!(!ok && err.contains("no crash history"), "{err}");

    let a = Agent::start(&args);
    let clusters: Vec<Value> = (0..4)
        .map(|_| {
            let c = Crasher::run("null");
            a.report_for(c.pid)["cluster"].clone()
        })
        .collect();
    let id = clusters[0]["id"].as_i64().unwrap();
    for (i, c) in clusters.iter().enumerate() {
        assert_eq!(c["id"], id, "one bug, one cluster: {c}");
        assert_eq!(c["count"], i as u64 + 1);
        assert_eq!(c["new"], i == 0);
        assert_eq!(c["loop"], i >= 2, "3 crashes within 600 s are a loop: {c}");
    }
    let abort = Crasher::run("abort");
    let other = a.report_for(abort.pid)["cluster"].clone();
    assert_ne!(other["id"], id);
    assert_eq!(
        (other["count"].as_u64(), other["new"].as_bool()),
        (Some(1), Some(true))
    );

    let listing = listing_when(&dir, other["id"].as_i64().unwrap(), 1);
    let listing = if listing.iter().any(|c| c["id"] == id && c["count"] == 4) {
        listing
    } else {
        listing_when(&dir, id, 4)
    };
    assert_eq!(listing.len(), 2, "{listing:#?}");
    assert_eq!(listing[0]["id"], other["id"], "most recent first");
    let null = &listing[1];
    assert_eq!(null["loop"], true);
    assert_eq!(null["kind"], "signal");
    assert_eq!(null["headline"], "SIGSEGV (SEGV_MAPERR)");
    assert!(
        null["top_frame"]
            .as_str()
            .unwrap()
            .starts_with("null_write"),
        "{null}"
    );
    assert_eq!(null["binaries"][0].as_str(), common::crasher_bin().to_str());

    let (ok, text, _) = report_cmd(&dir, &[]);
    assert!(ok);
    assert!(
        text.contains(&format!(
            "#{id} signal SIGSEGV (SEGV_MAPERR) [CRASH LOOP] — 4 crashes"
        )),
        "{text}"
    );
    let (ok, one, _) = report_cmd(&dir, &[&id.to_string(), "--json"]);
    assert!(ok);
    let one: Value = serde_json::from_str(&one).unwrap();
    assert_eq!(one["reports"].as_array().unwrap().len(), 3, "the latest 3");
    assert_eq!(one["reports"][0]["cluster"]["count"], 4);
    // Without --json: the cluster, then each report as the agent's readable block.
    let (ok, text, err) = report_cmd(&dir, &[&id.to_string()]);
    assert!(ok, "{err}");
    assert!(
        text.starts_with(&format!("#{id} signal SIGSEGV (SEGV_MAPERR)")),
        "{text}"
    );
    let heads: Vec<&str> = text.lines().filter(|l| l.starts_with("✗ ")).collect();
    assert_eq!(heads.len(), 3, "a block per report: {text}");
    let (pid, comm) = (&one["reports"][0]["pid"], &one["reports"][0]["comm"]);
    assert!(
        heads[0].starts_with(&format!(
            "✗ signal SIGSEGV (SEGV_MAPERR) — {} pid {pid} tid {pid}",
            comm.as_str().unwrap()
        )),
        "{text}"
    );
    for part in [
        "  exe ",
        "  signal ",
        "  exit      killed by SIGSEGV",
        "  stack",
        "null_write (",
        "CRASH LOOP",
    ] {
        assert!(text.contains(part), "no {part:?}: {text}");
    }
    assert!(
        !text.contains("\"registers\"") && !text.lines().any(|l| l.trim_start().starts_with('{')),
        "no JSON without --json: {text}"
    );
    let (ok, none, _) = report_cmd(&dir, &["--kind", "go_panic"]);
    assert!(
        ok && none.contains("no crashes recorded that match"),
        "{none}"
    );
    let (ok, _, err) = report_cmd(&dir, &["999"]);
    assert!(!ok && err.contains("no cluster 999"), "{err}");

    // The counts outlive the agent.
    a.signal(libc::SIGTERM);
    a.wait_exit(Duration::from_secs(30))
        .expect("the agent stops");
    let b = Agent::start(&args);
    let c = Crasher::run("null");
    let again = b.report_for(c.pid)["cluster"].clone();
    assert_eq!(
        (again["id"].as_i64(), again["count"].as_u64()),
        (Some(id), Some(5))
    );
    assert_eq!(again["new"], false);
    assert!(b.log().contains("2 clusters known"), "{}", b.log());
}

#[test]
fn a_damaged_history_is_moved_aside_and_the_agent_runs_on() {
    let _alone = alone();
    let dir = state_dir("damaged");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("crashwatch.db"), vec![0xa5u8; 64 * 1024]).unwrap();
    let d = dir.display().to_string();
    let a = Agent::start(&["--state-dir", &d]);
    let c = Crasher::run("null");
    let r = a.report_for(c.pid);
    assert_eq!(r["cluster"]["new"], true);
    assert!(a.log().contains("cannot be used"), "{}", a.log());
    let aside = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("crashwatch.db.unreadable-"))
        .count();
    assert_eq!(aside, 1);
    listing_when(&dir, r["cluster"]["id"].as_i64().unwrap(), 1);
}

/// The crasher with its GNU build id's first bytes set to `tag`: a new build of the same
/// program, as a deploy would bring (no compiler needed: the VMs have none).
fn build_of_crasher(tag: u8) -> (Vec<u8>, String) {
    use object::{Object, ObjectSection};
    let mut bytes = std::fs::read(common::crasher_bin()).unwrap();
    let (off, size) = {
        let obj = object::File::parse(&*bytes).unwrap();
        let sec = obj
            .section_by_name(".note.gnu.build-id")
            .expect("the crasher has a GNU build id (gcc's default)");
        let (off, size) = sec.file_range().unwrap();
        (off as usize, size as usize)
    };
    // The note's descriptor, the id itself, ends the section (after 12 bytes of header and
    // "GNU\0").
    let id = &mut bytes[off + 16..off + size];
    id[..4].copy_from_slice(&[tag; 4]);
    let hex = id.iter().map(|b| format!("{b:02x}")).collect();
    (bytes, hex)
}

/// Puts a build in place the way a deploy does (a new file renamed over the old one).
fn deploy(dir: &Path, bytes: &[u8]) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let next = dir.join("svc.next");
    std::fs::write(&next, bytes).unwrap();
    std::fs::set_permissions(&next, std::fs::Permissions::from_mode(0o755)).unwrap();
    let to = dir.join("svc");
    std::fs::rename(&next, &to).unwrap();
    to
}

#[test]
fn a_cluster_that_opens_after_a_deploy_is_a_regression_of_the_new_build() {
    let _alone = alone();
    let dir = state_dir("regression");
    let d = dir.display().to_string();
    let a = Agent::start(&["--state-dir", &d]);
    let bin_dir = state_dir("regression-bin");
    std::fs::create_dir_all(&bin_dir).unwrap();
    let (old, old_id) = build_of_crasher(0xa1);
    let (new, new_id) = build_of_crasher(0xb2);
    assert_ne!(old_id, new_id);

    let svc = deploy(&bin_dir, &old);
    let run = |mode: &str| {
        let c = Crasher::finish(common::spawn(&mut Crasher::command_of(&svc, mode)));
        a.report_for(c.pid)["cluster"].clone()
    };
    let first = run("null");
    assert_eq!(first["new"], true);
    assert_eq!(
        first["regression"],
        Value::Null,
        "the first build seen blames nothing: {first}"
    );

    deploy(&bin_dir, &new);
    let broke = run("abort");
    assert_eq!(broke["new"], true);
    let reg = &broke["regression"];
    assert_eq!(reg["program"], "svc", "{broke}");
    assert_eq!(reg["revision"].as_str(), Some(new_id.as_str()), "{broke}");
    assert_eq!(reg["previous"].as_str(), Some(old_id.as_str()), "{broke}");
    // The old bug in the new build is not the new build's.
    let again = run("null");
    assert_eq!(
        (again["id"].clone(), again["new"].clone()),
        (first["id"].clone(), false.into())
    );
    assert_eq!(again["regression"], Value::Null);

    // The history keeps both builds of the old bug and the regression of the new one.
    let old_bug = first["id"].as_i64().unwrap();
    listing_when(&dir, old_bug, 2);
    let listing = listing_when(&dir, broke["id"].as_i64().unwrap(), 1);
    let row = |id: &Value| listing.iter().find(|c| c["id"] == *id).unwrap().clone();
    let old_row = row(&first["id"]);
    let revisions: Vec<&str> = old_row["builds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["revision"].as_str().unwrap())
        .collect();
    assert_eq!(
        revisions,
        [new_id.as_str(), old_id.as_str()],
        "newest first"
    );
    assert_eq!(
        row(&broke["id"])["regression"].as_str(),
        Some(new_id.as_str())
    );
    let (ok, text, _) = report_cmd(&dir, &[&broke["id"].to_string()]);
    assert!(
        ok && text.contains(&format!(
            "regression opened right after build {}",
            &new_id[..12]
        )),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&bin_dir);
}

/// `--kind` takes the kinds reports have, listed in `--help`; another word is refused with
/// the list and status 2, not read as a filter that matches nothing.
#[test]
fn report_refuses_a_kind_that_is_not_one() {
    let dir = state_dir("kinds");
    // An empty history, as an agent that saw no crash leaves it.
    let made = Command::new(agent_bin())
        .args(["check", "--sinks", "--listen", "off", "--state-dir"])
        .arg(&dir)
        .env("CRASHWATCH_CONFIG", "/dev/null")
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let kinds = [
        "signal",
        "oom_kill",
        "exit",
        "go_panic",
        "go_fatal",
        "runtime_error",
    ];
    let kind_of = |word: &str| {
        Command::new(agent_bin())
            .args(["report", "--kind", word, "--state-dir"])
            .arg(&dir)
            .env("CRASHWATCH_CONFIG", "/dev/null")
            .output()
            .unwrap()
    };
    let out = kind_of("bogus");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(out.stdout.is_empty(), "{out:?}");
    for k in kinds {
        assert!(err.contains(k), "{k} is not named: {err}");
    }
    let help = Command::new(agent_bin())
        .args(["report", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    let kind = help.split("--kind").nth(1).unwrap_or_default();
    for k in kinds {
        assert!(kind.contains(k), "--help does not list {k}: {help}");
    }
    let (ok, none, _) = report_cmd(&dir, &["--kind", "oom_kill"]);
    assert!(
        ok && none.contains("no crashes recorded that match"),
        "{none}"
    );
    // Terminations are never stored: not a kind to look for in the history.
    assert!(!kind.contains("termination"), "{help}");
    let out = kind_of("termination");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}
