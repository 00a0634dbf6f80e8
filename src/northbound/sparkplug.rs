//! The Sparkplug B edge node profile (Sparkplug 3.0, namespace `spBv1.0`): births, deaths,
//! sequence numbers, data by exception, rebirth, the primary host's STATE, and
//! store-and-forward as historical data.
//!
//! Pure, like every profile: the engine's updates and the MQTT session's news
//! ([`SessionEvent`]) come in with their times, publications go out. The MQTT side owns what
//! must happen on the wire before any of this can: the NDEATH will with its `bdSeq` (kept in
//! the state directory), subscribing NCMD, DCMD and STATE before it reports the session up,
//! and NDEATH then DISCONNECT at shutdown. DCMD writes go through the executor, which reports
//! each outcome back here as [`SessionEvent::Written`].
//!
//! The session, as this profile keeps it:
//!
//! - Born only while connected and (with a primary host) the host's STATE says online. A birth
//!   is one NBIRTH (`seq` 0, the connection's `bdSeq`, `Node Control/Rebirth = false`), then one
//!   DBIRTH per device that is up, with every metric, its alias, datatype and current value,
//!   then the stored history of that device.
//! - `seq` counts every NBIRTH, DBIRTH, DDATA and DDEATH of the session, 0-255, wrapping.
//! - Born, a change of value goes out in DDATA by alias (one message per device per poll); a
//!   device in error gets DDEATH, and DBIRTH when it answers again.
//! - Not born, every changed value is kept (bounded by the buffer's `max_messages`, oldest
//!   dropped and counted) and goes out after the next birth as DDATA with `is_historical`, its
//!   read time and new sequence numbers. So that QoS 0 data lost with a dying connection is
//!   not lost for good, values sent within two keep-alives before a disconnect are kept too
//!   (a host may see them twice, once live and once historical, with the same timestamp).
//! - The kept values are this profile's durable state ([`HISTORY_FILE`], one JSON line per
//!   value by device id and metric name): appended as they are kept, rewritten when some are
//!   sent or dropped, and restored at start and after a reload, so they survive kill -9.
//! - A device's first DBIRTH waits until every one of its metrics was read once (good or
//!   bad), so that it carries a value for each (a device's blocks may arrive apart).
//!
//! Must not: do I/O, read a clock, or write to a device.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use prost::Message;

use super::{Durable, Profile, SessionEvent};
use crate::events;
use crate::mappings::engine::{Reading, Source, Update, Value};
use crate::mappings::sparkplug::proto::Payload;
use crate::mappings::sparkplug::proto::payload::Metric;
use crate::mappings::sparkplug::{self as spb, millis};
use crate::model::{MetricSource, Model, Sparkplug};
use crate::vocabulary::{DeviceStatus, Publication, Qos};

/// The file, in the state directory, that holds the values kept for store-and-forward.
pub const HISTORY_FILE: &str = "sparkplug-history";

/// Longest STATE payload looked at (a real one is about 50 bytes).
const MAX_STATE: usize = 4096;

/// Most metrics in one historical DDATA.
const HISTORY_CHUNK: usize = 256;

/// One kept value as its durable copy holds it: by device id and metric name (aliases may
/// change with the mapping), with its read time.
#[derive(Debug, Clone, PartialEq)]
pub struct JournalValue {
    pub device_id: Arc<str>,
    pub metric: Arc<str>,
    /// `None`: the metric had no value (null).
    pub value: Option<Value>,
    pub read_at: SystemTime,
}

impl JournalValue {
    /// One line of JSON: `{"d": device id, "m": metric, "t": ms, "v": {"u": 5}}`, the value
    /// tagged with its kind (`b`, `i`, `u`, `f32`, `f`, `s`) or `null`.
    pub fn to_line(&self) -> String {
        use serde_json::json;
        let v = match &self.value {
            None => serde_json::Value::Null,
            Some(Value::Bool(b)) => json!({ "b": b }),
            Some(Value::Int(i)) => json!({ "i": i }),
            Some(Value::UInt(u)) => json!({ "u": u }),
            Some(Value::F32(f)) => json!({ "f32": f }),
            Some(Value::Float(f)) => json!({ "f": f }),
            Some(Value::Text(t)) => json!({ "s": t }),
        };
        json!({ "d": &*self.device_id, "m": &*self.metric, "t": millis(self.read_at), "v": v })
            .to_string()
    }

    /// The value of a line [`JournalValue::to_line`] wrote; `None` for anything else.
    pub fn from_line(line: &str) -> Option<JournalValue> {
        let j: serde_json::Value = serde_json::from_str(line).ok()?;
        let v = &j["v"];
        let value = if v.is_null() {
            None
        } else {
            let (k, x) = v.as_object()?.iter().next()?;
            Some(match k.as_str() {
                "b" => Value::Bool(x.as_bool()?),
                "i" => Value::Int(x.as_i64()?),
                "u" => Value::UInt(x.as_u64()?),
                "f32" => Value::F32(x.as_f64()? as f32),
                "f" => Value::Float(x.as_f64()?),
                "s" => Value::Text(x.as_str()?.to_owned()),
                _ => return None,
            })
        };
        Some(JournalValue {
            device_id: Arc::from(j["d"].as_str()?),
            metric: Arc::from(j["m"].as_str()?),
            value,
            read_at: SystemTime::UNIX_EPOCH + Duration::from_millis(j["t"].as_u64()?),
        })
    }
}

