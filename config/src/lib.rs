//! Configuration for every tapbus binary: a TOML file, then `TAPBUS_*` environment
//! variables (figment, nested keys split on `__`), validated at start-up into typed
//! settings. Every error names the key that is wrong.
//!
//! Two stages, as in ripgrep: the serde structs ([`BrokerConfig`]) are what users write
//! (their doc comments are the reference in docs/configuration.md);
//! [`BrokerConfig::validate`] turns them into [`BrokerSettings`], which the broker runs from
//! and which cannot be invalid.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};
use tapbus_proto::subject::{Flavor, Template};

pub mod connect;
pub mod privacy;
pub mod subscribe;

pub use connect::{
    BusConnect, BusKind, ConnectConfig, MqttConnect, NatsAuth, NatsConnect, RedisConnect, scheme_of,
};
pub use privacy::{ClientIp, EnrichConfig, GeoIpConfig, PrivacyConfig, PrivacySpec};
pub use subscribe::{
    DeliverFrom, InputConfig as ConsumerInputConfig, InputSpec as ConsumerInputSpec,
    SubscribeConfig, SubscribeMode,
};

/// `eprintln!` that never panics: a line on standard error, or nothing when it is closed
/// (`tapbus-tail ... 2>&1 | head -1` closes it after one line; `eprintln!` would panic
/// and the process exit 101). For the binaries' user-facing messages.
#[macro_export]
macro_rules! errln {
    ($($arg:tt)*) => {{
        use ::std::io::Write as _;
        let _ = ::std::writeln!(::std::io::stderr().lock(), $($arg)*);
    }};
}

/// `println!` that never panics (a closed standard output loses the line).
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {{
        use ::std::io::Write as _;
        let _ = ::std::writeln!(::std::io::stdout().lock(), $($arg)*);
    }};
}

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

impl ConfigError {
    /// `key: msg`.
    pub fn invalid(key: impl Into<String>, msg: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            key: key.into(),
            msg: msg.into(),
        }
    }
}

fn invalid(key: impl Into<String>, msg: impl Into<String>) -> ConfigError {
    ConfigError::invalid(key, msg)
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
    /// At shutdown: how long the outputs get, together, to send and have confirmed what they
    /// hold; an output still busy then is stopped and its unsettled events are counted as
    /// dropped (default 20s).
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// What is added to every event, once, before any output's privacy view.
    pub enrich: EnrichConfig,
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
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            enrich: EnrichConfig::default(),
        }
    }
}

/// Default of [`BrokerConfig::drain_timeout`].
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(20);
/// Default of [`OutputConfig::marker_timeout`].
pub const DEFAULT_MARKER_TIMEOUT: Duration = Duration::from_secs(10);

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
    /// A number is taken as well as a string (`TAPBUS_INPUTS__X__SOCKET_GROUP=10053`
    /// arrives as an integer).
    #[serde(deserialize_with = "name_or_number")]
    pub socket_group: Option<String>,
    /// tls: PEM certificate chain.
    pub tls_cert: Option<PathBuf>,
    /// tls: PEM private key.
    pub tls_key: Option<PathBuf>,
    /// tls: PEM CA bundle; when set, clients must present a certificate it signed (mTLS).
    pub tls_client_ca: Option<PathBuf>,
    /// dial+tls: PEM CA bundle the sender's certificate must chain to (default: the
    /// system's bundle).
    pub tls_ca: Option<PathBuf>,
    /// dial+tls: the name the sender's certificate must carry (default: the URL's host).
    pub tls_server_name: Option<String>,
    /// dial+tls: accept any sender certificate (a warning at start); default false.
    pub tls_skip_verify: Option<bool>,
    /// dial: first reconnect delay (default 100ms), doubled up to `reconnect_max`.
    #[serde(with = "humantime_serde")]
    pub reconnect_min: Option<Duration>,
    /// dial: longest reconnect delay (default 10s).
    #[serde(with = "humantime_serde")]
    pub reconnect_max: Option<Duration>,
}

/// A name, or a number kept as its decimal text (a group id).
fn name_or_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum NameOrNumber {
        Name(String),
        Number(u64),
    }
    Ok(Option::<NameOrNumber>::deserialize(d)?.map(|v| match v {
        NameOrNumber::Name(s) => s,
        NameOrNumber::Number(n) => n.to_string(),
    }))
}

/// One output.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct OutputConfig {
    /// How to connect: `url` and the connection keys (see [`ConnectConfig`]), or `url =
    /// "stdout"`.
    #[serde(flatten)]
    pub connect: ConnectConfig,
    /// Subject template (NATS) or channel template (Redis `publish` mode); placeholders
    /// {identity} {operation} {qtype} {rcode} {protocol}.
    pub subject: Option<String>,
    /// MQTT: topic template (default "dnstap/{identity}/{operation}").
    pub topic: Option<String>,
    /// MQTT: QoS 0 (default) or 1.
    pub qos: Option<u8>,
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
    /// NATS JetStream: copies of the stream when it is created, 1 (default) to 5; more than
    /// 1 needs a JetStream cluster (R3 survives the loss of one server).
    pub stream_replicas: Option<usize>,
    /// NATS JetStream: most publishes awaiting their ack at once (default 1024).
    pub ack_window: Option<usize>,
    /// NATS core: how long the marker closing a window may take to come back through the
    /// output's inbox before the window's events are sent again (default 10s).
    #[serde(with = "humantime_serde")]
    pub marker_timeout: Option<Duration>,
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
    /// Only events matching this filter expression go to this output (e.g.
    /// `"operation=CLIENT_RESPONSE rcode=NXDOMAIN,SERVFAIL"`; docs/filters.md); the others
    /// are counted in `tapbus_filtered_total{output}`. Default: every event.
    pub filter: Option<String>,
    /// What this output shows of the client (docs/privacy.md); default: everything.
    pub privacy: Option<PrivacyConfig>,
    /// dnstap+file: rotate the file being written once it holds this many bytes.
    pub rotate_size: Option<u64>,
    /// dnstap+file: rotate the file being written once it has been open this long.
    #[serde(with = "humantime_serde")]
    pub rotate_age: Option<Duration>,
    /// dnstap+file: rotated files kept (the oldest beyond it are deleted), default 10.
    pub keep: Option<usize>,
    /// dnstap+tcp/unix, tcp+json: first reconnect delay (default 100ms), doubled up to `reconnect_max`.
    #[serde(with = "humantime_serde")]
    pub reconnect_min: Option<Duration>,
    /// dnstap+tcp/unix, tcp+json: longest reconnect delay (default 10s).
    #[serde(with = "humantime_serde")]
    pub reconnect_max: Option<Duration>,
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
    /// `dial+tls://HOST:PORT`: a `dnstap listen tls://` sender (CoreDNS).
    DialTls {
        addr: String,
        backoff: Backoff,
        tls: DialTlsSpec,
    },
    File {
        path: PathBuf,
    },
}

/// How a `dial+tls://` input verifies the sender and presents itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DialTlsSpec {
    /// `None`: the system's CA bundle.
    pub ca: Option<PathBuf>,
    /// The client certificate and key (mTLS), both or neither.
    pub client: Option<(PathBuf, PathBuf)>,
    /// The name the sender's certificate must carry.
    pub server_name: String,
    /// Accept any sender certificate.
    pub skip_verify: bool,
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
    /// `tcp+json://HOST:PORT`: JSON lines over TCP (Logstash `tcp` input, `json_lines`).
    TcpJson {
        addr: String,
        backoff: Backoff,
    },
    /// `dnstap+file:///dir/name.fstrm`: the original frames into capture files.
    DnstapFile(DnstapFileSpec),
    /// `dnstap+tcp://host:port`, `dnstap+unix:///path`: the original frames relayed.
    DnstapRelay(DnstapRelaySpec),
}

impl OutputKind {
    /// The output writes the original dnstap frames (not the JSON event).
    pub fn is_raw(&self) -> bool {
        matches!(self, OutputKind::DnstapFile(_) | OutputKind::DnstapRelay(_))
    }
}

