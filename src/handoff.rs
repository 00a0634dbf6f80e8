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

/// The most slots [`hand_off_all`] reserves at once: a 1,000-value block goes over in four
/// reservations, not a thousand, and the MQTT task can start on the first quarter meanwhile.
pub const HANDOFF_CHUNK: usize = 256;

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

/// Hand a batch of publications to the MQTT task in order, like [`hand_off`] one by one, but
/// reserving room for up to [`HANDOFF_CHUNK`] at a time (`Sender::reserve_many`): one wait and
/// one update of the channel's semaphore per chunk instead of per publication. If the MQTT
/// task is gone (shutdown), the rest are counted as dropped for `shutdown`. `pubs` is left
/// empty with its capacity, for the caller's next batch.
pub async fn hand_off_all(out: &mpsc::Sender<Publication>, pubs: &mut Vec<Publication>) {
    let mut pubs = pubs.drain(..);
    loop {
        let n = pubs.len().min(HANDOFF_CHUNK);
        if n == 0 {
            return;
        }
        match out.reserve_many(n).await {
            Ok(permits) => {
                for (permit, p) in permits.zip(pubs.by_ref()) {
                    permit.send(p);
                }
            }
            Err(_) => {
                for p in pubs {
                    events::publication_dropped(&p.topic, "shutdown");
                }
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vocabulary::Qos;
    use std::time::SystemTime;

    fn publication(i: usize) -> Publication {
        Publication {
            topic: format!("t/{i}").into(),
            payload: i.to_string().into_bytes(),
            qos: Qos::AtMostOnce,
            retain: false,
            created_at: SystemTime::UNIX_EPOCH,
        }
    }

    /// More than a chunk, through a channel smaller than the batch: everything arrives, in
    /// order, while the receiver drains concurrently.
    #[tokio::test]
    async fn a_batch_larger_than_the_channel_arrives_whole_and_in_order() {
        let (tx, mut rx) = mpsc::channel(HANDOFF_CHUNK + 10);
        let mut batch: Vec<Publication> = (0..3 * HANDOFF_CHUNK + 7).map(publication).collect();
        let want = batch.clone();
        let sender = tokio::spawn(async move {
            hand_off_all(&tx, &mut batch).await;
            batch
        });
        let mut got = Vec::new();
        while let Some(p) = rx.recv().await {
            got.push(p);
        }
        let left = sender.await.unwrap();
        assert_eq!(got, want);
        assert!(
            left.is_empty() && left.capacity() >= want.len(),
            "emptied, capacity kept"
        );
    }

    /// A closed channel ends the call instead of waiting for room forever.
    #[tokio::test]
    async fn a_closed_channel_ends_the_hand_off() {
        let (tx, rx) = mpsc::channel(HANDOFF_CHUNK);
        drop(rx);
        let mut batch = (0..3 * HANDOFF_CHUNK).map(publication).collect();
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            hand_off_all(&tx, &mut batch),
        )
        .await
        .expect("hand_off_all returns once the receiver is gone");
    }
}