/// A value kept for store-and-forward.
#[derive(Debug, Clone)]
struct Kept {
    device: usize,
    metric: usize,
    value: Option<Value>,
    read_at: SystemTime,
}

/// The Sparkplug B edge node; see the module docs.
#[derive(Debug)]
pub struct SparkplugNode {
    model: Arc<Model>,
    /// Point / derived value -> (Sparkplug device, metric), both indices into the section.
    by_source: HashMap<MetricSource, (usize, usize)>,
    /// The latest value of each metric (`None`: null), with its read time.
    values: Vec<Vec<(Option<Value>, SystemTime)>>,
    /// The value each metric last went out (or was kept) with, for report by exception.
    sent: Vec<Vec<Option<Option<Value>>>>,
    /// The device answers: a good value since its last error.
    up: Vec<bool>,
    /// Metrics of each device not read (good or bad) yet: its first DBIRTH waits for them, so
    /// that it carries a value for every metric (a device's blocks may arrive apart).
    unread: Vec<usize>,
    read: Vec<Vec<bool>>,
    /// The device's DBIRTH went out in this birth.
    born: Vec<bool>,
    /// DDATA metrics gathered during one batch of updates, per device.
    pending: Vec<Vec<Metric>>,
    /// The live connection's bdSeq.
    bd_seq: Option<u64>,
    /// The primary host is online (always, without one); the newest STATE timestamp seen.
    host_online: bool,
    host_timestamp: u64,
    node_born: bool,
    seq: u8,
    history: VecDeque<Kept>,
    /// What changed in `history` since the engine task last took it, for the durable copy.
    journal: Vec<Durable>,
    /// Values in the durable copy (appended since its last rewrite).
    journaled: usize,
    /// Values sent live recently, (sent at, value), kept for a disconnect.
    recent: VecDeque<(SystemTime, Kept)>,
    recent_window: Duration,
    ncmd_topic: Arc<str>,
    dcmd_filter: Arc<str>,
    state_topic: Option<Arc<str>>,
}

impl SparkplugNode {
    /// The node of `model`'s `sparkplug` section; `None` when the mapping has none.
    pub fn new(model: Arc<Model>) -> Option<Self> {
        let s = model.sparkplug.as_ref()?;
        let mut by_source = HashMap::new();
        for (d, dev) in s.devices.iter().enumerate() {
            for (m, metric) in dev.metrics.iter().enumerate() {
                by_source.insert(metric.source, (d, m));
            }
        }
        let values = s
            .devices
            .iter()
            .map(|d| vec![(None, SystemTime::UNIX_EPOCH); d.metrics.len()])
            .collect();
        let sent = s
            .devices
            .iter()
            .map(|d| vec![None; d.metrics.len()])
            .collect();
        let n = s.devices.len();
        Some(SparkplugNode {
            by_source,
            values,
            sent,
            up: vec![false; n],
            unread: s.devices.iter().map(|d| d.metrics.len()).collect(),
            read: s
                .devices
                .iter()
                .map(|d| vec![false; d.metrics.len()])
                .collect(),
            born: vec![false; n],
            pending: vec![Vec::new(); n],
            bd_seq: None,
            host_online: s.primary_host_id.is_none(),
            host_timestamp: 0,
            node_born: false,
            seq: 0,
            history: VecDeque::new(),
            journal: Vec::new(),
            journaled: 0,
            recent: VecDeque::new(),
            recent_window: model.mqtt.keep_alive * 2,
            ncmd_topic: Arc::from(s.node_topic("NCMD")),
            dcmd_filter: Arc::from(s.device_topic("DCMD", "+")),
            state_topic: s.state_topic().map(Arc::from),
            model: Arc::clone(&model),
        })
    }

    fn spb(&self) -> &Sparkplug {
        self.model
            .sparkplug
            .as_ref()
            .expect("a node is only made from a model with a sparkplug section")
    }

    fn next_seq(&mut self) -> u64 {
        let s = self.seq;
        self.seq = self.seq.wrapping_add(1);
        u64::from(s)
    }

    fn frame(topic: String, payload: &Payload, at: SystemTime) -> Publication {
        // tck-id-topics-nbirth-mqtt, -dbirth-mqtt, -ddata-mqtt, -ddeath-mqtt: NBIRTH, DBIRTH, DDATA and
        // DDEATH are QoS 0 and not retained.
        Publication {
            topic: Arc::from(topic),
            payload: payload.encode_to_vec(),
            qos: Qos::AtMostOnce,
            retain: false,
            created_at: at,
        }
    }

