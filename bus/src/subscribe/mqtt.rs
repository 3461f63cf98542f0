//! MQTT subscribers (rumqttc), protocol 3.1.1 or 5, QoS 1 with manual acks.
//!
//! rumqttc builds its client and event loop together, so a subscriber takes the
//! `MqttOptions` (3.1.1: [`rumqttc::MqttOptions`], 5: [`rumqttc::v5::MqttOptions`]) and
//! turns manual acks on. The event loop runs in a task of its own: it reconnects with
//! backoff (rumqttc reconnects only when polled again, at once), subscribes again after a
//! connect whose session the server did not keep (`session_present == false`, which is
//! always the case with a clean session), logs each up/down change once and shows it in
//! [`MqttSubscriber::connected`].
//!
//! **What an ack means.** [`Delivery::ack`] sends the PUBACK for that PUBLISH, but only
//! once every message that arrived before it was acked too: MQTT requires PUBACKs in
//! arrival order and rumqttc leaves ordering to the application, so acks go through the
//! [`OrderedAcks`] state machine. A PUBACK tells the
//! server it may forget the message. A message not acked is redelivered by the server only
//! after a reconnect, and only with a persistent session (3.1.1 `clean_session = false`;
//! 5 `clean_start = false` plus a `session_expiry_interval`); with a clean session an
//! unacked message is lost when the connection breaks. So the semantics are at least once
//! with a persistent session, at most once across reconnects without one. An ack of a
//! message that came on a connection that has since broken is not sent (the packet id
//! means nothing on the new connection) and returns [`AckError::Stale`]; the server
//! redelivers it. A delivery dropped without an ack is abandoned: it no longer holds back
//! the acks after it, and is never acked (redelivered after a reconnect with a persistent
//! session). `delivered` is 2 when the server set the DUP flag (a redelivery, count
//! unknown), else 1; `id` is `None`.
//!
//! Scale-out: shared subscriptions `$share/GROUP/FILTER` ([`MqttSpec::share_group`]),
//! for MQTT 5 (mosquitto 2.0 also accepts them from 3.1.1 clients). mosquitto keeps queuing
//! a disconnected member's share instead of handing it to the others, and can lose shared
//! QoS 1 messages when a member goes away (mosquitto #1747, #2662): the weakest no-loss
//! path of all the modes.
//!
//! Bounds: at most `max_pending` QoS 1 messages are held between arrival and ack (the
//! event loop is not polled while that many are, so the server's in-flight window and TCP
//! push back), and at most `max_pending` deliveries wait in the channel to
//! [`MqttSubscriber::next`]. A consumer that stops taking or acking messages for longer
//! than about 1.5 keep-alive intervals is disconnected by the server (no pings go out
//! meanwhile). Topic aliases (MQTT 5) are not resolved: the server must not use them
//! (rumqttc's default topic-alias maximum is 0, so mosquitto does not).

use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use tokio::sync::{Mutex, OwnedSemaphorePermit, Semaphore, mpsc, watch};

use super::nats::AbortOnDrop;
use super::ordered_acks::{AckOutcome, OrderedAcks};
use super::{Ack, AckError, Delivery, LinkState, Semantics, SpecError, SubscribeError, backoff};

/// An MQTT subscription.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MqttSpec {
    /// A topic filter, wildcards allowed (`dnstap/#`).
    pub filter: String,
    /// Subscribe as `$share/GROUP/FILTER`: each message goes to one member of the group.
    pub share_group: Option<String>,
    /// 1 (default; acks matter) or 0 (at most once; acks are no-ops).
    pub qos: u8,
    /// QoS 1 messages held between arrival and ack, at most; also the channel size.
    /// Default 1024.
    pub max_pending: usize,
}

impl MqttSpec {
    pub fn new(filter: impl Into<String>) -> Self {
        MqttSpec {
            filter: filter.into(),
            share_group: None,
            qos: 1,
            max_pending: 1024,
        }
    }

    pub fn share_group(mut self, group: impl Into<String>) -> Self {
        self.share_group = Some(group.into());
        self
    }

    /// The filter as sent in SUBSCRIBE.
    pub fn subscription(&self) -> String {
        match &self.share_group {
            Some(g) => format!("$share/{g}/{}", self.filter),
            None => self.filter.clone(),
        }
    }

