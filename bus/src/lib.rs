//! tapbus-bus: the bus layer, both directions of every `--JSON-->` arrow of the flow.
//!
//! ```text
//! broker / reduce / aggregate --publish--> NATS | JetStream | MQTT | Redis --subscribe--> consumers
//! ```
//! * [`connect`]: URLs, authentication, TLS, reconnects, up/down state; shared by both sides.
//! * [`publish`]: confirmed publishing from a bounded queue, with exact accounting.
//! * [`subscribe`]: bus --> consumer, with ack handles.
//! * [`input`]: a consumer's validated `[input]` to a running subscriber.
//! * [`metrics`]: the publishing side's counters.
//! * [`backoff`]: reconnect and retry delays (backon), shared by all of them.

pub mod backoff;
pub mod connect;
pub mod input;
pub mod metrics;
pub mod publish;
pub mod subscribe;
