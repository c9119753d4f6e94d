//! The configuration file and environment, through the real binary: precedence flag >
//! CRASHWATCH_* > file > default as `run --print-config` states it, secrets masked, unknown
//! keys and bad values refused with the file and key named, and a file's settings taking
//! effect (`check --sinks` opens the output file and state directory the file names); and
//! `--log-format json` turning every line of the agent's log into a JSON object; SIGHUP
//! applying a changed file's outputs and redaction rules; the kernel programs' own
//! diagnostics at `--log-level debug` only.
mod common;

use std::{collections::HashMap, path::Path, process::Command};

use common::{agent_bin, state_dir};

/// `key -> (value, source)` from `--print-config`.
fn effective(
    config: &Path,
    env: &[(&str, &str)],
    flags: &[&str],
) -> HashMap<String, (String, String)> {
    let out = Command::new(agent_bin())
        .args(["run", "--print-config", "--config"])
        .arg(config)
        .args(flags)
        .env_remove("CRASHWATCH_HOST_ROOT")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let (kv, source) = l.rsplit_once("   # ").unwrap();
            let (k, v) = kv.split_once(" = ").unwrap();
            (k.to_string(), (v.to_string(), source.to_string()))
        })
        .collect()
}

#[test]
fn precedence_is_flag_then_environment_then_file_then_default() {
    let dir = state_dir("config");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("config.toml");
    std::fs::write(
        &file,
        "output-file = \"/from/file\"\nring-size = 16777216\nstack-copy = 1024\n\
         no-store = true\nwebhook = [\"https://hooks.example/services/T0/SECRETPATH\"]\n\
         webhook-header = \"Authorization: Bearer SECRETTOKEN\"\n",
    )
    .unwrap();
    let e = effective(
        &file,
        &[
            ("CRASHWATCH_OUTPUT_FILE", "/from/env"),
            ("CRASHWATCH_STACK_COPY", "2048"),
        ],
        &["--stack-copy", "0"],
    );
    let get = |k: &str| {
        e.get(k)
            .unwrap_or_else(|| panic!("{k} missing: {e:?}"))
            .clone()
    };
    assert_eq!(get("stack-copy"), ("0".into(), "flag".into()));
    assert_eq!(
        get("output-file"),
        (
            "\"/from/env\"".into(),
            "environment CRASHWATCH_OUTPUT_FILE".into()
        )
    );
    assert_eq!(get("ring-size"), ("16777216".into(), "file".into()));
    assert_eq!(get("no-store"), ("true".into(), "file".into()));
    assert_eq!(get("keep-days"), ("30".into(), "default".into()));
    assert_eq!(get("exits"), ("\"none\"".into(), "default".into()));
    let all = format!("{e:?}");
    assert!(!all.contains("SECRET"), "a secret was printed: {all}");
    assert_eq!(
        get("webhook").0,
        "[\"https://hooks.example/***\"]",
        "the host stays visible"
    );
    assert_eq!(get("webhook-header").0, "[\"Authorization: ***\"]");
}