    pub fn validate(&self) -> Result<(), SpecError> {
        let f = &self.filter;
        if f.is_empty() || f.len() > 65_535 || f.contains('\0') {
            return Err(SpecError::new(
                "MQTT topic filter",
                "must be 1 to 65535 bytes without NUL",
            ));
        }
        let levels: Vec<&str> = f.split('/').collect();
        for (i, l) in levels.iter().enumerate() {
            if l.contains('#') && (*l != "#" || i + 1 != levels.len()) {
                return Err(SpecError::new(
                    "MQTT topic filter",
                    format!("{f:?}: '#' must be a whole last level"),
                ));
            }
            if l.contains('+') && *l != "+" {
                return Err(SpecError::new(
                    "MQTT topic filter",
                    format!("{f:?}: '+' must be a whole level"),
                ));
            }
        }
        if self.share_group.is_some() && f.starts_with("$share/") {
            return Err(SpecError::new(
                "MQTT topic filter",
                "give the bare filter and the group in share_group",
            ));
        }
        if let Some(g) = &self.share_group
            && (g.is_empty() || g.contains(['/', '+', '#']))
        {
            return Err(SpecError::new(
                "MQTT share group",
                format!("{g:?} must be non-empty without '/', '+' or '#'"),
            ));
        }
        if self.qos > 1 {
            return Err(SpecError::new(
                "MQTT qos",
                "0 or 1 (QoS 2 is not supported)",
            ));
        }
        if self.max_pending == 0 || self.max_pending > u16::MAX as usize {
            return Err(SpecError::new("MQTT max_pending", "1 to 65535"));
        }
        Ok(())
    }
}

/// An MQTT subscription with manual, ordered acks; see the module doc for what an ack
/// means ([`crate::subscribe::mqtt`]). The event loop runs in a task that stops when this is dropped (the connection
/// is then closed without a DISCONNECT, as by a crash).
#[derive(Debug)]
pub struct MqttSubscriber {
    rx: mpsc::Receiver<Result<Delivery, SubscribeError>>,
    semantics: Semantics,
    connected: watch::Receiver<bool>,
    shared: Arc<Shared>,
    /// The event-loop task: aborted when the subscriber and every [`MqttFlush`] of its
    /// deliveries are gone.
    _task: Arc<AbortOnDrop>,
}

impl MqttSubscriber {
    /// MQTT 3.1.1. `opts` as the connect layer built them (server, client id, session,
    /// credentials, TLS); manual acks are turned on here.
    pub fn v4(mut opts: rumqttc::MqttOptions, spec: &MqttSpec) -> Result<Self, SubscribeError> {
        spec.validate()?;
        opts.set_manual_acks(true);
        let semantics = semantics(spec, !opts.clean_session());
        let (addr, port) = opts.broker_address();
        let what = format!("MQTT {addr}:{port} {}", spec.subscription());
        let (client, el) = rumqttc::AsyncClient::new(opts, request_capacity(spec));
        let client = Client::V4(client);
        let (core, rx, connected) = Core::new(what, spec, client);
        let shared = core.shared.clone();
        let task = Arc::new(AbortOnDrop(tokio::spawn(drive_v4(el, core))));
        let _ = shared.task.set(Arc::downgrade(&task));
        Ok(MqttSubscriber {
            rx,
            semantics,
            connected,
            shared,
            _task: task,
        })
    }

    /// MQTT 5. `opts` as the connect layer built them; manual acks are turned on here, and
    /// the receive maximum (how many QoS 1 messages the server may have in flight to us) is
    /// capped at `max_pending`.
    pub fn v5(mut opts: rumqttc::v5::MqttOptions, spec: &MqttSpec) -> Result<Self, SubscribeError> {
        spec.validate()?;
        opts.set_manual_acks(true);
        let cap = u16::try_from(spec.max_pending).unwrap_or(u16::MAX);
        let recv_max = opts.receive_maximum().map_or(cap, |m| m.min(cap));
        opts.set_receive_maximum(Some(recv_max));
        let persistent = !opts.clean_start() && opts.session_expiry_interval().unwrap_or(0) > 0;
        let semantics = semantics(spec, persistent);
        let (addr, port) = opts.broker_address();
        let what = format!("MQTT5 {addr}:{port} {}", spec.subscription());
        let (client, el) = rumqttc::v5::AsyncClient::new(opts, request_capacity(spec));
        let client = Client::V5(client);
        let (core, rx, connected) = Core::new(what, spec, client);
        let shared = core.shared.clone();
        let task = Arc::new(AbortOnDrop(tokio::spawn(drive_v5(el, core))));
        let _ = shared.task.set(Arc::downgrade(&task));
        Ok(MqttSubscriber {
            rx,
            semantics,
            connected,
            shared,
            _task: task,
        })
    }

