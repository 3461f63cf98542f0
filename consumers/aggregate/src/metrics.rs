//! The state: cumulative counters and histograms kept in process, fed one [`EventView`] at
//! a time by [`Aggregator::push`], read by the exporters through `Aggregator::visit` (crate-private).
//!
//! Every family is a hash map from a packed `u64` label key (indices into the fixed
//! tables of [`crate::labels`] and the bounded [`Interner`]s) to a counter or a
//! [`Histogram`]; an event for an existing series costs a few table lookups and one hash
//! probe per family, and allocates nothing. A new identity or zone is copied once.
//!
//! Key layout: identity in bits 44..64 (20 bits, hence [`crate::config::MAX_INTERNED`]),
//! the small table indices one byte each from bit 0; the CoreDNS families put the zone
//! in bits 24..44 and use bytes 0-2 only.

use std::borrow::Cow;
use std::collections::hash_map::Entry;
use std::net::IpAddr;

use rustc_hash::FxHashMap;
use tapbus_event::EventView;

use crate::config::AggregateSpec;
use crate::labels::{self, Interner};
use tapbus_event::topk::SpaceSaving;

/// Per identity, its top keys with their counts, highest first.
type Ranked<'a> = Vec<(&'a str, Vec<(Cow<'a, str>, u64)>)>;

/// Names of one top-N pair of families.
struct TopFamily {
    count: &'static str,
    count_help: &'static str,
    info: &'static str,
    info_help: &'static str,
    /// The label naming the key in the info family.
    key: &'static str,
}

const TOP_QNAME: &TopFamily = &TopFamily {
    count: "dnstap_top_qname_count",
    count_help: "Queries for the qname at each rank per identity (space-saving estimate, an upper bound); every rank always present, 0 when unfilled.",
    info: "dnstap_top_qname_info",
    info_help: "1 for the qname at each filled rank per identity (join on identity, rank).",
    key: "qname",
};

const TOP_CLIENT: &TopFamily = &TopFamily {
    count: "dnstap_top_client_count",
    count_help: "Queries from the client (query-ip) at each rank per identity (space-saving estimate, an upper bound); every rank always present, 0 when unfilled.",
    info: "dnstap_top_client_info",
    info_help: "1 for the client at each filled rank per identity (join on identity, rank).",
    key: "client",
};

/// The top-N summaries of one identity (from its `*_QUERY` events).
#[derive(Debug, Clone)]
struct Top {
    qnames: SpaceSaving<String>,
    clients: SpaceSaving<IpAddr>,
}

/// `dnstap_client_country_total`.
pub const CLIENT_COUNTRY: &str = "dnstap_client_country_total";
/// `dnstap_client_asn_total`.
pub const CLIENT_ASN: &str = "dnstap_client_asn_total";
/// `tapbus_aggregate_geo_folded_total`.
const GEO_FOLDED: &str = "tapbus_aggregate_geo_folded_total";

/// The label value of queries whose event has no country (no `geo`, or one without a
/// country) / no ASN.
pub const GEO_UNKNOWN: &str = "unknown";
/// The label value that new keys beyond `geo_top_n` are counted under.
pub const GEO_OTHER: &str = "other";

/// Longest country and AS organisation label values kept (bytes, cut at a char
/// boundary): what comes off the bus is bounded before it is stored.
const MAX_COUNTRY_LEN: usize = 16;
const MAX_AS_ORG_LEN: usize = 128;

/// `s` cut to at most `max` bytes at a char boundary.
fn clip(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The client countries and ASNs of one identity's `*_QUERY` events. The first
/// `geo_top_n` distinct keys get a series and keep it (a counter never goes down, nor
/// vanishes); a new key after that is counted in `other`.
#[derive(Debug, Clone, Default)]
struct GeoCounts {
    countries: FxHashMap<Box<str>, u64>,
    country_unknown: u64,
    country_other: u64,
    /// ASN -> (the AS organisation first seen with it, count).
    asns: FxHashMap<u32, (Box<str>, u64)>,
    asn_unknown: u64,
    asn_other: u64,
}

/// CoreDNS's request duration buckets: 0.00025 s doubling 16 times to 8.192 s.
pub const LATENCY_BUCKETS: [f64; 16] = [
    0.00025, 0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024,
    2.048, 4.096, 8.192,
];

/// CoreDNS's message size buckets in bytes.
pub const SIZE_BUCKETS: [f64; 14] = [
    0.0, 100.0, 200.0, 300.0, 400.0, 511.0, 1023.0, 2047.0, 4095.0, 8291.0, 16000.0, 32000.0,
    48000.0, 64000.0,
];

/// Latencies above this (a year, in seconds) are counted as invalid, not observed, so a
/// histogram sum stays finite (and JSON-representable) whatever the events say.
pub const MAX_LATENCY: f64 = 365.0 * 86400.0;

/// The most finite buckets of any family, plus one for `+Inf`.
const SLOTS: usize = LATENCY_BUCKETS.len() + 1;

/// One histogram series: per-bucket (not cumulative) counts, the last slot `+Inf`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Histogram {
    counts: [u64; SLOTS],
    sum: f64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: [0; SLOTS],
            sum: 0.0,
        }
    }
}

impl Histogram {
    /// Adds `v` to the first bucket whose upper bound is `>= v` (Prometheus `le`).
    #[inline]
    pub fn observe(&mut self, bounds: &[f64], v: f64) {
        let i = bounds.iter().position(|b| v <= *b).unwrap_or(bounds.len());
        self.counts[i] += 1;
        self.sum += v;
    }

    /// Observations.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Sum of the observed values.
    pub fn sum(&self) -> f64 {
        self.sum
    }

    /// Cumulative counts for `bounds` then `+Inf` (`bounds.len() + 1` values).
    pub fn cumulative(&self, bounds: &[f64]) -> impl Iterator<Item = u64> + '_ {
        let n = bounds.len();
        let mut acc = 0;
        self.counts[..n]
            .iter()
            .copied()
            .chain(std::iter::once(self.counts[n..].iter().sum()))
            .map(move |c| {
                acc += c;
                acc
            })
    }
}

/// Counter, gauge or histogram.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Kind {
    Counter,
    Gauge,
    /// With its finite bucket bounds.
    Histogram(&'static [f64]),
}

