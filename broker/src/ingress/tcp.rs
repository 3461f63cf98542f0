//! `tcp://HOST:PORT`: plain TCP listener.

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::{Shared, spawn_connection};
use crate::metrics::InputMetrics;

pub async fn start(addr: &str, im: InputMetrics, shared: Shared) -> Result<JoinHandle<()>, String> {
    let l = TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let local = l.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(input = %im.name, "listening on tcp://{local}");
    Ok(tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shared.shutdown.cancelled() => return,
                r = l.accept() => match r {
                    Ok((s, peer)) => {
                        let _ = s.set_nodelay(true);
                        spawn_connection(s, format!("tcp:{peer}"), &im, &shared);
                    }
                    Err(e) => {
                        tracing::warn!(input = %im.name, "accept failed: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                }
            }
        }
    }))
}
