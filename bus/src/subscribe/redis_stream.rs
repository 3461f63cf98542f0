//! Redis stream subscriber: one consumer of a consumer group, at least once.
//!
//! At start and after every reconnect: `XGROUP CREATE key group <start> MKSTREAM`
//! (`BUSYGROUP`, the group exists, is fine), then this consumer's own pending entries
//! are read again (`XREADGROUP ... STREAMS key 0`, paged): entries it had read and not
//! acked before a restart or a broken connection. Then new entries:
//! `XREADGROUP GROUP g c COUNT n BLOCK ms STREAMS key >`. Every `claim_interval`,
//! `XAUTOCLAIM key g c min_idle cursor COUNT n` takes over entries pending longer than
//! `min_idle` in any consumer of the group (one that died, or this one's own deliveries
//! dropped without an ack), paging through the pending list with the cursor.
//!
//! The up/down state ([`RedisStreamSubscriber::connected`]) follows the outcome of the
//! reads that [`RedisStreamSubscriber::next`] makes: a lost connection shows when the next
//! read fails, and reconnecting happens inside `next()`, with backoff.
//!
//! Reads go over a connection of their own (a blocking `XREADGROUP` holds its
//! connection), acks over a reconnecting `ConnectionManager`.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Value};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Instant;

use super::nats::AbortOnDrop;
use super::redis_reply::{
    Entry, id_key, parse_autoclaim, parse_group_backlog, parse_pending, parse_read,
};
use super::{
    Ack, AckError, BACKLOG_POLL, Backlog, Delivery, LinkState, SpecError, SubscribeError, backoff,
};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const ACK_RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Tries of one XACK across a reconnect.
const ACK_ATTEMPTS: u32 = 4;

/// Where a group created by this subscriber starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum StreamStart {
    /// Every entry in the stream (`0`).
    #[default]
    All,
    /// Only entries added after the group was created (`$`).
    New,
}

/// A consumer of a Redis stream consumer group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisStreamSpec {
    pub key: String,
    pub group: String,
    /// This consumer's name, unique in the group and stable across restarts (a restarted
    /// consumer reads its own pending entries again).
    pub consumer: String,
    pub start: StreamStart,
    /// The field holding the payload. Default `data` (what the broker writes). An entry
    /// without it is acked and logged (it is not an event).
    pub field: String,
    /// Entries per read. Default 128.
    pub count: usize,
    /// How long one `XREADGROUP` waits for new entries. Default 2 s.
    pub block: Duration,
    /// An entry pending longer than this in another consumer is claimed. Default 60 s.
    pub min_idle: Duration,
    /// How often to claim. Default 30 s.
    pub claim_interval: Duration,
    /// Deliveries handed out and not yet acked (or dropped), at most. Default 4096.
    pub max_pending: usize,
}

impl RedisStreamSpec {
    pub fn new(
        key: impl Into<String>,
        group: impl Into<String>,
        consumer: impl Into<String>,
    ) -> Self {
        RedisStreamSpec {
            key: key.into(),
            group: group.into(),
            consumer: consumer.into(),
            start: StreamStart::All,
            field: "data".into(),
            count: 128,
            block: Duration::from_secs(2),
            min_idle: Duration::from_secs(60),
            claim_interval: Duration::from_secs(30),
            max_pending: 4096,
        }
    }

    pub fn validate(&self) -> Result<(), SpecError> {
        for (what, v) in [
            ("Redis stream key", &self.key),
            ("Redis group", &self.group),
            ("Redis consumer", &self.consumer),
            ("Redis payload field", &self.field),
        ] {
            if v.is_empty() {
                return Err(SpecError::new(what, "empty"));
            }
        }
        if self.count == 0 {
            return Err(SpecError::new("Redis count", "at least 1"));
        }
        if self.block < Duration::from_millis(1) || self.block > Duration::from_secs(60) {
            return Err(SpecError::new("Redis block", "1 ms to 60 s"));
        }
        if self.min_idle < Duration::from_millis(1) {
            return Err(SpecError::new("Redis min_idle", "at least 1 ms"));
        }
        if self.claim_interval < Duration::from_millis(1) {
            return Err(SpecError::new("Redis claim_interval", "at least 1 ms"));
        }
        if self.max_pending == 0 {
            return Err(SpecError::new("Redis max_pending", "at least 1"));
        }
        Ok(())
    }
}

