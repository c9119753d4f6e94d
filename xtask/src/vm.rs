//! `cargo xtask integration-test`: the crash matrix on other kernels, in QEMU.
//!
//! Builds a static agent, the test binaries (the very same `crashes`, `go_crashes`, `quiet`,
//! `race` and `dumps` tests the host runs) and the crash programs, fetches Debian cloud kernels once into
//! `target/vm/kernels`, packs everything into an initramfs whose /init runs the tests and a
//! watching agent, boots each kernel under TCG and reads the results from a second serial port.
use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};

/// Kernels by name: (Debian suite, meta-package version prefix).
/// The test binaries a VM runs (see `INIT`).
pub const TEST_BINARIES: [&str; 5] = ["crashes", "go_crashes", "quiet", "race", "dumps"];
pub const KERNELS: [(&str, &str); 3] = [("6.1", "6.1."), ("6.12", "6.12."), ("7.3", "7.3.")];

const SOURCES: &str = "deb http://deb.debian.org/debian bookworm main
deb http://deb.debian.org/debian-security bookworm-security main
deb http://deb.debian.org/debian bookworm-backports main
deb http://deb.debian.org/debian trixie-backports main
";

pub struct Paths {
    pub root: PathBuf,
    pub vm: PathBuf,
}

impl Paths {
    pub fn new() -> Result<Paths> {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .canonicalize()?;
        let vm = root.join("target/vm");
        fs::create_dir_all(&vm)?;
        Ok(Paths { root, vm })
    }
}

pub fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// apt with a private state directory: the host's sources stay untouched.
fn apt(p: &Paths, tool: &str) -> Result<Command> {
    let dir = p.vm.join("apt");
    for d in ["lists/partial", "cache/archives/partial"] {
        fs::create_dir_all(dir.join(d))?;
    }
    fs::write(dir.join("sources.list"), SOURCES)?;
    let status = dir.join("status");
    if !status.exists() {
        fs::write(&status, "")?;
    }
    let mut c = Command::new(tool);
    for (k, v) in [
        ("Dir::State", dir.clone()),
        ("Dir::State::Lists", dir.join("lists")),
        ("Dir::State::status", status),
        ("Dir::Cache", dir.join("cache")),
        ("Dir::Etc::SourceList", dir.join("sources.list")),
        ("Dir::Etc::SourceParts", dir.join("none")),
    ] {
        c.arg("-o").arg(format!("{k}={}", v.display()));
    }
    Ok(c)
}

fn apt_update(p: &Paths) -> Result<()> {
    // apt() creates the private state directories; a fresh tree has none yet.
    let mut update = apt(p, "apt-get")?;
    if p.vm.join("apt/lists").read_dir()?.count() > 2 {
        return Ok(());
    }
    eprintln!("xtask: apt-get update (private lists under target/vm/apt)");
    run(update.args(["-qq", "update"]))?;
    Ok(())
}

/// Downloads `pkg` into `dir` and unpacks it; returns the unpack directory.
fn fetch_deb(p: &Paths, pkg: &str, dir: &Path) -> Result<PathBuf> {
    apt_update(p)?;
    fs::create_dir_all(dir)?;
    run(apt(p, "apt-get")?
        .args(["-qq", "download", pkg])
        .current_dir(dir))?;
    let deb = fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|f| {
            f.extension().is_some_and(|x| x == "deb")
                && f.file_name().unwrap().to_string_lossy().starts_with(pkg)
        })
        .ok_or_else(|| anyhow!("apt-get download {pkg} left no .deb"))?;
    let x = dir.join(format!("x-{pkg}"));
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&x))?;
    Ok(x)
}

fn find_file(dir: &Path, pred: &dyn Fn(&Path) -> bool) -> Option<PathBuf> {
    for e in fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        if p.is_dir() {
            if let Some(f) = find_file(&p, pred) {
                return Some(f);
            }
        } else if pred(&p) {
            return Some(p);
        }
    }
    None
}

