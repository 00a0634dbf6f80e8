//! One task per link (a TCP connection or an RTU bus): connect, poll each device on its
//! schedule, run writes ahead of the next poll, keep the bus timing, and recover.
//!
//! By construction:
//! - every request waits out the link's inter-frame gap (plus turnaround) since the last frame,
//!   and on a serial port the unread input is discarded as the request is written;
//! - every request has the device's timeout; after a timeout the connection is re-opened (a new
//!   socket, or the serial port re-opened with its input flushed) after the gap, so a late or
//!   partial reply can never be read as the next answer;
//! - a reply whose unit id, function code or CRC does not match is discarded, the link flushed,
//!   and the request tried once more;
//! - a timeout fails only that device, which is then left alone for one more timeout, so a late
//!   reply is flushed before it is asked again; a device that keeps failing is quarantined (polled less
//!   often, with backoff) so it cannot starve the others; the earliest-due device goes first,
//!   and of two equally due the one polled longest ago;
//! - a Modbus exception is reported for that request's points and the connection stays up;
//! - only a link that cannot be (re)opened takes all its devices down, with backoff.
//!
//! While the link is down, writes are refused at once: a pump must not start late.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until, timeout};
use tokio_util::sync::CancellationToken;

use super::client::{Client, LinkError, ModbusClient, open};
use super::{LinkEvent, WriteRequest, WriteTarget};
use crate::backoff::Backoff;
use crate::events;
use crate::mappings::command::{format_number, write_width};
use crate::mappings::plan::ReadRequest;
use crate::mappings::{BlockData, DeviceId, DeviceStatus, Fault, PollResult, WriteValue};
use crate::model::Model;

/// How long opening a connection may take before it counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// The task of one link.
#[derive(Debug)]
pub struct Link {
    /// Index into `Model::links`.
    pub link: usize,
    pub model: Arc<Model>,
    pub events: mpsc::Sender<LinkEvent>,
    pub writes: mpsc::Receiver<WriteRequest>,
    /// Beaten from this task's loop; the systemd watchdog watches it.
    pub beat: crate::supervisor::Heartbeat,
}

#[derive(Debug)]
struct DeviceState {
    device: DeviceId,
    due: Instant,
    last_polled: Instant,
    failures: u32,
    quarantine: Duration,
    status: Option<DeviceStatus>,
}

/// Why `serve` returned.
enum Stop {
    Shutdown,
    LinkDown(String),
}

/// How one exchange failed.
enum Fail {
    /// This device did not answer properly; the link has been re-opened.
    Device(Fault, String),
    /// The link itself is gone.
    Link(String),
}

struct Bus {
    client: Client,
    /// When the last frame on the link ended (for the inter-frame gap).
    last_frame: Instant,
    /// Time spent in exchanges since `window`, for the bus utilisation metric.
    busy: Duration,
    window: Instant,
}

impl Bus {
    fn new(client: Client) -> Self {
        let now = Instant::now();
        Bus {
            client,
            last_frame: now,
            busy: Duration::ZERO,
            window: now,
        }
    }

    /// Report the utilisation every 5 s.
    fn report(&mut self, link: &str) {
        let span = self.window.elapsed();
        if span >= Duration::from_secs(5) {
            events::link_busy(link, self.busy.as_secs_f64() / span.as_secs_f64());
            self.busy = Duration::ZERO;
            self.window = Instant::now();
        }
    }
}

impl Link {
    fn name(&self) -> &str {
        &self.model.links[self.link].name
    }

