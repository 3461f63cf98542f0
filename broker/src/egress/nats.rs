//! NATS publishing (async-nats): core publish or JetStream, with exact accounting.
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

use std::collections::{HashMap, VecDeque};
use std::future::IntoFuture;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream::{self, message::PublishMessage, stream};
use async_nats::{ConnectOptions, PublishErrorKind, Subject};
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesOrdered;
use tapbus_config::{JetStreamSpec, NatsAuth, NatsSpec};
use tapbus_proto::event::Summary;
use tapbus_proto::subject::Template;
use tokio::time::Instant;

use crate::fanout::EventRx;
use crate::metrics::OutputMetrics;

pub async fn run(name: String, spec: NatsSpec, mut rx: EventRx, m: OutputMetrics) {
    // The client's command channel must hold everything the output may have sent while
    // disconnected (held events, markers, a batch), so a publish never waits on it.
    let capacity = rx.max_capacity()
        + rx.max_capacity() / WINDOW
        + 2 * BATCH
        + spec.jetstream.as_ref().map_or(0, |j| 2 * j.ack_window);
    let opts = match options(&name, &spec, &m, capacity).await {
        Ok(o) => o,
        Err(e) => {
            tracing::error!(output = %name, "NATS output not started: {e}; dropping events for this output");
            while rx.recv().await.is_some() {
                m.dropped_error.inc();
            }
            return;
        }
    };
    let servers: Vec<String> = spec
        .servers
        .split(',')
        .map(|s| s.trim().to_string())
        .collect();
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
        None => run_core(&name, &client, subjects, &mut rx, &m).await,
        Some(js) => run_jetstream(&name, &client, js, subjects, &mut rx, &m).await,
    }
    // Queue closed: hand everything buffered to the server before exiting.
    match tokio::time::timeout(Duration::from_secs(10), client.flush()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(output = %name, "NATS flush at shutdown failed: {e}"),
        Err(_) => tracing::warn!(output = %name, "NATS flush at shutdown timed out"),
    }
}

/// Connection options: reconnecting forever, state changes logged and shown in `up`,
/// authentication and TLS from the spec.
async fn options(
    name: &str,
    spec: &NatsSpec,
    m: &OutputMetrics,
    capacity: usize,
) -> Result<ConnectOptions, String> {
    let up = m.up.clone();
    let ev_name = name.to_string();
    let mut opts = ConnectOptions::new()
        .name("tapbus-broker")
        .retry_on_initial_connect()
        .max_reconnects(None)
        .client_capacity(capacity)
        .connection_timeout(Duration::from_secs(5))
        .event_callback(move |event| {
            let up = up.clone();
            let name = ev_name.clone();
            async move {
                match event {
                    async_nats::Event::Connected => {
                        up.set(1);
                        tracing::info!(output = %name, "NATS connected");
                    }
                    async_nats::Event::Disconnected => {
                        up.set(0);
                        tracing::warn!(output = %name, "NATS disconnected; reconnecting");
                    }
                    async_nats::Event::ServerError(e) => {
                        tracing::warn!(output = %name, "NATS server error: {e}");
                    }
                    async_nats::Event::ClientError(e) => {
                        tracing::warn!(output = %name, "NATS client error: {e}");
                    }
                    other => tracing::info!(output = %name, "NATS: {other}"),
                }
            }
        });
    opts = match &spec.auth {
        NatsAuth::None => opts,
        NatsAuth::UserPassword { user, password } => {
            opts.user_and_password(user.clone(), password.clone())
        }
        NatsAuth::Token(t) => opts.token(t.clone()),
        NatsAuth::NkeySeed(path) => {
            let seed = std::fs::read_to_string(path)
                .map_err(|e| format!("nkey_seed {}: {e}", path.display()))?;
            opts.nkey(seed.trim().to_string())
        }
        NatsAuth::Creds(path) => opts
            .credentials_file(path)
            .await
            .map_err(|e| format!("creds {}: {e}", path.display()))?,
    };
    if let Some(ca) = &spec.tls_ca {
        opts = opts.add_root_certificates(ca.clone());
    }
    if let (Some(cert), Some(key)) = (&spec.tls_cert, &spec.tls_key) {
        opts = opts.add_client_certificate(cert.clone(), key.clone());
    }
    if spec.require_tls {
        opts = opts.require_tls(true);
    }
    Ok(opts)
}

/// Which client connection (by the client's connect count) events published now go out
/// on. The count goes up when a connection is made, just before the state says Connected.
/// Published while connected: the current connection `c`. Published while disconnected:
/// the client buffers them for the next one, `c + 1`, unless the count has already moved
/// (a connection made between the two reads): then `c` itself. A marker or ack that comes
/// back on either vouches for the events: a dead connection never carries a reply, so if
/// the reply came on `c`, everything before it went on `c` too.
#[derive(Debug, Clone, Copy)]
struct Conn {
    seen: u64,
    next: bool,
}

