//! Configuration for every tapbus binary: a TOML file, then `TAPBUS_*` environment
//! variables (figment, nested keys split on `__`), validated at start-up into typed
//! settings. Every error names the key that is wrong.
//!
//! Two stages, as in ripgrep: the serde structs ([`BrokerConfig`]) are what users write
//! (their doc comments are the reference in README.md); [`BrokerConfig::validate`] turns
//! them into [`BrokerSettings`], which the broker runs from and which cannot be invalid.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};
use tapbus_proto::subject::{Flavor, Template};

/// A configuration that cannot be run. The message always names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {0} does not exist")]
    MissingFile(PathBuf),
    #[error("{0}")]
    Parse(#[from] Box<figment::Error>),
    #[error("{key}: {msg}")]
    Invalid { key: String, msg: String },
}

fn invalid(key: impl Into<String>, msg: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        msg: msg.into(),
    }
}

/// The broker's configuration file (`config/broker.toml` is a documented example).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    /// Where dnstap comes from, by name (the name labels metrics and logs).
    pub inputs: BTreeMap<String, InputConfig>,
    /// Where events go, by name. Every event goes to every output.
    pub outputs: BTreeMap<String, OutputConfig>,
    /// Largest accepted data frame in bytes; a larger one is skipped and counted, and the
    /// connection goes on.
    pub max_frame_size: usize,
    /// Most concurrent dnstap connections; more are accepted, logged and closed at once.
    pub max_connections: usize,
    /// How long a new connection may take to complete the Frame Streams handshake.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// The HTTP endpoint for `/metrics` (Prometheus text) and `/health`; empty disables it.
    pub metrics_listen: String,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            inputs: BTreeMap::new(),
            outputs: BTreeMap::new(),
            max_frame_size: 1024 * 1024,
            max_connections: 1024,
            handshake_timeout: Duration::from_secs(10),
            metrics_listen: "127.0.0.1:9634".into(),
        }
    }
}

/// One dnstap input.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct InputConfig {
    /// `unix:///path`, `tcp://host:port`, `tls://host:port`, `dial+tcp://host:port`,
    /// `dial+unix:///path` or `file:///path`.
    pub url: String,
    /// unix: permission bits of the socket file, octal (default "0660").
    pub socket_mode: Option<String>,
    /// unix: group owning the socket file, by name or number (e.g. "bind", "unbound").
    pub socket_group: Option<String>,
    /// tls: PEM certificate chain.
    pub tls_cert: Option<PathBuf>,
    /// tls: PEM private key.
    pub tls_key: Option<PathBuf>,
    /// tls: PEM CA bundle; when set, clients must present a certificate it signed (mTLS).
    pub tls_client_ca: Option<PathBuf>,
    /// dial: first reconnect delay (default 100ms), doubled up to `reconnect_max`.
    #[serde(with = "humantime_serde")]
    pub reconnect_min: Option<Duration>,
    /// dial: longest reconnect delay (default 10s).
    #[serde(with = "humantime_serde")]
    pub reconnect_max: Option<Duration>,
}

/// One output.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct OutputConfig {
    /// `nats://host:port` (several, comma-separated, for a cluster), `mqtt://host:1883`,
    /// `mqtts://host:8883`, `redis://[user:password@]host:6379[/db]`, `rediss://...` or
    /// `stdout`.
    pub url: String,
    /// Subject template (NATS) or channel template (Redis `publish` mode); placeholders
    /// {identity} {operation} {qtype} {rcode} {protocol}.
    pub subject: Option<String>,
    /// MQTT: topic template (default "dnstap/{identity}/{operation}").
    pub topic: Option<String>,
    /// MQTT: QoS 0 (default) or 1.
    pub qos: Option<u8>,
    /// MQTT: protocol version, "3.1.1" (default) or "5".
    pub mqtt_version: Option<String>,
    /// MQTT: client id (default "tapbus-broker-<output name>").
    pub client_id: Option<String>,
    /// MQTT: keep-alive interval (default 30s).
    #[serde(with = "humantime_serde")]
    pub keep_alive: Option<Duration>,
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
    /// NATS: publish through JetStream (acknowledged, stored in `stream`), default false.
    pub jetstream: Option<bool>,
    /// NATS JetStream: stream name (default "DNSTAP"), created if missing.
    pub stream: Option<String>,
    /// NATS JetStream: subjects the stream stores (default ["dnstap.>"]).
    pub stream_subjects: Option<Vec<String>>,
    /// NATS JetStream: stream limits when it is created (default: unlimited).
    pub stream_max_bytes: Option<i64>,
    #[serde(with = "humantime_serde")]
    pub stream_max_age: Option<Duration>,
    pub stream_max_msgs: Option<i64>,
    /// NATS JetStream: most publishes awaiting their ack at once (default 1024).
    pub ack_window: Option<usize>,
    /// MQTT: largest packet, bytes (default 4 MiB; rumqttc's own default of 10 KiB is too
    /// small for DNS events).
    pub max_packet_size: Option<usize>,
    /// Redis: "publish" (default; PUBLISH to the channel template), "list" (RPUSH to `key`,
    /// capped at `max_len`) or "stream" (XADD to `key` with MAXLEN ~ `max_len`, field `data`).
    pub mode: Option<String>,
    /// Redis list/stream: key (default "dnstap").
    pub key: Option<String>,
    /// Redis list/stream: length cap (default 100000).
    pub max_len: Option<usize>,
    /// Events this output may hold while it is slow or down; beyond it, events are dropped
    /// and counted (default 16384).
    pub queue: Option<usize>,
}

