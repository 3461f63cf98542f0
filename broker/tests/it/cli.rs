//! The command line and configuration: a bad configuration names the key and exits
//! non-zero; the shipped example loads; file inputs exit by status; /metrics and /health.

use std::process::Command;

use crate::harness::*;

fn broker(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tapbus-broker"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run broker");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_configuration_names_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases: &[(&str, &str)] = &[
        (
            "max_frame_size = 1\n[inputs.a]\nurl=\"tcp://127.0.0.1:1\"\n[outputs.o]\nurl=\"stdout\"\n",
            "max_frame_size",
        ),
        (
            "[inputs.a]\nurl=\"udp://127.0.0.1:1\"\n[outputs.o]\nurl=\"stdout\"\n",
            "inputs.a.url",
        ),
        (
            "[inputs.a]\nurl=\"tcp://127.0.0.1:1\"\n[outputs.o]\nurl=\"nats://127.0.0.1:4222\"\nsubject=\"a.>\"\n",
            "outputs.o.subject",
        ),
        (
            "[inputs.a]\nurl=\"tcp://127.0.0.1:1\"\nsocket_mode=\"0600\"\n[outputs.o]\nurl=\"stdout\"\n",
            "inputs.a.socket_mode",
        ),
        ("[inputs.a]\nurl=\"tcp://127.0.0.1:1\"\nwhat = 1\n", "what"),
        (
            "[inputs.a]\nurl=\"tls://127.0.0.1:1\"\n[outputs.o]\nurl=\"stdout\"\n",
            "inputs.a.tls_cert",
        ),
    ];
    for (i, (toml, key)) in cases.iter().enumerate() {
        let p = dir.path().join(format!("c{i}.toml"));
        std::fs::write(&p, toml).expect("write");
        let (code, err) = broker(&["-c", p.to_str().expect("utf8")], &[]);
        assert_eq!(code, 2, "case {i}: {err}");
        assert!(err.contains(key), "case {i}: error must name {key}: {err}");
    }
    // Environment overrides are validated too.
    let (code, err) = broker(
        &["-i", "tcp://127.0.0.1:1", "-o", "stdout"],
        &[("TAPBUS_MAX_CONNECTIONS", "0")],
    );
    assert_eq!(code, 2);
    assert!(err.contains("max_connections"), "{err}");
    let (code, err) = broker(&["-c", "/nonexistent/broker.toml"], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent/broker.toml"), "{err}");
}

#[test]
fn example_config_is_valid() {
    // The shipped example, with its addresses moved to free ports so nothing collides.
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/broker.toml");
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("x.sock");
    let tcp = format!("tcp://127.0.0.1:{}", free_port());
    let unix = format!("unix://{}", sock.display());
    // A stale socket file left by an earlier run is replaced.
    drop(std::os::unix::net::UnixListener::bind(&sock).expect("stale socket"));
    assert!(sock.exists());
    let nats = Nats::start();
    let b = Broker::start_env(
        &["-c", example.to_str().expect("utf8")],
        &[
            ("TAPBUS_INPUTS__LOCAL__URL", unix.as_str()),
            ("TAPBUS_INPUTS__TCP__URL", tcp.as_str()),
            ("TAPBUS_OUTPUTS__NATS__URL", nats.url()),
        ],
    );
    assert!(sock.exists(), "unix socket created");
    std::os::unix::net::UnixStream::connect(&sock).expect("the new socket accepts connections");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&sock).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);
    assert!(
        b.metrics()
            .contains("tapbus_queue_capacity{output=\"nats\"} 16384")
    );
    assert_eq!(
        http_get(&b.metrics_addr, "/health").as_deref(),
        Some("{\"status\":\"ok\"}\n")
    );
}

#[test]
fn file_inputs_exit_status() {
    let good = capture("kresd.fstrm");
    let (code, err) = broker(
        &[
            "-i",
            &format!("file://{}", good.display()),
            "-o",
            "stdout",
            "--metrics-listen",
            "",
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let bad = capture("malformed/truncated-mid-frame.fstrm");
    let (code, err) = broker(
        &[
            "-i",
            &format!("file://{}", bad.display()),
            "-o",
            "stdout",
            "--metrics-listen",
            "",
        ],
        &[],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("truncated"), "{err}");
}

/// With its metrics endpoint on, a broker reading only files still ends when they are
/// published: the endpoint does not keep the output queues open until `drain_timeout`
/// (once it did, and every replay with metrics took the whole timeout and warned).
#[test]
fn file_inputs_with_metrics_end_without_waiting_for_the_drain_deadline() {
    let good = capture("kresd.fstrm");
    let t0 = std::time::Instant::now();
    let (code, err) = broker(
        &[
            "-i",
            &format!("file://{}", good.display()),
            "-o",
            "stdout",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
        &[("TAPBUS_DRAIN_TIMEOUT", "120s"), ("TAPBUS_LOG", "info")],
    );
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("shutdown deadline"), "{err}");
    assert!(
        t0.elapsed() < std::time::Duration::from_secs(60),
        "the broker waited for its drain deadline: {err}"
    );
}

#[test]
fn stdout_output_is_json_lines() {
    let f = capture("bind-auth.fstrm");
    let out = Command::new(env!("CARGO_BIN_EXE_tapbus-broker"))
        .args([
            "-i",
            &format!("file://{}", f.display()),
            "-o",
            "stdout",
            "--metrics-listen",
            "",
        ])
        .output()
        .expect("run");
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).expect("utf8");
    let schema = validator();
    let lines: Vec<_> = text.lines().collect();
    assert_eq!(lines.len(), expected_count("bind-auth.fstrm"));
    for l in lines {
        let v: serde_json::Value = serde_json::from_str(l).expect("json line");
        assert_valid(&schema, &v);
    }
}

/// `--output` replaces no input: inputs set through `TAPBUS_INPUTS__<NAME>__URL` (as a
/// systemd unit or a container sets them) stay, and so do the file's.
#[test]
fn an_output_flag_keeps_the_inputs_of_the_environment_and_the_file() {
    let out = Command::new(env!("CARGO_BIN_EXE_tapbus-broker"))
        .args(["--output", "stdout", "--check"])
        .env("TAPBUS_INPUTS__DNS__URL", "tcp://127.0.0.1:6000")
        .output()
        .expect("run broker");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("inputs dns=tcp:127.0.0.1:6000; outputs stdout=stdout"),
        "{text}"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("b.toml");
    std::fs::write(
        &p,
        "[inputs.a]\nurl=\"tcp://127.0.0.1:6001\"\n[outputs.bus]\nurl=\"nats://127.0.0.1:4222\"\n",
    )
    .expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_tapbus-broker"))
        .args([
            "-c",
            p.to_str().expect("utf8"),
            "--input",
            "tcp://127.0.0.1:6002",
        ])
        .args(["--output", "stdout", "--check"])
        .env("TAPBUS_OUTPUTS__LOG__URL", "stdout")
        .output()
        .expect("run broker");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(
            "inputs a=tcp:127.0.0.1:6001 tcp=tcp:127.0.0.1:6002; outputs bus=nats://127.0.0.1:4222 subject=dnstap.{identity}.{operation} log=stdout stdout=stdout"
        ),
        "{text}"
    );
}
