//! Templates and the device library against real peers: the SDM630 template read from the
//! simulator's SDM630 profile, every published value checked against the registers as mbpoll
//! reads them; and twenty meters from one template on one RTU bus (socat ptys), all
//! publishing, with `check --expand` showing 20 x the template's points.
//!
//! Fails when mbpoll or socat is missing; `scripts/test.sh` installs them.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::process::Command;
use std::time::Duration;

use common::*;

/// The SDM630 template's points as `check --expand` prints them for `mapping`: (name, address).
fn expanded_points(mapping: &std::path::Path) -> Vec<(String, String, u16)> {
    let out = Command::new(bin())
        .args(["check", "--expand", "-c"])
        .arg(mapping)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let mut device = String::new();
    let mut points = Vec::new();
    for line in text.lines() {
        if let Some(d) = line.strip_prefix("  - name: ") {
            device = d.trim_matches('"').to_owned();
        }
        if let Some(p) = line.strip_prefix("      - { name: ") {
            let name = p.split(',').next().unwrap().trim_matches('"').to_owned();
            let address = p
                .split("address: ")
                .nth(1)
                .and_then(|a| a.split(',').next())
                .unwrap()
                .parse()
                .unwrap();
            points.push((device.clone(), name, address));
        }
    }
    points
}

/// Points of the shipped SDM630 template, counted in its file.
fn template_points() -> usize {
    std::fs::read_to_string(repo("mappings/devices/sdm630.yaml"))
        .unwrap()
        .lines()
        .filter(|l| l.trim_start().starts_with("- { name:"))
        .count()
}

/// The two registers at `address` (input registers, unit 1) as mbpoll reads them: raw, and as
/// mbpoll's own float32 with the high word first (`-B`).
fn mbpoll_float(port: u16, address: u16) -> ([u16; 2], f64) {
    let run = |t: &str, count: &str| {
        let out = Command::new("mbpoll")
            .args(["-m", "tcp", "-a", "1", "-t", t, "-B", "-r"])
            .arg((address + 1).to_string())
            .args(["-c", count, "-p", &port.to_string(), "-1", "127.0.0.1"])
            .output()
            .expect("mbpoll is not installed: apt-get install -y mbpoll");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let values: Vec<String> = text
            .lines()
            .filter(|l| l.starts_with('['))
            .filter_map(|l| Some(l.split(':').nth(1)?.trim().to_owned()))
            .collect();
        assert!(!values.is_empty(), "mbpoll said:\n{text}");
        values
    };
    let hex = run("3:hex", "2");
    let words: Vec<u16> = hex
        .iter()
        .map(|h| u16::from_str_radix(h.trim_start_matches("0x"), 16).unwrap())
        .collect();
    let float: f64 = run("3:float", "1")[0].parse().unwrap();
    ([words[0], words[1]], float)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdm630_template_publishes_what_the_registers_hold() {
    let mut sim = Proc::spawn(Command::new(bin()).args([
        "simulate",
        "energy-meter",
        "--profile",
        "sdm630",
        "--listen",
        "127.0.0.1:0",
        "--speed",
        "0",
    ]));
    let line = sim.wait_line("listening on").await;
    let modbus: std::net::SocketAddr = line.rsplit(' ').next().unwrap().trim().parse().unwrap();
    let (_broker, mqtt) = broker("127.0.0.1:0").await;
    let mut obs = Observer::start(mqtt, "lab/#").await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "mqtt: {{ host: 127.0.0.1, port: {}, status_topic: lab/status }}\n\
         include: [{}]\n\
         devices:\n  - {{ name: m1, tcp: {{ host: 127.0.0.1, port: {} }}, template: sdm630, parameters: {{ prefix: lab }} }}\n",
        mqtt.port(),
        repo("mappings/devices/sdm630.yaml").display(),
        modbus.port()
    );
    let _gw = gateway_yaml(dir.path(), &yaml);
    let points = expanded_points(&dir.path().join("mapping.yaml"));
    assert_eq!(points.len(), template_points());
    assert!(points.len() >= 30, "{points:?}");
    let mut checked = 0;
    for (_, name, address) in &points {
        let topic = format!("lab/m1/{name}");
        let published = obs.wait_topic(0, &topic, |_| true).await.payload;
        let published: f32 = published
            .parse()
            .unwrap_or_else(|e| panic!("{topic}: `{published}`: {e}"));
        let (words, mbpoll) = mbpoll_float(modbus.port(), *address);
        // Exactly the float the two registers hold, high word first (the manual's order).
        let register = f32::from_bits(u32::from(words[0]) << 16 | u32::from(words[1]));
        assert_eq!(
            published, register,
            "{topic} at {address}: registers {words:04x?}"
        );
        // And mbpoll's own reading of them (printed with 6 significant digits).
        let tolerance = 5e-6 * mbpoll.abs().max(1e-3);
        assert!(
            (f64::from(published) - mbpoll).abs() <= tolerance,
            "{topic} at {address}: published {published}, mbpoll {mbpoll}"
        );
        checked += 1;
    }
    assert_eq!(checked, template_points());
    // Values that are not zero, so the check above compares something.
    let voltage = obs
        .wait_topic(0, "lab/m1/voltage_l1", |_| true)
        .await
        .payload;
    assert_eq!(voltage, "230.1");
    drop(sim);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_meters_from_one_template_on_one_bus_all_publish() {
    let pty = PtyPair::new().await;
    let units: Vec<String> = (1..=20).map(|u| u.to_string()).collect();
    let mut sim = Proc::spawn(
        Command::new(bin())
            .args([
                "simulate",
                "energy-meter",
                "--profile",
                "sdm630",
                "--parity",
                "none",
            ])
            .args(["--speed", "0", "--units", &units.join(","), "--rtu"])
            .arg(&pty.a),
    );
    // The meter simulator names the plant it simulates (not "water tower").
    let line = sim.wait_line("serving rtu").await;
    assert!(
        line.contains("energy meter (sdm630) serving rtu on"),
        "{line}"
    );
    let (_broker, mqtt) = broker("127.0.0.1:0").await;
    let mut obs = Observer::start(mqtt, "bus/#").await;
    let dir = tempfile::tempdir().unwrap();
    let mut yaml = format!(
        "mqtt: {{ host: 127.0.0.1, port: {}, status_topic: bus/status }}\n\
         include: [{}]\n\
         buses:\n  - {{ name: rs485, serial: {{ device: {}, parity: none }}, timeout: 500ms }}\n\
         devices:\n",
        mqtt.port(),
        repo("mappings/devices/sdm630.yaml").display(),
        pty.b.display()
    );
    for u in 1..=20 {
        yaml.push_str(&format!(
            "  - {{ name: meter{u:02}, bus: rs485, unit: {u}, poll_interval: 10s, template: sdm630, parameters: {{ prefix: bus }} }}\n"
        ));
    }
    let _gw = gateway_yaml(dir.path(), &yaml);
    // check --expand: 20 x the template's points, each device with all of them.
    let points = expanded_points(&dir.path().join("mapping.yaml"));
    assert_eq!(points.len(), 20 * template_points());
    let mut per_device: BTreeMap<&str, usize> = BTreeMap::new();
    for (d, _, _) in &points {
        *per_device.entry(d).or_default() += 1;
    }
    assert_eq!(per_device.len(), 20);
    assert!(per_device.values().all(|&n| n == template_points()));
    // Every point of every meter is published, each from its own unit.
    let want: HashSet<String> = points
        .iter()
        .map(|(d, n, _)| format!("bus/{d}/{n}"))
        .collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let seen: HashSet<String> = obs.all().into_iter().map(|m| m.topic).collect();
        let missing: Vec<&String> = want.iter().filter(|t| !seen.contains(*t)).collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {} topics never published, e.g. {:?}",
            missing.len(),
            want.len(),
            &missing[..missing.len().min(5)]
        );
        let n = obs.len();
        let _ = tokio::time::timeout(Duration::from_secs(2), obs.wait(n, "more", |_| true)).await;
    }
    for u in [1, 7, 20] {
        let v = obs
            .wait_topic(0, &format!("bus/meter{u:02}/voltage_l1"), |_| true)
            .await;
        assert_eq!(v.payload, "230.1");
    }
    drop(sim);
}

