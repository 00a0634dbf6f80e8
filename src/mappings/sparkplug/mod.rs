//! Sparkplug B payloads (Sparkplug 3.0, `spBv1.0`): our values as metrics, births, deaths and
//! data, and commands (NCMD, DCMD) decoded and checked into writes.
//!
//! Pure. The protobuf types are in [`proto`] (from Eclipse Tahu's `sparkplug_b.proto`). A
//! command that does not decode, names an unknown metric, a metric that is not writable or a
//! value out of range yields a refusal and no [`WriteOp`]: a malformed command never reaches a
//! device. Decoding never panics on any input (prost bounds recursion; sizes are checked
//! first).

pub mod proto;

use prost::Message;

use self::proto::Payload;
use self::proto::payload::metric::Value as PbValue;
use self::proto::payload::{Metric, PropertySet, PropertyValue, property_value};
use super::command::{CommandError, encode_point, op};
use super::engine::Value;
use crate::model::{MetricSource, Model, SparkplugDevice, SparkplugMetric, SparkplugType};
use crate::vocabulary::{RegisterKind, WriteOp};

/// The name of the node metric a host sets to ask for a rebirth (Sparkplug 3.0, NBIRTH
/// and tck-id-topics-nbirth-rebirth-metric: `Node Control/Rebirth`).
pub const REBIRTH: &str = "Node Control/Rebirth";
/// Its alias in our births.
pub const REBIRTH_ALIAS: u64 = 0;
/// The birth/death sequence number metric (Sparkplug 3.0, NBIRTH and NDEATH).
pub const BD_SEQ: &str = "bdSeq";
/// Longest command payload looked at; longer ones are refused undecoded.
pub const MAX_COMMAND: usize = 64 * 1024;
/// Most metrics one command may carry.
pub const MAX_COMMAND_METRICS: usize = 256;

