//! Shared by the counting examples (`nats_count`, `redis_count`): the tally of received
//! messages, the JSON line they print, and small helpers.
//!
//! Included with `#[path = "common/count.rs"] mod count;` (next to `common/proc.rs` as
//! `mod proc`) (cargo does not build a file in a
//! subdirectory of `examples/` as an example of its own unless it is `main.rs`).

use std::io::Read;
use std::time::{Duration, Instant};

use crate::proc::{now_ns, self_cpu_ticks};

/// Position of the first `\r\n` in `b` (of its `\r`), if any.
pub fn find_crlf(b: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = b[from..].iter().position(|&c| c == b'\r') {
        let at = from + i;
        match b.get(at + 1) {
            Some(b'\n') => return Some(at),
            Some(_) => from = at + 1,
            None => return None,
        }
    }
    None
}

#[derive(Default)]
pub struct Tally {
    pub count: u64,
    pub bytes: u64,
    pub first_ns: u128,
    pub first: Option<Instant>,
    pub last: Option<Instant>,
    pub slow: u64,
    pub disconnects: u64,
    pub errors: u64,
    pub ended: &'static str,
}

impl Tally {
    /// Records `n` messages of `bytes` bytes in all, received now.
    pub fn add(&mut self, n: u64, bytes: u64) {
        let t = Instant::now();
        if self.first.is_none() {
            self.first_ns = now_ns();
            self.first = Some(t);
        }
        self.last = Some(t);
        self.count += n;
        self.bytes += bytes;
    }

    /// Prints the result as one JSON line on stdout.
    pub fn print(&self, expect: u64) {
        // The last message's monotonic instant as wall-clock time.
        let last_ns = self
            .last
            .map(|l| now_ns().saturating_sub(l.elapsed().as_nanos()))
            .unwrap_or(0);
        let secs = match (self.first, self.last) {
            (Some(f), Some(l)) => l.duration_since(f).as_secs_f64(),
            _ => 0.0,
        };
        println!(
            "{{\"count\":{},\"bytes\":{},\"first_unix_ns\":{},\"last_unix_ns\":{},\"seconds\":{:.6},\"msgs_per_sec\":{:.0},\"slow_consumer_events\":{},\"disconnects\":{},\"errors\":{},\"ended\":\"{}\",\"complete\":{},\"cpu_ticks\":{}}}",
            self.count,
            self.bytes,
            self.first_ns,
            last_ns,
            secs,
            if secs > 0.0 {
                self.count as f64 / secs
            } else {
                0.0
            },
            self.slow,
            self.disconnects,
            self.errors,
            self.ended,
            expect != 0 && self.count >= expect,
            self_cpu_ticks()
        );
    }
}

/// The receive buffer of a raw counting subscriber: `buf[start..end]` is read but not yet
/// parsed (a partial line or frame at most, after a parse pass).
pub struct ReadBuf {
    pub buf: Vec<u8>,
    pub start: usize,
    pub end: usize,
    last_activity: Instant,
}

impl ReadBuf {
    pub fn new(size: usize) -> ReadBuf {
        ReadBuf {
            buf: vec![0u8; size],
            start: 0,
            end: 0,
            last_activity: Instant::now(),
        }
    }

    /// Something happened: the idle clock starts again.
    pub fn touch(&mut self) {
        self.last_activity = Instant::now();
    }

    /// Moves a partial line/frame (`what`) to the front and reads more from `s` (which has a
    /// read timeout). `Ok(false)`: stop, because the server closed (recorded in `t`) or
    /// nothing came for the wait that applies (10 s before `subscribed`, `start_wait`
    /// before the first message, `idle` after).
    pub fn refill(
        &mut self,
        s: &mut impl Read,
        t: &mut Tally,
        what: &str,
        subscribed: bool,
        start_wait: Duration,
        idle: Duration,
    ) -> anyhow::Result<bool> {
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
        } else if self.end == self.buf.len() {
            if self.start == 0 {
                anyhow::bail!("{what} longer than {} bytes", self.buf.len());
            }
            self.buf.copy_within(self.start..self.end, 0);
            (self.start, self.end) = (0, self.end - self.start);
        }
        match s.read(&mut self.buf[self.end..]) {
            Ok(0) => {
                t.ended = "closed";
                t.disconnects += 1;
                Ok(false)
            }
            Ok(k) => {
                self.end += k;
                self.touch();
                Ok(true)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                let wait = if !subscribed {
                    Duration::from_secs(10)
                } else if t.count == 0 {
                    start_wait
                } else {
                    idle
                };
                if self.last_activity.elapsed() >= wait {
                    if !subscribed {
                        anyhow::bail!("no answer from the server");
                    }
                    return Ok(false);
                }
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => Ok(true),
            Err(e) => Err(e.into()),
        }
    }
}