/// Validated `dnstap+file` output.
#[derive(Debug, Clone, PartialEq)]
pub struct DnstapFileSpec {
    /// The file being written (`dir/name.fstrm`); rotated files are
    /// `dir/name-<UTC timestamp>.fstrm` beside it.
    pub path: PathBuf,
    pub rotate_size: Option<u64>,
    pub rotate_age: Option<Duration>,
    /// Rotated files kept, at least 1.
    pub keep: usize,
}

/// Where a dnstap relay connects.
#[derive(Debug, Clone, PartialEq)]
pub enum RelayTarget {
    Tcp(String),
    Unix(PathBuf),
}

impl std::fmt::Display for RelayTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RelayTarget::Tcp(a) => write!(f, "dnstap+tcp://{a}"),
            RelayTarget::Unix(p) => write!(f, "dnstap+unix://{}", p.display()),
        }
    }
}

/// Validated `dnstap+tcp` / `dnstap+unix` output.
#[derive(Debug, Clone, PartialEq)]
pub struct DnstapRelaySpec {
    pub target: RelayTarget,
    pub backoff: Backoff,
}

/// Validated JetStream settings.
#[derive(Debug, Clone, PartialEq)]
pub struct JetStreamSpec {
    pub stream: String,
    pub subjects: Vec<String>,
    pub max_bytes: Option<i64>,
    pub max_age: Option<Duration>,
    pub max_msgs: Option<i64>,
    /// `None`: the server's default (1).
    pub replicas: Option<usize>,
    pub ack_window: usize,
}

/// Validated NATS output.
#[derive(Debug, Clone, PartialEq)]
pub struct NatsSpec {
    pub connect: NatsConnect,
    pub subject: Template,
    /// `Some` to publish through JetStream.
    pub jetstream: Option<JetStreamSpec>,
    /// NATS core: a window whose marker has not come back after this long is sent again.
    pub marker_timeout: Duration,
}

/// Validated MQTT output.
#[derive(Debug, Clone, PartialEq)]
pub struct MqttSpec {
    pub connect: MqttConnect,
    pub topic: Template,
    /// 0 or 1.
    pub qos: u8,
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
    pub connect: RedisConnect,
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
    /// Events not matching are not sent to this output (counted as filtered).
    pub filter: Option<tapbus_event::Filter>,
    /// The privacy view this output publishes; `None` (or a clear one): the event as is.
    pub privacy: Option<PrivacySpec>,
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
    /// Shared deadline for the outputs to drain at shutdown.
    pub drain_timeout: Duration,
    pub enrich: EnrichConfig,
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
        // An entry of the file or the environment named after the scheme and without a url
        // (`TAPBUS_INPUTS__UNIX__MODE=0660` with `--input unix://...`) gets this url.
        if let Some(i) = self.inputs.get_mut(&base_name(scheme_of(url)))
            && i.url.trim().is_empty()
        {
            i.url = url.to_string();
            return;
        }
        let name = unique_name(&self.inputs, scheme_of(url));
        self.inputs.insert(
            name,
            InputConfig {
                url: url.to_string(),
                ..Default::default()
            },
        );
    }

    /// Adds an output given on the command line (`--output URL`). An output of the file or
    /// the environment named after the URL's scheme and without a url of its own
    /// (`TAPBUS_OUTPUTS__NATS__JETSTREAM=true` with `--output nats://...`) takes the URL
    /// and keeps its other keys.
    pub fn add_output_url(&mut self, url: &str) {
        if let Some(o) = self.outputs.get_mut(&base_name(scheme_of(url)))
            && o.connect.url.trim().is_empty()
        {
            o.connect.url = url.to_string();
            return;
        }
        let name = unique_name(&self.outputs, scheme_of(url));
        self.outputs.insert(
            name,
            OutputConfig {
                connect: ConnectConfig {
                    url: url.to_string(),
                    ..Default::default()
                },
                ..Default::default()
            },
        );
    }

    /// The command line's `--input` and `--output` URLs on top of the loaded configuration
    /// (built-in `defaults`, then the file, then `TAPBUS_*`). A flag adds to its own kind
    /// only: `--output` never touches the inputs and `--input` never the outputs. Within its
    /// kind it replaces only the built-in default entries (those the file and the
    /// environment left exactly as `defaults` has them) and keeps every entry the file or
    /// the environment configured, so `TAPBUS_INPUTS__DNS__URL=… tapbus-broker --output
    /// stdout` reads that input and writes standard output.
    pub fn apply_flags(&mut self, defaults: &BrokerConfig, inputs: &[String], outputs: &[String]) {
        if !inputs.is_empty() {
            self.inputs
                .retain(|name, cfg| defaults.inputs.get(name) != Some(&*cfg));
        }
        if !outputs.is_empty() {
            self.outputs
                .retain(|name, cfg| defaults.outputs.get(name) != Some(&*cfg));
        }
        for i in inputs {
            self.add_input_url(i);
        }
        for o in outputs {
            self.add_output_url(o);
        }
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
        if self.drain_timeout.is_zero() {
            return Err(invalid("drain_timeout", "must be more than 0"));
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
            drain_timeout: self.drain_timeout,
            enrich: {
                self.enrich.validate()?;
                self.enrich.clone()
            },
        })
    }
}

