//! The mapping file as written: serde structs, checked for shape only.
//!
//! Every struct denies unknown fields; defaults are `const fn`s. The `///` comments on the
//! fields are the configuration reference. Meaning is checked in `compile/`, not here.

use std::collections::BTreeMap;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer};

use super::yaml::Located;
use crate::mappings::{Order, RegisterKind};

/// A duration written with its unit: `500ms`, `2s`, `1m`, `1h 30m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl JsonSchema for Dur {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "A duration with its unit: 500ms, 2s, 1m, 1h 30m (or a ${VAR}).",
            "pattern": "^(\\s*([0-9]+(\\.[0-9]+)?\\s*(ns|us|µs|ms|s|sec|secs|m|min|mins|h|hr|hrs|d|days?)\\s*)+|.*\\$\\{[^}]+\\}.*)$"
        })
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s)
            .map(Dur)
            .map_err(super::yaml::custom_error)
    }
}

/// A duration with its unit (humantime's syntax), or the message that says how to write it. A
/// bare number gets its own advice: `poll_interval: 1000` is milliseconds in some tools and
/// seconds in others, so the unit must be written.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if let Ok(n) = t.parse::<f64>() {
        let also = if n >= 1000.0 && n % 1000.0 == 0.0 {
            format!("{}s", n / 1000.0)
        } else {
            format!("{t}s")
        };
        return Err(format!("a duration needs a unit: write {t}ms or {also}"));
    }
    let d = humantime::parse_duration(t).map_err(|e| {
        format!("invalid duration `{s}` ({e}); write a number with a unit, e.g. 500ms, 2s, 1m")
    })?;
    if d > MAX_DURATION {
        return Err(format!("duration `{s}` is too long: at most 365 days"));
    }
    Ok(d)
}

/// The longest duration a mapping may give: every timer is a point in time from now, and one
/// far beyond the clock's range cannot be set.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

const fn d_ms(ms: u64) -> Dur {
    Dur(Duration::from_millis(ms))
}
const fn default_mqtt_port() -> u16 {
    1883
}
const fn default_keep_alive() -> Dur {
    d_ms(30_000)
}
const fn default_buffer_max_messages() -> usize {
    100_000
}
const fn default_buffer_max_bytes() -> usize {
    16 * 1024 * 1024
}
const fn default_buffer_sync_interval() -> Dur {
    d_ms(200)
}
const fn default_modbus_port() -> u16 {
    502
}
const fn default_unit() -> u8 {
    1
}
const fn default_timeout() -> Dur {
    d_ms(1_000)
}
const fn default_poll_interval() -> Dur {
    d_ms(1_000)
}
const fn default_scale() -> f64 {
    1.0
}
const fn default_true() -> bool {
    true
}

/// The source classes the energy manager's MQTT specification names.
pub const GROUP_CLASSES: &[&str] = &["CLASS_CONSUMER"];

/// The device types the energy manager's MQTT specification names.
pub const GROUP_DEVICE_TYPES: &[&str] = &["DEVICE_TYPE_UNKNOWN", "DEVICE_TYPE_ROOM_KITCHEN"];

/// A name from `names`, offered for completion, or any other text.
fn named_or_free(description: &str, names: &[&str]) -> schemars::Schema {
    schemars::json_schema!({
        "description": description,
        "anyOf": [
            { "type": "string", "enum": names },
            { "type": "string" },
            { "type": "null" }
        ]
    })
}

fn class_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    named_or_free(
        "Class of the source: one of the energy manager's names, or free text (check notes it).",
        GROUP_CLASSES,
    )
}

fn device_type_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    named_or_free(
        "Device type (`devicetype` in the payload): one of the energy manager's names, or free text (check notes it).",
        GROUP_DEVICE_TYPES,
    )
}

const fn default_qos() -> u8 {
    1
}

/// The whole mapping file.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// The MQTT broker connection.
    pub mqtt: RawMqtt,
    /// The Prometheus `/metrics` listener. Off when absent.
    #[serde(default)]
    pub metrics: Option<RawMetrics>,
    /// Shared Modbus RTU buses (serial, or RTU framing over TCP) that devices refer to.
    #[serde(default)]
    pub buses: Vec<Located<RawBus>>,
    /// The Modbus devices to poll. May be empty (or absent) when `s7_devices` has devices.
    #[serde(default)]
    pub devices: Vec<Located<RawDevice>>,
    /// Siemens S7 PLCs read and written over S7comm PUT/GET (ISO-on-TCP, port 102): each one
    /// connection, polled, mapped and written like a Modbus device. Its points share every key
    /// with Modbus points but `kind`, `address`, `type`, `bit`, `length`, `order` and
    /// `no_value`, which are Modbus-only; an S7 point's `address` is S7 notation instead.
    #[serde(default)]
    pub s7_devices: Vec<Located<RawS7Device>>,
    /// Values computed from other points (no scripting).
    #[serde(default)]
    pub derived: Vec<Located<RawDerived>>,
    /// MQTT topics that turn into writes.
    #[serde(default)]
    pub commands: Vec<Located<RawCommand>>,
    /// Grouped messages: one message per source per send interval.
    #[serde(default)]
    pub groups: Vec<Located<RawGroup>>,
    /// Home Assistant MQTT discovery: every device appears in Home Assistant with its sensors
    /// and controls. Off when absent.
    #[serde(default)]
    pub homeassistant: Option<Located<RawHomeAssistant>>,
    /// A Sparkplug B edge node (Sparkplug 3.0, `spBv1.0`): every device is a Sparkplug
    /// device and its points and derived values are its metrics. Off when absent; may run
    /// next to plain topics and groups.
    #[serde(default)]
    pub sparkplug: Option<Located<RawSparkplug>>,
    // --- templates and includes (issue 18) ---
    /// Mapping fragments to read, each a file of `templates` (and `include`s of its own),
    /// relative to this file's directory: a site's shared device library. No file may include
    /// itself, directly or through others.
    #[serde(default)]
    pub include: Vec<Located<String>>,
    /// Device types: named sets of points, derived values and commands that devices take with
    /// `template:`.
    #[serde(default)]
    pub templates: Vec<Located<RawTemplate>>,
    /// The built-in web console: live values, trends, device health and (when allowed)
    /// commands, over HTTP or HTTPS. Off when absent.
    #[serde(default)]
    pub web: Option<Located<RawWeb>>,
}

