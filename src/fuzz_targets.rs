//! The bodies of the fuzz targets (`fuzz/fuzz_targets/*.rs`), here so that the regression
//! test (`tests/fuzz_regressions.rs`) runs every saved input through the same code on stable
//! Rust. Each takes arbitrary bytes; none may panic, and each checks the invariants that
//! must hold for any input. Not part of the gateway's API.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use crate::mappings::codec::{self, DataType, Order, Raw};
use crate::mappings::command::Router;
use crate::outputs::store::{self, Store, StoreSettings};
use crate::vocabulary::{RegisterKind, WriteValue};

/// YAML text to a checked model: an error is fine, a panic is not; an error renders.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let vars: HashMap<String, String> = [("HOST".to_owned(), "127.0.0.1".to_owned())].into();
    if let Err(e) = crate::config::load_str(Path::new("fuzz.yaml"), text, vars, "fuzz") {
        let shown = e.to_string();
        assert!(!shown.is_empty());
    }
}

fn data_type(b: u8) -> DataType {
    match b % 12 {
        0 => DataType::Bool,
        1 => DataType::Bit(b / 12 % 16),
        2 => DataType::U16,
        3 => DataType::I16,
        4 => DataType::U32,
        5 => DataType::I32,
        6 => DataType::U64,
        7 => DataType::I64,
        8 => DataType::F32,
        9 => DataType::F64,
        _ => DataType::String(u16::from(b % 8) + 1),
    }
}

fn order(b: u8) -> Order {
    match b % 4 {
        0 => Order::ABCD,
        1 => Order::CDAB,
        2 => Order::BADC,
        _ => Order::DCBA,
    }
}

/// Registers to a value, in any type and order; a decoded number encodes back to the same
/// registers.
pub fn decode(data: &[u8]) {
    let [t, o, rest @ ..] = data else { return };
    let (dtype, order) = (data_type(*t), order(*o));
    let words: Vec<u16> = rest
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))
        .collect();
    let Ok(raw) = codec::decode(&words, dtype, order) else {
        return;
    };
    let n = match dtype {
        DataType::U16 | DataType::I16 => 1,
        DataType::U32 | DataType::I32 | DataType::F32 => 2,
        DataType::U64 | DataType::I64 | DataType::F64 => 4,
        _ => return,
    };
    let value = match raw {
        Raw::Int(i) => i as f64,
        Raw::UInt(u) => u as f64,
        Raw::F32(f) => f64::from(f),
        Raw::F64(f) => f,
        _ => return,
    };
    // Integers above 2^53 do not survive f64; floats that are NaN have many encodings.
    if !value.is_finite() || value.abs() > 9.0e15 {
        return;
    }
    if let Ok(back) = codec::encode(value, dtype, order) {
        assert_eq!(back, words[..n], "{dtype:?} {order:?} {value}");
    }
}

fn water_tower() -> &'static Arc<crate::model::Model> {
    static MODEL: OnceLock<Arc<crate::model::Model>> = OnceLock::new();
    MODEL.get_or_init(|| {
        let yaml = include_str!("../mappings/water-tower.yaml");
        Arc::new(
            crate::config::load_str(Path::new("water-tower.yaml"), yaml, HashMap::new(), "fuzz")
                .expect("the shipped mapping compiles"),
        )
    })
}

/// An MQTT message on a command topic of the shipped water-tower mapping: whatever the
/// bytes, an accepted command only writes writable points, within their limits, and a
/// retained one is never accepted.
pub fn command(data: &[u8]) {
    let [sel, flags, payload @ ..] = data else {
        return;
    };
    let model = water_tower();
    let router = Router::new(Arc::clone(model));
    let topic = match model
        .commands
        .get(usize::from(*sel) % (model.commands.len() + 1))
    {
        Some(c) => c.topic.to_string(),
        None => "ISBTest/pumpcontrol/unknown".to_owned(),
    };
    let retained = flags & 1 == 1;
    let Ok(accepted) = router.parse(&topic, payload, retained) else {
        return;
    };
    assert!(!retained, "a retained command was accepted");
    for op in &accepted.writes {
        assert_write_within_limits(model, op);
    }
}

/// A write only goes to a writable point, at its address, with a value within its limits.
fn assert_write_within_limits(model: &crate::model::Model, op: &crate::vocabulary::WriteOp) {
    let point = &model.points[op.point];
    let limits = point
        .write
        .expect("a write to a point not declared writable");
    assert_eq!(op.address, point.address);
    match (&op.value, op.kind) {
        (WriteValue::Coil(_), RegisterKind::Coil) => {}
        (WriteValue::Registers(words), RegisterKind::HoldingRegister) => {
            let raw = codec::decode(words, point.dtype, point.order).expect("decodes");
            let v = match raw {
                Raw::Int(i) => i as f64,
                Raw::UInt(u) => u as f64,
                Raw::F32(f) => f64::from(f),
                Raw::F64(f) => f,
                other => panic!("wrote {other:?}"),
            };
            let eng = v * point.scale + point.offset;
            let slack = 1e-6 * limits.max.abs().max(limits.min.abs()).max(1.0);
            assert!(
                eng >= limits.min - slack && eng <= limits.max + slack,
                "{eng} outside {}..{}",
                limits.min,
                limits.max
            );
        }
        (v, k) => panic!("{v:?} to a {k:?}"),
    }
}

