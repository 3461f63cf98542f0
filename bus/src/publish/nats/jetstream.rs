//! JetStream publishing with PubAcks per chunk and re-sends with the same `Nats-Msg-Id`
//! (see the parent module).

use std::collections::VecDeque;
use std::future::IntoFuture;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream::{self, message::PublishMessage, stream};
use async_nats::{PublishErrorKind, Subject};
use bytes::Bytes;
use futures::StreamExt;
use futures::future::{AbortHandle, Abortable, Aborted};
use futures::stream::FuturesOrdered;
use tapbus_config::JetStreamSpec;
use tokio::time::Instant;

use super::{BATCH, Conn, SubjectCache, msg_id_prefix};
use crate::metrics::PublishMetrics;
use crate::publish::Queue;
use crate::publish::settle::Ticket;

/// Gets or creates the stream. While NATS is unreachable it waits for the connection (the
/// connect layer logs that wait once); then it retries with backoff, and at once after a
/// reconnect, logging the first failure (`waiting for stream DNSTAP on nats://…`) and the
/// success. Events queued meanwhile stay in the output's queue; when it is full the
/// fan-out drops and counts them. `false` if the queue closed first.
async fn ensure_stream(
    name: &str,
    client: &async_nats::Client,
    ctx: &jetstream::Context,
    js: &JetStreamSpec,
    rx: &mut Queue,
    state: &mut tokio::sync::watch::Receiver<bool>,
    servers: &str,
) -> bool {
    let mut config = stream::Config {
        name: js.stream.clone(),
        subjects: js.subjects.clone(),
        ..Default::default()
    };
    if let Some(b) = js.max_bytes {
        config.max_bytes = b;
    }
    if let Some(n) = js.max_msgs {
        config.max_messages = n;
    }
    if let Some(a) = js.max_age {
        config.max_age = a;
    }
    if let Some(r) = js.replicas {
        config.num_replicas = r;
    }
    let mut delays = crate::backoff::Backoff::new(JS_MIN_BACKOFF, JS_MAX_BACKOFF);
    let mut waited = false;
    let mut watching = true;
    loop {
        if client.connection_state() == async_nats::connection::State::Connected {
            match ctx.get_or_create_stream(config.clone()).await {
                Ok(s) => {
                    tracing::info!(output = %name, stream = %js.stream, subjects = ?s.cached_info().config.subjects, "JetStream stream ready");
                    return true;
                }
                Err(e) if !waited => {
                    waited = true;
                    tracing::warn!(output = %name, "waiting for stream {} on {servers}: {e} (retrying with backoff; events are queued and counted as dropped when the queue is full)", js.stream);
                }
                Err(e) => {
                    tracing::debug!(output = %name, stream = %js.stream, "stream still not available: {e}");
                }
            }
        }
        // Wait for the backoff or a connection change, noticing shutdown.
        let until = Instant::now()
            + if client.connection_state() == async_nats::connection::State::Connected {
                delays.next_delay()
            } else {
                JS_MAX_BACKOFF
            };
        let mut closed = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => break,
                changed = state.changed(), if watching => {
                    watching = changed.is_ok();
                    if *state.borrow_and_update() {
                        break;
                    }
                }
                _ = closed.tick() => {
                    if rx.is_closed() {
                        return false;
                    }
                }
            }
        }
    }
}

/// An event sent to JetStream and held until the server has acknowledged it.
struct Pending {
    subject: Subject,
    payload: Bytes,
    id: String,
    /// Times the server refused it (not counting lost connections and timeouts).
    rejects: u8,
    /// A consumer's settlement ticket.
    ticket: Option<Ticket>,
}

/// A refusal (no stream for the subject, a stream limit, a permission) is retried at once,
/// this many times in all, then the event is dropped and counted as `publish_error`: a
/// refused subject must not stall the output. Lost connections and ack timeouts are
/// retried without limit, with backoff.
const MAX_REJECTS: u8 = 3;

/// Events published in order on one connection, the last one with a reply subject: its
/// PubAck confirms the whole batch (a stream stores one connection's messages in order).
struct Batch {
    events: Vec<Pending>,
    /// The connection the batch went out on (as for core windows): a PubAck that comes back
    /// on a later connection does not vouch for the plain publishes, which may have been
    /// lost with the old one.
    on: Conn,
}

/// What became of a batch's PubAck.
enum Outcome {
    /// The server answered: acknowledged, refused, or the ack timed out.
    Answer(Result<jetstream::publish::PublishAck, jetstream::context::PublishError>),
    /// The connection the batch went out on is gone (the client connected again): its ack
    /// can never come, so the batch is sent again at once instead of waiting out the ack
    /// timeout.
    Lost,
}

