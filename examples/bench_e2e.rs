//! End-to-end benchmark: the release `fieldgate` binary between fast Modbus TCP slaves served
//! by this program and Debian's mosquitto, with an MQTT subscriber counting what arrives.
//!
//! Run it with `bash scripts/bench-e2e.sh` (which builds the release binaries first), or
//! `cargo run --release --example bench_e2e -- --help`. It prints figures and asserts
//! nothing; it is not part of `cargo test` (which only builds it).
//!
//! Each run (a scenario at one QoS) starts its own mosquitto on a free loopback port, its own
//! slaves and subscriber, and a gateway with a generated mapping, then measures for a fixed
//! window. Scenario `N@T` is one device with N holding registers polled every T seconds;
//! `10xN@T` is ten devices. Every register changes on every read (value = read counter +
//! address), so an `on_change` point publishes on every poll. Per run it reports:
//!
//! - values requested (N x devices x window / T), values the gateway read (counted by the
//!   slaves), values the subscriber received (of those read inside the window), and drops by
//!   reason from the gateway's `/metrics`, plus what the broker itself dropped;
//! - the gateway's CPU time (utime + stime) per 1,000 values read, and its RSS (and peak);
//! - latency p50/p99 from the slave's reply to the subscriber's receipt, on one monotonic
//!   clock (this process); the payload's `ts` has millisecond resolution, so the latency it
//!   gives is printed as a cross-check only.
//!
//! The `link` scenario compares requests per second on one Modbus TCP link: a bare
//! tokio-modbus client loop (125 registers per request, run as a child process of this
//! program, like the gateway) against the gateway polling the same slave as fast as it can.
//! The `ceiling` scenario measures mosquitto alone: what it passes on to the subscriber when
//! one connection writes pre-encoded QoS 0 PUBLISHes as fast as it reads them, the most any
//! publisher can deliver through it on this machine.
//!
//! It must not use fixed ports, leave a child process behind (they are killed on drop, so also
//! on an error or a panic), or run longer than its windows plus bounded start-up and drain.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, bail};
use clap::Parser;
use tokio_modbus::{ExceptionCode, Request, Response};

/// Registers per read request, the Modbus maximum (application protocol 6.3).
const PER_REQUEST: u16 = 125;
/// Requests per poll cycle of the gateway in the link scenario: enough that one cycle takes
/// longer than its 1 ms poll interval, so the link, not the interval, sets the pace.
const LINK_REQUESTS: u16 = 40;
/// Longest wait for start-up and for the drain after a window.
const DEADLINE: Duration = Duration::from_secs(15);

#[derive(Debug, Parser)]
#[command(about = "End-to-end benchmark of the fieldgate binary (see the README, Measurements)")]
struct Args {
    /// QoS of the published points, 0 or 1 (repeatable); both when absent.
    #[arg(long)]
    qos: Vec<u8>,
    /// Length of each measurement window, in seconds.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Scenario (repeatable): 10@1, 1000@1, 1000@0.1, 10x1000@1, 10x1000@0.1, 2000@0.1, link, ceiling
    /// (mosquitto alone, also with `--broker sink`); all when absent.
    #[arg(long)]
    scenario: Vec<String>,
    /// The gateway binary; default: `fieldgate` next to this example's directory.
    #[arg(long)]
    gateway: Option<PathBuf>,
    /// The mosquitto binary; default: /usr/sbin/mosquitto or /usr/bin/mosquitto.
    #[arg(long)]
    mosquitto: Option<PathBuf>,
    /// `mosquitto` (default): end to end through Debian's broker to a subscriber. `sink`: a
    /// minimal MQTT 3.1.1 server in this program takes the gateway's connection, acknowledges
    /// (CONNACK, SUBACK, PUBACK, PINGRESP) and timestamps every PUBLISH as it is read off the
    /// socket, so the latency is read -> broker, the gateway's own share.
    #[arg(long, default_value = "mosquitto", value_parser = ["mosquitto", "sink"])]
    broker: String,
    /// mosquitto's `set_tcp_nodelay`: `true` (default) keeps Nagle's algorithm off the
    /// subscriber's leg, for latency; `false` (mosquitto's own default) lets the kernel join
    /// the broker's small writes, for throughput. `ceiling` measures both.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    broker_nodelay: bool,
    /// Give the gateway a durable buffer (`mqtt.buffer.path` in the run's temporary
    /// directory), as under systemd; without it the buffer is in memory only.
    #[arg(long)]
    durable: bool,
    /// Internal: run the bare tokio-modbus loop against this slave and print requests/s.
    #[arg(long, hide = true)]
    bare_loop: Option<SocketAddr>,
}

const ALL: [&str; 8] = [
    "10@1",
    "1000@1",
    "1000@0.1",
    "10x1000@1",
    "10x1000@0.1",
    "2000@0.1",
    "link",
    "ceiling",
];

#[derive(Debug, Clone, Copy)]
struct Scenario {
    name: &'static str,
    devices: usize,
    registers: u16,
    period: Duration,
}

fn scenario(name: &str) -> anyhow::Result<Scenario> {
    let name = ALL
        .iter()
        .find(|s| **s == name)
        .with_context(|| format!("unknown scenario {name:?}; known: {}", ALL.join(", ")))?;
    let (devices, rest) = match name.split_once('x') {
        Some((d, rest)) => (d.parse()?, rest),
        None => (1, *name),
    };
    let (n, t) = rest.split_once('@').context("scenario is N@T")?;
    Ok(Scenario {
        name,
        devices,
        registers: n.parse()?,
        period: Duration::from_secs_f64(t.parse()?),
    })
}

