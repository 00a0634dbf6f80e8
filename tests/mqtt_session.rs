//! The MQTT session against Debian's mosquitto: client-id collisions (a takeover is detected,
//! named and backed off; default ids differ per instance), an oversized retained command, a
//! retained command published live under MQTT 5, and a clean, fast stop. Fails when mosquitto
//! is missing; `.ci/run` installs it.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use common::*;

/// The water tower's client id (`mqtt.client_id` in the shipped mapping).
const WATER_TOWER_ID: &str = "fieldgate-water-tower";

fn tool(name: &str) -> String {
    for dir in ["/usr/bin", "/usr/local/bin"] {
        let p = format!("{dir}/{name}");
        if Path::new(&p).exists() {
            return p;
        }
    }
    panic!("{name} is not installed: apt-get install -y mosquitto-clients");
}

/// The shipped water-tower mapping with `extra` lines added to its `mqtt` section.
fn water_tower_with(dir: &Path, name: &str, extra: &str) -> PathBuf {
    let text = std::fs::read_to_string(repo("mappings/water-tower.yaml")).unwrap();
    let path = dir.join(name);
    std::fs::write(
        &path,
        text.replacen("mqtt:\n", &format!("mqtt:\n{extra}"), 1),
    )
    .unwrap();
    path
}

/// mosquitto's log lines for a takeover: the broker closing the older of two connections
/// with one client id.
const TAKEOVER: &str = "already connected, closing old connection";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_with_one_client_id_detect_the_takeover_name_the_id_and_back_off() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, mqtt) = mosquitto(dir.path(), "").await;
    let (_sim, modbus) = simulator("127.0.0.1:0", &["--speed", "0"]).await;
    let mut watch = Observer::start(mqtt, "s1/+/status/connection").await;
    // The same mapping (and so the same client id) on two "cabinets".
    let config = repo("mappings/water-tower.yaml");
    let mut a = gateway(&config, modbus, mqtt, "s1/a").await;
    a.wait_line("mqtt connected").await;
    let started = Instant::now();
    let mut b = gateway(&config, modbus, mqtt, "s1/b").await;

    // One of them sees its session taken over again and again, and says why.
    let needle = format!("another client with client id {WATER_TOWER_ID} is probably connected");
    let line = tokio::select! {
        l = a.wait_line(&needle) => l,
        l = b.wait_line(&needle) => l,
    };
    assert!(line.contains("ERROR"), "{line}");
    assert!(line.contains("state=\"session_taken_over\""), "{line}");
    // Consumers see the state on <status_topic>/connection once it is back.
    let msg = watch
        .wait(0, "a connection status after a takeover", |m| {
            let v = json(&m.payload);
            v["last_failure"]["state"] == "session_taken_over"
        })
        .await;
    let v = json(&msg.payload);
    assert_eq!(v["state"], "connected", "{v}");
    assert!(
        v["last_failure"]["reason"]
            .as_str()
            .unwrap()
            .contains(WATER_TOWER_ID),
        "{v}"
    );
    // Backing off: a handful of takeovers, not dozens in seconds (the broker's own count).
    let took = started.elapsed();
    let takeovers = broker.count_lines(TAKEOVER);
    println!("{takeovers} takeovers in {took:?} until the state was published");
    assert!(
        (2..=10).contains(&takeovers),
        "{takeovers} takeovers in {took:?}:\n{}",
        broker.output()
    );
    // A takeover backs off for at least about 5 s (doubling): the next attempts are spread out.
    let before = broker.count_lines(TAKEOVER);
    let more = tokio::time::timeout(
        std::time::Duration::from_secs(3),
        broker_lines(&broker, TAKEOVER, before + 4),
    )
    .await;
    assert!(
        more.is_err(),
        "4 more takeovers within 3 s: not backing off:\n{}",
        broker.output()
    );
}

