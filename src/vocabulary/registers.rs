//! What a Modbus device holds: the four data tables, the data types of a point and the word
//! and byte orders of multi-byte values.
//!
//! Plain types at the bottom of the crate, shared by the model, the mappings and the links.
//! Must not import anything from this crate above it; decoding itself lives in
//! `mappings::codec`.

use serde::{Deserialize, Serialize};

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

/// Word and byte order of a multi-byte value, in the usual vendor letters.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, Serialize, schemars::JsonSchema,
)]
pub enum Order {
    /// Big-endian: high word first, high byte first (Modbus standard).
    #[default]
    ABCD,
    /// Low word first, high byte first ("word swap").
    CDAB,
    /// High word first, bytes swapped within each word ("byte swap").
    BADC,
    /// Fully little-endian: low word first, low byte first.
    DCBA,
}

impl Order {
    pub(crate) const fn swaps_words(self) -> bool {
        matches!(self, Order::CDAB | Order::DCBA)
    }
    pub(crate) const fn swaps_bytes(self) -> bool {
        matches!(self, Order::BADC | Order::DCBA)
    }
}

/// The data type of a point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataType {
    /// A coil or discrete input.
    Bool,
    /// One bit (0..=15, 0 = least significant) of a 16-bit register.
    Bit(u8),
    U16,
    I16,
    U32,
    I32,
    U64,
    I64,
    F32,
    F64,
    /// A string packed two ASCII/UTF-8 bytes per register, `n` registers long.
    /// Trailing NUL bytes and spaces are trimmed on decode.
    String(u16),
}

impl DataType {
    /// How many registers (or bits, for `Bool`) one value occupies.
    pub const fn width(self) -> u16 {
        match self {
            DataType::Bool | DataType::Bit(_) | DataType::U16 | DataType::I16 => 1,
            DataType::U32 | DataType::I32 | DataType::F32 => 2,
            DataType::U64 | DataType::I64 | DataType::F64 => 4,
            DataType::String(n) => n,
        }
    }

    /// True for the types that hold a whole number.
    pub const fn is_integer(self) -> bool {
        matches!(
            self,
            DataType::U16
                | DataType::I16
                | DataType::U32
                | DataType::I32
                | DataType::U64
                | DataType::I64
        )
    }

    /// The raw (unscaled) range an encoded value must fit, for numeric types.
    pub fn raw_range(self) -> Option<(f64, f64)> {
        Some(match self {
            DataType::Bool | DataType::Bit(_) => (0.0, 1.0),
            DataType::U16 => (0.0, f64::from(u16::MAX)),
            DataType::I16 => (f64::from(i16::MIN), f64::from(i16::MAX)),
            DataType::U32 => (0.0, f64::from(u32::MAX)),
            DataType::I32 => (f64::from(i32::MIN), f64::from(i32::MAX)),
            // 2^64 and -2^63 are exact in f64; the upper bounds are exclusive in effect.
            DataType::U64 => (0.0, 18_446_744_073_709_549_568.0),
            DataType::I64 => (-9_223_372_036_854_775_808.0, 9_223_372_036_854_774_784.0),
            DataType::F32 => (f64::from(f32::MIN), f64::from(f32::MAX)),
            DataType::F64 => (f64::MIN, f64::MAX),
            DataType::String(_) => return None,
        })
    }
}
