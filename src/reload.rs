//! Hot reload: reload requests (SIGHUP, `--watch`), the running link tasks and their
//! signatures, and applying a changed mapping file.
//!
//! Does: validate the new file in full, refuse changes to `mqtt` or `metrics`, keep the link
//! tasks whose signature is unchanged, stop and start the others, clear removed devices'
//! retained status, and report the result. Must not: decode values, run commands or own the
//! MQTT session (it asks the MQTT task to update subscriptions and announcements).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::handoff::enqueue;
use crate::inputs::link::Link;
use crate::inputs::{LinkEvent, WriteRequest};
use crate::model::Model;
use crate::outputs::mqtt;
use crate::vocabulary::{Announcement, Publication, Qos, timestamp};

/// A running link task.
#[derive(Debug)]
pub struct Running {
    /// What the task's behaviour depends on (see [`link_signature`]).
    signature: String,
    devices: Vec<Arc<str>>,
    writer: mpsc::Sender<WriteRequest>,
    pub stop: CancellationToken,
    pub done: tokio::task::JoinHandle<()>,
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

/// Start the task of link `link` of `model`, sending its events to `events`.
pub fn start_link(model: &Arc<Model>, link: usize, events: &mpsc::Sender<LinkEvent>) -> Running {
    let l = &model.links[link];
    let (writer, writes) = mpsc::channel(16);
    let stop = CancellationToken::new();
    let beat = crate::supervisor::heartbeat(format!("link {}", l.name));
    // An S7 link (issue 19) has its own task; every other link is Modbus.
    let done = if let crate::model::LinkSpec::S7(s7) = &l.spec {
        let task = crate::inputs::s7::link::S7LinkTask {
            link,
            s7: Arc::clone(s7),
            model: Arc::clone(model),
            events: events.clone(),
            writes,
            beat,
        };
        tokio::spawn(task.run(stop.clone()))
    } else {
        let task = Link {
            link,
            model: Arc::clone(model),
            events: events.clone(),
            writes,
            beat,
            multiple_writes: Default::default(),
        };
        tokio::spawn(task.run(stop.clone()))
    };
    Running {
        signature: link_signature(model, link),
        devices: l
            .devices
            .iter()
            .map(|&d| model.devices[d].name.clone())
            .collect(),
        writer,
        done,
        stop,
    }
}

/// Device name -> the write queue of its running link task, for the executor.
pub fn writers(running: &[Running]) -> HashMap<Arc<str>, mpsc::Sender<WriteRequest>> {
    let mut writers = HashMap::new();
    for r in running {
        for d in &r.devices {
            writers.insert(d.clone(), r.writer.clone());
        }
    }
    writers
}

/// Where reloads come from: the mapping file, and a stream of "read it again" requests
/// (SIGHUP, `--watch`).
#[derive(Debug)]
pub struct Reloads {
    pub path: PathBuf,
    pub requests: mpsc::Receiver<()>,
}

/// Reload requests on SIGHUP, and, with `watch`, when the modification time or size of the file
/// or of a file it includes changes (checked every second).
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
        // The mapping and every file it includes (issue 18): a change to any of them reloads.
        let stamp = |p: &Path| {
            crate::config::sources::files_of(p)
                .iter()
                .map(|f| {
                    std::fs::metadata(f)
                        .ok()
                        .map(|m| (m.modified().ok(), m.len()))
                })
                .collect::<Vec<_>>()
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

/// Tell systemd a reload is under way.
pub fn sd_reloading() -> std::io::Result<()> {
    sd_notify::notify(&[sd_notify::NotifyState::Reloading])
}

/// Apply a changed mapping file. Returns the new model, or `None` (old config kept) when the
/// file is invalid or changes what cannot change without a restart. `session` gives what
/// the MQTT session needs under a model: the command topics to subscribe, and the retained
/// messages to send on every connect.
pub async fn reload(
    path: &Path,
    old: &Arc<Model>,
    running: &mut Vec<Running>,
    events: &mpsc::Sender<LinkEvent>,
    mqtt: &mqtt::MqttOutput,
    out: &mpsc::Sender<Publication>,
    session: impl Fn(&Arc<Model>) -> (Vec<(Arc<str>, Qos)>, Vec<Announcement>),
) -> Option<Arc<Model>> {
    let report_topic: Arc<str> = Arc::from(format!("{}/reload", old.mqtt.status_topic));
    let report = |body: serde_json::Value| Publication {
        topic: report_topic.clone(),
        payload: body.to_string().into_bytes(),
        qos: Qos::AtLeastOnce,
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
        Ok(mut m) => {
            if let (Some(n), Some(o)) = (m.sparkplug.as_mut(), old.sparkplug.as_ref()) {
                n.keep_aliases(o);
            }
            Arc::new(m)
        }
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
    if m.0.client_id != m.1.client_id {
        return rejected(vec![format!(
            "{}: mqtt.client_id changed (from {} to {}; a client id made with ${{CONFIG_ID}} changes with every change of the mapping); that needs a restart (the MQTT session is kept on reload)",
            path.display(),
            m.1.client_id,
            m.0.client_id
        )]);
    }
    if m.0.brokers != m.1.brokers
        || m.0.port != m.1.port
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
    // The web console's listener, users and switches are read once, at start.
    if new.web != old.web {
        return rejected(vec![format!(
            "{}: the web section changed (or the users file it names): the whole reload is refused and the running mapping (users included) stays until a restart",
            path.display()
        )]);
    }
    // The Sparkplug edge node's NDEATH will is registered with the connection: adding,
    // removing or renaming the node needs a new session. Its devices and metrics may change
    // (the node is born again on the new mapping with the same bdSeq).
    let ids = |m: &Model| {
        m.sparkplug.as_ref().map(|s| {
            (
                s.group_id.clone(),
                s.edge_node_id.clone(),
                s.primary_host_id.clone(),
            )
        })
    };
    if ids(&new) != ids(old) {
        return rejected(vec![format!(
            "{}: the sparkplug section's ids changed; that needs a restart (the node's NDEATH will belongs to the MQTT session)",
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
                    qos: Qos::AtLeastOnce,
                    retain: true,
                    created_at: SystemTime::now(),
                },
            );
        }
    }
    // Home Assistant forgets removed devices and entities (before the new announcements).
    for p in crate::northbound::retired(old, &new, SystemTime::now()) {
        enqueue(out, p);
    }
    let (subscriptions, announcements) = session(&new);
    mqtt.update(subscriptions, announcements);
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
