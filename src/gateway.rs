//! `run`: wires the link tasks, the mapping engine, the command executor, hot reload and the
//! MQTT client, and shuts them down in order.
//!
//! Does: create the channels and tasks, run the engine task, and apply reloads as they come.
//! Must not: parse or execute commands (`executor.rs`), decide what a reload keeps
//! (`reload.rs`), or decode and render values (`mappings`).
//!
//! Shutdown order: stop taking commands (the one in flight finishes), stop the links (a write
//! in flight finishes), drain the engine, then MQTT publishes `offline` and disconnects.
//!
//! Reload (SIGHUP, `--watch`): the new file is validated in full first; if it is invalid, or
//! changes the `mqtt` or `metrics` section, the old configuration keeps running. Otherwise the
//! MQTT session stays up, links whose behaviour is unchanged keep polling without a gap,
//! changed ones restart, removed ones stop and their retained device status is cleared. The
//! result goes to the log and, retained, to `<status_topic>/reload`.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::executor::{Snapshot, WebCommand, run_executor_with_web};
use crate::handoff::{HANDOFF, hand_off_all};
use crate::inputs::LinkEvent;
use crate::mappings::engine::{Engine, Update};
use crate::model::Model;
use crate::northbound::console::Console;
use crate::northbound::{self, Profile, SessionEvent};
use crate::outputs::mqtt::{self, IncomingCommand};
pub use crate::reload::{Reloads, reload_requests};
use crate::reload::{Running, reload, sd_reloading, start_link, writers};
use crate::vocabulary::{Announcement, Publication, Qos};

/// The northbound profiles of `model`, in publication order. A new profile is one line here
/// (it reads its own section of the model and stays quiet when that section is empty).
fn profiles(model: &Arc<Model>) -> Vec<Box<dyn Profile>> {
    let mut p: Vec<Box<dyn Profile>> = vec![
        Box::new(northbound::identity::Identity::new(
            Arc::clone(model),
            started_at(),
        )),
        Box::new(northbound::points::PointTopics::new(Arc::clone(model))),
        Box::new(northbound::groups::GroupMessages::new(Arc::clone(model))),
        Box::new(northbound::homeassistant::Discovery::new(Arc::clone(model))),
    ];
    if let Some(node) = northbound::sparkplug::SparkplugNode::new(Arc::clone(model)) {
        p.push(Box::new(node));
    }
    p
}

/// When this process started the gateway (the first call; `run` makes it early), for the
/// identity message.
fn started_at() -> SystemTime {
    static STARTED: std::sync::OnceLock<SystemTime> = std::sync::OnceLock::new();
    *STARTED.get_or_init(SystemTime::now)
}

/// [`profiles`], and the web console's profile when there is a console: it publishes nothing
/// and keeps what the console shows (`northbound::console`).
fn profiles_with_console(
    model: &Arc<Model>,
    console: Option<&Arc<Console>>,
) -> Vec<Box<dyn Profile>> {
    let mut p = profiles(model);
    if let Some(c) = console {
        p.push(Box::new(c.profile(Arc::clone(model))));
    }
    p
}

/// The MQTT side of a Sparkplug edge node: its NDEATH will and bdSeq, and the session's news
/// into the engine task.
fn node_session(
    model: &Model,
    signals: &mpsc::UnboundedSender<SessionEvent>,
) -> Option<mqtt::NodeSession> {
    let spb = model.sparkplug.as_ref()?;
    let signals = signals.clone();
    Some(mqtt::NodeSession {
        death_topic: Arc::from(spb.node_topic("NDEATH")),
        death_payload: crate::mappings::sparkplug::ndeath,
        state_dir: spb.state_dir.clone(),
        on_session: Box::new(move |up| {
            let _ = signals.send(match up {
                Some(bd_seq) => SessionEvent::Connected { bd_seq },
                None => SessionEvent::Disconnected,
            });
        }),
    })
}

/// What the MQTT session needs from the profiles of `model`: the command topics they claim and
/// the topics they watch, and the retained messages they announce after every connect (like
/// `online`).
fn session(model: &Arc<Model>) -> (Vec<(Arc<str>, Qos)>, Vec<Announcement>) {
    let profiles = profiles(model);
    let mut subscriptions = northbound::subscriptions(&profiles);
    for w in northbound::watched(&profiles) {
        if !subscriptions.iter().any(|(t, _)| *t == w.0) {
            subscriptions.push(w);
        }
    }
    (
        subscriptions,
        northbound::announcements(&profiles, SystemTime::now()),
    )
}

