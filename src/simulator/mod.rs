//! `fieldgate simulate`: Modbus slaves that behave like plant equipment, for tests and demos.
//!
//! Built on tokio-modbus's servers (TCP, RTU on a serial port, RTU over TCP). The physics lives
//! in pure modules (`water_tower`); this file serves one or more units, ticks simulated time,
//! and injects faults per unit: no answer, a late (valid) answer, garbage bytes, a Modbus
//! exception, or closing the connection. A TCP listener can also be limited to a number of
//! connections at a time (many real devices accept one). Quirks (`quirks`) make every unit
//! bend the Modbus rules the way some real devices do: the function-code and address quirks
//! are applied where requests are served, the framing ones (transaction id, stale frame,
//! echo, close after reply) in the stream wrappers. Faults and quirks are set at start and
//! changed at run time over stdin (`fault UNIT MODE`, `connections N`, `quirk SPEC`,
//! `quirk clear`).

pub mod energy_meter;
pub mod quirks;
pub mod rtu_frame;
pub mod s7;
pub mod water_tower;

pub use quirks::{Quirk, QuirkError, Quirks};

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_modbus::{ExceptionCode, Response, SlaveRequest};
use tokio_serial::SerialPort as _;
use tokio_util::sync::CancellationToken;

use water_tower::WaterTower;

/// A simulated slave's register map and physics. Tables a profile does not have answer
/// ILLEGAL DATA ADDRESS.
pub trait Profile: Send {
    fn step(&mut self, dt: f64);
    fn read_input_registers(&self, _addr: u16, _cnt: u16) -> Result<Vec<u16>, ExceptionCode> {
        Err(ExceptionCode::IllegalDataAddress)
    }
    fn read_holding_registers(&self, _addr: u16, _cnt: u16) -> Result<Vec<u16>, ExceptionCode> {
        Err(ExceptionCode::IllegalDataAddress)
    }
    fn read_discrete_inputs(&self, _addr: u16, _cnt: u16) -> Result<Vec<bool>, ExceptionCode> {
        Err(ExceptionCode::IllegalDataAddress)
    }
    fn read_coils(&self, _addr: u16, _cnt: u16) -> Result<Vec<bool>, ExceptionCode> {
        Err(ExceptionCode::IllegalDataAddress)
    }
    fn write_coils(&mut self, _addr: u16, _values: &[bool]) -> Result<(), ExceptionCode> {
        Err(ExceptionCode::IllegalDataAddress)
    }
    fn write_holding_registers(
        &mut self,
        _addr: u16,
        _values: &[u16],
    ) -> Result<(), ExceptionCode> {
        Err(ExceptionCode::IllegalDataAddress)
    }
}

/// The addresses `addr..addr+cnt` of a table of `size`, or the Modbus exception for them.
pub fn check_range(
    addr: u16,
    cnt: u16,
    size: u16,
    max: u16,
) -> Result<std::ops::Range<usize>, ExceptionCode> {
    if cnt == 0 || cnt > max {
        return Err(ExceptionCode::IllegalDataValue);
    }
    let end = u32::from(addr) + u32::from(cnt);
    if end > u32::from(size) {
        return Err(ExceptionCode::IllegalDataAddress);
    }
    Ok(usize::from(addr)..end as usize)
}

/// Which plant to simulate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    WaterTower,
    EnergyMeter,
    /// The energy meter with the Eastron SDM630's register map (`--profile sdm630`).
    EnergyMeterSdm630,
}

/// How a simulated unit misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultMode {
    /// Answers normally.
    None,
    /// Never answers.
    Silent,
    /// Answers correctly, but only after `TowerOptions::late` (after the master gave up).
    Late,
    /// Answers with random bytes (RTU serial only; on TCP it is silent).
    Garbage,
    /// Answers every request with this Modbus exception code.
    Exception(u8),
    /// Closes the connection instead of answering (TCP; on a serial bus it is silent).
    Close,
}

