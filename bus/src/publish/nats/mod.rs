//! NATS publishing (async-nats), the arrow `--JSON--> NATS`: core publish ([`core`]) or
//! JetStream ([`jetstream`]), with exact accounting. Connecting is [`crate::connect::nats`].
//!
//! The client reconnects by itself. Every event sent is held until the server has
//! confirmed it (`tapbus_inflight`; core: at most the output's queue size, JetStream: its
//! ack window); while the output holds that many it takes no more from its queue, so the
//! queue fills and the fan-out drops and counts, and socket reads never wait for NATS.
//!
//! Core: events go out in windows of up to 256 (or 20 ms), each closed by a marker
//! published to the output's own inbox; the marker coming back on the same connection
//! confirms the window (a server handles one connection in order). A window sent on a
//! connection that broke is published again after the reconnect. So `published +
//! dropped` equals the events queued exactly; after an outage a subscriber may see a few
//! events twice (byte-identical copies, counted in `tapbus_resent_total`).
//!
//! JetStream: the stream is got or created at start (retried with backoff until it works),
//! then each event is published with a `Nats-Msg-Id` (a per-process prefix and a sequence
//! number), in batches of up to 64 whose last event carries a reply subject: its PubAck
//! confirms the batch (the stream stores one connection's messages in order), and up to
//! `ack_window` events await acks at once. A failed publish or ack sends the batch again
//! with the same ids, which the server de-duplicates: the stream holds every acknowledged
//! event once, and `published` counts acknowledged events.

mod core;
mod jetstream;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::Subject;
use tapbus_config::NatsSpec;
use tapbus_proto::event::Summary;
use tapbus_proto::subject::Template;

use super::Queue;
use crate::metrics::PublishMetrics;

pub async fn run(name: String, spec: NatsSpec, mut rx: Queue, m: PublishMetrics) {
    // The client's command channel must hold everything the output may have sent while
    // disconnected (held events, markers, a batch), so a publish never waits on it.
    let capacity = rx.max_capacity()
        + rx.max_capacity() / core::WINDOW
        + 2 * BATCH
        + spec.jetstream.as_ref().map_or(0, |j| 2 * j.ack_window);
    let up = m.up.clone();
    // Connection state changes wake the output, which re-sends at once what a lost
    // connection left unconfirmed.
    let (state_tx, state_rx) = tokio::sync::watch::channel(false);
    let opts = match crate::connect::nats::options(
        &name,
        "tapbus-broker",
        &spec.connect,
        capacity,
        move |s| {
            up.set(i64::from(s));
            state_tx.send_replace(s);
        },
        // The output subscribes only to its own reply inboxes, read at once.
        Default::default(),
    )
    .await
    {
        Ok(o) => o,
        Err(e) => {
            tracing::error!(output = %name, "NATS output not started: {e}; dropping events for this output");
            while rx.recv().await.is_some() {
                m.dropped_error.inc();
            }
            return;
        }
    };
    let servers = crate::connect::nats::server_list(&spec.connect);
    let client = match opts.connect(servers.as_slice()).await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(output = %name, "NATS connect failed: {e}; dropping events for this output");
            while rx.recv().await.is_some() {
                m.dropped_error.inc();
            }
            return;
        }
    };
    let subjects = SubjectCache::new(spec.subject.clone());
    match &spec.jetstream {
        None => {
            core::run(
                &name,
                &client,
                spec.marker_timeout,
                subjects,
                &mut rx,
                &m,
                state_rx,
            )
            .await
        }
        Some(js) => {
            let link = Link {
                state: state_rx,
                servers: crate::connect::nats::servers_for_logs(&servers),
            };
            jetstream::run(&name, &client, js, subjects, &mut rx, &m, link).await
        }
    }
    // Queue closed: hand everything buffered to the server before exiting.
    match tokio::time::timeout(Duration::from_secs(10), client.flush()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(output = %name, "NATS flush at shutdown failed: {e}"),
        Err(_) => tracing::warn!(output = %name, "NATS flush at shutdown timed out"),
    }
}

/// What the JetStream output learns about its connection: state changes (true:
/// connected), and the servers as they may be logged.
pub(super) struct Link {
    pub(super) state: tokio::sync::watch::Receiver<bool>,
    pub(super) servers: String,
}

/// Which client connection (by the client's connect count) events published now go out
/// on. The count goes up when a connection is made, just before the state says Connected.
/// Published while connected: the current connection `c`. Published while disconnected:
/// the client buffers them for the next one, `c + 1`, unless the count has already moved
/// (a connection made between the two reads): then `c` itself. A marker or ack that comes
/// back on either vouches for the events: a dead connection never carries a reply, so if
/// the reply came on `c`, everything before it went on `c` too.
#[derive(Debug, Clone, Copy)]
pub(super) struct Conn {
    seen: u64,
    next: bool,
}

impl Conn {
    pub(super) fn now(client: &async_nats::Client, stats: &async_nats::Statistics) -> Conn {
        let connected = client.connection_state() == async_nats::connection::State::Connected;
        Conn {
            seen: stats.connects.load(Ordering::Relaxed),
            next: !connected,
        }
    }

    /// The reply came back on connection `now`: did the events go out on it?
    pub(super) fn matches(self, now: u64) -> bool {
        now == self.seen || (self.next && now == self.seen + 1)
    }

    /// A later connection than any the events can have gone out on: they must be re-sent.
    pub(super) fn left_behind(self, now: u64) -> bool {
        now > self.seen + u64::from(self.next)
    }
}

/// A prefix unique to this process run, so message ids never repeat across restarts
/// within the stream's duplicate window.
pub(super) fn msg_id_prefix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("tapbus-{:x}-{:x}", std::process::id(), nanos)
}

pub(super) const BATCH: usize = 512;

/// Rendered subjects by the event fields the template uses: a stream from one server has a
/// handful of distinct subjects, so rendering and allocating once per event is wasted.
pub(super) struct SubjectCache {
    template: Template,
    map: HashMap<Summary, Subject, rustc_hash::FxBuildHasher>,
    scratch: String,
}

impl SubjectCache {
    const MAX: usize = 4096;

    fn new(template: Template) -> Self {
        SubjectCache {
            template,
            map: HashMap::default(),
            scratch: String::with_capacity(64),
        }
    }

    pub(super) fn get(&mut self, s: &Summary) -> Subject {
        let key = self.template.key(s);
        if let Some(subject) = self.map.get(&key) {
            return subject.clone();
        }
        if self.map.len() >= Self::MAX {
            self.map.clear();
        }
        self.template.render(s, &mut self.scratch);
        let subject = Subject::from(self.scratch.as_str());
        self.map.insert(key, subject.clone());
        subject
    }
}

#[cfg(test)]
mod tests {
    use super::Conn;

    #[test]
    fn a_reply_vouches_only_for_its_own_connection() {
        // Published while connected to connection 3.
        let c = Conn {
            seen: 3,
            next: false,
        };
        assert!(c.matches(3));
        assert!(!c.matches(4));
        assert!(!c.left_behind(3));
        assert!(c.left_behind(4));
        // Published while disconnected after connection 3: buffered for 4, or went on 3 if
        // that connection was just being made when the state was read.
        let d = Conn {
            seen: 3,
            next: true,
        };
        assert!(d.matches(3));
        assert!(d.matches(4));
        assert!(!d.matches(5));
        assert!(!d.left_behind(4));
        assert!(d.left_behind(5));
    }
}
