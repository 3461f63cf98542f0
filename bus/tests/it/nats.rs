//! NATS core: every message arrives; a queue group splits the messages.

use std::time::Duration;

use tapbus_bus::subscribe::{NatsCoreSpec, NatsCoreSubscriber, Semantics, Subscriber};
use tapbus_testsupport::servers::Nats;

use crate::*;

async fn publish(url: &str, subject: &str, prefix: &str, n: usize) {
    let c = async_nats::connect(url).await.expect("connect publisher");
    for i in 0..n {
        c.publish(subject.to_string(), format!("{prefix}{i}").into())
            .await
            .expect("publish");
    }
    timeout(Duration::from_secs(5), c.flush())
        .await
        .expect("flush in time")
        .expect("flush");
}

async fn subscriber(url: &str, spec: &NatsCoreSpec) -> Subscriber {
    let c = async_nats::connect(url).await.expect("connect subscriber");
    let s = NatsCoreSubscriber::new(&c, spec).await.expect("subscribe");
    // The SUB is on the server once a PING sent after it came back.
    timeout(Duration::from_secs(5), c.flush())
        .await
        .expect("flush in time")
        .expect("flush");
    s.into()
}

#[tokio::test]
async fn core_every_message_arrives() {
    init_tracing();
    let nats = blocking(Nats::start).await;
    let mut sub = subscriber(nats.url(), &NatsCoreSpec::new("ev.>")).await;
    assert_eq!(sub.semantics(), Semantics::AtMostOnce);
    wait_connected(&sub, true, Duration::from_secs(5)).await;
    publish(nats.url(), "ev.a.b", "m", 500).await;
    publish(nats.url(), "other", "x", 10).await;
    let got = take(&mut sub, 500, Duration::from_secs(10)).await;
    assert_eq!(payloads(&got), numbered("m", 500));
    for d in &got {
        assert_eq!(d.subject, "ev.a.b");
        assert_eq!(d.delivered, 1);
        assert_eq!(d.id, None);
        assert!(!d.needs_ack());
    }
    // In order, too (one publisher, one connection).
    let order: Vec<String> = got
        .iter()
        .map(|d| String::from_utf8_lossy(&d.payload).into_owned())
        .collect();
    assert_eq!(order, (0..500).map(|i| format!("m{i}")).collect::<Vec<_>>());
    for d in got {
        d.ack().await.expect("no-op ack");
    }
    assert_quiet(&mut sub, Duration::from_millis(300)).await;
}

#[tokio::test]
async fn core_queue_group_splits() {
    init_tracing();
    let nats = blocking(Nats::start).await;
    let spec = NatsCoreSpec::new("ev.>").queue_group("workers");
    let a = subscriber(nats.url(), &spec).await;
    let b = subscriber(nats.url(), &spec).await;
    publish(nats.url(), "ev.q", "q", 400).await;
    let got = share(
        vec![a, b],
        400,
        Duration::from_secs(10),
        Duration::from_millis(300),
    )
    .await;
    assert_split(&got, &numbered("q", 400));
}

/// A subscriber that does not read while more than its client buffers (65,536 messages)
/// arrives: the client drops the rest (NATS core keeps nothing), and the drops are
/// counted in `Subscriber::dropped`, the source of `tapbus_consumer_input_dropped_total`.
#[tokio::test]
async fn core_slow_consumer_drops_are_counted() {
    init_tracing();
    let nats = blocking(Nats::start).await;
    let spec = tapbus_config::ConsumerInputConfig::from_url(&format!("{}/slow.>", nats.url()))
        .validate("input", "test")
        .expect("spec");
    let mut sub = tapbus_bus::input::subscribe("test", &spec)
        .await
        .expect("subscribe");
    wait_connected(&sub, true, Duration::from_secs(5)).await;
    let dropped = sub.dropped();
    assert_eq!(dropped.load(Ordering::Relaxed), 0);
    const N: usize = 100_000;
    publish(nats.url(), "slow.x", "m", N).await;
    // The client reports drops as it reads the socket; wait for them (bounded).
    let t = Instant::now();
    while dropped.load(Ordering::Relaxed) == 0 && t.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut got = 0usize;
    while let Ok(Ok(_)) = timeout(Duration::from_millis(500), sub.next()).await {
        got += 1;
    }
    let lost = dropped.load(Ordering::Relaxed) as usize;
    assert!(lost > 0, "no drop counted ({got} received)");
    assert!(got < N, "{got} received: the buffer did not overflow");
    // A lower bound: never more drops counted than messages missing.
    assert!(got + lost <= N, "{got} received + {lost} counted > {N}");
}
