//! The model of tapbus-top, on the arrow bus --JSON--> terminal: parsed events in (each with
//! the time it arrived), bounded aggregates out, and a [`Snapshot`] for the screen.
//!
//! Pure code: no terminal, no sockets, no clock (the caller passes the time, in
//! milliseconds on any monotonic scale). Everything is bounded:
//!
//! * low-cardinality tables (identities, operations, rcodes, qtypes, transports, families)
//!   are [`Counts`] maps of at most [`SMALL_CAP`] keys; later keys go to `(other)`;
//! * top qnames, clients and registered domains are [`TopK`] tables of [`TOP_CAP`] entries
//!   kept with the *space-saving* algorithm (Metwally et al. 2005): a new key replaces the
//!   entry with the smallest count and inherits that count (kept as its `error`, the most
//!   it may be over-counted by); every replacement is counted in `evicted`;
//! * latency goes into HDR histograms (`hdrhistogram`, 1 µs .. 60 s, 3 significant
//!   digits): one since the start and one per second of the window;
//! * queries waiting for their response (to match them when the response carries no
//!   latency of its own) are at most [`PENDING_CAP`], oldest forgotten first (counted).
//!
//! Rates: every counter keeps the total and one bucket per second of the last
//! [`WINDOW_SECS`] seconds; a rate is the window's count divided by the window's length in
//! whole seconds, counting the current second as a whole one (shorter right after the
//! start, so the first seconds are not under-counted).
//!
//! What is counted where: every event in the events and per-operation counts; every
//! response in the rcode mix and latency; each DNS *exchange* once in the per-server
//! queries/s, qnames, clients, domains, qtypes, transports, families and EDNS: from its
//! `*_QUERY` event, or from its `*_RESPONSE` event when that server has sent no query event
//! of that kind (a server that logs only responses, such as `dnstap { client response; }`).
//! Names are counted in lower case (DNS names are case-insensitive; resolvers randomise
//! case).
//!
//! The [`Filter`] (identity, operation, a substring of the qname) applies to every table:
//! changing it starts the filtered aggregates afresh (`since` in the snapshot says when).
//! The list of identities and operations seen, used to cycle through them, is kept apart
//! and survives filter changes.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::net::IpAddr;

use hdrhistogram::Histogram;
use tapbus_event::topk::SpaceSaving;
use tapbus_event::{EventView, Operation};

/// Length of the sliding window, in seconds.
pub const WINDOW_SECS: u64 = 10;
const W: usize = WINDOW_SECS as usize;
/// Entries of each top table (qnames, clients, domains).
pub const TOP_CAP: usize = 1024;
/// Keys of each small table before `(other)`.
pub const SMALL_CAP: usize = 256;
/// Queries held to match their responses.
pub const PENDING_CAP: usize = 65536;
/// Key of the overflow row of a [`Counts`].
pub const OTHER: &str = "(other)";
/// Highest latency recorded (larger ones are recorded as this), microseconds.
const LATENCY_MAX_US: u64 = 60_000_000;

/// A count with its last [`WINDOW_SECS`] seconds in one-second buckets.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rate {
    total: u64,
    buckets: [u32; W],
    /// The second of the newest bucket.
    sec: u64,
}

impl Rate {
    /// Adds `n` at second `now_s` (an older second than the newest counts into the newest).
    pub fn add(&mut self, now_s: u64, n: u32) {
        self.advance(now_s);
        let i = (self.sec % WINDOW_SECS) as usize;
        self.buckets[i] = self.buckets[i].saturating_add(n);
        self.total = self.total.saturating_add(u64::from(n));
    }

    fn advance(&mut self, now_s: u64) {
        if now_s <= self.sec {
            return;
        }
        if now_s - self.sec >= WINDOW_SECS {
            self.buckets = [0; W];
        } else {
            for s in self.sec + 1..=now_s {
                self.buckets[(s % WINDOW_SECS) as usize] = 0;
            }
        }
        self.sec = now_s;
    }

    /// Everything counted.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// The count of the window ending with second `now_s` (inclusive).
    pub fn window(&self, now_s: u64) -> u64 {
        if self.sec + WINDOW_SECS <= now_s {
            return 0;
        }
        let first = (now_s + 1).saturating_sub(WINDOW_SECS);
        (first.max(self.sec.saturating_sub(WINDOW_SECS - 1))..=self.sec.min(now_s))
            .map(|s| u64::from(self.buckets[(s % WINDOW_SECS) as usize]))
            .sum()
    }
}

/// Seconds since a start and the window length that applies then.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Clock {
    now_s: u64,
    /// Window length in seconds: [`WINDOW_SECS`], or fewer right after the start.
    span: u64,
}

impl Clock {
    fn at(start_ms: u64, now_ms: u64) -> Clock {
        let now_s = now_ms / 1000;
        let start_s = start_ms / 1000;
        Clock {
            now_s,
            span: (now_s.saturating_sub(start_s) + 1).min(WINDOW_SECS),
        }
    }

    fn per_sec(&self, r: &Rate) -> f64 {
        r.window(self.now_s) as f64 / self.span as f64
    }
}

/// A small map of counts, at most [`SMALL_CAP`] keys; later keys count as [`OTHER`].
#[derive(Clone, Debug, Default)]
pub struct Counts {
    map: HashMap<Box<str>, Rate>,
}

impl Counts {
    /// Counts one for `key` at second `now_s`.
    pub fn add(&mut self, key: &str, now_s: u64) {
        if let Some(r) = self.map.get_mut(key) {
            r.add(now_s, 1);
            return;
        }
        let key = if self.map.len() >= SMALL_CAP {
            OTHER
        } else {
            key
        };
        self.map.entry(key.into()).or_default().add(now_s, 1);
    }

    fn rows(&self, c: Clock) -> Vec<Row> {
        let all: u64 = self.map.values().map(Rate::total).sum();
        let mut rows: Vec<Row> = self
            .map
            .iter()
            .map(|(k, r)| Row {
                key: k.to_string(),
                count: r.total(),
                share: share(r.total(), all),
                rate: c.per_sec(r),
                error: 0,
            })
            .collect();
        sort_rows(&mut rows);
        rows
    }
}

