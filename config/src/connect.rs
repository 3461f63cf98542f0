//! How to connect to a bus: the keys every tapbus binary shares, whether it publishes
//! (the broker's outputs, reduce and aggregate publishing back) or subscribes (every
//! consumer's input). What to publish or subscribe is configured beside these keys, by
//! each binary ([`crate::OutputConfig`], [`crate::SubscribeConfig`]).
//!
//! [`ConnectConfig`] is what users write (flattened into an output or input table, so a
//! table reads `url = ...`, `username = ...`, `subject = ...`); [`ConnectConfig::validate`]
//! turns it into a [`BusConnect`], one variant per bus, which cannot be invalid.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{ConfigError, invalid};

/// Connection keys. Which ones apply depends on the URL's scheme; a key that does not
/// apply to it is refused at start-up, naming the key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default)]
pub struct ConnectConfig {
    /// `nats://host:port` (several, comma-separated, for a cluster), `tls://host:port`,
    /// `mqtt://host:1883`, `mqtts://host:8883`, `redis://[user:password@]host:6379[/db]`,
    /// `rediss://...`; subscribers also take `jetstream://` (see docs/bus-urls.md).
    pub url: String,
    /// MQTT and NATS: user name and password.
    pub username: Option<String>,
    pub password: Option<String>,
    /// MQTT (mqtts://) and NATS: PEM CA bundle to verify the server (default: system roots).
    pub tls_ca: Option<PathBuf>,
    /// NATS: authentication token.
    pub token: Option<String>,
    /// NATS: path of a file holding an NKey seed (`SU...`).
    pub nkey_seed: Option<PathBuf>,
    /// NATS: path of a `.creds` file (JWT + NKey seed).
    pub creds: Option<PathBuf>,
    /// NATS: PEM client certificate and its private key (mutual TLS).
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// NATS: refuse to talk without TLS (implied by `tls://` URLs and the TLS keys).
    pub require_tls: Option<bool>,
    /// MQTT: protocol version, "3.1.1" (default) or "5".
    pub mqtt_version: Option<String>,
    /// MQTT: client id (default "<program>-<name>").
    pub client_id: Option<String>,
    /// MQTT: keep-alive interval (default 30s).
    #[serde(with = "humantime_serde")]
    pub keep_alive: Option<Duration>,
    /// MQTT: largest packet, bytes (default 4 MiB; rumqttc's own default of 10 KiB is too
    /// small for DNS events).
    pub max_packet_size: Option<usize>,
}

/// Which bus a URL names, from its scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusKind {
    Nats,
    Mqtt,
    Redis,
}

impl BusKind {
    /// The bus of a URL scheme (`nats`, `tls`, `jetstream`, `mqtt`, `mqtts`, `redis`,
    /// `rediss`), if any.
    pub fn of_scheme(scheme: &str) -> Option<BusKind> {
        match scheme {
            "nats" | "tls" | "jetstream" => Some(BusKind::Nats),
            "mqtt" | "mqtts" => Some(BusKind::Mqtt),
            "redis" | "rediss" => Some(BusKind::Redis),
            _ => None,
        }
    }
}

/// A validated connection.
#[derive(Debug, Clone, PartialEq)]
pub enum BusConnect {
    Nats(NatsConnect),
    Mqtt(MqttConnect),
    Redis(RedisConnect),
}

/// How a NATS connection authenticates (at most one method).
#[derive(Debug, Clone, PartialEq, Default)]
pub enum NatsAuth {
    #[default]
    None,
    UserPassword {
        user: String,
        password: String,
    },
    Token(String),
    /// Path of a file holding the NKey seed.
    NkeySeed(PathBuf),
    /// Path of a `.creds` file.
    Creds(PathBuf),
}

/// A validated NATS connection.
#[derive(Debug, Clone, PartialEq)]
pub struct NatsConnect {
    /// Server URLs, comma-separated (`nats://` or `tls://`).
    pub servers: String,
    pub auth: NatsAuth,
    pub tls_ca: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub require_tls: bool,
}

