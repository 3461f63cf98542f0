//! What a consumer plugs into the runtime: a [`Stage`] (pure: deliveries in, decisions and
//! batches out) and a [`Sink`] (the one downstream write: a bus publish settled by the
//! bus's confirmation, an HTTP push, standard output).
//!
//! The runtime ([`crate::runtime`]) owns everything around them: readers, acks, holds,
//! in-progress renewal, the exactly-once record, retries, the drain deadline and metrics.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

/// What the stage decided about one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Done: its effect needs no further write (acked now).
    Ack,
    /// Its effect waits in the stage; acked once a batch whose `covers` is above `token`
    /// was written ([`Flushed::covers`]).
    Hold(u64),
    /// Not a message this consumer reads (counted, logged once, acked, skipped).
    Bad(String),
}

/// One message as a stage sees it.
#[derive(Debug, Clone, Copy)]
pub struct Msg<'a> {
    /// The NATS subject, MQTT topic, Redis channel or stream key it came on.
    pub subject: &'a str,
    pub payload: &'a Bytes,
    /// Which of the consumer's inputs it came from (0 for a single input).
    pub input: usize,
}

/// A batch for the sink, and the holds it settles: every message held with a token
/// below `covers` is acked once the sink wrote it.
#[derive(Debug)]
pub struct Flushed<B> {
    pub batch: B,
    pub covers: u64,
}

/// Why the runtime asks for a flush.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flush {
    /// [`Stage::due`] has come.
    Due,
    /// Everything held must go out: `max_pending` reached, or the process is stopping.
    All,
}

/// A consumer's pure core. Called from one task only; no I/O.
pub trait Stage: Send + 'static {
    /// What a flush hands the sink.
    type Batch: Send + 'static;

    /// Takes one message (already known not to be a redelivery of one this process
    /// handled).
    fn push(&mut self, msg: Msg<'_>, now: Instant) -> Verdict;

    /// When the stage next wants [`flush`](Self::flush) called with [`Flush::Due`]
    /// (`None`: nothing waits for time).
    fn due(&self) -> Option<Instant>;

    /// Takes the next batch to write, if any. Called again until it returns `None`.
    fn flush(&mut self, now: Instant, why: Flush) -> Option<Flushed<Self::Batch>>;

    /// The sink's final word on the batch that covered `covers`.
    fn settled(&mut self, covers: u64, outcome: &Settled) {
        let _ = (covers, outcome);
    }

    /// Called after each run of messages (at most a few thousand) so the stage can
    /// publish its own metrics without a lock per message.
    fn sync_metrics(&mut self) {}
}

/// One attempt of a sink to write a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// Written (bus confirmation, HTTP 2xx, or a partial write whose refusals the sink
    /// counted and must never be sent again).
    Done,
    /// Not written, for a reason that may pass: tried again after `after` (a
    /// `Retry-After`) or the policy's backoff.
    Retry {
        after: Option<Duration>,
        why: String,
    },
    /// Refused for good (the sink counted it by `reason`): the holds it covers are acked,
    /// the batch is not sent again.
    Dropped { reason: String },
}

/// How a batch ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    Written,
    Dropped(String),
}

/// The one downstream write of a consumer.
pub trait Sink<B>: Send + 'static {
    /// One attempt to write `batch`; the runtime retries [`Attempt::Retry`] with
    /// backoff, and keeps the held messages in progress meanwhile.
    fn send(&mut self, batch: &B) -> impl Future<Output = Attempt> + Send;

    /// Flushes and ends the sink at shutdown (the runtime bounds it by the drain
    /// deadline and drops it after).
    fn close(self) -> impl Future<Output = ()> + Send
    where
        Self: Sized,
    {
        async {}
    }
}

/// For a consumer whose stage never flushes (everything is acked at once).
#[derive(Debug, Default)]
pub struct NoSink;

impl<B: Sync> Sink<B> for NoSink {
    async fn send(&mut self, _: &B) -> Attempt {
        Attempt::Done
    }
}
