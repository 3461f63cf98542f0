//! Publish (raw): broker --original dnstap frames--> Frame Streams capture files, the
//! `dnstap+file:///dir/name.fstrm` output (golang-dnstap's `dnstap -w FILE`, with rotation).
//!
//! Each file is a unidirectional Frame Streams stream, as `dnstap -r` and `fstrm_dump` read
//! it: a START control frame with the content type `protobuf:dnstap.Dnstap`, the data frames
//! exactly as the sender wrote them (the payload bytes are never decoded nor re-encoded
//! here), then a STOP control frame. The frames are encoded with `tapbus_proto::fstrm`.
//!
//! Naming: `dir/name.fstrm` is the file being written. A rotation closes it (STOP, flush,
//! fsync) and renames it to `dir/name-<UTC timestamp>.fstrm`, the time of the rotation
//! with microseconds (`dns-20260102T030405.123456Z.fstrm`; `-2`, `-3`… is appended in the
//! unlikely case of a name already taken), so rotated files sort by name in the order they
//! were written. At most `keep` rotated files are kept: the oldest beyond are deleted. A
//! file rotates once it holds `rotate_size` bytes (framing included, so it ends at most one
//! frame and a STOP past it) or has been open `rotate_age`; a new file is opened at the next
//! frame, so an idle output leaves no empty files. At shutdown the file is closed cleanly
//! and stays `name.fstrm`; at start an existing `name.fstrm` (the last run's) is rotated
//! aside first, never overwritten.
//!
//! Accounting: frames go through a 64 KiB buffer; `tapbus_published_total` counts a frame
//! once the buffer holding it was written to the OS (`write(2)` returned: in the page cache,
//! readable by others, not yet on disk); files are fsynced when they are closed (rotation,
//! shutdown). A write error drops the frames not yet written (`publish_error`), closes the
//! file and opens a new one for the next batch (at most one attempt a second meanwhile).
//!
//! File I/O is blocking, so the output runs on a blocking thread
//! ([`tokio::task::spawn_blocking`]) and only waits for its queue on the runtime.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use bytes::BytesMut;
use tapbus_config::DnstapFileSpec;
use tapbus_proto::fstrm::{ControlFrame, ControlType, DNSTAP_CONTENT_TYPE};
use tokio::runtime::Handle;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{Message, Queue};
use crate::metrics::PublishMetrics;

/// Messages taken from the queue at once (written, then flushed together).
const BATCH: usize = 1024;
/// The write buffer.
const BUFFER: usize = 64 * 1024;
/// After a failure to open the file, the next attempt waits this long (frames meanwhile are
/// dropped and counted).
const REOPEN_AFTER: Duration = Duration::from_secs(1);

/// Starts the output on a blocking thread.
pub fn spawn(name: String, spec: DnstapFileSpec, rx: Queue, m: PublishMetrics) -> JoinHandle<()> {
    let rt = Handle::current();
    tokio::task::spawn_blocking(move || run(name, spec, rx, m, rt))
}

fn run(name: String, spec: DnstapFileSpec, mut rx: Queue, m: PublishMetrics, rt: Handle) {
    let mut w = Files::new(name, spec, m);
    w.rotate_leftover();
    let mut batch: Vec<Message> = Vec::with_capacity(BATCH);
    loop {
        let due = w.rotate_due();
        let got = rt.block_on(async {
            match due {
                Some(at) => tokio::time::timeout_at(at, rx.recv_many(&mut batch, BATCH))
                    .await
                    .ok(),
                None => Some(rx.recv_many(&mut batch, BATCH).await),
            }
        });
        match got {
            None => w.rotate("age"),
            Some(0) => break,
            Some(_) => w.write_batch(&mut batch),
        }
    }
    w.close();
}

/// The file being written.
struct Active {
    out: BufWriter<File>,
    /// Bytes in the file, buffered ones included.
    bytes: u64,
    opened: Instant,
    frames: u64,
}

struct Files {
    name: String,
    spec: DnstapFileSpec,
    m: PublishMetrics,
    active: Option<Active>,
    /// No new file before this (after a failure to open one).
    reopen_at: Option<Instant>,
    /// Control frames are encoded here.
    scratch: BytesMut,
}

impl Files {
    fn new(name: String, spec: DnstapFileSpec, m: PublishMetrics) -> Files {
        Files {
            name,
            spec,
            m,
            active: None,
            reopen_at: None,
            scratch: BytesMut::new(),
        }
    }

