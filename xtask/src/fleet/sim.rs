//! The simulated fleet's timeline: a steady trickle of crashes from every node, a
//! Deployment crash-looping on 50 nodes, a rollout's SIGTERMs, a new build that regresses,
//! heartbeats every 30 s (a few nodes fall silent), and a share of posts sent twice (an
//! agent's retry after a lost answer). What was sent is kept so the checks know the answer.
use std::{
    sync::mpsc::SyncSender,
    time::{Duration, Instant},
};

use serde_json::Value;

use super::load::{rewrite, Job, Origin, Rng};

/// The crash loop: its workload, nodes, fingerprint and rate.
pub const LOOP_NS: &str = "shop";
pub const LOOP_WORKLOAD: &str = "checkout";
pub const LOOP_NODES: usize = 50;
pub const LOOP_FP: &str = "v1:00000000c0ffee01";
const LOOP_RATE: f64 = 20.0;
/// The regression: a new build's first crash, blamed on it by its node.
pub const REG_FP: &str = "v1:00000000deadbe01";
pub const REG_BUILD: &str = "9.9";
/// Nodes heard once at the start and never again.
pub const SILENT: usize = 5;
/// Distinct crashes (fingerprints) the trickle spreads over, and its workloads.
const VARIANTS: u64 = 200;
const NAMESPACES: usize = 10;
const WORKLOADS: usize = 100;
const HEARTBEAT: Duration = Duration::from_secs(30);
/// One post in this many is sent a second time.
const TWICE: u64 = 50;

/// What the timeline sent.
#[derive(Default, Debug)]
pub struct Sent {
    /// Distinct crash reports (keys), and how many of them were sent twice.
    pub reports: u64,
    pub twice: u64,
    pub loop_reports: u64,
    pub terminations: u64,
    pub heartbeats: u64,
}

pub struct Fleet {
    pub nodes: usize,
    /// Real reports recorded on this machine.
    pub templates: Vec<Value>,
    rng: Rng,
    seq: u64,
    pub sent: Sent,
}

impl Fleet {
    pub fn new(nodes: usize, templates: Vec<Value>) -> Fleet {
        Fleet {
            nodes,
            templates,
            rng: Rng(0x9e37_79b9_7f4a_7c15),
            seq: 0,
            sent: Sent::default(),
        }
    }

    fn report(&mut self, o: &Origin, fingerprint: &str) -> Value {
        self.seq += 1;
        let t = self.rng.below(self.templates.len() as u64) as usize;
        let template = self.templates[t].clone();
        rewrite(&template, o, self.seq, fingerprint, &mut self.rng)
    }

    fn post(&mut self, q: &SyncSender<Job>, r: &Value, kind: &'static str) -> bool {
        let body = serde_json::to_vec(r).unwrap();
        if kind == "report" && self.rng.below(TWICE) == 0 {
            self.sent.twice += 1;
            let again = Job {
                path: "/api/v1/reports",
                body: body.clone(),
                kind,
            };
            if q.send(again).is_err() {
                return false;
            }
        }
        q.send(Job {
            path: "/api/v1/reports",
            body,
            kind,
        })
        .is_ok()
    }

    /// One crash of the trickle: any node, one of 100 workloads, one of 200 crashes.
    fn trickle(&mut self, q: &SyncSender<Job>) -> bool {
        let node = SILENT + self.rng.below((self.nodes - SILENT) as u64) as usize;
        let w = self.rng.below(WORKLOADS as u64) as usize;
        let (ns, wl) = (format!("ns-{}", w % NAMESPACES), format!("svc-{w:03}"));
        let fp = format!("v1:{:016x}", 0xa000 + self.rng.below(VARIANTS));
        let build = format!("1.{}", w % 3);
        let o = Origin {
            node,
            namespace: &ns,
            workload: &wl,
            build: &build,
        };
        let r = self.report(&o, &fp);
        self.sent.reports += 1;
        self.post(q, &r, "report")
    }

