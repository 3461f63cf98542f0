//! tapbus-bus: the bus layer, both directions of every `--JSON-->` arrow of the flow.
//!
//! * [`subscribe`]: bus --> consumer, with ack handles.

pub mod subscribe;
