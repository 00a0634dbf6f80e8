//! One task per Modbus link: connect, poll each device on its schedule, run writes ahead of the
//! next poll, and reconnect with backoff.
//!
//! Every request is wrapped in the device's timeout. After a timeout or a transport error the
//! connection is dropped and re-opened, so a late reply can never be taken for the next answer.
//! A Modbus exception is reported for the points of that request and the connection stays up.
//! While the link is down, writes are refused at once: a pump must not start late.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until, timeout};
use tokio_util::sync::CancellationToken;

use super::client::{ModbusClient, TcpClient};
use super::{LinkEvent, WriteRequest};
use crate::backoff::Backoff;
use crate::events;
use crate::mappings::command::{format_number, write_width};
use crate::mappings::plan::ReadRequest;
use crate::mappings::{BlockData, DeviceId, DeviceStatus, Fault, PollResult, WriteValue};
use crate::model::{LinkSpec, Model};

/// How long a TCP connect may take before it counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// The devices that share one link, and the channels of its task.
#[derive(Debug)]
pub struct Link {
    pub spec: LinkSpec,
    pub devices: Vec<DeviceId>,
    pub model: Arc<Model>,
    pub events: mpsc::Sender<LinkEvent>,
    pub writes: mpsc::Receiver<WriteRequest>,
}

enum Broken {
    Shutdown,
    Transport(String),
}

