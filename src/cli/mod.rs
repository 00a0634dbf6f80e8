//! The subcommands of the `fieldgate` binary, one module each, and what they share: where a
//! commissioning tool connects ([`Target`]) and the shutdown signal.
//!
//! Each module turns its arguments into calls into the library and prints the result; none of
//! them holds gateway logic (decoding, planning, MQTT sessions live in the library).

#[cfg(feature = "embedded-broker")]
pub(crate) mod broker;
pub(crate) mod check;
pub(crate) mod crypt;
pub(crate) mod probe;
pub(crate) mod run;
pub(crate) mod scan;
pub(crate) mod simulate;
pub(crate) mod tls;
pub(crate) mod web;

use std::path::PathBuf;

use tokio_util::sync::CancellationToken;

/// Where a commissioning tool connects.
#[derive(Debug, clap::Args)]
pub(crate) struct Target {
    /// Modbus TCP, `HOST:PORT`.
    #[arg(long, conflicts_with_all = ["rtu", "rtu_over_tcp"])]
    pub(crate) tcp: Option<String>,
    /// Modbus RTU on this serial port.
    #[arg(long)]
    pub(crate) rtu: Option<PathBuf>,
    /// RTU framing over TCP, `HOST:PORT`.
    #[arg(long, conflicts_with = "rtu")]
    pub(crate) rtu_over_tcp: Option<String>,
    #[arg(long, default_value_t = 19_200)]
    pub(crate) baud: u32,
    /// none, even or odd.
    #[arg(long, default_value = "even")]
    pub(crate) parity: String,
    #[arg(long, default_value_t = 1)]
    pub(crate) unit: u8,
    /// Time to wait for an answer.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub(crate) timeout: std::time::Duration,
}

impl Target {
    pub(crate) fn spec(&self) -> anyhow::Result<fieldgate::model::LinkSpec> {
        use fieldgate::model::{LinkSpec, Parity, SerialSpec};
        let host_port = |s: &str| -> anyhow::Result<(String, u16)> {
            let (h, p) = s
                .rsplit_once(':')
                .ok_or_else(|| anyhow::anyhow!("`{s}`: write HOST:PORT"))?;
            Ok((h.trim_matches(['[', ']']).to_owned(), p.parse()?))
        };
        Ok(match (&self.tcp, &self.rtu, &self.rtu_over_tcp) {
            (Some(t), None, None) => {
                let (host, port) = host_port(t)?;
                LinkSpec::Tcp { host, port }
            }
            (None, None, Some(t)) => {
                let (host, port) = host_port(t)?;
                LinkSpec::RtuOverTcp { host, port }
            }
            (None, Some(p), None) => LinkSpec::Rtu(SerialSpec {
                path: p.to_string_lossy().into_owned(),
                baud: self.baud,
                data_bits: 8,
                parity: match self.parity.as_str() {
                    "none" => Parity::None,
                    "even" => Parity::Even,
                    "odd" => Parity::Odd,
                    other => anyhow::bail!("--parity {other}: none, even or odd"),
                },
                stop_bits: 1,
            }),
            _ => anyhow::bail!("name exactly one of --tcp, --rtu or --rtu-over-tcp"),
        })
    }
}

/// Cancelled on SIGINT or SIGTERM.
pub(crate) fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM");
                    let _ = tokio::signal::ctrl_c().await;
                    t.cancel();
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        t.cancel();
    });
    token
}
