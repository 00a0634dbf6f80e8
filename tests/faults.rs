//! Faults on the Modbus side, end to end: a device that never answers does not slow a healthy
//! one, and a Modbus exception marks only the points of its request bad.

mod common;

use std::net::SocketAddr;

use common::*;

/// A TCP peer that accepts connections and never answers: every request times out.
async fn black_hole() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    (addr, task)
}

fn write_config(dir: &std::path::Path, yaml: &str) -> std::path::PathBuf {
    let p = dir.join("mapping.yaml");
    std::fs::write(&p, yaml).unwrap();
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_device_does_not_delay_a_healthy_one() {
    let (_sim_proc, sim) = simulator("127.0.0.1:0", &["--speed", "0", "--level", "42"]).await;
    let (dead, _hole) = black_hole().await;
    let (_broker, mqtt) = broker("127.0.0.1:0").await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            r#"
mqtt: {{ host: 127.0.0.1, port: {mp}, status_topic: f1/status }}
devices:
  - name: healthy
    tcp: {{ host: 127.0.0.1, port: {hp} }}
    poll_interval: 200ms
    points:
      - {{ name: level, kind: input_register, address: 0, publish: {{ topic: f1/level }} }}
  - name: dead
    tcp: {{ host: 127.0.0.1, port: {dp} }}
    timeout: 2s
    poll_interval: 200ms
    points:
      - {{ name: level, kind: input_register, address: 0, publish: {{ topic: f1/dead_level }} }}
"#,
            mp = mqtt.port(),
            hp = sim.port(),
            dp = dead.port()
        ),
    );
    let mut obs = Observer::start(mqtt, "f1/#").await;
    let mut gw = Proc::spawn(
        std::process::Command::new(bin())
            .args(["run", "-c"])
            .arg(&config),
    );
    obs.wait_topic(0, "f1/level", |p| p == "42").await;
    let down = ["request failed", "timeout after 2s"];
    gw.wait_count(&down, 1).await;
    let healthy = |o: &Observer| o.all().iter().filter(|m| m.topic == "f1/level").count();
    let before = healthy(&obs);
    // Two more 2 s timeouts of the dead device (the link is re-opened after each).
    gw.wait_count(&down, 3).await;
    let during = healthy(&obs) - before;
    // Independent links: about ten healthy polls per dead timeout. Serialised behind the dead
    // device it would be at most one per timeout.
    assert!(
        during >= 6,
        "healthy device published {during} values during two dead-device timeouts"
    );
    assert!(
        !obs.all().iter().any(|m| m.topic == "f1/dead_level"),
        "a dead device published a value"
    );
    let status = obs.wait_topic(0, "f1/status/dead", |_| true).await;
    assert_eq!(json(&status.payload)["status"], "error");
    assert_eq!(
        json(
            &obs.wait_topic(0, "f1/status/healthy", |_| true)
                .await
                .payload
        )["status"],
        "ok"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exception_marks_only_its_points_bad_and_keeps_the_connection() {
    let (_sim, modbus) = simulator("127.0.0.1:0", &["--speed", "0", "--level", "99"]).await;
    let (_broker, mqtt) = broker("127.0.0.1:0").await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            r#"
mqtt: {{ host: 127.0.0.1, port: {mp}, status_topic: f2/status }}
devices:
  - name: tower
    tcp: {{ host: 127.0.0.1, port: {sp} }}
    poll_interval: 200ms
    points:
      - {{ name: level, kind: input_register, address: 0, publish: {{ topic: f2/level }} }}
      - {{ name: missing, kind: input_register, address: 50, type: f32, publish: {{ topic: f2/missing, format: json }} }}
"#,
            mp = mqtt.port(),
            sp = modbus.port()
        ),
    );
    let mut obs = Observer::start(mqtt, "f2/#").await;
    let gw = Proc::spawn(
        std::process::Command::new(bin())
            .args(["run", "-c"])
            .arg(&config),
    );
    let bad = json(&obs.wait_topic(0, "f2/missing", |_| true).await.payload);
    assert_eq!(bad["quality"], "bad");
    assert_schema("point", &bad);
    assert!(bad["value"].is_null());
    assert!(
        bad["error"]
            .as_str()
            .unwrap()
            .contains("illegal data address"),
        "{bad}"
    );
    // The good point keeps publishing on the same connection; the device is degraded, and
    // says which point fails and why.
    let m = obs.wait_topic(0, "f2/level", |p| p == "99").await;
    obs.wait(m.seq + 1, "another level", |m| m.topic == "f2/level")
        .await;
    let status = json(&obs.wait_topic(0, "f2/status/tower", |_| true).await.payload);
    assert_eq!(status["status"], "degraded", "{status}");
    assert_eq!(status["failing"], serde_json::json!(["tower.missing"]));
    assert!(
        status["reason"]
            .as_str()
            .unwrap()
            .contains("input_register 50+2"),
        "{status}"
    );
    // Bad quality is published once, not every poll.
    assert_eq!(
        obs.all().iter().filter(|m| m.topic == "f2/missing").count(),
        1
    );
    assert_eq!(
        gw.count_lines("modbus link connected"),
        1,
        "the connection was kept: {}",
        gw.output()
    );
}
