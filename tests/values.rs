//! Values that are not values, end to end: the real gateway reads a meter whose float registers
//! hold NaN and +Inf, and an i16 holding SunSpec's "no value" 0x8000, and publishes them as JSON
//! `null` with quality `bad` (once per episode), nothing on plain topics and nothing in groups,
//! while the good float next to them keeps publishing `5.83`.
//!
//! The simulated plants never hold NaN, so this test serves the meter's holding registers
//! itself, with tokio-modbus's own Modbus TCP server on an ephemeral port: a real Modbus peer
//! whose registers the test sets, as a meter with an unconnected phase would.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use common::*;

/// Holding registers 0-1 NaN (f32 ABCD), 2-3 +Inf (f32 CDAB), 4-5 5.83 (f32 ABCD), 6 0x8000
/// (i16), 7-10 NaN (f64 DCBA).
fn registers() -> Vec<u16> {
    let nan = 0x7FC0_0000u32;
    let inf = f32::INFINITY.to_bits();
    let good = 5.83f32.to_bits();
    let nan64 = f64::NAN.to_bits().to_be_bytes();
    let dcba: Vec<u16> = nan64
        .chunks(2)
        .rev()
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .collect();
    let mut r = vec![
        (nan >> 16) as u16,
        nan as u16,
        inf as u16,
        (inf >> 16) as u16,
        (good >> 16) as u16,
        good as u16,
        0x8000,
    ];
    r.extend(dcba);
    r
}

async fn meter(registers: Arc<Mutex<Vec<u16>>>) -> SocketAddr {
    common::bank::Bank {
        registers,
        ..Default::default()
    }
    .serve()
    .await
}

const MAPPING: &str = r#"
mqtt: { host: 127.0.0.1, port: "${MQTT_PORT}", client_id: fg-values, status_topic: v/status }
devices:
  - name: meter
    tcp: { host: 127.0.0.1, port: "${MODBUS_PORT}" }
    poll_interval: 200ms
    points:
      - { name: i3_json, kind: holding_register, address: 0, type: f32, unit: A, publish: { topic: v/i3_json, format: json } }
      - { name: i3_plain, kind: holding_register, address: 0, type: f32, publish: { topic: v/i3_plain } }
      - { name: inf_json, kind: holding_register, address: 2, type: f32, order: CDAB, publish: { topic: v/inf_json, format: json } }
      - { name: i1_json, kind: holding_register, address: 4, type: f32, unit: A, publish: { topic: v/i1_json, format: json } }
      - { name: i1_plain, kind: holding_register, address: 4, type: f32, publish: { topic: v/i1_plain } }
      - { name: p3, kind: holding_register, address: 6, type: i16, scale: 0.1, no_value: [0x8000], publish: { topic: v/p3, format: json } }
      - { name: e3_plain, kind: holding_register, address: 7, type: f64, order: DCBA, publish: { topic: v/e3_plain } }
groups:
  - { source: s0, format: simple, interval: 1s, topic: v/group, values: [ { key: i3, point: meter.i3_json, aggregate: last }, { key: i1, point: meter.i1_json, aggregate: last } ] }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nan_inf_and_no_value_are_null_and_bad_while_a_good_float_keeps_publishing() {
    let regs = Arc::new(Mutex::new(registers()));
    let modbus = meter(Arc::clone(&regs)).await;
    let (_broker, mqtt) = broker("127.0.0.1:0").await;
    let mut obs = Observer::start(mqtt, "v/#").await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("mapping.yaml"), MAPPING).unwrap();
    let _gw = Proc::spawn(
        std::process::Command::new(bin())
            .args(["run", "-c"])
            .arg(dir.path().join("mapping.yaml"))
            .env("MODBUS_PORT", modbus.port().to_string())
            .env("MQTT_PORT", mqtt.port().to_string()),
    );

    // Each bad point says why, once, as valid JSON with a null value.
    for (topic, reason) in [
        ("v/i3_json", "not a number"),
        ("v/inf_json", "infinite"),
        ("v/p3", "no value (0x8000)"),
    ] {
        let m = obs.wait_topic(0, topic, |_| true).await;
        let j = json(&m.payload);
        assert_eq!(
            j["value"],
            serde_json::Value::Null,
            "{topic}: {}",
            m.payload
        );
        assert_eq!(j["quality"], "bad", "{topic}");
        assert_eq!(j["error"], reason, "{topic}");
    }
    // The good float is its shortest decimal, in JSON and plain.
    let good = obs.wait_topic(0, "v/i1_json", |_| true).await;
    assert!(
        good.payload.ends_with(r#""value":5.83}"#) || good.payload.contains(r#""value":5.83,"#),
        "{}",
        good.payload
    );
    assert_eq!(json(&good.payload)["quality"], "good");
    let from = good.seq;
    // Three more good readings, and two group windows, later...
    let mut at = from;
    for _ in 0..3 {
        at = obs
            .wait_topic(at + 1, "v/i1_plain", |p| p == "5.83")
            .await
            .seq;
    }
    let g1 = obs.wait_topic(0, "v/group", |_| true).await;
    let g2 = obs.wait_topic(g1.seq + 1, "v/group", |_| true).await;
    let j = json(&g2.payload);
    assert_eq!(j["s0"]["i3"], serde_json::Value::Null, "{}", g2.payload);
    assert_eq!(j["s0"]["i1"], serde_json::json!(5.83), "{}", g2.payload);
    // ...the bad points said it once, and the plain ones never published, let alone `NaN`.
    let all = obs.all();
    let count = |t: &str| all.iter().filter(|m| m.topic == t).count();
    assert_eq!(count("v/i3_json"), 1);
    assert_eq!(count("v/inf_json"), 1);
    assert_eq!(count("v/p3"), 1);
    assert_eq!(count("v/i3_plain"), 0);
    assert_eq!(count("v/e3_plain"), 0);
    assert!(
        all.iter().all(|m| !m.payload.contains("NaN")),
        "{:?}",
        all.iter().map(|m| &m.payload).collect::<Vec<_>>()
    );

    // The phase comes back: 1.5 A, published at once in both formats.
    let since = obs.len();
    let bits = 1.5f32.to_bits();
    regs.lock().unwrap()[..2].copy_from_slice(&[(bits >> 16) as u16, bits as u16]);
    let back = obs.wait_topic(since, "v/i3_json", |_| true).await;
    let j = json(&back.payload);
    assert_eq!(j["value"], serde_json::json!(1.5), "{}", back.payload);
    assert_eq!(j["quality"], "good");
    obs.wait_topic(since, "v/i3_plain", |p| p == "1.5").await;
}