// ---------------------------------------------------------------------------------------------
// Clock: one monotonic clock for the slaves and the subscriber (both in this process).

fn now_ns() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    BASE.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

// ---------------------------------------------------------------------------------------------
// The fast slave.

/// One Modbus TCP device: any holding or input register answers `counter + address`, where
/// `counter` counts this device's read requests, so every value changes on every read.
struct Slave {
    /// Set at the end of a run: every read answers SERVER DEVICE FAILURE, so no more values.
    stopped: AtomicBool,
    reads: AtomicU32,
    registers: AtomicU64,
    /// When read `counter` was answered (ns of [`now_ns`]), indexed by `counter mod 65536`:
    /// a value `v` at address `a` came from read `v - a`.
    replied_at: Box<[AtomicU64]>,
}

impl Slave {
    fn new() -> Slave {
        Slave {
            stopped: AtomicBool::new(false),
            reads: AtomicU32::new(0),
            registers: AtomicU64::new(0),
            replied_at: (0..=u16::MAX).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn read(&self, address: u16, count: u16) -> Vec<u16> {
        let c = self.reads.fetch_add(1, Relaxed) as u16;
        self.registers.fetch_add(u64::from(count), Relaxed);
        self.replied_at[usize::from(c)].store(now_ns(), Relaxed);
        (0..count)
            .map(|i| c.wrapping_add(address).wrapping_add(i))
            .collect()
    }
}

#[derive(Clone)]
struct SlaveService(Arc<Slave>);

impl tokio_modbus::server::Service for SlaveService {
    type Request = Request<'static>;
    type Response = Response;
    type Exception = ExceptionCode;
    type Future = std::future::Ready<Result<Response, ExceptionCode>>;

    fn call(&self, req: Request<'static>) -> Self::Future {
        if self.0.stopped.load(Relaxed) {
            return std::future::ready(Err(ExceptionCode::ServerDeviceFailure));
        }
        std::future::ready(match req {
            Request::ReadHoldingRegisters(a, n) => {
                Ok(Response::ReadHoldingRegisters(self.0.read(a, n)))
            }
            Request::ReadInputRegisters(a, n) => {
                Ok(Response::ReadInputRegisters(self.0.read(a, n)))
            }
            _ => Err(ExceptionCode::IllegalFunction),
        })
    }
}

/// Serve `slave` on a free loopback port of `rt`; returns the address.
fn serve(rt: &tokio::runtime::Runtime, slave: Arc<Slave>) -> anyhow::Result<SocketAddr> {
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let addr = listener.local_addr()?;
    rt.spawn(async move {
        let server = tokio_modbus::server::tcp::Server::new(listener);
        let on_connected = move |stream: tokio::net::TcpStream, peer: SocketAddr| {
            let _ = stream.set_nodelay(true);
            let service = SlaveService(Arc::clone(&slave));
            std::future::ready(tokio_modbus::server::tcp::accept_tcp_connection(
                stream,
                peer,
                move |_| Ok(Some(service.clone())),
            ))
        };
        let _ = server.serve(&on_connected, |_e: std::io::Error| {}).await;
    });
    Ok(addr)
}

// ---------------------------------------------------------------------------------------------
// Child processes.

/// A child process that is killed and reaped when dropped.
struct Child {
    child: std::process::Child,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Child {
    fn spawn(cmd: &mut Command) -> anyhow::Result<Child> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {cmd:?}"))?;
        let stderr = Arc::new(Mutex::new(Vec::new()));
        if let Some(pipe) = child.stderr.take() {
            let lines = Arc::clone(&stderr);
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    let mut l = lines.lock().unwrap_or_else(|e| e.into_inner());
                    if l.len() < 10_000 {
                        l.push(line);
                    }
                }
            });
        }
        Ok(Child { child, stderr })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The first stderr line containing `needle`, waiting up to [`DEADLINE`].
    fn wait_line(&mut self, needle: &str) -> anyhow::Result<String> {
        self.wait_lines(needle, 1)
            .map(|mut v| v.pop().unwrap_or_default())
    }