impl Conn {
    fn now(client: &async_nats::Client, stats: &async_nats::Statistics) -> Conn {
        let connected = client.connection_state() == async_nats::connection::State::Connected;
        Conn {
            seen: stats.connects.load(Ordering::Relaxed),
            next: !connected,
        }
    }

    /// The reply came back on connection `now`: did the events go out on it?
    fn matches(self, now: u64) -> bool {
        now == self.seen || (self.next && now == self.seen + 1)
    }

    /// A later connection than any the events can have gone out on: they must be re-sent.
    fn left_behind(self, now: u64) -> bool {
        now > self.seen + u64::from(self.next)
    }
}

/// Unconfirmed core publishes, kept for a re-send until the server has confirmed them.
///
/// Core NATS has no acknowledgements, but a server handles one connection's messages in
/// order: after a window of events we publish a marker to our own inbox, and when it comes
/// back every event before it was processed by the server. A window is confirmed only if
/// the marker came back on the connection the window went out on ([`Conn`]); otherwise
/// (the connection broke, the client reconnected) it is published again on the new one.
/// `published` counts confirmed events, so published + dropped equals the events queued,
/// exactly; a re-sent event may reach a subscriber twice (byte-identical) if the old
/// connection delivered it before breaking.
struct Window {
    marker: u64,
    /// The connection the events went out on: `on.matches(now)` when the marker returns.
    on: Conn,
    opened: Instant,
    events: Vec<(Subject, Bytes)>,
}

struct Core<'a> {
    name: &'a str,
    client: &'a async_nats::Client,
    stats: Arc<async_nats::Statistics>,
    inbox: Subject,
    m: &'a OutputMetrics,
    /// Windows sent, oldest first, waiting for their marker.
    sent: VecDeque<Window>,
    /// The window being filled.
    open: Option<Window>,
    /// Events held in `sent` and `open`.
    held: usize,
    next_marker: u64,
    warned_unconfirmed: bool,
    /// The connection count at the last tick: marker timeouts restart when it changes.
    last_connects: u64,
    /// At most this many unconfirmed events are held (the output's queue size).
    max_held: usize,
}

impl<'a> Core<'a> {
    fn connects(&self) -> u64 {
        self.stats.connects.load(Ordering::Relaxed)
    }

    fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Publishes one event into the open window.
    async fn publish(&mut self, subject: Subject, payload: Bytes) {
        if self.open.is_none() {
            // The connection these events go out on: the current one, or while disconnected
            // (also before the first connect) the next one: the client buffers until then.
            let on = Conn::now(self.client, &self.stats);
            self.open = Some(Window {
                marker: 0,
                on,
                opened: Instant::now(),
                events: Vec::with_capacity(WINDOW),
            });
        }
        match self.client.publish(subject.clone(), payload.clone()).await {
            Ok(()) => {
                if let Some(w) = self.open.as_mut() {
                    w.events.push((subject, payload));
                    self.held += 1;
                }
            }
            Err(e) if e.kind() == PublishErrorKind::MaxPayloadExceeded => {
                self.m.dropped_too_large.inc();
                tracing::warn!(output = %self.name, %subject, "event larger than the server's max_payload; dropped");
            }
            Err(e) => {
                // The client is closed: nothing more can be sent.
                self.m.dropped_error.inc();
                tracing::warn!(output = %self.name, "NATS publish failed: {e}");
            }
        }
        if self.open.as_ref().is_some_and(|w| w.events.len() >= WINDOW) {
            self.close().await;
        }
    }

    /// Closes the open window with a marker.
    async fn close(&mut self) {
        let Some(mut w) = self.open.take() else {
            return;
        };
        if w.events.is_empty() {
            return;
        }
        self.next_marker += 1;
        w.marker = self.next_marker;
        w.opened = Instant::now();
        let _ = self
            .client
            .publish(self.inbox.clone(), Bytes::from(w.marker.to_string()))
            .await;
        self.sent.push_back(w);
    }

    /// A marker came back: its window is confirmed if its connection is the current one.
    /// Windows before it whose markers were lost are published again.
    async fn marker(&mut self, payload: &[u8]) {
        let Some(n) = std::str::from_utf8(payload)
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
        else {
            return;
        };
        let now = self.connects();
        while self.sent.front().is_some_and(|w| w.marker <= n) {
            let Some(w) = self.sent.pop_front() else {
                break;
            };
            if w.marker == n && w.on.matches(now) {
                self.held -= w.events.len();
                self.m.published.inc_by(w.events.len() as u64);
            } else {
                self.resend(w).await;
            }
        }
    }

