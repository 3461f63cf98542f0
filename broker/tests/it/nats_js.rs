//! The NATS output with JetStream, authentication and TLS, each against its own
//! nats-server (Debian 2.9.10) on a free port.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;

use crate::harness::*;

fn write_server_conf(dir: &Path, body: &str) -> String {
    let p = dir.join("server.conf");
    std::fs::write(&p, body).expect("write server.conf");
    p.to_str().expect("utf-8 path").to_string()
}

async fn replay(file: &Path, sock: &Path) {
    replay_unix(file, sock).await
}

/// Subscribes to `dnstap.>` with the given options (bounded wait).
pub(crate) async fn subscribe(
    opts: async_nats::ConnectOptions,
    url: &str,
) -> (async_nats::Client, async_nats::Subscriber) {
    let client = tokio::time::timeout(
        Duration::from_secs(10),
        opts.subscription_capacity(1 << 20).connect(url),
    )
    .await
    .expect("subscriber connects within 10s")
    .expect("subscriber connect");
    let sub = client
        .subscribe("dnstap.>".to_string())
        .await
        .expect("subscribe");
    client.flush().await.expect("flush");
    (client, sub)
}

async fn collect(sub: &mut async_nats::Subscriber, n: usize) -> Vec<serde_json::Value> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        match tokio::time::timeout(Duration::from_secs(10), sub.next()).await {
            Ok(Some(m)) => out.push(serde_json::from_slice(&m.payload).expect("JSON event")),
            _ => break,
        }
    }
    out
}

/// Every message the stream holds, oldest first.
pub(crate) async fn stream_messages(
    url: &str,
    name: &str,
) -> Vec<async_nats::jetstream::message::StreamMessage> {
    let client = async_nats::connect(url).await.expect("connect");
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream(name).await.expect("stream exists");
    let state = stream.info().await.expect("stream info").state.clone();
    let mut out = Vec::with_capacity(state.messages as usize);
    if state.messages > 0 {
        for seq in state.first_sequence..=state.last_sequence {
            out.push(stream.get_raw_message(seq).await.expect("stored message"));
        }
    }
    assert_eq!(out.len() as u64, state.messages, "messages stored");
    out
}

/// Starts a broker whose NATS output is `body` (its unix socket in `dir`), waits until the
/// output is up, subscribes with `opts` at `sub_url`, replays bind-auth.fstrm and checks
/// that every event arrives, in order, equal to the in-process decode.
async fn assert_delivers(
    dir: &Path,
    body: &str,
    opts: async_nats::ConnectOptions,
    sub_url: &str,
) -> Broker {
    let sock = dir.join("dnstap.sock");
    let cfg = write_config_nats(dir, &sock, body);
    let broker = Broker::start(&["-c", cfg.to_str().expect("utf-8 path")]);
    broker.wait_metric("tapbus_output_up", &["output=\"nats\""], 1.0);
    let (_c, mut sub) = subscribe(opts, sub_url).await;
    let name = "bind-auth.fstrm";
    let file = capture(name);
    replay(&file, &sock).await;
    let got = collect(&mut sub, expected_count(name)).await;
    assert_same(name, &got, &reference_events(&file));
    broker
}

fn assert_same(name: &str, got: &[serde_json::Value], reference: &[serde_json::Value]) {
    assert_eq!(got.len(), reference.len(), "{name}: event count");
    let schema = validator();
    for (i, (ev, want)) in got.iter().zip(reference).enumerate() {
        assert_valid(&schema, ev);
        assert_eq!(key(ev), key(want), "{name}: message {i} differs");
    }
}

