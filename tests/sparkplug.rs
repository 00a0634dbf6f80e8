//! The Sparkplug B edge node end to end: the real binary, the water-tower simulator, Debian's
//! mosquitto, and an independent host application (pysparkplug, `tests/peers/spb_host.py`,
//! installed into target/peers-venv by scripts/test.sh) that decodes everything we send.
//! mbpoll reads the coils a DCMD writes. A missing peer fails the test.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// The independent host application.
struct Host {
    p: Proc,
}

impl Host {
    async fn start(broker: SocketAddr, primary: Option<&str>) -> Host {
        let python = repo("target/peers-venv/bin/python");
        assert!(
            python.exists(),
            "target/peers-venv is missing: run scripts/test.sh, which installs pysparkplug"
        );
        let mut cmd = Command::new(python);
        cmd.arg(repo("tests/peers/spb_host.py"))
            .arg(broker.ip().to_string())
            .arg(broker.port().to_string())
            .arg("plant");
        if let Some(p) = primary {
            cmd.arg(p);
        }
        let mut p = Proc::spawn(&mut cmd);
        p.wait_line(r#"{"type": "ready"}"#).await;
        Host { p }
    }

    fn all(&self) -> Vec<Value> {
        self.p
            .output()
            .lines()
            .filter(|l| l.starts_with('{'))
            .map(json)
            .collect()
    }

    /// Messages of one type (`NBIRTH`, `DDATA`, ...).
    fn of(&self, kind: &str) -> Vec<Value> {
        self.all()
            .into_iter()
            .filter(|m| m["type"] == kind)
            .collect()
    }

    /// Wait until `pred` holds for the messages so far; returns them.
    async fn until(&self, what: &str, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        self.until_within(what, DEADLINE, pred).await
    }

    async fn until_within(
        &self,
        what: &str,
        within: Duration,
        pred: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + within;
        loop {
            let all = self.all();
            assert!(
                !all.iter().any(|m| m["type"] == "error"),
                "the host could not decode a message: {:?}",
                all.iter()
                    .filter(|m| m["type"] == "error")
                    .collect::<Vec<_>>()
            );
            if pred(&all) {
                return all;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not within {within:?}; host saw:\n{}",
                self.p.output()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn send(&mut self, line: &str) {
        let n = self.p.count_lines(r#""type": "sent""#);
        self.p.send_line(line);
        self.p.wait_count(&[r#""type": "sent""#], n + 1).await;
    }
}

fn count(all: &[Value], kind: &str) -> usize {
    all.iter().filter(|m| m["type"] == kind).count()
}

fn metric<'a>(msg: &'a Value, name: &str) -> Option<&'a Value> {
    msg["metrics"]
        .as_array()?
        .iter()
        .find(|m| m["name"] == name)
}

/// A mapping of the water tower as a Sparkplug device, polled every 50 ms; the read counter
/// (input registers 9-10) is the metric `reads`.
fn mapping(dir: &Path, modbus: SocketAddr, mqtt: SocketAddr, extra: &str) -> std::path::PathBuf {
    let yaml = format!(
        r#"
mqtt:
  host: 127.0.0.1
  port: {mport}
  client_id: fieldgate-spb-test
  status_topic: spbtest/status
  keep_alive: 5s
  buffer: {{ path: {state} }}
sparkplug:
  group_id: plant
  edge_node_id: gw1
{extra}
devices:
  - name: tower
    tcp: {{ host: 127.0.0.1, port: {dport} }}
    timeout: 300ms
    poll_interval: 50ms
    points:
      - {{ name: level, kind: input_register, address: 0, unit: cm }}
      - {{ name: p1_temperature, kind: input_register, address: 1, type: i16, scale: 0.1, unit: "°C", metric: pump1/temperature }}
      - {{ name: consumption, kind: input_register, address: 3, type: f32, decimals: 1, unit: l/min }}
      - {{ name: reads, kind: input_register, address: 9, type: u32 }}
      - {{ name: p1_running, kind: discrete_input, address: 0 }}
      - {{ name: p1_command, kind: coil, address: 0, writable: true }}
      - {{ name: p1_start_level, kind: holding_register, address: 0, unit: cm, writable: true, min: 0, max: 400 }}
"#,
        mport = mqtt.port(),
        dport = modbus.port(),
        state = dir.join("state").display(),
    );
    let path = dir.join("mapping.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

fn gateway_run(config: &Path) -> Proc {
    Proc::spawn(Command::new(bin()).args(["run", "-c"]).arg(config))
}

/// mosquitto on a given port (to bring the same broker back after an outage).
async fn mosquitto_on(dir: &Path, port: u16) -> Proc {
    let exe = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("mosquitto is not installed: apt-get install -y mosquitto");
    let file = dir.join(format!("mosquitto-again-{port}.conf"));
    std::fs::write(
        &file,
        format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"),
    )
    .unwrap();
    let p = Proc::spawn(Command::new(exe).arg("-c").arg(&file));
    let deadline = Instant::now() + DEADLINE;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "mosquitto did not come back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    p
}

fn mbpoll(args: &[&str]) -> String {
    let exe = ["/usr/bin/mbpoll", "/usr/local/bin/mbpoll"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("mbpoll is not installed: apt-get install -y mbpoll");
    let out = Command::new(exe).args(args).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// mbpoll's reading of one value of Modbus table `table` (mbpoll's -t: 0 coils, 4 holding
/// registers) at reference 1 of unit 1 on the simulator at `modbus`.
fn read_one(modbus: SocketAddr, table: &str) -> String {
    mbpoll(&[
        "-m",
        "tcp",
        "-a",
        "1",
        "-t",
        table,
        "-r",
        "1",
        "-c",
        "1",
        "-1",
        "-p",
        &modbus.port().to_string(),
        "127.0.0.1",
    ])
}

/// Every N/D message with a seq, in arrival order: each is the one before plus 1, mod 256,
/// from each NBIRTH (seq 0) on.
fn assert_seq_unbroken(all: &[Value]) {
    let mut last: Option<u64> = None;
    for m in all {
        let Some(seq) = m["seq"].as_u64() else {
            continue;
        };
        if m["type"] == "NBIRTH" {
            assert_eq!(seq, 0, "NBIRTH seq: {m}");
        } else if let Some(l) = last {
            assert_eq!(seq, (l + 1) % 256, "seq gap after {l}: {m}");
        }
        last = Some(seq);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn births_then_300_ddata_in_sequence_with_the_simulators_values() {
    let dir = tempfile::tempdir().unwrap();
    // The broker's log shows the order of SUBSCRIBE and PUBLISH packets as it received them.
    let (broker, mqtt) = mosquitto(dir.path(), "log_type all\n").await;
    let (_sim, modbus) = simulator("127.0.0.1:0", &[]).await;
    let host = Host::start(mqtt, None).await;
    let _gw = gateway_run(&mapping(dir.path(), modbus, mqtt, ""));

    let all = host
        .until("an NBIRTH, a DBIRTH and 300 DDATA", |a| {
            count(a, "DDATA") >= 300
        })
        .await;
    let nbirth = &host.of("NBIRTH")[0];
    assert_eq!(nbirth["seq"], 0);
    assert_eq!(nbirth["qos"], 0);
    assert_eq!(nbirth["retain"], false);
    assert!(nbirth["bdSeq"].is_u64(), "{nbirth}");
    let bd = metric(nbirth, "bdSeq").unwrap();
    assert_eq!(
        bd["datatype"], "INT64",
        "tck-id-message-flow-edge-node-birth-publish-nbirth-payload-bdSeq"
    );
    let rebirth = metric(nbirth, "Node Control/Rebirth").expect("Rebirth metric");
    assert_eq!(rebirth["value"], false);
    assert_eq!(rebirth["datatype"], "BOOLEAN");
    // The DBIRTH comes right after the NBIRTH and lists every mapped point with its type.
    let first_n = all.iter().position(|m| m["type"] == "NBIRTH").unwrap();
    let first_d = all.iter().position(|m| m["type"] == "DBIRTH").unwrap();
    let first_data = all.iter().position(|m| m["type"] == "DDATA").unwrap();
    assert!(first_n < first_d && first_d < first_data);
    // Every N/D message is QoS 0 and not retained.
    for m in &all {
        if m["seq"].is_u64() {
            assert_eq!(
                (&m["qos"], &m["retain"]),
                (&Value::from(0), &Value::from(false)),
                "{m}"
            );
        }
    }
    // NCMD and DCMD were subscribed, at QoS 1, before the NBIRTH was published.
    let log = broker.output();
    let line = |needle: &str| {
        log.lines()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no `{needle}` in the broker's log:\n{log}"))
    };
    let ncmd = line("fieldgate-spb-test 1 spBv1.0/plant/NCMD/gw1");
    let dcmd = line("fieldgate-spb-test 1 spBv1.0/plant/DCMD/gw1/+");
    let nbirth_at = line("'spBv1.0/plant/NBIRTH/gw1'");
    assert!(ncmd < nbirth_at && dcmd < nbirth_at, "{log}");
    let dbirth = &all[first_d];
    assert_eq!(dbirth["device"], "tower");
    let types: Vec<(String, String)> = dbirth["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap().to_owned(),
                m["datatype"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let want = [
        ("level", "UINT16"),
        ("pump1/temperature", "DOUBLE"),
        ("consumption", "FLOAT"),
        ("reads", "UINT32"),
        ("p1_running", "BOOLEAN"),
        ("p1_command", "BOOLEAN"),
        ("p1_start_level", "UINT16"),
    ];
    for (name, dt) in want {
        assert!(
            types.contains(&(name.to_owned(), dt.to_owned())),
            "{name} {dt} not in the DBIRTH: {types:?}"
        );
    }
    assert_eq!(types.len(), want.len(), "{types:?}");
    let start = metric(dbirth, "p1_start_level").unwrap();
    assert_eq!(start["properties"]["engUnit"], "cm");
    assert_eq!(start["properties"]["readOnly"], false);
    assert_eq!(start["properties"]["writeMax"], 400.0);
    assert_eq!(
        metric(dbirth, "level").unwrap()["properties"]["readOnly"],
        true
    );
    // The simulator's values: the threshold as it holds it, the level within a few cm.
    assert_eq!(start["value"], 20, "{dbirth}");
    assert_seq_unbroken(&all);
    let level_now = read_input_registers(modbus, 0, 1).await[0];
    let last_level = all
        .iter()
        .rev()
        .filter(|m| m["type"] == "DDATA" || m["type"] == "DBIRTH")
        .find_map(|m| metric(m, "level").and_then(|v| v["value"].as_f64()))
        .unwrap();
    assert!(
        (last_level - f64::from(level_now)).abs() <= 5.0,
        "published level {last_level}, simulator {level_now}"
    );
    // DDATA reports by exception with aliases and no names.
    let ddata = host.of("DDATA");
    assert!(ddata.iter().all(|d| {
        d["metrics"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["alias"].is_u64())
    }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_and_restart_twice_the_host_sees_ndeath_then_the_next_bd_seq() {
    let dir = tempfile::tempdir().unwrap();
    let (_broker, mqtt) = mosquitto(dir.path(), "").await;
    let (_sim, modbus) = simulator("127.0.0.1:0", &[]).await;
    let host = Host::start(mqtt, None).await;
    let config = mapping(dir.path(), modbus, mqtt, "");
    let mut gw = gateway_run(&config);
    host.until("NBIRTH", |a| count(a, "NBIRTH") == 1).await;
    let first = host.of("NBIRTH")[0]["bdSeq"].as_u64().unwrap();
    for round in 1..=2u64 {
        gw.child.kill().unwrap(); // SIGKILL
        let _ = gw.child.wait();
        let all = host
            .until("NDEATH after kill -9", |a| {
                count(a, "NDEATH") == round as usize
            })
            .await;
        let death = all.iter().rfind(|m| m["type"] == "NDEATH").unwrap();
        assert_eq!(
            death["bdSeq"].as_u64(),
            Some((first + round - 1) % 256),
            "{death}"
        );
        assert_eq!(death["qos"], 1);
        assert_eq!(death["retain"], false);
        gw = gateway_run(&config);
        host.until("NBIRTH after restart", |a| {
            count(a, "NBIRTH") == round as usize + 1
        })
        .await;
        let birth = host.of("NBIRTH").last().cloned().unwrap();
        assert_eq!(
            birth["bdSeq"].as_u64(),
            Some((first + round) % 256),
            "{birth}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ncmd_rebirth_sends_full_births_with_the_same_bd_seq() {
    let dir = tempfile::tempdir().unwrap();
    let (_broker, mqtt) = mosquitto(dir.path(), "").await;
    let (_sim, modbus) = simulator("127.0.0.1:0", &[]).await;
    let mut host = Host::start(mqtt, None).await;
    let _gw = gateway_run(&mapping(dir.path(), modbus, mqtt, ""));
    host.until("birth and data", |a| count(a, "DDATA") >= 5)
        .await;
    host.send("rebirth gw1").await;
    let all = host
        .until("a second NBIRTH and DBIRTH", |a| {
            count(a, "NBIRTH") == 2 && count(a, "DBIRTH") == 2
        })
        .await;
    let births = host.of("NBIRTH");
    assert_eq!(births[0]["bdSeq"], births[1]["bdSeq"]);
    assert_eq!(births[1]["seq"], 0);
    let dbirths = host.of("DBIRTH");
    assert_eq!(
        dbirths[0]["metrics"].as_array().unwrap().len(),
        dbirths[1]["metrics"].as_array().unwrap().len()
    );
    assert_seq_unbroken(&all);
    assert_eq!(count(&all, "NDEATH"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dcmd_writes_the_coil_and_reports_the_read_back_and_out_of_range_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (_broker, mqtt) = mosquitto(dir.path(), "").await;
    let (_sim, modbus) = simulator("127.0.0.1:0", &[]).await;
    let mut host = Host::start(mqtt, None).await;
    let mut gw = gateway_run(&mapping(dir.path(), modbus, mqtt, ""));
    host.until("DBIRTH", |a| count(a, "DBIRTH") == 1).await;
    let mb = |t: &str| read_one(modbus, t);
    assert!(
        mb("0").contains("[1]: \t0"),
        "coil 1 starts off: {}",
        mb("0")
    );
    let before = host.all().len();
    host.send("dcmd gw1 tower p1_command Boolean true").await;
    host.until("DDATA with p1_command true", |a| {
        a[before..].iter().any(|m| {
            m["type"] == "DDATA" && metric(m, "p1_command").is_some_and(|v| v["value"] == true)
        })
    })
    .await;
    assert!(
        mb("0").contains("[1]: \t1"),
        "mbpoll reads the coil set: {}",
        mb("0")
    );
    gw.wait_line("command accepted").await;

    // Out of range: refused, counted, nothing written, the current value republished.
    let before = host.all().len();
    host.send("dcmd gw1 tower p1_start_level UInt16 401").await;
    host.until("p1_start_level republished with 20", |a| {
        a[before..].iter().any(|m| {
            m["type"] == "DDATA" && metric(m, "p1_start_level").is_some_and(|v| v["value"] == 20)
        })
    })
    .await;
    gw.wait_line("outside the allowed range").await;
    assert!(
        mb("4").contains("[1]: \t20"),
        "holding register unchanged: {}",
        mb("4")
    );
    // A write to a read-only metric is refused too.
    host.send("dcmd gw1 tower level UInt16 5").await;
    gw.wait_line("not a writable metric").await;
    // Bytes that are no Sparkplug payload never write and never stop the node.
    host.send("raw spBv1.0/plant/DCMD/gw1/tower 0aff12ffffff")
        .await;
    gw.wait_line("not a Sparkplug B payload").await;
    let n = count(&host.all(), "DDATA");
    host.until("DDATA goes on", |a| count(a, "DDATA") > n + 3)
        .await;
    assert!(mb("4").contains("[1]: \t20"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_host_offline_means_no_birth_and_offline_again_stops_data() {
    let dir = tempfile::tempdir().unwrap();
    let (_broker, mqtt) = mosquitto(dir.path(), "").await;
    let (_sim, modbus) = simulator("127.0.0.1:0", &[]).await;
    let mut host = Host::start(mqtt, Some("scada")).await;
    host.send("state offline").await;
    let mut gw = gateway_run(&mapping(
        dir.path(),
        modbus,
        mqtt,
        "  primary_host_id: scada",
    ));
    gw.wait_line("mqtt connected").await;
    gw.wait_line("sparkplug primary host state").await;
    // Polling goes on (values are kept), but nothing is born.
    gw.wait_line("modbus link connected").await;
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(1) {
        assert_eq!(
            count(&host.all(), "NBIRTH"),
            0,
            "born while the host is offline"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    host.send("state online").await;
    host.until("born once the host is online", |a| {
        count(a, "NBIRTH") == 1 && count(a, "DDATA") >= 3
    })
    .await;
    host.send("state offline").await;
    gw.wait_count(&["sparkplug primary host state", "online=false"], 2)
        .await;
    // Not born: a DCMD is refused and nothing is written (coil 1 stays off).
    host.send("dcmd gw1 tower p1_command Boolean true").await;
    gw.wait_line("the edge node is not born").await;
    let coil = read_one(modbus, "0");
    assert!(
        coil.contains("[1]: \t0"),
        "coil written while not born: {coil}"
    );
    // Data stops: allow what was in flight, then nothing more.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let n = count(&host.all(), "DDATA");
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(1) {
        assert_eq!(
            count(&host.all(), "DDATA"),
            n,
            "data while the host is offline"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    host.send("state online").await;
    host.until("born again", |a| count(a, "NBIRTH") == 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_killed_gets_ddeath_and_dbirth_when_it_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let (_broker, mqtt) = mosquitto(dir.path(), "").await;
    let (sim, modbus) = simulator("127.0.0.1:0", &[]).await;
    let host = Host::start(mqtt, None).await;
    let _gw = gateway_run(&mapping(dir.path(), modbus, mqtt, ""));
    host.until("DBIRTH", |a| count(a, "DBIRTH") == 1).await;
    drop(sim);
    host.until("DDEATH", |a| count(a, "DDEATH") == 1).await;
    let (_sim, _) = simulator(&modbus.to_string(), &[]).await;
    let all = host
        .until("DBIRTH again", |a| count(a, "DBIRTH") == 2)
        .await;
    let death = all.iter().position(|m| m["type"] == "DDEATH").unwrap();
    let rebirth = all.iter().rposition(|m| m["type"] == "DBIRTH").unwrap();
    assert!(death < rebirth);
    assert_eq!(all[death]["device"], "tower");
    assert!(
        !all[death..rebirth].iter().any(|m| m["type"] == "DDATA"),
        "no DDATA between DDEATH and DBIRTH"
    );
    assert_seq_unbroken(&all);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_20_s_broker_outage_arrives_as_historical_ddata_with_no_read_missing() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, mqtt) = mosquitto(dir.path(), "").await;
    let (_sim, modbus) = simulator("127.0.0.1:0", &[]).await;
    let host = Host::start(mqtt, None).await;
    let mut gw = gateway_run(&mapping(dir.path(), modbus, mqtt, ""));
    host.until("data", |a| count(a, "DDATA") >= 20).await;
    drop(broker);
    drop(host);
    gw.wait_line("mqtt connection lost").await;
    tokio::time::sleep(Duration::from_secs(20)).await; // the outage itself, not a wait for a condition
    let _broker = mosquitto_on(dir.path(), mqtt.port()).await;
    let host = Host::start(mqtt, None).await;
    // The reconnect backoff has grown during the outage (up to 30 s between attempts).
    let all = host
        .until_within("NBIRTH and historical data", Duration::from_secs(60), |a| {
            a.iter().any(|m| m["type"] == "NBIRTH")
                && a.iter().any(|m| {
                    m["type"] == "DDATA"
                        && m["metrics"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .any(|x| x["historical"] == true)
                })
                && count(a, "DDATA") >= 20
        })
        .await;
    // The reads counter, from the DBIRTH's value and every historical and live DDATA after
    // it: no gap from the first value read during the outage on.
    let mut reads: Vec<(u64, u64, bool)> = Vec::new(); // (value, timestamp, historical)
    for m in &all {
        if m["type"] == "DDATA" || m["type"] == "DBIRTH" {
            for r in m["metrics"].as_array().unwrap() {
                if r["name"] == "reads" {
                    reads.push((
                        r["value"].as_u64().unwrap(),
                        r["timestamp"].as_u64().unwrap(),
                        r["historical"] == true,
                    ));
                }
            }
        }
    }
    let historical: Vec<_> = reads.iter().filter(|r| r.2).collect();
    assert!(
        historical.len() >= 100,
        "about 20 s at 50 ms of reads kept, got {}: {historical:?}\ngateway:\n{}",
        historical.len(),
        gw.output()
    );
    // Historical values carry their read times: spread over the outage, oldest first.
    let span = historical.last().unwrap().1 - historical[0].1;
    assert!(span >= 15_000, "historical timestamps span {span} ms");
    let mut values: Vec<u64> = reads.iter().map(|r| r.0).collect();
    values.sort_unstable();
    values.dedup();
    let lowest = historical[0].0;
    let highest = *values.last().unwrap();
    let missing: Vec<u64> = (lowest..=highest)
        .filter(|v| values.binary_search(v).is_err())
        .collect();
    assert!(missing.is_empty(), "reads missing: {missing:?}");
    assert_seq_unbroken(&all);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deliberate_shutdown_publishes_ndeath_then_disconnect() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, mqtt) = mosquitto(dir.path(), "log_type all\n").await;
    let (_sim, modbus) = simulator("127.0.0.1:0", &[]).await;
    let host = Host::start(mqtt, None).await;
    let mut gw = gateway_run(&mapping(dir.path(), modbus, mqtt, ""));
    host.until("NBIRTH", |a| count(a, "NBIRTH") == 1).await;
    let bd = host.of("NBIRTH")[0]["bdSeq"].clone();
    gw.signal("TERM");
    assert_eq!(gw.wait_exit().await, Some(0));
    let all = host.until("NDEATH", |a| count(a, "NDEATH") >= 1).await;
    let death = all.iter().find(|m| m["type"] == "NDEATH").unwrap();
    assert_eq!(death["bdSeq"], bd, "the session's own bdSeq");
    // Our own NDEATH, then DISCONNECT (so the broker drops the will: one NDEATH only).
    let log = broker.output();
    let publish = log
        .lines()
        .position(|l| {
            l.contains("Received PUBLISH from fieldgate-spb-test") && l.contains("NDEATH")
        })
        .unwrap_or_else(|| panic!("no NDEATH publish in the broker's log:\n{log}"));
    let disconnect = log
        .lines()
        .position(|l| l.contains("Received DISCONNECT from fieldgate-spb-test"))
        .unwrap_or_else(|| panic!("no DISCONNECT in the broker's log:\n{log}"));
    assert!(publish < disconnect, "{log}");
    tokio::time::sleep(Duration::from_millis(500)).await; // a will, if any, would come now
    assert_eq!(
        count(&host.all(), "NDEATH"),
        1,
        "the will was not published as well; broker:\n{}\ngateway:\n{}",
        broker.output(),
        gw.output()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn next_to_plain_topics_a_reload_rebirths_on_the_new_mapping_with_the_same_bd_seq() {
    let dir = tempfile::tempdir().unwrap();
    let (_broker, mqtt) = mosquitto(dir.path(), "").await;
    let (_sim, modbus) = simulator("127.0.0.1:0", &[]).await;
    let host = Host::start(mqtt, None).await;
    let mut plain = Observer::start(mqtt, "spbtest/plain/#").await;
    let config = mapping(dir.path(), modbus, mqtt, "");
    // The level also goes to a plain topic, next to Sparkplug.
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "address: 0, unit: cm }",
        "address: 0, unit: cm, publish: { topic: spbtest/plain/level } }",
    );
    std::fs::write(&config, &text).unwrap();
    let mut gw = gateway_run(&config);
    host.until("DBIRTH", |a| count(a, "DBIRTH") == 1).await;
    plain
        .wait_topic(0, "spbtest/plain/level", |p| p.parse::<u16>().is_ok())
        .await;
    let bd = host.of("NBIRTH")[0]["bdSeq"].clone();

    // A metric renamed: the node is born again on the new mapping, same session.
    std::fs::write(
        &config,
        text.replace("metric: pump1/temperature", "metric: pump1/temp"),
    )
    .unwrap();
    gw.signal("HUP");
    gw.wait_line("reload applied").await;
    let all = host
        .until("NBIRTH and DBIRTH again", |a| {
            count(a, "NBIRTH") == 2 && count(a, "DBIRTH") == 2
        })
        .await;
    let births = host.of("NBIRTH");
    assert_eq!(births[1]["bdSeq"], bd);
    assert_eq!(births[1]["seq"], 0);
    let dbirth = host.of("DBIRTH").pop().unwrap();
    assert!(metric(&dbirth, "pump1/temp").is_some(), "{dbirth}");
    assert!(metric(&dbirth, "pump1/temperature").is_none(), "{dbirth}");
    assert_seq_unbroken(&all);
    assert_eq!(count(&all, "NDEATH"), 0, "the session went on");
    let n = plain.len();
    plain
        .wait_topic(n, "spbtest/plain/level", |p| p.parse::<u16>().is_ok())
        .await;

    // Renaming the edge node needs a restart: refused, the old mapping runs on.
    std::fs::write(
        &config,
        text.replace("edge_node_id: gw1", "edge_node_id: gw2"),
    )
    .unwrap();
    gw.signal("HUP");
    gw.wait_line("the sparkplug section's ids changed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_kept_during_an_outage_survive_kill_9_and_arrive_after_the_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, mqtt) = mosquitto(dir.path(), "").await;
    let (_sim, modbus) = simulator("127.0.0.1:0", &[]).await;
    let config = mapping(dir.path(), modbus, mqtt, "");
    let mut gw = gateway_run(&config);
    gw.wait_line("sparkplug node born").await;
    drop(broker);
    gw.wait_line("mqtt connection lost").await;
    // Reads go on into the kept values, and their file, while the broker is away.
    let file = dir.path().join("state/sparkplug-history");
    let reads_in = |text: &str| -> Vec<u64> {
        text.lines()
            .map(json)
            .filter(|l| l["m"] == "reads")
            .map(|l| l["v"]["u"].as_u64().unwrap())
            .collect()
    };
    let deadline = Instant::now() + DEADLINE;
    while reads_in(&std::fs::read_to_string(&file).unwrap_or_default()).len() < 40 {
        assert!(
            Instant::now() < deadline,
            "no values kept in {}",
            file.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    gw.child.kill().unwrap(); // SIGKILL, during the outage
    let _ = gw.child.wait();
    let text = std::fs::read_to_string(&file).unwrap();
    let kept = reads_in(&text[..text.rfind('\n').map_or(0, |e| e + 1)]);

    let _broker = mosquitto_on(dir.path(), mqtt.port()).await;
    let host = Host::start(mqtt, None).await;
    let _gw = gateway_run(&config);
    let all = host
        .until("historical DDATA from the first life", |a| {
            a.iter().any(|m| {
                m["type"] == "DDATA"
                    && m["metrics"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|x| x["historical"] == true)
            }) && count(a, "DDATA") >= 10
        })
        .await;
    let mut reads: Vec<u64> = Vec::new();
    for m in &all {
        if m["type"] == "DDATA" || m["type"] == "DBIRTH" {
            for r in m["metrics"].as_array().unwrap() {
                if r["name"] == "reads" {
                    reads.push(r["value"].as_u64().unwrap());
                }
            }
        }
    }
    reads.sort_unstable();
    reads.dedup();
    for r in &kept {
        assert!(
            reads.binary_search(r).is_ok(),
            "read {r} kept by the first life is missing"
        );
    }
    // From the first value kept on, every read of either life, without a gap.
    let missing: Vec<u64> = (kept[0]..=*reads.last().unwrap())
        .filter(|v| reads.binary_search(v).is_err())
        .collect();
    assert!(missing.is_empty(), "reads missing: {missing:?}");
    assert_seq_unbroken(&all);
    let left = std::fs::read_to_string(&file).unwrap();
    assert!(left.is_empty(), "sent values leave the file: {left}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_mqtt_5_the_will_is_the_ndeath_and_a_dcmd_still_writes() {
    let dir = tempfile::tempdir().unwrap();
    let (_broker, mqtt) = mosquitto(dir.path(), "").await;
    let (_sim, modbus) = simulator("127.0.0.1:0", &[]).await;
    let mut host = Host::start(mqtt, None).await;
    let config = mapping(dir.path(), modbus, mqtt, "");
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "client_id: fieldgate-spb-test",
        "client_id: fieldgate-spb-test\n  protocol: 5",
    );
    std::fs::write(&config, text).unwrap();
    let mut gw = gateway_run(&config);
    host.until("DBIRTH", |a| count(a, "DBIRTH") == 1).await;
    let bd = host.of("NBIRTH")[0]["bdSeq"].clone();
    let before = host.all().len();
    host.send("dcmd gw1 tower p1_start_level UInt16 33").await;
    host.until("DDATA with the read-back 33", |a| {
        a[before..].iter().any(|m| {
            m["type"] == "DDATA" && metric(m, "p1_start_level").is_some_and(|v| v["value"] == 33)
        })
    })
    .await;
    gw.child.kill().unwrap();
    let _ = gw.child.wait();
    let all = host.until("NDEATH", |a| count(a, "NDEATH") == 1).await;
    let death = all.iter().find(|m| m["type"] == "NDEATH").unwrap();
    assert_eq!(death["bdSeq"], bd);
    assert_eq!(
        (&death["qos"], &death["retain"]),
        (&Value::from(1), &Value::from(false))
    );
}