/// Redis stream consumer group: **at least once**. [`Delivery::ack`] sends `XACK`, which
/// removes the entry from the group's pending list; `Ok` means Redis replied (durable as
/// far as the server's own persistence goes). It is retried a few times across a
/// reconnect; an `Err` leaves the entry pending (claimed again after `min_idle`). An entry not acked stays pending and is
/// delivered again: to this consumer after a reconnect or restart (own pending entries are
/// read again), or to whichever consumer of the group claims it after `min_idle`. A
/// delivery dropped without an ack is likewise claimed again after `min_idle` (possibly
/// by this consumer). `id` is the entry id; `delivered` is the group's delivery count
/// from `XPENDING` for re-read and claimed entries (one extra command per batch), 1 for
/// new ones. Entries deleted or trimmed while pending (`XADD MAXLEN`) cannot be delivered:
/// they are logged as lost (and acked, so they leave the pending list).
///
/// Cancelling [`next`](Self::next) loses nothing either: entries a cancelled read had
/// taken stay pending and are claimed again after `min_idle`.
pub struct RedisStreamSubscriber {
    client: redis::Client,
    spec: RedisStreamSpec,
    reader: Option<MultiplexedConnection>,
    acker: ConnectionManager,
    ready: VecDeque<Delivery>,
    permits: Arc<Semaphore>,
    /// Read own pending entries from this id on (`Some` after a (re)connect).
    own_from: Option<String>,
    /// A claim round in progress (cursor) or due.
    claim_cursor: Option<String>,
    next_claim: Instant,
    link: LinkState,
    delays: crate::backoff::Backoff,
    wait: Option<Duration>,
    backlog: watch::Receiver<Option<Backlog>>,
    _backlog_poll: AbortOnDrop,
}

impl std::fmt::Debug for RedisStreamSubscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStreamSubscriber")
            .field("spec", &self.spec)
            .field("ready", &self.ready.len())
            .finish()
    }
}

impl RedisStreamSubscriber {
    /// Connects, creates the group if missing; a first connect that fails is returned as an
    /// error, later ones are retried with backoff.
    pub async fn new(
        client: redis::Client,
        spec: &RedisStreamSpec,
    ) -> Result<Self, SubscribeError> {
        spec.validate()?;
        let what = format!(
            "Redis stream {} group {} consumer {} on {}",
            spec.key,
            spec.group,
            spec.consumer,
            client.get_connection_info().addr()
        );
        let acker = ConnectionManager::new_lazy_with_config(
            client.clone(),
            ConnectionManagerConfig::new()
                .set_connection_timeout(Some(CONNECT_TIMEOUT))
                .set_response_timeout(Some(ACK_RESPONSE_TIMEOUT))
                .set_number_of_retries(2),
        )?;
        let (backlog, backlog_poll) = poll_backlog(acker.clone(), spec);
        let mut s = RedisStreamSubscriber {
            client,
            spec: spec.clone(),
            reader: None,
            acker,
            ready: VecDeque::new(),
            permits: Arc::new(Semaphore::new(spec.max_pending)),
            own_from: None,
            claim_cursor: None,
            next_claim: Instant::now() + spec.claim_interval,
            link: LinkState::new(what),
            delays: backoff(),
            wait: None,
            backlog,
            _backlog_poll: backlog_poll,
        };
        s.connect().await?;
        Ok(s)
    }

    /// The group's backlog (shared by every consumer of the group).
    pub fn backlog(&self) -> watch::Receiver<Option<Backlog>> {
        self.backlog.clone()
    }

