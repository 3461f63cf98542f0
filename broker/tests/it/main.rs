//! Integration tests: real nats-server, unbound and fstrm_replay processes on loopback,
//! the tapbus-broker binary, and subscribers. Run by `scripts/test.sh` (and so by CI),
//! which installs the Debian packages they need.

mod accounting;
mod cli;
mod dial;
mod dial_tls;
mod dns_server;
mod examples;
mod filter;
mod geoip;
mod harness;
mod malformed;
mod mqtt;
mod multi;
mod nats_creds;
mod nats_js;
mod outage;
mod privacy;
mod raw;
mod redis;
mod replay;
mod restart;
mod start_order;
mod tcp_json;
mod tls;
mod url_keys;
