//! The `check` summary: what a valid mapping file will do, without touching the network.
//!
//! One function per part of the summary (mqtt and security, links, devices, derived values,
//! groups, publishes and subscriptions), each appending its lines. It must not open a socket or
//! a serial port, and it must not print secrets: only where they come from.

use std::fmt::Write;

use crate::mappings::bustime;
use crate::mappings::command::format_number;
use crate::model::{
    Aggregate, CommandAction, Device, Format, Group, GroupFormat, GroupValue, Link, LinkSpec,
    Model, Point, PublishMode, PublishRule, SerialSpec,
};

fn rule(r: &PublishRule) -> String {
    let mode = match r.mode {
        PublishMode::Interval => format!("every {}", humantime::format_duration(r.interval)),
        PublishMode::OnChange => match r.max_silence {
            Some(s) => format!(
                "on change > {}, max silence {}",
                r.deadband,
                humantime::format_duration(s)
            ),
            None => format!("on change > {}", r.deadband),
        },
        PublishMode::Both => format!(
            "on change > {} or every {}",
            r.deadband,
            humantime::format_duration(r.interval)
        ),
    };
    let fmt = match r.format {
        Format::Plain => "plain",
        Format::Json => "json",
    };
    format!(
        "{} (qos {}{}, {fmt}, {mode})",
        r.topic,
        r.qos.level(),
        if r.retain { ", retained" } else { "" }
    )
}

/// TLS, credentials and payload encryption: where each comes from, never a secret.
fn security(s: &mut String, m: &Model) {
    use crate::model::PasswordSource;
    use crate::outputs::tls::{TlsVersion, Trust};
    match &m.mqtt.tls {
        None => {
            let _ = writeln!(s, "  tls: off (plain TCP)");
        }
        Some(t) => {
            let trust = match &t.trust {
                Trust::System => "the system CA store".to_owned(),
                Trust::CaFile(p) => format!("ca_file {}", p.display()),
                Trust::Pins(p) => format!("{} pinned certificate(s)", p.len()),
            };
            let _ = writeln!(
                s,
                "  tls: min {}, trust {trust}{}{}",
                match t.min_version {
                    TlsVersion::V1_2 => "1.2",
                    TlsVersion::V1_3 => "1.3",
                },
                t.client
                    .as_ref()
                    .map(|(c, _)| format!(", client certificate {}", c.display()))
                    .unwrap_or_default(),
                t.server_name
                    .as_ref()
                    .map(|n| format!(", server name {n}"))
                    .unwrap_or_default(),
            );
            if matches!(&t.trust, Trust::Pins(p) if p.is_empty()) {
                let _ = writeln!(
                    s,
                    "    warning: no pin yet: every connection will be refused; run `fieldgate tls inspect -c FILE --pin` to accept the broker's certificate"
                );
            }
        }
    }
    if let Some(c) = &m.mqtt.credentials {
        let from = match &c.source {
            PasswordSource::None => "no password".to_owned(),
            PasswordSource::File(p) => format!("password from file {}", p.display()),
            PasswordSource::Env(v) => format!("password from ${v}"),
            PasswordSource::Inline => "password inline in the mapping".to_owned(),
        };
        let _ = writeln!(s, "  user: {}, {from}", c.username);
        if c.source == PasswordSource::Inline {
            let _ = writeln!(
                s,
                "    WARNING: the broker password is written in the mapping file: anyone who can read the file can read it. Move it to password_file (mode 600) or password_env."
            );
        }
    }
    if let Some(e) = &m.mqtt.encryption {
        let _ = writeln!(
            s,
            "  payload encryption: AES-256-GCM, key file {}, topics {}",
            e.key_file.display(),
            e.topics.join(", ")
        );
    }
}

/// The warnings of a valid mapping, one per line as errors are written
/// (`file:line:col: key.path: warning: ...`), then `N warning(s)`; empty when there are none.
pub fn warnings(path: &std::path::Path, m: &Model) -> String {
    let mut s = String::new();
    for w in &m.warnings {
        let file = w.file.as_deref().unwrap_or(path);
        let _ = write!(s, "{}:{}:{}: ", file.display(), w.line, w.col);
        if !w.path.is_empty() {
            let _ = write!(s, "{}: ", w.path);
        }
        let _ = writeln!(s, "warning: {}", w.message);
    }
    if !m.warnings.is_empty() {
        let _ = writeln!(s, "{} warning(s)", m.warnings.len());
    }
    s
}

