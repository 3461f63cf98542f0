//! `nats_count`: counts NATS messages, for benchmarks.
//!
//! ```text
//! nats_count --server nats://127.0.0.1:4222 --subject 'dnstap.>' --expect 1000000 [--idle-secs 5]
//! ```
//!
//! Subscribes, prints `ready` on stderr once the subscription is registered with the server,
//! then counts messages until `--expect` have arrived or none has arrived for `--idle-secs`
//! (before the first message it waits up to `--start-secs`). Prints one JSON line on stdout:
//!
//! ```text
//! {"count":...,"bytes":...,"first_unix_ns":...,"last_unix_ns":...,"seconds":...,"msgs_per_sec":...,"slow_consumer_events":0,"complete":true}
//! ```
//!
//! The subscription channel is large (`subscription_capacity`) so that the counter is not the
//! bottleneck; client-side slow-consumer events (messages the client dropped) are reported.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser;
use futures::StreamExt;

#[derive(Parser, Debug)]
#[command(about = "Count NATS messages on a subject until N arrived or the stream went idle")]
struct Args {
    /// NATS server URL.
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    server: String,
    /// Subject to subscribe to.
    #[arg(long, default_value = "dnstap.>")]
    subject: String,
    /// Stop after this many messages (0: only stop when idle).
    #[arg(long, default_value_t = 0)]
    expect: u64,
    /// Stop when no message arrived for this many seconds (after the first message).
    #[arg(long, default_value_t = 5.0)]
    idle_secs: f64,
    /// Stop if the first message has not arrived after this many seconds.
    #[arg(long, default_value_t = 120.0)]
    start_secs: f64,
    /// Client-side subscription buffer, in messages.
    #[arg(long, default_value_t = 1 << 20)]
    capacity: usize,
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let slow = Arc::new(AtomicU64::new(0));
    let disconnects = Arc::new(AtomicU64::new(0));
    let (s2, d2) = (slow.clone(), disconnects.clone());
    let client = async_nats::ConnectOptions::new()
        .name("nats_count")
        .subscription_capacity(a.capacity)
        .connection_timeout(Duration::from_secs(5))
        .event_callback(move |ev| {
            let (s, d) = (s2.clone(), d2.clone());
            async move {
                match ev {
                    async_nats::Event::SlowConsumer(_) => {
                        s.fetch_add(1, Ordering::Relaxed);
                    }
                    async_nats::Event::Disconnected => {
                        d.fetch_add(1, Ordering::Relaxed);
                        eprintln!("nats_count: disconnected");
                    }
                    async_nats::Event::Connected => {}
                    other => eprintln!("nats_count: {other}"),
                }
            }
        })
        .connect(a.server.as_str())
        .await?;
    let mut sub = client.subscribe(a.subject.clone()).await?;
    client.flush().await?;
    eprintln!("ready");

    let idle = Duration::from_secs_f64(a.idle_secs);
    let start = Duration::from_secs_f64(a.start_secs);
    let (mut count, mut bytes) = (0u64, 0u64);
    let (mut first, mut last) = (0u128, 0u128);
    let mut first_i = None;
    let mut last_i = None;
    let mut ended = "idle";
    loop {
        let wait = if count == 0 { start } else { idle };
        match tokio::time::timeout(wait, sub.next()).await {
            Ok(Some(m)) => {
                let t = std::time::Instant::now();
                if count == 0 {
                    first = now_ns();
                    first_i = Some(t);
                }
                last_i = Some(t);
                count += 1;
                bytes += m.payload.len() as u64;
                if a.expect != 0 && count >= a.expect {
                    ended = "expected";
                    break;
                }
            }
            Ok(None) => {
                ended = "closed";
                break;
            }
            Err(_) => break,
        }
    }
    if let Some(l) = last_i {
        // Convert the last message's monotonic instant to wall time.
        let ago = l.elapsed();
        last = now_ns().saturating_sub(ago.as_nanos());
    }
    let secs = match (first_i, last_i) {
        (Some(f), Some(l)) => l.duration_since(f).as_secs_f64(),
        _ => 0.0,
    };
    println!(
        "{{\"count\":{},\"bytes\":{},\"first_unix_ns\":{},\"last_unix_ns\":{},\"seconds\":{:.6},\"msgs_per_sec\":{:.0},\"slow_consumer_events\":{},\"disconnects\":{},\"ended\":\"{}\",\"complete\":{}}}",
        count,
        bytes,
        first,
        last,
        secs,
        if secs > 0.0 { count as f64 / secs } else { 0.0 },
        slow.load(Ordering::Relaxed),
        disconnects.load(Ordering::Relaxed),
        ended,
        a.expect != 0 && count >= a.expect,
    );
    Ok(())
}
