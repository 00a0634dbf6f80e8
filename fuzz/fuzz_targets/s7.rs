//! Fuzz target: S7 frames (TPKT, COTP, S7 PDUs) and the simulator's S7 server.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fieldgate::fuzz_targets::s7(data));
