//! Cluster (the pipeline's last stage, before the outputs): which reports are the same bug, and how
//! often it happens. [`fingerprint`] computes the versioned value each report carries
//! (docs/fingerprint.md); [`Clusters`] counts each fingerprint's crashes in memory (loaded from the
//! store at start), so a report leaves with its cluster's count and loop flag without waiting on
//! the disk, and flags a cluster that crashes `loop_count` times within `loop_window` as a crash
//! loop, and [`attribution`] says which build a new cluster is a regression of.
pub use crate::model::cluster::ClusterInfo;
pub mod attribution;
pub mod fingerprint;

use std::{
    collections::{HashMap, VecDeque},
    time::Duration,
};

use crate::model::report::Report;

/// One cluster as the store and the listing know it.
#[derive(Clone, Debug, Default)]
pub struct Cluster {
    pub id: i64,
    pub fingerprint: String,
    pub kind: String,
    pub headline: String,
    pub top_frame: String,
    pub count: u64,
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
    /// Times of its latest crashes (at most the loop count), oldest first.
    pub recent: VecDeque<u64>,
    /// The build it is a regression of (`attribution`), set when it opened.
    pub regression: Option<String>,
}

/// What [`Clusters::observe`] makes of a report.
pub struct Observed {
    pub cluster: Cluster,
    pub info: ClusterInfo,
    /// The crashed build, when it has a revision: the store keeps it per cluster.
    pub build: Option<(String, String)>,
    /// A build seen for the first time: the store keeps when.
    pub new_build: Option<attribution::Sighting>,
}

/// When a cluster is a loop, and when a regression.
#[derive(Clone, Copy, Debug)]
pub struct Policy {
    /// A cluster with this many crashes within `loop_window` is a crash loop.
    pub loop_count: u32,
    pub loop_window: Duration,
    /// How long after a build first appears a new cluster of its program is blamed on it.
    pub regression_window: Duration,
}

/// Every cluster this agent knows, by fingerprint.
pub struct Clusters {
    by_fingerprint: HashMap<String, Cluster>,
    next_id: i64,
    policy: Policy,
    builds: attribution::Builds,
}

impl Clusters {
    /// `known`: the store's clusters (their recent crash times are not kept there: a loop
    /// in progress across a restart is seen again after `loop_count` crashes).
    /// `builds`: the store's first sightings of each build.
    pub fn new(
        known: Vec<Cluster>,
        builds: Vec<attribution::Sighting>,
        policy: Policy,
    ) -> Clusters {
        let next_id = known.iter().map(|c| c.id).max().unwrap_or(0) + 1;
        Clusters {
            by_fingerprint: known
                .into_iter()
                .map(|c| (c.fingerprint.clone(), c))
                .collect(),
            next_id,
            policy: Policy {
                loop_count: policy.loop_count.max(1),
                ..policy
            },
            builds: attribution::Builds::new(builds),
        }
    }

    /// A build seen at exec; true when it is new (the store should keep it).
    pub fn see_build(&mut self, s: &attribution::Sighting) -> bool {
        self.builds.see(s)
    }

    /// Clusters in a crash loop at `now_ns`: `loop_count` crashes within the window before it.
    pub fn looping_now(&self, now_ns: u64) -> usize {
        let window = self.policy.loop_window.as_nanos() as u64;
        let n = self.policy.loop_count as usize;
        self.by_fingerprint
            .values()
            .filter(|c| {
                c.recent.len() >= n
                    && c.recent
                        .front()
                        .is_some_and(|t| now_ns.saturating_sub(*t) <= window)
            })
            .count()
    }