/// The name a command-line URL's entry gets: its scheme, `+` and the like as `_`.
fn base_name(scheme: &str) -> String {
    scheme
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

fn unique_name<V>(map: &BTreeMap<String, V>, base: &str) -> String {
    let base = base_name(base);
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
            format!("{url:?} is not a URL: use unix://, tcp://, tls://, dial+tcp://, dial+unix://, dial+tls:// or file://"),
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
        "dial+tls" => {
            let addr = host_port(key, rest)?;
            let client = match (&i.tls_cert, &i.tls_key) {
                (None, None) => None,
                (Some(_), None) | (None, Some(_)) => {
                    return Err(invalid(
                        format!("{key}.tls_cert"),
                        "tls_cert and tls_key go together (the client certificate for mTLS)",
                    ));
                }
                (c, k) => Some((
                    need_path(key, "tls_cert", c)?,
                    need_path(key, "tls_key", k)?,
                )),
            };
            let ca = match &i.tls_ca {
                None => None,
                some => Some(need_path(key, "tls_ca", some)?),
            };
            let skip_verify = i.tls_skip_verify.unwrap_or(false);
            if skip_verify && ca.is_some() {
                return Err(invalid(
                    format!("{key}.tls_skip_verify"),
                    "tls_skip_verify = true accepts any certificate: drop tls_ca, or verify",
                ));
            }
            let host = addr
                .rsplit_once(':')
                .map_or(addr.as_str(), |(h, _)| h)
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let server_name = match i.tls_server_name.as_deref().map(str::trim) {
                Some("") => {
                    return Err(invalid(format!("{key}.tls_server_name"), "empty"));
                }
                Some(n) => n.to_string(),
                None => host,
            };
            InputSpec::DialTls {
                addr,
                backoff: backoff()?,
                tls: DialTlsSpec {
                    ca,
                    client,
                    server_name,
                    skip_verify,
                },
            }
        }
        "file" => {
            let path = abs_path(key, rest)?;
            match std::fs::metadata(&path) {
                Ok(m) if m.is_dir() => {
                    return Err(invalid(
                        format!("{key}.url"),
                        format!("{} is a directory, not a capture file", path.display()),
                    ));
                }
                Ok(_) => {}
                Err(e) => {
                    return Err(invalid(
                        format!("{key}.url"),
                        format!("cannot read {}: {e}", path.display()),
                    ));
                }
            }
            InputSpec::File { path }
        }
        other => {
            return Err(invalid(
                format!("{key}.url"),
                format!(
                    "unsupported scheme {other:?}: use unix, tcp, tls, dial+tcp, dial+unix, dial+tls or file"
                ),
            ));
        }
    };
    let tls_keys = [
        ("tls_cert", i.tls_cert.is_some(), "tls:// and dial+tls://"),
        ("tls_key", i.tls_key.is_some(), "tls:// and dial+tls://"),
        ("tls_client_ca", i.tls_client_ca.is_some(), "tls://"),
        ("tls_ca", i.tls_ca.is_some(), "dial+tls://"),
        (
            "tls_server_name",
            i.tls_server_name.is_some(),
            "dial+tls://",
        ),
        (
            "tls_skip_verify",
            i.tls_skip_verify.is_some(),
            "dial+tls://",
        ),
    ];
    for (f, set, applies) in tls_keys {
        let ok = match &spec {
            InputSpec::Tls { .. } => applies.starts_with("tls://"),
            InputSpec::DialTls { .. } => applies.contains("dial+tls://"),
            _ => false,
        };
        if set && !ok {
            return Err(invalid(
                format!("{key}.{f}"),
                format!("only applies to {applies} inputs"),
            ));
        }
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
    validate_output_at(&format!("outputs.{name}"), name, o, true)
}

impl OutputConfig {
    /// Checks one output as a consumer's publishing side (`tapbus-reduce --output URL`):
    /// errors name keys under `key` (e.g. `output.url`); `name` labels its metrics.
    pub fn validate(&self, key: &str, name: &str) -> Result<OutputSpec, ConfigError> {
        validate_output_at(key, name, self, false)
    }

    /// Applies a `--output URL` flag on top of the file and environment: the URL replaces
    /// `url`; the other keys stay.
    pub fn set_url(&mut self, url: &str) {
        self.connect.url = url.to_string();
    }

    /// An output from a URL alone (the `--output URL` shorthand).
    pub fn from_url(url: &str) -> OutputConfig {
        OutputConfig {
            connect: ConnectConfig {
                url: url.to_string(),
                ..Default::default()
            },
            ..Default::default()
        }
    }
}

/// Sets a key from an output URL's query, or checks it equals what the table set.
fn put<T: PartialEq + std::fmt::Debug>(
    key: &str,
    k: &str,
    slot: &mut Option<T>,
    v: T,
) -> Result<(), ConfigError> {
    match slot {
        Some(old) if *old != v => Err(invalid(
            format!("{key}.{k}"),
            format!("the URL sets {v:?} and the key {old:?}: give it in one place"),
        )),
        _ => {
            *slot = Some(v);
            Ok(())
        }
    }
}

/// The keys an output URL's path and query may set ([`with_url_keys`]).
const URL_KEYS: &str = "subject (or the path), topic (or the path), qos, jetstream, stream, \
stream_subjects, stream_max_bytes, stream_max_age, stream_max_msgs, stream_replicas, \
ack_window, marker_timeout, mode, key, max_len, queue, filter";

/// An output URL's path and query are keys of its table, so one URL says everything:
/// `nats://HOST:PORT/SUBJECT?jetstream=true&stream=DNSTAP`, `mqtt://HOST:PORT/TOPIC?qos=1`,
/// `redis://HOST:PORT/DB?mode=list&key=dnstap`. The path is the NATS subject or the MQTT
/// topic (a Redis URL's path is its database). A parameter that is no output key, or one
/// that the table sets to another value, is an error naming it; what the URL does not set
/// comes from the table. Returns the table with the URL reduced to its connection part.
fn with_url_keys(key: &str, o: &OutputConfig) -> Result<OutputConfig, ConfigError> {
    let url = o.connect.url.trim();
    if is_dnstap_scheme(scheme_of(url)) {
        return with_dnstap_url_keys(key, o);
    }
    if !matches!(
        scheme_of(url),
        "nats" | "tls" | "mqtt" | "mqtts" | "redis" | "rediss"
    ) {
        return Ok(o.clone());
    }
    let (conn, q) = subscribe::split_url(key, url)?;
    let mut e = o.clone();
    e.connect.url = conn;
    let bad =
        |k: &str, v: &str, what: &str| invalid(format!("{key}.url"), format!("{k}={v:?}: {what}"));
    for (k, v) in q {
        let num = |v: &str| v.parse::<i64>().map_err(|_| bad(&k, v, "not a number"));
        let size = |v: &str| v.parse::<usize>().map_err(|_| bad(&k, v, "not a number"));
        let dur = |v: &str| humantime::parse_duration(v).map_err(|e| bad(&k, v, &e.to_string()));
        match k.as_str() {
            "subject" => put(key, &k, &mut e.subject, v)?,
            "topic" => put(key, &k, &mut e.topic, v)?,
            "stream" => put(key, &k, &mut e.stream, v)?,
            "mode" => put(key, &k, &mut e.mode, v)?,
            "key" => put(key, &k, &mut e.key, v)?,
            "filter" => put(key, &k, &mut e.filter, v)?,
            "qos" => {
                let n = v.parse::<u8>().map_err(|_| bad(&k, &v, "use 0 or 1"))?;
                put(key, &k, &mut e.qos, n)?
            }
            "jetstream" => {
                let b = match v.as_str() {
                    "true" | "1" | "yes" => true,
                    "false" | "0" | "no" => false,
                    _ => return Err(bad(&k, &v, "use true or false")),
                };
                put(key, &k, &mut e.jetstream, b)?
            }
            "stream_subjects" => {
                let list = v.split(',').map(|s| s.trim().to_string()).collect();
                put(key, &k, &mut e.stream_subjects, list)?
            }
            "stream_max_bytes" => put(key, &k, &mut e.stream_max_bytes, num(&v)?)?,
            "stream_max_msgs" => put(key, &k, &mut e.stream_max_msgs, num(&v)?)?,
            "stream_max_age" => put(key, &k, &mut e.stream_max_age, dur(&v)?)?,
            "marker_timeout" => put(key, &k, &mut e.marker_timeout, dur(&v)?)?,
            "stream_replicas" => put(key, &k, &mut e.stream_replicas, size(&v)?)?,
            "ack_window" => put(key, &k, &mut e.ack_window, size(&v)?)?,
            "max_len" => put(key, &k, &mut e.max_len, size(&v)?)?,
            "queue" => put(key, &k, &mut e.queue, size(&v)?)?,
            _ => {
                return Err(invalid(
                    format!("{key}.url"),
                    format!("unknown parameter {k:?}; an output URL takes {URL_KEYS}"),
                ));
            }
        }
    }
    Ok(e)
}

/// The raw dnstap output schemes.
fn is_dnstap_scheme(scheme: &str) -> bool {
    matches!(scheme, "dnstap+file" | "dnstap+tcp" | "dnstap+unix")
}

/// The keys a raw dnstap output URL's query may set.
const DNSTAP_URL_KEYS: &str = "rotate_size, rotate_age, keep (dnstap+file), reconnect_min, reconnect_max (dnstap+tcp, dnstap+unix), queue, filter";

/// [`with_url_keys`] for `dnstap+file`, `dnstap+tcp` and `dnstap+unix`: the path is the
/// file or socket (kept in the URL), the query sets keys of the table.
fn with_dnstap_url_keys(key: &str, o: &OutputConfig) -> Result<OutputConfig, ConfigError> {
    let url = o.connect.url.trim();
    let Some((base, query)) = url.split_once('?') else {
        return Ok(o.clone());
    };
    let mut e = o.clone();
    e.connect.url = base.to_string();
    let bad =
        |k: &str, v: &str, what: &str| invalid(format!("{key}.url"), format!("{k}={v:?}: {what}"));
    let mut seen = std::collections::BTreeSet::new();
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        let (k, v) = (k.to_string(), v.to_string());
        if !seen.insert(k.clone()) {
            return Err(invalid(
                format!("{key}.url"),
                format!("{k:?} is given twice"),
            ));
        }
        let size = |v: &str| v.parse::<usize>().map_err(|_| bad(&k, v, "not a number"));
        let dur = |v: &str| humantime::parse_duration(v).map_err(|e| bad(&k, v, &e.to_string()));
        match k.as_str() {
            "rotate_size" => {
                let n = v
                    .parse::<u64>()
                    .map_err(|_| bad(&k, &v, "not a number of bytes"))?;
                put(key, &k, &mut e.rotate_size, n)?
            }
            "rotate_age" => put(key, &k, &mut e.rotate_age, dur(&v)?)?,
            "keep" => put(key, &k, &mut e.keep, size(&v)?)?,
            "reconnect_min" => put(key, &k, &mut e.reconnect_min, dur(&v)?)?,
            "reconnect_max" => put(key, &k, &mut e.reconnect_max, dur(&v)?)?,
            "queue" => put(key, &k, &mut e.queue, size(&v)?)?,
            "filter" => put(key, &k, &mut e.filter, v)?,
            _ => {
                return Err(invalid(
                    format!("{key}.url"),
                    format!("unknown parameter {k:?}; a dnstap output URL takes {DNSTAP_URL_KEYS}"),
                ));
            }
        }
    }
    Ok(e)
}

