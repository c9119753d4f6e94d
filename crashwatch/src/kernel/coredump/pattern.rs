//! `/proc/sys/kernel/core_pattern`: which way this kernel hands a core to a handler, taking it
//! over, noticing another tool taking it back, and putting the previous one back at the stop.
//!
//! The previous pattern is also saved in the state directory (`core_pattern.previous`) before
//! ours is written, so an agent killed with SIGKILL leaves the next agent (or an operator)
//! what to restore: an agent that finds our own pattern in place takes the previous one from
//! there rather than keeping ours as "previous".
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

const CORE_PATTERN: &str = "/proc/sys/kernel/core_pattern";
const SAVED: &str = "core_pattern.previous";

/// How the kernel talks to a core handler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// `@@/path` (6.17+): the kernel asks, the handler answers, and with WAIT the process
    /// stays until the handler closes.
    Request,
    /// `@/path` (6.16): the kernel streams the core; the process goes on exiting at its end.
    Socket,
    /// `|crashwatch core-helper …` (any kernel): the kernel runs the helper with the core on
    /// its stdin, and the helper hands it to the agent's socket.
    Pipe,
}

impl Protocol {
    /// The best this kernel release (`uname -r`) offers.
    pub fn of_release(release: &str) -> Protocol {
        let mut v = release
            .split(['.', '-', '+'])
            .map(|p| p.parse::<u32>().ok());
        match (v.next().flatten(), v.next().flatten()) {
            (Some(m), _) if m > 6 => Protocol::Request,
            (Some(6), Some(n)) if n >= 17 => Protocol::Request,
            (Some(6), Some(16)) => Protocol::Socket,
            _ => Protocol::Pipe,
        }
    }

    /// The pattern that hands cores to `socket`; the pipe's names this binary where the
    /// host sees it ([`super::host::helper_exe`]) and bounds the helper's life by `timeout`.
    pub fn pattern(self, socket: &Path, timeout: std::time::Duration) -> Result<String> {
        Ok(match self {
            Protocol::Request => format!("@@{}", socket.display()),
            Protocol::Socket => format!("@{}", socket.display()),
            Protocol::Pipe => pipe_pattern(
                &super::host::helper_exe(socket)?.display().to_string(),
                &socket.display().to_string(),
                timeout,
            )?,
        })
    }
}

/// The pipe helper's pattern: `|EXE core-helper -s SOCKET -t SECS %P`, refused when the kernel
/// would split or cut it (it splits at spaces, and keeps 127 bytes).
fn pipe_pattern(exe: &str, sock: &str, timeout: std::time::Duration) -> Result<String> {
    if exe.contains(char::is_whitespace) || sock.contains(char::is_whitespace) {
        bail!("the pipe helper's path ({exe}) and the socket ({sock}) must have no spaces: the kernel splits core_pattern at them");
    }
    let p = format!(
        "|{exe} core-helper -s {sock} -t {} %P",
        timeout.as_secs_f64().ceil() as u64 + 1
    );
    if p.len() > 127 {
        bail!(
            "the pipe helper's pattern is {} bytes, past the 127 core_pattern holds: install crashwatch at a shorter path or give a shorter --dump-socket ({p})",
            p.len()
        );
    }
    Ok(p)
}

/// The pattern this agent set, and what it replaced.
pub struct Taken {
    pub ours: String,
    pub previous: String,
    saved: Option<PathBuf>,
}

pub fn read() -> Result<String> {
    let s =
        std::fs::read_to_string(CORE_PATTERN).with_context(|| format!("reading {CORE_PATTERN}"))?;
    Ok(s.trim_end_matches('\n').to_string())
}

fn write(pattern: &str) -> Result<()> {
    super::host::write_pattern(CORE_PATTERN, pattern)
}

