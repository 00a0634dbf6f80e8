//! Grouped messages end to end: the energy-meter simulator, the embedded broker and the
//! gateway running `mappings/energy-meter.yaml`, with every message checked against the JSON
//! Schemas shipped in `docs/schemas/`.

mod common;

use std::process::Command;

use common::*;
use serde_json::Value;

fn schema(name: &str) -> jsonschema::Validator {
    let text = std::fs::read_to_string(repo(&format!("docs/schemas/{name}.schema.json"))).unwrap();
    jsonschema::validator_for(&serde_json::from_str(&text).unwrap()).unwrap()
}

fn assert_valid(v: &jsonschema::Validator, msg: &Value, what: &str) {
    let errors: Vec<String> = v.iter_errors(msg).map(|e| e.to_string()).collect();
    assert!(
        errors.is_empty(),
        "{what} does not match its schema: {errors:?}\n{msg}"
    );
}

fn gateway_with(
    config: &std::path::Path,
    modbus: std::net::SocketAddr,
    mqtt: std::net::SocketAddr,
    prefix: &str,
) -> Proc {
    Proc::spawn(
        Command::new(bin())
            .args(["run", "-c"])
            .arg(config)
            .env("MODBUS_PORT", modbus.port().to_string())
            .env("MQTT_PORT", mqtt.port().to_string())
            .env("TOPIC_PREFIX", prefix)
            .env("SEND_INTERVAL", "1s"),
    )
}

