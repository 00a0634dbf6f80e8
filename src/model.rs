//! The checked model: what the YAML means, compiled once at load time.
//!
//! Pure data. Decoders are chosen, scale factors and topics are fixed, and every device's
//! read plan is built. Nothing here is re-parsed on the hot path. Must not import anything
//! above it but the vocabulary: the plain settings other rooms read (`StoreSettings`,
//! `TlsSettings`) and the `Issue` a model carries live here for that reason.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::vocabulary::{DataType, DeviceId, Order, PointId, Qos, ReadPlan, RegisterKind, Slot};

#[derive(Debug, Clone)]
pub struct Model {
    pub mqtt: MqttSettings,
    /// Where to serve Prometheus `/metrics`; `None` means off.
    pub metrics_listen: Option<SocketAddr>,
    pub links: Vec<Link>,
    pub devices: Vec<Device>,
    pub points: Vec<Point>,
    pub derived: Vec<Derived>,
    pub commands: Vec<Command>,
    pub groups: Vec<Group>,
    /// Home Assistant discovery; `None` when the section is absent.
    pub homeassistant: Option<HomeAssistant>,
    /// The Sparkplug B edge node; `None` when the mapping has no `sparkplug` section.
    pub sparkplug: Option<Sparkplug>,
    /// Who this gateway is in a fleet: the configuration id and the host name.
    pub identity: Identity,
    /// What `check` warns about: allowed, but probably not what was meant.
    pub warnings: Vec<Issue>,
    /// The included files and the templates the devices were made from (issue 18), for
    /// `check`. Not read at run time.
    pub library: Library,
    /// The web console; `None` when the mapping has no `web` section.
    pub web: Option<Web>,
}

/// Where a mapping's templates came from and who used them: what `check` shows.
#[derive(Debug, Clone, Default)]
pub struct Library {
    /// Every included file, in the order it was first read (absolute or as written).
    pub includes: Vec<PathBuf>,
    /// Every template, in the order it was read.
    pub templates: Vec<TemplateInfo>,
    /// For each device made from a template that changed it: (device, the template points it
    /// dropped, the template points it overrides), each in the order the device names them.
    pub changes: Vec<(String, Vec<String>, Vec<String>)>,
}

/// One template of a [`Library`].
#[derive(Debug, Clone)]
pub struct TemplateInfo {
    pub name: String,
    /// The file it is written in and its line there.
    pub file: PathBuf,
    pub line: u32,
    /// How many points it has.
    pub points: usize,
    /// The devices made from it, in file order.
    pub used_by: Vec<String>,
}

/// What tells one gateway of a fleet from another, and whether it runs the expected mapping.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Identity {
    /// The configuration id: 12 hex digits of a SHA-256 of the mapping as parsed (see
    /// `config::config_id`); equal for equal mappings (after variables), whatever the comments
    /// and layout.
    pub config_id: Arc<str>,
    /// The host name: `${HOSTNAME}` from the environment, else the kernel's.
    pub hostname: Arc<str>,
}

/// `web`, checked: the console's listener, who may use it, and whether it may write.
#[derive(Debug, Clone, PartialEq)]
pub struct Web {
    pub listen: SocketAddr,
    /// Empty: no authentication (only allowed on loopback).
    pub users: Vec<WebUser>,
    /// Where the users came from, for `check`.
    pub users_file: Option<PathBuf>,
    /// Certificate chain and key (PEM) for HTTPS.
    pub tls: Option<(PathBuf, PathBuf)>,
    pub allow_writes: bool,
    /// Samples kept per numeric value for the trends.
    pub trend_samples: usize,
}

/// What a console user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebRole {
    /// See everything; write nothing.
    View,
    /// Also write, when `allow_writes` is on.
    Operate,
}

/// How a console user proves who they are.
#[derive(Clone, PartialEq, Eq)]
pub enum WebSecret {
    /// An argon2 hash in PHC string format (`$argon2id$v=19$...`), for a password.
    Password(String),
    /// The SHA-256 of a bearer token.
    Token([u8; 32]),
}