/// A raw dnstap output: `dnstap+file:///dir/name.fstrm`, `dnstap+tcp://host:port` or
/// `dnstap+unix:///path`. Connection keys, templates and privacy do not apply (the frame
/// goes out as it came in).
fn validate_dnstap(key: &str, url: &str, o: &OutputConfig) -> Result<OutputKind, ConfigError> {
    if o.connect
        != (ConnectConfig {
            url: o.connect.url.clone(),
            ..Default::default()
        })
    {
        return Err(invalid(
            key,
            "a dnstap output takes no connection keys (url, and the keys of docs/configuration.md's dnstap outputs)",
        ));
    }
    if o.privacy.is_some() {
        return Err(invalid(
            format!("{key}.privacy"),
            "does not apply to a dnstap output: it writes the original frames, client addresses included",
        ));
    }
    let (scheme, rest) = url.split_once("://").unwrap_or((url, ""));
    if scheme == "dnstap+file" {
        if !rest.starts_with('/') {
            return Err(invalid(
                format!("{key}.url"),
                format!(
                    "expected an absolute path after the scheme (dnstap+file:///var/lib/tapbus/dns.fstrm), got {rest:?}"
                ),
            ));
        }
        let path = PathBuf::from(rest);
        let stem = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if stem.is_empty() || rest.ends_with('/') {
            return Err(invalid(
                format!("{key}.url"),
                format!("{rest:?} names no file (dnstap+file:///var/lib/tapbus/dns.fstrm)"),
            ));
        }
        if let Some(n) = o.rotate_size
            && n == 0
        {
            return Err(invalid(
                format!("{key}.rotate_size"),
                "must be at least 1 (bytes)",
            ));
        }
        if let Some(d) = o.rotate_age
            && d < Duration::from_secs(1)
        {
            return Err(invalid(format!("{key}.rotate_age"), "must be at least 1s"));
        }
        let keep = o.keep.unwrap_or(10);
        if keep == 0 {
            return Err(invalid(
                format!("{key}.keep"),
                "must be at least 1 (rotated files kept besides the one being written)",
            ));
        }
        return Ok(OutputKind::DnstapFile(DnstapFileSpec {
            path,
            rotate_size: o.rotate_size,
            rotate_age: o.rotate_age,
            keep,
        }));
    }
    let target = match scheme {
        "dnstap+tcp" => {
            if rest.is_empty() || rest.contains('/') || !rest.contains(':') {
                return Err(invalid(
                    format!("{key}.url"),
                    format!(
                        "expected HOST:PORT after the scheme (dnstap+tcp://127.0.0.1:6000), got {rest:?}"
                    ),
                ));
            }
            RelayTarget::Tcp(rest.to_string())
        }
        _ => {
            if !rest.starts_with('/') || rest.ends_with('/') {
                return Err(invalid(
                    format!("{key}.url"),
                    format!(
                        "expected an absolute socket path after the scheme (dnstap+unix:///run/dnstap.sock), got {rest:?}"
                    ),
                ));
            }
            RelayTarget::Unix(PathBuf::from(rest))
        }
    };
    let backoff = Backoff {
        min: o.reconnect_min.unwrap_or(Duration::from_millis(100)),
        max: o.reconnect_max.unwrap_or(Duration::from_secs(10)),
    };
    if backoff.min.is_zero() {
        return Err(invalid(format!("{key}.reconnect_min"), "must be > 0"));
    }
    if backoff.max < backoff.min {
        return Err(invalid(
            format!("{key}.reconnect_max"),
            "must be at least reconnect_min",
        ));
    }
    Ok(OutputKind::DnstapRelay(DnstapRelaySpec { target, backoff }))
}

/// `templated`: the output publishes on its `subject` template (the broker's outputs; a
/// consumer's records and batches have subjects of their own).
fn validate_output_at(
    key: &str,
    name: &str,
    o: &OutputConfig,
    templated: bool,
) -> Result<OutputSpec, ConfigError> {
    let key = key.to_string();
    if o.connect.url.trim().is_empty() {
        return Err(invalid(
            format!("{key}.url"),
            "missing: every output needs a url (or give it with --output URL, which fills the output named after its scheme)",
        ));
    }
    let o = &with_url_keys(&key, o)?;
    let url = o.connect.url.trim();
    let queue = o.queue.unwrap_or(16384);
    if queue == 0 {
        return Err(invalid(format!("{key}.queue"), "must be at least 1"));
    }
    let scheme = scheme_of(url);
    // Publish keys that only some outputs understand (connection keys are checked by
    // `ConnectConfig::validate`).
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
    let nats = ["nats", "tls"];
    only(
        "subject",
        o.subject.is_some(),
        &["nats", "tls", "redis", "rediss"],
        "NATS and Redis",
    )?;
    only("topic", o.topic.is_some(), &mqtt, "MQTT")?;
    only("qos", o.qos.is_some(), &mqtt, "MQTT")?;
    for (field, set) in [
        ("jetstream", o.jetstream.is_some()),
        ("stream", o.stream.is_some()),
        ("stream_subjects", o.stream_subjects.is_some()),
        ("stream_max_bytes", o.stream_max_bytes.is_some()),
        ("stream_max_age", o.stream_max_age.is_some()),
        ("stream_max_msgs", o.stream_max_msgs.is_some()),
        ("stream_replicas", o.stream_replicas.is_some()),
        ("ack_window", o.ack_window.is_some()),
        ("marker_timeout", o.marker_timeout.is_some()),
    ] {
        only(field, set, &nats, "NATS")?;
    }
    only("mode", o.mode.is_some(), &redis, "Redis")?;
    only("key", o.key.is_some(), &redis, "Redis")?;
    only("max_len", o.max_len.is_some(), &redis, "Redis")?;
    let file = ["dnstap+file"];
    let relay = ["dnstap+tcp", "dnstap+unix", "tcp+json"];
    only("rotate_size", o.rotate_size.is_some(), &file, "dnstap+file")?;
    only("rotate_age", o.rotate_age.is_some(), &file, "dnstap+file")?;
    only("keep", o.keep.is_some(), &file, "dnstap+file")?;
    only(
        "reconnect_min",
        o.reconnect_min.is_some(),
        &relay,
        "dnstap+tcp, dnstap+unix and tcp+json",
    )?;
    only(
        "reconnect_max",
        o.reconnect_max.is_some(),
        &relay,
        "dnstap+tcp, dnstap+unix and tcp+json",
    )?;
    let kind = if is_dnstap_scheme(scheme) {
        if !templated {
            return Err(invalid(
                format!("{key}.url"),
                "a dnstap output is for the broker's events only",
            ));
        }
        validate_dnstap(&key, url, o)?
    } else if url == "stdout" || url == "stdout://" {
        if o.connect
            != (ConnectConfig {
                url: o.connect.url.clone(),
                ..Default::default()
            })
        {
            return Err(invalid(
                key.clone(),
                "the stdout output takes no connection keys",
            ));
        }
        OutputKind::Stdout
    } else if scheme == "tcp+json" {
        let rest = url.trim_start_matches("tcp+json://");
        if o.connect
            != (ConnectConfig {
                url: o.connect.url.clone(),
                ..Default::default()
            })
        {
            return Err(invalid(
                key.clone(),
                "a tcp+json output takes no connection keys (plain TCP)",
            ));
        }
        let backoff = Backoff {
            min: o.reconnect_min.unwrap_or(Duration::from_millis(100)),
            max: o.reconnect_max.unwrap_or(Duration::from_secs(10)),
        };
        if backoff.min.is_zero() || backoff.max < backoff.min {
            return Err(invalid(
                format!("{key}.reconnect_max"),
                "reconnect_min must be > 0 and reconnect_max >= reconnect_min",
            ));
        }
        OutputKind::TcpJson {
            addr: host_port(&key, rest)?,
            backoff,
        }
    } else if url.is_empty() {
        return Err(invalid(format!("{key}.url"), "missing"));
    } else if scheme == "jetstream" {
        return Err(invalid(
            format!("{key}.url"),
            "jetstream:// is a subscriber URL; a JetStream output is nats://HOST:PORT?jetstream=true&stream=DNSTAP (or jetstream = true in its table)",
        ));
    } else {
        match o
            .connect
            .validate(&key, &format!("tapbus-broker-{name}"))
            .map_err(|e| match e {
                ConfigError::Invalid { key: k, msg } if msg.starts_with("unsupported bus") => {
                    invalid(
                        k,
                        format!(
                            "unsupported output {url:?}: use nats://, mqtt://, mqtts://, redis://, rediss://, dnstap+file://, dnstap+tcp://, dnstap+unix://, tcp+json:// or stdout"
                        ),
                    )
                }
                other => other,
            })? {
            BusConnect::Nats(c) => OutputKind::Nats(validate_nats(&key, c, o, templated)?),
            BusConnect::Mqtt(c) => OutputKind::Mqtt(validate_mqtt(&key, c, o)?),
            BusConnect::Redis(c) => OutputKind::Redis(validate_redis(&key, c, o)?),
        }
    };
    let filter = match o.filter.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(f) => Some(
            tapbus_event::Filter::parse(f)
                .map_err(|e| invalid(format!("{key}.filter"), format!("{f:?}: {e}")))?,
        ),
    };
    let privacy = match &o.privacy {
        Some(p) if templated => Some(p.validate(&format!("{key}.privacy"))?),
        Some(_) => {
            return Err(invalid(
                format!("{key}.privacy"),
                "only applies to the broker's outputs (tapbus-loki has its own privacy table)",
            ));
        }
        None => None,
    }
    .filter(|p| !p.is_clear());
    Ok(OutputSpec {
        name: name.to_string(),
        kind,
        queue,
        filter,
        privacy,
    })
}

