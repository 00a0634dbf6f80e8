//! The command executor: the one path by which anything is written to a device.
//!
//! Does: open encrypted commands (freshness, replay), let the command router parse and
//! validate them, hand each write to its device's link task, wait for the read-back, and
//! publish the ack. One command at a time, with its origin in the log. Must not: parse command
//! payloads itself (that is `mappings::command`), talk Modbus, or touch the MQTT client.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::json;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::events;
use crate::handoff::hand_off;
use crate::inputs::{WriteRequest, WriteTarget};
use crate::mappings::command::{CommandError, Router, printable, readback_matches};
use crate::mappings::engine::decode_at;
use crate::mappings::sparkplug;
use crate::model::Model;
use crate::northbound::SessionEvent;
use crate::northbound::points::render_plain;
use crate::outputs::mqtt::IncomingCommand;
use crate::vocabulary::{BlockData, Fault, Publication, WriteOp, timestamp};

/// What the executor works from; replaced as a whole on reload.
#[derive(Debug)]
pub struct Snapshot {
    model: Arc<Model>,
    router: Router,
    /// Device name -> the queue of its link task.
    writers: HashMap<Arc<str>, mpsc::Sender<WriteRequest>>,
}

impl Snapshot {
    /// The executor's view of `model`, writing through `writers` (device name -> link queue).
    pub fn new(
        model: &Arc<Model>,
        writers: HashMap<Arc<str>, mpsc::Sender<WriteRequest>>,
    ) -> Arc<Self> {
        Arc::new(Snapshot {
            model: Arc::clone(model),
            router: Router::new(Arc::clone(model)),
            writers,
        })
    }
}

fn rejection_kind(e: &CommandError) -> &'static str {
    match e {
        CommandError::Retained => "retained",
        CommandError::UnknownTopic => "unknown_topic",
        CommandError::UnknownPayload(..) => "unknown_payload",
        CommandError::TooLong | CommandError::NotUtf8 | CommandError::NotAValue(_) => "malformed",
        CommandError::OutOfRange { .. } | CommandError::Encode(_) => "out_of_range",
        CommandError::WrongType { .. } => "wrong_type",
    }
}

/// Encrypted commands older (or newer) than this are refused: a captured command cannot be
/// replayed later.
const COMMAND_MAX_AGE: Duration = Duration::from_secs(30);

/// Remembers the nonces of recent encrypted commands, so that a captured one is not replayed
/// within [`COMMAND_MAX_AGE`].
#[derive(Default)]
struct ReplayGuard {
    seen: std::collections::VecDeque<(SystemTime, Vec<u8>)>,
}

impl ReplayGuard {
    fn open(
        &mut self,
        enc: &crate::model::Encryption,
        topic: &str,
        envelope: &[u8],
        now: SystemTime,
    ) -> Result<Vec<u8>, String> {
        use crate::mappings::envelope;
        let (ts, plain) = envelope::open(&enc.key.0, topic, envelope).map_err(|e| e.to_string())?;
        let sent = SystemTime::UNIX_EPOCH + Duration::from_millis(ts);
        let age = now.duration_since(sent).unwrap_or_else(|e| e.duration());
        if age > COMMAND_MAX_AGE {
            return Err(format!(
                "stale: sent {} s from now (at most {} s allowed)",
                age.as_secs(),
                COMMAND_MAX_AGE.as_secs()
            ));
        }
        while self
            .seen
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t).unwrap_or_default() > COMMAND_MAX_AGE * 2)
        {
            self.seen.pop_front();
        }
        let nonce = envelope[1..1 + envelope::NONCE_LEN].to_vec();
        if self.seen.iter().any(|(_, n)| *n == nonce) {
            return Err("replayed: this exact message was already received".into());
        }
        self.seen.push_back((now, nonce));
        Ok(plain)
    }
}

