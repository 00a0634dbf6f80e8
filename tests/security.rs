//! Security against Debian's mosquitto: TLS with client certificates, passwords and the ACL
//! of examples/mosquitto, payload encryption read and written by mosquitto's own clients,
//! every refusal with its own state, pinning through `tls inspect --pin`, and no secret in
//! any output. Certificates come from `certs/gen.sh`, made at test time.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;

const BASIN_PASSWORD: &str = "Basin-Secret-4711-pw";
const REMOTE_PASSWORD: &str = "Remote-Secret-0815-pw";

/// A PKI from certs/gen.sh in `dir/name`.
fn pki(dir: &Path, name: &str, extra: &[&str]) -> PathBuf {
    let out = dir.join(name);
    let made = Command::new("bash")
        .arg(repo("certs/gen.sh"))
        .arg(&out)
        .args(extra)
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    out
}

/// FIELDGATE_ETC of the secure mapping: certs/, mqtt-password, payload.key.
fn etc(dir: &Path) -> PathBuf {
    let etc = dir.join("etc");
    pki(&etc, "certs", &[]);
    std::fs::write(etc.join("mqtt-password"), format!("{BASIN_PASSWORD}\n")).unwrap();
    std::fs::write(etc.join("payload.key"), [0x5au8; 32]).unwrap();
    etc
}

fn passwords(dir: &Path) -> PathBuf {
    let file = dir.join("passwd");
    for (i, (user, pw)) in [("ISBBasin", BASIN_PASSWORD), ("ISBRemote", REMOTE_PASSWORD)]
        .iter()
        .enumerate()
    {
        let mut cmd = Command::new("mosquitto_passwd");
        cmd.arg("-b");
        if i == 0 {
            cmd.arg("-c");
        }
        let st = cmd.arg(&file).arg(user).arg(pw).status().unwrap();
        assert!(st.success());
    }
    file
}

/// The broker of examples/mosquitto: TLS, client certificates required, passwords, the ACL.
async fn secure_broker(dir: &Path, pki: &Path) -> (Proc, SocketAddr) {
    let body = format!(
        "cafile {pki}/ca.crt\ncertfile {pki}/broker.crt\nkeyfile {pki}/broker.key\n\
         require_certificate true\nallow_anonymous false\npassword_file {pw}\nacl_file {acl}\n",
        pki = pki.display(),
        pw = passwords(dir).display(),
        acl = repo("examples/mosquitto/acl").display(),
    );
    mosquitto_with(dir, &body).await
}

/// mosquitto_sub / mosquitto_pub as the console (ISBRemote, its certificate).
fn console(tool: &str, pki: &Path, mqtt: SocketAddr) -> Command {
    let mut c = Command::new(tool);
    c.args(["-h", "127.0.0.1", "-p", &mqtt.port().to_string()])
        .arg("--cafile")
        .arg(pki.join("ca.crt"))
        .arg("--cert")
        .arg(pki.join("console.crt"))
        .arg("--key")
        .arg(pki.join("console.key"))
        .args(["-u", "ISBRemote", "-P", REMOTE_PASSWORD]);
    c
}