/// The topic filters the profiles of `model` watch (not commands).
fn watched(model: &Arc<Model>) -> Vec<Arc<str>> {
    northbound::watched(&profiles(model))
        .into_iter()
        .map(|(t, _)| t)
        .collect()
}

/// Sends each incoming message on a watched topic to the engine task (the profiles), and every
/// other one to the executor, until `incoming` ends.
async fn route_incoming(
    mut incoming: mpsc::Receiver<IncomingCommand>,
    watched: tokio::sync::watch::Receiver<Vec<Arc<str>>>,
    profiles: mpsc::Sender<IncomingCommand>,
    executor: mpsc::Sender<IncomingCommand>,
) {
    while let Some(m) = incoming.recv().await {
        let is_watched = watched
            .borrow()
            .iter()
            .any(|f| crate::vocabulary::topic_matches(f, &m.topic));
        let to = if is_watched { &profiles } else { &executor };
        if to.send(m).await.is_err() {
            return;
        }
    }
}

/// The lock file that keeps a state directory to one gateway.
pub const STATE_LOCK: &str = "fieldgate.lock";

/// How long after start-up the start-up memory is released a second time.
const SETTLE: std::time::Duration = std::time::Duration::from_secs(5);

/// Hand start-up memory back to the kernel (src/memory.rs): the allocator's free heap pages,
/// then the clean code pages that only loading ran. Logged with the figures.
fn release_startup_memory() {
    let heap = crate::memory::release_free_memory();
    let file = crate::memory::release_clean_file_pages();
    tracing::info!(
        heap_trimmed = heap,
        file_bytes_unmapped = file,
        "start-up memory released"
    );
}

/// How often the state directory's lock file is checked for removal ([`StateLock::renew`]).
const LOCK_CHECK: std::time::Duration = std::time::Duration::from_secs(2);

/// This process's hold on a state directory: an exclusive advisory lock (`flock`) on
/// `dir/fieldgate.lock`, released when the file is closed or the process dies (kill -9 too).
struct StateLock {
    path: std::path::PathBuf,
    /// The locked file and its (device, inode); `None` when it could not be made.
    held: Option<(std::fs::File, (u64, u64))>,
}

impl StateLock {
    /// Lock `dir` (created if missing) for this process. Without a lock file (the directory
    /// cannot be made or written) it holds nothing: the buffer reports the directory's problem
    /// itself and keeps running in memory.
    ///
    /// # Errors
    /// Another process holds the lock.
    fn take(dir: &std::path::Path) -> anyhow::Result<StateLock> {
        let mut lock = StateLock {
            path: dir.join(STATE_LOCK),
            held: None,
        };
        lock.lock()?;
        Ok(lock)
    }

    fn lock(&mut self) -> anyhow::Result<()> {
        use std::os::unix::fs::MetadataExt;
        let dir = self.path.parent().unwrap_or(std::path::Path::new("."));
        let file = match std::fs::create_dir_all(dir).and_then(|()| {
            std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&self.path)
        }) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot lock the state directory");
                return Ok(());
            }
        };
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
                "another fieldgate is running with the state directory {} (it holds {}); give each instance its own mqtt.buffer.path (or StateDirectory=)",
                dir.display(),
                self.path.display()
            ),
            Err(std::fs::TryLockError::Error(e)) => {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot lock the state directory");
            }
        }
        let id = file
            .metadata()
            .map(|m| (m.dev(), m.ino()))
            .unwrap_or_default();
        self.held = Some((file, id));
        Ok(())
    }

    /// The lock file was removed or replaced while the gateway runs (the state directory
    /// deleted, or moved aside by the buffer because it could not be listed): lock a new one,
    /// so that a second gateway still cannot start on the directory. The old lock is kept
    /// until then. Logged; an error line if another process took the directory meanwhile.
    fn renew(&mut self) {
        use std::os::unix::fs::MetadataExt;
        let now = std::fs::metadata(&self.path)
            .map(|m| (m.dev(), m.ino()))
            .ok();
        if self.held.as_ref().is_some_and(|(_, id)| now == Some(*id)) {
            return;
        }
        let before = self.held.take();
        match self.lock() {
            Ok(()) if self.held.is_some() => {
                tracing::warn!(path = %self.path.display(), "state directory lock file was gone: locked a new one");
            }
            Ok(()) => self.held = before,
            Err(e) => {
                tracing::error!(error = %e, "state directory lock file was replaced by another process");
                self.held = before;
            }
        }
    }
}