    fn crash_loop(&mut self, q: &SyncSender<Job>) -> bool {
        let node = SILENT + self.rng.below(LOOP_NODES as u64) as usize;
        let o = Origin {
            node,
            namespace: LOOP_NS,
            workload: LOOP_WORKLOAD,
            build: "2.0",
        };
        let r = self.report(&o, LOOP_FP);
        self.sent.reports += 1;
        self.sent.loop_reports += 1;
        self.post(q, &r, "report")
    }

    /// A rollout's SIGTERM to one pod of web/frontend: a termination, never a cluster.
    fn rollout(&mut self, q: &SyncSender<Job>) -> bool {
        let node = SILENT + self.rng.below((self.nodes - SILENT) as u64) as usize;
        let o = Origin {
            node,
            namespace: "web",
            workload: "frontend",
            build: "3.0",
        };
        let mut r = self.report(&o, "");
        r["kind"] = "termination".into();
        r["signal"] = serde_json::json!({
            "number": 15, "name": "SIGTERM", "code": 0, "code_name": null, "addr": null
        });
        self.sent.terminations += 1;
        self.post(q, &r, "termination")
    }

    /// The new build's crash, its node blaming the build's arrival.
    fn regression(&mut self, q: &SyncSender<Job>) -> bool {
        let node = SILENT + self.rng.below(10) as usize;
        let o = Origin {
            node,
            namespace: "pay",
            workload: "payments",
            build: REG_BUILD,
        };
        let mut r = self.report(&o, REG_FP);
        r["cluster"] = serde_json::json!({
            "regression": { "program": "payments", "revision": format!("rev-{REG_BUILD}") }
        });
        self.sent.reports += 1;
        self.post(q, &r, "report")
    }

    fn heartbeat(&mut self, q: &SyncSender<Job>, node: usize) -> bool {
        self.sent.heartbeats += 1;
        let body = serde_json::json!({
            "node": format!("node-{node:04}"), "agent_version": "fleet-sim", "kernel": "6.18.0",
            "crashes": 0, "lost": 0, "spool_depth": 0
        });
        q.send(Job {
            path: "/api/v1/heartbeat",
            body: body.to_string().into_bytes(),
            kind: "heartbeat",
        })
        .is_ok()
    }

    /// Runs the timeline for `length` with the trickle at `rate` per second; the loop,
    /// rollout and regression when `scenarios`. Returns the seconds it really took (more
    /// than `length` when the queue was full: the hub could not keep up).
    pub fn run(
        &mut self,
        q: &SyncSender<Job>,
        rate: f64,
        length: Duration,
        scenarios: bool,
    ) -> f64 {
        let t0 = Instant::now();
        let secs = length.as_secs_f64();
        let (mut trickled, mut looped, mut rolled, mut regressed) = (0u64, 0u64, 0u64, 0u64);
        let mut beats_due = 0u64;
        // Every node says it is there, the silent ones for the last time.
        for n in 0..self.nodes {
            self.heartbeat(q, n);
        }
        loop {
            let t = t0.elapsed().as_secs_f64();
            let at = t.min(secs);
            while (trickled as f64) < rate * at {
                trickled += 1;
                self.trickle(q);
            }
            if scenarios {
                while (looped as f64) < LOOP_RATE * at {
                    looped += 1;
                    self.crash_loop(q);
                }
                // The rollout: the second third, every node's frontend pod once.
                let rollout = ((at - secs / 3.0) / (secs / 3.0)).clamp(0.0, 1.0);
                while (rolled as f64) < rollout * self.nodes as f64 {
                    rolled += 1;
                    self.rollout(q);
                }
                // The regression: from half-way, 2 per second.
                while (regressed as f64) < (at - secs / 2.0).max(0.0) * 2.0 {
                    regressed += 1;
                    self.regression(q);
                }
            }
            let beats = (at / HEARTBEAT.as_secs_f64()) as u64;
            while beats_due < beats {
                beats_due += 1;
                for n in SILENT..self.nodes {
                    self.heartbeat(q, n);
                }
            }
            if t >= secs {
                return t0.elapsed().as_secs_f64();
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