fn refused(config_text: &str) -> String {
    let dir = state_dir("config-bad");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("config.toml");
    std::fs::write(&file, config_text).unwrap();
    let out = Command::new(agent_bin())
        .args(["run", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        err.contains(file.to_str().unwrap()),
        "the file is named: {err}"
    );
    err
}

#[test]
fn unknown_keys_and_bad_values_are_refused_by_name() {
    let err = refused("output-file = \"/x\"\nwebhok = \"http://typo\"\n");
    assert!(err.contains("unknown key `webhok`"), "{err}");
    let err = refused("ring-size = 5000\n");
    assert!(
        err.contains("--ring-size") && err.contains("power of two"),
        "{err}"
    );
    let err = refused("no-store = \"yes\"\n");
    assert!(err.contains("`no-store` is a switch"), "{err}");
    let err = refused("exits = [\"none\"]\n");
    assert!(err.contains("`exits` takes one value"), "{err}");
    let err = refused("exits = \n");
    assert!(err.contains("not valid TOML"), "{err}");
    let out = Command::new(agent_bin())
        .args(["run", "--config", "/nonexistent/crashwatch.toml"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "an explicit file must exist: {out:?}"
    );
}

#[test]
fn the_files_settings_take_effect() {
    let dir = state_dir("config-effect");
    std::fs::create_dir_all(&dir).unwrap();
    let output = dir.join("reports.json");
    let state = dir.join("state");
    let file = dir.join("config.toml");
    std::fs::write(
        &file,
        format!(
            "output-file = {:?}\nstate-dir = {:?}\nlisten = \"off\"\n",
            output.to_str().unwrap(),
            state.to_str().unwrap()
        ),
    )
    .unwrap();
    let out = Command::new(agent_bin())
        .args(["check", "--sinks", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&format!("file                {}", output.display())),
        "check --sinks tried the file's output-file: {text}"
    );
    assert!(
        state.join("crashwatch.db").exists(),
        "and opened its state-dir: {text}"
    );
    assert!(
        !text.contains("listen"),
        "and no listener (`listen = \"off\"`): {text}"
    );
}

/// `check` with the flags (or the file) of `run` as they are, `check --sinks` trying what they
/// name.
fn check(args: &[&str], config: &Path) -> (bool, String) {
    let out = Command::new(agent_bin())
        .arg("check")
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// `--listen` and the file's `listen` take a host name and port, resolved; a name that does
/// not resolve is refused, saying so.
#[test]
fn listen_takes_a_host_name() {
    let dir = state_dir("config-listen");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("config.toml");
    let state = dir.join("state").display().to_string();
    std::fs::write(
        &file,
        format!("listen = \"localhost:0\"\nstate-dir = {state:?}\n"),
    )
    .unwrap();
    let (ok, text) = check(&["--sinks"], &file);
    assert!(ok, "{text}");
    assert!(
        text.contains("listen              127.0.0.1:0 can be bound"),
        "the file's `listen` resolved: {text}"
    );
    let (ok, text) = check(&["--sinks", "--listen", "[::1]:0"], &file);
    assert!(ok && text.contains("[::1]:0 can be bound"), "{text}");
    let out = Command::new(agent_bin())
        .args([
            "run",
            "--print-config",
            "--listen",
            "no-such-host.invalid:9721",
        ])
        .env("CRASHWATCH_CONFIG", "/dev/null")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("does not resolve"), "{err}");
}

/// `check` takes every flag of `run`, so a service's command line can be checked as it is:
/// `--sinks` tries its outputs, the plain check loads the programs with its settings.
#[test]
fn check_takes_the_flags_of_run() {
    let dir = state_dir("config-check-flags");
    let d = dir.display().to_string();
    let run_flags = [
        "--no-pin",
        "--exits",
        "nonzero",
        "--output",
        "json",
        "--state-dir",
        &d,
        "--listen",
        "off",
        "--last-words",
        "off",
        "--ring-size",
        "65536",
        "--log-level",
        "warn",
    ];
    let (ok, text) = check(
        &[&["--sinks"], &run_flags[..]].concat(),
        Path::new("/dev/null"),
    );
    assert!(ok, "{text}");
    assert!(
        text.contains("crash history") && text.contains("every output works"),
        "{text}"
    );
    let (ok, text) = check(&run_flags, Path::new("/dev/null"));
    assert!(ok, "{text}");
    assert!(
        text.contains("last words          off"),
        "the programs were loaded with the flags' --last-words: {text}"
    );
}

/// `--log-format json`: every line the agent writes to stderr, from start to stop, is a JSON
/// object with a timestamp, a level and the message; a warning (its listener's port taken)
/// says WARN.
#[test]
fn the_agents_own_log_can_be_json_lines() {
    use std::io::{BufRead, BufReader};
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let mut child = Command::new(agent_bin())
        .args([
            "run",
            "--log-format",
            "json",
            "--no-store",
            "--no-pin",
            "--output",
            "json",
            "--listen",
            &addr,
        ])
        .env("CRASHWATCH_CONFIG", "/dev/null")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        let ready = v["message"].as_str().unwrap().starts_with("ready: ");
        seen.push(v);
        if ready {
            break;
        }
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    for line in lines {
        let line = line.unwrap();
        seen.push(serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")));
    }
    assert!(child.wait().unwrap().success());
    for v in &seen {
        assert!(
            v["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')),
            "{v}"
        );
        assert!(
            ["INFO", "WARN", "ERROR"].contains(&v["level"].as_str().unwrap()),
            "{v}"
        );
    }
    let warned = seen.iter().find(|v| {
        v["message"]
            .as_str()
            .unwrap()
            .contains(&format!("no HTTP listener on {addr}"))
    });
    assert_eq!(
        warned.map(|v| v["level"].clone()),
        Some("WARN".into()),
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .any(|v| v["message"].as_str().unwrap().starts_with("stopped ")),
        "the stop line is logged too: {seen:?}"
    );
}

/// The ready line is one short line; what was loaded, and how, is said at debug level (and
/// by `crashwatch check`).
#[test]
fn the_ready_line_is_short_and_the_details_come_at_debug_level() {
    use common::Agent;
    let ready = |a: &Agent| {
        a.wait_log("crashwatch: ready");
        let log = a.log();
        let lines: Vec<String> = log
            .lines()
            .filter(|l| l.contains("crashwatch: ready"))
            .map(str::to_string)
            .collect();
        assert_eq!(lines.len(), 1, "{log}");
        lines[0].clone()
    };
    let a = Agent::start(&[]);
    let line = ready(&a);
    assert!(
        line.chars().count() <= 100,
        "{} characters: {line}",
        line.len()
    );
    let rest = line
        .strip_prefix("crashwatch: ready: watching ")
        .unwrap_or_else(|| panic!("{line}"));
    let (n, rest) = rest
        .split_once(" processes (")
        .unwrap_or_else(|| panic!("{line}"));
    assert!(n.parse::<u32>().unwrap() > 0, "{line}");
    assert!(
        rest.contains(" programs, ") && rest.contains("last words"),
        "{line}"
    );
    assert!(!a.log().contains("programs loaded ("), "{}", a.log());

    let b = Agent::start(&["--log-level", "debug"]);
    ready(&b);
    let log = b.log();
    let details = log
        .lines()
        .find(|l| l.contains("programs loaded ("))
        .unwrap_or_else(|| panic!("no details at debug: {log}"));
    for part in [
        "ring buffer",
        "recursion guard:",
        "last words:",
        "kernel state",
    ] {
        assert!(details.contains(part), "{part}: {details}");
    }
}

/// SIGHUP: the file's outputs and redaction rules change under the running agent, between
/// two reports; a key that needs a restart is said; a file that would be refused at start is
/// refused, and the running configuration stays.
#[test]
fn sighup_reloads_the_outputs_and_redaction_rules() {
    use common::{Agent, Crasher, Setup};
    let dir = state_dir("config-reload");
    std::fs::create_dir_all(&dir).unwrap();
    let (a, b, file) = (
        dir.join("a.json"),
        dir.join("b.json"),
        dir.join("config.toml"),
    );
    std::fs::write(&file, format!("output-file = {:?}\n", a.to_str().unwrap())).unwrap();
    let f = file.clone();
    let agent = Agent::start_with(
        &[],
        Setup {
            command: Some(Box::new(move |c| {
                c.env("CRASHWATCH_CONFIG", &f);
            })),
            ..Setup::default()
        },
    );
    let crash = |word: &str| {
        let mut cmd = Crasher::command("null");
        cmd.arg(word);
        let c = Crasher::finish(cmd.spawn().unwrap());
        (c.pid, agent.report_for(c.pid))
    };
    // Whole lines only: a reader can see a line while the agent's one write(2) of it is
    // still being copied into the page cache (reads take no lock against writes), so the
    // text after the last newline may be a report cut at a page boundary.
    let pids_in = |path: &Path| -> Vec<u64> {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let whole = text.rfind('\n').map_or("", |end| &text[..end]);
        whole
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["pid"]
                    .as_u64()
                    .unwrap()
            })
            .collect()
    };
    let in_file = |path: &Path, pid: u32| {
        agent
            .wait_for(|| pids_in(path).contains(&(pid as u64)).then_some(()))
            .is_some()
    };

    let (first, r) = crash("hunter2-first");
    assert!(r["cmdline"].to_string().contains("hunter2-first"), "{r}");
    assert!(in_file(&a, first), "the first file takes the first crash");

    std::fs::write(
        &file,
        format!(
            "output-file = {:?}\nredact = [\"hunter2\"]\nring-size = 16777216\n",
            b.to_str().unwrap()
        ),
    )
    .unwrap();
    agent.signal(libc::SIGHUP);
    agent.wait_log("reloaded the configuration: 1 outputs besides stdout");
    assert!(
        agent
            .log()
            .contains("`ring-size` changed: it takes effect at the next start"),
        "{}",
        agent.log()
    );
    let (second, r) = crash("hunter2-second");
    let cmdline = r["cmdline"].to_string();
    assert!(
        !cmdline.contains("hunter2") && cmdline.contains("[REDACTED]-second"),
        "the new rule masks: {cmdline}"
    );
    assert!(in_file(&b, second), "the new file takes the next crash");
    assert!(
        !pids_in(&a).contains(&(second as u64)),
        "the old one does not"
    );

    std::fs::write(&file, "no-such-key = 1\n").unwrap();
    agent.signal(libc::SIGHUP);
    agent.wait_log("reload refused, the running configuration stays");
    assert!(
        agent.log().contains("unknown key `no-such-key`"),
        "{}",
        agent.log()
    );
    let (third, r) = crash("hunter2-third");
    assert!(r["cmdline"].to_string().contains("[REDACTED]-third"), "{r}");
    assert!(in_file(&b, third), "still the second file");

    agent.signal(libc::SIGTERM);
    let st = agent.wait_exit(std::time::Duration::from_secs(10));
    assert!(st.is_some_and(|s| s.success()), "{:?}\n{}", st, agent.log());
}

/// `--log-level debug` turns on the kernel programs' own diagnostics: with a ring buffer too
/// small for a stack record, the signal program says whose stack it lost. At the default
/// level they say nothing (the loss is still counted).
///
/// A 4 KiB ring also fills with other processes' events when the host is busy (CI runs
/// other tests beside this one), so a crash's exit record can be lost too, and counted: the
/// test crashes again, up to three times, until the quiet agent reports one of them.
#[test]
fn kernel_diagnostics_come_at_debug_level() {
    use common::{Agent, Crasher};
    let debug = Agent::start(&["--log-level", "debug", "--ring-size", "4096"]);
    let quiet = Agent::start(&["--ring-size", "4096"]);
    let mut reported = None;
    for _ in 0..3 {
        let c = Crasher::run("null");
        let said = format!(
            "kernel: pid {} signal 11: lost to a full ring buffer",
            c.pid
        );
        debug.wait_log(&said);
        reported = quiet.try_report_for(c.pid);
        if reported.is_some() {
            break;
        }
    }
    let r = reported.unwrap_or_else(|| panic!("three crashes, no report:\n{}", quiet.log()));
    assert_eq!(r["signal"]["name"], "SIGSEGV");
    assert!(!quiet.log().contains("kernel: "), "{}", quiet.log());
}
