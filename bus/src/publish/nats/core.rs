//! NATS core publishing with confirmations: windows of events closed by a marker that
//! comes back on the same connection (see the parent module).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::{PublishErrorKind, Subject};
use bytes::Bytes;
use futures::StreamExt;
use tokio::time::Instant;

use super::{BATCH, Conn, SubjectCache};
use crate::metrics::PublishMetrics;
use crate::publish::Queue;
use crate::publish::settle::Ticket;

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
    /// Each with its settlement ticket, if a consumer published it.
    events: Vec<(Subject, Bytes, Option<Ticket>)>,
}

impl Window {
    /// The marker came back on the window's connection: its events are published.
    fn confirmed(&self, m: &PublishMetrics) {
        m.published.inc_by(self.events.len() as u64);
        for (_, _, t) in &self.events {
            if let Some(t) = t {
                t.published();
            }
        }
    }
}

struct Core<'a> {
    name: &'a str,
    client: &'a async_nats::Client,
    stats: Arc<async_nats::Statistics>,
    inbox: Subject,
    m: &'a PublishMetrics,
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
    /// A window whose marker has not come back after this long on an intact connection is
    /// taken as delivered (`outputs.NAME.marker_timeout`).
    marker_timeout: Duration,
}

impl<'a> Core<'a> {
    fn connects(&self) -> u64 {
        self.stats.connects.load(Ordering::Relaxed)
    }

    fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Publishes one event into the open window.
    async fn publish(&mut self, subject: Subject, payload: Bytes, ticket: Option<Ticket>) {
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
                    w.events.push((subject, payload, ticket));
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
                w.confirmed(self.m);
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
            } else if w.on.matches(now) && w.opened.elapsed() >= self.marker_timeout {
                if !self.warned_unconfirmed {
                    self.warned_unconfirmed = true;
                    tracing::warn!(output = %self.name, inbox = %self.inbox, "NATS did not echo the delivery marker on an intact connection (may this user publish and subscribe to _INBOX.>?); counting such windows as published");
                }
                if let Some(w) = self.sent.pop_front() {
                    self.held -= w.events.len();
                    w.confirmed(self.m);
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
        for (s, p, t) in w.events {
            self.publish(s, p, t).await;
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
pub(super) const WINDOW: usize = 256;
/// A window is closed after this long even if not full, so slow streams are confirmed too.
const WINDOW_AGE: Duration = Duration::from_millis(20);
const TICK: Duration = Duration::from_millis(50);
const SHUTDOWN_WAIT: Duration = Duration::from_secs(10);

pub(super) async fn run(
    name: &str,
    client: &async_nats::Client,
    marker_timeout: Duration,
    mut subjects: SubjectCache,
    rx: &mut Queue,
    m: &PublishMetrics,
    mut state: tokio::sync::watch::Receiver<bool>,
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
        marker_timeout,
    };
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut batch = Vec::with_capacity(BATCH);
    let mut watching = true;
    loop {
        tokio::select! {
            biased;
            // Connected again: re-send what the old connection left unconfirmed now, not at
            // the next tick.
            changed = state.changed(), if watching => {
                watching = changed.is_ok();
                core.tick().await;
            }
            Some(msg) = markers.next() => core.marker(&msg.payload).await,
            _ = tick.tick() => core.tick().await,
            n = rx.recv_many(&mut batch, BATCH), if !core.full() => {
                if n == 0 {
                    break;
                }
                for ev in batch.drain(..) {
                    let subj = match &ev.subject {
                        Some(s) => Subject::from(&**s),
                        None => subjects.get(&ev.summary),
                    };
                    core.publish(subj, ev.payload, ev.settle).await;
                }
            }
        }
    }
    core.finish(&mut markers).await;
}
