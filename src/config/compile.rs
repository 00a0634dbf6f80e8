//! From the raw file to the checked [`Model`]: resolve references, choose decoders, plan reads,
//! and collect every problem with its location and key path.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::Issue;
use super::raw::*;
use super::yaml::Located;
use crate::mappings::plan::{self, Slot, Span};
use crate::mappings::{DataType, Qos, RegisterKind};
use crate::model::*;
use crate::outputs::store::StoreSettings;
use crate::outputs::tls::{self, TlsSettings};

struct Ctx {
    issues: Vec<Issue>,
    /// Allowed, but probably not what was meant: `check` prints them, the gateway logs them.
    warnings: Vec<Issue>,
}

impl Ctx {
    fn err<T>(&mut self, at: &Located<T>, path: impl Into<String>, message: impl Into<String>) {
        self.err_at(at.line, at.col, path, message);
    }
    fn warn<T>(&mut self, at: &Located<T>, path: impl Into<String>, message: impl Into<String>) {
        self.warnings.push(Issue {
            line: at.line,
            col: at.col,
            path: path.into(),
            message: message.into(),
        });
    }
    fn err_at(&mut self, line: u32, col: u32, path: impl Into<String>, message: impl Into<String>) {
        self.issues.push(Issue {
            line,
            col,
            path: path.into(),
            message: message.into(),
        });
    }
}

fn qos(ctx: &mut Ctx, q: u8, line: u32, col: u32, path: &str) -> Qos {
    match q {
        0 => Qos::AtMostOnce,
        1 => Qos::AtLeastOnce,
        2 => Qos::ExactlyOnce,
        _ => {
            ctx.err_at(
                line,
                col,
                format!("{path}.qos"),
                format!("qos must be 0, 1 or 2, not {q}"),
            );
            Qos::AtLeastOnce
        }
    }
}

fn compile_tls(ctx: &mut Ctx, t: &RawTls, at: &Located<String>) -> Option<TlsSettings> {
    use std::path::PathBuf;
    let before = ctx.issues.len();
    let file = |ctx: &mut Ctx, f: &Located<String>, path: &str| -> PathBuf {
        let p = PathBuf::from(&f.value);
        if let Err(e) = std::fs::metadata(&p) {
            ctx.err(f, path, format!("cannot read {}: {e}", p.display()));
        }
        p
    };
    let mut pins = Vec::new();
    for (i, p) in t.pin_sha256.iter().enumerate() {
        match tls::parse_pin(p) {
            Ok(pin) => pins.push(pin),
            Err(e) => ctx.err(p, format!("mqtt.tls.pin_sha256[{i}]"), e),
        }
    }
    let pin_file = t.pin_file.as_ref().map(|f| {
        let p = PathBuf::from(&f.value);
        match tls::read_pin_file(&p) {
            Ok(more) => pins.extend(more),
            Err(e) => ctx.err(f, "mqtt.tls.pin_file", e),
        }
        p
    });
    let pinned = !t.pin_sha256.is_empty() || t.pin_file.is_some();
    let trust = match &t.ca_file {
        Some(ca) if pinned => {
            ctx.err(
                ca,
                "mqtt.tls.ca_file",
                "ca_file and pins (pin_sha256, pin_file) exclude each other: a pinned broker is trusted by its certificate alone",
            );
            tls::Trust::System
        }
        Some(ca) => tls::Trust::CaFile(file(ctx, ca, "mqtt.tls.ca_file")),
        None if pinned => tls::Trust::Pins(pins),
        None => tls::Trust::System,
    };
    let client = match (&t.client_cert, &t.client_key) {
        (Some(c), Some(k)) => Some((
            file(ctx, c, "mqtt.tls.client_cert"),
            file(ctx, k, "mqtt.tls.client_key"),
        )),
        (Some(c), None) => {
            ctx.err(c, "mqtt.tls.client_key", "client_cert needs client_key");
            None
        }
        (None, Some(k)) => {
            ctx.err(k, "mqtt.tls.client_cert", "client_key needs client_cert");
            None
        }
        (None, None) => None,
    };
    let settings = TlsSettings {
        trust,
        client,
        min_version: if t.min_version.is_some_and(|v| v.is_1_3()) {
            tls::TlsVersion::V1_3
        } else {
            tls::TlsVersion::V1_2
        },
        server_name: t.server_name.as_ref().map(|n| n.value.clone()),
        pin_file,
    };
    if ctx.issues.len() > before {
        return None;
    }
    // Load everything now, so a bad file is reported here and not at the first connect.
    if let Err(e) = tls::client_config(&settings) {
        ctx.err(at, "mqtt.tls", e);
        return None;
    }
    Some(settings)
}

