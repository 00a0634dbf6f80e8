//! One S7 connection over tokio: TCP to port 102, COTP connection request and confirm, setup
//! communication (the PDU size is negotiated here), then ReadVar and WriteVar jobs, one at a
//! time, each answered before the next is sent.
//!
//! The two result layers stay apart, as for Modbus: the outer `Result` is the connection
//! (`S7Error`: the link must be re-opened), the inner one what the PLC answered (a header
//! error refusing the request, per-item return codes inside a reply). Timeouts are the
//! caller's (the link task wraps every call). Must not: plan reads, decode values, or know
//! devices and points.

use std::time::Duration;

use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::frame::{self, Cotp, ItemSpec, Pdu, ReadItem, Reply};
use crate::vocabulary::s7::{MIN_PDU, S7Item};

/// Why a connection failed; after any of these the connection is closed.
#[derive(Debug, Error)]
pub enum S7Error {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("connection closed by the PLC")]
    Closed,
    #[error("bad frame: {0}")]
    Frame(#[from] frame::FrameError),
    #[error("{0}")]
    Protocol(String),
}

/// How to reach the CPU.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    pub host: String,
    pub port: u16,
    pub local_tsap: u16,
    pub remote_tsap: u16,
    /// The PDU size asked for; the PLC may grant less.
    pub pdu: u16,
    /// For the TCP connect and each step of the handshake.
    pub timeout: Duration,
}

/// The largest S7 PDU any CPU grants (S7-1500: 960); a reassembled PDU beyond this is garbage.
const MAX_PDU_BYTES: usize = 8192;

/// An open S7 connection.
#[derive(Debug)]
pub struct S7Client {
    stream: TcpStream,
    pdu: u16,
    next_ref: u16,
}