/// Validated input.
#[derive(Debug, Clone, PartialEq)]
pub enum InputSpec {
    Unix {
        path: PathBuf,
        mode: u32,
        group: Option<String>,
    },
    Tcp {
        addr: String,
    },
    Tls {
        addr: String,
        cert: PathBuf,
        key: PathBuf,
        client_ca: Option<PathBuf>,
    },
    DialTcp {
        addr: String,
        backoff: Backoff,
    },
    DialUnix {
        path: PathBuf,
        backoff: Backoff,
    },
    File {
        path: PathBuf,
    },
}

/// Reconnect delays for dial-out inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub min: Duration,
    pub max: Duration,
}

/// Validated output.
#[derive(Debug, Clone, PartialEq)]
pub enum OutputKind {
    Nats(NatsSpec),
    Mqtt(MqttSpec),
    Redis(RedisSpec),
    Stdout,
}

/// How the NATS output authenticates (at most one).
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

/// Validated JetStream settings.
#[derive(Debug, Clone, PartialEq)]
pub struct JetStreamSpec {
    pub stream: String,
    pub subjects: Vec<String>,
    pub max_bytes: Option<i64>,
    pub max_age: Option<Duration>,
    pub max_msgs: Option<i64>,
    pub ack_window: usize,
}

/// Validated NATS output.
#[derive(Debug, Clone, PartialEq)]
pub struct NatsSpec {
    /// Server URLs, comma-separated.
    pub servers: String,
    pub subject: Template,
    pub auth: NatsAuth,
    pub tls_ca: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub require_tls: bool,
    /// `Some` to publish through JetStream.
    pub jetstream: Option<JetStreamSpec>,
}

/// Validated MQTT output.
#[derive(Debug, Clone, PartialEq)]
pub struct MqttSpec {
    pub host: String,
    pub port: u16,
    pub tls: bool,
    pub tls_ca: Option<PathBuf>,
    pub topic: Template,
    /// 0 or 1.
    pub qos: u8,
    /// 3 (3.1.1) or 5.
    pub version: u8,
    pub client_id: String,
    pub keep_alive: Duration,
    pub username: Option<String>,
    pub password: Option<String>,
    pub max_packet_size: usize,
}

/// Redis delivery mode.
#[derive(Debug, Clone, PartialEq)]
pub enum RedisMode {
    /// PUBLISH to a channel rendered from the template.
    Publish(Template),
    /// RPUSH to `key`, then LTRIM to the newest `max_len`.
    List { key: String, max_len: usize },
    /// XADD `key` MAXLEN ~ `max_len` * data <json>.
    Stream { key: String, max_len: usize },
}

/// Validated Redis output.
#[derive(Debug, Clone, PartialEq)]
pub struct RedisSpec {
    /// The connection URL as given (redis:// or rediss://, credentials and db included).
    pub url: String,
    pub mode: RedisMode,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Named<T> {
    pub name: String,
    pub spec: T,
}

#[derive(Debug, Clone, PartialEq)]
pub struct OutputSpec {
    pub name: String,
    pub kind: OutputKind,
    pub queue: usize,
}

/// What the broker runs from: every value checked.
#[derive(Debug, Clone, PartialEq)]
pub struct BrokerSettings {
    pub inputs: Vec<Named<InputSpec>>,
    pub outputs: Vec<OutputSpec>,
    pub max_frame_size: usize,
    pub max_connections: usize,
    pub handshake_timeout: Duration,
    pub metrics_listen: Option<SocketAddr>,
}

/// Environment variable prefix: `TAPBUS_MAX_FRAME_SIZE`, `TAPBUS_OUTPUTS__NATS__URL`, ...
pub const ENV_PREFIX: &str = "TAPBUS_";

/// Loads defaults, then the TOML file (which must exist when given), then `TAPBUS_*`.
pub fn load<T>(file: Option<&Path>, defaults: T) -> Result<T, ConfigError>
where
    T: Serialize + for<'de> Deserialize<'de>,
{
    let mut fig = Figment::from(Serialized::defaults(defaults));
    if let Some(f) = file {
        if !f.is_file() {
            return Err(ConfigError::MissingFile(f.to_path_buf()));
        }
        fig = fig.merge(Toml::file_exact(f));
    }
    // TAPBUS_CONFIG and TAPBUS_LOG are read by the binaries themselves, not config keys.
    fig = fig.merge(
        Env::prefixed(ENV_PREFIX)
            .ignore(&["config", "log", "log_format"])
            .split("__"),
    );
    fig.extract().map_err(|e| ConfigError::Parse(Box::new(e)))
}

impl BrokerConfig {
    /// Adds an input given on the command line (`--input URL`), named after its scheme.
    pub fn add_input_url(&mut self, url: &str) {
        let name = unique_name(&self.inputs, scheme_of(url));
        self.inputs.insert(
            name,
            InputConfig {
                url: url.to_string(),
                ..Default::default()
            },
        );
    }

