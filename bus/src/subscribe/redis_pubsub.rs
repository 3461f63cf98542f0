//! Redis pub/sub subscriber: `PSUBSCRIBE` to patterns, at most once.
//!
//! A dedicated pub/sub connection from the given `redis::Client`. When it breaks (server
//! gone, or the server cut this slow subscriber off at its `client-output-buffer-limit
//! pubsub`, 32 MB hard / 8 MB for 60 s by default: that is the bound on what waits for
//! this consumer), the subscriber reconnects with backoff and subscribes to the patterns
//! again; what was published in between is lost. Up/down is logged once per change and
//! shown in [`RedisPubSubSubscriber::connected`]; it follows what
//! [`RedisPubSubSubscriber::next`] sees (a broken connection ends the message stream at
//! once), and reconnecting happens inside `next()`.

use std::time::Duration;

use futures::StreamExt;
use tokio::sync::watch;

use super::{Ack, Delivery, LinkState, SpecError, SubscribeError, backoff};

/// A Redis pub/sub subscription to one or more patterns (`PSUBSCRIBE` glob syntax).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisPubSubSpec {
    pub patterns: Vec<String>,
}

impl RedisPubSubSpec {
    pub fn new(pattern: impl Into<String>) -> Self {
        RedisPubSubSpec {
            patterns: vec![pattern.into()],
        }
    }

    pub fn validate(&self) -> Result<(), SpecError> {
        if self.patterns.is_empty() {
            return Err(SpecError::new("Redis patterns", "at least one"));
        }
        if self.patterns.iter().any(String::is_empty) {
            return Err(SpecError::new("Redis pattern", "empty"));
        }
        Ok(())
    }
}

/// Redis `PSUBSCRIBE`: **at most once**. Redis hands each message to the subscribers
/// connected at that moment and stores nothing, so whatever is published while this
/// subscriber is disconnected is lost. [`Delivery::ack`] is a no-op; `delivered` is
/// always 1; `subject` is the channel the message was published on.
pub struct RedisPubSubSubscriber {
    client: redis::Client,
    spec: RedisPubSubSpec,
    stream: Option<redis::aio::PubSubStream>,
    link: LinkState,
    delays: crate::backoff::Backoff,
    /// The next connect waits this long first (after a failure).
    wait: Option<Duration>,
}

impl std::fmt::Debug for RedisPubSubSubscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisPubSubSubscriber")
            .field("spec", &self.spec)
            .field("subscribed", &self.stream.is_some())
            .finish()
    }
}

impl RedisPubSubSubscriber {
    /// Connects and subscribes; a first connect that fails is returned as an error (the
    /// connect layer decides whether to retry), later ones are retried with backoff.
    pub async fn new(
        client: redis::Client,
        spec: &RedisPubSubSpec,
    ) -> Result<Self, SubscribeError> {
        spec.validate()?;
        let what = format!(
            "Redis PSUBSCRIBE {} on {}",
            spec.patterns.join(" "),
            client.get_connection_info().addr()
        );
        let mut s = RedisPubSubSubscriber {
            client,
            spec: spec.clone(),
            stream: None,
            link: LinkState::new(what),
            delays: backoff(),
            wait: None,
        };
        match s.subscribe().await {
            Ok(st) => {
                s.stream = Some(st);
                s.link.up();
                Ok(s)
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn subscribe(&self) -> Result<redis::aio::PubSubStream, redis::RedisError> {
        let mut ps = self.client.get_async_pubsub().await?;
        for p in &self.spec.patterns {
            ps.psubscribe(p).await?;
        }
        Ok(ps.into_on_message())
    }

    /// The next message; cancel-safe (a reconnect interrupted by dropping the future is
    /// started again by the next call). Never returns an error after a successful `new`:
    /// connection failures are retried with backoff.
    pub async fn next(&mut self) -> Result<Delivery, SubscribeError> {
        loop {
            let Some(stream) = self.stream.as_mut() else {
                if let Some(d) = self.wait.take() {
                    tokio::time::sleep(d).await;
                }
                match self.subscribe().await {
                    Ok(st) => {
                        self.stream = Some(st);
                        self.link.up();
                        self.delays.reset();
                    }
                    Err(e) => {
                        self.link.down(&e);
                        self.wait = Some(self.delays.next_delay());
                    }
                }
                continue;
            };
            match stream.next().await {
                Some(msg) => {
                    return Ok(Delivery::new(
                        msg.get_channel_name().to_string(),
                        bytes::Bytes::copy_from_slice(msg.get_payload_bytes()),
                        1,
                        None,
                        Ack::None,
                    ));
                }
                None => {
                    self.stream = None;
                    self.link.down("connection closed");
                    self.wait = Some(self.delays.next_delay());
                }
            }
        }
    }

    pub fn connected(&self) -> watch::Receiver<bool> {
        self.link.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_validation() {
        assert_eq!(RedisPubSubSpec::new("dnstap.*").validate(), Ok(()));
        assert!(RedisPubSubSpec::new("").validate().is_err());
        assert!(RedisPubSubSpec { patterns: vec![] }.validate().is_err());
    }
}