/// Wait (without a deadline of its own) until `broker` has logged `n` lines with `needle`.
async fn broker_lines(broker: &Proc, needle: &str, n: usize) {
    while broker.count_lines(needle) < n {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The client id `check` prints for `config` run with `site`.
fn client_id(config: &Path, site: &str) -> String {
    let out = Command::new(bin())
        .args(["check", "-c"])
        .arg(config)
        .env("SITE", site)
        .env("MQTT_PORT", "1883")
        .env("MODBUS_PORT", "502")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = text
        .lines()
        .find(|l| l.contains(" client_id "))
        .unwrap_or_else(|| panic!("no client id in:\n{text}"));
    line.split(" client_id ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_one_host_get_different_default_client_ids() {
    let dir = tempfile::tempdir().unwrap();
    // One mapping, no client_id, run for two sites (two services on one box).
    let config = dir.path().join("site.yaml");
    std::fs::write(
        &config,
        "mqtt:\n  host: 127.0.0.1\n  port: ${MQTT_PORT}\n  status_topic: ids/${SITE}/status\n\
         devices:\n  - name: tower\n    tcp: { host: 127.0.0.1, port: \"${MODBUS_PORT}\" }\n    poll_interval: 500ms\n    points:\n      - { name: level, kind: input_register, address: 0, publish: { topic: \"ids/${SITE}/level\" } }\n",
    )
    .unwrap();
    let (c, d) = (client_id(&config, "c"), client_id(&config, "d"));
    assert_ne!(c, d, "two instances, one default client id");
    assert_eq!(c, client_id(&config, "c"), "not stable across restarts");
    // Still recognisably this box's: fieldgate-<hostname>-<machine-id>-<instance>.
    let machine = std::fs::read_to_string("/etc/machine-id").unwrap_or_default();
    if let Some(m) = machine.trim().get(..8) {
        assert!(c.contains(&format!("-{m}-")), "{c}");
    }
    assert!(c.starts_with("fieldgate-"), "{c}");

    // Both run against one broker without knocking each other off.
    let (broker, mqtt) = mosquitto(dir.path(), "").await;
    let (_sim, modbus) = simulator("127.0.0.1:0", &["--speed", "0"]).await;
    let run = |site: &str| {
        Proc::spawn(
            Command::new(bin())
                .args(["run", "-c"])
                .arg(&config)
                .env("SITE", site)
                .env("MQTT_PORT", mqtt.port().to_string())
                .env("MODBUS_PORT", modbus.port().to_string()),
        )
    };
    let mut obs = Observer::start(mqtt, "ids/+/level").await;
    let mut gc = run("c");
    let mut gd = run("d");
    gc.wait_line("mqtt connected").await;
    gd.wait_line("mqtt connected").await;
    let n = obs.len();
    for site in ["c", "d"] {
        obs.wait_topic(n, &format!("ids/{site}/level"), |_| true)
            .await;
    }
    let log = broker.output();
    assert!(log.contains(&format!(" as {c} ")), "{log}");
    assert!(log.contains(&format!(" as {d} ")), "{log}");
    assert_eq!(broker.count_lines(TAKEOVER), 0, "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_retained_command_is_refused_once_and_the_connection_stays_up() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, mqtt) = mosquitto(dir.path(), "").await;
    let (_sim, modbus) = simulator("127.0.0.1:0", &["--speed", "0"]).await;
    let prefix = "big/tower";
    // 300 KB, retained on the command topic before the gateway starts.
    let big = "x".repeat(300 * 1024);
    let mut publish = Command::new(tool("mosquitto_pub"))
        .args(["-h", "127.0.0.1", "-p", &mqtt.port().to_string()])
        .args(["-t", &format!("{prefix}/pump"), "-q", "1", "-r", "-s"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        publish
            .stdin
            .take()
            .unwrap()
            .write_all(big.as_bytes())
            .unwrap();
    }
    assert!(publish.wait().unwrap().success());
    // Observers on what the gateway sends; not on the command topic (with the big message).
    let mut acks = Observer::start(mqtt, &format!("{prefix}/pump/ack")).await;
    let mut levels = Observer::start(mqtt, &format!("{prefix}/waterlevel")).await;

    let mut gw = gateway(&repo("mappings/water-tower.yaml"), modbus, mqtt, prefix).await;
    let ack = acks
        .wait_topic(0, &format!("{prefix}/pump/ack"), |_| true)
        .await;
    let v = json(&ack.payload);
    assert_eq!(v["result"], "rejected", "{v}");
    assert!(v["reason"].as_str().unwrap().contains("retained"), "{v}");
    // Values keep flowing on the one connection.
    let n = levels.len();
    for i in 0..4 {
        levels
            .wait(n + i, "a level reading", |m| {
                m.topic.ends_with("waterlevel")
            })
            .await;
    }
    gw.wait_line("command rejected").await;
    assert_eq!(gw.count_lines("mqtt connected"), 1, "{}", gw.output());
    assert_eq!(gw.count_lines("mqtt connection lost"), 0, "{}", gw.output());
    let connects = broker
        .output()
        .lines()
        .filter(|l| l.contains("New client connected") && l.contains(WATER_TOWER_ID))
        .count();
    assert_eq!(connects, 1, "{}", broker.output());
    assert_eq!(acks.len(), 1, "one ack, no resends");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_says_offline_itself_disconnects_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, mqtt) = mosquitto(dir.path(), "").await;
    let (_sim, modbus) = simulator("127.0.0.1:0", &["--speed", "0"]).await;
    let prefix = "stop/tower";
    let status = format!("{prefix}/status");
    let mut obs = Observer::start(mqtt, &status).await;
    let mut gw = gateway(&repo("mappings/water-tower.yaml"), modbus, mqtt, prefix).await;
    gw.wait_line("mqtt connected").await;
    obs.wait_topic(0, &status, |p| p == "online").await;
    let n = obs.len();

    let asked = Instant::now();
    gw.signal("TERM");
    assert_eq!(gw.wait_exit().await, Some(0), "{}", gw.output());
    // Information only: speed is not asserted.
    println!("stopped {:?} after SIGTERM", asked.elapsed());
    obs.wait_topic(n, &status, |p| p == "offline").await;

    // The gateway's own DISCONNECT, not a dropped socket (after which the broker would send
    // the last will).
    let log = broker.output();
    assert!(
        log.contains(&format!("Client {WATER_TOWER_ID} disconnected.")),
        "no DISCONNECT:\n{log}"
    );
    for bad in [
        "closed its connection",
        "not authorised",
        "socket error",
        "exceeded timeout",
    ] {
        assert!(
            !log.lines()
                .any(|l| l.contains(WATER_TOWER_ID) && l.contains(bad)),
            "`{bad}`:\n{log}"
        );
    }
    // The retained status a newcomer reads is `offline`, and it is the gateway's.
    let mut fresh = Observer::start(mqtt, &status).await;
    let m = fresh.wait_topic(0, &status, |_| true).await;
    assert_eq!(m.payload, "offline");
    assert!(m.retain);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_mqtt_5_a_retained_command_published_live_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_broker, mqtt) = mosquitto(dir.path(), "").await;
    let (_sim, modbus) = simulator("127.0.0.1:0", &["--speed", "0"]).await;
    let prefix = "rap/tower";
    let config = water_tower_with(dir.path(), "v5.yaml", "  protocol: 5\n");
    let mut obs = Observer::start(mqtt, &format!("{prefix}/#")).await;
    let mut gw = gateway(&config, modbus, mqtt, prefix).await;
    gw.wait_line("mqtt connected").await;
    // `online` follows the SUBSCRIBE on the same connection: the gateway is subscribed.
    obs.wait_topic(0, &format!("{prefix}/status"), |p| p == "online")
        .await;
    let ack_topic = format!("{prefix}/pump/ack");

    // Published live, with the retain flag: refused, nothing written.
    let n = obs.len();
    obs.publish(&format!("{prefix}/pump"), "startp1", true)
        .await;
    let ack = obs.wait_topic(n, &ack_topic, |_| true).await;
    let v = json(&ack.payload);
    assert_eq!(v["result"], "rejected", "{v}");
    assert!(v["reason"].as_str().unwrap().contains("retained"), "{v}");
    assert_eq!(read_coils(modbus).await, [false, false]);

    // The same command without the retain flag is executed: the rig works.
    let n = obs.len();
    obs.publish(&format!("{prefix}/pump"), "startp1", false)
        .await;
    let ack = obs.wait_topic(n, &ack_topic, |_| true).await;
    assert_eq!(json(&ack.payload)["result"], "ok", "{}", ack.payload);
    assert_eq!(read_coils(modbus).await, [true, false]);
}
