//! tapbus-aggregate's pure core: dnstap events to bounded, cumulative Prometheus metrics.
//!
//! ```text
//! bus --JSON events--> aggregate --metrics--> /metrics scrape               (exposition)
//!                                         \-> tapbus.metrics.<instance> batches (batch)
//!                                              --> tapbus-mimir --> remote write
//! ```
//!
//! This crate is the middle of that picture and nothing else: no sockets, no runtime, no
//! clock. The binary (bus input, `/metrics` over HTTP, publishing, acks) owns one
//! [`Aggregator`], calls [`Aggregator::push`] with every [`tapbus_event::EventView`], and
//! [`Aggregator::exposition`] per scrape / [`Aggregator::write_batch_json`] per interval:
//!
//! ```
//! use tapbus_aggregate::{AggregateConfig, Aggregator, CONTENT_TYPE, batch};
//! use tapbus_event::EventView;
//!
//! let config = AggregateConfig { instance: "agg-1".into(), ..Default::default() };
//! let spec = config.validate("aggregate")?; // errors name the key: aggregate.max_series: ...
//! let mut agg = Aggregator::new(spec);
//!
//! // bus --JSON--> aggregate
//! let json = br#"{"network":{"family":"INET","protocol":"UDP"},"dns":{"length":40,"qtype":"A","rcode":"NOERROR"},"dnstap":{"operation":"CLIENT_QUERY","identity":"ns1"}}"#;
//! agg.push(&EventView::parse(json)?);
//!
//! // GET /metrics, served with Content-Type CONTENT_TYPE
//! let text = agg.exposition();
//! assert!(text.contains(r#"dnstap_messages_total{instance="agg-1",identity="ns1",operation="CLIENT_QUERY",protocol="UDP",family="INET",qtype="A",rcode="NOERROR"} 1"#));
//! # let _ = CONTENT_TYPE;
//!
//! // Every interval: the whole state, stamped by the caller's clock and numbered.
//! let (now_ms, seq) = (1_795_315_298_535, 1);
//! let mut body = Vec::new();
//! agg.write_batch_json(now_ms, seq, &mut body);
//! let subject = batch::subject("agg-1"); // tapbus.metrics.agg-1
//! let msg_id = batch::message_id("agg-1", seq); // the same when re-sent
//! assert_eq!((subject.as_str(), msg_id.as_str()), ("tapbus.metrics.agg-1", "tapbus-metrics:agg-1:1"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Families
//!
//! Every series has `instance` (`aggregate.instance`), so two copies never write the same
//! series. Label values come from fixed tables or bounded interners ([`labels`]); an absent
//! value is `none`, a value outside the table `other`.
//!
//! | family | type | labels | from |
//! |---|---|---|---|
//! | `dnstap_messages_total` | counter | identity, operation, protocol, family, qtype, rcode | every event |
//! | `dnstap_latency_seconds` | histogram, [`LATENCY_BUCKETS`] | identity, operation | events with a latency |
//! | `dnstap_message_size_bytes` | histogram, [`SIZE_BUCKETS`] | identity, operation, protocol | events with a DNS message |
//! | `coredns_dns_requests_total` | counter | server, zone, proto, family, type | `*_QUERY` (profile `coredns`) |
//! | `coredns_dns_responses_total` | counter | server, zone, rcode | `*_RESPONSE` |
//! | `coredns_dns_request_duration_seconds` | histogram, [`LATENCY_BUCKETS`] | server, zone, type | `*_RESPONSE` with a latency |
//! | `coredns_dns_request_size_bytes` | histogram, [`SIZE_BUCKETS`] | server, zone, proto | `*_QUERY` |
//! | `coredns_dns_response_size_bytes` | histogram, [`SIZE_BUCKETS`] | server, zone, proto | `*_RESPONSE` |
//! | `dnstap_top_qname_count` | gauge | identity, rank | `*_QUERY` with a qname (`top_n > 0`) |
//! | `dnstap_top_qname_info` | gauge (1) | identity, rank, qname | the same |
//! | `dnstap_top_client_count` | gauge | identity, rank | `*_QUERY` with a query-ip |
//! | `dnstap_top_client_info` | gauge (1) | identity, rank, client | the same |
//! | `dnstap_client_country_total` | counter | identity, country | `*_QUERY` (`geo_top_n > 0`) |
//! | `dnstap_client_asn_total` | counter | identity, asn, as_org | `*_QUERY` (`geo_top_n > 0`) |
//! | `tapbus_aggregate_geo_folded_total` | counter | metric | `*_QUERY` folded into `other` |
//! | `tapbus_aggregate_events_total` | counter | | every event |
//! | `tapbus_aggregate_identity_overflow_total` | counter | | identities beyond `max_identities` |
//! | `tapbus_aggregate_zone_overflow_total` | counter | | zones beyond `max_zones` |
//! | `tapbus_aggregate_invalid_latency_total` | counter | | negative / non-finite latencies |
//! | `tapbus_aggregate_series_dropped_total` | counter | metric | events a full family left out |
//!
//! * `qtype` / `type`: [`labels::QTYPES`] (A, AAAA, CNAME, MX, NS, PTR, SOA, SRV, TXT,
//!   HTTPS, SVCB, DS, DNSKEY, RRSIG, NSEC, NSEC3, CAA, NAPTR, IXFR, AXFR, ANY), else
//!   `other`; `rcode`: the named RCODEs of [`tapbus_event::names::RCODES`], else `other`
//!   (`RCODE12`); `operation`: the 14 dnstap types, `other` for `UNKNOWN(n)`.
//! * `rcode` is the event's `dns.rcode` for queries too (normally NOERROR); select
//!   `operation=~".*_RESPONSE"` for response codes.
//! * The CoreDNS profile follows the `prometheus` plugin's names, buckets and labels:
//!   `server` is the dnstap identity; `zone` is `dnstap.query-zone` with CoreDNS's
//!   trailing dot (`example.org.`), `.` when the event has none (dnstap carries it for
//!   AUTH_* only); `proto` is `udp` (UDP, DNSCrypt/UDP, DoQ) or `tcp` (TCP, DoT, DoH,
//!   DNSCrypt/TCP); `family` is `1` / `2`. CoreDNS's `view` and `plugin` labels are
//!   empty for most servers and are left out (PromQL treats an empty label as absent,
//!   so `view=""` selectors still match). CoreDNS times a request inside the server;
//!   here the duration is dnstap's response - query time.
//!
//! # Top-N
//!
//! Per identity, the `top_n` (default 10) most queried qnames and most active clients
//! since start, from a space-saving summary of `top_capacity` (default 100) keys
//! ([`top`]); counts are upper bounds, exact while an identity has at most
//! `top_capacity` distinct keys. The shape keeps series stable: `*_count` has exactly
//! ranks `1..=top_n` for every identity that has queried (0 for an unfilled rank), so
//! those series never churn; `*_info{rank, qname|client} 1` names the key holding each
//! filled rank, and only those series change when the ranking does. Join them with
//! `dnstap_top_qname_count * on (instance, identity, rank) group_left (qname)
//! dnstap_top_qname_info`.
//!
//! # Countries and ASNs
//!
//! `*_QUERY` events by the client's `geo.country` and `geo.asn` (the broker's
//! `[enrich.geoip]`), per identity. The first `geo_top_n` distinct keys of an identity
//! keep a series for good; a new key after that counts as `country="other"` /
//! `asn="other"` (and in `tapbus_aggregate_geo_folded_total{metric}`), so a key never
//! moves between a series and `other` and every counter only grows: the sum over an
//! identity's series is its exact query count. No country / ASN: `unknown`.
//!
//! # Bounds
//!
//! At most `max_identities` identities (beyond: `identity="other"` / `server="other"`,
//! counted in `tapbus_aggregate_identity_overflow_total`) and `max_zones` zones, and at
//! most `max_series` label sets per family: an event that would add one more is left out
//! of that family only and counted in `tapbus_aggregate_series_dropped_total{metric}`.
//! Memory is therefore bounded by 8 x `max_series` entries plus the interned strings,
//! plus 2 x `top_capacity` keys per identity for top-N, plus 2 x (`geo_top_n` + 2) geo
//! series per identity.