/// Milliseconds since the Unix epoch, UTC (every Sparkplug timestamp).
pub fn millis(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The metric value of `v` as `dt`, rounded to `decimals` for a `Double`; `None` when `v`
/// cannot be one (text for a number). Signed integers are two's complement, sign-extended to
/// the field's width (32 bits in `int_value`, 64 in `long_value`), as Eclipse Tahu encodes them.
pub fn metric_value(dt: SparkplugType, v: &Value, decimals: Option<u8>) -> Option<PbValue> {
    let int = || match *v {
        Value::Int(i) => Some(i),
        Value::UInt(u) => i64::try_from(u).ok(),
        Value::Bool(b) => Some(i64::from(b)),
        _ => None,
    };
    let uint = || match *v {
        Value::UInt(u) => Some(u),
        Value::Int(i) => u64::try_from(i).ok(),
        Value::Bool(b) => Some(u64::from(b)),
        _ => None,
    };
    Some(match dt {
        SparkplugType::Boolean => PbValue::BooleanValue(match v {
            Value::Bool(b) => *b,
            other => other.as_f64()? != 0.0,
        }),
        SparkplugType::Int16 | SparkplugType::Int32 => {
            PbValue::IntValue(i32::try_from(int()?).ok()? as u32)
        }
        SparkplugType::UInt16 | SparkplugType::UInt32 => {
            PbValue::IntValue(u32::try_from(uint()?).ok()?)
        }
        SparkplugType::Int64 => PbValue::LongValue(int()? as u64),
        SparkplugType::UInt64 => PbValue::LongValue(uint()?),
        SparkplugType::Float => PbValue::FloatValue(match v {
            Value::F32(f) => *f,
            other => other.as_f64()? as f32,
        }),
        SparkplugType::Double => {
            let f = v.as_f64()?;
            PbValue::DoubleValue(
                decimals.map_or(super::number::tidy(f), |d| super::number::round_to(f, d)),
            )
        }
        SparkplugType::String => match v {
            Value::Text(t) => PbValue::StringValue(t.clone()),
            _ => return None,
        },
    })
}

/// A metric as births list it: name, alias, datatype, value (or null) and properties.
pub fn birth_metric(
    m: &SparkplugMetric,
    value: Option<PbValue>,
    timestamp: u64,
    properties: Option<PropertySet>,
) -> Metric {
    Metric {
        name: Some(m.name.to_string()),
        alias: Some(m.alias),
        timestamp: Some(timestamp),
        datatype: Some(m.datatype as u32),
        is_null: value.is_none().then_some(true),
        value,
        properties,
        ..Metric::default()
    }
}

/// A metric in DATA: alias only, its value (or null), and the read time; `historical` for
/// store-and-forward values (`is_historical` of `sparkplug_b.proto`).
pub fn data_metric(alias: u64, value: Option<PbValue>, timestamp: u64, historical: bool) -> Metric {
    Metric {
        alias: Some(alias),
        timestamp: Some(timestamp),
        is_historical: historical.then_some(true),
        is_null: value.is_none().then_some(true),
        value,
        ..Metric::default()
    }
}

/// The properties of a point's metric: `engUnit` (String) when it has a unit, `readOnly`
/// (Boolean), and for a writable one `writeMin` / `writeMax` (Double, engineering units).
/// `engUnit` and `readOnly` are the names Ignition reads; the write limits are ours.
pub fn point_properties(model: &Model, m: &SparkplugMetric) -> Option<PropertySet> {
    let MetricSource::Point(pid) = m.source else {
        return Some(PropertySet {
            keys: vec!["readOnly".into()],
            values: vec![prop_bool(true)],
        });
    };
    let p = &model.points[pid];
    let mut set = PropertySet::default();
    if let Some(u) = &p.unit {
        set.keys.push("engUnit".into());
        set.values.push(PropertyValue {
            r#type: Some(SparkplugType::String as u32),
            is_null: None,
            value: Some(property_value::Value::StringValue(u.to_string())),
        });
    }
    set.keys.push("readOnly".into());
    set.values.push(prop_bool(p.write.is_none()));
    if let Some(w) = p.write {
        for (k, v) in [("writeMin", w.min), ("writeMax", w.max)] {
            set.keys.push(k.into());
            set.values.push(PropertyValue {
                r#type: Some(SparkplugType::Double as u32),
                is_null: None,
                value: Some(property_value::Value::DoubleValue(v)),
            });
        }
    }
    Some(set)
}

fn prop_bool(b: bool) -> PropertyValue {
    PropertyValue {
        r#type: Some(SparkplugType::Boolean as u32),
        is_null: None,
        value: Some(property_value::Value::BooleanValue(b)),
    }
}

/// The NDEATH payload: only the `bdSeq` metric (Int64, as tck-id-message-flow-edge-node-birth-
/// publish-will-message-payload-bdSeq says), and the timestamp of the CONNECT
/// it was registered with (tck-id-topics-ndeath-payload: the bdSeq metric only; no seq).
pub fn ndeath(bd_seq: u64, timestamp: u64) -> Vec<u8> {
    Payload {
        timestamp: Some(timestamp),
        metrics: vec![Metric {
            name: Some(BD_SEQ.into()),
            timestamp: Some(timestamp),
            datatype: Some(SparkplugType::Int64 as u32),
            value: Some(PbValue::LongValue(bd_seq)),
            ..Metric::default()
        }],
        ..Payload::default()
    }
    .encode_to_vec()
}

/// The node's own birth metrics: `bdSeq` and `Node Control/Rebirth = false`.
pub fn node_birth_metrics(bd_seq: u64, timestamp: u64) -> Vec<Metric> {
    vec![
        Metric {
            name: Some(BD_SEQ.into()),
            timestamp: Some(timestamp),
            datatype: Some(SparkplugType::Int64 as u32),
            value: Some(PbValue::LongValue(bd_seq)),
            ..Metric::default()
        },
        Metric {
            name: Some(REBIRTH.into()),
            alias: Some(REBIRTH_ALIAS),
            timestamp: Some(timestamp),
            datatype: Some(SparkplugType::Boolean as u32),
            value: Some(PbValue::BooleanValue(false)),
            ..Metric::default()
        },
    ]
}

/// Why a command was refused, for the log and the counter.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SparkplugCommandError {
    #[error("payload is longer than {MAX_COMMAND} bytes")]
    TooLong,
    #[error("payload is not a Sparkplug B payload: {0}")]
    Malformed(String),
    #[error("retained message: commands are executed only when sent live")]
    Retained,
    #[error("more than {MAX_COMMAND_METRICS} metrics")]
    TooManyMetrics,
    #[error("unknown device id `{0}`")]
    UnknownDevice(String),
}

