//! NATS publishing (async-nats): core publish (at most once) or JetStream (acknowledged).
//!
//! The client reconnects by itself. While it is disconnected, `publish` waits for room in
//! the client's own buffer; meanwhile our bounded queue fills and the fan-out drops and
//! counts, so socket reads never wait for NATS.
//!
//! JetStream: the stream is got or created at start (retried with backoff until it works),
//! then each event is published with a `Nats-Msg-Id` (a per-process prefix and a sequence
//! number, for the server's de-duplication) and its PubAck awaited in a bounded window:
//! `published` counts acknowledged events, failed publishes and acks count `dropped_error`.

use std::collections::HashMap;
use std::future::IntoFuture;
use std::time::Duration;

use async_nats::jetstream::{self, message::PublishMessage, stream};
use async_nats::{ConnectOptions, PublishErrorKind, Subject};
use futures::StreamExt;
use futures::stream::FuturesOrdered;
use tapbus_config::{JetStreamSpec, NatsAuth, NatsSpec};
use tapbus_proto::event::Summary;
use tapbus_proto::subject::Template;

use crate::fanout::EventRx;
use crate::metrics::OutputMetrics;

pub async fn run(name: String, spec: NatsSpec, mut rx: EventRx, m: OutputMetrics) {
    let opts = match options(&name, &spec, &m).await {
        Ok(o) => o,
        Err(e) => {
            tracing::error!(output = %name, "NATS output not started: {e}; dropping events for this output");
            while rx.recv().await.is_some() {
                m.dropped_error.inc();
            }
            return;
        }
    };
    let servers: Vec<String> = spec
        .servers
        .split(',')
        .map(|s| s.trim().to_string())
        .collect();
    let client = match opts.connect(servers.as_slice()).await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(output = %name, "NATS connect failed: {e}; dropping events for this output");
            while rx.recv().await.is_some() {
                m.dropped_error.inc();
            }
            return;
        }
    };
    let subjects = SubjectCache::new(spec.subject.clone());
    match &spec.jetstream {
        None => run_core(&name, &client, subjects, &mut rx, &m).await,
        Some(js) => run_jetstream(&name, &client, js, subjects, &mut rx, &m).await,
    }
    // Queue closed: hand everything buffered to the server before exiting.
    match tokio::time::timeout(Duration::from_secs(10), client.flush()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(output = %name, "NATS flush at shutdown failed: {e}"),
        Err(_) => tracing::warn!(output = %name, "NATS flush at shutdown timed out"),
    }
}

