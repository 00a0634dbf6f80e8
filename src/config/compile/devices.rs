//! The `devices` section: each device's link, unit, timing and request limits, its status topic,
//! and its read plan over the points (compiled in `points`).
//!
//! A TCP device gets (or shares) a link here; a bus device joins the link of its bus. It must not
//! open a connection, and it does not resolve references to points (later sections do).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use super::buses::BusIndex;
use super::{Ctx, check_name, check_topic};
use crate::config::raw::*;
use crate::config::yaml::Located;
use crate::mappings::plan;
use crate::model::*;

/// The devices and all their points, with points by `device.point` name for later sections.
pub(super) struct Devices {
    pub devices: Vec<Device>,
    pub points: Vec<Point>,
    pub by_name: HashMap<String, usize>,
}

/// What the devices compiled so far leave for the next one.
#[derive(Default)]
struct Seen {
    devices: Vec<Device>,
    points: Vec<Point>,
    by_name: HashMap<String, usize>,
    device_names: HashSet<String>,
    units: Vec<u8>,
    names_by_id: Vec<String>,
}

/// The `devices` section, in order. TCP devices add their links to `links`.
pub(super) fn compile(
    ctx: &mut Ctx,
    raw_devices: &[Located<RawDevice>],
    links: &mut Vec<Link>,
    bus_index: &BusIndex,
    status_topic: &Arc<str>,
) -> Devices {
    let mut seen = Seen::default();
    for (di, d) in raw_devices.iter().enumerate() {
        device(ctx, &mut seen, links, bus_index, status_topic, di, d);
    }
    Devices {
        devices: seen.devices,
        points: seen.points,
        by_name: seen.by_name,
    }
}

/// One device: checked, attached to its link, its points compiled and its reads planned.
fn device(
    ctx: &mut Ctx,
    seen: &mut Seen,
    links: &mut Vec<Link>,
    bus_index: &BusIndex,
    status_topic: &Arc<str>,
    di: usize,
    d: &Located<RawDevice>,
) {
    let dpath = format!(
        "devices[{}]",
        if d.name.is_empty() {
            di.to_string()
        } else {
            d.name.value.clone()
        }
    );
    check_device_keys(ctx, &mut seen.device_names, d, &dpath);
    let device_id = seen.devices.len();
    let (link, link_timeout) = link_of(ctx, links, bus_index, d, &dpath);
    let max_registers = limit(ctx, &d.max_registers, &dpath, "max_registers", 125);
    let max_bits = limit(ctx, &d.max_bits, &dpath, "max_bits", 2000);
    if let Some(l) = links.get_mut(link) {
        if let Some(cd) = d.connect_delay {
            l.connect_delay = l.connect_delay.max(cd.0);
        }
        if let Some(&other) = l.devices.iter().find(|&&o| seen.units[o] == d.unit) {
            ctx.err(
                d,
                format!("{dpath}.unit"),
                format!(
                    "unit {} is already used by device `{}` on {}",
                    d.unit, seen.names_by_id[other], l.name
                ),
            );
        }
        l.devices.push(device_id);
    }
    seen.units.push(d.unit);
    seen.names_by_id.push(d.name.value.clone());
    let status = match &d.status_topic {
        Some(t) => check_topic(ctx, t, &format!("{dpath}.status_topic")),
        None => Arc::from(format!("{status_topic}/{}", d.name.value)),
    };
    let (sl, sc) = d
        .status_topic
        .as_ref()
        .map_or((d.line, d.col), |t| (t.line, t.col));
    ctx.note_topic(&status, (sl, sc), &format!("{dpath}.status_topic"));

    let (ids, spans) = super::points::compile(
        ctx,
        d,
        &dpath,
        device_id,
        max_registers,
        &mut seen.points,
        &mut seen.by_name,
    );
    let plan = plan::plan_limited(
        &spans,
        d.max_gap,
        plan::Limits {
            registers: max_registers,
            bits: max_bits,
        },
    );
    for (i, &pid) in ids.iter().enumerate() {
        seen.points[pid].slot = plan.slots[i];
    }
    seen.devices.push(Device {
        name: Arc::from(d.name.as_str()),
        link: link.min(links.len().saturating_sub(1)),
        unit: d.unit,
        timeout: d.timeout.map_or(link_timeout, |t| t.0),
        poll_interval: d.poll_interval.0,
        request_delay: d.request_delay.map_or(Duration::ZERO, |d| d.0),
        write_function: match d.write_function {
            RawWriteFunction::Auto => WriteFunction::Auto,
            RawWriteFunction::Single => WriteFunction::Single,
            RawWriteFunction::Multiple => WriteFunction::Multiple,
        },
        max_registers,
        max_bits,
        status_topic: status,
        plan,
        points: ids,
    });
}