impl std::fmt::Debug for WebSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WebSecret::Password(_) => f.write_str("Password(***)"),
            WebSecret::Token(_) => f.write_str("Token(***)"),
        }
    }
}

/// One entry of `web.users_file`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebUser {
    pub name: Arc<str>,
    pub role: WebRole,
    pub secret: WebSecret,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupFormat {
    Simple,
    Detailed,
    PerPoint,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aggregate {
    Mean,
    Last,
    Min,
    Max,
    Sum,
}

/// `homeassistant`, checked: where discovery goes, and what each device and point adds to
/// what is inferred from the mapping.
#[derive(Debug, Clone)]
pub struct HomeAssistant {
    /// Home Assistant's discovery prefix (`homeassistant`).
    pub discovery_prefix: Arc<str>,
    /// The gateway's id: `[a-zA-Z0-9_-]+`.
    pub node_id: Arc<str>,
    /// States go to `<state_topic>/<device>/<point>`.
    pub state_topic: Arc<str>,
    /// One per device, by `DeviceId`.
    pub devices: Vec<HaDevice>,
    /// One per point, by `PointId`.
    pub points: Vec<HaPoint>,
}

impl HomeAssistant {
    /// The state topic of a point or derived value shown in Home Assistant.
    #[must_use]
    pub fn state_topic(&self, device: &str, name: &str) -> Arc<str> {
        Arc::from(format!("{}/{device}/{name}", self.state_topic))
    }
}

/// `s` with every character Home Assistant does not allow in a discovery id (only
/// `[a-zA-Z0-9_-]`, MQTT integration, "Discovery topic") replaced by `_`.
#[must_use]
pub fn discovery_id(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// A device's metadata for Home Assistant.
#[derive(Debug, Clone, Default)]
pub struct HaDevice {
    pub manufacturer: Option<String>,
    pub model: Option<String>,
    /// The point holding the serial number.
    pub serial: Option<PointId>,
    /// The point holding the firmware version.
    pub sw_version: Option<PointId>,
}

/// A point's overrides. `Some(None)` removes an inferred class.
#[derive(Debug, Clone, Default)]
pub struct HaPoint {
    pub device_class: Option<Option<Arc<str>>>,
    pub state_class: Option<Option<Arc<str>>>,
    pub entity_category: Option<Arc<str>>,
    pub exclude: bool,
}

/// One message per source per send interval.
#[derive(Debug, Clone)]
pub struct Group {
    pub source: Arc<str>,
    pub format: GroupFormat,
    pub interval: Duration,
    /// Simple: the topic; per-point: the prefix; detailed: the measurement topic.
    pub topic: Arc<str>,
    /// Detailed only.
    pub configuration_topic: Option<Arc<str>>,
    pub qos: Qos,
    pub retain: bool,
    pub configuration_qos: Qos,
    /// Retain the detailed configuration (default true).
    pub configuration_retain: bool,
    /// The `configuration` object of the detailed format (also the input of the id).
    pub configuration: serde_json::Value,
    /// SHA-1 (40 hex) of the canonical configuration; see `mappings::group::configuration_id`.
    pub id: String,
    pub values: Vec<GroupValue>,
    /// Devices whose points the group uses.
    pub devices: Vec<DeviceId>,
}

#[derive(Debug, Clone)]
pub struct GroupValue {
    pub key: Arc<str>,
    pub point: PointId,
    pub aggregate: Aggregate,
    /// Multiply the point's engineering value by this (unit conversion).
    pub factor: f64,
    pub unit: Option<Arc<str>>,
    pub decimals: u8,
}

#[derive(Debug, Clone)]
pub struct MqttSettings {
    /// The first broker (`brokers[0]`).
    pub host: String,
    pub port: u16,
    /// Every broker, in the order they are tried (`mqtt.hosts`), as (host, port); one entry
    /// for `mqtt.host`.
    pub brokers: Vec<(String, u16)>,
    pub client_id: String,
    pub keep_alive: Duration,
    /// Retained `online` / `offline` (the last will).
    pub status_topic: Arc<str>,
    pub buffer: BufferSettings,
    /// MQTT 5 instead of 3.1.1.
    pub v5: bool,
    pub tls: Option<TlsSettings>,
    pub credentials: Option<Credentials>,
    pub encryption: Option<Encryption>,
}

impl MqttSettings {
    /// Each broker as `host:port`, an IPv6 address in brackets (`[::1]:1883`), in the order
    /// they are tried: for logs, `check` and the identity message.
    pub fn broker_names(&self) -> Vec<String> {
        self.brokers
            .iter()
            .map(|(host, port)| broker_name(host, *port))
            .collect()
    }
}

/// `host:port`, with an IPv6 address in brackets (RFC 3986 section 3.2.2).
pub fn broker_name(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// A secret: compared and cloned, never shown (`Debug` prints `***`).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// A 32-byte AES key: compared and cloned, never shown (`Debug` prints `***`).
#[derive(Clone, PartialEq, Eq)]
pub struct Key(pub [u8; 32]);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// Where the broker password came from (shown by `check`; the password never is).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PasswordSource {
    None,
    File(std::path::PathBuf),
    Env(String),
    Inline,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: Option<Secret>,
    pub source: PasswordSource,
}

/// End-to-end payload encryption: the key, and the topic filters it applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encryption {
    pub key: Key,
    pub key_file: std::path::PathBuf,
    pub topics: Vec<Arc<str>>,
}

impl Encryption {
    /// Whether `topic`'s payloads are encrypted (and, for commands, must authenticate).
    pub fn covers(&self, topic: &str, status_topic: &str) -> bool {
        let status = topic == status_topic
            || topic
                .strip_prefix(status_topic)
                .is_some_and(|rest| rest.starts_with('/'));
        !status
            && self
                .topics
                .iter()
                .any(|f| crate::vocabulary::topic_matches(f, topic))
    }
}

/// The outbound buffer (see `outputs::store`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BufferSettings {
    pub store: StoreSettings,
    /// How often the disk buffer is fsynced.
    pub sync_interval: Duration,
}

