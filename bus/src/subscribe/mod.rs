//! Subscribe: bus --> consumer. Every mode hands out [`Delivery`]s with an ack handle that
//! the consumer calls only after its own downstream write succeeded.
//!
//! One [`Subscriber`] per mode, each built from an already-connected client (or, for MQTT,
//! the client options: rumqttc builds its client and event loop together) and a spec:
//!
//! | mode | built by | semantics | what [`Delivery::ack`] does |
//! |---|---|---|---|
//! | NATS core | [`NatsCoreSubscriber::new`] | at most once | nothing |
//! | JetStream durable pull | [`JetStreamSubscriber::new`] | at least once | `+ACK` to the server |
//! | MQTT 3.1.1 / 5, QoS 1 | [`MqttSubscriber::v4`], [`MqttSubscriber::v5`] | at least once with a persistent session, else at most once | releases the PUBACK, in arrival order |
//! | Redis `PSUBSCRIBE` | [`RedisPubSubSubscriber::new`] | at most once | nothing |
//! | Redis stream consumer group | [`RedisStreamSubscriber::new`] | at least once | `XACK` |
//!
//! Every subscriber reports whether its connection is up through a
//! [`tokio::sync::watch::Receiver<bool>`] ([`Subscriber::connected`]) and logs each change
//! of that state once (tracing, target `tapbus_bus::subscribe`). The modes that keep
//! messages for a consumer (JetStream durables, Redis stream groups) also report its
//! [`Backlog`] every few seconds ([`Subscriber::backlog`]). [`Subscriber::next`]
//! handles what can be retried (reconnects with backoff, resubscribes) by itself and
//! returns an error only when the subscription cannot go on.

pub mod memory;
pub mod mqtt;
pub mod nats;
pub mod ordered_acks;
pub mod redis_pubsub;
mod redis_reply;
pub mod redis_stream;

use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;

pub use mqtt::{MqttSpec, MqttSubscriber};
pub use nats::{DeliverFrom, JetStreamSpec, JetStreamSubscriber, NatsCoreSpec, NatsCoreSubscriber};
pub use redis_pubsub::{RedisPubSubSpec, RedisPubSubSubscriber};
pub use redis_stream::{RedisStreamSpec, RedisStreamSubscriber, StreamStart};

/// How far a consumer is behind, as the bus keeps it (JetStream: the consumer's
/// `num_pending` and `num_ack_pending`; Redis stream group: `lag` and `pending` of
/// `XINFO GROUPS`). Shared by every process on the same durable or group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backlog {
    /// Messages stored and not yet delivered to the consumer (`None`: the bus cannot
    /// tell, e.g. Redis after entries were deleted from the stream).
    pub waiting: Option<u64>,
    /// Messages delivered and not yet acknowledged.
    pub unacked: u64,
    /// JetStream: the consumer's ack floor (the stream sequence up to which every message
    /// was acknowledged, as the server holds it); `None` where the bus keeps none.
    pub ack_floor: Option<u64>,
}

/// How often a subscriber asks the bus for its [`Backlog`].
pub const BACKLOG_POLL: Duration = Duration::from_secs(5);

/// What a subscriber promises about each message published to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Semantics {
    /// A message may be lost (consumer down, connection broken, slow consumer cut off);
    /// never delivered twice by the bus. Acks are no-ops.
    AtMostOnce,
    /// A message is delivered again until it was acked: duplicates are possible, so the
    /// consumer must be idempotent or tolerate them.
    AtLeastOnce,
}

/// One message taken from the bus.
#[derive(Debug)]
pub struct Delivery {
    /// The NATS subject, MQTT topic, Redis channel or Redis stream key it came on.
    pub subject: String,
    pub payload: Bytes,
    /// 1 the first time, more than 1 when the bus redelivers it; 1 where the bus cannot
    /// tell (each mode's doc says how it counts).
    pub delivered: u64,
    /// JetStream: the stream sequence; Redis streams: the entry id; else `None`.
    pub id: Option<String>,
    /// JetStream: the stream sequence as a number (what a consumer keys its record of
    /// handled messages on); else `None`.
    pub seq: Option<u64>,
    ack: Ack,
}

