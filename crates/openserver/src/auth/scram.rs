//! SCRAM-SHA-256 (RFC 5802 with the hash of RFC 7677), without I/O.
//!
//! The client proves it knows the password without sending it, and the server proves it holds
//! the user's keys. The server keeps only [`ScramCredentials`] (salt, iteration count, StoredKey,
//! ServerKey); a listener sees nothing it could replay, and a stolen credential record does not
//! let anyone log in without first guessing the password.
//!
//! - Server side: [`ClientFirst::parse`] the first message, look the user up
//!   ([`UserStore::scram_lookup`](super::UserStore::scram_lookup)),
//!   [`ServerExchange::start`], then [`ServerExchange::finish`] with the client-final message.
//! - Client side: [`ClientExchange::new`], send [`ClientExchange::client_first`], answer the
//!   server-first with [`ClientExchange::client_final`], then check the server-final with
//!   [`PendingServerFinal::verify`].
//!
//! # Choices within the RFC
//!
//! - **No channel binding.** The client sends the gs2 header `n,,`. A `p=` header fails with
//!   `channel-binding-not-supported`. A `y,,` header (the client could bind but believes the
//!   server cannot) is accepted: RFC 5802 section 6 makes it fail only at servers that do support
//!   channel binding, which this one does not. Should a `-PLUS` variant ever be added, `y` must
//!   then fail with `server-does-support-channel-binding`.
//! - **No authorization identity** (`a=`): refused.
//! - **No SASLprep.** Names and passwords are used as their UTF-8 bytes. For printable ASCII
//!   that is what SASLprep gives; other characters are not normalized, so a client must send
//!   the same bytes the password was set with.
//! - **Extensions.** A mandatory extension (`m=`) fails with `extensions-not-supported`; other
//!   extensions are checked for syntax and otherwise ignored, as the RFC requires.
//! - **Iterations.** New credentials use [`DEFAULT_ITERATIONS`] (600,000, what OWASP advises
//!   for PBKDF2-HMAC-SHA-256, since the credentials are a verifier a stolen database can be
//!   guessed against) unless the store is told otherwise; never fewer than the RFC 7677
//!   minimum of 4096. The client refuses a server-first outside [`MIN_ITERATIONS`]..=[`MAX_ITERATIONS`], so a
//!   hostile server can neither weaken the proof nor make the client hash for minutes.
//!
//! # Unknown users
//!
//! A server must not reveal which names exist. For an unknown user (or one without SCRAM
//! credentials) it runs the same exchange with [`ScramCredentials::fake`] credentials: the salt
//! is derived from a server secret and the name, so repeated tries see the same salt, the
//! iteration count is the one new credentials get, and the keys are random. The exchange then fails at the
//! proof check exactly like a wrong password, doing the same work.

use super::ScramLookup;
use crate::wire::Secret;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use rand::rngs::OsRng;
use rand::RngCore as _;
use sha2::{Digest as _, Sha256};
use std::fmt;
use std::sync::OnceLock;
use subtle::{Choice, ConstantTimeEq as _};

type HmacSha256 = Hmac<Sha256>;

/// Iteration count of new credentials unless configured: OWASP's advice for PBKDF2-HMAC-SHA-256
/// (about a quarter of a second of one core, once per login on the client and once per
/// password change on the server).
pub const DEFAULT_ITERATIONS: u32 = 600_000;
/// The fewest iterations a client accepts from a server.
pub const MIN_ITERATIONS: u32 = 4096;
/// The most iterations a client accepts from a server (about a second of hashing).
pub const MAX_ITERATIONS: u32 = 1_000_000;
/// Bytes of salt in new credentials.
pub const SALT_LEN: usize = 16;
/// Longest SCRAM message accepted, in bytes. Honest messages stay far below it (user names
/// are at most 256 bytes, 768 escaped); the cap bounds the work a peer can ask for.
pub const MAX_MESSAGE_LEN: usize = 4096;

/// Random bytes in each side's nonce (32 base64 characters).
const NONCE_BYTES: usize = 24;
/// The gs2 header this client sends: no channel binding, no authorization identity.
const GS2_HEADER: &str = "n,,";
/// Attribute letters RFC 5802 defines; they may not reappear as extensions.
const DEFINED_ATTRIBUTES: &[u8] = b"acimnprsve";

