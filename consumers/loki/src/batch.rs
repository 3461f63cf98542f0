//! The batch: lines on their way from the bus to one Loki push request, grouped by
//! stream, bounded by bytes (the caller seals it before a line would overflow
//! `batch_max_bytes`) and by age (`due`), remembering every bus delivery it holds so they
//! are acked once Loki answered for the request.
//!
//! Within a stream, [`Batch::seal`] puts the entries in timestamp order (stable: lines
//! with equal timestamps keep their bus order), as Loki wants them in one request.

use std::time::{Duration, Instant};

use bytes::Bytes;
use rustc_hash::FxHashMap;

use crate::labels::parse_selector;

/// One line of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Nanoseconds since the Unix epoch.
    pub ts_ns: i64,
    /// The bus payload, byte for byte.
    pub line: Bytes,
    /// Structured metadata (name, value); empty unless configured.
    pub metadata: Vec<(&'static str, String)>,
}

/// The entries of one label set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stream {
    /// The LogQL selector text (`{job="tapbus", kind="event"}`), sent as the stream's labels.
    pub selector: String,
    /// The same labels as pairs, for the JSON body and to match Loki's error messages.
    pub labels: Vec<(String, String)>,
    pub entries: Vec<Entry>,
}

/// A batch being filled. `D` is what must be acked once the batch was answered (a bus
/// delivery in the binary).
#[derive(Debug)]
pub struct Batch<D> {
    streams: Vec<Stream>,
    index: FxHashMap<String, usize>,
    deliveries: Vec<D>,
    lines: usize,
    line_bytes: usize,
    opened: Option<Instant>,
}

impl<D> Default for Batch<D> {
    fn default() -> Self {
        Batch {
            streams: Vec::new(),
            index: FxHashMap::default(),
            deliveries: Vec::new(),
            lines: 0,
            line_bytes: 0,
            opened: None,
        }
    }
}

/// A sealed batch: streams in order, ready to encode, and the deliveries to ack.
#[derive(Debug)]
pub struct Sealed<D> {
    pub streams: Vec<Stream>,
    pub deliveries: Vec<D>,
    pub lines: usize,
    pub line_bytes: usize,
}

