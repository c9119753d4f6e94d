//! Fingerprint v1: which crashes are the same bug (docs/fingerprint.md is the contract; a
//! change to what goes in is a new version, never a silent one).
//!
//! A pure function of a finished report. What goes in: the kind; the cause (signal name,
//! exit code, or the runtime's error: its runtime, reason, type and message with the parts
//! that vary between occurrences masked, as Sentry does); the top three in-app frames by
//! function name, cleaned of arguments, generics, Rust's `::h<hash>` and compiler clone
//! suffixes, with the crash machinery skipped (the Go runtime, libc's abort path, the Rust
//! and C++ panic paths, interpreters' eval loops, system libraries); and the program (a Go
//! binary's main package path, else the executable's name). Never pids, addresses, line
//! numbers, build ids or container ids: a new build of the same bug groups with the old.
//!
//! Own code: the cleaning rules are crashwatch's contract, and the hash is FNV-1a 64, a
//! few lines specified exactly in the doc, so anyone can recompute a value.
use crate::model::report::Report;

/// The version in every value.
pub const VERSION: &str = "v1";
/// In-app frames that go in.
const FRAMES: usize = 3;
/// Characters of a message that go in (after masking).
const MESSAGE_MAX: usize = 1024;

/// `v1:<16 hex digits>`, and the lines it is the hash of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fingerprint {
    pub value: String,
    pub basis: Vec<String>,
}

pub fn fingerprint(r: &Report) -> Fingerprint {
    let mut basis = vec![format!("kind:{}", r.kind)];
    basis.push(cause(r));
    // A runtime's own stack (Python, Node, Java, Rust's) over the native one, which for an
    // interpreter is its eval loop.
    let (frames, runtime): (Vec<Site>, Option<&str>) = match &r.error {
        Some(e) if !e.frames.is_empty() => (
            e.frames
                .iter()
                .map(|f| Site {
                    function: f.function.as_deref(),
                    file: f.file.as_deref(),
                    module: None,
                    offset: None,
                })
                .collect(),
            Some(e.runtime),
        ),
        _ => (
            r.stack
                .iter()
                .map(|f| Site {
                    function: f.function.as_deref(),
                    file: f.file.as_deref(),
                    module: f.module.as_deref(),
                    offset: f.offset,
                })
                .collect(),
            None,
        ),
    };
    for f in in_app(&frames, runtime) {
        basis.push(format!("frame:{f}"));
    }
    basis.push(format!("program:{}", program(r)));
    let value = format!("{VERSION}:{:016x}", fnv1a(basis.join("\n").as_bytes()));
    Fingerprint { value, basis }
}

fn cause(r: &Report) -> String {
    if let Some(e) = &r.error {
        return format!(
            "error:{}/{}/{}/{}",
            e.runtime,
            e.reason,
            e.error_type.as_deref().unwrap_or(""),
            mask(&e.message)
        );
    }
    if let Some(g) = &r.go {
        if let Some(m) = &g.fatal_message {
            return format!("go_fatal:{}", mask(m));
        }
        if g.panic_value.is_some() || g.panic_type.is_some() {
            return format!(
                "go_panic:{}/{}",
                g.panic_type.as_deref().unwrap_or(""),
                mask(g.panic_value.as_deref().unwrap_or(""))
            );
        }
    }
    if let Some(s) = &r.signal {
        return format!("signal:{}", s.name);
    }
    match r.exit.code {
        Some(c) => format!("exit:{c}"),
        None => "exit:".into(),
    }
}

fn program(r: &Report) -> String {
    let go_path =
        r.go.as_ref()
            .and_then(|g| g.build.as_ref())
            .and_then(|b| b.path.clone().or_else(|| b.main_module.clone()));
    go_path.unwrap_or_else(|| {
        r.exe
            .as_deref()
            .map(|e| e.rsplit('/').next().unwrap_or(e).to_string())
            .unwrap_or_else(|| r.comm.clone())
    })
}

/// One frame, from either stack.
struct Site<'a> {
    function: Option<&'a str>,
    file: Option<&'a str>,
    module: Option<&'a str>,
    offset: Option<u64>,
}

/// The top in-app frames as they go in: a cleaned function name (with the file's base name
/// for Python's and Node's frames, whose function names alone repeat across programs), or
/// `module+0xoffset` for a frame without a name. `runtime`: whose printed stack this is;
/// None for the native stack.
fn in_app(frames: &[Site], runtime: Option<&str>) -> Vec<String> {
    let with_file = matches!(runtime, Some("python" | "node"));
    let named = |f: &Site| -> Option<String> {
        match f.function {
            Some(func) => {
                let name = clean(func);
                if name.is_empty() || machinery(&name) {
                    return None;
                }
                Some(match (with_file, f.file) {
                    (true, Some(file)) => {
                        format!("{name}@{}", file.rsplit('/').next().unwrap_or(file))
                    }
                    _ => name,
                })
            }
            None => {
                let m = f.module?;
                Some(format!(
                    "{}+{:#x}",
                    m.rsplit('/').next().unwrap_or(m),
                    f.offset?
                ))
            }
        }
    };
    let app: Vec<String> = frames
        .iter()
        .filter(|f| !library(f, runtime.is_some()))
        .filter_map(named)
        .take(FRAMES)
        .collect();
    if !app.is_empty() {
        return app;
    }
    // Nothing of the program's own: the top frames that are not crash machinery.
    frames.iter().filter_map(named).take(FRAMES).collect()
}

