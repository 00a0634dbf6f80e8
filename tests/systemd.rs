//! systemd: the shipped unit is valid and carries the settings we rely on; the gateway speaks
//! the notify protocol (READY=1 once running, WATCHDOG=1 while its tasks make progress,
//! STOPPING=1 on shutdown), checked with a real notify socket.

mod common;

use std::collections::HashMap;
use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

fn unit_keys() -> HashMap<String, Vec<String>> {
    let text = std::fs::read_to_string(repo("systemd/fieldgate.service")).unwrap();
    let mut keys: HashMap<String, Vec<String>> = HashMap::new();
    for line in text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('['))
    {
        let (k, v) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("not key=value: {line}"));
        keys.entry(k.to_owned()).or_default().push(v.to_owned());
    }
    keys
}

#[test]
fn the_unit_has_the_settings_we_rely_on() {
    let k = unit_keys();
    let one = |key: &str| {
        k.get(key)
            .and_then(|v| v.first())
            .map(String::as_str)
            .unwrap_or_else(|| panic!("{key} missing"))
    };
    assert_eq!(one("Type"), "notify");
    assert!(one("WatchdogSec").ends_with('s'));
    assert_eq!(one("Restart"), "always");
    assert_eq!(one("DynamicUser"), "yes");
    assert_eq!(one("StateDirectory"), "fieldgate");
    assert_eq!(one("ConfigurationDirectory"), "fieldgate");
    assert_eq!(one("SupplementaryGroups"), "dialout");
    assert_eq!(one("DevicePolicy"), "closed");
    assert!(k["DeviceAllow"].iter().any(|d| d == "char-ttyUSB rw"));
    assert!(k["DeviceAllow"].iter().any(|d| d == "char-ttyS rw"));
    assert!(
        !k.contains_key("PrivateDevices"),
        "PrivateDevices would hide the serial ports"
    );
    assert!(
        !k.contains_key("PrivateUsers"),
        "PrivateUsers would map dialout to nobody"
    );
    assert!(one("ExecStart").starts_with("/usr/bin/fieldgate run -c "));
    assert_eq!(one("ExecReload"), "/bin/kill -HUP $MAINPID");
}

#[test]
fn systemd_analyze_verifies_the_unit() {
    let tool = ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("systemd-analyze is missing: apt-get install -y systemd");
    // Verify a copy whose ExecStart names the binary under test (verify checks it exists).
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join("fieldgate.service");
    let text = std::fs::read_to_string(repo("systemd/fieldgate.service"))
        .unwrap()
        .replace("/usr/bin/fieldgate", bin());
    std::fs::write(&unit, text).unwrap();
    let out = Command::new(tool)
        .arg("verify")
        .arg(&unit)
        .output()
        .unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && all.trim().is_empty(),
        "systemd-analyze verify: {all}"
    );
}

fn recv_until(sock: &UnixDatagram, want: &str, seen: &mut Vec<String>) {
    let deadline = Instant::now() + DEADLINE;
    let mut buf = [0u8; 1024];
    while !seen.iter().any(|m| m.lines().any(|l| l == want)) {
        assert!(
            Instant::now() < deadline,
            "no {want} within {DEADLINE:?}; got {seen:?}"
        );
        if let Ok(n) = sock.recv(&mut buf) {
            seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_ready_watchdog_and_stopping() {
    let (_sim, modbus) = simulator("127.0.0.1:0", &["--speed", "0"]).await;
    let (_broker, mqtt) = broker("127.0.0.1:0").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut gw = Proc::spawn(
        Command::new(bin())
            .args(["run", "-c"])
            .arg(repo("mappings/water-tower.yaml"))
            .env("MODBUS_PORT", modbus.port().to_string())
            .env("MQTT_PORT", mqtt.port().to_string())
            .env("TOPIC_PREFIX", "sd1")
            .env("NOTIFY_SOCKET", &path)
            .env("WATCHDOG_USEC", "1000000"),
    );
    let mut seen = Vec::new();
    recv_until(&sock, "READY=1", &mut seen);
    // Every task beats: the watchdog is fed (at half the 1 s period), again and again.
    let deadline = Instant::now() + DEADLINE;
    let mut pings = 0;
    let mut buf = [0u8; 1024];
    while pings < 3 {
        assert!(
            Instant::now() < deadline,
            "fewer than 3 WATCHDOG=1 within {DEADLINE:?}; got {seen:?}"
        );
        if let Ok(n) = sock.recv(&mut buf) {
            let m = String::from_utf8_lossy(&buf[..n]).into_owned();
            pings += usize::from(m.lines().any(|l| l == "WATCHDOG=1"));
            seen.push(m);
        }
    }
    gw.signal("TERM");
    recv_until(&sock, "STOPPING=1", &mut seen);
    assert_eq!(gw.wait_exit().await, Some(0));
}
