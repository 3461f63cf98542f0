//! Publish (raw): broker --original dnstap frames--> another dnstap receiver, the
//! `dnstap+tcp://host:port` and `dnstap+unix:///path` outputs (a relay, like DNS-collector's
//! `dnstapclient`): golang-dnstap `dnstap -l`/`-u`, `fstrm_capture`, another tapbus.
//!
//! The output is the Frame Streams *writer* of a bidirectional stream: READY (content type
//! `protobuf:dnstap.Dnstap`), wait for the receiver's ACCEPT, START, the data frames exactly
//! as they came in (never decoded nor re-encoded), and at shutdown STOP, then wait for
//! FINISH. Control frames are encoded and decoded with `tapbus_proto::fstrm`.
//!
//! Reconnects: the output connects at start and stays connected (`tapbus_output_up`); a
//! refused connection, a failed or slow (5 s) connect and handshake, or a broken stream is
//! retried with backoff (`reconnect_min` doubling to `reconnect_max`, jittered: [`crate::backoff`]).
//! Meanwhile the output's bounded queue fills and the fan-out drops and counts
//! (`queue_full`); the socket reads of the inputs never wait.
//!
//! Accounting: Frame Streams has no acknowledgements, so `tapbus_published_total` counts a
//! frame once the socket took all of its bytes (the kernel accepted them). Frames are
//! written with non-blocking writes whose byte counts are kept, so when the connection
//! breaks, exactly the frames the socket had not fully taken (the one cut in the middle
//! included, which the receiver discards as a truncated frame) are held and sent again after
//! the reconnect (`tapbus_resent_total`); no frame is sent twice in full. What the receiver
//! had not read yet from its socket when it died is lost with it and was counted
//! published: that is the limit of the protocol. To keep that window small the output
//! watches its socket for the receiver closing (EOF) while idle and before each write. At
//! most [`BATCH`] frames are held outside the queue.

use std::collections::VecDeque;
use std::io;
use std::time::Duration;

use bytes::BytesMut;
use tapbus_config::{DnstapRelaySpec, RelayTarget};
use tapbus_proto::fstrm::{
    ControlFrame, ControlType, DNSTAP_CONTENT_TYPE, Frame, FrameDecoder, encode_data,
};
use tokio::io::Interest;
use tokio::net::{TcpStream, UnixStream};
use tokio_util::codec::Decoder;

use super::{Message, Queue};
use crate::backoff::Backoff;
use crate::metrics::PublishMetrics;

/// Frames taken from the queue at once, and the most held outside it.
pub const BATCH: usize = 1024;
/// How long the receiver may take to answer READY with ACCEPT, or STOP with FINISH.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest control frame read from the receiver (data frames from it are an error).
const MAX_READ_FRAME: usize = 4096;

/// One connection to the receiver.
enum Conn {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Conn {
    async fn connect(target: &RelayTarget) -> io::Result<Conn> {
        Ok(match target {
            RelayTarget::Tcp(addr) => {
                let s = TcpStream::connect(addr).await?;
                s.set_nodelay(true)?;
                Conn::Tcp(s)
            }
            RelayTarget::Unix(path) => Conn::Unix(UnixStream::connect(path).await?),
        })
    }

    async fn ready(&self, i: Interest) -> io::Result<tokio::io::Ready> {
        match self {
            Conn::Tcp(s) => s.ready(i).await,
            Conn::Unix(s) => s.ready(i).await,
        }
    }

    fn try_write(&self, b: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.try_write(b),
            Conn::Unix(s) => s.try_write(b),
        }
    }