/// Render the summary printed by `fieldgate check`.
pub fn summary(m: &Model) -> String {
    let mut s = String::new();
    mqtt(&mut s, m);
    s.push_str(&library(m));
    links(&mut s, m);
    devices(&mut s, m);
    derived(&mut s, m);
    groups(&mut s, m);
    homeassistant(&mut s, m);
    sparkplug(&mut s, m);
    web(&mut s, m);
    publishes(&mut s, m);
    s
}

/// Home Assistant discovery: where it goes, and each device's entities by platform.
fn homeassistant(s: &mut String, m: &Model) {
    use crate::northbound::homeassistant::{discovery_topic, entities};
    let Some(h) = &m.homeassistant else { return };
    let _ = writeln!(
        s,
        "homeassistant: node {}, states on {}/<device>/<name>, watches {}/status",
        h.node_id, h.state_topic, h.discovery_prefix
    );
    let _ = writeln!(
        s,
        "  {}/device/{}/config: the gateway",
        h.discovery_prefix, h.node_id
    );
    for d in 0..m.devices.len() {
        let mut by: Vec<(&str, Vec<String>)> = Vec::new();
        for (key, platform) in entities(m, d) {
            match by.iter_mut().find(|(p, _)| *p == platform) {
                Some((_, keys)) => keys.push(key),
                None => by.push((platform, vec![key])),
            }
        }
        let list: Vec<String> = by
            .iter()
            .map(|(p, keys)| format!("{p} {}", keys.join(" ")))
            .collect();
        let _ = writeln!(s, "  {}: {}", discovery_topic(h, m, d), list.join("; "));
    }
}

/// The web console: where it listens, who may use it (names and roles, never a secret), and
/// whether it may write.
fn web(s: &mut String, m: &Model) {
    use crate::model::{WebRole, WebSecret};
    let Some(w) = &m.web else { return };
    // Port 0 is no address one could open: say what it means.
    let at = if w.listen.port() == 0 {
        format!(
            "{} on a free port (chosen at start and logged)",
            w.listen.ip()
        )
    } else {
        w.listen.to_string()
    };
    let _ = writeln!(
        s,
        "web console: {}://{}, {}, trends {} samples per value",
        if w.tls.is_some() { "https" } else { "http" },
        at,
        if w.allow_writes {
            "writes allowed (role operate)"
        } else {
            "read-only"
        },
        w.trend_samples
    );
    match &w.users_file {
        None => {
            let _ = writeln!(
                s,
                "  no users: open to anyone who can reach {} (loopback only)",
                w.listen
            );
        }
        Some(f) => {
            let _ = writeln!(s, "  users from {}:", f.display());
            for u in &w.users {
                let _ = writeln!(
                    s,
                    "    {} {} ({})",
                    match u.secret {
                        WebSecret::Password(_) => "user",
                        WebSecret::Token(_) => "token",
                    },
                    u.name,
                    match u.role {
                        WebRole::View => "view",
                        WebRole::Operate => "operate",
                    }
                );
            }
        }
    }
}

