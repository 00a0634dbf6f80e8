//! TLS for the MQTT connection: rustls with the ring provider (no aws-lc), trust from a CA
//! file or the system roots, or pinned certificates; an optional client certificate; and the
//! classification of connection failures into states an operator can act on.
//!
//! Reads certificate, key and pin files; does no networking. Never logs or returns key
//! material.

use std::path::Path;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    AlertDescription, CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore,
    SignatureScheme,
};
use sha2::{Digest, Sha256};

// The settings are plain data of the model; these paths stay for the config compiler and
// `check`.
pub use crate::model::{TlsSettings, TlsVersion, Trust};

/// The SHA-256 of a certificate's DER, as pinned.
pub fn sha256(der: &[u8]) -> [u8; 32] {
    Sha256::digest(der).into()
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A pin: 64 hex digits, colons and spaces allowed.
pub fn parse_pin(s: &str) -> Result<[u8; 32], String> {
    let digits: String = s.chars().filter(|c| !matches!(c, ':' | ' ')).collect();
    if digits.len() != 64 || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!(
            "`{s}` is not a SHA-256 (64 hex digits, colons allowed)"
        ));
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&digits[2 * i..2 * i + 2], 16).map_err(|e| e.to_string())?;
    }
    Ok(out)
}

/// Pins in a pin file: one per line, `#` starts a comment. A missing file has none.
pub fn read_pin_file(path: &Path) -> Result<Vec<[u8; 32]>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(parse_pin)
        .collect()
}

pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: not a PEM certificate file: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate in it", path.display()));
    }
    Ok(certs)
}

/// A private key in PEM: PKCS#8, PKCS#1 (RSA) or SEC1 (EC).
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| {
        format!(
            "{}: no usable private key (PEM PKCS#8, PKCS#1 or SEC1): {e}",
            path.display()
        )
    })
}

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub fn roots(trust: &Trust) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    match trust {
        Trust::System => {
            let found = rustls_native_certs::load_native_certs();
            for c in found.certs {
                let _ = roots.add(c);
            }
            if roots.is_empty() {
                return Err("no system CA certificates found (install ca-certificates, or set mqtt.tls.ca_file)".into());
            }
        }
        Trust::CaFile(path) => {
            for c in read_certs(path)? {
                roots
                    .add(c)
                    .map_err(|e| format!("{}: unusable CA certificate: {e}", path.display()))?;
            }
        }
        Trust::Pins(_) => {}
    }
    Ok(roots)
}

/// The rustls client configuration for `settings`.
pub fn client_config(settings: &TlsSettings) -> Result<ClientConfig, String> {
    let provider = provider();
    let versions: &[&rustls::SupportedProtocolVersion] = match settings.min_version {
        TlsVersion::V1_2 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::V1_3 => &[&rustls::version::TLS13],
    };
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(versions)
        .map_err(|e| e.to_string())?;
    let builder = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier(settings)?);
    match &settings.client {
        Some((cert, key)) => builder
            .with_client_auth_cert(read_certs(cert)?, read_key(key)?)
            .map_err(|e| format!("client certificate and key do not fit together: {e}")),
        None => Ok(builder.with_no_client_auth()),
    }
}

/// The verifier of the broker's certificate that `settings` configure.
pub fn verifier(settings: &TlsSettings) -> Result<Arc<dyn ServerCertVerifier>, String> {
    let provider = provider();
    Ok(match &settings.trust {
        Trust::Pins(pins) => pinned(pins.clone(), Arc::clone(&provider)),
        trust => {
            let roots = Arc::new(roots(trust)?);
            let inner = WebPkiServerVerifier::builder_with_provider(roots, Arc::clone(&provider))
                .build()
                .map_err(|e| e.to_string())?;
            let name = match &settings.server_name {
                Some(n) => Some(
                    ServerName::try_from(n.clone())
                        .map_err(|_| format!("`{n}` is not a valid server name"))?,
                ),
                None => None,
            };
            Arc::new(NamedVerifier { inner, name })
        }
    })
}

