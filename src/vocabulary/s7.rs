//! What an S7 PLC holds, in the words of S7comm: memory areas, addresses in the usual STEP 7
//! notation (`DB1.DBD0`, `DB1,REAL0`, `M10.0`, `IW4`), S7 data types, the S7 read planner, and
//! the translation of an S7 value's bytes into the register-shaped data the engine decodes.
//!
//! Pure data and pure functions at the bottom of the crate: no I/O, no clock. Must not import
//! anything from this crate above the vocabulary. The wire format lives in
//! `inputs::s7::frame`.
//!
//! How S7 values meet the Modbus-shaped core: an S7 point's value is handed to the engine as
//! the registers a Modbus device would hold for it (big-endian, order `ABCD`), so decoding,
//! scaling, quality, publication and the executor's checks are the same code for both. A BOOL
//! is one bit (`BlockData::Bits`), BYTE a `u16` that is at most 255, WORD `u16`, INT `i16`,
//! DWORD `u32`, DINT `i32`, REAL `f32`, LREAL `f64`, and STRING the string's characters
//! (without its two-byte header) packed two to a register.

use super::{BlockData, DataType, WriteValue};

/// The most items one ReadVar or WriteVar request carries: the limit of S7-300/400 CPUs and
/// of Snap7 (`MaxVars` = 20); S7-1200/1500 accept the same.
pub const MAX_ITEMS: usize = 20;

/// Bytes of an S7 job header (protocol id, ROSCTR, redundancy id, PDU reference, parameter
/// and data lengths).
pub const JOB_HEADER: usize = 10;
/// Bytes of an S7 Ack_Data header: the job header plus error class and error code.
pub const ACK_HEADER: usize = 12;
/// Bytes of one item's address specification in a ReadVar/WriteVar request (S7-ANY).
pub const ITEM_SPEC: usize = 12;
/// Bytes before an item's data in a ReadVar reply (return code, transport size, length).
pub const ITEM_DATA_HEADER: usize = 4;

/// The smallest PDU size any S7 CPU negotiates (S7-200, LOGO!, S7-1200 with 240).
pub const MIN_PDU: u16 = 240;

/// An S7 memory area (S7comm "area" byte of an S7-ANY address).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Area {
    /// Process image of the inputs (`I`, German `E`): 0x81.
    Inputs,
    /// Process image of the outputs (`Q`, German `A`): 0x82.
    Outputs,
    /// Flags / bit memory (`M`): 0x83.
    Flags,
    /// A data block `DB<n>`: 0x84 with the DB number.
    Db(u16),
}

impl Area {
    /// The area code on the wire.
    pub const fn code(self) -> u8 {
        match self {
            Area::Inputs => 0x81,
            Area::Outputs => 0x82,
            Area::Flags => 0x83,
            Area::Db(_) => 0x84,
        }
    }
    /// The DB number on the wire (0 outside data blocks).
    pub const fn db(self) -> u16 {
        match self {
            Area::Db(n) => n,
            _ => 0,
        }
    }
    /// The area of a wire code and DB number; `None` for areas fieldgate does not serve.
    pub const fn from_code(code: u8, db: u16) -> Option<Area> {
        Some(match code {
            0x81 => Area::Inputs,
            0x82 => Area::Outputs,
            0x83 => Area::Flags,
            0x84 => Area::Db(db),
            _ => return None,
        })
    }
}

impl std::fmt::Display for Area {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Area::Inputs => f.write_str("I"),
            Area::Outputs => f.write_str("Q"),
            Area::Flags => f.write_str("M"),
            Area::Db(n) => write!(f, "DB{n}"),
        }
    }
}

/// An S7 data type (STEP 7 elementary types; all big-endian in the PLC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum S7Type {
    /// One bit of a byte, 0-7.
    Bool(u8),
    Byte,
    Word,
    Int,
    DWord,
    DInt,
    Real,
    LReal,
    /// An S7 STRING of at most this many characters (1-254): two header bytes (maximum and
    /// current length), then the characters.
    String(u8),
}

impl S7Type {
    /// Bytes the value occupies in the PLC (a BOOL reads its byte).
    pub const fn bytes(self) -> u16 {
        match self {
            S7Type::Bool(_) | S7Type::Byte => 1,
            S7Type::Word | S7Type::Int => 2,
            S7Type::DWord | S7Type::DInt | S7Type::Real => 4,
            S7Type::LReal => 8,
            S7Type::String(n) => n as u16 + 2,
        }
    }

    /// The STEP 7 name, for `check` and messages.
    pub fn name(self) -> String {
        match self {
            S7Type::Bool(_) => "BOOL".into(),
            S7Type::Byte => "BYTE".into(),
            S7Type::Word => "WORD".into(),
            S7Type::Int => "INT".into(),
            S7Type::DWord => "DWORD".into(),
            S7Type::DInt => "DINT".into(),
            S7Type::Real => "REAL".into(),
            S7Type::LReal => "LREAL".into(),
            S7Type::String(n) => format!("STRING[{n}]"),
        }
    }

    /// The register-shaped type the engine decodes this value as (see the module docs).
    pub const fn data_type(self) -> DataType {
        match self {
            S7Type::Bool(_) => DataType::Bool,
            S7Type::Byte | S7Type::Word => DataType::U16,
            S7Type::Int => DataType::I16,
            S7Type::DWord => DataType::U32,
            S7Type::DInt => DataType::I32,
            S7Type::Real => DataType::F32,
            S7Type::LReal => DataType::F64,
            // One S7 CHAR (Latin-1) is at most two bytes of UTF-8: n registers hold n chars.
            S7Type::String(n) => DataType::String(n as u16),
        }
    }

    /// The raw range a written value must fit (BYTE is 0-255, though it travels as a `u16`).
    pub fn raw_range(self) -> Option<(f64, f64)> {
        match self {
            S7Type::Byte => Some((0.0, 255.0)),
            t => t.data_type().raw_range(),
        }
    }
}