/// The Sparkplug B edge node: its topics, and each DBIRTH's metrics (alias, name, datatype,
/// source).
fn sparkplug(s: &mut String, m: &Model) {
    let Some(spb) = &m.sparkplug else { return };
    let _ = writeln!(
        s,
        "sparkplug: group {}, edge node {}, primary host {}",
        spb.group_id,
        spb.edge_node_id,
        spb.primary_host_id.as_deref().unwrap_or("none")
    );
    let _ = writeln!(
        s,
        "  bdSeq kept in {}",
        spb.state_dir.join(crate::outputs::bdseq::FILE).display()
    );
    let _ = writeln!(
        s,
        "  publishes {} (will, QoS 1), {}, and per device DBIRTH, DDATA, DDEATH (QoS 0)",
        spb.node_topic("NDEATH"),
        spb.node_topic("NBIRTH")
    );
    let _ = writeln!(
        s,
        "  subscribes {}, {}{}",
        spb.node_topic("NCMD"),
        spb.device_topic("DCMD", "+"),
        spb.state_topic()
            .map(|t| format!(", {t}"))
            .unwrap_or_default()
    );
    for d in &spb.devices {
        let _ = writeln!(
            s,
            "  {}: {} metric(s)",
            spb.device_topic("DBIRTH", &d.device_id),
            d.metrics.len()
        );
        for metric in &d.metrics {
            let (source, writable) = match metric.source {
                crate::model::MetricSource::Point(p) => (
                    m.points[p].full_name.to_string(),
                    m.points[p]
                        .write
                        .map(|w| format!(", writable {}..={}", w.min, w.max))
                        .unwrap_or_default(),
                ),
                crate::model::MetricSource::Derived(i) => {
                    (format!("derived {}", m.derived[i].name), String::new())
                }
            };
            let _ = writeln!(
                s,
                "    alias {:>3} {} {} <- {source}{writable}",
                metric.alias,
                metric.name,
                metric.datatype.name()
            );
        }
    }
}

/// The broker, the session and its security.
fn mqtt(s: &mut String, m: &Model) {
    let _ = writeln!(
        s,
        "mqtt: {} client_id {} status {}",
        m.mqtt.broker_names().join(", then "),
        m.mqtt.client_id,
        m.mqtt.status_topic
    );
    let _ = writeln!(
        s,
        "configuration id: {} (in {}/info, with the host name {})",
        m.identity.config_id, m.mqtt.status_topic, m.identity.hostname
    );
    security(s, m);
}

/// Each link with its quirks and, for a serial bus, its timing and load.
fn links(s: &mut String, m: &Model) {
    let _ = writeln!(s, "links: {}", m.links.len());
    for l in &m.links {
        let _ = writeln!(s, "  {}: {}, {} device(s)", l.name, l.spec, l.devices.len());
        let mut quirks = Vec::new();
        if l.tid == crate::model::TidPolicy::Lenient {
            quirks.push("transaction_id lenient (accepts id 0 and byte-swapped ids)".to_owned());
        }
        if l.echo {
            quirks.push("echo: each request's echo is removed before the reply".to_owned());
        }
        if !l.connect_delay.is_zero() {
            quirks.push(format!(
                "connect_delay {}: no request that soon after a connect",
                humantime::format_duration(l.connect_delay)
            ));
        }
        if !quirks.is_empty() {
            let _ = writeln!(s, "    {}", quirks.join("; "));
        }
        if let LinkSpec::Rtu(serial) = &l.spec {
            bus_time(s, m, l, serial);
        }
    }
}

/// A serial bus's character and gap times, and the bus time each device's poll cycle needs.
fn bus_time(s: &mut String, m: &Model, l: &Link, serial: &SerialSpec) {
    let _ = writeln!(
        s,
        "    timing: character {:.3} ms, frame gap {:.3} ms, turnaround {:.3} ms",
        bustime::char_time(serial).as_secs_f64() * 1e3,
        l.frame_gap.as_secs_f64() * 1e3,
        l.turnaround.as_secs_f64() * 1e3
    );
    let mut load = 0.0;
    for &d in &l.devices {
        let dev = &m.devices[d];
        let e = bustime::estimate(&dev.plan.requests, serial, l.frame_gap, l.turnaround);
        let share = e.time.as_secs_f64() / dev.poll_interval.as_secs_f64();
        load += share;
        let _ = writeln!(
            s,
            "    bus time per poll cycle: {} (unit {}) {} requests, {} B out, {} B in, {:.1} ms every {} ({:.1} %)",
            dev.name,
            dev.unit,
            e.requests,
            e.bytes_out,
            e.bytes_in,
            e.time.as_secs_f64() * 1e3,
            humantime::format_duration(dev.poll_interval),
            share * 100.0
        );
        if e.time > dev.poll_interval {
            let _ = writeln!(
                s,
                "    warning: {}'s poll cycle needs {:.1} ms of bus time but its poll_interval is {}",
                dev.name,
                e.time.as_secs_f64() * 1e3,
                humantime::format_duration(dev.poll_interval)
            );
        }
    }
    let _ = writeln!(
        s,
        "    bus utilisation: {:.1} % (without retries and writes)",
        load * 100.0
    );
    if load > 1.0 {
        let _ = writeln!(
            s,
            "    warning: the bus is over-subscribed; polls will run late (raise poll intervals or the baud rate)"
        );
    }
}

