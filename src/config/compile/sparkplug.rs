//! The `sparkplug` section: the edge node's ids, each device's device id and its metrics
//! (names, aliases, datatypes), and where bdSeq is kept.
//!
//! Must not: encode payloads or keep session state (the profile, `northbound::sparkplug`).

use std::collections::HashSet;
use std::sync::Arc;

use super::Ctx;
use super::devices::Devices;
use crate::config::raw::*;
use crate::config::yaml::Located;
use crate::model::*;

/// A Sparkplug id (group, edge node, device, primary host): not empty, no `+`, `#` or `/`
/// (tck-id-topic-structure-namespace-valid-group-id, -edge-node-id, -device-id: they are
/// topic levels).
fn check_id(ctx: &mut Ctx, id: &Located<String>, path: &str) -> Arc<str> {
    if id.is_empty() {
        ctx.err(id, path, "must not be empty");
    } else if id.contains(['+', '#', '/']) || id.chars().any(char::is_control) {
        ctx.err(
            id,
            path,
            format!(
                "`{}` must not contain '+', '#', '/' or control characters (it is a Sparkplug topic level)",
                id.value
            ),
        );
    }
    Arc::from(id.as_str())
}

/// The `sparkplug` section, or `None` when absent.
pub(super) fn compile(
    ctx: &mut Ctx,
    raw: &RawConfig,
    devs: &Devices,
    derived: &[Derived],
    mqtt: &MqttSettings,
) -> Option<Sparkplug> {
    let buffer = &mqtt.buffer.store;
    let Some(section) = raw.sparkplug.as_ref() else {
        unused_keys(ctx, raw);
        return None;
    };
    let group_id = check_id(ctx, &section.group_id, "sparkplug.group_id");
    // `spBv1.0/STATE/<host id>` is the primary host's topic (Sparkplug 3.0, section 4.1.1):
    // a group called STATE would share it.
    if section.group_id.value == "STATE" {
        ctx.err(
            &section.group_id,
            "sparkplug.group_id",
            "`STATE` is reserved: `spBv1.0/STATE/<id>` is the primary host's topic",
        );
    }
    let edge_node_id = check_id(ctx, &section.edge_node_id, "sparkplug.edge_node_id");
    let primary_host_id = section
        .primary_host_id
        .as_ref()
        .map(|h| check_id(ctx, h, "sparkplug.primary_host_id"));
    // Hosts decode the protobuf payloads and DCMDs are protobuf: an envelope would break both.
    if let Some(e) = &mqtt.encryption {
        let probe = format!("spBv1.0/{group_id}/DDATA/{edge_node_id}/device");
        let ncmd = format!("spBv1.0/{group_id}/NCMD/{edge_node_id}");
        if let Some(f) = e.topics.iter().find(|f| {
            crate::vocabulary::topic_matches(f, &probe)
                || crate::vocabulary::topic_matches(f, &ncmd)
        }) {
            ctx.err(
                section,
                "sparkplug",
                format!(
                    "mqtt.payload_encryption.topics has `{f}`, which covers this node's Sparkplug topics; Sparkplug payloads must stay plain protobuf for the host"
                ),
            );
        }
    }
    let state_dir = match &buffer.path {
        Some(p) => p.clone(),
        None => {
            ctx.err(
                section,
                "sparkplug",
                "Sparkplug keeps bdSeq across restarts in the state directory: set mqtt.buffer.path (or run under systemd, which sets STATE_DIRECTORY)",
            );
            std::path::PathBuf::new()
        }
    };
    // Alias 0 is the node's `Node Control/Rebirth`.
    let mut alias = 1u64;
    let mut device_ids = HashSet::new();
    let mut devices = Vec::new();
    for rd in &raw.devices {
        let Some(device) = devs.devices.iter().position(|d| *d.name == *rd.name.value) else {
            continue;
        };
        let dpath = format!("devices[{}]", rd.name.value);
        let device_id = match &rd.device_id {
            Some(id) => check_id(ctx, id, &format!("{dpath}.device_id")),
            None => {
                check_id(ctx, &rd.name, &format!("{dpath}.name"));
                Arc::clone(&devs.devices[device].name)
            }
        };
        if !device_ids.insert(Arc::clone(&device_id)) {
            let at = rd
                .device_id
                .as_ref()
                .map_or((rd.line, rd.col), |l| (l.line, l.col));
            ctx.err_at(
                at.0,
                at.1,
                format!("{dpath}.device_id"),
                format!("Sparkplug device id `{device_id}` is used by another device"),
            );
        }
        let mut names = HashSet::new();
        let mut metrics = Vec::new();
        for rp in &rd.points {
            let full = format!("{}.{}", rd.name.value, rp.name.value);
            let Some(&point) = devs.by_name.get(&full) else {
                continue;
            };
            let ppath = format!("{dpath}.points[{}]", rp.name.value);
            let name: Arc<str> = match &rp.metric {
                Some(m) => {
                    let mpath = format!("{ppath}.metric");
                    if m.is_empty() || m.split('/').any(str::is_empty) {
                        ctx.err(
                            m,
                            &mpath,
                            "metric name must not be empty or have an empty folder",
                        );
                    } else if m.contains(['+', '#']) || m.chars().any(char::is_control) {
                        ctx.err(
                            m,
                            &mpath,
                            format!(
                                "metric name `{}` must not contain '+', '#' or control characters",
                                m.value
                            ),
                        );
                    }
                    Arc::from(m.as_str())
                }
                None => Arc::clone(&devs.points[point].name),
            };
            if !names.insert(Arc::clone(&name)) {
                let at = rp
                    .metric
                    .as_ref()
                    .map_or((rp.line, rp.col), |l| (l.line, l.col));
                ctx.err_at(
                    at.0,
                    at.1,
                    format!("{ppath}.metric"),
                    format!(
                        "metric name `{name}` is used twice in device `{}`",
                        rd.name.value
                    ),
                );
            }
            metrics.push(SparkplugMetric {
                name,
                alias,
                source: MetricSource::Point(point),
                datatype: SparkplugType::of_point(&devs.points[point]),
            });
            alias += 1;
        }
        // A derived value is a metric of the device of its first source.
        for (i, d) in derived.iter().enumerate() {
            if d.pack_bits.first().map(|&p| devs.points[p].device) != Some(device) {
                continue;
            }
            if !names.insert(Arc::clone(&d.name)) {
                ctx.err(
                    &rd.name,
                    format!("derived[{}].name", d.name),
                    format!(
                        "derived value `{}` has the name of a metric of device `{}`, whose metric it is",
                        d.name, rd.name.value
                    ),
                );
            }
            metrics.push(SparkplugMetric {
                name: Arc::clone(&d.name),
                alias,
                source: MetricSource::Derived(i),
                datatype: SparkplugType::UInt64,
            });
            alias += 1;
        }
        devices.push(SparkplugDevice {
            device,
            device_id,
            metrics,
        });
    }
    // S7 devices (issue 19): the device name is the Sparkplug device id and each point's
    // name its metric (S7 devices have no `device_id` or `metric` keys yet).
    for sd in &raw.s7_devices {
        let Some(device) = devs.devices.iter().position(|d| *d.name == *sd.name.value) else {
            continue;
        };
        let dpath = format!("s7_devices[{}]", sd.name.value);
        check_id(ctx, &sd.name, &format!("{dpath}.name"));
        let device_id = Arc::clone(&devs.devices[device].name);
        if !device_ids.insert(Arc::clone(&device_id)) {
            ctx.err(
                &sd.name,
                format!("{dpath}.name"),
                format!("Sparkplug device id `{device_id}` is used by another device"),
            );
        }
        let mut names = HashSet::new();
        let mut metrics = Vec::new();
        for &point in &devs.devices[device].points {
            let name = Arc::clone(&devs.points[point].name);
            names.insert(Arc::clone(&name));
            metrics.push(SparkplugMetric {
                name,
                alias,
                source: MetricSource::Point(point),
                datatype: SparkplugType::of_point(&devs.points[point]),
            });
            alias += 1;
        }
        for (i, d) in derived.iter().enumerate() {
            if d.pack_bits.first().map(|&p| devs.points[p].device) != Some(device) {
                continue;
            }
            if !names.insert(Arc::clone(&d.name)) {
                ctx.err(
                    &sd.name,
                    format!("derived[{}].name", d.name),
                    format!(
                        "derived value `{}` has the name of a metric of device `{}`, whose metric it is",
                        d.name, sd.name.value
                    ),
                );
            }
            metrics.push(SparkplugMetric {
                name: Arc::clone(&d.name),
                alias,
                source: MetricSource::Derived(i),
                datatype: SparkplugType::UInt64,
            });
            alias += 1;
        }
        devices.push(SparkplugDevice {
            device,
            device_id,
            metrics,
        });
    }
    Some(Sparkplug {
        group_id,
        edge_node_id,
        primary_host_id,
        devices,
        state_dir,
        history_max: buffer.max_rows,
        born: Arc::default(),
    })
}

/// Without a `sparkplug` section, a point's `metric` or a device's `device_id` does nothing:
/// a warning.
fn unused_keys(ctx: &mut Ctx, raw: &RawConfig) {
    for d in &raw.devices {
        if let Some(id) = &d.device_id {
            ctx.warn(
                id,
                format!("devices[{}].device_id", d.name.value),
                "device_id is the Sparkplug device id, and there is no sparkplug section",
            );
        }
        for p in &d.points {
            if let Some(m) = &p.metric {
                ctx.warn(
                    m,
                    format!("devices[{}].points[{}].metric", d.name.value, p.name.value),
                    "metric is the Sparkplug metric name, and there is no sparkplug section",
                );
            }
        }
    }
}
