//! The log formats people keep program output in, turned back into the lines the program
//! wrote: plain text, Kubernetes CRI lines (`<time> <stream> <F|P> <text>`, partial `P`
//! lines joined), docker's json-file (`{"log":…,"stream":…}`, lines docker split at 16 KiB
//! joined) and `journalctl -o json` (`MESSAGE` as a string or, for text that is not UTF-8,
//! an array of bytes). Each line comes with its stream (`stdout`/`stderr`, or the journal's
//! process) so that a crash printed on stderr is not cut by what stdout interleaved.
//!
//! Pure and streaming: one physical line in, zero or more logical lines out, with the
//! number of the physical line where each began. What a partial line can grow to is capped
//! at [`MAX_LINE`]; a record that is not of the format is passed on as plain text and
//! counted, never dropped.
use std::{borrow::Cow, collections::HashMap};

/// Bytes a joined line keeps; the rest is counted in [`Decoder::cut`].
pub const MAX_LINE: usize = 1 << 20;
/// Streams with a partial line pending at once (journal processes); more flush the oldest.
const MAX_PENDING: usize = 256;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Plain,
    Cri,
    Docker,
    Journal,
}

impl Format {
    /// The format of a file from its first non-empty line.
    pub fn detect(first: &[u8]) -> Format {
        let t = first.trim_ascii_start();
        if t.starts_with(b"{") {
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(t) {
                if v.get("log").is_some_and(|l| l.is_string()) {
                    return Format::Docker;
                }
                if v.get("MESSAGE").is_some() || v.get("__CURSOR").is_some() {
                    return Format::Journal;
                }
            }
        }
        if cri(&String::from_utf8_lossy(t)).is_some() {
            return Format::Cri;
        }
        Format::Plain
    }
}

/// One line as the program wrote it.
pub struct Line<'a> {
    /// The stream it was written to: `stdout`, `stderr`, the journal's `_PID`; empty for
    /// plain text.
    pub stream: &'a str,
    pub text: &'a str,
    /// The physical line of the log where it began (1-based).
    pub line: u64,
}

#[derive(Default)]
struct Pending {
    text: String,
    line: u64,
    seq: u64,
}

pub struct Decoder {
    format: Format,
    pending: HashMap<String, Pending>,
    seq: u64,
    /// Records that were not of the format (passed on as plain text).
    pub foreign: u64,
    /// Bytes of joined lines past [`MAX_LINE`], not kept.
    pub cut: u64,
}

impl Decoder {
    pub fn new(format: Format) -> Decoder {
        Decoder {
            format,
            pending: HashMap::new(),
            seq: 0,
            foreign: 0,
            cut: 0,
        }
    }

