//! A memory cgroup with a hard limit, for the OOM-kill tests: made by the test, removed when
//! it ends.
use std::{path::PathBuf, time::Duration};

/// A memory cgroup (v2, or v1's memory controller on hybrid hosts) with a hard limit.
pub struct MemCgroup {
    pub dir: PathBuf,
    pub name: String,
    v2: bool,
}

impl MemCgroup {
    pub fn new(limit: u64) -> MemCgroup {
        Self::named(&format!("crashwatch-test-{}", std::process::id()), limit)
    }

    pub fn named(name: &str, limit: u64) -> MemCgroup {
        let name = name.to_string();
        let v1 = PathBuf::from("/sys/fs/cgroup/memory");
        let (base, v2) = if v1.join("memory.limit_in_bytes").exists() {
            (v1, false)
        } else {
            (PathBuf::from("/sys/fs/cgroup"), true)
        };
        let dir = base.join(&name);
        let _ = std::fs::create_dir(&dir);
        let (file, swap) = if v2 {
            ("memory.max", "memory.swap.max")
        } else {
            ("memory.limit_in_bytes", "memory.memsw.limit_in_bytes")
        };
        std::fs::write(dir.join(file), limit.to_string())
            .unwrap_or_else(|e| panic!("setting {}: {e}", dir.join(file).display()));
        let _ = std::fs::write(
            dir.join(swap),
            if v2 {
                "0".to_string()
            } else {
                limit.to_string()
            },
        );
        MemCgroup { dir, name, v2 }
    }

    /// The most memory the cgroup's processes used at once, in bytes.
    pub fn peak_bytes(&self) -> u64 {
        let file = if self.v2 {
            "memory.peak"
        } else {
            "memory.max_usage_in_bytes"
        };
        std::fs::read_to_string(self.dir.join(file))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Times the OOM killer acted in the cgroup.
    pub fn oom_kills(&self) -> u64 {
        let file = if self.v2 {
            "memory.events"
        } else {
            "memory.oom_control"
        };
        std::fs::read_to_string(self.dir.join(file))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("oom_kill "))
                    .and_then(|v| v.trim().parse().ok())
            })
            .unwrap_or(0)
    }

    pub fn procs_file(&self) -> PathBuf {
        self.dir.join("cgroup.procs")
    }
}

impl Drop for MemCgroup {
    fn drop(&mut self) {
        // The killed process is reaped by now; retry briefly while the kernel lets go.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
