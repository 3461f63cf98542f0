//! MQTT QoS 1 against mosquitto 2.0: delivery (3.1.1 and 5), PUBACKs in arrival order when
//! the consumer acks in reverse, `$share/` splitting, redelivery to a persistent session.

use std::collections::BTreeSet;
use std::time::Duration;

use tapbus_bus::subscribe::{MqttSpec, MqttSubscriber, Semantics, Subscriber};
use tapbus_testsupport::servers::Mosquitto;

use crate::*;

async fn broker() -> Mosquitto {
    blocking(Mosquitto::start).await
}

/// Publishes `prefix0..prefixN` at QoS 1 on `topic` and waits for every PUBACK.
async fn publish(port: u16, topic: &str, prefix: &str, n: usize) {
    let mut o = rumqttc::MqttOptions::new(format!("pub-{prefix}"), "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(10));
    let (c, mut el) = rumqttc::AsyncClient::new(o, 64);
    let acks = tokio::spawn(async move {
        let mut n_acks = 0usize;
        for _ in 0..1_000_000 {
            match el.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) => {
                    n_acks += 1;
                    if n_acks == n {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => panic!("publisher: {e}"),
            }
        }
    });
    for i in 0..n {
        c.publish(
            topic,
            rumqttc::QoS::AtLeastOnce,
            false,
            format!("{prefix}{i}"),
        )
        .await
        .expect("publish");
    }
    timeout(Duration::from_secs(10), acks)
        .await
        .expect("all PUBACKs in time")
        .expect("publisher task");
    let _ = c.disconnect().await;
}

/// Waits until mosquitto logs the SUBACK to `client_id`.
async fn wait_subscribed(m: &Mosquitto, client_id: &str, times: usize) {
    let needle = format!("Sending SUBACK to {client_id}");
    for _ in 0..100 {
        if m.log_text().matches(&needle).count() >= times {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no SUBACK to {client_id} within 5 s:\n{}", m.log_text());
}

fn v4(port: u16, id: &str) -> rumqttc::MqttOptions {
    let mut o = rumqttc::MqttOptions::new(id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(10));
    o
}

fn v5(port: u16, id: &str) -> rumqttc::v5::MqttOptions {
    let mut o = rumqttc::v5::MqttOptions::new(id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(10));
    o
}

/// The Mids of the PUBACKs mosquitto received from `client_id`, in log order.
fn pubacks_received(m: &Mosquitto, client_id: &str) -> Vec<u32> {
    let needle = format!("Received PUBACK from {client_id} (Mid: ");
    m.log_text()
        .lines()
        .filter_map(|l| {
            let rest = &l[l.find(&needle)? + needle.len()..];
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

async fn every_message_arrives(version: u8) {
    init_tracing();
    let m = broker().await;
    let id = format!("sub-v{version}");
    let spec = MqttSpec::new("ev/#");
    let mut sub: Subscriber = match version {
        5 => MqttSubscriber::v5(v5(m.port(), &id), &spec),
        _ => MqttSubscriber::v4(v4(m.port(), &id), &spec),
    }
    .expect("subscriber")
    .into();
    // Clean session: unacked messages die with the connection.
    assert_eq!(sub.semantics(), Semantics::AtMostOnce);
    wait_connected(&sub, true, Duration::from_secs(5)).await;
    wait_subscribed(&m, &id, 1).await;
    publish(m.port(), "ev/a", "m", 200).await;
    // Ack the first 10 in reverse: their PUBACKs must still leave in arrival order. (The
    // server sends at most its in-flight window, 20 for 3.1.1 in mosquitto, before it
    // gets PUBACKs, so the rest is taken while acking.)
    let mut first = take(&mut sub, 10, Duration::from_secs(10)).await;
    let mut got = payloads(&first);
    assert!(
        first
            .iter()
            .all(|d| d.subject == "ev/a" && d.delivered == 1 && d.needs_ack())
    );
    while let Some(d) = first.pop() {
        d.ack().await.expect("ack");
    }
    for _ in 10..200 {
        let d = take(&mut sub, 1, Duration::from_secs(10)).await.remove(0);
        assert!(d.subject == "ev/a" && d.delivered == 1 && d.needs_ack());
        got.insert(String::from_utf8_lossy(&d.payload).into_owned());
        d.ack().await.expect("ack");
    }
    assert_eq!(got, numbered("m", 200));
    let mut mids = Vec::new();
    for _ in 0..100 {
        mids = pubacks_received(&m, &id);
        if mids.len() >= 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(mids.len(), 200, "PUBACKs received by mosquitto");
    assert_eq!(
        &mids[..10],
        &(1..=10).collect::<Vec<u32>>()[..],
        "PUBACK order"
    );
    assert_eq!(mids, (1..=200).collect::<Vec<u32>>());
    assert_quiet(&mut sub, Duration::from_millis(300)).await;
}

#[tokio::test]
async fn v311_qos1_every_message_arrives_acks_in_order() {
    every_message_arrives(4).await;
}

#[tokio::test]
async fn v5_qos1_every_message_arrives_acks_in_order() {
    every_message_arrives(5).await;
}

#[tokio::test]
async fn v5_shared_subscription_splits() {
    init_tracing();
    let m = broker().await;
    let spec = MqttSpec::new("sh/#").share_group("g");
    let a = MqttSubscriber::v5(v5(m.port(), "share-a"), &spec).expect("a");
    let b = MqttSubscriber::v5(v5(m.port(), "share-b"), &spec).expect("b");
    wait_subscribed(&m, "share-a", 1).await;
    wait_subscribed(&m, "share-b", 1).await;
    publish(m.port(), "sh/x", "s", 200).await;
    let got = share(
        vec![a.into(), b.into()],
        200,
        Duration::from_secs(10),
        Duration::from_millis(500),
    )
    .await;
    assert_split(&got, &numbered("s", 200));
}

/// A QoS 1 subscriber of `spec` with a persistent session under client id `id`
/// (3.1.1: `clean_session` off; 5: `clean_start` off and a session expiry).
fn persistent(version: u8, port: u16, id: &str, spec: &MqttSpec) -> Subscriber {
    match version {
        5 => {
            let mut o = v5(port, id);
            o.set_clean_start(false)
                .set_session_expiry_interval(Some(300));
            MqttSubscriber::v5(o, spec)
        }
        _ => {
            let mut o = v4(port, id);
            o.set_clean_session(false);
            MqttSubscriber::v4(o, spec)
        }
    }
    .expect("subscriber")
    .into()
}

/// A subscriber with a persistent session takes messages and dies without acking; the
/// next one with the same client id gets them again (DUP, so `delivered == 2`) and the
/// rest once; after its acks a third one gets nothing.
async fn persistent_session_redelivers(version: u8) {
    init_tracing();
    let m = broker().await;
    let id = format!("keep-v{version}");
    let spec = MqttSpec::new("p/#");
    let make = |port: u16| persistent(version, port, &id, &spec);
    let mut first = make(m.port());
    assert_eq!(first.semantics(), Semantics::AtLeastOnce);
    wait_subscribed(&m, &id, 1).await;
    publish(m.port(), "p/x", "k", 60).await;
    // Take what mosquitto sends before it waits for PUBACKs (its in-flight window).
    let mut held = Vec::new();
    for _ in 0..1000 {
        match timeout(Duration::from_millis(700), first.next()).await {
            Ok(Ok(d)) => held.push(d),
            Ok(Err(e)) => panic!("first subscriber: {e}"),
            Err(_) => break,
        }
    }
    assert!(!held.is_empty(), "the first subscriber got nothing");
    let first_got = payloads(&held);
    drop(first);
    drop(held);

    let mut second = make(m.port());
    let mut got = Vec::new();
    for _ in 0..60 {
        let d = take(&mut second, 1, Duration::from_secs(10))
            .await
            .remove(0);
        got.push((
            String::from_utf8_lossy(&d.payload).into_owned(),
            d.delivered,
        ));
        d.ack().await.expect("ack");
    }
    let all: BTreeSet<String> = got.iter().map(|(p, _)| p.clone()).collect();
    assert_eq!(all, numbered("k", 60));
    let dup: BTreeSet<String> = got
        .iter()
        .filter(|(_, n)| *n == 2)
        .map(|(p, _)| p.clone())
        .collect();
    assert_eq!(
        dup, first_got,
        "redelivered (DUP) = what the first one held"
    );
    // Still subscribed through the kept session: no second SUBSCRIBE was needed.
    assert_eq!(
        m.log_text()
            .matches(&format!("Sending SUBACK to {id}"))
            .count(),
        1
    );
    assert_quiet(&mut second, Duration::from_millis(500)).await;
    if let Subscriber::Mqtt(s) = second {
        s.close(Duration::from_secs(2)).await;
    }

    let mut third = make(m.port());
    wait_connected(&third, true, Duration::from_secs(5)).await;
    assert_quiet(&mut third, Duration::from_millis(1000)).await;
}

/// A process that acks its last messages and stops at once: the ack flush writes the
/// queued PUBACKs (then DISCONNECT) although the subscriber is already dropped, so
/// mosquitto got every PUBACK and the next subscriber of the session gets nothing again.
async fn acks_flushed_at_exit(version: u8) {
    init_tracing();
    let m = broker().await;
    let id = format!("flush-v{version}");
    let spec = MqttSpec::new("f/#");
    let make = |port: u16| persistent(version, port, &id, &spec);
    let mut first = make(m.port());
    wait_subscribed(&m, &id, 1).await;
    publish(m.port(), "f/x", "a", 50).await;
    let mut got = Vec::new();
    let mut flush = None;
    for _ in 0..50 {
        let d = take(&mut first, 1, Duration::from_secs(10)).await.remove(0);
        flush.get_or_insert_with(|| d.ack_flush());
        got.push(String::from_utf8_lossy(&d.payload).into_owned());
        d.ack().await.expect("ack");
    }
    // Stop as a process does: the subscriber (and its reader) goes first, then the flush.
    drop(first);
    let flush = flush.expect("a delivery");
    timeout(Duration::from_secs(5), flush.flush())
        .await
        .expect("flushed in time")
        .expect("flushed");
    assert_eq!(
        got.iter().cloned().collect::<BTreeSet<_>>(),
        numbered("a", 50)
    );
    // mosquitto's log may lag its socket a little.
    for _ in 0..50 {
        if pubacks_received(&m, &id).len() >= 50 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(pubacks_received(&m, &id).len(), 50, "{}", m.log_text());
    // Flushing again is a no-op.
    flush.flush().await.expect("second flush");
    let mut next = make(m.port());
    wait_connected(&next, true, Duration::from_secs(5)).await;
    assert_quiet(&mut next, Duration::from_millis(1000)).await;
}

#[tokio::test]
async fn v311_acks_flushed_at_exit() {
    acks_flushed_at_exit(4).await;
}

#[tokio::test]
async fn v5_acks_flushed_at_exit() {
    acks_flushed_at_exit(5).await;
}

#[tokio::test]
async fn v311_persistent_session_redelivers_unacked() {
    persistent_session_redelivers(4).await;
}

#[tokio::test]
async fn v5_persistent_session_redelivers_unacked() {
    persistent_session_redelivers(5).await;
}

/// A clean-session subscriber sees the server restart (down, then up in its watch),
/// reconnects by itself with backoff, and subscribes again (the new session has no
/// subscriptions): messages published after that arrive.
#[tokio::test]
async fn v311_clean_session_resubscribes_after_server_restart() {
    init_tracing();
    let mut m = broker().await;
    let spec = MqttSpec::new("rs/#");
    let mut sub: Subscriber = MqttSubscriber::v4(v4(m.port(), "resub"), &spec)
        .expect("subscriber")
        .into();
    wait_subscribed(&m, "resub", 1).await;
    publish(m.port(), "rs/x", "before", 1).await;
    let d = take(&mut sub, 1, Duration::from_secs(5)).await.remove(0);
    assert_eq!(d.payload.as_ref(), b"before0");
    d.ack().await.expect("ack");

    let mut up = sub.connected();
    assert!(*up.borrow_and_update());
    let m = blocking(move || {
        m.restart();
        m
    })
    .await;
    timeout(Duration::from_secs(5), up.wait_for(|v| !*v))
        .await
        .expect("down seen")
        .expect("watch");
    wait_connected(&sub, true, Duration::from_secs(10)).await;
    // Publish until the new subscription is in place (messages before it have no
    // subscriber and are dropped by the server); bounded to 50 rounds.
    let mut got = None;
    for i in 0..50 {
        publish(m.port(), "rs/x", &format!("after{i}-"), 1).await;
        if let Ok(r) = timeout(Duration::from_millis(200), sub.next()).await {
            got = Some(r.expect("delivery"));
            break;
        }
    }
    let d = got.expect("delivered after the restart");
    assert!(String::from_utf8_lossy(&d.payload).starts_with("after"));
    d.ack().await.expect("ack");
}
