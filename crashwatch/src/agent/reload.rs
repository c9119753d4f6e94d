//! SIGHUP: the configuration file is read again and what can change under a running agent
//! changes — where reports go (the output file, webhooks, OTLP) and what is masked in them
//! (the redaction rules). Everything else (the kernel side, the ring buffer, the state
//! directory, the listener) is fixed at start; a changed key among those is said, with
//! "at the next start".
//!
//! The CLI owns reading the configuration (flags > environment > file > default, the same
//! code as at start): it hands the agent a [`Reloader`] that yields a [`Reload`] or the error
//! that refused it, and a refused configuration leaves the running one in place. The swap
//! happens on the report thread between two reports, in the order crashes were queued: the
//! old outputs are drained and closed before the new ones open (a webhook's spool
//! directory is one endpoint's, whichever sink holds it), so no report is lost or sent
//! twice across it.
use std::sync::mpsc;

use super::reporter::{Job, Reporter};
use crate::{outputs as sink, pipeline::redact::Redactor};

/// What a SIGHUP can change.
pub struct Reload {
    pub redactor: Redactor,
    pub file: Option<sink::FileOptions>,
    pub webhooks: Vec<sink::WebhookOptions>,
    /// Keys whose new value needs a restart (their old value stays in force).
    pub fixed_changed: Vec<String>,
}

/// Reads the configuration again.
pub type Reloader = Box<dyn Fn() -> anyhow::Result<Reload> + Send>;

/// SIGHUP: reads the configuration and queues what it says behind the crashes queued so far.
pub(super) fn on_sighup(reader: Option<&Reloader>, reports: &mpsc::SyncSender<Job>) {
    let Some(read) = reader else {
        tracing::warn!("SIGHUP: nothing to reload (no configuration reader)");
        return;
    };
    match read() {
        Ok(r) => {
            for key in &r.fixed_changed {
                tracing::warn!("reload: `{key}` changed: it takes effect at the next start");
            }
            let _ = reports.send(Job::Reload(Box::new(r)));
        }
        Err(e) => tracing::error!("reload refused, the running configuration stays: {e:#}"),
    }
}

/// The outputs a reload can replace, as last opened: restored when new ones fail to open.
#[derive(Clone, Default)]
pub(super) struct Opened {
    pub(super) file: Option<sink::FileOptions>,
    pub(super) webhooks: Vec<sink::WebhookOptions>,
}

impl Reporter {
    /// Applies `r` between two reports.
    pub(super) fn reload(&mut self, r: Reload) {
        for line in std::mem::take(&mut self.outputs).finish() {
            tracing::info!("reload: closed the {line}");
        }
        let wanted = Opened {
            file: r.file,
            webhooks: r.webhooks,
        };
        match crate::outputs::Outputs::open(
            wanted.file.clone(),
            wanted.webhooks.clone(),
            &self.metrics,
        ) {
            Ok(o) => {
                self.outputs = o;
                self.opened = wanted;
            }
            Err(e) => {
                tracing::error!(
                    "reload: the new outputs do not open ({e:#}): going on with the ones before"
                );
                let was = self.opened.clone();
                self.outputs = crate::outputs::Outputs::open(was.file, was.webhooks, &self.metrics)
                    .unwrap_or_else(|e| {
                        tracing::error!("reload: the outputs before do not open again either ({e:#}): reports go to stdout and the crash history only");
                        sink::Outputs::default()
                    });
            }
        }
        self.redactor = r.redactor;
        tracing::info!(
            "reloaded the configuration: {} outputs besides stdout, {} redaction rules",
            self.outputs.len(),
            self.redactor.len()
        );
    }
}
