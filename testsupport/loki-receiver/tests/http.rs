//! The Loki test receiver over HTTP: both bodies, the tenant rules, partial 400s, faults,
//! and a down/up cycle that keeps what was stored.

use std::io::Write;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tapbus_loki_receiver::{
    Limits, LokiReceiver, PushRequest, StreamAdapter, encode_protobuf, entry, post,
};

const PATH: &str = "/loki/api/v1/push";

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_nanos() as i64
}

fn pb(labels: &str, entries: Vec<(i64, &str)>) -> Vec<u8> {
    encode_protobuf(&PushRequest {
        streams: vec![StreamAdapter {
            labels: labels.into(),
            entries: entries.into_iter().map(|(t, l)| entry(t, l, &[])).collect(),
            hash: 0,
        }],
        format: String::new(),
    })
}

const PB: (&str, &str) = ("Content-Type", "application/x-protobuf");

#[test]
fn protobuf_and_json_pushes_are_stored_with_their_headers() {
    let r = LokiReceiver::start_with(Limits {
        auth_enabled: true,
        ..Limits::default()
    });
    let t = now_ns();
    let a = post(
        &r.addr(),
        PATH,
        &[
            PB,
            ("X-Scope-OrgID", "t1"),
            ("User-Agent", "ut/1"),
            ("Authorization", "Bearer x"),
        ],
        &pb(
            "{job=\"tapbus\", kind=\"event\"}",
            vec![(t, "one"), (t + 1, "two")],
        ),
    )
    .expect("post");
    assert_eq!(a.status, 204, "{a:?}");
    assert!(a.body.is_empty());

    let json = format!(
        r#"{{"streams":[{{"stream":{{"job":"tapbus"}},"values":[["{t}","three",{{"qname":"example.com."}}]]}}]}}"#
    );
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(json.as_bytes()).expect("gzip");
    let a = post(
        &r.addr(),
        PATH,
        &[
            ("Content-Type", "application/json"),
            ("Content-Encoding", "gzip"),
            ("X-Scope-OrgID", "t2"),
        ],
        &gz.finish().expect("gzip"),
    )
    .expect("post");
    assert_eq!(a.status, 204, "{a:?}");

    let e = r.entries();
    assert_eq!(e.len(), 3);
    assert_eq!(e[0].tenant, "t1");
    assert_eq!(e[0].labels.get("kind").map(String::as_str), Some("event"));
    assert_eq!((e[1].ts_ns, e[1].line.as_str()), (t + 1, "two"));
    assert_eq!(e[2].tenant, "t2");
    assert_eq!(
        e[2].structured_metadata,
        vec![("qname".to_string(), "example.com.".to_string())]
    );
    let reqs = r.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(
        reqs[0].content_type.as_deref(),
        Some("application/x-protobuf")
    );
    assert_eq!(reqs[0].user_agent.as_deref(), Some("ut/1"));
    assert_eq!(reqs[0].authorization.as_deref(), Some("Bearer x"));
    assert_eq!(reqs[1].content_encoding.as_deref(), Some("gzip"));
    assert_eq!(reqs[1].org_id.as_deref(), Some("t2"));
    let s = r.stats();
    assert_eq!(s.status(204), 2);
    assert_eq!(s.entries_accepted, 3);
    assert!(s.body_bytes > 0);

    // Auth on: no tenant, 401.
    let a = post(&r.addr(), PATH, &[PB], &pb("{job=\"x\"}", vec![(t, "l")])).expect("post");
    assert_eq!((a.status, a.body.as_str()), (401, "no org id\n"));
    // Wrong path: 404; malformed selector: 400 naming it.
    let a = post(&r.addr(), "/nope", &[PB], b"").expect("post");
    assert_eq!(a.status, 404);
    let a = post(
        &r.addr(),
        PATH,
        &[PB, ("X-Scope-OrgID", "t1")],
        &pb("{job=\"x}", vec![(t, "l")]),
    )
    .expect("post");
    assert_eq!(a.status, 400);
    assert!(
        a.body
            .starts_with("Error parsing labels '{job=\"x}' with error:"),
        "{a:?}"
    );
    assert_eq!(r.stats().refused("invalid_labels"), 1);
}

#[test]
fn auth_off_uses_tenant_fake_and_a_partial_400_stores_the_valid_entries() {
    let r = LokiReceiver::start();
    let t = now_ns();
    let old = t - 8 * 24 * 3600 * 1_000_000_000;
    let a = post(
        &r.addr(),
        PATH,
        &[PB, ("X-Scope-OrgID", "ignored")],
        &pb("{job=\"x\"}", vec![(old, "old"), (t, "new")]),
    )
    .expect("post");
    assert_eq!(a.status, 400);
    assert!(
        a.body
            .starts_with("entry for stream '{job=\"x\"}' has timestamp too old: "),
        "{a:?}"
    );
    assert!(
        a.header("content-type")
            .is_some_and(|c| c.starts_with("text/plain"))
    );
    let e = r.entries();
    assert_eq!(e.len(), 1);
    assert_eq!((e[0].tenant.as_str(), e[0].line.as_str()), ("fake", "new"));
    assert_eq!(r.stats().refused("greater_than_max_sample_age"), 1);
    // The same body again: the stored entry de-duplicated, the old one refused again.
    let a = post(
        &r.addr(),
        PATH,
        &[PB],
        &pb("{job=\"x\"}", vec![(old, "old"), (t, "new")]),
    )
    .expect("post");
    assert_eq!(a.status, 400);
    assert_eq!(r.len(), 1);
    assert_eq!(r.stats().deduplicated, 1);
}

