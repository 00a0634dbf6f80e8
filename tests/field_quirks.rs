//! Devices that bend the rules, against the real gateway: the simulator's `--quirk` modes
//! (closing after every reply, FC 16 only, short reads, a missing address inside a merged read,
//! silence after connect, a needed pause between requests, transaction ids not echoed, stale
//! frames, RS-485 echo, silent clamping), each with the in-process broker. For each kind: the
//! values arrive (or exactly the failing points go bad), the status says what is wrong, and the
//! log has one line per episode.

mod common;

use std::net::SocketAddr;

use common::*;

/// A gateway for one simulator at `sim`, with `device` keys and `points` (YAML flow lines).
fn mapping(mqtt: SocketAddr, sim: SocketAddr, prefix: &str, device: &str, points: &str) -> String {
    format!(
        r#"
mqtt: {{ host: 127.0.0.1, port: {mp}, status_topic: {prefix}/status }}
devices:
  - name: dev
    tcp: {{ host: 127.0.0.1, port: {sp} }}
    poll_interval: 200ms
    timeout: 500ms
{device}
    points:
{points}
"#,
        mp = mqtt.port(),
        sp = sim.port(),
    )
}

/// The JSON values published on `topic` with quality good.
fn good(obs: &Observer, topic: &str) -> Vec<serde_json::Value> {
    obs.all()
        .iter()
        .filter(|m| m.topic == topic)
        .map(|m| json(&m.payload))
        .filter(|v| v["quality"] == "good")
        .map(|v| v["value"].clone())
        .collect()
}

