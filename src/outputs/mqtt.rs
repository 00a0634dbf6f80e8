//! The MQTT client. Two tasks:
//!
//! - the connection task polls rumqttc's event loop and is never blocked. It makes a new
//!   client and event loop for every connection attempt, so a request queued for a dead
//!   connection can never leak into the next one; it reports ConnAck, loss, and which packet
//!   id each publish went out with and was acknowledged under;
//! - the publisher owns the outbound buffer ([`super::store`]). It accepts publications,
//!   hands at most [`WINDOW`] unacknowledged ones to the live connection, maps the packet ids
//!   back to buffer sequence numbers, and deletes an entry only when the broker acknowledged
//!   it. After every ConnAck it republishes everything unacknowledged, in order, before new
//!   data. QoS 0 bypasses the buffer: sent at once when connected, else dropped and counted.
//!
//! The session is clean (`clean_session = true`), so a broker never hands us commands that
//! were queued while we were away; the buffer, not the broker, is our session. After every
//! ConnAck the connection task subscribes and the publisher sends the retained `online` and
//! the announcements; the last will publishes `offline`, and a clean shutdown publishes it
//! itself and sends DISCONNECT, so that the broker discards the will.
//!
//! Between connections the connection task backs off ([`Policy`]): the backoff survives a
//! ConnAck and is reset only by a connection that stayed up, and sessions the broker keeps
//! ending right after accepting them are reported as taken over by another client with the
//! same client id.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Outgoing, Packet, QoS};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::store::{self, Store};
use super::tls::ConnState;
use crate::backoff::Backoff;
use crate::events;
use crate::model::MqttSettings;
use crate::vocabulary::{Announcement, Publication, Qos};

pub const ONLINE: &str = "online";
pub const OFFLINE: &str = "offline";

/// Most buffered publications handed to a connection and not yet acknowledged (and at most
/// half the buffer's bound). At 64 the acknowledgement round trip, not the broker, bounded
/// QoS 1 throughput, and each small batch of acks cost a wake-up: 1,024 cut the gateway's CPU
/// per QoS 1 value by a quarter (README, Benchmarks).
pub const WINDOW: usize = 1024;
/// The fewest free places in the window that [`Publisher::pump`] fills while more entries wait
/// than fit: a quarter of the window (256 of 1,024), the most requests rumqttc writes in one
/// system call. With fewer waiting, everything waiting goes at once. At 100,000 QoS 1 values/s
/// refilling the window per returning acknowledgement cost 2,600 `writev` and 2,800 `epoll_wait`
/// calls per second (README, Benchmarks).
fn pump_batch(window: usize) -> usize {
    (window / 4).max(1)
}

/// How long shutdown may spend delivering the buffer to the broker.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// Capacity of rumqttc's request channel: the window plus announcements, and bursts of QoS 0
/// values (10 devices x 1,000 registers in one poll). The queue holds only what is waiting, so
/// its size costs nothing until used; the event loop writes up to 256 waiting requests per
/// system call, so it drains fast unless the broker does not read. A QoS 0 value that finds it
/// full is counted as `client_busy`.
const REQUESTS: usize = 16_384;
/// MQTT 3.1.1: the largest incoming packet the transport takes, the protocol's largest
/// Remaining Length (MQTT 3.1.1 section 2.2.3). rumqttc ends the whole connection on a larger
/// one, and 3.1.1 has no way to tell the broker our limit, so a big retained message on a
/// command topic would end every new connection again; instead it is read and the command
/// layer refuses it (`CommandError::TooLong`, an ack `rejected`).
const V4_MAX_INCOMING: usize = 268_435_455;
/// MQTT 5: the Maximum Packet Size announced in CONNECT (MQTT 5 section 3.1.2.11.4). The broker
/// must not send us a larger packet: it drops it instead (section 3.1.2.11.4, 4.13.1).
pub const V5_MAX_PACKET: u32 = 256 * 1024;
/// A session that the broker closes sooner than this after its ConnAck counts towards a
/// takeover.
const SHORT_SESSION: Duration = Duration::from_secs(10);
/// The first delay after a takeover; it doubles on every further one.
const TAKEOVER_BACKOFF: (Duration, Duration) = (Duration::from_secs(5), Duration::from_secs(300));
/// The ordinary reconnect backoff: first step and cap.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(250), Duration::from_secs(30));

impl From<Qos> for QoS {
    fn from(q: Qos) -> QoS {
        match q {
            Qos::AtMostOnce => QoS::AtMostOnce,
            Qos::AtLeastOnce => QoS::AtLeastOnce,
            Qos::ExactlyOnce => QoS::ExactlyOnce,
        }
    }
}

/// The live connection's client, for either protocol version.
#[derive(Debug, Clone)]
enum Client {
    V4(AsyncClient),
    V5(rumqttc::v5::AsyncClient),
}

fn v5_qos(q: Qos) -> rumqttc::v5::mqttbytes::QoS {
    match q {
        Qos::AtMostOnce => rumqttc::v5::mqttbytes::QoS::AtMostOnce,
        Qos::AtLeastOnce => rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        Qos::ExactlyOnce => rumqttc::v5::mqttbytes::QoS::ExactlyOnce,
    }
}

impl Client {
    /// Hand a publish to the connection; `Err` with the topic, for the drop counter, when its
    /// queue is full or it is gone. With MQTT 3.1.1 the topic and the payload are shared with
    /// the packet, not copied (`vendor/rumqttc/FIELDGATE.md`); MQTT 5 copies the payload.
    fn publish(
        &self,
        topic: Arc<str>,
        qos: Qos,
        retain: bool,
        payload: Bytes,
    ) -> Result<(), Arc<str>> {
        match self {
            Client::V4(c) => {
                c.try_publish_bytes(topic, qos.into(), retain, payload)
                    .map_err(|e| match e {
                        rumqttc::ClientError::Request(rumqttc::Request::Publish(p))
                        | rumqttc::ClientError::TryRequest(rumqttc::Request::Publish(p)) => p.topic,
                        // try_publish only ever hands back the publish it was given.
                        _ => Arc::from(""),
                    })
            }
            Client::V5(c) => match c.try_publish(&*topic, v5_qos(qos), retain, payload) {
                Ok(()) => Ok(()),
                Err(_) => Err(topic),
            },
        }
    }
    /// Subscribe. With MQTT 5, with Retain As Published (MQTT 5 section 3.8.3.1): the broker
    /// keeps the retain flag of a retained message delivered live, so that the command layer
    /// refuses it; 3.1.1 brokers clear it on live delivery (MQTT 3.1.1 section 3.3.1.3).
    fn subscribe(&self, topic: &str, qos: Qos) {
        let _ = match self {
            Client::V4(c) => c.try_subscribe(topic, qos.into()).is_ok(),
            Client::V5(c) => {
                let mut f = rumqttc::v5::mqttbytes::v5::Filter::new(topic, v5_qos(qos));
                f.preserve_retain = true;
                c.try_subscribe_many([f]).is_ok()
            }
        };
    }
    fn unsubscribe(&self, topic: &str) {
        let _ = match self {
            Client::V4(c) => c.try_unsubscribe(topic).is_ok(),
            Client::V5(c) => c.try_unsubscribe(topic).is_ok(),
        };
    }
    fn disconnect(&self) {
        let _ = match self {
            Client::V4(c) => c.try_disconnect().is_ok(),
            Client::V5(c) => c.try_disconnect().is_ok(),
        };
    }
}

/// Connection options for either protocol version.
#[derive(Debug, Clone)]
enum Options {
    V4(Box<MqttOptions>),
    V5(Box<rumqttc::v5::MqttOptions>),
}

/// The options for each broker of `settings.brokers`, in the order they are tried.
fn broker_options(settings: &MqttSettings) -> Vec<Options> {
    if settings.brokers.is_empty() {
        return vec![options(settings)];
    }
    settings
        .brokers
        .iter()
        .map(|(host, port)| {
            let mut one = settings.clone();
            one.host.clone_from(host);
            one.port = *port;
            options(&one)
        })
        .collect()
}

fn options(settings: &MqttSettings) -> Options {
    let transport = settings.tls.as_ref().and_then(|tls| {
        // Checked when the mapping was loaded; a file that changed since fails here.
        match super::tls::client_config(tls) {
            Ok(cfg) => Some(rumqttc::Transport::tls_with_config(
                rumqttc::TlsConfiguration::Rustls(Arc::new(cfg)),
            )),
            Err(e) => {
                tracing::error!(error = %e, "tls configuration unusable");
                None
            }
        }
    });
    let credentials = settings.credentials.as_ref().map(|c| {
        let password = c
            .password
            .as_ref()
            .map(|p| String::from_utf8_lossy(&p.0).into_owned())
            .unwrap_or_default();
        (c.username.clone(), password)
    });
    if settings.v5 {
        let mut o = rumqttc::v5::MqttOptions::new(
            settings.client_id.clone(),
            settings.host.clone(),
            settings.port,
        );
        o.set_keep_alive(settings.keep_alive);
        o.set_clean_start(true);
        o.set_max_packet_size(Some(V5_MAX_PACKET));
        o.set_network_options(network_options());
        o.set_last_will(rumqttc::v5::mqttbytes::v5::LastWill::new(
            settings.status_topic.as_ref(),
            OFFLINE,
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            true,
            None,
        ));
        if let Some(t) = transport {
            o.set_transport(t);
        }
        if let Some((u, p)) = credentials {
            o.set_credentials(u, p);
        }
        return Options::V5(Box::new(o));
    }
    let mut o = MqttOptions::new(
        settings.client_id.clone(),
        settings.host.clone(),
        settings.port,
    );
    o.set_keep_alive(settings.keep_alive);
    o.set_clean_session(true);
    o.set_max_packet_size(V4_MAX_INCOMING, 256 * 1024);
    o.set_inflight(u16::try_from(WINDOW * 2).unwrap_or(u16::MAX));
    o.set_last_will(LastWill::new(
        settings.status_topic.as_ref(),
        OFFLINE,
        QoS::AtLeastOnce,
        true,
    ));
    if let Some(t) = transport {
        o.set_transport(t);
    }
    if let Some((u, p)) = credentials {
        o.set_credentials(u, p);
    }
    Options::V4(Box::new(o))
}

