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
use super::{BlockData, DeviceId, DeviceStatus, Fault, PollResult, Publication, Qos};
use crate::model::{Format, Model, Point, PublishMode, PublishRule};

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
            Value::F32(f) => Some(f64::from(f)),
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

/// Decode and scale one point from its request's data.
pub fn point_value(p: &Point, data: &BlockData) -> Option<Value> {
    decode_at(p, data, usize::from(p.slot.offset))
}

/// Decode and scale `p` from `data` starting at `off` (0 for a read-back of the point alone).
pub fn decode_at(p: &Point, data: &BlockData, off: usize) -> Option<Value> {
    let raw = match data {
        BlockData::Bits(bits) => Raw::Bool(*bits.get(off)?),
        BlockData::Words(words) => codec::decode(words.get(off..)?, p.dtype, p.order).ok()?,
    };
    Some(scale(p, raw))
}

fn scale(p: &Point, raw: Raw) -> Value {
    if p.is_unscaled() && (p.decimals.is_none() || matches!(raw, Raw::Int(_) | Raw::UInt(_))) {
        return match raw {
            Raw::Bool(b) => Value::Bool(b),
            Raw::Int(i) => Value::Int(i),
            Raw::UInt(u) => Value::UInt(u),
            Raw::F32(f) => Value::F32(f),
            Raw::F64(f) => Value::Float(f),
            Raw::Text(t) => Value::Text(t),
        };
    }
    match raw.as_f64() {
        Some(r) => {
            let v = r * p.scale + p.offset;
            Value::Float(match p.decimals {
                Some(d) => {
                    let m = 10f64.powi(i32::from(d));
                    (v * m).round() / m
                }
                None => v,
            })
        }
        None => match raw {
            Raw::Text(t) => Value::Text(t),
            _ => Value::Bool(false),
        },
    }
}

/// The value as plain text: `123`, `21.5`, `true`.
#[must_use]
pub fn render_plain(v: &Value, decimals: Option<u8>) -> String {
    match v {
        Value::Bool(b) => b.to_string(),
        Value::Int(i) => i.to_string(),
        Value::UInt(u) => u.to_string(),
        Value::F32(f) => f.to_string(),
        Value::Float(f) => match decimals {
            Some(d) => format!("{f:.*}", usize::from(d)),
            None => f.to_string(),
        },
        Value::Text(t) => t.clone(),
    }
}

fn json_value(v: &Value) -> serde_json::Value {
    match v {
        Value::Bool(b) => json!(b),
        Value::Int(i) => json!(i),
        Value::UInt(u) => json!(u),
        Value::F32(f) => json!(f),
        Value::Float(f) => json!(f),
        Value::Text(t) => json!(t),
    }
}

/// RFC 3339 UTC with milliseconds.
pub fn timestamp(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
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
    error: Option<&Fault>,
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
        obj["error"] = json!(e.to_string());
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
            let result = match (block, poll.bad_at(p.slot.request, p.slot.offset, width)) {
                (Ok(_), Some(f)) | (Err(f), _) => Err(f.clone()),
                (Ok(data), None) => point_value(p, data).ok_or(Fault::Exception(0)),
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
                            json_payload(p, None, poll.read_at, "bad", Some(&fault)),
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
        assert_eq!(render_plain(&Value::Bool(true), None), "true");
        assert_eq!(render_plain(&Value::Int(-3), None), "-3");
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