    /// Adds an output given on the command line (`--output URL`).
    pub fn add_output_url(&mut self, url: &str) {
        let name = unique_name(&self.outputs, scheme_of(url));
        self.outputs.insert(
            name,
            OutputConfig {
                url: url.to_string(),
                ..Default::default()
            },
        );
    }

    /// Checks everything and produces the settings the broker runs from.
    pub fn validate(&self) -> Result<BrokerSettings, ConfigError> {
        if self.inputs.is_empty() {
            return Err(invalid(
                "inputs",
                "no input: give --input URL or an [inputs.NAME] table with a url",
            ));
        }
        if self.outputs.is_empty() {
            return Err(invalid(
                "outputs",
                "no output: give --output URL or an [outputs.NAME] table with a url",
            ));
        }
        if !(512..=(256 << 20)).contains(&self.max_frame_size) {
            return Err(invalid(
                "max_frame_size",
                "must be between 512 and 268435456 bytes",
            ));
        }
        if self.max_connections == 0 {
            return Err(invalid("max_connections", "must be at least 1"));
        }
        if self.handshake_timeout.is_zero() {
            return Err(invalid("handshake_timeout", "must be more than 0"));
        }
        let metrics_listen = if self.metrics_listen.is_empty() {
            None
        } else {
            Some(self.metrics_listen.parse().map_err(|e| {
                invalid(
                    "metrics_listen",
                    format!(
                        "{e}: expected ADDRESS:PORT such as 127.0.0.1:9634, or \"\" to disable"
                    ),
                )
            })?)
        };
        let inputs = self
            .inputs
            .iter()
            .map(|(name, i)| {
                Ok(Named {
                    name: name.clone(),
                    spec: validate_input(&format!("inputs.{name}"), i)?,
                })
            })
            .collect::<Result<Vec<_>, ConfigError>>()?;
        let outputs = self
            .outputs
            .iter()
            .map(|(name, o)| validate_output(name, o))
            .collect::<Result<Vec<_>, ConfigError>>()?;
        Ok(BrokerSettings {
            inputs,
            outputs,
            max_frame_size: self.max_frame_size,
            max_connections: self.max_connections,
            handshake_timeout: self.handshake_timeout,
            metrics_listen,
        })
    }
}

fn scheme_of(url: &str) -> &str {
    match url.split_once("://") {
        Some((s, _)) => s,
        None => url,
    }
}

fn unique_name<V>(map: &BTreeMap<String, V>, base: &str) -> String {
    let base: String = base
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if !map.contains_key(&base) {
        return base;
    }
    (2..)
        .map(|i| format!("{base}{i}"))
        .find(|n| !map.contains_key(n))
        .unwrap_or(base)
}

fn need_path(key: &str, field: &str, p: &Option<PathBuf>) -> Result<PathBuf, ConfigError> {
    let p = p
        .clone()
        .ok_or_else(|| invalid(format!("{key}.{field}"), "required for tls:// inputs"))?;
    if !p.is_file() {
        return Err(invalid(
            format!("{key}.{field}"),
            format!("{} is not a readable file", p.display()),
        ));
    }
    Ok(p)
}

fn host_port(key: &str, rest: &str) -> Result<String, ConfigError> {
    let rest = rest.trim_end_matches('/');
    match rest.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && p.parse::<u16>().is_ok() => Ok(rest.to_string()),
        _ => Err(invalid(
            format!("{key}.url"),
            format!("expected HOST:PORT after the scheme, got {rest:?}"),
        )),
    }
}

fn abs_path(key: &str, rest: &str) -> Result<PathBuf, ConfigError> {
    if rest.starts_with('/') {
        Ok(PathBuf::from(rest))
    } else {
        Err(invalid(
            format!("{key}.url"),
            format!(
                "expected an absolute path after the scheme (unix:///run/x.sock), got {rest:?}"
            ),
        ))
    }
}

