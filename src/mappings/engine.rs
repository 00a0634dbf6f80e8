//! The mapping engine: poll results in, typed updates out.
//!
//! A synchronous state machine over the compiled model. It decodes and scales each point,
//! tracks its quality, packs derived bits once a device's cycle is whole, and turns device
//! status changes into lifecycle updates (marking the device's good values stale when it goes
//! down). What those updates become on the broker is the northbound profiles' business
//! (`crate::northbound`): this file must not render payloads, decide publish timing, know
//! topics, do I/O or read a clock (the poll's wall-clock `read_at` comes in with it).

use std::sync::Arc;
use std::time::SystemTime;

use super::codec::{self, Raw};
use super::number;
use crate::model::{Model, Point};
/// The timestamp format moved to the vocabulary; this path stays for the command line.
pub use crate::vocabulary::timestamp;
use crate::vocabulary::{BlockData, DeviceId, DeviceStatus, Fault, PointId, PollResult};

/// A decoded, scaled engineering value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Bool(bool),
    Int(i64),
    UInt(u64),
    F32(f32),
    Float(f64),
    Text(String),
}

impl Value {
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::Bool(b) => Some(f64::from(u8::from(b))),
            Value::Int(i) => Some(i as f64),
            Value::UInt(u) => Some(u as f64),
            Value::F32(f) => Some(number::f32_to_f64(f)),
            Value::Float(f) => Some(f),
            Value::Text(_) => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quality {
    /// Never read yet.
    Unknown,
    Good,
    /// The read failed (exception, decode error).
    Bad,
    /// The device stopped answering; the last value is old.
    Stale,
}

/// Why a point's registers hold no usable value, though the read itself succeeded. Such a
/// point is published like a failed read: JSON says `"value": null`, `"quality": "bad"` and this
/// reason; a plain topic gets nothing; groups skip the sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unusable {
    /// A float register holds NaN (IEEE 754-2008, 6.2): meters send it for an absent phase.
    NotANumber,
    /// A float register holds ±infinity, or scaling overflowed.
    Infinite,
    /// The raw registers hold one of the point's `no_value` codes (as an unsigned integer of
    /// the type's width, e.g. `0x8000` for an i16: SunSpec's "not implemented" value).
    NoValue { code: u64, width: u16 },
    /// The reply holds fewer registers or bits than the point needs.
    Short,
}

impl std::fmt::Display for Unusable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Unusable::NotANumber => f.write_str("not a number"),
            Unusable::Infinite => f.write_str("infinite"),
            Unusable::NoValue { code, width } => {
                let digits = usize::from(width) * 4;
                write!(f, "no value (0x{code:0digits$X})")
            }
            Unusable::Short => f.write_str("the reply is shorter than the point"),
        }
    }
}

/// Decode and scale one point from its request's data; `None` when there is no usable value.
pub fn point_value(p: &Point, data: &BlockData) -> Option<Value> {
    read_value(p, data, usize::from(p.slot.offset)).ok()
}

/// Decode and scale `p` from `data` starting at `off` (0 for a read-back of the point alone);
/// `None` when there is no usable value (see [`read_value`]).
pub fn decode_at(p: &Point, data: &BlockData, off: usize) -> Option<Value> {
    read_value(p, data, off).ok()
}

/// Decode and scale `p` from `data` starting at `off`, or say why the registers hold no value:
/// a `no_value` code (checked on the raw registers, before scaling), NaN, or an infinity.
pub fn read_value(p: &Point, data: &BlockData, off: usize) -> Result<Value, Unusable> {
    let raw = match data {
        BlockData::Bits(bits) => Raw::Bool(*bits.get(off).ok_or(Unusable::Short)?),
        BlockData::Words(words) => {
            let words = words.get(off..).ok_or(Unusable::Short)?;
            if !p.no_value.is_empty()
                && let Some(code) = codec::raw_bits(words, p.dtype, p.order)
                && p.no_value.contains(&code)
            {
                return Err(Unusable::NoValue {
                    code,
                    width: p.dtype.width(),
                });
            }
            codec::decode(words, p.dtype, p.order).map_err(|_| Unusable::Short)?
        }
    };
    scale(p, raw)
}

/// Whether a float is a value at all.
fn finite(x: f64) -> Result<f64, Unusable> {
    if x.is_nan() {
        Err(Unusable::NotANumber)
    } else if x.is_infinite() {
        Err(Unusable::Infinite)
    } else {
        Ok(x)
    }
}

