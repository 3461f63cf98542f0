//! The model of tapbus-top on the bulk capture (`bulk-100k.fstrm`, 100,002 events: one
//! identity, CLIENT_QUERY + CLIENT_RESPONSE, 9,270 distinct qnames, so the 1024-entry
//! top tables evict all the time): `Stats::record` per event, and `Stats::snapshot` (what
//! the screen thread does under the lock once per refresh) with full tables.
//!
//! Results and the command: bench/README.md ("tapbus-top").

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tapbus_event::EventView;
use tapbus_top::stats::Stats;

/// Every event of the bulk capture, as the broker publishes them.
fn events() -> Vec<Vec<u8>> {
    tapbus_testsupport::testdata::events("bulk-100k.fstrm")
}

const N: usize = 20_000;

fn bench(c: &mut Criterion) {
    let all = events();
    let views: Vec<EventView<'_>> = all
        .iter()
        .map(|e| EventView::parse(e).expect("parses"))
        .collect();
    let mut g = c.benchmark_group("top");
    g.throughput(Throughput::Elements(N as u64));
    g.sample_size(10);
    // Warm: the whole capture once, so the tables are full (the steady state).
    let mut s = Stats::new(0);
    let mut ms = 0u64;
    for v in &views {
        s.record(v, ms);
        ms += 1;
    }
    g.bench_function("record", |b| {
        b.iter(|| {
            for v in &views[..N] {
                ms += 1;
                s.record(black_box(v), ms / 10);
            }
        })
    });
    g.bench_function("parse+record", |b| {
        b.iter(|| {
            for e in &all[..N] {
                ms += 1;
                let v = EventView::parse(black_box(e)).expect("parses");
                s.record(&v, ms / 10);
            }
        })
    });
    g.finish();
    let mut g = c.benchmark_group("top-snapshot");
    g.sample_size(10);
    g.bench_function("snapshot (full tables, 500 rows each)", |b| {
        b.iter(|| black_box(s.snapshot(ms / 10, 500)))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