/// How a link reaches its devices.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LinkSpec {
    /// Modbus TCP (MBAP framing).
    Tcp { host: String, port: u16 },
    /// Modbus RTU on a serial port.
    Rtu(SerialSpec),
    /// Modbus RTU framing over a TCP socket.
    RtuOverTcp { host: String, port: u16 },
    /// S7comm PUT/GET over ISO-on-TCP to a Siemens S7 PLC: one connection for one device
    /// (see [`S7Link`]).
    S7(Arc<S7Link>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Parity {
    None,
    Even,
    Odd,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SerialSpec {
    pub path: String,
    pub baud: u32,
    pub data_bits: u8,
    pub parity: Parity,
    pub stop_bits: u8,
}

impl SerialSpec {
    /// Bits on the wire per character: start, data, parity, stop.
    pub fn bits_per_char(&self) -> u32 {
        1 + u32::from(self.data_bits)
            + u32::from(self.parity != Parity::None)
            + u32::from(self.stop_bits)
    }
    /// `8E1` style.
    pub fn framing(&self) -> String {
        let p = match self.parity {
            Parity::None => 'N',
            Parity::Even => 'E',
            Parity::Odd => 'O',
        };
        format!("{}{p}{}", self.data_bits, self.stop_bits)
    }
}

impl std::fmt::Display for LinkSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkSpec::Tcp { host, port } => write!(f, "tcp://{host}:{port}"),
            LinkSpec::Rtu(s) => write!(f, "rtu://{} {} {}", s.path, s.baud, s.framing()),
            LinkSpec::RtuOverTcp { host, port } => write!(f, "rtu+tcp://{host}:{port}"),
            LinkSpec::S7(s) => write!(f, "s7://{}:{}", s.host, s.port),
        }
    }
}

