//! S7comm frames, both directions, as pure functions over bytes: TPKT (RFC 1006, section 6),
//! COTP connection request / confirm and data TPDUs (ISO 8073 / X.224, class 0), and the S7
//! PDUs of PUT/GET: setup communication (function 0xF0), ReadVar (0x04) and WriteVar (0x05),
//! with their Ack_Data replies and per-item return codes.
//!
//! The layouts follow the public descriptions of S7comm: the Wireshark s7comm dissector
//! (`packet-s7comm.c`), Snap7 (`s7_isotcp.cpp`, `s7_micro_client.cpp`) and Apache PLC4X's S7
//! mspec. Used by the client (`inputs::s7::client`) and by the simulator's S7 server
//! (`simulator::s7`). No I/O here, and no panics on any input: every decoder is fuzzed
//! (`fuzz_targets::s7`).

use thiserror::Error;

use crate::vocabulary::s7::{Area, S7Item};

/// TPKT version (RFC 1006, 6: "vrsn 3").
pub const TPKT_VERSION: u8 = 3;
/// Bytes of the TPKT header.
pub const TPKT_HEADER: usize = 4;
/// COTP TPDU codes (ISO 8073, 13.3.1).
pub const COTP_CR: u8 = 0xE0;
pub const COTP_CC: u8 = 0xD0;
pub const COTP_DT: u8 = 0xF0;
/// COTP parameter codes: TPDU size, calling (source) TSAP, called (destination) TSAP.
const PARAM_TPDU_SIZE: u8 = 0xC0;
const PARAM_SRC_TSAP: u8 = 0xC1;
const PARAM_DST_TSAP: u8 = 0xC2;
/// S7 protocol id.
pub const S7_ID: u8 = 0x32;
/// ROSCTR: job, ack (no data), ack_data.
pub const ROSCTR_JOB: u8 = 1;
pub const ROSCTR_ACK: u8 = 2;
pub const ROSCTR_ACK_DATA: u8 = 3;
/// S7 functions.
pub const FN_SETUP: u8 = 0xF0;
pub const FN_READ: u8 = 0x04;
pub const FN_WRITE: u8 = 0x05;
/// Item return code: success.
pub const ITEM_OK: u8 = 0xFF;
/// Item return code: object does not exist.
pub const ITEM_NO_OBJECT: u8 = 0x0A;
/// Item return code: address out of range.
pub const ITEM_OUT_OF_RANGE: u8 = 0x05;
/// Item return code: access denied.
pub const ITEM_ACCESS_DENIED: u8 = 0x03;
/// Item return code: data type inconsistent.
pub const ITEM_TYPE_INCONSISTENT: u8 = 0x07;
/// Transport sizes of an S7-ANY address: BIT, BYTE.
pub const TS_BIT: u8 = 0x01;
pub const TS_BYTE: u8 = 0x02;
/// Transport sizes of a data item: BIT (length in bits, 1), BYTE/WORD/DWORD (length in
/// bits), INTEGER (bits), REAL (bytes), OCTET STRING (bytes).
pub const DTS_BIT: u8 = 0x03;
pub const DTS_BYTE: u8 = 0x04;
const DTS_INT: u8 = 0x05;
const DTS_REAL: u8 = 0x07;
const DTS_OCTET: u8 = 0x09;

/// A malformed frame.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FrameError {
    #[error("frame too short: {0}")]
    Short(&'static str),
    #[error("not a TPKT frame (version {0}, expected 3)")]
    Version(u8),
    #[error("bad TPKT length {0}")]
    Length(usize),
    #[error("bad COTP header: {0}")]
    Cotp(String),
    #[error("not an S7 PDU (protocol id {0:#04x})")]
    NotS7(u8),
    #[error("bad S7 PDU: {0}")]
    S7(String),
}

type Result<T> = std::result::Result<T, FrameError>;

/// The TPKT header `[3, 0, len_hi, len_lo]` of a frame: the whole frame's length (header
/// included), checked to hold at least a COTP header.
pub fn tpkt_length(header: &[u8]) -> Result<usize> {
    let [v, _, hi, lo, ..] = *header else {
        return Err(FrameError::Short("TPKT header"));
    };
    if v != TPKT_VERSION {
        return Err(FrameError::Version(v));
    }
    let len = usize::from(u16::from_be_bytes([hi, lo]));
    if len < TPKT_HEADER + 3 {
        return Err(FrameError::Length(len));
    }
    Ok(len)
}

