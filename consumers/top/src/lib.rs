//! tapbus-top: a live terminal view of the DNS traffic on the bus (the arrow
//! bus --JSON--> terminal), like `dnstop` for every server at once.
//!
//! * [`stats`]: the pure model (events in, bounded aggregates and a snapshot out);
//! * [`prom`]: the broker's `/metrics` text, read into the few numbers shown;
//! * [`ui`]: the screen, rendered from a snapshot into a ratatui `Frame`, and the keys.
//!
//! The binary (`main.rs`) wires them to a bus subscriber, a scraper and a terminal.

#![forbid(unsafe_code)]

pub mod prom;
pub mod stats;
pub mod ui;