fn share(n: u64, all: u64) -> f64 {
    if all == 0 {
        0.0
    } else {
        n as f64 * 100.0 / all as f64
    }
}

/// Largest count first, then by name (stable output for tests and eyes).
fn sort_rows(rows: &mut [Row]) {
    rows.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.key.cmp(&b.key)));
}

/// A space-saving top-k table ([`tapbus_event::topk::SpaceSaving`]) of [`TOP_CAP`]
/// entries (or fewer, for tests), each key with its recent rate.
#[derive(Clone, Debug)]
pub struct TopK {
    table: SpaceSaving<Box<str>, Rate>,
    total: u64,
}

impl TopK {
    /// An empty table of `cap` entries (at least 1).
    pub fn new(cap: usize) -> TopK {
        TopK {
            table: SpaceSaving::new(cap),
            total: 0,
        }
    }

    /// Counts one for `key` at second `now_s`.
    pub fn add(&mut self, key: &str, now_s: u64) {
        self.total += 1;
        self.table.offer(key, |k, _| Box::from(k)).add(now_s, 1);
    }

    /// Entries replaced by a new key so far.
    pub fn evicted(&self) -> u64 {
        self.table.evicted()
    }

    fn rows(&self, c: Clock, n: usize) -> Vec<Row> {
        let mut rows: Vec<Row> = self
            .table
            .iter()
            .map(|e| Row {
                key: e.key.to_string(),
                count: e.count,
                share: share(e.count, self.total),
                rate: c.per_sec(e.value),
                error: e.error,
            })
            .collect();
        sort_rows(&mut rows);
        rows.truncate(n);
        rows
    }
}

/// Latency histograms: since the start and per second of the window (microseconds).
#[derive(Clone, Debug)]
struct Latency {
    total: Histogram<u64>,
    ring: Vec<(u64, Histogram<u64>)>,
}

fn histogram() -> Histogram<u64> {
    // Constant bounds (low >= 1, high >= 2 * low, sigfig <= 5): cannot fail.
    Histogram::new_with_bounds(1, LATENCY_MAX_US, 3).expect("constant histogram bounds are valid")
}

impl Latency {
    fn new() -> Latency {
        Latency {
            total: histogram(),
            ring: (0..W).map(|_| (u64::MAX, histogram())).collect(),
        }
    }

    fn record(&mut self, us: u64, now_s: u64) {
        let us = us.clamp(1, LATENCY_MAX_US);
        self.total.saturating_record(us);
        let slot = &mut self.ring[(now_s % WINDOW_SECS) as usize];
        if slot.0 != now_s {
            slot.0 = now_s;
            slot.1.reset();
        }
        slot.1.saturating_record(us);
    }

    fn summary(&self, now_s: u64) -> LatencySummary {
        let mut window = histogram();
        for (s, h) in &self.ring {
            if *s <= now_s && s + WINDOW_SECS > now_s {
                // Same bounds: adding cannot fail.
                let _ = window.add(h);
            }
        }
        LatencySummary {
            window: Percentiles::of(&window),
            total: Percentiles::of(&self.total),
        }
    }
}

/// Percentiles of one histogram, microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Percentiles {
    pub count: u64,
    pub p50: u64,
    pub p90: u64,
    pub p95: u64,
    pub p99: u64,
    pub max: u64,
}

impl Percentiles {
    fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        // The lowest value of the quantile's bucket (hdrhistogram reports the highest):
        // never more than what was recorded, and within 0.1 % of it.
        let q = |x| h.lowest_equivalent(h.value_at_quantile(x));
        Percentiles {
            count: h.len(),
            p50: q(0.5),
            p90: q(0.9),
            p95: q(0.95),
            p99: q(0.99),
            max: h.lowest_equivalent(h.max()),
        }
    }
}

/// Latency of one side, in the window and since the start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LatencySummary {
    pub window: Percentiles,
    pub total: Percentiles,
}

/// Which side of a server a response belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The server answered a client (AUTH_, CLIENT_, UPDATE_).
    Served,
    /// The server (or a stub, a tool) asked upstream (RESOLVER_, FORWARDER_, STUB_, TOOL_).
    Upstream,
}

fn side(op: Operation) -> Side {
    match op.code().div_ceil(2) {
        1 | 3 | 7 => Side::Served,
        _ => Side::Upstream,
    }
}

/// The kind of an exchange: the operation number's pair (1 for AUTH_QUERY and
/// AUTH_RESPONSE, 3 for CLIENT_*, ...), 0..=15 (higher unknown kinds share 15).
fn kind(op: Operation) -> u32 {
    op.code().div_ceil(2).min(15)
}

/// Which events count: those of the `--filter` expression (the filter language of
/// `tapbus-tail` and the broker's outputs, [`tapbus_event::Filter`]) and of the identity,
/// operation and qname the keys set. Matching goes through one shared
/// [`tapbus_event::Filter`] built from all of them.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    base: tapbus_event::Filter,
    identity: Option<String>,
    operation: Option<Operation>,
    qname: Option<String>,
    qname_filter: tapbus_event::Filter,
    matcher: tapbus_event::Filter,
}

impl PartialEq for Filter {
    fn eq(&self, other: &Self) -> bool {
        self.base == other.base
            && self.identity == other.identity
            && self.operation == other.operation
            && self.qname == other.qname
    }
}

impl Filter {
    /// The filter of a `--filter` expression, with nothing set by the keys.
    pub fn new(base: tapbus_event::Filter) -> Filter {
        let mut f = Filter {
            base,
            ..Filter::default()
        };
        f.rebuild();
        f
    }

    /// Exactly this `dnstap.identity` (ASCII case-insensitive), or any.
    pub fn set_identity(&mut self, id: Option<String>) {
        self.identity = id;
        self.rebuild();
    }

    /// Exactly this operation, or any.
    pub fn set_operation(&mut self, op: Option<Operation>) {
        self.operation = op;
        self.rebuild();
    }

    /// The qname contains this text (ASCII case-insensitive, taken literally); blank text:
    /// no qname condition. On an error (a text too long for the regex limit) nothing
    /// changes.
    pub fn set_qname(&mut self, text: &str) -> Result<(), tapbus_event::FilterError> {
        let t = text.trim().to_ascii_lowercase();
        self.qname_filter = tapbus_event::Filter::qname_contains(&t)?;
        self.qname = (!t.is_empty()).then_some(t);
        self.rebuild();
        Ok(())
    }

