//! TLS over 127.0.0.1: generated certificates, pinning, CA files, old protocol versions,
//! certificate login, handshake deadline, reload.

mod support;

use openserver::client::{Client, ClientConfig, ClientError};
use openserver::server::ServerConfig;
use openserver::session::CloseReason;
use openserver::tls::{self, ClientTls, ServerTls, ServerVerification};
use openserver::wire::dbauth::DatabaseAuthMessage;
use openserver::wire::notice;
use openserver::wire::{FrameCodec, Message};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::pki_types::ServerName;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use support::harness::{config, ending, start_with, Ending, Raw, TestServer, ALICE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Certs {
    _dir: tempfile::TempDir,
    set: tls::self_signed::SelfSigned,
}

fn server_certs() -> Certs {
    let dir = tempfile::tempdir().unwrap();
    let set = tls::self_signed::ensure(dir.path(), &[]).unwrap();
    Certs { _dir: dir, set }
}

async fn tls_server(certs: &Certs, client_ca: Option<&Path>) -> (TestServer, ServerTls) {
    tls_server_with(certs, client_ca, config()).await
}

async fn tls_server_with(
    certs: &Certs,
    client_ca: Option<&Path>,
    config: ServerConfig,
) -> (TestServer, ServerTls) {
    let tls = ServerTls::from_pem_files(&certs.set.cert, &certs.set.key, client_ca).unwrap();
    let server = start_with(config, {
        let tls = tls.clone();
        move |b| b.tls(tls)
    })
    .await;
    (server, tls)
}

fn client_config(verification: ServerVerification) -> ClientConfig {
    ClientConfig::default().with_tls(ClientTls::new(verification))
}

#[tokio::test]
async fn pinned_fingerprint_logs_in_and_says_hello() {
    let certs = server_certs();
    let (server, tls) = tls_server(&certs, None).await;
    let client = Client::connect(
        server.addr.to_string(),
        client_config(ServerVerification::Fingerprint(tls.fingerprint())),
    )
    .await
    .unwrap();
    assert_eq!(client.authenticate_db(ALICE.0, ALICE.1).await.unwrap(), 7);
    assert_eq!(client.hello("over tls").await.unwrap(), "Hello over tls");
}

#[tokio::test]
async fn ca_file_verifies_the_generated_certificate() {
    let certs = server_certs();
    let (server, _) = tls_server(&certs, None).await;
    for addr in [
        server.addr.to_string(),
        format!("localhost:{}", server.addr.port()),
    ] {
        let client = Client::connect(
            addr,
            client_config(ServerVerification::CaFile(certs.set.ca.clone())),
        )
        .await
        .unwrap();
        client.authenticate_db(ALICE.0, ALICE.1).await.unwrap();
    }
    // The CA vouches for these names only.
    let wrong_name = ClientConfig::default().with_tls(
        ClientTls::new(ServerVerification::CaFile(certs.set.ca.clone()))
            .with_server_name("example.com"),
    );
    match Client::connect(server.addr.to_string(), wrong_name).await {
        Err(ClientError::TlsVerification { message, .. }) => {
            assert_eq!(message, "its certificate is not valid for this server name")
        }
        Err(e) => panic!("{e:?}"),
        Ok(_) => panic!("connected under another name"),
    }
}

#[tokio::test]
async fn a_wrong_fingerprint_is_refused() {
    let certs = server_certs();
    let (server, _) = tls_server(&certs, None).await;
    let other = "00".repeat(32);
    match Client::connect(
        server.addr.to_string(),
        client_config(ServerVerification::Fingerprint(other)),
    )
    .await
    {
        Err(ClientError::TlsVerification { message, .. }) => {
            assert!(
                message.starts_with("server certificate fingerprint "),
                "{message}"
            );
            assert!(
                message.ends_with(" does not match the pinned one"),
                "{message}"
            );
        }
        Err(e) => panic!("{e:?}"),
        Ok(_) => panic!("connected despite a wrong pin"),
    }
}

#[tokio::test]
async fn plaintext_clients_get_nothing_from_a_tls_server() {
    let certs = server_certs();
    let (server, _) = tls_server(&certs, None).await;
    let mut raw = Raw::connect(server.addr).await;
    raw.send_bytes(&hex::decode("535503000000000001").unwrap())
        .await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), raw.stream.read_to_end(&mut buf)).await;
    // Whatever comes back (a TLS alert at most), it is not a frame.
    assert!(!buf.starts_with(&[0x53, 0x55]), "{buf:?}");
}

