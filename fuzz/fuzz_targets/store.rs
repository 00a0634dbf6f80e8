//! Fuzz target: arbitrary bytes as a buffer segment file, recovered at start.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fieldgate::fuzz_targets::store(data));
