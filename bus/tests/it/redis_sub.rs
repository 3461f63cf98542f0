//! Redis: PSUBSCRIBE (everything published while subscribed, and again after a server
//! restart), stream consumer groups (two consumers share; a dead consumer's entries are
//! claimed after min-idle; a restarted consumer reads its own pending entries again).

use std::collections::BTreeSet;
use std::time::Duration;

use redis::AsyncTypedCommands;
use tapbus_bus::subscribe::{
    RedisPubSubSpec, RedisPubSubSubscriber, RedisStreamSpec, RedisStreamSubscriber, Semantics,
    Subscriber,
};
use tapbus_testsupport::servers::Redis;

use crate::*;

async fn con(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("connect")
}

#[tokio::test]
async fn psubscribe_gets_everything_and_resubscribes_after_restart() {
    init_tracing();
    let r = blocking(Redis::start).await;
    let client = redis::Client::open(r.url()).expect("client");
    let mut sub: Subscriber = RedisPubSubSubscriber::new(client, &RedisPubSubSpec::new("ev.*"))
        .await
        .expect("psubscribe")
        .into();
    assert_eq!(sub.semantics(), Semantics::AtMostOnce);
    let mut c = con(&r.url()).await;
    for i in 0..300usize {
        let ch = if i.is_multiple_of(2) { "ev.a" } else { "ev.b" };
        let receivers: usize = c.publish(ch, format!("m{i}")).await.expect("publish");
        assert_eq!(receivers, 1);
    }
    let _: usize = c.publish("other", "x").await.expect("publish");
    let got = take(&mut sub, 300, Duration::from_secs(10)).await;
    assert_eq!(payloads(&got), numbered("m", 300));
    for d in &got {
        let i: usize = String::from_utf8_lossy(&d.payload)[1..]
            .parse()
            .expect("number");
        assert_eq!(d.subject, if i.is_multiple_of(2) { "ev.a" } else { "ev.b" });
        assert_eq!(
            (d.delivered, d.id.as_deref(), d.needs_ack()),
            (1, None, false)
        );
    }
    assert_quiet(&mut sub, Duration::from_millis(300)).await;

    // Restart the server on the same port: the subscriber reconnects and subscribes again.
    let port = r.port();
    blocking(move || r.terminate()).await;
    let r = blocking(move || Redis::start_on(port)).await;
    let mut c = con(&r.url()).await;
    let mut delivered = None;
    for i in 0..100 {
        // next() drives the reconnect; publish until someone is subscribed again.
        let receivers: usize = c
            .publish("ev.c", format!("after{i}"))
            .await
            .expect("publish");
        if receivers == 1 {
            delivered = Some(i);
            break;
        }
        let _ = timeout(Duration::from_millis(100), sub.next()).await;
    }
    let i = delivered.expect("resubscribed within 100 rounds");
    let d = take(&mut sub, 1, Duration::from_secs(5)).await.remove(0);
    assert_eq!(
        (d.subject.as_str(), d.payload.as_ref()),
        ("ev.c", format!("after{i}").as_bytes())
    );
    wait_connected(&sub, true, Duration::from_secs(1)).await;
}

async fn xadd(
    c: &mut redis::aio::MultiplexedConnection,
    key: &str,
    prefix: &str,
    n: usize,
) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let id: Option<String> = c
            .xadd(key, "*", &[("data", format!("{prefix}{i}"))])
            .await
            .expect("xadd");
        ids.push(id.expect("entry id"));
    }
    ids
}

/// `XPENDING key group` summary count.
async fn pending(c: &mut redis::aio::MultiplexedConnection, key: &str, group: &str) -> i64 {
    let v: redis::Value = redis::cmd("XPENDING")
        .arg(key)
        .arg(group)
        .query_async(c)
        .await
        .expect("xpending");
    match v {
        redis::Value::Array(a) => match a.first() {
            Some(redis::Value::Int(n)) => *n,
            other => panic!("XPENDING count: {other:?}"),
        },
        other => panic!("XPENDING: {other:?}"),
    }
}

async fn stream_sub(url: &str, spec: &RedisStreamSpec) -> Subscriber {
    RedisStreamSubscriber::new(redis::Client::open(url).expect("client"), spec)
        .await
        .expect("stream subscriber")
        .into()
}

