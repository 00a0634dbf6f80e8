//! The S7 input side: Siemens S7 PLCs over S7comm PUT/GET (ISO-on-TCP, RFC 1006), polled,
//! mapped and written like Modbus devices.
//!
//! - `frame.rs`: the frames (TPKT, COTP, S7 setup / ReadVar / WriteVar), pure encode/decode,
//!   shared with the simulator's S7 server; fuzzed.
//! - `client.rs`: one S7 connection over tokio (connect, negotiate the PDU size, read, write).
//! - `link.rs`: the task that owns a connection: polls by the S7 read plan, runs writes ahead
//!   of the next poll, times out, reconnects with backoff, reports status and faults.
//!
//! Speaks S7 only; knows nothing of MQTT. Results leave as the same `LinkEvent`s as Modbus
//! links; writes arrive as the same `WriteRequest`s from the one executor.
//!
//! FIELDGATE: the Rust S7 crates evaluated (2026-11) and why none is used:
//! - `s7` 0.1.4: blocking `std::net` transport, only `db_read`/`db_write` "tested on actual
//!   hardware", marked unstable by its author, no multi-item ReadVar and no per-item return
//!   codes, unmaintained for years.
//! - `rust7` 0.1.2: a careful Snap7-style client, but blocking (`std::net`), one PLC call per
//!   method; it would need `spawn_blocking` per request and could not be cancelled by our
//!   shutdown token; no server side for the simulator.
//! - `snap7-client` 0.1.x: async tokio, S7comm and S7CommPlus, but weeks old with a new minor
//!   release every few days, a client behind its own `Mutex`, and much we do not use
//!   (S7CommPlus, TLS); no server side either.
//!
//! S7comm PUT/GET is small and public; ~600 lines of our own give multi-item reads planned by
//! our planner, per-item return codes as point faults, the same timeout and backoff shape as
//! our Modbus links, and one frame codec shared by client, simulator and fuzzer.

pub mod client;
pub mod frame;
pub mod link;
