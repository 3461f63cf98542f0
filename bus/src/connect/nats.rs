//! Connecting to NATS: server lists, authentication (user/password, token, NKey, .creds),
//! TLS (CA, client certificate), reconnecting forever, state changes logged once each and
//! reported to the caller (for `tapbus_output_up` / `tapbus_input_up`).

use std::time::Duration;

use async_nats::ConnectOptions;
use tapbus_config::{NatsAuth, NatsConnect};

/// The servers of a (comma-separated) URL list, for `ConnectOptions::connect`.
pub fn server_list(spec: &NatsConnect) -> Vec<String> {
    spec.servers
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// The servers of a list as they may be logged: `nats://HOST:PORT` with any user and
/// password in the URL left out, comma-separated.
pub fn servers_for_logs(servers: &[String]) -> String {
    servers
        .iter()
        .map(|s| match s.split_once("://") {
            Some((scheme, rest)) => {
                let host_end = rest.find('/').unwrap_or(rest.len());
                let (authority, path) = rest.split_at(host_end);
                let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
                format!("{scheme}://{host}{path}")
            }
            None => s
                .rsplit_once('@')
                .map_or(s.as_str(), |(_, h)| h)
                .to_string(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Connects with [`options`]; the client keeps reconnecting by itself afterwards.
pub async fn connect(
    name: &str,
    client_name: &str,
    spec: &NatsConnect,
    capacity: usize,
    on_state: impl Fn(bool) + Send + Sync + 'static,
    slow: SlowConsumer,
) -> Result<async_nats::Client, String> {
    let opts = options(name, client_name, spec, capacity, on_state, slow).await?;
    opts.connect(server_list(spec).as_slice())
        .await
        .map_err(|e| format!("NATS connect: {e}"))
}

/// The longest wait between two reconnect attempts. async-nats's default grows to 4 s, so
/// a server back after a few seconds' outage was reached again only seconds later; with
/// this ceiling a client is connected within about half a second of the server listening.
pub const RECONNECT_MAX: Duration = Duration::from_millis(400);

/// The wait before reconnect attempt `attempts` (1 for the first after a loss): none for the
/// first, then 10 ms doubling to [`RECONNECT_MAX`], each drawn between half and all of its
/// nominal value so clients that lost the same server do not come back in lockstep.
pub fn reconnect_delay(attempts: usize) -> Duration {
    if attempts <= 1 {
        return Duration::ZERO;
    }
    let exp = u32::try_from(attempts - 2).unwrap_or(u32::MAX).min(16);
    let nominal = Duration::from_millis(10u64 << exp).min(RECONNECT_MAX);
    // Jitter without a random number crate: the standard library's per-process random
    // hash keys, mixed with the attempt number and the clock.
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_usize(attempts);
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    let half = nominal / 2;
    let frac = (h.finish() % 1024) as u32;
    half + half * frac / 1024
}

/// Messages the client dropped because a subscription's buffer was full (NATS "slow
/// consumer"): one per `Event::SlowConsumer` the client reports. A lower bound: the client
/// hands its events to the callback through a bounded channel (128) and drops events,
/// not only messages, when that is full.
pub type SlowConsumer = std::sync::Arc<std::sync::atomic::AtomicU64>;

/// Connection options: reconnecting forever, state changes logged and reported to
/// `on_state` (true when connected), slow-consumer drops counted in `slow` (the first
/// one logged), authentication and TLS from the spec. `name` names the output or input in
/// the logs, `client_name` the process to the server; `capacity` is the client's command
/// channel.
pub async fn options(
    name: &str,
    client_name: &str,
    spec: &NatsConnect,
    capacity: usize,
    on_state: impl Fn(bool) + Send + Sync + 'static,
    slow: SlowConsumer,
) -> Result<ConnectOptions, String> {
    let on_state = std::sync::Arc::new(on_state);
    // Client errors (a refused connection, each reconnect attempt) are logged once until
    // the next successful connect, so an outage is one line, not one per retry.
    let quiet = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ev_name = name.to_string();
    // Until the first connection, a failed attempt means the server is not there yet: one
    // line says what the process waits for.
    let ever_connected = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let waiting_for = servers_for_logs(&server_list(spec));
    let last_server_error = std::sync::Arc::new(std::sync::Mutex::new(None::<String>));
    let mut opts = ConnectOptions::new()
        .name(client_name)
        .retry_on_initial_connect()
        .max_reconnects(None)
        .reconnect_delay_callback(reconnect_delay)
        .client_capacity(capacity)
        .connection_timeout(Duration::from_secs(5))
        .event_callback(move |event| {
            let on_state = on_state.clone();
            let quiet = quiet.clone();
            let name = ev_name.clone();
            let slow = slow.clone();
            let ever_connected = ever_connected.clone();
            let waiting_for = waiting_for.clone();
            let last_server_error = last_server_error.clone();
            async move {
                match event {
                    async_nats::Event::SlowConsumer(sid) => {
                        if slow.fetch_add(1, std::sync::atomic::Ordering::Relaxed) == 0 {
                            tracing::warn!(bus = %name, "NATS: subscription {sid} is a slow consumer: the client drops messages this process did not read in time (counted; logged once)");
                        }
                    }
                    async_nats::Event::Connected => {
                        if let Ok(mut last) = last_server_error.lock() {
                            *last = None;
                        }
                        on_state(true);
                        ever_connected.store(true, std::sync::atomic::Ordering::Relaxed);
                        quiet.store(false, std::sync::atomic::Ordering::Relaxed);
                        tracing::info!(bus = %name, "NATS connected");
                    }
                    async_nats::Event::Disconnected => {
                        on_state(false);
                        tracing::warn!(bus = %name, "NATS disconnected; reconnecting");
                    }
                    async_nats::Event::ServerError(e) => {
                        // The same refusal at every reconnect attempt (a wrong password:
                        // several a second) is logged once until connected.
                        let text = e.to_string();
                        let repeat = match last_server_error.lock() {
                            Ok(mut last) => {
                                let same = last.as_deref() == Some(text.as_str());
                                *last = Some(text.clone());
                                same
                            }
                            Err(_) => false,
                        };
                        if repeat {
                            tracing::debug!(bus = %name, "NATS server error: {text}");
                        } else {
                            tracing::warn!(bus = %name, "NATS server error: {text} (repeats are logged at debug level until connected)");
                        }
                    }
                    async_nats::Event::ClientError(e) => {
                        if quiet.swap(true, std::sync::atomic::Ordering::Relaxed) {
                            tracing::debug!(bus = %name, "NATS client error: {e}");
                        } else if !ever_connected.load(std::sync::atomic::Ordering::Relaxed) {
                            tracing::warn!(bus = %name, "waiting for NATS at {waiting_for} ({e}; retrying, repeats are logged at debug level until connected)");
                        } else {
                            tracing::warn!(bus = %name, "NATS client error: {e} (retrying; repeats are logged at debug level until connected)");
                        }
                    }
                    other => tracing::info!(bus = %name, "NATS: {other}"),
                }
            }
        });
    opts = match &spec.auth {
        NatsAuth::None => opts,
        NatsAuth::UserPassword { user, password } => {
            opts.user_and_password(user.clone(), password.clone())
        }
        NatsAuth::Token(t) => opts.token(t.clone()),
        NatsAuth::NkeySeed(path) => {
            let seed = std::fs::read_to_string(path)
                .map_err(|e| format!("nkey_seed {}: {e}", path.display()))?;
            opts.nkey(seed.trim().to_string())
        }
        NatsAuth::Creds(path) => opts
            .credentials_file(path)
            .await
            .map_err(|e| format!("creds {}: {e}", path.display()))?,
    };
    if let Some(ca) = &spec.tls_ca {
        opts = opts.add_root_certificates(ca.clone());
    }
    if let (Some(cert), Some(key)) = (&spec.tls_cert, &spec.tls_key) {
        opts = opts.add_client_certificate(cert.clone(), key.clone());
    }
    if spec.require_tls {
        opts = opts.require_tls(true);
    }
    Ok(opts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_delays_start_at_once_and_stay_under_the_ceiling() {
        assert_eq!(reconnect_delay(0), Duration::ZERO);
        assert_eq!(reconnect_delay(1), Duration::ZERO);
        for attempts in 2..200 {
            let d = reconnect_delay(attempts);
            let exp = u32::try_from(attempts - 2).unwrap_or(u32::MAX).min(16);
            let nominal = Duration::from_millis(10u64 << exp).min(RECONNECT_MAX);
            assert!(
                d >= nominal / 2 && d <= nominal,
                "attempt {attempts}: {d:?} not in [{:?}, {nominal:?}]",
                nominal / 2
            );
        }
        assert!(reconnect_delay(usize::MAX) <= RECONNECT_MAX);
    }

    #[test]
    fn servers_are_logged_without_credentials() {
        let list = vec![
            "nats://user:secret@10.0.0.1:4222".to_string(),
            "tls://tok@[::1]:4223".to_string(),
            "nats://127.0.0.1:4224".to_string(),
        ];
        let s = servers_for_logs(&list);
        assert_eq!(
            s,
            "nats://10.0.0.1:4222,tls://[::1]:4223,nats://127.0.0.1:4224"
        );
        assert!(!s.contains("secret") && !s.contains("tok"));
    }
}