fn validate_input(key: &str, i: &InputConfig) -> Result<InputSpec, ConfigError> {
    let url = i.url.trim();
    if url.is_empty() {
        return Err(invalid(format!("{key}.url"), "missing"));
    }
    let (scheme, rest) = url.split_once("://").ok_or_else(|| {
        invalid(
            format!("{key}.url"),
            format!("{url:?} is not a URL: use unix://, tcp://, tls://, dial+tcp://, dial+unix:// or file://"),
        )
    })?;
    let backoff = || -> Result<Backoff, ConfigError> {
        let b = Backoff {
            min: i.reconnect_min.unwrap_or(Duration::from_millis(100)),
            max: i.reconnect_max.unwrap_or(Duration::from_secs(10)),
        };
        if b.min.is_zero() || b.max < b.min {
            return Err(invalid(
                format!("{key}.reconnect_max"),
                "reconnect_min must be > 0 and reconnect_max >= reconnect_min",
            ));
        }
        Ok(b)
    };
    let spec = match scheme {
        "unix" => {
            let mode = match &i.socket_mode {
                None => 0o660,
                Some(m) => u32::from_str_radix(m.trim_start_matches("0o"), 8)
                    .ok()
                    .filter(|m| *m <= 0o777)
                    .ok_or_else(|| {
                        invalid(
                            format!("{key}.socket_mode"),
                            format!("{m:?} is not an octal mode such as \"0660\""),
                        )
                    })?,
            };
            InputSpec::Unix {
                path: abs_path(key, rest)?,
                mode,
                group: i.socket_group.clone(),
            }
        }
        "tcp" => InputSpec::Tcp {
            addr: host_port(key, rest)?,
        },
        "tls" => InputSpec::Tls {
            addr: host_port(key, rest)?,
            cert: need_path(key, "tls_cert", &i.tls_cert)?,
            key: need_path(key, "tls_key", &i.tls_key)?,
            client_ca: match &i.tls_client_ca {
                None => None,
                some => Some(need_path(key, "tls_client_ca", some)?),
            },
        },
        "dial+tcp" => InputSpec::DialTcp {
            addr: host_port(key, rest)?,
            backoff: backoff()?,
        },
        "dial+unix" => InputSpec::DialUnix {
            path: abs_path(key, rest)?,
            backoff: backoff()?,
        },
        "file" => InputSpec::File {
            path: abs_path(key, rest)?,
        },
        other => {
            return Err(invalid(
                format!("{key}.url"),
                format!(
                    "unsupported scheme {other:?}: use unix, tcp, tls, dial+tcp, dial+unix or file"
                ),
            ));
        }
    };
    let tls_only = [
        ("tls_cert", i.tls_cert.is_some()),
        ("tls_key", i.tls_key.is_some()),
        ("tls_client_ca", i.tls_client_ca.is_some()),
    ];
    if let Some((f, _)) = tls_only.iter().find(|(_, set)| *set)
        && !matches!(spec, InputSpec::Tls { .. })
    {
        return Err(invalid(
            format!("{key}.{f}"),
            "only applies to tls:// inputs",
        ));
    }
    if !matches!(spec, InputSpec::Unix { .. })
        && (i.socket_mode.is_some() || i.socket_group.is_some())
    {
        return Err(invalid(
            format!("{key}.socket_mode"),
            "socket_mode and socket_group only apply to unix:// inputs",
        ));
    }
    Ok(spec)
}

fn validate_output(name: &str, o: &OutputConfig) -> Result<OutputSpec, ConfigError> {
    let key = format!("outputs.{name}");
    let url = o.url.trim();
    let queue = o.queue.unwrap_or(16384);
    if queue == 0 {
        return Err(invalid(format!("{key}.queue"), "must be at least 1"));
    }
    let scheme = url.split_once("://").map_or(url, |(s, _)| s);
    // Keys that only some outputs understand.
    let only = |field: &str, set: bool, kinds: &[&str], what: &str| -> Result<(), ConfigError> {
        if set && !kinds.contains(&scheme) {
            return Err(invalid(
                format!("{key}.{field}"),
                format!("only applies to {what} outputs"),
            ));
        }
        Ok(())
    };
    let mqtt = ["mqtt", "mqtts"];
    let redis = ["redis", "rediss"];
    only(
        "subject",
        o.subject.is_some(),
        &["nats", "tls", "redis", "rediss"],
        "NATS and Redis",
    )?;
    only("topic", o.topic.is_some(), &mqtt, "MQTT")?;
    only("qos", o.qos.is_some(), &mqtt, "MQTT")?;
    only("mqtt_version", o.mqtt_version.is_some(), &mqtt, "MQTT")?;
    only("client_id", o.client_id.is_some(), &mqtt, "MQTT")?;
    only("keep_alive", o.keep_alive.is_some(), &mqtt, "MQTT")?;
    let nats = ["nats", "tls"];
    let mqtt_nats = ["mqtt", "mqtts", "nats", "tls"];
    only(
        "username",
        o.username.is_some(),
        &mqtt_nats,
        "MQTT and NATS",
    )?;
    only(
        "password",
        o.password.is_some(),
        &mqtt_nats,
        "MQTT and NATS",
    )?;
    only(
        "tls_ca",
        o.tls_ca.is_some(),
        &["mqtts", "nats", "tls"],
        "mqtts:// and NATS",
    )?;
    only("token", o.token.is_some(), &nats, "NATS")?;
    only("nkey_seed", o.nkey_seed.is_some(), &nats, "NATS")?;
    only("creds", o.creds.is_some(), &nats, "NATS")?;
    only("tls_cert", o.tls_cert.is_some(), &nats, "NATS")?;
    only("tls_key", o.tls_key.is_some(), &nats, "NATS")?;
    only("require_tls", o.require_tls.is_some(), &nats, "NATS")?;
    only("jetstream", o.jetstream.is_some(), &nats, "NATS")?;
    only("stream", o.stream.is_some(), &nats, "NATS")?;
    only(
        "stream_subjects",
        o.stream_subjects.is_some(),
        &nats,
        "NATS",
    )?;
    only(
        "stream_max_bytes",
        o.stream_max_bytes.is_some(),
        &nats,
        "NATS",
    )?;
    only("stream_max_age", o.stream_max_age.is_some(), &nats, "NATS")?;
    only(
        "stream_max_msgs",
        o.stream_max_msgs.is_some(),
        &nats,
        "NATS",
    )?;
    only("ack_window", o.ack_window.is_some(), &nats, "NATS")?;
    only(
        "max_packet_size",
        o.max_packet_size.is_some(),
        &mqtt,
        "MQTT",
    )?;
    only("mode", o.mode.is_some(), &redis, "Redis")?;
    only("key", o.key.is_some(), &redis, "Redis")?;
    only("max_len", o.max_len.is_some(), &redis, "Redis")?;
    let kind = if url == "stdout" || url == "stdout://" {
        OutputKind::Stdout
    } else if mqtt.contains(&scheme) {
        OutputKind::Mqtt(validate_mqtt(&key, name, url, o)?)
    } else if redis.contains(&scheme) {
        OutputKind::Redis(validate_redis(&key, url, o)?)
    } else if url.starts_with("nats://") || url.starts_with("tls://") {
        for server in url.split(',') {
            let rest = server
                .trim()
                .split_once("://")
                .map(|(_, r)| r)
                .unwrap_or_default();
            let hostport = rest.rsplit('@').next().unwrap_or(rest);
            host_port(&key, hostport)?;
        }
        OutputKind::Nats(validate_nats(&key, url, o)?)
    } else if url.is_empty() {
        return Err(invalid(format!("{key}.url"), "missing"));
    } else {
        return Err(invalid(
            format!("{key}.url"),
            format!(
                "unsupported output {url:?}: use nats://, mqtt://, mqtts://, redis://, rediss:// or stdout"
            ),
        ));
    };
    Ok(OutputSpec {
        name: name.to_string(),
        kind,
        queue,
    })
}