impl FromStr for FaultMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(FaultMode::None),
            "silent" => Ok(FaultMode::Silent),
            "late" => Ok(FaultMode::Late),
            "garbage" => Ok(FaultMode::Garbage),
            "close" => Ok(FaultMode::Close),
            _ => match s.strip_prefix("exception:").map(str::parse::<u8>) {
                Some(Ok(code)) if code > 0 && code < 128 => Ok(FaultMode::Exception(code)),
                _ => Err(format!(
                    "unknown fault `{s}` (none, silent, late, garbage, close, exception:CODE with \
                     CODE 1-127)"
                )),
            },
        }
    }
}

/// Settings of simulated plants.
#[derive(Debug, Clone)]
pub struct TowerOptions {
    pub kind: Kind,
    /// Unit ids served; each is its own tower.
    pub units: Vec<u8>,
    /// Level at start per unit (cm); the last one repeats.
    pub levels: Vec<f64>,
    pub seed: u64,
    /// Simulated seconds per real second; 0 freezes the plant.
    pub speed: f64,
    /// Switch automatic control on at start (holding register 4).
    pub auto: bool,
    /// Faults at start.
    pub faults: Vec<(u8, FaultMode)>,
    /// Delay of a late answer.
    pub late: Duration,
    /// Read `fault UNIT MODE` and `connections N` commands from stdin.
    pub control: bool,
    /// TCP: most connections served at a time (0: no limit); more are closed at once.
    pub max_connections: usize,
    /// Quirks at start, for every unit.
    pub quirks: Quirks,
}

/// Where the simulator serves.
#[derive(Debug)]
pub enum Endpoint {
    Tcp(TcpListener),
    RtuOverTcp(TcpListener),
    /// A serial port opened with `exclusive(false)`, so the fault writer can open it too.
    Rtu(tokio_serial::SerialStream),
}

struct Unit {
    id: u8,
    tower: Box<dyn Profile>,
    fault: FaultMode,
}

type RawPort = Arc<Mutex<Box<dyn tokio_serial::SerialPort>>>;

struct Plant {
    units: Mutex<Vec<Unit>>,
    late: Duration,
    /// RTU serial only: a second handle on the port, for late frames and garbage.
    raw: Option<RawPort>,
    /// RTU: stay silent for other units' requests (TCP answers with an exception).
    rtu: bool,
    /// TCP: connections open now, and the most allowed (0: no limit).
    live: Arc<AtomicUsize>,
    max_connections: AtomicUsize,
    /// The quirks in force; the connections read them too.
    quirks: Arc<Mutex<Quirks>>,
    /// Requests served, for `busy=N`.
    served: Mutex<u64>,
    /// When the last reply (of any unit, on any connection) was made, for `min-gap`.
    last_reply: Arc<Mutex<Option<Instant>>>,
}

/// A served TCP connection: reads end (EOF) once a `close` fault fired on it, so the server
/// drops it; its slot in the connection limit is freed when it is dropped.
///
/// It also applies the framing quirks. The server hands over each reply as writes followed
/// by one flush, so the bytes written since the last flush are one reply: on flush they get
/// their transaction id rewritten (`tid-zero`, `tid-swap`), the previous reply put in front
/// (`stale-prefix`), and the connection is shut down after them (`close-after-reply`). With
/// `echo` (RTU over TCP) every byte read is written back at once.
struct Connection {
    stream: tokio::net::TcpStream,
    closed: Arc<AtomicBool>,
    live: Arc<AtomicUsize>,
    quirks: Arc<Mutex<Quirks>>,
    /// RTU framing (RTU over TCP) rather than MBAP.
    rtu: bool,
    /// The reply being written: the bytes handed over since the last flush.
    reply: Vec<u8>,
    /// Bytes due on the wire, in order (echoes and replies), and how many of them went out.
    out: Vec<u8>,
    sent: usize,
    /// MBAP: the previous reply as it went out, for `stale-prefix`.
    previous: Option<Vec<u8>>,
    /// Shut the connection down once `out` is written (`close-after-reply`).
    close_when_sent: bool,
}

