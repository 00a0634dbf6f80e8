//! Command parsing: from an MQTT (topic, payload) to checked writes, or a reason to refuse.
//!
//! Pure. A payload that does not parse, a value out of range or a retained message yields a
//! [`CommandError`] and no [`WriteOp`]: a malformed command never reaches a device.

use std::collections::HashMap;
use std::sync::Arc;

use thiserror::Error;

use super::codec::{self, EncodeError};
use crate::model::{CommandAction, Model, Point, WriteLimits};
use crate::vocabulary::{RegisterKind, WriteOp, WriteValue};

/// Longest payload we look at; anything longer is refused unread.
pub const MAX_PAYLOAD: usize = 256;

#[derive(Debug, Error, PartialEq)]
pub enum CommandError {
    #[error("retained message: commands are executed only when sent live")]
    Retained,
    #[error("no command is configured on this topic")]
    UnknownTopic,
    #[error("unknown payload `{0}`; expected one of: {1}")]
    UnknownPayload(String, String),
    #[error("payload is longer than {MAX_PAYLOAD} bytes")]
    TooLong,
    #[error("payload is not UTF-8 text")]
    NotUtf8,
    #[error("payload `{0}` is not a number, true/false, or {{\"value\": ...}}")]
    NotAValue(String),
    #[error(
        "value {} is outside the allowed range {}..={}",
        format_number(*value),
        format_number(*min),
        format_number(*max)
    )]
    OutOfRange { value: f64, min: f64, max: f64 },
    /// A switch word for a number, or a number other than 0/1 for a switch.
    #[error("`{given}` is not a value for {point}: {expected}")]
    WrongType {
        given: String,
        point: String,
        expected: &'static str,
    },
    #[error("{0}")]
    Encode(#[from] EncodeError),
}

/// A command that passed every check, ready for the device.
#[derive(Debug, Clone, PartialEq)]
pub struct Accepted {
    pub command: usize,
    /// What was asked, for logs and the ack (`startp1`, or the value).
    pub label: String,
    pub writes: Vec<WriteOp>,
}

/// Inverse-scale, range-check and encode `value` (engineering units) for `point`.
pub fn encode_point(
    point: &Point,
    value: f64,
    limits: WriteLimits,
) -> Result<WriteValue, CommandError> {
    if !value.is_finite() {
        return Err(EncodeError::NotFinite.into());
    }
    if value < limits.min || value > limits.max {
        return Err(CommandError::OutOfRange {
            value,
            min: limits.min,
            max: limits.max,
        });
    }
    if point.kind == RegisterKind::Coil {
        return match value {
            0.0 => Ok(WriteValue::Coil(false)),
            1.0 => Ok(WriteValue::Coil(true)),
            _ => Err(CommandError::OutOfRange {
                value,
                min: 0.0,
                max: 1.0,
            }),
        };
    }
    let raw = (value - point.offset) / point.scale;
    Ok(WriteValue::Registers(codec::encode(
        raw,
        point.dtype,
        point.order,
    )?))
}

/// A value payload as sent, before it meets its point.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Given {
    /// `true`/`false`/`on`/`off` (any case), or a JSON `{"value": true}`.
    Switch(bool),
    /// `42`, `-3.5`, or `{"value": 42}`.
    Number(f64),
}

/// Parse a value payload: `42`, `-3.5`, `true`/`false`/`on`/`off`, or `{"value": ...}`.
/// NaN and infinities are not values.
fn parse_value(text: &str) -> Option<Given> {
    let t = text.trim();
    match t.to_ascii_lowercase().as_str() {
        "true" | "on" => return Some(Given::Switch(true)),
        "false" | "off" => return Some(Given::Switch(false)),
        _ => {}
    }
    if let Ok(v) = t.parse::<f64>() {
        return v.is_finite().then_some(Given::Number(v));
    }
    let json: serde_json::Value = serde_json::from_str(t).ok()?;
    match json.get("value")? {
        serde_json::Value::Bool(b) => Some(Given::Switch(*b)),
        serde_json::Value::Number(n) => n.as_f64().filter(|v| v.is_finite()).map(Given::Number),
        _ => None,
    }
}

