//! The narrow interface the link task uses, over tokio-modbus.
//!
//! Keeps tokio-modbus's layers apart: a transport error (reopen or reconnect), a protocol
//! error (a reply whose unit id, function code or CRC does not match: flush and retry), and a
//! Modbus exception (count it, keep the connection). `open` makes a fresh connection: a new
//! TCP socket, or the serial port re-opened with its input buffer flushed.

use std::future::Future;
use std::io;
use std::time::Duration;

use tokio_modbus::client::{Client as _, Context, Reader, Writer};
use tokio_modbus::slave::{Slave, SlaveContext};
use tokio_serial::SerialPort;

use super::mbap::MbapClient;
use crate::model::{LinkSpec, Parity, TidPolicy};
use crate::vocabulary::ReadRequest;
use crate::vocabulary::{BlockData, RegisterKind, WriteValue};

pub use super::error::{LinkError, ModbusResult, transport_error};

pub trait ModbusClient: Send {
    fn set_unit(&mut self, unit: u8);
    fn read(&mut self, req: ReadRequest) -> impl Future<Output = ModbusResult<BlockData>> + Send;
    /// Write `value`. One coil or one register goes with FC 5 / FC 6, or with FC 15 / FC 16
    /// when `multiple` (devices that implement only the "multiple" functions); more than one
    /// register always with FC 16.
    fn write(
        &mut self,
        kind: RegisterKind,
        address: u16,
        value: &WriteValue,
        multiple: bool,
    ) -> impl Future<Output = ModbusResult<()>> + Send;
}

fn split<T>(r: tokio_modbus::Result<T>) -> ModbusResult<T> {
    match r {
        Ok(Ok(v)) => Ok(Ok(v)),
        Ok(Err(code)) => Ok(Err(u8::from(code))),
        Err(tokio_modbus::Error::Transport(e)) if e.kind() == io::ErrorKind::InvalidData => {
            Err(LinkError::Protocol(e.to_string()))
        }
        Err(tokio_modbus::Error::Transport(e)) => Err(transport_error(e)),
        Err(tokio_modbus::Error::Protocol(e)) => Err(LinkError::Protocol(e.to_string())),
    }
}

/// A serial port that discards its unread input each time a request is written: whatever
/// arrived during the silence before a request (a late reply, noise) can never be read as the
/// answer to it.
#[derive(Debug)]
struct FlushBeforeWrite(tokio_serial::SerialStream);

impl tokio::io::AsyncRead for FlushBeforeWrite {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for FlushBeforeWrite {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        if let Err(e) = self.0.clear(tokio_serial::ClearBuffer::Input) {
            return std::task::Poll::Ready(Err(io::Error::other(e)));
        }
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// An RTU stream on an RS-485 adapter that echoes what it sends (no echo suppression): the
/// bytes of each request, when they come back first, are removed before the reply is parsed.
/// Input that does not start with the echo is passed on untouched (the expectation is dropped),
/// so a bus whose adapter stops echoing still works. Off, it passes everything through.
#[derive(Debug)]
struct EchoStrip<S> {
    inner: S,
    enabled: bool,
    /// Bytes written and not yet seen coming back.
    pending: Vec<u8>,
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for EchoStrip<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        use std::task::Poll;
        let this = &mut *self;
        if !this.enabled {
            return std::pin::Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        loop {
            let mut tmp = [0u8; 256];
            let room = buf.remaining().min(tmp.len());
            let mut rb = tokio::io::ReadBuf::new(&mut tmp[..room]);
            match std::pin::Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) => {}
                other => return other,
            }
            let got = rb.filled();
            if got.is_empty() {
                return Poll::Ready(Ok(()));
            }
            let same = got
                .iter()
                .zip(&this.pending)
                .take_while(|(a, b)| a == b)
                .count();
            let rest = if same == got.len().min(this.pending.len()) {
                this.pending.drain(..same);
                &got[same..]
            } else {
                // Not the echo: the adapter does not echo (any more); pass it all on.
                this.pending.clear();
                got
            };
            if !rest.is_empty() {
                buf.put_slice(rest);
                return Poll::Ready(Ok(()));
            }
        }
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for EchoStrip<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        let this = &mut *self;
        let r = std::pin::Pin::new(&mut this.inner).poll_write(cx, buf);
        if this.enabled
            && let std::task::Poll::Ready(Ok(n)) = &r
        {
            this.pending.extend_from_slice(&buf[..*n]);
        }
        r
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A Modbus client on any of our link kinds: our own MBAP framing for Modbus TCP (see
/// [`super::mbap`]), tokio-modbus's RTU framing on a serial port or a TCP socket.
pub enum Client {
    Tcp(MbapClient),
    Rtu(Context),
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Client::Tcp(_) => "Client::Tcp",
            Client::Rtu(_) => "Client::Rtu",
        })
    }
}

