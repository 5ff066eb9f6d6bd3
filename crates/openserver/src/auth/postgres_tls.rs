//! TLS to the PostgreSQL user store, as libpq users set it: `sslmode` and `sslrootcert` in the
//! URL (or `PGSSLMODE` and `PGSSLROOTCERT`), with rustls.
//!
//! tokio-postgres knows only `disable`, `prefer` and `require`, and checks nothing itself: the
//! two parameters are taken off the URL here, and each mode becomes tokio-postgres' mode plus
//! a certificate verifier of ours.

use crate::tls::{load_roots, provider, PROTOCOL_VERSIONS};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

/// libpq's `sslmode`, as this store honours it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    /// Never TLS.
    Disable,
    /// TLS when the server offers it, plaintext otherwise (libpq's default). `allow` is read
    /// as this too.
    Prefer,
    /// TLS or no connection; the certificate is checked only against a given `sslrootcert`.
    Require,
    /// TLS, the certificate chaining to `sslrootcert` (or the system's roots); any name.
    VerifyCa,
    /// As `VerifyCa`, and the certificate must be valid for the host connected to.
    VerifyFull,
}

impl Mode {
    fn parse(value: &str) -> Result<Mode, String> {
        Ok(match value {
            "disable" => Mode::Disable,
            "allow" | "prefer" => Mode::Prefer,
            "require" => Mode::Require,
            "verify-ca" => Mode::VerifyCa,
            "verify-full" => Mode::VerifyFull,
            other => {
                return Err(format!(
                    "sslmode={other:?} is not one of disable, allow, prefer, require, \
                     verify-ca, verify-full"
                ))
            }
        })
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Disable => "disable",
            Mode::Prefer => "prefer",
            Mode::Require => "require",
            Mode::VerifyCa => "verify-ca",
            Mode::VerifyFull => "verify-full",
        })
    }
}

/// Whose certificates are trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Roots {
    /// None given: `require` and `prefer` check nothing; the `verify-*` modes use the
    /// system's roots.
    Unset,
    /// `sslrootcert=system`: the system's roots (libpq 16's spelling).
    System,
    /// `sslrootcert=PATH`: the CA certificates in this PEM file.
    File(PathBuf),
}

/// The TLS settings of a store URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct TlsSettings {
    pub(super) mode: Mode,
    pub(super) roots: Roots,
}

impl TlsSettings {
    /// What the settings do, for the log line at open.
    pub(super) fn describe(&self) -> String {
        let roots = match &self.roots {
            Roots::File(path) => format!(", CA {}", path.display()),
            Roots::System => ", the system's CAs".into(),
            Roots::Unset if matches!(self.mode, Mode::VerifyCa | Mode::VerifyFull) => {
                ", the system's CAs".into()
            }
            Roots::Unset => String::new(),
        };
        format!("sslmode={}{roots}", self.mode)
    }
}

/// Client certificate parameters of libpq that this store does not take: named, rather than
/// tokio-postgres' "unknown option".
const UNSUPPORTED: [&str; 5] = ["sslcert", "sslkey", "sslpassword", "sslcrl", "sslcrldir"];

/// Takes `sslmode` and `sslrootcert` off `url` (a `postgres://` URL or libpq's `key=value`
/// form); `PGSSLMODE` and `PGSSLROOTCERT` stand in for absent ones, as with libpq. Returns
/// what remains, for tokio-postgres to parse, and the settings. `Err`: a message for the
/// operator.
pub(super) fn split_url(
    url: &str,
    env: impl Fn(&str) -> Option<String>,
) -> Result<(String, TlsSettings), String> {
    let params = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        split_query(url)
    } else {
        split_key_values(url)
    };
    let (rest, taken) = params;
    let mut mode = None;
    let mut root = None;
    for (key, value) in taken {
        match key.as_str() {
            "sslmode" => mode = Some(value),
            "sslrootcert" => root = Some(value),
            other => {
                return Err(format!(
                    "{other}: client certificates are not supported by the PostgreSQL user \
                     store; log in with a password (in the URL or PGPASSWORD) and drop {other}"
                ))
            }
        }
    }
    let mode = mode.or_else(|| env("PGSSLMODE").filter(|v| !v.is_empty()));
    let root = root.or_else(|| env("PGSSLROOTCERT").filter(|v| !v.is_empty()));
    let roots = match root.as_deref() {
        None | Some("") => Roots::Unset,
        Some("system") => Roots::System,
        Some(path) => Roots::File(PathBuf::from(path)),
    };
    let mode = match (mode.as_deref(), &roots) {
        (Some(value), _) => Mode::parse(value)?,
        // libpq 16: the system's roots mean a public CA, which vouches for names only.
        (None, Roots::System) => Mode::VerifyFull,
        (None, _) => Mode::Prefer,
    };
    if roots == Roots::System && mode != Mode::VerifyFull {
        return Err(format!(
            "sslmode={mode} with sslrootcert=system: any name a public CA signed would pass; \
             use sslmode=verify-full (or drop sslmode)"
        ));
    }
    Ok((rest, TlsSettings { mode, roots }))
}

