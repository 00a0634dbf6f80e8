//! The points of one device: type, address, scaling, `no_value` codes, write limits and publish
//! rule, checked into [`Point`]s, plus the hints for addresses copied from a manual.
//!
//! It must not plan reads (the device does, over the spans returned here) or resolve references
//! between points.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::{Ctx, check_name, publish_rule};
use crate::config::raw::*;
use crate::config::yaml::Located;
use crate::mappings::plan::{Slot, Span};
use crate::mappings::{DataType, RegisterKind};
use crate::model::*;

/// The points of device `d` (number `device_id`), appended to `points` and indexed in `by_name`.
/// Returns their ids and the spans to plan reads over, in the same order.
pub(super) fn compile(
    ctx: &mut Ctx,
    d: &Located<RawDevice>,
    dpath: &str,
    device_id: usize,
    max_registers: u16,
    points: &mut Vec<Point>,
    by_name: &mut HashMap<String, usize>,
) -> (Vec<usize>, Vec<Span>) {
    let mut spans = Vec::new();
    let mut ids = Vec::new();
    let mut point_names = HashSet::new();
    if d.points.is_empty() {
        ctx.err(
            d,
            format!("{dpath}.points"),
            "a device needs at least one point",
        );
    }
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
        if !point_names.insert(p.name.value.clone()) {
            ctx.err(
                &p.name,
                format!("{ppath}.name"),
                format!(
                    "duplicate point name `{}` in device `{}`",
                    p.name.value, d.name.value
                ),
            );
        }
        let point = point(ctx, d, p, &ppath, device_id, max_registers);
        by_name.insert(point.full_name.to_string(), points.len());
        ids.push(points.len());
        spans.push(Span {
            kind: p.kind,
            address: point.address,
            width: point.dtype.width(),
        });
        points.push(point);
    }
    writes_within_writable(ctx, d, dpath, &ids, points);
    (ids, spans)
}

/// A write to a point changes every register (or coil) it covers; if one of them belongs to a
/// point that is not writable, the write changes a value the mapping says must not be written
/// (a writable f32 at 3 covers holding register 4, the read-only `auto_control`). Refused, with
/// both points named: make the other one writable too, or move this one.
fn writes_within_writable(
    ctx: &mut Ctx,
    d: &Located<RawDevice>,
    dpath: &str,
    ids: &[usize],
    points: &[Point],
) {
    for (pi, &w) in ids.iter().enumerate() {
        let wp = &points[w];
        if wp.write.is_none() {
            continue;
        }
        let span = |p: &Point| {
            let start = u32::from(p.address);
            start..start + u32::from(p.dtype.width().max(1))
        };
        let ws = span(wp);
        for &o in ids {
            let op = &points[o];
            if o == w || op.write.is_some() || op.kind != wp.kind {
                continue;
            }
            let os = span(op);
            if ws.start < os.end && os.start < ws.end {
                let raw = &d.points[pi];
                ctx.err(
                    &raw.writable,
                    format!("{dpath}.points[{}].writable", wp.name),
                    format!(
                        "writing `{}` ({} {}..={}) would also change `{}` ({} {}), which is not writable; make `{}` writable too, or move one of them",
                        wp.name,
                        wp.kind.name(),
                        ws.start,
                        ws.end - 1,
                        op.name,
                        op.kind.name(),
                        os.start,
                        op.name,
                    ),
                );
            }
        }
    }
}

/// One point (its read slot is filled in once the device's reads are planned).
fn point(
    ctx: &mut Ctx,
    d: &Located<RawDevice>,
    p: &Located<RawPoint>,
    ppath: &str,
    device_id: usize,
    max_registers: u16,
) -> Point {
    let dtype = data_type(ctx, p, ppath);
    let width = dtype.width();
    let address = address(ctx, p, width, ppath);
    if !p.kind.is_bit() && width > max_registers {
        ctx.err(
                    p,
                    format!("{ppath}.type"),
                    format!(
                        "a value of {width} registers cannot be read in one request: the device's max_registers is {max_registers}"
                    ),
                );
    }
    if let Some(hint) = five_digit_register_number(p.kind, p.address.value) {
        ctx.warn(&p.address, format!("{ppath}.address"), hint);
    }
    let no_value = no_value_codes(ctx, p, dtype, ppath);
    check_scale(ctx, p, dtype, ppath);
    let write = write_limits(ctx, p, dtype, ppath);
    let publish = p.publish.as_ref().map(|r| {
        let rule = publish_rule(ctx, r, &format!("{ppath}.publish"), d.poll_interval.0);
        ctx.note_topic(
            &rule.topic,
            (r.topic.line, r.topic.col),
            &format!("{ppath}.publish.topic"),
        );
        rule
    });
    let full_name: Arc<str> = Arc::from(format!("{}.{}", d.name.value, p.name.value));
    Point {
        device: device_id,
        name: Arc::from(p.name.as_str()),
        full_name,
        kind: p.kind,
        address,
        dtype,
        order: p.order,
        scale: p.scale,
        offset: p.offset,
        // A float is published as its shortest decimal; a default from the scale
        // would cut it (scale 2 would give 0 decimals).
        decimals: p
            .decimals
            .or_else(|| dtype.is_integer().then(|| decimals_of(p.scale)).flatten()),
        no_value,
        unit: p.unit.as_deref().map(Arc::from),
        write,
        publish,
        slot: Slot {
            request: 0,
            offset: 0,
        },
    }
}

