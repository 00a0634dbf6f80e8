//! Modbus input side: one task owns each link and serialises its reads and writes.
//!
//! Speaks Modbus only; knows nothing of MQTT. Results leave as [`LinkEvent`]s; writes
//! arrive as [`WriteRequest`]s and are answered with the read-back data.

pub mod client;
pub mod commission;
pub mod link;

use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::oneshot;

use crate::mappings::{BlockData, DeviceId, DeviceStatus, Fault, PollResult, WriteOp};

/// What a link task reports.
#[derive(Debug)]
pub enum LinkEvent {
    Poll(PollResult),
    Status {
        device: DeviceId,
        status: DeviceStatus,
        at: SystemTime,
    },
}

/// A write for the link's device, with where it came from and where to send the result.
#[derive(Debug)]
pub struct WriteRequest {
    pub op: WriteOp,
    /// Who asked, for the log line: e.g. `mqtt:ISBTest/pumpcontrol/pump`.
    pub origin: Arc<str>,
    /// The read-back of the written address, or why the write failed.
    pub reply: oneshot::Sender<Result<BlockData, Fault>>,
}
