//! MQTT publishing (rumqttc), the arrow `--JSON--> MQTT`: protocol 3.1.1 or 5, over TCP or
//! TLS (connection options from [`crate::connect::mqtt`]).
//!
//! rumqttc splits a connection into a client (a bounded request channel) and an event loop
//! that does the network work. The event loop runs in its own task and is polled without
//! pause; its errors are not fatal: it logs the state change, sets `tapbus_output_up`, backs
//! off (100 ms doubling to 5 s, with jitter: [`crate::backoff`]) and polls again, which
//! reconnects. While the connection is
//! down, `publish` waits for room in the client's channel; meanwhile our bounded queue fills
//! and the fan-out drops and counts, so socket reads never wait for MQTT.
//!
//! Accounting: `published` counts an event when the server acknowledged it (QoS 1, PUBACK)
//! or when it was written to the connection (QoS 0). When a connection breaks, rumqttc
//! keeps the unacknowledged publishes and the requests still in its channel, but drops them
//! when the new connection starts a fresh session; we take them out on the error and hand
//! them back after the reconnect, so they are sent again (`tapbus_resent_total`; a
//! subscriber may see such an event twice). With QoS 1 nothing is lost and `published +
//! dropped` equals the events queued exactly; QoS 0 is at most once by definition: events
//! written into a connection that then broke are lost without a trace.
//!
//! A packet larger than the limit would make rumqttc tear the connection down, so the size
//! is checked first: an event whose PUBLISH packet would exceed `max_packet_size` (or the
//! smaller limit an MQTT 5 server announces) is dropped and counted as `too_large`.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use rumqttc::{Outgoing, QoS};
use tapbus_config::MqttSpec;
use tapbus_proto::event::Summary;
use tapbus_proto::subject::Template;
use tokio::time::Instant;

use super::Queue;
use super::settle::Ticket;
use crate::backoff::Backoff;
use crate::connect::mqtt as connect;
use crate::metrics::PublishMetrics;

/// Requests the client may hold for the event loop (rumqttc's default is 10).
const CLIENT_CAPACITY: usize = 1024;
const BATCH: usize = 512;
/// How long buffered events may take to reach the server once the queue has closed.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(5);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