/// Hand one checked write to its device's link task and wait for the read-back; `None` when
/// the device has no link (it was removed by a reload).
async fn write(
    snap: &Snapshot,
    op: WriteOp,
    origin: &Arc<str>,
) -> Option<Result<BlockData, Fault>> {
    let point = &snap.model.points[op.point];
    let device = &snap.model.devices[op.device];
    let writer = snap.writers.get(&device.name)?;
    let (reply_tx, reply_rx) = oneshot::channel();
    let device_timeout = device.timeout;
    let target = WriteTarget::of(device, point.name.clone());
    let req = WriteRequest {
        op,
        target,
        origin: origin.clone(),
        reply: reply_tx,
    };
    Some(if writer.send(req).await.is_err() {
        Err(Fault::NotConnected)
    } else {
        // The link answers within two device timeouts (write + read-back); the margin
        // only guards against a link task that has gone away.
        match tokio::time::timeout(device_timeout * 2 + Duration::from_secs(5), reply_rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(Fault::NotConnected),
            Err(_) => Err(Fault::Timeout),
        }
    })
}

/// A message on a Sparkplug topic the node claims: NCMD and STATE go to the profile; a DCMD's
/// metrics are checked (`mappings::sparkplug::dcmd_writes`), each accepted one written and
/// read back like any other command, the refused ones logged and counted, and the outcome of
/// every metric goes to the profile, which publishes the read-back (or, refused, the value
/// the device still has) in DDATA.
async fn sparkplug_command(
    snap: &Snapshot,
    spb: &crate::model::Sparkplug,
    cmd: &IncomingCommand,
    signals: &mpsc::UnboundedSender<SessionEvent>,
) {
    let dcmd_prefix = spb.device_topic("DCMD", "");
    let Some(device_id) = cmd.topic.strip_prefix(&dcmd_prefix) else {
        let _ = signals.send(SessionEvent::Message {
            topic: Arc::from(cmd.topic.as_str()),
            payload: cmd.payload.to_vec(),
            retain: cmd.retain,
        });
        return;
    };
    let started = Instant::now();
    let refuse = |reason: &str, kind| events::command_rejected(&cmd.topic, "", reason, kind);
    if !spb.born.load(std::sync::atomic::Ordering::Acquire) {
        return refuse(
            "the edge node is not born (no session yet, or the primary host is offline): a DCMD now can only come from an old birth certificate",
            "not_born",
        );
    }
    let Some(device) = spb.devices.iter().find(|d| *d.device_id == *device_id) else {
        return refuse(
            &format!("unknown Sparkplug device id `{}`", printable(device_id)),
            "unknown_topic",
        );
    };
    let payload = match sparkplug::decode_command(&cmd.payload, cmd.retain) {
        Ok(p) => p,
        Err(e) => {
            let kind = if matches!(e, sparkplug::SparkplugCommandError::Retained) {
                "retained"
            } else {
                "malformed"
            };
            return refuse(&e.to_string(), kind);
        }
    };
    let origin: Arc<str> = Arc::from(format!("sparkplug:{}", cmd.topic));
    let mut points = Vec::new();
    for w in sparkplug::dcmd_writes(&snap.model, device, &payload) {
        let op = match w.write {
            Ok(op) => op,
            Err(e) => {
                let reason = match e {
                    CommandError::UnknownTopic => "not a writable metric of this device".to_owned(),
                    e => e.to_string(),
                };
                events::command_rejected(&cmd.topic, &w.label, &reason, "sparkplug_metric");
                if let Some(p) = w.point {
                    points.push((p, None));
                }
                continue;
            }
        };
        events::command_accepted(&cmd.topic, &w.label);
        let point = &snap.model.points[op.point];
        let pid = op.point;
        let written = op.value.clone();
        let readback = match write(snap, op, &origin).await {
            Some(Ok(data)) if readback_matches(&written, &data) => decode_at(point, &data, 0),
            Some(Ok(data)) => {
                let v = decode_at(point, &data, 0).map(|v| render_plain(&v, point.decimals));
                events::command_rejected(
                    &cmd.topic,
                    &w.label,
                    &format!(
                        "read-back {} does not match the written value",
                        v.unwrap_or_default()
                    ),
                    "readback_mismatch",
                );
                decode_at(point, &data, 0)
            }
            Some(Err(f)) => {
                events::command_rejected(&cmd.topic, &w.label, &f.to_string(), "write_failed");
                None
            }
            None => None,
        };
        points.push((pid, readback));
    }
    events::command_done(started.elapsed().as_secs_f64());
    let _ = signals.send(SessionEvent::Written { points });
}

