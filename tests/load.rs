//! Nothing lost silently under load, against Debian's mosquitto and the real gateway: a poll
//! of 2,000 changed registers publishes every one, at QoS 0 and at QoS 1; with the broker
//! paused (SIGSTOP) QoS 1 values are never dropped before the buffer, polling goes on, and the
//! buffer's drop counter accounts exactly for every value that did not arrive; every drop reason
//! shows in `/metrics`. Behaviour only: no timing is asserted.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::bank::Bank;
use common::*;

/// mosquitto that queues without limit for its subscribers (its default is 1,000 per client).
const UNLIMITED: &str = "max_queued_messages 0\nmax_inflight_messages 0\n";

/// `n` registers of one device, each its own topic; `mqtt_extra` goes into the mqtt section.
fn mapping(mqtt: SocketAddr, modbus: SocketAddr, n: usize, qos: u8, mqtt_extra: &str) -> String {
    let mut y = format!(
        "mqtt: {{ host: 127.0.0.1, port: {}, status_topic: ld/status{mqtt_extra} }}\nmetrics: {{ listen: 127.0.0.1:0 }}\ndevices:\n  - name: bank\n    tcp: {{ host: 127.0.0.1, port: {} }}\n    poll_interval: 200ms\n    points:\n",
        mqtt.port(),
        modbus.port()
    );
    for i in 0..n {
        y.push_str(&format!(
            "      - {{ name: r{i}, kind: holding_register, address: {i}, publish: {{ topic: ld/r/{i}, qos: {qos}, mode: on_change }} }}\n"
        ));
    }
    y
}

async fn metrics_addr(gw: &mut Proc) -> SocketAddr {
    let line = gw.wait_line("metrics listening").await;
    line.split_whitespace()
        .find_map(|w| w.trim_start_matches("addr=").trim_matches('"').parse().ok())
        .unwrap_or_else(|| panic!("no address in {line}"))
}

/// The values received on each `ld/r/N` topic, in order.
fn received(obs: &Observer) -> HashMap<String, Vec<u16>> {
    let mut out: HashMap<String, Vec<u16>> = HashMap::new();
    for m in obs.all() {
        if m.topic.starts_with("ld/r/") {
            out.entry(m.topic.clone())
                .or_default()
                .push(m.payload.parse().unwrap());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_value_of_a_2000_register_poll_is_published_at_qos_0_and_1() {
    let dir = tempfile::tempdir().unwrap();
    for qos in [0u8, 1] {
        // A broker of its own per run: what the previous run's gateway had written to its
        // socket before it was killed still reaches the broker, and must not reach this run's
        // subscriber.
        let (_mosquitto, mqtt) = mosquitto(dir.path(), UNLIMITED).await;
        let bank = Bank {
            registers: std::sync::Arc::new(std::sync::Mutex::new(vec![0; 2000])),
            bump: true,
            ..Default::default()
        };
        let modbus = bank.clone().serve().await;
        let mut obs = Observer::start(mqtt, "ld/r/#").await;
        let gdir = tempfile::tempdir().unwrap();
        let mut gw = gateway_yaml(gdir.path(), &mapping(mqtt, modbus, 2000, qos, ""));
        let metrics = metrics_addr(&mut gw).await;
        // Three whole polls of every register: each topic has values 1, 2, 3 (every read
        // bumps every register, and every poll reads each register once).
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let got = received(&obs);
            let done = got.len() == 2000 && got.values().all(|v| v.len() >= 3);
            if done {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "qos {qos}: {} topics, fewest values {:?}",
                got.len(),
                got.values().map(Vec::len).min()
            );
            obs.wait(obs.len(), "more values", |_| true).await;
        }
        for (topic, values) in received(&obs) {
            assert_eq!(
                values[..3],
                [1, 2, 3],
                "qos {qos} {topic}: every poll, in order"
            );
        }
        let dropped = metric(metrics, "fieldgate_publications_dropped_total", "").await;
        assert_eq!(dropped, 0.0, "qos {qos}");
        drop(gw);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_broker_never_makes_qos1_values_vanish_uncounted() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, mqtt) = mosquitto(dir.path(), UNLIMITED).await;
    let bank = Bank {
        registers: std::sync::Arc::new(std::sync::Mutex::new(vec![0; 200])),
        bump: true,
        ..Default::default()
    };
    let modbus = bank.clone().serve().await;
    let mut obs = Observer::start(mqtt, "ld/#").await;
    let gdir = tempfile::tempdir().unwrap();
    // A buffer far smaller than what piles up while the broker sleeps.
    let yaml = mapping(mqtt, modbus, 200, 1, ", buffer: { max_messages: 600 }");
    let mut gw = gateway_yaml(gdir.path(), &yaml);
    let metrics = metrics_addr(&mut gw).await;
    obs.wait_topic(0, "ld/r/199", |p| p == "2").await;

    // Every drop reason is a series from the start, so a missing one is not mistaken for 0.
    let text = {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(metrics).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").await.unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).await.unwrap();
        body
    };
    for reason in [
        "buffer_full",
        "buffer_unreadable",
        "handoff_full",
        "offline",
        "client_busy",
        "shutdown",
    ] {
        assert!(
            text.contains(&format!(
                "fieldgate_publications_dropped_total{{reason=\"{reason}\"}}"
            )),
            "{reason} missing from /metrics:\n{text}"
        );
    }

    // Freeze the broker: the connection stays open, nothing is acknowledged.
    broker.signal("STOP");
    let reads_before = bank.reads.load(Ordering::SeqCst);
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while metric(
        metrics,
        "fieldgate_publications_dropped_total",
        "buffer_full",
    )
    .await
        < 1000.0
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the buffer never overflowed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Polling went on while the broker was frozen.
    assert!(bank.reads.load(Ordering::SeqCst) >= reads_before + 5);
    broker.signal("CONT");
    // Stop the values at their source, then let the backlog drain.
    bank.failing.store(true, Ordering::SeqCst);
    obs.wait_topic(0, "ld/status/bank", |p| p.contains("error"))
        .await;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while metric(metrics, "fieldgate_mqtt_queue_depth", "").await > 0.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the buffer never drained"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Settle: the observer has what the broker delivered.
    let mut last = obs.len();
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if obs.len() == last {
            break;
        }
        last = obs.len();
    }
    let dropped = metric(
        metrics,
        "fieldgate_publications_dropped_total",
        "buffer_full",
    )
    .await;
    let handoff = metric(
        metrics,
        "fieldgate_publications_dropped_total",
        "handoff_full",
    )
    .await;
    assert_eq!(
        handoff, 0.0,
        "QoS 1 values never wait in vain for the buffer"
    );
    // Every register counted 1, 2, 3, ... one per poll: a missing number is a lost value.
    let mut missing = 0u64;
    for (topic, mut values) in received(&obs) {
        values.sort_unstable();
        values.dedup();
        let span = u64::from(values[values.len() - 1]) - u64::from(values[0]) + 1;
        assert_eq!(values[0], 1, "{topic}: the first value arrived");
        missing += span - values.len() as u64;
    }
    assert!(
        missing > 0,
        "the pause lost nothing: the test proves nothing"
    );
    assert_eq!(
        missing as f64, dropped,
        "every value that did not arrive is counted as buffer_full, and no other"
    );
}
