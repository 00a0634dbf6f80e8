//! Home Assistant discovery over Debian's mosquitto, with the shipped
//! `mappings/water-tower-homeassistant.yaml`: every discovery message validates against
//! `docs/schemas/homeassistant-device-discovery.schema.json` (and a wrong one does not), the
//! entities are what the mapping says, buttons and numbers write through the verified path
//! (mbpoll reads the device as the judge), states are never optimistic, a Home Assistant restart
//! gets every configuration again, availability follows the device status (the value template
//! rendered by Jinja2, Home Assistant's own template engine, in `target/peers-venv`), and a
//! reload that removes a device leaves an empty retained configuration, and identity read from a
//! register is in the first configuration and sent again when it changes.
//!
//! Fails when mosquitto, mbpoll or the venv's jinja2 is missing; `scripts/test.sh` installs them.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

const PREFIX: &str = "ISBTest/pumpcontrol";
const TOWER_CONFIG: &str = "homeassistant/device/water_tower_tower/config";
const GATEWAY_CONFIG: &str = "homeassistant/device/water_tower/config";
const SCHEMA: &str = "homeassistant-device-discovery";

/// The limits the shipped mapping gives the four thresholds (`min: 0`, `max: 400`).
const THRESHOLD_LIMITS: (f64, f64) = (0.0, 400.0);
const THRESHOLDS: [&str; 4] = [
    "p1_start_level",
    "p2_start_level",
    "p1_stop_level",
    "p2_stop_level",
];

fn tool(name: &str) -> String {
    for dir in ["/usr/bin", "/usr/local/bin"] {
        let p = format!("{dir}/{name}");
        if std::path::Path::new(&p).exists() {
            return p;
        }
    }
    panic!("{name} is not installed: bash scripts/test.sh installs it");
}

/// The schema's complaints about `msg` (empty when it validates).
fn schema_errors(msg: &serde_json::Value) -> Vec<String> {
    let text =
        std::fs::read_to_string(repo(&format!("docs/schemas/{SCHEMA}.schema.json"))).unwrap();
    let v = jsonschema::validator_for(&serde_json::from_str(&text).unwrap()).unwrap();
    v.iter_errors(msg).map(|e| e.to_string()).collect()
}

/// Read `count` values of Modbus table `table` (mbpoll's -t: 0 coils, 4 holding registers)
/// from unit 1 at `addr`, starting at protocol address 0 (mbpoll's reference 1), with mbpoll.
fn mbpoll(addr: SocketAddr, table: &str, count: usize) -> Vec<i64> {
    let out = Command::new(tool("mbpoll"))
        .args(["-m", "tcp", "-a", "1", "-t", table, "-r", "1", "-c"])
        .arg(count.to_string())
        .args(["-p", &addr.port().to_string(), "-1"])
        .arg(addr.ip().to_string())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let values: Vec<i64> = text
        .lines()
        .filter(|l| l.starts_with('['))
        .filter_map(|l| l.split(':').nth(1)?.trim().parse().ok())
        .collect();
    assert_eq!(values.len(), count, "mbpoll output:\n{text}");
    values
}