    /// Periodic check: windows sent before a reconnect are published again once connected;
    /// a window whose marker never returns on an intact connection (the user may not
    /// publish or subscribe to its inbox) is taken as delivered, with a warning.
    async fn tick(&mut self) {
        self.m.inflight.set(self.held as i64);
        if self
            .open
            .as_ref()
            .is_some_and(|w| w.opened.elapsed() >= WINDOW_AGE)
        {
            self.close().await;
        }
        if !self.connected() {
            return;
        }
        let now = self.connects();
        if now != self.last_connects {
            // A new connection: windows waiting for it start their marker timeout now.
            self.last_connects = now;
            let t = Instant::now();
            for w in self.sent.iter_mut() {
                w.opened = t;
            }
        }
        while let Some(w) = self.sent.front() {
            if w.on.left_behind(now) {
                if let Some(w) = self.sent.pop_front() {
                    self.resend(w).await;
                }
            } else if w.on.matches(now) && w.opened.elapsed() >= MARKER_TIMEOUT {
                if !self.warned_unconfirmed {
                    self.warned_unconfirmed = true;
                    tracing::warn!(output = %self.name, inbox = %self.inbox, "NATS did not echo the delivery marker on an intact connection (may this user publish and subscribe to _INBOX.>?); counting such windows as published");
                }
                if let Some(w) = self.sent.pop_front() {
                    self.held -= w.events.len();
                    self.m.published.inc_by(w.events.len() as u64);
                }
            } else {
                break;
            }
        }
    }

    async fn resend(&mut self, w: Window) {
        self.held -= w.events.len();
        self.m.resent.inc_by(w.events.len() as u64);
        tracing::debug!(output = %self.name, events = w.events.len(), "NATS window not confirmed; publishing it again");
        // Publish what is open first, so the re-sent window keeps its own connection mark.
        self.close().await;
        for (s, p) in w.events {
            self.publish(s, p).await;
        }
        self.close().await;
    }

    fn full(&self) -> bool {
        self.held >= self.max_held
    }

    /// At shutdown: waits (bounded) for every window; what stays unconfirmed is counted as
    /// dropped at shutdown.
    async fn finish(&mut self, markers: &mut async_nats::Subscriber) {
        self.close().await;
        let deadline = Instant::now() + SHUTDOWN_WAIT;
        while self.held > 0 && Instant::now() < deadline {
            tokio::select! {
                Some(msg) = markers.next() => self.marker(&msg.payload).await,
                _ = tokio::time::sleep(TICK) => self.tick().await,
            }
        }
        if self.held > 0 {
            tracing::warn!(output = %self.name, events = self.held, "NATS did not confirm these events before shutdown; counted as dropped");
            self.m.dropped_shutdown.inc_by(self.held as u64);
            self.held = 0;
        }
    }
}

/// Events per window (one marker round trip each). Small windows free their events (and
/// the shared JSON chunks) sooner: 256 measured better than 1024 at 400k events/s.
const WINDOW: usize = 256;
/// A window is closed after this long even if not full, so slow streams are confirmed too.
const WINDOW_AGE: Duration = Duration::from_millis(20);
const MARKER_TIMEOUT: Duration = Duration::from_secs(10);
const TICK: Duration = Duration::from_millis(50);
const SHUTDOWN_WAIT: Duration = Duration::from_secs(10);

