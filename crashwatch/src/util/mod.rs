//! Helpers every layer may use and that know nothing of crashes: escaping for humans
//! ([`escape`]), the agent's own log lines ([`log`]), capabilities ([`privileges`]).
pub mod escape;
pub mod log;
pub mod privileges;