    fn try_read(&self, b: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.try_read(b),
            Conn::Unix(s) => s.try_read(b),
        }
    }

    /// Writes all of `b`; on an error, how many bytes the socket took before it.
    async fn write_all(&self, b: &[u8]) -> Result<(), (usize, io::Error)> {
        let mut pos = 0;
        while pos < b.len() {
            if let Err(e) = self.ready(Interest::WRITABLE).await {
                return Err((pos, e));
            }
            match self.try_write(&b[pos..]) {
                Ok(0) => return Err((pos, io::ErrorKind::WriteZero.into())),
                Ok(n) => pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err((pos, e)),
            }
        }
        Ok(())
    }

    /// Reads what is there without waiting: `Err` once the receiver closed or failed.
    /// Anything it sends while streaming is discarded.
    fn poll_closed(&self) -> io::Result<()> {
        let mut buf = [0u8; 512];
        loop {
            match self.try_read(&mut buf) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }

    /// Waits until the receiver closes the connection (or it fails).
    async fn closed(&self) -> io::Error {
        loop {
            if let Err(e) = self.ready(Interest::READABLE).await {
                return e;
            }
            if let Err(e) = self.poll_closed() {
                return e;
            }
        }
    }

    /// Reads until one control frame arrived.
    async fn read_control(
        &self,
        dec: &mut FrameDecoder,
        buf: &mut BytesMut,
    ) -> io::Result<ControlFrame> {
        loop {
            match dec.decode(buf) {
                Ok(Some(Frame::Control(c))) => return Ok(c),
                Ok(Some(_)) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "the receiver sent a data frame",
                    ));
                }
                Ok(None) => {}
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string())),
            }
            if buf.len() > MAX_READ_FRAME {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "control frame too long",
                ));
            }
            self.ready(Interest::READABLE).await?;
            let mut chunk = [0u8; 512];
            match self.try_read(&mut chunk) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
    }

    async fn send_control(&self, kind: ControlType, ct: Option<&[u8]>) -> io::Result<()> {
        let mut b = BytesMut::new();
        ControlFrame::new(kind, ct).encode(&mut b);
        self.write_all(&b).await.map_err(|(_, e)| e)
    }

    /// The writer's side of the bidirectional handshake: READY, ACCEPT, START.
    async fn open(target: &RelayTarget) -> io::Result<Conn> {
        let c = Conn::connect(target).await?;
        c.send_control(ControlType::Ready, Some(DNSTAP_CONTENT_TYPE))
            .await?;
        let mut dec = FrameDecoder::new(MAX_READ_FRAME);
        let mut buf = BytesMut::new();
        let accept = tokio::time::timeout(HANDSHAKE_TIMEOUT, c.read_control(&mut dec, &mut buf))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no ACCEPT after READY"))??;
        if accept.kind != ControlType::Accept {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("expected ACCEPT, got {:?}", accept.kind),
            ));
        }
        if !accept.matches_content_type(DNSTAP_CONTENT_TYPE) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the receiver does not accept protobuf:dnstap.Dnstap",
            ));
        }
        c.send_control(ControlType::Start, Some(DNSTAP_CONTENT_TYPE))
            .await?;
        Ok(c)
    }

    /// STOP, then wait for FINISH (bounded).
    async fn finish(self) -> io::Result<()> {
        self.send_control(ControlType::Stop, None).await?;
        let mut dec = FrameDecoder::new(MAX_READ_FRAME);
        let mut buf = BytesMut::new();
        let fin = tokio::time::timeout(HANDSHAKE_TIMEOUT, self.read_control(&mut dec, &mut buf))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no FINISH after STOP"))??;
        if fin.kind != ControlType::Finish {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("expected FINISH, got {:?}", fin.kind),
            ));
        }
        Ok(())
    }
}