/// How strictly a Modbus TCP reply's transaction id must match the request's (Modbus
/// Messaging on TCP/IP Implementation Guide V1.0b, 3.1.3: the server copies it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum TidPolicy {
    /// Only our own id (stale frames with older ids are skipped).
    #[default]
    Strict,
    /// Also id 0 and our id with its two bytes swapped (devices that do not echo it properly).
    Lenient,
}

/// Which function codes write one coil or one register.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum WriteFunction {
    /// FC 5 / FC 6; after ILLEGAL FUNCTION, FC 15 / FC 16 from then on (remembered per device
    /// until the link task restarts).
    #[default]
    Auto,
    /// Always FC 5 / FC 6.
    Single,
    /// Always FC 15 / FC 16 (devices that implement only the "multiple" functions).
    Multiple,
}

/// One link: a TCP connection or an RTU bus, owned by one task.
#[derive(Debug, Clone)]
pub struct Link {
    /// The bus name, or `tcp://host:port`.
    pub name: Arc<str>,
    pub spec: LinkSpec,
    /// Silence kept before every request.
    pub frame_gap: Duration,
    /// Extra delay before every request.
    pub turnaround: Duration,
    /// Consecutive failed polls before a device is quarantined.
    pub quarantine_after: u32,
    /// Longest poll spacing of a quarantined device.
    pub quarantine_max: Duration,
    /// Modbus TCP: how strictly transaction ids must match.
    pub tid: TidPolicy,
    /// RTU: the adapter echoes each request before the reply; the echo is removed.
    pub echo: bool,
    /// Silence after opening the connection before the first request (devices that swallow
    /// requests sent right after a connect): the largest of its devices' `connect_delay`.
    pub connect_delay: Duration,
    pub devices: Vec<DeviceId>,
}

#[derive(Debug, Clone)]
pub struct Device {
    pub name: Arc<str>,
    /// Index into `Model::links`.
    pub link: usize,
    pub unit: u8,
    pub timeout: Duration,
    pub poll_interval: Duration,
    /// Least time between the end of one exchange and the next request to this device.
    pub request_delay: Duration,
    /// Which function codes write one coil or register.
    pub write_function: WriteFunction,
    /// Most registers (FC 3/4) and bits (FC 1/2) one read may ask for.
    pub max_registers: u16,
    pub max_bits: u16,
    pub status_topic: Arc<str>,
    pub plan: ReadPlan,
    /// The points of this device, in plan-slot order (`plan.slots[i]` belongs to `points[i]`).
    pub points: Vec<PointId>,
}

#[derive(Debug, Clone)]
pub struct Point {
    pub device: DeviceId,
    pub name: Arc<str>,
    /// `device.point`, as used in references, logs and acks.
    pub full_name: Arc<str>,
    pub kind: RegisterKind,
    pub address: u16,
    pub dtype: DataType,
    pub order: Order,
    pub scale: f64,
    pub offset: f64,
    /// Round published values to this many decimals.
    pub decimals: Option<u8>,
    /// Raw register contents that mean "no value" (as `mappings::codec::raw_bits`
    /// gives them, e.g. `0x8000` for an i16): such a read is bad, like NaN.
    pub no_value: Vec<u64>,
    pub unit: Option<Arc<str>>,
    pub write: Option<WriteLimits>,
    pub publish: Option<PublishRule>,
    pub slot: Slot,
}

impl Point {
    /// True when neither scale nor offset changes the raw value.
    pub fn is_unscaled(&self) -> bool {
        self.scale == 1.0 && self.offset == 0.0
    }
}

/// Limits for writes, in engineering units.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WriteLimits {
    pub min: f64,
    pub max: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishMode {
    Interval,
    OnChange,
    Both,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Plain,
    Json,
}

#[derive(Debug, Clone)]
pub struct PublishRule {
    pub topic: Arc<str>,
    pub qos: Qos,
    pub retain: bool,
    pub mode: PublishMode,
    pub interval: Duration,
    pub deadband: f64,
    pub max_silence: Option<Duration>,
    pub format: Format,
}

