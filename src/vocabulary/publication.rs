//! What goes to the broker: a publication, its quality of service, topic filters and the
//! timestamp format of every payload.
//!
//! Plain data and pure functions. Must not do I/O or read a clock (time is an argument).

use std::sync::Arc;
use std::time::SystemTime;

/// MQTT quality of service, our own closed enum (converted to the client's at the edge).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Qos {
    AtMostOnce,
    #[default]
    AtLeastOnce,
    ExactlyOnce,
}

impl Qos {
    pub const fn level(self) -> u8 {
        match self {
            Qos::AtMostOnce => 0,
            Qos::AtLeastOnce => 1,
            Qos::ExactlyOnce => 2,
        }
    }
}

/// One message for the broker.
#[derive(Debug, Clone, PartialEq)]
pub struct Publication {
    pub topic: Arc<str>,
    pub payload: Vec<u8>,
    pub qos: Qos,
    pub retain: bool,
    /// When the value was read (or the event happened); carried for the durable buffer.
    pub created_at: SystemTime,
}

/// A retained session message a profile announces after every connect (group
/// configurations, Home Assistant discovery), and whether it may be skipped after a reconnect.
#[derive(Debug, Clone, PartialEq)]
pub struct Announcement {
    pub publication: Publication,
    /// Sent again after a reconnect only if the broker never acknowledged it (retained), the
    /// rule of the energy-manager configuration. `false`: sent after every connect, so a broker
    /// that restarted without persistence gets it back (Home Assistant discovery: HA's birth
    /// message may reach the broker before we do, and then nobody asks for it).
    pub once: bool,
}

/// Whether an MQTT topic filter (`+` one level, `#` the rest) matches a topic.
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// RFC 3339 UTC with milliseconds, as every payload writes its `ts`.
pub fn timestamp(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod topic_tests {
    use super::topic_matches;

    #[test]
    fn filters_match_as_mqtt_does() {
        assert!(topic_matches("#", "a/b"));
        assert!(topic_matches("a/#", "a/b/c"));
        assert!(topic_matches("a/#", "a"));
        assert!(topic_matches("a/+/c", "a/b/c"));
        assert!(!topic_matches("a/+/c", "a/b/d"));
        assert!(!topic_matches("a/+", "a/b/c"));
        assert!(topic_matches("a/b", "a/b"));
        assert!(!topic_matches("a/b", "a/b/c"));
    }
}
