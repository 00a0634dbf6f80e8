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
//!   when ILLEGAL DATA ADDRESS or ILLEGAL DATA VALUE refuses a read that covers several points
//!   (one address inside does not exist, or the read is longer than the device takes), the
//!   read is split at point boundaries until its parts succeed or each failing part holds one
//!   point; the split is remembered, and the merged read tried again every [`REPROBE`]. When
//!   no part is readable, the device refuses the range as a whole (a PLC in STOP): the split
//!   is not kept, and the read stays merged for [`UNSPLIT`];
//! - a connection the device closed (some close after every reply) is re-opened and the
//!   request asked once more before anything counts as failed;
//! - a device that answers FC 5 / FC 6 with ILLEGAL FUNCTION is written with FC 15 / FC 16 from
//!   then on (`write_function: auto`);
//! - a device's `request_delay` and the link's `connect_delay` are waited out before requests;
//! - only a link that cannot be (re)opened takes all its devices down, with backoff; the
//!   backoff starts again from its first step only after a connection on which a device
//!   answered, so a device that accepts connections and drops them is not hammered.
//!
//! Waits are skipped when their time has already passed: tokio's timer rounds even a zero
//! wait up to its next millisecond tick.
//!
//! While the link is down, writes are refused at once: a pump must not start late.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until, timeout};
use tokio_util::sync::CancellationToken;

use super::client::{Client, LinkError, ModbusClient, OpenOptions, open};
use super::{LinkEvent, WriteRequest, WriteTarget};
use crate::backoff::Backoff;
use crate::events::{self, WriteOutcome};
use crate::mappings::command::{format_number, readback_matches, write_width};
use crate::model::{Model, WriteFunction};
use crate::vocabulary::ReadRequest;
use crate::vocabulary::{
    BadRange, BlockData, DeviceId, DeviceStatus, Fault, PollResult, RegisterKind, WriteValue,
};

/// How long opening a connection may take before it counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// How long a learned split of a refused read is kept before the merged read is tried again
/// (a device may have been re-configured, or the refusal was passing).
pub const REPROBE: Duration = Duration::from_secs(600);

/// How long a read whose every part the device refused (a PLC in STOP, a device still
/// starting: the refusal is not about an address inside) is read merged, unsplit, before a
/// refusal splits it again.
pub const UNSPLIT: Duration = Duration::from_secs(60);

/// How often a read answered SERVER DEVICE BUSY is asked again (after 1, 2, 3 pauses of a tenth
/// of the timeout, 10-100 ms) before the exception counts.
pub const BUSY_RETRIES: u32 = 3;

/// Sleep until `t`, or not at all when `t` has passed (no timer tick for a zero wait).
async fn wait_until(t: Instant) {
    if t > Instant::now() {
        sleep_until(t).await;
    }
}

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
    /// Devices (by name) that refused FC 5 (coils) or FC 6 (holding registers), and are
    /// written with FC 15 / FC 16 for that kind.
    pub multiple_writes: Mutex<HashSet<(Arc<str>, RegisterKind)>>,
}

#[derive(Debug)]
struct DeviceState {
    device: DeviceId,
    due: Instant,
    last_polled: Instant,
    failures: u32,
    quarantine: Duration,
    status: Option<DeviceStatus>,
    /// Requests of the read plan (by index) the device refused whole, and the parts it takes.
    splits: HashMap<usize, Vec<ReadRequest>>,
    /// When the learned splits are dropped and the merged reads tried again.
    reprobe_at: Option<Instant>,
    /// Reads refused with an exception in the last poll (one log line per episode).
    refused: HashMap<ReadRequest, u8>,
    /// Requests (by index) whose every part was refused, and until when they are not split.
    unsplit_until: HashMap<usize, Instant>,
    /// Whether the device's cycle has taken its phase (see [`phased_due`]) since the link
    /// (re)connected.
    phased: bool,
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
    /// No request before this (the link's `connect_delay` after opening).
    ready_at: Instant,
    /// Time spent in exchanges since `window`, for the bus utilisation metric.
    busy: Duration,
    window: Instant,
    /// A device answered on this connection (a value or an exception): only then does the
    /// reconnect backoff start again from its first step.
    answered: bool,
}

