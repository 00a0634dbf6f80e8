//! The `mqtt` and `metrics` sections: broker address, session, TLS, credentials, payload
//! encryption and the offline buffer, checked into [`MqttSettings`].
//!
//! It reads the files a section names (certificates, password and key files) so a bad one is
//! reported at load time; it must not connect to anything or publish.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::Ctx;
use crate::config::raw::*;
use crate::config::yaml::Located;
use crate::model::*;
use crate::outputs::store::StoreSettings;
use crate::outputs::tls::{self, TlsSettings};

/// MQTT's registered plaintext port (IANA); 8883 is MQTT over TLS.
const PLAINTEXT_PORT: u16 = 1883;

/// The `mqtt` section. `status_topic` is checked here; the caller notes it as published.
pub(super) fn compile(
    ctx: &mut Ctx,
    m: &RawMqtt,
    hostname: &str,
    mapping: &std::path::Path,
    state_directory: Option<&std::path::Path>,
    env: &HashMap<String, String>,
) -> MqttSettings {
    let status_topic = super::check_topic(ctx, &m.status_topic, "mqtt.status_topic");
    let buffer = buffer(ctx, m, state_directory);
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
        .and_then(|t| compile_tls(ctx, t, &m.status_topic));
    let brokers = brokers(ctx, m);
    if let Some(r) = m.tls.as_ref().and_then(|t| t.required.as_ref())
        && r.value
        && brokers.iter().any(|(_, port)| *port == PLAINTEXT_PORT)
    {
        ctx.err(
            r,
            "mqtt.tls.required",
            format!("TLS is required but the broker port is {PLAINTEXT_PORT}, MQTT's plaintext port; use the broker's TLS port (usually 8883)"),
        );
    }
    let credentials = compile_credentials(ctx, m, env);
    let encryption = m
        .payload_encryption
        .as_ref()
        .and_then(|e| compile_encryption(ctx, e));
    let mqtt = MqttSettings {
        v5: m.protocol.is_some_and(|p| p.is_v5()),
        tls,
        credentials,
        encryption,
        host: brokers.first().map(|b| b.0.clone()).unwrap_or_default(),
        port: brokers.first().map_or(m.port, |b| b.1),
        brokers,
        client_id: m.client_id.clone().unwrap_or_else(|| {
            crate::config::default_client_id(hostname, mapping, &m.status_topic.value)
        }),
        keep_alive: m.keep_alive.0,
        status_topic,
        buffer,
    };
    if mqtt.client_id.is_empty() || mqtt.client_id.len() > 65_535 {
        ctx.err(
            &m.status_topic,
            "mqtt.client_id",
            "client_id must be 1-65535 bytes",
        );
    }
    mqtt
}

/// `mqtt.host` or `mqtt.hosts`: the brokers, in the order they are tried, as (host, port).
fn brokers(ctx: &mut Ctx, m: &RawMqtt) -> Vec<(String, u16)> {
    match (&m.host, m.hosts.as_slice()) {
        (Some(h), []) => {
            if h.value.trim().is_empty() {
                ctx.err(h, "mqtt.host", "host must not be empty");
            }
            vec![(h.value.clone(), m.port)]
        }
        (None, []) => {
            ctx.err(
                &m.status_topic,
                "mqtt.host",
                "the broker is missing: give `host` (or `hosts`, a list to fail over between)",
            );
            Vec::new()
        }
        (Some(h), _) => {
            ctx.err(h, "mqtt.host", "give either `host` or `hosts`, not both");
            Vec::new()
        }
        (None, hosts) => {
            let mut out: Vec<(String, u16)> = Vec::new();
            for (i, h) in hosts.iter().enumerate() {
                let key = format!("mqtt.hosts[{i}]");
                match broker_address(&h.value, m.port) {
                    Ok(b) if out.contains(&b) => ctx.err(
                        h,
                        &key,
                        format!("{} is listed twice", crate::model::broker_name(&b.0, b.1)),
                    ),
                    Ok(b) => out.push(b),
                    Err(e) => ctx.err(h, &key, e),
                }
            }
            out
        }
    }
}

