//! Grouped messages: aggregation over send intervals and the simple / detailed / per-point
//! payloads, with a stable configuration id.
//!
//! Pure: wall-clock time comes in as an argument. Windows are aligned to multiples of the
//! interval since the Unix epoch, so a 10 s group sends at :00, :10, :20 whatever the start
//! time. A window that the gateway slept through is not sent afterwards as an empty burst.
//! The groups profile (`northbound::groups`) drives it. Must not do I/O, read a clock, or
//! import the engine or the profiles.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value as Json, json};
use sha1::{Digest, Sha1};

use crate::model::{Aggregate, Group, GroupFormat, Model};
use crate::vocabulary::{DeviceId, PointId, Publication, timestamp};

/// SI prefixes we convert across: the factor from a prefixed unit to its base.
fn prefix(unit: &str) -> (f64, &str) {
    // Longest match first; a bare unit that happens to start with a prefix letter (`m` alone,
    // `min`) stays as it is unless the rest is a known base unit.
    const BASES: &[&str] = &[
        "Wh", "varh", "VAh", "W", "var", "VA", "V", "A", "Hz", "Ohm", "m3", "l",
    ];
    for (p, f) in [("k", 1e3), ("M", 1e6), ("G", 1e9), ("m", 1e-3)] {
        if let Some(rest) = unit.strip_prefix(p)
            && BASES.contains(&rest)
        {
            return (f, rest);
        }
    }
    (1.0, unit)
}

/// The factor that turns a value in `from` into `to` (`W` -> `mW` is 1000), if they are the
/// same quantity with different SI prefixes.
pub fn unit_factor(from: &str, to: &str) -> Option<f64> {
    let (ff, fb) = prefix(from);
    let (tf, tb) = prefix(to);
    (fb == tb).then(|| ff / tf)
}

/// Canonical JSON: object keys sorted, no spaces, numbers as serde_json writes them. Key order
/// in the YAML (or a JSON library's map order) can never change it.
pub fn canonical(v: &Json) -> String {
    fn write(v: &Json, out: &mut String) {
        match v {
            Json::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                out.push('{');
                for (i, k) in keys.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&Json::String((*k).clone()).to_string());
                    out.push(':');
                    write(&m[*k], out);
                }
                out.push('}');
            }
            Json::Array(a) => {
                out.push('[');
                for (i, x) in a.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write(x, out);
                }
                out.push(']');
            }
            other => out.push_str(&other.to_string()),
        }
    }
    let mut out = String::new();
    write(v, &mut out);
    out
}

/// SHA-1 (40 hex digits) of the source id and the canonical configuration.
pub fn configuration_id(source: &str, configuration: &Json) -> String {
    let mut h = Sha1::new();
    h.update(source.as_bytes());
    h.update(b"\n");
    h.update(canonical(configuration).as_bytes());
    let mut out = String::with_capacity(40);
    for b in h.finalize() {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// The retained (by default) detailed configuration messages of `groups`: one per
/// configuration topic, holding every source that shares it, in file order.
pub fn configuration_publications(groups: &[Group], at: SystemTime) -> Vec<Publication> {
    let mut out: Vec<(Publication, serde_json::Map<String, Json>)> = Vec::new();
    for g in groups {
        let Some(topic) = g.configuration_topic.clone() else {
            continue;
        };
        let entry = json!({ "id": g.id, "configuration": g.configuration });
        match out.iter_mut().find(|(p, _)| p.topic == topic) {
            Some((_, body)) => {
                body.insert(g.source.to_string(), entry);
            }
            None => {
                let mut body = serde_json::Map::new();
                body.insert(g.source.to_string(), entry);
                out.push((
                    Publication {
                        topic,
                        payload: Vec::new(),
                        qos: g.configuration_qos,
                        retain: g.configuration_retain,
                        created_at: at,
                    },
                    body,
                ));
            }
        }
    }
    out.into_iter()
        .map(|(mut p, body)| {
            p.payload = Json::Object(body).to_string().into_bytes();
            p
        })
        .collect()
}

/// The numeric status of the simple format and the strings of the detailed one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupStatus {
    Unknown,
    Ok,
    Warning,
    Error,
}

impl GroupStatus {
    pub const fn code(self) -> u8 {
        match self {
            GroupStatus::Unknown => 0,
            GroupStatus::Ok => 1,
            GroupStatus::Warning => 2,
            GroupStatus::Error => 3,
        }
    }
    pub const fn name(self) -> &'static str {
        match self {
            GroupStatus::Unknown => "STATUS_UNKNOWN",
            GroupStatus::Ok => "STATUS_OK",
            GroupStatus::Warning => "STATUS_WARNING",
            GroupStatus::Error => "STATUS_ERROR",
        }
    }
}