fn validate_mqtt(
    key: &str,
    connect: MqttConnect,
    o: &OutputConfig,
) -> Result<MqttSpec, ConfigError> {
    let t = o.topic.as_deref().unwrap_or(Template::DEFAULT_MQTT);
    let topic = Template::parse(t, Flavor::Mqtt)
        .map_err(|e| invalid(format!("{key}.topic"), format!("{t:?}: {e}")))?;
    let qos = o.qos.unwrap_or(0);
    if qos > 1 {
        return Err(invalid(format!("{key}.qos"), "must be 0 or 1"));
    }
    Ok(MqttSpec {
        connect,
        topic,
        qos,
    })
}

fn validate_nats(
    key: &str,
    connect: NatsConnect,
    o: &OutputConfig,
    templated: bool,
) -> Result<NatsSpec, ConfigError> {
    let t = o.subject.as_deref().unwrap_or(Template::DEFAULT_NATS);
    let subject = Template::parse(t, Flavor::Nats)
        .map_err(|e| invalid(format!("{key}.subject"), format!("{t:?}: {e}")))?;
    let js_keys = [
        ("stream", o.stream.is_some()),
        ("stream_subjects", o.stream_subjects.is_some()),
        ("stream_max_bytes", o.stream_max_bytes.is_some()),
        ("stream_max_age", o.stream_max_age.is_some()),
        ("stream_max_msgs", o.stream_max_msgs.is_some()),
        ("stream_replicas", o.stream_replicas.is_some()),
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
        if o.stream_replicas.is_some_and(|r| !(1..=5).contains(&r)) {
            return Err(invalid(
                format!("{key}.stream_replicas"),
                "must be between 1 and 5 (JetStream's limit)",
            ));
        }
        // Some subject the template renders must be stored by the stream, or every event
        // would be refused at run time (and dropped as publish_error). A stream that stores
        // only some of them (`dnstap.*.client_query`) is allowed: the others are counted
        // as publish_error (an output `filter` keeps them out instead).
        let tokens = subject.tokens();
        if templated && !subjects.iter().any(|f| overlaps(f, &tokens)) {
            return Err(invalid(
                format!("{key}.stream_subjects"),
                format!(
                    "{subjects:?} stores none of the subjects {:?}: every event would be refused by the stream (e.g. add \"{}.>\")",
                    subject.to_string(),
                    tokens
                        .first()
                        .cloned()
                        .flatten()
                        .unwrap_or_else(|| "dnstap".into())
                ),
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
            replicas: o.stream_replicas,
            ack_window,
        })
    } else {
        if let Some((f, _)) = js_keys.iter().find(|(_, s)| *s) {
            return Err(invalid(format!("{key}.{f}"), "needs jetstream = true"));
        }
        None
    };
    if jetstream.is_some() && o.marker_timeout.is_some() {
        return Err(invalid(
            format!("{key}.marker_timeout"),
            "only applies to NATS core outputs (JetStream confirms with PubAcks)",
        ));
    }
    let marker_timeout = o.marker_timeout.unwrap_or(DEFAULT_MARKER_TIMEOUT);
    if marker_timeout < Duration::from_millis(100) {
        return Err(invalid(
            format!("{key}.marker_timeout"),
            "must be at least 100ms",
        ));
    }
    Ok(NatsSpec {
        connect,
        subject,
        jetstream,
        marker_timeout,
    })
}

/// Whether the NATS subject filter `filter` (`dnstap.>`, `a.*.c`) matches some subject of
/// the template tokens (`None`: a token that varies, so it may match any literal).
fn overlaps(filter: &str, tokens: &[Option<String>]) -> bool {
    let f: Vec<&str> = filter.trim().split('.').collect();
    for (i, ft) in f.iter().enumerate() {
        if *ft == ">" {
            return i < tokens.len();
        }
        match tokens.get(i) {
            None => return false,
            Some(_) if *ft == "*" => {}
            Some(None) => {}
            Some(Some(t)) if t == ft => {}
            Some(_) => return false,
        }
    }
    f.len() == tokens.len()
}

fn validate_redis(
    key: &str,
    connect: RedisConnect,
    o: &OutputConfig,
) -> Result<RedisSpec, ConfigError> {
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
    Ok(RedisSpec { connect, mode })
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
    fn a_numeric_socket_group_from_the_environment_or_the_file() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "b.toml",
                "[inputs.a]\nurl = \"unix:///run/a.sock\"\nsocket_group = 10053\n",
            )?;
            let get = || -> Result<Option<String>, figment::Error> {
                let c: BrokerConfig = load(Some(Path::new("b.toml")), BrokerConfig::default())
                    .map_err(|e| e.to_string())?;
                Ok(c.inputs["a"].socket_group.clone())
            };
            assert_eq!(get()?.as_deref(), Some("10053"));
            jail.set_env("TAPBUS_INPUTS__A__SOCKET_GROUP", "10054");
            assert_eq!(get()?.as_deref(), Some("10054"));
            jail.set_env("TAPBUS_INPUTS__A__SOCKET_GROUP", "bind");
            assert_eq!(get()?.as_deref(), Some("bind"));
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
            assert_eq!(c.outputs["nats"].connect.url, "nats://10.9.9.9:4223");
            Ok(())
        });
    }

    /// Loads with the built-in defaults given and applies the flags.
    #[allow(clippy::result_large_err)]
    fn load_with_flags(
        file: Option<&Path>,
        defaults: &BrokerConfig,
        inputs: &[&str],
        outputs: &[&str],
    ) -> Result<BrokerConfig, figment::Error> {
        let mut c = load(file, defaults.clone()).map_err(|e| e.to_string())?;
        let inputs: Vec<String> = inputs.iter().map(|s| s.to_string()).collect();
        let outputs: Vec<String> = outputs.iter().map(|s| s.to_string()).collect();
        c.apply_flags(defaults, &inputs, &outputs);
        Ok(c)
    }

    fn urls_in(c: &BrokerConfig) -> (Vec<String>, Vec<String>) {
        (
            c.inputs
                .iter()
                .map(|(n, i)| format!("{n}={}", i.url))
                .collect(),
            c.outputs
                .iter()
                .map(|(n, o)| format!("{n}={}", o.connect.url))
                .collect(),
        )
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn an_output_flag_keeps_the_inputs_from_the_environment() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("TAPBUS_INPUTS__DNS__URL", "unix:///run/dnstap.sock");
            let c = load_with_flags(None, &BrokerConfig::default(), &[], &["stdout"])?;
            let (i, o) = urls_in(&c);
            assert_eq!(i, ["dns=unix:///run/dnstap.sock"]);
            assert_eq!(o, ["stdout=stdout"]);
            assert!(c.validate().is_ok(), "{:?}", c.validate().err());
            // And the other way round: an input flag keeps the environment's outputs.
            jail.set_env("TAPBUS_OUTPUTS__BUS__URL", "nats://10.0.0.1:4222");
            let c = load_with_flags(
                None,
                &BrokerConfig::default(),
                &["tcp://127.0.0.1:6000"],
                &[],
            )?;
            let (i, o) = urls_in(&c);
            assert_eq!(
                i,
                ["dns=unix:///run/dnstap.sock", "tcp=tcp://127.0.0.1:6000"]
            );
            assert_eq!(o, ["bus=nats://10.0.0.1:4222"]);
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn flags_add_to_what_the_file_configured() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "b.toml",
                "[inputs.local]\nurl = \"unix:///run/a.sock\"\n[outputs.bus]\nurl = \"nats://10.0.0.1:4222\"\n",
            )?;
            let c = load_with_flags(
                Some(Path::new("b.toml")),
                &BrokerConfig::default(),
                &[],
                &["stdout"],
            )?;
            let (i, o) = urls_in(&c);
            assert_eq!(i, ["local=unix:///run/a.sock"]);
            assert_eq!(o, ["bus=nats://10.0.0.1:4222", "stdout=stdout"]);
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn a_flag_replaces_only_the_built_in_defaults_of_its_kind() {
        figment::Jail::expect_with(|jail| {
            let mut defaults = BrokerConfig::default();
            defaults.add_input_url("unix:///run/default.sock");
            defaults.add_output_url("nats://127.0.0.1:4222");
            // Nothing else configured: the flag replaces the default output, and the
            // default input stays.
            let c = load_with_flags(None, &defaults, &[], &["stdout"])?;
            let (i, o) = urls_in(&c);
            assert_eq!(i, ["unix=unix:///run/default.sock"]);
            assert_eq!(o, ["stdout=stdout"]);
            // The environment changed the default output: it is configured, so it stays.
            jail.set_env("TAPBUS_OUTPUTS__NATS__URL", "nats://10.0.0.1:4222");
            let c = load_with_flags(None, &defaults, &[], &["stdout"])?;
            let (_, o) = urls_in(&c);
            assert_eq!(o, ["nats=nats://10.0.0.1:4222", "stdout=stdout"]);
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn environment_keys_complete_the_entry_a_flag_names() {
        figment::Jail::expect_with(|jail| {
            // `--output nats://...` and TAPBUS_OUTPUTS__NATS__JETSTREAM=true: one output.
            jail.set_env("TAPBUS_OUTPUTS__NATS__JETSTREAM", "true");
            jail.set_env("TAPBUS_INPUTS__DIAL_TCP__RECONNECT_MAX", "3s");
            let c = load_with_flags(
                None,
                &BrokerConfig::default(),
                &["dial+tcp://127.0.0.1:6000"],
                &["nats://127.0.0.1:4222"],
            )?;
            let (i, o) = urls_in(&c);
            assert_eq!(i, ["dial_tcp=dial+tcp://127.0.0.1:6000"]);
            assert_eq!(o, ["nats=nats://127.0.0.1:4222"]);
            let s = c.validate().expect("valid");
            let OutputKind::Nats(n) = &s.outputs[0].kind else {
                panic!("nats")
            };
            assert_eq!(
                n.jetstream.as_ref().map(|j| j.stream.as_str()),
                Some("DNSTAP")
            );
            // Without the flag, the url-less entry is named as such.
            jail.clear_env();
            jail.set_env("TAPBUS_OUTPUTS__NATS__JETSTREAM", "true");
            let c = load_with_flags(None, &BrokerConfig::default(), &["tcp://127.0.0.1:1"], &[])?;
            let e = c.validate().expect_err("no url").to_string();
            assert!(e.starts_with("outputs.nats.url: missing"), "{e}");
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
    fn raw_dnstap_outputs_from_urls_and_tables() {
        let one = |url: &str| {
            let mut c = BrokerConfig::default();
            c.add_input_url("tcp://127.0.0.1:6000");
            c.add_output_url(url);
            c.validate().map(|s| s.outputs[0].kind.clone())
        };
        assert_eq!(
            one("dnstap+file:///var/lib/tapbus/dns.fstrm?rotate_size=1000&rotate_age=1h&keep=3")
                .expect("valid"),
            OutputKind::DnstapFile(DnstapFileSpec {
                path: "/var/lib/tapbus/dns.fstrm".into(),
                rotate_size: Some(1000),
                rotate_age: Some(Duration::from_secs(3600)),
                keep: 3,
            })
        );
        assert_eq!(
            one("dnstap+file:///d/x.fstrm").expect("valid"),
            OutputKind::DnstapFile(DnstapFileSpec {
                path: "/d/x.fstrm".into(),
                rotate_size: None,
                rotate_age: None,
                keep: 10,
            })
        );
        assert_eq!(
            one("dnstap+tcp://127.0.0.1:6001?reconnect_max=2s").expect("valid"),
            OutputKind::DnstapRelay(DnstapRelaySpec {
                target: RelayTarget::Tcp("127.0.0.1:6001".into()),
                backoff: Backoff {
                    min: Duration::from_millis(100),
                    max: Duration::from_secs(2)
                },
            })
        );
        let OutputKind::DnstapRelay(r) = one("dnstap+unix:///run/d.sock").expect("valid") else {
            panic!("not a relay");
        };
        assert_eq!(r.target, RelayTarget::Unix("/run/d.sock".into()));
        assert!(OutputKind::DnstapRelay(r).is_raw());
        for (url, key) in [
            (
                "dnstap+file:///d/x.fstrm?keep=0",
                "outputs.dnstap_file.keep:",
            ),
            (
                "dnstap+file:///d/x.fstrm?rotate_size=0",
                "outputs.dnstap_file.rotate_size:",
            ),
            (
                "dnstap+file:///d/x.fstrm?rotate_age=10ms",
                "outputs.dnstap_file.rotate_age:",
            ),
            (
                "dnstap+file:///d/x.fstrm?rotate_size=1k",
                "outputs.dnstap_file.url:",
            ),
            (
                "dnstap+file:///d/x.fstrm?keep=1&keep=2",
                "outputs.dnstap_file.url:",
            ),
            ("dnstap+file:///d/", "outputs.dnstap_file.url:"),
            (
                "dnstap+file:///d/x.fstrm?subject=a",
                "outputs.dnstap_file.url:",
            ),
            (
                "dnstap+tcp://127.0.0.1:6001?keep=2",
                "outputs.dnstap_tcp.keep:",
            ),
            ("dnstap+tcp://nohost", "outputs.dnstap_tcp.url:"),
            ("dnstap+unix://rel.sock", "outputs.dnstap_unix.url:"),
            (
                "dnstap+unix:///s?reconnect_min=0s",
                "outputs.dnstap_unix.reconnect_min:",
            ),
            ("nats://127.0.0.1:4222?keep=2", "outputs.nats.url:"),
        ] {
            let e = one(url).expect_err(url).to_string();
            assert!(e.starts_with(key), "{url}: {e}");
            assert_eq!(
                e.matches(key.trim_end_matches(':')).count(),
                1,
                "{url}: {e}"
            );
        }
        // Table keys: a file key on a relay, privacy on a raw output.
        let mut c = BrokerConfig::default();
        c.add_input_url("tcp://127.0.0.1:6000");
        c.add_output_url("dnstap+tcp://127.0.0.1:6001");
        if let Some(o) = c.outputs.get_mut("dnstap_tcp") {
            o.rotate_age = Some(Duration::from_secs(60));
        }
        assert!(err_of(&c).starts_with("outputs.dnstap_tcp.rotate_age:"));
        let mut c = BrokerConfig::default();
        c.add_input_url("tcp://127.0.0.1:6000");
        c.add_output_url("stdout");
        if let Some(o) = c.outputs.get_mut("stdout") {
            o.keep = Some(2);
        }
        assert!(err_of(&c).starts_with("outputs.stdout.keep:"));
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn drain_and_marker_timeouts() {
        // Defaults.
        let mut c = BrokerConfig::default();
        c.add_input_url("tcp://127.0.0.1:6000");
        c.add_output_url("nats://127.0.0.1:4222");
        c.add_output_url("stdout");
        let s = c.validate().expect("valid");
        assert_eq!(s.drain_timeout, Duration::from_secs(20));
        let nats = |s: &BrokerSettings| match &s.outputs[0].kind {
            OutputKind::Nats(n) => n.marker_timeout,
            other => panic!("{other:?}"),
        };
        assert_eq!(nats(&s), Duration::from_secs(10));
        // From a file and the environment, in humantime.
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "t.toml",
                "drain_timeout = \"45s\"\n[inputs.a]\nurl = \"tcp://127.0.0.1:1\"\n\
                 [outputs.n]\nurl = \"nats://127.0.0.1:4222\"\nmarker_timeout = \"2500ms\"\n",
            )?;
            let c: BrokerConfig = load(Some(Path::new("t.toml")), BrokerConfig::default())
                .map_err(|e| e.to_string())?;
            let s = c.validate().map_err(|e| e.to_string())?;
            assert_eq!(s.drain_timeout, Duration::from_secs(45));
            assert_eq!(nats(&s), Duration::from_millis(2500));
            jail.set_env("TAPBUS_DRAIN_TIMEOUT", "1m");
            let c: BrokerConfig = load(Some(Path::new("t.toml")), BrokerConfig::default())
                .map_err(|e| e.to_string())?;
            assert_eq!(c.drain_timeout, Duration::from_secs(60));
            jail.set_env("TAPBUS_DRAIN_TIMEOUT", "soon");
            let e = load(Some(Path::new("t.toml")), BrokerConfig::default())
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            // figment names the variable: `key "DRAIN_TIMEOUT" in TAPBUS_ ...`.
            assert!(e.to_lowercase().contains("drain_timeout"), "{e}");
            Ok(())
        });
        // Bad values and misplaced keys are named.
        c.drain_timeout = Duration::ZERO;
        assert!(err_of(&c).starts_with("drain_timeout:"), "{}", err_of(&c));
        c.drain_timeout = DEFAULT_DRAIN_TIMEOUT;
        let set = |c: &mut BrokerConfig, out: &str, d: Duration| {
            if let Some(o) = c.outputs.get_mut(out) {
                o.marker_timeout = Some(d);
            }
        };
        set(&mut c, "nats", Duration::from_millis(10));
        assert!(
            err_of(&c).starts_with("outputs.nats.marker_timeout: must be at least 100ms"),
            "{}",
            err_of(&c)
        );
        set(&mut c, "nats", Duration::from_secs(3));
        if let Some(o) = c.outputs.get_mut("nats") {
            o.jetstream = Some(true);
        }
        assert!(
            err_of(&c).starts_with("outputs.nats.marker_timeout: only applies to NATS core"),
            "{}",
            err_of(&c)
        );
        if let Some(o) = c.outputs.get_mut("nats") {
            o.jetstream = None;
            o.marker_timeout = None;
        }
        set(&mut c, "stdout", Duration::from_secs(3));
        assert!(
            err_of(&c).starts_with("outputs.stdout.marker_timeout: only applies to NATS"),
            "{}",
            err_of(&c)
        );
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
        assert_eq!(n.connect.auth, NatsAuth::None);
        assert!(!n.connect.require_tls && n.jetstream.is_none());

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
            o.connect.username = Some("a".into());
            o.connect.password = Some("b".into());
        }));
        assert_eq!(
            n.connect.auth,
            NatsAuth::UserPassword {
                user: "a".into(),
                password: "b".into()
            }
        );
        assert_eq!(
            ok(&set(&|o| o.connect.token = Some("t".into())))
                .connect
                .auth,
            NatsAuth::Token("t".into())
        );
        let e = err_of(&set(&|o| {
            o.connect.username = Some("a".into());
            o.connect.password = Some("b".into());
            o.connect.token = Some("t".into());
        }));
        assert!(e.starts_with("outputs.nats.token: only one"), "{e}");
        let e = err_of(&set(&|o| o.connect.username = Some("a".into())));
        assert!(
            e.starts_with("outputs.nats.username: needs a password"),
            "{e}"
        );
        let e = err_of(&set(&|o| {
            o.connect.creds = Some("/nonexistent.creds".into())
        }));
        assert!(e.starts_with("outputs.nats.creds:"), "{e}");
        let e = err_of(&set(&|o| {
            o.connect.tls_cert = Some("/nonexistent.pem".into())
        }));
        assert!(e.starts_with("outputs.nats.tls_cert:"), "{e}");
        let e = err_of(&set(&|o| o.stream = Some("X".into())));
        assert!(e.starts_with("outputs.nats.stream: needs jetstream"), "{e}");

        let n = ok(&set(&|o| o.jetstream = Some(true)));
        let js = n.jetstream.expect("jetstream");
        assert_eq!(js.stream, "DNSTAP");
        assert_eq!(js.subjects, vec!["dnstap.>".to_string()]);
        assert_eq!(js.ack_window, 1024);
        assert_eq!(js.replicas, None);
        let n = ok(&set(&|o| {
            o.jetstream = Some(true);
            o.stream_replicas = Some(3);
        }));
        assert_eq!(n.jetstream.expect("jetstream").replicas, Some(3));
        let e = err_of(&set(&|o| {
            o.jetstream = Some(true);
            o.stream_replicas = Some(7);
        }));
        assert!(e.starts_with("outputs.nats.stream_replicas:"), "{e}");
        let e = err_of(&set(&|o| o.stream_replicas = Some(3)));
        assert!(
            e.starts_with("outputs.nats.stream_replicas: needs jetstream"),
            "{e}"
        );
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
        assert!(ok(&t).connect.require_tls);

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
    fn output_filters_are_parsed_and_bad_ones_named() {
        let mut c = BrokerConfig::default();
        c.add_input_url("tcp://127.0.0.1:6000");
        c.add_output_url("stdout");
        for o in c.outputs.values_mut() {
            o.filter = Some("operation=CLIENT_RESPONSE".into());
        }
        let s = c.validate().expect("valid");
        assert_eq!(
            s.outputs[0]
                .filter
                .as_ref()
                .map(|f| f.to_string())
                .as_deref(),
            Some("operation=CLIENT_RESPONSE")
        );
        for o in c.outputs.values_mut() {
            o.filter = Some("rcode=NXDOMIAN".into());
        }
        assert!(err_of(&c).starts_with("outputs.stdout.filter:"));
    }

    /// One output from a URL alone: its validated spec, or the error.
    fn output(url: &str) -> Result<OutputSpec, String> {
        let mut c = BrokerConfig::default();
        c.add_input_url("tcp://127.0.0.1:6000");
        c.add_output_url(url);
        c.validate()
            .map(|s| s.outputs[0].clone())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn output_urls_carry_their_keys() {
        let OutputKind::Nats(n) = output("nats://127.0.0.1:4222?jetstream=true&stream=DNS")
            .expect("valid")
            .kind
        else {
            panic!("nats")
        };
        let js = n.jetstream.expect("jetstream");
        assert_eq!(
            (js.stream.as_str(), js.subjects.clone()),
            ("DNS", vec!["dnstap.>".to_string()])
        );
        assert_eq!(n.connect.servers, "nats://127.0.0.1:4222");
        // The path is the subject template (braces percent-encoded or not).
        let OutputKind::Nats(n) = output(
            "nats://127.0.0.1:4222/dns.%7Bidentity%7D.{operation}?jetstream=1&stream_subjects=dns.>,x.>&stream_max_age=7d",
        )
        .expect("valid")
        .kind
        else {
            panic!("nats")
        };
        assert_eq!(n.subject.to_string(), "dns.{identity}.{operation}");
        let js = n.jetstream.expect("jetstream");
        assert_eq!(js.subjects, ["dns.>", "x.>"]);
        assert_eq!(js.max_age, Some(Duration::from_secs(7 * 86400)));
        let OutputKind::Redis(r) =
            output("redis://127.0.0.1:6379/2?mode=list&key=dnstap&max_len=50")
                .expect("valid")
                .kind
        else {
            panic!("redis")
        };
        assert_eq!(
            r.mode,
            RedisMode::List {
                key: "dnstap".into(),
                max_len: 50
            }
        );
        assert_eq!(r.connect.url, "redis://127.0.0.1:6379/2");
        let OutputKind::Mqtt(m) = output("mqtt://127.0.0.1:1883/dns/{identity}?qos=1")
            .expect("valid")
            .kind
        else {
            panic!("mqtt")
        };
        assert_eq!((m.topic.to_string().as_str(), m.qos), ("dns/{identity}", 1));
        let o = output("nats://127.0.0.1:4222?queue=7&filter=rcode%3DNXDOMAIN").expect("valid");
        assert_eq!(o.queue, 7);
        assert_eq!(
            o.filter.map(|f| f.to_string()).as_deref(),
            Some("rcode=NXDOMAIN")
        );
        // Unknown parameters, bad values and disagreements are refused, naming the key.
        let e = output("redis://127.0.0.1:6379?mode=list&keys=dnstap").expect_err("typo");
        assert!(
            e.starts_with("outputs.redis.url: unknown parameter \"keys\""),
            "{e}"
        );
        let e = output("nats://127.0.0.1:4222?jetstream=maybe").expect_err("bad bool");
        assert!(
            e.starts_with("outputs.nats.url: jetstream=\"maybe\""),
            "{e}"
        );
        let e = output("mqtt://127.0.0.1?qos=2").expect_err("qos");
        assert!(e.starts_with("outputs.mqtt.qos: must be 0 or 1"), "{e}");
        let e = output("nats://127.0.0.1:4222?stream=X").expect_err("no jetstream");
        assert_eq!(e, "outputs.nats.stream: needs jetstream = true");
        let mut c = BrokerConfig::default();
        c.add_input_url("tcp://127.0.0.1:6000");
        c.add_output_url("nats://127.0.0.1:4222/a.b");
        if let Some(o) = c.outputs.values_mut().next() {
            o.subject = Some("c.d".into());
        }
        let e = err_of(&c);
        assert!(
            e.starts_with("outputs.nats.subject: the URL sets \"a.b\" and the key \"c.d\""),
            "{e}"
        );
    }

    #[test]
    fn a_stream_must_store_what_the_output_publishes() {
        let e = output("nats://127.0.0.1:4222/my.subject?jetstream=true").expect_err("not covered");
        assert!(e.starts_with("outputs.nats.stream_subjects: [\"dnstap.>\"] stores none of the subjects \"my.subject\""), "{e}");
        assert!(
            output("nats://127.0.0.1:4222/my.subject?jetstream=true&stream_subjects=my.>").is_ok()
        );
        assert!(
            output("nats://127.0.0.1:4222/my.subject?jetstream=true&stream_subjects=my.subject")
                .is_ok()
        );
        assert!(
            output("nats://127.0.0.1:4222/a.{identity}?jetstream=true&stream_subjects=a.*").is_ok()
        );
        let e = output("nats://127.0.0.1:4222/a.{identity}.x?jetstream=true&stream_subjects=a.*")
            .expect_err("too short");
        assert!(e.contains("stores none"), "{e}");
        // Some identities stored: allowed (the others count as publish_error).
        assert!(
            output("nats://127.0.0.1:4222/a.{identity}?jetstream=true&stream_subjects=a.b").is_ok()
        );
        let e = output("nats://127.0.0.1:4222/b.{identity}?jetstream=true&stream_subjects=a.*")
            .expect_err("disjoint");
        assert!(e.contains("stores none"), "{e}");
        assert!(
            output("nats://127.0.0.1:4222/a-{identity}.b?jetstream=true&stream_subjects=*.b")
                .is_ok()
        );
        assert!(
            output("nats://127.0.0.1:4222/a?jetstream=true&stream_subjects=a.>").is_err(),
            "> needs a token"
        );
        // A consumer's records have subjects of their own: no template to cover.
        let mut o = OutputConfig::from_url("nats://127.0.0.1:4222?jetstream=true&stream=REDUCED");
        o.stream_subjects = Some(vec!["tapbus.reduced.>".into()]);
        assert!(o.validate("output", "records").is_ok());
    }

    #[test]
    fn credentials_in_urls_are_used_and_kept_out_of_the_url() {
        let OutputKind::Nats(n) = output("nats://tapbus:s%40cret@127.0.0.1:4222")
            .expect("valid")
            .kind
        else {
            panic!("nats")
        };
        assert_eq!(
            n.connect.auth,
            NatsAuth::UserPassword {
                user: "tapbus".into(),
                password: "s@cret".into()
            }
        );
        assert_eq!(n.connect.servers, "nats://127.0.0.1:4222");
        let OutputKind::Nats(n) = output("nats://tok@127.0.0.1:4222,nats://tok@127.0.0.1:4223")
            .expect("valid")
            .kind
        else {
            panic!("nats")
        };
        assert_eq!(n.connect.auth, NatsAuth::Token("tok".into()));
        assert_eq!(
            n.connect.servers,
            "nats://127.0.0.1:4222,nats://127.0.0.1:4223"
        );
        let e = output("nats://a:b@127.0.0.1:4222,nats://c:d@127.0.0.1:4223").expect_err("two");
        assert!(e.contains("different credentials"), "{e}");
        let mut c = BrokerConfig::default();
        c.add_input_url("tcp://127.0.0.1:6000");
        c.add_output_url("nats://a:b@127.0.0.1:4222");
        if let Some(o) = c.outputs.values_mut().next() {
            o.connect.token = Some("t".into());
        }
        assert_eq!(
            err_of(&c),
            "outputs.nats.token: the URL carries credentials too: give them in one place"
        );
        let OutputKind::Mqtt(m) = output("mqtts://dns:pw@broker.example:8883/t")
            .expect("valid")
            .kind
        else {
            panic!("mqtt")
        };
        assert_eq!(
            (m.connect.username.as_deref(), m.connect.password.as_deref()),
            (Some("dns"), Some("pw"))
        );
        // A subscriber URL too.
        let i = subscribe::InputConfig::from_url("jetstream://u:p@127.0.0.1:4222/DNSTAP?durable=x")
            .validate("input", "t")
            .expect("valid");
        let BusConnect::Nats(n) = &i.connect else {
            panic!("nats")
        };
        assert_eq!(
            (n.servers.as_str(), &n.auth),
            (
                "nats://127.0.0.1:4222",
                &NatsAuth::UserPassword {
                    user: "u".into(),
                    password: "p".into()
                }
            )
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
        assert_eq!(
            (m.connect.port, m.qos, m.connect.version, m.connect.tls),
            (1883, 0, 3, false)
        );
        assert_eq!(m.connect.max_packet_size, 4 << 20);
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
            set(&|o| o.connect.mqtt_version = Some("4.0".into()))
                .starts_with("outputs.mqtt.mqtt_version:")
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
            o.connect.url = "redis://127.0.0.1:6379/x".into();
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
        c.add_input_url("file:///dev/null");
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
