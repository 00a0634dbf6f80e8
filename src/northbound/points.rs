//! The point-topics profile: one topic per point and derived value, plain or JSON, with the
//! publish modes (interval, on-change with deadband, both, max-silence), quality and staleness,
//! and the retained device status topics. It claims the `commands` topics.
//!
//! Pure: updates and the monotonic `now` come in, publications go out. Must not decode
//! registers (the engine's job), parse commands (`mappings::command`), or do I/O.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::json;

use super::Profile;
use crate::mappings::engine::{Quality, Reading, Source, Update, Value, ValueUpdate};
use crate::mappings::number;
use crate::model::{Format, Model, Point, PublishMode, PublishRule};
use crate::vocabulary::{DeviceId, DeviceStatus, Publication, Qos, timestamp};

#[derive(Debug, Default, Clone)]
struct PubState {
    last_value: Option<Value>,
    last_pub: Option<Instant>,
    /// Force the next good value out (after a quality change).
    force: bool,
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

/// The JSON payload of a point: `{"error"?, "quality", "ts", "unit"?, "value"}`, keys in
/// that (sorted) order, as `serde_json::Value` prints them; written straight into the buffer,
/// without building a map (this runs once per published value). `value` is null when absent or
/// not finite; strings are escaped by serde_json.
///
/// The text is written into a scratch buffer kept per thread and returned as a copy of exactly
/// its length: the MQTT client turns the payload into `Bytes`, which takes a vector whose length
/// is its capacity as it is, but any other with one more allocation (bytes 1.x,
/// `From<Vec<u8>> for Bytes`).
fn json_payload(
    p: &Point,
    v: Option<&Value>,
    ts: &str,
    quality: &str,
    error: Option<&str>,
) -> Vec<u8> {
    thread_local! {
        static SCRATCH: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(Vec::with_capacity(256));
    }
    SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
        Ok(mut buf) => {
            buf.clear();
            write_json_payload(&mut buf, p, v, ts, quality, error);
            buf.to_vec()
        }
        // Not reached (nothing in the writer calls back here); a fresh vector is still right.
        Err(_) => {
            let mut out = Vec::new();
            write_json_payload(&mut out, p, v, ts, quality, error);
            out
        }
    })
}

/// [`json_payload`]'s text, appended to `out`.
fn write_json_payload(
    out: &mut Vec<u8>,
    p: &Point,
    v: Option<&Value>,
    ts: &str,
    quality: &str,
    error: Option<&str>,
) {
    out.push(b'{');
    if let Some(e) = error {
        out.extend_from_slice(b"\"error\":");
        json_str(out, e);
        out.push(b',');
    }
    out.extend_from_slice(b"\"quality\":");
    json_str(out, quality);
    out.extend_from_slice(b",\"ts\":\"");
    // RFC 3339 with milliseconds (`TsText`): digits, dashes, colons, `T`, `Z`; nothing to escape.
    out.extend_from_slice(ts.as_bytes());
    out.push(b'"');
    if let Some(u) = &p.unit {
        out.extend_from_slice(b",\"unit\":");
        json_str(out, u);
    }
    out.extend_from_slice(b",\"value\":");
    let written = match v {
        None => serde_json::to_writer(&mut *out, &()),
        Some(Value::Bool(b)) => serde_json::to_writer(&mut *out, b),
        Some(Value::Int(i)) => serde_json::to_writer(&mut *out, i),
        Some(Value::UInt(u)) => serde_json::to_writer(&mut *out, u),
        Some(Value::F32(f)) => serde_json::to_writer(&mut *out, &number::f32_to_f64(*f)),
        Some(Value::Float(f)) => serde_json::to_writer(&mut *out, f),
        Some(Value::Text(t)) => serde_json::to_writer(&mut *out, t.as_str()),
    };
    debug_assert!(written.is_ok(), "writing JSON into a Vec cannot fail");
    out.push(b'}');
}

/// `s` as a JSON string, escaped by serde_json.
fn json_str(out: &mut Vec<u8>, s: &str) {
    let written = serde_json::to_writer(&mut *out, s);
    debug_assert!(written.is_ok(), "writing JSON into a Vec cannot fail");
}

/// The RFC 3339 text (milliseconds, UTC) of the last time rendered. The values of one read
/// block share their read time, so a 1,000-value block formats it once, not 1,000 times (it was
/// 3 % of the gateway's CPU at 100,000 values/s).
#[derive(Debug, Default)]
struct TsText {
    at: Option<SystemTime>,
    text: String,
}

