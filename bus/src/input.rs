//! A consumer's input, from validated configuration (`tapbus_config::ConsumerInputSpec`) to
//! a running [`Subscriber`]: connects with [`crate::connect`] and starts the subscribe mode
//! the URL or the `[input.subscribe]` table names. Every consumer binary starts here.
//!
//! [`subscribe`] fails at once when the bus, the stream or the durable is not there;
//! [`subscribe_waiting`] waits for them, so a consumer may start before its bus.

use std::time::Duration;

use tapbus_config::{BusConnect, ConsumerInputSpec, SubscribeMode};

use crate::connect::nats::SlowConsumer;

use crate::subscribe::{
    DeliverFrom, JetStreamSpec, JetStreamSubscriber, MqttSpec, MqttSubscriber, NatsCoreSpec,
    NatsCoreSubscriber, RedisPubSubSpec, RedisPubSubSubscriber, RedisStreamSpec,
    RedisStreamSubscriber, SubscribeError, Subscriber,
};

/// Why an input could not start.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("{0}")]
    Connect(String),
    #[error(transparent)]
    Subscribe(#[from] SubscribeError),
    #[error("the URL's bus does not support this subscribe mode")]
    Mismatch,
}

impl InputError {
    /// Whether the error can pass by itself (the bus, JetStream, the stream or the durable
    /// not there yet), so [`subscribe_waiting`] tries again; `false` for what needs a
    /// configuration change: connection settings that cannot be used (a credentials file
    /// that cannot be read, bad TLS files), a mode that does not fit the URL, and
    /// [`SubscribeError::retryable`]'s permanent errors.
    pub fn retryable(&self) -> bool {
        match self {
            InputError::Subscribe(e) => e.retryable(),
            InputError::Connect(_) | InputError::Mismatch => false,
        }
    }
}

/// Connects and subscribes. `program` names the client to the server (NATS connection
/// name, default durable and consumer names). A JetStream input without a durable gets
/// a consumer named after the program and the process (`<program>-<pid>`) with an
/// `inactive_threshold` (default 1m): the server deletes it once the process is gone.
pub async fn subscribe(program: &str, spec: &ConsumerInputSpec) -> Result<Subscriber, InputError> {
    match (&spec.connect, &spec.mode) {
        (
            BusConnect::Nats(c),
            SubscribeMode::Nats {
                subject,
                queue_group,
            },
        ) => {
            let slow = SlowConsumer::default();
            let client = nats(program, c, slow.clone()).await?;
            nats_core(&client, subject, queue_group, slow).await
        }
        (BusConnect::Nats(c), SubscribeMode::JetStream { .. }) => {
            let s = jetstream_spec(program, &spec.mode).ok_or(InputError::Mismatch)?;
            let slow = SlowConsumer::default();
            let client = nats(program, c, slow.clone()).await?;
            Ok(JetStreamSubscriber::new(&client, &s)
                .await?
                .count_drops(slow)
                .into())
        }
        (
            BusConnect::Mqtt(c),
            SubscribeMode::Mqtt {
                topic,
                share,
                qos,
                persistent,
            },
        ) => {
            let transport = crate::connect::mqtt::transport(c).map_err(InputError::Connect)?;
            let mut s = MqttSpec::new(topic.clone());
            s.share_group = share.clone();
            s.qos = *qos;
            let sub = if c.version == 5 {
                MqttSubscriber::v5(
                    crate::connect::mqtt::options_v5(c, transport, !persistent),
                    &s,
                )?
            } else {
                MqttSubscriber::v4(
                    crate::connect::mqtt::options_v4(c, transport, !persistent),
                    &s,
                )?
            };
            Ok(sub.into())
        }
        (BusConnect::Redis(c), SubscribeMode::RedisPubsub { pattern }) => {
            let client = crate::connect::redis::client(c).map_err(SubscribeError::from)?;
            Ok(
                RedisPubSubSubscriber::new(client, &RedisPubSubSpec::new(pattern.clone()))
                    .await?
                    .into(),
            )
        }
        (
            BusConnect::Redis(c),
            SubscribeMode::RedisStream {
                key,
                group,
                consumer,
                claim_idle,
            },
        ) => {
            let client = crate::connect::redis::client(c).map_err(SubscribeError::from)?;
            let mut s = RedisStreamSpec::new(key.clone(), group.clone(), consumer.clone());
            s.min_idle = *claim_idle;
            s.claim_interval = (*claim_idle / 2).max(Duration::from_secs(1));
            Ok(RedisStreamSubscriber::new(client, &s).await?.into())
        }
        _ => Err(InputError::Mismatch),
    }
}

