//! How a client verifies the server, and optionally proves itself with a certificate.

use super::{
    load_certs, load_key, load_roots, parse_fingerprint, provider, TlsError, PROTOCOL_VERSIONS,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::sync::Arc;
use subtle::ConstantTimeEq;
use tokio_rustls::TlsConnector;

/// Which servers the client accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerVerification {
    /// Certificates chaining to the operating system's trusted roots, for the server's name.
    SystemRoots,
    /// Certificates chaining to the CA certificates in this PEM file, for the server's name.
    CaFile(PathBuf),
    /// Exactly the certificate with this SHA-256 fingerprint (64 hex digits, colons optional),
    /// whatever its issuer or names: for self-signed development servers.
    Fingerprint(String),
}

/// TLS settings of a [`ClientConfig`](crate::client::ClientConfig).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTls {
    /// How the server is verified.
    pub verification: ServerVerification,
    /// The name to verify and send as SNI; default: the host part of the connect address.
    pub server_name: Option<String>,
    /// A client certificate chain and key (PEM files), for certificate login.
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

impl ClientTls {
    /// TLS verified as `verification`, no client certificate.
    pub fn new(verification: ServerVerification) -> Self {
        ClientTls {
            verification,
            server_name: None,
            client_cert: None,
        }
    }

    /// Presents this certificate chain and key (PEM files) to the server.
    pub fn with_client_cert(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.client_cert = Some((cert.into(), key.into()));
        self
    }

    /// Verifies the server as `name` instead of the connect address's host.
    pub fn with_server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }

    /// Builds the connector and the name to connect as, for a server at `host`.
    pub(crate) fn connector(
        &self,
        host: &str,
    ) -> Result<(TlsConnector, ServerName<'static>), TlsError> {
        let provider = provider();
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(PROTOCOL_VERSIONS)
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let builder = match &self.verification {
            ServerVerification::SystemRoots => {
                let mut roots = rustls::RootCertStore::empty();
                let found = rustls_native_certs::load_native_certs();
                for cert in found.certs {
                    // One unparsable system certificate should not disable all the others.
                    let _ = roots.add(cert);
                }
                if roots.is_empty() {
                    return Err(TlsError::Config(
                        "no trusted root certificates found on this system".into(),
                    ));
                }
                builder.with_root_certificates(roots)
            }
            ServerVerification::CaFile(path) => builder.with_root_certificates(load_roots(path)?),
            ServerVerification::Fingerprint(fp) => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(PinnedCert {
                    sha256: parse_fingerprint(fp)?,
                    provider: provider.clone(),
                })),
        };
        let config = match &self.client_cert {
            Some((cert, key)) => builder
                .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
                .map_err(|e| TlsError::Config(format!("client certificate: {e}")))?,
            None => builder.with_no_client_auth(),
        };
        let name = self.server_name.as_deref().unwrap_or(host);
        let name = ServerName::try_from(name.to_owned())
            .map_err(|_| TlsError::Config(format!("invalid server name {name:?}")))?;
        Ok((TlsConnector::from(Arc::new(config)), name))
    }
}

/// The server's certificate is not the pinned one; carries its fingerprint.
#[derive(Debug, thiserror::Error)]
#[error("server certificate fingerprint {0} does not match the pinned one")]
struct FingerprintMismatch(String);

/// Accepts exactly one certificate, by SHA-256 fingerprint; signatures are still checked, so
/// the server must hold the certificate's key.
#[derive(Debug)]
struct PinnedCert {
    sha256: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCert {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let digest = Sha256::digest(end_entity.as_ref());
        if bool::from(digest.as_slice().ct_eq(&self.sha256)) {
            Ok(ServerCertVerified::assertion())
        } else {
            // A certificate error like any other refused certificate, so that callers can tell
            // verification failures from the rest.
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Other(rustls::OtherError(Arc::new(FingerprintMismatch(
                    super::fingerprint(end_entity),
                )))),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
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
        verify_tls13_signature(
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
