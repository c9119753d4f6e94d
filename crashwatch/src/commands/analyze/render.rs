//! The analysis for a human: each crash with where it is, what it was and where in the code,
//! goroutine dumps summarised, then the clusters and the GC runs. Everything that came from
//! the logs is escaped ([`crate::util::escape`]): a log is written by the programs in it.
use std::fmt::Write;

use super::{gc::Run, Analysis, Found};
use crate::{read::parse::dump::Stack, util::escape::escape};

pub fn pretty(a: &Analysis) -> String {
    let mut o = String::new();
    for c in &a.crashes {
        crash(&mut o, c);
    }
    if a.crashes_not_listed > 0 {
        let _ = writeln!(
            o,
            "… {} more crashes not listed (--max-crashes); they are counted in the clusters below\n",
            a.crashes_not_listed
        );
    }
    if !a.clusters.is_empty() {
        let _ = writeln!(o, "Clusters ({}):", a.clusters.len());
        for c in &a.clusters {
            let _ = writeln!(
                o,
                "  {:>5}×  {:<13} {}",
                c.count,
                c.kind,
                escape(&c.headline)
            );
            let _ = writeln!(
                o,
                "          {}  first {}:{}  last {}:{}{}",
                c.fingerprint,
                escape(&c.first.file),
                c.first.line,
                escape(&c.last.file),
                c.last.line,
                if c.top_frame.is_empty() {
                    String::new()
                } else {
                    format!("  at {}", escape(&c.top_frame))
                }
            );
        }
        if a.clusters_not_kept > 0 {
            let _ = writeln!(
                o,
                "  … {} crashes of further clusters not kept",
                a.clusters_not_kept
            );
        }
        o.push('\n');
    }
    for r in &a.gc {
        gc(&mut o, r);
    }
    let (bytes, lines): (u64, u64) = a
        .inputs
        .iter()
        .fold((0, 0), |(b, l), i| (b + i.bytes, l + i.lines));
    let _ = writeln!(
        o,
        "{} crash{} found in {} input{} ({} lines, {:.1} MB){}",
        a.crashes_found,
        if a.crashes_found == 1 { "" } else { "es" },
        a.inputs.len(),
        if a.inputs.len() == 1 { "" } else { "s" },
        lines,
        bytes as f64 / 1e6,
        match &a.program {
            Some(p) => format!("; fingerprints for program {}", escape(p)),
            None => "; fingerprints without a program name (--program gives the agent's)".into(),
        }
    );
    for i in &a.inputs {
        let mut notes = Vec::new();
        if let Some(f) = i.format {
            notes.push(format!("{f:?}").to_lowercase());
        }
        if i.gzip {
            notes.push("gzip".into());
        }
        if i.foreign_records > 0 {
            notes.push(format!(
                "{} records not of the format, read as text",
                i.foreign_records
            ));
        }
        if i.bytes_cut > 0 {
            notes.push(format!("{} bytes of overlong lines not read", i.bytes_cut));
        }
        // Why is said on stderr (`crashwatch analyze: ...`), once.
        if i.error.is_some() {
            let read = if i.lines == 0 {
                "not read"
            } else {
                "read in part"
            };
            notes.push(read.into());
        }
        let _ = writeln!(o, "  {}: {}", escape(&i.path), notes.join(", "));
    }
    if a.blocks_unrecognised > 0 {
        let _ = writeln!(
            o,
            "  {} block(s) looked like a crash but were not understood",
            a.blocks_unrecognised
        );
    }
    o
}

