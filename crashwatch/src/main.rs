//! crashwatch: a crash observer for Linux hosts. Every fatal signal, OOM kill and (optionally)
//! abnormal exit of any process on the host, seen from the kernel, reported once per process.
//!
//! Stages, data flowing one way: [`probe`] (load, attach, loss counters) → [`decode`] →
//! [`assemble`] → [`symbolize`] → [`context`] → [`cluster`] → [`sink`]; [`agent`] drives them, [`cli`] holds
//! the commands. [`elf`] and [`gobin`] read the binaries processes run; [`parse`] reads what
//! dying runtimes print, for the agent and for [`analyze`], which finds crashes in logs.
mod agent;
mod analyze;
mod assemble;
mod cli;
mod cluster;
mod context;
mod decode;
mod elf;
mod escape;
mod exec;
mod gobin;
/// Builds the Go test programs; shared with the integration tests.
#[cfg(test)]
#[path = "../tests/common/gobuild.rs"]
mod gobuild;
mod log;
mod parse;
mod privileges;
mod probe;
mod readback;
mod redact;
mod report;
mod signals;
mod sink;
mod store;
mod symbolize;
mod web;

fn main() -> std::process::ExitCode {
    cli::main()
}
