//! What a link hands up and takes down: poll results of a device, the faults of a request,
//! a device's status, and the writes a command turns into.
//!
//! Plain data, no behaviour beyond lookups. Must not import anything from this crate above
//! the vocabulary.

use std::sync::Arc;
use std::time::SystemTime;

use super::RegisterKind;

/// Index of a device in the compiled model.
pub type DeviceId = usize;
/// Index of a point in the compiled model (global across devices).
pub type PointId = usize;

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
    /// S7: the PLC answered this item of a ReadVar/WriteVar with a return code other than
    /// 0xFF (success), e.g. 0x0A "object does not exist"; the other items are unaffected.
    S7Item(u8),
    /// S7: the PLC refused the whole request (error class and code of the S7 header, e.g.
    /// 0x81 0x04 when PUT/GET access is not enabled); the connection stays up.
    S7Refused(u8, u8),
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
            Fault::S7Item(code) => write!(
                f,
                "S7 item error {code:#04x} ({})",
                super::s7::item_code_name(*code)
            ),
            Fault::S7Refused(class, code) => write!(
                f,
                "S7 request refused: error class {class:#04x} code {code:#04x} ({})",
                super::s7::header_error_name(*class, *code)
            ),
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