/// What a broker presented, as `fieldgate tls inspect` shows it.
#[derive(Debug)]
pub struct Presented {
    pub chain: Vec<CertificateDer<'static>>,
    /// The configured trust's verdict: `Ok`, or the state and reason it refuses.
    pub verdict: Result<(), (ConnState, String)>,
}

/// Connect to `host:port`, take the certificate chain the broker presents, and judge it
/// with `settings` (the configured trust). Sends no MQTT.
pub async fn inspect(host: &str, port: u16, settings: &TlsSettings) -> Result<Presented, String> {
    let provider = provider();
    // Record the chain the broker presents and accept it, to show and judge it separately.
    let recorded: Arc<std::sync::Mutex<Vec<CertificateDer<'static>>>> = Arc::default();
    let record = Arc::clone(&recorded);
    let recorder = Arc::new(CheckedBy {
        provider: Arc::clone(&provider),
        accept: move |leaf: &CertificateDer<'_>, rest: &[CertificateDer<'_>]| {
            let mut chain = vec![leaf.clone().into_owned()];
            chain.extend(rest.iter().map(|c| c.clone().into_owned()));
            *record
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = chain;
            Ok(())
        },
    });
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::clone(&recorder) as Arc<dyn ServerCertVerifier>);
    let config = match &settings.client {
        Some((cert, key)) => builder
            .with_client_auth_cert(read_certs(cert)?, read_key(key)?)
            .map_err(|e| e.to_string())?,
        None => builder.with_no_client_auth(),
    };
    let name = ServerName::try_from(host.to_owned())
        .map_err(|_| format!("`{host}` is not a valid host name"))?;
    let connect = async {
        let tcp = tokio::net::TcpStream::connect((host, port))
            .await
            .map_err(|e| format!("cannot connect to {host}:{port}: {e}"))?;
        // A broker that insists on a client certificate may end the handshake after it
        // sent its own: what it presented is recorded either way.
        let _ = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name.clone(), tcp)
            .await;
        Ok::<(), String>(())
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), connect)
        .await
        .map_err(|_| format!("{host}:{port}: no TLS answer within 10 s"))??;
    let chain = std::mem::take(
        &mut *recorded
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    let Some((leaf, rest)) = chain.split_first() else {
        return Err(format!(
            "{host}:{port} presented no certificate (is it TLS?)"
        ));
    };
    let verdict = match verifier(settings) {
        Err(e) => Err((ConnState::Error, e)),
        Ok(v) => match v.verify_server_cert(leaf, rest, &name, &[], UnixTime::now()) {
            Ok(_) => Ok(()),
            Err(e) => Err((classify(&e), e.to_string())),
        },
    };
    Ok(Presented { chain, verdict })
}

/// The standard WebPKI checks, against `name` when the configuration names the broker
/// differently from the host we connect to.
#[derive(Debug)]
struct NamedVerifier {
    inner: Arc<WebPkiServerVerifier>,
    name: Option<ServerName<'static>>,
}

impl ServerCertVerifier for NamedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let name = self.name.as_ref().unwrap_or(server_name);
        self.inner
            .verify_server_cert(end_entity, intermediates, name, ocsp, now)
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The broker's certificate did not match any pin.
#[derive(Debug, thiserror::Error)]
#[error("certificate SHA-256 {0} matches no pin")]
pub struct PinMismatch(pub String);

/// Decides on the leaf certificate by `accept` (a pin, a recording), and still verifies that
/// the server holds the certificate's key: the handshake signature.
struct CheckedBy<F> {
    accept: F,
    provider: Arc<CryptoProvider>,
}

impl<F> std::fmt::Debug for CheckedBy<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CheckedBy")
    }
}

