//! End to end with the embedded broker: the real binary as simulator, broker and gateway,
//! running the shipped `mappings/water-tower.yaml`.

mod common;

use common::*;

const MAPPING: &str = "mappings/water-tower.yaml";

fn topic(prefix: &str, t: &str) -> String {
    format!("{prefix}/{t}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_plant_values_are_published_exactly_as_the_spec_says() {
    let (_sim, modbus) = simulator("127.0.0.1:0", &["--speed", "0", "--level", "123"]).await;
    let (_broker, mqtt) = broker("127.0.0.1:0").await;
    let prefix = "t1/pumpcontrol";
    let mut obs = Observer::start(mqtt, &format!("{prefix}/#")).await;
    let _gw = gateway(&repo(MAPPING), modbus, mqtt, prefix).await;

    let level = obs
        .wait_topic(0, &topic(prefix, "waterlevel"), |_| true)
        .await;
    assert_eq!(level.payload, "123", "plain integer text");
    let code = obs
        .wait_topic(0, &topic(prefix, "pumpcode"), |_| true)
        .await;
    assert_eq!(code.payload, "0");
    let status = obs.wait_topic(0, &topic(prefix, "status"), |_| true).await;
    assert_eq!(status.payload, "online");
    let dev = obs
        .wait_topic(0, &topic(prefix, "status/tower"), |_| true)
        .await;
    assert_eq!(json(&dev.payload)["status"], "ok");

    // i16 scaling (0.1 °C), f32 ABCD and u32 CDAB come out as JSON with unit and quality.
    let t = json(
        &obs.wait_topic(0, &topic(prefix, "pump1/temperature"), |_| true)
            .await
            .payload,
    );
    assert_eq!(t["value"], 20.0);
    assert_eq!(t["unit"], "°C");
    assert_eq!(t["quality"], "good");
    assert!(t["ts"].as_str().unwrap().ends_with('Z'));
    assert_schema("point", &t);
    let c = json(
        &obs.wait_topic(0, &topic(prefix, "consumption"), |_| true)
            .await
            .payload,
    );
    assert_eq!(c["value"], 300.0);
    assert_eq!(c["unit"], "l/min");
    let h = json(
        &obs.wait_topic(0, &topic(prefix, "pump1/operating_hours"), |_| true)
            .await
            .payload,
    );
    assert_eq!(h["value"], 0.0);

    // The level is published every 0.5 s: a second one arrives, still 123 (frozen plant).
    let first = level.seq;
    let again = obs
        .wait(first + 1, "second level", |m| {
            m.topic == topic(prefix, "waterlevel")
        })
        .await;
    assert_eq!(again.payload, "123");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn level_tracks_the_simulator_and_startp1_starts_pump_1_with_readback() {
    let (_sim, modbus) = simulator("127.0.0.1:0", &["--speed", "5", "--level", "200"]).await;
    let (_broker, mqtt) = broker("127.0.0.1:0").await;
    let prefix = "t2/pumpcontrol";
    let mut obs = Observer::start(mqtt, &format!("{prefix}/#")).await;
    let gw = gateway(&repo(MAPPING), modbus, mqtt, prefix).await;
    let level_topic = topic(prefix, "waterlevel");

    // Tracking: a published level is within a few cm of what the PLC says at that moment,
    // and the level moves (several distinct values).
    let since = obs.len();
    let m = obs.wait_topic(since, &level_topic, |_| true).await;
    let direct = read_input_registers(modbus, 0, 1).await[0];
    let published: i64 = m.payload.parse().unwrap();
    assert!(
        (published - i64::from(direct)).abs() <= 10,
        "published {published}, simulator {direct}"
    );
    let mut distinct = std::collections::BTreeSet::new();
    let mut from = m.seq;
    while distinct.len() < 3 {
        let m = obs
            .wait(from + 1, "a changing level", |m| m.topic == level_topic)
            .await;
        distinct.insert(m.payload.clone());
        from = m.seq;
    }

    // startp1: acknowledged after read-back, coil 0 reads 1, pumpcode bit 0 set.
    assert_eq!(read_coils(modbus).await, [false, false]);
    let since = obs.len();
    obs.publish(&topic(prefix, "pump"), "startp1", false).await;
    let ack = json(
        &obs.wait_topic(since, &topic(prefix, "pump/ack"), |_| true)
            .await
            .payload,
    );
    assert_eq!(ack["result"], "ok", "{ack}");
    assert_eq!(ack["command"], "startp1");
    assert_eq!(ack["readback"]["tower.p1_command"], "true");
    assert_eq!(read_coils(modbus).await, [true, false]);
    obs.wait_topic(since, &topic(prefix, "pumpcode"), |p| p == "1")
        .await;

    // startp2 then stopp1: pumpcode 3 then 2.
    let since = obs.len();
    obs.publish(&topic(prefix, "pump"), "startp2", false).await;
    obs.wait_topic(since, &topic(prefix, "pumpcode"), |p| p == "3")
        .await;
    let since = obs.len();
    obs.publish(&topic(prefix, "pump"), "stopp1", false).await;
    obs.wait_topic(since, &topic(prefix, "pumpcode"), |p| p == "2")
        .await;
    assert_eq!(read_coils(modbus).await, [false, true]);

    // Every write is logged with its origin.
    assert!(gw.count_lines("write ok") >= 3, "{}", gw.output());
    assert!(
        gw.output()
            .contains(&format!("origin=\"mqtt:{prefix}/pump\"")),
        "{}",
        gw.output()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_retained_commands_write_nothing() {
    let (_sim, modbus) = simulator("127.0.0.1:0", &["--speed", "0"]).await;
    let (_broker, mqtt) = broker("127.0.0.1:0").await;
    let prefix = "t3/pumpcontrol";
    let mut obs = Observer::start(mqtt, &format!("{prefix}/#")).await;
    // A retained start command waits on the broker before the gateway comes up.
    obs.publish(&topic(prefix, "pump"), "startp1", true).await;
    obs.wait_topic(0, &topic(prefix, "pump"), |p| p == "startp1")
        .await;

    let gw = gateway(&repo(MAPPING), modbus, mqtt, prefix).await;
    let ack = json(
        &obs.wait_topic(0, &topic(prefix, "pump/ack"), |_| true)
            .await
            .payload,
    );
    assert_eq!(ack["result"], "rejected", "{ack}");
    assert!(
        ack["reason"].as_str().unwrap().contains("retained"),
        "{ack}"
    );

    let since = obs.len();
    for garbage in ["startp3", "STARTP1", "", "startp1 now", "\u{0}\u{1}"] {
        obs.publish(&topic(prefix, "pump"), garbage, false).await;
    }
    let mut from = since;
    for _ in 0..5 {
        let m = obs
            .wait(from, "a rejection ack", |m| {
                m.topic == topic(prefix, "pump/ack")
            })
            .await;
        let ack = json(&m.payload);
        assert_eq!(ack["result"], "rejected", "{ack}");
        from = m.seq + 1;
    }
    // The gateway saw and refused all of them; the plant is untouched.
    assert_eq!(read_coils(modbus).await, [false, false]);
    assert_eq!(gw.count_lines("write ok"), 0, "{}", gw.output());
    assert!(gw.count_lines("command rejected") >= 6, "{}", gw.output());
    // Clear the retained command.
    obs.publish(&topic(prefix, "pump"), "", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulator_killed_and_restarted_status_goes_error_then_ok_and_values_resume() {
    let (sim, modbus) = simulator("127.0.0.1:0", &["--speed", "0", "--level", "50"]).await;
    let (_broker, mqtt) = broker("127.0.0.1:0").await;
    let prefix = "t4/pumpcontrol";
    let mut obs = Observer::start(mqtt, &format!("{prefix}/#")).await;
    let _gw = gateway(&repo(MAPPING), modbus, mqtt, prefix).await;
    let status = topic(prefix, "status/tower");
    obs.wait_topic(0, &status, |p| json(p)["status"] == "ok")
        .await;
    obs.wait_topic(0, &topic(prefix, "waterlevel"), |p| p == "50")
        .await;

    drop(sim);
    let since = obs.len();
    let down = obs
        .wait_topic(since, &status, |p| json(p)["status"] == "error")
        .await;
    assert!(
        json(&down.payload)["reason"]
            .as_str()
            .is_some_and(|r| !r.is_empty())
    );
    // JSON points are re-published once as stale, with their last value.
    let stale = obs
        .wait_topic(since, &topic(prefix, "consumption"), |p| {
            json(p)["quality"] == "stale"
        })
        .await;
    assert_eq!(json(&stale.payload)["value"], 300.0);
    // No fresh level while the device is down.
    let after_down = obs.len();

    let (_sim2, again) = simulator(&modbus.to_string(), &["--speed", "0", "--level", "77"]).await;
    assert_eq!(again, modbus);
    let up = obs
        .wait_topic(after_down, &status, |p| json(p)["status"] == "ok")
        .await;
    let lvl = obs
        .wait_topic(after_down, &topic(prefix, "waterlevel"), |_| true)
        .await;
    assert_eq!(lvl.payload, "77", "values resume from the new simulator");
    assert!(
        !obs.all()[after_down..up.seq]
            .iter()
            .any(|m| m.topic == topic(prefix, "waterlevel")),
        "a level was published while the device was down"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_killed_and_restarted_gateway_reconnects_and_publishes_again() {
    let (_sim, modbus) = simulator("127.0.0.1:0", &["--speed", "0"]).await;
    let (broker1, mqtt) = broker("127.0.0.1:0").await;
    let prefix = "t5/pumpcontrol";
    let mut obs = Observer::start(mqtt, &format!("{prefix}/#")).await;
    let mut gw = gateway(&repo(MAPPING), modbus, mqtt, prefix).await;
    obs.wait_topic(0, &topic(prefix, "waterlevel"), |_| true)
        .await;

    drop(broker1);
    gw.wait_line("mqtt connection lost").await;
    let (_broker2, again) = broker(&mqtt.to_string()).await;
    assert_eq!(again, mqtt);
    obs.wait_subscribed(2).await;
    let since = obs.len();
    obs.wait_topic(since, &topic(prefix, "status"), |p| p == "online")
        .await;
    obs.wait_topic(since, &topic(prefix, "waterlevel"), |_| true)
        .await;
    // Commands work on the new session (it re-subscribed).
    let since = obs.len();
    obs.publish(&topic(prefix, "pump"), "startp2", false).await;
    let ack = json(
        &obs.wait_topic(since, &topic(prefix, "pump/ack"), |_| true)
            .await
            .payload,
    );
    assert_eq!(ack["result"], "ok");
    assert_eq!(read_coils(modbus).await, [false, true]);
    assert!(gw.count_lines("mqtt connected") >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_publishes_offline_and_exits_zero() {
    let (_sim, modbus) = simulator("127.0.0.1:0", &["--speed", "0"]).await;
    let (_broker, mqtt) = broker("127.0.0.1:0").await;
    let prefix = "t6/pumpcontrol";
    let mut obs = Observer::start(mqtt, &format!("{prefix}/#")).await;
    let mut gw = gateway(&repo(MAPPING), modbus, mqtt, prefix).await;
    obs.wait_topic(0, &topic(prefix, "status"), |p| p == "online")
        .await;
    let since = obs.len();
    gw.signal("TERM");
    let off = obs
        .wait_topic(since, &topic(prefix, "status"), |p| p == "offline")
        .await;
    assert_eq!(off.payload, "offline");
    assert_eq!(gw.wait_exit().await, Some(0), "{}", gw.output());
    // Retained: a late subscriber sees offline.
    let mut late = Observer::start(mqtt, &topic(prefix, "status")).await;
    let m = late.wait_topic(0, &topic(prefix, "status"), |_| true).await;
    assert!(m.retain && m.payload == "offline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_runs_with_nothing_installed_and_shows_the_pumps_switching() {
    let mut demo = Proc::spawn(std::process::Command::new(bin()).args(["demo", "--speed", "60"]));
    demo.wait_line("ISBTest/pumpcontrol/waterlevel").await;
    // Automatic control switches a pump on when the tank runs low.
    demo.wait_line("ISBTest/pumpcontrol/pumpcode  1").await;
    demo.signal("INT");
    assert_eq!(demo.wait_exit().await, Some(0), "{}", demo.output());
}

async fn scrape(addr: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).await.unwrap();
    body
}

fn metric(body: &str, name_and_labels: &str) -> Option<f64> {
    body.lines()
        .find(|l| l.starts_with(name_and_labels))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_endpoint_counts_polls_requests_errors_and_commands() {
    let (_sim, modbus) = simulator("127.0.0.1:0", &["--speed", "0"]).await;
    let (_broker, mqtt) = broker("127.0.0.1:0").await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tower.yaml");
    // One good read and one read outside the simulator's map per poll: a known error per poll.
    std::fs::write(
        &config,
        format!(
            r#"
mqtt: {{ host: 127.0.0.1, port: {mp}, status_topic: t8/status }}
metrics: {{ listen: "127.0.0.1:0" }}
devices:
  - name: tower
    tcp: {{ host: 127.0.0.1, port: {sp} }}
    poll_interval: 200ms
    points:
      - {{ name: level, kind: input_register, address: 0, publish: {{ topic: t8/level, qos: 2 }} }}
      - {{ name: nothing, kind: input_register, address: 50 }}
      - {{ name: p1, kind: coil, address: 0, writable: true }}
commands:
  - {{ topic: t8/p1/set, write: tower.p1 }}
"#,
            mp = mqtt.port(),
            sp = modbus.port()
        ),
    )
    .unwrap();
    let mut obs = Observer::start(mqtt, "t8/#").await;
    let mut gw = gateway(&config, modbus, mqtt, "unused").await;
    let line = gw.wait_line("metrics listening").await;
    let addr = line
        .split("addr=")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();

    obs.wait_topic(0, "t8/status", |p| p == "online").await;
    obs.publish("t8/p1/set", "bogus", false).await;
    obs.wait_topic(0, "t8/p1/set/ack", |p| p.contains("rejected"))
        .await;
    let since = obs.len();
    obs.publish("t8/p1/set", "1", false).await;
    obs.wait_topic(since, "t8/p1/set/ack", |p| p.contains("\"ok\""))
        .await;
    let mut from = 0;
    for _ in 0..3 {
        from = obs.wait(from, "level", |m| m.topic == "t8/level").await.seq + 1;
    }

    let body = scrape(&addr).await;
    assert!(body.starts_with("HTTP/1.1 200 OK"), "{body}");
    let m = |name: &str| metric(&body, name).unwrap_or_else(|| panic!("{name} missing:\n{body}"));
    let polls = m("fieldgate_polls_total{device=\"tower\"}");
    assert!(polls >= 3.0, "{body}");
    // Per poll: the coil and the level answer, address 50 raises ILLEGAL DATA ADDRESS (code 2).
    let ok = m("fieldgate_modbus_requests_total{device=\"tower\",outcome=\"ok\"}");
    let exc = m("fieldgate_modbus_requests_total{device=\"tower\",outcome=\"exception\"}");
    let by_code = m("fieldgate_modbus_exceptions_total{device=\"tower\",code=\"2\"}");
    assert!(exc >= polls && by_code == exc, "{body}");
    assert!(ok >= 2.0 * polls, "{body}");
    assert_eq!(
        m("fieldgate_commands_total{outcome=\"rejected\",reason=\"malformed\"}"),
        1.0,
        "{body}"
    );
    assert_eq!(m("fieldgate_commands_total{outcome=\"accepted\"}"), 1.0);
    assert_eq!(
        m("fieldgate_writes_total{device=\"tower\",outcome=\"ok\"}"),
        1.0
    );
    assert_eq!(m("fieldgate_mqtt_connected"), 1.0);
    assert_eq!(m("fieldgate_device_up{device=\"tower\"}"), 1.0);
    assert!(m("fieldgate_publications_total") >= 3.0);
    assert!(m("fieldgate_device_last_success_timestamp_seconds{device=\"tower\"}") > 1.7e9);
    assert!(
        m("fieldgate_mqtt_publish_ack_seconds_count") >= 1.0,
        "QoS 2 levels were acknowledged"
    );
    assert!(m("fieldgate_command_duration_seconds_count") >= 1.0);
    // Durations are histograms with fixed buckets: the +Inf bucket counts every poll.
    assert_eq!(
        m("fieldgate_poll_duration_seconds_bucket{device=\"tower\",le=\"+Inf\"}"),
        m("fieldgate_poll_duration_seconds_count{device=\"tower\"}"),
        "{body}"
    );
    assert!(
        body.contains("fieldgate_poll_duration_seconds_bucket{device=\"tower\",le=\"0.0005\"}")
    );
    assert!(body.contains("fieldgate_mqtt_queue_depth"));
    assert!(scrape(&addr).await.starts_with("HTTP/1.1 200"));

    // Start-up memory is handed back at start-up and once more when the gateway has settled;
    // both times code pages of the executable were resident and are unmapped (src/memory.rs).
    gw.wait_count(&["start-up memory released"], 2).await;
    let out = gw.output();
    let unmapped: Vec<u64> = out
        .lines()
        .filter(|l| l.contains("start-up memory released"))
        .map(|l| {
            l.split("file_bytes_unmapped=")
                .nth(1)
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .unwrap_or_else(|| panic!("no figure in {l}"))
        })
        .collect();
    assert!(unmapped.iter().all(|&b| b > 0), "{out}");
}

async fn read_holding(addr: std::net::SocketAddr) -> Vec<u16> {
    use tokio_modbus::prelude::*;
    let mut ctx = tokio_modbus::client::tcp::connect_slave(addr, Slave(1))
        .await
        .unwrap();
    ctx.read_holding_registers(0, 5).await.unwrap().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn value_commands_are_range_checked_written_and_read_back() {
    let (_sim, modbus) = simulator("127.0.0.1:0", &["--speed", "0"]).await;
    let (_broker, mqtt) = broker("127.0.0.1:0").await;
    let prefix = "t9/pumpcontrol";
    let mut obs = Observer::start(mqtt, &format!("{prefix}/#")).await;
    let _gw = gateway(&repo(MAPPING), modbus, mqtt, prefix).await;
    let setting = topic(prefix, "settings/p1_start_level");
    let first = obs.wait_topic(0, &setting, |_| true).await;
    assert_eq!(first.payload, "20");

    let set = format!("{setting}/set");
    let ack_topic = format!("{set}/ack");
    let since = obs.len();
    obs.publish(&set, "55", false).await;
    let ack = json(&obs.wait_topic(since, &ack_topic, |_| true).await.payload);
    assert_eq!(ack["result"], "ok", "{ack}");
    assert_eq!(ack["readback"]["tower.p1_start_level"], "55");
    assert_eq!(read_holding(modbus).await[0], 55);
    obs.wait_topic(since, &setting, |p| p == "55").await;

    for bad in ["401", "-1", "abc", "NaN", "{\"value\": 1e9}"] {
        let since = obs.len();
        obs.publish(&set, bad, false).await;
        let ack = json(&obs.wait_topic(since, &ack_topic, |_| true).await.payload);
        assert_eq!(ack["result"], "rejected", "{bad}: {ack}");
    }
    assert_eq!(
        read_holding(modbus).await[0],
        55,
        "nothing written by refused commands"
    );

    let since = obs.len();
    obs.publish(
        &topic(prefix, "settings/auto_control/set"),
        "{\"value\": 1}",
        false,
    )
    .await;
    let ack = json(
        &obs.wait_topic(
            since,
            &topic(prefix, "settings/auto_control/set/ack"),
            |_| true,
        )
        .await
        .payload,
    );
    assert_eq!(ack["result"], "ok", "{ack}");
    assert_eq!(read_holding(modbus).await[4], 1);
}
