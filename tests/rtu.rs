//! Modbus RTU end to end: several units on one virtual serial bus (socat pty pair), the real
//! binary as simulator and gateway, the embedded broker; faults on one unit; RTU over TCP; and
//! independent peers (mbpoll as master against our simulator, pymodbus as slave for our
//! gateway).

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

fn bus_yaml(mqtt: std::net::SocketAddr, port: &Path, prefix: &str) -> String {
    format!(
        r#"
mqtt: {{ host: 127.0.0.1, port: {mp}, status_topic: {prefix}/status }}
buses:
  - name: field
    serial: {{ device: "{dev}", baud: 19200, parity: none }}
    timeout: 300ms
devices:
  - name: t1
    bus: field
    unit: 1
    poll_interval: 200ms
    points:
      - {{ name: level, kind: input_register, address: 0, publish: {{ topic: {prefix}/t1/level }} }}
      - {{ name: p1, kind: coil, address: 0, writable: true, publish: {{ topic: {prefix}/t1/p1, mode: on_change }} }}
  - name: t2
    bus: field
    unit: 2
    poll_interval: 200ms
    points:
      - {{ name: level, kind: input_register, address: 0, publish: {{ topic: {prefix}/t2/level }} }}
      - {{ name: p1, kind: coil, address: 0, writable: true, publish: {{ topic: {prefix}/t2/p1, mode: on_change }} }}
commands:
  - {{ topic: {prefix}/t1/p1/set, write: t1.p1 }}
  - {{ topic: {prefix}/t2/p1/set, write: t2.p1 }}
"#,
        mp = mqtt.port(),
        dev = port.display()
    )
}

