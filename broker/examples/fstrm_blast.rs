//! `fstrm_blast`: a fast Frame Streams *writer* for benchmarks.
//!
//! ```text
//! fstrm_blast --file CAPTURE.fstrm --count 1000000 (--unix PATH | --tcp HOST:PORT)
//! ```
//!
//! Reads a capture, keeps its data frames, connects, runs the bidirectional handshake as a
//! writer (READY with `protobuf:dnstap.Dnstap`, expects ACCEPT, sends START), writes `count`
//! data frames (cycling through the capture) from one pre-encoded buffer, then STOP and waits
//! for FINISH. Prints one JSON line on stdout:
//!
//! ```text
//! {"frames":1000000,"bytes":...,"seconds":...,"frames_per_sec":...,"start_unix_ns":...,"end_unix_ns":...,"finish":true}
//! ```
//!
//! `start_unix_ns` is the wall-clock time just before the first data byte was written;
//! `end_unix_ns` is when the last data byte was handed to the kernel (before STOP).
//! Plain blocking std I/O: the sender must not be what limits the benchmark.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::BytesMut;
use clap::Parser;
use tapbus_proto::fstrm::{
    ControlFrame, ControlType, DEFAULT_MAX_DATA_FRAME, DNSTAP_CONTENT_TYPE, Frame, FrameDecoder,
    decode_all, encode_data,
};
use tokio_util::codec::Decoder;

#[path = "common/proc.rs"]
mod proc;
use proc::{now_ns, self_cpu_ticks};

#[derive(Parser, Debug)]
#[command(about = "Blast a Frame Streams capture at a dnstap reader (bidirectional handshake)")]
struct Args {
    /// Frame Streams capture whose data frames are sent.
    #[arg(long)]
    file: PathBuf,
    /// Number of data frames to send (the capture is repeated as needed).
    #[arg(long, default_value_t = 1_000_000)]
    count: u64,
    /// Connect to this unix socket.
    #[arg(long, conflicts_with = "tcp", required_unless_present = "tcp")]
    unix: Option<PathBuf>,
    /// Connect to this TCP address.
    #[arg(long)]
    tcp: Option<String>,
    /// Seconds to wait for the connection to succeed (retrying), for ACCEPT and for FINISH.
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
    /// Write chunk size in bytes (the pre-encoded buffer is written in chunks of about this
    /// size, cut at frame boundaries).
    #[arg(long, default_value_t = 1 << 20)]
    chunk: usize,
    /// Pace the sending at this many frames per second (0: as fast as possible). Paced runs
    /// write chunks of at most 64 KiB.
    #[arg(long, default_value_t = 0)]
    rate: u64,
}

trait Stream: Read + Write {
    fn set_read_timeout(&self, d: Option<Duration>) -> std::io::Result<()>;
}
impl Stream for UnixStream {
    fn set_read_timeout(&self, d: Option<Duration>) -> std::io::Result<()> {
        UnixStream::set_read_timeout(self, d)
    }
}
impl Stream for TcpStream {
    fn set_read_timeout(&self, d: Option<Duration>) -> std::io::Result<()> {
        TcpStream::set_read_timeout(self, d)
    }
}

fn connect(a: &Args, timeout: Duration) -> anyhow::Result<Box<dyn Stream>> {
    let deadline = Instant::now() + timeout;
    loop {
        let r: std::io::Result<Box<dyn Stream>> = match (&a.unix, &a.tcp) {
            (Some(p), _) => UnixStream::connect(p).map(|s| Box::new(s) as Box<dyn Stream>),
            (None, Some(t)) => TcpStream::connect(t).map(|s| {
                let _ = s.set_nodelay(true);
                Box::new(s) as Box<dyn Stream>
            }),
            (None, None) => bail!("one of --unix or --tcp is required"),
        };
        match r {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(e).context("connect"),
        }
    }
}

/// Reads until one control frame arrives (or the timeout set on the stream fires).
fn read_control(s: &mut dyn Stream, buf: &mut BytesMut) -> anyhow::Result<ControlFrame> {
    let mut dec = FrameDecoder::new(DEFAULT_MAX_DATA_FRAME);
    let mut tmp = [0u8; 1024];
    loop {
        match dec.decode(buf)? {
            Some(Frame::Control(c)) => return Ok(c),
            Some(other) => bail!("expected a control frame from the reader, got {other:?}"),
            None => {}
        }
        let n = s.read(&mut tmp).context("reading a control frame")?;
        if n == 0 {
            bail!("reader closed the connection during the handshake");
        }
        buf.extend_from_slice(&tmp[..n]);
    }
}