/// Where one S7 value lives: area, byte offset and type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct S7Address {
    pub area: Area,
    /// Byte offset in the area, 0-65535.
    pub byte: u32,
    pub ty: S7Type,
}

impl std::fmt::Display for S7Address {
    /// In the `DB1,REAL0` form for data blocks, `MW20` / `I0.1` elsewhere (where the type is
    /// not part of the notation: say it beside).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let b = self.byte;
        match (self.area, self.ty) {
            (Area::Db(n), S7Type::Bool(bit)) => write!(f, "DB{n}.DBX{b}.{bit}"),
            (Area::Db(n), S7Type::String(len)) => write!(f, "DB{n},STRING{b}.{len}"),
            (Area::Db(n), t) => write!(f, "DB{n},{}{b}", t.name()),
            (a, S7Type::Bool(bit)) => write!(f, "{a}{b}.{bit}"),
            (a, t) => {
                let letter = match t.bytes() {
                    1 => "B",
                    2 => "W",
                    4 => "D",
                    _ => "?",
                };
                write!(f, "{a}{letter}{b}")
            }
        }
    }
}

/// Why an address does not parse: the message, and the character (0-based) where it goes wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressError {
    pub at: usize,
    pub message: String,
}

impl std::fmt::Display for AddressError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// The type named by `name` (`bool`, `byte`, `word`, `int`, `dword`, `dint`, `real`, `lreal`,
/// `string`; any case) as a type override, for an address of `bytes` bytes (0 for a bit
/// address). `None` when the name is unknown or does not fit.
fn override_type(name: &str, bit: Option<u8>, bytes: u16) -> Result<S7Type, String> {
    let t = match name.to_ascii_lowercase().as_str() {
        "bool" => S7Type::Bool(bit.unwrap_or(0)),
        "byte" => S7Type::Byte,
        "word" => S7Type::Word,
        "int" => S7Type::Int,
        "dword" => S7Type::DWord,
        "dint" => S7Type::DInt,
        "real" => S7Type::Real,
        "lreal" => S7Type::LReal,
        "string" => {
            return Err("a STRING is addressed as `DB<n>,STRING<byte>.<max length>`".into());
        }
        other => {
            return Err(format!(
                "unknown S7 type `{other}`: bool, byte, word, int, dword, dint, real or lreal"
            ));
        }
    };
    let width = if bit.is_some() { 0 } else { bytes };
    let twidth = if matches!(t, S7Type::Bool(_)) {
        0
    } else {
        t.bytes()
    };
    if width != twidth {
        let what = match width {
            0 => "a bit".to_owned(),
            n => format!("{n} byte(s)"),
        };
        return Err(format!(
            "type {} does not fit the address, which names {what}",
            t.name()
        ));
    }
    Ok(t)
}

/// Leading ASCII letters of `s` from `at`, and where they end.
fn letters(s: &str, at: usize) -> (&str, usize) {
    let end = s[at..]
        .find(|c: char| !c.is_ascii_alphabetic())
        .map_or(s.len(), |i| at + i);
    (&s[at..end], end)
}

/// Leading ASCII digits of `s` from `at` as a number (at most `max`), and where they end.
fn number(s: &str, at: usize, what: &str, max: u32) -> Result<(u32, usize), AddressError> {
    let end = s[at..]
        .find(|c: char| !c.is_ascii_digit())
        .map_or(s.len(), |i| at + i);
    let digits = &s[at..end];
    if digits.is_empty() {
        return Err(AddressError {
            at,
            message: format!("expected {what} (a number) here"),
        });
    }
    match digits.parse::<u32>() {
        Ok(n) if n <= max => Ok((n, end)),
        _ => Err(AddressError {
            at,
            message: format!("{what} must be 0-{max}, not {digits}"),
        }),
    }
}

/// `.<n>` at `at` when present: the number and where it ends.
fn suffix(s: &str, at: usize, what: &str, max: u32) -> Result<Option<(u32, usize)>, AddressError> {
    if s[at..].starts_with('.') {
        number(s, at + 1, what, max).map(Some)
    } else {
        Ok(None)
    }
}

/// The highest byte offset fieldgate addresses (a point's address is 16 bits wide).
pub const MAX_BYTE: u32 = 65_535;

/// Parse an S7 address, with an optional type override (`type:` of the point, for a `W` or
/// `D` address that holds an INT, DINT or REAL). Accepted forms (any case):
///
/// - `DB<n>.DBX<byte>.<bit>`, `DB<n>.DBB<byte>`, `DB<n>.DBW<byte>`, `DB<n>.DBD<byte>`
///   (BOOL, BYTE, WORD, DWORD unless `type` says otherwise);
/// - `DB<n>,<TYPE><byte>` with TYPE one of `X` (then `.<bit>`), `B`/`BYTE`, `W`/`WORD`, `INT`,
///   `D`/`DW`/`DWORD`, `DINT`, `REAL`, `LREAL`, and `DB<n>,STRING<byte>.<max length>` (also
///   `S`); the notation of Snap7's and PLC4X's tag strings;
/// - `I`/`E`, `Q`/`A`, `M` followed by `<byte>.<bit>` (BOOL), or `B`, `W`, `D` and `<byte>`:
///   `I0.1`, `Q0.0`, `M10.0`, `MB4`, `MW20`, `MD24`, `IW64`;
/// - `V` followed by the same (a LOGO! 8's V memory, which is DB1): `V10.0`, `VW0`.
///
/// TIA Portal's absolute-address prefix `%` is accepted and ignored: `%DB1.DBW0`, `%MW10`,
/// `%I0.1`.
///
/// Errors name the character where the address goes wrong.
pub fn parse_address(text: &str, ty: Option<&str>) -> Result<S7Address, AddressError> {
    let s = text.trim_end();
    let mut lead = s.len() - s.trim_start().len();
    let mut s = s.trim_start();
    if let Some(rest) = s.strip_prefix('%') {
        s = rest;
        lead += 1;
    }
    let upper = s.to_ascii_uppercase();
    parse_upper(&upper, ty).map_err(|mut e| {
        e.at += lead;
        e
    })
}