/// A validated MQTT connection.
#[derive(Debug, Clone, PartialEq)]
pub struct MqttConnect {
    pub host: String,
    pub port: u16,
    pub tls: bool,
    pub tls_ca: Option<PathBuf>,
    /// 3 (3.1.1) or 5.
    pub version: u8,
    pub client_id: String,
    pub keep_alive: Duration,
    pub username: Option<String>,
    pub password: Option<String>,
    pub max_packet_size: usize,
}

/// A validated Redis connection.
#[derive(Debug, Clone, PartialEq)]
pub struct RedisConnect {
    /// The connection URL as given (redis:// or rediss://, credentials and db included).
    pub url: String,
}

/// The scheme of a URL (`nats` of `nats://x`), or the whole text when it has none.
pub fn scheme_of(url: &str) -> &str {
    match url.split_once("://") {
        Some((s, _)) => s,
        None => url,
    }
}

impl ConnectConfig {
    /// Checks the keys against the URL's bus. `key` is the table the keys came from (for
    /// error messages, e.g. `outputs.nats`); `default_client_id` is used for MQTT when
    /// `client_id` is not set. `url` overrides `self.url` (a subscriber's URL shorthand
    /// carries the mode in its path and query; pass the connection part).
    pub fn validate(&self, key: &str, default_client_id: &str) -> Result<BusConnect, ConfigError> {
        self.validate_url(key, self.url.trim(), default_client_id)
    }

    /// [`ConnectConfig::validate`] for the connection URL `url`.
    pub fn validate_url(
        &self,
        key: &str,
        url: &str,
        default_client_id: &str,
    ) -> Result<BusConnect, ConfigError> {
        if url.is_empty() {
            return Err(invalid(format!("{key}.url"), "missing"));
        }
        let scheme = scheme_of(url);
        let Some(kind) = BusKind::of_scheme(scheme) else {
            return Err(invalid(
                format!("{key}.url"),
                format!(
                    "unsupported bus {url:?}: use nats://, tls://, mqtt://, mqtts://, redis:// or rediss://"
                ),
            ));
        };
        self.only_for(key, kind, scheme)?;
        Ok(match kind {
            BusKind::Nats => BusConnect::Nats(self.nats(key, url)?),
            BusKind::Mqtt => BusConnect::Mqtt(self.mqtt(key, url, default_client_id)?),
            BusKind::Redis => BusConnect::Redis(redis(key, url)?),
        })
    }

    /// Refuses keys that the bus of `scheme` does not understand.
    fn only_for(&self, key: &str, kind: BusKind, scheme: &str) -> Result<(), ConfigError> {
        use BusKind::*;
        let checks: [(&str, bool, &[BusKind], &str); 13] = [
            (
                "username",
                self.username.is_some(),
                &[Mqtt, Nats],
                "MQTT and NATS",
            ),
            (
                "password",
                self.password.is_some(),
                &[Mqtt, Nats],
                "MQTT and NATS",
            ),
            (
                "tls_ca",
                self.tls_ca.is_some(),
                &[Mqtt, Nats],
                "mqtts:// and NATS",
            ),
            ("token", self.token.is_some(), &[Nats], "NATS"),
            ("nkey_seed", self.nkey_seed.is_some(), &[Nats], "NATS"),
            ("creds", self.creds.is_some(), &[Nats], "NATS"),
            ("tls_cert", self.tls_cert.is_some(), &[Nats], "NATS"),
            ("tls_key", self.tls_key.is_some(), &[Nats], "NATS"),
            ("require_tls", self.require_tls.is_some(), &[Nats], "NATS"),
            ("mqtt_version", self.mqtt_version.is_some(), &[Mqtt], "MQTT"),
            ("client_id", self.client_id.is_some(), &[Mqtt], "MQTT"),
            ("keep_alive", self.keep_alive.is_some(), &[Mqtt], "MQTT"),
            (
                "max_packet_size",
                self.max_packet_size.is_some(),
                &[Mqtt],
                "MQTT",
            ),
        ];
        for (field, set, kinds, what) in checks {
            if set && !kinds.contains(&kind) {
                return Err(invalid(
                    format!("{key}.{field}"),
                    format!("only applies to {what} buses"),
                ));
            }
        }
        if kind == Mqtt && scheme == "mqtt" && self.tls_ca.is_some() {
            return Err(invalid(
                format!("{key}.tls_ca"),
                "only applies to mqtts:// and NATS buses",
            ));
        }
        Ok(())
    }

