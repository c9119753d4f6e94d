//! Kernel state that outlives the agent (`--no-pin` turns it off): the ring buffer, the maps
//! holding per-process state, and the link of every program are pinned in a BPF filesystem
//! (default [`DEFAULT_DIR`]), so the kernel goes on recording crashes while no agent runs —
//! a restart, an upgrade, a kill -9 — and the next agent reads them from the same buffer.
//!
//! Handing over: each agent loads its own programs, a new *generation*, into the pinned maps,
//! attaches them while they are inactive (every program returns at once unless `ACTIVE`
//! names its generation, see crashwatch-ebpf's `shared`), makes them active with one map
//! write, then unlinks the previous generation's links. Nothing is missed in between: the
//! old programs work until the write, the new ones from it on. An event in flight at that
//! instant can be handled by both. `bpf_link_update` cannot do this job: the kernel supports
//! it only for cgroup, XDP, netns, iterator, struct_ops and tc links, not the tracing and
//! perf-event links crashwatch uses.
//!
//! Go binaries' uprobe_multi links are pinned one per binary and handed over one binary at a
//! time: the new agent's prober attaches its links, then unlinks the previous generation's
//! for that binary; what it never probes again (no process runs the binary) is unlinked a
//! minute after start. The Go program is not gated by `ACTIVE` for this reason.
//!
//! The pinned maps must mean the same to both agents: `ACTIVE` also holds a hash of their
//! definitions and of the records' sizes, and a new agent whose hash differs removes the old
//! state (said, with what it cost) instead of misreading it.
use std::{
    os::fd::{AsRawFd, BorrowedFd},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use aya::{
    maps::{Array, Map, MapData},
    programs::links::FdLink,
    Ebpf, EbpfLoader,
};

pub const DEFAULT_DIR: &str = "/sys/fs/bpf/crashwatch";

/// Maps both generations share. The rest (scratch space, the copy guard's per-CPU notes,
/// counters read per load) belong to one generation.
/// Not shared: `KNOWN` and `TRACKED`, which record what one agent knows (its answers about
/// files, the processes whose identity it holds): the next agent knows none of it, so its
/// programs start empty and send it what it needs.
const SHARED_MAPS: [&str; 8] = [
    "EVENTS",
    "LOST",
    "ACTIVE",
    "PENDING",
    "PENDING_STACK",
    "WORDS",
    "GOPANIC",
    "ASKED",
];

/// Bump when a record or a shared map changes meaning without changing size.
const LAYOUT_VERSION: u64 = 1;

/// `statfs` magic of a BPF filesystem.
const BPF_FS_MAGIC: i64 = 0xcafe4a11;

/// How long the previous generation's Go links stay for binaries not probed again.
const GO_HANDOVER: Duration = Duration::from_secs(60);

pub struct Pins {
    dir: PathBuf,
    pub generation: u64,
    /// The generation found running, when it was adopted.
    pub previous: Option<u64>,
    /// Ring-buffer losses the previous agent made visible (the rest are this agent's to say).
    pub lost_acked: u64,
    /// CLOCK_MONOTONIC when this generation took over from the previous one.
    pub switched_ns: Option<u64>,
    layout: u64,
    /// What was found and could not be adopted, for the start-up line.
    pub replaced: Option<String>,
    started: Instant,
    go_swept: bool,
}

/// A hash of what both generations must agree on: the shared maps' definitions in `object`
/// and the records' sizes.
pub fn layout(object: &[u8]) -> Result<u64> {
    use crashwatch_common::*;
    let obj = aya_obj::Object::parse(object).context("parsing the eBPF object")?;
    let mut h: u64 = 0xcbf29ce484222325;
    let mut mix = |v: u64| {
        for b in v.to_le_bytes() {
            h = (h ^ b as u64).wrapping_mul(0x100000001b3);
        }
    };
    mix(LAYOUT_VERSION);
    // Fault injection for the tests: an agent that disagrees with the pinned state.
    if std::env::var_os("CRASHWATCH_FAILPOINT_PIN_LAYOUT").is_some() {
        mix(u64::MAX);
    }
    for name in SHARED_MAPS {
        let m = obj
            .maps
            .get(name)
            .with_context(|| format!("map {name} missing from the object"))?;
        mix(m.map_type() as u64);
        mix(m.key_size() as u64);
        mix(m.value_size() as u64);
        // The ring buffer's size is the user's (--ring-size): an adopted one keeps its own.
        if name != "EVENTS" {
            mix(m.max_entries() as u64);
        }
    }
    for size in [
        size_of::<Header>(),
        size_of::<ExecRecord>(),
        size_of::<SignalRecord>(),
        size_of::<StackRecord>(),
        size_of::<LastWordsRecord>(),
        size_of::<ExitRecord>(),
        size_of::<OomRecord>(),
        size_of::<GoRecord>(),
        size_of::<GoOutputRecord>(),
    ] {
        mix(size as u64);
    }
    Ok(h)
}

fn is_bpffs(dir: &Path) -> bool {
    super::fs_magic(dir) == Some(BPF_FS_MAGIC)
}

fn mount_bpffs(at: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(at.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: NUL-terminated strings; no data argument.
    unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            c.as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        ) == 0
    }
}

