//! Ingress: dnstap bytes come in. One module per transport; each hands every connection
//! (or file) to [`serve_connection`], which runs a [`session`](crate::session).
//!
//! Listeners bind at start-up so a bad address fails the start with the input's name.
//! Accepting never waits on anything but the socket: a connection beyond
//! `max_connections` is accepted, logged and closed at once, so no sender is left
//! waiting for an ACCEPT that never comes.

pub mod dial;
pub mod file;
pub mod tcp;
pub mod tls;
pub mod unix;

use std::sync::Arc;
use std::time::Duration;

use tapbus_config::InputSpec;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::fanout::Fanout;
use crate::metrics::{InputMetrics, Metrics};
use crate::session::{self, Ctx, End, SessionError};

/// What every input shares.
#[derive(Debug, Clone)]
pub struct Shared {
    pub metrics: Arc<Metrics>,
    pub fanout: Fanout,
    pub encoder: Arc<arc_swap::ArcSwap<crate::views::Encoder>>,
    pub max_frame: usize,
    pub handshake_timeout: Duration,
    pub connections: Arc<Semaphore>,
    pub shutdown: CancellationToken,
    pub tasks: TaskTracker,
}

/// An input that could not start.
#[derive(Debug, thiserror::Error)]
#[error("inputs.{input}: {msg}")]
pub struct StartError {
    pub input: String,
    pub msg: String,
}

/// A started input: listeners run until shutdown; a file input ends by itself.
pub enum Started {
    Listening(tokio::task::JoinHandle<()>),
    File(tokio::task::JoinHandle<Result<(), SessionError>>),
}

/// Binds/opens the input and starts serving it.
pub async fn start(name: &str, spec: &InputSpec, shared: &Shared) -> Result<Started, StartError> {
    let im = shared.metrics.input(name);
    let err = |msg: String| StartError {
        input: name.to_string(),
        msg,
    };
    Ok(match spec.clone() {
        InputSpec::Unix { path, mode, group } => Started::Listening(
            unix::start(&path, mode, group.as_deref(), im, shared.clone()).map_err(err)?,
        ),
        InputSpec::Tcp { addr } => {
            Started::Listening(tcp::start(&addr, im, shared.clone()).await.map_err(err)?)
        }
        InputSpec::Tls {
            addr,
            cert,
            key,
            client_ca,
        } => {
            let acceptor = tls::acceptor(&cert, &key, client_ca.as_deref()).map_err(err)?;
            Started::Listening(
                tls::start(&addr, acceptor, im, shared.clone())
                    .await
                    .map_err(err)?,
            )
        }
        InputSpec::DialTcp { addr, backoff } => {
            Started::Listening(dial::start_tcp(addr, backoff, im, shared.clone()))
        }
        InputSpec::DialUnix { path, backoff } => {
            Started::Listening(dial::start_unix(path, backoff, im, shared.clone()))
        }
        InputSpec::DialTls { addr, backoff, tls } => {
            let (connector, server_name) = dial::connector(&tls).map_err(err)?;
            if tls.skip_verify {
                tracing::warn!(
                    input = %im.name,
                    "tls_skip_verify = true: the sender's certificate is not verified (anyone on the path can pose as it)"
                );
            }
            Started::Listening(dial::start_tls(
                addr,
                backoff,
                connector,
                server_name,
                im,
                shared.clone(),
            ))
        }
        InputSpec::File { path } => {
            let f = tokio::fs::File::open(&path)
                .await
                .map_err(|e| err(format!("cannot open {}: {e}", path.display())))?;
            Started::File(tokio::spawn(file::run(f, path, im, shared.clone())))
        }
    })
}

/// Spawns a task serving one accepted connection, if the connection limit allows.
pub fn spawn_connection<S>(stream: S, peer: String, im: &InputMetrics, shared: &Shared)
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let Ok(permit) = shared.connections.clone().try_acquire_owned() else {
        im.refused.inc();
        tracing::warn!(input = %im.name, %peer, "connection refused: max_connections reached");
        drop(stream);
        return;
    };
    let im = im.clone();
    let shared2 = shared.clone();
    shared.tasks.spawn(async move {
        let _permit = permit;
        serve_connection(stream, peer, im, &shared2).await;
    });
}

/// Runs one connection to its end and logs how it ended.
pub async fn serve_connection<S>(stream: S, peer: String, im: InputMetrics, shared: &Shared)
where
    S: AsyncRead + AsyncWrite + Send + Unpin,
{
    let (r, w) = tokio::io::split(stream);
    let _ = run_logged(r, w, peer, im, shared, false).await;
}

/// Runs a session with connection metrics and the one closing log line.
pub async fn run_logged<R, W>(
    r: R,
    w: W,
    peer: String,
    im: InputMetrics,
    shared: &Shared,
    backpressure: bool,
) -> Result<End, SessionError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    im.connections.inc();
    im.active.inc();
    tracing::info!(input = %im.name, %peer, "dnstap connection opened");
    let ctx = Ctx {
        peer,
        metrics: im,
        fanout: shared.fanout.clone(),
        encoder: shared.encoder.clone(),
        max_frame: shared.max_frame,
        handshake_timeout: shared.handshake_timeout,
        shutdown: shared.shutdown.clone(),
        backpressure,
    };
    let res = session::run(r, w, &ctx).await;
    ctx.metrics.active.dec();
    match &res {
        Ok(end) => {
            tracing::info!(input = %ctx.metrics.name, peer = %ctx.peer, "dnstap connection closed ({end:?})")
        }
        Err(e) => {
            ctx.metrics.malformed(e.reason());
            tracing::warn!(
                input = %ctx.metrics.name, peer = %ctx.peer, reason = e.reason(),
                "dnstap connection closed: {e}"
            );
        }
    }
    res
}
