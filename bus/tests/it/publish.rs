//! Publishing for consumers: records to an exact subject, with a de-duplication id, and a
//! settlement that says when the bus confirmed them (so a consumer acks its input then).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tapbus_bus::metrics::PublishMetrics;
use tapbus_bus::publish::settle::{Settled, Settlement};
use tapbus_bus::publish::{self, Message};
use tapbus_config::OutputConfig;
use tapbus_testsupport::servers::{Mosquitto, Nats, Redis};
use tokio::sync::mpsc;

use crate::*;

/// Starts a publisher for `cfg`; returns its queue and task.
fn output(
    cfg: OutputConfig,
) -> (
    mpsc::Sender<Message>,
    tokio::task::JoinHandle<()>,
    PublishMetrics,
) {
    let spec = cfg.validate("output", "test").expect("output config");
    let (tx, rx) = mpsc::channel(1024);
    let m = PublishMetrics::unregistered();
    let task = publish::spawn("test".into(), spec.kind, rx, m.clone());
    (tx, task, m)
}

/// Queues `n` records to `subject` (ids `<prefix>-i` when `ids`), all in one settlement.
async fn send(
    tx: &mpsc::Sender<Message>,
    subject: &str,
    n: usize,
    ids: Option<&str>,
) -> Settlement {
    let s = Settlement::new();
    let subject: Arc<str> = subject.into();
    for i in 0..n {
        let id = ids.map(|p| Arc::<str>::from(format!("{p}-{i}")));
        let msg = Message::record(
            subject.clone(),
            Bytes::from(format!("{{\"record\":{i}}}")),
            id,
            Some(s.ticket()),
        );
        tx.send(msg).await.expect("queue open");
    }
    s
}

async fn settled(mut s: Settlement) -> Settled {
    timeout(Duration::from_secs(30), s.settled())
        .await
        .expect("settled in time")
}

#[tokio::test]
async fn nats_core_records_arrive_on_their_subject_and_settle() {
    init_tracing();
    let nats = blocking(Nats::start).await;
    let c = async_nats::connect(nats.url()).await.expect("connect");
    let mut sub = c.subscribe("tapbus.reduced.>").await.expect("sub");
    c.flush().await.expect("flush");
    let (tx, task, m) = output(OutputConfig::from_url(nats.url()));
    let s = send(&tx, "tapbus.reduced.client", 300, None).await;
    assert_eq!(
        settled(s).await,
        Settled {
            published: 300,
            dropped: 0
        }
    );
    assert_eq!(m.published.get(), 300);
    use futures::StreamExt as _;
    for i in 0..300 {
        let msg = timeout(Duration::from_secs(5), sub.next())
            .await
            .expect("in time")
            .expect("message");
        assert_eq!(msg.subject.as_str(), "tapbus.reduced.client");
        assert_eq!(msg.payload, format!("{{\"record\":{i}}}"));
    }
    drop(tx);
    task.await.expect("publisher");
}

#[tokio::test]
async fn jetstream_records_are_stored_once_by_their_id() {
    init_tracing();
    let dir = tempfile::tempdir().expect("tempdir");
    let sd = dir.path().join("js");
    let nats = blocking(move || Nats::start_jetstream(&sd)).await;
    let mut cfg = OutputConfig::from_url(nats.url());
    cfg.jetstream = Some(true);
    cfg.stream = Some("REDUCED".into());
    cfg.stream_subjects = Some(vec!["tapbus.reduced.>".into()]);
    let (tx, task, _m) = output(cfg);
    let first = send(&tx, "tapbus.reduced.qname", 200, Some("w1")).await;
    assert_eq!(settled(first).await.published, 200);
    // The same records again (a restart re-emitting a window): confirmed, not stored twice.
    let again = send(&tx, "tapbus.reduced.qname", 200, Some("w1")).await;
    assert_eq!(settled(again).await.published, 200);
    let more = send(&tx, "tapbus.reduced.qname", 50, Some("w2")).await;
    assert_eq!(settled(more).await.published, 50);
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.expect("connect"));
    let mut stream = js.get_stream("REDUCED").await.expect("stream");
    let info = stream.info().await.expect("info");
    assert_eq!(info.state.messages, 250);
    drop(tx);
    task.await.expect("publisher");
}

#[tokio::test]
async fn mqtt_qos1_records_settle_when_acknowledged() {
    init_tracing();
    let m = blocking(Mosquitto::start).await;
    let mut cfg = OutputConfig::from_url(&m.url());
    cfg.qos = Some(1);
    let (tx, task, metrics) = output(cfg);
    let s = send(&tx, "tapbus/reduced/client", 300, None).await;
    assert_eq!(
        settled(s).await,
        Settled {
            published: 300,
            dropped: 0
        }
    );
    assert_eq!(metrics.published.get(), 300);
    // A record over the packet limit is dropped, and its settlement says so.
    let s = Settlement::new();
    tx.send(Message::record(
        "tapbus/reduced/big".into(),
        Bytes::from(vec![b'x'; 300 * 1024 * 1024]),
        None,
        Some(s.ticket()),
    ))
    .await
    .expect("queue");
    let small = s.ticket();
    tx.send(Message::record(
        "tapbus/reduced/small".into(),
        Bytes::from_static(b"{}"),
        None,
        Some(small),
    ))
    .await
    .expect("queue");
    assert_eq!(
        settled(s).await,
        Settled {
            published: 1,
            dropped: 1
        }
    );
    drop(tx);
    task.await.expect("publisher");
}

#[tokio::test]
async fn redis_records_settle_and_a_dead_server_settles_them_as_dropped() {
    init_tracing();
    let r = blocking(Redis::start).await;
    let (tx, task, _m) = output(OutputConfig::from_url(&r.url()));
    let s = send(&tx, "tapbus.reduced.client", 300, None).await;
    assert_eq!(settled(s).await.published, 300);
    drop(tx);
    task.await.expect("publisher");

    // Nobody on this port: at shutdown the records are dropped and settled so.
    let port = tapbus_testsupport::free_port();
    let (tx, task, m) = output(OutputConfig::from_url(&format!("redis://127.0.0.1:{port}")));
    let s = send(&tx, "tapbus.reduced.client", 20, None).await;
    drop(tx);
    let got = settled(s).await;
    assert_eq!(
        got,
        Settled {
            published: 0,
            dropped: 20
        }
    );
    timeout(Duration::from_secs(30), task)
        .await
        .expect("publisher ends")
        .expect("publisher");
    assert_eq!(m.dropped(), 20);
}
