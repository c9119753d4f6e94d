//! A report as a Sentry event (`--sentry-dsn`), in an envelope for Sentry's envelope endpoint,
//! built with the protocol's own types (`sentry-types`). Delivered by the webhook machinery
//! ([`super::webhook`]): spooled, retried, Sentry's 429 and `X-Sentry-Rate-Limits` honoured.
//!
//! - A signal death is platform `native`: the exception is the signal (mechanism
//!   `signalhandler` with the signal's number, code and names), its stack the crash's with the
//!   registers; every thread of a dump; the dump's images in `debug_meta` (code id the GNU
//!   build id, debug id derived from it as Breakpad and Sentry derive it), so Sentry can
//!   symbolicate what the agent could not; the minidump as an `event.minidump` attachment.
//! - A runtime's death is its platform: a Python exception with Python frames, a Go panic with
//!   the panicking goroutine's frames, and so on for the runtimes `error` names.
//! - Tags: kind, node, namespace, pod, workload, container, image, crashwatch's fingerprint;
//!   release: the Go build's revision. The event id is made from the report's idempotency key:
//!   a report sent twice is one event.
//!
//! The report was redacted before it got here; the command line is not sent.
use std::{borrow::Cow, collections::BTreeMap};

use sentry_types::protocol::v7 as s;

use crate::model::report::{Report, ThreadInfo};

/// The minidump attached at most (Sentry's own limit for one is far above).
const MINIDUMP_MAX: u64 = 32 << 20;

/// The envelope's bytes for one report.
pub fn envelope(r: &Report) -> Vec<u8> {
    let mut env = s::Envelope::new();
    env.add_item(event(r));
    if let Some(bytes) = minidump(r) {
        env.add_item(s::Attachment {
            buffer: bytes,
            filename: "minidump.dmp".into(),
            content_type: Some("application/octet-stream".into()),
            ty: Some(s::AttachmentType::Minidump),
        });
    }
    let mut out = Vec::new();
    let _ = env.to_writer(&mut out);
    out
}

/// `crashwatch check --sinks`: one info-level message event saying where crashes come from.
pub fn check_envelope(host: &str) -> Vec<u8> {
    let mut env = s::Envelope::new();
    env.add_item(s::Event {
        level: s::Level::Info,
        message: Some(format!("crashwatch check: {host} sends its crashes here")),
        server_name: Some(Cow::Owned(host.to_string())),
        ..Default::default()
    });
    let mut out = Vec::new();
    let _ = env.to_writer(&mut out);
    out
}

fn minidump(r: &Report) -> Option<Vec<u8>> {
    use std::io::Read;
    let path = r.dump.as_ref()?.minidump.as_ref()?;
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .ok()?
        .take(MINIDUMP_MAX)
        .read_to_end(&mut bytes)
        .ok()?;
    Some(bytes)
}

pub fn event(r: &Report) -> s::Event<'static> {
    let key = super::webhook::idempotency_key(r);
    let id = uuid_of(&key);
    let (platform, exception) = match &r.error {
        Some(d) if r.signal.is_none() || r.kind.starts_with("go_") || r.kind == "runtime_error" => {
            runtime(r, d)
        }
        _ => ("native", native(r)),
    };
    s::Event {
        event_id: id,
        level: s::Level::Fatal,
        platform: Cow::Borrowed(platform),
        timestamp: time_of(&r.time),
        server_name: Some(Cow::Owned(r.host.clone())),
        release: release(r).map(Cow::Owned),
        exception: vec![exception].into(),
        threads: r.threads.iter().map(thread).collect::<Vec<_>>().into(),
        tags: tags(r),
        debug_meta: Cow::Owned(debug_meta(r)),
        extra: [
            ("exe".to_string(), r.exe.clone().into()),
            ("pid".to_string(), r.pid.into()),
            ("crashwatch_kind".to_string(), r.kind.into()),
        ]
        .into_iter()
        .collect(),
        ..Default::default()
    }
}

