//! The `homeassistant` section: the discovery prefix, the gateway's node id, the state topics,
//! and the per-device metadata and per-point overrides of Home Assistant discovery.
//!
//! It resolves the device and point names, checks the ids Home Assistant accepts, notes every
//! state topic as published, and adds a value command (`<state_topic>/<device>/<point>/set`)
//! for every writable point Home Assistant shows that has none, so that a switch or a number
//! writes through the one executor like any other command. It must not build discovery
//! payloads (`northbound::homeassistant` does) or publish anything.

use std::collections::HashSet;
use std::sync::Arc;

use super::devices::Devices;
use super::{Ctx, check_topic};
use crate::config::raw::*;
use crate::config::yaml::Located;
use crate::mappings::Qos;
use crate::model::discovery_id;
use crate::model::*;

/// Home Assistant's state classes (sensor entity documentation, "Available state classes").
const STATE_CLASSES: &[&str] = &[
    "measurement",
    "measurement_angle",
    "total",
    "total_increasing",
];
/// Home Assistant's entity categories (MQTT integration, `entity_category`).
const ENTITY_CATEGORIES: &[&str] = &["config", "diagnostic"];

/// The `homeassistant` section; `None` when absent. `commands` gets the added value commands.
/// `encrypted`: `mqtt.payload_encryption` is set (an error with this section).
pub(super) fn compile(
    ctx: &mut Ctx,
    raw: Option<&Located<RawHomeAssistant>>,
    client_id: &str,
    encrypted: bool,
    devs: &Devices,
    derived: &[Derived],
    commands: &mut Vec<Command>,
) -> Option<HomeAssistant> {
    let h = raw?;
    let path = "homeassistant";
    let discovery_prefix = match &h.discovery_prefix {
        Some(t) => check_topic(ctx, t, &format!("{path}.discovery_prefix")),
        None => Arc::from("homeassistant"),
    };
    let node_id: Arc<str> = match &h.node_id {
        Some(n) => {
            if n.is_empty() || discovery_id(n) != n.value {
                ctx.err(
                    n,
                    format!("{path}.node_id"),
                    format!(
                        "node_id `{}` may hold only letters, digits, `_` and `-` (Home Assistant's discovery ids)",
                        n.value
                    ),
                );
            }
            Arc::from(n.as_str())
        }
        None => Arc::from(discovery_id(client_id)),
    };
    let state_topic = match &h.state_topic {
        Some(t) => check_topic(ctx, t, &format!("{path}.state_topic")),
        None => Arc::from(format!("fieldgate/{node_id}")),
    };

    if encrypted {
        ctx.err(
            h,
            path,
            "Home Assistant cannot encrypt its commands or read encrypted states: remove \
             mqtt.payload_encryption or this section (its command topics would accept plain \
             payloads)",
        );
    }
    // Discovery topics are `<prefix>/<component>/...` and `<prefix>/device/<id>/config`: a
    // prefix with an empty level makes topics HA never reads, and states or commands under
    // the prefix could overwrite (or listen on) the gateway's own configurations.
    if let Some(t) = &h.discovery_prefix
        && (t.starts_with('/') || t.ends_with('/') || t.contains("//"))
    {
        ctx.err(
            t,
            format!("{path}.discovery_prefix"),
            format!(
                "`{}` has an empty topic level; Home Assistant's prefix is plain levels such as `homeassistant`",
                t.value
            ),
        );
    }
    let under_prefix = |topic: &str| {
        topic == &*discovery_prefix
            || topic
                .strip_prefix(&*discovery_prefix)
                .is_some_and(|rest| rest.starts_with('/'))
    };
    if under_prefix(&state_topic) {
        let (line, col) = h
            .state_topic
            .as_ref()
            .map_or((h.line, h.col), |t| (t.line, t.col));
        ctx.err_at(
            line,
            col,
            format!("{path}.state_topic"),
            format!(
                "states on `{state_topic}` would be under the discovery prefix `{discovery_prefix}`, where they could overwrite discovery configurations"
            ),
        );
    }
    let birth_topic = format!("{discovery_prefix}/status");
    if let Some(c) = commands
        .iter()
        .find(|c| under_prefix(&c.topic) && *c.topic != *birth_topic)
    {
        ctx.err(
            h,
            format!("{path}.discovery_prefix"),
            format!(
                "the command on `{}` listens under the discovery prefix `{discovery_prefix}`, where Home Assistant's configurations are published",
                c.topic
            ),
        );
    }
    let birth = format!("{discovery_prefix}/status");
    if let Some(c) = commands.iter().find(|c| *c.topic == *birth) {
        ctx.err(
            h,
            format!("{path}.discovery_prefix"),
            format!(
                "the gateway watches `{birth}` for Home Assistant's birth message, but the command on `{}` listens there",
                c.topic
            ),
        );
    }
    let mut out = HomeAssistant {
        discovery_prefix,
        node_id,
        state_topic,
        devices: vec![HaDevice::default(); devs.devices.len()],
        points: vec![HaPoint::default(); devs.points.len()],
    };
    for (name, d) in &h.devices {
        let dpath = format!("{path}.devices[{name}]");
        let Some(di) = devs.devices.iter().position(|x| &*x.name == name) else {
            ctx.err(d, &dpath, format!("unknown device `{name}`"));
            continue;
        };
        let point_of = |ctx: &mut Ctx, r: &Located<String>, key: &str| {
            let full = format!("{name}.{}", r.value);
            let found = devs.by_name.get(&full).copied();
            if found.is_none() {
                ctx.err(
                    r,
                    format!("{dpath}.{key}"),
                    format!("device `{name}` has no point `{}`", r.value),
                );
            }
            found
        };
        let serial = d.serial.as_ref().and_then(|r| point_of(ctx, r, "serial"));
        let sw_version = d
            .sw_version
            .as_ref()
            .and_then(|r| point_of(ctx, r, "sw_version"));
        out.devices[di] = HaDevice {
            manufacturer: d.manufacturer.clone(),
            model: d.model.clone(),
            serial,
            sw_version,
        };
        for (pname, p) in &d.points {
            let ppath = format!("{dpath}.points[{pname}]");
            let Some(&pid) = devs.by_name.get(&format!("{name}.{pname}")) else {
                ctx.err(p, &ppath, format!("device `{name}` has no point `{pname}`"));
                continue;
            };
            out.points[pid] = point(ctx, p, &ppath);
        }
    }

    // Topic clashes are reported at `state_topic` when it is written, else at the section.
    let at = h
        .state_topic
        .as_ref()
        .map_or((h.line, h.col), |t| (t.line, t.col));
    state_topics(ctx, at, &out, devs, derived, commands);
    added_commands(ctx, at, &out, devs, commands);
    Some(out)
}

