//! Failpoints for tests, read from the environment at load and said when set: they change
//! how the kernel programs behave so a test can force what the kernel does only under load
//! (crashwatch-ebpf's `copies`).
use crashwatch_common::Config;

/// Sets the failpoints the environment asks for in the programs' configuration.
pub(super) fn apply(config: &mut Config) {
    if let Some((rounds, copies)) = failpoint_spin() {
        tracing::warn!(
                    "failpoint: the first {copies} copies of each tracepoint program spin {rounds} rounds (CRASHWATCH_FAILPOINT_SPIN, for tests)"
                );
        config.failpoint_spin = rounds;
        config.failpoint_copies = copies;
    }
    if let Some(every) = failpoint_skip_exit() {
        tracing::warn!(
                    "failpoint: every copy skips the exits of processes whose pid is a multiple of {every} (CRASHWATCH_FAILPOINT_SKIP_EXIT, for tests)"
                );
        config.failpoint_skip_exit = every;
    }
}

/// The copy guard's failpoint, for tests: `CRASHWATCH_FAILPOINT_SPIN=ROUNDS[:COPIES]` makes
/// the first COPIES (default 1) copies of each tracepoint program spin ROUNDS rounds after
/// noting an event (crashwatch-ebpf's `copies`).
fn failpoint_spin() -> Option<(u32, u32)> {
    let v = std::env::var("CRASHWATCH_FAILPOINT_SPIN").ok()?;
    let (rounds, copies) = v.split_once(':').unwrap_or((&v, "1"));
    let parsed = rounds.trim().parse().ok().zip(copies.trim().parse().ok());
    if parsed.is_none() {
        tracing::warn!(
            "CRASHWATCH_FAILPOINT_SPIN={:?} ignored: expected ROUNDS[:COPIES]",
            v
        );
    }
    parsed
}

/// The free hook's failpoint, for tests: `CRASHWATCH_FAILPOINT_SKIP_EXIT=N` makes every copy
/// of the exit programs skip the exits of processes whose pid is a multiple of N, as the
/// kernel's recursion guard does under preemption (crashwatch-ebpf's `copies`).
fn failpoint_skip_exit() -> Option<u32> {
    let v = std::env::var("CRASHWATCH_FAILPOINT_SKIP_EXIT").ok()?;
    let every = v.trim().parse().ok().filter(|n| *n > 0);
    if every.is_none() {
        tracing::warn!(
            "CRASHWATCH_FAILPOINT_SKIP_EXIT={:?} ignored: expected a positive number",
            v
        );
    }
    every
}