/// Frames of code the program did not write: system libraries, and in a runtime's printed
/// stack its standard library and installed packages.
fn library(f: &Site, printed: bool) -> bool {
    if printed {
        let file = f.file.unwrap_or("");
        return file.contains("/lib/python")
            || file.contains("site-packages/")
            || file.starts_with("node:")
            || file.contains("/node_modules/")
            || f.function.is_some_and(|n| {
                ["java.", "javax.", "jdk.", "sun.", "kotlin."]
                    .iter()
                    .any(|p| n.starts_with(p))
            });
    }
    let Some(m) = f.module else {
        return false;
    };
    let base = m.rsplit('/').next().unwrap_or(m);
    [
        "libc.so",
        "libc-",
        "libm.so",
        "libpthread",
        "ld-linux",
        "ld-musl",
        "libstdc++",
        "libc++",
        "libgcc_s",
        "libunwind",
        "libdl.so",
        "librt.so",
        "linux-vdso",
        "libasan",
        "libubsan",
        "libtsan",
        "libjvm.so",
        "libpython",
        "libnode",
    ]
    .iter()
    .any(|p| base.starts_with(p))
}

/// The crash machinery: where every crash of a kind passes, whatever the bug.
fn machinery(name: &str) -> bool {
    const EXACT: [&str; 27] = [
        "raise",
        "abort",
        "gsignal",
        "__assert_fail",
        "__assert_fail_base",
        "__assert_perror_fail",
        "__libc_start_main",
        "__libc_start_main_impl",
        "__libc_start_call_main",
        "_start",
        "start_thread",
        "clone",
        "clone3",
        "__clone",
        "__clone3",
        "pthread_kill",
        "__pthread_kill",
        "__pthread_kill_implementation",
        "__pthread_kill_internal",
        "__libc_message",
        "__libc_message_impl",
        "malloc_printerr",
        "__stack_chk_fail",
        "__fortify_fail",
        "__chk_fail",
        "__restore_rt",
        "rust_begin_unwind",
    ];
    const PREFIX: [&str; 23] = [
        "runtime.",
        "runtime/",
        // Rust since 1.87 prints `__rustc::rust_begin_unwind`.
        "__rustc::",
        "std::",
        "core::",
        "alloc::",
        "<std::",
        "<core::",
        "<alloc::",
        "panic_unwind::",
        "__rust_",
        "rust_panic",
        "__cxa_",
        "__cxxabiv1::",
        "__gnu_cxx::",
        "__GI_",
        "_Py",
        "v8::",
        "node::",
        "Builtins_",
        "__sanitizer::",
        "__asan::",
        "__ubsan::",
    ];
    EXACT.contains(&name) || PREFIX.iter().any(|p| name.starts_with(p))
}

/// A function name without what varies between builds or call sites: Rust's `::h<hash>`,
/// compiler clone suffixes (`.cold`, `.isra.0`, `.part.1`, `.constprop.0`, `.lto_priv.0`,
/// `.llvm.123`), generic and template arguments (`<…>`, Go's `[…]`) and a trailing argument
/// list (`(int, char)`; Go's `(*T)` receivers stay).
pub fn clean(name: &str) -> String {
    let mut s = name.trim();
    if let Some(at) = s.rfind("::h") {
        let hash = &s[at + 3..];
        if hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            s = &s[..at];
        }
    }
    for suffix in [
        ".cold",
        ".isra.",
        ".part.",
        ".constprop.",
        ".lto_priv.",
        ".llvm.",
    ] {
        if let Some(at) = s.find(suffix) {
            s = &s[..at];
        }
    }
    let s = s.strip_suffix(" const").unwrap_or(s);
    let mut s = s.to_string();
    // A trailing argument list: the last `(…)` when it ends the name and does not follow a
    // `.` (Go's `main.(*T).M` keeps its receiver).
    if s.ends_with(')') {
        if let Some(open) = matching_open(&s) {
            if open > 0 && !s[..open].ends_with('.') {
                s.truncate(open);
            }
        }
    }
    strip_groups(&s)
}

