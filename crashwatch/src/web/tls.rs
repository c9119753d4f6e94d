//! HTTPS for a listener (the hub's `--tls-cert`/`--tls-key`): rustls with the ring provider
//! (the one ureq's client uses already, so no second crypto library), TLS 1.2 and 1.3, HTTP/1.1.
//!
//! The certificate and key are PEM files as cert-manager or an operator writes them. They
//! are read again when either file changes (checked every [`RECHECK`]), so a rotated
//! certificate takes effect without a restart; a rotation caught half-written, or a key that
//! does not match its certificate, is said and the previous pair stays in use. A start-up
//! with a bad pair is refused.
//!
//! axum's `serve` speaks plain TCP only, hence the accept loop here: each connection gets
//! [`RECHECK`]-bounded handshake time, then hyper serves it with the peer's address as
//! axum's `ConnectInfo`, as `serve` would give it (the loopback rule reads it).
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::{Duration, SystemTime},
};

use anyhow::{Context, Result};
use axum::{extract::ConnectInfo, Router};
use rustls::{
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};

/// How often the files are looked at for a rotation; also a handshake's time limit.
pub const RECHECK: Duration = Duration::from_secs(10);
/// Requests' headers must arrive within this (a slow client holds no connection forever).
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// The certificate in use, and the files it came from.
#[derive(Debug)]
pub struct Certificate {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<(Arc<CertifiedKey>, Option<SystemTime>)>,
}

fn changed(cert: &Path, key: &Path) -> Option<SystemTime> {
    let m = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    m(cert).max(m(key))
}

/// The certificates of the PEM file `path` given as `flag`: at least one.
pub fn pem_certs(path: &Path, flag: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("{flag} {}: not PEM certificates", path.display()))?;
    if certs.is_empty() {
        anyhow::bail!("{flag} {}: no certificate in it", path.display());
    }
    Ok(certs)
}

/// Reads and checks the pair.
fn load(cert: &Path, key: &Path) -> Result<CertifiedKey> {
    let chain = pem_certs(cert, "--tls-cert")?;
    let private = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("--tls-key {}: not a PEM private key", key.display()))?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&private)
        .with_context(|| format!("--tls-key {}: a key type rustls signs with", key.display()))?;
    let pair = CertifiedKey::new(chain, signer);
    pair.keys_match()
        .with_context(|| "--tls-key does not match --tls-cert's certificate".to_string())?;
    Ok(pair)
}

impl Certificate {
    /// The pair at `cert` and `key`; Err: why it cannot serve.
    pub fn open(cert: PathBuf, key: PathBuf) -> Result<Arc<Certificate>> {
        let pair = load(&cert, &key)?;
        let at = changed(&cert, &key);
        Ok(Arc::new(Certificate {
            cert,
            key,
            current: RwLock::new((Arc::new(pair), at)),
        }))
    }

    /// Takes a changed pair; keeps the old one (and says why) when the new one is bad.
    pub fn recheck(&self) {
        let at = changed(&self.cert, &self.key);
        let known = self.current.read().map(|c| c.1).unwrap_or(None);
        if at == known {
            return;
        }
        match load(&self.cert, &self.key) {
            Ok(pair) => {
                if let Ok(mut c) = self.current.write() {
                    *c = (Arc::new(pair), at);
                }
                tracing::info!(
                    "TLS: took the rotated certificate from {}",
                    self.cert.display()
                );
            }
            Err(e) => {
                // Said once per change of the files, not at every check.
                if let Ok(mut c) = self.current.write() {
                    c.1 = at;
                }
                tracing::warn!(
                    "TLS: the changed certificate is not taken ({e:#}); serving the previous one"
                );
            }
        }
    }

    /// The server side of rustls over this certificate.
    fn config(self: &Arc<Self>) -> Result<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS versions")?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(cfg)
    }
}

impl ResolvesServerCert for Certificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|c| c.0.clone())
    }
}

/// Serves `app` over TLS on `listener` until the runtime ends.
pub async fn serve(
    listener: tokio::net::TcpListener,
    cert: Arc<Certificate>,
    app: Router,
) -> Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cert.config()?));
    let watched = cert.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(RECHECK).await;
            let w = watched.clone();
            let _ = tokio::task::spawn_blocking(move || w.recheck()).await;
        }
    });
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors and the like: wait rather than spin.
                tracing::warn!("accepting a connection failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (acceptor, app) = (acceptor.clone(), app.clone());
        tokio::spawn(connection(tcp, peer, acceptor, app));
    }
}

async fn connection(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    acceptor: tokio_rustls::TlsAcceptor,
    app: Router,
) {
    let stream = match tokio::time::timeout(RECHECK, acceptor.accept(tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!("TLS handshake with {peer} failed: {e}");
            return;
        }
        Err(_) => return,
    };
    let app = app.layer(axum::Extension(ConnectInfo(peer)));
    let service = hyper_util::service::TowerToHyperService::new(app);
    let served = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
        .await;
    if let Err(e) = served {
        tracing::debug!("HTTPS connection from {peer}: {e}");
    }
}