/// JetStream: the output creates the stream, every event is stored (acknowledged) once, in
/// order, equal to the in-process decode, with a Nats-Msg-Id; `published` counts the acks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_stores_every_event_in_order() {
    // The temporary directories are bound so they live to the end of the test.
    let JsSetup {
        nats,
        broker,
        sock,
        _store,
        _dir,
    } = jetstream_setup("stream = \"DNSTAP\"\nstream_max_age = \"1h\"\nack_window = 256\n");
    broker.wait_log("the stream created", |l| {
        l.contains("JetStream stream ready")
    });

    let name = "bind-resolver.fstrm";
    let file = capture(name);
    let n = expected_count(name);
    let reference = reference_events(&file);
    assert_eq!(reference.len(), n);
    replay(&file, &sock).await;
    broker.wait_metric("tapbus_published_total", &["output=\"nats\""], n as f64);
    assert_eq!(
        broker.metric("tapbus_published_total", &["output=\"nats\""]),
        n as f64
    );
    assert_eq!(broker.metric("tapbus_dropped_total", &[]), 0.0);

    let client = async_nats::connect(nats.url()).await.expect("connect");
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream("DNSTAP").await.expect("stream exists");
    let info = stream.info().await.expect("stream info");
    assert_eq!(info.config.subjects, vec!["dnstap.>".to_string()]);
    assert_eq!(info.config.max_age, Duration::from_secs(3600));
    let mut got = Vec::with_capacity(n);
    let mut ids = std::collections::HashSet::new();
    for m in stream_messages(nats.url(), "DNSTAP").await {
        let id = m
            .headers
            .get("Nats-Msg-Id")
            .map(|v| v.to_string())
            .expect("Nats-Msg-Id header");
        assert!(ids.insert(id), "message ids are unique");
        got.push(serde_json::from_slice(&m.payload).expect("JSON event"));
    }
    assert_same(name, &got, &reference);
}

/// JetStream without a JetStream-enabled server: the broker stays up, says once why it
/// waits, retries, and makes the stream once JetStream is on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_unavailable_is_logged_and_retried() {
    let nats = Nats::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("dnstap.sock");
    let cfg = write_config_nats(
        dir.path(),
        &sock,
        &format!("url = \"{}\"\njetstream = true\n", nats.url()),
    );
    let mut broker = Broker::start(&["-c", cfg.to_str().expect("utf-8 path")]);
    let waiting = format!("waiting for stream DNSTAP on {}", nats.url());
    broker.wait_log("the waiting line", |l| l.contains(&waiting));
    assert!(broker.is_running());
    // It keeps trying: JetStream on (same port) and the stream is made, with the wait
    // logged once.
    let port = nats.port();
    nats.terminate();
    let store = tempfile::tempdir().expect("tempdir");
    let sd = store.path().to_path_buf();
    let _nats = tokio::task::spawn_blocking(move || Nats::start_jetstream_on(port, &sd))
        .await
        .expect("start nats");
    broker.wait_log("the stream", |l| l.contains("JetStream stream ready"));
    let log = broker.log_text();
    assert_eq!(log.matches(&waiting).count(), 1, "{log}");
}

/// user/password: the right ones deliver; a wrong password leaves the output down and the
/// log says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_password_auth() {
    let dir = tempfile::tempdir().expect("tempdir");
    let conf = write_server_conf(dir.path(), "authorization { user: a, password: b }\n");
    let nats = Nats::start_with(&["-c", &conf]);
    let broker = assert_delivers(
        dir.path(),
        &format!(
            "url = \"{}\"\nusername = \"a\"\npassword = \"b\"\n",
            nats.url()
        ),
        async_nats::ConnectOptions::with_user_and_password("a".into(), "b".into()),
        nats.url(),
    )
    .await;
    drop(broker);

    let dir2 = tempfile::tempdir().expect("tempdir");
    let sock2 = dir2.path().join("dnstap.sock");
    let cfg = write_config_nats(
        dir2.path(),
        &sock2,
        &format!(
            "url = \"{}\"\nusername = \"a\"\npassword = \"wrong\"\n",
            nats.url()
        ),
    );
    let mut broker = Broker::start(&["-c", cfg.to_str().expect("utf-8 path")]);
    broker.wait_log("an authorization error", |l| {
        l.to_lowercase().contains("authorization violation")
    });
    assert_eq!(
        broker.metric("tapbus_output_up", &["output=\"nats\""]),
        0.0,
        "{}",
        broker.metrics()
    );
    assert!(broker.is_running());
}

