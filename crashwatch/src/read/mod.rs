//! Readers of others' bytes: the binaries processes run ([`elf`], Go's own tables in
//! [`gobin`]), the cores the kernel writes for dying processes ([`elfcore`]), CPython's stacks
//! in a process's memory ([`pystack`]) and what dying runtimes print ([`parse`]). Pure: they take bytes and give
//! facts, know nothing of the kernel, the pipeline or the outputs, and never die of their
//! input. Above the model, below everything that reads a process.
pub mod elf;
pub mod elfcore;
pub mod gobin;
pub mod parse;
pub mod pystack;
