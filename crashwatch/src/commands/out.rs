//! What the commands print on stdout. A reader that goes away early (`crashwatch report |
//! head`) closes the pipe, and the next write fails with EPIPE: Rust ignores SIGPIPE, so it is
//! an error, on which `print!` panics. Here it ends the output, not the command: nothing more
//! is written, nothing is said, and the command exits with the status it has anyway (0 when
//! all went well, `analyze`'s 1 for crashes found, `check`'s 1 for a failed check, `exec`'s
//! the crash's class), as if its output had been read to the end. The reader chose to stop: a
//! pipeline under `set -o pipefail` does not fail for it (as with ripgrep; `cat` would die of
//! the signal, 141). clap's `--help` and `--version` behave the same (clap ignores the
//! error, status 0). Any other failure to write (a full disk) is said and fails the command.
use std::{
    io::{self, Write},
    process::ExitCode,
};

/// Writes `text` to stdout; Ok also when the reader went away (the output ends there).
pub fn write(text: &str) -> io::Result<()> {
    let mut out = io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(e),
        _ => Ok(()),
    }
}

/// [`write`], then the command's `status`; status 1 after another failure, said on stderr.
pub fn print(text: &str, status: ExitCode) -> ExitCode {
    match write(text) {
        Ok(()) => status,
        Err(e) => {
            let _ = writeln!(io::stderr(), "crashwatch: writing the output: {e}");
            ExitCode::FAILURE
        }
    }
}