impl Connection {
    /// Write out what is due.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while self.sent < self.out.len() {
            let n = ready!(Pin::new(&mut self.stream).poll_write(cx, &self.out[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.out.clear();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }

    /// Queue the reply handed over since the last flush, with the framing quirks applied.
    fn queue_reply(&mut self) {
        if self.reply.is_empty() {
            return;
        }
        let mut reply = std::mem::take(&mut self.reply);
        let q = lock(&self.quirks);
        if !self.rtu {
            if let [a, b, ..] = reply[..] {
                reply[..2].copy_from_slice(&q.transaction_id([a, b]));
            }
            if let (true, Some(previous)) = (q.stale_prefix, &self.previous) {
                self.out.extend_from_slice(previous);
            }
            self.previous = Some(reply.clone());
        }
        self.out.extend_from_slice(&reply);
        self.close_when_sent |= q.close_after_reply;
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::SeqCst);
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.closed.load(Ordering::SeqCst) {
            return Poll::Ready(Ok(()));
        }
        // Echoes the socket had no room for go out as soon as it has.
        if let Poll::Ready(Err(e)) = self.poll_drain(cx) {
            return Poll::Ready(Err(e));
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.stream).poll_read(cx, buf))?;
        if self.rtu && lock(&self.quirks).echo {
            let echo = buf.filled()[before..].to_vec();
            self.out.extend_from_slice(&echo);
            if let Poll::Ready(Err(e)) = self.poll_drain(cx) {
                return Poll::Ready(Err(e));
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Connection {
    /// Takes the bytes into the reply being written; they go out on flush.
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.reply.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.queue_reply();
        ready!(self.poll_drain(cx))?;
        ready!(Pin::new(&mut self.stream).poll_flush(cx))?;
        if self.close_when_sent {
            // A FIN now; the server drops the connection at its next read (EOF).
            let _ = ready!(Pin::new(&mut self.stream).poll_shutdown(cx));
            self.closed.store(true, Ordering::SeqCst);
        }
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned lock only means a panic elsewhere; the plant state is still usable.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

type Reply = Pin<Box<dyn Future<Output = Result<Option<Response>, ExceptionCode>> + Send>>;

impl Plant {
    fn write_raw(&self, bytes: Vec<u8>, after: Duration) {
        if let Some(raw) = self.raw.clone() {
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                let _ = tokio::task::spawn_blocking(move || {
                    std::io::Write::write_all(&mut **lock(&raw), &bytes)
                })
                .await;
            });
        }
    }

    /// Take a new TCP connection, unless the limit is reached (then it is closed at once).
    fn admit(&self, stream: tokio::net::TcpStream) -> Option<(Arc<AtomicBool>, Connection)> {
        let max = self.max_connections.load(Ordering::SeqCst);
        let now = self.live.fetch_add(1, Ordering::SeqCst) + 1;
        let closed = Arc::new(AtomicBool::new(false));
        let conn = Connection {
            stream,
            closed: Arc::clone(&closed),
            live: Arc::clone(&self.live),
            quirks: Arc::clone(&self.quirks),
            rtu: self.rtu,
            reply: Vec::new(),
            out: Vec::new(),
            sent: 0,
            previous: None,
            close_when_sent: false,
        };
        if max > 0 && now > max {
            tracing::debug!(max, "connection refused: limit reached");
            return None; // dropping `conn` frees the slot and closes the socket
        }
        Some((closed, conn))
    }

    /// RTU serial `echo`: the request's frame goes back on the bus before anything else.
    /// A blocking write, but of a few bytes to a port that is not flow-controlled, so it does
    /// not hold the task; the reply is written after it, so the order on the wire is kept.
    fn echo_on_serial(&self, req: &SlaveRequest<'static>) {
        let (Some(raw), Some(frame)) = (&self.raw, rtu_frame::encode_request(req)) else {
            return;
        };
        if let Err(error) = std::io::Write::write_all(&mut **lock(raw), &frame) {
            tracing::debug!(%error, "echo not written");
        }
    }

    /// Serve one request, with the unit's fault and the simulator's quirks. `accepted`: when
    /// the TCP connection was accepted (`None` on a serial bus).
    fn call(
        &self,
        req: SlaveRequest<'static>,
        closed: &AtomicBool,
        accepted: Option<Instant>,
    ) -> Reply {
        let quirks = lock(&self.quirks).clone();
        if quirks.echo {
            self.echo_on_serial(&req);
        }
        let last_reply = *lock(&self.last_reply);
        if quirks.swallows(Instant::now(), accepted, last_reply) {
            tracing::debug!(
                unit = req.slave,
                "request swallowed (connect-silence or min-gap)"
            );
            return Box::pin(std::future::ready(Ok(None)));
        }
        if let Some(n) = quirks.busy_every {
            let mut served = lock(&self.served);
            *served += 1;
            if served.is_multiple_of(u64::from(n)) {
                return Box::pin(std::future::ready(Err(ExceptionCode::ServerDeviceBusy)));
            }
        }
        let reply = self.call_unit(req, closed, &quirks);
        let delay = quirks.delay;
        let last_reply = Arc::clone(&self.last_reply);
        Box::pin(async move {
            if let Some(delay) = delay {
                tokio::time::sleep(delay).await;
            }
            let reply = reply.await;
            if !matches!(reply, Ok(None)) {
                *lock(&last_reply) = Some(Instant::now());
            }
            reply
        })
    }

    fn call_unit(&self, req: SlaveRequest<'static>, closed: &AtomicBool, quirks: &Quirks) -> Reply {
        let function = req.request.function_code().value();
        let (reply, fault) = {
            let mut units = lock(&self.units);
            // Modbus TCP's "this device" unit 255 reaches a lone unit.
            let lone = !self.rtu && req.slave == 255 && units.len() == 1;
            match units.iter_mut().find(|u| u.id == req.slave || lone) {
                // A unit that will not answer does not act on the request either (reads have
                // a side effect: the read counter).
                Some(u) if matches!(u.fault, FaultMode::None | FaultMode::Late) => {
                    (quirks.serve(u.tower.as_mut(), req.request), u.fault)
                }
                Some(u) => (Err(ExceptionCode::ServerDeviceFailure), u.fault),
                None if self.rtu => return Box::pin(std::future::ready(Ok(None))),
                None => (Err(ExceptionCode::GatewayTargetDevice), FaultMode::None),
            }
        };
        match fault {
            FaultMode::None => Box::pin(std::future::ready(reply.map(Some))),
            FaultMode::Silent => Box::pin(std::future::ready(Ok(None))),
            FaultMode::Late if self.raw.is_some() => {
                if let Some(frame) = rtu_frame::encode_reply(req.slave, function, &reply) {
                    self.write_raw(frame, self.late);
                }
                Box::pin(std::future::ready(Ok(None)))
            }
            FaultMode::Late => {
                let late = self.late;
                Box::pin(async move {
                    tokio::time::sleep(late).await;
                    reply.map(Some)
                })
            }
            FaultMode::Exception(code) => {
                Box::pin(std::future::ready(Err(ExceptionCode::new(code))))
            }
            FaultMode::Close => {
                closed.store(true, Ordering::SeqCst);
                Box::pin(std::future::ready(Ok(None)))
            }
            FaultMode::Garbage => {
                let n = fastrand::usize(5..24);
                let bytes: Vec<u8> = (0..n).map(|_| fastrand::u8(..)).collect();
                self.write_raw(bytes, Duration::from_millis(3));
                Box::pin(std::future::ready(Ok(None)))
            }
        }
    }
}

#[derive(Clone)]
struct Service {
    plant: Arc<Plant>,
    /// Set to close this connection (TCP).
    closed: Arc<AtomicBool>,
    /// When this TCP connection was accepted (`None` on a serial bus), for `connect-silence`.
    accepted: Option<Instant>,
}

impl tokio_modbus::server::Service for Service {
    type Request = SlaveRequest<'static>;
    type Response = Option<Response>;
    type Exception = ExceptionCode;
    type Future = Reply;

    fn call(&self, req: Self::Request) -> Self::Future {
        self.plant.call(req, &self.closed, self.accepted)
    }
}

/// What a control line that is not understood is told.
const CONTROL_USAGE: &str = "not understood (fault UNIT none|silent|late|garbage|close|\
     exception:CODE, connections N, quirk SPEC..., or quirk clear)";

/// Apply one control line: `fault UNIT MODE`, `connections N`, `quirk SPEC...` (one or more
/// specs, all or none applied) or `quirk clear`. The error is the reply line's tail.
fn control(plant: &Plant, line: &str) -> Result<(), String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        ["connections", n] => match n.parse::<usize>() {
            Ok(n) => {
                plant.max_connections.store(n, Ordering::SeqCst);
                Ok(())
            }
            Err(_) => Err(CONTROL_USAGE.to_owned()),
        },
        ["fault", unit, mode] => match (unit.parse::<u8>(), mode.parse::<FaultMode>()) {
            (Ok(id), Ok(m)) => lock(&plant.units)
                .iter_mut()
                .find(|u| u.id == id)
                .map(|u| u.fault = m)
                .ok_or_else(|| CONTROL_USAGE.to_owned()),
            _ => Err(CONTROL_USAGE.to_owned()),
        },
        ["quirk", "clear"] => {
            *lock(&plant.quirks) = Quirks::default();
            Ok(())
        }
        ["quirk", specs @ ..] if !specs.is_empty() => {
            let parsed = specs
                .iter()
                .map(|s| s.parse::<Quirk>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| e.to_string())?;
            let mut quirks = lock(&plant.quirks);
            for q in parsed {
                quirks.add(q);
            }
            Ok(())
        }
        _ => Err(CONTROL_USAGE.to_owned()),
    }
}

/// Reads control lines (see [`control`]) from stdin and applies them; prints the line and
/// `ok` (`fault 1 silent ok`, `quirk no-fc6 ok`), or the line and what is wrong.
fn control_from_stdin(plant: Arc<Plant>, shutdown: CancellationToken) {
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        loop {
            let line = tokio::select! {
                () = shutdown.cancelled() => return,
                l = lines.next_line() => match l { Ok(Some(l)) => l, _ => return },
            };
            match control(&plant, &line) {
                Ok(()) => println!("{line} ok"),
                Err(e) => println!("{line}: {e}"),
            }
        }
    });
}

