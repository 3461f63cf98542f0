//! tapbus-aggregate's configuration: the file (`--config`), then `TAPBUS_*`, then the
//! flags, validated into [`Settings`] with errors that name the key once.

use std::time::Duration;

use tapbus_config::{ConfigError, ConsumerInputSpec, OutputConfig, OutputSpec};
use tapbus_consumer::listen_addr;

use crate::AggregateSpec;
use crate::config::{Config, host_name};

const PROGRAM: &str = "tapbus-aggregate";

/// What the command line sets over the file and the environment.
#[derive(Debug, Default, Clone, Copy)]
pub struct Flags<'a> {
    pub config: Option<&'a std::path::Path>,
    pub input: Option<&'a str>,
    pub output: Option<&'a str>,
    pub metrics_listen: Option<&'a str>,
    pub instance: Option<&'a str>,
}

/// A validated configuration.
pub struct Settings {
    pub input: ConsumerInputSpec,
    pub output: Option<OutputSpec>,
    pub aggregate: AggregateSpec,
    pub instance: String,
    pub interval: Duration,
    pub listen: Option<std::net::SocketAddr>,
    pub max_pending: usize,
}

/// Loads the file and the environment, applies the flags and validates.
pub fn settings(flags: &Flags<'_>) -> Result<Settings, ConfigError> {
    let mut cfg: Config = tapbus_config::load(flags.config, Config::default())?;
    if let Some(url) = flags.input {
        cfg.input.set_url(url);
    }
    if let Some(url) = flags.output {
        cfg.output
            .get_or_insert_with(OutputConfig::default)
            .set_url(url);
    }
    if let Some(l) = flags.metrics_listen {
        cfg.metrics_listen = l.to_owned();
    }
    if let Some(i) = flags.instance {
        cfg.aggregate.instance = i.to_owned();
    }
    if cfg.aggregate.instance.is_empty() {
        cfg.aggregate.instance = host_name();
    }
    tapbus_consumer::require_url("input", &cfg.input.connect.url)?;
    let input = cfg.input.validate("input", PROGRAM)?;
    let output = match &cfg.output {
        Some(o) => Some(o.validate("output", "batches")?),
        None => None,
    };
    let instance = cfg.aggregate.instance.clone();
    let interval = cfg.aggregate.interval;
    let aggregate = cfg
        .aggregate
        .validate("aggregate")
        .map_err(|e| ConfigError::invalid(&e.key, e.msg))?;
    let listen =
        listen_addr(&cfg.metrics_listen).map_err(|e| ConfigError::invalid("metrics_listen", e))?;
    tapbus_consumer::check_max_pending(cfg.max_pending)?;
    if output.is_some() {
        // An event is acked after the next batch that counts it: up to one interval.
        input.check_hold("input", interval, "aggregate.interval")?;
    }
    Ok(Settings {
        input,
        output,
        aggregate,
        instance,
        interval,
        listen,
        max_pending: cfg.max_pending,
    })
}
