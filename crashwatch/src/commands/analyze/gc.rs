//! GC statistics from `GODEBUG=gctrace=1` lines: per run of a program (a stream whose
//! collection numbers start again is a new run), the number of collections, pauses (p50,
//! p99, max), the live heap from first to last, the goal, the share of CPU spent in GC, and
//! the same over time as a series of at most [`POINTS`] points.
//!
//! Bounded whatever the log's length: pauses are sampled into a reservoir of [`SAMPLES`]
//! (Vitter's algorithm R, seeded the same every run so a log always gives the same
//! percentiles), the series halves its resolution when full, and at most [`MAX_RUNS`] runs
//! are kept (the rest counted).
use std::collections::HashMap;

use serde::Serialize;

use crate::read::parse::gctrace::Gc;

const SAMPLES: usize = 65_536;
const POINTS: usize = 256;
pub const MAX_RUNS: usize = 256;

#[derive(Clone, Debug, Serialize)]
pub struct Point {
    pub at_seconds: f64,
    pub heap_live_mb: f64,
    pub goal_mb: f64,
    pub cpu_percent: f64,
    /// The longest pause since the point before.
    pub max_pause_ms: f64,
}

#[derive(Debug, Serialize)]
pub struct Run {
    pub file: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub stream: String,
    pub first_line: u64,
    pub last_line: u64,
    pub collections: u64,
    pub forced: u64,
    /// From the first collection's time to the last's, seconds since the program started.
    pub from_seconds: f64,
    pub to_seconds: f64,
    pub pause_p50_ms: f64,
    pub pause_p99_ms: f64,
    pub pause_max_ms: f64,
    pub pause_total_ms: f64,
    pub heap_live_first_mb: f64,
    pub heap_live_last_mb: f64,
    pub heap_live_max_mb: f64,
    pub goal_max_mb: f64,
    /// The runtime's own figure at the last collection: GC's share of CPU since the start.
    pub cpu_percent: f64,
    pub series: Vec<Point>,
    #[serde(skip)]
    samples: Vec<f32>,
    #[serde(skip)]
    stride: u64,
    #[serde(skip)]
    last_number: u64,
    #[serde(skip)]
    pending_max: f64,
}

#[derive(Default)]
pub struct Runs {
    pub runs: Vec<Run>,
    /// Runs past [`MAX_RUNS`], not kept.
    pub dropped: u64,
    current: HashMap<(String, String), usize>,
    rng: u64,
}

impl Runs {
    pub fn add(&mut self, file: &str, stream: &str, line: u64, g: &Gc) {
        let key = (file.to_string(), stream.to_string());
        let at = self
            .current
            .get(&key)
            .copied()
            .filter(|&i| self.runs[i].last_number < g.number);
        let i = match at {
            Some(i) => i,
            None => {
                if self.runs.len() >= MAX_RUNS {
                    self.dropped += 1;
                    self.current.remove(&key);
                    return;
                }
                self.runs.push(Run::new(file, stream, line, g));
                self.current.insert(key, self.runs.len() - 1);
                self.runs.len() - 1
            }
        };
        self.rng = self
            .rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.runs[i].add(line, g, self.rng >> 33);
    }

    /// Percentiles from the samples; call once at the end.
    pub fn finish(&mut self) {
        for r in &mut self.runs {
            let mut s = std::mem::take(&mut r.samples);
            s.sort_by(f32::total_cmp);
            let at = |q: f64| {
                s.get(((s.len() as f64 - 1.0) * q).round() as usize)
                    .map_or(0.0, |v| *v as f64)
            };
            r.pause_p50_ms = at(0.5);
            r.pause_p99_ms = at(0.99);
            // The collections since the last point count in it.
            if let Some(p) = r.series.last_mut() {
                p.max_pause_ms = p.max_pause_ms.max(r.pending_max);
            }
        }
    }
}