impl Bus {
    fn new(client: Client, connect_delay: Duration) -> Self {
        let now = Instant::now();
        Bus {
            client,
            last_frame: now,
            ready_at: now + connect_delay,
            busy: Duration::ZERO,
            window: now,
            answered: false,
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

/// When the cycle after a device's first poll on a fresh link is due: `first` (when that poll
/// was due) plus `interval`, moved earlier by `interval * device / devices` (device ids count
/// from 0 to `devices - 1`). Devices that connect together and share an interval, ten PLCs
/// polled every 100 ms, then poll at even offsets within the interval instead of all at once:
/// the gateway, the network and the broker take ten small bursts, not one large one, and a
/// value waits behind at most one device's block. The one shortened gap is the only change:
/// no cycle comes later than its interval, and the rhythm is kept from there on. Telegraf's
/// `collection_offset` and `collection_jitter` spread inputs for the same reason.
pub(crate) fn phased_due(
    first: Instant,
    interval: Duration,
    device: DeviceId,
    devices: usize,
) -> Instant {
    let devices = u32::try_from(devices.max(1)).unwrap_or(u32::MAX);
    let device = u32::try_from(device).unwrap_or(0) % devices;
    first + interval - interval / devices * device
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
                splits: HashMap::new(),
                reprobe_at: None,
                refused: HashMap::new(),
                unsplit_until: HashMap::new(),
                phased: false,
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
                    let mut bus = Bus::new(client, self.model.links[self.link].connect_delay);
                    let stop = self.serve(&mut bus, &mut states, &shutdown).await;
                    // A connection the device accepts and then drops without answering (a
                    // converter whose serial side is dead, a device that takes one master)
                    // does not reset the backoff: it is not hammered every 250 ms.
                    if bus.answered {
                        backoff.reset();
                    }
                    match stop {
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
                st.phased = false;
            }
        }
    }

    fn open_options(&self) -> OpenOptions {
        let link = &self.model.links[self.link];
        OpenOptions {
            connect_timeout: CONNECT_TIMEOUT,
            tid: link.tid,
            echo: link.echo,
        }
    }

    /// Open the link; `Err(None)` on shutdown.
    async fn open(&self, shutdown: &CancellationToken) -> Result<Client, Option<String>> {
        let link = &self.model.links[self.link];
        let unit = self.model.devices[link.devices[0]].unit;
        tokio::select! {
            () = shutdown.cancelled() => Err(None),
            r = open(&link.spec, unit, self.open_options()) => r.map_err(Some),
        }
    }

    async fn set_status(&self, st: &mut DeviceState, status: DeviceStatus) {
        if st.status.as_ref() == Some(&status) {
            return;
        }
        let reason = match &status {
            DeviceStatus::Ok => "",
            DeviceStatus::Degraded { reason, .. } | DeviceStatus::Error(reason) => reason.as_str(),
        };
        events::device_status(&self.model.devices[st.device].name, status.as_str(), reason);
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
                    events::write_done(&t.device, &t.point, w.op.address, &value_text(&w.op.value), &w.origin, WriteOutcome::Failed { reason: "device not connected" });
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
                    // A poll (reads only) is abandoned at shutdown: its waits, timeouts and
                    // remaining requests must not hold the stop up. A write is finished.
                    let polled = tokio::select! {
                        biased;
                        () = shutdown.cancelled() => return Stop::Shutdown,
                        r = self.poll_device(bus, &mut states[next], due) => r,
                    };
                    if let Err(e) = polled {
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
        wait_until(bus.last_frame + link.frame_gap).await;
        bus.client = open(&link.spec, unit, self.open_options()).await?;
        bus.last_frame = Instant::now();
        bus.ready_at = bus.last_frame + link.connect_delay;
        events::link_reopened(&link.name, "device fault");
        Ok(())
    }

    /// Wait out the link's gap and turnaround, the device's request delay, and the connect
    /// delay; then address the device.
    async fn before_request(&self, bus: &mut Bus, dev: &WriteTarget) {
        let link = &self.model.links[self.link];
        let at = (bus.last_frame + link.frame_gap + link.turnaround)
            .max(bus.last_frame + dev.request_delay)
            .max(bus.ready_at);
        wait_until(at).await;
        bus.client.set_unit(dev.unit);
        self.beat.beat();
    }

    /// One read with the gap, the timeout, one retry after a mismatched reply, one retry on a
    /// fresh connection after the device closed the old one, and up to [`BUSY_RETRIES`] after
    /// SERVER DEVICE BUSY (Modbus application protocol V1.1b3, 7: "the client should retransmit
    /// the message later").
    async fn read(
        &self,
        bus: &mut Bus,
        dev: &WriteTarget,
        req: ReadRequest,
    ) -> Result<Result<BlockData, u8>, Fail> {
        let mut busy = 0;
        let mut attempt = 0;
        while attempt < 2 {
            self.before_request(bus, dev).await;
            let sent = Instant::now();
            let r = timeout(dev.timeout, bus.client.read(req)).await;
            bus.last_frame = Instant::now();
            bus.busy += bus.last_frame - sent;
            bus.answered |= matches!(r, Ok(Ok(_)));
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
                Ok(Ok(Err(6))) if busy < BUSY_RETRIES => {
                    events::modbus_request(&dev.device, "busy");
                    busy += 1;
                    let pause = (dev.timeout / 10)
                        .clamp(Duration::from_millis(10), Duration::from_millis(100));
                    sleep_until(Instant::now() + pause * busy).await;
                    continue;
                }
                Ok(Ok(Err(code))) => {
                    events::modbus_request(&dev.device, "exception");
                    events::modbus_exception(&dev.device, req.kind.read_function(), code);
                    return Ok(Err(code));
                }
                Ok(Err(LinkError::Closed)) if attempt == 0 => {
                    // Some devices close after every reply: a fresh connection, and once more.
                    events::modbus_request(&dev.device, "closed");
                    self.reopen(bus, dev.unit).await.map_err(Fail::Link)?;
                    attempt += 1;
                    continue;
                }
                Ok(Err(e @ (LinkError::Transport(_) | LinkError::Closed))) => {
                    events::modbus_request(&dev.device, "transport");
                    return Err(Fail::Link(e.to_string()));
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
                        format!("timeout after {:?} reading {}", dev.timeout, describe(req)),
                    ));
                }
            };
            // A reply that was not ours (a late frame, noise): flush and, once, ask again.
            self.reopen(bus, dev.unit).await.map_err(Fail::Link)?;
            if attempt == 1 {
                return Err(Fail::Device(Fault::Transport(fault.clone()), fault));
            }
            tracing::debug!(device = %dev.device, reason = %fault, "discarded a reply; retrying once");
            attempt += 1;
        }
        Err(Fail::Device(
            Fault::Transport("connection closed by the device".into()),
            "connection closed by the device twice in a row".into(),
        ))
    }

    /// Read request `ri` of the device's plan, in the parts learned for it, splitting a part
    /// the device refuses with ILLEGAL DATA ADDRESS / VALUE at point boundaries. Returns the
    /// parts and their results. When no part of a new split was readable, the device refuses
    /// the whole range, not an address in it: the split is not kept, the request is returned
    /// as one refused part, and it is not split again for [`UNSPLIT`].
    async fn read_parts(
        &self,
        bus: &mut Bus,
        st: &mut DeviceState,
        target: &WriteTarget,
        ri: usize,
    ) -> Result<Vec<(ReadRequest, Result<BlockData, u8>)>, Fail> {
        let dev = &self.model.devices[st.device];
        let req = dev.plan.requests[ri];
        let mut stack: Vec<ReadRequest> = st.splits.get(&ri).cloned().unwrap_or_else(|| vec![req]);
        stack.reverse();
        let mut leaves = Vec::with_capacity(stack.len());
        let mut split_by = None;
        let now = Instant::now();
        let may_split = st.unsplit_until.get(&ri).is_none_or(|&t| now >= t);
        while let Some(piece) = stack.pop() {
            match self.read(bus, target, piece).await? {
                Err(code @ (2 | 3)) if may_split => {
                    match split(piece, &spans(&self.model, st.device, ri)) {
                        Some((a, b)) => {
                            split_by.get_or_insert((piece, code));
                            stack.push(b);
                            stack.push(a);
                        }
                        None => leaves.push((piece, Err(code))),
                    }
                }
                r => leaves.push((piece, r)),
            }
        }
        if let Some((_, code)) = split_by
            && leaves.iter().all(|(_, r)| r.is_err())
        {
            events::read_split(
                &dev.name,
                req.kind.read_function(),
                req.start,
                req.count,
                code,
                leaves.len(),
                false,
            );
            st.unsplit_until.insert(ri, Instant::now() + UNSPLIT);
            return Ok(vec![(req, Err(code))]);
        }
        if leaves.iter().any(|(_, r)| r.is_ok()) {
            // The device reads again: a new refusal may be about an address, and is split.
            st.unsplit_until.remove(&ri);
        }
        if let Some((piece, code)) = split_by {
            events::read_split(
                &dev.name,
                piece.kind.read_function(),
                piece.start,
                piece.count,
                code,
                leaves.len(),
                true,
            );
            st.splits
                .insert(ri, leaves.iter().map(|(p, _)| *p).collect());
            st.reprobe_at.get_or_insert(Instant::now() + REPROBE);
        }
        Ok(leaves)
    }

    async fn poll_device(
        &self,
        bus: &mut Bus,
        st: &mut DeviceState,
        due: Instant,
    ) -> Result<(), String> {
        let link = &self.model.links[self.link];
        let dev = &self.model.devices[st.device];
        let target = WriteTarget::of(dev, Arc::from(""));
        let started = Instant::now();
        if st.reprobe_at.is_some_and(|t| started >= t) {
            st.splits.clear();
            st.reprobe_at = None;
        }
        let n = dev.plan.requests.len();
        // What the status is judged on: each block's outcome (without its data) and the
        // refused addresses of the whole cycle.
        let mut shadow = PollResult {
            device: st.device,
            read_at: SystemTime::now(),
            first: 0,
            blocks: Vec::with_capacity(n),
            complete: true,
            bad: Vec::new(),
        };
        // Blocks stream out as they are read while the device is ok; on the way back from an
        // error they wait for the status, so consumers see `ok` before the values.
        let stream = st.status == Some(DeviceStatus::Ok);
        let mut held = Vec::new();
        let mut refused = HashMap::new();
        let mut failed: Option<String> = None;
        for (ri, &req) in dev.plan.requests.iter().enumerate() {
            let read_at = SystemTime::now();
            match self.read_parts(bus, st, &target, ri).await {
                Ok(leaves) => {
                    for (piece, r) in &leaves {
                        if let Err(code) = r {
                            refused.insert(*piece, *code);
                        }
                    }
                    let mut bad = Vec::new();
                    let block = assemble(req, ri, leaves, &mut bad);
                    shadow.blocks.push(
                        block
                            .as_ref()
                            .map(|_| BlockData::Words(Vec::new()))
                            .map_err(Clone::clone),
                    );
                    shadow.bad.extend(bad.iter().cloned());
                    let part = PollResult {
                        device: st.device,
                        read_at,
                        first: ri,
                        blocks: vec![block],
                        complete: ri + 1 == n,
                        bad,
                    };
                    // Each block goes out as soon as it is read; the last one after the status.
                    if part.complete || !stream {
                        held.push(part);
                    } else {
                        self.hand_over(dev, part).await?;
                    }
                }
                Err(Fail::Link(e)) => return Err(e),
                Err(Fail::Device(_, reason)) => {
                    failed = Some(reason);
                    break;
                }
            }
        }
        st.last_polled = Instant::now();
        if failed.is_none() {
            self.report_refusals(st, refused);
        }
        match failed {
            None => {
                events::poll_done(&dev.name, started.elapsed().as_secs_f64());
                if st.failures >= link.quarantine_after {
                    events::quarantine(&dev.name, false);
                }
                st.failures = 0;
                st.quarantine = Duration::ZERO;
                let status = self.status_of(&shadow, &st.refused);
                // Going down, the held readings go first: the engine marks a device's good
                // points stale when it goes down, and points whose read failed are bad, not
                // stale for a moment before. Otherwise the status goes first.
                let down = matches!(status, DeviceStatus::Error(_));
                if down {
                    for part in held.drain(..) {
                        self.hand_over(dev, part).await?;
                    }
                }
                self.set_status(st, status).await;
                for part in held {
                    self.hand_over(dev, part).await?;
                }
                // Keep the rhythm, but never try to catch up a backlog of missed cycles.
                let next = if st.phased {
                    due + dev.poll_interval
                } else {
                    st.phased = true;
                    phased_due(due, dev.poll_interval, st.device, self.model.devices.len())
                };
                st.due = next.max(Instant::now());
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
                    // The count at which quarantine began, not the running one: the status
                    // (retained, and a WARN line) changes when the reason does, not every poll.
                    let why = format!(
                        "quarantined after {} failed polls: {reason}",
                        link.quarantine_after
                    );
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

    /// Send (part of) a poll cycle to the engine.
    async fn hand_over(&self, dev: &crate::model::Device, poll: PollResult) -> Result<(), String> {
        let ev = LinkEvent::Poll {
            model: Arc::clone(&self.model),
            name: dev.name.clone(),
            poll,
        };
        self.events
            .send(ev)
            .await
            .map_err(|_| "shutting down".to_owned())
    }

    /// One log line per episode of a refused read: when it starts, and when it works again.
    fn report_refusals(&self, st: &mut DeviceState, now: HashMap<ReadRequest, u8>) {
        let name = &self.model.devices[st.device].name;
        for (r, &code) in &now {
            if st.refused.get(r) != Some(&code) {
                events::read_exception(name, r.kind.read_function(), r.start, r.count, code, true);
            }
        }
        for r in st.refused.keys() {
            if !now.contains_key(r) {
                events::read_exception(name, r.kind.read_function(), r.start, r.count, 0, false);
            }
        }
        st.refused = now;
    }

    /// `error` when nothing of the device could be read, `degraded` (with the failing points)
    /// when some of it could, else `ok`.
    fn status_of(&self, poll: &PollResult, refused: &HashMap<ReadRequest, u8>) -> DeviceStatus {
        // Every block read and no address refused: no point can fail (the loop below would
        // find none, after touching every point of the device).
        if poll.bad.is_empty() && poll.blocks.iter().all(Result::is_ok) {
            return DeviceStatus::Ok;
        }
        let dev = &self.model.devices[poll.device];
        let first = refused
            .iter()
            .min_by_key(|(r, _)| (r.kind, r.start))
            .map(|(r, &code)| format!("{} reading {}", Fault::Exception(code), describe(*r)));
        if !poll.blocks.is_empty() && poll.blocks.iter().all(Result::is_err) {
            return DeviceStatus::Error(first.unwrap_or_else(|| "every read failed".into()));
        }
        let failing: Vec<Arc<str>> = dev
            .points
            .iter()
            .map(|&pid| &self.model.points[pid])
            .filter(|p| {
                let width = if p.kind.is_bit() { 1 } else { p.dtype.width() };
                matches!(poll.blocks.get(p.slot.request), Some(Err(_)))
                    || poll.bad_at(p.slot.request, p.slot.offset, width).is_some()
            })
            .map(|p| p.full_name.clone())
            .collect();
        match (failing.is_empty(), first) {
            (false, Some(reason)) => DeviceStatus::Degraded { failing, reason },
            (false, None) => DeviceStatus::Degraded {
                failing,
                reason: "some reads failed".into(),
            },
            (true, _) => DeviceStatus::Ok,
        }
    }

    /// The function for writing one `kind` to `dev`: FC 5 / FC 6, or FC 15 / FC 16.
    fn multiple(&self, dev: &WriteTarget, kind: RegisterKind) -> bool {
        match dev.write_function {
            WriteFunction::Single => false,
            WriteFunction::Multiple => true,
            WriteFunction::Auto => self
                .multiple_writes
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .contains(&(dev.device.clone(), kind)),
        }
    }

    /// Write, then read the address back. `Err` means the link is down (the requester has been
    /// answered already). A write is asked again once on a fresh connection when the device had
    /// closed the old one (Modbus writes set absolute values, so a repeat writes the same), and
    /// once with FC 15 / FC 16 after an ILLEGAL FUNCTION to FC 5 / FC 6 under `auto`.
    async fn write(&self, bus: &mut Bus, w: WriteRequest) -> Result<(), String> {
        let op = &w.op;
        // From the sender's model: this link may be running on an older one.
        let dev = &w.target;
        let value = value_text(&op.value);
        let single = match &op.value {
            WriteValue::Coil(_) => true,
            WriteValue::Registers(r) => r.len() == 1,
        };
        let mut multiple = self.multiple(dev, op.kind);
        let mut flipped = false;
        let mut link_down = None;
        let mut reply = Err(Fault::NotConnected);
        for attempt in 0..3 {
            self.before_request(bus, dev).await;
            let r = timeout(
                dev.timeout,
                bus.client.write(op.kind, op.address, &op.value, multiple),
            )
            .await;
            bus.last_frame = Instant::now();
            bus.answered |= matches!(r, Ok(Ok(_)));
            reply = match r {
                Err(_) => {
                    if let Err(e) = self.reopen(bus, dev.unit).await {
                        link_down = Some(e);
                    }
                    Err(Fault::Timeout)
                }
                Ok(Err(LinkError::Closed)) if attempt == 0 => {
                    if let Err(e) = self.reopen(bus, dev.unit).await {
                        link_down = Some(e.clone());
                        Err(Fault::Transport(e))
                    } else {
                        continue;
                    }
                }
                Ok(Err(e @ (LinkError::Transport(_) | LinkError::Closed))) => {
                    link_down = Some(e.to_string());
                    Err(Fault::Transport(e.to_string()))
                }
                // Never retried: the write may have happened. The read-back below is the truth.
                Ok(Err(LinkError::Protocol(e))) => {
                    if let Err(e) = self.reopen(bus, dev.unit).await {
                        link_down = Some(e);
                    }
                    Err(Fault::Transport(format!("bad reply: {e}")))
                }
                // Under `auto`, ILLEGAL FUNCTION to one way of writing a single value tries the
                // other once, and the one that worked is remembered (a device that changed its
                // mind, e.g. after a firmware update, is followed back).
                Ok(Ok(Err(1)))
                    if single && !flipped && dev.write_function == WriteFunction::Auto =>
                {
                    let (single_fc, multiple_fc) = match op.kind {
                        RegisterKind::Coil => (5, 15),
                        _ => (6, 16),
                    };
                    let (from, to) = if multiple {
                        (multiple_fc, single_fc)
                    } else {
                        (single_fc, multiple_fc)
                    };
                    events::write_function_fallback(&dev.device, from, to);
                    let mut learned = self
                        .multiple_writes
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    if multiple {
                        learned.remove(&(dev.device.clone(), op.kind));
                    } else {
                        learned.insert((dev.device.clone(), op.kind));
                    }
                    multiple = !multiple;
                    flipped = true;
                    continue;
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
            break;
        }
        let failure = reply.as_ref().err().map(ToString::to_string);
        let readback = reply.as_ref().ok().map(block_text);
        let outcome = match (&reply, &failure, &readback) {
            (Ok(data), _, Some(text)) if !readback_matches(&op.value, data) => {
                WriteOutcome::Mismatch { readback: text }
            }
            (Ok(_), _, _) => WriteOutcome::Ok,
            (Err(_), Some(reason), _) => WriteOutcome::Failed { reason },
            (Err(_), None, _) => WriteOutcome::Failed { reason: "failed" },
        };
        events::write_done(
            &dev.device,
            &dev.point,
            op.address,
            &value,
            &w.origin,
            outcome,
        );
        let _ = w.reply.send(reply);
        link_down.map_or(Ok(()), Err)
    }
}

/// `holding_register 40000+2 (FC 3)`, for logs and status reasons.
fn describe(r: ReadRequest) -> String {
    format!(
        "{} {}+{} (FC {})",
        r.kind.name(),
        r.start,
        r.count,
        r.kind.read_function()
    )
}

/// The address spans `[start, end)` of the points read by request `ri` of `device`, sorted.
fn spans(model: &Model, device: DeviceId, ri: usize) -> Vec<(u32, u32)> {
    let dev = &model.devices[device];
    let start = u32::from(dev.plan.requests[ri].start);
    let mut out: Vec<(u32, u32)> = dev
        .points
        .iter()
        .map(|&pid| &model.points[pid])
        .filter(|p| p.slot.request == ri)
        .map(|p| {
            let width = if p.kind.is_bit() { 1 } else { p.dtype.width() };
            let a = start + u32::from(p.slot.offset);
            (a, a + u32::from(width))
        })
        .collect();
    out.sort_unstable();
    out
}

/// Split `piece` in two at the point boundary nearest its middle, each part shrunk to the
/// points it holds; `None` when it holds one point (or points that overlap each other).
fn split(piece: ReadRequest, spans: &[(u32, u32)]) -> Option<(ReadRequest, ReadRequest)> {
    let (lo, hi) = (
        u32::from(piece.start),
        u32::from(piece.start) + u32::from(piece.count),
    );
    let inside: Vec<(u32, u32)> = spans
        .iter()
        .copied()
        .filter(|&(a, b)| a >= lo && b <= hi)
        .collect();
    let mid = lo + (hi - lo) / 2;
    let cut = inside
        .iter()
        .map(|&(a, _)| a)
        .filter(|&c| c > inside[0].0 && !inside.iter().any(|&(a, b)| a < c && c < b))
        .min_by_key(|&c| c.abs_diff(mid))?;
    let part = |f: &dyn Fn(&(u32, u32)) -> bool| {
        let s: Vec<_> = inside.iter().filter(|x| f(x)).collect();
        let a = s.iter().map(|x| x.0).min()?;
        let b = s.iter().map(|x| x.1).max()?;
        Some(ReadRequest {
            kind: piece.kind,
            start: u16::try_from(a).ok()?,
            count: u16::try_from(b - a).ok()?,
        })
    };
    Some((part(&|x| x.0 < cut)?, part(&|x| x.0 >= cut)?))
}

/// Put the parts of request `ri` back together: one block, with the refused parts' addresses
/// in `bad`; an error when every part was refused.
fn assemble(
    req: ReadRequest,
    ri: usize,
    leaves: Vec<(ReadRequest, Result<BlockData, u8>)>,
    bad: &mut Vec<BadRange>,
) -> Result<BlockData, Fault> {
    if leaves.len() == 1 && leaves[0].0 == req {
        let (_, r) = leaves.into_iter().next().expect("one leaf");
        return r.map_err(Fault::Exception);
    }
    if let Some(code) = leaves
        .iter()
        .map(|(_, r)| r.as_ref().err().copied())
        .collect::<Option<Vec<u8>>>()
        .and_then(|codes| codes.first().copied())
    {
        return Err(Fault::Exception(code));
    }
    let n = usize::from(req.count);
    let mut block = if req.kind.is_bit() {
        BlockData::Bits(vec![false; n])
    } else {
        BlockData::Words(vec![0; n])
    };
    for (piece, r) in leaves {
        let off = usize::from(piece.start - req.start);
        match (r, &mut block) {
            (Ok(BlockData::Words(w)), BlockData::Words(all)) => {
                let k = w.len().min(n.saturating_sub(off));
                all[off..off + k].copy_from_slice(&w[..k]);
            }
            (Ok(BlockData::Bits(w)), BlockData::Bits(all)) => {
                let k = w.len().min(n.saturating_sub(off));
                all[off..off + k].copy_from_slice(&w[..k]);
            }
            (Ok(_), _) => {}
            (Err(code), _) => bad.push(BadRange {
                request: ri,
                offset: piece.start - req.start,
                len: piece.count,
                fault: Fault::Exception(code),
            }),
        }
    }
    Ok(block)
}

fn block_text(b: &BlockData) -> String {
    match b {
        BlockData::Words(w) => format!("{w:?}"),
        BlockData::Bits(v) => format!("{:?}", v.iter().map(|&x| u8::from(x)).collect::<Vec<_>>()),
    }
}

fn value_text(v: &WriteValue) -> String {
    match v {
        WriteValue::Coil(b) => format_number(f64::from(u8::from(*b))),
        WriteValue::Registers(w) => format!("{w:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(start: u16, count: u16) -> ReadRequest {
        ReadRequest {
            kind: RegisterKind::HoldingRegister,
            start,
            count,
        }
    }

    #[test]
    fn devices_that_start_together_take_even_phases_within_their_interval() {
        let t0 = Instant::now();
        let every = Duration::from_millis(100);
        // Ten devices: the cycle after the first poll comes 100, 90, ..., 10 ms after it.
        let gaps: Vec<Duration> = (0..10).map(|d| phased_due(t0, every, d, 10) - t0).collect();
        let want: Vec<Duration> = (0..10)
            .map(|d| Duration::from_millis(100 - 10 * d))
            .collect();
        assert_eq!(gaps, want);
        // The phases of the ten differ pairwise, and none waits longer than its interval.
        assert!(gaps.iter().all(|g| !g.is_zero() && *g <= every));
        // One device keeps its rhythm; an id past the count wraps; nothing divides by zero.
        assert_eq!(phased_due(t0, every, 0, 1), t0 + every);
        assert_eq!(
            phased_due(t0, every, 13, 10),
            t0 + Duration::from_millis(70)
        );
        assert_eq!(phased_due(t0, every, 0, 0), t0 + every);
        assert_eq!(phased_due(t0, Duration::ZERO, 3, 10), t0);
    }

    #[test]
    fn split_cuts_at_the_point_boundary_nearest_the_middle() {
        // Points: 0 (1 reg), 1-2 (f32), 3 (1), 10 (1) inside a merged read 0+11.
        let spans = [(0, 1), (1, 3), (3, 4), (10, 11)];
        let (a, b) = split(req(0, 11), &spans).unwrap();
        assert_eq!((a, b), (req(0, 3), req(3, 8)));
        // Each part shrinks to its points: the hole 4..10 is no longer read.
        let (a, b) = split(req(3, 8), &spans).unwrap();
        assert_eq!((a, b), (req(3, 1), req(10, 1)));
        // Never through a multi-register value.
        let (a, b) = split(req(0, 3), &spans).unwrap();
        assert_eq!((a, b), (req(0, 1), req(1, 2)));
        let (a, b) = split(req(1, 3), &spans).unwrap();
        assert_eq!((a, b), (req(1, 2), req(3, 1)));
        // One point (or only overlapping ones): nothing to split.
        assert_eq!(split(req(1, 2), &spans), None);
        assert_eq!(split(req(0, 2), &[(0, 2), (1, 2)]), None);
    }

    #[test]
    fn splitting_finds_every_refused_address_and_only_those() {
        // 60 single-register points; the device refuses reads over 50 and address 17.
        let spans: Vec<(u32, u32)> = (0..60).map(|a| (a, a + 1)).collect();
        let refuses = |r: ReadRequest| r.count > 50 || (r.start..r.start + r.count).contains(&17);
        let mut stack = vec![req(0, 60)];
        let mut leaves = Vec::new();
        while let Some(p) = stack.pop() {
            if refuses(p) {
                match split(p, &spans) {
                    Some((a, b)) => {
                        stack.push(b);
                        stack.push(a);
                    }
                    None => leaves.push((p, Err(2))),
                }
            } else {
                leaves.push((
                    p,
                    Ok(BlockData::Words((p.start..p.start + p.count).collect())),
                ));
            }
        }
        // Few requests: a binary search, not one per point.
        assert!(leaves.len() <= 12, "{} parts", leaves.len());
        let mut bad = Vec::new();
        let block = assemble(req(0, 60), 0, leaves, &mut bad).unwrap();
        assert_eq!(
            bad,
            [BadRange {
                request: 0,
                offset: 17,
                len: 1,
                fault: Fault::Exception(2)
            }]
        );
        let BlockData::Words(w) = block else { panic!() };
        for (a, v) in w.iter().enumerate() {
            if a != 17 {
                assert_eq!(usize::from(*v), a);
            }
        }
    }

    #[test]
    fn assemble_reports_a_whole_failure_as_the_block_error() {
        let mut bad = Vec::new();
        let leaves = vec![(req(0, 1), Err(2)), (req(1, 1), Err(2))];
        assert_eq!(
            assemble(req(0, 2), 3, leaves, &mut bad),
            Err(Fault::Exception(2))
        );
        assert!(bad.is_empty());
        let one = vec![(req(0, 2), Ok(BlockData::Words(vec![4, 5])))];
        assert_eq!(
            assemble(req(0, 2), 0, one, &mut bad),
            Ok(BlockData::Words(vec![4, 5]))
        );
    }
}