fn parse_upper(s: &str, ty: Option<&str>) -> Result<S7Address, AddressError> {
    let err = |at: usize, message: String| AddressError { at, message };
    let (head, at) = letters(s, 0);
    let (area, (byte, bit, bytes, named), end) = if head == "DB" {
        let (db, at) = number(s, at, "the DB number", 65_535)?;
        if db == 0 {
            return Err(err(2, "DB numbers start at 1".into()));
        }
        let area = Area::Db(db as u16);
        match s[at..].chars().next() {
            Some('.') => {
                let (l, at2) = letters(s, at + 1);
                let (byte, at3) = number(s, at2, "the byte offset", MAX_BYTE)?;
                match l {
                    "DBX" => {
                        let (bit, end) = suffix(s, at3, "the bit number", 7)?
                            .ok_or_else(|| err(at3, "a DBX address needs `.<bit>` (0-7)".into()))?;
                        (area, (byte, Some(bit as u8), 0, None), end)
                    }
                    "DBB" | "DBW" | "DBD" => {
                        let bytes = match l {
                            "DBB" => 1,
                            "DBW" => 2,
                            _ => 4,
                        };
                        (area, (byte, None, bytes, None), at3)
                    }
                    _ => {
                        return Err(err(at + 1, format!("`{l}` is not DBX, DBB, DBW or DBD")));
                    }
                }
            }
            Some(',') => {
                let (l, at2) = letters(s, at + 1);
                let (byte, at3) = number(s, at2, "the byte offset", MAX_BYTE)?;
                match l {
                    "X" => {
                        let (bit, end) = suffix(s, at3, "the bit number", 7)?
                            .ok_or_else(|| err(at3, "an X address needs `.<bit>` (0-7)".into()))?;
                        (area, (byte, Some(bit as u8), 0, None), end)
                    }
                    "S" | "STRING" => {
                        let (len, end) =
                            suffix(s, at3, "the maximum length", 254)?.ok_or_else(|| {
                                err(at3, "a STRING needs `.<max length>` (1-254)".into())
                            })?;
                        if len == 0 {
                            return Err(err(at3 + 1, "a STRING holds 1-254 characters".into()));
                        }
                        (area, (byte, None, 0, Some(S7Type::String(len as u8))), end)
                    }
                    _ => {
                        let t = match l {
                            "B" | "BYTE" => S7Type::Byte,
                            "W" | "WORD" => S7Type::Word,
                            "I" | "INT" => S7Type::Int,
                            "D" | "DW" | "DWORD" => S7Type::DWord,
                            "DI" | "DINT" => S7Type::DInt,
                            "R" | "REAL" => S7Type::Real,
                            "LR" | "LREAL" => S7Type::LReal,
                            _ => {
                                return Err(err(
                                    at + 1,
                                    format!(
                                        "`{l}` is not an S7 type: X, BYTE, WORD, INT, DWORD, DINT, REAL, LREAL or STRING"
                                    ),
                                ));
                            }
                        };
                        (area, (byte, None, t.bytes(), Some(t)), at3)
                    }
                }
            }
            _ => {
                return Err(err(
                    at,
                    "after `DB<n>` comes `.DBX`, `.DBB`, `.DBW`, `.DBD` or `,<TYPE>`".into(),
                ));
            }
        }
    } else {
        let mut chars = head.chars();
        let area = match chars.next() {
            Some('I' | 'E') => Area::Inputs,
            Some('Q' | 'A') => Area::Outputs,
            Some('M') => Area::Flags,
            // A LOGO! 8's V memory is DB1 to S7comm.
            Some('V') => Area::Db(1),
            _ => {
                return Err(err(
                    0,
                    format!(
                        "`{head}` is not an S7 area: DB<n>, I (E), Q (A), M or V (LOGO!); timers and counters are not supported"
                    ),
                ));
            }
        };
        let size = chars.as_str();
        let (byte, at2) = number(s, at, "the byte offset", MAX_BYTE)?;
        match size {
            "" | "X" => {
                let (bit, end) = suffix(s, at2, "the bit number", 7)?
                    .ok_or_else(|| err(at2, "a bit address needs `.<bit>` (0-7)".into()))?;
                (area, (byte, Some(bit as u8), 0, None), end)
            }
            "B" => (area, (byte, None, 1, None), at2),
            "W" => (area, (byte, None, 2, None), at2),
            "D" => (area, (byte, None, 4, None), at2),
            other => {
                return Err(err(
                    1,
                    format!("`{other}` is not a size: nothing (bit), B, W or D"),
                ));
            }
        }
    };
    if end != s.len() {
        return Err(err(end, format!("unexpected `{}`", &s[end..])));
    }
    let ty = match (named, ty) {
        (Some(t), None) => t,
        (Some(t), Some(o)) => {
            let o = override_type(o, None, t.bytes())
                .map_err(|m| err(0, format!("`type: {o}`: {m}")))?;
            if o != t {
                return Err(err(
                    0,
                    format!(
                        "the address names type {}; `type: {}` contradicts it",
                        t.name(),
                        o.name()
                    ),
                ));
            }
            t
        }
        (None, Some(o)) => {
            override_type(o, bit, bytes).map_err(|m| err(0, format!("`type: {o}`: {m}")))?
        }
        (None, None) => match (bit, bytes) {
            (Some(b), _) => S7Type::Bool(b),
            (None, 1) => S7Type::Byte,
            (None, 2) => S7Type::Word,
            (None, _) => S7Type::DWord,
        },
    };
    let ty = match (ty, bit) {
        (S7Type::Bool(_), Some(b)) => S7Type::Bool(b),
        (t, _) => t,
    };
    if byte + u32::from(ty.bytes()) - 1 > MAX_BYTE {
        return Err(err(
            0,
            format!("the value ends past byte {MAX_BYTE}, the highest fieldgate addresses"),
        ));
    }
    Ok(S7Address { area, byte, ty })
}

