//! Builds the eBPF programs (crashwatch-ebpf) with the nightly toolchain and bpf-linker, so
//! `cargo build` alone produces a complete agent; stamps the git revision it was built from
//! (`CRASHWATCH_REVISION`: 12 hex digits, `+dirty` with uncommitted changes, `unknown`
//! outside a git checkout) for `--version` and `crashwatch_build_info`. With
//! `CRASHWATCH_EBPF_UPGRADE_TEST` set it builds the programs with their `upgrade-test`
//! feature (the upgrade test's changed program; never for a release).
use anyhow::{anyhow, Context as _};

fn main() -> anyhow::Result<()> {
    stamp_revision();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../crashwatch-ebpf");
    let root = dir.to_str().ok_or_else(|| anyhow!("non-UTF-8 path"))?;
    // The upgrade test builds an agent whose programs differ (see crashwatch-ebpf's features).
    println!("cargo:rerun-if-env-changed=CRASHWATCH_EBPF_UPGRADE_TEST");
    let features: &[&str] = if std::env::var_os("CRASHWATCH_EBPF_UPGRADE_TEST").is_some() {
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

fn stamp_revision() {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let rev = match git(&["rev-parse", "--short=12", "HEAD"]) {
        Some(r) if !r.is_empty() => {
            let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty());
            if dirty {
                format!("{r}+dirty")
            } else {
                r
            }
        }
        _ => "unknown".to_string(),
    };
    println!("cargo:rustc-env=CRASHWATCH_REVISION={rev}");
    // A new commit or a checkout changes HEAD or the ref it points at.
    if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        println!("cargo:rerun-if-changed={dir}/HEAD");
        println!("cargo:rerun-if-changed={dir}/index");
        if let Some(r) = git(&["symbolic-ref", "-q", "HEAD"]) {
            println!("cargo:rerun-if-changed={dir}/{r}");
        }
    }
}