/// Why an exchange failed. The display text ends with the RFC 5802 `server-error-value` where
/// one fits, so a SCRAM-aware peer can tell what went wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ScramError {
    /// A message does not follow the RFC 5802 grammar, or is over [`MAX_MESSAGE_LEN`].
    #[error("malformed SCRAM message: {0} (e=invalid-encoding)")]
    Malformed(&'static str),
    /// The client-first message has a user name that cannot be sent (empty).
    #[error("a SCRAM user name may not be empty (e=invalid-username-encoding)")]
    InvalidUsername,
    /// A mandatory extension (`m=`) was sent.
    #[error("mandatory SCRAM extensions are not supported (e=extensions-not-supported)")]
    ExtensionsNotSupported,
    /// The client asked for channel binding (`p=`).
    #[error("channel binding is not supported (e=channel-binding-not-supported)")]
    ChannelBindingNotSupported,
    /// The client asked to act for another identity (`a=`).
    #[error("authorization identities are not supported (e=other-error)")]
    AuthzidNotSupported,
    /// The client-final `c=` does not repeat the gs2 header of the client-first message.
    #[error("channel binding data does not match the gs2 header (e=channel-bindings-dont-match)")]
    ChannelBindingsDontMatch,
    /// The nonce is not the one this exchange uses.
    #[error("nonce does not match this exchange (e=other-error)")]
    NonceMismatch,
    /// The proof is wrong, or the user is unknown: a denial.
    #[error("invalid proof (e=invalid-proof)")]
    InvalidProof,
    /// Client side: the server asked for an iteration count outside
    /// [`MIN_ITERATIONS`]..=[`MAX_ITERATIONS`].
    #[error("server asked for {0} iterations, outside {MIN_ITERATIONS}..={MAX_ITERATIONS}")]
    IterationsOutOfRange(u64),
    /// Client side: the server's signature is wrong, so it does not hold the user's keys.
    #[error("server signature does not verify")]
    ServerSignatureMismatch,
    /// Client side: the server-final message reported an error (`e=`).
    #[error("server reported e={0}")]
    ServerError(String),
}

/// What a server keeps per user for SCRAM-SHA-256 (RFC 5802 section 3).
///
/// The password cannot be computed from these; they are still secret, since `stored_key` and
/// `server_key` together let an attacker impersonate the server to the user.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramCredentials {
    /// The salt, sent to the client in the server-first message.
    pub salt: Vec<u8>,
    /// The PBKDF2 iteration count, sent in the server-first message.
    pub iterations: u32,
    /// `H(HMAC(SaltedPassword, "Client Key"))`: checks the client's proof.
    pub stored_key: [u8; 32],
    /// `HMAC(SaltedPassword, "Server Key")`: signs the server-final message.
    pub server_key: [u8; 32],
}

impl ScramCredentials {
    /// Derives the credentials of `password` with `salt` and `iterations` (PBKDF2-HMAC-SHA-256).
    ///
    /// Costs `iterations` HMACs: call it off the async threads. Use at least
    /// [`MIN_ITERATIONS`]; clients refuse fewer.
    pub fn derive(password: &str, salt: &[u8], iterations: u32) -> Self {
        let keys = PasswordKeys::derive(password.as_bytes(), salt, iterations);
        ScramCredentials {
            salt: salt.to_vec(),
            iterations,
            stored_key: sha256(&keys.client_key),
            server_key: keys.server_key,
        }
    }

    /// Credentials for `password` with a fresh random salt and [`DEFAULT_ITERATIONS`].
    pub fn generate(password: &str) -> Self {
        Self::generate_with(password, DEFAULT_ITERATIONS)
    }

    /// Credentials for `password` with a fresh random salt and `iterations`.
    pub fn generate_with(password: &str, iterations: u32) -> Self {
        let mut salt = [0u8; SALT_LEN];
        OsRng.fill_bytes(&mut salt);
        Self::derive(password, &salt, iterations)
    }

    /// Stand-in credentials for a name that has none (unknown user), so that its exchange looks
    /// and costs like a real one: the salt is the first [`SALT_LEN`] bytes of
    /// `HMAC-SHA-256(secret, name)` (stable across tries, unpredictable without `secret`), the
    /// iteration count the default, the keys random. No password matches them.
    pub fn fake(secret: &[u8], name: &str) -> Self {
        Self::fake_with(secret, name, DEFAULT_ITERATIONS)
    }

    /// [`fake`](Self::fake) credentials with `iterations`: a store whose real credentials use
    /// another count gives its stand-ins that count too, so the count tells nothing.
    pub fn fake_with(secret: &[u8], name: &str, iterations: u32) -> Self {
        let salt = hmac(secret, &[name.as_bytes()])[..SALT_LEN].to_vec();
        let mut stored_key = [0u8; 32];
        let mut server_key = [0u8; 32];
        OsRng.fill_bytes(&mut stored_key);
        OsRng.fill_bytes(&mut server_key);
        ScramCredentials {
            salt,
            iterations,
            stored_key,
            server_key,
        }
    }
}

impl fmt::Debug for ScramCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramCredentials")
            .field("salt", &BASE64.encode(&self.salt))
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

/// A random secret for this process: the fake-salt key of stores that keep none of their own.
/// Fake salts then stay stable only while the process runs.
pub(crate) fn process_secret() -> &'static [u8; 32] {
    static SECRET: OnceLock<[u8; 32]> = OnceLock::new();
    SECRET.get_or_init(|| {
        let mut secret = [0u8; 32];
        OsRng.fill_bytes(&mut secret);
        secret
    })
}

/// A parsed client-first message: `gs2-header client-first-message-bare`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientFirst {
    /// `n,,` or `y,,`, with its trailing comma; `c=` in the client-final must encode it.
    gs2_header: String,
    /// The message without the gs2 header; part of the AuthMessage.
    bare: String,
    /// The user name, unescaped.
    user: String,
    /// The client's nonce.
    nonce: String,
}

