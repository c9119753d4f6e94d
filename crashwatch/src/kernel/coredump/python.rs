//! A dying CPython's own stacks, read while the kernel holds the process for its dump (its
//! memory is whole until the core is written): the interpreter's file found among its
//! mappings (`libpython3.X.so…`, or a `python3.X` executable with the interpreter linked in),
//! opened through the process (`/proc/PID/map_files`), `_PyRuntime` and `PyCode_Type` from
//! its symbols, and its memory read through `/proc/PID/mem` by [`crate::read::pystack`].
use std::{fs::File, os::unix::fs::FileExt};

use object::{Object, ObjectSymbol};

use crate::{
    model::dump::PyStacks,
    read::{
        elf::{Layout, Mapped},
        pystack,
    },
};

/// The largest `/proc/PID/maps` read.
const MAPS_MAX: u64 = 4 << 20;

/// The process's memory, read with `pread`.
struct Mem(File);

impl pystack::Memory for Mem {
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
        self.0.read_exact_at(buf, addr).is_ok()
    }
}

/// One mapping of the interpreter's file: where, at which file offset, and its minor version.
struct Interp {
    start: u64,
    end: u64,
    offset: u64,
    minor: u32,
}

/// The Python stacks of `pid`, when it runs CPython; None when it does not.
pub(super) fn stacks(pid: u32) -> Option<PyStacks> {
    use std::io::Read;
    let mut maps = String::new();
    File::open(format!("/proc/{pid}/maps"))
        .ok()?
        .take(MAPS_MAX)
        .read_to_string(&mut maps)
        .ok()?;
    let interp = find(&maps)?;
    let mut out = PyStacks {
        version: format!("3.{}", interp.minor),
        ..PyStacks::default()
    };
    match read(pid, &interp) {
        Ok((threads, cut)) => {
            out.threads = threads;
            out.cut = cut;
        }
        Err(why) => out.cut.push(why),
    }
    Some(out)
}

fn read(pid: u32, i: &Interp) -> Result<(Vec<crate::model::dump::PyThread>, Vec<String>), String> {
    let path = format!("/proc/{pid}/map_files/{:x}-{:x}", i.start, i.end);
    let file = File::open(&path).map_err(|e| format!("opening the interpreter ({path}): {e}"))?;
    let mapped = Mapped::new(&file).map_err(|e| format!("mapping the interpreter: {e}"))?;
    let obj = object::File::parse(mapped.bytes())
        .map_err(|e| format!("reading the interpreter's ELF: {e}"))?;
    let symbol = |name: &str| {
        obj.dynamic_symbols()
            .chain(obj.symbols())
            .find(|s| s.name() == Ok(name))
            .map(|s| s.address())
    };
    let runtime = symbol("_PyRuntime").ok_or("the interpreter has no _PyRuntime symbol")?;
    let code_type = symbol("PyCode_Type");
    let bias = Layout::of(&obj)
        .mapping_bias(i.start, i.offset)
        .ok_or("the interpreter's mapping matches none of its segments")?;
    if mapped.damaged() {
        return Err("the interpreter's file changed while read".into());
    }
    let mem = File::open(format!("/proc/{pid}/mem"))
        .map_err(|e| format!("opening the process's memory: {e}"))?;
    pystack::read(
        &Mem(mem),
        i.minor,
        runtime.wrapping_add(bias),
        code_type.map(|c| c.wrapping_add(bias)),
    )
}

