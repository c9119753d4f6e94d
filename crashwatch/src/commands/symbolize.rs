//! `crashwatch symbolize`: names addresses exactly as the agent names a report's frames, for
//! a binary on disk or a running process, so a frame from an old report, a log or another
//! tool can be explained (and the agent's symbolizer checked against gdb or addr2line).
use std::process::ExitCode;

use anyhow::{bail, Context, Result};

use crate::{
    outputs as sink,
    pipeline::symbolize::{Symbolizer, Target},
    read::elf::id::open_regular,
};

pub struct Args {
    pub exe: Option<String>,
    pub pid: Option<u32>,
    pub json: bool,
    pub returns: bool,
    pub stats: bool,
    pub addrs: Vec<String>,
}

pub fn run(a: Args) -> ExitCode {
    match names(a) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            crate::say!("crashwatch symbolize: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn names(a: Args) -> Result<()> {
    let mut words = a.addrs.clone();
    if words.iter().any(|w| w == "-") {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
            .context("reading addresses from stdin")?;
        words.retain(|w| w != "-");
        words.extend(text.split_whitespace().map(str::to_string));
    }
    let addrs = words
        .iter()
        .map(|s| parse_addr(s))
        .collect::<Result<Vec<u64>>>()?;
    let target = match (a.exe, a.pid) {
        (Some(path), None) => {
            let file = open_regular(&path)
                .with_context(|| format!("{path}: not a regular file that can be read"))?;
            Target::File(file, path)
        }
        (None, Some(pid)) => Target::Pid(pid),
        _ => bail!("give either --exe PATH or --pid PID"),
    };
    // One module's worth of symbol data: the agent's default budget is ample.
    let mut sym = Symbolizer::new(256 << 20);
    let exe = match &target {
        Target::File(_, p) => Some(p.clone()),
        Target::Pid(pid) => std::fs::read_link(format!("/proc/{pid}/exe"))
            .ok()
            .map(|p| p.display().to_string()),
    };
    let start = std::time::Instant::now();
    let found = sym.lookup(target, &addrs, a.returns)?;
    if a.stats {
        let took = start.elapsed();
        let frames: usize = found.iter().map(Vec::len).sum();
        let named = found
            .iter()
            .filter(|f| f.last().is_some_and(|f| f.function.is_some()))
            .count();
        crate::say!(
            "crashwatch symbolize: {} addresses ({named} named, {frames} frames with inlined calls) in {:.3} ms including reading the file: {:.0} ns per address",
            addrs.len(),
            took.as_secs_f64() * 1e3,
            took.as_nanos() as f64 / addrs.len().max(1) as f64
        );
    }
    let mut out = String::new();
    for frames in found {
        for f in frames {
            if a.json {
                let mut v = serde_json::to_value(&f)?;
                // How a frame was found means nothing for an address given by hand.
                if let Some(o) = v.as_object_mut() {
                    o.remove("found_by");
                }
                out += &format!("{v}\n");
            } else {
                out += &format!("{}\n", sink::frame(&f, exe.as_deref(), false));
            }
        }
    }
    super::out::write(&out).context("writing the names")
}

/// `0x`-prefixed hexadecimal (as reports print addresses), else decimal.
fn parse_addr(s: &str) -> Result<u64> {
    let r = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16),
        None => s.parse(),
    };
    r.with_context(|| format!("{s:?} is not an address (hex with 0x, or decimal)"))
}

#[cfg(test)]
mod tests {
    use super::parse_addr;

    #[test]
    fn addresses_in_hex_or_decimal() {
        assert_eq!(parse_addr("0x401000").unwrap(), 0x401000);
        assert_eq!(parse_addr("4198400").unwrap(), 0x401000);
        assert!(parse_addr("0xzz").is_err());
        assert!(parse_addr("main").is_err());
    }
}
