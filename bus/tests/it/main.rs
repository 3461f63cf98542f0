//! Integration tests of the subscribers against real servers (nats-server, mosquitto,
//! redis-server from the installed binaries, each on a free loopback port, started through
//! `tapbus-testsupport` and stopped by their own PID when dropped).
//!
//! Every wait is bounded by `tokio::time::timeout`; every loop is bounded in count and
//! time; servers start in `spawn_blocking` (their launchers wait synchronously).

mod jetstream;
mod mqtt;
mod nats;
mod publish;
mod redis_sub;
mod restart;
mod waiting;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tapbus_bus::subscribe::{Delivery, Subscriber};
use tokio::time::{Instant, timeout};

/// Logs to the test's output when `RUST_LOG` is set.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off")),
        )
        .with_test_writer()
        .try_init();
}

/// Runs a blocking launcher off the runtime's worker threads.
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("launcher panicked")
}

/// Takes exactly `n` deliveries within `limit` (fails the test otherwise).
pub async fn take(sub: &mut Subscriber, n: usize, limit: Duration) -> Vec<Delivery> {
    let deadline = Instant::now() + limit;
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match timeout(left, sub.next()).await {
            Ok(Ok(d)) => out.push(d),
            Ok(Err(e)) => panic!("subscriber failed after {} of {n}: {e}", out.len()),
            Err(_) => panic!("only {} of {n} deliveries within {limit:?}", out.len()),
        }
    }
    out
}

/// Fails the test if anything arrives within `quiet`.
pub async fn assert_quiet(sub: &mut Subscriber, quiet: Duration) {
    if let Ok(r) = timeout(quiet, sub.next()).await {
        match r {
            Ok(d) => panic!(
                "unexpected delivery {:?} (delivered {}, id {:?})",
                String::from_utf8_lossy(&d.payload),
                d.delivered,
                d.id
            ),
            Err(e) => panic!("subscriber failed: {e}"),
        }
    }
}

/// What one worker of a shared subscription got: payload -> delivered counts.
pub type Got = Vec<(String, u64)>;

/// Runs `subs` concurrently, each in its own task, acking every delivery, until together
/// they took `want` deliveries or `limit` passed; then each keeps listening for `quiet`
/// more (so duplicates show). Returns what each got.
pub async fn share(
    subs: Vec<Subscriber>,
    want: usize,
    limit: Duration,
    quiet: Duration,
) -> Vec<Got> {
    let total = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + limit;
    let tasks: Vec<_> = subs
        .into_iter()
        .map(|mut sub| {
            let total = total.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut quiet_until: Option<Instant> = None;
                for _ in 0..100_000 {
                    let now = Instant::now();
                    if total.load(Ordering::SeqCst) >= want && quiet_until.is_none() {
                        quiet_until = Some(now + quiet);
                    }
                    let end = quiet_until.unwrap_or(deadline);
                    if now >= end {
                        break;
                    }
                    let wait = (end - now).min(Duration::from_millis(200));
                    match timeout(wait, sub.next()).await {
                        Ok(Ok(d)) => {
                            got.push((
                                String::from_utf8_lossy(&d.payload).into_owned(),
                                d.delivered,
                            ));
                            total.fetch_add(1, Ordering::SeqCst);
                            d.ack().await.expect("ack");
                        }
                        Ok(Err(e)) => panic!("subscriber failed: {e}"),
                        Err(_) => {}
                    }
                }
                got
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("worker panicked"));
    }
    out
}

/// Asserts the workers' deliveries are exactly `want`, each once, and that each worker got
/// some.
pub fn assert_split(got: &[Got], want: &BTreeSet<String>) {
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for g in got {
        for (p, _) in g {
            *seen.entry(p.as_str()).or_default() += 1;
        }
    }
    let dups: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dups.is_empty(), "delivered more than once: {dups:?}");
    let union: BTreeSet<String> = seen.keys().map(|s| s.to_string()).collect();
    let missing: Vec<_> = want.difference(&union).collect();
    let extra: Vec<_> = union.difference(want).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing {missing:?}, extra {extra:?}"
    );
    for (i, g) in got.iter().enumerate() {
        assert!(
            !g.is_empty(),
            "worker {i} got nothing: {:?}",
            got.iter().map(Vec::len).collect::<Vec<_>>()
        );
    }
}

pub fn payloads(ds: &[Delivery]) -> BTreeSet<String> {
    ds.iter()
        .map(|d| String::from_utf8_lossy(&d.payload).into_owned())
        .collect()
}

pub fn numbered(prefix: &str, n: usize) -> BTreeSet<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

/// Waits until the watch shows `up`.
pub async fn wait_connected(sub: &Subscriber, up: bool, limit: Duration) {
    let mut rx = sub.connected();
    timeout(limit, rx.wait_for(|v| *v == up))
        .await
        .unwrap_or_else(|_| panic!("connected never became {up} within {limit:?}"))
        .expect("watch closed");
}
