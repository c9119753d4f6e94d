//! The real servers the hub's tests start: Debian's PostgreSQL 15 (`initdb` into a temp dir,
//! its own port, run as the `postgres` user, torn down after) and hub replicas (this build's
//! `crashwatch hub`). `cargo xtask fleet-sim` starts its servers with this file too.
use std::{
    io::{BufRead, BufReader},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use super::common::{agent_bin, free_port};

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

pub struct Postgres {
    dir: PathBuf,
    pub port: u16,
    child: Option<Child>,
}

/// Runs as `postgres` (PostgreSQL refuses root), dying with the test.
fn as_postgres(program: &str) -> Command {
    let mut c = Command::new("setpriv");
    c.args([
        "--reuid=postgres",
        "--regid=postgres",
        "--init-groups",
        "--pdeathsig=TERM",
        "--",
    ])
    .arg(program);
    c
}

impl Postgres {
    pub fn start() -> Postgres {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("crashwatch-pg-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let st = Command::new("chown")
            .arg("postgres:")
            .arg(&dir)
            .status()
            .unwrap();
        assert!(st.success());
        let out = as_postgres(&format!("{PG_BIN}/initdb"))
            .arg("-D")
            .arg(dir.join("data"))
            .args(["-A", "trust", "-U", "crashwatch", "-E", "UTF8", "--no-sync"])
            .output()
            .expect("initdb (scripts/setup.sh installs postgresql-15)");
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut pg = Postgres {
            dir,
            port: free_port(),
            child: None,
        };
        pg.up();
        pg
    }

    pub fn url(&self) -> String {
        format!("postgres://crashwatch@127.0.0.1:{}/postgres", self.port)
    }

    /// Starts the server (again) and waits until it takes connections.
    pub fn up(&mut self) {
        let log = std::fs::File::create(self.dir.join("log")).unwrap();
        let child = as_postgres(&format!("{PG_BIN}/postgres"))
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-p", &self.port.to_string(), "-k"])
            .arg(&self.dir)
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
                "-c",
                "max_connections=200",
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = Command::new(format!("{PG_BIN}/pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-q"])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "PostgreSQL did not start: {}",
                std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The postmaster's pid (`cargo xtask bench` reads the server's CPU time with it).
    #[allow(dead_code)]
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Stops the server (fast shutdown: clients are disconnected).
    pub fn down(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe { libc::kill(c.id() as i32, libc::SIGINT) };
            let _ = c.wait();
        }
    }

    /// A query's rows, as psql prints them unaligned (`|` between columns).
    pub fn query(&self, sql: &str) -> Vec<String> {
        let out = Command::new(format!("{PG_BIN}/psql"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", "crashwatch", "-d", "postgres", "-At", "-c", sql])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Turns TLS on with `cert` and `key` (PEM), copied into the data directory (PostgreSQL
    /// takes only a key its own user owns with mode 0600), by a reload.
    #[allow(dead_code)]
    pub fn tls(&self, cert: &Path, key: &Path) {
        use std::os::unix::fs::PermissionsExt;
        let data = self.dir.join("data");
        for (from, to) in [(cert, "server.crt"), (key, "server.key")] {
            std::fs::copy(from, data.join(to)).unwrap();
            std::fs::set_permissions(data.join(to), std::fs::Permissions::from_mode(0o600))
                .unwrap();
            let st = Command::new("chown")
                .arg("postgres:")
                .arg(data.join(to))
                .status()
                .unwrap();
            assert!(st.success());
        }
        self.query("ALTER SYSTEM SET ssl = on");
        self.query("SELECT pg_reload_conf()");
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.query("SHOW ssl") != ["on"] {
            assert!(Instant::now() < deadline, "PostgreSQL did not turn TLS on");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn one(&self, sql: &str) -> i64 {
        self.query(sql)[0].parse().unwrap()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.down();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A token file (0600) holding `token`.
pub fn token_file(dir: &Path, name: &str, token: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, format!("{token}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p.display().to_string()
}

pub struct Hub {
    child: Child,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// `http` or `https`, as the hub said.
    pub scheme: String,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Hub {
    /// A replica on a free loopback port; returns once it is ready (schema migrated).
    pub fn start(database: &str, ingest: &str, read: Option<&str>) -> Hub {
        let hub = Hub::spawn(database, ingest, read);
        hub.wait_ready();
        hub
    }

    /// A replica listening; its schema migration goes on. It dies with the calling thread
    /// (PR_SET_PDEATHSIG), so call this from the test's own thread.
    pub fn spawn(database: &str, ingest: &str, read: Option<&str>) -> Hub {
        Hub::spawn_with(database, ingest, read, &[])
    }

    /// [`Hub::spawn`] with more of `crashwatch hub`'s flags.
    pub fn spawn_with(database: &str, ingest: &str, read: Option<&str>, extra: &[&str]) -> Hub {
        let mut cmd = Command::new(agent_bin());
        cmd.args(["hub", "--database", database])
            .args(["--ingest-token-file", ingest])
            .args(extra);
        // A free port, unless the test names one (a replica back where it was).
        if !extra.contains(&"--listen") {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        if let Some(r) = read {
            cmd.args(["--read-token-file", r]);
        }
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd.spawn().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let err = child.stderr.take().unwrap();
        let l = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if let Some(url) = line
                    .split("hub listening on ")
                    .nth(1)
                    .and_then(|r| r.split(' ').next())
                {
                    let _ = tx.send(url.to_string());
                }
                l.lock().unwrap().push(line);
            }
        });
        let url = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("the hub did not listen: {:?}", log.lock().unwrap()));
        let (scheme, addr) = url.split_once("://").expect("a URL");
        Hub {
            child,
            addr: addr.to_string(),
            scheme: scheme.to_string(),
            log,
        }
    }

    pub fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.get("/readyz", None).0 != 200 {
            assert!(
                Instant::now() < deadline,
                "the hub is not ready: {:?}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }

    /// (`cargo xtask fleet-sim` reads the replica's memory with it.)
    #[allow(dead_code)]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn agent() -> ureq::Agent {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .new_agent()
    }

    /// (status, body) of a GET with the token, if any.
    pub fn get(&self, path: &str, token: Option<&str>) -> (u16, String) {
        let mut req = Self::agent().get(format!("{}{path}", self.url()));
        if let Some(t) = token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        match req.call() {
            Ok(mut r) => (
                r.status().as_u16(),
                r.body_mut().read_to_string().unwrap_or_default(),
            ),
            Err(_) => (0, String::new()),
        }
    }

    /// (status, body) of a POST of `body` with the token, if any.
    pub fn post(&self, path: &str, token: Option<&str>, body: &[u8]) -> (u16, String) {
        let mut req = Self::agent()
            .post(format!("{}{path}", self.url()))
            .header("Content-Type", "application/json");
        if let Some(t) = token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        match req.send(body) {
            Ok(mut r) => (
                r.status().as_u16(),
                r.body_mut().read_to_string().unwrap_or_default(),
            ),
            Err(_) => (0, String::new()),
        }
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.kill();
    }
}
