//! Every key the broker's configuration and a consumer's `[input]` table accept is
//! documented: the broker's in docs/configuration.md, the `[input]` table's (connection
//! keys and every subscribe mode) in docs/bus-urls.md.

use serde_json::{Value, json};
use tapbus_config::{BrokerConfig, ConsumerInputConfig, InputConfig, OutputConfig};
use tapbus_testsupport::docs;

#[test]
fn every_broker_key_is_in_configuration_md() {
    let mut c = BrokerConfig::default();
    c.inputs.insert("NAME".into(), InputConfig::default());
    c.outputs.insert("NAME".into(), OutputConfig::default());
    let v = serde_json::to_value(&c).expect("serialise");
    docs::assert_documented(&v, "configuration.md", &[]);
}

#[test]
fn every_input_key_of_every_mode_is_in_bus_urls_md() {
    for mode in ["nats", "jetstream", "mqtt", "redis_pubsub", "redis_stream"] {
        let input = ConsumerInputConfig {
            subscribe: Some(serde_json::from_value(json!({ "mode": mode })).expect("subscribe")),
            ..ConsumerInputConfig::default()
        };
        let v: Value = json!({ "input": serde_json::to_value(&input).expect("serialise") });
        docs::assert_documented(&v, "bus-urls.md", &[]);
    }
}
