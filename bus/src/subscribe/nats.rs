//! NATS subscribers (async-nats): core subscriptions (at most once) and JetStream durable
//! pull consumers (at least once, explicit acks).
//!
//! The client reconnects by itself and restores core subscriptions and pull requests. It
//! is handed in already built, so its options (capacity, auth, TLS, event callback) belong
//! to the connect layer; the up/down state shown by [`NatsCoreSubscriber::connected`] and
//! [`JetStreamSubscriber::connected`] is therefore sampled from
//! `Client::connection_state()` every 100 ms by a small task (async-nats has no way to
//! add an event listener to a client that is already built), and each change is logged
//! once.

use std::time::Duration;

use async_nats::jetstream::{
    self, AckKind,
    consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull},
};
use bytes::Bytes;
use futures::StreamExt;
use std::sync::Arc;
use tokio::sync::watch;

use crate::connect::nats::SlowConsumer;

use super::{
    Ack, AckError, BACKLOG_POLL, Backlog, Delivery, LinkState, SpecError, SubscribeError, backoff,
};

/// How often the connection state is sampled.
const STATE_POLL: Duration = Duration::from_millis(100);

/// A NATS core subscription.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NatsCoreSpec {
    /// A subject, wildcards allowed (`dnstap.>`).
    pub subject: String,
    /// A queue group: each message goes to one member of the group (scale-out).
    pub queue_group: Option<String>,
}

impl NatsCoreSpec {
    pub fn new(subject: impl Into<String>) -> Self {
        NatsCoreSpec {
            subject: subject.into(),
            queue_group: None,
        }
    }

    pub fn queue_group(mut self, group: impl Into<String>) -> Self {
        self.queue_group = Some(group.into());
        self
    }

    pub fn validate(&self) -> Result<(), SpecError> {
        check_subject("NATS subject", &self.subject, true)?;
        if let Some(g) = &self.queue_group {
            check_token("NATS queue group", g)?;
        }
        Ok(())
    }
}

/// NATS core: **at most once**. The server sends each message to the subscribers
/// connected at that moment (to one member of a queue group); nothing is stored, so a
/// message published while this subscriber is disconnected, or dropped because it is a
/// slow consumer (the client's `subscription_capacity`, 65 536 by default, bounds the
/// buffer), is lost. [`Delivery::ack`] is a no-op; `delivered` is always 1.
#[derive(Debug)]
pub struct NatsCoreSubscriber {
    sub: async_nats::Subscriber,
    dropped: SlowConsumer,
    connected: watch::Receiver<bool>,
    _watcher: AbortOnDrop,
}

impl NatsCoreSubscriber {
    pub async fn new(
        client: &async_nats::Client,
        spec: &NatsCoreSpec,
    ) -> Result<Self, SubscribeError> {
        spec.validate()?;
        let sub = match &spec.queue_group {
            None => client.subscribe(spec.subject.clone()).await?,
            Some(g) => {
                client
                    .queue_subscribe(spec.subject.clone(), g.clone())
                    .await?
            }
        };
        // Once `new` returns the server has the SUB (a PING after it came back), so what is
        // published from then on reaches this subscriber. While disconnected it waits at
        // most 5 s; the client sends the SUB when it reconnects.
        let _ = tokio::time::timeout(Duration::from_secs(5), client.flush()).await;
        let what = match &spec.queue_group {
            None => format!("NATS subscription {}", spec.subject),
            Some(g) => format!("NATS subscription {} (queue group {g})", spec.subject),
        };
        let (connected, watcher) = watch_state(client.clone(), what);
        Ok(NatsCoreSubscriber {
            sub,
            dropped: SlowConsumer::default(),
            connected,
            _watcher: watcher,
        })
    }

    /// The next message; cancel-safe. `Closed` once the client is closed.
    pub async fn next(&mut self) -> Result<Delivery, SubscribeError> {
        let m = self.sub.next().await.ok_or(SubscribeError::Closed)?;
        Ok(Delivery::new(
            m.subject.to_string(),
            m.payload,
            1,
            None,
            Ack::None,
        ))
    }

    pub fn connected(&self) -> watch::Receiver<bool> {
        self.connected.clone()
    }