    /// One physical line (without its `\n`), numbered `line`.
    pub fn push(&mut self, raw: &[u8], line: u64, out: &mut impl FnMut(Line)) {
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        match self.format {
            Format::Plain => plain(raw, line, out),
            Format::Cri => {
                let text = text_of(raw);
                match cri(&text) {
                    Some((stream, full, content)) => {
                        self.part(stream, content, full, line, out);
                    }
                    None => self.foreign(raw, line, out),
                }
            }
            Format::Docker => match serde_json::from_slice::<serde_json::Value>(raw) {
                Ok(v) if v.get("log").is_some_and(|l| l.is_string()) => {
                    let stream = v.get("stream").and_then(|s| s.as_str()).unwrap_or("");
                    let log = v["log"].as_str().unwrap_or("");
                    // Docker ends each line it received with `\n` and splits longer ones
                    // into pieces without one.
                    let (content, full) = match log.strip_suffix('\n') {
                        Some(c) => (c, true),
                        None => (log, false),
                    };
                    self.part(stream, content, full, line, out);
                }
                _ => self.foreign(raw, line, out),
            },
            Format::Journal => match serde_json::from_slice::<serde_json::Value>(raw) {
                Ok(v) if v.is_object() => {
                    let stream = v
                        .get("_PID")
                        .and_then(|p| p.as_str())
                        .unwrap_or("")
                        .to_string();
                    let message = match v.get("MESSAGE") {
                        Some(serde_json::Value::String(s)) => Cow::Borrowed(s.as_str()),
                        Some(serde_json::Value::Array(bytes)) => {
                            let b: Vec<u8> = bytes
                                .iter()
                                .filter_map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()))
                                .collect();
                            Cow::Owned(String::from_utf8_lossy(&b).into_owned())
                        }
                        _ => Cow::Borrowed(""),
                    };
                    // One entry may hold several lines.
                    for t in message.split('\n') {
                        out(Line {
                            stream: &stream,
                            text: t,
                            line,
                        });
                    }
                }
                _ => self.foreign(raw, line, out),
            },
        }
    }

    /// Lines still partial at the end of the log, as they are.
    pub fn finish(&mut self, out: &mut impl FnMut(Line)) {
        let mut rest: Vec<(String, Pending)> = self.pending.drain().collect();
        rest.sort_by_key(|(_, p)| p.seq);
        for (stream, p) in rest {
            out(Line {
                stream: &stream,
                text: &p.text,
                line: p.line,
            });
        }
    }

    fn foreign(&mut self, raw: &[u8], line: u64, out: &mut impl FnMut(Line)) {
        if !raw.trim_ascii().is_empty() {
            self.foreign += 1;
        }
        plain(raw, line, out);
    }

    fn part(
        &mut self,
        stream: &str,
        content: &str,
        full: bool,
        line: u64,
        out: &mut impl FnMut(Line),
    ) {
        let Some(mut p) = self.pending.remove(stream) else {
            if full {
                out(Line {
                    stream,
                    text: content,
                    line,
                });
                return;
            }
            if self.pending.len() >= MAX_PENDING {
                self.flush_oldest(out);
            }
            self.seq += 1;
            let mut p = Pending {
                text: String::new(),
                line,
                seq: self.seq,
            };
            self.cut += append(&mut p.text, content);
            self.pending.insert(stream.to_string(), p);
            return;
        };
        self.cut += append(&mut p.text, content);
        if full {
            out(Line {
                stream,
                text: &p.text,
                line: p.line,
            });
        } else {
            self.pending.insert(stream.to_string(), p);
        }
    }

    fn flush_oldest(&mut self, out: &mut impl FnMut(Line)) {
        let Some(k) = self
            .pending
            .iter()
            .min_by_key(|(_, p)| p.seq)
            .map(|(k, _)| k.clone())
        else {
            return;
        };
        if let Some(p) = self.pending.remove(&k) {
            out(Line {
                stream: &k,
                text: &p.text,
                line: p.line,
            });
        }
    }
}

fn plain(raw: &[u8], line: u64, out: &mut impl FnMut(Line)) {
    let text = text_of(raw);
    out(Line {
        stream: "",
        text: &text,
        line,
    });
}

/// The bytes as text; invalid UTF-8 replaced. The strict check first: it is much faster on
/// the valid text nearly every log is, and this runs on every line.
fn text_of(raw: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(raw) {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => String::from_utf8_lossy(raw),
    }
}

/// `s` added to `to` up to [`MAX_LINE`] bytes (on a character boundary); the bytes left out.
fn append(to: &mut String, s: &str) -> u64 {
    let room = MAX_LINE.saturating_sub(to.len());
    if s.len() <= room {
        to.push_str(s);
        return 0;
    }
    let mut end = room;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    to.push_str(&s[..end]);
    (s.len() - end) as u64
}

