//! [`Reducer`]: events in, records out — the middle of
//! bus --JSON events--> **reduce** --records--> `tapbus.reduced.<reduction>`.
//!
//! # Time
//!
//! Windows are tumbling, in **event time** ([`EventView::timestamp_ns`], the dnstap
//! time), aligned to multiples of the window since the epoch: an event at `t` belongs to
//! `[s, s + w)` with `s = t - t % w`. The **watermark** is the latest event time seen
//! (of the accepted events) minus the allowed lateness; window `[s, s + w)` closes once `watermark >= s + w`. The
//! reducer never reads the clock, so a capture replayed at any speed, in batches of any
//! size, with [`Reducer::advance`] called at any points, gives the same records in the same
//! order. When input stops, the binary calls [`Reducer::close_all`].
//!
//! The state is summed up by one number, the **closed boundary** `c` (a multiple of the
//! window): every window starting before `c` is closed. It only grows. [`push`] moves it
//! (from the watermark), [`advance`] emits what it closed and returns it.
//!
//! # Late events
//!
//! An event whose window is already closed (`s < c`) is **late**. It is never dropped: it
//! is counted into a late record for its own window, reduction, identity and key
//! (`"late": true`), one per close boundary it arrived under, emitted with the next close
//! (the next time `c` grows, or [`Reducer::close_all`]). So the counts of all records of a
//! window, late or not, sum to its events. Two late records of the same window that
//! arrived under different boundaries get different ids (the boundary is hashed in), so
//! JetStream's de-duplication never drops the second one.
//!
//! # Bounds
//!
//! * **Groups**: at most `max_groups` keyed groups across the open windows (on-time and
//!   pending late ones; a window stops counting when the boundary passes it, not when
//!   [`advance`] emits it, so the result never depends on when `advance` runs). A new
//!   group beyond that goes into the **overflow record** of its (reduction, window,
//!   identity, late) with key fields `null` and `"overflow": true` ([`Stats::overflow`]
//!   counts them). Overflow groups are bounded by `max_groups` too; past both bounds (only
//!   with as many distinct windows x identities as groups) the event is refused for that
//!   reduction, counted in [`Stats::rejected_full`] (and [`Stats::rejected_full_events`]
//!   when no reduction took it). Open memory is at most 2 x `max_groups` groups.
//! * **Future**: an event more than `max_future` ahead of the watermark is **rejected**
//!   ([`Stats::rejected_future`]) and does not move the watermark, so one wild timestamp
//!   neither opens thousands of windows nor makes everything after it late. Accepted events
//!   lie below `watermark + max_future`, so at most `(max_future + lateness) / window + 2`
//!   windows are open. If [`JUMP_AFTER`] events were rejected so while the watermark stood
//!   still, the time really jumped (a sender's clock was fixed, a newer capture is
//!   replayed, the first event was a wild one from the past): the next one is accepted
//!   and the watermark follows it (the open windows close). Any event that moves the
//!   watermark starts the count again, so a wild sender among good ones stays rejected.
//! * The first event anchors the watermark; there is no "past" bound: an event from long
//!   ago is a late record for its own window.
//! * Closed windows are held until [`advance`] takes their records: the binary calls it
//!   after every push or batch. Nothing is added to a closed window, so between two
//!   calls the held closed windows only shrink.
//!
//! # Acks
//!
//! [`push`] returns a [`Placed`]: [`Placed::settles_with`] is `None` when the event can be
//! acked at once (filtered, no timestamp, rejected) and `Some(b)` otherwise: the event is
//! in a record published once [`advance`] / [`close_all`] returned a boundary `> b`.
//!
//! [`push`]: Reducer::push
//! [`advance`]: Reducer::advance
//! [`close_all`]: Reducer::close_all

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hashbrown::HashMap;
use hashbrown::hash_map::EntryRef;
use tapbus_event::{EventView, Filter, Operation, Protocol};
use xxhash_rust::xxh3::Xxh3;

use crate::config::{KeyField, ReduceSpec};
use crate::record::{Key, KeyValue, Record, rfc3339_ns};

/// Events rejected beyond `max_future` while the watermark stands still, after which the
/// next one is accepted as a real jump in time (see the [module docs](self)).
pub const JUMP_AFTER: u64 = 1000;

/// Where [`Reducer::push`] put an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placed {
    /// In the open window starting at `start_ns`: settled once that window closes
    /// (a boundary `> start_ns`).
    Window {
        /// The window's start, ns.
        start_ns: u64,
    },
    /// Late, into a late record of the (closed) window at `window_start_ns`, emitted with
    /// the next close: settled by a boundary `> settles_with_ns` (the boundary it arrived
    /// under).
    Late {
        /// The event's own window.
        window_start_ns: u64,
        /// The closed boundary at arrival.
        settles_with_ns: u64,
    },
    /// No reduction's filter matched: ack at once.
    Filtered,
    /// The event has no `dnstap.timestamp` (counted): ack at once.
    NoTimestamp,
    /// Refused and counted (see [`Rejected`]): ack at once.
    Rejected(Rejected),
}

/// Why an event was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    /// More than `max_future` ahead of the watermark.
    Future,
    /// Both the group and the overflow bounds were full for every reduction it matched.
    Full,
}

impl Placed {
    /// `None`: ack now. `Some(b)`: ack once a close returned a boundary `> b`.
    pub fn settles_with(&self) -> Option<u64> {
        match *self {
            Placed::Window { start_ns } => Some(start_ns),
            Placed::Late {
                settles_with_ns, ..
            } => Some(settles_with_ns),
            Placed::Filtered | Placed::NoTimestamp | Placed::Rejected(_) => None,
        }
    }

