//! `crashwatch analyze`: crashes already sitting in logs. A file (or stdin) is read once, as a
//! stream: decompressed if gzip, decoded from its log format ([`crate::read::parse::logs`]), cut
//! into the blocks where a runtime printed a death ([`crate::read::parse::blocks`]), each block
//! parsed by the same parsers the agent runs on a dying process's last words
//! ([`crate::read::parse::recognise`]) and fingerprinted by the agent's own code
//! ([`crate::pipeline::cluster::fingerprint`]), so a crash found here falls in the cluster the
//! agent would have put it in (given the program's name, which logs do not say). `gctrace` lines
//! become GC statistics ([`gc`]).
//!
//! On plain logs, while no block is open, the lines before the next one holding a runtime's
//! marker ([`crate::read::parse::markers`]) are counted and passed over in the read buffer
//! without being read one by one: most of a log is such lines.
//!
//! Memory is bounded by the limits of the stages (a line, a block's text, distinct stacks,
//! streams, clusters, crashes listed), never by the log's size; everything past a limit is
//! counted in the result.
pub mod cli;
pub mod gc;
mod render;

use std::{
    collections::HashMap,
    io::{self, BufRead, BufReader, Read},
};

use serde::Serialize;

pub use render::pretty;

use crate::{
    model::report::Report,
    pipeline::cluster::{self, fingerprint},
    read::parse::{
        self,
        blocks::{Block, Finder},
        dump::Summary,
        gctrace,
        logs::{Decoder, Format, Line, MAX_LINE},
        Death,
    },
};

/// Streams followed at once (a journal's processes); more end the oldest one's block.
const MAX_STREAMS: usize = 64;
/// Clusters kept; crashes of further ones are counted only.
const MAX_CLUSTERS: usize = 10_000;
const READ_BUFFER: usize = 256 << 10;

pub struct Options {
    /// The format of every input; detected per file when None.
    pub format: Option<Format>,
    /// The program's name as the fingerprint takes it (a Go binary's main package path, else
    /// the executable's name).
    pub program: Option<String>,
    /// Crashes listed in full; the rest are counted in their clusters.
    pub max_listed: usize,
}

