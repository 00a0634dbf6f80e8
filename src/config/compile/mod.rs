//! From the raw file to the checked [`Model`]: resolve references, choose decoders, plan reads,
//! and collect every problem with its location and key path.
//!
//! One file per section, each compiling its part of the model and pushing its issues to the
//! shared [`Ctx`]; [`compile`] runs them in file order and gathers the issues. Nothing here does
//! I/O beyond reading the files a config names (certificates, passwords, keys); nothing here
//! connects, polls or publishes.

mod buses;
mod commands;
mod derived;
mod devices;
mod groups;
mod homeassistant;
mod mqtt;
mod points;
mod s7;
mod sparkplug;
mod web;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

pub use mqtt::read_key_file;
pub use web::parse_users;

use super::Issue;
use super::raw::*;
use super::yaml::Located;
use crate::mappings::Qos;
use crate::model::*;

/// What the sections share while compiling: the problems found so far, and who publishes which
/// topic (so two sections cannot publish to one topic, and no command listens on one).
struct Ctx {
    issues: Vec<Issue>,
    /// Allowed, but probably not what was meant: `check` prints them, the gateway logs them.
    warnings: Vec<Issue>,
    /// Each topic the gateway publishes to, and the key path that publishes it first.
    publish_topics: HashMap<Arc<str>, String>,
}

impl Ctx {
    fn err<T>(&mut self, at: &Located<T>, path: impl Into<String>, message: impl Into<String>) {
        self.err_at(at.line, at.col, path, message);
    }
    fn warn<T>(&mut self, at: &Located<T>, path: impl Into<String>, message: impl Into<String>) {
        self.warnings.push(Issue {
            line: at.line,
            col: at.col,
            path: path.into(),
            message: message.into(),
            file: None,
        });
    }
    fn err_at(&mut self, line: u32, col: u32, path: impl Into<String>, message: impl Into<String>) {
        self.issues.push(Issue {
            line,
            col,
            path: path.into(),
            message: message.into(),
            file: None,
        });
    }
    /// Notes that the key at `path` publishes to `topic`; an error if another key already does.
    fn note_topic(&mut self, topic: &Arc<str>, at: (u32, u32), path: &str) {
        if let Some(first) = self.publish_topics.get(topic) {
            self.err_at(
                at.0,
                at.1,
                path,
                format!("topic `{topic}` is already published by {first}"),
            );
        } else {
            self.publish_topics.insert(topic.clone(), path.to_owned());
        }
    }
}

pub(super) fn compile(
    raw: RawConfig,
    hostname: &str,
    mapping: &std::path::Path,
    state_directory: Option<&std::path::Path>,
    env: &HashMap<String, String>,
    identity: Identity,
) -> Result<Model, Vec<Issue>> {
    let mut ctx = Ctx {
        issues: Vec::new(),
        warnings: Vec::new(),
        publish_topics: HashMap::new(),
    };
    let m = &raw.mqtt;
    let mqtt = mqtt::compile(&mut ctx, m, hostname, mapping, state_directory, env);
    let metrics_listen = mqtt::metrics_listen(&mut ctx, raw.metrics.as_ref());
    ctx.note_topic(
        &mqtt.status_topic,
        (m.status_topic.line, m.status_topic.col),
        "mqtt.status_topic",
    );
    let (mut links, bus_index) = buses::compile(&mut ctx, &raw.buses);
    let mut devs = devices::compile(
        &mut ctx,
        &raw.devices,
        &mut links,
        &bus_index,
        &mqtt.status_topic,
    );
    if raw.devices.is_empty() && raw.s7_devices.is_empty() {
        ctx.err_at(1, 1, "devices", "at least one device is needed");
    }
    s7::compile(
        &mut ctx,
        &raw.s7_devices,
        &mut links,
        &mut devs,
        &mqtt.status_topic,
    );
    let derived = derived::compile(&mut ctx, &raw.derived, &devs);
    let groups = groups::compile(&mut ctx, &raw.groups, &devs);
    let mut commands = commands::compile(&mut ctx, &raw.commands, &devs);
    let homeassistant = homeassistant::compile(
        &mut ctx,
        raw.homeassistant.as_ref(),
        &mqtt.client_id,
        mqtt.encryption.is_some(),
        &devs,
        &derived,
        &mut commands,
    );
    let sparkplug = sparkplug::compile(&mut ctx, &raw, &devs, &derived, &mqtt);
    let web = web::compile(&mut ctx, raw.web.as_ref());

    if ctx.issues.is_empty() {
        // Grown one point at a time, the vector has up to twice the room it needs (at 10,000
        // points 1.4 MB); the model is read-only from here.
        let mut points = devs.points;
        points.shrink_to_fit();
        Ok(Model {
            mqtt,
            metrics_listen,
            links,
            devices: devs.devices,
            groups,
            points,
            derived,
            commands,
            homeassistant,
            sparkplug,
            identity,
            warnings: ctx.warnings,
            library: Library::default(),
            web,
        })
    } else {
        ctx.issues.sort_by_key(|i| (i.line, i.col));
        Err(ctx.issues)
    }
}

