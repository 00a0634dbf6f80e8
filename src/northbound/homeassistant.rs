//! The Home Assistant discovery profile: each fieldgate device appears in Home Assistant with
//! its sensors and controls, through MQTT device-based discovery.
//!
//! Per device one retained `<discovery_prefix>/device/<node_id>_<device>/config` holding
//! `dev` (identifiers, name, manufacturer, model, serial and firmware read from points,
//! `via_device` = the gateway), `o` (origin: fieldgate and its version), the shared
//! `availability` (the gateway's `online`/`offline` and the device status, `availability_mode:
//! all`) and `cmps`, one component per entity. The gateway itself is a device too
//! (`<prefix>/device/<node_id>/config`, a connectivity binary sensor on the status topic), so
//! `via_device` names something Home Assistant knows. The format is Home Assistant's MQTT
//! integration documentation, "Device discovery payload" and the component pages (sensor,
//! binary_sensor, switch, number, button).
//!
//! Entities: a numeric or text point or a derived value is a `sensor` (device class, unit and
//! state class inferred from the unit, see [`classes_for_unit`]); a bool point a
//! `binary_sensor`; a writable coil a `switch`; a writable register a `number` with `min`/`max`
//! from its limits and `step` from its type, scale and decimals; each payload of a payload-table
//! command a `button`. States go to `<state_topic>/<device>/<name>` as plain text (retained,
//! on change), the value as read: a switch or number shows what the device reported after the
//! verified write, never what was asked ("never optimistic"). Commands go to the command topics,
//! which the executor serves like any other.
//!
//! A device whose `serial` or `sw_version` comes from a point gets its configuration once those
//! points have been read, and again when they change. On `online` on `<prefix>/status` (Home
//! Assistant restarted) every configuration and current state is sent again. On reload, a
//! removed device gets an empty retained configuration and a removed entity a component holding
//! only its platform (the documented way to remove one component).
//!
//! Pure: must not do I/O, read a clock, parse commands or write.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use serde_json::{Map, Value as Json, json};

use super::Profile;
use crate::mappings::engine::{Reading, Source, Update, ValueUpdate};
use crate::model::{CommandAction, HomeAssistant, Model, Point, discovery_id};
use crate::northbound::points::render_plain;
use crate::vocabulary::{DataType, DeviceId, Publication, Qos, RegisterKind};

/// What Home Assistant publishes on `<prefix>/status` when it (re)starts (its birth message).
const BIRTH: &str = "online";

/// The device class, unit and state class Home Assistant gets for a sensor with `unit`:
/// °C temperature; W power; kWh and Wh energy (`total_increasing`); V voltage; A current; Hz
/// frequency; % no class. Anything else: no class. Measurements get `state_class:
/// measurement`. Units are Home Assistant's (sensor documentation, "Device class"). A point
/// without a unit gets neither (it may be a status code).
#[must_use]
pub fn classes_for_unit(unit: &str) -> (Option<&'static str>, Option<&'static str>) {
    match unit {
        "°C" => (Some("temperature"), Some("measurement")),
        "W" => (Some("power"), Some("measurement")),
        "kWh" | "Wh" => (Some("energy"), Some("total_increasing")),
        "V" => (Some("voltage"), Some("measurement")),
        "A" => (Some("current"), Some("measurement")),
        "Hz" => (Some("frequency"), Some("measurement")),
        _ => (None, Some("measurement")),
    }
}

/// The smallest step of a writable register in engineering units: one raw count times the
/// scale for integers, `10^-decimals` when decimals are set (and coarser), `0.001` (Home
/// Assistant's smallest) for floats without decimals.
#[must_use]
pub fn step_of(p: &Point) -> f64 {
    let by_decimals = p.decimals.map(|d| 10f64.powi(-i32::from(d)));
    let step = match p.dtype {
        DataType::F32 | DataType::F64 => by_decimals.unwrap_or(0.001),
        _ => {
            let s = p.scale.abs();
            by_decimals.map_or(s, |d| s.max(d))
        }
    };
    step.max(0.001)
}

/// One entity: its key in `cmps` and its component configuration.
#[derive(Debug, Clone)]
struct Component {
    key: String,
    platform: &'static str,
    config: Map<String, Json>,
}

/// What the profile keeps per device.
#[derive(Debug, Clone, Default)]
struct DeviceState {
    /// Identity read from points: (serial, sw_version), as published text.
    serial: Option<String>,
    sw_version: Option<String>,
}

/// One entity's state topic (fixed at start, `None` when the value is not shown) and the last
/// state published on it.
#[derive(Debug, Clone, Default)]
struct StateSlot {
    topic: Option<Arc<str>>,
    last: Option<String>,
}

/// The Home Assistant discovery profile; see the module docs.
#[derive(Debug)]
pub struct Discovery {
    model: Arc<Model>,
    /// Per point and per derived value.
    points: Vec<StateSlot>,
    derived: Vec<StateSlot>,
    devices: Vec<DeviceState>,
}