/// Where [`Aggregator::visit`] writes: one `family` call, then its `sample`s.
pub(crate) trait Sink {
    /// A metric family starts (its HELP and TYPE).
    fn family(&mut self, name: &'static str, help: &'static str, kind: Kind);
    /// One sample of the current family: `name` is the family name with `_bucket`,
    /// `_sum`, `_count` for histograms; `le` is the bucket bound (`None`: `+Inf` when
    /// `bucket`); `labels` start with `instance`.
    fn sample(&mut self, name: &str, labels: &[(&'static str, &str)], le: Le, value: Value);
}

/// The `le` label of a sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Le {
    /// Not a bucket.
    No,
    Bound(f64),
    Inf,
}

/// A sample's value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Value {
    Int(u64),
    Float(f64),
}

impl Value {
    pub(crate) fn as_f64(self) -> f64 {
        match self {
            Value::Int(n) => n as f64,
            Value::Float(f) => f,
        }
    }
}

/// The families, in exposition order (index into `dropped`).
#[derive(Debug, Clone, Copy)]
enum Fam {
    Messages,
    Latency,
    Size,
    CdRequests,
    CdResponses,
    CdDuration,
    CdRequestSize,
    CdResponseSize,
}

const FAMILY_NAMES: [&str; 8] = [
    "dnstap_messages_total",
    "dnstap_latency_seconds",
    "dnstap_message_size_bytes",
    "coredns_dns_requests_total",
    "coredns_dns_responses_total",
    "coredns_dns_request_duration_seconds",
    "coredns_dns_request_size_bytes",
    "coredns_dns_response_size_bytes",
];

const ID_SHIFT: u32 = 44;
const ZONE_SHIFT: u32 = 24;

fn id_of(k: u64) -> u32 {
    (k >> ID_SHIFT) as u32
}
fn zone_of(k: u64) -> u32 {
    ((k >> ZONE_SHIFT) & 0xf_ffff) as u32
}
fn byte(k: u64, i: u32) -> u8 {
    (k >> (8 * i)) as u8
}

/// Adds one to the counter at `k`, or counts a drop when the family is full.
#[inline]
fn bump(map: &mut FxHashMap<u64, u64>, k: u64, max: usize, dropped: &mut u64) {
    let n = map.len();
    match map.entry(k) {
        Entry::Occupied(mut e) => *e.get_mut() += 1,
        Entry::Vacant(e) if n < max => {
            e.insert(1);
        }
        Entry::Vacant(_) => *dropped += 1,
    }
}

/// Observes `v` in the histogram at `k`, or counts a drop when the family is full.
#[inline]
fn observe(
    map: &mut FxHashMap<u64, Histogram>,
    k: u64,
    bounds: &[f64],
    v: f64,
    max: usize,
    dropped: &mut u64,
) {
    let n = map.len();
    match map.entry(k) {
        Entry::Occupied(mut e) => e.get_mut().observe(bounds, v),
        Entry::Vacant(e) if n < max => e.insert(Histogram::default()).observe(bounds, v),
        Entry::Vacant(_) => *dropped += 1,
    }
}

/// The in-process metric state of one aggregate instance (see the crate docs for the
/// families and their labels). Not `Sync`-shared by itself: the binary owns it (or puts it
/// behind a mutex) and calls [`push`](Self::push) per event and the exporters per scrape
/// or batch.
#[derive(Debug, Clone)]
pub struct Aggregator {
    spec: AggregateSpec,
    identities: Interner,
    zones: Interner,
    messages: FxHashMap<u64, u64>,
    latency: FxHashMap<u64, Histogram>,
    size: FxHashMap<u64, Histogram>,
    cd_requests: FxHashMap<u64, u64>,
    cd_responses: FxHashMap<u64, u64>,
    cd_duration: FxHashMap<u64, Histogram>,
    cd_request_size: FxHashMap<u64, Histogram>,
    cd_response_size: FxHashMap<u64, Histogram>,
    /// By identity index, made at the identity's first query when `top_n > 0`.
    top: Vec<Option<Box<Top>>>,
    /// `"1"`, `"2"`, ... `top_n`: the `rank` label values.
    ranks: Vec<String>,
    /// By identity index, made at the identity's first query when `geo_top_n > 0`.
    geo: Vec<Option<Box<GeoCounts>>>,
    /// Queries counted as `other` because their identity had `geo_top_n` keys:
    /// countries, ASNs.
    geo_folded: [u64; 2],
    events: u64,
    invalid_latency: u64,
    dropped: [u64; 8],
}

impl Aggregator {
    /// Empty state for a validated spec.
    pub fn new(spec: AggregateSpec) -> Self {
        let ranks = (1..=spec.top_n).map(|r| r.to_string()).collect();
        Aggregator {
            identities: Interner::new(spec.max_identities),
            zones: Interner::new(spec.max_zones),
            spec,
            messages: FxHashMap::default(),
            latency: FxHashMap::default(),
            size: FxHashMap::default(),
            cd_requests: FxHashMap::default(),
            cd_responses: FxHashMap::default(),
            cd_duration: FxHashMap::default(),
            cd_request_size: FxHashMap::default(),
            cd_response_size: FxHashMap::default(),
            top: Vec::new(),
            ranks,
            geo: Vec::new(),
            geo_folded: [0; 2],
            events: 0,
            invalid_latency: 0,
            dropped: [0; 8],
        }
    }

    /// The spec it was made with.
    pub fn spec(&self) -> &AggregateSpec {
        &self.spec
    }

    /// Events pushed so far.
    pub fn events(&self) -> u64 {
        self.events
    }

    /// Identities beyond `max_identities`, folded into `identity="other"`.
    pub fn identity_overflow(&self) -> u64 {
        self.identities.overflow()
    }

    /// Events left out of a family because it had `max_series` label sets, by family name.
    pub fn series_dropped(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        FAMILY_NAMES
            .iter()
            .copied()
            .zip(self.dropped.iter().copied())
    }

