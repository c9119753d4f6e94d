use super::*;

const PANIC: &str = "panic: boom: in a goroutine\n\ngoroutine 18 [running]:\nmain.main.func2()\n\t/src/main.go:88 +0x65\ncreated by main.main in goroutine 1\n\t/src/main.go:86 +0x2c5\n\ngoroutine 1 [chan receive]:\nmain.main()\n\t/src/main.go:90 +0x2e5\n";
const PY: &str = "Traceback (most recent call last):\n  File \"/app/job.py\", line 3, in <module>\n    run()\n  File \"/app/job.py\", line 2, in run\n    raise ValueError('bad row 17')\nValueError: bad row 17\n";

fn analyze(inputs: &[(&str, Vec<u8>)], program: Option<&str>) -> Analysis {
    let mut a = Analyzer::new(Options {
        format: None,
        program: program.map(str::to_string),
        max_listed: 100,
    });
    for (name, bytes) in inputs {
        a.read(name, &bytes[..]);
    }
    a.finish()
}

/// `text` as the lines of a log in `format`, with an unrelated stdout line between each.
fn wrap(format: Format, text: &str) -> String {
    let mut out = String::new();
    for (i, l) in text.lines().enumerate() {
        let t = format!("2026-12-03T07:00:{:02}.000000001Z", i % 60);
        match format {
            Format::Plain => {
                out.push_str(l);
                out.push('\n');
            }
            Format::Cri => {
                // Long lines in two parts, as the kubelet splits them.
                let (a, b) = l.split_at(l.len() / 2);
                out.push_str(&format!("{t} stdout F request {i} ok\n"));
                out.push_str(&format!("{t} stderr P {a}\n{t} stderr F {b}\n"));
            }
            Format::Docker => {
                let j = |s: &str, stream: &str| {
                    serde_json::json!({"log": s, "stream": stream, "time": t}).to_string()
                };
                out.push_str(&j(&format!("request {i} ok\n"), "stdout"));
                out.push('\n');
                out.push_str(&j(&format!("{l}\n"), "stderr"));
                out.push('\n');
            }
            Format::Journal => {
                let j = |s: &str, pid: &str| {
                    serde_json::json!({"__CURSOR": format!("s={i}"), "MESSAGE": s, "_PID": pid})
                        .to_string()
                };
                out.push_str(&j(&format!("other {i}"), "99"));
                out.push('\n');
                out.push_str(&j(l, "7"));
                out.push('\n');
            }
        }
    }
    out
}

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut e, b).unwrap();
    e.finish().unwrap()
}

#[test]
fn every_format_gives_the_same_crashes_and_clusters() {
    let text = format!("start\n{PANIC}exit status 2\nrestarted\n{PANIC}{PY}done\n");
    let plain = analyze(&[("p", text.clone().into_bytes())], Some("example.com/app"));
    assert_eq!(plain.crashes_found, 3);
    let ranges: Vec<(u64, u64)> = plain
        .crashes
        .iter()
        .map(|c| (c.first_line, c.last_line))
        .collect();
    assert_eq!(ranges, [(2, 13), (15, 25), (26, 31)]);
    assert_eq!(plain.clusters.len(), 2);
    assert_eq!(plain.clusters[0].count, 2);
    assert_eq!(plain.crashes[0].kind, "go_panic");
    assert_eq!(plain.crashes[2].kind, "runtime_error");
    assert_eq!(plain.crashes[2].error.message, "bad row 17");
    assert_eq!(
        plain.crashes[0].top_frame,
        "main.main.func2 (/src/main.go:88)"
    );
    for format in [Format::Cri, Format::Docker, Format::Journal] {
        let log = wrap(format, &text);
        for (name, bytes) in [
            ("log", log.clone().into_bytes()),
            ("log.gz", gzip(log.as_bytes())),
        ] {
            let a = analyze(&[(name, bytes)], Some("example.com/app"));
            assert_eq!(a.inputs[0].format, Some(format), "{name}");
            assert_eq!(a.inputs[0].gzip, name.ends_with(".gz"));
            assert_eq!(a.crashes_found, 3, "{format:?} {name}");
            for (c, p) in a.crashes.iter().zip(&plain.crashes) {
                assert_eq!(c.fingerprint, p.fingerprint, "{format:?}");
                assert_eq!(c.error.message, p.error.message, "{format:?}");
                assert!(c.stream == "stderr" || c.stream == "7", "{format:?}");
                assert!(c.first_line < c.last_line, "{format:?}");
            }
            assert_eq!(a.inputs[0].foreign_records, 0);
        }
    }
}