/// The protocol address, checked so the whole value fits below 65536.
fn address(ctx: &mut Ctx, p: &Located<RawPoint>, width: u16, ppath: &str) -> u16 {
    match u16::try_from(p.address.value) {
        Ok(a) if u32::from(a) + u32::from(width) - 1 <= 65_535 => a,
        _ => {
            let mut message = format!(
                "address {} out of range: a {}-register value must start at 0-{}",
                p.address.value,
                width,
                65_536 - u32::from(width)
            );
            if let Some(hint) = six_digit_register_number(p.kind, p.address.value) {
                message.push_str("; ");
                message.push_str(&hint);
            }
            ctx.err(&p.address, format!("{ppath}.address"), message);
            0
        }
    }
}

/// `scale` and `offset`: finite, a non-zero scale, and only on numeric types.
fn check_scale(ctx: &mut Ctx, p: &Located<RawPoint>, dtype: DataType, ppath: &str) {
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
    if matches!(
        dtype,
        DataType::Bool | DataType::Bit(_) | DataType::String(_)
    ) && (p.scale != 1.0 || p.offset != 0.0)
    {
        ctx.err(
            p,
            format!("{ppath}.scale"),
            "scale and offset apply to numeric types only",
        );
    }
}

/// `writable` with its `min`/`max`: only coils and holding registers, and limits the type can
/// hold after scaling. `None` for a read-only point.
fn write_limits(
    ctx: &mut Ctx,
    p: &Located<RawPoint>,
    dtype: DataType,
    ppath: &str,
) -> Option<WriteLimits> {
    if p.writable.value {
        let w = &p.writable;
        if !matches!(p.kind, RegisterKind::Coil | RegisterKind::HoldingRegister) {
            ctx.err(
                w,
                format!("{ppath}.writable"),
                format!(
                    "{} is a read-only table; only coils and holding registers can be written",
                    p.kind.name()
                ),
            );
        } else if matches!(dtype, DataType::Bit(_) | DataType::String(_)) {
            ctx.err(w, format!("{ppath}.writable"), "bit-in-register and string points cannot be written (a read-modify-write could clobber the other bits)");
        }
        let (tmin, tmax) = dtype.raw_range().unwrap_or((0.0, 0.0));
        let (emin, emax) = {
            let a = tmin * p.scale + p.offset;
            let b = tmax * p.scale + p.offset;
            (a.min(b), a.max(b))
        };
        let min = p.min.unwrap_or(emin);
        let max = p.max.unwrap_or(emax);
        let n = crate::mappings::number::display;
        if !(min.is_finite() && max.is_finite()) || min > max {
            ctx.err(
                w,
                format!("{ppath}.min"),
                format!("min ({}) must not exceed max ({})", n(min), n(max)),
            );
        } else if min < emin || max > emax {
            ctx.err(
                w,
                format!("{ppath}.max"),
                format!(
                    "min/max {}..{} exceed what {:?} can hold after scaling ({}..{})",
                    n(min),
                    n(max),
                    dtype,
                    n(emin),
                    n(emax)
                ),
            );
        }
        Some(WriteLimits { min, max })
    } else {
        if p.min.is_some() || p.max.is_some() {
            ctx.err(
                p,
                format!("{ppath}.min"),
                "min/max limit writes; set `writable: true` or remove them",
            );
        }
        None
    }
}

/// Decimals implied by a scale factor: 0.1 -> 1, 0.25 -> 2, 10 -> 0.
pub(super) fn decimals_of(scale: f64) -> Option<u8> {
    if scale == 1.0 {
        return None;
    }
    let s = format!("{}", scale.abs());
    Some(
        s.split_once('.')
            .map_or(0, |(_, frac)| frac.len().min(12) as u8),
    )
}

/// The 1-based register numbering of manuals: the leading digit names the table (Modicon
/// convention: 3 input registers, 4 holding registers), the rest counts from 1. Coils (0xxxx)
/// and discrete inputs (1xxxx) are left alone: their numbers look like ordinary addresses.
fn table_digit(kind: RegisterKind) -> Option<u32> {
    match kind {
        RegisterKind::InputRegister => Some(3),
        RegisterKind::HoldingRegister => Some(4),
        RegisterKind::Coil | RegisterKind::DiscreteInput => None,
    }
}

