//! A consumer's input, from validated configuration (`tapbus_config::ConsumerInputSpec`) to
//! a running [`Subscriber`]: connects with [`crate::connect`] and starts the subscribe mode
//! the URL or the `[input.subscribe]` table names. Every consumer binary starts here.

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
            let mut s = NatsCoreSpec::new(subject.clone());
            s.queue_group = queue_group.clone();
            Ok(NatsCoreSubscriber::new(&client, &s)
                .await?
                .count_drops(slow)
                .into())
        }
        (
            BusConnect::Nats(c),
            SubscribeMode::JetStream {
                stream,
                durable,
                inactive_threshold,
                filter_subject,
                max_ack_pending,
                ack_wait,
                deliver,
                batch,
            },
        ) => {
            let slow = SlowConsumer::default();
            let client = nats(program, c, slow.clone()).await?;
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

async fn nats(
    program: &str,
    c: &tapbus_config::NatsConnect,
    slow: SlowConsumer,
) -> Result<async_nats::Client, InputError> {
    crate::connect::nats::connect(program, program, c, 65_536, |_| {}, slow)
        .await
        .map_err(InputError::Connect)
}
