//! The `groups` section: grouped messages, one per source per interval, in the simple, detailed
//! or per-point format, with their keys, unit conversions, aggregates and configuration message.
//!
//! It resolves points by `device.point` and fixes each group's configuration id; it must not
//! aggregate or render (the mappings do, at run time).

use std::collections::{HashMap, HashSet};
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
    let groups: Vec<Group> = raw
        .iter()
        .enumerate()
        .map(|(gi, g)| group(ctx, devs, gi, g))
        .collect();
    shared_topics(ctx, raw, &groups);
    sources(ctx, raw);
    groups
}

/// Several groups may share a topic: their sources are merged into one message per interval
/// (simple and detailed formats; a detailed `configuration_topic` is one retained message
/// holding every source). Sharers must agree on format, interval, QoS and retain, and each
/// source appears once per topic. Notes every topic as published once.
fn shared_topics(ctx: &mut Ctx, raw: &[Located<RawGroup>], groups: &[Group]) {
    let mut first: HashMap<Arc<str>, usize> = HashMap::new();
    let mut first_conf: HashMap<Arc<str>, usize> = HashMap::new();
    for (gi, (g, r)) in groups.iter().zip(raw).enumerate() {
        let gpath = format!("groups[{}]", g.source);
        let at = (r.line, r.col);
        match g.format {
            GroupFormat::PerPoint => {
                for v in &g.values {
                    let t: Arc<str> = Arc::from(format!("{}/{}", g.topic, v.key));
                    ctx.note_topic(&t, at, &format!("{gpath}.values[{}]", v.key));
                }
            }
            _ if g.topic.is_empty() => {}
            _ => match first.get(&g.topic) {
                None => {
                    first.insert(g.topic.clone(), gi);
                    let key = if g.format == GroupFormat::Detailed {
                        "measurement_topic"
                    } else {
                        "topic"
                    };
                    ctx.note_topic(&g.topic, at, &format!("{gpath}.{key}"));
                }
                Some(&fi) => {
                    let f = &groups[fi];
                    let key = if g.format == GroupFormat::Detailed {
                        "measurement_topic"
                    } else {
                        "topic"
                    };
                    let differs = [
                        (f.format != g.format, "format"),
                        (f.interval != g.interval, "interval"),
                        (f.qos != g.qos, "qos"),
                        (f.retain != g.retain, "retain"),
                        (
                            f.source == g.source,
                            "source (each source once per message)",
                        ),
                    ];
                    for (_, what) in differs.iter().filter(|(d, _)| *d) {
                        ctx.err_at(
                            r.line,
                            r.col,
                            format!("{gpath}.{key}"),
                            format!(
                                "groups sharing topic `{}` are merged into one message and must differ in source and agree on the rest; {what} conflicts with groups[{}]",
                                g.topic, f.source
                            ),
                        );
                    }
                }
            },
        }
        let Some(ct) = &g.configuration_topic else {
            continue;
        };
        match first_conf.get(ct) {
            None => {
                first_conf.insert(ct.clone(), gi);
                ctx.note_topic(ct, at, &format!("{gpath}.configuration_topic"));
            }
            Some(&fi) => {
                let f = &groups[fi];
                let differs = [
                    (
                        f.configuration_qos != g.configuration_qos,
                        "configuration_qos",
                    ),
                    (
                        f.configuration_retain != g.configuration_retain,
                        "configuration_retain",
                    ),
                    (
                        f.source == g.source,
                        "source (each source once per message)",
                    ),
                ];
                for (_, what) in differs.iter().filter(|(d, _)| *d) {
                    ctx.err_at(
                        r.line,
                        r.col,
                        format!("{gpath}.configuration_topic"),
                        format!(
                            "groups sharing configuration topic `{ct}` are one configuration message and must differ in source and agree on the rest; {what} conflicts with groups[{}]",
                            f.source
                        ),
                    );
                }
            }
        }
    }
}

