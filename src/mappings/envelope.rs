//! End-to-end payload encryption: the envelope, AES-256-GCM (RustCrypto's `aes-gcm`).
//!
//! ```text
//! envelope  = version (1 byte, 0x01) | nonce (12 bytes) | ciphertext | tag (16 bytes)
//! plaintext = timestamp (u64, big-endian, ms since the Unix epoch) | payload
//! AAD       = the MQTT topic (UTF-8)
//! ```
//!
//! The nonce is random per message (the caller draws it from the OS). The topic is bound in
//! as associated data, so a message cannot be moved to another topic; the timestamp lets a
//! receiver refuse old or replayed messages (commands do). Pure: no randomness, no clock.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};

pub const VERSION: u8 = 1;
pub const NONCE_LEN: usize = 12;
pub const TAG_LEN: usize = 16;
/// Bytes an envelope adds to a payload.
pub const OVERHEAD: usize = 1 + NONCE_LEN + 8 + TAG_LEN;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("not an encrypted envelope (too short)")]
    TooShort,
    #[error("unknown envelope version {0}")]
    Version(u8),
    #[error("does not authenticate (wrong key, wrong topic, or tampered)")]
    Authentication,
}

/// Encrypt `payload` for `topic`.
pub fn seal(
    key: &[u8; 32],
    nonce: [u8; NONCE_LEN],
    topic: &str,
    ts_ms: u64,
    payload: &[u8],
) -> Vec<u8> {
    let cipher = Aes256Gcm::new(key.into());
    let mut plain = Vec::with_capacity(8 + payload.len());
    plain.extend_from_slice(&ts_ms.to_be_bytes());
    plain.extend_from_slice(payload);
    let nonce_arr = Nonce::from(nonce);
    let sealed = cipher
        .encrypt(
            &nonce_arr,
            Payload {
                msg: &plain,
                aad: topic.as_bytes(),
            },
        )
        .expect("AES-GCM encryption of an in-memory buffer cannot fail");
    let mut out = Vec::with_capacity(1 + NONCE_LEN + sealed.len());
    out.push(VERSION);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    out
}

/// Decrypt and authenticate an envelope received on `topic`: (timestamp ms, payload).
pub fn open(key: &[u8; 32], topic: &str, envelope: &[u8]) -> Result<(u64, Vec<u8>), EnvelopeError> {
    if envelope.len() < OVERHEAD {
        return Err(EnvelopeError::TooShort);
    }
    if envelope[0] != VERSION {
        return Err(EnvelopeError::Version(envelope[0]));
    }
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&envelope[1..1 + NONCE_LEN]);
    let cipher = Aes256Gcm::new(key.into());
    let plain = cipher
        .decrypt(
            &Nonce::from(nonce),
            Payload {
                msg: &envelope[1 + NONCE_LEN..],
                aad: topic.as_bytes(),
            },
        )
        .map_err(|_| EnvelopeError::Authentication)?;
    let (ts, payload) = plain.split_at(8);
    let ts = u64::from_be_bytes(ts.try_into().map_err(|_| EnvelopeError::TooShort)?);
    Ok((ts, payload.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 32] = [7; 32];

    #[test]
    fn round_trip_and_tamper() {
        let env = seal(&KEY, [1; 12], "a/b", 1_700_000_000_123, b"startp1");
        assert_eq!(env.len(), b"startp1".len() + OVERHEAD);
        assert_eq!(
            open(&KEY, "a/b", &env).unwrap(),
            (1_700_000_000_123, b"startp1".to_vec())
        );
        // Every single flipped bit, anywhere, is refused.
        for i in 0..env.len() {
            let mut t = env.clone();
            t[i] ^= 0x01;
            assert!(open(&KEY, "a/b", &t).is_err(), "bit flip at {i} accepted");
        }
        assert_eq!(open(&KEY, "a/c", &env), Err(EnvelopeError::Authentication));
        assert_eq!(
            open(&[8; 32], "a/b", &env),
            Err(EnvelopeError::Authentication)
        );
        assert_eq!(open(&KEY, "a/b", b"startp1"), Err(EnvelopeError::TooShort));
    }

    #[test]
    fn a_known_vector_decrypts() {
        // Fixed key, nonce and timestamp: the bytes a console in another language must
        // produce for `startp1` on ISBTest/pumpcontrol/pump (see README, "Payload encryption").
        let env = seal(
            &[0x11; 32],
            [0x22; 12],
            "ISBTest/pumpcontrol/pump",
            1,
            b"startp1",
        );
        let hex: String = env.iter().map(|b| format!("{b:02x}")).collect();
        assert!(hex.starts_with("01222222222222222222222222"));
        assert_eq!(
            open(&[0x11; 32], "ISBTest/pumpcontrol/pump", &env)
                .unwrap()
                .1,
            b"startp1"
        );
    }
}