/// How a link's connection is opened: where, and how its replies are framed.
#[derive(Debug, Clone, Copy)]
pub struct OpenOptions {
    pub connect_timeout: Duration,
    /// Modbus TCP: how strictly transaction ids must match.
    pub tid: TidPolicy,
    /// RTU: the adapter echoes every request.
    pub echo: bool,
}

impl OpenOptions {
    /// Strict transaction ids and no echo, as for commissioning tools.
    pub const fn plain(connect_timeout: Duration) -> Self {
        OpenOptions {
            connect_timeout,
            tid: TidPolicy::Strict,
            echo: false,
        }
    }
}

/// Open a fresh connection for `spec`, addressed to `unit`. Serial ports are opened with their
/// input buffer flushed, so nothing a slave sent before can be read as an answer.
pub async fn open(spec: &LinkSpec, unit: u8, o: OpenOptions) -> Result<Client, String> {
    let resolve = |host: String, port: u16| async move {
        tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|e| format!("resolve {host}: {e}"))?
            .next()
            .ok_or_else(|| format!("resolve {host}: no address"))
    };
    let timed = |what: String| move |_| format!("{what}: timeout");
    match spec {
        LinkSpec::Tcp { host, port } => {
            let addr = resolve(host.clone(), *port).await?;
            let stream =
                tokio::time::timeout(o.connect_timeout, tokio::net::TcpStream::connect(addr))
                    .await
                    .map_err(timed(format!("connect {addr}")))?
                    .map_err(|e| format!("connect {addr}: {e}"))?;
            Ok(Client::Tcp(MbapClient::new(stream, unit, o.tid)))
        }
        LinkSpec::RtuOverTcp { host, port } => {
            let addr = resolve(host.clone(), *port).await?;
            let stream =
                tokio::time::timeout(o.connect_timeout, tokio::net::TcpStream::connect(addr))
                    .await
                    .map_err(timed(format!("connect {addr}")))?
                    .map_err(|e| format!("connect {addr}: {e}"))?;
            let _ = stream.set_nodelay(true);
            let stream = EchoStrip {
                inner: stream,
                enabled: o.echo,
                pending: Vec::new(),
            };
            Ok(Client::Rtu(tokio_modbus::client::rtu::attach_slave(
                stream,
                Slave(unit),
            )))
        }
        LinkSpec::S7(_) => Err("an S7 link is not a Modbus link".into()),
        LinkSpec::Rtu(s) => {
            let builder = tokio_serial::new(&s.path, s.baud)
                .data_bits(if s.data_bits == 7 {
                    tokio_serial::DataBits::Seven
                } else {
                    tokio_serial::DataBits::Eight
                })
                .parity(match s.parity {
                    Parity::None => tokio_serial::Parity::None,
                    Parity::Even => tokio_serial::Parity::Even,
                    Parity::Odd => tokio_serial::Parity::Odd,
                })
                .stop_bits(if s.stop_bits == 2 {
                    tokio_serial::StopBits::Two
                } else {
                    tokio_serial::StopBits::One
                })
                .flow_control(tokio_serial::FlowControl::None);
            let port = tokio_serial::SerialStream::open(&builder)
                .map_err(|e| format!("open {}: {e}", s.path))?;
            port.clear(tokio_serial::ClearBuffer::Input)
                .map_err(|e| format!("flush {}: {e}", s.path))?;
            let stream = EchoStrip {
                inner: FlushBeforeWrite(port),
                enabled: o.echo,
                pending: Vec::new(),
            };
            Ok(Client::Rtu(tokio_modbus::client::rtu::attach_slave(
                stream,
                Slave(unit),
            )))
        }
    }
}

impl Client {
    /// Close the connection (socket or port) now, before a new one is opened.
    pub async fn close(&mut self) {
        match self {
            Client::Tcp(c) => c.close().await,
            Client::Rtu(c) => {
                let _ = c.disconnect().await;
            }
        }
    }
}

