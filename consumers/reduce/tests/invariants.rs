//! Generated event streams with hostile timestamps (0, u64::MAX, far future and past,
//! duplicates, jumps), missing fields and tiny bounds: nothing panics, every placed event
//! is in exactly one record once settled, and the bounds hold. Plus the `[reduce]` table
//! loaded with figment as the binary will.

use figment::Figment;
use figment::providers::{Format, Toml};
use tapbus_event::EventView;
use tapbus_reduce::{KeyField, Placed, ReduceConfig, Reducer, ReductionConfig};

const S: u64 = 1_000_000_000;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn event(rng: &mut Rng, now: &mut u64) -> String {
    let n = rng.next();
    let ts = match n % 32 {
        0 => Some(0),
        1 => Some(u64::MAX),
        2 => Some(u64::MAX - (n >> 20) % (100 * S)),
        3 => None,
        4 => Some(now.saturating_add(3 * 3600 * S)),
        5 => Some(now.saturating_sub((n >> 10) % (3600 * S))),
        6 => {
            // a jump that sticks
            *now = now.saturating_add(7200 * S);
            Some(*now)
        }
        _ => {
            *now = now.saturating_add((n >> 8) % (S / 2));
            Some(now.saturating_sub((n >> 40) % (8 * S)))
        }
    };
    let ts = ts.map_or("null".to_owned(), |t| t.to_string());
    let op = [
        "CLIENT_RESPONSE",
        "CLIENT_QUERY",
        "AUTH_RESPONSE",
        "UNKNOWN(99)",
    ][(n >> 3) as usize % 4];
    let qname = match (n >> 5) % 5 {
        0 => "null".to_owned(),
        1 => r#""Caps.Example""#.to_owned(),
        _ => format!(r#""n{}.example""#, (n >> 12) % 50),
    };
    let identity = match (n >> 7) % 4 {
        0 => "null".to_owned(),
        k => format!(r#""ns{k}""#),
    };
    let ip = match (n >> 9) % 3 {
        0 => "null".to_owned(),
        1 => format!(r#""10.0.0.{}""#, (n >> 30) % 20),
        _ => r#""2001:db8::1""#.to_owned(),
    };
    let len = if n.is_multiple_of(7) {
        "null".to_owned()
    } else {
        ((n >> 50) % 1500).to_string()
    };
    format!(
        r#"{{"network":{{"query-ip":{ip},"protocol":"UDP"}},"dns":{{"length":{len},"qname":{qname},"qtype":"A","rcode":"NOERROR"}},"dnstap":{{"operation":"{op}","identity":{identity},"timestamp":{ts}}}}}"#
    )
}

#[test]
fn hostile_streams() {
    for (seed, max_groups, window, lateness, max_future) in [
        (1u64, 200_000usize, 10, 5, 3600),
        (2, 7, 1, 0, 1),
        (3, 1, 1, 0, 1),
        (4, 30, 60, 30, 120),
    ] {
        let config = ReduceConfig {
            max_groups,
            window: std::time::Duration::from_secs(window),
            lateness: std::time::Duration::from_secs(lateness),
            max_future: std::time::Duration::from_secs(max_future),
            reductions: vec![
                ReductionConfig {
                    name: "all".into(),
                    filter: String::new(),
                    keys: vec![KeyField::QueryIp, KeyField::Qname, KeyField::Operation],
                },
                ReductionConfig::defaults().remove(1),
            ],
        };
        let mut r = Reducer::new(config.validate().expect("valid"));
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ seed);
        let mut now = 1_795_315_290 * S;
        let mut pending: Vec<Placed> = Vec::new();
        let mut out = Vec::new();
        let mut emitted = 0u64;
        for i in 0..20_000 {
            let json = event(&mut rng, &mut now);
            let ev = EventView::parse(json.as_bytes()).expect("generated event parses");
            let p = r.push(&ev);
            if p.settles_with().is_some() {
                pending.push(p);
            }
            if i % 3 == 0
                && let Some(b) = r.advance(&mut out)
            {
                pending.retain(|p| !p.settled_by(b));
                emitted += out.drain(..).map(|x| x.count).sum::<u64>();
                let s = r.stats();
                assert!(s.open_groups <= 2 * max_groups as u64, "seed {seed}: {s:?}");
            }
        }
        let b = r.close_all(&mut out).expect("events were placed");
        assert!(pending.iter().all(|p| p.settled_by(b)), "seed {seed}");
        for rec in &out {
            let v: serde_json::Value = serde_json::from_slice(&rec.to_json()).expect("JSON");
            assert!(v.is_object());
            assert!(rec.first_ns <= rec.last_ns);
            assert!(rec.window_start_ns <= rec.first_ns);
            assert!(rec.last_ns < rec.window_end_ns || rec.window_end_ns == u64::MAX);
        }
        emitted += out.iter().map(|x| x.count).sum::<u64>();
        let s = r.stats();
        assert_eq!(emitted, s.grouped + s.overflow, "seed {seed}: {s:?}");
        assert_eq!((s.open_groups, s.open_windows), (0, 0), "seed {seed}");
        assert!(
            s.rejected_future > 0 && s.no_timestamp > 0 && s.late > 0,
            "seed {seed}: {s:?}"
        );
        if max_groups < 100 {
            assert!(s.overflow > 0, "seed {seed}: {s:?}");
        }
    }
}

#[test]
fn loads_with_figment() {
    let toml = r#"
        [reduce]
        window = "30s"
        lateness = "2s 500ms"
        max_groups = 1000

        [[reduce.reductions]]
        name = "server"
        filter = "operation=CLIENT_RESPONSE rcode=SERVFAIL"
        keys = ["response-ip", "rcode"]
    "#;
    let c: ReduceConfig = Figment::new()
        .merge(Toml::string(toml))
        .extract_inner("reduce")
        .expect("loads");
    let spec = c.validate().expect("valid");
    assert_eq!(spec.window_ns, 30 * S);
    assert_eq!(spec.lateness_ns, 2_500_000_000);
    assert_eq!(spec.max_future_ns, 3600 * S);
    assert_eq!(spec.reductions.len(), 1);
    assert_eq!(spec.reductions[0].subject, "tapbus.reduced.server");
    let bad = Figment::new()
        .merge(Toml::string("[reduce]\nwindow = \"10s\"\nwindw = 3\n"))
        .extract_inner::<ReduceConfig>("reduce");
    assert!(bad.is_err(), "unknown keys are refused");
    let short: ReduceConfig = Figment::new()
        .merge(Toml::string("[reduce]\nwindow = \"100ms\"\n"))
        .extract_inner("reduce")
        .expect("loads");
    assert_eq!(
        short.validate().map(|_| ()).map_err(|e| e.to_string()),
        Err("reduce.window: must be at least 1s".to_owned())
    );
}