    fn nats(&self, key: &str, url: &str) -> Result<NatsConnect, ConfigError> {
        let mut servers = Vec::new();
        let mut url_auth = None;
        for server in url.split(',') {
            let server = server.trim();
            // jetstream:// is a subscriber's shorthand for a NATS connection.
            let server = match server.strip_prefix("jetstream://") {
                Some(rest) => format!("nats://{rest}"),
                None => server.to_string(),
            };
            let parsed = url::Url::parse(&server)
                .map_err(|e| invalid(format!("{key}.url"), format!("{server:?}: {e}")))?;
            if !matches!(parsed.scheme(), "nats" | "tls") {
                return Err(invalid(
                    format!("{key}.url"),
                    format!("{server:?}: every server of the list must be nats:// or tls://"),
                ));
            }
            if parsed.host_str().is_none_or(str::is_empty) || parsed.port().is_none() {
                return Err(invalid(
                    format!("{key}.url"),
                    format!("expected HOST:PORT after the scheme, got {server:?}"),
                ));
            }
            // Credentials in the URL (`nats://USER:PASSWORD@HOST:PORT`, or a token as
            // `nats://TOKEN@HOST:PORT`) are taken out of it: they become the
            // authentication, and the URL that is kept (and logged) has none.
            if let Some(c) = userinfo(&parsed) {
                if url_auth.as_ref().is_some_and(|u| u != &c) {
                    return Err(invalid(
                        format!("{key}.url"),
                        "the servers of the list carry different credentials",
                    ));
                }
                url_auth = Some(c);
            }
            let mut bare = parsed.clone();
            let _ = bare.set_username("");
            let _ = bare.set_password(None);
            servers.push(bare.to_string());
        }
        let mut from_keys = self.clone();
        if let Some((user, password)) = url_auth {
            if let Some(k) = [
                ("username", self.username.is_some()),
                ("password", self.password.is_some()),
                ("token", self.token.is_some()),
                ("nkey_seed", self.nkey_seed.is_some()),
                ("creds", self.creds.is_some()),
            ]
            .iter()
            .find(|(_, set)| *set)
            .map(|(k, _)| *k)
            {
                return Err(invalid(
                    format!("{key}.{k}"),
                    "the URL carries credentials too: give them in one place",
                ));
            }
            match password {
                Some(p) => {
                    from_keys.username = Some(user);
                    from_keys.password = Some(p);
                }
                None => from_keys.token = Some(user),
            }
        }
        let this = &from_keys;
        // At most one authentication method.
        let methods = [
            ("username", this.username.is_some()),
            ("token", this.token.is_some()),
            ("nkey_seed", this.nkey_seed.is_some()),
            ("creds", this.creds.is_some()),
        ];
        let set: Vec<&str> = methods
            .iter()
            .filter(|(_, s)| *s)
            .map(|(f, _)| *f)
            .collect();
        if set.len() > 1 {
            return Err(invalid(
                format!("{key}.{}", set[1]),
                format!(
                    "only one authentication method at a time ({} is set too)",
                    set[0]
                ),
            ));
        }
        let auth = match (&this.username, &this.password) {
            (Some(u), Some(p)) => NatsAuth::UserPassword {
                user: u.clone(),
                password: p.clone(),
            },
            (Some(_), None) => return Err(invalid(format!("{key}.username"), "needs a password")),
            (None, Some(_)) => return Err(invalid(format!("{key}.password"), "needs a username")),
            (None, None) => {
                if let Some(t) = &this.token {
                    if t.is_empty() {
                        return Err(invalid(format!("{key}.token"), "must not be empty"));
                    }
                    NatsAuth::Token(t.clone())
                } else if let Some(p) = need_file(key, "nkey_seed", &this.nkey_seed)? {
                    NatsAuth::NkeySeed(p)
                } else if let Some(p) = need_file(key, "creds", &this.creds)? {
                    NatsAuth::Creds(p)
                } else {
                    NatsAuth::None
                }
            }
        };
        let tls_ca = need_file(key, "tls_ca", &this.tls_ca)?;
        let tls_cert = need_file(key, "tls_cert", &this.tls_cert)?;
        let tls_key = need_file(key, "tls_key", &this.tls_key)?;
        match (&tls_cert, &tls_key) {
            (Some(_), None) => return Err(invalid(format!("{key}.tls_cert"), "needs tls_key")),
            (None, Some(_)) => return Err(invalid(format!("{key}.tls_key"), "needs tls_cert")),
            _ => {}
        }
        let require_tls = this.require_tls.unwrap_or(false)
            || servers.iter().any(|s| s.starts_with("tls://"))
            || tls_ca.is_some()
            || tls_cert.is_some();
        Ok(NatsConnect {
            servers: servers.join(","),
            auth,
            tls_ca,
            tls_cert,
            tls_key,
            require_tls,
        })
    }