/// `2024-05-01T10:00:00.123456789Z stderr F text`: the stream, whether the line is whole,
/// and the text.
fn cri(line: &str) -> Option<(&str, bool, &str)> {
    let (time, rest) = line.split_once(' ')?;
    let b = time.as_bytes();
    if b.len() < 20 || !b[..4].iter().all(u8::is_ascii_digit) || b[4] != b'-' || b[10] != b'T' {
        return None;
    }
    let (stream, rest) = rest.split_once(' ')?;
    if stream != "stdout" && stream != "stderr" {
        return None;
    }
    // The tag: `F` or `P`, possibly with more tags after `:`.
    let (tag, text) = rest.split_once(' ').unwrap_or((rest, ""));
    let full = match tag.split(':').next() {
        Some("F") => true,
        Some("P") => false,
        _ => return None,
    };
    Some((stream, full, text))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(format: Format, text: &str) -> (Vec<(String, String, u64)>, u64) {
        let mut d = Decoder::new(format);
        let mut got = Vec::new();
        let mut keep = |l: Line| got.push((l.stream.to_string(), l.text.to_string(), l.line));
        for (i, raw) in text.split('\n').enumerate() {
            if !raw.is_empty() {
                d.push(raw.as_bytes(), i as u64 + 1, &mut keep);
            }
        }
        d.finish(&mut keep);
        (got, d.foreign)
    }

    #[test]
    fn detects_each_format() {
        assert_eq!(
            Format::detect(b"2024-05-01T10:00:00.1Z stderr F panic: x"),
            Format::Cri
        );
        assert_eq!(
            Format::detect(br#"{"log":"x\n","stream":"stderr","time":"t"}"#),
            Format::Docker
        );
        assert_eq!(
            Format::detect(br#"{"__CURSOR":"s=1","MESSAGE":"x","_PID":"7"}"#),
            Format::Journal
        );
        assert_eq!(Format::detect(b"panic: x"), Format::Plain);
        assert_eq!(Format::detect(b"{not json"), Format::Plain);
    }

    #[test]
    fn cri_partials_are_joined_per_stream() {
        let log = "2024-05-01T10:00:00.1Z stderr P pan\n\
                   2024-05-01T10:00:00.2Z stdout F hello\n\
                   2024-05-01T10:00:00.3Z stderr F ic: boom\n\
                   not cri at all\n";
        let (got, foreign) = decode(Format::Cri, log);
        assert_eq!(
            got,
            [
                ("stdout".into(), "hello".into(), 2),
                ("stderr".into(), "panic: boom".into(), 1),
                ("".into(), "not cri at all".into(), 4),
            ]
        );
        assert_eq!(foreign, 1);
    }

    #[test]
    fn docker_pieces_without_newline_are_joined() {
        let log = r#"{"log":"goroutine 1 [run","stream":"stderr","time":"t"}
{"log":"ning]:\n","stream":"stderr","time":"t"}
{"log":"main.main()\n","stream":"stderr","time":"t"}"#;
        let (got, _) = decode(Format::Docker, log);
        let texts: Vec<&str> = got.iter().map(|g| g.1.as_str()).collect();
        assert_eq!(texts, ["goroutine 1 [running]:", "main.main()"]);
        assert_eq!(got[0].2, 1);
    }

    #[test]
    fn journal_messages_as_strings_or_bytes() {
        let log = r#"{"MESSAGE":"panic: boom","_PID":"7"}
{"MESSAGE":[104,105,255],"_PID":"8"}
{"MESSAGE":null,"_PID":"7"}"#;
        let (got, foreign) = decode(Format::Journal, log);
        assert_eq!(got[0], ("7".into(), "panic: boom".into(), 1));
        assert_eq!(got[1], ("8".into(), "hi\u{fffd}".into(), 2));
        assert_eq!(got[2].1, "");
        assert_eq!(foreign, 0);
    }

    #[test]
    fn a_partial_line_cannot_grow_past_the_cap() {
        let mut d = Decoder::new(Format::Cri);
        let piece = format!("2024-05-01T10:00:00.1Z stderr P {}", "x".repeat(64 << 10));
        let mut n = 0;
        for i in 0..40 {
            d.push(piece.as_bytes(), i, &mut |_| n += 1);
        }
        let mut len = 0;
        d.finish(&mut |l| len = l.text.len());
        assert_eq!((n, len), (0, MAX_LINE));
        assert_eq!(d.cut, 40 * (64 << 10) - MAX_LINE as u64);
    }
}