    fn metric_value(
        &self,
        d: usize,
        m: usize,
        v: &Value,
    ) -> Option<spb::proto::payload::metric::Value> {
        let metric = &self.spb().devices[d].metrics[m];
        let decimals = match metric.source {
            MetricSource::Point(p) => self.model.points[p].decimals,
            MetricSource::Derived(_) => None,
        };
        spb::metric_value(metric.datatype, v, decimals)
    }

    /// NBIRTH, then a DBIRTH (and its history) per device that is up.
    fn birth(&mut self, at: SystemTime, out: &mut Vec<Publication>) {
        let Some(bd_seq) = self.bd_seq else { return };
        if !self.host_online {
            return;
        }
        self.seq = 0;
        let ts = millis(at);
        let seq = self.next_seq();
        let nbirth = Payload {
            timestamp: Some(ts),
            metrics: spb::node_birth_metrics(bd_seq, ts),
            seq: Some(seq),
            ..Payload::default()
        };
        out.push(Self::frame(self.spb().node_topic("NBIRTH"), &nbirth, at));
        events::sparkplug_born(&self.spb().edge_node_id, bd_seq);
        self.node_born = true;
        self.spb()
            .born
            .store(true, std::sync::atomic::Ordering::Release);
        self.born.iter_mut().for_each(|b| *b = false);
        self.pending.iter_mut().for_each(Vec::clear);
        for d in 0..self.born.len() {
            if self.up[d] && self.unread[d] == 0 {
                self.device_birth(d, at, out);
            }
        }
    }

    /// DBIRTH of device `d` with every metric's current value, then its stored history.
    fn device_birth(&mut self, d: usize, at: SystemTime, out: &mut Vec<Publication>) {
        let ts = millis(at);
        let dev = &self.spb().devices[d];
        let metrics: Vec<Metric> = dev
            .metrics
            .iter()
            .enumerate()
            .map(|(m, metric)| {
                let (v, read_at) = &self.values[d][m];
                let value = v.as_ref().and_then(|v| self.metric_value(d, m, v));
                let when = if v.is_some() { millis(*read_at) } else { ts };
                spb::birth_metric(
                    metric,
                    value,
                    when,
                    spb::point_properties(&self.model, metric),
                )
            })
            .collect();
        let topic = self.spb().device_topic("DBIRTH", &dev.device_id);
        let seq = self.next_seq();
        let p = Payload {
            timestamp: Some(ts),
            metrics,
            seq: Some(seq),
            ..Payload::default()
        };
        out.push(Self::frame(topic, &p, at));
        for m in 0..self.sent[d].len() {
            self.sent[d][m] = Some(self.values[d][m].0.clone());
        }
        self.born[d] = true;
        self.pending[d].clear();
        self.send_history(d, at, out);
    }

    /// The kept values of device `d`, oldest first, as historical DDATA.
    fn send_history(&mut self, d: usize, at: SystemTime, out: &mut Vec<Publication>) {
        let (mine, rest): (VecDeque<Kept>, VecDeque<Kept>) =
            self.history.drain(..).partition(|k| k.device == d);
        self.history = rest;
        if !mine.is_empty() {
            self.rewrite_journal();
        }
        let metrics: Vec<Metric> = mine
            .iter()
            // The DBIRTH just sent carries each metric's latest value: not again.
            .filter(|k| {
                let (v, t) = &self.values[d][k.metric];
                !(k.value == *v && k.read_at == *t)
            })
            .map(|k| {
                let alias = self.spb().devices[d].metrics[k.metric].alias;
                let value = k
                    .value
                    .as_ref()
                    .and_then(|v| self.metric_value(d, k.metric, v));
                spb::data_metric(alias, value, millis(k.read_at), true)
            })
            .collect();
        for chunk in metrics.chunks(HISTORY_CHUNK) {
            self.data(d, chunk.to_vec(), at, out);
        }
    }

    fn data(&mut self, d: usize, metrics: Vec<Metric>, at: SystemTime, out: &mut Vec<Publication>) {
        let topic = self
            .spb()
            .device_topic("DDATA", &self.spb().devices[d].device_id);
        let seq = self.next_seq();
        let p = Payload {
            timestamp: Some(millis(at)),
            metrics,
            seq: Some(seq),
            ..Payload::default()
        };
        out.push(Self::frame(topic, &p, at));
    }

    fn keep(&mut self, k: Kept) {
        self.journal_append(&k);
        self.history.push_back(k);
        let max = self.spb().history_max.max(1);
        if self.history.len() > max {
            let over = self.history.len() - max;
            self.history.drain(..over);
            events::sparkplug_history_dropped(over as u64);
        }
    }

    fn journal_value(&self, k: &Kept) -> JournalValue {
        let dev = &self.spb().devices[k.device];
        JournalValue {
            device_id: Arc::clone(&dev.device_id),
            metric: Arc::clone(&dev.metrics[k.metric].name),
            value: k.value.clone(),
            read_at: k.read_at,
        }
    }

