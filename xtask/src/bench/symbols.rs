//! Symbolization measured: crashwatch's pclntab reader beside Go's own `debug/gosym` on the
//! `go` command's binary (the same addresses, the same run, interleaved rounds), and the
//! agent's per-report symbolization time and frames named in the crash storm.
use std::{
    fmt::Write as _,
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{bail, Context, Result};

use super::{report::median, tools::Tools};

/// Addresses looked up per run.
const LOOKUPS: usize = 100_000;

pub struct Side {
    pub binary: String,
    /// Per round: (gosym parse ns, gosym ns per lookup, crashwatch open ns, crashwatch ns
    /// per lookup).
    pub rounds: Vec<[f64; 4]>,
    pub named_gosym: u64,
    pub named_ours: u64,
}

pub fn run(t: &Tools, rounds: usize) -> Result<Vec<Side>> {
    let mut out = Vec::new();
    for bin in [
        "/usr/lib/go-1.19/bin/go",
        "/opt/crashwatch-go/1.27/go/bin/go",
    ] {
        if !Path::new(bin).exists() {
            continue;
        }
        eprintln!("xtask bench: symbolization of {LOOKUPS} addresses in {bin}");
        let pcs = t
            .gosym
            .with_file_name(format!("pcs-{}", bin.replace('/', "_")));
        let list = Command::new(&t.gosym)
            .args(["pcs", bin, &LOOKUPS.to_string()])
            .output()?;
        if !list.status.success() {
            bail!("gosym pcs {bin}");
        }
        std::fs::write(&pcs, &list.stdout)?;
        let mut side = Side {
            binary: bin.into(),
            rounds: Vec::new(),
            named_gosym: 0,
            named_ours: 0,
        };
        for _ in 0..rounds {
            let g = Command::new(&t.gosym)
                .args(["bench", bin])
                .arg(&pcs)
                .output()?;
            let g = String::from_utf8_lossy(&g.stdout).to_string();
            let field = |k: &str| -> Result<f64> {
                g.split_whitespace()
                    .find_map(|w| w.strip_prefix(k)?.strip_prefix('='))
                    .and_then(|v| v.parse().ok())
                    .with_context(|| format!("gosym printed no {k}: {g:?}"))
            };
            let (open_ns, _) = ours(&t.agent, bin, None)?;
            let (all_ns, named) = ours(&t.agent, bin, Some(&pcs))?;
            side.named_gosym = field("named")? as u64;
            side.named_ours = named;
            side.rounds.push([
                field("parse_ns")?,
                field("lookup_ns")? / field("lookups")?,
                open_ns,
                (all_ns - open_ns).max(0.0) / LOOKUPS as f64,
            ]);
        }
        out.push(side);
    }
    Ok(out)
}

/// `crashwatch symbolize --stats` on `bin`: the addresses in `pcs`, or one address (the
/// cost of opening and validating the file). Returns (ns, addresses named).
fn ours(agent: &Path, bin: &str, pcs: Option<&Path>) -> Result<(f64, u64)> {
    let mut cmd = Command::new(agent);
    cmd.args(["symbolize", "--stats", "--exe", bin])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    match pcs {
        Some(p) => {
            cmd.arg("-").stdin(std::fs::File::open(p)?);
        }
        None => {
            cmd.arg("0x401000");
        }
    }
    let o = cmd.output()?;
    let e = String::from_utf8_lossy(&o.stderr).to_string();
    // "... N addresses (M named, ...) in X ms including reading the file: ..."
    let ms: f64 = e
        .split(" in ")
        .nth(1)
        .and_then(|r| r.split(" ms").next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("symbolize --stats printed {e:?}"))?;
    let named = e
        .split('(')
        .nth(1)
        .and_then(|r| r.split(" named").next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Ok((ms * 1e6, named))
}

/// The page's section on symbolization.
pub fn markdown(sides: &mut [Side], storm_line: &str, named: (u64, u64)) -> String {
    let mut md = String::from("## Symbolization\n\n");
    let _ = writeln!(md, "{LOOKUPS} addresses spread over the `.text` of the `go` command's binary, looked up by Go's own `debug/gosym` (`PCToLine`: function, file, line) and by `crashwatch symbolize --exe` (the agent's reader: function, file and line, and each call inlined there as a frame of its own), medians over {} interleaved rounds. crashwatch maps and validates the table when it opens a file and decodes each function's tables when asked; `debug/gosym` reads the whole table up front.\n", sides.first().map_or(0, |s| s.rounds.len()));
    let _ = writeln!(
        md,
        "| binary | gosym parse | crashwatch open | gosym per lookup | crashwatch per lookup | ratio | named (gosym / crashwatch) |\n|---|---|---|---|---|---|---|"
    );
    for s in sides.iter_mut() {
        let col = |i: usize, s: &Side| {
            let mut v: Vec<f64> = s.rounds.iter().map(|r| r[i]).collect();
            median(&mut v)
        };
        let (gp, gl, op, ol) = (col(0, s), col(1, s), col(2, s), col(3, s));
        let _ = writeln!(
            md,
            "| `{}` | {:.2} ms | {:.2} ms | {:.0} ns | {:.0} ns | {:.2}× | {} / {} |",
            s.binary,
            gp / 1e6,
            op / 1e6,
            gl,
            ol,
            ol / gl.max(1.0),
            s.named_gosym,
            s.named_ours
        );
    }
    let _ = writeln!(
        md,
        "\nIn the crash storm the agent reported, at its stop: {}. Frames named across the storm's reports: {} of {} ({:.1} %).\n",
        storm_line.trim_start_matches("crashwatch: "),
        named.0,
        named.1,
        named.0 as f64 * 100.0 / named.1.max(1) as f64
    );
    md
}