/// The interpreter's first mapping: `libpython3.X` over a `python3.X` executable (which
/// links it in only when no library is mapped).
fn find(maps: &str) -> Option<Interp> {
    let mut best: Option<(bool, Interp)> = None;
    for l in maps.lines() {
        let mut f = l.split_whitespace();
        let (range, _, offset) = (f.next()?, f.next()?, f.next()?);
        let Some(path) = f.nth(2) else { continue };
        let name = path.rsplit('/').next().unwrap_or("");
        let (lib, rest) = match name.strip_prefix("libpython3.") {
            Some(r) => (true, r),
            None => match name.strip_prefix("python3.") {
                Some(r) => (false, r),
                None => continue,
            },
        };
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        let Ok(minor) = digits.parse::<u32>() else {
            continue;
        };
        if best.as_ref().is_some_and(|(b, _)| *b || !lib) {
            continue;
        }
        let (start, end) = range.split_once('-')?;
        best = Some((
            lib,
            Interp {
                start: u64::from_str_radix(start, 16).ok()?,
                end: u64::from_str_radix(end, 16).ok()?,
                offset: u64::from_str_radix(offset, 16).ok()?,
                minor,
            },
        ));
    }
    best.map(|(_, i)| i)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_library_is_preferred_and_its_first_mapping_taken() {
        let maps = "\
55d0c0000000-55d0c0001000 r--p 00000000 fd:00 12 /usr/bin/python3.11
7f0000000000-7f0000100000 r--p 00000000 fd:00 13 /opt/py/lib/libpython3.12.so.1.0
7f0000100000-7f0000400000 r-xp 00100000 fd:00 13 /opt/py/lib/libpython3.12.so.1.0
7f0000500000-7f0000501000 rw-p 00000000 00:00 0 
";
        let i = super::find(maps).unwrap();
        assert_eq!((i.start, i.offset, i.minor), (0x7f0000000000, 0, 12));
        let exe_only = maps.lines().next().unwrap();
        assert_eq!(super::find(exe_only).unwrap().minor, 11);
        assert!(super::find("7f0-7f1 r--p 0 fd:00 1 /usr/bin/python2.7\n").is_none());
    }

    /// Each CPython on this machine, stopped in a sleep two calls deep: its stack read from
    /// its memory as a dying one's is.
    #[test]
    fn a_live_cpythons_stack_is_read_from_its_memory() {
        use std::io::BufRead;
        let script = "import time\ndef waiting():\n    print('ready', flush=True)\n    time.sleep(60)\ndef outer():\n    waiting()\nouter()\n";
        let root = std::env::var("PYENV_ROOT").unwrap_or_else(|_| "/root/.pyenv".into());
        let mut pythons = vec![std::path::PathBuf::from("/usr/bin/python3")];
        for e in std::fs::read_dir(format!("{root}/versions"))
            .into_iter()
            .flatten()
            .flatten()
        {
            pythons.extend((9..=13).map(|m| e.path().join(format!("bin/python3.{m}"))));
        }
        let mut read = 0;
        for py in pythons.iter().filter(|p| p.is_file()) {
            let mut child = std::process::Command::new(py)
                .args(["-c", script])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let mut line = String::new();
            std::io::BufReader::new(child.stdout.take().unwrap())
                .read_line(&mut line)
                .unwrap();
            let pid = child.id();
            // In its sleep (pselect6 on 3.9 and 3.10, clock_nanosleep from 3.11), not still
            // finishing the print.
            for _ in 0..500 {
                let sc = std::fs::read_to_string(format!("/proc/{pid}/syscall"));
                if sc.is_ok_and(|s| s.starts_with("230 ") || s.starts_with("270 ")) {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            // SAFETY: signalling our own child.
            unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
            let got = super::stacks(pid);
            let _ = child.kill();
            let _ = child.wait();
            let got = got.unwrap_or_else(|| panic!("{py:?}: not found as CPython"));
            assert!(got.cut.is_empty(), "{py:?}: {:?}", got.cut);
            let frames: Vec<(String, Option<u32>)> = got.threads[0]
                .frames
                .iter()
                .map(|f| (f.function.clone(), f.line))
                .collect();
            assert_eq!(
                frames,
                [
                    ("waiting".to_string(), Some(4)),
                    ("outer".to_string(), Some(6)),
                    ("<module>".to_string(), Some(7))
                ],
                "{py:?} ({})",
                got.version
            );
            assert!(got.threads[0].frames.iter().all(|f| f.file == "<string>"));
            println!("{py:?}: CPython {} read", got.version);
            read += 1;
        }
        assert!(read >= 1, "no CPython found");
    }
}
