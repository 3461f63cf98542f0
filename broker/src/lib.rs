//! tapbus-broker: the first arrow of the flow, DNS server --dnstap--> broker --JSON--> bus.
//!
//! ```text
//! ingress/{unix,tcp,tls,dial,file} -> session -> event::encode -> fanout -> tapbus_bus::publish/{nats,mqtt,redis,stdout}
//!                                        \-> the original frame -> fanout -> tapbus_bus::publish/{dnstap_file,dnstap_relay}
//! ```
//! * [`ingress`]: listeners, dial-out and files; one task per connection.
//! * [`session`]: Frame Streams reading and handshake; frames become events here.
//! * [`fanout`]: every event to every output through per-output bounded queues.
//! * egress: one task per output publishing to its bus, from the bus layer
//!   (`tapbus_bus::publish`).
//! * [`metrics`], [`http`]: counters and the `/metrics`, `/health` endpoint.
//!
//! Invariants (ARCHITECTURE.md): never stall a sender (sockets are read continuously and
//! the fan-out never waits); every drop is counted; one connection's bad input never
//! affects another.

pub mod fanout;
pub mod http;
pub mod ingress;
pub mod metrics;
pub mod session;
pub mod views;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tapbus_config::BrokerSettings;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::fanout::Fanout;
use crate::ingress::{Shared, Started};
use crate::metrics::Metrics;

/// How a broker run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Shut down on request, or every file input was read completely.
    Clean,
    /// Only file inputs, and at least one of them ended with an error.
    FileErrors,
    /// Only file inputs, read completely, but an output dropped events (its bus refused
    /// them or was down past the drain deadline): the replay is incomplete.
    Dropped {
        output: String,
        dropped: u64,
        events: u64,
    },
}

/// A broker that cannot start (bad address, unreadable certificate...).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Input(#[from] ingress::StartError),
    #[error("{0}")]
    Http(String),
    #[error(transparent)]
    Config(#[from] tapbus_config::ConfigError),
}

/// Runs the broker until `shutdown` is cancelled or, with only file inputs, until every
/// file is published. Outputs are drained before it returns.
pub async fn run(
    settings: BrokerSettings,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Result<Outcome, StartError> {
    let built = views::build(&settings)?;
    for line in &built.summary {
        tracing::info!("{line}");
    }
    // SIGHUP: the privacy keys are read again (a rotated key); the views swap at once.
    {
        let (settings, encoder) = (settings.clone(), built.encoder.clone());
        tokio::spawn(async move {
            let Ok(mut hup) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            else {
                return;
            };
            while hup.recv().await.is_some() {
                match views::reload_keys(&settings, &encoder) {
                    Ok(lines) => {
                        tracing::info!("SIGHUP: privacy keys reloaded");
                        for line in lines {
                            tracing::info!("{line}");
                        }
                    }
                    Err(e) => tracing::error!(
                        "SIGHUP: privacy keys not reloaded, the views in use stay: {e}"
                    ),
                }
            }
        });
    }
    // A database replaced on disk is reloaded; the task ends with the runtime.
    let _reload = built.geo.as_ref().and_then(|g| {
        metrics.watch_geoip(g.clone());
        g.spawn_reload_task()
    });
    let (fanout, rxs) = Fanout::new(
        settings
            .outputs
            .iter()
            .zip(&built.output_views)
            .map(|(o, &view)| fanout::OutputQueue {
                capacity: o.queue,
                metrics: metrics.output(&o.name),
                filter: o.filter.clone(),
                view,
                raw: o.kind.is_raw(),
            })
            .collect(),
    );
    let offered = fanout.offered();
    let egress: Vec<_> = settings
        .outputs
        .iter()
        .cloned()
        .zip(rxs)
        .map(|(spec, rx)| {
            let m = metrics.output(&spec.name);
            (
                spec.name.clone(),
                m.clone(),
                tapbus_bus::publish::spawn(spec.name, spec.kind, rx, m),
            )
        })
        .collect();

    let inputs_stop = shutdown.child_token();
    let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let http = match settings.metrics_listen {
        Some(addr) => Some(
            http::start(
                addr,
                metrics.clone(),
                fanout.gauges(),
                ready.clone(),
                shutdown.clone(),
            )
            .await
            .map_err(StartError::Http)?,
        ),
        None => None,
    };
    let shared = Shared {
        metrics: metrics.clone(),
        fanout,
        encoder: built.encoder.clone(),
        max_frame: settings.max_frame_size,
        handshake_timeout: settings.handshake_timeout,
        connections: Arc::new(Semaphore::new(settings.max_connections)),
        shutdown: inputs_stop.clone(),
        tasks: TaskTracker::new(),
    };
    let mut listeners = Vec::new();
    let mut files = Vec::new();
    for i in &settings.inputs {
        match ingress::start(&i.name, &i.spec, &shared).await {
            Ok(Started::Listening(h)) => listeners.push(h),
            Ok(Started::File(h)) => files.push(h),
            Err(e) => {
                inputs_stop.cancel();
                return Err(e.into());
            }
        }
    }

    // Every input listens (or reads its file): /health says 200 from now on.
    ready.store(true, Ordering::Release);

    let mut outcome = Outcome::Clean;
    let replay = listeners.is_empty();
    if replay {
        // Only files: publish them completely (or until a signal), then drain and exit.
        let all = futures::future::join_all(files);
        tokio::select! {
            results = all => {
                if results.iter().any(|r| !matches!(r, Ok(Ok(())))) {
                    outcome = Outcome::FileErrors;
                }
            }
            _ = shutdown.cancelled() => tracing::info!("shutting down before the files were read completely"),
        }
    } else {
        shutdown.cancelled().await;
        tracing::info!("shutting down: closing inputs, then draining outputs");
        for f in files {
            f.abort();
        }
    }
    inputs_stop.cancel();
    for l in listeners {
        let _ = l.await;
    }
    shared.tasks.close();
    shared.tasks.wait().await;
    // Dropping the last fan-out handle closes the queues; egress drains and returns.
    drop(shared);
    // Each output drains what it holds within its own bounds; one that cannot (its bus is
    // down) is stopped at the deadline and whatever it had not settled is counted as
    // dropped at shutdown, so published + dropped == events for every output.
    let deadline = tokio::time::Instant::now() + settings.drain_timeout;
    for (name, m, mut task) in egress {
        if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
            task.abort();
            let _ = task.await;
            let left = offered.load(Ordering::Relaxed).saturating_sub(m.settled());
            m.dropped_shutdown.inc_by(left);
            m.inflight.set(0);
            tracing::warn!(output = %name, events = left, "output still draining at the shutdown deadline; its events are counted as dropped");
        }
        let published = m.published.get();
        let events = offered.load(Ordering::Relaxed);
        let dropped = m.dropped();
        tracing::info!(
            output = %name,
            events,
            published,
            dropped,
            filtered = m.filtered.get(),
            "output closed"
        );
        if replay && dropped > 0 && matches!(outcome, Outcome::Clean) {
            outcome = Outcome::Dropped {
                output: name.to_string(),
                dropped,
                events,
            };
        }
    }
    shutdown.cancel();
    if let Some(h) = http {
        let _ = h.await;
    }
    Ok(outcome)
}