/// Connection options: reconnecting forever, state changes logged and shown in `up`,
/// authentication and TLS from the spec.
async fn options(name: &str, spec: &NatsSpec, m: &OutputMetrics) -> Result<ConnectOptions, String> {
    let up = m.up.clone();
    let ev_name = name.to_string();
    let mut opts = ConnectOptions::new()
        .name("tapbus-broker")
        .retry_on_initial_connect()
        .max_reconnects(None)
        .client_capacity(8192)
        .connection_timeout(Duration::from_secs(5))
        .event_callback(move |event| {
            let up = up.clone();
            let name = ev_name.clone();
            async move {
                match event {
                    async_nats::Event::Connected => {
                        up.set(1);
                        tracing::info!(output = %name, "NATS connected");
                    }
                    async_nats::Event::Disconnected => {
                        up.set(0);
                        tracing::warn!(output = %name, "NATS disconnected; reconnecting");
                    }
                    async_nats::Event::ServerError(e) => {
                        tracing::warn!(output = %name, "NATS server error: {e}");
                    }
                    async_nats::Event::ClientError(e) => {
                        tracing::warn!(output = %name, "NATS client error: {e}");
                    }
                    other => tracing::info!(output = %name, "NATS: {other}"),
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

async fn run_core(
    name: &str,
    client: &async_nats::Client,
    mut subjects: SubjectCache,
    rx: &mut EventRx,
    m: &OutputMetrics,
) {
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        for ev in batch.drain(..) {
            let subj = subjects.get(&ev.summary);
            match client.publish(subj.clone(), ev.json).await {
                Ok(()) => {
                    m.published.inc();
                }
                Err(e) if e.kind() == PublishErrorKind::MaxPayloadExceeded => {
                    m.dropped_too_large.inc();
                    tracing::warn!(output = %name, subject = %subj, "event larger than the server's max_payload; dropped");
                }
                Err(e) => {
                    m.dropped_error.inc();
                    tracing::warn!(output = %name, "NATS publish failed: {e}");
                }
            }
        }
    }
}

/// Gets or creates the stream, retrying with backoff. `false` if the queue closed first.
async fn ensure_stream(
    name: &str,
    ctx: &jetstream::Context,
    js: &JetStreamSpec,
    rx: &mut EventRx,
) -> bool {
    let mut config = stream::Config {
        name: js.stream.clone(),
        subjects: js.subjects.clone(),
        ..Default::default()
    };
    if let Some(b) = js.max_bytes {
        config.max_bytes = b;
    }
    if let Some(n) = js.max_msgs {
        config.max_messages = n;
    }
    if let Some(a) = js.max_age {
        config.max_age = a;
    }
    let mut delay = Duration::from_millis(250);
    loop {
        match ctx.get_or_create_stream(config.clone()).await {
            Ok(s) => {
                tracing::info!(output = %name, stream = %js.stream, subjects = ?s.cached_info().config.subjects, "JetStream stream ready");
                return true;
            }
            Err(e) => {
                tracing::warn!(output = %name, stream = %js.stream, "JetStream stream not available: {e}; retrying in {delay:?}");
            }
        }
        // Wait, but notice shutdown.
        let until = tokio::time::Instant::now() + delay;
        while tokio::time::Instant::now() < until {
            if rx.is_closed() {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

type AckFuture = std::pin::Pin<
    Box<
        dyn Future<
                Output = Result<jetstream::publish::PublishAck, jetstream::context::PublishError>,
            > + Send,
    >,
>;

/// Logs publish/ack failures once per change of state.
struct Health<'a> {
    name: &'a str,
    failing: bool,
}

impl Health<'_> {
    fn ok(&mut self) {
        if self.failing {
            self.failing = false;
            tracing::info!(output = %self.name, "JetStream publishes are acknowledged again");
        }
    }

    fn fail(&mut self, what: &str, e: &dyn std::fmt::Display) {
        if !self.failing {
            self.failing = true;
            tracing::warn!(output = %self.name, "JetStream {what} failed: {e}; counting dropped events until it works again");
        }
    }
}

fn settle(
    res: Result<jetstream::publish::PublishAck, jetstream::context::PublishError>,
    m: &OutputMetrics,
    h: &mut Health<'_>,
) {
    match res {
        Ok(_) => {
            m.published.inc();
            h.ok();
        }
        Err(e) => {
            m.dropped_error.inc();
            h.fail("ack", &e);
        }
    }
}

async fn run_jetstream(
    name: &str,
    client: &async_nats::Client,
    js: &JetStreamSpec,
    mut subjects: SubjectCache,
    rx: &mut EventRx,
    m: &OutputMetrics,
) {
    let ctx = jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(10))
        .ack_timeout(Duration::from_secs(10))
        .max_ack_inflight(js.ack_window)
        .backpressure_on_inflight(true)
        .build(client.clone());
    if !ensure_stream(name, &ctx, js, rx).await {
        while rx.recv().await.is_some() {
            m.dropped_shutdown.inc();
        }
        return;
    }
    let prefix = msg_id_prefix();
    let mut seq: u64 = 0;
    let mut h = Health {
        name,
        failing: false,
    };
    let mut inflight: FuturesOrdered<AckFuture> = FuturesOrdered::new();
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        tokio::select! {
            biased;
            Some(res) = inflight.next(), if !inflight.is_empty() => settle(res, m, &mut h),
            n = rx.recv_many(&mut batch, BATCH), if inflight.len() < js.ack_window => {
                if n == 0 {
                    break;
                }
                for ev in batch.drain(..) {
                    while inflight.len() >= js.ack_window {
                        if let Some(res) = inflight.next().await {
                            settle(res, m, &mut h);
                        }
                    }
                    seq += 1;
                    let subj = subjects.get(&ev.summary);
                    let msg = PublishMessage::build()
                        .payload(ev.json)
                        .message_id(format!("{prefix}-{seq}"));
                    match ctx.send_publish(subj.clone(), msg).await {
                        Ok(ack) => inflight.push_back(ack.into_future()),
                        Err(e) if e.kind() == jetstream::context::PublishErrorKind::MaxPayloadExceeded => {
                            m.dropped_too_large.inc();
                            tracing::warn!(output = %name, subject = %subj, "event larger than the server's max_payload; dropped");
                        }
                        Err(e) => {
                            m.dropped_error.inc();
                            h.fail("publish", &e);
                        }
                    }
                }
            }
        }
    }
    // Queue closed: wait (bounded) for the acks still outstanding.
    let drain = async {
        while let Some(res) = inflight.next().await {
            settle(res, m, &mut h);
        }
    };
    if tokio::time::timeout(Duration::from_secs(15), drain)
        .await
        .is_err()
    {
        tracing::warn!(output = %name, "JetStream acks at shutdown timed out");
    }
}

/// A prefix unique to this process run, so message ids never repeat across restarts
/// within the stream's duplicate window.
fn msg_id_prefix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("tapbus-{:x}-{:x}", std::process::id(), nanos)
}

const BATCH: usize = 512;

/// Rendered subjects by the event fields the template uses: a stream from one server has a
/// handful of distinct subjects, so rendering and allocating once per event is wasted.
struct SubjectCache {
    template: Template,
    map: HashMap<Summary, Subject, rustc_hash::FxBuildHasher>,
    scratch: String,
}

impl SubjectCache {
    const MAX: usize = 4096;

    fn new(template: Template) -> Self {
        SubjectCache {
            template,
            map: HashMap::default(),
            scratch: String::with_capacity(64),
        }
    }

    fn get(&mut self, s: &Summary) -> Subject {
        let key = self.template.key(s);
        if let Some(subject) = self.map.get(&key) {
            return subject.clone();
        }
        if self.map.len() >= Self::MAX {
            self.map.clear();
        }
        self.template.render(s, &mut self.scratch);
        let subject = Subject::from(self.scratch.as_str());
        self.map.insert(key, subject.clone());
        subject
    }
}