/// A TLS 1.1 ClientHello: legacy version 0x0302, no supported_versions extension, one
/// TLS 1.1-era cipher suite.
fn tls11_client_hello() -> Vec<u8> {
    let mut body = vec![0x03, 0x02];
    body.extend([7u8; 32]); // random
    body.push(0); // session id
                  // ECDHE-ECDSA-AES128-GCM-SHA256 and ECDHE-RSA-AES128-CBC-SHA: suites the server has,
                  // so the version is the only thing it can object to.
    body.extend([0x00, 0x04, 0xc0, 0x2b, 0xc0, 0x13]);
    body.extend([0x01, 0x00]); // null compression
    let extensions: &[u8] = &[
        0x00, 0x0a, 0x00, 0x04, 0x00, 0x02, 0x00, 0x17, // supported_groups: secp256r1
        0x00, 0x0b, 0x00, 0x02, 0x01, 0x00, // ec_point_formats: uncompressed
        0x00, 0x0d, 0x00, 0x04, 0x00, 0x02, 0x04,
        0x03, // signature_algorithms: ecdsa_p256_sha256
    ];
    body.extend((extensions.len() as u16).to_be_bytes());
    body.extend(extensions);
    let mut handshake = vec![0x01, 0x00];
    handshake.extend((body.len() as u16).to_be_bytes());
    handshake.extend(body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend((handshake.len() as u16).to_be_bytes());
    record.extend(handshake);
    record
}

#[tokio::test]
async fn tls_1_1_is_refused() {
    let certs = server_certs();
    let (server, _) = tls_server(&certs, None).await;
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(&tls11_client_hello()).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut buf)).await;
    // No ServerHello: one alert record (0x15, TLS 1.x, length 2), fatal (2) protocol_version
    // (70), then the close.
    assert_eq!(
        buf.get(..7),
        Some(
            &[
                0x15,
                0x03,
                buf.get(2).copied().unwrap_or(0),
                0x00,
                0x02,
                0x02,
                70
            ][..]
        ),
        "expected a fatal protocol_version alert, got {buf:02x?}"
    );
    assert_eq!(buf.len(), 7, "nothing after the alert: {buf:02x?}");
}

#[tokio::test(start_paused = true)]
async fn a_stalled_handshake_is_abandoned_after_five_seconds() {
    let certs = server_certs();
    let (server, _) = tls_server(&certs, None).await;
    let started = tokio::time::Instant::now();
    let mut raw = Raw::connect(server.addr).await;
    raw.send_bytes(&tls11_client_hello()[..10]).await;
    assert!(raw.expect_closed(Duration::from_secs(6)).await.is_empty());
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(5) && waited < Duration::from_secs(6),
        "{waited:?}"
    );
}

/// A client CA and a certificate it issued for `cn`, written as PEM files.
struct ClientPki {
    dir: tempfile::TempDir,
    ca: rcgen::Certificate,
    ca_key: KeyPair,
}

impl ClientPki {
    fn new() -> ClientPki {
        let ca_key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "test client CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = params.self_signed(&ca_key).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        ClientPki { dir, ca, ca_key }
    }