#[derive(Debug, Serialize)]
pub struct Input {
    pub path: String,
    pub format: Option<Format>,
    pub gzip: bool,
    /// Bytes of text read (after decompression).
    pub bytes: u64,
    pub lines: u64,
    pub crashes: u64,
    /// Records not of the file's format, read as plain text.
    pub foreign_records: u64,
    /// Bytes of overlong lines not read.
    pub bytes_cut: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Input {
    fn new(path: &str, format: Option<Format>) -> Input {
        Input {
            path: path.to_string(),
            format,
            gzip: false,
            bytes: 0,
            lines: 0,
            crashes: 0,
            foreign_records: 0,
            bytes_cut: 0,
            error: None,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Found {
    pub file: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub stream: String,
    pub first_line: u64,
    pub last_line: u64,
    /// As the agent would report it: `go_panic`, `go_fatal`, `runtime_error` or `signal`.
    pub kind: &'static str,
    pub fingerprint: String,
    pub headline: String,
    pub top_frame: String,
    pub error: Death,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub goroutines: Option<Summary>,
    /// The block ran past what is kept of its text; the range is whole.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub text_truncated: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct At {
    pub file: String,
    pub line: u64,
}

#[derive(Debug, Serialize)]
pub struct Cluster {
    pub fingerprint: String,
    pub kind: &'static str,
    pub headline: String,
    pub top_frame: String,
    pub count: u64,
    pub first: At,
    pub last: At,
}

#[derive(Debug, Serialize)]
pub struct Analysis {
    /// The program name the fingerprints were computed with.
    pub program: Option<String>,
    pub inputs: Vec<Input>,
    pub crashes_found: u64,
    /// Crashes found but not listed in `crashes` (past --max-crashes).
    pub crashes_not_listed: u64,
    /// Blocks that looked like a death but that no parser understood.
    pub blocks_unrecognised: u64,
    pub crashes: Vec<Found>,
    /// Most crashes first.
    pub clusters: Vec<Cluster>,
    /// Crashes of clusters past the limit of distinct ones.
    pub clusters_not_kept: u64,
    pub gc: Vec<gc::Run>,
    pub gc_runs_not_kept: u64,
}

impl Analysis {
    /// 0 nothing found, 1 a crash found, 2 an input could not be read.
    pub fn exit_code(&self) -> u8 {
        if self.inputs.iter().any(|i| i.error.is_some()) {
            2
        } else if self.crashes_found > 0 {
            1
        } else {
            0
        }
    }
}

pub struct Analyzer {
    opts: Options,
    inputs: Vec<Input>,
    crashes: Vec<Found>,
    found: u64,
    not_listed: u64,
    unrecognised: u64,
    clusters: HashMap<String, Cluster>,
    clusters_not_kept: u64,
    gc: gc::Runs,
    /// Pass over lines without a marker (off only to test that it changes nothing).
    prefilter: bool,
}

impl Analyzer {
    pub fn new(opts: Options) -> Analyzer {
        Analyzer {
            opts,
            inputs: Vec::new(),
            crashes: Vec::new(),
            found: 0,
            not_listed: 0,
            unrecognised: 0,
            clusters: HashMap::new(),
            clusters_not_kept: 0,
            gc: gc::Runs::default(),
            prefilter: true,
        }
    }

    /// Reads every line one by one (the prefilter off).
    #[cfg(test)]
    fn line_by_line(mut self) -> Analyzer {
        self.prefilter = false;
        self
    }

    /// Reads one input to its end; a read error ends it, noted in its [`Input`].
    pub fn read(&mut self, path: &str, r: impl Read) {
        let mut input = Input::new(path, self.opts.format);
        let mut br = BufReader::with_capacity(READ_BUFFER, r);
        let result = match br.fill_buf() {
            Ok([0x1f, 0x8b, ..]) => {
                input.gzip = true;
                let gz = flate2::read::MultiGzDecoder::new(br);
                self.lines(&mut input, BufReader::with_capacity(READ_BUFFER, gz))
            }
            Ok(_) => self.lines(&mut input, br),
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            input.error = Some(format!("reading {path}: {e}"));
        }
        self.inputs.push(input);
    }

    /// An input that could not be opened.
    pub fn failed(&mut self, path: &str, error: &str) {
        let mut input = Input::new(path, None);
        input.error = Some(error.to_string());
        self.inputs.push(input);
    }

    fn lines(&mut self, input: &mut Input, mut r: impl BufRead) -> io::Result<()> {
        let mut buf = Vec::new();
        let mut decoder: Option<Decoder> = None;
        let mut finders: HashMap<String, (u64, Finder)> = HashMap::new();
        let mut blocks: Vec<(String, Block)> = Vec::new();
        let mut seq = 0u64;
        let path = input.path.clone();
        // The result is kept even when reading fails part way: what was read counts.
        let result = loop {
            let idle = || finders.values().all(|(_, f)| f.idle());
            if self.prefilter && input.format == Some(Format::Plain) && decoder.is_some() && idle()
            {
                match pass_over(&mut r) {
                    Ok((lines, bytes)) => {
                        input.lines += lines;
                        input.bytes += bytes;
                    }
                    Err(e) => break Err(e),
                }
            }
            let (got, cut) = match read_line(&mut r, &mut buf, 2 * MAX_LINE) {
                Ok(x) => x,
                Err(e) => break Err(e),
            };
            if !got {
                break Ok(());
            }
            input.lines += 1;
            input.bytes += (buf.len() as u64) + cut + 1;
            input.bytes_cut += cut;
            if decoder.is_none() {
                // The format is the first non-empty line's.
                if self.opts.format.is_none() && buf.trim_ascii().is_empty() {
                    continue;
                }
                let f = self.opts.format.unwrap_or_else(|| Format::detect(&buf));
                input.format = Some(f);
                decoder = Some(Decoder::new(f));
            }
            let Some(d) = decoder.as_mut() else {
                continue;
            };
            let gc = &mut self.gc;
            d.push(&buf, input.lines, &mut |l: Line| {
                if l.text.starts_with("gc ") {
                    if let Some(g) = gctrace::parse(l.text) {
                        gc.add(&path, l.stream, l.line, &g);
                        return;
                    }
                }
                feed(&mut finders, &mut seq, l, &mut blocks);
            });
            for (stream, b) in blocks.drain(..) {
                self.block(input, &stream, b);
            }
        };
        if let Some(d) = decoder.as_mut() {
            d.finish(&mut |l: Line| feed(&mut finders, &mut seq, l, &mut blocks));
            input.foreign_records = d.foreign;
            input.bytes_cut += d.cut;
        }
        let mut rest: Vec<(String, (u64, Finder))> = finders.drain().collect();
        rest.sort_by_key(|(_, (s, _))| *s);
        for (stream, (_, mut f)) in rest {
            f.finish(&mut |b| blocks.push((stream.clone(), b)));
        }
        for (stream, b) in blocks.drain(..) {
            self.block(input, &stream, b);
        }
        result
    }

    fn block(&mut self, input: &mut Input, stream: &str, b: Block) {
        let Some(death) = parse::recognise(&b.text) else {
            self.unrecognised += 1;
            return;
        };
        input.crashes += 1;
        self.found += 1;
        let report = Report {
            kind: kind_of(&death),
            comm: self.opts.program.clone().unwrap_or_default(),
            error: Some(death),
            ..Default::default()
        };
        let fp = fingerprint::fingerprint(&report).value;
        let (headline, top_frame) = (cluster::headline(&report), cluster::top_frame(&report));
        let at = At {
            file: input.path.clone(),
            line: b.first_line,
        };
        let full = self.clusters.len() >= MAX_CLUSTERS;
        match self.clusters.get_mut(&fp) {
            Some(c) => {
                c.count += 1;
                c.last = at;
            }
            None if full => self.clusters_not_kept += 1,
            None => {
                self.clusters.insert(
                    fp.clone(),
                    Cluster {
                        fingerprint: fp.clone(),
                        kind: report.kind,
                        headline: headline.clone(),
                        top_frame: top_frame.clone(),
                        count: 1,
                        first: at.clone(),
                        last: at,
                    },
                );
            }
        }
        if self.crashes.len() >= self.opts.max_listed {
            self.not_listed += 1;
            return;
        }
        let goroutines = b
            .goroutines
            .as_ref()
            .filter(|f| !f.is_empty())
            .map(|f| f.summary());
        self.crashes.push(Found {
            file: input.path.clone(),
            stream: stream.to_string(),
            first_line: b.first_line,
            last_line: b.last_line,
            kind: report.kind,
            headline,
            top_frame,
            fingerprint: fp,
            error: report.error.unwrap_or_default(),
            goroutines,
            text_truncated: b.truncated,
        });
    }

    pub fn finish(mut self) -> Analysis {
        self.gc.finish();
        let mut clusters: Vec<Cluster> = self.clusters.into_values().collect();
        clusters.sort_by(|a, b| {
            b.count
                .cmp(&a.count)
                .then_with(|| a.fingerprint.cmp(&b.fingerprint))
        });
        Analysis {
            program: self.opts.program,
            inputs: self.inputs,
            crashes_found: self.found,
            crashes_not_listed: self.not_listed,
            blocks_unrecognised: self.unrecognised,
            crashes: self.crashes,
            clusters,
            clusters_not_kept: self.clusters_not_kept,
            gc: self.gc.runs,
            gc_runs_not_kept: self.gc.dropped,
        }
    }
}

/// The line to the finder of its stream (a new one for a new stream, ending the least
/// recently started when there are too many).
fn feed(
    finders: &mut HashMap<String, (u64, Finder)>,
    seq: &mut u64,
    l: Line,
    blocks: &mut Vec<(String, Block)>,
) {
    if let Some((_, f)) = finders.get_mut(l.stream) {
        f.push(l.text, l.line, &mut |b| {
            blocks.push((l.stream.to_string(), b))
        });
        return;
    }
    if finders.len() >= MAX_STREAMS {
        let oldest = finders
            .iter()
            .min_by_key(|(_, (s, _))| *s)
            .map(|(k, _)| k.clone());
        if let Some((k, (_, mut f))) = oldest.and_then(|k| finders.remove_entry(&k)) {
            f.finish(&mut |b| blocks.push((k.clone(), b)));
        }
    }
    *seq += 1;
    let mut f = Finder::default();
    f.push(l.text, l.line, &mut |b| {
        blocks.push((l.stream.to_string(), b))
    });
    finders.insert(l.stream.to_string(), (*seq, f));
}

/// The kind the agent gives a process that died printing this: Go's own kinds; SIGABRT for
/// what C and C++ libraries print before they abort; a runtime error for the rest (they
/// exit with their runtime's code).
pub fn kind_of(d: &Death) -> &'static str {
    match (d.runtime, d.reason) {
        ("go", "panic") => "go_panic",
        ("go", _) => "go_fatal",
        ("c++" | "glibc", _) => "signal",
        _ => "runtime_error",
    }
}

/// Consumes the complete lines at the head of `r`'s buffer before the first that holds a
/// marker (all of them when none does), less those a block could look back to right before
/// it: how many lines and bytes. Each is shorter than the
/// buffer, so none would have been cut.
fn pass_over(r: &mut impl BufRead) -> io::Result<(u64, u64)> {
    let avail = loop {
        match r.fill_buf() {
            Ok(b) => break b,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    };
    let upto = parse::markers::find(avail).unwrap_or(avail.len());
    let mut end = memchr::memrchr(b'\n', &avail[..upto]).map_or(0, |i| i + 1);
    // Lines a block could look back to are read one by one: they join the block that starts
    // next (the finder keeps 8 of them).
    for _ in 0..8 {
        let Some(last) = end.checked_sub(1) else {
            break;
        };
        let start = memchr::memrchr(b'\n', &avail[..last]).map_or(0, |i| i + 1);
        if !parse::blocks::looked_back_to(&String::from_utf8_lossy(&avail[start..last])) {
            break;
        }
        end = start;
    }
    let lines = memchr::memchr_iter(b'\n', &avail[..end]).count() as u64;
    r.consume(end);
    Ok((lines, end as u64))
}

/// One line into `buf` (without `\n`), keeping at most `cap` bytes of it: whether there was
/// a line, and the bytes of it not kept.
fn read_line(r: &mut impl BufRead, buf: &mut Vec<u8>, cap: usize) -> io::Result<(bool, u64)> {
    buf.clear();
    let (mut any, mut cut) = (false, 0u64);
    loop {
        let avail = match r.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if avail.is_empty() {
            return Ok((any, cut));
        }
        any = true;
        let (chunk, used, end) = match memchr::memchr(b'\n', avail) {
            Some(i) => (&avail[..i], i + 1, true),
            None => (avail, avail.len(), false),
        };
        let take = chunk.len().min(cap.saturating_sub(buf.len()));
        buf.extend_from_slice(&chunk[..take]);
        cut += (chunk.len() - take) as u64;
        r.consume(used);
        if end {
            return Ok((true, cut));
        }
    }
}

#[cfg(test)]
mod tests;