/// Run the gateway until `shutdown` is cancelled.
pub async fn run(model: Arc<Model>, shutdown: CancellationToken) -> anyhow::Result<()> {
    run_reloadable(model, None, shutdown).await
}

/// Run the gateway, applying `reloads` as they come, until `shutdown` is cancelled.
pub async fn run_reloadable(
    model: Arc<Model>,
    reloads: Option<Reloads>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    run_announcing(model, reloads, shutdown, None).await
}

/// [`run_reloadable`], sending the web console's bound address (when the model has a `web`
/// section) on `web_bound` once it listens: `fieldgate demo` prints it.
pub async fn run_announcing(
    mut model: Arc<Model>,
    mut reloads: Option<Reloads>,
    shutdown: CancellationToken,
    web_bound: Option<tokio::sync::oneshot::Sender<std::net::SocketAddr>>,
) -> anyhow::Result<()> {
    started_at();
    // One gateway per state directory: two would share the buffer's segments, the Sparkplug
    // bdSeq and its stored values. Held until this function returns (the process ends).
    let _state_lock = match &model.mqtt.buffer.store.path {
        Some(dir) => {
            let lock = Arc::new(std::sync::Mutex::new(StateLock::take(dir)?));
            // The check holds the lock weakly: it is released when the gateway returns.
            let check = Arc::downgrade(&lock);
            tokio::spawn(async move {
                let mut every = tokio::time::interval(LOCK_CHECK);
                every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                every.tick().await;
                loop {
                    every.tick().await;
                    let Some(lock) = check.upgrade() else { break };
                    lock.lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .renew();
                }
            });
            Some(lock)
        }
        None => None,
    };
    if let Some(addr) = model.metrics_listen {
        crate::telemetry::serve_metrics(addr, shutdown.clone())
            .await
            .map_err(|e| anyhow::anyhow!("metrics listener on {addr}: {e}"))?;
    }
    // The web console: its board (fed by its profile in the engine task) and its writes (to
    // the executor, in the same queue as MQTT commands).
    let console = model
        .web
        .as_ref()
        .map(|w| Console::new(Arc::clone(&model), w.trend_samples));
    let (web_tx, web_rx) = mpsc::channel::<WebCommand>(8);
    if let (Some(w), Some(c)) = (&model.web, &console) {
        let addr = crate::web::serve(w, Arc::clone(c), web_tx, shutdown.clone()).await?;
        if let Some(tx) = web_bound {
            let _ = tx.send(addr);
        }
    }
    let (out_tx, out_rx) = mpsc::channel::<Publication>(HANDOFF);
    let (cmd_tx, cmd_rx) = mpsc::channel::<IncomingCommand>(64);
    // Messages on the profiles' watched topics go to the engine task, commands to the executor.
    let (in_tx, in_rx) = mpsc::channel::<IncomingCommand>(64);
    let (msg_tx, msg_rx) = mpsc::channel::<IncomingCommand>(16);
    let (watched_tx, watched_rx) = tokio::sync::watch::channel(watched(&model));
    tokio::spawn(route_incoming(in_rx, watched_rx, msg_tx, cmd_tx));
    let (subscriptions, announcements) = session(&model);
    let (signal_tx, signal_rx) = mpsc::unbounded_channel::<SessionEvent>();
    let mqtt = mqtt::start_with_node(
        &model.mqtt,
        subscriptions,
        announcements,
        out_rx,
        in_tx,
        node_session(&model, &signal_tx),
    );

    // One task per link (a TCP connection or an RTU bus), as compiled into the model.
    let (ev_tx, ev_rx) = mpsc::channel::<LinkEvent>(256);
    let mut running: Vec<Running> = (0..model.links.len())
        .map(|l| start_link(&model, l, &ev_tx))
        .collect();

    let (engine_tx, engine_rx) = mpsc::channel::<Arc<Model>>(1);
    let engine = tokio::spawn(run_engine(
        Arc::clone(&model),
        console.clone(),
        ev_rx,
        engine_rx,
        msg_rx,
        signal_rx,
        out_tx.clone(),
    ));
    let (snap_tx, snap_rx) = tokio::sync::watch::channel(Snapshot::new(&model, writers(&running)));
    let executor_stop = CancellationToken::new();
    let executor = tokio::spawn(run_executor_with_web(
        snap_rx,
        cmd_rx,
        console.is_some().then_some(web_rx),
        out_tx.clone(),
        signal_tx,
        executor_stop.clone(),
    ));

    // The mapping is loaded and every link is making its first connection attempt.
    crate::supervisor::notify_ready();
    crate::supervisor::spawn_watchdog(shutdown.clone());
    // The mapping's parse and compile garbage is free now, and the code that made it has run;
    // hand both back (src/memory.rs).
    release_startup_memory();
    // Once more when the first connections, poll cycles and publications have run: their
    // one-time code (connect, TLS handshake, session announcements) was 0.7 of 8.2 MB of RSS
    // at 1,000 points.
    let settled = shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            () = settled.cancelled() => {}
            () = tokio::time::sleep(SETTLE) => release_startup_memory(),
        }
    });

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
                if let Some(new) = reload(&path, &model, &mut running, &ev_tx, &mqtt, &out_tx, session).await {
                    let _ = engine_tx.send(Arc::clone(&new)).await;
                    let _ = watched_tx.send(watched(&new));
                    let _ = snap_tx.send(Snapshot::new(&new, writers(&running)));
                    model = new;
                }
                release_startup_memory();
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

