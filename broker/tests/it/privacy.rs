//! Privacy views end to end: one broker, two outputs at once on a replay of real captures
//! (with EDNS Client Subnet options in them): the clear event to NATS `dnstap.>`, a
//! Crypto-PAn view to MQTT. The NATS events are unchanged; the MQTT ones are exactly the
//! clear ones with every client address field transformed (query-ip, response-ip, ECS,
//! a policy CLIENT_IP value); no clear address appears in any MQTT payload outside the
//! resource records (DNS answer data: glue addresses of name servers, not clients), nor
//! anywhere at all in a view that drops them; counts are equal.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use crate::harness::*;
use crate::mqtt::MosquittoSub;

const CAPTURES: [&str; 3] = ["kresd.fstrm", "dnsdist.fstrm", "unbound.fstrm"];

/// 32 bytes: the AES key and the pad.
const KEY: &[u8; 32] = b"tapbus-test-key-0123456789abcdef";

fn pseudonymizer(key_file: &std::path::Path) -> tapbus_privacy::Pseudonymizer {
    tapbus_privacy::Pseudonymizer::new(&tapbus_privacy::Settings {
        client_ip: tapbus_privacy::Mode::CryptoPan,
        key_file: Some(key_file.to_path_buf()),
        ..Default::default()
    })
    .expect("pseudonymizer")
}

/// The reference event as the view shows it.
fn transformed(ev: &serde_json::Value, p: &tapbus_privacy::Pseudonymizer) -> serde_json::Value {
    let mut ev = ev.clone();
    let map = |v: &mut serde_json::Value| {
        if let Some(ip) = v.as_str().and_then(|s| s.parse::<IpAddr>().ok()) {
            *v = p.addr(ip).to_string().into();
        }
    };
    map(&mut ev["network"]["query-ip"]);
    map(&mut ev["network"]["response-ip"]);
    if ev["dnstap"]["policy-match"] == "CLIENT_IP" {
        map(&mut ev["dnstap"]["policy-value"]);
    }
    if let Some(opts) = ev
        .get_mut("edns")
        .and_then(|e| e.get_mut("options"))
        .and_then(|o| o.as_array_mut())
    {
        for o in opts.iter_mut().filter(|o| o["code"] == 8) {
            if let Some((a, len)) = o["data"].as_str().and_then(|d| d.split_once('/'))
                && let (Ok(ip), Ok(len)) = (a.parse::<IpAddr>(), len.parse::<u8>())
            {
                o["data"] = format!("{}/{len}", p.prefix(ip, len)).into();
            }
        }
    }
    ev
}

/// Every address in a client address field of `ev` (query-ip, response-ip, ECS, policy).
fn clear_addresses(ev: &serde_json::Value, out: &mut BTreeSet<String>) {
    for k in ["query-ip", "response-ip"] {
        if let Some(a) = ev["network"][k].as_str() {
            out.insert(a.to_string());
        }
    }
    if let Some(opts) = ev["edns"]["options"].as_array() {
        // A /0 subnet (0.0.0.0/0, "do not use my subnet") carries no address bit.
        for o in opts
            .iter()
            .filter(|o| o["code"] == 8 && o["source-prefix"] != 0)
        {
            if let Some((a, _)) = o["data"].as_str().and_then(|d| d.split_once('/')) {
                out.insert(a.to_string());
            }
        }
    }
}

fn sorted_keys<'a>(evs: impl Iterator<Item = &'a serde_json::Value>) -> Vec<String> {
    let mut k: Vec<String> = evs.map(key).collect();
    k.sort();
    k
}

/// The clear addresses found in `text` (as JSON strings, ECS prefixes or rdata words).
fn leaks<'a>(text: &str, addrs: &'a BTreeSet<String>) -> Vec<&'a str> {
    addrs
        .iter()
        .filter(|a| {
            text.contains(&format!("\"{a}\""))
                || text.contains(&format!("\"{a}/"))
                || text.contains(&format!(" {a}\""))
                || text.contains(&format!("\"{a} "))
        })
        .map(String::as_str)
        .collect()
}

