//! Every fault the simulator can inject, against the real gateway: no answer, a late answer,
//! a closed connection, each exception code, and a device that accepts one connection. For
//! each: the device status and point quality are right, the gateway reconnects and recovers,
//! a late reply is never taken for the next answer, and a healthy device on another link
//! keeps its poll rate.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// (counter value, arrival) of the good readings on `topic`.
fn good(obs: &Observer, topic: &str) -> Vec<(u64, Instant)> {
    obs.all()
        .iter()
        .filter(|m| m.topic == topic)
        .map(|m| (json(&m.payload), m.at))
        .filter(|(v, _)| v["quality"] == "good")
        .map(|(v, at)| (v["value"].as_u64().unwrap(), at))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_simulator_fault_is_survived_with_the_right_status_and_quality() {
    let (_healthy, a) = simulator("127.0.0.1:0", &["--speed", "0"]).await;
    // The faulty one accepts one connection at a time, as many real devices do.
    let (mut sim, b) = simulator(
        "127.0.0.1:0",
        &["--speed", "0", "--level", "42", "--max-connections", "1"],
    )
    .await;
    let (_broker, mqtt) = broker("127.0.0.1:0").await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("mapping.yaml");
    std::fs::write(
        &config,
        format!(
            r#"
mqtt: {{ host: 127.0.0.1, port: {mp}, status_topic: mf/status }}
devices:
  - name: a
    tcp: {{ host: 127.0.0.1, port: {ap} }}
    poll_interval: 100ms
    points:
      - {{ name: reads, kind: input_register, address: 9, type: u32, publish: {{ topic: mf/a, format: json, mode: on_change }} }}
  - name: b
    tcp: {{ host: 127.0.0.1, port: {bp} }}
    poll_interval: 100ms
    timeout: 300ms
    points:
      # Two requests per poll (nothing between them is read): a reply taken for the wrong
      # request would show as a level other than 42 or a counter going backwards.
      - {{ name: level, kind: input_register, address: 0, publish: {{ topic: mf/b/level, format: json, mode: on_change }} }}
      - {{ name: reads, kind: input_register, address: 9, type: u32, publish: {{ topic: mf/b, format: json, mode: on_change }} }}
      - {{ name: p1, kind: coil, address: 0, writable: true, publish: {{ topic: mf/b/p1, mode: on_change }} }}
commands:
  - {{ topic: mf/b/p1/set, write: b.p1 }}
"#,
            mp = mqtt.port(),
            ap = a.port(),
            bp = b.port()
        ),
    )
    .unwrap();
    let mut obs = Observer::start(mqtt, "mf/#").await;
    let mut gw = Proc::spawn(
        std::process::Command::new(bin())
            .args(["run", "-c"])
            .arg(&config),
    );
    obs.wait_topic(0, "mf/b", |p| p.contains("\"value\":3}"))
        .await;

    // A second master is turned away while the gateway holds the one connection.
    let second = read_input_registers_result(b).await;
    assert!(
        second.is_err(),
        "a second connection was served: {second:?}"
    );

    for mode in ["silent", "late", "close"] {
        let since = obs.len();
        let connects = gw.count_lines("modbus link connected");
        sim.send_line(&format!("fault 1 {mode}"));
        sim.wait_line(&format!("fault 1 {mode} ok")).await;
        let t0 = Instant::now();
        let status = obs
            .wait_topic(since, "mf/status/b", |p| p.contains("\"error\""))
            .await;
        assert!(json(&status.payload)["reason"].is_string(), "{mode}");
        // Each JSON point goes stale once, keeping its last value and its time.
        let stale = obs
            .wait_topic(since, "mf/b", |p| p.contains("\"stale\""))
            .await;
        assert!(json(&stale.payload)["value"].as_u64().unwrap() > 0);
        if mode == "silent" {
            // A command for the failing device is refused at once, not kept for later: a
            // pump must not start when the device comes back.
            obs.publish("mf/b/p1/set", "true", false).await;
            let ack = obs.wait_topic(since, "mf/b/p1/set/ack", |_| true).await;
            assert_eq!(json(&ack.payload)["result"], "error", "{}", ack.payload);
        }
        // The healthy device keeps its rate: ~10 readings a second, against ~3 if it waited
        // behind b's 300 ms timeouts.
        let a_before = good(&obs, "mf/a").len();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let a_during = good(&obs, "mf/a").len() - a_before;
        assert!(
            a_during >= 12,
            "{mode}: the healthy device published {a_during} readings in 2 s"
        );
        sim.send_line("fault 1 none");
        sim.wait_line("fault 1 none ok").await;
        obs.wait_topic(since, "mf/status/b", |p| p.contains("\"ok\""))
            .await;
        let back = obs
            .wait(status.seq, "a fresh reading of b", |m| {
                m.topic == "mf/b" && m.payload.contains("\"good\"")
            })
            .await;
        assert!(back.at > t0);
        if mode == "silent" {
            // (The device accepts one connection, the gateway's: ask through the gateway.)
            obs.wait_topic(status.seq, "mf/b/p1", |p| p == "false")
                .await;
            assert!(
                !obs.all()
                    .iter()
                    .any(|m| m.topic == "mf/b/p1" && m.payload == "true"),
                "the refused command was written later"
            );
        } else {
            // late and close cost the connection: it was re-opened.
            gw.wait_count(&["modbus link connected"], connects + 1)
                .await;
        }
        assert_eq!(
            obs.all()
                .iter()
                .skip(since)
                .filter(|m| m.topic == "mf/b" && m.payload.contains("\"stale\""))
                .count(),
            1,
            "{mode}: stale is published once"
        );
    }

    // Each exception code marks b's points bad, with the code's name; the connection stays.
    for (code, name) in [
        (1, "illegal function"),
        (2, "illegal data address"),
        (3, "illegal data value"),
        (4, "server device failure"),
        (5, "acknowledge"),
        (6, "server device busy"),
        (8, "memory parity error"),
        (10, "gateway path unavailable"),
        (11, "gateway target device failed to respond"),
    ] {
        let since = obs.len();
        let connects = gw.count_lines("modbus link connected");
        sim.send_line(&format!("fault 1 exception:{code}"));
        sim.wait_line(&format!("fault 1 exception:{code} ok")).await;
        let bad = obs
            .wait_topic(since, "mf/b", |p| p.contains("\"bad\""))
            .await;
        let bad = json(&bad.payload);
        assert!(bad["value"].is_null());
        assert!(
            bad["error"].as_str().unwrap().contains(name),
            "exception {code}: {bad}"
        );
        sim.send_line("fault 1 none");
        sim.wait_line("fault 1 none ok").await;
        obs.wait_topic(since, "mf/b", |p| p.contains("\"good\""))
            .await;
        assert_eq!(
            gw.count_lines("modbus link connected"),
            connects,
            "exception {code} cost the connection"
        );
    }

    // Through all of it, no reply was taken for another request's: the level never read
    // anything but 42, and the counter only ever rose.
    for m in obs.all().iter().filter(|m| m.topic == "mf/b/level") {
        let v = json(&m.payload);
        if v["quality"] == "good" {
            assert_eq!(v["value"], 42, "{}", m.payload);
        }
    }
    let b_readings = good(&obs, "mf/b");
    for w in b_readings.windows(2) {
        assert!(w[1].0 > w[0].0, "b's counter went {} -> {}", w[0].0, w[1].0);
    }
    gw.signal("TERM");
    assert_eq!(gw.wait_exit().await, Some(0));
}

/// One read from a second master; Err when the device turns it away.
async fn read_input_registers_result(addr: std::net::SocketAddr) -> Result<Vec<u16>, String> {
    use tokio_modbus::prelude::*;
    let fut = async {
        let mut ctx = tcp::connect(addr).await.map_err(|e| e.to_string())?;
        ctx.read_input_registers(0, 1)
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
    };
    tokio::time::timeout(Duration::from_secs(2), fut)
        .await
        .unwrap_or_else(|_| Err("timeout".into()))
}