/// An included mapping fragment: templates, and includes of its own.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawFragment {
    /// Further fragments, relative to this file's directory.
    #[serde(default)]
    pub include: Vec<Located<String>>,
    /// Device types, as in a mapping file's `templates`.
    #[serde(default)]
    pub templates: Vec<Located<RawTemplate>>,
}

/// `templates[]`: a device type. Its topics, metric names, derived names and point references
/// are patterns: `${device}` (the device's name), `${unit}` (its unit id) and `${<parameter>}`
/// are replaced for each device that uses it; any other `${...}` is an error. Environment
/// variables are not read inside templates: pass them through a parameter.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTemplate {
    /// The template's name, used by `devices[].template`; unique across all included files.
    pub name: Located<String>,
    /// What the device is: maker, model, and the register map's source.
    #[serde(default)]
    pub description: Option<String>,
    /// The template's parameters by name (letters, digits and `_`), each with an optional
    /// default; a parameter without one must be given by every device.
    #[serde(default)]
    pub parameters: BTreeMap<String, Located<RawParameter>>,
    /// The points every device of this type gets.
    pub points: Vec<Located<RawPoint>>,
    /// Derived values each device gets (names and references use `${device}`).
    #[serde(default)]
    pub derived: Vec<Located<RawDerived>>,
    /// Commands each device gets (topics and references use `${device}`).
    #[serde(default)]
    pub commands: Vec<Located<RawCommand>>,
}

/// `templates[].parameters.<name>`.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawParameter {
    /// The value when a device does not give one. Without it, every device must.
    #[serde(default)]
    pub default: Option<String>,
    /// What the parameter means.
    #[serde(default)]
    pub description: Option<String>,
}

/// `web.trend_samples` when it is not given.
pub const DEFAULT_TREND_SAMPLES: usize = 600;

/// `web`: the built-in console (see README "Web console").
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawWeb {
    /// `IP:port` to listen on, e.g. `127.0.0.1:8080`; port 0 picks a free port (logged at
    /// start-up). Any address other than loopback needs `users_file`.
    pub listen: Located<String>,
    /// Who may use the console: a text file, one entry per line, `user NAME ROLE HASH` (an
    /// argon2 PHC string, made by `fieldgate web passwd NAME`) or `token NAME ROLE sha256:HEX`
    /// (a bearer token for scripts, made by `fieldgate web token NAME`); ROLE is `view` or
    /// `operate`; `#` starts a comment. Without it the console is open to whoever reaches
    /// `listen`, which must then be loopback.
    #[serde(default)]
    pub users_file: Option<Located<String>>,
    /// Serve HTTPS with this certificate chain and key (PEM), through rustls.
    #[serde(default)]
    pub tls: Option<Located<RawWebTls>>,
    /// Whether the console may write: command buttons and inputs for writable points, through
    /// the same checks as MQTT commands, for users with role `operate`. Default false.
    #[serde(default)]
    pub allow_writes: bool,
    /// Samples kept in memory per numeric value for the trend graphs (one per poll, the oldest
    /// dropped), 2 to 100000. Default 600: 5 minutes at a 500 ms poll interval.
    #[serde(default)]
    pub trend_samples: Option<Located<usize>>,
}

/// `web.tls`: the console's certificate chain and private key.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawWebTls {
    /// The certificate chain, PEM, leaf first.
    pub cert_file: Located<String>,
    /// The private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key_file: Located<String>,
}

/// `homeassistant`: MQTT discovery for Home Assistant (device-based discovery, one retained
/// `<discovery_prefix>/device/<node_id>_<device>/config` per device).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawHomeAssistant {
    /// Home Assistant's discovery prefix. Default `homeassistant`. The gateway also watches
    /// `<discovery_prefix>/status`: on `online` (Home Assistant restarted) it sends every
    /// configuration and current state again.
    #[serde(default)]
    pub discovery_prefix: Option<Located<String>>,
    /// The gateway's id in Home Assistant: letters, digits, `_` and `-`. It names the gateway
    /// device (every device's `via_device`) and starts every `unique_id`. Default: the MQTT
    /// client id, with other characters replaced by `_`.
    #[serde(default)]
    pub node_id: Option<Located<String>>,
    /// Where the entities' states are published, one topic each:
    /// `<state_topic>/<device>/<point>`; a writable point without a value command gets one on
    /// `<state_topic>/<device>/<point>/set`. Default `fieldgate/<node_id>`.
    #[serde(default)]
    pub state_topic: Option<Located<String>>,
    /// Device metadata and per-point settings, by device name. Devices not listed appear with
    /// their name only.
    #[serde(default)]
    pub devices: BTreeMap<String, Located<RawHaDevice>>,
}