/// One ReadVar item: `len` bytes from `start` of `area`, read with transport size BYTE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct S7Item {
    pub area: Area,
    pub start: u32,
    pub len: u16,
}

impl S7Item {
    fn end(&self) -> u32 {
        self.start + u32::from(self.len)
    }
}

impl std::fmt::Display for S7Item {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} bytes {}..{}", self.area, self.start, self.end() - 1)
    }
}

/// One ReadVar request: several items, answered together.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct S7ReadRequest {
    pub items: Vec<S7Item>,
}

impl S7ReadRequest {
    /// Bytes of the request PDU: header, function and count, one S7-ANY spec per item.
    pub fn request_bytes(&self) -> usize {
        JOB_HEADER + 2 + ITEM_SPEC * self.items.len()
    }
    /// Bytes of the reply PDU when every item succeeds: a fill byte follows each odd-length
    /// item but the last (Snap7 `cli_ReadMultiVars`; the last item carries none).
    pub fn reply_bytes(&self) -> usize {
        let n = self.items.len();
        ACK_HEADER
            + 2
            + self
                .items
                .iter()
                .enumerate()
                .map(|(k, i)| {
                    ITEM_DATA_HEADER + usize::from(i.len) + usize::from(k + 1 < n && i.len % 2 == 1)
                })
                .sum::<usize>()
    }
}

/// Where a span landed: request, item within it, byte offset within the item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct S7Slot {
    pub request: usize,
    pub item: usize,
    pub offset: u16,
}

/// The ReadVar requests of one poll cycle, and where each value is found.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct S7ReadPlan {
    /// The PDU size the plan was made for.
    pub pdu: u16,
    pub requests: Vec<S7ReadRequest>,
    /// One per input address, in input order.
    pub slots: Vec<S7Slot>,
    /// One per input address (or empty): for a value larger than one reply, the slots of its
    /// further pieces in byte order (its first piece is in `slots`); empty for the others.
    /// The pieces' data, joined, is the value (as Snap7 splits a large area read).
    pub more: Vec<Vec<S7Slot>>,
}

/// The largest item one reply can carry within `pdu` (alone, so without a fill byte: 222 at
/// PDU 240).
pub const fn max_item_bytes(pdu: u16) -> usize {
    (pdu as usize).saturating_sub(ACK_HEADER + 2 + ITEM_DATA_HEADER)
}

/// Plan the ReadVar requests for `addresses` within PDU size `pdu`: values in the same area
/// (and DB) merge into one item when they are at most `max_gap` bytes apart and the item still
/// fits one reply; items are then packed, in address order, first fit: each into the first
/// request that still has room for it (both the request and its reply within the PDU, at most
/// [`MAX_ITEMS`]), a new request when none has. A value larger than one reply (a STRING[254]
/// at PDU 240) is split into items of at most [`max_item_bytes`] each, joined again from
/// [`S7ReadPlan::more`]. `Err` only when the PDU size leaves no room for data.
pub fn plan(addresses: &[S7Address], pdu: u16, max_gap: u16) -> Result<S7ReadPlan, String> {
    let max_item = max_item_bytes(pdu);
    if max_item == 0 {
        return Err(format!("a PDU size of {pdu} bytes leaves no room for data"));
    }
    let mut split: Vec<Vec<usize>> = vec![Vec::new(); addresses.len()];
    let mut order: Vec<usize> = (0..addresses.len()).collect();
    order.sort_by_key(|&i| {
        (
            addresses[i].area,
            addresses[i].byte,
            addresses[i].ty.bytes(),
        )
    });
    // Merge into items.
    let mut items: Vec<S7Item> = Vec::new();
    let mut item_of = vec![(0usize, 0u16); addresses.len()];
    for i in order {
        let a = addresses[i];
        let len = u32::from(a.ty.bytes());
        if len as usize > max_item {
            // Pieces of at most one reply each, in byte order.
            let end = a.byte + len;
            let mut at = a.byte;
            let mut pieces = Vec::new();
            while at < end {
                let n = (end - at).min(max_item as u32);
                items.push(S7Item {
                    area: a.area,
                    start: at,
                    len: n as u16,
                });
                pieces.push(items.len() - 1);
                at += n;
            }
            item_of[i] = (pieces[0], 0);
            split[i] = pieces.split_off(1);
            continue;
        }
        let last_index = items.len().saturating_sub(1);
        if let Some(last) = items.last_mut() {
            let end = a.byte + len;
            let new_end = end.max(last.end());
            if last.area == a.area
                && a.byte >= last.start
                && a.byte <= last.end() + u32::from(max_gap)
                && (new_end - last.start) as usize <= max_item
            {
                last.len = (new_end - last.start) as u16;
                item_of[i] = (last_index, (a.byte - last.start) as u16);
                continue;
            }
        }
        items.push(S7Item {
            area: a.area,
            start: a.byte,
            len: len as u16,
        });
        item_of[i] = (items.len() - 1, 0);
    }
    // Pack items into requests.
    let mut requests: Vec<S7ReadRequest> = Vec::new();
    let mut place = Vec::with_capacity(items.len());
    for item in items {
        let fits = |r: &S7ReadRequest| {
            let mut t = r.clone();
            t.items.push(item);
            t.items.len() <= MAX_ITEMS
                && t.request_bytes() <= usize::from(pdu)
                && t.reply_bytes() <= usize::from(pdu)
        };
        let r = match requests.iter().position(fits) {
            Some(r) => r,
            None => {
                requests.push(S7ReadRequest::default());
                requests.len() - 1
            }
        };
        requests[r].items.push(item);
        place.push((r, requests[r].items.len() - 1));
    }
    let slots = item_of
        .iter()
        .map(|&(item, offset)| S7Slot {
            request: place[item].0,
            item: place[item].1,
            offset,
        })
        .collect();
    let more = split
        .iter()
        .map(|pieces| {
            pieces
                .iter()
                .map(|&it| S7Slot {
                    request: place[it].0,
                    item: place[it].1,
                    offset: 0,
                })
                .collect()
        })
        .collect();
    Ok(S7ReadPlan {
        pdu,
        requests,
        slots,
        more,
    })
}

