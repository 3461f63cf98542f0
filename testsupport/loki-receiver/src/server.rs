//! The HTTP receiver ([`LokiReceiver`]): its own tokio runtime on a background thread, the
//! push endpoint over [`Core`], fault injection, what a test inspects, and a minimal
//! blocking HTTP client ([`post`]).

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use crate::rules::{Answer, Core, Limits, Stats, StoredEntry};
use crate::wire::{DecodeError, decode_body};

/// One request seen (bounded by [`Limits::max_recorded_requests`]).
#[derive(Clone, Debug, Default)]
pub struct RequestRecord {
    /// 1, 2, ... in arrival order.
    pub seq: u64,
    pub path: String,
    pub content_type: Option<String>,
    pub content_encoding: Option<String>,
    pub org_id: Option<String>,
    pub authorization: Option<String>,
    pub user_agent: Option<String>,
    pub retry_after_sent: Option<u64>,
    /// Body bytes as received (compressed).
    pub body_bytes: usize,
    /// Entries the body held (0 when it did not decode or a fault answered).
    pub entries: usize,
    pub status: u16,
    /// The answer's body.
    pub response: String,
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

#[derive(Clone, Debug)]
struct Fault {
    status: u16,
    retry_after: Option<u64>,
    remaining: Option<u64>,
    until: Option<Instant>,
}

struct Shared {
    core: Mutex<Core>,
    faults: Mutex<VecDeque<Fault>>,
    latency: Mutex<Option<Duration>>,
    requests: Mutex<(u64, VecDeque<RequestRecord>)>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running receiver (see the module docs). Stopped, with its runtime thread, on drop.
pub struct LokiReceiver {
    port: u16,
    shared: Arc<Shared>,
    handle: tokio::runtime::Handle,
    accept: Mutex<Option<tokio::task::JoinHandle<()>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for LokiReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LokiReceiver")
            .field("port", &self.port)
            .finish()
    }
}

impl LokiReceiver {
    /// Starts with Loki's default limits on a free loopback port.
    pub fn start() -> LokiReceiver {
        LokiReceiver::start_with(Limits::default())
    }

    /// Starts with `limits` on a free loopback port.
    pub fn start_with(limits: Limits) -> LokiReceiver {
        let (htx, hrx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("loki-receiver".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("receiver runtime");
                let _ = htx.send(rt.handle().clone());
                rt.block_on(async move {
                    let _ = stop_rx.await;
                });
                rt.shutdown_timeout(Duration::from_secs(1));
            })
            .expect("receiver thread");
        let handle = hrx.recv().expect("receiver runtime handle");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind receiver");
        let port = listener.local_addr().expect("receiver addr").port();
        let shared = Arc::new(Shared {
            core: Mutex::new(Core::new(limits)),
            faults: Mutex::new(VecDeque::new()),
            latency: Mutex::new(None),
            requests: Mutex::new((0, VecDeque::new())),
        });
        let r = LokiReceiver {
            port,
            shared,
            handle,
            accept: Mutex::new(None),
            stop: Some(stop_tx),
            thread: Some(thread),
        };
        r.serve(listener);
        r
    }