/// The socket options: TCP_NODELAY, so that a small publish or acknowledgement goes out at
/// once rather than waiting for Nagle's algorithm; rumqttc's 5 s connect timeout.
fn network_options() -> rumqttc::NetworkOptions {
    let mut n = rumqttc::NetworkOptions::new();
    n.set_tcp_nodelay(true);
    n
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
    on_connect: Vec<Announcement>,
}

/// What the connection task tells the publisher, in event order. `conn` numbers connections.
#[derive(Debug)]
enum Session {
    Up {
        conn: u64,
        client: Client,
        /// `host:port` of the broker this connection is to.
        broker: Arc<str>,
    },
    /// The broker refused the publish sent under `pkid` (MQTT 5 only).
    Refused {
        conn: u64,
        pkid: u16,
        reason: String,
    },
    /// A connection attempt failed, or a connection was lost.
    Failed {
        state: ConnState,
        reason: String,
    },
    Down {
        conn: u64,
    },
    /// What happened to QoS 1/2 publishes, in order: one message per batch of events the
    /// event loop produced together (one socket read, or one batch of written requests), not
    /// one per publish.
    Steps {
        conn: u64,
        steps: Vec<Step>,
    },
}

/// One event of a QoS 1/2 publish's life, as [`Session::Steps`] carries it: `Sent(pkid)`, the
/// oldest handed publish without a packet id went out under this one; `Acked(pkid)`, the broker
/// acknowledged it (PUBACK, or PUBCOMP for QoS 2; MQTT 3.1.1 section 4.3). The MQTT 3.1.1
/// event loop logs these itself (vendor/rumqttc/FIELDGATE.md); for MQTT 5 the connection task
/// makes them from events.
use rumqttc::PublishStep as Step;

/// Steps collected by a connection task until its event loop has no more events ready.
#[derive(Debug, Default)]
struct PendingSteps(Vec<Step>);

impl PendingSteps {
    /// Past this many, steps go at once: a long run of events does not hold acknowledgements
    /// back from the publisher (whose window they free).
    const MAX: usize = 256;

    fn push(&mut self, step: Step, r: &Reporter<'_>) {
        self.0.push(step);
        if self.0.len() >= Self::MAX {
            self.flush(r);
        }
    }

    /// Take every step of the event loop's log (emptying it), in order.
    fn take(&mut self, log: &mut Vec<Step>, r: &Reporter<'_>) {
        if self.0.is_empty() {
            std::mem::swap(&mut self.0, log);
            // The log gets the emptied vector (no capacity after a flush): room for a batch
            // at once, not a growth per few steps.
            log.reserve(Self::MAX);
        } else {
            self.0.append(log);
        }
        if self.0.len() >= Self::MAX {
            self.flush(r);
        }
    }

    /// Send what was collected, as one [`Session::Steps`].
    fn flush(&mut self, r: &Reporter<'_>) {
        if !self.0.is_empty() {
            r.send(Session::Steps {
                conn: r.conn,
                steps: std::mem::take(&mut self.0),
            });
        }
    }
}

/// Packet id -> what went out under it and when: a table indexed by packet id (MQTT packet
/// ids are 1..=65,535, and rumqttc uses 1..=its in-flight limit), without hashing.
#[derive(Debug, Default)]
struct InFlight(Vec<Option<(Handed, Instant)>>);

impl InFlight {
    fn insert(&mut self, pkid: u16, what: Handed, at: Instant) {
        let i = usize::from(pkid);
        if self.0.len() <= i {
            self.0.resize_with(i + 1, || None);
        }
        self.0[i] = Some((what, at));
    }

    fn remove(&mut self, pkid: u16) -> Option<(Handed, Instant)> {
        self.0.get_mut(usize::from(pkid)).and_then(Option::take)
    }
}

#[derive(Debug)]
enum Control {
    Update {
        subscriptions: Vec<(Arc<str>, Qos)>,
        on_connect: Vec<Announcement>,
    },
}

/// The running MQTT side.
#[derive(Debug)]
pub struct MqttOutput {
    control: mpsc::UnboundedSender<Control>,
    publisher: JoinHandle<()>,
    connection: JoinHandle<()>,
    hard_stop: CancellationToken,
}

/// Start the client. Publications are read from `outbound` until it closes; commands on the
/// subscribed topics go to `commands`; `on_connect` (retained session messages such as group
/// configurations) is published after every connect. Opens (and recovers) the buffer.
pub fn start(
    settings: &MqttSettings,
    subscriptions: Vec<(Arc<str>, Qos)>,
    on_connect: Vec<Announcement>,
    outbound: mpsc::Receiver<Publication>,
    commands: mpsc::Sender<IncomingCommand>,
) -> MqttOutput {
    start_with_node(
        settings,
        subscriptions,
        on_connect,
        outbound,
        commands,
        None,
    )
}

/// [`start`], and with `node` a Sparkplug B edge node's session: see [`NodeSession`].
pub fn start_with_node(
    settings: &MqttSettings,
    subscriptions: Vec<(Arc<str>, Qos)>,
    on_connect: Vec<Announcement>,
    outbound: mpsc::Receiver<Publication>,
    commands: mpsc::Sender<IncomingCommand>,
    node: Option<NodeSession>,
) -> MqttOutput {
    let node = node.map(NodeHook::new);
    let death = node.as_ref().map(|n| Arc::clone(&n.death));
    let opts = broker_options(settings);
    let (store, recovery) = Store::open(&settings.buffer.store);
    events::buffer_opened(
        settings.buffer.store.path.as_deref(),
        &events::BufferRecovery {
            recovered: recovery.recovered,
            truncated_bytes: recovery.truncated_bytes,
            skipped_bytes: recovery.skipped_bytes,
            lost: recovery.lost,
            moved_aside: &recovery.moved_aside,
            memory_only_because: recovery.memory_only_because.as_deref(),
        },
    );

    let hard_stop = CancellationToken::new();
    let announce = Arc::new(std::sync::Mutex::new(Announce {
        subscriptions,
        on_connect,
    }));
    let (session_tx, session_rx) = mpsc::unbounded_channel();
    let (control, control_rx) = mpsc::unbounded_channel();
    let connection = tokio::spawn(run_connection(
        opts,
        settings.keep_alive,
        Arc::clone(&announce),
        session_tx,
        commands,
        hard_stop.clone(),
        node,
    ));
    let publisher = Publisher {
        store,
        status_topic: settings.status_topic.clone(),
        announce,
        conn: None,
        sync_interval: settings.buffer.sync_interval,
        shutdown_grace: SHUTDOWN_GRACE,
        encryption: settings.encryption.clone(),
        last_failure: None,
        acked_retained: Default::default(),
        acked_by: None,
        death,
    };
    let publisher = tokio::spawn(publisher.run(outbound, session_rx, control_rx));
    MqttOutput {
        control,
        publisher,
        connection,
        hard_stop,
    }
}

impl MqttOutput {
    /// Take a reloaded mapping's subscriptions and announcements on the live session: subscribe
    /// to new command topics, unsubscribe from removed ones, publish changed retained
    /// announcements; later connections use the new ones.
    pub fn update(&self, subscriptions: Vec<(Arc<str>, Qos)>, on_connect: Vec<Announcement>) {
        let _ = self.control.send(Control::Update {
            subscriptions,
            on_connect,
        });
    }

    /// Shut down once the outbound senders are dropped: buffer what is left, deliver as much
    /// as the broker takes within `grace`, publish the retained `offline`, disconnect. What
    /// is not delivered stays in the disk buffer for the next start.
    pub async fn shutdown(self, grace: Duration) {
        let deadline = Instant::now() + grace + Duration::from_secs(1);
        let _ = tokio::time::timeout_at(deadline, self.publisher).await;
        // The publisher has disconnected, or the broker is unreachable (the last will then
        // reports us offline): stop connecting.
        self.hard_stop.cancel();
        let _ = tokio::time::timeout_at(deadline, self.connection).await;
    }
}

/// What a QoS 1/2 publish handed to the connection was.
#[derive(Debug, Clone)]
enum Handed {
    /// A buffered publication (its sequence number).
    Entry(u64),
    /// A session message (`online`, the connection state) or, with its key, a profile's
    /// retained announcement, remembered once the broker has acknowledged it.
    Announcement(Option<(Arc<str>, u64)>),
}

/// A key for a retained announcement: its topic and a hash of its payload.
fn announcement_key(p: &Publication) -> (Arc<str>, u64) {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    p.payload.hash(&mut h);
    (p.topic.clone(), h.finish())
}

/// The live connection as the publisher sees it.
struct Conn {
    id: u64,
    client: Client,
    /// QoS 1/2 requests handed to the client whose packet id is not known yet, in order:
    /// `Some(seq)` for buffered entries, `None` for announcements.
    unsent: VecDeque<Handed>,
    /// Packet id -> (buffer seq, when it went out).
    in_flight: InFlight,
    /// Buffer entries handed over and not yet acknowledged.
    handed: usize,
    /// The next buffer seq to consider handing over.
    cursor: u64,
}