/// Each device with its quirks, its points and its read plan.
fn devices(s: &mut String, m: &Model) {
    let _ = writeln!(s, "devices: {}", m.devices.len());
    for d in &m.devices {
        if let LinkSpec::S7(s7) = &m.links[d.link].spec {
            s7_device(s, m, d, s7);
            continue;
        }
        let _ = writeln!(
            s,
            "  {}: {} unit {}, poll every {}, timeout {}, {} points, status {}",
            d.name,
            m.links[d.link].name,
            d.unit,
            humantime::format_duration(d.poll_interval),
            humantime::format_duration(d.timeout),
            d.points.len(),
            d.status_topic
        );
        let quirks = device_quirks(m, d);
        if !quirks.is_empty() {
            let _ = writeln!(s, "    {}", quirks.join("; "));
        }
        for &pid in &d.points {
            let _ = writeln!(s, "{}", point_line(&m.points[pid]));
        }
        let _ = writeln!(
            s,
            "    read plan: {} requests per cycle",
            d.plan.requests.len()
        );
        for r in &d.plan.requests {
            let _ = writeln!(
                s,
                "      FC{:02} unit {} start {} count {} ({})",
                r.kind.read_function(),
                d.unit,
                r.start,
                r.count,
                r.kind.name()
            );
        }
        // The pause before each request alone sets a floor under the cycle.
        let floor = d.request_delay * u32::try_from(d.plan.requests.len()).unwrap_or(u32::MAX);
        if !d.request_delay.is_zero() && floor > d.poll_interval {
            let _ = writeln!(
                s,
                "    warning: {}'s request_delay makes each poll cycle at least {} ({} requests) but its poll_interval is {}; it will poll about every {}",
                d.name,
                humantime::format_duration(floor),
                d.plan.requests.len(),
                humantime::format_duration(d.poll_interval),
                humantime::format_duration(floor)
            );
        }
    }
}

/// What a device does differently from the defaults: request limits, delay, write function.
fn device_quirks(m: &Model, d: &Device) -> Vec<String> {
    let mut quirks = Vec::new();
    if d.max_registers < 125 {
        quirks.push(format!("max_registers {}", d.max_registers));
    }
    if d.max_bits < 2000 {
        quirks.push(format!("max_bits {}", d.max_bits));
    }
    if !d.request_delay.is_zero() {
        quirks.push(format!(
            "request_delay {}",
            humantime::format_duration(d.request_delay)
        ));
    }
    let writes = d.points.iter().any(|&p| m.points[p].write.is_some());
    if writes {
        quirks.push(
            match d.write_function {
                crate::model::WriteFunction::Auto => {
                    "writes one coil/register with FC 5/6, FC 15/16 after ILLEGAL FUNCTION"
                }
                crate::model::WriteFunction::Single => "writes one coil/register with FC 5/6",
                crate::model::WriteFunction::Multiple => "writes one coil/register with FC 15/16",
            }
            .to_owned(),
        );
    }
    quirks
}

/// One point: where it is, its type and scaling, limits, no-value codes and publish rule.
fn point_line(p: &Point) -> String {
    let mut line = format!(
        "    {} {} {} {:?}",
        p.name,
        p.kind.name(),
        p.address,
        p.dtype
    );
    if p.dtype.width() > 1 {
        let _ = write!(line, " {:?}", p.order);
    }
    if !p.is_unscaled() {
        let _ = write!(line, " x{} {:+}", p.scale, p.offset);
    }
    if let Some(u) = &p.unit {
        let _ = write!(line, " [{u}]");
    }
    if let Some(w) = p.write {
        let _ = write!(
            line,
            " writable {}..={}",
            format_number(w.min),
            format_number(w.max)
        );
    }
    if !p.no_value.is_empty() {
        let digits = usize::from(p.dtype.width()) * 4;
        let codes: Vec<String> = p
            .no_value
            .iter()
            .map(|c| format!("0x{c:0digits$X}"))
            .collect();
        let _ = write!(line, " no value {}", codes.join(", "));
    }
    if let Some(r) = &p.publish {
        let _ = write!(line, " -> {}", rule(r));
    }
    line
}

