//! The systemd unit with the example configuration, as far as a host whose PID 1 is not
//! systemd allows (`systemctl start` cannot work here): `systemd-analyze verify` and its
//! offline security review on the unit; every path the configuration makes the agent write
//! (output file, state directory, pin directory, read from the agent's own `--print-config`
//! with the unit's ExecStart arguments) inside a directory the unit leaves writable under
//! `ProtectSystem=strict`; and the agent run in the unit's sandbox rebuilt by hand: a mount
//! namespace where every mount but the API filesystems is read-only, the unit's writable
//! directories bound writable again, its capability bounding set, no new privileges and its
//! umask, with the configuration's paths moved under a temporary root. (Not rebuilt: the
//! seccomp filters, PrivateTmp, PrivateDevices and the other Protect* settings.)
use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use super::{common, print_config, root, run, write_tmp, Unpin};
use common::{agent_bin, state_dir, Agent, Crasher, Setup};

/// The [Service] section of a unit file: its assignments in order.
struct Unit {
    text: String,
    service: Vec<(String, String)>,
}

impl Unit {
    fn shipped() -> Unit {
        Unit::parse(
            &std::fs::read_to_string(root().join("deploy/systemd/crashwatch.service")).unwrap(),
        )
    }

    fn parse(text: &str) -> Unit {
        let mut section = "";
        let mut service = Vec::new();
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            if line.starts_with('[') {
                section = if line == "[Service]" { "service" } else { "" };
                continue;
            }
            if let (Some((k, v)), "service") = (line.split_once('='), section) {
                service.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
        Unit {
            text: text.to_string(),
            service,
        }
    }

    /// The last value of `key`.
    fn one(&self, key: &str) -> Option<&str> {
        self.service
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The words of a list setting (an empty assignment resets the list, as systemd does).
    fn list(&self, key: &str) -> Vec<String> {
        let mut words = Vec::new();
        for (k, v) in &self.service {
            if k == key {
                if v.is_empty() {
                    words.clear();
                }
                words.extend(v.split_whitespace().map(str::to_string));
            }
        }
        words
    }

    /// What the service may write under `ProtectSystem=strict`: its `ReadWritePaths=` and the
    /// directories of `StateDirectory=`, `LogsDirectory=`, `CacheDirectory=` and
    /// `RuntimeDirectory=` (systemd.exec(5)). /tmp is left out: with `PrivateTmp=` nothing
    /// written there outlives the service or is seen by anyone else.
    fn writable(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = self
            .list("ReadWritePaths")
            .iter()
            .map(|p| PathBuf::from(p.trim_start_matches(['-', '+'])))
            .collect();
        for (key, base) in [
            ("StateDirectory", "/var/lib"),
            ("LogsDirectory", "/var/log"),
            ("CacheDirectory", "/var/cache"),
            ("RuntimeDirectory", "/run"),
        ] {
            for name in self.list(key) {
                let name = name.split(':').next().unwrap();
                dirs.push(Path::new(base).join(name));
            }
        }
        dirs
    }

    /// ExecStart's arguments after the program.
    fn exec_args(&self) -> Vec<String> {
        let words: Vec<String> = self
            .one("ExecStart")
            .expect("ExecStart=")
            .split_whitespace()
            .map(str::to_string)
            .collect();
        assert_eq!(words[0], "/usr/local/bin/crashwatch", "the installed path");
        words[1..].to_vec()
    }
}

/// The keys of `run` whose values are paths the agent writes to.
const WRITES: [&str; 4] = ["output-file", "state-dir", "pin-dir", "dump-socket"];
/// The keys whose values are paths the agent only reads.
const READS: [&str; 10] = [
    "config",
    "host-root",
    "listen-token-file",
    "webhook-ca",
    "otlp-ca",
    "containers-storage",
    "containerd-state",
    "docker-root",
    "pod-log-dir",
    "container-log-dir",
];

/// The example configuration with every setting it shows switched on (`# key = value`
/// lines uncommented): what a user who follows its comments gets.
fn example_config_all_on() -> String {
    let text = std::fs::read_to_string(root().join("deploy/config.toml")).unwrap();
    let setting = regex::Regex::new(r"^#\s?([a-z][a-z0-9-]*\s*=.*)$").unwrap();
    let on: Vec<String> = text
        .lines()
        .map(|l| match setting.captures(l) {
            Some(c) => c[1].to_string(),
            None => l.to_string(),
        })
        .collect();
    on.join("\n") + "\n"
}

/// `crashwatch ARGS --print-config` with the unit's ExecStart arguments, `--config` naming
/// `config`: the effective value of each key that has one.
fn effective(unit: &Unit, config: &Path) -> toml::Table {
    let mut args = unit.exec_args();
    let at = args.iter().position(|a| a == "--config").expect("--config") + 1;
    args[at] = config.display().to_string();
    let text = print_config(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let settings: String = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split("   # ").next().unwrap().to_string() + "\n")
        .collect();
    toml::from_str(&settings).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// Each path the agent writes (`key = path`) that no writable directory of the unit holds.
fn not_writable(unit: &Unit, effective: &toml::Table) -> Vec<String> {
    let writable = unit.writable();
    let mut missing = Vec::new();
    for (key, value) in effective {
        let values = match value {
            toml::Value::Array(a) => a.iter().filter_map(|v| v.as_str()).collect(),
            v => v.as_str().into_iter().collect::<Vec<_>>(),
        };
        for path in values.into_iter().filter(|v| v.starts_with('/')) {
            if READS.contains(&key.as_str()) {
                continue;
            }
            assert!(
                WRITES.contains(&key.as_str()),
                "`{key} = {path}`: a path this test does not know; add it to WRITES or READS"
            );
            if !writable.iter().any(|w| Path::new(path).starts_with(w)) {
                missing.push(format!("{key} = {path}"));
            }
        }
    }
    missing
}

#[test]
fn the_systemd_unit_verifies() {
    let unit = std::fs::read_to_string(root().join("deploy/systemd/crashwatch.service")).unwrap();
    // verify wants the ExecStart binary to exist: point it at the one the tests built. The
    // unit is loaded from a directory of its own, with no man pages or generators to consult:
    // all of it works without systemd as PID 1.
    let unit = unit.replace("/usr/local/bin/crashwatch", agent_bin().to_str().unwrap());
    let verify = |text: &str| {
        let f = write_tmp("crashwatch.service", text);
        run(Command::new("systemd-analyze")
            .args(["verify", "--man=no", "--generators=no"])
            .arg(&f))
    };
    let (ok, out) = verify(&unit);
    assert!(ok && out.trim().is_empty(), "systemd-analyze verify: {out}");
    for key in [
        "CapabilityBoundingSet=",
        "ProtectSystem=strict",
        "ProtectHome=",
        "StateDirectory=crashwatch",
    ] {
        assert!(unit.contains(key), "{key}");
    }
    let (_, out) = verify(&unit.replace("NoNewPrivileges=", "NoNewPrivilege="));
    assert!(
        out.contains("Unknown key"),
        "the negative control passed: {out}"
    );
    // systemd's own review of the sandbox, offline: the unit stays "OK" (4.4 today; a
    // plain root service scores 9.6, UNSAFE).
    let f = write_tmp("crashwatch.service", &unit);
    let (ok, out) = run(Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(&f));
    let level: f64 = out
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for crashwatch.service: ")
                .nth(1)
        })
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in: {out}"));
    assert!(ok && level <= 5.0, "exposure {level}: {out}");
}

/// The hub's unit verifies, runs the hub with no privileges (systemd's review: well under
/// the agent's), and its ExecStart is the real binary's arguments.
#[test]
fn the_hub_unit_verifies_and_runs_unprivileged() {
    let unit =
        std::fs::read_to_string(root().join("deploy/systemd/crashwatch-hub.service")).unwrap();
    let unit = unit.replace("/usr/local/bin/crashwatch", agent_bin().to_str().unwrap());
    let f = write_tmp("crashwatch-hub.service", &unit);
    let (ok, out) = run(Command::new("systemd-analyze")
        .args(["verify", "--man=no", "--generators=no"])
        .arg(&f));
    // The EnvironmentFile and credentials exist only on an installed host.
    let out: Vec<&str> = out
        .lines()
        .filter(|l| !l.contains("/etc/crashwatch-hub/"))
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert!(ok || out.is_empty(), "systemd-analyze verify: {out:?}");
    assert!(out.is_empty(), "systemd-analyze verify: {out:?}");
    let (_, out) = run(Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(&f));
    let level: f64 = out
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for crashwatch-hub.service: ")
                .nth(1)
        })
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in: {out}"));
    assert!(level <= 2.5, "exposure {level}: {out}");
    // ExecStart's arguments parse: the hub stops at the token file, not at a flag.
    let exec = unit
        .split("ExecStart=")
        .nth(1)
        .unwrap()
        .split("\n# ")
        .next()
        .unwrap()
        .replace("\\\n", " ")
        .replace("${CREDENTIALS_DIRECTORY}", "/nonexistent");
    let args: Vec<&str> = exec.split_whitespace().skip(1).collect();
    let (_, err) = super::hub_with(&args);
    assert!(
        err.contains("--ingest-token-file /nonexistent/ingest-token"),
        "{args:?}: {err}"
    );
}