/// `payload` (a COTP TPDU) in a TPKT frame. A payload longer than 65531 bytes cannot be
/// framed; S7 PDUs are at most 960 bytes.
pub fn tpkt(payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() + TPKT_HEADER).min(usize::from(u16::MAX)) as u16;
    let mut out = Vec::with_capacity(usize::from(len));
    out.extend_from_slice(&[TPKT_VERSION, 0]);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A decoded COTP TPDU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cotp<'a> {
    /// Connection request (CR) or confirm (CC), with its references and TSAPs.
    Connect {
        code: u8,
        dst_ref: u16,
        src_ref: u16,
        tpdu_size: Option<u8>,
        src_tsap: Option<u16>,
        dst_tsap: Option<u16>,
    },
    /// Data (DT): the S7 PDU (or a part of it), and whether it is the last part.
    Data { eot: bool, payload: &'a [u8] },
    /// Anything else (disconnect request, error TPDU...), by code.
    Other(u8),
}

/// Decode the COTP TPDU in a TPKT frame's payload.
pub fn decode_cotp(body: &[u8]) -> Result<Cotp<'_>> {
    let [li, code, ..] = *body else {
        return Err(FrameError::Short("COTP header"));
    };
    let li = usize::from(li);
    if li + 1 > body.len() || li < 1 {
        return Err(FrameError::Cotp(format!(
            "length indicator {li} for {} bytes",
            body.len()
        )));
    }
    let header = &body[..=li];
    match code & 0xF0 {
        COTP_DT => {
            let nr = *header
                .get(2)
                .ok_or(FrameError::Cotp("DT without its TPDU number".into()))?;
            Ok(Cotp::Data {
                eot: nr & 0x80 != 0,
                payload: &body[li + 1..],
            })
        }
        COTP_CR | COTP_CC => {
            if header.len() < 7 {
                return Err(FrameError::Cotp("CR/CC header shorter than 7 bytes".into()));
            }
            let dst_ref = u16::from_be_bytes([header[2], header[3]]);
            let src_ref = u16::from_be_bytes([header[4], header[5]]);
            let (mut tpdu_size, mut src_tsap, mut dst_tsap) = (None, None, None);
            let mut p = &header[7..];
            while let [pcode, plen, rest @ ..] = p {
                let plen = usize::from(*plen);
                let value = rest
                    .get(..plen)
                    .ok_or(FrameError::Cotp(format!("parameter {pcode:#04x} is cut")))?;
                let tsap = || (plen == 2).then(|| u16::from_be_bytes([value[0], value[1]]));
                match *pcode {
                    PARAM_TPDU_SIZE => tpdu_size = value.first().copied(),
                    PARAM_SRC_TSAP => src_tsap = tsap(),
                    PARAM_DST_TSAP => dst_tsap = tsap(),
                    _ => {}
                }
                p = &rest[plen..];
            }
            if !p.is_empty() {
                return Err(FrameError::Cotp("a parameter is cut".into()));
            }
            Ok(Cotp::Connect {
                code: code & 0xF0,
                dst_ref,
                src_ref,
                tpdu_size,
                src_tsap,
                dst_tsap,
            })
        }
        other => Ok(Cotp::Other(other)),
    }
}

/// A COTP connection request (class 0, TPDU size 1024) in its TPKT frame, from `src_tsap` to
/// `dst_tsap`; our reference is 1.
pub fn connection_request(src_tsap: u16, dst_tsap: u16) -> Vec<u8> {
    connect_tpdu(COTP_CR, 0, 1, src_tsap, dst_tsap)
}

/// The confirm of a connection request whose source reference was `their_ref`.
pub fn connection_confirm(their_ref: u16, src_tsap: u16, dst_tsap: u16) -> Vec<u8> {
    connect_tpdu(COTP_CC, their_ref, 1, src_tsap, dst_tsap)
}