/// Token authentication.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_auth() {
    let dir = tempfile::tempdir().expect("tempdir");
    let conf = write_server_conf(dir.path(), "authorization { token: s3cret }\n");
    let nats = Nats::start_with(&["-c", &conf]);
    assert_delivers(
        dir.path(),
        &format!("url = \"{}\"\ntoken = \"s3cret\"\n", nats.url()),
        async_nats::ConnectOptions::with_token("s3cret".into()),
        nats.url(),
    )
    .await;
}

/// TLS: nats-server with a certificate from a test CA; the broker dials tls:// and
/// verifies the server with tls_ca.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_ca() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    write_test_pki(d);
    let conf = write_server_conf(
        d,
        &format!(
            "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n}}\n",
            d.join("server.pem").display(),
            d.join("server.key").display()
        ),
    );
    let nats = Nats::start_with(&["-c", &conf]);
    let url = format!("tls://127.0.0.1:{}", nats.port());
    assert_delivers(
        d,
        &format!(
            "url = \"{url}\"\ntls_ca = \"{}\"\n",
            d.join("ca.pem").display()
        ),
        async_nats::ConnectOptions::new()
            .add_root_certificates(d.join("ca.pem"))
            .require_tls(true),
        &url,
    )
    .await;
}

/// Mutual TLS: nats-server verifies client certificates; the broker presents tls_cert and
/// tls_key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_client_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    write_test_pki(d);
    let conf = write_server_conf(
        d,
        &format!(
            "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  ca_file: \"{}\"\n  verify: true\n}}\n",
            d.join("server.pem").display(),
            d.join("server.key").display(),
            d.join("ca.pem").display()
        ),
    );
    let nats = Nats::start_with(&["-c", &conf]);
    let url = format!("tls://127.0.0.1:{}", nats.port());
    assert_delivers(
        d,
        &format!(
            "url = \"{url}\"\ntls_ca = \"{}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
            d.join("ca.pem").display(),
            d.join("client.pem").display(),
            d.join("client.key").display()
        ),
        async_nats::ConnectOptions::new()
            .add_root_certificates(d.join("ca.pem"))
            .add_client_certificate(d.join("client.pem"), d.join("client.key"))
            .require_tls(true),
        &url,
    )
    .await;
}

/// JetStream server restart: what could not be acknowledged is counted, the broker stays
/// up, reconnects, and stores again into the same stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_restart_is_survived() {
    let store = tempfile::tempdir().expect("tempdir");
    let nats = Nats::start_jetstream(store.path());
    let port = nats.port();
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("dnstap.sock");
    let cfg = write_config_nats(
        dir.path(),
        &sock,
        &format!("url = \"{}\"\njetstream = true\n", nats.url()),
    );
    let mut broker = Broker::start(&["-c", cfg.to_str().expect("utf-8 path")]);
    broker.wait_metric("tapbus_output_up", &["output=\"nats\""], 1.0);
    let name = "bind-auth.fstrm";
    let file = capture(name);
    let n = expected_count(name) as f64;
    replay(&file, &sock).await;
    broker.wait_metric("tapbus_published_total", &["output=\"nats\""], n);

    drop(nats);
    replay(&file, &sock).await;
    broker.wait_metric("tapbus_events_total", &[], 2.0 * n);
    assert!(broker.is_running());

    let nats = Nats::start_jetstream_on(port, store.path());
    broker.wait_metric("tapbus_output_up", &["output=\"nats\""], 1.0);
    replay(&file, &sock).await;
    // Every event is either acknowledged or counted as dropped, within bounded time.
    let t0 = std::time::Instant::now();
    loop {
        let published = broker.metric("tapbus_published_total", &["output=\"nats\""]);
        let dropped = broker.metric("tapbus_dropped_total", &["output=\"nats\""]);
        if published >= 2.0 * n && published + dropped >= 3.0 * n {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "published {published} dropped {dropped}\n{}",
            broker.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let client = async_nats::connect(nats.url()).await.expect("connect");
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream("DNSTAP").await.expect("stream exists");
    let stored = stream.info().await.expect("info").state.messages as f64;
    let published = broker.metric("tapbus_published_total", &["output=\"nats\""]);
    assert_eq!(stored, published, "every acknowledged event is stored");
}

/// NKey authentication: the broker reads the seed from the `nkey_seed` file. The pair was
/// generated for this test only (nkeys::KeyPair::new_user()).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nkey_auth() {
    const SEED: &str = "SUAN37HPW7O5JWCVLQV4YTENYXEIJBJOWD4QV5DR54I4ET7N5KKV72JNKI";
    const PUBLIC: &str = "UDIUPDTRG4RQLRUUOVHJMX6RHJ3NPAIU7BRS6NVFWKBETOSREDNINSA3";
    let dir = tempfile::tempdir().expect("tempdir");
    let conf = write_server_conf(
        dir.path(),
        &format!("authorization {{ users = [ {{ nkey: {PUBLIC} }} ] }}\n"),
    );
    let nats = Nats::start_with(&["-c", &conf]);
    let seed_file = dir.path().join("tapbus.nk");
    std::fs::write(&seed_file, format!("{SEED}\n")).expect("write seed");
    assert_delivers(
        dir.path(),
        &format!(
            "url = \"{}\"\nnkey_seed = \"{}\"\n",
            nats.url(),
            seed_file.display()
        ),
        async_nats::ConnectOptions::with_nkey(SEED.to_string()),
        nats.url(),
    )
    .await;
}