type AckFuture = std::pin::Pin<Box<dyn Future<Output = (Batch, Outcome)> + Send>>;

/// Logs publish/ack failures once per change of state.
struct Health<'a> {
    name: &'a str,
    failing: bool,
}

impl Health<'_> {
    fn ok(&mut self) {
        if self.failing {
            self.failing = false;
            tracing::info!(output = %self.name, "JetStream publishes are acknowledged again");
        }
    }

    fn fail(&mut self, what: &str, e: &dyn std::fmt::Display) {
        if !self.failing {
            self.failing = true;
            tracing::warn!(output = %self.name, "JetStream {what} failed: {e}; sending unacknowledged events again (same Nats-Msg-Id) until it works");
        }
    }
}

/// JetStream publishing. Every event carries a `Nats-Msg-Id`; events go out in chunks of
/// up to [`ACK_EVERY`], the last with a reply subject whose PubAck confirms the chunk (one
/// ack per chunk instead of one per event: less work for the server and the broker). Only
/// events on subjects the stream has already acknowledged go out without a reply, so an
/// event on a subject no stream stores is never counted as published. A failed publish or ack (connection
/// lost, timeout, no stream) sends the whole batch again with the same ids, which the
/// server de-duplicates, so the stream holds every event once. `published` counts
/// acknowledged events.
struct Js<'a> {
    name: &'a str,
    client: async_nats::Client,
    stats: Arc<async_nats::Statistics>,
    ctx: jetstream::Context,
    m: &'a PublishMetrics,
    h: Health<'a>,
    /// Most events sent and not yet acknowledged.
    window: usize,
    inflight: FuturesOrdered<AckFuture>,
    /// For each batch in `inflight`, in the same order: its connection and the handle that
    /// gives up its ack when that connection is left behind.
    aborts: VecDeque<(Conn, AbortHandle)>,
    /// The client's connect count when last looked at: a change means a reconnect.
    connects: u64,
    /// Events in `inflight`.
    held: usize,
    retry: VecDeque<Pending>,
    retry_at: Instant,
    /// Delay before a re-send after a failure; reset by an acknowledgement.
    backoff: crate::backoff::Backoff,
    /// Subjects the stream has acknowledged an event on.
    proven: std::collections::HashSet<Box<str>, rustc_hash::FxBuildHasher>,
    warned_refused: bool,
}

/// Events per acknowledged batch.
const ACK_EVERY: usize = 64;

