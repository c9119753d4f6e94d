//! The model: what passes between the stages and what the outputs write. The report and its
//! parts ([`report`]), reading a report back ([`readback`]), signal names ([`signals`]).
//! Imports nothing above it.
pub mod clock;
pub mod cluster;
pub mod container;
pub mod crash;
pub mod death;
pub mod dump;
pub mod frame;
pub mod go;
pub mod hex;
pub mod process;
pub mod readback;
pub mod record;
pub mod report;
pub mod signals;
