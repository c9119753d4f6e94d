//! `crashwatch hub`: the fleet's server ([`crate::hub`]); flags, start-up checks, the listener.
use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use clap::Args;

#[derive(Args, Debug)]
pub struct HubArgs {
    /// The PostgreSQL database (13+): `postgres://USER:PASSWORD@HOST:PORT/DB`, or the
    /// key=value form (`host=/run/postgresql dbname=crashwatch`). Better from the
    /// environment than on a command line others can read. `?sslmode=require` reaches it with
    /// TLS, the server's certificate checked against the system's roots and --database-ca.
    #[arg(long, env = "CRASHWATCH_HUB_DATABASE", hide_env_values = true)]
    database: String,
    /// CA certificates (PEM) the database's certificate may be signed by, beside the
    /// system's (a managed database's CA bundle; CloudNativePG's `<cluster>-ca` secret).
    #[arg(long)]
    database_ca: Option<std::path::PathBuf>,
    /// Where to serve agents, the API and /metrics (loopback by default; 0.0.0.0:9722 in a
    /// cluster, behind a Service).
    #[arg(long, default_value = crate::hub::DEFAULT_LISTEN)]
    listen: String,
    /// The token agents send reports and heartbeats with (its first line; at least 16
    /// characters). It can only write.
    #[arg(long)]
    ingest_token_file: PathBuf,
    /// The token the API's readers present (`Authorization: Bearer`). Without it, reads are
    /// answered to this host's loopback connections only. It can only read.
    #[arg(long)]
    read_token_file: Option<PathBuf>,
    /// A cluster that crashes this many times within --loop-window, fleet-wide, is a loop.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(2..))]
    loop_count: u32,
    /// Seconds of the crash-loop window (at most a week). The workload and node loop lists
    /// count it to the minute.
    #[arg(long, default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..=604_800))]
    loop_window: u64,
    /// Hours after a build's first crash in the fleet during which a cluster it opens (and
    /// its node blamed on that build) is marked a regression of it.
    #[arg(long, default_value_t = 24, value_parser = clap::value_parser!(u64).range(1..=8760))]
    regression_window_hours: u64,
    /// Reports kept per cluster (the latest); the cluster's count goes on.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    keep_per_cluster: u32,
    /// Days a report is kept.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    keep_days: u64,
    /// MiB the kept reports may take in the database; the oldest go first.
    #[arg(long, default_value_t = 10240, value_parser = clap::value_parser!(u64).range(1..))]
    store_max_mib: u64,
    /// Seconds between two retention passes (one replica at a time does one).
    #[arg(long, default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..))]
    retention_interval: u64,
    /// Serve HTTPS with this certificate (PEM, the chain after it), and --tls-key. Both
    /// files are read again when they change (a rotated certificate needs no restart).
    /// Without them the hub speaks plain HTTP: end TLS at an ingress in front of it, or keep
    /// it on loopback.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// The hub's own messages: text lines or JSON objects.
    #[arg(long, value_enum, default_value_t = crate::util::log::Format::Text)]
    log_format: crate::util::log::Format,
}

pub fn run(a: HubArgs) -> ExitCode {
    crate::util::log::init(a.log_format, crate::util::log::Level::Info);
    match start(a) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            crate::say!("crashwatch hub: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn start(a: HubArgs) -> anyhow::Result<()> {
    use anyhow::{bail, Context};
    let ingest_token = crate::web::read_token(&a.ingest_token_file)
        .with_context(|| format!("--ingest-token-file {}", a.ingest_token_file.display()))?;
    let read_token = match &a.read_token_file {
        Some(p) => Some(
            crate::web::read_token(p)
                .with_context(|| format!("--read-token-file {}", p.display()))?,
        ),
        None => None,
    };
    if read_token.as_deref() == Some(ingest_token.as_str()) {
        bail!(
            "--read-token-file and --ingest-token-file hold the same token: an agent's token \
             could then read every report; give them different tokens"
        );
    }
    let database = crate::hub::db::database(&a.database, a.database_ca.as_deref())?;
    let tls = match (a.tls_cert, a.tls_key) {
        (Some(cert), Some(key)) => Some(crate::web::tls::Certificate::open(cert, key)?),
        _ => None,
    };
    // One worker per CPU (at most 4): a replica parses and checks reports while others wait
    // on the database; one thread held a replica to one core (fleet-sim's ramp).
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get().min(4));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(&a.listen)
            .await
            .with_context(|| format!("--listen {}", a.listen))?;
        let addr: SocketAddr = listener.local_addr()?;
        let access = crate::web::Access::new(read_token);
        let scheme = if tls.is_some() { "https" } else { "http" };
        tracing::info!(
            "hub listening on {scheme}://{addr} (reads: {})",
            access.describe(addr)
        );
        let opts = crate::hub::Options {
            database,
            ingest_token,
            access,
            loop_count: a.loop_count,
            loop_window_ns: a.loop_window * 1_000_000_000,
            regression_window_ns: a.regression_window_hours * 3_600_000_000_000,
            retention: crate::hub::retain::Retention {
                keep_per_cluster: a.keep_per_cluster,
                keep_days: a.keep_days,
                max_bytes: a.store_max_mib << 20,
                every: std::time::Duration::from_secs(a.retention_interval),
                minutes_kept: (a.loop_window / 60 + 61) as i64,
            },
            tls,
        };
        tokio::select! {
            r = crate::hub::serve(listener, opts) => r,
            _ = stop() => Ok(()),
        }
    })
}

/// SIGTERM or SIGINT.
async fn stop() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
