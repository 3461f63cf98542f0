//! Redis publishing (redis-rs, through a reconnecting `ConnectionManager`).
//!
//! Each batch drained from the queue goes out as one pipeline (two may await their replies
//! at once): `PUBLISH` per event (pub/sub mode), one `RPUSH` plus `LTRIM` (list mode, the
//! Logstash convention: consumers pop from the left), or `XADD … MAXLEN ~ n` per event
//! (stream mode). The batch is held until Redis
//! replies: a failed pipeline (its outcome unknown) backs off and is sent again, counted in
//! `tapbus_resent_total` (events it had applied before the connection broke appear twice,
//! byte-identical). Meanwhile our bounded queue fills and the fan-out drops and counts, so
//! socket reads never wait for Redis, and `published + dropped` equals the events queued.
//! A reply means applied; durable only as far as the server's own persistence (AOF).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesOrdered;
use tokio::time::Instant;

use redis::aio::ConnectionManager;
use redis::{Client, Pipeline, RedisError, streams::StreamMaxlen};
use tapbus_config::{RedisMode, RedisSpec};
use tapbus_proto::event::Summary;
use tapbus_proto::subject::Template;

use super::settle::Ticket;
use super::{Message as Event, Queue as EventRx};
use crate::backoff::Backoff;
use crate::metrics::PublishMetrics;

const BATCH: usize = 512;
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Failures in a row after which the connection manager is replaced: by then the backoff
/// has reached `MAX_BACKOFF` (100 ms doubling: six failed exchanges, about 6 s).
const RENEW_AFTER_FAILURES: u32 = 6;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);

pub async fn run(name: String, spec: RedisSpec, mut rx: EventRx, m: PublishMetrics) {
    let client = match crate::connect::redis::client(&spec.connect) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(output = %name, "Redis client: {e}; dropping events for this output");
            drop_all(&mut rx, &m).await;
            return;
        }
    };
    let mut link = match Link::new(name.clone(), client, m.clone()) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(output = %name, "Redis connection setup: {e}; dropping events for this output");
            drop_all(&mut rx, &m).await;
            return;
        }
    };
    link.probe().await;

    let mut writer = Writer::new(spec.mode);
    let mut batch: Vec<Event> = Vec::with_capacity(BATCH);
    // Pipelines sent and awaiting their replies (the connection is multiplexed: several can
    // be on the wire at once, so Redis never waits for the broker's next batch), and failed
    // ones waiting for the backoff. Each is held until Redis replied to it: a failed
    // pipeline (its outcome unknown) is sent again, so nothing is lost.
    let mut inflight: FuturesOrdered<PipeFuture> = FuturesOrdered::new();
    let mut failed: VecDeque<(Arc<Pipe>, usize)> = VecDeque::new();
    let mut held = 0usize;
    let mut retry_at = Instant::now();
    let mut closed = false;
    let mut warned_refused = false;
    loop {
        m.inflight.set(held as i64);
        if closed && inflight.is_empty() && failed.is_empty() {
            break;
        }
        tokio::select! {
            biased;
            Some((pipe, n, res)) = inflight.next(), if !inflight.is_empty() => {
                if let Err(e) = &res
                    && refused(e)
                {
                    // Redis answered with an error (WRONGTYPE, OOM, NOPERM...): sending it
                    // again would fail again (and repeat what did apply), so the batch is
                    // counted as failed and the output goes on.
                    held -= n;
                    m.dropped_error.inc_by(n as u64);
                    if !warned_refused {
                        warned_refused = true;
                        tracing::warn!(output = %name, "Redis refused a batch: {e}; its {n} events are counted as dropped (publish_error; further refusals are only counted)");
                    }
                    continue;
                }
                match link.outcome(res) {
                    Ok(()) => {
                        held -= n;
                        m.published.inc_by(n as u64);
                        for t in &pipe.tickets {
                            t.published();
                        }
                    }
                    Err(wait) => {
                        failed.push_back((pipe, n));
                        retry_at = Instant::now() + wait;
                    }
                }
            }
            _ = tokio::time::sleep_until(retry_at), if !failed.is_empty() && inflight.is_empty() => {
                if closed {
                    // Shutting down with Redis failing: do not wait out backoffs.
                    let lost: usize = failed.drain(..).map(|(_, n)| n).sum();
                    held -= lost;
                    m.dropped_error.inc_by(lost as u64);
                    tracing::warn!(output = %name, "Redis unavailable at shutdown; {lost} events dropped");
                    continue;
                }
                for (pipe, n) in failed.drain(..) {
                    m.resent.inc_by(n as u64);
                    inflight.push_back(link.send(pipe, n));
                }
            }
            // Down and idle: probe now and then, so `up` recovers without traffic.
            _ = tokio::time::sleep(link.backoff.peek()), if !link.is_up() && inflight.is_empty() && failed.is_empty() && !closed => {
                link.probe().await;
            }
            n = rx.recv_many(&mut batch, BATCH), if !closed && failed.is_empty() && inflight.len() < MAX_PIPELINES => {
                if n == 0 {
                    closed = true;
                    continue;
                }
                let tickets = batch.iter_mut().filter_map(|e| e.settle.take()).collect();
                let pipe = Arc::new(Pipe {
                    cmds: writer.pipeline(&batch),
                    tickets,
                });
                batch.clear();
                held += n;
                inflight.push_back(link.send(pipe, n));
            }
        }
    }
    m.inflight.set(0);
}