    /// Counts report `r` (its `fingerprint` set) as crashing at `now_ns` (Unix time): the
    /// cluster as it is now, and what the report says of it.
    pub fn observe(&mut self, r: &Report, now_ns: u64) -> Observed {
        let new = !self.by_fingerprint.contains_key(&r.fingerprint);
        let build = attribution::build_of(r);
        let new_build = build.as_ref().and_then(|(program, revision)| {
            let s = attribution::Sighting {
                program: program.clone(),
                revision: revision.clone(),
                at_ns: now_ns,
            };
            self.builds.see(&s).then_some(s)
        });
        let window = self.policy.regression_window.as_nanos() as u64;
        let regression = match (&build, new) {
            (Some((p, rev)), true) => self.builds.regression(p, rev, now_ns, window),
            _ => None,
        };
        let next_id = &mut self.next_id;
        let c = self
            .by_fingerprint
            .entry(r.fingerprint.clone())
            .or_insert_with(|| {
                let id = *next_id;
                *next_id += 1;
                Cluster {
                    id,
                    fingerprint: r.fingerprint.clone(),
                    kind: r.kind.to_string(),
                    first_seen_ns: now_ns,
                    regression: regression.as_ref().map(|g| g.revision.clone()),
                    ..Cluster::default()
                }
            });
        c.count += 1;
        c.last_seen_ns = now_ns;
        // The latest message and frame: the listing shows the cluster's current face.
        c.headline = headline(r);
        c.top_frame = top_frame(r);
        let window = self.policy.loop_window.as_nanos() as u64;
        c.recent.push_back(now_ns);
        while c.recent.len() > self.policy.loop_count as usize
            || c.recent
                .front()
                .is_some_and(|t| now_ns.saturating_sub(*t) > window)
        {
            c.recent.pop_front();
        }
        let info = ClusterInfo {
            id: c.id,
            count: c.count,
            first_seen: crate::model::clock::rfc3339(c.first_seen_ns),
            last_seen: crate::model::clock::rfc3339(c.last_seen_ns),
            new,
            looping: c.recent.len() >= self.policy.loop_count as usize,
            recent: c.recent.len() as u32,
            window_secs: self.policy.loop_window.as_secs(),
            regression,
        };
        Observed {
            cluster: c.clone(),
            info,
            build,
            new_build,
        }
    }
}

/// One line that says what the crash was: the runtime's error line, a Go panic or fatal
/// error, the signal, the exit.
pub fn headline(r: &Report) -> String {
    let line = if r.kind == "oom_kill" {
        oom_headline(r)
    } else if let Some(e) = &r.error {
        e.headline.clone()
    } else if let Some(m) = r.go.as_ref().and_then(|g| g.fatal_message.as_ref()) {
        format!("fatal error: {m}")
    } else if let Some(v) = r.go.as_ref().and_then(|g| g.panic_value.as_ref()) {
        format!("panic: {v}")
    } else if let Some(s) = &r.signal {
        match s.code_name {
            Some(code) => format!("{} ({code})", s.name),
            None => s.name.clone(),
        }
    } else {
        match r.exit.code {
            Some(c) => format!("exit {c}"),
            None => "exit".into(),
        }
    };
    line.chars().take(512).collect()
}

/// `OOM kill`, with the limit that was hit: `OOM kill: cgroup /kubepods/pod1 at its 64 MiB
/// limit`, `OOM kill: the host ran out of memory`.
fn oom_headline(r: &Report) -> String {
    let Some(o) = &r.oom else {
        return "OOM kill".into();
    };
    match (o.constraint, &o.cgroup, o.limit_bytes) {
        (Some("cgroup"), Some(cg), Some(limit)) => {
            format!(
                "OOM kill: cgroup {cg} at its {} limit",
                crate::model::report::human_bytes(limit)
            )
        }
        (Some("system"), _, _) => "OOM kill: the host ran out of memory".into(),
        _ => "OOM kill".into(),
    }
}