pub async fn run(name: String, spec: MqttSpec, mut rx: Queue, m: PublishMetrics) {
    let c = &spec.connect;
    let transport = match connect::transport(c) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(output = %name, "MQTT TLS setup failed: {e}; dropping events for this output");
            while rx.recv().await.is_some() {
                m.dropped_error.inc();
            }
            return;
        }
    };
    let shared = Arc::new(Shared {
        limit: AtomicUsize::new(c.max_packet_size),
        handed: AtomicU64::new(0),
        done: AtomicU64::new(0),
        tickets: Default::default(),
        ticketed: Default::default(),
    });
    let link = Link {
        name: name.clone(),
        addr: format!("{}:{}", c.host, c.port),
        qos1: spec.qos == 1,
        m: m.clone(),
        shared: shared.clone(),
        state: LinkState::Starting,
        backoff: Backoff::new(BACKOFF_MIN, BACKOFF_MAX),
        warned_refused: false,
    };
    let (client, mut driver) = if c.version == 5 {
        let o = connect::options_v5(c, transport, true);
        let (c, el) = rumqttc::v5::AsyncClient::new(o, CLIENT_CAPACITY);
        (Client::V5(c), tokio::spawn(drive_v5(el, link)))
    } else {
        let o = connect::options_v4(c, transport, true);
        let (c, el) = rumqttc::AsyncClient::new(o, CLIENT_CAPACITY);
        (Client::V4(c), tokio::spawn(drive_v4(el, link)))
    };

    let qos = if spec.qos == 1 {
        QoS::AtLeastOnce
    } else {
        QoS::AtMostOnce
    };
    // Fixed part of a PUBLISH besides topic and payload: topic length, packet id (QoS 1),
    // properties length (MQTT 5).
    let overhead = 2 + if spec.qos == 1 { 2 } else { 0 } + if c.version == 5 { 1 } else { 0 };
    let mut topics = TopicCache::new(spec.topic.clone());
    let mut handed: u64 = 0;
    let mut warned_large = false;
    let mut warned_error = false;
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        for ev in batch.drain(..) {
            let topic = match &ev.subject {
                Some(t) => t.to_string(),
                None => topics.get(&ev.summary),
            };
            let size = packet_size(overhead + topic.len() + ev.payload.len());
            let limit = shared.limit.load(Ordering::Relaxed);
            if size > limit {
                m.dropped_too_large.inc();
                if !warned_large {
                    warned_large = true;
                    tracing::warn!(output = %name, %topic, size, limit, "event larger than max_packet_size; dropped (further ones are only counted, reason=\"too_large\")");
                }
                continue;
            }
            if let Some(t) = ev.settle {
                shared.ticketed.store(true, Ordering::Relaxed);
                if let Ok(mut q) = shared.tickets.lock() {
                    q.push_back((handed + 1, t));
                }
            }
            match client.publish(topic, qos, ev.payload).await {
                Ok(()) => {
                    handed += 1;
                    shared.handed.store(handed, Ordering::Relaxed);
                }
                Err(e) => {
                    // Not handed: its ticket has no completion to wait for (dropped).
                    if let Ok(mut q) = shared.tickets.lock()
                        && q.back().is_some_and(|(n, _)| *n == handed + 1)
                    {
                        q.pop_back();
                    }
                    m.dropped_error.inc();
                    if !warned_error {
                        warned_error = true;
                        tracing::warn!(output = %name, "MQTT publish failed: {e} (further failures are only counted)");
                    }
                }
            }
        }
    }

    // Queue closed: let the event loop write (QoS 0) or get acknowledged (QoS 1) what it
    // holds, within a bound, then say goodbye.
    let deadline = Instant::now() + SHUTDOWN_FLUSH;
    while shared.done.load(Ordering::Relaxed) < handed && Instant::now() < deadline {
        if driver.is_finished() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if !driver.is_finished() {
        let _ = tokio::time::timeout_at(deadline, client.disconnect()).await;
        let grace = deadline.max(Instant::now() + Duration::from_millis(500));
        if tokio::time::timeout_at(grace, &mut driver).await.is_err() {
            driver.abort();
            let _ = driver.await;
        }
    }
    // The driver has stopped: nothing more can complete, so the rest is counted once.
    let pending = handed.saturating_sub(shared.done.load(Ordering::Relaxed));
    if pending > 0 {
        tracing::warn!(output = %name, pending, "MQTT: events not confirmed before shutdown; counted as dropped");
        m.dropped_shutdown.inc_by(pending);
    }
    m.inflight.set(0);
    m.up.set(0);
}

/// What the publishing side and the event-loop task share.
struct Shared {
    /// Largest packet we may send: ours, or a smaller one announced by an MQTT 5 server.
    limit: AtomicUsize,
    /// Publishes handed to the client.
    handed: AtomicU64,
    /// Publishes completed: written (QoS 0) or acknowledged (QoS 1).
    done: AtomicU64,
    /// Consumers' settlement tickets with the hand-over number of their message. Publishes
    /// complete in the order they were handed (the server sends PUBACKs in the order it
    /// received the PUBLISHes, MQTT 3.1.1 4.6 / 5.0 4.6), so completion `n` settles the
    /// ticket of message `n`. Only touched once a ticket was seen (`ticketed`): the broker
    /// never takes this lock.
    tickets: std::sync::Mutex<VecDeque<(u64, Ticket)>>,
    ticketed: std::sync::atomic::AtomicBool,
}

impl Shared {
    /// Completion `done` happened (`published` or refused): settles its ticket.
    fn completed(&self, done: u64, published: bool) {
        if !self.ticketed.load(Ordering::Relaxed) {
            return;
        }
        let Ok(mut q) = self.tickets.lock() else {
            return;
        };
        while q.front().is_some_and(|(n, _)| *n <= done) {
            if let Some((n, t)) = q.pop_front()
                && n == done
                && published
            {
                t.published();
            }
        }
    }
}

enum Client {
    V4(rumqttc::AsyncClient),
    V5(rumqttc::v5::AsyncClient),
}

