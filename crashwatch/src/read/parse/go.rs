//! What the Go runtime prints on its way down: `panic:` / `fatal error:` headers and
//! goroutine tracebacks. Hand-written because the format is Go's own (no crate parses it) and
//! it must accept every version's variant: `created by X in goroutine N` (1.21+), `gp=… m=…`
//! in headers (GOTRACEBACK=system/crash), elided frames, wait durations. It only reads text, so
//! it serves log files (`crashwatch analyze`) as well as captured stderr.
pub use crate::model::go::{Frame, Goroutine};

/// One `panic:` line of a chain, as printed: the first panicked first, each later one while
/// the one before it was running its deferred calls.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PanicLink {
    pub value: String,
    /// Marked ` [recovered]`: a deferred call recovered it (and panicked again).
    pub recovered: bool,
    /// Marked ` [recovered, repanicked]` (Go 1.23+): re-panicked with the same value.
    pub repanicked: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Traceback {
    /// `panic:` values in the order printed; the last one killed the process.
    pub panics: Vec<String>,
    /// The same panics with their marks.
    pub chain: Vec<PanicLink>,
    pub fatal_error: Option<String>,
    /// The runtime's signal crash header (`SIGSEGV: segmentation violation`), printed when a
    /// signal kills a Go program outside Go code (cgo) without a `fatal error:` line.
    pub signal_crash: Option<String>,
    /// `signal arrived during cgo execution`.
    pub in_cgo: bool,
    pub goroutines: Vec<Goroutine>,
}

impl Traceback {
    /// What killed the process, as the runtime put it: the fatal error, else the signal crash.
    pub fn fatal_message(&self) -> Option<String> {
        self.fatal_error.clone().or_else(|| {
            let s = self.signal_crash.as_ref()?;
            Some(if self.in_cgo {
                format!("{s} (signal arrived during cgo execution)")
            } else {
                s.clone()
            })
        })
    }
}

const STATES: [&str; 8] = [
    "idle",
    "runnable",
    "running",
    "syscall",
    "dead",
    "copystack",
    "preempted",
    "waiting",
];

pub fn parse(text: &str) -> Traceback {
    let mut p = Parser::default();
    let mut goroutines = Vec::new();
    for line in text.lines() {
        goroutines.extend(p.push(line));
    }
    goroutines.extend(p.finish());
    let mut t = p.t;
    t.goroutines = goroutines;
    t
}

/// The parser line by line, for dumps too long to hold: each goroutine is handed back when
/// its last line has been read, and the rest (panics, fatal error, signal) kept in
/// [`Parser::t`] (whose `goroutines` it leaves empty).
#[derive(Default)]
pub struct Parser {
    pub t: Traceback,
    current: Option<Goroutine>,
    /// The system stack of a fatal error is not a goroutine: its frames are skipped.
    skipping: bool,
    /// A panic value being read (it may run over several lines).
    value: Option<String>,
    /// The line before named a function (or `created by` one): its location may follow.
    want_location: Option<Want>,
    seen_goroutine: bool,
}

#[derive(Clone, Copy)]
enum Want {
    Frame,
    CreatedBy,
}

impl Parser {
    /// One line (without its line end); a goroutine this line completed.
    pub fn push(&mut self, line: &str) -> Option<Goroutine> {
        if let Some(v) = self.value.as_mut() {
            if line.is_empty()
                || line.starts_with('[')
                || line.starts_with("\tpanic: ")
                || line.starts_with("goroutine ")
            {
                self.end_value();
            } else {
                v.push('\n');
                v.push_str(line);
                return None;
            }
        }
        let want_location = self.want_location.take();
        if let Some(v) = line
            .strip_prefix("panic: ")
            .or_else(|| line.strip_prefix("\tpanic: "))
        {
            self.value = Some(v.to_string());
        } else if let Some(m) = line.strip_prefix("fatal error: ") {
            self.t.fatal_error.get_or_insert_with(|| m.to_string());
        } else if is_signal_header(line) && !self.seen_goroutine && self.current.is_none() {
            self.t.signal_crash.get_or_insert_with(|| line.to_string());
        } else if line == "signal arrived during cgo execution" {
            self.t.in_cgo = true;
        } else if let Some(g) = header(line) {
            self.skipping = false;
            self.seen_goroutine = true;
            return self.current.replace(g);
        } else if line == "runtime stack:" {
            self.skipping = true;
            return self.current.take();
        } else if self.skipping || line.is_empty() {
        } else if let Some(g) = self.current.as_mut() {
            if let (Some(want), true) = (want_location, line.starts_with('\t')) {
                let f = match want {
                    Want::CreatedBy => g.created_by.as_mut(),
                    Want::Frame => g.frames.last_mut(),
                };
                if let Some(f) = f {
                    location(f, line);
                }
            } else if line == "...additional frames elided..." {
                g.elided = true;
            } else if let Some(rest) = line.strip_prefix("created by ") {
                let (func, parent) = match rest.split_once(" in goroutine ") {
                    Some((f, p)) => (f, p.trim().parse().ok()),
                    None => (rest, None),
                };
                g.created_by = Some(Frame {
                    function: func.to_string(),
                    ..Default::default()
                });
                g.created_in = parent;
                self.want_location = Some(Want::CreatedBy);
            } else if !line.starts_with('\t') && !line.starts_with(' ') {
                g.frames.push(Frame {
                    function: function_name(line).to_string(),
                    ..Default::default()
                });
                self.want_location = Some(Want::Frame);
            }
        }
        None
    }

