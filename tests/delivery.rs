//! The delivery guarantee, proven against Debian's mosquitto behind a TCP proxy the test
//! controls: every QoS 1 publication the gateway accepted arrives, in order, with its original
//! timestamp, through a reset link, a half-open link, a kill -9 and a full buffer (where the
//! oldest are dropped and counted).
//!
//! The data is the simulator's read counter (input registers 9-10): the gateway is its only
//! reader, so it publishes 1, 2, 3, … and any lost publication is a missing number.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, SystemTime};

use common::*;

const TOPIC_READS: &str = "reads";

struct Rig {
    _mosquitto: Proc,
    proxy: Proxy,
    sim: Proc,
    modbus: SocketAddr,
    obs: Observer,
    dir: tempfile::TempDir,
    prefix: String,
}

impl Rig {
    async fn start(prefix: &str) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let (mosquitto, mqtt) = mosquitto(dir.path(), "").await;
        let proxy = Proxy::start(mqtt).await;
        let (sim, modbus) = simulator("127.0.0.1:0", &["--speed", "0"]).await;
        // The subscriber talks to mosquitto directly: only the gateway's link has outages.
        let obs = Observer::start_persistent(mqtt, &format!("{prefix}/#")).await;
        Rig {
            _mosquitto: mosquitto,
            proxy,
            sim,
            modbus,
            obs,
            dir,
            prefix: prefix.to_owned(),
        }
    }

    /// Wait until the first readings went through (value 5 arrived).
    async fn flowing(&mut self) {
        let topic = self.topic();
        self.obs
            .wait_topic(0, &topic, |p| p.contains("\"value\":5}"))
            .await;
    }

    /// kill -9 the gateway once every reading taken was accepted: the readings stop first (a
    /// silent unit does not count reads; a reading still between the socket and the buffer at
    /// the kill was never accepted), then the device answers again.
    async fn kill_when_quiet(&mut self, gw: &mut Proc) {
        self.sim.send_line("fault 1 silent");
        self.sim.wait_line("fault 1 silent ok").await;
        gw.wait_line("request failed").await;
        gw.signal("KILL");
        gw.wait_exit().await;
        self.sim.send_line("fault 1 none");
        self.sim.wait_line("fault 1 none ok").await;
    }

    fn topic(&self) -> String {
        format!("{}/{TOPIC_READS}", self.prefix)
    }

    /// The gateway's mapping: the read counter every 100 ms, JSON with its read time, QoS 1,
    /// through the proxy, with a disk buffer in the test's directory.
    fn config(&self, buffer_extra: &str) -> std::path::PathBuf {
        let path = self.dir.path().join("mapping.yaml");
        let yaml = format!(
            r#"
mqtt:
  host: 127.0.0.1
  port: {pp}
  keep_alive: 2s
  status_topic: {pf}/status
  buffer: {{ path: "{buf}"{buffer_extra} }}
metrics: {{ listen: "127.0.0.1:0" }}
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
        publish: {{ topic: {pf}/{TOPIC_READS}, format: json, mode: on_change, qos: 1 }}
"#,
            pp = self.proxy.addr.port(),
            pf = self.prefix,
            buf = self.dir.path().join("queue").display(),
            sp = self.modbus.port(),
        );
        std::fs::write(&path, yaml).unwrap();
        path
    }

    async fn gateway(&self, config: &Path) -> (Proc, SocketAddr) {
        let mut gw = Proc::spawn(
            std::process::Command::new(bin())
                .args(["run", "-c"])
                .arg(config),
        );
        let line = gw.wait_line("metrics listening").await;
        let addr = line
            .split("addr=")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .unwrap()
            .parse()
            .unwrap();
        (gw, addr)
    }

    /// Good readings received so far: (counter value, read time in ms), in arrival order.
    fn readings(&self) -> Vec<(u64, i64)> {
        let topic = self.topic();
        self.obs
            .all()
            .iter()
            .filter(|m| m.topic == topic)
            .map(|m| json(&m.payload))
            .filter(|v| v["quality"] == "good")
            .map(|v| {
                let n = v["value"].as_u64().unwrap();
                let ts = v["ts"].as_str().unwrap();
                (n, ts_ms(ts))
            })
            .collect()
    }

    fn max_seen(&self) -> u64 {
        self.readings().iter().map(|r| r.0).max().unwrap_or(0)
    }

    /// Wait until readings newer than `beyond` arrived and every number from `from` up to the
    /// newest is present.
    async fn wait_complete(&mut self, from: u64, beyond: u64) -> u64 {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        loop {
            let seen: BTreeSet<u64> = self.readings().iter().map(|r| r.0).collect();
            let max = seen.iter().next_back().copied().unwrap_or(0);
            if max > beyond && (from..=max).all(|n| seen.contains(&n)) {
                return max;
            }
            if tokio::time::Instant::now() > deadline {
                let missing: Vec<u64> = (from..=max).filter(|n| !seen.contains(n)).collect();
                panic!(
                    "readings incomplete: newest {max}, want > {beyond}; missing {} of them: {:?}",
                    missing.len(),
                    &missing[..missing.len().min(40)]
                );
            }
            let n = self.obs.len();
            let _ = tokio::time::timeout(
                Duration::from_millis(500),
                self.obs.wait(n, "more", |_| true),
            )
            .await;
        }
    }
}

