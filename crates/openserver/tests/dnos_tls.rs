//! The DotNetOpenServer Java (and Objective-C) client over TLS against the default server.
//!
//! That client's trust manager accepts a server it cannot verify only when the server presents
//! exactly one certificate; otherwise it hands the chain to the platform's trust store, which
//! knows no development CA, and the handshake fails. The client below is modelled on it.

mod support;

use openserver::client::{Client, ClientConfig};
use openserver::tls::{self, ClientTls, ServerTls, ServerVerification};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::sync::{Arc, Mutex};
use support::harness::{config, start_with, ALICE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The Java client's trust manager: a one-certificate chain is accepted as it is; any other
/// chain goes to the platform's trust store (here: a root store that knows only some unrelated
/// CA, as a JVM's knows no development CA). Records the chain length it was shown.
#[derive(Debug)]
struct JavaTrustManager {
    platform: Arc<dyn ServerCertVerifier>,
    seen_chain: Mutex<Option<usize>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl JavaTrustManager {
    fn new() -> Arc<JavaTrustManager> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let unrelated = tls::self_signed::generate(&[]).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut unrelated.ca_pem.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        let platform = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .unwrap();
        Arc::new(JavaTrustManager {
            platform,
            seen_chain: Mutex::new(None),
            provider,
        })
    }

    fn seen_chain(&self) -> Option<usize> {
        *self.seen_chain.lock().unwrap()
    }
}

impl ServerCertVerifier for JavaTrustManager {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let chain = 1 + intermediates.len();
        *self.seen_chain.lock().unwrap() = Some(chain);
        if chain == 1 {
            return Ok(ServerCertVerified::assertion());
        }
        self.platform
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
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

/// Connects like the Java client, logs in with DatabaseAuth and says Hello with the captured
/// frames; returns the Hello answer's wire bytes.
async fn java_client_session(
    addr: std::net::SocketAddr,
    trust: Arc<JavaTrustManager>,
) -> Result<Vec<u8>, String> {
    let config = rustls::ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(trust)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let mut stream = connector
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    // DatabaseAuth alice/secret and Hello "alice", as the Java client wrote them.
    let login = hex::decode("53551000000003000105616c69636506736563726574").unwrap();
    stream.write_all(&login).await.unwrap();
    let mut answer = vec![0u8; 13];
    stream.read_exact(&mut answer).await.unwrap();
    assert_eq!(hex::encode(&answer), "53550700000003000207000000");
    stream
        .write_all(&hex::decode("5355080000000a0005616c696365").unwrap())
        .await
        .unwrap();
    let mut hello = vec![0u8; 20];
    stream.read_exact(&mut hello).await.unwrap();
    Ok(hello)
}

async fn server_from(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> support::harness::TestServer {
    let tls = ServerTls::from_pem_files(cert, key, None).unwrap();
    start_with(config(), move |b| b.tls(tls)).await
}

#[tokio::test]
async fn the_development_certificate_is_presented_alone_and_the_java_client_accepts_it() {
    let dir = tempfile::tempdir().unwrap();
    // What `openserver serve` does without --tls-cert.
    let set = tls::self_signed::ensure(dir.path(), &[]).unwrap();
    let server = server_from(&set.cert, &set.key).await;
    let trust = JavaTrustManager::new();
    let hello = java_client_session(server.addr, trust.clone())
        .await
        .unwrap();
    assert_eq!(
        hex::encode(hello),
        "53550e0000000a000b48656c6c6f20616c696365"
    );
    assert_eq!(
        trust.seen_chain(),
        Some(1),
        "the server presents the leaf alone"
    );

    // Our own client still verifies: against the CA file (not in the chain)...
    let client = Client::connect(
        format!("localhost:{}", server.addr.port()),
        ClientConfig::default()
            .with_tls(ClientTls::new(ServerVerification::CaFile(set.ca.clone()))),
    )
    .await
    .unwrap();
    assert_eq!(client.authenticate_db(ALICE.0, ALICE.1).await.unwrap(), 7);
    // ...and refuses a server its CA did not sign.
    let other = tempfile::tempdir().unwrap();
    let other_set = tls::self_signed::ensure(other.path(), &[]).unwrap();
    assert!(Client::connect(
        format!("localhost:{}", server.addr.port()),
        ClientConfig::default().with_tls(ClientTls::new(ServerVerification::CaFile(
            other_set.ca.clone(),
        ))),
    )
    .await
    .is_err());
}

#[tokio::test]
async fn a_two_certificate_chain_fails_the_java_client() {
    // The layout before this change (leaf, then CA): the model must refuse it, as the real
    // client does, or the test above proves nothing.
    let dir = tempfile::tempdir().unwrap();
    let generated = tls::self_signed::generate(&[]).unwrap();
    let cert = dir.path().join("chain.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&cert, format!("{}{}", generated.cert_pem, generated.ca_pem)).unwrap();
    std::fs::write(&key, &generated.key_pem).unwrap();
    let server = server_from(&cert, &key).await;
    let trust = JavaTrustManager::new();
    let refused = java_client_session(server.addr, trust.clone()).await;
    assert!(refused.is_err(), "{refused:?}");
    assert_eq!(trust.seen_chain(), Some(2));
}
