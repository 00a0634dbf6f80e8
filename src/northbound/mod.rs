//! The northbound seam: profiles that turn the engine's typed updates into publications.
//!
//! A profile is pure: updates and time come in, publications go out. It also says what it
//! announces (retained) on every (re)connect, has a tick for time-driven output, and claims
//! the command topics it owns. The MQTT task stays the one I/O owner, and every command still
//! goes through the one executor (`crate::executor`); a profile only names its topics.
//!
//! Must not: do I/O, read a clock, spawn tasks, or parse commands. The list of running
//! profiles is built in `gateway.rs` from the mapping.

pub mod console;
pub mod groups;
pub mod homeassistant;
pub mod identity;
pub mod points;
pub mod sparkplug;

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use crate::mappings::engine::{Update, Value};
use crate::vocabulary::{Announcement, PointId, Publication, Qos};

/// News of the MQTT session and of commands, for profiles that keep a session of their own
/// (Sparkplug B). Comes from the MQTT side (connect, loss), the executor (messages on claimed
/// topics that are not writes, and the outcome of writes), in that order per source.
#[derive(Debug, Clone, PartialEq)]
pub enum SessionEvent {
    /// The broker accepted a connection (ConnAck) whose will carries `bd_seq`.
    Connected { bd_seq: u64 },
    /// The connection is gone (lost, or closed at shutdown).
    Disconnected,
    /// A message on a claimed topic that the profile handles itself (Sparkplug NCMD, STATE).
    Message {
        topic: Arc<str>,
        payload: Vec<u8>,
        retain: bool,
    },
    /// A command's writes are done: per point, the value read back, or `None` when the write
    /// was refused or failed.
    Written {
        points: Vec<(PointId, Option<Value>)>,
    },
}

/// One northbound output format. See the module docs.
pub trait Profile: std::fmt::Debug + Send {
    /// The name in logs and docs, e.g. `points`.
    fn name(&self) -> &'static str;

    /// Publications for one update. `now` is the monotonic time of the update, for publish
    /// timing; wall-clock times come with the update.
    fn on_update(&mut self, update: &Update, now: Instant, out: &mut Vec<Publication>);

    /// The retained messages sent after every connect (with `online`), stamped `at`.
    fn announce(&self, _at: SystemTime) -> Vec<Publication> {
        Vec::new()
    }

    /// Whether [`Profile::announce`]'s retained messages, once the broker acknowledged them,
    /// are skipped after a reconnect (see [`Announcement::once`]). Default: sent every time.
    fn announce_once(&self) -> bool {
        false
    }

    /// Time-driven output due by the wall-clock `now`.
    fn tick(&mut self, _now: SystemTime, _out: &mut Vec<Publication>) {}

    /// When [`Profile::tick`] next has something to do.
    fn next_deadline(&self) -> Option<SystemTime> {
        None
    }

    /// The end of a batch of updates (one poll), at the wall-clock `at`: for profiles that
    /// gather a batch into one message.
    fn flush(&mut self, _at: SystemTime, _out: &mut Vec<Publication>) {}

    /// News of the MQTT session or of a command, at the wall-clock `at`.
    fn on_session(&mut self, _event: &SessionEvent, _at: SystemTime, _out: &mut Vec<Publication>) {}

    /// The file name (in the state directory) of this profile's durable state, when it has
    /// one: the engine task writes [`Profile::take_durable`] to it, and gives it back to a new
    /// profile with [`Profile::restore_durable`] (at start and after a reload).
    fn durable_name(&self) -> Option<&'static str> {
        None
    }

    /// Changes to the durable state since the last call, in order.
    fn take_durable(&mut self) -> Vec<Durable> {
        Vec::new()
    }

    /// The durable state's lines as an earlier run (or the profile before a reload) left them.
    fn restore_durable(&mut self, _lines: &[String]) {}

    /// The command topic filters this profile owns, and their subscription QoS. Commands on
    /// them go to the executor.
    fn command_topics(&self) -> Vec<(Arc<str>, Qos)> {
        Vec::new()
    }

    /// Topic filters this profile watches that are not commands (e.g. Home Assistant's
    /// `homeassistant/status`), and their subscription QoS. Messages on them come to
    /// [`Profile::on_message`] and never reach the executor.
    fn watched_topics(&self) -> Vec<(Arc<str>, Qos)> {
        Vec::new()
    }

    /// A message on one of [`Profile::watched_topics`], received at `at`.
    fn on_message(
        &mut self,
        _topic: &str,
        _payload: &[u8],
        _at: SystemTime,
        _out: &mut Vec<Publication>,
    ) {
    }
}

/// Every profile's watched topics, once each.
pub fn watched(profiles: &[Box<dyn Profile>]) -> Vec<(Arc<str>, Qos)> {
    let mut out: Vec<(Arc<str>, Qos)> = Vec::new();
    for (topic, qos) in profiles.iter().flat_map(|p| p.watched_topics()) {
        if !out.iter().any(|(t, _)| *t == topic) {
            out.push((topic, qos));
        }
    }
    out
}