fn run(drop_records: bool) {
    let nats = Nats::start();
    let mq = Mosquitto::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let key_file = dir.path().join("cryptopan.key");
    std::fs::write(&key_file, KEY).expect("key file");
    let reference: Vec<serde_json::Value> = CAPTURES
        .iter()
        .flat_map(|c| reference_events(&capture(c)))
        .collect();
    let n = reference.len();
    assert_eq!(n, CAPTURES.iter().map(|c| expected_count(c)).sum::<usize>());
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut nats_sub = rt.block_on(Sub::start(nats.url(), "dnstap.>"));
    let mqtt_sub = MosquittoSub::start(&mq, n, "mqttv311", 1, 60);

    let mut env: Vec<(String, String)> = CAPTURES
        .iter()
        .enumerate()
        .map(|(i, c)| {
            (
                format!("TAPBUS_INPUTS__F{i}__URL"),
                format!("file://{}", capture(c).display()),
            )
        })
        .collect();
    let mqtt_url = format!("mqtt://127.0.0.1:{}", mq.port());
    for (k, v) in [
        ("TAPBUS_OUTPUTS__NATS__URL", nats.url()),
        ("TAPBUS_OUTPUTS__MQTT__URL", mqtt_url.as_str()),
        ("TAPBUS_OUTPUTS__MQTT__QOS", "1"),
        ("TAPBUS_OUTPUTS__MQTT__PRIVACY__CLIENT_IP", "cryptopan"),
        (
            "TAPBUS_OUTPUTS__MQTT__PRIVACY__KEY_FILE",
            &key_file.display().to_string(),
        ),
        ("TAPBUS_METRICS_LISTEN", ""),
    ] {
        env.push((k.to_string(), v.to_string()));
    }
    if drop_records {
        env.push((
            "TAPBUS_OUTPUTS__MQTT__PRIVACY__DROP_FIELDS".into(),
            "dns.resource-records".into(),
        ));
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tapbus-broker"))
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("TAPBUS_LOG", "info")
        .output()
        .expect("run broker");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "broker failed:\n{log}");
    // The log names the view and its key's fingerprint, never the key.
    let fingerprint = pseudonymizer(&key_file).fingerprint().expect("fingerprint");
    assert!(log.contains(&fingerprint), "no fingerprint in:\n{log}");
    assert!(!log.contains("tapbus-test-key"), "the key is in the log");

    let from_nats = rt.block_on(nats_sub.collect(n, Duration::from_secs(10)));
    let from_mqtt = mqtt_sub.finish(Duration::from_secs(70));
    assert_eq!((from_nats.len(), from_mqtt.len()), (n, n), "counts");

    // NATS: the clear events, unchanged.
    assert!(
        sorted_keys(from_nats.iter().map(|(_, v)| v)) == sorted_keys(reference.iter()),
        "the NATS events differ from the clear ones"
    );

    // MQTT: exactly the clear events with every client address transformed.
    let p = pseudonymizer(&key_file);
    let mqtt: Vec<serde_json::Value> = from_mqtt
        .iter()
        .map(|(_, payload)| serde_json::from_str(payload).expect("MQTT payload is JSON"))
        .collect();
    let mut want: Vec<serde_json::Value> = reference.iter().map(|e| transformed(e, &p)).collect();
    if drop_records {
        for e in &mut want {
            if let Some(d) = e["dns"].as_object_mut() {
                d.remove("resource-records");
            }
        }
    }
    let (got, want) = (sorted_keys(mqtt.iter()), sorted_keys(want.iter()));
    if let Some(i) = (0..n).find(|&i| got[i] != want[i]) {
        panic!(
            "the MQTT events are not the transformed clear ones; first difference:\n got  {}\n want {}",
            got[i], want[i]
        );
    }

    // No clear address in any MQTT payload (outside the records, or at all without them).
    let mut addrs = BTreeSet::new();
    for e in &reference {
        clear_addresses(e, &mut addrs);
    }
    let ecs = reference
        .iter()
        .filter(|e| {
            e["edns"]["options"]
                .as_array()
                .is_some_and(|o| o.iter().any(|o| o["code"] == 8))
        })
        .count();
    assert!(ecs > 100, "the captures carry ECS options ({ecs})");
    assert!(addrs.len() >= 5, "{addrs:?}");
    assert!(
        addrs.contains("127.53.0.0") && addrs.contains("2001:db8:ec5::"),
        "ECS prefixes among the clear addresses: {addrs:?}"
    );
    for (topic, payload) in &from_mqtt {
        let text = if drop_records {
            payload.clone()
        } else {
            let mut v: serde_json::Value = serde_json::from_str(payload).expect("json");
            if let Some(d) = v["dns"].as_object_mut() {
                d.remove("resource-records");
            }
            v.to_string()
        };
        let found = leaks(&text, &addrs);
        assert!(found.is_empty(), "clear {found:?} on {topic}: {payload}");
    }
    // The check can fail: the NATS payloads carry them.
    let nats_text: String = from_nats.iter().map(|(_, v)| v.to_string()).collect();
    assert!(!leaks(&nats_text, &addrs).is_empty());
}