    async fn connect(&mut self) -> Result<(), redis::RedisError> {
        let cfg = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(self.spec.block + Duration::from_secs(5)));
        let mut con = self
            .client
            .get_multiplexed_async_connection_with_config(&cfg)
            .await?;
        let start = match self.spec.start {
            StreamStart::All => "0",
            StreamStart::New => "$",
        };
        let r: Result<Value, _> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.spec.key)
            .arg(&self.spec.group)
            .arg(start)
            .arg("MKSTREAM")
            .query_async(&mut con)
            .await;
        match r {
            Ok(_) => {
                tracing::info!(target: "tapbus_bus::subscribe", "{}: group created", self.link.what)
            }
            Err(e) if e.code() == Some("BUSYGROUP") => {}
            Err(e) => return Err(e),
        }
        self.reader = Some(con);
        self.own_from = Some("0".into());
        self.link.up();
        self.delays.reset();
        Ok(())
    }

    /// The next entry. Connection failures are retried with backoff; an error is returned
    /// only for a reply that cannot be parsed or a refused command (wrong type, no such
    /// group after `XGROUP CREATE`, ...), and the next call tries again.
    pub async fn next(&mut self) -> Result<Delivery, SubscribeError> {
        loop {
            if let Some(d) = self.ready.pop_front() {
                return Ok(d);
            }
            if self.reader.is_none() {
                if let Some(d) = self.wait.take() {
                    tokio::time::sleep(d).await;
                }
                if let Err(e) = self.connect().await {
                    self.failed(&e);
                    if !retryable(&e) {
                        return Err(e.into());
                    }
                }
                continue;
            }
            // Room for at least one more delivery (the bound on unacked ones).
            let first = self
                .permits
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| SubscribeError::Closed)?;
            let mut permits = vec![first];
            while permits.len() < self.spec.count {
                match self.permits.clone().try_acquire_owned() {
                    Ok(p) => permits.push(p),
                    Err(_) => break,
                }
            }
            if let Err(e) = self.fill(permits).await {
                match e {
                    SubscribeError::Redis(e) if retryable(&e) => self.failed(&e),
                    SubscribeError::Redis(e) if e.code() == Some("NOGROUP") => {
                        // The stream or group was deleted: create it again on the next
                        // round (the pending entries went with it).
                        tracing::warn!(target: "tapbus_bus::subscribe", "{}: {e}; creating the group again", self.link.what);
                        self.reader = None;
                    }
                    other => return Err(other),
                }
            }
        }
    }

    fn failed(&mut self, e: &redis::RedisError) {
        self.reader = None;
        self.link.down(e);
        self.wait = Some(self.delays.next_delay());
    }

    /// One read: own pending entries, a claim round, or new entries; queues deliveries.
    async fn fill(&mut self, permits: Vec<OwnedSemaphorePermit>) -> Result<(), SubscribeError> {
        let n = permits.len();
        let Some(mut con) = self.reader.clone() else {
            return Ok(());
        };
        let key = self.spec.key.clone();
        if let Some(from) = self.own_from.clone() {
            let v: Value = self.readgroup(n, None, &from).query_async(&mut con).await?;
            let entries = parse_read(&v, &key).map_err(SubscribeError::RedisReply)?;
            match entries.last() {
                None => self.own_from = None,
                Some(last) => self.own_from = Some(last.id.clone()),
            }
            if !entries.is_empty() {
                tracing::info!(target: "tapbus_bus::subscribe", "{}: {} own pending entries read again", self.link.what, entries.len());
                let counts = self.delivery_counts(&mut con, &entries).await?;
                self.queue(entries, Some(&counts), permits).await;
            }
            return Ok(());
        }
        if self.claim_cursor.is_none() && Instant::now() >= self.next_claim {
            self.claim_cursor = Some("0-0".into());
        }
        if let Some(cursor) = self.claim_cursor.clone() {
            let v: Value = redis::cmd("XAUTOCLAIM")
                .arg(&key)
                .arg(&self.spec.group)
                .arg(&self.spec.consumer)
                .arg(u64::try_from(self.spec.min_idle.as_millis()).unwrap_or(u64::MAX))
                .arg(&cursor)
                .arg("COUNT")
                .arg(n)
                .query_async(&mut con)
                .await?;
            let claim = parse_autoclaim(&v).map_err(SubscribeError::RedisReply)?;
            if claim.cursor == "0-0" {
                self.claim_cursor = None;
                self.next_claim = Instant::now() + self.spec.claim_interval;
            } else {
                self.claim_cursor = Some(claim.cursor);
            }
            if !claim.deleted.is_empty() {
                tracing::warn!(target: "tapbus_bus::subscribe", "{}: {} pending entries were deleted from the stream before anyone acked them (lost): {}", self.link.what, claim.deleted.len(), claim.deleted.join(" "));
            }
            if !claim.entries.is_empty() {
                tracing::info!(target: "tapbus_bus::subscribe", "{}: claimed {} entries idle for over {:?}", self.link.what, claim.entries.len(), self.spec.min_idle);
                let counts = self.delivery_counts(&mut con, &claim.entries).await?;
                self.queue(claim.entries, Some(&counts), permits).await;
            }
            return Ok(());
        }
        // New entries, waiting at most `block` (and no longer than the next claim is due).
        let until_claim = self.next_claim.saturating_duration_since(Instant::now());
        let block = self
            .spec
            .block
            .min(until_claim)
            .max(Duration::from_millis(1));
        let v: Value = self
            .readgroup(n, Some(block), ">")
            .query_async(&mut con)
            .await?;
        let entries = parse_read(&v, &key).map_err(SubscribeError::RedisReply)?;
        self.queue(entries, None, permits).await;
        Ok(())
    }

    fn readgroup(&self, count: usize, block: Option<Duration>, id: &str) -> redis::Cmd {
        let mut c = redis::cmd("XREADGROUP");
        c.arg("GROUP")
            .arg(&self.spec.group)
            .arg(&self.spec.consumer)
            .arg("COUNT")
            .arg(count);
        if let Some(b) = block {
            c.arg("BLOCK")
                .arg(u64::try_from(b.as_millis()).unwrap_or(u64::MAX));
        }
        c.arg("STREAMS").arg(&self.spec.key).arg(id);
        c
    }

    /// Delivery counts of `entries` (pending in this consumer) from one extended XPENDING.
    async fn delivery_counts(
        &self,
        con: &mut MultiplexedConnection,
        entries: &[Entry],
    ) -> Result<HashMap<String, u64>, SubscribeError> {
        let ids = || {
            entries
                .iter()
                .filter_map(|e| id_key(&e.id).map(|k| (k, &e.id)))
        };
        let (Some(lo), Some(hi)) = (ids().min(), ids().max()) else {
            return Ok(HashMap::new());
        };
        let v: Value = redis::cmd("XPENDING")
            .arg(&self.spec.key)
            .arg(&self.spec.group)
            .arg(lo.1)
            .arg(hi.1)
            .arg(entries.len())
            .arg(&self.spec.consumer)
            .query_async(con)
            .await?;
        let p = parse_pending(&v).map_err(SubscribeError::RedisReply)?;
        Ok(p.into_iter().map(|p| (p.id, p.times_delivered)).collect())
    }

    /// Turns entries into deliveries (one permit each); acks those that are not events.
    async fn queue(
        &mut self,
        entries: Vec<Entry>,
        counts: Option<&HashMap<String, u64>>,
        permits: Vec<OwnedSemaphorePermit>,
    ) {
        let mut permits = permits.into_iter();
        let mut junk = Vec::new();
        for e in entries {
            let payload = match (&e.fields, e.field(&self.spec.field)) {
                (_, Some(p)) => Bytes::copy_from_slice(p),
                (None, None) => {
                    tracing::warn!(target: "tapbus_bus::subscribe", "{}: pending entry {} was deleted from the stream before anyone acked it (lost)", self.link.what, e.id);
                    junk.push(e.id);
                    continue;
                }
                (Some(_), None) => {
                    tracing::warn!(target: "tapbus_bus::subscribe", "{}: entry {} has no field {:?}; acked and skipped", self.link.what, e.id, self.spec.field);
                    junk.push(e.id);
                    continue;
                }
            };
            let Some(permit) = permits.next() else {
                // Not reached: reads ask for as many entries as there are permits.
                tracing::error!(target: "tapbus_bus::subscribe", "{}: more entries than asked for; {} left pending", self.link.what, e.id);
                continue;
            };
            let delivered = counts
                .and_then(|c| c.get(&e.id).copied())
                .unwrap_or(1)
                .max(1);
            self.ready.push_back(Delivery::new(
                self.spec.key.clone(),
                payload,
                delivered,
                Some(e.id.clone()),
                Ack::RedisStream(Box::new(StreamAck {
                    con: self.acker.clone(),
                    key: self.spec.key.clone(),
                    group: self.spec.group.clone(),
                    id: e.id,
                    _permit: permit,
                })),
            ));
        }
        if !junk.is_empty() {
            let r: Result<i64, _> = redis::cmd("XACK")
                .arg(&self.spec.key)
                .arg(&self.spec.group)
                .arg(&junk)
                .query_async(&mut self.acker)
                .await;
            if let Err(e) = r {
                tracing::warn!(target: "tapbus_bus::subscribe", "{}: XACK of skipped entries failed: {e}", self.link.what);
            }
        }
    }

    pub fn connected(&self) -> watch::Receiver<bool> {
        self.link.subscribe()
    }
}

