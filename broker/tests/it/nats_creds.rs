//! NATS decentralized (JWT) authentication: a `.creds` file against a nats-server in
//! operator mode (Debian 2.9.10, MEMORY resolver) on a free port. The operator, account and
//! user JWTs are made here with `nkeys` (no `nsc` needed): a trusted user delivers every
//! event; a user the server cannot trace to its operator is refused, and the output stays
//! down with the reason in the log while the broker keeps running.

use std::path::{Path, PathBuf};
use std::time::Duration;

use data_encoding::{BASE32_NOPAD, BASE64URL_NOPAD};
use futures::StreamExt;
use nkeys::KeyPair;
use serde_json::json;

use crate::harness::*;

/// The output name, so log lines and metrics are known to be about this output.
const OUTPUT: &str = "nats_jwt";

/// A NATS v2 JWT: base64url(header) "." base64url(claims) "." base64url(ed25519 signature
/// of the first two parts by the issuer). `jti` is derived from the other claims (like
/// the Go library's hash, but from a deterministic signature instead of SHA-512/256).
fn encode_jwt(issuer: &KeyPair, subject: &str, name: &str, nats: serde_json::Value) -> String {
    let header = json!({"typ": "JWT", "alg": "ed25519-nkey"});
    let mut claims = json!({
        "iat": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_secs(),
        "iss": issuer.public_key(),
        "name": name,
        "sub": subject,
        "nats": nats,
    });
    let id = issuer
        .sign(claims.to_string().as_bytes())
        .expect("sign claims");
    claims["jti"] = json!(BASE32_NOPAD.encode(&id[..32]));
    let signed = format!(
        "{}.{}",
        BASE64URL_NOPAD.encode(header.to_string().as_bytes()),
        BASE64URL_NOPAD.encode(claims.to_string().as_bytes())
    );
    let sig = issuer.sign(signed.as_bytes()).expect("sign jwt");
    format!("{signed}.{}", BASE64URL_NOPAD.encode(&sig))
}

fn operator_jwt(op: &KeyPair) -> String {
    encode_jwt(
        op,
        &op.public_key(),
        "tapbus-test-operator",
        json!({"type": "operator", "version": 2}),
    )
}

fn account_jwt(op: &KeyPair, acc: &KeyPair) -> String {
    encode_jwt(
        op,
        &acc.public_key(),
        "tapbus-test-account",
        json!({
            "type": "account",
            "version": 2,
            "limits": {
                "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
                "wildcards": true, "conn": -1, "leaf": -1
            },
            "default_permissions": {"pub": {}, "sub": {}}
        }),
    )
}

/// A `.creds` file body for a new user issued by `acc`.
fn user_creds(acc: &KeyPair, name: &str) -> String {
    let user = KeyPair::new_user();
    creds(
        &user_jwt(acc, &user, name),
        &user.seed().expect("user seed"),
    )
}

fn user_jwt(acc: &KeyPair, user: &KeyPair, name: &str) -> String {
    encode_jwt(
        acc,
        &user.public_key(),
        name,
        json!({
            "type": "user", "version": 2,
            "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1
        }),
    )
}

fn creds(jwt: &str, seed: &str) -> String {
    format!(
        "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
         ************************* IMPORTANT *************************\n\
         NKEY Seed printed below can be used to sign and prove identity.\n\
         NKEYs are sensitive and should be treated as secrets.\n\n\
         -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n\n\
         *************************************************************\n"
    )
}

/// An operator-mode nats-server trusting one operator and one account.
struct Trusted {
    nats: Nats,
    account: KeyPair,
}

fn start_trusted(dir: &Path) -> Trusted {
    let op = KeyPair::new_operator();
    let account = KeyPair::new_account();
    let op_file = dir.join("operator.jwt");
    std::fs::write(&op_file, operator_jwt(&op)).expect("write operator.jwt");
    let conf = dir.join("server.conf");
    std::fs::write(
        &conf,
        format!(
            "operator: \"{}\"\nresolver: MEMORY\nresolver_preload: {{\n  {}: \"{}\"\n}}\n",
            op_file.display(),
            account.public_key(),
            account_jwt(&op, &account)
        ),
    )
    .expect("write server.conf");
    let nats = Nats::start_with(&["-c", conf.to_str().expect("utf-8 path")]);
    Trusted { nats, account }
}

fn write_creds(dir: &Path, file: &str, body: &str) -> PathBuf {
    let p = dir.join(file);
    std::fs::write(&p, body).expect("write creds");
    p
}

fn start_broker(dir: &Path, url: &str, creds: &Path) -> Broker {
    let sock = dir.join("dnstap.sock");
    let cfg = write_broker_config(
        dir,
        &sock,
        OUTPUT,
        &format!("url = \"{url}\"\ncreds = \"{}\"\n", creds.display()),
    );
    Broker::start(&["-c", cfg.to_str().expect("utf-8 path")])
}

