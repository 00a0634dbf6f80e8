//! `run`: wires the link tasks, the mapping engine, the command executor and the MQTT client,
//! and shuts them down in order.
//!
//! Shutdown order: stop taking commands (the one in flight finishes), stop the links (a write
//! in flight finishes), drain the engine, then MQTT publishes `offline` and disconnects.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::json;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::events;
use crate::inputs::link::Link;
use crate::inputs::{LinkEvent, WriteRequest};
use crate::mappings::command::{CommandError, Router, printable, readback_matches};
use crate::mappings::engine::{Engine, decode_at, render_plain, timestamp};
use crate::mappings::{Fault, Publication};
use crate::model::Model;
use crate::outputs::mqtt::{self, IncomingCommand};

/// How long shutdown may spend flushing to the broker.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// Run the gateway until `shutdown` is cancelled.
pub async fn run(model: Arc<Model>, shutdown: CancellationToken) -> anyhow::Result<()> {
    if let Some(addr) = model.metrics_listen {
        crate::telemetry::serve_metrics(addr, shutdown.clone())
            .await
            .map_err(|e| anyhow::anyhow!("metrics listener on {addr}: {e}"))?;
    }
    let (out_tx, out_rx) = mpsc::channel::<Publication>(model.mqtt.queue_capacity);
    let (cmd_tx, cmd_rx) = mpsc::channel::<IncomingCommand>(64);
    // Retained group configurations go out after every connect, like `online`.
    let on_connect: Vec<Publication> = model
        .groups
        .iter()
        .filter_map(|g| crate::mappings::group::configuration_publication(g, SystemTime::now()))
        .collect();
    let mqtt = mqtt::start(
        &model.mqtt,
        model.subscriptions(),
        on_connect,
        out_rx,
        cmd_tx,
    );

    // One task per link (a TCP connection or an RTU bus), as compiled into the model.
    let (ev_tx, ev_rx) = mpsc::channel::<LinkEvent>(256);
    let links = CancellationToken::new();
    let tracker = TaskTracker::new();
    let mut writers = vec![None; model.devices.len()];
    for (link, l) in model.links.iter().enumerate() {
        let (wtx, wrx) = mpsc::channel(16);
        for &d in &l.devices {
            writers[d] = Some(wtx.clone());
        }
        let task = Link {
            link,
            model: Arc::clone(&model),
            events: ev_tx.clone(),
            writes: wrx,
            beat: crate::supervisor::heartbeat(format!("link {}", l.name)),
        };
        tracker.spawn(task.run(links.clone()));
    }
    drop(ev_tx);
    tracker.close();

    let engine = tokio::spawn(run_engine(Arc::clone(&model), ev_rx, out_tx.clone()));
    let executor_stop = CancellationToken::new();
    let executor = tokio::spawn(run_executor(
        Arc::clone(&model),
        cmd_rx,
        writers,
        out_tx,
        executor_stop.clone(),
    ));

    // The mapping is loaded and every link is making its first connection attempt.
    crate::supervisor::notify_ready();
    crate::supervisor::spawn_watchdog(shutdown.clone());

    shutdown.cancelled().await;
    crate::supervisor::notify_stopping();
    tracing::info!("shutting down");
    executor_stop.cancel();
    let _ = executor.await;
    links.cancel();
    tracker.wait().await;
    let _ = engine.await;
    mqtt.shutdown(SHUTDOWN_GRACE).await;
    tracing::info!("stopped");
    Ok(())
}

fn enqueue(out: &mpsc::Sender<Publication>, p: Publication) {
    let topic = p.topic.clone();
    let bytes = p.payload.len() + p.topic.len();
    match out.try_send(p) {
        Ok(()) => {
            events::publication_queued();
            events::queued(bytes, out.max_capacity() - out.capacity());
        }
        Err(_) => events::publication_dropped(&topic),
    }
}

async fn run_engine(
    model: Arc<Model>,
    mut events: mpsc::Receiver<LinkEvent>,
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
                Some(LinkEvent::Poll(p)) => engine.on_poll(&p, Instant::now()),
                Some(LinkEvent::Status { device, status, at }) => engine.on_device_status(device, status, at),
                None => break,
            },
            () = tokio::time::sleep(wait) => engine.tick(SystemTime::now()),
            _ = tick.tick() => {
                beat.beat();
                continue;
            }
        };
        for p in pubs {
            enqueue(&out, p);
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
    }
}

async fn run_executor(
    model: Arc<Model>,
    mut commands: mpsc::Receiver<IncomingCommand>,
    writers: Vec<Option<mpsc::Sender<WriteRequest>>>,
    out: mpsc::Sender<Publication>,
    stop: CancellationToken,
) {
    let router = Router::new(Arc::clone(&model));
    loop {
        let cmd = tokio::select! {
            () = stop.cancelled() => return,
            c = commands.recv() => match c { Some(c) => c, None => return },
        };
        let text = printable(&String::from_utf8_lossy(&cmd.payload));
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
        let accepted = match router.parse(&cmd.topic, &cmd.payload, cmd.retain) {
            Ok(a) => a,
            Err((ci, e)) => {
                events::command_rejected(&cmd.topic, &text, &e.to_string(), rejection_kind(&e));
                if let Some(ci) = ci {
                    enqueue(
                        &out,
                        ack(
                            ci,
                            json!({"command": text, "result": "rejected", "reason": e.to_string(), "ts": timestamp(SystemTime::now())}),
                        ),
                    );
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
            let Some(writer) = &writers[op.device] else {
                continue;
            };
            let (reply_tx, reply_rx) = oneshot::channel();
            let written = op.value.clone();
            let device_timeout = model.devices[op.device].timeout;
            let req = WriteRequest {
                op,
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
        enqueue(&out, ack(accepted.command, body));
    }
}