impl ClientFirst {
    /// Parses a client-first message. Refuses channel binding (`p=`), an authorization
    /// identity (`a=`) and mandatory extensions (`m=`); ignores other extensions.
    pub fn parse(message: &str) -> Result<Self, ScramError> {
        check_len(message)?;
        let (flag, rest) = message
            .split_once(',')
            .ok_or(ScramError::Malformed("missing gs2 header"))?;
        match flag {
            "n" | "y" => {}
            f if f.starts_with("p=") => return Err(ScramError::ChannelBindingNotSupported),
            _ => return Err(ScramError::Malformed("invalid channel binding flag")),
        }
        let (authzid, bare) = rest
            .split_once(',')
            .ok_or(ScramError::Malformed("missing gs2 header"))?;
        if authzid.starts_with("a=") {
            return Err(ScramError::AuthzidNotSupported);
        } else if !authzid.is_empty() {
            return Err(ScramError::Malformed("invalid authzid"));
        }
        let mut attrs = bare.split(',');
        let first = attrs.next().unwrap_or_default();
        if first.starts_with("m=") {
            return Err(ScramError::ExtensionsNotSupported);
        }
        let user = decode_saslname(attr(Some(first), b'n', "expected n= user name")?)?;
        let nonce = nonce_attr(attrs.next())?;
        check_extensions(attrs)?;
        Ok(ClientFirst {
            gs2_header: message[..flag.len() + authzid.len() + 2].to_owned(),
            bare: bare.to_owned(),
            user,
            nonce: nonce.to_owned(),
        })
    }

    /// The user name the client logs in as, with `=2C` and `=3D` unescaped.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The client's nonce.
    pub fn nonce(&self) -> &str {
        &self.nonce
    }

    /// The gs2 header with its trailing comma (`n,,` or `y,,`).
    pub(crate) fn gs2_header(&self) -> &str {
        &self.gs2_header
    }

    /// The message without the gs2 header, as the AuthMessage uses it.
    pub(crate) fn bare(&self) -> &str {
        &self.bare
    }
}

/// The server's side of one exchange, between its server-first and the client-final message.
///
/// Single use: [`finish`](Self::finish) consumes it, so a client-final can be checked once.
pub struct ServerExchange {
    /// `client-first-message-bare "," server-first-message ","`: the AuthMessage up to the
    /// client-final part.
    auth_prefix: String,
    /// The `c=` value the client-final must carry: base64 of the gs2 header.
    channel_binding: String,
    /// Client nonce followed by server nonce.
    nonce: String,
    stored_key: [u8; 32],
    server_key: [u8; 32],
    /// False for fake credentials: the exchange then fails even if the proof matched them.
    authentic: bool,
}

impl ServerExchange {
    /// Starts the exchange for a parsed client-first message with the user's credentials from
    /// the store; returns the server-first message to send and the state to finish with.
    ///
    /// With `lookup.user` `None` (unknown user, or one without SCRAM credentials) the exchange
    /// runs on `lookup.credentials` as usual but can only end in [`ScramError::InvalidProof`].
    pub fn start(client_first: &ClientFirst, lookup: &ScramLookup) -> (String, ServerExchange) {
        let server_nonce = random_nonce();
        Self::start_with_nonce(
            client_first,
            &lookup.credentials,
            lookup.user.is_some(),
            &server_nonce,
        )
    }

    /// [`start`](Self::start) with a chosen server nonce, for test vectors and fuzzing.
    pub(crate) fn start_with_nonce(
        client_first: &ClientFirst,
        credentials: &ScramCredentials,
        authentic: bool,
        server_nonce: &str,
    ) -> (String, ServerExchange) {
        let nonce = format!("{}{server_nonce}", client_first.nonce);
        let server_first = format!(
            "r={nonce},s={},i={}",
            BASE64.encode(&credentials.salt),
            credentials.iterations
        );
        let exchange = ServerExchange {
            auth_prefix: format!("{},{server_first},", client_first.bare),
            channel_binding: BASE64.encode(&client_first.gs2_header),
            nonce,
            stored_key: credentials.stored_key,
            server_key: credentials.server_key,
            authentic,
        };
        (server_first, exchange)
    }

    /// Checks the client-final message; on success returns the server-final message (`v=` and
    /// the server signature) to send. A wrong proof is [`ScramError::InvalidProof`]; the other
    /// errors mean the message was malformed or not for this exchange.
    pub fn finish(self, client_final: &str) -> Result<String, ScramError> {
        let message = ClientFinal::parse(client_final)?;
        if message.channel_binding != self.channel_binding {
            return Err(ScramError::ChannelBindingsDontMatch);
        }
        if message.nonce != self.nonce {
            return Err(ScramError::NonceMismatch);
        }
        let auth_message = [
            self.auth_prefix.as_bytes(),
            message.without_proof.as_bytes(),
        ];
        let client_signature = hmac(&self.stored_key, &auth_message);
        let client_key = xor(&message.proof, &client_signature);
        let proof_ok =
            sha256(&client_key).ct_eq(&self.stored_key) & Choice::from(u8::from(self.authentic));
        // Signed either way, so a denial costs what a success does.
        let server_signature = hmac(&self.server_key, &auth_message);
        if bool::from(proof_ok) {
            Ok(format!("v={}", BASE64.encode(server_signature)))
        } else {
            Err(ScramError::InvalidProof)
        }
    }
}

