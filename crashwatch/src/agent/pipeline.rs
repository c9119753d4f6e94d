//! The record loop's work on each record: decode, capture what only exists while the process
//! does (its maps, its root, its container), assemble, and queue each finished crash for the
//! report thread; then give back to the kernel the records no unwritten crash needs
//! ([`super::hold`]).
use std::sync::{atomic::AtomicBool, mpsc, Arc};

use super::{handover, hold, reporter::Job};
use crate::{
    kernel::decode::{self, Record},
    kernel::probe::{go::GoProbes, known::KnownFiles, LossReader, Losses},
    pipeline::assemble::Assembler,
    pipeline::enrich::{self, container::Containers},
    pipeline::symbolize::{Maps, Roots},
};

pub(super) struct Pipeline {
    pub(super) handover: handover::Handover,
    pub(super) holds: hold::Holds,
    pub(super) go: GoProbes,
    pub(super) losses: LossReader,
    pub(super) asm: Assembler,
    /// Loss counters at the previous crash, for `lost_before`.
    pub(super) reported: Losses,
    pub(super) decode_errors: u64,
    pub(super) reports: mpsc::SyncSender<Job>,
    /// The report thread found stdout, the only sink, closed.
    pub(super) stdout_closed: Arc<AtomicBool>,
    /// Containers' roots, noted at exec.
    pub(super) roots: Arc<Roots>,
    /// Executables classified, marked in the kernel so their execs stop coming.
    pub(super) known: KnownFiles,
    /// Records handled, by kind, for the stop line.
    pub(super) counts: Counts,
    /// Containers and pods, read at a process's first sight while the container exists.
    pub(super) containers: Arc<Containers>,
}

/// Records that reached the agent: what processes that do not crash still cost it.
#[derive(Default)]
pub(super) struct Counts {
    pub(super) execs: u64,
    pub(super) idents: u64,
    pub(super) exits: u64,
}

impl Pipeline {
    /// Handles every record there is, then gives back what no unwritten crash needs.
    pub(super) fn drain(&mut self, ring: &mut crate::kernel::probe::ring::Ring) {
        loop {
            while let Some((pos, bytes)) = ring.next() {
                self.handle(pos, bytes);
            }
            let to = self
                .holds
                .release_point(self.asm.min_hold(), ring.cursor(), ring.size());
            ring.release(to);
            // A record committed before that release saw the old position and woke nobody.
            if !ring.has_next() {
                break;
            }
        }
    }

    fn handle(&mut self, pos: u64, bytes: &[u8]) {
        let mut rec = match decode::decode(bytes) {
            Ok(r) => r,
            Err(e) => {
                self.decode_errors += 1;
                if self.decode_errors <= 10 {
                    tracing::warn!("dropped a kernel record: {e:#}");
                }
                return;
            }
        };
        if self.handover.duplicate(&rec) {
            return;
        }
        // Capture what only exists while the process does, before it is gone.
        match &mut rec {
            Record::Exec(e) if e.at_exec => {
                self.counts.execs += 1;
                enrich::resolve_exe(e);
                e.root = self.roots.note_exec(e.head.pid, e.head.ppid, e.mnt_ns);
                self.containers.note(&e.cgroup);
                let shown = e.exe.as_deref().unwrap_or(&e.filename);
                self.go.request(e.head.pid, e.file, shown);
                self.known.learn(e, self.go.verdict(e.file));
            }
            Record::Exec(e) => {
                // Read at a crash sign: the process may be gone already, but its file was
                // most likely exec'd before, where the agent saw its path.
                self.counts.idents += 1;
                enrich::resolve_exe(e);
                if e.exe.is_none() {
                    e.exe = self.known.path_of(e.file).map(str::to_string);
                }
                e.root = self.roots.note_exec(e.head.pid, e.head.ppid, e.mnt_ns);
                self.containers.note(&e.cgroup);
                let shown = e.exe.as_deref().unwrap_or("?");
                self.go.request(e.head.pid, e.file, shown);
            }
            Record::Exit(_) => self.counts.exits += 1,
            Record::Signal(s) => s.maps = Maps::capture(s.head.pid).map(std::sync::Arc::new),
            Record::Go(g) => g.maps = Maps::capture(g.head.pid).map(std::sync::Arc::new),
            _ => {}
        }
        let go = &self.go;
        let Some(crash) = self.asm.push_at(rec, pos, &|id| go.is_go(id)) else {
            return;
        };
        if self
            .holds
            .written_before((crash.head.pid, crash.head.start_ns))
        {
            return;
        }
        self.holds.sent(crash.hold);
        let now = self.losses.losses();
        let lost = now.total().saturating_sub(self.reported.total());
        self.reported = now;
        // Waits when the report thread is a full queue behind; gone only once it has ended.
        let _ = self.reports.send(Job::Crash { crash, lost });
    }
}