impl Delivery {
    /// Acknowledges the message. Call it only after the downstream write succeeded: what
    /// that tells the bus depends on the mode (see the table in the module doc).
    pub async fn ack(self) -> Result<(), AckError> {
        match self.ack {
            Ack::None => Ok(()),
            Ack::JetStream(a) => a.ack().await,
            Ack::Mqtt(a) => (*a).ack().await,
            Ack::RedisStream(a) => (*a).ack().await,
            Ack::Memory(a) => a.ack(),
        }
    }

    /// Tells the bus the message is still being worked on. JetStream: `+WPI`, which restarts
    /// the consumer's `ack_wait` for it; a no-op on every other bus (none of them has a
    /// redelivery timer the consumer can reset: a Redis stream entry is claimed by others
    /// after `min_idle` whatever this consumer says).
    pub async fn in_progress(&self) -> Result<(), AckError> {
        match &self.ack {
            Ack::JetStream(a) => a.in_progress().await,
            Ack::Memory(a) => a.in_progress(),
            Ack::None | Ack::Mqtt(_) | Ack::RedisStream(_) => Ok(()),
        }
    }

    /// Whether [`ack`](Self::ack) does anything (false for the at-most-once modes).
    pub fn needs_ack(&self) -> bool {
        !matches!(self.ack, Ack::None)
    }

    /// Hands the message back unhandled, for a consumer that took more than it will
    /// handle (it stops; drop the subscriber first, or the message may come straight
    /// back to it): JetStream sends `-NAK`, so the server delivers it again at once
    /// instead of after `ack_wait`; an MQTT message is abandoned (the acks after it go
    /// out; a persistent session gets it again after a reconnect); a Redis stream entry
    /// stays pending for this consumer until the group's `claim_idle` hands it to another
    /// (Redis has no NAK); the other buses have nothing to hand back.
    pub async fn release(self) -> Result<(), AckError> {
        match self.ack {
            Ack::JetStream(a) => a.nak().await,
            Ack::None | Ack::Mqtt(_) | Ack::RedisStream(_) | Ack::Memory(_) => Ok(()),
        }
    }

    /// What has this message's ack, once sent, written out to the bus ([`AckFlush`]).
    pub fn ack_flush(&self) -> AckFlush {
        match &self.ack {
            Ack::JetStream(a) => AckFlush(Flush::Nats(a.client())),
            Ack::Mqtt(a) => a
                .flush()
                .map_or_else(AckFlush::default, |f| AckFlush(Flush::Mqtt(f))),
            _ => AckFlush::default(),
        }
    }

    /// The ack handle alone, for a consumer that holds the message past its handling: the
    /// subject and payload are freed, what is kept is tens of bytes.
    pub fn into_ack(self) -> AckHandle {
        AckHandle(self.ack)
    }

    fn new(subject: String, payload: Bytes, delivered: u64, id: Option<String>, ack: Ack) -> Self {
        Delivery {
            subject,
            payload,
            delivered,
            id,
            seq: None,
            ack,
        }
    }
}

/// A delivery's ack handle without its subject and payload ([`Delivery::into_ack`]).
#[derive(Debug)]
pub struct AckHandle(Ack);

impl AckHandle {
    /// As [`Delivery::ack`].
    pub async fn ack(self) -> Result<(), AckError> {
        match self.0 {
            Ack::None => Ok(()),
            Ack::JetStream(a) => a.ack().await,
            Ack::Mqtt(a) => (*a).ack().await,
            Ack::RedisStream(a) => (*a).ack().await,
            Ack::Memory(a) => a.ack(),
        }
    }

    /// As [`Delivery::in_progress`].
    pub async fn in_progress(&self) -> Result<(), AckError> {
        match &self.0 {
            Ack::JetStream(a) => a.in_progress().await,
            Ack::Memory(a) => a.in_progress(),
            Ack::None | Ack::Mqtt(_) | Ack::RedisStream(_) => Ok(()),
        }
    }

    /// Whether [`ack`](Self::ack) does anything.
    pub fn needs_ack(&self) -> bool {
        !matches!(self.0, Ack::None)
    }

    /// A handle whose ack does nothing (tests, at-most-once inputs).
    ///
    /// ```
    /// assert!(std::mem::size_of::<tapbus_bus::subscribe::AckHandle>() <= 32);
    /// ```
    pub fn none() -> Self {
        AckHandle(Ack::None)
    }
}