    /// Counts into `c` what the client drops for being a slow consumer: `c` must be the
    /// counter the client was connected with ([`crate::connect::nats::connect`]), which
    /// counts for every subscription of that client.
    pub fn count_drops(mut self, c: SlowConsumer) -> Self {
        self.dropped = c;
        self
    }

    /// Messages the client dropped (slow consumer): lost, NATS core keeps nothing.
    pub fn dropped(&self) -> SlowConsumer {
        self.dropped.clone()
    }
}

/// Where a newly created durable starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DeliverFrom {
    /// Everything still in the stream.
    #[default]
    All,
    /// Only messages stored after the consumer was created.
    New,
}

/// A JetStream durable pull consumer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JetStreamSpec {
    /// The stream (it must exist: creating streams is the publisher's business).
    pub stream: String,
    /// The durable consumer's name: bound if it exists, else created with this spec.
    pub durable: String,
    /// Only messages on this subject (wildcards allowed); `None`: the whole stream.
    pub filter_subject: Option<String>,
    /// Messages delivered and not yet acked, at most (server-side bound). Default 4096.
    pub max_ack_pending: i64,
    /// Redelivery after this long without an ack or `in_progress()`. Default 30 s.
    pub ack_wait: Duration,
    pub deliver: DeliverFrom,
    /// Messages asked for per pull request. Default 1024
    /// ([`tapbus_config::subscribe::DEFAULT_PULL_BATCH`]; at most `max_ack_pending`).
    pub batch: usize,
    /// The server deletes the consumer after this long without a pull (JetStream's
    /// `inactive_threshold`); `None`: it stays until deleted. Set for consumers made per
    /// process, so that one that exits or dies leaves nothing behind.
    pub inactive_threshold: Option<Duration>,
}

impl JetStreamSpec {
    pub fn new(stream: impl Into<String>, durable: impl Into<String>) -> Self {
        JetStreamSpec {
            stream: stream.into(),
            durable: durable.into(),
            filter_subject: None,
            max_ack_pending: 4096,
            ack_wait: Duration::from_secs(30),
            deliver: DeliverFrom::All,
            batch: tapbus_config::subscribe::DEFAULT_PULL_BATCH as usize,
            inactive_threshold: None,
        }
    }

    pub fn validate(&self) -> Result<(), SpecError> {
        check_token("JetStream stream name", &self.stream)?;
        check_token("JetStream durable name", &self.durable)?;
        if let Some(f) = &self.filter_subject {
            check_subject("JetStream filter subject", f, true)?;
        }
        if self.max_ack_pending < 1 {
            return Err(SpecError::new(
                "JetStream max_ack_pending",
                "must be at least 1 (the bound on unacked messages)",
            ));
        }
        if self.ack_wait < Duration::from_millis(100) {
            return Err(SpecError::new(
                "JetStream ack_wait",
                "must be at least 100 ms",
            ));
        }
        if self.batch == 0 {
            return Err(SpecError::new("JetStream batch", "must be at least 1"));
        }
        Ok(())
    }

    fn consumer_config(&self) -> pull::Config {
        pull::Config {
            durable_name: Some(self.durable.clone()),
            filter_subject: self.filter_subject.clone().unwrap_or_default(),
            ack_policy: AckPolicy::Explicit,
            ack_wait: self.ack_wait,
            max_ack_pending: self.max_ack_pending,
            deliver_policy: match self.deliver {
                DeliverFrom::All => DeliverPolicy::All,
                DeliverFrom::New => DeliverPolicy::New,
            },
            inactive_threshold: self.inactive_threshold.unwrap_or_default(),
            ..Default::default()
        }
    }
}

/// JetStream durable pull consumer: **at least once**. [`Delivery::ack`] sends `+ACK`
/// for that message (and only that one: ack policy Explicit, so two processes on one
/// durable never ack each other's messages). The ack is handed to the client's connection
/// and not confirmed by the server: if that connection breaks before it is written, or the
/// ack arrives after `ack_wait` ran out, the message is delivered again (nats-server
/// #4786), so use [`Delivery::in_progress`] (`+WPI`, which restarts `ack_wait`) while a
/// downstream write retries. A message not acked within `ack_wait` is redelivered, to this
/// or another process bound to the durable; `delivered` is the server's delivery count
/// and `id` the stream sequence. At most `max_ack_pending` messages are out unacked.
pub struct JetStreamSubscriber {
    messages: pull::Stream,
    client: Arc<async_nats::Client>,
    what: String,
    connected: watch::Receiver<bool>,
    _watcher: AbortOnDrop,
    backlog: watch::Receiver<Option<Backlog>>,
    _backlog_poll: AbortOnDrop,
    delays: crate::backoff::Backoff,
    dropped: SlowConsumer,
}

