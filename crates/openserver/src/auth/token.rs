//! Token logins: JSON Web Tokens signed by the application's backend (HS256 with a shared
//! secret, EdDSA or ES256 with a public key), and the resume tokens a server hands out at
//! every login so that a reconnect, to this node or another of the same service, costs no
//! password hash.
//!
//! A token names the user (`sub`), its expiry (`exp`, required) and optionally its roles
//! (`roles`, a list of strings); `iss` and `aud` are checked when configured. Resume tokens
//! are HS256 tokens with the issuer [`RESUME_ISSUER`], signed with the resume secret, which
//! every node of one service must share (`[auth.token] resume_secret`).

use crate::auth::User;
use crate::wire::Secret;
use jsonwebtoken::errors::ErrorKind;
pub use jsonwebtoken::Algorithm;
use jsonwebtoken::{DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The issuer of resume tokens; the application's tokens must not use it.
pub const RESUME_ISSUER: &str = "openserver-resume";

/// The longest user name a token may carry, in bytes.
const MAX_NAME: usize = 256;

/// How the application's tokens are signed, and the key that verifies them.
#[derive(Clone)]
pub enum TokenKey {
    /// HMAC-SHA-256 with a secret shared with the application's backend (at least 32 bytes).
    Hs256(Secret),
    /// Ed25519 signatures; the public key in PEM (SubjectPublicKeyInfo).
    EdDsa(String),
    /// ECDSA P-256 with SHA-256; the public key in PEM.
    Es256(String),
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TokenKey::Hs256(_) => "Hs256(<secret>)",
            TokenKey::EdDsa(_) => "EdDsa(<public key>)",
            TokenKey::Es256(_) => "Es256(<public key>)",
        })
    }
}

/// Token logins' settings.
#[derive(Debug, Clone)]
pub struct TokenConfig {
    /// Verifies the application's tokens; `None` accepts resume tokens only.
    pub key: Option<TokenKey>,
    /// The `iss` the application's tokens must carry, if set.
    pub issuer: Option<String>,
    /// An `aud` the application's tokens must carry, if set.
    pub audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway: Duration,
    /// Signs and checks resume tokens (at least 32 bytes). Every node of one service needs
    /// the same, or a client that reconnects to another node logs in with its password again.
    pub resume_secret: Secret,
    /// How long a resume token is valid (1 s to 24 h). A deleted user is refused at once (a
    /// resume login checks the store), but one whose password changed may still resume for
    /// this long.
    pub resume_ttl: Duration,
}

impl Default for TokenConfig {
    /// No application key, 30 s leeway, resume tokens valid 10 minutes with a random secret
    /// (valid on this process only).
    fn default() -> Self {
        TokenConfig {
            key: None,
            issuer: None,
            audience: None,
            leeway: Duration::from_secs(30),
            resume_secret: random_secret(),
            resume_ttl: Duration::from_secs(600),
        }
    }
}

/// 32 random bytes, hex: a resume secret for one process.
pub fn random_secret() -> Secret {
    Secret::new(hex::encode(rand::random::<[u8; 32]>()))
}

/// What a verified token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenUser {
    /// The user (`sub`).
    pub name: String,
    /// The roles the token grants; `None` when it has no `roles` claim.
    pub roles: Option<Vec<String>>,
    /// Which kind of token it was.
    pub kind: TokenKind,
}

/// Which kind of token logged a user in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// One of the application's.
    Application,
    /// A resume token of a user the store holds, who must still exist there.
    ResumeStored,
    /// A resume token of a user only an application token vouched for (none in the store),
    /// with the roles that token gave.
    ResumeExternal,
}

/// Why a token was refused. The client hears only [`Expired`](Self::Expired) or "invalid";
/// the detail goes to the server's log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Its `exp` has passed.
    #[error("the token has expired")]
    Expired,
    /// Anything else, with what was wrong.
    #[error("invalid token: {0}")]
    Invalid(String),
}

/// The claims openserver reads and writes.
#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iss: Option<String>,
    /// Written by [`issue`] only; checked by [`Validation`] from the raw claims.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    aud: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    roles: Option<Vec<String>>,
    /// Resume tokens only: `"token"` for a user the store does not hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    src: Option<String>,
}