impl Discovery {
    pub fn new(model: Arc<Model>) -> Self {
        let slot = |topic| StateSlot { topic, last: None };
        let h = model.homeassistant.as_ref();
        // Without a `homeassistant` section no slot is ever used: none is made (at 10,000
        // points they were 0.4 MB).
        let (slot_points, slot_derived) = match h {
            Some(_) => (model.points.len(), model.derived.len()),
            None => (0, 0),
        };
        let points = model
            .points
            .iter()
            .take(slot_points)
            .enumerate()
            .map(|(pid, p)| {
                slot(
                    h.filter(|h| !h.points[pid].exclude)
                        .map(|h| h.state_topic(&model.devices[p.device].name, &p.name)),
                )
            })
            .collect();
        let derived =
            (0..slot_derived)
                .map(|di| {
                    slot(h.zip(derived_device(&model, di)).map(|(h, d)| {
                        h.state_topic(&model.devices[d].name, &model.derived[di].name)
                    }))
                })
                .collect();
        Discovery {
            points,
            derived,
            devices: vec![DeviceState::default(); model.devices.len()],
            model,
        }
    }

    fn ha(&self) -> Option<&HomeAssistant> {
        self.model.homeassistant.as_ref()
    }

    /// Whether every identity point of device `d` has been read.
    fn identity_known(&self, d: DeviceId) -> bool {
        let Some(h) = self.ha() else { return false };
        let (hd, st) = (&h.devices[d], &self.devices[d]);
        (hd.serial.is_none() || st.serial.is_some())
            && (hd.sw_version.is_none() || st.sw_version.is_some())
    }

    /// The configuration of device `d`, or `None` while its identity is not known.
    fn device_config(&self, d: DeviceId, at: SystemTime) -> Option<Publication> {
        let h = self.ha()?;
        if !self.identity_known(d) {
            return None;
        }
        let st = &self.devices[d];
        let payload = device_payload(&self.model, h, d, st, &[]);
        Some(retained(config_topic(h, &self.model, d), payload, at))
    }

    /// The gateway's own configuration and every device configuration that can go out now.
    fn configs(&self, at: SystemTime) -> Vec<Publication> {
        let Some(h) = self.ha() else {
            return Vec::new();
        };
        let mut out = vec![gateway_config(&self.model, h, at)];
        out.extend((0..self.model.devices.len()).filter_map(|d| self.device_config(d, at)));
        out
    }

    /// Every state published so far, again.
    fn states(&self, at: SystemTime) -> Vec<Publication> {
        self.points
            .iter()
            .chain(&self.derived)
            .filter_map(|s| Some(state(s.topic.clone()?, s.last.as_deref()?, at)))
            .collect()
    }

    fn on_value(&mut self, u: &ValueUpdate, out: &mut Vec<Publication>) {
        if self.model.homeassistant.is_none() {
            return;
        }
        let model = Arc::clone(&self.model);
        let text = match &u.reading {
            Reading::Good(v) => {
                let decimals = match u.source {
                    Source::Point(pid) => model.points.get(pid).and_then(|p| p.decimals),
                    Source::Derived(_) => None,
                };
                render_plain(v, decimals)
            }
            // Home Assistant's "no value" payload: the entity shows unknown.
            Reading::Bad(_) => "None".to_owned(),
            // The device is down: its availability says so; the value stays as it was.
            Reading::Stale(_) => return,
        };
        let slot = match u.source {
            Source::Point(pid) => {
                let Some(p) = model.points.get(pid) else {
                    return;
                };
                self.identity(p.device, pid, &u.reading, &text, u.at, out);
                match self.points.get_mut(pid) {
                    Some(s) => s,
                    None => return,
                }
            }
            Source::Derived(di) => match self.derived.get_mut(di) {
                Some(s) => s,
                None => return,
            },
        };
        if let Some(topic) = &slot.topic
            && slot.last.as_deref() != Some(text.as_str())
        {
            out.push(state(topic.clone(), &text, u.read_at));
            slot.last = Some(text);
        }
    }

    /// An identity point of device `d` was read: keep it, and send the configuration when it
    /// becomes known or changes (with the device's current states, which Home Assistant only
    /// now subscribes to).
    fn identity(
        &mut self,
        d: DeviceId,
        pid: usize,
        reading: &Reading,
        text: &str,
        at: SystemTime,
        out: &mut Vec<Publication>,
    ) {
        let model = Arc::clone(&self.model);
        let Some(h) = model.homeassistant.as_ref() else {
            return;
        };
        let Reading::Good(_) = reading else { return };
        let hd = &h.devices[d];
        let st = &mut self.devices[d];
        let mut changed = false;
        for (point, slot) in [
            (hd.serial, &mut st.serial),
            (hd.sw_version, &mut st.sw_version),
        ] {
            if point == Some(pid) && slot.as_deref() != Some(text) {
                *slot = Some(text.to_owned());
                changed = true;
            }
        }
        if changed && let Some(c) = self.device_config(d, at) {
            out.push(c);
            out.extend(
                self.states(at)
                    .into_iter()
                    .filter(|p| device_of_state(&model, &p.topic) == Some(d)),
            );
        }
    }
}