/// Hand a watched message to every profile that watches its topic.
pub fn on_message(
    profiles: &mut [Box<dyn Profile>],
    topic: &str,
    payload: &[u8],
    at: SystemTime,
) -> Vec<Publication> {
    let mut out = Vec::new();
    for p in profiles.iter_mut() {
        if p.watched_topics()
            .iter()
            .any(|(f, _)| crate::vocabulary::topic_matches(f, topic))
        {
            p.on_message(topic, payload, at, &mut out);
        }
    }
    out
}

/// What the profiles must take back when `old` is replaced by `new` (hot reload), stamped
/// `at`: today Home Assistant's removed devices and entities.
pub fn retired(
    old: &crate::model::Model,
    new: &crate::model::Model,
    at: SystemTime,
) -> Vec<Publication> {
    homeassistant::retired(old, new, at)
}

/// A change to a profile's durable state, a file of text lines (see
/// [`Profile::durable_name`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Durable {
    /// Add these lines at the end.
    Append(Vec<String>),
    /// The state is now exactly these lines.
    Replace(Vec<String>),
}

/// Every profile's publications for `updates`, in update order, then profile order.
pub fn publish(
    profiles: &mut [Box<dyn Profile>],
    updates: &[Update],
    now: Instant,
) -> Vec<Publication> {
    let mut out = Vec::new();
    publish_into(profiles, updates, now, &mut out);
    out
}

/// [`publish`], appending to `out`: the engine task keeps one vector for every block instead of
/// allocating one of the block's size each time.
pub fn publish_into(
    profiles: &mut [Box<dyn Profile>],
    updates: &[Update],
    now: Instant,
    out: &mut Vec<Publication>,
) {
    // About one publication per value update (point topics).
    out.reserve(updates.len());
    for u in updates {
        for p in profiles.iter_mut() {
            p.on_update(u, now, out);
        }
    }
    let at = updates.iter().map(|u| match u {
        Update::Value(v) => v.at,
        Update::Device { at, .. } => *at,
    });
    if let Some(at) = at.max() {
        for p in profiles.iter_mut() {
            p.flush(at, out);
        }
    }
}

/// Every profile's publications for one session event at `at`.
pub fn on_session(
    profiles: &mut [Box<dyn Profile>],
    event: &SessionEvent,
    at: SystemTime,
) -> Vec<Publication> {
    let mut out = Vec::new();
    for p in profiles.iter_mut() {
        p.on_session(event, at, &mut out);
    }
    out
}

/// Every profile's time-driven output due by `now`.
pub fn tick(profiles: &mut [Box<dyn Profile>], now: SystemTime) -> Vec<Publication> {
    let mut out = Vec::new();
    for p in profiles.iter_mut() {
        p.tick(now, &mut out);
    }
    out
}

/// The earliest deadline of any profile.
pub fn next_deadline(profiles: &[Box<dyn Profile>]) -> Option<SystemTime> {
    profiles.iter().filter_map(|p| p.next_deadline()).min()
}

/// Every profile's announcements, stamped `at`.
pub fn announcements(profiles: &[Box<dyn Profile>], at: SystemTime) -> Vec<Announcement> {
    profiles
        .iter()
        .flat_map(|p| {
            let once = p.announce_once();
            p.announce(at)
                .into_iter()
                .map(move |publication| Announcement { publication, once })
        })
        .collect()
}

/// Every claimed command topic, once (the first claim's QoS wins).
pub fn subscriptions(profiles: &[Box<dyn Profile>]) -> Vec<(Arc<str>, Qos)> {
    let mut out: Vec<(Arc<str>, Qos)> = Vec::new();
    for (topic, qos) in profiles.iter().flat_map(|p| p.command_topics()) {
        if !out.iter().any(|(t, _)| *t == topic) {
            out.push((topic, qos));
        }
    }
    out
}

/// The engine and a list of profiles driven together, as the engine task does, for tests.
#[cfg(test)]
#[derive(Debug)]
pub(crate) struct Pipeline {
    pub engine: crate::mappings::engine::Engine,
    pub profiles: Vec<Box<dyn Profile>>,
}

#[cfg(test)]
impl Pipeline {
    /// Both of today's profiles over `model`.
    pub fn new(model: Arc<crate::model::Model>) -> Self {
        Pipeline {
            engine: crate::mappings::engine::Engine::new(Arc::clone(&model)),
            profiles: vec![
                Box::new(points::PointTopics::new(Arc::clone(&model))),
                Box::new(groups::GroupMessages::new(model)),
            ],
        }
    }
    pub fn on_poll(
        &mut self,
        poll: &crate::vocabulary::PollResult,
        now: Instant,
    ) -> Vec<Publication> {
        let updates = self.engine.on_poll(poll);
        publish(&mut self.profiles, &updates, now)
    }
    pub fn on_device_status(
        &mut self,
        device: crate::vocabulary::DeviceId,
        status: crate::vocabulary::DeviceStatus,
        at: SystemTime,
    ) -> Vec<Publication> {
        let updates = self.engine.on_device_status(device, status, at);
        publish(&mut self.profiles, &updates, Instant::now())
    }
    pub fn tick(&mut self, now: SystemTime) -> Vec<Publication> {
        tick(&mut self.profiles, now)
    }
    pub fn value(
        &self,
        point: usize,
    ) -> (
        Option<&crate::mappings::engine::Value>,
        crate::mappings::engine::Quality,
    ) {
        self.engine.value(point)
    }
}
