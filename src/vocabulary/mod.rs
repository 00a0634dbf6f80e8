//! The shared vocabulary: register kinds, data types and orders, read plans, poll results,
//! faults, device status, writes and publications.
//!
//! The bottom of the crate: the model, the mappings, the links and the MQTT side all speak
//! it. Must not import anything from this crate outside `vocabulary`; it does no I/O and
//! reads no clock.

pub mod plan;
mod poll;
mod publication;
mod registers;
pub mod s7;

pub use plan::{ReadPlan, ReadRequest, Slot, Span};
pub use poll::{
    BadRange, BlockData, DeviceId, DeviceStatus, Fault, PointId, PollResult, WriteOp, WriteValue,
    exception_name,
};
pub use publication::{Announcement, Publication, Qos, timestamp, topic_matches};
pub use registers::{DataType, Order, RegisterKind};
