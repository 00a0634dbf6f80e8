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
pub mod plan;
pub mod probe;

use std::sync::Arc;
use std::time::SystemTime;

use serde::Deserialize;

pub use codec::{DataType, Order};

/// The four Modbus data tables.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum RegisterKind {
    Coil,
    DiscreteInput,
    InputRegister,
    HoldingRegister,
}

impl RegisterKind {
    /// Bit tables hold booleans; register tables hold 16-bit words.
    pub const fn is_bit(self) -> bool {
        matches!(self, RegisterKind::Coil | RegisterKind::DiscreteInput)
    }
    /// The largest quantity one read request may ask for (Modbus application protocol 6.1-6.4).
    pub const fn max_per_request(self) -> u16 {
        if self.is_bit() { 2000 } else { 125 }
    }
    /// The read function code, for the `check` summary and logs.
    pub const fn read_function(self) -> u8 {
        match self {
            RegisterKind::Coil => 1,
            RegisterKind::DiscreteInput => 2,
            RegisterKind::HoldingRegister => 3,
            RegisterKind::InputRegister => 4,
        }
    }
    pub const fn name(self) -> &'static str {
        match self {
            RegisterKind::Coil => "coil",
            RegisterKind::DiscreteInput => "discrete_input",
            RegisterKind::InputRegister => "input_register",
            RegisterKind::HoldingRegister => "holding_register",
        }
    }
}

/// Index of a device in the compiled model.
pub type DeviceId = usize;
/// Index of a point in the compiled model (global across devices).
pub type PointId = usize;

/// MQTT quality of service, our own closed enum (converted to the client's at the edge).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Qos {
    AtMostOnce,
    #[default]
    AtLeastOnce,
    ExactlyOnce,
}

impl Qos {
    pub const fn level(self) -> u8 {
        match self {
            Qos::AtMostOnce => 0,
            Qos::AtLeastOnce => 1,
            Qos::ExactlyOnce => 2,
        }
    }
}

/// One message for the broker.
#[derive(Debug, Clone, PartialEq)]
pub struct Publication {
    pub topic: Arc<str>,
    pub payload: Vec<u8>,
    pub qos: Qos,
    pub retain: bool,
    /// When the value was read (or the event happened); carried for the durable buffer.
    pub created_at: SystemTime,
}

/// The data of one successful read request.
#[derive(Debug, Clone, PartialEq)]
pub enum BlockData {
    Words(Vec<u16>),
    Bits(Vec<bool>),
}

/// Why one read request or write failed, as the engine and the acks see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// The device answered with a Modbus exception (the code as on the wire).
    Exception(u8),
    /// No (valid) answer within the timeout.
    Timeout,
    /// The connection failed or was refused.
    Transport(String),
    /// The device's link is down; nothing was sent.
    NotConnected,
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::Exception(code) => {
                write!(f, "exception {code:#04x} ({})", exception_name(*code))
            }
            Fault::Timeout => f.write_str("timeout"),
            Fault::Transport(e) => write!(f, "transport: {e}"),
            Fault::NotConnected => f.write_str("device not connected"),
        }
    }
}

/// Whether an MQTT topic filter (`+` one level, `#` the rest) matches a topic.
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// The Modbus name of an exception code.
pub fn exception_name(code: u8) -> &'static str {
    match code {
        1 => "illegal function",
        2 => "illegal data address",
        3 => "illegal data value",
        4 => "server device failure",
        5 => "acknowledge",
        6 => "server device busy",
        8 => "memory parity error",
        10 => "gateway path unavailable",
        11 => "gateway target device failed to respond",
        _ => "unknown",
    }
}

/// The result of one poll cycle of one device: one entry per request of its read plan.
#[derive(Debug, Clone, PartialEq)]
pub struct PollResult {
    pub device: DeviceId,
    pub read_at: SystemTime,
    /// The plan index of `blocks[0]`: a link hands each block over as soon as it is read, so
    /// a result may hold part of a cycle (requests `first..first + blocks.len()`).
    pub first: usize,
    pub blocks: Vec<Result<BlockData, Fault>>,
    /// The last part of the cycle: derived values are computed once the cycle is whole.
    pub complete: bool,
    /// Addresses inside an `Ok` block that the device refused (the link split the request to
    /// find them): the points there are bad, the rest of the block is good.
    pub bad: Vec<BadRange>,
}

/// `len` addresses from `offset` of request `request` of a poll, and why they failed.
#[derive(Debug, Clone, PartialEq)]
pub struct BadRange {
    pub request: usize,
    pub offset: u16,
    pub len: u16,
    pub fault: Fault,
}

impl PollResult {
    /// The result of plan request `request`; `None` when this part of the cycle lacks it.
    pub fn block(&self, request: usize) -> Option<&Result<BlockData, Fault>> {
        self.blocks.get(request.checked_sub(self.first)?)
    }

    /// The fault of the addresses `offset..offset + width` of `request`, if any is bad.
    pub fn bad_at(&self, request: usize, offset: u16, width: u16) -> Option<&Fault> {
        let (a, b) = (u32::from(offset), u32::from(offset) + u32::from(width));
        self.bad
            .iter()
            .find(|r| {
                r.request == request
                    && u32::from(r.offset) < b
                    && a < u32::from(r.offset) + u32::from(r.len)
            })
            .map(|r| &r.fault)
    }
}

/// A device's availability, as published on its status topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceStatus {
    Ok,
    /// Some points fail (a Modbus exception), the others are read and published.
    Degraded {
        /// `device.point` names, in mapping order.
        failing: Vec<Arc<str>>,
        reason: String,
    },
    Error(String),
}

impl DeviceStatus {
    /// `ok`, `degraded` or `error`, as on the status topic.
    pub fn as_str(&self) -> &'static str {
        match self {
            DeviceStatus::Ok => "ok",
            DeviceStatus::Degraded { .. } => "degraded",
            DeviceStatus::Error(_) => "error",
        }
    }
}

/// What to write, produced by command parsing and consumed by the device's link task.
#[derive(Debug, Clone, PartialEq)]
pub struct WriteOp {
    pub device: DeviceId,
    pub point: PointId,
    pub kind: RegisterKind,
    pub address: u16,
    pub value: WriteValue,
}

#[derive(Debug, Clone, PartialEq)]
pub enum WriteValue {
    /// FC 5.
    Coil(bool),
    /// FC 6 for one register, FC 16 for more.
    Registers(Vec<u16>),
}

#[cfg(test)]
mod topic_tests {
    use super::topic_matches;

    #[test]
    fn filters_match_as_mqtt_does() {
        assert!(topic_matches("#", "a/b"));
        assert!(topic_matches("a/#", "a/b/c"));
        assert!(topic_matches("a/#", "a"));
        assert!(topic_matches("a/+/c", "a/b/c"));
        assert!(!topic_matches("a/+/c", "a/b/d"));
        assert!(!topic_matches("a/+", "a/b/c"));
        assert!(topic_matches("a/b", "a/b"));
        assert!(!topic_matches("a/b", "a/b/c"));
    }
}