/// Connection trouble (worth a reconnect) rather than a refused command.
fn retryable(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || matches!(
            e.code(),
            Some("LOADING" | "TRYAGAIN" | "MASTERDOWN" | "CLUSTERDOWN")
        )
}

/// The ack handle of one stream entry: XACK on the ack connection. Holds one of the
/// subscriber's `max_pending` slots until acked or dropped.
pub(super) struct StreamAck {
    con: ConnectionManager,
    key: String,
    group: String,
    id: String,
    _permit: OwnedSemaphorePermit,
}

impl std::fmt::Debug for StreamAck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamAck").field("id", &self.id).finish()
    }
}

impl StreamAck {
    /// XACK, tried up to `ACK_ATTEMPTS` times while the connection is being re-made (the
    /// connection manager fails the first command after a broken connection and reconnects
    /// behind it). XACK is idempotent, so a retry after an unknown outcome is safe.
    pub(super) async fn ack(mut self) -> Result<(), AckError> {
        let mut delays = backoff();
        let mut attempt = 1;
        loop {
            let r: Result<i64, _> = redis::cmd("XACK")
                .arg(&self.key)
                .arg(&self.group)
                .arg(&self.id)
                .query_async(&mut self.con)
                .await;
            match r {
                Ok(_) => return Ok(()),
                Err(e) if attempt < ACK_ATTEMPTS && retryable(&e) => {
                    attempt += 1;
                    tokio::time::sleep(delays.next_delay()).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// Asks `XINFO GROUPS` every [`BACKLOG_POLL`]; a failed request keeps the last answer.
fn poll_backlog(
    mut con: ConnectionManager,
    spec: &RedisStreamSpec,
) -> (watch::Receiver<Option<Backlog>>, AbortOnDrop) {
    let (tx, rx) = watch::channel(None);
    let (key, group) = (spec.key.clone(), spec.group.clone());
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(BACKLOG_POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let r: Result<Value, _> = redis::cmd("XINFO")
                .arg("GROUPS")
                .arg(&key)
                .query_async(&mut con)
                .await;
            if let Some((waiting, unacked)) = r.ok().and_then(|v| parse_group_backlog(&v, &group))
                && tx
                    .send(Some(Backlog {
                        waiting,
                        unacked,
                        ack_floor: None,
                    }))
                    .is_err()
            {
                return;
            }
        }
    });
    (rx, AbortOnDrop(task))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_validation() {
        let s = RedisStreamSpec::new("dnstap", "loki", "loki-1");
        assert_eq!(s.validate(), Ok(()));
        assert_eq!(s.field, "data");
        assert_eq!(s.count, 128);
        let bad = |f: &dyn Fn(&mut RedisStreamSpec)| {
            let mut s = RedisStreamSpec::new("dnstap", "loki", "loki-1");
            f(&mut s);
            s.validate().is_err()
        };
        assert!(bad(&|s| s.key.clear()));
        assert!(bad(&|s| s.group.clear()));
        assert!(bad(&|s| s.consumer.clear()));
        assert!(bad(&|s| s.field.clear()));
        assert!(bad(&|s| s.count = 0));
        assert!(bad(&|s| s.block = Duration::ZERO));
        assert!(bad(&|s| s.block = Duration::from_secs(61)));
        assert!(bad(&|s| s.min_idle = Duration::ZERO));
        assert!(bad(&|s| s.claim_interval = Duration::ZERO));
        assert!(bad(&|s| s.max_pending = 0));
    }
}