impl Js<'_> {
    fn held(&self) -> usize {
        self.held + self.retry.len()
    }

    /// Sends a chunk of events. An event goes out plainly (no reply) only if its subject is
    /// known to be stored by the stream (an ack on that subject came back) and it is not
    /// the chunk's last; otherwise it gets a reply subject, and its PubAck confirms it and
    /// the plain ones sent since the previous acknowledged one. Failed events wait in
    /// `retry`.
    async fn send(&mut self, events: Vec<Pending>) {
        let n = events.len();
        let on = Conn::now(&self.client, &self.stats);
        let mut run: Vec<Pending> = Vec::new();
        for (i, p) in events.into_iter().enumerate() {
            if i + 1 < n && self.proven.contains(p.subject.as_str()) {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert(async_nats::header::NATS_MESSAGE_ID, p.id.as_str());
                match self
                    .client
                    .publish_with_headers(p.subject.clone(), headers, p.payload.clone())
                    .await
                {
                    Ok(()) => run.push(p),
                    Err(e) if e.kind() == PublishErrorKind::MaxPayloadExceeded => {
                        self.m.dropped_too_large.inc();
                        tracing::warn!(output = %self.name, subject = %p.subject, "event larger than the server's max_payload; dropped");
                    }
                    Err(e) => {
                        self.h.fail("publish", &e);
                        run.push(p);
                    }
                }
                continue;
            }
            let mut batch = std::mem::take(&mut run);
            let msg = PublishMessage::build()
                .payload(p.payload.clone())
                .message_id(p.id.clone());
            match self.ctx.send_publish(p.subject.clone(), msg).await {
                Ok(ack) => {
                    batch.push(p);
                    self.held += batch.len();
                    let (handle, reg) = AbortHandle::new_pair();
                    // Aborted, the ack future is dropped at once, and with it its permit.
                    let fut = Abortable::new(ack.into_future(), reg);
                    let batch = Batch { events: batch, on };
                    self.aborts.push_back((on, handle));
                    self.inflight.push_back(Box::pin(async move {
                        let outcome = match fut.await {
                            Ok(res) => Outcome::Answer(res),
                            Err(Aborted) => Outcome::Lost,
                        };
                        (batch, outcome)
                    }));
                }
                Err(e) if e.kind() == jetstream::context::PublishErrorKind::MaxPayloadExceeded => {
                    self.m.dropped_too_large.inc();
                    tracing::warn!(output = %self.name, subject = %p.subject, "event larger than the server's max_payload; dropped");
                    // The plain ones before it have no ack to confirm them: send again.
                    self.failed(batch);
                }
                Err(e) => {
                    self.h.fail("publish", &e);
                    batch.push(p);
                    self.failed(batch);
                }
            }
        }
    }

    /// Queues events for a re-send: after the backoff, or at once after a refusal.
    fn failed(&mut self, events: Vec<Pending>) {
        self.requeue(events, true);
    }

    fn requeue(&mut self, events: Vec<Pending>, backoff: bool) {
        if events.is_empty() {
            return;
        }
        self.retry.extend(events);
        if backoff {
            self.retry_at = Instant::now() + self.backoff.next_delay();
        }
    }

    fn settle(&mut self, batch: Batch, outcome: Outcome) {
        self.aborts.pop_front();
        self.held -= batch.events.len();
        let now = self.stats.connects.load(Ordering::Relaxed);
        let res = match outcome {
            Outcome::Answer(res) => res,
            Outcome::Lost => {
                self.h.fail("ack", &"the connection was lost");
                self.proven.clear();
                self.requeue(batch.events, false);
                return;
            }
        };
        match res {
            Ok(_) if !batch.on.matches(now) => {
                // Acknowledged on another connection than the batch went out on: send it
                // again (the server de-duplicates what it already has).
                self.requeue(batch.events, false);
            }
            Ok(_) => {
                self.m.published.inc_by(batch.events.len() as u64);
                for e in &batch.events {
                    if let Some(t) = &e.ticket {
                        t.published();
                    }
                }
                if let Some(last) = batch.events.last() {
                    if self.proven.len() >= SubjectCache::MAX {
                        self.proven.clear();
                    }
                    self.proven.insert(last.subject.as_str().into());
                }
                self.h.ok();
                self.backoff.reset();
            }
            Err(e) => {
                self.h.fail("ack", &e);
                // Prove the subjects again (the stream may have changed).
                self.proven.clear();
                let mut events = batch.events;
                let transient = matches!(
                    e.kind(),
                    jetstream::context::PublishErrorKind::TimedOut
                        | jetstream::context::PublishErrorKind::BrokenPipe
                );
                if !transient {
                    // The server refused the event the ack was for (the plain ones before it
                    // are on proven subjects, probably stored: sent again, the server
                    // de-duplicates them). It is retried a bounded number of times.
                    if let Some(last) = events.last_mut() {
                        last.rejects += 1;
                        if last.rejects >= MAX_REJECTS {
                            events.pop();
                            self.m.dropped_error.inc();
                            if !self.warned_refused {
                                self.warned_refused = true;
                                tracing::warn!(output = %self.name, "JetStream kept refusing an event ({e}); dropped after {MAX_REJECTS} attempts (further ones are only counted, reason=\"publish_error\")");
                            }
                        }
                    }
                }
                self.requeue(events, transient);
            }
        }
    }

    fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Called whenever the connection state may have changed. After a reconnect, the acks
    /// of batches sent on an older connection can never come (that server or connection is
    /// gone): they are given up at once and the batches re-sent (same ids, the server
    /// de-duplicates what it stored) as soon as the loop takes them back, without waiting
    /// for the ack timeout or a backoff grown during the outage.
    fn check_reconnect(&mut self) {
        let now = self.stats.connects.load(Ordering::Relaxed);
        if now == self.connects || !self.connected() {
            return;
        }
        self.connects = now;
        let mut lost = 0;
        for (on, h) in &self.aborts {
            if on.left_behind(now) {
                h.abort();
                lost += 1;
            }
        }
        self.backoff.reset();
        self.retry_at = Instant::now();
        tracing::debug!(output = %self.name, batches = lost, "NATS connected again; re-sending what the old connection left unacknowledged");
    }

    /// Sends held events again, as far as the window allows, once connected (while
    /// disconnected they would only pile up in the client's buffer).
    async fn resend(&mut self) {
        if !self.connected() {
            self.retry_at = Instant::now() + JS_MIN_BACKOFF;
            return;
        }
        while self.held < self.window && !self.retry.is_empty() {
            let n = self.retry.len().min(ACK_EVERY).min(self.window - self.held);
            let batch: Vec<Pending> = self.retry.drain(..n).collect();
            self.m.resent.inc_by(batch.len() as u64);
            let before = self.retry.len();
            self.send(batch).await;
            if self.retry.len() > before {
                // Failed again: wait for the backoff.
                break;
            }
        }
    }
}

