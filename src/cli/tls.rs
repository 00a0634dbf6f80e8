//! `fieldgate tls inspect`: connect to the broker, print the certificate it presents and whether
//! the configured trust accepts it, and with `--pin` add it to the pin file. It must not publish
//! or subscribe.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Subcommand;

use fieldgate::config;

#[derive(Debug, Subcommand)]
pub(crate) enum TlsCommand {
    /// Connect to the broker and print the certificate it presents: subject, issuer, names,
    /// validity and SHA-256, and whether the configured trust accepts it.
    Inspect {
        /// The mapping file: its broker, `mqtt.tls` trust and client certificate.
        #[arg(short, long, conflicts_with_all = ["host"])]
        config: Option<PathBuf>,
        /// The broker, when no mapping is given (judged against the system CA store).
        #[arg(long, requires = "port")]
        host: Option<String>,
        #[arg(long)]
        port: Option<u16>,
        /// Trust the presented certificate from now on: add its SHA-256 to the mapping's
        /// `mqtt.tls.pin_file`.
        #[arg(long, requires = "config")]
        pin: bool,
    },
}

/// Run a `tls` subcommand.
pub(crate) async fn run(command: TlsCommand) -> anyhow::Result<()> {
    match command {
        TlsCommand::Inspect {
            config,
            host,
            port,
            pin,
        } => tls_inspect(config, host, port, pin).await,
    }
}

async fn tls_inspect(
    config: Option<PathBuf>,
    host: Option<String>,
    port: Option<u16>,
    pin: bool,
) -> anyhow::Result<()> {
    use fieldgate::outputs::tls;
    let (host, port, settings, source) = match &config {
        Some(path) => {
            let model = config::load(path).map_err(|e| anyhow::anyhow!("{e}"))?;
            let settings = model
                .mqtt
                .tls
                .clone()
                .ok_or_else(|| anyhow::anyhow!("{}: no mqtt.tls section", path.display()))?;
            let source = match &settings.trust {
                tls::Trust::System => "the system CA store".to_owned(),
                tls::Trust::CaFile(p) => format!("ca_file {}", p.display()),
                tls::Trust::Pins(p) => format!("{} pin(s)", p.len()),
            };
            (model.mqtt.host.clone(), model.mqtt.port, settings, source)
        }
        None => {
            let (Some(h), Some(p)) = (host, port) else {
                anyhow::bail!("give -c FILE, or --host and --port");
            };
            let settings = tls::TlsSettings {
                trust: tls::Trust::System,
                client: None,
                min_version: tls::TlsVersion::V1_2,
                server_name: None,
                pin_file: None,
            };
            (h, p, settings, "the system CA store".to_owned())
        }
    };
    let presented = tls::inspect(&host, port, &settings)
        .await
        .map_err(anyhow::Error::msg)?;
    println!(
        "{host}:{port} presented {} certificate(s)",
        presented.chain.len()
    );
    for (i, der) in presented.chain.iter().enumerate() {
        print!("{}", tls::describe(der, i == 0));
    }
    match &presented.verdict {
        Ok(()) => println!("trust ({source}): accepted"),
        Err((state, reason)) => println!("trust ({source}): refused, {}: {reason}", state.as_str()),
    }
    if pin {
        let file = settings.pin_file.clone().ok_or_else(|| {
            anyhow::anyhow!("the mapping has no mqtt.tls.pin_file to write the pin to")
        })?;
        let leaf = &presented.chain[0];
        let hex = tls::hex(&tls::sha256(leaf.as_ref()));
        let existing = tls::read_pin_file(&file).map_err(anyhow::Error::msg)?;
        if existing.contains(&tls::sha256(leaf.as_ref())) {
            println!("already pinned in {}", file.display());
        } else {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&file)
                .with_context(|| format!("open {}", file.display()))?;
            writeln!(
                f,
                "{hex}  # {}, pinned {}",
                tls::subject(leaf),
                fieldgate::mappings::engine::timestamp(std::time::SystemTime::now())
            )?;
            println!(
                "pinned {hex} in {}; restart the gateway to use it",
                file.display()
            );
        }
    }
    Ok(())
}
