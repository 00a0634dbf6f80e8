//! Internal events: one log line and one metric per event, defined in this one place.
//!
//! Metric names follow Prometheus conventions (`fieldgate_..._total`, `_seconds`). Nothing
//! here logs a payload of a command in full or any secret. Must not import the rooms that
//! report events (it takes plain values), so that anything may use it without a circle.

use metrics::{counter, gauge, histogram};
use tracing::{debug, info, warn};

/// Outcome label of one Modbus request.
pub fn modbus_request(device: &str, outcome: &'static str) {
    counter!("fieldgate_modbus_requests_total", "device" => device.to_owned(), "outcome" => outcome).increment(1);
}

pub fn modbus_exception(device: &str, function: u8, code: u8) {
    counter!("fieldgate_modbus_exceptions_total", "device" => device.to_owned(), "code" => code.to_string()).increment(1);
    debug!(device, function, code, "modbus exception");
}

pub fn poll_done(device: &str, seconds: f64) {
    counter!("fieldgate_polls_total", "device" => device.to_owned()).increment(1);
    histogram!("fieldgate_poll_duration_seconds", "device" => device.to_owned()).record(seconds);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    gauge!("fieldgate_device_last_success_timestamp_seconds", "device" => device.to_owned())
        .set(now.as_secs_f64());
}

/// Share of wall time a link spent in exchanges over the last measuring period.
pub fn link_busy(link: &str, ratio: f64) {
    gauge!("fieldgate_link_busy_ratio", "link" => link.to_owned()).set(ratio);
}

/// The broker acknowledged a QoS 1/2 publish `d` after it went out
/// (`fieldgate_mqtt_publish_ack_seconds`; counted in place, see
/// [`crate::telemetry::FixedHistogram`]).
pub fn publish_acknowledged(d: std::time::Duration) {
    crate::telemetry::PUBLISH_ACK_SECONDS.record(d);
}

/// The outbound buffer now holds `depth` publications (`bytes`), the oldest `age_seconds` old.
pub fn buffer_level(depth: usize, bytes: usize, age_seconds: f64) {
    gauge!("fieldgate_mqtt_queue_depth").set(depth as f64);
    gauge!("fieldgate_mqtt_queue_bytes").set(bytes as f64);
    gauge!("fieldgate_mqtt_queue_oldest_age_seconds").set(age_seconds);
    crate::health::buffer_level(depth, bytes, age_seconds);
}

/// The buffer was full: the `n` oldest publications were dropped (logged once per episode).
pub fn buffer_dropped(n: u64, first_of_episode: bool) {
    counter!("fieldgate_publications_dropped_total", "reason" => "buffer_full").increment(n);
    if first_of_episode {
        warn!("outbound buffer full: dropping the oldest publications until it has room");
    }
}

/// The buffer has room again after dropping `total` publications.
pub fn buffer_drop_episode_over(total: u64) {
    info!(dropped = total, "outbound buffer has room again");
}

/// What opening the buffer found. `path`: the configured directory, if any; publications
/// lost to unreadable data are counted as dropped (`buffer_unreadable`).
pub fn buffer_opened(path: Option<&std::path::Path>, rec: &BufferRecovery<'_>) {
    for (aside, why) in rec.moved_aside {
        tracing::error!(moved_to = %aside.display(), error = %why, "unreadable buffer data moved aside; starting without it");
    }
    match (path, rec.memory_only_because) {
        (None, _) => warn!(
            "outbound buffer in memory only (no mqtt.buffer.path, no STATE_DIRECTORY): \
             undelivered publications are lost on restart"
        ),
        (Some(p), Some(why)) => tracing::error!(
            path = %p.display(),
            reason = %why,
            "outbound buffer cannot use the disk; running in memory only: undelivered publications are lost on restart"
        ),
        (Some(p), None) => info!(
            path = %p.display(),
            recovered = rec.recovered,
            truncated_bytes = rec.truncated_bytes,
            "outbound buffer opened"
        ),
    }
    counter!("fieldgate_publications_dropped_total", "reason" => "buffer_unreadable")
        .increment(rec.lost);
    if rec.lost > 0 || rec.skipped_bytes > 0 {
        tracing::error!(
            lost = rec.lost,
            skipped_bytes = rec.skipped_bytes,
            recovered = rec.recovered,
            "damaged buffer data skipped; `lost` publications were in it; every readable record after it is kept"
        );
    }
}