const JS_MIN_BACKOFF: Duration = Duration::from_millis(250);
const JS_MAX_BACKOFF: Duration = Duration::from_secs(5);

pub(super) async fn run(
    name: &str,
    client: &async_nats::Client,
    js: &JetStreamSpec,
    mut subjects: SubjectCache,
    rx: &mut Queue,
    m: &PublishMetrics,
    link: super::Link,
) {
    let super::Link { mut state, servers } = link;
    let ctx = jetstream::ContextBuilder::new()
        // The PubAck futures time out after `timeout`.
        .timeout(Duration::from_secs(5))
        .ack_timeout(Duration::from_secs(5))
        // At most one ack per held event: never more than the window, so sending never waits
        // on a permit that only our own (not yet polled) ack futures would release.
        .max_ack_inflight(js.ack_window.max(ACK_EVERY))
        .backpressure_on_inflight(true)
        .build(client.clone());
    if !ensure_stream(name, client, &ctx, js, rx, &mut state, &servers).await {
        while rx.recv().await.is_some() {
            m.dropped_shutdown.inc();
        }
        return;
    }
    let prefix = msg_id_prefix();
    let mut seq: u64 = 0;
    let mut s = Js {
        name,
        client: client.clone(),
        stats: client.statistics(),
        ctx,
        m,
        h: Health {
            name,
            failing: false,
        },
        window: js.ack_window.max(ACK_EVERY),
        inflight: FuturesOrdered::new(),
        aborts: VecDeque::new(),
        connects: client.statistics().connects.load(Ordering::Relaxed),
        held: 0,
        retry: VecDeque::new(),
        retry_at: Instant::now(),
        backoff: crate::backoff::Backoff::new(JS_MIN_BACKOFF, JS_MAX_BACKOFF),
        proven: Default::default(),
        warned_refused: false,
    };
    let mut batch = Vec::with_capacity(BATCH);
    let mut watching = true;
    loop {
        m.inflight.set(s.held() as i64);
        s.check_reconnect();
        let room = s.window.saturating_sub(s.held);
        tokio::select! {
            biased;
            changed = state.changed(), if watching => watching = changed.is_ok(),
            Some((b, res)) = s.inflight.next(), if !s.inflight.is_empty() => s.settle(b, res),
            _ = tokio::time::sleep_until(s.retry_at), if !s.retry.is_empty() && room > 0 => {
                s.resend().await;
            }
            n = rx.recv_many(&mut batch, room.min(BATCH)), if s.retry.is_empty() && room > 0 => {
                if n == 0 {
                    break;
                }
                let mut events = batch.drain(..).map(|ev| {
                    seq += 1;
                    Pending {
                        subject: match &ev.subject {
                            Some(s) => Subject::from(&**s),
                            None => subjects.get(&ev.summary),
                        },
                        payload: ev.payload,
                        id: match &ev.id {
                            Some(id) => id.to_string(),
                            None => format!("{prefix}-{seq}"),
                        },
                        rejects: 0,
                        ticket: ev.settle,
                    }
                });
                loop {
                    let chunk: Vec<Pending> = events.by_ref().take(ACK_EVERY).collect();
                    if chunk.is_empty() {
                        break;
                    }
                    s.send(chunk).await;
                }
            }
        }
    }
    // Queue closed: wait (bounded) for the acks still outstanding, re-sending as needed.
    let deadline = Instant::now() + Duration::from_secs(15);
    while s.held() > 0 && Instant::now() < deadline {
        s.check_reconnect();
        tokio::select! {
            biased;
            changed = state.changed(), if watching => watching = changed.is_ok(),
            Some((b, res)) = s.inflight.next(), if !s.inflight.is_empty() => s.settle(b, res),
            _ = tokio::time::sleep_until(s.retry_at.min(deadline)), if !s.retry.is_empty() => s.resend().await,
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }
    let left = s.held();
    if left > 0 {
        tracing::warn!(output = %name, events = left, "JetStream did not acknowledge these events before shutdown; counted as dropped");
        m.dropped_shutdown.inc_by(left as u64);
    }
    m.inflight.set(0);
}
