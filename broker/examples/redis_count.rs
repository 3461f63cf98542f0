//! `redis_count`: counts Redis pub/sub messages on a pattern, for benchmarks.
//!
//! ```text
//! redis_count --server 127.0.0.1:6379 --pattern 'dnstap.*' --expect 1000000 [--idle-secs 5] [--start-secs 120]
//! ```
//!
//! Speaks RESP itself over one blocking TCP socket: sends `PSUBSCRIBE <pattern>`, prints
//! `ready` on stderr once the server confirmed the subscription, then counts `pmessage`
//! pushes until `--expect` have arrived or none has arrived for `--idle-secs` (before the
//! first message it waits up to `--start-secs`). Payloads are skipped by their length, not
//! copied or looked at, so that the counter costs far less CPU per message than
//! `redis-cli psubscribe` and leaves the machine to the broker and redis-server.
//!
//! Prints one JSON line on stdout, the same as `nats_count` (`bytes` = payload bytes):
//!
//! ```text
//! {"count":...,"bytes":...,"first_unix_ns":...,"last_unix_ns":...,"seconds":...,"msgs_per_sec":...,"slow_consumer_events":0,"complete":true,...}
//! ```

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;

#[path = "common/count.rs"]
mod count;
#[path = "common/proc.rs"]
mod proc;
use count::{ReadBuf, Tally, find_crlf};

#[derive(Parser, Debug)]
#[command(
    about = "Count Redis pub/sub messages on a pattern until N arrived or the stream went idle"
)]
struct Args {
    /// Redis server, host:port (a `redis://` prefix is accepted).
    #[arg(long, default_value = "127.0.0.1:6379")]
    server: String,
    /// Channel pattern to PSUBSCRIBE to.
    #[arg(long, default_value = "dnstap.*")]
    pattern: String,
    /// Stop after this many messages (0: only stop when idle).
    #[arg(long, default_value_t = 0)]
    expect: u64,
    /// Stop when no message arrived for this many seconds (after the first message).
    #[arg(long, default_value_t = 5.0)]
    idle_secs: f64,
    /// Stop if the first message has not arrived after this many seconds.
    #[arg(long, default_value_t = 120.0)]
    start_secs: f64,
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let t = run(&a)?;
    t.print(a.expect);
    Ok(())
}

fn run(a: &Args) -> anyhow::Result<Tally> {
    let addr = a
        .server
        .strip_prefix("redis://")
        .unwrap_or(&a.server)
        .trim_end_matches('/');
    let mut s = TcpStream::connect(addr).with_context(|| format!("connect {addr}"))?;
    s.set_read_timeout(Some(Duration::from_millis(200)))?;
    s.write_all(&psubscribe_command(&a.pattern))?;

    let mut rb = ReadBuf::new(1 << 20);
    let mut parser = RespParser::default();
    let mut subscribed = false;
    let mut t = Tally {
        ended: "idle",
        ..Tally::default()
    };
    let idle = Duration::from_secs_f64(a.idle_secs);
    let start_wait = Duration::from_secs_f64(a.start_secs);
    loop {
        // Parse what is buffered.
        let (mut n, mut nbytes) = (0u64, 0u64);
        let mut refused: Option<String> = None;
        let used = parser.feed(&rb.buf[rb.start..rb.end], |f| match f {
            Frame::PMessage { payload } => {
                n += 1;
                nbytes += payload;
            }
            Frame::Array { kind } => {
                if kind.eq_ignore_ascii_case(b"psubscribe") && !subscribed {
                    subscribed = true;
                    eprintln!("ready");
                }
            }
            Frame::Error(e) => {
                t.errors += 1;
                let msg = String::from_utf8_lossy(e).into_owned();
                eprintln!("redis_count: server: {msg}");
                if !subscribed {
                    refused = Some(msg);
                }
            }
            Frame::Simple(_) => {}
        })?;
        rb.start += used;
        if let Some(msg) = refused {
            bail!("server refused the subscription: {msg}");
        }
        if n > 0 {
            t.add(n, nbytes);
            if a.expect != 0 && t.count >= a.expect {
                t.ended = "expected";
                break;
            }
        }
        if !rb.refill(
            &mut s,
            &mut t,
            "RESP frame header",
            subscribed,
            start_wait,
            idle,
        )? {
            break;
        }
    }
    Ok(t)
}

