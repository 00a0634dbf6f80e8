//! The pure core: decoding, scaling, change detection, rendering, read planning and
//! command parsing.
//!
//! Nothing in here does I/O, spawns tasks or reads a clock: time comes in as an argument.
//! Everything is plain synchronous code, tested with plain `#[test]`.

pub mod bustime;
pub mod codec;
pub mod command;
pub mod engine;
pub mod envelope;
pub mod group;
pub mod number;
pub mod probe;

// The vocabulary used to live here; these paths stay for the config compiler, `check` and
// the command line.
pub use crate::vocabulary::plan;
pub use crate::vocabulary::{
    BadRange, BlockData, DataType, DeviceId, DeviceStatus, Fault, Order, PointId, PollResult,
    Publication, Qos, RegisterKind, WriteOp, WriteValue, exception_name, topic_matches,
};