impl<F> ServerCertVerifier for CheckedBy<F>
where
    F: Fn(&CertificateDer<'_>, &[CertificateDer<'_>]) -> Result<(), rustls::Error> + Send + Sync,
{
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        (self.accept)(end_entity, intermediates).map(|()| ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Accepts exactly the pinned leaf certificates.
fn pinned(pins: Vec<[u8; 32]>, provider: Arc<CryptoProvider>) -> Arc<dyn ServerCertVerifier> {
    Arc::new(CheckedBy {
        provider,
        accept: move |leaf: &CertificateDer<'_>, _: &[CertificateDer<'_>]| {
            let got = sha256(leaf.as_ref());
            if pins.contains(&got) {
                Ok(())
            } else {
                Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                    rustls::OtherError(Arc::new(PinMismatch(hex(&got)))),
                )))
            }
        },
    })
}

/// The subject of a certificate, or `?`.
pub fn subject(der: &CertificateDer<'_>) -> String {
    x509_parser::parse_x509_certificate(der.as_ref())
        .map(|(_, c)| c.subject().to_string())
        .unwrap_or_else(|_| "?".into())
}

/// A certificate as `tls inspect` prints it.
pub fn describe(der: &CertificateDer<'_>, leaf: bool) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let fingerprint = sha256(der.as_ref())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    let _ = writeln!(
        s,
        "{}",
        if leaf {
            "certificate (the broker's own):"
        } else {
            "certificate (chain):"
        }
    );
    match x509_parser::parse_x509_certificate(der.as_ref()) {
        Ok((_, c)) => {
            let _ = writeln!(s, "  subject:  {}", c.subject());
            let _ = writeln!(s, "  issuer:   {}", c.issuer());
            let names: Vec<String> = c
                .subject_alternative_name()
                .ok()
                .flatten()
                .map(|san| {
                    san.value
                        .general_names
                        .iter()
                        .map(|n| match n {
                            x509_parser::extensions::GeneralName::DNSName(d) => format!("DNS:{d}"),
                            x509_parser::extensions::GeneralName::IPAddress(ip) => match ip.len() {
                                4 => format!(
                                    "IP:{}",
                                    std::net::Ipv4Addr::from(
                                        <[u8; 4]>::try_from(*ip).unwrap_or([0; 4])
                                    )
                                ),
                                16 => format!(
                                    "IP:{}",
                                    std::net::Ipv6Addr::from(
                                        <[u8; 16]>::try_from(*ip).unwrap_or([0; 16])
                                    )
                                ),
                                _ => "IP:?".into(),
                            },
                            other => format!("{other}"),
                        })
                        .collect()
                })
                .unwrap_or_default();
            let _ = writeln!(
                s,
                "  names:    {}",
                if names.is_empty() {
                    "(none)".into()
                } else {
                    names.join(", ")
                }
            );
            let v = c.validity();
            let state = if v.is_valid() {
                ""
            } else {
                "  (NOT VALID NOW)"
            };
            let _ = writeln!(s, "  valid:    {} to {}{state}", v.not_before, v.not_after);
        }
        Err(e) => {
            let _ = writeln!(s, "  (cannot parse: {e})");
        }
    }
    let _ = writeln!(s, "  sha256:   {fingerprint}");
    s
}

/// The state of the broker connection, for logs, metrics and the retained status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    Connected,
    /// Nothing answered, or the connection broke.
    Unreachable,
    /// The broker's certificate is not signed by a trusted CA, or matches no pin.
    CertificateNotTrusted,
    CertificateExpired,
    /// The broker's certificate is for another name.
    NameMismatch,
    /// The broker wants a client certificate and we sent none.
    ClientCertificateRequired,
    /// The broker refused our client certificate.
    ClientCertificateRejected,
    BadCredentials,
    NotAuthorised,
    /// The broker keeps closing the session soon after accepting it: most likely another
    /// client connects with the same client id and takes the session over (MQTT 3.1.1
    /// section 3.1.4; MQTT 5 says so in a DISCONNECT with reason 0x8E).
    SessionTakenOver,
    /// Anything else (a protocol error, a TLS failure of another kind).
    Error,
}

