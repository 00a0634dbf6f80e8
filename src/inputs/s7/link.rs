//! The task of one S7 link: connect (COTP, setup communication), plan the reads for the PDU
//! size the CPU granted, poll the device on its schedule, run writes ahead of the next poll,
//! and recover.
//!
//! By construction, as for Modbus links (`inputs::link`):
//! - every exchange has the device's timeout; a timeout, a malformed reply or a closed
//!   connection takes the link down: the device goes to `error` (its values stale), and the
//!   connection is opened again with backoff (250 ms doubling to 30 s);
//! - an item the PLC answers with a return code other than 0xFF (0x0A object does not exist,
//!   0x05 address out of range, 0x03 access denied...) marks only the points read by that item
//!   bad, with the code's name; the device is `degraded` while others read (`error` when none
//!   does), and the connection stays up; a request refused as a whole (header error class and
//!   code, e.g. PUT/GET not enabled) marks that request's points bad the same way;
//! - a write goes through the one executor, arrives here as a `WriteRequest`, is written by
//!   WriteVar (one bit with transport size BIT, other types as bytes), then read back by ReadVar;
//!   a write that fails or cannot be confirmed is reported, never retried (the read-back is the
//!   truth);
//! - while the link is down, writes are refused at once: a pump must not start late.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until, timeout};
use tokio_util::sync::CancellationToken;

use super::client::{ConnectOptions, S7Client};
use super::frame::{ITEM_OK, ItemSpec, ReadItem};
use crate::backoff::Backoff;
use crate::events::{self, WriteOutcome};
use crate::inputs::{LinkEvent, WriteRequest};
use crate::mappings::command::{format_number, readback_matches};
use crate::model::{Model, S7Link};
use crate::vocabulary::s7::{self, S7Address, S7Item, S7ReadPlan, S7Type};
use crate::vocabulary::{BlockData, DeviceId, DeviceStatus, Fault, PollResult, WriteValue};

/// The least time allowed for the TCP connect and each handshake step.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// The task of one S7 link (one connection, one device).
#[derive(Debug)]
pub struct S7LinkTask {
    /// Index into `Model::links`.
    pub link: usize,
    pub s7: Arc<S7Link>,
    pub model: Arc<Model>,
    pub events: mpsc::Sender<LinkEvent>,
    pub writes: mpsc::Receiver<WriteRequest>,
    /// Beaten from this task's loop; the systemd watchdog watches it.
    pub beat: crate::supervisor::Heartbeat,
}

/// What the task remembers across connections.
#[derive(Debug, Default)]
struct State {
    status: Option<DeviceStatus>,
    /// Points (by index in the device) whose value the PLC refused in the last poll, and why
    /// (one log line per episode).
    refused: HashMap<usize, String>,
}

enum Stop {
    Shutdown,
    Down(String),
}

impl S7LinkTask {
    fn name(&self) -> &str {
        &self.model.links[self.link].name
    }

    fn device(&self) -> Option<DeviceId> {
        self.model.links[self.link].devices.first().copied()
    }

