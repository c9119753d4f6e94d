//! Helpers every layer may use and that know nothing of crashes: escaping for humans
//! ([`escape`]), the agent's own log lines ([`log`]), capabilities ([`privileges`]), files
//! kept within a size and free-space bound ([`quota`]).
pub mod escape;
pub mod log;
pub mod privileges;
pub mod quota;

/// This boot of the node (`/proc/sys/kernel/random/boot_id`); empty when unreadable.
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}
