//! One dnstap connection (or file), from bytes to events.
//!
//! Reads continuously (a sender is never left waiting on us), splits the byte stream into
//! frames ([`FrameDecoder`]), answers the handshake ([`ReaderHandshake`]: ACCEPT after
//! READY, FINISH after STOP), turns each data frame into an event ([`tapbus_proto::event`])
//! and offers it to the fan-out, which never blocks.
//!
//! Failure policy: a frame that is not dnstap is skipped and counted (the stream is intact);
//! an oversize data frame is skipped and counted; a Frame Streams or handshake error ends
//! this connection only, with one log line naming the peer and the reason.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tapbus_proto::event;
use tapbus_proto::fstrm::{
    DNSTAP_CONTENT_TYPE, Frame, FrameDecoder, FrameError, HandshakeError, ReaderHandshake, Step,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::codec::Decoder;
use tokio_util::sync::CancellationToken;

use crate::fanout::{Event, Fanout};
use crate::metrics::InputMetrics;

/// Everything a session needs besides its stream.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub peer: String,
    pub metrics: InputMetrics,
    pub fanout: Fanout,
    pub max_frame: usize,
    pub handshake_timeout: Duration,
    pub shutdown: CancellationToken,
    /// Wait for room in the output queues instead of dropping (files: nobody to stall).
    pub backpressure: bool,
}

/// How a session ended without error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The peer closed the stream (or the file ended) at a frame boundary.
    Eof,
    /// Bidirectional STOP answered with FINISH.
    Finished,
    /// The broker is shutting down.
    Shutdown,
}

/// Why a connection was closed.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("{0}")]
    Frame(#[from] FrameError),
    #[error("{0}")]
    Handshake(#[from] HandshakeError),
    #[error("handshake not completed within {0:?}")]
    HandshakeTimeout(Duration),
    #[error("read error: {0}")]
    Read(std::io::Error),
    #[error("write error: {0}")]
    Write(std::io::Error),
}

impl SessionError {
    /// Stable label for `tapbus_malformed_total{reason}`.
    pub fn reason(&self) -> &'static str {
        match self {
            SessionError::Frame(FrameError::Truncated { .. }) => "truncated",
            SessionError::Frame(FrameError::ControlTooLong { .. }) => "control_too_long",
            SessionError::Frame(FrameError::ControlTooShort { .. }) => "control_too_short",
            SessionError::Frame(FrameError::ControlFieldOverrun { .. }) => "control_field_overrun",
            SessionError::Frame(FrameError::ControlFieldTooLong { .. }) => "control_field_too_long",
            SessionError::Frame(_) => "frame_error",
            SessionError::Handshake(HandshakeError::ContentTypeMismatch { .. }) => {
                "content_type_mismatch"
            }
            SessionError::Handshake(HandshakeError::DataBeforeStart) => "data_before_start",
            SessionError::Handshake(_) => "unexpected_control",
            SessionError::HandshakeTimeout(_) => "handshake_timeout",
            SessionError::Read(_) => "read_error",
            SessionError::Write(_) => "write_error",
        }
    }
}

const READ_CHUNK: usize = 256 * 1024;
const JSON_CHUNK: usize = 64 * 1024;

/// Runs the Frame Streams reader over `reader`, writing handshake replies to `writer`.
pub async fn run<R, W>(mut reader: R, mut writer: W, ctx: &Ctx) -> Result<End, SessionError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut s = State {
        dec: FrameDecoder::new(ctx.max_frame),
        hs: ReaderHandshake::new(DNSTAP_CONTENT_TYPE),
        out: Vec::with_capacity(4096),
        json: BytesMut::new(),
        identity: Bytes::new(),
        bad_frames: 0,
        reply: BytesMut::new(),
    };
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    loop {
        while let Some(frame) = s.dec.decode(&mut buf)? {
            if let Some(end) = s.frame(frame, ctx, &mut writer).await? {
                return Ok(end);
            }
            // A read can hold thousands of frames and `try_send` never yields: without this,
            // the output task woken on this worker waits until the whole read is decoded
            // while its queue overflows (tokio does not let the idle worker steal it).
            tokio::task::consume_budget().await;
        }
        if buf.capacity() - buf.len() < READ_CHUNK / 4 {
            buf.reserve(READ_CHUNK);
        }
        let read = reader.read_buf(&mut buf);
        let n = tokio::select! {
            biased;
            _ = ctx.shutdown.cancelled() => return Ok(End::Shutdown),
            r = async {
                if s.hs.is_streaming() {
                    Ok(read.await)
                } else {
                    tokio::time::timeout(ctx.handshake_timeout, read).await
                }
            } => r.map_err(|_| SessionError::HandshakeTimeout(ctx.handshake_timeout))?
                .map_err(SessionError::Read)?,
        };
        if n == 0 {
            while let Some(frame) = s.dec.decode_eof(&mut buf)? {
                if let Some(end) = s.frame(frame, ctx, &mut writer).await? {
                    return Ok(end);
                }
            }
            return Ok(End::Eof);
        }
        ctx.metrics.bytes.inc_by(n as u64);
    }
}

