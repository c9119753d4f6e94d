//! The one duplicate a takeover can make. When an agent's programs take over from the
//! previous agent's pinned ones (see [`crate::kernel::probe::pin`]), an event in flight at that
//! instant can be handled by both generations: the old program checked it was active just
//! before the switch, the new one just after. Both records sit in the shared ring buffer.
//! This drops the second: same kind, process, thread and process start, within a
//! millisecond, and only for events within a second of the switch, so nothing else can ever
//! be taken for a copy.
use std::collections::VecDeque;

use crate::kernel::decode::{Head, Record};

/// Events this close to the switch are compared.
const WINDOW_NS: u64 = 1_000_000_000;
/// Two records of one event are this close.
const SAME_NS: u64 = 1_000_000;
/// Events remembered around the switch (a storm's worth of a second).
const REMEMBERED: usize = 8192;

pub struct Handover {
    /// CLOCK_MONOTONIC of the switch; None when nothing was taken over.
    at_ns: Option<u64>,
    seen: VecDeque<(u8, u32, u32, u64, u64)>,
    pub dropped: u64,
}

impl Handover {
    pub fn new(at_ns: Option<u64>) -> Handover {
        Handover {
            at_ns,
            seen: VecDeque::new(),
            dropped: 0,
        }
    }

    /// True when `rec` is the second generation's copy of an event already seen.
    pub fn duplicate(&mut self, rec: &Record) -> bool {
        let Some(at) = self.at_ns else {
            return false;
        };
        // Go's probes are not switched (a binary's move one at a time), so not compared.
        let (kind, h): (u8, &Head) = match rec {
            Record::Exec(e) => (0, &e.head),
            Record::Signal(s) => (1, &s.head),
            Record::Exit(e) => (2, &e.head),
            Record::Oom(o) => (3, &o.head),
            Record::Stack(s) => (4, &s.head),
            Record::LastWords(w) => (5, &w.head),
            Record::Go(_) | Record::GoOutput(_) => return false,
        };
        if h.ktime_ns.abs_diff(at) > WINDOW_NS {
            return false;
        }
        let twin = self.seen.iter().any(|&(k, pid, tid, start, t)| {
            k == kind
                && pid == h.pid
                && tid == h.tid
                && start == h.start_ns
                && t.abs_diff(h.ktime_ns) < SAME_NS
        });
        if twin {
            self.dropped += 1;
            return true;
        }
        if self.seen.len() == REMEMBERED {
            self.seen.pop_front();
        }
        self.seen
            .push_back((kind, h.pid, h.tid, h.start_ns, h.ktime_ns));
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::decode::Exit;

    fn exit(pid: u32, ktime_ns: u64) -> Record {
        Record::Exit(Exit {
            head: Head {
                pid,
                tid: pid,
                ktime_ns,
                start_ns: 7,
                ..Head::default()
            },
            status: 0,
            asked: None,
        })
    }

    #[test]
    fn only_twins_near_the_switch_are_dropped() {
        let mut h = Handover::new(Some(10_000_000_000));
        assert!(!h.duplicate(&exit(1, 10_000_000_000)));
        assert!(
            h.duplicate(&exit(1, 10_000_000_500)),
            "the other generation's copy"
        );
        assert!(!h.duplicate(&exit(2, 10_000_000_500)), "another process");
        assert!(
            !h.duplicate(&exit(1, 10_002_000_000)),
            "another event, 2 ms later"
        );
        let mut far = Handover::new(Some(10_000_000_000));
        assert!(!far.duplicate(&exit(1, 20_000_000_000)));
        assert!(
            !far.duplicate(&exit(1, 20_000_000_100)),
            "far from the switch: kept"
        );
        let mut none = Handover::new(None);
        assert!(!none.duplicate(&exit(1, 1)));
        assert!(!none.duplicate(&exit(1, 1)));
        assert_eq!(h.dropped, 1);
    }
}