#![forbid(unsafe_code)]

pub mod batch;
pub mod config;
pub mod exposition;
pub mod labels;
pub mod metrics;
pub mod settings;
pub mod stage;
/// The space-saving top-k of the top-N series, shared with tapbus-top.
pub use tapbus_event::topk as top;

pub use batch::{Batch, Series};
pub use config::{AggregateConfig, AggregateSpec, ConfigError};
pub use exposition::CONTENT_TYPE;
pub use metrics::{Aggregator, Histogram, LATENCY_BUCKETS, SIZE_BUCKETS};

/// Events for the unit tests, written as the JSON the broker publishes.
#[cfg(test)]
pub(crate) mod testutil {
    use serde_json::{Value, json};

    /// An event's JSON; `null` for every `None`.
    #[derive(Debug, Clone)]
    pub struct Ev {
        pub op: &'static str,
        pub identity: Option<&'static str>,
        pub protocol: Option<&'static str>,
        pub family: Option<&'static str>,
        pub qtype: Option<&'static str>,
        pub rcode: Option<&'static str>,
        pub size: Option<u32>,
        pub latency: Option<f64>,
        pub zone: Option<&'static str>,
        /// `geo.country`, `geo.asn`, `geo.as-org`; `geo` is `null` when all are `None`.
        pub country: Option<&'static str>,
        pub asn: Option<u32>,
        pub as_org: Option<&'static str>,
    }

    impl Default for Ev {
        fn default() -> Self {
            Ev {
                op: "CLIENT_QUERY",
                identity: Some("ns1"),
                protocol: Some("UDP"),
                family: Some("INET"),
                qtype: Some("A"),
                rcode: Some("NOERROR"),
                size: Some(40),
                latency: None,
                zone: None,
                country: None,
                asn: None,
                as_org: None,
            }
        }
    }

    impl Ev {
        pub fn json(&self) -> Vec<u8> {
            let mut geo = serde_json::Map::new();
            if let Some(c) = self.country {
                geo.insert("country".into(), c.into());
            }
            if let Some(a) = self.asn {
                geo.insert("asn".into(), a.into());
            }
            if let Some(o) = self.as_org {
                geo.insert("as-org".into(), o.into());
            }
            let geo = if geo.is_empty() {
                Value::Null
            } else {
                Value::Object(geo)
            };
            let v: Value = json!({
                "network": {"family": self.family, "protocol": self.protocol,
                            "query-ip": "192.0.2.1", "query-port": 5353},
                "dns": {"length": self.size, "qname": "example.com", "qtype": self.qtype,
                        "rcode": self.rcode},
                "dnstap": {"operation": self.op, "identity": self.identity,
                           "latency": self.latency, "query-zone": self.zone},
                "geo": geo,
            });
            serde_json::to_vec(&v).expect("json")
        }

        /// Pushes the event `n` times.
        pub fn push(&self, agg: &mut crate::Aggregator, n: usize) {
            let bytes = self.json();
            let view = tapbus_event::EventView::parse(&bytes).expect("event parses");
            for _ in 0..n {
                agg.push(&view);
            }
        }
    }
}
