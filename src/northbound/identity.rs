//! Who this gateway is, for a fleet: a retained identity message on `<status_topic>/info`.
//!
//! Sent after every connect (with `online`) and again when a reload changes the mapping, so a
//! fleet dashboard subscribed to `+/status/info` (or whatever the status topics are) sees every
//! cabinet, what it runs, and whether its mapping is the expected one (the configuration id is
//! the one `fieldgate check` prints). The payload is one JSON object:
//!
//! ```json
//! {"version":"0.1.0","hostname":"cabinet-7","client_id":"fieldgate-cabinet-7-3d1219c7-d39363",
//!  "config_id":"3f9a0c2e71b4","started":"2026-11-30T12:00:00.000Z","loaded":"2026-11-30T12:00:00.012Z",
//!  "brokers":["broker-a:8883","broker-b:8883"],
//!  "devices":[{"name":"tower","link":"tcp://10.0.0.5:502","unit":1}]}
//! ```
//!
//! `started` is when the process started (unchanged by reloads and reconnects), `loaded` when
//! the running mapping was loaded (the start, or the reload that brought it). It carries no
//! secret: no password, key or certificate path.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use serde_json::json;

use super::Profile;
use crate::mappings::engine::Update;
use crate::model::Model;
use crate::vocabulary::{Publication, Qos, timestamp};

/// The identity profile: publishes nothing per update, announces `<status_topic>/info`.
#[derive(Debug)]
pub struct Identity {
    model: Arc<Model>,
    /// When the process started.
    started: SystemTime,
}

impl Identity {
    /// The identity of the gateway running `model`, started at `started`.
    pub fn new(model: Arc<Model>, started: SystemTime) -> Identity {
        Identity { model, started }
    }

    /// `<status_topic>/info`.
    pub fn topic(model: &Model) -> String {
        format!("{}/info", model.mqtt.status_topic)
    }

    /// The message's JSON (see the module docs) for the mapping loaded at `at`.
    pub fn payload(&self, at: SystemTime) -> serde_json::Value {
        let m = &self.model;
        let brokers = m.mqtt.broker_names();
        let devices: Vec<serde_json::Value> = m
            .devices
            .iter()
            .map(|d| {
                let link = m.links.get(d.link);
                let mut v = json!({
                    "name": d.name.as_ref(),
                    "link": link.map(|l| l.name.as_ref()),
                });
                // A Modbus unit id; an S7 PLC has none.
                if !link.is_some_and(|l| matches!(l.spec, crate::model::LinkSpec::S7(_))) {
                    v["unit"] = json!(d.unit);
                }
                v
            })
            .collect();
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "hostname": m.identity.hostname.as_ref(),
            "client_id": m.mqtt.client_id,
            "config_id": m.identity.config_id.as_ref(),
            "started": timestamp(self.started),
            "loaded": timestamp(at),
            "brokers": brokers,
            "devices": devices,
        })
    }
}

impl Profile for Identity {
    fn name(&self) -> &'static str {
        "identity"
    }

    fn on_update(&mut self, _update: &Update, _now: Instant, _out: &mut Vec<Publication>) {}

    fn announce(&self, at: SystemTime) -> Vec<Publication> {
        vec![Publication {
            topic: Arc::from(Self::topic(&self.model)),
            payload: self.payload(at).to_string().into_bytes(),
            qos: Qos::AtLeastOnce,
            retain: true,
            created_at: at,
        }]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn model(yaml: &str) -> Arc<Model> {
        let vars = [("HOSTNAME".to_owned(), "cabinet-7".to_owned())].into();
        Arc::new(
            crate::config::load_str(std::path::Path::new("m.yaml"), yaml, vars, "box-1")
                .unwrap_or_else(|e| panic!("{e}")),
        )
    }

    const YAML: &str = "mqtt:
  hosts: [a:8883, '[::1]:1884']
  client_id: gw-${HOSTNAME}-${CONFIG_ID}
  status_topic: site/cabinet-7/status
  password: s3cret
  username: u
devices:
  - name: tower
    tcp: { host: 10.0.0.5, port: 502 }
    unit: 3
    points:
      - { name: level, kind: holding_register, address: 0, publish: { topic: site/level } }
";

    #[test]
    fn the_info_message_names_the_gateway_its_mapping_and_devices_and_no_secret() {
        let m = model(YAML);
        let started = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let id = Identity::new(Arc::clone(&m), started);
        let out = id.announce(started + Duration::from_secs(5));
        assert_eq!(out.len(), 1);
        let p = &out[0];
        assert_eq!(&*p.topic, "site/cabinet-7/status/info");
        assert!(p.retain);
        assert_eq!(p.qos, Qos::AtLeastOnce);
        let text = String::from_utf8(p.payload.clone()).unwrap();
        assert!(!text.contains("s3cret"), "{text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let config_id = m.identity.config_id.to_string();
        assert_eq!(config_id.len(), 12);
        assert_eq!(v["config_id"], config_id.as_str());
        assert_eq!(v["hostname"], "cabinet-7");
        assert_eq!(v["client_id"], format!("gw-cabinet-7-{config_id}"));
        assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(v["started"], timestamp(started));
        assert_eq!(v["brokers"], json!(["a:8883", "[::1]:1884"]));
        assert_eq!(
            v["devices"],
            json!([{"name": "tower", "link": "tcp://10.0.0.5:502", "unit": 3}])
        );
    }

    #[test]
    fn an_s7_device_is_listed_without_a_unit_id() {
        let yaml = format!(
            "{YAML}s7_devices:
  - name: plc
    s7: {{ host: 10.0.0.6 }}
    points:
      - {{ name: count, address: DB1.DBW0, publish: {{ topic: site/count }} }}
"
        );
        let m = model(&yaml);
        let id = Identity::new(Arc::clone(&m), SystemTime::UNIX_EPOCH);
        let v = id.payload(SystemTime::UNIX_EPOCH);
        let plc = &v["devices"][1];
        assert_eq!(plc["name"], "plc", "{v}");
        assert!(plc.get("unit").is_none(), "{plc}");
        assert_eq!(v["devices"][0]["unit"], 3);
    }

    #[test]
    fn the_configuration_id_follows_values_not_layout() {
        let a = model(YAML);
        let reformatted = model(&format!(
            "# a comment\n{}",
            YAML.replace("{ name: level, kind: holding_register, address: 0, publish: { topic: site/level } }",
                "{ address: 0, name: level, publish: { topic: \"site/level\" }, kind: holding_register }")
        ));
        assert_eq!(a.identity.config_id, reformatted.identity.config_id);
        let changed = model(&YAML.replace("address: 0", "address: 1"));
        assert_ne!(a.identity.config_id, changed.identity.config_id);
        // The same mapping on every box of a fleet has one id: variables count as written, not
        // by their values.
        let vars = |h: &str| [("HOSTNAME".to_owned(), h.to_owned())].into();
        let load = |yaml: &str, h| {
            crate::config::load_str(std::path::Path::new("m.yaml"), yaml, vars(h), "b")
                .unwrap()
                .identity
                .config_id
        };
        assert_eq!(load(YAML, "one"), load(YAML, "two"));
        // Quoting does not count: 502 and "502" are one value.
        assert_eq!(
            load(&YAML.replace("port: 502", "port: \"502\""), "one"),
            load(YAML, "one")
        );
        // The inline password is not hashed: the id is published, and must not let anyone
        // test guesses of it.
        assert_eq!(
            load(&YAML.replace("password: s3cret", "password: other"), "one"),
            load(YAML, "one")
        );
    }
}