/// The newest Debian cloud kernel of series `name`, cached as target/vm/kernels/<name>/vmlinuz.
pub fn kernel(p: &Paths, name: &str) -> Result<PathBuf> {
    let out = p.vm.join("kernels").join(name);
    let vmlinuz = out.join("vmlinuz");
    if vmlinuz.exists() {
        return Ok(vmlinuz);
    }
    let prefix = KERNELS
        .iter()
        .find(|k| k.0 == name)
        .ok_or_else(|| anyhow!("unknown kernel {name}"))?
        .1;
    apt_update(p)?;
    // The meta package's stanzas name each series' current image package.
    let show = run(apt(p, "apt-cache")?.args(["show", "linux-image-cloud-amd64"]))?;
    let mut best: Option<(String, String)> = None;
    for stanza in show.split("\n\n") {
        let field = |k: &str| {
            stanza
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .map(str::trim)
        };
        let (Some(ver), Some(dep)) = (field("Version:"), field("Depends:")) else {
            continue;
        };
        if !ver.starts_with(prefix) {
            continue;
        }
        let image = dep
            .split(',')
            .map(str::trim)
            .find(|d| d.starts_with("linux-image-"))
            .unwrap_or("");
        let image = image.split_whitespace().next().unwrap_or("").to_string();
        if best.as_ref().is_none_or(|(v, _)| version_gt(ver, v)) {
            best = Some((ver.to_string(), image));
        }
    }
    let (_, image) = best.ok_or_else(|| anyhow!("no Debian cloud kernel {name}.x found"))?;
    eprintln!("xtask: fetching {image}");
    let tmp = out.join("deb");
    let x = fetch_deb(p, &image, &tmp)?;
    let is_vmlinuz = |f: &Path| {
        f.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz"))
    };
    let found = match find_file(&x, &is_vmlinuz) {
        Some(f) => f,
        None => {
            // Newer kernels split the image into linux-binary-<version>.
            let bin = image.replacen("linux-image-", "linux-binary-", 1);
            let x = fetch_deb(p, &bin, &tmp)?;
            find_file(&x, &is_vmlinuz).ok_or_else(|| anyhow!("no vmlinuz in {image} or {bin}"))?
        }
    };
    fs::copy(found, &vmlinuz)?;
    fs::write(out.join("package"), &image)?;
    let _ = fs::remove_dir_all(&tmp);
    Ok(vmlinuz)
}

/// Debian version order, enough for kernel meta packages (numeric runs compared as numbers).
fn version_gt(a: &str, b: &str) -> bool {
    let key = |s: &str| -> Vec<u64> {
        s.split(|c: char| !c.is_ascii_digit())
            .filter_map(|x| x.parse().ok())
            .collect()
    };
    key(a) > key(b)
}

/// Builds what goes into the VM; returns the initramfs path.
pub fn initramfs(p: &Paths) -> Result<PathBuf> {
    let stage = p.vm.join("rootfs");
    let _ = fs::remove_dir_all(&stage);
    let cw = stage.join("crashwatch");
    fs::create_dir_all(&cw)?;
    let target = crate::dist::TARGET;
    let static_env = [("RUSTFLAGS", crate::dist::STATIC_RUSTFLAGS)];

    fs::copy(
        crate::dist::static_agent(&p.root, &[])?,
        cw.join("crashwatch"),
    )?;
    eprintln!("xtask: building the static test binaries");
    let json = run(crate::dist::cargo()
        .args([
            "test",
            "--release",
            "-p",
            "crashwatch",
            "--target",
            target,
            "--no-run",
            "--message-format=json",
        ])
        .args(TEST_BINARIES.iter().flat_map(|t| ["--test", t]))
        .envs(static_env)
        .current_dir(&p.root))?;
    for line in json.lines().filter(|l| l.contains("\"executable\":\"")) {
        for name in TEST_BINARIES {
            if line.contains(&format!("\"name\":\"{name}\"")) {
                let exe = line
                    .split("\"executable\":\"")
                    .nth(1)
                    .and_then(|s| s.split('"').next())
                    .unwrap();
                fs::copy(exe, cw.join(name))?;
            }
        }
    }
    for name in TEST_BINARIES {
        if !cw.join(name).exists() {
            bail!("test binary {name} was not built");
        }
    }

    eprintln!("xtask: building the crash programs");
    let src = p.root.join("crashwatch/tests/crashers/crasher.c");
    run(Command::new("gcc")
        .args([
            "-static",
            "-O1",
            "-g",
            "-fno-omit-frame-pointer",
            "-pthread",
            "-o",
        ])
        .arg(cw.join("crasher"))
        .arg(src))?;
    // The dumps tests' many-threaded program (they build it with gcc where gcc is).
    run(Command::new("gcc")
        .args(["-static-pie", "-O1", "-g", "-pthread", "-o"])
        .arg(cw.join("threads"))
        .arg(p.root.join("crashwatch/tests/dumps/threads.c")))?;
    // The Go programs, built by the same helper the host tests use.
    run(crate::dist::cargo()
        .args([
            "test",
            "--release",
            "-p",
            "crashwatch",
            "--test",
            "go_crashes",
            "--",
            "--ignored",
            "--exact",
            "stage_go_programs",
        ])
        .env("CRASHWATCH_GO_STAGE", cw.join("go"))
        .current_dir(&p.root))?;
    // cgo binaries need the host's loader and libc.
    for lib in libs_of(&cw.join("go/gocrash-1.27-cgo"))? {
        let dst = stage.join(lib.strip_prefix("/").unwrap());
        fs::create_dir_all(dst.parent().unwrap())?;
        fs::copy(&lib, dst)?;
    }

    let bb = fetch_deb(p, "busybox-static", &p.vm.join("busybox"))?.join("bin/busybox");
    fs::create_dir_all(stage.join("bin"))?;
    fs::copy(&bb, stage.join("bin/busybox"))?;
    for d in ["proc", "sys", "dev", "tmp", "root"] {
        fs::create_dir_all(stage.join(d))?;
    }
    // The tests keep scratch files under the path cargo baked into them.
    fs::create_dir_all(stage.join(p.root.join("target/tmp").strip_prefix("/").unwrap()))?;
    let init = stage.join("init");
    fs::write(&init, INIT)?;
    run(Command::new("chmod")
        .arg("755")
        .arg(&init)
        .arg(stage.join("bin/busybox")))?;

    let img = p.vm.join("initramfs.cpio.gz");
    let sh = format!(
        "cd {} && find . | cpio -o -H newc --quiet | gzip -1 > {}",
        stage.display(),
        img.display()
    );
    run(Command::new("sh").arg("-c").arg(sh))?;
    Ok(img)
}