struct Publisher {
    store: Store,
    status_topic: Arc<str>,
    announce: Arc<std::sync::Mutex<Announce>>,
    conn: Option<Conn>,
    sync_interval: Duration,
    shutdown_grace: Duration,
    encryption: Option<crate::model::Encryption>,
    /// The last failed connection attempt: state, reason, when.
    last_failure: Option<(ConnState, String, SystemTime)>,
    /// Retained announcements the broker acknowledged: not sent again after a reconnect
    /// until they change (the broker keeps them).
    acked_retained: std::collections::HashSet<(Arc<str>, u64)>,
    /// The broker that acknowledged `acked_retained` (`host:port`): another broker (failover,
    /// `mqtt.hosts`) holds none of them.
    acked_by: Option<Arc<str>>,
    /// Sparkplug: the live connection's NDEATH, published before DISCONNECT at shutdown.
    death: Option<NodeDeath>,
}

/// Seal a payload for `topic` with a fresh random nonce.
fn seal(e: &crate::model::Encryption, topic: &str, payload: &[u8], at: SystemTime) -> Vec<u8> {
    use aes_gcm::aead::Generate;
    let nonce: aes_gcm::Nonce<aes_gcm::aes::cipher::consts::U12> = aes_gcm::Nonce::generate();
    let nonce: [u8; 12] = nonce.into();
    let ts = u64::try_from(millis(at)).unwrap_or(0);
    crate::mappings::envelope::seal(&e.key.0, nonce, topic, ts, payload)
}

fn millis(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl Publisher {
    async fn run(
        mut self,
        mut outbound: mpsc::Receiver<Publication>,
        mut sessions: mpsc::UnboundedReceiver<Session>,
        mut control: mpsc::UnboundedReceiver<Control>,
    ) {
        let mut sync = tokio::time::interval(self.sync_interval);
        sync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut batch = Vec::with_capacity(256);
        let mut open = true;
        let mut deadline: Option<Instant> = None;
        let mut goodbye_sent = false;
        let grace = self.shutdown_grace;
        loop {
            tokio::select! {
                biased;
                s = sessions.recv() => match s {
                    Some(s) => self.on_session(s),
                    None => break,
                },
                Some(c) = control.recv() => self.on_control(c),
                n = outbound.recv_many(&mut batch, 256), if open => {
                    if n == 0 {
                        // Shutdown: the gateway dropped every sender.
                        open = false;
                        deadline = Some(Instant::now() + grace);
                    }
                    events::publications_queued(batch.len() as u64);
                    for p in batch.drain(..) {
                        self.accept(p);
                    }
                    if let Err(e) = self.store.write() {
                        events::buffer_io_failed(&e, store::RETRY_SYNCS);
                    }
                }
                _ = sync.tick() => self.sync(),
                () = sleep_until_opt(deadline) => {
                    // Out of time: leave the rest in the buffer.
                    deadline = None;
                    if !goodbye_sent {
                        self.goodbye();
                        goodbye_sent = true;
                    }
                }
            }
            self.pump();
            if !open && !goodbye_sent && (self.store.is_empty() || self.conn.is_none()) {
                self.goodbye();
                goodbye_sent = true;
            }
            if goodbye_sent && self.conn.is_none() {
                break;
            }
        }
        self.sync();
    }

    /// Publish `offline` (retained) and disconnect; without a connection, nothing to do.
    fn goodbye(&mut self) {
        if let Some(c) = &self.conn {
            publish_death(&c.client, self.death.as_ref());
            let _ = c.client.publish(
                Arc::clone(&self.status_topic),
                Qos::AtLeastOnce,
                true,
                Bytes::from_static(OFFLINE.as_bytes()),
            );
            c.client.disconnect();
        } else {
            self.conn = None;
        }
    }

    fn sync(&mut self) {
        let started = std::time::Instant::now();
        let multi_thread = tokio::runtime::Handle::current().runtime_flavor()
            == tokio::runtime::RuntimeFlavor::MultiThread;
        // fsync blocks; let the runtime move other tasks off this thread meanwhile. A buffer in
        // memory only has nothing that blocks, and `block_in_place` is not free: it hands the
        // worker to another thread whenever that thread starts in time, and every thread the
        // worker runs on keeps a malloc arena with its own slack (README, Benchmarks).
        let result = if multi_thread && self.store.is_durable() {
            tokio::task::block_in_place(|| self.store.sync())
        } else {
            self.store.sync()
        };
        match result {
            Ok(rewritten) => {
                if let Some(r) = rewritten {
                    events::buffer_rewritten(r.held, r.because);
                } else if self.store.is_durable() && !self.store.disk_refused() {
                    events::buffer_synced(started.elapsed().as_secs_f64());
                }
            }
            Err(e) => events::buffer_io_failed(&e, store::RETRY_SYNCS),
        }
        events::buffer_on_disk(self.store.is_durable() && !self.store.disk_refused());
        let age = self.store.oldest_created_ms().map_or(0.0, |t| {
            (millis(SystemTime::now()) - t).max(0) as f64 / 1000.0
        });
        events::buffer_level(self.store.len(), self.store.bytes(), age);
        if let Some(total) = self.store.drop_episode_over() {
            events::buffer_drop_episode_over(total);
        }
    }

    fn accept(&mut self, mut p: Publication) {
        if let Some(e) = &self.encryption
            && e.covers(&p.topic, &self.status_topic)
        {
            p.payload = seal(e, &p.topic, &p.payload, p.created_at);
        }
        if p.qos == Qos::AtMostOnce {
            match &self.conn {
                Some(c) => {
                    // Never silent: a full request queue is counted, not ignored.
                    if let Err(topic) =
                        c.client
                            .publish(p.topic, Qos::AtMostOnce, p.retain, p.payload.into())
                    {
                        events::publication_dropped(&topic, "client_busy");
                    }
                }
                None => events::publication_dropped(&p.topic, "offline"),
            }
            return;
        }
        let was_dropping = self.store.is_dropping();
        let (_, dropped) = self.store.push(
            p.topic,
            Bytes::from(p.payload),
            p.qos,
            p.retain,
            millis(p.created_at),
        );
        if dropped > 0 {
            events::buffer_dropped(dropped, !was_dropping);
        }
    }

    /// Hand buffered entries to the connection, oldest first, up to the window.
    fn pump(&mut self) {
        let Some(c) = &mut self.conn else { return };
        // At most half the buffer in flight, so that a full buffer always has an entry to
        // drop that is not on its way (and so may yet arrive, though counted as lost).
        let window = WINDOW.min((self.store.max_rows() / 2).max(1));
        // While more entries wait than the window has room for, hand them over a batch at a
        // time: a few acknowledgements returning would otherwise each let a few publications
        // out, one system call and one broker read apiece.
        let room = window.saturating_sub(c.handed);
        let waiting = self.store.len().saturating_sub(c.handed);
        if room < pump_batch(window) && waiting > room {
            return;
        }
        while c.handed < window {
            let Some(e) = self.store.next_unacked(c.cursor) else {
                break;
            };
            if c.client
                .publish(Arc::clone(&e.topic), e.qos, e.retain, e.payload.clone())
                .is_err()
            {
                break;
            }
            c.cursor = e.seq + 1;
            c.unsent.push_back(Handed::Entry(e.seq));
            c.handed += 1;
        }
        self.store.set_in_flight_below(c.cursor);
    }

    fn announcements(&self) -> Vec<Announcement> {
        let a = self
            .announce
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        a.on_connect.clone()
    }

    /// Publish a session message; `remember`: a profile's announcement, kept from resending
    /// once the broker acknowledged it retained.
    fn announce(c: &mut Conn, p: &Publication, remember: bool) {
        let ok = c
            .client
            .publish(
                Arc::clone(&p.topic),
                p.qos,
                p.retain,
                p.payload.clone().into(),
            )
            .is_ok();
        if ok && p.qos != Qos::AtMostOnce {
            let key = (remember && p.retain).then(|| announcement_key(p));
            c.unsent.push_back(Handed::Announcement(key));
        }
    }

    fn on_session(&mut self, s: Session) {
        match s {
            Session::Up {
                conn,
                client,
                broker,
            } => {
                if self.acked_by.as_ref() != Some(&broker) {
                    self.acked_retained.clear();
                    self.acked_by = Some(Arc::clone(&broker));
                }
                let mut c = Conn {
                    id: conn,
                    client,
                    unsent: VecDeque::new(),
                    in_flight: InFlight::default(),
                    handed: 0,
                    cursor: 0,
                };
                let online = Publication {
                    topic: Arc::clone(&self.status_topic),
                    payload: ONLINE.as_bytes().to_vec(),
                    qos: Qos::AtLeastOnce,
                    retain: true,
                    created_at: SystemTime::now(),
                };
                Self::announce(&mut c, &online, false);
                // A retained announcement the broker already holds is not sent again; one
                // that is not retained is sent after every connect.
                for a in self.announcements() {
                    let p = &a.publication;
                    if !(a.once && p.retain && self.acked_retained.contains(&announcement_key(p))) {
                        Self::announce(&mut c, p, a.once);
                    }
                }
                // Why the gateway was away, for consoles: retained on <status>/connection.
                let failure = self.last_failure.take().map(|(state, reason, at)| {
                    serde_json::json!({
                        "state": state.as_str(),
                        "reason": reason,
                        "ts": crate::vocabulary::timestamp(at),
                    })
                });
                let connection = Publication {
                    topic: Arc::from(format!("{}/connection", self.status_topic)),
                    payload: serde_json::json!({
                        "state": ConnState::Connected.as_str(),
                        "broker": broker.as_ref(),
                        "ts": crate::vocabulary::timestamp(SystemTime::now()),
                        "last_failure": failure,
                    })
                    .to_string()
                    .into_bytes(),
                    qos: Qos::AtLeastOnce,
                    retain: true,
                    created_at: SystemTime::now(),
                };
                Self::announce(&mut c, &connection, false);
                self.conn = Some(c);
            }
            Session::Refused { conn, pkid, reason } => {
                if let Some(c) = self.conn.as_mut().filter(|c| c.id == conn)
                    && let Some((Handed::Entry(seq), _)) = c.in_flight.remove(pkid)
                {
                    // Sending it again would be refused again: report it, count it, drop it.
                    let topic = self
                        .store
                        .next_unacked(seq)
                        .filter(|e| e.seq == seq)
                        .map(|e| e.topic.to_string())
                        .unwrap_or_default();
                    events::publication_refused(&topic, &reason);
                    c.handed -= 1;
                    self.store.ack(seq);
                }
            }
            Session::Failed { state, reason } => {
                self.last_failure = Some((state, reason, SystemTime::now()));
            }
            Session::Down { conn } => {
                if self.conn.as_ref().is_some_and(|c| c.id == conn) {
                    self.conn = None;
                    self.store.set_in_flight_below(0);
                }
            }
            Session::Steps { conn, steps } => {
                let Some(c) = self.conn.as_mut().filter(|c| c.id == conn) else {
                    return;
                };
                // One clock read for the batch: its events happened together.
                let now = Instant::now();
                for step in steps {
                    match step {
                        Step::Sent(pkid) => {
                            let what = c.unsent.pop_front().unwrap_or(Handed::Announcement(None));
                            c.in_flight.insert(pkid, what, now);
                        }
                        Step::Acked(pkid) => {
                            let Some((what, at)) = c.in_flight.remove(pkid) else {
                                continue;
                            };
                            events::publish_acknowledged(now.saturating_duration_since(at));
                            match what {
                                Handed::Entry(seq) => {
                                    c.handed -= 1;
                                    self.store.ack(seq);
                                }
                                Handed::Announcement(Some(key)) => {
                                    events::announcement_acknowledged(&key.0);
                                    self.acked_retained.insert(key);
                                }
                                Handed::Announcement(None) => {}
                            }
                        }
                    }
                }
            }
        }
    }

    fn on_control(&mut self, c: Control) {
        let Control::Update {
            subscriptions,
            on_connect,
        } = c;
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
                .filter(|n| {
                    !a.on_connect.iter().any(|o| {
                        o.publication.topic == n.publication.topic
                            && o.publication.payload == n.publication.payload
                    })
                })
                .cloned()
                .collect();
            a.subscriptions = subscriptions;
            a.on_connect = on_connect;
            (added, removed, changed)
        };
        let Some(c) = &mut self.conn else { return };
        for t in removed {
            c.client.unsubscribe(&t);
        }
        for (t, q) in added {
            c.client.subscribe(&t, q);
        }
        for a in &changed {
            Self::announce(c, &a.publication, a.once);
        }
    }
}