/// The derived values and what they read.
fn derived(s: &mut String, m: &Model) {
    if !m.derived.is_empty() {
        let _ = writeln!(s, "derived: {}", m.derived.len());
        for d in &m.derived {
            let src: Vec<&str> = d
                .pack_bits
                .iter()
                .map(|&p| m.points[p].full_name.as_ref())
                .collect();
            let _ = writeln!(
                s,
                "  {} = bits [{}] -> {}",
                d.name,
                src.join(", "),
                rule(&d.publish)
            );
        }
    }
}

/// The groups: format, interval, topics and each value with its aggregate.
fn groups(s: &mut String, m: &Model) {
    if !m.groups.is_empty() {
        let _ = writeln!(s, "groups: {}", m.groups.len());
        for g in &m.groups {
            group(s, m, g);
        }
    }
}

/// One group.
fn group(s: &mut String, m: &Model, g: &Group) {
    let fmt = match g.format {
        GroupFormat::Simple => "simple",
        GroupFormat::Detailed => "detailed",
        GroupFormat::PerPoint => "per_point",
    };
    let _ = writeln!(
        s,
        "  {} ({fmt}, every {}, id {})",
        g.source,
        humantime::format_duration(g.interval),
        g.id
    );
    if let Some(c) = &g.configuration_topic {
        let _ = writeln!(
            s,
            "    configuration -> {c} (qos {}{})",
            g.configuration_qos.level(),
            if g.configuration_retain {
                ", retained"
            } else {
                ", not retained"
            }
        );
    }
    let suffix = if g.format == GroupFormat::PerPoint {
        "/<key>"
    } else {
        ""
    };
    // Groups sharing the topic are merged into one message per interval.
    let shared: Vec<&str> = m
        .groups
        .iter()
        .filter(|o| {
            g.format != GroupFormat::PerPoint
                && o.format == g.format
                && o.topic == g.topic
                && o.source != g.source
        })
        .map(|o| o.source.as_ref())
        .collect();
    let _ = writeln!(
        s,
        "    messages -> {}{suffix} (qos {}{}{})",
        g.topic,
        g.qos.level(),
        if g.retain { ", retained" } else { "" },
        if shared.is_empty() {
            String::new()
        } else {
            format!(", one message with {}", shared.join(", "))
        }
    );
    if let Some(list) = g.configuration["sources"].as_array() {
        let names: Vec<&str> = list.iter().filter_map(|v| v.as_str()).collect();
        let _ = writeln!(s, "    sources: {}", names.join(", "));
    }
    for v in &g.values {
        let _ = writeln!(s, "{}", group_value_line(m, g, v));
    }
}

/// One value of a group: key, aggregate, source point, conversion and OBIS code.
fn group_value_line(m: &Model, g: &Group, v: &GroupValue) -> String {
    let agg = match v.aggregate {
        Aggregate::Mean => "mean",
        Aggregate::Last => "last",
        Aggregate::Min => "min",
        Aggregate::Max => "max",
        Aggregate::Sum => "sum",
    };
    let mut line = format!("    {} = {agg}({})", v.key, m.points[v.point].full_name);
    if v.factor != 1.0 {
        let _ = write!(line, " x{}", v.factor);
    }
    if let Some(u) = &v.unit {
        let _ = write!(line, " [{u}]");
    }
    let obis = g.configuration["values"][v.key.as_ref()]["obis_code"]
        .as_str()
        .unwrap_or("");
    if !obis.is_empty() {
        let _ = write!(line, " obis {obis}");
    }
    line
}