struct State {
    dec: FrameDecoder,
    hs: ReaderHandshake,
    out: Vec<u8>,
    /// Event JSON is copied into shared chunks (one allocation per ~64 KiB, not per event).
    json: BytesMut,
    /// The last identity seen, owned, so queued events do not pin read buffers.
    identity: Bytes,
    bad_frames: u64,
    reply: BytesMut,
}

impl State {
    async fn frame<W: AsyncWrite + Unpin>(
        &mut self,
        frame: Frame,
        ctx: &Ctx,
        writer: &mut W,
    ) -> Result<Option<End>, SessionError> {
        match frame {
            Frame::Data(payload) => {
                self.hs.on_data()?;
                ctx.metrics.data.inc();
                if let Some(ev) = self.data(payload, ctx) {
                    if ctx.backpressure {
                        tokio::select! {
                            _ = ctx.fanout.send_wait(ev) => {}
                            _ = ctx.shutdown.cancelled() => return Ok(Some(End::Shutdown)),
                        }
                    } else {
                        ctx.fanout.send(ev);
                    }
                }
            }
            Frame::Oversize { len } => {
                self.hs.on_data()?;
                ctx.metrics.oversize.inc();
                tracing::warn!(
                    input = %ctx.metrics.name, peer = %ctx.peer, len,
                    max = ctx.max_frame,
                    "data frame larger than max_frame_size skipped"
                );
            }
            Frame::Control(c) => {
                ctx.metrics.control.inc();
                match self.hs.on_control(&c)? {
                    Step::Reply(r) => {
                        self.write(&r, writer).await?;
                        tracing::debug!(input = %ctx.metrics.name, peer = %ctx.peer, "READY answered with ACCEPT");
                    }
                    Step::Started => {
                        tracing::debug!(input = %ctx.metrics.name, peer = %ctx.peer, mode = ?self.hs.mode(), "stream started");
                    }
                    Step::Ignored => {
                        ctx.metrics.malformed("unknown_control");
                        tracing::warn!(
                            input = %ctx.metrics.name, peer = %ctx.peer,
                            "unknown control frame {:?} ignored", c.kind
                        );
                    }
                    Step::Finished { reply } => {
                        if let Some(r) = reply {
                            // The peer may already have closed (unbound does): not an error.
                            let _ = self.write(&r, writer).await;
                            return Ok(Some(End::Finished));
                        }
                    }
                }
            }
        }
        Ok(None)
    }

    /// Frames become events here.
    fn data(&mut self, payload: Bytes, ctx: &Ctx) -> Option<Event> {
        self.out.clear();
        match event::encode(payload, &ctx.peer, &mut self.out) {
            Ok(mut summary) => {
                if summary.identity != self.identity {
                    self.identity = Bytes::copy_from_slice(&summary.identity);
                }
                summary.identity = self.identity.clone();
                if summary.malformed_dns {
                    ctx.metrics.dns_malformed.inc();
                }
                ctx.metrics.events.inc();
                if self.json.capacity() < self.out.len() {
                    self.json.reserve(JSON_CHUNK.max(self.out.len()));
                }
                self.json.extend_from_slice(&self.out);
                Some(Event {
                    payload: self.json.split().freeze(),
                    summary,
                })
            }
            Err(e) => {
                ctx.metrics.malformed(e.reason());
                self.bad_frames += 1;
                // One warning per connection; the rest at debug (the counter has them all).
                if self.bad_frames == 1 {
                    tracing::warn!(
                        input = %ctx.metrics.name, peer = %ctx.peer,
                        "data frame skipped: {e} (further ones on this connection are logged at debug level)"
                    );
                } else {
                    tracing::debug!(input = %ctx.metrics.name, peer = %ctx.peer, "data frame skipped: {e}");
                }
                None
            }
        }
    }

    async fn write<W: AsyncWrite + Unpin>(
        &mut self,
        c: &tapbus_proto::fstrm::ControlFrame,
        writer: &mut W,
    ) -> Result<(), SessionError> {
        self.reply.clear();
        c.encode(&mut self.reply);
        writer
            .write_all(&self.reply)
            .await
            .map_err(SessionError::Write)?;
        writer.flush().await.map_err(SessionError::Write)
    }
}
