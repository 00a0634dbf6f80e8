//! MQTT output side: the client task, the outbound queue, the command subscriber, and the
//! embedded broker used by `demo` and the fast tests.
//!
//! Speaks MQTT only; knows nothing of Modbus.

pub mod bdseq;
#[cfg(feature = "embedded-broker")]
pub mod broker;
pub mod linefile;
pub mod mqtt;
pub mod store;
pub mod tls;
