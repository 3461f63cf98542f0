//! Parsing the events of the bulk capture (`bulk-100k.fstrm`, 100,002 events, ~914 bytes
//! each) with [`EventView`], plus a filter and the one-line form on top.
//!
//! Measured 2026-12-02 on this 2-core machine (load ~2 from another build during the run),
//! `cargo bench -p tapbus-event --bench view -- --warm-up-time 1 --measurement-time 3`,
//! 20,000 events (877 bytes each on average), medians per event:
//!
//! | what | 20k events (17.5 MB, out of cache) | 200 events (hot) |
//! | --- | --- | --- |
//! | `EventView::parse` (the hand-written reader, `src/scan.rs`) | 0.86 us | 0.80 us |
//! | sonic-rs, the serde derive | 1.69 us | 1.45 us |
//! | serde_json, the serde derive (`EventView::parse_serde_json`) | 1.83 us | 1.66 us |
//! | serde_json `Value` (reference) | 3.4 us | - |
//! | parse + 4-term `Filter::matches` | 1.07 us | - |
//! | parse + `write_line` | 1.07 us | - |
//!
//! Instructions, which do not depend on the load (`examples/parse_loop.rs` under
//! `valgrind --tool=callgrind`, 4,000 parses of the 200 hot events): the reader 13.0 k per
//! event, serde_json's derive 25.5 k. The 2026-12-01 run of the serde derive gave 2.9 us
//! (sonic-rs) and 3.0 us (serde_json) under heavier load; the ratio is what counts.
//!
//! With `geo` (2026-12-08, same command, load ~1.5): `EventView::parse` 0.91 us (20k),
//! 0.88 us (200 hot), and 0.92 us for the 200 hot events with a `geo` object and
//! `schema-version` appended (`view-hot-geo`). Instructions (`parse_loop`, callgrind, the
//! setup of `ROUNDS=0` subtracted): without `geo` 12.10 k per event before the reader
//! knew `geo`, 11.80 k after (no slower: the top-level loop ends at `dnstap`'s `}` as
//! before); with `geo` 13.39 k skipping it, 13.44 k reading it (`parse_loop geo`).
//!
//! Why hand-written: an event is ~60 short keys and values, so per-string overhead
//! dominates, not bytes. The reader predicts each block's next key (the encoder's order)
//! with one comparison, finds string ends eight bytes at a time, and skips what no
//! consumer reads by structure alone. sonic-rs stays a dev-dependency, for this table only.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tapbus_event::{EventView, Filter, write_line};

/// Every event of the bulk capture, as the broker publishes them.
fn events() -> Vec<Vec<u8>> {
    let path = tapbus_testsupport::testdata::path("bulk-100k.fstrm");
    tapbus_testsupport::testdata::events_in(&path)
        .take(N)
        .collect()
}

/// The first events of the capture: enough to leave the caches, short enough to repeat.
const N: usize = 20_000;

fn bench(c: &mut Criterion) {
    let events = events();
    let bytes: usize = events.iter().map(Vec::len).sum();
    eprintln!(
        "{} events, {} bytes, {} bytes/event",
        events.len(),
        bytes,
        bytes / events.len()
    );
    let mut g = c.benchmark_group("view");
    g.throughput(Throughput::Elements(events.len() as u64));
    g.sample_size(10);

    g.bench_function("EventView::parse", |b| {
        b.iter(|| {
            for e in &events {
                black_box(EventView::parse(black_box(e)).expect("parses"));
            }
        })
    });
    g.bench_function("serde_json::from_slice::<EventView>", |b| {
        b.iter(|| {
            for e in &events {
                black_box(serde_json::from_slice::<EventView>(black_box(e)).expect("parses"));
            }
        })
    });
    g.bench_function("sonic_rs::from_slice::<EventView>", |b| {
        b.iter(|| {
            for e in &events {
                black_box(sonic_rs::from_slice::<EventView>(black_box(e)).expect("parses"));
            }
        })
    });
    g.bench_function("serde_json::from_slice::<Value> (reference)", |b| {
        b.iter(|| {
            for e in &events {
                black_box(
                    serde_json::from_slice::<serde_json::Value>(black_box(e)).expect("parses"),
                );
            }
        })
    });
    let filter = Filter::parse(
        "operation=CLIENT_RESPONSE qname=*.bulk.test rcode!=NXDOMAIN client=127.0.0.0/8",
    )
    .expect("filter");
    g.bench_function("parse + Filter::matches", |b| {
        b.iter(|| {
            let mut n = 0u32;
            for e in &events {
                let v = EventView::parse(black_box(e)).expect("parses");
                n += u32::from(filter.matches(&v));
            }
            black_box(n)
        })
    });
    g.bench_function("parse + write_line", |b| {
        let mut line = String::with_capacity(256);
        b.iter(|| {
            for e in &events {
                let v = EventView::parse(black_box(e)).expect("parses");
                line.clear();
                write_line(&v, &mut line);
                black_box(&line);
            }
        })
    });
    g.finish();

    // The same on 200 events (~175 KB, in cache): a consumer parses a message right after
    // it arrived, while its bytes are still hot.
    let hot = &events[..200];
    let mut g = c.benchmark_group("view-hot");
    g.throughput(Throughput::Elements(hot.len() as u64));
    g.bench_function("EventView::parse", |b| {
        b.iter(|| {
            for e in hot {
                black_box(EventView::parse(black_box(e)).expect("parses"));
            }
        })
    });
    g.bench_function("sonic_rs", |b| {
        b.iter(|| {
            for e in hot {
                black_box(sonic_rs::from_slice::<EventView>(black_box(e)).expect("parses"));
            }
        })
    });
    g.bench_function("serde_json", |b| {
        b.iter(|| {
            for e in hot {
                black_box(EventView::parse_serde_json(black_box(e)).expect("parses"));
            }
        })
    });
    g.finish();

    // The same 200 events as a broker with `[enrich.geoip]` writes them: a `geo` object
    // and `schema-version` after `dnstap` (the events without them must not pay for it).
    let geo: Vec<Vec<u8>> = hot
        .iter()
        .map(|e| {
            let mut e = e.clone();
            e.pop();
            e.extend_from_slice(
                br#","geo":{"country":"FR","city":"Paris","asn":3215,"as-org":"Orange"},"schema-version":2}"#,
            );
            e
        })
        .collect();
    let mut g = c.benchmark_group("view-hot-geo");
    g.throughput(Throughput::Elements(geo.len() as u64));
    g.bench_function("EventView::parse", |b| {
        b.iter(|| {
            for e in &geo {
                black_box(EventView::parse(black_box(e)).expect("parses"));
            }
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
