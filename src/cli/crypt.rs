//! `fieldgate crypt`: encrypt or decrypt a payload (stdin to stdout) as the gateway does with
//! `mqtt.payload_encryption`. The envelope format lives in the library; this must not invent its
//! own, and it prints nothing on stdout when a message does not authenticate.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub(crate) enum CryptCommand {
    /// Seal stdin for TOPIC: the envelope (binary) on stdout.
    Encrypt {
        /// The 32-byte key file (raw, base64 or hex).
        #[arg(long)]
        key: PathBuf,
        /// The topic the message is for (bound into the envelope).
        #[arg(long)]
        topic: String,
    },
    /// Open an envelope from stdin (received on TOPIC): the payload on stdout. Fails, with
    /// nothing on stdout, if it does not authenticate.
    Decrypt {
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        topic: String,
        /// Print the sender's timestamp (RFC 3339) on stderr.
        #[arg(long)]
        show_time: bool,
    },
}

pub(crate) fn crypt(command: CryptCommand) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    let (key, topic) = match &command {
        CryptCommand::Encrypt { key, topic } | CryptCommand::Decrypt { key, topic, .. } => {
            (key, topic)
        }
    };
    let key = fieldgate::config::read_key_file(key).map_err(anyhow::Error::msg)?;
    let mut input = Vec::new();
    std::io::stdin().read_to_end(&mut input)?;
    let out = match command {
        CryptCommand::Encrypt { .. } => {
            use aes_gcm::aead::Generate;
            let nonce: aes_gcm::Nonce<aes_gcm::aes::cipher::consts::U12> =
                aes_gcm::Nonce::generate();
            let ts = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_millis() as u64;
            fieldgate::mappings::envelope::seal(&key, nonce.into(), topic, ts, &input)
        }
        CryptCommand::Decrypt { show_time, .. } => {
            let (ts, plain) = fieldgate::mappings::envelope::open(&key, topic, &input)
                .with_context(|| format!("message for {topic}"))?;
            if show_time {
                let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ts);
                eprintln!("sent {}", fieldgate::mappings::engine::timestamp(at));
            }
            plain
        }
    };
    std::io::stdout().write_all(&out)?;
    Ok(())
}