/// Engineering value from a raw one. An f32 enters as its shortest decimal (`5.83`, not
/// 5.829999923706055); a scaled value is tidied to 15 significant digits, then rounded to the
/// point's `decimals` where set.
fn scale(p: &Point, raw: Raw) -> Result<Value, Unusable> {
    let x = match raw {
        Raw::Bool(b) => return Ok(Value::Bool(b)),
        Raw::Text(t) => return Ok(Value::Text(t)),
        Raw::Int(i) if p.is_unscaled() => return Ok(Value::Int(i)),
        Raw::UInt(u) if p.is_unscaled() => return Ok(Value::UInt(u)),
        Raw::F32(f) if p.is_unscaled() && p.decimals.is_none() => {
            finite(f64::from(f))?;
            return Ok(Value::F32(f));
        }
        Raw::F64(f) if p.is_unscaled() && p.decimals.is_none() => {
            return finite(f).map(Value::Float);
        }
        Raw::Int(i) => i as f64,
        Raw::UInt(u) => u as f64,
        Raw::F32(f) => finite(number::f32_to_f64(f))?,
        Raw::F64(f) => finite(f)?,
    };
    let v = finite(x * p.scale + p.offset)?;
    Ok(Value::Float(match p.decimals {
        Some(d) => number::round_to(v, d),
        None if p.is_unscaled() => v,
        None => number::tidy(v),
    }))
}

/// Where a value comes from: a point of the model, or a derived value (index into
/// `Model::derived`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Point(PointId),
    Derived(usize),
}

/// What a value is after an update.
#[derive(Debug, Clone, PartialEq)]
pub enum Reading {
    /// A fresh, usable value.
    Good(Value),
    /// No usable value, and why (a fault of the read, or [`Unusable`]); for a derived value,
    /// one of its inputs has no good value.
    Bad(String),
    /// The device went down: the last good value, now old.
    Stale(Value),
}

/// One value's news: a fresh reading, a failure, or staleness.
#[derive(Debug, Clone, PartialEq)]
pub struct ValueUpdate {
    pub source: Source,
    /// The device whose poll (or status change) produced this update.
    pub device: DeviceId,
    pub reading: Reading,
    /// The quality before this update (`Unknown` for a derived value seen for the first time).
    pub previous: Quality,
    /// When the value was read (for a stale one: when it was last read).
    pub read_at: SystemTime,
    /// When this update happened: the read time, or the time of the status change.
    pub at: SystemTime,
}

/// What the engine tells the northbound profiles, in the order it happened.
#[derive(Debug, Clone, PartialEq)]
pub enum Update {
    Value(ValueUpdate),
    /// A device's status changed (only changes are reported).
    Device {
        device: DeviceId,
        status: DeviceStatus,
        at: SystemTime,
    },
}

#[derive(Debug, Clone)]
struct PointState {
    value: Option<Value>,
    read_at: Option<SystemTime>,
    quality: Quality,
}

/// Turns poll results and device status into [`Update`]s; see the module docs.
#[derive(Debug)]
pub struct Engine {
    model: Arc<Model>,
    points: Vec<PointState>,
    /// The quality of each derived value.
    derived: Vec<Quality>,
    /// For each device, the derived values that use one of its points.
    derived_by_device: Vec<Vec<usize>>,
    /// For each device and each request of its read plan, the points read by it (in mapping
    /// order): a block is decoded without looking at the device's other points.
    by_request: Vec<Vec<Vec<PointId>>>,
    status: Vec<Option<DeviceStatus>>,
}

impl Engine {
    pub fn new(model: Arc<Model>) -> Self {
        let points = vec![
            PointState {
                value: None,
                read_at: None,
                quality: Quality::Unknown,
            };
            model.points.len()
        ];
        let mut derived_by_device = vec![Vec::new(); model.devices.len()];
        for (i, d) in model.derived.iter().enumerate() {
            for &pid in &d.pack_bits {
                let dev = model.points[pid].device;
                if !derived_by_device[dev].contains(&i) {
                    derived_by_device[dev].push(i);
                }
            }
        }
        let by_request = model
            .devices
            .iter()
            .map(|d| {
                let mut r = vec![Vec::new(); d.plan.requests.len()];
                for &pid in &d.points {
                    if let Some(list) = r.get_mut(model.points[pid].slot.request) {
                        list.push(pid);
                    }
                }
                r
            })
            .collect();
        Engine {
            derived: vec![Quality::Unknown; model.derived.len()],
            status: vec![None; model.devices.len()],
            derived_by_device,
            by_request,
            points,
            model,
        }
    }