async fn run_engine(
    model: Arc<Model>,
    console: Option<Arc<Console>>,
    mut events: mpsc::Receiver<LinkEvent>,
    mut reloads: mpsc::Receiver<Arc<Model>>,
    mut messages: mpsc::Receiver<IncomingCommand>,
    mut signals: mpsc::UnboundedReceiver<SessionEvent>,
    out: mpsc::Sender<Publication>,
) {
    let mut profiles = profiles_with_console(&model, console.as_ref());
    let mut durable = DurableState::new(&model);
    durable.restore(&mut profiles);
    // The session so far (the live connection, the primary host's last STATE), replayed
    // into the profiles a reload makes, so that a Sparkplug node is born again on the new
    // mapping without a new connection.
    let mut session_memory: Vec<SessionEvent> = Vec::new();
    let mut engine = Engine::new(model);
    let beat = crate::supervisor::heartbeat("engine");
    let mut tick = tokio::time::interval(crate::supervisor::BEAT_EVERY);
    // Kept across iterations (emptied, not freed): a 1,000-value block would otherwise allocate
    // and free two vectors of its size every poll.
    let mut updates: Vec<Update> = Vec::new();
    let mut pubs: Vec<Publication> = Vec::new();
    loop {
        // Group windows close on the wall clock; the timer re-arms after every event.
        let wait = northbound::next_deadline(&profiles).map_or(Duration::from_secs(3600), |d| {
            d.duration_since(SystemTime::now()).unwrap_or_default()
        });
        tokio::select! {
            ev = events.recv() => match ev {
                Some(LinkEvent::Poll { name, model, mut poll }) => match engine.device_id(&name, poll.device, &model) {
                    Some(id) => {
                        poll.device = id;
                        engine.on_poll_into(&poll, &mut updates);
                        northbound::publish_into(&mut profiles, &updates, Instant::now(), &mut pubs);
                        updates.clear();
                    }
                    None => continue,
                },
                Some(LinkEvent::Status { name, model, device, status, at }) => match engine.device_id(&name, device, &model) {
                    Some(id) => northbound::publish_into(&mut profiles, &engine.on_device_status(id, status, at), Instant::now(), &mut pubs),
                    None => continue,
                },
                None => break,
            },
            Some(new) = reloads.recv() => {
                // Published values start afresh under the new mapping: every value goes out
                // on its next poll.
                profiles = profiles_with_console(&new, console.as_ref());
                durable = DurableState::new(&new);
                durable.restore(&mut profiles);
                engine = Engine::new(new);
                for ev in &session_memory {
                    pubs.extend(northbound::on_session(&mut profiles, ev, SystemTime::now()));
                }
            }
            Some(ev) = signals.recv() => {
                remember(&mut session_memory, &ev);
                pubs.extend(northbound::on_session(&mut profiles, &ev, SystemTime::now()));
            }
            () = tokio::time::sleep(wait) => pubs.extend(northbound::tick(&mut profiles, SystemTime::now())),
            Some(m) = messages.recv() => pubs.extend(northbound::on_message(&mut profiles, &m.topic, &m.payload, SystemTime::now())),
            _ = tick.tick() => {
                beat.beat();
                continue;
            }
        };
        durable.save(&mut profiles);
        hand_off_all(&out, &mut pubs).await;
    }
}

/// The profiles' durable state (`Profile::durable_name`), one line file each in the state
/// directory (`mqtt.buffer.path`); nothing without one.
struct DurableState {
    dir: Option<std::path::PathBuf>,
    files: std::collections::HashMap<&'static str, crate::outputs::linefile::LineFile>,
}

