//! Parses the first 200 events of the bulk capture `ROUNDS` times (default 200): a fixed
//! workload for `valgrind --tool=callgrind`, whose instruction counts do not depend on
//! what else the machine is doing.
//!
//! `cargo build --release -p tapbus-event --example parse_loop &&
//!  valgrind --tool=callgrind target/release/examples/parse_loop [hand|serde|geo]`
//!
//! `geo`: the same events with the `geo` object and `schema-version` of a broker with
//! `[enrich.geoip]` after `dnstap`, read by the hand-written reader.

use std::hint::black_box;

use tapbus_event::EventView;

fn main() {
    let which = std::env::args().nth(1).unwrap_or_else(|| "hand".into());
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(200);
    let path = tapbus_testsupport::testdata::path("bulk-100k.fstrm");
    let mut events: Vec<Vec<u8>> = tapbus_testsupport::testdata::events_in(&path)
        .take(200)
        .collect();
    if which == "geo" {
        for e in &mut events {
            e.pop();
            e.extend_from_slice(
                br#","geo":{"country":"FR","city":"Paris","asn":3215,"as-org":"Orange"},"schema-version":2}"#,
            );
        }
    }
    if std::env::var_os("SHOW").is_some() {
        println!("{}", String::from_utf8_lossy(&events[0]));
    }
    let t = std::time::Instant::now();
    for _ in 0..rounds {
        for e in &events {
            match which.as_str() {
                "serde" => drop(black_box(EventView::parse_serde_json(black_box(e)))),
                _ => drop(black_box(EventView::parse(black_box(e)))),
            }
        }
    }
    let n = rounds * events.len();
    eprintln!(
        "{which}: {n} parses, {:.3} us each",
        t.elapsed().as_secs_f64() * 1e6 / n as f64
    );
}