#[test]
fn the_program_name_is_what_ties_clusters_to_the_agents() {
    let with = analyze(&[("p", PANIC.into())], Some("example.com/app"));
    let other = analyze(&[("p", PANIC.into())], Some("example.com/other"));
    assert_ne!(with.crashes[0].fingerprint, other.crashes[0].fingerprint);
    // The fingerprint of the report the agent builds: program from the Go build info.
    let r = Report {
        kind: "go_panic",
        error: parse::recognise(PANIC),
        go: Some(crate::model::report::GoInfo {
            build: Some(crate::read::gobin::BuildInfo {
                path: Some("example.com/app".into()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    assert_eq!(
        with.crashes[0].fingerprint,
        fingerprint::fingerprint(&r).value
    );
}

#[test]
fn nothing_found_exits_zero_and_an_unreadable_input_two() {
    let a = analyze(
        &[("p", b"all good\npanicking is fine here\n".to_vec())],
        None,
    );
    assert_eq!((a.crashes_found, a.exit_code()), (0, 0));
    let found = analyze(&[("p", PY.into())], None);
    assert_eq!(found.exit_code(), 1);
    let mut an = Analyzer::new(Options {
        format: None,
        program: None,
        max_listed: 1,
    });
    an.failed("missing", "opening missing: not found");
    an.read("p", PY.as_bytes());
    an.read("q", PY.as_bytes());
    let a = an.finish();
    assert_eq!(a.exit_code(), 2);
    assert_eq!((a.crashes.len(), a.crashes_not_listed), (1, 1));
    assert_eq!(a.clusters[0].count, 2);
}

#[test]
fn overlong_lines_are_cut_not_held() {
    let mut log = vec![b'x'; 5 * MAX_LINE];
    log.push(b'\n');
    log.extend_from_slice(PY.as_bytes());
    let a = analyze(&[("p", log)], None);
    assert_eq!(a.inputs[0].bytes_cut, 3 * MAX_LINE as u64);
    assert_eq!(a.crashes_found, 1);
    assert_eq!(a.crashes[0].first_line, 2);
}

#[test]
fn gctrace_lines_become_runs() {
    let mut log = String::new();
    for n in 1..=50 {
        log.push_str(&format!("gc {n} @{}.5s 3%: 0.01+0.5+0.02 ms clock, 0.04+0.1/0.2/0.3+0.05 ms cpu, 4->6->{} MB, 8 MB goal, 0 MB stacks, 0 MB globals, 2 P\n", n, n));
    }
    let a = analyze(&[("g", log.into_bytes())], None);
    assert_eq!(a.gc.len(), 1);
    let r = &a.gc[0];
    assert_eq!((r.collections, r.first_line, r.last_line), (50, 1, 50));
    assert_eq!((r.heap_live_first_mb, r.heap_live_last_mb), (1.0, 50.0));
    assert!((r.pause_max_ms - 0.03).abs() < 1e-9);
    assert_eq!(a.exit_code(), 0);
}

/// The prefilter passes over lines without changing what is found: every testdata crash text
/// between runs of ordinary lines (crossing the read buffer's bounds at odd places), a
/// gctrace line, CRLF lines and one longer than the buffer, read both ways.
#[test]
fn passing_over_ordinary_lines_finds_what_reading_every_line_finds() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/read/parse/testdata");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    let mut log = Vec::new();
    for (n, f) in files.iter().enumerate() {
        for k in 0..(1_000 + 337 * n) {
            log.extend_from_slice(
                format!("level=info caller=server.go:212 msg=\"served\" path=/items/{k}\n")
                    .as_bytes(),
            );
        }
        if n % 5 == 0 {
            log.extend_from_slice(b"gc 7 @0.512s 2%: 0.01+1.2+0.02 ms clock, 0.04+0.1/0.9/1.1+0.08 ms cpu, 4->4->2 MB, 5 MB goal, 0 MB stacks, 0 MB globals, 4 P\n");
            log.extend_from_slice(b"a windows line\r\n");
        }
        if n == 3 {
            log.extend_from_slice(&vec![b'x'; 300 << 10]);
            log.push(b'\n');
        }
        log.extend_from_slice(&std::fs::read(f).unwrap());
        if log.last() != Some(&b'\n') {
            log.push(b'\n');
        }
    }
    let run = |a: Analyzer| {
        let mut a = a;
        a.read("log", &log[..]);
        let done = a.finish();
        serde_json::to_value(&done).unwrap()
    };
    let opts = || Options {
        format: None,
        program: None,
        max_listed: 1000,
    };
    let fast = run(Analyzer::new(opts()));
    let slow = run(Analyzer::new(opts()).line_by_line());
    assert!(fast["crashes_found"].as_u64().unwrap() >= 15, "{fast:#}");
    assert_eq!(fast["inputs"][0]["format"], "plain");
    assert!(
        fast["gc"].as_array().is_some_and(|g| !g.is_empty()),
        "{:#}",
        fast["gc"]
    );
    assert_eq!(fast, slow);
}