/// A failed connection's state and a reason for the log. Never contains a secret: rumqttc's
/// errors carry no credentials.
fn classify(e: &rumqttc::ConnectionError) -> (ConnState, String) {
    use rumqttc::ConnectReturnCode as Code;
    let state = match e {
        rumqttc::ConnectionError::ConnectionRefused(Code::BadUserNamePassword) => {
            ConnState::BadCredentials
        }
        rumqttc::ConnectionError::ConnectionRefused(Code::NotAuthorized) => {
            ConnState::NotAuthorised
        }
        rumqttc::ConnectionError::NetworkTimeout => ConnState::Unreachable,
        other => super::tls::classify(other),
    };
    let reason = match e {
        rumqttc::ConnectionError::ConnectionRefused(_) => e.to_string(),
        _ => super::tls::reason(e).unwrap_or_else(|| e.to_string()),
    };
    (state, reason)
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// How one connection ended.
enum Ended {
    /// We disconnected (shutdown): stop.
    Disconnected,
    /// `hard_stop`: stop.
    Stopped,
    Failed(Failure),
}

/// Why a connection (attempt) failed.
struct Failure {
    state: ConnState,
    reason: String,
    /// The broker ended it: end of stream, a reset, or a DISCONNECT from the broker.
    by_broker: bool,
    /// The broker said the session was taken over (MQTT 5 DISCONNECT reason 0x8E).
    taken_over: bool,
}

/// An I/O error that means the other end closed or reset the connection.
fn peer_closed_io(e: &std::io::Error) -> bool {
    use std::io::ErrorKind as K;
    matches!(
        e.kind(),
        K::ConnectionReset | K::ConnectionAborted | K::UnexpectedEof | K::BrokenPipe
    )
}

fn failure_v4(e: &rumqttc::ConnectionError) -> Failure {
    use rumqttc::{ConnectionError as E, StateError as S};
    let (state, reason) = classify(e);
    let by_broker = match e {
        E::MqttState(S::ConnectionAborted) => true,
        E::MqttState(S::Io(io)) | E::Io(io) => peer_closed_io(io),
        _ => false,
    };
    Failure {
        state,
        reason,
        by_broker,
        taken_over: false,
    }
}

fn failure_v5(e: &rumqttc::v5::ConnectionError) -> Failure {
    use rumqttc::v5::mqttbytes::v5::DisconnectReasonCode as D;
    use rumqttc::v5::{ConnectionError as E, StateError as S};
    // rumqttc's MQTT 5 reader wraps a failed read (and the TLS alert in it, such as a broker's
    // "certificate required") in a variant that does not expose it as its source.
    if let E::MqttState(S::Deserialization(rumqttc::v5::mqttbytes::Error::Io(io))) = e {
        return Failure {
            state: super::tls::classify(io),
            reason: super::tls::reason(io).unwrap_or_else(|| io.to_string()),
            by_broker: peer_closed_io(io),
            taken_over: false,
        };
    }
    let state = match e {
        E::ConnectionRefused(code) => {
            use rumqttc::v5::mqttbytes::v5::ConnectReturnCode as C;
            match code {
                C::BadUserNamePassword => ConnState::BadCredentials,
                C::NotAuthorized => ConnState::NotAuthorised,
                _ => ConnState::Error,
            }
        }
        other => super::tls::classify(other),
    };
    let reason = match e {
        E::ConnectionRefused(_) => e.to_string(),
        _ => super::tls::reason(e).unwrap_or_else(|| e.to_string()),
    };
    let (by_broker, taken_over) = match e {
        E::MqttState(S::ServerDisconnect { reason_code, .. }) => {
            (true, *reason_code == D::SessionTakenOver)
        }
        E::MqttState(S::ConnectionAborted) => (true, false),
        E::MqttState(S::Io(io)) | E::Io(io) => (peer_closed_io(io), false),
        _ => (false, false),
    };
    Failure {
        state,
        reason,
        by_broker,
        taken_over,
    }
}

/// What a connection reports to, shared by both protocol versions.
struct Reporter<'a> {
    conn: u64,
    sessions: &'a mpsc::UnboundedSender<Session>,
    commands: &'a mpsc::Sender<IncomingCommand>,
    announce: &'a std::sync::Mutex<Announce>,
    broker: &'a str,
    /// With several brokers: the broker of the last connection that was up, when this one is
    /// to another (a failover, reported once this connection is up).
    switched_from: Option<&'a str>,
    /// When the connection got its ConnAck, if it did.
    up_at: std::sync::OnceLock<Instant>,
    /// Sparkplug: the node's session, and the bdSeq this connection's will carries.
    node: Option<(&'a NodeHook, u64)>,
}

impl Reporter<'_> {
    fn connected(&self, client: Client) {
        let _ = self.up_at.set(Instant::now());
        events::mqtt_connected(self.broker);
        if let Some(from) = self.switched_from {
            events::mqtt_failover(from, self.broker);
        }
        report_state(ConnState::Connected);
        let subscriptions = self
            .announce
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .subscriptions
            .clone();
        for (topic, qos) in subscriptions {
            client.subscribe(&topic, qos);
        }
        self.send(Session::Up {
            conn: self.conn,
            client,
            broker: Arc::from(self.broker),
        });
        // After the subscriptions and the publisher's Up: the profile's NBIRTH follows both.
        if let Some((n, bd_seq)) = self.node {
            (n.session.on_session)(Some(bd_seq));
        }
    }
    fn command(&self, topic: String, payload: Bytes, retain: bool) {
        let cmd = IncomingCommand {
            topic,
            payload,
            retain,
        };
        if let Err(e) = self.commands.try_send(cmd) {
            let cmd = match e {
                mpsc::error::TrySendError::Full(c) | mpsc::error::TrySendError::Closed(c) => c,
            };
            events::command_rejected(&cmd.topic, "", "command queue full", "busy");
        }
    }
    fn send(&self, s: Session) {
        let _ = self.sessions.send(s);
    }
}

