//! The hand-off from the pure core and the executor to the MQTT task: one bounded channel.
//!
//! Does: hand a publication over, waiting for room (values and acks at every QoS), dropping and
//! counting reload reports when full. Must not: buffer, block on the broker, or render anything.

use tokio::sync::mpsc;

use crate::events;
use crate::vocabulary::Publication;

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

/// Hand a publication to the MQTT task, waiting for room at every QoS. The MQTT task only
/// moves publications on (QoS 1/2 into its buffer, QoS 0 to the client's request queue); it
/// never waits for the broker, so this is backpressure against a busy CPU, never against a
/// slow broker. What is lost is decided, and counted, behind it: the buffer's bounds and
/// drop-oldest policy (`buffer_full`), a full client queue (`client_busy`) or no connection
/// (`offline`) for QoS 0. (Dropping QoS 0 here when the hand-off was full lost a third of a
/// 10 × 1,000-register load to bursts the MQTT task would have drained in milliseconds.)
pub async fn hand_off(out: &mpsc::Sender<Publication>, p: Publication) {
    if let Err(mpsc::error::SendError(p)) = out.send(p).await {
        events::publication_dropped(&p.topic, "shutdown");
    }
}