fn native(r: &Report) -> s::Exception {
    let sig = r.signal.as_ref();
    let name = sig.map_or_else(
        || r.exit.signal_name.clone().unwrap_or_default(),
        |s| s.name.clone(),
    );
    s::Exception {
        ty: name.clone(),
        value: Some(crate::pipeline::cluster::headline(r)),
        thread_id: Some(s::ThreadId::Int(r.tid.into())),
        stacktrace: stacktrace(&r.stack, sig.map(|s| &s.registers), r.exe.as_deref()),
        mechanism: Some(s::Mechanism {
            ty: "signalhandler".into(),
            handled: Some(false),
            synthetic: Some(true),
            meta: s::MechanismMeta {
                signal: sig.map(|s| s::PosixSignal {
                    number: s.number,
                    code: Some(s.code),
                    name: Some(s.name.clone()),
                    code_name: s.code_name.map(str::to_string),
                }),
                ..Default::default()
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A runtime's death in its own platform's terms: its error type and message, its frames.
fn runtime(r: &Report, d: &crate::model::death::Death) -> (&'static str, s::Exception) {
    let platform = match d.runtime {
        "python" => "python",
        "go" => "go",
        "node" => "node",
        "java" => "java",
        "rust" => "native",
        _ => "other",
    };
    let frames: Vec<s::Frame> = d
        .frames
        .iter()
        .rev()
        .map(|f| s::Frame {
            colno: f.column.map(u64::from),
            in_app: Some(true),
            ..source(&f.function, &f.file, f.line)
        })
        .collect();
    let exception = s::Exception {
        ty: d.error_type.clone().unwrap_or_else(|| d.reason.to_string()),
        value: Some(d.message.clone())
            .filter(|m| !m.is_empty())
            .or(Some(d.headline.clone())),
        thread_id: Some(s::ThreadId::Int(r.tid.into())),
        stacktrace: (!frames.is_empty()).then(|| s::Stacktrace {
            frames,
            ..Default::default()
        }),
        mechanism: Some(s::Mechanism {
            ty: "crashwatch".into(),
            description: Some(format!("{} ({})", d.runtime, d.reason)),
            handled: Some(false),
            ..Default::default()
        }),
        ..Default::default()
    };
    (platform, exception)
}

/// Frames innermost first become Sentry's oldest first; the registers as Sentry takes them.
fn stacktrace(
    frames: &[crate::model::frame::Frame],
    registers: Option<&BTreeMap<String, String>>,
    exe: Option<&str>,
) -> Option<s::Stacktrace> {
    if frames.is_empty() {
        return None;
    }
    let frames = frames
        .iter()
        .rev()
        .map(|f| match f.found_by {
            // A CPython frame among the native ones (`--dumps`): source, no address; the
            // program's own unless it is the interpreter's library.
            "python" => s::Frame {
                in_app: Some(!f.file.as_deref().unwrap_or("").contains("/lib/python")),
                ..source(&f.function, &f.file, f.line)
            },
            _ => s::Frame {
                package: f.module.clone(),
                instruction_addr: Some(s::Addr(f.ip)),
                in_app: Some(f.module.is_some() && f.module.as_deref() == exe),
                ..source(&f.function, &f.file, f.line)
            },
        })
        .collect();
    let registers = registers
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| {
            let v = u64::from_str_radix(v.trim_start_matches("0x"), 16).ok()?;
            Some((sentry_register(k), s::RegVal(v)))
        })
        .collect();
    Some(s::Stacktrace {
        frames,
        registers,
        ..Default::default()
    })
}

/// Sentry names x86_64 registers as Breakpad does (`rip`, `rsp`); the kernel's `pt_regs`
/// names drop the `r` of the old ones (`ip`, `sp`, `ax`).
fn sentry_register(k: &str) -> String {
    match k {
        "ip" | "sp" | "bp" | "ax" | "bx" | "cx" | "dx" | "si" | "di" => format!("r{k}"),
        "flags" => "eflags".into(),
        _ => k.to_string(),
    }
}

fn thread(t: &ThreadInfo) -> s::Thread {
    s::Thread {
        id: Some(s::ThreadId::Int(t.tid.into())),
        name: t.name.clone(),
        crashed: t.crashed,
        current: t.crashed,
        stacktrace: stacktrace(&t.stack, Some(&t.registers), None),
        ..Default::default()
    }
}

fn tags(r: &Report) -> BTreeMap<String, String> {
    let mut t = BTreeMap::new();
    let mut put = |k: &str, v: Option<&str>| {
        if let Some(v) = v.filter(|v| !v.is_empty()) {
            t.insert(k.to_string(), v.to_string());
        }
    };
    put("crashwatch.kind", Some(r.kind));
    put("crashwatch.fingerprint", Some(&r.fingerprint));
    put("node", Some(&r.host));
    put("comm", Some(&r.comm));
    if let Some(k) = &r.k8s {
        put("namespace", k.namespace.as_deref());
        put("pod", k.pod.as_deref());
        put(
            "workload",
            k.pod.as_deref().map(crate::model::container::workload),
        );
        put("container", k.container.as_deref());
    }
    if let Some(c) = &r.container {
        put("image", c.image.as_deref());
        put("container.name", c.name.as_deref());
    }
    if let Some(s) = &r.signal {
        put("signal", Some(&s.name));
    }
    t
}

fn release(r: &Report) -> Option<String> {
    let b = r.go.as_ref()?.build.as_ref()?;
    let rev = b.vcs_revision.as_deref()?;
    Some(match b.path.as_deref() {
        Some(p) => format!("{p}@{rev}"),
        None => rev.to_string(),
    })
}

fn debug_meta(r: &Report) -> s::DebugMeta {
    let images = r
        .dump
        .iter()
        .flat_map(|d| &d.images)
        .filter_map(|i| {
            let build_id = decode_hex(i.build_id.as_deref()?)?;
            Some(s::DebugImage::Symbolic(s::SymbolicDebugImage {
                name: i.path.clone(),
                arch: Some("x86_64".into()),
                image_addr: s::Addr(i.base),
                image_size: i.size,
                image_vmaddr: s::Addr(0),
                id: debug_id(&build_id)?,
                code_id: i.build_id.as_deref().and_then(|b| b.parse().ok()),
                debug_file: None,
            }))
        })
        .collect();
    s::DebugMeta {
        images,
        ..Default::default()
    }
}

/// Breakpad's (and Sentry's) debug id of an ELF file: its build id's first 16 bytes read as
/// a little-endian GUID, age 0.
fn debug_id(build_id: &[u8]) -> Option<sentry_types::DebugId> {
    let mut g = [0u8; 16];
    let n = build_id.len().min(16);
    g[..n].copy_from_slice(&build_id[..n]);
    sentry_types::DebugId::from_guid_age(&g, 0).ok()
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// A frame's function and where in the source it is.
fn source(function: &Option<String>, file: &Option<String>, line: Option<u32>) -> s::Frame {
    s::Frame {
        function: function.clone(),
        filename: file.as_deref().map(base),
        abs_path: file.clone(),
        lineno: line.map(u64::from),
        ..Default::default()
    }
}

fn base(path: &str) -> String {
    path.rsplit('/').next().unwrap_or(path).to_string()
}

/// A v4-shaped UUID from the report's key: the same report, the same event.
fn uuid_of(key: &str) -> sentry_types::Uuid {
    let a = crate::model::hex::fnv1a(key.as_bytes());
    let b = crate::model::hex::fnv1a(format!("crashwatch:{key}").as_bytes());
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&a.to_be_bytes());
    bytes[8..].copy_from_slice(&b.to_be_bytes());
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    sentry_types::Uuid::from_bytes(bytes)
}

fn time_of(rfc3339: &str) -> std::time::SystemTime {
    crate::model::clock::parse_rfc3339(rfc3339)
        .map(|ns| std::time::UNIX_EPOCH + std::time::Duration::from_nanos(ns))
        .unwrap_or_else(std::time::SystemTime::now)
}