async fn subscribe(creds: &str, url: &str) -> (async_nats::Client, async_nats::Subscriber) {
    let opts = async_nats::ConnectOptions::with_credentials(creds).expect("subscriber creds");
    crate::nats_js::subscribe(opts, url).await
}

fn up(broker: &Broker) -> f64 {
    broker.metric("tapbus_output_up", &[&format!("output=\"{OUTPUT}\"")])
}

/// A user of the trusted account: the broker connects with its `.creds` file, and every
/// event of a capture arrives, in order, on its subject, equal to the in-process decode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creds_of_a_trusted_user_deliver_every_event() {
    let dir = tempfile::tempdir().expect("tempdir");
    let t = start_trusted(dir.path());
    let creds = write_creds(
        dir.path(),
        "tapbus.creds",
        &user_creds(&t.account, "tapbus-broker"),
    );
    let broker = start_broker(dir.path(), t.nats.url(), &creds);
    broker.wait_metric("tapbus_output_up", &[&format!("output=\"{OUTPUT}\"")], 1.0);
    // The subscriber is a second user of the same account.
    let (_c, mut sub) = subscribe(&user_creds(&t.account, "subscriber"), t.nats.url()).await;

    let name = "bind-auth.fstrm";
    let file = capture(name);
    let reference = reference_events(&file);
    assert_eq!(reference.len(), expected_count(name));
    replay_unix(&file, &dir.path().join("dnstap.sock")).await;
    let mut got = Vec::with_capacity(reference.len());
    while got.len() < reference.len() {
        match tokio::time::timeout(Duration::from_secs(10), sub.next()).await {
            Ok(Some(m)) => got.push(m),
            _ => break,
        }
    }
    assert_eq!(got.len(), reference.len(), "events delivered");
    let schema = validator();
    for (i, (m, want)) in got.iter().zip(&reference).enumerate() {
        let ev: serde_json::Value = serde_json::from_slice(&m.payload).expect("JSON event");
        assert_valid(&schema, &ev);
        assert_eq!(key(&ev), key(want), "message {i} differs");
        assert_eq!(
            m.subject.as_str(),
            expected_subject(&ev),
            "message {i} subject"
        );
    }
    assert_eq!(
        broker.metric("tapbus_published_total", &[&format!("output=\"{OUTPUT}\"")]),
        reference.len() as f64
    );
    assert_eq!(broker.metric("tapbus_dropped_total", &[]), 0.0);
}

/// Untrusted `.creds`: a user of an account the server does not know, and a trusted
/// user's JWT with another key's seed. Each time
/// the server refuses the connection: the broker keeps running and retrying, the output
/// stays down, the log names the output and the authorization violation, and nothing
/// reaches a trusted subscriber.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_creds_are_refused_and_logged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let t = start_trusted(dir.path());
    let (_c, mut sub) = subscribe(&user_creds(&t.account, "subscriber"), t.nats.url()).await;

    // Issued by an account the server has no JWT for (so no path to its operator).
    let unknown_account = user_creds(&KeyPair::new_account(), "stranger");
    // A JWT of the trusted account, but the seed of another key: the nonce signature fails.
    let wrong_seed = creds(
        &user_jwt(&t.account, &KeyPair::new_user(), "impostor"),
        &KeyPair::new_user().seed().expect("seed"),
    );

    for (case, body) in [
        ("unknown account", unknown_account),
        ("wrong seed", wrong_seed),
    ] {
        let bdir = tempfile::tempdir().expect("tempdir");
        let creds = write_creds(bdir.path(), "bad.creds", &body);
        let mut broker = start_broker(bdir.path(), t.nats.url(), &creds);
        broker.wait_log(
            &format!("{case}: an authorization error for {OUTPUT}"),
            |log| {
                log.lines().any(|l| {
                    l.contains(OUTPUT) && l.to_lowercase().contains("authorization violation")
                })
            },
        );

        let name = "bind-auth.fstrm";
        let n = expected_count(name) as f64;
        replay_unix(&capture(name), &bdir.path().join("dnstap.sock")).await;
        broker.wait_metric("tapbus_events_total", &[], n);
        // Still refused after a few reconnect attempts.
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(up(&broker), 0.0, "{case}: output up\n{}", broker.metrics());
        assert!(
            !broker.log_text().contains("NATS connected"),
            "{case}: connected:\n{}",
            broker.log_text()
        );
        assert!(
            tokio::time::timeout(Duration::from_millis(500), sub.next())
                .await
                .is_err(),
            "{case}: an event was delivered"
        );
        assert!(broker.is_running(), "{case}: broker exited");
    }
}
