//! What a test asks a JetStream server, synchronously (each call runs on a runtime of its
//! own, so call these from a plain `#[test]` or outside any `block_on`).

use std::path::Path;
use std::time::Duration;

use futures::StreamExt as _;

/// `broker` (a tapbus-broker binary) replays the test data's `capture` into JetStream on
/// `nats_url` (it makes the stream `DNSTAP`) and exits. Returns the events as published,
/// as many as the capture holds ([`crate::broker_publish`]).
pub fn replay_capture(broker: &Path, nats_url: &str, capture: &str) -> Vec<String> {
    crate::broker_publish(
        broker,
        capture,
        nats_url,
        &[("TAPBUS_OUTPUTS__BUS__JETSTREAM", "true")],
    )
}

/// The JetStream input URL of the durable `durable` on the stream `DNSTAP` of `nats_url`
/// (`jetstream://HOST:PORT/DNSTAP?durable=NAME`).
pub fn dnstap_durable(nats_url: &str, durable: &str) -> String {
    format!(
        "{}/DNSTAP?durable={durable}",
        nats_url.replace("nats://", "jetstream://")
    )
}

/// A durable consumer's `(num_pending, num_ack_pending)`: messages not yet delivered, and
/// delivered but not acknowledged; `None` when the server, the stream or the consumer
/// cannot be reached.
pub fn consumer_backlog(nats_url: &str, stream: &str, durable: &str) -> Option<(u64, u64)> {
    run(async {
        let client = async_nats::connect(nats_url).await.ok()?;
        let js = async_nats::jetstream::new(client);
        let stream = js.get_stream(stream).await.ok()?;
        let mut c: async_nats::jetstream::consumer::PullConsumer =
            stream.get_consumer(durable).await.ok()?;
        let i = c.info().await.ok()?;
        Some((i.num_pending, i.num_ack_pending as u64))
    })
}

/// True when the durable has nothing left: every message delivered and acknowledged.
pub fn consumer_drained(nats_url: &str, stream: &str, durable: &str) -> bool {
    consumer_backlog(nats_url, stream, durable) == Some((0, 0))
}

/// Every message `stream` stores, in order, as (subject, payload), read through an
/// ephemeral consumer that does not acknowledge. Panics when the stream cannot be read
/// completely within a minute: a test must not pass on a partial read.
pub fn stream_messages(nats_url: &str, stream: &str) -> Vec<(String, Vec<u8>)> {
    let name = stream.to_string();
    run(async move {
        let client = async_nats::connect(nats_url).await.expect("connect");
        let js = async_nats::jetstream::new(client);
        let mut stream = js.get_stream(&name).await.expect("stream");
        let want = stream.info().await.expect("stream info").state.messages as usize;
        let consumer: async_nats::jetstream::consumer::PullConsumer = stream
            .create_consumer(async_nats::jetstream::consumer::pull::Config {
                deliver_policy: async_nats::jetstream::consumer::DeliverPolicy::All,
                ack_policy: async_nats::jetstream::consumer::AckPolicy::None,
                inactive_threshold: Duration::from_secs(60),
                ..Default::default()
            })
            .await
            .expect("consumer");
        let mut out = Vec::with_capacity(want);
        let mut msgs = consumer.messages().await.expect("messages");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while out.len() < want {
            let m = tokio::time::timeout_at(deadline, msgs.next())
                .await
                .unwrap_or_else(|_| panic!("{name}: read {} of {want}", out.len()))
                .expect("message stream ended")
                .expect("message");
            out.push((m.subject.to_string(), m.payload.to_vec()));
        }
        out
    })
}

fn run<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

/// How many messages `stream` stores now (`None`: unreachable or no such stream).
pub fn stream_info_messages(nats_url: &str, stream: &str) -> Option<u64> {
    run(async {
        let client = async_nats::connect(nats_url).await.ok()?;
        let js = async_nats::jetstream::new(client);
        let mut s = js.get_stream(stream).await.ok()?;
        Some(s.info().await.ok()?.state.messages)
    })
}
