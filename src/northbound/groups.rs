//! The grouped-messages profile: the simple / detailed / per-point formats, their send
//! windows on the wall clock, and the retained configuration messages it announces.
//!
//! Pure: updates and wall-clock time come in. The aggregation and the payloads themselves are
//! pure functions in `mappings::group`; this file is the profile around them. Must not do I/O,
//! read a clock, or claim command topics (groups have none).

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use super::Profile;
use crate::mappings::engine::{Reading, Source, Update};
use crate::mappings::group::{Groups, configuration_publications};
use crate::model::Model;
use crate::vocabulary::{DeviceStatus, Publication};

/// The grouped-messages profile; see the module docs.
#[derive(Debug)]
pub struct GroupMessages {
    model: Arc<Model>,
    groups: Groups,
}

impl GroupMessages {
    pub fn new(model: Arc<Model>) -> Self {
        GroupMessages {
            groups: Groups::new(Arc::clone(&model)),
            model,
        }
    }
}

impl Profile for GroupMessages {
    fn name(&self) -> &'static str {
        "groups"
    }

    fn on_update(&mut self, update: &Update, _now: Instant, _out: &mut Vec<Publication>) {
        match update {
            // Fresh numeric values of points are samples; bad and stale ones are skipped.
            Update::Value(u) => {
                if let (Source::Point(pid), Reading::Good(v)) = (u.source, &u.reading)
                    && let Some(x) = v.as_f64()
                {
                    self.groups.sample(pid, x, u.read_at);
                }
            }
            Update::Device { device, status, .. } => self
                .groups
                .device_status(*device, !matches!(status, DeviceStatus::Error(_))),
        }
    }

    /// The detailed configurations: one message per configuration topic, holding every
    /// source that shares it; retained unless `configuration_retain: false`.
    fn announce(&self, at: SystemTime) -> Vec<Publication> {
        configuration_publications(&self.model.groups, at)
    }

    /// The energy-manager rule: a configuration the broker acknowledged (retained) is not sent
    /// again after a reconnect, only when it changes.
    fn announce_once(&self) -> bool {
        true
    }

    fn tick(&mut self, now: SystemTime, out: &mut Vec<Publication>) {
        out.extend(self.groups.tick(now));
    }

    fn next_deadline(&self) -> Option<SystemTime> {
        self.groups.next_deadline()
    }
}
