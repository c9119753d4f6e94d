//! Attribution: which build of a program a crash came from, and whether a cluster is a
//! regression of a new build ("which deploy broke it"), answered from what the binaries carry.
//!
//! A *program* is a Go binary's main package path (its build info's `path`), else the
//! executable's file name. Its *revision* is the Go build info's `vcs.revision` (with
//! `+dirty` when `vcs.modified`), else the executable's GNU build id. [`Builds`] remembers
//! when each (program, revision) was first seen: by the Go prober, which reads every new
//! executable once at its first exec, and by every crash report. A cluster opened by a crash
//! of revision R of program P is a regression of R when P had been seen with another revision
//! before R, and R was first seen at most `window` before the crash. A program seen for the
//! first time, or a revision the agent has known for longer than the window, makes no claim.
//!
//! The first sightings are kept in the store so a restart does not make every running build
//! look new; in memory at most [`MAX_BUILDS`] are kept (the oldest programs' go first).
pub use crate::model::cluster::Regression;
use std::collections::HashMap;

use crate::{model::report::Report, read::gobin::BuildInfo};

/// (program, revision) pairs remembered.
pub const MAX_BUILDS: usize = 1 << 16;

/// One build seen at a time (Unix ns).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sighting {
    pub program: String,
    pub revision: String,
    pub at_ns: u64,
}

/// The program and revision of the crashed binary, when it has a revision.
pub fn build_of(r: &Report) -> Option<(String, String)> {
    let go = r.go.as_ref().and_then(|g| g.build.as_ref());
    let exe = r.exe.as_deref()?;
    // The executable's build id as the symbolizer read it for a frame in it.
    let build_id = || {
        r.stack
            .iter()
            .find(|f| f.module.as_deref() == Some(exe))
            .and_then(|f| f.build_id.clone())
    };
    Some((program(exe, go)?, revision(go, build_id)?))
}

/// The program and revision of a binary read at exec, by the same rules as [`build_of`].
pub fn build_of_binary(
    exe: &str,
    go: Option<&BuildInfo>,
    gnu_build_id: Option<&[u8]>,
) -> Option<(String, String)> {
    let build_id = || gnu_build_id.map(crate::model::hex::bytes);
    Some((program(exe, go)?, revision(go, build_id)?))
}

fn program(exe: &str, go: Option<&BuildInfo>) -> Option<String> {
    go.and_then(|b| b.path.clone()).or_else(|| {
        exe.rsplit('/')
            .next()
            .filter(|n| !n.is_empty())
            .map(str::to_string)
    })
}

fn revision(go: Option<&BuildInfo>, build_id: impl FnOnce() -> Option<String>) -> Option<String> {
    let vcs = go.and_then(|b| {
        let rev = b.vcs_revision.as_ref()?;
        Some(match b.vcs_modified {
            Some(true) => format!("{rev}+dirty"),
            _ => rev.clone(),
        })
    });
    vcs.or_else(build_id)
}

/// When each build of each program was first seen.
#[derive(Default)]
pub struct Builds {
    /// program → (revision, first seen ns), oldest first.
    programs: HashMap<String, Vec<(String, u64)>>,
    len: usize,
}

impl Builds {
    pub fn new(known: Vec<Sighting>) -> Builds {
        let mut b = Builds::default();
        for s in known {
            b.see(&s);
        }
        b
    }

    /// Remembers a sighting; true when the build is new (the store should keep it).
    pub fn see(&mut self, s: &Sighting) -> bool {
        if let Some(revs) = self.programs.get_mut(&s.program) {
            if let Some(r) = revs.iter_mut().find(|(r, _)| *r == s.revision) {
                // The store's first sighting may be later than one replayed out of order.
                r.1 = r.1.min(s.at_ns);
                return false;
            }
        }
        if self.len >= MAX_BUILDS {
            self.forget_oldest();
        }
        let revs = self.programs.entry(s.program.clone()).or_default();
        revs.push((s.revision.clone(), s.at_ns));
        revs.sort_by_key(|r| r.1);
        self.len += 1;
        true
    }

    /// The program whose newest build is the oldest: what runs no more.
    fn forget_oldest(&mut self) {
        let stalest = self
            .programs
            .iter()
            .min_by_key(|(_, revs)| revs.last().map_or(0, |r| r.1))
            .map(|(p, _)| p.clone());
        if let Some(p) = stalest {
            self.len -= self.programs.remove(&p).map_or(0, |v| v.len());
        }
    }

    /// Whether a cluster opened at `crash_ns` by `revision` of `program` is a regression of
    /// that revision (module doc).
    pub fn regression(
        &self,
        program: &str,
        revision: &str,
        crash_ns: u64,
        window_ns: u64,
    ) -> Option<Regression> {
        let revs = self.programs.get(program)?;
        let at = revs.iter().position(|(r, _)| r == revision)?;
        let first = revs[at].1;
        if at == 0 || crash_ns.saturating_sub(first) > window_ns {
            return None;
        }
        Some(Regression {
            program: program.to_string(),
            revision: revision.to_string(),
            revision_first_seen: crate::model::clock::rfc3339(first),
            previous: revs[at - 1].0.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: u64 = 3_600_000_000_000;

    fn s(p: &str, r: &str, at: u64) -> Sighting {
        Sighting {
            program: p.into(),
            revision: r.into(),
            at_ns: at,
        }
    }

    #[test]
    fn a_new_cluster_right_after_a_new_revision_is_its_regression() {
        let mut b = Builds::new(vec![s("svc", "aaa", 0)]);
        assert!(b.see(&s("svc", "bbb", 10 * H)));
        assert!(!b.see(&s("svc", "bbb", 11 * H)));
        let r = b.regression("svc", "bbb", 12 * H, 24 * H).unwrap();
        assert_eq!((r.revision.as_str(), r.previous.as_str()), ("bbb", "aaa"));
        // Long after the deploy: not attributed to it.
        assert_eq!(b.regression("svc", "bbb", 40 * H, 24 * H), None);
        // The first build ever seen, another program, an unknown build: no claim.
        assert_eq!(b.regression("svc", "aaa", 1, 24 * H), None);
        assert_eq!(b.regression("other", "bbb", 12 * H, 24 * H), None);
        assert_eq!(b.regression("svc", "ccc", 12 * H, 24 * H), None);
    }

    #[test]
    fn an_out_of_order_sighting_keeps_the_earliest_time() {
        let mut b = Builds::new(vec![s("svc", "aaa", 0), s("svc", "bbb", 5 * H)]);
        b.see(&s("svc", "bbb", 2 * H));
        let r = b.regression("svc", "bbb", 20 * H, 24 * H).unwrap();
        assert_eq!(r.revision_first_seen, crate::model::clock::rfc3339(2 * H));
    }

    #[test]
    fn memory_is_bounded_by_forgetting_the_stalest_program() {
        let mut b = Builds::default();
        for i in 0..MAX_BUILDS as u64 + 10 {
            b.see(&s(&format!("p{i}"), "r", i));
        }
        assert!(b.len <= MAX_BUILDS);
        assert!(!b.programs.contains_key("p0"));
        assert!(b.programs.contains_key(&format!("p{}", MAX_BUILDS + 9)));
    }
}
