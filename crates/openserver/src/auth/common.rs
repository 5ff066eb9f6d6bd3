//! What the SQLite and PostgreSQL stores share: the rules names, passwords and roles follow,
//! and the password work (argon2id hash plus SCRAM credentials) done before a row is written.
//! Each store keeps only its own SQL.

use super::scram::{ScramCredentials, MAX_ITERATIONS, MIN_ITERATIONS};
use super::{AuthError, PasswordHasher};
use crate::wire::Secret;
use rand::rngs::OsRng;
use rand::RngCore as _;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};

/// Longest accepted user name, in bytes.
const MAX_NAME_BYTES: usize = 256;
/// Longest accepted password, in bytes.
const MAX_PASSWORD_BYTES: usize = 1024;
/// Longest accepted role, in bytes.
const MAX_ROLE_BYTES: usize = 64;

/// Key, in a store's settings table, of the secret behind fake SCRAM salts
/// ([`ScramCredentials::fake`]). Kept in the database so an unknown user's salt stays the same
/// across restarts (and across nodes sharing the database), as a real user's does.
pub(crate) const SCRAM_SECRET_SETTING: &str = "scram_secret";

/// Iterations of the stand-in credentials a store without SCRAM answers with.
pub(crate) const DEFAULT_FAKE_ITERATIONS: u32 = super::scram::DEFAULT_ITERATIONS;

/// Checks a user name against the stores' rules: not empty, at most 256 bytes, no control
/// characters. Lets callers such as the CLI reject a name before asking for a password.
pub fn validate_name(name: &str) -> Result<(), AuthError> {
    let invalid = |reason: &str| {
        Err(AuthError::Invalid {
            field: "user name",
            reason: reason.into(),
        })
    };
    if name.is_empty() {
        return invalid("empty");
    }
    if name.len() > MAX_NAME_BYTES {
        return invalid(&format!("longer than {MAX_NAME_BYTES} bytes"));
    }
    if name.chars().any(char::is_control) {
        return invalid("contains control characters");
    }
    Ok(())
}

/// Checks a password against the stores' rules: not empty, at most 1024 bytes.
pub fn validate_password(password: &Secret) -> Result<(), AuthError> {
    let len = password.expose().len();
    let reason = if len == 0 {
        "empty".to_owned()
    } else if len > MAX_PASSWORD_BYTES {
        format!("longer than {MAX_PASSWORD_BYTES} bytes")
    } else {
        return Ok(());
    };
    Err(AuthError::Invalid {
        field: "password",
        reason,
    })
}

/// Checks roles against the stores' rules: each one not empty, at most 64 bytes, made of
/// ASCII letters, digits, `_`, `.` and `-`.
pub fn validate_roles(roles: &[String]) -> Result<(), AuthError> {
    for role in roles {
        let reason = if role.is_empty() {
            "empty role".to_owned()
        } else if role.len() > MAX_ROLE_BYTES {
            format!("role longer than {MAX_ROLE_BYTES} bytes")
        } else if !role
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        {
            format!("role {role:?} may only hold A-Z, a-z, 0-9, '_', '.' and '-'")
        } else {
            continue;
        };
        return Err(AuthError::Invalid {
            field: "role",
            reason,
        });
    }
    Ok(())
}

/// Validates, sorts and dedups roles, the form they are stored and read back in.
pub(crate) fn normalize_roles(roles: &[String]) -> Result<Vec<String>, AuthError> {
    validate_roles(roles)?;
    let mut roles = roles.to_vec();
    roles.sort();
    roles.dedup();
    Ok(roles)
}

/// [`AuthError::Invalid`] for a SCRAM iteration count outside what clients accept.
pub(crate) fn check_scram_iterations(iterations: u32) -> Result<u32, AuthError> {
    if !(MIN_ITERATIONS..=MAX_ITERATIONS).contains(&iterations) {
        return Err(AuthError::Invalid {
            field: "SCRAM iterations",
            reason: format!(
                "{iterations} is outside {MIN_ITERATIONS}..={MAX_ITERATIONS}, the range \
                 clients accept"
            ),
        });
    }
    Ok(iterations)
}

/// The argon2 hash and (with `scram_iterations`) the SCRAM credentials of `password`, in one
/// job on the hasher's blocking pool.
pub(crate) async fn hash_password(
    hasher: &PasswordHasher,
    scram_iterations: Option<u32>,
    password: &Secret,
) -> Result<(String, Option<ScramCredentials>), AuthError> {
    let worker = hasher.clone();
    let password = password.clone();
    hasher
        .run_limited(move || {
            let hash = worker.hash_blocking(password.expose())?;
            let scram =
                scram_iterations.map(|i| ScramCredentials::generate_with(password.expose(), i));
            Ok((hash, scram))
        })
        .await
}

/// SCRAM credentials at `iterations` for `password`, if it still matches the stored argon2
/// `hash` (a password changed meanwhile, here or on another node, gets none), in one job on
/// the hasher's blocking pool.
pub(crate) async fn derive_if_current(
    hasher: &PasswordHasher,
    hash: String,
    password: &Secret,
    iterations: u32,
) -> Result<Option<ScramCredentials>, AuthError> {
    let worker = hasher.clone();
    let password = password.clone();
    hasher
        .run_limited(move || {
            if !worker.verify_blocking(Some(&hash), password.expose())? {
                return Ok(None);
            }
            Ok(Some(ScramCredentials::generate_with(
                password.expose(),
                iterations,
            )))
        })
        .await
}

