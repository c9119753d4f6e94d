//! Builds the eBPF programs (crashwatch-ebpf) with the nightly toolchain and bpf-linker, so
//! `cargo build` alone produces a complete agent; stamps the git revision it was built from
//! (`CRASHWATCH_REVISION`: 12 hex digits, `+dirty` with uncommitted changes, `unknown`
//! outside a git checkout) for `--version` and `crashwatch_build_info`. With the
//! `upgrade-test` feature it builds the programs with theirs (the upgrade test's changed
//! program; never for a release).
use anyhow::{anyhow, Context as _};

fn main() -> anyhow::Result<()> {
    stamp_revision();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../crashwatch-ebpf");
    let root = dir.to_str().ok_or_else(|| anyhow!("non-UTF-8 path"))?;
    // The upgrade test builds an agent whose programs differ (see crashwatch-ebpf's features).
    let features: &[&str] = if std::env::var_os("CARGO_FEATURE_UPGRADE_TEST").is_some() {
        &["upgrade-test"]
    } else {
        &[]
    };
    let pkg = aya_build::Package {
        name: "crashwatch-ebpf",
        root_dir: root,
        features,
        ..Default::default()
    };
    aya_build::build_ebpf([pkg], aya_build::Toolchain::default()).context(
        "building the eBPF programs (run scripts/setup.sh first: nightly + rust-src + bpf-linker)",
    )
}

/// What the binary is built from: `+dirty` speaks of these paths only, and only changes to
/// them (or a new commit) rerun this script. Not `.git/index`: git rewrites it whenever it
/// refreshes its stat cache (`git status`, `go build`'s VCS stamp in a test), which made
/// every later cargo run rebuild the eBPF programs and the agent for nothing.
const SOURCES: &[&str] = &[
    "crashwatch/src",
    "crashwatch/build.rs",
    "crashwatch/Cargo.toml",
    "crashwatch-common",
    "crashwatch-ebpf",
    "Cargo.toml",
    "Cargo.lock",
];

fn stamp_revision() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("--no-optional-locks")
            .args(args)
            .current_dir(root)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let rev = match git(&["rev-parse", "--short=12", "HEAD"]) {
        Some(r) if !r.is_empty() => {
            let mut status = vec!["status", "--porcelain", "--untracked-files=no", "--"];
            status.extend(SOURCES);
            let dirty = git(&status).is_some_and(|s| !s.is_empty());
            if dirty {
                format!("{r}+dirty")
            } else {
                r
            }
        }
        _ => "unknown".to_string(),
    };
    println!("cargo:rustc-env=CRASHWATCH_REVISION={rev}");
    for s in SOURCES {
        println!("cargo:rerun-if-changed={root}/{s}");
    }
    // A new commit or a checkout changes HEAD or the ref it points at.
    // (A path named here that does not exist would rerun this script on every build.)
    if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        let mut watch = vec![format!("{dir}/HEAD"), format!("{dir}/packed-refs")];
        if let Some(r) = git(&["symbolic-ref", "-q", "HEAD"]) {
            watch.push(format!("{dir}/{r}"));
        }
        for w in watch.iter().filter(|w| std::path::Path::new(w).exists()) {
            println!("cargo:rerun-if-changed={w}");
        }
    }
}