/// Decode a command payload (NCMD, DCMD).
pub fn decode_command(payload: &[u8], retained: bool) -> Result<Payload, SparkplugCommandError> {
    if retained {
        return Err(SparkplugCommandError::Retained);
    }
    if payload.len() > MAX_COMMAND {
        return Err(SparkplugCommandError::TooLong);
    }
    let p =
        Payload::decode(payload).map_err(|e| SparkplugCommandError::Malformed(e.to_string()))?;
    if p.metrics.len() > MAX_COMMAND_METRICS {
        return Err(SparkplugCommandError::TooManyMetrics);
    }
    Ok(p)
}

/// Whether an NCMD payload asks for a rebirth: `Node Control/Rebirth` (by name or alias 0)
/// set to boolean true (Sparkplug 3.0, NCMD).
pub fn is_rebirth(p: &Payload) -> bool {
    p.metrics.iter().any(|m| {
        let named = match &m.name {
            Some(n) => n == REBIRTH,
            None => m.alias == Some(REBIRTH_ALIAS),
        };
        named && matches!(m.value, Some(PbValue::BooleanValue(true)))
    })
}

/// One metric of a DCMD: its name or alias as sent, and the checked write or why not.
#[derive(Debug, PartialEq)]
pub struct MetricWrite {
    /// The metric's name as we know it (or as sent, when unknown), for logs.
    pub label: String,
    /// The point the metric is, when it is one of ours.
    pub point: Option<usize>,
    pub write: Result<WriteOp, CommandError>,
}

/// The number a DCMD metric carries, as the metric's datatype says to read it: booleans as
/// 0/1, signed integers from their two's complement at the type's width (a sign-extended
/// 32-bit value and a width-only one both read right), floats as they are.
fn command_number(dt: SparkplugType, v: &PbValue) -> Option<f64> {
    Some(match (dt, v) {
        (SparkplugType::Boolean, PbValue::BooleanValue(b)) => f64::from(u8::from(*b)),
        // Tahu sign-extends to 32 bits (-1 is 0xFFFF_FFFF); some hosts send the 16-bit two's
        // complement (0xFFFF). Either is read; any other bit pattern is not an Int16 and is
        // refused, never cut to its low 16 bits.
        (SparkplugType::Int16, PbValue::IntValue(i)) => match *i {
            0..=0xFFFF => f64::from(*i as u16 as i16),
            0xFFFF_8000..=0xFFFF_FFFF => f64::from(*i as i32),
            _ => return None,
        },
        (SparkplugType::Int32, PbValue::IntValue(i)) => f64::from(*i as i32),
        (SparkplugType::UInt16, PbValue::IntValue(i)) => f64::from(u16::try_from(*i).ok()?),
        (SparkplugType::UInt32, PbValue::IntValue(i)) => f64::from(*i),
        (SparkplugType::Int64, PbValue::LongValue(l)) => *l as i64 as f64,
        (SparkplugType::UInt64, PbValue::LongValue(l)) => *l as f64,
        (SparkplugType::Float, PbValue::FloatValue(f)) => super::number::f32_to_f64(*f),
        (SparkplugType::Double, PbValue::DoubleValue(d)) => *d,
        _ => return None,
    })
}

