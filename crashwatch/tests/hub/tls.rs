//! TLS on both sides of the hub. The hub over HTTPS (`--tls-cert`/`--tls-key`): an agent
//! trusting the hub's CA (`--hub-ca`) delivers a real crash; plain HTTP to the port gets
//! nothing; a rotated certificate is served without a restart; a key that does not match its
//! certificate is refused at start. The hub to PostgreSQL over TLS (`sslmode=require`,
//! `--database-ca`): every connection of the hub's is encrypted, and a database whose
//! certificate another CA signed is not trusted.
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

/// What `crashwatch hub` said when it refused to start with `extra`.
fn refused(database: &str, ingest: &str, extra: &[&str]) -> String {
    let out = Command::new(agent_bin())
        .args(["hub", "--database", database, "--listen", "127.0.0.1:0"])
        .args(["--ingest-token-file", ingest])
        .args(extra)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "the hub started with {extra:?}: {err}"
    );
    err
}

#[test]
fn the_hub_serves_https_rotates_its_certificate_and_checks_its_databases() {
    let _alone = alone();
    let pg = Postgres::start();
    let dir = state_dir("hub-tls");
    let ingest = token_file(&dir, "ingest", INGEST);
    sh(
        &dir,
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key \
           -out ca.pem -days 1 -subj /CN=crashwatch-test-ca 2>/dev/null
         openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
           -keyout other-ca.key -out other-ca.pem -days 1 -subj /CN=another-ca 2>/dev/null",
    );
    issue(&dir, "first");
    issue(&dir, "second");
    issue(&dir, "db");
    pg.tls(&dir.join("db.pem"), &dir.join("db.key"));
    let database = format!("{}?sslmode=require", pg.url());
    let ca = dir.join("ca.pem");
    let database_ca = ["--database-ca", ca.to_str().unwrap()];
    std::fs::copy(dir.join("first.pem"), dir.join("hub.pem")).unwrap();
    std::fs::copy(dir.join("first.key"), dir.join("hub.key")).unwrap();
    let (cert, key) = (dir.join("hub.pem"), dir.join("hub.key"));
    let tls = [
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
        database_ca[0],
        database_ca[1],
    ];
    let hub = Hub::spawn_with(&database, &ingest, None, &tls);
    assert_eq!(hub.scheme, "https", "{:?}", hub.log());
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

    // Every connection the hub holds to the database is TLS.
    let hub_connections = |tls: bool| {
        pg.one(&format!(
            "SELECT COUNT(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
             WHERE a.application_name = 'crashwatch-hub' AND s.ssl = {tls}"
        ))
    };
    assert!(hub_connections(true) >= 2, "the pool and the listener");
    assert_eq!(hub_connections(false), 0, "a plain connection of the hub's");

    // A database whose certificate the given CA did not sign is not trusted (nor by the
    // system's roots alone), and the hub says why while it waits.
    for extra in [
        &["--database-ca", dir.join("other-ca.pem").to_str().unwrap()][..],
        &[],
    ] {
        let wrong = Hub::spawn_with(&database, &ingest, None, extra);
        wait_until("the untrusted database's refusal said", 20, || {
            wrong
                .log()
                .iter()
                .any(|l| l.contains("not ready") && l.contains("certificate"))
        });
        assert_eq!(wrong.get("/readyz", None).0, 503, "{:?}", wrong.log());
    }
    // A CA for a database reached without TLS is a mistake, said at start.
    let err = refused(&pg.url(), &ingest, &database_ca);
    assert!(err.contains("sslmode=require"), "{err}");

    // Rotation: the files change under the running hub.
    assert!(served(&dir, &hub).contains("CN = first"));
    std::fs::copy(dir.join("second.key"), &key).unwrap();
    std::fs::copy(dir.join("second.pem"), &cert).unwrap();
    wait_until("the rotated certificate served", 40, || {
        served(&dir, &hub).contains("CN = second")
    });

    // A key that is not the certificate's: refused at start, saying so.
    let (first, second) = (dir.join("first.pem"), dir.join("second.key"));
    let mismatched = [
        "--tls-cert",
        first.to_str().unwrap(),
        "--tls-key",
        second.to_str().unwrap(),
    ];
    let err = refused(&database, &ingest, &mismatched);
    assert!(err.contains("does not match"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
