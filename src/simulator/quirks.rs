//! Quirks of real devices that bend the Modbus rules, for `fieldgate simulate --quirk SPEC` and
//! the stdin line `quirk SPEC`: the spec parser, the set in force, and how a request is served
//! under them. Pure: no I/O and no clock (times come in as arguments).
//!
//! Unlike faults (one per unit: the unit fails), quirks apply to every unit of a simulator and
//! describe a device that works, but in its own way. The framing quirks (transaction id, stale
//! frame, echo, close after reply) are applied by the simulator's stream wrappers; this module
//! only says which are on.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

use tokio_modbus::{ExceptionCode, Request, Response};

use super::Profile;
use crate::vocabulary::RegisterKind;

/// Every quirk's spec form, for error messages and `--help`.
pub const VALID: &str = "close-after-reply, no-fc5, no-fc6, no-fc16, max-read=N, \
     hole=KIND:ADDR, connect-silence=DURATION, min-gap=DURATION, tid-zero, tid-swap, \
     stale-prefix, echo, clamp=ADDR:MIN:MAX, poke=KIND:ADDR:VALUE, delay=DURATION, busy=N \
     (KIND: co, di, ir, hr)";

/// One quirk, as written after `--quirk` or `quirk`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quirk {
    /// `close-after-reply`: closes the TCP connection after each reply (TCP and RTU over TCP),
    /// like cheap serial-to-Ethernet converters and some PLC stacks that serve one request
    /// per connection.
    CloseAfterReply,
    /// `no-fc5`: FC5 (write single coil) answers ILLEGAL FUNCTION; FC15 works. Devices that
    /// implement only the "multiple" writes.
    NoFc5,
    /// `no-fc6`: FC6 (write single register) answers ILLEGAL FUNCTION; FC16 works. Many
    /// inverters and meters that accept only FC16.
    NoFc6,
    /// `no-fc16`: FC16 (write multiple registers) answers ILLEGAL FUNCTION; FC6 works. Small
    /// controllers that implement only single writes.
    NoFc16,
    /// `max-read=N`: a read (FC1-4) of more than N registers or bits answers ILLEGAL DATA
    /// ADDRESS, as SDM energy meters do past their limit.
    MaxRead(u16),
    /// `hole=KIND:ADDR`: the address does not exist, so any read or write whose range covers
    /// it answers ILLEGAL DATA ADDRESS (a gap inside a block a master merged into one read).
    Hole(RegisterKind, u16),
    /// `connect-silence=DURATION`: requests within DURATION of the TCP connection being
    /// accepted get no answer, like devices (some gateways, Wi-Fi dongles) still starting
    /// their session.
    ConnectSilence(Duration),
    /// `min-gap=DURATION`: a request less than DURATION after the previous reply (on any
    /// connection) gets no answer, like a slow PLC that needs a pause between requests.
    MinGap(Duration),
    /// `tid-zero`: TCP replies carry transaction id 0, like some embedded stacks that never
    /// copy it from the request.
    TidZero,
    /// `tid-swap`: TCP replies carry the request's transaction id with its two bytes swapped
    /// (a little-endian bug seen in device firmware).
    TidSwap,
    /// `stale-prefix`: each TCP reply is preceded, in the same segment, by the previous reply
    /// with its old transaction id: a device with a stale frame left in its buffer.
    StalePrefix,
    /// `echo`: every request frame comes back before the reply (RTU on a serial port and RTU
    /// over TCP), like an RS-485 adapter without echo suppression.
    Echo,
    /// `clamp=ADDR:MIN:MAX`: a write to holding register ADDR stores the value clamped to
    /// MIN..=MAX and answers success, so the read-back differs (a device that silently limits
    /// a setpoint).
    Clamp { address: u16, min: u16, max: u16 },
    /// `poke=KIND:ADDR:VALUE`: the register or bit at ADDR always reads VALUE, whatever the
    /// profile says (or even outside its tables); writes to it are accepted and ignored. For
    /// special values: `poke=ir:20:0x7FC0` + `poke=ir:21:0` is an f32 NaN, `poke=hr:30:0x8000`
    /// a SunSpec "not implemented".
    Poke(RegisterKind, u16, u16),
    /// `delay=DURATION`: every request is answered after DURATION (a slow device, for all
    /// units; the `late` fault is per unit).
    Delay(Duration),
    /// `busy=N`: every Nth request answers SERVER DEVICE BUSY (exception 6), like a device or
    /// gateway that is serving another master at the time.
    Busy(u32),
}

