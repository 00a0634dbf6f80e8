//! The input side: one task owns each link and serialises its reads and writes. Modbus here;
//! Siemens S7 in `s7/`, through the same events and write requests.
//!
//! Speaks the field protocols only; knows nothing of MQTT. Results leave as [`LinkEvent`]s; writes
//! arrive as [`WriteRequest`]s and are answered with the read-back data.

pub mod client;
pub mod commission;
pub mod error;
pub mod link;
pub mod mbap;
pub mod s7;

use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::oneshot;

use crate::vocabulary::{BlockData, DeviceId, DeviceStatus, Fault, PollResult, WriteOp};

/// What a link task reports, with the model it was produced under: after a hot reload a link
/// that kept running still speaks of its devices by the ids and read plans of the model it
/// started with, and results still in flight from a stopped link may arrive. The engine maps
/// devices by `name` and accepts a result only when the read plan it was read under is the
/// current one.
#[derive(Debug)]
pub enum LinkEvent {
    Poll {
        name: Arc<str>,
        model: Arc<crate::model::Model>,
        poll: PollResult,
    },
    Status {
        name: Arc<str>,
        model: Arc<crate::model::Model>,
        device: DeviceId,
        status: DeviceStatus,
        at: SystemTime,
    },
}

/// What the link needs to know about the device it writes to, resolved by the sender from
/// its current model (the link may be running on an older one).
#[derive(Debug, Clone)]
pub struct WriteTarget {
    pub device: Arc<str>,
    pub point: Arc<str>,
    pub unit: u8,
    pub timeout: std::time::Duration,
    /// Least pause after the previous exchange before a request to this device.
    pub request_delay: std::time::Duration,
    /// Which function codes write one coil or register.
    pub write_function: crate::model::WriteFunction,
}

impl WriteTarget {
    /// The target for `point` of `device` (`point` may be empty for reads).
    pub fn of(device: &crate::model::Device, point: Arc<str>) -> Self {
        WriteTarget {
            device: device.name.clone(),
            point,
            unit: device.unit,
            timeout: device.timeout,
            request_delay: device.request_delay,
            write_function: device.write_function,
        }
    }
}

/// A write for the link's device, with where it came from and where to send the result.
#[derive(Debug)]
pub struct WriteRequest {
    pub op: WriteOp,
    pub target: WriteTarget,
    /// Who asked, for the log line: e.g. `mqtt:ISBTest/pumpcontrol/pump`.
    pub origin: Arc<str>,
    /// The read-back of the written address, or why the write failed.
    pub reply: oneshot::Sender<Result<BlockData, Fault>>,
}
