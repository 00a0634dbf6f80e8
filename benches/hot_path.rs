//! Hot-path benchmark: decoding registers and running the mapping engine and the point-topics
//! profile over poll results of the shipped water-tower mapping, and over a 1,000-value block
//! (a device of 1,000 registers, every value changed, rendered as JSON and taken into the
//! outbound buffer). `cargo bench --bench hot_path` prints ns per operation.
//! Under `cargo test` it runs a few iterations only, as a smoke test.
//!
//! It also measures the outbound buffer on this machine's disk (the target directory):
//! accepting a publication, one batch `write(2)`, and one fsync, which bounds the loss window
//! of a power cut (`mqtt.buffer.sync_interval` plus one fsync).

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use fieldgate::mappings::codec::decode;
use fieldgate::mappings::engine::Engine;
use fieldgate::northbound::points::PointTopics;
use fieldgate::northbound::{self, Profile};
use fieldgate::vocabulary::{BlockData, PollResult};
use fieldgate::vocabulary::{DataType, Order};

fn time(name: &str, iters: u64, mut f: impl FnMut(u64)) {
    let start = Instant::now();
    for i in 0..iters {
        f(i);
    }
    let ns = start.elapsed().as_nanos() as f64 / iters as f64;
    println!("{name:<48} {ns:>10.1} ns/op  ({iters} iterations)");
}

fn main() {
    let benching = std::env::args().any(|a| a == "--bench");
    let n = if benching { 1_000_000 } else { 1_000 };

    let words = [0x3FC0u16, 0x0000, 0x1234, 0x5678];
    for (dtype, label) in [
        (DataType::F32, "f32"),
        (DataType::U64, "u64"),
        (DataType::I16, "i16"),
    ] {
        for order in [Order::ABCD, Order::CDAB, Order::BADC, Order::DCBA] {
            time(&format!("decode {label} {order:?}"), n, |_| {
                black_box(decode(black_box(&words), dtype, order).ok());
            });
        }
    }

    let yaml = include_str!("../mappings/water-tower.yaml");
    let model = fieldgate::config::load_str(
        Path::new("water-tower.yaml"),
        yaml,
        Default::default(),
        "bench",
    )
    .expect("shipped mapping compiles");
    let model = Arc::new(model);
    let mut engine = Engine::new(Arc::clone(&model));
    let mut profiles: Vec<Box<dyn Profile>> = vec![Box::new(PointTopics::new(model))];
    let t0 = Instant::now();
    let mut published = 0usize;
    time(
        "engine + point topics (water tower, 9 points + pumpcode)",
        n / 4,
        |i| {
            let level = (i % 400) as u16;
            let poll = PollResult {
                device: 0,
                read_at: SystemTime::UNIX_EPOCH,
                blocks: vec![
                    Ok(BlockData::Bits(vec![i % 2 == 0, false])),
                    Ok(BlockData::Bits(vec![i % 2 == 0, false])),
                    Ok(BlockData::Words(vec![20, 10, 370, 380, 0])),
                    Ok(BlockData::Words(vec![
                        level, 215, 200, 0x4396, 0, 1, 0, 2, 0,
                    ])),
                ],
                first: 0,
                complete: true,
                bad: Vec::new(),
            };
            // 500 ms of simulated time per poll, so interval publications are due every time.
            let updates = engine.on_poll(&poll);
            published +=
                northbound::publish(&mut profiles, &updates, t0 + Duration::from_millis(500 * i))
                    .len();
        },
    );
    println!("publications produced: {published}");

    block_figures(benching);
    store_figures(benching);
}

