//! A goroutine dump made readable, as panicparse does it: goroutines counted by state and
//! wait reason, identical stacks folded into one with a count, the goroutines blocked
//! longest, and the likely culprits of a deadlock or a hang (goroutines of the program's own
//! code blocked on a channel, a lock or a wait group).
//!
//! Fed one goroutine at a time by the streaming Go parser, it holds one entry per distinct
//! stack (at most [`MAX_STACKS`]; goroutines past that are counted, not folded), never the
//! goroutines themselves.
use std::{
    collections::{hash_map::DefaultHasher, BTreeMap, HashMap},
    hash::{Hash, Hasher},
};

use serde::Serialize;

use super::go::{Frame, Goroutine};

/// Distinct stacks kept.
pub const MAX_STACKS: usize = 10_000;
/// Goroutine ids kept per stack, and entries in each list of the summary.
const SHOWN: usize = 10;

/// Wait reasons of a goroutine blocked on another goroutine (rather than on I/O, a timer or
/// the scheduler): where deadlocks and hangs are.
const SYNC_WAITS: [&str; 12] = [
    "chan receive",
    "chan send",
    "chan receive (nil chan)",
    "chan send (nil chan)",
    "select",
    "select (no cases)",
    "sync.Mutex.Lock",
    "sync.RWMutex.Lock",
    "sync.RWMutex.RLock",
    "sync.WaitGroup.Wait",
    "sync.Cond.Wait",
    "semacquire",
];

/// Goroutines with one stack.
#[derive(Clone, Debug, Serialize)]
pub struct Stack {
    pub count: u64,
    pub state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wait_reason: Option<String>,
    /// The longest any of them had waited, in minutes (the runtime prints waits of a minute
    /// or more).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_wait_minutes: Option<u64>,
    /// The first few goroutine ids.
    pub ids: Vec<u64>,
    /// The innermost frame of the program's own code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top: Option<Frame>,
    pub frames: Vec<Frame>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_by: Option<Frame>,
}

#[derive(Debug, Default)]
pub struct Fold {
    goroutines: u64,
    by_state: BTreeMap<String, u64>,
    by_wait: BTreeMap<String, u64>,
    stacks: HashMap<u64, Stack>,
    unfolded: u64,
    /// Set by the parser at the end: the runtime's fatal error, if it printed one.
    pub fatal: Option<String>,
}

/// What a dump says, ready to print.
#[derive(Debug, Serialize)]
pub struct Summary {
    pub goroutines: u64,
    pub by_state: BTreeMap<String, u64>,
    pub by_wait_reason: BTreeMap<String, u64>,
    /// Distinct stacks (not all are listed).
    pub distinct_stacks: u64,
    /// Goroutines past [`MAX_STACKS`] distinct stacks: counted, not folded.
    pub unfolded: u64,
    /// The stacks shared by most goroutines, most first.
    pub stacks: Vec<Stack>,
    /// Stacks of goroutines that had waited longest, longest first.
    pub longest_blocked: Vec<Stack>,
    /// The runtime said `all goroutines are asleep - deadlock!`.
    pub deadlock: bool,
    /// Stacks of the program's own code blocked on channels, locks or wait groups, longest
    /// wait and most goroutines first: where to look for a deadlock or a hang.
    pub likely_culprits: Vec<Stack>,
}

impl Fold {
    pub fn add(&mut self, g: Goroutine) {
        self.goroutines += 1;
        *self.by_state.entry(g.state.clone()).or_default() += 1;
        if let Some(w) = &g.wait_reason {
            *self.by_wait.entry(w.clone()).or_default() += 1;
        }
        let mut h = DefaultHasher::new();
        (&g.state, &g.wait_reason, &g.frames, &g.created_by).hash(&mut h);
        let key = h.finish();
        if let Some(s) = self.stacks.get_mut(&key) {
            s.count += 1;
            s.max_wait_minutes = s.max_wait_minutes.max(g.wait_minutes);
            if s.ids.len() < SHOWN {
                s.ids.push(g.id);
            }
            return;
        }
        if self.stacks.len() >= MAX_STACKS {
            self.unfolded += 1;
            return;
        }
        let top = g.frames.iter().find(|f| own_code(&f.function)).cloned();
        self.stacks.insert(
            key,
            Stack {
                count: 1,
                state: g.state,
                wait_reason: g.wait_reason,
                max_wait_minutes: g.wait_minutes,
                ids: vec![g.id],
                top,
                frames: g.frames,
                created_by: g.created_by,
            },
        );
    }

    pub fn is_empty(&self) -> bool {
        self.goroutines == 0
    }

