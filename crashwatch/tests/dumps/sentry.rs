//! Sentry (`--sentry-dsn`) against a stand-in that reads each envelope with Sentry's own
//! protocol types: a native crash's signal, stack, registers, threads, images and minidump,
//! a Python exception's frames, the auth header, and a rate-limited envelope sent again once
//! the limit is over.
use std::{sync::Mutex, time::Duration};

use crate::{dumping_agent, run, Pattern};

/// One envelope the stand-in took with a 200.
struct Taken {
    at: std::time::Instant,
    auth: String,
    ctype: String,
    body: Vec<u8>,
}

/// A Sentry stand-in: takes envelopes, answers the first `limited` with a 429 and Sentry's
/// rate-limit header, then 200s.
struct SentryReceiver {
    port: u16,
    got: std::sync::Arc<Mutex<Vec<Taken>>>,
    limited_at: std::sync::Arc<Mutex<Vec<std::time::Instant>>>,
}

impl SentryReceiver {
    fn start(limited: usize) -> SentryReceiver {
        use std::io::{BufRead, BufReader, Read, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let got = std::sync::Arc::new(Mutex::new(Vec::new()));
        let limited_at = std::sync::Arc::new(Mutex::new(Vec::new()));
        let (g, la) = (got.clone(), limited_at.clone());
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                let mut r = BufReader::new(s.try_clone().unwrap());
                let (mut len, mut auth, mut ctype) = (0usize, String::new(), String::new());
                let mut line = String::new();
                while r.read_line(&mut line).unwrap_or(0) > 2 {
                    if let Some((k, v)) = line.trim_end().split_once(": ") {
                        match k.to_ascii_lowercase().as_str() {
                            "content-length" => len = v.parse().unwrap(),
                            "x-sentry-auth" => auth = v.to_string(),
                            "content-type" => ctype = v.to_string(),
                            _ => {}
                        }
                    }
                    line.clear();
                }
                let mut body = vec![0; len];
                if r.read_exact(&mut body).is_err() {
                    continue;
                }
                let mut limits = la.lock().unwrap();
                let answer: &[u8] = if limits.len() < limited {
                    limits.push(std::time::Instant::now());
                    b"HTTP/1.1 429 Too Many Requests\r\nX-Sentry-Rate-Limits: 2:error:organization\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                } else {
                    g.lock().unwrap().push(Taken {
                        at: std::time::Instant::now(),
                        auth,
                        ctype,
                        body,
                    });
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"
                };
                let _ = (&s).write_all(answer);
            }
        });
        SentryReceiver {
            port,
            got,
            limited_at,
        }
    }

    fn dsn(&self) -> String {
        format!("http://0123456789abcdef@127.0.0.1:{}/42", self.port)
    }

    /// The event and attachments of the envelope about `pid`, read with Sentry's own types.
    fn envelope_for(
        &self,
        pid: u32,
    ) -> Option<(
        sentry_types::protocol::v7::Event<'static>,
        Vec<sentry_types::protocol::v7::Attachment>,
    )> {
        use sentry_types::protocol::v7::{Envelope, EnvelopeItem};
        for t in self.got.lock().unwrap().iter() {
            let env = Envelope::from_slice(&t.body).expect("an envelope Sentry's types read");
            let mut event = None;
            let mut attachments = Vec::new();
            for item in env.items() {
                match item {
                    EnvelopeItem::Event(e) => event = Some(e.clone()),
                    EnvelopeItem::Attachment(a) => attachments.push(a.clone()),
                    _ => {}
                }
            }
            let event = event.expect("an event in each envelope");
            if event.extra.get("pid").and_then(|p| p.as_u64()) == Some(u64::from(pid)) {
                return Some((*event, attachments));
            }
        }
        None
    }
}