/// An error reply from Redis to a command (as opposed to a lost connection, a timeout, or
/// a server that is loading or failing over, which are worth retrying).
fn refused(e: &RedisError) -> bool {
    use redis::{ErrorKind, ServerErrorKind};
    match e.kind() {
        ErrorKind::Extension => true,
        ErrorKind::Server(k) => !matches!(
            k,
            ServerErrorKind::BusyLoading
                | ServerErrorKind::TryAgain
                | ServerErrorKind::ClusterDown
                | ServerErrorKind::MasterDown
        ),
        _ => false,
    }
}

type PipeFuture =
    std::pin::Pin<Box<dyn Future<Output = (Arc<Pipe>, usize, Result<(), RedisError>)> + Send>>;

/// One batch's commands, with the settlement tickets of the messages in it (dropped, so
/// counted as dropped, unless Redis confirmed the batch).
struct Pipe {
    cmds: Pipeline,
    tickets: Vec<Ticket>,
}

/// Pipelines awaiting replies at once: two keep Redis busy while the next batch is built;
/// more make the batches smaller and cost more CPU per event (measured with bench/e2e.sh).
const MAX_PIPELINES: usize = 2;

/// Counts everything left in the queue as failed; returns how many.
async fn drop_all(rx: &mut EventRx, m: &PublishMetrics) -> u64 {
    let mut n = 0;
    while rx.recv().await.is_some() {
        m.dropped_error.inc();
        n += 1;
    }
    n
}

/// The connection with its health state: `up`, state-change logging and backoff.
struct Link {
    name: String,
    client: Client,
    con: ConnectionManager,
    m: PublishMetrics,
    /// None before the first outcome; then whether the last exchange succeeded.
    healthy: Option<bool>,
    /// Delays after failed exchanges (also paces the idle probe); reset by a success.
    backoff: Backoff,
}

impl Link {
    fn new(name: String, client: Client, m: PublishMetrics) -> Result<Link, RedisError> {
        m.up.set(0);
        let con = Self::manager(&client)?;
        Ok(Link {
            name,
            client,
            con,
            m,
            healthy: None,
            backoff: Backoff::new(MIN_BACKOFF, MAX_BACKOFF),
        })
    }

    /// A lazily connecting manager: its first command connects, later ones reconnect after
    /// I/O errors. Our own backoff sits on top, so it retries only briefly itself.
    fn manager(client: &Client) -> Result<ConnectionManager, RedisError> {
        crate::connect::redis::manager(client, CONNECT_TIMEOUT, Some(RESPONSE_TIMEOUT), MIN_BACKOFF)
    }

    fn is_up(&self) -> bool {
        self.healthy == Some(true)
    }

    async fn probe(&mut self) {
        let r = redis::cmd("PING").exec_async(&mut self.con).await;
        let _ = self.outcome(r);
    }

