//! A report with every part filled, written, read back ([`crate::model::readback`]) and shown
//! ([`super::pretty`]): every field survives. Here, above the model, because the filling
//! uses the parsers and the showing is an output.
use std::collections::BTreeMap;

use crate::{
    model::cluster::{ClusterInfo, Regression},
    model::container::{ContainerInfo, K8sInfo, Runtime},
    model::frame::Frame,
    model::report::{
        DumpInfo, ExitInfo, GoInfo, LastWordsInfo, OomInfo, Report, Sender, SignalInfo,
        TerminationInfo, ThreadInfo,
    },
};

const GO: &str = "panic: boom [recovered]\n\tpanic: again\n\ngoroutine 7 [running]:\nmain.handle(0x1)\n\t/src/app/main.go:12 +0x1d\nmain.main()\n\t/src/app/main.go:30 +0x25\nexit status 2\n";
const PYTHON: &str = "Traceback (most recent call last):\n  File \"/app/job.py\", line 3, in load\n    int(x)\nValueError: invalid literal for int() with base 10: 'x1'\n\nThe above exception was the direct cause of the following exception:\n\nTraceback (most recent call last):\n  File \"/app/job.py\", line 8, in <module>\n    load()\nRuntimeError: config broken\n";

/// A report with every part filled, as the agent would write one.
fn full() -> Report {
    let mut registers = BTreeMap::new();
    registers.insert("rip".to_string(), "0x55b3b86fa326".to_string());
    registers.insert("rsp".to_string(), "0x7ffd82960240".to_string());
    let tb = crate::read::parse::go::parse(GO);
    Report {
        time: "2026-12-02T09:13:23.831164Z".into(),
        host: "node-1".into(),
        kind: "signal",
        pid: 2774,
        tid: 2775,
        ppid: 1,
        uid: 1000,
        start_time_ns: 81_023_000_000,
        boot_id: "5d2b7c1e-8a41-4a8e-9d4c-3f1f0e6a7b90".into(),
        comm: "api\u{1b}[2J".into(),
        exe: Some("/srv/api".into()),
        cmdline: vec!["/srv/api".into(), "--port".into(), "80".into()],
        cmdline_truncated: true,
        cgroup: Some("/libpod_parent/libpod-97".into()),
        container: Some(ContainerInfo {
            id: "975997247e74".into(),
            runtime: Runtime::CriO,
            name: Some("api".into()),
            image: Some("localhost/shop/api:1.4".into()),
        }),
        k8s: Some(K8sInfo {
            namespace: Some("shop".into()),
            pod: Some("checkout-7d9f6".into()),
            pod_uid: None,
            container: Some("api".into()),
            node: "node-1".into(),
        }),
        signal: Some(SignalInfo {
            number: 11,
            name: "SIGSEGV".into(),
            code: 1,
            code_name: Some("SEGV_MAPERR"),
            addr: Some(0x10),
            sender: Some(Sender { pid: 9, uid: 0 }),
            ip: Some(0x55b3b86fa326),
            sp: None,
            handled: true,
            registers: registers.clone(),
        }),
        exit: ExitInfo::from_status(11 | 0x80),
        go: Some(GoInfo {
            version: Some("go1.25.5".into()),
            panic_value: Some("again".into()),
            panic_type: Some("string".into()),
            fatal_message: None,
            goroutine: Some(7),
            stderr: GO.into(),
            stderr_bytes: 4096,
            stderr_truncated: true,
            goroutines: tb.goroutines,
            build: Some(crate::model::go::BuildInfo {
                path: Some("example.com/api".into()),
                vcs_revision: Some("0123456789abcdef".into()),
                vcs_modified: Some(false),
                ..Default::default()
            }),
            registers,
        }),
        stack: vec![
            Frame {
                ip: 0x55b3b86fa326,
                module: Some("/srv/api".into()),
                build_id: Some("ab12".into()),
                offset: Some(0x1326),
                function: Some("null_write".into()),
                function_offset: Some(6),
                file: Some("/src/crasher.c".into()),
                line: Some(21),
                inlined: true,
                found_by: "cfi",
                reason: None,
            },
            Frame {
                ip: 0x7ff13d7a724a,
                module: Some("/usr/lib/libc.so.6".into()),
                found_by: "fp",
                reason: Some("no symbols".into()),
                ..Default::default()
            },
        ],
        error: crate::read::parse::recognise(PYTHON),
        last_words: Some(LastWordsInfo {
            text: PYTHON.into(),
            bytes: 300,
            truncated: false,
            unreadable: 16,
        }),
        fingerprint: "v1:529f4a1563636c99".into(),
        cluster: Some(ClusterInfo {
            id: 4,
            count: 6,
            first_seen: "2026-12-01T00:00:00Z".into(),
            last_seen: "2026-12-02T09:13:23Z".into(),
            new: false,
            looping: true,
            recent: 5,
            window_secs: 600,
            regression: Some(Regression {
                program: "api".into(),
                revision: "0123456789abcdef".into(),
                revision_first_seen: "2026-12-01T00:00:00Z".into(),
                previous: "fedcba".into(),
            }),
        }),
        // Never both in one report; here to be read back.
        oom: Some(OomInfo {
            constraint: Some("cgroup"),
            cgroup: Some("/kubepods/pod1".into()),
            limit_bytes: Some(64 << 20),
            usage_bytes: Some(64 << 20),
            rss_anon_bytes: Some(60 << 20),
            rss_file_bytes: None,
            rss_shmem_bytes: Some(0),
            swap_bytes: Some(0),
            oom_score_adj: Some(-998),
        }),
        termination: Some(TerminationInfo {
            after: Some("SIGTERM".into()),
            after_secs: Some(30.5),
            grace_expired: true,
        }),
        lost_before: 3,
        report_error: Some("reading the maps: gone".into()),
        threads: vec![
            ThreadInfo {
                tid: 2775,
                name: Some("worker\u{7}".into()),
                crashed: true,
                state: "running".into(),
                registers: BTreeMap::from([("ip".to_string(), "0x55b3b86fa326".to_string())]),
                stack: vec![Frame {
                    ip: 0x55b3b86fa326,
                    function: Some("null_write".into()),
                    found_by: "cfi",
                    ..Default::default()
                }],
                reason: None,
            },
            ThreadInfo {
                tid: 2774,
                name: None,
                crashed: false,
                state: "in syscall futex".into(),
                registers: BTreeMap::new(),
                stack: Vec::new(),
                reason: Some("its stack was not in the dump".into()),
            },
        ],
        dump: Some(DumpInfo {
            bytes: 59 << 20,
            held_ms: 28,
            cut: Some("1 threads' stacks not kept".into()),
            minidump: Some("/var/lib/crashwatch/dumps/2774-81023000000.dmp".into()),
            minidump_missing: None,
            core: Some("/var/lib/crashwatch/dumps/2774-81023000000.core.zst".into()),
            core_bytes: 3 << 20,
            core_missing: None,
            root: Some("/var/lib/containers/storage/overlay/4f1c/merged".into()),
            python: Some(crate::model::report::PythonInfo {
                version: "3.11".into(),
                threads: 2,
                cut: Some("frames past 128 not read".into()),
            }),
            images: vec![crate::model::report::ImageInfo {
                path: "/srv/api".into(),
                base: 0x55b3b86f9000,
                size: 0x5000,
                build_id: Some("ab12".into()),
            }],
        }),
    }
}