    /// Drops what the keys set; the `--filter` expression stays.
    pub fn clear(&mut self) {
        *self = Filter::new(std::mem::take(&mut self.base));
    }

    /// The identity set by the keys.
    pub fn identity(&self) -> Option<&str> {
        self.identity.as_deref()
    }

    /// The operation set by the keys.
    pub fn operation(&self) -> Option<Operation> {
        self.operation
    }

    /// The qname text set by the keys (lower case).
    pub fn qname(&self) -> Option<&str> {
        self.qname.as_deref()
    }

    fn rebuild(&mut self) {
        let mut m = self.base.clone();
        if let Some(id) = &self.identity {
            m = m.and(tapbus_event::Filter::identity_is(id));
        }
        if let Some(op) = self.operation {
            m = m.and(tapbus_event::Filter::operation_is(op));
        }
        self.matcher = m.and(self.qname_filter.clone());
    }

    /// Whether `ev` passes.
    pub fn matches(&self, ev: &EventView<'_>) -> bool {
        self.matcher.matches(ev)
    }

    /// No condition at all.
    pub fn is_empty(&self) -> bool {
        self.matcher.is_empty()
    }

    /// The filter in the filter language (`identity=ns1 operation=CLIENT_QUERY
    /// qname~foo`), or `none`.
    pub fn describe(&self) -> String {
        if self.matcher.is_empty() {
            "none".into()
        } else {
            self.matcher.to_string()
        }
    }
}

/// Per-identity facts that survive filter changes.
#[derive(Clone, Debug, Default)]
struct IdentityInfo {
    events: Rate,
    /// Bit k set: this identity sent a `*_QUERY` event of kind k.
    query_kinds: u16,
}

/// Queries waiting for their response, keyed by a hash of (identity, kind, client address
/// and port, DNS id, qname): at most [`PENDING_CAP`], oldest forgotten first.
#[derive(Clone, Debug, Default)]
struct Pending {
    map: HashMap<u64, (u64, u64)>,
    order: VecDeque<(u64, u64)>,
    seq: u64,
    forgotten: u64,
}

impl Pending {
    fn insert(&mut self, key: u64, ts_ns: u64) {
        self.seq += 1;
        self.map.insert(key, (ts_ns, self.seq));
        self.order.push_back((key, self.seq));
        while self.order.len() > PENDING_CAP {
            if let Some((k, s)) = self.order.pop_front()
                && self.map.get(&k).is_some_and(|(_, ms)| *ms == s)
            {
                self.map.remove(&k);
                self.forgotten += 1;
            }
        }
    }

    fn take(&mut self, key: u64) -> Option<u64> {
        // The order queue keeps the stale key; it is skipped when it comes out.
        self.map.remove(&key).map(|(ts, _)| ts)
    }
}

fn exchange_key(ev: &EventView<'_>, qname: &str) -> Option<u64> {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    ev.identity().hash(&mut h);
    kind(ev.operation()).hash(&mut h);
    ev.network.query_ip?.hash(&mut h);
    ev.network.query_port?.hash(&mut h);
    ev.dns.id?.hash(&mut h);
    qname.hash(&mut h);
    Some(h.finish())
}

/// What the filter selects, since the filter was set.
#[derive(Clone, Debug)]
struct Agg {
    start_ms: u64,
    events: Rate,
    exchanges: Rate,
    responses: Rate,
    by_identity: Counts,
    by_operation: Counts,
    rcodes: Counts,
    qtypes: Counts,
    protocols: Counts,
    families: Counts,
    qnames: TopK,
    clients: TopK,
    domains: TopK,
    countries: TopK,
    asns: TopK,
    edns: u64,
    dnssec_ok: u64,
    query_bytes: (u64, u64),
    response_bytes: (u64, u64),
    malformed_dns: u64,
    served: Latency,
    upstream: Latency,
    from_event: u64,
    matched: u64,
    unmatched: u64,
    pending: Pending,
}

impl Agg {
    fn new(start_ms: u64, top_cap: usize) -> Agg {
        Agg {
            start_ms,
            events: Rate::default(),
            exchanges: Rate::default(),
            responses: Rate::default(),
            by_identity: Counts::default(),
            by_operation: Counts::default(),
            rcodes: Counts::default(),
            qtypes: Counts::default(),
            protocols: Counts::default(),
            families: Counts::default(),
            qnames: TopK::new(top_cap),
            clients: TopK::new(top_cap),
            domains: TopK::new(top_cap),
            countries: TopK::new(top_cap),
            asns: TopK::new(top_cap),
            edns: 0,
            dnssec_ok: 0,
            query_bytes: (0, 0),
            response_bytes: (0, 0),
            malformed_dns: 0,
            served: Latency::new(),
            upstream: Latency::new(),
            from_event: 0,
            matched: 0,
            unmatched: 0,
            pending: Pending::default(),
        }
    }
}

/// The whole model.
#[derive(Clone, Debug)]
pub struct Stats {
    start_ms: u64,
    top_cap: usize,
    events: Rate,
    bad: u64,
    identities: HashMap<Box<str>, IdentityInfo>,
    identities_overflow: u64,
    operations: Vec<Operation>,
    filter: Filter,
    agg: Agg,
}

/// One row of a table.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub key: String,
    /// Since the start (or the filter change).
    pub count: u64,
    /// Percent of the table's total.
    pub share: f64,
    /// Per second over the window.
    pub rate: f64,
    /// Top tables: how much `count` may be over (space-saving), else 0.
    pub error: u64,
}