impl Link {
    /// Run until `shutdown`. A write in flight is finished first.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let name = self.spec.to_string();
        let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(30));
        let mut last_status: Vec<Option<DeviceStatus>> = vec![None; self.model.devices.len()];
        loop {
            let reason = match self.connect(&shutdown).await {
                Err(Broken::Shutdown) => return,
                Err(Broken::Transport(e)) => e,
                Ok(mut client) => {
                    events::link_connected(&name);
                    backoff.reset();
                    match self.serve(&mut client, &shutdown, &mut last_status).await {
                        Broken::Shutdown => return,
                        Broken::Transport(e) => e,
                    }
                }
            };
            for &d in &self.devices.clone() {
                self.status(d, DeviceStatus::Error(reason.clone()), &mut last_status)
                    .await;
            }
            let delay = backoff.next_delay();
            events::link_down(&name, &reason, delay);
            if self
                .refuse_writes_until(Instant::now() + delay, &shutdown)
                .await
            {
                return;
            }
        }
    }

    async fn connect(&self, shutdown: &CancellationToken) -> Result<TcpClient, Broken> {
        let LinkSpec::Tcp { host, port } = &self.spec;
        let unit = self.model.devices[self.devices[0]].unit;
        let attempt = async {
            let addr = tokio::net::lookup_host((host.as_str(), *port))
                .await
                .map_err(|e| format!("resolve {host}: {e}"))?
                .next()
                .ok_or_else(|| format!("resolve {host}: no address"))?;
            match timeout(CONNECT_TIMEOUT, TcpClient::connect(addr, unit)).await {
                Ok(Ok(c)) => Ok(c),
                Ok(Err(e)) => Err(format!("connect {addr}: {e}")),
                Err(_) => Err(format!("connect {addr}: timeout")),
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => Err(Broken::Shutdown),
            r = attempt => r.map_err(Broken::Transport),
        }
    }

    async fn status(
        &self,
        device: DeviceId,
        status: DeviceStatus,
        last: &mut [Option<DeviceStatus>],
    ) {
        if last[device].as_ref() == Some(&status) {
            return;
        }
        let (ok, reason) = match &status {
            DeviceStatus::Ok => (true, ""),
            DeviceStatus::Error(r) => (false, r.as_str()),
        };
        events::device_status(&self.model.devices[device].name, ok, reason);
        last[device] = Some(status.clone());
        let _ = self
            .events
            .send(LinkEvent::Status {
                device,
                status,
                at: SystemTime::now(),
            })
            .await;
    }

    /// While disconnected: answer every write with an error at once; true on shutdown.
    async fn refuse_writes_until(&mut self, until: Instant, shutdown: &CancellationToken) -> bool {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return true,
                () = sleep_until(until) => return false,
                Some(w) = self.writes.recv() => {
                    let dev = &self.model.devices[w.op.device];
                    let p = &self.model.points[w.op.point];
                    events::write_done(&dev.name, &p.name, w.op.address, &value_text(&w.op.value), &w.origin, Err("device not connected"));
                    let _ = w.reply.send(Err(Fault::NotConnected));
                }
            }
        }
    }

    /// Poll and write on a live connection until it breaks or shutdown.
    async fn serve<C: ModbusClient>(
        &mut self,
        client: &mut C,
        shutdown: &CancellationToken,
        last: &mut [Option<DeviceStatus>],
    ) -> Broken {
        let now = Instant::now();
        let mut due: Vec<Instant> = vec![now; self.devices.len()];
        loop {
            let (slot, &next) = due
                .iter()
                .enumerate()
                .min_by_key(|(_, t)| **t)
                .expect("a link has at least one device");
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return Broken::Shutdown,
                Some(w) = self.writes.recv() => {
                    if let Err(e) = self.write(client, w).await {
                        return Broken::Transport(e);
                    }
                }
                () = sleep_until(next) => {
                    let device = self.devices[slot];
                    let started = Instant::now();
                    match self.poll(client, device).await {
                        Ok(result) => {
                            events::poll_done(&self.model.devices[device].name, started.elapsed().as_secs_f64());
                            let all_failed = result.blocks.iter().all(Result::is_err);
                            let status = match result.blocks.first() {
                                Some(Err(f)) if all_failed => DeviceStatus::Error(f.to_string()),
                                _ => DeviceStatus::Ok,
                            };
                            self.status(device, status, last).await;
                            if self.events.send(LinkEvent::Poll(result)).await.is_err() {
                                return Broken::Shutdown;
                            }
                        }
                        Err(e) => return Broken::Transport(e),
                    }
                    // Keep the rhythm, but never try to catch up a backlog of missed cycles.
                    let interval = self.model.devices[device].poll_interval;
                    due[slot] = (next + interval).max(Instant::now());
                }
            }
        }
    }

    /// One request with the device's timeout; `Err` means the connection must be dropped.
    async fn request<C: ModbusClient>(
        &self,
        client: &mut C,
        device: DeviceId,
        req: ReadRequest,
    ) -> Result<Result<BlockData, Fault>, String> {
        let dev = &self.model.devices[device];
        client.set_unit(dev.unit);
        match timeout(dev.timeout, client.read(req)).await {
            Err(_) => {
                events::modbus_request(&dev.name, "timeout");
                Err(format!(
                    "timeout after {:?} reading {} {}+{}",
                    dev.timeout,
                    req.kind.name(),
                    req.start,
                    req.count
                ))
            }
            Ok(Err(e)) => {
                events::modbus_request(&dev.name, "transport");
                Err(format!("transport: {e}"))
            }
            Ok(Ok(Err(code))) => {
                events::modbus_request(&dev.name, "exception");
                events::modbus_exception(&dev.name, req.kind.read_function(), code);
                Ok(Err(Fault::Exception(code)))
            }
            Ok(Ok(Ok(data))) => {
                let got = match &data {
                    BlockData::Words(w) => w.len(),
                    BlockData::Bits(b) => b.len(),
                };
                // tokio-modbus pads bit reads to whole bytes; fewer than asked is a bad frame.
                if got < usize::from(req.count) {
                    events::modbus_request(&dev.name, "transport");
                    return Err(format!("short reply: {got} of {} values", req.count));
                }
                events::modbus_request(&dev.name, "ok");
                Ok(Ok(data))
            }
        }
    }

    async fn poll<C: ModbusClient>(
        &self,
        client: &mut C,
        device: DeviceId,
    ) -> Result<PollResult, String> {
        let plan = &self.model.devices[device].plan;
        let mut blocks = Vec::with_capacity(plan.requests.len());
        let read_at = SystemTime::now();
        for &req in &plan.requests {
            blocks.push(self.request(client, device, req).await?);
        }
        Ok(PollResult {
            device,
            read_at,
            blocks,
        })
    }

    /// Write, then read the address back. `Err` means the connection must be dropped (the
    /// requester has been answered already).
    async fn write<C: ModbusClient>(&self, client: &mut C, w: WriteRequest) -> Result<(), String> {
        let op = &w.op;
        let dev = &self.model.devices[op.device];
        let point = &self.model.points[op.point];
        let value = value_text(&op.value);
        client.set_unit(dev.unit);
        let (reply, broken) =
            match timeout(dev.timeout, client.write(op.kind, op.address, &op.value)).await {
                Err(_) => (Err(Fault::Timeout), Some("write timeout".to_owned())),
                Ok(Err(e)) => (
                    Err(Fault::Transport(e.to_string())),
                    Some(format!("transport: {e}")),
                ),
                Ok(Ok(Err(code))) => (Err(Fault::Exception(code)), None),
                Ok(Ok(Ok(()))) => {
                    let req = ReadRequest {
                        kind: op.kind,
                        start: op.address,
                        count: write_width(&op.value),
                    };
                    match self.request(client, op.device, req).await {
                        Ok(r) => (r, None),
                        Err(e) => (Err(Fault::Transport(e.clone())), Some(e)),
                    }
                }
            };
        let result = reply.as_ref().map(|_| ()).map_err(ToString::to_string);
        events::write_done(
            &dev.name,
            &point.name,
            op.address,
            &value,
            &w.origin,
            result.as_ref().map(|_| ()).map_err(String::as_str),
        );
        let _ = w.reply.send(reply);
        broken.map_or(Ok(()), Err)
    }
}

fn value_text(v: &WriteValue) -> String {
    match v {
        WriteValue::Coil(b) => format_number(f64::from(u8::from(*b))),
        WriteValue::Registers(w) => format!("{w:?}"),
    }
}