    /// The model this engine decodes under.
    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    /// The id in this engine's model of the device `name`, which a link running on `from`
    /// called `hint`. `None` when the device is gone, or when `from` is another model whose read
    /// plan for the device differs (a result read under another plan must not be decoded).
    pub fn device_id(&self, name: &str, hint: DeviceId, from: &Arc<Model>) -> Option<DeviceId> {
        if Arc::ptr_eq(from, &self.model) {
            return self.model.devices.get(hint).map(|_| hint);
        }
        let id = self.model.devices.iter().position(|d| &*d.name == name)?;
        let then = from.devices.get(hint).filter(|d| &*d.name == name)?;
        (then.plan.requests == self.model.devices[id].plan.requests).then_some(id)
    }

    /// The current value and quality of a point (for tests and the probe).
    pub fn value(&self, point: usize) -> (Option<&Value>, Quality) {
        let s = &self.points[point];
        (s.value.as_ref(), s.quality)
    }

    /// Process one poll result: one update per point it covers, then, once the cycle is whole,
    /// one per derived value that uses the device.
    pub fn on_poll(&mut self, poll: &PollResult) -> Vec<Update> {
        let mut out = Vec::new();
        self.on_poll_into(poll, &mut out);
        out
    }

    /// [`Engine::on_poll`], appending to `out`: the gateway keeps one vector for every poll
    /// instead of allocating one of a block's size each time.
    pub fn on_poll_into(&mut self, poll: &PollResult, out: &mut Vec<Update>) {
        let model = Arc::clone(&self.model);
        let Some(requests) = self.by_request.get(poll.device) else {
            return;
        };
        let in_poll =
            || (poll.first..poll.first + poll.blocks.len()).filter_map(|ri| requests.get(ri));
        // One update per point and derived value: sized once, not grown by doubling through a
        // 1,000-value poll.
        let derived = if poll.complete {
            self.derived_by_device.get(poll.device).map_or(0, Vec::len)
        } else {
            0
        };
        out.reserve(in_poll().map(Vec::len).sum::<usize>() + derived);
        let pids = in_poll().flatten().copied();
        // The last fault met and its text: the points of a failed block (up to 125 registers
        // or 2,000 coils), and of a device that fails every read, copy one text instead of
        // formatting it per point.
        let mut fault_text: Option<(&Fault, String)> = None;
        for pid in pids {
            let p = &model.points[pid];
            let width = if p.kind.is_bit() { 1 } else { p.dtype.width() };
            let Some(block) = poll.block(p.slot.request) else {
                continue;
            };
            // A failed read and a read without a usable value take the same path.
            let result = match (block, poll.bad_at(p.slot.request, p.slot.offset, width)) {
                (Ok(_), Some(f)) | (Err(f), _) => Err(Err(f)),
                (Ok(data), None) => read_value(p, data, usize::from(p.slot.offset)).map_err(Ok),
            };
            let st = &mut self.points[pid];
            let previous = st.quality;
            let reading = match result {
                Ok(v) => {
                    st.quality = Quality::Good;
                    st.read_at = Some(poll.read_at);
                    st.value = Some(v.clone());
                    Reading::Good(v)
                }
                Err(why) => {
                    st.quality = Quality::Bad;
                    Reading::Bad(match why {
                        Ok(unusable) => unusable.to_string(),
                        Err(f) => match &fault_text {
                            Some((last, text)) if *last == f => text.clone(),
                            _ => {
                                let text = f.to_string();
                                fault_text = Some((f, text.clone()));
                                text
                            }
                        },
                    })
                }
            };
            out.push(Update::Value(ValueUpdate {
                source: Source::Point(pid),
                device: poll.device,
                reading,
                previous,
                read_at: poll.read_at,
                at: poll.read_at,
            }));
        }
        if poll.complete {
            for i in 0..self.derived_by_device[poll.device].len() {
                let di = self.derived_by_device[poll.device][i];
                out.push(Update::Value(self.derive(di, poll.device, poll.read_at)));
            }
        }
    }

