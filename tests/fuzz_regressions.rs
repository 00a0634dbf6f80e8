//! Every input saved under `fuzz/regressions/<target>/` (inputs that once crashed a fuzz
//! target, and seeds) runs through the same target body on stable Rust, so a fixed crash
//! stays fixed. See `scripts/fuzz.sh`.

use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/regressions")
        .join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let result = std::panic::catch_unwind(|| run(&data));
        assert!(result.is_ok(), "{} panics", path.display());
        n += 1;
    }
    assert!(n > 0, "no saved inputs in {}", dir.display());
    n
}

#[test]
fn config_inputs() {
    replay("config", fieldgate::fuzz_targets::config);
}

#[test]
fn decode_inputs() {
    replay("decode", fieldgate::fuzz_targets::decode);
}

#[test]
fn command_inputs() {
    replay("command", fieldgate::fuzz_targets::command);
}

#[test]
fn store_inputs() {
    replay("store", fieldgate::fuzz_targets::store);
}

#[test]
fn sparkplug_inputs() {
    replay("sparkplug", fieldgate::fuzz_targets::sparkplug);
}

#[test]
fn s7_inputs() {
    replay("s7", fieldgate::fuzz_targets::s7);
}
