//! tapbus-reduce, the pure core: bus --JSON events--> **reduce** --records-->
//! `tapbus.reduced.<reduction>`.
//!
//! Events (read with [`tapbus_event::EventView`]) are counted per reduction into tumbling
//! event-time windows, grouped by the identity and the reduction's key fields, and each
//! closed window becomes one [`Record`] per group. No sockets, no runtime, no clock: the
//! binary (bus input, publishing, acks, /metrics) drives it.
//!
//! * [`config`]: the `[reduce]` table ([`ReduceConfig`]) and its validation.
//! * [`reducer`]: [`Reducer`] — windows, watermark, late and overflow records, bounds;
//!   [`Placed`] tells the binary when an event is settled (ack).
//! * [`record`]: [`Record`], its JSON ([`record::SCHEMA`]), id and subject.
//!
//! ```
//! use tapbus_event::EventView;
//! use tapbus_reduce::{ReduceConfig, Reducer};
//!
//! let mut r = Reducer::new(ReduceConfig::default().validate().expect("defaults"));
//! let ev = br#"{"network":{"query-ip":"192.0.2.1"},"dns":{"qname":"Example.COM","length":60},
//!   "dnstap":{"operation":"CLIENT_RESPONSE","identity":"ns1","timestamp":1000000000000}}"#;
//! let placed = r.push(&EventView::parse(ev).expect("event"));
//! let mut out = Vec::new();
//! let boundary = r.close_all(&mut out).expect("an event was placed");
//! assert!(placed.settled_by(boundary));
//! assert_eq!(out.len(), 2); // `client` and `qname`
//! assert_eq!(out[1].subject, "tapbus.reduced.qname");
//! assert_eq!(out[1].count, 1);
//! ```

#![forbid(unsafe_code)]

pub mod config;
pub mod record;
pub mod reducer;
pub mod settings;
pub mod stage;

pub use config::{ConfigError, KeyField, ReduceConfig, ReduceSpec, ReductionConfig, ReductionSpec};
pub use record::{Key, KeyValue, Record};
pub use reducer::{Placed, Reducer, Rejected, Stats};