    /// When the file being written is due for rotation by age.
    fn rotate_due(&self) -> Option<Instant> {
        let age = self.spec.rotate_age?;
        let a = self.active.as_ref()?;
        Some(a.opened + age)
    }

    /// A `name.fstrm` left by an earlier run is rotated aside, never overwritten.
    fn rotate_leftover(&mut self) {
        if self.spec.path.exists() {
            self.rename_rotated("a file left by an earlier run");
        }
        self.m.up.set(1);
    }

    fn open(&mut self) -> bool {
        if self.active.is_some() {
            return true;
        }
        if let Some(at) = self.reopen_at
            && Instant::now() < at
        {
            return false;
        }
        let res = (|| -> std::io::Result<Active> {
            let file = File::create(&self.spec.path)?;
            let mut out = BufWriter::with_capacity(BUFFER, file);
            self.scratch.clear();
            ControlFrame::new(ControlType::Start, Some(DNSTAP_CONTENT_TYPE))
                .encode(&mut self.scratch);
            out.write_all(&self.scratch)?;
            Ok(Active {
                out,
                bytes: self.scratch.len() as u64,
                opened: Instant::now(),
                frames: 0,
            })
        })();
        match res {
            Ok(a) => {
                self.active = Some(a);
                self.reopen_at = None;
                self.m.up.set(1);
                true
            }
            Err(e) => {
                if self.reopen_at.is_none() {
                    tracing::error!(output = %self.name, path = %self.spec.path.display(), "cannot open the capture file: {e}; frames are dropped (publish_error) until it opens");
                }
                self.reopen_at = Some(Instant::now() + REOPEN_AFTER);
                self.m.up.set(0);
                false
            }
        }
    }

    /// Writes the batch, flushing to the OS at the end (and before each rotation);
    /// counts what was written as published, the rest as dropped.
    fn write_batch(&mut self, batch: &mut Vec<Message>) {
        let mut pending: Vec<super::settle::Ticket> = Vec::new();
        let mut unflushed = 0u64;
        for msg in batch.drain(..) {
            let Some(raw) = msg.raw else {
                // Not a dnstap frame (never sent to a raw output by the broker).
                self.m.dropped_error.inc();
                continue;
            };
            let len = match u32::try_from(raw.len()) {
                Ok(0) | Err(_) => {
                    self.m.dropped_too_large.inc();
                    continue;
                }
                Ok(n) => n,
            };
            if !self.open() {
                self.m.dropped_error.inc();
                continue;
            }
            let Some(a) = self.active.as_mut() else {
                continue;
            };
            if let Err(e) = a
                .out
                .write_all(&len.to_be_bytes())
                .and_then(|()| a.out.write_all(&raw))
            {
                self.failed(&e, unflushed + 1, &mut pending);
                unflushed = 0;
                continue;
            }
            a.bytes += 4 + u64::from(len);
            a.frames += 1;
            unflushed += 1;
            if let Some(t) = msg.settle {
                pending.push(t);
            }
            if self.spec.rotate_size.is_some_and(|max| a.bytes >= max) {
                self.flushed(unflushed, &mut pending);
                unflushed = 0;
                self.rotate("size");
            }
        }
        if unflushed > 0 {
            self.flushed(unflushed, &mut pending);
        }
    }

