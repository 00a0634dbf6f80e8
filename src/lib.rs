//! fieldgate: a Modbus TCP/RTU (and Siemens S7) ⇄ MQTT protocol-converter gateway.
//!
//! The flow: `inputs` (one task per Modbus link) produce poll results; the `mappings` engine
//! (pure) turns them into typed updates, which the `northbound` profiles (pure) turn into
//! publications; `outputs` speak MQTT; the `executor` turns commands into writes. `config`
//! compiles the YAML into the checked `model`; `vocabulary` holds the words they all share.
//! Imports run one way, down that list's layers; see `docs/ARCHITECTURE.md`. This file only
//! declares the modules: it must not hold logic.

// One exception, `memory` (a call into glibc and one into `madvise`), allows it where it stands.
#![deny(unsafe_code)]
#![warn(missing_debug_implementations, rust_2018_idioms, unreachable_pub)]
#![allow(unreachable_pub)]

pub mod backoff;
pub mod config;
pub mod events;
pub mod executor;
#[doc(hidden)]
pub mod fuzz_targets;
pub mod gateway;
pub mod handoff;
pub mod health;
pub mod inputs;
pub mod mappings;
pub mod memory;
pub mod model;
pub mod northbound;
pub mod outputs;
pub mod reload;
pub mod simulator;
pub mod telemetry;
pub mod vocabulary;
pub mod web;

pub use gateway::run;
pub mod check;
#[cfg(feature = "embedded-broker")]
pub mod demo;
pub mod supervisor;
