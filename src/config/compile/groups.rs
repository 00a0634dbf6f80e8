//! The `groups` section: grouped messages, one per source per interval, in the simple, detailed
//! or per-point format, with their keys, unit conversions, aggregates and configuration message.
//!
//! It resolves points by `device.point` and fixes each group's configuration id; it must not
//! aggregate or render (the mappings do, at run time).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use super::devices::Devices;
use super::{Ctx, check_topic, qos};
use crate::config::raw::*;
use crate::config::yaml::Located;
use crate::mappings::DataType;
use crate::model::*;

/// The `groups` section, in order.
pub(super) fn compile(ctx: &mut Ctx, raw: &[Located<RawGroup>], devs: &Devices) -> Vec<Group> {
    raw.iter()
        .enumerate()
        .map(|(gi, g)| group(ctx, devs, gi, g))
        .collect()
}

/// One group: its source, interval, topics, qos and values, and its configuration message.
fn group(ctx: &mut Ctx, devs: &Devices, gi: usize, g: &Located<RawGroup>) -> Group {
    let gpath = format!(
        "groups[{}]",
        if g.source.is_empty() {
            gi.to_string()
        } else {
            g.source.value.clone()
        }
    );
    if g.source.is_empty()
        || g.source.contains(['"', '\\'])
        || g.source.chars().any(char::is_control)
    {
        ctx.err(
            &g.source,
            format!("{gpath}.source"),
            "source must be a non-empty id without quotes or control characters",
        );
    }
    let interval = g.interval.value.0;
    if interval < Duration::from_secs(1) || interval > Duration::from_secs(86_400) {
        ctx.err(
            &g.interval,
            format!("{gpath}.interval"),
            "interval must be between 1s and 1d",
        );
    }
    let format = match g.format {
        RawGroupFormat::Simple => GroupFormat::Simple,
        RawGroupFormat::Detailed => GroupFormat::Detailed,
        RawGroupFormat::PerPoint => GroupFormat::PerPoint,
    };
    let (topic, configuration_topic) = topics(ctx, g, &gpath, format);
    if let Some(ct) = &configuration_topic {
        ctx.note_topic(ct, (g.line, g.col), &format!("{gpath}.configuration_topic"));
    }
    let q = qos(ctx, g.qos, g.line, g.col, &gpath);
    let cq = qos(
        ctx,
        g.configuration_qos,
        g.line,
        g.col,
        &format!("{gpath}.configuration"),
    );
    if g.values.is_empty() {
        ctx.err(
            g,
            format!("{gpath}.values"),
            "a group needs at least one value",
        );
    }
    let (values, config_values, group_devices) = values(ctx, devs, g, &gpath);
    let configuration = serde_json::json!({
        "class": g.class,
        "devicetype": g.device_type,
        "label": g.label,
        "sources": null,
        "meta": g.meta,
        "values": config_values,
    });
    let id = crate::mappings::group::configuration_id(&g.source, &configuration);
    match format {
        GroupFormat::PerPoint => {
            for v in &values {
                let t: Arc<str> = Arc::from(format!("{topic}/{}", v.key));
                ctx.note_topic(&t, (g.line, g.col), &format!("{gpath}.values[{}]", v.key));
            }
        }
        _ => ctx.note_topic(&topic, (g.line, g.col), &format!("{gpath}.topic")),
    }
    Group {
        source: Arc::from(g.source.as_str()),
        format,
        interval,
        topic,
        configuration_topic,
        qos: q,
        retain: g.retain,
        configuration_qos: cq,
        configuration,
        id,
        values,
        devices: group_devices,
    }
}

/// The topics the format uses: `topic`, or for the detailed format `measurement_topic` and
/// `configuration_topic`; a topic the format does not use is an error.
fn topics(
    ctx: &mut Ctx,
    g: &Located<RawGroup>,
    gpath: &str,
    format: GroupFormat,
) -> (Arc<str>, Option<Arc<str>>) {
    let need = |ctx: &mut Ctx, t: &Option<Located<String>>, key: &str| -> Option<Arc<str>> {
        match t {
            Some(t) => Some(check_topic(ctx, t, &format!("{gpath}.{key}"))),
            None => {
                ctx.err(
                    g,
                    gpath,
                    format!("format {:?} needs `{key}`", g.format).to_lowercase(),
                );
                None
            }
        }
    };
    let forbid = |ctx: &mut Ctx, t: &Option<Located<String>>, key: &str| {
        if let Some(t) = t {
            ctx.err(
                t,
                format!("{gpath}.{key}"),
                format!("`{key}` is not used by this format"),
            );
        }
    };
    let (topic, configuration_topic) = match format {
        GroupFormat::Detailed => {
            forbid(ctx, &g.topic, "topic");
            (
                need(ctx, &g.measurement_topic, "measurement_topic"),
                need(ctx, &g.configuration_topic, "configuration_topic"),
            )
        }
        _ => {
            forbid(ctx, &g.measurement_topic, "measurement_topic");
            forbid(ctx, &g.configuration_topic, "configuration_topic");
            (need(ctx, &g.topic, "topic"), None)
        }
    };
    let topic = topic.unwrap_or_else(|| Arc::from(""));
    (topic, configuration_topic)
}

