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

/// The stored shape of one of the specification's sample messages.
fn shape(name: &str) -> Value {
    json(
        &std::fs::read_to_string(repo(&format!(
            "tests/golden/energy-manager/{name}.shape.json"
        )))
        .unwrap(),
    )
}

/// Whether `msg` has exactly the keys and nesting of `shape`, and each leaf the JSON type the
/// shape names (`integer` is also a `number`); with `nulls`, a leaf may be null (a sample).
fn conforms(msg: &Value, shape: &Value, nulls: bool, at: &str) -> Result<(), String> {
    match (shape, msg) {
        (_, Value::Null) if nulls && !shape.is_object() => Ok(()),
        (Value::Object(s), Value::Object(m)) => {
            let sk: Vec<&String> = s.keys().collect();
            let mk: Vec<&String> = m.keys().collect();
            if sk != mk {
                return Err(format!("{at}: keys {mk:?}, the sample has {sk:?}"));
            }
            s.iter()
                .try_for_each(|(k, v)| conforms(&m[k], v, nulls, &format!("{at}.{k}")))
        }
        (Value::Array(s), Value::Array(m)) => m
            .iter()
            .enumerate()
            .try_for_each(|(i, x)| conforms(x, &s[0], nulls, &format!("{at}[{i}]"))),
        (Value::String(t), m) => {
            let ok = match t.as_str() {
                "string" => m.is_string(),
                "integer" => m.is_i64() || m.is_u64(),
                "number" => m.is_number(),
                "null" => m.is_null(),
                other => return Err(format!("{at}: unknown type {other} in the shape")),
            };
            if ok {
                Ok(())
            } else {
                Err(format!("{at}: {m} is not a {t}"))
            }
        }
        (s, m) => Err(format!("{at}: {m} does not have the shape {s}")),
    }
}

fn assert_shape(msg: &Value, name: &str, nulls: bool) {
    if let Err(e) = conforms(msg, &shape(name), nulls, name) {
        panic!("{e}\n{msg}");
    }
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
        c["s0"]["configuration"]["values"]["active_energy_+_L1"]["obis_code"],
        "1-0:21.8.0*255"
    );

    // Means match what the meter says (a frozen meter: the mean is the value), in the
    // converted units.
    let (volts, watts) = direct_volts_l1_and_power_l1(modbus).await;
    let mv = m["values"]["voltage_L1"].as_f64().unwrap();
    assert!((mv - volts * 1000.0).abs() <= 1.0, "{mv} mV vs {volts} V");
    let mw = m["values"]["active_power_+_L1"].as_f64().unwrap();
    assert!((mw - watts * 1000.0).abs() <= 1.0, "{mw} mW vs {watts} W");
    assert_eq!(m["values"]["active_energy_+_L1"], 61_728_394_000_u64);

    // The simple format: same source, the same keys in the same units, numeric status.
    let s = json(
        &obs.wait_topic(0, &format!("{prefix}/simple"), |_| true)
            .await
            .payload,
    );
    assert_valid(&simple_s, &s, "simple");
    assert_eq!(s["s0"]["status"], 1);
    assert!((s["s0"]["voltage_L1"].as_f64().unwrap() - volts * 1000.0).abs() <= 1.0);
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
    // The spec's sample, key by key: both sources in each message, nothing more.
    assert_shape(&payloads[0], "configuration", false);
    assert_shape(&payloads[1], "measurement", true);
    assert_shape(&payloads[2], "simple", true);
    let expected =
        json(&std::fs::read_to_string(repo("tests/golden/energy-manager/values.json")).unwrap());
    assert_eq!(payloads[0]["s0"]["configuration"]["values"], expected);
    for (k, v) in payloads[0]["s1"]["configuration"]["values"]
        .as_object()
        .unwrap()
    {
        assert_eq!(v, &expected[k], "{k}");
    }
    assert_eq!(
        payloads[0]["s0"]["configuration"]["class"],
        "CLASS_CONSUMER"
    );
    assert_eq!(
        payloads[0]["s1"]["configuration"]["devicetype"],
        "DEVICE_TYPE_ROOM_KITCHEN"
    );
    assert_eq!(
        payloads[0]["s1"]["configuration"]["sources"],
        serde_json::json!(["s0"])
    );
    // A changed shape is noticed.
    let mut extra = payloads[1].clone();
    extra["s0"]["values"]["frequency"] = Value::from(50_000);
    assert!(conforms(&extra, &shape("measurement"), true, "m").is_err());
    // A schema that accepts everything would prove nothing: a broken message is refused.
    let mut broken = payloads[1].clone();
    broken["s0"]["configuration_id"] = Value::from("not-a-sha1");
    assert!(!schema("group-detailed-measurement").is_valid(&broken));
}