    /// The next message; cancel-safe. A refused subscription is returned as
    /// [`SubscribeError::MqttRefused`] and ends the subscription.
    pub async fn next(&mut self) -> Result<Delivery, SubscribeError> {
        self.rx.recv().await.unwrap_or(Err(SubscribeError::Closed))
    }

    pub fn connected(&self) -> watch::Receiver<bool> {
        self.connected.clone()
    }

    /// At least once only with QoS 1 and a persistent session (3.1.1: `clean_session` off;
    /// 5: `clean_start` off and a non-zero `session_expiry_interval`): without one, the
    /// server forgets unacked messages when the connection breaks.
    pub fn semantics(&self) -> Semantics {
        self.semantics
    }

    /// Sends DISCONNECT after every PUBACK queued so far and waits (up to `limit`) until it
    /// was written: the server then drops a clean session at once and keeps a persistent
    /// one. Unacked messages stay unacked; the subscription ends.
    pub async fn close(self, limit: Duration) {
        let flush = MqttFlush {
            shared: self.shared.clone(),
            _task: self._task.clone(),
        };
        let _ = tokio::time::timeout(limit, flush.flush()).await;
    }
}

fn semantics(spec: &MqttSpec, persistent_session: bool) -> Semantics {
    if spec.qos == 1 && persistent_session {
        Semantics::AtLeastOnce
    } else {
        Semantics::AtMostOnce
    }
}

/// Requests the client may queue for the event loop: acks (bounded by `max_pending`) and
/// the odd SUBSCRIBE.
fn request_capacity(spec: &MqttSpec) -> usize {
    2 * spec.max_pending + 16
}

#[derive(Clone, Debug)]
enum Client {
    V4(rumqttc::AsyncClient),
    V5(rumqttc::v5::AsyncClient),
}

#[derive(Debug)]
enum Pub {
    V4(rumqttc::Publish),
    V5(rumqttc::v5::mqttbytes::v5::Publish),
}

impl Client {
    async fn disconnect(&self) -> Result<(), String> {
        match self {
            Client::V4(c) => c.disconnect().await.map_err(|e| e.to_string()),
            Client::V5(c) => c.disconnect().await.map_err(|e| e.to_string()),
        }
    }

    async fn puback(&self, p: &Pub) -> Result<(), AckError> {
        match (self, p) {
            (Client::V4(c), Pub::V4(p)) => {
                c.ack(p).await.map_err(|e| AckError::Mqtt(e.to_string()))
            }
            (Client::V5(c), Pub::V5(p)) => {
                c.ack(p).await.map_err(|e| AckError::Mqtt(e.to_string()))
            }
            _ => Err(AckError::Mqtt("protocol version mix-up".into())),
        }
    }

    fn try_subscribe(&self, filter: &str, qos: u8) -> Result<(), String> {
        match self {
            Client::V4(c) => {
                let q = if qos == 1 {
                    rumqttc::QoS::AtLeastOnce
                } else {
                    rumqttc::QoS::AtMostOnce
                };
                c.try_subscribe(filter, q).map_err(|e| e.to_string())
            }
            Client::V5(c) => {
                use rumqttc::v5::mqttbytes::QoS;
                let q = if qos == 1 {
                    QoS::AtLeastOnce
                } else {
                    QoS::AtMostOnce
                };
                c.try_subscribe(filter, q).map_err(|e| e.to_string())
            }
        }
    }
}

type Held = OrderedAcks<(Pub, OwnedSemaphorePermit)>;

