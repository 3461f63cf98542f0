//! Per-event enrichment for tapbus's JSON encoder. Events are enriched here, once per
//! event, before any privacy view: broker session -> encode (+geo, +registered domain) ->
//! fanout. So a privacy view that hides or truncates addresses still carries the country
//! and AS of the original address, and nothing here depends on a subscriber.
//!
//! * [`geo`]: country, city, ASN and AS organisation of an address from MaxMind DB files
//!   (`[enrich.geoip]`), reloaded when a file is replaced on disk.
//! * [`domain`]: the registered domain and public suffix of the qname
//!   (`dns.qname-registered`, `dns.qname-tld`).
//! * [`json`]: the JSON string writer both use (the encoder's escaping rules).
//! * `testutil` (feature `test-util`): writes MaxMind DB files from a table for tests.

#![forbid(unsafe_code)]

pub mod domain;
pub mod geo;
pub mod json;
#[cfg(feature = "test-util")]
pub mod testutil;

pub use domain::{DomainParts, domain_parts, registered_domain};
pub use geo::{
    ASN_KEY, CITY_KEY, Error, FileOutcome, GeoInfo, GeoIp, GeoIpConfig, ReloadOutcome, global,
};
