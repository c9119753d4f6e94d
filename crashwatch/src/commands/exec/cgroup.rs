//! The cgroup `crashwatch exec` runs its command in: every descendant stays in it (a daemon that
//! double-forks away from the process tree included), so "the command's crashes" is "the crashes in
//! this cgroup", which the kernel already tells the agent. Made at the root of the hierarchy
//! reports name, named after our pid; at the end what still runs in it is moved back to where
//! `crashwatch exec` itself runs (we never kill what the command left running), and it is removed.
use std::{fs, io::Write, path::PathBuf};

use anyhow::{Context, Result};

pub struct Cgroup {
    pub dir: PathBuf,
    /// Its path as reports name it (`/crashwatch-exec-1234`).
    pub path: String,
    /// Where we run, to give leftovers back to.
    home: PathBuf,
}

impl Cgroup {
    /// Made in the hierarchy the agent's reports name: the unified one on a cgroup v2 host,
    /// the memory controller's on a v1 or hybrid one.
    pub fn create() -> Result<Cgroup> {
        let v2 = crate::kernel::probe::btf::cgroup2_only();
        let mounts =
            fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
        let root = mounts
            .lines()
            .find_map(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                let (dir, fstype, options) = (f.get(1)?, f.get(2)?, f.get(3)?);
                let ours = if v2 {
                    *fstype == "cgroup2"
                } else {
                    *fstype == "cgroup" && options.split(',').any(|o| o == "memory")
                };
                ours.then(|| PathBuf::from(dir))
            })
            .with_context(|| {
                format!(
                    "no {} hierarchy mounted: it is how the command's processes are told from the rest of the host",
                    if v2 { "cgroup2" } else { "memory cgroup" }
                )
            })?;
        let own = fs::read_to_string("/proc/self/cgroup").context("reading /proc/self/cgroup")?;
        let own = own
            .lines()
            .find_map(|l| {
                let (_, rest) = l.split_once(':')?;
                let (controllers, path) = rest.split_once(':')?;
                let ours = if v2 {
                    controllers.is_empty()
                } else {
                    controllers.split(',').any(|c| c == "memory")
                };
                ours.then_some(path)
            })
            .context("our own cgroup is not in /proc/self/cgroup")?;
        let home = root.join(own.trim_start_matches('/'));
        let name = format!("crashwatch-exec-{}", std::process::id());
        let dir = root.join(&name);
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("creating the command's cgroup {} (a read-only cgroup filesystem, as in an unprivileged container, cannot hold one)", dir.display())
                })
            }
        }
        Ok(Cgroup {
            dir,
            path: format!("/{name}"),
            home,
        })
    }

    /// Opened before the fork: the child joins by writing `0` to it.
    pub fn procs(&self) -> Result<fs::File> {
        fs::OpenOptions::new()
            .write(true)
            .open(self.dir.join("cgroup.procs"))
            .with_context(|| format!("opening {}/cgroup.procs", self.dir.display()))
    }

    /// The processes still in it.
    pub fn pids(&self) -> Vec<u32> {
        fs::read_to_string(self.dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// Moves what still runs back to our own cgroup and removes this one: how many moved.
    pub fn remove(self) -> usize {
        let left = self.pids();
        if let Ok(mut f) = fs::OpenOptions::new()
            .write(true)
            .open(self.home.join("cgroup.procs"))
        {
            for pid in &left {
                let _ = f.write_all(format!("{pid}\n").as_bytes());
            }
        }
        if let Err(e) = fs::remove_dir(&self.dir) {
            tracing::warn!("removing {}: {e}", self.dir.display());
        }
        left.len()
    }
}