#[tokio::test]
async fn stream_group_two_consumers_share() {
    init_tracing();
    let r = blocking(Redis::start).await;
    let mut c = con(&r.url()).await;
    let mut sa = RedisStreamSpec::new("ev", "g", "a");
    sa.count = 10;
    sa.block = Duration::from_millis(200);
    let mut sb = sa.clone();
    sb.consumer = "b".into();
    // The first creates the group (MKSTREAM: the stream does not exist yet), the second
    // finds it (BUSYGROUP).
    let a = stream_sub(&r.url(), &sa).await;
    let b = stream_sub(&r.url(), &sb).await;
    assert_eq!(a.semantics(), Semantics::AtLeastOnce);
    xadd(&mut c, "ev", "e", 400).await;
    let got = share(
        vec![a, b],
        400,
        Duration::from_secs(20),
        Duration::from_millis(500),
    )
    .await;
    assert_split(&got, &numbered("e", 400));
    assert!(got.iter().flatten().all(|(_, n)| *n == 1));
    assert_eq!(pending(&mut c, "ev", "g").await, 0);
}

#[tokio::test]
async fn stream_dead_consumers_entries_are_claimed() {
    init_tracing();
    let r = blocking(Redis::start).await;
    let mut c = con(&r.url()).await;
    let ids = xadd(&mut c, "ev", "d", 20).await;
    let mut dead = RedisStreamSpec::new("ev", "g", "dead");
    dead.min_idle = Duration::from_secs(600);
    let mut s1 = stream_sub(&r.url(), &dead).await;
    let held = take(&mut s1, 20, Duration::from_secs(5)).await;
    assert_eq!(
        held.iter()
            .map(|d| d.id.clone().expect("id"))
            .collect::<Vec<_>>(),
        ids
    );
    assert!(held.iter().all(|d| d.delivered == 1 && d.subject == "ev"));
    drop(held);
    drop(s1);
    assert_eq!(pending(&mut c, "ev", "g").await, 20);

    let mut live = RedisStreamSpec::new("ev", "g", "live");
    live.min_idle = Duration::from_millis(800);
    live.claim_interval = Duration::from_millis(200);
    live.block = Duration::from_millis(200);
    let mut s2 = stream_sub(&r.url(), &live).await;
    let t0 = Instant::now();
    let got = take(&mut s2, 20, Duration::from_secs(10)).await;
    assert_eq!(payloads(&got), numbered("d", 20));
    let got_ids: BTreeSet<String> = got.iter().map(|d| d.id.clone().expect("id")).collect();
    assert_eq!(got_ids, ids.iter().cloned().collect::<BTreeSet<_>>());
    assert!(
        got.iter().all(|d| d.delivered == 2),
        "{:?}",
        got.iter().map(|d| d.delivered).collect::<Vec<_>>()
    );
    assert!(
        t0.elapsed() >= Duration::from_millis(300),
        "claimed before min-idle"
    );
    for d in got {
        d.ack().await.expect("xack");
    }
    assert_eq!(pending(&mut c, "ev", "g").await, 0);
    assert_quiet(&mut s2, Duration::from_millis(1500)).await;
}

