//! The hand-off from the pure core and the executor to the MQTT task: one bounded channel.
//!
//! Does: hand a publication over, waiting for room for QoS 1/2, dropping and counting QoS 0
//! and reports when full. Must not: buffer, block on the broker, or render anything.

use tokio::sync::mpsc;

use crate::events;
use crate::vocabulary::{Publication, Qos};

/// Publications between the engine or executor and the MQTT task, which drains them into the
/// buffer as they come.
pub const HANDOFF: usize = 4096;

/// Hand a publication to the MQTT task, which buffers it. Never blocks the caller: if the
/// hand-off is full (the MQTT task is stuck), the publication is dropped and counted. For
/// reload reports only; values and acks go through [`hand_off`].
pub fn enqueue(out: &mpsc::Sender<Publication>, p: Publication) {
    if let Err(e) = out.try_send(p) {
        let p = match e {
            mpsc::error::TrySendError::Full(p) | mpsc::error::TrySendError::Closed(p) => p,
        };
        events::publication_dropped(&p.topic, "handoff_full");
    }
}

/// Hand a publication to the MQTT task. QoS 1/2 waits for room: the MQTT task only moves
/// publications into its buffer (it never waits for the broker), so this is backpressure
/// against a busy CPU, never against a slow broker, and the buffer's bounds and drop-oldest
/// policy decide what is lost, counted there. QoS 0 is dropped and counted as `handoff_full`
/// when there is no room.
pub async fn hand_off(out: &mpsc::Sender<Publication>, p: Publication) {
    if p.qos == Qos::AtMostOnce {
        return enqueue(out, p);
    }
    if let Err(mpsc::error::SendError(p)) = out.send(p).await {
        events::publication_dropped(&p.topic, "shutdown");
    }
}