#[test]
fn sentry_gets_each_crash_as_its_platform_with_threads_images_and_the_minidump() {
    use sentry_types::protocol::v7::{AttachmentType, DebugImage, ThreadId};
    let _p = Pattern::hold();
    // The first envelope is rate-limited: it is sent again once the limit's 2 s are over.
    let sentry = SentryReceiver::start(1);
    let dsn = sentry.dsn();
    let a = dumping_agent("sentry", &["--sentry-dsn", &dsn]);
    let c = run(&["threads"]);
    let r = a.report_for(c.pid);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let (event, attachments) = loop {
        if let Some(e) = sentry.envelope_for(c.pid) {
            break e;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no envelope for {}; log:\n{}",
            c.pid,
            a.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let limited = sentry.limited_at.lock().unwrap()[0];
    let taken = sentry.got.lock().unwrap()[0].at;
    assert!(
        taken.duration_since(limited) >= Duration::from_millis(1900),
        "the rate limit was honoured"
    );
    let (auth, ctype) = {
        let got = sentry.got.lock().unwrap();
        (got[0].auth.clone(), got[0].ctype.clone())
    };
    assert!(
        auth.starts_with("Sentry sentry_key=0123456789abcdef, sentry_version=7"),
        "{auth}"
    );
    assert_eq!(ctype, "application/x-sentry-envelope");
    // A signal death: native, the signal in the mechanism, the crash's stack oldest first.
    assert_eq!(event.platform, "native");
    let ex = &event.exception.values[0];
    assert_eq!(ex.ty, "SIGSEGV");
    let sig = ex.mechanism.as_ref().unwrap().meta.signal.as_ref().unwrap();
    assert_eq!(
        (sig.number, sig.code_name.as_deref()),
        (11, Some("SEGV_MAPERR"))
    );
    let frames = &ex.stacktrace.as_ref().unwrap().frames;
    assert_eq!(
        frames.last().unwrap().function.as_deref(),
        Some("crash_here")
    );
    assert!(ex
        .stacktrace
        .as_ref()
        .unwrap()
        .registers
        .contains_key("rip"));
    // Every thread, the crashed one marked.
    assert_eq!(
        event.threads.values.len(),
        r["threads"].as_array().unwrap().len()
    );
    let crashed = event.threads.values.iter().find(|t| t.crashed).unwrap();
    assert_eq!(crashed.id, Some(ThreadId::Int(r["tid"].as_u64().unwrap())));
    // The program's image with its build id, and the minidump.
    let exe = r["exe"].as_str().unwrap();
    let build_id = r["stack"][0]["build_id"].as_str().unwrap();
    let image = event.debug_meta.images.iter().find_map(|i| match i {
        DebugImage::Symbolic(s) if s.name == exe => Some(s),
        _ => None,
    });
    let image = image.unwrap_or_else(|| panic!("no image {exe} in {:?}", event.debug_meta.images));
    assert_eq!(image.code_id.as_ref().unwrap().to_string(), build_id);
    assert_eq!(
        event.tags["crashwatch.fingerprint"],
        r["fingerprint"].as_str().unwrap()
    );
    let md = attachments
        .iter()
        .find(|a| a.ty == Some(AttachmentType::Minidump))
        .expect("the minidump attached");
    assert_eq!(&md.buffer[..4], b"MDMP");

    // A runtime's death: Python's exception with Python's frames.
    let py = std::process::Command::new("python3")
        .args([
            "-c",
            "def load():\n    raise ValueError('bad row 17')\nload()\n",
        ])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = py.id();
    let _ = py.wait_with_output();
    a.report_for(pid);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let (event, _) = loop {
        if let Some(e) = sentry.envelope_for(pid) {
            break e;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no envelope for python; log:\n{}",
            a.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(event.platform, "python");
    let ex = &event.exception.values[0];
    assert_eq!(
        (ex.ty.as_str(), ex.value.as_deref()),
        ("ValueError", Some("bad row 17"))
    );
    let names: Vec<_> = ex
        .stacktrace
        .as_ref()
        .unwrap()
        .frames
        .iter()
        .map(|f| f.function.clone().unwrap_or_default())
        .collect();
    assert_eq!(names, ["<module>", "load"]);
}