impl Client {
    async fn publish(&self, topic: String, qos: QoS, payload: Bytes) -> Result<(), String> {
        match self {
            Client::V4(c) => c
                .publish_bytes(topic, qos, false, payload)
                .await
                .map_err(|e| e.to_string()),
            Client::V5(c) => {
                let qos = match qos {
                    QoS::AtMostOnce => rumqttc::v5::mqttbytes::QoS::AtMostOnce,
                    QoS::AtLeastOnce => rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                    QoS::ExactlyOnce => rumqttc::v5::mqttbytes::QoS::ExactlyOnce,
                };
                c.publish_bytes(topic, qos, false, payload)
                    .await
                    .map_err(|e| e.to_string())
            }
        }
    }

    async fn disconnect(&self) {
        let _ = match self {
            Client::V4(c) => c.disconnect().await.map_err(|e| e.to_string()),
            Client::V5(c) => c.disconnect().await.map_err(|e| e.to_string()),
        };
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LinkState {
    Starting,
    Up,
    Down,
}

/// Connection state of the event-loop task: logs once per change and keeps the gauge.
struct Link {
    name: String,
    addr: String,
    qos1: bool,
    m: PublishMetrics,
    shared: Arc<Shared>,
    state: LinkState,
    backoff: Backoff,
    warned_refused: bool,
}

impl Link {
    fn connected(&mut self, server_max_packet: Option<u32>) {
        self.m.up.set(1);
        self.backoff.reset();
        if self.state != LinkState::Up {
            tracing::info!(output = %self.name, addr = %self.addr, "MQTT connected");
        }
        self.state = LinkState::Up;
        if let Some(max) = server_max_packet {
            let max = max as usize;
            if max < self.shared.limit.load(Ordering::Relaxed) {
                tracing::info!(output = %self.name, max, "MQTT server limits packets to {max} bytes");
                self.shared.limit.store(max, Ordering::Relaxed);
            }
        }
    }

    fn published(&self) {
        let done = self.shared.done.fetch_add(1, Ordering::Relaxed) + 1;
        self.m.published.inc();
        self.shared.completed(done, true);
        let handed = self.shared.handed.load(Ordering::Relaxed);
        self.m.inflight.set(handed.saturating_sub(done) as i64);
    }

    /// An MQTT 5 server refused a publish (PUBACK with an error reason).
    fn refused(&mut self, reason: &str) {
        let done = self.shared.done.fetch_add(1, Ordering::Relaxed) + 1;
        self.shared.completed(done, false);
        self.m.dropped_error.inc();
        if !self.warned_refused {
            self.warned_refused = true;
            tracing::warn!(output = %self.name, reason, "MQTT server refused a publish; dropped (further ones are only counted, reason=\"publish_error\")");
        }
    }

    /// Requests kept over a broken connection go out again on the new one (counted in
    /// `resent` as they go).
    fn restore(&self, n: usize) {
        if n > 0 {
            tracing::debug!(output = %self.name, requests = n, "MQTT: sending again what the broken connection had not confirmed");
        }
    }

    /// Logs the error on a state change, then waits before the next poll reconnects.
    async fn failed(&mut self, e: String) {
        self.m.up.set(0);
        match self.state {
            LinkState::Up => {
                tracing::warn!(output = %self.name, addr = %self.addr, "MQTT disconnected: {e}; reconnecting")
            }
            LinkState::Starting => {
                tracing::warn!(output = %self.name, addr = %self.addr, "MQTT connect failed: {e}; retrying")
            }
            LinkState::Down => tracing::debug!(output = %self.name, "MQTT reconnect failed: {e}"),
        }
        self.state = LinkState::Down;
        tokio::time::sleep(self.backoff.next_delay()).await;
    }
}

async fn drive_v4(mut el: rumqttc::EventLoop, mut link: Link) {
    use rumqttc::{Event, Packet};
    let mut kept = std::collections::VecDeque::new();
    let limit = el.mqtt_options.inflight();
    loop {
        // Requests kept over a broken connection go out again one at a time, and only when
        // rumqttc would take a new request itself (in-flight window not full, no packet-id
        // collision): its `pending` queue bypasses those checks.
        if link.state == LinkState::Up
            && el.pending.is_empty()
            && el.state.collision.is_none()
            && el.state.inflight() < limit
            && let Some(mut r) = kept.pop_front()
        {
            if let rumqttc::Request::Publish(p) = &mut r {
                p.pkid = 0;
                link.m.resent.inc();
            }
            el.pending.push_back(r);
        }
        match el.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                // rumqttc forgets its pending requests on a new session: we kept them.
                link.restore(kept.len());
                link.connected(None)
            }
            Ok(Event::Incoming(Packet::PubAck(_))) if link.qos1 => link.published(),
            Ok(Event::Outgoing(Outgoing::Publish(_))) if !link.qos1 => link.published(),
            Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
            Ok(_) => {}
            Err(rumqttc::ConnectionError::RequestsDone) => return,
            Err(e) => {
                kept.extend(el.pending.drain(..));
                link.failed(e.to_string()).await
            }
        }
    }
}