fn connect_tpdu(code: u8, dst_ref: u16, src_ref: u16, src_tsap: u16, dst_tsap: u16) -> Vec<u8> {
    let mut t = vec![0, code];
    t.extend_from_slice(&dst_ref.to_be_bytes());
    t.extend_from_slice(&src_ref.to_be_bytes());
    t.push(0); // class 0, no options
    t.extend_from_slice(&[PARAM_TPDU_SIZE, 1, 0x0A]); // 2^10 = 1024 bytes
    t.extend_from_slice(&[PARAM_SRC_TSAP, 2]);
    t.extend_from_slice(&src_tsap.to_be_bytes());
    t.extend_from_slice(&[PARAM_DST_TSAP, 2]);
    t.extend_from_slice(&dst_tsap.to_be_bytes());
    t[0] = (t.len() - 1) as u8;
    tpkt(&t)
}

/// An S7 PDU in one COTP data TPDU (last part) in its TPKT frame.
pub fn data(pdu: &[u8]) -> Vec<u8> {
    let mut t = Vec::with_capacity(pdu.len() + 3);
    t.extend_from_slice(&[2, COTP_DT, 0x80]);
    t.extend_from_slice(pdu);
    tpkt(&t)
}

/// The remote TSAP of a CPU in `rack`/`slot` for a connection type (1 PG, 2 OP, 3 S7 basic):
/// `type << 8 | rack * 32 + slot` (Snap7 `Cli_SetConnectionParams`).
pub const fn remote_tsap(connection_type: u8, rack: u8, slot: u8) -> u16 {
    ((connection_type as u16) << 8) | ((rack as u16 & 0x07) * 0x20 + (slot as u16 & 0x1F))
}

/// The local TSAP fieldgate uses as a client (Snap7's default, 0x0100).
pub const LOCAL_TSAP: u16 = 0x0100;

/// An S7-ANY address of a request item (the 12-byte "variable specification").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ItemSpec {
    /// Transport size: [`TS_BIT`], [`TS_BYTE`], or another S7 type code.
    pub transport: u8,
    /// Number of elements of `transport` size.
    pub count: u16,
    pub db: u16,
    pub area: u8,
    /// Bit address: byte * 8 + bit (24 bits on the wire).
    pub address: u32,
}

impl ItemSpec {
    /// Read `item` as bytes.
    pub fn bytes(item: &S7Item) -> Self {
        ItemSpec {
            transport: TS_BYTE,
            count: item.len,
            db: item.area.db(),
            area: item.area.code(),
            address: item.start * 8,
        }
    }
    /// One bit at `byte`.`bit`.
    pub fn bit(area: Area, byte: u32, bit: u8) -> Self {
        ItemSpec {
            transport: TS_BIT,
            count: 1,
            db: area.db(),
            area: area.code(),
            address: byte * 8 + u32::from(bit & 7),
        }
    }
    /// The byte offset of the address.
    pub fn byte(&self) -> u32 {
        self.address >> 3
    }
    /// Bytes this item covers (a BIT reads one byte); `None` for transport sizes fieldgate
    /// does not serve.
    pub fn byte_len(&self) -> Option<usize> {
        // S7-ANY transport sizes: 0x01 BIT, 0x02 BYTE, 0x03 CHAR, 0x04 WORD, 0x05 INT,
        // 0x06 DWORD, 0x07 DINT, 0x08 REAL.
        let per = match self.transport {
            TS_BIT => return Some(1),
            TS_BYTE | 0x03 => 1,
            0x04 | 0x05 => 2,
            0x06..=0x08 => 4,
            _ => return None,
        };
        Some(usize::from(self.count) * per)
    }

    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&[0x12, 0x0A, 0x10, self.transport]);
        out.extend_from_slice(&self.count.to_be_bytes());
        out.extend_from_slice(&self.db.to_be_bytes());
        out.push(self.area);
        let a = self.address & 0x00FF_FFFF;
        out.extend_from_slice(&[(a >> 16) as u8, (a >> 8) as u8, a as u8]);
    }

    fn decode(b: &[u8]) -> Result<Self> {
        let [
            0x12,
            0x0A,
            0x10,
            transport,
            c1,
            c2,
            d1,
            d2,
            area,
            a1,
            a2,
            a3,
        ] = *b
        else {
            return Err(FrameError::S7("item is not an S7-ANY address".into()));
        };
        Ok(ItemSpec {
            transport,
            count: u16::from_be_bytes([c1, c2]),
            db: u16::from_be_bytes([d1, d2]),
            area,
            address: u32::from_be_bytes([0, a1, a2, a3]),
        })
    }
}