    /// The end of the text: the goroutine still open.
    pub fn finish(&mut self) -> Option<Goroutine> {
        self.end_value();
        self.current.take()
    }

    fn end_value(&mut self) {
        let Some(mut value) = self.value.take() else {
            return;
        };
        let mut link = PanicLink::default();
        if let Some(v) = value.strip_suffix(" [recovered, repanicked]") {
            value = v.to_string();
            (link.recovered, link.repanicked) = (true, true);
        } else if let Some(v) = value.strip_suffix(" [recovered]") {
            value = v.to_string();
            link.recovered = true;
        }
        link.value = value.clone();
        self.t.chain.push(link);
        self.t.panics.push(value);
    }
}

/// `SIGSEGV: segmentation violation` (the runtime's sigtable names and descriptions).
pub fn is_signal_header(line: &str) -> bool {
    // Asked of every line of a log: the cheap test first.
    line.starts_with("SIG")
        && line.split_once(": ").is_some_and(|(sig, desc)| {
            sig.len() > 3
                && sig.starts_with("SIG")
                && sig[3..].bytes().all(|b| b.is_ascii_uppercase())
                && !desc.is_empty()
        })
}

/// `goroutine 18 [chan receive, 2 minutes, locked to thread]:` (with `gp=… m=…` on 1.23+).
fn header(line: &str) -> Option<Goroutine> {
    let rest = line.strip_prefix("goroutine ")?;
    let (id, rest) = rest.split_once(' ')?;
    let id = id.parse().ok()?;
    let open = rest.find('[')?;
    let inner = rest[open + 1..].strip_suffix("]:")?;
    let mut g = Goroutine {
        id,
        ..Default::default()
    };
    for (i, part) in inner.split(", ").enumerate() {
        if i == 0 {
            if STATES.contains(&part) {
                g.state = part.to_string();
            } else {
                g.state = "waiting".into();
                g.wait_reason = Some(part.to_string());
            }
        } else if part == "locked to thread" {
            g.locked_to_thread = true;
        } else if let Some(m) = part
            .strip_suffix(" minutes")
            .or_else(|| part.strip_suffix(" minute"))
        {
            g.wait_minutes = m.parse().ok();
        }
    }
    Some(g)
}

/// `main.(*T).Run(0xc000010000, {0x4b8f30?, 0x0})` → `main.(*T).Run`.
fn function_name(line: &str) -> &str {
    let line = line.trim_end();
    if !line.ends_with(')') {
        return line;
    }
    let mut depth = 0;
    for (i, c) in line.char_indices().rev() {
        match c {
            ')' => depth += 1,
            '(' => {
                depth -= 1;
                if depth == 0 {
                    return &line[..i];
                }
            }
            _ => {}
        }
    }
    line
}