#[test]
fn clear_to_nats_and_cryptopan_to_mqtt_from_one_broker() {
    run(false);
}

#[test]
fn a_view_without_the_records_carries_no_clear_address_at_all() {
    run(true);
}

#[test]
fn a_bad_key_file_is_refused_at_start_naming_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let short = dir.path().join("short.key");
    std::fs::write(&short, b"too short").expect("key");
    for (file, what) in [
        (short.display().to_string(), "32"),
        ("/nonexistent/key".to_string(), "/nonexistent/key"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tapbus-broker"))
            .args(["--check", "-i", "file:///dev/null", "-o", "stdout"])
            .env("TAPBUS_OUTPUTS__STDOUT__PRIVACY__CLIENT_IP", "cryptopan")
            .env("TAPBUS_OUTPUTS__STDOUT__PRIVACY__KEY_FILE", &file)
            .output()
            .expect("run broker");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(
            err.contains("outputs.stdout.privacy.key_file") && err.contains(what),
            "{err}"
        );
    }
}

/// A rotated key is a reload: after SIGHUP the view uses the new key file's key (the log
/// names both fingerprints, never a key), without a restart and without losing events;
/// a broken key file at reload keeps the view in use.
#[test]
fn sighup_rotates_the_key_without_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key_file = dir.path().join("cryptopan.key");
    std::fs::write(&key_file, KEY).expect("key");
    let old = pseudonymizer(&key_file);
    let sock = dir.path().join("dnstap.sock");
    let stdout = dir.path().join("events.jsonl");
    let log = dir.path().join("broker.log");
    let addr = format!("127.0.0.1:{}", free_port());
    let broker = Proc::spawn(
        std::process::Command::new(env!("CARGO_BIN_EXE_tapbus-broker"))
            .args(["-i", &format!("unix://{}", sock.display()), "-o", "stdout"])
            .args(["--metrics-listen", &addr])
            .env("TAPBUS_OUTPUTS__STDOUT__PRIVACY__CLIENT_IP", "cryptopan")
            .env("TAPBUS_OUTPUTS__STDOUT__PRIVACY__KEY_FILE", &key_file)
            .env("TAPBUS_LOG", "info")
            .stdout(std::fs::File::create(&stdout).expect("stdout"))
            .stderr(std::fs::File::create(&log).expect("log")),
    );
    wait_until("broker healthy", Duration::from_secs(20), || {
        http_get(&addr, "/health").is_some()
    });
    let cap = capture("kresd.fstrm");
    let n = expected_count("kresd.fstrm");
    let lines = || {
        std::fs::read_to_string(&stdout)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("event"))
            .collect::<Vec<_>>()
    };
    fstrm_replay_unix(&cap, &sock);
    wait_until("first replay", Duration::from_secs(20), || {
        lines().len() >= n
    });

    let new_key = *b"another-key-for-the-second-half!";
    std::fs::write(&key_file, new_key).expect("new key");
    let new = pseudonymizer(&key_file);
    let hup = |what: &str| {
        let st = std::process::Command::new("kill")
            .args(["-HUP", &broker.pid().to_string()])
            .status()
            .expect("kill");
        assert!(st.success(), "{what}");
    };
    hup("rotate");
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    let new_fp = new.fingerprint().expect("fingerprint");
    wait_until("keys reloaded", Duration::from_secs(20), || {
        log_text().contains(&new_fp)
    });
    fstrm_replay_unix(&cap, &sock);
    wait_until("second replay", Duration::from_secs(20), || {
        lines().len() >= 2 * n
    });
    // A broken key at the next reload: the new key stays in use.
    std::fs::write(&key_file, b"short").expect("broken key");
    hup("broken");
    wait_until("reload refused", Duration::from_secs(20), || {
        log_text().contains("not reloaded")
    });
    fstrm_replay_unix(&cap, &sock);
    wait_until("third replay", Duration::from_secs(20), || {
        lines().len() >= 3 * n
    });

    let reference = reference_events(&cap);
    let evs = lines();
    assert_eq!(evs.len(), 3 * n);
    for (i, ev) in evs.iter().enumerate() {
        let p = if i < n { &old } else { &new };
        let want = transformed(&reference[i % n], p);
        assert_eq!(key(ev), key(&want), "event {i} (key of part {})", i / n);
    }
    let text = log_text();
    assert!(text.contains(&old.fingerprint().expect("fingerprint")));
    assert!(!text.contains("tapbus-test-key") && !text.contains("another-key"));
}
