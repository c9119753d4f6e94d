//! What the benchmark runs: the agent, and the workloads built from xtask/bench and the
//! crash programs of the tests.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Result};

use crate::vm::Paths;

#[derive(Clone)]
pub struct Tools {
    pub agent: PathBuf,
    pub spawn: PathBuf,
    pub writes: PathBuf,
    pub signals: PathBuf,
    pub crasher: PathBuf,
    /// The dumps tests' program (`big MIB`: touch that much memory, then crash).
    pub threads: PathBuf,
    pub gocrash: PathBuf,
    pub gowrite: Vec<(String, PathBuf)>,
    /// Go's debug/gosym over a binary (xtask/bench/gosym).
    pub gosym: PathBuf,
}

pub fn build(p: &Paths) -> Result<Tools> {
    let out = p.vm.parent().unwrap().join("bench");
    fs::create_dir_all(&out)?;
    eprintln!("xtask bench: building the agent and the workloads");
    let st = crate::dist::cargo()
        .args(["build", "--release", "-p", "crashwatch"])
        .current_dir(&p.root)
        .status()?;
    if !st.success() {
        bail!("cargo build failed");
    }
    let src = p.root.join("xtask/bench");
    let gcc = |name: &str, file: &Path| -> Result<PathBuf> {
        let bin = out.join(name);
        let st = Command::new("gcc")
            .args(["-O2", "-pthread", "-fno-omit-frame-pointer", "-o"])
            .arg(&bin)
            .arg(file)
            .status()?;
        if !st.success() {
            bail!("gcc {}", file.display());
        }
        Ok(bin)
    };
    let gobuild = |go: &str, dir: &Path, name: &str| -> Result<PathBuf> {
        let bin = out.join(name);
        let st = Command::new(go)
            .args(["build", "-buildvcs=false", "-o"])
            .arg(&bin)
            .arg(".")
            .current_dir(dir)
            .env("CGO_ENABLED", "0")
            .env("GOTOOLCHAIN", "local")
            .status()?;
        if !st.success() {
            bail!("{go} build in {}", dir.display());
        }
        Ok(bin)
    };
    let go = |v: &str| format!("/opt/crashwatch-go/{v}/go/bin/go");
    Ok(Tools {
        agent: crate::dist::target_dir(&p.root).join("release/crashwatch"),
        spawn: gcc("spawn", &src.join("spawn.c"))?,
        writes: gcc("writes", &src.join("writes.c"))?,
        signals: gcc("signals", &src.join("signals.c"))?,
        crasher: gcc(
            "crasher",
            &p.root.join("crashwatch/tests/crashers/crasher.c"),
        )?,
        threads: gcc("threads", &p.root.join("crashwatch/tests/dumps/threads.c"))?,
        gocrash: gobuild(
            &go("1.27"),
            &p.root.join("crashwatch/tests/gocrash"),
            "gocrash",
        )?,
        gosym: gobuild(&go("1.27"), &src.join("gosym"), "gosym")?,
        gowrite: vec![
            (
                "1.21".into(),
                gobuild(&go("1.21"), &src.join("gowrite"), "gowrite-1.21")?,
            ),
            (
                "1.27".into(),
                gobuild(&go("1.27"), &src.join("gowrite"), "gowrite-1.27")?,
            ),
        ],
    })
}
