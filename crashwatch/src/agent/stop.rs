//! The agent's stop: report what the kernel already wrote, let the report thread finish every
//! queued crash, give back to the kernel the records nothing still needs, leave the next agent
//! what it needs, and say the stop line (losses, outputs, history, symbolization, probes).
use super::{
    pipeline::Pipeline,
    reporter::Reported,
    said::{guard_note, kernel_state_at_stop},
    start::Running,
};

impl Running {
    pub(super) fn stop(self, interrupted: bool) -> anyhow::Result<()> {
        let Running {
            mut p,
            mut ring,
            mut acker,
            tracked,
            reporter,
            paths_file,
            pin_dir,
            dumps,
            ..
        } = self;
        // First, so that no crash from here on waits on a stopping agent.
        let dumps_line = dumps.map(|h| h.stop());
        // Whatever the kernel already wrote still gets reported.
        p.drain(ring.get_mut());
        let l = p.losses.losses_final();
        if let Some(a) = &mut acker {
            // The stop line below says them.
            a.ack(l.ring_full);
        }
        if let Some(mut t) = tracked {
            let pids: Vec<u32> = t.keys().flatten().collect();
            for pid in pids {
                let _ = t.remove(&pid);
            }
        }
        let open = p.asm.min_hold();
        let go = p.go.stats();
        let Pipeline {
            go: probes,
            losses: reader,
            decode_errors,
            reports,
            roots,
            known,
            handover,
            counts,
            mut holds,
            ..
        } = p;
        if handover.dropped > 0 {
            tracing::info!(
                "dropped {} records both program generations made of one event at the takeover",
                handover.dropped
            );
        }
        if let Some(f) = &paths_file {
            if let Err(e) = known.save(f) {
                tracing::warn!("saving {} for the next agent: {e}", f.display());
            }
        }
        // Every crash queued is reported before the stop line.
        drop(reports);
        let done = reporter.join().unwrap_or_else(|_| Reported {
            unwritten: 0,
            symbolization: "the report thread panicked".into(),
            stored: None,
            seen_dropped: 0,
            outputs: Vec::new(),
            build_panics: 0,
            unbuilt: 0,
        });
        // Everything is written: only the records of cases still open stay for the next agent.
        let rb = ring.get_mut();
        let to = holds.release_point(open, rb.cursor(), rb.size());
        rb.release(to);
        if holds.skipped > 0 {
            tracing::info!(
                "{} crashes in the ring buffer were written by the agent before (kill -9): not repeated",
                holds.skipped
            );
        }
        say_written(&done);
        tracing::info!(
            "stopped (kernel losses: ring buffer full {}, recursion misses {}, undecodable records {}; reports not written {}) ({}) (Go binaries: {} probed at the end, {} released, {} left unprobed over --go-max-binaries)",
            l.ring_full,
            l.recursion_misses,
            decode_errors,
            done.unwritten,
            guard_note(&reader, l),
            go.probed_now,
            go.released,
            go.over_limit,
        );
        say_records(&counts_line(&counts, &known));
        if let Some(line) = dumps_line {
            tracing::info!("{line}");
        }
        let (held, over) = roots.stats();
        tracing::info!(
            "symbolization per report: {}; container roots held {held}, {over} not held over the limit of {}",
            done.symbolization,
            crate::pipeline::symbolize::ROOTS_MAX
        );
        let took = probes.shutdown();
        if go.probed_now > 0 {
            tracing::info!(
                "released the probes on {} Go binaries in {} ms",
                go.probed_now,
                took.as_millis()
            );
        }
        tracing::info!("{}", kernel_state_at_stop(pin_dir.as_deref(), interrupted));
        Ok(())
    }
}

/// What the report thread could not build, each output's line, and the crash history's.
fn say_written(done: &Reported) {
    if done.build_panics + done.unbuilt > 0 {
        tracing::warn!(
            "reports whose building panicked: {} (sent without their stack), {} not sent at all",
            done.build_panics,
            done.unbuilt
        );
    }
    for line in &done.outputs {
        tracing::info!("{line}");
    }
    if let Some(s) = &done.stored {
        let busy = s.busy.as_secs_f64();
        tracing::info!(
            "crash history: {} reports sent to the store, {} not stored (queue full or write failed); {:.0} ms of store time, {:.0} reports/s while writing; build sightings not stored: {} (queue full), {} (taken too late)",
            s.sent,
            s.dropped,
            busy * 1e3,
            s.sent as f64 / busy.max(1e-9),
            s.builds_dropped,
            done.seen_dropped
        );
    }
}

/// The records the kernel sent for processes that did not crash: what they cost the agent.
fn counts_line(
    counts: &super::pipeline::Counts,
    known: &crate::kernel::probe::known::KnownFiles,
) -> String {
    format!(
        "records from the kernel: {} execs (of files not yet known, Go binaries, or tracked processes), {} identities read at a crash sign, {} exits; {} executables marked known{}",
        counts.execs,
        counts.idents,
        counts.exits,
        known.marked,
        if known.mark_errors > 0 {
            format!(" ({} marks refused by the kernel)", known.mark_errors)
        } else {
            String::new()
        }
    )
}

/// Log lines lost, then the kernel records' line.
fn say_records(records: &str) {
    // Said for a stderr that failed for a while and came back (a full disk), and for the
    // log pipelines that read the JSON lines; /metrics has it too.
    let unwritten = crate::util::log::unwritten();
    if unwritten > 0 {
        tracing::warn!("{unwritten} log lines could not be written (stderr closed or failing)");
    }
    tracing::info!("{records}");
}
