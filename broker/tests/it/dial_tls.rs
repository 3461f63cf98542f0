//! `dial+tls://`: the broker dials a TLS `dnstap listen` sender (CoreDNS `dnstap listen
//! tls://... { tls CERT KEY CA }`) that requires a client certificate (mTLS). The test
//! captures arrive complete on NATS; the sender restarting is survived; a broker without
//! a client certificate, or with one of another CA, is refused by the sender, and the
//! broker logs and counts the refusal.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tapbus_testsupport::pki::PkiFiles;
use tokio::net::TcpListener;

use crate::harness::*;

/// The sender's TLS side: its certificate, and client certificates must chain to `ca`.
fn acceptor(pki: &PkiFiles) -> tokio_rustls::TlsAcceptor {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&pki.server_cert)
        .expect("cert")
        .collect::<Result<_, _>>()
        .expect("certs");
    let key = PrivateKeyDer::from_pem_file(&pki.server_key).expect("key");
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(&pki.ca).expect("ca") {
        roots.add(c.expect("ca cert")).expect("add");
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .expect("verifier");
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .expect("server config");
    tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
}

/// A `dnstap listen tls://` sender on `port`: for each client that completes the TLS
/// handshake, the capture's frames as a bidirectional Frame Streams writer, `rounds` times;
/// handshakes it refuses are counted in `refused`.
async fn sender(
    port: u16,
    pki: &PkiFiles,
    frames: Vec<bytes::Bytes>,
    rounds: usize,
    refused: Arc<AtomicUsize>,
) {
    let listener = TcpListener::bind(("127.0.0.1", port)).await.expect("bind");
    let acc = acceptor(pki);
    let mut served = 0;
    while served < rounds {
        let (s, _) = tokio::time::timeout(Duration::from_secs(20), listener.accept())
            .await
            .expect("the broker dials within 20s")
            .expect("accept");
        match acc.accept(s).await {
            Ok(mut t) => {
                write_stream(&mut t, &frames).await;
                served += 1;
            }
            Err(_) => {
                refused.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

fn dial_args(port: u16, pki: &PkiFiles) -> Vec<(String, String)> {
    vec![
        (
            "TAPBUS_INPUTS__CDNS__URL".into(),
            format!("dial+tls://127.0.0.1:{port}"),
        ),
        (
            "TAPBUS_INPUTS__CDNS__TLS_CA".into(),
            pki.ca.display().to_string(),
        ),
        ("TAPBUS_INPUTS__CDNS__RECONNECT_MAX".into(), "500ms".into()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captures_arrive_through_a_tls_listener_with_mtls_and_survive_its_restart() {
    let nats = Nats::start();
    let pki = tapbus_testsupport::pki::TestPki::generate();
    let port = free_port();
    let mut env = dial_args(port, &pki.files);
    env.push((
        "TAPBUS_INPUTS__CDNS__TLS_CERT".into(),
        pki.files.client_cert.display().to_string(),
    ));
    env.push((
        "TAPBUS_INPUTS__CDNS__TLS_KEY".into(),
        pki.files.client_key.display().to_string(),
    ));
    env.push(("TAPBUS_OUTPUTS__NATS__URL".into(), nats.url().to_string()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let broker = Broker::start_env(&[], &env);
    let mut sub = Sub::start(nats.url(), "dnstap.>").await;
    let refused = Arc::new(AtomicUsize::new(0));
    for (round, name) in ["kresd.fstrm", "dnsdist.fstrm"].iter().enumerate() {
        // Each round is a new listener on the same port: the broker reconnects.
        let frames = data_frames(&capture(name));
        let reference = reference_events(&capture(name));
        sender(port, &pki.files, frames, 1, refused.clone()).await;
        let got = sub.collect(reference.len(), Duration::from_secs(15)).await;
        assert_eq!(got.len(), reference.len(), "round {round}: {name}");
        for ((_, ev), want) in got.iter().zip(&reference) {
            assert_eq!(key(ev), key(want));
            assert!(
                ev["dnstap"]["peer-name"]
                    .as_str()
                    .is_some_and(|p| p.starts_with("dial+tls:")),
                "{ev}"
            );
        }
    }
    assert_eq!(refused.load(Ordering::Relaxed), 0);
    assert_eq!(broker.metric("tapbus_dropped_total", &[]), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_without_the_right_client_certificate_is_refused_logged_and_counted() {
    let pki = tapbus_testsupport::pki::TestPki::generate();
    let other = tapbus_testsupport::pki::TestPki::generate();
    for (what, cert) in [
        ("no client certificate", None),
        ("a certificate of another CA", Some(&other.files)),
    ] {
        let port = free_port();
        let mut env = dial_args(port, &pki.files);
        if let Some(o) = cert {
            env.push((
                "TAPBUS_INPUTS__CDNS__TLS_CERT".into(),
                o.client_cert.display().to_string(),
            ));
            env.push((
                "TAPBUS_INPUTS__CDNS__TLS_KEY".into(),
                o.client_key.display().to_string(),
            ));
        }
        env.push(("TAPBUS_OUTPUTS__STDOUT__URL".into(), "stdout".into()));
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let broker = Broker::start_env(&[], &env);
        let refused = Arc::new(AtomicUsize::new(0));
        let listener = TcpListener::bind(("127.0.0.1", port)).await.expect("bind");
        let acc = acceptor(&pki.files);
        // Two attempts refused: the broker goes on trying with its backoff.
        for _ in 0..2 {
            let (s, _) = tokio::time::timeout(Duration::from_secs(20), listener.accept())
                .await
                .expect("the broker dials")
                .expect("accept");
            if acc.accept(s).await.is_err() {
                refused.fetch_add(1, Ordering::Relaxed);
            }
        }
        assert_eq!(
            refused.load(Ordering::Relaxed),
            2,
            "{what}: refused by the sender"
        );
        wait_until_async(
            "the refusal logged and counted",
            Duration::from_secs(10),
            || {
                let counted = broker.metric("tapbus_malformed_total", &["input=\"cdns\""]) >= 1.0;
                let log = broker.log_text();
                counted
                    && (log.contains("TLS handshake failed")
                        || log.contains("dnstap connection closed"))
            },
        )
        .await;
        assert_eq!(broker.metric("tapbus_events_total", &[]), 0.0, "{what}");
    }
}

#[test]
fn tls_keys_are_checked_naming_the_key() {
    let run = |env: &[(&str, &str)]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tapbus-broker"))
            .args(["--check", "-o", "stdout"])
            .envs(env.iter().copied())
            .output()
            .expect("run broker");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let url = ("TAPBUS_INPUTS__X__URL", "dial+tls://127.0.0.1:6000");
    let (code, err, _) = run(&[url, ("TAPBUS_INPUTS__X__TLS_CERT", "/etc/hostname")]);
    assert_eq!(code, Some(2));
    assert!(err.contains("inputs.x.tls_cert"), "{err}");
    let (code, err, _) = run(&[
        ("TAPBUS_INPUTS__X__URL", "dial+tcp://127.0.0.1:6000"),
        ("TAPBUS_INPUTS__X__TLS_CA", "/etc/hostname"),
    ]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("inputs.x.tls_ca: only applies to dial+tls://"),
        "{err}"
    );
    let (code, _, out) = run(&[url, ("TAPBUS_INPUTS__X__TLS_SKIP_VERIFY", "true")]);
    assert_eq!(code, Some(0));
    assert!(
        out.contains("dial+tls:127.0.0.1:6000 (server name 127.0.0.1, NOT VERIFIED)"),
        "{out}"
    );
}