/// One `hosts` entry: `host`, `host:port`, `[v6]:port` or a bare IPv6 address; `port` when it
/// names none.
fn broker_address(entry: &str, port: u16) -> Result<(String, u16), String> {
    let entry = entry.trim();
    let bad_port = |p: &str| format!("`{p}` is not a TCP port 1-65535 (in `{entry}`)");
    let parse_port = |p: &str| match p.parse::<u16>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(bad_port(p)),
    };
    if entry.is_empty() {
        return Err("a broker address must not be empty".to_owned());
    }
    if entry.contains("://") || entry.contains('/') {
        return Err(format!(
            "`{entry}`: write the broker as `host`, `host:port` or `[IPv6 address]:port`, without a scheme or path (TLS is `mqtt.tls`)"
        ));
    }
    if let Some(rest) = entry.strip_prefix('[') {
        let (host, tail) = rest
            .split_once(']')
            .ok_or_else(|| format!("`{entry}`: an IPv6 address needs its closing `]`"))?;
        return match tail {
            "" => Ok((host.to_owned(), port)),
            t => match t.strip_prefix(':') {
                Some(p) => Ok((host.to_owned(), parse_port(p)?)),
                None => Err(format!("`{entry}`: expected `[address]:port`")),
            },
        };
    }
    match entry.matches(':').count() {
        0 => Ok((entry.to_owned(), port)),
        1 => {
            let (host, p) = entry.split_once(':').unwrap_or((entry, ""));
            if host.is_empty() {
                return Err(format!("`{entry}`: the host is missing"));
            }
            Ok((host.to_owned(), parse_port(p)?))
        }
        // A bare IPv6 address: no port can be told from it.
        _ => match entry.parse::<std::net::Ipv6Addr>() {
            Ok(_) => Ok((entry.to_owned(), port)),
            Err(_) => Err(format!(
                "`{entry}` is not an IPv6 address; an IPv6 address with a port is written `[address]:port`"
            )),
        },
    }
}

/// `mqtt.buffer`: the offline store's bounds and where it lives (by default under the state
/// directory).
fn buffer(ctx: &mut Ctx, m: &RawMqtt, state_directory: Option<&std::path::Path>) -> BufferSettings {
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
    BufferSettings {
        store: StoreSettings {
            path: buffer_path,
            max_rows: m.buffer.max_messages.max(1),
            max_bytes: m.buffer.max_bytes,
            segment_bytes: StoreSettings::segment_bytes_for(m.buffer.max_bytes),
        },
        sync_interval: m.buffer.sync_interval.0,
    }
}

/// The `metrics` section: the address the metrics endpoint listens on, if any.
pub(super) fn metrics_listen(ctx: &mut Ctx, metrics: Option<&RawMetrics>) -> Option<SocketAddr> {
    metrics.and_then(|mm| match mm.listen.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            ctx.err(
                &mm.listen,
                "metrics.listen",
                format!("`{}` is not an IP:port address", mm.listen.value),
            );
            None
        }
    })
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

#[cfg(test)]
mod tests {
    use super::broker_address;

    #[test]
    fn broker_addresses_take_a_port_or_the_default() {
        /// An entry, and the broker it names or a fragment of the error.
        type Case = (&'static str, Result<(&'static str, u16), &'static str>);
        let cases: &[Case] = &[
            ("a", Ok(("a", 1883))),
            ("a:8883", Ok(("a", 8883))),
            ("10.0.0.1:1884", Ok(("10.0.0.1", 1884))),
            ("[::1]:8883", Ok(("::1", 8883))),
            ("[::1]", Ok(("::1", 1883))),
            ("fe80::1", Ok(("fe80::1", 1883))),
            ("a:0", Err("not a TCP port")),
            ("a:99999", Err("not a TCP port")),
            ("a:x", Err("not a TCP port")),
            (":8883", Err("host is missing")),
            ("[::1", Err("closing `]`")),
            ("[::1]8883", Err("expected `[address]:port`")),
            ("", Err("must not be empty")),
            ("http://127.0.0.1:1883", Err("without a scheme")),
            ("::1:33015", Err("is not an IPv6 address")),
        ];
        for (entry, want) in cases {
            let got = broker_address(entry, 1883);
            match (want, &got) {
                (Ok((h, p)), Ok((gh, gp))) => assert_eq!((*h, *p), (gh.as_str(), *gp), "{entry}"),
                (Err(frag), Err(e)) => assert!(e.contains(frag), "{entry}: {e}"),
                _ => panic!("{entry}: got {got:?}, want {want:?}"),
            }
        }
    }
}
