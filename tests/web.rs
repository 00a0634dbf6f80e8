//! The web console on the real binary: authentication (401, rate limit 429), writes refused
//! when disabled (403) or without the CSRF token, a write through the executor read back and
//! acked (mbpoll reads the device as the judge), SSE delivering a changed value within one
//! poll, `/api/points` equal to what MQTT received in the same cycle, and a real browser
//! (headless Chromium through selenium) on `fieldgate demo`.
//!
//! Fails when mbpoll, chromium, chromedriver or the venv's selenium is missing;
//! `scripts/test.sh` installs them.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use common::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// One HTTP response.
#[derive(Debug)]
struct Resp {
    status: u16,
    head: String,
    body: String,
}

impl Resp {
    fn json(&self) -> serde_json::Value {
        json(&self.body)
    }
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    }
}

/// An HTTP/1.0 request (so the body ends with the connection, never chunked).
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Resp {
    let mut req = format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(body.unwrap_or(""));
    raw_request(addr, &req).await
}

/// Send `req` as it is (head and body) and read the response to the end.
async fn raw_request(addr: SocketAddr, req: &str) -> Resp {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = String::new();
    tokio::time::timeout(DEADLINE, s.read_to_string(&mut raw))
        .await
        .expect("no response in time")
        .unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {raw}"));
    Resp {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    }
}

/// A logged-in browser-like session: the cookie and the CSRF token.
struct Login {
    cookie: String,
    csrf: String,
}

async fn login(web: SocketAddr, user: &str, password: &str) -> Resp {
    let body = serde_json::json!({"user": user, "password": password}).to_string();
    http(web, "POST", "/api/login", &[], Some(&body)).await
}

async fn logged_in(web: SocketAddr, user: &str, password: &str) -> Login {
    let r = login(web, user, password).await;
    assert_eq!(r.status, 200, "{r:?}");
    let cookie = r
        .header("set-cookie")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    Login {
        cookie,
        csrf: r.json()["csrf"].as_str().unwrap().to_owned(),
    }
}

