//! Fuzz target: registers to a value, any type and order.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fieldgate::fuzz_targets::decode(data));
