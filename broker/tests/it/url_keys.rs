//! Output URLs that carry their keys, as a first command line writes them: a JetStream
//! output with its stream, subject and password all in one `--output` URL, and a Redis
//! list from the URL alone. Each against its own server on a free port.

use std::time::Duration;

use crate::harness::*;

/// `-o 'nats://USER:PASSWORD@HOST:PORT/SUBJECT?jetstream=true&stream=S&stream_subjects=..'`
/// against a nats-server that requires that password: the stream is created, holds every
/// event on the URL's subject, and the password never reaches the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_url_makes_a_jetstream_output_with_a_password() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("js");
    let nats = Nats::start_with(&[
        "-js",
        "-sd",
        store.to_str().expect("utf-8"),
        "--user",
        "tapbus",
        "--pass",
        "s3cret-pw",
    ]);
    let port = nats.port();
    let sock = dir.path().join("dnstap.sock");
    let url = format!(
        "nats://tapbus:s3cret-pw@127.0.0.1:{port}/dns.{{identity}}.{{operation}}?jetstream=true&stream=DNS&stream_subjects=dns.>"
    );
    let broker = Broker::start_unix(&sock, None, &url);
    broker.wait_log("the stream created", |l| {
        l.contains("JetStream stream ready")
    });
    let name = "bind-auth.fstrm";
    let n = expected_count(name);
    replay_unix(&capture(name), &sock).await;
    broker.wait_metric("tapbus_published_total", &["output=\"nats\""], n as f64);
    assert_eq!(broker.metric("tapbus_dropped_total", &[]), 0.0);
    let client =
        async_nats::ConnectOptions::with_user_and_password("tapbus".into(), "s3cret-pw".into())
            .connect(nats.url())
            .await
            .expect("connect with the password");
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream("DNS").await.expect("stream DNS exists");
    let info = stream.info().await.expect("stream info").clone();
    assert_eq!(info.config.subjects, ["dns.>"]);
    assert_eq!(info.state.messages, n as u64);
    let last = stream
        .get_raw_message(info.state.last_sequence)
        .await
        .expect("last message");
    assert!(last.subject.starts_with("dns."), "{}", last.subject);
    let log = broker.log_text();
    assert!(!log.contains("s3cret-pw"), "the password is logged:\n{log}");
    assert!(log.contains("NATS connected"), "{log}");
}

/// `-o 'redis://HOST:PORT?mode=list&key=K'`: every event is RPUSHed to K (the issue was a
/// silent PUBLISH that left the list empty).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_url_makes_a_redis_list_output() {
    let dir = tempfile::tempdir().expect("tempdir");
    let redis = Redis::start();
    let sock = dir.path().join("dnstap.sock");
    let url = format!("{}?mode=list&key=fromurl", redis.url());
    let broker = Broker::start_unix(&sock, None, &url);
    let name = "bind-auth.fstrm";
    let n = expected_count(name);
    replay_unix(&capture(name), &sock).await;
    broker.wait_metric("tapbus_published_total", &["output=\"redis\""], n as f64);
    let client = redis::Client::open(redis.url()).expect("client");
    let mut con = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let len: usize = tokio::time::timeout(
        Duration::from_secs(10),
        redis::cmd("LLEN").arg("fromurl").query_async(&mut con),
    )
    .await
    .expect("in time")
    .expect("LLEN");
    assert_eq!(len, n);
}

/// What a typo or a refused combination does: exit 2 at start, naming the key, with
/// nothing published.
#[test]
fn bad_output_urls_stop_the_broker_naming_the_key() {
    for (url, want) in [
        (
            "redis://127.0.0.1:6379?mode=list&keys=dnstap",
            "outputs.redis.url: unknown parameter \"keys\"",
        ),
        (
            "nats://127.0.0.1:4222/my.subject?jetstream=true",
            "outputs.nats.stream_subjects: [\"dnstap.>\"] stores none of the subjects \"my.subject\"",
        ),
        (
            "jetstream://127.0.0.1:4222/DNSTAP",
            "nats://HOST:PORT?jetstream=true&stream=DNSTAP",
        ),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tapbus-broker"))
            .args(["-i", "tcp://127.0.0.1:6000", "-o", url, "--check"])
            .output()
            .expect("run broker");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{url}: {err}");
        assert!(err.contains(want), "{url}: {err}");
    }
    // --check shows what a URL resolved to, without its password.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tapbus-broker"))
        .args(["-i", "tcp://127.0.0.1:6000", "--check"])
        .args([
            "-o",
            "nats://u:pw-xyz@127.0.0.1:4222?jetstream=true&stream=S",
        ])
        .args([
            "-o",
            "redis://127.0.0.1:6379/1?mode=stream&key=ev&max_len=9",
        ])
        .output()
        .expect("run broker");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(
            "nats=nats://127.0.0.1:4222 jetstream stream=S stream_subjects=dnstap.> subject=dnstap.{identity}.{operation}"
        ),
        "{text}"
    );
    assert!(
        text.contains("redis=redis://127.0.0.1:6379/1 mode=stream key=ev max_len=9"),
        "{text}"
    );
    assert!(!text.contains("pw-xyz"), "{text}");
}