/// A NATS core subscription on `client`.
async fn nats_core(
    client: &async_nats::Client,
    subject: &str,
    queue_group: &Option<String>,
    slow: SlowConsumer,
) -> Result<Subscriber, InputError> {
    let mut s = NatsCoreSpec::new(subject);
    s.queue_group = queue_group.clone();
    Ok(NatsCoreSubscriber::new(client, &s)
        .await?
        .count_drops(slow)
        .into())
}

/// The subscriber's JetStream spec of a JetStream mode (`None` for other modes).
fn jetstream_spec(program: &str, mode: &SubscribeMode) -> Option<JetStreamSpec> {
    let SubscribeMode::JetStream {
        stream,
        durable,
        inactive_threshold,
        filter_subject,
        max_ack_pending,
        ack_wait,
        deliver,
        batch,
    } = mode
    else {
        return None;
    };
    let name = durable
        .clone()
        .unwrap_or_else(|| format!("{program}-{}", std::process::id()));
    let mut s = JetStreamSpec::new(stream.clone(), name);
    s.filter_subject = filter_subject.clone();
    s.inactive_threshold = *inactive_threshold;
    s.max_ack_pending = *max_ack_pending;
    s.ack_wait = *ack_wait;
    s.batch = *batch;
    s.deliver = match deliver {
        tapbus_config::DeliverFrom::All => DeliverFrom::All,
        tapbus_config::DeliverFrom::New => DeliverFrom::New,
    };
    Some(s)
}

async fn nats(
    program: &str,
    c: &tapbus_config::NatsConnect,
    slow: SlowConsumer,
) -> Result<async_nats::Client, InputError> {
    nats_watched(program, c, slow, |_| {}).await
}

async fn nats_watched(
    program: &str,
    c: &tapbus_config::NatsConnect,
    slow: SlowConsumer,
    on_state: impl Fn(bool) + Send + Sync + 'static,
) -> Result<async_nats::Client, InputError> {
    crate::connect::nats::connect(program, program, c, 65_536, on_state, slow)
        .await
        .map_err(InputError::Connect)
}

/// Delays between attempts while waiting for a stream or a bus: 100 ms doubling to 2 s,
/// with jitter, so a consumer starts within about 2 s of what it waits for appearing.
fn waiting_backoff() -> crate::backoff::Backoff {
    crate::backoff::Backoff::new(Duration::from_millis(100), Duration::from_secs(2))
}

/// The bus of a validated connection as it may be logged (no credentials).
fn bus_for_logs(connect: &BusConnect) -> String {
    use crate::connect::nats::{server_list, servers_for_logs};
    match connect {
        BusConnect::Nats(c) => servers_for_logs(&server_list(c)),
        BusConnect::Mqtt(c) => format!(
            "{}://{}:{}",
            if c.tls { "mqtts" } else { "mqtt" },
            c.host,
            c.port
        ),
        BusConnect::Redis(c) => servers_for_logs(std::slice::from_ref(&c.url)),
    }
}