    /// Whether a close that returned `boundary` settled this event. `u64::MAX` (what
    /// [`Reducer::close_all`] returns for timestamps at the very end of the range) settles
    /// everything.
    pub fn settled_by(&self, boundary: u64) -> bool {
        self.settles_with()
            .is_none_or(|b| boundary > b || boundary == u64::MAX)
    }
}

/// Counters for /metrics. `events = filtered + no_timestamp + rejected_future +
/// rejected_full_events + (events placed)`, where placed events are `Window` or `Late`;
/// `grouped`, `overflow` and `rejected_full` count (event, reduction) placements, so
/// with every bound respected `grouped + overflow` is the sum of all record counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Events pushed.
    pub events: u64,
    /// Events no reduction wanted.
    pub filtered: u64,
    /// (event, reduction) placements into a keyed group.
    pub grouped: u64,
    /// Events that were late (counted once per event).
    pub late: u64,
    /// (event, reduction) placements into an overflow group.
    pub overflow: u64,
    /// (event, reduction) placements refused: group and overflow bounds full.
    pub rejected_full: u64,
    /// Events refused for every reduction they matched ([`Rejected::Full`]).
    pub rejected_full_events: u64,
    /// Events without a timestamp.
    pub no_timestamp: u64,
    /// Events too far ahead of the watermark.
    pub rejected_future: u64,
    /// Times the watermark followed a sustained jump ([`JUMP_AFTER`]).
    pub jumps: u64,
    /// Groups held now (keyed + overflow).
    pub open_groups: u64,
    /// Windows held now (on-time windows and pending late ones).
    pub open_windows: u64,
    /// Records emitted.
    pub records: u64,
}

#[derive(Debug, Clone, Copy, Default)]
struct Agg {
    count: u64,
    first: u64,
    last: u64,
    bytes: u64,
}

/// What is held per window. Ordered by when it is due: an on-time window `s` is due at
/// boundary `> s`, a late bucket that arrived under boundary `c` at `> c`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct BucketId {
    due: u64,
    late: bool,
    start: u64,
}

#[derive(Default)]
struct Bucket {
    /// Encoded group key (see `encode_key`) -> aggregate.
    groups: HashMap<Box<[u8]>, Agg>,
    /// Keyed groups in `groups`.
    keyed: u64,
    /// Overflow groups in `groups`.
    overflow: u64,
}

struct Reduction {
    name: String,
    subject: String,
    filter: Filter,
    keys: Vec<KeyField>,
}

/// The reduce state machine (see the [module docs](self)).
pub struct Reducer {
    window: u64,
    lateness: u64,
    max_future: u64,
    max_groups: u64,
    reductions: Vec<Reduction>,
    buckets: BTreeMap<BucketId, Bucket>,
    /// Latest accepted event time.
    max_ts: Option<u64>,
    /// Every window starting before this is closed.
    closed: u64,
    /// The boundary the last `advance`/`close_all` returned.
    emitted: u64,
    /// Groups held (keyed, overflow), until emitted.
    keyed_groups: u64,
    overflow_groups: u64,
    /// Groups of the buckets still open (due at or after `closed`): what the bounds are
    /// checked against. A bucket leaves them when `closed` passes it in `push`, not when
    /// `advance` emits it, so whether an event fits never depends on when `advance` runs.
    live_keyed: u64,
    live_overflow: u64,
    future_run: u64,
    scratch: Vec<u8>,
    stats: Stats,
}