/// What opening the outbound buffer found (the store's `Recovery`, seen by the log).
#[derive(Debug)]
pub struct BufferRecovery<'a> {
    pub recovered: usize,
    pub truncated_bytes: usize,
    /// Damaged bytes between good records.
    pub skipped_bytes: usize,
    /// Publications in unreadable data.
    pub lost: u64,
    /// Where unreadable data went, and the error that made it unreadable.
    pub moved_aside: &'a [(std::path::PathBuf, String)],
    pub memory_only_because: Option<&'a str>,
}

/// A buffer write or fsync failed: new publications are held in memory only until the disk
/// takes a fresh segment (tried every `retry_syncs` syncs). Logged once per refusal.
pub fn buffer_io_failed(error: &std::io::Error, retry_syncs: u32) {
    counter!("fieldgate_buffer_io_errors_total").increment(1);
    gauge!("fieldgate_buffer_on_disk").set(0.0);
    warn!(
        %error,
        retry_every_syncs = retry_syncs,
        "outbound buffer write failed: new publications are held in memory only (lost on restart) until the disk takes them again"
    );
}

/// The buffer's disk copy was written anew with the `held` publications: the disk takes
/// writes again, or a segment file had been deleted.
pub fn buffer_rewritten(held: usize, because: &str) {
    gauge!("fieldgate_buffer_on_disk").set(1.0);
    warn!(
        held,
        because, "outbound buffer on disk again: every held publication written to a fresh segment"
    );
}

/// Whether the buffer's publications are on disk now (1) or in memory only (0).
pub fn buffer_on_disk(on_disk: bool) {
    gauge!("fieldgate_buffer_on_disk").set(if on_disk { 1.0 } else { 0.0 });
}

/// One fsync of the buffer took `seconds`.
pub fn buffer_synced(seconds: f64) {
    histogram!("fieldgate_buffer_sync_seconds").record(seconds);
}

pub fn command_done(seconds: f64) {
    histogram!("fieldgate_command_duration_seconds").record(seconds);
}

/// A command's outcome was acknowledged to `origin` (`mqtt:<topic>`, `web:<user>`): kept for
/// the web console's recent acks (logged by the executor's own events).
pub fn command_acked(origin: &str, body: &serde_json::Value) {
    crate::health::ack(origin, body);
}

pub fn link_connected(link: &str) {
    gauge!("fieldgate_modbus_link_up", "link" => link.to_owned()).set(1.0);
    counter!("fieldgate_modbus_connects_total", "link" => link.to_owned()).increment(1);
    info!(link, "modbus link connected");
    crate::health::link(link, true, None);
}

/// The link was re-opened after a device fault (a timeout, a garbled reply, a connection the
/// device closed): counted with the connects, logged at debug (a device that closes after every
/// reply would otherwise fill the log).
pub fn link_reopened(link: &str, why: &str) {
    counter!("fieldgate_modbus_connects_total", "link" => link.to_owned()).increment(1);
    debug!(link, why, "modbus link re-opened");
}

pub fn link_down(link: &str, reason: &str, retry_in: std::time::Duration) {
    gauge!("fieldgate_modbus_link_up", "link" => link.to_owned()).set(0.0);
    warn!(link, reason, retry_in = ?retry_in, "modbus link down");
    crate::health::link(link, false, Some(reason));
}

/// A device did not answer properly (timeout, bad reply); the link stays up.
pub fn device_fault(device: &str, reason: &str) {
    counter!("fieldgate_device_faults_total", "device" => device.to_owned()).increment(1);
    warn!(device, reason, "request failed");
}

/// A device entered (true) or left (false) quarantine.
pub fn quarantine(device: &str, on: bool) {
    crate::health::quarantine(device, on);
    gauge!("fieldgate_device_quarantined", "device" => device.to_owned()).set(if on {
        1.0
    } else {
        0.0
    });
    if on {
        warn!(
            device,
            "device quarantined: polled less often until it answers"
        );
    } else {
        info!(device, "device left quarantine");
    }
}

/// A device's state changed: `ok`, `degraded` (some points fail, the rest work) or `error`.
pub fn device_status(device: &str, state: &str, reason: &str) {
    gauge!("fieldgate_device_up", "device" => device.to_owned()).set(if state == "error" {
        0.0
    } else {
        1.0
    });
    gauge!("fieldgate_device_degraded", "device" => device.to_owned())
        .set(if state == "degraded" { 1.0 } else { 0.0 });
    match state {
        "ok" => info!(device, "device ok"),
        "degraded" => warn!(device, reason, "device degraded"),
        _ => warn!(device, reason, "device error"),
    }
}