fn compile_credentials(
    ctx: &mut Ctx,
    m: &RawMqtt,
    env: &HashMap<String, String>,
) -> Option<Credentials> {
    let sources: Vec<&Located<String>> = [&m.password_file, &m.password_env, &m.password]
        .into_iter()
        .flatten()
        .collect();
    if sources.len() > 1 {
        ctx.err(
            sources[1],
            "mqtt.password",
            "give one of password_file, password_env and password",
        );
        return None;
    }
    let Some(user) = &m.username else {
        if let Some(s) = sources.first() {
            ctx.err(*s, "mqtt.username", "a password needs a username");
        }
        return None;
    };
    let (password, source) = if let Some(f) = &m.password_file {
        let path = std::path::PathBuf::from(&f.value);
        match std::fs::read(&path) {
            Ok(bytes) => {
                let first = bytes.split(|&b| b == b'\n').next().unwrap_or_default();
                let first = first.strip_suffix(b"\r").unwrap_or(first).to_vec();
                (Some(Secret(first)), PasswordSource::File(path))
            }
            Err(e) => {
                ctx.err(
                    f,
                    "mqtt.password_file",
                    format!("cannot read {}: {e}", path.display()),
                );
                return None;
            }
        }
    } else if let Some(v) = &m.password_env {
        match env.get(&v.value) {
            Some(p) => (
                Some(Secret(p.clone().into_bytes())),
                PasswordSource::Env(v.value.clone()),
            ),
            None => {
                ctx.err(
                    v,
                    "mqtt.password_env",
                    format!("environment variable {} is not set", v.value),
                );
                return None;
            }
        }
    } else if let Some(p) = &m.password {
        (
            Some(Secret(p.value.clone().into_bytes())),
            PasswordSource::Inline,
        )
    } else {
        (None, PasswordSource::None)
    };
    Some(Credentials {
        username: user.value.clone(),
        password,
        source,
    })
}

/// A 32-byte key from a file: raw bytes, or base64 or hex text.
pub fn read_key_file(path: &std::path::Path) -> Result<[u8; 32], String> {
    use base64::Engine as _;
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if let Ok(k) = <[u8; 32]>::try_from(bytes.as_slice()) {
        return Ok(k);
    }
    let text = String::from_utf8_lossy(&bytes);
    let text = text.trim();
    let decoded = if text.len() == 64 && text.chars().all(|c| c.is_ascii_hexdigit()) {
        (0..32)
            .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok())
            .collect::<Option<Vec<u8>>>()
    } else {
        base64::engine::general_purpose::STANDARD.decode(text).ok()
    };
    decoded
        .and_then(|d| <[u8; 32]>::try_from(d.as_slice()).ok())
        .ok_or_else(|| {
            format!(
                "{}: not a 32-byte key (raw, base64 or 64 hex digits)",
                path.display()
            )
        })
}

fn compile_encryption(ctx: &mut Ctx, e: &RawPayloadEncryption) -> Option<Encryption> {
    let path = std::path::PathBuf::from(&e.key_file.value);
    let key = match read_key_file(&path) {
        Ok(k) => k,
        Err(msg) => {
            ctx.err(&e.key_file, "mqtt.payload_encryption.key_file", msg);
            return None;
        }
    };
    let topics = match &e.topics {
        None => vec![Arc::from("#")],
        Some(list) if list.is_empty() => {
            ctx.err(
                &e.key_file,
                "mqtt.payload_encryption.topics",
                "topics must name at least one filter",
            );
            return None;
        }
        Some(list) => list.iter().map(|t| Arc::from(t.value.as_str())).collect(),
    };
    Some(Encryption {
        key: Key(key),
        key_file: path,
        topics,
    })
}