/// A value's bytes (as read from the PLC, starting at its address) as the register-shaped data
/// the engine decodes (see the module docs); `None` when `bytes` is shorter than the type.
/// A STRING's current length is capped at its maximum and at the bytes read.
pub fn to_block(ty: S7Type, bytes: &[u8]) -> Option<BlockData> {
    let need = usize::from(ty.bytes());
    let b = bytes.get(..need)?;
    let words = |b: &[u8]| -> Vec<u16> {
        b.chunks(2)
            .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))
            .collect()
    };
    Some(match ty {
        S7Type::Bool(bit) => BlockData::Bits(vec![b[0] >> (bit & 7) & 1 == 1]),
        S7Type::Byte => BlockData::Words(vec![u16::from(b[0])]),
        S7Type::String(max) => {
            let cur = usize::from(b[1].min(max));
            // S7 CHAR is one byte of ISO 8859-1 (Latin-1): byte 0xXX is U+00XX. The engine
            // decodes text as UTF-8, so the characters are handed over in UTF-8.
            let text: String = b[2..2 + cur].iter().map(|&c| char::from(c)).collect();
            let mut text = text.into_bytes();
            let width = usize::from(S7Type::String(max).data_type().width()) * 2;
            text.resize(width, 0);
            BlockData::Words(words(&text))
        }
        _ => BlockData::Words(words(b)),
    })
}

/// The bytes to write for `value` (as the command router encoded it for [`S7Type::data_type`]);
/// `Err` when the value does not fit the S7 type (a BYTE above 255, a STRING, a mismatch).
pub fn to_bytes(ty: S7Type, value: &WriteValue) -> Result<Vec<u8>, String> {
    let regs = |n: usize| -> Result<Vec<u8>, String> {
        match value {
            WriteValue::Registers(r) if r.len() == n => {
                Ok(r.iter().flat_map(|w| w.to_be_bytes()).collect())
            }
            _ => Err(format!("{} takes {n} register(s) of data", ty.name())),
        }
    };
    match ty {
        S7Type::Bool(_) => match value {
            WriteValue::Coil(b) => Ok(vec![u8::from(*b)]),
            WriteValue::Registers(_) => Err("a BOOL takes true or false".into()),
        },
        S7Type::Byte => match value {
            WriteValue::Registers(r) if r.len() == 1 && r[0] <= 255 => Ok(vec![r[0] as u8]),
            _ => Err("a BYTE takes 0-255".into()),
        },
        S7Type::Word | S7Type::Int => regs(1),
        S7Type::DWord | S7Type::DInt | S7Type::Real => regs(2),
        S7Type::LReal => regs(4),
        S7Type::String(_) => Err("STRING points are not written".into()),
    }
}

/// The S7comm name of a data item's return code (S7comm "Return code" of ReadVar/WriteVar
/// items, as the Wireshark s7comm dissector and Snap7 name them).
pub fn item_code_name(code: u8) -> &'static str {
    match code {
        0xFF => "success",
        0x01 => "hardware fault",
        0x03 => "access denied (accessing the object is not allowed)",
        0x05 => "address out of range",
        0x06 => "data type not supported",
        0x07 => "data type inconsistent",
        0x0A => "object does not exist",
        _ => "unknown return code",
    }
}