/// A read request started (`on`) or stopped failing with a Modbus exception: one line per
/// episode, not per poll.
pub fn read_exception(device: &str, function: u8, address: u16, count: u16, code: u8, on: bool) {
    let exception = crate::vocabulary::exception_name(code);
    if on {
        warn!(
            device,
            function, address, count, code, exception, "read refused with a Modbus exception"
        );
    } else {
        info!(device, function, address, count, "read works again");
    }
}

/// A read the device refused was split to find the addresses it refuses. `kept`: some part
/// was readable, so the split is kept; otherwise every part was refused too, the device refuses
/// the range as a whole (a PLC in STOP, a device still starting), and the read stays merged for
/// a while (`link::UNSPLIT`).
pub fn read_split(
    device: &str,
    function: u8,
    address: u16,
    count: u16,
    code: u8,
    parts: usize,
    kept: bool,
) {
    counter!("fieldgate_read_splits_total", "device" => device.to_owned()).increment(1);
    let what = if kept {
        "device refused a merged read; split it and kept the split"
    } else {
        "device refused a merged read and every part of it; not split"
    };
    info!(device, function, address, count, code, parts, "{what}");
}

/// A device answered ILLEGAL FUNCTION to one way of writing a single coil or register
/// (FC 5 / FC 6, or FC 15 / FC 16); the other is used from now on.
pub fn write_function_fallback(device: &str, from: u8, to: u8) {
    if to > from {
        warn!(
            device,
            from,
            to,
            "device refuses the single-write function; using the multiple-write function from now on"
        );
    } else {
        warn!(
            device,
            from,
            to,
            "device refuses the multiple-write function; using the single-write function from now on"
        );
    }
}