/// The device's own keys: name, unit, timeout and poll interval.
fn check_device_keys(
    ctx: &mut Ctx,
    device_names: &mut HashSet<String>,
    d: &Located<RawDevice>,
    dpath: &str,
) {
    check_name(ctx, &d.name, &format!("{dpath}.name"));
    if d.name.as_str() == "reload" && d.status_topic.is_none() {
        ctx.err(&d.name, format!("{dpath}.name"), "`reload` is reserved: the gateway reports reloads on <status_topic>/reload (set status_topic or rename)");
    }
    if !device_names.insert(d.name.value.clone()) {
        ctx.err(
            &d.name,
            format!("{dpath}.name"),
            format!("duplicate device name `{}`", d.name.value),
        );
    }
    if d.unit > 247 {
        ctx.err(
            d,
            format!("{dpath}.unit"),
            format!("unit must be 0-247, not {}", d.unit),
        );
    }
    if d.timeout.is_some_and(|t| t.0.is_zero()) {
        ctx.err(
            d,
            format!("{dpath}.timeout"),
            "timeout must be greater than zero",
        );
    }
    if d.poll_interval.0.is_zero() {
        ctx.err(
            d,
            format!("{dpath}.poll_interval"),
            "poll_interval must be greater than zero",
        );
    }
}

/// The device's link (`tcp`: its own or a shared connection; `bus`: the bus's) and the timeout it
/// inherits from it. `usize::MAX` when there is none (an error is reported).
fn link_of(
    ctx: &mut Ctx,
    links: &mut Vec<Link>,
    bus_index: &BusIndex,
    d: &Located<RawDevice>,
    dpath: &str,
) -> (usize, Duration) {
    match (&d.tcp, &d.bus) {
        (Some(tcp), None) => {
            if tcp.host.is_empty() {
                ctx.err(d, format!("{dpath}.tcp.host"), "host must not be empty");
            }
            let spec = LinkSpec::Tcp {
                host: tcp.host.clone(),
                port: tcp.port,
            };
            let idx = match links.iter().position(|l: &Link| l.spec == spec) {
                Some(i) => i,
                None => {
                    links.push(Link {
                        name: Arc::from(spec.to_string()),
                        spec,
                        frame_gap: Duration::ZERO,
                        turnaround: Duration::ZERO,
                        quarantine_after: 3,
                        quarantine_max: Duration::from_secs(60),
                        tid: TidPolicy::Strict,
                        echo: false,
                        connect_delay: Duration::ZERO,
                        devices: Vec::new(),
                    });
                    links.len() - 1
                }
            };
            // One connection: lenient if any of its devices needs it.
            if tcp
                .transaction_id
                .as_ref()
                .is_some_and(|t| t.value == RawTransactionId::Lenient)
            {
                links[idx].tid = TidPolicy::Lenient;
            }
            (idx, Duration::from_secs(1))
        }
        (None, Some(bus)) => match bus_index.get(bus.as_str()) {
            Some(&(idx, timeout)) => {
                if d.unit == 0 {
                    ctx.err(
                        d,
                        format!("{dpath}.unit"),
                        "unit 0 is the broadcast address: no device answers it on a bus",
                    );
                }
                (idx, timeout)
            }
            None => {
                ctx.err(
                    bus,
                    format!("{dpath}.bus"),
                    format!("unknown bus `{}`", bus.value),
                );
                (usize::MAX, Duration::from_secs(1))
            }
        },
        _ => {
            ctx.err(d, dpath, "a device needs exactly one of `tcp` or `bus`");
            (usize::MAX, Duration::from_secs(1))
        }
    }
}

/// A request limit (`max_registers`, `max_bits`): 1 to `max`, and `max` when not set.
fn limit(ctx: &mut Ctx, v: &Option<Located<u16>>, dpath: &str, key: &str, max: u16) -> u16 {
    match v {
        Some(n) if n.value == 0 || n.value > max => {
            ctx.err(
                n,
                format!("{dpath}.{key}"),
                format!("{key} must be 1-{max}, not {}", n.value),
            );
            max
        }
        Some(n) => n.value,
        None => max,
    }
}

impl Devices {
    /// The point named `device.point` by the reference `r`; an error at `path` if there is none.
    pub(super) fn resolve(&self, ctx: &mut Ctx, r: &Located<String>, path: &str) -> Option<usize> {
        let found = self.by_name.get(r.as_str()).copied();
        if found.is_none() {
            ctx.err(
                r,
                path,
                format!("unknown point `{}`; write it as device.point", r.value),
            );
        }
        found
    }
}
