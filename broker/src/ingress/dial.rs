//! `dial+tcp://HOST:PORT`, `dial+unix:///path`: connect out to a sender that listens, such
//! as CoreDNS `dnstap listen`. tapbus stays the Frame Streams reader (the sender still
//! sends READY first); on any end or failure it reconnects with exponential backoff
//! (`reconnect_min` doubling to `reconnect_max`, with jitter: [`tapbus_bus::backoff`]).

use std::future::Future;
use std::path::PathBuf;

use tapbus_bus::backoff::Backoff as Delays;
use tapbus_config::Backoff;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::task::JoinHandle;

use super::{Shared, run_logged};
use crate::metrics::InputMetrics;
use crate::session::End;

pub fn start_tcp(addr: String, b: Backoff, im: InputMetrics, shared: Shared) -> JoinHandle<()> {
    let peer = format!("dial+tcp:{addr}");
    tokio::spawn(dial_loop(peer, b, im, shared, move || {
        let addr = addr.clone();
        async move {
            let s = tokio::net::TcpStream::connect(&addr).await?;
            let _ = s.set_nodelay(true);
            Ok(s)
        }
    }))
}

pub fn start_unix(path: PathBuf, b: Backoff, im: InputMetrics, shared: Shared) -> JoinHandle<()> {
    let peer = format!("dial+unix:{}", path.display());
    tokio::spawn(dial_loop(peer, b, im, shared, move || {
        let path = path.clone();
        async move { tokio::net::UnixStream::connect(&path).await }
    }))
}

async fn dial_loop<S, F, Fut>(
    peer: String,
    b: Backoff,
    im: InputMetrics,
    shared: Shared,
    connect: F,
) where
    S: AsyncRead + AsyncWrite + Send + Unpin,
    F: Fn() -> Fut,
    Fut: Future<Output = std::io::Result<S>>,
{
    let mut delays = Delays::new(b.min, b.max);
    loop {
        let attempt = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            r = tokio::time::timeout(shared.handshake_timeout, connect()) => r,
        };
        match attempt {
            Ok(Ok(stream)) => {
                let (r, w) = tokio::io::split(stream);
                let res = run_logged(r, w, peer.clone(), im.clone(), &shared, false).await;
                if matches!(res, Ok(End::Shutdown)) {
                    return;
                }
                // A session that got going resets the backoff.
                delays.reset();
            }
            Ok(Err(e)) => {
                let delay = delays.peek();
                tracing::debug!(input = %im.name, %peer, "connect failed: {e}; retrying in {delay:?}");
            }
            Err(_) => {
                let delay = delays.peek();
                tracing::debug!(input = %im.name, %peer, "connect timed out; retrying in {delay:?}")
            }
        }
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = tokio::time::sleep(delays.next_delay()) => {}
        }
    }
}
