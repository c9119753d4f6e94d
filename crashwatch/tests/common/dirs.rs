//! The tests' state directories in the temp directory, and the sweep of those left by test
//! processes that are gone.
use std::path::{Path, PathBuf};

/// A fresh directory name for `tag` in the temp directory (not made), this process's own.
pub fn state_dir(tag: &str) -> PathBuf {
    static SWEEP: std::sync::Once = std::sync::Once::new();
    SWEEP.call_once(sweep_dead_state_dirs);
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let d = std::env::temp_dir().join(format!("crashwatch-state-{tag}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// Removes the state directories test processes no longer alive left in the temp directory
/// (`crashwatch-state-TAG-PID-N`): an agent still running when its test binary ends dies
/// with it, and nothing removes its directory then.
fn sweep_dead_state_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("crashwatch-state-") else {
            continue;
        };
        let mut parts = rest.rsplit('-');
        let (_n, pid) = (
            parts.next(),
            parts.next().and_then(|p| p.parse::<u32>().ok()),
        );
        if let Some(pid) = pid {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}