    fn ca_path(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    fn issue(&self, cn: &str) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        let cert = params.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        let cert_path = self.dir.path().join(format!("{cn}.pem"));
        let key_path = self.dir.path().join(format!("{cn}.key"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (cert_path, key_path)
    }
}

#[tokio::test]
async fn a_client_certificate_logs_in_without_a_password() {
    let certs = server_certs();
    let pki = ClientPki::new();
    let (server, tls) = tls_server(&certs, Some(&pki.ca_path())).await;
    let with_cert = |(cert, key): (PathBuf, PathBuf)| {
        ClientConfig::default().with_tls(
            ClientTls::new(ServerVerification::Fingerprint(tls.fingerprint()))
                .with_client_cert(cert, key),
        )
    };

    let alice = Client::connect(server.addr.to_string(), with_cert(pki.issue("alice")))
        .await
        .unwrap();
    assert_eq!(alice.hello("cert").await.unwrap(), "Hello cert");

    // A certificate for a name that is no user: connected, but not logged in.
    let nobody = Client::connect(server.addr.to_string(), with_cert(pki.issue("nobody")))
        .await
        .unwrap();
    assert!(matches!(
        nobody.hello("x").await,
        Err(ClientError::Remote { .. })
    ));

    // No certificate at all: password login still works.
    let plain = Client::connect(
        server.addr.to_string(),
        client_config(ServerVerification::Fingerprint(tls.fingerprint())),
    )
    .await
    .unwrap();
    plain.authenticate_db(ALICE.0, ALICE.1).await.unwrap();

    // A certificate from another CA is refused in the handshake.
    let stranger = ClientPki::new();
    let refused =
        Client::connect(server.addr.to_string(), with_cert(stranger.issue("alice"))).await;
    match refused {
        Err(_) => {}
        // TLS 1.3 finishes the client side before the server checks the certificate; the
        // server then closes the connection.
        Ok(client) => assert!(client.hello("x").await.is_err()),
    }
}

#[tokio::test]
async fn reloading_the_certificate_keeps_sessions() {
    let certs = server_certs();
    let (server, tls) = tls_server(&certs, None).await;
    let old_fp = tls.fingerprint();
    let before = Client::connect(
        server.addr.to_string(),
        client_config(ServerVerification::Fingerprint(old_fp.clone())),
    )
    .await
    .unwrap();
    before.authenticate_db(ALICE.0, ALICE.1).await.unwrap();

    let fresh = tls::self_signed::generate(&[]).unwrap();
    std::fs::write(
        &certs.set.cert,
        format!("{}{}", fresh.cert_pem, fresh.ca_pem),
    )
    .unwrap();
    std::fs::write(&certs.set.key, &fresh.key_pem).unwrap();
    tls.reload().unwrap();
    let new_fp = tls.fingerprint();
    assert_ne!(old_fp, new_fp);

    assert_eq!(before.hello("still").await.unwrap(), "Hello still");
    let after = Client::connect(
        server.addr.to_string(),
        client_config(ServerVerification::Fingerprint(new_fp)),
    )
    .await
    .unwrap();
    after.authenticate_db(ALICE.0, ALICE.1).await.unwrap();
    assert!(Client::connect(
        server.addr.to_string(),
        client_config(ServerVerification::Fingerprint(old_fp)),
    )
    .await
    .is_err());
}

#[tokio::test]
async fn bad_certificate_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem");
    let err = ServerTls::from_pem_files(&missing, &missing, None).unwrap_err();
    assert!(err.to_string().contains("missing.pem"), "{err}");
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "not pem").unwrap();
    let err = ServerTls::from_pem_files(&empty, &empty, None).unwrap_err();
    assert!(err.to_string().contains("no CERTIFICATE"), "{err}");
}