    fn journal_append(&mut self, k: &Kept) {
        self.journaled += 1;
        // Past twice the bound, the durable copy is rewritten with what is kept.
        if self.journaled > 2 * self.spb().history_max.max(1) {
            self.rewrite_journal();
        }
        let line = self.journal_value(k).to_line();
        match self.journal.last_mut() {
            Some(Durable::Append(lines)) => lines.push(line),
            _ => self.journal.push(Durable::Append(vec![line])),
        }
    }

    fn rewrite_journal(&mut self) {
        let all: Vec<String> = self
            .history
            .iter()
            .map(|k| self.journal_value(k).to_line())
            .collect();
        self.journaled = all.len();
        self.journal.clear();
        self.journal.push(Durable::Replace(all));
    }

    /// Take back values kept by an earlier run (or before a reload), oldest first: those of
    /// metrics this mapping still has join the kept values, the others (and lines that do not
    /// parse) are dropped and counted.
    fn restore_lines(&mut self, lines: &[String]) {
        let mut unknown = 0u64;
        let mut restored: Vec<Kept> = Vec::new();
        for line in lines {
            let Some(v) = JournalValue::from_line(line) else {
                unknown += 1;
                continue;
            };
            let found = self.spb().devices.iter().enumerate().find_map(|(d, dev)| {
                (dev.device_id == v.device_id)
                    .then(|| {
                        dev.metrics
                            .iter()
                            .position(|m| m.name == v.metric)
                            .map(|m| (d, m))
                    })
                    .flatten()
            });
            match found {
                Some((device, metric)) => restored.push(Kept {
                    device,
                    metric,
                    value: v.value,
                    read_at: v.read_at,
                }),
                None => unknown += 1,
            }
        }
        if unknown > 0 {
            events::sparkplug_history_dropped(unknown);
        }
        for k in restored.into_iter().rev() {
            self.history.push_front(k);
        }
        let max = self.spb().history_max.max(1);
        if self.history.len() > max {
            let over = self.history.len() - max;
            self.history.drain(..over);
            events::sparkplug_history_dropped(over as u64);
        }
        self.rewrite_journal();
    }

    /// A new value (or null) of metric `m` of device `d`.
    fn on_value(&mut self, d: usize, m: usize, value: Option<Value>, read_at: SystemTime) {
        self.values[d][m] = (value.clone(), read_at);
        if !self.read[d][m] {
            self.read[d][m] = true;
            self.unread[d] -= 1;
        }
        if self.sent[d][m].as_ref() == Some(&value) {
            return;
        }
        self.sent[d][m] = Some(value.clone());
        let kept = Kept {
            device: d,
            metric: m,
            value,
            read_at,
        };
        if self.node_born && self.born[d] {
            let alias = self.spb().devices[d].metrics[m].alias;
            let v = kept.value.as_ref().and_then(|v| self.metric_value(d, m, v));
            self.pending[d].push(spb::data_metric(alias, v, millis(read_at), false));
            self.recent.push_back((read_at, kept));
            if self.recent.len() > self.spb().history_max.max(1) {
                self.recent.pop_front();
            }
        } else if !(self.node_born && self.up[d]) {
            // Not born (or the device is not): kept for after the birth. A device that is up
            // under a born node is about to get its DBIRTH, which carries the value.
            self.keep(kept);
        }
    }

    /// Gathered DDATA and due DBIRTHs.
    fn flush_at(&mut self, at: SystemTime, out: &mut Vec<Publication>) {
        if !self.node_born {
            return;
        }
        for d in 0..self.born.len() {
            if self.up[d] && !self.born[d] {
                if self.unread[d] == 0 {
                    self.device_birth(d, at, out);
                }
            } else if !self.pending[d].is_empty() {
                let metrics = std::mem::take(&mut self.pending[d]);
                self.data(d, metrics, at, out);
            }
        }
        // Forget what was sent live before the window.
        while self
            .recent
            .front()
            .is_some_and(|(t, _)| at.duration_since(*t).unwrap_or_default() > self.recent_window)
        {
            self.recent.pop_front();
        }
    }

