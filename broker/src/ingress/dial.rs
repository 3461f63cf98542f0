//! `dial+tcp://HOST:PORT`, `dial+unix:///path`, `dial+tls://HOST:PORT`: connect out to a
//! sender that listens, such as CoreDNS `dnstap listen` (`listen tls://` with `tls CERT
//! KEY CA` for the TLS form). tapbus stays the Frame Streams reader (the sender still
//! sends READY first); on any end or failure it reconnects with exponential backoff
//! (`reconnect_min` doubling to `reconnect_max`, with jitter: [`tapbus_bus::backoff`]).

use std::future::Future;
use std::path::PathBuf;

use tapbus_bus::backoff::Backoff as Delays;
use tapbus_config::Backoff;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::task::JoinHandle;

use super::{Shared, run_logged};
use crate::metrics::InputMetrics;
use crate::session::End;

pub fn start_tcp(addr: String, b: Backoff, im: InputMetrics, shared: Shared) -> JoinHandle<()> {
    let peer = format!("dial+tcp:{addr}");
    tokio::spawn(dial_loop(peer, b, im, shared, move || {
        let addr = addr.clone();
        async move {
            let s = tokio::net::TcpStream::connect(&addr).await?;
            let _ = s.set_nodelay(true);
            Ok(s)
        }
    }))
}

pub fn start_unix(path: PathBuf, b: Backoff, im: InputMetrics, shared: Shared) -> JoinHandle<()> {
    let peer = format!("dial+unix:{}", path.display());
    tokio::spawn(dial_loop(peer, b, im, shared, move || {
        let path = path.clone();
        async move { tokio::net::UnixStream::connect(&path).await }
    }))
}

/// `dial+tls://`: TCP, then the TLS handshake (the sender's certificate verified against
/// `tls_ca` or the system's bundle; our certificate presented when configured). A failed
/// handshake is logged and counted (`tapbus_malformed_total{reason="tls_handshake"}`),
/// and retried with the backoff.
pub fn start_tls(
    addr: String,
    b: Backoff,
    connector: tokio_rustls::TlsConnector,
    server_name: rustls_pki_types::ServerName<'static>,
    im: InputMetrics,
    shared: Shared,
) -> JoinHandle<()> {
    let peer = format!("dial+tls:{addr}");
    let metrics = im.clone();
    tokio::spawn(dial_loop(peer.clone(), b, im, shared, move || {
        let (addr, connector, name) = (addr.clone(), connector.clone(), server_name.clone());
        let (metrics, peer) = (metrics.clone(), peer.clone());
        async move {
            let s = tokio::net::TcpStream::connect(&addr).await?;
            let _ = s.set_nodelay(true);
            match connector.connect(name, s).await {
                Ok(t) => Ok(t),
                Err(e) => {
                    metrics.malformed("tls_handshake");
                    tracing::warn!(input = %metrics.name, %peer, "TLS handshake failed: {e}");
                    Err(e)
                }
            }
        }
    }))
}

/// The TLS client of a `dial+tls://` input; errors name the key.
pub fn connector(
    tls: &tapbus_config::DialTlsSpec,
) -> Result<
    (
        tokio_rustls::TlsConnector,
        rustls_pki_types::ServerName<'static>,
    ),
    String,
> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use std::sync::Arc;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = if tls.skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
    } else {
        let mut roots = rustls::RootCertStore::empty();
        match &tls.ca {
            Some(ca) => {
                for c in CertificateDer::pem_file_iter(ca)
                    .map_err(|e| format!("tls_ca {}: {e}", ca.display()))?
                {
                    let c = c.map_err(|e| format!("tls_ca {}: {e}", ca.display()))?;
                    roots
                        .add(c)
                        .map_err(|e| format!("tls_ca {}: {e}", ca.display()))?;
                }
                if roots.is_empty() {
                    return Err(format!("tls_ca {}: no certificate found", ca.display()));
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                for c in found.certs {
                    let _ = roots.add(c);
                }
                if roots.is_empty() {
                    return Err("tls_ca: not set and no system CA bundle found".into());
                }
            }
        }
        builder.with_root_certificates(roots)
    };
    let cfg = match &tls.client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
                .and_then(|it| it.collect())
                .map_err(|e| format!("tls_cert {}: {e}", cert.display()))?;
            if certs.is_empty() {
                return Err(format!("tls_cert {}: no certificate found", cert.display()));
            }
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| format!("tls_key {}: {e}", key.display()))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| format!("tls_cert/tls_key: {e}"))?
        }
    };
    let name = ServerName::try_from(tls.server_name.clone())
        .map_err(|e| format!("tls_server_name {:?}: {e}", tls.server_name))?;
    Ok((tokio_rustls::TlsConnector::from(Arc::new(cfg)), name))
}

/// `tls_skip_verify = true`: every sender certificate is accepted (signatures are still
/// checked, so the session keys are the sender's).
#[derive(Debug)]
struct AnyCert(std::sync::Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls_pki_types::CertificateDer<'_>,
        _intermediates: &[rustls_pki_types::CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

async fn dial_loop<S, F, Fut>(
    peer: String,
    b: Backoff,
    im: InputMetrics,
    shared: Shared,
    connect: F,
) where
    S: AsyncRead + AsyncWrite + Send + Unpin,
    F: Fn() -> Fut,
    Fut: Future<Output = std::io::Result<S>>,
{
    let mut delays = Delays::new(b.min, b.max);
    loop {
        let attempt = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            r = tokio::time::timeout(shared.handshake_timeout, connect()) => r,
        };
        match attempt {
            Ok(Ok(stream)) => {
                let (r, w) = tokio::io::split(stream);
                let res = run_logged(r, w, peer.clone(), im.clone(), &shared, false).await;
                if matches!(res, Ok(End::Shutdown)) {
                    return;
                }
                // A session that got going resets the backoff.
                delays.reset();
            }
            Ok(Err(e)) => {
                let delay = delays.peek();
                tracing::debug!(input = %im.name, %peer, "connect failed: {e}; retrying in {delay:?}");
            }
            Err(_) => {
                let delay = delays.peek();
                tracing::debug!(input = %im.name, %peer, "connect timed out; retrying in {delay:?}")
            }
        }
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = tokio::time::sleep(delays.next_delay()) => {}
        }
    }
}