/// The unit installs deploy/config.toml where ExecStart reads it, and every path that
/// configuration makes the agent write (each setting the example shows switched on, and
/// every default) is one the unit makes writable under `ProtectSystem=strict`.
#[test]
fn the_unit_lets_the_agent_write_where_the_example_configuration_says() {
    let unit = Unit::shipped();
    assert_eq!(unit.one("ProtectSystem"), Some("strict"));
    let args = unit.exec_args();
    let at = args.iter().position(|a| a == "--config").expect("--config") + 1;
    assert!(
        unit.text.contains(&format!(
            "install -D -m 0644 deploy/config.toml {}",
            args[at]
        )),
        "the install commands put deploy/config.toml where ExecStart reads it"
    );
    let shipped = root().join("deploy/config.toml");
    let all_on = write_tmp("config-all-on.toml", &example_config_all_on());
    for (config, which) in [
        (&shipped, "deploy/config.toml"),
        (
            &all_on,
            "deploy/config.toml with every setting it shows switched on",
        ),
    ] {
        let effective = effective(&unit, config);
        assert!(effective.contains_key("output-file") || config == &shipped);
        let missing = not_writable(&unit, &effective);
        assert!(
            missing.is_empty(),
            "deploy/systemd/crashwatch.service (ProtectSystem=strict, writable: {:?}) \
             cannot write what {which} names: {missing:?}",
            unit.writable(),
        );
    }
    // Negative control: without its logs directory the unit cannot write the output file.
    let without = Unit::parse(&unit.text.replace("LogsDirectory=", "#LogsDirectory="));
    let missing = not_writable(&without, &effective(&without, &all_on));
    assert_eq!(
        missing,
        ["output-file = /var/log/crashwatch/reports.json"],
        "the negative control passed"
    );
}

