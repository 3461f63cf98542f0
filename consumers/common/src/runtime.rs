//! The consumer runtime: the arrows bus --> stage --> sink --> acks, the same for every
//! consumer binary.
//!
//! A consumer supplies a [`Stage`] (pure) and a [`Sink`] (its one downstream write). The
//! runtime owns the rest:
//! - one reader task per input, so no bus read is ever a losing `select!` branch; each
//!   waits for its bus, stream and durable with backoff, saying so once
//!   ([`tapbus_bus::input::subscribe_waiting`]), and reports not ready on `/health`
//!   meanwhile;
//! - `max_pending`: at most that many messages taken and not acked; at the bound the
//!   stage is asked to flush everything and reading pauses (the bus holds the rest);
//! - holds: a held message is kept as its ack handle only ([`AckHandle`], tens of bytes),
//!   never with its payload, so memory does not grow with the event rate;
//! - acks, once the batch covering a hold was written ([`Flushed::covers`]); in-progress
//!   acks for everything held longer than a third of the input's `ack_wait`;
//! - exactly-once effects on JetStream: the stream sequences this process handled are kept
//!   ([`Handled`], ranges, pruned below the consumer's ack floor one report late), so a
//!   redelivery (a lost ack, a restarted server) is acked without effect, or held with the
//!   hold it repeats;
//! - one retry policy for the sink (backoff, `Retry-After`), one batch in flight and one
//!   waiting;
//! - the drain deadline: on SIGTERM reading stops, the stage flushes everything, what the
//!   sink confirms by the deadline is acked, the rest is logged and counted
//!   (`tapbus_consumer_unsettled_total`) and left to the bus; the process exits by the
//!   deadline whatever its bus or downstream does;
//! - `/metrics` and `/health` ([`crate::metrics`]).
//!
//! [`drive`] is the loop itself, over channels: tests feed it deliveries from
//! [`tapbus_bus::subscribe::memory`] on a paused clock.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use prometheus_client::registry::Registry;
use tapbus_bus::subscribe::{AckFlush, AckHandle, Delivery, Subscriber};
use tapbus_config::{ConsumerInputSpec, SubscribeMode};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::metrics::{Own, UNKNOWN};
use crate::stage::{Attempt, Flush, Flushed, Msg, Settled, Sink, Stage, Verdict};
use crate::state::{Handled, Held};

/// How the runtime runs one consumer.
#[derive(Debug, Clone)]
pub struct Options {
    /// The program name (NATS connection name, default durable names, logs).
    pub program: &'static str,
    /// The `consumer` label of `tapbus_consumer_*`.
    pub consumer: &'static str,
    /// Messages taken and not acked, at most.
    pub max_pending: usize,
    /// How long a stopping process waits for its last batches.
    pub drain_timeout: Duration,
    /// Ranges of handled stream sequences kept per input ([`Handled`]).
    pub dedupe_ranges: usize,
    /// Sink retry backoff.
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// In-progress acks for held messages this often (`None`: never; the inputs' buses
    /// have no redelivery timer). [`renew_every`] derives it from the inputs.
    pub renew_every: Option<Duration>,
}

impl Options {
    pub fn new(program: &'static str, consumer: &'static str) -> Self {
        Options {
            program,
            consumer,
            max_pending: 20_000,
            drain_timeout: Duration::from_secs(20),
            dedupe_ranges: 65_536,
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            renew_every: None,
        }
    }
}

/// A third of the shortest JetStream `ack_wait` among the inputs (at least 1 s): held
/// messages are reported in progress well before the server would deliver them again.
pub fn renew_every(inputs: &[ConsumerInputSpec]) -> Option<Duration> {
    inputs
        .iter()
        .filter_map(|i| match &i.mode {
            SubscribeMode::JetStream { ack_wait, .. } => Some(*ack_wait),
            _ => None,
        })
        .min()
        .map(|w| (w / 3).max(Duration::from_secs(1)))
}