/// The shipped mapping's two sources against mosquitto: one message per topic and interval
/// holding both, each under its configuration id, one retained configuration holding both, and
/// a real run's messages in the shape of the specification's sample.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sources_share_one_message_and_one_retained_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let (_mosq, mqtt) = mosquitto(dir.path(), "").await;
    let (_sim, modbus) = energy_meter().await;
    let prefix = "g3/meter";
    let mut obs = Observer::start(mqtt, &format!("{prefix}/#")).await;
    let _gw = gateway_with(&repo("mappings/energy-meter.yaml"), modbus, mqtt, prefix)
        .await_ready()
        .await;
    let (conf_t, meas_t, simple_t) = (
        format!("{prefix}/configuration"),
        format!("{prefix}/measurement"),
        format!("{prefix}/simple"),
    );
    let meas_s = schema("group-detailed-measurement");
    // Two intervals: each brings exactly one measurement and one simple message.
    let first = obs.wait(0, "a measurement", |m| m.topic == meas_t).await;
    let mut from = first.seq + 1;
    let mut measurements = Vec::new();
    for _ in 0..2 {
        let m = obs.wait(from, "a measurement", |m| m.topic == meas_t).await;
        from = m.seq + 1;
        measurements.push(m);
    }
    let between = obs.all()[first.seq + 1..measurements[1].seq]
        .iter()
        .filter(|m| m.topic == meas_t)
        .count();
    assert_eq!(between, 1, "one measurement message per interval");
    let conf = json(&obs.wait_topic(0, &conf_t, |_| true).await.payload);
    for m in &measurements {
        let j = json(&m.payload);
        assert_valid(&meas_s, &j, "measurement");
        assert_shape(&j, "measurement", false);
        for src in ["s0", "s1"] {
            assert_eq!(j[src]["configuration_id"], conf[src]["id"], "{src}: {j}");
            assert_eq!(j[src]["status"], "STATUS_OK", "{j}");
        }
        // The kitchen is made of the meter's L1: the same readings.
        assert_eq!(
            j["s1"]["values"]["voltage_L1"],
            j["s0"]["values"]["voltage_L1"]
        );
    }
    let simple = json(&obs.wait_topic(0, &simple_t, |_| true).await.payload);
    assert_valid(&schema("group-simple"), &simple, "simple");
    assert_shape(&simple, "simple", false);

    // A late subscriber gets one retained configuration with both sources.
    let mut late = Observer::start(mqtt, &conf_t).await;
    let retained = late.wait_topic(0, &conf_t, |_| true).await;
    assert!(retained.retain);
    let r = json(&retained.payload);
    assert_valid(&schema("group-detailed-configuration"), &r, "configuration");
    assert_shape(&r, "configuration", false);
    assert_eq!(r, conf);
    assert_eq!(
        r["s1"]["configuration"]["sources"],
        serde_json::json!(["s0"])
    );
    assert_ne!(r["s0"]["id"], r["s1"]["id"]);
}