    fn on_state(&mut self, payload: &[u8], at: SystemTime, out: &mut Vec<Publication>) {
        // Sparkplug 3.0 STATE payload: UTF-8 JSON {"online": bool, "timestamp": ms}.
        if payload.len() > MAX_STATE {
            events::sparkplug_state_ignored("longer than 4 KiB");
            return;
        }
        let Ok(json) = serde_json::from_slice::<serde_json::Value>(payload) else {
            events::sparkplug_state_ignored("not JSON");
            return;
        };
        let Some(online) = json.get("online").and_then(serde_json::Value::as_bool) else {
            events::sparkplug_state_ignored("no boolean `online`");
            return;
        };
        let ts = json
            .get("timestamp")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0);
        if ts < self.host_timestamp {
            // An older STATE than one already seen: stale (a retained one, or reordered).
            events::sparkplug_state_ignored("older than the last STATE");
            return;
        }
        self.host_timestamp = ts;
        events::sparkplug_host(online);
        if online && !self.host_online {
            self.host_online = true;
            self.birth(at, out);
        } else if !online && self.host_online {
            // The host is gone: publish nothing until it is back, keep the values.
            self.host_online = false;
            self.unborn(at);
        }
    }

    /// No longer born: keep what may not have arrived.
    fn unborn(&mut self, at: SystemTime) {
        self.node_born = false;
        self.spb()
            .born
            .store(false, std::sync::atomic::Ordering::Release);
        self.born.iter_mut().for_each(|b| *b = false);
        for d in 0..self.pending.len() {
            self.pending[d].clear();
        }
        let window = self.recent_window;
        let recent: Vec<Kept> = self
            .recent
            .drain(..)
            .filter(|(t, _)| at.duration_since(*t).unwrap_or_default() <= window)
            .map(|(_, k)| k)
            .collect();
        // Oldest first, before anything kept from now on.
        let requeued = !recent.is_empty();
        for k in recent.into_iter().rev() {
            self.history.push_front(k);
        }
        let max = self.spb().history_max.max(1);
        if self.history.len() > max {
            let over = self.history.len() - max;
            self.history.drain(..over);
            events::sparkplug_history_dropped(over as u64);
        }
        if requeued {
            self.rewrite_journal();
        }
    }

    /// How many values wait for the next birth (for tests and `check`).
    pub fn kept(&self) -> usize {
        self.history.len()
    }
}