/// A bad quirk spec: the spec, why, and the list of valid ones.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("quirk `{spec}`: {reason} (valid: {VALID})")]
pub struct QuirkError {
    pub spec: String,
    pub reason: String,
}

fn kind(s: &str) -> Result<RegisterKind, String> {
    match s {
        "co" => Ok(RegisterKind::Coil),
        "di" => Ok(RegisterKind::DiscreteInput),
        "ir" => Ok(RegisterKind::InputRegister),
        "hr" => Ok(RegisterKind::HoldingRegister),
        _ => Err(format!("`{s}` is not a table (co, di, ir or hr)")),
    }
}

fn kind_name(k: RegisterKind) -> &'static str {
    match k {
        RegisterKind::Coil => "co",
        RegisterKind::DiscreteInput => "di",
        RegisterKind::InputRegister => "ir",
        RegisterKind::HoldingRegister => "hr",
    }
}

/// A u16 written in decimal or as `0x` hex.
fn number(s: &str) -> Result<u16, String> {
    let parsed = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u16::from_str_radix(hex, 16),
        None => s.parse::<u16>(),
    };
    parsed.map_err(|_| format!("`{s}` is not a number 0-65535 (decimal or 0x hex)"))
}

fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("`{s}` is not a duration like 2s or 1500ms: {e}"))
}

/// Split `v` at `:` into exactly `n` parts, or say what `form` expects.
fn parts<'a>(v: &'a str, n: usize, form: &str) -> Result<Vec<&'a str>, String> {
    let p: Vec<&str> = v.split(':').collect();
    if p.len() == n {
        Ok(p)
    } else {
        Err(format!("write {form}"))
    }
}

impl FromStr for Quirk {
    type Err = QuirkError;

    fn from_str(spec: &str) -> Result<Self, QuirkError> {
        let (name, value) = match spec.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (spec, None),
        };
        let flag = |q: Quirk| match value {
            None => Ok(q),
            Some(_) => Err(format!("`{name}` takes no value")),
        };
        let need = |form: &str| value.ok_or_else(|| format!("write {form}"));
        let parsed = match name {
            "close-after-reply" => flag(Quirk::CloseAfterReply),
            "no-fc5" => flag(Quirk::NoFc5),
            "no-fc6" => flag(Quirk::NoFc6),
            "no-fc16" => flag(Quirk::NoFc16),
            "tid-zero" => flag(Quirk::TidZero),
            "tid-swap" => flag(Quirk::TidSwap),
            "stale-prefix" => flag(Quirk::StalePrefix),
            "echo" => flag(Quirk::Echo),
            "max-read" => need("max-read=N").and_then(|v| match number(v)? {
                0 => Err("max-read must be at least 1".to_owned()),
                n => Ok(Quirk::MaxRead(n)),
            }),
            "hole" => need("hole=KIND:ADDR").and_then(|v| {
                let p = parts(v, 2, "hole=KIND:ADDR")?;
                Ok(Quirk::Hole(kind(p[0])?, number(p[1])?))
            }),
            "connect-silence" => need("connect-silence=DURATION")
                .and_then(duration)
                .map(Quirk::ConnectSilence),
            "min-gap" => need("min-gap=DURATION")
                .and_then(duration)
                .map(Quirk::MinGap),
            "delay" => need("delay=DURATION").and_then(duration).map(Quirk::Delay),
            "busy" => need("busy=N").and_then(|v| match number(v)? {
                0 => Err("busy must be at least 1".to_owned()),
                n => Ok(Quirk::Busy(u32::from(n))),
            }),
            "clamp" => need("clamp=ADDR:MIN:MAX").and_then(|v| {
                let p = parts(v, 3, "clamp=ADDR:MIN:MAX")?;
                let (address, min, max) = (number(p[0])?, number(p[1])?, number(p[2])?);
                if min > max {
                    return Err(format!("MIN {min} is above MAX {max}"));
                }
                Ok(Quirk::Clamp { address, min, max })
            }),
            "poke" => need("poke=KIND:ADDR:VALUE").and_then(|v| {
                let p = parts(v, 3, "poke=KIND:ADDR:VALUE")?;
                let (k, address, value) = (kind(p[0])?, number(p[1])?, number(p[2])?);
                if k.is_bit() && value > 1 {
                    return Err(format!("a bit ({}) reads 0 or 1, not {value}", p[0]));
                }
                Ok(Quirk::Poke(k, address, value))
            }),
            _ => Err(format!("unknown quirk `{name}`")),
        };
        parsed.map_err(|reason| QuirkError {
            spec: spec.to_owned(),
            reason,
        })
    }
}