    /// Derived value `di`: its bits packed from good points, or bad when one is not good.
    fn derive(&mut self, di: usize, device: DeviceId, read_at: SystemTime) -> ValueUpdate {
        let d = &self.model.derived[di];
        let mut bits = 0u64;
        let mut ok = true;
        for (i, &pid) in d.pack_bits.iter().enumerate() {
            match (&self.points[pid].value, self.points[pid].quality) {
                (Some(v), Quality::Good) => {
                    if v.as_f64().is_some_and(|x| x != 0.0) {
                        bits |= 1 << i;
                    }
                }
                _ => ok = false,
            }
        }
        let previous = self.derived[di];
        let reading = if ok {
            self.derived[di] = Quality::Good;
            Reading::Good(Value::UInt(bits))
        } else {
            self.derived[di] = Quality::Bad;
            Reading::Bad("an input point has no good value".into())
        };
        ValueUpdate {
            source: Source::Derived(di),
            device,
            reading,
            previous,
            read_at,
            at: read_at,
        }
    }

    /// A device's link reports its state. When it changed: a lifecycle update, and when the
    /// device went down, a stale update for each of its good points and a bad one for each
    /// derived value that uses it.
    pub fn on_device_status(
        &mut self,
        device: DeviceId,
        status: DeviceStatus,
        at: SystemTime,
    ) -> Vec<Update> {
        let mut out = Vec::new();
        let model = Arc::clone(&self.model);
        let Some(dev) = model.devices.get(device) else {
            return out;
        };
        if self.status[device].as_ref() == Some(&status) {
            return out;
        }
        let down = matches!(status, DeviceStatus::Error(_));
        out.push(Update::Device {
            device,
            status: status.clone(),
            at,
        });
        if down {
            for &pid in &dev.points {
                let st = &mut self.points[pid];
                if st.quality != Quality::Good {
                    continue;
                }
                st.quality = Quality::Stale;
                if let (Some(v), Some(read_at)) = (&st.value, st.read_at) {
                    out.push(Update::Value(ValueUpdate {
                        source: Source::Point(pid),
                        device,
                        reading: Reading::Stale(v.clone()),
                        previous: Quality::Good,
                        read_at,
                        at,
                    }));
                }
            }
            for &di in &self.derived_by_device[device] {
                let previous = std::mem::replace(&mut self.derived[di], Quality::Bad);
                out.push(Update::Value(ValueUpdate {
                    source: Source::Derived(di),
                    device,
                    reading: Reading::Bad(format!("device {} is down", dev.name)),
                    previous,
                    read_at: at,
                    at,
                }));
            }
        }
        self.status[device] = Some(status);
        out
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::load_str;
    use std::path::Path;

    pub(crate) const YAML: &str = r#"
mqtt: { host: localhost, status_topic: t/status }
devices:
  - name: tower
    tcp: { host: 127.0.0.1 }
    poll_interval: 500ms
    max_gap: 1
    points:
      - { name: level, kind: input_register, address: 0, publish: { topic: t/level, qos: 2 } }
      - name: temp
        kind: input_register
        address: 1
        type: i16
        scale: 0.1
        unit: "°C"
        publish: { topic: t/temp, format: json, mode: on_change, deadband: 0.5 }
      - { name: flow, kind: input_register, address: 3, type: f32, publish: { topic: t/flow, mode: both, interval: 2s } }
      - { name: p1, kind: discrete_input, address: 0 }
      - { name: p2, kind: discrete_input, address: 1 }
derived:
  - name: pumpcode
    pack_bits: [tower.p1, tower.p2]
    publish: { topic: t/pumpcode, mode: on_change, max_silence: 10s }
"#;

    fn engine() -> Engine {
        Engine::new(Arc::new(
            load_str(Path::new("t.yaml"), YAML, Default::default(), "h").unwrap(),
        ))
    }

    #[test]
    fn device_ids_map_by_name_only_under_the_same_read_plan() {
        let e = engine();
        let same = Arc::clone(&e.model);
        assert_eq!(e.device_id("tower", 0, &same), Some(0));
        // Another model with the same plan (a link kept across a reload): accepted.
        let copy = Arc::new(load_str(Path::new("t.yaml"), YAML, Default::default(), "h").unwrap());
        assert_eq!(e.device_id("tower", 0, &copy), Some(0));
        assert_eq!(e.device_id("gone", 0, &copy), None);
        // Another model whose plan differs (a stopped link's last result): refused.
        let changed = YAML.replace("max_gap: 1", "max_gap: 0");
        let other =
            Arc::new(load_str(Path::new("t.yaml"), &changed, Default::default(), "h").unwrap());
        assert_eq!(e.device_id("tower", 0, &other), None);
    }

    pub(crate) fn one_point(extra: &str) -> Point {
        let yaml = format!(
            "mqtt: {{ host: localhost, status_topic: t/status }}\ndevices:\n  - name: m\n    tcp: {{ host: 127.0.0.1 }}\n    points:\n      - {{ name: p, kind: holding_register, address: 0, {extra} }}\n"
        );
        let m = load_str(Path::new("p.yaml"), &yaml, Default::default(), "h")
            .unwrap_or_else(|e| panic!("{e}"));
        m.points[0].clone()
    }

    #[test]
    fn no_value_codes_of_each_width_are_bad_before_scaling() {
        let words = |w: &[u16]| BlockData::Words(w.to_vec());
        let table: [(&str, &[u16], &str); 6] = [
            (
                "type: i16, scale: 0.1, no_value: [0x8000]",
                &[0x8000],
                "no value (0x8000)",
            ),
            (
                "type: i16, no_value: [-32768]",
                &[0x8000],
                "no value (0x8000)",
            ),
            (
                "type: u16, no_value: [0xFFFF]",
                &[0xFFFF],
                "no value (0xFFFF)",
            ),
            (
                "type: i32, no_value: [0x80000000]",
                &[0x8000, 0],
                "no value (0x80000000)",
            ),
            (
                "type: u32, order: CDAB, no_value: [0xFFFFFFFF]",
                &[0xFFFF, 0xFFFF],
                "no value (0xFFFFFFFF)",
            ),
            (
                "type: u64, no_value: [0xFFFFFFFFFFFFFFFF]",
                &[0xFFFF; 4],
                "no value (0xFFFFFFFFFFFFFFFF)",
            ),
        ];
        for (extra, raw, reason) in table {
            let p = one_point(extra);
            let got = read_value(&p, &words(raw), 0);
            assert_eq!(
                got.map_err(|e| e.to_string()),
                Err(reason.to_owned()),
                "{extra}"
            );
        }
        // The word order matters: 0x8000_0000 in CDAB is [0x0000, 0x8000].
        let p = one_point("type: i32, order: CDAB, no_value: [0x80000000]");
        assert!(read_value(&p, &words(&[0x8000, 0]), 0).is_ok());
        assert!(read_value(&p, &words(&[0, 0x8000]), 0).is_err());
        // Other values pass, scaled.
        let p = one_point("type: i16, scale: 0.1, no_value: [0x8000]");
        assert_eq!(
            read_value(&p, &words(&[0x7FFF]), 0),
            Ok(Value::Float(3276.7))
        );
    }

    #[test]
    fn each_point_of_a_failed_block_carries_its_blocks_fault() {
        let mut e = engine();
        let model = Arc::clone(&e.model);
        let requests = e.by_request[0].len();
        assert!(requests >= 2, "the test needs two requests, got {requests}");
        // Alternate two faults over the requests, so the text of one cannot stand for another.
        let fault = |ri: usize| {
            if ri.is_multiple_of(2) {
                Fault::Exception(2)
            } else {
                Fault::Timeout
            }
        };
        let poll = PollResult {
            device: 0,
            read_at: SystemTime::UNIX_EPOCH,
            first: 0,
            blocks: (0..requests).map(|ri| Err(fault(ri))).collect(),
            complete: false,
            bad: Vec::new(),
        };
        let mut seen = 0;
        for _ in 0..2 {
            for u in e.on_poll(&poll) {
                let Update::Value(ValueUpdate {
                    source: Source::Point(pid),
                    reading,
                    ..
                }) = u
                else {
                    continue;
                };
                let want = fault(model.points[pid].slot.request).to_string();
                assert_eq!(reading, Reading::Bad(want), "{}", model.points[pid].name);
                seen += 1;
            }
        }
        assert_eq!(seen, 2 * model.points.len(), "every point, both polls");
    }

    #[test]
    fn decimals_round_unscaled_floats_too() {
        let m = load_str(Path::new("t.yaml"), YAML, Default::default(), "h").unwrap();
        let mut p = m.points[2].clone();
        p.decimals = Some(1);
        let w = 220.596_13_f32.to_bits();
        let v = decode_at(&p, &BlockData::Words(vec![(w >> 16) as u16, w as u16]), 0).unwrap();
        assert_eq!(v, Value::Float(220.6));
    }
}