fn water_tower_sparkplug() -> &'static Arc<crate::model::Model> {
    static MODEL: OnceLock<Arc<crate::model::Model>> = OnceLock::new();
    MODEL.get_or_init(|| {
        let yaml = include_str!("../mappings/water-tower-sparkplug.yaml");
        Arc::new(
            crate::config::load_str(
                Path::new("water-tower-sparkplug.yaml"),
                yaml,
                HashMap::new(),
                "fuzz",
            )
            .expect("the shipped mapping compiles"),
        )
    })
}

/// A Sparkplug NCMD, DCMD or STATE message for the shipped water-tower-sparkplug mapping
/// (first byte: which topic; second: bit 0 retained; the rest: the payload): decoding never
/// panics, a DCMD only ever yields writes to writable points within their limits (none when
/// retained), and the edge node profile takes NCMD and STATE without panicking.
pub fn sparkplug(data: &[u8]) {
    use crate::mappings::sparkplug as spb;
    use crate::northbound::{Profile, SessionEvent};
    let [sel, flags, payload @ ..] = data else {
        return;
    };
    let model = water_tower_sparkplug();
    let node = model.sparkplug.as_ref().expect("a sparkplug section");
    let retained = flags & 1 == 1;
    match sel % 3 {
        0 => {
            let Ok(p) = spb::decode_command(payload, retained) else {
                return;
            };
            assert!(!retained, "a retained DCMD was decoded");
            for w in spb::dcmd_writes(model, &node.devices[0], &p) {
                if let Ok(op) = &w.write {
                    assert_write_within_limits(model, op);
                }
            }
        }
        n => {
            let topic = if n == 1 {
                node.node_topic("NCMD")
            } else {
                "spBv1.0/STATE/scada".to_owned()
            };
            let mut profile =
                crate::northbound::sparkplug::SparkplugNode::new(Arc::clone(model)).expect("node");
            let mut out = Vec::new();
            let at = std::time::SystemTime::UNIX_EPOCH;
            profile.on_session(&SessionEvent::Connected { bd_seq: 1 }, at, &mut out);
            let ev = SessionEvent::Message {
                topic: Arc::from(topic),
                payload: payload.to_vec(),
                retain: retained,
            };
            profile.on_session(&ev, at, &mut out);
        }
    }
}

/// Arbitrary bytes as a buffer segment on disk: decoding and opening the store never panic,
/// recovered entries are in order and unique, and the store works afterwards.
pub fn store(data: &[u8]) {
    let decoded = store::decode_segment(data);
    assert!(decoded.good_len <= data.len());
    let Ok(dir) = tempfile_dir() else { return };
    let seg = dir.join(format!("{:020}.seg", 1));
    if std::fs::write(&seg, data).is_err() {
        return;
    }
    let settings = StoreSettings {
        path: Some(dir.clone()),
        max_rows: 1000,
        max_bytes: 1 << 20,
        segment_bytes: 64 * 1024,
    };
    {
        let (mut s, _) = Store::open(&settings);
        let mut last = 0;
        let mut from = 0;
        while let Some(e) = s.next_unacked(from) {
            assert!(e.seq > last, "recovered out of order");
            last = e.seq;
            from = e.seq + 1;
        }
        let (seq, _) = s.push(
            Arc::from("t"),
            bytes::Bytes::from_static(b"x"),
            crate::vocabulary::Qos::AtLeastOnce,
            false,
            0,
        );
        assert!(seq > last);
        let _ = s.sync();
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempfile_dir() -> std::io::Result<std::path::PathBuf> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "fieldgate-fuzz-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// S7 frames (issue 19): TPKT header, COTP TPDU and S7 PDU decoding never panic, whatever
/// the bytes; a decoded read reply has no more items than it announced; the bytes after a
/// TPKT header decode the same way.
pub fn s7(data: &[u8]) {
    use crate::inputs::s7::frame::{self, Pdu, Reply};
    let _ = frame::tpkt_length(data);
    for body in [data, data.get(4..).unwrap_or(&[])] {
        if let Ok(frame::Cotp::Data { payload, .. }) = frame::decode_cotp(body) {
            let _ = frame::decode_pdu(payload);
        }
        match frame::decode_pdu(body) {
            Ok(Pdu::Ack {
                reply: Reply::Read(items),
                ..
            }) => assert!(items.len() <= 255),
            Ok(Pdu::Ack {
                reply: Reply::Write(codes),
                ..
            }) => assert!(codes.len() <= 255),
            _ => {}
        }
    }
    // The simulator's S7 server answers anything without panicking.
    let _ = crate::simulator::s7::answer_for_fuzzing(data);
}