/// `sources`: each listed id is the source of some group, and no source contains itself,
/// directly or through others.
fn sources(ctx: &mut Ctx, raw: &[Located<RawGroup>]) {
    let known: HashSet<&str> = raw.iter().map(|g| g.source.as_str()).collect();
    // source -> the sources it is made of (a source may have several groups: union).
    let mut made_of: HashMap<&str, Vec<&str>> = HashMap::new();
    for g in raw {
        let gpath = format!("groups[{}]", g.source.value);
        for (i, s) in g.sources.iter().flatten().enumerate() {
            if !known.contains(s.as_str()) {
                ctx.err(
                    s,
                    format!("{gpath}.sources[{i}]"),
                    format!("`{}` is not the source of any group", s.value),
                );
            } else {
                made_of
                    .entry(g.source.as_str())
                    .or_default()
                    .push(s.as_str());
            }
        }
    }
    let mut reported = HashSet::new();
    for g in raw {
        if reported.contains(g.source.as_str()) {
            continue;
        }
        if let Some(cycle) = find_cycle(&made_of, g.source.as_str()) {
            reported.extend(cycle.iter().copied());
            ctx.err(
                g,
                format!("groups[{}].sources", g.source.value),
                format!("sources form a cycle: {}", cycle.join(" -> ")),
            );
        }
    }
}

/// A path from `start` back to itself through `made_of`, if there is one.
fn find_cycle<'a>(
    made_of: &HashMap<&'a str, Vec<&'a str>>,
    start: &'a str,
) -> Option<Vec<&'a str>> {
    // Depth-first, each node expanded once: the graph is as small as the file.
    let mut seen = HashSet::new();
    let mut stack: Vec<(Vec<&'a str>, &'a str)> = vec![(vec![start], start)];
    while let Some((path, at)) = stack.pop() {
        for &next in made_of.get(at).into_iter().flatten() {
            if next == start {
                let mut p = path.clone();
                p.push(start);
                return Some(p);
            }
            if seen.insert(next) {
                let mut p = path.clone();
                p.push(next);
                stack.push((p, next));
            }
        }
    }
    None
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
    if format != GroupFormat::Detailed && !g.configuration_retain {
        ctx.err(
            g,
            format!("{gpath}.configuration_retain"),
            "`configuration_retain` is used by the detailed format only",
        );
    }
    let class = named(
        ctx,
        g.class.as_ref(),
        GROUP_CLASSES,
        &format!("{gpath}.class"),
    );
    let device_type = named(
        ctx,
        g.device_type.as_ref(),
        GROUP_DEVICE_TYPES,
        &format!("{gpath}.device_type"),
    );
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
    let sources = g
        .sources
        .as_ref()
        .map(|l| l.iter().map(|s| s.value.clone()).collect::<Vec<_>>());
    let configuration = serde_json::json!({
        "class": class,
        "devicetype": device_type,
        "label": g.label,
        "sources": sources,
        "meta": g.meta,
        "values": config_values,
    });
    let id = crate::mappings::group::configuration_id(&g.source, &configuration);
    Group {
        source: Arc::from(g.source.as_str()),
        format,
        interval,
        topic,
        configuration_topic,
        qos: q,
        retain: g.retain,
        configuration_qos: cq,
        configuration_retain: g.configuration_retain,
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
    if let Some(o) = &v.obis_code {
        match obis(o) {
            Err(e) => ctx.err(o, format!("{vpath}.obis_code"), e),
            Ok(code) => {
                if let Some(w) = code.unusual() {
                    ctx.warn(o, format!("{vpath}.obis_code"), w);
                }
            }
        }
    }
}