/// Everything the screen shows, computed from the model at one moment.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    /// Seconds since the model started.
    pub uptime_s: u64,
    /// Seconds since the filter was set (the age of every table).
    pub since_s: u64,
    /// Every event read, and its rate (before the filter).
    pub events_total: u64,
    pub events_rate: f64,
    /// Messages that were not tapbus events.
    pub bad: u64,
    pub filter: Filter,
    /// Filtered: events and exchanges per second since the filter was set (at least 1 s).
    pub events_avg: f64,
    pub queries_avg: f64,
    /// Filtered: events, exchanges (queries), responses; totals and rates.
    pub events: (u64, f64),
    pub queries: (u64, f64),
    pub responses: (u64, f64),
    /// Exchanges per identity, events per operation.
    pub by_identity: Vec<Row>,
    pub by_operation: Vec<Row>,
    pub rcodes: Vec<Row>,
    pub qtypes: Vec<Row>,
    pub protocols: Vec<Row>,
    pub families: Vec<Row>,
    pub qnames: Vec<Row>,
    pub clients: Vec<Row>,
    pub domains: Vec<Row>,
    /// Entries replaced in the top tables (qnames, clients, domains).
    pub evicted: (u64, u64, u64),
    /// Exchanges by the client's country (`geo.country`) and AS (`AS3215 Orange`), with
    /// [`GEO_UNKNOWN`] for events without one; entries replaced in them.
    pub countries: Vec<Row>,
    pub asns: Vec<Row>,
    pub evicted_geo: (u64, u64),
    /// Exchanges with EDNS, and with the DO bit.
    pub edns: u64,
    pub dnssec_ok: u64,
    /// Average DNS message sizes in bytes (queries, responses), 0 without any.
    pub avg_query_bytes: f64,
    pub avg_response_bytes: f64,
    /// Events whose DNS message did not fully parse.
    pub malformed_dns: u64,
    pub served: LatencySummary,
    pub upstream: LatencySummary,
    /// Latencies taken from the event / from matching a query; responses with neither.
    pub latency_from_event: u64,
    pub latency_matched: u64,
    pub latency_unmatched: u64,
    /// Queries forgotten before their response came (the matching table was full).
    pub pending_forgotten: u64,
    /// Identities seen (sorted), and how many did not fit the table.
    pub identities: Vec<String>,
    pub identities_overflow: u64,
}

impl Snapshot {
    /// The count and rate of `key` in `rows` (0 when absent).
    pub fn row<'a>(rows: &'a [Row], key: &str) -> Option<&'a Row> {
        rows.iter().find(|r| r.key == key)
    }
}

impl Stats {
    /// An empty model started at `now_ms`, with [`TOP_CAP`] entries per top table.
    pub fn new(now_ms: u64) -> Stats {
        Stats::with_top_cap(now_ms, TOP_CAP)
    }

    /// The same with `top_cap` entries per top table (small ones for tests).
    pub fn with_top_cap(now_ms: u64, top_cap: usize) -> Stats {
        Stats {
            start_ms: now_ms,
            top_cap,
            events: Rate::default(),
            bad: 0,
            identities: HashMap::new(),
            identities_overflow: 0,
            operations: Vec::new(),
            filter: Filter::default(),
            agg: Agg::new(now_ms, top_cap),
        }
    }

    /// Counts a message that is not a tapbus event.
    pub fn record_bad(&mut self) {
        self.bad += 1;
    }

    /// Messages that were not events so far.
    pub fn bad(&self) -> u64 {
        self.bad
    }

    /// Every event read so far.
    pub fn events(&self) -> u64 {
        self.events.total()
    }

    /// The filter in force.
    pub fn filter(&self) -> &Filter {
        &self.filter
    }

    /// Sets the filter; the filtered tables start afresh at `now_ms` when it changed.
    pub fn set_filter(&mut self, f: Filter, now_ms: u64) {
        if f != self.filter {
            self.filter = f;
            self.agg = Agg::new(now_ms, self.top_cap);
        }
    }

    /// Identities seen, sorted.
    pub fn identities(&self) -> Vec<String> {
        let mut v: Vec<String> = self.identities.keys().map(|k| k.to_string()).collect();
        v.sort();
        v
    }

    /// Operations seen, in dnstap order.
    pub fn operations(&self) -> Vec<Operation> {
        self.operations.clone()
    }

    /// Records one event that arrived at `now_ms`.
    pub fn record(&mut self, ev: &EventView<'_>, now_ms: u64) {
        let now_s = now_ms / 1000;
        self.events.add(now_s, 1);
        let op = ev.operation();
        if !self.operations.contains(&op) && self.operations.len() < SMALL_CAP {
            self.operations.push(op);
            self.operations.sort_by_key(Operation::code);
        }
        let identity = ev.identity().unwrap_or("");
        let k = kind(op);
        let info = if self.identities.contains_key(identity) || self.identities.len() < SMALL_CAP {
            Some(self.identities.entry(identity.into()).or_default())
        } else {
            self.identities_overflow += 1;
            None
        };
        // Whether this event is the one that stands for its exchange.
        let exchange = match info {
            Some(i) => {
                i.events.add(now_s, 1);
                if ev.is_query() {
                    i.query_kinds |= 1 << k;
                    true
                } else {
                    ev.is_response() && i.query_kinds & (1 << k) == 0
                }
            }
            None => ev.is_query(),
        };
        if !self.filter.matches(ev) {
            return;
        }
        self.agg.record(ev, now_s, exchange);
    }

