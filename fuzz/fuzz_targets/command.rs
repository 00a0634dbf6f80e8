//! Fuzz target: an MQTT command payload on the water tower's command topics.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fieldgate::fuzz_targets::command(data));
