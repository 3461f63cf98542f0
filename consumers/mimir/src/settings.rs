//! tapbus-mimir's configuration: the file (`--config`), then `TAPBUS_*`, then the flags,
//! validated into [`Settings`] with errors that name the key once.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tapbus_config::{ConfigError, ConsumerInputConfig};
use tapbus_consumer::listen_addr;
use tapbus_consumer::sink::http::Target;

const PROGRAM: &str = "tapbus-mimir";

/// What the command line sets over the file and the environment.
#[derive(Debug, Default, Clone, Copy)]
pub struct Flags<'a> {
    pub config: Option<&'a std::path::Path>,
    pub input: Option<&'a str>,
    pub url: Option<&'a str>,
    pub tenant: Option<&'a str>,
    pub metrics_listen: Option<&'a str>,
}

/// The configuration file (`--config`, then `TAPBUS_*`, then the flags).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub input: ConsumerInputConfig,
    /// Remote-write endpoint (http or https).
    pub url: String,
    /// `X-Scope-OrgID` (Mimir multi-tenancy); empty: not sent.
    pub tenant: String,
    /// HTTP basic auth.
    pub username: String,
    pub password: String,
    /// `Authorization: Bearer ...` (instead of basic auth).
    pub bearer_token: String,
    /// Per request.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// `/metrics` and `/health`; "" disables.
    pub metrics_listen: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            input: ConsumerInputConfig::from_url("nats://127.0.0.1:4222/tapbus.metrics.>"),
            url: String::new(),
            tenant: String::new(),
            username: String::new(),
            password: String::new(),
            bearer_token: String::new(),
            timeout: Duration::from_secs(30),
            metrics_listen: "127.0.0.1:9637".into(),
        }
    }
}

/// A validated configuration.
pub struct Settings {
    pub target: Target,
    pub input: tapbus_config::ConsumerInputSpec,
    pub url: reqwest::Url,
    pub cfg: Config,
    pub listen: Option<std::net::SocketAddr>,
}

/// Loads the file and the environment, applies the flags and validates.
pub fn settings(flags: &Flags<'_>) -> Result<Settings, ConfigError> {
    let mut cfg: Config = tapbus_config::load(flags.config, Config::default())?;
    if let Some(u) = flags.input {
        cfg.input.set_url(u);
    }
    if let Some(u) = flags.url {
        cfg.url = u.to_owned();
    }
    if let Some(t) = flags.tenant {
        cfg.tenant = t.to_owned();
    }
    if let Some(l) = flags.metrics_listen {
        cfg.metrics_listen = l.to_owned();
    }
    let input = cfg
        .input
        .validate_reading("input", PROGRAM, "tapbus.metrics.>")?;
    let target = Target::new(
        &cfg.url,
        &cfg.tenant,
        &cfg.username,
        &cfg.password,
        &cfg.bearer_token,
        "http://HOST:PORT/api/v1/push",
    )
    .map_err(|(k, m)| ConfigError::invalid(k, m))?;
    let url = target.url.clone();
    if cfg.timeout < Duration::from_secs(1) {
        return Err(ConfigError::invalid("timeout", "must be at least 1s"));
    }
    let listen =
        listen_addr(&cfg.metrics_listen).map_err(|e| ConfigError::invalid("metrics_listen", e))?;
    Ok(Settings {
        target,
        input,
        url,
        cfg,
        listen,
    })
}