/// What the web console asks of the executor.
#[derive(Debug, Clone, PartialEq)]
pub enum WebRequest {
    /// A configured command, exactly as an MQTT client would send it: its topic and payload
    /// (`startp1`, or a value).
    Command { topic: String, payload: String },
    /// A value (as text: `55`, `true`) for a writable point, by its `device.point` name. When a
    /// value command writes that point, its ack topic gets the ack as well.
    Point { point: String, value: String },
}

/// A write from the web console, by the authenticated `user`; the ack body comes back on
/// `reply` (and goes to the MQTT ack topic when the command has one).
#[derive(Debug)]
pub struct WebCommand {
    pub request: WebRequest,
    pub user: Arc<str>,
    pub reply: oneshot::Sender<serde_json::Value>,
}

/// Write every op of an accepted command in order, read each back, and return the ack body:
/// `result` `ok` with the read-back values, or `error` with the first failure (the writes
/// after it are not made).
async fn execute(
    snap: &Snapshot,
    accepted: crate::mappings::command::Accepted,
    origin: &Arc<str>,
) -> serde_json::Value {
    let model = &snap.model;
    let started = Instant::now();
    let mut readback = HashMap::new();
    let mut failure: Option<String> = None;
    for op in accepted.writes {
        let point = &model.points[op.point];
        let written = op.value.clone();
        let Some(result) = write(snap, op, origin).await else {
            continue;
        };
        match result {
            Ok(data) if readback_matches(&written, &data) => {
                let v = decode_at(point, &data, 0).map(|v| render_plain(&v, point.decimals));
                readback.insert(point.full_name.to_string(), v);
            }
            Ok(data) => {
                let v = decode_at(point, &data, 0).map(|v| render_plain(&v, point.decimals));
                failure = Some(format!(
                    "{}: read-back {} does not match the written value",
                    point.full_name,
                    v.unwrap_or_default()
                ));
                break;
            }
            Err(f) => {
                failure = Some(format!("{}: {f}", point.full_name));
                break;
            }
        }
    }
    events::command_done(started.elapsed().as_secs_f64());
    match &failure {
        None => {
            json!({"command": accepted.label, "result": "ok", "readback": readback, "ts": timestamp(SystemTime::now())})
        }
        Some(reason) => {
            json!({"command": accepted.label, "result": "error", "reason": reason, "ts": timestamp(SystemTime::now())})
        }
    }
}

/// The ack publication of command `ci` of `model`.
fn ack_publication(model: &Model, ci: usize, body: &serde_json::Value) -> Publication {
    let c = &model.commands[ci];
    Publication {
        topic: c.ack_topic.clone(),
        payload: body.to_string().into_bytes(),
        qos: c.qos,
        retain: false,
        created_at: SystemTime::now(),
    }
}

/// One write from the web console: checked by the same router as an MQTT command (or, for a
/// point, by the same value rules), written, read back and acknowledged, with origin
/// `web:<user>`. Returns the ack body.
async fn web_command(
    snap: &Snapshot,
    cmd: &WebCommand,
    out: &mpsc::Sender<Publication>,
) -> serde_json::Value {
    let (model, router) = (&snap.model, &snap.router);
    let origin: Arc<str> = Arc::from(format!("web:{}", cmd.user));
    let (parsed, what) = match &cmd.request {
        WebRequest::Command { topic, payload } => (
            router.parse(topic, payload.as_bytes(), false),
            (printable(topic), printable(payload)),
        ),
        WebRequest::Point { point, value } => (
            router.parse_point(point, value),
            (printable(point), printable(value)),
        ),
    };
    let (ci, body) = match parsed {
        Err((ci, e)) => {
            let reason = match (&cmd.request, &e) {
                (WebRequest::Point { .. }, CommandError::UnknownTopic) => {
                    "not a writable point".to_owned()
                }
                _ => e.to_string(),
            };
            events::command_rejected_from(&origin, &what.0, &what.1, &reason, rejection_kind(&e));
            let body = json!({"command": what.1, "result": "rejected", "reason": reason, "ts": timestamp(SystemTime::now())});
            (ci, body)
        }
        Ok(accepted) => {
            events::command_accepted(&what.0, &accepted.label);
            events::web_command(&origin, &what.0, &accepted.label);
            let ci = Some(accepted.command).filter(|&c| c != crate::mappings::command::NO_COMMAND);
            (ci, execute(snap, accepted, &origin).await)
        }
    };
    events::command_acked(&origin, &body);
    if let Some(ci) = ci {
        hand_off(out, ack_publication(model, ci, &body)).await;
    }
    body
}