/// A rustls client that trusts the test CA and offers only `suites`, in that order, and the
/// given protocol versions.
fn rustls_client(
    certs: &Certs,
    suites: Vec<rustls::SupportedCipherSuite>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(&certs.set.ca).unwrap();
    for cert in rustls_pemfile::certs(&mut &pem[..]) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites = suites;
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// Logs in as alice over an established TLS stream and checks the answer.
async fn login_over<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(stream: &mut S) {
    let login = DatabaseAuthMessage::Authenticate {
        user: ALICE.0.into(),
        password: ALICE.1.into(),
    }
    .to_frame();
    stream.write_all(&login.to_bytes().unwrap()).await.unwrap();
    let mut codec = FrameCodec::default();
    let mut buf = bytes::BytesMut::new();
    let frame = loop {
        use tokio_util::codec::Decoder;
        if let Some(frame) = codec.decode(&mut buf).unwrap() {
            break frame;
        }
        assert!(stream.read_buf(&mut buf).await.unwrap() > 0, "closed");
    };
    assert_eq!(
        DatabaseAuthMessage::decode(&frame.body).unwrap(),
        DatabaseAuthMessage::Authenticated { user_id: 7 }
    );
}

#[tokio::test]
async fn tls_1_2_is_negotiated_with_the_servers_suite_order() {
    use rustls::crypto::ring::cipher_suite as cs;
    use rustls::CipherSuite as S;
    let certs = server_certs();
    let (server, _) = tls_server(&certs, None).await;
    let name = ServerName::try_from("localhost").unwrap();

    // A TLS 1.2-only client that prefers AES-256 (and ChaCha20) gets TLS 1.2 with the server's
    // first choice, AES-128-GCM with SHA-256, for the certificate's key type.
    let tls12 = rustls_client(
        &certs,
        vec![
            cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
            cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
            cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
            cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        ],
        &[&rustls::version::TLS12],
    );
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let mut stream = tls12
        .connect(name.clone(), tcp)
        .await
        .expect("TLS 1.2 handshake");
    let (_, conn) = stream.get_ref();
    assert_eq!(
        conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    let suite = conn.negotiated_cipher_suite().unwrap().suite();
    assert!(
        matches!(
            suite,
            S::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 | S::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
        ),
        "{suite:?}"
    );
    login_over(&mut stream).await;

    // TLS 1.3, the client preferring AES-256 and ChaCha20: the server's order still wins.
    let tls13 = rustls_client(
        &certs,
        vec![
            cs::TLS13_AES_256_GCM_SHA384,
            cs::TLS13_CHACHA20_POLY1305_SHA256,
            cs::TLS13_AES_128_GCM_SHA256,
        ],
        &[&rustls::version::TLS13],
    );
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let mut stream = tls13.connect(name, tcp).await.expect("TLS 1.3 handshake");
    let (_, conn) = stream.get_ref();
    assert_eq!(
        conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    assert_eq!(
        conn.negotiated_cipher_suite().unwrap().suite(),
        S::TLS13_AES_128_GCM_SHA256
    );
    login_over(&mut stream).await;
}

// Real time: the handshake is real TLS over real sockets, which a paused clock could skip past.
#[tokio::test]
async fn the_login_deadline_counts_from_accept_during_a_slow_handshake() {
    let certs = server_certs();
    let mut cfg = config();
    cfg.limits.tls_handshake_timeout = Duration::from_secs(4);
    cfg.limits.auth_timeout = Duration::from_millis(3500);
    let (server, _) = tls_server_with(&certs, None, cfg).await;
    let mut events = server.handle.events();
    let connector = rustls_client(
        &certs,
        rustls::crypto::ring::default_provider().cipher_suites,
        &[&rustls::version::TLS13],
    );
    let started = std::time::Instant::now();
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let peer = tcp.local_addr().unwrap();
    // 2.5 s of silence before the ClientHello: within the handshake deadline, but most of the
    // login deadline.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut stream = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("handshake within its deadline");
    // Silent after the handshake: closed 3.5 s after accept, not 3.5 s after the handshake
    // (6 s after accept).
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut buf)).await;
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(3400) && waited < Duration::from_millis(5500),
        "closed after {waited:?}"
    );
    assert_eq!(
        ending(&mut events, peer).await,
        Ending::Closed(CloseReason::AuthTimeout)
    );
}