impl DurableState {
    fn new(model: &Model) -> Self {
        DurableState {
            dir: model.mqtt.buffer.store.path.clone(),
            files: Default::default(),
        }
    }

    fn file(&mut self, name: &'static str) -> Option<&mut crate::outputs::linefile::LineFile> {
        let dir = self.dir.as_ref()?;
        Some(
            self.files
                .entry(name)
                .or_insert_with(|| crate::outputs::linefile::LineFile::new(dir, name)),
        )
    }

    /// Give each profile its state as an earlier run (or the profiles before a reload) left it.
    fn restore(&mut self, profiles: &mut [Box<dyn Profile>]) {
        for p in profiles.iter_mut() {
            if let Some(f) = p.durable_name().and_then(|n| self.file(n)) {
                let lines = f.read();
                p.restore_durable(&lines);
            }
        }
        self.save(profiles);
    }

    /// Write what changed.
    fn save(&mut self, profiles: &mut [Box<dyn Profile>]) {
        for p in profiles.iter_mut() {
            let Some(name) = p.durable_name() else {
                continue;
            };
            let changes = p.take_durable();
            let Some(f) = self.file(name) else { continue };
            for c in changes {
                match c {
                    northbound::Durable::Append(lines) => f.append(&lines),
                    northbound::Durable::Replace(lines) => f.replace(&lines),
                }
            }
        }
    }
}

/// Keep what a new profile needs to know of the session: the last connect (forgotten at a
/// loss) and the primary host's last STATE message.
fn remember(memory: &mut Vec<SessionEvent>, ev: &SessionEvent) {
    match ev {
        SessionEvent::Connected { .. } => {
            memory.retain(|e| !matches!(e, SessionEvent::Connected { .. }));
            memory.push(ev.clone());
        }
        SessionEvent::Disconnected => {
            memory.retain(|e| !matches!(e, SessionEvent::Connected { .. }));
        }
        SessionEvent::Message { topic, .. } if topic.starts_with("spBv1.0/STATE/") => {
            memory.retain(|e| !matches!(e, SessionEvent::Message { topic: t, .. } if t == topic));
            memory.push(ev.clone());
        }
        SessionEvent::Message { .. } | SessionEvent::Written { .. } => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn inode(path: &std::path::Path) -> (u64, u64) {
        let m = std::fs::metadata(path).unwrap();
        (m.dev(), m.ino())
    }

    #[test]
    fn a_lock_file_replaced_and_held_by_another_process_keeps_the_old_lock() {
        let dir = tempfile::tempdir().unwrap();
        let mut lock = StateLock::take(dir.path()).unwrap();
        let path = dir.path().join(STATE_LOCK);
        let first = inode(&path);
        assert_eq!(lock.held.as_ref().map(|(_, id)| *id), Some(first));
        // Unchanged: nothing is done.
        lock.renew();
        assert_eq!(lock.held.as_ref().map(|(_, id)| *id), Some(first));
        // A second lock on the same file is refused (flock is per open file).
        assert!(StateLock::take(dir.path()).is_err());

        // Replaced by a file another holder has locked first: the renewal fails, and the old
        // lock is kept rather than dropped.
        std::fs::remove_file(&path).unwrap();
        let other = std::fs::File::create(&path).unwrap();
        other.try_lock().unwrap();
        let replaced = inode(&path);
        assert_ne!(replaced, first);
        lock.renew();
        let (file, id) = lock.held.as_ref().expect("the old lock is kept");
        assert_eq!(*id, first);
        assert_eq!(file.metadata().unwrap().ino(), first.1);

        // Once the other holder lets go, the next check locks the new file.
        drop(other);
        lock.renew();
        assert_eq!(lock.held.as_ref().map(|(_, id)| *id), Some(replaced));
        assert!(StateLock::take(dir.path()).is_err());
    }

    #[test]
    fn a_lock_file_removed_is_locked_anew() {
        let dir = tempfile::tempdir().unwrap();
        let mut lock = StateLock::take(dir.path()).unwrap();
        let path = dir.path().join(STATE_LOCK);
        std::fs::remove_file(&path).unwrap();
        // Without the file another gateway could start: the check makes a new one and locks it.
        lock.renew();
        assert!(path.exists());
        assert_eq!(lock.held.as_ref().map(|(_, id)| *id), Some(inode(&path)));
        assert!(StateLock::take(dir.path()).is_err());
    }
}