/// Like [`subscribe`], but what can pass is waited for instead of returned: the bus not
/// reachable, JetStream not enabled, the stream not made yet, the durable not creatable
/// yet ([`InputError::retryable`]). It tries again with backoff (100 ms doubling to 2 s,
/// and at once after the NATS connection comes back), forever; the first wait logs one
/// warning (`waiting for stream DNSTAP on nats://HOST:PORT: …`, `waiting for the bus at
/// redis://HOST:PORT: …`; an unreachable NATS server is logged once by the connect layer,
/// `waiting for NATS at …`), and an info line when the input is up. Errors that cannot
/// pass (an invalid spec, a durable that exists with another filter subject or ack policy,
/// a mode that does not fit the URL, unusable connection settings) are returned at once.
///
/// A NATS core subscription is made once the client is connected (so the server has it
/// when this returns). An MQTT client connects (and reconnects) by itself and subscribes
/// once connected: this returns once the server accepted the connection.
///
/// Cancel-safe: dropping the future (on SIGTERM) leaves nothing subscribed and nothing
/// made on the server but a durable it had just created; the NATS client it made is
/// dropped with it (async-nats's connection task, if the server never came, goes on trying
/// in the background until it connects, then ends, or until the runtime shuts down).
pub async fn subscribe_waiting(
    program: &str,
    spec: &ConsumerInputSpec,
) -> Result<Subscriber, InputError> {
    let bus = bus_for_logs(&spec.connect);
    match (&spec.connect, &spec.mode) {
        (
            BusConnect::Nats(c),
            SubscribeMode::Nats {
                subject,
                queue_group,
            },
        ) => {
            let slow = SlowConsumer::default();
            let (tx, mut up) = tokio::sync::watch::channel(false);
            let client = nats_watched(program, c, slow.clone(), move |s| {
                tx.send_replace(s);
            })
            .await?;
            // The connect layer logs the wait for the server once.
            if up.wait_for(|c| *c).await.is_err() {
                return Err(SubscribeError::Closed.into());
            }
            nats_core(&client, subject, queue_group, slow).await
        }
        (BusConnect::Nats(c), SubscribeMode::JetStream { stream, .. }) => {
            let s = jetstream_spec(program, &spec.mode).ok_or(InputError::Mismatch)?;
            let slow = SlowConsumer::default();
            let (tx, mut up) = tokio::sync::watch::channel(false);
            let client = nats_watched(program, c, slow.clone(), move |s| {
                tx.send_replace(s);
            })
            .await?;
            let mut delays = waiting_backoff();
            let mut waited = false;
            loop {
                // Not connected: wait for it (the connect layer logs that wait once).
                if up.wait_for(|c| *c).await.is_err() {
                    return Err(SubscribeError::Closed.into());
                }
                match JetStreamSubscriber::new(&client, &s).await {
                    Ok(sub) => {
                        if waited {
                            tracing::info!(target: "tapbus_bus::input", "stream {stream} on {bus} is there: reading it (durable {})", s.durable);
                        }
                        return Ok(sub.count_drops(slow).into());
                    }
                    Err(e) if e.retryable() => {
                        if waited {
                            tracing::debug!(target: "tapbus_bus::input", "still waiting for stream {stream} on {bus}: {e}");
                        } else {
                            waited = true;
                            tracing::warn!(target: "tapbus_bus::input", "waiting for stream {stream} on {bus}: {e} (retrying with backoff)");
                        }
                        let d = delays.next_delay();
                        tokio::select! {
                            _ = tokio::time::sleep(d) => {}
                            _ = reconnected(&mut up) => {}
                        }
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        (BusConnect::Redis(_), _) => {
            let mut delays = waiting_backoff();
            let mut waited = false;
            loop {
                match subscribe(program, spec).await {
                    Ok(sub) => {
                        if waited {
                            tracing::info!(target: "tapbus_bus::input", "the bus at {bus} is there: reading it");
                        }
                        return Ok(sub);
                    }
                    Err(e) if e.retryable() => {
                        if waited {
                            tracing::debug!(target: "tapbus_bus::input", "still waiting for the bus at {bus}: {e}");
                        } else {
                            waited = true;
                            tracing::warn!(target: "tapbus_bus::input", "waiting for the bus at {bus}: {e} (retrying with backoff)");
                        }
                        tokio::time::sleep(delays.next_delay()).await;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        (BusConnect::Mqtt(_), _) => {
            // The client connects (and reconnects) by itself, logging the wait; the input
            // is ready once the server took the connection.
            let sub = subscribe(program, spec).await?;
            let mut up = sub.connected();
            if up.wait_for(|c| *c).await.is_err() {
                return Err(SubscribeError::Closed.into());
            }
            Ok(sub)
        }
        _ => subscribe(program, spec).await,
    }
}

/// Resolves when the connection is lost and made again; never if the watch ends.
async fn reconnected(up: &mut tokio::sync::watch::Receiver<bool>) {
    if up.wait_for(|c| !*c).await.is_err() || up.wait_for(|c| *c).await.is_err() {
        std::future::pending::<()>().await;
    }
}