/// `homeassistant.devices.<name>`: what Home Assistant shows about a device.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawHaDevice {
    /// The manufacturer (`dev.mf`).
    #[serde(default)]
    pub manufacturer: Option<String>,
    /// The model (`dev.mdl`).
    #[serde(default)]
    pub model: Option<String>,
    /// A point of this device that holds the serial number (`dev.sn`), e.g. a string
    /// register. The configuration is sent once it has been read, and again when it changes.
    #[serde(default)]
    pub serial: Option<Located<String>>,
    /// A point of this device that holds the firmware version (`dev.sw`); read like `serial`.
    #[serde(default)]
    pub sw_version: Option<Located<String>>,
    /// Per-point settings, by point name.
    #[serde(default)]
    pub points: BTreeMap<String, Located<RawHaPoint>>,
}

/// `homeassistant.devices.<name>.points.<point>`: overrides of what is inferred.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawHaPoint {
    /// Home Assistant's device class (e.g. `temperature`, `duration`, `pressure`), instead of
    /// the one inferred from the unit; `none` for no class.
    #[serde(default)]
    pub device_class: Option<Located<String>>,
    /// `measurement`, `total` or `total_increasing`, instead of the inferred one; `none` for
    /// no state class.
    #[serde(default)]
    pub state_class: Option<Located<String>>,
    /// `config` or `diagnostic`.
    #[serde(default)]
    pub entity_category: Option<Located<String>>,
    /// Leave this point out of Home Assistant (and give it no command topic).
    #[serde(default)]
    pub exclude: bool,
}

