//! Connecting to Redis (redis crate): `redis://` and `rediss://` URLs with ACL user,
//! password and database; a lazily connecting, reconnecting connection manager.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, RedisError};
use tapbus_config::RedisConnect;

/// The client for a validated connection (nothing is dialled yet).
pub fn client(spec: &RedisConnect) -> Result<Client, RedisError> {
    Client::open(spec.url.as_str())
}

/// A lazily connecting manager: its first command connects, later ones reconnect after
/// I/O errors, retrying only briefly itself (callers put their own backoff on top).
pub fn manager(
    client: &Client,
    connect_timeout: Duration,
    response_timeout: Option<Duration>,
    min_backoff: Duration,
) -> Result<ConnectionManager, RedisError> {
    let cfg = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(connect_timeout))
        .set_response_timeout(response_timeout)
        .set_number_of_retries(1)
        .set_min_delay(min_backoff)
        .set_max_delay(Duration::from_secs(1));
    ConnectionManager::new_lazy_with_config(client.clone(), cfg)
}