/// One point's overrides, checked.
fn point(ctx: &mut Ctx, p: &Located<RawHaPoint>, ppath: &str) -> HaPoint {
    let class = |ctx: &mut Ctx, v: &Located<String>, key: &str, allowed: Option<&[&str]>| {
        if v.value == "none" {
            return None;
        }
        let ok = match allowed {
            Some(list) => list.contains(&v.as_str()),
            None => {
                !v.is_empty()
                    && v.chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            }
        };
        if !ok {
            let expected = allowed.map_or_else(
                || "a Home Assistant device class in lower case, e.g. temperature".to_owned(),
                |l| format!("one of {}", l.join(", ")),
            );
            ctx.err(
                v,
                format!("{ppath}.{key}"),
                format!("`{}` is not {expected}, or none", v.value),
            );
        }
        Some(Arc::from(v.as_str()))
    };
    let device_class = p
        .device_class
        .as_ref()
        .map(|v| class(ctx, v, "device_class", None));
    let state_class = p
        .state_class
        .as_ref()
        .map(|v| class(ctx, v, "state_class", Some(STATE_CLASSES)));
    let entity_category = p.entity_category.as_ref().map(|v| {
        if !ENTITY_CATEGORIES.contains(&v.as_str()) {
            ctx.err(
                v,
                format!("{ppath}.entity_category"),
                format!(
                    "`{}` is not one of {}",
                    v.value,
                    ENTITY_CATEGORIES.join(", ")
                ),
            );
        }
        Arc::from(v.as_str())
    });
    HaPoint {
        device_class,
        state_class,
        entity_category,
        exclude: p.exclude,
    }
}