fn validate_mqtt(
    key: &str,
    name: &str,
    url: &str,
    o: &OutputConfig,
) -> Result<MqttSpec, ConfigError> {
    let tls = url.starts_with("mqtts://");
    let rest = url
        .split_once("://")
        .map_or("", |(_, r)| r)
        .trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => (
            h,
            p.parse::<u16>()
                .map_err(|_| invalid(format!("{key}.url"), format!("bad port in {url:?}")))?,
        ),
        None => (rest, if tls { 8883 } else { 1883 }),
    };
    if host.is_empty() {
        return Err(invalid(format!("{key}.url"), format!("no host in {url:?}")));
    }
    let t = o.topic.as_deref().unwrap_or(Template::DEFAULT_MQTT);
    let topic = Template::parse(t, Flavor::Mqtt)
        .map_err(|e| invalid(format!("{key}.topic"), format!("{t:?}: {e}")))?;
    let qos = o.qos.unwrap_or(0);
    if qos > 1 {
        return Err(invalid(format!("{key}.qos"), "must be 0 or 1"));
    }
    let version = match o.mqtt_version.as_deref() {
        None | Some("3.1.1") | Some("3") | Some("4") => 3,
        Some("5") | Some("5.0") => 5,
        Some(v) => {
            return Err(invalid(
                format!("{key}.mqtt_version"),
                format!("{v:?}: use \"3.1.1\" or \"5\""),
            ));
        }
    };
    let keep_alive = o.keep_alive.unwrap_or(Duration::from_secs(30));
    if keep_alive < Duration::from_secs(1) {
        return Err(invalid(format!("{key}.keep_alive"), "must be at least 1s"));
    }
    let max_packet_size = o.max_packet_size.unwrap_or(4 << 20);
    if !(1024..=(256 << 20)).contains(&max_packet_size) {
        return Err(invalid(
            format!("{key}.max_packet_size"),
            "must be between 1024 and 268435456",
        ));
    }
    if let Some(ca) = &o.tls_ca
        && !ca.is_file()
    {
        return Err(invalid(
            format!("{key}.tls_ca"),
            format!("{} is not a readable file", ca.display()),
        ));
    }
    if o.password.is_some() && o.username.is_none() {
        return Err(invalid(format!("{key}.password"), "needs a username"));
    }
    Ok(MqttSpec {
        host: host.to_string(),
        port,
        tls,
        tls_ca: o.tls_ca.clone(),
        topic,
        qos,
        version,
        client_id: o
            .client_id
            .clone()
            .unwrap_or_else(|| format!("tapbus-broker-{name}")),
        keep_alive,
        username: o.username.clone(),
        password: o.password.clone(),
        max_packet_size,
    })
}

fn need_file(key: &str, field: &str, p: &Option<PathBuf>) -> Result<Option<PathBuf>, ConfigError> {
    match p {
        Some(p) if !p.is_file() => Err(invalid(
            format!("{key}.{field}"),
            format!("{} is not a readable file", p.display()),
        )),
        _ => Ok(p.clone()),
    }
}

