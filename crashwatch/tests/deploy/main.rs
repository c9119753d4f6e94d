//! The deploy files, checked offline with the real tools: the Helm chart rendered by helm,
//! every manifest validated against Kubernetes' own schemas (PyPI kubernetes-validate,
//! strict: unknown fields fail) for the oldest and newest versions it knows, the plain
//! manifests equal to the chart's rendering, the chart's config.toml accepted by the agent,
//! every path the deploy files and the docs name existing and every link of the README and the
//! docs reaching its page and heading (links.rs). Each check has a negative control: a broken
//! copy must fail it. The image is run as the DaemonSet says in image.rs; the systemd
//! unit is verified and run with the example configuration in systemd.rs.
//! Needs scripts/setup.sh (helm, kubernetes-validate).
#[path = "../common/mod.rs"]
mod common;
mod image;
mod links;
mod systemd;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use common::{agent_bin, state_dir};
use serde_json::Value;

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn chart() -> PathBuf {
    root().join("deploy/helm/crashwatch")
}

pub fn helm() -> PathBuf {
    let pinned = PathBuf::from("/opt/crashwatch-py/helm/bin/helm");
    if pinned.exists() {
        pinned
    } else {
        PathBuf::from("helm")
    }
}

/// Removes the agent's pinned programs: a test leaves nothing attached.
pub struct Unpin(pub String);

impl Drop for Unpin {
    fn drop(&mut self) {
        let _ = Command::new(agent_bin())
            .args(["uninstall-bpf", "--pin-dir", &self.0])
            .output();
    }
}