/// The group's values, their entries in the configuration message, and the devices they read.
fn values(
    ctx: &mut Ctx,
    devs: &Devices,
    g: &Located<RawGroup>,
    gpath: &str,
) -> (
    Vec<GroupValue>,
    serde_json::Map<String, serde_json::Value>,
    Vec<usize>,
) {
    let mut values = Vec::new();
    let mut keys = HashSet::new();
    let mut config_values = serde_json::Map::new();
    let mut group_devices = Vec::new();
    for (vi, v) in g.values.iter().enumerate() {
        let vpath = format!(
            "{gpath}.values[{}]",
            if v.key.is_empty() {
                vi.to_string()
            } else {
                v.key.value.clone()
            }
        );
        check_key(ctx, g, v, &vpath, &mut keys);
        let Some(pid) = devs.resolve(ctx, &v.point, &format!("{vpath}.point")) else {
            continue;
        };
        let p = &devs.points[pid];
        if matches!(p.dtype, DataType::String(_)) {
            ctx.err(
                &v.point,
                format!("{vpath}.point"),
                format!("`{}` is a string; groups aggregate numbers", v.point.value),
            );
        }
        if !group_devices.contains(&p.device) {
            group_devices.push(p.device);
        }
        let (unit, factor) = unit(ctx, v, p, &vpath);
        let aggregate = match v.aggregate.unwrap_or(match v.kind {
            RawValueKind::Live => RawAggregate::Mean,
            RawValueKind::Counter => RawAggregate::Last,
        }) {
            RawAggregate::Mean => Aggregate::Mean,
            RawAggregate::Last => Aggregate::Last,
            RawAggregate::Min => Aggregate::Min,
            RawAggregate::Max => Aggregate::Max,
            RawAggregate::Sum => Aggregate::Sum,
        };
        config_values.insert(
            v.key.value.clone(),
            serde_json::json!({
                "obis_code": v.obis_code.as_ref().map(|o| o.value.clone()),
                "unit": unit.as_deref(),
            }),
        );
        values.push(GroupValue {
            key: Arc::from(v.key.as_str()),
            point: pid,
            aggregate,
            factor,
            unit,
            decimals: v.decimals.unwrap_or(3),
        });
    }
    (values, config_values, group_devices)
}

/// The value's key (unique, and a valid JSON key or topic level for the format) and its OBIS code.
fn check_key(
    ctx: &mut Ctx,
    g: &Located<RawGroup>,
    v: &Located<RawGroupValue>,
    vpath: &str,
    keys: &mut HashSet<String>,
) {
    let reserved = matches!(g.format, RawGroupFormat::Simple)
        && matches!(v.key.as_str(), "status" | "timestamp");
    if v.key.is_empty() || v.key.chars().any(char::is_control) || reserved {
        ctx.err(&v.key, format!("{vpath}.key"), "key must be non-empty, without control characters, and in the simple format not `status` or `timestamp`");
    } else if g.format == RawGroupFormat::PerPoint && v.key.contains(['/', '+', '#']) {
        ctx.err(
            &v.key,
            format!("{vpath}.key"),
            "in the per_point format the key is a topic level: no / + #",
        );
    }
    if !keys.insert(v.key.value.clone()) {
        ctx.err(
            &v.key,
            format!("{vpath}.key"),
            format!("duplicate key `{}` in group", v.key.value),
        );
    }
    if let Some(o) = &v.obis_code
        && !is_obis(o)
    {
        ctx.err(
            o,
            format!("{vpath}.obis_code"),
            format!("`{}` is not an OBIS code A-B:C.D.E*F", o.value),
        );
    }
}

/// The unit the value is sent in and the factor from the point's unit to it.
fn unit(
    ctx: &mut Ctx,
    v: &Located<RawGroupValue>,
    p: &Point,
    vpath: &str,
) -> (Option<Arc<str>>, f64) {
    match (&v.unit, &p.unit) {
        (Some(to), Some(from)) => match crate::mappings::group::unit_factor(from, to) {
            Some(f) => (Some(Arc::from(to.as_str())), f),
            None => {
                ctx.err(
                    to,
                    format!("{vpath}.unit"),
                    format!("cannot convert the point's unit `{from}` to `{}`", to.value),
                );
                (Some(Arc::from(to.as_str())), 1.0)
            }
        },
        (Some(to), None) => {
            ctx.err(
                to,
                format!("{vpath}.unit"),
                format!(
                    "point `{}` has no unit to convert from; set `unit` on the point",
                    v.point.value
                ),
            );
            (Some(Arc::from(to.as_str())), 1.0)
        }
        (None, from) => (from.clone(), 1.0),
    }
}

/// `A-B:C.D.E*F` with decimal fields (the `*F` part optional), e.g. `1-0:52.4.0*255`.
fn is_obis(s: &str) -> bool {
    let num = |x: &str| {
        !x.is_empty()
            && x.len() <= 3
            && x.bytes().all(|b| b.is_ascii_digit())
            && x.parse::<u16>().is_ok_and(|n| n <= 255)
    };
    let (main, f) = s.split_once('*').map_or((s, None), |(m, f)| (m, Some(f)));
    let Some((ab, cde)) = main.split_once(':') else {
        return false;
    };
    let Some((a, b)) = ab.split_once('-') else {
        return false;
    };
    let parts: Vec<&str> = cde.split('.').collect();
    num(a) && num(b) && parts.len() == 3 && parts.iter().all(|p| num(p)) && f.is_none_or(num)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn obis_codes() {
        assert!(is_obis("1-0:52.4.0*255"));
        assert!(is_obis("1-0:1.8.0"));
        assert!(!is_obis("1-0:52.4*255"));
        assert!(!is_obis("1:52.4.0*255"));
        assert!(!is_obis("1-0:52.4.x*255"));
        assert!(!is_obis("1-0:52.4.0*256"));
    }
}
