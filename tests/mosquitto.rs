//! Interoperability: the same water-tower flow against Debian's mosquitto, driven with the
//! `mosquitto_sub` / `mosquitto_pub` tools the README's walkthrough uses. Fails when mosquitto
//! is missing; `.ci/run` installs it.

mod common;

use std::process::Command;

use common::*;

fn tool(name: &str) -> String {
    for dir in ["/usr/bin", "/usr/local/bin"] {
        let p = format!("{dir}/{name}");
        if std::path::Path::new(&p).exists() {
            return p;
        }
    }
    panic!("{name} is not installed: apt-get install -y mosquitto-clients");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn water_tower_end_to_end_with_mosquitto_and_its_clients() {
    let dir = tempfile::tempdir().unwrap();
    let (_broker, mqtt) = mosquitto(dir.path(), "").await;
    let (_sim, modbus) = simulator("127.0.0.1:0", &["--speed", "0", "--level", "321"]).await;
    let prefix = "ISBTest/pumpcontrol";
    let port = mqtt.port().to_string();
    let mut sub = Proc::spawn(Command::new(tool("mosquitto_sub")).args([
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "-t",
        &format!("{prefix}/#"),
        "-v",
        "-q",
        "2",
    ]));
    // mosquitto_sub prints nothing until subscribed; the retained status below proves it is.
    let mut gw = gateway(&repo("mappings/water-tower.yaml"), modbus, mqtt, prefix).await;

    sub.wait_line(&format!("{prefix}/status online")).await;
    sub.wait_line(&format!("{prefix}/waterlevel 321")).await;
    sub.wait_line(&format!("{prefix}/pumpcode 0")).await;

    let ok = Command::new(tool("mosquitto_pub"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-t",
            &format!("{prefix}/pump"),
            "-q",
            "2",
            "-m",
            "startp1",
        ])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let ack = sub.wait_line(&format!("{prefix}/pump/ack ")).await;
    assert!(ack.contains("\"result\":\"ok\""), "{ack}");
    sub.wait_line(&format!("{prefix}/pumpcode 1")).await;
    assert_eq!(read_coils(modbus).await, [true, false]);

    // kill -9: mosquitto publishes the retained last will.
    gw.signal("KILL");
    gw.wait_exit().await;
    sub.wait_line(&format!("{prefix}/status offline")).await;
    let out = Command::new(tool("mosquitto_sub"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-t",
            &format!("{prefix}/status"),
            "-C",
            "1",
            "-W",
            "10",
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "offline",
        "retained last will"
    );
}