/// One item of a ReadVar reply: its return code and, when 0xFF, its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadItem {
    pub code: u8,
    pub data: Vec<u8>,
}

/// What a job asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Job {
    Setup {
        pdu: u16,
    },
    Read(Vec<ItemSpec>),
    /// Items with their data (transport size of the data, and the bytes).
    Write(Vec<(ItemSpec, u8, Vec<u8>)>),
    /// Another function, by code.
    Other(u8),
}

/// What an Ack_Data carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Setup {
        pdu: u16,
    },
    Read(Vec<ReadItem>),
    /// One return code per item.
    Write(Vec<u8>),
    /// An error (header error class/code not zero), without parameters or data.
    Refused {
        class: u8,
        code: u8,
    },
    /// Another function, by code.
    Other(u8),
}

/// A decoded S7 PDU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pdu {
    Job {
        pdu_ref: u16,
        job: Job,
    },
    Ack {
        pdu_ref: u16,
        reply: Reply,
    },
    /// Userdata and anything else, by ROSCTR.
    Other(u8),
}

fn header(
    rosctr: u8,
    pdu_ref: u16,
    params: usize,
    data: usize,
    error: Option<(u8, u8)>,
) -> Vec<u8> {
    let mut h = vec![S7_ID, rosctr, 0, 0];
    h.extend_from_slice(&pdu_ref.to_be_bytes());
    h.extend_from_slice(&(params as u16).to_be_bytes());
    h.extend_from_slice(&(data as u16).to_be_bytes());
    if let Some((class, code)) = error {
        h.extend_from_slice(&[class, code]);
    }
    h
}

/// Setup communication: one job at a time each way, and the PDU size we ask for.
pub fn setup_request(pdu_ref: u16, pdu: u16) -> Vec<u8> {
    let mut out = header(ROSCTR_JOB, pdu_ref, 8, 0, None);
    out.extend_from_slice(&[FN_SETUP, 0, 0, 1, 0, 1]);
    out.extend_from_slice(&pdu.to_be_bytes());
    out
}

/// The answer to a setup communication, granting `pdu`.
pub fn setup_reply(pdu_ref: u16, pdu: u16) -> Vec<u8> {
    let mut out = header(ROSCTR_ACK_DATA, pdu_ref, 8, 0, Some((0, 0)));
    out.extend_from_slice(&[FN_SETUP, 0, 0, 1, 0, 1]);
    out.extend_from_slice(&pdu.to_be_bytes());
    out
}

/// ReadVar of `items`, each read as bytes.
pub fn read_request(pdu_ref: u16, items: &[S7Item]) -> Vec<u8> {
    read_request_specs(
        pdu_ref,
        &items.iter().map(ItemSpec::bytes).collect::<Vec<_>>(),
    )
}

/// ReadVar of `specs`.
pub fn read_request_specs(pdu_ref: u16, specs: &[ItemSpec]) -> Vec<u8> {
    let mut out = header(ROSCTR_JOB, pdu_ref, 2 + 12 * specs.len(), 0, None);
    out.extend_from_slice(&[FN_READ, specs.len() as u8]);
    for s in specs {
        s.encode(&mut out);
    }
    out
}

/// The reply to a ReadVar: each item's return code and data (transport size BYTE, length in
/// bits; BIT items as BIT with length 1), a fill byte after odd-length data but the last.
pub fn read_reply(pdu_ref: u16, items: &[(ItemSpec, ReadItem)]) -> Vec<u8> {
    let mut data = Vec::new();
    for (i, (spec, item)) in items.iter().enumerate() {
        if item.code == ITEM_OK {
            let (ts, len) = if spec.transport == TS_BIT {
                (DTS_BIT, 1)
            } else {
                (DTS_BYTE, item.data.len() * 8)
            };
            data.extend_from_slice(&[ITEM_OK, ts]);
            data.extend_from_slice(&(len as u16).to_be_bytes());
            data.extend_from_slice(&item.data);
            if item.data.len() % 2 == 1 && i + 1 < items.len() {
                data.push(0);
            }
        } else {
            data.extend_from_slice(&[item.code, 0, 0, 0]);
        }
    }
    let mut out = header(ROSCTR_ACK_DATA, pdu_ref, 2, data.len(), Some((0, 0)));
    out.extend_from_slice(&[FN_READ, items.len() as u8]);
    out.extend_from_slice(&data);
    out
}