    /// Counts one event in every family it belongs to.
    pub fn push(&mut self, ev: &EventView<'_>) {
        self.events += 1;
        let max = self.spec.max_series;
        let id_index = self.identities.get(ev.identity());
        let id = u64::from(id_index) << ID_SHIFT;
        if self.spec.top_n > 0 && ev.is_query() {
            self.offer_top(id_index as usize, ev);
        }
        if self.spec.geo_top_n > 0 && ev.is_query() {
            self.count_geo(id_index as usize, ev);
        }
        let op = labels::operation(ev.operation());
        let proto = labels::protocol(ev.protocol());
        let fam = labels::family(ev.family());
        let qtype = labels::qtype(ev.qtype());
        let rcode = labels::rcode(ev.rcode());
        let d = &mut self.dropped;

        let k = id
            | u64::from(op)
            | u64::from(proto) << 8
            | u64::from(fam) << 16
            | u64::from(qtype) << 32
            | u64::from(rcode) << 24;
        bump(&mut self.messages, k, max, &mut d[Fam::Messages as usize]);

        let latency = match ev.latency() {
            Some(l) if (0.0..=MAX_LATENCY).contains(&l) => Some(l),
            Some(_) => {
                self.invalid_latency += 1;
                None
            }
            None => None,
        };
        if let Some(l) = latency {
            let k = id | u64::from(op);
            let dr = &mut d[Fam::Latency as usize];
            observe(&mut self.latency, k, &LATENCY_BUCKETS, l, max, dr);
        }
        let size = ev.size().map(f64::from);
        if let Some(s) = size {
            let k = id | u64::from(op) | u64::from(proto) << 8;
            let dr = &mut d[Fam::Size as usize];
            observe(&mut self.size, k, &SIZE_BUCKETS, s, max, dr);
        }

        if !self.spec.coredns {
            return;
        }
        let zone = ev.dnstap.query_zone.as_deref().unwrap_or(".");
        let zone = u64::from(self.zones.get_shown(Some(zone), labels::dotted)) << ZONE_SHIFT;
        let cproto = labels::coredns_proto(proto);
        let base = id | zone;
        if ev.is_query() {
            let k = base | u64::from(cproto) | u64::from(fam) << 8 | u64::from(qtype) << 16;
            bump(
                &mut self.cd_requests,
                k,
                max,
                &mut d[Fam::CdRequests as usize],
            );
            if let Some(s) = size {
                let k = base | u64::from(cproto);
                let dr = &mut d[Fam::CdRequestSize as usize];
                observe(&mut self.cd_request_size, k, &SIZE_BUCKETS, s, max, dr);
            }
        } else if ev.is_response() {
            let k = base | u64::from(rcode);
            bump(
                &mut self.cd_responses,
                k,
                max,
                &mut d[Fam::CdResponses as usize],
            );
            if let Some(l) = latency {
                let k = base | u64::from(qtype);
                let dr = &mut d[Fam::CdDuration as usize];
                observe(&mut self.cd_duration, k, &LATENCY_BUCKETS, l, max, dr);
            }
            if let Some(s) = size {
                let k = base | u64::from(cproto);
                let dr = &mut d[Fam::CdResponseSize as usize];
                observe(&mut self.cd_response_size, k, &SIZE_BUCKETS, s, max, dr);
            }
        }
    }