/// The number to write to `p`, or why the payload is the wrong kind of value: a coil takes
/// true/false/on/off or 1/0; a register takes numbers only (`on` for a setpoint is a mistake,
/// not 1).
fn typed_value(p: &Point, given: Given, text: &str) -> Result<f64, CommandError> {
    let wrong = |expected| CommandError::WrongType {
        given: printable(text.trim()),
        point: p.full_name.to_string(),
        expected,
    };
    match (p.kind == RegisterKind::Coil, given) {
        (true, Given::Switch(b)) => Ok(f64::from(u8::from(b))),
        (true, Given::Number(v)) if v == 0.0 || v == 1.0 => Ok(v),
        (true, Given::Number(_)) => Err(wrong("a coil takes true/false, on/off or 1/0")),
        (false, Given::Switch(_)) => Err(wrong(
            "it is a number; send a number, not true/false/on/off",
        )),
        (false, Given::Number(v)) => Ok(v),
    }
}

/// Routes command topics to their configured commands.
#[derive(Debug, Clone)]
pub struct Router {
    model: Arc<Model>,
    by_topic: HashMap<Arc<str>, Vec<usize>>,
}

impl Router {
    pub fn new(model: Arc<Model>) -> Self {
        let mut by_topic: HashMap<Arc<str>, Vec<usize>> = HashMap::new();
        for (i, c) in model.commands.iter().enumerate() {
            by_topic.entry(c.topic.clone()).or_default().push(i);
        }
        Router { model, by_topic }
    }

    /// Which command (for its ack topic) a topic belongs to, if any.
    pub fn command_for(&self, topic: &str) -> Option<usize> {
        self.by_topic.get(topic).and_then(|v| v.first().copied())
    }

    /// Check one incoming message. `Err` carries the command index when the topic is known,
    /// so the refusal can be acknowledged.
    pub fn parse(
        &self,
        topic: &str,
        payload: &[u8],
        retained: bool,
    ) -> Result<Accepted, (Option<usize>, CommandError)> {
        let Some(candidates) = self.by_topic.get(topic) else {
            return Err((None, CommandError::UnknownTopic));
        };
        let first = candidates[0];
        let fail = |e| Err((Some(first), e));
        if retained {
            return fail(CommandError::Retained);
        }
        if payload.len() > MAX_PAYLOAD {
            return fail(CommandError::TooLong);
        }
        let Ok(text) = std::str::from_utf8(payload) else {
            return fail(CommandError::NotUtf8);
        };
        let key = text.trim();
        let model = &self.model;
        for &ci in candidates {
            match &model.commands[ci].action {
                CommandAction::Table(table) => {
                    if let Some(writes) = table.get(key) {
                        let mut ops = Vec::with_capacity(writes.len());
                        for &(pid, value) in writes {
                            let p = &model.points[pid];
                            let limits = p.write.ok_or((Some(ci), CommandError::UnknownTopic))?;
                            let v = encode_point(p, value, limits).map_err(|e| (Some(ci), e))?;
                            ops.push(op(pid, p, v));
                        }
                        return Ok(Accepted {
                            command: ci,
                            label: key.to_owned(),
                            writes: ops,
                        });
                    }
                }
                CommandAction::Value(pid) => {
                    let p = &model.points[*pid];
                    let Some(given) = parse_value(text) else {
                        return Err((Some(ci), CommandError::NotAValue(printable(text))));
                    };
                    let value = typed_value(p, given, text).map_err(|e| (Some(ci), e))?;
                    let limits = p.write.ok_or((Some(ci), CommandError::UnknownTopic))?;
                    let v = encode_point(p, value, limits).map_err(|e| (Some(ci), e))?;
                    return Ok(Accepted {
                        command: ci,
                        label: format_number(value),
                        writes: vec![op(*pid, p, v)],
                    });
                }
            }
        }
        let mut known: Vec<&str> = candidates
            .iter()
            .filter_map(|&ci| match &model.commands[ci].action {
                CommandAction::Table(t) => Some(t.keys().map(String::as_str)),
                CommandAction::Value(_) => None,
            })
            .flatten()
            .collect();
        known.sort_unstable();
        fail(CommandError::UnknownPayload(
            printable(key),
            known.join(", "),
        ))
    }
}

/// [`Accepted::command`] of a point write that no value command covers (it has no ack topic).
pub const NO_COMMAND: usize = usize::MAX;