/// Whether `key` is one this module takes off the URL.
fn is_tls_key(key: &str) -> bool {
    key == "sslmode" || key == "sslrootcert" || UNSUPPORTED.contains(&key)
}

/// A URL's query parameters: the URL without the TLS ones, and those (decoded).
fn split_query(url: &str) -> (String, Vec<(String, String)>) {
    let Some(q) = url.find('?') else {
        return (url.to_owned(), Vec::new());
    };
    let (query, fragment) = match url[q + 1..].find('#') {
        Some(h) => (&url[q + 1..q + 1 + h], &url[q + 1 + h..]),
        None => (&url[q + 1..], ""),
    };
    let mut kept = Vec::new();
    let mut taken = Vec::new();
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let key_decoded = percent_decode(key);
        if is_tls_key(&key_decoded) {
            taken.push((key_decoded, percent_decode(value)));
        } else {
            kept.push(pair);
        }
    }
    let mut rest = url[..q].to_owned();
    if !kept.is_empty() {
        rest.push('?');
        rest.push_str(&kept.join("&"));
    }
    rest.push_str(fragment);
    (rest, taken)
}

/// libpq's `key=value` form (values optionally single-quoted, backslash escapes): the text
/// without the TLS parameters, and those. Text it cannot read is left whole, for
/// tokio-postgres to report.
fn split_key_values(text: &str) -> (String, Vec<(String, String)>) {
    let bytes = text.as_bytes();
    let mut i = 0;
    let mut cuts = Vec::new();
    let mut taken = Vec::new();
    let skip_space = |mut i: usize| {
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        i
    };
    loop {
        i = skip_space(i);
        if i >= bytes.len() {
            break;
        }
        let start = i;
        while i < bytes.len() && bytes[i] != b'=' && !bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        let key = &text[start..i];
        i = skip_space(i);
        if i >= bytes.len() || bytes[i] != b'=' {
            return (text.to_owned(), Vec::new());
        }
        i = skip_space(i + 1);
        let mut value = String::new();
        let quoted = i < bytes.len() && bytes[i] == b'\'';
        if quoted {
            i += 1;
        }
        let mut closed = !quoted;
        let mut chars = text[i..].char_indices();
        let mut end = text.len();
        while let Some((at, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, next)) = chars.next() {
                        value.push(next);
                    }
                }
                '\'' if quoted => {
                    closed = true;
                    end = i + at + 1;
                    break;
                }
                c if !quoted && c.is_ascii_whitespace() => {
                    end = i + at;
                    break;
                }
                c => value.push(c),
            }
        }
        if !closed {
            return (text.to_owned(), Vec::new());
        }
        if is_tls_key(key) {
            cuts.push(start..end);
            taken.push((key.to_owned(), value));
        }
        i = end;
    }
    let mut rest = String::with_capacity(text.len());
    let mut pos = 0;
    for cut in cuts {
        rest.push_str(&text[pos..cut.start]);
        pos = cut.end;
    }
    rest.push_str(&text[pos..]);
    (rest, taken)
}

