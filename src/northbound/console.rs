//! The web console's profile: publishes nothing to MQTT; keeps what the console shows.
//!
//! [`Console`] is shared between this profile (the writer, on the engine task) and the web
//! server (the readers). It holds the latest value, quality, read time and error of every
//! point and derived value, each device's status, and a bounded ring buffer per numeric value
//! for the trends (`web.trend_samples` samples, the oldest dropped, so memory stays flat). At
//! the end of each batch (one poll) the sequence number goes up and is sent on a `watch`
//! channel; the server's live stream (SSE) sends what changed since the sequence it last saw.
//! A slow reader misses nothing but intermediate values: it gets the latest of each.
//!
//! Pure in the profile's sense: no I/O, no clock (times come with the updates), no tasks;
//! sending on a `watch` channel only stores a number. A reload makes a new profile over the
//! new model; it resets the board to that model (fresh values and trends).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime};

use serde_json::{Value as Json, json};

use super::Profile;
use crate::mappings::engine::{Reading, Source, Update, Value};
use crate::model::Model;
use crate::northbound::points::render_plain;
use crate::vocabulary::{DeviceStatus, Publication, timestamp};

/// What the console shows, shared by the profile and the web server; see the module docs.
#[derive(Debug)]
pub struct Console {
    board: Mutex<Board>,
    changed: tokio::sync::watch::Sender<u64>,
    trend_samples: usize,
}

/// One point or derived value.
#[derive(Debug, Clone, Default)]
struct Entry {
    value: Option<Value>,
    /// `unknown`, `good`, `bad` or `stale`.
    quality: &'static str,
    read_at: Option<SystemTime>,
    /// Why the last read gave no usable value.
    error: Option<String>,
    /// The batch that last changed this entry.
    seq: u64,
    /// (seconds since the Unix epoch, value), oldest first; at most `trend_samples`.
    trend: VecDeque<(f64, f64)>,
}

#[derive(Debug, Clone)]
struct DeviceEntry {
    status: &'static str,
    reason: Option<String>,
    since: Option<SystemTime>,
    seq: u64,
}

#[derive(Debug)]
struct Board {
    model: Arc<Model>,
    /// How many times the board was reset for a new model (reloads).
    generation: u64,
    seq: u64,
    dirty: bool,
    /// Points by `PointId`, then derived values.
    entries: Vec<Entry>,
    devices: Vec<DeviceEntry>,
}

impl Board {
    fn new(model: Arc<Model>, seq: u64) -> Self {
        let n = model.points.len() + model.derived.len();
        Board {
            entries: vec![
                Entry {
                    quality: "unknown",
                    seq,
                    ..Entry::default()
                };
                n
            ],
            devices: vec![
                DeviceEntry {
                    status: "unknown",
                    reason: None,
                    since: None,
                    seq,
                };
                model.devices.len()
            ],
            model,
            generation: 0,
            seq,
            dirty: true,
        }
    }
}