    /// Run until `shutdown`. A write in flight is finished first.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let Some(device) = self.device() else { return };
        let name = self.name().to_owned();
        let dev_timeout = self.model.devices[device].timeout;
        let opts = ConnectOptions {
            host: self.s7.host.clone(),
            port: self.s7.port,
            local_tsap: self.s7.local_tsap,
            remote_tsap: self.s7.remote_tsap,
            pdu: self.s7.pdu,
            timeout: dev_timeout.max(CONNECT_TIMEOUT),
        };
        let mut state = State::default();
        let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(30));
        loop {
            // Writes keep being answered (refused at once) while the handshake runs: the
            // connect may take seconds, and a pump must not start late.
            let connected = {
                let connect = S7Client::connect(&opts);
                tokio::pin!(connect);
                let mut tick = tokio::time::interval(crate::supervisor::BEAT_EVERY);
                loop {
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        r = &mut connect => break r,
                        _ = tick.tick() => self.beat.beat(),
                        Some(w) = self.writes.recv() => refuse_write(w, &self.s7),
                    }
                }
            };
            let reason = match connected {
                Err(e) => format!(
                    "connect {}:{} ({}): {e}",
                    opts.host, opts.port, self.s7.endpoint
                ),
                Ok(client) => {
                    events::s7_connected(&name, client.pdu());
                    // The backoff is reset only after a whole read cycle succeeded (in
                    // `serve`): a PLC that accepts the connection and then fails every
                    // request must not be reconnected every 250 ms.
                    match self.plan_for(client.pdu()) {
                        Err(e) => e,
                        Ok(plan) => {
                            match self
                                .serve(client, &plan, device, &mut state, &mut backoff, &shutdown)
                                .await
                            {
                                Stop::Shutdown => return,
                                Stop::Down(e) => e,
                            }
                        }
                    }
                }
            };
            self.set_status(device, &mut state, DeviceStatus::Error(reason.clone()))
                .await;
            let delay = backoff.next_delay();
            events::s7_link_down(&name, &reason, delay);
            if self
                .refuse_writes_until(Instant::now() + delay, &shutdown)
                .await
            {
                return;
            }
        }
    }

    /// The reads for the granted PDU size (the compiled plan when it is the one asked for).
    fn plan_for(&self, pdu: u16) -> Result<S7ReadPlan, String> {
        if pdu == self.s7.plan.pdu {
            return Ok(self.s7.plan.clone());
        }
        let addresses: Vec<S7Address> = self.s7.points.iter().map(|(_, a)| *a).collect();
        s7::plan(&addresses, pdu, self.s7.max_gap)
            .map_err(|e| format!("the PLC granted a PDU size of {pdu} bytes: {e}"))
    }

    async fn set_status(&self, device: DeviceId, st: &mut State, status: DeviceStatus) {
        if st.status.as_ref() == Some(&status) {
            return;
        }
        let dev = &self.model.devices[device];
        let reason = match &status {
            DeviceStatus::Ok => "",
            DeviceStatus::Degraded { reason, .. } | DeviceStatus::Error(reason) => reason.as_str(),
        };
        events::device_status(&dev.name, status.as_str(), reason);
        st.status = Some(status.clone());
        let _ = self
            .events
            .send(LinkEvent::Status {
                model: Arc::clone(&self.model),
                name: dev.name.clone(),
                device,
                status,
                at: SystemTime::now(),
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
                Some(w) = self.writes.recv() => refuse_write(w, &self.s7),
            }
        }
    }

    /// Poll and write on an open connection until it fails or shutdown.
    async fn serve(
        &mut self,
        mut client: S7Client,
        plan: &S7ReadPlan,
        device: DeviceId,
        st: &mut State,
        backoff: &mut Backoff,
        shutdown: &CancellationToken,
    ) -> Stop {
        let mut tick = tokio::time::interval(crate::supervisor::BEAT_EVERY);
        let interval = self.model.devices[device].poll_interval;
        let mut due = Instant::now();
        let mut phased = false;
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return Stop::Shutdown,
                _ = tick.tick() => self.beat.beat(),
                Some(w) = self.writes.recv() => {
                    if let Err(e) = self.write(&mut client, w).await {
                        return Stop::Down(e);
                    }
                }
                () = sleep_until(due) => {
                    // A poll (reads only) is abandoned at shutdown; a write is finished.
                    let polled = tokio::select! {
                        biased;
                        () = shutdown.cancelled() => return Stop::Shutdown,
                        r = self.poll(&mut client, plan, device, st) => r,
                    };
                    if let Err(e) = polled {
                        return Stop::Down(e);
                    }
                    backoff.reset();
                    // Keep the rhythm, but never try to catch up a backlog of missed cycles.
                    // The first cycle after connecting takes the device's phase, as on a
                    // Modbus link.
                    let next = if phased {
                        due + interval
                    } else {
                        phased = true;
                        crate::inputs::link::phased_due(
                            due,
                            interval,
                            device,
                            self.model.devices.len(),
                        )
                    };
                    due = next.max(Instant::now());
                }
            }
        }
    }

    /// One poll cycle: every request of the plan, then the status, then the values. `Err`
    /// takes the link down.
    async fn poll(
        &self,
        client: &mut S7Client,
        plan: &S7ReadPlan,
        device: DeviceId,
        st: &mut State,
    ) -> Result<(), String> {
        let dev = &self.model.devices[device];
        let started = Instant::now();
        let read_at = SystemTime::now();
        let mut replies = Vec::with_capacity(plan.requests.len());
        for req in &plan.requests {
            self.beat.beat();
            match timeout(dev.timeout, client.read(&req.items)).await {
                Err(_) => {
                    let what: Vec<String> = req.items.iter().map(ToString::to_string).collect();
                    let reason = format!(
                        "timeout after {:?} reading {}",
                        dev.timeout,
                        what.join(", ")
                    );
                    events::device_fault(&dev.name, &reason);
                    return Err(reason);
                }
                Ok(Err(e)) => {
                    let reason = e.to_string();
                    events::device_fault(&dev.name, &reason);
                    return Err(reason);
                }
                Ok(Ok(r)) => replies.push(r),
            }
        }
        let blocks: Vec<Result<BlockData, Fault>> = plan
            .slots
            .iter()
            .zip(&self.s7.points)
            .enumerate()
            .map(|(i, (slot, (_, addr)))| {
                let more = plan.more.get(i).map_or(&[][..], Vec::as_slice);
                value_of(&replies, slot, more, addr.ty)
            })
            .collect();
        events::poll_done(&dev.name, started.elapsed().as_secs_f64());
        self.report_refusals(device, st, &blocks);
        let status = self.status_of(device, &blocks);
        self.set_status(device, st, status).await;
        let poll = PollResult {
            device,
            read_at,
            first: 0,
            blocks,
            complete: true,
            bad: Vec::new(),
        };
        self.events
            .send(LinkEvent::Poll {
                name: dev.name.clone(),
                model: Arc::clone(&self.model),
                poll,
            })
            .await
            .map_err(|_| "shutting down".to_owned())
    }

    /// One log line per episode of a refused value: when it starts, and when it reads again.
    fn report_refusals(
        &self,
        device: DeviceId,
        st: &mut State,
        blocks: &[Result<BlockData, Fault>],
    ) {
        let dev = &self.model.devices[device];
        let now: HashMap<usize, String> = blocks
            .iter()
            .enumerate()
            .filter_map(|(i, b)| b.as_ref().err().map(|f| (i, f.to_string())))
            .collect();
        // One line per fault and episode, naming every point it hit (a CPU refusing PUT/GET
        // refuses every request: one line, not one per point).
        let mut started: std::collections::BTreeMap<&str, Vec<usize>> = Default::default();
        for (i, fault) in &now {
            if st.refused.get(i) != Some(fault) {
                started.entry(fault.as_str()).or_default().push(*i);
            }
        }
        let names = |ix: &mut Vec<usize>| {
            ix.sort_unstable();
            let points: Vec<&str> = ix.iter().map(|&i| &*self.s7.points[i].0).collect();
            let addrs: Vec<String> = ix
                .iter()
                .map(|&i| self.s7.points[i].1.to_string())
                .collect();
            (points.join(", "), addrs.join(", "))
        };
        for (fault, mut ix) in started {
            let (points, addrs) = names(&mut ix);
            events::s7_item_fault(&dev.name, &points, &addrs, fault, true);
        }
        let mut ended: Vec<usize> = st
            .refused
            .keys()
            .filter(|i| !now.contains_key(i))
            .copied()
            .collect();
        if !ended.is_empty() {
            let (points, addrs) = names(&mut ended);
            events::s7_item_fault(&dev.name, &points, &addrs, "", false);
        }
        st.refused = now;
    }

    /// `error` when no value could be read, `degraded` (with the failing points and the
    /// first reason) when some could, else `ok`.
    fn status_of(&self, device: DeviceId, blocks: &[Result<BlockData, Fault>]) -> DeviceStatus {
        let dev = &self.model.devices[device];
        let mut failing = Vec::new();
        let mut first = None;
        for (i, b) in blocks.iter().enumerate() {
            if let Err(f) = b {
                let pid = dev.points[i];
                failing.push(self.model.points[pid].full_name.clone());
                first.get_or_insert_with(|| format!("{} reading {}", f, self.s7.points[i].1));
            }
        }
        match first {
            None => DeviceStatus::Ok,
            Some(reason) if failing.len() == blocks.len() => DeviceStatus::Error(reason),
            Some(reason) => DeviceStatus::Degraded { failing, reason },
        }
    }

    /// Write, then read the value back. `Err` means the link is down (the requester has been
    /// answered already).
    async fn write(&self, client: &mut S7Client, w: WriteRequest) -> Result<(), String> {
        let t = &w.target;
        let value = value_text(&w.op.value);
        let mut link_down = None;
        let found = self
            .s7
            .points
            .iter()
            .find(|(n, _)| **n == *t.point)
            .map(|(_, a)| *a);
        let reply: Result<BlockData, Fault> = match found {
            None => Err(Fault::Transport(format!(
                "point `{}` is not read by this S7 link",
                t.point
            ))),
            Some(addr) => match s7::to_bytes(addr.ty, &w.op.value) {
                Err(e) => Err(Fault::Transport(format!("not written: {e}"))),
                Ok(bytes) => {
                    let spec = match addr.ty {
                        S7Type::Bool(bit) => ItemSpec::bit(addr.area, addr.byte, bit),
                        ty => ItemSpec::bytes(&S7Item {
                            area: addr.area,
                            start: addr.byte,
                            len: ty.bytes(),
                        }),
                    };
                    match timeout(t.timeout, client.write(spec, &bytes)).await {
                        Err(_) => {
                            link_down =
                                Some(format!("timeout after {:?} writing {addr}", t.timeout));
                            Err(Fault::Timeout)
                        }
                        Ok(Err(e)) => {
                            link_down = Some(e.to_string());
                            Err(Fault::Transport(e.to_string()))
                        }
                        Ok(Ok(Err((class, code)))) => Err(Fault::S7Refused(class, code)),
                        Ok(Ok(Ok(code))) if code != ITEM_OK => Err(Fault::S7Item(code)),
                        Ok(Ok(Ok(_))) => {
                            let r = self.read_back(client, addr, t.timeout).await;
                            if let Err((_, Some(e))) = &r {
                                link_down = Some(e.clone());
                            }
                            r.map_err(|(f, _)| f)
                        }
                    }
                }
            },
        };
        let failure = reply.as_ref().err().map(ToString::to_string);
        let readback = reply.as_ref().ok().map(block_text);
        let outcome = match (&reply, &failure, &readback) {
            (Ok(data), _, Some(text)) if !readback_matches(&w.op.value, data) => {
                WriteOutcome::Mismatch { readback: text }
            }
            (Ok(_), _, _) => WriteOutcome::Ok,
            (Err(_), Some(reason), _) => WriteOutcome::Failed { reason },
            (Err(_), None, _) => WriteOutcome::Failed { reason: "failed" },
        };
        events::s7_write_done(
            &t.device,
            &t.point,
            &found.map_or_else(|| "?".to_owned(), |a| a.to_string()),
            &value,
            &w.origin,
            outcome,
        );
        let _ = w.reply.send(reply);
        link_down.map_or(Ok(()), Err)
    }

    /// Read one value alone; on failure the fault and, when the link is down, why.
    async fn read_back(
        &self,
        client: &mut S7Client,
        addr: S7Address,
        limit: Duration,
    ) -> Result<BlockData, (Fault, Option<String>)> {
        let item = S7Item {
            area: addr.area,
            start: addr.byte,
            len: addr.ty.bytes(),
        };
        match timeout(limit, client.read(&[item])).await {
            Err(_) => Err((
                Fault::Timeout,
                Some(format!("timeout after {limit:?} reading back {addr}")),
            )),
            Ok(Err(e)) => Err((Fault::Transport(e.to_string()), Some(e.to_string()))),
            Ok(Ok(Err((class, code)))) => Err((Fault::S7Refused(class, code), None)),
            Ok(Ok(Ok(items))) => {
                let slot = s7::S7Slot::default();
                value_of(&[Ok(items)], &slot, &[], addr.ty).map_err(|f| (f, None))
            }
        }
    }
}

