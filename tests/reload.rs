//! Hot reload: a valid change takes effect with the MQTT session kept and no gap in an
//! unchanged device's values; an invalid change keeps the old configuration running; `--watch`
//! picks up an edit and a removed device's retained status is cleared.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::*;

fn mapping(
    mqtt: SocketAddr,
    a: SocketAddr,
    b: SocketAddr,
    prefix: &str,
    b_extra: &str,
    commands: &str,
) -> String {
    format!(
        r#"
mqtt: {{ host: 127.0.0.1, port: {mp}, status_topic: {prefix}/status }}
devices:
  - name: a
    tcp: {{ host: 127.0.0.1, port: {ap} }}
    poll_interval: 200ms
    points:
      - {{ name: level, kind: input_register, address: 0, publish: {{ topic: {prefix}/a/level }} }}
  - name: b
    tcp: {{ host: 127.0.0.1, port: {bp} }}
    poll_interval: 200ms
    points:
      - {{ name: level, kind: input_register, address: 0, publish: {{ topic: {prefix}/b/level }} }}
{b_extra}
{commands}
"#,
        mp = mqtt.port(),
        ap = a.port(),
        bp = b.port()
    )
}

const B_EXTRA: &str = r#"      - { name: temp, kind: input_register, address: 1, type: i16, scale: 0.1, unit: "°C", publish: { topic: PREFIX/b/temp, format: json } }
      - { name: p2, kind: coil, address: 1, writable: true }"#;

/// The largest silence between consecutive messages on `topic` in `msgs`.
fn largest_gap(msgs: &[Msg], topic: &str) -> Duration {
    let at: Vec<_> = msgs
        .iter()
        .filter(|m| m.topic == topic)
        .map(|m| m.at)
        .collect();
    at.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default()
}