impl fmt::Debug for ServerExchange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerExchange")
            .field("nonce", &self.nonce)
            .finish_non_exhaustive()
    }
}

/// The client's side of an exchange, before the server-first message.
#[derive(Debug)]
pub struct ClientExchange {
    password: Secret,
    /// `n=user,r=nonce`: the client-first message without the gs2 header.
    bare: String,
    /// The client's nonce.
    nonce: String,
}

impl ClientExchange {
    /// Starts an exchange for `user` with a fresh random nonce. Fails only for an empty user
    /// name, which SCRAM cannot express.
    pub fn new(user: &str, password: &Secret) -> Result<Self, ScramError> {
        Self::with_nonce(user, password, &random_nonce())
    }

    /// [`new`](Self::new) with a chosen nonce, for test vectors and fuzzing. The nonce must be
    /// printable ASCII without commas.
    pub(crate) fn with_nonce(
        user: &str,
        password: &Secret,
        nonce: &str,
    ) -> Result<Self, ScramError> {
        if user.is_empty() {
            return Err(ScramError::InvalidUsername);
        }
        Ok(ClientExchange {
            password: password.clone(),
            bare: format!("n={},r={nonce}", encode_saslname(user)),
            nonce: nonce.to_owned(),
        })
    }

    /// The client-first message to send.
    pub fn client_first(&self) -> String {
        format!("{GS2_HEADER}{}", self.bare)
    }

    /// Answers the server-first message: returns the client-final message to send and what
    /// checks the server-final answer.
    ///
    /// Runs PBKDF2 with the server's iteration count (up to [`MAX_ITERATIONS`]): call it off
    /// the async threads.
    pub fn client_final(
        self,
        server_first: &str,
    ) -> Result<(String, PendingServerFinal), ScramError> {
        let first = ServerFirst::parse(server_first)?;
        if first.nonce.len() <= self.nonce.len() || !first.nonce.starts_with(&self.nonce) {
            return Err(ScramError::NonceMismatch);
        }
        let iterations = u32::try_from(first.iterations)
            .ok()
            .filter(|i| (MIN_ITERATIONS..=MAX_ITERATIONS).contains(i))
            .ok_or(ScramError::IterationsOutOfRange(first.iterations))?;
        let keys = PasswordKeys::derive(self.password.expose().as_bytes(), &first.salt, iterations);
        let without_proof = format!("c={},r={}", BASE64.encode(GS2_HEADER), first.nonce);
        let auth_message = [
            self.bare.as_bytes(),
            b",",
            server_first.as_bytes(),
            b",",
            without_proof.as_bytes(),
        ];
        let client_signature = hmac(&sha256(&keys.client_key), &auth_message);
        let proof = xor(&keys.client_key, &client_signature);
        let pending = PendingServerFinal {
            server_signature: hmac(&keys.server_key, &auth_message),
        };
        Ok((
            format!("{without_proof},p={}", BASE64.encode(proof)),
            pending,
        ))
    }
}

/// The client's side of an exchange after its client-final message: checks the server's
/// signature.
pub struct PendingServerFinal {
    server_signature: [u8; 32],
}

impl PendingServerFinal {
    /// Checks the server-final message. `Ok` means the server holds the user's keys; a wrong
    /// signature is [`ScramError::ServerSignatureMismatch`], an `e=` answer
    /// [`ScramError::ServerError`].
    pub fn verify(self, server_final: &str) -> Result<(), ScramError> {
        match ServerFinal::parse(server_final)? {
            ServerFinal::Error(e) => Err(ScramError::ServerError(e.to_owned())),
            ServerFinal::Verifier(signature) => {
                if bool::from(signature.ct_eq(&self.server_signature)) {
                    Ok(())
                } else {
                    Err(ScramError::ServerSignatureMismatch)
                }
            }
        }
    }
}

impl fmt::Debug for PendingServerFinal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingServerFinal").finish_non_exhaustive()
    }
}

/// A parsed server-first message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ServerFirst<'a> {
    /// Client nonce followed by server nonce.
    pub(crate) nonce: &'a str,
    pub(crate) salt: Vec<u8>,
    /// As sent; `u64::MAX` if it overflowed. The client checks the range.
    pub(crate) iterations: u64,
}

impl<'a> ServerFirst<'a> {
    /// Parses `[m=...,] r=nonce,s=salt,i=count[,extensions]`.
    pub(crate) fn parse(message: &'a str) -> Result<Self, ScramError> {
        check_len(message)?;
        let mut attrs = message.split(',');
        let first = attrs.next();
        if first.is_some_and(|a| a.starts_with("m=")) {
            return Err(ScramError::ExtensionsNotSupported);
        }
        let nonce = nonce_attr(first)?;
        let salt = BASE64
            .decode(attr(attrs.next(), b's', "expected s= salt")?)
            .map_err(|_| ScramError::Malformed("salt is not base64"))?;
        if salt.is_empty() {
            return Err(ScramError::Malformed("empty salt"));
        }
        let count = attr(attrs.next(), b'i', "expected i= iteration count")?;
        let bytes = count.as_bytes();
        if !bytes.iter().all(u8::is_ascii_digit) || bytes.first() == Some(&b'0') {
            return Err(ScramError::Malformed(
                "iteration count is not a positive number",
            ));
        }
        // Only digits remain, so parsing fails only on overflow.
        let iterations = count.parse::<u64>().unwrap_or(u64::MAX);
        check_extensions(attrs)?;
        Ok(ServerFirst {
            nonce,
            salt,
            iterations,
        })
    }
}