/// `max_pending`, lowered to the smallest `max_ack_pending` of the JetStream inputs: the
/// server delivers no more than that unacked, so a stage holding that many would get
/// nothing more until its next due time (aggregate's interval, reduce's idle flush) and
/// the input would crawl at `max_ack_pending` per interval. At the bound everything is
/// flushed, as at `max_pending`.
pub fn max_pending_for(max_pending: usize, inputs: &[ConsumerInputSpec]) -> usize {
    inputs
        .iter()
        .filter_map(|i| match &i.mode {
            SubscribeMode::JetStream {
                max_ack_pending, ..
            } => usize::try_from(*max_ack_pending).ok(),
            _ => None,
        })
        .fold(max_pending, usize::min)
        .max(1)
}

/// What reaches the loop from the inputs.
#[derive(Debug)]
pub enum Input {
    /// The input is subscribed (its bus, stream and durable are there).
    Ready(usize),
    Delivery(usize, Delivery),
    /// The input's subscription cannot go on.
    Ended(usize, String),
}

/// A consumer being assembled: its metrics registry (the stage registers its own series
/// beside `tapbus_consumer_*`), then [`Consumer::run`].
#[derive(Debug)]
pub struct Consumer {
    opts: Options,
    registry: Registry,
    own: Own,
}

impl Consumer {
    pub fn new(opts: Options) -> Self {
        let own = Own::new();
        let mut registry = Registry::default();
        own.register(opts.consumer, &mut registry);
        Consumer {
            opts,
            registry,
            own,
        }
    }

    /// Where the consumer registers its own metrics (exported at 0 from the start).
    pub fn registry(&mut self) -> &mut Registry {
        &mut self.registry
    }

    pub fn own(&self) -> &Own {
        &self.own
    }

    /// Serves `/metrics` (`extra()` first, e.g. aggregate's DNS metrics, then the
    /// registry) and `/health` on `listen`, subscribes every input, and runs the stage
    /// and sink until SIGINT/SIGTERM (drained) or an input ends for good (an error).
    pub async fn run<S, K, E>(
        self,
        inputs: Vec<ConsumerInputSpec>,
        listen: Option<std::net::SocketAddr>,
        stage: S,
        sink: K,
        extra: E,
    ) -> anyhow::Result<()>
    where
        S: Stage,
        K: Sink<S::Batch>,
        E: Fn() -> String + Clone + Send + Sync + 'static,
    {
        let Consumer {
            mut opts,
            registry,
            own,
        } = self;
        let bound = max_pending_for(opts.max_pending, &inputs);
        if bound < opts.max_pending {
            tracing::info!(
                max_pending = opts.max_pending,
                bound,
                "holding at most the inputs' max_ack_pending (the server delivers no more unacked)"
            );
            opts.max_pending = bound;
        }
        let registry = Arc::new(registry);
        if let Some(addr) = listen {
            let reg = registry.clone();
            let render = move || crate::metrics::render(&reg, &extra());
            crate::metrics::serve(addr, render, own.clone()).await?;
        }
        let (tx, rx) = mpsc::channel(1024);
        let (floor_tx, floor_rx) = mpsc::channel(64);
        let links = Links::new(inputs.len(), &own);
        let mut readers = Vec::new();
        for (i, spec) in inputs.into_iter().enumerate() {
            readers.push(AbortOnDrop(tokio::spawn(read(
                opts.program,
                i,
                spec,
                tx.clone(),
                floor_tx.clone(),
                links.clone(),
            ))));
        }
        drop((tx, floor_tx));
        drive(
            &opts,
            &own,
            rx,
            floor_rx,
            stage,
            sink,
            crate::stop_signal(),
            readers,
        )
        .await
    }
}

/// Aborts a task when dropped (the readers, once the loop stops reading).
#[derive(Debug)]
pub struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Each input's ready and up state, folded into `tapbus_consumer_ready` and
/// `tapbus_consumer_input_up` (1 when every input is).
#[derive(Debug, Clone)]
struct Links {
    ready: Arc<Vec<AtomicBool>>,
    up: Arc<Vec<AtomicBool>>,
    own: Own,
}

