//! The sinks every consumer shares: a bus publish settled by the bus's own confirmation
//! ([`BusSink`]), and the HTTP push policy ([`http`]) under tapbus-loki's and
//! tapbus-mimir's sinks.

use std::sync::Arc;

use bytes::Bytes;
use tapbus_bus::metrics::PublishMetrics;
use tapbus_bus::publish::settle::Settlement;
use tapbus_bus::publish::{self, Message};
use tapbus_config::OutputSpec;
use tokio::sync::mpsc;

use crate::stage::{Attempt, Sink};

/// One message a consumer publishes back to the bus.
#[derive(Debug, Clone)]
pub struct Record {
    /// The exact subject (or topic).
    pub subject: Arc<str>,
    pub payload: Bytes,
    /// JetStream `Nats-Msg-Id` (a stream drops a copy it has seen).
    pub id: Option<Arc<str>>,
}

/// Publishes a batch of [`Record`]s on an output like the broker's; the batch is written
/// once the bus confirmed every record (`bus::publish::settle`). Records of a batch that
/// was not confirmed in full are all sent again (with their ids, so a JetStream stream
/// keeps one copy).
#[derive(Debug)]
pub struct BusSink {
    tx: mpsc::Sender<Message>,
    task: tokio::task::JoinHandle<()>,
}

impl BusSink {
    /// Starts the output's publisher task.
    pub fn start(output: OutputSpec) -> Self {
        let (tx, rx) = mpsc::channel(4096);
        let task = publish::spawn(
            output.name.clone(),
            output.kind,
            rx,
            PublishMetrics::unregistered(),
        );
        BusSink { tx, task }
    }
}

impl Sink<Vec<Record>> for BusSink {
    async fn send(&mut self, batch: &Vec<Record>) -> Attempt {
        let mut settlement = Settlement::new();
        for r in batch {
            let msg = Message::record(
                r.subject.clone(),
                r.payload.clone(),
                r.id.clone(),
                Some(settlement.ticket()),
            );
            if self.tx.send(msg).await.is_err() {
                return Attempt::Retry {
                    after: None,
                    why: "the output task has stopped".into(),
                };
            }
        }
        let got = settlement.settled().await;
        if got.all_published() {
            Attempt::Done
        } else {
            Attempt::Retry {
                after: None,
                why: format!(
                    "{} of {} not confirmed by the bus",
                    got.dropped,
                    batch.len()
                ),
            }
        }
    }

    async fn close(self) {
        drop(self.tx);
        let _ = self.task.await;
    }
}

/// The one HTTP push policy: what is retried (429, 5xx, no answer), after how long
/// (`Retry-After`, else the runtime's backoff), and how long a server may ask to wait.
pub mod http {
    use std::time::Duration;

    use crate::stage::Attempt;

    /// Where an HTTP sink pushes, and as whom: the URL, the tenant (`X-Scope-OrgID`) and
    /// basic or bearer authentication. The same keys in tapbus-loki and tapbus-mimir.
    #[derive(Debug, Clone)]
    pub struct Target {
        pub url: reqwest::Url,
        pub tenant: String,
        pub username: String,
        pub password: String,
        pub bearer_token: String,
    }

    impl Target {
        /// Checks the `url`, `username`/`password` and `bearer_token` keys; the error
        /// names the key (`example`: a URL to show when `url` is missing).
        pub fn new(
            url: &str,
            tenant: &str,
            username: &str,
            password: &str,
            bearer_token: &str,
            example: &str,
        ) -> Result<Target, (&'static str, String)> {
            if url.is_empty() {
                return Err(("url", format!("missing: give --url {example}")));
            }
            let parsed = reqwest::Url::parse(url)
                .ok()
                .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
                .ok_or_else(|| ("url", format!("{url:?} is not an http(s) URL")))?;
            if !bearer_token.is_empty() && !username.is_empty() {
                return Err((
                    "bearer_token",
                    "only one of bearer_token and username/password".into(),
                ));
            }
            if username.is_empty() != password.is_empty() {
                return Err(("username", "username and password go together".into()));
            }
            Ok(Target {
                url: parsed,
                tenant: tenant.into(),
                username: username.into(),
                password: password.into(),
                bearer_token: bearer_token.into(),
            })
        }