/// The innermost in-app frame as `function (file:line)`, or the fingerprint's frame; for a
/// runtime death that printed no stack, where the runtime says it was raised (`file:line`).
pub fn top_frame(r: &Report) -> String {
    match top_site(r) {
        Some(Site {
            name,
            file: Some(file),
            line: Some(line),
        }) if name != file => format!("{name} ({file}:{line})"),
        Some(Site {
            file: Some(file),
            line: Some(line),
            ..
        }) => format!("{file}:{line}"),
        Some(s) => s.name,
        None => String::new(),
    }
}

/// Where a crash is in the program's own code: the fingerprint's first frame.
pub struct Site {
    pub name: String,
    pub file: Option<String>,
    pub line: Option<u32>,
}

/// The fingerprint's first in-app frame, with its file and line from the runtime's printed
/// stack when there is one (Python's and Node's names with `@file`), else the native one.
pub fn top_site(r: &Report) -> Option<Site> {
    let basis = fingerprint::fingerprint(r).basis;
    let Some(name) = basis.iter().find_map(|l| l.strip_prefix("frame:")) else {
        // No stack of its own (a Rust panic without RUST_BACKTRACE): the program's own line
        // the runtime named.
        let at = r.error.as_ref()?.location.as_ref()?;
        let file = at.file.clone()?;
        return Some(Site {
            name: at.function.clone().unwrap_or_else(|| file.clone()),
            file: Some(file),
            line: at.line,
        });
    };
    let is = |function: Option<&str>, file: Option<&str>| {
        function.map(fingerprint::clean).is_some_and(|f| {
            f == name
                || file.is_some_and(|file| {
                    name.strip_prefix(f.as_str())
                        .and_then(|rest| rest.strip_prefix('@'))
                        == Some(file.rsplit('/').next().unwrap_or(file))
                })
        })
    };
    let printed = r.error.as_ref().and_then(|e| {
        let f = e
            .frames
            .iter()
            .find(|f| is(f.function.as_deref(), f.file.as_deref()))?;
        Some((f.file.clone(), f.line))
    });
    let (file, line) = printed
        .or_else(|| {
            let f = r
                .stack
                .iter()
                .find(|f| is(f.function.as_deref(), f.file.as_deref()))?;
            Some((f.file.clone(), f.line))
        })
        .unwrap_or((None, None));
    Some(Site {
        name: name.to_string(),
        file,
        line,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(loop_count: u32, loop_secs: u64) -> Policy {
        Policy {
            loop_count,
            loop_window: Duration::from_secs(loop_secs),
            regression_window: Duration::from_secs(86_400),
        }
    }

    fn report(fp: &str) -> Report {
        Report {
            kind: "signal",
            fingerprint: fp.into(),
            ..Report::default()
        }
    }

    #[test]
    fn counts_and_ids_per_fingerprint() {
        let mut c = Clusters::new(Vec::new(), Vec::new(), policy(5, 600));
        let a = c.observe(&report("v1:a"), 1_000).info;
        let b = c.observe(&report("v1:b"), 2_000).info;
        let a2 = c.observe(&report("v1:a"), 3_000).info;
        assert_eq!((a.id, a.count, a.new), (1, 1, true));
        assert_eq!((b.id, b.count, b.new), (2, 1, true));
        assert_eq!((a2.id, a2.count, a2.new), (1, 2, false));
    }

    #[test]
    fn ids_continue_after_the_stores() {
        let known = vec![Cluster {
            id: 41,
            fingerprint: "v1:a".into(),
            count: 7,
            ..Cluster::default()
        }];
        let mut c = Clusters::new(known, Vec::new(), policy(5, 600));
        let a = c.observe(&report("v1:a"), 1).info;
        let b = c.observe(&report("v1:b"), 2).info;
        assert_eq!((a.id, a.count, a.new), (41, 8, false));
        assert_eq!(b.id, 42);
    }

    #[test]
    fn a_loop_is_n_crashes_within_the_window() {
        let s = 1_000_000_000u64;
        let mut c = Clusters::new(Vec::new(), Vec::new(), policy(3, 60));
        let flags: Vec<bool> = [0, 10, 20, 100, 200, 201, 202]
            .iter()
            .map(|t| c.observe(&report("v1:a"), t * s).info.looping)
            .collect();
        assert_eq!(flags, [false, false, true, false, false, false, true]);
        assert_eq!(c.looping_now(202 * s), 1);
        assert_eq!(c.looping_now(300 * s), 0, "the window has passed");
    }

    fn go_report(fp: &str, revision: &str) -> Report {
        Report {
            kind: "go_panic",
            fingerprint: fp.into(),
            exe: Some("/srv/api".into()),
            go: Some(crate::model::report::GoInfo {
                build: Some(crate::read::gobin::BuildInfo {
                    path: Some("example.com/api".into()),
                    vcs_revision: Some(revision.into()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Report::default()
        }
    }

    #[test]
    fn a_cluster_opened_by_a_new_build_is_its_regression() {
        let h = 3_600_000_000_000u64;
        let mut c = Clusters::new(Vec::new(), Vec::new(), policy(5, 600));
        let first = c.observe(&go_report("v1:old", "aaa"), 0);
        assert!(first.new_build.is_some());
        assert_eq!(
            first.info.regression, None,
            "the first build seen blames nothing"
        );
        // The deploy: build bbb seen at exec, then a crash nobody had seen before.
        let s = attribution::Sighting {
            program: "example.com/api".into(),
            revision: "bbb".into(),
            at_ns: 10 * h,
        };
        assert!(c.see_build(&s));
        let o = c.observe(&go_report("v1:new", "bbb"), 11 * h);
        let r = o.info.regression.expect("a regression of bbb");
        assert_eq!((r.revision.as_str(), r.previous.as_str()), ("bbb", "aaa"));
        assert_eq!(o.cluster.regression.as_deref(), Some("bbb"));
        assert_eq!(o.new_build, None, "bbb was known from its exec");
        assert_eq!(o.build, Some(("example.com/api".into(), "bbb".into())));
        // The old bug in the new build: not new, so not the new build's fault.
        assert_eq!(
            c.observe(&go_report("v1:old", "bbb"), 12 * h)
                .info
                .regression,
            None
        );
        // A new bug two days after the deploy: not attributed to it.
        assert_eq!(
            c.observe(&go_report("v1:late", "bbb"), 60 * h)
                .info
                .regression,
            None
        );
    }

    /// A Rust panic's top frame is the program's own code: past `__rustc::rust_begin_unwind`
    /// (Rust 1.87+) and `core::panicking`, and without RUST_BACKTRACE the line the panic
    /// message names.
    #[test]
    fn a_rust_panics_top_frame_is_the_programs_own() {
        let with = "thread 'main' (1450) panicked at m.rs:1:28:\nindex out of bounds: the len is 0 but the index is 4\nstack backtrace:\n   0: __rustc::rust_begin_unwind\n             at /rustc/5980/library/std/src/panicking.rs:689:5\n   1: core::panicking::panic_fmt\n             at /rustc/5980/library/core/src/panicking.rs:80:14\n   2: core::panicking::panic_bounds_check\n             at /rustc/5980/library/core/src/panicking.rs:271:5\n   3: m::get\n             at ./m.rs:1:28\n   4: m::main\n             at ./m.rs:4:20\nnote: Some details are omitted, run with `RUST_BACKTRACE=full` for a verbose backtrace.\n";
        let without = "\nthread 'main' (1451) panicked at src/main.rs:1:28:\nindex out of bounds: the len is 0 but the index is 4\nnote: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n";
        let report = |text: &str| Report {
            kind: "runtime_error",
            error: crate::read::parse::recognise(text),
            ..Report::default()
        };
        assert_eq!(top_frame(&report(with)), "m::get (./m.rs:1)");
        assert_eq!(top_frame(&report(without)), "src/main.rs:1");
    }
}