/// Writes out the acks a consumer has sent on one input ([`Delivery::ack_flush`]), for a
/// process that stops: an ack queued and not yet written is lost with the process, and
/// the bus delivers that message again.
///
/// - JetStream: an ack is a publish queued on the client's connection (`ack()` returns
///   before it was written); [`AckFlush::flush`] returns once everything queued before
///   it was written and the server answered.
/// - MQTT: a PUBACK is queued for rumqttc's event loop; the flush queues a DISCONNECT
///   after the PUBACKs sent so far and returns once it was written, so they were too.
///   The subscription ends there, and the event loop lives on (also after the
///   subscriber was dropped) while an `AckFlush` of it exists.
/// - NATS core and Redis pub/sub have no acks, and a Redis stream's `XACK` was answered
///   when `ack()` returned: at once.
#[derive(Clone, Debug, Default)]
pub struct AckFlush(Flush);

#[derive(Clone, Debug, Default)]
enum Flush {
    #[default]
    None,
    Nats(std::sync::Arc<async_nats::Client>),
    Mqtt(mqtt::MqttFlush),
}

impl AckFlush {
    /// Waits as long as it takes (a disconnected NATS client flushes once it is connected
    /// again): bound it with a timeout.
    pub async fn flush(&self) -> Result<(), AckError> {
        match &self.0 {
            Flush::Nats(c) => c
                .flush()
                .await
                .map_err(|e| AckError::JetStream(e.to_string())),
            Flush::Mqtt(f) => f.flush().await,
            Flush::None => Ok(()),
        }
    }
}

/// The ack handle, one variant per bus; private so a consumer can only call `ack()`.
#[derive(Debug)]
enum Ack {
    None,
    JetStream(nats::JsAck),
    // Boxed: the enum is as large as its largest variant, and a consumer holds one per
    // message it waits to ack (the JetStream handle is 24 bytes).
    Mqtt(Box<mqtt::MqttAck>),
    RedisStream(Box<redis_stream::StreamAck>),
    Memory(memory::MemoryAck),
}

/// A spec that cannot work; returned before anything is sent.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid {what}: {why}")]
pub struct SpecError {
    pub what: &'static str,
    pub why: String,
}

impl SpecError {
    fn new(what: &'static str, why: impl Into<String>) -> Self {
        SpecError {
            what,
            why: why.into(),
        }
    }
}

/// Why a subscription cannot go on (transient failures are retried inside `next()`).
#[derive(Debug, thiserror::Error)]
pub enum SubscribeError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error("NATS subscribe: {0}")]
    NatsSubscribe(#[from] async_nats::SubscribeError),
    #[error("JetStream stream {stream}: {source}")]
    JetStreamStream {
        stream: String,
        #[source]
        source: async_nats::jetstream::context::GetStreamError,
    },
    #[error("JetStream consumer {durable}: {source}")]
    JetStreamConsumer {
        durable: String,
        #[source]
        source: async_nats::jetstream::stream::ConsumerError,
    },
    #[error("JetStream consumer {durable} exists with another configuration: {why}")]
    JetStreamConsumerMismatch { durable: String, why: String },
    #[error("JetStream messages: {0}")]
    JetStreamMessages(String),
    #[error("MQTT: {0}")]
    Mqtt(String),
    #[error("MQTT server refused the subscription to {filter}: {why}")]
    MqttRefused { filter: String, why: String },
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("Redis reply: {0}")]
    RedisReply(String),
    /// The subscription ended: the client was closed or the subscriber's task stopped.
    #[error("subscription closed")]
    Closed,
}

