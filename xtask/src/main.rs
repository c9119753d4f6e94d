//! Developer tasks: `cargo xtask integration-test`.
//!
//! The crash matrix lives in crashwatch/tests (shared by every way of running it); `local`
//! runs it on this host's kernel. Booting other kernels in QEMU is tracked separately and is
//! refused with a clear message until it exists.
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the crash matrix (real eBPF programs, real crashing processes; needs root).
    IntegrationTest {
        /// Where to run it: `local` is this host's kernel.
        #[arg(long, default_value = "local")]
        kernel: String,
    },
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::IntegrationTest { kernel } => {
            if kernel != "local" {
                bail!("kernel {kernel:?}: only `--kernel local` is available so far (VM kernels are not built yet)");
            }
            let st = Command::new(env!("CARGO"))
                .args(["test", "--release", "-p", "crashwatch", "--test", "crashes"])
                .status()
                .context("running cargo test")?;
            if !st.success() {
                bail!("crash matrix failed on the local kernel");
            }
            Ok(())
        }
    }
}