impl std::fmt::Debug for Reducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reducer")
            .field("window", &self.window)
            .field("closed", &self.closed)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Reducer {
    /// A reducer for a validated configuration.
    pub fn new(spec: ReduceSpec) -> Reducer {
        Reducer {
            window: spec.window_ns.max(1),
            lateness: spec.lateness_ns,
            max_future: spec.max_future_ns,
            max_groups: spec.max_groups as u64,
            reductions: spec
                .reductions
                .into_iter()
                .take(64)
                .map(|r| Reduction {
                    name: r.name,
                    subject: r.subject,
                    filter: r.filter,
                    keys: r.keys,
                })
                .collect(),
            buckets: BTreeMap::new(),
            max_ts: None,
            closed: 0,
            emitted: 0,
            keyed_groups: 0,
            overflow_groups: 0,
            live_keyed: 0,
            live_overflow: 0,
            future_run: 0,
            scratch: Vec::with_capacity(256),
            stats: Stats::default(),
        }
    }

    /// The counters.
    pub fn stats(&self) -> Stats {
        let mut s = self.stats;
        s.open_groups = self.keyed_groups + self.overflow_groups;
        s.open_windows = self.buckets.len() as u64;
        s
    }

    /// Every subject records go to (`tapbus.reduced.<reduction>`), in configured order,
    /// e.g. for the binary to check its stream covers them.
    pub fn subjects(&self) -> impl Iterator<Item = &str> {
        self.reductions.iter().map(|r| r.subject.as_str())
    }

    /// The window length in ns.
    pub fn window_ns(&self) -> u64 {
        self.window
    }

    /// Latest accepted event time minus the lateness (`None` before the first event).
    pub fn watermark(&self) -> Option<u64> {
        self.max_ts.map(|m| m.saturating_sub(self.lateness))
    }

    /// The closed boundary: every window starting before it is closed (0 before the
    /// first event).
    pub fn closed_boundary(&self) -> u64 {
        self.closed
    }

    fn align(&self, t: u64) -> u64 {
        t - t % self.window
    }

    /// Takes one event. Call [`advance`](Self::advance) after each event or batch to get
    /// the records of the windows it closed.
    pub fn push(&mut self, ev: &EventView<'_>) -> Placed {
        self.stats.events += 1;
        let mut mask = 0u64;
        for (i, r) in self.reductions.iter().enumerate() {
            if r.filter.matches(ev) {
                mask |= 1 << i;
            }
        }
        if mask == 0 {
            self.stats.filtered += 1;
            return Placed::Filtered;
        }
        let Some(ts) = ev.timestamp_ns() else {
            self.stats.no_timestamp += 1;
            return Placed::NoTimestamp;
        };
        if let Some(wm) = self.watermark()
            && ts > wm.saturating_add(self.max_future)
        {
            self.future_run += 1;
            if self.future_run <= JUMP_AFTER {
                self.stats.rejected_future += 1;
                return Placed::Rejected(Rejected::Future);
            }
            self.stats.jumps += 1;
        }
        if self.max_ts.is_none_or(|m| ts > m) {
            self.future_run = 0;
        }
        let max = self.max_ts.map_or(ts, |m| m.max(ts));
        self.max_ts = Some(max);
        let wm_window = self.align(max.saturating_sub(self.lateness));
        self.close_to(wm_window);

        let start = self.align(ts);
        let late = start < self.closed;
        let id = if late {
            self.stats.late += 1;
            BucketId {
                due: self.closed,
                late: true,
                start,
            }
        } else {
            BucketId {
                due: start,
                late: false,
                start,
            }
        };
        let bytes = u64::from(ev.size().unwrap_or(0));
        let bucket = self.buckets.entry(id).or_default();
        let mut placed_any = false;
        for (i, r) in self.reductions.iter().enumerate() {
            if mask & (1 << i) == 0 {
                continue;
            }
            encode_key(&mut self.scratch, i, false, ev, &r.keys);
            let fits = self.live_keyed < self.max_groups;
            let placed = match bucket.groups.entry_ref(&self.scratch[..]) {
                EntryRef::Occupied(mut o) => {
                    o.get_mut().add(ts, bytes);
                    self.stats.grouped += 1;
                    true
                }
                EntryRef::Vacant(v) if fits => {
                    v.insert(Agg::new(ts, bytes));
                    bucket.keyed += 1;
                    self.keyed_groups += 1;
                    self.live_keyed += 1;
                    self.stats.grouped += 1;
                    true
                }
                EntryRef::Vacant(_) => {
                    encode_key(&mut self.scratch, i, true, ev, &[]);
                    let fits = self.live_overflow < self.max_groups;
                    match bucket.groups.entry_ref(&self.scratch[..]) {
                        EntryRef::Occupied(mut o) => {
                            o.get_mut().add(ts, bytes);
                            self.stats.overflow += 1;
                            true
                        }
                        EntryRef::Vacant(v) if fits => {
                            v.insert(Agg::new(ts, bytes));
                            bucket.overflow += 1;
                            self.overflow_groups += 1;
                            self.live_overflow += 1;
                            self.stats.overflow += 1;
                            true
                        }
                        EntryRef::Vacant(_) => {
                            self.stats.rejected_full += 1;
                            false
                        }
                    }
                }
            };
            placed_any |= placed;
        }
        if bucket.groups.is_empty() {
            self.buckets.remove(&id);
        }
        if !placed_any {
            if late {
                self.stats.late -= 1;
            }
            self.stats.rejected_full_events += 1;
            return Placed::Rejected(Rejected::Full);
        }
        if late {
            Placed::Late {
                window_start_ns: start,
                settles_with_ns: id.due,
            }
        } else {
            Placed::Window { start_ns: start }
        }
    }

    /// Appends the records of every window closed since the last call (and the pending
    /// late records) to `out`, in a deterministic order, and returns the new closed
    /// boundary; `None` if it did not move (nothing to emit).
    pub fn advance(&mut self, out: &mut Vec<Record>) -> Option<u64> {
        if self.closed == self.emitted {
            return None;
        }
        self.emit_due(out);
        self.emitted = self.closed;
        Some(self.closed)
    }

    /// Input stopped (idle, shutdown): closes every window, emits every record held and
    /// returns the boundary (`None` if no event was ever placed). The boundary becomes the
    /// end of the latest event's window, or one window past the previous boundary if
    /// late records arrived under it; later events before it are late.
    pub fn close_all(&mut self, out: &mut Vec<Record>) -> Option<u64> {
        let max = self.max_ts?;
        let mut target = self.align(max).saturating_add(self.window).max(self.closed);
        if self.buckets.keys().any(|b| b.due >= target) {
            target = self.closed.saturating_add(self.window).max(target);
        }
        self.close_to(target);
        self.emit_due(out);
        // Only a bucket due at u64::MAX (timestamps at the very end of the range) can
        // remain; emit it too so nothing is held.
        self.emit_all(out);
        self.emitted = self.closed;
        Some(self.closed)
    }

    /// Moves the closed boundary up to `to` (never down); the buckets it passes stop
    /// counting against the bounds.
    fn close_to(&mut self, to: u64) {
        if to <= self.closed {
            return;
        }
        let lo = BucketId {
            due: self.closed,
            late: false,
            start: 0,
        };
        let hi = BucketId {
            due: to,
            late: false,
            start: 0,
        };
        for b in self.buckets.range(lo..hi).map(|(_, b)| b) {
            debug_assert!(self.live_keyed >= b.keyed && self.live_overflow >= b.overflow);
            self.live_keyed = self.live_keyed.saturating_sub(b.keyed);
            self.live_overflow = self.live_overflow.saturating_sub(b.overflow);
        }
        self.closed = to;
    }

    fn emit_due(&mut self, out: &mut Vec<Record>) {
        while let Some(e) = self.buckets.first_entry() {
            if e.key().due >= self.closed {
                break;
            }
            let (id, bucket) = e.remove_entry();
            self.emit_bucket(id, bucket, out);
        }
    }

    fn emit_all(&mut self, out: &mut Vec<Record>) {
        while let Some((id, bucket)) = self.buckets.pop_first() {
            self.emit_bucket(id, bucket, out);
        }
    }

    fn emit_bucket(&mut self, id: BucketId, bucket: Bucket, out: &mut Vec<Record>) {
        if id.due >= self.closed {
            // Still open (only from `close_all`'s last sweep).
            self.live_keyed = self.live_keyed.saturating_sub(bucket.keyed);
            self.live_overflow = self.live_overflow.saturating_sub(bucket.overflow);
        }
        let mut groups: Vec<(Box<[u8]>, Agg)> = bucket.groups.into_iter().collect();
        groups.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let end = id.start.saturating_add(self.window);
        let (start_s, end_s) = (rfc3339_ns(id.start), rfc3339_ns(end));
        out.reserve(groups.len());
        for (key, agg) in groups {
            let Some(rec) = self.record(&id, &key, agg, &start_s, end, &end_s) else {
                debug_assert!(false, "undecodable group key");
                continue;
            };
            if rec.overflow {
                self.overflow_groups = self.overflow_groups.saturating_sub(1);
            } else {
                self.keyed_groups = self.keyed_groups.saturating_sub(1);
            }
            self.stats.records += 1;
            out.push(rec);
        }
    }

    fn record(
        &self,
        id: &BucketId,
        key: &[u8],
        agg: Agg,
        start_s: &str,
        end: u64,
        end_s: &str,
    ) -> Option<Record> {
        let mut c = Cursor(key);
        let r = self.reductions.get(usize::from(c.byte()?))?;
        let overflow = c.byte()? == 1;
        let identity = c.opt_str()?.map(str::to_owned);
        let mut fields = Vec::with_capacity(r.keys.len());
        for &f in &r.keys {
            let v = if overflow { None } else { c.value(f)? };
            fields.push((f, v));
        }
        let mut h = Xxh3::new();
        h.update(&(r.name.len() as u64).to_le_bytes());
        h.update(r.name.as_bytes());
        h.update(&id.start.to_le_bytes());
        h.update(&[u8::from(id.late)]);
        if id.late {
            h.update(&id.due.to_le_bytes());
        }
        h.update(&key[1..]);
        // The content too: a record rebuilt after a restart from another subset of the
        // window's events (some acked by the dead process, others new to this one) must
        // not share the id of the stored one, or the bus would drop it as a copy and its
        // events would be lost. An exact re-emission (same events) keeps its id.
        for v in [agg.count, agg.first, agg.last, agg.bytes] {
            h.update(&v.to_le_bytes());
        }
        let hash = h.digest128();
        Some(Record {
            id: record_id(&r.name, id.start, hash),
            reduction: r.name.clone(),
            window_start: start_s.to_owned(),
            window_start_ns: id.start,
            window_end: end_s.to_owned(),
            window_end_ns: end,
            identity,
            key: Key(fields),
            count: agg.count,
            first_ns: agg.first,
            last_ns: agg.last,
            bytes: agg.bytes,
            late: id.late,
            overflow,
            subject: r.subject.clone(),
        })
    }
}

