//! The agent's loop: drains the ring buffer when the kernel wakes it (and by itself while
//! records are held back), reads the programs' diagnostics, once a second looks at the loss
//! counters, the health and what to forget, and ends at a stop signal, at the embedding
//! command's word, or when stdout, the only output, is closed.
use std::{sync::atomic::Ordering, time::Duration};

use anyhow::Result;

use super::{
    embed, reload,
    reporter::Job,
    said::{give_back_freed_memory, guard_note},
    start::Running,
};
use crate::kernel::probe::Losses;

/// What the once-a-second tick carries from one turn to the next.
struct Tick {
    ticks: u64,
    /// The losses last logged, and last exported (with the undecodable records).
    logged: Losses,
    exported: (Losses, u64),
}

impl Running {
    /// Runs until told to stop; true when stopped by Ctrl-C (a person at a terminal) rather
    /// than SIGTERM (a service manager).
    pub(super) async fn watch(&mut self) -> Result<bool> {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut t = Tick {
            ticks: 0,
            logged: self.p.reported,
            exported: (self.p.reported, 0),
        };
        let mut poll = tokio::time::interval(Duration::from_millis(20));
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let embedded = self.control.is_some();
        loop {
            tokio::select! {
                guard = self.ring.readable_mut() => {
                    let mut guard = guard?;
                    self.p.drain(guard.get_inner_mut());
                    guard.clear_ready();
                    if self.p.stdout_closed.load(Ordering::Relaxed) {
                        tracing::warn!("stdout is closed (broken pipe) and it is where reports go: stopping");
                        return Ok(false);
                    }
                }
                guard = async {
                    match self.klog.as_mut() {
                        Some(k) => k.readable_mut().await,
                        None => std::future::pending().await,
                    }
                } => {
                    let mut read = false;
                    if let Ok(mut g) = guard {
                        read = crate::kernel::probe::klog::drain(g.get_inner_mut());
                        g.clear_ready();
                    }
                    if !read {
                        tracing::warn!("kernel diagnostics stopped: a record could not be read");
                        self.klog = None;
                    }
                }
                _ = tick.tick() => self.on_tick(&mut t),
                // The kernel wakes the loop only for records where the consumer position
                // stands: while it holds records back, the loop looks by itself.
                _ = poll.tick(), if self.ring.get_ref().holding() => self.p.drain(self.ring.get_mut()),
                _ = self.signals.hup.recv() => reload::on_sighup(self.reloader.as_ref(), &self.p.reports),
                // Embedded, the signals are the command's: it stops the agent when it is done.
                _ = self.signals.int.recv(), if !embedded => return Ok(true),
                _ = self.signals.term.recv(), if !embedded => return Ok(false),
                c = async {
                    match self.control.as_mut() {
                        Some(c) => c.recv().await,
                        None => std::future::pending().await,
                    }
                } => match c {
                    Some(embed::Control::Flush(done)) => {
                        self.p.drain(self.ring.get_mut());
                        let _ = self.p.reports.send(Job::Flush(done));
                    }
                    Some(embed::Control::Stop) | None => return Ok(false),
                },
            }
        }
    }

    /// Once a second: insurance against a wakeup the kernel never sent, the loss counters
    /// (exported, and said when they move), the health, and forgetting what is gone.
    fn on_tick(&mut self, t: &mut Tick) {
        t.ticks += 1;
        self.health.turned();
        let p = &mut self.p;
        p.drain(self.ring.get_mut());
        let now = p.losses.losses();
        let (was, was_undecodable) = t.exported;
        let m = &self.metrics;
        m.lost("ring_full", now.ring_full - was.ring_full);
        m.lost(
            "recursion_miss",
            now.recursion_misses - was.recursion_misses,
        );
        m.lost("undecodable", p.decode_errors - was_undecodable);
        m.writes_skipped(now.writes_skipped.saturating_sub(was.writes_skipped));
        t.exported = (now, p.decode_errors);
        m.go_probed.set(p.go.stats().probed_now as i64);
        if now.total() != t.logged.total() {
            // Recursion misses: a program was preempted and re-entered on the same CPU
            // (preemptible kernels); a full ring buffer: raise --ring-size.
            tracing::warn!(
                "kernel lost {} events (ring buffer full: {}, recursion misses: {}; {})",
                now.total() - t.logged.total(),
                now.ring_full - t.logged.ring_full,
                now.recursion_misses - t.logged.recursion_misses,
                guard_note(&p.losses, now)
            );
            t.logged = now;
        }
        if let Some(a) = &mut self.acker {
            a.ack(t.logged.ring_full);
        }
        // Forgetting exited processes walks /proc: once a minute is plenty.
        let every_minute = t.ticks.is_multiple_of(60);
        if t.ticks.is_multiple_of(10) {
            p.roots.sweep();
        }
        p.asm
            .expire(crate::model::clock::monotonic_ns(), self.window_ns, |pid| {
                !every_minute || std::path::Path::new(&format!("/proc/{pid}")).exists()
            });
        if t.ticks == 5 || every_minute {
            give_back_freed_memory();
        }
        if t.ticks.is_multiple_of(5) && !self.dumps_displaced {
            if let Some(h) = self.dumps.as_ref().filter(|h| !h.still_ours()) {
                // Not fought over: the other tool's pattern stays, and the stop leaves it.
                tracing::warn!(
                    "core_pattern is no longer {} (another tool changed it): no more dumps until the agent restarts",
                    h.patterns().0
                );
                self.dumps_displaced = true;
            }
        }
    }
}
