//! The hub over HTTPS (`--tls-cert`/`--tls-key`): an agent trusting the hub's CA
//! (`--hub-ca`) delivers a real crash; plain HTTP to the port gets nothing; a rotated
//! certificate is served without a restart; a key that does not match its certificate is
//! refused at start.
use std::{path::Path, process::Command};

use crate::{
    alone,
    common::{agent_bin, state_dir, Agent, Crasher},
    servers::{token_file, Hub, Postgres},
    wait_until, INGEST,
};

fn sh(dir: &Path, script: &str) -> String {
    let out = Command::new("sh")
        .arg("-ec")
        .arg(script)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A certificate for 127.0.0.1 signed by the test's CA, as `name`.pem and `name`.key.
fn issue(dir: &Path, name: &str) {
    sh(
        dir,
        &format!(
            "openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout {name}.key \
               -out {name}.csr -subj /CN={name} 2>/dev/null
             printf 'subjectAltName=IP:127.0.0.1\\n' > {name}.ext
             openssl x509 -req -in {name}.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
               -out {name}.pem -days 1 -extfile {name}.ext 2>/dev/null"
        ),
    );
}

/// The subject CN of the certificate the hub serves now.
fn served(dir: &Path, hub: &Hub) -> String {
    sh(
        dir,
        &format!(
            "openssl s_client -connect {} -CAfile ca.pem </dev/null 2>/dev/null \
               | openssl x509 -noout -subject",
            hub.addr
        ),
    )
    .trim()
    .to_string()
}

#[test]
fn the_hub_serves_https_takes_a_rotated_certificate_and_refuses_a_mismatched_key() {
    let _alone = alone();
    let pg = Postgres::start();
    let dir = state_dir("hub-tls");
    let ingest = token_file(&dir, "ingest", INGEST);
    sh(
        &dir,
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key \
           -out ca.pem -days 1 -subj /CN=crashwatch-test-ca 2>/dev/null",
    );
    issue(&dir, "first");
    issue(&dir, "second");
    std::fs::copy(dir.join("first.pem"), dir.join("hub.pem")).unwrap();
    std::fs::copy(dir.join("first.key"), dir.join("hub.key")).unwrap();
    let (cert, key) = (dir.join("hub.pem"), dir.join("hub.key"));
    let tls = [
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ];
    let hub = Hub::spawn_with(&pg.url(), &ingest, None, &tls);
    assert_eq!(hub.scheme, "https", "{:?}", hub.log());
    let ca = dir.join("ca.pem");
    let curl = |url: String| {
        Command::new("curl")
            .args(["-sS", "--max-time", "5", "--cacert"])
            .arg(&ca)
            .arg(url)
            .output()
            .unwrap()
    };
    wait_until("the hub ready over HTTPS", 30, || {
        curl(format!("{}/readyz", hub.url())).stdout == b"ready\n"
    });
    let plain = curl(format!("http://{}/healthz", hub.addr));
    assert!(
        !plain.status.success() || plain.stdout != b"ok\n",
        "plain HTTP answered on the TLS port"
    );

    // A real crash, through the agent's TLS client trusting the hub's CA.
    let agent = Agent::start(&[
        "--hub",
        &hub.url(),
        "--hub-token-file",
        &ingest,
        "--hub-ca",
        ca.to_str().unwrap(),
    ]);
    let c = Crasher::run("null");
    agent.report_for(c.pid);
    wait_until("the crash stored through HTTPS", 60, || {
        pg.one(&format!(
            "SELECT COUNT(*) FROM reports WHERE pid = {}",
            c.pid
        )) == 1
    });

    // Rotation: the files change under the running hub.
    assert!(served(&dir, &hub).contains("CN = first"));
    std::fs::copy(dir.join("second.key"), &key).unwrap();
    std::fs::copy(dir.join("second.pem"), &cert).unwrap();
    wait_until("the rotated certificate served", 40, || {
        served(&dir, &hub).contains("CN = second")
    });

    // A key that is not the certificate's: refused at start, saying so.
    let bad = Command::new(agent_bin())
        .args(["hub", "--database", &pg.url(), "--listen", "127.0.0.1:0"])
        .args(["--ingest-token-file", &ingest, "--tls-cert"])
        .arg(dir.join("first.pem"))
        .arg("--tls-key")
        .arg(dir.join("second.key"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        !bad.status.success() && err.contains("does not match"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