async fn run_core(
    name: &str,
    client: &async_nats::Client,
    mut subjects: SubjectCache,
    rx: &mut EventRx,
    m: &OutputMetrics,
) {
    let inbox = Subject::from(client.new_inbox());
    let mut markers = loop {
        match client.subscribe(inbox.clone()).await {
            Ok(s) => break s,
            Err(e) => {
                tracing::warn!(output = %name, "NATS subscribe to the marker inbox failed: {e}; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    let mut core = Core {
        name,
        client,
        stats: client.statistics(),
        inbox,
        m,
        sent: VecDeque::new(),
        open: None,
        held: 0,
        next_marker: 0,
        warned_unconfirmed: false,
        last_connects: 0,
        // Unconfirmed events held for a re-send: as many as the queue holds. When full, the
        // output stops taking events, its queue fills, and the fan-out drops and counts.
        max_held: rx.max_capacity().max(WINDOW),
    };
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        tokio::select! {
            biased;
            Some(msg) = markers.next() => core.marker(&msg.payload).await,
            _ = tick.tick() => core.tick().await,
            n = rx.recv_many(&mut batch, BATCH), if !core.full() => {
                if n == 0 {
                    break;
                }
                for ev in batch.drain(..) {
                    let subj = subjects.get(&ev.summary);
                    core.publish(subj, ev.json).await;
                }
            }
        }
    }
    core.finish(&mut markers).await;
}

/// Gets or creates the stream, retrying with backoff. `false` if the queue closed first.
async fn ensure_stream(
    name: &str,
    ctx: &jetstream::Context,
    js: &JetStreamSpec,
    rx: &mut EventRx,
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
    let mut delay = Duration::from_millis(250);
    loop {
        match ctx.get_or_create_stream(config.clone()).await {
            Ok(s) => {
                tracing::info!(output = %name, stream = %js.stream, subjects = ?s.cached_info().config.subjects, "JetStream stream ready");
                return true;
            }
            Err(e) => {
                tracing::warn!(output = %name, stream = %js.stream, "JetStream stream not available: {e}; retrying in {delay:?}");
            }
        }
        // Wait, but notice shutdown.
        let until = tokio::time::Instant::now() + delay;
        while tokio::time::Instant::now() < until {
            if rx.is_closed() {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

/// An event sent to JetStream and held until the server has acknowledged it.
struct Pending {
    subject: Subject,
    payload: Bytes,
    id: String,
    /// Times the server refused it (not counting lost connections and timeouts).
    rejects: u8,
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

type AckFuture = std::pin::Pin<
    Box<
        dyn Future<
                Output = (
                    Batch,
                    Result<jetstream::publish::PublishAck, jetstream::context::PublishError>,
                ),
            > + Send,
    >,
>;

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
    m: &'a OutputMetrics,
    h: Health<'a>,
    /// Most events sent and not yet acknowledged.
    window: usize,
    inflight: FuturesOrdered<AckFuture>,
    /// Events in `inflight`.
    held: usize,
    retry: VecDeque<Pending>,
    retry_at: Instant,
    backoff: Duration,
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
                    let fut = ack.into_future();
                    let batch = Batch { events: batch, on };
                    self.inflight
                        .push_back(Box::pin(async move { (batch, fut.await) }));
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
            self.retry_at = Instant::now() + self.backoff;
            self.backoff = (self.backoff * 2).min(JS_MAX_BACKOFF);
        }
    }

    fn settle(
        &mut self,
        batch: Batch,
        res: Result<jetstream::publish::PublishAck, jetstream::context::PublishError>,
    ) {
        self.held -= batch.events.len();
        let now = self.stats.connects.load(Ordering::Relaxed);
        match res {
            Ok(_) if !batch.on.matches(now) => {
                // Acknowledged on another connection than the batch went out on: send it
                // again (the server de-duplicates what it already has).
                self.requeue(batch.events, false);
            }
            Ok(_) => {
                self.m.published.inc_by(batch.events.len() as u64);
                if let Some(last) = batch.events.last() {
                    if self.proven.len() >= SubjectCache::MAX {
                        self.proven.clear();
                    }
                    self.proven.insert(last.subject.as_str().into());
                }
                self.h.ok();
                self.backoff = JS_MIN_BACKOFF;
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

async fn run_jetstream(
    name: &str,
    client: &async_nats::Client,
    js: &JetStreamSpec,
    mut subjects: SubjectCache,
    rx: &mut EventRx,
    m: &OutputMetrics,
) {
    let ctx = jetstream::ContextBuilder::new()
        // The PubAck futures time out after `timeout`.
        .timeout(Duration::from_secs(5))
        .ack_timeout(Duration::from_secs(5))
        // At most one ack per held event: never more than the window, so sending never waits
        // on a permit that only our own (not yet polled) ack futures would release.
        .max_ack_inflight(js.ack_window.max(ACK_EVERY))
        .backpressure_on_inflight(true)
        .build(client.clone());
    if !ensure_stream(name, &ctx, js, rx).await {
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
        held: 0,
        retry: VecDeque::new(),
        retry_at: Instant::now(),
        backoff: JS_MIN_BACKOFF,
        proven: Default::default(),
        warned_refused: false,
    };
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        m.inflight.set(s.held() as i64);
        let room = s.window.saturating_sub(s.held);
        tokio::select! {
            biased;
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
                        subject: subjects.get(&ev.summary),
                        payload: ev.json,
                        id: format!("{prefix}-{seq}"),
                        rejects: 0,
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
        tokio::select! {
            biased;
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

/// A prefix unique to this process run, so message ids never repeat across restarts
/// within the stream's duplicate window.
fn msg_id_prefix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("tapbus-{:x}-{:x}", std::process::id(), nanos)
}

const BATCH: usize = 512;

/// Rendered subjects by the event fields the template uses: a stream from one server has a
/// handful of distinct subjects, so rendering and allocating once per event is wasted.
struct SubjectCache {
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

    fn get(&mut self, s: &Summary) -> Subject {
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
