//! Output filters: an output with a `filter` gets only the matching events, the others are
//! counted as filtered, and published + dropped + filtered == events for every output.

use std::process::{Command, Stdio};

use crate::harness::capture;

fn run(env: &[(&str, &str)]) -> (Vec<serde_json::Value>, String) {
    let file = capture("unbound.fstrm");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tapbus-broker"));
    cmd.env(
        "TAPBUS_INPUTS__FILE__URL",
        format!("file://{}", file.display()),
    )
    .env("TAPBUS_METRICS_LISTEN", "")
    .env("TAPBUS_OUTPUTS__STDOUT__URL", "stdout")
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run broker");
    assert!(
        out.status.success(),
        "broker: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let events = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("event JSON"))
        .collect();
    (events, String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn a_filtered_output_gets_only_matching_events_and_counts_the_rest() {
    let (all, _) = run(&[]);
    let n = crate::harness::expected_count("unbound.fstrm");
    assert_eq!(all.len(), n);
    let want: Vec<&serde_json::Value> = all
        .iter()
        .filter(|v| {
            v["dnstap"]["operation"] == "CLIENT_RESPONSE"
                && matches!(v["dns"]["rcode"].as_str(), Some("NXDOMAIN" | "SERVFAIL"))
        })
        .collect();
    assert!(!want.is_empty() && want.len() < n);
    let (got, log) = run(&[(
        "TAPBUS_OUTPUTS__STDOUT__FILTER",
        "operation=CLIENT_RESPONSE rcode=NXDOMAIN,SERVFAIL",
    )]);
    assert_eq!(got.iter().collect::<Vec<_>>(), want);
    let closing = log
        .lines()
        .find(|l| l.contains("output closed"))
        .unwrap_or_else(|| panic!("no closing line in:\n{log}"));
    for field in [
        format!("events={n}"),
        format!("published={}", want.len()),
        "dropped=0".to_string(),
        format!("filtered={}", n - want.len()),
    ] {
        assert!(closing.contains(&field), "{field} missing in {closing:?}");
    }
}

#[test]
fn a_bad_filter_is_refused_at_start_naming_the_key() {
    let out = Command::new(env!("CARGO_BIN_EXE_tapbus-broker"))
        .env("TAPBUS_INPUTS__FILE__URL", "file:///dev/null")
        .env("TAPBUS_OUTPUTS__STDOUT__URL", "stdout")
        .env("TAPBUS_OUTPUTS__STDOUT__FILTER", "qtype=AAAB")
        .output()
        .expect("run broker");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("outputs.stdout.filter"));
}