/// `%XX` decoded (invalid sequences kept as they are; `+` is not a space in these URLs).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push((hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0)) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// tokio-postgres' mode and the TLS connector for `settings`. `all_unix`: every host is a
/// unix socket, where PostgreSQL never speaks TLS (and libpq never asks it to).
pub(super) fn connector(
    settings: &TlsSettings,
    all_unix: bool,
) -> Result<(SslMode, MakeRustlsConnect), String> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(PROTOCOL_VERSIONS)
        .map_err(|e| format!("TLS configuration: {e}"))?;
    let roots = || -> Result<Option<rustls::RootCertStore>, String> {
        match &settings.roots {
            Roots::File(path) => load_roots(path).map(Some).map_err(|e| {
                format!(
                    "cannot use sslrootcert {}: {e}; sslrootcert names the PEM file of the CA \
                     that signed PostgreSQL's certificate",
                    path.display()
                )
            }),
            Roots::System => system_roots().map(Some),
            Roots::Unset if matches!(settings.mode, Mode::VerifyCa | Mode::VerifyFull) => {
                system_roots().map(Some)
            }
            Roots::Unset => Ok(None),
        }
    };
    let verifier: Arc<dyn ServerCertVerifier> = match (settings.mode, roots()?) {
        (Mode::Disable, _) | (Mode::Prefer | Mode::Require, None) => {
            Arc::new(AnyCertificate { provider })
        }
        (Mode::VerifyFull, Some(roots)) => webpki(roots, provider)?,
        // libpq: with a root certificate, require (and prefer) check the chain as verify-ca.
        (_, Some(roots)) => Arc::new(AnyName(webpki(roots, provider)?)),
        (Mode::VerifyCa | Mode::VerifyFull, None) => {
            return Err("internal error: no roots for a verifying mode".into())
        }
    };
    let config = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    let mode = match settings.mode {
        _ if all_unix => SslMode::Disable,
        Mode::Disable => SslMode::Disable,
        Mode::Prefer => SslMode::Prefer,
        Mode::Require | Mode::VerifyCa | Mode::VerifyFull => SslMode::Require,
    };
    Ok((mode, MakeRustlsConnect::new(config)))
}

fn webpki(
    roots: rustls::RootCertStore,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<WebPkiServerVerifier>, String> {
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| format!("TLS configuration: {e}"))
}

fn system_roots() -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        // One unparsable system certificate should not disable all the others.
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        return Err(
            "no trusted root certificates found on this system for sslmode=verify-ca or \
             verify-full; set sslrootcert to the PEM file of the CA that signed PostgreSQL's \
             certificate"
                .into(),
        );
    }
    Ok(roots)
}