/// The `sparkplug` section. Ids must not be empty or contain `+`, `#` or `/` (Sparkplug 3.0,
/// tck-id-topic-structure-namespace-valid-group-id and its siblings).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSparkplug {
    /// The Sparkplug group id, the second level of every topic.
    pub group_id: Located<String>,
    /// This gateway's edge node id.
    pub edge_node_id: Located<String>,
    /// The primary host application's id: nothing is born until `spBv1.0/STATE/<id>` says
    /// `{"online": true}`, and data stops while it says offline. Default: no primary host.
    #[serde(default)]
    pub primary_host_id: Option<Located<String>>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RawGroupFormat {
    /// `{"<source>": {"<key>": value, ..., "status": 1, "timestamp": <unix seconds>}}` on `topic`.
    #[default]
    Simple,
    /// A retained configuration on `configuration_topic` and a measurement on
    /// `measurement_topic`, linked by the configuration id.
    Detailed,
    /// Each value on `<topic>/<key>` as `{"value", "unit", "ts", "quality"}`.
    PerPoint,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RawAggregate {
    Mean,
    Last,
    Min,
    Max,
    Sum,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RawValueKind {
    /// A live value (voltage, power): averaged by default.
    #[default]
    Live,
    /// A meter reading that only grows (energy): the last value by default.
    Counter,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawGroup {
    /// The source id: the key of the JSON object (`s0`).
    pub source: Located<String>,
    /// `simple` (default), `detailed` or `per_point`.
    #[serde(default)]
    pub format: RawGroupFormat,
    /// Send interval: `1s` ... `1d`, or any duration. Messages go out at multiples of it on
    /// the clock (every 10s at :00, :10, ...).
    pub interval: Located<Dur>,
    /// Topic of `simple`, and topic prefix of `per_point`.
    #[serde(default)]
    pub topic: Option<Located<String>>,
    /// `detailed`: the retained configuration topic.
    #[serde(default)]
    pub configuration_topic: Option<Located<String>>,
    /// `detailed`: the measurement topic.
    #[serde(default)]
    pub measurement_topic: Option<Located<String>>,
    /// QoS of the measurement (or simple / per-point) messages. Default 1.
    #[serde(default = "default_qos")]
    pub qos: u8,
    /// Retain the measurement (or simple / per-point) messages. Default false.
    #[serde(default)]
    pub retain: bool,
    /// QoS of the detailed configuration message. Default 1. Groups sharing a
    /// `configuration_topic` must agree on it.
    #[serde(default = "default_qos")]
    pub configuration_qos: u8,
    /// Retain the detailed configuration message. Default true. It is sent at the first
    /// connect and whenever it changes (a reload); after a reconnect only when it is not
    /// retained (or was never acknowledged). Groups sharing a `configuration_topic` must agree.
    #[serde(default = "default_true")]
    pub configuration_retain: bool,
    /// Human-readable name, in the detailed configuration.
    #[serde(default)]
    pub label: Option<String>,
    /// Class of the source: one of the energy manager's names (`CLASS_CONSUMER`, ...) or free
    /// text (`check` notes it).
    #[serde(default)]
    #[schemars(schema_with = "class_schema")]
    pub class: Option<Located<String>>,
    /// Device type (`devicetype` in the payload): one of the energy manager's names
    /// (`DEVICE_TYPE_UNKNOWN`, `DEVICE_TYPE_ROOM_KITCHEN`, ...) or free text (`check` notes it).
    #[serde(default)]
    #[schemars(schema_with = "device_type_schema")]
    pub device_type: Option<Located<String>>,
    /// The source ids this source is made of (a room made of several sensors), published as
    /// `sources` in the detailed configuration (null when absent). Each must be the `source`
    /// of a group in this file; no source may contain itself, directly or through others.
    #[serde(default)]
    pub sources: Option<Vec<Located<String>>>,
    /// Free key/value metadata, e.g. `phase: L2`, `serial: ...`.
    #[serde(default)]
    pub meta: BTreeMap<String, String>,
    /// The values of the group.
    pub values: Vec<Located<RawGroupValue>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawGroupValue {
    /// Key of the value in the payload, e.g. `voltage_L2`.
    pub key: Located<String>,
    /// The numeric point, `device.point`.
    pub point: Located<String>,
    /// `live` (default) or `counter`.
    #[serde(default)]
    pub kind: RawValueKind,
    /// `mean`, `last`, `min`, `max` or `sum`. Default `mean` for live values, `last` for counters.
    #[serde(default)]
    pub aggregate: Option<RawAggregate>,
    /// OBIS code `A-B:C.D.E*F`, e.g. `1-0:52.4.0*255`.
    #[serde(default)]
    pub obis_code: Option<Located<String>>,
    /// Unit in the payload. Converted from the point's unit across SI prefixes (W to mW, kWh
    /// to Wh). Default: the point's unit.
    #[serde(default)]
    pub unit: Option<Located<String>>,
    /// Round to this many decimals. Default 3.
    #[serde(default)]
    pub decimals: Option<u8>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawMqtt {
    /// Broker host name or IP address. Exactly one of `host` and `hosts`.
    #[serde(default)]
    pub host: Option<Located<String>>,
    /// Brokers to fail over between, in order: `host`, `host:port` or `[v6 address]:port`
    /// (without a port: `port`). On a failed connect or a lost connection the gateway tries
    /// the next one at once; after every broker failed once, it backs off as usual. It stays
    /// on a broker that works, and moves on (back to the first after the last) only when
    /// that one fails. Exactly one of `host` and `hosts`.
    #[serde(default)]
    pub hosts: Vec<Located<String>>,
    /// Broker TCP port (for `host`, and for `hosts` entries without one). Default 1883.
    #[serde(default = "default_mqtt_port")]
    pub port: u16,
    /// MQTT client id; must be unique among the broker's clients: a broker disconnects a
    /// client when another connects with the same id. Default
    /// `fieldgate-<hostname>-<machine-id, 8 digits>-<instance>`, where `<instance>` is 6 hex
    /// digits of a SHA-256 of the mapping file's absolute path and the status topic: stable
    /// across restarts, different for two gateways on one host. May be a pattern of
    /// variables, like any value: `${HOSTNAME}` (the environment's, else the kernel's host
    /// name) and `${CONFIG_ID}` (the configuration id `check` prints) are always set.
    #[serde(default)]
    pub client_id: Option<String>,
    /// MQTT keep-alive. Default 30s.
    #[serde(default = "default_keep_alive")]
    pub keep_alive: Dur,
    /// Topic for the retained gateway status: `online` after every connect, `offline` as the
    /// last will and on shutdown.
    pub status_topic: Located<String>,
    /// The outbound buffer: QoS 1 and 2 publications wait here until the broker acknowledged
    /// them, through outages and restarts.
    #[serde(default)]
    pub buffer: RawBuffer,
    /// MQTT protocol version: `3.1.1` (default) or `5`. With 5 the broker tells the gateway
    /// when it refuses a publication (for example, denied by its ACL); with 3.1.1 such a
    /// message is dropped by the broker without a word.
    #[serde(default)]
    pub protocol: Option<MqttProtocol>,
    /// TLS to the broker (usually port 8883). Absent: plain TCP.
    #[serde(default)]
    pub tls: Option<RawTls>,
    /// User name for the broker.
    #[serde(default)]
    pub username: Option<Located<String>>,
    /// File holding the broker password (its first line). Keep it readable by the gateway
    /// only.
    #[serde(default)]
    pub password_file: Option<Located<String>>,
    /// Environment variable holding the broker password.
    #[serde(default)]
    pub password_env: Option<Located<String>>,
    /// The broker password inline. Works, but `check` warns: anyone who can read the mapping
    /// can read it. Prefer `password_file` or `password_env`.
    #[serde(default)]
    pub password: Option<Located<String>>,
    /// End-to-end payload encryption (AES-256-GCM) on top of TLS, for brokers or bridges
    /// that must not read the data.
    #[serde(default)]
    pub payload_encryption: Option<RawPayloadEncryption>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// PEM file of the CA certificate(s) that may sign the broker's certificate. Default: the
    /// system's CA store. Exclusive with pins.
    #[serde(default)]
    pub ca_file: Option<Located<String>>,
    /// PEM file of the client certificate (and its chain) for mutual TLS. Needs `client_key`.
    #[serde(default)]
    pub client_cert: Option<Located<String>>,
    /// PEM file of the client's private key: PKCS#8, PKCS#1 (RSA) or SEC1 (EC).
    #[serde(default)]
    pub client_key: Option<Located<String>>,
    /// Lowest TLS version accepted: 1.2 (default) or 1.3.
    #[serde(default)]
    pub min_version: Option<TlsMin>,
    /// The name the broker's certificate must carry, when it differs from `host` (for example
    /// when connecting by IP address to a certificate issued for a DNS name).
    #[serde(default)]
    pub server_name: Option<Located<String>>,
    /// Trust exactly these broker certificates, by the SHA-256 of their DER (64 hex digits,
    /// colons allowed): for self-signed brokers. The handshake signature is still checked.
    #[serde(default)]
    pub pin_sha256: Vec<Located<String>>,
    /// A file of pins, one per line (`#` comments), as written by
    /// `fieldgate tls inspect --pin`. Read at start; a missing file holds no pins.
    #[serde(default)]
    pub pin_file: Option<Located<String>>,
    /// A TLS-only profile: `check` refuses the mapping when the broker port is MQTT's
    /// plaintext port 1883 (IANA), so that a port variable left at its default cannot send
    /// the data in clear. Default false.
    #[serde(default)]
    pub required: Option<Located<bool>>,
}

/// `3.1.1` or `5`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MqttProtocol(pub bool);

impl MqttProtocol {
    pub const fn is_v5(self) -> bool {
        self.0
    }
}

impl<'de> Deserialize<'de> for MqttProtocol {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = MqttProtocol;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("3.1.1 or 5")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<MqttProtocol, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<MqttProtocol, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<MqttProtocol, E> {
                match v.trim() {
                    "3.1.1" => Ok(MqttProtocol(false)),
                    "5" | "5.0" => Ok(MqttProtocol(true)),
                    other => Err(super::yaml::custom_error(format!(
                        "protocol `{other}`: write 3.1.1 or 5"
                    ))),
                }
            }
        }
        d.deserialize_any(V)
    }
}

impl JsonSchema for MqttProtocol {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "MqttProtocol".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "MQTT protocol version: 3.1.1 or 5.",
            "enum": ["3.1.1", 5, "5"]
        })
    }
}