fn validate_nats(key: &str, url: &str, o: &OutputConfig) -> Result<NatsSpec, ConfigError> {
    let t = o.subject.as_deref().unwrap_or(Template::DEFAULT_NATS);
    let subject = Template::parse(t, Flavor::Nats)
        .map_err(|e| invalid(format!("{key}.subject"), format!("{t:?}: {e}")))?;
    // At most one authentication method.
    let methods = [
        ("username", o.username.is_some()),
        ("token", o.token.is_some()),
        ("nkey_seed", o.nkey_seed.is_some()),
        ("creds", o.creds.is_some()),
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
    let auth = match (&o.username, &o.password) {
        (Some(u), Some(p)) => NatsAuth::UserPassword {
            user: u.clone(),
            password: p.clone(),
        },
        (Some(_), None) => return Err(invalid(format!("{key}.username"), "needs a password")),
        (None, Some(_)) => return Err(invalid(format!("{key}.password"), "needs a username")),
        (None, None) => {
            if let Some(t) = &o.token {
                if t.is_empty() {
                    return Err(invalid(format!("{key}.token"), "must not be empty"));
                }
                NatsAuth::Token(t.clone())
            } else if let Some(p) = need_file(key, "nkey_seed", &o.nkey_seed)? {
                NatsAuth::NkeySeed(p)
            } else if let Some(p) = need_file(key, "creds", &o.creds)? {
                NatsAuth::Creds(p)
            } else {
                NatsAuth::None
            }
        }
    };
    let tls_ca = need_file(key, "tls_ca", &o.tls_ca)?;
    let tls_cert = need_file(key, "tls_cert", &o.tls_cert)?;
    let tls_key = need_file(key, "tls_key", &o.tls_key)?;
    match (&tls_cert, &tls_key) {
        (Some(_), None) => return Err(invalid(format!("{key}.tls_cert"), "needs tls_key")),
        (None, Some(_)) => return Err(invalid(format!("{key}.tls_key"), "needs tls_cert")),
        _ => {}
    }
    let require_tls = o.require_tls.unwrap_or(false)
        || url.split(',').any(|s| s.trim().starts_with("tls://"))
        || tls_ca.is_some()
        || tls_cert.is_some();
    let js_keys = [
        ("stream", o.stream.is_some()),
        ("stream_subjects", o.stream_subjects.is_some()),
        ("stream_max_bytes", o.stream_max_bytes.is_some()),
        ("stream_max_age", o.stream_max_age.is_some()),
        ("stream_max_msgs", o.stream_max_msgs.is_some()),
        ("ack_window", o.ack_window.is_some()),
    ];
    let jetstream = if o.jetstream.unwrap_or(false) {
        let stream = o.stream.clone().unwrap_or_else(|| "DNSTAP".into());
        if stream.is_empty()
            || stream
                .chars()
                .any(|c| c.is_whitespace() || matches!(c, '.' | '*' | '>' | '/' | '\\'))
        {
            return Err(invalid(
                format!("{key}.stream"),
                format!(
                    "{stream:?}: must be non-empty, without whitespace, '.', '*', '>', '/' or '\\'"
                ),
            ));
        }
        let subjects = o
            .stream_subjects
            .clone()
            .unwrap_or_else(|| vec!["dnstap.>".into()]);
        if subjects.is_empty() || subjects.iter().any(|s| s.trim().is_empty()) {
            return Err(invalid(
                format!("{key}.stream_subjects"),
                "must list at least one non-empty subject",
            ));
        }
        for (f, v) in [
            ("stream_max_bytes", o.stream_max_bytes),
            ("stream_max_msgs", o.stream_max_msgs),
        ] {
            if v.is_some_and(|v| v < 1) {
                return Err(invalid(format!("{key}.{f}"), "must be at least 1"));
            }
        }
        if o.stream_max_age.is_some_and(|d| d < Duration::from_secs(1)) {
            return Err(invalid(
                format!("{key}.stream_max_age"),
                "must be at least 1s",
            ));
        }
        let ack_window = o.ack_window.unwrap_or(1024);
        if !(1..=1 << 20).contains(&ack_window) {
            return Err(invalid(
                format!("{key}.ack_window"),
                "must be between 1 and 1048576",
            ));
        }
        Some(JetStreamSpec {
            stream,
            subjects,
            max_bytes: o.stream_max_bytes,
            max_age: o.stream_max_age,
            max_msgs: o.stream_max_msgs,
            ack_window,
        })
    } else {
        if let Some((f, _)) = js_keys.iter().find(|(_, s)| *s) {
            return Err(invalid(format!("{key}.{f}"), "needs jetstream = true"));
        }
        None
    };
    Ok(NatsSpec {
        servers: url.to_string(),
        subject,
        auth,
        tls_ca,
        tls_cert,
        tls_key,
        require_tls,
        jetstream,
    })
}

fn validate_redis(key: &str, url: &str, o: &OutputConfig) -> Result<RedisSpec, ConfigError> {
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
    let max_len = o.max_len.unwrap_or(100_000);
    if max_len == 0 {
        return Err(invalid(format!("{key}.max_len"), "must be at least 1"));
    }
    let rkey = o.key.clone().unwrap_or_else(|| "dnstap".to_string());
    if rkey.is_empty() {
        return Err(invalid(format!("{key}.key"), "must not be empty"));
    }
    let mode = match o.mode.as_deref().unwrap_or("publish") {
        "publish" => {
            if o.key.is_some() || o.max_len.is_some() {
                return Err(invalid(
                    format!("{key}.key"),
                    "key and max_len apply to list and stream modes",
                ));
            }
            let t = o.subject.as_deref().unwrap_or(Template::DEFAULT_NATS);
            RedisMode::Publish(
                Template::parse(t, Flavor::Nats)
                    .map_err(|e| invalid(format!("{key}.subject"), format!("{t:?}: {e}")))?,
            )
        }
        m @ ("list" | "stream") => {
            if o.subject.is_some() {
                return Err(invalid(
                    format!("{key}.subject"),
                    "list and stream modes write to one key",
                ));
            }
            if m == "list" {
                RedisMode::List { key: rkey, max_len }
            } else {
                RedisMode::Stream { key: rkey, max_len }
            }
        }
        other => {
            return Err(invalid(
                format!("{key}.mode"),
                format!("{other:?}: use publish, list or stream"),
            ));
        }
    };
    Ok(RedisSpec {
        url: url.to_string(),
        mode,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("broker.toml")
    }

    fn err_of(c: &BrokerConfig) -> String {
        match c.validate() {
            Ok(_) => panic!("expected an error"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn example_file_loads_and_validates() {
        figment::Jail::expect_with(|_| {
            let c: BrokerConfig =
                load(Some(&example()), BrokerConfig::default()).map_err(|e| e.to_string())?;
            let s = c.validate().map_err(|e| e.to_string())?;
            assert!(!s.inputs.is_empty());
            assert!(!s.outputs.is_empty());
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn env_overrides_file() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("TAPBUS_MAX_FRAME_SIZE", "2048");
            jail.set_env("TAPBUS_OUTPUTS__NATS__URL", "nats://10.9.9.9:4223");
            jail.set_env("TAPBUS_CONFIG", "ignored.toml");
            let c: BrokerConfig =
                load(Some(&example()), BrokerConfig::default()).map_err(|e| e.to_string())?;
            assert_eq!(c.max_frame_size, 2048);
            assert_eq!(c.outputs["nats"].url, "nats://10.9.9.9:4223");
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn unknown_keys_are_named() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("bad.toml", "max_frame_sise = 5\n")?;
            let e = load(Some(Path::new("bad.toml")), BrokerConfig::default())
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(e.contains("max_frame_sise"), "{e}");
            jail.create_file(
                "bad2.toml",
                "[inputs.a]\nurl = \"tcp://x:1\"\nsocket_mod = \"1\"\n",
            )?;
            let e = load(Some(Path::new("bad2.toml")), BrokerConfig::default())
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(e.contains("socket_mod"), "{e}");
            Ok(())
        });
        assert!(matches!(
            load(
                Some(Path::new("/nonexistent.toml")),
                BrokerConfig::default()
            ),
            Err(ConfigError::MissingFile(_))
        ));
    }

    #[test]
    fn validation_names_the_key() {
        let mut c = BrokerConfig::default();
        assert!(err_of(&c).starts_with("inputs:"));
        c.add_input_url("udp://x:1");
        c.add_output_url("stdout");
        assert!(err_of(&c).starts_with("inputs.udp.url: unsupported scheme"));
        let mut c = BrokerConfig::default();
        c.add_input_url("tcp://127.0.0.1:6000");
        c.add_output_url("nats://127.0.0.1:4222");
        if let Some(o) = c.outputs.get_mut("nats") {
            o.subject = Some("dnstap.*".into());
        }
        assert!(
            err_of(&c).starts_with("outputs.nats.subject:"),
            "{}",
            err_of(&c)
        );
        let mut c = BrokerConfig::default();
        c.add_input_url("tls://0.0.0.0:6000");
        c.add_output_url("stdout");
        assert!(err_of(&c).starts_with("inputs.tls.tls_cert:"));
        let mut c = BrokerConfig::default();
        c.add_input_url("unix:///tmp/x.sock");
        if let Some(i) = c.inputs.get_mut("unix") {
            i.socket_mode = Some("999".into());
        }
        c.add_output_url("stdout");
        assert!(err_of(&c).starts_with("inputs.unix.socket_mode:"));
        let mut c = BrokerConfig::default();
        c.add_input_url("tcp://nohost");
        c.add_output_url("stdout");
        assert!(err_of(&c).starts_with("inputs.tcp.url:"));
        c.inputs.clear();
        c.add_input_url("tcp://127.0.0.1:1");
        c.metrics_listen = "nope".into();
        assert!(err_of(&c).starts_with("metrics_listen:"));
    }

    #[test]
    fn nats_auth_tls_and_jetstream() {
        let mut c = BrokerConfig::default();
        c.add_input_url("tcp://127.0.0.1:6000");
        c.add_output_url("nats://127.0.0.1:4222");
        let s = c.validate().expect("valid");
        let OutputKind::Nats(n) = &s.outputs[0].kind else {
            panic!("nats expected: {:?}", s.outputs[0]);
        };
        assert_eq!(n.auth, NatsAuth::None);
        assert!(!n.require_tls && n.jetstream.is_none());

        let set = |f: &dyn Fn(&mut OutputConfig)| {
            let mut c = c.clone();
            for o in c.outputs.values_mut() {
                f(o);
            }
            c
        };
        let ok = |c: &BrokerConfig| match c.validate().expect("valid").outputs[0].kind.clone() {
            OutputKind::Nats(n) => n,
            other => panic!("nats expected: {other:?}"),
        };
        let n = ok(&set(&|o| {
            o.username = Some("a".into());
            o.password = Some("b".into());
        }));
        assert_eq!(
            n.auth,
            NatsAuth::UserPassword {
                user: "a".into(),
                password: "b".into()
            }
        );
        assert_eq!(
            ok(&set(&|o| o.token = Some("t".into()))).auth,
            NatsAuth::Token("t".into())
        );
        let e = err_of(&set(&|o| {
            o.username = Some("a".into());
            o.password = Some("b".into());
            o.token = Some("t".into());
        }));
        assert!(e.starts_with("outputs.nats.token: only one"), "{e}");
        let e = err_of(&set(&|o| o.username = Some("a".into())));
        assert!(
            e.starts_with("outputs.nats.username: needs a password"),
            "{e}"
        );
        let e = err_of(&set(&|o| o.creds = Some("/nonexistent.creds".into())));
        assert!(e.starts_with("outputs.nats.creds:"), "{e}");
        let e = err_of(&set(&|o| o.tls_cert = Some("/nonexistent.pem".into())));
        assert!(e.starts_with("outputs.nats.tls_cert:"), "{e}");
        let e = err_of(&set(&|o| o.stream = Some("X".into())));
        assert!(e.starts_with("outputs.nats.stream: needs jetstream"), "{e}");

        let n = ok(&set(&|o| o.jetstream = Some(true)));
        let js = n.jetstream.expect("jetstream");
        assert_eq!(js.stream, "DNSTAP");
        assert_eq!(js.subjects, vec!["dnstap.>".to_string()]);
        assert_eq!(js.ack_window, 1024);
        let e = err_of(&set(&|o| {
            o.jetstream = Some(true);
            o.stream = Some("a.b".into());
        }));
        assert!(e.starts_with("outputs.nats.stream:"), "{e}");
        let e = err_of(&set(&|o| {
            o.jetstream = Some(true);
            o.ack_window = Some(0);
        }));
        assert!(e.starts_with("outputs.nats.ack_window:"), "{e}");

        let mut t = c.clone();
        t.outputs.clear();
        t.add_output_url("tls://127.0.0.1:4222");
        assert!(ok(&t).require_tls);

        // NATS keys are refused elsewhere.
        let mut r = c.clone();
        r.outputs.clear();
        r.add_output_url("redis://127.0.0.1");
        for o in r.outputs.values_mut() {
            o.jetstream = Some(true);
        }
        let e = err_of(&r);
        assert!(
            e.starts_with("outputs.redis.jetstream: only applies to NATS"),
            "{e}"
        );
    }

    #[test]
    fn mqtt_and_redis_outputs() {
        let mut c = BrokerConfig::default();
        c.add_input_url("tcp://127.0.0.1:6000");
        c.add_output_url("mqtt://127.0.0.1");
        c.add_output_url("redis://127.0.0.1:6379/2");
        let s = c.validate().expect("valid");
        let OutputKind::Mqtt(m) = &s.outputs[0].kind else {
            panic!("mqtt expected: {:?}", s.outputs[0]);
        };
        assert_eq!((m.port, m.qos, m.version, m.tls), (1883, 0, 3, false));
        assert_eq!(m.max_packet_size, 4 << 20);
        let OutputKind::Redis(r) = &s.outputs[1].kind else {
            panic!("redis expected");
        };
        assert!(matches!(r.mode, RedisMode::Publish(_)));

        let set = |f: &dyn Fn(&mut OutputConfig)| {
            let mut c = c.clone();
            for o in c.outputs.values_mut() {
                f(o);
            }
            err_of(&c)
        };
        assert!(set(&|o| o.qos = Some(2)).starts_with("outputs.mqtt.qos:"));
        assert!(
            set(&|o| o.mqtt_version = Some("4.0".into())).starts_with("outputs.mqtt.mqtt_version:")
        );
        assert!(set(&|o| o.topic = Some("a/#".into())).starts_with("outputs.mqtt.topic:"));
        assert!(
            set(&|o| o.mode = Some("zset".into())).starts_with("outputs.mqtt.mode: only applies")
        );
        let mut r = c.clone();
        r.outputs.remove("mqtt");
        if let Some(o) = r.outputs.get_mut("redis") {
            o.mode = Some("stream".into());
            o.max_len = Some(10);
        }
        let s = r.validate().expect("valid");
        assert!(matches!(
            &s.outputs[0].kind,
            OutputKind::Redis(RedisSpec {
                mode: RedisMode::Stream { max_len: 10, .. },
                ..
            })
        ));
        if let Some(o) = r.outputs.get_mut("redis") {
            o.mode = Some("bogus".into());
        }
        assert!(err_of(&r).starts_with("outputs.redis.mode:"));
        if let Some(o) = r.outputs.get_mut("redis") {
            o.mode = None;
            o.url = "redis://127.0.0.1:6379/x".into();
        }
        assert!(
            err_of(&r).starts_with("outputs.redis.url:"),
            "{}",
            err_of(&r)
        );
    }

    #[test]
    fn cli_urls_become_named_entries() {
        let mut c = BrokerConfig::default();
        c.add_input_url("unix:///run/tapbus/dnstap.sock");
        c.add_input_url("tcp://0.0.0.0:6000");
        c.add_input_url("tcp://0.0.0.0:6001");
        c.add_input_url("dial+tcp://127.0.0.1:6002");
        c.add_input_url("file:///var/log/named.dnstap");
        c.add_output_url("nats://127.0.0.1:4222");
        c.add_output_url("stdout");
        let s = c.validate().expect("valid");
        let names: Vec<_> = s.inputs.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["dial_tcp", "file", "tcp", "tcp2", "unix"]);
        assert!(
            s.inputs
                .iter()
                .any(|n| matches!(&n.spec, InputSpec::Unix { mode: 0o660, .. }))
        );
        assert_eq!(s.outputs.len(), 2);
        assert_eq!(
            s.metrics_listen,
            Some("127.0.0.1:9634".parse().expect("addr"))
        );
    }
}