fn control(kind: ControlType, ct: Option<&[u8]>) -> BytesMut {
    let mut b = BytesMut::new();
    ControlFrame::new(kind, ct).encode(&mut b);
    b
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let timeout = Duration::from_secs_f64(a.timeout);
    let raw = std::fs::read(&a.file).with_context(|| format!("reading {}", a.file.display()))?;
    let (frames, res) = decode_all(&raw, DEFAULT_MAX_DATA_FRAME);
    if let Err(e) = res {
        eprintln!("fstrm_blast: warning: capture ends with an error: {e}");
    }
    // One big buffer with every data frame of the capture, and the end offset of each frame
    // (so a partial tail is a prefix of the same buffer).
    let mut all = BytesMut::with_capacity(raw.len());
    let mut ends = Vec::new();
    for f in frames {
        if let Frame::Data(p) = f {
            encode_data(&p, &mut all);
            ends.push(all.len());
        }
    }
    drop(raw);
    if ends.is_empty() {
        bail!("{}: no data frames", a.file.display());
    }
    let per = ends.len() as u64;
    let full_rounds = a.count / per;
    let tail_frames = usize::try_from(a.count % per)?;
    let chunk = if a.rate > 0 {
        a.chunk.clamp(4096, 64 << 10)
    } else {
        a.chunk.max(4096)
    };
    // Chunks of the buffer cut at frame boundaries: (end byte, frames in the chunk).
    let mut chunks: Vec<(usize, u64)> = Vec::new();
    let mut tail_chunks: Vec<(usize, u64)> = Vec::new();
    let (mut from, mut nframes) = (0usize, 0u64);
    for (i, &e) in ends.iter().enumerate() {
        nframes += 1;
        if i + 1 == tail_frames {
            tail_chunks = chunks.clone();
            tail_chunks.push((e, nframes));
        }
        if e - from >= chunk || i + 1 == ends.len() {
            chunks.push((e, nframes));
            from = e;
            nframes = 0;
        }
    }
    let all = all.freeze();

    let mut s = connect(&a, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.write_all(&control(ControlType::Ready, Some(DNSTAP_CONTENT_TYPE)))?;
    let mut rbuf = BytesMut::new();
    let acc = read_control(s.as_mut(), &mut rbuf)?;
    if acc.kind != ControlType::Accept {
        bail!("expected ACCEPT, got {}", acc.kind);
    }
    if !acc.matches_content_type(DNSTAP_CONTENT_TYPE) {
        bail!(
            "ACCEPT does not carry {:?}",
            String::from_utf8_lossy(DNSTAP_CONTENT_TYPE)
        );
    }
    s.write_all(&control(ControlType::Start, Some(DNSTAP_CONTENT_TYPE)))?;

    let cpu0 = self_cpu_ticks();
    let start_ns = now_ns();
    let t0 = Instant::now();
    let mut bytes: u64 = 0;
    let mut sent: u64 = 0;
    let plan = (0..full_rounds)
        .map(|_| chunks.as_slice())
        .chain(std::iter::once(tail_chunks.as_slice()));
    for round in plan {
        let mut from = 0usize;
        for &(end, n) in round {
            s.write_all(&all[from..end])
                .context("writing data frames")?;
            bytes += (end - from) as u64;
            sent += n;
            from = end;
            if a.rate > 0 {
                let due = Duration::from_secs_f64(sent as f64 / a.rate as f64);
                let now = t0.elapsed();
                if due > now {
                    std::thread::sleep(due - now);
                }
            }
        }
    }
    debug_assert_eq!(sent, a.count);
    let elapsed = t0.elapsed();
    let end_ns = now_ns();

    s.write_all(&control(ControlType::Stop, None))?;
    s.flush()?;
    let finish = match read_control(s.as_mut(), &mut rbuf) {
        Ok(c) if c.kind == ControlType::Finish => true,
        Ok(c) => {
            eprintln!("fstrm_blast: expected FINISH, got {}", c.kind);
            false
        }
        Err(e) => {
            eprintln!("fstrm_blast: no FINISH: {e:#}");
            false
        }
    };
    let finish_secs = t0.elapsed().as_secs_f64();
    let secs = elapsed.as_secs_f64();
    println!(
        "{{\"frames\":{},\"bytes\":{},\"seconds\":{:.6},\"frames_per_sec\":{:.0},\"mib_per_sec\":{:.1},\"start_unix_ns\":{},\"end_unix_ns\":{},\"finish\":{},\"seconds_to_finish\":{:.6},\"cpu_ticks\":{}}}",
        a.count,
        bytes,
        secs,
        a.count as f64 / secs.max(1e-9),
        bytes as f64 / (1 << 20) as f64 / secs.max(1e-9),
        start_ns,
        end_ns,
        finish,
        finish_secs,
        self_cpu_ticks().saturating_sub(cpu0)
    );
    if !finish {
        std::process::exit(3);
    }
    Ok(())
}
