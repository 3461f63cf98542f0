//! The consumer runtime's loop without sockets: an in-memory bus
//! (`tapbus_bus::subscribe::memory`), a counting stage and a sink the test answers for, on
//! tokio's paused clock.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tapbus_bus::subscribe::memory::AckLog;
use tapbus_consumer::runtime::{Input, drive};
use tapbus_consumer::{Attempt, Flush, Flushed, Msg, Options, Own, Sink, Stage, Verdict};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// Holds every message until the next batch (every `every`), like aggregate with an
/// output; payload "bad" is Bad, "now" is acked at once.
struct Counting {
    pushed: Arc<Mutex<Vec<String>>>,
    batch: u64,
    unflushed: usize,
    every: Duration,
    next: Instant,
}

impl Counting {
    fn new(every: Duration) -> (Self, Arc<Mutex<Vec<String>>>) {
        let pushed = Arc::new(Mutex::new(Vec::new()));
        (
            Counting {
                pushed: pushed.clone(),
                batch: 0,
                unflushed: 0,
                every,
                next: Instant::now() + every,
            },
            pushed,
        )
    }
}

impl Stage for Counting {
    type Batch = (u64, usize);

    fn push(&mut self, msg: Msg<'_>, _now: Instant) -> Verdict {
        let p = String::from_utf8_lossy(msg.payload).to_string();
        self.pushed.lock().expect("lock").push(p.clone());
        match p.as_str() {
            "bad" => Verdict::Bad("not a number".into()),
            "now" => Verdict::Ack,
            _ => {
                self.unflushed += 1;
                Verdict::Hold(self.batch)
            }
        }
    }

    fn due(&self) -> Option<Instant> {
        (self.unflushed > 0).then_some(self.next)
    }

    fn flush(&mut self, now: Instant, why: Flush) -> Option<Flushed<(u64, usize)>> {
        if self.unflushed == 0 {
            return None;
        }
        let _ = why;
        let f = Flushed {
            batch: (self.batch, self.unflushed),
            covers: self.batch + 1,
        };
        self.batch += 1;
        self.unflushed = 0;
        self.next = now + self.every;
        Some(f)
    }
}

/// A sink whose every attempt the test answers through a channel (or which never
/// answers once the test dropped the sender).
struct Answered {
    asks: mpsc::UnboundedSender<((u64, usize), oneshot::Sender<Attempt>)>,
}

impl Sink<(u64, usize)> for Answered {
    async fn send(&mut self, batch: &(u64, usize)) -> Attempt {
        let (tx, rx) = oneshot::channel();
        if self.asks.send((*batch, tx)).is_err() {
            return std::future::pending().await;
        }
        match rx.await {
            Ok(a) => a,
            Err(_) => std::future::pending().await,
        }
    }
}

struct Rig {
    log: AckLog,
    tx: mpsc::Sender<Input>,
    floors: mpsc::Sender<(usize, u64)>,
    asks: mpsc::UnboundedReceiver<((u64, usize), oneshot::Sender<Attempt>)>,
    stop: Option<oneshot::Sender<()>>,
    own: Own,
    pushed: Arc<Mutex<Vec<String>>>,
    run: tokio::task::JoinHandle<anyhow::Result<()>>,
}

fn rig(opts: Options) -> Rig {
    let (stage, pushed) = Counting::new(Duration::from_secs(1));
    let (tx, rx) = mpsc::channel(1024);
    let (ftx, frx) = mpsc::channel(16);
    let (atx, arx) = mpsc::unbounded_channel();
    let (stx, srx) = oneshot::channel::<()>();
    let own = Own::new();
    let o = own.clone();
    let run = tokio::spawn(async move {
        let stop = async move {
            let _ = srx.await;
        };
        drive(
            &opts,
            &o,
            rx,
            frx,
            stage,
            Answered { asks: atx },
            stop,
            Vec::new(),
        )
        .await
    });
    Rig {
        log: AckLog::default(),
        tx,
        floors: ftx,
        asks: arx,
        stop: Some(stx),
        own,
        pushed,
        run,
    }
}

impl Rig {
    async fn send(&self, payload: &'static str, tag: u64, seq: Option<u64>, delivered: u64) {
        let d = self.log.delivery("dnstap.x", payload, tag, seq, delivered);
        self.tx
            .send(Input::Delivery(0, d))
            .await
            .expect("loop running");
    }

    /// Lets the loop run until it is idle.
    async fn settle(&self) {
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
    }

    async fn ask(&mut self) -> ((u64, usize), oneshot::Sender<Attempt>) {
        tokio::time::timeout(Duration::from_secs(60), self.asks.recv())
            .await
            .expect("a batch within 60 s")
            .expect("sink alive")
    }
}