/// `[generation, layout, losses acknowledged, 0]` of the state pinned in `dir`, if any.
fn read_active(dir: &Path) -> Result<Option<[u64; 4]>> {
    let path = dir.join("ACTIVE");
    if !path.exists() {
        return Ok(None);
    }
    let data = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
    let a: Array<MapData, [u64; 4]> = Array::try_from(Map::Array(data))?;
    Ok(Some(a.get(&0, 0)?))
}

impl Pins {
    /// Opens (or makes) the pin directory and decides whether its state can be adopted.
    pub fn prepare(dir: &Path, layout: u64) -> Result<Pins> {
        let parent = dir.parent().unwrap_or(Path::new("/"));
        if !is_bpffs(parent) && parent == Path::new("/sys/fs/bpf") && mount_bpffs(parent) {
            // What systemd does at boot, and bpftool when it finds none.
            tracing::info!("mounted a BPF filesystem on {}", parent.display());
        }
        if !is_bpffs(parent) {
            bail!(
                "{} is not a BPF filesystem (mount -t bpf bpf {}; in a container, mount the \
                 host's)",
                parent.display(),
                parent.display()
            );
        }
        let mut replaced = None;
        let mut lost_acked = 0;
        let previous = match read_active(dir) {
            Ok(Some([g, l, lost, _])) if l == layout && g != 0 => {
                lost_acked = lost;
                Some(g)
            }
            Ok(Some([g, ..])) => {
                replaced = Some(format!(
                    "the programs pinned by an incompatible crashwatch (generation {g}) were \
                     removed with the records they held"
                ));
                None
            }
            Ok(None) if dir.exists() => {
                replaced = Some("an incomplete pinned state was removed".into());
                None
            }
            Ok(None) => None,
            Err(e) => {
                replaced = Some(format!(
                    "the pinned state was unreadable ({e:#}) and was removed"
                ));
                None
            }
        };
        if previous.is_none() && dir.exists() {
            std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        for d in [dir.to_path_buf(), dir.join("links"), dir.join("go")] {
            match std::fs::create_dir(&d) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e).with_context(|| format!("creating {}", d.display())),
            }
        }
        let generation = previous.unwrap_or(0) + 1;
        for d in [
            dir.join("links").join(gen_dir(generation)),
            dir.join("go").join(gen_dir(generation)),
        ] {
            // A crashed start of this same generation may have left some.
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir(&d).with_context(|| format!("creating {}", d.display()))?;
        }
        Ok(Pins {
            dir: dir.to_path_buf(),
            generation,
            previous,
            lost_acked,
            switched_ns: None,
            layout,
            replaced,
            started: Instant::now(),
            go_swept: previous.is_none(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Has the loader reuse (or create and pin) the shared maps.
    pub fn apply(&self, loader: &mut EbpfLoader<'_>) {
        for name in SHARED_MAPS {
            loader.map_pin_path(name, self.dir.join(name));
        }
    }

    /// Pins one program's link (the kernel then keeps it attached after the agent exits).
    pub fn pin_link(&self, link: FdLink, name: &str) -> Result<()> {
        let path = self
            .dir
            .join("links")
            .join(gen_dir(self.generation))
            .join(name);
        link.pin(&path)
            .with_context(|| format!("pinning {}", path.display()))?;
        Ok(())
    }

    /// Makes this generation the one that works, and detaches the previous one.
    pub fn activate(&mut self, ebpf: &mut Ebpf) -> Result<()> {
        let mut a: Array<&mut MapData, [u64; 4]> = Array::try_from(
            ebpf.map_mut("ACTIVE")
                .context("map ACTIVE missing from the object")?,
        )?;
        if self.previous.is_some() {
            self.switched_ns = Some(crate::model::clock::monotonic_ns());
        }
        a.set(0, [self.generation, self.layout, self.lost_acked, 0], 0)?;
        if let Some(prev) = self.previous {
            let old = self.dir.join("links").join(gen_dir(prev));
            std::fs::remove_dir_all(&old).with_context(|| format!("removing {}", old.display()))?;
        }
        Ok(())
    }

    /// Pins a Go binary's uprobe_multi link; the previous generation's for the same binary
    /// goes.
    pub fn pin_go(&self, fd: BorrowedFd<'_>, key: (u64, u64)) -> Result<()> {
        let name = format!("{}-{}", key.0, key.1);
        let path = self
            .dir
            .join("go")
            .join(gen_dir(self.generation))
            .join(&name);
        let _ = std::fs::remove_file(&path);
        super::uprobe_multi::pin_fd(fd.as_raw_fd(), &path)?;
        if let Some(prev) = self.previous {
            let _ = std::fs::remove_file(self.dir.join("go").join(gen_dir(prev)).join(&name));
        }
        Ok(())
    }

    /// Unpins a Go binary's link as its probes are released.
    pub fn unpin_go(&self, key: (u64, u64)) {
        let path = self
            .dir
            .join("go")
            .join(gen_dir(self.generation))
            .join(format!("{}-{}", key.0, key.1));
        let _ = std::fs::remove_file(path);
    }

    /// Once the handover time is over, detaches the previous generation's Go links that no
    /// probe of this generation replaced. Returns how many.
    pub fn sweep_previous_go(&mut self) -> usize {
        if self.go_swept || self.started.elapsed() < GO_HANDOVER {
            return 0;
        }
        self.go_swept = true;
        let Some(prev) = self.previous else { return 0 };
        let dir = self.dir.join("go").join(gen_dir(prev));
        let n = std::fs::read_dir(&dir).map(|d| d.count()).unwrap_or(0);
        let _ = std::fs::remove_dir_all(&dir);
        n
    }

    /// A handle that records the losses this agent made visible.
    pub fn acker(&self) -> Result<Acker> {
        let data = MapData::from_pin(self.dir.join("ACTIVE"))?;
        Ok(Acker {
            map: Array::try_from(Map::Array(data))?,
            generation: self.generation,
        })
    }
}

/// Writes the ring-buffer losses reported so far into `ACTIVE`, so that the next agent
/// reports only those after them.
pub struct Acker {
    map: Array<MapData, [u64; 4]>,
    generation: u64,
}

impl Acker {
    pub fn ack(&mut self, lost: u64) {
        if let Ok(mut v) = self.map.get(&0, 0) {
            // Only while this agent's generation is the active one: an agent that lost the
            // pins to a newer one must not switch its programs back on.
            if v[0] == self.generation && v[2] != lost {
                v[2] = lost;
                let _ = self.map.set(0, v, 0);
            }
        }
    }
}

fn gen_dir(g: u64) -> String {
    format!("g{g}")
}

/// Removes every pinned object under `dir` (`crashwatch uninstall-bpf`): the programs stop
/// once no agent holds them. Returns how many pins there were.
pub fn uninstall(dir: &Path) -> Result<usize> {
    fn count(d: &Path) -> usize {
        std::fs::read_dir(d)
            .map(|rd| {
                rd.flatten()
                    .map(|e| match e.file_type() {
                        Ok(t) if t.is_dir() => count(&e.path()),
                        _ => 1,
                    })
                    .sum()
            })
            .unwrap_or(0)
    }
    if !dir.exists() {
        return Ok(0);
    }
    let n = count(dir);
    std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    Ok(n)
}