/// `<reduction>.<window start ns>.<32 lowercase hex digits>` (`format!` was a fifth of
/// the cost of building a record).
fn record_id(name: &str, start: u64, hash: u128) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = String::with_capacity(name.len() + 22 + 32);
    id.push_str(name);
    id.push('.');
    id.push_str(itoa::Buffer::new().format(start));
    id.push('.');
    for i in (0..32).rev() {
        id.push(char::from(HEX[((hash >> (4 * i)) & 0xf) as usize]));
    }
    id
}

impl Agg {
    fn new(ts: u64, bytes: u64) -> Agg {
        Agg {
            count: 1,
            first: ts,
            last: ts,
            bytes,
        }
    }

    fn add(&mut self, ts: u64, bytes: u64) {
        self.count += 1;
        self.first = self.first.min(ts);
        self.last = self.last.max(ts);
        self.bytes = self.bytes.saturating_add(bytes);
    }
}

// Group key encoding: [reduction][overflow 0/1][identity][field...], each optional string
// as 0 | 1 len:u32le bytes, addresses as 0 | 4 a.b.c.d | 6 16 bytes, enums as 0 | 1 code.
// Prefix-free, so equal bytes mean equal keys; the sort order of the bytes is the record
// order within a window. The bytes after the reduction index are hashed into the record
// id: changing this encoding changes every id (harmless except across a restart inside
// JetStream's duplicate window, where a re-emitted record would not be recognised).

const NONE: u8 = 0;
const SOME: u8 = 1;

fn put_str(out: &mut Vec<u8>, s: Option<&str>, lower: bool) {
    match s {
        None => out.push(NONE),
        Some(s) => {
            out.push(SOME);
            out.extend_from_slice(&(s.len() as u32).to_le_bytes());
            if lower {
                out.extend(s.bytes().map(|b| b.to_ascii_lowercase()));
            } else {
                out.extend_from_slice(s.as_bytes());
            }
        }
    }
}

fn put_ip(out: &mut Vec<u8>, ip: Option<IpAddr>) {
    match ip {
        None => out.push(NONE),
        Some(IpAddr::V4(a)) => {
            out.push(4);
            out.extend_from_slice(&a.octets());
        }
        Some(IpAddr::V6(a)) => {
            out.push(6);
            out.extend_from_slice(&a.octets());
        }
    }
}

fn put_code(out: &mut Vec<u8>, code: Option<u32>) {
    match code {
        None => out.push(NONE),
        Some(c) => {
            out.push(SOME);
            out.extend_from_slice(&c.to_le_bytes());
        }
    }
}

