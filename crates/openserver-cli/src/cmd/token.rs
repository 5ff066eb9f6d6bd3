//! `[auth.token]` (TokenAuth, protocol 7) and `openserver token issue`, which signs a token
//! as an application's backend would, for tests and scripts.

use anyhow::{bail, Context as _, Result};
use clap::{Args, Subcommand};
use openserver::auth::token::{self, TokenConfig, TokenKey};
use openserver::wire::Secret;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How the application's tokens are signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
pub enum TokenAlgorithm {
    /// HMAC-SHA-256 with a shared secret (`secret_file`).
    #[default]
    #[serde(rename = "HS256")]
    #[value(name = "HS256")]
    Hs256,
    /// Ed25519 (`public_key_file`).
    #[serde(rename = "EdDSA")]
    #[value(name = "EdDSA")]
    EdDsa,
    /// ECDSA P-256 (`public_key_file`).
    #[serde(rename = "ES256")]
    #[value(name = "ES256")]
    Es256,
}

impl TokenAlgorithm {
    fn jwt(self) -> token::Algorithm {
        match self {
            TokenAlgorithm::Hs256 => token::Algorithm::HS256,
            TokenAlgorithm::EdDsa => token::Algorithm::EdDSA,
            TokenAlgorithm::Es256 => token::Algorithm::ES256,
        }
    }
}

/// `[auth.token]`: token logins. TokenAuth is always offered, for resume tokens; the
/// application's own tokens are accepted once a key is configured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TokenFileConfig {
    /// How the application's tokens are signed.
    pub algorithm: TokenAlgorithm,
    /// HS256: a file holding the shared secret (at least 32 bytes; one trailing newline is
    /// ignored).
    pub secret_file: Option<PathBuf>,
    /// EdDSA or ES256: the public key, PEM.
    pub public_key_file: Option<PathBuf>,
    /// The `iss` tokens must carry, if set.
    pub issuer: Option<String>,
    /// An `aud` tokens must carry, if set.
    pub audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
    /// A file holding the secret that signs resume tokens (at least 32 bytes). Every node of
    /// one service needs the same one; without it, a random secret per process makes resume
    /// tokens valid on this node only, until it restarts.
    pub resume_secret_file: Option<PathBuf>,
    /// How long a resume token is valid (also how long a user whose password changed can
    /// still resume).
    #[serde(with = "humantime_serde")]
    pub resume_ttl: Duration,
}

impl Default for TokenFileConfig {
    fn default() -> Self {
        let library = TokenConfig::default();
        TokenFileConfig {
            algorithm: TokenAlgorithm::Hs256,
            secret_file: None,
            public_key_file: None,
            issuer: None,
            audience: None,
            leeway: library.leeway,
            resume_secret_file: None,
            resume_ttl: library.resume_ttl,
        }
    }
}

/// Reads a secret file: its text, less one trailing line ending.
fn read_secret(path: &Path, what: &str) -> Result<Secret> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the {what} from {}", path.display()))?;
    let text = text
        .strip_suffix('\n')
        .map(|t| t.strip_suffix('\r').unwrap_or(t))
        .unwrap_or(&text);
    Ok(Secret::new(text))
}

impl TokenFileConfig {
    /// The library's settings, with the key files read. Errors name the file or setting.
    pub fn resolve(&self) -> Result<TokenConfig> {
        let key = match (self.algorithm, &self.secret_file, &self.public_key_file) {
            (_, None, None) => None,
            (TokenAlgorithm::Hs256, Some(file), None) => Some(TokenKey::Hs256(read_secret(
                file,
                "[auth.token] secret_file",
            )?)),
            (TokenAlgorithm::Hs256, _, Some(_)) => {
                bail!(
                    "[auth.token] public_key_file is for EdDSA and ES256; HS256 takes secret_file"
                )
            }
            (_, Some(_), _) => {
                bail!("[auth.token] secret_file is for HS256; EdDSA and ES256 take public_key_file")
            }
            (algorithm, None, Some(file)) => {
                let pem = std::fs::read_to_string(file).with_context(|| {
                    format!(
                        "cannot read [auth.token] public_key_file {}",
                        file.display()
                    )
                })?;
                Some(match algorithm {
                    TokenAlgorithm::EdDsa => TokenKey::EdDsa(pem),
                    _ => TokenKey::Es256(pem),
                })
            }
        };
        let resume_secret = match &self.resume_secret_file {
            Some(file) => read_secret(file, "[auth.token] resume_secret_file")?,
            None => token::random_secret(),
        };
        let config = TokenConfig {
            key,
            issuer: self.issuer.clone(),
            audience: self.audience.clone(),
            leeway: self.leeway,
            resume_secret,
            resume_ttl: self.resume_ttl,
        };
        // The same checks the server makes at bind, with the setting named.
        token::TokenVerifier::new(&config).map_err(|e| anyhow::anyhow!("[auth.token]: {e}"))?;
        Ok(config)
    }
}

/// Arguments of `openserver token`.
#[derive(Args, Debug)]
pub struct TokenArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: TokenCommand,
}

/// The `openserver token` subcommands.
#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Sign a token for a user, as the application's backend would: prints it.
    Issue(IssueArgs),
}

/// Arguments of `openserver token issue`.
#[derive(Args, Debug)]
pub struct IssueArgs {
    /// The user the token logs in as (`sub`).
    #[arg(long)]
    pub user: String,
    /// How long the token is valid, e.g. `15m`, `1h`.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1h")]
    pub ttl: Duration,
    /// A role the token grants (repeatable); without any, the store's roles apply.
    #[arg(long = "role", value_name = "ROLE")]
    pub roles: Vec<String>,
    /// The server's configuration file: its `[auth.token]` algorithm, HS256 secret and
    /// issuer apply.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The private key (PEM, PKCS#8) for EdDSA or ES256, which the server does not hold.
    #[arg(long, value_name = "FILE")]
    pub private_key: Option<PathBuf>,
}

/// Runs `openserver token`.
pub fn run(args: TokenArgs) -> Result<()> {
    let TokenCommand::Issue(args) = args.command;
    let config = match &args.config {
        Some(path) => crate::config::FileConfig::load(path)?,
        None => crate::config::FileConfig::default(),
    };
    let token = &config.auth.token;
    let key = match (token.algorithm, &args.private_key, &token.secret_file) {
        (_, Some(file), _) => std::fs::read(file)
            .with_context(|| format!("cannot read the private key {}", file.display()))?,
        (TokenAlgorithm::Hs256, None, Some(file)) => read_secret(file, "[auth.token] secret_file")?
            .expose()
            .as_bytes()
            .to_vec(),
        (TokenAlgorithm::Hs256, None, None) => bail!(
            "no key to sign with: give --config with an [auth.token] secret_file (HS256), or --private-key"
        ),
        (_, None, _) => bail!("{:?} tokens are signed with a private key: give --private-key FILE", token.algorithm),
    };
    if args.ttl.is_zero() {
        bail!("--ttl must be longer than 0 s");
    }
    let roles = (!args.roles.is_empty()).then(|| args.roles.clone());
    let claims = token::IssueClaims {
        user: args.user.clone(),
        roles,
        issuer: token.issuer.clone(),
        audience: token.audience.clone(),
    };
    let signed =
        token::issue(token.algorithm.jwt(), &key, claims, args.ttl).map_err(anyhow::Error::msg)?;
    println!("{signed}");
    Ok(())
}