/// A value computed from other points without scripting.
#[derive(Debug, Clone)]
pub struct Derived {
    pub name: Arc<str>,
    /// Bit i of the result is the boolean point `sources[i]`.
    pub pack_bits: Vec<PointId>,
    pub publish: PublishRule,
}

#[derive(Debug, Clone)]
pub struct Command {
    pub topic: Arc<str>,
    pub ack_topic: Arc<str>,
    pub qos: Qos,
    pub action: CommandAction,
}

#[derive(Debug, Clone)]
pub enum CommandAction {
    /// Fixed payloads, each to a list of (point, engineering value) writes.
    Table(HashMap<String, Vec<(PointId, f64)>>),
    /// The payload is a number (or `{"value": n}`) for one writable point.
    Value(PointId),
}

impl Model {
    /// Every topic the gateway subscribes to, with its QoS.
    pub fn subscriptions(&self) -> Vec<(Arc<str>, Qos)> {
        let mut out: Vec<(Arc<str>, Qos)> = Vec::new();
        for c in &self.commands {
            if !out.iter().any(|(t, _)| *t == c.topic) {
                out.push((c.topic.clone(), c.qos));
            }
        }
        out
    }

    /// Every topic the gateway publishes to.
    pub fn publish_topics(&self) -> Vec<Arc<str>> {
        let mut out = vec![self.mqtt.status_topic.clone()];
        out.extend(self.devices.iter().map(|d| d.status_topic.clone()));
        out.extend(
            self.points
                .iter()
                .filter_map(|p| p.publish.as_ref().map(|r| r.topic.clone())),
        );
        out.extend(self.derived.iter().map(|d| d.publish.topic.clone()));
        for g in &self.groups {
            // Groups may share a topic (one merged message): list it once.
            let mut add = |t: Arc<str>| {
                if !out.contains(&t) {
                    out.push(t);
                }
            };
            if let Some(c) = &g.configuration_topic {
                add(c.clone());
            }
            match g.format {
                GroupFormat::PerPoint => g
                    .values
                    .iter()
                    .for_each(|v| add(Arc::from(format!("{}/{}", g.topic, v.key)))),
                _ => add(g.topic.clone()),
            }
        }
        for c in &self.commands {
            if !out.contains(&c.ack_topic) {
                out.push(c.ack_topic.clone());
            }
        }
        out
    }
}

/// The Sparkplug B edge node (Sparkplug 3.0, namespace `spBv1.0`), checked.
#[derive(Debug, Clone)]
pub struct Sparkplug {
    pub group_id: Arc<str>,
    pub edge_node_id: Arc<str>,
    /// Nothing is born until `spBv1.0/STATE/<id>` says online (tck-id-message-flow-edge-node-birth-publish-phid-wait).
    pub primary_host_id: Option<Arc<str>>,
    /// One per mapped device, in device order.
    pub devices: Vec<SparkplugDevice>,
    /// Where the bdSeq counter lives (`<dir>/sparkplug-bdseq`): the buffer's directory.
    pub state_dir: PathBuf,
    /// Most values kept for store-and-forward while no session is born (the buffer's
    /// `max_messages`); past it the oldest are dropped and counted.
    pub history_max: usize,
    /// Whether the node is born now (its NBIRTH went out on this connection and the primary
    /// host, if any, is online): set by the profile, read by the executor, which refuses a
    /// DCMD while it is false (the sender can only know metrics from an old birth). A fresh
    /// flag per compiled model.
    pub born: Arc<std::sync::atomic::AtomicBool>,
}