fn write_config_nats(dir: &Path, sock: &Path, body: &str) -> PathBuf {
    write_broker_config(dir, sock, "nats", body)
}

/// A JetStream nats-server and a broker publishing to it with the output settings `extra`.
struct JsSetup {
    nats: Nats,
    broker: Broker,
    sock: PathBuf,
    _store: tempfile::TempDir,
    _dir: tempfile::TempDir,
}

fn jetstream_setup(extra: &str) -> JsSetup {
    let store = tempfile::tempdir().expect("tempdir");
    let nats = Nats::start_jetstream(store.path());
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("dnstap.sock");
    let cfg = write_config_nats(
        dir.path(),
        &sock,
        &format!("url = \"{}\"\njetstream = true\n{extra}", nats.url()),
    );
    let broker = Broker::start(&["-c", cfg.to_str().expect("utf-8 path")]);
    broker.wait_metric("tapbus_output_up", &["output=\"nats\""], 1.0);
    JsSetup {
        nats,
        broker,
        sock,
        _store: store,
        _dir: dir,
    }
}

/// A stream that stores only some subjects: events on the others are never counted as
/// published (no ack ever confirms them); they are retried a bounded number of times, then
/// dropped and counted as `publish_error`. The stream holds exactly the events it covers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_subjects_outside_the_stream_are_counted_not_published() {
    // The temporary directories are bound so they live to the end of the test.
    let JsSetup {
        nats,
        broker,
        sock,
        _store,
        _dir,
    } = jetstream_setup("stream_subjects = [\"dnstap.*.client_query\"]\n");
    let name = "kresd.fstrm";
    let file = capture(name);
    let reference = reference_events(&file);
    let covered: Vec<&serde_json::Value> = reference
        .iter()
        .filter(|e| expected_subject(e).ends_with(".client_query"))
        .collect();
    let others = reference.len() - covered.len();
    assert!(!covered.is_empty() && others > 0, "{name} has both kinds");
    replay(&file, &sock).await;
    let (published, dropped) = broker.wait_settled("nats", reference.len());
    assert_eq!(published, covered.len());
    assert_eq!(dropped, others);
    assert_eq!(
        broker.metric(
            "tapbus_dropped_total",
            &["output=\"nats\"", "reason=\"publish_error\""]
        ),
        others as f64
    );
    let got: Vec<serde_json::Value> = stream_messages(nats.url(), "DNSTAP")
        .await
        .iter()
        .map(|m| serde_json::from_slice(&m.payload).expect("JSON event"))
        .collect();
    let covered: Vec<serde_json::Value> = covered.into_iter().cloned().collect();
    assert_same(name, &got, &covered);
    assert!(
        broker.log_text().contains("dropped after 3 attempts"),
        "{}",
        broker.log_text()
    );
}