impl Router {
    /// Check a value for the writable point `full_name` (`device.point`) by the rules of a value
    /// command (`42`, `true`/`false`/`on`/`off`, `{"value": ...}`; typed, range-checked,
    /// inverse-scaled). [`Accepted::command`] is the value command that writes the point, or
    /// [`NO_COMMAND`]. Used by the web console, whose writable points need no command topic.
    ///
    /// # Errors
    /// An unknown or read-only point (`UnknownTopic`), or the value's errors as for a command.
    pub fn parse_point(
        &self,
        full_name: &str,
        text: &str,
    ) -> Result<Accepted, (Option<usize>, CommandError)> {
        let model = &self.model;
        let Some((pid, p)) = model
            .points
            .iter()
            .enumerate()
            .find(|(_, p)| &*p.full_name == full_name)
        else {
            return Err((None, CommandError::UnknownTopic));
        };
        let ci = model
            .commands
            .iter()
            .position(|c| matches!(c.action, CommandAction::Value(v) if v == pid));
        let Some(limits) = p.write else {
            return Err((ci, CommandError::UnknownTopic));
        };
        if text.len() > MAX_PAYLOAD {
            return Err((ci, CommandError::TooLong));
        }
        let Some(given) = parse_value(text) else {
            return Err((ci, CommandError::NotAValue(printable(text))));
        };
        let value = typed_value(p, given, text).map_err(|e| (ci, e))?;
        let v = encode_point(p, value, limits).map_err(|e| (ci, e))?;
        Ok(Accepted {
            command: ci.unwrap_or(NO_COMMAND),
            label: format_number(value),
            writes: vec![op(pid, p, v)],
        })
    }
}

/// The write of `value` to point `pid`.
pub fn op(pid: usize, p: &Point, value: WriteValue) -> WriteOp {
    WriteOp {
        device: p.device,
        point: pid,
        kind: p.kind,
        address: p.address,
        value,
    }
}

/// A payload fragment safe to put in a log line or an ack: at most 64 characters, control and
/// format characters (Unicode general category Cc and Cf: bidi overrides, zero-width) as `?`.
pub fn printable(text: &str) -> String {
    let mut s: String = text
        .chars()
        .take(64)
        .map(|c| {
            let format = unicode_general_category::get_general_category(c)
                == unicode_general_category::GeneralCategory::Format;
            if c.is_control() || format { '?' } else { c }
        })
        .collect();
    if text.chars().count() > 64 {
        s.push('…');
    }
    s
}

/// Shortest tidy text for a number in an ack or a message: `1`, not `1.0`; `3276.7`, not
/// `3276.7000000000003` (see [`super::number::display`]).
pub fn format_number(v: f64) -> String {
    super::number::display(v)
}

/// Whether the words read back after a write equal what was written.
pub fn readback_matches(written: &WriteValue, read: &super::BlockData) -> bool {
    match (written, read) {
        (WriteValue::Coil(c), super::BlockData::Bits(b)) => b.first() == Some(c),
        (WriteValue::Registers(w), super::BlockData::Words(r)) => {
            r.get(..w.len()) == Some(w.as_slice())
        }
        _ => false,
    }
}