type Admitted = std::io::Result<Option<(Service, Connection)>>;

/// A new TCP connection's service, unless the plant's connection limit turns it away.
fn admit(
    plant: &Arc<Plant>,
) -> impl Fn(tokio::net::TcpStream, SocketAddr) -> std::future::Ready<Admitted> {
    let plant = Arc::clone(plant);
    move |stream, _addr| {
        let admitted = plant.admit(stream).map(|(closed, conn)| {
            let service = Service {
                plant: Arc::clone(&plant),
                closed,
                accepted: Some(Instant::now()),
            };
            (service, conn)
        });
        std::future::ready(Ok(admitted))
    }
}

/// Serve simulated plants at `endpoint` until `shutdown`. The physics ticks every 50 ms.
pub async fn serve_water_tower(
    endpoint: Endpoint,
    opts: TowerOptions,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let units = opts
        .units
        .iter()
        .enumerate()
        .map(|(i, &id)| {
            let seed = opts.seed.wrapping_add(u64::from(id));
            let tower: Box<dyn Profile> = match opts.kind {
                Kind::WaterTower => {
                    let level = opts
                        .levels
                        .get(i)
                        .or(opts.levels.last())
                        .copied()
                        .unwrap_or(200.0);
                    let mut tower = WaterTower::new(seed, level);
                    if opts.auto {
                        let _ = tower.write_holding_registers(4, &[1]);
                    }
                    Box::new(tower)
                }
                Kind::EnergyMeter => Box::new(energy_meter::EnergyMeter::new(seed)),
                Kind::EnergyMeterSdm630 => {
                    Box::new(energy_meter::Sdm630(energy_meter::EnergyMeter::new(seed)))
                }
            };
            let fault = opts
                .faults
                .iter()
                .find(|(u, _)| *u == id)
                .map_or(FaultMode::None, |(_, f)| *f);
            Unit { id, tower, fault }
        })
        .collect();
    let raw: Option<RawPort> = match &endpoint {
        Endpoint::Rtu(port) => {
            // tokio-serial cannot clone its handle: open the port a second time, blocking, for
            // the fault writer. Both handles are opened shared (see `Endpoint::Rtu`).
            let name = port
                .name()
                .ok_or_else(|| std::io::Error::other("serial port without a name"))?;
            let second = tokio_serial::new(
                name,
                tokio_serial::SerialPort::baud_rate(port).map_err(std::io::Error::other)?,
            )
            .exclusive(false)
            .open()
            .map_err(std::io::Error::other)?;
            Some(Arc::new(Mutex::new(second)))
        }
        _ => None,
    };
    let rtu = !matches!(endpoint, Endpoint::Tcp(_));
    let plant = Arc::new(Plant {
        units: Mutex::new(units),
        late: opts.late,
        raw,
        rtu,
        live: Arc::new(AtomicUsize::new(0)),
        max_connections: AtomicUsize::new(opts.max_connections),
        quirks: Arc::new(Mutex::new(opts.quirks)),
        served: Mutex::new(0),
        last_reply: Arc::new(Mutex::new(None)),
    });
    if opts.control {
        control_from_stdin(Arc::clone(&plant), shutdown.clone());
    }
    let ticker = {
        let plant = Arc::clone(&plant);
        let shutdown = shutdown.clone();
        let speed = opts.speed;
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(Duration::from_millis(50));
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last = tokio::time::Instant::now();
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    now = interval.tick() => {
                        let dt = now.duration_since(last).as_secs_f64() * speed;
                        last = now;
                        for u in lock(&plant.units).iter_mut() {
                            u.tower.step(dt);
                        }
                    }
                }
            }
        })
    };
    let service = Service {
        plant: Arc::clone(&plant),
        closed: Arc::new(AtomicBool::new(false)),
        accepted: None,
    };
    let on_error = |e: std::io::Error| tracing::debug!(error = %e, "simulator connection ended");
    let result = match endpoint {
        Endpoint::Tcp(listener) => {
            let on_connected = admit(&plant);
            tokio_modbus::server::tcp::Server::new(listener)
                .serve_until(&on_connected, on_error, shutdown.cancelled_owned())
                .await
                .map(|_| ())
        }
        Endpoint::RtuOverTcp(listener) => {
            let on_connected = admit(&plant);
            tokio_modbus::server::rtu_over_tcp::Server::new(listener)
                .serve_until(&on_connected, on_error, shutdown.cancelled_owned())
                .await
                .map(|_| ())
        }
        Endpoint::Rtu(port) => tokio_modbus::server::rtu::Server::new(port)
            .serve_until(service, shutdown.cancelled_owned())
            .await
            .map(|_| ()),
    };
    ticker.abort();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plant() -> Plant {
        Plant {
            units: Mutex::new(vec![Unit {
                id: 1,
                tower: Box::new(WaterTower::new(1, 100.0)),
                fault: FaultMode::None,
            }]),
            late: Duration::from_secs(1),
            raw: None,
            rtu: false,
            live: Arc::new(AtomicUsize::new(0)),
            max_connections: AtomicUsize::new(0),
            quirks: Arc::new(Mutex::new(Quirks::default())),
            served: Mutex::new(0),
            last_reply: Arc::new(Mutex::new(None)),
        }
    }

    #[test]
    fn control_lines_switch_quirks_on_all_or_none_and_clear_them() {
        let p = plant();
        assert_eq!(control(&p, "quirk no-fc6 max-read=3"), Ok(()));
        let want = Quirks::parse(&["no-fc6", "max-read=3"]).unwrap();
        assert_eq!(*lock(&p.quirks), want);
        let e = control(&p, "quirk echo bogus").unwrap_err();
        assert!(e.contains("unknown quirk `bogus`"), "{e}");
        assert_eq!(*lock(&p.quirks), want, "nothing of a bad line applies");
        assert_eq!(control(&p, "quirk clear"), Ok(()));
        assert_eq!(*lock(&p.quirks), Quirks::default());
        assert!(control(&p, "quirk").unwrap_err().contains("quirk SPEC"));
        // The other lines still work, and an unknown unit is refused.
        assert_eq!(control(&p, "fault 1 silent"), Ok(()));
        assert_eq!(lock(&p.units)[0].fault, FaultMode::Silent);
        assert!(control(&p, "fault 9 silent").is_err());
        assert_eq!(control(&p, "connections 1"), Ok(()));
        assert_eq!(p.max_connections.load(Ordering::SeqCst), 1);
    }
}