impl std::fmt::Debug for JetStreamSubscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JetStreamSubscriber")
            .field("what", &self.what)
            .finish()
    }
}

impl JetStreamSubscriber {
    /// Binds to the durable, creating it from `spec` if it does not exist. An existing
    /// durable with another filter subject is refused; other differences (ack_wait,
    /// max_ack_pending) are logged and the server's values apply.
    pub async fn new(
        client: &async_nats::Client,
        spec: &JetStreamSpec,
    ) -> Result<Self, SubscribeError> {
        spec.validate()?;
        let js = jetstream::new(client.clone());
        let stream = js.get_stream(&spec.stream).await.map_err(|source| {
            SubscribeError::JetStreamStream {
                stream: spec.stream.clone(),
                source,
            }
        })?;
        let want = spec.consumer_config();
        let consumer: PullConsumer = stream
            .get_or_create_consumer(&spec.durable, want.clone())
            .await
            .map_err(|source| SubscribeError::JetStreamConsumer {
                durable: spec.durable.clone(),
                source,
            })?;
        let have = &consumer.cached_info().config;
        if have.filter_subject != want.filter_subject {
            return Err(SubscribeError::JetStreamConsumerMismatch {
                durable: spec.durable.clone(),
                why: format!(
                    "filter subject {:?}, wanted {:?}",
                    have.filter_subject, want.filter_subject
                ),
            });
        }
        if have.ack_policy != AckPolicy::Explicit {
            return Err(SubscribeError::JetStreamConsumerMismatch {
                durable: spec.durable.clone(),
                why: format!("ack policy {:?}, wanted Explicit", have.ack_policy),
            });
        }
        if have.ack_wait != want.ack_wait || have.max_ack_pending != want.max_ack_pending {
            tracing::warn!(
                target: "tapbus_bus::subscribe",
                durable = %spec.durable,
                "JetStream durable exists with ack_wait {:?} and max_ack_pending {} (spec: {:?}, {}); the server's values apply",
                have.ack_wait, have.max_ack_pending, want.ack_wait, want.max_ack_pending
            );
        }
        let batch = spec
            .batch
            .min(usize::try_from(have.max_ack_pending.max(1)).unwrap_or(usize::MAX));
        let (backlog, backlog_poll) = poll_backlog(consumer.clone());
        let messages = consumer
            .stream()
            .max_messages_per_batch(batch)
            .heartbeat(Duration::from_secs(5))
            .expires(Duration::from_secs(30))
            .messages()
            .await
            .map_err(|e| SubscribeError::JetStreamMessages(e.to_string()))?;
        let what = format!("JetStream {}/{}", spec.stream, spec.durable);
        let (connected, watcher) = watch_state(client.clone(), what.clone());
        Ok(JetStreamSubscriber {
            messages,
            client: Arc::new(client.clone()),
            what,
            connected,
            _watcher: watcher,
            backlog,
            _backlog_poll: backlog_poll,
            delays: backoff(),
            dropped: SlowConsumer::default(),
        })
    }

    /// The durable's backlog (shared by every process bound to it).
    pub fn backlog(&self) -> watch::Receiver<Option<Backlog>> {
        self.backlog.clone()
    }

    /// The next message; cancel-safe. Missed heartbeats and failed pull requests (for
    /// instance while reconnecting) are logged and retried after a backoff; the consumer
    /// being deleted, or a request refused by the consumer's limits, ends the subscription.
    pub async fn next(&mut self) -> Result<Delivery, SubscribeError> {
        use async_nats::jetstream::consumer::pull::MessagesErrorKind as K;
        loop {
            match self.messages.next().await {
                Some(Ok(m)) => {
                    self.delays.reset();
                    return delivery(m, &self.client);
                }
                Some(Err(e)) => match e.kind() {
                    K::ConsumerDeleted | K::PushBasedConsumer | K::RequestLimitExceeded => {
                        return Err(SubscribeError::JetStreamMessages(e.to_string()));
                    }
                    K::MissingHeartbeat | K::Pull | K::NoResponders | K::Other => {
                        tracing::warn!(target: "tapbus_bus::subscribe", "{}: {e}; retrying", self.what);
                        let d = self.delays.next_delay();
                        tokio::time::sleep(d).await;
                    }
                },
                None => return Err(SubscribeError::Closed),
            }
        }
    }