/// The device whose state topic `topic` is.
fn device_of_state(model: &Model, topic: &str) -> Option<DeviceId> {
    let h = model.homeassistant.as_ref()?;
    let rest = topic.strip_prefix(&*h.state_topic)?.strip_prefix('/')?;
    let dev = rest.split('/').next()?;
    model.devices.iter().position(|d| &*d.name == dev)
}

/// A derived value belongs to the device of its first input.
fn derived_device(model: &Model, di: usize) -> Option<DeviceId> {
    let first = *model.derived.get(di)?.pack_bits.first()?;
    Some(model.points.get(first)?.device)
}

fn retained(topic: String, payload: Json, at: SystemTime) -> Publication {
    Publication {
        topic: Arc::from(topic),
        payload: payload.to_string().into_bytes(),
        qos: Qos::AtLeastOnce,
        retain: true,
        created_at: at,
    }
}

/// A state message: the value as plain text, retained, so that Home Assistant has it as soon as
/// it subscribes.
fn state(topic: Arc<str>, text: &str, at: SystemTime) -> Publication {
    Publication {
        topic,
        payload: text.as_bytes().to_vec(),
        qos: Qos::AtLeastOnce,
        retain: true,
        created_at: at,
    }
}

/// `<node_id>_<device>`: the device's id in topics and identifiers.
fn device_id(h: &HomeAssistant, name: &str) -> String {
    format!("{}_{}", h.node_id, discovery_id(name))
}

fn config_topic(h: &HomeAssistant, model: &Model, d: DeviceId) -> String {
    config_topic_of(h, &model.devices[d].name)
}

fn config_topic_of(h: &HomeAssistant, device: &str) -> String {
    format!(
        "{}/device/{}/config",
        h.discovery_prefix,
        device_id(h, device)
    )
}

fn origin() -> Json {
    json!({
        "name": "fieldgate",
        "sw": env!("CARGO_PKG_VERSION"),
    })
}

/// The gateway as a device: one connectivity binary sensor on its status topic.
fn gateway_config(model: &Model, h: &HomeAssistant, at: SystemTime) -> Publication {
    let payload = json!({
        "dev": {
            "ids": [h.node_id.as_ref()],
            "name": h.node_id.as_ref(),
            "mf": "fieldgate",
            "mdl": "Modbus to MQTT gateway",
            "sw": env!("CARGO_PKG_VERSION"),
        },
        "o": origin(),
        "cmps": {
            "connection": {
                "p": "binary_sensor",
                "name": "Connection",
                "unique_id": format!("{}_connection", h.node_id),
                "device_class": "connectivity",
                "entity_category": "diagnostic",
                "state_topic": model.mqtt.status_topic.as_ref(),
                "payload_on": "online",
                "payload_off": "offline",
            }
        },
    });
    retained(
        format!("{}/device/{}/config", h.discovery_prefix, h.node_id),
        payload,
        at,
    )
}

