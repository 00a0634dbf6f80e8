//! Fuzz target: a Sparkplug B NCMD, DCMD or STATE message for the shipped
//! water-tower-sparkplug mapping.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fieldgate::fuzz_targets::sparkplug(data));