/// The index of the `(` that the final `)` closes.
fn matching_open(s: &str) -> Option<usize> {
    let mut depth = 0i32;
    for (i, c) in s.char_indices().rev() {
        match c {
            ')' => depth += 1,
            '(' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

/// Drops `<…>` and `[…]` groups that follow a name character (generic arguments); a `<` that
/// starts a name (`<module>`, `<T as Trait>`) stays.
fn strip_groups(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut depth = 0usize;
    let mut close = Vec::new();
    for c in s.chars() {
        if depth > 0 {
            match c {
                '<' | '[' => {
                    depth += 1;
                    close.push(if c == '<' { '>' } else { ']' });
                }
                '>' | ']' if close.last() == Some(&c) => {
                    close.pop();
                    depth -= 1;
                }
                _ => {}
            }
            continue;
        }
        let after_name = out
            .chars()
            .last()
            .is_some_and(|p| p.is_alphanumeric() || p == '_');
        if (c == '<' || c == '[') && after_name {
            depth = 1;
            close.push(if c == '<' { '>' } else { ']' });
            continue;
        }
        out.push(c);
    }
    out
}

/// The message with what varies between occurrences masked: quoted strings (`<str>`), UUIDs
/// (`<uuid>`), hex numbers and long hex words (`<hex>`), durations (`<duration>`) and
/// numbers standing alone (`<num>`; digits inside a word such as `utf8` stay).
pub fn mask(msg: &str) -> String {
    let chars: Vec<char> = msg.chars().take(4 * MESSAGE_MAX).collect();
    let mut out = String::new();
    let mut i = 0;
    let word = |c: char| c.is_alphanumeric() || c == '_';
    while i < chars.len() {
        let c = chars[i];
        let starts_word = i == 0 || !word(chars[i - 1]);
        if c == '\'' || c == '"' {
            if let Some(len) = chars[i + 1..].iter().take(256).position(|x| *x == c) {
                out.push_str("<str>");
                i += len + 2;
                continue;
            }
        }
        if starts_word && c.is_ascii_hexdigit() {
            let end = chars[i..]
                .iter()
                .position(|x| !word(*x) && *x != '-')
                .map_or(chars.len(), |p| i + p);
            let tok: String = chars[i..end].iter().collect();
            if crate::model::hex::is_uuid(&tok) {
                out.push_str("<uuid>");
                i = end;
                continue;
            }
        }
        if starts_word && c == '0' && matches!(chars.get(i + 1), Some('x' | 'X')) {
            let end = chars[i + 2..]
                .iter()
                .position(|x| !x.is_ascii_hexdigit())
                .map_or(chars.len(), |p| i + 2 + p);
            if end > i + 2 && !chars.get(end).is_some_and(|x| word(*x)) {
                out.push_str("<hex>");
                i = end;
                continue;
            }
        }
        if starts_word && c.is_ascii_alphanumeric() {
            let end = chars[i..]
                .iter()
                .position(|x| !word(*x))
                .map_or(chars.len(), |p| i + p);
            let tok = &chars[i..end];
            let hex_word = tok.len() >= 8
                && tok.iter().all(|x| x.is_ascii_hexdigit())
                && tok.iter().any(|x| x.is_ascii_digit())
                && tok.iter().any(|x| x.is_ascii_alphabetic());
            if hex_word {
                out.push_str("<hex>");
                i = end;
                continue;
            }
        }
        if starts_word && c.is_ascii_digit() {
            if let Some(end) = duration_end(&chars, i) {
                out.push_str("<duration>");
                i = end;
                continue;
            }
            let mut end = i;
            while end < chars.len() && chars[end].is_ascii_digit() {
                end += 1;
            }
            if end + 1 < chars.len() && chars[end] == '.' && chars[end + 1].is_ascii_digit() {
                end += 1;
                while end < chars.len() && chars[end].is_ascii_digit() {
                    end += 1;
                }
            }
            if !chars.get(end).is_some_and(|x| word(*x)) {
                out.push_str("<num>");
                i = end;
                continue;
            }
        }
        out.push(c);
        i += 1;
    }
    out.chars().take(MESSAGE_MAX).collect()
}

/// The end of a Go-style duration at `i` (`30s`, `1.5ms`, `2h45m0.5s`, `100µs`).
fn duration_end(chars: &[char], mut i: usize) -> Option<usize> {
    let mut parts = 0;
    loop {
        let start = i;
        while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '.') {
            i += 1;
        }
        if i == start {
            break;
        }
        let unit_end = ["ns", "us", "µs", "ms", "h", "m", "s"]
            .iter()
            .find_map(|u| {
                let u: Vec<char> = u.chars().collect();
                chars[i..].starts_with(&u).then_some(i + u.len())
            })?;
        i = unit_end;
        parts += 1;
        if !chars.get(i).is_some_and(|c| c.is_ascii_digit()) {
            break;
        }
    }
    let ends_word = !chars
        .get(i)
        .is_some_and(|c| c.is_alphanumeric() || *c == '_');
    (parts > 0 && ends_word).then_some(i)
}

pub use crate::model::hex::fnv1a;

#[cfg(test)]
mod tests;