    pub fn summary(&self) -> Summary {
        let mut all: Vec<&Stack> = self.stacks.values().collect();
        // Ties broken by the first id: the same dump prints the same summary.
        all.sort_by_key(|s| (std::cmp::Reverse(s.count), s.ids.first().copied()));
        let stacks = all.iter().take(SHOWN).map(|s| (*s).clone()).collect();
        let mut waited: Vec<&Stack> = all
            .iter()
            .copied()
            .filter(|s| s.max_wait_minutes.is_some())
            .collect();
        waited.sort_by_key(|s| {
            (
                std::cmp::Reverse(s.max_wait_minutes),
                s.ids.first().copied(),
            )
        });
        let mut culprits: Vec<&Stack> = all
            .iter()
            .copied()
            .filter(|s| {
                s.top.is_some()
                    && s.wait_reason
                        .as_deref()
                        .is_some_and(|w| SYNC_WAITS.contains(&w))
            })
            .collect();
        culprits.sort_by_key(|s| {
            (
                std::cmp::Reverse(s.max_wait_minutes),
                std::cmp::Reverse(s.count),
                s.ids.first().copied(),
            )
        });
        Summary {
            goroutines: self.goroutines,
            by_state: self.by_state.clone(),
            by_wait_reason: self.by_wait.clone(),
            distinct_stacks: self.stacks.len() as u64,
            unfolded: self.unfolded,
            stacks,
            longest_blocked: waited.into_iter().take(SHOWN).cloned().collect(),
            deadlock: self
                .fatal
                .as_deref()
                .is_some_and(|f| f.contains("deadlock")),
            likely_culprits: culprits.into_iter().take(SHOWN).cloned().collect(),
        }
    }
}

/// Whether a function is the program's (or a dependency's) rather than Go's: `main.*`, or a
/// package path whose first element has a dot (`example.com/x`, `github.com/…`). The
/// standard library's paths have none (`net/http`, `sync`, `runtime`).
pub fn own_code(function: &str) -> bool {
    if function.starts_with("main.") {
        return true;
    }
    let first = function.split('/').next().unwrap_or(function);
    // A path of one element is a package name up to its first dot.
    let first = if function.contains('/') {
        first
    } else {
        first.split('.').next().unwrap_or(first)
    };
    first.contains('.')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::read::parse::go;

    #[test]
    fn identical_stacks_fold_and_culprits_are_the_programs_blocked_ones() {
        let mut text = String::from("fatal error: all goroutines are asleep - deadlock!\n\n");
        for id in 1..=5 {
            text.push_str(&format!(
                "goroutine {id} [chan receive, {id} minutes]:\nmain.worker(0xc0)\n\t/src/w.go:12 +0x1\ncreated by main.main in goroutine 1\n\t/src/main.go:9 +0x2\n\n"
            ));
        }
        text.push_str("goroutine 9 [sync.Mutex.Lock]:\nsync.runtime_SemacquireMutex(0x1)\n\t/go/src/runtime/sema.go:77 +0x1\nexample.com/db.(*Pool).Get()\n\t/src/db/pool.go:40 +0x1\n\ngoroutine 10 [IO wait]:\ninternal/poll.runtime_pollWait()\n\t/go/src/runtime/netpoll.go:1 +0x1\n");
        let mut p = go::Parser::default();
        let mut f = Fold::default();
        for l in text.lines() {
            if let Some(g) = p.push(l) {
                f.add(g);
            }
        }
        f.add(p.finish().unwrap());
        f.fatal = p.t.fatal_error.clone();
        let s = f.summary();
        assert_eq!(s.goroutines, 7);
        assert_eq!(s.by_state["waiting"], 7);
        assert_eq!(s.by_wait_reason["chan receive"], 5);
        assert_eq!(s.distinct_stacks, 3);
        assert_eq!((s.stacks[0].count, s.stacks[0].ids.len()), (5, 5));
        assert_eq!(s.stacks[0].max_wait_minutes, Some(5));
        assert!(s.deadlock);
        let culprits: Vec<&str> = s
            .likely_culprits
            .iter()
            .map(|c| c.top.as_ref().unwrap().function.as_str())
            .collect();
        assert_eq!(culprits, ["main.worker", "example.com/db.(*Pool).Get"]);
        assert_eq!(s.longest_blocked[0].max_wait_minutes, Some(5));
    }

    #[test]
    fn own_code_is_main_or_a_dotted_path() {
        assert!(own_code("main.main.func1"));
        assert!(own_code("github.com/x/y.(*T).M"));
        assert!(!own_code("net/http.(*conn).serve"));
        assert!(!own_code("runtime.gopark"));
        assert!(!own_code("sync.(*WaitGroup).Wait"));
    }
}