fn count(obs: &Observer, topic: &str) -> usize {
    obs.all().iter().filter(|m| m.topic == topic).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_units_on_one_bus_are_published_and_commands_reach_the_right_unit() {
    let pty = PtyPair::new().await;
    let _sim = rtu_simulator(
        &pty.a,
        &["--units", "1,2", "--levels", "111,222", "--speed", "0"],
    )
    .await;
    let (_broker, mqtt) = broker("127.0.0.1:0").await;
    let mut obs = Observer::start(mqtt, "r1/#").await;
    let dir = tempfile::tempdir().unwrap();
    let _gw = gateway_yaml(dir.path(), &bus_yaml(mqtt, &pty.b, "r1"));

    obs.wait_topic(0, "r1/t1/level", |p| p == "111").await;
    obs.wait_topic(0, "r1/t2/level", |p| p == "222").await;
    obs.wait_topic(0, "r1/t1/p1", |p| p == "false").await;
    obs.wait_topic(0, "r1/t2/p1", |p| p == "false").await;

    let since = obs.len();
    obs.publish("r1/t2/p1/set", "1", false).await;
    let ack = json(
        &obs.wait_topic(since, "r1/t2/p1/set/ack", |_| true)
            .await
            .payload,
    );
    assert_eq!(ack["result"], "ok", "{ack}");
    obs.wait_topic(since, "r1/t2/p1", |p| p == "true").await;
    // Unit 1's coil did not move: wait for a later poll of unit 1, then look at what it said.
    let later = obs
        .wait(obs.len(), "a later unit 1 level", |m| {
            m.topic == "r1/t1/level"
        })
        .await;
    assert!(
        obs.all()[..later.seq]
            .iter()
            .all(|m| m.topic != "r1/t1/p1" || m.payload == "false")
    );
    assert!(
        obs.all()
            .iter()
            .all(|m| !(m.topic.starts_with("r1/t1/level") && m.payload != "111"))
    );
    assert!(
        obs.all()
            .iter()
            .all(|m| !(m.topic.starts_with("r1/t2/level") && m.payload != "222"))
    );
}

/// Unit 2 fails in `mode`; unit 1 keeps its rate and its own values; unit 2 recovers.
async fn one_unit_faulty(mode: &str, prefix: &str) {
    let pty = PtyPair::new().await;
    let mut sim = rtu_simulator(
        &pty.a,
        &[
            "--units", "1,2", "--levels", "111,222", "--speed", "0", "--late", "450ms",
        ],
    )
    .await;
    let (_broker, mqtt) = broker("127.0.0.1:0").await;
    let mut obs = Observer::start(mqtt, &format!("{prefix}/#")).await;
    let dir = tempfile::tempdir().unwrap();
    let mut gw = gateway_yaml(dir.path(), &bus_yaml(mqtt, &pty.b, prefix));
    let (t1, t2) = (format!("{prefix}/t1/level"), format!("{prefix}/t2/level"));
    obs.wait_topic(0, &t1, |p| p == "111").await;
    obs.wait_topic(0, &t2, |p| p == "222").await;

    sim.send_line(&format!("fault 2 {mode}"));
    sim.wait_line(&format!("fault 2 {mode} ok")).await;
    let status2 = format!("{prefix}/status/t2");
    obs.wait_topic(0, &status2, |p| json(p)["status"] == "error")
        .await;
    // Quarantine starts at the third failed poll; count unit 1's values across the next two
    // failures of unit 2 (at least 1 s + 2 s of quarantine backoff).
    gw.wait_count(&["request failed", "device=\"t2\""], 3).await;
    gw.wait_line("device quarantined").await;
    let q = obs
        .wait_topic(0, &status2, |p| {
            json(p)["reason"]
                .as_str()
                .is_some_and(|r| r.starts_with("quarantined after 3 failed polls"))
        })
        .await;
    assert_eq!(json(&q.payload)["status"], "error");
    let before = count(&obs, &t1);
    gw.wait_count(&["request failed", "device=\"t2\""], 5).await;
    let during = count(&obs, &t1) - before;
    // At 200 ms polling unit 1 publishes ~15 values in those 3 s; serialised behind unit 2's
    // 300 ms timeouts without quarantine it would get about 6.
    assert!(
        during >= 10,
        "unit 1 published only {during} values while unit 2 was quarantined ({mode})"
    );
    assert!(
        !gw.output().contains("request failed device=\"t1\""),
        "unit 1 failed because of unit 2 ({mode}):\n{}",
        gw.output()
    );

    sim.send_line("fault 2 none");
    sim.wait_line("fault 2 none ok").await;
    let since = obs.len();
    obs.wait_topic(since, &status2, |p| json(p)["status"] == "ok")
        .await;
    obs.wait_topic(since, &t2, |p| p == "222").await;
    // Never did a value of one unit appear under the other.
    for m in obs.all() {
        if m.topic == t1 {
            assert_eq!(
                m.payload, "111",
                "unit 1 published a foreign value ({mode})"
            );
        }
        if m.topic == t2 {
            assert_eq!(
                m.payload, "222",
                "unit 2 published a foreign value ({mode})"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_unit_does_not_starve_the_other() {
    one_unit_faulty("silent", "r2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_unit_never_answers_for_the_other() {
    one_unit_faulty("late", "r3").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unit_sending_garbage_does_not_disturb_the_other() {
    one_unit_faulty("garbage", "r4").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtu_over_tcp_serves_two_units() {
    let (_sim, addr) = simulator(
        "127.0.0.1:0",
        &[
            "--rtu-over-tcp",
            "--units",
            "1,2",
            "--levels",
            "11,22",
            "--speed",
            "0",
        ],
    )
    .await;
    let (_broker, mqtt) = broker("127.0.0.1:0").await;
    let mut obs = Observer::start(mqtt, "r5/#").await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        r#"
mqtt: {{ host: 127.0.0.1, port: {mp}, status_topic: r5/status }}
buses:
  - name: converter
    tcp: {{ host: 127.0.0.1, port: {sp} }}
    timeout: 500ms
devices:
  - {{ name: a, bus: converter, unit: 1, poll_interval: 200ms, points: [{{ name: level, kind: input_register, address: 0, publish: {{ topic: r5/a }} }}] }}
  - {{ name: b, bus: converter, unit: 2, poll_interval: 200ms, points: [{{ name: level, kind: input_register, address: 0, publish: {{ topic: r5/b }} }}] }}
"#,
        mp = mqtt.port(),
        sp = addr.port()
    );
    let gw = gateway_yaml(dir.path(), &yaml);
    obs.wait_topic(0, "r5/a", |p| p == "11").await;
    obs.wait_topic(0, "r5/b", |p| p == "22").await;
    assert_eq!(
        gw.count_lines("modbus link connected"),
        1,
        "one socket for both units"
    );
}

fn tool(name: &str) -> String {
    ["/usr/bin", "/usr/local/bin"]
        .iter()
        .map(|d| format!("{d}/{name}"))
        .find(|p| Path::new(p).exists())
        .unwrap_or_else(|| panic!("{name} is not installed: apt-get install -y {name}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mbpoll_as_master_reads_and_writes_our_rtu_simulator() {
    let pty = PtyPair::new().await;
    let _sim = rtu_simulator(&pty.a, &["--units", "7", "--levels", "123", "--speed", "0"]).await;
    let port = pty.b.to_str().unwrap();
    let mbpoll = |args: &[&str]| {
        let out = Command::new(tool("mbpoll"))
            .args(["-m", "rtu", "-a", "7", "-b", "19200", "-P", "none", "-1"])
            .args(args)
            .arg(port)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // Input register 1 (mbpoll counts from 1) = protocol address 0 = the level.
    let out = mbpoll(&["-t", "3", "-r", "1", "-c", "1"]);
    assert!(out.contains("[1]: \t123"), "{out}");
    // Write coil 1 (address 0, pump 1) and read it back, and the running input follows.
    let out = Command::new(tool("mbpoll"))
        .args([
            "-m", "rtu", "-a", "7", "-b", "19200", "-P", "none", "-t", "0", "-r", "1", port, "1",
        ])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("Written 1 references"),
        "{:?}",
        out
    );
    let out = mbpoll(&["-t", "1", "-r", "1", "-c", "2"]);
    assert!(
        out.contains("[1]: \t1") && out.contains("[2]: \t0"),
        "{out}"
    );
    // Outside the map: the exception reaches mbpoll.
    let out = Command::new(tool("mbpoll"))
        .args([
            "-m", "rtu", "-a", "7", "-b", "19200", "-P", "none", "-1", "-t", "3", "-r", "100",
            "-c", "1", port,
        ])
        .output()
        .unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(all.contains("Illegal data address"), "{all}");
}

/// The Python that has pymodbus; `scripts/test.sh` makes it.
fn peers_python() -> std::path::PathBuf {
    let p = repo("target/peers-venv/bin/python");
    assert!(
        p.exists(),
        "{} is missing: run scripts/test.sh (it installs pymodbus into target/peers-venv)",
        p.display()
    );
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_reads_and_writes_a_pymodbus_rtu_slave() {
    let pty = PtyPair::new().await;
    let mut py = Proc::spawn(
        Command::new(peers_python())
            .arg(repo("tests/peers/pymodbus_rtu_server.py"))
            .arg(&pty.a)
            .arg("3"),
    );
    py.wait_line("pymodbus serving").await;
    let (_broker, mqtt) = broker("127.0.0.1:0").await;
    let mut obs = Observer::start(mqtt, "r6/#").await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        r#"
mqtt: {{ host: 127.0.0.1, port: {mp}, status_topic: r6/status }}
buses:
  - name: field
    serial: {{ device: "{dev}", baud: 19200, parity: none }}
    timeout: 500ms
devices:
  - name: py
    bus: field
    unit: 3
    poll_interval: 300ms
    points:
      - {{ name: count, kind: input_register, address: 0, publish: {{ topic: r6/count }} }}
      - {{ name: flow, kind: input_register, address: 1, type: f32, order: CDAB, publish: {{ topic: r6/flow }} }}
      - {{ name: energy, kind: input_register, address: 3, type: u64, publish: {{ topic: r6/energy }} }}
      - name: setpoint
        kind: holding_register
        address: 10
        type: f32
        order: CDAB
        writable: true
        min: -1000
        max: 1000
        publish: {{ topic: r6/setpoint, mode: on_change }}
commands:
  - {{ topic: r6/setpoint/set, write: py.setpoint }}
"#,
        mp = mqtt.port(),
        dev = pty.b.display()
    );
    let _gw = gateway_yaml(dir.path(), &yaml);
    obs.wait_topic(0, "r6/count", |p| p == "321").await;
    obs.wait_topic(0, "r6/flow", |p| p == "1.5").await;
    obs.wait_topic(0, "r6/energy", |p| {
        p == 0x0102_0304_0506_0708u64.to_string()
    })
    .await;
    obs.wait_topic(0, "r6/setpoint", |p| p == "0").await;
    // A float written with FC 16 in CDAB order, read back by the gateway from pymodbus.
    let since = obs.len();
    obs.publish("r6/setpoint/set", "-12.25", false).await;
    let ack = json(
        &obs.wait_topic(since, "r6/setpoint/set/ack", |_| true)
            .await
            .payload,
    );
    assert_eq!(ack["result"], "ok", "{ack}");
    assert_eq!(ack["readback"]["py.setpoint"], "-12.25");
    obs.wait_topic(since, "r6/setpoint", |p| p == "-12.25")
        .await;
}