/// RFC 3339 UTC with milliseconds, as the gateway writes it, to ms since the epoch.
fn ts_ms(ts: &str) -> i64 {
    // 2026-11-22T10:00:00.000Z
    let (date, time) = ts.trim_end_matches('Z').split_once('T').unwrap();
    let d: Vec<i64> = date.split('-').map(|x| x.parse().unwrap()).collect();
    let (hms, ms) = time.split_once('.').unwrap();
    let t: Vec<i64> = hms.split(':').map(|x| x.parse().unwrap()).collect();
    // Days from civil (Howard Hinnant's algorithm).
    let (y, m) = if d[1] <= 2 {
        (d[0] - 1, d[1] + 9)
    } else {
        (d[0], d[1] - 3)
    };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d[2] - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    ((days * 24 + t[0]) * 60 + t[1]) * 60_000 + t[2] * 1000 + ms.parse::<i64>().unwrap()
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Every number in order of first arrival, and read times rising with the numbers.
fn assert_in_order(readings: &[(u64, i64)]) {
    let mut firsts = Vec::new();
    let mut seen = BTreeSet::new();
    for &(n, ts) in readings {
        if seen.insert(n) {
            firsts.push((n, ts));
        }
    }
    for w in firsts.windows(2) {
        assert!(
            w[1].0 > w[0].0,
            "{} arrived (first) after {}: out of order",
            w[1].0,
            w[0].0
        );
        assert!(
            w[1].1 >= w[0].1,
            "reading {} has an earlier timestamp than {}",
            w[1].0,
            w[0].0
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_lost_through_a_reset_link_and_a_half_open_link() {
    let mut rig = Rig::start("d1").await;
    let config = rig.config("");
    let (mut gw, _metrics) = rig.gateway(&config).await;
    rig.flowing().await;

    // 30 s with the link reset: the gateway reconnects into resets the whole time.
    rig.proxy.set(ProxyMode::Cut);
    let cut_from = now_ms();
    gw.wait_line("mqtt connection lost").await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    let before_restore = rig.max_seen();
    rig.proxy.set(ProxyMode::Pass);
    let cut_until = now_ms();
    let after_cut = rig.wait_complete(1, before_restore + 250).await;

    // Readings taken during the cut arrived later, with the time they were read.
    let readings = rig.readings();
    let during: Vec<_> = readings
        .iter()
        .filter(|r| r.1 > cut_from + 1000 && r.1 < cut_until - 1000)
        .collect();
    assert!(
        during.len() > 200,
        "only {} readings carry a time inside the 30 s cut",
        during.len()
    );

    // 30 s of a half-open link: publishes vanish without an error until the keep-alive
    // notices. This is where a client that trusts publish() loses messages.
    let lost_before = gw.count_lines("mqtt connection lost");
    rig.proxy.set(ProxyMode::Blackhole);
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(
        gw.count_lines("mqtt connection lost") > lost_before,
        "the gateway did not notice the half-open link: {}",
        gw.output()
    );
    let before_restore = rig.max_seen();
    rig.proxy.set(ProxyMode::Pass);
    let last = rig.wait_complete(1, before_restore + 250).await;
    assert!(last > after_cut + 250);
    assert_in_order(&rig.readings());
    gw.signal("TERM");
    assert_eq!(gw.wait_exit().await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_9_during_an_outage_loses_nothing_it_accepted() {
    let mut rig = Rig::start("d2").await;
    let config = rig.config("");
    let (mut gw, _) = rig.gateway(&config).await;
    rig.flowing().await;
    rig.proxy.set(ProxyMode::Cut);
    gw.wait_line("mqtt connection lost").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    rig.kill_when_quiet(&mut gw).await;

    // The second life reads on from where the counter is, still cut off, then the broker
    // comes back: the first life's buffered readings arrive too.
    let (mut gw, _) = rig.gateway(&config).await;
    gw.wait_line("outbound buffer opened").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before_restore = rig.max_seen();
    rig.proxy.set(ProxyMode::Pass);
    rig.wait_complete(1, before_restore + 40).await;
    assert_in_order(&rig.readings());
    let recovered: usize = gw
        .output()
        .lines()
        .find(|l| l.contains("outbound buffer opened"))
        .and_then(|l| l.split("recovered=").nth(1))
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap();
    assert!(recovered >= 20, "recovered only {recovered}");
    gw.signal("TERM");
    assert_eq!(gw.wait_exit().await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_buffer_drops_the_oldest_counts_them_and_delivers_the_newest() {
    let mut rig = Rig::start("d3").await;
    let config = rig.config(", max_messages: 50");
    let (mut gw, metrics) = rig.gateway(&config).await;
    let topic = rig.topic();
    rig.flowing().await;
    // Cut when nothing is half-way, so that every drop is a gap: stop the readings (the
    // device answers with an exception: one "bad" reading is published, the device status
    // does not change), cut the quiet link, then let the readings flow into the buffer.
    rig.sim.send_line("fault 1 exception:4");
    rig.sim.wait_line("fault 1 exception:4 ok").await;
    rig.obs
        .wait_topic(0, &topic, |p| p.contains("\"bad\""))
        .await;
    // Delivered is not enough: the gateway must have seen every acknowledgement too, or a
    // delivered message could still count as dropped later.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while metric(metrics, "fieldgate_mqtt_queue_depth", "").await > 0.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "acknowledgements never arrived"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    rig.proxy.set(ProxyMode::CutWhenQuiet);
    gw.wait_line("mqtt connection lost").await;
    rig.sim.send_line("fault 1 none");
    rig.sim.wait_line("fault 1 none ok").await;
    gw.wait_line("outbound buffer full").await;
    // Well past the bound: about 150 readings for 50 places.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while metric(
        metrics,
        "fieldgate_publications_dropped_total",
        "buffer_full",
    )
    .await
        < 100.0
    {
        assert!(tokio::time::Instant::now() < deadline, "no drops counted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    rig.proxy.set(ProxyMode::Pass);
    let restored = now_ms();
    // The newest readings arrive, contiguous from the oldest one kept.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let (seen, max) = loop {
        let readings = rig.readings();
        let seen: BTreeSet<u64> = readings.iter().map(|r| r.0).collect();
        let max = seen.iter().next_back().copied().unwrap_or(0);
        let fresh = readings.iter().any(|r| r.1 > restored + 500);
        let tail = (max.saturating_sub(45)..=max).all(|n| seen.contains(&n));
        if fresh && tail {
            break (seen, max);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "newest never arrived"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let missing: Vec<u64> = (1..=max).filter(|n| !seen.contains(n)).collect();
    let dropped = metric(
        metrics,
        "fieldgate_publications_dropped_total",
        "buffer_full",
    )
    .await;
    // Readings are not all: a device whose every request fails goes to status "error", and
    // back to "ok" when it answers again. That "ok" was the oldest of the outage, so it was
    // the first dropped. Count it when the subscriber never got it.
    let status = format!("{}/status/tower", rig.prefix);
    let statuses: Vec<String> = rig
        .obs
        .all()
        .into_iter()
        .filter(|m| m.topic == status)
        .map(|m| m.payload)
        .collect();
    let ok_lost = statuses.iter().any(|p| p.contains("\"error\""))
        && !statuses
            .iter()
            .skip_while(|p| !p.contains("\"error\""))
            .any(|p| p.contains("\"ok\""));
    assert_eq!(
        (missing.len() + usize::from(ok_lost)) as f64,
        dropped,
        "{} readings missing (and the ok status: {ok_lost}), {dropped} drops counted",
        missing.len()
    );
    // The missing ones are old ones: the newest all arrived. (Not always one run: once the
    // link is back, a full buffer spares what is already on its way and drops the oldest
    // of the rest.)
    assert!(
        *missing.last().unwrap() < max - 45,
        "a recent reading is missing: {missing:?}"
    );
    assert!(
        gw.wait_line("outbound buffer has room again")
            .await
            .contains("dropped=")
    );
    assert_eq!(
        gw.count_lines("outbound buffer full"),
        1,
        "one log line per episode"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_delivers_the_backlog_before_it_exits() {
    let mut rig = Rig::start("d4").await;
    let config = rig.config("");
    let (mut gw, _) = rig.gateway(&config).await;
    rig.flowing().await;
    rig.proxy.set(ProxyMode::Cut);
    gw.wait_line("mqtt connection lost").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let connects = gw.count_lines("mqtt connected");
    rig.proxy.set(ProxyMode::Pass);
    gw.wait_count(&["mqtt connected"], connects + 1).await;
    // At once: the backlog (about 20 readings) and the last readings go out before the exit.
    gw.signal("TERM");
    assert_eq!(gw.wait_exit().await, Some(0));
    let max = rig.max_seen();
    let seen: BTreeSet<u64> = rig.readings().iter().map(|r| r.0).collect();
    let missing: Vec<u64> = (1..=max).filter(|n| !seen.contains(n)).collect();
    assert!(
        missing.is_empty(),
        "missing after a clean exit: {missing:?}"
    );
    assert!(max > 20, "{max}");
    // Nothing was left behind for the next start.
    let (mut again, _) = rig.gateway(&config).await;
    let opened = again.wait_line("outbound buffer opened").await;
    assert!(opened.contains("recovered=0"), "{opened}");
}

/// Two gateways on one state directory would share the buffer's segments (and a Sparkplug
/// node's bdSeq): the second refuses to start and says why; once the first is gone (even by
/// kill -9: the lock dies with the process), the directory is free again. A state directory
/// deleted under a running gateway gets a new lock file, so it stays one gateway's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_gateway_on_the_same_state_directory_refuses_to_start() {
    let rig = Rig::start("d5").await;
    let config = rig.config("");
    let (mut first, _) = rig.gateway(&config).await;
    let refused = || async {
        let mut second = Proc::spawn(
            std::process::Command::new(bin())
                .args(["run", "-c"])
                .arg(&config),
        );
        let code = second.wait_exit().await;
        assert!(matches!(code, Some(c) if c != 0), "exit {code:?}");
        let out = second.output();
        assert!(
            out.contains("another fieldgate is running with the state directory")
                && out.contains(&rig.dir.path().join("queue").display().to_string()),
            "{out}"
        );
    };
    refused().await;
    std::fs::remove_dir_all(rig.dir.path().join("queue")).unwrap();
    first
        .wait_line("state directory lock file was gone: locked a new one")
        .await;
    refused().await;
    first.signal("KILL");
    first.wait_exit().await;
    let (mut third, _) = rig.gateway(&config).await;
    third.signal("TERM");
    assert_eq!(third.wait_exit().await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_record_in_the_disk_buffer_costs_only_its_own_publication_counted() {
    let mut rig = Rig::start("d5").await;
    let config = rig.config("");
    let (mut gw, metrics) = rig.gateway(&config).await;
    rig.flowing().await;
    rig.proxy.set(ProxyMode::Cut);
    gw.wait_line("mqtt connection lost").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while metric(metrics, "fieldgate_mqtt_queue_depth", "").await < 30.0 {
        assert!(tokio::time::Instant::now() < deadline, "nothing buffered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    rig.kill_when_quiet(&mut gw).await;

    // A bad sector under one held reading: one byte of its payload flipped.
    let queue = rig.dir.path().join("queue");
    let seg = std::fs::read_dir(&queue)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    let topic = rig.topic();
    let at: Vec<usize> = bytes
        .windows(topic.len())
        .enumerate()
        .filter(|(_, w)| *w == topic.as_bytes())
        .map(|(i, _)| i + topic.len())
        .collect();
    assert!(at.len() >= 30, "{} readings in {}", at.len(), seg.display());
    let payload = at[at.len() - 15];
    let text =
        String::from_utf8_lossy(&bytes[payload..(payload + 120).min(bytes.len())]).into_owned();
    // This record's payload only: its JSON object ends at the first brace.
    let text = text.split('}').next().unwrap_or_default().to_owned();
    let damaged: u64 = text
        .split("\"value\":")
        .nth(1)
        .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no value in {text:?}"));
    bytes[payload] ^= 0x20;
    std::fs::write(&seg, &bytes).unwrap();

    let (mut gw, metrics) = rig.gateway(&config).await;
    gw.wait_line("damaged buffer data skipped").await;
    assert_eq!(
        metric(
            metrics,
            "fieldgate_publications_dropped_total",
            "buffer_unreadable"
        )
        .await,
        1.0,
        "{}",
        gw.output()
    );
    let before_restore = rig.max_seen();
    rig.proxy.set(ProxyMode::Pass);
    // Every reading but the damaged one arrives: those after it in the buffer too.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let seen: BTreeSet<u64> = rig.readings().iter().map(|r| r.0).collect();
        let max = seen.iter().next_back().copied().unwrap_or(0);
        let missing: Vec<u64> = (1..=max).filter(|n| !seen.contains(n)).collect();
        if max > before_restore + 20 && missing == [damaged] {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "newest {max}; missing {missing:?}, want only {damaged}"
        );
        let n = rig.obs.len();
        let _ = tokio::time::timeout(
            Duration::from_millis(500),
            rig.obs.wait(n, "more", |_| true),
        )
        .await;
    }
    assert_in_order(&rig.readings());
    gw.signal("TERM");
    assert_eq!(gw.wait_exit().await, Some(0));
}