fn crypt(args: &[&str], input: &[u8]) -> std::process::Output {
    let mut child = Command::new(bin())
        .arg("crypt")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

fn secure_gateway(etc: &Path, mqtt: SocketAddr, modbus: SocketAddr) -> Proc {
    Proc::spawn(
        Command::new(bin())
            .args(["run", "-c"])
            .arg(repo("mappings/water-tower-secure.yaml"))
            .env("FIELDGATE_ETC", etc)
            .env("MQTT_HOST", "127.0.0.1")
            .env("MQTT_PORT", mqtt.port().to_string())
            .env("MODBUS_HOST", "127.0.0.1")
            .env("MODBUS_PORT", modbus.port().to_string()),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_water_tower_over_mutual_tls_passwords_acl_and_payload_encryption() {
    let dir = tempfile::tempdir().unwrap();
    let etc = etc(dir.path());
    let certs = etc.join("certs");
    let key = etc.join("payload.key");
    let (_broker, mqtt) = secure_broker(dir.path(), &certs).await;
    let (_sim, modbus) = simulator("127.0.0.1:0", &["--speed", "0", "--level", "187"]).await;
    let mut gw = secure_gateway(&etc, mqtt, modbus);
    gw.wait_line("mqtt connected").await;

    // The console reads the level with mosquitto_sub and decrypts it with `crypt decrypt`.
    let level = "ISBTest/pumpcontrol/waterlevel";
    let sub = console("mosquitto_sub", &certs, mqtt)
        .args(["-t", level, "-C", "1", "-N", "-W", "10"])
        .output()
        .unwrap();
    assert!(
        sub.status.success(),
        "{}",
        String::from_utf8_lossy(&sub.stderr)
    );
    assert_ne!(sub.stdout, b"187", "the level went out in clear");
    let keyp = key.to_str().unwrap();
    let plain = crypt(&["decrypt", "--key", keyp, "--topic", level], &sub.stdout);
    assert!(
        plain.status.success(),
        "{}",
        String::from_utf8_lossy(&plain.stderr)
    );
    assert_eq!(plain.stdout, b"187");
    // Bound to its topic: the same envelope does not open as another topic's.
    let moved = crypt(
        &[
            "decrypt",
            "--key",
            keyp,
            "--topic",
            "ISBTest/pumpcontrol/pumpcode",
        ],
        &sub.stdout,
    );
    assert!(!moved.status.success() && moved.stdout.is_empty());

    // An encrypted command starts pump 1.
    let pump = "ISBTest/pumpcontrol/pump";
    let publish = |payload: &[u8]| {
        let mut child = console("mosquitto_pub", &certs, mqtt)
            .args(["-t", pump, "-q", "1", "-s"])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(payload).unwrap();
        assert!(child.wait().unwrap().success());
    };
    let start = crypt(&["encrypt", "--key", keyp, "--topic", pump], b"startp1");
    assert!(start.status.success());
    publish(&start.stdout);
    gw.wait_line("origin=\"mqtt:ISBTest/pumpcontrol/pump\"")
        .await;
    assert_eq!(read_coils(modbus).await, vec![true, false]);

    // A tampered one, and the same valid one again, are refused; nothing is written.
    let mut tampered = crypt(&["encrypt", "--key", keyp, "--topic", pump], b"startp2").stdout;
    let last = tampered.len() - 1;
    tampered[last] ^= 0x01;
    publish(&tampered);
    gw.wait_line("does not authenticate").await;
    publish(&start.stdout);
    gw.wait_line("replayed").await;
    assert_eq!(read_coils(modbus).await, vec![true, false]);
    assert_eq!(gw.count_lines("write ok"), 1, "{}", gw.output());

    // No secret anywhere: not in the gateway's log, not in `check`.
    let check = Command::new(bin())
        .args(["check", "-c"])
        .arg(repo("mappings/water-tower-secure.yaml"))
        .env("FIELDGATE_ETC", &etc)
        .output()
        .unwrap();
    assert!(check.status.success());
    let check = String::from_utf8_lossy(&check.stdout);
    assert!(check.contains("password from file"), "{check}");
    gw.signal("TERM");
    assert_eq!(gw.wait_exit().await, Some(0));
    for (what, text) in [("log", gw.output()), ("check", check.into_owned())] {
        assert!(
            !text.contains(BASIN_PASSWORD),
            "the password is in the {what}"
        );
        assert!(
            !text.contains("WlpaWlpa"),
            "the key (base64) is in the {what}"
        );
        assert!(!text.contains("5a5a5a5a"), "the key (hex) is in the {what}");
    }
}

/// A mapping for `mqtt` with `tls` and credential lines of the test's.
fn mapping(dir: &Path, name: &str, mqtt: SocketAddr, security: &str) -> PathBuf {
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &path,
        format!(
            "mqtt:\n  host: 127.0.0.1\n  port: {}\n  status_topic: ISBTest/pumpcontrol/status\n{security}\n\
             devices:\n  - name: tower\n    tcp: {{ host: 127.0.0.1, port: 9 }}\n    points:\n      - {{ name: level, kind: input_register, address: 0, publish: {{ topic: ISBTest/pumpcontrol/waterlevel }} }}\n",
            mqtt.port()
        ),
    )
    .unwrap();
    path
}

fn run(config: &Path) -> Proc {
    Proc::spawn(
        Command::new(bin())
            .args(["run", "-c"])
            .arg(config)
            .env("BASIN_PW", BASIN_PASSWORD)
            .env("WRONG_PW", "not-the-password"),
    )
}

fn tls_lines(pki: &Path, extra: &str) -> String {
    format!(
        "  username: ISBBasin\n  password_env: BASIN_PW\n  tls:\n    ca_file: {p}/ca.crt\n    client_cert: {p}/gateway.crt\n    client_key: {p}/gateway.key\n{extra}",
        p = pki.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_has_its_own_state() {
    let dir = tempfile::tempdir().unwrap();
    let good = pki(dir.path(), "good", &[]);
    let other = pki(dir.path(), "other", &[]);
    let expired = pki(dir.path(), "expired", &["--expired-broker"]);
    let (mut broker, mqtt) = secure_broker(dir.path(), &good).await;
    let (_old, old_mqtt) = secure_broker(dir.path(), &expired).await;

    let cases: Vec<(&str, SocketAddr, String)> = vec![
        (
            "certificate_not_trusted",
            mqtt,
            tls_lines(&good, "").replace(
                &format!("{}/ca.crt", good.display()),
                &format!("{}/ca.crt", other.display()),
            ),
        ),
        ("certificate_expired", old_mqtt, tls_lines(&expired, "")),
        (
            "name_mismatch",
            mqtt,
            tls_lines(&good, "    server_name: broker.elsewhere.example\n"),
        ),
        (
            "client_certificate_required",
            mqtt,
            format!(
                "  username: ISBBasin\n  password_env: BASIN_PW\n  tls:\n    ca_file: {}/ca.crt\n",
                good.display()
            ),
        ),
        (
            // MQTT 5: rumqttc reports the same alert through another error path.
            "client_certificate_required",
            mqtt,
            format!(
                "  protocol: 5\n  username: ISBBasin\n  password_env: BASIN_PW\n  tls:\n    ca_file: {}/ca.crt\n",
                good.display()
            ),
        ),
        (
            "not_authorised",
            mqtt,
            tls_lines(&good, "").replace("BASIN_PW", "WRONG_PW"),
        ),
        (
            // A client certificate from a CA the broker does not know.
            "client_certificate_rejected",
            mqtt,
            tls_lines(&good, "").replace(
                &format!("{}/gateway", good.display()),
                &format!("{}/gateway", other.display()),
            ),
        ),
        (
            "unreachable",
            SocketAddr::from(([127, 0, 0, 1], free_port())),
            tls_lines(&good, ""),
        ),
    ];
    for (i, (state, broker_addr, security)) in cases.into_iter().enumerate() {
        let config = mapping(dir.path(), &format!("case{i}"), broker_addr, &security);
        let mut gw = run(&config);
        let line = gw.wait_line("mqtt connection lost").await;
        assert!(
            line.contains(&format!("state=\"{state}\"")),
            "want {state}, got: {line}"
        );
        if state == "not_authorised" {
            // mosquitto answers a wrong password with "not authorised" (5) on MQTT 3.1.1.
            // The gateway keeps trying, with backoff, and stays up.
            let before = broker.count_lines("not authorised");
            broker.wait_count(&["not authorised"], before + 2).await;
            assert!(gw.child.try_wait().unwrap().is_none(), "the gateway exited");
        }
        drop(gw);
    }

    // The good configuration connects (the failures above were the settings, not the rig),
    // also when the certificate's name is given explicitly for an address.
    let config = mapping(
        dir.path(),
        "good",
        mqtt,
        &tls_lines(&good, "    server_name: localhost\n"),
    );
    let mut gw = run(&config);
    gw.wait_line("mqtt connected").await;
    // The connection state is kept for consoles, retained on <status>/connection.
    let sub = console("mosquitto_sub", &good, mqtt)
        .args([
            "-t",
            "ISBTest/pumpcontrol/status/connection",
            "-C",
            "1",
            "-W",
            "10",
        ])
        .output()
        .unwrap();
    let status = json(String::from_utf8_lossy(&sub.stdout).trim());
    assert_eq!(status["state"], "connected", "{status}");
}

#[test]
fn an_inline_password_works_but_check_warns_without_showing_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("inline.yaml");
    std::fs::write(
        &config,
        format!(
            "mqtt:\n  host: 127.0.0.1\n  status_topic: s\n  username: ISBBasin\n  password: {BASIN_PASSWORD}\n\
             devices:\n  - name: d\n    tcp: {{ host: 127.0.0.1 }}\n    points: [{{ name: x, kind: coil, address: 0 }}]\n"
        ),
    )
    .unwrap();
    let out = Command::new(bin())
        .args(["check", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("WARNING: the broker password is written in the mapping"),
        "{text}"
    );
    assert!(!text.contains(BASIN_PASSWORD));
    assert!(!String::from_utf8_lossy(&out.stderr).contains(BASIN_PASSWORD));
    // The default client id is stable per box and instance: host name, machine id and a
    // hash of the mapping's path and status topic.
    let machine = std::fs::read_to_string("/etc/machine-id").unwrap_or_default();
    if let Some(m) = machine.trim().get(..8) {
        assert!(text.contains(&format!("-{m}-")), "{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_inspect_shows_the_certificate_and_pin_accepts_it_explicitly() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path(), "selfsigned", &[]);
    let (_broker, mqtt) = mosquitto_with(
        dir.path(),
        &format!(
            "cafile {p}/ca.crt\ncertfile {p}/broker.crt\nkeyfile {p}/broker.key\nallow_anonymous true\n",
            p = pki.display()
        ),
    )
    .await;
    let pins = dir.path().join("broker.pins");
    let config = mapping(
        dir.path(),
        "pinned",
        mqtt,
        &format!("  tls:\n    pin_file: {}\n", pins.display()),
    );

    // Before: no pin; inspect shows the certificate and that it is not trusted.
    let inspect = |pin: bool| {
        let mut c = Command::new(bin());
        c.args(["tls", "inspect", "-c"]).arg(&config);
        if pin {
            c.arg("--pin");
        }
        let out = c.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let shown = inspect(false);
    for needle in [
        "subject:  CN=broker",
        "issuer:   CN=fieldgate development CA",
        "names:    DNS:localhost, IP:127.0.0.1",
        "sha256:   ",
        "refused, certificate_not_trusted",
    ] {
        assert!(shown.contains(needle), "missing `{needle}` in:\n{shown}");
    }
    // Without a mapping, judged against the system CA store, which does not know our CA.
    let bare = Command::new(bin())
        .args(["tls", "inspect", "--host", "127.0.0.1", "--port"])
        .arg(mqtt.port().to_string())
        .output()
        .unwrap();
    let bare = String::from_utf8_lossy(&bare.stdout);
    assert!(bare.contains("subject:  CN=broker"), "{bare}");
    assert!(bare.contains("refused, certificate_not_trusted"), "{bare}");
    let mut gw = run(&config);
    let refused = gw.wait_line("mqtt connection lost").await;
    assert!(
        refused.contains("certificate_not_trusted") && refused.contains("matches no pin"),
        "{refused}"
    );
    drop(gw);

    // The explicit accept: --pin writes it; then the gateway connects.
    assert!(inspect(true).contains("pinned "));
    assert!(inspect(false).contains("trust (1 pin(s)): accepted"));
    let mut gw = run(&config);
    gw.wait_line("mqtt connected").await;
    drop(gw);

    // A wrong pin (inline) is refused.
    let wrong = mapping(
        dir.path(),
        "wrong",
        mqtt,
        &format!("  tls:\n    pin_sha256: [\"{}\"]\n", "00".repeat(32)),
    );
    let mut gw = run(&wrong);
    let line = gw.wait_line("mqtt connection lost").await;
    assert!(line.contains("certificate_not_trusted"), "{line}");
}

#[test]
fn keys_in_all_three_encodings_load() {
    let dir = tempfile::tempdir().unwrap();
    for format in ["pkcs8", "sec1", "pkcs1-rsa"] {
        let p = pki(dir.path(), format, &["--key-format", format]);
        let config = dir.path().join(format!("{format}.yaml"));
        std::fs::write(
            &config,
            format!(
                "mqtt:\n  host: 127.0.0.1\n  status_topic: s\n  tls:\n    ca_file: {p}/ca.crt\n    client_cert: {p}/gateway.crt\n    client_key: {p}/gateway.key\n\
                 devices:\n  - name: d\n    tcp: {{ host: 127.0.0.1 }}\n    points: [{{ name: x, kind: coil, address: 0 }}]\n",
                p = p.display()
            ),
        )
        .unwrap();
        let out = Command::new(bin())
            .args(["check", "-c"])
            .arg(&config)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{format}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // A certificate with the wrong key is an error at load, with its place.
    let a = pki(dir.path(), "a", &[]);
    let b = pki(dir.path(), "b", &[]);
    let config = dir.path().join("mismatch.yaml");
    std::fs::write(
        &config,
        format!(
            "mqtt:\n  host: 127.0.0.1\n  status_topic: s\n  tls:\n    client_cert: {}/gateway.crt\n    client_key: {}/gateway.key\n\
             devices:\n  - name: d\n    tcp: {{ host: 127.0.0.1 }}\n    points: [{{ name: x, kind: coil, address: 0 }}]\n",
            a.display(),
            b.display()
        ),
    )
    .unwrap();
    let out = Command::new(bin())
        .args(["check", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        err.contains("mqtt.tls") && err.contains("do not fit together"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_mqtt_5_a_publication_the_acl_denies_is_reported_not_lost_silently() {
    let dir = tempfile::tempdir().unwrap();
    let good = pki(dir.path(), "good", &[]);
    let (_broker, mqtt) = secure_broker(dir.path(), &good).await;
    let (_sim, modbus) = simulator("127.0.0.1:0", &["--speed", "0", "--level", "142"]).await;
    let config = dir.path().join("v5.yaml");
    std::fs::write(
        &config,
        format!(
            "mqtt:\n  host: 127.0.0.1\n  port: {}\n  protocol: 5\n  status_topic: ISBTest/pumpcontrol/status\n{}\n\
             metrics: {{ listen: \"127.0.0.1:0\" }}\n\
             devices:\n  - name: tower\n    tcp: {{ host: 127.0.0.1, port: {} }}\n    poll_interval: 200ms\n    points:\n\
             \x20     - {{ name: level, kind: input_register, address: 0, publish: {{ topic: ISBTest/pumpcontrol/waterlevel, mode: interval }} }}\n\
             \x20     - {{ name: temp, kind: input_register, address: 1, publish: {{ topic: ISBTest/pumpcontrol/not_in_the_acl, mode: on_change }} }}\n",
            mqtt.port(),
            tls_lines(&good, ""),
            modbus.port()
        ),
    )
    .unwrap();
    let mut gw = run(&config);
    let line = gw.wait_line("broker refused a publication").await;
    assert!(
        line.contains("ISBTest/pumpcontrol/not_in_the_acl"),
        "{line}"
    );
    assert!(line.contains("NotAuthorized"), "{line}");
    // The permitted topic is delivered: the console reads the level.
    let sub = console("mosquitto_sub", &good, mqtt)
        .args([
            "-t",
            "ISBTest/pumpcontrol/waterlevel",
            "-C",
            "1",
            "-W",
            "10",
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&sub.stdout).trim(), "142");
    let addr: SocketAddr = gw
        .output()
        .lines()
        .find_map(|l| l.split("addr=").nth(1))
        .and_then(|s| s.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap();
    assert!(metric(addr, "fieldgate_publications_refused_total", "").await >= 1.0);
    assert_eq!(
        metric(
            addr,
            "fieldgate_mqtt_connection_state",
            "state=\"connected\""
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(
            addr,
            "fieldgate_mqtt_connection_state",
            "state=\"not_authorised\""
        )
        .await,
        0.0
    );
    // Refused, reported and dropped: not retried for ever.
    gw.signal("TERM");
    assert_eq!(gw.wait_exit().await, Some(0));
    assert_eq!(
        gw.count_lines("broker refused a publication"),
        1,
        "{}",
        gw.output()
    );
}