/// SCRAM credentials from the four columns a store keeps them in: `None` when all four are
/// empty (not derived yet), an error when only some are or they do not make sense.
pub(crate) fn scram_from_columns(
    id: i32,
    salt: Option<Vec<u8>>,
    iterations: Option<i64>,
    stored_key: Option<Vec<u8>>,
    server_key: Option<Vec<u8>>,
) -> Result<Option<ScramCredentials>, AuthError> {
    match (salt, iterations, stored_key, server_key) {
        (None, None, None, None) => Ok(None),
        (Some(salt), Some(iterations), Some(stored_key), Some(server_key)) => {
            let corrupt =
                || AuthError::Store(format!("SCRAM credentials of user {id} are invalid"));
            Ok(Some(ScramCredentials {
                iterations: u32::try_from(iterations)
                    .ok()
                    .filter(|i| *i > 0)
                    .ok_or_else(corrupt)?,
                stored_key: stored_key.try_into().map_err(|_| corrupt())?,
                server_key: server_key.try_into().map_err(|_| corrupt())?,
                salt: Some(salt).filter(|s| !s.is_empty()).ok_or_else(corrupt)?,
            }))
        }
        _ => Err(AuthError::Store(format!(
            "SCRAM credentials of user {id} are incomplete"
        ))),
    }
}

/// A fresh secret for fake SCRAM salts, for a store that has none yet.
pub(crate) fn new_scram_secret() -> [u8; 32] {
    let mut secret = [0u8; 32];
    OsRng.fill_bytes(&mut secret);
    secret
}

/// The stored fake-salt secret, checked for length.
pub(crate) fn scram_secret_from(value: Vec<u8>) -> Result<[u8; 32], AuthError> {
    value
        .try_into()
        .map_err(|_| AuthError::Store("stored SCRAM secret is not 32 bytes".into()))
}

/// User ids go on the wire as i32; refuse rather than truncate.
pub(crate) fn user_id(raw: i64) -> Result<i32, AuthError> {
    i32::try_from(raw).map_err(|_| AuthError::Store(format!("user id {raw} does not fit in i32")))
}

/// Users whose SCRAM credentials a login of this process is deriving now. A crowd of first
/// logins of one user (a fleet reconnecting after an upgrade) derives them once, not once per
/// login: each derivation is a full PBKDF2 run. Holds no credentials, only who is in flight,
/// so it can never keep a changed or deleted user logging in.
#[derive(Clone, Default)]
pub(crate) struct DerivingSet(Arc<Mutex<HashSet<i32>>>);

impl DerivingSet {
    /// Claims `id`, unless another login holds it.
    pub(crate) fn claim(&self, id: i32) -> Option<Deriving> {
        let fresh = self.0.lock().unwrap_or_else(|e| e.into_inner()).insert(id);
        fresh.then(|| Deriving {
            set: self.clone(),
            id,
        })
    }

    /// Whether no login holds a claim (tests).
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).is_empty()
    }
}

/// A user's place in a [`DerivingSet`], given back on drop.
pub(crate) struct Deriving {
    set: DerivingSet,
    id: i32,
}

impl Drop for Deriving {
    fn drop(&mut self) {
        self.set
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
    }
}

/// Logs the outcome of a SCRAM refresh at login and turns it into "stored or not": failing
/// only costs the user SCRAM for now, so it is logged, not returned.
pub(crate) fn log_refresh(id: i32, iterations: u32, outcome: Result<bool, AuthError>) -> bool {
    match outcome {
        Ok(true) => {
            tracing::info!(
                user_id = id,
                iterations,
                "stored SCRAM credentials at password login"
            );
            true
        }
        Ok(false) => false,
        Err(e) => {
            tracing::warn!(user_id = id, error = %e, "cannot store SCRAM credentials");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scram_columns_all_or_nothing() {
        assert_eq!(scram_from_columns(1, None, None, None, None).unwrap(), None);
        assert!(scram_from_columns(1, Some(vec![1]), None, None, None).is_err());
        assert!(
            scram_from_columns(
                1,
                Some(vec![1]),
                Some(0),
                Some(vec![0; 32]),
                Some(vec![0; 32])
            )
            .is_err(),
            "zero iterations"
        );
        assert!(
            scram_from_columns(
                1,
                Some(vec![1]),
                Some(4096),
                Some(vec![0; 31]),
                Some(vec![0; 32])
            )
            .is_err(),
            "short key"
        );
        let ok = scram_from_columns(
            1,
            Some(vec![1]),
            Some(4096),
            Some(vec![2; 32]),
            Some(vec![3; 32]),
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            (ok.iterations, ok.stored_key[0], ok.server_key[0]),
            (4096, 2, 3)
        );
    }

    #[test]
    fn a_claim_is_given_back() {
        let set = DerivingSet::default();
        let first = set.claim(7).unwrap();
        assert!(set.claim(7).is_none());
        assert!(set.claim(8).is_some());
        drop(first);
        assert!(set.claim(7).is_some());
        assert!(set.is_empty());
    }
}
