//! A bank of holding registers served by tokio-modbus's own Modbus TCP server on an ephemeral
//! port: a real Modbus peer whose registers the test sets (values no simulated plant holds,
//! such as NaN), or that change on every read (so every value of every poll is new).

use std::future::{Ready, ready};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio_modbus::{ExceptionCode, Request, Response};

/// The registers, and how the bank behaves.
#[derive(Clone, Default)]
pub struct Bank {
    pub registers: Arc<Mutex<Vec<u16>>>,
    /// Each read adds 1 to every register it covers, before answering.
    pub bump: bool,
    /// While set, every read answers SERVER DEVICE FAILURE (the device stops delivering).
    pub failing: Arc<AtomicBool>,
    /// Read requests served.
    pub reads: Arc<AtomicU64>,
}

impl tokio_modbus::server::Service for Bank {
    type Request = Request<'static>;
    type Response = Response;
    type Exception = ExceptionCode;
    type Future = Ready<Result<Response, ExceptionCode>>;

    fn call(&self, req: Request<'static>) -> Self::Future {
        if self.failing.load(Ordering::SeqCst) {
            return ready(Err(ExceptionCode::ServerDeviceFailure));
        }
        let mut regs = self.registers.lock().unwrap();
        ready(match req {
            Request::ReadHoldingRegisters(a, n) => {
                self.reads.fetch_add(1, Ordering::SeqCst);
                let (a, n) = (usize::from(a), usize::from(n));
                match regs.get_mut(a..a + n) {
                    Some(w) => {
                        if self.bump {
                            w.iter_mut().for_each(|r| *r = r.wrapping_add(1));
                        }
                        Ok(Response::ReadHoldingRegisters(w.to_vec()))
                    }
                    None => Err(ExceptionCode::IllegalDataAddress),
                }
            }
            _ => Err(ExceptionCode::IllegalFunction),
        })
    }
}

impl Bank {
    /// A bank of `registers`, served on a free loopback port until the test ends.
    pub async fn serve(self) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio_modbus::server::tcp::Server::new(listener);
        tokio::spawn(async move {
            let on_connected = move |stream, socket_addr| {
                let bank = self.clone();
                async move {
                    tokio_modbus::server::tcp::accept_tcp_connection(stream, socket_addr, |_| {
                        Ok(Some(bank.clone()))
                    })
                }
            };
            let _ = server.serve(&on_connected, |_e| {}).await;
        });
        addr
    }
}
