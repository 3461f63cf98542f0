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

static DEFAULT_VIEW: event::View = event::View {
    addr: None,
    qname: event::QnameMode::Keep,
    drop: event::DropFields::EMPTY,
};

/// Everything a session needs besides its stream.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub peer: String,
    pub metrics: InputMetrics,
    pub fanout: Fanout,
    /// The enrichment and the outputs' privacy views.
    pub encoder: std::sync::Arc<arc_swap::ArcSwap<crate::views::Encoder>>,
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
        outs: vec![Vec::with_capacity(4096); ctx.encoder.load().views.len().max(1)],
        scratch: event::Scratch::default(),
        views: Vec::new(),
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
    /// One JSON buffer per view.
    outs: Vec<Vec<u8>>,
    scratch: event::Scratch,
    /// The views after the first, of the event being offered.
    views: Vec<Bytes>,
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
                            _ = ctx.fanout.send_wait(ev, &self.views) => {}
                            _ = ctx.shutdown.cancelled() => return Ok(Some(End::Shutdown)),
                        }
                    } else {
                        ctx.fanout.send_views(ev, &self.views);
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

    /// Frames become events here. A raw dnstap output gets the original frame beside the
    /// JSON (a reference-counted handle, no copy); when every output is raw and none has a
    /// filter, the JSON is not built at all and the frame passes through as it came (not
    /// decoded, so not checked either: like `fstrm_capture`, a relay of bytes).
    fn data(&mut self, payload: Bytes, ctx: &Ctx) -> Option<Event> {
        if !ctx.fanout.wants_json() {
            ctx.metrics.events.inc();
            let mut ev = Event::event(Bytes::new(), event::Summary::default());
            ev.raw = Some(payload);
            return Some(ev);
        }
        let raw = ctx.fanout.wants_raw().then(|| payload.clone());
        for o in &mut self.outs {
            o.clear();
        }
        self.views.clear();
        let enc = ctx.encoder.load();
        if self.outs.len() < enc.views.len() {
            self.outs.resize_with(enc.views.len(), Vec::new);
        }
        let views: &[event::View] = if enc.views.is_empty() {
            std::slice::from_ref(&DEFAULT_VIEW)
        } else {
            &enc.views
        };
        match event::encode_views(
            payload,
            &ctx.peer,
            &enc.enrich,
            views,
            &mut self.scratch,
            &mut self.outs,
        ) {
            Ok(mut summary) => {
                if summary.identity != self.identity {
                    self.identity = Bytes::copy_from_slice(&summary.identity);
                }
                summary.identity = self.identity.clone();
                if summary.malformed_dns {
                    ctx.metrics.dns_malformed.inc();
                }
                ctx.metrics.events.inc();
                let mut first = None;
                for out in &self.outs {
                    if self.json.capacity() < out.len() {
                        self.json.reserve(JSON_CHUNK.max(out.len()));
                    }
                    self.json.extend_from_slice(out);
                    let bytes = self.json.split().freeze();
                    if first.is_none() {
                        first = Some(bytes);
                    } else {
                        self.views.push(bytes);
                    }
                }
                let mut ev = Event::event(first.unwrap_or_default(), summary);
                ev.raw = raw;
                Some(ev)
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

/// The session in process: a `tokio::io::duplex` pipe stands in for the socket, the
/// fan-out's queue for the outputs. No sockets, no sleeps (paused time for the timeout).
#[cfg(test)]
mod tests {
    use super::*;
    use crate::fanout::EventRx;
    use crate::metrics::{Metrics, PublishMetrics};
    use tapbus_proto::fstrm::{DEFAULT_MAX_DATA_FRAME, decode_all};
    use tapbus_testsupport::fstrm::{ControlType, control_bytes, encode_data};
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, duplex};

    /// The first `n` dnstap payloads of a real capture.
    fn payloads(n: usize) -> Vec<Bytes> {
        let bytes =
            std::fs::read(tapbus_testsupport::testdata::path("unbound.fstrm")).expect("capture");
        let (frames, _) = decode_all(&bytes, DEFAULT_MAX_DATA_FRAME);
        let data: Vec<Bytes> = frames
            .into_iter()
            .filter_map(|f| match f {
                Frame::Data(b) => Some(b),
                _ => None,
            })
            .take(n)
            .collect();
        assert_eq!(data.len(), n);
        data
    }

    struct Rig {
        metrics: Metrics,
        ctx: Ctx,
        rx: EventRx,
        output: PublishMetrics,
    }

    fn rig(queue: usize, max_frame: usize) -> Rig {
        rig_raw(queue, max_frame, false)
    }

    /// `raw`: the one output is a raw dnstap output.
    fn rig_raw(queue: usize, max_frame: usize, raw: bool) -> Rig {
        let metrics = Metrics::new();
        let output = metrics.output("out");
        let (fanout, mut rxs) = Fanout::new(vec![crate::fanout::OutputQueue {
            capacity: queue,
            metrics: output.clone(),
            filter: None,
            view: 0,
            raw,
        }]);
        let ctx = Ctx {
            peer: "test-peer".into(),
            metrics: metrics.input("in"),
            fanout,
            encoder: Default::default(),
            max_frame,
            handshake_timeout: Duration::from_secs(5),
            shutdown: CancellationToken::new(),
            backpressure: false,
        };
        let rx = rxs.remove(0);
        Rig {
            metrics,
            ctx,
            rx,
            output,
        }
    }

    fn ct() -> &'static [&'static [u8]] {
        &[DNSTAP_CONTENT_TYPE]
    }

    fn data_frames(payloads: &[Bytes]) -> Vec<u8> {
        let mut out = Vec::new();
        for p in payloads {
            encode_data(p, &mut out);
        }
        out
    }

    /// Runs a session over one end of a pipe; the test drives the other end.
    fn start(
        ctx: Ctx,
    ) -> (
        DuplexStream,
        tokio::task::JoinHandle<Result<End, SessionError>>,
    ) {
        let (ours, theirs) = duplex(1 << 20);
        let task = tokio::spawn(async move {
            let (r, w) = tokio::io::split(theirs);
            run(r, w, &ctx).await
        });
        (ours, task)
    }

    fn drain(rx: &mut EventRx) -> Vec<Event> {
        let mut out = Vec::new();
        while let Ok(e) = rx.try_recv() {
            out.push(e);
        }
        out
    }

    #[tokio::test]
    async fn bidirectional_handshake_and_every_event() {
        let mut r = rig(1000, DEFAULT_MAX_DATA_FRAME);
        let p = payloads(50);
        let (mut peer, task) = start(r.ctx.clone());
        peer.write_all(&control_bytes(ControlType::Ready, ct()))
            .await
            .expect("write");
        // ACCEPT with the content type comes back.
        let mut accept = vec![0u8; control_bytes(ControlType::Accept, ct()).len()];
        peer.read_exact(&mut accept).await.expect("accept");
        assert_eq!(accept, control_bytes(ControlType::Accept, ct()));
        peer.write_all(&control_bytes(ControlType::Start, ct()))
            .await
            .expect("write");
        peer.write_all(&data_frames(&p)).await.expect("write");
        peer.write_all(&control_bytes(ControlType::Stop, &[]))
            .await
            .expect("write");
        let mut finish = vec![0u8; control_bytes(ControlType::Finish, &[]).len()];
        peer.read_exact(&mut finish).await.expect("finish");
        assert_eq!(finish, control_bytes(ControlType::Finish, &[]));
        assert_eq!(task.await.expect("join").expect("session"), End::Finished);

        let events = drain(&mut r.rx);
        assert_eq!(events.len(), p.len());
        for (e, frame) in events.iter().zip(&p) {
            let mut want = Vec::new();
            event::encode(frame.clone(), "test-peer", &mut want).expect("encodes");
            assert_eq!(&e.payload[..], &want[..]);
        }
        assert_eq!(r.ctx.metrics.data.get(), 50);
        assert_eq!(r.ctx.metrics.events.get(), 50);
        assert_eq!(r.ctx.metrics.control.get(), 3);
        assert_eq!(r.output.dropped(), 0);
    }

    /// Only raw outputs: the frames pass through as they came (not even decoded: a frame
    /// that is not dnstap goes too), each one counted as an event; no JSON is built.
    #[tokio::test]
    async fn raw_outputs_only_get_the_frames_without_json() {
        let mut r = rig_raw(1000, DEFAULT_MAX_DATA_FRAME, true);
        let mut p = payloads(20);
        p.push(Bytes::from_static(b"not dnstap"));
        let (mut peer, task) = start(r.ctx.clone());
        peer.write_all(&control_bytes(ControlType::Start, ct()))
            .await
            .expect("write");
        peer.write_all(&data_frames(&p)).await.expect("write");
        drop(peer);
        assert_eq!(task.await.expect("join").expect("session"), End::Eof);
        let events = drain(&mut r.rx);
        let frames: Vec<Bytes> = events.iter().filter_map(|e| e.raw.clone()).collect();
        assert_eq!(frames, p);
        assert!(events.iter().all(|e| e.payload.is_empty()));
        assert_eq!(r.ctx.metrics.events.get(), 21);
    }

    #[tokio::test]
    async fn unidirectional_stream_ends_at_eof() {
        let mut r = rig(1000, DEFAULT_MAX_DATA_FRAME);
        let p = payloads(20);
        let (mut peer, task) = start(r.ctx.clone());
        peer.write_all(&tapbus_testsupport::fstrm::unidirectional_bytes(
            DNSTAP_CONTENT_TYPE,
            &p,
        ))
        .await
        .expect("write");
        drop(peer);
        assert_eq!(task.await.expect("join").expect("session"), End::Eof);
        assert_eq!(drain(&mut r.rx).len(), 20);
    }

    #[tokio::test]
    async fn a_bad_frame_is_skipped_and_counted_the_rest_go_on() {
        let mut r = rig(1000, 4096);
        let p = payloads(3);
        let mut bytes = control_bytes(ControlType::Start, ct());
        encode_data(&p[0], &mut bytes);
        encode_data(b"\xff\xff not protobuf", &mut bytes);
        encode_data(&vec![0u8; 5000], &mut bytes); // over max_frame
        encode_data(&p[1], &mut bytes);
        encode_data(&p[2], &mut bytes);
        bytes.extend_from_slice(&control_bytes(ControlType::Stop, &[]));
        let (mut peer, task) = start(r.ctx.clone());
        peer.write_all(&bytes).await.expect("write");
        drop(peer);
        assert_eq!(task.await.expect("join").expect("session"), End::Eof);
        assert_eq!(drain(&mut r.rx).len(), 3);
        assert_eq!(r.ctx.metrics.data.get(), 4);
        assert_eq!(r.ctx.metrics.oversize.get(), 1);
        let text = r.metrics.encode();
        assert!(
            text.contains(r#"tapbus_malformed_total{input="in",reason="bad_protobuf"} 1"#),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_broken_stream_closes_this_connection_with_its_reason() {
        let r = rig(1000, DEFAULT_MAX_DATA_FRAME);
        // Data before START.
        let (mut peer, task) = start(r.ctx.clone());
        let mut bytes = Vec::new();
        encode_data(&payloads(1)[0], &mut bytes);
        peer.write_all(&bytes).await.expect("write");
        let e = task.await.expect("join").expect_err("refused");
        assert_eq!(e.reason(), "data_before_start");
        // Wrong content type.
        let (mut peer, task) = start(r.ctx.clone());
        peer.write_all(&control_bytes(ControlType::Start, &[b"protobuf:other"]))
            .await
            .expect("write");
        let e = task.await.expect("join").expect_err("refused");
        assert_eq!(e.reason(), "content_type_mismatch");
        // A stream cut inside a frame.
        let (mut peer, task) = start(r.ctx.clone());
        let mut bytes = control_bytes(ControlType::Start, ct());
        encode_data(&payloads(1)[0], &mut bytes);
        bytes.truncate(bytes.len() - 3);
        peer.write_all(&bytes).await.expect("write");
        drop(peer);
        let e = task.await.expect("join").expect_err("refused");
        assert_eq!(e.reason(), "truncated");
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_peer_times_out_in_the_handshake() {
        let r = rig(1000, DEFAULT_MAX_DATA_FRAME);
        let (_peer, task) = start(r.ctx.clone());
        let e = task.await.expect("join").expect_err("timeout");
        assert_eq!(e.reason(), "handshake_timeout");
    }

    #[tokio::test]
    async fn shutdown_ends_a_streaming_session() {
        let mut r = rig(1000, DEFAULT_MAX_DATA_FRAME);
        let (mut peer, task) = start(r.ctx.clone());
        let mut bytes = control_bytes(ControlType::Start, ct());
        bytes.extend_from_slice(&data_frames(&payloads(5)));
        peer.write_all(&bytes).await.expect("write");
        // The events arrive, then the broker shuts down while the peer stays connected.
        for _ in 0..5 {
            r.rx.recv().await.expect("event");
        }
        r.ctx.shutdown.cancel();
        assert_eq!(task.await.expect("join").expect("session"), End::Shutdown);
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_never_blocks_the_reader() {
        let mut r = rig(10, DEFAULT_MAX_DATA_FRAME);
        let p = payloads(100);
        let (mut peer, task) = start(r.ctx.clone());
        peer.write_all(&tapbus_testsupport::fstrm::unidirectional_bytes(
            DNSTAP_CONTENT_TYPE,
            &p,
        ))
        .await
        .expect("write");
        drop(peer);
        assert_eq!(task.await.expect("join").expect("session"), End::Eof);
        assert_eq!(drain(&mut r.rx).len(), 10);
        assert_eq!(r.output.dropped_full.get(), 90);
        assert_eq!(r.ctx.metrics.events.get(), 100);
    }
}