/// Every topic published, then the subscriptions and what each command does.
fn publishes(s: &mut String, m: &Model) {
    let topics = m.publish_topics();
    let _ = writeln!(s, "publishes: {} topics", topics.len());
    for t in &topics {
        let _ = writeln!(s, "  {t}");
    }
    let _ = writeln!(s, "subscribes: {} topics", m.subscriptions().len());
    for c in &m.commands {
        let what = match &c.action {
            CommandAction::Table(t) => {
                let mut keys: Vec<String> = t
                    .iter()
                    .map(|(k, w)| {
                        let ws: Vec<String> = w
                            .iter()
                            .map(|(p, v)| format!("{}={v}", m.points[*p].full_name))
                            .collect();
                        format!("{k} => {}", ws.join(", "))
                    })
                    .collect();
                keys.sort();
                keys.join("; ")
            }
            CommandAction::Value(p) => format!("value => {}", m.points[*p].full_name),
        };
        let _ = writeln!(
            s,
            "  {} (qos {}): {what}; ack on {}",
            c.topic,
            c.qos.level(),
            c.ack_topic
        );
    }
}

/// What `check --sample` adds: every group message with null values.
pub fn samples(m: &Model) -> String {
    let mut s = String::new();
    for (topic, body) in crate::mappings::group::sample_messages(&m.groups) {
        let _ = writeln!(s, "{topic}\n  {body}");
    }
    s
}

// --- templates and includes (issue 18) ---

/// The included files and the templates, each with the devices made from it; empty when the
/// mapping has neither. Part of the `check` summary.
pub fn library(m: &Model) -> String {
    let mut s = String::new();
    let lib = &m.library;
    if !lib.includes.is_empty() {
        let _ = writeln!(s, "includes: {}", lib.includes.len());
        for f in &lib.includes {
            let _ = writeln!(s, "  {}", f.display());
        }
    }
    if !lib.templates.is_empty() {
        let _ = writeln!(s, "templates: {}", lib.templates.len());
        for t in &lib.templates {
            let used = if t.used_by.is_empty() {
                "unused".to_owned()
            } else {
                format!(
                    "used by {} device(s): {}",
                    t.used_by.len(),
                    t.used_by.join(", ")
                )
            };
            let _ = writeln!(
                s,
                "  {} ({}:{}): {} point(s), {used}",
                t.name,
                t.file.display(),
                t.line,
                t.points
            );
            for (device, dropped, overridden) in
                lib.changes.iter().filter(|c| t.used_by.contains(&c.0))
            {
                let list = |v: &[String]| {
                    if v.is_empty() {
                        "none".to_owned()
                    } else {
                        v.join(", ")
                    }
                };
                let _ = writeln!(
                    s,
                    "    {device}: dropped {}; overridden {}",
                    list(dropped),
                    list(overridden)
                );
            }
        }
    }
    s
}

/// A string as a YAML scalar that reads back as the same string: always quoted.
fn yaml_str(v: &str) -> String {
    // Every string as a JSON string (valid YAML, whatever it holds: `%`, `:`, `#`, quotes), and
    // every `$` as `$$` (the loader reads `$$` as `$`, and `$${` as a literal `${`), so the
    // loader's interpolation gives the text back as it is.
    serde_json::Value::String(v.to_owned())
        .to_string()
        .replace('$', "$$")
}

fn yaml_duration(d: std::time::Duration) -> String {
    humantime::format_duration(d).to_string().replace(' ', "")
}

/// A publish rule in the mapping's words, as a flow map.
fn yaml_publish(r: &PublishRule) -> String {
    let mode = match r.mode {
        PublishMode::Interval => "interval",
        PublishMode::OnChange => "on_change",
        PublishMode::Both => "both",
    };
    let mut out = format!(
        "{{ topic: {}, qos: {}, retain: {}, mode: {mode}",
        yaml_str(&r.topic),
        r.qos.level(),
        r.retain
    );
    if r.mode != PublishMode::OnChange {
        let _ = write!(out, ", interval: {}", yaml_duration(r.interval));
    }
    if r.mode != PublishMode::Interval {
        let _ = write!(out, ", deadband: {}", r.deadband);
        if let Some(ms) = r.max_silence {
            let _ = write!(out, ", max_silence: {}", yaml_duration(ms));
        }
    }
    let fmt = match r.format {
        Format::Plain => "plain",
        Format::Json => "json",
    };
    let _ = write!(out, ", format: {fmt} }}");
    out
}