fn tool(name: &str) -> PathBuf {
    ["/usr/bin", "/usr/local/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("{name} is not installed: bash scripts/test.sh installs it"))
}

/// mbpoll's reading of one value of table `table` (0 coils, 4 holding registers) at protocol
/// address `address` of unit 1 at `modbus`.
fn mbpoll_read(modbus: SocketAddr, table: &str, address: u16) -> i64 {
    let out = Command::new(tool("mbpoll"))
        .args(["-m", "tcp", "-a", "1", "-t", table, "-r"])
        .arg((address + 1).to_string())
        .args(["-c", "1", "-1", "-p", &modbus.port().to_string()])
        .arg(modbus.ip().to_string())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find(|l| l.starts_with('['))
        .and_then(|l| l.split(':').nth(1)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("mbpoll output:\n{text}"))
}

/// mbpoll writes `value` to holding register `address` of unit 1 at `modbus`.
fn mbpoll_write_register(modbus: SocketAddr, address: u16, value: u16) {
    let out = Command::new(tool("mbpoll"))
        .args(["-m", "tcp", "-a", "1", "-t", "4", "-r"])
        .arg((address + 1).to_string())
        .args(["-p", &modbus.port().to_string()])
        .arg(modbus.ip().to_string())
        .arg(value.to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mbpoll write: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A users-file line made by the binary itself (`fieldgate web passwd`).
fn passwd_line(name: &str, role: &str, password: &str) -> String {
    use std::io::Write;
    let mut child = Command::new(bin())
        .args(["web", "passwd", name, "--role", role])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// A bearer token and its users-file line (`fieldgate web token`).
fn token_line(name: &str, role: &str) -> (String, String) {
    let out = Command::new(bin())
        .args(["web", "token", name, "--role", role])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let token = String::from_utf8_lossy(&out.stderr)
        .lines()
        .last()
        .unwrap()
        .trim()
        .to_owned();
    (token, String::from_utf8(out.stdout).unwrap())
}

const OPERATOR_PASSWORD: &str = "pump-house-7";
const VIEWER_PASSWORD: &str = "just-looking";
const PREFIX: &str = "webtest";
const POLL: Duration = Duration::from_millis(500);

/// The simulator, the broker and the gateway with a `web` section; an observer on the prefix.
struct Setup {
    web: SocketAddr,
    modbus: SocketAddr,
    /// A bearer token with role `view`.
    token: String,
    observer: Observer,
    gateway: Proc,
    _sim: Proc,
    _broker: Proc,
    _dir: tempfile::TempDir,
}

impl Setup {
    async fn start(allow_writes: bool) -> Setup {
        Self::start_with(allow_writes, |_| String::new()).await
    }

    /// With more lines for the `web` section, made from the test's directory.
    async fn start_with(allow_writes: bool, web_extra: impl FnOnce(&Path) -> String) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let extra = web_extra(dir.path());
        let (token, token_entry) = token_line("script", "view");
        let users = format!(
            "# test users\n{}{}{token_entry}",
            passwd_line("alice", "operate", OPERATOR_PASSWORD),
            passwd_line("bob", "view", VIEWER_PASSWORD)
        );
        std::fs::write(dir.path().join("users"), users).unwrap();
        let json = |topic: &str| {
            format!("{{ topic: {PREFIX}/{topic}, format: json, mode: interval, interval: 500ms }}")
        };
        let yaml = format!(
            "mqtt: {{ host: \"${{MQTT_HOST}}\", port: \"${{MQTT_PORT}}\", client_id: webtest, status_topic: {PREFIX}/status }}\n\
             web:\n  listen: 127.0.0.1:0\n  users_file: {users}\n  allow_writes: {allow_writes}\n{extra}\
             devices:\n  - name: tower\n    tcp: {{ host: \"${{MODBUS_HOST}}\", port: \"${{MODBUS_PORT}}\" }}\n    poll_interval: 500ms\n    points:\n\
             \x20     - {{ name: level, kind: input_register, address: 0, unit: cm, publish: {level} }}\n\
             \x20     - {{ name: consumption, kind: input_register, address: 3, type: f32, decimals: 1, unit: l/min, publish: {consumption} }}\n\
             \x20     - {{ name: p1_running, kind: discrete_input, address: 0, publish: {running} }}\n\
             \x20     - {{ name: p1_command, kind: coil, address: 0, writable: true }}\n\
             \x20     - {{ name: p1_start_level, kind: holding_register, address: 0, unit: cm, writable: true, min: 0, max: 400, publish: {start} }}\n\
             commands:\n  - topic: {PREFIX}/pump\n    ack_topic: {PREFIX}/pump/ack\n    payloads:\n\
             \x20     startp1: [{{ point: tower.p1_command, value: 1 }}]\n\
             \x20     stopp1: [{{ point: tower.p1_command, value: 0 }}]\n",
            users = dir.path().join("users").display(),
            level = json("level"),
            consumption = json("consumption"),
            running = json("p1_running"),
            start = json("p1_start_level"),
        );
        let config = dir.path().join("mapping.yaml");
        std::fs::write(&config, yaml).unwrap();
        let (sim, modbus) = simulator("127.0.0.1:0", &[]).await;
        let (broker, mqtt) = broker("127.0.0.1:0").await;
        let mut observer = Observer::start(mqtt, &format!("{PREFIX}/#")).await;
        observer.wait_subscribed(1).await;
        let mut gateway = gateway(&config, modbus, mqtt, PREFIX).await;
        let line = gateway.wait_line("web console listening").await;
        let web: SocketAddr = line
            .split("://")
            .nth(1)
            .and_then(|s| s.split('/').next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line}"));
        Setup {
            web,
            modbus,
            token,
            observer,
            gateway,
            _sim: sim,
            _broker: broker,
            _dir: dir,
        }
    }

    fn bearer(&self) -> String {
        format!("Bearer {}", self.token)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn no_or_wrong_credentials_get_401_and_repeated_failures_are_rate_limited() {
    let s = Setup::start(false).await;
    // The page itself holds no data and loads; every API answer needs a caller.
    let page = http(s.web, "GET", "/", &[], None).await;
    assert_eq!(page.status, 200);
    assert!(
        page.header("content-security-policy")
            .is_some_and(|c| c.contains("frame-ancestors 'none'")),
        "{}",
        page.head
    );
    for path in ["/api/status", "/api/points", "/api/events", "/api/trends"] {
        let r = http(s.web, "GET", path, &[], None).await;
        assert_eq!(r.status, 401, "{path}: {r:?}");
        assert!(r.header("content-security-policy").is_some());
    }
    // A cookie that is no session is nobody.
    let r = http(
        s.web,
        "GET",
        "/api/status",
        &[("Cookie", "fieldgate_session=0123")],
        None,
    )
    .await;
    assert_eq!(r.status, 401);

    // The right password gives a session; the bearer token works without one.
    let alice = logged_in(s.web, "alice", OPERATOR_PASSWORD).await;
    let r = http(
        s.web,
        "GET",
        "/api/status",
        &[("Cookie", &alice.cookie)],
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["version"], env!("CARGO_PKG_VERSION"));
    let r = http(
        s.web,
        "GET",
        "/api/session",
        &[("Authorization", &s.bearer())],
        None,
    )
    .await;
    assert_eq!(r.json()["user"], "script");
    assert_eq!(r.json()["role"], "view");

    // Wrong password, unknown user, wrong token: 401, five times in all ...
    for (user, pw) in [
        ("alice", "wrong"),
        ("alice", ""),
        ("mallory", OPERATOR_PASSWORD),
    ] {
        assert_eq!(login(s.web, user, pw).await.status, 401, "{user}");
    }
    let r = http(
        s.web,
        "GET",
        "/api/status",
        &[("Authorization", "Bearer not-a-token")],
        None,
    )
    .await;
    assert_eq!(r.status, 401);
    assert_eq!(login(s.web, "bob", "wrong").await.status, 401);
    // ... then this address is refused for a while, even with the right password or token.
    let r = login(s.web, "alice", OPERATOR_PASSWORD).await;
    assert_eq!(r.status, 429, "{r:?}");
    assert!(r.header("retry-after").is_some(), "{}", r.head);
    let r = http(
        s.web,
        "GET",
        "/api/status",
        &[("Authorization", &s.bearer())],
        None,
    )
    .await;
    assert_eq!(r.status, 429);
    // No password reaches the log.
    let log = s.gateway.output();
    assert!(log.contains("web login failed"), "{log}");
    assert!(
        !log.contains(OPERATOR_PASSWORD) && !log.contains(&s.token),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn with_writes_disabled_the_write_endpoints_answer_403_and_nothing_is_written() {
    let s = Setup::start(false).await;
    let alice = logged_in(s.web, "alice", OPERATOR_PASSWORD).await;
    let auth = [
        ("Cookie", alice.cookie.as_str()),
        ("X-CSRF-Token", alice.csrf.as_str()),
    ];
    let session = http(s.web, "GET", "/api/session", &auth, None).await.json();
    assert_eq!(session["can_write"], false);
    let commands = http(s.web, "GET", "/api/commands", &auth, None)
        .await
        .json();
    assert_eq!(commands["tables"], serde_json::json!([]), "no controls");
    let r = http(
        s.web,
        "POST",
        "/api/command",
        &auth,
        Some(r#"{"topic": "webtest/pump", "payload": "startp1"}"#),
    )
    .await;
    assert_eq!(r.status, 403, "{r:?}");
    assert!(r.body.contains("allow_writes"), "{}", r.body);
    let r = http(
        s.web,
        "POST",
        "/api/write",
        &auth,
        Some(r#"{"point": "tower.p1_start_level", "value": 55}"#),
    )
    .await;
    assert_eq!(r.status, 403);
    assert_eq!(mbpoll_read(s.modbus, "0", 0), 0, "coil 0 was written");
    assert_ne!(mbpoll_read(s.modbus, "4", 0), 55, "register 0 was written");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_write_with_a_valid_csrf_token_goes_through_the_executor_is_read_back_and_acked() {
    let mut s = Setup::start(true).await;
    let alice = logged_in(s.web, "alice", OPERATOR_PASSWORD).await;
    let start = r#"{"topic": "webtest/pump", "payload": "startp1"}"#;
    // Without the token, with a wrong one, or from another origin: refused, nothing written.
    for headers in [
        vec![("Cookie", alice.cookie.as_str())],
        vec![("Cookie", alice.cookie.as_str()), ("X-CSRF-Token", "00")],
        vec![
            ("Cookie", alice.cookie.as_str()),
            ("X-CSRF-Token", alice.csrf.as_str()),
            ("Origin", "http://evil.example"),
        ],
    ] {
        let r = http(s.web, "POST", "/api/command", &headers, Some(start)).await;
        assert_eq!(r.status, 403, "{headers:?}: {r:?}");
    }
    // A viewer may not write, with or without the token.
    let bob = logged_in(s.web, "bob", VIEWER_PASSWORD).await;
    let r = http(
        s.web,
        "POST",
        "/api/command",
        &[("Cookie", &bob.cookie), ("X-CSRF-Token", &bob.csrf)],
        Some(start),
    )
    .await;
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(
        mbpoll_read(s.modbus, "0", 0),
        0,
        "a refused write reached the device"
    );

    let since = s.observer.len();
    let auth = [
        ("Cookie", alice.cookie.as_str()),
        ("X-CSRF-Token", alice.csrf.as_str()),
        ("Origin", &format!("http://{}", s.web)),
    ];
    let r = http(s.web, "POST", "/api/command", &auth, Some(start)).await;
    assert_eq!(r.status, 200, "{r:?}");
    let ack = r.json();
    assert_eq!(ack["result"], "ok", "{ack}");
    assert_eq!(ack["readback"]["tower.p1_command"], "true", "{ack}");
    // The judge: the device's coil 0 is on.
    assert_eq!(mbpoll_read(s.modbus, "0", 0), 1);
    // The same ack went to the command's MQTT ack topic, as for an MQTT command.
    let m = s
        .observer
        .wait_topic(since, "webtest/pump/ack", |p| p.contains("startp1"))
        .await;
    assert_eq!(json(&m.payload)["result"], "ok");
    // Logged with its origin, and listed in the recent acks.
    s.gateway.wait_line("origin=web:alice").await;
    let acks = http(s.web, "GET", "/api/acks", &auth, None).await.json();
    assert!(
        acks.as_array()
            .unwrap()
            .iter()
            .any(|a| a["origin"] == "web:alice" && a["ack"]["command"] == "startp1"),
        "{acks}"
    );

    // A writable point: out of range refused and not written; in range written and read back.
    let r = http(
        s.web,
        "POST",
        "/api/write",
        &auth,
        Some(r#"{"point": "tower.p1_start_level", "value": 401}"#),
    )
    .await
    .json();
    assert_eq!(r["result"], "rejected", "{r}");
    assert_ne!(mbpoll_read(s.modbus, "4", 0), 401);
    let r = http(
        s.web,
        "POST",
        "/api/write",
        &auth,
        Some(r#"{"point": "tower.p1_start_level", "value": 55}"#),
    )
    .await
    .json();
    assert_eq!(r["result"], "ok", "{r}");
    assert_eq!(r["readback"]["tower.p1_start_level"], "55");
    assert_eq!(mbpoll_read(s.modbus, "4", 0), 55);
    // A point that is not writable is refused.
    let r = http(
        s.web,
        "POST",
        "/api/write",
        &auth,
        Some(r#"{"point": "tower.level", "value": 1}"#),
    )
    .await
    .json();
    assert_eq!(r["result"], "rejected", "{r}");
}

/// The next SSE event (`event`, parsed `data`) from `lines`.
async fn next_event(
    lines: &mut tokio::io::Lines<BufReader<tokio::net::TcpStream>>,
) -> (String, serde_json::Value) {
    let mut event = String::new();
    loop {
        let line = tokio::time::timeout(DEADLINE, lines.next_line())
            .await
            .expect("no SSE event in time")
            .unwrap()
            .expect("the event stream ended");
        if let Some(e) = line.strip_prefix("event: ") {
            event = e.to_owned();
        } else if let Some(d) = line.strip_prefix("data: ") {
            return (event, json(d));
        }
    }
}

/// Wait (with a deadline over all events) for a `points` event holding a point for which
/// `pred` holds; returns that point.
async fn wait_point(
    lines: &mut tokio::io::Lines<BufReader<tokio::net::TcpStream>>,
    what: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let found = async {
        loop {
            let (ev, data) = next_event(lines).await;
            if ev != "points" {
                continue;
            }
            if let Some(p) = data["points"].as_array().unwrap().iter().find(|p| pred(p)) {
                return p.clone();
            }
        }
    };
    tokio::time::timeout(DEADLINE, found)
        .await
        .unwrap_or_else(|_| panic!("no point event: {what} within {DEADLINE:?}"))
}

/// Wait (with a deadline over all events) for an event of kind `kind`.
async fn wait_kind(lines: &mut tokio::io::Lines<BufReader<tokio::net::TcpStream>>, kind: &str) {
    let found = async { while next_event(lines).await.0 != kind {} };
    tokio::time::timeout(DEADLINE, found)
        .await
        .unwrap_or_else(|_| panic!("no `{kind}` event within {DEADLINE:?}"));
}

fn parse_ts(s: &str) -> SystemTime {
    humantime::parse_rfc3339(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_event_stream_delivers_a_changed_value_within_one_poll() {
    let s = Setup::start(false).await;
    let mut stream = tokio::net::TcpStream::connect(s.web).await.unwrap();
    stream
        .write_all(
            format!(
                "GET /api/events HTTP/1.0\r\nHost: {}\r\nAuthorization: {}\r\n\r\n",
                s.web,
                s.bearer()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut lines = BufReader::new(stream).lines();
    // The first event holds every value; wait until the register has been read.
    wait_point(&mut lines, "p1_start_level read", |p| {
        p["id"] == "tower.p1_start_level" && p["quality"] == "good"
    })
    .await;
    // The independent master changes the register behind the gateway's back.
    let written_at = SystemTime::now();
    mbpoll_write_register(s.modbus, 0, 123);
    let seen = wait_point(&mut lines, "p1_start_level 123", |p| {
        p["id"] == "tower.p1_start_level" && p["value"] == 123
    })
    .await;
    // Read by the first poll after the write: within one poll interval (plus the read itself,
    // at most the device timeout). Times are the gateway's read stamps, not a stopwatch.
    let read_at = parse_ts(seen["read_at"].as_str().unwrap());
    let after = read_at.duration_since(written_at).unwrap_or_default();
    assert!(
        after <= POLL + Duration::from_secs(1),
        "read {after:?} after the write: {seen}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn api_points_equal_what_mqtt_received_in_the_same_cycle() {
    let mut s = Setup::start(false).await;
    let topics = [
        ("tower.level", "webtest/level"),
        ("tower.consumption", "webtest/consumption"),
        ("tower.p1_running", "webtest/p1_running"),
        ("tower.p1_start_level", "webtest/p1_start_level"),
    ];
    // Let every point be published once.
    for (_, t) in topics {
        s.observer.wait_topic(0, t, |_| true).await;
    }
    let r = http(
        s.web,
        "GET",
        "/api/points",
        &[("Authorization", &s.bearer())],
        None,
    )
    .await;
    assert_eq!(r.status, 200);
    let points = r.json()["points"].as_array().unwrap().clone();
    for (id, topic) in topics {
        let p = points.iter().find(|p| p["id"] == id).unwrap();
        assert_eq!(p["quality"], "good", "{p}");
        let ts = p["read_at"].as_str().unwrap().to_owned();
        // The MQTT message of the same poll (its `ts` is the read time) carries the same value.
        let m = s
            .observer
            .wait_topic(0, topic, |payload| json(payload)["ts"] == ts.as_str())
            .await;
        assert_eq!(
            json(&m.payload)["value"],
            p["value"],
            "{id}: {p} vs {}",
            m.payload
        );
    }
}

/// The demo's addresses from its first lines: Modbus and the console URL.
async fn demo() -> (Proc, SocketAddr, String) {
    let mut p = Proc::spawn(Command::new(bin()).args(["demo", "--speed", "1"]));
    let line = p.wait_line("water tower on modbus tcp").await;
    let modbus: SocketAddr = line
        .split("modbus tcp ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line}"));
    let url = p
        .wait_line("console: http://")
        .await
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_owned();
    (p, modbus, url)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_real_browser_sees_the_level_change_starts_pump_1_and_mbpoll_confirms_coil_0() {
    let python = repo("target/peers-venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: bash scripts/test.sh makes it",
        python.display()
    );
    tool("chromium");
    tool("chromedriver");
    let (mut demo, modbus, url) = demo().await;
    demo.wait_line("modbus link connected").await;
    assert_eq!(
        mbpoll_read(modbus, "0", 0),
        0,
        "pump 1 runs before the click"
    );
    let shots = repo("target/test-artefacts");
    std::fs::create_dir_all(&shots).unwrap();
    let shot = shots.join("web-console.png");
    let _ = std::fs::remove_file(&shot);
    let out = tokio::task::spawn_blocking(move || {
        Command::new(repo("target/peers-venv/bin/python"))
            .arg(repo("tests/browser/console.py"))
            .arg(&url)
            .arg(repo("target/test-artefacts/web-console.png"))
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "the browser test failed:\n{said}\ndemo:\n{}",
        demo.output()
    );
    assert!(
        said.contains("level changed") && said.contains("pump 1 running"),
        "{said}"
    );
    // The judge: the device's coil 0 (pump 1's run command) is on.
    assert_eq!(mbpoll_read(modbus, "0", 0), 1);
    demo.wait_line("origin=web:local").await;
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "screenshot {}",
        shot.display()
    );
}

/// An HTTP/1.0 request over TLS, trusting only `ca`; the response as text.
async fn https(addr: SocketAddr, ca: &Path, request: &str) -> String {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut raw = String::new();
    let _ = tokio::time::timeout(DEADLINE, tls.read_to_string(&mut raw)).await;
    raw
}

#[tokio::test(flavor = "multi_thread")]
async fn with_tls_the_console_speaks_https_only_and_its_cookie_is_secure() {
    let pki = std::sync::Arc::new(std::sync::Mutex::new(PathBuf::new()));
    let keep = std::sync::Arc::clone(&pki);
    let s = Setup::start_with(false, move |dir| {
        let out = dir.join("pki");
        let made = Command::new("bash")
            .arg(repo("certs/gen.sh"))
            .arg(&out)
            .output()
            .unwrap();
        assert!(
            made.status.success(),
            "{}",
            String::from_utf8_lossy(&made.stderr)
        );
        *keep.lock().unwrap() = out.clone();
        format!(
            "  tls: {{ cert_file: {0}/broker.crt, key_file: {0}/broker.key }}\n",
            out.display()
        )
    })
    .await;
    assert!(
        s.gateway
            .output()
            .contains(&format!("url=https://{}/", s.web)),
        "{}",
        s.gateway.output()
    );
    let ca = pki.lock().unwrap().join("ca.crt");
    let host = s.web;
    let r = https(
        s.web,
        &ca,
        &format!("GET /api/status HTTP/1.0\r\nHost: {host}\r\n\r\n"),
    )
    .await;
    assert!(
        r.starts_with("HTTP/1.0 401") || r.starts_with("HTTP/1.1 401"),
        "{r}"
    );
    assert!(
        r.to_ascii_lowercase().contains("strict-transport-security"),
        "{r}"
    );
    let body = serde_json::json!({"user": "alice", "password": OPERATOR_PASSWORD}).to_string();
    let r = https(
        s.web,
        &ca,
        &format!(
            "POST /api/login HTTP/1.0\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    )
    .await;
    let cookie = r
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .unwrap_or_else(|| panic!("{r}"));
    assert!(
        cookie.contains("; Secure") && cookie.contains("HttpOnly"),
        "{cookie}"
    );
    // Plain HTTP on the TLS port gets no HTTP answer.
    let mut plain = tokio::net::TcpStream::connect(s.web).await.unwrap();
    plain
        .write_all(format!("GET / HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, plain.read_to_end(&mut raw)).await;
    assert!(
        !String::from_utf8_lossy(&raw).starts_with("HTTP/"),
        "plain HTTP was answered"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_real_browser_must_log_in_and_a_read_only_console_shows_no_controls() {
    let python = repo("target/peers-venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: bash scripts/test.sh makes it",
        python.display()
    );
    tool("chromium");
    tool("chromedriver");
    let s = Setup::start(false).await;
    let url = format!("http://{}/", s.web);
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(repo("tests/browser/login.py"))
            .args([&url, "alice", OPERATOR_PASSWORD])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "the browser test failed:\n{said}");
    assert!(
        said.contains("refused:") && said.contains("read-only console"),
        "{said}"
    );
    let log = s.gateway.output();
    assert!(
        log.contains("web login failed") && log.contains("web login user=alice"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_reaches_the_open_pages_and_a_changed_web_section_is_refused() {
    let mut s = Setup::start(false).await;
    let mut stream = tokio::net::TcpStream::connect(s.web).await.unwrap();
    stream
        .write_all(
            format!(
                "GET /api/events HTTP/1.0\r\nHost: {}\r\nAuthorization: {}\r\n\r\n",
                s.web,
                s.bearer()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut lines = BufReader::new(stream).lines();
    assert_eq!(next_event(&mut lines).await.0, "points");
    // A new point: the reload is applied, the stream says so, and the point is there.
    let path = s._dir.path().join("mapping.yaml");
    let yaml = std::fs::read_to_string(&path).unwrap();
    let point = "      - { name: p1_stop_level, kind: holding_register, address: 2, unit: cm }\n";
    let with_point = yaml.replace("commands:\n", &format!("{point}commands:\n"));
    assert_ne!(with_point, yaml);
    std::fs::write(&path, &with_point).unwrap();
    s.gateway.signal("HUP");
    s.gateway.wait_line("reload applied").await;
    wait_kind(&mut lines, "reload").await;
    wait_point(&mut lines, "the new point", |p| {
        p["id"] == "tower.p1_stop_level" && p["value"] == 370
    })
    .await;
    // Switching writes on needs a restart: the reload is refused and writes stay off.
    std::fs::write(
        &path,
        with_point.replace("allow_writes: false", "allow_writes: true"),
    )
    .unwrap();
    s.gateway.signal("HUP");
    let line = s.gateway.wait_line("reload rejected").await;
    assert!(
        line.contains("web section changed") && line.contains("whole reload is refused"),
        "{line}"
    );
    let alice = logged_in(s.web, "alice", OPERATOR_PASSWORD).await;
    let r = http(
        s.web,
        "POST",
        "/api/command",
        &[("Cookie", &alice.cookie), ("X-CSRF-Token", &alice.csrf)],
        Some(r#"{"topic": "webtest/pump", "payload": "startp1"}"#),
    )
    .await;
    assert_eq!(r.status, 403, "{r:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_login_from_another_site_or_not_declared_json_is_refused() {
    let s = Setup::start(false).await;
    let body = serde_json::json!({"user": "bob", "password": VIEWER_PASSWORD}).to_string();
    let post = |content_type: &str, origin: Option<String>| {
        let origin = origin.map_or(String::new(), |o| format!("Origin: {o}\r\n"));
        format!(
            "POST /api/login HTTP/1.0\r\nHost: {}\r\nContent-Type: {content_type}\r\n{origin}Content-Length: {}\r\n\r\n{body}",
            s.web,
            body.len()
        )
    };
    // A cross-site HTML form or no-cors fetch can send text/plain: refused, no cookie.
    let r = raw_request(s.web, &post("text/plain", None)).await;
    assert_eq!(r.status, 415, "{r:?}");
    assert!(r.header("set-cookie").is_none(), "{}", r.head);
    for origin in [
        "http://evil.example".to_owned(),
        "null".to_owned(),
        format!("https://{}", s.web),
    ] {
        let r = raw_request(s.web, &post("application/json", Some(origin.clone()))).await;
        assert_eq!(r.status, 403, "{origin}: {r:?}");
        assert!(r.header("set-cookie").is_none(), "{}", r.head);
    }
    // None of these counted as failures; the console's own origin logs in.
    let r = raw_request(
        s.web,
        &post(
            "application/json; charset=utf-8",
            Some(format!("http://{}", s.web)),
        ),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.header("set-cookie").is_some(), "{}", r.head);
}

/// A TCP connection to `to` from the loopback address `from` (127.0.0.x).
async fn connect_from(from: [u8; 4], to: SocketAddr) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::from((from, 0)))
        .expect("bind a 127.0.0.x source address");
    socket.connect(to).await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_body_is_cut_off_and_one_address_cannot_take_every_connection() {
    let s = Setup::start(false).await;
    // 16 connections from 127.0.0.1, each sending a request head and part of its body, then
    // nothing more.
    let head = |len: usize| {
        format!(
            "POST /api/login HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n\r\n{{\"user\"",
            s.web
        )
    };
    let mut held = Vec::new();
    for _ in 0..16 {
        let mut c = connect_from([127, 0, 0, 1], s.web).await;
        c.write_all(head(100).as_bytes()).await.unwrap();
        held.push(c);
    }
    // The 17th from the same address is closed without an answer ...
    let mut c = connect_from([127, 0, 0, 1], s.web).await;
    let _ = c.write_all(b"GET / HTTP/1.0\r\n\r\n").await;
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, c.read_to_end(&mut raw))
        .await
        .expect("the 17th connection was neither answered nor closed");
    assert!(
        !raw.starts_with(b"HTTP"),
        "{}",
        String::from_utf8_lossy(&raw)
    );
    // ... while another address is served.
    let mut c = connect_from([127, 0, 0, 2], s.web).await;
    c.write_all(format!("GET / HTTP/1.0\r\nHost: {}\r\n\r\n", s.web).as_bytes())
        .await
        .unwrap();
    let mut raw = String::new();
    tokio::time::timeout(DEADLINE, c.read_to_string(&mut raw))
        .await
        .expect("no answer for another address")
        .unwrap();
    assert!(raw.starts_with("HTTP/1.0 200"), "{raw}");
    // The held connections with their incomplete bodies get 408 (the body timeout) instead of
    // holding their connection forever.
    for mut c in held {
        let mut raw = String::new();
        tokio::time::timeout(DEADLINE, c.read_to_string(&mut raw))
            .await
            .expect("a slow body held its connection past the deadline")
            .unwrap();
        assert!(raw.starts_with("HTTP/1.1 408"), "{raw}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn trends_are_bounded_and_hammering_them_does_not_stop_values_from_flowing() {
    let mut s = Setup::start(false).await;
    let bearer = s.bearer();
    let status = http(
        s.web,
        "GET",
        "/api/status",
        &[("Authorization", &bearer)],
        None,
    )
    .await;
    assert_eq!(status.json()["trend_samples"], 600, "{status:?}");
    // Some samples first.
    let level = format!("{PREFIX}/level");
    for _ in 0..3 {
        let since = s.observer.len();
        s.observer
            .wait(since, "a level publication", |m| m.topic == level)
            .await;
    }
    let r = http(
        s.web,
        "GET",
        "/api/trends?max=1",
        &[("Authorization", &bearer)],
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let t = r.json();
    assert_eq!(t["tower.level"][0].as_array().unwrap().len(), 1, "{t}");
    // Eight clients ask for the trends without pause; the level keeps being published.
    let stop = tokio_util::sync::CancellationToken::new();
    let mut hammers = Vec::new();
    for _ in 0..8 {
        let (web, bearer, stop) = (s.web, bearer.clone(), stop.clone());
        hammers.push(tokio::spawn(async move {
            let mut answered = 0usize;
            while !stop.is_cancelled() {
                let r = http(
                    web,
                    "GET",
                    "/api/trends",
                    &[("Authorization", &bearer)],
                    None,
                )
                .await;
                assert!(r.status == 200 || r.status == 503, "{r:?}");
                answered += usize::from(r.status == 200);
            }
            answered
        }));
    }
    // Five more level publications, one after the other, while the hammering goes on.
    for _ in 0..5 {
        let since = s.observer.len();
        s.observer
            .wait(
                since,
                "a level publication while trends are hammered",
                |m| m.topic == level,
            )
            .await;
    }
    stop.cancel();
    let mut answered = 0;
    for h in hammers {
        answered += h.await.unwrap();
    }
    assert!(answered > 0, "no trends request was answered");
}

/// Runs `fieldgate web passwd alice` on a pseudo-terminal (Python's pty), types `first` and
/// `second` at its prompts once the terminal's echo is off, and returns (exit code, everything
/// the terminal showed).
const PTY_PASSWD: &str = r#"
import os, pty, select, sys, termios, time
binary, first, second = sys.argv[1], sys.argv[2].encode(), sys.argv[3].encode()
pid, fd = pty.fork()
if pid == 0:
    os.execv(binary, [binary, "web", "passwd", "alice"])
out = b""
deadline = time.monotonic() + 30
def read_until(needle):
    global out
    while needle not in out:
        r, _, _ = select.select([fd], [], [], max(0, deadline - time.monotonic()))
        if not r:
            sys.exit("timed out waiting for %r; got %r" % (needle, out))
        try:
            chunk = os.read(fd, 1024)
        except OSError:
            chunk = b""
        if not chunk:
            return
        out += chunk
def type_hidden(text):
    # wait (with the deadline) until the program has turned echo off, then type
    while termios.tcgetattr(fd)[3] & termios.ECHO:
        if time.monotonic() > deadline:
            sys.exit("echo never turned off; got %r" % out)
        time.sleep(0.01)
    os.write(fd, text + b"\n")
read_until(b"password for alice")
type_hidden(first)
read_until(b"again")
type_hidden(second)
read_until(b"\0never")
_, status = os.waitpid(pid, 0)
sys.stdout.write(out.decode(errors="replace"))
sys.exit(os.WEXITSTATUS(status))
"#;

fn passwd_on_a_terminal(first: &str, second: &str) -> (Option<i32>, String) {
    let out = Command::new("python3")
        .args(["-c", PTY_PASSWD, bin(), first, second])
        .output()
        .expect("python3 runs the pseudo-terminal");
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn web_passwd_on_a_terminal_asks_twice_without_echo() {
    let (code, shown) = passwd_on_a_terminal("pump-house-7", "pump-house-7");
    assert_eq!(code, Some(0), "{shown}");
    assert!(shown.contains("user alice view $argon2id$"), "{shown}");
    assert!(
        !shown.contains("pump-house-7"),
        "the password was echoed: {shown}"
    );
    let (code, shown) = passwd_on_a_terminal("pump-house-7", "pump-house-8");
    assert_eq!(code, Some(1), "{shown}");
    assert!(shown.contains("differ"), "{shown}");
    assert!(!shown.contains("$argon2id$"), "{shown}");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_refused_web_write_is_logged_with_its_origin_and_reason() {
    let mut s = Setup::start(true).await;
    let alice = logged_in(s.web, "alice", OPERATOR_PASSWORD).await;
    let bob = logged_in(s.web, "bob", VIEWER_PASSWORD).await;
    let body = r#"{"point": "tower.p1_start_level", "value": 999}"#;
    // No CSRF token: 403, logged with alice's origin and the reason.
    let r = http(
        s.web,
        "POST",
        "/api/write",
        &[("Cookie", &alice.cookie)],
        Some(body),
    )
    .await;
    assert_eq!(r.status, 403, "{r:?}");
    s.gateway
        .wait_count(&["web write refused", "origin=web:alice", "CSRF"], 1)
        .await;
    // A viewer: 403, logged with bob's origin.
    let r = http(
        s.web,
        "POST",
        "/api/write",
        &[("Cookie", &bob.cookie), ("X-CSRF-Token", &bob.csrf)],
        Some(body),
    )
    .await;
    assert_eq!(r.status, 403, "{r:?}");
    s.gateway
        .wait_count(&["web write refused", "origin=web:bob", "role"], 1)
        .await;
    // Out of range: the executor refuses it, and its log line names the origin too.
    let r = http(
        s.web,
        "POST",
        "/api/write",
        &[("Cookie", &alice.cookie), ("X-CSRF-Token", &alice.csrf)],
        Some(body),
    )
    .await;
    assert_eq!(r.json()["result"], "rejected", "{r:?}");
    s.gateway
        .wait_count(
            &[
                "command rejected",
                "origin=web:alice",
                "tower.p1_start_level",
            ],
            1,
        )
        .await;
}

#[test]
fn check_refuses_the_web_tls_files_that_run_would_refuse() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    let made = Command::new("bash")
        .arg(repo("certs/gen.sh"))
        .arg(&pki)
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let encrypted = pki.join("encrypted.key");
    let enc = Command::new("openssl")
        .args(["pkey", "-aes256", "-passout", "pass:secret-pass", "-in"])
        .arg(pki.join("broker.key"))
        .arg("-out")
        .arg(&encrypted)
        .output()
        .expect("openssl is installed");
    assert!(enc.status.success(), "{enc:?}");
    let check = |cert: &Path, key: &Path| {
        let yaml = format!(
            "mqtt: {{ host: 127.0.0.1, status_topic: t/status }}\n\
             web:\n  listen: 127.0.0.1:0\n  tls: {{ cert_file: {}, key_file: {} }}\n\
             devices:\n  - name: d\n    tcp: {{ host: 127.0.0.1 }}\n    points:\n\
             \x20     - {{ name: x, kind: holding_register, address: 0, publish: {{ topic: t/x }} }}\n",
            cert.display(),
            key.display()
        );
        let config = dir.path().join("mapping.yaml");
        std::fs::write(&config, yaml).unwrap();
        let out = Command::new(bin())
            .args(["check", "-c"])
            .arg(&config)
            .output()
            .unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let (crt, key) = (pki.join("broker.crt"), pki.join("broker.key"));
    let (ok, out) = check(&crt, &key);
    assert!(ok, "{out}");
    // Port 0 is said as what it means.
    assert!(
        out.contains("https://127.0.0.1 on a free port") && !out.contains(":0,"),
        "{out}"
    );
    for (c, k, blamed, key_path) in [
        (&key, &crt, &key, "web.tls.cert_file"),
        (&crt, &encrypted, &encrypted, "web.tls.key_file"),
        (
            &crt,
            &pki.join("gateway.key"),
            &pki.join("gateway.key"),
            "web.tls.key_file",
        ),
    ] {
        let (ok, out) = check(c, k);
        assert!(!ok, "{} + {} passed check: {out}", c.display(), k.display());
        assert!(
            out.contains(key_path) && out.contains(&blamed.display().to_string()),
            "{out}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn logout_ends_the_session_and_clears_the_cookie() {
    let s = Setup::start(false).await;
    let bob = logged_in(s.web, "bob", VIEWER_PASSWORD).await;
    let r = http(
        s.web,
        "POST",
        "/api/logout",
        &[("Cookie", &bob.cookie), ("X-CSRF-Token", &bob.csrf)],
        Some("{}"),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let cookie = r.header("set-cookie").unwrap_or_default();
    assert!(
        cookie.starts_with("fieldgate_session=;") && cookie.contains("Max-Age=0"),
        "{}",
        r.head
    );
    let r = http(
        s.web,
        "GET",
        "/api/status",
        &[("Cookie", &bob.cookie)],
        None,
    )
    .await;
    assert_eq!(r.status, 401, "{r:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn errors_answer_json_bodies() {
    let s = Setup::start(false).await;
    let bearer = s.bearer();
    for path in ["/api/nothing", "/nothing", "/api/trends?max=lots"] {
        let r = http(s.web, "GET", path, &[("Authorization", &bearer)], None).await;
        assert!(r.status == 404 || r.status == 400, "{path}: {r:?}");
        assert!(r.json()["error"].is_string(), "{path}: {r:?}");
    }
}