#[test]
fn faults_answer_as_asked_then_stop() {
    let r = LokiReceiver::start();
    let t = now_ns();
    let body = pb("{job=\"x\"}", vec![(t, "l")]);
    r.fail_next(2, 503, None);
    r.fail_next(1, 429, Some(7));
    let a = post(&r.addr(), PATH, &[PB], &body).expect("post");
    assert_eq!(a.status, 503);
    assert_eq!(
        post(&r.addr(), PATH, &[PB], &body).expect("post").status,
        503
    );
    let a = post(&r.addr(), PATH, &[PB], &body).expect("post");
    assert_eq!((a.status, a.header("retry-after")), (429, Some("7")));
    assert!(r.is_empty(), "a fault stores nothing");
    assert_eq!(
        post(&r.addr(), PATH, &[PB], &body).expect("post").status,
        204
    );
    assert_eq!(r.len(), 1);

    r.fail_for(Duration::from_millis(300), 500, None);
    assert_eq!(
        post(&r.addr(), PATH, &[PB], &body).expect("post").status,
        500
    );
    std::thread::sleep(Duration::from_millis(350));
    assert_eq!(
        post(&r.addr(), PATH, &[PB], &body).expect("post").status,
        204
    );

    r.set_latency(Some(Duration::from_millis(200)));
    let t0 = Instant::now();
    assert_eq!(
        post(&r.addr(), PATH, &[PB], &body).expect("post").status,
        204
    );
    assert!(t0.elapsed() >= Duration::from_millis(200));
    r.set_latency(None);
    let s = r.stats();
    assert_eq!(
        (s.status(503), s.status(429), s.status(500), s.status(204)),
        (2, 1, 1, 3)
    );
    // Identical entries: stored once.
    assert_eq!(r.len(), 1);
    assert_eq!(s.deduplicated, 2);
}

#[test]
fn rate_limit_answers_429_with_retry_after_and_stores_nothing() {
    let r = LokiReceiver::start_with(Limits {
        ingestion_rate_bytes: 1.0,
        ingestion_burst_bytes: 10.0,
        rate_limit_retry_after: Some(2),
        ..Limits::default()
    });
    let t = now_ns();
    let a = post(
        &r.addr(),
        PATH,
        &[PB],
        &pb("{job=\"x\"}", vec![(t, "0123456789a")]),
    )
    .expect("post");
    assert_eq!((a.status, a.header("retry-after")), (429, Some("2")));
    assert!(
        a.body
            .starts_with("Ingestion rate limit exceeded for user fake"),
        "{a:?}"
    );
    assert!(r.is_empty());
    assert_eq!(r.stats().refused("rate_limited"), 1);
}

#[test]
fn down_refuses_connections_and_up_keeps_what_is_stored() {
    let r = LokiReceiver::start();
    let t = now_ns();
    assert_eq!(
        post(
            &r.addr(),
            PATH,
            &[PB],
            &pb("{job=\"x\"}", vec![(t, "before")])
        )
        .expect("post")
        .status,
        204
    );
    r.down();
    assert!(!r.is_up());
    let e = post(
        &r.addr(),
        PATH,
        &[PB],
        &pb("{job=\"x\"}", vec![(t + 1, "during")]),
    )
    .expect_err("refused while down");
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
    r.up();
    assert!(r.is_up());
    assert_eq!(
        post(
            &r.addr(),
            PATH,
            &[PB],
            &pb("{job=\"x\"}", vec![(t + 2, "after")])
        )
        .expect("post")
        .status,
        204
    );
    let lines: Vec<String> = r.entries().into_iter().map(|e| e.line).collect();
    assert_eq!(lines, ["before", "after"]);
    // A second cycle works too.
    r.down();
    r.up();
    assert_eq!(r.len(), 2);
}

#[tokio::test]
async fn usable_and_droppable_inside_an_async_test() {
    let r = LokiReceiver::start();
    let addr = r.addr();
    let t = now_ns();
    let a = tokio::task::spawn_blocking(move || {
        post(&addr, PATH, &[PB], &pb("{job=\"x\"}", vec![(t, "l")])).expect("post")
    })
    .await
    .expect("join");
    assert_eq!(a.status, 204);
    r.down();
    r.up();
    assert_eq!(r.len(), 1);
    drop(r);
}
