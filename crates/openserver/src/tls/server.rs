//! The server's TLS configuration, with a certificate that can be swapped while running.

use super::{
    load_certs, load_key, load_roots, provider, server_provider, TlsError, PROTOCOL_VERSIONS,
};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

/// TLS for a server: what [`ServerBuilder::tls`](crate::server::ServerBuilder::tls) takes.
///
/// Cheap to clone; clones share the certificate, so [`reload`](Self::reload) on any clone
/// changes it for every new handshake while established sessions continue.
#[derive(Clone)]
pub struct ServerTls {
    /// The rustls configuration handed to each handshake.
    config: Arc<rustls::ServerConfig>,
    /// Where the certificate is swapped on reload.
    resolver: Arc<Resolver>,
    /// Whether client certificates are requested (certificate login).
    client_auth: bool,
    /// Files to reload from.
    cert_path: PathBuf,
    key_path: PathBuf,
}

impl ServerTls {
    /// Loads a certificate chain and its key from PEM files. With `client_ca`, clients may
    /// present a certificate signed by that CA (it is verified; presenting none is allowed, so
    /// password logins keep working).
    pub fn from_pem_files(
        cert: &Path,
        key: &Path,
        client_ca: Option<&Path>,
    ) -> Result<ServerTls, TlsError> {
        let resolver = Arc::new(Resolver {
            current: RwLock::new(certified_key(cert, key)?),
        });
        let builder = rustls::ServerConfig::builder_with_provider(server_provider())
            .with_protocol_versions(PROTOCOL_VERSIONS)
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let builder = match client_ca {
            Some(ca) => {
                let verifier = WebPkiClientVerifier::builder_with_provider(
                    Arc::new(load_roots(ca)?),
                    provider(),
                )
                .allow_unauthenticated()
                .build()
                .map_err(|e| TlsError::Config(format!("client CA {}: {e}", ca.display())))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_cert_resolver(resolver.clone());
        // The suite order of `server_provider`, not the client's.
        config.ignore_client_order = true;
        // Resumption by stateless tickets (the session state travels encrypted to the client)
        // rather than a server-side cache: the cache's entries, allocated all through a login
        // burst, were what kept pages of the peak resident after the clients left.
        config.ticketer = rustls::crypto::ring::Ticketer::new()
            .map_err(|e| TlsError::Config(format!("session tickets: {e}")))?;
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        Ok(ServerTls {
            config: Arc::new(config),
            resolver,
            client_auth: client_ca.is_some(),
            cert_path: cert.to_owned(),
            key_path: key.to_owned(),
        })
    }

    /// Re-reads the certificate and key files; new handshakes use them, established sessions
    /// are untouched. On error the old certificate stays in use.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = certified_key(&self.cert_path, &self.key_path)?;
        let mut current = self
            .resolver
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *current = fresh;
        Ok(())
    }

    /// The SHA-256 fingerprint of the certificate in use.
    pub fn fingerprint(&self) -> String {
        let current = self
            .resolver
            .current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        current
            .end_entity_cert()
            .map(super::fingerprint)
            .unwrap_or_default()
    }

    /// Whether clients may log in with a certificate.
    pub fn client_auth(&self) -> bool {
        self.client_auth
    }

    /// The rustls configuration for a handshake: also for other listeners of the same
    /// application (an HTTPS endpoint, say), which then share the certificate and its reloads.
    pub fn config(&self) -> Arc<rustls::ServerConfig> {
        self.config.clone()
    }
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("cert", &self.cert_path)
            .field("client_auth", &self.client_auth)
            .finish_non_exhaustive()
    }
}

fn certified_key(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = load_certs(cert)?;
    let key_der = load_key(key)?;
    let signing = provider()
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| super::invalid(key, format!("unusable private key: {e}")))?;
    let certified = CertifiedKey::new(chain, signing);
    certified
        .keys_match()
        .map_err(|e| super::invalid(key, format!("key does not match {}: {e}", cert.display())))?;
    Ok(Arc::new(certified))
}

/// Hands every handshake the current certificate.
#[derive(Debug)]
struct Resolver {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
        )
    }
}
