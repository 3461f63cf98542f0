//! NATS core publishing (async-nats).
//!
//! The client reconnects by itself. While it is disconnected, `publish` waits for room in
//! the client's own buffer; meanwhile our bounded queue fills and the fan-out drops and
//! counts, so socket reads never wait for NATS.

use std::time::Duration;

use std::collections::HashMap;

use async_nats::{ConnectOptions, PublishErrorKind, Subject};
use tapbus_proto::event::Summary;
use tapbus_proto::subject::Template;

use crate::fanout::EventRx;
use crate::metrics::OutputMetrics;

pub async fn run(
    name: String,
    servers: String,
    subject: Template,
    mut rx: EventRx,
    m: OutputMetrics,
) {
    let up = m.up.clone();
    let ev_name = name.clone();
    let opts = ConnectOptions::new()
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
                    other => tracing::info!(output = %name, "NATS: {other}"),
                }
            }
        });
    let servers: Vec<String> = servers.split(',').map(|s| s.trim().to_string()).collect();
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
    let mut subjects = SubjectCache::new(subject);
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
    // Queue closed: hand everything buffered to the server before exiting.
    match tokio::time::timeout(Duration::from_secs(10), client.flush()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(output = %name, "NATS flush at shutdown failed: {e}"),
        Err(_) => tracing::warn!(output = %name, "NATS flush at shutdown timed out"),
    }
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
