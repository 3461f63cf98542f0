//! TLS input with a generated certificate; with a client CA configured (mTLS), a client
//! without a certificate is refused and one with a certificate gets through.

use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::TlsConnector;

use crate::harness::*;

struct Pki {
    dir: tempfile::TempDir,
    ca_pem: String,
    client_cert: String,
    client_key: String,
}

fn pki() -> Pki {
    let dir = tempfile::tempdir().expect("tempdir");
    write_test_pki(dir.path());
    let read = |f: &str| std::fs::read_to_string(dir.path().join(f)).expect("read pki file");
    Pki {
        ca_pem: read("ca.pem"),
        client_cert: read("client.pem"),
        client_key: read("client.key"),
        dir,
    }
}

fn connector(p: &Pki, with_client_cert: bool) -> TlsConnector {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(p.ca_pem.as_bytes()).expect("ca"))
        .expect("add ca");
    let b = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let cfg = if with_client_cert {
        b.with_client_auth_cert(
            vec![CertificateDer::from_pem_slice(p.client_cert.as_bytes()).expect("cert")],
            PrivateKeyDer::from_pem_slice(p.client_key.as_bytes()).expect("key"),
        )
        .expect("client auth")
    } else {
        b.with_no_client_auth()
    };
    TlsConnector::from(Arc::new(cfg))
}

fn config(p: &Pki, port: u16, nats: &str, mtls: bool) -> std::path::PathBuf {
    let d = p.dir.path();
    let mut toml = format!(
        "[inputs.tls]\nurl = \"tls://127.0.0.1:{port}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
        d.join("server.pem").display(),
        d.join("server.key").display()
    );
    if mtls {
        toml.push_str(&format!(
            "tls_client_ca = \"{}\"\n",
            d.join("ca.pem").display()
        ));
    }
    toml.push_str(&format!("[outputs.nats]\nurl = \"{nats}\"\n"));
    let path = d.join(if mtls { "mtls.toml" } else { "tls.toml" });
    std::fs::write(&path, toml).expect("write config");
    path
}

/// A TLS connection to the broker's input, the server verified as `localhost`.
async fn connect(
    port: u16,
    c: &TlsConnector,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    c.connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .map_err(|e| e.to_string())
}

async fn send_over_tls(port: u16, c: &TlsConnector, frames: &[bytes::Bytes]) -> Result<(), String> {
    let mut tls = connect(port, c).await?;
    // With TLS 1.3 a refused client certificate shows up on the first read.
    let r = tokio::time::timeout(Duration::from_secs(10), async {
        use tapbus_testsupport::fstrm::{ControlType, DNSTAP_CONTENT_TYPE, control_bytes};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let ready = control_bytes(ControlType::Ready, &[DNSTAP_CONTENT_TYPE]);
        tls.write_all(&ready).await.map_err(|e| e.to_string())?;
        let mut buf = [0u8; 64];
        let n = tls.read(&mut buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed by the broker".to_string());
        }
        Ok(())
    })
    .await
    .map_err(|_| "timeout".to_string())?;
    r?;
    // Handshake answered: now do the real stream on a fresh connection.
    let mut tls = connect(port, c).await?;
    write_stream(&mut tls, frames).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_mtls() {
    let nats = Nats::start();
    let p = pki();
    let frames = data_frames(&capture("dnsdist.fstrm"));
    let reference = reference_events(&capture("dnsdist.fstrm"));
    let mut sub = Sub::start(nats.url(), "dnstap.>").await;

    // Plain TLS.
    let port = free_port();
    let cfg = config(&p, port, nats.url(), false);
    let broker = Broker::start(&["-c", cfg.to_str().expect("utf8")]);
    send_over_tls(port, &connector(&p, false), &frames)
        .await
        .expect("TLS client gets through");
    let got = sub.collect(reference.len(), Duration::from_secs(10)).await;
    assert_eq!(got.len(), reference.len());
    for ((_, ev), want) in got.iter().zip(&reference) {
        assert_eq!(key(ev), key(want));
    }
    drop(broker);

    // mTLS: no client certificate -> refused; with one -> accepted.
    let port = free_port();
    let cfg = config(&p, port, nats.url(), true);
    let broker = Broker::start(&["-c", cfg.to_str().expect("utf8")]);
    let refused = send_over_tls(port, &connector(&p, false), &frames).await;
    assert!(
        refused.is_err(),
        "a client without a certificate must be refused"
    );
    broker.wait_metric("tapbus_malformed_total", &["reason=\"tls_handshake\""], 1.0);
    assert!(sub.collect(1, Duration::from_millis(500)).await.is_empty());
    send_over_tls(port, &connector(&p, true), &frames)
        .await
        .expect("client with a certificate gets through");
    let got = sub.collect(reference.len(), Duration::from_secs(10)).await;
    assert_eq!(got.len(), reference.len());
    assert!(broker.log_text().contains("TLS handshake failed"));
}