/// `template` rendered as Home Assistant renders an availability template: Jinja2, with the
/// payload as `value` and, parsed, as `value_json`.
fn render(template: &str, payload: &str) -> String {
    let py = repo("target/peers-venv/bin/python");
    assert!(
        py.exists(),
        "{} is missing: bash scripts/test.sh makes it",
        py.display()
    );
    let out = Command::new(py)
        .args([
            "-c",
            "import sys, json, jinja2\n\
             t = jinja2.Environment().from_string(sys.argv[1])\n\
             print(t.render(value=sys.argv[2], value_json=json.loads(sys.argv[2])))",
            template,
            payload,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "jinja2: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The gateway on the shipped Home Assistant mapping.
async fn start(modbus: SocketAddr, mqtt: SocketAddr) -> Proc {
    gateway(
        &repo("mappings/water-tower-homeassistant.yaml"),
        modbus,
        mqtt,
        PREFIX,
    )
    .await
}

/// The next non-empty message on `topic` from `since`, as JSON.
async fn config(obs: &mut Observer, since: usize, topic: &str) -> (Msg, serde_json::Value) {
    let m = obs.wait_topic(since, topic, |p| !p.is_empty()).await;
    let v = json(&m.payload);
    (m, v)
}

fn state_topic(name: &str) -> String {
    format!("{PREFIX}/ha/tower/{name}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_messages_validate_and_map_the_tower() {
    let dir = tempfile::tempdir().unwrap();
    let (_broker, mqtt) = mosquitto(dir.path(), "").await;
    let (_sim, modbus) = simulator("127.0.0.1:0", &["--speed", "0", "--level", "321"]).await;
    let mut obs = Observer::start(mqtt, "#").await;
    let _gw = start(modbus, mqtt).await;

    let (_, tower) = config(&mut obs, 0, TOWER_CONFIG).await;
    let (_, gateway) = config(&mut obs, 0, GATEWAY_CONFIG).await;
    for msg in [&tower, &gateway] {
        assert_eq!(schema_errors(msg), Vec::<String>::new(), "{msg:#}");
    }

    // Wrong messages fail the schema.
    let mut wrong = Vec::new();
    let mut w = tower.clone();
    w.as_object_mut().unwrap().remove("dev");
    wrong.push(("no dev", w));
    let mut w = tower.clone();
    w["cmps"]["level"]
        .as_object_mut()
        .unwrap()
        .remove("unique_id");
    wrong.push(("an entity without unique_id", w));
    let mut w = tower.clone();
    w["cmps"]["level"]["p"] = "light".into();
    wrong.push(("a component that is not allowed", w));
    let mut w = tower.clone();
    w["cmps"]["startp1"]
        .as_object_mut()
        .unwrap()
        .remove("command_topic");
    wrong.push(("a button without command_topic", w));
    let mut w = tower.clone();
    w["cmps"]["p1_start_level"]["min"] = "0".into();
    wrong.push(("a number whose min is a string", w));
    let mut w = tower.clone();
    w["cmps"]["p1_command"]["optimistic"] = true.into();
    wrong.push(("an optimistic switch", w));
    for (what, msg) in wrong {
        assert!(!schema_errors(&msg).is_empty(), "{what} passed the schema");
    }

    // The device, its origin and its availability.
    assert_eq!(
        tower["dev"]["ids"],
        serde_json::json!(["water_tower_tower"])
    );
    assert_eq!(tower["dev"]["name"], "tower");
    assert_eq!(tower["dev"]["mf"], "ISB");
    assert_eq!(tower["dev"]["via_device"], "water_tower");
    assert_eq!(gateway["dev"]["ids"], serde_json::json!(["water_tower"]));
    assert_eq!(tower["o"]["name"], "fieldgate");
    assert_eq!(tower["o"]["sw"], env!("CARGO_PKG_VERSION"));
    assert_eq!(tower["availability_mode"], "all");
    assert_eq!(
        tower["availability"][0]["topic"],
        format!("{PREFIX}/status")
    );
    assert_eq!(
        tower["availability"][1]["topic"],
        format!("{PREFIX}/status/tower")
    );

    let cmps = &tower["cmps"];
    let t = &cmps["p1_temperature"];
    assert_eq!(t["p"], "sensor");
    assert_eq!(t["device_class"], "temperature");
    assert_eq!(t["unit_of_measurement"], "°C");
    assert_eq!(t["state_class"], "measurement");
    let h = &cmps["p1_operating_hours"];
    assert_eq!(h["p"], "sensor");
    assert!(
        h.get("device_class").is_none() || h["device_class"] == "duration",
        "{h}"
    );
    assert_eq!(cmps["level"]["unit_of_measurement"], "cm");
    assert!(cmps["level"].get("device_class").is_none());
    assert_eq!(cmps["p1_running"]["p"], "binary_sensor");
    assert_eq!(cmps["pumpcode"]["p"], "sensor");
    for payload in ["startp1", "startp2", "stopp1", "stopp2"] {
        let b = &cmps[payload];
        assert_eq!(b["p"], "button", "{payload}: {b}");
        assert_eq!(b["command_topic"], format!("{PREFIX}/pump"));
        assert_eq!(b["payload_press"], payload);
    }
    for n in THRESHOLDS {
        let c = &cmps[n];
        assert_eq!(c["p"], "number", "{n}: {c}");
        assert_eq!(c["min"].as_f64(), Some(THRESHOLD_LIMITS.0), "{n}");
        assert_eq!(c["max"].as_f64(), Some(THRESHOLD_LIMITS.1), "{n}");
        assert_eq!(c["step"].as_f64(), Some(1.0), "{n}");
        assert_eq!(c["unit_of_measurement"], "cm");
        assert_eq!(c["command_topic"], format!("{PREFIX}/settings/{n}/set"));
        assert_eq!(c["state_topic"], state_topic(n));
    }
    let s = &cmps["p1_command"];
    assert_eq!(s["p"], "switch");
    assert_eq!(
        s["command_topic"],
        format!("{}/set", state_topic("p1_command"))
    );
    assert_eq!(s["state_topic"], state_topic("p1_command"));
    assert_eq!(cmps["auto_control"]["entity_category"], "config");

    // Every unique_id is unique.
    let ids: Vec<&str> = cmps
        .as_object()
        .unwrap()
        .values()
        .map(|c| c["unique_id"].as_str().unwrap())
        .collect();
    let mut dedup = ids.clone();
    dedup.sort_unstable();
    dedup.dedup();
    assert_eq!(dedup.len(), ids.len(), "{ids:?}");

    // States as read.
    obs.wait_topic(0, &state_topic("level"), |p| p == "321")
        .await;
    obs.wait_topic(0, &state_topic("p1_command"), |p| p == "false")
        .await;
    obs.wait_topic(0, &state_topic("p1_start_level"), |p| p == "20")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buttons_and_numbers_write_through_the_verified_path() {
    let dir = tempfile::tempdir().unwrap();
    let (_broker, mqtt) = mosquitto(dir.path(), "").await;
    let (_sim, modbus) = simulator("127.0.0.1:0", &["--speed", "0", "--level", "321"]).await;
    let mut obs = Observer::start(mqtt, "#").await;
    let _gw = start(modbus, mqtt).await;
    let (_, tower) = config(&mut obs, 0, TOWER_CONFIG).await;
    obs.wait_topic(0, &state_topic("pumpcode"), |p| p == "0")
        .await;
    obs.wait_topic(0, &state_topic("p1_command"), |p| p == "false")
        .await;

    // Press startp1 as Home Assistant does.
    let b = &tower["cmps"]["startp1"];
    let since = obs.len();
    obs.publish(
        b["command_topic"].as_str().unwrap(),
        b["payload_press"].as_str().unwrap(),
        false,
    )
    .await;
    let ack = obs
        .wait_topic(since, &format!("{PREFIX}/pump/ack"), |_| true)
        .await;
    let ack = json(&ack.payload);
    assert_eq!(ack["result"], "ok", "{ack}");
    assert_eq!(ack["readback"]["tower.p1_command"], "true", "{ack}");
    assert_eq!(mbpoll(modbus, "0", 2), [1, 0], "coils after startp1");
    obs.wait_topic(since, &state_topic("p1_command"), |p| p == "true")
        .await;
    obs.wait_topic(since, &state_topic("p1_running"), |p| p == "true")
        .await;
    obs.wait_topic(since, &state_topic("pumpcode"), |p| p == "1")
        .await;

    // A number out of range: refused, nothing written, the ack says why.
    let n = &tower["cmps"]["p1_start_level"];
    let topic = n["command_topic"].as_str().unwrap();
    let since = obs.len();
    obs.publish(topic, "500", false).await;
    let ack = obs
        .wait_topic(since, &format!("{topic}/ack"), |_| true)
        .await;
    let ack = json(&ack.payload);
    assert_eq!(ack["result"], "rejected", "{ack}");
    let reason = ack["reason"].as_str().unwrap();
    assert!(
        reason.contains("outside the allowed range 0..=400"),
        "{reason}"
    );
    assert_eq!(mbpoll(modbus, "4", 1), [20], "holding register 0 unchanged");

    // In range: written, read back, and the state follows the device.
    let since = obs.len();
    obs.publish(topic, "55", false).await;
    let ack = obs
        .wait_topic(since, &format!("{topic}/ack"), |_| true)
        .await;
    assert_eq!(json(&ack.payload)["result"], "ok", "{}", ack.payload);
    assert_eq!(mbpoll(modbus, "4", 1), [55]);
    obs.wait_topic(since, &state_topic("p1_start_level"), |p| p == "55")
        .await;
    // The refused 500 never showed as a state.
    assert!(
        !obs.all()
            .iter()
            .any(|m| m.topic == state_topic("p1_start_level") && m.payload == "500")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_home_assistant_restart_gets_every_config_and_state_again() {
    let dir = tempfile::tempdir().unwrap();
    let (_broker, mqtt) = mosquitto(dir.path(), "").await;
    let (_sim, modbus) = simulator("127.0.0.1:0", &["--speed", "0", "--level", "321"]).await;
    let mut obs = Observer::start(mqtt, "#").await;
    let _gw = start(modbus, mqtt).await;
    config(&mut obs, 0, TOWER_CONFIG).await;
    config(&mut obs, 0, GATEWAY_CONFIG).await;
    obs.wait_topic(0, &state_topic("p1_start_level"), |p| p == "20")
        .await;

    let since = obs.len();
    let sent = Instant::now();
    obs.publish("homeassistant/status", "online", false).await;
    for topic in [TOWER_CONFIG, GATEWAY_CONFIG] {
        let (m, v) = config(&mut obs, since, topic).await;
        assert!(
            m.at.duration_since(sent) < Duration::from_secs(2),
            "{topic} came {:?} after Home Assistant's birth message",
            m.at.duration_since(sent)
        );
        assert_eq!(schema_errors(&v), Vec::<String>::new());
    }
    // The current states too, though they did not change (on-change states are not due).
    obs.wait_topic(since, &state_topic("p1_start_level"), |p| p == "20")
        .await;
    obs.wait_topic(since, &state_topic("p2_stop_level"), |p| p == "380")
        .await;

    // Anything else on the status topic is not a birth message.
    let since = obs.len();
    obs.publish("homeassistant/status", "offline", false).await;
    obs.publish(&format!("{PREFIX}/pump"), "nonsense", false)
        .await;
    obs.wait_topic(since, &format!("{PREFIX}/pump/ack"), |_| true)
        .await;
    assert!(
        !obs.all()
            .iter()
            .skip(since)
            .any(|m| m.topic == TOWER_CONFIG),
        "a config was sent on `offline`"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn availability_follows_the_device_and_a_failed_write_shows_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (_broker, mqtt) = mosquitto(dir.path(), "").await;
    let (mut sim, modbus) = simulator("127.0.0.1:0", &["--speed", "0", "--level", "321"]).await;
    let mut obs = Observer::start(mqtt, "#").await;
    let _gw = start(modbus, mqtt).await;
    let (_, tower) = config(&mut obs, 0, TOWER_CONFIG).await;
    let avty = tower["availability"].as_array().unwrap();
    let gw_avty = &avty[0];
    let dev_avty = &avty[1];
    let template = dev_avty["value_template"].as_str().unwrap();
    let status_topic = format!("{PREFIX}/status/tower");
    let available = |payload: &str| render(template, payload) == dev_avty["payload_available"];

    let ok = obs
        .wait_topic(0, &status_topic, |p| p.contains("\"ok\""))
        .await;
    assert!(available(&ok.payload), "{}", ok.payload);
    let online = obs
        .wait_topic(0, &format!("{PREFIX}/status"), |p| p == "online")
        .await;
    assert_eq!(gw_avty["payload_available"], online.payload);
    // A degraded device still counts as available.
    assert!(available(
        r#"{"status":"degraded","failing":["x"],"reason":"r","ts":"t"}"#
    ));

    // Kill the device: unavailable. Bring it back on its port: available again.
    let since = obs.len();
    sim.signal("KILL");
    sim.wait_exit().await;
    let err = obs
        .wait_topic(since, &status_topic, |p| p.contains("\"error\""))
        .await;
    assert!(!available(&err.payload), "{}", err.payload);
    let since = obs.len();
    let (mut sim, _) = simulator(&modbus.to_string(), &["--speed", "0", "--level", "321"]).await;
    let ok = obs
        .wait_topic(since, &status_topic, |p| p.contains("\"ok\""))
        .await;
    assert!(available(&ok.payload), "{}", ok.payload);

    // A switch turned on while the device does not answer: the write fails, the ack says so,
    // and the state never shows `true` (it is what the device reports, never what was asked).
    obs.wait_topic(since, &format!("{PREFIX}/waterlevel"), |_| true)
        .await;
    let since = obs.len();
    sim.send_line("fault 1 silent");
    // The device is silent once its status says so: only then is the switch turned on.
    obs.wait_topic(since, &status_topic, |p| p.contains("\"error\""))
        .await;
    let since = obs.len();
    let switch = &tower["cmps"]["p2_command"];
    let topic = switch["command_topic"].as_str().unwrap();
    obs.publish(topic, switch["payload_on"].as_str().unwrap(), false)
        .await;
    let ack = obs
        .wait_topic(since, &format!("{topic}/ack"), |_| true)
        .await;
    assert_eq!(json(&ack.payload)["result"], "error", "{}", ack.payload);
    sim.send_line("fault 1 none");
    // Polls resume (a fresh level after the fault is cleared), and the coil is still off.
    let resumed = obs.len();
    obs.wait_topic(resumed, &format!("{PREFIX}/waterlevel"), |_| true)
        .await;
    assert_eq!(mbpoll(modbus, "0", 2), [0, 0]);
    assert!(
        !obs.all()
            .iter()
            .skip(since)
            .any(|m| m.topic == state_topic("p2_command") && m.payload == "true"),
        "the switch showed a state the device never had"
    );
}

fn reload_mapping(mqtt: SocketAddr, a: SocketAddr, b: Option<SocketAddr>, a_temp: bool) -> String {
    let temp = if a_temp {
        r#"      - { name: temp, kind: input_register, address: 1, type: i16, scale: 0.1, unit: "°C" }"#
    } else {
        ""
    };
    let b = b.map_or(String::new(), |b| {
        format!(
            r#"  - name: b
    tcp: {{ host: 127.0.0.1, port: {} }}
    poll_interval: 200ms
    points:
      - {{ name: level, kind: input_register, address: 0, unit: cm }}
"#,
            b.port()
        )
    });
    format!(
        r#"mqtt: {{ host: 127.0.0.1, port: {mp}, client_id: harl, status_topic: harl/status }}
devices:
  - name: a
    tcp: {{ host: 127.0.0.1, port: {ap} }}
    poll_interval: 200ms
    points:
      - {{ name: level, kind: input_register, address: 0, unit: cm }}
{temp}
{b}
homeassistant: {{ node_id: rl }}
"#,
        mp = mqtt.port(),
        ap = a.port(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_removes_a_device_leaves_an_empty_retained_config() {
    let dir = tempfile::tempdir().unwrap();
    let (_broker, mqtt) = mosquitto(dir.path(), "").await;
    let (_sa, a) = simulator("127.0.0.1:0", &["--speed", "0", "--level", "11"]).await;
    let (_sb, b) = simulator("127.0.0.1:0", &["--speed", "0", "--level", "22"]).await;
    let path = dir.path().join("mapping.yaml");
    std::fs::write(&path, reload_mapping(mqtt, a, Some(b), true)).unwrap();
    let mut obs = Observer::start(mqtt, "#").await;
    let gw = Proc::spawn(Command::new(bin()).args(["run", "-c"]).arg(&path));
    let (_, ca) = config(&mut obs, 0, "homeassistant/device/rl_a/config").await;
    let (_, cb) = config(&mut obs, 0, "homeassistant/device/rl_b/config").await;
    assert_eq!(ca["cmps"]["temp"]["device_class"], "temperature");
    assert_eq!(cb["cmps"]["level"]["p"], "sensor");
    obs.wait_topic(0, "fieldgate/rl/b/level", |p| p == "22")
        .await;

    // Remove device b and a's temperature.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, reload_mapping(mqtt, a, None, false)).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    let since = obs.len();
    gw.signal("HUP");
    obs.wait_topic(since, "harl/status/reload", |p| p.contains("applied"))
        .await;
    obs.wait_topic(since, "homeassistant/device/rl_b/config", str::is_empty)
        .await;
    // a's configuration with the removed component holding only its platform.
    let m = obs
        .wait_topic(since, "homeassistant/device/rl_a/config", |p| {
            serde_json::from_str::<serde_json::Value>(p)
                .is_ok_and(|v| v["cmps"]["temp"] == serde_json::json!({"p": "sensor"}))
        })
        .await;
    let ca = json(&m.payload);
    assert_eq!(schema_errors(&ca), Vec::<String>::new(), "{ca:#}");
    assert_eq!(ca["cmps"]["level"]["p"], "sensor");

    // A new subscriber (as Home Assistant after a restart) finds a's config and none of b's.
    let port = mqtt.port().to_string();
    let retained = |topic: &str| {
        let out = Command::new(tool("mosquitto_sub"))
            .args(["-h", "127.0.0.1", "-p", &port, "-t", topic])
            .args(["-C", "1", "-W", "2", "--retained-only", "-v"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert!(retained("homeassistant/device/rl_a/config").contains("\"rl_a\""));
    assert_eq!(retained("homeassistant/device/rl_b/config"), "");
    assert_eq!(retained("fieldgate/rl/b/level"), "", "b's state is cleared");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_read_from_a_register_is_in_the_first_config_and_a_change_sends_it_again() {
    let dir = tempfile::tempdir().unwrap();
    let (_broker, mqtt) = mosquitto(dir.path(), "").await;
    let (_sim, modbus) = simulator("127.0.0.1:0", &["--speed", "0", "--level", "321"]).await;
    // Holding register 0 (20 at start) stands in for a firmware version register.
    let yaml = format!(
        r#"mqtt: {{ host: 127.0.0.1, port: {mp}, client_id: idt, status_topic: idt/status }}
devices:
  - name: tower
    tcp: {{ host: 127.0.0.1, port: {sp} }}
    poll_interval: 200ms
    points:
      - {{ name: level, kind: input_register, address: 0, unit: cm }}
      - {{ name: firmware, kind: holding_register, address: 0, writable: true, min: 0, max: 400 }}
homeassistant:
  devices:
    tower: {{ manufacturer: ISB, sw_version: firmware }}
"#,
        mp = mqtt.port(),
        sp = modbus.port()
    );
    let mut obs = Observer::start(mqtt, "#").await;
    let _gw = gateway_yaml(dir.path(), &yaml);
    let topic = "homeassistant/device/idt_tower/config";
    let (_, first) = config(&mut obs, 0, topic).await;
    assert_eq!(schema_errors(&first), Vec::<String>::new());
    assert_eq!(first["dev"]["sw"], "20", "{first:#}");

    let since = obs.len();
    obs.publish("fieldgate/idt/tower/firmware/set", "21", false)
        .await;
    let ack = obs
        .wait_topic(since, "fieldgate/idt/tower/firmware/set/ack", |_| true)
        .await;
    assert_eq!(json(&ack.payload)["result"], "ok", "{}", ack.payload);
    let (_, again) = config(&mut obs, since, topic).await;
    assert_eq!(again["dev"]["sw"], "21", "{again:#}");
    // No configuration ever went out without the identity.
    for m in obs.all().iter().filter(|m| m.topic == topic) {
        assert!(json(&m.payload)["dev"].get("sw").is_some(), "{}", m.payload);
    }
}

/// A broker that restarted without persistence has lost the retained configurations, and Home
/// Assistant's birth message may have come before the gateway was back: so the discovery
/// configurations go out after every connect, not only after the first (unlike the
/// energy-manager configuration, which is skipped once the broker acknowledged it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_reconnect_sends_the_configurations_again() {
    let dir = tempfile::tempdir().unwrap();
    let (_broker, mqtt) = mosquitto(dir.path(), "").await;
    let proxy = Proxy::start(mqtt).await;
    let (_sim, modbus) = simulator("127.0.0.1:0", &["--speed", "0"]).await;
    let mut obs = Observer::start(mqtt, "#").await;
    let mut gw = start(modbus, proxy.addr).await;
    config(&mut obs, 0, TOWER_CONFIG).await;
    config(&mut obs, 0, GATEWAY_CONFIG).await;

    // Cut the gateway off, and wipe the retained configurations as a restarted broker would.
    proxy.set(ProxyMode::Cut);
    gw.wait_line("mqtt connection lost").await;
    for topic in [TOWER_CONFIG, GATEWAY_CONFIG] {
        obs.publish(topic, "", true).await;
    }
    let since = obs.len();
    proxy.set(ProxyMode::Pass);
    let online = obs
        .wait_topic(since, &format!("{PREFIX}/status"), |p| p == "online")
        .await;
    for topic in [TOWER_CONFIG, GATEWAY_CONFIG] {
        let (_, v) = config(&mut obs, online.seq, topic).await;
        assert_eq!(schema_errors(&v), Vec::<String>::new());
    }
    // And the broker holds them again: a new subscriber gets them retained.
    let mut late = Observer::start(mqtt, "homeassistant/#").await;
    for topic in [TOWER_CONFIG, GATEWAY_CONFIG] {
        let (m, _) = config(&mut late, 0, topic).await;
        assert!(m.retain, "{topic} is retained again");
    }
}