#[test]
fn a_report_reads_back_whole() {
    let r = full();
    assert!(r.error.as_ref().is_some_and(|e| e.chain.len() == 2));
    assert!(r.go.as_ref().is_some_and(|g| !g.goroutines.is_empty()));
    let json = serde_json::to_string(&r).unwrap();
    let back = Report::from_json(&json).unwrap();
    assert_eq!(
        serde_json::to_value(&back).unwrap(),
        serde_json::to_value(&r).unwrap(),
        "every field survives the round trip"
    );
    assert_eq!(
        crate::outputs::pretty(&back, false),
        crate::outputs::pretty(&r, false)
    );
    // The other threads one line each, escaped; in full with `--threads`.
    let text = crate::outputs::pretty(&r, false);
    assert!(
        text.contains(
            "threads (2 from the core dump, 59 MiB, held 28 ms; cut: 1 threads' stacks not kept)"
        ),
        "{text}"
    );
    assert!(text.contains("worker\\x07"), "{text}");
    assert!(text.contains("crashed: its stack is above"), "{text}");
    assert!(text.contains("its stack was not in the dump"), "{text}");
    let all = crate::outputs::pretty::pretty_with(&r, false, true);
    assert!(all.contains("      #0  0x55b3b86fa326 null_write"), "{all}");
}

#[test]
fn a_report_of_another_build_reads_with_what_it_has() {
    // An older agent's report lacks fields; a newer one's has fields this build does not
    // know. Both read; what is missing takes its empty value.
    let mut v = serde_json::to_value(full()).unwrap();
    let o = v.as_object_mut().unwrap();
    for k in ["lost_before", "stack", "cmdline_truncated", "last_words"] {
        o.remove(k);
    }
    o.insert("from_the_future".into(), serde_json::json!({ "x": 1 }));
    let back = Report::from_json(&v.to_string()).unwrap();
    assert_eq!(back.lost_before, 0);
    assert!(back.stack.is_empty() && back.last_words.is_none());
    assert_eq!(back.kind, "signal");
    assert!(Report::from_json("{\"stack\": [{\"ip\": \"0xzz\"}]}").is_err());
}
