//! The kernel programs' own diagnostics (aya-log): what a program could not read or send for
//! one event (registers, a stack, a record lost to a full ring buffer), said in the agent's
//! log at debug level as `kernel: ...`. Losses are counted whatever the level (see
//! `losses`); these lines say which process and what. Off unless the agent logs at debug:
//! the programs then read level 0 and skip the logging code.
use aya::Ebpf;

/// What the programs read their level from.
pub const LEVEL_GLOBAL: &str = aya_log::LEVEL;

/// The level the programs log at: debug when the agent's log shows debug, else nothing.
pub fn level() -> u8 {
    if tracing::level_filters::LevelFilter::current() >= tracing::Level::DEBUG {
        aya_log::Level::Debug as u8
    } else {
        0
    }
}

/// Forwards the programs' records to the agent's log.
pub struct ToTracing;

impl log::Log for ToTracing {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }

    fn log(&self, r: &log::Record) {
        tracing::debug!(
            "kernel: {}",
            crate::util::escape::Esc(&r.args().to_string())
        );
    }

    fn flush(&self) {}
}

pub type KernelLog = aya_log::EbpfLogger<ToTracing>;

/// The programs' log reader, when their level is on.
pub fn start(ebpf: &mut Ebpf) -> Option<KernelLog> {
    if level() == 0 {
        return None;
    }
    match aya_log::EbpfLogger::init_with_logger(ebpf, ToTracing) {
        Ok(l) => Some(l),
        Err(e) => {
            tracing::warn!("no kernel diagnostics: {e}");
            None
        }
    }
}

/// Writes out what the programs said. aya-log panics on a record it cannot parse: that ends
/// the reading (false), never the agent.
pub fn drain(l: &mut KernelLog) -> bool {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| l.flush())).is_ok()
}