/// A parsed client-final message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ClientFinal<'a> {
    /// Everything before `,p=`; the last part of the AuthMessage.
    pub(crate) without_proof: &'a str,
    /// The `c=` value, still base64.
    pub(crate) channel_binding: &'a str,
    pub(crate) nonce: &'a str,
    pub(crate) proof: [u8; 32],
}

impl<'a> ClientFinal<'a> {
    /// Parses `c=cbind,r=nonce[,extensions],p=proof`.
    pub(crate) fn parse(message: &'a str) -> Result<Self, ScramError> {
        check_len(message)?;
        let (without_proof, proof) = message
            .rsplit_once(',')
            .ok_or(ScramError::Malformed("expected c=, r= and p="))?;
        let proof = decode_key(attr(Some(proof), b'p', "expected p= proof last")?)
            .ok_or(ScramError::Malformed("proof is not 32 bytes of base64"))?;
        let mut attrs = without_proof.split(',');
        let channel_binding = attr(attrs.next(), b'c', "expected c= channel binding")?;
        let nonce = nonce_attr(attrs.next())?;
        check_extensions(attrs)?;
        Ok(ClientFinal {
            without_proof,
            channel_binding,
            nonce,
            proof,
        })
    }
}

/// A parsed server-final message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ServerFinal<'a> {
    /// `v=`: the server signature.
    Verifier([u8; 32]),
    /// `e=`: the server's error value.
    Error(&'a str),
}

impl<'a> ServerFinal<'a> {
    /// Parses `(e=error / v=signature)[,extensions]`.
    pub(crate) fn parse(message: &'a str) -> Result<Self, ScramError> {
        check_len(message)?;
        let mut attrs = message.split(',');
        let first = attrs.next();
        let parsed = if first.is_some_and(|a| a.starts_with("e=")) {
            ServerFinal::Error(attr(first, b'e', "expected e= or v=")?)
        } else {
            let signature = attr(first, b'v', "expected e= or v=")?;
            ServerFinal::Verifier(
                decode_key(signature)
                    .ok_or(ScramError::Malformed("signature is not 32 bytes of base64"))?,
            )
        };
        check_extensions(attrs)?;
        Ok(parsed)
    }
}

/// The ClientProof and ServerSignature that `password` yields under `credentials`' salt and
/// iterations for `auth_message` (its parts concatenated), computed from scratch: the
/// reference the fuzz targets hold [`ServerExchange`] to.
pub(crate) fn reference_proof(
    password: &str,
    credentials: &ScramCredentials,
    auth_message: &[&[u8]],
) -> ([u8; 32], [u8; 32]) {
    let keys = PasswordKeys::derive(
        password.as_bytes(),
        &credentials.salt,
        credentials.iterations,
    );
    let client_signature = hmac(&sha256(&keys.client_key), auth_message);
    (
        xor(&keys.client_key, &client_signature),
        hmac(&keys.server_key, auth_message),
    )
}

/// Escapes a user name as a `saslname`: `,` becomes `=2C` and `=` becomes `=3D`.
pub(crate) fn encode_saslname(name: &str) -> String {
    name.replace('=', "=3D").replace(',', "=2C")
}

/// Unescapes a `saslname`; any `=` not starting `=2C` or `=3D` is an error, as is NUL.
pub(crate) fn decode_saslname(value: &str) -> Result<String, ScramError> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(at) = rest.find('=') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        if let Some(tail) = rest.strip_prefix("=2C") {
            out.push(',');
            rest = tail;
        } else if let Some(tail) = rest.strip_prefix("=3D") {
            out.push('=');
            rest = tail;
        } else {
            return Err(ScramError::Malformed("invalid escape in user name"));
        }
    }
    out.push_str(rest);
    if out.contains('\0') {
        return Err(ScramError::Malformed("NUL in user name"));
    }
    Ok(out)
}

/// The value of `item` if it is the attribute `name` with a non-empty value.
fn attr<'a>(item: Option<&'a str>, name: u8, what: &'static str) -> Result<&'a str, ScramError> {
    match item.map(str::as_bytes) {
        Some([n, b'=', value @ ..]) if *n == name && !value.is_empty() => {
            // The first two bytes are ASCII, so byte 2 is a character boundary.
            Ok(item.map_or("", |s| &s[2..]))
        }
        _ => Err(ScramError::Malformed(what)),
    }
}

/// The value of an `r=` attribute: printable ASCII other than `,`.
fn nonce_attr(item: Option<&str>) -> Result<&str, ScramError> {
    let nonce = attr(item, b'r', "expected r= nonce")?;
    if nonce.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        Ok(nonce)
    } else {
        Err(ScramError::Malformed("nonce is not printable ASCII"))
    }
}