/// One MQTT 3.1.1 connection, from connect to its end. Dropping its event loop at the end
/// drops every request still queued for it.
/// When the event loop beats its heartbeat: after every event, except inside a run of
/// outgoing publications, where every [`BeatRuns::EVERY`]th does. A beat reads the clock, and
/// a burst of 10,000 publications is 10,000 events (the clock reads were 2.5 % of the
/// gateway's CPU at 100,000 values/s, perf). A run of 64 takes well under a millisecond, and
/// an idle connection still beats on every keep-alive ping.
#[derive(Debug, Default)]
struct BeatRuns {
    /// Outgoing publications since the last beat.
    run: u32,
}

impl BeatRuns {
    const EVERY: u32 = 64;

    /// Whether to beat after an event; `publication`: it was an outgoing PUBLISH.
    fn due(&mut self, publication: bool) -> bool {
        if publication {
            self.run += 1;
            if self.run < Self::EVERY {
                return false;
            }
        }
        self.run = 0;
        true
    }
}

async fn drive_v4(
    opts: &MqttOptions,
    r: &Reporter<'_>,
    beat: &crate::supervisor::Heartbeat,
    hard_stop: &CancellationToken,
) -> Ended {
    let (client, mut event_loop) = AsyncClient::new(opts.clone(), REQUESTS);
    event_loop.set_network_options(network_options());
    // QoS 1/2 steps in one log, not one event each (vendor/rumqttc/FIELDGATE.md).
    event_loop.state.publish_steps = Some(Vec::with_capacity(PendingSteps::MAX));
    // Woken once per run of PUBACKs, not per TCP segment (vendor/rumqttc/FIELDGATE.md).
    event_loop.ack_lowat = true;
    // ... and such a run handled in one turn, its steps sent to the publisher together.
    event_loop.read_batch = Some(PendingSteps::MAX);
    // Unacknowledged publications are resent from the buffer after a reconnect (each
    // connection has an event loop of its own), so rumqttc keeps no copies of them.
    event_loop.state.keep_sent = false;
    let mut beats = BeatRuns::default();
    let mut steps = PendingSteps::default();
    // One registration with the token for the whole loop, polled only when the event loop
    // has nothing ready: a fresh `cancelled()` per event locked the token's waiter list twice
    // per publication. The flag is read first, so a flood of ready events cannot hold off a
    // hard stop.
    let stopped = hard_stop.cancelled();
    tokio::pin!(stopped);
    loop {
        if hard_stop.is_cancelled() {
            steps.flush(r);
            return Ended::Stopped;
        }
        let event = tokio::select! {
            biased;
            e = event_loop.poll() => e,
            () = &mut stopped => return Ended::Stopped,
        };
        if beats.due(matches!(
            event,
            Ok(Event::Outgoing(Outgoing::Publish(_)) | Event::PublishSteps)
        )) {
            beat.beat();
        }
        match event {
            Ok(Event::PublishSteps) => {
                if let Some(log) = event_loop.state.publish_steps.as_mut() {
                    steps.take(log, r);
                }
            }
            Ok(Event::Incoming(Packet::ConnAck(_))) => r.connected(Client::V4(client.clone())),
            Ok(Event::Incoming(Packet::Publish(p))) => {
                r.command(p.topic.to_string(), p.payload, p.retain)
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                // Read until the broker closes the connection: see [`LINGER`].
                let until = Instant::now() + LINGER;
                steps.flush(r);
                while let Ok(Ok(_)) = tokio::time::timeout_at(until, event_loop.poll()).await {}
                return Ended::Disconnected;
            }
            Ok(_) => {}
            Err(e) => {
                steps.flush(r);
                return Ended::Failed(failure_v4(&e));
            }
        }
        if event_loop.state.events.is_empty() {
            steps.flush(r);
        }
    }
}

/// One MQTT 5 connection. As `drive_v4`, and a PUBACK or PUBREC with a failure reason (an
/// ACL denial, a quota) is reported as a refusal of that publication.
async fn drive_v5(
    opts: &rumqttc::v5::MqttOptions,
    r: &Reporter<'_>,
    beat: &crate::supervisor::Heartbeat,
    hard_stop: &CancellationToken,
) -> Ended {
    use rumqttc::v5::mqttbytes::v5::{Packet as P5, PubAckReason, PubRecReason};
    use rumqttc::v5::{AsyncClient as Client5, Event as Event5};
    let conn = r.conn;
    let (client, mut event_loop) = Client5::new(opts.clone(), REQUESTS);
    let mut beats = BeatRuns::default();
    let mut steps = PendingSteps::default();
    // One registration with the token for the whole loop, polled only when the event loop
    // has nothing ready: a fresh `cancelled()` per event locked the token's waiter list twice
    // per publication. The flag is read first, so a flood of ready events cannot hold off a
    // hard stop.
    let stopped = hard_stop.cancelled();
    tokio::pin!(stopped);
    loop {
        if hard_stop.is_cancelled() {
            steps.flush(r);
            return Ended::Stopped;
        }
        let event = tokio::select! {
            biased;
            e = event_loop.poll() => e,
            () = &mut stopped => return Ended::Stopped,
        };
        if beats.due(matches!(event, Ok(Event5::Outgoing(Outgoing::Publish(_))))) {
            beat.beat();
        }
        match event {
            Ok(Event5::Incoming(P5::ConnAck(_))) => r.connected(Client::V5(client.clone())),
            Ok(Event5::Incoming(P5::Publish(p))) => {
                r.command(
                    String::from_utf8_lossy(&p.topic).into_owned(),
                    p.payload,
                    p.retain,
                );
            }
            Ok(Event5::Outgoing(Outgoing::Disconnect)) => {
                // Read until the broker closes the connection: see [`LINGER`].
                let until = Instant::now() + LINGER;
                steps.flush(r);
                while let Ok(Ok(_)) = tokio::time::timeout_at(until, event_loop.poll()).await {}
                return Ended::Disconnected;
            }
            Ok(Event5::Outgoing(Outgoing::Publish(pkid))) if pkid != 0 => {
                steps.push(Step::Sent(pkid), r);
            }
            Ok(Event5::Incoming(P5::PubAck(a))) => match a.reason {
                PubAckReason::Success | PubAckReason::NoMatchingSubscribers => {
                    steps.push(Step::Acked(a.pkid), r);
                }
                reason => {
                    steps.flush(r);
                    r.send(Session::Refused {
                        conn,
                        pkid: a.pkid,
                        reason: format!("{reason:?}"),
                    });
                }
            },
            Ok(Event5::Incoming(P5::PubRec(rec)))
                if !matches!(
                    rec.reason,
                    PubRecReason::Success | PubRecReason::NoMatchingSubscribers
                ) =>
            {
                steps.flush(r);
                r.send(Session::Refused {
                    conn,
                    pkid: rec.pkid,
                    reason: format!("{:?}", rec.reason),
                });
            }
            Ok(Event5::Incoming(P5::PubComp(c))) => steps.push(Step::Acked(c.pkid), r),
            Ok(_) => {}
            Err(e) => {
                steps.flush(r);
                return Ended::Failed(failure_v5(&e));
            }
        }
        if event_loop.state.events.is_empty() {
            steps.flush(r);
        }
    }
}

/// After our DISCONNECT, how long the connection task reads on until the broker closes the
/// connection, so that acknowledgements still on their way (of the `offline` and the
/// Sparkplug NDEATH just published) are read. Closing a socket with unread data makes the
/// kernel send a reset, and a broker that sees the reset before it has read our DISCONNECT
/// loses the DISCONNECT with it and publishes the last will.
const LINGER: Duration = Duration::from_secs(1);

/// What the connection task makes of one ended connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// An ordinary failure or loss: retry after the delay.
    Retry(Duration),
    /// The session was taken over (again): retry after the delay, which grows with every
    /// takeover.
    TakenOver(Duration),
}

/// Reconnect policy: tells a session taken over by another client with our id from other
/// losses, and picks the delay before the next attempt.
///
/// - The ordinary backoff (250 ms doubling to 30 s) is not reset by a ConnAck, only by a
///   connection that stayed up for `settled` (30 s or the keep-alive, whichever is longer):
///   a broker that accepts and at once drops us is not hammered.
/// - A takeover is a session the broker ends within [`SHORT_SESSION`] of its ConnAck, twice
///   in a row, or one an MQTT 5 broker ends with reason "session taken over". From then on
///   every session the broker ends before it settled counts as taken over, and waits a
///   second backoff (5 s doubling to 5 min) that only a settled connection resets.
struct Policy {
    settled: Duration,
    backoff: Backoff,
    takeover_backoff: Backoff,
    short_in_a_row: u32,
    taken_over: bool,
}

impl Policy {
    fn new(keep_alive: Duration) -> Policy {
        Policy {
            settled: keep_alive.max(Duration::from_secs(30)),
            backoff: Backoff::new(BACKOFF.0, BACKOFF.1),
            takeover_backoff: Backoff::new(TAKEOVER_BACKOFF.0, TAKEOVER_BACKOFF.1),
            short_in_a_row: 0,
            taken_over: false,
        }
    }

    /// The next attempt goes to another broker (`mqtt.hosts`): sessions ended on the old one
    /// say nothing about a takeover on the new one (a broker that dies ends its sessions
    /// early too).
    fn switched_broker(&mut self) {
        self.short_in_a_row = 0;
        self.taken_over = false;
    }