/// `configuration_retain: false`: the configuration is published unretained, and sent again
/// after a reconnect (a retained one is left to the broker).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unretained_configuration_is_sent_again_after_a_reconnect() {
    let dir = tempfile::tempdir().unwrap();
    let (_mosq, mqtt) = mosquitto(dir.path(), "").await;
    let proxy = Proxy::start(mqtt).await;
    let (_sim, modbus) = energy_meter().await;
    let prefix = "g4/meter";
    let text = std::fs::read_to_string(repo("mappings/energy-meter.yaml")).unwrap();
    let edited = text.replace(
        "    format: detailed\n",
        "    format: detailed\n    configuration_retain: false\n",
    );
    assert_eq!(edited.matches("configuration_retain: false").count(), 2);
    let file = dir.path().join("energy-meter.yaml");
    std::fs::write(&file, edited).unwrap();
    let conf_t = format!("{prefix}/configuration");
    let meas_t = format!("{prefix}/measurement");
    let mut obs = Observer::start(mqtt, &format!("{prefix}/#")).await;
    let mut gw = gateway_with(&file, modbus, proxy.addr, prefix)
        .await_ready()
        .await;
    let c = obs.wait_topic(0, &conf_t, |_| true).await;
    let first = json(&c.payload);
    assert!(first["s0"]["id"].is_string() && first["s1"]["id"].is_string());

    // Not retained: a late subscriber gets the retained gateway status, then live
    // measurements, and never the configuration.
    let mut late = Observer::start(mqtt, &format!("{prefix}/#")).await;
    late.wait(0, "the retained status", |m| {
        m.retain && m.topic.starts_with(&format!("{prefix}/status"))
    })
    .await;
    let m = late
        .wait(0, "a live measurement", |m| m.topic == meas_t)
        .await;
    assert!(
        late.all()[..m.seq].iter().all(|x| x.topic != conf_t),
        "the configuration was retained"
    );

    // After a reconnect it comes again, the same.
    let since = obs.len();
    proxy.set(ProxyMode::Cut);
    gw.wait_line("mqtt connection lost").await;
    proxy.set(ProxyMode::Pass);
    let again = obs.wait_topic(since, &conf_t, |_| true).await;
    assert_eq!(json(&again.payload), first);
}

/// A retained configuration the broker acknowledged is not sent again after a reconnect (the
/// broker holds it); an unretained one is (the test above).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retained_configuration_is_not_sent_again_after_a_reconnect() {
    let dir = tempfile::tempdir().unwrap();
    let (_mosq, mqtt) = mosquitto(dir.path(), "").await;
    let proxy = Proxy::start(mqtt).await;
    let (_sim, modbus) = energy_meter().await;
    let prefix = "g5/meter";
    let file = repo("mappings/energy-meter.yaml");
    let conf_t = format!("{prefix}/configuration");
    let mut obs = Observer::start(mqtt, &format!("{prefix}/#")).await;
    let mut gw = gateway_with(&file, modbus, proxy.addr, prefix)
        .await_ready()
        .await;
    let first = obs.wait_topic(0, &conf_t, |_| true).await;
    assert!(first.retain || obs.all().iter().any(|m| m.topic == conf_t));
    // The observer can have the configuration before the gateway has the broker's PUBACK:
    // cut only once the gateway knows it was acknowledged (else it rightly sends it again).
    gw.wait_line("retained announcement acknowledged").await;
    // Cut the gateway off and let it back; wait until it says online again, then for a
    // measurement after that.
    let since = obs.len();
    proxy.set(ProxyMode::Cut);
    gw.wait_line("mqtt connection lost").await;
    proxy.set(ProxyMode::Pass);
    let online = obs
        .wait_topic(since, &format!("{prefix}/status"), |p| p == "online")
        .await;
    let meas_t = format!("{prefix}/measurement");
    let m = obs
        .wait(online.seq + 1, "a measurement after the reconnect", |m| {
            m.topic == meas_t
        })
        .await;
    assert!(
        obs.all()[since..m.seq].iter().all(|x| x.topic != conf_t),
        "the retained configuration was sent again"
    );
}