fn libs_of(bin: &Path) -> Result<Vec<PathBuf>> {
    let out = run(Command::new("ldd").arg(bin))?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with('/')))
        .map(PathBuf::from)
        .collect())
}

/// /init inside the VM: mount what the agent needs, run both test binaries with a watching
/// agent beside them, print everything to the second serial port, power off.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
mount -t tracefs nodev /sys/kernel/tracing
mount -t bpf bpf /sys/fs/bpf
mount -t cgroup2 none /sys/fs/cgroup
echo +memory > /sys/fs/cgroup/cgroup.subtree_control
# The agents' listeners (the crash page the dumps tests read) need the loopback.
ifconfig lo 127.0.0.1 up
export PATH=/bin HOME=/root RUST_BACKTRACE=0
export CRASHWATCH_AGENT=/crashwatch/crashwatch CRASHWATCH_CRASHER=/crashwatch/crasher
export CRASHWATCH_GO_PREBUILT=/crashwatch/go
# TCG runs code tens of times slower, and a second agent watches: reports queue for longer.
export CRASHWATCH_TEST_REPORT_TIMEOUT=120
out=/dev/ttyS1
echo "== kernel $(uname -r)" > $out
/crashwatch/crashwatch check > $out 2>&1
/crashwatch/crashwatch run --output json > /tmp/watch.json 2> /tmp/watch.log &
watch=$!
# Each binary is bounded, and says on the console when it starts: a hang names itself.
t() { echo "== $(cut -d' ' -f1 /proc/uptime)s: $1" > /dev/ttyS0; timeout $2 "/crashwatch/$1" $3 > $4 2>&1; echo "== $1 exit $?" >> $4; }
t crashes 1200 --test-threads=2 /tmp/t.log
t go_crashes 1200 "--test-threads=2 --show-output --skip podman" /tmp/g.log
t quiet 600 --show-output /tmp/q.log
# The copy guard forced: copies spin while more tasks than CPUs exec, exit and crash.
t race 900 --show-output /tmp/r.log
# The agent as the core handler: the pipe helper before 6.16, the socket after. No gdb,
# podman or Python here: the cases that need them run on the host.
export CRASHWATCH_DUMP_PROGRAM=/crashwatch/threads CRASHWATCH_TEST_NO_GDB=1
t dumps 900 "--test-threads=1 --show-output --skip container --skip python --skip sentry --skip a_kept_core" /tmp/d.log
cat /tmp/t.log /tmp/g.log /tmp/q.log /tmp/r.log /tmp/d.log > $out
kill -INT $watch
sleep 2
grep -a 'crashwatch: stopped' /tmp/watch.log > $out
grep -a 'crashwatch: records from the kernel' /tmp/watch.log > $out
# Where losses happened: the watcher's loss lines, and the first reports that followed one.
grep -a 'kernel lost' /tmp/watch.log | head -5 > $out
grep -av '"lost_before":0' /tmp/watch.json | head -3 | cut -c1-700 > $out
echo "== done" > $out
sync
poweroff -f
"#;

pub struct Outcome {
    pub kernel: String,
    pub release: String,
    /// test name → "ok" / "FAILED"
    pub tests: BTreeMap<String, String>,
    pub losses: String,
    pub lost: u64,
    pub notes: Vec<String>,
    /// The harness's "failures:" sections (each failed case's panic), cut to a screen each.
    pub failures: Vec<String>,
    pub finished: bool,
    pub seconds: u64,
}