    /// Flushes the buffer to the OS; counts `n` frames published, or dropped on an error.
    fn flushed(&mut self, n: u64, pending: &mut Vec<super::settle::Ticket>) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        match a.out.flush() {
            Ok(()) => {
                self.m.published.inc_by(n);
                for t in pending.drain(..) {
                    t.published();
                }
            }
            Err(e) => self.failed(&e, n, pending),
        }
    }

    /// A write failed: the frames not yet written are dropped, the file is closed (a new
    /// one is opened for the next frames).
    fn failed(&mut self, e: &std::io::Error, n: u64, pending: &mut Vec<super::settle::Ticket>) {
        tracing::error!(output = %self.name, path = %self.spec.path.display(), "write to the capture file failed: {e}; {n} frames dropped (publish_error), the file is closed");
        self.m.dropped_error.inc_by(n);
        pending.clear(); // dropped tickets settle as dropped
        if let Some(a) = self.active.take() {
            // The buffer may not drain: leave it behind without retrying the write.
            let (_file, _unwritten) = a.out.into_parts();
        }
        self.m.up.set(0);
        self.reopen_at = Some(Instant::now() + REOPEN_AFTER);
    }

    /// Closes the file being written (STOP, flush, fsync); false on an error.
    fn finish(&mut self) -> bool {
        let Some(mut a) = self.active.take() else {
            return true;
        };
        self.scratch.clear();
        ControlFrame::new(ControlType::Stop, None).encode(&mut self.scratch);
        let res = a
            .out
            .write_all(&self.scratch)
            .and_then(|()| a.out.flush())
            .and_then(|()| a.out.get_ref().sync_all());
        if let Err(e) = res {
            tracing::error!(output = %self.name, path = %self.spec.path.display(), "closing the capture file failed: {e}");
            self.m.up.set(0);
            return false;
        }
        true
    }

    /// Closes the file being written and renames it aside; deletes the oldest beyond `keep`.
    /// Nothing happens for an empty (or unopened) file.
    fn rotate(&mut self, why: &str) {
        if self.active.as_ref().is_none_or(|a| a.frames == 0) {
            return;
        }
        self.finish();
        self.rename_rotated(why);
    }

    fn rename_rotated(&mut self, why: &str) {
        let to = rotated_name(&self.spec.path, SystemTime::now());
        match std::fs::rename(&self.spec.path, &to) {
            Ok(()) => {
                tracing::info!(output = %self.name, file = %to.display(), "capture file rotated ({why})")
            }
            Err(e) => {
                tracing::error!(output = %self.name, path = %self.spec.path.display(), "cannot rename the capture file to {}: {e}", to.display())
            }
        }
        self.prune();
    }

    /// Deletes the oldest rotated files beyond `keep`.
    fn prune(&self) {
        let mut rotated = list_rotated(&self.spec.path);
        if rotated.len() <= self.spec.keep {
            return;
        }
        rotated.sort();
        let excess = rotated.len() - self.spec.keep;
        for old in rotated.into_iter().take(excess) {
            if let Err(e) = std::fs::remove_file(&old) {
                tracing::warn!(output = %self.name, file = %old.display(), "cannot delete an old capture file: {e}");
            }
        }
    }

    /// At shutdown: the file is closed cleanly and keeps its name.
    fn close(&mut self) {
        self.finish();
        self.m.up.set(0);
    }
}

/// `dir/name.ext` -> (`name`, `.ext`); without an extension, (`name`, ``).
fn stem_ext(path: &Path) -> (String, String) {
    let file = path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    match file.rfind('.') {
        Some(i) if i > 0 => (file[..i].to_string(), file[i..].to_string()),
        _ => (file, String::new()),
    }
}

/// `dir/name-20260102T030405.123456Z.ext` for the time `at` (UTC); a name already taken
/// moves on by a microsecond, so the names stay in the order of the rotations.
pub fn rotated_name(path: &Path, at: SystemTime) -> PathBuf {
    let (stem, ext) = stem_ext(path);
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut at = at;
    loop {
        let ts: String = humantime::format_rfc3339_micros(at)
            .to_string()
            .chars()
            .filter(|c| *c != '-' && *c != ':')
            .collect();
        let to = dir.join(format!("{stem}-{ts}{ext}"));
        if !to.exists() {
            return to;
        }
        at += Duration::from_micros(1);
    }
}

/// The rotated files of `path` (`name-<timestamp>[-n].ext` beside it), unsorted.
pub fn list_rotated(path: &Path) -> Vec<PathBuf> {
    let (stem, ext) = stem_ext(path);
    let dir = path.parent().unwrap_or(Path::new("."));
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let prefix = format!("{stem}-");
    entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let mid = name.strip_prefix(&prefix)?.strip_suffix(ext.as_str())?;
            is_timestamp(mid).then(|| e.path())
        })
        .collect()
}

