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
    let mut opts = ConnectOptions::new()
        .name(client_name)
        .retry_on_initial_connect()
        .max_reconnects(None)
        .client_capacity(capacity)
        .connection_timeout(Duration::from_secs(5))
        .event_callback(move |event| {
            let on_state = on_state.clone();
            let quiet = quiet.clone();
            let name = ev_name.clone();
            let slow = slow.clone();
            async move {
                match event {
                    async_nats::Event::SlowConsumer(sid) => {
                        if slow.fetch_add(1, std::sync::atomic::Ordering::Relaxed) == 0 {
                            tracing::warn!(bus = %name, "NATS: subscription {sid} is a slow consumer: the client drops messages this process did not read in time (counted; logged once)");
                        }
                    }
                    async_nats::Event::Connected => {
                        on_state(true);
                        quiet.store(false, std::sync::atomic::Ordering::Relaxed);
                        tracing::info!(bus = %name, "NATS connected");
                    }
                    async_nats::Event::Disconnected => {
                        on_state(false);
                        tracing::warn!(bus = %name, "NATS disconnected; reconnecting");
                    }
                    async_nats::Event::ServerError(e) => {
                        tracing::warn!(bus = %name, "NATS server error: {e}");
                    }
                    async_nats::Event::ClientError(e) => {
                        if quiet.swap(true, std::sync::atomic::Ordering::Relaxed) {
                            tracing::debug!(bus = %name, "NATS client error: {e}");
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