impl Links {
    fn new(n: usize, own: &Own) -> Self {
        Links {
            ready: Arc::new((0..n).map(|_| AtomicBool::new(false)).collect()),
            up: Arc::new((0..n).map(|_| AtomicBool::new(false)).collect()),
            own: own.clone(),
        }
    }

    fn set(&self, which: &[AtomicBool], i: usize, v: bool) {
        if let Some(s) = which.get(i) {
            s.store(v, Ordering::Relaxed);
        }
        let all = |w: &[AtomicBool]| w.iter().all(|s| s.load(Ordering::Relaxed));
        self.own.ready.set(i64::from(all(&self.ready)));
        self.own
            .up
            .set(i64::from(all(&self.up) && all(&self.ready)));
    }
}

/// One input's reader for a program that runs its own loop (tapbus-tail): the
/// subscription is waited for ([`tapbus_bus::input::subscribe_waiting`]) and read in a task
/// of its own, so the program's `select!` only ever cancels a channel receive, never a bus
/// read. Deliveries (and the end of the subscription) arrive on the returned channel; the
/// task ends when the guard is dropped.
pub fn spawn_reader(
    program: &'static str,
    spec: ConsumerInputSpec,
    capacity: usize,
) -> (mpsc::Receiver<Input>, AbortOnDrop) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let (floor_tx, _) = mpsc::channel(1);
    let own = Own::new();
    let links = Links::new(1, &own);
    let task = tokio::spawn(read(program, 0, spec, tx, floor_tx, links));
    (rx, AbortOnDrop(task))
}

/// One input's reader: waits for the subscription, follows its state and backlog, then
/// hands every delivery to the loop. Runs until the loop drops it.
async fn read(
    program: &'static str,
    i: usize,
    spec: ConsumerInputSpec,
    tx: mpsc::Sender<Input>,
    floors: mpsc::Sender<(usize, u64)>,
    links: Links,
) {
    let mut sub = match tapbus_bus::input::subscribe_waiting(program, &spec).await {
        Ok(s) => s,
        Err(e) => {
            let _ = tx
                .send(Input::Ended(i, format!("cannot subscribe: {e}")))
                .await;
            return;
        }
    };
    tracing::info!(input = i, mode = %spec.mode, semantics = ?sub.semantics(), "subscribed");
    links.set(&links.ready, i, true);
    if tx.send(Input::Ready(i)).await.is_err() {
        return;
    }
    let _watch = watch(&sub, i, floors, links.clone());
    loop {
        match sub.next().await {
            Ok(d) => {
                if tx.send(Input::Delivery(i, d)).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                let _ = tx
                    .send(Input::Ended(i, format!("subscription ended: {e}")))
                    .await;
                return;
            }
        }
    }
}

/// Follows a subscriber's connection state, backlog (lag gauges and, for JetStream, the
/// ack floor) and client drops; the tasks end with the returned guard.
fn watch(
    sub: &Subscriber,
    i: usize,
    floors: mpsc::Sender<(usize, u64)>,
    links: Links,
) -> Vec<AbortOnDrop> {
    if let Ok(mut v) = links.own.input_dropped.lock() {
        v.push(sub.dropped());
    }
    let mut backlog = sub.backlog();
    let own = links.own.clone();
    let b = tokio::spawn(async move {
        loop {
            let b = *backlog.borrow_and_update();
            if let Some(b) = b {
                own.lag
                    .store(b.waiting.unwrap_or(UNKNOWN), Ordering::Relaxed);
                own.bus_unacked.store(b.unacked, Ordering::Relaxed);
                if let Some(f) = b.ack_floor
                    && floors.send((i, f)).await.is_err()
                {
                    break;
                }
            }
            if backlog.changed().await.is_err() {
                break;
            }
        }
    });
    let mut up = sub.connected();
    let u = tokio::spawn(async move {
        loop {
            let v = *up.borrow_and_update();
            links.set(&links.up, i, v);
            if up.changed().await.is_err() {
                break;
            }
        }
    });
    vec![AbortOnDrop(b), AbortOnDrop(u)]
}

