//! `fieldgate simulate`: Modbus slaves that behave like plant equipment, for tests and demos.
//!
//! Built on tokio-modbus's server. The physics lives in pure modules (`water_tower`); this
//! file only serves the register map over TCP and ticks simulated time.

pub mod water_tower;

use std::future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_modbus::server::tcp::{Server, accept_tcp_connection};
use tokio_modbus::{ExceptionCode, Request, Response, SlaveRequest};
use tokio_util::sync::CancellationToken;

use water_tower::WaterTower;

/// Settings of a simulated water tower.
#[derive(Debug, Clone)]
pub struct TowerOptions {
    pub unit: u8,
    pub seed: u64,
    /// Simulated seconds per real second; 0 freezes the plant.
    pub speed: f64,
    /// Level at start, cm.
    pub level: f64,
    /// Switch automatic control on at start (holding register 4).
    pub auto: bool,
}

#[derive(Debug, Clone)]
struct TowerService {
    unit: u8,
    tower: Arc<Mutex<WaterTower>>,
}

fn lock(t: &Mutex<WaterTower>) -> std::sync::MutexGuard<'_, WaterTower> {
    // A poisoned lock only means a panic elsewhere; the plant state is still usable.
    t.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl TowerService {
    fn handle(&self, req: SlaveRequest<'static>) -> Result<Response, ExceptionCode> {
        // Unit 0 is broadcast; 255 is the usual "this device" id for Modbus TCP.
        if req.slave != self.unit && req.slave != 255 {
            return Err(ExceptionCode::GatewayTargetDevice);
        }
        let mut t = lock(&self.tower);
        match req.request {
            Request::ReadInputRegisters(a, n) => t
                .read_input_registers(a, n)
                .map(Response::ReadInputRegisters),
            Request::ReadHoldingRegisters(a, n) => t
                .read_holding_registers(a, n)
                .map(Response::ReadHoldingRegisters),
            Request::ReadDiscreteInputs(a, n) => t
                .read_discrete_inputs(a, n)
                .map(Response::ReadDiscreteInputs),
            Request::ReadCoils(a, n) => t.read_coils(a, n).map(Response::ReadCoils),
            Request::WriteSingleCoil(a, v) => t
                .write_coils(a, &[v])
                .map(|()| Response::WriteSingleCoil(a, v)),
            Request::WriteMultipleCoils(a, v) => t
                .write_coils(a, &v)
                .map(|()| Response::WriteMultipleCoils(a, v.len() as u16)),
            Request::WriteSingleRegister(a, v) => t
                .write_holding_registers(a, &[v])
                .map(|()| Response::WriteSingleRegister(a, v)),
            Request::WriteMultipleRegisters(a, v) => t
                .write_holding_registers(a, &v)
                .map(|()| Response::WriteMultipleRegisters(a, v.len() as u16)),
            _ => Err(ExceptionCode::IllegalFunction),
        }
    }
}

impl tokio_modbus::server::Service for TowerService {
    type Request = SlaveRequest<'static>;
    type Response = Response;
    type Exception = ExceptionCode;
    type Future = future::Ready<Result<Response, ExceptionCode>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        future::ready(self.handle(req))
    }
}

/// Serve a water tower on `listener` until `shutdown`. The physics ticks every 50 ms.
pub async fn serve_water_tower(
    listener: TcpListener,
    opts: TowerOptions,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let mut tower = WaterTower::new(opts.seed, opts.level);
    if opts.auto {
        let _ = tower.write_holding_registers(4, &[1]);
    }
    let tower = Arc::new(Mutex::new(tower));
    let ticker = {
        let tower = Arc::clone(&tower);
        let shutdown = shutdown.clone();
        let speed = opts.speed;
        tokio::spawn(async move {
            let tick = Duration::from_millis(50);
            let mut interval = tokio::time::interval(tick);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last = tokio::time::Instant::now();
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    now = interval.tick() => {
                        let dt = now.duration_since(last).as_secs_f64() * speed;
                        last = now;
                        lock(&tower).step(dt);
                    }
                }
            }
        })
    };
    let service = TowerService {
        unit: opts.unit,
        tower,
    };
    let new_service = move |_addr: SocketAddr| Ok(Some(service.clone()));
    let on_connected = move |stream, addr| {
        let new_service = new_service.clone();
        async move { accept_tcp_connection(stream, addr, new_service) }
    };
    let on_error = |e: std::io::Error| tracing::debug!(error = %e, "simulator connection ended");
    let server = Server::new(listener);
    let result = server
        .serve_until(&on_connected, on_error, shutdown.cancelled_owned())
        .await;
    ticker.abort();
    result.map(|_| ())
}
