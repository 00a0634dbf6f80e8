//! The `commands` section: MQTT topics that turn into writes, either a table of fixed payloads
//! or a value written to one point, each with its ack topic.
//!
//! It checks that the targets are writable and the fixed values fit, and that no topic is both
//! published and commanded; it must not subscribe or write (the executor does).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::devices::Devices;
use super::{Ctx, check_topic, qos};
use crate::config::Issue;
use crate::config::raw::*;
use crate::config::yaml::Located;
use crate::model::*;

/// Which command owns a topic (and payload): `None` for a value write.
type Seen = HashMap<(Arc<str>, Option<String>), String>;

/// The `commands` section, in order, then the check that no ack topic carries values.
pub(super) fn compile(ctx: &mut Ctx, raw: &[Located<RawCommand>], devs: &Devices) -> Vec<Command> {
    let mut seen: Seen = HashMap::new();
    let commands: Vec<Command> = raw
        .iter()
        .enumerate()
        .map(|(ci, c)| command(ctx, devs, &mut seen, ci, c))
        .collect();
    for c in &commands {
        if ctx.publish_topics.contains_key(&c.ack_topic) {
            ctx.issues.push(Issue {
                line: 1,
                col: 1,
                path: "commands".into(),
                message: format!("ack topic `{}` is also used for values", c.ack_topic),
                file: None,
            });
        }
    }
    commands
}

/// One command: its topic, ack topic, qos and action.
fn command(
    ctx: &mut Ctx,
    devs: &Devices,
    seen: &mut Seen,
    ci: usize,
    c: &Located<RawCommand>,
) -> Command {
    let path = format!("commands[{ci}]");
    let topic = check_topic(ctx, &c.topic, &format!("{path}.topic"));
    if let Some(owner) = ctx.publish_topics.get(&topic) {
        ctx.err(&c.topic, format!("{path}.topic"), format!("topic `{topic}` is also published by {owner}; the gateway would execute its own messages"));
    }
    let ack_topic = match &c.ack_topic {
        Some(t) => check_topic(ctx, t, &format!("{path}.ack_topic")),
        None => Arc::from(format!("{topic}/ack")),
    };
    if ack_topic == topic {
        ctx.err(
            c,
            format!("{path}.ack_topic"),
            "ack_topic must differ from the command topic",
        );
    }
    let q = qos(ctx, c.qos, c.line, c.col, &path);
    let action = match (&c.payloads, &c.write) {
        (Some(table), None) => table_action(ctx, devs, seen, c, &path, &topic, table),
        (None, Some(w)) => value_action(ctx, devs, seen, &path, &topic, c, w),
        _ => {
            ctx.err(
                c,
                &path,
                "a command needs exactly one of `payloads` or `write`",
            );
            CommandAction::Table(HashMap::new())
        }
    };
    Command {
        topic,
        ack_topic,
        qos: q,
        action,
    }
}

/// `payloads`: each payload to its list of fixed writes, checked against the points' limits.
fn table_action(
    ctx: &mut Ctx,
    devs: &Devices,
    seen: &mut Seen,
    c: &Located<RawCommand>,
    path: &str,
    topic: &Arc<str>,
    table: &BTreeMap<String, Vec<Located<RawWrite>>>,
) -> CommandAction {
    if table.is_empty() {
        ctx.err(
            c,
            format!("{path}.payloads"),
            "payloads must list at least one payload",
        );
    }
    let mut out = HashMap::new();
    for (payload, writes) in table {
        let ppath = format!("{path}.payloads[{payload}]");
        if let Some(prev) = seen.insert((topic.clone(), Some(payload.clone())), ppath.clone()) {
            ctx.err(
                c,
                &ppath,
                format!("topic `{topic}` payload `{payload}` is already handled by {prev}"),
            );
        }
        if writes.is_empty() {
            ctx.err(c, &ppath, "a payload needs at least one write");
        }
        let mut list = Vec::new();
        for (wi, w) in writes.iter().enumerate() {
            let wpath = format!("{ppath}[{wi}].point");
            if let Some(pid) = devs.resolve(ctx, &w.point, &wpath) {
                check_writable(ctx, devs, &w.point, &wpath, pid);
                if let Some(lim) = devs.points[pid].write
                    && let Err(e) = crate::mappings::command::encode_point(
                        &devs.points[pid],
                        w.value.value,
                        lim,
                    )
                {
                    ctx.err(w, format!("{ppath}[{wi}].value"), e.to_string());
                }
                list.push((pid, w.value.value));
            }
        }
        out.insert(payload.clone(), list);
    }
    if seen.contains_key(&(topic.clone(), None)) {
        ctx.err(
            &c.topic,
            format!("{path}.topic"),
            format!("topic `{topic}` already takes value writes"),
        );
    }
    CommandAction::Table(out)
}

/// `write`: the payload is a value for this one point.
fn value_action(
    ctx: &mut Ctx,
    devs: &Devices,
    seen: &mut Seen,
    path: &str,
    topic: &Arc<str>,
    c: &Located<RawCommand>,
    w: &Located<String>,
) -> CommandAction {
    let wpath = format!("{path}.write");
    if seen.keys().any(|(t, _)| t == topic) {
        ctx.err(
            &c.topic,
            format!("{path}.topic"),
            format!("topic `{topic}` is already used by another command"),
        );
    }
    seen.insert((topic.clone(), None), path.to_owned());
    match devs.resolve(ctx, w, &wpath) {
        Some(pid) => {
            check_writable(ctx, devs, w, &wpath, pid);
            CommandAction::Value(pid)
        }
        None => CommandAction::Value(0),
    }
}

/// A command's target must be writable.
fn check_writable(ctx: &mut Ctx, devs: &Devices, r: &Located<String>, p: &str, pid: usize) {
    if devs.points[pid].write.is_none() {
        ctx.err(
            r,
            p,
            format!(
                "point `{}` is not writable (set `writable: true` on it to allow commands)",
                r.value
            ),
        );
    }
}