/// `PSUBSCRIBE <pattern>` as a RESP array of bulk strings.
fn psubscribe_command(pattern: &str) -> Vec<u8> {
    let mut c = format!("*2\r\n$10\r\nPSUBSCRIBE\r\n${}\r\n", pattern.len()).into_bytes();
    c.extend_from_slice(pattern.as_bytes());
    c.extend_from_slice(b"\r\n");
    c
}

/// One top-level RESP value received in subscribe mode.
#[derive(Debug, PartialEq, Eq)]
enum Frame<'a> {
    /// A `pmessage` push, with the length of its payload.
    PMessage { payload: u64 },
    /// Any other array (subscribe confirmations...), by its first element.
    Array { kind: &'a [u8] },
    /// `-ERR ...`, without the `-`.
    Error(&'a [u8]),
    /// `+...` or `:n`.
    Simple(&'a [u8]),
}

/// Incremental RESP2 parser for a subscribed connection. The headers of a frame (everything
/// up to the payload of a `pmessage`) must be in the buffer it is given; the payload of a
/// `pmessage` and its CRLF are skipped by length and may span any number of later buffers.
#[derive(Default)]
struct RespParser {
    /// Bytes of a `pmessage` payload (plus its CRLF) still to skip.
    skip: usize,
}

/// Outcome of parsing one frame at the start of a buffer.
enum Step<'a> {
    /// A complete frame header: the frame, and its total length (payload included), which
    /// may run past the end of the buffer.
    Frame(Frame<'a>, usize),
    /// The header is not complete: more bytes are needed.
    Partial,
}

impl RespParser {
    /// Parses the frames in `b`, calling `on` for each. Returns how many bytes of `b` were
    /// used; the rest (an incomplete frame header) must be given again, followed by more.
    fn feed<'a>(&mut self, b: &'a [u8], mut on: impl FnMut(Frame<'a>)) -> anyhow::Result<usize> {
        let mut at = 0;
        while at < b.len() {
            if self.skip > 0 {
                let k = self.skip.min(b.len() - at);
                at += k;
                self.skip -= k;
                continue;
            }
            match parse_frame(&b[at..])? {
                Step::Partial => break,
                Step::Frame(f, len) => {
                    on(f);
                    let here = len.min(b.len() - at);
                    at += here;
                    self.skip = len - here;
                }
            }
        }
        Ok(at)
    }
}

/// A line (without its CRLF) at the start of `b`, and the length including the CRLF.
fn line(b: &[u8]) -> Option<(&[u8], usize)> {
    find_crlf(b).map(|i| (&b[..i], i + 2))
}

fn parse_len(digits: &[u8], what: &str) -> anyhow::Result<i64> {
    std::str::from_utf8(digits)
        .ok()
        .and_then(|v| v.parse::<i64>().ok())
        .with_context(|| {
            format!(
                "bad RESP {what} length {:?}",
                String::from_utf8_lossy(digits)
            )
        })
}

/// Bulk string header `$<n>` at the start of `b`: the length (None for the null bulk
/// string `$-1`) and the header's length including its CRLF. `Ok(None)` when incomplete.
fn bulk_header(b: &[u8]) -> anyhow::Result<Option<(Option<usize>, usize)>> {
    let Some((l, used)) = line(b) else {
        return Ok(None);
    };
    let Some(digits) = l.strip_prefix(b"$") else {
        bail!(
            "expected a RESP bulk string, got {:?}",
            String::from_utf8_lossy(l)
        );
    };
    let n = parse_len(digits, "bulk string")?;
    Ok(Some((usize::try_from(n).ok(), used)))
}

/// One element of an array at the start of `b`, which must be complete in `b`: its bytes
/// (for a bulk string its contents, else the line after the type byte) and its length.
fn element(b: &[u8]) -> anyhow::Result<Option<(&[u8], usize)>> {
    match b.first() {
        None => Ok(None),
        Some(b'$') => {
            let Some((n, h)) = bulk_header(b)? else {
                return Ok(None);
            };
            let Some(n) = n else {
                return Ok(Some((&b[..0], h)));
            };
            if b.len() < h + n + 2 {
                return Ok(None);
            }
            if &b[h + n..h + n + 2] != b"\r\n" {
                bail!("RESP bulk string not followed by CRLF");
            }
            Ok(Some((&b[h..h + n], h + n + 2)))
        }
        Some(b':' | b'+' | b'-') => Ok(line(b).map(|(l, used)| (&l[1..], used))),
        Some(&c) => bail!("unexpected RESP type byte {:?} in an array", c as char),
    }
}

fn parse_frame(b: &[u8]) -> anyhow::Result<Step<'_>> {
    let Some((l, mut at)) = line(b) else {
        return Ok(Step::Partial);
    };
    match l.first() {
        Some(b'*') => {}
        Some(b'-') => return Ok(Step::Frame(Frame::Error(&l[1..]), at)),
        Some(b'+' | b':') => return Ok(Step::Frame(Frame::Simple(&l[1..]), at)),
        _ => bail!("unexpected RESP frame {:?}", String::from_utf8_lossy(l)),
    }
    let n = parse_len(&l[1..], "array")?;
    if n <= 0 {
        return Ok(Step::Frame(Frame::Array { kind: b"" }, at));
    }
    let Some((kind, used)) = element(&b[at..])? else {
        return Ok(Step::Partial);
    };
    at += used;
    if n == 4 && kind == b"pmessage" {
        // pattern and channel: short, must be here; the payload is only measured.
        for _ in 0..2 {
            let Some((_, used)) = element(&b[at..])? else {
                return Ok(Step::Partial);
            };
            at += used;
        }
        let Some((len, used)) = bulk_header(&b[at..])? else {
            return Ok(Step::Partial);
        };
        at += used;
        let payload = len.unwrap_or(0);
        let total = if len.is_some() { at + payload + 2 } else { at };
        return Ok(Step::Frame(
            Frame::PMessage {
                payload: payload as u64,
            },
            total,
        ));
    }
    for _ in 1..n {
        let Some((_, used)) = element(&b[at..])? else {
            return Ok(Step::Partial);
        };
        at += used;
    }
    Ok(Step::Frame(Frame::Array { kind }, at))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pmessage(channel: &str, payload: &[u8]) -> Vec<u8> {
        let mut m = format!(
            "*4\r\n$8\r\npmessage\r\n$8\r\ndnstap.*\r\n${}\r\n{}\r\n${}\r\n",
            channel.len(),
            channel,
            payload.len()
        )
        .into_bytes();
        m.extend_from_slice(payload);
        m.extend_from_slice(b"\r\n");
        m
    }

    const CONFIRM: &[u8] = b"*3\r\n$10\r\npsubscribe\r\n$8\r\ndnstap.*\r\n:1\r\n";

    /// What the parser reported, for comparison.
    #[derive(Debug, PartialEq, Eq, Default)]
    struct Seen {
        confirmations: u64,
        other_arrays: Vec<Vec<u8>>,
        errors: Vec<Vec<u8>>,
        messages: u64,
        payload_bytes: u64,
    }

    /// Feeds `chunks` one after the other the way `run` does: unused bytes are kept and
    /// given again with the next chunk.
    fn feed_chunks(chunks: &[&[u8]]) -> Seen {
        let mut p = RespParser::default();
        let mut pending: Vec<u8> = Vec::new();
        let mut seen = Seen::default();
        for c in chunks {
            pending.extend_from_slice(c);
            let used = p
                .feed(&pending, |f| match f {
                    Frame::PMessage { payload } => {
                        seen.messages += 1;
                        seen.payload_bytes += payload;
                    }
                    Frame::Array { kind } if kind == b"psubscribe" => seen.confirmations += 1,
                    Frame::Array { kind } => seen.other_arrays.push(kind.to_vec()),
                    Frame::Error(e) => seen.errors.push(e.to_vec()),
                    Frame::Simple(_) => {}
                })
                .expect("valid RESP");
            pending.drain(..used);
        }
        assert!(pending.is_empty(), "left over: {pending:?}");
        assert_eq!(p.skip, 0);
        seen
    }

    fn stream() -> (Vec<u8>, u64, u64) {
        let payloads: [&[u8]; 5] = [
            b"{\"a\":1}",
            b"",
            b"with\r\nCRLF and $4\r\n*4\r\n inside",
            &[b'x'; 300],
            b"pmessage",
        ];
        let mut s = CONFIRM.to_vec();
        let mut bytes = 0;
        for (i, p) in payloads.iter().enumerate() {
            s.extend(pmessage(&format!("dnstap.client{i}"), p));
            bytes += p.len() as u64;
        }
        (s, payloads.len() as u64, bytes)
    }

    #[test]
    fn whole_buffer() {
        let (s, n, bytes) = stream();
        let seen = feed_chunks(&[&s]);
        assert_eq!(seen.confirmations, 1);
        assert_eq!(seen.messages, n);
        assert_eq!(seen.payload_bytes, bytes);
        assert!(seen.errors.is_empty() && seen.other_arrays.is_empty());
    }

    #[test]
    fn split_at_every_byte_boundary() {
        let (s, n, bytes) = stream();
        for k in 0..=s.len() {
            let seen = feed_chunks(&[&s[..k], &s[k..]]);
            assert_eq!(
                (seen.confirmations, seen.messages, seen.payload_bytes),
                (1, n, bytes),
                "split at {k}"
            );
        }
        // and in three pieces
        for k in 0..=s.len() {
            for j in k..=s.len() {
                let seen = feed_chunks(&[&s[..k], &s[k..j], &s[j..]]);
                assert_eq!((seen.messages, seen.payload_bytes), (n, bytes), "{k}/{j}");
            }
        }
    }

    #[test]
    fn one_byte_at_a_time() {
        let (s, n, bytes) = stream();
        let chunks: Vec<&[u8]> = s.chunks(1).collect();
        let seen = feed_chunks(&chunks);
        assert_eq!((seen.messages, seen.payload_bytes), (n, bytes));
    }

    #[test]
    fn many_messages_in_one_buffer() {
        let mut s = Vec::new();
        for i in 0..1000 {
            s.extend(pmessage("dnstap.x", format!("payload {i}").as_bytes()));
        }
        let seen = feed_chunks(&[&s]);
        assert_eq!(seen.messages, 1000);
        let expected: u64 = (0..1000).map(|i| format!("payload {i}").len() as u64).sum();
        assert_eq!(seen.payload_bytes, expected);
        // in chunks of 7 bytes
        let chunks: Vec<&[u8]> = s.chunks(7).collect();
        assert_eq!(feed_chunks(&chunks).messages, 1000);
    }

    #[test]
    fn non_pmessage_replies() {
        let mut s = CONFIRM.to_vec();
        s.extend_from_slice(b"-ERR unknown command 'FOO'\r\n");
        s.extend(pmessage("dnstap.a", b"hello"));
        s.extend_from_slice(b"*3\r\n$12\r\npunsubscribe\r\n$8\r\ndnstap.*\r\n:0\r\n");
        s.extend_from_slice(b"*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$-1\r\n");
        s.extend_from_slice(b"+PONG\r\n");
        s.extend_from_slice(b"*0\r\n");
        for k in 0..=s.len() {
            let seen = feed_chunks(&[&s[..k], &s[k..]]);
            assert_eq!(seen.confirmations, 1, "split at {k}");
            assert_eq!(seen.messages, 1);
            assert_eq!(seen.payload_bytes, 5);
            assert_eq!(seen.errors, vec![b"ERR unknown command 'FOO'".to_vec()]);
            assert_eq!(
                seen.other_arrays,
                vec![b"punsubscribe".to_vec(), b"message".to_vec(), b"".to_vec()]
            );
        }
    }

    #[test]
    fn null_payload() {
        let s = b"*4\r\n$8\r\npmessage\r\n$1\r\np\r\n$1\r\nc\r\n$-1\r\n";
        let seen = feed_chunks(&[s]);
        assert_eq!((seen.messages, seen.payload_bytes), (1, 0));
    }

    #[test]
    fn garbage_is_an_error() {
        let mut p = RespParser::default();
        assert!(p.feed(b"hello\r\n", |_| {}).is_err());
        assert!(p.feed(b"*x\r\n", |_| {}).is_err());
        assert!(p.feed(b"*4\r\n$8\r\npmessage\r\n$z\r\n", |_| {}).is_err());
        assert!(p.feed(b"*2\r\n$3\r\nabcXY", |_| {}).is_err());
    }

    #[test]
    fn command() {
        assert_eq!(
            psubscribe_command("dnstap.*"),
            b"*2\r\n$10\r\nPSUBSCRIBE\r\n$8\r\ndnstap.*\r\n".to_vec()
        );
    }
}