/// What the sink task reports for each batch.
#[derive(Debug)]
struct Report {
    covers: u64,
    outcome: Settled,
}

/// The sink's task: one batch at a time, each tried until written or dropped for good.
async fn sink_task<B, K>(
    mut sink: K,
    mut rx: mpsc::Receiver<Flushed<B>>,
    tx: mpsc::Sender<Report>,
    opts: Options,
    own: Own,
) where
    B: Send + 'static,
    K: Sink<B>,
{
    while let Some(f) = rx.recv().await {
        tracing::debug!(covers = f.covers, "writing a batch");
        let mut delays = tapbus_bus::backoff::Backoff::new(opts.min_backoff, opts.max_backoff);
        let mut failing = false;
        let outcome = loop {
            match sink.send(&f.batch).await {
                Attempt::Done => {
                    own.batches.inc();
                    if failing {
                        tracing::warn!("output written again");
                    }
                    break Settled::Written;
                }
                Attempt::Dropped { reason } => {
                    own.batches_dropped.inc();
                    break Settled::Dropped(reason);
                }
                Attempt::Retry { after, why } => {
                    own.batches_failed.inc();
                    if !failing {
                        failing = true;
                        tracing::warn!(
                            "output not written ({why}); retrying with backoff, holding its messages"
                        );
                    } else {
                        tracing::debug!("output still not written: {why}");
                    }
                    let d = after.unwrap_or_else(|| delays.next_delay());
                    tokio::time::sleep(d).await;
                }
            }
        };
        if tx
            .send(Report {
                covers: f.covers,
                outcome,
            })
            .await
            .is_err()
        {
            return;
        }
    }
    sink.close().await;
}

