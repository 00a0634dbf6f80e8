//! The pure core: decoding, scaling and quality (the engine), the codec, command parsing,
//! grouped aggregation, payload encryption and the RTU bus-time model.
//!
//! Nothing in here does I/O, spawns tasks or reads a clock: time comes in as an argument.
//! Everything is plain synchronous code, tested with plain `#[test]`. Must not import the
//! northbound profiles, the tasks or the wiring above it; what goes on the broker is the
//! profiles' business (`crate::northbound`).

pub mod bustime;
pub mod codec;
pub mod command;
pub mod engine;
pub mod envelope;
pub mod group;
pub mod number;
pub mod probe;
pub mod sparkplug;

// The vocabulary used to live here; these paths stay for the config compiler, `check` and
// the command line.
pub use crate::vocabulary::plan;
pub use crate::vocabulary::{
    BadRange, BlockData, DataType, DeviceId, DeviceStatus, Fault, Order, PointId, PollResult,
    Publication, Qos, RegisterKind, WriteOp, WriteValue, exception_name, topic_matches,
};