/// Running aggregate of one value over one window.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Acc {
    count: u32,
    sum: f64,
    min: f64,
    max: f64,
    last: f64,
}

impl Acc {
    /// Add a sample; NaN and infinities are not samples.
    pub fn add(&mut self, v: f64) {
        if !v.is_finite() {
            return;
        }
        if self.count == 0 {
            self.min = v;
            self.max = v;
        } else {
            self.min = self.min.min(v);
            self.max = self.max.max(v);
        }
        self.count += 1;
        self.sum += v;
        self.last = v;
    }

    pub fn result(&self, how: Aggregate) -> Option<f64> {
        (self.count > 0).then(|| match how {
            Aggregate::Mean => self.sum / f64::from(self.count),
            Aggregate::Last => self.last,
            Aggregate::Min => self.min,
            Aggregate::Max => self.max,
            Aggregate::Sum => self.sum,
        })
    }
}

fn since_epoch(t: SystemTime) -> Duration {
    t.duration_since(UNIX_EPOCH).unwrap_or_default()
}

/// The first multiple of `interval` (since the epoch) strictly after `now`.
pub fn next_boundary(now: SystemTime, interval: Duration) -> SystemTime {
    let n = since_epoch(now).as_nanos();
    let i = interval.as_nanos().max(1);
    let next = (n / i + 1) * i;
    UNIX_EPOCH + Duration::new((next / 1_000_000_000) as u64, (next % 1_000_000_000) as u32)
}

#[derive(Debug, Clone)]
struct GroupState {
    accs: Vec<Acc>,
    /// Read time of the newest sample in the window.
    newest: Option<SystemTime>,
    /// The window of the group's message; kept on the first group of a shared topic only
    /// (its `leader`), which closes the window for every group merged into that message.
    window_end: Option<SystemTime>,
}

/// Aggregates samples of every group and renders them when their window closes. Groups that
/// share a topic (simple or detailed format) close together into one message.
#[derive(Debug)]
pub struct Groups {
    model: Arc<Model>,
    state: Vec<GroupState>,
    /// The group whose window each group's message follows.
    leader: Vec<usize>,
    /// point -> (group, value index)
    by_point: HashMap<PointId, Vec<(usize, usize)>>,
    device_up: Vec<Option<bool>>,
}

/// The index of the first group with the same message topic (simple and detailed formats;
/// per-point groups never merge).
fn leaders(groups: &[Group]) -> Vec<usize> {
    groups
        .iter()
        .enumerate()
        .map(|(gi, g)| {
            if g.format == GroupFormat::PerPoint {
                return gi;
            }
            groups
                .iter()
                .position(|o| o.format == g.format && o.topic == g.topic)
                .unwrap_or(gi)
        })
        .collect()
}

impl Groups {
    pub fn new(model: Arc<Model>) -> Self {
        let mut by_point: HashMap<PointId, Vec<(usize, usize)>> = HashMap::new();
        for (gi, g) in model.groups.iter().enumerate() {
            for (vi, v) in g.values.iter().enumerate() {
                by_point.entry(v.point).or_default().push((gi, vi));
            }
        }
        Groups {
            state: model
                .groups
                .iter()
                .map(|g| GroupState {
                    accs: vec![Acc::default(); g.values.len()],
                    newest: None,
                    window_end: None,
                })
                .collect(),
            leader: leaders(&model.groups),
            device_up: vec![None; model.devices.len()],
            by_point,
            model,
        }
    }

