//! The MQTT client: one task polls rumqttc's event loop and is never blocked; another drains
//! the outbound queue into the client.
//!
//! The session is clean (`clean_session = true`), so a broker never hands us commands that
//! were queued while we were away. After every ConnAck the task re-subscribes and publishes
//! the retained `online`; the last will publishes `offline`. `publish()` only queues: delivery
//! is the event loop's job (and, later, the durable buffer's).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rumqttc::{AsyncClient, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet, QoS};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::events;
use crate::mappings::{Publication, Qos};
use crate::model::MqttSettings;

pub const ONLINE: &str = "online";
pub const OFFLINE: &str = "offline";

impl From<Qos> for QoS {
    fn from(q: Qos) -> QoS {
        match q {
            Qos::AtMostOnce => QoS::AtMostOnce,
            Qos::AtLeastOnce => QoS::AtLeastOnce,
            Qos::ExactlyOnce => QoS::ExactlyOnce,
        }
    }
}

/// A message that arrived on a command topic.
#[derive(Debug, Clone)]
pub struct IncomingCommand {
    pub topic: String,
    pub payload: Bytes,
    pub retain: bool,
}

/// What a new session subscribes to and announces; replaced on reload.
#[derive(Debug, Default)]
struct Announce {
    subscriptions: Vec<(Arc<str>, Qos)>,
    on_connect: Vec<Publication>,
}

/// The running MQTT side.
#[derive(Debug)]
pub struct MqttOutput {
    client: AsyncClient,
    announce: Arc<std::sync::Mutex<Announce>>,
    status_topic: Arc<str>,
    publisher: JoinHandle<()>,
    event_loop: JoinHandle<()>,
    hard_stop: CancellationToken,
}

/// Start the client. Publications are read from `outbound` until it closes; commands on the
/// subscribed topics go to `commands`; `on_connect` (retained session messages such as group
/// configurations) is published after every connect.
pub fn start(
    settings: &MqttSettings,
    subscriptions: Vec<(Arc<str>, Qos)>,
    on_connect: Vec<Publication>,
    outbound: mpsc::Receiver<Publication>,
    commands: mpsc::Sender<IncomingCommand>,
) -> MqttOutput {
    let mut opts = MqttOptions::new(
        settings.client_id.clone(),
        settings.host.clone(),
        settings.port,
    );
    opts.set_keep_alive(settings.keep_alive);
    opts.set_clean_session(true);
    opts.set_max_packet_size(256 * 1024, 256 * 1024);
    opts.set_last_will(LastWill::new(
        settings.status_topic.as_ref(),
        OFFLINE,
        QoS::AtLeastOnce,
        true,
    ));
    let (client, event_loop) = AsyncClient::new(opts, 256);
    let hard_stop = CancellationToken::new();
    let broker = format!("{}:{}", settings.host, settings.port);
    let announce = Arc::new(std::sync::Mutex::new(Announce {
        subscriptions,
        on_connect,
    }));
    let session = Session {
        broker,
        keep_alive: settings.keep_alive,
        status_topic: settings.status_topic.clone(),
        announce: Arc::clone(&announce),
    };
    let event_loop = tokio::spawn(run_event_loop(
        event_loop,
        client.clone(),
        session,
        commands,
        hard_stop.clone(),
    ));
    let publisher = tokio::spawn(run_publisher(client.clone(), outbound));
    MqttOutput {
        client,
        announce,
        status_topic: settings.status_topic.clone(),
        publisher,
        event_loop,
        hard_stop,
    }
}

impl MqttOutput {
    /// Take a reloaded mapping's subscriptions and announcements on the live session: subscribe
    /// to new command topics, unsubscribe from removed ones, publish changed retained
    /// announcements; later reconnects use the new ones.
    pub fn update(&self, subscriptions: Vec<(Arc<str>, Qos)>, on_connect: Vec<Publication>) {
        let (added, removed, changed) = {
            let mut a = self
                .announce
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let added: Vec<_> = subscriptions
                .iter()
                .filter(|s| !a.subscriptions.contains(s))
                .cloned()
                .collect();
            let removed: Vec<_> = a
                .subscriptions
                .iter()
                .filter(|(t, _)| !subscriptions.iter().any(|(n, _)| n == t))
                .map(|(t, _)| t.clone())
                .collect();
            let changed: Vec<_> = on_connect
                .iter()
                .filter(|p| {
                    !a.on_connect
                        .iter()
                        .any(|o| o.topic == p.topic && o.payload == p.payload)
                })
                .cloned()
                .collect();
            a.subscriptions = subscriptions;
            a.on_connect = on_connect;
            (added, removed, changed)
        };
        let client = self.client.clone();
        tokio::spawn(async move {
            for t in removed {
                let _ = client.unsubscribe(t.as_ref()).await;
            }
            for (t, q) in added {
                let _ = client.subscribe(t.as_ref(), q.into()).await;
            }
            for p in changed {
                let _ = client
                    .publish(p.topic.as_ref(), p.qos.into(), p.retain, p.payload)
                    .await;
            }
        });
    }

