//! A Frame Streams **writer** for tests: what a DNS server does when it sends dnstap.
//!
//! Written here from the Frame Streams specification (not with `tapbus-proto`, whose tests
//! use this crate), so it is an independent peer of the broker's reader:
//!
//! * a data frame is a big-endian `u32` length (not 0) and that many bytes;
//! * a control frame is an escape (`u32` 0), the `u32` length of what follows, the `u32`
//!   control type and fields (`u32` type, `u32` length, bytes; type 1 is CONTENT_TYPE).
//!
//! Bidirectional ([`Writer::open`], [`write_stream`]): READY with the content type, expect
//! ACCEPT, START, data frames, STOP, expect FINISH. Unidirectional
//! ([`Writer::open_unidirectional`], [`write_unidirectional`], [`unidirectional_bytes`] for
//! a file): START, data frames, STOP.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The dnstap content type.
pub const DNSTAP_CONTENT_TYPE: &[u8] = b"protobuf:dnstap.Dnstap";
/// The CONTENT_TYPE control field.
pub const FIELD_CONTENT_TYPE: u32 = 1;
/// The longest control frame a reader must accept (libfstrm's limit), and the longest this
/// writer reads.
pub const MAX_CONTROL_FRAME: usize = 512;
/// How long the writer waits for the reader's ACCEPT or FINISH.
pub const CONTROL_TIMEOUT: Duration = Duration::from_secs(10);

/// A control frame type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlType {
    Accept,
    Start,
    Stop,
    Ready,
    Finish,
    /// Anything else (a writer never sends one; a test may, to break a stream).
    Other(u32),
}

impl ControlType {
    pub fn code(self) -> u32 {
        match self {
            ControlType::Accept => 1,
            ControlType::Start => 2,
            ControlType::Stop => 3,
            ControlType::Ready => 4,
            ControlType::Finish => 5,
            ControlType::Other(c) => c,
        }
    }

    pub fn from_code(c: u32) -> ControlType {
        match c {
            1 => ControlType::Accept,
            2 => ControlType::Start,
            3 => ControlType::Stop,
            4 => ControlType::Ready,
            5 => ControlType::Finish,
            c => ControlType::Other(c),
        }
    }
}

/// A control frame: its type and its CONTENT_TYPE fields (other fields are skipped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Control {
    pub kind: ControlType,
    pub content_types: Vec<Vec<u8>>,
}

impl Control {
    /// True when the frame carries `ct` among its content types.
    pub fn has_content_type(&self, ct: &[u8]) -> bool {
        self.content_types.iter().any(|c| c == ct)
    }

    /// Parses the body of a control frame (after the escape and the length).
    pub fn parse(body: &[u8]) -> io::Result<Control> {
        let word = |b: &[u8], at: usize| -> io::Result<u32> {
            b.get(at..at + 4)
                .map(|w| u32::from_be_bytes([w[0], w[1], w[2], w[3]]))
                .ok_or_else(|| invalid("control frame cut short"))
        };
        let kind = ControlType::from_code(word(body, 0)?);
        let mut content_types = Vec::new();
        let mut at = 4;
        while at < body.len() {
            let field = word(body, at)?;
            let len = word(body, at + 4)? as usize;
            let value = body
                .get(at + 8..at + 8 + len)
                .ok_or_else(|| invalid("control field runs past the frame"))?;
            if field == FIELD_CONTENT_TYPE {
                content_types.push(value.to_vec());
            }
            at += 8 + len;
        }
        Ok(Control {
            kind,
            content_types,
        })
    }
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Appends a data frame.
pub fn encode_data(payload: &[u8], dst: &mut Vec<u8>) {
    assert!(
        !payload.is_empty(),
        "an empty data frame is a control escape"
    );
    let len = u32::try_from(payload.len()).expect("data frame under 4 GiB");
    dst.extend_from_slice(&len.to_be_bytes());
    dst.extend_from_slice(payload);
}

/// Appends a control frame of type `kind` with one CONTENT_TYPE field per `content_types`.
pub fn encode_control(kind: ControlType, content_types: &[&[u8]], dst: &mut Vec<u8>) {
    let len: usize = 4 + content_types.iter().map(|c| 8 + c.len()).sum::<usize>();
    dst.extend_from_slice(&0u32.to_be_bytes());
    dst.extend_from_slice(&(len as u32).to_be_bytes());
    dst.extend_from_slice(&kind.code().to_be_bytes());
    for ct in content_types {
        dst.extend_from_slice(&FIELD_CONTENT_TYPE.to_be_bytes());
        dst.extend_from_slice(&(ct.len() as u32).to_be_bytes());
        dst.extend_from_slice(ct);
    }
}

/// A control frame's bytes.
pub fn control_bytes(kind: ControlType, content_types: &[&[u8]]) -> Vec<u8> {
    let mut b = Vec::new();
    encode_control(kind, content_types, &mut b);
    b
}

/// A whole unidirectional stream (what a `.fstrm` file holds): START with `content_type`,
/// the data frames, STOP.
pub fn unidirectional_bytes<F: AsRef<[u8]>>(content_type: &[u8], frames: &[F]) -> Vec<u8> {
    let mut b = control_bytes(ControlType::Start, &[content_type]);
    for f in frames {
        encode_data(f.as_ref(), &mut b);
    }
    encode_control(ControlType::Stop, &[], &mut b);
    b
}

/// Reads one control frame from the reader, within [`CONTROL_TIMEOUT`]. A data frame, a
/// control frame over [`MAX_CONTROL_FRAME`], the peer closing or the timeout are errors.
pub async fn read_control<S: AsyncRead + Unpin>(s: &mut S) -> io::Result<Control> {
    let read = async {
        let escape = s.read_u32().await?;
        if escape != 0 {
            return Err(invalid(format!(
                "expected a control frame, got a data frame of {escape} bytes"
            )));
        }
        let len = s.read_u32().await? as usize;
        if !(4..=MAX_CONTROL_FRAME).contains(&len) {
            return Err(invalid(format!("control frame length {len}")));
        }
        let mut body = vec![0u8; len];
        s.read_exact(&mut body).await?;
        Control::parse(&body)
    };
    tokio::time::timeout(CONTROL_TIMEOUT, read)
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no control frame within {CONTROL_TIMEOUT:?}"),
            )
        })?
}

