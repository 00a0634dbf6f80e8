//! The `buses` section: serial lines and RTU-over-TCP gateways, each one [`Link`] shared by the
//! devices that name it.
//!
//! It checks the line settings and picks the frame gap; it must not open a port, and it does not
//! look at devices (those attach themselves in the devices section).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::{Ctx, check_name};
use crate::config::raw::*;
use crate::config::yaml::Located;
use crate::model::*;

/// A bus name to its link index and the timeout its devices inherit.
pub(super) type BusIndex = HashMap<String, (usize, Duration)>;

/// The links of the `buses` section (in order) and the index by bus name.
pub(super) fn compile(ctx: &mut Ctx, buses: &[Located<RawBus>]) -> (Vec<Link>, BusIndex) {
    let mut links: Vec<Link> = Vec::new();
    let mut bus_index: BusIndex = HashMap::new();
    for (bi, b) in buses.iter().enumerate() {
        let bpath = format!(
            "buses[{}]",
            if b.name.is_empty() {
                bi.to_string()
            } else {
                b.name.value.clone()
            }
        );
        check_name(ctx, &b.name, &format!("{bpath}.name"));
        if bus_index.contains_key(b.name.as_str()) {
            ctx.err(
                &b.name,
                format!("{bpath}.name"),
                format!("duplicate bus name `{}`", b.name.value),
            );
        }
        if b.timeout.0.is_zero() {
            ctx.err(
                b,
                format!("{bpath}.timeout"),
                "timeout must be greater than zero",
            );
        }
        if b.quarantine_after == 0 {
            ctx.err(
                b,
                format!("{bpath}.quarantine_after"),
                "quarantine_after must be at least 1",
            );
        }
        let (spec, default_gap) = link_spec(ctx, b, &bpath);
        if let Some(other) = links.iter().find(|l| l.spec == spec) {
            ctx.err(
                b,
                &bpath,
                format!(
                    "bus `{}` already uses this port; put all its devices on one bus",
                    other.name
                ),
            );
        }
        bus_index.insert(b.name.value.clone(), (links.len(), b.timeout.0));
        links.push(Link {
            name: Arc::from(b.name.as_str()),
            spec,
            frame_gap: b.frame_gap.map_or(default_gap, |d| d.0),
            turnaround: b.turnaround.map_or(Duration::ZERO, |d| d.0),
            quarantine_after: b.quarantine_after.max(1),
            quarantine_max: b.quarantine_max.0,
            tid: TidPolicy::Strict,
            echo: b.echo,
            connect_delay: Duration::ZERO,
            devices: Vec::new(),
        });
    }
    (links, bus_index)
}

/// The bus's line (`serial` or `tcp`, exactly one) and its default frame gap.
fn link_spec(ctx: &mut Ctx, b: &Located<RawBus>, bpath: &str) -> (LinkSpec, Duration) {
    match (&b.serial, &b.tcp) {
        (Some(s), None) => {
            if s.device.is_empty() {
                ctx.err(
                    &s.device,
                    format!("{bpath}.serial.device"),
                    "device must not be empty",
                );
            }
            if !(50..=4_000_000).contains(&s.baud) {
                ctx.err(
                    b,
                    format!("{bpath}.serial.baud"),
                    format!("baud {} is out of range (50-4000000)", s.baud),
                );
            }
            if !matches!(s.data_bits, 7 | 8) {
                ctx.err(
                    b,
                    format!("{bpath}.serial.data_bits"),
                    "data_bits must be 7 or 8",
                );
            }
            if !matches!(s.stop_bits, 1 | 2) {
                ctx.err(
                    b,
                    format!("{bpath}.serial.stop_bits"),
                    "stop_bits must be 1 or 2",
                );
            }
            let spec = SerialSpec {
                path: s.device.value.clone(),
                baud: s.baud.max(1),
                data_bits: s.data_bits,
                parity: match s.parity {
                    RawParity::None => Parity::None,
                    RawParity::Even => Parity::Even,
                    RawParity::Odd => Parity::Odd,
                },
                stop_bits: s.stop_bits,
            };
            let gap = crate::mappings::bustime::default_frame_gap(&spec);
            (LinkSpec::Rtu(spec), gap)
        }
        (None, Some(t)) => {
            if t.host.is_empty() {
                ctx.err(b, format!("{bpath}.tcp.host"), "host must not be empty");
            }
            if let Some(tid) = &t.transaction_id {
                ctx.err(
                    tid,
                    format!("{bpath}.tcp.transaction_id"),
                    "RTU over TCP has no transaction id; `transaction_id` is for Modbus TCP devices",
                );
            }
            (
                LinkSpec::RtuOverTcp {
                    host: t.host.clone(),
                    port: t.port,
                },
                Duration::ZERO,
            )
        }
        _ => {
            ctx.err(b, bpath, "a bus needs exactly one of `serial` or `tcp`");
            (
                LinkSpec::RtuOverTcp {
                    host: String::new(),
                    port: 0,
                },
                Duration::ZERO,
            )
        }
    }
}