/// `dir` under the test's root `t`; paths in /sys stay (the API filesystems are the host's
/// under `ProtectSystem=strict`: the pins go to the host's BPF filesystem).
fn moved(t: &Path, dir: &Path) -> PathBuf {
    if dir.starts_with("/sys") {
        dir.to_path_buf()
    } else {
        t.join(dir.strip_prefix("/").unwrap())
    }
}

fn quoted(p: &Path) -> String {
    let s = p.display().to_string();
    assert!(!s.contains('\''), "{s}");
    format!("'{s}'")
}

/// `unshare ... sh -c SCRIPT sh`, to which the harness appends the agent and its arguments:
/// the unit's sandbox, with its writable directories moved under `t`.
fn sandbox(unit: &Unit, t: &Path) -> Vec<String> {
    let mut script = String::from(
        "fail=0\n\
         # ProtectSystem=strict: every mount read-only but the API filesystems.\n\
         for m in $(awk '{print $5}' /proc/self/mountinfo | sort -u); do\n\
         \x20 case \"$m\" in /proc|/proc/*|/dev|/dev/*|/sys|/sys/*) continue;; esac\n\
         \x20 mount -o remount,bind,ro \"$m\" || { echo \"sandbox: $m stays writable\" >&2; fail=1; }\n\
         done\n",
    );
    if unit.one("ProtectControlGroups") == Some("yes") {
        script.push_str(
            "for m in $(awk '$5 ~ \"^/sys/fs/cgroup\" {print $5}' /proc/self/mountinfo | sort -u); do\n\
             \x20 mount -o remount,bind,ro \"$m\" || fail=1\n\
             done\n",
        );
    }
    script.push_str("# The unit's writable directories.\n");
    for dir in unit.writable() {
        let d = quoted(&moved(t, &dir));
        script.push_str(&format!(
            "mount --bind {d} {d} && mount -o remount,bind,rw {d} || fail=1\n"
        ));
    }
    script.push_str(&format!(
        "[ $fail = 0 ] || {{ echo 'sandbox: a mount failed' >&2; exit 96; }}\n\
         # The negative control: the rest of the test's root is read-only.\n\
         if touch {}/outside 2>/dev/null; then echo 'sandbox: not read-only' >&2; exit 97; fi\n",
        quoted(t)
    ));
    let umask = unit.one("UMask").unwrap_or("0022");
    let caps: Vec<String> = unit
        .list("CapabilityBoundingSet")
        .iter()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    let nnp = if unit.one("NoNewPrivileges") == Some("yes") {
        "--no-new-privs"
    } else {
        ""
    };
    script.push_str(&format!(
        "umask {umask}\n\
         exec setpriv --bounding-set=-all,{} --inh-caps=-all {nnp} --pdeathsig=TERM -- \"$@\"\n",
        caps.join(",")
    ));
    [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "--",
        "sh",
        "-c",
        &script,
        "sh",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// The agent started as the unit starts it, in the unit's sandbox, with the example
/// configuration (every setting it shows switched on but the network outputs, which would
/// send reports off this host; the paths moved under a temporary root): it gets ready, writes
/// a crash to stdout, the output file and the crash history, pins under its pin directory,
/// reloads on ExecReload's SIGHUP, and stops cleanly on SIGTERM within TimeoutStopSec.
#[test]
fn the_unit_runs_the_agent_with_the_example_configuration() {
    let unit = Unit::shipped();
    let t = state_dir("unit-root");
    for dir in unit.writable() {
        let d = moved(&t, &dir);
        std::fs::create_dir_all(&d).unwrap();
        if !d.starts_with("/sys") {
            // As systemd makes StateDirectory= and LogsDirectory= (mode 0700 here).
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).unwrap();
        }
    }
    // Pinned where this test removes it afterwards, beside a real agent's pins.
    let pin_dir = PathBuf::from(format!(
        "/sys/fs/bpf/crashwatch-unit-test-{}",
        std::process::id()
    ));
    let _unpin = Unpin(pin_dir.display().to_string());
    let mut config: toml::Table = toml::from_str(&example_config_all_on()).unwrap();
    config.retain(|k, _| !k.starts_with("webhook") && !k.starts_with("otlp") && k != "listen");
    let all_on = write_tmp("config-all-on.toml", &example_config_all_on());
    let effective = effective(&unit, &all_on);
    for key in WRITES {
        let path = Path::new(effective[key].as_str().unwrap());
        let path = if key == "pin-dir" {
            pin_dir.clone()
        } else {
            // The directory is there, as if made by hand: only the sandbox decides whether
            // the agent may write in it.
            let path = moved(&t, path);
            let dir = if key == "output-file" {
                path.parent().unwrap()
            } else {
                &path
            };
            std::fs::create_dir_all(dir).unwrap();
            path
        };
        config.insert(key.into(), path.display().to_string().into());
    }
    let file = write_tmp("config-run.toml", &toml::to_string(&config).unwrap());
    let mut args = unit.exec_args();
    assert_eq!(
        args[..3],
        ["run", "--output", "json"],
        "JSON lines on stdout"
    );
    // The harness adds `run --output json` itself (and a listener on a free port).
    args.drain(..3);
    let at = args.iter().position(|a| a == "--config").unwrap() + 1;
    args[at] = file.display().to_string();
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let agent = Agent::start_with(
        &argv,
        Setup {
            wrap: sandbox(&unit, &t),
            ..Setup::default()
        },
    );
    let (output, state) = (
        config["output-file"].as_str().unwrap().to_string(),
        config["state-dir"].as_str().unwrap().to_string(),
    );
    agent.wait_log(&format!("reports also go to {output}"));
    agent.wait_log(&format!("crash history in {state}"));
    assert!(
        !agent.log().contains("running with less"),
        "{}",
        agent.log()
    );

    let crash = Crasher::run("null");
    let r = agent.report_for(crash.pid);
    assert_eq!(r["signal"]["name"], "SIGSEGV");
    assert!(r["cluster"]["id"].is_number(), "stored: {r}");
    let in_file = || {
        std::fs::read_to_string(&output)
            .unwrap_or_default()
            .lines()
            .any(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["pid"] == crash.pid)
            .then_some(())
    };
    assert!(agent.wait_for(in_file).is_some(), "not in {output}");
    assert!(Path::new(&state).join("crashwatch.db").exists());
    assert!(
        pin_dir.read_dir().unwrap().next().is_some(),
        "nothing pinned"
    );

    assert_eq!(
        unit.one("ExecReload"),
        Some("/bin/kill -HUP $MAINPID"),
        "reload is SIGHUP"
    );
    agent.signal(libc::SIGHUP);
    agent.wait_log("reloaded the configuration: 1 outputs besides stdout");

    let stop: u64 = unit.one("TimeoutStopSec").unwrap().parse().unwrap();
    agent.signal(libc::SIGTERM);
    let status = agent.wait_exit(Duration::from_secs(stop));
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?} within TimeoutStopSec={stop}: {}",
        agent.log()
    );
}
