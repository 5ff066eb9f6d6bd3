//! TLS for the bench's own connections and for its bare echo server.
//!
//! The load generator builds its rustls client itself (rather than through
//! [`openserver::client`]) because it drives raw framed streams. Session resumption is off, so
//! every connection costs a full handshake, the case the handshake-rate target is about.

use anyhow::{anyhow, Context as _, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// How the bench verifies the server it connects to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Verify {
    /// Certificates chaining to the CA certificates in this PEM file.
    Ca(PathBuf),
    /// Exactly the certificate with this SHA-256 fingerprint (hex, colons optional).
    Fingerprint(String),
    /// The operating system's trusted roots.
    SystemRoots,
}

/// TLS settings of a load run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientTlsSpec {
    /// How the server is verified.
    pub verify: Verify,
    /// The name verified and sent as SNI (a host name or an IP address).
    pub server_name: String,
}

/// A connector and the name to connect as.
#[derive(Clone)]
pub struct Connector {
    /// The rustls connector.
    pub connector: TlsConnector,
    /// The server's name.
    pub name: ServerName<'static>,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn versions() -> &'static [&'static rustls::SupportedProtocolVersion] {
    openserver::tls::PROTOCOL_VERSIONS
}

impl ClientTlsSpec {
    /// Builds the connector (no session resumption: every handshake is a full one).
    pub fn connector(&self) -> Result<Connector> {
        let provider = provider();
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions())?;
        let builder = match &self.verify {
            Verify::Ca(path) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in load_certs(path)? {
                    roots.add(cert)?;
                }
                builder.with_root_certificates(roots)
            }
            Verify::SystemRoots => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in rustls_native_certs::load_native_certs().certs {
                    // One unusable system certificate should not disable the others.
                    let _ = roots.add(cert);
                }
                builder.with_root_certificates(roots)
            }
            Verify::Fingerprint(fp) => {
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(Pinned {
                        sha256: openserver::tls::parse_fingerprint(fp)?,
                        provider,
                    }))
            }
        };
        let mut config = builder.with_no_client_auth();
        config.resumption = Resumption::disabled();
        let name = ServerName::try_from(self.server_name.clone())
            .map_err(|_| anyhow!("invalid TLS server name {:?}", self.server_name))?;
        Ok(Connector {
            connector: TlsConnector::from(Arc::new(config)),
            name,
        })
    }
}

/// The server side for the bare echo target, from the same PEM files openserver uses.
pub fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor> {
    let certs = load_certs(cert)?;
    let pem = std::fs::read(key).with_context(|| format!("cannot read {}", key.display()))?;
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut pem.as_slice())?
        .ok_or_else(|| anyhow!("{}: no private key", key.display()))?;
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions())?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let pem = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice()).collect::<Result<Vec<_>, _>>()?;
    if certs.is_empty() {
        return Err(anyhow!("{}: no certificate", path.display()));
    }
    Ok(certs)
}

/// Accepts the one certificate with this SHA-256 digest; signatures are still verified.
#[derive(Debug)]
struct Pinned {
    sha256: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // Not secret: the fingerprint is public, so a plain comparison is fine here.
        if Sha256::digest(end_entity.as_ref()).as_slice() == self.sha256 {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "server certificate does not match --fingerprint".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = &self.provider.signature_verification_algorithms;
        verify_tls12_signature(message, cert, dss, algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = &self.provider.signature_verification_algorithms;
        verify_tls13_signature(message, cert, dss, algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A development certificate set in `dir` (generated once), for the bench's own servers.
pub fn dev_certs(dir: &Path) -> Result<openserver::tls::self_signed::SelfSigned> {
    Ok(openserver::tls::self_signed::ensure(dir, &[])?)
}

/// How the bench's connections trust its own server (development certificates in `dir`):
/// pinned by fingerprint, as `hello --fingerprint` does. Pinning skips the certificate chain
/// walk, which would otherwise add client CPU to every handshake on a machine that client and
/// server share; the handshake's signature is verified either way.
pub fn pinned(dir: &Path, server_name: &str) -> Result<ClientTlsSpec> {
    let set = dev_certs(dir)?;
    let leaf = load_certs(&set.cert)?
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("{}: no certificate", set.cert.display()))?;
    Ok(ClientTlsSpec {
        verify: Verify::Fingerprint(openserver::tls::fingerprint(&leaf)),
        server_name: server_name.to_owned(),
    })
}