    pub fn connected(&self) -> watch::Receiver<bool> {
        self.connected.clone()
    }

    /// As [`NatsCoreSubscriber::count_drops`].
    pub fn count_drops(mut self, c: SlowConsumer) -> Self {
        self.dropped = c;
        self
    }

    /// Messages the client dropped (slow consumer): not acked, so the server delivers
    /// them again after `ack_wait`.
    pub fn dropped(&self) -> SlowConsumer {
        self.dropped.clone()
    }
}

fn delivery(
    m: jetstream::Message,
    client: &Arc<async_nats::Client>,
) -> Result<Delivery, SubscribeError> {
    let (delivered, seq) = {
        let info = m
            .info()
            .map_err(|e| SubscribeError::JetStreamMessages(format!("message info: {e}")))?;
        (
            u64::try_from(info.delivered.max(1)).unwrap_or(1),
            info.stream_sequence,
        )
    };
    let Some(reply) = m.message.reply.as_ref() else {
        return Err(SubscribeError::JetStreamMessages(
            "message without a reply subject (cannot be acked)".into(),
        ));
    };
    // The reply subject is copied out: a slice of it would keep the client's whole read
    // buffer alive for as long as the message is held.
    let ack = JsAck {
        client: client.clone(),
        reply: reply.as_str().into(),
    };
    let msg = m.message;
    let mut d = Delivery::new(
        msg.subject.to_string(),
        msg.payload,
        delivered,
        Some(seq.to_string()),
        Ack::JetStream(ack),
    );
    d.seq = Some(seq);
    Ok(d)
}

/// The ack handle of one JetStream message: its reply subject and the connection, what
/// `+ACK` and `+WPI` are published on (as the client's own `Acker` does, without a copy of
/// the JetStream context per message).
pub(super) struct JsAck {
    client: Arc<async_nats::Client>,
    reply: Box<str>,
}

impl std::fmt::Debug for JsAck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JsAck")
    }
}

impl JsAck {
    pub(super) async fn ack(self) -> Result<(), AckError> {
        self.send(AckKind::Ack).await
    }

    pub(super) async fn in_progress(&self) -> Result<(), AckError> {
        self.send(AckKind::Progress).await
    }

    /// `-NAK`: the server delivers the message again at once (to any consumer of the
    /// durable), instead of after `ack_wait`.
    pub(super) async fn nak(self) -> Result<(), AckError> {
        self.send(AckKind::Nak(None)).await
    }

    /// The connection its `+ACK` goes out on ([`super::AckFlush`]).
    pub(super) fn client(&self) -> Arc<async_nats::Client> {
        self.client.clone()
    }

    async fn send(&self, kind: AckKind) -> Result<(), AckError> {
        let payload: Bytes = kind.into();
        self.client
            .publish(async_nats::Subject::from(&*self.reply), payload)
            .await
            .map_err(|e| AckError::JetStream(e.to_string()))
    }
}

/// Aborts a background task when dropped.
#[derive(Debug)]
pub(super) struct AbortOnDrop(pub(super) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Asks the server for the consumer's info every [`BACKLOG_POLL`]; a failed request
/// (server away) keeps the last answer.
fn poll_backlog(mut consumer: PullConsumer) -> (watch::Receiver<Option<Backlog>>, AbortOnDrop) {
    let (tx, rx) = watch::channel(None);
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(BACKLOG_POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Ok(i) = consumer.info().await {
                let b = Backlog {
                    waiting: Some(i.num_pending),
                    unacked: u64::try_from(i.num_ack_pending).unwrap_or(0),
                    ack_floor: Some(i.ack_floor.stream_sequence),
                };
                if tx.send(Some(b)).is_err() {
                    return;
                }
            }
        }
    });
    (rx, AbortOnDrop(task))
}