/// The discovery payload of device `d`; `removed` lists components to remove (each gets only
/// its platform).
fn device_payload(
    model: &Model,
    h: &HomeAssistant,
    d: DeviceId,
    st: &DeviceState,
    removed: &[(String, &'static str)],
) -> Json {
    let dev = &model.devices[d];
    let hd = &h.devices[d];
    let mut device = Map::new();
    device.insert("ids".into(), json!([device_id(h, &dev.name)]));
    device.insert("name".into(), json!(dev.name.as_ref()));
    if let Some(m) = &hd.manufacturer {
        device.insert("mf".into(), json!(m));
    }
    if let Some(m) = &hd.model {
        device.insert("mdl".into(), json!(m));
    }
    // An identity register that reads empty (all zeros or blanks) says nothing: left out
    // rather than shown as an empty serial or firmware.
    fn said(s: Option<&String>) -> Option<&str> {
        s.map(|s| s.trim()).filter(|s| !s.is_empty())
    }
    if let Some(s) = said(st.serial.as_ref()) {
        device.insert("sn".into(), json!(s));
    }
    if let Some(s) = said(st.sw_version.as_ref()) {
        device.insert("sw".into(), json!(s));
    }
    device.insert("via_device".into(), json!(h.node_id.as_ref()));
    let mut cmps = Map::new();
    for c in components(model, h, d) {
        let mut cfg = c.config;
        cfg.insert("p".into(), json!(c.platform));
        cmps.insert(c.key, Json::Object(cfg));
    }
    for (key, platform) in removed {
        cmps.insert(key.clone(), json!({ "p": platform }));
    }
    json!({
        "dev": device,
        "o": origin(),
        "availability": [
            {
                "topic": model.mqtt.status_topic.as_ref(),
                "payload_available": "online",
                "payload_not_available": "offline",
            },
            {
                "topic": dev.status_topic.as_ref(),
                "value_template": "{{ 'online' if value_json.status in ['ok', 'degraded'] else 'offline' }}",
                "payload_available": "online",
                "payload_not_available": "offline",
            },
        ],
        "availability_mode": "all",
        "cmps": cmps,
    })
}

/// The components of device `d`, in mapping order: points, derived values, then buttons.
fn components(model: &Model, h: &HomeAssistant, d: DeviceId) -> Vec<Component> {
    let dev = &model.devices[d];
    let mut out: Vec<Component> = Vec::new();
    let push = |out: &mut Vec<Component>, name: &str, platform, mut config: Map<_, _>| {
        let base = discovery_id(name);
        let mut key = base.clone();
        let mut n = 2;
        while out.iter().any(|c| c.key == key) {
            key = format!("{base}_{n}");
            n += 1;
        }
        config.insert("name".into(), json!(name));
        config.insert(
            "unique_id".into(),
            json!(format!("{}_{key}", device_id(h, &dev.name))),
        );
        out.push(Component {
            key,
            platform,
            config,
        });
    };
    for &pid in &dev.points {
        let p = &model.points[pid];
        let hp = &h.points[pid];
        if hp.exclude {
            continue;
        }
        let (platform, config) = point_component(model, h, pid);
        push(&mut out, &p.name, platform, config);
    }
    for (di, der) in model.derived.iter().enumerate() {
        if derived_device(model, di) == Some(d) {
            let mut c = Map::new();
            c.insert(
                "state_topic".into(),
                json!(h.state_topic(&dev.name, &der.name).as_ref()),
            );
            push(&mut out, &der.name, "sensor", c);
        }
    }
    for cmd in &model.commands {
        let CommandAction::Table(table) = &cmd.action else {
            continue;
        };
        let mut payloads: Vec<&String> = table
            .iter()
            .filter(|(_, w)| {
                w.first()
                    .is_some_and(|&(pid, _)| model.points[pid].device == d)
            })
            .map(|(k, _)| k)
            .collect();
        payloads.sort();
        for payload in payloads {
            let mut c = Map::new();
            c.insert("command_topic".into(), json!(cmd.topic.as_ref()));
            c.insert("payload_press".into(), json!(payload));
            c.insert("qos".into(), json!(cmd.qos.level()));
            push(&mut out, payload, "button", c);
        }
    }
    out
}

/// The entities of device `d` as (component key, platform), for `check`; empty without the
/// `homeassistant` section.
#[must_use]
pub fn entities(model: &Model, d: DeviceId) -> Vec<(String, &'static str)> {
    model.homeassistant.as_ref().map_or_else(Vec::new, |h| {
        components(model, h, d)
            .into_iter()
            .map(|c| (c.key, c.platform))
            .collect()
    })
}

/// The discovery topic of device `d` (`<prefix>/device/<node_id>_<device>/config`).
#[must_use]
pub fn discovery_topic(h: &HomeAssistant, model: &Model, d: DeviceId) -> String {
    config_topic(h, model, d)
}

/// The value command that writes point `pid` (the mapping's, or the one the `homeassistant`
/// section added).
fn value_command(model: &Model, pid: usize) -> Option<&crate::model::Command> {
    model
        .commands
        .iter()
        .find(|c| matches!(c.action, CommandAction::Value(p) if p == pid))
}

/// A point's platform and component configuration.
fn point_component(
    model: &Model,
    h: &HomeAssistant,
    pid: usize,
) -> (&'static str, Map<String, Json>) {
    let p = &model.points[pid];
    let hp = &h.points[pid];
    let dev = &model.devices[p.device];
    let mut c = Map::new();
    c.insert(
        "state_topic".into(),
        json!(h.state_topic(&dev.name, &p.name).as_ref()),
    );
    let is_bool = matches!(p.dtype, DataType::Bool | DataType::Bit(_));
    let command = p
        .write
        .and_then(|lim| value_command(model, pid).map(|c| (lim, c)));
    let platform = match (is_bool, command) {
        (true, Some((_, cmd))) if p.kind == RegisterKind::Coil => {
            c.insert("command_topic".into(), json!(cmd.topic.as_ref()));
            c.insert("payload_on".into(), json!("true"));
            c.insert("payload_off".into(), json!("false"));
            c.insert("state_on".into(), json!("true"));
            c.insert("state_off".into(), json!("false"));
            c.insert("optimistic".into(), json!(false));
            c.insert("qos".into(), json!(cmd.qos.level()));
            "switch"
        }
        (true, _) => {
            c.insert("payload_on".into(), json!("true"));
            c.insert("payload_off".into(), json!("false"));
            "binary_sensor"
        }
        (false, Some((lim, cmd))) => {
            c.insert("command_topic".into(), json!(cmd.topic.as_ref()));
            c.insert("min".into(), json!(lim.min));
            c.insert("max".into(), json!(lim.max));
            c.insert("step".into(), json!(step_of(p)));
            c.insert("optimistic".into(), json!(false));
            c.insert("qos".into(), json!(cmd.qos.level()));
            "number"
        }
        (false, None) => "sensor",
    };
    let numeric = !matches!(p.dtype, DataType::String(_)) && !is_bool;
    if numeric {
        let (inferred_class, inferred_state) = p
            .unit
            .as_deref()
            // Without a unit it may be a code or a count: no statistics unless the point says.
            .map_or((None, None), classes_for_unit);
        let class: Option<Arc<str>> = match &hp.device_class {
            Some(o) => o.clone(),
            None => inferred_class.map(Arc::from),
        };
        if let Some(u) = &p.unit {
            c.insert("unit_of_measurement".into(), json!(u.as_ref()));
        }
        if let Some(class) = class {
            c.insert("device_class".into(), json!(class.as_ref()));
        }
        if platform == "sensor" {
            let state_class: Option<Arc<str>> = match &hp.state_class {
                Some(o) => o.clone(),
                None => inferred_state.map(Arc::from),
            };
            if let Some(s) = state_class {
                c.insert("state_class".into(), json!(s.as_ref()));
            }
            if let Some(d) = p.decimals {
                c.insert("suggested_display_precision".into(), json!(d));
            }
        }
    } else if let Some(Some(class)) = &hp.device_class {
        c.insert("device_class".into(), json!(class.as_ref()));
    }
    if let Some(cat) = &hp.entity_category {
        c.insert("entity_category".into(), json!(cat.as_ref()));
    }
    (platform, c)
}

/// What Home Assistant must forget when `old` is replaced by `new` (hot reload): an empty
/// retained configuration for each removed device (the documented removal), and for a kept
/// device that lost entities, its new configuration with each lost component holding only its
/// platform. The retained states of lost entities are cleared.
#[must_use]
pub fn retired(old: &Model, new: &Model, at: SystemTime) -> Vec<Publication> {
    let Some(oh) = old.homeassistant.as_ref() else {
        return Vec::new();
    };
    let nh = new.homeassistant.as_ref();
    let mut out = Vec::new();
    let clear = |topic: String| Publication {
        topic: Arc::from(topic),
        payload: Vec::new(),
        qos: Qos::AtLeastOnce,
        retain: true,
        created_at: at,
    };
    let same_ids =
        nh.is_some_and(|nh| nh.discovery_prefix == oh.discovery_prefix && nh.node_id == oh.node_id);
    if !same_ids {
        // The gateway itself is no longer announced under these ids.
        out.push(clear(format!(
            "{}/device/{}/config",
            oh.discovery_prefix, oh.node_id
        )));
    }
    for (d, dev) in old.devices.iter().enumerate() {
        let old_cmps = components(old, oh, d);
        let kept = nh.filter(|_| same_ids).and_then(|nh| {
            let nd = new.devices.iter().position(|n| n.name == dev.name)?;
            Some((nh, nd))
        });
        let Some((nh, nd)) = kept else {
            out.push(clear(config_topic(oh, old, d)));
            for c in &old_cmps {
                if let Some(t) = c.config.get("state_topic").and_then(Json::as_str) {
                    out.push(clear(t.to_owned()));
                }
            }
            continue;
        };
        let new_cmps = components(new, nh, nd);
        let lost: Vec<&Component> = old_cmps
            .iter()
            .filter(|o| {
                !new_cmps
                    .iter()
                    .any(|n| n.key == o.key && n.platform == o.platform)
            })
            .collect();
        if lost.is_empty() {
            continue;
        }
        let removed: Vec<(String, &'static str)> =
            lost.iter().map(|c| (c.key.clone(), c.platform)).collect();
        let payload = device_payload(new, nh, nd, &DeviceState::default(), &removed);
        out.push(retained(config_topic(nh, new, nd), payload, at));
        for c in &lost {
            let t = c.config.get("state_topic").and_then(Json::as_str);
            let still = new_cmps
                .iter()
                .any(|n| n.config.get("state_topic").and_then(Json::as_str) == t);
            if let (Some(t), false) = (t, still) {
                out.push(clear(t.to_owned()));
            }
        }
    }
    out
}

impl Profile for Discovery {
    fn name(&self) -> &'static str {
        "homeassistant"
    }

    fn on_update(&mut self, update: &Update, _now: Instant, out: &mut Vec<Publication>) {
        if let Update::Value(u) = update {
            self.on_value(u, out);
        }
        // Device status: Home Assistant reads the retained status topic the points profile
        // publishes (the second availability entry).
    }

    /// The gateway's configuration and every device configuration that needs no identity
    /// point, after every connect.
    fn announce(&self, at: SystemTime) -> Vec<Publication> {
        self.configs(at)
    }

    fn watched_topics(&self) -> Vec<(Arc<str>, Qos)> {
        self.ha()
            .map(|h| {
                vec![(
                    Arc::from(format!("{}/status", h.discovery_prefix)),
                    Qos::AtLeastOnce,
                )]
            })
            .unwrap_or_default()
    }

    /// Home Assistant's birth message: every configuration and current state again.
    fn on_message(
        &mut self,
        topic: &str,
        payload: &[u8],
        at: SystemTime,
        out: &mut Vec<Publication>,
    ) {
        let Some(h) = self.ha() else { return };
        if topic == format!("{}/status", h.discovery_prefix)
            && payload.trim_ascii() == BIRTH.as_bytes()
        {
            out.extend(self.configs(at));
            out.extend(self.states(at));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load_str;
    use crate::mappings::engine::{Quality, Value};
    use std::path::Path;
    use std::time::Duration;

    const YAML: &str = r#"
mqtt: { host: 127.0.0.1, client_id: "gw one", status_topic: t/status }
devices:
  - name: m
    tcp: { host: 127.0.0.1, port: 502 }
    poll_interval: 1s
    points:
      - { name: serial, kind: holding_register, address: 0, type: string, length: 4 }
      - { name: firmware, kind: holding_register, address: 4 }
      - { name: temp, kind: input_register, address: 0, type: i16, scale: 0.1, unit: "°C" }
      - { name: energy, kind: input_register, address: 1, type: u32, unit: kWh }
      - { name: setpoint, kind: holding_register, address: 5, type: i16, scale: 0.1, unit: "°C", writable: true, min: 5, max: 30 }
      - { name: hidden, kind: holding_register, address: 6, writable: true }
      - { name: relay, kind: coil, address: 0, writable: true }
      - { name: alarm, kind: discrete_input, address: 0 }
  - name: n
    tcp: { host: 127.0.0.1, port: 503 }
    poll_interval: 1s
    points:
      - { name: level, kind: input_register, address: 0, unit: cm }
derived:
  - { name: code, pack_bits: [m.relay, m.alarm], publish: { topic: t/code } }
commands:
  - topic: t/relay
    payloads:
      "on": [{ point: m.relay, value: 1 }]
      "off": [{ point: m.relay, value: 0 }]
homeassistant:
  devices:
    m:
      manufacturer: ACME
      serial: serial
      sw_version: firmware
      points:
        energy: { device_class: none, entity_category: diagnostic }
        hidden: { exclude: true }
"#;

    fn model(yaml: &str) -> Arc<Model> {
        Arc::new(load_str(Path::new("t.yaml"), yaml, Default::default(), "h").unwrap())
    }

    fn at() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    }

    fn pid(m: &Model, full: &str) -> usize {
        m.points.iter().position(|p| &*p.full_name == full).unwrap()
    }

    fn good(m: &Model, full: &str, v: Value) -> Update {
        let p = pid(m, full);
        Update::Value(ValueUpdate {
            source: Source::Point(p),
            device: m.points[p].device,
            reading: Reading::Good(v),
            previous: Quality::Good,
            read_at: at(),
            at: at(),
        })
    }

    fn feed(d: &mut Discovery, u: &Update) -> Vec<Publication> {
        let mut out = Vec::new();
        d.on_update(u, Instant::now(), &mut out);
        out
    }

    fn payload(p: &Publication) -> Json {
        serde_json::from_slice(&p.payload).unwrap()
    }

    const M_CONFIG: &str = "homeassistant/device/gw_one_m/config";

    /// Asserts `msg` matches `docs/schemas/homeassistant-device-discovery.schema.json`.
    fn valid(msg: &Json) {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/docs/schemas/homeassistant-device-discovery.schema.json"
        );
        let schema: Json = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let v = jsonschema::validator_for(&schema).unwrap();
        let errors: Vec<String> = v.iter_errors(msg).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{errors:?}\n{msg:#}");
    }

    #[test]
    fn classes_follow_the_unit() {
        let table = [
            ("°C", Some("temperature"), Some("measurement")),
            ("W", Some("power"), Some("measurement")),
            ("kWh", Some("energy"), Some("total_increasing")),
            ("Wh", Some("energy"), Some("total_increasing")),
            ("V", Some("voltage"), Some("measurement")),
            ("A", Some("current"), Some("measurement")),
            ("Hz", Some("frequency"), Some("measurement")),
            ("%", None, Some("measurement")),
            ("cm", None, Some("measurement")),
        ];
        for (unit, class, state) in table {
            assert_eq!(classes_for_unit(unit), (class, state), "{unit}");
        }
    }

    #[test]
    fn node_id_comes_from_the_client_id_and_commands_are_added() {
        let m = model(YAML);
        let h = m.homeassistant.as_ref().unwrap();
        assert_eq!(&*h.node_id, "gw_one");
        assert_eq!(&*h.state_topic, "fieldgate/gw_one");
        // A value command for the setpoint and the relay; none for the excluded point.
        let added: Vec<&str> = m.commands.iter().map(|c| &*c.topic).collect();
        assert!(
            added.contains(&"fieldgate/gw_one/m/setpoint/set"),
            "{added:?}"
        );
        assert!(added.contains(&"fieldgate/gw_one/m/relay/set"), "{added:?}");
        assert!(!added.iter().any(|t| t.contains("hidden")), "{added:?}");
    }

    #[test]
    fn identity_holds_the_config_back_until_read_and_sends_it_again_on_change() {
        let m = model(YAML);
        let mut d = Discovery::new(Arc::clone(&m));
        let ann = d.announce(at());
        let topics: Vec<&str> = ann.iter().map(|p| &*p.topic).collect();
        assert_eq!(
            topics,
            [
                "homeassistant/device/gw_one/config",
                "homeassistant/device/gw_one_n/config"
            ],
            "m waits for its serial and firmware"
        );
        assert!(ann.iter().all(|p| p.retain));

        let serial = good(&m, "m.serial", Value::Text("SN-1".into()));
        let out = feed(&mut d, &serial);
        assert!(
            !out.iter().any(|p| &*p.topic == M_CONFIG),
            "firmware not read yet"
        );
        let out = feed(&mut d, &good(&m, "m.firmware", Value::UInt(7)));
        let cfg = out.iter().find(|p| &*p.topic == M_CONFIG).expect("config");
        let cfg = payload(cfg);
        valid(&cfg);
        assert_eq!(cfg["dev"]["sn"], "SN-1");
        assert_eq!(cfg["dev"]["sw"], "7");
        assert_eq!(cfg["dev"]["mf"], "ACME");
        assert_eq!(cfg["dev"]["via_device"], "gw_one");
        // The device's states go out with it (Home Assistant subscribes only now).
        assert!(out.iter().any(|p| &*p.topic == "fieldgate/gw_one/m/serial"));

        // The same identity again: nothing; a new serial: the config again.
        let out = feed(&mut d, &serial);
        assert!(!out.iter().any(|p| &*p.topic == M_CONFIG));
        let out = feed(&mut d, &good(&m, "m.serial", Value::Text("SN-2".into())));
        let cfg = out.iter().find(|p| &*p.topic == M_CONFIG).expect("config");
        assert_eq!(payload(cfg)["dev"]["sn"], "SN-2");
        // A serial register that reads empty: the config says no serial, not an empty one.
        let out = feed(&mut d, &good(&m, "m.serial", Value::Text("  ".into())));
        let cfg = payload(out.iter().find(|p| &*p.topic == M_CONFIG).expect("config"));
        valid(&cfg);
        assert!(cfg["dev"].get("sn").is_none(), "{cfg}");
        assert_eq!(cfg["dev"]["sw"], "7");
        let out = feed(&mut d, &good(&m, "m.serial", Value::Text("SN-2".into())));
        assert!(out.iter().any(|p| &*p.topic == M_CONFIG));
        // The config is now part of what a Home Assistant restart gets.
        let mut out = Vec::new();
        d.on_message("homeassistant/status", b"online", at(), &mut out);
        assert!(out.iter().any(|p| &*p.topic == M_CONFIG));
    }

    #[test]
    fn entities_from_the_mapping() {
        let m = model(YAML);
        let h = m.homeassistant.as_ref().unwrap();
        let cfg = device_payload(&m, h, 0, &DeviceState::default(), &[]);
        valid(&cfg);
        valid(&payload(&gateway_config(&m, h, at())));
        let c = &cfg["cmps"];
        assert_eq!(c["temp"]["p"], "sensor");
        assert_eq!(c["temp"]["device_class"], "temperature");
        assert_eq!(c["temp"]["suggested_display_precision"], 1);
        // An override of `none` removes the inferred class; the state class stays.
        assert_eq!(c["energy"]["p"], "sensor");
        assert!(c["energy"].get("device_class").is_none(), "{}", c["energy"]);
        assert_eq!(c["energy"]["state_class"], "total_increasing");
        assert_eq!(c["energy"]["entity_category"], "diagnostic");
        // A number without a unit (perhaps a code): no statistics.
        assert_eq!(c["firmware"]["p"], "sensor");
        assert!(c["firmware"].get("state_class").is_none());
        // A text point: a sensor without unit or classes.
        assert_eq!(c["serial"]["p"], "sensor");
        assert!(c["serial"].get("state_class").is_none());
        // A writable register: a number with its limits and the step of its scale.
        let n = &c["setpoint"];
        assert_eq!(n["p"], "number");
        assert_eq!(n["min"], 5.0);
        assert_eq!(n["max"], 30.0);
        assert_eq!(n["step"], 0.1);
        assert_eq!(n["optimistic"], false);
        assert_eq!(n["command_topic"], "fieldgate/gw_one/m/setpoint/set");
        assert_eq!(n["state_topic"], "fieldgate/gw_one/m/setpoint");
        assert!(n.get("state_class").is_none());
        assert_eq!(c["relay"]["p"], "switch");
        assert_eq!(c["relay"]["command_topic"], "fieldgate/gw_one/m/relay/set");
        assert_eq!(c["alarm"]["p"], "binary_sensor");
        assert!(c.get("hidden").is_none(), "excluded");
        assert_eq!(c["code"]["p"], "sensor", "derived values are sensors");
        assert_eq!(c["on"]["p"], "button");
        assert_eq!(c["on"]["payload_press"], "on");
        assert_eq!(c["off"]["command_topic"], "t/relay");
        assert_eq!(
            c["temp"]["unique_id"], "gw_one_m_temp",
            "stable: node, device, point"
        );
        // Device n has its own config, without buttons.
        let n = device_payload(&m, h, 1, &DeviceState::default(), &[]);
        assert_eq!(n["cmps"].as_object().unwrap().len(), 1);
    }

    #[test]
    fn states_are_the_values_read_sent_on_change_and_bad_is_none() {
        let m = model(YAML);
        let mut d = Discovery::new(Arc::clone(&m));
        let u = good(&m, "m.setpoint", Value::Float(21.5));
        let out = feed(&mut d, &u);
        assert_eq!(out.len(), 1);
        assert_eq!(&*out[0].topic, "fieldgate/gw_one/m/setpoint");
        assert_eq!(out[0].payload, b"21.5");
        assert!(out[0].retain);
        assert!(feed(&mut d, &u).is_empty(), "unchanged: nothing");
        let p = pid(&m, "m.setpoint");
        let bad = Update::Value(ValueUpdate {
            source: Source::Point(p),
            device: 0,
            reading: Reading::Bad("exception".into()),
            previous: Quality::Good,
            read_at: at(),
            at: at(),
        });
        let out = feed(&mut d, &bad);
        assert_eq!(out[0].payload, b"None");
        let stale = Update::Value(ValueUpdate {
            reading: Reading::Stale(Value::Float(21.5)),
            ..match bad {
                Update::Value(v) => v,
                Update::Device { .. } => unreachable!(),
            }
        });
        assert!(
            feed(&mut d, &stale).is_empty(),
            "availability covers a down device"
        );
        // Excluded points publish no state.
        assert!(feed(&mut d, &good(&m, "m.hidden", Value::UInt(1))).is_empty());
    }

    #[test]
    fn only_online_on_the_status_topic_is_a_birth_message() {
        let m = model(YAML);
        let mut d = Discovery::new(Arc::clone(&m));
        feed(&mut d, &good(&m, "n.level", Value::UInt(42)));
        let mut out = Vec::new();
        d.on_message("homeassistant/status", b"offline", at(), &mut out);
        d.on_message("other/status", b"online", at(), &mut out);
        assert!(out.is_empty());
        d.on_message("homeassistant/status", b"online", at(), &mut out);
        let topics: Vec<&str> = out.iter().map(|p| &*p.topic).collect();
        assert!(topics.contains(&"homeassistant/device/gw_one_n/config"));
        assert!(topics.contains(&"fieldgate/gw_one/n/level"));
        assert!(!topics.contains(&M_CONFIG), "m's identity is not read yet");
        assert_eq!(
            d.watched_topics(),
            [(Arc::from("homeassistant/status"), Qos::AtLeastOnce)]
        );
    }

    #[test]
    fn a_profile_without_the_section_is_quiet() {
        let m = model(&YAML[..YAML.find("homeassistant:").unwrap()]);
        let mut d = Discovery::new(Arc::clone(&m));
        assert!(d.announce(at()).is_empty());
        assert!(d.watched_topics().is_empty());
        assert!(feed(&mut d, &good(&m, "n.level", Value::UInt(1))).is_empty());
        assert!(retired(&m, &m, at()).is_empty());
    }

    #[test]
    fn retired_devices_are_emptied_and_lost_components_keep_only_their_platform() {
        let old = model(YAML);
        let without_n = YAML.replace(
            "  - name: n\n    tcp: { host: 127.0.0.1, port: 503 }\n    poll_interval: 1s\n    points:\n      - { name: level, kind: input_register, address: 0, unit: cm }\n",
            "",
        );
        let new = model(
            &without_n
                .replace(
                    "      - { name: alarm, kind: discrete_input, address: 0 }\n",
                    "      - { name: alarm2, kind: discrete_input, address: 0 }\n",
                )
                .replace("m.alarm]", "m.alarm2]"),
        );
        let out = retired(&old, &new, at());
        let n = out
            .iter()
            .find(|p| &*p.topic == "homeassistant/device/gw_one_n/config")
            .unwrap();
        assert!(n.payload.is_empty() && n.retain);
        let level = out
            .iter()
            .find(|p| &*p.topic == "fieldgate/gw_one/n/level")
            .unwrap();
        assert!(level.payload.is_empty(), "the removed state is cleared");
        let m = out.iter().find(|p| &*p.topic == M_CONFIG).unwrap();
        let m = payload(m);
        valid(&m);
        assert_eq!(m["cmps"]["alarm"], json!({"p": "binary_sensor"}));
        assert_eq!(m["cmps"]["alarm2"]["p"], "binary_sensor");
        assert!(
            out.iter()
                .any(|p| &*p.topic == "fieldgate/gw_one/m/alarm" && p.payload.is_empty())
        );
        // Nothing changed: nothing to take back.
        assert!(retired(&old, &old, at()).is_empty());
        // The section removed: every device goes.
        let plain = model(&YAML[..YAML.find("homeassistant:").unwrap()]);
        let gone = retired(&old, &plain, at());
        assert!(
            gone.iter()
                .any(|p| &*p.topic == M_CONFIG && p.payload.is_empty())
        );
    }
}