    /// Queries folded into `other` by the geo families' bound: (family, count).
    pub fn geo_folded(&self) -> [(&'static str, u64); 2] {
        [
            (CLIENT_COUNTRY, self.geo_folded[0]),
            (CLIENT_ASN, self.geo_folded[1]),
        ]
    }

    /// Counts one query of identity `i` by client country and ASN.
    fn count_geo(&mut self, i: usize, ev: &EventView<'_>) {
        if self.geo.len() <= i {
            self.geo.resize_with(i + 1, || None);
        }
        let max = self.spec.geo_top_n;
        let g = self.geo[i].get_or_insert_with(Box::default);
        match ev.client_country().map(|c| clip(c, MAX_COUNTRY_LEN)) {
            None | Some("" | GEO_UNKNOWN) => g.country_unknown += 1,
            // A producer's own "other" cannot make a second series of that name.
            Some(GEO_OTHER) => g.country_other += 1,
            Some(c) => {
                if let Some(n) = g.countries.get_mut(c) {
                    *n += 1;
                } else if g.countries.len() < max {
                    g.countries.insert(c.into(), 1);
                } else {
                    g.country_other += 1;
                    self.geo_folded[0] += 1;
                }
            }
        }
        match ev.client_asn() {
            None => g.asn_unknown += 1,
            Some(asn) => {
                let n = g.asns.len();
                match g.asns.entry(asn) {
                    Entry::Occupied(mut e) => e.get_mut().1 += 1,
                    Entry::Vacant(e) if n < max => {
                        let org = match ev.client_as_org().map(|o| clip(o, MAX_AS_ORG_LEN)) {
                            None | Some("") => GEO_UNKNOWN,
                            Some(o) => o,
                        };
                        e.insert((org.into(), 1));
                    }
                    Entry::Vacant(_) => {
                        g.asn_other += 1;
                        self.geo_folded[1] += 1;
                    }
                }
            }
        }
    }

    /// `dnstap_client_country_total` and `dnstap_client_asn_total`: per identity that has
    /// queried, its kept keys (sorted), then `other` and `unknown` (always present).
    fn visit_geo(&self, sink: &mut impl Sink) {
        let inst = self.spec.instance.as_str();
        let geos = || {
            self.geo
                .iter()
                .enumerate()
                .filter_map(|(i, g)| Some((self.identities.name(i as u32), g.as_deref()?)))
        };
        sink.family(
            CLIENT_COUNTRY,
            "*_QUERY events by the client's country (geo.country, ISO 3166-1 alpha-2) per identity; the first geo_top_n countries of an identity have a series, later ones count as country=\"other\"; no country: country=\"unknown\".",
            Kind::Counter,
        );
        for (id, g) in geos() {
            let mut keys: Vec<(&str, u64)> =
                g.countries.iter().map(|(k, v)| (k.as_ref(), *v)).collect();
            keys.sort_unstable();
            keys.push((GEO_OTHER, g.country_other));
            keys.push((GEO_UNKNOWN, g.country_unknown));
            for (country, v) in keys {
                let l = [("instance", inst), ("identity", id), ("country", country)];
                sink.sample(CLIENT_COUNTRY, &l, Le::No, Value::Int(v));
            }
        }
        sink.family(
            CLIENT_ASN,
            "*_QUERY events by the client's autonomous system (geo.asn, with the as-org first seen for it, \"unknown\" when none) per identity; the first geo_top_n ASNs of an identity have a series, later ones count as asn=\"other\"; no ASN: asn=\"unknown\".",
            Kind::Counter,
        );
        for (id, g) in geos() {
            let mut keys: Vec<(u32, &str, u64)> = g
                .asns
                .iter()
                .map(|(k, (org, v))| (*k, org.as_ref(), *v))
                .collect();
            keys.sort_unstable();
            for (asn, org, v) in keys {
                let asn = asn.to_string();
                let l = [
                    ("instance", inst),
                    ("identity", id),
                    ("asn", asn.as_str()),
                    ("as_org", org),
                ];
                sink.sample(CLIENT_ASN, &l, Le::No, Value::Int(v));
            }
            for (asn, v) in [(GEO_OTHER, g.asn_other), (GEO_UNKNOWN, g.asn_unknown)] {
                let l = [
                    ("instance", inst),
                    ("identity", id),
                    ("asn", asn),
                    ("as_org", asn),
                ];
                sink.sample(CLIENT_ASN, &l, Le::No, Value::Int(v));
            }
        }
        sink.family(
            GEO_FOLDED,
            "*_QUERY events counted as \"other\" in a geo family because their identity already had geo_top_n countries / ASNs.",
            Kind::Counter,
        );
        for (name, v) in self.geo_folded() {
            sink.sample(
                GEO_FOLDED,
                &[("instance", inst), ("metric", name)],
                Le::No,
                Value::Int(v),
            );
        }
    }

    /// Feeds the top-N summaries of identity `i`.
    fn offer_top(&mut self, i: usize, ev: &EventView<'_>) {
        if self.top.len() <= i {
            self.top.resize_with(i + 1, || None);
        }
        let cap = self.spec.top_capacity;
        let t = self.top[i].get_or_insert_with(|| {
            Box::new(Top {
                qnames: SpaceSaving::new(cap),
                clients: SpaceSaving::new(cap),
            })
        });
        if let Some(q) = ev.qname() {
            t.qnames.offer(q, |q, old| {
                let mut b = old.unwrap_or_default();
                b.clear();
                b.push_str(q);
                b
            });
        }
        if let Some(ip) = ev.client_ip() {
            t.clients.offer(&ip, |ip, _| *ip);
        }
    }

    /// The top-N families: fixed `rank` series with the counts, and `_info` series naming
    /// the key at each filled rank.
    fn visit_top(&self, sink: &mut impl Sink) {
        let n = self.spec.top_n;
        let tops = || {
            self.top
                .iter()
                .enumerate()
                .filter_map(|(i, t)| Some((self.identities.name(i as u32), t.as_deref()?)))
        };
        let qnames: Ranked<'_> = tops()
            .map(|(id, t)| {
                let v = t.qnames.top(n).into_iter();
                (
                    id,
                    v.map(|(k, c, _)| (Cow::Borrowed(k.as_str()), c)).collect(),
                )
            })
            .collect();
        self.top_family(sink, TOP_QNAME, &qnames);
        let clients: Ranked<'_> = tops()
            .map(|(id, t)| {
                let v = t.clients.top(n).into_iter();
                (
                    id,
                    v.map(|(k, c, _)| (Cow::Owned(k.to_string()), c)).collect(),
                )
            })
            .collect();
        self.top_family(sink, TOP_CLIENT, &clients);
    }

    fn top_family(&self, sink: &mut impl Sink, f: &TopFamily, rows: &Ranked<'_>) {
        let inst = self.spec.instance.as_str();
        sink.family(f.count, f.count_help, Kind::Gauge);
        for (id, top) in rows {
            for (r, rank) in self.ranks.iter().enumerate() {
                let v = top.get(r).map_or(0, |(_, c)| *c);
                let l = [
                    ("instance", inst),
                    ("identity", *id),
                    ("rank", rank.as_str()),
                ];
                sink.sample(f.count, &l, Le::No, Value::Int(v));
            }
        }
        sink.family(f.info, f.info_help, Kind::Gauge);
        for (id, top) in rows {
            for ((k, _), rank) in top.iter().zip(&self.ranks) {
                let l = [
                    ("instance", inst),
                    ("identity", *id),
                    ("rank", rank.as_str()),
                    (f.key, k.as_ref()),
                ];
                sink.sample(f.info, &l, Le::No, Value::Int(1));
            }
        }
    }

    /// Every family and sample, in a fixed order (families as listed in the crate docs,
    /// series sorted by their label key), so two exports of the same state are equal.
    pub(crate) fn visit(&self, sink: &mut impl Sink) {
        let inst = self.spec.instance.as_str();
        let ident = |k: u64| self.identities.name(id_of(k));
        let zone = |k: u64| self.zones.name(zone_of(k));

        counters(
            sink,
            "dnstap_messages_total",
            "dnstap messages by identity, operation, socket protocol and family, qtype and rcode.",
            &self.messages,
            |k| {
                [
                    ("instance", inst),
                    ("identity", ident(k)),
                    ("operation", labels::operation_name(byte(k, 0))),
                    ("protocol", labels::protocol_name(byte(k, 1))),
                    ("family", labels::family_name(byte(k, 2))),
                    ("qtype", labels::qtype_name(byte(k, 4))),
                    ("rcode", labels::rcode_name(byte(k, 3))),
                ]
            },
        );
        histograms(
            sink,
            "dnstap_latency_seconds",
            "dnstap latency (response time - query time) in seconds, for events that carry it.",
            &LATENCY_BUCKETS,
            &self.latency,
            |k| {
                [
                    ("instance", inst),
                    ("identity", ident(k)),
                    ("operation", labels::operation_name(byte(k, 0))),
                ]
            },
        );
        histograms(
            sink,
            "dnstap_message_size_bytes",
            "Size of the DNS message in bytes.",
            &SIZE_BUCKETS,
            &self.size,
            |k| {
                [
                    ("instance", inst),
                    ("identity", ident(k)),
                    ("operation", labels::operation_name(byte(k, 0))),
                    ("protocol", labels::protocol_name(byte(k, 1))),
                ]
            },
        );
        if self.spec.coredns {
            counters(
                sink,
                "coredns_dns_requests_total",
                "Counter of DNS requests made per zone, protocol and family (from dnstap *_QUERY).",
                &self.cd_requests,
                |k| {
                    [
                        ("instance", inst),
                        ("server", ident(k)),
                        ("zone", zone(k)),
                        ("proto", labels::coredns_proto_name(byte(k, 0))),
                        ("family", labels::coredns_family_name(byte(k, 1))),
                        ("type", labels::qtype_name(byte(k, 2))),
                    ]
                },
            );
            counters(
                sink,
                "coredns_dns_responses_total",
                "Counter of response status codes (from dnstap *_RESPONSE).",
                &self.cd_responses,
                |k| {
                    [
                        ("instance", inst),
                        ("server", ident(k)),
                        ("zone", zone(k)),
                        ("rcode", labels::rcode_name(byte(k, 0))),
                    ]
                },
            );
            histograms(
                sink,
                "coredns_dns_request_duration_seconds",
                "Histogram of the time (in seconds) each request took (dnstap latency of *_RESPONSE).",
                &LATENCY_BUCKETS,
                &self.cd_duration,
                |k| {
                    [
                        ("instance", inst),
                        ("server", ident(k)),
                        ("zone", zone(k)),
                        ("type", labels::qtype_name(byte(k, 0))),
                    ]
                },
            );
            histograms(
                sink,
                "coredns_dns_request_size_bytes",
                "Size of the EDNS0 UDP buffer in bytes (64K for TCP) (here: DNS message size of *_QUERY).",
                &SIZE_BUCKETS,
                &self.cd_request_size,
                |k| {
                    [
                        ("instance", inst),
                        ("server", ident(k)),
                        ("zone", zone(k)),
                        ("proto", labels::coredns_proto_name(byte(k, 0))),
                    ]
                },
            );
            histograms(
                sink,
                "coredns_dns_response_size_bytes",
                "Size of the returned response in bytes (from dnstap *_RESPONSE).",
                &SIZE_BUCKETS,
                &self.cd_response_size,
                |k| {
                    [
                        ("instance", inst),
                        ("server", ident(k)),
                        ("zone", zone(k)),
                        ("proto", labels::coredns_proto_name(byte(k, 0))),
                    ]
                },
            );
        }

        if self.spec.top_n > 0 {
            self.visit_top(sink);
        }
        if self.spec.geo_top_n > 0 {
            self.visit_geo(sink);
        }
        sink.family(
            "tapbus_aggregate_events_total",
            "Events aggregated.",
            Kind::Counter,
        );
        sink.sample(
            "tapbus_aggregate_events_total",
            &[("instance", inst)],
            Le::No,
            Value::Int(self.events),
        );
        sink.family(
            "tapbus_aggregate_identity_overflow_total",
            "Events whose identity was beyond max_identities, counted as identity=\"other\".",
            Kind::Counter,
        );
        sink.sample(
            "tapbus_aggregate_identity_overflow_total",
            &[("instance", inst)],
            Le::No,
            Value::Int(self.identities.overflow()),
        );
        sink.family(
            "tapbus_aggregate_zone_overflow_total",
            "Events whose zone was beyond max_zones, counted as zone=\"other\".",
            Kind::Counter,
        );
        sink.sample(
            "tapbus_aggregate_zone_overflow_total",
            &[("instance", inst)],
            Le::No,
            Value::Int(self.zones.overflow()),
        );
        sink.family(
            "tapbus_aggregate_invalid_latency_total",
            "Events with a negative, non-finite or over a year latency, not observed.",
            Kind::Counter,
        );
        sink.sample(
            "tapbus_aggregate_invalid_latency_total",
            &[("instance", inst)],
            Le::No,
            Value::Int(self.invalid_latency),
        );
        sink.family(
            "tapbus_aggregate_series_dropped_total",
            "Events left out of a metric family that had max_series label sets.",
            Kind::Counter,
        );
        let n = if self.spec.coredns { 8 } else { 3 };
        for (name, v) in self.series_dropped().take(n) {
            sink.sample(
                "tapbus_aggregate_series_dropped_total",
                &[("instance", inst), ("metric", name)],
                Le::No,
                Value::Int(v),
            );
        }
    }
}

fn sorted<V>(map: &FxHashMap<u64, V>) -> Vec<(u64, &V)> {
    let mut v: Vec<(u64, &V)> = map.iter().map(|(k, v)| (*k, v)).collect();
    v.sort_unstable_by_key(|(k, _)| *k);
    v
}

fn counters<'a, const N: usize>(
    sink: &mut impl Sink,
    name: &'static str,
    help: &'static str,
    map: &FxHashMap<u64, u64>,
    labels: impl Fn(u64) -> [(&'static str, &'a str); N],
) {
    sink.family(name, help, Kind::Counter);
    for (k, v) in sorted(map) {
        sink.sample(name, &labels(k), Le::No, Value::Int(*v));
    }
}

fn histograms<'a, const N: usize>(
    sink: &mut impl Sink,
    name: &'static str,
    help: &'static str,
    bounds: &'static [f64],
    map: &FxHashMap<u64, Histogram>,
    labels: impl Fn(u64) -> [(&'static str, &'a str); N],
) {
    sink.family(name, help, Kind::Histogram(bounds));
    let bucket = format!("{name}_bucket");
    let sum = format!("{name}_sum");
    let count = format!("{name}_count");
    for (k, h) in sorted(map) {
        let l = labels(k);
        for (i, c) in h.cumulative(bounds).enumerate() {
            let le = bounds.get(i).map_or(Le::Inf, |b| Le::Bound(*b));
            sink.sample(&bucket, &l, le, Value::Int(c));
        }
        sink.sample(&sum, &l, Le::No, Value::Float(h.sum()));
        sink.sample(&count, &l, Le::No, Value::Int(h.count()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_edges_are_inclusive() {
        let mut h = Histogram::default();
        for v in [0.0, 0.00025, 0.00025000001, 8.192, 8.2, 1e9] {
            h.observe(&LATENCY_BUCKETS, v);
        }
        let c: Vec<u64> = h.cumulative(&LATENCY_BUCKETS).collect();
        assert_eq!(c.len(), 17);
        assert_eq!(c[0], 2, "0 and exactly 0.00025 are le=0.00025");
        assert_eq!(c[1], 3);
        assert_eq!(c[15], 4, "8.192 is le=8.192");
        assert_eq!(c[16], 6, "+Inf has everything");
        assert_eq!(h.count(), 6);

        let mut s = Histogram::default();
        for v in [0.0, 1.0, 100.0, 511.0, 512.0, 64000.0, 65535.0] {
            s.observe(&SIZE_BUCKETS, v);
        }
        let c: Vec<u64> = s.cumulative(&SIZE_BUCKETS).collect();
        assert_eq!(c.len(), 15);
        assert_eq!(&c[..3], &[1, 3, 3]);
        assert_eq!(c[5], 4, "511 is le=511");
        assert_eq!(c[6], 5, "512 is le=1023");
        assert_eq!(c[13], 6);
        assert_eq!(c[14], 7);
        assert_eq!(
            s.sum(),
            0.0 + 1.0 + 100.0 + 511.0 + 512.0 + 64000.0 + 65535.0
        );
    }

    #[test]
    fn buckets_are_corednss() {
        for w in LATENCY_BUCKETS.windows(2) {
            assert_eq!(w[1], w[0] * 2.0);
        }
        assert_eq!(LATENCY_BUCKETS[0], 0.00025);
        assert_eq!(LATENCY_BUCKETS[15], 8.192);
    }
}

#[cfg(test)]
mod aggregator_tests {
    use super::*;
    use crate::config::AggregateConfig;
    use crate::testutil::Ev;

    fn agg(f: impl FnOnce(&mut AggregateConfig)) -> Aggregator {
        let mut c = AggregateConfig {
            instance: "t1".into(),
            ..Default::default()
        };
        f(&mut c);
        Aggregator::new(c.validate("aggregate").expect("valid"))
    }

    fn text(a: &Aggregator) -> String {
        a.exposition()
    }

    #[test]
    fn counts_with_every_label_and_instance() {
        let mut a = agg(|_| {});
        Ev::default().push(&mut a, 3);
        let t = text(&a);
        assert!(
            t.contains(
                "dnstap_messages_total{instance=\"t1\",identity=\"ns1\",operation=\"CLIENT_QUERY\",\
                 protocol=\"UDP\",family=\"INET\",qtype=\"A\",rcode=\"NOERROR\"} 3\n"
            ),
            "{t}"
        );
        for line in t.lines().filter(|l| !l.starts_with('#')) {
            assert!(line.contains("{instance=\"t1\""), "{line}");
        }
        assert!(t.contains("tapbus_aggregate_events_total{instance=\"t1\"} 3\n"));
        assert!(t.contains("# TYPE dnstap_messages_total counter\n"));
        assert!(t.contains("# TYPE dnstap_message_size_bytes histogram\n"));
        assert!(!t.contains("coredns_"), "profile off");
    }

    #[test]
    fn absent_and_unlisted_values_are_placeholders() {
        let mut a = agg(|_| {});
        Ev {
            op: "UNKNOWN(77)",
            identity: None,
            protocol: None,
            family: None,
            qtype: Some("TYPE65280"),
            rcode: Some("RCODE12"),
            size: None,
            ..Default::default()
        }
        .push(&mut a, 1);
        Ev {
            qtype: None,
            rcode: None,
            protocol: Some("UNKNOWN(9)"),
            family: Some("UNKNOWN(3)"),
            ..Default::default()
        }
        .push(&mut a, 1);
        let t = text(&a);
        assert!(
            t.contains(
                "dnstap_messages_total{instance=\"t1\",identity=\"none\",operation=\"other\",\
                 protocol=\"none\",family=\"none\",qtype=\"other\",rcode=\"other\"} 1\n"
            ),
            "{t}"
        );
        assert!(
            t.contains(
                "{instance=\"t1\",identity=\"ns1\",operation=\"CLIENT_QUERY\",protocol=\"other\",\
                 family=\"other\",qtype=\"none\",rcode=\"none\"} 1\n"
            ),
            "{t}"
        );
        assert!(!t.contains("=\"\""), "no empty label values");
    }

    #[test]
    fn histograms_in_text() {
        let mut a = agg(|_| {});
        let r = Ev {
            op: "CLIENT_RESPONSE",
            latency: Some(0.0005),
            size: Some(511),
            ..Default::default()
        };
        r.push(&mut a, 2);
        Ev {
            latency: Some(20.0),
            size: Some(70000),
            ..r.clone()
        }
        .push(&mut a, 1);
        for bad in [-1.0, 1e300] {
            Ev {
                latency: Some(bad),
                ..r.clone()
            }
            .push(&mut a, 1);
        }
        let t = text(&a);
        let l = "{instance=\"t1\",identity=\"ns1\",operation=\"CLIENT_RESPONSE\"";
        for want in [
            format!("dnstap_latency_seconds_bucket{l},le=\"0.00025\"}} 0\n"),
            format!("dnstap_latency_seconds_bucket{l},le=\"0.0005\"}} 2\n"),
            format!("dnstap_latency_seconds_bucket{l},le=\"8.192\"}} 2\n"),
            format!("dnstap_latency_seconds_bucket{l},le=\"+Inf\"}} 3\n"),
            format!("dnstap_latency_seconds_sum{l}}} 20.001\n"),
            format!("dnstap_latency_seconds_count{l}}} 3\n"),
            format!("dnstap_message_size_bytes_bucket{l},protocol=\"UDP\",le=\"400\"}} 0\n"),
            format!("dnstap_message_size_bytes_bucket{l},protocol=\"UDP\",le=\"511\"}} 4\n"),
            format!("dnstap_message_size_bytes_bucket{l},protocol=\"UDP\",le=\"64000\"}} 4\n"),
            format!("dnstap_message_size_bytes_bucket{l},protocol=\"UDP\",le=\"+Inf\"}} 5\n"),
            format!("dnstap_message_size_bytes_count{l},protocol=\"UDP\"}} 5\n"),
            "tapbus_aggregate_invalid_latency_total{instance=\"t1\"} 2\n".to_string(),
        ] {
            assert!(t.contains(&want), "{want}\n---\n{t}");
        }
        // le comes after the other labels, buckets are cumulative and in order.
        let buckets: Vec<&str> = t
            .lines()
            .filter(|x| x.starts_with("dnstap_latency_seconds_bucket"))
            .collect();
        assert_eq!(buckets.len(), 17);
    }

    #[test]
    fn identities_are_bounded() {
        let mut a = agg(|c| c.max_identities = 2);
        for id in ["a", "b", "c", "d", "a"] {
            let id: &'static str = id;
            Ev {
                identity: Some(id),
                ..Default::default()
            }
            .push(&mut a, 1);
        }
        assert_eq!(a.identity_overflow(), 2);
        let t = text(&a);
        assert!(t.contains("identity=\"a\",operation=\"CLIENT_QUERY\",protocol=\"UDP\",family=\"INET\",qtype=\"A\",rcode=\"NOERROR\"} 2\n"), "{t}");
        assert!(t.contains("identity=\"other\",operation=\"CLIENT_QUERY\",protocol=\"UDP\",family=\"INET\",qtype=\"A\",rcode=\"NOERROR\"} 2\n"), "{t}");
        assert!(!t.contains("identity=\"c\""));
        assert!(t.contains("tapbus_aggregate_identity_overflow_total{instance=\"t1\"} 2\n"));
    }

    #[test]
    fn series_are_bounded_per_family() {
        let mut a = agg(|c| c.max_series = 3);
        for q in ["A", "AAAA", "MX", "TXT", "NS", "A"] {
            let q: &'static str = q;
            Ev {
                qtype: Some(q),
                ..Default::default()
            }
            .push(&mut a, 1);
        }
        let t = text(&a);
        let series = t
            .lines()
            .filter(|l| l.starts_with("dnstap_messages_total{"))
            .count();
        assert_eq!(series, 3);
        assert!(t.contains("qtype=\"A\",rcode=\"NOERROR\"} 2\n"), "{t}");
        assert!(
            t.contains(
                "tapbus_aggregate_series_dropped_total{instance=\"t1\",metric=\"dnstap_messages_total\"} 2\n"
            ),
            "{t}"
        );
        // The size family has one label set, so it counted everything.
        assert!(t.contains("dnstap_message_size_bytes_count{instance=\"t1\",identity=\"ns1\",operation=\"CLIENT_QUERY\",protocol=\"UDP\"} 6\n"));
        assert_eq!(
            a.series_dropped()
                .find(|(n, _)| *n == "dnstap_messages_total"),
            Some(("dnstap_messages_total", 2))
        );
    }

    fn geo(country: Option<&'static str>, asn: Option<u32>, org: Option<&'static str>) -> Ev {
        Ev {
            country,
            asn,
            as_org: org,
            ..Default::default()
        }
    }

    #[test]
    fn geo_families_count_queries_by_country_and_asn() {
        let mut a = agg(|_| {});
        let t = text(&a);
        // Before any query: the families and the fold counters, no series per identity.
        assert!(
            t.contains("# TYPE dnstap_client_country_total counter\n"),
            "{t}"
        );
        assert!(!t.contains("dnstap_client_country_total{"), "{t}");
        for m in ["dnstap_client_country_total", "dnstap_client_asn_total"] {
            let want =
                format!("tapbus_aggregate_geo_folded_total{{instance=\"t1\",metric=\"{m}\"}} 0\n");
            assert!(t.contains(&want), "{want}\n{t}");
        }
        geo(Some("FR"), Some(3215), Some("Orange")).push(&mut a, 3);
        geo(Some("DE"), None, None).push(&mut a, 1);
        geo(None, Some(15169), None).push(&mut a, 2);
        geo(None, None, None).push(&mut a, 4);
        // Responses are not counted.
        Ev {
            op: "CLIENT_RESPONSE",
            ..geo(Some("FR"), Some(3215), Some("Orange"))
        }
        .push(&mut a, 5);
        let t = text(&a);
        let c = |country: &str, v: u64| {
            format!(
                "dnstap_client_country_total{{instance=\"t1\",identity=\"ns1\",country=\"{country}\"}} {v}\n"
            )
        };
        let s = |asn: &str, org: &str, v: u64| {
            format!(
                "dnstap_client_asn_total{{instance=\"t1\",identity=\"ns1\",asn=\"{asn}\",as_org=\"{org}\"}} {v}\n"
            )
        };
        for want in [
            c("DE", 1),
            c("FR", 3),
            c("other", 0),
            c("unknown", 6),
            s("3215", "Orange", 3),
            s("15169", "unknown", 2),
            s("other", "other", 0),
            s("unknown", "unknown", 5),
        ] {
            assert!(t.contains(&want), "{want}\n{t}");
        }
        // Sorted: countries by name, ASNs by number, then other and unknown.
        let at = |w: &str| t.find(w).expect(w);
        assert!(at(&c("DE", 1)) < at(&c("FR", 3)) && at(&c("FR", 3)) < at(&c("other", 0)));
        assert!(at(&s("3215", "Orange", 3)) < at(&s("15169", "unknown", 2)));
        assert!(!t.contains("=\"\""), "no empty label values");
    }

    #[test]
    fn geo_families_are_bounded_and_never_go_down() {
        let mut a = agg(|c| c.geo_top_n = 2);
        let countries: [&'static str; 5] = ["FR", "DE", "US", "FR", "BR"];
        for (i, country) in countries.into_iter().enumerate() {
            geo(Some(country), Some(100 + i as u32), Some("x")).push(&mut a, 1);
        }
        // FR and DE keep their series; US and BR are folded; FR again counts on FR.
        geo(Some("US"), Some(100), Some("renamed")).push(&mut a, 1);
        geo(Some("other"), None, None).push(&mut a, 1);
        let t = text(&a);
        let l = "{instance=\"t1\",identity=\"ns1\"";
        for want in [
            format!("dnstap_client_country_total{l},country=\"FR\"}} 2\n"),
            format!("dnstap_client_country_total{l},country=\"DE\"}} 1\n"),
            format!("dnstap_client_country_total{l},country=\"other\"}} 4\n"),
            // The organisation is the one first seen for the ASN.
            format!("dnstap_client_asn_total{l},asn=\"100\",as_org=\"x\"}} 2\n"),
            format!("dnstap_client_asn_total{l},asn=\"101\",as_org=\"x\"}} 1\n"),
            format!("dnstap_client_asn_total{l},asn=\"other\",as_org=\"other\"}} 3\n"),
            "tapbus_aggregate_geo_folded_total{instance=\"t1\",metric=\"dnstap_client_country_total\"} 3\n".into(),
            "tapbus_aggregate_geo_folded_total{instance=\"t1\",metric=\"dnstap_client_asn_total\"} 3\n".into(),
        ] {
            assert!(t.contains(&want), "{want}\n{t}");
        }
        assert!(
            !t.contains("country=\"US\"") && !t.contains("asn=\"102\""),
            "{t}"
        );
        let series = t
            .lines()
            .filter(|l| l.starts_with("dnstap_client_country_total{"))
            .count();
        assert_eq!(series, 2 + 2, "two kept, other, unknown");
        assert_eq!(
            a.geo_folded(),
            [
                ("dnstap_client_country_total", 3),
                ("dnstap_client_asn_total", 3)
            ]
        );
    }

    #[test]
    fn geo_families_off_and_long_values_clipped() {
        let mut a = agg(|c| c.geo_top_n = 0);
        geo(Some("FR"), Some(1), None).push(&mut a, 1);
        let t = text(&a);
        assert!(
            !t.contains("dnstap_client_") && !t.contains("geo_folded"),
            "{t}"
        );
        let mut a = agg(|_| {});
        let long: &'static str = "ééééééééééééééééééééé";
        geo(Some(long), None, None).push(&mut a, 1);
        let t = text(&a);
        assert!(t.contains("country=\"éééééééé\"} 1\n"), "{t}");
    }

    #[test]
    fn escapes_identities() {
        let mut a = agg(|_| {});
        Ev {
            identity: Some("ns\"1\\x\ny"),
            ..Default::default()
        }
        .push(&mut a, 1);
        let t = text(&a);
        assert!(t.contains(r#"identity="ns\"1\\x\ny""#), "{t}");
    }

    #[test]
    fn coredns_profile() {
        let mut a = agg(|c| c.coredns = true);
        Ev {
            size: Some(30),
            ..Default::default()
        }
        .push(&mut a, 2);
        Ev {
            op: "AUTH_QUERY",
            protocol: Some("DOT"),
            family: Some("INET6"),
            qtype: Some("LOC"),
            zone: Some("example.org"),
            ..Default::default()
        }
        .push(&mut a, 1);
        Ev {
            op: "CLIENT_RESPONSE",
            rcode: Some("NXDOMAIN"),
            latency: Some(0.003),
            size: Some(120),
            ..Default::default()
        }
        .push(&mut a, 1);
        let t = text(&a);
        for want in [
            "coredns_dns_requests_total{instance=\"t1\",server=\"ns1\",zone=\".\",proto=\"udp\",family=\"1\",type=\"A\"} 2\n",
            "coredns_dns_requests_total{instance=\"t1\",server=\"ns1\",zone=\"example.org.\",proto=\"tcp\",family=\"2\",type=\"other\"} 1\n",
            "coredns_dns_responses_total{instance=\"t1\",server=\"ns1\",zone=\".\",rcode=\"NXDOMAIN\"} 1\n",
            "coredns_dns_request_duration_seconds_bucket{instance=\"t1\",server=\"ns1\",zone=\".\",type=\"A\",le=\"0.002\"} 0\n",
            "coredns_dns_request_duration_seconds_bucket{instance=\"t1\",server=\"ns1\",zone=\".\",type=\"A\",le=\"0.004\"} 1\n",
            "coredns_dns_request_size_bytes_count{instance=\"t1\",server=\"ns1\",zone=\".\",proto=\"udp\"} 2\n",
            "coredns_dns_request_size_bytes_bucket{instance=\"t1\",server=\"ns1\",zone=\".\",proto=\"udp\",le=\"100\"} 2\n",
            "coredns_dns_response_size_bytes_bucket{instance=\"t1\",server=\"ns1\",zone=\".\",proto=\"udp\",le=\"100\"} 0\n",
            "coredns_dns_response_size_bytes_bucket{instance=\"t1\",server=\"ns1\",zone=\".\",proto=\"udp\",le=\"200\"} 1\n",
            "# TYPE coredns_dns_request_duration_seconds histogram\n",
        ] {
            assert!(t.contains(want), "{want}\n---\n{t}");
        }
    }

    #[test]
    fn exposition_is_deterministic() {
        let mut a = agg(|c| c.coredns = true);
        let mut b = agg(|c| c.coredns = true);
        for q in ["A", "MX", "AAAA", "TXT"] {
            let q: &'static str = q;
            let e = Ev {
                qtype: Some(q),
                ..Default::default()
            };
            e.push(&mut a, 1);
            e.push(&mut b, 1);
        }
        assert_eq!(text(&a), text(&b));
        assert_eq!(a.batch(5, 1), b.batch(5, 1));
    }

    #[test]
    fn top_n_has_fixed_rank_series() {
        let mut a = agg(|c| {
            c.top_n = 3;
            c.top_capacity = 10;
        });
        Ev::default().push(&mut a, 1);
        let t = text(&a);
        let l = "{instance=\"t1\",identity=\"ns1\"";
        for want in [
            "# TYPE dnstap_top_qname_count gauge\n".to_string(),
            format!("dnstap_top_qname_count{l},rank=\"1\"}} 1\n"),
            format!("dnstap_top_qname_count{l},rank=\"2\"}} 0\n"),
            format!("dnstap_top_qname_count{l},rank=\"3\"}} 0\n"),
            format!("dnstap_top_qname_info{l},rank=\"1\",qname=\"example.com\"}} 1\n"),
            format!("dnstap_top_client_count{l},rank=\"1\"}} 1\n"),
            format!("dnstap_top_client_info{l},rank=\"1\",client=\"192.0.2.1\"}} 1\n"),
        ] {
            assert!(t.contains(&want), "{want}\n---\n{t}");
        }
        assert!(!t.contains("rank=\"4\""));
        assert_eq!(
            t.matches("dnstap_top_qname_info{").count(),
            1,
            "filled ranks only"
        );
        // Responses are not counted.
        Ev {
            op: "CLIENT_RESPONSE",
            ..Default::default()
        }
        .push(&mut a, 5);
        assert!(
            a.exposition()
                .contains(&format!("dnstap_top_qname_count{l},rank=\"1\"}} 1\n"))
        );

        let mut off = agg(|c| c.top_n = 0);
        Ev::default().push(&mut off, 1);
        assert!(!off.exposition().contains("dnstap_top_"));
    }

    #[test]
    fn zones_are_bounded_and_dotted() {
        let mut a = agg(|c| {
            c.coredns = true;
            c.max_zones = 2;
        });
        for z in [None, Some("a.test"), Some("b.test"), Some("c.test.")] {
            Ev {
                op: "AUTH_QUERY",
                zone: z,
                ..Default::default()
            }
            .push(&mut a, 1);
        }
        let t = text(&a);
        for z in [".", "a.test.", "other"] {
            assert!(
                t.contains(&format!("zone=\"{z}\",proto=\"udp\"")),
                "{z}\n{t}"
            );
        }
        assert!(!t.contains("b.test"));
        assert!(t.contains("tapbus_aggregate_zone_overflow_total{instance=\"t1\"} 2\n"));
    }

    #[test]
    fn aggregator_is_send() {
        fn send<T: Send + 'static>() {}
        send::<Aggregator>();
    }
}
