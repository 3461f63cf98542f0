//! JetStream durable pull consumers: created and bound again, shared by two processes,
//! redelivery after ack_wait, and `in_progress()` holding it off.

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use tapbus_bus::subscribe::{JetStreamSpec, JetStreamSubscriber, Semantics, Subscriber};
use tapbus_testsupport::servers::Nats;

use crate::*;

struct Js {
    _dir: tempfile::TempDir,
    nats: Nats,
}

async fn server() -> Js {
    let dir = tempfile::tempdir().expect("tempdir");
    let sd = dir.path().to_path_buf();
    let nats = blocking(move || Nats::start_jetstream(&sd)).await;
    let c = async_nats::connect(nats.url()).await.expect("connect");
    jetstream::new(c)
        .create_stream(stream::Config {
            name: "EV".into(),
            subjects: vec!["ev.>".into()],
            ..Default::default()
        })
        .await
        .expect("create stream");
    Js { _dir: dir, nats }
}

async fn publish(url: &str, prefix: &str, range: std::ops::Range<usize>) {
    let c = async_nats::connect(url).await.expect("connect publisher");
    let js = jetstream::new(c);
    for i in range {
        js.publish("ev.x", format!("{prefix}{i}").into())
            .await
            .expect("publish")
            .await
            .expect("pub ack");
    }
}

async fn subscriber(url: &str, spec: &JetStreamSpec) -> (async_nats::Client, Subscriber) {
    let c = async_nats::connect(url).await.expect("connect subscriber");
    let s = JetStreamSubscriber::new(&c, spec)
        .await
        .expect("bind durable");
    (c, s.into())
}

fn spec(durable: &str) -> JetStreamSpec {
    let mut s = JetStreamSpec::new("EV", durable);
    s.ack_wait = Duration::from_secs(1);
    s
}

fn seq(d: &tapbus_bus::subscribe::Delivery) -> u64 {
    d.id.as_deref()
        .expect("stream seq")
        .parse()
        .expect("numeric seq")
}