impl Run {
    fn new(file: &str, stream: &str, line: u64, g: &Gc) -> Run {
        Run {
            file: file.to_string(),
            stream: stream.to_string(),
            first_line: line,
            last_line: line,
            collections: 0,
            forced: 0,
            from_seconds: g.at_seconds,
            to_seconds: g.at_seconds,
            pause_p50_ms: 0.0,
            pause_p99_ms: 0.0,
            pause_max_ms: 0.0,
            pause_total_ms: 0.0,
            heap_live_first_mb: g.heap_live_mb,
            heap_live_last_mb: g.heap_live_mb,
            heap_live_max_mb: g.heap_live_mb,
            goal_max_mb: g.goal_mb,
            cpu_percent: g.cpu_percent,
            series: Vec::new(),
            samples: Vec::new(),
            stride: 1,
            last_number: 0,
            pending_max: 0.0,
        }
    }

    fn add(&mut self, line: u64, g: &Gc, random: u64) {
        self.collections += 1;
        self.forced += g.forced as u64;
        self.last_line = line;
        self.last_number = g.number;
        self.to_seconds = g.at_seconds;
        self.pause_max_ms = self.pause_max_ms.max(g.pause_ms);
        self.pause_total_ms += g.pause_ms;
        self.heap_live_last_mb = g.heap_live_mb;
        self.heap_live_max_mb = self.heap_live_max_mb.max(g.heap_live_mb);
        self.goal_max_mb = self.goal_max_mb.max(g.goal_mb);
        self.cpu_percent = g.cpu_percent;
        if self.samples.len() < SAMPLES {
            self.samples.push(g.pause_ms as f32);
        } else {
            let j = (random % self.collections) as usize;
            if j < SAMPLES {
                self.samples[j] = g.pause_ms as f32;
            }
        }
        self.pending_max = self.pending_max.max(g.pause_ms);
        if !(self.collections - 1).is_multiple_of(self.stride) {
            return;
        }
        self.series.push(Point {
            at_seconds: g.at_seconds,
            heap_live_mb: g.heap_live_mb,
            goal_mb: g.goal_mb,
            cpu_percent: g.cpu_percent,
            max_pause_ms: std::mem::take(&mut self.pending_max),
        });
        if self.series.len() == POINTS {
            // Half the resolution: every other point, each with the longest pause of two.
            let old = std::mem::take(&mut self.series);
            let mut pause = 0.0f64;
            for (k, p) in old.into_iter().enumerate() {
                pause = pause.max(p.max_pause_ms);
                if k % 2 == 0 {
                    self.series.push(Point {
                        max_pause_ms: pause,
                        ..p
                    });
                    pause = 0.0;
                } else if let Some(last) = self.series.last_mut() {
                    last.max_pause_ms = last.max_pause_ms.max(pause);
                    pause = 0.0;
                }
            }
            self.stride *= 2;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gc(number: u64, pause: f64, live: f64) -> Gc {
        Gc {
            number,
            at_seconds: number as f64,
            pause_ms: pause,
            heap_live_mb: live,
            goal_mb: live * 2.0,
            cpu_percent: 1.0,
            ..Default::default()
        }
    }

    #[test]
    fn runs_restart_percentiles_and_a_bounded_series() {
        let mut r = Runs::default();
        for n in 1..=10_000 {
            r.add("f", "", n, &gc(n, (n % 100) as f64, n as f64));
        }
        r.add("f", "", 10_001, &gc(1, 5.0, 1.0));
        r.finish();
        assert_eq!(r.runs.len(), 2);
        let a = &r.runs[0];
        assert_eq!((a.collections, a.pause_max_ms), (10_000, 99.0));
        assert_eq!((a.pause_p50_ms, a.pause_p99_ms), (50.0, 98.0));
        assert_eq!((a.heap_live_first_mb, a.heap_live_last_mb), (1.0, 10_000.0));
        assert!(a.series.len() <= POINTS && a.series.len() > POINTS / 4);
        let top = a.series.iter().map(|p| p.max_pause_ms).fold(0.0, f64::max);
        assert_eq!(top, 99.0);
        assert_eq!((r.runs[1].collections, r.runs[1].first_line), (1, 10_001));
    }
}