impl fmt::Display for Quirk {
    /// The spec form, which parses back to the same quirk.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = |d: &Duration| humantime::format_duration(*d).to_string();
        match self {
            Quirk::CloseAfterReply => write!(f, "close-after-reply"),
            Quirk::NoFc5 => write!(f, "no-fc5"),
            Quirk::NoFc6 => write!(f, "no-fc6"),
            Quirk::NoFc16 => write!(f, "no-fc16"),
            Quirk::MaxRead(n) => write!(f, "max-read={n}"),
            Quirk::Hole(k, a) => write!(f, "hole={}:{a}", kind_name(*k)),
            Quirk::ConnectSilence(t) => write!(f, "connect-silence={}", d(t)),
            Quirk::MinGap(t) => write!(f, "min-gap={}", d(t)),
            Quirk::TidZero => write!(f, "tid-zero"),
            Quirk::TidSwap => write!(f, "tid-swap"),
            Quirk::StalePrefix => write!(f, "stale-prefix"),
            Quirk::Echo => write!(f, "echo"),
            Quirk::Clamp { address, min, max } => write!(f, "clamp={address}:{min}:{max}"),
            Quirk::Poke(k, a, v) => write!(f, "poke={}:{a}:{v:#06x}", kind_name(*k)),
            Quirk::Delay(t) => write!(f, "delay={}", d(t)),
            Quirk::Busy(n) => write!(f, "busy={n}"),
        }
    }
}

/// What a TCP reply's transaction id becomes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TransactionId {
    /// The request's, as the spec requires (Modbus Messaging on TCP/IP, 3.1.3).
    #[default]
    Echoed,
    /// Always 0.
    Zero,
    /// The request's with its two bytes swapped.
    Swapped,
}

/// The quirks in force: every unit of the simulator behaves this way. Flags and single values
/// are replaced by a later spec of the same name (`tid-zero` and `tid-swap` replace each
/// other); holes, clamps and pokes add up (a poke or clamp of the same address replaces the
/// earlier one).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Quirks {
    pub close_after_reply: bool,
    pub no_fc5: bool,
    pub no_fc6: bool,
    pub no_fc16: bool,
    pub max_read: Option<u16>,
    pub holes: Vec<(RegisterKind, u16)>,
    pub connect_silence: Option<Duration>,
    pub min_gap: Option<Duration>,
    pub transaction_id: TransactionId,
    pub stale_prefix: bool,
    pub echo: bool,
    /// (address, min, max) of holding registers.
    pub clamps: Vec<(u16, u16, u16)>,
    /// (table, address, value); a bit reads `value != 0`.
    pub pokes: Vec<(RegisterKind, u16, u16)>,
    pub delay: Option<Duration>,
    /// Every Nth request answers SERVER DEVICE BUSY.
    pub busy_every: Option<u32>,
}

impl Quirks {
    /// The quirks of `specs`, in order.
    pub fn parse<S: AsRef<str>>(specs: &[S]) -> Result<Quirks, QuirkError> {
        let mut q = Quirks::default();
        for s in specs {
            q.add(s.as_ref().parse()?);
        }
        Ok(q)
    }

    /// Switch one quirk on (see the type's doc for how it combines with those in force).
    pub fn add(&mut self, quirk: Quirk) {
        match quirk {
            Quirk::CloseAfterReply => self.close_after_reply = true,
            Quirk::NoFc5 => self.no_fc5 = true,
            Quirk::NoFc6 => self.no_fc6 = true,
            Quirk::NoFc16 => self.no_fc16 = true,
            Quirk::MaxRead(n) => self.max_read = Some(n),
            Quirk::Hole(k, a) => {
                if !self.holes.contains(&(k, a)) {
                    self.holes.push((k, a));
                }
            }
            Quirk::ConnectSilence(t) => self.connect_silence = Some(t),
            Quirk::MinGap(t) => self.min_gap = Some(t),
            Quirk::TidZero => self.transaction_id = TransactionId::Zero,
            Quirk::TidSwap => self.transaction_id = TransactionId::Swapped,
            Quirk::StalePrefix => self.stale_prefix = true,
            Quirk::Echo => self.echo = true,
            Quirk::Clamp { address, min, max } => {
                self.clamps.retain(|c| c.0 != address);
                self.clamps.push((address, min, max));
            }
            Quirk::Poke(k, a, v) => {
                self.pokes.retain(|p| (p.0, p.1) != (k, a));
                self.pokes.push((k, a, v));
            }
            Quirk::Delay(t) => self.delay = Some(t),
            Quirk::Busy(n) => self.busy_every = Some(n),
        }
    }