        /// A POST to the target with its tenant and authentication.
        pub fn post(&self, client: &reqwest::Client) -> reqwest::RequestBuilder {
            let mut req = client.post(self.url.clone());
            if !self.tenant.is_empty() {
                req = req.header("X-Scope-OrgID", &self.tenant);
            }
            if !self.bearer_token.is_empty() {
                req = req.bearer_auth(&self.bearer_token);
            } else if !self.username.is_empty() {
                req = req.basic_auth(&self.username, Some(&self.password));
            }
            req
        }
    }

    /// The longest `Retry-After` honoured.
    pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

    /// What to do with an answer the sink did not classify itself: `Some(retry)` for
    /// 429 and 5xx (with the server's `Retry-After`), `None` for every other status (the
    /// sink decides: written, or dropped by reason).
    pub fn retry_of(status: u16, retry_after: Option<&str>) -> Option<Attempt> {
        if status == 429 || (500..600).contains(&status) {
            Some(Attempt::Retry {
                after: retry_after
                    .and_then(parse_retry_after)
                    .map(|d| d.min(MAX_RETRY_AFTER)),
                why: format!("HTTP {status}"),
            })
        } else {
            None
        }
    }

    /// No answer (connect error, timeout, reset): retried.
    pub fn no_answer(e: &reqwest::Error) -> Attempt {
        Attempt::Retry {
            after: None,
            why: if e.is_timeout() {
                "no answer within the timeout".into()
            } else {
                format!("{e:#}")
            },
        }
    }

    /// `Retry-After` as seconds or an HTTP date.
    pub fn parse_retry_after(v: &str) -> Option<Duration> {
        let v = v.trim();
        if let Ok(s) = v.parse::<u64>() {
            return Some(Duration::from_secs(s));
        }
        let t = httpdate::parse_http_date(v).ok()?;
        Some(
            t.duration_since(std::time::SystemTime::now())
                .unwrap_or(Duration::ZERO),
        )
    }

    /// Sends a request and classifies the answer: 429/5xx/no answer retried; every other
    /// status (2xx included: a body may still say the write was refused) handed to
    /// `classify(status, body)`.
    pub async fn push(
        req: reqwest::RequestBuilder,
        classify: impl FnOnce(u16, &str) -> Attempt,
    ) -> (Option<u16>, Attempt) {
        match req.send().await {
            Err(e) => (None, no_answer(&e)),
            Ok(r) => {
                let status = r.status().as_u16();
                let retry_after = r
                    .headers()
                    .get("Retry-After")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                let body = r.text().await.unwrap_or_default();
                match retry_of(status, retry_after.as_deref()) {
                    Some(mut a) => {
                        if let Attempt::Retry { why, .. } = &mut a {
                            let b = body.trim();
                            if !b.is_empty() {
                                why.push_str(": ");
                                why.push_str(&b.chars().take(200).collect::<String>());
                            }
                        }
                        (Some(status), a)
                    }
                    None => (Some(status), classify(status, &body)),
                }
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn targets_are_checked_key_by_key() {
            let t = |u: &str, user: &str, pass: &str, bearer: &str| {
                Target::new(u, "", user, pass, bearer, "http://x/push").map(|_| ())
            };
            assert!(t("http://127.0.0.1:3100/loki/api/v1/push", "", "", "").is_ok());
            assert_eq!(t("", "", "", "").map_err(|e| e.0), Err("url"));
            assert_eq!(t("ftp://x/", "", "", "").map_err(|e| e.0), Err("url"));
            assert_eq!(
                t("http://x/", "a", "b", "c").map_err(|e| e.0),
                Err("bearer_token")
            );
            assert_eq!(
                t("http://x/", "a", "", "").map_err(|e| e.0),
                Err("username")
            );
        }

        #[test]
        fn retry_classes() {
            assert!(matches!(
                retry_of(429, Some("7")),
                Some(Attempt::Retry { after: Some(d), .. }) if d == Duration::from_secs(7)
            ));
            assert!(matches!(
                retry_of(503, Some("99999")),
                Some(Attempt::Retry { after: Some(d), .. }) if d == MAX_RETRY_AFTER
            ));
            assert!(matches!(
                retry_of(500, None),
                Some(Attempt::Retry { after: None, .. })
            ));
            for s in [200, 204, 400, 401, 404, 413] {
                assert_eq!(retry_of(s, Some("1")), None, "{s}");
            }
            assert_eq!(parse_retry_after("x"), None);
            assert_eq!(
                parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
                Some(Duration::ZERO)
            );
        }
    }
}
