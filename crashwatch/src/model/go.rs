//! What a report says of a Go program beyond its stack: its goroutines as the runtime
//! printed them, and its build info. `read::parse::go` and `read::gobin` make them.
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(default)]
pub struct Frame {
    pub function: String,
    pub file: Option<String>,
    pub line: Option<u32>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct Goroutine {
    pub id: u64,
    /// `running`, `runnable`, `syscall`, `waiting`, ...
    pub state: String,
    /// Why a waiting goroutine waits (`chan receive`, `select`, `sleep`, ...).
    pub wait_reason: Option<String>,
    pub wait_minutes: Option<u64>,
    pub locked_to_thread: bool,
    pub frames: Vec<Frame>,
    pub created_by: Option<Frame>,
    /// The goroutine that created this one (Go 1.21+ prints it).
    pub created_in: Option<u64>,
    /// The runtime left out frames (`...additional frames elided...`).
    pub elided: bool,
}

#[derive(Clone, Debug, Default, Serialize, serde::Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct BuildInfo {
    /// The main package's import path (`path` line).
    pub path: Option<String>,
    pub main_module: Option<String>,
    pub main_version: Option<String>,
    pub vcs: Option<String>,
    pub vcs_revision: Option<String>,
    pub vcs_time: Option<String>,
    pub vcs_modified: Option<bool>,
    pub goos: Option<String>,
    pub goarch: Option<String>,
    pub cgo_enabled: Option<bool>,
    pub ldflags: Option<String>,
}