/// The loop: deliveries in, stage, batches to the sink task, acks as batches settle.
/// Ends on `stop` (drained within `drain_timeout`) or when an input ends (an error).
#[allow(clippy::too_many_arguments)]
pub async fn drive<S, K>(
    opts: &Options,
    own: &Own,
    mut rx: mpsc::Receiver<Input>,
    mut floors: mpsc::Receiver<(usize, u64)>,
    mut stage: S,
    sink: K,
    stop: impl Future<Output = ()>,
    readers: Vec<AbortOnDrop>,
) -> anyhow::Result<()>
where
    S: Stage,
    K: Sink<S::Batch>,
{
    let mut readers = Some(readers);
    let (batch_tx, batch_rx) = mpsc::channel::<Flushed<S::Batch>>(1);
    let (report_tx, mut reports) = mpsc::channel::<Report>(4);
    let mut sink = Some(AbortOnDrop(tokio::spawn(sink_task(
        sink,
        batch_rx,
        report_tx,
        opts.clone(),
        own.clone(),
    ))));
    let mut batch_tx = Some(batch_tx);
    let (ack_tx, mut ack_rx) = mpsc::unbounded_channel::<AckHandle>();
    let acking = Arc::new(AtomicUsize::new(0));
    // Wakes a loop that paused reading at max_pending once acks went out.
    let acked = Arc::new(tokio::sync::Notify::new());
    let mut acker = Some(AbortOnDrop(tokio::spawn({
        let (own, acking, acked) = (own.clone(), acking.clone(), acked.clone());
        async move {
            while let Some(h) = ack_rx.recv().await {
                ack(h, &own).await;
                acking.fetch_sub(1, Ordering::Relaxed);
                own.pending.dec();
                if ack_rx.is_empty() {
                    acked.notify_one();
                }
            }
        }
    })));
    let mut core = Core::new(opts, own, ack_tx, acking.clone());
    let mut outstanding = 0usize;
    let mut renew = opts.renew_every.map(|p| {
        let mut t = tokio::time::interval_at(Instant::now() + p, p);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    // Set on a stop signal or when an input ends: the drain deadline.
    let mut deadline: Option<Instant> = None;
    let mut signalled = false;
    let mut ended: Option<String> = None;
    let mut floors_open = true;
    tokio::pin!(stop);
    let far = || Instant::now() + Duration::from_secs(86_400);
    loop {
        // Hand the sink what is ready: one batch in flight, one waiting.
        let draining = deadline.is_some();
        let mut flushed_all = false;
        while outstanding < 2 {
            let now = Instant::now();
            let why = if draining || core.pending() >= opts.max_pending {
                Flush::All
            } else if stage.due().is_some_and(|t| t <= Instant::now()) {
                Flush::Due
            } else {
                break;
            };
            match stage.flush(now, why) {
                Some(f) => {
                    let Some(tx) = batch_tx.as_ref() else { break };
                    if tx.send(f).await.is_err() {
                        break;
                    }
                    outstanding += 1;
                }
                None => {
                    flushed_all = why == Flush::All;
                    break;
                }
            }
        }
        if draining && outstanding == 0 && flushed_all {
            // Everything the stage held was written (or nothing was held).
            drop(batch_tx.take());
            let left = deadline
                .map(|t| t.saturating_duration_since(Instant::now()))
                .unwrap_or(opts.drain_timeout);
            if let Some(mut s) = sink.take()
                && tokio::time::timeout(left, &mut s.0).await.is_err()
            {
                tracing::warn!("output did not close within drain_timeout");
            }
            break;
        }
        let reading = !draining && core.pending() < opts.max_pending;
        let due = if draining || outstanding >= 2 {
            None
        } else {
            stage.due()
        };
        tokio::select! {
            biased;
            () = &mut stop, if !signalled => {
                tracing::info!(held = core.held.len(), "stopping: writing what is held, then acking it");
                signalled = true;
                deadline.get_or_insert_with(|| Instant::now() + opts.drain_timeout);
                drop(readers.take());
            }
            r = reports.recv() => {
                match r {
                    Some(r) => {
                        outstanding = outstanding.saturating_sub(1);
                        stage.settled(r.covers, &r.outcome);
                        core.settle(r.covers);
                    }
                    None => {
                        // The sink task ended (it only does when its channel closes).
                        if batch_tx.is_some() {
                            return Err(anyhow::anyhow!("the output task stopped"));
                        }
                        break;
                    }
                }
            }
            () = tokio::time::sleep_until(deadline.unwrap_or_else(far)), if deadline.is_some() => {
                break;
            }
            _ = async { match renew.as_mut() { Some(t) => t.tick().await, None => std::future::pending().await } }, if renew.is_some() => {
                core.renew().await;
            }
            f = floors.recv(), if floors_open => match f {
                Some((i, floor)) => core.floor(i, floor),
                None => floors_open = false,
            },
            () = tokio::time::sleep_until(due.unwrap_or_else(far)), if due.is_some() => {}
            () = acked.notified(), if !draining && !reading => {}
            m = rx.recv(), if reading => {
                let mut next = m;
                let mut n = 0;
                loop {
                    match next {
                        Some(Input::Delivery(i, d)) => core.take(&mut stage, i, d),
                        Some(Input::Ready(_)) => {}
                        Some(Input::Ended(i, why)) => {
                            tracing::error!(input = i, "{why}");
                            ended = Some(why);
                            deadline.get_or_insert_with(|| Instant::now() + opts.drain_timeout);
                            drop(readers.take());
                            break;
                        }
                        None => {
                            ended = Some("every input ended".into());
                            deadline.get_or_insert_with(|| Instant::now() + opts.drain_timeout);
                            break;
                        }
                    }
                    n += 1;
                    if n >= 1024 || core.pending() >= opts.max_pending {
                        break;
                    }
                    match rx.try_recv() {
                        Ok(m) => next = Some(m),
                        Err(_) => break,
                    }
                }
                stage.sync_metrics();
                tracing::debug!(taken = n, held = core.held.len(), "messages taken");
                core.gauges();
            }
        }
    }
    // Whatever is still held was not confirmed by the deadline.
    drop(sink);
    let Core {
        held,
        acks,
        flushes,
        ..
    } = core;
    // The ack task sends what was handed to it, then the acks queued on the inputs'
    // connections are written out before the process exits (else the bus delivers those
    // messages again to the next process), within what is left of the deadline (at least a
    // moment: acks sent just before it).
    drop(acks);
    let left = || {
        deadline
            .map(|t| t.saturating_duration_since(Instant::now()))
            .unwrap_or(opts.drain_timeout)
            .max(ACK_FLUSH_AT_LEAST)
    };
    if let Some(mut a) = acker.take()
        && tokio::time::timeout(left(), &mut a.0).await.is_err()
    {
        tracing::warn!(
            left = acking.load(Ordering::Relaxed),
            "acks not sent by the drain deadline (the bus delivers those messages again)"
        );
    }
    let flush = async {
        for f in flushes.iter().flatten() {
            if let Err(e) = f.flush().await {
                tracing::debug!("flushing acks: {e}");
            }
        }
    };
    if tokio::time::timeout(left(), flush).await.is_err() {
        tracing::warn!(
            "the last acks were not written to the bus in time: it may deliver those messages again"
        );
    }
    let mut held = held;
    let left = held.take_all().len();
    if left > 0 {
        own.unsettled.inc_by(left as u64);
        tracing::warn!(
            left,
            "drain_timeout passed with messages whose output was not confirmed: not acked, the bus delivers them again"
        );
    }
    own.pending.set(0);
    match (ended, signalled) {
        (Some(e), false) => Err(anyhow::anyhow!(e)),
        _ => Ok(()),
    }
}

/// How long a stopping process waits for its last acks to be written when its drain
/// deadline has already passed.
const ACK_FLUSH_AT_LEAST: Duration = Duration::from_millis(200);

/// The loop's bookkeeping around [`Held`] and [`Handled`], and the acks to send.
struct Core<'a> {
    opts: &'a Options,
    own: &'a Own,
    held: Held<AckHandle>,
    handled: Vec<Handled>,
    evicted: u64,
    /// Acks go to a task of their own: the loop never waits on a bus write (an ack to a
    /// connection that is down would hold it, and with it SIGTERM and the deadline).
    acks: mpsc::UnboundedSender<AckHandle>,
    /// Handed to the ack task and not sent yet (counted in `max_pending`).
    acking: Arc<AtomicUsize>,
    bad_logged: bool,
    /// Per input: what writes its acks out to the bus at exit.
    flushes: Vec<Option<AckFlush>>,
}

impl<'a> Core<'a> {
    fn new(
        opts: &'a Options,
        own: &'a Own,
        acks: mpsc::UnboundedSender<AckHandle>,
        acking: Arc<AtomicUsize>,
    ) -> Self {
        Core {
            opts,
            own,
            held: Held::default(),
            handled: Vec::new(),
            evicted: 0,
            acks,
            acking,
            bad_logged: false,
            flushes: Vec::new(),
        }
    }

    /// Messages taken and not acked: held, or waiting for the ack task.
    fn pending(&self) -> usize {
        self.held.len() + self.acking.load(Ordering::Relaxed)
    }

    /// Hands `h` to the ack task; `fresh`: a message not held before (it now counts as
    /// pending until the ack task sent its ack; a held one already did).
    fn ack(&self, h: AckHandle, fresh: bool) {
        self.acking.fetch_add(1, Ordering::Relaxed);
        if fresh {
            self.own.pending.inc();
        }
        if self.acks.send(h).is_err() {
            self.acking.fetch_sub(1, Ordering::Relaxed);
            self.own.pending.dec();
        }
    }

    fn handled(&mut self, i: usize) -> &mut Handled {
        if self.handled.len() <= i {
            let cap = self.opts.dedupe_ranges;
            self.handled.resize_with(i + 1, || Handled::new(cap));
        }
        &mut self.handled[i]
    }

    /// One delivery: a redelivery of something handled is acked (or joins its hold);
    /// anything else goes to the stage.
    fn take<S: Stage>(&mut self, stage: &mut S, i: usize, d: Delivery) {
        let own = self.own;
        own.received.inc();
        if d.delivered > 1 {
            own.redelivered.inc();
        }
        if self.flushes.len() <= i {
            self.flushes.resize_with(i + 1, || None);
        }
        if self.flushes[i].is_none() && d.needs_ack() {
            self.flushes[i] = Some(d.ack_flush());
        }
        let seq = d.seq;
        if let Some(s) = seq
            && self.handled(i).contains(s)
        {
            own.duplicates.inc();
            match self.held.token_of(i, s) {
                Some(t) => {
                    self.held.hold(t, d.into_ack(), i, Some(s));
                    own.pending.inc();
                }
                None => self.ack(d.into_ack(), true),
            }
            return;
        }
        let verdict = stage.push(
            Msg {
                subject: &d.subject,
                payload: &d.payload,
                input: i,
            },
            Instant::now(),
        );
        if let Some(s) = seq {
            let h = self.handled(i);
            h.insert(s);
        }
        match verdict {
            Verdict::Ack => self.ack(d.into_ack(), true),
            Verdict::Hold(t) => {
                self.held.hold(t, d.into_ack(), i, seq);
                own.pending.inc();
            }
            Verdict::Bad(why) => {
                own.bad.inc();
                if !self.bad_logged {
                    self.bad_logged = true;
                    tracing::warn!(subject = %d.subject, "message skipped: {why} (further ones are counted in tapbus_consumer_bad_total)");
                }
                self.ack(d.into_ack(), true);
            }
        }
    }

    /// A batch covering `covers` was written (or dropped for good): ack its holds.
    fn settle(&mut self, covers: u64) {
        for e in self.held.release_below(covers) {
            self.ack(e.handle, false);
        }
    }

    async fn renew(&mut self) {
        let own = self.own;
        for h in self.held.renewal() {
            if h.needs_ack() {
                own.renewals.inc();
                let _ = h.in_progress().await;
            }
        }
    }

    fn floor(&mut self, i: usize, floor: u64) {
        self.handled(i).floor(floor);
        self.gauges();
    }

    fn gauges(&mut self) {
        let ranges: usize = self.handled.iter().map(Handled::ranges).sum();
        let evicted: u64 = self.handled.iter().map(Handled::evicted).sum();
        self.own.dedupe_ranges.set(ranges as i64);
        if evicted > self.evicted {
            self.own.dedupe_evicted.inc_by(evicted - self.evicted);
            self.evicted = evicted;
        }
    }
}

/// Acks one message, counting the ack or its failure (logged once).
pub async fn ack(h: AckHandle, own: &Own) {
    match h.ack().await {
        Ok(()) => {
            own.acked.inc();
        }
        Err(e) => {
            if own.ack_errors.inc() == 0 {
                tracing::warn!("ack failed (the bus may deliver the message again): {e}");
            }
        }
    }
}

/// Counts as `tapbus_consumer_input_dropped_total` what this counter of a bus client
/// counts (for consumers reading a subscriber themselves, such as tapbus-tail).
pub fn count_drops(own: &Own, c: Arc<AtomicU64>) {
    if let Ok(mut v) = own.input_dropped.lock() {
        v.push(c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(url: &str) -> ConsumerInputSpec {
        let mut c = tapbus_config::ConsumerInputConfig::default();
        c.set_url(url);
        c.validate("input", "test").expect("valid input")
    }

    #[test]
    fn max_pending_is_bounded_by_the_jetstream_inputs_max_ack_pending() {
        let js = input("jetstream://127.0.0.1:4222/DNSTAP?durable=a");
        let small = input("jetstream://127.0.0.1:4222/DNSTAP?durable=b&max_ack_pending=100");
        let core = input("nats://127.0.0.1:4222/dnstap.>");
        // The default max_ack_pending (4096) is below aggregate's and reduce's max_pending.
        assert_eq!(max_pending_for(20_000, std::slice::from_ref(&js)), 4096);
        assert_eq!(max_pending_for(1000, std::slice::from_ref(&js)), 1000);
        assert_eq!(max_pending_for(20_000, &[js, small, core.clone()]), 100);
        assert_eq!(max_pending_for(20_000, &[core]), 20_000);
        assert_eq!(max_pending_for(20_000, &[]), 20_000);
    }
}