/// How a write ended, for the log and `fieldgate_writes_total{outcome}`.
#[derive(Debug, Clone, Copy)]
pub enum WriteOutcome<'a> {
    /// Written, and the read-back holds the written value.
    Ok,
    /// Written, but the read-back holds something else (the device clamped or refused it).
    Mismatch { readback: &'a str },
    /// Not written (or not confirmed): why.
    Failed { reason: &'a str },
}

/// Every write is logged with what it wrote, where, why (its origin), and how it ended.
pub fn write_done(
    device: &str,
    point: &str,
    address: u16,
    value: &str,
    origin: &str,
    outcome: WriteOutcome<'_>,
) {
    let label = match outcome {
        WriteOutcome::Ok => "ok",
        WriteOutcome::Mismatch { .. } => "mismatch",
        WriteOutcome::Failed { .. } => "error",
    };
    counter!("fieldgate_writes_total", "device" => device.to_owned(), "outcome" => label)
        .increment(1);
    match outcome {
        WriteOutcome::Ok => info!(device, point, address, value, origin, "write ok"),
        WriteOutcome::Mismatch { readback } => warn!(
            device,
            point, address, value, readback, origin, "write read back a different value"
        ),
        WriteOutcome::Failed { reason } => warn!(
            device,
            point, address, value, origin, reason, "write failed"
        ),
    }
}

/// [`write_done`] for an S7 point: the address in S7 notation (`DB1,INT20`).
pub fn s7_write_done(
    device: &str,
    point: &str,
    address: &str,
    value: &str,
    origin: &str,
    outcome: WriteOutcome<'_>,
) {
    let label = match outcome {
        WriteOutcome::Ok => "ok",
        WriteOutcome::Mismatch { .. } => "mismatch",
        WriteOutcome::Failed { .. } => "error",
    };
    counter!("fieldgate_writes_total", "device" => device.to_owned(), "outcome" => label)
        .increment(1);
    match outcome {
        WriteOutcome::Ok => info!(device, point, address, value, origin, "write ok"),
        WriteOutcome::Mismatch { readback } => warn!(
            device,
            point, address, value, readback, origin, "write read back a different value"
        ),
        WriteOutcome::Failed { reason } => warn!(
            device,
            point, address, value, origin, reason, "write failed"
        ),
    }
}

pub fn command_accepted(topic: &str, label: &str) {
    counter!("fieldgate_commands_total", "outcome" => "accepted").increment(1);
    info!(topic, command = label, "command accepted");
}

pub fn command_rejected(topic: &str, payload: &str, reason: &str, kind: &'static str) {
    counter!("fieldgate_commands_total", "outcome" => "rejected", "reason" => kind).increment(1);
    warn!(topic, payload, reason, "command rejected");
}

/// `n` publications reached the MQTT task (counted per batch: a counter lookup per value was
/// a visible share of the CPU at 100,000 values/s).
pub fn publications_queued(n: u64) {
    counter!("fieldgate_publications_total").increment(n);
}

/// Every reason a publication can be dropped for, so that each shows in `/metrics` (at 0)
/// from the start: a reason that never appears cannot be told from one nobody counts.
pub const DROP_REASONS: [&str; 6] = [
    "buffer_full",
    "buffer_unreadable",
    "handoff_full",
    "offline",
    "client_busy",
    "shutdown",
];

/// Register the drop counters at 0.
pub fn drop_counters_at_zero() {
    for reason in DROP_REASONS {
        counter!("fieldgate_publications_dropped_total", "reason" => reason).increment(0);
    }
}

/// A publication was dropped before it reached the buffer: `reason` is `handoff_full` (a
/// reload report found the hand-off to the MQTT task full; values and acks wait for room), `offline` (QoS 0 while disconnected:
/// it is never buffered), `client_busy` (QoS 0 found the MQTT client's request queue full) or
/// `shutdown`.
pub fn publication_dropped(topic: &str, reason: &'static str) {
    counter!("fieldgate_publications_dropped_total", "reason" => reason).increment(1);
    debug!(topic, reason, "publication dropped");
}

/// The broker acknowledged a retained announcement (a group configuration): it is not sent
/// again after a reconnect. Logged once per announcement and connection.
pub fn announcement_acknowledged(topic: &str) {
    info!(topic, "retained announcement acknowledged");
}

pub fn mqtt_connected(broker: &str) {
    gauge!("fieldgate_mqtt_connected").set(1.0);
    counter!("fieldgate_mqtt_connects_total").increment(1);
    info!(broker, "mqtt connected");
    crate::health::mqtt_connected(broker);
}

/// A connection attempt failed, or a connection was lost: `state` says why in a word
/// (`certificate_expired`, `bad_credentials`, ...), `reason` in full.
pub fn mqtt_down(broker: &str, state: &str, reason: &str, retry_in: std::time::Duration) {
    gauge!("fieldgate_mqtt_connected").set(0.0);
    warn!(broker, state, reason, retry_in = ?retry_in, "mqtt connection lost");
    crate::health::mqtt_down(broker, state, reason);
}

/// With several brokers (`mqtt.hosts`): connected to `to`, another broker than `from`, the
/// broker of the last connection that was up. Counted once per switch (attempts that fail on
/// the way are not switches).
pub fn mqtt_failover(from: &str, to: &str) {
    counter!("fieldgate_mqtt_failovers_total").increment(1);
    info!(
        from,
        to, "mqtt broker failover: connected to another broker"
    );
}

/// The broker took the session away soon after accepting it, again: most likely another
/// client uses the same client id (a broker keeps one session per id and disconnects the older
/// client; MQTT 3.1.1 section 3.1.4, MQTT 5 section 3.1.4). Logged as an error on every
/// takeover, since each one also cost the other client its session.
pub fn mqtt_taken_over(
    broker: &str,
    client_id: &str,
    up_for: std::time::Duration,
    reason: &str,
    retry_in: std::time::Duration,
) {
    gauge!("fieldgate_mqtt_connected").set(0.0);
    counter!("fieldgate_mqtt_takeovers_total").increment(1);
    crate::health::mqtt_down(broker, "session_taken_over", reason);
    tracing::error!(
        broker,
        client_id,
        state = "session_taken_over",
        up_for = ?up_for,
        reason,
        retry_in = ?retry_in,
        "mqtt session taken over: another client with client id {client_id} is probably connected to the broker; give each gateway its own mqtt.client_id"
    );
}

/// The broker refused a publication (MQTT 5: an ACL denial, a quota). It is not sent again.
pub fn publication_refused(topic: &str, reason: &str) {
    counter!("fieldgate_publications_refused_total").increment(1);
    warn!(topic, reason, "broker refused a publication");
}

/// The broker connection's state: `fieldgate_mqtt_connection_state{state}` is 1 for the
/// current one and 0 for the others.
pub fn mqtt_state(state: &'static str, all: &[&'static str]) {
    crate::health::mqtt_state(state);
    for &s in all {
        gauge!("fieldgate_mqtt_connection_state", "state" => s).set(if s == state {
            1.0
        } else {
            0.0
        });
    }
}