    /// Sends a pipeline of `n` events on the (shared, multiplexed) connection.
    fn send(&self, pipe: Arc<Pipe>, n: usize) -> PipeFuture {
        let mut con = self.con.clone();
        Box::pin(async move {
            let r = pipe.cmds.exec_async(&mut con).await;
            (pipe, n, r)
        })
    }

    /// Records the outcome of an exchange; on failure returns how long to back off.
    fn outcome(&mut self, r: Result<(), RedisError>) -> Result<(), Duration> {
        match r {
            Ok(()) => {
                match self.healthy {
                    Some(true) => {}
                    Some(false) => tracing::info!(output = %self.name, "Redis back"),
                    None => tracing::info!(output = %self.name, "Redis connected"),
                }
                self.healthy = Some(true);
                self.backoff.reset();
                self.m.up.set(1);
                Ok(())
            }
            Err(e) => {
                if self.healthy != Some(false) {
                    tracing::warn!(output = %self.name, "Redis down: {e}");
                } else {
                    tracing::debug!(output = %self.name, "Redis still failing: {e}");
                }
                self.healthy = Some(false);
                self.m.up.set(0);
                // The manager reconnects only after I/O errors; a connection that failed
                // otherwise (AUTH, handshake) stays failed. Start afresh when errors persist.
                if self.backoff.failures() >= RENEW_AFTER_FAILURES
                    && let Ok(con) = Self::manager(&self.client)
                {
                    self.con = con;
                }
                Err(self.backoff.next_delay())
            }
        }
    }
}

/// Builds the pipeline for one batch in the configured mode.
enum Writer {
    Publish(ChannelCache),
    List { key: String, max_len: usize },
    Stream { key: String, max_len: usize },
}

impl Writer {
    fn new(mode: RedisMode) -> Writer {
        match mode {
            RedisMode::Publish(t) => Writer::Publish(ChannelCache::new(t)),
            RedisMode::List { key, max_len } => Writer::List { key, max_len },
            RedisMode::Stream { key, max_len } => Writer::Stream { key, max_len },
        }
    }

    fn pipeline(&mut self, batch: &[Event]) -> Pipeline {
        let mut p = Pipeline::with_capacity(batch.len() + 1);
        match self {
            Writer::Publish(channels) => {
                for ev in batch {
                    match &ev.subject {
                        Some(ch) => p.cmd("PUBLISH").arg(&**ch),
                        None => p.cmd("PUBLISH").arg(&*channels.get(&ev.summary)),
                    }
                    .arg(&ev.payload[..])
                    .ignore();
                }
            }
            Writer::List { key, max_len } => {
                let mut push = redis::cmd("RPUSH");
                push.arg(key.as_str());
                for ev in batch {
                    push.arg(&ev.payload[..]);
                }
                p.add_command(push).ignore();
                let keep = -(i64::try_from(*max_len).unwrap_or(i64::MAX));
                p.cmd("LTRIM").arg(key.as_str()).arg(keep).arg(-1).ignore();
            }
            Writer::Stream { key, max_len } => {
                for ev in batch {
                    p.xadd_maxlen(
                        key.as_str(),
                        StreamMaxlen::Approx(*max_len),
                        "*",
                        &[("data", &ev.payload[..])],
                    )
                    .ignore();
                }
            }
        }
        p
    }
}

/// Rendered channels by the event fields the template uses (as for NATS subjects).
struct ChannelCache {
    template: Template,
    map: HashMap<Summary, Arc<str>, rustc_hash::FxBuildHasher>,
    scratch: String,
}

impl ChannelCache {
    const MAX: usize = 4096;

    fn new(template: Template) -> Self {
        ChannelCache {
            template,
            map: HashMap::default(),
            scratch: String::with_capacity(64),
        }
    }

    fn get(&mut self, s: &Summary) -> Arc<str> {
        let key = self.template.key(s);
        if let Some(ch) = self.map.get(&key) {
            return ch.clone();
        }
        if self.map.len() >= Self::MAX {
            self.map.clear();
        }
        self.template.render(s, &mut self.scratch);
        let ch: Arc<str> = Arc::from(self.scratch.as_str());
        self.map.insert(key, ch.clone());
        ch
    }
}
