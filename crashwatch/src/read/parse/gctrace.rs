//! One `GODEBUG=gctrace=1` line, as the Go runtime prints it after each collection
//! (runtime/mgc.go, every version since 1.5 in this shape; `stacks` and `globals` since
//! 1.18 are not needed here):
//!
//! `gc 12 @3.456s 4%: 0.018+1.2+0.004 ms clock, 0.07+0.5/1.1/0+0.01 ms cpu, 4->5->1 MB, 5 MB goal,
//! 0 MB stacks, 0 MB globals, 4 P (forced)`
//!
//! The number of the collection, seconds since the program started, the share of CPU time
//! spent in GC since then, the wall-clock time of its phases (the first and the last stop
//! the world), the heap at its start, its end and what was live after it, and the goal.
use serde::Serialize;

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Gc {
    pub number: u64,
    pub at_seconds: f64,
    /// Percent of the program's CPU time spent in GC since it started.
    pub cpu_percent: f64,
    /// The two stop-the-world phases, milliseconds.
    pub pause_ms: f64,
    /// The concurrent mark phase, milliseconds.
    pub concurrent_ms: f64,
    pub heap_start_mb: f64,
    pub heap_end_mb: f64,
    pub heap_live_mb: f64,
    pub goal_mb: f64,
    pub forced: bool,
}

pub fn parse(line: &str) -> Option<Gc> {
    let rest = line.strip_prefix("gc ")?;
    let (number, rest) = rest.split_once(" @")?;
    let (at, rest) = rest.split_once("s ")?;
    let (pct, rest) = rest.split_once("%: ")?;
    let (clock, rest) = rest.split_once(" ms clock, ")?;
    let mut phases = clock.split('+').map(|p| p.parse::<f64>());
    let (Some(Ok(stw1)), Some(Ok(mark)), Some(Ok(stw2))) =
        (phases.next(), phases.next(), phases.next())
    else {
        return None;
    };
    let (_cpu, rest) = rest.split_once(" ms cpu, ")?;
    let (heap, rest) = rest.split_once(" MB, ")?;
    let mut h = heap.split("->").map(|p| p.parse::<f64>());
    let (Some(Ok(start)), Some(Ok(end)), Some(Ok(live))) = (h.next(), h.next(), h.next()) else {
        return None;
    };
    let (goal, rest) = rest.split_once(" MB goal")?;
    Some(Gc {
        number: number.parse().ok()?,
        at_seconds: at.parse().ok()?,
        cpu_percent: pct.parse().ok()?,
        pause_ms: stw1 + stw2,
        concurrent_ms: mark,
        heap_start_mb: start,
        heap_end_mb: end,
        heap_live_mb: live,
        goal_mb: goal.parse().ok()?,
        forced: rest.trim_end().ends_with("(forced)"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_and_new_lines() {
        let g = parse("gc 12 @3.456s 4%: 0.018+1.2+0.004 ms clock, 0.073+0.5/1.1/0+0.016 ms cpu, 4->5->1 MB, 5 MB goal, 0 MB stacks, 0 MB globals, 4 P (forced)").unwrap();
        assert_eq!((g.number, g.at_seconds, g.cpu_percent), (12, 3.456, 4.0));
        assert!((g.pause_ms - 0.022).abs() < 1e-9 && g.forced);
        assert_eq!(
            (g.heap_start_mb, g.heap_live_mb, g.goal_mb),
            (4.0, 1.0, 5.0)
        );
        let g = parse("gc 1 @0.005s 2%: 0.010+0.22+0.002 ms clock, 0.041+0.089/0.17/0.037+0.011 ms cpu, 4->4->0 MB, 5 MB goal, 4 P").unwrap();
        assert!(!g.forced && g.concurrent_ms == 0.22);
        assert!(parse("gc 1 went fine").is_none());
        assert!(parse("gc x @1s 2%: a+b+c ms clock, ").is_none());
    }
}