/// The meter's own registers, decoded here independently of the gateway.
async fn direct_volts_l1_and_power_l1(addr: std::net::SocketAddr) -> (f64, f64) {
    let r = read_input_registers(addr, 0, 14).await;
    let volts = f32::from_bits(u32::from(r[1]) << 16 | u32::from(r[0]));
    let power = (u32::from(r[13]) << 16 | u32::from(r[12])) as i32;
    (f64::from(volts), f64::from(power) * 0.1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn energy_meter_groups_in_both_formats() {
    let (_sim, modbus) = energy_meter().await;
    let (_broker, mqtt) = broker("127.0.0.1:0").await;
    let prefix = "g1/meter";
    let mut obs = Observer::start(mqtt, &format!("{prefix}/#")).await;
    let _gw = gateway_with(&repo("mappings/energy-meter.yaml"), modbus, mqtt, prefix)
        .await_ready()
        .await;
    let (conf_s, meas_s, simple_s) = (
        schema("group-detailed-configuration"),
        schema("group-detailed-measurement"),
        schema("group-simple"),
    );

    // Three measurements, one per second on the second, all under the configuration's id.
    let meas_topic = format!("{prefix}/measurement");
    let mut from = 0;
    let mut stamps = Vec::new();
    let mut last = Value::Null;
    for _ in 0..3 {
        let m = obs
            .wait(from, "a measurement", |m| m.topic == meas_topic)
            .await;
        from = m.seq + 1;
        let j = json(&m.payload);
        assert_valid(&meas_s, &j, "measurement");
        stamps.push(j["s0"]["timestamp"].clone());
        last = j;
    }
    // Each is stamped with the read time of its newest sample: later each time, within a
    // window of 1 s, nanos included.
    let nanos = |t: &Value| {
        u128::from(t["seconds"].as_u64().unwrap()) * 1_000_000_000
            + u128::from(t["nanos"].as_u64().unwrap())
    };
    for w in stamps.windows(2) {
        assert!(nanos(&w[1]) > nanos(&w[0]), "{stamps:?}");
        assert!(nanos(&w[1]) - nanos(&w[0]) < 2_000_000_000, "{stamps:?}");
    }
    assert!(
        stamps.iter().any(|t| t["nanos"] != 0),
        "sub-second read times: {stamps:?}"
    );
    let m = &last["s0"];
    assert_eq!(m["status"], "STATUS_OK", "{last}");

    // A late subscriber finds the retained configuration, and its id is the one measured under.
    let mut late = Observer::start(mqtt, &format!("{prefix}/configuration")).await;
    let conf = late
        .wait_topic(0, &format!("{prefix}/configuration"), |_| true)
        .await;
    assert!(conf.retain, "the configuration is retained");
    let c = json(&conf.payload);
    assert_valid(&conf_s, &c, "configuration");
    assert_eq!(c["s0"]["id"], m["configuration_id"]);
    assert_eq!(
        c["s0"]["configuration"]["values"]["voltage_L1"]["unit"],
        "mV"
    );
    assert_eq!(
        c["s0"]["configuration"]["values"]["energy_import"]["obis_code"],
        "1-0:1.8.0*255"
    );

    // Means match what the meter says (a frozen meter: the mean is the value), in the
    // converted units.
    let (volts, watts) = direct_volts_l1_and_power_l1(modbus).await;
    let mv = m["values"]["voltage_L1"].as_f64().unwrap();
    assert!((mv - volts * 1000.0).abs() <= 1.0, "{mv} mV vs {volts} V");
    let mw = m["values"]["active_power_L1"].as_f64().unwrap();
    assert!((mw - watts * 1000.0).abs() <= 1.0, "{mw} mW vs {watts} W");
    assert_eq!(m["values"]["energy_import"], 123_456_789);

    // The simple format: same source, base units, numeric status.
    let s = json(
        &obs.wait_topic(0, &format!("{prefix}/simple"), |_| true)
            .await
            .payload,
    );
    assert_valid(&simple_s, &s, "simple");
    assert_eq!(s["s0"]["status"], 1);
    assert!((s["s0"]["voltage_L1"].as_f64().unwrap() - volts).abs() < 0.01);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_configuration_gets_a_new_id_after_restart() {
    let (_sim, modbus) = energy_meter().await;
    let (_broker, mqtt) = broker("127.0.0.1:0").await;
    let prefix = "g2/meter";
    let mut obs = Observer::start(mqtt, &format!("{prefix}/#")).await;
    let conf_topic = format!("{prefix}/configuration");
    let meas_topic = format!("{prefix}/measurement");

    let gw = gateway_with(&repo("mappings/energy-meter.yaml"), modbus, mqtt, prefix)
        .await_ready()
        .await;
    let first = json(&obs.wait_topic(0, &conf_topic, |_| true).await.payload)["s0"]["id"].clone();
    obs.wait(0, "a measurement", |m| m.topic == meas_topic)
        .await;
    drop(gw);

    // The same file again: the same id survives the restart.
    let since = obs.len();
    let gw = gateway_with(&repo("mappings/energy-meter.yaml"), modbus, mqtt, prefix)
        .await_ready()
        .await;
    let again =
        json(&obs.wait_topic(since, &conf_topic, |_| true).await.payload)["s0"]["id"].clone();
    assert_eq!(again, first);
    drop(gw);

    // A changed unit: a new id, a new retained configuration, and measurements under it.
    let dir = tempfile::tempdir().unwrap();
    let changed = dir.path().join("energy-meter.yaml");
    let text = std::fs::read_to_string(repo("mappings/energy-meter.yaml")).unwrap();
    let edited = text.replacen(
        "obis_code: \"1-0:32.4.0*255\", unit: mV",
        "obis_code: \"1-0:32.4.0*255\", unit: V",
        1,
    );
    assert_ne!(edited, text);
    std::fs::write(&changed, edited).unwrap();
    let since = obs.len();
    let _gw = gateway_with(&changed, modbus, mqtt, prefix)
        .await_ready()
        .await;
    let conf = json(&obs.wait_topic(since, &conf_topic, |_| true).await.payload);
    let new_id = conf["s0"]["id"].clone();
    assert_ne!(new_id, first);
    assert_eq!(
        conf["s0"]["configuration"]["values"]["voltage_L1"]["unit"],
        "V"
    );
    let m = json(
        &obs.wait(since, "a measurement under the new id", |m| {
            m.topic == meas_topic
        })
        .await
        .payload,
    );
    assert_eq!(m["s0"]["configuration_id"], new_id);
    let mut late = Observer::start(mqtt, &conf_topic).await;
    let retained = json(&late.wait_topic(0, &conf_topic, |_| true).await.payload);
    assert_eq!(
        retained["s0"]["id"], new_id,
        "the retained configuration is the new one"
    );
}

#[test]
fn check_sample_prints_null_payloads_that_match_the_schemas() {
    let out = Command::new(bin())
        .args(["check", "--sample", "-c"])
        .arg(repo("mappings/energy-meter.yaml"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let samples: Vec<&str> = text
        .split("sample messages:")
        .nth(1)
        .unwrap()
        .lines()
        .collect();
    let payloads: Vec<Value> = samples
        .iter()
        .filter(|l| l.starts_with("  {"))
        .map(|l| json(l.trim()))
        .collect();
    assert_eq!(payloads.len(), 3, "{text}");
    assert_valid(
        &schema("group-detailed-configuration"),
        &payloads[0],
        "sample configuration",
    );
    assert_valid(
        &schema("group-detailed-measurement"),
        &payloads[1],
        "sample measurement",
    );
    assert_valid(&schema("group-simple"), &payloads[2], "sample simple");
    assert!(
        payloads[1]["s0"]["values"]
            .as_object()
            .unwrap()
            .values()
            .all(Value::is_null)
    );
    // A schema that accepts everything would prove nothing: a broken message is refused.
    let mut broken = payloads[1].clone();
    broken["s0"]["configuration_id"] = Value::from("not-a-sha1");
    assert!(!schema("group-detailed-measurement").is_valid(&broken));
}
