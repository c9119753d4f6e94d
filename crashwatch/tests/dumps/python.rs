//! Python frames in a native crash: a CPython process that dies of a signal inside C code
//! (ctypes reading address 0 three Python calls deep) gets its Python stack read from its
//! memory while the kernel holds it, each frame named with its file and line, put among the
//! native frames before the eval-loop frame that ran it; and a second thread parked in Python
//! shows where. For Debian's python3 and each CPython 3.9 to 3.13 pyenv holds on this machine.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::Value;

use super::{common, dumping_agent, Pattern};

const SCRIPT: &str = r#"import ctypes, sys, threading
ev = threading.Event()
def parked():
    ev.wait()
threading.Thread(target=parked).start()
def crash_in_c():
    return ctypes.string_at(0)
def middle():
    return crash_in_c()
def outer():
    return middle()
print("pid=%d" % __import__("os").getpid(), flush=True)
outer()
"#;

/// The line of `text` in the script.
fn line_of(text: &str) -> u64 {
    SCRIPT.lines().position(|l| l.contains(text)).unwrap() as u64 + 1
}

/// Debian's python3 and each pyenv CPython 3.9 to 3.13 found: (its path, its `3.X`).
fn interpreters() -> Vec<(PathBuf, String)> {
    let mut v = vec![(
        PathBuf::from("/usr/bin/python3"),
        version(Path::new("/usr/bin/python3")),
    )];
    let root = std::env::var("PYENV_ROOT").unwrap_or_else(|_| "/root/.pyenv".into());
    for minor in 9..=13 {
        let found = std::fs::read_dir(format!("{root}/versions"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path().join(format!("bin/python3.{minor}")))
            .find(|p| p.is_file());
        match found {
            Some(p) => v.push((p, format!("3.{minor}"))),
            None => println!("CPython 3.{minor}: not installed here, not tested"),
        }
    }
    v
}

fn version(py: &Path) -> String {
    let out = Command::new(py)
        .args(["-c", "import sys; print('%d.%d' % sys.version_info[:2])"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn python_frames(stack: &Value) -> Vec<(String, String, u64)> {
    stack
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["found_by"] == "python")
        .map(|f| {
            (
                f["function"].as_str().unwrap_or("?").to_string(),
                f["file"].as_str().unwrap_or("?").to_string(),
                f["line"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

#[test]
fn a_cpython_dying_in_c_shows_its_python_frames_among_the_native_ones() {
    let _p = Pattern::hold();
    let a = dumping_agent("python", &[]);
    let dir = common::state_dir("dumps-python");
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("crash.py");
    std::fs::write(&script, SCRIPT).unwrap();
    let script_path = script.to_str().unwrap().to_string();
    for (py, ver) in interpreters() {
        let out = Command::new(&py).arg(&script).output().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(out.status.signal(), Some(11), "{py:?}: {out:?}");
        let pid: u32 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .strip_prefix("pid=")
            .unwrap()
            .parse()
            .unwrap();
        let r = a.report_for(pid);
        let d = &r["dump"]["python"];
        assert_eq!(d["version"], ver.as_str(), "{py:?}: {:#}", r["dump"]);
        assert_eq!(d["cut"], Value::Null, "{py:?}: {d}");
        assert!(d["threads"].as_u64().unwrap() >= 2, "{py:?}: {d}");
        // The crashed thread: ctypes' string_at, then the three calls, then the module.
        let frames = python_frames(&r["stack"]);
        let own: Vec<(String, u64)> = frames
            .iter()
            .filter(|f| f.1 == script_path)
            .map(|f| (f.0.clone(), f.2))
            .collect();
        assert_eq!(
            own,
            [
                ("crash_in_c".to_string(), line_of("ctypes.string_at(0)")),
                ("middle".to_string(), line_of("return crash_in_c()")),
                ("outer".to_string(), line_of("return middle()")),
                ("<module>".to_string(), SCRIPT.lines().count() as u64),
            ],
            "{py:?}: {:#}",
            r["stack"]
        );
        assert!(
            frames[0].0 == "string_at" && frames[0].1.ends_with("ctypes/__init__.py"),
            "{py:?}: {frames:?}"
        );
        // Among the native frames: C code innermost, each Python call before an eval frame.
        let stack = r["stack"].as_array().unwrap();
        assert_ne!(stack[0]["found_by"], "python", "{py:?}: {:#}", r["stack"]);
        let at = |f: &str| stack.iter().position(|x| x["function"] == f).unwrap();
        let eval_after = stack[at("crash_in_c")..].iter().any(|x| {
            x["function"]
                .as_str()
                .is_some_and(|n| n.starts_with("_PyEval_EvalFrameDefault"))
        });
        assert!(eval_after, "{py:?}: {:#}", r["stack"]);
        // The other thread, parked in Event.wait, called from `parked`.
        let parked = r["threads"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| python_frames(&t["stack"]).iter().any(|f| f.0 == "parked"))
            .unwrap_or_else(|| panic!("{py:?}: no thread in parked: {:#}", r["threads"]));
        let f = python_frames(&parked["stack"]);
        let p = f.iter().position(|f| f.0 == "parked").unwrap();
        assert_eq!(f[p].2, line_of("ev.wait()"), "{py:?}: {f:?}");
        assert!(
            f[..p]
                .iter()
                .any(|f| f.0.ends_with("wait") && f.1.ends_with("threading.py")),
            "{py:?}: {f:?}"
        );
        // The crashed thread's own entry agrees.
        assert_eq!(python_frames(&r["threads"][0]["stack"]), frames, "{py:?}");
        println!(
            "{ver} ({}): {} Python frames on the crashed thread",
            py.display(),
            frames.len()
        );
    }
}