    /// Whether a request arriving `now` goes unanswered: within `connect-silence` of the
    /// connection's acceptance (`accepted`; `None` on a serial bus), or within `min-gap` of
    /// the simulator's previous reply.
    pub fn swallows(
        &self,
        now: Instant,
        accepted: Option<Instant>,
        last_reply: Option<Instant>,
    ) -> bool {
        let within = |limit: Option<Duration>, since: Option<Instant>| match (limit, since) {
            (Some(limit), Some(since)) => now.saturating_duration_since(since) < limit,
            _ => false,
        };
        within(self.connect_silence, accepted) || within(self.min_gap, last_reply)
    }

    /// The reply's transaction id for the request's `tid`.
    pub fn transaction_id(&self, tid: [u8; 2]) -> [u8; 2] {
        match self.transaction_id {
            TransactionId::Echoed => tid,
            TransactionId::Zero => [0, 0],
            TransactionId::Swapped => [tid[1], tid[0]],
        }
    }

    fn covers_hole(&self, kind: RegisterKind, addr: u16, cnt: u16) -> bool {
        self.holes
            .iter()
            .any(|&(k, a)| k == kind && covers(addr, cnt, a))
    }

    fn poke(&self, kind: RegisterKind, addr: u16) -> Option<u16> {
        self.pokes
            .iter()
            .find(|&&(k, a, _)| k == kind && a == addr)
            .map(|p| p.2)
    }

    /// The runs `(start, count)` of `addr..addr+cnt` that are not poked, in order.
    fn free_runs(&self, kind: RegisterKind, addr: u16, cnt: u16) -> Vec<(u16, u16)> {
        let mut runs: Vec<(u16, u16)> = Vec::new();
        for a in (u32::from(addr)..u32::from(addr) + u32::from(cnt)).map(|a| a as u16) {
            if self.poke(kind, a).is_some() {
                continue;
            }
            match runs.last_mut() {
                Some((start, n)) if u32::from(*start) + u32::from(*n) == u32::from(a) => *n += 1,
                _ => runs.push((a, 1)),
            }
        }
        runs
    }

    /// Read `cnt` values at `addr` of `kind` from the profile's `read`, honouring the quirks:
    /// the quantity limit of the spec, `max-read`, holes and pokes.
    fn read<T: Copy + Default>(
        &self,
        kind: RegisterKind,
        addr: u16,
        cnt: u16,
        poked: impl Fn(u16) -> T,
        mut read: impl FnMut(u16, u16) -> Result<Vec<T>, ExceptionCode>,
    ) -> Result<Vec<T>, ExceptionCode> {
        // Quantity first, then address (Modbus Application Protocol v1.1b3, 6.1-6.4).
        if cnt == 0 || cnt > kind.max_per_request() {
            return Err(ExceptionCode::IllegalDataValue);
        }
        if u32::from(addr) + u32::from(cnt) > 0x1_0000
            || self.max_read.is_some_and(|max| cnt > max)
            || self.covers_hole(kind, addr, cnt)
        {
            return Err(ExceptionCode::IllegalDataAddress);
        }
        let runs = self.free_runs(kind, addr, cnt);
        if runs == [(addr, cnt)] {
            return read(addr, cnt);
        }
        let mut out = vec![T::default(); usize::from(cnt)];
        for (start, n) in runs {
            let values = read(start, n)?;
            let at = usize::from(start - addr);
            match (
                out.get_mut(at..at + usize::from(n)),
                values.get(..usize::from(n)),
            ) {
                (Some(dst), Some(src)) => dst.copy_from_slice(src),
                _ => return Err(ExceptionCode::ServerDeviceFailure),
            }
        }
        for (slot, a) in out.iter_mut().zip(addr..) {
            if let Some(v) = self.poke(kind, a) {
                *slot = poked(v);
            }
        }
        Ok(out)
    }