pub async fn run(name: String, spec: DnstapRelaySpec, mut rx: Queue, m: PublishMetrics) {
    let target = spec.target.clone();
    let mut backoff = Backoff::new(spec.backoff.min, spec.backoff.max);
    // Frames taken from the queue and not yet taken by a socket (oldest first).
    let mut held: VecDeque<Message> = VecDeque::with_capacity(BATCH);
    let mut batch: Vec<Message> = Vec::with_capacity(BATCH);
    let mut conn: Option<Conn> = None;
    let mut closed = false;
    let mut out = BytesMut::new();
    let mut ends: Vec<usize> = Vec::with_capacity(BATCH);
    m.up.set(0);
    loop {
        m.inflight.set(held.len() as i64);
        if closed && held.is_empty() {
            break;
        }
        // Connected at all times (from the start, and again at once after a break), so
        // `up` says whether the receiver is there; the queue waits meanwhile.
        let Some(c) = conn.take() else {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, Conn::open(&target)).await {
                Ok(Ok(c)) => {
                    tracing::info!(output = %name, receiver = %target, "connected, stream started");
                    backoff.reset();
                    m.up.set(1);
                    conn = Some(c);
                }
                res => {
                    let e = match res {
                        Ok(Err(e)) => e,
                        _ => io::Error::new(
                            io::ErrorKind::TimedOut,
                            "connect and handshake timed out",
                        ),
                    };
                    let wait = backoff.next_delay();
                    if backoff.failures() == 1 {
                        tracing::warn!(output = %name, receiver = %target, "cannot relay: {e}; retrying in {wait:?} (frames wait in the queue, then are dropped and counted)");
                    } else {
                        tracing::debug!(output = %name, receiver = %target, "cannot relay: {e}; retrying in {wait:?}");
                    }
                    if rx.is_closed() {
                        // Shutting down with the receiver away: do not wait out backoffs.
                        let mut lost = held.len() as u64;
                        held.clear();
                        rx.close();
                        while rx.recv().await.is_some() {
                            lost += 1;
                        }
                        m.dropped_shutdown.inc_by(lost);
                        tracing::warn!(output = %name, receiver = %target, "receiver unavailable at shutdown; {lost} frames dropped");
                        break;
                    }
                    tokio::time::sleep(wait).await;
                }
            }
            continue;
        };
        if held.is_empty() {
            tokio::select! {
                n = rx.recv_many(&mut batch, BATCH) => {
                    if n == 0 {
                        closed = true;
                    }
                    held.extend(batch.drain(..));
                    conn = Some(c);
                }
                e = c.closed() => {
                    tracing::warn!(output = %name, receiver = %target, "the receiver closed the stream: {e}; reconnecting");
                    m.up.set(0);
                }
            }
            continue;
        }
        // The receiver may have closed while we waited: do not write into a dead socket.
        if let Err(e) = c.poll_closed() {
            tracing::warn!(output = %name, receiver = %target, "the receiver closed the stream: {e}; reconnecting");
            m.up.set(0);
            continue;
        }
        out.clear();
        ends.clear();
        for msg in &held {
            match &msg.raw {
                Some(raw) if !raw.is_empty() && u32::try_from(raw.len()).is_ok() => {
                    encode_data(raw, &mut out);
                }
                _ => {}
            }
            ends.push(out.len());
        }
        match c.write_all(&out).await {
            Ok(()) => {
                let all = held.len();
                settle(&mut held, all, &m);
                conn = Some(c);
            }
            Err((written, e)) => {
                let done = ends.iter().take_while(|&&end| end <= written).count();
                settle(&mut held, done, &m);
                m.resent.inc_by(held.len() as u64);
                tracing::warn!(output = %name, receiver = %target, "the stream broke: {e}; {} frames the socket had not taken are sent again after reconnecting", held.len());
                m.up.set(0);
            }
        }
    }
    if let Some(c) = conn.take() {
        match c.finish().await {
            Ok(()) => {
                tracing::info!(output = %name, receiver = %target, "stream closed (STOP answered with FINISH)")
            }
            Err(e) => tracing::warn!(output = %name, receiver = %target, "closing the stream: {e}"),
        }
    }
    m.up.set(0);
    m.inflight.set(0);
}

/// The first `n` held frames were taken by the socket: published (a message without a
/// frame, never sent by the broker, is counted as a publish error).
fn settle(held: &mut VecDeque<Message>, n: usize, m: &PublishMetrics) {
    let mut published = 0u64;
    for msg in held.drain(..n) {
        match msg.raw {
            Some(raw) if !raw.is_empty() && u32::try_from(raw.len()).is_ok() => {
                published += 1;
                if let Some(t) = msg.settle {
                    t.published();
                }
            }
            Some(_) => {
                m.dropped_too_large.inc();
            }
            None => {
                m.dropped_error.inc();
            }
        }
    }
    m.published.inc_by(published);
}
