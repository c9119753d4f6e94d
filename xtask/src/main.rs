//! Developer tasks.
//!
//! - `cargo xtask integration-test [--kernel 6.1 --kernel 6.12 --kernel 7.3 | --kernel local]`:
//!   the crash matrix (crashwatch/tests: the same test binaries the host runs) in QEMU on
//!   Debian cloud kernels, or on this host; prints a kernel × case table.
//! - `cargo xtask bench`: overhead beside no observer and peer tools → docs/benchmarks.md.
//! - `cargo xtask layers`: crashwatch's imports go down its folders' declared order.
//! - `cargo xtask fleet-sim [--nodes N] [--ramp]`: a simulated fleet against real hub
//!   replicas and PostgreSQL; the page's answers checked, the load raised until it gives.
//! - `cargo xtask dist`: the static binary and a release tarball; `cargo xtask image`: an OCI
//!   image of it (podman, offline) → target/dist. `cargo xtask static-agent`: the binary alone
//!   (the tests build theirs this way, so every static build shares one set of dependencies).
mod bench;
mod dist;
mod fleet;
mod layers;
mod vm;

use std::{collections::BTreeSet, time::Duration};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the crash matrix on other kernels in QEMU (default: 6.1, 6.12, 7.3), or `local`.
    IntegrationTest {
        /// Kernel series to boot (6.1, 6.12, 7.3), or `local` for this host's kernel.
        #[arg(long = "kernel", value_name = "KERNEL")]
        kernels: Vec<String>,
        /// Minutes one VM may run before it is stopped and counted as failed.
        #[arg(long, default_value_t = 40)]
        timeout_minutes: u64,
    },
    /// Build the static binary (eBPF programs inside) and target/dist/crashwatch-VERSION-
    /// x86_64-linux.tar.gz with it, its --help text, the docs, licenses and deploy files.
    Dist,
    /// Build the static binary alone and print its path (the tests' way to one: the upgrade
    /// test's changed agent shares every dependency with dist's and the VM tests' builds).
    StaticAgent {
        /// Cargo features of the crashwatch package (e.g. upgrade-test; none for a release).
        #[arg(long, value_delimiter = ',')]
        features: Vec<String>,
    },
    /// Build the dist binary into an OCI image with podman (deploy/Containerfile, no base
    /// image, no network) tagged localhost/crashwatch:VERSION, saved as an OCI archive too.
    Image,
    /// Render deploy/helm/crashwatch into deploy/kubernetes (the plain manifests).
    Manifests,
    /// Measure crashwatch's cost against no observer and peer tools; writes docs/benchmarks.md.
    Bench(bench::Args),
    /// Simulate a fleet's agents against real hub replicas on a real PostgreSQL: a trickle,
    /// a crash loop on 50 nodes, a rollout, a regression; check the page's answers; with
    /// --ramp, raise the load until something gives (docs/fleet.md).
    FleetSim(fleet::Args),
    /// Check that crashwatch's imports go down its layers (util < model < read < kernel <
    /// pipeline < outputs < web < agent < commands) and that no pipeline stage imports
    /// another's insides; exits non-zero on any that does.
    Layers {
        /// The source tree to check (default: crashwatch/src).
        #[arg(long)]
        tree: Option<std::path::PathBuf>,
    },
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::IntegrationTest {
            kernels,
            timeout_minutes,
        } => {
            let kernels = if kernels.is_empty() {
                vm::KERNELS.iter().map(|k| k.0.to_string()).collect()
            } else {
                kernels
            };
            if kernels.iter().any(|k| k == "local") {
                return local();
            }
            for k in &kernels {
                if !vm::KERNELS.iter().any(|(n, _)| n == k) {
                    bail!("unknown kernel {k:?}: choose from 6.1, 6.12, 7.3 or local");
                }
            }
            in_vms(&kernels, Duration::from_secs(timeout_minutes * 60))
        }
        Cmd::Bench(args) => bench::run(args),
        Cmd::FleetSim(args) => fleet::run(args),
        Cmd::Dist => dist::dist().map(|_| ()),
        Cmd::StaticAgent { features } => {
            let bin = dist::static_agent(&vm::Paths::new()?.root, &features)?;
            println!("{}", bin.display());
            Ok(())
        }
        Cmd::Image => dist::image(),
        Cmd::Manifests => dist::manifests(),
        Cmd::Layers { tree } => layers::run(tree),
    }
}

fn local() -> Result<()> {
    let st = dist::cargo()
        .args(["test", "--release", "-p", "crashwatch"])
        .args(vm::TEST_BINARIES.iter().flat_map(|t| ["--test", t]))
        .status()
        .context("running cargo test")?;
    if !st.success() {
        bail!("crash matrix failed on the local kernel");
    }
    Ok(())
}

fn in_vms(kernels: &[String], timeout: Duration) -> Result<()> {
    let p = vm::Paths::new()?;
    let initrd = vm::initramfs(&p)?;
    let mut outcomes = Vec::new();
    for k in kernels {
        let vmlinuz = vm::kernel(&p, k)?;
        eprintln!("xtask: booting Linux {k} under TCG (results in target/vm/run-{k})");
        let o = vm::boot(&p, k, &vmlinuz, &initrd, timeout)?;
        eprintln!("xtask: {k} ({}) done in {} s", o.release, o.seconds);
        outcomes.push(o);
    }
    let names: BTreeSet<&String> = outcomes.iter().flat_map(|o| o.tests.keys()).collect();
    let width = names.iter().map(|n| n.len()).max().unwrap_or(4).max(4);
    print!("\n{:<width$}", "case");
    for o in &outcomes {
        print!(" | {:>8}", o.kernel);
    }
    println!();
    let mut failed = false;
    for n in &names {
        print!("{n:<width$}");
        for o in &outcomes {
            let r = o.tests.get(*n).map(String::as_str).unwrap_or("missing");
            failed |= r != "ok";
            print!(" | {r:>8}");
        }
        println!();
    }
    println!();
    for o in &outcomes {
        println!(
            "Linux {} ({}) in {} s: {}",
            o.kernel,
            o.release,
            o.seconds,
            if o.losses.is_empty() {
                "no loss counters (the VM did not finish)"
            } else {
                &o.losses
            }
        );
        for n in &o.notes {
            println!("  {n}");
        }
        for f in &o.failures {
            println!("{f}\n");
        }
        if !o.finished {
            failed = true;
            println!(
                "  the VM did not finish: see target/vm/run-{}/console.txt",
                o.kernel
            );
        }
        if o.lost > 0 {
            failed = true;
            println!("  kernel events were lost: a failure");
        }
    }
    if failed {
        bail!("the crash matrix failed on at least one kernel");
    }
    Ok(())
}