    /// Write `values` at `addr` of `kind` through the profile's `write`, honouring holes,
    /// clamps (holding registers) and pokes (their addresses are skipped).
    fn write<T: Copy>(
        &self,
        kind: RegisterKind,
        addr: u16,
        values: &[T],
        mut write: impl FnMut(u16, &[T]) -> Result<(), ExceptionCode>,
    ) -> Result<(), ExceptionCode> {
        let Ok(cnt) = u16::try_from(values.len()) else {
            return Err(ExceptionCode::IllegalDataValue);
        };
        if cnt == 0 {
            return Err(ExceptionCode::IllegalDataValue);
        }
        if u32::from(addr) + u32::from(cnt) > 0x1_0000 || self.covers_hole(kind, addr, cnt) {
            return Err(ExceptionCode::IllegalDataAddress);
        }
        for (start, n) in self.free_runs(kind, addr, cnt) {
            let at = usize::from(start - addr);
            write(start, &values[at..at + usize::from(n)])?;
        }
        Ok(())
    }

    fn clamped(&self, addr: u16, values: &[u16]) -> Vec<u16> {
        values
            .iter()
            .zip(addr..)
            .map(|(&v, a)| match self.clamps.iter().find(|c| c.0 == a) {
                Some(&(_, min, max)) => v.clamp(min, max),
                None => v,
            })
            .collect()
    }

    /// Serve `req` from profile `t` as a device with these quirks would (the function-code
    /// and address quirks; timing and framing are the server's).
    pub fn serve(&self, t: &mut dyn Profile, req: Request<'_>) -> Result<Response, ExceptionCode> {
        use RegisterKind::*;
        match req {
            Request::WriteSingleCoil(..) if self.no_fc5 => Err(ExceptionCode::IllegalFunction),
            Request::WriteSingleRegister(..) if self.no_fc6 => Err(ExceptionCode::IllegalFunction),
            Request::WriteMultipleRegisters(..) if self.no_fc16 => {
                Err(ExceptionCode::IllegalFunction)
            }
            Request::ReadInputRegisters(a, n) => self
                .read(
                    InputRegister,
                    a,
                    n,
                    |v| v,
                    |a, n| t.read_input_registers(a, n),
                )
                .map(Response::ReadInputRegisters),
            Request::ReadHoldingRegisters(a, n) => self
                .read(
                    HoldingRegister,
                    a,
                    n,
                    |v| v,
                    |a, n| t.read_holding_registers(a, n),
                )
                .map(Response::ReadHoldingRegisters),
            Request::ReadDiscreteInputs(a, n) => self
                .read(
                    DiscreteInput,
                    a,
                    n,
                    |v| v != 0,
                    |a, n| t.read_discrete_inputs(a, n),
                )
                .map(Response::ReadDiscreteInputs),
            Request::ReadCoils(a, n) => self
                .read(Coil, a, n, |v| v != 0, |a, n| t.read_coils(a, n))
                .map(Response::ReadCoils),
            Request::WriteSingleCoil(a, v) => self
                .write(Coil, a, &[v], |a, v| t.write_coils(a, v))
                .map(|()| Response::WriteSingleCoil(a, v)),
            Request::WriteMultipleCoils(a, v) => self
                .write(Coil, a, &v, |a, v| t.write_coils(a, v))
                .map(|()| Response::WriteMultipleCoils(a, v.len() as u16)),
            // The reply echoes the value asked for: a clamping device does not say it clamped.
            Request::WriteSingleRegister(a, v) => self
                .write(HoldingRegister, a, &self.clamped(a, &[v]), |a, v| {
                    t.write_holding_registers(a, v)
                })
                .map(|()| Response::WriteSingleRegister(a, v)),
            Request::WriteMultipleRegisters(a, v) => self
                .write(HoldingRegister, a, &self.clamped(a, &v), |a, v| {
                    t.write_holding_registers(a, v)
                })
                .map(|()| Response::WriteMultipleRegisters(a, v.len() as u16)),
            _ => Err(ExceptionCode::IllegalFunction),
        }
    }
}

