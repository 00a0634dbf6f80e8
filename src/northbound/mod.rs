//! The northbound seam: profiles that turn the engine's typed updates into publications.
//!
//! A profile is pure: updates and time come in, publications go out. It also says what it
//! announces (retained) on every (re)connect, has a tick for time-driven output, and claims
//! the command topics it owns. The MQTT task stays the one I/O owner, and every command still
//! goes through the one executor (`crate::executor`); a profile only names its topics.
//!
//! Must not: do I/O, read a clock, spawn tasks, or parse commands. The list of running
//! profiles is built in `gateway.rs` from the mapping.

pub mod groups;
pub mod homeassistant;
pub mod points;

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use crate::mappings::engine::Update;
use crate::vocabulary::{Publication, Qos};

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

    /// Time-driven output due by the wall-clock `now`.
    fn tick(&mut self, _now: SystemTime, _out: &mut Vec<Publication>) {}

    /// When [`Profile::tick`] next has something to do.
    fn next_deadline(&self) -> Option<SystemTime> {
        None
    }

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

/// Every profile's publications for `updates`, in update order, then profile order.
pub fn publish(
    profiles: &mut [Box<dyn Profile>],
    updates: &[Update],
    now: Instant,
) -> Vec<Publication> {
    let mut out = Vec::new();
    for u in updates {
        for p in profiles.iter_mut() {
            p.on_update(u, now, &mut out);
        }
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
pub fn announcements(profiles: &[Box<dyn Profile>], at: SystemTime) -> Vec<Publication> {
    profiles.iter().flat_map(|p| p.announce(at)).collect()
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