/// `crashwatch ARGS --print-config`, none of this environment's CRASHWATCH_* in effect.
pub fn print_config(args: &[&str]) -> String {
    let out = Command::new(agent_bin())
        .args(args)
        .arg("--print-config")
        .env_clear()
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (scripts/setup.sh)"));
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// `helm template crashwatch CHART --namespace crashwatch EXTRA…`
pub fn render(extra: &[&str]) -> String {
    let out = Command::new(helm())
        .args(["template", "crashwatch"])
        .arg(chart())
        .args(["--namespace", "crashwatch"])
        .args(extra)
        .output()
        .expect("helm (scripts/setup.sh installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The YAML documents as JSON, parsed by PyYAML (kubernetes-validate's own dependency).
pub fn documents(yaml: &str) -> Vec<Value> {
    let mut child = Command::new("python3")
        .args([
            "-S",
            "-c",
            "import sys, json, yaml\n\
             print(json.dumps([d for d in yaml.safe_load_all(sys.stdin) if d]))",
        ])
        .env("PYTHONPATH", "/opt/crashwatch-py/k8s")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(yaml.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    serde_json::from_slice(&out.stdout).unwrap()
}

pub fn kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in {docs:?}"))
}

/// kubernetes-validate --strict against Kubernetes `version`.
/// `crashwatch ARGS` (a hub's command line) with a database nobody listens on: whether it
/// succeeded, and what it said.
fn hub_with(args: &[&str]) -> (bool, String) {
    let out = Command::new(agent_bin())
        .args(args)
        .env(
            "CRASHWATCH_HUB_DATABASE",
            "postgres://nobody@127.0.0.1:1/none",
        )
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn validate(file: &Path, version: &str) -> (bool, String) {
    run(Command::new("python3")
        .args([
            "-S",
            "-m",
            "kubernetes_validate",
            "--strict",
            "--no-warn",
            "-k",
            version,
        ])
        .arg(file)
        .env("PYTHONPATH", "/opt/crashwatch-py/k8s"))
}

fn write_tmp(name: &str, text: &str) -> PathBuf {
    let dir = state_dir("deploy");
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// Every sink and switch of the chart set, for the renderings that must cover them.
const ALL_SINKS: &[&str] = &[
    "--set-json",
    r#"sinks={"outputFile":"/var/lib/crashwatch/reports.json","webhooks":["https://hooks.example/T0/B0/SECRETPATH","http://receiver:8080/crash"],"webhookHeaders":["Authorization: Bearer SECRETTOKEN"],"webhookFormat":"slack","otlpEndpoint":"http://otel-collector:4318","otlpHeaders":["X-Tenant: a"],"redact":["session=[^ ]+"]}"#,
    "--set",
    "sysAdmin=true",
    "--set",
    "serviceMonitor.enabled=true",
    "--set",
    "hub.enabled=true",
    "--set",
    "hub.databaseCaSecret=pg-ca",
    "--set-json",
    r#"config={"output":"json","exits":"nonzero","keep-days":7,"no-default-redact":false}"#,
];

#[test]
fn the_plain_manifests_are_the_chart_rendered() {
    let committed =
        std::fs::read_to_string(root().join("deploy/kubernetes/crashwatch.yaml")).unwrap();
    let rendered = render(&["--set", "namespace.create=true"]);
    assert!(
        committed.ends_with(&rendered),
        "deploy/kubernetes/crashwatch.yaml differs from the chart: run `cargo xtask manifests`"
    );
    let monitor =
        std::fs::read_to_string(root().join("deploy/kubernetes/optional/servicemonitor.yaml"))
            .unwrap();
    assert!(monitor.ends_with(&render(&[
        "--set",
        "serviceMonitor.enabled=true",
        "--show-only",
        "templates/servicemonitor.yaml"
    ])));
    let (ok, out) = run(Command::new(helm())
        .arg("lint")
        .arg("--strict")
        .arg(chart()));
    assert!(ok, "{out}");
}

#[test]
fn manifests_and_chart_validate_against_the_kubernetes_schemas() {
    let plain = root().join("deploy/kubernetes/crashwatch.yaml");
    let every = write_tmp("every-sink.yaml", &render(ALL_SINKS));
    let secret = write_tmp(
        "secret.yaml",
        &render(&["--set", "configSecret=crashwatch-config"]),
    );
    for version in ["1.30.0", "1.37.0"] {
        for f in [&plain, &every, &secret] {
            let (ok, out) = validate(f, version);
            // The ServiceMonitor is a CRD the schemas do not hold; it is checked below.
            let out: String = out
                .lines()
                .filter(|l| !l.contains("servicemonitor"))
                .collect::<Vec<_>>()
                .join("\n");
            assert!(ok, "{} on {version}: {out}", f.display());
            assert!(out.contains("daemonset/crashwatch"), "{out}");
        }
    }
    // Negative control: a wrong type and an unknown field are caught.
    let text = std::fs::read_to_string(&plain).unwrap();
    for (from, to) in [
        ("hostPID: true", "hostPID: \"yes\""),
        ("readOnlyRootFilesystem", "readOnlyRootFs"),
    ] {
        assert!(text.contains(from));
        let broken = write_tmp("broken.yaml", &text.replace(from, to));
        let (ok, out) = validate(&broken, "1.37.0");
        assert!(!ok, "the validator let `{to}` through: {out}");
    }
}

#[test]
fn the_daemonset_runs_the_agent_as_the_docs_say() {
    let docs = documents(
        &std::fs::read_to_string(root().join("deploy/kubernetes/crashwatch.yaml")).unwrap(),
    );
    let ds = kind(&docs, "DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    assert_eq!(pod["hostPID"], true);
    assert_eq!(pod["tolerations"][0]["operator"], "Exists");
    let sc = &c["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["privileged"], Value::Null, "not privileged");
    assert_eq!(sc["capabilities"]["drop"][0], "ALL");
    let caps: Vec<&str> = sc["capabilities"]["add"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(caps, ["BPF", "PERFMON", "SYS_PTRACE", "DAC_READ_SEARCH"]);
    assert_eq!(c["env"][0]["name"], "NODE_NAME");
    assert_eq!(
        c["env"][0]["valueFrom"]["fieldRef"]["fieldPath"],
        "spec.nodeName"
    );
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    let mounts: Vec<&str> = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["mountPath"].as_str().unwrap())
        .collect();
    for want in [
        "/sys/kernel/btf",
        "/sys/kernel/tracing",
        "/sys/fs/bpf",
        "/run/containerd",
        "/run/containers",
        "/var/log/pods",
        "/var/log/containers",
        "/var/lib/crashwatch",
        "/etc/crashwatch",
    ] {
        assert!(mounts.contains(&want), "{want} not mounted: {mounts:?}");
    }
    assert!(c["resources"]["requests"]["memory"].is_string());
    assert!(c["resources"]["limits"]["memory"].is_string());
    // The Service and the ServiceMonitor find the pods and the port.
    let svc = kind(&docs, "Service");
    for (k, v) in svc["spec"]["selector"].as_object().unwrap() {
        assert_eq!(&ds["spec"]["template"]["metadata"]["labels"][k], v);
    }
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], c["ports"][0]["name"]);
    let sm = documents(
        &std::fs::read_to_string(root().join("deploy/kubernetes/optional/servicemonitor.yaml"))
            .unwrap(),
    );
    let sm = kind(&sm, "ServiceMonitor");
    for (k, v) in sm["spec"]["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(
            &svc["metadata"]["labels"][k], v,
            "the ServiceMonitor selects the Service"
        );
    }
    assert_eq!(
        sm["spec"]["endpoints"][0]["port"],
        svc["spec"]["ports"][0]["name"]
    );
}

/// The chart's config.toml with every sink is a configuration the agent accepts, each value
/// from the file, secrets masked.
#[test]
fn the_charts_configuration_is_accepted_by_the_agent() {
    let docs = documents(&render(ALL_SINKS));
    let toml = kind(&docs, "ConfigMap")["data"]["config.toml"]
        .as_str()
        .unwrap()
        .to_string();
    let file = write_tmp("config.toml", &toml);
    let text = print_config(&["run", "--config", file.to_str().unwrap()]);
    for line in [
        "listen = \"0.0.0.0:9721\"   # file",
        "output-file = \"/var/lib/crashwatch/reports.json\"   # file",
        "webhook = [\"https://hooks.example/***\", \"http://receiver:8080/***\"]   # file",
        "webhook-header = [\"Authorization: ***\"]   # file",
        "webhook-format = \"slack\"   # file",
        "otlp-endpoint = \"http://otel-collector:4318\"   # file",
        "redact = [\"session=[^ ]+\"]   # file",
        "exits = \"nonzero\"   # file",
        "keep-days = 7   # file",
        "hub = [\"http://crashwatch-hub.crashwatch.svc:9722\"]   # file",
        "hub-token-file = \"/etc/crashwatch-hub/ingest-token\"   # file",
    ] {
        assert!(text.contains(line), "missing `{line}` in\n{text}");
    }
    assert!(!text.contains("SECRET"), "{text}");
}

/// A container's arguments.
fn args_of(c: &Value) -> Vec<&str> {
    c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect()
}

/// `hub.enabled`: the hub's replicas beside the agents, the database and tokens from the
/// Secret, every agent pointed at the hub's Service with the ingest token only; the hub's
/// arguments are the real binary's.
#[test]
fn the_hub_runs_beside_the_agents_when_enabled() {
    let docs = documents(&render(&["--set", "hub.enabled=true"]));
    let deploy = kind(&docs, "Deployment");
    assert_eq!(deploy["spec"]["replicas"], 2);
    let pod = &deploy["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let c = &pod["containers"][0];
    assert_eq!(c["securityContext"]["capabilities"]["drop"][0], "ALL");
    let env = &c["env"][0];
    assert_eq!(env["name"], "CRASHWATCH_HUB_DATABASE");
    assert_eq!(env["valueFrom"]["secretKeyRef"]["key"], "database");
    let args = args_of(c);
    assert!(args.contains(&"--read-token-file"), "{args:?}");
    // The real binary takes these arguments: it stops at the missing token file, not at a flag.
    let (ok, err) = hub_with(&args);
    assert!(
        !ok && err.contains("--ingest-token-file /etc/crashwatch-hub"),
        "{err}"
    );
    let svc = docs
        .iter()
        .find(|d| d["kind"] == "Service" && d["metadata"]["name"] == "crashwatch-hub")
        .expect("the hub's Service");
    for (k, v) in svc["spec"]["selector"].as_object().unwrap() {
        assert_eq!(&deploy["spec"]["template"]["metadata"]["labels"][k], v);
    }
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], c["ports"][0]["name"]);
    // Agents: the Service's URL, and the ingest token alone mounted.
    let toml = kind(&docs, "ConfigMap")["data"]["config.toml"]
        .as_str()
        .unwrap();
    assert!(
        toml.contains("hub = [\"http://crashwatch-hub.crashwatch.svc:9722\"]"),
        "{toml}"
    );
    let ds = kind(&docs, "DaemonSet");
    let vol = ds["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "hub-token")
        .expect("the agents' token volume");
    assert_eq!(vol["secret"]["items"].as_array().unwrap().len(), 1, "{vol}");
    assert_eq!(vol["secret"]["items"][0]["key"], "ingest-token");

    // A database reached with TLS: its CA from a Secret, mounted where --database-ca looks.
    assert!(!args.contains(&"--database-ca"), "{args:?}");
    let docs = documents(&render(&[
        "--set",
        "hub.enabled=true",
        "--set",
        "hub.databaseCaSecret=pg-ca",
    ]));
    let pod = &kind(&docs, "Deployment")["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    let args = args_of(c);
    let at = args
        .iter()
        .position(|a| *a == "--database-ca")
        .expect("--database-ca");
    let file = Path::new(args[at + 1]);
    let mount = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"] == file.parent().unwrap().to_str().unwrap())
        .expect("the CA's mount");
    let vol = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .expect("the CA's volume");
    assert_eq!(vol["secret"]["secretName"], "pg-ca");
    assert_eq!(
        vol["secret"]["items"][0]["path"].as_str(),
        file.file_name().unwrap().to_str()
    );
}
