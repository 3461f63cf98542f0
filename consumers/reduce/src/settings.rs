//! tapbus-reduce's configuration: the file (`--config`), then `TAPBUS_*`, then the flags,
//! validated into [`Settings`] with errors that name the key once.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tapbus_config::{ConfigError, ConsumerInputConfig, OutputConfig};
use tapbus_consumer::listen_addr;

use crate::{ReduceConfig, ReduceSpec};

const PROGRAM: &str = "tapbus-reduce";

/// What the command line sets over the file and the environment.
#[derive(Debug, Default, Clone, Copy)]
pub struct Flags<'a> {
    pub config: Option<&'a std::path::Path>,
    pub input: Option<&'a str>,
    pub output: Option<&'a str>,
    pub metrics_listen: Option<&'a str>,
}

/// The configuration file (`--config`, then `TAPBUS_*`, then the flags).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub input: ConsumerInputConfig,
    pub output: OutputConfig,
    pub reduce: ReduceConfig,
    /// `/metrics` and `/health`; "" disables.
    pub metrics_listen: String,
    /// Events placed in windows and not yet acknowledged, at most: at the bound every open
    /// window is closed early.
    pub max_pending: usize,
    /// With no event for this long, every open window is closed (a stream that stopped
    /// still gets its last records). Default 15s (window + lateness).
    #[serde(with = "humantime_serde")]
    pub idle_flush: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            input: ConsumerInputConfig::default(),
            output: OutputConfig::default(),
            reduce: ReduceConfig::default(),
            metrics_listen: "127.0.0.1:9636".into(),
            max_pending: 200_000,
            idle_flush: Duration::from_secs(15),
        }
    }
}

pub struct Settings {
    pub input: tapbus_config::ConsumerInputSpec,
    pub output: tapbus_config::OutputSpec,
    pub reduce: ReduceSpec,
    pub listen: Option<std::net::SocketAddr>,
    pub max_pending: usize,
    pub idle_flush: Duration,
}

/// Loads the file and the environment, applies the flags and validates.
pub fn settings(flags: &Flags<'_>) -> Result<Settings, ConfigError> {
    let mut cfg: Config = tapbus_config::load(flags.config, Config::default())?;
    if let Some(url) = flags.input {
        cfg.input.set_url(url);
    }
    if let Some(url) = flags.output {
        cfg.output.set_url(url);
    }
    if let Some(l) = flags.metrics_listen {
        cfg.metrics_listen = l.to_owned();
    }
    tapbus_consumer::require_url("input", &cfg.input.connect.url)?;
    tapbus_consumer::require_url("output", &cfg.output.connect.url)?;
    let input = cfg.input.validate("input", PROGRAM)?;
    let output = cfg.output.validate("output", "records")?;
    let reduce = cfg
        .reduce
        .validate()
        .map_err(|e| ConfigError::invalid(&e.key, e.reason))?;
    let listen =
        listen_addr(&cfg.metrics_listen).map_err(|e| ConfigError::invalid("metrics_listen", e))?;
    tapbus_consumer::check_max_pending(cfg.max_pending)?;
    if cfg.idle_flush < Duration::from_secs(1) {
        return Err(ConfigError::invalid("idle_flush", "must be at least 1s"));
    }
    // A live event waits for its window to close (the window plus the lateness, in event
    // time, which is wall time for live traffic) or, when traffic stops, for idle_flush.
    let hold = Duration::from_nanos(reduce.window_ns.saturating_add(reduce.lateness_ns))
        .max(cfg.idle_flush);
    input.check_hold(
        "input",
        hold,
        "the longest wait for a window to close (reduce.window + reduce.lateness, or idle_flush)",
    )?;
    Ok(Settings {
        input,
        output,
        reduce,
        listen,
        max_pending: cfg.max_pending,
        idle_flush: cfg.idle_flush,
    })
}