/// A DCMD metric's value as a person reads it, for rejections: `Int 65589`, `Double NaN`,
/// `String "on"`, `null`.
fn describe(v: Option<&PbValue>) -> String {
    match v {
        None => "null".to_owned(),
        Some(PbValue::IntValue(i)) => format!("Int {i}"),
        Some(PbValue::LongValue(l)) => format!("Long {l}"),
        Some(PbValue::FloatValue(f)) => format!("Float {f}"),
        Some(PbValue::DoubleValue(d)) => format!("Double {d}"),
        Some(PbValue::BooleanValue(b)) => format!("Boolean {b}"),
        Some(PbValue::StringValue(t)) => format!("String {:?}", super::command::printable(t)),
        Some(_) => "an extension value".to_owned(),
    }
}

/// Check every metric of a DCMD for `device` into a write: the metric must be one of the
/// device's, a writable point, carry a value of its datatype, and be within the point's
/// limits; then it is inverse-scaled and encoded (`mappings::command::encode_point`, the same
/// checks as every other command).
pub fn dcmd_writes(model: &Model, device: &SparkplugDevice, p: &Payload) -> Vec<MetricWrite> {
    p.metrics
        .iter()
        .map(|m| {
            let found = device.metrics.iter().find(|dm| match &m.name {
                Some(n) => *dm.name == **n,
                None => m.alias == Some(dm.alias),
            });
            // A name and an alias that name different metrics: a host with an old birth
            // certificate. Neither is trusted.
            let found =
                found.filter(|dm| m.name.is_none() || m.alias.is_none_or(|a| a == dm.alias));
            let label = found.map_or_else(
                || {
                    m.name.as_deref().map_or_else(
                        || format!("alias {}", m.alias.unwrap_or_default()),
                        super::command::printable,
                    )
                },
                |dm| dm.name.to_string(),
            );
            let Some(dm) = found else {
                return MetricWrite {
                    label,
                    point: None,
                    write: Err(CommandError::UnknownTopic),
                };
            };
            let MetricSource::Point(pid) = dm.source else {
                return MetricWrite {
                    label,
                    point: None,
                    write: Err(CommandError::UnknownTopic),
                };
            };
            let point = &model.points[pid];
            let write = (|| {
                let limits = point.write.ok_or(CommandError::UnknownTopic)?;
                let wrong = |expected| CommandError::WrongType {
                    given: describe(m.value.as_ref()),
                    point: point.full_name.to_string(),
                    expected,
                };
                let value = m
                    .value
                    .as_ref()
                    .filter(|_| m.is_null != Some(true))
                    .ok_or_else(|| wrong("a value, not null"))?;
                let number = command_number(dm.datatype, value)
                    .ok_or_else(|| wrong("a value of the metric's datatype"))?;
                if point.kind == RegisterKind::Coil && !matches!(value, PbValue::BooleanValue(_)) {
                    return Err(wrong("a Boolean"));
                }
                let v = encode_point(point, number, limits)?;
                Ok(op(pid, point, v))
            })();
            MetricWrite {
                label,
                point: Some(pid),
                write,
            }
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::Arc;

    pub(crate) fn model() -> Arc<Model> {
        let yaml = r#"
mqtt: { host: 127.0.0.1, status_topic: t/status, buffer: { path: /tmp/fieldgate-spb-unit } }
sparkplug: { group_id: plant, edge_node_id: gw1 }
devices:
  - name: tower
    tcp: { host: 127.0.0.1, port: 5020 }
    points:
      - { name: level, kind: input_register, address: 0, unit: cm }
      - { name: temp, kind: input_register, address: 1, type: i16, scale: 0.1, metric: pump1/temperature }
      - { name: p1_command, kind: coil, address: 0, writable: true }
      - { name: start, kind: holding_register, address: 0, writable: true, min: 0, max: 400 }
      - { name: offset, kind: holding_register, address: 1, type: i16, writable: true, min: -100, max: 100 }
"#;
        Arc::new(
            crate::config::load_str(
                std::path::Path::new("t.yaml"),
                yaml,
                Default::default(),
                "h",
            )
            .expect("valid"),
        )
    }

    fn dcmd(metrics: Vec<Metric>) -> Vec<u8> {
        Payload {
            timestamp: Some(1),
            metrics,
            ..Payload::default()
        }
        .encode_to_vec()
    }

    fn named(name: &str, dt: SparkplugType, v: PbValue) -> Metric {
        Metric {
            name: Some(name.into()),
            datatype: Some(dt as u32),
            value: Some(v),
            ..Metric::default()
        }
    }

    #[test]
    fn metrics_have_the_points_datatypes_names_and_unique_aliases() {
        let m = model();
        let spb = m.sparkplug.as_ref().unwrap();
        let d = &spb.devices[0];
        let got: Vec<_> = d
            .metrics
            .iter()
            .map(|m| (m.name.to_string(), m.datatype, m.alias))
            .collect();
        assert_eq!(
            got,
            vec![
                ("level".into(), SparkplugType::UInt16, 1),
                ("pump1/temperature".into(), SparkplugType::Double, 2),
                ("p1_command".into(), SparkplugType::Boolean, 3),
                ("start".into(), SparkplugType::UInt16, 4),
                ("offset".into(), SparkplugType::Int16, 5),
            ]
        );
    }

    #[test]
    fn a_dcmd_becomes_checked_writes() {
        let m = model();
        let d = &m.sparkplug.as_ref().unwrap().devices[0];
        let p = decode_command(
            &dcmd(vec![
                named(
                    "p1_command",
                    SparkplugType::Boolean,
                    PbValue::BooleanValue(true),
                ),
                named("start", SparkplugType::UInt16, PbValue::IntValue(55)),
                named("start", SparkplugType::UInt16, PbValue::IntValue(401)),
                named("level", SparkplugType::UInt16, PbValue::IntValue(1)),
                named("nope", SparkplugType::UInt16, PbValue::IntValue(1)),
                named("p1_command", SparkplugType::Boolean, PbValue::IntValue(1)),
                // Sign-extended (Tahu) and width-only two's complement both read as -5.
                named(
                    "offset",
                    SparkplugType::Int16,
                    PbValue::IntValue(-5i32 as u32),
                ),
                named("offset", SparkplugType::Int16, PbValue::IntValue(0xFFFB)),
            ]),
            false,
        )
        .unwrap();
        let w = dcmd_writes(&m, d, &p);
        use crate::vocabulary::WriteValue;
        assert_eq!(w[0].write.as_ref().unwrap().value, WriteValue::Coil(true));
        assert_eq!(
            w[1].write.as_ref().unwrap().value,
            WriteValue::Registers(vec![55])
        );
        assert!(matches!(w[2].write, Err(CommandError::OutOfRange { .. })));
        assert_eq!(w[3].write, Err(CommandError::UnknownTopic), "not writable");
        assert_eq!(w[4].point, None);
        assert!(matches!(w[5].write, Err(CommandError::WrongType { .. })));
        for i in [6, 7] {
            assert_eq!(
                w[i].write.as_ref().unwrap().value,
                WriteValue::Registers(vec![0xFFFB])
            );
        }
    }

    #[test]
    fn a_reload_keeps_the_aliases_of_the_metrics_it_keeps() {
        let old = model();
        let yaml = r#"
mqtt: { host: 127.0.0.1, status_topic: t/status, buffer: { path: /tmp/fieldgate-spb-unit } }
sparkplug: { group_id: plant, edge_node_id: gw1 }
devices:
  - name: tower
    tcp: { host: 127.0.0.1, port: 5020 }
    points:
      - { name: fresh, kind: input_register, address: 5 }
      - { name: temp, kind: input_register, address: 1, type: i16, scale: 0.1, metric: pump1/temperature }
      - { name: p1_command, kind: coil, address: 0, writable: true }
      - { name: start, kind: holding_register, address: 0, type: u32, writable: true, min: 0, max: 400 }
      - { name: offset, kind: holding_register, address: 2, type: i16, writable: true, min: -100, max: 100 }
"#;
        let mut new = crate::config::load_str(
            std::path::Path::new("t.yaml"),
            yaml,
            Default::default(),
            "h",
        )
        .expect("valid");
        let spb = new.sparkplug.as_mut().unwrap();
        // Compiled afresh, every alias moved: `level` (1) is gone.
        spb.keep_aliases(old.sparkplug.as_ref().unwrap());
        let got: Vec<(String, u64)> = spb.devices[0]
            .metrics
            .iter()
            .map(|m| (m.name.to_string(), m.alias))
            .collect();
        assert_eq!(
            got,
            vec![
                ("fresh".into(), 6),
                ("pump1/temperature".into(), 2),
                ("p1_command".into(), 3),
                // Another datatype now (UInt32): a new alias, so an old UInt16 write by alias
                // finds nothing.
                ("start".into(), 7),
                ("offset".into(), 5),
            ]
        );
    }

    #[test]
    fn an_int16_value_is_never_cut_to_its_low_16_bits() {
        let m = model();
        let d = &m.sparkplug.as_ref().unwrap().devices[0];
        // Each of these has a low half within -100..=100 (0x0035 = 53, 0x0032 = 50), but
        // none is an Int16 in either encoding: writing its low half would write a value
        // nobody sent.
        for bad in [
            65_589u32,
            131_126,
            0xABCD_0032,
            0xFFFF_0035,
            0x0001_0000,
            0xFFFF_7FFF,
        ] {
            let p = decode_command(
                &dcmd(vec![named(
                    "offset",
                    SparkplugType::Int16,
                    PbValue::IntValue(bad),
                )]),
                false,
            )
            .unwrap();
            let w = dcmd_writes(&m, d, &p);
            match &w[0].write {
                Err(e @ CommandError::WrongType { .. }) => {
                    assert!(e.to_string().contains(&format!("Int {bad}")), "{e}");
                }
                other => panic!("{bad:#x}: {other:?}"),
            }
        }
        // The edges of both encodings are read.
        for (ok, raw) in [(0x7FFFu32, 0x7FFF), (0x8000, 0x8000), (0xFFFF_8000, 0x8000)] {
            let p = decode_command(
                &dcmd(vec![named(
                    "offset",
                    SparkplugType::Int16,
                    PbValue::IntValue(ok),
                )]),
                false,
            )
            .unwrap();
            // Out of the point's -100..=100, so refused for range, not for the datatype.
            assert!(
                matches!(
                    dcmd_writes(&m, d, &p)[0].write,
                    Err(CommandError::OutOfRange { .. })
                ),
                "{ok:#x} ({raw:#x}) is an Int16"
            );
        }
    }

    #[test]
    fn a_name_and_an_alias_that_disagree_write_nothing() {
        let m = model();
        let d = &m.sparkplug.as_ref().unwrap().devices[0];
        let start = d.metrics.iter().find(|x| &*x.name == "start").unwrap();
        let offset = d.metrics.iter().find(|x| &*x.name == "offset").unwrap();
        let mut both = named("start", SparkplugType::UInt16, PbValue::IntValue(5));
        both.alias = Some(offset.alias);
        let mut agree = named("start", SparkplugType::UInt16, PbValue::IntValue(5));
        agree.alias = Some(start.alias);
        let p = decode_command(&dcmd(vec![both, agree]), false).unwrap();
        let w = dcmd_writes(&m, d, &p);
        assert_eq!(w[0].point, None, "neither the named nor the aliased metric");
        assert!(w[0].write.is_err());
        assert!(w[1].write.is_ok());
    }

    #[test]
    fn rebirth_is_recognised_by_name_or_alias_and_only_when_true() {
        let by_name = decode_command(
            &dcmd(vec![named(
                REBIRTH,
                SparkplugType::Boolean,
                PbValue::BooleanValue(true),
            )]),
            false,
        )
        .unwrap();
        assert!(is_rebirth(&by_name));
        let by_alias = Payload {
            metrics: vec![Metric {
                alias: Some(0),
                value: Some(PbValue::BooleanValue(true)),
                ..Metric::default()
            }],
            ..Payload::default()
        };
        assert!(is_rebirth(&by_alias));
        let off = decode_command(
            &dcmd(vec![named(
                REBIRTH,
                SparkplugType::Boolean,
                PbValue::BooleanValue(false),
            )]),
            false,
        )
        .unwrap();
        assert!(!is_rebirth(&off));
        assert_eq!(
            decode_command(&[], true),
            Err(SparkplugCommandError::Retained)
        );
    }

    #[test]
    fn values_encode_as_their_datatype() {
        assert_eq!(
            metric_value(SparkplugType::Int16, &Value::Int(-1), None),
            Some(PbValue::IntValue(u32::MAX))
        );
        assert_eq!(
            metric_value(SparkplugType::UInt16, &Value::UInt(7), None),
            Some(PbValue::IntValue(7))
        );
        assert_eq!(
            metric_value(SparkplugType::Double, &Value::Float(213.0 * 0.1), Some(1)),
            Some(PbValue::DoubleValue(21.3))
        );
        assert_eq!(
            metric_value(SparkplugType::String, &Value::Int(1), None),
            None
        );
        let death = Payload::decode(ndeath(7, 5).as_slice()).unwrap();
        assert_eq!(death.metrics[0].name.as_deref(), Some(BD_SEQ));
        assert_eq!(death.metrics[0].value, Some(PbValue::LongValue(7)));
    }

    fn any_value() -> impl proptest::strategy::Strategy<Value = PbValue> {
        use proptest::prelude::*;
        prop_oneof![
            any::<u32>().prop_map(PbValue::IntValue),
            any::<u64>().prop_map(PbValue::LongValue),
            any::<f32>().prop_map(PbValue::FloatValue),
            any::<f64>().prop_map(PbValue::DoubleValue),
            any::<bool>().prop_map(PbValue::BooleanValue),
            ".{0,8}".prop_map(PbValue::StringValue),
        ]
    }

    proptest::proptest! {
        /// Well-formed DCMDs with any metric (by name or alias, known or not), any datatype
        /// and any value: every write that comes out is to a writable point, within its
        /// limits once decoded back.
        #[test]
        fn any_dcmd_writes_only_writable_points_within_limits(
            metrics in proptest::collection::vec(
                (0u64..8, proptest::bool::ANY, proptest::option::of(0u32..20), proptest::option::of(any_value())),
                0..8,
            )
        ) {
            let m = model();
            let d = &m.sparkplug.as_ref().unwrap().devices[0];
            let names = ["level", "pump1/temperature", "p1_command", "start", "offset", "nope", "", "Node Control/Rebirth"];
            let metrics = metrics.into_iter().map(|(i, by_name, dt, v)| Metric {
                name: by_name.then(|| names[i as usize].to_owned()),
                alias: (!by_name).then_some(i),
                datatype: dt,
                value: v,
                ..Metric::default()
            }).collect();
            let p = Payload { metrics, ..Payload::default() };
            for w in dcmd_writes(&m, d, &p) {
                let Ok(op) = w.write else { continue };
                let point = &m.points[op.point];
                let limits = point.write.expect("writable");
                if let crate::vocabulary::WriteValue::Registers(words) = &op.value {
                    let raw = crate::mappings::codec::decode(words, point.dtype, point.order).unwrap();
                    let v = match raw {
                        crate::mappings::codec::Raw::Int(i) => i as f64,
                        crate::mappings::codec::Raw::UInt(u) => u as f64,
                        other => panic!("{other:?}"),
                    } * point.scale + point.offset;
                    proptest::prop_assert!(v >= limits.min && v <= limits.max, "{v}");
                }
            }
        }

        /// Arbitrary bytes never panic, and what comes out only ever writes a writable point
        /// within its limits.
        #[test]
        fn arbitrary_bytes_never_panic_and_never_write_out_of_bounds(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let m = model();
            let d = &m.sparkplug.as_ref().unwrap().devices[0];
            if let Ok(p) = decode_command(&bytes, false) {
                let _ = is_rebirth(&p);
                for w in dcmd_writes(&m, d, &p) {
                    if let Ok(op) = w.write {
                        let point = &m.points[op.point];
                        proptest::prop_assert!(point.write.is_some());
                    }
                }
            }
        }
    }
}