impl Sparkplug {
    /// After a reload: every metric that the old mapping had under the same device id, name
    /// and datatype keeps its old alias; the others get aliases above every old one. A host
    /// that missed the new DBIRTH (QoS 0) and writes by alias then reaches the metric it
    /// means, or one that does not exist, never another point.
    pub fn keep_aliases(&mut self, old: &Sparkplug) {
        let known: std::collections::HashMap<(&str, &str), (u64, SparkplugType)> = old
            .devices
            .iter()
            .flat_map(|d| {
                d.metrics
                    .iter()
                    .map(move |m| ((&*d.device_id, &*m.name), (m.alias, m.datatype)))
            })
            .collect();
        let mut next = old
            .devices
            .iter()
            .flat_map(|d| d.metrics.iter().map(|m| m.alias))
            .max()
            .unwrap_or(0)
            + 1;
        for d in &mut self.devices {
            for m in &mut d.metrics {
                match known.get(&(&*d.device_id, &*m.name)) {
                    Some(&(alias, dt)) if dt == m.datatype => m.alias = alias,
                    _ => {
                        m.alias = next;
                        next += 1;
                    }
                }
            }
        }
    }
}

/// A Sparkplug device: a mapped device and its metrics.
#[derive(Debug, Clone)]
pub struct SparkplugDevice {
    pub device: DeviceId,
    pub device_id: Arc<str>,
    pub metrics: Vec<SparkplugMetric>,
}

/// Where a metric's value comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MetricSource {
    Point(PointId),
    /// Index into `Model::derived`.
    Derived(usize),
}

/// One metric of a Sparkplug device.
#[derive(Debug, Clone)]
pub struct SparkplugMetric {
    /// The point name, or its `metric` name (folders with `/`).
    pub name: Arc<str>,
    /// Unique across the edge node (Sparkplug 3.0, "Aliases": aliases are unique per
    /// edge node); 0 is the node's `Node Control/Rebirth`.
    pub alias: u64,
    pub source: MetricSource,
    pub datatype: SparkplugType,
}

/// The Sparkplug B datatypes fieldgate publishes, with their numbers (Sparkplug 3.0,
/// "Data Types", the `DataType` list of `sparkplug_b.proto`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SparkplugType {
    Int16 = 2,
    Int32 = 3,
    Int64 = 4,
    UInt16 = 6,
    UInt32 = 7,
    UInt64 = 8,
    Float = 9,
    Double = 10,
    Boolean = 11,
    String = 12,
}

impl SparkplugType {
    /// The name used in the specification and by `check`.
    pub const fn name(self) -> &'static str {
        match self {
            SparkplugType::Int16 => "Int16",
            SparkplugType::Int32 => "Int32",
            SparkplugType::Int64 => "Int64",
            SparkplugType::UInt16 => "UInt16",
            SparkplugType::UInt32 => "UInt32",
            SparkplugType::UInt64 => "UInt64",
            SparkplugType::Float => "Float",
            SparkplugType::Double => "Double",
            SparkplugType::Boolean => "Boolean",
            SparkplugType::String => "String",
        }
    }

    /// The metric datatype of a point: the register type when unscaled, `Double` when scale
    /// or offset make it a fraction (a float register scaled stays a `Double`).
    pub fn of_point(p: &Point) -> SparkplugType {
        use crate::vocabulary::DataType as D;
        match p.dtype {
            D::Bool | D::Bit(_) => SparkplugType::Boolean,
            D::String(_) => SparkplugType::String,
            _ if !p.is_unscaled() => SparkplugType::Double,
            D::U16 => SparkplugType::UInt16,
            D::I16 => SparkplugType::Int16,
            D::U32 => SparkplugType::UInt32,
            D::I32 => SparkplugType::Int32,
            D::U64 => SparkplugType::UInt64,
            D::I64 => SparkplugType::Int64,
            D::F32 => SparkplugType::Float,
            D::F64 => SparkplugType::Double,
        }
    }
}

impl Sparkplug {
    /// `spBv1.0/<group>/<type>/<edge node>`.
    pub fn node_topic(&self, kind: &str) -> String {
        format!("spBv1.0/{}/{kind}/{}", self.group_id, self.edge_node_id)
    }
    /// `spBv1.0/<group>/<type>/<edge node>/<device>`.
    pub fn device_topic(&self, kind: &str, device_id: &str) -> String {
        format!(
            "spBv1.0/{}/{kind}/{}/{device_id}",
            self.group_id, self.edge_node_id
        )
    }
    /// `spBv1.0/STATE/<primary host>`, when there is one.
    pub fn state_topic(&self) -> Option<String> {
        self.primary_host_id
            .as_ref()
            .map(|h| format!("spBv1.0/STATE/{h}"))
    }
}

