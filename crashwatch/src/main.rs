//! crashwatch: a crash observer for Linux hosts. Every fatal signal, OOM kill and (optionally)
//! abnormal exit of any process on the host, seen from the kernel, reported once per process.
//!
//! The folders, bottom to top (`cargo xtask layers` keeps imports going down):
//! [`util`] (helpers that know nothing of crashes) → [`model`] (what passes between stages:
//! the report and its parts) → [`read`] (pure readers of others' bytes: ELF, Go tables,
//! runtimes' dying words) → [`kernel`] (the programs, the ring buffer, decoding) →
//! [`pipeline`] (assemble → symbolize → enrich → redact → cluster) → [`outputs`] (every
//! consumer of reports, and the crash history) → [`web`] → [`hub`] (the fleet's server on
//! PostgreSQL) → [`agent`] (wires it all) →
//! [`commands`] (the command line, thin).
mod agent;
mod commands;
/// Builds the Go test programs; shared with the integration tests.
#[cfg(test)]
#[path = "../tests/common/gobuild.rs"]
mod gobuild;
mod hub;
mod kernel;
mod model;
mod outputs;
mod pipeline;
mod read;
mod util;
mod web;

fn main() -> std::process::ExitCode {
    commands::main()
}