fn qos(ctx: &mut Ctx, q: u8, line: u32, col: u32, path: &str) -> Qos {
    match q {
        0 => Qos::AtMostOnce,
        1 => Qos::AtLeastOnce,
        2 => Qos::ExactlyOnce,
        _ => {
            ctx.err_at(
                line,
                col,
                format!("{path}.qos"),
                format!("qos must be 0, 1 or 2, not {q}"),
            );
            Qos::AtLeastOnce
        }
    }
}

/// A topic we publish to or subscribe on must be concrete: no wildcards, not empty.
fn check_topic(ctx: &mut Ctx, t: &Located<String>, path: &str) -> Arc<str> {
    if t.is_empty() {
        ctx.err(t, path, "topic must not be empty");
    } else if t.contains(['+', '#']) {
        ctx.err(
            t,
            path,
            format!(
                "topic `{}` contains a wildcard (+ or #); only concrete topics are allowed here",
                t.value
            ),
        );
    } else if t.contains('\0') {
        ctx.err(t, path, "topic contains a NUL character");
    } else if t.len() > 65_535 {
        ctx.err(t, path, "topic is longer than 65535 bytes");
    }
    Arc::from(t.as_str())
}

fn check_name(ctx: &mut Ctx, n: &Located<String>, path: &str) {
    if n.is_empty() {
        ctx.err(n, path, "name must not be empty");
    } else if n.contains(['/', '+', '#', '.', ' ']) || n.chars().any(char::is_control) {
        ctx.err(
            n,
            path,
            format!(
                "name `{}` must not contain '/', '+', '#', '.', spaces or control characters",
                n.value
            ),
        );
    }
}

/// A `publish` block (of a point or a derived value); `default_interval` is the poll interval.
fn publish_rule(
    ctx: &mut Ctx,
    p: &Located<RawPublish>,
    path: &str,
    default_interval: Duration,
) -> PublishRule {
    let topic = check_topic(ctx, &p.topic, &format!("{path}.topic"));
    let q = qos(ctx, p.qos, p.line, p.col, path);
    let interval = p.interval.map_or(default_interval, |d| d.0);
    if interval.is_zero() {
        ctx.err(
            p,
            format!("{path}.interval"),
            "interval must be greater than zero",
        );
    }
    if !(p.deadband >= 0.0 && p.deadband.is_finite()) {
        ctx.err(
            p,
            format!("{path}.deadband"),
            "deadband must be a finite number >= 0",
        );
    }
    let mode = match p.mode {
        RawMode::Interval => PublishMode::Interval,
        RawMode::OnChange => PublishMode::OnChange,
        RawMode::Both => PublishMode::Both,
    };
    if mode == PublishMode::Interval && (p.deadband != 0.0 || p.max_silence.is_some()) {
        ctx.err(
            p,
            path,
            "deadband and max_silence apply to mode on_change or both, not interval",
        );
    }
    if matches!(p.max_silence, Some(d) if d.0.is_zero()) {
        ctx.err(
            p,
            format!("{path}.max_silence"),
            "max_silence must be greater than zero",
        );
    }
    PublishRule {
        topic,
        qos: q,
        retain: p.retain,
        mode,
        interval,
        deadband: p.deadband,
        max_silence: p.max_silence.map(|d| d.0),
        format: match p.format {
            RawFormat::Plain => Format::Plain,
            RawFormat::Json => Format::Json,
        },
    }
}