impl ModbusClient for Client {
    fn set_unit(&mut self, unit: u8) {
        match self {
            Client::Tcp(c) => c.set_unit(unit),
            Client::Rtu(c) => c.set_slave(Slave(unit)),
        }
    }

    async fn read(&mut self, req: ReadRequest) -> ModbusResult<BlockData> {
        let c = match self {
            Client::Tcp(c) => return c.read(req).await,
            Client::Rtu(c) => c,
        };
        match req.kind {
            RegisterKind::Coil => {
                split(c.read_coils(req.start, req.count).await).map(|r| r.map(BlockData::Bits))
            }
            RegisterKind::DiscreteInput => {
                split(c.read_discrete_inputs(req.start, req.count).await)
                    .map(|r| r.map(BlockData::Bits))
            }
            RegisterKind::InputRegister => {
                split(c.read_input_registers(req.start, req.count).await)
                    .map(|r| r.map(BlockData::Words))
            }
            RegisterKind::HoldingRegister => {
                split(c.read_holding_registers(req.start, req.count).await)
                    .map(|r| r.map(BlockData::Words))
            }
        }
    }

    async fn write(
        &mut self,
        kind: RegisterKind,
        address: u16,
        value: &WriteValue,
        multiple: bool,
    ) -> ModbusResult<()> {
        let c = match self {
            Client::Tcp(c) => {
                return match (kind, value) {
                    (RegisterKind::Coil, WriteValue::Coil(v)) => {
                        c.write_coil(address, *v, multiple).await
                    }
                    (RegisterKind::HoldingRegister, WriteValue::Registers(w)) if !w.is_empty() => {
                        c.write_registers(address, w, multiple).await
                    }
                    _ => Ok(Err(1)),
                };
            }
            Client::Rtu(c) => c,
        };
        match (kind, value) {
            (RegisterKind::Coil, WriteValue::Coil(v)) if multiple => {
                split(c.write_multiple_coils(address, &[*v]).await)
            }
            (RegisterKind::Coil, WriteValue::Coil(v)) => {
                split(c.write_single_coil(address, *v).await)
            }
            (RegisterKind::HoldingRegister, WriteValue::Registers(w))
                if w.len() == 1 && !multiple =>
            {
                split(c.write_single_register(address, w[0]).await)
            }
            (RegisterKind::HoldingRegister, WriteValue::Registers(w)) => {
                split(c.write_multiple_registers(address, w).await)
            }
            // The compiler only lets coils and holding registers be writable.
            _ => Ok(Err(1)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn echo_is_stripped_and_a_missing_echo_passes_through() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut s = EchoStrip {
            inner: a,
            enabled: true,
            pending: Vec::new(),
        };
        s.write_all(&[1, 3, 0, 0, 0, 1, 0x84, 0x0A]).await.unwrap();
        let mut req = [0u8; 8];
        b.read_exact(&mut req).await.unwrap();
        // The adapter echoes the request in two pieces, then the reply follows.
        b.write_all(&req[..3]).await.unwrap();
        b.write_all(&req[3..]).await.unwrap();
        b.write_all(&[1, 3, 2, 0, 42]).await.unwrap();
        let mut reply = [0u8; 5];
        s.read_exact(&mut reply).await.unwrap();
        assert_eq!(reply, [1, 3, 2, 0, 42]);
        // No echo this time: the reply passes untouched.
        s.write_all(&[1, 3, 0, 0, 0, 1, 0x84, 0x0A]).await.unwrap();
        b.read_exact(&mut req).await.unwrap();
        b.write_all(&[1, 3, 2, 0, 43]).await.unwrap();
        s.read_exact(&mut reply).await.unwrap();
        assert_eq!(reply, [1, 3, 2, 0, 43]);
    }

    #[test]
    fn a_closed_connection_has_a_readable_reason() {
        let e = transport_error(io::Error::from_raw_os_error(0));
        assert_eq!(e.to_string(), "connection closed by the device");
        let e = transport_error(io::ErrorKind::UnexpectedEof.into());
        assert!(matches!(e, LinkError::Closed));
        let e = transport_error(io::ErrorKind::PermissionDenied.into());
        assert!(matches!(e, LinkError::Transport(_)));
    }
}