/// `require` and `prefer` without a root certificate, as libpq: encrypted, the certificate
/// unchecked (anyone on the path can stand in for the server). The handshake's signatures are
/// still checked, so the server holds the key of the certificate it sent.
#[derive(Debug)]
struct AnyCertificate {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
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

/// `verify-ca`: the chain (issuer, validity, usage) is checked, the name is not. WebPKI checks
/// the chain before the name, so a name error means the chain passed.
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// What went wrong with TLS in a failed connection, and what to do; `None`: not TLS.
pub(super) fn problem(e: &tokio_postgres::Error, settings: &TlsSettings) -> Option<String> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    let mut tls = false;
    while let Some(cause) = source {
        // tokio-rustls hands rustls' error inside an io::Error, whose `source` skips it.
        let rustls_error = cause.downcast_ref::<rustls::Error>().or_else(|| {
            cause
                .downcast_ref::<std::io::Error>()
                .and_then(std::io::Error::get_ref)
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        });
        if let Some(rustls::Error::InvalidCertificate(why)) = rustls_error {
            let what = crate::client::certificate_problem(why);
            let todo = match why {
                CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                    match &settings.roots {
                        Roots::File(path) => format!(
                            "check that sslrootcert ({}) holds the CA that signed PostgreSQL's \
                             certificate (ssl_cert_file there)",
                            path.display()
                        ),
                        _ => "set sslrootcert= to the PEM file of the CA that signed \
                              PostgreSQL's certificate"
                            .into(),
                    }
                }
                CertificateError::NotValidForName
                | CertificateError::NotValidForNameContext { .. } => {
                    "connect by a name or address the certificate holds (its subject \
                     alternative names), or reissue it for this one; sslmode=verify-ca checks \
                     the CA without the name"
                        .into()
                }
                CertificateError::Expired
                | CertificateError::ExpiredContext { .. }
                | CertificateError::NotValidYet
                | CertificateError::NotValidYetContext { .. } => {
                    "renew PostgreSQL's certificate (or check this host's clock)".into()
                }
                _ => "check PostgreSQL's certificate (ssl_cert_file) and sslrootcert".into(),
            };
            return Some(format!(
                "PostgreSQL's TLS certificate was refused ({}): {what}; {todo}",
                settings.describe()
            ));
        }
        if let Some(other) = rustls_error {
            return Some(format!(
                "the TLS handshake with PostgreSQL failed ({}): {other}; check the server's \
                 ssl settings (ssl_min_protocol_version, ssl_cert_file)",
                settings.describe()
            ));
        }
        // tokio-postgres' words when the server answers the TLS request with "no".
        if cause.to_string() == "server does not support TLS" {
            return Some(format!(
                "PostgreSQL there does not accept TLS, and sslmode={} requires it; turn TLS on \
                 in postgresql.conf (ssl = on, ssl_cert_file, ssl_key_file) or, on a trusted \
                 network only, use sslmode=prefer or disable",
                settings.mode
            ));
        }
        tls |= cause.to_string().contains("TLS handshake");
        source = cause.source();
    }
    tls.then(|| {
        format!(
            "the TLS handshake with PostgreSQL failed ({}): {}",
            settings.describe(),
            super::postgres::describe(e)
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn split(url: &str) -> Result<(String, TlsSettings), String> {
        split_url(url, no_env)
    }

    #[test]
    fn tls_parameters_come_off_urls_and_key_value_strings() {
        let (rest, s) =
            split("postgres://os@db/users?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&x=1")
                .unwrap();
        assert_eq!(rest, "postgres://os@db/users?x=1");
        assert_eq!(s.mode, Mode::VerifyFull);
        assert_eq!(s.roots, Roots::File("/etc/ca.pem".into()));
        let (rest, s) = split("postgresql://os@db/users?sslmode=require").unwrap();
        assert_eq!(rest, "postgresql://os@db/users");
        assert_eq!(s.mode, Mode::Require);
        assert_eq!(s.roots, Roots::Unset);
        let (rest, s) = split("postgres://os@db/users").unwrap();
        assert_eq!(rest, "postgres://os@db/users");
        assert_eq!(s.mode, Mode::Prefer, "libpq's default");
        let (rest, s) =
            split("host=db sslmode=verify-ca  sslrootcert='/a b/c\\'a.pem' dbname=users").unwrap();
        assert_eq!(rest, "host=db    dbname=users");
        assert_eq!(s.mode, Mode::VerifyCa);
        assert_eq!(s.roots, Roots::File("/a b/c'a.pem".into()));
        let (rest, s) = split("host=db sslmode = disable").unwrap();
        assert_eq!(rest, "host=db ");
        assert_eq!(s.mode, Mode::Disable);
        assert_eq!(split("sslmode=allow").unwrap().1.mode, Mode::Prefer);
    }

    #[test]
    fn the_environment_fills_in_what_the_url_lacks() {
        let env = |k: &str| match k {
            "PGSSLMODE" => Some("verify-full".to_owned()),
            "PGSSLROOTCERT" => Some("/ca.pem".to_owned()),
            _ => None,
        };
        let (_, s) = split_url("postgres://db/u", env).unwrap();
        assert_eq!(s.mode, Mode::VerifyFull);
        assert_eq!(s.roots, Roots::File("/ca.pem".into()));
        let (_, s) = split_url("postgres://db/u?sslmode=disable", env).unwrap();
        assert_eq!(s.mode, Mode::Disable, "the URL wins");
    }

    #[test]
    fn bad_tls_settings_are_refused_with_what_to_do() {
        let err = split("postgres://db/u?sslmode=verify").unwrap_err();
        assert!(err.contains("verify-full"), "{err}");
        let err = split("postgres://db/u?sslcert=/c.pem").unwrap_err();
        assert!(
            err.contains("client certificates are not supported"),
            "{err}"
        );
        let err = split("postgres://db/u?sslmode=require&sslrootcert=system").unwrap_err();
        assert!(err.contains("use sslmode=verify-full"), "{err}");
        let (_, s) = split("postgres://db/u?sslrootcert=system").unwrap();
        assert_eq!(
            s.mode,
            Mode::VerifyFull,
            "libpq 16's default with system roots"
        );
        let err = connector(
            &TlsSettings {
                mode: Mode::VerifyFull,
                roots: Roots::File("/nonexistent/ca.pem".into()),
            },
            false,
        )
        .err()
        .unwrap();
        assert!(
            err.contains("cannot use sslrootcert /nonexistent/ca.pem"),
            "{err}"
        );
    }

    #[test]
    fn unix_sockets_never_ask_for_tls() {
        let settings = TlsSettings {
            mode: Mode::Require,
            roots: Roots::Unset,
        };
        assert_eq!(connector(&settings, true).unwrap().0, SslMode::Disable);
        assert_eq!(connector(&settings, false).unwrap().0, SslMode::Require);
    }
}