/// What the subscriber, its event loop and every ack handle share.
#[derive(Debug)]
struct Shared {
    acks: Mutex<Held>,
    client: Client,
    /// Set by the event loop once a DISCONNECT was written (`Ok`), or when it stopped
    /// before one could be (`Err`).
    closed: watch::Receiver<Option<Result<(), String>>>,
    /// The event-loop task, for [`MqttFlush`] (weak: the task's own state holds this).
    task: OnceLock<Weak<AbortOnDrop>>,
}

/// The ack handle of one QoS 1 message.
#[derive(Debug)]
pub(super) struct MqttAck {
    shared: Arc<Shared>,
    seq: u64,
    done: bool,
}

impl MqttAck {
    pub(super) async fn ack(mut self) -> Result<(), AckError> {
        self.done = true;
        let mut acks = self.shared.acks.lock().await;
        let outcome = acks.ack(self.seq);
        // PUBACKs are queued while the lock is held, so they go out in release order.
        release(&self.shared.client, outcome).await
    }

    /// The flush of this message's subscription; `None` once its event loop is gone.
    pub(super) fn flush(&self) -> Option<MqttFlush> {
        let task = self.shared.task.get()?.upgrade()?;
        Some(MqttFlush {
            shared: self.shared.clone(),
            _task: task,
        })
    }
}

impl Drop for MqttAck {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        // Dropped without an ack: let the acks after it go (in order, under the lock).
        let shared = self.shared.clone();
        let seq = self.seq;
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let mut a = shared.acks.lock().await;
                let outcome = a.abandon(seq);
                if let Err(e) = release(&shared.client, outcome).await {
                    tracing::debug!(target: "tapbus_bus::subscribe", "MQTT acks after an abandoned message: {e}");
                }
            });
        }
    }
}

/// Writes out the PUBACKs queued on one subscription ([`super::AckFlush`]): rumqttc
/// queues a PUBACK for its event loop, which writes requests in order, so a DISCONNECT
/// queued after them has been written only once they were. It keeps the event loop alive
/// (also after the subscriber was dropped), and ends the subscription: for a process
/// that stops.
#[derive(Clone, Debug)]
pub(super) struct MqttFlush {
    shared: Arc<Shared>,
    _task: Arc<AbortOnDrop>,
}

impl MqttFlush {
    pub(super) async fn flush(&self) -> Result<(), AckError> {
        let mut closed = self.shared.closed.clone();
        if closed.borrow().is_none() {
            // Queued after every PUBACK sent so far (the acks lock orders them).
            let _order = self.shared.acks.lock().await;
            self.shared
                .client
                .disconnect()
                .await
                .map_err(|e| AckError::Mqtt(format!("DISCONNECT not queued: {e}")))?;
        }
        match closed.wait_for(Option::is_some).await {
            Ok(done) => match done.as_ref() {
                Some(Ok(())) => Ok(()),
                Some(Err(e)) => Err(AckError::Mqtt(e.clone())),
                None => Err(AckError::Mqtt("not closed".into())),
            },
            Err(_) => Err(AckError::Mqtt(
                "the event loop ended before the acks were written".into(),
            )),
        }
    }
}

async fn release(
    client: &Client,
    outcome: AckOutcome<(Pub, OwnedSemaphorePermit)>,
) -> Result<(), AckError> {
    match outcome {
        AckOutcome::Released(items) => {
            for (p, permit) in items {
                client.puback(&p).await?;
                drop(permit);
            }
            Ok(())
        }
        AckOutcome::Stale => Err(AckError::Stale),
        AckOutcome::Unknown => Err(AckError::Mqtt("ack of an unknown message".into())),
    }
}

/// The event-loop task's state, common to both protocol versions.
struct Core {
    link: LinkState,
    filter: String,
    qos: u8,
    shared: Arc<Shared>,
    closed: watch::Sender<Option<Result<(), String>>>,
    permits: Arc<Semaphore>,
    held: Option<OwnedSemaphorePermit>,
    tx: mpsc::Sender<Result<Delivery, SubscribeError>>,
    delays: crate::backoff::Backoff,
    need_subscribe: bool,
}

type Channel = (
    Core,
    mpsc::Receiver<Result<Delivery, SubscribeError>>,
    watch::Receiver<bool>,
);