/// `20260102T030405.123456Z`.
fn is_timestamp(s: &str) -> bool {
    let Some(ts) = s.strip_suffix('Z') else {
        return false;
    };
    let b = ts.as_bytes();
    b.len() == 22
        && b[8] == b'T'
        && b[15] == b'.'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 8 || i == 15 || c.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use tapbus_proto::event::Summary;
    use tapbus_proto::fstrm::{Frame, decode_all};

    fn spec(dir: &Path, rotate_size: Option<u64>, keep: usize) -> DnstapFileSpec {
        DnstapFileSpec {
            path: dir.join("dns.fstrm"),
            rotate_size,
            rotate_age: None,
            keep,
        }
    }

    fn frame(i: usize) -> Message {
        let mut m = Message::event(Bytes::new(), Summary::default());
        m.raw = Some(Bytes::from(format!("frame number {i:05}")));
        m
    }

    fn data_of(path: &Path) -> Vec<Bytes> {
        let bytes = std::fs::read(path).expect("read");
        let (frames, end) = decode_all(&bytes, 1 << 20);
        end.expect("clean stream");
        assert!(
            matches!(frames.first(), Some(Frame::Control(c)) if c.kind == ControlType::Start && c.matches_content_type(DNSTAP_CONTENT_TYPE))
        );
        assert!(matches!(frames.last(), Some(Frame::Control(c)) if c.kind == ControlType::Stop));
        frames
            .into_iter()
            .filter_map(|f| match f {
                Frame::Data(d) => Some(d),
                _ => None,
            })
            .collect()
    }

    #[tokio::test]
    async fn writes_a_capture_and_rotates_by_size_keeping_keep_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A leftover from an earlier run is rotated aside, not overwritten.
        std::fs::write(dir.path().join("dns.fstrm"), b"old").expect("write");
        let m = PublishMetrics::unregistered();
        let (tx, rx) = tokio::sync::mpsc::channel(4096);
        // 22-byte frames + 4 bytes prefix: 26; START is 34 bytes: 4 frames per 128 bytes.
        let task = spawn("f".into(), spec(dir.path(), Some(128), 3), rx, m.clone());
        for i in 0..40 {
            tx.send(frame(i)).await.expect("send");
        }
        drop(tx);
        task.await.expect("join");
        assert_eq!(m.published.get(), 40);
        assert_eq!(m.dropped(), 0);
        let mut rotated = list_rotated(&dir.path().join("dns.fstrm"));
        rotated.sort();
        assert_eq!(rotated.len(), 3, "{rotated:?}");
        // The newest frames: the current file holds the last ones, rotated the ones before.
        let mut all = Vec::new();
        for f in &rotated {
            all.extend(data_of(f));
        }
        // Ten files of four frames: the last rotation left no file open.
        assert!(!dir.path().join("dns.fstrm").exists());
        let want: Vec<Bytes> = (28..40)
            .map(|i| Bytes::from(format!("frame number {i:05}")))
            .collect();
        assert_eq!(all, want);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rotates_by_age_even_when_idle_and_never_leaves_empty_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = PublishMetrics::unregistered();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let mut s = spec(dir.path(), None, 5);
        s.rotate_age = Some(Duration::from_secs(1));
        let path = s.path.clone();
        let task = spawn("f".into(), s, rx, m.clone());
        for i in 0..3 {
            tx.send(frame(i)).await.expect("send");
        }
        // No more frames: the file is rotated at its age all the same.
        let t0 = std::time::Instant::now();
        while list_rotated(&path).is_empty() {
            assert!(t0.elapsed() < Duration::from_secs(10), "not rotated");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!path.exists());
        for i in 3..5 {
            tx.send(frame(i)).await.expect("send");
        }
        drop(tx);
        task.await.expect("join");
        let rotated = list_rotated(&path);
        // Idle ages passed with no frame: no empty file was made.
        assert_eq!(rotated.len(), 1, "{rotated:?}");
        assert_eq!(data_of(&rotated[0]).len(), 3);
        assert_eq!(data_of(&path).len(), 2);
        assert_eq!(m.published.get(), 5);
    }

    #[tokio::test]
    async fn a_file_that_cannot_be_opened_drops_and_counts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = PublishMetrics::unregistered();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let s = spec(&dir.path().join("missing-dir"), None, 5);
        let task = spawn("f".into(), s, rx, m.clone());
        for i in 0..10 {
            tx.send(frame(i)).await.expect("send");
        }
        drop(tx);
        task.await.expect("join");
        assert_eq!((m.published.get(), m.dropped_error.get()), (0, 10));
        assert_eq!(m.up.get(), 0);
    }

    #[test]
    fn rotated_names_sort_and_are_recognised() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("dns.fstrm");
        let t = SystemTime::UNIX_EPOCH + Duration::from_micros(1_767_323_045_123_456);
        let a = rotated_name(&p, t);
        assert_eq!(
            a.file_name().and_then(|n| n.to_str()),
            Some("dns-20260102T030405.123456Z.fstrm")
        );
        std::fs::write(&a, b"").expect("write");
        let b = rotated_name(&p, t);
        assert_eq!(
            b.file_name().and_then(|n| n.to_str()),
            Some("dns-20260102T030405.123457Z.fstrm")
        );
        std::fs::write(&b, b"").expect("write");
        std::fs::write(dir.path().join("dns-other.fstrm"), b"").expect("write");
        std::fs::write(dir.path().join("dnsx-20260102T030405.123456Z.fstrm"), b"").expect("write");
        let mut l = list_rotated(&p);
        l.sort();
        assert_eq!(l, vec![a, b]);
    }
}