/// What [`issue`] puts in a token besides its expiry.
#[derive(Debug, Clone, Default)]
pub struct IssueClaims {
    /// The user (`sub`).
    pub user: String,
    /// The roles it grants (`roles`), if any.
    pub roles: Option<Vec<String>>,
    /// `iss`, if set.
    pub issuer: Option<String>,
    /// `aud`, if set.
    pub audience: Option<String>,
}

/// Checks the application's tokens and issues and checks resume tokens.
pub struct TokenVerifier {
    app: Option<(DecodingKey, Validation)>,
    resume_encode: EncodingKey,
    resume_decode: (DecodingKey, Validation),
    resume_ttl: Duration,
}

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenVerifier")
            .field("app_key", &self.app.is_some())
            .field("resume_ttl", &self.resume_ttl)
            .finish_non_exhaustive()
    }
}

impl TokenVerifier {
    /// Reads the keys of `config`; a key that does not parse, or a secret under 32 bytes, is
    /// an error that says which.
    pub fn new(config: &TokenConfig) -> Result<Self, String> {
        let app = match &config.key {
            None => None,
            Some(key) => {
                let (decoding, algorithm) = match key {
                    TokenKey::Hs256(secret) => {
                        check_secret("the HS256 secret", secret)?;
                        (
                            DecodingKey::from_secret(secret.expose().as_bytes()),
                            Algorithm::HS256,
                        )
                    }
                    TokenKey::EdDsa(pem) => (
                        DecodingKey::from_ed_pem(pem.as_bytes()).map_err(|e| {
                            format!("the EdDSA public key is not an Ed25519 PEM key: {e}")
                        })?,
                        Algorithm::EdDSA,
                    ),
                    TokenKey::Es256(pem) => (
                        DecodingKey::from_ec_pem(pem.as_bytes()).map_err(|e| {
                            format!("the ES256 public key is not a P-256 PEM key: {e}")
                        })?,
                        Algorithm::ES256,
                    ),
                };
                let mut validation = validation(algorithm, config.leeway);
                if let Some(issuer) = &config.issuer {
                    if issuer == RESUME_ISSUER {
                        return Err(format!("the issuer {RESUME_ISSUER:?} is reserved"));
                    }
                    validation.set_issuer(&[issuer]);
                    // Checked only when present unless required.
                    validation.required_spec_claims.insert("iss".to_string());
                }
                if let Some(audience) = &config.audience {
                    validation.set_audience(&[audience]);
                    validation.required_spec_claims.insert("aud".to_string());
                }
                Some((decoding, validation))
            }
        };
        check_secret("the resume secret", &config.resume_secret)?;
        let secret = config.resume_secret.expose().as_bytes();
        let mut resume = validation(Algorithm::HS256, config.leeway);
        resume.set_issuer(&[RESUME_ISSUER]);
        if config.resume_ttl.is_zero() || config.resume_ttl > Duration::from_secs(86_400) {
            return Err("resume_ttl must be between 1 s and 24 h".to_string());
        }
        Ok(TokenVerifier {
            app,
            resume_encode: EncodingKey::from_secret(secret),
            resume_decode: (DecodingKey::from_secret(secret), resume),
            resume_ttl: config.resume_ttl,
        })
    }

    /// How long the resume tokens issued now are valid.
    pub fn resume_ttl(&self) -> Duration {
        self.resume_ttl
    }

