//! Test harness: real processes (the `fieldgate` binary as gateway, simulator and broker, and
//! Debian's mosquitto), an MQTT observer, and waits on conditions with deadlines.
//!
//! Every port is ephemeral. Nothing here sleeps to wait for start-up: each start waits for a
//! line on stdout, or for a port to accept, with a deadline.

#![allow(dead_code)]

pub mod bank;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::watch;

pub const DEADLINE: Duration = Duration::from_secs(30);

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_fieldgate")
}

pub fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// A child process whose output lines are collected; killed on drop.
pub struct Proc {
    pub child: Child,
    stdin: Option<std::process::ChildStdin>,
    lines: Arc<Mutex<Vec<String>>>,
    seen: watch::Receiver<usize>,
    /// The threads reading stdout and stderr; each ends at its stream's end of file.
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Proc {
    pub fn spawn(cmd: &mut Command) -> Proc {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("RUST_LOG", "info")
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, seen) = watch::channel(0usize);
        let tx = Arc::new(tx);
        let out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        let mut readers = Vec::new();
        for stream in [
            Box::new(out) as Box<dyn std::io::Read + Send>,
            Box::new(err),
        ] {
            let lines = Arc::clone(&lines);
            let tx = Arc::clone(&tx);
            readers.push(std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let mut l = lines.lock().unwrap();
                    l.push(line);
                    let _ = tx.send(l.len());
                }
            }));
        }
        let stdin = child.stdin.take();
        Proc {
            child,
            stdin,
            lines,
            seen,
            readers,
        }
    }

    /// Write one line to the process's stdin (the simulator's control channel).
    pub fn send_line(&mut self, line: &str) {
        use std::io::Write;
        let stdin = self.stdin.as_mut().expect("stdin is piped");
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    pub fn output(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// Wait for an output line containing `needle`; returns it.
    pub async fn wait_line(&mut self, needle: &str) -> String {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            if let Some(l) = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains(needle))
            {
                return l.clone();
            }
            if !changed_before(&mut self.seen, deadline).await {
                panic!(
                    "no line containing `{needle}` within {DEADLINE:?}; output:\n{}",
                    self.output()
                );
            }
        }
    }

    /// Wait until at least `n` output lines contain every one of `needles`.
    pub async fn wait_count(&mut self, needles: &[&str], n: usize) {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let count = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .filter(|l| needles.iter().all(|k| l.contains(k)))
                .count();
            if count >= n {
                return;
            }
            if !changed_before(&mut self.seen, deadline).await {
                panic!(
                    "fewer than {n} lines with {needles:?} within {DEADLINE:?}; output:\n{}",
                    self.output()
                );
            }
        }
    }

    /// Wait until the gateway has connected to its Modbus device; returns self.
    pub async fn await_ready(mut self) -> Proc {
        self.wait_line("modbus link connected").await;
        self
    }

    /// Count the output lines containing `needle`.
    pub fn count_lines(&self, needle: &str) -> usize {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args(["-s", sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -s {sig} failed");
    }

    /// Wait for the process to exit (deadline) and return its exit code. Also waits, within
    /// the same deadline, until its stdout and stderr have been read to the end, so that
    /// `output()` holds everything it printed (a process that exits at once is often reaped
    /// before its last lines have been read).
    pub async fn wait_exit(&mut self) -> Option<i32> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                while !self.readers.iter().all(|r| r.is_finished()) {
                    assert!(
                        Instant::now() < deadline,
                        "the process exited but its output did not end; output:\n{}",
                        self.output()
                    );
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "process did not exit; output:\n{}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn parse_addr(line: &str) -> SocketAddr {
    line.rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap_or_else(|e| panic!("no address in `{line}`: {e}"))
}

/// The water-tower simulator on `listen` (port 0 for any).
pub async fn simulator(listen: &str, extra: &[&str]) -> (Proc, SocketAddr) {
    let mut p = Proc::spawn(
        Command::new(bin())
            .args(["simulate", "water-tower", "--listen", listen])
            .args(extra),
    );
    let line = p.wait_line("water tower listening on").await;
    (p, parse_addr(&line))
}

/// A pair of connected virtual serial ports from socat: what one end writes, the other reads.
/// Fails (never skips) when socat is missing; `.ci/run` installs it.
pub struct PtyPair {
    pub a: PathBuf,
    pub b: PathBuf,
    _socat: Proc,
    _dir: tempfile::TempDir,
}

impl PtyPair {
    pub async fn new() -> PtyPair {
        let socat = ["/usr/bin/socat", "/usr/local/bin/socat"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("socat is not installed: apt-get install -y socat");
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        let spec = |p: &Path| format!("pty,raw,echo=0,link={}", p.display());
        let proc = Proc::spawn(Command::new(socat).args(["-d", "-d", &spec(&a), &spec(&b)]));
        let deadline = Instant::now() + DEADLINE;
        while !(a.exists() && b.exists()) {
            assert!(
                Instant::now() < deadline,
                "socat made no ptys: {}",
                proc.output()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        PtyPair {
            a,
            b,
            _socat: proc,
            _dir: dir,
        }
    }
}

/// The water-tower simulator serving RTU on a serial port.
pub async fn rtu_simulator(port: &Path, extra: &[&str]) -> Proc {
    let mut p = Proc::spawn(
        Command::new(bin())
            .args(["simulate", "water-tower", "--parity", "none", "--rtu"])
            .arg(port)
            .args(extra),
    );
    p.wait_line("water tower serving rtu").await;
    p
}

/// The gateway running mapping text written to a file in `dir`.
pub fn gateway_yaml(dir: &Path, yaml: &str) -> Proc {
    let path = dir.join("mapping.yaml");
    std::fs::write(&path, yaml).unwrap();
    Proc::spawn(Command::new(bin()).args(["run", "-c"]).arg(&path))
}

/// The energy-meter simulator, frozen (`--speed 0`), on a free port.
pub async fn energy_meter() -> (Proc, SocketAddr) {
    let mut p = Proc::spawn(Command::new(bin()).args([
        "simulate",
        "energy-meter",
        "--listen",
        "127.0.0.1:0",
        "--speed",
        "0",
    ]));
    let line = p.wait_line("energy meter listening on").await;
    (p, parse_addr(&line))
}

/// The embedded broker (rumqttd) in its own process, so a test can kill it.
pub async fn broker(listen: &str) -> (Proc, SocketAddr) {
    let mut p = Proc::spawn(Command::new(bin()).args(["broker", "--listen", listen]));
    let line = p.wait_line("broker listening on").await;
    (p, parse_addr(&line))
}

/// A free loopback port (bound and released; the OS does not hand it out again at once).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn wait_accepting(addr: SocketAddr) {
    let deadline = Instant::now() + DEADLINE;
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(Instant::now() < deadline, "nothing accepts on {addr}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Debian's mosquitto on a free loopback port. Fails (never skips) when it is not installed:
/// `.ci/run` installs it.
pub async fn mosquitto(dir: &Path, extra_conf: &str) -> (Proc, SocketAddr) {
    start_mosquitto(dir, |port| {
        format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n{extra_conf}")
    })
    .await
}

/// Debian's mosquitto on the loopback `port` (to bring a killed broker back where it was).
#[allow(dead_code)]
pub async fn mosquitto_on(dir: &Path, port: u16, extra_conf: &str) -> (Proc, SocketAddr) {
    start_mosquitto_on(dir, port, |port| {
        format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n{extra_conf}")
    })
    .await
}

/// mosquitto with the configuration `conf(port)`, on a free port.
async fn start_mosquitto(dir: &Path, conf: impl FnOnce(u16) -> String) -> (Proc, SocketAddr) {
    start_mosquitto_on(dir, free_port(), conf).await
}

/// mosquitto with the configuration `conf(port)`, on `port`.
async fn start_mosquitto_on(
    dir: &Path,
    port: u16,
    conf: impl FnOnce(u16) -> String,
) -> (Proc, SocketAddr) {
    let exe = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("mosquitto is not installed: apt-get install -y mosquitto mosquitto-clients");
    let file = dir.join(format!("mosquitto-{port}.conf"));
    std::fs::write(&file, conf(port)).unwrap();
    let p = Proc::spawn(Command::new(exe).arg("-c").arg(&file));
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_accepting(addr).await;
    (p, addr)
}

/// The gateway running `config`, with the shipped mapping's variables pointed at our peers.
pub async fn gateway(config: &Path, modbus: SocketAddr, mqtt: SocketAddr, prefix: &str) -> Proc {
    let mut p = Proc::spawn(
        Command::new(bin())
            .args(["run", "-c"])
            .arg(config)
            .env("MODBUS_HOST", modbus.ip().to_string())
            .env("MODBUS_PORT", modbus.port().to_string())
            .env("MQTT_HOST", mqtt.ip().to_string())
            .env("MQTT_PORT", mqtt.port().to_string())
            .env("TOPIC_PREFIX", prefix),
    );
    p.wait_line("modbus link connected").await;
    p
}

#[derive(Debug, Clone)]
pub struct Msg {
    pub topic: String,
    pub payload: String,
    pub retain: bool,
    pub seq: usize,
    /// When the observer received it.
    pub at: Instant,
}

/// An MQTT observer subscribed to `filter`; it re-subscribes after every reconnect.
pub struct Observer {
    pub client: AsyncClient,
    msgs: Arc<Mutex<Vec<Msg>>>,
    seen: watch::Receiver<usize>,
    connected: watch::Receiver<usize>,
}

impl Observer {
    pub async fn start(broker: SocketAddr, filter: &str) -> Observer {
        Self::start_session(broker, filter, true).await
    }

    /// An observer with a persistent session (`clean_session = false`): the broker keeps its
    /// QoS 1/2 messages across its reconnects.
    pub async fn start_persistent(broker: SocketAddr, filter: &str) -> Observer {
        Self::start_session(broker, filter, false).await
    }

    async fn start_session(broker: SocketAddr, filter: &str, clean: bool) -> Observer {
        let id = format!("observer-{}", fastrand::u64(..));
        let mut opts = MqttOptions::new(id, broker.ip().to_string(), broker.port());
        opts.set_keep_alive(Duration::from_secs(5));
        opts.set_clean_session(clean);
        let (client, mut el) = AsyncClient::new(opts, 64);
        let msgs = Arc::new(Mutex::new(Vec::new()));
        let (tx, seen) = watch::channel(0usize);
        let (ctx, connected) = watch::channel(0usize);
        let (m, c, filter) = (Arc::clone(&msgs), client.clone(), filter.to_owned());
        tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let c = c.clone();
                        let filter = filter.clone();
                        tokio::spawn(async move { c.subscribe(filter, QoS::ExactlyOnce).await });
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        ctx.send_modify(|n| *n += 1);
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let mut v = m.lock().unwrap();
                        let seq = v.len();
                        v.push(Msg {
                            topic: p.topic.to_string(),
                            payload: String::from_utf8_lossy(&p.payload).into_owned(),
                            retain: p.retain,
                            seq,
                            at: Instant::now(),
                        });
                        let _ = tx.send(v.len());
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        let mut o = Observer {
            client,
            msgs,
            seen,
            connected,
        };
        o.wait_subscribed(1).await;
        o
    }

    /// Wait until the observer has (re-)subscribed `n` times in all.
    pub async fn wait_subscribed(&mut self, n: usize) {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while *self.connected.borrow() < n {
            if tokio::time::timeout_at(deadline, self.connected.changed())
                .await
                .is_err()
            {
                panic!("observer not subscribed ({n}) within {DEADLINE:?}");
            }
        }
    }

    pub fn all(&self) -> Vec<Msg> {
        self.msgs.lock().unwrap().clone()
    }

    pub fn len(&self) -> usize {
        self.msgs.lock().unwrap().len()
    }

    /// Wait for a message from index `since` on that matches; returns it.
    pub async fn wait(&mut self, since: usize, what: &str, pred: impl Fn(&Msg) -> bool) -> Msg {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            if let Some(m) = self
                .msgs
                .lock()
                .unwrap()
                .iter()
                .skip(since)
                .find(|m| pred(m))
            {
                return m.clone();
            }
            if !changed_before(&mut self.seen, deadline).await {
                let got: Vec<String> = self
                    .all()
                    .iter()
                    .skip(since)
                    .map(|m| format!("{} {}", m.topic, m.payload))
                    .collect();
                panic!(
                    "no message: {what} within {DEADLINE:?}; got:\n{}",
                    got.join("\n")
                );
            }
        }
    }

    /// Wait for the message on `topic` (from `since`) whose payload satisfies `pred`.
    pub async fn wait_topic(
        &mut self,
        since: usize,
        topic: &str,
        pred: impl Fn(&str) -> bool,
    ) -> Msg {
        self.wait(since, topic, |m| m.topic == topic && pred(&m.payload))
            .await
    }

    pub async fn publish(&self, topic: &str, payload: &str, retain: bool) {
        self.client
            .publish(topic, QoS::ExactlyOnce, retain, payload.as_bytes().to_vec())
            .await
            .unwrap();
    }
}

/// Read coils straight from the simulator, bypassing the gateway.
pub async fn read_coils(addr: SocketAddr) -> Vec<bool> {
    use tokio_modbus::prelude::*;
    let mut ctx = tokio_modbus::client::tcp::connect_slave(addr, Slave(1))
        .await
        .unwrap();
    ctx.read_coils(0, 2).await.unwrap().unwrap()
}

pub async fn read_input_registers(addr: SocketAddr, start: u16, n: u16) -> Vec<u16> {
    use tokio_modbus::prelude::*;
    let mut ctx = tokio_modbus::client::tcp::connect_slave(addr, Slave(1))
        .await
        .unwrap();
    ctx.read_input_registers(start, n).await.unwrap().unwrap()
}

pub fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON: {s}: {e}"))
}

/// Assert that `msg` matches the schema `docs/schemas/<name>.schema.json`.
pub fn assert_schema(name: &str, msg: &serde_json::Value) {
    let text = std::fs::read_to_string(repo(&format!("docs/schemas/{name}.schema.json"))).unwrap();
    let v = jsonschema::validator_for(&serde_json::from_str(&text).unwrap()).unwrap();
    let errors: Vec<String> = v.iter_errors(msg).map(|e| e.to_string()).collect();
    assert!(
        errors.is_empty(),
        "message does not match {name}: {errors:?}\n{msg}"
    );
}

/// Wait for `seen` to change before `deadline`. False on the deadline, and also when the
/// sender is gone (the process's output ended), where `changed()` would return at once forever.
async fn changed_before(seen: &mut watch::Receiver<usize>, deadline: tokio::time::Instant) -> bool {
    matches!(
        tokio::time::timeout_at(deadline, seen.changed()).await,
        Ok(Ok(()))
    )
}

/// What a [`Proxy`] does with the traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyMode {
    /// Forward both ways.
    Pass,
    /// Reset (RST) every connection, and every new one at once: the broker is gone.
    Cut,
    /// Like `Cut`, but each open connection is reset only after 80 ms without traffic, so
    /// that no publish or acknowledgement is half-way (for tests that count exactly).
    CutWhenQuiet,
    /// Keep connections open but let nothing through either way, as a half-open link does
    /// (a pulled cable, a dead NAT entry). New connections are accepted and never served.
    /// Back to `Pass`, the black-holed connections are reset.
    Blackhole,
}

/// A TCP proxy the test controls, in front of a real broker.
pub struct Proxy {
    pub addr: SocketAddr,
    mode: watch::Sender<ProxyMode>,
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (mode, rx) = watch::channel(ProxyMode::Pass);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let rx = rx.clone();
                tokio::spawn(proxy_connection(client, target, rx));
            }
        });
        Proxy { addr, mode }
    }

    /// Change the mode; setting the current one again changes nothing.
    pub fn set(&self, mode: ProxyMode) {
        self.mode
            .send_if_modified(|m| std::mem::replace(m, mode) != mode);
    }
}