/// Answer a write at once with "device not connected" (the link is down or connecting).
fn refuse_write(w: WriteRequest, s7: &S7Link) {
    let t = &w.target;
    events::s7_write_done(
        &t.device,
        &t.point,
        &address_text(s7, &t.point),
        &value_text(&w.op.value),
        &w.origin,
        WriteOutcome::Failed {
            reason: "device not connected",
        },
    );
    let _ = w.reply.send(Err(Fault::NotConnected));
}

/// The S7 address of `point` on this link, in S7 notation (`?` when it has none).
fn address_text(s7: &S7Link, point: &str) -> String {
    s7.points
        .iter()
        .find(|(n, _)| **n == *point)
        .map_or_else(|| "?".to_owned(), |(_, a)| a.to_string())
}

/// The value at `slot` of a cycle's replies, as register-shaped data, or the fault that
/// stands for it.
/// `more` are the slots of the further pieces of a value split over several items (see
/// `S7ReadPlan::more`), joined in order after the first.
fn value_of(
    replies: &[Result<Vec<ReadItem>, (u8, u8)>],
    slot: &s7::S7Slot,
    more: &[s7::S7Slot],
    ty: S7Type,
) -> Result<BlockData, Fault> {
    let mut bytes = Vec::new();
    for piece in std::iter::once(slot).chain(more) {
        match replies.get(piece.request) {
            None => return Err(Fault::NotConnected),
            Some(Err((class, code))) => return Err(Fault::S7Refused(*class, *code)),
            Some(Ok(items)) => match items.get(piece.item) {
                None => return Err(Fault::Transport("the reply lacks an item".into())),
                Some(it) if it.code != ITEM_OK => return Err(Fault::S7Item(it.code)),
                Some(it) => match it.data.get(usize::from(piece.offset)..) {
                    Some(b) => bytes.extend_from_slice(b),
                    None => {
                        return Err(Fault::Transport(
                            "the reply is shorter than the value".into(),
                        ));
                    }
                },
            },
        }
    }
    s7::to_block(ty, &bytes)
        .ok_or_else(|| Fault::Transport("the reply is shorter than the value".into()))
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