    fn mqtt(
        &self,
        key: &str,
        url: &str,
        default_client_id: &str,
    ) -> Result<MqttConnect, ConfigError> {
        let tls = url.starts_with("mqtts://");
        let parsed = url::Url::parse(url)
            .map_err(|e| invalid(format!("{key}.url"), format!("{url:?}: {e}")))?;
        let host = match parsed.host() {
            Some(url::Host::Ipv6(a)) => a.to_string(),
            Some(h) => h.to_string(),
            None => String::new(),
        };
        if host.is_empty() {
            return Err(invalid(format!("{key}.url"), format!("no host in {url:?}")));
        }
        let port = parsed.port().unwrap_or(if tls { 8883 } else { 1883 });
        let version = match self.mqtt_version.as_deref() {
            None | Some("3.1.1") | Some("3") | Some("4") => 3,
            Some("5") | Some("5.0") => 5,
            Some(v) => {
                return Err(invalid(
                    format!("{key}.mqtt_version"),
                    format!("{v:?}: use \"3.1.1\" or \"5\""),
                ));
            }
        };
        let keep_alive = self.keep_alive.unwrap_or(Duration::from_secs(30));
        if keep_alive < Duration::from_secs(1) {
            return Err(invalid(format!("{key}.keep_alive"), "must be at least 1s"));
        }
        let max_packet_size = self.max_packet_size.unwrap_or(4 << 20);
        if !(1024..=(256 << 20)).contains(&max_packet_size) {
            return Err(invalid(
                format!("{key}.max_packet_size"),
                "must be between 1024 and 268435456",
            ));
        }
        let tls_ca = need_file(key, "tls_ca", &self.tls_ca)?;
        let (mut username, mut password) = (self.username.clone(), self.password.clone());
        if let Some((user, pass)) = userinfo(&parsed) {
            if let Some(k) = [
                ("username", username.is_some()),
                ("password", password.is_some()),
            ]
            .iter()
            .find(|(_, set)| *set)
            .map(|(k, _)| *k)
            {
                return Err(invalid(
                    format!("{key}.{k}"),
                    "the URL carries credentials too: give them in one place",
                ));
            }
            (username, password) = (Some(user), pass);
        }
        if password.is_some() && username.is_none() {
            return Err(invalid(format!("{key}.password"), "needs a username"));
        }
        let client_id = self
            .client_id
            .clone()
            .unwrap_or_else(|| default_client_id.to_string());
        if client_id.is_empty() || client_id.len() > 65535 {
            return Err(invalid(
                format!("{key}.client_id"),
                "must be 1 to 65535 bytes",
            ));
        }
        Ok(MqttConnect {
            host,
            port,
            tls,
            tls_ca,
            version,
            client_id,
            keep_alive,
            username,
            password,
            max_packet_size,
        })
    }
}