fn secs(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// A value as JSON: booleans and numbers as such, text as a string.
fn value_json(v: &Value) -> Json {
    match v {
        Value::Bool(b) => json!(b),
        Value::Int(i) => json!(i),
        Value::UInt(u) => json!(u),
        Value::F32(f) => json!(crate::mappings::number::f32_to_f64(*f)),
        Value::Float(f) => json!(f),
        Value::Text(t) => json!(t),
    }
}

impl Console {
    /// An empty console over `model`, keeping `trend_samples` samples per numeric value.
    pub fn new(model: Arc<Model>, trend_samples: usize) -> Arc<Self> {
        Arc::new(Console {
            board: Mutex::new(Board::new(model, 1)),
            changed: tokio::sync::watch::channel(1).0,
            trend_samples: trend_samples.max(2),
        })
    }

    fn board(&self) -> MutexGuard<'_, Board> {
        self.board
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The model the console shows now.
    pub fn model(&self) -> Arc<Model> {
        Arc::clone(&self.board().model)
    }

    /// Goes up by one each time a reload gives the console a new model (its points may differ).
    pub fn generation(&self) -> u64 {
        self.board().generation
    }

    /// Wakes on every batch that changed something; the value is the sequence number.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// The profile that feeds this console from `model`'s updates (resets the board when the
    /// model is a new one, after a reload).
    pub fn profile(self: &Arc<Self>, model: Arc<Model>) -> ConsoleProfile {
        {
            let mut b = self.board();
            if !Arc::ptr_eq(&b.model, &model) {
                let (seq, generation) = (b.seq + 1, b.generation + 1);
                *b = Board::new(model, seq);
                b.generation = generation;
                drop(b);
                self.changed.send_replace(seq);
            }
        }
        ConsoleProfile {
            console: Arc::clone(self),
        }
    }

    /// The current sequence number and every point and derived value changed after `since`
    /// (all of them for 0), as JSON objects: `id` (`device.point`, or the derived name),
    /// `value`, `text` (as a plain MQTT topic would carry it), `quality`, `read_at` (RFC 3339),
    /// `age_ms` (at `now`) and `error`.
    pub fn values_since(&self, since: u64, now: SystemTime) -> (u64, Vec<Json>) {
        let (seq, values, _) = self.values_with_model(since, now);
        (seq, values)
    }

    /// [`Console::values_since`], with the model the values belong to (taken together: a
    /// reload between two calls would pair values with another model's points).
    pub fn values_with_model(&self, since: u64, now: SystemTime) -> (u64, Vec<Json>, Arc<Model>) {
        let b = self.board();
        let m = &b.model;
        let out = b
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.seq > since)
            .map(|(i, e)| {
                let (id, decimals) = match m.points.get(i) {
                    Some(p) => (&*p.full_name, p.decimals),
                    None => (&*m.derived[i - m.points.len()].name, None),
                };
                json!({
                    "id": id,
                    "value": e.value.as_ref().map(value_json),
                    "text": e.value.as_ref().map(|v| render_plain(v, decimals)),
                    "quality": e.quality,
                    "read_at": e.read_at.map(timestamp),
                    "age_ms": e.read_at.and_then(|t| now.duration_since(t).ok()).map(|d| d.as_millis() as u64),
                    "error": e.error,
                })
            })
            .collect();
        (b.seq, out, Arc::clone(&b.model))
    }

    /// Each device's status (`unknown` before its first poll, `ok`, `degraded`, `error`), the
    /// reason and since when; changed after `since` (all for 0).
    pub fn devices_since(&self, since: u64) -> Vec<Json> {
        let b = self.board();
        b.devices
            .iter()
            .enumerate()
            .filter(|(_, d)| d.seq > since)
            .map(|(i, d)| {
                json!({
                    "name": &*b.model.devices[i].name,
                    "status": d.status,
                    "reason": d.reason,
                    "since": d.since.map(timestamp),
                })
            })
            .collect()
    }

    /// The most samples a trend holds per value (`web.trend_samples`).
    pub fn trend_samples(&self) -> usize {
        self.trend_samples
    }

    /// The trend of each numeric value named in `ids` (all with samples when `ids` is empty):
    /// `(id, times, values)`, times in seconds since the Unix epoch, oldest first, at most the
    /// newest `max` samples of each. The board (which the engine's update path needs too) is
    /// locked once per value, only to copy that value's samples; building the answer happens
    /// after, without it. A reload meanwhile ends the list early.
    pub fn trends(&self, ids: &[&str], max: usize) -> Vec<(String, Vec<f64>, Vec<f64>)> {
        self.trends_with(ids, max, || {})
    }

    /// [`Console::trends`], calling `between` after each value with the board unlocked.
    fn trends_with(
        &self,
        ids: &[&str],
        max: usize,
        mut between: impl FnMut(),
    ) -> Vec<(String, Vec<f64>, Vec<f64>)> {
        let (model, generation) = {
            let b = self.board();
            (Arc::clone(&b.model), b.generation)
        };
        let n = model.points.len() + model.derived.len();
        let mut out = Vec::new();
        for i in 0..n {
            let id: &str = match model.points.get(i) {
                Some(p) => &p.full_name,
                None => &model.derived[i - model.points.len()].name,
            };
            if !(ids.is_empty() || ids.contains(&id)) {
                continue;
            }
            let copied = {
                let b = self.board();
                if b.generation != generation {
                    break;
                }
                b.entries.get(i).map(|e| {
                    let skip = e.trend.len().saturating_sub(max);
                    e.trend
                        .iter()
                        .skip(skip)
                        .copied()
                        .unzip::<_, _, Vec<f64>, Vec<f64>>()
                })
            };
            between();
            if let Some((t, v)) = copied.filter(|(t, _)| !t.is_empty()) {
                out.push((id.to_owned(), t, v));
            }
        }
        out
    }

    /// Samples held over all trends, and the most one value may hold.
    pub fn trend_fill(&self) -> (usize, usize) {
        let b = self.board();
        (
            b.entries.iter().map(|e| e.trend.len()).sum(),
            self.trend_samples,
        )
    }

    fn update(&self, u: &Update) {
        let mut b = self.board();
        let next = b.seq + 1;
        b.dirty = true;
        match u {
            Update::Value(v) => {
                let i = match v.source {
                    Source::Point(p) => p,
                    Source::Derived(d) => b.model.points.len() + d,
                };
                let cap = self.trend_samples;
                let Some(e) = b.entries.get_mut(i) else {
                    return;
                };
                e.seq = next;
                e.read_at = Some(v.read_at);
                match &v.reading {
                    Reading::Good(val) => {
                        if let Some(x) = val.as_f64().filter(|x| x.is_finite()) {
                            if e.trend.len() == cap {
                                e.trend.pop_front();
                            } else if e.trend.capacity() == 0 {
                                e.trend.reserve_exact(cap);
                            }
                            e.trend.push_back((secs(v.read_at), x));
                        }
                        e.value = Some(val.clone());
                        e.quality = "good";
                        e.error = None;
                    }
                    Reading::Bad(reason) => {
                        e.value = None;
                        e.quality = "bad";
                        e.error = Some(reason.clone());
                    }
                    Reading::Stale(val) => {
                        e.value = Some(val.clone());
                        e.quality = "stale";
                    }
                }
            }
            Update::Device { device, status, at } => {
                if let Some(d) = b.devices.get_mut(*device) {
                    d.status = status.as_str();
                    d.reason = match status {
                        DeviceStatus::Ok => None,
                        DeviceStatus::Degraded { reason, .. } => Some(reason.clone()),
                        DeviceStatus::Error(reason) => Some(reason.clone()),
                    };
                    d.since = Some(*at);
                    d.seq = next;
                }
            }
        }
    }

    fn flush(&self) {
        let mut b = self.board();
        if b.dirty {
            b.dirty = false;
            b.seq += 1;
            let seq = b.seq;
            drop(b);
            self.changed.send_replace(seq);
        }
    }
}