async fn proxy_connection(
    client: tokio::net::TcpStream,
    target: SocketAddr,
    mut mode: watch::Receiver<ProxyMode>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let reset = |s: &tokio::net::TcpStream| {
        let _ = s.set_zero_linger();
    };
    let start = *mode.borrow_and_update();
    match start {
        ProxyMode::Cut | ProxyMode::CutWhenQuiet => return reset(&client),
        ProxyMode::Blackhole => {
            // Hold it, unserved, until the outage ends; then reset it.
            while *mode.borrow_and_update() == ProxyMode::Blackhole {
                if mode.changed().await.is_err() {
                    return;
                }
            }
            return reset(&client);
        }
        ProxyMode::Pass => {}
    }
    let Ok(upstream) = tokio::net::TcpStream::connect(target).await else {
        return reset(&client);
    };
    let (mut cr, mut cw) = client.into_split();
    let (mut ur, mut uw) = upstream.into_split();
    let mut cbuf = vec![0u8; 16 * 1024];
    let mut ubuf = vec![0u8; 16 * 1024];
    let mut holed = false;
    let mut upstream_open = true;
    // Long enough for the gateway to have read the last acknowledgement even on a loaded
    // machine (an RST discards what the receiver has not read yet), short enough to fall
    // between publications 100 ms apart.
    let quiet = Duration::from_millis(80);
    let mut cut_at: Option<tokio::time::Instant> = None;
    let far = || tokio::time::Instant::now() + Duration::from_secs(3600);
    loop {
        let cut_timer = tokio::time::sleep_until(cut_at.unwrap_or_else(far));
        tokio::select! {
            n = cr.read(&mut cbuf) => match n {
                Ok(0) | Err(_) => break,
                Ok(n) if !holed => if uw.write_all(&cbuf[..n]).await.is_err() { break },
                Ok(_) => {} // into the void
            },
            n = ur.read(&mut ubuf), if upstream_open => match n {
                Ok(0) | Err(_) if holed => upstream_open = false, // a half-open link hides it
                Ok(0) | Err(_) => break,
                Ok(n) if !holed => if cw.write_all(&ubuf[..n]).await.is_err() { break },
                Ok(_) => {}
            },
            () = cut_timer => break,
            r = mode.changed() => {
                if r.is_err() { break }
                match *mode.borrow_and_update() {
                    ProxyMode::Blackhole => holed = true,
                    ProxyMode::Cut => break,
                    ProxyMode::CutWhenQuiet => {}
                    // The link comes back, but this connection died in the outage.
                    ProxyMode::Pass => break,
                }
            }
        }
        if *mode.borrow() == ProxyMode::CutWhenQuiet {
            cut_at = Some(tokio::time::Instant::now() + quiet);
        }
    }
    if let (Ok(c), Ok(u)) = (cr.reunite(cw), ur.reunite(uw)) {
        reset(&c);
        reset(&u);
    }
}

/// Read one counter of the Prometheus text at `addr` (summed over label sets matching
/// `labels`, e.g. `reason="buffer_full"`); 0 if absent.
pub async fn metric(addr: SocketAddr, name: &str, labels: &str) -> f64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).await.unwrap();
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Debian's mosquitto with a whole listener configuration of the test's (TLS, passwords,
/// ACLs): `body` follows `listener PORT 127.0.0.1`. It stays root, so that it can read keys
/// in the test's private temporary directory.
pub async fn mosquitto_with(dir: &Path, body: &str) -> (Proc, SocketAddr) {
    start_mosquitto(dir, |port| {
        format!("user root\npersistence false\nlistener {port} 127.0.0.1\n{body}\n")
    })
    .await
}
