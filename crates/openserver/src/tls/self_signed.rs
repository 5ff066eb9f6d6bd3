//! A development certificate authority and server certificate, generated once into a
//! directory (the server's data directory by default) and reused afterwards.
//!
//! The CA (`ca.pem`) is what clients trust (`--ca`); the server presents `cert.pem` (signed by
//! it, for `localhost`, `127.0.0.1`, `::1` and any extra names) with `key.pem`. Alternatively
//! clients pin the server certificate's SHA-256 fingerprint.
//!
//! `cert.pem` holds the leaf alone, so the server presents a one-certificate chain: a client
//! that trusts the CA has it already and needs no copy in the chain, and the DotNetOpenServer
//! Java and Objective-C clients accept a server they cannot verify only when its chain is
//! exactly one certificate (docs/SECURITY.md). A `cert.pem` written by an earlier version
//! (leaf, then this directory's CA) is rewritten to the leaf on the next start.

use super::TlsError;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use std::path::{Path, PathBuf};

/// File names inside the directory.
pub const CA_FILE: &str = "ca.pem";
/// The server certificate (the leaf alone).
pub const CERT_FILE: &str = "cert.pem";
/// The server's private key (mode 0600 on Unix).
pub const KEY_FILE: &str = "key.pem";

/// Paths of a generated (or previously generated) certificate set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelfSigned {
    /// The CA certificate clients can trust.
    pub ca: PathBuf,
    /// The server certificate chain.
    pub cert: PathBuf,
    /// The server key.
    pub key: PathBuf,
    /// Whether this call created the files.
    pub created: bool,
}

/// Returns the certificate set in `dir`, generating it first if `cert.pem` or `key.pem` is
/// missing. `extra_names` are added to the certificate's subject alternative names.
pub fn ensure(dir: &Path, extra_names: &[String]) -> Result<SelfSigned, TlsError> {
    let set = SelfSigned {
        ca: dir.join(CA_FILE),
        cert: dir.join(CERT_FILE),
        key: dir.join(KEY_FILE),
        created: false,
    };
    if set.cert.exists() && set.key.exists() {
        drop_generated_ca_from_chain(&set)?;
        return Ok(set);
    }
    let generated = generate(extra_names)?;
    std::fs::create_dir_all(dir).map_err(|e| write_error(dir, e))?;
    write(&set.ca, generated.ca_pem.as_bytes(), false)?;
    write(&set.cert, generated.cert_pem.as_bytes(), false)?;
    write(&set.key, generated.key_pem.as_bytes(), true)?;
    Ok(SelfSigned {
        created: true,
        ..set
    })
}

/// Rewrites a `cert.pem` that earlier versions wrote as leaf + CA (the CA being this
/// directory's `ca.pem`) to the leaf alone. Any other chain is left as it is: only a file this
/// module generated is changed.
fn drop_generated_ca_from_chain(set: &SelfSigned) -> Result<(), TlsError> {
    let (Ok(chain), Ok(ca)) = (super::load_certs(&set.cert), super::load_certs(&set.ca)) else {
        return Ok(());
    };
    if chain.len() != 2 || ca.len() != 1 || chain[1] != ca[0] {
        return Ok(());
    }
    let pem = std::fs::read_to_string(&set.cert).map_err(|e| TlsError::Read {
        path: set.cert.display().to_string(),
        message: e.to_string(),
    })?;
    // The leaf's PEM block is the file's first; rcgen wrote both blocks.
    const END: &str = "-----END CERTIFICATE-----";
    let Some(at) = pem.find(END) else {
        return Ok(());
    };
    let leaf = format!("{}\n", &pem[..at + END.len()]);
    write(&set.cert, leaf.as_bytes(), false)?;
    tracing::info!(cert = %set.cert.display(), "development certificate now presents the leaf alone (the CA is not sent)");
    Ok(())
}

/// A freshly generated CA and server certificate, as PEM text.
#[derive(Debug, Clone)]
pub struct Generated {
    /// The CA certificate.
    pub ca_pem: String,
    /// The server certificate (leaf only).
    pub cert_pem: String,
    /// The server key.
    pub key_pem: String,
}

