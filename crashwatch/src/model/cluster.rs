//! `cluster` in a report: which cluster a crash joined, how often it came, whether it loops,
//! and the build it likely came with. The cluster stage fills it.
use serde::Serialize;

/// `cluster` in a report.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct ClusterInfo {
    /// The cluster's number in this node's store (stable across restarts).
    pub id: i64,
    /// Crashes in the cluster, this one included.
    pub count: u64,
    /// RFC 3339 UTC.
    pub first_seen: String,
    pub last_seen: String,
    /// This crash opened the cluster.
    pub new: bool,
    /// The cluster crashed at least `--loop-count` times within `--loop-window`.
    #[serde(rename = "loop")]
    pub looping: bool,
    /// Its crashes within the loop window, this one included.
    pub recent: u32,
    pub window_secs: u64,
    /// This crash opened the cluster soon after a new build of its program appeared on the
    /// node: that build is the likely cause (`cluster::attribution`); null otherwise.
    pub regression: Option<Regression>,
}

/// `cluster.regression` in a report.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Regression {
    pub program: String,
    /// The build the cluster first crashed in.
    pub revision: String,
    /// When this node first saw that build (RFC 3339 UTC).
    pub revision_first_seen: String,
    /// The program's build seen just before it.
    pub previous: String,
}
