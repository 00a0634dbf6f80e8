//! The `s7_devices` section (issue 19): each Siemens S7 PLC's `s7` link (host, port, rack and
//! slot or a TSAP pair, connection type, PDU size), its points in S7 notation, checked with
//! their line and column, and its S7 read plan.
//!
//! An S7 device becomes an ordinary `Device` with its own `Link` (`LinkSpec::S7`), and its
//! points ordinary `Point`s (see `model.rs`, "Siemens S7"), so that later sections (derived
//! values, commands, groups, Home Assistant) refer to them as to any point. It must not open a
//! connection.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use super::devices::Devices;
use super::{Ctx, check_name, check_topic, publish_rule};
use crate::config::raw::*;
use crate::config::yaml::Located;
use crate::inputs::s7::frame::{LOCAL_TSAP, remote_tsap};
use crate::mappings::RegisterKind;
use crate::mappings::plan::{ReadPlan, ReadRequest, Slot};
use crate::model::*;
use crate::vocabulary::s7::{self, S7Address, S7Type};

/// The `s7_devices` section, in order, appended to `devs` (after the Modbus devices); each
/// device gets its own link in `links`.
pub(super) fn compile(
    ctx: &mut Ctx,
    raw: &[Located<RawS7Device>],
    links: &mut Vec<Link>,
    devs: &mut Devices,
    status_topic: &Arc<str>,
) {
    for (di, d) in raw.iter().enumerate() {
        device(ctx, links, devs, status_topic, di, d);
    }
}

