//! Build script. On Linux release builds of the `fieldgate` binary it passes the linker
//! `build/hot-text.ld`, which places the functions the running gateway executes (polling,
//! decoding, publishing, the buffer, timers and sockets) together at the start of the code.
//!
//! Why: Linux maps a file-backed page fault's neighbours too ("fault-around", 64 KiB by
//! default, mm/memory.c `do_fault_around`), so about 1.2 MB of code executed in steady state,
//! scattered over the 12.6 MB of code in the default layout, kept some 60 windows of 64 KiB
//! (3.9 MB) resident. Packed together they need about a third of that (README, Measurements).
//! The script only orders sections: a function it names that no longer exists is skipped, a
//! new one lands in the usual place, so a stale list costs memory, never correctness.
//! Regenerate it with `bash scripts/hot-text.sh`. `FIELDGATE_HOT_TEXT=0` builds without it,
//! for comparison.

fn main() {
    println!("cargo:rerun-if-changed=build/hot-text.ld");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=FIELDGATE_HOT_TEXT");
    let linux = std::env::var("CARGO_CFG_TARGET_OS").is_ok_and(|os| os == "linux");
    let release = std::env::var("PROFILE").is_ok_and(|p| p == "release");
    let wanted = std::env::var("FIELDGATE_HOT_TEXT").as_deref() != Ok("0");
    if linux && release && wanted {
        let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into());
        println!("cargo:rustc-link-arg-bins=-Wl,-T,{dir}/build/hot-text.ld");
    }
}