fn write(path: &Path, text: &str) {
    // Write to a temporary file and rename, as editors do, so no half file is ever read.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_a_valid_change_and_keeps_the_old_config_on_an_invalid_one() {
    let (_sa, a) = simulator("127.0.0.1:0", &["--speed", "0", "--level", "11"]).await;
    let (_sb, b) = simulator("127.0.0.1:0", &["--speed", "0", "--level", "22"]).await;
    let (_broker, mqtt) = broker("127.0.0.1:0").await;
    let prefix = "rl1";
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mapping.yaml");
    write(&path, &mapping(mqtt, a, b, prefix, "", ""));
    let mut obs = Observer::start(mqtt, &format!("{prefix}/#")).await;
    let mut gw = Proc::spawn(
        std::process::Command::new(bin())
            .args(["run", "-c"])
            .arg(&path),
    );
    obs.wait_topic(0, &format!("{prefix}/a/level"), |p| p == "11")
        .await;
    obs.wait_topic(0, &format!("{prefix}/b/level"), |p| p == "22")
        .await;

    // Valid change: device b gains a point and a command; a is untouched.
    let extra = B_EXTRA.replace("PREFIX", prefix);
    let commands = format!("commands:\n  - {{ topic: {prefix}/b/p2/set, write: b.p2 }}\n");
    write(&path, &mapping(mqtt, a, b, prefix, &extra, &commands));
    let since = obs.len();
    gw.signal("HUP");
    let line = gw.wait_line("reload applied").await;
    assert!(
        line.contains("links_kept=1")
            && line.contains("links_stopped=1")
            && line.contains("links_started=1"),
        "{line}"
    );
    let report = obs
        .wait_topic(since, &format!("{prefix}/status/reload"), |_| true)
        .await;
    assert_eq!(json(&report.payload)["result"], "applied");
    // Retained: a late subscriber reads it.
    let mut late = Observer::start(mqtt, &format!("{prefix}/status/reload")).await;
    let kept = late
        .wait_topic(0, &format!("{prefix}/status/reload"), |_| true)
        .await;
    assert!(kept.retain && json(&kept.payload)["result"] == "applied");
    // The new point is published, and the new command topic works on the same session.
    let t = json(
        &obs.wait_topic(since, &format!("{prefix}/b/temp"), |_| true)
            .await
            .payload,
    );
    assert_eq!(t["value"], 20.0);
    let since_cmd = obs.len();
    obs.publish(&format!("{prefix}/b/p2/set"), "1", false).await;
    let ack = json(
        &obs.wait_topic(since_cmd, &format!("{prefix}/b/p2/set/ack"), |_| true)
            .await
            .payload,
    );
    assert_eq!(ack["result"], "ok", "{ack}");
    assert_eq!(read_coils(b).await, [false, true]);
    // a's values kept flowing through the reload: more after it, and no silence longer than a
    // few poll intervals (200 ms) anywhere.
    let after = obs.len();
    obs.wait(after, "a's level after the reload", |m| {
        m.topic == format!("{prefix}/a/level")
    })
    .await;
    let gap = largest_gap(&obs.all(), &format!("{prefix}/a/level"));
    assert!(
        gap < Duration::from_millis(1500),
        "a's level paused for {gap:?} around the reload"
    );
    assert_eq!(
        gw.count_lines("mqtt connected"),
        1,
        "the MQTT session was kept"
    );
    let a_link = format!("link=\"tcp://127.0.0.1:{}\"", a.port());
    assert_eq!(
        gw.output()
            .lines()
            .filter(|l| l.contains("modbus link connected") && l.contains(&a_link))
            .count(),
        1
    );

    // Invalid change: the old configuration keeps running.
    let broken = mapping(mqtt, a, b, prefix, &extra, &commands)
        .replace("poll_interval: 200ms", "poll_intervall: 200ms");
    write(&path, &broken);
    let since = obs.len();
    gw.signal("HUP");
    gw.wait_line("reload rejected").await;
    let report = json(
        &obs.wait_topic(since, &format!("{prefix}/status/reload"), |_| true)
            .await
            .payload,
    );
    assert_eq!(report["result"], "rejected");
    assert!(
        report["errors"][0]
            .as_str()
            .unwrap()
            .contains("unknown field `poll_intervall`"),
        "{report}"
    );
    assert!(
        gw.output()
            .contains("mapping.yaml:6:5: devices[a].poll_intervall"),
        "{}",
        gw.output()
    );
    let now = obs.len();
    obs.wait(now, "a's level still published", |m| {
        m.topic == format!("{prefix}/a/level")
    })
    .await;
    obs.wait(now, "b's temperature still published", |m| {
        m.topic == format!("{prefix}/b/temp")
    })
    .await;
    // Across both reloads nothing was decoded under the wrong read plan.
    for m in obs.all() {
        if m.topic == format!("{prefix}/a/level") {
            assert_eq!(m.payload, "11");
        }
        if m.topic == format!("{prefix}/b/level") {
            assert_eq!(m.payload, "22");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_picks_up_an_edit_and_a_removed_device_status_is_cleared() {
    let (_sa, a) = simulator("127.0.0.1:0", &["--speed", "0", "--level", "11"]).await;
    let (_sb, b) = simulator("127.0.0.1:0", &["--speed", "0", "--level", "22"]).await;
    let (_broker, mqtt) = broker("127.0.0.1:0").await;
    let prefix = "rl2";
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mapping.yaml");
    write(&path, &mapping(mqtt, a, b, prefix, "", ""));
    let mut obs = Observer::start(mqtt, &format!("{prefix}/#")).await;
    let mut gw = Proc::spawn(
        std::process::Command::new(bin())
            .args(["run", "--watch", "-c"])
            .arg(&path),
    );
    obs.wait_topic(0, &format!("{prefix}/status/b"), |p| {
        json(p)["status"] == "ok"
    })
    .await;

    // Remove device b by editing the file; no signal.
    let text = mapping(mqtt, a, b, prefix, "", "");
    let without_b = text[..text.find("  - name: b").unwrap()].to_owned();
    write(&path, &without_b);
    let since = obs.len();
    let line = gw.wait_line("reload applied").await;
    assert!(
        line.contains("links_stopped=1") && line.contains("links_started=0"),
        "{line}"
    );
    // An empty retained message clears the status: a late subscriber no longer gets one.
    obs.wait_topic(since, &format!("{prefix}/status/b"), |p| p.is_empty())
        .await;
    let mut late = Observer::start(mqtt, &format!("{prefix}/status/#")).await;
    late.wait_topic(0, &format!("{prefix}/status/a"), |_| true)
        .await;
    assert!(
        late.all()
            .iter()
            .all(|m| m.topic != format!("{prefix}/status/b")),
        "b's status is gone"
    );
    let n = obs.len();
    obs.wait(n, "a still published", |m| {
        m.topic == format!("{prefix}/a/level")
    })
    .await;
    assert!(
        obs.all()[n..]
            .iter()
            .all(|m| m.topic != format!("{prefix}/b/level"))
    );
}
