//! The reducer on every event of the bulk capture (`bulk-100k.fstrm`, 100,002 events,
//! half of them CLIENT_RESPONSE), default configuration (`client` and `qname`
//! reductions, 10 s windows).
//!
//! Measured 2026-12-02 on the 2-core machine while other builds ran (load 2.6-3.9, so
//! wall-clock numbers move by +-30% between runs; the instruction counts below do not),
//! `cargo bench -p tapbus-reduce --bench reduce -- --warm-up-time 1 --measurement-time 4`,
//! all 100,002 events (24,218 records), medians per event:
//!
//! | what | per event | events/s |
//! | --- | --- | --- |
//! | `push` on pre-parsed views (no records built) | 0.35-0.46 us | 2.2-2.8 M |
//! | `push` + `advance` every 256 + `close_all` (records built) | 0.42 us | 2.4 M |
//! | `EventView::parse` alone (reference, same run) | 0.85 us | 1.17 M |
//! | parse + push + advance + close_all | 1.26 us | 0.79 M |
//! | `Record::write_json` (per record) | 0.48 us | 2.1 M records |
//!
//! The pre-parsed views borrow their strings from 90 MB of event bytes, so `push` alone
//! pays a cache miss per event that the binary (which pushes right after parsing) does not.
//!
//! Instructions (`examples/push_loop.rs` under `valgrind --tool=callgrind`, the first
//! 20,000 events, 9,245 records): push + advance + records 3.3 k per event, of which
//! `Reducer::push` 1.2 k (two filters, bucket lookup, two key encodings and group
//! lookups) and building records 2.0 k (4.4 k per record: sort by key, id hash, strings);
//! `EventView::parse` 13.2 k. So the reducer adds ~25 % to the parse, and on its own runs
//! well above the 1 M events/s per core asked for. The bulk capture is the worst case for
//! records: almost every response is its own (client, qname, qtype, rcode) group.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tapbus_event::EventView;
use tapbus_reduce::{ReduceConfig, Reducer};

/// Every event of the bulk capture, as the broker publishes them.
fn events() -> Vec<Vec<u8>> {
    tapbus_testsupport::testdata::events("bulk-100k.fstrm")
}

fn reducer() -> Reducer {
    Reducer::new(ReduceConfig::default().validate().expect("defaults"))
}

/// How often the binary would call `advance` (once per delivered batch).
const BATCH: usize = 256;

fn bench(c: &mut Criterion) {
    let events = events();
    let views: Vec<EventView<'_>> = events
        .iter()
        .map(|e| EventView::parse(e).expect("parses"))
        .collect();
    {
        let mut r = reducer();
        let mut out = Vec::new();
        for v in &views {
            r.push(v);
        }
        r.close_all(&mut out);
        eprintln!(
            "{} events -> {} records, {:?}",
            views.len(),
            out.len(),
            r.stats()
        );
    }
    let mut g = c.benchmark_group("reduce");
    g.throughput(Throughput::Elements(views.len() as u64));
    g.sample_size(10);

    g.bench_function("push (pre-parsed views)", |b| {
        b.iter_with_large_drop(|| {
            let mut r = reducer();
            for v in &views {
                black_box(r.push(black_box(v)));
            }
            r
        })
    });
    g.bench_function("push + advance + close_all (records built)", |b| {
        b.iter_with_large_drop(|| {
            let mut r = reducer();
            let mut out = Vec::new();
            for (i, v) in views.iter().enumerate() {
                black_box(r.push(black_box(v)));
                if i % BATCH == 0 {
                    r.advance(&mut out);
                }
            }
            r.close_all(&mut out);
            (r, out)
        })
    });
    g.bench_function("parse only (reference)", |b| {
        b.iter(|| {
            for e in &events {
                black_box(EventView::parse(black_box(e)).expect("parses"));
            }
        })
    });
    g.bench_function("parse + push + advance + close_all", |b| {
        b.iter_with_large_drop(|| {
            let mut r = reducer();
            let mut out = Vec::new();
            for (i, e) in events.iter().enumerate() {
                let v = EventView::parse(black_box(e)).expect("parses");
                black_box(r.push(&v));
                if i % BATCH == 0 {
                    r.advance(&mut out);
                }
            }
            r.close_all(&mut out);
            (r, out)
        })
    });
    g.finish();

    let mut r = reducer();
    let mut out = Vec::new();
    for v in &views {
        r.push(v);
    }
    r.close_all(&mut out);
    let mut g = c.benchmark_group("records");
    g.throughput(Throughput::Elements(out.len() as u64));
    g.sample_size(10);
    g.bench_function("Record::write_json", |b| {
        let mut buf = Vec::with_capacity(1 << 20);
        b.iter(|| {
            buf.clear();
            for rec in &out {
                rec.write_json(&mut buf);
            }
            black_box(buf.len())
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
