//! Web: the page's reads of the crash history, on one read-only connection of their own
//! (WAL: the agent's writer is never blocked). Reads take turns on it; at most [`WAITING`]
//! requests wait for their turn, beyond that a request is answered 503 at once: however
//! many requests come, the agent does one read at a time, each bounded by its page.
use std::{path::PathBuf, sync::Arc};

use tokio::sync::{Mutex, Semaphore};

use crate::outputs::store::Store;

/// Requests that may wait for the connection.
const WAITING: usize = 32;

pub struct Reader {
    /// None: the agent keeps no history (`--no-store`, or it could not open one), said here.
    dir: Result<PathBuf, String>,
    conn: Arc<Mutex<Option<Store>>>,
    turns: Semaphore,
}

/// Why a read gave no answer.
pub enum Failed {
    /// No history to read: the page says this.
    NoHistory(String),
    Busy,
    Error(String),
}

impl Reader {
    pub fn new(dir: Result<PathBuf, String>) -> Reader {
        Reader {
            dir,
            conn: Arc::new(Mutex::new(None)),
            turns: Semaphore::new(WAITING),
        }
    }

    pub async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> anyhow::Result<T> + Send + 'static,
    ) -> Result<T, Failed> {
        let dir = self.dir.clone().map_err(Failed::NoHistory)?;
        let _turn = self.turns.try_acquire().map_err(|_| Failed::Busy)?;
        let mut conn = self.conn.clone().lock_owned().await;
        tokio::task::spawn_blocking(move || {
            if conn.is_none() {
                *conn = Some(Store::open_read(&dir).map_err(|e| format!("{e:#}"))?);
            }
            let store = conn.as_ref().expect("opened above");
            match f(store) {
                Ok(v) => Ok(v),
                Err(e) => {
                    // A connection that failed may be what is wrong: the next read opens anew.
                    *conn = None;
                    Err(format!("{e:#}"))
                }
            }
        })
        .await
        .map_err(|e| Failed::Error(format!("the read stopped: {e}")))?
        .map_err(Failed::Error)
    }
}
