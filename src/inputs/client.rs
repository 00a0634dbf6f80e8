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

use crate::mappings::plan::ReadRequest;
use crate::mappings::{BlockData, RegisterKind, WriteValue};
use crate::model::{LinkSpec, Parity};

/// What can go wrong with one request, below the Modbus exception.
#[derive(Debug)]
pub enum LinkError {
    /// The connection or port failed.
    Transport(io::Error),
    /// A reply that is not the answer to this request (unit id, function code, framing).
    Protocol(String),
}

impl std::fmt::Display for LinkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkError::Transport(e) => write!(f, "transport: {e}"),
            LinkError::Protocol(e) => write!(f, "protocol: {e}"),
        }
    }
}

/// Outer: link error. Inner: Modbus exception code.
pub type ModbusResult<T> = Result<Result<T, u8>, LinkError>;

pub trait ModbusClient: Send {
    fn set_unit(&mut self, unit: u8);
    fn read(&mut self, req: ReadRequest) -> impl Future<Output = ModbusResult<BlockData>> + Send;
    fn write(
        &mut self,
        kind: RegisterKind,
        address: u16,
        value: &WriteValue,
    ) -> impl Future<Output = ModbusResult<()>> + Send;
}

fn split<T>(r: tokio_modbus::Result<T>) -> ModbusResult<T> {
    match r {
        Ok(Ok(v)) => Ok(Ok(v)),
        Ok(Err(code)) => Ok(Err(u8::from(code))),
        Err(tokio_modbus::Error::Transport(e)) if e.kind() == io::ErrorKind::InvalidData => {
            Err(LinkError::Protocol(e.to_string()))
        }
        Err(tokio_modbus::Error::Transport(e)) => Err(LinkError::Transport(e)),
        Err(tokio_modbus::Error::Protocol(e)) => Err(LinkError::Protocol(e.to_string())),
    }
}

/// A serial port that discards its unread input each time a request is written: whatever
/// arrived during the silence before a request (a late reply, noise) can never be read as the
/// answer to it.
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

/// A Modbus client on any of our link kinds.
pub struct Client(Context);

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Client")
    }
}

/// Open a fresh connection for `spec`, addressed to `unit`. Serial ports are opened with their
/// input buffer flushed, so nothing a slave sent before can be read as an answer.
pub async fn open(spec: &LinkSpec, unit: u8, connect_timeout: Duration) -> Result<Client, String> {
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
            tokio::time::timeout(
                connect_timeout,
                tokio_modbus::client::tcp::connect_slave(addr, Slave(unit)),
            )
            .await
            .map_err(timed(format!("connect {addr}")))?
            .map(Client)
            .map_err(|e| format!("connect {addr}: {e}"))
        }
        LinkSpec::RtuOverTcp { host, port } => {
            let addr = resolve(host.clone(), *port).await?;
            let stream =
                tokio::time::timeout(connect_timeout, tokio::net::TcpStream::connect(addr))
                    .await
                    .map_err(timed(format!("connect {addr}")))?
                    .map_err(|e| format!("connect {addr}: {e}"))?;
            let _ = stream.set_nodelay(true);
            Ok(Client(tokio_modbus::client::rtu::attach_slave(
                stream,
                Slave(unit),
            )))
        }
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
            Ok(Client(tokio_modbus::client::rtu::attach_slave(
                FlushBeforeWrite(port),
                Slave(unit),
            )))
        }
    }
}

impl Client {
    /// Close the connection (socket or port) now, before a new one is opened.
    pub async fn close(&mut self) {
        let _ = self.0.disconnect().await;
    }
}

impl ModbusClient for Client {
    fn set_unit(&mut self, unit: u8) {
        self.0.set_slave(Slave(unit));
    }

    async fn read(&mut self, req: ReadRequest) -> ModbusResult<BlockData> {
        let c = &mut self.0;
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
    ) -> ModbusResult<()> {
        let c = &mut self.0;
        match (kind, value) {
            (RegisterKind::Coil, WriteValue::Coil(v)) => {
                split(c.write_single_coil(address, *v).await)
            }
            (RegisterKind::HoldingRegister, WriteValue::Registers(w)) if w.len() == 1 => {
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
