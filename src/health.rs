//! The gateway's health as the web console shows it: the MQTT connection's state and last
//! failure, the outbound buffer's level, each Modbus link's state, quarantined devices and the
//! recent command acks.
//!
//! Written only from `events` (the one place each event is logged and counted), read by
//! `web`. Process-wide, like the metrics registry the same events feed: one gateway runs per
//! process. Every list is bounded.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::SystemTime;

/// How many command acks [`Board::acks`] keeps.
pub const RECENT_ACKS: usize = 50;

/// A snapshot of the gateway's health; see the module docs.
#[derive(Debug, Clone, Default)]
pub struct Board {
    /// `connected`, or the word of the last failure (`refused`, `bad_credentials`, ...);
    /// empty before the first attempt.
    pub mqtt_state: String,
    /// The broker address of the current or last connection.
    pub mqtt_broker: String,
    /// The last connection failure: when, and why in full.
    pub mqtt_last_failure: Option<(SystemTime, String)>,
    /// Publications waiting in the outbound buffer, their bytes, and the oldest one's age (s).
    pub buffer_depth: usize,
    pub buffer_bytes: usize,
    pub buffer_age_seconds: f64,
    /// Link name -> up, and the last reason it went down.
    pub links: HashMap<String, (bool, Option<String>)>,
    /// Devices now quarantined (polled less often).
    pub quarantined: HashMap<String, bool>,
    /// The last [`RECENT_ACKS`] command outcomes, oldest first.
    pub acks: VecDeque<Ack>,
}

/// One command's outcome, as acknowledged.
#[derive(Debug, Clone, PartialEq)]
pub struct Ack {
    /// Who sent it: `mqtt:<topic>` or `web:<user>`.
    pub origin: String,
    /// The ack body (`{"command", "result", "readback" | "reason", "ts"}`).
    pub body: serde_json::Value,
}

fn board() -> MutexGuard<'static, Board> {
    static BOARD: OnceLock<Mutex<Board>> = OnceLock::new();
    BOARD
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A copy of the board now.
pub fn snapshot() -> Board {
    board().clone()
}

pub(crate) fn mqtt_connected(broker: &str) {
    let mut b = board();
    b.mqtt_state = "connected".into();
    b.mqtt_broker = broker.into();
}

pub(crate) fn mqtt_down(broker: &str, state: &str, reason: &str) {
    let mut b = board();
    b.mqtt_state = state.into();
    b.mqtt_broker = broker.into();
    b.mqtt_last_failure = Some((SystemTime::now(), reason.into()));
}

pub(crate) fn mqtt_state(state: &str) {
    board().mqtt_state = state.into();
}

pub(crate) fn buffer_level(depth: usize, bytes: usize, age_seconds: f64) {
    let mut b = board();
    b.buffer_depth = depth;
    b.buffer_bytes = bytes;
    b.buffer_age_seconds = age_seconds;
}

pub(crate) fn link(link: &str, up: bool, reason: Option<&str>) {
    let mut b = board();
    let e = b.links.entry(link.to_owned()).or_default();
    e.0 = up;
    if let Some(r) = reason {
        e.1 = Some(r.to_owned());
    }
}

pub(crate) fn quarantine(device: &str, on: bool) {
    board().quarantined.insert(device.to_owned(), on);
}

pub(crate) fn ack(origin: &str, body: &serde_json::Value) {
    let mut b = board();
    if b.acks.len() == RECENT_ACKS {
        b.acks.pop_front();
    }
    b.acks.push_back(Ack {
        origin: origin.to_owned(),
        body: body.clone(),
    });
}