/// `1.2` or `1.3`, written as a number or a string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlsMin(pub bool);

impl TlsMin {
    pub const fn is_1_3(self) -> bool {
        self.0
    }
}

impl<'de> Deserialize<'de> for TlsMin {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = TlsMin;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("1.2 or 1.3")
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<TlsMin, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<TlsMin, E> {
                match v.trim() {
                    "1.2" => Ok(TlsMin(false)),
                    "1.3" => Ok(TlsMin(true)),
                    other => Err(super::yaml::custom_error(format!(
                        "min_version `{other}`: write 1.2 or 1.3"
                    ))),
                }
            }
        }
        d.deserialize_any(V)
    }
}

impl JsonSchema for TlsMin {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "TlsMinVersion".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "Lowest TLS version: 1.2 or 1.3.",
            "enum": [1.2, 1.3, "1.2", "1.3"]
        })
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawPayloadEncryption {
    /// File with the 32-byte key: raw, or base64 or hex text. Keep it readable by the
    /// gateway only; every client of the encrypted topics needs the same key.
    pub key_file: Located<String>,
    /// Topic filters whose payloads are encrypted (publications) and must authenticate
    /// (commands). Default `["#"]`: every topic but the gateway status topic and its
    /// subtopics, which stay readable.
    #[serde(default)]
    pub topics: Option<Vec<Located<String>>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawBuffer {
    /// Directory of the on-disk buffer (created if missing; one gateway per directory).
    /// Default: `$STATE_DIRECTORY/queue` when systemd sets `STATE_DIRECTORY`, else the buffer
    /// is in memory only and lost on restart.
    #[serde(default)]
    pub path: Option<Located<String>>,
    /// Most publications held; past it the oldest are dropped and counted. Default 100000.
    #[serde(default = "default_buffer_max_messages")]
    pub max_messages: usize,
    /// Most bytes held (topic + payload + 48 per message), in memory and on disk; past it the
    /// oldest are dropped and counted. Default 16777216 (16 MiB).
    #[serde(default = "default_buffer_max_bytes")]
    pub max_bytes: usize,
    /// How often the disk buffer is flushed to stable storage (fsync). A power cut can lose
    /// what arrived within one interval; a kill cannot. Default 200ms.
    #[serde(default = "default_buffer_sync_interval")]
    pub sync_interval: Dur,
}

impl Default for RawBuffer {
    fn default() -> Self {
        RawBuffer {
            path: None,
            max_messages: default_buffer_max_messages(),
            max_bytes: default_buffer_max_bytes(),
            sync_interval: default_buffer_sync_interval(),
        }
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    /// Address for the HTTP `/metrics` endpoint, e.g. `127.0.0.1:9464` (port 0: any free port,
    /// logged at start-up).
    pub listen: Located<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawDevice {
    /// Unique device name; used in topics, logs, metrics and `device.point` references.
    pub name: Located<String>,
    /// Modbus TCP connection. Exclusive with `bus`.
    #[serde(default)]
    pub tcp: Option<RawTcp>,
    /// The name of the RTU bus this device hangs on. Exclusive with `tcp`.
    #[serde(default)]
    pub bus: Option<Located<String>>,
    /// Modbus unit (slave) id, 0-247. Default 1.
    #[serde(default = "default_unit")]
    pub unit: u8,
    /// Time to wait for each answer. Default 1s for TCP, the bus's `timeout` on a bus.
    #[serde(default)]
    pub timeout: Option<Dur>,
    /// Time between poll cycles. Default 1s. The second cycle on a fresh connection comes
    /// earlier by `poll_interval * i / n` (i: the device's place among the mapping's n
    /// devices, from 0), so devices that share an interval poll at even offsets within it.
    #[serde(default = "default_poll_interval")]
    pub poll_interval: Dur,
    /// Largest hole (in registers or bits) bridged to merge two reads into one request.
    /// Default 0: only adjacent points merge, so no unmapped address is ever read.
    #[serde(default)]
    pub max_gap: u16,
    /// Most registers one read (FC 3, FC 4) may ask for, 1-125. Default 125, the protocol's
    /// limit (Modbus application protocol V1.1b3, 6.3). Many energy meters accept 50, some
    /// dongles 16. Without it, a device that refuses a long read with an exception still works:
    /// the read is split until its parts succeed, and the split is remembered.
    #[serde(default)]
    pub max_registers: Option<Located<u16>>,
    /// Most coils or discrete inputs one read (FC 1, FC 2) may ask for, 1-2000. Default 2000.
    #[serde(default)]
    pub max_bits: Option<Located<u16>>,
    /// Silence after the connection is opened before the first request: for devices (some
    /// Wi-Fi and USB dongles) that swallow requests sent in the first second or two. On a
    /// shared link the largest of its devices' delays applies. Default 0.
    #[serde(default)]
    pub connect_delay: Option<Dur>,
    /// Least pause between the end of one exchange and the next request to this device, for
    /// slow PLCs and busy gateways. Default 0.
    #[serde(default)]
    pub request_delay: Option<Dur>,
    /// Function codes for writing one coil or one register: `auto` (default: FC 5 / FC 6, and
    /// after an ILLEGAL FUNCTION exception FC 15 / FC 16, remembered for the device), `single`
    /// (always FC 5 / FC 6) or `multiple` (always FC 15 / FC 16). More than one register is
    /// always written with FC 16.
    #[serde(default)]
    pub write_function: RawWriteFunction,
    /// Topic for this device's retained status. Default `<mqtt.status_topic>/<name>`.
    #[serde(default)]
    pub status_topic: Option<Located<String>>,
    /// Sparkplug B: this device's device id. Default: the device name.
    #[serde(default)]
    pub device_id: Option<Located<String>>,
    /// The mapped values of this device. With `template`, points added to the template's; a
    /// point with the name of a template point replaces it.
    #[serde(default)]
    pub points: Vec<Located<RawPoint>>,
    // --- templates (issue 18) ---
    /// The name of a template: the device gets every point, derived value and command of it.
    #[serde(default)]
    pub template: Option<Located<String>>,
    /// Values of the template's parameters, by name (`${VAR}` works here).
    #[serde(default)]
    pub parameters: BTreeMap<String, Located<String>>,
    /// Template points this device leaves out, by name.
    #[serde(default)]
    pub drop: Vec<Located<String>>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RawWriteFunction {
    /// FC 5 / FC 6, falling back to FC 15 / FC 16 after ILLEGAL FUNCTION.
    #[default]
    Auto,
    /// Always FC 5 / FC 6.
    Single,
    /// Always FC 15 / FC 16.
    Multiple,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RawTransactionId {
    /// Only a reply with the request's own transaction id is its answer; older ids (stale
    /// replies) are skipped.
    #[default]
    Strict,
    /// Also accept id 0 and the id with its two bytes swapped, for devices that do not echo it.
    Lenient,
}

const fn default_baud() -> u32 {
    19_200
}
const fn default_data_bits() -> u8 {
    8
}
const fn default_stop_bits() -> u8 {
    1
}
const fn default_quarantine_after() -> u32 {
    3
}
const fn default_quarantine_max() -> Dur {
    d_ms(60_000)
}

/// A Modbus RTU bus: one task owns it and serialises every request of its devices.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawBus {
    /// Unique bus name, referred to by `devices[].bus`.
    pub name: Located<String>,
    /// A serial port. Exclusive with `tcp`.
    #[serde(default)]
    pub serial: Option<RawSerial>,
    /// RTU framing over TCP (a serial-to-Ethernet converter). Exclusive with `serial`.
    #[serde(default)]
    pub tcp: Option<RawTcp>,
    /// Response timeout for every request on the bus. Default 1s.
    #[serde(default = "default_timeout")]
    pub timeout: Dur,
    /// Silence before each request. Default from the baud rate: 3.5 characters, and 1.75 ms
    /// above 19200 baud (Modbus over serial line, 2.5.1.1). 0 for RTU over TCP.
    #[serde(default)]
    pub frame_gap: Option<Dur>,
    /// Extra delay before each request, for slow slaves or RS-485 adapters. Default 0.
    #[serde(default)]
    pub turnaround: Option<Dur>,
    /// Consecutive failed polls after which a device is quarantined. Default 3.
    #[serde(default = "default_quarantine_after")]
    pub quarantine_after: u32,
    /// Longest time between polls of a quarantined device. Default 60s.
    #[serde(default = "default_quarantine_max")]
    pub quarantine_max: Dur,
    /// The RS-485 adapter echoes every request before the slave's reply (no echo
    /// suppression); the echo is removed before the reply is read. Default false.
    #[serde(default)]
    pub echo: bool,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RawParity {
    None,
    /// The Modbus default.
    #[default]
    Even,
    Odd,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSerial {
    /// The port. Prefer `/dev/serial/by-id/...`: it survives re-plugging and reboots.
    pub device: Located<String>,
    /// Baud rate. Default 19200.
    #[serde(default = "default_baud")]
    pub baud: u32,
    /// 7 or 8. Default 8.
    #[serde(default = "default_data_bits")]
    pub data_bits: u8,
    /// `none`, `even` (default) or `odd`.
    #[serde(default)]
    pub parity: RawParity,
    /// 1 or 2. Default 1.
    #[serde(default = "default_stop_bits")]
    pub stop_bits: u8,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTcp {
    /// Host name or IP address of the device (or Modbus TCP gateway).
    pub host: String,
    /// TCP port. Default 502.
    #[serde(default = "default_modbus_port")]
    pub port: u16,
    /// Modbus TCP only: `strict` (default) or `lenient`, which also accepts replies with
    /// transaction id 0 or with its bytes swapped (devices that do not echo it). A strict
    /// link that gets such a reply says so in the device's status.
    #[serde(default)]
    pub transaction_id: Option<Located<RawTransactionId>>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RawType {
    Bool,
    Bit,
    U16,
    I16,
    U32,
    I32,
    U64,
    I64,
    F32,
    F64,
    String,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawPoint {
    /// Point name, unique within its device.
    pub name: Located<String>,
    /// `coil`, `discrete_input`, `input_register` or `holding_register`.
    pub kind: RegisterKind,
    /// Zero-based protocol address (0-65535), not the 4xxxx "register number".
    pub address: Located<u32>,
    /// Data type. Default `bool` for coils and discrete inputs, `u16` for registers.
    #[serde(default, rename = "type")]
    pub dtype: Option<Located<RawType>>,
    /// For `type: bit`: the bit number, 0 (least significant) to 15.
    #[serde(default)]
    pub bit: Option<Located<u8>>,
    /// For `type: string`: the length in registers (two bytes each).
    #[serde(default)]
    pub length: Option<Located<u16>>,
    /// Word and byte order: `ABCD` (default), `CDAB`, `BADC` or `DCBA`.
    #[serde(default)]
    pub order: Order,
    /// Engineering value = raw * scale + offset. Default 1.
    #[serde(default = "default_scale")]
    pub scale: f64,
    /// Added after scaling. Default 0.
    #[serde(default)]
    pub offset: f64,
    /// Round published values to this many decimals, in every format (plain, JSON, read-back
    /// acks). Default: from `scale` for integer types (0.1 gives 1); floats are published as
    /// their shortest decimal (`5.83`).
    #[serde(default)]
    pub decimals: Option<u8>,
    /// Raw register values that mean "no value", e.g. `[0x8000]` for an i16 or
    /// `[0xFFFFFFFF]` for a u32 (SunSpec's "not implemented"). Compared with the registers
    /// before scaling, as one unsigned integer of the type's width after `order`; a negative
    /// code of a signed type is its two's complement. Such a read is published like a NaN:
    /// JSON `"value": null, "quality": "bad"`, nothing on a plain topic, skipped by groups.
    #[serde(default)]
    pub no_value: Vec<Located<i128>>,
    /// Engineering unit, e.g. `cm`, `°C`; shown in JSON payloads.
    #[serde(default)]
    pub unit: Option<String>,
    /// Allow commands to write this point. Default false.
    #[serde(default)]
    pub writable: Located<bool>,
    /// Lowest value a command may write, in engineering units.
    #[serde(default)]
    pub min: Option<f64>,
    /// Highest value a command may write, in engineering units.
    #[serde(default)]
    pub max: Option<f64>,
    /// How to publish this point. Not published when absent.
    #[serde(default)]
    pub publish: Option<Located<RawPublish>>,
    /// Sparkplug B: the metric name, which may have folders (`pump1/temperature`). Default:
    /// the point name.
    #[serde(default)]
    pub metric: Option<Located<String>>,
}

impl Default for Located<bool> {
    fn default() -> Self {
        Located {
            value: false,
            line: 0,
            col: 0,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RawMode {
    /// Every `interval`.
    #[default]
    Interval,
    /// When the value moves by more than `deadband` (and after `max_silence` without one).
    OnChange,
    /// On change, and at least every `interval`.
    Both,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RawFormat {
    /// The value as text: `123`, `21.5`, `true`.
    #[default]
    Plain,
    /// `{"value": 21.5, "unit": "°C", "ts": "2026-01-01T00:00:00.000Z", "quality": "good"}`.
    Json,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawPublish {
    /// Topic to publish on; no wildcards.
    pub topic: Located<String>,
    /// 0, 1 or 2. Default 1.
    #[serde(default = "default_qos")]
    pub qos: u8,
    /// Publish retained. Default false.
    #[serde(default)]
    pub retain: bool,
    /// `interval` (default), `on_change` or `both`.
    #[serde(default)]
    pub mode: RawMode,
    /// Publish period for `interval` and `both`. Default: the device's poll interval.
    #[serde(default)]
    pub interval: Option<Dur>,
    /// For `on_change`/`both`: the absolute change that counts as a change. Default 0 (any).
    #[serde(default)]
    pub deadband: f64,
    /// For `on_change`: republish the unchanged value after this long. Default: never.
    #[serde(default)]
    pub max_silence: Option<Dur>,
    /// `plain` (default) or `json`.
    #[serde(default)]
    pub format: RawFormat,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawDerived {
    /// Name of the derived value.
    pub name: Located<String>,
    /// Boolean points `device.point`; the first is bit 0 of the published integer.
    pub pack_bits: Vec<Located<String>>,
    /// How to publish it (as for points).
    pub publish: Located<RawPublish>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawCommand {
    /// Topic to subscribe to; no wildcards.
    pub topic: Located<String>,
    /// Where each command's result is published. Default `<topic>/ack`.
    #[serde(default)]
    pub ack_topic: Option<Located<String>>,
    /// Subscription QoS (and ack QoS). Default 1.
    #[serde(default = "default_qos")]
    pub qos: u8,
    /// Fixed payloads, each a list of writes. Exclusive with `write`.
    #[serde(default)]
    pub payloads: Option<BTreeMap<String, Vec<Located<RawWrite>>>>,
    /// A writable point `device.point`; the payload is its new value. Exclusive with `payloads`.
    #[serde(default)]
    pub write: Option<Located<String>>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawWrite {
    /// The writable point, `device.point`.
    pub point: Located<String>,
    /// The value to write, in engineering units (`1`/`0` for coils).
    pub value: f64,
}

// ---- Siemens S7 (issue 19) -------------------------------------------------------------------

const fn default_s7_port() -> u16 {
    102
}
/// The PDU size asked for when `pdu_size` is not set (Snap7's default).
pub const DEFAULT_PDU_SIZE: u16 = 480;

/// A Siemens S7 PLC (S7-300/400/1200/1500, LOGO! 8, and compatibles) read over S7comm PUT/GET.
/// Shared with Modbus devices: `name`, `timeout`, `poll_interval`, `status_topic`, and what
/// points do with their values. Modbus-only (not here): `tcp`, `bus`, `unit`, `max_registers`,
/// `max_bits`, `connect_delay`, `request_delay`, `write_function`, `device_id` (for Sparkplug B
/// the device name is the device id, and each point's name its metric).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawS7Device {
    /// Unique device name (across `devices` and `s7_devices`); used in topics, logs, metrics and
    /// `device.point` references.
    pub name: Located<String>,
    /// Where the CPU is and how to connect: the `s7` link.
    pub s7: Located<RawS7Link>,
    /// Time to wait for each answer (and at least 3s for connecting). Default 1s.
    #[serde(default)]
    pub timeout: Option<Dur>,
    /// Time between poll cycles. Default 1s. The second cycle on a fresh connection comes
    /// earlier by `poll_interval * i / n` (i: the device's place among the mapping's n
    /// devices, from 0), so devices that share an interval poll at even offsets within it.
    #[serde(default = "default_poll_interval")]
    pub poll_interval: Dur,
    /// Largest hole (in bytes) bridged to merge two values of one area or DB into one ReadVar
    /// item. Default 0: only adjacent values merge, so no unmapped byte is ever read.
    #[serde(default)]
    pub max_gap: u16,
    /// Topic for this device's retained status. Default `<mqtt.status_topic>/<name>`.
    #[serde(default)]
    pub status_topic: Option<Located<String>>,
    /// The mapped values of this PLC.
    pub points: Vec<Located<RawS7Point>>,
}

/// The connection type: the high byte of the remote TSAP.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RawS7ConnectionType {
    /// Programming device (1): what STEP 7 / TIA Portal use; the default.
    #[default]
    #[serde(alias = "PG", alias = "Pg")]
    Pg,
    /// Operator panel (2).
    #[serde(alias = "OP", alias = "Op")]
    Op,
    /// S7 basic communication (3).
    #[serde(alias = "BASIC", alias = "Basic")]
    Basic,
}

/// An `s7` link: one ISO-on-TCP connection to the CPU.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawS7Link {
    /// Host name or IP address of the CPU (or of its CP).
    pub host: Located<String>,
    /// ISO-on-TCP port (RFC 1006). Default 102.
    #[serde(default = "default_s7_port")]
    pub port: u16,
    /// The CPU's rack, 0-7. With `slot`; exclusive with the TSAPs. Default 0.
    #[serde(default)]
    pub rack: Option<Located<u8>>,
    /// The CPU's slot, 0-31: 2 on an S7-300, 1 on an S7-1200/1500 (default), 0 or 1 on a
    /// LOGO! or S7-1500 with a CP (see the CPU's hardware configuration).
    #[serde(default)]
    pub slot: Option<Located<u8>>,
    /// `pg` (default), `op` or `basic`. With rack and slot.
    #[serde(default)]
    pub connection_type: RawS7ConnectionType,
    /// Our TSAP, e.g. `0x0100` (LOGO!: `0x0100` or `0x0200`), with `remote_tsap` instead of
    /// rack and slot. Default 0x0100.
    #[serde(default)]
    pub local_tsap: Option<Located<u16>>,
    /// The CPU's TSAP, e.g. `0x0102` (LOGO!: `0x0200` or `0x0300`), instead of rack and slot.
    #[serde(default)]
    pub remote_tsap: Option<Located<u16>>,
    /// The PDU size asked for at connect, 240-960 bytes; the CPU grants at most its own (240 on
    /// S7-300 and S7-1200, 480 on S7-400, 960 on S7-1500), and the reads are planned for what
    /// it grants. Default 480.
    #[serde(default)]
    pub pdu_size: Option<Located<u16>>,
}

/// One value in an S7 PLC. Shared with Modbus points: `name`, `scale`, `offset`, `decimals`,
/// `unit`, `writable`, `min`, `max`, `publish`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawS7Point {
    /// Point name, unique within its device.
    pub name: Located<String>,
    /// The address in S7 notation: `DB1.DBX4.0`, `DB1.DBB2`, `DB1.DBW6`, `DB1.DBD0`, or with
    /// the type, `DB1,REAL0`, `DB1,INT6`, `DB1,DINT8`, `DB1,LREAL16`, `DB1,STRING24.20` (a
    /// STRING of at most 20 characters); `M10.0`, `MB4`, `MW20`, `MD24`; `I0.1` (or `E0.1`),
    /// `IW64`; `Q0.0` (or `A0.0`), `QW2`; on a LOGO! 8, `V10.0`, `VW0` (its V memory is DB1).
    /// Offsets are bytes, bits 0-7.
    pub address: Located<String>,
    /// The type of a `B`/`W`/`D` address: `byte`; `word` (default for W) or `int`; `dword`
    /// (default for D), `dint` or `real`. `bool` for a bit address. The `DB1,REAL0` form names
    /// the type itself.
    #[serde(default, rename = "type")]
    pub dtype: Option<Located<String>>,
    /// Engineering value = raw * scale + offset. Default 1.
    #[serde(default = "default_scale")]
    pub scale: f64,
    /// Added after scaling. Default 0.
    #[serde(default)]
    pub offset: f64,
    /// Round published values to this many decimals. Default: from `scale` for integer types.
    #[serde(default)]
    pub decimals: Option<u8>,
    /// Engineering unit, e.g. `cm`, `°C`; shown in JSON payloads.
    #[serde(default)]
    pub unit: Option<String>,
    /// Allow commands to write this point (by WriteVar, then read back). Default false. Not for
    /// STRING points.
    #[serde(default)]
    pub writable: Located<bool>,
    /// Lowest value a command may write, in engineering units.
    #[serde(default)]
    pub min: Option<f64>,
    /// Highest value a command may write, in engineering units.
    #[serde(default)]
    pub max: Option<f64>,
    /// How to publish this point. Not published when absent.
    #[serde(default)]
    pub publish: Option<Located<RawPublish>>,
}
