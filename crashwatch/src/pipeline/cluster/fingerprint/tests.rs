//! The grouping v1 promises, pinned: what must group and what must not.
use super::*;
use crate::{
    model::frame::Frame,
    model::report::{GoInfo, SignalInfo},
    read::parse::{self, Death},
};

fn frame(function: &str, module: &str, ip: u64) -> Frame {
    Frame {
        ip,
        module: Some(module.into()),
        offset: Some(ip & 0xfffff),
        function: (!function.is_empty()).then(|| function.into()),
        found_by: "cfi",
        ..Frame::default()
    }
}

fn segv(pid: u32, addr: u64, base: u64, stack: &[&str]) -> Report {
    Report {
        kind: "signal",
        pid,
        comm: "api".into(),
        exe: Some("/usr/local/bin/api".into()),
        cgroup: Some(format!("/libpod_parent/libpod-{pid:064x}")),
        signal: Some(SignalInfo {
            number: 11,
            name: "SIGSEGV".into(),
            code: 1,
            code_name: Some("SEGV_MAPERR"),
            addr: Some(addr),
            sender: None,
            ip: Some(base + 0x1234),
            sp: None,
            handled: false,
            registers: Default::default(),
        }),
        stack: stack
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let module = if f.starts_with("__libc") || *f == "abort" {
                    "/usr/lib/x86_64-linux-gnu/libc.so.6"
                } else {
                    "/usr/local/bin/api"
                };
                frame(f, module, base + 0x100 * i as u64)
            })
            .collect(),
        ..Report::default()
    }
}

fn go_panic(value: &str, ptype: &str, stack: &[&str], revision: &str) -> Report {
    Report {
        kind: "go_panic",
        pid: 4242,
        exe: Some("/app/server".into()),
        go: Some(GoInfo {
            panic_value: Some(value.into()),
            panic_type: Some(ptype.into()),
            build: Some(crate::read::gobin::BuildInfo {
                path: Some("example.com/shop/cmd/server".into()),
                vcs_revision: Some(revision.into()),
                ..Default::default()
            }),
            ..GoInfo::default()
        }),
        stack: stack
            .iter()
            .enumerate()
            .map(|(i, f)| frame(f, "/app/server", 0x401000 + 0x40 * i as u64))
            .collect(),
        ..Report::default()
    }
}

fn python(error_type: &str, message: &str, frames: &[(&str, &str)]) -> Report {
    Report {
        kind: "runtime_error",
        exe: Some("/usr/bin/python3.11".into()),
        error: Some(Death {
            runtime: "python",
            reason: "uncaught_exception",
            error_type: Some(error_type.into()),
            message: message.into(),
            frames: frames
                .iter()
                .map(|(func, file)| parse::Frame {
                    function: Some(func.to_string()),
                    file: Some(file.to_string()),
                    line: Some(10),
                    column: None,
                })
                .collect(),
            ..Death::default()
        }),
        ..Report::default()
    }
}

fn fp(r: &Report) -> String {
    fingerprint(r).value
}

#[test]
fn the_same_bug_groups_across_pids_addresses_builds_and_containers() {
    let a = segv(
        100,
        0x10,
        0x5500_0000_0000,
        &["null_write", "handle", "main"],
    );
    let b = segv(
        2000,
        0x7fff_0010,
        0x5611_2233_0000,
        &["null_write", "handle", "main"],
    );
    assert_eq!(fp(&a), fp(&b));
    let old = go_panic("boom", "string", &["main.handler", "main.main"], "1111");
    let new = go_panic("boom", "string", &["main.handler", "main.main"], "2222");
    assert_eq!(fp(&old), fp(&new));
}

#[test]
fn numbers_in_a_message_do_not_split_a_site() {
    let a = go_panic(
        "runtime error: index out of range [5] with length 3",
        "runtime.boundsError",
        &["runtime.goPanicIndex", "main.lookup", "main.main"],
        "1",
    );
    let b = go_panic(
        "runtime error: index out of range [7] with length 4",
        "runtime.boundsError",
        &["runtime.goPanicIndex", "main.lookup", "main.main"],
        "1",
    );
    assert_eq!(fp(&a), fp(&b));
    let a = python(
        "KeyError",
        "'user-17'",
        &[("<module>", "/srv/app.py"), ("get", "/srv/db.py")],
    );
    let b = python(
        "KeyError",
        "'user-99'",
        &[("<module>", "/srv/app.py"), ("get", "/srv/db.py")],
    );
    assert_eq!(fp(&a), fp(&b));
}

#[test]
fn different_sites_errors_signals_and_types_do_not_group() {
    let base = go_panic("boom", "string", &["main.handler", "main.main"], "1");
    let other_site = go_panic("boom", "string", &["main.worker", "main.main"], "1");
    let other_type = go_panic(
        "boom",
        "*errors.errorString",
        &["main.handler", "main.main"],
        "1",
    );
    let other_msg = go_panic("bang", "string", &["main.handler", "main.main"], "1");
    let mut fatal = base.clone();
    fatal.kind = "go_fatal";
    fatal.go.as_mut().unwrap().fatal_message = Some("concurrent map writes".into());
    let mut deadlock = fatal.clone();
    deadlock.go.as_mut().unwrap().fatal_message =
        Some("all goroutines are asleep - deadlock!".into());
    let all = [
        &base,
        &other_site,
        &other_type,
        &other_msg,
        &fatal,
        &deadlock,
    ];
    for (i, a) in all.iter().enumerate() {
        for b in &all[i + 1..] {
            assert_ne!(
                fp(a),
                fp(b),
                "{:?}\n{:?}",
                fingerprint(a).basis,
                fingerprint(b).basis
            );
        }
    }
    let segv_ = segv(1, 0, 0x1000, &["null_write", "main"]);
    let mut bus = segv_.clone();
    bus.signal.as_mut().unwrap().name = "SIGBUS".into();
    assert_ne!(fp(&segv_), fp(&bus));
    let v = python("ValueError", "bad", &[("<module>", "/srv/app.py")]);
    let k = python("KeyError", "bad", &[("<module>", "/srv/app.py")]);
    assert_ne!(fp(&v), fp(&k));
    // Same function name in another script is another bug.
    let other_file = python("ValueError", "bad", &[("<module>", "/srv/other.py")]);
    assert_ne!(fp(&v), fp(&other_file));
}

