//! `tcp+json://HOST:PORT`: broker --JSON lines over TCP--> a collector (Logstash's `tcp`
//! input with the `json_lines` codec, Vector's `socket` source, `nc -lk`), one event per
//! line, the way dnstap_receiver forwards to a remote TCP collector.
//!
//! What it confirms: TCP has no application acknowledgement, so an event is counted
//! `published` once its line was written to the connection and the write flushed (the
//! kernel took it). Lines still in the kernel's buffers, or unread by the collector, when
//! the connection breaks are lost without notice; anything that needs more uses a bus with
//! confirmations (NATS JetStream, MQTT QoS 1, Redis). What it can do: the batch whose
//! write failed is held (at most [`MAX_BATCH`] events) and written again, whole lines
//! only, on the next connection; while disconnected it reads nothing, so its queue fills
//! and the fan-out drops and counts (`queue_full`). It reconnects with exponential
//! backoff and jitter.

use std::time::Duration;

use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::net::TcpStream;

use super::{Message, Queue};
use crate::backoff::Backoff;
use crate::metrics::PublishMetrics;

/// Events written per flush, at most (and held for a resend after a failed write).
pub const MAX_BATCH: usize = 4096;

/// How long one connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub async fn run(
    name: String,
    addr: String,
    backoff: tapbus_config::Backoff,
    mut rx: Queue,
    m: PublishMetrics,
) {
    let mut delays = Backoff::new(backoff.min, backoff.max);
    // Taken from the queue and not yet written: sent again after a reconnect.
    let mut held: Vec<Message> = Vec::new();
    let mut conn: Option<BufWriter<TcpStream>> = None;
    let mut closed = false;
    loop {
        if conn.is_none() {
            match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&addr)).await {
                Ok(Ok(s)) => {
                    let _ = s.set_nodelay(true);
                    tracing::info!(output = %name, %addr, "connected");
                    delays.reset();
                    m.up.set(1);
                    conn = Some(BufWriter::with_capacity(256 * 1024, s));
                }
                Ok(Err(e)) => {
                    tracing::warn!(output = %name, %addr, "connect failed: {e}; retrying");
                }
                Err(_) => {
                    tracing::warn!(output = %name, %addr, "connect timed out; retrying");
                }
            }
            if conn.is_none() {
                // A closed queue with nothing held: done (nothing to deliver).
                if closed && held.is_empty() {
                    return;
                }
                tokio::time::sleep(delays.next_delay()).await;
                continue;
            }
        }
        if held.is_empty() {
            if closed {
                break;
            }
            match rx.recv().await {
                Some(ev) => held.push(ev),
                None => {
                    closed = true;
                    continue;
                }
            }
            while held.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(ev) => held.push(ev),
                    Err(_) => break,
                }
            }
        }
        let Some(w) = conn.as_mut() else { continue };
        let mut failed = None;
        for ev in &held {
            if let Err(e) = write_line(w, &ev.payload).await {
                failed = Some(e);
                break;
            }
        }
        if failed.is_none()
            && let Err(e) = w.flush().await
        {
            failed = Some(e);
        }
        match failed {
            None => {
                m.published.inc_by(held.len() as u64);
                for ev in held.drain(..) {
                    if let Some(t) = ev.settle {
                        t.published();
                    }
                }
            }
            Some(e) => {
                // The whole batch again, on a new connection (a line cut by the break
                // is the old connection's loss).
                tracing::warn!(output = %name, %addr, held = held.len(), "write failed: {e}; reconnecting");
                m.up.set(0);
                m.resent.inc_by(held.len() as u64);
                conn = None;
            }
        }
    }
    if let Some(mut w) = conn {
        let _ = w.flush().await;
        let _ = w.shutdown().await;
    }
}

async fn write_line(w: &mut BufWriter<TcpStream>, payload: &[u8]) -> std::io::Result<()> {
    w.write_all(payload).await?;
    w.write_all(b"\n").await
}