    /// Checks `token`: a resume token of this service, or one of the application's.
    pub fn verify(&self, token: &str) -> Result<TokenUser, TokenError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| TokenError::Invalid(format!("not a JWT: {e}")))?;
        // A resume token says so in its issuer; the signature decides whether it is one.
        if header.alg == Algorithm::HS256 && claims_issuer(token).as_deref() == Some(RESUME_ISSUER)
        {
            let (key, validation) = &self.resume_decode;
            let claims = decode(token, key, validation)?;
            let kind = match claims.src.as_deref() {
                Some("token") => TokenKind::ResumeExternal,
                _ => TokenKind::ResumeStored,
            };
            return user(claims, kind);
        }
        let Some((key, validation)) = &self.app else {
            return Err(TokenError::Invalid(
                "not a resume token, and no key for the application's tokens is configured \
                 ([auth.token])"
                    .to_string(),
            ));
        };
        if header.alg != validation.algorithms[0] {
            return Err(TokenError::Invalid(format!(
                "signed with {:?}; this server takes {:?}",
                header.alg, validation.algorithms[0]
            )));
        }
        user(decode(token, key, validation)?, TokenKind::Application)
    }

    /// A resume token for `user`, valid for [`resume_ttl`](Self::resume_ttl). `stored`: the
    /// store holds the user (a resume then looks it up again); otherwise an application token
    /// vouched for it, and the resume token carries its roles.
    pub fn issue_resume(&self, user: &User, stored: bool) -> Result<Secret, TokenError> {
        let now = unix_now();
        let claims = Claims {
            sub: user.name.clone(),
            exp: now + self.resume_ttl.as_secs().max(1),
            iat: Some(now),
            iss: Some(RESUME_ISSUER.to_string()),
            aud: None,
            roles: (!stored).then(|| user.roles.clone()),
            src: (!stored).then(|| "token".to_string()),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.resume_encode)
            .map(Secret::new)
            .map_err(|e| TokenError::Invalid(format!("cannot sign a resume token: {e}")))
    }
}

/// Signs an application token valid for `ttl` (what a backend does; `openserver token issue`
/// uses it for tests and scripts). `key` is the HS256 secret, or the private key in PEM
/// (PKCS#8) for EdDSA and ES256.
pub fn issue(
    algorithm: Algorithm,
    key: &[u8],
    claims: IssueClaims,
    ttl: Duration,
) -> Result<String, String> {
    let encoding = match algorithm {
        Algorithm::HS256 => EncodingKey::from_secret(key),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(key)
            .map_err(|e| format!("not an Ed25519 private key in PEM: {e}"))?,
        Algorithm::ES256 => EncodingKey::from_ec_pem(key)
            .map_err(|e| format!("not a P-256 private key in PEM: {e}"))?,
        other => return Err(format!("{other:?} is not supported (HS256, EdDSA, ES256)")),
    };
    let now = unix_now();
    let claims = Claims {
        sub: claims.user,
        exp: now + ttl.as_secs(),
        iat: Some(now),
        iss: claims.issuer,
        aud: claims.audience,
        roles: claims.roles,
        src: None,
    };
    jsonwebtoken::encode(&Header::new(algorithm), &claims, &encoding)
        .map_err(|e| format!("cannot sign the token: {e}"))
}

fn validation(algorithm: Algorithm, leeway: Duration) -> Validation {
    let mut validation = Validation::new(algorithm);
    validation.leeway = leeway.as_secs();
    validation.set_required_spec_claims(&["exp", "sub"]);
    validation.validate_nbf = true;
    // Audience is checked only where configured (set_audience turns it on).
    validation.validate_aud = false;
    validation
}

fn decode(token: &str, key: &DecodingKey, validation: &Validation) -> Result<Claims, TokenError> {
    let mut validation = validation.clone();
    if validation.aud.is_some() {
        validation.validate_aud = true;
    }
    jsonwebtoken::decode::<Claims>(token, key, &validation)
        .map(|data| data.claims)
        .map_err(|e| match e.kind() {
            ErrorKind::ExpiredSignature => TokenError::Expired,
            _ => TokenError::Invalid(e.to_string()),
        })
}

fn user(claims: Claims, kind: TokenKind) -> Result<TokenUser, TokenError> {
    if claims.sub.is_empty()
        || claims.sub.len() > MAX_NAME
        || claims.sub.chars().any(char::is_control)
    {
        return Err(TokenError::Invalid(
            "sub must name a user: 1 to 256 bytes, no control characters".to_string(),
        ));
    }
    Ok(TokenUser {
        name: claims.sub,
        roles: claims.roles,
        kind,
    })
}

/// `iss` and `sub` as a token claims them, signature unchecked.
#[derive(Deserialize)]
struct Unverified {
    iss: Option<String>,
    sub: Option<String>,
}

