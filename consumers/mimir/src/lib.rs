//! tapbus-mimir's pure core: the arrow `tapbus.metrics.<instance>` batches --> Prometheus
//! remote write 1.0 request bodies ([`write`]). The binary (`main.rs`) subscribes, POSTs
//! and acks.

#![forbid(unsafe_code)]

pub mod settings;
pub mod stage;
pub mod write;