/// Checks trailing `attr=value` extensions: a letter not defined by RFC 5802, `=`, a non-empty
/// value without NUL. Unknown extensions are otherwise ignored.
fn check_extensions<'a>(attrs: impl Iterator<Item = &'a str>) -> Result<(), ScramError> {
    for ext in attrs {
        match ext.as_bytes() {
            [name, b'=', value @ ..]
                if name.is_ascii_alphabetic() && !value.is_empty() && !value.contains(&0) =>
            {
                if DEFINED_ATTRIBUTES.contains(name) {
                    return Err(ScramError::Malformed("attribute repeated or out of place"));
                }
            }
            _ => return Err(ScramError::Malformed("invalid extension")),
        }
    }
    Ok(())
}

fn check_len(message: &str) -> Result<(), ScramError> {
    if message.len() > MAX_MESSAGE_LEN {
        return Err(ScramError::Malformed("message too long"));
    }
    Ok(())
}

/// Decodes base64 holding exactly 32 bytes.
fn decode_key(value: &str) -> Option<[u8; 32]> {
    BASE64.decode(value).ok()?.try_into().ok()
}

/// 24 random bytes, base64: printable and without commas.
fn random_nonce() -> String {
    let mut bytes = [0u8; NONCE_BYTES];
    OsRng.fill_bytes(&mut bytes);
    BASE64.encode(bytes)
}

/// ClientKey and ServerKey, from the salted password.
struct PasswordKeys {
    client_key: [u8; 32],
    server_key: [u8; 32],
}