fn crash(o: &mut String, c: &Found) {
    let stream = if c.stream.is_empty() {
        String::new()
    } else {
        format!(" ({})", escape(&c.stream))
    };
    let _ = writeln!(
        o,
        "✗ {}:{}-{}{}  {}  {}",
        escape(&c.file),
        c.first_line,
        c.last_line,
        stream,
        c.kind,
        escape(&c.headline)
    );
    if !c.top_frame.is_empty() {
        let _ = writeln!(o, "  at        {}", escape(&c.top_frame));
    }
    for (i, l) in c.error.chain.iter().enumerate() {
        let _ = writeln!(
            o,
            "  chain {}   {}{}{}",
            i + 1,
            l.relation.map(|r| format!("[{r}] ")).unwrap_or_default(),
            escape(&l.message),
            if l.recovered { " [recovered]" } else { "" }
        );
    }
    for f in c.error.frames.iter().take(8) {
        let _ = writeln!(
            o,
            "    {}{}",
            escape(f.function.as_deref().unwrap_or("?")),
            match (&f.file, f.line) {
                (Some(file), Some(line)) => format!(" ({}:{line})", escape(file)),
                (Some(file), None) => format!(" ({})", escape(file)),
                _ => String::new(),
            }
        );
    }
    if c.error.frames.len() > 8 {
        let _ = writeln!(o, "    … {} more frames", c.error.frames.len() - 8);
    }
    let _ = writeln!(o, "  cluster   {}", c.fingerprint);
    if let Some(g) = &c.goroutines {
        let states: Vec<String> = g.by_state.iter().map(|(s, n)| format!("{n} {s}")).collect();
        let _ = writeln!(
            o,
            "  goroutines {} ({}), {} distinct stacks{}",
            g.goroutines,
            escape(&states.join(", ")),
            g.distinct_stacks,
            if g.unfolded > 0 {
                format!(", {} not folded", g.unfolded)
            } else {
                String::new()
            }
        );
        if !g.by_wait_reason.is_empty() {
            let waits: Vec<String> = g
                .by_wait_reason
                .iter()
                .map(|(s, n)| format!("{n} {s}"))
                .collect();
            let _ = writeln!(o, "    waiting: {}", escape(&waits.join(", ")));
        }
        for s in g.stacks.iter().take(5) {
            let _ = writeln!(o, "    {}", stack(s));
        }
        if g.deadlock || !g.likely_culprits.is_empty() {
            let _ = writeln!(
                o,
                "  {}",
                if g.deadlock {
                    "deadlock: likely culprits (the program's goroutines blocked on each other):"
                } else {
                    "blocked on channels, locks or wait groups:"
                }
            );
            for s in g.likely_culprits.iter().take(5) {
                let _ = writeln!(o, "    {}", stack(s));
            }
        }
        if let Some(s) = g.longest_blocked.first() {
            let _ = writeln!(o, "  longest blocked: {}", stack(s));
        }
    }
    o.push('\n');
}

fn stack(s: &Stack) -> String {
    let top = s.top.as_ref().or(s.frames.first());
    let at = top
        .map(|f| match (&f.file, f.line) {
            (Some(file), Some(line)) => format!("{} ({}:{line})", f.function, file),
            _ => f.function.clone(),
        })
        .unwrap_or_default();
    let wait = match (&s.wait_reason, s.max_wait_minutes) {
        (Some(w), Some(m)) => format!("{w}, {m} min"),
        (Some(w), None) => w.clone(),
        (None, _) => s.state.clone(),
    };
    escape(&format!("{:>4}× [{wait}] {at}", s.count)).into_owned()
}

fn gc(o: &mut String, r: &Run) {
    let stream = if r.stream.is_empty() {
        String::new()
    } else {
        format!(" ({})", r.stream)
    };
    let _ = writeln!(
        o,
        "GC {}:{}-{}{}: {} collections ({} forced) from {:.1}s to {:.1}s",
        escape(&r.file),
        r.first_line,
        r.last_line,
        escape(&stream),
        r.collections,
        r.forced,
        r.from_seconds,
        r.to_seconds
    );
    let _ = writeln!(
        o,
        "  pauses p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms; live heap {} → {} MB (max {}, goal up to {} MB); GC CPU {}%",
        r.pause_p50_ms,
        r.pause_p99_ms,
        r.pause_max_ms,
        r.heap_live_first_mb,
        r.heap_live_last_mb,
        r.heap_live_max_mb,
        r.goal_max_mb,
        r.cpu_percent
    );
    if r.series.len() > 1 {
        let heap: Vec<f64> = r.series.iter().map(|p| p.heap_live_mb).collect();
        let cpu: Vec<f64> = r.series.iter().map(|p| p.cpu_percent).collect();
        let _ = writeln!(o, "  live heap over time  {}", spark(&heap));
        let _ = writeln!(o, "  GC CPU over time     {}", spark(&cpu));
    }
    o.push('\n');
}

/// A sparkline of at most 60 columns.
fn spark(v: &[f64]) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let step = v.len().div_ceil(60).max(1);
    let cols: Vec<f64> = v
        .chunks(step)
        .map(|c| c.iter().copied().fold(f64::MIN, f64::max))
        .collect();
    let (lo, hi) = cols
        .iter()
        .fold((f64::MAX, f64::MIN), |(l, h), &x| (l.min(x), h.max(x)));
    cols.iter()
        .map(|&x| {
            if hi <= lo {
                BARS[0]
            } else {
                BARS[(((x - lo) / (hi - lo)) * 7.0).round() as usize]
            }
        })
        .collect()
}