#[test]
fn crash_machinery_and_system_libraries_are_skipped() {
    let r = segv(
        1,
        0,
        0x1000,
        &[
            "abort",
            "__libc_message_impl",
            "app_check",
            "app_main",
            "main",
            "__libc_start_call_main",
        ],
    );
    let f = fingerprint(&r);
    let frames: Vec<&str> = f
        .basis
        .iter()
        .filter_map(|l| l.strip_prefix("frame:"))
        .collect();
    assert_eq!(frames, ["app_check", "app_main", "main"]);
    let g = go_panic(
        "x",
        "string",
        &[
            "runtime.gopanic",
            "runtime.sigpanic",
            "main.(*Server).handle",
            "main.main",
        ],
        "1",
    );
    let frames: Vec<String> = fingerprint(&g)
        .basis
        .into_iter()
        .filter_map(|l| l.strip_prefix("frame:").map(str::to_string))
        .collect();
    assert_eq!(frames, ["main.(*Server).handle", "main.main"]);
}

#[test]
fn unnamed_frames_count_as_module_and_offset() {
    let r = segv(1, 0, 0x1000, &["", "main"]);
    let f = fingerprint(&r);
    assert!(
        f.basis.contains(&"frame:api+0x1000".to_string()),
        "{:?}",
        f.basis
    );
}

#[test]
fn function_names_are_cleaned() {
    for (raw, clean_) in [
        (
            "core::option::unwrap_failed::h0123456789abcdef",
            "core::option::unwrap_failed",
        ),
        ("app::handler::h5f3a0b1c2d3e4f5a", "app::handler"),
        ("parse_config.cold", "parse_config"),
        ("compute.isra.0", "compute"),
        ("compute.part.1.constprop.0", "compute"),
        ("Foo::bar(int, char const*) const", "Foo::bar"),
        (
            "std::vector<int, std::allocator<int> >::at(unsigned long)",
            "std::vector::at",
        ),
        ("main.Map[go.shape.int,go.shape.string]", "main.Map"),
        ("main.(*T).Method", "main.(*T).Method"),
        ("main.main.func1", "main.main.func1"),
        ("<module>", "<module>"),
        (
            "<alloc::vec::Vec<T> as core::ops::drop::Drop>::drop",
            "<alloc::vec::Vec as core::ops::drop::Drop>::drop",
        ),
    ] {
        assert_eq!(clean(raw), clean_, "{raw}");
    }
}

#[test]
fn messages_are_masked() {
    for (raw, masked) in [
        (
            "index out of range [5] with length 3",
            "index out of range [<num>] with length <num>",
        ),
        (
            "dial tcp 10.0.0.7:5432: i/o timeout",
            "dial tcp <num>.<num>:<num>: i/o timeout",
        ),
        ("timeout after 30s", "timeout after <duration>"),
        (
            "took 1.5ms then 2h45m0.5s",
            "took <duration> then <duration>",
        ),
        ("nil pointer at 0xc000123456", "nil pointer at <hex>"),
        ("object 3f2a9b1c4d missing", "object <hex> missing"),
        ("user 'alice' not found", "user <str> not found"),
        ("key \"k-17\" missing", "key <str> missing"),
        (
            "request 0b7c5a0e-2f4d-4c8e-9a61-5d3e7f9b1c24 failed",
            "request <uuid> failed",
        ),
        (
            "utf8 decode of x86_64 worker-7",
            "utf8 decode of x86_64 worker-<num>",
        ),
        ("deadbeef is a word", "deadbeef is a word"),
        ("unterminated 'quote", "unterminated 'quote"),
    ] {
        assert_eq!(mask(raw), masked, "{raw}");
    }
}

#[test]
fn hostile_input_is_bounded() {
    let long = "9".repeat(1 << 20) + &"'x".repeat(1 << 16);
    assert!(mask(&long).chars().count() <= MESSAGE_MAX);
    for raw in [
        "(((", ")))", "<<<", ">>>", "[[", "]]", "a(b", "::h", ".cold", "", "0x", "'",
    ] {
        let _ = clean(raw);
        let _ = mask(raw);
    }
}

#[test]
fn v1_values_never_change() {
    // A changed value here is a changed v1: bump VERSION and document v2 instead.
    let r = go_panic("boom", "string", &["main.handler", "main.main"], "1");
    assert_eq!(
        fingerprint(&r).basis,
        [
            "kind:go_panic",
            "go_panic:string/boom",
            "frame:main.handler",
            "frame:main.main",
            "program:example.com/shop/cmd/server"
        ]
    );
    assert_eq!(fp(&r), PINNED);
}

/// FNV-1a 64 of the basis above joined with newlines, computed apart from this code.
const PINNED: &str = "v1:390b72ff74e91550";