    /// What the screen shows at `now_ms`: the top `n` rows of each top table.
    pub fn snapshot(&self, now_ms: u64, n: usize) -> Snapshot {
        let all = Clock::at(self.start_ms, now_ms);
        let c = Clock::at(self.agg.start_ms, now_ms);
        let a = &self.agg;
        let avg = |(sum, n): (u64, u64)| if n == 0 { 0.0 } else { sum as f64 / n as f64 };
        let age = (now_ms.saturating_sub(a.start_ms) as f64 / 1000.0).max(1.0);
        Snapshot {
            uptime_s: now_ms.saturating_sub(self.start_ms) / 1000,
            since_s: now_ms.saturating_sub(a.start_ms) / 1000,
            events_total: self.events.total(),
            events_rate: all.per_sec(&self.events),
            bad: self.bad,
            filter: self.filter.clone(),
            events_avg: a.events.total() as f64 / age,
            queries_avg: a.exchanges.total() as f64 / age,
            events: (a.events.total(), c.per_sec(&a.events)),
            queries: (a.exchanges.total(), c.per_sec(&a.exchanges)),
            responses: (a.responses.total(), c.per_sec(&a.responses)),
            by_identity: a.by_identity.rows(c),
            by_operation: a.by_operation.rows(c),
            rcodes: a.rcodes.rows(c),
            qtypes: a.qtypes.rows(c),
            protocols: a.protocols.rows(c),
            families: a.families.rows(c),
            qnames: a.qnames.rows(c, n),
            clients: a.clients.rows(c, n),
            domains: a.domains.rows(c, n),
            evicted: (a.qnames.evicted(), a.clients.evicted(), a.domains.evicted()),
            countries: a.countries.rows(c, n),
            asns: a.asns.rows(c, n),
            evicted_geo: (a.countries.evicted(), a.asns.evicted()),
            edns: a.edns,
            dnssec_ok: a.dnssec_ok,
            avg_query_bytes: avg(a.query_bytes),
            avg_response_bytes: avg(a.response_bytes),
            malformed_dns: a.malformed_dns,
            served: a.served.summary(c.now_s),
            upstream: a.upstream.summary(c.now_s),
            latency_from_event: a.from_event,
            latency_matched: a.matched,
            latency_unmatched: a.unmatched,
            pending_forgotten: a.pending.forgotten,
            identities: self.identities(),
            identities_overflow: self.identities_overflow,
        }
    }
}

impl Agg {
    fn record(&mut self, ev: &EventView<'_>, now_s: u64, exchange: bool) {
        let op = ev.operation();
        self.events.add(now_s, 1);
        self.by_operation.add(&op.as_str(), now_s);
        if ev.dns.malformed_packet {
            self.malformed_dns += 1;
        }
        let qname = ev.qname().map(str::to_ascii_lowercase);
        if let Some(len) = ev.size() {
            let acc = if ev.is_response() {
                &mut self.response_bytes
            } else {
                &mut self.query_bytes
            };
            acc.0 += u64::from(len);
            acc.1 += 1;
        }
        if ev.is_query() {
            if let (Some(ts), Some(key)) = (
                ev.timestamp_ns(),
                qname.as_deref().and_then(|q| exchange_key(ev, q)),
            ) {
                self.pending.insert(key, ts);
            }
        } else if ev.is_response() {
            self.responses.add(now_s, 1);
            self.rcodes.add(ev.rcode().unwrap_or("(none)"), now_s);
            self.latency(ev, qname.as_deref(), now_s);
        }
        if !exchange {
            return;
        }
        self.exchanges.add(now_s, 1);
        self.by_identity
            .add(ev.identity().unwrap_or("(none)"), now_s);
        self.qtypes.add(ev.qtype().unwrap_or("(none)"), now_s);
        self.protocols.add(
            &ev.protocol().map_or("(none)".into(), |p| p.as_str()),
            now_s,
        );
        self.families
            .add(&ev.family().map_or("(none)".into(), |f| f.as_str()), now_s);
        if let Some(e) = ev.edns {
            self.edns += 1;
            if e.dnssec_ok {
                self.dnssec_ok += 1;
            }
        }
        if let Some(q) = qname.as_deref() {
            self.qnames.add(q, now_s);
            self.domains.add(registered_domain(q), now_s);
        }
        if let Some(ip) = ev.client_ip() {
            self.clients.add(&client_key(ip), now_s);
        }
        self.countries
            .add(ev.client_country().unwrap_or(GEO_UNKNOWN), now_s);
        let asn = ev.client_asn().map_or(Cow::Borrowed(GEO_UNKNOWN), |n| {
            Cow::Owned(match ev.client_as_org() {
                Some(org) => format!("AS{n} {org}"),
                None => format!("AS{n}"),
            })
        });
        self.asns.add(&asn, now_s);
    }

    fn latency(&mut self, ev: &EventView<'_>, qname: Option<&str>, now_s: u64) {
        let matched = qname
            .and_then(|q| exchange_key(ev, q))
            .and_then(|k| self.pending.take(k));
        let us = if let Some(l) = ev.latency().filter(|l| l.is_finite() && *l >= 0.0) {
            self.from_event += 1;
            (l * 1e6).round() as u64
        } else if let (Some(q), Some(r)) = (matched, ev.timestamp_ns())
            && r >= q
        {
            self.matched += 1;
            (r - q) / 1000
        } else {
            self.unmatched += 1;
            return;
        };
        match side(ev.operation()) {
            Side::Served => self.served.record(us, now_s),
            Side::Upstream => self.upstream.record(us, now_s),
        }
    }
}

/// The registered domain (public suffix + one label, from the Public Suffix List) of a
/// lower-case name; the name itself when it is a suffix or the root.
pub fn registered_domain(qname: &str) -> &str {
    psl::domain_str(qname).unwrap_or(qname)
}

/// The country / AS key of exchanges whose event has none (no `geo`: GeoIP off at the
/// broker, a private or unknown address).
pub const GEO_UNKNOWN: &str = "(unknown)";