/// Sets `ours`, keeping what was there (or, when that is ours already, what the killed agent
/// before this one saved) to restore.
pub fn take(ours: &str, state_dir: Option<&Path>) -> Result<Taken> {
    let now = read()?;
    let saved = state_dir.map(|d| d.join(SAVED));
    // An agent's pattern names its socket, whichever way it hands cores over.
    let socket = ours.trim_start_matches('@');
    let socket = socket.split(" -s ").nth(1).unwrap_or(socket);
    let socket = socket.split(' ').next().unwrap_or(socket);
    let previous = if now == ours || now.contains(socket) {
        match saved.as_deref().map(std::fs::read_to_string) {
            Some(Ok(p)) => p,
            _ => {
                tracing::warn!("core_pattern is already {ours} (an agent before this one was killed?) and no previous pattern was saved: `core` is restored at the stop");
                "core".to_string()
            }
        }
    } else if now.starts_with('@') {
        bail!("core_pattern is {now}: another core handler's socket; --dumps does not take it over (stop that handler, or set the pattern back to a file or pipe)");
    } else {
        now
    };
    if let Some(f) = &saved {
        if let Some(d) = f.parent() {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        std::fs::write(f, &previous)
            .with_context(|| format!("saving the previous core_pattern to {}", f.display()))?;
    }
    write(ours).map_err(|e| {
        e.context("the kernel refused the coredump socket's pattern (it must be written from the host's initial mount namespace and name a path there: in a container: the host's PID namespace, CAP_SYS_ADMIN and CAP_SYS_CHROOT, as the chart's dumps.enabled runs it)")
    })?;
    Ok(Taken {
        ours: ours.to_string(),
        previous,
        saved,
    })
}

impl Taken {
    /// Puts the previous pattern back, unless another tool changed it meanwhile (then it is
    /// left as that tool set it, and said).
    pub fn restore(self) {
        match read() {
            Ok(now) if now == self.ours => match write(&self.previous) {
                Ok(()) => {
                    if let Some(f) = &self.saved {
                        let _ = std::fs::remove_file(f);
                    }
                }
                Err(e) => tracing::warn!("restoring core_pattern {:?}: {e:#}", self.previous),
            },
            Ok(now) => tracing::warn!(
                "core_pattern was changed to {now:?} while the agent ran: left as it is (the agent's was {:?}, before it {:?})",
                self.ours,
                self.previous
            ),
            Err(e) => tracing::warn!("{e:#}"),
        }
    }

    /// Whether the pattern is still ours (another tool may have taken it).
    pub fn still_ours(&self) -> bool {
        read().is_ok_and(|p| p == self.ours)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_protocol_follows_the_kernel_release() {
        let p = Protocol::of_release;
        assert_eq!(p("6.18.0-rc1"), Protocol::Request);
        assert_eq!(p("6.17.2"), Protocol::Request);
        assert_eq!(p("7.3.0-1-cloud-amd64"), Protocol::Request);
        assert_eq!(p("6.16.9"), Protocol::Socket);
        assert_eq!(p("6.12.41+deb13-amd64"), Protocol::Pipe);
        assert_eq!(p("6.1.0-37-cloud-amd64"), Protocol::Pipe);
        assert_eq!(p("garbage"), Protocol::Pipe);
        let s = Path::new("/run/crashwatch/coredump.sock");
        let t = std::time::Duration::from_millis(2500);
        assert_eq!(
            Protocol::Request.pattern(s, t).unwrap(),
            "@@/run/crashwatch/coredump.sock"
        );
        assert_eq!(
            pipe_pattern("/usr/bin/crashwatch", "/run/crashwatch/coredump.sock", t).unwrap(),
            "|/usr/bin/crashwatch core-helper -s /run/crashwatch/coredump.sock -t 4 %P"
        );
        let long = format!("/{}", "d".repeat(100));
        let e = pipe_pattern(&long, "/run/c.sock", t)
            .unwrap_err()
            .to_string();
        assert!(e.contains("past the 127 core_pattern holds"), "{e}");
        assert!(pipe_pattern("/a b/crashwatch", "/run/c.sock", t).is_err());
    }
}