async fn drive_v5(mut el: rumqttc::v5::EventLoop, mut link: Link) {
    use rumqttc::v5::Event;
    use rumqttc::v5::mqttbytes::v5::Packet;
    use rumqttc::v5::mqttbytes::v5::PubAckReason;
    let mut kept = std::collections::VecDeque::new();
    // The in-flight window: ours (rumqttc's default, 100), or less if the server says so.
    let mut limit: u16 = 100;
    loop {
        // As for 3.1.1: kept requests go out one at a time, within the window.
        if link.state == LinkState::Up
            && el.pending.is_empty()
            && el.state.collision.is_none()
            && el.state.inflight() < limit
            && let Some(mut r) = kept.pop_front()
        {
            if let rumqttc::v5::Request::Publish(p) = &mut r {
                p.pkid = 0;
                link.m.resent.inc();
            }
            el.pending.push_back(r);
        }
        match el.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                // rumqttc forgets its pending requests on a new session: we kept them.
                link.restore(kept.len());
                if let Some(max) = ack.properties.as_ref().and_then(|p| p.receive_max) {
                    limit = limit.min(max.max(1));
                }
                link.connected(ack.properties.and_then(|p| p.max_packet_size))
            }
            Ok(Event::Incoming(Packet::PubAck(ack))) if link.qos1 => {
                if matches!(
                    ack.reason,
                    PubAckReason::Success | PubAckReason::NoMatchingSubscribers
                ) {
                    link.published()
                } else {
                    link.refused(&format!("{:?}", ack.reason))
                }
            }
            Ok(Event::Outgoing(Outgoing::Publish(_))) if !link.qos1 => link.published(),
            Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
            Ok(_) => {}
            Err(rumqttc::v5::ConnectionError::RequestsDone) => return,
            Err(e) => {
                kept.extend(el.pending.drain(..));
                link.failed(e.to_string()).await
            }
        }
    }
}

/// Size on the wire of an MQTT packet whose remaining length is `len` (fixed header byte,
/// variable-length remaining length, body).
fn packet_size(len: usize) -> usize {
    let len_len = match len {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    };
    1 + len_len + len
}

/// Server verification for mqtts://: the `tls_ca` bundle, else the system's CA bundle.
/// Rendered topics by the event fields the template uses (a stream from one server has a
/// handful of distinct topics).
struct TopicCache {
    template: Template,
    map: HashMap<Summary, String, rustc_hash::FxBuildHasher>,
    scratch: String,
}

impl TopicCache {
    const MAX: usize = 4096;

    fn new(template: Template) -> Self {
        TopicCache {
            template,
            map: HashMap::default(),
            scratch: String::with_capacity(64),
        }
    }

    fn get(&mut self, s: &Summary) -> String {
        let key = self.template.key(s);
        if let Some(t) = self.map.get(&key) {
            return t.clone();
        }
        if self.map.len() >= Self::MAX {
            self.map.clear();
        }
        self.template.render(s, &mut self.scratch);
        self.map.insert(key, self.scratch.clone());
        self.scratch.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::packet_size;

    #[test]
    fn packet_sizes_match_the_remaining_length_encoding() {
        assert_eq!(packet_size(0), 2);
        assert_eq!(packet_size(127), 129);
        assert_eq!(packet_size(128), 131);
        assert_eq!(packet_size(16_383), 16_386);
        assert_eq!(packet_size(16_384), 16_388);
    }
}