/// One point in the mapping's words, as a flow map.
fn yaml_point(p: &Point) -> String {
    use crate::vocabulary::DataType;
    let (dtype, extra) = match p.dtype {
        DataType::Bool => ("bool".to_owned(), String::new()),
        DataType::Bit(b) => ("bit".to_owned(), format!(", bit: {b}")),
        DataType::String(n) => ("string".to_owned(), format!(", length: {n}")),
        other => (format!("{other:?}").to_lowercase(), String::new()),
    };
    let mut out = format!(
        "{{ name: {}, kind: {}, address: {}, type: {dtype}{extra}",
        yaml_str(&p.name),
        p.kind.name(),
        p.address
    );
    if p.dtype.width() > 1 {
        let _ = write!(out, ", order: {:?}", p.order);
    }
    let _ = write!(out, ", scale: {}, offset: {}", p.scale, p.offset);
    if let Some(d) = p.decimals {
        let _ = write!(out, ", decimals: {d}");
    }
    if !p.no_value.is_empty() {
        let codes: Vec<String> = p.no_value.iter().map(|c| format!("0x{c:X}")).collect();
        let _ = write!(out, ", no_value: [{}]", codes.join(", "));
    }
    if let Some(u) = &p.unit {
        let _ = write!(out, ", unit: {}", yaml_str(u));
    }
    if let Some(w) = p.write {
        let _ = write!(
            out,
            ", writable: true, min: {}, max: {}",
            format_number(w.min),
            format_number(w.max)
        );
    }
    if let Some(r) = &p.publish {
        let _ = write!(out, ", publish: {}", yaml_publish(r));
    }
    out.push_str(" }");
    out
}

/// What `check --expand` prints: every device with every point, and every derived value and
/// command, templates expanded, written as a mapping's `devices`, `derived` and `commands`
/// sections (with every default spelt out). This is the compiled model, so it is exactly what
/// runs.
pub fn expanded(m: &Model) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# what runs: templates expanded, each device's settings written out but max_gap (the read plan above shows its effect) and device_id; mqtt, buses, s7_devices and the other sections as in the file"
    );
    let _ = writeln!(s, "devices:");
    for d in &m.devices {
        let link = &m.links[d.link];
        // S7 devices have no templates: `s7_devices` runs as written in the file.
        if matches!(link.spec, LinkSpec::S7(_)) {
            continue;
        }
        let _ = writeln!(s, "  - name: {}", yaml_str(&d.name));
        match &link.spec {
            LinkSpec::Tcp { host, port } => {
                let _ = writeln!(s, "    tcp: {{ host: {}, port: {port} }}", yaml_str(host));
            }
            LinkSpec::Rtu(_) | LinkSpec::RtuOverTcp { .. } => {
                let _ = writeln!(s, "    bus: {}", yaml_str(&link.name));
            }
            LinkSpec::S7(_) => {}
        }
        if let Some(t) = m
            .library
            .templates
            .iter()
            .find(|t| t.used_by.iter().any(|u| **u == *d.name))
        {
            let _ = writeln!(
                s,
                "    # from template {} ({}:{})",
                t.name,
                t.file.display(),
                t.line
            );
        }
        if let Some((_, dropped, overridden)) =
            m.library.changes.iter().find(|(n, _, _)| **n == *d.name)
        {
            let list = |v: &[String]| {
                if v.is_empty() {
                    "none".to_owned()
                } else {
                    v.join(", ")
                }
            };
            let _ = writeln!(
                s,
                "    # dropped: {}; overridden: {}",
                list(dropped),
                list(overridden)
            );
        }
        let _ = writeln!(s, "    unit: {}", d.unit);
        let _ = writeln!(s, "    poll_interval: {}", yaml_duration(d.poll_interval));
        let _ = writeln!(s, "    timeout: {}", yaml_duration(d.timeout));
        let _ = writeln!(s, "    request_delay: {}", yaml_duration(d.request_delay));
        let _ = writeln!(
            s,
            "    connect_delay: {}",
            yaml_duration(link.connect_delay)
        );
        let wf = match d.write_function {
            crate::model::WriteFunction::Auto => "auto",
            crate::model::WriteFunction::Single => "single",
            crate::model::WriteFunction::Multiple => "multiple",
        };
        let _ = writeln!(s, "    write_function: {wf}");
        let _ = writeln!(s, "    max_registers: {}", d.max_registers);
        let _ = writeln!(s, "    max_bits: {}", d.max_bits);
        let _ = writeln!(s, "    status_topic: {}", yaml_str(&d.status_topic));
        let _ = writeln!(s, "    points:");
        for &pid in &d.points {
            let _ = writeln!(s, "      - {}", yaml_point(&m.points[pid]));
        }
    }
    if !m.derived.is_empty() {
        let _ = writeln!(s, "derived:");
        for dv in &m.derived {
            let bits: Vec<String> = dv
                .pack_bits
                .iter()
                .map(|&p| yaml_str(&m.points[p].full_name))
                .collect();
            let _ = writeln!(
                s,
                "  - {{ name: {}, pack_bits: [{}], publish: {} }}",
                yaml_str(&dv.name),
                bits.join(", "),
                yaml_publish(&dv.publish)
            );
        }
    }
    if !m.commands.is_empty() {
        let _ = writeln!(s, "commands:");
        for c in &m.commands {
            let _ = writeln!(
                s,
                "  - topic: {}\n    ack_topic: {}\n    qos: {}",
                yaml_str(&c.topic),
                yaml_str(&c.ack_topic),
                c.qos.level()
            );
            match &c.action {
                CommandAction::Value(p) => {
                    let _ = writeln!(s, "    write: {}", yaml_str(&m.points[*p].full_name));
                }
                CommandAction::Table(table) => {
                    let _ = writeln!(s, "    payloads:");
                    let mut keys: Vec<&String> = table.keys().collect();
                    keys.sort();
                    for k in keys {
                        let writes: Vec<String> = table[k]
                            .iter()
                            .map(|(p, v)| {
                                format!(
                                    "{{ point: {}, value: {} }}",
                                    yaml_str(&m.points[*p].full_name),
                                    format_number(*v)
                                )
                            })
                            .collect();
                        let _ = writeln!(s, "      {}: [{}]", yaml_str(k), writes.join(", "));
                    }
                }
            }
        }
    }
    s
}