/// WriteVar of one item: `data` at `spec` (bytes, or one bit as 0/1).
pub fn write_request(pdu_ref: u16, spec: ItemSpec, data: &[u8]) -> Vec<u8> {
    let (ts, len) = if spec.transport == TS_BIT {
        (DTS_BIT, 1)
    } else {
        (DTS_BYTE, data.len() * 8)
    };
    let mut d = vec![0, ts];
    d.extend_from_slice(&(len as u16).to_be_bytes());
    d.extend_from_slice(data);
    let mut out = header(ROSCTR_JOB, pdu_ref, 14, d.len(), None);
    out.extend_from_slice(&[FN_WRITE, 1]);
    spec.encode(&mut out);
    out.extend_from_slice(&d);
    out
}

/// The reply to a WriteVar: one return code per item.
pub fn write_reply(pdu_ref: u16, codes: &[u8]) -> Vec<u8> {
    let mut out = header(ROSCTR_ACK_DATA, pdu_ref, 2, codes.len(), Some((0, 0)));
    out.extend_from_slice(&[FN_WRITE, codes.len() as u8]);
    out.extend_from_slice(codes);
    out
}

/// An Ack without parameters or data carrying an error class and code.
pub fn error_reply(pdu_ref: u16, class: u8, code: u8) -> Vec<u8> {
    header(ROSCTR_ACK, pdu_ref, 0, 0, Some((class, code)))
}

/// Bytes of a data item of transport size `ts` and length field `len`.
fn data_len(ts: u8, len: u16) -> usize {
    match ts {
        DTS_BIT | DTS_REAL | DTS_OCTET | 0 => usize::from(len),
        DTS_BYTE | DTS_INT => usize::from(len).div_ceil(8),
        _ => usize::from(len).div_ceil(8),
    }
}

/// The four bytes of `b` from `at`, if there are four.
fn four(b: &[u8], at: usize) -> Option<&[u8; 4]> {
    b.get(at..at.checked_add(4)?)
        .and_then(|s| <&[u8; 4]>::try_from(s).ok())
}

/// Decode an S7 PDU (the payload of COTP data TPDUs).
pub fn decode_pdu(b: &[u8]) -> Result<Pdu> {
    let [id, rosctr, _, _, r1, r2, p1, p2, d1, d2, ..] = *b else {
        return Err(FrameError::Short("S7 header"));
    };
    if id != S7_ID {
        return Err(FrameError::NotS7(id));
    }
    let pdu_ref = u16::from_be_bytes([r1, r2]);
    let plen = usize::from(u16::from_be_bytes([p1, p2]));
    let dlen = usize::from(u16::from_be_bytes([d1, d2]));
    let (hlen, error) = match rosctr {
        ROSCTR_JOB => (10, (0, 0)),
        ROSCTR_ACK | ROSCTR_ACK_DATA => {
            let (Some(&c), Some(&e)) = (b.get(10), b.get(11)) else {
                return Err(FrameError::Short("S7 ack header"));
            };
            (12, (c, e))
        }
        other => return Ok(Pdu::Other(other)),
    };
    let params = b
        .get(hlen..hlen + plen)
        .ok_or(FrameError::S7(format!("parameters ({plen} bytes) cut")))?;
    let data = b
        .get(hlen + plen..hlen + plen + dlen)
        .ok_or(FrameError::S7(format!("data ({dlen} bytes) cut")))?;
    if rosctr == ROSCTR_JOB {
        return Ok(Pdu::Job {
            pdu_ref,
            job: decode_job(params, data)?,
        });
    }
    if error != (0, 0) {
        return Ok(Pdu::Ack {
            pdu_ref,
            reply: Reply::Refused {
                class: error.0,
                code: error.1,
            },
        });
    }
    Ok(Pdu::Ack {
        pdu_ref,
        reply: decode_reply(params, data)?,
    })
}

