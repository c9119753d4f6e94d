//! Real containers for the tests: an image made from files of this host, run with podman
//! (cgroupfs, as on this host), and waited for.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

/// podman's settings on this host (no systemd: cgroupfs, file events).
pub const GLOBAL: [&str; 2] = ["--cgroup-manager=cgroupfs", "--events-backend=file"];

/// Runs `podman ARGS` and returns its stdout, trimmed; fails the test when podman fails.
pub fn podman(args: &[&str]) -> String {
    let out = Command::new("podman")
        .args(GLOBAL)
        .args(args)
        .output()
        .expect("podman (scripts/setup.sh installs it)");
    assert!(
        out.status.success(),
        "podman {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Runs `podman ARGS` for cleanup: what it says does not matter.
fn cleanup(args: &[&str]) {
    let _ = Command::new("podman").args(GLOBAL).args(args).output();
}

/// A local image holding only the given files; removed when dropped.
pub struct Image {
    pub name: String,
    dir: PathBuf,
}

impl Image {
    /// `files`: (file on this host, absolute path in the image).
    pub fn of_files(tag: &str, files: &[(PathBuf, String)]) -> Image {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("image-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let root = dir.join("root");
        // A file naming the image makes its layer, and so its image id, its own: two tests
        // importing the same files at once got one image id under two names, and one test's
        // `rmi -f` took the other's image away (a CI run saw "Trying to pull").
        let name = format!("localhost/crashwatch-{tag}:{}", std::process::id());
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join(".crashwatch-image"), &name).unwrap();
        for (src, dest) in files {
            let at = root.join(dest.trim_start_matches('/'));
            std::fs::create_dir_all(at.parent().unwrap()).unwrap();
            std::fs::copy(src, &at).unwrap_or_else(|e| panic!("{}: {e}", src.display()));
        }
        let tar = dir.join("root.tar");
        let ok = Command::new("tar")
            .arg("-C")
            .arg(&root)
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .status()
            .unwrap();
        assert!(ok.success());
        podman(&["import", tar.to_str().unwrap(), &name]);
        Image { name, dir }
    }

    /// A dynamically linked program with the libraries it loads, at their paths here.
    pub fn of_program(tag: &str, bin: &Path, at: &str) -> Image {
        let mut files = vec![(bin.to_path_buf(), at.to_string())];
        let ldd = Command::new("ldd").arg(bin).output().expect("ldd");
        for line in String::from_utf8_lossy(&ldd.stdout).lines() {
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)", "/lib64/ld-linux-x86-64.so.2 (0x...)"
            let path = match line.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next(),
                None => line.split_whitespace().next(),
            };
            if let Some(p) = path.filter(|p| p.starts_with('/')) {
                files.push((PathBuf::from(p), p.to_string()));
            }
        }
        Image::of_files(tag, &files)
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        cleanup(&["rmi", "-f", &self.name]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A container started detached from `image`, removed when dropped.
pub struct Container {
    pub id: String,
    /// Its first process, in this host's pid namespace.
    pub pid: u32,
}

impl Container {
    pub fn run(image: &Image, args: &[&str]) -> Container {
        Self::run_with(image, &[], args)
    }

    /// `options` go to `podman run` (`--name`, `--annotation`…), `args` to the container.
    pub fn run_with(image: &Image, options: &[&str], args: &[&str]) -> Container {
        let mut all = vec![
            "run",
            // The image is this test's: never a registry's.
            "--pull=never",
            "-d",
            "--ulimit",
            "nofile=20000:20000",
            "--ulimit",
            "nproc=32768:32768",
        ];
        all.extend_from_slice(options);
        all.push(&image.name);
        all.extend_from_slice(args);
        let id = podman(&all);
        let pid = podman(&["inspect", "-f", "{{.State.Pid}}", &id])
            .parse()
            .unwrap();
        Container { id, pid }
    }

    /// Waits for it to end: its exit code, as podman gives it.
    pub fn wait(&self) -> String {
        podman(&["wait", &self.id])
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        cleanup(&["rm", "-f", &self.id]);
    }
}