fn opts() -> Options {
    let mut o = Options::new("test", "test");
    o.drain_timeout = Duration::from_secs(20);
    o
}

#[tokio::test(start_paused = true)]
async fn held_messages_are_acked_only_after_their_batch_is_written() {
    let mut r = rig(opts());
    r.send("1", 1, Some(1), 1).await;
    r.send("2", 2, Some(2), 1).await;
    r.send("now", 3, Some(3), 1).await;
    r.settle().await;
    assert_eq!(r.log.acked(), [3], "only the Ack verdict is acked at once");
    assert_eq!(r.own.pending.get(), 2);
    let (batch, answer) = r.ask().await;
    assert_eq!(batch, (0, 2));
    r.settle().await;
    assert_eq!(r.log.acked(), [3], "not before the sink answered");
    answer.send(Attempt::Done).expect("sink waits");
    r.settle().await;
    assert_eq!(r.log.acked(), [3, 1, 2]);
    assert_eq!(r.own.pending.get(), 0);
    assert_eq!(r.own.batches.get(), 1);
    r.stop.take().map(|s| s.send(()));
    r.run.await.expect("join").expect("clean stop");
}

#[tokio::test(start_paused = true)]
async fn a_redelivery_is_never_applied_twice() {
    let mut r = rig(opts());
    r.send("1", 1, Some(1), 1).await;
    r.send("2", 2, Some(2), 1).await;
    r.settle().await;
    let (_, answer) = r.ask().await;
    answer.send(Attempt::Done).expect("sink waits");
    r.settle().await;
    assert_eq!(r.log.acked(), [1, 2]);
    // Held again: message 3, then the server (restarted, its acks lost) delivers 1, 2
    // and 3 again.
    r.send("3", 3, Some(3), 1).await;
    r.send("1", 11, Some(1), 2).await;
    r.send("2", 12, Some(2), 2).await;
    r.send("3", 13, Some(3), 2).await;
    r.settle().await;
    assert_eq!(
        *r.pushed.lock().expect("lock"),
        ["1", "2", "3"],
        "redeliveries never reach the stage"
    );
    assert_eq!(
        r.log.acked(),
        [1, 2, 11, 12],
        "handled and acked: acked again at once"
    );
    assert_eq!(r.own.duplicates.get(), 3);
    assert_eq!(r.own.redelivered.get(), 3);
    // The copy of the held message 3 waits for its batch with the original.
    let (batch, answer) = r.ask().await;
    assert_eq!(batch, (1, 1));
    answer.send(Attempt::Done).expect("sink waits");
    r.settle().await;
    assert_eq!(r.log.acked(), [1, 2, 11, 12, 3, 13]);
    // Once the server's ack floor covered them (reported twice), they are forgotten: a
    // message the server delivers after that is new to this process.
    r.floors.send((0, 3)).await.expect("loop");
    r.floors.send((0, 3)).await.expect("loop");
    r.settle().await;
    assert_eq!(r.own.dedupe_ranges.get(), 0);
    r.stop.take().map(|s| s.send(()));
    r.run.await.expect("join").expect("clean stop");
}

#[tokio::test(start_paused = true)]
async fn bad_messages_are_counted_acked_and_skipped() {
    let mut r = rig(opts());
    r.send("bad", 1, None, 1).await;
    r.send("1", 2, None, 1).await;
    r.settle().await;
    assert_eq!(r.log.acked(), [1]);
    assert_eq!(r.own.bad.get(), 1);
    let (_, answer) = r.ask().await;
    answer.send(Attempt::Done).expect("sink waits");
    r.settle().await;
    assert_eq!(r.log.acked(), [1, 2]);
    r.stop.take().map(|s| s.send(()));
    r.run.await.expect("join").expect("clean stop");
}

#[tokio::test(start_paused = true)]
async fn held_messages_are_kept_in_progress_while_the_sink_retries() {
    let mut o = opts();
    o.renew_every = Some(Duration::from_secs(10));
    o.max_backoff = Duration::from_secs(5);
    let mut r = rig(o);
    r.send("1", 1, Some(1), 1).await;
    r.settle().await;
    // The downstream refuses for a minute: each attempt is retried with backoff.
    let start = Instant::now();
    let mut attempts = 0;
    loop {
        let (batch, answer) = r.ask().await;
        assert_eq!(batch, (0, 1), "the same batch again");
        attempts += 1;
        if start.elapsed() >= Duration::from_secs(60) {
            answer.send(Attempt::Done).expect("sink waits");
            break;
        }
        answer
            .send(Attempt::Retry {
                after: None,
                why: "503".into(),
            })
            .expect("sink waits");
    }
    r.settle().await;
    assert!(attempts > 10, "{attempts}");
    assert_eq!(r.own.batches_failed.get(), attempts - 1);
    // Held a minute with renewals every 10 s (after a first whole round): at least 4.
    assert!(r.log.in_progress(1) >= 4, "{:?}", r.log.events());
    assert_eq!(r.log.acked(), [1]);
    r.stop.take().map(|s| s.send(()));
    r.run.await.expect("join").expect("clean stop");
}