/// Samples the client's connection state into a watch channel (logged once per change).
fn watch_state(client: async_nats::Client, what: String) -> (watch::Receiver<bool>, AbortOnDrop) {
    let mut link = LinkState::new(what);
    let rx = link.subscribe();
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(STATE_POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match client.connection_state() {
                async_nats::connection::State::Connected => link.up(),
                async_nats::connection::State::Disconnected => link.down("disconnected"),
                async_nats::connection::State::Pending => {}
            }
        }
    });
    (rx, AbortOnDrop(task))
}

/// A subject for subscribing: dot-separated non-empty tokens without whitespace;
/// `*` only as a whole token, `>` only as the last.
fn check_subject(what: &'static str, s: &str, wildcards: bool) -> Result<(), SpecError> {
    if s.is_empty() {
        return Err(SpecError::new(what, "empty"));
    }
    let tokens: Vec<&str> = s.split('.').collect();
    for (i, t) in tokens.iter().enumerate() {
        if t.is_empty() {
            return Err(SpecError::new(what, format!("{s:?} has an empty token")));
        }
        if t.chars().any(char::is_whitespace) {
            return Err(SpecError::new(what, format!("{s:?} contains whitespace")));
        }
        let wild = *t == "*" || *t == ">";
        if wild && !wildcards {
            return Err(SpecError::new(what, format!("{s:?}: no wildcards here")));
        }
        if *t == ">" && i + 1 != tokens.len() {
            return Err(SpecError::new(what, format!("{s:?}: '>' must be last")));
        }
        if !wild && (t.contains('*') || t.contains('>')) {
            return Err(SpecError::new(
                what,
                format!("{s:?}: a wildcard must be a whole token"),
            ));
        }
    }
    Ok(())
}

/// A name that is one subject token (stream, durable, queue group).
fn check_token(what: &'static str, s: &str) -> Result<(), SpecError> {
    if s.is_empty() {
        return Err(SpecError::new(what, "empty"));
    }
    if s.chars()
        .any(|c| c.is_whitespace() || matches!(c, '.' | '*' | '>' | '/' | '\\'))
    {
        return Err(SpecError::new(
            what,
            format!("{s:?} must not contain whitespace, '.', '*', '>', '/' or '\\'"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_spec_validation() {
        assert_eq!(NatsCoreSpec::new("dnstap.>").validate(), Ok(()));
        assert_eq!(
            NatsCoreSpec::new("dnstap.*.client_response").validate(),
            Ok(())
        );
        assert_eq!(
            NatsCoreSpec::new("dnstap.>").queue_group("loki").validate(),
            Ok(())
        );
        for bad in ["", "a..b", "a.>.b", "a b", "a.b*", ".a", "a."] {
            assert!(
                NatsCoreSpec::new(bad).validate().is_err(),
                "{bad:?} accepted"
            );
        }
        assert!(
            NatsCoreSpec::new("a")
                .queue_group("g.1")
                .validate()
                .is_err()
        );
        assert!(NatsCoreSpec::new("a").queue_group("").validate().is_err());
    }

    #[test]
    fn jetstream_spec_validation_and_config() {
        let mut s = JetStreamSpec::new("DNSTAP", "loki");
        assert_eq!(s.validate(), Ok(()));
        assert_eq!(s.max_ack_pending, 4096);
        assert_eq!(s.ack_wait, Duration::from_secs(30));
        s.filter_subject = Some("dnstap.*.client_response".into());
        s.deliver = DeliverFrom::New;
        let c = s.consumer_config();
        assert_eq!(c.durable_name.as_deref(), Some("loki"));
        assert_eq!(c.filter_subject, "dnstap.*.client_response");
        assert_eq!(c.ack_policy, AckPolicy::Explicit);
        assert_eq!(c.deliver_policy, DeliverPolicy::New);
        assert_eq!(c.max_ack_pending, 4096);

        let bad = |f: &dyn Fn(&mut JetStreamSpec)| {
            let mut s = JetStreamSpec::new("DNSTAP", "loki");
            f(&mut s);
            s.validate().is_err()
        };
        assert!(bad(&|s| s.stream = "a.b".into()));
        assert!(bad(&|s| s.durable = String::new()));
        assert!(bad(&|s| s.max_ack_pending = 0));
        assert!(bad(&|s| s.max_ack_pending = -1));
        assert!(bad(&|s| s.ack_wait = Duration::from_millis(10)));
        assert!(bad(&|s| s.batch = 0));
        assert!(bad(&|s| s.filter_subject = Some("a..b".into())));
    }
}
