//! TLS: rustls (TLS 1.3 and 1.2 only, ring provider) for the server and the client.
//!
//! - [`ServerTls`]: certificate and key from PEM files, reloadable without dropping sessions,
//!   and optionally a client CA for certificate login (mutual TLS).
//! - [`ClientTls`]: how a client verifies the server: system roots, a CA file, or a pinned
//!   SHA-256 fingerprint; optionally a client certificate.
//! - [`self_signed`]: a development CA and server certificate generated into a directory.
//! - `stream`: the server's side of a connection, driven on rustls' unbuffered API so that an
//!   idle session holds no TLS buffers.
//!
//! DotNetOpenServer clients start TLS right after the TCP connect, with no upgrade command, so
//! a TLS listener speaks TLS from the first byte.

mod client;
pub mod self_signed;
mod server;
pub(crate) mod stream;

pub use client::{ClientTls, ServerVerification};
pub use server::ServerTls;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::sync::Arc;

/// The only protocol versions openserver negotiates; nothing older can be agreed.
pub static PROTOCOL_VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A certificate or key file could not be read.
    #[error("cannot read {path}: {message}")]
    Read {
        /// The file.
        path: String,
        /// What failed.
        message: String,
    },
    /// A file held no usable certificate or key.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong with it.
        message: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(String),
    /// A fingerprint that is not 32 bytes of hex.
    #[error("invalid SHA-256 fingerprint {0:?}: expected 64 hex digits (colons optional)")]
    Fingerprint(String),
    /// Generating a certificate failed.
    #[error("certificate generation: {0}")]
    Generate(String),
}

/// The crypto provider every TLS configuration uses.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The server's provider: the same suites, AES-128-GCM with SHA-256 first. With
/// `ignore_client_order` the server picks it whenever the client offers it: SHA-256 has a
/// hardware path on common CPUs where SHA-384 has none, so each handshake costs less, and
/// AES-128 encrypts each record with fewer rounds. Both are TLS 1.3's and 1.2's standard
/// AEAD suites; nothing weaker is added.
pub(crate) fn server_provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    let rank = |suite: &rustls::SupportedCipherSuite| {
        use rustls::CipherSuite as S;
        match suite.suite() {
            S::TLS13_AES_128_GCM_SHA256 => 0,
            S::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
            | S::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => 1,
            _ => 2,
        }
    };
    // Stable: the provider's own order stays among equals.
    provider.cipher_suites.sort_by_key(rank);
    Arc::new(provider)
}

/// The SHA-256 fingerprint of a DER certificate, as uppercase hex pairs joined by colons
/// (the form `openssl x509 -fingerprint -sha256` prints).
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    let digest = Sha256::digest(cert.as_ref());
    digest
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The user a client certificate names: its subject's common name.
pub fn certificate_user(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let cn = parsed.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}

/// The user the first certificate of a PEM file names (its subject's common name), as a
/// server with a client CA would log it in; `None` if it has no common name.
pub fn certificate_file_user(path: &Path) -> Result<Option<String>, TlsError> {
    let certs = load_certs(path)?;
    Ok(certs.first().and_then(certificate_user))
}

/// Parses a SHA-256 fingerprint: 64 hex digits, any case, colons optional, an optional
/// `SHA256:` prefix.
pub fn parse_fingerprint(text: &str) -> Result<[u8; 32], TlsError> {
    let trimmed = text.trim();
    let body = trimmed
        .strip_prefix("SHA256:")
        .or_else(|| trimmed.strip_prefix("sha256:"))
        .unwrap_or(trimmed);
    let hex_digits: String = body.chars().filter(|c| *c != ':').collect();
    let mut out = [0u8; 32];
    hex::decode_to_slice(&hex_digits, &mut out).map_err(|_| TlsError::Fingerprint(text.into()))?;
    Ok(out)
}

/// Reads every certificate of a PEM file.
pub(crate) fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| invalid(path, e.to_string()))?;
    if certs.is_empty() {
        return Err(invalid(path, "no CERTIFICATE block".into()));
    }
    Ok(certs)
}

/// Reads the first private key (PKCS#8, PKCS#1 or SEC1) of a PEM file.
pub(crate) fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path)?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|e| invalid(path, e.to_string()))?
        .ok_or_else(|| invalid(path, "no PRIVATE KEY block".into()))
}

/// A root store holding every certificate of a PEM file.
pub(crate) fn load_roots(path: &Path) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in load_certs(path)? {
        roots
            .add(cert)
            .map_err(|e| invalid(path, format!("unusable CA certificate: {e}")))?;
    }
    Ok(roots)
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::Read {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

fn invalid(path: &Path, message: String) -> TlsError {
    TlsError::Invalid {
        path: path.display().to_string(),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_round_trips_in_every_spelling() {
        let cert = CertificateDer::from(vec![1u8, 2, 3]);
        let fp = fingerprint(&cert);
        assert_eq!(fp.len(), 32 * 3 - 1);
        let bytes = parse_fingerprint(&fp).unwrap();
        assert_eq!(
            parse_fingerprint(&fp.replace(':', "").to_lowercase()).unwrap(),
            bytes
        );
        assert_eq!(parse_fingerprint(&format!("SHA256:{fp}")).unwrap(), bytes);
        assert!(parse_fingerprint("abcd").is_err());
        assert!(parse_fingerprint(&"zz".repeat(32)).is_err());
    }
}