fn encode_key(
    out: &mut Vec<u8>,
    reduction: usize,
    overflow: bool,
    ev: &EventView<'_>,
    keys: &[KeyField],
) {
    out.clear();
    out.push(reduction as u8);
    out.push(u8::from(overflow));
    put_str(out, ev.identity(), false);
    for k in keys {
        match k {
            KeyField::Identity => {}
            KeyField::QueryIp => put_ip(out, ev.client_ip()),
            KeyField::ResponseIp => put_ip(out, ev.server_ip()),
            KeyField::Qname => put_str(out, ev.qname(), true),
            KeyField::Qtype => put_str(out, ev.qtype(), false),
            KeyField::Rcode => put_str(out, ev.rcode(), false),
            KeyField::Operation => put_code(out, Some(ev.operation().code())),
            KeyField::Protocol => put_code(out, ev.protocol().map(|p| p.code())),
        }
    }
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (a, b) = self.0.split_at_checked(n)?;
        self.0 = b;
        Some(a)
    }

    fn byte(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    fn opt_str(&mut self) -> Option<Option<&'a str>> {
        match self.byte()? {
            NONE => Some(None),
            _ => {
                let n = self.u32()? as usize;
                Some(Some(std::str::from_utf8(self.take(n)?).ok()?))
            }
        }
    }

    fn opt_code(&mut self) -> Option<Option<u32>> {
        match self.byte()? {
            NONE => Some(None),
            _ => Some(Some(self.u32()?)),
        }
    }

    /// `Some(value)` as decoded; `None` only for bytes `encode_key` never writes.
    fn value(&mut self, f: KeyField) -> Option<Option<KeyValue>> {
        Some(match f {
            KeyField::Identity => None,
            KeyField::QueryIp | KeyField::ResponseIp => match self.byte()? {
                NONE => None,
                4 => {
                    let o: [u8; 4] = self.take(4)?.try_into().ok()?;
                    Some(KeyValue::Ip(IpAddr::V4(Ipv4Addr::from(o))))
                }
                _ => {
                    let o: [u8; 16] = self.take(16)?.try_into().ok()?;
                    Some(KeyValue::Ip(IpAddr::V6(Ipv6Addr::from(o))))
                }
            },
            KeyField::Qname | KeyField::Qtype | KeyField::Rcode => {
                self.opt_str()?.map(|s| KeyValue::Str(s.to_owned()))
            }
            KeyField::Operation => self
                .opt_code()?
                .map(|c| KeyValue::Operation(Operation::from_code(c))),
            KeyField::Protocol => self
                .opt_code()?
                .map(|c| KeyValue::Protocol(Protocol::from_code(c))),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ReduceConfig, ReductionConfig};

    const S: u64 = 1_000_000_000;
    /// A round base time (a multiple of 10 s): 2026-11-22T02:41:30Z.
    const T0: u64 = 1_795_315_290 * S;

    fn event(ts: Option<u64>, qname: &str, client: &str, op: &str) -> Vec<u8> {
        let ts = ts.map_or("null".to_owned(), |t| t.to_string());
        format!(
            r#"{{"network":{{"protocol":"UDP","query-ip":"{client}","response-ip":"192.0.2.53"}},"dns":{{"length":50,"qname":"{qname}","qtype":"A","rcode":"NOERROR"}},"dnstap":{{"operation":"{op}","identity":"ns1","timestamp":{ts}}}}}"#
        )
        .into_bytes()
    }

    fn resp(ts: u64, qname: &str) -> Vec<u8> {
        event(Some(ts), qname, "198.51.100.7", "CLIENT_RESPONSE")
    }

    fn qname_only(max_groups: usize) -> Reducer {
        let c = ReduceConfig {
            max_groups,
            reductions: vec![ReductionConfig {
                name: "qname".into(),
                filter: "operation=CLIENT_RESPONSE".into(),
                keys: vec![KeyField::Qname],
            }],
            ..ReduceConfig::default()
        };
        Reducer::new(c.validate().expect("valid"))
    }

    fn push(r: &mut Reducer, json: &[u8]) -> Placed {
        r.push(&EventView::parse(json).expect("event"))
    }

    fn qname_of(rec: &Record) -> Option<&str> {
        match rec.key.get(KeyField::Qname) {
            Some(KeyValue::Str(s)) => Some(s),
            _ => None,
        }
    }

    #[test]
    fn record_id_format() {
        let h = 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210u128;
        assert_eq!(record_id("qname", 42, h), format!("qname.42.{h:032x}"));
        assert_eq!(record_id("a", 0, 1), format!("a.0.{:032x}", 1));
    }

    #[test]
    fn windows_align_and_close_on_the_watermark() {
        let mut r = qname_only(100);
        let mut out = Vec::new();
        assert_eq!(
            push(&mut r, &resp(T0 + 3 * S, "a.example")),
            Placed::Window { start_ns: T0 }
        );
        // The first event anchors: watermark T0-2s, windows before T0-10s closed.
        assert_eq!(r.advance(&mut out), Some(T0 - 10 * S));
        assert!(out.is_empty());
        assert_eq!(
            push(&mut r, &resp(T0 + 9 * S + 999_999_999, "A.Example")),
            Placed::Window { start_ns: T0 }
        );
        assert_eq!(
            push(&mut r, &resp(T0 + 14 * S, "b.example")),
            Placed::Window {
                start_ns: T0 + 10 * S
            }
        );
        // Watermark T0+9s: window [T0, T0+10s) still open.
        assert_eq!(r.advance(&mut out), Some(T0));
        assert!(out.is_empty());
        // Watermark exactly T0+10s closes it.
        push(&mut r, &resp(T0 + 15 * S, "b.example"));
        assert_eq!(r.advance(&mut out), Some(T0 + 10 * S));
        assert_eq!(r.advance(&mut out), None);
        assert_eq!(out.len(), 1);
        let rec = &out[0];
        assert_eq!(qname_of(rec), Some("a.example"));
        assert_eq!(rec.count, 2);
        assert_eq!(rec.bytes, 100);
        assert_eq!(rec.first_ns, T0 + 3 * S);
        assert_eq!(rec.last_ns, T0 + 9 * S + 999_999_999);
        assert_eq!(rec.window_start_ns, T0);
        assert_eq!(rec.window_end_ns, T0 + 10 * S);
        assert_eq!(rec.window_start, "2026-11-22T02:41:30.000000000Z");
        assert_eq!(rec.window_end, "2026-11-22T02:41:40.000000000Z");
        assert_eq!(rec.identity.as_deref(), Some("ns1"));
        assert!(!rec.late && !rec.overflow);
        assert_eq!(rec.subject, "tapbus.reduced.qname");
        let s = r.stats();
        assert_eq!((s.events, s.grouped, s.records), (4, 4, 1));
        assert_eq!(r.subjects().collect::<Vec<_>>(), ["tapbus.reduced.qname"]);
        assert_eq!(r.window_ns(), 10 * S);
        assert_eq!((s.open_groups, s.open_windows), (1, 1));
    }

    #[test]
    fn late_events_become_late_records_with_the_next_close() {
        let mut r = qname_only(100);
        let mut out = Vec::new();
        push(&mut r, &resp(T0 + S, "a"));
        push(&mut r, &resp(T0 + 25 * S, "b")); // watermark T0+20s: closes T0 and T0+10s
        assert_eq!(r.advance(&mut out), Some(T0 + 20 * S));
        assert_eq!(out.len(), 1);
        let late = push(&mut r, &resp(T0 + 2 * S, "a"));
        assert_eq!(
            late,
            Placed::Late {
                window_start_ns: T0,
                settles_with_ns: T0 + 20 * S
            }
        );
        assert!(!late.settled_by(T0 + 20 * S));
        assert!(late.settled_by(T0 + 30 * S));
        // Nothing closes: the late record waits.
        assert_eq!(r.advance(&mut out), None);
        assert_eq!(out.len(), 1);
        push(&mut r, &resp(T0 + 35 * S, "c")); // closes T0+20s
        assert_eq!(r.advance(&mut out), Some(T0 + 30 * S));
        assert_eq!(out.len(), 3);
        assert_eq!((qname_of(&out[1]), out[1].late), (Some("b"), false));
        let l = &out[2];
        assert_eq!((qname_of(l), l.late, l.count), (Some("a"), true, 1));
        assert_eq!(l.window_start_ns, T0);
        assert_ne!(l.id, out[0].id, "a late record has its own id");
        assert_eq!(r.stats().late, 1);
        // A second late record for the same window and key, under a later boundary,
        // gets yet another id (JetStream would drop a repeated one).
        push(&mut r, &resp(T0 + 3 * S, "a"));
        push(&mut r, &resp(T0 + 45 * S, "d"));
        r.advance(&mut out);
        let again: Vec<&Record> = out
            .iter()
            .filter(|x| x.late && x.window_start_ns == T0)
            .collect();
        assert_eq!(again.len(), 2);
        assert_ne!(again[0].id, again[1].id);
        // The sum over all records of window T0 equals its events.
        let sum: u64 = out
            .iter()
            .filter(|x| x.window_start_ns == T0)
            .map(|x| x.count)
            .sum();
        assert_eq!(sum, 3);
    }

    #[test]
    fn overflow_record_when_groups_are_full() {
        let mut r = qname_only(2);
        let mut out = Vec::new();
        for q in ["a", "b", "c", "d", "a", "c"] {
            assert!(matches!(
                push(&mut r, &resp(T0 + S, q)),
                Placed::Window { .. }
            ));
        }
        let s = r.stats();
        assert_eq!((s.grouped, s.overflow, s.open_groups), (3, 3, 3));
        r.close_all(&mut out);
        assert_eq!(out.len(), 3);
        let counts: Vec<(Option<&str>, u64, bool)> = out
            .iter()
            .map(|x| (qname_of(x), x.count, x.overflow))
            .collect();
        assert_eq!(
            counts,
            vec![
                (Some("a"), 2, false),
                (Some("b"), 1, false),
                (None, 3, true)
            ]
        );
        let json: serde_json::Value =
            serde_json::from_slice(&out[2].to_json()).expect("record JSON");
        assert_eq!(json["key"], serde_json::json!({"qname": null}));
        assert_eq!(json["overflow"], true);
        assert_eq!(r.stats().open_groups, 0);
        // Both bounds full: refused and counted, not held.
        let mut r = qname_only(1);
        push(&mut r, &resp(T0 + S, "a"));
        push(&mut r, &resp(T0 + S, "b")); // overflow group 1 of 1
        assert_eq!(
            push(
                &mut r,
                &event(Some(T0 + S), "c", "198.51.100.7", "CLIENT_RESPONSE")
            ),
            Placed::Window { start_ns: T0 }
        );
        let other_id = br#"{"network":{},"dns":{"qname":"z"},"dnstap":{"operation":"CLIENT_RESPONSE","identity":"ns2","timestamp":1795315291000000000}}"#;
        assert_eq!(push(&mut r, other_id), Placed::Rejected(Rejected::Full));
        assert_eq!(r.stats().rejected_full, 1);
        assert_eq!(r.stats().rejected_full_events, 1);
        assert_eq!(r.stats().open_groups, 2);
    }

    #[test]
    fn far_future_is_rejected_and_does_not_move_the_watermark() {
        let mut r = qname_only(100);
        let mut out = Vec::new();
        push(&mut r, &resp(T0, "a"));
        let wm = r.watermark();
        let wild = T0 + 2 * 3600 * S;
        assert_eq!(
            push(&mut r, &resp(wild, "x")),
            Placed::Rejected(Rejected::Future)
        );
        assert_eq!(r.watermark(), wm);
        // Just inside the bound is accepted.
        assert!(matches!(
            push(&mut r, &resp(T0 - 5 * S + 3600 * S, "y")),
            Placed::Window { .. }
        ));
        // Huge timestamps: rejected, no panic.
        assert_eq!(
            push(&mut r, &resp(u64::MAX, "x")),
            Placed::Rejected(Rejected::Future)
        );
        assert_eq!(r.stats().rejected_future, 2);
        r.advance(&mut out);
        assert!(r.stats().open_windows <= 3600 / 10 + 2);
        // A sustained jump is followed after JUMP_AFTER rejections, even with events at the
        // watermark in between (they do not move it).
        let mut r = qname_only(100);
        push(&mut r, &resp(T0, "a"));
        for _ in 0..JUMP_AFTER {
            assert_eq!(
                push(&mut r, &resp(wild, "x")),
                Placed::Rejected(Rejected::Future)
            );
            assert!(matches!(
                push(&mut r, &resp(T0, "a")),
                Placed::Window { .. }
            ));
        }
        assert!(matches!(
            push(&mut r, &resp(wild, "x")),
            Placed::Window { .. }
        ));
        assert_eq!(r.stats().jumps, 1);
        out.clear();
        r.advance(&mut out);
        assert_eq!(out.len(), 1, "the old window closed");
        assert_eq!(qname_of(&out[0]), Some("a"));
    }

    #[test]
    fn close_all_emits_everything_and_later_events_are_late() {
        let mut r = qname_only(100);
        let mut out = Vec::new();
        assert_eq!(r.close_all(&mut out), None);
        push(&mut r, &resp(T0 + S, "a"));
        push(&mut r, &resp(T0 + 12 * S, "b"));
        assert_eq!(r.close_all(&mut out), Some(T0 + 20 * S));
        assert_eq!(out.len(), 2);
        assert_eq!(r.stats().open_groups, 0);
        assert_eq!(r.stats().open_windows, 0);
        // Input resumes with an event for a window close_all closed: late.
        let p = push(&mut r, &resp(T0 + 15 * S, "b"));
        assert_eq!(
            p,
            Placed::Late {
                window_start_ns: T0 + 10 * S,
                settles_with_ns: T0 + 20 * S
            }
        );
        let b = r.close_all(&mut out).expect("boundary");
        assert!(p.settled_by(b));
        assert_eq!(out.len(), 3);
        assert!(out[2].late);
        assert_eq!(r.close_all(&mut out), Some(b));
        assert_eq!(out.len(), 3);
        // Nothing pending: advance has nothing to say.
        assert_eq!(r.advance(&mut out), None);
    }

    #[test]
    fn filtered_and_no_timestamp() {
        let mut r = qname_only(100);
        assert_eq!(
            push(&mut r, &event(Some(T0), "a", "192.0.2.1", "CLIENT_QUERY")),
            Placed::Filtered
        );
        assert_eq!(
            push(&mut r, &event(None, "a", "192.0.2.1", "CLIENT_RESPONSE")),
            Placed::NoTimestamp
        );
        assert_eq!(Placed::NoTimestamp.settles_with(), None);
        assert!(Placed::Filtered.settled_by(0));
        let s = r.stats();
        assert_eq!((s.events, s.filtered, s.no_timestamp), (2, 1, 1));
        assert_eq!(r.watermark(), None);
    }

    #[test]
    fn ids_are_deterministic_and_distinct() {
        let run = |qnames: &[&str]| {
            let mut r = Reducer::new(ReduceConfig::default().validate().expect("defaults"));
            for q in qnames {
                push(&mut r, &resp(T0 + S, q));
            }
            let mut out = Vec::new();
            r.close_all(&mut out);
            out
        };
        let a = run(&["a", "b"]);
        let b = run(&["b", "a"]);
        assert_eq!(a, b, "same events, same records and ids");
        let ids: std::collections::HashSet<&str> = a.iter().map(|x| x.id.as_str()).collect();
        assert_eq!(ids.len(), a.len());
        for rec in &a {
            assert!(rec.id.starts_with(&format!("{}.{}.", rec.reduction, T0)));
        }
        let c = run(&["c"]);
        assert!(c.iter().all(|x| !ids.contains(x.id.as_str())));
        // Same window and key, other events (a restart's partial rebuild): another id.
        let twice = run(&["a", "a", "b"]);
        let qa = |v: &[Record]| {
            v.iter()
                .find(|x| x.reduction == "qname" && qname_of(x) == Some("a"))
                .map(|x| (x.id.clone(), x.count))
        };
        let (id1, n1) = qa(&a).expect("a");
        let (id2, n2) = qa(&twice).expect("a twice");
        assert_eq!((n1, n2), (1, 2));
        assert_ne!(
            id1, id2,
            "a record with other content must not pass for a copy"
        );
        // Keyed group with all fields null vs. the overflow record: different ids.
        let mut r = qname_only(1);
        let noname = br#"{"network":{},"dns":{},"dnstap":{"operation":"CLIENT_RESPONSE","identity":"ns1","timestamp":1795315291000000000}}"#;
        push(&mut r, &resp(T0 + S, "a"));
        push(&mut r, noname);
        let mut r2 = qname_only(5);
        push(&mut r2, noname);
        let (mut o1, mut o2) = (Vec::new(), Vec::new());
        r.close_all(&mut o1);
        r2.close_all(&mut o2);
        assert!(o1[1].overflow && !o2[0].overflow);
        assert_eq!(o1[1].key, o2[0].key);
        assert_ne!(o1[1].id, o2[0].id);
    }

    /// A deterministic scramble of events: in-order, slightly late, very late, future.
    fn scrambled() -> Vec<Vec<u8>> {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        (0..3000u64)
            .map(|i| {
                let n = next();
                let base = T0 + i * S / 10;
                let ts = match n % 20 {
                    0 => base.saturating_sub((n >> 8) % (60 * S)),
                    1 => base + 2 * 3600 * S,
                    2 => base.saturating_sub(8 * S),
                    _ => base + (n >> 16) % (3 * S),
                };
                let q = format!("n{}.Example", (n >> 24) % 40);
                let client = format!("10.0.0.{}", (n >> 32) % 7);
                let op = if n % 5 == 0 {
                    "CLIENT_QUERY"
                } else {
                    "CLIENT_RESPONSE"
                };
                let ts = if n % 97 == 0 { None } else { Some(ts) };
                event(ts, &q, &client, op)
            })
            .collect()
    }

    fn run_with(events: &[Vec<u8>], every: usize, max_groups: usize) -> (Vec<Record>, Stats) {
        let c = ReduceConfig {
            max_groups,
            ..ReduceConfig::default()
        };
        let mut r = Reducer::new(c.validate().expect("valid"));
        let mut out = Vec::new();
        for (i, e) in events.iter().enumerate() {
            push(&mut r, e);
            if every > 0 && i % every == 0 {
                r.advance(&mut out);
            }
        }
        r.close_all(&mut out);
        (out, r.stats())
    }

    #[test]
    fn same_records_whenever_advance_is_called() {
        let events = scrambled();
        for max_groups in [200_000, 50] {
            let (one, s1) = run_with(&events, 1, max_groups);
            assert!(one.iter().any(|x| x.late));
            if max_groups == 50 {
                assert!(one.iter().any(|x| x.overflow));
            }
            for every in [0, 7, 100, 1001] {
                let (other, s2) = run_with(&events, every, max_groups);
                assert!(one == other, "advance every {every}: records differ");
                assert_eq!(s1, s2);
            }
            let placed = s1.events - s1.filtered - s1.no_timestamp - s1.rejected_future;
            let sum: u64 = one.iter().map(|x| x.count).sum();
            // Two reductions; nothing refused as full with these bounds.
            assert_eq!(s1.rejected_full, 0);
            assert_eq!(sum, 2 * placed);
            assert_eq!(s1.grouped + s1.overflow, 2 * placed);
        }
    }

    #[test]
    fn records_are_out_exactly_when_their_events_are_settled() {
        let events = scrambled();
        let mut r = qname_only(200_000);
        let mut pending: Vec<Placed> = Vec::new();
        let mut emitted = 0u64;
        let mut out = Vec::new();
        for e in &events {
            let p = push(&mut r, e);
            if p.settles_with().is_some() {
                pending.push(p);
            }
            if let Some(b) = r.advance(&mut out) {
                emitted += out.drain(..).map(|x| x.count).sum::<u64>();
                pending.retain(|p| !p.settled_by(b));
                let placed_total = r.stats().grouped + r.stats().overflow;
                assert_eq!(emitted, placed_total - pending.len() as u64);
            }
        }
        let b = r.close_all(&mut out).expect("boundary");
        assert!(pending.iter().all(|p| p.settled_by(b)));
    }

    #[test]
    fn odd_events_never_panic() {
        let odd: &[&[u8]] = &[
            br#"{"network":{},"dns":{},"dnstap":{"operation":"CLIENT_RESPONSE"}}"#,
            br#"{"network":{},"dns":{},"dnstap":{"operation":"CLIENT_RESPONSE","timestamp":0}}"#,
            br#"{"network":{},"dns":{},"dnstap":{"operation":"CLIENT_RESPONSE","timestamp":18446744073709551615}}"#,
            br#"{"network":{},"dns":{"length":4294967295},"dnstap":{"operation":"CLIENT_RESPONSE","timestamp":18446744073709551615}}"#,
            br#"{"network":{"query-ip":"::1"},"dns":{"qname":"\u00e9X"},"dnstap":{"operation":"UNKNOWN(98)","timestamp":5}}"#,
            br#"{"network":{},"dns":{"qname":""},"dnstap":{"operation":"CLIENT_RESPONSE","identity":"","timestamp":1}}"#,
        ];
        let keys = vec![
            KeyField::Identity,
            KeyField::QueryIp,
            KeyField::ResponseIp,
            KeyField::Qname,
            KeyField::Qtype,
            KeyField::Rcode,
            KeyField::Operation,
            KeyField::Protocol,
        ];
        let c = ReduceConfig {
            reductions: vec![ReductionConfig {
                name: "all".into(),
                filter: String::new(),
                keys,
            }],
            ..ReduceConfig::default()
        };
        for order in [false, true] {
            let mut r = Reducer::new(c.validate().expect("valid"));
            let mut out = Vec::new();
            let it: Vec<&&[u8]> = if order {
                odd.iter().rev().collect()
            } else {
                odd.iter().collect()
            };
            for e in it {
                push(&mut r, e);
                r.advance(&mut out);
            }
            r.close_all(&mut out);
            r.close_all(&mut out);
            let placed = r.stats().grouped + r.stats().overflow;
            assert_eq!(out.iter().map(|x| x.count).sum::<u64>(), placed);
            for rec in &out {
                let v: serde_json::Value = serde_json::from_slice(&rec.to_json()).expect("JSON");
                assert_eq!(v["key"].as_object().map(|m| m.len()), Some(7));
            }
        }
    }
}
