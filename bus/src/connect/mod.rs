//! Connect: from validated connection settings (`tapbus_config::BusConnect`) to a client of
//! each bus crate, the same for publishers and subscribers: URL forms, authentication, TLS,
//! reconnecting with backoff, and the up/down state logged once per change.

pub mod mqtt;
pub mod nats;
pub mod redis;
