//! The agent run inside another command (`crashwatch exec`): it reports only the crashes of
//! one cgroup's processes, hands each report over instead of writing it, and answers
//! flushes (every crash the kernel recorded before the flush was asked for has been handed
//! over when it is answered), so the command can say what crashed in its tree once the tree
//! is done. Signals are the command's to handle.
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::outputs::Item;

pub struct Embed {
    /// The cgroup (v2 path, as in reports) whose processes, and its descendants', count.
    pub cgroup: String,
    pub reports: mpsc::UnboundedSender<Arc<Item>>,
    pub control: mpsc::UnboundedReceiver<Control>,
    /// Answered once the programs are attached and every running process is known.
    pub ready: Option<oneshot::Sender<()>>,
}

pub enum Control {
    /// Hand over every crash recorded so far, then answer.
    Flush(oneshot::Sender<()>),
    Stop,
}

/// Whether a process in `cgroup` is in `ours` or below it.
pub fn within(cgroup: Option<&str>, ours: &str) -> bool {
    cgroup.is_some_and(|c| {
        c == ours || (c.starts_with(ours) && c.as_bytes().get(ours.len()) == Some(&b'/'))
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn within_is_the_cgroup_or_below() {
        use super::within;
        assert!(within(Some("/cw-exec-7"), "/cw-exec-7"));
        assert!(within(Some("/cw-exec-7/inner"), "/cw-exec-7"));
        assert!(!within(Some("/cw-exec-70"), "/cw-exec-7"));
        assert!(!within(None, "/cw-exec-7"));
    }
}