/// Whether `addr..addr+cnt` covers `at`.
fn covers(addr: u16, cnt: u16, at: u16) -> bool {
    at >= addr && u32::from(at) < u32::from(addr) + u32::from(cnt)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simulator::water_tower::WaterTower;
    use RegisterKind::*;

    fn parse(s: &str) -> Quirk {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn error(s: &str) -> String {
        match s.parse::<Quirk>() {
            Ok(q) => panic!("{s} parsed as {q:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn every_form_parses_and_prints_back() {
        let ms = Duration::from_millis;
        let table = [
            ("close-after-reply", Quirk::CloseAfterReply),
            ("no-fc5", Quirk::NoFc5),
            ("no-fc6", Quirk::NoFc6),
            ("no-fc16", Quirk::NoFc16),
            ("max-read=50", Quirk::MaxRead(50)),
            ("hole=co:3", Quirk::Hole(Coil, 3)),
            ("hole=di:0x10", Quirk::Hole(DiscreteInput, 16)),
            ("hole=ir:65535", Quirk::Hole(InputRegister, 65535)),
            ("hole=hr:7", Quirk::Hole(HoldingRegister, 7)),
            ("connect-silence=2s", Quirk::ConnectSilence(ms(2000))),
            ("min-gap=1500ms", Quirk::MinGap(ms(1500))),
            ("tid-zero", Quirk::TidZero),
            ("tid-swap", Quirk::TidSwap),
            ("stale-prefix", Quirk::StalePrefix),
            ("echo", Quirk::Echo),
            (
                "clamp=2:10:0x64",
                Quirk::Clamp {
                    address: 2,
                    min: 10,
                    max: 100,
                },
            ),
            ("poke=ir:20:0x7FC0", Quirk::Poke(InputRegister, 20, 0x7FC0)),
            ("poke=hr:30:32768", Quirk::Poke(HoldingRegister, 30, 0x8000)),
            ("poke=co:1:1", Quirk::Poke(Coil, 1, 1)),
            ("poke=di:0:0", Quirk::Poke(DiscreteInput, 0, 0)),
            ("delay=250ms", Quirk::Delay(ms(250))),
            ("busy=3", Quirk::Busy(3)),
        ];
        for (spec, want) in table {
            let q = parse(spec);
            assert_eq!(q, want, "{spec}");
            assert_eq!(parse(&q.to_string()), q, "{spec} printed as {q}");
        }
    }

    #[test]
    fn bad_specs_name_the_spec_the_reason_and_the_valid_ones() {
        let table = [
            ("no-fc7", "unknown quirk `no-fc7`"),
            ("", "unknown quirk ``"),
            ("echo=1", "`echo` takes no value"),
            ("tid-zero=", "`tid-zero` takes no value"),
            ("max-read", "write max-read=N"),
            ("max-read=0", "at least 1"),
            ("max-read=70000", "not a number"),
            ("max-read=-1", "not a number"),
            ("hole=ir", "write hole=KIND:ADDR"),
            ("hole=xx:3", "`xx` is not a table"),
            ("hole=ir:3:4", "write hole=KIND:ADDR"),
            ("hole=hr:0xZZ", "`0xZZ` is not a number"),
            ("connect-silence=soon", "`soon` is not a duration"),
            ("min-gap", "write min-gap=DURATION"),
            ("delay=5", "`5` is not a duration"),
            ("busy=0", "busy must be at least 1"),
            ("clamp=1:2", "write clamp=ADDR:MIN:MAX"),
            ("clamp=1:9:3", "MIN 9 is above MAX 3"),
            ("poke=ir:20", "write poke=KIND:ADDR:VALUE"),
            ("poke=co:1:2", "a bit (co) reads 0 or 1, not 2"),
            ("poke=ir:1:65536", "`65536` is not a number"),
        ];
        for (spec, reason) in table {
            let e = error(spec);
            assert!(e.starts_with(&format!("quirk `{spec}`: ")), "{spec}: {e}");
            assert!(e.contains(reason), "{spec}: {e}");
            assert!(e.contains(VALID), "{spec}: {e}");
        }
    }

    #[test]
    fn later_specs_replace_single_values_and_add_to_lists() {
        let q = Quirks::parse(&[
            "tid-zero",
            "tid-swap",
            "max-read=10",
            "max-read=20",
            "hole=ir:1",
            "hole=ir:1",
            "hole=hr:1",
            "poke=ir:2:5",
            "poke=ir:2:6",
            "clamp=1:0:5",
            "clamp=1:0:9",
        ])
        .unwrap();
        assert_eq!(q.transaction_id, TransactionId::Swapped);
        assert_eq!(q.max_read, Some(20));
        assert_eq!(q.holes, vec![(InputRegister, 1), (HoldingRegister, 1)]);
        assert_eq!(q.pokes, vec![(InputRegister, 2, 6)]);
        assert_eq!(q.clamps, vec![(1, 0, 9)]);
        assert!(Quirks::parse(&["echo", "bogus"]).is_err());
        assert_eq!(Quirks::parse::<&str>(&[]).unwrap(), Quirks::default());
    }

    #[test]
    fn transaction_ids() {
        let mut q = Quirks::default();
        assert_eq!(q.transaction_id([0x12, 0x34]), [0x12, 0x34]);
        q.add(Quirk::TidZero);
        assert_eq!(q.transaction_id([0x12, 0x34]), [0, 0]);
        q.add(Quirk::TidSwap);
        assert_eq!(q.transaction_id([0x12, 0x34]), [0x34, 0x12]);
    }

    #[test]
    fn silence_after_connecting_and_between_requests() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let q = Quirks::parse(&["connect-silence=2s", "min-gap=1s"]).unwrap();
        assert!(q.swallows(t0 + s(1), Some(t0), None));
        assert!(!q.swallows(t0 + s(2), Some(t0), None));
        assert!(
            !q.swallows(t0 + s(1), None, None),
            "a serial bus has no connection"
        );
        assert!(q.swallows(
            t0 + s(5),
            Some(t0),
            Some(t0 + s(4) + Duration::from_millis(500))
        ));
        assert!(!q.swallows(t0 + s(5), Some(t0), Some(t0 + s(4))));
        assert!(!Quirks::default().swallows(t0, Some(t0), Some(t0)));
    }

    fn tower() -> WaterTower {
        WaterTower::new(1, 123.0)
    }

    fn serve(
        q: &Quirks,
        t: &mut WaterTower,
        req: Request<'static>,
    ) -> Result<Response, ExceptionCode> {
        q.serve(t, req)
    }

    #[test]
    fn without_quirks_requests_are_served_as_the_profile_says() {
        let q = Quirks::default();
        let mut t = tower();
        assert_eq!(
            serve(&q, &mut t, Request::ReadInputRegisters(0, 1)),
            Ok(Response::ReadInputRegisters(vec![123]))
        );
        assert_eq!(
            serve(&q, &mut t, Request::WriteSingleRegister(0, 50)),
            Ok(Response::WriteSingleRegister(0, 50))
        );
        assert_eq!(
            serve(&q, &mut t, Request::ReadInputRegisters(0, 126)),
            Err(ExceptionCode::IllegalDataValue)
        );
        assert_eq!(
            serve(&q, &mut t, Request::ReadInputRegisters(10, 2)),
            Err(ExceptionCode::IllegalDataAddress)
        );
        assert_eq!(
            serve(&q, &mut t, Request::ReportServerId),
            Err(ExceptionCode::IllegalFunction)
        );
    }

    #[test]
    fn refused_function_codes_and_their_alternatives() {
        let mut t = tower();
        let q = Quirks::parse(&["no-fc5", "no-fc6"]).unwrap();
        let illegal = Err(ExceptionCode::IllegalFunction);
        assert_eq!(
            serve(&q, &mut t, Request::WriteSingleRegister(0, 5)),
            illegal
        );
        assert_eq!(
            serve(&q, &mut t, Request::WriteSingleCoil(0, true)),
            illegal
        );
        assert!(
            serve(
                &q,
                &mut t,
                Request::WriteMultipleRegisters(0, vec![5].into())
            )
            .is_ok()
        );
        assert!(
            serve(
                &q,
                &mut t,
                Request::WriteMultipleCoils(0, vec![true].into())
            )
            .is_ok()
        );
        assert_eq!(t.read_holding_registers(0, 1), Ok(vec![5]));
        assert_eq!(t.read_coils(0, 1), Ok(vec![true]));
        let q = Quirks::parse(&["no-fc16"]).unwrap();
        assert_eq!(
            serve(
                &q,
                &mut t,
                Request::WriteMultipleRegisters(0, vec![6].into())
            ),
            illegal
        );
        assert!(serve(&q, &mut t, Request::WriteSingleRegister(0, 7)).is_ok());
    }

    #[test]
    fn max_read_and_holes_refuse_with_illegal_data_address() {
        let mut t = tower();
        let bad = Err(ExceptionCode::IllegalDataAddress);
        let q = Quirks::parse(&["max-read=3"]).unwrap();
        assert!(serve(&q, &mut t, Request::ReadInputRegisters(0, 3)).is_ok());
        assert_eq!(serve(&q, &mut t, Request::ReadInputRegisters(0, 4)), bad);
        assert_eq!(serve(&q, &mut t, Request::ReadCoils(0, 4)), bad);
        // The spec's quantity limit still answers ILLEGAL DATA VALUE first.
        assert_eq!(
            serve(&q, &mut t, Request::ReadInputRegisters(0, 0)),
            Err(ExceptionCode::IllegalDataValue)
        );
        let q = Quirks::parse(&["hole=ir:5", "hole=co:1"]).unwrap();
        assert_eq!(serve(&q, &mut t, Request::ReadInputRegisters(0, 6)), bad);
        assert_eq!(serve(&q, &mut t, Request::ReadInputRegisters(5, 1)), bad);
        assert!(serve(&q, &mut t, Request::ReadInputRegisters(0, 5)).is_ok());
        assert!(serve(&q, &mut t, Request::ReadInputRegisters(6, 3)).is_ok());
        assert!(serve(&q, &mut t, Request::ReadHoldingRegisters(0, 5)).is_ok());
        assert_eq!(serve(&q, &mut t, Request::ReadCoils(0, 2)), bad);
        assert_eq!(serve(&q, &mut t, Request::WriteSingleCoil(1, true)), bad);
        assert!(serve(&q, &mut t, Request::ReadCoils(0, 1)).is_ok());
    }

    #[test]
    fn clamp_stores_the_limit_and_answers_what_was_asked() {
        let mut t = tower();
        let q = Quirks::parse(&["clamp=1:20:100"]).unwrap();
        assert_eq!(
            serve(&q, &mut t, Request::WriteSingleRegister(1, 300)),
            Ok(Response::WriteSingleRegister(1, 300))
        );
        assert_eq!(t.read_holding_registers(1, 1), Ok(vec![100]));
        assert!(
            serve(
                &q,
                &mut t,
                Request::WriteMultipleRegisters(0, vec![300, 5, 300].into())
            )
            .is_ok()
        );
        assert_eq!(t.read_holding_registers(0, 3), Ok(vec![300, 20, 300]));
    }

    #[test]
    fn pokes_override_reads_even_outside_the_map_and_swallow_writes() {
        let mut t = tower();
        let q = Quirks::parse(&[
            "poke=ir:1:0x7FC0",
            "poke=ir:20:0x7FC0",
            "poke=ir:21:0",
            "poke=hr:1:0x8000",
            "poke=co:0:1",
        ])
        .unwrap();
        let Ok(Response::ReadInputRegisters(w)) =
            serve(&q, &mut t, Request::ReadInputRegisters(0, 3))
        else {
            panic!("read failed");
        };
        assert_eq!((w[0], w[1]), (123, 0x7FC0));
        assert_eq!(
            serve(&q, &mut t, Request::ReadInputRegisters(20, 2)),
            Ok(Response::ReadInputRegisters(vec![0x7FC0, 0]))
        );
        // Partly outside the map: the unpoked part still does not exist.
        assert_eq!(
            serve(&q, &mut t, Request::ReadInputRegisters(19, 2)),
            Err(ExceptionCode::IllegalDataAddress)
        );
        assert_eq!(
            serve(&q, &mut t, Request::ReadCoils(0, 2)),
            Ok(Response::ReadCoils(vec![true, false]))
        );
        assert!(
            serve(
                &q,
                &mut t,
                Request::WriteMultipleRegisters(0, vec![7, 8, 9].into())
            )
            .is_ok()
        );
        assert_eq!(t.read_holding_registers(0, 3), Ok(vec![7, 10, 9]));
        assert_eq!(
            serve(&q, &mut t, Request::ReadHoldingRegisters(0, 3)),
            Ok(Response::ReadHoldingRegisters(vec![7, 0x8000, 9]))
        );
        assert!(serve(&q, &mut t, Request::WriteSingleRegister(1, 5)).is_ok());
        assert_eq!(t.read_holding_registers(1, 1), Ok(vec![10]));
        assert!(serve(&q, &mut t, Request::WriteSingleCoil(0, false)).is_ok());
    }
}