#[tokio::test]
async fn stream_restarted_consumer_reads_its_own_pending_again() {
    init_tracing();
    let r = blocking(Redis::start).await;
    let mut c = con(&r.url()).await;
    let spec = RedisStreamSpec::new("ev", "g", "same");
    let mut s1 = stream_sub(&r.url(), &spec).await;
    xadd(&mut c, "ev", "o", 8).await;
    let got = take(&mut s1, 8, Duration::from_secs(5)).await;
    // Ack half; the rest stays pending when this consumer goes away.
    let mut acked = BTreeSet::new();
    for (i, d) in got.into_iter().enumerate() {
        if i.is_multiple_of(2) {
            acked.insert(String::from_utf8_lossy(&d.payload).into_owned());
            d.ack().await.expect("xack");
        }
    }
    drop(s1);
    xadd(&mut c, "ev", "n", 2).await;
    let mut s2 = stream_sub(&r.url(), &spec).await;
    let got = take(&mut s2, 6, Duration::from_secs(5)).await;
    let want: BTreeSet<String> = ["o1", "o3", "o5", "o7", "n0", "n1"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(payloads(&got), want);
    for d in &got {
        let old = d.payload.starts_with(b"o");
        assert_eq!(d.delivered, if old { 2 } else { 1 }, "{:?}", d.payload);
    }
    for d in got {
        d.ack().await.expect("xack");
    }
    assert_eq!(pending(&mut c, "ev", "g").await, 0);
    assert_quiet(&mut s2, Duration::from_millis(500)).await;
}

/// The server restarts (append-only file kept): the consumer reconnects with backoff, reads
/// its own pending entries again (`0`), then goes on with new ones; acks taken before the
/// restart were kept.
#[tokio::test]
async fn stream_consumer_rereads_own_pending_after_reconnect() {
    init_tracing();
    let dir = tempfile::tempdir().expect("tempdir");
    let port = tapbus_testsupport::free_port();
    let d = dir.path().to_path_buf();
    let r = blocking(move || Redis::start_durable(port, &d)).await;
    let url = r.url();
    let mut c = con(&url).await;
    let mut spec = RedisStreamSpec::new("ev", "g", "c");
    spec.block = Duration::from_millis(200);
    let mut sub = stream_sub(&url, &spec).await;
    xadd(&mut c, "ev", "b", 6).await;
    let got = take(&mut sub, 6, Duration::from_secs(5)).await;
    let mut kept = Vec::new();
    for d in got {
        if d.payload.as_ref() < b"b3".as_slice() {
            d.ack().await.expect("xack");
        } else {
            kept.push(d);
        }
    }
    drop(kept);
    drop(c);
    blocking(move || r.terminate()).await;
    // next() notices (the state follows its reads) and keeps retrying meanwhile.
    assert_quiet(&mut sub, Duration::from_secs(1)).await;
    assert!(!*sub.connected().borrow(), "still shown as connected");
    let d = dir.path().to_path_buf();
    let r = blocking(move || Redis::start_durable(port, &d)).await;
    let mut c = con(&r.url()).await;
    xadd(&mut c, "ev", "a", 2).await;
    let got = take(&mut sub, 5, Duration::from_secs(15)).await;
    let order: Vec<(String, u64)> = got
        .iter()
        .map(|d| {
            (
                String::from_utf8_lossy(&d.payload).into_owned(),
                d.delivered,
            )
        })
        .collect();
    assert_eq!(
        order,
        [("b3", 2), ("b4", 2), ("b5", 2), ("a0", 1), ("a1", 1)]
            .map(|(p, n)| (p.to_string(), n))
            .to_vec()
    );
    wait_connected(&sub, true, Duration::from_secs(1)).await;
    for d in got {
        d.ack().await.expect("xack after the reconnect");
    }
    assert_eq!(pending(&mut c, "ev", "g").await, 0);
    assert_quiet(&mut sub, Duration::from_millis(500)).await;
}

/// The group's backlog from `XINFO GROUPS`: lag (entries the group has not read) plus
/// pending (read, not acked) is everything added, and nothing once all is acked.
#[tokio::test]
async fn stream_backlog_follows_the_server() {
    init_tracing();
    let r = blocking(Redis::start).await;
    let mut c = con(&r.url()).await;
    let mut spec = RedisStreamSpec::new("lagged", "g", "a");
    spec.count = 5;
    spec.block = Duration::from_millis(200);
    let mut sub = stream_sub(&r.url(), &spec).await;
    xadd(&mut c, "lagged", "e", 50).await;
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(sub.next().await.expect("delivery"));
    }
    let mut backlog = sub.backlog();
    let wait_for = |want: fn(&tapbus_bus::subscribe::Backlog) -> bool| {
        let mut backlog = backlog.clone();
        async move {
            tokio::time::timeout(Duration::from_secs(15), async {
                loop {
                    if let Some(b) = *backlog.borrow_and_update()
                        && want(&b)
                    {
                        return b;
                    }
                    backlog.changed().await.expect("backlog watch");
                }
            })
            .await
        }
    };
    let b = wait_for(|b| b.unacked >= 5).await.expect("a backlog");
    assert_eq!(b.waiting.expect("known lag") + b.unacked, 50, "{b:?}");
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
    let done = wait_for(|b| b.waiting == Some(0) && b.unacked == 0).await;
    assert!(done.is_ok(), "still {:?}", *backlog.borrow_and_update());
}