    /// `n` stderr lines containing `needle`, waiting up to [`DEADLINE`].
    fn wait_lines(&mut self, needle: &str, n: usize) -> anyhow::Result<Vec<String>> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let found: Vec<String> = self
                .lines()
                .into_iter()
                .filter(|l| l.contains(needle))
                .collect();
            if found.len() >= n {
                return Ok(found);
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("exited ({status}) before {needle:?}:\n{}", self.tail());
            }
            if Instant::now() > deadline {
                bail!("no {needle:?} within {DEADLINE:?}:\n{}", self.tail());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn lines(&self) -> Vec<String> {
        self.stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn tail(&self) -> String {
        let lines = self.lines();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Wait until something accepts on `addr`.
fn wait_accepting(addr: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + DEADLINE;
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        if Instant::now() > deadline {
            bail!("nothing accepts on {addr}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Start mosquitto on a free loopback port. `nodelay`: its `set_tcp_nodelay` (mosquitto.conf(5)),
/// `true` so that Nagle's algorithm does not delay the subscriber's leg, `false` (mosquitto's
/// default) so that the kernel joins the broker's small writes to the subscriber into fewer
/// segments: measured here, 56,500-64,800 against 109,000-118,000 QoS 0 messages a second.
fn mosquitto(exe: &Path, dir: &Path, nodelay: bool) -> anyhow::Result<(Child, u16)> {
    let port = free_port()?;
    let conf = dir.join("mosquitto.conf");
    // Queues large enough that the broker is not what drops values to our subscriber.
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n\
             max_queued_messages 1000000\nmax_inflight_messages 1000\nset_tcp_nodelay {nodelay}\n\
             sys_interval 1\nlog_dest stderr\nlog_type error\nlog_type warning\n"
        ),
    )?;
    let child = Child::spawn(Command::new(exe).arg("-c").arg(&conf))?;
    wait_accepting(SocketAddr::from(([127, 0, 0, 1], port)))?;
    Ok((child, port))
}

// ---------------------------------------------------------------------------------------------
// /proc and /metrics.

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// utime + stime of `pid`, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    let ticks = f.get(11).unwrap_or(&0.0) + f.get(12).unwrap_or(&0.0);
    static TCK: OnceLock<f64> = OnceLock::new();
    ticks / *TCK.get_or_init(clock_ticks)
}

/// `VmRSS`, `VmHWM`, `RssAnon` (the gateway's own memory) and `RssFile` (pages of the
/// executable and libraries mapped) of `pid`, in MB.
fn rss_mb(pid: u32) -> (f64, f64, f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (
        kb("VmRSS:") / 1024.0,
        kb("VmHWM:") / 1024.0,
        kb("RssAnon:") / 1024.0,
        kb("RssFile:") / 1024.0,
    )
}

/// Every sample of the gateway's `/metrics`, by name with labels.
fn scrape(addr: SocketAddr) -> BTreeMap<String, f64> {
    let mut body = String::new();
    if let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n");
        let _ = s.read_to_string(&mut body);
    }
    body.lines()
        .filter(|l| l.starts_with("fieldgate_"))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect()
}

/// `fieldgate_publications_dropped_total` by reason.
fn drops(m: &BTreeMap<String, f64>) -> BTreeMap<String, u64> {
    m.iter()
        .filter_map(|(k, v)| {
            let reason = k
                .strip_prefix("fieldgate_publications_dropped_total{reason=\"")?
                .strip_suffix("\"}")?;
            Some((reason.to_owned(), *v as u64))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The subscriber.

#[derive(Default)]
struct Received {
    /// The window, in ns of [`now_ns`]: values whose read was answered in `t0..t1` count.
    t0: AtomicU64,
    t1: AtomicU64,
    subscribed: AtomicBool,
    stop: AtomicBool,
    total: AtomicU64,
    /// Every `bench/...` publication, whether or not its payload names a read of ours.
    arrived: AtomicU64,
    in_window: AtomicU64,
    /// Bit d: a value of device d arrived.
    devices: AtomicU64,
    unparsed: AtomicU64,
    /// `$SYS/broker/publish/messages/dropped` and `.../received`: the broker's own drops,
    /// and the publications it received (mosquitto publishes them once they are non-zero).
    broker_dropped: AtomicU64,
    broker_received: AtomicU64,
}

/// One value received inside the window: latency from the slave's reply, and from the
/// payload's `ts` (millisecond resolution), in µs.
type Sample = (u64, i64);

fn subscribe(
    port: u16,
    slaves: Vec<Arc<Slave>>,
    rx: Arc<Received>,
) -> std::thread::JoinHandle<Vec<Sample>> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
            let mut opts = MqttOptions::new("bench-subscriber", "127.0.0.1", port);
            opts.set_keep_alive(Duration::from_secs(30));
            opts.set_max_packet_size(1 << 20, 1 << 20);
            let (client, mut events) = AsyncClient::new(opts, 1024);
            let mut net = events.network_options();
            net.set_tcp_nodelay(true);
            events.set_network_options(net);
            let mut samples = Vec::new();
            while !rx.stop.load(Relaxed) {
                let event =
                    match tokio::time::timeout(Duration::from_millis(100), events.poll()).await {
                        Err(_) => continue,
                        Ok(Err(_)) => {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                        Ok(Ok(e)) => e,
                    };
                match event {
                    Event::Incoming(Packet::ConnAck(_)) => {
                        let _ = client.subscribe("bench/#", QoS::AtLeastOnce).await;
                        let _ = client
                            .subscribe("$SYS/broker/publish/messages/+", QoS::AtMostOnce)
                            .await;
                    }
                    Event::Incoming(Packet::SubAck(_)) => rx.subscribed.store(true, Relaxed),
                    Event::Incoming(Packet::Publish(p)) => {
                        let at = now_ns();
                        let wall = SystemTime::now();
                        if p.topic.starts_with("$SYS/") {
                            if let Some(n) = std::str::from_utf8(&p.payload)
                                .ok()
                                .and_then(|s| s.trim().parse().ok())
                            {
                                if p.topic.ends_with("/dropped") {
                                    rx.broker_dropped.store(n, Relaxed);
                                } else if p.topic.ends_with("/received") {
                                    rx.broker_received.store(n, Relaxed);
                                }
                            }
                            continue;
                        }
                        rx.arrived.fetch_add(1, Relaxed);
                        match received(&p.topic, &p.payload, &slaves) {
                            Some((device, replied, ts)) => {
                                rx.total.fetch_add(1, Relaxed);
                                rx.devices.fetch_or(1 << (device % 64), Relaxed);
                                if (rx.t0.load(Relaxed)..rx.t1.load(Relaxed)).contains(&replied) {
                                    rx.in_window.fetch_add(1, Relaxed);
                                    let by_ts = match wall.duration_since(ts) {
                                        Ok(d) => d.as_micros() as i64,
                                        Err(e) => -(e.duration().as_micros() as i64),
                                    };
                                    samples.push((at.saturating_sub(replied) / 1000, by_ts));
                                }
                            }
                            None => {
                                rx.unparsed.fetch_add(1, Relaxed);
                            }
                        }
                    }
                    _ => {}
                }
            }
            let _ = client.disconnect().await;
            samples
        })
    })
}

/// The `--broker sink` server: one MQTT 3.1.1 connection at a time (the gateway's), read with a
/// buffer; acknowledges what needs it and records each `bench/...` PUBLISH like the subscriber
/// does, stamped as it is parsed. Packet layouts: MQTT 3.1.1 section 2 (fixed header, Remaining
/// Length) and 3 (CONNACK, PUBLISH, PUBACK, SUBACK, PINGRESP).
fn sink(
    listener: TcpListener,
    slaves: Vec<Arc<Slave>>,
    rx: Arc<Received>,
) -> std::thread::JoinHandle<Vec<Sample>> {
    rx.subscribed.store(true, Relaxed);
    std::thread::spawn(move || {
        let mut samples = Vec::new();
        let _ = listener.set_nonblocking(true);
        while !rx.stop.load(Relaxed) {
            let stream = match listener.accept() {
                Ok((s, _)) => s,
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            };
            let _ = stream.set_nonblocking(false);
            let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
            let _ = stream.set_nodelay(true);
            let Ok(mut out) = stream.try_clone() else {
                continue;
            };
            // A PUBLISH is stamped when the read that completed it returned, not when it is
            // parsed: the PUBACKs written one by one for the packets before it in the same read
            // are the sink's time, not the gateway's.
            let read_at = std::rc::Rc::new(std::cell::Cell::new(now_ns()));
            let stamped = Stamped {
                inner: stream,
                at: std::rc::Rc::clone(&read_at),
            };
            let mut input = std::io::BufReader::with_capacity(1 << 16, stamped);
            let mut next = || -> std::io::Result<Option<(u8, Vec<u8>)>> {
                let mut b = [0u8; 1];
                loop {
                    match input.read_exact(&mut b) {
                        Ok(()) => break,
                        Err(e)
                            if matches!(
                                e.kind(),
                                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                            ) =>
                        {
                            if rx.stop.load(Relaxed) {
                                return Ok(None);
                            }
                        }
                        Err(e) => return Err(e),
                    }
                }
                let (mut len, mut shift) = (0usize, 0);
                loop {
                    let mut d = [0u8; 1];
                    input.read_exact(&mut d)?;
                    len |= usize::from(d[0] & 0x7f) << shift;
                    shift += 7;
                    if d[0] & 0x80 == 0 || shift > 21 {
                        break;
                    }
                }
                let mut body = vec![0u8; len];
                input.read_exact(&mut body)?;
                Ok(Some((b[0], body)))
            };
            while let Ok(Some((header, body))) = next() {
                let reply: Vec<u8> = match header >> 4 {
                    1 => vec![0x20, 2, 0, 0],
                    3 => {
                        let at = read_at.get();
                        let qos = (header >> 1) & 3;
                        let Some(tlen) = body
                            .get(..2)
                            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
                        else {
                            break;
                        };
                        let topic = std::str::from_utf8(body.get(2..2 + tlen).unwrap_or_default())
                            .unwrap_or_default();
                        let mut at_payload = 2 + tlen;
                        let mut reply = Vec::new();
                        if qos > 0 {
                            let id = body
                                .get(at_payload..at_payload + 2)
                                .unwrap_or(&[0, 0])
                                .to_vec();
                            at_payload += 2;
                            reply = vec![if qos == 1 { 0x40 } else { 0x50 }, 2, id[0], id[1]];
                        }
                        let payload = body.get(at_payload..).unwrap_or_default();
                        if topic.starts_with("bench/") {
                            match received(topic, payload, &slaves) {
                                Some((device, replied, ts)) => {
                                    rx.total.fetch_add(1, Relaxed);
                                    rx.devices.fetch_or(1 << (device % 64), Relaxed);
                                    if (rx.t0.load(Relaxed)..rx.t1.load(Relaxed)).contains(&replied)
                                    {
                                        rx.in_window.fetch_add(1, Relaxed);
                                        let by_ts = match SystemTime::now().duration_since(ts) {
                                            Ok(d) => d.as_micros() as i64,
                                            Err(e) => -(e.duration().as_micros() as i64),
                                        };
                                        samples.push((at.saturating_sub(replied) / 1000, by_ts));
                                    }
                                }
                                None => {
                                    rx.unparsed.fetch_add(1, Relaxed);
                                }
                            }
                        }
                        reply
                    }
                    6 => vec![
                        0x70,
                        2,
                        body.first().copied().unwrap_or(0),
                        body.get(1).copied().unwrap_or(0),
                    ],
                    8 => {
                        // Packet id, then (topic filter, requested QoS) pairs: grant each.
                        let mut granted = Vec::new();
                        let mut i = 2;
                        while let Some(b) = body.get(i..i + 2) {
                            let n = usize::from(u16::from_be_bytes([b[0], b[1]]));
                            granted.push(body.get(i + 2 + n).copied().unwrap_or(0) & 3);
                            i += 3 + n;
                        }
                        let mut r = vec![
                            0x90,
                            (2 + granted.len()) as u8,
                            body.first().copied().unwrap_or(0),
                            body.get(1).copied().unwrap_or(0),
                        ];
                        r.extend(granted);
                        r
                    }
                    12 => vec![0xd0, 0],
                    14 => break,
                    _ => Vec::new(),
                };
                if !reply.is_empty() && out.write_all(&reply).is_err() {
                    break;
                }
            }
        }
        samples
    })
}

/// A socket whose every read that returns data records when it returned (`now_ns`): the sink's
/// buffered reader reads only when its buffer is empty, so every byte it holds came with the
/// latest read, and a packet parsed from it arrived then.
struct Stamped {
    inner: std::net::TcpStream,
    at: std::rc::Rc<std::cell::Cell<u64>>,
}

impl Read for Stamped {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n > 0 {
            self.at.set(now_ns());
        }
        Ok(n)
    }
}

/// From topic `bench/<device>/<address>` and a JSON payload: the device, when the slave
/// answered the read the value came from, and the payload's `ts`.
fn received(
    topic: &str,
    payload: &[u8],
    slaves: &[Arc<Slave>],
) -> Option<(usize, u64, SystemTime)> {
    let mut parts = topic.strip_prefix("bench/")?.split('/');
    let device: usize = parts.next()?.parse().ok()?;
    let address: u16 = parts.next()?.parse().ok()?;
    let text = std::str::from_utf8(payload).ok()?;
    let value = text.split("\"value\":").nth(1)?;
    let digits = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let value: u16 = value[..digits].parse().ok()?;
    let ts = text.split("\"ts\":\"").nth(1)?.split('"').next()?;
    let ts = humantime::parse_rfc3339(ts).ok()?;
    let read = value.wrapping_sub(address);
    let replied = slaves.get(device)?.replied_at[usize::from(read)].load(Relaxed);
    Some((device, replied, ts))
}

// ---------------------------------------------------------------------------------------------
// The gateway.

/// The generated mapping. `buffer`: the durable buffer's directory (`mqtt.buffer.path`);
/// `None` keeps the buffer in memory only.
fn mapping(
    mqtt: u16,
    slaves: &[SocketAddr],
    s: &Scenario,
    qos: Option<u8>,
    buffer: Option<&Path>,
) -> String {
    let buffer = buffer.map_or(String::new(), |b| {
        format!("  buffer:\n    path: {}\n", b.display())
    });
    let mut y = format!(
        "mqtt:\n  host: 127.0.0.1\n  port: {mqtt}\n  client_id: fieldgate-bench\n  \
         status_topic: bench-status\n{buffer}metrics:\n  listen: 127.0.0.1:0\ndevices:\n"
    );
    for (d, addr) in slaves.iter().enumerate() {
        y += &format!(
            "  - name: d{d}\n    tcp: {{ host: 127.0.0.1, port: {} }}\n    poll_interval: {}ms\n    points:\n",
            addr.port(),
            s.period.as_millis()
        );
        for a in 0..s.registers {
            y += &format!("      - {{ name: r{a}, kind: holding_register, address: {a}");
            if let Some(q) = qos {
                y += &format!(
                    ", publish: {{ topic: bench/{d}/{a}, qos: {q}, mode: on_change, format: json }}"
                );
            }
            y += " }\n";
        }
    }
    y
}

struct Gateway {
    child: Child,
    metrics: SocketAddr,
}

fn gateway(exe: &Path, dir: &Path, yaml: &str, devices: usize) -> anyhow::Result<Gateway> {
    let file = dir.join("mapping.yaml");
    std::fs::write(&file, yaml)?;
    let mut child = Child::spawn(
        Command::new(exe)
            .args(["run", "-c"])
            .arg(&file)
            .env_remove("STATE_DIRECTORY")
            .env("RUST_LOG", "info,rumqttc=warn,tokio_modbus=warn"),
    )?;
    let line = child.wait_line("metrics listening")?;
    let metrics = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("addr="))
        .and_then(|a| a.parse().ok())
        .with_context(|| format!("no metrics address in {line:?}"))?;
    child.wait_line("mqtt connected")?;
    child.wait_lines("modbus link connected", devices)?;
    Ok(Gateway { child, metrics })
}