    /// A connection ended: `up_for` is how long it had been up since its ConnAck (`None`: it
    /// never got one).
    fn ended(&mut self, up_for: Option<Duration>, f: &Failure) -> Verdict {
        if up_for.is_some_and(|d| d >= self.settled) {
            self.backoff.reset();
            self.takeover_backoff.reset();
            self.short_in_a_row = 0;
            self.taken_over = false;
        }
        if let Some(d) = up_for {
            if f.by_broker && (f.taken_over || d < SHORT_SESSION) {
                self.short_in_a_row += 1;
            } else {
                self.short_in_a_row = 0;
            }
            if f.taken_over || self.short_in_a_row >= 2 {
                self.taken_over = true;
            }
            if self.taken_over && f.by_broker && d < self.settled {
                return Verdict::TakenOver(self.takeover_backoff.next_delay());
            }
        }
        Verdict::Retry(self.backoff.next_delay())
    }
}

/// Connect, run the connection until it fails, back off, repeat; a fresh client and event
/// loop each time. Every event the publisher needs goes to `sessions`, in order.
///
/// With several brokers (`brokers`, in order; `mqtt.hosts`): a failed connect or a lost
/// connection moves to the next broker (after the last, the first) at once; only when every
/// broker has failed since the last connection that came up does the usual backoff apply. A
/// broker that works is kept: there is no moving back to the first while it works. A session
/// taken over stays on its broker (the other client is there) and waits as usual.
async fn run_connection(
    brokers: Vec<Options>,
    keep_alive: Duration,
    announce: Arc<std::sync::Mutex<Announce>>,
    sessions: mpsc::UnboundedSender<Session>,
    commands: mpsc::Sender<IncomingCommand>,
    hard_stop: CancellationToken,
    mut node: Option<NodeHook>,
) {
    let address = |o: &Options| {
        let (host, port) = match o {
            Options::V4(o) => o.broker_address(),
            Options::V5(o) => o.broker_address(),
        };
        crate::model::broker_name(&host, port)
    };
    let Some(first) = brokers.first() else {
        return;
    };
    let client_id = match first {
        Options::V4(o) => o.client_id(),
        Options::V5(o) => o.client_id(),
    };
    let addresses: Vec<String> = brokers.iter().map(address).collect();
    // The broker in use, how many have failed in a row since a connection was up, and the
    // broker of the last connection that came up.
    let (mut current, mut failed_in_row) = (0usize, 0usize);
    let mut last_up: Option<usize> = None;
    let mut policy = Policy::new(keep_alive);
    let mut last_error = String::new();
    // `poll()` is never raced against a timer (it also connects and writes, which must not be
    // cut short), so this task beats when poll returns: at least once per keep-alive (the ping).
    let beat =
        crate::supervisor::heartbeat_within("mqtt", keep_alive * 2 + Duration::from_secs(10));
    let mut tick = tokio::time::interval(crate::supervisor::BEAT_EVERY);
    for conn in 1u64.. {
        let opts = &brokers[current];
        let broker = addresses[current].as_str();
        // Sparkplug: a new bdSeq and NDEATH will for every CONNECT.
        let prepared = match node.as_mut() {
            Some(n) => n
                .before_connect(opts)
                .map(|(o, bd)| (std::borrow::Cow::Owned(o), Some(bd))),
            None => Ok((std::borrow::Cow::Borrowed(opts), None)),
        };
        let (opts, bd_seq, refused) = match prepared {
            Ok((o, bd)) => (o, bd, None),
            Err(reason) => (std::borrow::Cow::Borrowed(opts), None, Some(reason)),
        };
        let reporter = Reporter {
            conn,
            sessions: &sessions,
            commands: &commands,
            announce: &announce,
            broker,
            switched_from: last_up
                .filter(|&l| l != current)
                .map(|l| addresses[l].as_str()),
            up_at: std::sync::OnceLock::new(),
            node: node.as_ref().zip(bd_seq),
        };
        let ended = match (&refused, &*opts) {
            (Some(reason), _) => Ended::Failed(Failure {
                state: ConnState::Error,
                reason: reason.clone(),
                by_broker: false,
                taken_over: false,
            }),
            (None, Options::V4(o)) => drive_v4(o, &reporter, &beat, &hard_stop).await,
            (None, Options::V5(o)) => drive_v5(o, &reporter, &beat, &hard_stop).await,
        };
        let up_for = reporter.up_at.get().map(|t| t.elapsed());
        if up_for.is_some() {
            last_up = Some(current);
        }
        if let (Some(n), Some(_)) = (node.as_ref(), up_for) {
            (n.session.on_session)(None);
        }
        let failure = match ended {
            Ended::Disconnected => {
                let _ = sessions.send(Session::Down { conn });
                return;
            }
            Ended::Stopped => return,
            Ended::Failed(f) => f,
        };
        let mut verdict = policy.ended(up_for, &failure);
        // Fail over: the next broker, at once while some broker of the list has not failed
        // since the last connection that came up.
        if up_for.is_some() {
            failed_in_row = 0;
        }
        failed_in_row += 1;
        let next = (current + 1) % brokers.len();
        if brokers.len() > 1 && matches!(verdict, Verdict::Retry(_)) {
            if failed_in_row < brokers.len() {
                verdict = Verdict::Retry(Duration::ZERO);
            }
            policy.switched_broker();
            current = next;
        }
        let (state, reason, delay) = match verdict {
            Verdict::Retry(delay) => (failure.state, failure.reason, delay),
            Verdict::TakenOver(delay) => {
                events::mqtt_taken_over(
                    broker,
                    &client_id,
                    up_for.unwrap_or_default(),
                    &failure.reason,
                    delay,
                );
                let reason = format!(
                    "the broker closed the session {:.1} s after accepting it ({}): another client with client id {client_id} is probably connected",
                    up_for.unwrap_or_default().as_secs_f64(),
                    failure.reason
                );
                (ConnState::SessionTakenOver, reason, delay)
            }
        };
        report_state(state);
        let _ = sessions.send(Session::Failed {
            state,
            reason: reason.clone(),
        });
        let _ = sessions.send(Session::Down { conn });
        if matches!(verdict, Verdict::Retry(_)) && (up_for.is_some() || reason != last_error) {
            events::mqtt_down(broker, state.as_str(), &reason, delay);
        }
        last_error = reason;
        // Sleep out the backoff, beating as we go.
        let until = Instant::now() + delay;
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

// ---- Sparkplug B edge node session hooks -------------------------------------------------
//
// Kept apart from the publishing internals: a new will per CONNECT (NDEATH with the next
// bdSeq, from the state directory), the session's news to the profile after the
// subscriptions and Up, and NDEATH before DISCONNECT at shutdown.

/// A Sparkplug B edge node's part of the MQTT session (Sparkplug 3.0, Edge Node Session
/// Establishment and Termination):
/// the last will is its NDEATH (QoS 1, not retained) with a bdSeq that changes on every
/// CONNECT and is kept in `state_dir` ([`super::bdseq`]); the profile is told of every
/// connection that is up, with its bdSeq, after the command topics are subscribed (so NCMD
/// and DCMD are subscribed before the NBIRTH), and of every loss. A clean shutdown publishes
/// the NDEATH itself, then DISCONNECT. The will replaces the `offline` status will: MQTT has
/// one will per connection; `offline` is still published at a clean shutdown.
pub struct NodeSession {
    /// `spBv1.0/<group>/NDEATH/<edge node>`.
    pub death_topic: Arc<str>,
    /// The NDEATH payload for a bdSeq and the CONNECT time (ms since the epoch).
    pub death_payload: fn(u64, u64) -> Vec<u8>,
    /// Where the bdSeq file lives.
    pub state_dir: std::path::PathBuf,
    /// `Some(bd_seq)`: a connection is up; `None`: it is gone.
    pub on_session: Box<dyn Fn(Option<u64>) + Send + Sync>,
}

impl std::fmt::Debug for NodeSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeSession")
            .field("death_topic", &self.death_topic)
            .field("state_dir", &self.state_dir)
            .finish_non_exhaustive()
    }
}

/// The live connection's NDEATH (topic, payload), shared with the publisher.
type NodeDeath = Arc<std::sync::Mutex<Option<(Arc<str>, Vec<u8>)>>>;

/// The connection task's side of [`NodeSession`].
struct NodeHook {
    session: NodeSession,
    bd_seq: super::bdseq::BdSeq,
    death: NodeDeath,
}

impl NodeHook {
    fn new(session: NodeSession) -> NodeHook {
        NodeHook {
            bd_seq: super::bdseq::BdSeq::open(&session.state_dir),
            session,
            death: Arc::default(),
        }
    }

    /// The options for the next CONNECT: the next bdSeq (stored first) in the NDEATH will.
    /// An error (the bdSeq could not be stored) says why this attempt must not connect.
    fn before_connect(&mut self, opts: &Options) -> Result<(Options, u64), String> {
        let bd = self.bd_seq.take().map_err(|e| {
            format!(
                "cannot store the Sparkplug bdSeq in {}: {e}; not connecting (a restart would reuse an old bdSeq and hosts would drop the node)",
                self.bd_seq.path().display()
            )
        })?;
        let now = u64::try_from(millis(SystemTime::now())).unwrap_or(0);
        let payload = (self.session.death_payload)(bd, now);
        let topic = self.session.death_topic.as_ref();
        let opts = match opts {
            Options::V4(o) => {
                let mut o = o.clone();
                o.set_last_will(LastWill::new(
                    topic,
                    payload.clone(),
                    QoS::AtLeastOnce,
                    false,
                ));
                Options::V4(o)
            }
            Options::V5(o) => {
                let mut o = o.clone();
                o.set_last_will(rumqttc::v5::mqttbytes::v5::LastWill::new(
                    topic,
                    payload.clone(),
                    rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                    false,
                    None,
                ));
                Options::V5(o)
            }
        };
        *self
            .death
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some((Arc::clone(&self.session.death_topic), payload));
        Ok((opts, bd))
    }
}

