//! tapbus-loki's pure core, the arrow bus (`dnstap.>` events, `tapbus.reduced.>`
//! records) --> Grafana Loki push API: [`labels`] (which stream a line goes to, its
//! structured metadata), [`batch`] (lines grouped by stream, bounded, with the
//! deliveries to ack), [`push`] (the request body: snappy protobuf or JSON) and
//! [`response`] (Loki's answer: ack, retry, or count what it refused). The binary
//! (`main.rs`) subscribes, pushes and acks.

#![forbid(unsafe_code)]

pub mod batch;
pub mod config;
pub mod labels;
pub mod privacy;
pub mod push;
pub mod response;
pub mod stage;