/// Write as editors do (a temporary file renamed over the old one), so no half file is read.
fn write(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_reloads_when_an_included_file_changes_and_names_it_in_errors() {
    let mut sim = Proc::spawn(Command::new(bin()).args([
        "simulate",
        "energy-meter",
        "--profile",
        "sdm630",
        "--listen",
        "127.0.0.1:0",
        "--speed",
        "0",
    ]));
    let line = sim.wait_line("listening on").await;
    let modbus: std::net::SocketAddr = line.rsplit(' ').next().unwrap().trim().parse().unwrap();
    let (_broker, mqtt) = broker("127.0.0.1:0").await;
    let mut obs = Observer::start(mqtt, "w/#").await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("lib")).unwrap();
    let lib = dir.path().join("lib/meter.yaml");
    let template = |topic: &str, qos: u8| {
        format!(
            "templates:\n  - name: meter\n    points:\n      - {{ name: v, kind: input_register, address: 0, type: f32, publish: {{ topic: \"w/${{device}}/{topic}\", qos: {qos} }} }}\n"
        )
    };
    write(&lib, &template("v", 1));
    let path = dir.path().join("mapping.yaml");
    write(
        &path,
        &format!(
            "mqtt: {{ host: 127.0.0.1, port: {}, status_topic: w/status }}\ninclude: [lib/meter.yaml]\ndevices:\n  - {{ name: m1, tcp: {{ host: 127.0.0.1, port: {} }}, poll_interval: 200ms, template: meter }}\n",
            mqtt.port(),
            modbus.port()
        ),
    );
    let mut gw = Proc::spawn(
        Command::new(bin())
            .args(["run", "--watch", "-c"])
            .arg(&path),
    );
    obs.wait_topic(0, "w/m1/v", |p| p == "230.1").await;

    // Only the included file changes: the watch sees it and the new topic is published.
    write(&lib, &template("volts", 1));
    gw.wait_line("reload applied").await;
    let since = obs.len();
    obs.wait_topic(since, "w/m1/volts", |p| p == "230.1").await;

    // A mistake in the included file: rejected, logged with that file's name and place.
    write(&lib, &template("volts", 3));
    gw.wait_line("reload rejected").await;
    let out = gw.output();
    assert!(
        out.contains("lib/meter.yaml:4:74: devices[m1].points[v].publish.qos: qos must be 0, 1 or 2, not 3 (in template `meter`, used by device `m1` at ")
            && out.contains("mapping.yaml:4:88)"),
        "{out}"
    );
    let now = obs.len();
    obs.wait(now, "still published", |m| m.topic == "w/m1/volts")
        .await;
    drop(sim);
}