/// A device of 1,000 holding registers, each published on change as JSON at QoS 1, read in
/// eight requests of 125; every value differs from the previous poll's, so every poll renders
/// and publishes all 1,000.
fn block_figures(benching: bool) {
    use fieldgate::outputs::store::{Store, StoreSettings};
    const N: u16 = 1000;
    let mut yaml = String::from(
        "mqtt: { host: 127.0.0.1, status_topic: bench }\n\
         devices:\n  - name: d\n    tcp: { host: 127.0.0.1 }\n    poll_interval: 100ms\n    points:\n",
    );
    for a in 0..N {
        yaml += &format!(
            "      - {{ name: r{a}, kind: holding_register, address: {a}, \
             publish: {{ topic: bench/d/{a}, mode: on_change, format: json }} }}\n"
        );
    }
    let model =
        fieldgate::config::load_str(Path::new("block.yaml"), &yaml, Default::default(), "bench")
            .expect("generated mapping compiles");
    let model = Arc::new(model);
    let mut engine = Engine::new(Arc::clone(&model));
    let mut profiles: Vec<Box<dyn Profile>> = vec![Box::new(PointTopics::new(model))];
    // Two polls whose values all differ, alternated.
    let poll = |shift: u16| PollResult {
        device: 0,
        read_at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
        first: 0,
        blocks: (0..N / 125)
            .map(|b| {
                Ok(BlockData::Words(
                    (0..125).map(|k| shift.wrapping_add(b * 125 + k)).collect(),
                ))
            })
            .collect(),
        complete: true,
        bad: Vec::new(),
    };
    let polls = [poll(0), poll(7)];
    let iters = if benching { 2_000 } else { 4 };
    let t0 = Instant::now();
    let mut published = 0usize;
    time("engine.on_poll: 1,000 changed values (JSON)", iters, |i| {
        let p = &polls[(i % 2) as usize];
        let updates = engine.on_poll(p);
        published += black_box(northbound::publish(
            &mut profiles,
            &updates,
            t0 + Duration::from_millis(100 * i),
        ))
        .len();
    });
    assert_eq!(
        published,
        iters as usize * usize::from(N),
        "every value published"
    );

    // A device that answers every read with an exception: each point's reading is bad, and
    // only the first such poll changes what is published (the quality).
    let failed = PollResult {
        blocks: (0..N / 125)
            .map(|_| Err(fieldgate::vocabulary::Fault::Exception(2)))
            .collect(),
        ..poll(0)
    };
    let mut bad = 0usize;
    time(
        "engine.on_poll: 1,000 points, every read failed",
        iters,
        |_| {
            let updates = engine.on_poll(&failed);
            bad += updates.len();
            black_box(&updates);
        },
    );
    assert_eq!(bad, iters as usize * usize::from(N), "every point reported");

    // The same, and each publication taken into the in-memory buffer and acknowledged, as
    // the publisher does at QoS 1 with a broker that keeps up.
    let (mut store, _) = Store::open(&StoreSettings {
        path: None,
        max_rows: 100_000,
        max_bytes: 16 << 20,
        segment_bytes: 8 << 20,
    });
    let mut seqs = Vec::with_capacity(usize::from(N));
    time("1,000-value block: render + buffer + ack", iters, |i| {
        let p = &polls[(i % 2) as usize];
        let now = t0 + Duration::from_millis(100 * (iters + i));
        let updates = engine.on_poll(p);
        for publication in northbound::publish(&mut profiles, &updates, now) {
            let ms = publication
                .created_at
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64);
            let (seq, _) = store.push(
                publication.topic,
                bytes::Bytes::from(publication.payload),
                publication.qos,
                publication.retain,
                ms,
            );
            seqs.push(seq);
        }
        for seq in seqs.drain(..) {
            store.ack(seq);
        }
    });
    assert!(store.is_empty(), "every publication acknowledged");
}

fn store_figures(benching: bool) {
    use fieldgate::outputs::store::{Store, StoreSettings};
    use fieldgate::vocabulary::Qos;
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("bench-buffer");
    let _ = std::fs::remove_dir_all(&dir);
    let settings = StoreSettings {
        path: Some(dir.clone()),
        max_rows: 10_000_000,
        max_bytes: 1 << 30,
        segment_bytes: 8 << 20,
    };
    let (mut store, _) = Store::open(&settings);
    let topic: Arc<str> = Arc::from("ISBTest/pumpcontrol/waterlevel");
    let payload = bytes::Bytes::from_static(
        br#"{"quality":"good","ts":"2026-11-22T10:00:00.000Z","unit":"cm","value":187}"#,
    );
    let n = if benching { 200_000 } else { 1_000 };
    time("buffer: accept one publication (memory + encode)", n, |i| {
        store.push(
            topic.clone(),
            payload.clone(),
            Qos::AtLeastOnce,
            false,
            i as i64,
        );
    });
    // A batch as the publisher writes it: 20 publications, one write(2).
    time("buffer: write a batch of 20 (one write(2))", n / 20, |i| {
        for _ in 0..20 {
            store.push(
                topic.clone(),
                payload.clone(),
                Qos::AtLeastOnce,
                false,
                i as i64,
            );
        }
        store.write().expect("write");
    });
    let syncs = if benching { 200 } else { 5 };
    let mut worst = Duration::ZERO;
    time(
        "buffer: fsync after a 200 ms batch (20 publications)",
        syncs,
        |i| {
            for _ in 0..20 {
                store.push(
                    topic.clone(),
                    payload.clone(),
                    Qos::AtLeastOnce,
                    false,
                    i as i64,
                );
            }
            let t = Instant::now();
            store.sync().expect("sync");
            worst = worst.max(t.elapsed());
        },
    );
    println!("buffer: worst fsync {:.2} ms", worst.as_secs_f64() * 1000.0);
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}