impl TsText {
    /// `at` as `2026-11-30T16:24:04.200Z`.
    fn get(&mut self, at: SystemTime) -> &str {
        if self.at != Some(at) {
            use std::fmt::Write as _;
            self.text.clear();
            let _ = write!(self.text, "{}", humantime::format_rfc3339_millis(at));
            self.at = Some(at);
        }
        &self.text
    }
}

/// The point-topics profile; see the module docs.
#[derive(Debug)]
pub struct PointTopics {
    model: Arc<Model>,
    points: Vec<PubState>,
    derived: Vec<PubState>,
    ts: TsText,
}

impl PointTopics {
    pub fn new(model: Arc<Model>) -> Self {
        PointTopics {
            points: vec![PubState::default(); model.points.len()],
            derived: vec![PubState::default(); model.derived.len()],
            model,
            ts: TsText::default(),
        }
    }

    fn point(&mut self, pid: usize, u: &ValueUpdate, now: Instant, out: &mut Vec<Publication>) {
        let model = &self.model;
        let (Some(p), Some(st)) = (model.points.get(pid), self.points.get_mut(pid)) else {
            return;
        };
        let json_rule = p.publish.as_ref().filter(|r| r.format == Format::Json);
        match &u.reading {
            Reading::Good(v) => {
                if u.previous != Quality::Good {
                    st.force = true;
                }
                let poll = model.devices[u.device].poll_interval;
                if let Some(rule) = &p.publish
                    && due(rule, st, v, now, poll)
                {
                    let payload = match rule.format {
                        Format::Plain => render_plain(v, p.decimals).into_bytes(),
                        Format::Json => {
                            json_payload(p, Some(v), self.ts.get(u.read_at), "good", None)
                        }
                    };
                    out.push(publication(rule, payload, u.read_at));
                    st.last_pub = Some(now);
                    st.last_value = Some(v.clone());
                    st.force = false;
                }
            }
            Reading::Bad(reason) => {
                if u.previous != Quality::Bad
                    && let Some(rule) = json_rule
                {
                    let ts = self.ts.get(u.read_at);
                    let payload = json_payload(p, None, ts, "bad", Some(reason));
                    out.push(publication(rule, payload, u.read_at));
                }
            }
            Reading::Stale(v) => {
                if let Some(rule) = json_rule {
                    let payload = json_payload(p, Some(v), self.ts.get(u.read_at), "stale", None);
                    out.push(publication(rule, payload, u.at));
                }
            }
        }
    }

    fn derived(&mut self, di: usize, u: &ValueUpdate, now: Instant, out: &mut Vec<Publication>) {
        let model = Arc::clone(&self.model);
        let (Some(d), Some(st)) = (model.derived.get(di), self.derived.get_mut(di)) else {
            return;
        };
        let Reading::Good(v) = &u.reading else {
            // An input is not good (or its device is down): the next good value goes out.
            st.force = true;
            return;
        };
        let poll = model.devices[u.device].poll_interval;
        if !due(&d.publish, st, v, now, poll) {
            return;
        }
        let payload = match d.publish.format {
            Format::Plain => render_plain(v, None).into_bytes(),
            Format::Json => {
                json!({"value": json_value(v), "ts": timestamp(u.read_at), "quality": "good"})
                    .to_string()
                    .into_bytes()
            }
        };
        out.push(publication(&d.publish, payload, u.read_at));
        st.last_pub = Some(now);
        st.last_value = Some(v.clone());
        st.force = false;
    }

    fn device(
        &self,
        device: DeviceId,
        status: &DeviceStatus,
        at: SystemTime,
        out: &mut Vec<Publication>,
    ) {
        let Some(dev) = self.model.devices.get(device) else {
            return;
        };
        let payload = match status {
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
    }
}

impl Profile for PointTopics {
    fn name(&self) -> &'static str {
        "points"
    }

    fn on_update(&mut self, update: &Update, now: Instant, out: &mut Vec<Publication>) {
        match update {
            Update::Value(u) => match u.source {
                Source::Point(pid) => self.point(pid, u, now, out),
                Source::Derived(di) => self.derived(di, u, now, out),
            },
            Update::Device { device, status, at } => self.device(*device, status, *at, out),
        }
    }