fn client_key(ip: IpAddr) -> String {
    ip.to_string()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// One event in the broker's JSON layout.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn event(
        op: &str,
        identity: &str,
        qname: &str,
        qtype: &str,
        rcode: &str,
        client: &str,
        id: u16,
        ts_ns: u64,
        latency: Option<f64>,
    ) -> String {
        let family = if client.contains(':') {
            "INET6"
        } else {
            "INET"
        };
        let lat = latency.map_or("null".to_string(), |l| l.to_string());
        format!(
            r#"{{"network":{{"family":"{family}","protocol":"UDP","query-ip":"{client}","query-port":40000,"response-ip":"127.0.0.1","response-port":53,"http-protocol":null}},"dns":{{"length":50,"id":{id},"opcode":0,"rcode":"{rcode}","qname":"{qname}","qtype":"{qtype}","qclass":"IN","flags":null,"qdcount":1,"ancount":0,"nscount":0,"arcount":0,"resource-records":{{"an":[],"ns":[],"ar":[]}},"malformed-packet":false}},"edns":{{"udp-size":1232,"rcode":0,"version":0,"dnssec-ok":1,"options":[]}},"dnstap":{{"operation":"{op}","identity":"{identity}","version":null,"extra":null,"timestamp-rfc3339ns":null,"timestamp":{ts_ns},"latency":{lat},"query-zone":null,"peer-name":null}}}}"#
        )
    }

    /// [`event`] with a `geo` object (`null` when `geo` is empty) after `dnstap`.
    pub(crate) fn with_geo(json: &str, geo: &str) -> String {
        let j = json.strip_suffix('}').expect("an object");
        let geo = if geo.is_empty() { "null" } else { geo };
        format!("{j},\"geo\":{geo},\"schema-version\":2}}")
    }

    #[test]
    fn countries_and_asns_count_exchanges() {
        let mut s = Stats::new(0);
        let ms = 1_000_000u64;
        let ev = |op: &str, id: u16| {
            event(
                op,
                "ns1",
                "a.example",
                "A",
                "NOERROR",
                "81.2.69.160",
                id,
                ms,
                None,
            )
        };
        let fr = r#"{"country":"FR","city":"Paris","asn":3215,"as-org":"Orange"}"#;
        for i in 0..4 {
            feed(&mut s, &with_geo(&ev("CLIENT_QUERY", i), fr), 1_000);
            // The response is the same exchange: not counted again.
            feed(&mut s, &with_geo(&ev("CLIENT_RESPONSE", i), fr), 1_000);
        }
        feed(
            &mut s,
            &with_geo(&ev("CLIENT_QUERY", 7), r#"{"asn":64500}"#),
            1_000,
        );
        feed(&mut s, &with_geo(&ev("CLIENT_QUERY", 8), ""), 1_000);
        feed(&mut s, &ev("CLIENT_QUERY", 9), 1_000);
        let snap = s.snapshot(1_500, 100);
        let rows = |r: &[Row]| {
            r.iter()
                .map(|r| (r.key.clone(), r.count))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            rows(&snap.countries),
            [("FR".to_owned(), 4), (GEO_UNKNOWN.to_owned(), 3)]
        );
        assert_eq!(
            rows(&snap.asns),
            [
                ("AS3215 Orange".to_owned(), 4),
                (GEO_UNKNOWN.to_owned(), 2),
                ("AS64500".to_owned(), 1)
            ]
        );
        assert_eq!(snap.evicted_geo, (0, 0));
    }

    fn feed(s: &mut Stats, json: &str, now_ms: u64) {
        let v = EventView::parse(json.as_bytes()).expect("test event parses");
        s.record(&v, now_ms);
    }

    #[test]
    fn rate_window_slides_and_clears() {
        let mut r = Rate::default();
        r.add(0, 3);
        r.add(5, 2);
        assert_eq!(r.window(5), 5);
        assert_eq!(r.window(9), 5);
        assert_eq!(r.window(10), 2, "second 0 left the window");
        assert_eq!(r.window(14), 2);
        assert_eq!(r.window(15), 0);
        r.add(30, 1);
        assert_eq!((r.window(30), r.total()), (1, 6));
        // An older second counts into the newest bucket.
        r.add(29, 1);
        assert_eq!(r.window(30), 2);
    }

    #[test]
    fn clock_span_is_short_after_the_start() {
        let c = Clock::at(1_000, 1_500);
        assert_eq!((c.now_s, c.span), (1, 1));
        let c = Clock::at(1_000, 4_200);
        assert_eq!((c.now_s, c.span), (4, 4));
        let c = Clock::at(0, 99_000);
        assert_eq!(c.span, WINDOW_SECS);
    }

    #[test]
    fn space_saving_keeps_the_heavy_keys_and_counts_evictions() {
        let mut t = TopK::new(3);
        for _ in 0..10 {
            t.add("heavy", 0);
        }
        for _ in 0..5 {
            t.add("mid", 0);
        }
        t.add("a", 0);
        t.add("b", 0); // replaces "a" (count 1): count 2, error 1
        t.add("c", 0); // replaces "b" (count 2): count 3, error 2
        let rows = t.rows(Clock::at(0, 0), 10);
        let got: Vec<(&str, u64, u64)> = rows
            .iter()
            .map(|r| (r.key.as_str(), r.count, r.error))
            .collect();
        assert_eq!(got, vec![("heavy", 10, 0), ("mid", 5, 0), ("c", 3, 2)]);
        assert_eq!(t.evicted(), 2);
        assert_eq!(t.table.len(), 3);
        // Shares are of everything counted (18), not of what the table holds.
        assert!((rows[0].share - 1000.0 / 18.0).abs() < 1e-9);
    }

    /// The space-saving guarantees on a skewed stream (a heavy head, a long tail): the
    /// counts add up to the stream's length, every count brackets the true count
    /// (`count - error <= true <= count`), and every key seen more than total/k times is
    /// in the table.
    #[test]
    fn space_saving_guarantees_hold_on_a_skewed_stream() {
        let k = 64;
        let mut t = TopK::new(k);
        let mut truth: HashMap<String, u64> = HashMap::new();
        let mut x: u64 = 12345;
        let n = 50_000u64;
        for _ in 0..n {
            // xorshift; keys 0..8 are heavy, the rest a tail of 5000.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let key = if x.is_multiple_of(3) {
                format!("h{}", x % 8)
            } else {
                format!("t{}", x % 5000)
            };
            t.add(&key, 0);
            *truth.entry(key).or_default() += 1;
        }
        assert_eq!(t.table.iter().map(|e| e.count).sum::<u64>(), n);
        for e in t.table.iter() {
            let real = truth.get(&**e.key).copied().unwrap_or(0);
            assert!(
                e.count - e.error <= real && real <= e.count,
                "{}: {real} vs {e:?}",
                e.key
            );
        }
        for (key, c) in &truth {
            if *c > n / k as u64 {
                assert!(t.table.contains(key.as_str()), "{key} ({c}) missing");
            }
        }
        assert!(t.evicted() > 0);
        let rows = t.rows(Clock::at(0, 0), 8);
        assert!(
            rows.iter().all(|r| r.key.starts_with('h')),
            "the 8 heavy keys lead: {rows:?}"
        );
    }

    #[test]
    fn small_counts_overflow_into_other() {
        let mut c = Counts::default();
        for i in 0..SMALL_CAP + 5 {
            c.add(&format!("k{i}"), 0);
        }
        c.add("k0", 0);
        let rows = c.rows(Clock::at(0, 0));
        assert_eq!(rows.len(), SMALL_CAP + 1);
        assert_eq!(Snapshot::row(&rows, OTHER).map(|r| r.count), Some(5));
        assert_eq!(rows[0].key, OTHER);
        assert_eq!(Snapshot::row(&rows, "k0").map(|r| r.count), Some(2));
    }

    #[test]
    fn registered_domains_come_from_the_public_suffix_list() {
        assert_eq!(registered_domain("www.example.com"), "example.com");
        assert_eq!(registered_domain("a.b.example.co.uk"), "example.co.uk");
        assert_eq!(registered_domain("foo.github.io"), "foo.github.io");
        assert_eq!(registered_domain("com"), "com");
        assert_eq!(registered_domain("."), ".");
    }

    /// A known stream: two servers, queries and responses, exact numbers everywhere.
    fn known() -> Stats {
        let mut s = Stats::new(0);
        let ms = 1_000_000_000u64; // 1 s in ns
        // ns1: 4 client exchanges (queries and responses), latency by matching.
        let names = [
            ("www.example.com", "A", "NOERROR"),
            ("WWW.Example.com", "AAAA", "NOERROR"),
            ("nope.example.com", "A", "NXDOMAIN"),
            ("mail.example.org", "MX", "SERVFAIL"),
        ];
        for (i, (q, t, r)) in names.iter().enumerate() {
            let id = i as u16 + 1;
            let t0 = 100 * ms + i as u64 * ms;
            feed(
                &mut s,
                &event(
                    "CLIENT_QUERY",
                    "ns1",
                    q,
                    t,
                    "NOERROR",
                    "192.0.2.1",
                    id,
                    t0,
                    None,
                ),
                1_000 + i as u64 * 1_000,
            );
            // 2 ms, 4 ms, 6 ms, 8 ms.
            feed(
                &mut s,
                &event(
                    "CLIENT_RESPONSE",
                    "ns1",
                    q,
                    t,
                    r,
                    "192.0.2.1",
                    id,
                    t0 + (i as u64 + 1) * 2_000_000,
                    None,
                ),
                1_000 + i as u64 * 1_000,
            );
        }
        // ns2 logs only responses (latency in the event): 2 exchanges.
        for c in ["2001:db8::1", "2001:db8::2"] {
            feed(
                &mut s,
                &event(
                    "CLIENT_RESPONSE",
                    "ns2",
                    "www.example.com",
                    "A",
                    "NOERROR",
                    c,
                    9,
                    200 * ms,
                    Some(0.010),
                ),
                4_500,
            );
        }
        s
    }

    #[test]
    fn known_stream_gives_exact_numbers() {
        let s = known();
        // At 4.5 s: the window spans seconds 0..=4 (5 s since the start at 0).
        let snap = s.snapshot(4_500, 10);
        assert_eq!(snap.events_total, 10);
        assert_eq!(snap.events, (10, 2.0));
        assert_eq!(snap.queries, (6, 6.0 / 5.0));
        assert_eq!((snap.queries_avg, snap.events_avg), (6.0 / 4.5, 10.0 / 4.5));
        assert_eq!(snap.responses.0, 6);
        let ids: Vec<(&str, u64)> = snap
            .by_identity
            .iter()
            .map(|r| (r.key.as_str(), r.count))
            .collect();
        assert_eq!(ids, vec![("ns1", 4), ("ns2", 2)]);
        let ops: Vec<(&str, u64)> = snap
            .by_operation
            .iter()
            .map(|r| (r.key.as_str(), r.count))
            .collect();
        assert_eq!(ops, vec![("CLIENT_RESPONSE", 6), ("CLIENT_QUERY", 4)]);
        let rc = |k| Snapshot::row(&snap.rcodes, k).map(|r| r.count);
        assert_eq!(
            (rc("NOERROR"), rc("NXDOMAIN"), rc("SERVFAIL")),
            (Some(4), Some(1), Some(1))
        );
        let nx = Snapshot::row(&snap.rcodes, "NXDOMAIN").expect("nxdomain");
        assert!((nx.share - 100.0 / 6.0).abs() < 1e-9);
        assert!((nx.rate - 0.2).abs() < 1e-9);
        let qt = |k| Snapshot::row(&snap.qtypes, k).map(|r| r.count);
        assert_eq!((qt("A"), qt("AAAA"), qt("MX")), (Some(4), Some(1), Some(1)));
        // Names in lower case: www.example.com twice from ns1 and twice from ns2.
        assert_eq!(snap.qnames[0].key, "www.example.com");
        assert_eq!(snap.qnames[0].count, 4);
        assert_eq!(snap.qnames.len(), 3);
        let dom: Vec<(&str, u64)> = snap
            .domains
            .iter()
            .map(|r| (r.key.as_str(), r.count))
            .collect();
        assert_eq!(dom, vec![("example.com", 5), ("example.org", 1)]);
        let cl: Vec<(&str, u64)> = snap
            .clients
            .iter()
            .map(|r| (r.key.as_str(), r.count))
            .collect();
        assert_eq!(
            cl,
            vec![("192.0.2.1", 4), ("2001:db8::1", 1), ("2001:db8::2", 1)]
        );
        let fam = |k| Snapshot::row(&snap.families, k).map(|r| r.count);
        assert_eq!((fam("INET"), fam("INET6")), (Some(4), Some(2)));
        assert_eq!(
            Snapshot::row(&snap.protocols, "UDP").map(|r| r.count),
            Some(6)
        );
        assert_eq!((snap.edns, snap.dnssec_ok), (6, 6));
        assert_eq!(snap.avg_query_bytes, 50.0);
        // Latency: 4 matched (2, 4, 6, 8 ms) and 2 from the event (10 ms).
        assert_eq!(
            (
                snap.latency_matched,
                snap.latency_from_event,
                snap.latency_unmatched
            ),
            (4, 2, 0)
        );
        let p = snap.served.total;
        assert_eq!(p.count, 6);
        // 3 significant digits: values are exact to within 0.1 %, never above.
        let near = |got: u64, want: u64| got <= want && (want - got) * 1000 <= want;
        assert!(near(p.p50, 6_000), "p50 {}", p.p50);
        assert!(near(p.p90, 10_000), "p90 {}", p.p90);
        assert!(near(p.max, 10_000), "max {}", p.max);
        assert_eq!(snap.served.window.count, 6);
        assert_eq!(snap.upstream.total.count, 0);
        assert_eq!(snap.identities, vec!["ns1", "ns2"]);
        // Later the window empties but the totals stay.
        let later = s.snapshot(60_000, 10);
        assert_eq!(later.events, (10, 0.0));
        assert_eq!(later.events_avg, 10.0 / 60.0);
        assert_eq!(later.served.window.count, 0);
        assert_eq!(later.served.total.count, 6);
    }

    #[test]
    fn filter_applies_to_every_table_and_restarts_them() {
        let mut s = known();
        let mut ns1 = Filter::default();
        ns1.set_identity(Some("ns1".into()));
        s.set_filter(ns1, 5_000);
        let empty = s.snapshot(5_000, 10);
        assert_eq!(empty.events.0, 0);
        assert_eq!(empty.events_total, 10, "the unfiltered count goes on");
        assert_eq!(empty.identities, vec!["ns1", "ns2"]);
        // Replay the known stream into a model that already filters.
        let mut f = Stats::new(0);
        let mut flt = Filter::default();
        flt.set_identity(Some("ns1".into()));
        flt.set_qname("EXAMPLE.COM").expect("qname");
        f.set_filter(flt.clone(), 0);
        assert_eq!(f.filter().describe(), "identity=ns1 qname~example\\.com");
        for json in known_events() {
            feed(&mut f, &json, 1_000);
        }
        let snap = f.snapshot(1_000, 10);
        // ns1's three example.com exchanges (mail.example.org is out): 6 events.
        assert_eq!(snap.events.0, 6);
        assert_eq!(snap.queries.0, 3);
        let ids: Vec<&str> = snap.by_identity.iter().map(|r| r.key.as_str()).collect();
        assert_eq!(ids, vec!["ns1"]);
        assert!(Snapshot::row(&snap.rcodes, "SERVFAIL").is_none());
        assert!(snap.qnames.iter().all(|r| r.key.contains("example.com")));
        assert_eq!(snap.served.total.count, 3);
        // An operation filter.
        let mut queries = Filter::default();
        queries.set_operation(Some(Operation::ClientQuery));
        f.set_filter(queries, 2_000);
        for json in known_events() {
            feed(&mut f, &json, 2_000);
        }
        let snap = f.snapshot(2_000, 10);
        assert_eq!(snap.events.0, 4);
        assert_eq!(snap.responses.0, 0);
        assert_eq!(
            f.operations(),
            vec![Operation::ClientQuery, Operation::ClientResponse]
        );
    }

    #[test]
    fn keys_add_to_the_filter_expression() {
        let base = tapbus_event::Filter::parse("rcode!=SERVFAIL").expect("expr");
        let mut f = Filter::new(base);
        assert_eq!(f.describe(), "rcode!=SERVFAIL");
        f.set_identity(Some("ns1".into()));
        f.set_qname("Example.COM").expect("qname");
        assert_eq!(
            f.describe(),
            "rcode!=SERVFAIL identity=ns1 qname~example\\.com"
        );
        let mut s = Stats::new(0);
        s.set_filter(f.clone(), 0);
        for json in known_events() {
            feed(&mut s, &json, 1_000);
        }
        let snap = s.snapshot(1_000, 10);
        assert!(Snapshot::row(&snap.rcodes, "SERVFAIL").is_none());
        assert!(snap.qnames.iter().all(|r| r.key.contains("example.com")));
        assert!(snap.events.0 > 0);
        // `c` clears what the keys set; the expression stays.
        f.clear();
        assert_eq!(f.describe(), "rcode!=SERVFAIL");
        assert!(!f.is_empty());
        f = Filter::default();
        assert_eq!(f.describe(), "none");
    }

    fn known_events() -> Vec<String> {
        let ms = 1_000_000_000u64;
        let mut v = Vec::new();
        for (i, (q, r)) in [
            ("www.example.com", "NOERROR"),
            ("nope.example.com", "NXDOMAIN"),
            ("a.example.com", "NOERROR"),
            ("mail.example.org", "SERVFAIL"),
        ]
        .iter()
        .enumerate()
        {
            let id = i as u16;
            v.push(event(
                "CLIENT_QUERY",
                "ns1",
                q,
                "A",
                "NOERROR",
                "192.0.2.1",
                id,
                ms,
                None,
            ));
            v.push(event(
                "CLIENT_RESPONSE",
                "ns1",
                q,
                "A",
                r,
                "192.0.2.1",
                id,
                2 * ms,
                None,
            ));
        }
        v.push(event(
            "CLIENT_RESPONSE",
            "ns2",
            "x.example.com",
            "A",
            "NOERROR",
            "192.0.2.9",
            1,
            ms,
            Some(0.5),
        ));
        v
    }

    #[test]
    fn pending_queries_are_bounded() {
        let mut p = Pending::default();
        for k in 0..(PENDING_CAP as u64 + 10) {
            p.insert(k, k);
        }
        assert_eq!(p.map.len(), PENDING_CAP);
        assert_eq!(p.forgotten, 10);
        assert_eq!(p.take(0), None);
        assert_eq!(p.take(10), Some(10));
    }

    #[test]
    fn odd_events_do_not_panic() {
        let mut s = Stats::new(0);
        for json in [
            r#"{"network":{},"dns":{},"dnstap":{"operation":"CLIENT_RESPONSE"}}"#,
            r#"{"network":{},"dns":{},"dnstap":{"operation":"UNKNOWN(99)"}}"#,
            r#"{"network":{},"dns":{"qname":"."},"dnstap":{"operation":"AUTH_QUERY","latency":-1}}"#,
        ] {
            feed(&mut s, json, 0);
        }
        s.record_bad();
        let snap = s.snapshot(0, 10);
        assert_eq!((snap.events_total, snap.bad), (3, 1));
        assert_eq!(snap.latency_unmatched, 1);
        assert_eq!(
            Snapshot::row(&snap.rcodes, "(none)").map(|r| r.count),
            Some(1)
        );
        assert_eq!(snap.domains[0].key, ".");
    }
}