impl Core {
    fn new(what: String, spec: &MqttSpec, client: Client) -> Channel {
        let link = LinkState::new(what);
        let connected = link.subscribe();
        let (tx, rx) = mpsc::channel(spec.max_pending);
        let (closed, closed_rx) = watch::channel(None);
        let core = Core {
            link,
            filter: spec.subscription(),
            qos: spec.qos,
            shared: Arc::new(Shared {
                acks: Mutex::new(OrderedAcks::new(spec.max_pending)),
                client,
                closed: closed_rx,
                task: OnceLock::new(),
            }),
            closed,
            permits: Arc::new(Semaphore::new(spec.max_pending)),
            held: None,
            tx,
            delays: backoff(),
            need_subscribe: false,
        };
        (core, rx, connected)
    }

    /// The DISCONNECT a flush queued was written: every PUBACK before it was too.
    fn disconnected(&self) {
        tracing::debug!(target: "tapbus_bus::subscribe", "{}: disconnected, acks written", self.link.what);
        self.closed.send_replace(Some(Ok(())));
    }

    /// The event loop stops without having written a DISCONNECT.
    fn stopped(&self, why: String) {
        self.closed.send_if_modified(|c| {
            if c.is_none() {
                *c = Some(Err(why));
                true
            } else {
                false
            }
        });
    }

    /// Waits until one more QoS 1 message may be held; false when the subscriber is gone.
    async fn ready(&mut self) -> bool {
        if self.held.is_none() {
            tokio::select! {
                p = self.permits.clone().acquire_owned() => match p {
                    Ok(p) => self.held = Some(p),
                    Err(_) => return false,
                },
                () = self.tx.closed() => return false,
            }
        }
        if self.need_subscribe {
            match self.shared.client.try_subscribe(&self.filter, self.qos) {
                Ok(()) => self.need_subscribe = false,
                Err(e) => {
                    tracing::debug!(target: "tapbus_bus::subscribe", "{}: subscribe queued later: {e}", self.link.what)
                }
            }
        }
        !self.tx.is_closed()
    }

    fn connected(&mut self, session_present: bool) {
        self.link.up();
        self.delays.reset();
        if !session_present {
            self.need_subscribe = true;
        }
    }

    /// Hands one PUBLISH to the consumer; false when the subscriber is gone.
    async fn publish(
        &mut self,
        topic: String,
        p: Pub,
        payload: bytes::Bytes,
        dup: bool,
        qos1: bool,
    ) -> bool {
        let delivered = if dup { 2 } else { 1 };
        let ack = if qos1 && self.qos == 1 {
            let Some(permit) = self.held.take() else {
                // Not reached: `ready()` ran before the poll that returned this.
                tracing::error!(target: "tapbus_bus::subscribe", "{}: QoS 1 message without a slot; not acked", self.link.what);
                return true;
            };
            let seq = match self.shared.acks.lock().await.arrive((p, permit)) {
                Ok(seq) => seq,
                Err(_) => {
                    tracing::error!(target: "tapbus_bus::subscribe", "{}: ack window full; message not acked", self.link.what);
                    return true;
                }
            };
            Ack::Mqtt(Box::new(MqttAck {
                shared: self.shared.clone(),
                seq,
                done: false,
            }))
        } else {
            Ack::None
        };
        self.tx
            .send(Ok(Delivery::new(topic, payload, delivered, None, ack)))
            .await
            .is_ok()
    }

    /// A SUBACK; false (after telling the consumer) when the server refused the filter.
    async fn suback(&mut self, refused: Option<String>) -> bool {
        match refused {
            None => {
                tracing::debug!(target: "tapbus_bus::subscribe", "{}: subscribed", self.link.what);
                true
            }
            Some(why) => {
                let _ = self
                    .tx
                    .send(Err(SubscribeError::MqttRefused {
                        filter: self.filter.clone(),
                        why,
                    }))
                    .await;
                false
            }
        }
    }

    async fn failed(&mut self, e: impl std::fmt::Display) {
        self.link.down(e);
        let dropped = self.shared.acks.lock().await.reset();
        if dropped > 0 {
            tracing::debug!(target: "tapbus_bus::subscribe", "{}: {dropped} unacked messages of the lost connection will not be acked", self.link.what);
        }
        let d = self.delays.next_delay();
        tokio::select! {
            () = tokio::time::sleep(d) => {}
            () = self.tx.closed() => {}
        }
    }
}