/// The name of an S7 header error (error class and code of an Ack/Ack_Data, as the Wireshark
/// s7comm dissector names them, `errcls_names` and `param_errcode_names`), with the usual cause
/// where one is known.
pub fn header_error_name(class: u8, code: u8) -> &'static str {
    match (class, code) {
        (0x81, 0x04) => {
            "service not implemented on the module, or a frame error; on an S7-1200/1500: PUT/GET access is not enabled"
        }
        (0x81, _) => "application relationship error",
        (0x82, 0x04) => "the type specification for the object is inconsistent",
        (0x82, _) => "object definition error",
        (0x83, 0x05) => "function not available",
        (0x83, _) => "no resources available",
        (0x84, 0x04) => "S7 protocol: the function cannot be performed",
        (0x84, _) => "error on service processing",
        (0x85, 0x00) => "S7 protocol error: wrong frames",
        (0x85, _) => "error on supplies",
        (0x87, 0x01) => "error addressing the object (for example, area length error)",
        (0x87, 0x02) => "the requested service is not supported by the module",
        (0x87, 0x03) => "access to object refused",
        (0x87, 0x04) => "access error: object damaged",
        (0x87, _) => "access error",
        _ => "unknown error class",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(text: &str) -> S7Address {
        parse_address(text, None).unwrap_or_else(|e| panic!("{text}: {e:?}"))
    }

    #[test]
    fn the_usual_notations_parse() {
        let db = Area::Db(1);
        let cases: &[(&str, Option<&str>, S7Address)] = &[
            (
                "DB1.DBD0",
                None,
                S7Address {
                    area: db,
                    byte: 0,
                    ty: S7Type::DWord,
                },
            ),
            (
                "DB1.DBD0",
                Some("real"),
                S7Address {
                    area: db,
                    byte: 0,
                    ty: S7Type::Real,
                },
            ),
            (
                "DB1,REAL0",
                None,
                S7Address {
                    area: db,
                    byte: 0,
                    ty: S7Type::Real,
                },
            ),
            (
                "db1,real4",
                None,
                S7Address {
                    area: db,
                    byte: 4,
                    ty: S7Type::Real,
                },
            ),
            (
                "DB1.DBX4.0",
                None,
                S7Address {
                    area: db,
                    byte: 4,
                    ty: S7Type::Bool(0),
                },
            ),
            (
                "DB1,X4.7",
                None,
                S7Address {
                    area: db,
                    byte: 4,
                    ty: S7Type::Bool(7),
                },
            ),
            (
                "DB1.DBW6",
                None,
                S7Address {
                    area: db,
                    byte: 6,
                    ty: S7Type::Word,
                },
            ),
            (
                "DB1.DBW6",
                Some("INT"),
                S7Address {
                    area: db,
                    byte: 6,
                    ty: S7Type::Int,
                },
            ),
            (
                "DB1,INT6",
                None,
                S7Address {
                    area: db,
                    byte: 6,
                    ty: S7Type::Int,
                },
            ),
            (
                "DB1,DINT8",
                None,
                S7Address {
                    area: db,
                    byte: 8,
                    ty: S7Type::DInt,
                },
            ),
            (
                "DB1,LREAL8",
                None,
                S7Address {
                    area: db,
                    byte: 8,
                    ty: S7Type::LReal,
                },
            ),
            (
                "DB1.DBB3",
                None,
                S7Address {
                    area: db,
                    byte: 3,
                    ty: S7Type::Byte,
                },
            ),
            (
                "DB2,STRING10.20",
                None,
                S7Address {
                    area: Area::Db(2),
                    byte: 10,
                    ty: S7Type::String(20),
                },
            ),
            (
                "DB2,S10.20",
                None,
                S7Address {
                    area: Area::Db(2),
                    byte: 10,
                    ty: S7Type::String(20),
                },
            ),
            (
                "M10.0",
                None,
                S7Address {
                    area: Area::Flags,
                    byte: 10,
                    ty: S7Type::Bool(0),
                },
            ),
            (
                "MW20",
                None,
                S7Address {
                    area: Area::Flags,
                    byte: 20,
                    ty: S7Type::Word,
                },
            ),
            (
                "MD24",
                Some("real"),
                S7Address {
                    area: Area::Flags,
                    byte: 24,
                    ty: S7Type::Real,
                },
            ),
            (
                "I0.1",
                None,
                S7Address {
                    area: Area::Inputs,
                    byte: 0,
                    ty: S7Type::Bool(1),
                },
            ),
            (
                "E0.1",
                None,
                S7Address {
                    area: Area::Inputs,
                    byte: 0,
                    ty: S7Type::Bool(1),
                },
            ),
            (
                "Q0.0",
                None,
                S7Address {
                    area: Area::Outputs,
                    byte: 0,
                    ty: S7Type::Bool(0),
                },
            ),
            (
                "A1.2",
                None,
                S7Address {
                    area: Area::Outputs,
                    byte: 1,
                    ty: S7Type::Bool(2),
                },
            ),
            (
                "IW64",
                None,
                S7Address {
                    area: Area::Inputs,
                    byte: 64,
                    ty: S7Type::Word,
                },
            ),
            (
                "QB3",
                None,
                S7Address {
                    area: Area::Outputs,
                    byte: 3,
                    ty: S7Type::Byte,
                },
            ),
            (
                " MB4 ",
                None,
                S7Address {
                    area: Area::Flags,
                    byte: 4,
                    ty: S7Type::Byte,
                },
            ),
        ];
        for (text, ty, want) in cases {
            assert_eq!(parse_address(text, *ty).as_ref(), Ok(want), "{text} {ty:?}");
        }
    }

    /// TIA Portal writes absolute addresses with `%`: the same addresses as without it.
    #[test]
    fn tia_percent_prefix_is_accepted() {
        for (tia, plain) in [
            ("%DB1.DBW0", "DB1.DBW0"),
            ("%MW10", "MW10"),
            ("%I0.1", "I0.1"),
            ("%db2.dbx4.3", "DB2.DBX4.3"),
        ] {
            assert_eq!(
                parse_address(tia, None),
                parse_address(plain, None),
                "{tia}"
            );
            assert!(parse_address(tia, None).is_ok(), "{tia}");
        }
        // A mistake after the prefix is still placed at its character.
        let e = parse_address("%MQ10", None).unwrap_err();
        assert!(e.at >= 1, "{e:?}");
    }

    #[test]
    fn bad_addresses_say_where_and_why() {
        let cases: &[(&str, Option<&str>, usize, &str)] = &[
            ("DB1.DBX4", None, 8, "needs `.<bit>`"),
            ("DB1.DBX4.8", None, 9, "bit number must be 0-7"),
            ("DB0.DBW0", None, 2, "DB numbers start at 1"),
            ("DB1.DBQ0", None, 4, "not DBX, DBB, DBW or DBD"),
            ("DB1,FLOAT0", None, 4, "not an S7 type"),
            ("DB1,STRING0", None, 11, "needs `.<max length>`"),
            ("DB1,STRING0.255", None, 12, "must be 0-254"),
            ("T5", None, 0, "not an S7 area"),
            ("MW", None, 2, "expected the byte offset"),
            ("M10", None, 3, "needs `.<bit>`"),
            ("MW20x", None, 4, "unexpected `X`"),
            ("MX20", None, 4, "needs `.<bit>`"),
            ("DB1.DBW0", Some("real"), 0, "does not fit"),
            ("DB1.DBD0", Some("float"), 0, "unknown S7 type"),
            ("DB1,REAL0", Some("int"), 0, "does not fit"),
            ("DB1,REAL0", Some("dint"), 0, "contradicts"),
            ("MW65535", None, 0, "ends past byte"),
            ("DB1", None, 3, "after `DB<n>`"),
        ];
        for (text, ty, at, msg) in cases {
            let e = parse_address(text, *ty).expect_err(text);
            assert!(e.message.contains(msg), "{text}: {e:?}");
            assert_eq!(e.at, *at, "{text}: {e:?}");
        }
    }

    #[test]
    fn addresses_display_in_s7_notation() {
        assert_eq!(a("db1,real0").to_string(), "DB1,REAL0");
        assert_eq!(a("DB1.DBX4.1").to_string(), "DB1.DBX4.1");
        assert_eq!(a("DB3,S2.8").to_string(), "DB3,STRING2.8");
        assert_eq!(a("M1.2").to_string(), "M1.2");
        assert_eq!(a("MW4").to_string(), "MW4");
        assert_eq!(a("QD4").to_string(), "QD4");
    }

    fn item(area: Area, start: u32, len: u16) -> S7Item {
        S7Item { area, start, len }
    }

    /// The planner's cases: addresses in, requests (of items) out.
    #[test]
    fn planner_table() {
        let db1 = Area::Db(1);
        let db2 = Area::Db(2);
        struct Case {
            name: &'static str,
            addresses: Vec<&'static str>,
            pdu: u16,
            gap: u16,
            want: Vec<Vec<S7Item>>,
        }
        let cases = vec![
            Case {
                name: "adjacent values in one DB merge into one item",
                addresses: vec!["DB1,REAL0", "DB1,INT4", "DB1.DBX6.0", "DB1.DBX6.1"],
                pdu: 480,
                gap: 0,
                want: vec![vec![item(db1, 0, 7)]],
            },
            Case {
                name: "a hole beyond max_gap makes a second item in the same request",
                addresses: vec!["DB1,INT0", "DB1,INT10"],
                pdu: 480,
                gap: 0,
                want: vec![vec![item(db1, 0, 2), item(db1, 10, 2)]],
            },
            Case {
                name: "a hole within max_gap is bridged",
                addresses: vec!["DB1,INT0", "DB1,INT10"],
                pdu: 480,
                gap: 8,
                want: vec![vec![item(db1, 0, 12)]],
            },
            Case {
                name: "areas and DBs never merge, but share a request; input order does not matter",
                addresses: vec!["MW2", "DB2,INT0", "DB1,INT0", "I0.0", "Q0.1", "MW0"],
                pdu: 480,
                gap: 100,
                want: vec![vec![
                    item(Area::Inputs, 0, 1),
                    item(Area::Outputs, 0, 1),
                    item(Area::Flags, 0, 4),
                    item(db1, 0, 2),
                    item(db2, 0, 2),
                ]],
            },
            Case {
                name: "overlapping values share an item",
                addresses: vec!["DB1,DINT0", "DB1.DBW2", "DB1.DBX3.7"],
                pdu: 480,
                gap: 0,
                want: vec![vec![item(db1, 0, 4)]],
            },
            Case {
                name: "an item stops where one reply is full (PDU 240: 221 bytes)",
                addresses: vec!["DB1,STRING0.200", "DB1,STRING202.200"],
                pdu: 240,
                gap: 0,
                want: vec![vec![item(db1, 0, 202)], vec![item(db1, 202, 202)]],
            },
            Case {
                name: "the same at PDU 480 is one item (461 bytes fit one reply)",
                addresses: vec!["DB1,STRING0.200", "DB1,STRING202.200"],
                pdu: 480,
                gap: 0,
                want: vec![vec![item(db1, 0, 404)]],
            },
            Case {
                name: "two items whose replies do not fit one PDU go to two requests; a small \
                       one after them joins the first with room (first fit)",
                addresses: vec!["DB1,STRING0.200", "DB2,STRING0.200", "DB3,INT0"],
                pdu: 240,
                gap: 0,
                want: vec![
                    vec![item(db1, 0, 202), item(Area::Db(3), 0, 2)],
                    vec![item(db2, 0, 202)],
                ],
            },
            Case {
                name: "at most 20 items per request",
                addresses: (0..21)
                    .map(|i| &*Box::leak(format!("DB{},INT0", i + 1).into_boxed_str()))
                    .collect(),
                pdu: 960,
                gap: 0,
                want: vec![
                    (1..=20).map(|d| item(Area::Db(d), 0, 2)).collect(),
                    vec![item(Area::Db(21), 0, 2)],
                ],
            },
            Case {
                name: "the request's own size bounds the items at a small PDU (240: 19 specs)",
                addresses: (0..20)
                    .map(|i| &*Box::leak(format!("DB{},X0.0", i + 1).into_boxed_str()))
                    .collect(),
                pdu: 240,
                gap: 0,
                want: vec![
                    (1..=19).map(|d| item(Area::Db(d), 0, 1)).collect(),
                    vec![item(Area::Db(20), 0, 1)],
                ],
            },
            Case {
                name: "the README's example: first fit packs it into 2 ReadVars at PDU 240",
                addresses: vec![
                    "IB1",
                    "QB0",
                    "MD100",
                    "DB10,STRING0.212",
                    "DB10,STRING214.20",
                    "DB11,INT0",
                ],
                pdu: 240,
                gap: 0,
                want: vec![
                    vec![
                        item(Area::Inputs, 1, 1),
                        item(Area::Outputs, 0, 1),
                        item(Area::Flags, 100, 4),
                        item(Area::Db(10), 214, 22),
                        item(Area::Db(11), 0, 2),
                    ],
                    vec![item(Area::Db(10), 0, 214)],
                ],
            },
            Case {
                name: "a 222-byte item fits PDU 240 exactly (no fill byte after the last item)",
                addresses: vec!["DB1,STRING0.220"],
                pdu: 240,
                gap: 0,
                want: vec![vec![item(db1, 0, 222)]],
            },
        ];
        for c in cases {
            let addrs: Vec<S7Address> = c.addresses.iter().map(|t| a(t)).collect();
            let p = plan(&addrs, c.pdu, c.gap).unwrap();
            let got: Vec<Vec<S7Item>> = p.requests.iter().map(|r| r.items.clone()).collect();
            assert_eq!(got, c.want, "{}", c.name);
            for r in &p.requests {
                assert!(r.request_bytes() <= usize::from(c.pdu), "{}", c.name);
                assert!(r.reply_bytes() <= usize::from(c.pdu), "{}", c.name);
                assert!(r.items.len() <= MAX_ITEMS, "{}", c.name);
            }
            // Every value lies inside the item its slot names.
            for (i, s) in p.slots.iter().enumerate() {
                let it = p.requests[s.request].items[s.item];
                assert_eq!(it.area, addrs[i].area, "{}", c.name);
                assert_eq!(it.start + u32::from(s.offset), addrs[i].byte, "{}", c.name);
                assert!(
                    u32::from(s.offset) + u32::from(addrs[i].ty.bytes()) <= u32::from(it.len),
                    "{}",
                    c.name
                );
            }
        }
    }

    /// A STRING[254] (256 bytes) at PDU 240 is read in two pieces (222 + 34 bytes), joined
    /// in byte order; a value after it still gets its own slot.
    #[test]
    fn a_value_larger_than_one_reply_is_split() {
        let addrs = [a("DB1,STRING0.254"), a("DB1,INT300")];
        let p = plan(&addrs, 240, 0).unwrap();
        let items: Vec<S7Item> = p.requests.iter().flat_map(|r| r.items.clone()).collect();
        assert!(items.contains(&item(Area::Db(1), 0, 222)), "{items:?}");
        assert!(items.contains(&item(Area::Db(1), 222, 34)), "{items:?}");
        assert_eq!(p.more[0].len(), 1);
        assert!(p.more[1].is_empty());
        let first = p.requests[p.slots[0].request].items[p.slots[0].item];
        let second = p.requests[p.more[0][0].request].items[p.more[0][0].item];
        assert_eq!((first.start, second.start), (0, 222));
        let int = p.requests[p.slots[1].request].items[p.slots[1].item];
        assert_eq!(int.start + u32::from(p.slots[1].offset), 300);
        for r in &p.requests {
            assert!(r.reply_bytes() <= 240 && r.request_bytes() <= 240);
        }
        // One piece when it fits.
        let p = plan(&[a("DB1,STRING0.254")], 480, 0).unwrap();
        assert_eq!(p.requests.len(), 1);
        assert!(p.more[0].is_empty());
    }

    #[test]
    fn bytes_become_registers() {
        let b = |ty, bytes: &[u8]| to_block(ty, bytes).unwrap();
        assert_eq!(b(S7Type::Bool(3), &[0b1000]), BlockData::Bits(vec![true]));
        assert_eq!(b(S7Type::Bool(2), &[0b1000]), BlockData::Bits(vec![false]));
        assert_eq!(b(S7Type::Byte, &[0xAB]), BlockData::Words(vec![0xAB]));
        assert_eq!(
            b(S7Type::Int, &[0xFF, 0xFE]),
            BlockData::Words(vec![0xFFFE])
        );
        assert_eq!(
            b(S7Type::Real, &1.5f32.to_be_bytes()),
            BlockData::Words(vec![0x3FC0, 0])
        );
        assert_eq!(
            b(S7Type::String(5), &[5, 3, b'a', b'b', b'c', 0, 0]),
            BlockData::Words(vec![0x6162, 0x6300, 0, 0, 0])
        );
        // A current length above the maximum is capped.
        assert_eq!(
            b(S7Type::String(2), &[2, 9, b'a', b'b']),
            BlockData::Words(vec![0x6162, 0])
        );
        assert_eq!(to_block(S7Type::DInt, &[0, 0, 1]), None);
    }

    /// S7 CHAR is Latin-1: "Hällo" is stored with 0xE4 and published as "Hällo", and a
    /// STRING of 254 such characters still fits its registers.
    #[test]
    fn string_characters_are_latin_1() {
        use crate::mappings::codec::{Raw, decode};
        use crate::vocabulary::Order;
        let text = |ty: S7Type, bytes: &[u8]| {
            let Some(BlockData::Words(w)) = to_block(ty, bytes) else {
                panic!("no words")
            };
            match decode(&w, ty.data_type(), Order::ABCD) {
                Ok(Raw::Text(t)) => t,
                other => panic!("{other:?}"),
            }
        };
        let ty = S7Type::String(10);
        let mut b = vec![10, 5, b'H', 0xE4, b'l', b'l', b'o'];
        b.resize(12, 0);
        assert_eq!(text(ty, &b), "Hällo");
        let mut b = vec![254, 254];
        b.extend(std::iter::repeat_n(0xFF, 254));
        assert_eq!(text(S7Type::String(254), &b), "ÿ".repeat(254));
    }

    #[test]
    fn writes_become_bytes() {
        use WriteValue::*;
        assert_eq!(to_bytes(S7Type::Bool(1), &Coil(true)), Ok(vec![1]));
        assert_eq!(to_bytes(S7Type::Byte, &Registers(vec![200])), Ok(vec![200]));
        assert!(to_bytes(S7Type::Byte, &Registers(vec![256])).is_err());
        assert_eq!(
            to_bytes(S7Type::Int, &Registers(vec![0xFFFE])),
            Ok(vec![0xFF, 0xFE])
        );
        assert_eq!(
            to_bytes(S7Type::Real, &Registers(vec![0x3FC0, 0])),
            Ok(vec![0x3F, 0xC0, 0, 0])
        );
        assert!(to_bytes(S7Type::Real, &Registers(vec![1])).is_err());
        assert!(to_bytes(S7Type::String(4), &Registers(vec![1, 2])).is_err());
        assert!(to_bytes(S7Type::Int, &Coil(true)).is_err());
    }
}
