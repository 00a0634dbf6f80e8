//! Fuzz target: YAML mapping text to a checked model.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fieldgate::fuzz_targets::config(data));