    /// Run until `shutdown`. A write in flight is finished first.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let name = self.name().to_owned();
        let now = Instant::now();
        let mut states: Vec<DeviceState> = self.model.links[self.link]
            .devices
            .iter()
            .map(|&device| DeviceState {
                device,
                due: now,
                last_polled: now,
                failures: 0,
                quarantine: Duration::ZERO,
                status: None,
            })
            .collect();
        if states.is_empty() {
            return;
        }
        let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(30));
        loop {
            let reason = match self.open(&shutdown).await {
                Err(None) => return,
                Err(Some(e)) => e,
                Ok(client) => {
                    events::link_connected(&name);
                    backoff.reset();
                    let mut bus = Bus::new(client);
                    match self.serve(&mut bus, &mut states, &shutdown).await {
                        Stop::Shutdown => return,
                        Stop::LinkDown(e) => e,
                    }
                }
            };
            for st in &mut states {
                self.set_status(st, DeviceStatus::Error(reason.clone()))
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
            let now = Instant::now();
            for st in &mut states {
                st.due = now;
            }
        }
    }

    /// Open the link; `Err(None)` on shutdown.
    async fn open(&self, shutdown: &CancellationToken) -> Result<Client, Option<String>> {
        let link = &self.model.links[self.link];
        let unit = self.model.devices[link.devices[0]].unit;
        tokio::select! {
            () = shutdown.cancelled() => Err(None),
            r = open(&link.spec, unit, CONNECT_TIMEOUT) => r.map_err(Some),
        }
    }

    async fn set_status(&self, st: &mut DeviceState, status: DeviceStatus) {
        if st.status.as_ref() == Some(&status) {
            return;
        }
        let (ok, reason) = match &status {
            DeviceStatus::Ok => (true, ""),
            DeviceStatus::Error(r) => (false, r.as_str()),
        };
        events::device_status(&self.model.devices[st.device].name, ok, reason);
        st.status = Some(status.clone());
        let name = self.model.devices[st.device].name.clone();
        let at = SystemTime::now();
        let _ = self
            .events
            .send(LinkEvent::Status {
                model: Arc::clone(&self.model),
                name,
                device: st.device,
                status,
                at,
            })
            .await;
    }

    /// While the link is down: answer every write with an error at once; true on shutdown.
    async fn refuse_writes_until(&mut self, until: Instant, shutdown: &CancellationToken) -> bool {
        let mut tick = tokio::time::interval(crate::supervisor::BEAT_EVERY);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return true,
                () = sleep_until(until) => return false,
                _ = tick.tick() => self.beat.beat(),
                Some(w) = self.writes.recv() => {
                    let t = &w.target;
                    events::write_done(&t.device, &t.point, w.op.address, &value_text(&w.op.value), &w.origin, Err("device not connected"));
                    let _ = w.reply.send(Err(Fault::NotConnected));
                }
            }
        }
    }

    /// Poll and write on an open link until it fails or shutdown.
    async fn serve(
        &mut self,
        bus: &mut Bus,
        states: &mut [DeviceState],
        shutdown: &CancellationToken,
    ) -> Stop {
        let mut tick = tokio::time::interval(crate::supervisor::BEAT_EVERY);
        loop {
            let next = (0..states.len())
                .min_by_key(|&i| (states[i].due, states[i].last_polled))
                .unwrap_or(0);
            let due = states[next].due;
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return Stop::Shutdown,
                _ = tick.tick() => self.beat.beat(),
                Some(w) = self.writes.recv() => {
                    if let Err(e) = self.write(bus, w).await {
                        return Stop::LinkDown(e);
                    }
                }
                () = sleep_until(due) => {
                    if let Err(e) = self.poll_device(bus, &mut states[next], due).await {
                        return Stop::LinkDown(e);
                    }
                    bus.report(self.name());
                }
            }
        }
    }

    /// Re-open the link after a device fault: wait out the gap, then a fresh connection.
    async fn reopen(&self, bus: &mut Bus, unit: u8) -> Result<(), String> {
        let link = &self.model.links[self.link];
        // Close first: a serial port is opened exclusively.
        bus.client.close().await;
        sleep_until(bus.last_frame + link.frame_gap).await;
        bus.client = open(&link.spec, unit, CONNECT_TIMEOUT).await?;
        bus.last_frame = Instant::now();
        Ok(())
    }

    /// One read with the gap, the timeout, and one retry after a mismatched reply.
    async fn read(
        &self,
        bus: &mut Bus,
        dev: &WriteTarget,
        req: ReadRequest,
    ) -> Result<Result<BlockData, u8>, Fail> {
        let link = &self.model.links[self.link];
        for attempt in 0..2 {
            sleep_until(bus.last_frame + link.frame_gap + link.turnaround).await;
            bus.client.set_unit(dev.unit);
            self.beat.beat();
            let sent = Instant::now();
            let r = timeout(dev.timeout, bus.client.read(req)).await;
            bus.last_frame = Instant::now();
            bus.busy += bus.last_frame - sent;
            let fault = match r {
                Ok(Ok(Ok(data))) => {
                    let got = match &data {
                        BlockData::Words(w) => w.len(),
                        BlockData::Bits(b) => b.len(),
                    };
                    if got >= usize::from(req.count) {
                        events::modbus_request(&dev.device, "ok");
                        return Ok(Ok(data));
                    }
                    events::modbus_request(&dev.device, "protocol");
                    format!("short reply: {got} of {} values", req.count)
                }
                Ok(Ok(Err(code))) => {
                    events::modbus_request(&dev.device, "exception");
                    events::modbus_exception(&dev.device, req.kind.read_function(), code);
                    return Ok(Err(code));
                }
                Ok(Err(LinkError::Transport(e))) => {
                    events::modbus_request(&dev.device, "transport");
                    return Err(Fail::Link(format!("transport: {e}")));
                }
                Ok(Err(LinkError::Protocol(e))) => {
                    events::modbus_request(&dev.device, "protocol");
                    format!("bad reply: {e}")
                }
                Err(_) => {
                    events::modbus_request(&dev.device, "timeout");
                    self.reopen(bus, dev.unit).await.map_err(Fail::Link)?;
                    return Err(Fail::Device(
                        Fault::Timeout,
                        format!(
                            "timeout after {:?} reading {} {}+{}",
                            dev.timeout,
                            req.kind.name(),
                            req.start,
                            req.count
                        ),
                    ));
                }
            };
            // A reply that was not ours (a late frame, noise): flush and, once, ask again.
            self.reopen(bus, dev.unit).await.map_err(Fail::Link)?;
            if attempt == 1 {
                return Err(Fail::Device(Fault::Transport(fault.clone()), fault));
            }
            tracing::debug!(device = %dev.device, reason = %fault, "discarded a reply; retrying once");
        }
        unreachable!("the loop returns on its second attempt")
    }

    async fn poll_device(
        &self,
        bus: &mut Bus,
        st: &mut DeviceState,
        due: Instant,
    ) -> Result<(), String> {
        let link = &self.model.links[self.link];
        let dev = &self.model.devices[st.device];
        let target = WriteTarget {
            device: dev.name.clone(),
            point: Arc::from(""),
            unit: dev.unit,
            timeout: dev.timeout,
        };
        let started = Instant::now();
        let read_at = SystemTime::now();
        let mut blocks = Vec::with_capacity(dev.plan.requests.len());
        let mut failed: Option<String> = None;
        for &req in &dev.plan.requests {
            match self.read(bus, &target, req).await {
                Ok(r) => blocks.push(r.map_err(Fault::Exception)),
                Err(Fail::Link(e)) => return Err(e),
                Err(Fail::Device(_, reason)) => {
                    failed = Some(reason);
                    break;
                }
            }
        }
        st.last_polled = Instant::now();
        match failed {
            None => {
                events::poll_done(&dev.name, started.elapsed().as_secs_f64());
                if st.failures >= link.quarantine_after {
                    events::quarantine(&dev.name, false);
                }
                st.failures = 0;
                st.quarantine = Duration::ZERO;
                let all_failed = blocks.iter().all(Result::is_err);
                let status = match blocks.first() {
                    Some(Err(f)) if all_failed => DeviceStatus::Error(f.to_string()),
                    _ => DeviceStatus::Ok,
                };
                self.set_status(st, status).await;
                let poll = PollResult {
                    device: st.device,
                    read_at,
                    blocks,
                };
                let ev = LinkEvent::Poll {
                    model: Arc::clone(&self.model),
                    name: dev.name.clone(),
                    poll,
                };
                if self.events.send(ev).await.is_err() {
                    return Err("shutting down".into());
                }
                // Keep the rhythm, but never try to catch up a backlog of missed cycles.
                st.due = (due + dev.poll_interval).max(Instant::now());
            }
            Some(reason) => {
                st.failures += 1;
                events::device_fault(&dev.name, &reason);
                if st.failures >= link.quarantine_after {
                    if st.failures == link.quarantine_after {
                        events::quarantine(&dev.name, true);
                    }
                    st.quarantine = if st.quarantine.is_zero() {
                        (dev.poll_interval * 2).max(Duration::from_secs(1))
                    } else {
                        (st.quarantine * 2).min(link.quarantine_max)
                    };
                    st.due = Instant::now() + st.quarantine;
                    let why = format!("quarantined after {} failed polls: {reason}", st.failures);
                    self.set_status(st, DeviceStatus::Error(why)).await;
                } else {
                    // One more timeout of silence towards this unit: a reply to the failed
                    // request that is still on its way is then flushed, not read as the answer
                    // to the same request asked again (RTU has no transaction id).
                    st.due = (due + dev.poll_interval).max(Instant::now() + dev.timeout);
                    self.set_status(st, DeviceStatus::Error(reason)).await;
                }
            }
        }
        Ok(())
    }

    /// Write, then read the address back. `Err` means the link is down (the requester has been
    /// answered already).
    async fn write(&self, bus: &mut Bus, w: WriteRequest) -> Result<(), String> {
        let link = &self.model.links[self.link];
        let op = &w.op;
        // From the sender's model: this link may be running on an older one.
        let dev = &w.target;
        let value = value_text(&op.value);
        sleep_until(bus.last_frame + link.frame_gap + link.turnaround).await;
        bus.client.set_unit(dev.unit);
        let r = timeout(
            dev.timeout,
            bus.client.write(op.kind, op.address, &op.value),
        )
        .await;
        bus.last_frame = Instant::now();
        let mut link_down = None;
        let reply = match r {
            Err(_) => {
                if let Err(e) = self.reopen(bus, dev.unit).await {
                    link_down = Some(e);
                }
                Err(Fault::Timeout)
            }
            Ok(Err(LinkError::Transport(e))) => {
                link_down = Some(format!("transport: {e}"));
                Err(Fault::Transport(e.to_string()))
            }
            // Never retried: the write may have happened. The read-back below is the truth.
            Ok(Err(LinkError::Protocol(e))) => {
                if let Err(e) = self.reopen(bus, dev.unit).await {
                    link_down = Some(e);
                }
                Err(Fault::Transport(format!("bad reply: {e}")))
            }
            Ok(Ok(Err(code))) => Err(Fault::Exception(code)),
            Ok(Ok(Ok(()))) => {
                let req = ReadRequest {
                    kind: op.kind,
                    start: op.address,
                    count: write_width(&op.value),
                };
                match self.read(bus, dev, req).await {
                    Ok(r) => r.map_err(Fault::Exception),
                    Err(Fail::Device(f, _)) => Err(f),
                    Err(Fail::Link(e)) => {
                        link_down = Some(e.clone());
                        Err(Fault::Transport(e))
                    }
                }
            }
        };
        let result = reply.as_ref().map(|_| ()).map_err(ToString::to_string);
        events::write_done(
            &dev.device,
            &dev.point,
            op.address,
            &value,
            &w.origin,
            result.as_ref().map(|_| ()).map_err(String::as_str),
        );
        let _ = w.reply.send(reply);
        link_down.map_or(Ok(()), Err)
    }
}

fn value_text(v: &WriteValue) -> String {
    match v {
        WriteValue::Coil(b) => format_number(f64::from(u8::from(*b))),
        WriteValue::Registers(w) => format!("{w:?}"),
    }
}
