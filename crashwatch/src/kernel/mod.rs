//! The kernel side: [`probe`] loads and attaches crashwatch-ebpf's programs, owns the ring
//! buffer and the loss counters; [`decode`] turns the ring buffer's bytes into the model's
//! records; [`coredump`] is the kernel's core handler (`--dumps`). Below the pipeline, which
//! starts where a record is decoded.
pub mod coredump;
pub mod decode;
pub mod probe;