/// Why an ack did not reach the bus.
#[derive(Debug, thiserror::Error)]
pub enum AckError {
    #[error("JetStream ack: {0}")]
    JetStream(String),
    #[error("MQTT ack: {0}")]
    Mqtt(String),
    /// The connection the message came on is gone: its ack cannot be sent any more. With a
    /// persistent session the server delivers the message again; without one it is lost
    /// to this subscriber.
    #[error("the connection that delivered the message is gone; the ack was not sent")]
    Stale,
    #[error("Redis XACK: {0}")]
    Redis(#[from] redis::RedisError),
}

/// One subscriber of any mode.
#[derive(Debug)]
pub enum Subscriber {
    NatsCore(NatsCoreSubscriber),
    JetStream(JetStreamSubscriber),
    Mqtt(MqttSubscriber),
    RedisPubSub(RedisPubSubSubscriber),
    RedisStream(RedisStreamSubscriber),
}

impl Subscriber {
    /// The next message. Waits as long as it takes (wrap it in a timeout to bound that).
    /// Dropping the future loses no message: every mode but Redis streams is cancel-safe
    /// outright; for a Redis stream, entries a cancelled read had taken stay pending and
    /// are claimed again after `min_idle`, so run it where it is not cancelled (not as a
    /// losing `select!` branch) to avoid that delay.
    pub async fn next(&mut self) -> Result<Delivery, SubscribeError> {
        match self {
            Subscriber::NatsCore(s) => s.next().await,
            Subscriber::JetStream(s) => s.next().await,
            Subscriber::Mqtt(s) => s.next().await,
            Subscriber::RedisPubSub(s) => s.next().await,
            Subscriber::RedisStream(s) => s.next().await,
        }
    }

    pub fn semantics(&self) -> Semantics {
        match self {
            Subscriber::NatsCore(_) | Subscriber::RedisPubSub(_) => Semantics::AtMostOnce,
            Subscriber::JetStream(_) | Subscriber::RedisStream(_) => Semantics::AtLeastOnce,
            Subscriber::Mqtt(s) => s.semantics(),
        }
    }

    /// The consumer's backlog, asked of the bus every [`BACKLOG_POLL`]; always `None` for
    /// the modes that keep nothing for a consumer (NATS core, MQTT, Redis pub/sub), and
    /// `None` until the first answer.
    pub fn backlog(&self) -> watch::Receiver<Option<Backlog>> {
        match self {
            Subscriber::JetStream(s) => s.backlog(),
            Subscriber::RedisStream(s) => s.backlog(),
            Subscriber::NatsCore(_) | Subscriber::Mqtt(_) | Subscriber::RedisPubSub(_) => {
                watch::channel(None).1
            }
        }
    }

    /// Messages the bus client dropped before this process read them: NATS clients
    /// drop what overflows a subscription's buffer (a slow consumer; counted from the
    /// client's events, a lower bound). Lost for NATS core, delivered again after
    /// `ack_wait` for JetStream. Always 0 for MQTT and Redis, whose clients do not drop
    /// (a Redis server cuts a slow pub/sub client off instead: that shows as a reconnect).
    pub fn dropped(&self) -> std::sync::Arc<std::sync::atomic::AtomicU64> {
        match self {
            Subscriber::NatsCore(s) => s.dropped(),
            Subscriber::JetStream(s) => s.dropped(),
            Subscriber::Mqtt(_) | Subscriber::RedisPubSub(_) | Subscriber::RedisStream(_) => {
                Default::default()
            }
        }
    }

    /// Whether the connection is up, updated on every change.
    pub fn connected(&self) -> watch::Receiver<bool> {
        match self {
            Subscriber::NatsCore(s) => s.connected(),
            Subscriber::JetStream(s) => s.connected(),
            Subscriber::Mqtt(s) => s.connected(),
            Subscriber::RedisPubSub(s) => s.connected(),
            Subscriber::RedisStream(s) => s.connected(),
        }
    }
}

impl From<NatsCoreSubscriber> for Subscriber {
    fn from(s: NatsCoreSubscriber) -> Self {
        Subscriber::NatsCore(s)
    }
}
impl From<JetStreamSubscriber> for Subscriber {
    fn from(s: JetStreamSubscriber) -> Self {
        Subscriber::JetStream(s)
    }
}
impl From<MqttSubscriber> for Subscriber {
    fn from(s: MqttSubscriber) -> Self {
        Subscriber::Mqtt(s)
    }
}
impl From<RedisPubSubSubscriber> for Subscriber {
    fn from(s: RedisPubSubSubscriber) -> Self {
        Subscriber::RedisPubSub(s)
    }
}
impl From<RedisStreamSubscriber> for Subscriber {
    fn from(s: RedisStreamSubscriber) -> Self {
        Subscriber::RedisStream(s)
    }
}

/// The up/down state of one subscriber's connection: a watch channel plus logging once per
/// change.
#[derive(Debug)]
struct LinkState {
    what: String,
    tx: watch::Sender<bool>,
    /// None before the first outcome.
    known: Option<bool>,
}

impl LinkState {
    fn new(what: String) -> Self {
        let (tx, _) = watch::channel(false);
        LinkState {
            what,
            tx,
            known: None,
        }
    }