fn device(
    ctx: &mut Ctx,
    links: &mut Vec<Link>,
    devs: &mut Devices,
    status_topic: &Arc<str>,
    di: usize,
    d: &Located<RawS7Device>,
) {
    let dpath = format!(
        "s7_devices[{}]",
        if d.name.is_empty() {
            di.to_string()
        } else {
            d.name.value.clone()
        }
    );
    check_name(ctx, &d.name, &format!("{dpath}.name"));
    if devs.devices.iter().any(|x| *x.name == *d.name.value) {
        ctx.err(
            &d.name,
            format!("{dpath}.name"),
            format!("duplicate device name `{}`", d.name.value),
        );
    }
    if d.name.as_str() == "reload" && d.status_topic.is_none() {
        ctx.err(&d.name, format!("{dpath}.name"), "`reload` is reserved: the gateway reports reloads on <status_topic>/reload (set status_topic or rename)");
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
    let device_id = devs.devices.len();
    let status = match &d.status_topic {
        Some(t) => check_topic(ctx, t, &format!("{dpath}.status_topic")),
        None => Arc::from(format!("{status_topic}/{}", d.name.value)),
    };
    let (sl, sc) = d
        .status_topic
        .as_ref()
        .map_or((d.line, d.col), |t| (t.line, t.col));
    ctx.note_topic(&status, (sl, sc), &format!("{dpath}.status_topic"));

    let (local_tsap, remote, endpoint) = tsaps(ctx, &d.s7, &format!("{dpath}.s7"));
    let pdu = d.s7.pdu_size.as_ref().map_or(DEFAULT_PDU_SIZE, |p| p.value);
    let pdu_at =
        d.s7.pdu_size
            .as_ref()
            .map_or((d.s7.line, d.s7.col), |p| (p.line, p.col));
    if !(s7::MIN_PDU..=960).contains(&pdu) {
        ctx.err_at(
            pdu_at.0,
            pdu_at.1,
            format!("{dpath}.s7.pdu_size"),
            format!("pdu_size must be 240-960 bytes, not {pdu}"),
        );
    }
    if d.s7.host.is_empty() {
        ctx.err(
            &d.s7.host,
            format!("{dpath}.s7.host"),
            "host must not be empty",
        );
    }
    if d.points.is_empty() {
        ctx.err(
            d,
            format!("{dpath}.points"),
            "a device needs at least one point",
        );
    }

    let mut names = HashSet::new();
    let mut addressed: Vec<(Arc<str>, S7Address)> = Vec::new();
    let mut ids = Vec::new();
    // Per entry of `addressed`: whether its address parsed (checks that need it skip it).
    let mut address_ok: Vec<bool> = Vec::new();
    for (pi, p) in d.points.iter().enumerate() {
        let ppath = format!(
            "{dpath}.points[{}]",
            if p.name.is_empty() {
                pi.to_string()
            } else {
                p.name.value.clone()
            }
        );
        check_name(ctx, &p.name, &format!("{ppath}.name"));
        if !names.insert(p.name.value.clone()) {
            ctx.err(
                &p.name,
                format!("{ppath}.name"),
                format!(
                    "duplicate point name `{}` in device `{}`",
                    p.name.value, d.name.value
                ),
            );
        }
        let parsed = s7::parse_address(&p.address, p.dtype.as_ref().map(|t| t.as_str()));
        address_ok.push(parsed.is_ok());
        let address = match parsed {
            Ok(a) => a,
            Err(e) => {
                match &p.dtype {
                    // A type that does not fit: said at `type`.
                    Some(t) if e.message.starts_with("`type: ") => {
                        ctx.err(t, format!("{ppath}.type"), e.message.clone());
                    }
                    _ => ctx.err(
                        &p.address,
                        format!("{ppath}.address"),
                        format!(
                            "`{}`: {} (at character {})",
                            p.address.value,
                            e.message,
                            e.at + 1
                        ),
                    ),
                }
                // A stand-in so that the rest compiles; checks that depend on the address
                // (type, limits, overlaps) are skipped for it.
                S7Address {
                    area: s7::Area::Db(1),
                    byte: 0,
                    ty: S7Type::Byte,
                }
            }
        };
        let ok = address_ok[address_ok.len() - 1];
        if ok && p.writable.value && address.area == s7::Area::Inputs {
            ctx.warn(
                &p.writable,
                format!("{ppath}.writable"),
                format!(
                    "`{address}` is in the process image of the inputs: the CPU overwrites it from the input modules every scan, so a write does not last"
                ),
            );
        }
        let point = point(ctx, d, p, &ppath, device_id, (address, ok), addressed.len());
        let full = point.full_name.to_string();
        ids.push(devs.points.len());
        devs.by_name.insert(full, devs.points.len());
        devs.points.push(point);
        addressed.push((Arc::from(p.name.as_str()), address));
    }
    writes_within_writable(ctx, d, &dpath, &ids, &addressed, &address_ok, &devs.points);

    let addresses: Vec<S7Address> = addressed.iter().map(|(_, a)| *a).collect();
    let plan = s7::plan(&addresses, pdu.max(s7::MIN_PDU), d.max_gap).unwrap_or_else(|e| {
        ctx.err_at(
            pdu_at.0,
            pdu_at.1,
            format!("{dpath}.s7.pdu_size"),
            format!("{e}: ask for a larger pdu_size"),
        );
        s7::S7ReadPlan::default()
    });
    // One request per point in the register-shaped plan the engine sees (see model.rs).
    let virtual_plan = ReadPlan {
        requests: ids
            .iter()
            .enumerate()
            .map(|(i, &pid)| {
                let p: &Point = &devs.points[pid];
                ReadRequest {
                    kind: p.kind,
                    start: i as u16,
                    count: p.dtype.width(),
                }
            })
            .collect(),
        slots: (0..ids.len())
            .map(|i| Slot {
                request: i,
                offset: 0,
            })
            .collect(),
    };
    let spec = S7Link {
        host: d.s7.host.value.clone(),
        port: d.s7.port,
        local_tsap,
        remote_tsap: remote,
        endpoint,
        pdu,
        max_gap: d.max_gap,
        points: addressed,
        plan,
    };
    let link_name: Arc<str> =
        Arc::from(format!("s7://{}:{}/{}", spec.host, spec.port, d.name.value));
    links.push(Link {
        name: link_name,
        spec: LinkSpec::S7(Arc::new(spec)),
        frame_gap: Duration::ZERO,
        turnaround: Duration::ZERO,
        quarantine_after: 3,
        quarantine_max: Duration::from_secs(60),
        tid: TidPolicy::Strict,
        echo: false,
        connect_delay: Duration::ZERO,
        devices: vec![device_id],
    });
    devs.devices.push(Device {
        name: Arc::from(d.name.as_str()),
        link: links.len() - 1,
        unit: 0,
        timeout: d.timeout.map_or(Duration::from_secs(1), |t| t.0),
        poll_interval: d.poll_interval.0,
        request_delay: Duration::ZERO,
        write_function: WriteFunction::Auto,
        max_registers: 125,
        max_bits: 2000,
        status_topic: status,
        plan: virtual_plan,
        points: ids,
    });
}

/// The TSAP pair, from rack and slot (with the connection type) or given, and how to name it.
fn tsaps(ctx: &mut Ctx, l: &Located<RawS7Link>, path: &str) -> (u16, u16, String) {
    let by_slot = l.rack.is_some() || l.slot.is_some();
    if let (true, Some(t)) = (by_slot, l.remote_tsap.as_ref().or(l.local_tsap.as_ref())) {
        ctx.err(
            t,
            format!("{path}.remote_tsap"),
            "give either rack and slot, or local_tsap and remote_tsap",
        );
    }
    if let Some(remote) = &l.remote_tsap {
        let local = l.local_tsap.as_ref().map_or(LOCAL_TSAP, |t| t.value);
        return (
            local,
            remote.value,
            format!("TSAP {local:#06x} -> {:#06x}", remote.value),
        );
    }
    if let Some(local) = &l.local_tsap {
        ctx.err(
            local,
            format!("{path}.local_tsap"),
            "local_tsap needs remote_tsap (or use rack and slot)",
        );
    }
    let rack = l.rack.as_ref().map_or(0, |r| r.value);
    let slot = l.slot.as_ref().map_or(1, |s| s.value);
    if let Some(r) = l.rack.as_ref().filter(|r| r.value > 7) {
        ctx.err(
            r,
            format!("{path}.rack"),
            format!("rack must be 0-7, not {}", r.value),
        );
    }
    if let Some(s) = l.slot.as_ref().filter(|s| s.value > 31) {
        ctx.err(
            s,
            format!("{path}.slot"),
            format!("slot must be 0-31, not {}", s.value),
        );
    }
    let (ct, name) = match l.connection_type {
        RawS7ConnectionType::Pg => (S7ConnectionType::Pg, "PG"),
        RawS7ConnectionType::Op => (S7ConnectionType::Op, "OP"),
        RawS7ConnectionType::Basic => (S7ConnectionType::Basic, "basic"),
    };
    (
        LOCAL_TSAP,
        remote_tsap(ct as u8, rack, slot),
        format!("rack {rack} slot {slot} ({name})"),
    )
}

/// One point at `address`, read by plan request `index` of its device.
fn point(
    ctx: &mut Ctx,
    d: &Located<RawS7Device>,
    p: &Located<RawS7Point>,
    ppath: &str,
    device_id: usize,
    (address, address_ok): (S7Address, bool),
    index: usize,
) -> Point {
    let dtype = address.ty.data_type();
    let numeric = !matches!(address.ty, S7Type::Bool(_) | S7Type::String(_));
    if !(p.scale.is_finite() && p.scale != 0.0) {
        ctx.err(
            p,
            format!("{ppath}.scale"),
            "scale must be a finite, non-zero number",
        );
    }
    if !p.offset.is_finite() {
        ctx.err(
            p,
            format!("{ppath}.offset"),
            "offset must be a finite number",
        );
    }
    if address_ok && !numeric && (p.scale != 1.0 || p.offset != 0.0) {
        ctx.err(
            p,
            format!("{ppath}.scale"),
            "scale and offset apply to numeric types only",
        );
    }
    let write = if address_ok {
        write_limits(ctx, p, address.ty, ppath)
    } else {
        // The address is wrong (said at it): no type to check the limits against.
        p.writable.value.then(|| WriteLimits {
            min: p.min.unwrap_or(f64::MIN),
            max: p.max.unwrap_or(f64::MAX),
        })
    };
    let publish = p.publish.as_ref().map(|r| {
        let rule = publish_rule(ctx, r, &format!("{ppath}.publish"), d.poll_interval.0);
        ctx.note_topic(
            &rule.topic,
            (r.topic.line, r.topic.col),
            &format!("{ppath}.publish.topic"),
        );
        rule
    });
    Point {
        device: device_id,
        name: Arc::from(p.name.as_str()),
        full_name: Arc::from(format!("{}.{}", d.name.value, p.name.value)),
        kind: if matches!(address.ty, S7Type::Bool(_)) {
            RegisterKind::Coil
        } else {
            RegisterKind::HoldingRegister
        },
        address: address.byte as u16,
        dtype,
        order: crate::mappings::Order::ABCD,
        scale: p.scale,
        offset: p.offset,
        decimals: p.decimals.or_else(|| {
            dtype
                .is_integer()
                .then(|| super::points::decimals_of(p.scale))
                .flatten()
        }),
        no_value: Vec::new(),
        unit: p.unit.as_deref().map(Arc::from),
        write,
        publish,
        slot: Slot {
            request: index,
            offset: 0,
        },
    }
}

/// `writable` with its `min`/`max`: limits the S7 type can hold after scaling; never a STRING.
fn write_limits(
    ctx: &mut Ctx,
    p: &Located<RawS7Point>,
    ty: S7Type,
    ppath: &str,
) -> Option<WriteLimits> {
    if !p.writable.value {
        if p.min.is_some() || p.max.is_some() {
            ctx.err(
                p,
                format!("{ppath}.min"),
                "min/max limit writes; set `writable: true` or remove them",
            );
        }
        return None;
    }
    let Some((tmin, tmax)) = ty.raw_range() else {
        ctx.err(
            &p.writable,
            format!("{ppath}.writable"),
            "STRING points cannot be written",
        );
        return None;
    };
    let (a, b) = (tmin * p.scale + p.offset, tmax * p.scale + p.offset);
    let (emin, emax) = (a.min(b), a.max(b));
    let min = p.min.unwrap_or(emin);
    let max = p.max.unwrap_or(emax);
    let n = crate::mappings::number::display;
    if !(min.is_finite() && max.is_finite()) || min > max {
        ctx.err(
            &p.writable,
            format!("{ppath}.min"),
            format!("min ({}) must not exceed max ({})", n(min), n(max)),
        );
    } else if min < emin || max > emax {
        ctx.err(
            &p.writable,
            format!("{ppath}.max"),
            format!(
                "min/max {}..{} exceed what {} can hold after scaling ({}..{})",
                n(min),
                n(max),
                ty.name(),
                n(emin),
                n(emax)
            ),
        );
    }
    Some(WriteLimits { min, max })
}

/// The bits a value covers (a BOOL only its own bit).
fn bits(a: &S7Address) -> std::ops::Range<u64> {
    let start = u64::from(a.byte) * 8;
    match a.ty {
        S7Type::Bool(b) => start + u64::from(b)..start + u64::from(b) + 1,
        t => start..start + u64::from(t.bytes()) * 8,
    }
}

/// A write changes every byte (or the bit) its value covers; if one belongs to a point that is
/// not writable, the write changes a value the mapping says must not be written. Refused,
/// with both points named.
fn writes_within_writable(
    ctx: &mut Ctx,
    d: &Located<RawS7Device>,
    dpath: &str,
    ids: &[usize],
    addressed: &[(Arc<str>, S7Address)],
    address_ok: &[bool],
    points: &[Point],
) {
    for (wi, &w) in ids.iter().enumerate() {
        if points[w].write.is_none() || !address_ok[wi] {
            continue;
        }
        let (wname, waddr) = &addressed[wi];
        for (oi, &o) in ids.iter().enumerate() {
            let (oname, oaddr) = &addressed[oi];
            if o == w || !address_ok[oi] || points[o].write.is_some() || oaddr.area != waddr.area {
                continue;
            }
            let (ws, os) = (bits(waddr), bits(oaddr));
            if ws.start < os.end && os.start < ws.end {
                ctx.err(
                    &d.points[wi].writable,
                    format!("{dpath}.points[{wname}].writable"),
                    format!(
                        "writing `{wname}` ({waddr}) would also change `{oname}` ({oaddr}), which is not writable; make `{oname}` writable too, or move one of them"
                    ),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::model::LinkSpec;

    fn remote_tsap(connection_type: &str) -> Result<u16, String> {
        let yaml = format!(
            "mqtt: {{ host: 127.0.0.1, client_id: c, status_topic: t/status }}
s7_devices:
  - name: plc
    s7: {{ host: 10.0.0.5, rack: 0, slot: 1, connection_type: {connection_type} }}
    points:
      - {{ name: count, address: DB1.DBW0 }}
"
        );
        let m = crate::config::load_str(
            std::path::Path::new("m.yaml"),
            &yaml,
            Default::default(),
            "box",
        )
        .map_err(|e| e.to_string())?;
        match &m.links[0].spec {
            LinkSpec::S7(s7) => Ok(s7.remote_tsap),
            other => panic!("{other:?}"),
        }
    }

    /// `connection_type` is written in lower case in the README, in upper case in Siemens'
    /// manuals (PG, OP): both are accepted; the high byte of the remote TSAP follows it.
    #[test]
    fn connection_type_is_accepted_in_either_case() {
        assert_eq!(remote_tsap("op"), Ok(0x0201));
        assert_eq!(remote_tsap("OP"), Ok(0x0201));
        assert_eq!(remote_tsap("PG"), Ok(0x0101));
        assert_eq!(remote_tsap("Basic"), Ok(0x0301));
        assert!(remote_tsap("xx").is_err());
    }

    /// A writable point on the inputs (I/E) is a warning: the CPU overwrites it every scan.
    #[test]
    fn a_writable_input_is_a_warning() {
        let yaml = "mqtt: { host: 127.0.0.1, client_id: c, status_topic: t/status }
s7_devices:
  - name: plc
    s7: { host: 10.0.0.5 }
    points:
      - { name: sw, address: I0.1, writable: true }
      - { name: out, address: Q0.1, writable: true }
";
        let m = crate::config::load_str(
            std::path::Path::new("m.yaml"),
            yaml,
            Default::default(),
            "box",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let w: Vec<String> = m
            .warnings
            .iter()
            .map(|i| format!("{}: {}", i.path, i.message))
            .collect();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("points[sw].writable"), "{w:?}");
        assert!(w[0].contains("process image of the inputs"), "{w:?}");
    }
}