fn setup_pdu(params: &[u8]) -> Result<u16> {
    match *params {
        [FN_SETUP, _, _, _, _, _, hi, lo, ..] => Ok(u16::from_be_bytes([hi, lo])),
        _ => Err(FrameError::S7(
            "setup parameters shorter than 8 bytes".into(),
        )),
    }
}

fn decode_job(params: &[u8], data: &[u8]) -> Result<Job> {
    let Some(&function) = params.first() else {
        return Err(FrameError::S7("job without parameters".into()));
    };
    match function {
        FN_SETUP => Ok(Job::Setup {
            pdu: setup_pdu(params)?,
        }),
        FN_READ | FN_WRITE => {
            let n = usize::from(
                *params
                    .get(1)
                    .ok_or(FrameError::S7("no item count".into()))?,
            );
            let specs = (0..n)
                .map(|i| {
                    params
                        .get(2 + 12 * i..2 + 12 * (i + 1))
                        .ok_or(FrameError::S7(format!("item {i} of {n} cut")))
                        .and_then(ItemSpec::decode)
                })
                .collect::<Result<Vec<_>>>()?;
            if function == FN_READ {
                return Ok(Job::Read(specs));
            }
            let mut items = Vec::with_capacity(n);
            let mut at = 0;
            for (i, spec) in specs.into_iter().enumerate() {
                let Some(&[_, ts, l1, l2]) = four(data, at) else {
                    return Err(FrameError::S7(format!("write data of item {i} cut")));
                };
                let len = data_len(ts, u16::from_be_bytes([l1, l2]));
                let bytes = data
                    .get(at + 4..at + 4 + len)
                    .ok_or(FrameError::S7(format!("write data of item {i} cut")))?;
                items.push((spec, ts, bytes.to_vec()));
                at += 4 + len + len % 2;
            }
            Ok(Job::Write(items))
        }
        other => Ok(Job::Other(other)),
    }
}