/// `\t/src/main.go:49 +0x4b6`, the line after a function.
fn location(f: &mut Frame, line: &str) {
    let loc = line.trim_start_matches('\t');
    let loc = loc.split(" +0x").next().unwrap_or(loc).trim_end();
    if let Some((file, line)) = loc.rsplit_once(':') {
        f.file = Some(file.to_string());
        f.line = line.parse().ok();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PANIC_121: &str = "panic: boom: in a goroutine\n\ngoroutine 18 [running]:\nmain.main.func2()\n\t/src/main.go:88 +0x65\ncreated by main.main in goroutine 1\n\t/src/main.go:86 +0x2c5\n\ngoroutine 1 [chan receive]:\nmain.main()\n\t/src/main.go:90 +0x2e5\n";

    #[test]
    fn goroutine_panic_with_creator() {
        let t = parse(PANIC_121);
        assert_eq!(t.panics, ["boom: in a goroutine"]);
        let g = &t.goroutines[0];
        assert_eq!((g.id, g.state.as_str()), (18, "running"));
        assert_eq!(
            g.frames[0],
            Frame {
                function: "main.main.func2".into(),
                file: Some("/src/main.go".into()),
                line: Some(88)
            }
        );
        assert_eq!(g.created_by.as_ref().unwrap().function, "main.main");
        assert_eq!(g.created_in, Some(1));
        let w = &t.goroutines[1];
        assert_eq!(
            (w.id, w.state.as_str(), w.wait_reason.as_deref()),
            (1, "waiting", Some("chan receive"))
        );
    }

    #[test]
    fn fatal_error_skips_the_system_stack() {
        let text = "runtime: goroutine stack exceeds 1000000000-byte limit\nfatal error: stack overflow\n\nruntime stack:\nruntime.throw({0x4a1b2c?, 0x0?})\n\t/go/src/runtime/panic.go:1047 +0x5d\n\ngoroutine 1 gp=0xc000002380 m=0 mp=0x5a1b20 [running, locked to thread]:\nmain.recurse(0x0?)\n\t/src/main.go:36 +0x2c fp=0xc020160398 sp=0xc020160390 pc=0x48f1ac\n...additional frames elided...\ncreated by main.main\n\t/src/main.go:80 +0x1\n";
        let t = parse(text);
        assert_eq!(t.fatal_error.as_deref(), Some("stack overflow"));
        assert_eq!(t.goroutines.len(), 1);
        let g = &t.goroutines[0];
        assert!(g.locked_to_thread && g.elided);
        assert_eq!(
            (g.frames[0].function.as_str(), g.frames[0].line),
            ("main.recurse", Some(36))
        );
        assert_eq!(g.created_in, None);
    }

    #[test]
    fn nested_panics_multiline_values_and_signal_lines() {
        let text = "panic: first [recovered]\n\tpanic: second\nline two\n[signal SIGSEGV: segmentation violation code=0x1 addr=0x0 pc=0x4]\n\ngoroutine 1 [select (no cases), 3 minutes]:\nmain.(*T).Run(0xc000010000, {0x4b8f30?, 0x0})\n\t/src/t.go:7 +0x1\n";
        let t = parse(text);
        assert_eq!(t.panics, ["first", "second\nline two"]);
        let g = &t.goroutines[0];
        assert_eq!(
            (g.wait_reason.as_deref(), g.wait_minutes),
            (Some("select (no cases)"), Some(3))
        );
        assert_eq!(g.frames[0].function, "main.(*T).Run");
    }

    #[test]
    fn signal_crash_in_cgo() {
        let text = "SIGSEGV: segmentation violation\nPC=0x4821c0 m=0 sigcode=1\nsignal arrived during cgo execution\n\ngoroutine 1 [syscall]:\nruntime.cgocall(0x4821c0, 0xc000051e80)\n\t/go/src/runtime/cgocall.go:157 +0x4b fp=0xc0 sp=0xc0 pc=0x40\n";
        let t = parse(text);
        assert_eq!(
            t.fatal_message().as_deref(),
            Some("SIGSEGV: segmentation violation (signal arrived during cgo execution)")
        );
        assert_eq!(
            (t.goroutines[0].id, t.goroutines[0].state.as_str()),
            (1, "syscall")
        );
        assert_eq!(parse("panic: SIGFOO: bar\n").signal_crash, None);
    }

    #[test]
    fn garbage_is_empty_not_a_panic() {
        let t = parse("goroutine x [\n\tnot a frame\n{{{{\n");
        assert!(t.goroutines.is_empty() && t.panics.is_empty());
    }
}

#[cfg(test)]
mod real_output {
    use super::parse;
    use crate::gobuild;
    use std::process::Command;

    fn run(v: &str, mode: &str) -> (String, String) {
        let mut cmd = Command::new(gobuild::build(v, gobuild::Flavour::Static));
        // Every goroutine, not only the panicking one (the default, "single").
        let out = cmd.arg(mode).env("GOTRACEBACK", "all").output().unwrap();
        (
            String::from_utf8_lossy(&out.stdout).into(),
            String::from_utf8_lossy(&out.stderr).into(),
        )
    }

    fn fact(stdout: &str, k: &str) -> u64 {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap()
            .parse()
            .unwrap()
    }

    #[test]
    fn parses_what_every_runtime_prints() {
        for v in gobuild::VERSIONS {
            let (out, err) = run(v, "goroutine");
            let t = parse(&err);
            assert_eq!(t.panics, ["boom: in a goroutine"], "{v}");
            let g = &t.goroutines[0];
            assert_eq!(
                (g.id, g.state.as_str()),
                (fact(&out, "panicker"), "running"),
                "{v}"
            );
            assert!(
                g.frames[0].function.starts_with("main.main.func"),
                "{v}: {:?}",
                g.frames[0]
            );
            assert!(
                g.frames[0].file.as_deref().unwrap().ends_with("main.go"),
                "{v}"
            );
            assert_eq!(
                g.created_by.as_ref().map(|f| f.function.as_str()),
                Some("main.main"),
                "{v}"
            );
            let main = t
                .goroutines
                .iter()
                .find(|g| g.id == 1)
                .unwrap_or_else(|| panic!("{v}: {err}"));
            assert_eq!(
                (main.state.as_str(), main.wait_reason.as_deref()),
                ("waiting", Some("chan receive")),
                "{v}"
            );

            let (_, err) = run(v, "overflow");
            let t = parse(&err);
            assert_eq!(t.fatal_error.as_deref(), Some("stack overflow"), "{v}");
            assert_eq!(t.goroutines[0].frames[0].function, "main.recurse", "{v}");

            let (_, err) = run(v, "deadlock");
            let t = parse(&err);
            assert_eq!(
                t.fatal_error.as_deref(),
                Some("all goroutines are asleep - deadlock!"),
                "{v}"
            );
            assert_eq!(
                t.goroutines[0].wait_reason.as_deref(),
                Some("select (no cases)"),
                "{v}"
            );
        }
    }
}