fn unverified(token: &str) -> Option<Unverified> {
    use base64::Engine as _;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The `iss` claim read without checking the signature: only to pick the key.
fn claims_issuer(token: &str) -> Option<String> {
    unverified(token)?.iss
}

/// The user a token claims to be, signature unchecked: for the log and events of a denied
/// login only, never to decide anything.
pub fn claimed_user(token: &str) -> Option<String> {
    unverified(token)?.sub
}

fn check_secret(what: &str, secret: &Secret) -> Result<(), String> {
    if secret.expose().len() < 32 {
        return Err(format!(
            "{what} is too short ({} bytes): use at least 32 random bytes, e.g. `openssl rand -hex 32`",
            secret.expose().len()
        ));
    }
    Ok(())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn verifier(key: Option<TokenKey>) -> TokenVerifier {
        TokenVerifier::new(&TokenConfig {
            key,
            ..TokenConfig::default()
        })
        .unwrap()
    }

    fn claims(user: &str) -> IssueClaims {
        IssueClaims {
            user: user.into(),
            ..IssueClaims::default()
        }
    }

    fn hs256(user: &str, ttl: Duration, roles: Option<Vec<String>>) -> String {
        let claims = IssueClaims {
            roles,
            ..claims(user)
        };
        issue(Algorithm::HS256, SECRET.as_bytes(), claims, ttl).unwrap()
    }

    #[test]
    fn an_application_token_names_its_user_and_roles() {
        let v = verifier(Some(TokenKey::Hs256(Secret::new(SECRET))));
        let token = hs256("alice", Duration::from_secs(60), Some(vec!["admin".into()]));
        assert_eq!(
            v.verify(&token),
            Ok(TokenUser {
                name: "alice".into(),
                roles: Some(vec!["admin".into()]),
                kind: TokenKind::Application
            })
        );
        assert_eq!(
            v.verify(&hs256("bob", Duration::from_secs(60), None))
                .unwrap()
                .roles,
            None
        );
    }

    #[test]
    fn expired_forged_and_foreign_tokens_are_refused() {
        let v = verifier(Some(TokenKey::Hs256(Secret::new(SECRET))));
        // Expired well beyond the 30 s leeway.
        let old = Claims {
            sub: "alice".into(),
            exp: unix_now() - 120,
            iat: None,
            iss: None,
            aud: None,
            roles: None,
            src: None,
        };
        let expired = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &old,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        assert_eq!(v.verify(&expired), Err(TokenError::Expired));
        let other = issue(
            Algorithm::HS256,
            b"another secret, 32 bytes or more!!",
            claims("alice"),
            Duration::from_secs(60),
        )
        .unwrap();
        assert!(matches!(v.verify(&other), Err(TokenError::Invalid(_))));
        assert!(matches!(
            v.verify("not a token"),
            Err(TokenError::Invalid(_))
        ));
        let empty = hs256("", Duration::from_secs(60), None);
        assert!(matches!(v.verify(&empty), Err(TokenError::Invalid(e)) if e.contains("sub")));
        // No application key: only resume tokens.
        let none = verifier(None);
        let good = hs256("alice", Duration::from_secs(60), None);
        assert!(
            matches!(none.verify(&good), Err(TokenError::Invalid(e)) if e.contains("[auth.token]"))
        );
    }

    #[test]
    fn resume_tokens_verify_on_every_node_that_shares_the_secret() {
        let shared = Secret::new(SECRET);
        let config = TokenConfig {
            resume_secret: shared.clone(),
            ..TokenConfig::default()
        };
        let a = TokenVerifier::new(&config).unwrap();
        let b = TokenVerifier::new(&config).unwrap();
        let alice = User {
            id: 7,
            name: "alice".into(),
            roles: vec!["admin".into()],
        };
        let token = a.issue_resume(&alice, true).unwrap();
        let user = b.verify(token.expose()).unwrap();
        assert_eq!(
            (user.name.as_str(), user.kind, user.roles),
            ("alice", TokenKind::ResumeStored, None)
        );
        // A user only a token vouched for keeps that token's roles.
        let token = a.issue_resume(&alice, false).unwrap();
        let user = b.verify(token.expose()).unwrap();
        assert_eq!(
            (user.kind, user.roles),
            (TokenKind::ResumeExternal, Some(vec!["admin".to_string()]))
        );
        // A node with another secret refuses it.
        let c = verifier(None);
        assert!(matches!(
            c.verify(token.expose()),
            Err(TokenError::Invalid(_))
        ));
        // An application token cannot pass as a resume token by naming the issuer: the
        // resume secret decides.
        let app = verifier(Some(TokenKey::Hs256(Secret::new(SECRET.repeat(2)))));
        let forged = issue(
            Algorithm::HS256,
            SECRET.repeat(2).as_bytes(),
            IssueClaims {
                issuer: Some(RESUME_ISSUER.into()),
                ..claims("alice")
            },
            Duration::from_secs(60),
        )
        .unwrap();
        assert!(matches!(app.verify(&forged), Err(TokenError::Invalid(_))));
    }

    #[test]
    fn eddsa_and_es256_verify_with_the_public_key() {
        for (alg, rcgen_alg) in [
            (Algorithm::EdDSA, &rcgen::PKCS_ED25519),
            (Algorithm::ES256, &rcgen::PKCS_ECDSA_P256_SHA256),
        ] {
            let pair = rcgen::KeyPair::generate_for(rcgen_alg).unwrap();
            let key = match alg {
                Algorithm::EdDSA => TokenKey::EdDsa(pair.public_key_pem()),
                _ => TokenKey::Es256(pair.public_key_pem()),
            };
            let v = verifier(Some(key));
            let token = issue(
                alg,
                pair.serialize_pem().as_bytes(),
                claims("carol"),
                Duration::from_secs(60),
            )
            .unwrap();
            assert_eq!(v.verify(&token).unwrap().name, "carol");
            // An HS256 token is refused by a public-key server, whatever its secret.
            let hs = hs256("carol", Duration::from_secs(60), None);
            assert!(matches!(v.verify(&hs), Err(TokenError::Invalid(e)) if e.contains("HS256")));
        }
    }

    #[test]
    fn issuer_and_audience_are_checked_where_configured() {
        let v = TokenVerifier::new(&TokenConfig {
            key: Some(TokenKey::Hs256(Secret::new(SECRET))),
            issuer: Some("backend".into()),
            audience: Some("chat".into()),
            ..TokenConfig::default()
        })
        .unwrap();
        let sign = |issuer: Option<&str>, audience: Option<&str>| {
            let claims = IssueClaims {
                issuer: issuer.map(str::to_string),
                audience: audience.map(str::to_string),
                ..claims("alice")
            };
            issue(
                Algorithm::HS256,
                SECRET.as_bytes(),
                claims,
                Duration::from_secs(60),
            )
            .unwrap()
        };
        assert!(v.verify(&sign(Some("backend"), Some("chat"))).is_ok());
        for (iss, aud) in [
            (Some("other"), Some("chat")),
            (Some("backend"), Some("other")),
            (None, Some("chat")),
            (Some("backend"), None),
        ] {
            assert!(
                matches!(v.verify(&sign(iss, aud)), Err(TokenError::Invalid(_))),
                "{iss:?} {aud:?}"
            );
        }
    }

    #[test]
    fn bad_settings_say_what_to_fix() {
        let short = TokenConfig {
            resume_secret: Secret::new("short"),
            ..TokenConfig::default()
        };
        assert!(TokenVerifier::new(&short)
            .unwrap_err()
            .contains("at least 32"));
        let bad_pem = TokenConfig {
            key: Some(TokenKey::EdDsa("not a key".into())),
            ..TokenConfig::default()
        };
        assert!(TokenVerifier::new(&bad_pem)
            .unwrap_err()
            .contains("Ed25519"));
        let reserved = TokenConfig {
            key: Some(TokenKey::Hs256(Secret::new(SECRET))),
            issuer: Some(RESUME_ISSUER.into()),
            ..TokenConfig::default()
        };
        assert!(TokenVerifier::new(&reserved)
            .unwrap_err()
            .contains("reserved"));
    }
}