impl S7Client {
    /// Connect, open the ISO transport connection and negotiate the PDU size.
    pub async fn connect(o: &ConnectOptions) -> Result<Self, S7Error> {
        let step = |what: &'static str| {
            move |_| S7Error::Protocol(format!("timeout after {:?} waiting for {what}", o.timeout))
        };
        let stream = tokio::time::timeout(o.timeout, TcpStream::connect((o.host.as_str(), o.port)))
            .await
            .map_err(step("the TCP connection"))??;
        stream.set_nodelay(true)?;
        let mut c = S7Client {
            stream,
            pdu: MIN_PDU,
            next_ref: 0,
        };
        c.stream
            .write_all(&frame::connection_request(o.local_tsap, o.remote_tsap))
            .await?;
        let body = tokio::time::timeout(o.timeout, c.read_tpkt())
            .await
            .map_err(step("the connection confirm"))??;
        match frame::decode_cotp(&body)? {
            Cotp::Connect {
                code: frame::COTP_CC,
                ..
            } => {}
            other => {
                return Err(S7Error::Protocol(format!(
                    "the PLC refused the ISO connection (TSAP {:#06x} -> {:#06x}; check rack and slot): {other:?}",
                    o.local_tsap, o.remote_tsap
                )));
            }
        }
        let pdu_ref = c.next_ref();
        let reply = tokio::time::timeout(
            o.timeout,
            c.exchange(&frame::setup_request(pdu_ref, o.pdu), pdu_ref),
        )
        .await
        .map_err(step("the setup communication reply"))??;
        match reply {
            Reply::Setup { pdu } if pdu >= MIN_PDU => c.pdu = pdu.min(o.pdu),
            Reply::Setup { pdu } => {
                return Err(S7Error::Protocol(format!(
                    "the PLC granted a PDU size of {pdu} bytes, below the minimum {MIN_PDU}"
                )));
            }
            Reply::Refused { class, code } => {
                return Err(S7Error::Protocol(format!(
                    "the PLC refused setup communication: error class {class:#04x} code {code:#04x} ({})",
                    crate::vocabulary::s7::header_error_name(class, code)
                )));
            }
            other => {
                return Err(S7Error::Protocol(format!(
                    "unexpected reply to setup communication: {other:?}"
                )));
            }
        }
        Ok(c)
    }

    /// The negotiated PDU size.
    pub fn pdu(&self) -> u16 {
        self.pdu
    }

    fn next_ref(&mut self) -> u16 {
        self.next_ref = self.next_ref.wrapping_add(1).max(1);
        self.next_ref
    }

    /// Read one TPKT frame and return its payload (the COTP TPDU).
    async fn read_tpkt(&mut self) -> Result<Vec<u8>, S7Error> {
        let mut header = [0u8; frame::TPKT_HEADER];
        match self.stream.read_exact(&mut header).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(S7Error::Closed),
            Err(e) => return Err(e.into()),
        }
        let len = frame::tpkt_length(&header)?;
        let mut body = vec![0u8; len - frame::TPKT_HEADER];
        match self.stream.read_exact(&mut body).await {
            Ok(_) => Ok(body),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(S7Error::Closed),
            Err(e) => Err(e.into()),
        }
    }

    /// Send one S7 PDU and read the reply with the same PDU reference (data TPDUs are joined
    /// until the last one; a reply to an earlier, abandoned job is skipped).
    async fn exchange(&mut self, pdu: &[u8], pdu_ref: u16) -> Result<Reply, S7Error> {
        self.stream.write_all(&frame::data(pdu)).await?;
        loop {
            let mut whole = Vec::new();
            loop {
                let body = self.read_tpkt().await?;
                match frame::decode_cotp(&body)? {
                    Cotp::Data { eot, payload } => {
                        whole.extend_from_slice(payload);
                        if whole.len() > MAX_PDU_BYTES {
                            return Err(S7Error::Protocol(format!(
                                "a reply longer than {MAX_PDU_BYTES} bytes"
                            )));
                        }
                        if eot {
                            break;
                        }
                    }
                    Cotp::Other(code) => {
                        return Err(S7Error::Protocol(format!(
                            "the PLC sent COTP TPDU {code:#04x} (disconnect or error)"
                        )));
                    }
                    Cotp::Connect { .. } => {
                        return Err(S7Error::Protocol("an unexpected COTP connect".into()));
                    }
                }
            }
            match frame::decode_pdu(&whole)? {
                Pdu::Ack { pdu_ref: r, reply } if r == pdu_ref => return Ok(reply),
                Pdu::Ack { pdu_ref: r, .. } => {
                    tracing::debug!(expected = pdu_ref, got = r, "skipped a stale S7 reply");
                }
                other => {
                    return Err(S7Error::Protocol(format!(
                        "expected an S7 ack, got {other:?}"
                    )));
                }
            }
        }
    }

    /// ReadVar of `items` (as bytes): `Ok(Err((class, code)))` when the PLC refused the whole
    /// request, else one result per item, in order.
    pub async fn read(
        &mut self,
        items: &[S7Item],
    ) -> Result<Result<Vec<ReadItem>, (u8, u8)>, S7Error> {
        let pdu_ref = self.next_ref();
        match self
            .exchange(&frame::read_request(pdu_ref, items), pdu_ref)
            .await?
        {
            Reply::Read(got) if got.len() == items.len() => Ok(Ok(got)),
            Reply::Read(got) => Err(S7Error::Protocol(format!(
                "asked for {} items, the reply has {}",
                items.len(),
                got.len()
            ))),
            Reply::Refused { class, code } => Ok(Err((class, code))),
            other => Err(S7Error::Protocol(format!(
                "unexpected reply to ReadVar: {other:?}"
            ))),
        }
    }

    /// WriteVar of one item: `Ok(Ok(code))` with the item's return code (0xFF: written),
    /// `Ok(Err((class, code)))` when the PLC refused the request.
    pub async fn write(
        &mut self,
        spec: ItemSpec,
        data: &[u8],
    ) -> Result<Result<u8, (u8, u8)>, S7Error> {
        let pdu_ref = self.next_ref();
        match self
            .exchange(&frame::write_request(pdu_ref, spec, data), pdu_ref)
            .await?
        {
            Reply::Write(codes) if codes.len() == 1 => Ok(Ok(codes[0])),
            Reply::Refused { class, code } => Ok(Err((class, code))),
            other => Err(S7Error::Protocol(format!(
                "unexpected reply to WriteVar: {other:?}"
            ))),
        }
    }
}
