//! `tls://HOST:PORT`: TCP with TLS (unbound `dnstap-tls: yes`, CoreDNS `tls://`), with
//! optional client-certificate verification (mTLS) against a configured CA.

use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use super::{Shared, spawn_connection};
use crate::metrics::InputMetrics;

/// Builds the TLS acceptor from PEM files; errors name the file.
pub fn acceptor(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<TlsAcceptor, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect())
        .map_err(|e| format!("tls_cert {}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("tls_cert {}: no certificate found", cert.display()));
    }
    let key =
        PrivateKeyDer::from_pem_file(key).map_err(|e| format!("tls_key {}: {e}", key.display()))?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca)
                .map_err(|e| format!("tls_client_ca {}: {e}", ca.display()))?
            {
                let c = c.map_err(|e| format!("tls_client_ca {}: {e}", ca.display()))?;
                roots
                    .add(c)
                    .map_err(|e| format!("tls_client_ca {}: {e}", ca.display()))?;
            }
            let v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| format!("tls_client_ca {}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(v)
        }
    };
    let cfg = builder
        .with_single_cert(certs, key)
        .map_err(|e| format!("tls_cert/tls_key: {e}"))?;
    Ok(TlsAcceptor::from(Arc::new(cfg)))
}

pub async fn start(
    addr: &str,
    acceptor: TlsAcceptor,
    im: InputMetrics,
    shared: Shared,
) -> Result<JoinHandle<()>, String> {
    let l = TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let local = l.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(input = %im.name, "listening on tls://{local}");
    Ok(tokio::spawn(async move {
        loop {
            let (s, peer) = tokio::select! {
                _ = shared.shutdown.cancelled() => return,
                r = l.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(input = %im.name, "accept failed: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                }
            };
            let _ = s.set_nodelay(true);
            // The TLS handshake runs in its own task so a slow client never delays accepts.
            let (acceptor, im, shared2) = (acceptor.clone(), im.clone(), shared.clone());
            shared.tasks.spawn(async move {
                let peer = format!("tls:{peer}");
                match tokio::time::timeout(shared2.handshake_timeout, acceptor.accept(s)).await {
                    Ok(Ok(tls)) => spawn_connection(tls, peer, &im, &shared2),
                    Ok(Err(e)) => {
                        im.malformed("tls_handshake");
                        tracing::warn!(input = %im.name, %peer, reason = "tls_handshake", "dnstap connection closed: TLS handshake failed: {e}");
                    }
                    Err(_) => {
                        im.malformed("tls_handshake");
                        tracing::warn!(input = %im.name, %peer, reason = "tls_handshake", "dnstap connection closed: TLS handshake timed out");
                    }
                }
            });
        }
    }))
}