#[tokio::test(start_paused = true)]
async fn a_retry_after_is_honoured() {
    let mut r = rig(opts());
    r.send("1", 1, None, 1).await;
    r.settle().await;
    let (_, answer) = r.ask().await;
    let t = Instant::now();
    answer
        .send(Attempt::Retry {
            after: Some(Duration::from_secs(42)),
            why: "429".into(),
        })
        .expect("sink waits");
    let (_, answer) = r.ask().await;
    assert_eq!(t.elapsed().as_secs(), 42);
    answer
        .send(Attempt::Dropped {
            reason: "http_413".into(),
        })
        .expect("sink waits");
    r.settle().await;
    assert_eq!(r.log.acked(), [1], "dropped for good: acked, counted");
    assert_eq!(r.own.batches_dropped.get(), 1);
    r.stop.take().map(|s| s.send(()));
    r.run.await.expect("join").expect("clean stop");
}

#[tokio::test(start_paused = true)]
async fn stopping_writes_what_is_held_then_acks_it() {
    let mut r = rig(opts());
    r.send("1", 1, None, 1).await;
    r.send("2", 2, None, 1).await;
    r.settle().await;
    r.stop.take().map(|s| s.send(()));
    // Not due yet: the stop flushes it.
    let (batch, answer) = r.ask().await;
    assert_eq!(batch, (0, 2));
    answer.send(Attempt::Done).expect("sink waits");
    r.run.await.expect("join").expect("clean stop");
    assert_eq!(r.log.acked(), [1, 2]);
    assert_eq!(r.own.unsettled.get(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_stop_with_the_downstream_gone_ends_by_the_drain_deadline() {
    let mut r = rig(opts());
    r.send("1", 1, None, 1).await;
    r.send("2", 2, None, 1).await;
    r.settle().await;
    let t = Instant::now();
    r.stop.take().map(|s| s.send(()));
    // The sink never answers.
    let (_, answer) = r.ask().await;
    std::mem::forget(answer);
    r.run.await.expect("join").expect("a stop is not an error");
    assert_eq!(
        t.elapsed(),
        Duration::from_secs(20),
        "exactly the drain deadline"
    );
    assert!(
        r.log.acked().is_empty(),
        "nothing acked that was not written"
    );
    assert_eq!(r.own.unsettled.get(), 2, "counted");
}

#[tokio::test(start_paused = true)]
async fn reading_pauses_at_max_pending_and_everything_is_flushed() {
    let mut o = opts();
    o.max_pending = 3;
    let mut r = rig(o);
    for i in 1..=5 {
        r.send("x", i, None, 1).await;
    }
    r.settle().await;
    assert_eq!(
        r.pushed.lock().expect("lock").len(),
        3,
        "paused at the bound"
    );
    // At the bound the stage is flushed at once (not after `every`).
    let (batch, answer) = r.ask().await;
    assert_eq!(batch, (0, 3));
    assert_eq!(Instant::now().elapsed(), Duration::ZERO);
    answer.send(Attempt::Done).expect("sink waits");
    r.settle().await;
    assert_eq!(r.pushed.lock().expect("lock").len(), 5, "reading again");
    assert_eq!(r.log.acked(), [1, 2, 3]);
    r.stop.take().map(|s| s.send(()));
    let (_, answer) = r.ask().await;
    answer.send(Attempt::Done).expect("sink waits");
    r.run.await.expect("join").expect("clean stop");
    assert_eq!(r.log.acked(), [1, 2, 3, 4, 5]);
}

#[tokio::test(start_paused = true)]
async fn an_input_that_ends_is_an_error_after_the_drain() {
    let mut r = rig(opts());
    r.send("1", 1, None, 1).await;
    r.tx.send(Input::Ended(
        0,
        "subscription ended: consumer deleted".into(),
    ))
    .await
    .expect("loop");
    let (_, answer) = r.ask().await;
    answer.send(Attempt::Done).expect("sink waits");
    let e = r.run.await.expect("join").expect_err("an error");
    assert!(e.to_string().contains("consumer deleted"), "{e}");
    assert_eq!(
        r.log.acked(),
        [1],
        "what was held was still written and acked"
    );
}