/// A server whose first failed login from an address earns a 60 s penalty; `notices` as
/// `security.refusal_notices`.
async fn strict_server(certs: Option<&Certs>, notices: usize) -> TestServer {
    let mut cfg = config();
    cfg.security.penalty_free_failures = 0;
    cfg.security.penalty_initial = Duration::from_secs(60);
    cfg.security.refusal_notices = notices;
    match certs {
        Some(certs) => {
            let tls = ServerTls::from_pem_files(&certs.set.cert, &certs.set.key, None).unwrap();
            start_with(cfg, move |b| b.tls(tls)).await
        }
        None => start_with(cfg, |b| b).await,
    }
}

#[tokio::test]
async fn a_penalised_address_is_refused_with_the_wait_over_tls_and_plaintext() {
    let certs = server_certs();
    for tls in [true, false] {
        let server = strict_server(tls.then_some(&certs), 64).await;
        let addr = server.addr.to_string();
        let client_config = || match tls {
            true => client_config(ServerVerification::CaFile(certs.set.ca.clone())),
            false => ClientConfig::default(),
        };
        let client = Client::connect(addr.clone(), client_config())
            .await
            .unwrap();
        assert!(matches!(
            client.authenticate_db(ALICE.0, "wrong").await,
            Err(ClientError::AccessDenied)
        ));
        client.quit().await;
        // Over TLS the refusal is found in the handshake; in plaintext, at the first request.
        let refused = match Client::connect(addr.clone(), client_config()).await {
            Ok(client) => client.authenticate_db(ALICE.0, ALICE.1).await.map(|_| ()),
            Err(e) => Err(e),
        };
        match refused {
            Err(ClientError::Refused {
                refusal: notice::Refusal::FailedLogins { retry_after },
                addr: a,
            }) => {
                assert_eq!(a, addr);
                assert!(
                    (Duration::from_secs(55)..=Duration::from_secs(60)).contains(&retry_after),
                    "{retry_after:?}"
                );
            }
            other => panic!("tls {tls}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn without_notices_a_refused_tls_client_hears_the_server_closed_without_answering() {
    let certs = server_certs();
    let server = strict_server(Some(&certs), 0).await;
    let addr = server.addr.to_string();
    let config = || client_config(ServerVerification::CaFile(certs.set.ca.clone()));
    let client = Client::connect(addr.clone(), config()).await.unwrap();
    let _ = client.authenticate_db(ALICE.0, "wrong").await;
    client.quit().await;
    match Client::connect(addr, config()).await {
        Err(ClientError::TlsHandshake { message, .. }) => {
            assert_eq!(
                message,
                "the server closed the connection without answering"
            )
        }
        Err(e) => panic!("{e:?}"),
        Ok(_) => panic!("a penalised address connected"),
    }
}

#[tokio::test]
async fn the_wrong_transport_is_named_in_both_directions() {
    let certs = server_certs();
    let (tls, _) = tls_server(&certs, None).await;
    let plain = start_with(config(), |b| b).await;

    let client = Client::connect(tls.addr.to_string(), ClientConfig::default())
        .await
        .unwrap();
    match client.authenticate_db(ALICE.0, ALICE.1).await {
        Err(ClientError::ServerSpeaksTls { addr }) => assert_eq!(addr, tls.addr.to_string()),
        other => panic!("{other:?}"),
    }

    let verified = client_config(ServerVerification::CaFile(certs.set.ca.clone()));
    match Client::connect(plain.addr.to_string(), verified).await {
        Err(ClientError::ServerSpeaksPlaintext { addr }) => {
            assert_eq!(addr, plain.addr.to_string())
        }
        Err(e) => panic!("{e:?}"),
        Ok(_) => panic!("a TLS client connected to a plaintext server"),
    }

    match Client::connect("127.0.0.1", ClientConfig::default()).await {
        Err(ClientError::BadAddress { addr, .. }) => assert_eq!(addr, "127.0.0.1"),
        Err(e) => panic!("{e:?}"),
        Ok(_) => panic!("connected without a port"),
    }
}
