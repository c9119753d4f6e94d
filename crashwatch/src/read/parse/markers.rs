//! The runtimes' markers: substrings of which every line that can start a block ([`super::blocks`])
//! or is a gctrace line holds at least one. While no block is open, a line holding no marker
//! that is not one a block could look back to ([`super::blocks::looked_back_to`]) right
//! before a marker changes nothing: a reader may pass it over unread
//! (`crashwatch analyze` does, finding the next candidate line with aho-corasick's SIMD
//! search, as ripgrep prefilters with memchr and Teddy).
//!
//! Deliberately wider than the finder's tests (unanchored): a marker in an ordinary line costs
//! that line a full read, a marker missing would lose a crash. The test below holds the list to
//! that over every line of the parsers' testdata. Long markers keep the search fast: the
//! lines looked back to (`#`, `runtime: `, `SIG…:`) are not searched for; the reader keeps
//! those right before a marker.
use std::sync::OnceLock;

use aho_corasick::AhoCorasick;

/// What starts a block ([`super::blocks`]'s `start`) and gctrace's `gc `. Their first three
/// bytes are what the SIMD search looks for (Teddy's fingerprints): a marker whose head is
/// common in ordinary lines (`cal…` as in `caller=`) would make nearly every line a
/// candidate, so some are cut to a rarer part of the same words.
pub const MARKERS: &[&str] = &[
    // Go (`PC=0x` starts a block after a signal header)
    "panic: ",
    "fatal error: ",
    "PC=0x",
    "gc ",
    // Python (exception groups end with it too)
    "Traceback (most recent call last):",
    "Fatal Python error: ",
    // Rust (`thread 'main' panicked at`, `… has overflowed its stack`)
    "thread '",
    "memory allocation of ",
    // Java and the JVM's fatal error log
    "Exception in thread \"",
    "# A fatal error has been detected",
    // Node: V8's fatal errors, and `file.js:12` / `node:internal/…:391` lines
    "FATAL ERROR: ",
    "<--- Last few GCs --->",
    "js:",
    ".ts:",
    "node:",
    // C++, glibc (every heap message: `free(): `, `malloc(): `, …, `double free or
    // corruption`, `corrupted size vs. prev_size`), sanitizers
    "nate called ",
    "Assertion `",
    "(): ",
    "rruption",
    "rrupted ",
    "*** ",
    "==ERROR: ",
];

fn searcher() -> &'static AhoCorasick {
    static S: OnceLock<AhoCorasick> = OnceLock::new();
    // Leftmost-first: only leftmost semantics let aho-corasick search with Teddy (SIMD);
    // the standard kind walks the automaton over every byte. The list is fixed and valid:
    // building it cannot fail.
    S.get_or_init(|| {
        AhoCorasick::builder()
            .match_kind(aho_corasick::MatchKind::LeftmostFirst)
            .build(MARKERS)
            .expect("the markers build")
    })
}

/// Where the first marker in `bytes` starts.
pub fn find(bytes: &[u8]) -> Option<usize> {
    searcher().find(bytes).map(|m| m.start())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::read::parse::{blocks::Finder, gctrace};

    /// Every line in every testdata file that starts a block or is read by gctrace holds a
    /// marker.
    #[test]
    fn every_line_that_matters_holds_a_marker() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/read/parse/testdata");
        let mut starts = 0;
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let text = String::from_utf8_lossy(&std::fs::read(e.path()).unwrap()).into_owned();
            for (i, l) in text.lines().enumerate() {
                let at = format!("{}:{}: {l:?}", e.path().display(), i + 1);
                let mut f = Finder::default();
                let mut ended = false;
                f.push(l, 1, &mut |_| ended = true);
                let started = ended || f.is_open();
                if started || gctrace::parse(l).is_some() {
                    starts += 1;
                    assert!(
                        find(l.as_bytes()).is_some(),
                        "{at} matters and holds no marker"
                    );
                }
            }
        }
        assert!(starts > 15, "only {starts} lines start a block");
        // Every glibc heap message the finder knows, whether or not a testdata file has it.
        for h in crate::read::parse::native::HEAP {
            assert!(find(h.as_bytes()).is_some(), "{h:?} holds no marker");
        }
        // An ordinary service line holds none.
        let ordinary = "level=info ts=2026-12-03T07:00:00.000001Z caller=server.go:212 msg=\"request served\" method=GET path=/api/v1/items/7 status=200 duration_ms=3";
        assert_eq!(find(ordinary.as_bytes()), None);
    }
}