/// Generates a CA and a server certificate signed by it (ECDSA P-256).
pub fn generate(extra_names: &[String]) -> Result<Generated, TlsError> {
    let gen = |e: rcgen::Error| TlsError::Generate(e.to_string());
    let ca_key = KeyPair::generate().map_err(gen)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(gen)?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "openserver development CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = ca_params.self_signed(&ca_key).map_err(gen)?;

    let mut names = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
    names.extend(extra_names.iter().cloned());
    let leaf_key = KeyPair::generate().map_err(gen)?;
    let mut leaf_params = CertificateParams::new(names).map_err(gen)?;
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, "openserver");
    let leaf = leaf_params
        .signed_by(&leaf_key, &ca, &ca_key)
        .map_err(gen)?;
    Ok(Generated {
        ca_pem: ca.pem(),
        cert_pem: leaf.pem(),
        key_pem: leaf_key.serialize_pem(),
    })
}

fn write(path: &Path, contents: &[u8], secret: bool) -> Result<(), TlsError> {
    if !secret {
        return std::fs::write(path, contents).map_err(|e| write_error(path, e));
    }
    // A leftover key (or a link planted where it goes) is removed, not written through: the
    // key is created anew, owner-only from its first byte.
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(write_error(path, e)),
        _ => {}
    }
    let mut file = create_private(path).map_err(|e| write_error(path, e))?;
    std::io::Write::write_all(&mut file, contents).map_err(|e| write_error(path, e))
}

/// Creates `path`, which must not exist, readable and writable by its owner only (on Unix).
fn create_private(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    options.open(path)
}

fn write_error(path: &Path, e: std::io::Error) -> TlsError {
    TlsError::Read {
        path: path.display().to_string(),
        message: format!("cannot write: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_once_and_loads() {
        let dir = tempfile::tempdir().unwrap();
        let first = ensure(dir.path(), &["example.test".into()]).unwrap();
        assert!(first.created);
        let second = ensure(dir.path(), &[]).unwrap();
        assert!(!second.created);
        let tls = super::super::ServerTls::from_pem_files(&first.cert, &first.key, None).unwrap();
        assert_eq!(super::super::load_certs(&first.cert).unwrap().len(), 1);
        assert_eq!(tls.fingerprint().len(), 95);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&first.key).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    /// The key is created owner-only (not chmodded after a world-readable moment), and a link
    /// planted where it goes is replaced, never written through.
    #[cfg(unix)]
    #[test]
    fn the_key_is_created_private_and_never_through_a_link() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "untouched").unwrap();
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o644)).unwrap();
        let tls = dir.path().join("tls");
        std::fs::create_dir(&tls).unwrap();
        std::os::unix::fs::symlink(&victim, tls.join(KEY_FILE)).unwrap();
        let set = ensure(&tls, &[]).unwrap();
        assert!(set.created);
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched");
        let meta = std::fs::symlink_metadata(&set.key).unwrap();
        assert!(meta.file_type().is_file(), "the key is a file of its own");
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);

        // Created with the mode, whatever the umask allows: nothing to chmod afterwards.
        let fresh = dir.path().join("fresh");
        let file = create_private(&fresh).unwrap();
        let mode = file.metadata().unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");
        assert!(
            create_private(&fresh).is_err(),
            "create-new refuses an existing file"
        );
    }

    #[test]
    fn a_chain_from_an_earlier_version_is_cut_to_the_leaf() {
        let dir = tempfile::tempdir().unwrap();
        let set = ensure(dir.path(), &[]).unwrap();
        let leaf = std::fs::read_to_string(&set.cert).unwrap();
        let ca = std::fs::read_to_string(&set.ca).unwrap();
        // What versions before this one wrote: leaf, then CA.
        std::fs::write(&set.cert, format!("{leaf}{ca}")).unwrap();
        assert_eq!(super::super::load_certs(&set.cert).unwrap().len(), 2);
        ensure(dir.path(), &[]).unwrap();
        let certs = super::super::load_certs(&set.cert).unwrap();
        assert_eq!(certs.len(), 1);
        assert_eq!(
            std::fs::read_to_string(&set.cert).unwrap().trim(),
            leaf.trim()
        );
        // An operator's own two-certificate chain (a CA other than ca.pem) is not touched.
        let other = generate(&[]).unwrap();
        let theirs = format!("{leaf}{}", other.ca_pem);
        std::fs::write(&set.cert, &theirs).unwrap();
        ensure(dir.path(), &[]).unwrap();
        assert_eq!(std::fs::read_to_string(&set.cert).unwrap(), theirs);
    }
}