    fn subscribe(&self) -> watch::Receiver<bool> {
        self.tx.subscribe()
    }

    fn up(&mut self) {
        match self.known {
            Some(true) => return,
            Some(false) => {
                tracing::info!(target: "tapbus_bus::subscribe", "{}: connection back", self.what)
            }
            None => tracing::info!(target: "tapbus_bus::subscribe", "{}: connected", self.what),
        }
        self.known = Some(true);
        self.tx.send_replace(true);
    }

    fn down(&mut self, why: impl std::fmt::Display) {
        match self.known {
            Some(false) => {
                tracing::debug!(target: "tapbus_bus::subscribe", "{}: still down: {why}", self.what);
                return;
            }
            Some(true) => {
                tracing::warn!(target: "tapbus_bus::subscribe", "{}: connection lost: {why}; reconnecting", self.what)
            }
            None => {
                tracing::warn!(target: "tapbus_bus::subscribe", "{}: cannot connect: {why}; retrying", self.what)
            }
        }
        self.known = Some(false);
        self.tx.send_replace(false);
    }
}

/// Reconnect delays: 100 ms doubling to 5 s, with jitter, forever.
fn backoff() -> crate::backoff::Backoff {
    crate::backoff::Backoff::new(Duration::from_millis(100), Duration::from_secs(5))
}

impl SubscribeError {
    /// Whether the error can pass by itself, so starting again later may work: the bus is
    /// not reachable (yet), JetStream is not enabled (yet), the stream or the durable does
    /// not exist (yet), a request timed out. `false` for what only a configuration change
    /// fixes: an invalid spec, a durable that exists with another filter subject or ack
    /// policy, a subscription the server refused, a Redis reply of the wrong type.
    pub fn retryable(&self) -> bool {
        use async_nats::jetstream::ErrorCode as C;
        use async_nats::jetstream::context::GetStreamErrorKind as S;
        use async_nats::jetstream::stream::ConsumerErrorKind as K;
        // Server answers that describe a state that passes: JetStream still starting, the
        // stream or the durable not made yet, a cluster without a leader for now.
        let passes = |code: C| {
            [
                C::STREAM_NOT_FOUND,
                C::CONSUMER_NOT_FOUND,
                C::JETSTREAM_NOT_ENABLED,
                C::JETSTREAM_NOT_ENABLED_FOR_ACCOUNT,
                C::CLUSTER_NOT_AVAILABLE,
                C::CLUSTER_NO_PEERS,
                C::CLUSTER_NOT_LEADER,
                C::STREAM_OFFLINE,
                C::CONSUMER_OFFLINE,
                C::INSUFFICIENT_RESOURCES,
            ]
            .contains(&code)
        };
        match self {
            SubscribeError::Spec(_)
            | SubscribeError::JetStreamConsumerMismatch { .. }
            | SubscribeError::MqttRefused { .. }
            | SubscribeError::RedisReply(_) => false,
            SubscribeError::NatsSubscribe(_)
            | SubscribeError::JetStreamMessages(_)
            | SubscribeError::Mqtt(_)
            | SubscribeError::Closed => true,
            SubscribeError::JetStreamStream { source, .. } => match source.kind() {
                S::Request => true,
                S::JetStream(e) => passes(e.error_code()),
                S::EmptyName | S::InvalidStreamName => false,
            },
            SubscribeError::JetStreamConsumer { source, .. } => match source.kind() {
                K::TimedOut | K::Request => true,
                K::JetStream(e) => passes(e.error_code()),
                K::InvalidConsumerType | K::InvalidName | K::Other => false,
            },
            SubscribeError::Redis(e) => {
                e.is_io_error()
                    || e.is_connection_refusal()
                    || e.is_timeout()
                    || e.is_connection_dropped()
                    || matches!(
                        e.retry_method(),
                        redis::RetryMethod::WaitAndRetry
                            | redis::RetryMethod::Reconnect
                            | redis::RetryMethod::ReconnectFromInitialConnections
                            | redis::RetryMethod::RetryImmediately
                    )
            }
        }
    }
}