impl<D> Batch<D> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a line to the stream `selector` (created on first use) and holds `delivery`.
    pub fn add(
        &mut self,
        now: Instant,
        selector: &str,
        ts_ns: i64,
        line: Bytes,
        metadata: Vec<(&'static str, String)>,
        delivery: D,
    ) {
        self.opened.get_or_insert(now);
        let i = match self.index.get(selector) {
            Some(&i) => i,
            None => {
                let i = self.streams.len();
                self.streams.push(Stream {
                    selector: selector.to_string(),
                    labels: parse_selector(selector).unwrap_or_default(),
                    entries: Vec::new(),
                });
                self.index.insert(selector.to_string(), i);
                i
            }
        };
        self.line_bytes += line.len();
        self.lines += 1;
        if let Some(s) = self.streams.get_mut(i) {
            s.entries.push(Entry {
                ts_ns,
                line,
                metadata,
            });
        }
        self.deliveries.push(delivery);
    }

    /// Holds a delivery that carries no line (a bus message that is not an event or
    /// record): it is acked with the batch.
    pub fn hold(&mut self, now: Instant, delivery: D) {
        self.opened.get_or_insert(now);
        self.deliveries.push(delivery);
    }

    /// Lines held.
    pub fn lines(&self) -> usize {
        self.lines
    }

    /// Bytes of the lines held.
    pub fn line_bytes(&self) -> usize {
        self.line_bytes
    }

    /// Deliveries held (lines and line-less ones).
    pub fn deliveries(&self) -> usize {
        self.deliveries.len()
    }

    /// The deliveries held, in arrival order.
    pub fn held(&self) -> &[D] {
        &self.deliveries
    }

    /// Streams held.
    pub fn streams(&self) -> usize {
        self.streams.len()
    }

    pub fn is_empty(&self) -> bool {
        self.deliveries.is_empty()
    }

    /// Whether adding a line of `len` bytes would take the batch over `max_bytes`: then
    /// seal it first. An empty batch takes any line (a line longer than the bound goes
    /// alone).
    pub fn would_overflow(&self, len: usize, max_bytes: usize) -> bool {
        self.lines > 0 && self.line_bytes + len > max_bytes
    }

    /// When the batch must go out: `wait` after its first delivery.
    pub fn deadline(&self, wait: Duration) -> Option<Instant> {
        self.opened.map(|t| t + wait)
    }

    /// Whether the batch is due at `now`.
    pub fn due(&self, now: Instant, wait: Duration) -> bool {
        self.deadline(wait).is_some_and(|d| now >= d)
    }

    /// Takes everything out (the batch is empty afterwards), each stream's entries in
    /// timestamp order.
    pub fn seal(&mut self) -> Sealed<D> {
        let mut streams = std::mem::take(&mut self.streams);
        for s in &mut streams {
            // Stable and linear on already ordered input (runs are detected).
            s.entries.sort_by_key(|e| e.ts_ns);
        }
        self.index.clear();
        let sealed = Sealed {
            streams,
            deliveries: std::mem::take(&mut self.deliveries),
            lines: self.lines,
            line_bytes: self.line_bytes,
        };
        self.lines = 0;
        self.line_bytes = 0;
        self.opened = None;
        sealed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn groups_by_stream_and_orders_by_time() {
        let now = Instant::now();
        let mut b: Batch<u32> = Batch::new();
        b.add(now, r#"{a="1"}"#, 30, line("x30"), vec![], 0);
        b.add(now, r#"{a="2"}"#, 5, line("y5"), vec![], 1);
        b.add(now, r#"{a="1"}"#, 10, line("x10"), vec![], 2);
        b.add(now, r#"{a="1"}"#, 10, line("x10b"), vec![], 3);
        b.hold(now, 4);
        b.add(now, r#"{a="1"}"#, 20, line("x20"), vec![], 5);
        assert_eq!((b.lines(), b.deliveries(), b.streams()), (5, 6, 2));
        assert_eq!(b.line_bytes(), 3 + 2 + 3 + 4 + 3);
        let s = b.seal();
        assert!(b.is_empty());
        assert_eq!(b.lines(), 0);
        assert_eq!(s.deliveries, vec![0, 1, 2, 3, 4, 5]);
        assert_eq!(s.streams.len(), 2);
        assert_eq!(s.streams[0].labels, vec![("a".into(), "1".into())]);
        let lines: Vec<&[u8]> = s.streams[0]
            .entries
            .iter()
            .map(|e| e.line.as_ref())
            .collect();
        assert_eq!(
            lines,
            vec![&b"x10"[..], b"x10b", b"x20", b"x30"],
            "time order, equal times in arrival order"
        );
        assert_eq!(s.streams[1].entries[0].ts_ns, 5);
    }

    #[test]
    fn bounds() {
        let t0 = Instant::now();
        let wait = Duration::from_secs(1);
        let mut b: Batch<()> = Batch::new();
        assert!(
            !b.would_overflow(10_000, 100),
            "an empty batch takes any line"
        );
        assert_eq!(b.deadline(wait), None);
        assert!(!b.due(t0 + wait * 10, wait));
        b.add(t0, "{}", 0, Bytes::from(vec![b'x'; 60]), vec![], ());
        assert!(!b.would_overflow(40, 100));
        assert!(b.would_overflow(41, 100));
        b.add(
            t0 + wait / 2,
            "{}",
            0,
            Bytes::from(vec![b'x'; 40]),
            vec![],
            (),
        );
        assert_eq!(
            b.deadline(wait),
            Some(t0 + wait),
            "age counts from the first line"
        );
        assert!(!b.due(t0 + wait / 2, wait));
        assert!(b.due(t0 + wait, wait));
        let s = b.seal();
        assert_eq!((s.lines, s.line_bytes), (2, 100));
        assert_eq!(b.deadline(wait), None);
        b.hold(t0, ());
        assert!(!b.is_empty());
        assert_eq!(b.lines(), 0);
        assert!(
            b.due(t0 + wait, wait),
            "a line-less delivery makes the batch due too"
        );
    }
}