/// A topic we publish to or subscribe on must be concrete: no wildcards, not empty.
fn check_topic(ctx: &mut Ctx, t: &Located<String>, path: &str) -> Arc<str> {
    if t.is_empty() {
        ctx.err(t, path, "topic must not be empty");
    } else if t.contains(['+', '#']) {
        ctx.err(
            t,
            path,
            format!(
                "topic `{}` contains a wildcard (+ or #); only concrete topics are allowed here",
                t.value
            ),
        );
    } else if t.contains('\0') {
        ctx.err(t, path, "topic contains a NUL character");
    } else if t.len() > 65_535 {
        ctx.err(t, path, "topic is longer than 65535 bytes");
    }
    Arc::from(t.as_str())
}

fn check_name(ctx: &mut Ctx, n: &Located<String>, path: &str) {
    if n.is_empty() {
        ctx.err(n, path, "name must not be empty");
    } else if n.contains(['/', '+', '#', '.', ' ']) || n.chars().any(char::is_control) {
        ctx.err(
            n,
            path,
            format!(
                "name `{}` must not contain '/', '+', '#', '.', spaces or control characters",
                n.value
            ),
        );
    }
}

fn publish_rule(
    ctx: &mut Ctx,
    p: &Located<RawPublish>,
    path: &str,
    default_interval: Duration,
) -> PublishRule {
    let topic = check_topic(ctx, &p.topic, &format!("{path}.topic"));
    let q = qos(ctx, p.qos, p.line, p.col, path);
    let interval = p.interval.map_or(default_interval, |d| d.0);
    if interval.is_zero() {
        ctx.err(
            p,
            format!("{path}.interval"),
            "interval must be greater than zero",
        );
    }
    if !(p.deadband >= 0.0 && p.deadband.is_finite()) {
        ctx.err(
            p,
            format!("{path}.deadband"),
            "deadband must be a finite number >= 0",
        );
    }
    let mode = match p.mode {
        RawMode::Interval => PublishMode::Interval,
        RawMode::OnChange => PublishMode::OnChange,
        RawMode::Both => PublishMode::Both,
    };
    if mode == PublishMode::Interval && (p.deadband != 0.0 || p.max_silence.is_some()) {
        ctx.err(
            p,
            path,
            "deadband and max_silence apply to mode on_change or both, not interval",
        );
    }
    if matches!(p.max_silence, Some(d) if d.0.is_zero()) {
        ctx.err(
            p,
            format!("{path}.max_silence"),
            "max_silence must be greater than zero",
        );
    }
    PublishRule {
        topic,
        qos: q,
        retain: p.retain,
        mode,
        interval,
        deadband: p.deadband,
        max_silence: p.max_silence.map(|d| d.0),
        format: match p.format {
            RawFormat::Plain => Format::Plain,
            RawFormat::Json => Format::Json,
        },
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

/// Decimals implied by a scale factor: 0.1 -> 1, 0.25 -> 2, 10 -> 0.
fn decimals_of(scale: f64) -> Option<u8> {
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

pub(super) fn compile(
    raw: RawConfig,
    hostname: &str,
    mapping: &std::path::Path,
    state_directory: Option<&std::path::Path>,
    env: &HashMap<String, String>,
) -> Result<Model, Vec<Issue>> {
    let mut ctx = Ctx {
        issues: Vec::new(),
        warnings: Vec::new(),
    };

    // --- mqtt
    let m = &raw.mqtt;
    let status_topic = check_topic(&mut ctx, &m.status_topic, "mqtt.status_topic");
    let buffer_at = m
        .buffer
        .path
        .as_ref()
        .map_or((m.status_topic.line, m.status_topic.col), |p| {
            (p.line, p.col)
        });
    if m.buffer.max_messages == 0 {
        ctx.err_at(
            buffer_at.0,
            buffer_at.1,
            "mqtt.buffer.max_messages",
            "max_messages must be at least 1",
        );
    }
    if m.buffer.max_bytes < 64 * 1024 {
        ctx.err_at(
            buffer_at.0,
            buffer_at.1,
            "mqtt.buffer.max_bytes",
            "max_bytes must be at least 65536",
        );
    }
    if m.buffer.sync_interval.0 < Duration::from_millis(10)
        || m.buffer.sync_interval.0 > Duration::from_secs(60)
    {
        ctx.err_at(
            buffer_at.0,
            buffer_at.1,
            "mqtt.buffer.sync_interval",
            "sync_interval must be between 10ms and 60s",
        );
    }
    let buffer_path = match &m.buffer.path {
        Some(p) if p.value.is_empty() => {
            ctx.err(p, "mqtt.buffer.path", "path must not be empty");
            None
        }
        Some(p) => Some(std::path::PathBuf::from(&p.value)),
        None => state_directory.map(|d| d.join("queue")),
    };
    if m.keep_alive.0 < Duration::from_secs(1) {
        ctx.err(
            &m.status_topic,
            "mqtt.keep_alive",
            "keep_alive must be at least 1s",
        );
    }
    let tls = m
        .tls
        .as_ref()
        .and_then(|t| compile_tls(&mut ctx, t, &m.status_topic));
    let credentials = compile_credentials(&mut ctx, m, env);
    let encryption = m
        .payload_encryption
        .as_ref()
        .and_then(|e| compile_encryption(&mut ctx, e));
    let mqtt = MqttSettings {
        v5: m.protocol.is_some_and(|p| p.is_v5()),
        tls,
        credentials,
        encryption,
        host: m.host.clone(),
        port: m.port,
        client_id: m
            .client_id
            .clone()
            .unwrap_or_else(|| super::default_client_id(hostname, mapping, &m.status_topic.value)),
        keep_alive: m.keep_alive.0,
        status_topic: status_topic.clone(),
        buffer: BufferSettings {
            store: StoreSettings {
                path: buffer_path,
                max_rows: m.buffer.max_messages.max(1),
                max_bytes: m.buffer.max_bytes,
                segment_bytes: StoreSettings::segment_bytes_for(m.buffer.max_bytes),
            },
            sync_interval: m.buffer.sync_interval.0,
        },
    };
    if mqtt.client_id.is_empty() || mqtt.client_id.len() > 65_535 {
        ctx.err(
            &m.status_topic,
            "mqtt.client_id",
            "client_id must be 1-65535 bytes",
        );
    }

    let metrics_listen =
        raw.metrics
            .as_ref()
            .and_then(|mm| match mm.listen.parse::<SocketAddr>() {
                Ok(a) => Some(a),
                Err(_) => {
                    ctx.err(
                        &mm.listen,
                        "metrics.listen",
                        format!("`{}` is not an IP:port address", mm.listen.value),
                    );
                    None
                }
            });

    // --- devices and points
    let mut devices = Vec::new();
    let mut points: Vec<Point> = Vec::new();
    let mut by_name: HashMap<String, usize> = HashMap::new();
    let mut device_names = HashSet::new();
    let mut publish_topics: HashMap<Arc<str>, String> = HashMap::new();
    let mut note_topic = |ctx: &mut Ctx, topic: &Arc<str>, at: (u32, u32), path: &str| {
        if let Some(first) = publish_topics.get(topic) {
            ctx.err_at(
                at.0,
                at.1,
                path,
                format!("topic `{topic}` is already published by {first}"),
            );
        } else {
            publish_topics.insert(topic.clone(), path.to_owned());
        }
    };
    note_topic(
        &mut ctx,
        &status_topic,
        (m.status_topic.line, m.status_topic.col),
        "mqtt.status_topic",
    );

    // --- buses
    let mut links: Vec<Link> = Vec::new();
    let mut bus_index: HashMap<String, (usize, Duration)> = HashMap::new();
    for (bi, b) in raw.buses.iter().enumerate() {
        let bpath = format!(
            "buses[{}]",
            if b.name.is_empty() {
                bi.to_string()
            } else {
                b.name.value.clone()
            }
        );
        check_name(&mut ctx, &b.name, &format!("{bpath}.name"));
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
        let (spec, default_gap) = match (&b.serial, &b.tcp) {
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
                ctx.err(b, &bpath, "a bus needs exactly one of `serial` or `tcp`");
                (
                    LinkSpec::RtuOverTcp {
                        host: String::new(),
                        port: 0,
                    },
                    Duration::ZERO,
                )
            }
        };
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
    let mut devices_units: Vec<u8> = Vec::new();
    let mut device_names_by_id: Vec<String> = Vec::new();

    if raw.devices.is_empty() {
        ctx.err_at(1, 1, "devices", "at least one device is needed");
    }
    for (di, d) in raw.devices.iter().enumerate() {
        let dpath = format!(
            "devices[{}]",
            if d.name.is_empty() {
                di.to_string()
            } else {
                d.name.value.clone()
            }
        );
        check_name(&mut ctx, &d.name, &format!("{dpath}.name"));
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
        let device_id = devices.len();
        let (link, link_timeout) = match (&d.tcp, &d.bus) {
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
                ctx.err(d, &dpath, "a device needs exactly one of `tcp` or `bus`");
                (usize::MAX, Duration::from_secs(1))
            }
        };
        let limit = |ctx: &mut Ctx, v: &Option<Located<u16>>, key: &str, max: u16| -> u16 {
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
        };
        let max_registers = limit(&mut ctx, &d.max_registers, "max_registers", 125);
        let max_bits = limit(&mut ctx, &d.max_bits, "max_bits", 2000);
        if let Some(l) = links.get_mut(link) {
            if let Some(cd) = d.connect_delay {
                l.connect_delay = l.connect_delay.max(cd.0);
            }
            if let Some(&other) = l.devices.iter().find(|&&o| devices_units[o] == d.unit) {
                ctx.err(
                    d,
                    format!("{dpath}.unit"),
                    format!(
                        "unit {} is already used by device `{}` on {}",
                        d.unit, device_names_by_id[other], l.name
                    ),
                );
            }
            l.devices.push(device_id);
        }
        devices_units.push(d.unit);
        device_names_by_id.push(d.name.value.clone());
        let status = match &d.status_topic {
            Some(t) => check_topic(&mut ctx, t, &format!("{dpath}.status_topic")),
            None => Arc::from(format!("{status_topic}/{}", d.name.value)),
        };
        let (sl, sc) = d
            .status_topic
            .as_ref()
            .map_or((d.line, d.col), |t| (t.line, t.col));
        note_topic(
            &mut ctx,
            &status,
            (sl, sc),
            &format!("{dpath}.status_topic"),
        );

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
            check_name(&mut ctx, &p.name, &format!("{ppath}.name"));
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
            let dtype = data_type(&mut ctx, p, &ppath);
            let width = dtype.width();
            let address = match u16::try_from(p.address.value) {
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
            };
            if !p.kind.is_bit() && width > max_registers {
                ctx.err(
                    p,
                    format!("{ppath}.type"),
                    format!(
                        "a {width}-register value cannot be read: the device's max_registers is {max_registers}"
                    ),
                );
            }
            if let Some(hint) = five_digit_register_number(p.kind, p.address.value) {
                ctx.warn(&p.address, format!("{ppath}.address"), hint);
            }
            let no_value = no_value_codes(&mut ctx, p, dtype, &ppath);
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
            let write = if p.writable.value {
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
            };
            let publish = p.publish.as_ref().map(|r| {
                let rule =
                    publish_rule(&mut ctx, r, &format!("{ppath}.publish"), d.poll_interval.0);
                note_topic(
                    &mut ctx,
                    &rule.topic,
                    (r.topic.line, r.topic.col),
                    &format!("{ppath}.publish.topic"),
                );
                rule
            });
            let full_name: Arc<str> = Arc::from(format!("{}.{}", d.name.value, p.name.value));
            by_name.insert(full_name.to_string(), points.len());
            ids.push(points.len());
            spans.push(Span {
                kind: p.kind,
                address,
                width,
            });
            points.push(Point {
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
            });
        }
        let plan = plan::plan_limited(
            &spans,
            d.max_gap,
            plan::Limits {
                registers: max_registers,
                bits: max_bits,
            },
        );
        for (i, &pid) in ids.iter().enumerate() {
            points[pid].slot = plan.slots[i];
        }
        devices.push(Device {
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

    let resolve = |ctx: &mut Ctx, r: &Located<String>, path: &str| -> Option<usize> {
        let found = by_name.get(r.as_str()).copied();
        if found.is_none() {
            ctx.err(
                r,
                path,
                format!("unknown point `{}`; write it as device.point", r.value),
            );
        }
        found
    };

    // --- derived values
    let mut derived = Vec::new();
    let mut derived_names = HashSet::new();
    for (i, dv) in raw.derived.iter().enumerate() {
        let path = format!(
            "derived[{}]",
            if dv.name.is_empty() {
                i.to_string()
            } else {
                dv.name.value.clone()
            }
        );
        check_name(&mut ctx, &dv.name, &format!("{path}.name"));
        if !derived_names.insert(dv.name.value.clone()) {
            ctx.err(
                &dv.name,
                format!("{path}.name"),
                format!("duplicate derived name `{}`", dv.name.value),
            );
        }
        if dv.pack_bits.is_empty() || dv.pack_bits.len() > 63 {
            ctx.err(
                dv,
                format!("{path}.pack_bits"),
                "pack_bits needs 1 to 63 points",
            );
        }
        let mut bits = Vec::new();
        for (bi, r) in dv.pack_bits.iter().enumerate() {
            let bpath = format!("{path}.pack_bits[{bi}]");
            if let Some(pid) = resolve(&mut ctx, r, &bpath) {
                if !matches!(points[pid].dtype, DataType::Bool | DataType::Bit(_)) {
                    ctx.err(
                        r,
                        &bpath,
                        format!("`{}` is not a boolean point (bool or bit)", r.value),
                    );
                }
                bits.push(pid);
            }
        }
        let default_interval = bits.first().map_or(Duration::from_secs(1), |&p| {
            devices[points[p].device].poll_interval
        });
        let rule = publish_rule(
            &mut ctx,
            &dv.publish,
            &format!("{path}.publish"),
            default_interval,
        );
        note_topic(
            &mut ctx,
            &rule.topic,
            (dv.publish.topic.line, dv.publish.topic.col),
            &format!("{path}.publish.topic"),
        );
        derived.push(Derived {
            name: Arc::from(dv.name.as_str()),
            pack_bits: bits,
            publish: rule,
        });
    }

    // --- groups
    let mut groups = Vec::new();
    for (gi, g) in raw.groups.iter().enumerate() {
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
        let need = |ctx: &mut Ctx, t: &Option<Located<String>>, key: &str| -> Option<Arc<str>> {
            match t {
                Some(t) => Some(check_topic(ctx, t, &format!("{gpath}.{key}"))),
                None => {
                    ctx.err(
                        g,
                        &gpath,
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
                forbid(&mut ctx, &g.topic, "topic");
                (
                    need(&mut ctx, &g.measurement_topic, "measurement_topic"),
                    need(&mut ctx, &g.configuration_topic, "configuration_topic"),
                )
            }
            _ => {
                forbid(&mut ctx, &g.measurement_topic, "measurement_topic");
                forbid(&mut ctx, &g.configuration_topic, "configuration_topic");
                (need(&mut ctx, &g.topic, "topic"), None)
            }
        };
        let topic = topic.unwrap_or_else(|| Arc::from(""));
        if let Some(ct) = &configuration_topic {
            note_topic(
                &mut ctx,
                ct,
                (g.line, g.col),
                &format!("{gpath}.configuration_topic"),
            );
        }
        let q = qos(&mut ctx, g.qos, g.line, g.col, &gpath);
        let cq = qos(
            &mut ctx,
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
            let Some(pid) = resolve(&mut ctx, &v.point, &format!("{vpath}.point")) else {
                continue;
            };
            let p = &points[pid];
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
            let (unit, factor) = match (&v.unit, &p.unit) {
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
            };
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
                    note_topic(
                        &mut ctx,
                        &t,
                        (g.line, g.col),
                        &format!("{gpath}.values[{}]", v.key),
                    );
                }
            }
            _ => note_topic(&mut ctx, &topic, (g.line, g.col), &format!("{gpath}.topic")),
        }
        groups.push(Group {
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
        });
    }

    // --- commands
    let mut commands = Vec::new();
    let mut seen: HashMap<(Arc<str>, Option<String>), String> = HashMap::new();
    for (ci, c) in raw.commands.iter().enumerate() {
        let path = format!("commands[{ci}]");
        let topic = check_topic(&mut ctx, &c.topic, &format!("{path}.topic"));
        if let Some(owner) = publish_topics.get(&topic) {
            ctx.err(&c.topic, format!("{path}.topic"), format!("topic `{topic}` is also published by {owner}; the gateway would execute its own messages"));
        }
        let ack_topic = match &c.ack_topic {
            Some(t) => check_topic(&mut ctx, t, &format!("{path}.ack_topic")),
            None => Arc::from(format!("{topic}/ack")),
        };
        if ack_topic == topic {
            ctx.err(
                c,
                format!("{path}.ack_topic"),
                "ack_topic must differ from the command topic",
            );
        }
        let q = qos(&mut ctx, c.qos, c.line, c.col, &path);
        let check_writable = |ctx: &mut Ctx, r: &Located<String>, p: &str, pid: usize| {
            if points[pid].write.is_none() {
                ctx.err(
                    r,
                    p,
                    format!(
                        "point `{}` is not writable (set `writable: true` on it to allow commands)",
                        r.value
                    ),
                );
            }
        };
        let action = match (&c.payloads, &c.write) {
            (Some(table), None) => {
                if table.is_empty() {
                    ctx.err(
                        c,
                        format!("{path}.payloads"),
                        "payloads must list at least one payload",
                    );
                }
                let mut out = HashMap::new();
                for (payload, writes) in table {
                    let ppath = format!("{path}.payloads[{payload}]");
                    if let Some(prev) =
                        seen.insert((topic.clone(), Some(payload.clone())), ppath.clone())
                    {
                        ctx.err(
                            c,
                            &ppath,
                            format!(
                                "topic `{topic}` payload `{payload}` is already handled by {prev}"
                            ),
                        );
                    }
                    if writes.is_empty() {
                        ctx.err(c, &ppath, "a payload needs at least one write");
                    }
                    let mut list = Vec::new();
                    for (wi, w) in writes.iter().enumerate() {
                        let wpath = format!("{ppath}[{wi}].point");
                        if let Some(pid) = resolve(&mut ctx, &w.point, &wpath) {
                            check_writable(&mut ctx, &w.point, &wpath, pid);
                            if let Some(lim) = points[pid].write
                                && let Err(e) = crate::mappings::command::encode_point(
                                    &points[pid],
                                    w.value.value,
                                    lim,
                                )
                            {
                                ctx.err(w, format!("{ppath}[{wi}].value"), e.to_string());
                            }
                            list.push((pid, w.value.value));
                        }
                    }
                    out.insert(payload.clone(), list);
                }
                if seen.contains_key(&(topic.clone(), None)) {
                    ctx.err(
                        &c.topic,
                        format!("{path}.topic"),
                        format!("topic `{topic}` already takes value writes"),
                    );
                }
                CommandAction::Table(out)
            }
            (None, Some(w)) => {
                let wpath = format!("{path}.write");
                if seen.keys().any(|(t, _)| *t == topic) {
                    ctx.err(
                        &c.topic,
                        format!("{path}.topic"),
                        format!("topic `{topic}` is already used by another command"),
                    );
                }
                seen.insert((topic.clone(), None), path.clone());
                match resolve(&mut ctx, w, &wpath) {
                    Some(pid) => {
                        check_writable(&mut ctx, w, &wpath, pid);
                        CommandAction::Value(pid)
                    }
                    None => CommandAction::Value(0),
                }
            }
            _ => {
                ctx.err(
                    c,
                    &path,
                    "a command needs exactly one of `payloads` or `write`",
                );
                CommandAction::Table(HashMap::new())
            }
        };
        commands.push(Command {
            topic,
            ack_topic,
            qos: q,
            action,
        });
    }
    for c in &commands {
        if publish_topics.contains_key(&c.ack_topic) {
            ctx.issues.push(Issue {
                line: 1,
                col: 1,
                path: "commands".into(),
                message: format!("ack topic `{}` is also used for values", c.ack_topic),
            });
        }
    }

    if ctx.issues.is_empty() {
        Ok(Model {
            mqtt,
            metrics_listen,
            links,
            devices,
            groups,
            points,
            derived,
            commands,
            warnings: ctx.warnings,
        })
    } else {
        ctx.issues.sort_by_key(|i| (i.line, i.col));
        Err(ctx.issues)
    }
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

    #[test]
    fn decimals_follow_the_scale() {
        assert_eq!(decimals_of(1.0), None);
        assert_eq!(decimals_of(0.1), Some(1));
        assert_eq!(decimals_of(0.25), Some(2));
        assert_eq!(decimals_of(10.0), Some(0));
        assert_eq!(decimals_of(-0.01), Some(2));
    }
}