    /// A fresh numeric value of a point, read at `read_at`.
    pub fn sample(&mut self, point: PointId, value: f64, read_at: SystemTime) {
        let Some(targets) = self.by_point.get(&point) else {
            return;
        };
        for &(gi, vi) in targets {
            let li = self.leader[gi];
            let interval = self.model.groups[li].interval;
            self.state[li]
                .window_end
                .get_or_insert_with(|| next_boundary(read_at, interval));
            let st = &mut self.state[gi];
            st.accs[vi].add(value);
            if value.is_finite() && st.newest.is_none_or(|n| n < read_at) {
                st.newest = Some(read_at);
            }
        }
    }

    pub fn device_status(&mut self, device: DeviceId, up: bool) {
        if let Some(d) = self.device_up.get_mut(device) {
            *d = Some(up);
        }
    }

    /// When the next window closes (for the caller's timer).
    pub fn next_deadline(&self) -> Option<SystemTime> {
        self.state.iter().filter_map(|s| s.window_end).min()
    }

    /// Close every window that ended by `now` and render it.
    pub fn tick(&mut self, now: SystemTime) -> Vec<Publication> {
        let mut out = Vec::new();
        let model = Arc::clone(&self.model);
        for (li, g) in model.groups.iter().enumerate() {
            if self.leader[li] != li {
                continue;
            }
            match self.state[li].window_end {
                // A group starts with its first sample; one whose devices never answered still
                // reports, with the error status, from its first boundary on.
                None => self.state[li].window_end = Some(next_boundary(now, g.interval)),
                Some(end) if now >= end => {
                    let members: Vec<usize> = (0..model.groups.len())
                        .filter(|&gi| self.leader[gi] == li)
                        .collect();
                    let parts: Vec<Part<'_>> = members
                        .iter()
                        .map(|&gi| {
                            let (m, st) = (&model.groups[gi], &self.state[gi]);
                            Part {
                                group: m,
                                accs: &st.accs,
                                status: status(m, &st.accs, &self.device_up),
                                newest: st.newest,
                            }
                        })
                        .collect();
                    out.extend(render_parts(&parts, end));
                    for gi in members {
                        let st = &mut self.state[gi];
                        st.accs.iter_mut().for_each(|a| *a = Acc::default());
                        st.newest = None;
                    }
                    self.state[li].window_end = Some(next_boundary(now, g.interval));
                }
                Some(end) if end > now + g.interval => {
                    // The clock went back: start a new window from here.
                    self.state[li].window_end = Some(next_boundary(now, g.interval));
                }
                Some(_) => {}
            }
        }
        out
    }
}

/// One source's share of a message: its group, the window's aggregates, status and the read
/// time of its newest sample.
#[derive(Debug, Clone, Copy)]
pub struct Part<'a> {
    pub group: &'a Group,
    pub accs: &'a [Acc],
    pub status: GroupStatus,
    pub newest: Option<SystemTime>,
}

fn status(g: &Group, accs: &[Acc], device_up: &[Option<bool>]) -> GroupStatus {
    if g.devices
        .iter()
        .any(|&d| device_up.get(d).copied().flatten() == Some(false))
    {
        return GroupStatus::Error;
    }
    let have = accs.iter().filter(|a| a.count > 0).count();
    if have == accs.len() {
        GroupStatus::Ok
    } else if have > 0 {
        GroupStatus::Warning
    } else if g
        .devices
        .iter()
        .all(|&d| device_up.get(d).copied().flatten().is_none())
    {
        GroupStatus::Unknown
    } else {
        GroupStatus::Warning
    }
}

fn value_json(g: &Group, accs: &[Acc], i: usize) -> Json {
    let v = &g.values[i];
    match accs.get(i).and_then(|a| a.result(v.aggregate)) {
        Some(x) => {
            let x = super::number::round_to(x * v.factor, v.decimals);
            if x.fract() == 0.0 && x.abs() < 9.0e15 {
                json!(x as i64)
            } else {
                json!(x)
            }
        }
        None => Json::Null,
    }
}

