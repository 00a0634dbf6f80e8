//! `run`: wires the link tasks, the mapping engine, the command executor and the MQTT client,
//! and shuts them down in order.
//!
//! Shutdown order: stop taking commands (the one in flight finishes), stop the links (a write
//! in flight finishes), drain the engine, then MQTT publishes `offline` and disconnects.
//!
//! Reload (SIGHUP, `--watch`): the new file is validated in full first; if it is invalid, or
//! changes the `mqtt` or `metrics` section, the old configuration keeps running. Otherwise the
//! MQTT session stays up, links whose behaviour is unchanged keep polling without a gap,
//! changed ones restart, removed ones stop and their retained device status is cleared. The
//! result goes to the log and, retained, to `<status_topic>/reload`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::json;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::events;
use crate::inputs::link::Link;
use crate::inputs::{LinkEvent, WriteRequest, WriteTarget};
use crate::mappings::command::{CommandError, Router, printable, readback_matches};
use crate::mappings::engine::{Engine, decode_at, render_plain, timestamp};
use crate::mappings::{Fault, Publication};
use crate::model::Model;
use crate::outputs::mqtt::{self, IncomingCommand};

/// Publications between the engine or executor and the MQTT task, which drains them into the
/// buffer as they come.
const HANDOFF: usize = 4096;

/// What the executor works from; replaced as a whole on reload.
#[derive(Debug)]
struct Snapshot {
    model: Arc<Model>,
    router: Router,
    /// Device name -> the queue of its link task.
    writers: HashMap<Arc<str>, mpsc::Sender<WriteRequest>>,
}

/// A running link task.
#[derive(Debug)]
struct Running {
    /// What the task's behaviour depends on (see [`link_signature`]).
    signature: String,
    devices: Vec<Arc<str>>,
    writer: mpsc::Sender<WriteRequest>,
    stop: CancellationToken,
    done: tokio::task::JoinHandle<()>,
}

/// Everything a link task's behaviour depends on: the link and, for each of its devices, the
/// name, unit, timeout, poll interval and read plan. Equal signatures across a reload mean the
/// task can keep running on its old model without a gap.
fn link_signature(m: &Model, link: usize) -> String {
    let l = &m.links[link];
    let devices: Vec<String> = l
        .devices
        .iter()
        .map(|&d| {
            let d = &m.devices[d];
            format!(
                "{}|{}|{:?}|{:?}|{:?}",
                d.name, d.unit, d.timeout, d.poll_interval, d.plan.requests
            )
        })
        .collect();
    format!(
        "{}|{:?}|{:?}|{:?}|{}|{:?}|{devices:?}",
        l.name, l.spec, l.frame_gap, l.turnaround, l.quarantine_after, l.quarantine_max
    )
}

fn start_link(model: &Arc<Model>, link: usize, events: &mpsc::Sender<LinkEvent>) -> Running {
    let l = &model.links[link];
    let (writer, writes) = mpsc::channel(16);
    let stop = CancellationToken::new();
    let task = Link {
        link,
        model: Arc::clone(model),
        events: events.clone(),
        writes,
        beat: crate::supervisor::heartbeat(format!("link {}", l.name)),
        multiple_writes: Default::default(),
    };
    Running {
        signature: link_signature(model, link),
        devices: l
            .devices
            .iter()
            .map(|&d| model.devices[d].name.clone())
            .collect(),
        writer,
        done: tokio::spawn(task.run(stop.clone())),
        stop,
    }
}

fn snapshot(model: &Arc<Model>, running: &[Running]) -> Arc<Snapshot> {
    let mut writers = HashMap::new();
    for r in running {
        for d in &r.devices {
            writers.insert(d.clone(), r.writer.clone());
        }
    }
    Arc::new(Snapshot {
        model: Arc::clone(model),
        router: Router::new(Arc::clone(model)),
        writers,
    })
}

fn group_configurations(model: &Model) -> Vec<Publication> {
    model
        .groups
        .iter()
        .filter_map(|g| crate::mappings::group::configuration_publication(g, SystemTime::now()))
        .collect()
}

/// Where reloads come from: the mapping file, and a stream of "read it again" requests
/// (SIGHUP, `--watch`).
#[derive(Debug)]
pub struct Reloads {
    pub path: PathBuf,
    pub requests: mpsc::Receiver<()>,
}