/// One problem in a mapping file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    pub line: u32,
    pub col: u32,
    /// Path of the key, e.g. `devices[tower].points[level].address`.
    pub path: String,
    pub message: String,
    /// The file the problem is in when it is not the mapping file itself: an included file.
    pub file: Option<PathBuf>,
}

/// Bounds and disk settings of the buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreSettings {
    /// The segment directory; `None` keeps the buffer in memory only.
    pub path: Option<PathBuf>,
    pub max_rows: usize,
    pub max_bytes: usize,
    /// A segment file is closed and a new one started past this size.
    pub segment_bytes: usize,
}

impl StoreSettings {
    /// Segments of a quarter of the byte bound, between 64 KiB and 8 MiB: small enough that
    /// acknowledged data leaves the disk soon, large enough for few files.
    pub fn segment_bytes_for(max_bytes: usize) -> usize {
        (max_bytes / 4).clamp(64 * 1024, 8 * 1024 * 1024)
    }
}

/// Where trust in the broker's certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// The operating system's CA store.
    System,
    /// CA certificates in a PEM file.
    CaFile(PathBuf),
    /// Exactly these leaf certificates (SHA-256 of the DER), for self-signed brokers. The
    /// handshake signature is still verified; chain, name and dates are not.
    Pins(Vec<[u8; 32]>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersion {
    V1_2,
    V1_3,
}

/// `mqtt.tls`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    pub trust: Trust,
    /// Client certificate chain and key (PEM) for mutual TLS.
    pub client: Option<(PathBuf, PathBuf)>,
    pub min_version: TlsVersion,
    /// The name the broker's certificate must carry, when it is not the host we connect to.
    pub server_name: Option<String>,
    /// Where `tls inspect --pin` writes accepted pins (also read into `Trust::Pins`).
    pub pin_file: Option<PathBuf>,
}

// ---- Siemens S7 (issue 19) -------------------------------------------------------------------
//
// An S7 device (`s7_devices` in the mapping) is a `Device` with its own `Link`, whose spec is
// `LinkSpec::S7`. Its points are ordinary `Point`s: the S7 value is handed to the engine as the
// registers a Modbus device would hold for it (see `vocabulary::s7`), so `kind` is `Coil` for a
// BOOL and `HoldingRegister` for every other type, `address` is the byte offset, `order` is
// `ABCD` (S7 is big-endian), and `Device::plan` has one request per point (request `i` is
// point `i` of the device). The real reads are the S7 plan here.

/// The connection type of an S7 link: the high byte of the remote TSAP (Snap7
/// `CONNTYPE_PG`/`OP`/`S7_BASIC`). PG is what programming software uses; OP and basic use
/// the CPU's other connection resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum S7ConnectionType {
    Pg = 1,
    Op = 2,
    Basic = 3,
}

/// An S7 link, checked: where the CPU is, the TSAPs, the PDU size asked for, and what its one
/// device reads.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct S7Link {
    pub host: String,
    /// ISO-on-TCP port, 102 by default.
    pub port: u16,
    pub local_tsap: u16,
    pub remote_tsap: u16,
    /// `rack 0 slot 1 (PG)` or `TSAP 0x0100 -> 0x0102`, for `check` and logs.
    pub endpoint: String,
    /// The PDU size asked for at connect (the CPU may grant less; the reads are then planned
    /// again for what it granted).
    pub pdu: u16,
    /// Largest hole (bytes) bridged to merge two values into one item.
    pub max_gap: u16,
    /// The device's points, in `Device::points` order: name and S7 address.
    pub points: Vec<(Arc<str>, crate::vocabulary::s7::S7Address)>,
    /// The reads at the requested PDU size.
    pub plan: crate::vocabulary::s7::S7ReadPlan,
}
