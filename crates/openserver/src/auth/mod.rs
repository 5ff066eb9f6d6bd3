//! Authentication: the user store behind the password protocols.
//!
//! - [`UserStore`]: the trait the auth protocols check credentials against. Implement it to
//!   plug in your own user database.
//! - [`SqliteUserStore`]: the default store, a SQLite file with argon2id hashes.
//! - [`PostgresUserStore`]: the same store in PostgreSQL, for several servers that share
//!   their users.
//! - [`validate_name`], [`validate_password`], [`validate_roles`]: the rules both stores
//!   hold names, passwords and roles to (`common.rs` also holds the password work they share).
//! - [`PasswordHasher`]: argon2id hashing off the async threads, with bounded concurrency, and
//!   a dummy verification for unknown users so they cost the same time as a wrong password.
//! - [`scram`]: SCRAM-SHA-256, the login that never sends the password, and the
//!   [`ScramCredentials`] a store keeps for it.
//! - [`token`]: logins with the application's signed tokens (JWT), and resume tokens.

mod common;
mod hasher;
mod postgres;
mod postgres_tls;
pub mod scram;
mod sqlite;
pub mod token;

pub use common::{validate_name, validate_password, validate_roles};
pub use hasher::{HashParams, PasswordHasher};
pub use postgres::{redact_url, PostgresOptions, PostgresUserStore};
pub use sqlite::SqliteUserStore;

use crate::wire::Secret;
use async_trait::async_trait;
use scram::ScramCredentials;

/// An authenticated identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Numeric id, stable for the user's lifetime; DatabaseAuth sends it to the client.
    pub id: i32,
    /// Login name, unique in the store.
    pub name: String,
    /// Roles granted to the user (for example `admin`); protocols may require one.
    pub roles: Vec<String>,
}

impl User {
    /// Whether the user holds `role`.
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }
}

/// Why a store could not answer. A wrong password or an unknown user is not an error: those
/// are `Ok(None)` from [`UserStore::verify_password`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// The backing database failed.
    #[error("user store: {0}")]
    Store(String),
    /// Hashing failed or its worker was cancelled.
    #[error("password hashing: {0}")]
    Hash(String),
    /// The user name is taken (when adding a user).
    #[error("user {0:?} already exists")]
    UserExists(String),
    /// No such user (for administrative calls; logins never reveal this).
    #[error("no user named {0:?}")]
    NoSuchUser(String),
    /// A name, password or role that the store does not accept.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// Which input was rejected.
        field: &'static str,
        /// Why.
        reason: String,
    },
}

/// Where the password protocols check credentials.
///
/// Implementations must make an unknown user indistinguishable from a wrong password, in the
/// answer and in the time it takes.
#[async_trait]
pub trait UserStore: Send + Sync + 'static {
    /// Checks `password` for the user `name`: `Ok(Some(user))` if it matches, `Ok(None)` for any
    /// denial (unknown user, wrong password), `Err` only when the store itself failed.
    async fn verify_password(
        &self,
        name: &str,
        password: &Secret,
    ) -> Result<Option<User>, AuthError>;

    /// Called once a password login of `user` was accepted and the session authenticated,
    /// with the password it used. Never called for a denied login (a penalised source's right
    /// password included): anything a store does here (the SQLite store fills in missing
    /// SCRAM credentials) must not be observable to a guesser. The default does nothing.
    async fn login_accepted(&self, user: &User, password: &Secret) {
        let _ = (user, password);
    }

    /// The user named `name`, without checking any credential: for logins whose proof is
    /// elsewhere (a verified client certificate). `Ok(None)` if there is no such user.
    async fn find_user(&self, name: &str) -> Result<Option<User>, AuthError>;

    /// The SCRAM-SHA-256 credentials of `name`, for the ScramAuth login. Never `Ok` with
    /// nothing: an unknown user, or one without SCRAM credentials, gets `user: None` and fake
    /// credentials ([`ScramCredentials::fake`]), so that the exchange looks the same and fails
    /// like a wrong password. `Err` only when the store itself failed.
    ///
    /// The default answers every name with fake credentials (salted with a per-process secret):
    /// a store that keeps no SCRAM credentials simply denies every SCRAM login.
    async fn scram_lookup(&self, name: &str) -> Result<ScramLookup, AuthError> {
        Ok(ScramLookup {
            user: None,
            credentials: ScramCredentials::fake(scram::process_secret(), name),
        })
    }
}

/// What [`UserStore::scram_lookup`] found for a name.
#[derive(Debug, Clone)]
pub struct ScramLookup {
    /// The user, if it exists and has SCRAM credentials; `None` makes every proof fail.
    pub user: Option<User>,
    /// The user's credentials, or fake ones when `user` is `None`.
    pub credentials: ScramCredentials,
}
