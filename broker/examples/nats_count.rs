//! `nats_count`: counts NATS messages, for benchmarks.
//!
//! ```text
//! nats_count --server nats://127.0.0.1:4222 --subject 'dnstap.>' --expect 1000000 [--idle-secs 5] [--raw]
//! ```
//!
//! Subscribes, prints `ready` on stderr once the subscription is registered with the server,
//! then counts messages until `--expect` have arrived or none has arrived for `--idle-secs`
//! (before the first message it waits up to `--start-secs`). Prints one JSON line on stdout:
//!
//! ```text
//! {"count":...,"bytes":...,"first_unix_ns":...,"last_unix_ns":...,"seconds":...,"msgs_per_sec":...,"slow_consumer_events":0,"complete":true,...}
//! ```
//!
//! Default mode uses async-nats with a large subscription channel (`subscription_capacity`)
//! so that the counter is not the bottleneck; client-side slow-consumer events (messages the
//! client dropped) are reported. `--raw` speaks the NATS text protocol itself over one
//! blocking TCP socket (CONNECT, SUB, then `MSG` lines and PING/PONG): several times cheaper
//! per message, for when the subscriber's CPU competes with the system under test.

use std::io::Write;
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use futures::StreamExt;

#[path = "common/count.rs"]
mod count;
#[path = "common/proc.rs"]
mod proc;
use count::{ReadBuf, Tally, find_crlf};

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
    /// Client-side subscription buffer, in messages (async-nats mode).
    #[arg(long, default_value_t = 1 << 20)]
    capacity: usize,
    /// Speak the NATS protocol directly (no async-nats): cheaper per message.
    #[arg(long)]
    raw: bool,
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let t = if a.raw {
        raw(&a)?
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(with_async_nats(&a))?
    };
    t.print(a.expect);
    Ok(())
}

async fn with_async_nats(a: &Args) -> anyhow::Result<Tally> {
    let slow = Arc::new(AtomicU64::new(0));
    let disconnects = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let (s2, d2, e2) = (slow.clone(), disconnects.clone(), errors.clone());
    let client = async_nats::ConnectOptions::new()
        .name("nats_count")
        .subscription_capacity(a.capacity)
        .connection_timeout(Duration::from_secs(5))
        .event_callback(move |ev| {
            let (s, d, e) = (s2.clone(), d2.clone(), e2.clone());
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
                    other => {
                        e.fetch_add(1, Ordering::Relaxed);
                        eprintln!("nats_count: {other}");
                    }
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
    let mut t = Tally {
        ended: "idle",
        ..Tally::default()
    };
    loop {
        let wait = if t.count == 0 { start } else { idle };
        match tokio::time::timeout(wait, sub.next()).await {
            Ok(Some(m)) => {
                t.add(1, m.payload.len() as u64);
                if a.expect != 0 && t.count >= a.expect {
                    t.ended = "expected";
                    break;
                }
            }
            Ok(None) => {
                t.ended = "closed";
                break;
            }
            Err(_) => break,
        }
    }
    t.slow = slow.load(Ordering::Relaxed);
    t.disconnects = disconnects.load(Ordering::Relaxed);
    t.errors = errors.load(Ordering::Relaxed);
    Ok(t)
}

/// The NATS text protocol by hand: INFO, CONNECT, SUB, PING/PONG, then MSG lines.
fn raw(a: &Args) -> anyhow::Result<Tally> {
    let addr = a
        .server
        .strip_prefix("nats://")
        .unwrap_or(&a.server)
        .trim_end_matches('/');
    let mut s = TcpStream::connect(addr).with_context(|| format!("connect {addr}"))?;
    s.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut rb = ReadBuf::new(4 << 20);
    // Bytes of a MSG payload (plus its CRLF) still to skip.
    let mut skip: usize = 0;
    let (mut sent_connect, mut subscribed) = (false, false);
    let mut t = Tally {
        ended: "idle",
        ..Tally::default()
    };
    let idle = Duration::from_secs_f64(a.idle_secs);
    let start_wait = Duration::from_secs_f64(a.start_secs);
    loop {
        // Parse what is buffered.
        let (mut n, mut nbytes, mut pong) = (0u64, 0u64, false);
        while rb.start < rb.end {
            if skip > 0 {
                let k = skip.min(rb.end - rb.start);
                rb.start += k;
                skip -= k;
                continue;
            }
            let Some(eol) = find_crlf(&rb.buf[rb.start..rb.end]) else {
                break; // partial line
            };
            let l = &rb.buf[rb.start..rb.start + eol];
            if l.starts_with(b"MSG ") {
                let size: usize = l
                    .rsplit(|&c| c == b' ')
                    .next()
                    .and_then(|v| std::str::from_utf8(v).ok())
                    .and_then(|v| v.parse().ok())
                    .context("bad MSG line")?;
                n += 1;
                nbytes += size as u64;
                skip = size + 2;
            } else if l.starts_with(b"PING") {
                pong = true;
            } else if l.starts_with(b"INFO ") && !sent_connect {
                sent_connect = true;
                write!(
                    s,
                    "CONNECT {{\"verbose\":false,\"pedantic\":false,\"name\":\"nats_count_raw\",\"protocol\":1}}\r\nSUB {} 1\r\nPING\r\n",
                    a.subject
                )?;
            } else if l.starts_with(b"PONG") && !subscribed {
                subscribed = true;
                eprintln!("ready");
                rb.touch();
            } else if l.starts_with(b"-ERR") {
                t.errors += 1;
                let msg = String::from_utf8_lossy(l).into_owned();
                eprintln!("nats_count: server: {msg}");
                if msg.to_ascii_lowercase().contains("slow consumer") {
                    t.slow += 1;
                }
                if !subscribed {
                    bail!("server refused the subscription: {msg}");
                }
            }
            rb.start += eol + 2;
        }
        if pong {
            s.write_all(b"PONG\r\n")?;
        }
        if n > 0 {
            t.add(n, nbytes);
            if a.expect != 0 && t.count >= a.expect {
                t.ended = "expected";
                break;
            }
        }
        if !rb.refill(
            &mut s,
            &mut t,
            "protocol line",
            subscribed,
            start_wait,
            idle,
        )? {
            break;
        }
    }
    Ok(t)
}
