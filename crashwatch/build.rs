//! Builds the eBPF programs (crashwatch-ebpf) with the nightly toolchain and bpf-linker, so
//! `cargo build` alone produces a complete agent.
use anyhow::{anyhow, Context as _};

fn main() -> anyhow::Result<()> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../crashwatch-ebpf");
    let root = dir.to_str().ok_or_else(|| anyhow!("non-UTF-8 path"))?;
    let pkg = aya_build::Package {
        name: "crashwatch-ebpf",
        root_dir: root,
        ..Default::default()
    };
    aya_build::build_ebpf([pkg], aya_build::Toolchain::default()).context(
        "building the eBPF programs (run scripts/setup.sh first: nightly + rust-src + bpf-linker)",
    )
}