impl Profile for SparkplugNode {
    fn name(&self) -> &'static str {
        "sparkplug"
    }

    fn on_update(&mut self, update: &Update, _now: Instant, out: &mut Vec<Publication>) {
        match update {
            Update::Value(v) => {
                let key = match v.source {
                    Source::Point(p) => MetricSource::Point(p),
                    Source::Derived(i) => MetricSource::Derived(i),
                };
                let Some(&(d, m)) = self.by_source.get(&key) else {
                    return;
                };
                match &v.reading {
                    Reading::Good(value) => {
                        self.up[d] = true;
                        self.on_value(d, m, Some(value.clone()), v.read_at);
                    }
                    Reading::Bad(_) => self.on_value(d, m, None, v.read_at),
                    // The device is down: its DDEATH says so.
                    Reading::Stale(_) => {}
                }
            }
            Update::Device { device, status, at } => {
                let Some(d) = self.spb().devices.iter().position(|s| s.device == *device) else {
                    return;
                };
                match status {
                    DeviceStatus::Error(_) => {
                        self.up[d] = false;
                        // Its next DBIRTH waits for every metric to be read again: values
                        // from before the error are not the device's values any more.
                        self.read[d].iter_mut().for_each(|r| *r = false);
                        self.unread[d] = self.read[d].len();
                        if self.node_born && self.born[d] {
                            // What was read before the error goes first.
                            if !self.pending[d].is_empty() {
                                let metrics = std::mem::take(&mut self.pending[d]);
                                self.data(d, metrics, *at, out);
                            }
                            let topic = self
                                .spb()
                                .device_topic("DDEATH", &self.spb().devices[d].device_id);
                            let seq = self.next_seq();
                            let p = Payload {
                                timestamp: Some(millis(*at)),
                                seq: Some(seq),
                                ..Payload::default()
                            };
                            out.push(Self::frame(topic, &p, *at));
                        }
                        self.born[d] = false;
                    }
                    // Up again with its first good value, so that its DBIRTH has values.
                    DeviceStatus::Ok | DeviceStatus::Degraded { .. } => {}
                }
            }
        }
    }

    fn flush(&mut self, at: SystemTime, out: &mut Vec<Publication>) {
        self.flush_at(at, out);
    }

    fn durable_name(&self) -> Option<&'static str> {
        Some(HISTORY_FILE)
    }

    fn take_durable(&mut self) -> Vec<Durable> {
        std::mem::take(&mut self.journal)
    }

    fn restore_durable(&mut self, lines: &[String]) {
        self.restore_lines(lines);
    }

    fn on_session(&mut self, event: &SessionEvent, at: SystemTime, out: &mut Vec<Publication>) {
        match event {
            SessionEvent::Connected { bd_seq } => {
                self.bd_seq = Some(*bd_seq);
                self.birth(at, out);
            }
            SessionEvent::Disconnected => {
                self.bd_seq = None;
                self.unborn(at);
            }
            SessionEvent::Message {
                topic,
                payload,
                retain,
            } => {
                if self.state_topic.as_deref() == Some(&**topic) {
                    self.on_state(payload, at, out);
                } else if **topic == *self.ncmd_topic {
                    match spb::decode_command(payload, *retain) {
                        Ok(p) if spb::is_rebirth(&p) => {
                            events::sparkplug_rebirth_requested(&self.ncmd_topic);
                            if self.bd_seq.is_some() && self.host_online {
                                self.birth(at, out);
                            }
                        }
                        Ok(_) => events::command_rejected(
                            topic,
                            "",
                            "NCMD without Node Control/Rebirth = true",
                            "unknown_payload",
                        ),
                        Err(e) => events::command_rejected(topic, "", &e.to_string(), "malformed"),
                    }
                }
            }
            SessionEvent::Written { points } => {
                for (pid, readback) in points {
                    let Some(&(d, m)) = self.by_source.get(&MetricSource::Point(*pid)) else {
                        continue;
                    };
                    // The read-back, or (refused, failed) the value the device still has: the
                    // host must not keep a value the device never took.
                    if let Some(v) = readback {
                        self.values[d][m] = (Some(v.clone()), at);
                    }
                    let (value, read_at) = self.values[d][m].clone();
                    self.sent[d][m] = Some(value.clone());
                    if self.node_born && self.born[d] {
                        let alias = self.spb().devices[d].metrics[m].alias;
                        let v = value.as_ref().and_then(|v| self.metric_value(d, m, v));
                        let when = if readback.is_some() { at } else { read_at };
                        self.pending[d].push(spb::data_metric(alias, v, millis(when), false));
                    }
                }
                self.flush_at(at, out);
            }
        }
    }

    fn command_topics(&self) -> Vec<(Arc<str>, Qos)> {
        // NCMD, DCMD and (with a primary host) STATE, at
        // QoS 1; subscribed by the MQTT side before it reports the session up, so before the
        // NBIRTH (tck-id-message-flow-edge-node-ncmd-subscribe, -device-dcmd-subscribe: QoS 1).
        let mut t = vec![
            (Arc::clone(&self.ncmd_topic), Qos::AtLeastOnce),
            (Arc::clone(&self.dcmd_filter), Qos::AtLeastOnce),
        ];
        if let Some(s) = &self.state_topic {
            t.push((Arc::clone(s), Qos::AtLeastOnce));
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mappings::engine::{Quality, ValueUpdate};
    use crate::mappings::sparkplug::proto::payload::metric::Value as Pb;

    const T0: u64 = 1_800_000_000_000;

    fn at(ms: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(T0 + ms)
    }

    fn model(primary: bool) -> Arc<Model> {
        let yaml = format!(
            r#"
mqtt: {{ host: 127.0.0.1, status_topic: t/status, buffer: {{ path: /tmp/fieldgate-spb-unit }} }}
sparkplug: {{ group_id: plant, edge_node_id: gw1 {} }}
devices:
  - name: tower
    tcp: {{ host: 127.0.0.1, port: 5020 }}
    points:
      - {{ name: level, kind: input_register, address: 0 }}
      - {{ name: run, kind: coil, address: 0, writable: true }}
"#,
            if primary {
                ", primary_host_id: scada"
            } else {
                ""
            }
        );
        Arc::new(
            crate::config::load_str(
                std::path::Path::new("t.yaml"),
                &yaml,
                Default::default(),
                "h",
            )
            .unwrap(),
        )
    }

    /// One poll: level and run, read at `ms`.
    fn poll(node: &mut SparkplugNode, ms: u64, level: u64, run: bool) -> Vec<Publication> {
        let mut out = Vec::new();
        for (pid, v) in [(0, Value::UInt(level)), (1, Value::Bool(run))] {
            let u = Update::Value(ValueUpdate {
                source: Source::Point(pid),
                device: 0,
                reading: Reading::Good(v),
                previous: Quality::Good,
                read_at: at(ms),
                at: at(ms),
            });
            node.on_update(&u, Instant::now(), &mut out);
        }
        node.flush(at(ms), &mut out);
        out
    }

    fn session(node: &mut SparkplugNode, ev: SessionEvent, ms: u64) -> Vec<Publication> {
        let mut out = Vec::new();
        node.on_session(&ev, at(ms), &mut out);
        out
    }

    fn decode(p: &Publication) -> (String, Payload) {
        let kind = p.topic.split('/').nth(2).unwrap().to_owned();
        (kind, Payload::decode(p.payload.as_slice()).unwrap())
    }

    fn kinds(out: &[Publication]) -> Vec<(String, Option<u64>)> {
        out.iter()
            .map(|p| {
                let (k, d) = decode(p);
                (k, d.seq)
            })
            .collect()
    }

    fn k(kind: &str, seq: u64) -> (String, Option<u64>) {
        (kind.to_owned(), Some(seq))
    }

    #[test]
    fn values_before_the_connect_are_born_then_sent_as_history() {
        let mut n = SparkplugNode::new(model(false)).unwrap();
        assert!(
            poll(&mut n, 0, 10, false).is_empty(),
            "nothing before a connect"
        );
        assert!(poll(&mut n, 100, 11, false).is_empty());
        assert_eq!(n.kept(), 3, "level 10, run false, level 11");
        let out = session(&mut n, SessionEvent::Connected { bd_seq: 7 }, 200);
        assert_eq!(
            kinds(&out),
            vec![k("NBIRTH", 0), k("DBIRTH", 1), k("DDATA", 2)]
        );
        let (_, nbirth) = decode(&out[0]);
        assert_eq!(nbirth.metrics[0].name.as_deref(), Some("bdSeq"));
        assert_eq!(nbirth.metrics[0].value, Some(Pb::LongValue(7)));
        assert_eq!(nbirth.metrics[1].value, Some(Pb::BooleanValue(false)));
        assert!(out.iter().all(|p| p.qos == Qos::AtMostOnce && !p.retain));
        let (_, dbirth) = decode(&out[1]);
        assert_eq!(
            dbirth.metrics[0].value,
            Some(Pb::IntValue(11)),
            "the current value"
        );
        let (_, hist) = decode(&out[2]);
        let got: Vec<_> = hist
            .metrics
            .iter()
            .map(|m| (m.alias, m.timestamp, m.is_historical, m.value.clone()))
            .collect();
        assert_eq!(
            got,
            vec![
                (Some(1), Some(T0), Some(true), Some(Pb::IntValue(10))),
                (Some(2), Some(T0), Some(true), Some(Pb::BooleanValue(false))),
                // Level 11 is the latest value, read at 100: in the DBIRTH, not again.
            ]
        );
        assert_eq!(n.kept(), 0);
        // Live: by exception only.
        assert_eq!(kinds(&poll(&mut n, 300, 11, false)), vec![]);
        assert_eq!(kinds(&poll(&mut n, 400, 12, false)), vec![k("DDATA", 3)]);
    }

    #[test]
    fn seq_wraps_after_255_and_a_rebirth_starts_again_at_0_with_the_same_bd_seq() {
        let mut n = SparkplugNode::new(model(false)).unwrap();
        poll(&mut n, 0, 0, false);
        session(&mut n, SessionEvent::Connected { bd_seq: 1 }, 1);
        let mut seqs = Vec::new();
        for i in 1..=300u64 {
            for (_, s) in kinds(&poll(&mut n, i * 10, i, false)) {
                seqs.push(s.unwrap());
            }
        }
        assert_eq!(seqs[0], 2);
        for w in seqs.windows(2) {
            assert_eq!(w[1], (w[0] + 1) % 256);
        }
        let ncmd = Payload {
            metrics: vec![Metric {
                name: Some(spb::REBIRTH.into()),
                value: Some(Pb::BooleanValue(true)),
                ..Metric::default()
            }],
            ..Payload::default()
        };
        let out = session(
            &mut n,
            SessionEvent::Message {
                topic: Arc::from("spBv1.0/plant/NCMD/gw1"),
                payload: ncmd.encode_to_vec(),
                retain: false,
            },
            5000,
        );
        assert_eq!(kinds(&out), vec![k("NBIRTH", 0), k("DBIRTH", 1)]);
        assert_eq!(decode(&out[0]).1.metrics[0].value, Some(Pb::LongValue(1)));
    }

    #[test]
    fn a_device_in_error_gets_ddeath_and_dbirth_with_its_next_good_value() {
        let mut n = SparkplugNode::new(model(false)).unwrap();
        poll(&mut n, 0, 1, false);
        session(&mut n, SessionEvent::Connected { bd_seq: 1 }, 1);
        let mut out = Vec::new();
        n.on_update(
            &Update::Device {
                device: 0,
                status: DeviceStatus::Error("timeout".into()),
                at: at(10),
            },
            Instant::now(),
            &mut out,
        );
        assert_eq!(kinds(&out), vec![k("DDEATH", 2)]);
        // Back: one metric read is not enough, the other still holds its value from before.
        let mut out = Vec::new();
        let level = Update::Value(ValueUpdate {
            source: Source::Point(0),
            device: 0,
            reading: Reading::Good(Value::UInt(5)),
            previous: Quality::Good,
            read_at: at(20),
            at: at(20),
        });
        n.on_update(&level, Instant::now(), &mut out);
        n.flush(at(20), &mut out);
        assert!(
            out.is_empty(),
            "no DBIRTH with a value from before the error"
        );
        let out = poll(&mut n, 30, 6, true);
        assert_eq!(kinds(&out), vec![k("DBIRTH", 3)]);
        let (_, birth) = decode(&out[0]);
        assert!(
            birth
                .metrics
                .iter()
                .all(|m| m.timestamp == Some(millis(at(30)))),
            "every value read after the error: {:?}",
            birth.metrics
        );
    }

    #[test]
    fn with_a_primary_host_nothing_is_born_until_it_is_online_and_data_stops_when_it_leaves() {
        let mut n = SparkplugNode::new(model(true)).unwrap();
        assert_eq!(n.command_topics().len(), 3, "NCMD, DCMD and STATE");
        poll(&mut n, 0, 1, false);
        assert!(session(&mut n, SessionEvent::Connected { bd_seq: 4 }, 1).is_empty());
        let state = |online: bool, ts: u64| SessionEvent::Message {
            topic: Arc::from("spBv1.0/STATE/scada"),
            payload: format!(r#"{{"online": {online}, "timestamp": {ts}}}"#).into_bytes(),
            retain: true,
        };
        let out = session(&mut n, state(true, 100), 2);
        assert_eq!(kinds(&out), vec![k("NBIRTH", 0), k("DBIRTH", 1)]);
        assert!(session(&mut n, state(false, 200), 3).is_empty());
        assert!(
            poll(&mut n, 10, 2, false).is_empty(),
            "no data while the host is away"
        );
        assert!(poll(&mut n, 20, 3, false).is_empty());
        // An older STATE is stale and changes nothing.
        assert!(session(&mut n, state(true, 150), 4).is_empty());
        let out = session(&mut n, state(true, 300), 5);
        assert_eq!(
            kinds(&out),
            vec![k("NBIRTH", 0), k("DBIRTH", 1), k("DDATA", 2)],
            "born again, with the level read while away as history"
        );
        // Garbage on the STATE topic is ignored.
        let junk = SessionEvent::Message {
            topic: Arc::from("spBv1.0/STATE/scada"),
            payload: vec![0xff, 0x00],
            retain: false,
        };
        assert!(session(&mut n, junk, 6).is_empty());
    }

    #[test]
    fn a_refused_write_republishes_the_current_value_and_a_done_one_the_read_back() {
        let mut n = SparkplugNode::new(model(false)).unwrap();
        poll(&mut n, 0, 1, false);
        session(&mut n, SessionEvent::Connected { bd_seq: 1 }, 1);
        let out = session(
            &mut n,
            SessionEvent::Written {
                points: vec![(1, None)],
            },
            10,
        );
        let (_, d) = decode(&out[0]);
        assert_eq!(d.metrics[0].value, Some(Pb::BooleanValue(false)));
        let out = session(
            &mut n,
            SessionEvent::Written {
                points: vec![(1, Some(Value::Bool(true)))],
            },
            20,
        );
        let (_, d) = decode(&out[0]);
        assert_eq!(d.metrics[0].value, Some(Pb::BooleanValue(true)));
        assert!(poll(&mut n, 30, 1, true).is_empty(), "already reported");
    }

    /// The durable copy, as the engine task keeps it: applied in order.
    fn apply(file: &mut Vec<String>, ops: Vec<Durable>) {
        for op in ops {
            match op {
                Durable::Append(l) => file.extend(l),
                Durable::Replace(l) => *file = l,
            }
        }
    }

    #[test]
    fn kept_values_survive_a_restart_through_their_durable_copy_and_leave_it_once_sent() {
        let mut file = Vec::new();
        let mut n = SparkplugNode::new(model(false)).unwrap();
        poll(&mut n, 0, 10, false);
        poll(&mut n, 100, 11, true);
        apply(&mut file, n.take_durable());
        assert_eq!(file.len(), 4, "{file:?}");
        let v = JournalValue::from_line(&file[3]).unwrap();
        assert_eq!(
            (&*v.metric, v.value, v.read_at),
            ("run", Some(Value::Bool(true)), at(100))
        );
        // A new run (kill -9 and restart) takes them back, and sends them after its birth.
        let mut n = SparkplugNode::new(model(false)).unwrap();
        n.restore_durable(&[file.clone(), vec!["garbage".into()]].concat());
        apply(&mut file, n.take_durable());
        assert_eq!(n.kept(), 4);
        poll(&mut n, 200, 12, true);
        let out = session(&mut n, SessionEvent::Connected { bd_seq: 1 }, 300);
        assert_eq!(
            kinds(&out),
            vec![k("NBIRTH", 0), k("DBIRTH", 1), k("DDATA", 2)]
        );
        let (_, hist) = decode(&out[2]);
        let got: Vec<_> = hist
            .metrics
            .iter()
            .map(|m| (m.timestamp, m.value.clone()))
            .collect();
        assert_eq!(
            got,
            vec![
                (Some(T0), Some(Pb::IntValue(10))),
                (Some(T0), Some(Pb::BooleanValue(false))),
                (Some(T0 + 100), Some(Pb::IntValue(11))),
                (Some(T0 + 100), Some(Pb::BooleanValue(true))),
            ]
        );
        apply(&mut file, n.take_durable());
        assert!(file.is_empty(), "sent: the durable copy is empty");
    }

    #[test]
    fn a_disconnect_keeps_what_was_sent_within_the_window_for_after_the_next_birth() {
        let mut n = SparkplugNode::new(model(false)).unwrap();
        poll(&mut n, 0, 1, false);
        session(&mut n, SessionEvent::Connected { bd_seq: 1 }, 1);
        poll(&mut n, 100, 2, false);
        session(&mut n, SessionEvent::Disconnected, 200);
        poll(&mut n, 300, 3, false);
        assert_eq!(
            n.kept(),
            2,
            "level 2 (maybe lost with the connection) and level 3"
        );
        let out = session(&mut n, SessionEvent::Connected { bd_seq: 2 }, 400);
        let (_, hist) = decode(&out[2]);
        let levels: Vec<_> = hist.metrics.iter().map(|m| m.value.clone()).collect();
        assert_eq!(levels, vec![Some(Pb::IntValue(2))], "3 is in the DBIRTH");
    }
}