impl ConnState {
    pub const ALL: [ConnState; 11] = [
        ConnState::Connected,
        ConnState::Unreachable,
        ConnState::CertificateNotTrusted,
        ConnState::CertificateExpired,
        ConnState::NameMismatch,
        ConnState::ClientCertificateRequired,
        ConnState::ClientCertificateRejected,
        ConnState::BadCredentials,
        ConnState::NotAuthorised,
        ConnState::SessionTakenOver,
        ConnState::Error,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            ConnState::Connected => "connected",
            ConnState::Unreachable => "unreachable",
            ConnState::CertificateNotTrusted => "certificate_not_trusted",
            ConnState::CertificateExpired => "certificate_expired",
            ConnState::NameMismatch => "name_mismatch",
            ConnState::ClientCertificateRequired => "client_certificate_required",
            ConnState::ClientCertificateRejected => "client_certificate_rejected",
            ConnState::BadCredentials => "bad_credentials",
            ConnState::NotAuthorised => "not_authorised",
            ConnState::SessionTakenOver => "session_taken_over",
            ConnState::Error => "error",
        }
    }
}

/// The TLS reason inside a failure, in words ("invalid peer certificate: Expired"), when
/// there is one.
pub fn reason(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(t) = e.downcast_ref::<rustls::Error>() {
            return Some(match t {
                rustls::Error::InvalidCertificate(CertificateError::Other(o)) => {
                    format!("invalid peer certificate: {}", o.0)
                }
                other => other.to_string(),
            });
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
        {
            return reason(inner).or_else(|| Some(io.to_string()));
        }
        cur = e.source();
    }
    None
}

/// Classify a TLS or I/O failure by walking the error's causes.
pub fn classify(err: &(dyn std::error::Error + 'static)) -> ConnState {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(t) = e.downcast_ref::<rustls::Error>() {
            return classify_rustls(t);
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if let Some(inner) = io.get_ref() {
                let state = classify(inner);
                if state != ConnState::Error {
                    return state;
                }
            }
            return ConnState::Unreachable;
        }
        cur = e.source();
    }
    ConnState::Error
}

fn classify_rustls(e: &rustls::Error) -> ConnState {
    use AlertDescription as A;
    match e {
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                ConnState::CertificateExpired
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                ConnState::NameMismatch
            }
            _ => ConnState::CertificateNotTrusted,
        },
        rustls::Error::AlertReceived(a) => match a {
            A::CertificateRequired | A::HandshakeFailure => ConnState::ClientCertificateRequired,
            A::BadCertificate
            | A::UnknownCA
            | A::CertificateUnknown
            | A::CertificateRevoked
            | A::CertificateExpired
            | A::UnsupportedCertificate
            | A::AccessDenied
            | A::DecryptError => ConnState::ClientCertificateRejected,
            _ => ConnState::Error,
        },
        _ => ConnState::Error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_parse_with_or_without_colons() {
        let hex64 = "ab".repeat(32);
        let colons = vec!["AB"; 32].join(":");
        assert_eq!(parse_pin(&hex64).unwrap(), [0xab; 32]);
        assert_eq!(parse_pin(&colons).unwrap(), [0xab; 32]);
        assert!(parse_pin("abcd").is_err());
        assert!(parse_pin(&"zz".repeat(32)).is_err());
    }

    #[test]
    fn failures_are_classified_through_io_wrappers() {
        let expired = rustls::Error::InvalidCertificate(CertificateError::Expired);
        let wrapped = std::io::Error::new(std::io::ErrorKind::InvalidData, expired);
        assert_eq!(classify(&wrapped), ConnState::CertificateExpired);
        let required = rustls::Error::AlertReceived(AlertDescription::CertificateRequired);
        assert_eq!(classify(&required), ConnState::ClientCertificateRequired);
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(classify(&refused), ConnState::Unreachable);
        let pin = rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(
            Arc::new(PinMismatch("00".into())),
        )));
        assert_eq!(classify(&pin), ConnState::CertificateNotTrusted);
    }
}