/// The Sparkplug edge node was born (NBIRTH) with `bd_seq`.
pub fn sparkplug_born(edge_node_id: &str, bd_seq: u64) {
    counter!("fieldgate_sparkplug_births_total").increment(1);
    info!(edge_node_id, bd_seq, "sparkplug node born");
}

/// Store-and-forward values dropped because the bound was reached.
pub fn sparkplug_history_dropped(n: u64) {
    counter!("fieldgate_sparkplug_history_dropped_total").increment(n);
    warn!(
        dropped = n,
        "sparkplug store-and-forward full: oldest values dropped"
    );
}

/// A STATE message of the primary host that was not taken.
pub fn sparkplug_state_ignored(reason: &str) {
    warn!(reason, "sparkplug primary host STATE ignored");
}

/// The primary host said it is online or offline.
pub fn sparkplug_host(online: bool) {
    info!(online, "sparkplug primary host state");
}

/// A host asked for a rebirth (NCMD `Node Control/Rebirth = true`).
pub fn sparkplug_rebirth_requested(topic: &str) {
    info!(topic, "sparkplug rebirth requested");
}

/// The web console listens at `url`.
pub fn web_listening(url: &str, writes: bool, users: usize) {
    info!(url = %url, writes, users, "web console listening");
}

/// A web console login (`ok`) or a failed one (wrong password or unknown user: one answer for
/// both); the user name as typed, made printable; never the password.
pub fn web_login(user: &str, client: std::net::IpAddr, ok: bool) {
    counter!("fieldgate_web_logins_total", "outcome" => if ok { "ok" } else { "failed" })
        .increment(1);
    if ok {
        info!(user = %user, client = %client, "web login");
    } else {
        warn!(user = %user, client = %client, "web login failed");
    }
}

/// A bearer token that matches no entry of the users file (never the token itself).
pub fn web_token_refused(client: std::net::IpAddr) {
    counter!("fieldgate_web_logins_total", "outcome" => "bad_token").increment(1);
    warn!(client = %client, "web bearer token refused");
}

/// A write from the web console passed its checks and goes to the device.
pub fn web_command(origin: &str, command: &str, payload: &str) {
    info!(origin = %origin, command = %command, payload = %payload, "web command");
}

/// A web write refused before it reached the executor (writes off, role `view`, CSRF token
/// or origin), with its origin (`web:<user>`), client address, endpoint and reason.
pub fn web_write_refused(origin: &str, client: std::net::IpAddr, endpoint: &str, reason: &str) {
    counter!("fieldgate_commands_total", "outcome" => "rejected", "reason" => "web_refused")
        .increment(1);
    warn!(origin = %origin, client = %client, endpoint = %endpoint, reason = %reason, "web write refused");
}

/// A command rejected by the executor's checks, with its origin (`web:<user>`, ...).
pub fn command_rejected_from(
    origin: &str,
    topic: &str,
    payload: &str,
    reason: &str,
    kind: &'static str,
) {
    counter!("fieldgate_commands_total", "outcome" => "rejected", "reason" => kind).increment(1);
    warn!(origin = %origin, topic, payload, reason, "command rejected");
}

/// The web listener could not accept a connection (it tries again).
pub fn web_accept_failed(error: &std::io::Error) {
    warn!(%error, "web accept failed");
}

// ---- Siemens S7 (issue 19) -------------------------------------------------------------------

/// An S7 link connected, with the PDU size the CPU granted.
pub fn s7_connected(link: &str, pdu: u16) {
    gauge!("fieldgate_modbus_link_up", "link" => link.to_owned()).set(1.0);
    counter!("fieldgate_modbus_connects_total", "link" => link.to_owned()).increment(1);
    info!(link, pdu, "s7 link connected");
}

/// An S7 link went down (connect failed, or the connection failed); retried in `retry_in`.
pub fn s7_link_down(link: &str, reason: &str, retry_in: std::time::Duration) {
    gauge!("fieldgate_modbus_link_up", "link" => link.to_owned()).set(0.0);
    warn!(link, reason, retry_in = ?retry_in, "s7 link down");
    crate::health::link(link, false, Some(reason));
}

/// An S7 value started (`on`) or stopped failing with an item error (a return code other than
/// 0xFF) or a refused request: one line per episode, not per poll.
pub fn s7_item_fault(device: &str, point: &str, address: &str, fault: &str, on: bool) {
    if on {
        counter!("fieldgate_s7_item_faults_total", "device" => device.to_owned()).increment(1);
        warn!(device, point, address, fault, "s7 value refused by the PLC");
    } else {
        info!(device, point, address, "s7 value readable again");
    }
}