/// Reload requests on SIGHUP, and, with `watch`, when the file's modification time or size
/// changes (checked every second).
pub fn reload_requests(path: PathBuf, watch: bool, shutdown: CancellationToken) -> Reloads {
    let (tx, requests) = mpsc::channel(4);
    let watched = path.clone();
    tokio::spawn(async move {
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP");
                None
            }
        };
        let stamp = |p: &Path| {
            std::fs::metadata(p)
                .ok()
                .map(|m| (m.modified().ok(), m.len()))
        };
        let mut last = stamp(&watched);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                    let _ = tx.try_send(());
                }
                _ = tick.tick(), if watch => {
                    let now = stamp(&watched);
                    if now != last {
                        last = now;
                        let _ = tx.try_send(());
                    }
                }
            }
        }
    });
    Reloads { path, requests }
}

/// Run the gateway until `shutdown` is cancelled.
pub async fn run(model: Arc<Model>, shutdown: CancellationToken) -> anyhow::Result<()> {
    run_reloadable(model, None, shutdown).await
}

/// Run the gateway, applying `reloads` as they come, until `shutdown` is cancelled.
pub async fn run_reloadable(
    mut model: Arc<Model>,
    mut reloads: Option<Reloads>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    if let Some(addr) = model.metrics_listen {
        crate::telemetry::serve_metrics(addr, shutdown.clone())
            .await
            .map_err(|e| anyhow::anyhow!("metrics listener on {addr}: {e}"))?;
    }
    let (out_tx, out_rx) = mpsc::channel::<Publication>(HANDOFF);
    let (cmd_tx, cmd_rx) = mpsc::channel::<IncomingCommand>(64);
    // Retained group configurations go out after every connect, like `online`.
    let mqtt = mqtt::start(
        &model.mqtt,
        model.subscriptions(),
        group_configurations(&model),
        out_rx,
        cmd_tx,
    );

    // One task per link (a TCP connection or an RTU bus), as compiled into the model.
    let (ev_tx, ev_rx) = mpsc::channel::<LinkEvent>(256);
    let mut running: Vec<Running> = (0..model.links.len())
        .map(|l| start_link(&model, l, &ev_tx))
        .collect();

    let (engine_tx, engine_rx) = mpsc::channel::<Arc<Model>>(1);
    let engine = tokio::spawn(run_engine(
        Arc::clone(&model),
        ev_rx,
        engine_rx,
        out_tx.clone(),
    ));
    let (snap_tx, snap_rx) = tokio::sync::watch::channel(snapshot(&model, &running));
    let executor_stop = CancellationToken::new();
    let executor = tokio::spawn(run_executor(
        snap_rx,
        cmd_rx,
        out_tx.clone(),
        executor_stop.clone(),
    ));

    // The mapping is loaded and every link is making its first connection attempt.
    crate::supervisor::notify_ready();
    crate::supervisor::spawn_watchdog(shutdown.clone());

    loop {
        let request = async {
            match reloads.as_mut() {
                Some(r) => r.requests.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => break,
            Some(()) = request => {
                let Some(r) = reloads.as_ref() else { continue };
                let path = r.path.clone();
                let _ = sd_reloading();
                if let Some(new) = reload(&path, &model, &mut running, &ev_tx, &mqtt, &out_tx).await {
                    let _ = engine_tx.send(Arc::clone(&new)).await;
                    let _ = snap_tx.send(snapshot(&new, &running));
                    model = new;
                }
                crate::supervisor::notify_ready();
            }
        }
    }

    crate::supervisor::notify_stopping();
    tracing::info!("shutting down");
    executor_stop.cancel();
    let _ = executor.await;
    for r in &running {
        r.stop.cancel();
    }
    for r in running {
        let _ = r.done.await;
    }
    drop(ev_tx);
    drop(engine_tx);
    let _ = engine.await;
    // The last sender: with it gone the publisher sees the end of the stream, says `offline`
    // and disconnects as soon as the buffer is delivered, instead of waiting out the grace.
    drop(out_tx);
    mqtt.shutdown(mqtt::SHUTDOWN_GRACE).await;
    tracing::info!("stopped");
    Ok(())
}

fn sd_reloading() -> std::io::Result<()> {
    sd_notify::notify(&[sd_notify::NotifyState::Reloading])
}

/// Apply a changed mapping file. Returns the new model, or `None` (old config kept) when the
/// file is invalid or changes what cannot change without a restart.
async fn reload(
    path: &Path,
    old: &Arc<Model>,
    running: &mut Vec<Running>,
    events: &mpsc::Sender<LinkEvent>,
    mqtt: &mqtt::MqttOutput,
    out: &mpsc::Sender<Publication>,
) -> Option<Arc<Model>> {
    let report_topic: Arc<str> = Arc::from(format!("{}/reload", old.mqtt.status_topic));
    let report = |body: serde_json::Value| Publication {
        topic: report_topic.clone(),
        payload: body.to_string().into_bytes(),
        qos: crate::mappings::Qos::AtLeastOnce,
        retain: true,
        created_at: SystemTime::now(),
    };
    let rejected = |errors: Vec<String>| {
        for e in &errors {
            tracing::error!(error = %e, "reload rejected");
        }
        enqueue(
            out,
            report(
                json!({"result": "rejected", "errors": errors, "ts": timestamp(SystemTime::now())}),
            ),
        );
        None
    };
    let new = match crate::config::load(path) {
        Ok(m) => Arc::new(m),
        Err(crate::config::ConfigError::Invalid { issues, .. }) => {
            let e = crate::config::ConfigError::Invalid {
                path: path.to_owned(),
                issues,
            };
            return rejected(e.to_string().lines().map(str::to_owned).collect());
        }
        Err(e) => return rejected(vec![e.to_string()]),
    };
    let m = (&new.mqtt, &old.mqtt);
    if m.0.host != m.1.host
        || m.0.port != m.1.port
        || m.0.client_id != m.1.client_id
        || m.0.keep_alive != m.1.keep_alive
        || m.0.status_topic != m.1.status_topic
        || m.0.buffer != m.1.buffer
        || m.0.v5 != m.1.v5
        || m.0.tls != m.1.tls
        || m.0.credentials != m.1.credentials
        || m.0.encryption != m.1.encryption
        || new.metrics_listen != old.metrics_listen
    {
        return rejected(vec![format!(
            "{}: the mqtt or metrics section changed; that needs a restart (the MQTT session is kept on reload)",
            path.display()
        )]);
    }

    // Keep the links whose behaviour is unchanged; stop the others; start the new ones.
    let mut kept = Vec::new();
    let mut stopped = 0;
    let mut pool: Vec<Running> = std::mem::take(running);
    let wanted: Vec<String> = (0..new.links.len())
        .map(|l| link_signature(&new, l))
        .collect();
    for (l, sig) in wanted.iter().enumerate() {
        if let Some(i) = pool.iter().position(|r| &r.signature == sig) {
            kept.push((l, pool.swap_remove(i)));
        }
    }
    for r in pool {
        r.stop.cancel();
        let _ = r.done.await;
        stopped += 1;
    }
    let (n_kept, mut started) = (kept.len(), 0);
    let mut next: Vec<Option<Running>> = (0..new.links.len()).map(|_| None).collect();
    for (l, r) in kept {
        next[l] = Some(r);
    }
    for (l, slot) in next.iter_mut().enumerate() {
        if slot.is_none() {
            *slot = Some(start_link(&new, l, events));
            started += 1;
        }
    }
    *running = next.into_iter().flatten().collect();

    // Removed devices: clear their retained status.
    for d in &old.devices {
        if !new.devices.iter().any(|n| n.name == d.name) {
            enqueue(
                out,
                Publication {
                    topic: d.status_topic.clone(),
                    payload: Vec::new(),
                    qos: crate::mappings::Qos::AtLeastOnce,
                    retain: true,
                    created_at: SystemTime::now(),
                },
            );
        }
    }
    mqtt.update(new.subscriptions(), group_configurations(&new));
    tracing::info!(
        links_kept = n_kept,
        links_stopped = stopped,
        links_started = started,
        "reload applied"
    );
    enqueue(
        out,
        report(
            json!({"result": "applied", "links": {"kept": n_kept, "stopped": stopped, "started": started}, "ts": timestamp(SystemTime::now())}),
        ),
    );
    Some(new)
}

/// Hand a publication to the MQTT task, which buffers it. Never blocks the caller: if the
/// hand-off is full (the MQTT task is stuck), the publication is dropped and counted. For
/// reload reports only; values and acks go through [`hand_off`].
fn enqueue(out: &mpsc::Sender<Publication>, p: Publication) {
    if let Err(e) = out.try_send(p) {
        let p = match e {
            mpsc::error::TrySendError::Full(p) | mpsc::error::TrySendError::Closed(p) => p,
        };
        events::publication_dropped(&p.topic, "handoff_full");
    }
}

/// Hand a publication to the MQTT task. QoS 1/2 waits for room: the MQTT task only moves
/// publications into its buffer (it never waits for the broker), so this is backpressure
/// against a busy CPU, never against a slow broker, and the buffer's bounds and drop-oldest
/// policy decide what is lost, counted there. QoS 0 is dropped and counted as `handoff_full`
/// when there is no room.
async fn hand_off(out: &mpsc::Sender<Publication>, p: Publication) {
    if p.qos == crate::mappings::Qos::AtMostOnce {
        return enqueue(out, p);
    }
    if let Err(mpsc::error::SendError(p)) = out.send(p).await {
        events::publication_dropped(&p.topic, "shutdown");
    }
}

async fn run_engine(
    model: Arc<Model>,
    mut events: mpsc::Receiver<LinkEvent>,
    mut reloads: mpsc::Receiver<Arc<Model>>,
    out: mpsc::Sender<Publication>,
) {
    let mut engine = Engine::new(model);
    let beat = crate::supervisor::heartbeat("engine");
    let mut tick = tokio::time::interval(crate::supervisor::BEAT_EVERY);
    loop {
        // Group windows close on the wall clock; the timer re-arms after every event.
        let wait = engine
            .next_deadline()
            .map_or(Duration::from_secs(3600), |d| {
                d.duration_since(SystemTime::now()).unwrap_or_default()
            });
        let pubs = tokio::select! {
            ev = events.recv() => match ev {
                Some(LinkEvent::Poll { name, model, mut poll }) => match engine.device_id(&name, poll.device, &model) {
                    Some(id) => {
                        poll.device = id;
                        engine.on_poll(&poll, Instant::now())
                    }
                    None => continue,
                },
                Some(LinkEvent::Status { name, model, device, status, at }) => match engine.device_id(&name, device, &model) {
                    Some(id) => engine.on_device_status(id, status, at),
                    None => continue,
                },
                None => break,
            },
            Some(new) = reloads.recv() => {
                // Published values start afresh under the new mapping: every value goes out
                // on its next poll.
                engine = Engine::new(new);
                continue;
            }
            () = tokio::time::sleep(wait) => engine.tick(SystemTime::now()),
            _ = tick.tick() => {
                beat.beat();
                continue;
            }
        };
        for p in pubs {
            hand_off(&out, p).await;
        }
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

async fn run_executor(
    snapshots: tokio::sync::watch::Receiver<Arc<Snapshot>>,
    mut commands: mpsc::Receiver<IncomingCommand>,
    out: mpsc::Sender<Publication>,
    stop: CancellationToken,
) {
    let mut replays = ReplayGuard::default();
    loop {
        let mut cmd = tokio::select! {
            () = stop.cancelled() => return,
            c = commands.recv() => match c { Some(c) => c, None => return },
        };
        let snap = Arc::clone(&snapshots.borrow());
        let (model, router) = (&snap.model, &snap.router);
        let encrypted = model
            .mqtt
            .encryption
            .as_ref()
            .filter(|e| e.covers(&cmd.topic, &model.mqtt.status_topic));
        let mut text = printable(&String::from_utf8_lossy(&cmd.payload));
        let ack = |ci: usize, body: serde_json::Value| {
            let c = &model.commands[ci];
            Publication {
                topic: c.ack_topic.clone(),
                payload: body.to_string().into_bytes(),
                qos: c.qos,
                retain: false,
                created_at: SystemTime::now(),
            }
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
        let started = Instant::now();
        let origin: Arc<str> = Arc::from(format!("mqtt:{}", cmd.topic));
        let mut readback = HashMap::new();
        let mut failure: Option<String> = None;
        for op in accepted.writes {
            let point = &model.points[op.point];
            let device = &model.devices[op.device];
            let Some(writer) = snap.writers.get(&device.name) else {
                continue;
            };
            let (reply_tx, reply_rx) = oneshot::channel();
            let written = op.value.clone();
            let device_timeout = device.timeout;
            let target = WriteTarget::of(device, point.name.clone());
            let req = WriteRequest {
                op,
                target,
                origin: origin.clone(),
                reply: reply_tx,
            };
            let result = if writer.send(req).await.is_err() {
                Err(Fault::NotConnected)
            } else {
                // The link answers within two device timeouts (write + read-back); the margin
                // only guards against a link task that has gone away.
                match tokio::time::timeout(device_timeout * 2 + Duration::from_secs(5), reply_rx)
                    .await
                {
                    Ok(Ok(r)) => r,
                    Ok(Err(_)) => Err(Fault::NotConnected),
                    Err(_) => Err(Fault::Timeout),
                }
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
        let body = match &failure {
            None => {
                json!({"command": accepted.label, "result": "ok", "readback": readback, "ts": timestamp(SystemTime::now())})
            }
            Some(reason) => {
                json!({"command": accepted.label, "result": "error", "reason": reason, "ts": timestamp(SystemTime::now())})
            }
        };
        events::command_done(started.elapsed().as_secs_f64());
        hand_off(&out, ack(accepted.command, body)).await;
    }
}
