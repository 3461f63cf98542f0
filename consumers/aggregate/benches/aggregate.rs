//! Aggregating the events of the bulk capture (`bulk-100k.fstrm`, 100,002 events).
//!
//! Results: see the table filled in below after a run of
//! `cargo bench -p tapbus-aggregate --bench aggregate -- --warm-up-time 1 --measurement-time 3`.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tapbus_aggregate::{AggregateSpec, Aggregator};
use tapbus_event::EventView;
use tapbus_proto::fstrm::{self, DEFAULT_MAX_DATA_FRAME, Frame};

/// Every event of the bulk capture, as the broker publishes them.
fn events() -> Vec<Vec<u8>> {
    let path = tapbus_testsupport::testdata::path("bulk-100k.fstrm");
    let bytes = std::fs::read(&path).expect("bulk capture");
    let (frames, result) = fstrm::decode_all(&bytes, DEFAULT_MAX_DATA_FRAME);
    result.expect("bulk capture is a clean stream");
    frames
        .into_iter()
        .filter_map(|f| match f {
            Frame::Data(b) => Some(b),
            _ => None,
        })
        .map(|frame| {
            let mut out = Vec::new();
            tapbus_proto::event::encode(frame, "bench", &mut out).expect("event");
            out
        })
        .collect()
}

/// Events per measured iteration (the first of the capture).
const N: usize = 20_000;

fn spec(coredns: bool) -> AggregateSpec {
    let mut s = AggregateSpec::with_instance("bench");
    s.coredns = coredns;
    s
}

fn bench(c: &mut Criterion) {
    let all = events();
    let views: Vec<EventView<'_>> = all
        .iter()
        .map(|e| EventView::parse(e).expect("parses"))
        .collect();
    let some = &views[..N];

    let mut g = c.benchmark_group("aggregate");
    g.throughput(Throughput::Elements(N as u64));
    g.sample_size(10);
    for coredns in [false, true] {
        let name = if coredns { "push+coredns" } else { "push" };
        // Series exist already (the steady state): the aggregator is warmed once.
        let mut agg = Aggregator::new(spec(coredns));
        some.iter().for_each(|v| agg.push(v));
        g.bench_function(name, |b| {
            b.iter(|| {
                for v in some {
                    agg.push(black_box(v));
                }
            })
        });
    }
    let mut agg = Aggregator::new(spec(false));
    g.bench_function("parse+push", |b| {
        b.iter(|| {
            for e in &all[..N] {
                let v = EventView::parse(black_box(e)).expect("parses");
                agg.push(&v);
            }
        })
    });
    g.finish();

    let mut g = c.benchmark_group("export");
    g.sample_size(10);
    for coredns in [false, true] {
        let mut agg = Aggregator::new(spec(coredns));
        views.iter().for_each(|v| agg.push(v));
        let text = agg.exposition();
        let samples = text.lines().filter(|l| !l.starts_with('#')).count();
        eprintln!(
            "coredns={coredns}: {} bytes of text, {samples} samples",
            text.len()
        );
        let p = if coredns { "+coredns" } else { "" };
        let mut out = String::with_capacity(text.len());
        g.bench_function(format!("exposition{p}"), |b| {
            b.iter(|| {
                out.clear();
                agg.write_exposition(&mut out);
                black_box(out.len())
            })
        });
        g.bench_function(format!("batch+json{p}"), |b| {
            b.iter(|| black_box(agg.batch(1, 1).to_json().len()))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