    /// Drain the outbound queue (its senders must be dropped first), publish the retained
    /// `offline`, disconnect, and wait up to `grace` for it all to leave.
    pub async fn shutdown(self, grace: Duration) {
        let deadline = tokio::time::Instant::now() + grace;
        let _ = tokio::time::timeout_at(deadline, self.publisher).await;
        let client = self.client.clone();
        let topic = self.status_topic.to_string();
        let goodbye = async move {
            let _ = client.publish(topic, QoS::AtLeastOnce, true, OFFLINE).await;
            let _ = client.disconnect().await;
        };
        let _ = tokio::time::timeout_at(deadline, goodbye).await;
        if tokio::time::timeout_at(deadline, self.event_loop)
            .await
            .is_err()
        {
            // The broker is unreachable; the last will reports us offline.
            self.hard_stop.cancel();
        }
    }
}

async fn run_publisher(client: AsyncClient, mut outbound: mpsc::Receiver<Publication>) {
    while let Some(p) = outbound.recv().await {
        let age = std::time::SystemTime::now()
            .duration_since(p.created_at)
            .unwrap_or_default();
        events::dequeued(
            p.payload.len() + p.topic.len(),
            outbound.len(),
            age.as_secs_f64(),
        );
        if client
            .publish(p.topic.as_ref(), p.qos.into(), p.retain, p.payload)
            .await
            .is_err()
        {
            break;
        }
    }
}

/// What every new session needs: where, what to subscribe, what to announce.
struct Session {
    broker: String,
    keep_alive: Duration,
    status_topic: Arc<str>,
    announce: Arc<std::sync::Mutex<Announce>>,
}

async fn run_event_loop(
    mut event_loop: EventLoop,
    client: AsyncClient,
    session: Session,
    commands: mpsc::Sender<IncomingCommand>,
    hard_stop: CancellationToken,
) {
    let Session {
        broker,
        keep_alive,
        status_topic,
        announce,
    } = session;
    let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(30));
    let mut connected = false;
    // Packet id -> when the publish left, for the publish-to-ack latency.
    let mut in_flight: std::collections::HashMap<u16, tokio::time::Instant> =
        std::collections::HashMap::new();
    let mut last_error = String::new();
    // `poll()` is never raced against a timer (it also connects and writes, which must not be
    // cut short), so this task beats when poll returns: at least once per keep-alive (the ping).
    let beat =
        crate::supervisor::heartbeat_within("mqtt", keep_alive * 2 + Duration::from_secs(10));
    let mut tick = tokio::time::interval(crate::supervisor::BEAT_EVERY);
    loop {
        beat.beat();
        let event = tokio::select! {
            () = hard_stop.cancelled() => return,
            e = event_loop.poll() => e,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                connected = true;
                backoff.reset();
                last_error.clear();
                events::mqtt_connected(&broker);
                let client = client.clone();
                let (subscriptions, on_connect) = {
                    let a = announce
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    (a.subscriptions.clone(), a.on_connect.clone())
                };
                let status_topic = status_topic.clone();
                tokio::spawn(async move {
                    for (topic, qos) in subscriptions {
                        let _ = client.subscribe(topic.as_ref(), qos.into()).await;
                    }
                    let _ = client
                        .publish(status_topic.as_ref(), QoS::AtLeastOnce, true, ONLINE)
                        .await;
                    for p in on_connect {
                        let _ = client
                            .publish(p.topic.as_ref(), p.qos.into(), p.retain, p.payload)
                            .await;
                    }
                });
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let cmd = IncomingCommand {
                    topic: p.topic,
                    payload: p.payload,
                    retain: p.retain,
                };
                if let Err(e) = commands.try_send(cmd) {
                    let cmd = match e {
                        mpsc::error::TrySendError::Full(c)
                        | mpsc::error::TrySendError::Closed(c) => c,
                    };
                    events::command_rejected(&cmd.topic, "", "command queue full", "busy");
                }
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) if pkid != 0 => {
                in_flight.insert(pkid, tokio::time::Instant::now());
            }
            Ok(Event::Incoming(Packet::PubAck(ack))) => {
                if let Some(t) = in_flight.remove(&ack.pkid) {
                    events::publish_acked(t.elapsed().as_secs_f64());
                }
            }
            Ok(Event::Incoming(Packet::PubComp(comp))) => {
                if let Some(t) = in_flight.remove(&comp.pkid) {
                    events::publish_acked(t.elapsed().as_secs_f64());
                }
            }
            Ok(_) => {}
            Err(e) => {
                let reason = e.to_string();
                let delay = backoff.next_delay();
                if connected || reason != last_error {
                    events::mqtt_down(&broker, &reason, delay);
                }
                connected = false;
                last_error = reason;
                in_flight.clear();
                // Sleep out the backoff, beating as we go.
                let until = tokio::time::Instant::now() + delay;
                loop {
                    beat.beat();
                    tokio::select! {
                        () = hard_stop.cancelled() => return,
                        () = tokio::time::sleep_until(until) => break,
                        _ = tick.tick() => {}
                    }
                }
            }
        }
    }
}