/// An S7 device (issue 19): its connection, its points in S7 notation, and its S7 read plan
/// (ReadVar requests and their items).
fn s7_device(s: &mut String, m: &Model, d: &Device, s7: &crate::model::S7Link) {
    let _ = writeln!(
        s,
        "  {}: {} {}, PDU size asked {}, poll every {}, timeout {}, {} points, status {}",
        d.name,
        m.links[d.link].spec,
        s7.endpoint,
        s7.pdu,
        humantime::format_duration(d.poll_interval),
        humantime::format_duration(d.timeout),
        d.points.len(),
        d.status_topic
    );
    for (&pid, (_, address)) in d.points.iter().zip(&s7.points) {
        let p = &m.points[pid];
        let mut line = format!("    {} {address} {}", p.name, address.ty.name());
        if !p.is_unscaled() {
            let _ = write!(line, " x{} {:+}", p.scale, p.offset);
        }
        if let Some(u) = &p.unit {
            let _ = write!(line, " [{u}]");
        }
        if let Some(w) = p.write {
            let _ = write!(
                line,
                " writable {}..={}",
                format_number(w.min),
                format_number(w.max)
            );
        }
        if let Some(r) = &p.publish {
            let _ = write!(line, " -> {}", rule(r));
        }
        let _ = writeln!(s, "{line}");
    }
    let _ = writeln!(
        s,
        "    S7 read plan at PDU {}: {} ReadVar request(s) per cycle (planned again if the CPU grants less)",
        s7.plan.pdu,
        s7.plan.requests.len()
    );
    for r in &s7.plan.requests {
        let items: Vec<String> = r.items.iter().map(ToString::to_string).collect();
        let _ = writeln!(
            s,
            "      ReadVar {} item(s), {} of {} bytes in the reply: {}",
            r.items.len(),
            r.reply_bytes(),
            s7.plan.pdu,
            items.join("; ")
        );
    }
}
