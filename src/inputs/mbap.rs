//! Modbus TCP client framing (MBAP header + PDU), our own so that we decide how a reply is
//! matched to its request.
//!
//! Modbus Messaging on TCP/IP Implementation Guide V1.0b, 3.1.3: the transaction identifier
//! "is used for transaction pairing"; the server copies it from the request. Real devices bend
//! this, so matching is:
//! - a reply with our transaction id is the answer (its function code must match ours, or be
//!   ours with the exception bit set, else it is a protocol error);
//! - a reply with another id that is not 0 and not our id byte-swapped is a stale frame (a late
//!   answer to an earlier request, or a device that sends its previous reply first): it is
//!   discarded and we keep reading, within the caller's timeout;
//! - a reply with id 0 or our id byte-swapped is accepted under [`TidPolicy::Lenient`]; under
//!   [`TidPolicy::Strict`] it is a protocol error that says which option to set.
//!
//! A connection closed by the device reads as [`LinkError::Closed`], never as an OS error with
//! code 0. Does no retrying and no timing: the link task does both.

use tokio::io::{AsyncBufRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::error::{LinkError, ModbusResult, transport_error as transport};
pub use crate::model::TidPolicy;
use crate::vocabulary::BlockData;
use crate::vocabulary::ReadRequest;
#[cfg(test)]
use crate::vocabulary::RegisterKind;

/// One Modbus TCP connection to one device or gateway.
#[derive(Debug)]
pub struct MbapClient {
    /// Buffered: a reply's header and body usually arrive in one segment and are read with one
    /// system call.
    stream: BufReader<TcpStream>,
    unit: u8,
    next_tid: u16,
    policy: TidPolicy,
    /// Stale frames discarded since the connection opened (for the log).
    pub stale_discarded: u64,
}

/// The function code and body of a reply PDU, or the exception code.
type Pdu = Result<Vec<u8>, u8>;

impl MbapClient {
    /// Wrap a connected socket (TCP_NODELAY is set: a request is one small segment).
    pub fn new(stream: TcpStream, unit: u8, policy: TidPolicy) -> Self {
        let _ = stream.set_nodelay(true);
        MbapClient {
            stream: BufReader::with_capacity(512, stream),
            unit,
            next_tid: 1,
            policy,
            stale_discarded: 0,
        }
    }

    pub fn set_unit(&mut self, unit: u8) {
        self.unit = unit;
    }

    /// Close the socket.
    pub async fn close(&mut self) {
        let _ = self.stream.shutdown().await;
    }

    fn tid(&mut self) -> u16 {
        let t = self.next_tid;
        // Never 0: a reply carrying 0 then always means the device does not echo ids.
        self.next_tid = if t == u16::MAX { 1 } else { t + 1 };
        t
    }

    /// Send `pdu` and return the matching reply's PDU after the function code.
    async fn call(&mut self, pdu: &[u8]) -> ModbusResult<Vec<u8>> {
        let tid = self.tid();
        let fc = pdu[0];
        let mut frame = Vec::with_capacity(7 + pdu.len());
        frame.extend_from_slice(&tid.to_be_bytes());
        frame.extend_from_slice(&[0, 0]);
        frame.extend_from_slice(&(pdu.len() as u16 + 1).to_be_bytes());
        frame.push(self.unit);
        frame.extend_from_slice(pdu);
        if self.policy == TidPolicy::Lenient {
            self.discard_input()?;
        }
        self.stream.write_all(&frame).await.map_err(transport)?;
        loop {
            let (rtid, unit, body) = self.read_frame().await?;
            let swapped = tid.swap_bytes();
            let exact = rtid == tid;
            let ours =
                exact || (self.policy == TidPolicy::Lenient && (rtid == 0 || rtid == swapped));
            // Without a transaction id of its own, a reply can only be told from a stale one by
            // being alone: more input right behind it means we cannot know which is ours.
            if ours && !exact && !self.stream.buffer().is_empty() {
                let _ = self.discard_input();
                return Err(LinkError::Protocol(
                    "more than one reply arrived and the device does not echo transaction ids,                      so which one answers this request cannot be told; both discarded"
                        .into(),
                ));
            }
            if !ours {
                if rtid == 0 || rtid == swapped {
                    return Err(LinkError::Protocol(format!(
                        "the reply carries transaction id {rtid:#06x} instead of {tid:#06x}: \
                         the device does not echo transaction ids; set `transaction_id: lenient` \
                         on its tcp link"
                    )));
                }
                self.stale_discarded += 1;
                tracing::debug!(expected = tid, got = rtid, "discarded a stale reply");
                continue;
            }
            if unit != self.unit && self.unit != 0 {
                return Err(LinkError::Protocol(format!(
                    "reply from unit {unit}, asked unit {}",
                    self.unit
                )));
            }
            return match parse_pdu(fc, &body)? {
                Ok(data) => Ok(Ok(data)),
                Err(code) => Ok(Err(code)),
            };
        }
    }

    /// Drop whatever input is waiting (buffered, or already in the socket): before a request
    /// under lenient ids, anything there is a stale reply that could be taken for the answer.
    fn discard_input(&mut self) -> Result<(), LinkError> {
        let n = self.stream.buffer().len();
        std::pin::Pin::new(&mut self.stream).consume(n);
        let mut sink = [0u8; 512];
        loop {
            match self.stream.get_ref().try_read(&mut sink) {
                Ok(0) => return Err(LinkError::Closed),
                Ok(_) => self.stale_discarded += 1,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(transport(e)),
            }
        }
    }

    /// One MBAP frame: (transaction id, unit id, PDU).
    async fn read_frame(&mut self) -> Result<(u16, u8, Vec<u8>), LinkError> {
        let mut head = [0u8; 7];
        self.stream.read_exact(&mut head).await.map_err(transport)?;
        let tid = u16::from_be_bytes([head[0], head[1]]);
        let proto = u16::from_be_bytes([head[2], head[3]]);
        let len = u16::from_be_bytes([head[4], head[5]]);
        if proto != 0 {
            return Err(LinkError::Protocol(format!(
                "protocol id {proto} in the reply header (Modbus is 0)"
            )));
        }
        // The length counts the unit id and the PDU; a PDU is at most 253 bytes.
        if !(2..=254).contains(&len) {
            return Err(LinkError::Protocol(format!(
                "length {len} in the reply header"
            )));
        }
        let mut body = vec![0u8; usize::from(len) - 1];
        self.stream.read_exact(&mut body).await.map_err(transport)?;
        Ok((tid, head[6], body))
    }

    /// Read `req` (FC 1-4).
    pub async fn read(&mut self, req: ReadRequest) -> ModbusResult<BlockData> {
        let fc = req.kind.read_function();
        let mut pdu = vec![fc];
        pdu.extend_from_slice(&req.start.to_be_bytes());
        pdu.extend_from_slice(&req.count.to_be_bytes());
        let body = match self.call(&pdu).await? {
            Ok(b) => b,
            Err(code) => return Ok(Err(code)),
        };
        let count = usize::from(req.count);
        let want = if req.kind.is_bit() {
            count.div_ceil(8)
        } else {
            count * 2
        };
        if body.first().map(|&n| usize::from(n)) != Some(want) || body.len() != want + 1 {
            return Err(LinkError::Protocol(format!(
                "reply holds {} data bytes, {want} expected",
                body.len().saturating_sub(1)
            )));
        }
        let data = &body[1..];
        Ok(Ok(if req.kind.is_bit() {
            BlockData::Bits(
                (0..count)
                    .map(|i| data[i / 8] >> (i % 8) & 1 == 1)
                    .collect(),
            )
        } else {
            BlockData::Words(
                data.chunks_exact(2)
                    .map(|w| u16::from_be_bytes([w[0], w[1]]))
                    .collect(),
            )
        }))
    }

    /// FC 5 (`multiple = false`) or FC 15 with one coil.
    pub async fn write_coil(&mut self, address: u16, on: bool, multiple: bool) -> ModbusResult<()> {
        let mut pdu = Vec::with_capacity(7);
        if multiple {
            pdu.push(15);
            pdu.extend_from_slice(&address.to_be_bytes());
            pdu.extend_from_slice(&[0, 1, 1, u8::from(on)]);
        } else {
            pdu.push(5);
            pdu.extend_from_slice(&address.to_be_bytes());
            pdu.extend_from_slice(&[if on { 0xFF } else { 0 }, 0]);
        }
        self.write_call(pdu).await
    }

    /// FC 6 (one register, `multiple = false`) or FC 16.
    pub async fn write_registers(
        &mut self,
        address: u16,
        words: &[u16],
        multiple: bool,
    ) -> ModbusResult<()> {
        let mut pdu = Vec::with_capacity(6 + words.len() * 2);
        if words.len() == 1 && !multiple {
            pdu.push(6);
            pdu.extend_from_slice(&address.to_be_bytes());
            pdu.extend_from_slice(&words[0].to_be_bytes());
        } else {
            pdu.push(16);
            pdu.extend_from_slice(&address.to_be_bytes());
            pdu.extend_from_slice(&(words.len() as u16).to_be_bytes());
            pdu.push((words.len() * 2) as u8);
            for w in words {
                pdu.extend_from_slice(&w.to_be_bytes());
            }
        }
        self.write_call(pdu).await
    }

    /// A write's reply echoes the address and the value (FC 5, 6) or the quantity (FC 15, 16).
    async fn write_call(&mut self, pdu: Vec<u8>) -> ModbusResult<()> {
        match self.call(&pdu).await? {
            Ok(body) if body.len() == 4 && body[..2] == pdu[1..3] => Ok(Ok(())),
            Ok(body) => Err(LinkError::Protocol(format!(
                "write reply {body:02x?} does not echo the request"
            ))),
            Err(code) => Ok(Err(code)),
        }
    }
}

/// Split a reply PDU into data (after the function code) or an exception code.
fn parse_pdu(fc: u8, pdu: &[u8]) -> Result<Pdu, LinkError> {
    match pdu.first() {
        Some(&f) if f == fc => Ok(Ok(pdu[1..].to_vec())),
        Some(&f) if f == fc | 0x80 => match pdu.get(1) {
            Some(&code) => Ok(Err(code)),
            None => Err(LinkError::Protocol("exception reply without a code".into())),
        },
        Some(&f) => Err(LinkError::Protocol(format!(
            "reply for function {f}, asked function {fc}"
        ))),
        None => Err(LinkError::Protocol("empty reply".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A one-shot server: reads one request, answers with `answer(request)` bytes.
    async fn serve(answer: impl Fn(&[u8]) -> Vec<u8> + Send + 'static) -> TcpStream {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = [0u8; 260];
            loop {
                let n = match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                let out = answer(&buf[..n]);
                if s.write_all(&out).await.is_err() {
                    return;
                }
            }
        });
        TcpStream::connect(addr).await.unwrap()
    }

    fn reply(tid: u16, unit: u8, pdu: &[u8]) -> Vec<u8> {
        let mut f = tid.to_be_bytes().to_vec();
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(&(pdu.len() as u16 + 1).to_be_bytes());
        f.push(unit);
        f.extend_from_slice(pdu);
        f
    }

    fn req_tid(r: &[u8]) -> u16 {
        u16::from_be_bytes([r[0], r[1]])
    }

    const HR: ReadRequest = ReadRequest {
        kind: RegisterKind::HoldingRegister,
        start: 0,
        count: 2,
    };

    #[tokio::test]
    async fn reads_registers_and_bits() {
        let s = serve(|r| reply(req_tid(r), r[6], &[3, 4, 0x12, 0x34, 0xAB, 0xCD])).await;
        let mut c = MbapClient::new(s, 1, TidPolicy::Strict);
        let got = c.read(HR).await.unwrap().unwrap();
        assert_eq!(got, BlockData::Words(vec![0x1234, 0xABCD]));
        let s = serve(|r| reply(req_tid(r), r[6], &[1, 2, 0b0000_0101, 0b1])).await;
        let mut c = MbapClient::new(s, 1, TidPolicy::Strict);
        let coils = ReadRequest {
            kind: RegisterKind::Coil,
            start: 0,
            count: 9,
        };
        let got = c.read(coils).await.unwrap().unwrap();
        assert_eq!(
            got,
            BlockData::Bits(vec![
                true, false, true, false, false, false, false, false, true
            ])
        );
    }

    #[tokio::test]
    async fn exception_is_the_inner_error() {
        let s = serve(|r| reply(req_tid(r), r[6], &[0x83, 2])).await;
        let mut c = MbapClient::new(s, 1, TidPolicy::Strict);
        assert_eq!(c.read(HR).await.unwrap(), Err(2));
    }

    #[tokio::test]
    async fn stale_frames_are_skipped() {
        // The previous reply (an older id) arrives right before the real one.
        let s = serve(|r| {
            let t = req_tid(r);
            let mut out = reply(t.wrapping_sub(7), r[6], &[3, 4, 0, 9, 0, 9]);
            out.extend(reply(t, r[6], &[3, 4, 0, 1, 0, 2]));
            out
        })
        .await;
        let mut c = MbapClient::new(s, 1, TidPolicy::Strict);
        for _ in 0..3 {
            assert_eq!(
                c.read(HR).await.unwrap().unwrap(),
                BlockData::Words(vec![1, 2])
            );
        }
        assert_eq!(c.stale_discarded, 3);
    }

    #[tokio::test]
    async fn tid_zero_and_swapped_need_lenient() {
        for swap in [false, true] {
            let mk = move |r: &[u8]| {
                let t = if swap { req_tid(r).swap_bytes() } else { 0 };
                reply(t, r[6], &[3, 4, 0, 1, 0, 2])
            };
            let mut strict = MbapClient::new(serve(mk).await, 1, TidPolicy::Strict);
            // Ids 0x0101-style are their own swap; start above them.
            strict.next_tid = 0x0102;
            let e = strict.read(HR).await.unwrap_err();
            assert!(e.to_string().contains("transaction_id: lenient"), "{e}");
            let mut lenient = MbapClient::new(serve(mk).await, 1, TidPolicy::Lenient);
            lenient.next_tid = 0x0102;
            for _ in 0..3 {
                assert_eq!(
                    lenient.read(HR).await.unwrap().unwrap(),
                    BlockData::Words(vec![1, 2])
                );
            }
        }
    }

    #[tokio::test]
    async fn lenient_ids_never_take_one_of_two_replies_for_the_answer() {
        // Every reply carries id 0, and the previous reply arrives right in front of each.
        let s = serve(|r| {
            let mut out = reply(0, r[6], &[3, 4, 0, 9, 0, 9]);
            out.extend(reply(0, r[6], &[3, 4, 0, 1, 0, 2]));
            out
        })
        .await;
        let mut c = MbapClient::new(s, 1, TidPolicy::Lenient);
        for _ in 0..3 {
            let e = c.read(HR).await.unwrap_err();
            assert!(e.to_string().contains("more than one reply"), "{e}");
        }
        // A late reply left in the socket before a request is dropped, not read as its answer.
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            // A reply to nothing yet (id 0, value 99), then, once asked, the real one.
            s.write_all(&reply(0, 1, &[3, 4, 0, 99, 0, 99]))
                .await
                .unwrap();
            let _ = tx.send(());
            let mut buf = [0u8; 64];
            let _ = s.read(&mut buf).await;
            s.write_all(&reply(0, 1, &[3, 4, 0, 1, 0, 2]))
                .await
                .unwrap();
            let _ = s.read(&mut buf).await;
        });
        let mut c = MbapClient::new(
            TcpStream::connect(addr).await.unwrap(),
            1,
            TidPolicy::Lenient,
        );
        rx.await.unwrap();
        // Let the early bytes reach our socket.
        for _ in 0..100 {
            if c.stream.get_ref().peek(&mut [0u8; 1]).await.is_ok() {
                break;
            }
        }
        assert_eq!(
            c.read(HR).await.unwrap().unwrap(),
            BlockData::Words(vec![1, 2])
        );
    }

    #[tokio::test]
    async fn closed_connection_reads_as_closed() {
        let s = serve(|_| Vec::new()).await;
        let mut c = MbapClient::new(s, 1, TidPolicy::Strict);
        // The server answers nothing and, once our socket is shut, neither side has data.
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            drop(s);
        });
        let mut closing = MbapClient::new(
            TcpStream::connect(addr).await.unwrap(),
            1,
            TidPolicy::Strict,
        );
        let e = closing.read(HR).await.unwrap_err();
        assert!(matches!(e, LinkError::Closed), "{e}");
        assert_eq!(e.to_string(), "connection closed by the device");
        c.close().await;
    }

    #[tokio::test]
    async fn writes_use_the_asked_function() {
        let s = serve(|r| {
            let pdu = &r[7..];
            match pdu[0] {
                5 | 6 => reply(req_tid(r), r[6], pdu),
                15 | 16 => reply(req_tid(r), r[6], &pdu[..5]),
                f => reply(req_tid(r), r[6], &[f | 0x80, 1]),
            }
        })
        .await;
        let mut c = MbapClient::new(s, 1, TidPolicy::Strict);
        assert_eq!(c.write_coil(3, true, false).await.unwrap(), Ok(()));
        assert_eq!(c.write_coil(3, true, true).await.unwrap(), Ok(()));
        assert_eq!(c.write_registers(3, &[7], false).await.unwrap(), Ok(()));
        assert_eq!(c.write_registers(3, &[7], true).await.unwrap(), Ok(()));
        assert_eq!(c.write_registers(3, &[7, 8], false).await.unwrap(), Ok(()));
    }
}