/// The profile half of [`Console`]: see the module docs.
#[derive(Debug)]
pub struct ConsoleProfile {
    console: Arc<Console>,
}

impl Profile for ConsoleProfile {
    fn name(&self) -> &'static str {
        "console"
    }

    fn on_update(&mut self, update: &Update, _now: Instant, _out: &mut Vec<Publication>) {
        self.console.update(update);
    }

    fn flush(&mut self, _at: SystemTime, _out: &mut Vec<Publication>) {
        self.console.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::northbound::Pipeline;
    use crate::vocabulary::{BlockData, PollResult};

    const YAML: &str = "mqtt: { host: h, status_topic: s }\n\
        devices:\n  - name: d\n    tcp: { host: 127.0.0.1 }\n    points:\n\
        \x20     - { name: x, kind: holding_register, address: 0, publish: { topic: t/x } }\n";

    fn model() -> Arc<Model> {
        Arc::new(
            crate::config::load_str(
                std::path::Path::new("m.yaml"),
                YAML,
                Default::default(),
                "h",
            )
            .unwrap(),
        )
    }

    #[test]
    fn values_and_trends_are_kept_bounded_and_changes_are_numbered() {
        let m = model();
        let console = Console::new(Arc::clone(&m), 3);
        let mut p = Pipeline::new(Arc::clone(&m));
        p.profiles = vec![Box::new(console.profile(Arc::clone(&m)))];
        let (seq0, all) = console.values_since(0, SystemTime::now());
        assert_eq!(all.len(), 1);
        assert_eq!(all[0]["quality"], "unknown");
        let t0 = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000);
        for i in 0..5u16 {
            let poll = PollResult {
                device: 0,
                first: 0,
                blocks: vec![Ok(BlockData::Words(vec![10 + i]))],
                bad: Vec::new(),
                read_at: t0 + std::time::Duration::from_secs(u64::from(i)),
                complete: true,
            };
            p.on_poll(&poll, Instant::now());
        }
        let (seq, changed) = console.values_since(seq0, t0 + std::time::Duration::from_secs(5));
        assert!(seq > seq0);
        assert_eq!(changed.len(), 1);
        assert_eq!(changed[0]["value"], 14);
        assert_eq!(changed[0]["text"], "14");
        assert_eq!(changed[0]["age_ms"], 1000);
        // Three samples kept, the oldest dropped.
        assert_eq!(
            console.trends(&[], usize::MAX),
            vec![(
                "d.x".to_owned(),
                vec![1002.0, 1003.0, 1004.0],
                vec![12.0, 13.0, 14.0]
            )]
        );
        // The newest `max` only.
        assert_eq!(console.trends(&["d.x"], 1)[0].2, vec![14.0]);
        assert!(console.trends(&["d.y"], 10).is_empty());
        // Between two values the board is free for the engine's updates.
        let mut free = 0;
        console.trends_with(&[], usize::MAX, || {
            free += usize::from(console.board.try_lock().is_ok());
        });
        assert_eq!(free, 1);
        assert_eq!(console.trend_fill(), (3, 3));
        // Nothing changed since `seq`.
        assert!(console.values_since(seq, SystemTime::now()).1.is_empty());
    }
}