async fn wait_good(obs: &mut Observer, topic: &str, n: usize) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while good(obs, topic).len() < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "fewer than {n} good values on {topic}: {:?}",
            good(obs, topic)
        );
        obs.wait(obs.len(), topic, |m| m.topic == topic).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_closes_after_every_reply_publishes_every_poll() {
    let (mut sim, addr) = simulator(
        "127.0.0.1:0",
        &[
            "--speed",
            "0",
            "--level",
            "77",
            "--quirk",
            "close-after-reply",
        ],
    )
    .await;
    let (_broker, mqtt) = broker("127.0.0.1:0").await;
    let mut obs = Observer::start(mqtt, "fq1/#").await;
    let dir = tempfile::tempdir().unwrap();
    let points = "      - { name: level, kind: input_register, address: 0, publish: { topic: fq1/level, format: json } }\n      - { name: reads, kind: input_register, address: 9, type: u32, publish: { topic: fq1/reads, format: json } }";
    let mut gw = gateway_yaml(dir.path(), &mapping(mqtt, addr, "fq1", "", points));
    wait_good(&mut obs, "fq1/level", 15).await;
    assert!(good(&obs, "fq1/level").iter().all(|v| v == 77));
    // Never an error status, never a link down: the closed connection is re-opened and the
    // read asked again before anything counts as failed.
    let statuses: Vec<String> = obs
        .all()
        .iter()
        .filter(|m| m.topic == "fq1/status/dev")
        .map(|m| m.payload.clone())
        .collect();
    assert!(
        statuses.iter().all(|s| s.contains("\"ok\"")),
        "{statuses:?}"
    );
    assert_eq!(gw.count_lines("modbus link down"), 0, "{}", gw.output());
    // The counter climbs by one per read: no read was lost or repeated.
    let reads: Vec<u64> = good(&obs, "fq1/reads")
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert!(reads.windows(2).all(|w| w[1] > w[0]), "{reads:?}");
    // A real transport failure reads as words, not "os error 0".
    drop(sim.child.kill());
    obs.wait_topic(0, "fq1/status/dev", |p| p.contains("\"error\""))
        .await;
    let out = gw.output();
    assert!(!out.contains("os error 0"), "{out}");
    gw.signal("TERM");
    assert_eq!(gw.wait_exit().await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_write_functions_fall_back_to_the_multiple_ones_and_remember() {
    let (_sim, addr) = simulator(
        "127.0.0.1:0",
        &["--speed", "0", "--quirk", "no-fc6", "--quirk", "no-fc5"],
    )
    .await;
    let (_broker, mqtt) = broker("127.0.0.1:0").await;
    let mut obs = Observer::start(mqtt, "fq2/#").await;
    let dir = tempfile::tempdir().unwrap();
    let points = "      - { name: stop1, kind: holding_register, address: 2, writable: true, min: 0, max: 400 }\n      - { name: p1, kind: coil, address: 0, writable: true }";
    let yaml = mapping(mqtt, addr, "fq2", "", points)
        + "commands:\n  - { topic: fq2/stop1/set, write: dev.stop1 }\n  - { topic: fq2/p1/set, write: dev.p1 }\n";
    let mut gw = gateway_yaml(dir.path(), &yaml);
    gw.wait_line("modbus link connected").await;
    obs.wait_subscribed(1).await;
    obs.wait_topic(0, "fq2/status", |p| p == "online").await;
    for (i, v) in ["350", "360", "365"].iter().enumerate() {
        let since = obs.len();
        obs.publish("fq2/stop1/set", v, false).await;
        let ack = obs.wait_topic(since, "fq2/stop1/set/ack", |_| true).await;
        let ack = json(&ack.payload);
        assert_eq!(ack["result"], "ok", "write {i}: {ack}");
        assert_eq!(ack["readback"]["dev.stop1"], *v);
    }
    let since = obs.len();
    obs.publish("fq2/p1/set", "true", false).await;
    let ack = json(
        &obs.wait_topic(since, "fq2/p1/set/ack", |_| true)
            .await
            .payload,
    );
    assert_eq!(ack["result"], "ok", "{ack}");
    assert!(read_coils(addr).await[0]);
    // One fallback line per function, not per write.
    assert_eq!(
        gw.count_lines("using the multiple-write function"),
        2,
        "{}",
        gw.output()
    );
    // Told explicitly, the single functions are used and the refusal is the answer.
    drop(gw);
    let yaml = mapping(mqtt, addr, "fq2", "    write_function: single", points)
        + "commands:\n  - { topic: fq2/stop1/set, write: dev.stop1 }\n";
    let dir = tempfile::tempdir().unwrap();
    let mark = obs.len();
    let mut gw = gateway_yaml(dir.path(), &yaml);
    gw.wait_line("modbus link connected").await;
    obs.wait_topic(mark, "fq2/status", |p| p == "online").await;
    let since = obs.len();
    obs.publish("fq2/stop1/set", "300", false).await;
    let ack = json(
        &obs.wait_topic(since, "fq2/stop1/set/ack", |_| true)
            .await
            .payload,
    );
    assert_eq!(ack["result"], "error", "{ack}");
    assert!(
        ack["reason"].as_str().unwrap().contains("illegal function"),
        "{ack}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_reads_are_split_and_only_the_missing_address_goes_bad() {
    // Reads of more than 4 registers are refused, and input register 2 does not exist.
    let (mut sim, addr) = simulator(
        "127.0.0.1:0",
        &[
            "--speed",
            "0",
            "--level",
            "55",
            "--quirk",
            "max-read=4",
            "--quirk",
            "hole=ir:2",
        ],
    )
    .await;
    let (_broker, mqtt) = broker("127.0.0.1:0").await;
    let mut obs = Observer::start(mqtt, "fq3/#").await;
    let dir = tempfile::tempdir().unwrap();
    let points = [
        "      - { name: level, kind: input_register, address: 0, publish: { topic: fq3/level, format: json } }",
        "      - { name: t1, kind: input_register, address: 1, type: i16, scale: 0.1, publish: { topic: fq3/t1, format: json } }",
        "      - { name: t2, kind: input_register, address: 2, type: i16, scale: 0.1, publish: { topic: fq3/t2, format: json } }",
        "      - { name: flow, kind: input_register, address: 3, type: f32, publish: { topic: fq3/flow, format: json } }",
        "      - { name: run1, kind: input_register, address: 5, type: u32, order: CDAB, publish: { topic: fq3/run1, format: json } }",
        "      - { name: reads, kind: input_register, address: 9, type: u32, publish: { topic: fq3/reads, format: json } }",
    ]
    .join("\n");
    let mut gw = gateway_yaml(dir.path(), &mapping(mqtt, addr, "fq3", "", &points));
    for t in ["fq3/level", "fq3/t1", "fq3/flow", "fq3/run1", "fq3/reads"] {
        wait_good(&mut obs, t, 3).await;
    }
    assert!(good(&obs, "fq3/level").iter().all(|v| v == 55));
    let bad = obs.wait_topic(0, "fq3/t2", |_| true).await;
    let bad = json(&bad.payload);
    assert_eq!(bad["quality"], "bad", "{bad}");
    assert!(good(&obs, "fq3/t2").is_empty());
    let st = obs
        .wait_topic(0, "fq3/status/dev", |p| p.contains("degraded"))
        .await;
    let st = json(&st.payload);
    assert_eq!(st["failing"], serde_json::json!(["dev.t2"]), "{st}");
    assert!(
        st["reason"]
            .as_str()
            .unwrap()
            .contains("input_register 2+1"),
        "{st}"
    );
    // One WARN line for the episode, however many polls; the split is logged once.
    wait_good(&mut obs, "fq3/level", 10).await;
    assert_eq!(
        gw.count_lines("read refused with a Modbus exception"),
        1,
        "{}",
        gw.output()
    );
    assert_eq!(gw.count_lines("split it and kept the split"), 1);
    // The device is fixed: the point recovers, the status is ok, one INFO line.
    sim.send_line("quirk clear");
    sim.wait_line("quirk clear ok").await;
    obs.wait_topic(0, "fq3/t2", |p| p.contains("\"good\""))
        .await;
    let since = 0;
    obs.wait_topic(since, "fq3/status/dev", |p| p.contains("\"ok\""))
        .await;
    gw.wait_line("read works again").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_registers_plans_short_reads_from_the_start() {
    let (_sim, addr) = simulator("127.0.0.1:0", &["--speed", "0", "--quirk", "max-read=2"]).await;
    let (_broker, mqtt) = broker("127.0.0.1:0").await;
    let mut obs = Observer::start(mqtt, "fq4/#").await;
    let dir = tempfile::tempdir().unwrap();
    let points = "      - { name: level, kind: input_register, address: 0, publish: { topic: fq4/level, format: json } }\n      - { name: t1, kind: input_register, address: 1, type: i16, publish: { topic: fq4/t1, format: json } }\n      - { name: t2, kind: input_register, address: 2, type: i16, publish: { topic: fq4/t2, format: json } }\n      - { name: flow, kind: input_register, address: 3, type: f32, publish: { topic: fq4/flow, format: json } }";
    let yaml = mapping(mqtt, addr, "fq4", "    max_registers: 2", points);
    let check = std::process::Command::new(bin())
        .args(["check", "-c"])
        .arg({
            let p = dir.path().join("check.yaml");
            std::fs::write(&p, &yaml).unwrap();
            p
        })
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&check.stdout);
    assert!(text.contains("max_registers 2"), "{text}");
    // The f32 at 3-4 cannot join register 2 within 2 registers.
    for r in ["start 0 count 2", "start 2 count 1", "start 3 count 2"] {
        assert!(text.contains(r), "{r}: {text}");
    }
    let mut gw = gateway_yaml(dir.path(), &yaml);
    for t in ["fq4/level", "fq4/t1", "fq4/t2", "fq4/flow"] {
        wait_good(&mut obs, t, 3).await;
    }
    // Planned right, nothing was ever refused.
    assert_eq!(gw.count_lines("read refused"), 0, "{}", gw.output());
    assert_eq!(gw.count_lines("split it"), 0);
    drop(gw.child.kill());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_delay_and_request_delay_satisfy_slow_devices() {
    // Requests in the first 1.5 s of a connection, or within 80 ms of the previous reply, are
    // swallowed.
    let (_sim, addr) = simulator(
        "127.0.0.1:0",
        &[
            "--speed",
            "0",
            "--quirk",
            "connect-silence=1500ms",
            "--quirk",
            "min-gap=80ms",
        ],
    )
    .await;
    let (_broker, mqtt) = broker("127.0.0.1:0").await;
    let mut obs = Observer::start(mqtt, "fq5/#").await;
    let dir = tempfile::tempdir().unwrap();
    // Two requests per poll, with a hole between them.
    let points = "      - { name: level, kind: input_register, address: 0, publish: { topic: fq5/level, format: json } }\n      - { name: reads, kind: input_register, address: 9, type: u32, publish: { topic: fq5/reads, format: json } }";
    let yaml = mapping(
        mqtt,
        addr,
        "fq5",
        "    connect_delay: 2s\n    request_delay: 120ms\n    poll_interval: 400ms",
        points,
    )
    .replace("    poll_interval: 200ms\n", "");
    let mut gw = gateway_yaml(dir.path(), &yaml);
    wait_good(&mut obs, "fq5/reads", 5).await;
    wait_good(&mut obs, "fq5/level", 5).await;
    assert_eq!(gw.count_lines("timeout"), 0, "{}", gw.output());
    // Without the keys the same device times out: the quirk is real.
    drop(gw.child.kill());
    let yaml = mapping(mqtt, addr, "fq5b", "", points);
    let dir = tempfile::tempdir().unwrap();
    let mut gw = gateway_yaml(dir.path(), &yaml);
    gw.wait_line("timeout after").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_ids_not_echoed_need_lenient_and_stale_frames_are_skipped() {
    let (_broker, mqtt) = broker("127.0.0.1:0").await;
    let points = "      - { name: level, kind: input_register, address: 0, publish: { topic: X/level, format: json } }\n      - { name: reads, kind: input_register, address: 9, type: u32, publish: { topic: X/reads, format: json } }";
    for quirk in ["tid-zero", "tid-swap"] {
        let (_sim, addr) = simulator("127.0.0.1:0", &["--speed", "0", "--quirk", quirk]).await;
        let mut obs = Observer::start(mqtt, "fq6/#").await;
        // Strict (the default): the status says what is wrong and which key fixes it.
        let dir = tempfile::tempdir().unwrap();
        let p = points.replace("X/", "fq6/");
        let mut gw = gateway_yaml(dir.path(), &mapping(mqtt, addr, "fq6", "", &p));
        let st = obs
            .wait_topic(0, "fq6/status/dev", |p| p.contains("\"error\""))
            .await;
        assert!(
            st.payload.contains("transaction_id: lenient"),
            "{quirk}: {}",
            st.payload
        );
        drop(gw.child.kill());
        // Lenient: values flow on one connection.
        let lenient = mapping(mqtt, addr, "fq6", "", &p).replace(
            &format!("port: {} }}", addr.port()),
            &format!("port: {}, transaction_id: lenient }}", addr.port()),
        );
        let dir = tempfile::tempdir().unwrap();
        let mut gw = gateway_yaml(dir.path(), &lenient);
        let since = obs.len();
        obs.wait_topic(since, "fq6/status/dev", |p| p.contains("\"ok\""))
            .await;
        let before = good(&obs, "fq6/reads").len();
        wait_good(&mut obs, "fq6/reads", before + 5).await;
        assert_eq!(gw.count_lines("modbus link connected"), 1, "{quirk}");
        drop(gw.child.kill());
    }
    // A stale reply in front of each real one: skipped, with no reconnect, strict ids.
    let (_sim, addr) = simulator("127.0.0.1:0", &["--speed", "0", "--quirk", "stale-prefix"]).await;
    let mut obs = Observer::start(mqtt, "fq7/#").await;
    let dir = tempfile::tempdir().unwrap();
    let p = points.replace("X/", "fq7/");
    let gw = gateway_yaml(dir.path(), &mapping(mqtt, addr, "fq7", "", &p));
    wait_good(&mut obs, "fq7/reads", 10).await;
    let reads: Vec<u64> = good(&obs, "fq7/reads")
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    // Never an old reply taken for the answer: the counter only climbs.
    assert!(reads.windows(2).all(|w| w[1] > w[0]), "{reads:?}");
    assert_eq!(gw.count_lines("modbus link connected"), 1);
    assert_eq!(gw.count_lines("modbus link down"), 0, "{}", gw.output());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_echoing_rs485_adapter_is_handled_with_echo_true() {
    let pty = PtyPair::new().await;
    let _sim = rtu_simulator(
        &pty.a,
        &["--speed", "0", "--level", "66", "--quirk", "echo"],
    )
    .await;
    let (_broker, mqtt) = broker("127.0.0.1:0").await;
    let mut obs = Observer::start(mqtt, "fq8/#").await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        r#"
mqtt: {{ host: 127.0.0.1, port: {mp}, status_topic: fq8/status }}
buses:
  - name: rs485
    serial: {{ device: {dev}, baud: 19200, parity: none }}
    timeout: 300ms
    echo: true
devices:
  - name: dev
    bus: rs485
    poll_interval: 200ms
    points:
      - {{ name: level, kind: input_register, address: 0, publish: {{ topic: fq8/level, format: json }} }}
      - {{ name: reads, kind: input_register, address: 9, type: u32, publish: {{ topic: fq8/reads, format: json }} }}
      - {{ name: p1, kind: coil, address: 0, writable: true }}
commands:
  - {{ topic: fq8/p1/set, write: dev.p1 }}
"#,
        mp = mqtt.port(),
        dev = pty.b.display()
    );
    let gw = gateway_yaml(dir.path(), &yaml);
    wait_good(&mut obs, "fq8/reads", 5).await;
    assert!(good(&obs, "fq8/level").iter().all(|v| v == 66));
    // A write's echo is removed too: the ack carries the read-back.
    obs.wait_subscribed(1).await;
    let since = obs.len();
    obs.publish("fq8/p1/set", "true", false).await;
    let ack = json(
        &obs.wait_topic(since, "fq8/p1/set/ack", |_| true)
            .await
            .payload,
    );
    assert_eq!(ack["result"], "ok", "{ack} {}", gw.output());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silently_clamped_write_is_a_mismatch_not_ok() {
    // Holding register 2 (stop P1 above) stores at most 300.
    let (_sim, addr) =
        simulator("127.0.0.1:0", &["--speed", "0", "--quirk", "clamp=2:0:300"]).await;
    let (_broker, mqtt) = broker("127.0.0.1:0").await;
    let mut obs = Observer::start(mqtt, "fq9/#").await;
    let dir = tempfile::tempdir().unwrap();
    let points = "      - { name: stop1, kind: holding_register, address: 2, writable: true, min: 0, max: 400 }";
    let yaml = mapping(mqtt, addr, "fq9", "", points)
        + "metrics: { listen: 127.0.0.1:0 }\ncommands:\n  - { topic: fq9/stop1/set, write: dev.stop1 }\n";
    let mut gw = gateway_yaml(dir.path(), &yaml);
    let line = gw.wait_line("metrics listening").await;
    let metrics: SocketAddr = line
        .split_whitespace()
        .find_map(|w| w.trim_start_matches("addr=").trim_matches('"').parse().ok())
        .unwrap_or_else(|| panic!("no address in {line}"));
    gw.wait_line("modbus link connected").await;
    obs.wait_subscribed(1).await;
    obs.wait_topic(0, "fq9/status", |p| p == "online").await;
    let since = obs.len();
    obs.publish("fq9/stop1/set", "350", false).await;
    let ack = json(
        &obs.wait_topic(since, "fq9/stop1/set/ack", |_| true)
            .await
            .payload,
    );
    assert_eq!(ack["result"], "error", "{ack}");
    assert!(ack["reason"].as_str().unwrap().contains("300"), "{ack}");
    gw.wait_line("write read back a different value").await;
    assert_eq!(gw.count_lines("write ok"), 0);
    let n = metric(metrics, "fieldgate_writes_total", "outcome=\"mismatch\"").await;
    assert_eq!(n, 1.0);
    // Within the device's range it is ok.
    let since = obs.len();
    obs.publish("fq9/stop1/set", "250", false).await;
    let ack = json(
        &obs.wait_topic(since, "fq9/stop1/set/ack", |_| true)
            .await
            .payload,
    );
    assert_eq!(ack["result"], "ok", "{ack}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_device_is_asked_again_not_reported() {
    // Every third request answers SERVER DEVICE BUSY.
    let (_sim, addr) = simulator("127.0.0.1:0", &["--speed", "0", "--quirk", "busy=3"]).await;
    let (_broker, mqtt) = broker("127.0.0.1:0").await;
    let mut obs = Observer::start(mqtt, "fq10/#").await;
    let dir = tempfile::tempdir().unwrap();
    let points = "      - { name: level, kind: input_register, address: 0, publish: { topic: fq10/level, format: json } }\n      - { name: reads, kind: input_register, address: 9, type: u32, publish: { topic: fq10/reads, format: json } }";
    let gw = gateway_yaml(dir.path(), &mapping(mqtt, addr, "fq10", "", points));
    wait_good(&mut obs, "fq10/reads", 10).await;
    wait_good(&mut obs, "fq10/level", 10).await;
    // Never a bad value, never a refusal logged: a busy answer is asked again.
    assert!(
        !obs.all().iter().any(|m| m.payload.contains("\"bad\"")),
        "{:?}",
        obs.all()
    );
    assert_eq!(gw.count_lines("read refused"), 0, "{}", gw.output());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lenient_ids_with_two_replies_at_once_never_shift_values() {
    // Replies with id 0, and the previous reply right in front of each: under lenient ids the
    // two cannot be told apart, so nothing may be published as if it were the answer.
    let (_sim, addr) = simulator(
        "127.0.0.1:0",
        &[
            "--speed",
            "0",
            "--level",
            "123",
            "--quirk",
            "tid-zero",
            "--quirk",
            "stale-prefix",
        ],
    )
    .await;
    let (_broker, mqtt) = broker("127.0.0.1:0").await;
    let mut obs = Observer::start(mqtt, "fq11/#").await;
    let dir = tempfile::tempdir().unwrap();
    // Two reads of the same function and size: only the pairing tells their replies apart.
    let points = "      - { name: level, kind: holding_register, address: 0, publish: { topic: fq11/level, format: json } }\n      - { name: stop1, kind: holding_register, address: 2, publish: { topic: fq11/stop1, format: json } }";
    let yaml = mapping(mqtt, addr, "fq11", "", points).replace(
        &format!("port: {} }}", addr.port()),
        &format!("port: {}, transaction_id: lenient }}", addr.port()),
    );
    let gw = gateway_yaml(dir.path(), &yaml);
    // Each doubled reply is discarded and the request asked again on a fresh connection,
    // where the first reply comes alone.
    wait_good(&mut obs, "fq11/level", 5).await;
    wait_good(&mut obs, "fq11/stop1", 5).await;
    // Whatever was published is the right value for its point, never another request's.
    for m in obs.all().iter().filter(|m| m.topic != "fq11/status") {
        let v = json(&m.payload);
        if v["quality"] == "good" {
            match m.topic.as_str() {
                "fq11/level" => assert_eq!(v["value"], 20, "{}", gw.output()),
                "fq11/stop1" => assert_eq!(v["value"], 370, "{}", gw.output()),
                _ => {}
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_function_that_stops_working_is_switched_back() {
    let (mut sim, addr) = simulator("127.0.0.1:0", &["--speed", "0", "--quirk", "no-fc6"]).await;
    let (_broker, mqtt) = broker("127.0.0.1:0").await;
    let mut obs = Observer::start(mqtt, "fq12/#").await;
    let dir = tempfile::tempdir().unwrap();
    let points = "      - { name: stop1, kind: holding_register, address: 2, writable: true, min: 0, max: 400 }";
    let yaml = mapping(mqtt, addr, "fq12", "", points)
        + "commands:\n  - { topic: fq12/stop1/set, write: dev.stop1 }\n";
    let mut gw = gateway_yaml(dir.path(), &yaml);
    gw.wait_line("modbus link connected").await;
    obs.wait_subscribed(1).await;
    // `online` follows the gateway's subscriptions on its connection.
    obs.wait_topic(0, "fq12/status", |p| p == "online").await;
    let since = obs.len();
    obs.publish("fq12/stop1/set", "350", false).await;
    let ack = json(
        &obs.wait_topic(since, "fq12/stop1/set/ack", |_| true)
            .await
            .payload,
    );
    assert_eq!(ack["result"], "ok", "{ack}");
    // The device now takes FC 6 and refuses FC 16.
    sim.send_line("quirk clear");
    sim.wait_line("quirk clear ok").await;
    sim.send_line("quirk no-fc16");
    sim.wait_line("quirk no-fc16 ok").await;
    let since = obs.len();
    obs.publish("fq12/stop1/set", "340", false).await;
    let ack = json(
        &obs.wait_topic(since, "fq12/stop1/set/ack", |_| true)
            .await
            .payload,
    );
    assert_eq!(ack["result"], "ok", "{ack}");
    assert_eq!(ack["readback"]["dev.stop1"], "340");
    gw.wait_line("using the single-write function").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_does_not_wait_for_a_poll_in_progress() {
    // The first poll waits a minute after connecting; the stop must not.
    let (_sim, addr) = simulator("127.0.0.1:0", &["--speed", "0"]).await;
    let (_broker, mqtt) = broker("127.0.0.1:0").await;
    let dir = tempfile::tempdir().unwrap();
    let points =
        "      - { name: level, kind: input_register, address: 0, publish: { topic: fq13/level } }";
    let yaml = mapping(
        mqtt,
        addr,
        "fq13",
        "    connect_delay: 60s\n    request_delay: 60s",
        points,
    );
    let mut gw = gateway_yaml(dir.path(), &yaml);
    gw.wait_line("modbus link connected").await;
    gw.wait_line("mqtt connected").await;
    gw.signal("TERM");
    // wait_exit gives up after the harness's deadline, far below the minute of the delays.
    assert_eq!(gw.wait_exit().await, Some(0), "{}", gw.output());
}

/// The metrics endpoint of a gateway given `metrics: { listen: ... }` on `port`.
fn metrics_at(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Wait until the device has been polled `n` more times than `from`; the count reached.
async fn wait_polls(metrics: SocketAddr, from: f64, n: f64) -> f64 {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let polls = metric(metrics, "fieldgate_polls_total", "").await;
        if polls >= from + n {
            return polls;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{polls} polls, waiting for {}",
            from + n
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_refuses_every_read_is_not_asked_point_by_point() {
    // A PLC in STOP: every read of the unit answers ILLEGAL DATA ADDRESS, whatever its range.
    let (mut sim, addr) = simulator("127.0.0.1:0", &["--speed", "0"]).await;
    let (_broker, mqtt) = broker("127.0.0.1:0").await;
    let mut obs = Observer::start(mqtt, "fq9/#").await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let points: String = (0..8)
        .map(|a| {
            format!(
                "      - {{ name: r{a}, kind: input_register, address: {a}, publish: {{ topic: fq9/r{a}, format: json }} }}\n"
            )
        })
        .collect();
    let yaml = format!(
        "metrics: {{ listen: \"127.0.0.1:{port}\" }}\n{}",
        mapping(mqtt, addr, "fq9", "", &points)
    );
    let mut gw = gateway_yaml(dir.path(), &yaml);
    let m = metrics_at(port);
    wait_good(&mut obs, "fq9/r7", 2).await;
    let requests = |outcome: &'static str| {
        let labels = format!("outcome=\"{outcome}\"");
        async move { metric(m, "fieldgate_modbus_requests_total", &labels).await }
    };

    sim.send_line("fault 1 exception:2");
    sim.wait_line("fault 1 exception:2 ok").await;
    // The first refusal is split once, finds nothing readable, and is not kept.
    gw.wait_line("every part of it; not split").await;
    let bad = obs.wait_topic(0, "fq9/r3", |p| p.contains("\"bad\"")).await;
    assert!(
        bad.payload.contains("illegal data address"),
        "{}",
        bad.payload
    );
    let (p0, e0) = (
        metric(m, "fieldgate_polls_total", "").await,
        requests("exception").await,
    );
    let p1 = wait_polls(m, p0, 10.0).await;
    let e1 = requests("exception").await;
    // One refused request per poll (a poll may fall between the two readings of each pair),
    // not one per point.
    assert!(
        e1 - e0 <= p1 - p0 + 2.0,
        "{} refused requests in {} polls:\n{}",
        e1 - e0,
        p1 - p0,
        gw.output()
    );
    assert_eq!(
        gw.count_lines("not split"),
        1,
        "split again:\n{}",
        gw.output()
    );
    assert_eq!(gw.count_lines("split it and kept the split"), 0);

    // The PLC runs again: the merged read works at once, one request per poll.
    sim.send_line("fault 1 none");
    sim.wait_line("fault 1 none ok").await;
    let since = obs.len();
    obs.wait_topic(since, "fq9/r3", |p| p.contains("\"good\""))
        .await;
    let (p0, q0) = (
        metric(m, "fieldgate_polls_total", "").await,
        requests("ok").await,
    );
    let p1 = wait_polls(m, p0, 10.0).await;
    let q1 = requests("ok").await;
    assert!(
        q1 - q0 <= p1 - p0 + 2.0,
        "{} requests in {} polls",
        q1 - q0,
        p1 - p0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_device_whose_every_read_fails_turns_its_points_bad_without_a_stale_moment() {
    // Two requests (input and holding registers): the first block streams out as it is read,
    // the last one waits for the status. A device going down marks its good points stale, so
    // the last block's points were published stale, then bad, as the status overtook them.
    let (mut sim, addr) = simulator("127.0.0.1:0", &["--speed", "0"]).await;
    let (_broker, mqtt) = broker("127.0.0.1:0").await;
    let mut obs = Observer::start(mqtt, "fq10/#").await;
    let dir = tempfile::tempdir().unwrap();
    let points: String = ["input_register", "holding_register"]
        .iter()
        .flat_map(|kind| {
            (0..4).map(move |a| {
                format!(
                    "      - {{ name: {kind}{a}, kind: {kind}, address: {a}, publish: {{ topic: fq10/{kind}{a}, format: json }} }}\n"
                )
            })
        })
        .collect();
    let _gw = gateway_yaml(dir.path(), &mapping(mqtt, addr, "fq10", "", &points));
    let topics: Vec<String> = ["input_register", "holding_register"]
        .iter()
        .flat_map(|kind| (0..4).map(move |a| format!("fq10/{kind}{a}")))
        .collect();
    for t in &topics {
        wait_good(&mut obs, t, 1).await;
    }

    let since = obs.len();
    sim.send_line("fault 1 exception:2");
    sim.wait_line("fault 1 exception:2 ok").await;
    for t in &topics {
        obs.wait_topic(since, t, |p| p.contains("\"bad\"")).await;
    }
    obs.wait_topic(since, "fq10/status/dev", |p| p.contains("\"error\""))
        .await;
    let stale: Vec<String> = obs
        .all()
        .iter()
        .skip(since)
        .filter(|m| topics.contains(&m.topic) && json(&m.payload)["quality"] != "bad")
        .map(|m| format!("{} {}", m.topic, m.payload))
        .collect();
    assert!(
        stale.is_empty(),
        "published other than bad after the fault: {stale:?}"
    );
}

/// The `retry_in` of each "modbus link down" line of `log`, in order.
fn retries(log: &str) -> Vec<std::time::Duration> {
    log.lines()
        .filter(|l| l.contains("modbus link down"))
        .filter_map(|l| {
            let v = l.split("retry_in=").nth(1)?.split_whitespace().next()?;
            [("ns", 1e-9), ("µs", 1e-6), ("ms", 1e-3), ("s", 1.0)]
                .into_iter()
                .find_map(|(unit, scale)| {
                    let n: f64 = v.strip_suffix(unit)?.parse().ok()?;
                    Some(std::time::Duration::from_secs_f64(n * scale))
                })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_drops_every_connection_unanswered_is_retried_with_growing_backoff() {
    use std::time::Duration;
    let (mut sim, addr) = simulator("127.0.0.1:0", &["--speed", "0"]).await;
    let (_broker, mqtt) = broker("127.0.0.1:0").await;
    let mut obs = Observer::start(mqtt, "fq10/#").await;
    let dir = tempfile::tempdir().unwrap();
    let points = "      - { name: level, kind: input_register, address: 0, publish: { topic: fq10/level, format: json } }";
    let mut gw = gateway_yaml(dir.path(), &mapping(mqtt, addr, "fq10", "", points));
    wait_good(&mut obs, "fq10/level", 2).await;

    // Every request now closes the connection unanswered, on the fresh one too.
    sim.send_line("fault 1 close");
    sim.wait_line("fault 1 close ok").await;
    gw.wait_count(&["modbus link down"], 4).await;
    let r = retries(&gw.output());
    assert!(r.len() >= 4, "{r:?}\n{}", gw.output());
    // 250 ms after a connection that had answered, then 500, 1,000, 2,000 (each ±25 %).
    assert!(r[0] <= Duration::from_millis(313), "{r:?}");
    assert!(r[3] >= Duration::from_millis(1500), "{r:?}");
    assert!(r.windows(2).all(|w| w[1] > w[0]), "{r:?}");

    // The device answers again: values return; a connection that answered resets the backoff.
    sim.send_line("fault 1 none");
    sim.wait_line("fault 1 none ok").await;
    let since = obs.len();
    obs.wait_topic(since, "fq10/level", |p| p.contains("\"good\""))
        .await;
    let downs = gw.count_lines("modbus link down");
    sim.send_line("fault 1 close");
    sim.wait_line("fault 1 close ok").await;
    gw.wait_count(&["modbus link down"], downs + 1).await;
    let r = retries(&gw.output());
    assert!(r[downs] <= Duration::from_millis(313), "{r:?}");
}