async fn drive_v4(mut el: rumqttc::EventLoop, mut core: Core) {
    use rumqttc::{Event, Outgoing, Packet, QoS, SubscribeReasonCode};
    while core.ready().await {
        match el.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => core.connected(ack.session_present),
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let topic = p.topic.clone();
                let payload = p.payload.clone();
                let (dup, qos1) = (p.dup, p.qos == QoS::AtLeastOnce);
                if !core.publish(topic, Pub::V4(p), payload, dup, qos1).await {
                    break;
                }
            }
            Ok(Event::Incoming(Packet::SubAck(s))) => {
                let refused = s
                    .return_codes
                    .iter()
                    .any(|c| matches!(c, SubscribeReasonCode::Failure))
                    .then(|| "failure return code".to_string());
                if !core.suback(refused).await {
                    return core.stopped("the subscription was refused".into());
                }
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => return core.disconnected(),
            Ok(_) => {}
            Err(rumqttc::ConnectionError::RequestsDone) => {
                return core.stopped("the client is gone".into());
            }
            Err(e) => core.failed(e).await,
        }
    }
    // The subscriber is gone; a flush may still want the PUBACKs queued so far written.
    // Messages arriving now are not taken (never acked: the server delivers them again).
    loop {
        match el.poll().await {
            Ok(Event::Outgoing(Outgoing::Disconnect)) => return core.disconnected(),
            Ok(_) => {}
            Err(e) => {
                return core.stopped(format!("connection lost before the acks were written: {e}"));
            }
        }
    }
}

async fn drive_v5(mut el: rumqttc::v5::EventLoop, mut core: Core) {
    use rumqttc::Outgoing;
    use rumqttc::v5::Event;
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::mqttbytes::v5::{Packet, SubscribeReasonCode};
    while core.ready().await {
        match el.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => core.connected(ack.session_present),
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let topic = String::from_utf8_lossy(&p.topic).into_owned();
                let payload = p.payload.clone();
                let (dup, qos1) = (p.dup, p.qos == QoS::AtLeastOnce);
                if !core.publish(topic, Pub::V5(p), payload, dup, qos1).await {
                    break;
                }
            }
            Ok(Event::Incoming(Packet::SubAck(s))) => {
                let refused = s
                    .return_codes
                    .iter()
                    .find(|c| !matches!(c, SubscribeReasonCode::Success(_)))
                    .map(|c| format!("{c:?}"));
                if !core.suback(refused).await {
                    return core.stopped("the subscription was refused".into());
                }
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => return core.disconnected(),
            Ok(_) => {}
            Err(rumqttc::v5::ConnectionError::RequestsDone) => {
                return core.stopped("the client is gone".into());
            }
            Err(e) => core.failed(e).await,
        }
    }
    loop {
        match el.poll().await {
            Ok(Event::Outgoing(Outgoing::Disconnect)) => return core.disconnected(),
            Ok(_) => {}
            Err(e) => {
                return core.stopped(format!("connection lost before the acks were written: {e}"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_validation() {
        assert_eq!(MqttSpec::new("dnstap/#").validate(), Ok(()));
        assert_eq!(MqttSpec::new("dnstap/+/client_response").validate(), Ok(()));
        let s = MqttSpec::new("dnstap/#").share_group("loki");
        assert_eq!(s.validate(), Ok(()));
        assert_eq!(s.subscription(), "$share/loki/dnstap/#");
        assert_eq!(MqttSpec::new("a/b").subscription(), "a/b");
        for bad in ["", "a/#/b", "a#", "a/b+", "a\0b"] {
            assert!(MqttSpec::new(bad).validate().is_err(), "{bad:?} accepted");
        }
        assert!(MqttSpec::new("a").share_group("").validate().is_err());
        assert!(MqttSpec::new("a").share_group("g/h").validate().is_err());
        assert!(
            MqttSpec::new("$share/g/a")
                .share_group("g")
                .validate()
                .is_err()
        );
        let mut s = MqttSpec::new("a");
        s.qos = 2;
        assert!(s.validate().is_err());
        let mut s = MqttSpec::new("a");
        s.max_pending = 0;
        assert!(s.validate().is_err());
        s.max_pending = 70_000;
        assert!(s.validate().is_err());
    }
}