/// A class or device type: one of the specification's `names`, or free text with a note.
fn named(ctx: &mut Ctx, v: Option<&Located<String>>, names: &[&str], path: &str) -> Option<String> {
    let v = v?;
    if !names.contains(&v.as_str()) {
        ctx.warn(
            v,
            path,
            format!(
                "`{}` is free text, not one of the energy manager's names ({})",
                v.value,
                names.join(", ")
            ),
        );
    }
    Some(v.value.clone())
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

/// An OBIS code (IEC 62056-61): `A-B:C.D.E*F`, six decimal fields 0-255.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Obis {
    pub a: u8,
    pub b: u8,
    pub c: u8,
    pub d: u8,
    pub e: u8,
    pub f: u8,
}

impl Obis {
    /// The energy manager fixes A = 1 (electricity) and F = 255: anything else is allowed but
    /// probably a mistake.
    fn unusual(self) -> Option<String> {
        match (self.a, self.f) {
            (1, 255) => None,
            (a, 255) => Some(format!(
                "OBIS medium A = {a}: the energy manager expects 1 (electricity)"
            )),
            (1, f) => Some(format!("OBIS F = {f}: the energy manager expects 255")),
            (a, f) => Some(format!(
                "OBIS A = {a} and F = {f}: the energy manager expects 1 and 255"
            )),
        }
    }
}

/// Parses `A-B:C.D.E*F` strictly: every part present (`*F` too), decimal, 0-255.
pub(crate) fn obis(s: &str) -> Result<Obis, String> {
    let bad =
        |why: &str| format!("`{s}` is not an OBIS code A-B:C.D.E*F (e.g. 1-0:1.8.0*255): {why}");
    let num = |x: &str, name: &str| -> Result<u8, String> {
        if x.is_empty() || x.len() > 3 || !x.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad(&format!("{name} must be a number 0-255")));
        }
        x.parse::<u8>()
            .map_err(|_| bad(&format!("{name} = {x} is out of range 0-255")))
    };
    let (main, f) = s.split_once('*').ok_or_else(|| bad("`*F` is missing"))?;
    let (ab, cde) = main.split_once(':').ok_or_else(|| bad("`:` is missing"))?;
    let (a, b) = ab.split_once('-').ok_or_else(|| bad("`-` is missing"))?;
    let parts: Vec<&str> = cde.split('.').collect();
    let [c, d, e] = parts[..] else {
        return Err(bad("C.D.E needs three parts"));
    };
    Ok(Obis {
        a: num(a, "A")?,
        b: num(b, "B")?,
        c: num(c, "C")?,
        d: num(d, "D")?,
        e: num(e, "E")?,
        f: num(f, "F")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn obis_codes() {
        // (code, parses, warns)
        let table: &[(&str, bool, bool)] = &[
            ("1-0:52.4.0*255", true, false),
            ("1-0:41.8.0*255", true, false),
            ("1-1:0.0.0*255", true, false),
            ("0-0:96.1.0*255", true, true),
            ("1-0:1.8.0*1", true, true),
            ("1-0:1.8.0", false, false),
            ("1-0:52.4*255", false, false),
            ("1-0:52.4.0.1*255", false, false),
            ("1:52.4.0*255", false, false),
            ("1-0:52.4.x*255", false, false),
            ("1-0:52.4.0*256", false, false),
            ("1-0:256.4.0*255", false, false),
            ("1-0:52.4.0*", false, false),
            ("-0:52.4.0*255", false, false),
            ("1-0:52.4.0*+25", false, false),
            ("1-0:0052.4.0*255", false, false),
            ("", false, false),
        ];
        for &(code, ok, warns) in table {
            let r = obis(code);
            assert_eq!(r.is_ok(), ok, "{code}: {r:?}");
            if let Ok(o) = r {
                assert_eq!(o.unusual().is_some(), warns, "{code}");
            } else {
                assert!(r.unwrap_err().contains(code));
            }
        }
        assert_eq!(
            obis("1-0:41.4.0*255"),
            Ok(Obis {
                a: 1,
                b: 0,
                c: 41,
                d: 4,
                e: 0,
                f: 255
            })
        );
    }
}
