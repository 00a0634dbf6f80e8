//! The narrow interface the link task uses, over tokio-modbus.
//!
//! Keeps tokio-modbus's two layers apart: the outer `Result` is the transport (reconnect),
//! the inner one a Modbus exception (count it, keep the connection).

use std::future::Future;
use std::io;
use std::net::SocketAddr;

use tokio_modbus::client::{Context, Reader, Writer};
use tokio_modbus::slave::{Slave, SlaveContext};

use crate::mappings::plan::ReadRequest;
use crate::mappings::{BlockData, RegisterKind, WriteValue};

/// Outer: transport error. Inner: Modbus exception code.
pub type ModbusResult<T> = Result<Result<T, u8>, io::Error>;

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
        Err(tokio_modbus::Error::Transport(e)) => Err(e),
        Err(tokio_modbus::Error::Protocol(e)) => {
            Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string()))
        }
    }
}

/// A Modbus TCP connection.
pub struct TcpClient(Context);

impl std::fmt::Debug for TcpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TcpClient")
    }
}

impl TcpClient {
    pub async fn connect(addr: SocketAddr, unit: u8) -> io::Result<Self> {
        tokio_modbus::client::tcp::connect_slave(addr, Slave(unit))
            .await
            .map(TcpClient)
    }
}

impl ModbusClient for TcpClient {
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