/// Publish the NDEATH (QoS 1, not retained) ahead of DISCONNECT, which follows it on the wire.
fn publish_death(client: &Client, death: Option<&NodeDeath>) {
    let Some(death) = death else { return };
    let d = death
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    if let Some((topic, payload)) = d {
        let _ = client.publish(topic, Qos::AtLeastOnce, false, payload.into());
    }
}

/// The connection state gauge: one series per state, 1 for the current one.
fn report_state(state: ConnState) {
    events::mqtt_state(state.as_str(), &ConnState::ALL.map(ConnState::as_str));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A publisher with `n` QoS 1 entries buffered and a connection whose event loop is never
    /// polled: what `pump` hands over stays in rumqttc's request queue.
    fn saturated(n: usize) -> (Publisher, rumqttc::EventLoop) {
        let (mut store, _) = Store::open(&crate::model::StoreSettings {
            path: None,
            max_rows: 100_000,
            max_bytes: 1 << 30,
            segment_bytes: 1 << 20,
        });
        for _ in 0..n {
            store.push(
                Arc::from("t/x"),
                Bytes::from_static(b"1"),
                Qos::AtLeastOnce,
                false,
                0,
            );
        }
        let (client, event_loop) =
            AsyncClient::new(MqttOptions::new("pump-test", "127.0.0.1", 1883), REQUESTS);
        let p = Publisher {
            store,
            status_topic: Arc::from("s"),
            announce: Arc::new(std::sync::Mutex::new(Announce {
                subscriptions: Vec::new(),
                on_connect: Vec::new(),
            })),
            conn: Some(Conn {
                id: 1,
                client: Client::V4(client),
                unsent: VecDeque::new(),
                in_flight: InFlight::default(),
                handed: 0,
                cursor: 0,
            }),
            sync_interval: Duration::from_secs(1),
            shutdown_grace: SHUTDOWN_GRACE,
            encryption: None,
            last_failure: None,
            acked_retained: std::collections::HashSet::new(),
            acked_by: None,
            death: None,
        };
        (p, event_loop)
    }

    /// Acknowledge the oldest `n` handed entries, as `Step::Acked` does.
    fn ack_oldest(p: &mut Publisher, n: usize) {
        let c = p.conn.as_mut().unwrap();
        for _ in 0..n {
            let Some(Handed::Entry(seq)) = c.unsent.pop_front() else {
                panic!("an entry was handed");
            };
            c.handed -= 1;
            p.store.ack(seq);
        }
    }

    #[test]
    fn a_saturated_window_is_refilled_a_quarter_at_a_time() {
        let (mut p, _event_loop) = saturated(3_000);
        let first = p.store.front_seq();
        p.pump();
        let handed = |p: &Publisher| p.conn.as_ref().unwrap().handed;
        assert_eq!(handed(&p), WINDOW, "the first pump fills the window");
        // 100 come back while 1,976 wait: the room is smaller than a batch, nothing goes.
        ack_oldest(&mut p, 100);
        p.pump();
        assert_eq!(handed(&p), WINDOW - 100);
        // A quarter of the window is free: all of it is filled at once, in buffer order.
        ack_oldest(&mut p, pump_batch(WINDOW) - 100);
        p.pump();
        assert_eq!(handed(&p), WINDOW);
        let c = p.conn.as_ref().unwrap();
        assert_eq!(c.cursor, first + (WINDOW + pump_batch(WINDOW)) as u64);
        assert!(matches!(c.unsent.back(), Some(Handed::Entry(s)) if *s == c.cursor - 1));
    }

    #[test]
    fn what_waits_goes_at_once_when_it_fits() {
        let (mut p, _event_loop) = saturated(1_100);
        let first = p.store.front_seq();
        p.pump();
        assert_eq!(p.conn.as_ref().unwrap().handed, WINDOW);
        // 76 wait and 76 places are free: no reason to hold them back.
        ack_oldest(&mut p, 76);
        p.pump();
        let c = p.conn.as_ref().unwrap();
        assert_eq!(c.handed, WINDOW);
        assert_eq!(c.cursor, first + 1_100, "all 1,100 handed");
    }

    #[test]
    fn a_batch_of_steps_matches_packet_ids_to_entries_in_order() {
        let (mut p, _event_loop) = saturated(3);
        let first = p.store.front_seq();
        p.pump();
        assert_eq!(p.conn.as_ref().unwrap().handed, 3);
        // Out of order, with a packet id at the top of the range and one never sent.
        p.on_session(Session::Steps {
            conn: 1,
            steps: vec![
                Step::Sent(7),
                Step::Sent(u16::MAX),
                Step::Acked(7),
                Step::Acked(9),
                Step::Sent(1),
                Step::Acked(1),
            ],
        });
        assert_eq!(p.conn.as_ref().unwrap().handed, 1);
        assert_eq!(p.store.len(), 1, "the first and third acknowledged");
        assert_eq!(p.store.front_seq(), first + 1);
        // Another connection's steps change nothing.
        p.on_session(Session::Steps {
            conn: 2,
            steps: vec![Step::Acked(u16::MAX)],
        });
        assert_eq!(p.store.len(), 1);
        p.on_session(Session::Steps {
            conn: 1,
            steps: vec![Step::Acked(u16::MAX), Step::Acked(u16::MAX)],
        });
        assert!(
            p.store.is_empty(),
            "acknowledged once, the second is ignored"
        );
        assert_eq!(p.conn.as_ref().unwrap().handed, 0);
    }

    /// The vendored event loop's publish log (vendor/rumqttc/FIELDGATE.md): QoS 1 sends and
    /// their PUBACKs are logged in order behind one `PublishSteps` event; QoS 0 publishes and
    /// other packets are still events.
    #[test]
    fn the_event_loop_logs_qos_1_steps_in_order_behind_one_event() {
        use rumqttc::{Event, Incoming, MqttState, Outgoing, PubAck, PublishStep, Request};
        let mut st = MqttState::new(8, false);
        st.publish_steps = Some(Vec::new());
        let publish = |qos| {
            Request::Publish(rumqttc::Publish::from_bytes(
                "t/x",
                qos,
                Bytes::from_static(b"1"),
            ))
        };
        for _ in 0..3 {
            st.handle_outgoing_packet(publish(QoS::AtLeastOnce))
                .unwrap();
        }
        assert_eq!(
            st.publish_steps.as_deref(),
            Some(
                &[
                    PublishStep::Sent(1),
                    PublishStep::Sent(2),
                    PublishStep::Sent(3)
                ][..]
            )
        );
        assert_eq!(Vec::from(st.events.clone()), [Event::PublishSteps]);
        st.handle_outgoing_packet(publish(QoS::AtMostOnce)).unwrap();
        st.handle_incoming_packet(Incoming::PubAck(PubAck::new(2)))
            .unwrap();
        st.handle_incoming_packet(Incoming::PingResp).unwrap();
        st.handle_incoming_packet(Incoming::PubAck(PubAck::new(1)))
            .unwrap();
        assert_eq!(
            Vec::from(st.events.clone()),
            [
                Event::PublishSteps,
                Event::Outgoing(Outgoing::Publish(0)),
                Event::PublishSteps,
                Event::Incoming(Incoming::PingResp),
                Event::PublishSteps,
            ],
            "QoS 0 and the ping stay events, in order among the markers"
        );
        assert_eq!(
            st.publish_steps.as_deref().unwrap()[3..],
            [PublishStep::Acked(2), PublishStep::Acked(1)]
        );
        assert_eq!(st.inflight(), 1, "pkid 3 still waits for its PUBACK");
        assert!(
            st.handle_incoming_packet(Incoming::PubAck(PubAck::new(2)))
                .is_err(),
            "an unsolicited PUBACK still ends the connection"
        );
    }

    /// The vendored state's `keep_sent`: off, a QoS 1 publish awaiting its PUBACK is kept as
    /// a marker (packet id, QoS), so the packet written still carries topic and payload, the
    /// PUBACK is matched as before, a duplicate PUBACK is still refused, and a reconnect's
    /// `clean` has nothing to resend (the publisher resends from its buffer). On, upstream's
    /// copy comes back from `clean`.
    #[test]
    fn without_kept_copies_the_state_still_matches_acks_and_resends_nothing() {
        use rumqttc::{Incoming, MqttState, Packet, PubAck, Request};
        let publish = |t: &str| {
            Request::Publish(rumqttc::Publish::from_bytes(
                t,
                QoS::AtLeastOnce,
                Bytes::from_static(b"42"),
            ))
        };
        for keep in [false, true] {
            let mut st = MqttState::new(8, false);
            st.keep_sent = keep;
            let written = st.handle_outgoing_packet(publish("t/a")).unwrap();
            let Some(Packet::Publish(p)) = written else {
                panic!("a QoS 1 publish is written: {written:?}")
            };
            assert_eq!((&*p.topic, &p.payload[..], p.pkid), ("t/a", &b"42"[..], 1));
            st.handle_outgoing_packet(publish("t/b")).unwrap();
            st.handle_incoming_packet(Incoming::PubAck(PubAck::new(1)))
                .unwrap();
            assert_eq!(st.inflight(), 1, "keep_sent {keep}");
            assert!(
                st.handle_incoming_packet(Incoming::PubAck(PubAck::new(1)))
                    .is_err(),
                "keep_sent {keep}: a PUBACK for a free packet id is still refused"
            );
            let resend: Vec<_> = st
                .clean()
                .into_iter()
                .filter_map(|r| match r {
                    Request::Publish(p) => Some((p.topic.to_string(), p.pkid)),
                    _ => None,
                })
                .collect();
            if keep {
                assert_eq!(resend, [("t/b".to_string(), 2)]);
            } else {
                assert!(resend.is_empty(), "markers are not resent: {resend:?}");
            }
        }
    }

    /// The vendored event loop's `ack_lowat` over a real socket, against a broker that owes
    /// PUBACKs: the socket's `SO_RCVLOWAT` is raised to the bytes still owed (4 per PUBACK)
    /// and falls back to 1 when none are; a command that arrives short of it is still read
    /// (after at most the loop's 2 ms wait); every PUBACK is logged in order.
    #[tokio::test]
    async fn a_raised_receive_low_water_mark_still_lets_a_lone_command_through() {
        use rumqttc::{Event, EventLoop, Incoming, PublishStep as S};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        /// Poll until an event `want` takes, within the test's deadline.
        async fn until(el: &mut EventLoop, at: Instant, want: impl Fn(&Event) -> bool) {
            loop {
                let e = tokio::time::timeout_at(at, el.poll())
                    .await
                    .expect("the event within the deadline")
                    .expect("no connection error");
                if want(&e) {
                    return;
                }
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let broker = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = broker.local_addr().unwrap().port();
        // The broker: take the CONNECT (its remaining length fits one byte), answer CONNACK.
        let accept = tokio::spawn(async move {
            let (mut peer, _) = broker.accept().await.unwrap();
            let mut head = [0u8; 2];
            peer.read_exact(&mut head).await.unwrap();
            let mut connect = vec![0u8; usize::from(head[1])];
            peer.read_exact(&mut connect).await.unwrap();
            peer.write_all(&[0x20, 2, 0, 0]).await.unwrap();
            peer
        });
        let (client, mut el) =
            AsyncClient::new(MqttOptions::new("lowat-test", "127.0.0.1", port), 64);
        el.state.publish_steps = Some(Vec::new());
        el.ack_lowat = true;
        until(&mut el, deadline, |e| {
            matches!(e, Event::Incoming(Incoming::ConnAck(_)))
        })
        .await;
        let mut peer = accept.await.unwrap();
        for i in 0..10u8 {
            client
                .try_publish("t/x", QoS::AtLeastOnce, false, vec![b'0' + i])
                .unwrap();
        }
        // Ten QoS 1 PUBLISH on the wire, 10 bytes each (2 header, 2 + 3 topic, 2 id, 1 payload).
        let mut wire = [0u8; 100];
        let mut got = 0;
        while got < wire.len() {
            tokio::select! {
                n = peer.read(&mut wire[got..]) => got += n.unwrap(),
                e = el.poll() => { e.unwrap(); }
            }
        }
        assert_eq!(el.state.inflight(), 10);
        // PUBACK 1: nine still owed, 36 bytes.
        peer.write_all(&[0x40, 2, 0, 1]).await.unwrap();
        until(&mut el, deadline, |e| matches!(e, Event::PublishSteps)).await;
        assert_eq!(
            el.socket_rcvlowat(),
            Some(36),
            "raised to the PUBACKs still owed"
        );
        // A QoS 0 command of 9 bytes, short of 36: read all the same.
        peer.write_all(&[0x30, 7, 0, 3, b'c', b'/', b'x', b'o', b'n'])
            .await
            .unwrap();
        until(
            &mut el,
            deadline,
            |e| matches!(e, Event::Incoming(Incoming::Publish(p)) if p.payload[..] == *b"on"),
        )
        .await;
        for id in 2..=10u8 {
            peer.write_all(&[0x40, 2, 0, id]).await.unwrap();
        }
        while el.state.inflight() > 0 {
            tokio::time::timeout_at(deadline, el.poll())
                .await
                .expect("the PUBACKs within the deadline")
                .unwrap();
        }
        assert_eq!(
            el.socket_rcvlowat(),
            Some(1),
            "nothing owed: back to the default"
        );
        let acked: Vec<S> = el
            .state
            .publish_steps
            .take()
            .unwrap()
            .into_iter()
            .filter(|s| matches!(s, S::Acked(_)))
            .collect();
        assert_eq!(acked, (1..=10).map(S::Acked).collect::<Vec<_>>());
    }

    /// Without the log, the event loop behaves as upstream: an event per publish and per ack.
    #[test]
    fn without_the_log_every_step_is_an_event() {
        use rumqttc::{Event, Incoming, MqttState, Outgoing, PubAck, Request};
        let mut st = MqttState::new(8, false);
        st.handle_outgoing_packet(Request::Publish(rumqttc::Publish::from_bytes(
            "t/x",
            QoS::AtLeastOnce,
            Bytes::from_static(b"1"),
        )))
        .unwrap();
        st.handle_incoming_packet(Incoming::PubAck(PubAck::new(1)))
            .unwrap();
        assert_eq!(
            Vec::from(st.events.clone()),
            [
                Event::Outgoing(Outgoing::Publish(1)),
                Event::Incoming(Incoming::PubAck(PubAck::new(1))),
            ]
        );
    }

    #[test]
    fn a_run_of_publications_beats_every_64th_and_any_other_event_beats() {
        let mut b = BeatRuns::default();
        let beats: Vec<usize> = (1..=200).filter(|_| b.due(true)).collect();
        assert_eq!(beats, [64, 128, 192]);
        assert!(b.due(false), "a ping, an ack, a connect: always");
        let after: Vec<usize> = (1..=64).filter(|_| b.due(true)).collect();
        assert_eq!(after, [64], "the run starts again after any beat");
    }

    fn closed(taken_over: bool) -> Failure {
        Failure {
            state: ConnState::Error,
            reason: "closed".into(),
            by_broker: true,
            taken_over,
        }
    }

    fn unreachable() -> Failure {
        Failure {
            state: ConnState::Unreachable,
            reason: "refused".into(),
            by_broker: false,
            taken_over: false,
        }
    }

    const S: fn(u64) -> Option<Duration> = |s| Some(Duration::from_secs(s));

    #[test]
    fn two_short_sessions_in_a_row_are_a_takeover_and_back_off_from_5_s() {
        let mut p = Policy::new(Duration::from_secs(30));
        assert!(matches!(p.ended(S(1), &closed(false)), Verdict::Retry(_)));
        let Verdict::TakenOver(d) = p.ended(S(1), &closed(false)) else {
            panic!("not a takeover")
        };
        assert!(d >= Duration::from_millis(3750), "{d:?}");
        // Sessions that last longer but not until settled are still taken over, and the
        // delay doubles.
        let Verdict::TakenOver(d) = p.ended(S(20), &closed(false)) else {
            panic!("not a takeover")
        };
        assert!(d >= Duration::from_millis(7500), "{d:?}");
        // A settled connection ends it: an ordinary loss, back at the first step.
        let Verdict::Retry(d) = p.ended(S(31), &closed(false)) else {
            panic!("still a takeover")
        };
        assert!(d <= Duration::from_millis(320), "{d:?}");
    }

    #[test]
    fn short_sessions_on_different_brokers_are_no_takeover() {
        // Failover: the first broker dies soon after the connect, then the second does.
        let mut p = Policy::new(Duration::from_secs(30));
        assert!(matches!(p.ended(S(1), &closed(false)), Verdict::Retry(_)));
        p.switched_broker();
        assert!(matches!(p.ended(S(2), &closed(false)), Verdict::Retry(_)));
        // On one broker, the same two sessions are.
        let mut p = Policy::new(Duration::from_secs(30));
        assert!(matches!(p.ended(S(1), &closed(false)), Verdict::Retry(_)));
        assert!(matches!(
            p.ended(S(2), &closed(false)),
            Verdict::TakenOver(_)
        ));
    }

    #[test]
    fn mqtt_5_says_so_at_once() {
        let mut p = Policy::new(Duration::from_secs(30));
        assert!(matches!(
            p.ended(S(3), &closed(true)),
            Verdict::TakenOver(_)
        ));
    }

    #[test]
    fn the_backoff_is_not_reset_by_a_connack_only_by_a_settled_connection() {
        let mut p = Policy::new(Duration::from_secs(60));
        let mut last = Duration::ZERO;
        // Failed attempts and sessions the broker keeps up for 15 s (not short, not settled).
        for i in 0..6 {
            let up = if i % 2 == 0 { None } else { S(15) };
            let f = if up.is_some() {
                closed(false)
            } else {
                unreachable()
            };
            let Verdict::Retry(d) = p.ended(up, &f) else {
                panic!("15 s sessions are not a takeover")
            };
            last = d;
        }
        assert!(last >= Duration::from_secs(6), "{last:?}");
        // Settled is the keep-alive when that is longer than 30 s: 40 s is not enough.
        let Verdict::Retry(d) = p.ended(S(40), &closed(false)) else {
            panic!()
        };
        assert!(d >= Duration::from_secs(6), "{d:?}");
        let Verdict::Retry(d) = p.ended(S(61), &closed(false)) else {
            panic!()
        };
        assert!(d <= Duration::from_millis(320), "{d:?}");
    }

    #[test]
    fn losses_we_caused_or_failed_attempts_are_no_takeover() {
        let mut p = Policy::new(Duration::from_secs(30));
        let ping = Failure {
            state: ConnState::Unreachable,
            reason: "ping".into(),
            by_broker: false,
            taken_over: false,
        };
        for _ in 0..5 {
            assert!(matches!(p.ended(S(1), &ping), Verdict::Retry(_)));
            assert!(matches!(p.ended(None, &unreachable()), Verdict::Retry(_)));
        }
    }
}