/// The messages of one group's closed window that ended `at`. With empty `accs` every value
/// is null (the sample).
pub fn render(g: &Group, accs: &[Acc], status: GroupStatus, at: SystemTime) -> Vec<Publication> {
    render_parts(
        &[Part {
            group: g,
            accs,
            status,
            newest: None,
        }],
        at,
    )
}

/// The messages of a window that ended `at`, for groups sharing one topic (the first part's
/// topic, QoS and retain): one object per source. The timestamp is the read time of the
/// source's newest sample in the window (the window's end when it had none): with its nanos
/// in the detailed format, in whole Unix seconds (rounded down) in the simple one.
pub fn render_parts(parts: &[Part<'_>], at: SystemTime) -> Vec<Publication> {
    let Some(first) = parts.first() else {
        return Vec::new();
    };
    let g0 = first.group;
    let pubn = |topic: Arc<str>, body: Json| Publication {
        topic,
        payload: body.to_string().into_bytes(),
        qos: g0.qos,
        retain: g0.retain,
        created_at: at,
    };
    let mut merged = serde_json::Map::new();
    for p in parts {
        let g = p.group;
        let t = since_epoch(p.newest.unwrap_or(at));
        let mut values = serde_json::Map::new();
        for (i, v) in g.values.iter().enumerate() {
            values.insert(v.key.to_string(), value_json(g, p.accs, i));
        }
        match g.format {
            GroupFormat::Simple => {
                values.insert("status".into(), json!(p.status.code()));
                values.insert("timestamp".into(), json!(t.as_secs()));
                merged.insert(g.source.to_string(), Json::Object(values));
            }
            GroupFormat::Detailed => {
                merged.insert(
                    g.source.to_string(),
                    json!({
                        "configuration_id": g.id,
                        "status": p.status.name(),
                        "timestamp": { "seconds": t.as_secs(), "nanos": t.subsec_nanos() },
                        "values": values,
                    }),
                );
            }
            GroupFormat::PerPoint => {}
        }
    }
    if g0.format != GroupFormat::PerPoint {
        return vec![pubn(g0.topic.clone(), Json::Object(merged))];
    }
    parts
        .iter()
        .flat_map(|p| {
            let g = p.group;
            g.values.iter().enumerate().map(move |(i, v)| {
                let value = value_json(g, p.accs, i);
                let quality = match (&value, p.status) {
                    (Json::Null, GroupStatus::Error) => "stale",
                    (Json::Null, _) => "bad",
                    _ => "good",
                };
                let mut body = json!({ "value": value, "ts": timestamp(at), "quality": quality });
                if let Some(u) = &v.unit {
                    body["unit"] = json!(u.as_ref());
                }
                (Arc::from(format!("{}/{}", g.topic, v.key)), body)
            })
        })
        .map(|(t, b)| pubn(t, b))
        .collect()
}

/// What `check --sample` prints: every message of `groups` with every value null, merged as
/// at run time (one message per shared topic), in file order.
pub fn sample_messages(groups: &[Group]) -> Vec<(Arc<str>, String)> {
    let text = |p: Publication| (p.topic, String::from_utf8_lossy(&p.payload).into_owned());
    let confs = configuration_publications(groups, UNIX_EPOCH);
    let leader = leaders(groups);
    let mut out = Vec::new();
    for (gi, g) in groups.iter().enumerate() {
        if let Some(ct) = &g.configuration_topic
            && !out.iter().any(|(t, _): &(Arc<str>, String)| t == ct)
            && let Some(c) = confs.iter().find(|c| &c.topic == ct)
        {
            out.push(text(c.clone()));
        }
        if leader[gi] != gi {
            continue;
        }
        let parts: Vec<Part<'_>> = (0..groups.len())
            .filter(|&m| leader[m] == gi)
            .map(|m| Part {
                group: &groups[m],
                accs: &[],
                status: GroupStatus::Unknown,
                newest: None,
            })
            .collect();
        out.extend(render_parts(&parts, UNIX_EPOCH).into_iter().map(text));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load_str;
    use std::path::Path;

    fn model(yaml: &str) -> Arc<Model> {
        Arc::new(
            load_str(Path::new("g.yaml"), yaml, Default::default(), "h")
                .unwrap_or_else(|e| panic!("{e}")),
        )
    }

    const YAML: &str = r#"
mqtt: { host: localhost, status_topic: t/status }
devices:
  - name: meter
    tcp: { host: 127.0.0.1 }
    points:
      - { name: u2, kind: input_register, address: 0, type: f32, unit: V }
      - { name: p2, kind: input_register, address: 2, type: i32, scale: 0.1, unit: W }
      - { name: e, kind: input_register, address: 4, type: u32, unit: Wh }
groups:
  - source: s0
    format: detailed
    interval: 10s
    configuration_topic: t/config
    measurement_topic: t/measurement
    label: Meter L2
    class: meter
    device_type: three_phase_meter
    meta: { phase: L2, serial: "A1" }
    values:
      - { key: voltage_L2, point: meter.u2, obis_code: "1-0:52.4.0*255", unit: mV, decimals: 0 }
      - { key: "active_power_+_L2", point: meter.p2, obis_code: "1-0:41.4.0*255", unit: mW, decimals: 0 }
      - { key: energy, point: meter.e, kind: counter, obis_code: "1-0:1.8.0*255" }
  - source: s1
    format: simple
    interval: 10s
    topic: t/simple
    values:
      - { key: voltage_L2, point: meter.u2, aggregate: max }
      - { key: energy, point: meter.e, kind: counter }
  - source: s2
    format: per_point
    interval: 10s
    topic: t/pp
    values:
      - { key: voltage_L2, point: meter.u2, aggregate: min }
"#;

    fn at(secs: u64, millis: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(millis)
    }

    fn text(p: &Publication) -> String {
        String::from_utf8_lossy(&p.payload).into_owned()
    }

    #[test]
    fn aggregates() {
        let mut a = Acc::default();
        assert_eq!(
            a.result(Aggregate::Mean),
            None,
            "an empty interval has no value"
        );
        for v in [1.0, 2.0, 6.0] {
            a.add(v);
        }
        a.add(f64::NAN);
        a.add(f64::INFINITY);
        assert_eq!(a.result(Aggregate::Mean), Some(3.0));
        assert_eq!(a.result(Aggregate::Min), Some(1.0));
        assert_eq!(a.result(Aggregate::Max), Some(6.0));
        assert_eq!(a.result(Aggregate::Sum), Some(9.0));
        assert_eq!(a.result(Aggregate::Last), Some(6.0));
        // A counter that wraps is reported as read: the last value, never a mean across the wrap.
        let mut c = Acc::default();
        c.add(4_294_967_290.0);
        c.add(5.0);
        assert_eq!(c.result(Aggregate::Last), Some(5.0));
    }

    #[test]
    fn units_convert_across_si_prefixes_only() {
        assert_eq!(unit_factor("W", "mW"), Some(1000.0));
        assert_eq!(unit_factor("kWh", "Wh"), Some(1000.0));
        assert_eq!(unit_factor("V", "mV"), Some(1000.0));
        assert_eq!(unit_factor("mA", "A"), Some(0.001));
        assert_eq!(unit_factor("°C", "°C"), Some(1.0));
        assert_eq!(unit_factor("W", "V"), None);
        assert_eq!(unit_factor("min", "s"), None);
    }

    #[test]
    fn configuration_id_is_stable_and_tracks_changes() {
        let a = model(YAML);
        let again = model(YAML);
        assert_eq!(a.groups[0].id, again.groups[0].id, "same config, same id");
        assert_eq!(a.groups[0].id.len(), 40);
        assert!(a.groups[0].id.bytes().all(|b| b.is_ascii_hexdigit()));
        // Key order in the YAML does not matter.
        let reordered = YAML.replace(
            "{ key: voltage_L2, point: meter.u2, obis_code: \"1-0:52.4.0*255\", unit: mV, decimals: 0 }",
            "{ unit: mV, decimals: 0, obis_code: \"1-0:52.4.0*255\", point: meter.u2, key: voltage_L2 }",
        );
        let reordered = reordered.replace(
            "meta: { phase: L2, serial: \"A1\" }",
            "meta: { serial: \"A1\", phase: L2 }",
        );
        assert_ne!(reordered, YAML);
        assert_eq!(model(&reordered).groups[0].id, a.groups[0].id);
        // A changed unit gives a new id; so does a changed OBIS code or label.
        let unit = YAML.replace("unit: mV, decimals: 0", "unit: V, decimals: 0");
        assert_ne!(model(&unit).groups[0].id, a.groups[0].id);
        let label = YAML.replace("label: Meter L2", "label: Meter L3");
        assert_ne!(model(&label).groups[0].id, a.groups[0].id);
        // The send interval is not part of the configuration of the values.
        let interval = YAML.replacen("interval: 10s", "interval: 60s", 1);
        assert_eq!(model(&interval).groups[0].id, a.groups[0].id);
    }

    #[test]
    fn golden_payloads_for_a_fixed_input_sequence() {
        let m = model(YAML);
        let mut g = Groups::new(Arc::clone(&m));
        g.device_status(0, true);
        // Three samples in the window (1000, 1010]: voltage 230.1, 230.2, 230.3 V; power
        // 10.5, 11.5, 12.5 W; energy 100, 101, 102 Wh.
        for (i, (u, p, e)) in [
            (230.1, 10.5, 100.0),
            (230.2, 11.5, 101.0),
            (230.3, 12.5, 102.0),
        ]
        .into_iter()
        .enumerate()
        {
            let t = at(1001 + 3 * i as u64, 250);
            g.sample(0, u, t);
            g.sample(1, p, t);
            g.sample(2, e, t);
        }
        assert_eq!(g.next_deadline(), Some(at(1010, 0)));
        assert!(g.tick(at(1009, 999)).is_empty());
        let out = g.tick(at(1010, 3));
        let by_topic: HashMap<&str, String> =
            out.iter().map(|p| (p.topic.as_ref(), text(p))).collect();
        let id = &m.groups[0].id;
        assert_eq!(
            by_topic["t/measurement"],
            format!(
                r#"{{"s0":{{"configuration_id":"{id}","status":"STATUS_OK","timestamp":{{"nanos":250000000,"seconds":1007}},"values":{{"active_power_+_L2":11500,"energy":102,"voltage_L2":230200}}}}}}"#
            )
        );
        assert_eq!(
            by_topic["t/simple"],
            r#"{"s1":{"energy":102,"status":1,"timestamp":1007,"voltage_L2":230.3}}"#
        );
        assert_eq!(
            by_topic["t/pp/voltage_L2"],
            r#"{"quality":"good","ts":"1970-01-01T00:16:50.000Z","unit":"V","value":230.1}"#
        );
        let conf = configuration_publications(&m.groups[..1], at(0, 0)).remove(0);
        assert!(conf.retain);
        assert_eq!(
            text(&conf),
            format!(
                r#"{{"s0":{{"configuration":{{"class":"meter","devicetype":"three_phase_meter","label":"Meter L2","meta":{{"phase":"L2","serial":"A1"}},"sources":null,"values":{{"active_power_+_L2":{{"obis_code":"1-0:41.4.0*255","unit":"mW"}},"energy":{{"obis_code":"1-0:1.8.0*255","unit":"Wh"}},"voltage_L2":{{"obis_code":"1-0:52.4.0*255","unit":"mV"}}}}}},"id":"{id}"}}}}"#
            )
        );

        // The next window gets one voltage only: power and energy are missing -> warning, nulls.
        g.sample(0, 231.0, at(1012, 0));
        let out = g.tick(at(1020, 0));
        let m0 = out.iter().find(|p| &*p.topic == "t/measurement").unwrap();
        let j: Json = serde_json::from_slice(&m0.payload).unwrap();
        assert_eq!(j["s0"]["status"], "STATUS_WARNING");
        assert_eq!(j["s0"]["values"]["energy"], Json::Null);
        assert_eq!(j["s0"]["values"]["voltage_L2"], 231_000);

        // The device goes down: error, every value null, and per-point says stale.
        g.device_status(0, false);
        let out = g.tick(at(1030, 0));
        let s1: Json = serde_json::from_slice(
            &out.iter()
                .find(|p| &*p.topic == "t/simple")
                .unwrap()
                .payload,
        )
        .unwrap();
        assert_eq!(s1["s1"]["status"], 3);
        assert_eq!(s1["s1"]["voltage_L2"], Json::Null);
        let pp: Json = serde_json::from_slice(
            &out.iter()
                .find(|p| &*p.topic == "t/pp/voltage_L2")
                .unwrap()
                .payload,
        )
        .unwrap();
        assert_eq!(pp["quality"], "stale");
    }

    #[test]
    fn windows_align_to_the_clock_and_skip_missed_ones() {
        assert_eq!(
            next_boundary(at(1003, 500), Duration::from_secs(10)),
            at(1010, 0)
        );
        assert_eq!(
            next_boundary(at(1010, 0), Duration::from_secs(10)),
            at(1020, 0)
        );
        let m = model(YAML);
        let mut g = Groups::new(m);
        g.sample(0, 1.0, at(1001, 0));
        // The gateway slept for a minute: one message for the window that ended, stamped with
        // its newest sample, then the next boundary after now.
        let out = g.tick(at(1065, 0));
        assert_eq!(out.iter().filter(|p| &*p.topic == "t/simple").count(), 1);
        assert!(
            text(out.iter().find(|p| &*p.topic == "t/simple").unwrap())
                .contains("\"timestamp\":1001")
        );
        assert_eq!(g.next_deadline(), Some(at(1070, 0)));
        // The clock jumps back an hour: the window restarts from there.
        assert!(g.tick(at(65, 0)).is_empty());
        assert_eq!(g.next_deadline(), Some(at(70, 0)));
    }

    #[test]
    fn samples_have_null_values() {
        let m = model(YAML);
        let s = sample_messages(&m.groups[..1]);
        assert_eq!(s.len(), 2);
        assert!(s[0].1.contains("\"configuration\""));
        let j: Json = serde_json::from_str(&s[1].1).unwrap();
        assert!(
            j["s0"]["values"]
                .as_object()
                .unwrap()
                .values()
                .all(Json::is_null)
        );
        assert_eq!(j["s0"]["status"], "STATUS_UNKNOWN");
    }

    const SHARED: &str = r#"
mqtt: { host: localhost, status_topic: t/status }
devices:
  - name: meter
    tcp: { host: 127.0.0.1 }
    points:
      - { name: u1, kind: input_register, address: 0, type: f32, unit: V }
      - { name: u2, kind: input_register, address: 2, type: f32, unit: V }
groups:
  - source: s0
    format: detailed
    interval: 10s
    configuration_topic: t/config
    measurement_topic: t/measurement
    values:
      - { key: voltage_L1, point: meter.u1, obis_code: "1-0:32.4.0*255", unit: mV, decimals: 0 }
  - source: s1
    format: detailed
    interval: 10s
    configuration_topic: t/config
    measurement_topic: t/measurement
    sources: [s0]
    values:
      - { key: voltage_L2, point: meter.u2, obis_code: "1-0:52.4.0*255", unit: mV, decimals: 0 }
  - source: s0
    format: simple
    interval: 10s
    topic: t/simple
    values:
      - { key: voltage_L1, point: meter.u1 }
  - source: s2
    format: simple
    interval: 10s
    topic: t/simple
    values:
      - { key: voltage_L2, point: meter.u2 }
"#;

    #[test]
    fn groups_sharing_a_topic_are_one_message_per_interval() {
        let m = model(SHARED);
        let mut g = Groups::new(Arc::clone(&m));
        g.device_status(0, true);
        g.sample(0, 230.0, at(1002, 500));
        g.sample(1, 231.0, at(1003, 0));
        let out = g.tick(at(1010, 0));
        // One detailed measurement and one simple message, not four.
        let topics: Vec<&str> = out.iter().map(|p| p.topic.as_ref()).collect();
        assert_eq!(topics, ["t/measurement", "t/simple"]);
        let meas: Json = serde_json::from_slice(&out[0].payload).unwrap();
        assert_eq!(meas["s0"]["configuration_id"], m.groups[0].id.as_str());
        assert_eq!(meas["s1"]["configuration_id"], m.groups[1].id.as_str());
        assert_eq!(meas["s0"]["values"]["voltage_L1"], 230_000);
        assert_eq!(meas["s1"]["values"]["voltage_L2"], 231_000);
        // Each source is stamped with its own newest sample.
        assert_eq!(
            meas["s0"]["timestamp"],
            json!({"seconds": 1002, "nanos": 500_000_000})
        );
        assert_eq!(
            meas["s1"]["timestamp"],
            json!({"seconds": 1003, "nanos": 0})
        );
        let simple: Json = serde_json::from_slice(&out[1].payload).unwrap();
        assert_eq!(
            simple,
            json!({"s0": {"voltage_L1": 230, "status": 1, "timestamp": 1002},
                   "s2": {"voltage_L2": 231, "status": 1, "timestamp": 1003}})
        );
        // One retained configuration holds both detailed sources, with s1's `sources`.
        let confs = configuration_publications(&m.groups, at(0, 0));
        assert_eq!(confs.len(), 1);
        assert!(confs[0].retain);
        let c: Json = serde_json::from_slice(&confs[0].payload).unwrap();
        assert_eq!(c["s0"]["id"], m.groups[0].id.as_str());
        assert_eq!(c["s1"]["id"], m.groups[1].id.as_str());
        assert_eq!(c["s0"]["configuration"]["sources"], Json::Null);
        assert_eq!(c["s1"]["configuration"]["sources"], json!(["s0"]));
        // A window with a sample of one source only still carries both: the other is unknown.
        g.sample(1, 232.0, at(1012, 0));
        let out = g.tick(at(1020, 0));
        assert_eq!(out.len(), 2);
        let meas: Json = serde_json::from_slice(&out[0].payload).unwrap();
        assert_eq!(meas["s0"]["status"], "STATUS_WARNING");
        assert_eq!(meas["s0"]["timestamp"]["seconds"], 1020);
        assert_eq!(meas["s1"]["status"], "STATUS_OK");
        // `check --sample` shows the same merged shape.
        let samples = sample_messages(&m.groups);
        let topics: Vec<&str> = samples.iter().map(|(t, _)| t.as_ref()).collect();
        assert_eq!(topics, ["t/config", "t/measurement", "t/simple"]);
        let j: Json = serde_json::from_str(&samples[2].1).unwrap();
        assert_eq!(j.as_object().unwrap().len(), 2);
    }

    fn problems(yaml: &str) -> String {
        match load_str(Path::new("g.yaml"), yaml, Default::default(), "h") {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn sources_must_exist_and_not_form_a_cycle() {
        assert_eq!(problems(SHARED), "");
        let missing = SHARED.replace("sources: [s0]", "sources: [s0, s9]");
        let e = problems(&missing);
        assert!(
            e.contains("groups[s1].sources[1]")
                && e.contains("`s9` is not the source of any group"),
            "{e}"
        );
        let self_cycle = SHARED.replace("sources: [s0]", "sources: [s1]");
        let e = problems(&self_cycle);
        assert!(e.contains("sources form a cycle: s1 -> s1"), "{e}");
        let cycle = SHARED.replace(
            "  - source: s2\n    format: simple\n",
            "  - source: s2\n    sources: [s1]\n    format: simple\n",
        );
        let cycle = cycle.replace("sources: [s0]", "sources: [s0, s2]");
        let e = problems(&cycle);
        assert!(
            e.contains("sources form a cycle") && e.contains("s1 -> s2 -> s1"),
            "{e}"
        );
    }

    #[test]
    fn groups_sharing_a_topic_must_agree() {
        let e = problems(&SHARED.replacen(
            "interval: 10s\n    topic: t/simple\n    values:\n      - { key: voltage_L2",
            "interval: 5s\n    topic: t/simple\n    values:\n      - { key: voltage_L2",
            1,
        ));
        assert!(e.contains("interval conflicts with groups[s0]"), "{e}");
        let e = problems(&SHARED.replace("  - source: s2\n", "  - source: s0\n"));
        assert!(e.contains("source (each source once per message)"), "{e}");
    }
}