// ---------------------------------------------------------------------------------------------
// One run.

struct Figures {
    scenario: &'static str,
    qos: u8,
    requested: u64,
    read: u64,
    delivered: u64,
    drops: BTreeMap<String, u64>,
    broker_dropped: u64,
    cpu_ms_per_1000: f64,
    broker_cpu_ms_per_1000: f64,
    rss: (f64, f64, f64, f64),
    latency: (f64, f64),
    latency_ts: (f64, f64),
    queued: f64,
    /// Whole run: publications the gateway accepted, the broker received, the subscriber got.
    totals: (u64, u64, u64),
}

fn percentile<T: Copy + Ord>(sorted: &[T], q: f64) -> Option<T> {
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted.get(i).copied()
}

struct Env {
    gateway: PathBuf,
    mosquitto: PathBuf,
    /// `--broker sink`: the in-program sink instead of mosquitto and a subscriber.
    sink: bool,
    /// `--broker-nodelay`: mosquitto's `set_tcp_nodelay`.
    nodelay: bool,
    /// `--durable`: the gateway's buffer on disk.
    durable: bool,
    slave_rt: tokio::runtime::Runtime,
    window: Duration,
}

fn run(env: &Env, s: &Scenario, qos: u8) -> anyhow::Result<Figures> {
    let dir = tempfile::tempdir()?;
    let slaves: Vec<Arc<Slave>> = (0..s.devices).map(|_| Arc::new(Slave::new())).collect();
    let addrs = slaves
        .iter()
        .map(|sl| serve(&env.slave_rt, Arc::clone(sl)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let rx = Arc::new(Received {
        t0: AtomicU64::new(u64::MAX),
        t1: AtomicU64::new(u64::MAX),
        ..Received::default()
    });
    let (broker, port, sub) = if env.sink {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let sub = sink(listener, slaves.clone(), Arc::clone(&rx));
        (None, port, sub)
    } else {
        let (broker, port) = mosquitto(&env.mosquitto, dir.path(), env.nodelay)?;
        let sub = subscribe(port, slaves.clone(), Arc::clone(&rx));
        wait_for("the subscriber's SubAck", || rx.subscribed.load(Relaxed))?;
        (Some(broker), port, sub)
    };
    let gw = gateway(
        &env.gateway,
        dir.path(),
        &mapping(
            port,
            &addrs,
            s,
            Some(qos),
            env.durable.then(|| dir.path().join("queue")).as_deref(),
        ),
        s.devices,
    )?;
    let all = if s.devices >= 64 {
        u64::MAX
    } else {
        (1 << s.devices) - 1
    };
    wait_for("values from every device", || {
        rx.devices.load(Relaxed) == all
    })?;
    // Warm-up: a few polls past the first, whose values are all new.
    std::thread::sleep(s.period.max(Duration::from_millis(500)) * 2);

    let read_now = || {
        slaves
            .iter()
            .map(|sl| sl.registers.load(Relaxed))
            .sum::<u64>()
    };
    let (pid, bpid) = (gw.child.pid(), broker.as_ref().map(Child::pid));
    let broker_cpu = || bpid.map_or(0.0, cpu_seconds);
    let (cpu0, bcpu0, read0) = (cpu_seconds(pid), broker_cpu(), read_now());
    let before = scrape(gw.metrics);
    rx.t0.store(now_ns(), Relaxed);
    std::thread::sleep(env.window);
    rx.t1.store(now_ns(), Relaxed);
    let (cpu1, bcpu1, read1) = (cpu_seconds(pid), broker_cpu(), read_now());
    // Drain: wait until what was read inside the window stops arriving.
    let deadline = Instant::now() + DEADLINE;
    let mut last = (rx.in_window.load(Relaxed), Instant::now());
    while Instant::now() < deadline && last.1.elapsed() < Duration::from_secs(1) {
        std::thread::sleep(Duration::from_millis(100));
        let n = rx.in_window.load(Relaxed);
        if n != last.0 {
            last = (n, Instant::now());
        }
    }
    let after = scrape(gw.metrics);
    let rss = rss_mb(pid);
    // Whole-run totals along the way, with the values stopped (each point publishes one
    // `bad` message, on every side alike): where do the unaccounted ones go? Wait for the
    // broker's `$SYS` counters, published every second, to catch up.
    for sl in &slaves {
        sl.stopped.store(true, Relaxed);
    }
    std::thread::sleep(Duration::from_millis(2500));
    let end = scrape(gw.metrics);
    rx.stop.store(true, Relaxed);
    let mut samples = sub
        .join()
        .map_err(|_| anyhow::anyhow!("subscriber panicked"))?;
    drop(gw);
    drop(broker);

    let (d0, d1) = (drops(&before), drops(&after));
    let drops = d1
        .iter()
        .map(|(k, v)| (k.clone(), v.saturating_sub(d0.get(k).copied().unwrap_or(0))))
        .filter(|(_, v)| *v > 0)
        .collect();
    let read = read1 - read0;
    let per_1000 = |cpu: f64| cpu * 1000.0 / (read.max(1) as f64 / 1000.0);
    let mut by_reply: Vec<u64> = samples.iter().map(|s| s.0).collect();
    by_reply.sort_unstable();
    samples.sort_unstable_by_key(|s| s.1);
    let by_ts: Vec<i64> = samples.iter().map(|s| s.1).collect();
    let ms = |us: Option<u64>| us.map_or(f64::NAN, |u| u as f64 / 1000.0);
    let ms_i = |us: Option<i64>| us.map_or(f64::NAN, |u| u as f64 / 1000.0);
    Ok(Figures {
        scenario: s.name,
        qos,
        requested: u64::from(s.registers) * s.devices as u64 * env.window.as_millis() as u64
            / s.period.as_millis() as u64,
        read,
        delivered: rx.in_window.load(Relaxed),
        drops,
        broker_dropped: rx.broker_dropped.load(Relaxed),
        cpu_ms_per_1000: per_1000(cpu1 - cpu0),
        broker_cpu_ms_per_1000: per_1000(bcpu1 - bcpu0),
        rss,
        latency: (
            ms(percentile(&by_reply, 0.5)),
            ms(percentile(&by_reply, 0.99)),
        ),
        latency_ts: (
            ms_i(percentile(&by_ts, 0.5)),
            ms_i(percentile(&by_ts, 0.99)),
        ),
        queued: after
            .get("fieldgate_mqtt_queue_depth")
            .copied()
            .unwrap_or(0.0),
        totals: (
            end.get("fieldgate_publications_total")
                .copied()
                .unwrap_or(0.0) as u64,
            rx.broker_received.load(Relaxed),
            rx.total.load(Relaxed),
        ),
    })
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + DEADLINE;
    while !done() {
        if Instant::now() > deadline {
            bail!("no {what} within {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The link: requests per second, bare tokio-modbus against the gateway.

/// The bare loop (run in a child process): read 125 holding registers as fast as the slave
/// answers, for `window`; prints the number of requests per second.
fn bare_loop(addr: SocketAddr, window: Duration) -> anyhow::Result<()> {
    use tokio_modbus::client::Reader as _;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut ctx =
            tokio_modbus::client::tcp::connect_slave(addr, tokio_modbus::Slave(1)).await?;
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < window {
            ctx.read_holding_registers(0, PER_REQUEST).await??;
            n += 1;
        }
        println!("{:.1}", n as f64 / start.elapsed().as_secs_f64());
        anyhow::Ok(())
    })
}

fn bare_rate(env: &Env, slave: &Slave, addr: SocketAddr) -> anyhow::Result<(f64, f64)> {
    let before = slave.reads.load(Relaxed);
    let out = Command::new(std::env::current_exe()?)
        .arg("--bare-loop")
        .arg(addr.to_string())
        .arg("--seconds")
        .arg(env.window.as_secs().to_string())
        .stderr(Stdio::inherit())
        .output()?;
    if !out.status.success() {
        bail!("bare loop failed: {}", out.status);
    }
    let own: f64 = String::from_utf8_lossy(&out.stdout).trim().parse()?;
    let served = f64::from(slave.reads.load(Relaxed).wrapping_sub(before));
    Ok((own, served / env.window.as_secs_f64()))
}

fn link(env: &Env) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (_broker, port) = mosquitto(&env.mosquitto, dir.path(), env.nodelay)?;
    let slave = Arc::new(Slave::new());
    let addr = serve(&env.slave_rt, Arc::clone(&slave))?;
    let bare1 = bare_rate(env, &slave, addr)?;

    let s = Scenario {
        name: "link",
        devices: 1,
        registers: PER_REQUEST * LINK_REQUESTS,
        period: Duration::from_millis(1),
    };
    let gw = gateway(
        &env.gateway,
        dir.path(),
        &mapping(port, &[addr], &s, None, None),
        1,
    )?;
    std::thread::sleep(Duration::from_secs(1));
    let (r0, cpu0) = (slave.reads.load(Relaxed), cpu_seconds(gw.child.pid()));
    let t = Instant::now();
    std::thread::sleep(env.window);
    let (r1, cpu1) = (slave.reads.load(Relaxed), cpu_seconds(gw.child.pid()));
    let gw_rate = f64::from(r1.wrapping_sub(r0)) / t.elapsed().as_secs_f64();
    let gw_cpu_per_request_us = (cpu1 - cpu0) * 1e6 / f64::from(r1.wrapping_sub(r0).max(1));
    drop(gw);

    let bare2 = bare_rate(env, &slave, addr)?;
    let bare = (bare1.0 + bare2.0) / 2.0;
    println!(
        "link: bare tokio-modbus loop {:.0} and {:.0} requests/s (before and after); fieldgate {:.0} \
         requests/s = {:.1} % of bare (125 registers per request, {} s each; gateway CPU {:.1} µs per request)",
        bare1.0,
        bare2.0,
        gw_rate,
        100.0 * gw_rate / bare,
        env.window.as_secs(),
        gw_cpu_per_request_us,
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The broker's ceiling: mosquitto with no gateway in front of it.

/// Append an MQTT 3.1.1 PUBLISH at QoS 0 to `out` (MQTT 3.1.1, section 3.3: fixed header
/// 0x30, remaining length as a variable byte integer (2.2.3), topic name as a UTF-8 string
/// (1.5.3), payload; no packet identifier at QoS 0).
fn encode_publish(topic: &str, payload: &[u8], out: &mut Vec<u8>) {
    out.push(0x30);
    let mut len = 2 + topic.len() + payload.len();
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if len == 0 {
            break;
        }
    }
    out.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    out.extend_from_slice(topic.as_bytes());
    out.extend_from_slice(payload);
}

/// What mosquitto passes on to one subscriber when nothing but the broker limits it: one
/// connection writes pre-encoded QoS 0 PUBLISHes, ten devices' worth of 1,000 values each
/// shaped like the gateway's `json` values, as fast as the broker reads them. The subscriber
/// is the one of the other scenarios. This is the most any publisher can deliver through this
/// broker on this machine: the figure to hold 10 × 1000@0.1 against. Measured with the
/// broker's `set_tcp_nodelay` as given.
fn ceiling(env: &Env, nodelay: bool) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (broker, port) = mosquitto(&env.mosquitto, dir.path(), nodelay)?;
    let rx = Arc::new(Received::default());
    let sub = subscribe(port, Vec::new(), Arc::clone(&rx));
    wait_for("the subscriber's SubAck", || rx.subscribed.load(Relaxed))?;

    let mut conn = TcpStream::connect(("127.0.0.1", port))?;
    conn.set_nodelay(true)?;
    conn.set_read_timeout(Some(DEADLINE))?;
    conn.set_write_timeout(Some(DEADLINE))?;
    // CONNECT (section 3.1): protocol name "MQTT", level 4, clean session, keep-alive 60 s.
    let id = b"bench-ceiling";
    let mut connect = vec![0x10, (12 + id.len()) as u8, 0, 4];
    connect.extend_from_slice(b"MQTT");
    connect.extend_from_slice(&[4, 0x02, 0, 60, 0, id.len() as u8]);
    connect.extend_from_slice(id);
    conn.write_all(&connect)?;
    let mut connack = [0u8; 4];
    conn.read_exact(&mut connack)?;
    if connack[0] != 0x20 || connack[3] != 0 {
        bail!("mosquitto refused the publisher: CONNACK {connack:02x?}");
    }
    let mut block = Vec::new();
    for d in 0..10 {
        for a in 0..1000u16 {
            let payload =
                format!(r#"{{"quality":"good","ts":"2026-12-01T00:00:00.000Z","value":{a}}}"#);
            encode_publish(&format!("bench/{d}/{a}"), payload.as_bytes(), &mut block);
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut sent = 0u64;
            while !stop.load(Relaxed) && conn.write_all(&block).is_ok() {
                sent += 10_000;
            }
            sent
        })
    };
    // Warm-up, then the window.
    std::thread::sleep(Duration::from_secs(1));
    let (n0, cpu0, t) = (
        rx.arrived.load(Relaxed),
        cpu_seconds(broker.pid()),
        Instant::now(),
    );
    std::thread::sleep(env.window);
    let (n1, cpu1, elapsed) = (
        rx.arrived.load(Relaxed),
        cpu_seconds(broker.pid()),
        t.elapsed().as_secs_f64(),
    );
    stop.store(true, Relaxed);
    rx.stop.store(true, Relaxed);
    // Killing the broker ends a write that waits for it.
    drop(broker);
    let sent = writer.join().unwrap_or(0);
    let _ = sub.join();
    let passed = n1.saturating_sub(n0);
    println!(
        "ceiling: mosquitto (set_tcp_nodelay {nodelay}) alone passed {:.0} messages/s to the \
         subscriber ({} s; QoS 0, pre-encoded, written flat out by one connection, no gateway: \
         {} written in all), with {:.1} ms of broker CPU per 1,000",
        passed as f64 / elapsed,
        env.window.as_secs(),
        sent,
        (cpu1 - cpu0) * 1e6 / passed.max(1) as f64,
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------

fn find_gateway(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let path = match given {
        Some(p) => p,
        // target/<profile>/examples/bench_e2e -> target/<profile>/fieldgate
        None => std::env::current_exe()?
            .parent()
            .and_then(Path::parent)
            .context("no directory above this example")?
            .join("fieldgate"),
    };
    if !path.exists() {
        bail!(
            "{} not found: build it first (cargo build --release), or pass --gateway",
            path.display()
        );
    }
    Ok(path)
}

fn find_mosquitto(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    given
        .or_else(|| {
            ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
                .into_iter()
                .map(PathBuf::from)
                .find(|p| p.exists())
        })
        .context("mosquitto is not installed: apt-get install -y mosquitto")
}

fn print_row(f: &Figures) {
    let drops = if f.drops.is_empty() {
        "none".to_owned()
    } else {
        f.drops
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    println!(
        "{:<12} {:>3} {:>9} {:>9} {:>9} {:>6.1}% {:<22} {:>8.3} {:>5.1} ({:>4.1}) {:>7.2} {:>7.2}",
        f.scenario,
        f.qos,
        f.requested,
        f.read,
        f.delivered,
        100.0 * f.delivered as f64 / f.requested.max(1) as f64,
        drops,
        f.cpu_ms_per_1000,
        f.rss.0,
        f.rss.1,
        f.latency.0,
        f.latency.1,
    );
    println!(
        "{:<12}     ts-based latency p50 {:.1} ms p99 {:.1} ms; broker CPU {:.3} ms per 1,000; {} still in the gateway's buffer; RSS {:.1} MB = {:.1} anon + {:.1} file",
        "",
        f.latency_ts.0,
        f.latency_ts.1,
        f.broker_cpu_ms_per_1000,
        f.queued,
        f.rss.0,
        f.rss.2,
        f.rss.3,
    );
    println!(
        "{:<12}     whole run: gateway accepted {}, broker received {} (with status messages; its $SYS lags up to 1 s), dropped {}; subscriber got {}",
        "", f.totals.0, f.totals.1, f.broker_dropped, f.totals.2,
    );
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let window = Duration::from_secs(args.seconds.max(1));
    if let Some(addr) = args.bare_loop {
        return bare_loop(addr, window);
    }
    let env = Env {
        gateway: find_gateway(args.gateway)?,
        mosquitto: find_mosquitto(args.mosquitto)?,
        sink: args.broker == "sink",
        nodelay: args.broker_nodelay,
        durable: args.durable,
        slave_rt: tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?,
        window,
    };
    let names: Vec<String> = if args.scenario.is_empty() {
        ALL.iter().map(|s| (*s).to_owned()).collect()
    } else {
        args.scenario
    };
    let scenarios = names
        .iter()
        .filter(|n| *n != "link" && *n != "ceiling")
        .map(|n| scenario(n))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let qos = if args.qos.is_empty() {
        vec![0, 1]
    } else {
        args.qos
    };
    if let Some(q) = qos.iter().find(|q| **q > 1) {
        bail!("--qos {q}: 0 or 1");
    }
    println!(
        "gateway {} (buffer {}), broker {}, window {} s per run",
        env.gateway.display(),
        if env.durable {
            "on disk"
        } else {
            "in memory only"
        },
        if env.sink {
            "sink (read -> broker latency)".to_owned()
        } else {
            format!(
                "{} (set_tcp_nodelay {})",
                env.mosquitto.display(),
                env.nodelay
            )
        },
        window.as_secs()
    );
    if !scenarios.is_empty() {
        println!(
            "{:<12} {:>3} {:>9} {:>9} {:>9} {:>7} {:<22} {:>8} {:>12} {:>7} {:>7}",
            "scenario",
            "qos",
            "requested",
            "read",
            "delivered",
            "deliv",
            "drops by reason",
            "CPU ms/k",
            "RSS MB(peak)",
            "p50 ms",
            "p99 ms"
        );
    }
    for s in &scenarios {
        for &q in &qos {
            match run(&env, s, q) {
                Ok(f) => print_row(&f),
                Err(e) => println!("{:<12} {q:>3} failed: {e:#}", s.name),
            }
        }
    }
    if names.iter().any(|n| n == "link") {
        link(&env)?;
    }
    if names.iter().any(|n| n == "ceiling") {
        ceiling(&env, true)?;
        ceiling(&env, false)?;
    }
    Ok(())
}
