//! systemd integration: `READY=1`, `STOPPING=1`, and a watchdog fed only while every task makes
//! progress.
//!
//! Each long-running task (link, engine, MQTT event loop) holds a [`Heartbeat`] and beats it
//! from inside its own loop, at least every second, also when idle. The watchdog loop pings
//! systemd only when no heartbeat is older than [`MAX_SILENCE`]: a task stuck in an await, a
//! deadlock or a busy loop stops the pings, and systemd restarts the service. It is never fed
//! from a blind timer. Without `NOTIFY_SOCKET` (not under systemd) everything here is a no-op.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// A heartbeat older than this counts as a stalled task.
pub const MAX_SILENCE: Duration = Duration::from_secs(10);

/// How often tasks beat while idle.
pub const BEAT_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug)]
struct Beat {
    name: String,
    /// Longer silence allowed for this task than `max_silence`, if any.
    limit: Option<Duration>,
    /// Milliseconds since the registry's epoch.
    last: AtomicU64,
}

/// The heartbeats of the running tasks. Dropped heartbeats (stopped tasks) leave it.
#[derive(Debug)]
pub struct Registry {
    epoch: Instant,
    beats: Mutex<Vec<Weak<Beat>>>,
}

/// A task's handle to beat.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    beat: Arc<Beat>,
    epoch: Instant,
}

impl Heartbeat {
    pub fn beat(&self) {
        self.beat_at(Instant::now());
    }
    /// Beat as of `at` (tests use a clock of their own).
    pub fn beat_at(&self, at: Instant) {
        let ms = at.saturating_duration_since(self.epoch).as_millis() as u64;
        self.beat.last.store(ms, Ordering::Relaxed);
    }
}

impl Registry {
    pub fn new(epoch: Instant) -> Self {
        Registry {
            epoch,
            beats: Mutex::new(Vec::new()),
        }
    }

    /// Register a task; it starts as having beaten now.
    pub fn register(&self, name: impl Into<String>) -> Heartbeat {
        self.register_within(name, None)
    }

    /// Register a task that may be silent for up to `limit` (when longer than the default).
    pub fn register_within(&self, name: impl Into<String>, limit: Option<Duration>) -> Heartbeat {
        let beat = Arc::new(Beat {
            name: name.into(),
            limit,
            last: AtomicU64::new(0),
        });
        let hb = Heartbeat {
            beat: Arc::clone(&beat),
            epoch: self.epoch,
        };
        hb.beat();
        let mut beats = self
            .beats
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        beats.retain(|w| w.strong_count() > 0);
        beats.push(Arc::downgrade(&beat));
        hb
    }

    /// The tasks whose last beat is older than `max_silence` as of `now`.
    pub fn stalled(&self, now: Instant, max_silence: Duration) -> Vec<String> {
        let now_ms = now.saturating_duration_since(self.epoch).as_millis() as u64;
        let beats = self
            .beats
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        beats
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|b| {
                let limit = b
                    .limit
                    .map_or(max_silence, |l| l.max(max_silence))
                    .as_millis() as u64;
                now_ms.saturating_sub(b.last.load(Ordering::Relaxed)) > limit
            })
            .map(|b| b.name.clone())
            .collect()
    }
}

/// The process's registry.
pub fn registry() -> &'static Registry {
    static R: OnceLock<Registry> = OnceLock::new();
    R.get_or_init(|| Registry::new(Instant::now()))
}

/// Register a task with the process's registry.
pub fn heartbeat(name: impl Into<String>) -> Heartbeat {
    registry().register(name)
}

/// Register a task that may be silent for up to `limit`.
pub fn heartbeat_within(name: impl Into<String>, limit: Duration) -> Heartbeat {
    registry().register_within(name, Some(limit))
}

/// Tell systemd we are ready (no-op outside systemd).
pub fn notify_ready() {
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
}

/// Tell systemd we are stopping.
pub fn notify_stopping() {
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
}

/// Feed systemd's watchdog at half its period while no task is stalled, until `shutdown`.
pub fn spawn_watchdog(shutdown: CancellationToken) {
    let Some(period) = sd_notify::watchdog_enabled() else {
        return;
    };
    let every = (period / 2).max(Duration::from_millis(100));
    tokio::spawn(async move {
        let mut warned = false;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
            let stalled = registry().stalled(Instant::now(), MAX_SILENCE);
            if stalled.is_empty() {
                warned = false;
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
            } else if !warned {
                warned = true;
                tracing::error!(tasks = ?stalled, "tasks stalled: not feeding the watchdog");
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stalled_task_is_named_and_recovers_when_it_beats_again() {
        let t0 = Instant::now();
        let r = Registry::new(t0);
        let link = r.register("link tower");
        let mqtt = r.register("mqtt");
        link.beat_at(t0);
        mqtt.beat_at(t0);
        let s = Duration::from_secs;
        assert!(r.stalled(t0 + s(5), s(10)).is_empty(), "all fresh: ping");
        mqtt.beat_at(t0 + s(9));
        // The link task stopped beating at t0: at t0 + 11 s it is stalled, MQTT is not.
        assert_eq!(r.stalled(t0 + s(11), s(10)), ["link tower"]);
        link.beat_at(t0 + s(12));
        assert!(r.stalled(t0 + s(13), s(10)).is_empty());
        // A task with a longer limit of its own (the MQTT loop, one beat per keep-alive).
        let slow = r.register_within("mqtt keep-alive", Some(s(70)));
        slow.beat_at(t0);
        link.beat_at(t0 + s(60));
        mqtt.beat_at(t0 + s(60));
        assert!(r.stalled(t0 + s(61), s(10)).is_empty());
        assert_eq!(
            r.stalled(t0 + s(71), s(10)),
            ["link tower", "mqtt", "mqtt keep-alive"]
        );
    }

    #[test]
    fn stopped_tasks_leave_the_registry() {
        let t0 = Instant::now();
        let r = Registry::new(t0);
        let gone = r.register("removed device");
        gone.beat_at(t0);
        drop(gone);
        assert!(
            r.stalled(t0 + Duration::from_secs(60), Duration::from_secs(10))
                .is_empty()
        );
    }
}
