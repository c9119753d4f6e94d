//! What symbolization costs the agent, per report: wall time, told apart by whether the
//! report had to parse a binary the cache did not hold (cold) or not (warm), and the cache's
//! size. Shown in the stop line, read by `cargo xtask bench`.
use std::time::Duration;

/// Samples kept per kind: the most recent ones, so a long-running agent's memory stays flat.
const KEEP: usize = 4096;

#[derive(Default)]
pub struct Stats {
    cold: Samples,
    warm: Samples,
}

#[derive(Default)]
struct Samples {
    count: u64,
    recent: Vec<u32>,
}

impl Samples {
    fn add(&mut self, us: u32) {
        if self.recent.len() < KEEP {
            self.recent.push(us);
        } else {
            self.recent[(self.count % KEEP as u64) as usize] = us;
        }
        self.count += 1;
    }

    fn summary(&self, what: &str) -> String {
        let mut v = self.recent.clone();
        v.sort_unstable();
        let at = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
        if v.is_empty() {
            return format!("{what} 0");
        }
        format!(
            "{what} {} p50 {} us p99 {} us max {} us",
            self.count,
            at(0.5),
            at(0.99),
            v[v.len() - 1]
        )
    }
}

impl Stats {
    pub fn add(&mut self, took: Duration, cold: bool) {
        let us = u32::try_from(took.as_micros()).unwrap_or(u32::MAX);
        if cold {
            self.cold.add(us);
        } else {
            self.warm.add(us);
        }
    }

    /// `cold N p50 … us p99 … us max … us, warm …` over the most recent reports.
    pub fn summary(&self) -> String {
        format!(
            "{}, {}",
            self.cold.summary("cold"),
            self.warm.summary("warm")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_over_the_recent_samples() {
        let mut s = Stats::default();
        for i in 1..=100 {
            s.add(Duration::from_micros(i), false);
        }
        s.add(Duration::from_millis(7), true);
        assert_eq!(
            s.summary(),
            "cold 1 p50 7000 us p99 7000 us max 7000 us, warm 100 p50 51 us p99 99 us max 100 us"
        );
        for _ in 0..2 * KEEP {
            s.add(Duration::from_micros(3), false);
        }
        assert!(s
            .summary()
            .ends_with("warm 8292 p50 3 us p99 3 us max 3 us"));
    }
}
