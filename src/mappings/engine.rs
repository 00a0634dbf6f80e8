//! The mapping engine: poll results in, publications out.
//!
//! A synchronous state machine over the compiled model. It decodes and scales each point,
//! tracks quality, applies the publish mode (interval, on-change with deadband, both,
//! max-silence), packs derived bits and renders payloads. Time is passed in: `now` (monotonic)
//! for publish timing, and the poll's wall-clock `read_at` for timestamps.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::json;

use super::codec::{self, Raw};
use super::number;
use crate::model::{Format, Model, Point, PublishMode, PublishRule};
pub use crate::vocabulary::timestamp;
use crate::vocabulary::{BlockData, DeviceId, DeviceStatus, PollResult, Publication, Qos};

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

#[derive(Debug, Default, Clone)]
struct PubState {
    last_value: Option<Value>,
    last_pub: Option<Instant>,
    /// Force the next good value out (after a quality change).
    force: bool,
}

#[derive(Debug, Clone)]
struct PointState {
    value: Option<Value>,
    read_at: Option<SystemTime>,
    quality: Quality,
    publish: PubState,
}

/// Turns raw reads into publications; see the module docs.
#[derive(Debug)]
pub struct Engine {
    model: Arc<Model>,
    points: Vec<PointState>,
    derived: Vec<PubState>,
    /// For each device, the derived values that use one of its points.
    derived_by_device: Vec<Vec<usize>>,
    status: Vec<Option<DeviceStatus>>,
    groups: super::group::Groups,
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

/// The value as plain text: `123`, `21.5`, `5.83`, `true`; with `decimals`, exactly that many
/// places (`21.0`). Numbers are written as [`number::text`] writes them.
#[must_use]
pub fn render_plain(v: &Value, decimals: Option<u8>) -> String {
    match v {
        Value::Bool(b) => b.to_string(),
        Value::Int(i) => i.to_string(),
        Value::UInt(u) => u.to_string(),
        Value::F32(f) => match decimals {
            Some(d) => number::fixed(number::f32_to_f64(*f), d),
            None => number::text(number::f32_to_f64(*f)),
        },
        Value::Float(f) => match decimals {
            Some(d) => number::fixed(*f, d),
            None => number::text(*f),
        },
        Value::Text(t) => t.clone(),
    }
}

/// The value in a JSON payload. An f32 is written as its shortest decimal; a non-finite float
/// (never produced by [`read_value`]) as `null`, never as the invalid JSON `NaN`.
fn json_value(v: &Value) -> serde_json::Value {
    match v {
        Value::Bool(b) => json!(b),
        Value::Int(i) => json!(i),
        Value::UInt(u) => json!(u),
        Value::F32(f) => json!(number::f32_to_f64(*f)),
        Value::Float(f) => json!(f),
        Value::Text(t) => json!(t),
    }
}

fn changed(old: Option<&Value>, new: &Value, deadband: f64) -> bool {
    let Some(old) = old else { return true };
    match (old.as_f64(), new.as_f64()) {
        (Some(a), Some(b)) if deadband > 0.0 => (a - b).abs() > deadband,
        _ => old != new,
    }
}

/// Whether a fresh value is due under `rule`. `poll` is the source device's poll interval:
/// an interval equal to the poll interval publishes on every poll despite jitter.
fn due(rule: &PublishRule, st: &PubState, v: &Value, now: Instant, poll: Duration) -> bool {
    let Some(last) = st.last_pub else { return true };
    if st.force {
        return true;
    }
    let elapsed = now.saturating_duration_since(last);
    let interval_due = elapsed + (poll / 2).min(rule.interval / 2) >= rule.interval;
    match rule.mode {
        PublishMode::Interval => interval_due,
        PublishMode::OnChange => {
            changed(st.last_value.as_ref(), v, rule.deadband)
                || rule.max_silence.is_some_and(|s| elapsed >= s)
        }
        PublishMode::Both => changed(st.last_value.as_ref(), v, rule.deadband) || interval_due,
    }
}

fn publication(rule: &PublishRule, payload: Vec<u8>, created_at: SystemTime) -> Publication {
    Publication {
        topic: rule.topic.clone(),
        payload,
        qos: rule.qos,
        retain: rule.retain,
        created_at,
    }
}

fn json_payload(
    p: &Point,
    v: Option<&Value>,
    ts: SystemTime,
    quality: &str,
    error: Option<&str>,
) -> Vec<u8> {
    let mut obj = json!({
        "value": v.map_or(serde_json::Value::Null, json_value),
        "ts": timestamp(ts),
        "quality": quality,
    });
    if let Some(u) = &p.unit {
        obj["unit"] = json!(u.as_ref());
    }
    if let Some(e) = error {
        obj["error"] = json!(e);
    }
    obj.to_string().into_bytes()
}

impl Engine {
    pub fn new(model: Arc<Model>) -> Self {
        let points = vec![
            PointState {
                value: None,
                read_at: None,
                quality: Quality::Unknown,
                publish: PubState::default()
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
        Engine {
            groups: super::group::Groups::new(Arc::clone(&model)),
            derived: vec![PubState::default(); model.derived.len()],
            status: vec![None; model.devices.len()],
            derived_by_device,
            points,
            model,
        }
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

    /// Close the group windows that ended by `now`; returns their messages.
    pub fn tick(&mut self, now: SystemTime) -> Vec<Publication> {
        self.groups.tick(now)
    }

    /// When `tick` next has something to do.
    pub fn next_deadline(&self) -> Option<SystemTime> {
        self.groups.next_deadline()
    }

    /// The current value and quality of a point (for tests and the probe).
    pub fn value(&self, point: usize) -> (Option<&Value>, Quality) {
        let s = &self.points[point];
        (s.value.as_ref(), s.quality)
    }

    /// Process one poll cycle; returns what to publish.
    pub fn on_poll(&mut self, poll: &PollResult, now: Instant) -> Vec<Publication> {
        let mut out = Vec::new();
        let model = Arc::clone(&self.model);
        let Some(device) = model.devices.get(poll.device) else {
            return out;
        };
        for &pid in &device.points {
            let p = &model.points[pid];
            let st = &mut self.points[pid];
            let width = if p.kind.is_bit() { 1 } else { p.dtype.width() };
            let Some(block) = poll.block(p.slot.request) else {
                continue;
            };
            // A failed read and a read without a usable value take the same path.
            let result = match (block, poll.bad_at(p.slot.request, p.slot.offset, width)) {
                (Ok(_), Some(f)) | (Err(f), _) => Err(f.to_string()),
                (Ok(data), None) => {
                    read_value(p, data, usize::from(p.slot.offset)).map_err(|u| u.to_string())
                }
            };
            match result {
                Ok(v) => {
                    if st.quality != Quality::Good {
                        st.publish.force = true;
                    }
                    st.quality = Quality::Good;
                    st.read_at = Some(poll.read_at);
                    if let Some(x) = v.as_f64() {
                        self.groups.sample(pid, x, poll.read_at);
                    }
                    if let Some(rule) = &p.publish
                        && due(rule, &st.publish, &v, now, device.poll_interval)
                    {
                        let payload = match rule.format {
                            Format::Plain => render_plain(&v, p.decimals).into_bytes(),
                            Format::Json => json_payload(p, Some(&v), poll.read_at, "good", None),
                        };
                        out.push(publication(rule, payload, poll.read_at));
                        st.publish.last_pub = Some(now);
                        st.publish.last_value = Some(v.clone());
                        st.publish.force = false;
                    }
                    st.value = Some(v);
                }
                Err(fault) => {
                    if st.quality != Quality::Bad
                        && let Some(rule) = p.publish.as_ref().filter(|r| r.format == Format::Json)
                    {
                        out.push(publication(
                            rule,
                            json_payload(p, None, poll.read_at, "bad", Some(fault.as_str())),
                            poll.read_at,
                        ));
                    }
                    st.quality = Quality::Bad;
                }
            }
        }
        if !poll.complete {
            return out;
        }
        for &di in &self.derived_by_device[poll.device] {
            let d = &model.derived[di];
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
            let st = &mut self.derived[di];
            if !ok {
                st.force = true;
                continue;
            }
            let v = Value::UInt(bits);
            if due(&d.publish, st, &v, now, device.poll_interval) {
                let payload = match d.publish.format {
                    Format::Plain => bits.to_string().into_bytes(),
                    Format::Json => {
                        json!({"value": bits, "ts": timestamp(poll.read_at), "quality": "good"})
                            .to_string()
                            .into_bytes()
                    }
                };
                out.push(publication(&d.publish, payload, poll.read_at));
                st.last_pub = Some(now);
                st.last_value = Some(v);
                st.force = false;
            }
        }
        out
    }

    /// A device's link reports its state; publishes the retained status when it changes, and
    /// marks the device's values stale when it goes down.
    pub fn on_device_status(
        &mut self,
        device: DeviceId,
        status: DeviceStatus,
        at: SystemTime,
    ) -> Vec<Publication> {
        let mut out = Vec::new();
        let model = Arc::clone(&self.model);
        let Some(dev) = model.devices.get(device) else {
            return out;
        };
        if self.status[device].as_ref() == Some(&status) {
            return out;
        }
        self.groups
            .device_status(device, !matches!(status, DeviceStatus::Error(_)));
        let payload = match &status {
            DeviceStatus::Ok => json!({"status": "ok", "ts": timestamp(at)}),
            DeviceStatus::Degraded { failing, reason } => {
                let failing: Vec<&str> = failing.iter().map(|f| &**f).collect();
                json!({"status": "degraded", "failing": failing, "reason": reason, "ts": timestamp(at)})
            }
            DeviceStatus::Error(reason) => {
                json!({"status": "error", "reason": reason, "ts": timestamp(at)})
            }
        };
        out.push(Publication {
            topic: dev.status_topic.clone(),
            payload: payload.to_string().into_bytes(),
            qos: Qos::AtLeastOnce,
            retain: true,
            created_at: at,
        });
        if matches!(status, DeviceStatus::Error(_)) {
            for &pid in &dev.points {
                let p = &model.points[pid];
                let st = &mut self.points[pid];
                if st.quality == Quality::Good {
                    if let (Some(rule), Some(read_at)) = (
                        p.publish.as_ref().filter(|r| r.format == Format::Json),
                        st.read_at,
                    ) {
                        out.push(publication(
                            rule,
                            json_payload(p, st.value.as_ref(), read_at, "stale", None),
                            at,
                        ));
                    }
                    st.quality = Quality::Stale;
                }
            }
            for &di in &self.derived_by_device[device] {
                self.derived[di].force = true;
            }
        }
        self.status[device] = Some(status);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load_str;
    use crate::vocabulary::Fault;
    use std::path::Path;

    const YAML: &str = r#"
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

    fn poll(level: u16, temp: i16, flow: f32, p1: bool, p2: bool) -> PollResult {
        let f = flow.to_bits();
        PollResult {
            device: 0,
            read_at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            blocks: vec![
                Ok(BlockData::Bits(vec![p1, p2])),
                Ok(BlockData::Words(vec![
                    level,
                    temp as u16,
                    0,
                    (f >> 16) as u16,
                    f as u16,
                ])),
            ],
            first: 0,
            complete: true,
            bad: Vec::new(),
        }
    }

    fn topics(p: &[Publication]) -> Vec<(&'static str, String)> {
        // Leaking a few test strings keeps the assertions short.
        p.iter()
            .map(|p| {
                (
                    &*String::leak(p.topic.to_string()),
                    String::from_utf8_lossy(&p.payload).into_owned(),
                )
            })
            .collect()
    }

    #[test]
    fn first_poll_publishes_everything_with_scaling_and_formats() {
        let mut e = engine();
        let t0 = Instant::now();
        let out = e.on_poll(&poll(123, -215, 1.5, true, false), t0);
        let t = topics(&out);
        assert!(t.contains(&("t/level", "123".into())), "{t:?}");
        assert!(t.contains(&("t/flow", "1.5".into())));
        assert!(t.contains(&("t/pumpcode", "1".into())));
        let temp = t.iter().find(|(k, _)| *k == "t/temp").unwrap();
        let j: serde_json::Value = serde_json::from_str(&temp.1).unwrap();
        assert_eq!(j["value"], json!(-21.5));
        assert_eq!(j["unit"], json!("°C"));
        assert_eq!(j["quality"], json!("good"));
        assert_eq!(j["ts"], json!("2023-11-14T22:13:20.000Z"));
        assert_eq!(
            out.iter().find(|p| &*p.topic == "t/level").unwrap().qos,
            Qos::ExactlyOnce
        );
    }

    #[test]
    fn interval_on_change_deadband_and_both() {
        let mut e = engine();
        let t0 = Instant::now();
        e.on_poll(&poll(100, 200, 1.0, false, false), t0);
        // 500ms later: level (interval = poll) again; temp moved 0.3 < deadband: no; flow same, interval 2s: no.
        let t = topics(&e.on_poll(
            &poll(100, 203, 1.0, false, false),
            t0 + Duration::from_millis(480),
        ));
        assert_eq!(t, [("t/level", "100".to_string())]);
        // temp moves 0.6 from the last published value: yes; flow changes: yes (both).
        let t = topics(&e.on_poll(
            &poll(100, 206, 2.0, false, true),
            t0 + Duration::from_millis(1000),
        ));
        let names: Vec<_> = t.iter().map(|(k, _)| *k).collect();
        assert_eq!(names, ["t/level", "t/temp", "t/flow", "t/pumpcode"]);
        assert!(t.contains(&("t/pumpcode", "2".into())));
        // flow unchanged but 2s since its last publication: yes (both = change or interval).
        let t = topics(&e.on_poll(
            &poll(100, 206, 2.0, false, true),
            t0 + Duration::from_millis(3000),
        ));
        assert!(t.iter().any(|(k, _)| *k == "t/flow"));
        assert!(!t.iter().any(|(k, _)| *k == "t/pumpcode"));
        // pumpcode's max_silence of 10s republishes the unchanged value.
        let t = topics(&e.on_poll(
            &poll(100, 206, 2.0, false, true),
            t0 + Duration::from_millis(11_000),
        ));
        assert!(t.contains(&("t/pumpcode", "2".into())));
    }

    #[test]
    fn exceptions_mark_quality_bad_and_recovery_forces_a_publication() {
        let mut e = engine();
        let t0 = Instant::now();
        e.on_poll(&poll(100, 200, 1.0, false, false), t0);
        let mut bad = poll(100, 200, 1.0, false, false);
        bad.blocks[1] = Err(Fault::Exception(2));
        let out = e.on_poll(&bad, t0 + Duration::from_millis(500));
        let t = topics(&out);
        // Plain points are not published; the JSON point says bad; pumpcode (bits ok) is quiet.
        assert_eq!(t.len(), 1, "{t:?}");
        assert_eq!(t[0].0, "t/temp");
        assert!(t[0].1.contains("\"quality\":\"bad\"") && t[0].1.contains("illegal data address"));
        assert_eq!(e.value(1).1, Quality::Bad);
        // Same value as before the fault, well within the deadband: published anyway (recovered).
        let t = topics(&e.on_poll(
            &poll(100, 200, 1.0, false, false),
            t0 + Duration::from_millis(1000),
        ));
        assert!(t.iter().any(|(k, _)| *k == "t/temp"));
    }

    #[test]
    fn device_down_publishes_status_once_and_marks_stale() {
        let mut e = engine();
        let t0 = Instant::now();
        let at = SystemTime::UNIX_EPOCH;
        e.on_poll(&poll(100, 200, 1.0, true, true), t0);
        let out = e.on_device_status(0, DeviceStatus::Error("timeout".into()), at);
        let t = topics(&out);
        assert_eq!(t[0].0, "t/status/tower");
        assert!(t[0].1.contains("\"status\":\"error\"") && t[0].1.contains("timeout"));
        assert!(out[0].retain);
        // The JSON point is re-published as stale with its old value; plain ones are not.
        assert_eq!(t.len(), 2);
        assert!(t[1].1.contains("\"quality\":\"stale\"") && t[1].1.contains("20"));
        assert!(
            e.on_device_status(0, DeviceStatus::Error("timeout".into()), at)
                .is_empty()
        );
        let t = topics(&e.on_device_status(0, DeviceStatus::Ok, at));
        assert!(t[0].1.contains("\"status\":\"ok\""));
        // After recovery, pumpcode is forced out even though it did not change.
        let t = topics(&e.on_poll(
            &poll(100, 200, 1.0, true, true),
            t0 + Duration::from_millis(600),
        ));
        assert!(t.contains(&("t/pumpcode", "3".into())));
    }

    #[test]
    fn short_block_is_bad_not_a_panic() {
        let mut e = engine();
        let mut p = poll(1, 1, 1.0, false, false);
        p.blocks[1] = Ok(BlockData::Words(vec![1]));
        p.blocks[0] = Ok(BlockData::Bits(vec![]));
        let out = e.on_poll(&p, Instant::now());
        assert!(
            topics(&out)
                .iter()
                .all(|(k, _)| *k == "t/level" || *k == "t/temp")
        );
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

    #[test]
    fn plain_rendering() {
        assert_eq!(render_plain(&Value::Float(21.0), Some(1)), "21.0");
        assert_eq!(render_plain(&Value::F32(0.1), None), "0.1");
        assert_eq!(render_plain(&Value::F32(5.83), None), "5.83");
        assert_eq!(render_plain(&Value::F32(5.83), Some(1)), "5.8");
        assert_eq!(render_plain(&Value::F32(1e-7), None), "1e-7");
        assert_eq!(render_plain(&Value::Float(3276.7), None), "3276.7");
        assert_eq!(render_plain(&Value::Bool(true), None), "true");
        assert_eq!(render_plain(&Value::Int(-3), None), "-3");
    }

    /// One device with an f32 and an f64 point, JSON and plain, in every word order; a group
    /// averages the first; a good f32 sits next to them.
    /// (point name, address, type, order) of each point of [`float_model`].
    type Layout = Vec<(String, usize, codec::DataType, codec::Order)>;

    fn float_model() -> (Arc<Model>, Layout) {
        let mut yaml = String::from(
            "mqtt: { host: localhost, status_topic: t/status }\ndevices:\n  - name: m\n    tcp: { host: 127.0.0.1 }\n    points:\n",
        );
        let mut layout = Vec::new();
        let mut address = 0usize;
        for (ty, dtype) in [("f32", codec::DataType::F32), ("f64", codec::DataType::F64)] {
            for order in ["ABCD", "CDAB", "BADC", "DCBA"] {
                for format in ["json", "plain"] {
                    let name = format!("{ty}_{order}_{format}");
                    yaml.push_str(&format!(
                        "      - {{ name: {name}, kind: holding_register, address: {address}, type: {ty}, order: {order}, publish: {{ topic: t/{name}, format: {format} }} }}\n"
                    ));
                    let o = match order {
                        "ABCD" => codec::Order::ABCD,
                        "CDAB" => codec::Order::CDAB,
                        "BADC" => codec::Order::BADC,
                        _ => codec::Order::DCBA,
                    };
                    layout.push((name, address, dtype, o));
                    address += usize::from(dtype.width());
                }
            }
        }
        yaml.push_str(&format!(
            "      - {{ name: good, kind: holding_register, address: {address}, type: f32, publish: {{ topic: t/good, format: json }} }}\n"
        ));
        layout.push((
            "good".into(),
            address,
            codec::DataType::F32,
            codec::Order::ABCD,
        ));
        yaml.push_str(
            "groups:\n  - { source: s, format: simple, interval: 10s, topic: t/g, values: [ { key: a, point: m.f32_ABCD_json, aggregate: max }, { key: b, point: m.good } ] }\n",
        );
        let m = load_str(Path::new("f.yaml"), &yaml, Default::default(), "h")
            .unwrap_or_else(|e| panic!("{e}"));
        (Arc::new(m), layout)
    }

    /// The registers of one poll where every float point reads `v` and `good` reads 5.83.
    fn float_poll(layout: &Layout, v: f64) -> PollResult {
        let mut words = Vec::new();
        for (name, _, dtype, order) in layout {
            let x = if name == "good" { 5.83 } else { v };
            // Encode through the bits: `encode` refuses non-finite values, as it should.
            let w = match dtype {
                codec::DataType::F32 => {
                    let be = (x as f32).to_bits();
                    let abcd = [(be >> 16) as u16, be as u16];
                    reorder(&abcd, *order)
                }
                _ => {
                    let be = x.to_bits();
                    let abcd = [
                        (be >> 48) as u16,
                        (be >> 32) as u16,
                        (be >> 16) as u16,
                        be as u16,
                    ];
                    reorder(&abcd, *order)
                }
            };
            words.extend(w);
        }
        PollResult {
            device: 0,
            read_at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_001),
            first: 0,
            blocks: vec![Ok(BlockData::Words(words))],
            complete: true,
            bad: Vec::new(),
        }
    }

    /// Big-endian words (ABCD) into the registers of `order`.
    fn reorder(abcd: &[u16], order: codec::Order) -> Vec<u16> {
        let mut w: Vec<u16> = abcd.to_vec();
        if matches!(order, codec::Order::CDAB | codec::Order::DCBA) {
            w.reverse();
        }
        if matches!(order, codec::Order::BADC | codec::Order::DCBA) {
            w.iter_mut().for_each(|x| *x = x.swap_bytes());
        }
        w
    }

    #[test]
    fn nan_and_infinities_are_bad_in_every_float_type_order_and_format() {
        let (model, layout) = float_model();
        for (v, reason) in [
            (f64::NAN, "not a number"),
            (f64::INFINITY, "infinite"),
            (f64::NEG_INFINITY, "infinite"),
        ] {
            let mut e = Engine::new(Arc::clone(&model));
            let t0 = Instant::now();
            // First a good reading everywhere: 1.5 publishes on every topic.
            let out = topics(&e.on_poll(&float_poll(&layout, 1.5), t0));
            assert_eq!(out.len(), layout.len(), "{out:?}");
            let out = topics(&e.on_poll(&float_poll(&layout, v), t0 + Duration::from_millis(1000)));
            for (name, ..) in &layout {
                let topic = format!("t/{name}");
                let got: Vec<&String> = out
                    .iter()
                    .filter(|(t, _)| *t == topic)
                    .map(|(_, p)| p)
                    .collect();
                assert!(
                    out.iter()
                        .all(|(_, p)| !p.contains("NaN") && !p.contains("Infinity")),
                    "{out:?}"
                );
                if name == "good" {
                    assert_eq!(got.len(), 1, "{name}");
                    let j: serde_json::Value = serde_json::from_str(got[0]).unwrap();
                    assert_eq!(j["value"], json!(5.83));
                    assert_eq!(j["quality"], "good");
                } else if name.ends_with("json") {
                    assert_eq!(got.len(), 1, "{name}: {out:?}");
                    let j: serde_json::Value = serde_json::from_str(got[0]).unwrap();
                    assert_eq!(j["value"], serde_json::Value::Null, "{name}");
                    assert_eq!(j["quality"], "bad", "{name}");
                    assert_eq!(j["error"], reason, "{name}");
                } else {
                    assert!(got.is_empty(), "plain {name} published {got:?}");
                }
            }
            // Once per episode: the next bad reading is quiet, the good one carries on.
            let out = topics(&e.on_poll(&float_poll(&layout, v), t0 + Duration::from_millis(2000)));
            assert_eq!(out.iter().map(|(t, _)| *t).collect::<Vec<_>>(), ["t/good"]);
            // The group skipped the bad samples: its max is the good 1.5.
            let g = e.tick(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_010));
            let j: serde_json::Value = serde_json::from_slice(&g[0].payload).unwrap();
            assert_eq!(j["s"]["a"], json!(1.5), "{j}");
            assert_eq!(j["s"]["b"], json!(5.83), "{j}");
        }
    }

    fn one_point(extra: &str) -> Point {
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
    fn floats_and_scaled_values_are_published_as_people_write_them() {
        let words = |f: f32| {
            let b = f.to_bits();
            BlockData::Words(vec![(b >> 16) as u16, b as u16])
        };
        let p = one_point("type: f32");
        let v = read_value(&p, &words(5.83), 0).unwrap();
        assert_eq!(render_plain(&v, p.decimals), "5.83");
        assert_eq!(json_value(&v).to_string(), "5.83");
        // An f32 scaled by 2 stays a float (no decimals from an integer scale), tidy.
        let p = one_point("type: f32, scale: 2");
        let v = read_value(&p, &words(5.83), 0).unwrap();
        assert_eq!(render_plain(&v, p.decimals), "11.66");
        // decimals applies in plain and JSON alike.
        let p = one_point("type: f32, decimals: 1");
        let v = read_value(&p, &words(5.83), 0).unwrap();
        assert_eq!(render_plain(&v, p.decimals), "5.8");
        assert_eq!(json_value(&v).to_string(), "5.8");
        // Raw 32767 * 0.1 is 3276.7, not 3276.7000000000003, with or without decimals.
        let p = one_point("type: i16, scale: 0.1, decimals: 3");
        let v = read_value(&p, &BlockData::Words(vec![32767]), 0).unwrap();
        assert_eq!(json_value(&v).to_string(), "3276.7");
        assert_eq!(render_plain(&v, p.decimals), "3276.700");
        let p = one_point("type: u16, scale: 0.1, offset: 0.2, decimals: 9");
        let v = read_value(&p, &BlockData::Words(vec![1]), 0).unwrap();
        assert_eq!(json_value(&v).to_string(), "0.3");
        // Scaling that overflows is infinite, not published.
        let p = one_point("type: f64, scale: 1e300");
        let b = 1e300f64.to_bits();
        let w = vec![
            (b >> 48) as u16,
            (b >> 32) as u16,
            (b >> 16) as u16,
            b as u16,
        ];
        assert_eq!(
            read_value(&p, &BlockData::Words(w), 0),
            Err(Unusable::Infinite)
        );
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