#[tokio::test]
async fn durable_created_then_bound_again() {
    init_tracing();
    let js = server().await;
    publish(js.nats.url(), "m", 0..10).await;
    let (c1, mut s1) = subscriber(js.nats.url(), &spec("d1")).await;
    assert_eq!(s1.semantics(), Semantics::AtLeastOnce);
    let got = take(&mut s1, 10, Duration::from_secs(10)).await;
    assert_eq!(payloads(&got), numbered("m", 10));
    assert_eq!(
        got.iter().map(seq).collect::<Vec<_>>(),
        (1..=10).collect::<Vec<_>>()
    );
    assert!(got.iter().all(|d| d.delivered == 1 && d.subject == "ev.x"));
    // Ack m0..m5, keep m6..m9 unacked.
    let mut kept = Vec::new();
    for d in got {
        if seq(&d) <= 6 {
            d.ack().await.expect("ack");
        } else {
            kept.push(d);
        }
    }
    timeout(Duration::from_secs(5), c1.flush())
        .await
        .expect("flush in time")
        .expect("flush");
    drop(s1);
    drop(kept);
    drop(c1);

    // The durable is still there, with the 6 acks recorded.
    let c = async_nats::connect(js.nats.url()).await.expect("connect");
    let mut consumer: jetstream::consumer::PullConsumer = jetstream::new(c)
        .get_stream("EV")
        .await
        .expect("stream")
        .get_consumer("d1")
        .await
        .expect("durable kept");
    // The server records acks on its own time (under load, after the flush returned):
    // wait for the floor, bounded.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let floor = consumer
            .info()
            .await
            .expect("consumer info")
            .ack_floor
            .stream_sequence;
        if floor == 6 || tokio::time::Instant::now() >= deadline {
            assert_eq!(floor, 6, "the ack floor after 6 acks");
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    publish(js.nats.url(), "n", 0..5).await;
    let (_c2, mut s2) = subscriber(js.nats.url(), &spec("d1")).await;
    // The 4 unacked ones again (after ack_wait) and the 5 new ones; none of the acked.
    // Each is acked at once (ack_wait is 1 s here).
    let mut got = Vec::new();
    for _ in 0..9 {
        let d = take(&mut s2, 1, Duration::from_secs(10)).await.remove(0);
        got.push((
            String::from_utf8_lossy(&d.payload).into_owned(),
            seq(&d),
            d.delivered,
        ));
        d.ack().await.expect("ack");
    }
    let want: std::collections::BTreeSet<String> = (6..10)
        .map(|i| format!("m{i}"))
        .chain((0..5).map(|i| format!("n{i}")))
        .collect();
    assert_eq!(
        got.iter()
            .map(|g| g.0.clone())
            .collect::<std::collections::BTreeSet<_>>(),
        want
    );
    for (p, seq, delivered) in &got {
        let redelivered = *seq <= 10;
        assert_eq!(*delivered, if redelivered { 2 } else { 1 }, "{p} seq {seq}");
    }
    assert_quiet(&mut s2, Duration::from_millis(2500)).await;
}

#[tokio::test]
async fn two_subscribers_share_a_durable() {
    init_tracing();
    let js = server().await;
    let mut sp = spec("shared");
    sp.ack_wait = Duration::from_secs(30);
    sp.batch = 10;
    let (_c1, a) = subscriber(js.nats.url(), &sp).await;
    let (_c2, b) = subscriber(js.nats.url(), &sp).await;
    publish(js.nats.url(), "s", 0..300).await;
    let got = share(
        vec![a, b],
        300,
        Duration::from_secs(20),
        Duration::from_millis(500),
    )
    .await;
    assert_split(&got, &numbered("s", 300));
    assert!(got.iter().flatten().all(|(_, n)| *n == 1));
}

#[tokio::test]
async fn unacked_message_is_redelivered_after_ack_wait() {
    init_tracing();
    let js = server().await;
    let (_c, mut s) = subscriber(js.nats.url(), &spec("redeliver")).await;
    publish(js.nats.url(), "r", 0..1).await;
    let first = take(&mut s, 1, Duration::from_secs(5)).await.remove(0);
    assert_eq!(first.delivered, 1);
    let t0 = Instant::now();
    let again = take(&mut s, 1, Duration::from_secs(5)).await.remove(0);
    assert!(
        t0.elapsed() >= Duration::from_millis(700),
        "redelivered before ack_wait: {:?}",
        t0.elapsed()
    );
    assert_eq!(again.id, first.id);
    assert_eq!(again.payload, first.payload);
    assert_eq!(again.delivered, 2);
    again.ack().await.expect("ack");
    drop(first);
    assert_quiet(&mut s, Duration::from_millis(2500)).await;
}

#[tokio::test]
async fn in_progress_holds_off_redelivery() {
    init_tracing();
    let js = server().await;
    let (_c, mut s) = subscriber(js.nats.url(), &spec("progress")).await;
    publish(js.nats.url(), "p", 0..1).await;
    let d = take(&mut s, 1, Duration::from_secs(5)).await.remove(0);
    // Four times ack_wait, telling the server every 300 ms that we are still at it.
    for _ in 0..14 {
        d.in_progress().await.expect("in progress");
        assert_quiet(&mut s, Duration::from_millis(300)).await;
    }
    d.ack().await.expect("ack");
    assert_quiet(&mut s, Duration::from_millis(2500)).await;
}

/// The server restarts (same store, same port): the subscriber goes on by itself, the
/// durable's state kept (acked messages are not delivered again).
#[tokio::test]
async fn goes_on_after_server_restart() {
    init_tracing();
    let dir = tempfile::tempdir().expect("tempdir");
    let port = tapbus_testsupport::free_port();
    let sd = dir.path().to_path_buf();
    let nats = blocking(move || Nats::start_jetstream_on(port, &sd)).await;
    let c = async_nats::connect(nats.url()).await.expect("connect");
    jetstream::new(c)
        .create_stream(stream::Config {
            name: "EV".into(),
            subjects: vec!["ev.>".into()],
            ..Default::default()
        })
        .await
        .expect("create stream");
    let mut sp = spec("restart");
    sp.ack_wait = Duration::from_secs(30);
    let (_c, mut s) = subscriber(nats.url(), &sp).await;
    publish(nats.url(), "before", 0..5).await;
    for d in take(&mut s, 5, Duration::from_secs(5)).await {
        d.ack().await.expect("ack");
    }
    timeout(Duration::from_secs(5), _c.flush())
        .await
        .expect("flush in time")
        .expect("flush");
    blocking(move || nats.terminate()).await;
    wait_connected(&s, false, Duration::from_secs(5)).await;
    let sd = dir.path().to_path_buf();
    let nats = blocking(move || Nats::start_jetstream_on(port, &sd)).await;
    wait_connected(&s, true, Duration::from_secs(15)).await;
    publish(nats.url(), "after", 0..5).await;
    let mut got = Vec::new();
    for _ in 0..5 {
        let d = take(&mut s, 1, Duration::from_secs(30)).await.remove(0);
        got.push(String::from_utf8_lossy(&d.payload).into_owned());
        d.ack().await.expect("ack");
    }
    assert_eq!(
        got.into_iter().collect::<std::collections::BTreeSet<_>>(),
        numbered("after", 5)
    );
    assert_quiet(&mut s, Duration::from_millis(500)).await;
}

/// The durable's backlog as the server keeps it: what is stored and not delivered plus
/// what is delivered and unacked is everything published, and nothing once all is acked.
#[tokio::test]
async fn backlog_follows_the_server() {
    let js = server().await;
    publish(js.nats.url(), "b", 0..50).await;
    let mut s = JetStreamSpec::new("EV", "lag");
    s.ack_wait = Duration::from_secs(60);
    let (_c, mut sub) = subscriber(js.nats.url(), &s).await;
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(sub.next().await.expect("delivery"));
    }
    let mut backlog = sub.backlog();
    let b = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            if let Some(b) = *backlog.borrow_and_update()
                && b.unacked >= 5
            {
                return b;
            }
            backlog.changed().await.expect("backlog watch");
        }
    })
    .await
    .expect("a backlog with the held messages within three polls");
    assert_eq!(b.waiting.expect("known") + b.unacked, 50, "{b:?}");
    for d in held.drain(..) {
        d.ack().await.expect("ack");
    }
    for _ in 5..50 {
        sub.next()
            .await
            .expect("delivery")
            .ack()
            .await
            .expect("ack");
    }
    let done = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            backlog.changed().await.expect("backlog watch");
            let b = *backlog.borrow_and_update();
            if b.is_some_and(|b| b.waiting == Some(0) && b.unacked == 0) {
                return;
            }
        }
    })
    .await;
    assert!(done.is_ok(), "still {:?}", *backlog.borrow());
}