/// Every state topic is published by the profile: no other key may publish it, and no command
/// may listen on it.
fn state_topics(
    ctx: &mut Ctx,
    at: (u32, u32),
    ha: &HomeAssistant,
    devs: &Devices,
    derived: &[Derived],
    commands: &[Command],
) {
    let mut topics: Vec<(Arc<str>, String)> = Vec::new();
    for (pid, p) in devs.points.iter().enumerate() {
        if !ha.points[pid].exclude {
            let device = &devs.devices[p.device].name;
            topics.push((
                ha.state_topic(device, &p.name),
                format!("the state of {}", p.full_name),
            ));
        }
    }
    for d in derived {
        if let Some(&first) = d.pack_bits.first() {
            let device = &devs.devices[devs.points[first].device].name;
            topics.push((
                ha.state_topic(device, &d.name),
                format!("the state of derived {}", d.name),
            ));
        }
    }
    for (t, why) in topics {
        let clash = if let Some(owner) = ctx.publish_topics.get(&t) {
            Some(format!("{owner} already publishes it"))
        } else if commands.iter().any(|c| c.topic == t) {
            Some("a command listens on it".to_owned())
        } else {
            None
        };
        match clash {
            Some(clash) => ctx.err_at(
                at.0,
                at.1,
                "homeassistant.state_topic",
                format!("{why} goes to `{t}`, but {clash}; choose another state_topic"),
            ),
            None => {
                ctx.publish_topics
                    .insert(t, format!("homeassistant.state_topic ({why})"));
            }
        }
    }
}

/// A value command for every writable point shown in Home Assistant that has none.
fn added_commands(
    ctx: &mut Ctx,
    at: (u32, u32),
    ha: &HomeAssistant,
    devs: &Devices,
    commands: &mut Vec<Command>,
) {
    let has: HashSet<usize> = commands
        .iter()
        .filter_map(|c| match c.action {
            CommandAction::Value(pid) => Some(pid),
            CommandAction::Table(_) => None,
        })
        .collect();
    for (pid, p) in devs.points.iter().enumerate() {
        if p.write.is_none() || ha.points[pid].exclude || has.contains(&pid) {
            continue;
        }
        let device = &devs.devices[p.device].name;
        let topic: Arc<str> = Arc::from(format!("{}/set", ha.state_topic(device, &p.name)));
        let ack_topic: Arc<str> = Arc::from(format!("{topic}/ack"));
        let why = format!("the command topic of {}", p.full_name);
        if let Some(owner) = ctx.publish_topics.get(&topic).cloned() {
            ctx.err_at(
                at.0,
                at.1,
                "homeassistant.state_topic",
                format!(
                    "{why} would be `{topic}`, but {owner} publishes it; choose another state_topic"
                ),
            );
        }
        if commands.iter().any(|c| c.topic == topic) {
            ctx.err_at(
                at.0,
                at.1,
                "homeassistant.state_topic",
                format!("{why} would be `{topic}`, but another command listens on it; choose another state_topic"),
            );
        }
        ctx.note_topic(
            &ack_topic,
            at,
            &format!("homeassistant.state_topic ({why})/ack"),
        );
        commands.push(Command {
            topic,
            ack_topic,
            qos: Qos::AtLeastOnce,
            action: CommandAction::Value(pid),
        });
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{ConfigError, load_str};
    use std::path::Path;

    #[test]
    fn payload_encryption_and_home_assistant_do_not_go_together() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("payload.key");
        std::fs::write(&key, "ab".repeat(32)).unwrap();
        let yaml = format!(
            "mqtt:\n  host: 127.0.0.1\n  status_topic: p/status\n  payload_encryption:\n    key_file: {}\n\
             devices:\n  - name: tank\n    tcp: {{ host: 127.0.0.1 }}\n    points:\n      - {{ name: p1, kind: coil, address: 0, writable: true }}\n\
             homeassistant: {{}}\n",
            key.display()
        );
        let Err(ConfigError::Invalid { issues, .. }) =
            load_str(Path::new("t.yaml"), &yaml, Default::default(), "h")
        else {
            panic!("accepted");
        };
        assert_eq!(issues.len(), 1, "{issues:?}");
        assert_eq!(issues[0].path, "homeassistant");
        assert!(issues[0].message.contains("cannot encrypt"), "{issues:?}");
        // Without the section, the same file is fine.
        let plain = yaml.replace("homeassistant: {}\n", "");
        assert!(load_str(Path::new("t.yaml"), &plain, Default::default(), "h").is_ok());
    }
}