/// The user and password of a URL's authority, percent-decoded; `None` without a user.
fn userinfo(u: &url::Url) -> Option<(String, Option<String>)> {
    if u.username().is_empty() {
        return None;
    }
    let user = percent_decode(u.username());
    Some((user, u.password().map(percent_decode)))
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| s.to_string())
}

fn redis(key: &str, url: &str) -> Result<RedisConnect, ConfigError> {
    let parsed =
        url::Url::parse(url).map_err(|e| invalid(format!("{key}.url"), format!("{url:?}: {e}")))?;
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(invalid(format!("{key}.url"), format!("no host in {url:?}")));
    }
    let path = parsed.path().trim_start_matches('/');
    if !path.is_empty() && path.parse::<u32>().is_err() {
        return Err(invalid(
            format!("{key}.url"),
            format!("database {path:?} is not a number"),
        ));
    }
    Ok(RedisConnect {
        url: url.to_string(),
    })
}

pub(crate) fn need_file(
    key: &str,
    field: &str,
    p: &Option<PathBuf>,
) -> Result<Option<PathBuf>, ConfigError> {
    match p {
        Some(p) if !p.is_file() => Err(invalid(
            format!("{key}.{field}"),
            format!("{} is not a readable file", p.display()),
        )),
        _ => Ok(p.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(url: &str) -> ConnectConfig {
        ConnectConfig {
            url: url.into(),
            ..Default::default()
        }
    }

    fn err(c: &ConnectConfig) -> String {
        match c.validate("outputs.x", "id") {
            Ok(v) => panic!("accepted: {v:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn ipv6_hosts_and_server_lists() {
        let BusConnect::Mqtt(m) = cfg("mqtt://[::1]:1884").validate("k", "id").expect("ok") else {
            panic!("not mqtt")
        };
        assert_eq!((m.host.as_str(), m.port), ("::1", 1884));
        let BusConnect::Nats(n) = cfg("nats://[::1]:4222, nats://127.0.0.1:4223")
            .validate("k", "id")
            .expect("ok")
        else {
            panic!("not nats")
        };
        assert_eq!(n.servers, "nats://[::1]:4222,nats://127.0.0.1:4223");
        let BusConnect::Nats(j) = cfg("jetstream://127.0.0.1:4222")
            .validate("k", "id")
            .expect("ok")
        else {
            panic!("not nats")
        };
        assert_eq!(j.servers, "nats://127.0.0.1:4222");
        assert!(err(&cfg("nats://127.0.0.1")).contains("outputs.x.url: expected HOST:PORT"));
        assert!(err(&cfg("nats://a:1,mqtt://b:2")).contains("must be nats:// or tls://"));
    }

    #[test]
    fn keys_of_another_bus_are_refused_by_name() {
        let mut c = cfg("redis://127.0.0.1:6379");
        c.token = Some("t".into());
        assert_eq!(err(&c), "outputs.x.token: only applies to NATS buses");
        let mut c = cfg("mqtt://127.0.0.1");
        c.tls_ca = Some("/etc/hostname".into());
        assert!(err(&c).starts_with("outputs.x.tls_ca: only applies to mqtts://"));
        let mut c = cfg("nats://127.0.0.1:4222");
        c.keep_alive = Some(Duration::from_secs(5));
        assert_eq!(err(&c), "outputs.x.keep_alive: only applies to MQTT buses");
        assert!(err(&cfg("kafka://x:1")).contains("unsupported bus"));
        assert_eq!(err(&cfg("")), "outputs.x.url: missing");
    }

    #[test]
    fn redis_database_must_be_a_number() {
        assert!(cfg("redis://127.0.0.1:6379/2").validate("k", "id").is_ok());
        assert!(err(&cfg("redis://127.0.0.1:6379/x")).contains("database \"x\""));
    }
}