    fn serve(&self, listener: std::net::TcpListener) {
        listener.set_nonblocking(true).expect("nonblocking");
        let _g = self.handle.enter();
        let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
        let shared = self.shared.clone();
        let task = self.handle.spawn(accept_loop(listener, shared));
        *lock(&self.accept) = Some(task);
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The push URL, `http://127.0.0.1:PORT/loki/api/v1/push`.
    pub fn push_url(&self) -> String {
        format!("http://127.0.0.1:{}/loki/api/v1/push", self.port)
    }

    /// Closes the listener and every open connection: connections are refused until
    /// [`LokiReceiver::up`]. What is stored stays.
    pub fn down(&self) {
        let Some(task) = lock(&self.accept).take() else {
            return;
        };
        let (tx, rx) = std::sync::mpsc::channel();
        self.handle.spawn(async move {
            task.abort();
            let _ = task.await;
            let _ = tx.send(());
        });
        let _ = rx.recv_timeout(Duration::from_secs(10));
    }

    /// Listens again on the same port (after [`LokiReceiver::down`]).
    pub fn up(&self) {
        if lock(&self.accept).is_some() {
            return;
        }
        let t0 = Instant::now();
        let listener = loop {
            match std::net::TcpListener::bind(("127.0.0.1", self.port)) {
                Ok(l) => break l,
                Err(e) => {
                    assert!(
                        t0.elapsed() < Duration::from_secs(10),
                        "receiver: rebind 127.0.0.1:{}: {e}",
                        self.port
                    );
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        };
        self.serve(listener);
    }

    /// True while listening.
    pub fn is_up(&self) -> bool {
        lock(&self.accept).is_some()
    }

    /// Answers the next `n` requests with `status` (nothing stored), after the faults
    /// already queued. A 429 carries `Retry-After: retry_after` when given.
    pub fn fail_next(&self, n: u64, status: u16, retry_after: Option<u64>) {
        lock(&self.shared.faults).push_back(Fault {
            status,
            retry_after,
            remaining: Some(n),
            until: None,
        });
    }

    /// Answers every request with `status` for `d` from now (after the faults queued).
    pub fn fail_for(&self, d: Duration, status: u16, retry_after: Option<u64>) {
        lock(&self.shared.faults).push_back(Fault {
            status,
            retry_after,
            remaining: None,
            until: Some(Instant::now() + d),
        });
    }

    /// Drops every queued fault.
    pub fn clear_faults(&self) {
        lock(&self.shared.faults).clear();
    }

    /// Delays every answer by `d` (None: no delay).
    pub fn set_latency(&self, d: Option<Duration>) {
        *lock(&self.shared.latency) = d;
    }

    /// Replaces the limits (what is stored stays).
    pub fn set_limits(&self, limits: Limits) {
        lock(&self.shared.core).limits = limits;
    }

    /// Every stored entry, in the order stored.
    pub fn entries(&self) -> Vec<StoredEntry> {
        lock(&self.shared.core).entries()
    }

    /// Number of stored entries.
    pub fn len(&self) -> usize {
        lock(&self.shared.core).len()
    }

    /// True when nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn stats(&self) -> Stats {
        lock(&self.shared.core).stats()
    }

    /// The requests seen (the last [`Limits::max_recorded_requests`]).
    pub fn requests(&self) -> Vec<RequestRecord> {
        lock(&self.shared.requests).1.iter().cloned().collect()
    }
}

impl Drop for LokiReceiver {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn accept_loop(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    // Dropping this future (down) drops the set, which aborts every connection.
    let mut conns = tokio::task::JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        let Ok((sock, _peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = sock.set_nodelay(true);
        let sh = shared.clone();
        conns.spawn(async move {
            let svc = hyper::service::service_fn(move |req| handle(sh.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(sock), svc)
                .await;
        });
    }
}

fn header(req: &Request<Incoming>, name: &str) -> Option<String> {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let path = req.uri().path().to_string();
    let mut rec = RequestRecord {
        path: path.clone(),
        content_type: header(&req, "content-type"),
        content_encoding: header(&req, "content-encoding"),
        org_id: header(&req, "x-scope-orgid"),
        authorization: header(&req, "authorization"),
        user_agent: header(&req, "user-agent"),
        ..RequestRecord::default()
    };
    let push_path = path == "/loki/api/v1/push" || path == "/api/prom/push";
    let answer = if !push_path || req.method() != hyper::Method::POST {
        let max = lock(&shared.core).limits.max_body_bytes;
        let _ = Limited::new(req.into_body(), max).collect().await;
        Answer::new(404, "404 page not found".into())
    } else {
        let max = lock(&shared.core).limits.max_body_bytes;
        match Limited::new(req.into_body(), max).collect().await {
            Err(_) => Answer::new(
                413,
                format!("request body too large: more than {max} bytes"),
            ),
            Ok(body) => {
                let body = body.to_bytes();
                rec.body_bytes = body.len();
                answer_push(&shared, &mut rec, &body)
            }
        }
    };
    let latency = *lock(&shared.latency);
    if let Some(d) = latency {
        tokio::time::sleep(d).await;
    }
    rec.status = answer.status;
    rec.retry_after_sent = answer.retry_after;
    rec.response = answer.body.clone();
    let mut b = Response::builder()
        .status(StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR));
    if !answer.body.is_empty() {
        b = b
            .header("content-type", "text/plain; charset=utf-8")
            .header("x-content-type-options", "nosniff");
    }
    if let Some(s) = answer.retry_after {
        b = b.header("retry-after", s.to_string());
    }
    {
        lock(&shared.core).count_request(answer.status, rec.body_bytes);
    }
    {
        let mut r = lock(&shared.requests);
        let max = lock(&shared.core).limits.max_recorded_requests;
        r.1.push_back(rec);
        while r.1.len() > max {
            r.1.pop_front();
        }
    }
    let resp = b
        .body(Full::new(Bytes::from(answer.body)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())));
    Ok(resp)
}

/// A fault that answers now, if any (consuming one count).
fn take_fault(shared: &Shared) -> Option<Fault> {
    let mut q = lock(&shared.faults);
    let now = Instant::now();
    while let Some(f) = q.front_mut() {
        if let Some(n) = f.remaining.as_mut() {
            if *n == 0 {
                q.pop_front();
                continue;
            }
            *n -= 1;
            return Some(f.clone());
        }
        if f.until.is_some_and(|u| now < u) {
            return Some(f.clone());
        }
        q.pop_front();
    }
    None
}

fn answer_push(shared: &Shared, rec: &mut RequestRecord, body: &[u8]) -> Answer {
    let seq = {
        let mut r = lock(&shared.requests);
        r.0 += 1;
        r.0
    };
    rec.seq = seq;
    if let Some(f) = take_fault(shared) {
        let text = match f.status {
            429 => "Ingestion rate limit exceeded (injected by the test receiver)".to_string(),
            s => format!("injected failure: status {s}"),
        };
        let mut a = Answer::new(f.status, text);
        a.retry_after = f.retry_after;
        return a;
    }
    let (auth, max) = {
        let c = lock(&shared.core);
        (c.limits.auth_enabled, c.limits.max_body_bytes)
    };
    let tenant = if auth {
        match rec.org_id.as_deref().map(str::trim) {
            Some(t) if !t.is_empty() => t.to_string(),
            _ => return Answer::new(401, "no org id".into()),
        }
    } else {
        "fake".to_string()
    };
    let streams = match decode_body(
        rec.content_type.as_deref(),
        rec.content_encoding.as_deref(),
        body,
        max,
    ) {
        Ok(s) => s,
        Err(DecodeError::TooLarge(max)) => {
            return Answer::new(
                413,
                format!("request body too large: more than {max} bytes"),
            );
        }
        Err(DecodeError::Bad(e)) => return Answer::new(400, e),
    };
    rec.entries = streams.iter().map(|s| s.entries.len()).sum();
    lock(&shared.core).push(&tenant, streams, now_ns(), seq)
}

// ---------------------------------------------------------------------------------------
// A minimal HTTP client for the receiver's own tests.

/// The answer of [`post`].
#[derive(Clone, Debug)]
pub struct PostAnswer {
    pub status: u16,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl PostAnswer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A blocking HTTP/1.1 POST of `body` to `addr` (`host:port`) `path` with `headers`,
/// `Connection: close`. An error when the connection fails (e.g. refused).
pub fn post(
    addr: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<PostAnswer> {
    let sa: SocketAddr = addr
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{e}")))?;
    let mut s = TcpStream::connect_timeout(&sa, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (n, v) in headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (h, b) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = h.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok(PostAnswer {
        status,
        headers,
        body: b.to_string(),
    })
}
