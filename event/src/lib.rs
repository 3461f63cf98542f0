//! tapbus-event: the bus contract as subscribers see it (the arrow bus --JSON--> consumer).
//!
//! The broker turns each dnstap frame into one JSON event (`tapbus_proto::event::encode`,
//! layout in `proto/event.schema.json`) and publishes it on NATS, MQTT or Redis. Every
//! consumer (tapbus-tail, reduce, aggregate, loki, mimir, the broker's per-output filters)
//! reads those bytes with this crate, and needs neither prost nor the decoder:
//!
//! * [`EventView`]: a typed view parsed from `&[u8]` that borrows its strings and skips
//!   the fields nobody reads ([`view`]).
//! * [`Filter`]: the filter expressions of `tapbus-tail --filter` and of an output's
//!   `filter` key ([`filter`]).
//! * [`write_line`]: the one-line text form of `tapbus-tail` ([`line`]).
//! * [`topk::SpaceSaving`]: the space-saving top-k of tapbus-aggregate's top-N series and
//!   of tapbus-top's tables ([`topk`]).
//!
//! Pure code: no sockets, no runtime.

pub mod filter;
pub mod line;
pub mod names;
mod scan;
pub mod topk;
pub mod view;

pub use filter::{Filter, FilterError};
pub use line::write_line;
pub use view::{
    Dns, Dnstap, Edns, EventView, Family, Flags, Network, Operation, Protocol, ViewError,
};