/// A warning for an address that looks like a 5-digit register number (40001-49999 for a
/// holding register, 30001-39999 for an input register), naming the likely protocol address.
fn five_digit_register_number(kind: RegisterKind, address: u32) -> Option<String> {
    let d = table_digit(kind)?;
    let base = d * 10_000;
    if !(base + 1..=base + 9_999).contains(&address) {
        return None;
    }
    Some(format!(
        "address {address} looks like a register number from a manual ({d}xxxx, 1-based); \
         the protocol address is probably {} (or {}, if the manual's {} is the first {})",
        address - 1,
        address - base - 1,
        base + 1,
        kind.name().replace('_', " ")
    ))
}

/// For an out-of-range address that looks like a 6-digit register number (400001-465536 for a
/// holding register, 300001-365536 for an input register): what it probably means.
fn six_digit_register_number(kind: RegisterKind, address: u32) -> Option<String> {
    let d = table_digit(kind)?;
    let base = d * 100_000;
    (base + 1..=base + 65_536).contains(&address).then(|| {
        format!(
            "it looks like a 6-digit register number from a manual ({d}xxxxx, 1-based): the protocol address is probably {}",
            address - base - 1
        )
    })
}

/// The raw bit patterns of a point's `no_value` codes; a code that does not fit the point's
/// type is an error at the code.
fn no_value_codes(ctx: &mut Ctx, p: &Located<RawPoint>, dtype: DataType, path: &str) -> Vec<u64> {
    let mut out = Vec::new();
    for (i, c) in p.no_value.iter().enumerate() {
        let at = format!("{path}.no_value[{i}]");
        if matches!(
            dtype,
            DataType::Bool | DataType::Bit(_) | DataType::String(_)
        ) {
            ctx.err(
                c,
                at,
                format!("no_value applies to numeric types, not {dtype:?}"),
            );
            continue;
        }
        match crate::mappings::codec::code_bits(c.value, dtype) {
            Some(bits) => out.push(bits),
            None => {
                let bits = u32::from(dtype.width()) * 16;
                let signed = matches!(dtype, DataType::I16 | DataType::I32 | DataType::I64);
                let range = if signed {
                    format!("-{} to 0x{:X}", 1u128 << (bits - 1), (1u128 << bits) - 1)
                } else {
                    format!("0 to 0x{:X}", (1u128 << bits) - 1)
                };
                ctx.err(
                    c,
                    at,
                    format!(
                        "no_value code {} does not fit a {dtype:?} ({range})",
                        c.value
                    ),
                );
            }
        }
    }
    out
}

fn data_type(ctx: &mut Ctx, p: &Located<RawPoint>, path: &str) -> DataType {
    let default = if p.kind.is_bit() {
        RawType::Bool
    } else {
        RawType::U16
    };
    let t = p.dtype.as_ref().map_or(default, |t| t.value);
    let (tl, tc) = p
        .dtype
        .as_ref()
        .map_or((p.line, p.col), |t| (t.line, t.col));
    if p.kind.is_bit() != (t == RawType::Bool) {
        let msg = if p.kind.is_bit() {
            format!("a {} holds one bit: type must be bool", p.kind.name())
        } else {
            format!(
                "a {} is a 16-bit register: use bit (with `bit:`) instead of bool",
                p.kind.name()
            )
        };
        ctx.err_at(tl, tc, format!("{path}.type"), msg);
    }
    if t != RawType::Bit
        && let Some(b) = &p.bit
    {
        ctx.err(b, format!("{path}.bit"), "`bit` is only for type bit");
    }
    if t != RawType::String
        && let Some(l) = &p.length
    {
        ctx.err(
            l,
            format!("{path}.length"),
            "`length` is only for type string",
        );
    }
    match t {
        RawType::Bool => DataType::Bool,
        RawType::Bit => match &p.bit {
            Some(b) if b.value <= 15 => DataType::Bit(b.value),
            Some(b) => {
                ctx.err(
                    b,
                    format!("{path}.bit"),
                    format!("bit must be 0-15, not {}", b.value),
                );
                DataType::Bit(0)
            }
            None => {
                ctx.err_at(tl, tc, path, "type bit needs `bit:` (0-15)");
                DataType::Bit(0)
            }
        },
        RawType::U16 => DataType::U16,
        RawType::I16 => DataType::I16,
        RawType::U32 => DataType::U32,
        RawType::I32 => DataType::I32,
        RawType::U64 => DataType::U64,
        RawType::I64 => DataType::I64,
        RawType::F32 => DataType::F32,
        RawType::F64 => DataType::F64,
        RawType::String => match &p.length {
            Some(l) if (1..=125).contains(&l.value) => DataType::String(l.value),
            Some(l) => {
                ctx.err(
                    l,
                    format!("{path}.length"),
                    format!("length must be 1-125 registers, not {}", l.value),
                );
                DataType::String(1)
            }
            None => {
                ctx.err_at(tl, tc, path, "type string needs `length:` (in registers)");
                DataType::String(1)
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_follow_the_scale() {
        assert_eq!(decimals_of(1.0), None);
        assert_eq!(decimals_of(0.1), Some(1));
        assert_eq!(decimals_of(0.25), Some(2));
        assert_eq!(decimals_of(10.0), Some(0));
        assert_eq!(decimals_of(-0.01), Some(2));
    }
}
