//! JSON lines on standard output (logs go to standard error).

use tokio::io::{AsyncWriteExt, BufWriter};

use super::Queue as EventRx;
use crate::metrics::PublishMetrics;

pub async fn run(mut rx: EventRx, m: PublishMetrics) {
    let mut out = BufWriter::with_capacity(256 * 1024, tokio::io::stdout());
    m.up.set(1);
    let mut tickets = Vec::new();
    while let Some(ev) = rx.recv().await {
        let mut batch = 0u64;
        let mut next = Some(ev);
        while let Some(ev) = next {
            if out.write_all(&ev.payload).await.is_err() || out.write_all(b"\n").await.is_err() {
                tracing::error!(
                    output = "stdout",
                    "cannot write to standard output; dropping events"
                );
                m.up.set(0);
                m.dropped_error.inc();
                drain_as_dropped(&mut rx, &m).await;
                return;
            }
            batch += 1;
            if let Some(t) = ev.settle {
                tickets.push(t);
            }
            next = if batch < 4096 {
                rx.try_recv().ok()
            } else {
                None
            };
        }
        if out.flush().await.is_err() {
            m.up.set(0);
        }
        m.published.inc_by(batch);
        for t in tickets.drain(..) {
            t.published();
        }
    }
    let _ = out.flush().await;
}

async fn drain_as_dropped(rx: &mut EventRx, m: &PublishMetrics) {
    while rx.recv().await.is_some() {
        m.dropped_error.inc();
    }
}