    /// The `commands` topics, once each.
    fn command_topics(&self) -> Vec<(Arc<str>, Qos)> {
        self.model.subscriptions()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load_str;
    use crate::mappings::codec;
    use crate::mappings::engine::tests::{YAML, one_point};
    use crate::mappings::engine::{Unusable, read_value};
    use crate::northbound::Pipeline;
    use crate::vocabulary::{BlockData, Fault, PollResult};
    use std::path::Path;

    /// The payload as `serde_json::Value` prints it: the reference the direct writer matches.
    fn reference_payload(
        p: &Point,
        v: Option<&Value>,
        ts: SystemTime,
        quality: &str,
        error: Option<&str>,
    ) -> String {
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
        obj.to_string()
    }

    #[test]
    fn the_timestamp_text_follows_the_time() {
        let mut ts = TsText::default();
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(ts.get(t), "2023-11-14T22:13:20.123Z");
        assert_eq!(ts.get(t), "2023-11-14T22:13:20.123Z");
        let later = t + Duration::from_millis(1);
        assert_eq!(ts.get(later), "2023-11-14T22:13:20.124Z");
        assert_eq!(ts.get(t), "2023-11-14T22:13:20.123Z");
    }

    #[test]
    fn json_payload_is_byte_for_byte_what_serde_json_prints() {
        let plain = one_point("type: u16");
        let unit = one_point("type: u16, unit: \"°C \\\"inner\\\" \\\\ \\t\"");
        assert!(unit.unit.as_deref().is_some_and(|u| u.contains('"')));
        let values = [
            None,
            Some(Value::Bool(true)),
            Some(Value::Int(i64::MIN)),
            Some(Value::UInt(u64::MAX)),
            Some(Value::F32(21.7)),
            Some(Value::F32(f32::NAN)),
            Some(Value::F32(f32::INFINITY)),
            Some(Value::Float(-0.0)),
            Some(Value::Float(6.0)),
            Some(Value::Float(1e300)),
            Some(Value::Text("a \"q\" \u{1} ü \\ \n".into())),
        ];
        let times = [
            SystemTime::UNIX_EPOCH,
            SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
        ];
        for p in [&plain, &unit] {
            for v in &values {
                for ts in times {
                    for (quality, error) in [("good", None), ("bad", Some("timeout \"x\"\n"))] {
                        let text = humantime::format_rfc3339_millis(ts).to_string();
                        let got = json_payload(p, v.as_ref(), &text, quality, error);
                        // Exactly its length: `Bytes` takes it without another allocation.
                        assert_eq!(got.capacity(), got.len(), "{v:?}");
                        let want = reference_payload(p, v.as_ref(), ts, quality, error);
                        assert_eq!(String::from_utf8(got).unwrap(), want, "{v:?}");
                    }
                }
            }
        }
    }

    fn engine() -> Pipeline {
        Pipeline::new(Arc::new(
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
            let mut e = Pipeline::new(Arc::clone(&model));
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

    /// The profile alone: hand-made updates in, publications out; no engine, no I/O, no clock.
    #[test]
    fn a_profile_is_driven_by_updates_alone() {
        let model = Arc::new(load_str(Path::new("t.yaml"), YAML, Default::default(), "h").unwrap());
        let mut profile = PointTopics::new(Arc::clone(&model));
        let t0 = Instant::now();
        let read_at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let temp = |reading, previous| {
            Update::Value(ValueUpdate {
                source: Source::Point(1),
                device: 0,
                reading,
                previous,
                read_at,
                at: read_at,
            })
        };
        let mut out = Vec::new();
        profile.on_update(
            &temp(Reading::Good(Value::Float(21.5)), Quality::Unknown),
            t0,
            &mut out,
        );
        assert_eq!(out.len(), 1);
        assert_eq!(&*out[0].topic, "t/temp");
        assert_eq!(
            String::from_utf8_lossy(&out[0].payload),
            r#"{"quality":"good","ts":"2023-11-14T22:13:20.000Z","unit":"°C","value":21.5}"#
        );
        // Within the deadband: nothing; a failure: one bad message, once.
        out.clear();
        profile.on_update(
            &temp(Reading::Good(Value::Float(21.7)), Quality::Good),
            t0,
            &mut out,
        );
        assert!(out.is_empty());
        profile.on_update(
            &temp(Reading::Bad("timeout".into()), Quality::Good),
            t0,
            &mut out,
        );
        profile.on_update(
            &temp(Reading::Bad("timeout".into()), Quality::Bad),
            t0,
            &mut out,
        );
        assert_eq!(out.len(), 1);
        assert!(String::from_utf8_lossy(&out[0].payload).contains(r#""error":"timeout""#));
        // A lifecycle update becomes the retained status message.
        out.clear();
        let down = Update::Device {
            device: 0,
            status: DeviceStatus::Error("timeout".into()),
            at: read_at,
        };
        profile.on_update(&down, t0, &mut out);
        assert_eq!(&*out[0].topic, "t/status/tower");
        assert!(out[0].retain);
        // It claims no command topics in this mapping, and announces nothing.
        assert!(profile.command_topics().is_empty());
        assert!(profile.announce(read_at).is_empty());
    }
}
