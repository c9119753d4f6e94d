//! The parsers over real dying words, captured from the runtimes installed on the machine
//! the tests were written on (`testdata/`: Go 1.19 and 1.27, rustc 1.95, CPython 3.11, Node
//! 20, OpenJDK 17, g++ 12, glibc 2.36, GCC's AddressSanitizer), and over hostile text.
use super::*;

fn data(name: &str) -> String {
    let path = format!(
        "{}/src/read/parse/testdata/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn death(name: &str) -> Death {
    recognise(&data(name)).unwrap_or_else(|| panic!("{name}: nothing recognised"))
}

fn func(f: &Frame) -> &str {
    f.function.as_deref().unwrap_or("")
}

#[test]
fn go_nested_panics_keep_the_chain_root_first() {
    for name in ["go_nested.txt", "go27_nested.txt"] {
        let d = death(name);
        assert_eq!((d.runtime, d.reason), ("go", "panic"), "{name}");
        assert_eq!(d.headline, "panic: connection reset", "{name}");
        assert_eq!(d.message, "connection reset");
        let chain: Vec<(&str, Option<&str>)> = d
            .chain
            .iter()
            .map(|l| (l.message.as_str(), l.relation))
            .collect();
        assert_eq!(
            chain,
            [
                ("connection reset", None),
                ("cleanup failed", Some("while_panicking"))
            ]
        );
        assert_eq!(func(&d.frames[0]), "main.cleanup");
        assert_eq!(d.thread.as_deref(), Some("goroutine 1"));
        assert_eq!(d.start, 0);
    }
    let d = death("go27_recovered.txt");
    assert_eq!(d.headline, "panic: first [recovered, repanicked]");
    assert!(d.chain[0].recovered);
    assert_eq!(d.chain[1].message, "second");
    assert!(d.explains_exit(2) && !d.explains_exit(1));
}

#[test]
fn go_runtime_lines_before_a_fatal_error_are_looked_back_at() {
    let text = "starting\nruntime: out of memory: cannot allocate 1048576-byte block\nfatal error: out of memory\n\ngoroutine 1 [running]:\nmain.main()\n\t/x/main.go:5 +0x1d\n";
    let d = recognise(text).unwrap();
    assert_eq!(
        (d.reason, d.message.as_str()),
        ("fatal_error", "out of memory")
    );
    assert_eq!(&text[d.start..d.start + 8], "runtime:");
}

#[test]
fn rust_panics_in_both_formats_with_and_without_a_backtrace() {
    let d = death("rust_thread.txt");
    assert_eq!((d.runtime, d.reason), ("rust", "panic"));
    assert_eq!(d.thread.as_deref(), Some("worker-7"));
    assert_eq!(
        d.message,
        "index out of bounds: the len is 0 but the index is 4"
    );
    let loc = d.location.as_ref().unwrap();
    assert_eq!(
        (loc.file.as_deref(), loc.line, loc.column),
        (Some("p.rs"), Some(5), Some(25))
    );
    assert_eq!(func(&d.frames[0]), "__rustc::rust_begin_unwind");
    assert_eq!(func(&d.frames[6]), "p::main::{{closure}}");
    assert_eq!(d.frames[6].file.as_deref(), Some("./p.rs"));
    assert_eq!(
        d.headline,
        "thread 'worker-7' panicked at p.rs:5:25: index out of bounds: the len is 0 but the index is 4"
    );
    assert!(d.explains_exit(101) && !d.explains_exit(1));

    let d = death("rust_main_nobt.txt");
    assert_eq!(
        (d.message.as_str(), d.frames.len()),
        ("config file missing", 0)
    );
    // Before Rust 1.73 the message was quoted on the header line, and there was no tid.
    let d = recognise("thread 'main' panicked at 'boom: it broke', src/main.rs:2:5\nnote: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n").unwrap();
    assert_eq!(
        (d.message.as_str(), d.thread.as_deref()),
        ("boom: it broke", Some("main"))
    );
    assert_eq!(d.location.unwrap().line, Some(2));

    let d = death("rust_so.txt");
    assert_eq!(
        (d.reason, d.thread.as_deref()),
        ("stack_overflow", Some("main"))
    );
    assert!(d.explains_exit(134));
}

#[test]
fn python_chains_groups_and_fatal_errors() {
    let d = death("py_chained.txt");
    assert_eq!((d.runtime, d.reason), ("python", "uncaught_exception"));
    assert_eq!(d.headline, "RuntimeError: config broken");
    assert_eq!(d.error_type.as_deref(), Some("RuntimeError"));
    // Innermost first.
    assert_eq!(func(&d.frames[0]), "load");
    assert_eq!(d.frames[0].line, Some(7));
    assert_eq!(func(&d.frames[1]), "<module>");
    let chain: Vec<(Option<&str>, Option<&str>)> = d
        .chain
        .iter()
        .map(|l| (l.error_type.as_deref(), l.relation))
        .collect();
    assert_eq!(
        chain,
        [
            (Some("ValueError"), None),
            (Some("RuntimeError"), Some("direct_cause"))
        ]
    );
    assert_eq!(func(&d.chain[0].frames[0]), "parse");
    assert_eq!(d.start, 0);
    assert!(d.explains_exit(1));

    let d = death("py_during.txt");
    assert_eq!(d.error_type.as_deref(), Some("AttributeError"));
    assert_eq!(d.chain[1].relation, Some("during_handling"));
    assert_eq!(d.chain[0].message, "'k'");

    let d = death("py_group.txt");
    assert_eq!(d.error_type.as_deref(), Some("ExceptionGroup"));
    assert_eq!(d.message, "many (2 sub-exceptions)");
    let members: Vec<(&str, Option<&str>)> = d
        .chain
        .iter()
        .skip(1)
        .map(|l| (l.message.as_str(), l.relation))
        .collect();
    assert_eq!(
        members,
        [("a", Some("group_member")), ("b", Some("group_member"))]
    );

    let d = death("py_fatal.txt");
    assert_eq!(
        (d.reason, d.message.as_str()),
        ("fatal_error", "Segmentation fault")
    );
    assert_eq!(func(&d.frames[0]), "string_at");
    assert_eq!(d.frames[1].file.as_deref(), Some("<string>"));
}

#[test]
fn node_uncaught_exceptions_start_at_their_source_line() {
    let text = data("node_throw.txt");
    let d = recognise(&text).unwrap();
    assert_eq!((d.runtime, d.reason), ("node", "uncaught_exception"));
    assert_eq!(d.headline, "TypeError: cfg is required");
    assert_eq!(d.error_type.as_deref(), Some("TypeError"));
    assert_eq!(
        (func(&d.frames[0]), d.frames[0].line, d.frames[0].column),
        ("load", Some(2), Some(19))
    );
    assert_eq!(d.frames.len(), 9);
    assert_eq!(
        d.location.as_ref().unwrap().file.as_deref(),
        Some("/tmp/lw/t.js")
    );
    assert!(text[d.start..].starts_with("/tmp/lw/t.js:2\n"));

    let d = death("node_reject.txt");
    assert_eq!(
        (d.message.as_str(), d.frames[0].file.as_deref()),
        ("async boom", Some("[eval]"))
    );
    assert!(d.explains_exit(1));

    let d = recognise("<--- Last few GCs --->\n\n[1:0x1]   100 ms: Mark-Compact\n\nFATAL ERROR: Reached heap limit Allocation failed - JavaScript heap out of memory\n").unwrap();
    assert_eq!((d.runtime, d.reason, d.start), ("node", "out_of_memory", 0));
}

/// The JVM's banner as it reached stdout, and as the kernel keeps it (from its second line).
#[test]
fn jvm_fatal_error_banner() {
    let text = data("jvm_fatal.txt");
    for t in [text.as_str(), text.strip_prefix("#\n").unwrap()] {
        let d = recognise(t).expect("the banner");
        assert_eq!((d.runtime, d.reason), ("java", "fatal_error"));
        assert_eq!(
            d.headline,
            "SIGSEGV (0xb) at pc=0x00007f82600d2f94, pid=17899, tid=17902"
        );
        assert_eq!(
            func(&d.frames[0]),
            "V  [libjvm.so+0xed2f94]  Unsafe_PutLong+0x124"
        );
        assert!(d.explains_exit(1) && !d.explains_exit(2));
    }
}

#[test]
fn java_exceptions_keep_their_causes() {
    let d = death("java_exc.txt");
    assert_eq!((d.runtime, d.reason), ("java", "uncaught_exception"));
    assert_eq!(d.thread.as_deref(), Some("main"));
    assert_eq!(
        d.error_type.as_deref(),
        Some("java.lang.IllegalStateException")
    );
    assert_eq!(d.message, "config broken");
    assert_eq!(
        (
            func(&d.frames[0]),
            d.frames[0].file.as_deref(),
            d.frames[0].line
        ),
        ("Main.load", Some("Main.java"), Some(4))
    );
    assert_eq!(d.chain.len(), 2);
    assert_eq!(d.chain[1].relation, Some("caused_by"));
    assert_eq!(d.chain[1].message, "For input string: \"x1\"");
    assert_eq!(func(&d.chain[1].frames[3]), "Main.parse");
    assert!(d.explains_exit(1));
}

#[test]
fn c_and_cpp_library_messages() {
    let d = death("cc_terminate.txt");
    assert_eq!((d.runtime, d.reason), ("c++", "uncaught_exception"));
    assert_eq!(
        (d.error_type.as_deref(), d.message.as_str()),
        (Some("std::runtime_error"), "config broken")
    );
    let d = death("c_assert.txt");
    assert_eq!(
        (d.runtime, d.reason, d.message.as_str()),
        ("glibc", "assertion", "x == 1")
    );
    let loc = d.location.unwrap();
    assert_eq!(
        (loc.file.as_deref(), loc.line, loc.function.as_deref()),
        (Some("t.cc"), Some(8), Some("int main(int, char**)"))
    );
    let d = death("c_dfree.txt");
    assert_eq!(
        (d.reason, d.headline.as_str()),
        (
            "heap_corruption",
            "free(): double free detected in tcache 2"
        )
    );
    let d = recognise("*** stack smashing detected ***: terminated\n").unwrap();
    assert_eq!(
        (d.reason, d.message.as_str()),
        ("stack_smashing", "stack smashing detected")
    );
    let text = data("c_asan.txt");
    let d = recognise(&text).unwrap();
    assert_eq!(
        (d.runtime, d.error_type.as_deref()),
        ("sanitizer", Some("heap-buffer-overflow"))
    );
    assert_eq!(
        (
            func(&d.frames[0]),
            d.frames[0].file.as_deref(),
            d.frames[0].line
        ),
        ("main", Some("/tmp/lw/asan.c"), Some(2))
    );
    assert_eq!(d.frames.len(), 4);
    assert!(text[d.start..].starts_with("====="));
    assert!(d.explains_exit(1));
}

#[test]
fn ordinary_output_is_no_death() {
    for text in [
        "",
        "usage: tool [-h] FILE\ntool: error: the following arguments are required: FILE\n",
        "INFO: started\nWARNING: disk 91% full\n",
        "grep: x: No such file or directory\n",
        "Error: something\n", // a bare error line without Node's frames
    ] {
        assert_eq!(recognise(text), None, "{text:?}");
    }
}

#[test]
fn the_last_death_wins_and_its_exit_must_match() {
    // A handled traceback logged early, then the panic that killed the process.
    let text = format!(
        "{}\nserving\n{}",
        data("py_chained.txt"),
        data("rust_main_nobt.txt")
    );
    let d = recognise(&text).unwrap();
    assert_eq!(d.runtime, "rust");
    // A program that prints a traceback and exits 0, or 1 for its own reasons.
    let d = death("py_chained.txt");
    assert!(!d.explains_exit(0) && !d.explains_exit(2));
    // A log line after the exception is not part of it.
    let d = recognise(&format!("{}INFO: shutting down\n", data("py_during.txt"))).unwrap();
    assert_eq!(d.chain.len(), 2);
}

/// Every prefix of every real output, and the outputs with bytes changed: no panic, and a
/// result within the caps.
#[test]
fn truncated_and_mangled_outputs_never_panic() {
    let dir = format!("{}/src/read/parse/testdata", env!("CARGO_MANIFEST_DIR"));
    let mut seed = 0x9e3779b97f4a7c15u64;
    for e in std::fs::read_dir(dir).unwrap() {
        let text = std::fs::read_to_string(e.unwrap().path()).unwrap();
        for (i, _) in text.char_indices() {
            check(&text[..i]);
        }
        let mut bytes = text.into_bytes();
        for _ in 0..2000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let at = seed as usize % bytes.len();
            bytes[at] = b"\n \t:'\"()#=|+-0aZ"[(seed >> 32) as usize % 16];
            check(&String::from_utf8_lossy(&bytes));
        }
    }
}