async fn expect_control<S: AsyncRead + Unpin>(s: &mut S, want: ControlType) -> io::Result<Control> {
    let c = read_control(s).await.map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("waiting for {want:?} from the reader: {e}"),
        )
    })?;
    if c.kind != want {
        return Err(invalid(format!("expected {want:?}, got {:?}", c.kind)));
    }
    Ok(c)
}

/// An open Frame Streams writer on `S` (past the handshake, START sent).
#[derive(Debug)]
pub struct Writer<S> {
    stream: S,
    accept: Option<Control>,
    buf: Vec<u8>,
}

impl<S> Writer<S> {
    /// The reader's ACCEPT (`None` on a unidirectional stream).
    pub fn accept(&self) -> Option<&Control> {
        self.accept.as_ref()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Writer<S> {
    /// Bidirectional, dnstap: READY, expect ACCEPT carrying the content type, START.
    pub async fn open(stream: S) -> io::Result<Writer<S>> {
        Self::open_with(stream, DNSTAP_CONTENT_TYPE).await
    }

    /// Bidirectional with another content type.
    pub async fn open_with(mut stream: S, content_type: &[u8]) -> io::Result<Writer<S>> {
        stream
            .write_all(&control_bytes(ControlType::Ready, &[content_type]))
            .await?;
        stream.flush().await?;
        let accept = expect_control(&mut stream, ControlType::Accept).await?;
        if !accept.content_types.is_empty() && !accept.has_content_type(content_type) {
            return Err(invalid(format!(
                "ACCEPT does not carry {:?}: {:?}",
                String::from_utf8_lossy(content_type),
                accept.content_types
            )));
        }
        stream
            .write_all(&control_bytes(ControlType::Start, &[content_type]))
            .await?;
        Ok(Writer {
            stream,
            accept: Some(accept),
            buf: Vec::new(),
        })
    }

    /// Writes data frames (one write for all of them).
    pub async fn send<F: AsRef<[u8]>>(&mut self, frames: &[F]) -> io::Result<()> {
        self.buf.clear();
        for f in frames {
            encode_data(f.as_ref(), &mut self.buf);
        }
        self.stream.write_all(&self.buf).await
    }

    /// STOP; on a bidirectional stream, then waits for FINISH. Returns the stream.
    pub async fn finish(mut self) -> io::Result<S> {
        self.stream
            .write_all(&control_bytes(ControlType::Stop, &[]))
            .await?;
        self.stream.flush().await?;
        if self.accept.is_some() {
            expect_control(&mut self.stream, ControlType::Finish).await?;
        }
        Ok(self.stream)
    }
}

impl<S: AsyncWrite + Unpin> Writer<S> {
    /// Unidirectional, dnstap: START only (nothing is read).
    pub async fn open_unidirectional(mut stream: S) -> io::Result<Writer<S>> {
        stream
            .write_all(&control_bytes(ControlType::Start, &[DNSTAP_CONTENT_TYPE]))
            .await?;
        Ok(Writer {
            stream,
            accept: None,
            buf: Vec::new(),
        })
    }

    /// STOP on a unidirectional stream (nothing is read); returns the stream.
    pub async fn stop(mut self) -> io::Result<S> {
        self.stream
            .write_all(&control_bytes(ControlType::Stop, &[]))
            .await?;
        self.stream.flush().await?;
        Ok(self.stream)
    }

    /// Writes data frames on a unidirectional stream (see [`Writer::send`]).
    pub async fn send_unidirectional<F: AsRef<[u8]>>(&mut self, frames: &[F]) -> io::Result<()> {
        self.buf.clear();
        for f in frames {
            encode_data(f.as_ref(), &mut self.buf);
        }
        self.stream.write_all(&self.buf).await
    }
}

/// Plays a bidirectional dnstap writer: READY, expect ACCEPT, START, `frames`, STOP, expect
/// FINISH. Returns the reader's ACCEPT.
pub async fn write_stream<S, F>(s: &mut S, frames: &[F]) -> io::Result<Control>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: AsRef<[u8]>,
{
    let mut w = Writer::open(&mut *s).await?;
    w.send(frames).await?;
    let accept = w.accept.clone().expect("bidirectional");
    w.finish().await?;
    Ok(accept)
}

/// Plays a unidirectional dnstap writer: START, `frames`, STOP (and flush).
pub async fn write_unidirectional<S, F>(s: &mut S, frames: &[F]) -> io::Result<()>
where
    S: AsyncWrite + Unpin,
    F: AsRef<[u8]>,
{
    s.write_all(&unidirectional_bytes(DNSTAP_CONTENT_TYPE, frames))
        .await?;
    s.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hand-built: the bytes of each frame written out word by word from the specification.
    const READY: &[u8] = b"\0\0\0\0\0\0\0\x22\0\0\0\x04\0\0\0\x01\0\0\0\x16protobuf:dnstap.Dnstap";
    const ACCEPT: &[u8] = b"\0\0\0\0\0\0\0\x22\0\0\0\x01\0\0\0\x01\0\0\0\x16protobuf:dnstap.Dnstap";
    const START: &[u8] = b"\0\0\0\0\0\0\0\x22\0\0\0\x02\0\0\0\x01\0\0\0\x16protobuf:dnstap.Dnstap";
    const STOP: &[u8] = b"\0\0\0\0\0\0\0\x04\0\0\0\x03";
    const FINISH: &[u8] = b"\0\0\0\0\0\0\0\x04\0\0\0\x05";
    const DATA_A: &[u8] = b"\0\0\0\x03abc";
    const DATA_B: &[u8] = b"\0\0\0\x01z";

    fn cat(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    #[test]
    fn encodes_frames_as_the_specification_says() {
        assert_eq!(
            control_bytes(ControlType::Ready, &[DNSTAP_CONTENT_TYPE]),
            READY
        );
        assert_eq!(
            control_bytes(ControlType::Start, &[DNSTAP_CONTENT_TYPE]),
            START
        );
        assert_eq!(control_bytes(ControlType::Stop, &[]), STOP);
        assert_eq!(control_bytes(ControlType::Finish, &[]), FINISH);
        let mut d = Vec::new();
        encode_data(b"abc", &mut d);
        encode_data(b"z", &mut d);
        assert_eq!(d, cat(&[DATA_A, DATA_B]));
        assert_eq!(
            unidirectional_bytes(DNSTAP_CONTENT_TYPE, &[b"abc".as_slice(), b"z"]),
            cat(&[START, DATA_A, DATA_B, STOP])
        );
    }

    #[test]
    fn parses_control_fields() {
        let c = Control::parse(&ACCEPT[8..]).expect("parse");
        assert_eq!(c.kind, ControlType::Accept);
        assert_eq!(c.content_types, vec![DNSTAP_CONTENT_TYPE.to_vec()]);
        // Two content types and an unknown field (type 9) that is skipped.
        let body = b"\0\0\0\x01\0\0\0\x01\0\0\0\x01a\0\0\0\x09\0\0\0\x02xy\0\0\0\x01\0\0\0\x02bc";
        let c = Control::parse(body).expect("parse");
        assert_eq!(c.content_types, vec![b"a".to_vec(), b"bc".to_vec()]);
        // A field running past the frame.
        assert!(Control::parse(b"\0\0\0\x01\0\0\0\x01\0\0\0\x09ab").is_err());
        assert_eq!(
            Control::parse(b"\0\0\0\x2a").expect("parse").kind,
            ControlType::Other(42)
        );
    }

    #[tokio::test]
    async fn bidirectional_handshake_and_frames() {
        let (mut ours, mut theirs) = tokio::io::duplex(1 << 16);
        let reader = tokio::spawn(async move {
            let mut got = vec![0u8; READY.len()];
            theirs.read_exact(&mut got).await.expect("READY");
            assert_eq!(got, READY);
            theirs.write_all(ACCEPT).await.expect("ACCEPT");
            let rest = cat(&[START, DATA_A, DATA_B, STOP]);
            let mut got = vec![0u8; rest.len()];
            theirs.read_exact(&mut got).await.expect("stream");
            assert_eq!(got, rest);
            theirs.write_all(FINISH).await.expect("FINISH");
            // Nothing after FINISH.
            let mut tail = Vec::new();
            theirs.read_to_end(&mut tail).await.expect("eof");
            assert!(tail.is_empty(), "{tail:?}");
        });
        let accept = write_stream(&mut ours, &[b"abc".as_slice(), b"z"])
            .await
            .expect("write_stream");
        assert_eq!(accept.kind, ControlType::Accept);
        assert!(accept.has_content_type(DNSTAP_CONTENT_TYPE));
        drop(ours);
        reader.await.expect("reader");
    }

    #[tokio::test]
    async fn paced_writer_sends_in_pieces() {
        let (ours, mut theirs) = tokio::io::duplex(1 << 16);
        let reader = tokio::spawn(async move {
            let mut got = vec![0u8; READY.len()];
            theirs.read_exact(&mut got).await.expect("READY");
            theirs.write_all(ACCEPT).await.expect("ACCEPT");
            let rest = cat(&[START, DATA_A, DATA_B, DATA_A, STOP]);
            let mut got = vec![0u8; rest.len()];
            theirs.read_exact(&mut got).await.expect("stream");
            assert_eq!(got, rest);
            theirs.write_all(FINISH).await.expect("FINISH");
        });
        let mut w = Writer::open(ours).await.expect("open");
        w.send(&[b"abc".as_slice()]).await.expect("send");
        w.send(&[b"z".as_slice(), b"abc"]).await.expect("send");
        w.finish().await.expect("finish");
        reader.await.expect("reader");
    }

    #[tokio::test]
    async fn a_reader_that_does_not_accept_is_an_error() {
        // FINISH instead of ACCEPT.
        let (mut ours, mut theirs) = tokio::io::duplex(1 << 16);
        theirs.write_all(FINISH).await.expect("write");
        let e = write_stream(&mut ours, &[b"abc".as_slice()])
            .await
            .expect_err("not accepted");
        assert!(e.to_string().contains("expected Accept"), "{e}");

        // ACCEPT for another content type.
        let (mut ours, mut theirs) = tokio::io::duplex(1 << 16);
        theirs
            .write_all(&control_bytes(ControlType::Accept, &[b"protobuf:other"]))
            .await
            .expect("write");
        let e = write_stream(&mut ours, &[b"abc".as_slice()])
            .await
            .expect_err("wrong content type");
        assert!(e.to_string().contains("does not carry"), "{e}");

        // The reader closes.
        let (mut ours, theirs) = tokio::io::duplex(1 << 16);
        drop(theirs);
        assert!(write_stream(&mut ours, &[b"abc".as_slice()]).await.is_err());

        // A data frame where a control frame belongs.
        let (mut ours, mut theirs) = tokio::io::duplex(1 << 16);
        theirs.write_all(DATA_A).await.expect("write");
        let e = read_control(&mut ours).await.expect_err("data frame");
        assert!(e.to_string().contains("data frame of 3 bytes"), "{e}");

        // An oversized control frame.
        let (mut ours, mut theirs) = tokio::io::duplex(1 << 16);
        theirs
            .write_all(b"\0\0\0\0\0\0\x02\x01")
            .await
            .expect("write");
        assert!(read_control(&mut ours).await.is_err());
    }

    #[tokio::test]
    async fn unidirectional_writes_start_frames_stop() {
        let mut out = Vec::new();
        write_unidirectional(&mut out, &[b"abc".as_slice(), b"z"])
            .await
            .expect("write");
        assert_eq!(out, cat(&[START, DATA_A, DATA_B, STOP]));

        let mut w = Writer::open_unidirectional(Vec::new()).await.expect("open");
        assert!(w.accept().is_none());
        w.send_unidirectional(&[b"z".as_slice()])
            .await
            .expect("send");
        let out = w.stop().await.expect("stop");
        assert_eq!(out, cat(&[START, DATA_B, STOP]));
    }
}