/// Registers (or bits) a write covers, for the read-back request.
pub fn write_width(v: &WriteValue) -> u16 {
    match v {
        WriteValue::Coil(_) => 1,
        WriteValue::Registers(w) => w.len() as u16,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load_str;
    use std::path::Path;

    const YAML: &str = r#"
mqtt: { host: localhost, status_topic: t/status }
devices:
  - name: tower
    tcp: { host: 127.0.0.1 }
    points:
      - { name: p1, kind: coil, address: 0, writable: true }
      - { name: sp, kind: holding_register, address: 0, type: i16, scale: 0.1, writable: true, min: -20, max: 80 }
      - { name: big, kind: holding_register, address: 2, type: f32, order: CDAB, writable: true }
commands:
  - topic: t/pump
    qos: 2
    payloads:
      startp1: [{ point: tower.p1, value: 1 }]
      stopp1: [{ point: tower.p1, value: 0 }]
  - topic: t/sp/set
    write: tower.sp
  - topic: t/big/set
    write: tower.big
"#;

    fn router() -> Router {
        let m = load_str(Path::new("t.yaml"), YAML, Default::default(), "h").unwrap();
        Router::new(Arc::new(m))
    }

    #[test]
    fn table_payloads_become_coil_writes() {
        let r = router();
        let a = r.parse("t/pump", b"startp1", false).unwrap();
        assert_eq!(a.writes.len(), 1);
        assert_eq!(a.writes[0].value, WriteValue::Coil(true));
        assert_eq!(a.writes[0].address, 0);
        let a = r.parse("t/pump", b" stopp1\n", false).unwrap();
        assert_eq!(a.writes[0].value, WriteValue::Coil(false));
    }

    #[test]
    fn garbage_and_retained_are_refused() {
        let r = router();
        assert!(matches!(
            r.parse("t/pump", b"startp3", false),
            Err((Some(0), CommandError::UnknownPayload(..)))
        ));
        assert_eq!(
            r.parse("t/pump", b"startp1", true),
            Err((Some(0), CommandError::Retained))
        );
        assert_eq!(
            r.parse("t/pump", &[0xff, 0xfe], false),
            Err((Some(0), CommandError::NotUtf8))
        );
        assert_eq!(
            r.parse("t/pump", &[b'a'; 300], false),
            Err((Some(0), CommandError::TooLong))
        );
        assert_eq!(
            r.parse("t/other", b"startp1", false),
            Err((None, CommandError::UnknownTopic))
        );
    }

    #[test]
    fn value_writes_inverse_scale_and_range_check() {
        let r = router();
        let a = r.parse("t/sp/set", b"21.5", false).unwrap();
        assert_eq!(a.writes[0].value, WriteValue::Registers(vec![215]));
        let a = r.parse("t/sp/set", br#"{"value": -12.3}"#, false).unwrap();
        assert_eq!(
            a.writes[0].value,
            WriteValue::Registers(vec![(-123i16) as u16])
        );
        assert!(matches!(
            r.parse("t/sp/set", b"80.1", false),
            Err((Some(1), CommandError::OutOfRange { .. }))
        ));
        assert!(matches!(
            r.parse("t/sp/set", b"NaN", false),
            Err((Some(1), CommandError::NotAValue(_)))
        ));
        assert!(matches!(
            r.parse("t/sp/set", b"inf", false),
            Err((Some(1), CommandError::NotAValue(_)))
        ));
        assert!(matches!(
            r.parse("t/sp/set", b"12abc", false),
            Err((Some(1), CommandError::NotAValue(_)))
        ));
    }

    #[test]
    fn float_writes_use_the_word_order() {
        let r = router();
        let a = r.parse("t/big/set", b"1.5", false).unwrap();
        assert_eq!(
            a.writes[0].value,
            WriteValue::Registers(vec![0x0000, 0x3FC0])
        );
    }

    #[test]
    fn a_setpoint_refuses_switch_words_and_a_coil_refuses_other_numbers() {
        let r = router();
        for payload in ["true", "ON", "off", r#"{"value": true}"#] {
            let e = r.parse("t/sp/set", payload.as_bytes(), false).unwrap_err();
            assert!(
                matches!(e, (Some(1), CommandError::WrongType { .. })),
                "{payload}: {e:?}"
            );
            assert!(e.1.to_string().contains("tower.sp"), "{}", e.1);
        }
        assert_eq!(
            r.parse("t/big/set", b"on", false)
                .unwrap_err()
                .1
                .to_string(),
            "`on` is not a value for tower.big: it is a number; send a number, not true/false/on/off"
        );
        // The coil: switch words and 1/0, nothing else.
        let yaml = YAML.replace(
            "  - topic: t/big/set\n    write: tower.big\n",
            "  - topic: t/big/set\n    write: tower.big\n  - topic: t/p1/set\n    write: tower.p1\n",
        );
        let m = load_str(Path::new("t.yaml"), &yaml, Default::default(), "h").unwrap();
        let r = Router::new(Arc::new(m));
        for (payload, want) in [
            ("on", true),
            ("FALSE", false),
            ("1", true),
            ("0", false),
            (r#"{"value": false}"#, false),
        ] {
            let a = r.parse("t/p1/set", payload.as_bytes(), false).unwrap();
            assert_eq!(a.writes[0].value, WriteValue::Coil(want), "{payload}");
        }
        let e = r.parse("t/p1/set", b"2", false).unwrap_err();
        assert!(
            matches!(e, (Some(3), CommandError::WrongType { .. })),
            "{e:?}"
        );
    }

    #[test]
    fn limits_in_messages_have_no_float_artefacts() {
        let e = CommandError::OutOfRange {
            value: 4000.0,
            min: -32768.0 * 0.1,
            max: 32767.0 * 0.1,
        };
        assert_eq!(
            e.to_string(),
            "value 4000 is outside the allowed range -3276.8..=3276.7"
        );
        let r = router();
        let (_, e) = r.parse("t/sp/set", b"80.1", false).unwrap_err();
        assert_eq!(
            e.to_string(),
            "value 80.1 is outside the allowed range -20..=80"
        );
        assert_eq!(format_number(0.1 + 0.2), "0.3");
        assert_eq!(format_number(1.0), "1");
    }

    #[test]
    fn printable_truncates_and_masks() {
        assert_eq!(printable("a\nb"), "a?b");
        // Bidi overrides and zero-width characters (Unicode category Cf) cannot reorder or
        // hide what a log line shows.
        assert_eq!(printable("ad\u{202E}nimda\u{200B}"), "ad?nimda?");
        assert_eq!(printable(&"x".repeat(70)).chars().count(), 65);
    }
}