/// Boots `vmlinuz` with the initramfs and collects what the tests printed.
pub fn boot(
    p: &Paths,
    name: &str,
    vmlinuz: &Path,
    initrd: &Path,
    timeout: Duration,
) -> Result<Outcome> {
    let dir = p.vm.join(format!("run-{name}"));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)?;
    let (console, results) = (dir.join("console.txt"), dir.join("results.txt"));
    let t0 = Instant::now();
    let mut child = Command::new("qemu-system-x86_64")
        .args([
            "-accel",
            "tcg",
            "-cpu",
            "max",
            "-m",
            "3072",
            "-smp",
            "2",
            "-display",
            "none",
            "-no-reboot",
        ])
        .args(["-monitor", "none"])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-serial")
        .arg(format!("file:{}", results.display()))
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", "console=ttyS0 quiet panic=-1 oops=panic"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting qemu-system-x86_64 (scripts/setup.sh installs QEMU 10)")?;
    loop {
        if child.try_wait()?.is_some() {
            break;
        }
        if t0.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let text = fs::read_to_string(&results).unwrap_or_default();
    let mut o = Outcome {
        kernel: name.into(),
        release: String::new(),
        tests: BTreeMap::new(),
        losses: String::new(),
        lost: 0,
        notes: Vec::new(),
        failures: failures(&text),
        finished: text.contains("== done"),
        seconds: t0.elapsed().as_secs(),
    };
    for l in text.lines() {
        if let Some(r) = l.strip_prefix("== kernel ") {
            o.release = r.trim().into();
        } else if let Some(rest) = l.strip_prefix("test ") {
            // "ignored" is the staging helper, not a case.
            if let Some((name, res)) = rest
                .rsplit_once(" ... ")
                .filter(|(_, r)| !r.starts_with("ignored"))
            {
                o.tests.insert(name.trim().into(), res.trim().into());
            }
        } else if let Some((bin, code)) = l.strip_prefix("== ").and_then(|r| r.split_once(" exit "))
        {
            // Each test binary's own status: a hang stopped by its timeout (143), a crash of
            // the harness, fails the matrix even when every case it printed passed.
            let r = if code.trim() == "0" {
                "ok".to_string()
            } else {
                format!("exit {}", code.trim())
            };
            o.tests.insert(format!("({bin} binary)"), r);
        } else if l.starts_with("Go matrix")
            || l.starts_with("failpoint on ")
            || l.starts_with("records: ")
            || l.starts_with("crashwatch: records from the kernel")
        {
            o.notes.push(l.trim().into());
        } else if l.contains("crashwatch: stopped") {
            o.losses = l.trim().into();
            // "(kernel losses: ring buffer full A, recursion misses B, undecodable records C)";
            // what follows (runs redone by later copies) is not a loss.
            let counts = l
                .split_once("kernel losses:")
                .and_then(|(_, r)| r.split_once(')'))
                .map_or(l, |(c, _)| c);
            o.lost = counts
                .split(|c: char| !c.is_ascii_digit())
                .filter_map(|n| n.parse::<u64>().ok())
                .sum();
        }
    }
    fs::write(dir.join("summary.txt"), &text)?;
    Ok(o)
}

/// The `---- NAME stdout ----` sections libtest prints under "failures:" (not those of
/// `--show-output`'s "successes:"), each cut to 40 lines: the reason a case failed, which
/// the table alone does not say.
fn failures(text: &str) -> Vec<String> {
    let (mut out, mut cur, mut failing) = (Vec::new(), None::<Vec<&str>>, false);
    for l in text.lines().map(str::trim_end) {
        let head = l.starts_with("---- ") && l.ends_with(" ----");
        let mode = l == "failures:" || l == "successes:" || l.starts_with("test result:");
        if head || mode {
            out.extend(cur.take().map(|c| c.join("\n")));
        }
        if mode {
            failing = l == "failures:";
        } else if head && failing {
            cur = Some(vec![l]);
        } else if let Some(c) = cur.as_mut().filter(|c| c.len() < 40) {
            c.push(l);
        }
    }
    out.extend(cur.map(|c| c.join("\n")));
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn failures_are_each_failed_cases_words() {
        let text = "test a ... FAILED\r\ntest b ... ok\r\n\r\nfailures:\r\n\r\n\
                    ---- a stdout ----\r\nthread 'a' panicked at x.rs:1:2:\r\nwhy\r\n\r\n\
                    failures:\r\n    a\r\n\r\ntest result: FAILED. 1 passed; 1 failed\r\n";
        assert_eq!(
            super::failures(text),
            vec!["---- a stdout ----\nthread 'a' panicked at x.rs:1:2:\nwhy\n"]
        );
        assert!(super::failures("test a ... ok\n").is_empty());
        let shown = "successes:\n\n---- b stdout ----\nfine\n\nsuccesses:\n    b\n";
        assert!(super::failures(shown).is_empty());
    }
}
