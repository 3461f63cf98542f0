//! Dial-out: the broker connects to a listener that behaves like CoreDNS `dnstap listen`
//! (it sends READY first), stays the reader, and reconnects after the listener closes.

use std::time::Duration;

use tapbus_proto::fstrm::DNSTAP_CONTENT_TYPE;
use tokio::net::{TcpListener, UnixListener};

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dial_out_to_a_coredns_style_listener() {
    let nats = Nats::start();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let broker = Broker::start(&[
        "-i",
        &format!("dial+tcp://127.0.0.1:{port}"),
        "-o",
        nats.url(),
    ]);
    let mut sub = Sub::start(nats.url(), "dnstap.>").await;
    let frames = data_frames(&capture("kresd.fstrm"));
    let reference = reference_events(&capture("kresd.fstrm"));

    for round in 0..2 {
        let (mut s, _) = tokio::time::timeout(Duration::from_secs(15), listener.accept())
            .await
            .expect("broker dials within 15s")
            .expect("accept");
        let accept = write_stream(&mut s, &frames).await;
        assert_eq!(accept.content_types, vec![DNSTAP_CONTENT_TYPE.to_vec()]);
        let got = sub.collect(reference.len(), Duration::from_secs(10)).await;
        assert_eq!(got.len(), reference.len(), "round {round}");
        for ((_, ev), want) in got.iter().zip(&reference) {
            assert_eq!(key(ev), key(want));
            assert!(
                ev["dnstap"]["peer-name"]
                    .as_str()
                    .is_some_and(|p| p.starts_with("dial+tcp:"))
            );
        }
        drop(s); // the "CoreDNS" side goes away; the broker must come back
    }
    // Two sessions served; the broker is already dialling again (the kernel completes the
    // connection even before we accept it), so at least two.
    assert!(broker.metric("tapbus_connections_total", &[]) >= 2.0);

    // dial+unix as well.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("coredns.sock");
    let ul = UnixListener::bind(&path).expect("bind unix");
    let _b2 = Broker::start(&[
        "-i",
        &format!("dial+unix://{}", path.display()),
        "-o",
        nats.url(),
    ]);
    let (mut s, _) = tokio::time::timeout(Duration::from_secs(15), ul.accept())
        .await
        .expect("broker dials the unix socket")
        .expect("accept");
    write_stream(&mut s, &frames).await;
    let got = sub.collect(reference.len(), Duration::from_secs(10)).await;
    assert_eq!(got.len(), reference.len());
}