impl PasswordKeys {
    fn derive(password: &[u8], salt: &[u8], iterations: u32) -> Self {
        // ring's PBKDF2 rather than the generic one: its SHA-256 is assembly, so 600,000
        // rounds stay a fraction of a second in unoptimised (test) builds too. The RFC 7677
        // vectors below check it. Zero rounds cannot be asked for: parsing refuses them.
        let mut salted = [0u8; 32];
        let rounds = std::num::NonZeroU32::new(iterations).unwrap_or(std::num::NonZeroU32::MIN);
        ring::pbkdf2::derive(
            ring::pbkdf2::PBKDF2_HMAC_SHA256,
            rounds,
            salt,
            password,
            &mut salted,
        );
        PasswordKeys {
            client_key: hmac(&salted, &[b"Client Key"]),
            server_key: hmac(&salted, &[b"Server Key"]),
        }
    }
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC takes keys of any length; `new_from_slice` can fail only for fixed-size MACs.
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC accepts any key length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

fn xor(a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
    std::array::from_fn(|i| a[i] ^ b[i])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::User;

    // RFC 7677 section 3.
    const CLIENT_NONCE: &str = "rOprNGfwEbeRWgbNEkqO";
    const SERVER_NONCE: &str = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
    const CLIENT_FIRST: &str = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
    const SERVER_FIRST: &str =
        "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    const CLIENT_FINAL: &str = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
                                p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    const SERVER_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

    fn rfc_credentials() -> ScramCredentials {
        let salt = BASE64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        ScramCredentials::derive("pencil", &salt, 4096)
    }

    fn rfc_server() -> ServerExchange {
        let first = ClientFirst::parse(CLIENT_FIRST).unwrap();
        let (server_first, exchange) =
            ServerExchange::start_with_nonce(&first, &rfc_credentials(), true, SERVER_NONCE);
        assert_eq!(server_first, SERVER_FIRST);
        exchange
    }

    #[test]
    fn rfc7677_client() {
        let client = ClientExchange::with_nonce("user", &"pencil".into(), CLIENT_NONCE).unwrap();
        assert_eq!(client.client_first(), CLIENT_FIRST);
        let (client_final, pending) = client.client_final(SERVER_FIRST).unwrap();
        assert_eq!(client_final, CLIENT_FINAL);
        pending.verify(SERVER_FINAL).unwrap();
    }

    #[test]
    fn rfc7677_server() {
        let first = ClientFirst::parse(CLIENT_FIRST).unwrap();
        assert_eq!((first.user(), first.nonce()), ("user", CLIENT_NONCE));
        assert_eq!(rfc_server().finish(CLIENT_FINAL).unwrap(), SERVER_FINAL);
    }

    #[test]
    fn client_and_server_agree_with_random_nonces() {
        // The RFC minimum: the default count would make this test take seconds unoptimised.
        let credentials = ScramCredentials::generate_with("correct horse", MIN_ITERATIONS);
        let lookup = ScramLookup {
            user: Some(User {
                id: 1,
                name: "a,b=c".into(),
                roles: vec![],
            }),
            credentials,
        };
        let client = ClientExchange::new("a,b=c", &"correct horse".into()).unwrap();
        let first = ClientFirst::parse(&client.client_first()).unwrap();
        assert_eq!(first.user(), "a,b=c");
        let (server_first, server) = ServerExchange::start(&first, &lookup);
        let (client_final, pending) = client.client_final(&server_first).unwrap();
        pending
            .verify(&server.finish(&client_final).unwrap())
            .unwrap();
    }

    #[test]
    fn wrong_password_is_invalid_proof() {
        let client = ClientExchange::with_nonce("user", &"pencil!".into(), CLIENT_NONCE).unwrap();
        let (client_final, _) = client.client_final(SERVER_FIRST).unwrap();
        assert_eq!(
            rfc_server().finish(&client_final),
            Err(ScramError::InvalidProof)
        );
    }

    #[test]
    fn fake_credentials_never_succeed() {
        let first = ClientFirst::parse(CLIENT_FIRST).unwrap();
        // Even a proof made for the very credentials used fails when they are marked fake.
        let (_, exchange) =
            ServerExchange::start_with_nonce(&first, &rfc_credentials(), false, SERVER_NONCE);
        assert_eq!(exchange.finish(CLIENT_FINAL), Err(ScramError::InvalidProof));

        let a = ScramCredentials::fake(b"secret", "nobody");
        let b = ScramCredentials::fake(b"secret", "nobody");
        assert_eq!(a.salt, b.salt, "salt is stable for a name");
        assert_eq!((a.salt.len(), a.iterations), (SALT_LEN, DEFAULT_ITERATIONS));
        assert_ne!(a.stored_key, b.stored_key, "keys are random");
        assert_ne!(a.salt, ScramCredentials::fake(b"other", "nobody").salt);
        assert_ne!(a.salt, ScramCredentials::fake(b"secret", "nobody2").salt);
    }

    #[test]
    fn replayed_final_fails_on_a_new_nonce() {
        let first = ClientFirst::parse(CLIENT_FIRST).unwrap();
        let (_, exchange) =
            ServerExchange::start_with_nonce(&first, &rfc_credentials(), true, "other-nonce");
        assert_eq!(
            exchange.finish(CLIENT_FINAL),
            Err(ScramError::NonceMismatch)
        );
    }

    #[test]
    fn server_signature_is_checked() {
        let client = ClientExchange::with_nonce("user", &"pencil".into(), CLIENT_NONCE).unwrap();
        let (_, pending) = client.client_final(SERVER_FIRST).unwrap();
        let forged = format!("v={}", BASE64.encode([7u8; 32]));
        assert_eq!(
            pending.verify(&forged),
            Err(ScramError::ServerSignatureMismatch)
        );
        let client = ClientExchange::with_nonce("user", &"pencil".into(), CLIENT_NONCE).unwrap();
        let (_, pending) = client.client_final(SERVER_FIRST).unwrap();
        assert_eq!(
            pending.verify("e=invalid-proof"),
            Err(ScramError::ServerError("invalid-proof".into()))
        );
    }

    #[test]
    fn client_refuses_bad_server_first() {
        let attempt = |server_first: &str| {
            ClientExchange::with_nonce("user", &"pencil".into(), CLIENT_NONCE)
                .unwrap()
                .client_final(server_first)
                .map(|(m, _)| m)
        };
        let salt = "s=W22ZaJ0SNY7soEsUEjb6gQ==";
        let nonce = format!("r={CLIENT_NONCE}xyz");
        for (iterations, expected) in [
            ("4095", 4095),
            ("1", 1),
            ("1000001", 1_000_001),
            ("99999999999999999999999", u64::MAX),
        ] {
            assert_eq!(
                attempt(&format!("{nonce},{salt},i={iterations}")),
                Err(ScramError::IterationsOutOfRange(expected))
            );
        }
        // The server must extend the client's nonce, not replace or merely echo it.
        for bad_nonce in ["r=somethingelse", &format!("r={CLIENT_NONCE}")] {
            assert_eq!(
                attempt(&format!("{bad_nonce},{salt},i=4096")),
                Err(ScramError::NonceMismatch)
            );
        }
        assert_eq!(
            attempt(&format!("m=x,{nonce},{salt},i=4096")),
            Err(ScramError::ExtensionsNotSupported)
        );
        for malformed in [
            "",
            &format!("{nonce},{salt}"),
            &format!("{nonce},{salt},i=0"),
            &format!("{nonce},{salt},i=04096"),
            &format!("{nonce},{salt},i=+4096"),
            &format!("{nonce},s=,i=4096"),
            &format!("{nonce},s=!!!,i=4096"),
            &format!("{salt},{nonce},i=4096"),
            &format!("{nonce},{salt},i=4096,"),
            &format!("{nonce},{salt},i=4096,r=again"),
        ] {
            assert!(
                matches!(attempt(malformed), Err(ScramError::Malformed(_))),
                "{malformed:?}"
            );
        }
        // Unknown extensions are ignored.
        assert!(attempt(&format!("{nonce},{salt},i=4096,x=ext")).is_ok());
    }

    #[test]
    fn client_first_grammar() {
        let ok = ClientFirst::parse("n,,n=a=2Cb=3Dc,r=abc,x=ignored").unwrap();
        assert_eq!(ok.user(), "a,b=c");
        assert_eq!(ok.bare, "n=a=2Cb=3Dc,r=abc,x=ignored");
        // 'y' is fine at a server without channel binding; c= must then say "y,,".
        let y = ClientFirst::parse("y,,n=user,r=abc").unwrap();
        assert_eq!(y.gs2_header, "y,,");
        let (_, exchange) = ServerExchange::start_with_nonce(&y, &rfc_credentials(), true, "s");
        assert_eq!(
            exchange.finish(&format!("c=biws,r=abcs,p={}", BASE64.encode([0u8; 32]))),
            Err(ScramError::ChannelBindingsDontMatch)
        );

        let cases: &[(&str, ScramError)] = &[
            (
                "p=tls-unique,,n=user,r=abc",
                ScramError::ChannelBindingNotSupported,
            ),
            ("n,a=admin,n=user,r=abc", ScramError::AuthzidNotSupported),
            ("n,,m=ext,n=user,r=abc", ScramError::ExtensionsNotSupported),
        ];
        for (message, expected) in cases {
            assert_eq!(
                ClientFirst::parse(message).as_ref(),
                Err(expected),
                "{message}"
            );
        }
        for malformed in [
            "",
            "n",
            "n,",
            "n,,",
            "x,,n=user,r=abc",
            "n,b=x,n=user,r=abc",
            "n,,n=,r=abc",
            "n,,n=user",
            "n,,n=user,r=",
            "n,,n=user,r=a b",
            "n,,n=us=er,r=abc",
            "n,,n=us=2cer,r=abc",
            "n,,n=user=2,r=abc",
            "n,,n=us\0er,r=abc",
            "n,,r=abc,n=user",
            "n,,n=user,r=abc,",
            "n,,n=user,r=abc,1=x",
            "n,,n=user,r=abc,x=",
            "n,,n=user,r=abc,r=again",
            "n,,n=user,r=abc,m=late",
            "n,,n=user,r=abcé",
        ] {
            assert!(
                matches!(ClientFirst::parse(malformed), Err(ScramError::Malformed(_))),
                "{malformed:?}"
            );
        }
        let long = format!("n,,n={},r=abc", "u".repeat(MAX_MESSAGE_LEN));
        assert!(matches!(
            ClientFirst::parse(&long),
            Err(ScramError::Malformed(_))
        ));
    }

    #[test]
    fn client_final_grammar() {
        let good_proof = format!("p={}", BASE64.encode([1u8; 32]));
        let nonce = format!("r={CLIENT_NONCE}{SERVER_NONCE}");
        let finish = |m: &str| rfc_server().finish(m);
        assert_eq!(
            finish(&format!("c=eSws,{nonce},{good_proof}")),
            Err(ScramError::ChannelBindingsDontMatch)
        );
        assert_eq!(
            finish(&format!("c=biws,r=x,{good_proof}")),
            Err(ScramError::NonceMismatch)
        );
        // An extension is ignored, but it is part of what the proof signs.
        assert_eq!(
            finish(&format!("c=biws,{nonce},x=1,{good_proof}")),
            Err(ScramError::InvalidProof)
        );
        for malformed in [
            String::new(),
            "c=biws".into(),
            format!("c=biws,{nonce}"),
            format!("{nonce},c=biws,{good_proof}"),
            format!("c=biws,{nonce},p="),
            format!("c=biws,{nonce},p=AAAA"),
            format!("c=biws,{nonce},p={}", BASE64.encode([1u8; 33])),
            format!("c=biws,{nonce},p=not base64 at all!!!!!!!!!!!!!!!!!!!!"),
            format!("c=biws,{nonce},{good_proof},x=after"),
            format!("c=biws,{nonce},,{good_proof}"),
            format!("c=,{nonce},{good_proof}"),
        ] {
            assert!(
                matches!(finish(&malformed), Err(ScramError::Malformed(_))),
                "{malformed:?}"
            );
        }
    }

    #[test]
    fn server_final_grammar() {
        let signature = BASE64.encode([1u8; 32]);
        assert_eq!(
            ServerFinal::parse(&format!("v={signature},x=ext")),
            Ok(ServerFinal::Verifier([1u8; 32]))
        );
        assert_eq!(
            ServerFinal::parse("e=other-error"),
            Ok(ServerFinal::Error("other-error"))
        );
        for malformed in ["", "v=", "e=", "v=AAAA", "x=1", &format!("v={signature},")] {
            assert!(ServerFinal::parse(malformed).is_err(), "{malformed:?}");
        }
    }

    #[test]
    fn saslname_round_trip() {
        for name in ["plain", ",", "=", "=2C", "a,=b", "é,=ü", "==,,"] {
            assert_eq!(decode_saslname(&encode_saslname(name)).unwrap(), name);
        }
        assert_eq!(encode_saslname("a=b,c"), "a=3Db=2Cc");
    }

    #[test]
    fn empty_user_cannot_start() {
        assert_eq!(
            ClientExchange::new("", &"pw".into()).unwrap_err(),
            ScramError::InvalidUsername
        );
    }

    #[test]
    fn nonces_are_printable_and_fresh() {
        let a = random_nonce();
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b','));
        assert_ne!(a, random_nonce());
    }

    #[test]
    fn debug_hides_keys() {
        let shown = format!("{:?}", rfc_credentials());
        assert!(!shown.contains("stored_key"), "{shown}");
        assert!(!format!("{:?}", rfc_server()).contains("key"));
    }
}