/// Run commands from `commands` one at a time until `stop` is cancelled; see the module docs.
/// Sparkplug NCMD, STATE and write outcomes go to the profiles through `signals`.
pub async fn run_executor(
    snapshots: tokio::sync::watch::Receiver<Arc<Snapshot>>,
    commands: mpsc::Receiver<IncomingCommand>,
    out: mpsc::Sender<Publication>,
    signals: mpsc::UnboundedSender<SessionEvent>,
    stop: CancellationToken,
) {
    run_executor_with_web(snapshots, commands, None, out, signals, stop).await;
}

/// [`run_executor`], also taking the web console's writes from `web`, in the same queue: one
/// command at a time, whichever source it comes from.
pub async fn run_executor_with_web(
    snapshots: tokio::sync::watch::Receiver<Arc<Snapshot>>,
    mut commands: mpsc::Receiver<IncomingCommand>,
    mut web: Option<mpsc::Receiver<WebCommand>>,
    out: mpsc::Sender<Publication>,
    signals: mpsc::UnboundedSender<SessionEvent>,
    stop: CancellationToken,
) {
    let mut replays = ReplayGuard::default();
    loop {
        let web_next = async {
            match web.as_mut() {
                Some(w) => w.recv().await,
                None => std::future::pending().await,
            }
        };
        let mut cmd = tokio::select! {
            () = stop.cancelled() => return,
            c = commands.recv() => match c { Some(c) => c, None => return },
            Some(w) = web_next => {
                let snap = Arc::clone(&snapshots.borrow());
                let body = web_command(&snap, &w, &out).await;
                let _ = w.reply.send(body);
                continue;
            }
        };
        let snap = Arc::clone(&snapshots.borrow());
        let (model, router) = (&snap.model, &snap.router);
        if let Some(spb) = &model.sparkplug
            && (cmd.topic == spb.node_topic("NCMD")
                || spb.state_topic().is_some_and(|t| t == cmd.topic)
                || cmd.topic.starts_with(&spb.device_topic("DCMD", "")))
        {
            sparkplug_command(&snap, spb, &cmd, &signals).await;
            continue;
        }
        let encrypted = model
            .mqtt
            .encryption
            .as_ref()
            .filter(|e| e.covers(&cmd.topic, &model.mqtt.status_topic));
        let mut text = printable(&String::from_utf8_lossy(&cmd.payload));
        let origin: Arc<str> = Arc::from(format!("mqtt:{}", cmd.topic));
        let ack = |ci: usize, body: serde_json::Value| {
            events::command_acked(&origin, &body);
            ack_publication(model, ci, &body)
        };
        if let Some(enc) = encrypted {
            // Only a payload that authenticates, is fresh and was not seen before goes on.
            match replays.open(enc, &cmd.topic, &cmd.payload, SystemTime::now()) {
                Ok(plain) => {
                    text = printable(&String::from_utf8_lossy(&plain));
                    cmd.payload = plain.into();
                }
                Err(reason) => {
                    events::command_rejected(&cmd.topic, "<encrypted>", &reason, "not_authentic");
                    if let Some(ci) = router.command_for(&cmd.topic) {
                        hand_off(
                            &out,
                            ack(
                                ci,
                                json!({"result": "rejected", "reason": reason, "ts": timestamp(SystemTime::now())}),
                            ),
                        )
                        .await;
                    }
                    continue;
                }
            }
        }
        let accepted = match router.parse(&cmd.topic, &cmd.payload, cmd.retain) {
            Ok(a) => a,
            Err((ci, e)) => {
                events::command_rejected(&cmd.topic, &text, &e.to_string(), rejection_kind(&e));
                if let Some(ci) = ci {
                    hand_off(
                        &out,
                        ack(
                            ci,
                            json!({"command": text, "result": "rejected", "reason": e.to_string(), "ts": timestamp(SystemTime::now())}),
                        ),
                    )
                    .await;
                }
                continue;
            }
        };
        events::command_accepted(&cmd.topic, &accepted.label);
        let ci = accepted.command;
        let body = execute(&snap, accepted, &origin).await;
        hand_off(&out, ack(ci, body)).await;
    }
}