fn check(text: &str) {
    if let Some(d) = recognise(text) {
        assert!(d.frames.len() <= MAX_FRAMES && d.chain.len() <= MAX_CHAIN);
        assert!(d.message.len() <= MAX_TEXT + 3 && d.headline.len() <= MAX_TEXT + 3);
        assert!(d.start <= text.len());
    }
}

/// Megabytes of text built to make a naive parser quadratic: headers without ends, chains
/// without tracebacks, frames without errors. One pass each; the caps hold.
#[test]
fn megabytes_of_hostile_text_stay_bounded() {
    let many = |unit: &str| unit.repeat((4 << 20) / unit.len());
    for text in [
        many("Traceback (most recent call last):\n"),
        many("The above exception was the direct cause of the following exception:\n\nTraceback (most recent call last):\nE: x\n\n"),
        many("  File \"x\", line 1, in f\n"),
        many("    at f (x.js:1:2)\n"),
        many("\tat a.B.c(B.java:1)\nCaused by: x.Y: z\n"),
        many("panic: x\n\tpanic: y\n"),
        many("thread 'main' panicked at x.rs:1:1:\n"),
        many("==1==ERROR: AddressSanitizer: x\n    #0 0x1 in f x.c:1\n"),
        format!("Exception in thread \"main\" x.Y: z\n{}", many("\tat a.B.c(B.java:1)\n")),
        format!("thread 'main' panicked at x.rs:1:1:\n{}", many("m")),
    ] {
        check(&text);
    }
}
