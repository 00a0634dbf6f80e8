//! A gateway that knows who it is in a fleet, and broker failover, against Debian's mosquitto:
//! the retained identity message on `<status_topic>/info` (its configuration id equal to what
//! `fieldgate check` prints, and changed by a reload that changes the mapping), a client id made
//! from `${HOSTNAME}` and `${CONFIG_ID}` (as the broker saw it), and `mqtt.hosts`: the gateway
//! moves to the second broker when the first is killed, stays there when the first returns,
//! moves back when the second is killed, and no reading of the simulator's read counter is
//! missing across both switches.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use common::*;

/// The configuration id `fieldgate check` prints for `config`, with `HOSTNAME` set.
fn checked_config_id(config: &Path, hostname: &str) -> String {
    let out = Command::new(bin())
        .args(["check", "-c"])
        .arg(config)
        .env("HOSTNAME", hostname)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "check failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines()
        .find_map(|l| l.strip_prefix("configuration id: "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no configuration id in `check`'s output:\n{text}"))
        .to_owned()
}

/// `suffix` ends the client id (`-${CONFIG_ID}`, say).
fn identity_yaml(mqtt: SocketAddr, modbus: SocketAddr, poll: &str, suffix: &str) -> String {
    format!(
        r#"
mqtt:
  host: 127.0.0.1
  port: {mp}
  client_id: "fg-${{HOSTNAME}}{suffix}"
  status_topic: fleet/${{HOSTNAME}}/status
devices:
  - name: tower
    tcp: {{ host: 127.0.0.1, port: {sp} }}
    poll_interval: {poll}
    points:
      - {{ name: level, kind: input_register, address: 0, publish: {{ topic: fleet/level }} }}
"#,
        mp = mqtt.port(),
        sp = modbus.port(),
    )
}

/// The newest retained identity message, read by a fresh subscriber (so it is retained).
/// A fleet dashboard's view: subscribed to `fleet/+/status/info`, it waits for the message
/// (live or retained) with a configuration id other than `since_id`; then a second, fresh
/// subscriber must receive that same message retained.
async fn retained_info(
    mqtt: SocketAddr,
    hostname: &str,
    since_id: Option<&str>,
) -> serde_json::Value {
    let topic = format!("fleet/{hostname}/status/info");
    let fresh =
        |p: &str| since_id.is_none_or(|old| !p.contains(&format!("\"config_id\":\"{old}\"")));
    let mut dashboard = Observer::start(mqtt, "fleet/+/status/info").await;
    let live = dashboard.wait_topic(0, &topic, fresh).await;
    let mut late = Observer::start(mqtt, "fleet/+/status/info").await;
    let msg = late.wait_topic(0, &topic, fresh).await;
    assert!(msg.retain, "the identity message must be retained: {msg:?}");
    assert_eq!(msg.payload, live.payload);
    json(&msg.payload)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_identity_message_is_retained_and_follows_a_reload() {
    let dir = tempfile::tempdir().unwrap();
    let (_mosq, mqtt) = mosquitto(dir.path(), "").await;
    let (_sim, modbus) = simulator("127.0.0.1:0", &[]).await;
    let config = dir.path().join("mapping.yaml");
    std::fs::write(&config, identity_yaml(mqtt, modbus, "1s", "")).unwrap();
    let id1 = checked_config_id(&config, "cabinet-7");

    let mut gw = Proc::spawn(
        Command::new(bin())
            .args(["run", "-c"])
            .arg(&config)
            .env("HOSTNAME", "cabinet-7"),
    );
    gw.wait_line("mqtt connected").await;
    let info = retained_info(mqtt, "cabinet-7", None).await;
    assert_eq!(info["config_id"], id1.as_str(), "{info}");
    assert_eq!(info["hostname"], "cabinet-7");
    assert_eq!(info["client_id"], "fg-cabinet-7");
    assert_eq!(info["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(
        info["brokers"],
        serde_json::json!([format!("127.0.0.1:{}", mqtt.port())])
    );
    assert_eq!(
        info["devices"],
        serde_json::json!([{"name": "tower", "link": format!("tcp://127.0.0.1:{}", modbus.port()), "unit": 1}])
    );
    let started = info["started"].as_str().unwrap().to_owned();

    // A reload that changes the mapping: a new configuration id, retained, same start time.
    std::fs::write(&config, identity_yaml(mqtt, modbus, "500ms", "")).unwrap();
    let id2 = checked_config_id(&config, "cabinet-7");
    assert_ne!(id1, id2);
    gw.signal("HUP");
    gw.wait_line("reload applied").await;
    let info = retained_info(mqtt, "cabinet-7", Some(&id1)).await;
    assert_eq!(info["config_id"], id2.as_str(), "{info}");
    assert_eq!(
        info["started"],
        started.as_str(),
        "the start time survives a reload"
    );
    gw.signal("TERM");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_id_made_of_the_host_name_and_the_configuration_id() {
    let dir = tempfile::tempdir().unwrap();
    let (mosq, mqtt) = mosquitto(dir.path(), "log_dest stderr\nconnection_messages true\n").await;
    let mut mosq = mosq;
    let (_sim, modbus) = simulator("127.0.0.1:0", &[]).await;
    let config = dir.path().join("mapping.yaml");
    let yaml = identity_yaml(mqtt, modbus, "1s", "-${CONFIG_ID}");
    std::fs::write(&config, &yaml).unwrap();
    let id = checked_config_id(&config, "cabinet-9");
    let mut gw = Proc::spawn(
        Command::new(bin())
            .args(["run", "-c"])
            .arg(&config)
            .env("HOSTNAME", "cabinet-9"),
    );
    gw.wait_line("mqtt connected").await;
    // The broker saw the client id made from the host name and the configuration id.
    let client_id = format!("fg-cabinet-9-{id}");
    mosq.wait_line(&format!("as {client_id}")).await;
    let info = retained_info(mqtt, "cabinet-9", None).await;
    assert_eq!(info["client_id"], client_id.as_str());
    // Any change of the mapping changes such a client id: the reload says so and keeps running.
    std::fs::write(
        &config,
        yaml.replace("poll_interval: 1s", "poll_interval: 2s"),
    )
    .unwrap();
    gw.signal("HUP");
    let line = gw.wait_line("reload rejected").await;
    assert!(line.contains("mqtt.client_id changed"), "{line}");
    assert!(line.contains(&client_id), "{line}");
    gw.signal("TERM");
}

/// The failover rig: two mosquittos, the simulator frozen (`--speed 0`, so the read counter
/// is the only thing that moves), an observer with a persistent session on each broker.
struct Pair {
    dir: tempfile::TempDir,
    a: Option<Proc>,
    b: Option<Proc>,
    addr_a: SocketAddr,
    addr_b: SocketAddr,
}

const TOPIC: &str = "fo/reads";

/// The counter values of the good readings `obs` received.
fn counts(obs: &Observer) -> Vec<u64> {
    obs.all()
        .iter()
        .filter(|m| m.topic == TOPIC)
        .map(|m| json(&m.payload))
        .filter(|v| v["quality"] == "good")
        .filter_map(|v| v["value"].as_u64())
        .collect()
}

/// Wait until `obs` has a reading of at least `n`; its newest value.
async fn reach(obs: &mut Observer, n: u64) -> u64 {
    let m = obs
        .wait(0, &format!("reading {n}"), |m| {
            m.topic == TOPIC && json(&m.payload)["value"].as_u64().is_some_and(|v| v >= n)
        })
        .await;
    json(&m.payload)["value"].as_u64().unwrap()
}

/// Wait until `broker` holds the group's retained configuration: an announcement that is not
/// sent again to a broker that acknowledged it, but must be sent to another one.
async fn holds_configuration(broker: SocketAddr) {
    let mut obs = Observer::start(broker, "fo/cfg").await;
    let m = obs
        .wait(0, "the group's retained configuration", |m| {
            m.payload.contains("\"s0\"")
        })
        .await;
    assert!(m.retain, "{m:?}");
}

/// The broker named in the newest retained `<status>/connection` on `broker`.
async fn connection_broker(broker: SocketAddr) -> String {
    let mut obs = Observer::start(broker, "fo/status/connection").await;
    let m = obs.wait_topic(0, "fo/status/connection", |_| true).await;
    json(&m.payload)["broker"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_gateway_fails_over_between_brokers_and_loses_no_reading() {
    let dir = tempfile::tempdir().unwrap();
    let (a, addr_a) = mosquitto(dir.path(), "").await;
    let (b, addr_b) = mosquitto(dir.path(), "").await;
    let mut pair = Pair {
        dir,
        a: Some(a),
        b: Some(b),
        addr_a,
        addr_b,
    };
    let (_sim, modbus) = simulator("127.0.0.1:0", &["--speed", "0"]).await;
    let mut obs_a = Observer::start_persistent(pair.addr_a, "fo/#").await;
    let mut obs_b = Observer::start_persistent(pair.addr_b, "fo/#").await;
    let config = pair.dir.path().join("mapping.yaml");
    std::fs::write(
        &config,
        format!(
            r#"
mqtt:
  hosts: ["127.0.0.1:{pa}", "127.0.0.1:{pb}"]
  keep_alive: 2s
  status_topic: fo/status
  buffer: {{ path: "{buf}" }}
groups:
  - {{ source: s0, format: detailed, interval: 1m, configuration_topic: fo/cfg, measurement_topic: fo/meas,
      values: [{{ key: reads, point: tower.reads }}] }}
devices:
  - name: tower
    tcp: {{ host: 127.0.0.1, port: {sp} }}
    poll_interval: 100ms
    timeout: 500ms
    points:
      - name: reads
        kind: input_register
        address: 9
        type: u32
        publish: {{ topic: {TOPIC}, format: json, mode: on_change, qos: 1 }}
"#,
            pa = pair.addr_a.port(),
            pb = pair.addr_b.port(),
            buf = pair.dir.path().join("queue").display(),
            sp = modbus.port(),
        ),
    )
    .unwrap();
    let mut gw = Proc::spawn(Command::new(bin()).args(["run", "-c"]).arg(&config));
    gw.wait_line("mqtt connected").await;

    // On the first broker; the connection state names it.
    reach(&mut obs_a, 5).await;
    assert_eq!(
        connection_broker(pair.addr_a).await,
        pair.addr_a.to_string()
    );
    assert!(
        counts(&obs_b).is_empty(),
        "nothing goes to the second broker while the first works"
    );

    // The first broker dies: the readings move to the second.
    pair.a.take().unwrap().signal("KILL");
    let killed = std::time::Instant::now();
    let last_on_a = counts(&obs_a).into_iter().max().unwrap();
    let first_on_b = reach(&mut obs_b, 1).await;
    // A figure for the docs, not an assertion: the wait above has the deadline.
    eprintln!(
        "first reading on the second broker {:?} after the first was killed",
        killed.elapsed()
    );
    gw.wait_line("mqtt broker failover").await;
    assert_eq!(
        connection_broker(pair.addr_b).await,
        pair.addr_b.to_string()
    );
    // Retained announcements the first broker acknowledged are sent to the second too.
    holds_configuration(pair.addr_b).await;

    // The first broker returns (same port): the gateway stays on the second, which works.
    let (a2, _) = restart_mosquitto(&pair.dir, pair.addr_a).await;
    pair.a = Some(a2);
    let mut obs_a2 = Observer::start_persistent(pair.addr_a, "fo/#").await;
    let on_b = counts(&obs_b).into_iter().max().unwrap();
    let later = reach(&mut obs_b, on_b + 20).await;
    assert!(
        counts(&obs_a2).is_empty(),
        "20 readings ({on_b}..{later}) after the first broker returned, and some went back to it: {:?}",
        counts(&obs_a2)
    );

    // The second broker dies: back to the first.
    pair.b.take().unwrap().signal("KILL");
    let killed = std::time::Instant::now();
    let on_b = counts(&obs_b).into_iter().max().unwrap();
    reach(&mut obs_a2, 1).await;
    eprintln!(
        "first reading back on the first broker {:?} after the second was killed",
        killed.elapsed()
    );
    let back = reach(&mut obs_a2, on_b + 20).await;
    holds_configuration(pair.addr_a).await;
    // Two brokers dying soon after the gateway connected to each is not another client taking
    // the session over (which would wait a takeover backoff of seconds before moving on).
    assert_eq!(gw.count_lines("session taken over"), 0, "{}", gw.output());
    // Two switches, each logged once (the attempts on the way are not switches).
    assert_eq!(gw.count_lines("mqtt broker failover"), 2, "{}", gw.output());

    // Not one reading missing across both switches: 1 ..= back, from the three observers.
    let mut seen: BTreeSet<u64> = BTreeSet::new();
    seen.extend(counts(&obs_a));
    seen.extend(counts(&obs_b));
    seen.extend(counts(&obs_a2));
    let missing: Vec<u64> = (1..=back).filter(|n| !seen.contains(n)).collect();
    assert!(
        missing.is_empty(),
        "missing readings {missing:?} (last on the first broker {last_on_a}, first on the second {first_on_b})"
    );
    gw.signal("TERM");
}

/// mosquitto again on `addr`'s port, in `dir`.
async fn restart_mosquitto(dir: &tempfile::TempDir, addr: SocketAddr) -> (Proc, SocketAddr) {
    mosquitto_on(dir.path(), addr.port(), "").await
}