fn decode_reply(params: &[u8], data: &[u8]) -> Result<Reply> {
    let Some(&function) = params.first() else {
        return Err(FrameError::S7("ack without parameters".into()));
    };
    match function {
        FN_SETUP => Ok(Reply::Setup {
            pdu: setup_pdu(params)?,
        }),
        FN_READ => {
            let n = usize::from(
                *params
                    .get(1)
                    .ok_or(FrameError::S7("no item count".into()))?,
            );
            let mut items = Vec::with_capacity(n.min(64));
            let mut at = 0;
            for i in 0..n {
                let Some(&[code, ts, l1, l2]) = four(data, at) else {
                    return Err(FrameError::S7(format!("item {i} of {n} cut")));
                };
                if code != ITEM_OK {
                    items.push(ReadItem {
                        code,
                        data: Vec::new(),
                    });
                    // An error item has no data (length 0, Snap7 and S7 CPUs alike); a length
                    // given anyway is skipped.
                    let len = data_len(ts, u16::from_be_bytes([l1, l2]));
                    at += 4 + len + if i + 1 < n { len % 2 } else { 0 };
                    continue;
                }
                let len = data_len(ts, u16::from_be_bytes([l1, l2]));
                let bytes = data
                    .get(at + 4..at + 4 + len)
                    .ok_or(FrameError::S7(format!("data of item {i} cut")))?;
                items.push(ReadItem {
                    code,
                    data: bytes.to_vec(),
                });
                at += 4 + len + if i + 1 < n { len % 2 } else { 0 };
            }
            Ok(Reply::Read(items))
        }
        FN_WRITE => {
            let n = usize::from(
                *params
                    .get(1)
                    .ok_or(FrameError::S7("no item count".into()))?,
            );
            let codes = data
                .get(..n)
                .ok_or(FrameError::S7(format!("{n} return codes expected")))?;
            Ok(Reply::Write(codes.to_vec()))
        }
        other => Ok(Reply::Other(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_request_matches_snap7() {
        // Snap7's ISO connection request to rack 0, slot 2, PG (s7_isotcp.cpp, with
        // TPDU size 1024).
        assert_eq!(
            connection_request(LOCAL_TSAP, remote_tsap(1, 0, 2)),
            [
                0x03, 0x00, 0x00, 0x16, 0x11, 0xE0, 0x00, 0x00, 0x00, 0x01, 0x00, 0xC0, 0x01, 0x0A,
                0xC1, 0x02, 0x01, 0x00, 0xC2, 0x02, 0x01, 0x02
            ]
        );
        let frame = connection_request(LOCAL_TSAP, remote_tsap(3, 0, 1));
        assert_eq!(tpkt_length(&frame), Ok(frame.len()));
        assert_eq!(
            decode_cotp(&frame[4..]),
            Ok(Cotp::Connect {
                code: COTP_CR,
                dst_ref: 0,
                src_ref: 1,
                tpdu_size: Some(0x0A),
                src_tsap: Some(0x0100),
                dst_tsap: Some(0x0301),
            })
        );
    }

    #[test]
    fn tsaps_follow_rack_and_slot() {
        assert_eq!(remote_tsap(1, 0, 2), 0x0102);
        assert_eq!(remote_tsap(2, 0, 1), 0x0201);
        assert_eq!(remote_tsap(3, 1, 3), 0x0323);
    }

    #[test]
    fn setup_round_trips() {
        let job = setup_request(7, 480);
        // Snap7's negotiation PDU: 32 01 00 00 ref 00 08 00 00 f0 00 00 01 00 01 01 e0.
        assert_eq!(
            job,
            [
                0x32, 1, 0, 0, 0, 7, 0, 8, 0, 0, 0xF0, 0, 0, 1, 0, 1, 0x01, 0xE0
            ]
        );
        assert_eq!(
            decode_pdu(&job),
            Ok(Pdu::Job {
                pdu_ref: 7,
                job: Job::Setup { pdu: 480 }
            })
        );
        assert_eq!(
            decode_pdu(&setup_reply(7, 240)),
            Ok(Pdu::Ack {
                pdu_ref: 7,
                reply: Reply::Setup { pdu: 240 }
            })
        );
    }

    #[test]
    fn read_round_trips_with_fill_bytes_and_item_errors() {
        let items = [
            S7Item {
                area: Area::Db(1),
                start: 0,
                len: 3,
            },
            S7Item {
                area: Area::Db(9),
                start: 0,
                len: 2,
            },
            S7Item {
                area: Area::Flags,
                start: 4,
                len: 1,
            },
        ];
        let job = read_request(3, &items);
        let Ok(Pdu::Job {
            pdu_ref: 3,
            job: Job::Read(specs),
        }) = decode_pdu(&job)
        else {
            panic!("{:?}", decode_pdu(&job));
        };
        assert_eq!(specs.len(), 3);
        assert_eq!((specs[0].db, specs[0].area, specs[0].address), (1, 0x84, 0));
        assert_eq!(
            (specs[2].area, specs[2].byte(), specs[2].count),
            (0x83, 4, 1)
        );
        let replies = vec![
            (
                specs[0],
                ReadItem {
                    code: ITEM_OK,
                    data: vec![1, 2, 3],
                },
            ),
            (
                specs[1],
                ReadItem {
                    code: ITEM_NO_OBJECT,
                    data: vec![],
                },
            ),
            (
                specs[2],
                ReadItem {
                    code: ITEM_OK,
                    data: vec![9],
                },
            ),
        ];
        let reply = read_reply(3, &replies);
        assert_eq!(
            decode_pdu(&reply),
            Ok(Pdu::Ack {
                pdu_ref: 3,
                reply: Reply::Read(replies.into_iter().map(|(_, r)| r).collect())
            })
        );
    }

    #[test]
    fn write_round_trips() {
        let spec = ItemSpec::bit(Area::Db(1), 4, 3);
        assert_eq!(spec.address, 35);
        let job = write_request(5, spec, &[1]);
        assert_eq!(
            decode_pdu(&job),
            Ok(Pdu::Job {
                pdu_ref: 5,
                job: Job::Write(vec![(spec, DTS_BIT, vec![1])])
            })
        );
        let spec = ItemSpec::bytes(&S7Item {
            area: Area::Db(1),
            start: 6,
            len: 2,
        });
        let job = write_request(6, spec, &[0x12, 0x34]);
        assert_eq!(
            decode_pdu(&job),
            Ok(Pdu::Job {
                pdu_ref: 6,
                job: Job::Write(vec![(spec, DTS_BYTE, vec![0x12, 0x34])])
            })
        );
        assert_eq!(
            decode_pdu(&write_reply(6, &[ITEM_ACCESS_DENIED])),
            Ok(Pdu::Ack {
                pdu_ref: 6,
                reply: Reply::Write(vec![ITEM_ACCESS_DENIED])
            })
        );
        assert_eq!(
            decode_pdu(&error_reply(6, 0x81, 0x04)),
            Ok(Pdu::Ack {
                pdu_ref: 6,
                reply: Reply::Refused {
                    class: 0x81,
                    code: 0x04
                }
            })
        );
    }

    #[test]
    fn data_tpdus_carry_the_pdu() {
        let f = data(&[0x32, 1]);
        assert_eq!(tpkt_length(&f), Ok(f.len()));
        assert_eq!(
            decode_cotp(&f[4..]),
            Ok(Cotp::Data {
                eot: true,
                payload: &[0x32, 1]
            })
        );
    }

    #[test]
    fn malformed_frames_are_errors() {
        assert!(tpkt_length(&[3, 0, 0, 3]).is_err());
        assert!(tpkt_length(&[4, 0, 0, 30]).is_err());
        assert!(decode_cotp(&[9, 0xF0]).is_err());
        assert!(decode_cotp(&[6, 0xE0, 0, 0, 0, 1, 0]).is_ok());
        assert!(decode_cotp(&[8, 0xE0, 0, 0, 0, 1, 0, 0xC1, 5]).is_err());
        assert!(decode_pdu(&[0x31; 12]).is_err());
        // Read reply announcing 2 items with data for one.
        let mut r = read_reply(
            1,
            &[(
                ItemSpec::bytes(&S7Item {
                    area: Area::Db(1),
                    start: 0,
                    len: 2,
                }),
                ReadItem {
                    code: ITEM_OK,
                    data: vec![1, 2],
                },
            )],
        );
        r[13] = 2;
        assert!(decode_pdu(&r).is_err());
    }

    /// The fuzz target's body on stable: valid frames, cut and mutated, and random bytes
    /// never panic any decoder (nor the simulator's server).
    #[test]
    fn mutated_frames_never_panic() {
        let item = S7Item {
            area: Area::Db(1),
            start: 2,
            len: 5,
        };
        let spec = ItemSpec::bytes(&item);
        let seeds = [
            connection_request(LOCAL_TSAP, remote_tsap(1, 0, 2)),
            data(&setup_request(1, 480)),
            data(&read_request(2, &[item, item])),
            read_reply(
                2,
                &[
                    (
                        spec,
                        ReadItem {
                            code: ITEM_OK,
                            data: vec![1, 2, 3, 4, 5],
                        },
                    ),
                    (
                        spec,
                        ReadItem {
                            code: ITEM_NO_OBJECT,
                            data: vec![],
                        },
                    ),
                ],
            ),
            data(&write_request(3, ItemSpec::bit(Area::Flags, 1, 2), &[1])),
            write_reply(3, &[ITEM_OK, ITEM_ACCESS_DENIED]),
            error_reply(4, 0x81, 0x04),
        ];
        let mut rng = fastrand::Rng::with_seed(19);
        for round in 0..20_000 {
            let mut b = seeds[round % seeds.len()].clone();
            match round % 4 {
                0 => b.truncate(rng.usize(..=b.len())),
                1 => {
                    for _ in 0..rng.usize(1..4) {
                        let i = rng.usize(..b.len());
                        b[i] = rng.u8(..);
                    }
                }
                2 => b = (0..rng.usize(..64)).map(|_| rng.u8(..)).collect(),
                _ => {
                    let i = rng.usize(..b.len());
                    b[i] = [0, 1, 0x7F, 0x80, 0xFF][rng.usize(..5)];
                }
            }
            crate::fuzz_targets::s7(&b);
        }
    }
}
