//! [`SqliteUserStore`]: users in a SQLite file, passwords stored as argon2id PHC strings and,
//! while SCRAM is enabled on the store, as SCRAM-SHA-256 credentials.

use super::common::{
    self, normalize_roles, user_id, DerivingSet, DEFAULT_FAKE_ITERATIONS, SCRAM_SECRET_SETTING,
};
use super::scram::ScramCredentials;
use super::{AuthError, PasswordHasher, ScramLookup, User, UserStore};
use crate::wire::Secret;
use async_trait::async_trait;
use rusqlite::{params, Connection, ErrorCode, OptionalExtension, TransactionBehavior};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;

/// File name of the user database inside the server's data directory.
pub const USERS_DB_FILE: &str = "users.db";

/// How long to wait for another process (say the CLI while the server runs) to release a lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Schema migrations; entry `i` takes `PRAGMA user_version` from `i` to `i + 1`. Append only.
const MIGRATIONS: &[&str] = &[
    // 1: users and their roles. AUTOINCREMENT so a deleted user's id is never handed out
    // again (clients may have kept it).
    "CREATE TABLE users (
         id INTEGER PRIMARY KEY AUTOINCREMENT,
         name TEXT NOT NULL UNIQUE,
         password_hash TEXT NOT NULL,
         created_at INTEGER NOT NULL DEFAULT (unixepoch())
     );
     CREATE TABLE user_roles (
         user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
         role TEXT NOT NULL,
         PRIMARY KEY (user_id, role)
     ) WITHOUT ROWID;",
    // 2: SCRAM-SHA-256 credentials, all four NULL for users whose password was set before
    // (filled at their next password login or password change); store-wide settings, such as
    // the secret that salts fake SCRAM exchanges for unknown users.
    "ALTER TABLE users ADD COLUMN scram_salt BLOB;
     ALTER TABLE users ADD COLUMN scram_iterations INTEGER;
     ALTER TABLE users ADD COLUMN scram_stored_key BLOB;
     ALTER TABLE users ADD COLUMN scram_server_key BLOB;
     CREATE TABLE settings (
         name TEXT PRIMARY KEY,
         value BLOB NOT NULL
     ) WITHOUT ROWID;",
];

/// The schema version this code writes and understands.
const SCHEMA_VERSION: usize = MIGRATIONS.len();

/// A [`UserStore`] in a SQLite database file, with argon2id password hashes.
///
/// Cheap to clone: clones share the connection. Database calls from the async methods run on
/// tokio's blocking pool; hashing goes through the [`PasswordHasher`] and its concurrency limit.
/// User names are case-sensitive.
///
/// SCRAM-SHA-256 credentials (for the ScramAuth login) are kept only once
/// [`with_scram`](Self::with_scram) turns them on, and should be only while the server offers
/// ScramAuth: they are a PBKDF2 verifier, so a stolen database can be guessed against at
/// PBKDF2's cost rather than argon2id's. With SCRAM on, adding a user or setting a password
/// also stores them; a user who has none (password set while SCRAM was off, or by a version
/// without SCRAM) or has them at another iteration count gets new ones at their next accepted
/// password login (DatabaseAuth or WinAuth, [`UserStore::login_accepted`]), or when their
/// password is set again; until then their SCRAM logins are denied. With SCRAM off, setting a
/// password clears them, and [`drop_scram_credentials`](Self::drop_scram_credentials) clears
/// everyone's.
#[derive(Clone)]
pub struct SqliteUserStore {
    conn: Arc<Mutex<Connection>>,
    /// One query at a time goes to the blocking pool: the connection serves one at a time
    /// anyway, and a burst of logins must not park a blocking thread per login on its lock.
    turn: Arc<Semaphore>,
    hasher: PasswordHasher,
    /// Salts fake SCRAM exchanges; persisted in `settings`.
    scram_secret: [u8; 32],
    /// PBKDF2 iterations of new SCRAM credentials; `None`: SCRAM credentials are not kept.
    scram_iterations: Option<u32>,
    /// Users whose SCRAM credentials a login is deriving now ([`DerivingSet`]).
    deriving: DerivingSet,
}

impl SqliteUserStore {
    /// Opens the store at `path`, creating the file and its schema if missing and upgrading an
    /// older schema. The parent directory must exist. On Unix a new file is readable by its
    /// owner only, since it holds password hashes.
    pub fn open(path: impl AsRef<Path>, hasher: PasswordHasher) -> Result<Self, AuthError> {
        let path = path.as_ref();
        let cannot = |e: &dyn fmt::Display| {
            AuthError::Store(format!("cannot open user database {}: {e}", path.display()))
        };
        create_private(path).map_err(|e| cannot(&e))?;
        let conn = Connection::open(path).map_err(|e| cannot(&e))?;
        Self::init(conn, hasher).map_err(|e| match e {
            AuthError::Store(msg) => cannot(&msg),
            other => other,
        })
    }

    /// A store that lives in memory only, for tests.
    pub fn open_in_memory(hasher: PasswordHasher) -> Result<Self, AuthError> {
        Self::init(Connection::open_in_memory().map_err(db)?, hasher)
    }

    /// Where the store lives inside the data directory `data_dir`.
    pub fn default_path(data_dir: impl AsRef<Path>) -> PathBuf {
        data_dir.as_ref().join(USERS_DB_FILE)
    }

    fn init(mut conn: Connection, hasher: PasswordHasher) -> Result<Self, AuthError> {
        conn.busy_timeout(BUSY_TIMEOUT).map_err(db)?;
        // Off by default in SQLite, and per connection; role rows rely on the cascade.
        conn.pragma_update(None, "foreign_keys", true).map_err(db)?;
        migrate(&mut conn)?;
        let scram_secret = load_or_create_scram_secret(&conn)?;
        Ok(SqliteUserStore {
            conn: Arc::new(Mutex::new(conn)),
            turn: Arc::new(Semaphore::new(1)),
            hasher,
            scram_secret,
            scram_iterations: None,
            deriving: DerivingSet::default(),
        })
    }

    /// Keeps SCRAM-SHA-256 credentials, derived with `iterations` rounds of PBKDF2 (the CLI's
    /// default: [`scram::DEFAULT_ITERATIONS`](super::scram::DEFAULT_ITERATIONS)), for the
    /// ScramAuth login. Without this call the store keeps none and every SCRAM login is
    /// denied. [`AuthError::Invalid`] outside [`MIN_ITERATIONS`]..=[`MAX_ITERATIONS`], which
    /// clients refuse.
    ///
    /// [`MIN_ITERATIONS`]: super::scram::MIN_ITERATIONS
    /// [`MAX_ITERATIONS`]: super::scram::MAX_ITERATIONS
    pub fn with_scram(mut self, iterations: u32) -> Result<Self, AuthError> {
        common::check_scram_iterations(iterations)?;
        self.scram_iterations = Some(iterations);
        Ok(self)
    }

    /// The PBKDF2 iterations of new SCRAM credentials, if the store keeps them.
    pub fn scram_iterations(&self) -> Option<u32> {
        self.scram_iterations
    }

    /// Deletes every user's SCRAM credentials, for a server that no longer offers ScramAuth:
    /// a stolen database then holds argon2id hashes only. Returns how many users had some.
    pub async fn drop_scram_credentials(&self) -> Result<u64, AuthError> {
        self.with_conn(|conn| {
            let n = conn
                .execute(
                    "UPDATE users SET scram_salt = NULL, scram_iterations = NULL,
                                      scram_stored_key = NULL, scram_server_key = NULL
                     WHERE scram_stored_key IS NOT NULL OR scram_salt IS NOT NULL",
                    [],
                )
                .map_err(db)?;
            Ok(n as u64)
        })
        .await
    }

    /// Adds a user; [`AuthError::UserExists`] if the name is taken. Duplicate roles are
    /// dropped; the returned user lists its roles sorted, as later reads do.
    pub async fn add_user(
        &self,
        name: &str,
        password: &Secret,
        roles: &[String],
    ) -> Result<User, AuthError> {
        common::validate_name(name)?;
        common::validate_password(password)?;
        let roles = normalize_roles(roles)?;
        let (hash, scram) =
            common::hash_password(&self.hasher, self.scram_iterations, password).await?;
        let name = name.to_owned();
        self.with_conn(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(db)?;
            let inserted = tx.execute(
                "INSERT INTO users (name, password_hash, scram_salt, scram_iterations,
                                    scram_stored_key, scram_server_key)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    name,
                    hash,
                    scram.as_ref().map(|c| c.salt.clone()),
                    scram.as_ref().map(|c| c.iterations),
                    scram.as_ref().map(|c| c.stored_key),
                    scram.as_ref().map(|c| c.server_key)
                ],
            );
            match inserted {
                Err(e) if is_unique_violation(&e) => return Err(AuthError::UserExists(name)),
                other => other.map_err(db)?,
            };
            // Ids go on the wire as i32; refuse rather than truncate.
            let id = i32::try_from(tx.last_insert_rowid())
                .map_err(|_| AuthError::Store("user ids exhausted (past i32::MAX)".into()))?;
            insert_roles(&tx, id, &roles)?;
            tx.commit().map_err(db)?;
            Ok(User { id, name, roles })
        })
        .await
    }

    /// Deletes a user and their roles; [`AuthError::NoSuchUser`] if absent.
    pub async fn delete_user(&self, name: &str) -> Result<(), AuthError> {
        let name = name.to_owned();
        self.with_conn(move |conn| {
            let deleted = conn
                .execute("DELETE FROM users WHERE name = ?1", [&name])
                .map_err(db)?;
            if deleted == 0 {
                return Err(AuthError::NoSuchUser(name));
            }
            Ok(())
        })
        .await
    }

    /// Replaces a user's password; [`AuthError::NoSuchUser`] if absent. Its SCRAM credentials
    /// are replaced too, or cleared while the store keeps none.
    pub async fn set_password(&self, name: &str, password: &Secret) -> Result<(), AuthError> {
        common::validate_password(password)?;
        let (hash, scram) =
            common::hash_password(&self.hasher, self.scram_iterations, password).await?;
        let name = name.to_owned();
        self.with_conn(move |conn| {
            let updated = conn
                .execute(
                    "UPDATE users SET password_hash = ?1, scram_salt = ?2, scram_iterations = ?3,
                                      scram_stored_key = ?4, scram_server_key = ?5
                     WHERE name = ?6",
                    params![
                        hash,
                        scram.as_ref().map(|c| c.salt.clone()),
                        scram.as_ref().map(|c| c.iterations),
                        scram.as_ref().map(|c| c.stored_key),
                        scram.as_ref().map(|c| c.server_key),
                        name
                    ],
                )
                .map_err(db)?;
            if updated == 0 {
                return Err(AuthError::NoSuchUser(name));
            }
            Ok(())
        })
        .await
    }

    /// Replaces a user's roles (an empty list removes them all); [`AuthError::NoSuchUser`] if
    /// absent.
    pub async fn set_roles(&self, name: &str, roles: &[String]) -> Result<(), AuthError> {
        let roles = normalize_roles(roles)?;
        let name = name.to_owned();
        self.with_conn(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(db)?;
            let Some((id, _)) = find_user(&tx, &name)? else {
                return Err(AuthError::NoSuchUser(name));
            };
            tx.execute("DELETE FROM user_roles WHERE user_id = ?1", [id])
                .map_err(db)?;
            insert_roles(&tx, id, &roles)?;
            tx.commit().map_err(db)
        })
        .await
    }

    /// All users, sorted by name (byte order), each with sorted roles.
    pub async fn list_users(&self) -> Result<Vec<User>, AuthError> {
        self.with_conn(|conn| {
            let mut stmt = conn
                .prepare(
                    "SELECT u.id, u.name, r.role FROM users u
                     LEFT JOIN user_roles r ON r.user_id = u.id
                     ORDER BY u.name, r.role",
                )
                .map_err(db)?;
            let mut rows = stmt.query([]).map_err(db)?;
            let mut users: Vec<User> = Vec::new();
            while let Some(row) = rows.next().map_err(db)? {
                let id = user_id(row.get(0).map_err(db)?)?;
                let role: Option<String> = row.get(2).map_err(db)?;
                // Rows of one user are adjacent: names are unique and sorted.
                let user = match users.last_mut() {
                    Some(last) if last.id == id => last,
                    _ => {
                        users.push(User {
                            id,
                            name: row.get(1).map_err(db)?,
                            roles: Vec::new(),
                        });
                        users.last_mut().ok_or_else(|| {
                            AuthError::Store("internal: user list empty after push".into())
                        })?
                    }
                };
                user.roles.extend(role);
            }
            Ok(users)
        })
        .await
    }

    /// The user called `name`, if any.
    pub async fn get_user(&self, name: &str) -> Result<Option<User>, AuthError> {
        let name = name.to_owned();
        self.with_conn(move |conn| {
            let Some((id, _)) = find_user(conn, &name)? else {
                return Ok(None);
            };
            Ok(Some(User {
                id,
                roles: load_roles(conn, id)?,
                name,
            }))
        })
        .await
    }

    /// How many users the store holds.
    pub async fn user_count(&self) -> Result<u64, AuthError> {
        self.with_conn(|conn| {
            let n: i64 = conn
                .query_row("SELECT COUNT(*) FROM users", [], |row| row.get(0))
                .map_err(db)?;
            u64::try_from(n).map_err(|_| AuthError::Store(format!("negative user count {n}")))
        })
        .await
    }

    /// Checks a user name against the store's rules ([`auth::validate_name`]).
    ///
    /// [`auth::validate_name`]: super::validate_name
    pub fn validate_name(name: &str) -> Result<(), AuthError> {
        common::validate_name(name)
    }

    /// Checks a password against the store's rules ([`auth::validate_password`]).
    ///
    /// [`auth::validate_password`]: super::validate_password
    pub fn validate_password(password: &Secret) -> Result<(), AuthError> {
        common::validate_password(password)
    }

    /// Checks roles against the store's rules ([`auth::validate_roles`]).
    ///
    /// [`auth::validate_roles`]: super::validate_roles
    pub fn validate_roles(roles: &[String]) -> Result<(), AuthError> {
        common::validate_roles(roles)
    }

    /// Stores SCRAM credentials at `iterations` for `user`, whose login with `password` was
    /// just accepted, if they have none or have them at another count. The password is
    /// checked against the stored hash once more first, so credentials are never made from a
    /// password changed meanwhile. Failure only costs the user SCRAM for now, so it is
    /// logged, not returned. Whether credentials were stored is returned for tests. While
    /// another login of the same user derives them, this one leaves it to that one.
    async fn refresh_scram(&self, user: &User, password: &Secret, iterations: u32) -> bool {
        let id = user.id;
        let Some(_claim) = self.deriving.claim(id) else {
            return false;
        };
        let stored = async {
            let found = self
                .with_conn(move |conn| {
                    let row: Option<(String, Option<i64>)> = conn
                        .query_row(
                            "SELECT password_hash, scram_iterations FROM users WHERE id = ?1",
                            [id],
                            |row| Ok((row.get(0)?, row.get(1)?)),
                        )
                        .optional()
                        .map_err(db)?;
                    Ok(row)
                })
                .await?;
            let Some((hash, current)) = found else {
                return Ok(false);
            };
            if current == Some(i64::from(iterations)) {
                return Ok(false);
            }
            let scram =
                common::derive_if_current(&self.hasher, hash.clone(), password, iterations).await?;
            let Some(scram) = scram else {
                return Ok(false);
            };
            self.with_conn(move |conn| {
                conn.execute(
                    "UPDATE users SET scram_salt = ?1, scram_iterations = ?2,
                                      scram_stored_key = ?3, scram_server_key = ?4
                     WHERE id = ?5 AND password_hash = ?6",
                    params![
                        scram.salt,
                        scram.iterations,
                        scram.stored_key,
                        scram.server_key,
                        id,
                        hash
                    ],
                )
                .map(|n| n > 0)
                .map_err(db)
            })
            .await
        };
        common::log_refresh(id, iterations, stored.await)
    }

    /// Runs `f` with the connection on the blocking pool.
    async fn with_conn<T, F>(&self, f: F) -> Result<T, AuthError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, AuthError> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        // Held by the job, not by this future: released when the query ends even if the
        // caller stopped waiting for it.
        let turn = Arc::clone(&self.turn)
            .acquire_owned()
            .await
            .map_err(|_| AuthError::Store("database closed".into()))?;
        tokio::task::spawn_blocking(move || {
            let _turn = turn;
            // A panic while holding the lock may have left a transaction half done; SQLite rolls
            // it back when the Transaction drops, but refuse to guess and report it.
            let mut conn = conn
                .lock()
                .map_err(|_| AuthError::Store("database connection poisoned by a panic".into()))?;
            f(&mut conn)
        })
        .await
        .map_err(|e| AuthError::Store(format!("database task failed: {e}")))?
    }
}

impl fmt::Debug for SqliteUserStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteUserStore")
            .field("hasher", &self.hasher)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl UserStore for SqliteUserStore {
    async fn verify_password(
        &self,
        name: &str,
        password: &Secret,
    ) -> Result<Option<User>, AuthError> {
        let owned = name.to_owned();
        let found = self.with_conn(move |conn| find_user(conn, &owned)).await?;
        // Unknown users and wrong passwords do the same work: one lookup, one argon2 check.
        // Nothing is written here, whatever the outcome: the caller may still deny the login
        // (a penalised source), and a write would show a guesser the guess was right.
        let (id, hash) = found.unzip();
        let ok = self
            .hasher
            .verify(hash.as_deref(), password.expose())
            .await?;
        let Some(id) = id.filter(|_| ok) else {
            return Ok(None);
        };
        let roles = self.with_conn(move |conn| load_roles(conn, id)).await?;
        Ok(Some(User {
            id,
            name: name.to_owned(),
            roles,
        }))
    }

    async fn find_user(&self, name: &str) -> Result<Option<User>, AuthError> {
        self.get_user(name).await
    }

    async fn login_accepted(&self, user: &User, password: &Secret) {
        if let Some(iterations) = self.scram_iterations {
            let _stored = self.refresh_scram(user, password, iterations).await;
        }
    }

    async fn scram_lookup(&self, name: &str) -> Result<ScramLookup, AuthError> {
        let name = name.to_owned();
        let secret = self.scram_secret;
        let Some(iterations) = self.scram_iterations else {
            // SCRAM is off on this store: whatever may still be stored is not used.
            return Ok(ScramLookup {
                user: None,
                credentials: ScramCredentials::fake_with(&secret, &name, DEFAULT_FAKE_ITERATIONS),
            });
        };
        self.with_conn(move |conn| {
            let (id, credentials) = match find_scram(conn, &name)? {
                Some((id, Some(credentials))) => (id, credentials),
                found => {
                    if found.is_some() {
                        tracing::debug!(user = %name, "user has no SCRAM credentials yet");
                    }
                    // The roles query a real user costs too (id 0 is never assigned), so the
                    // answer takes as long either way.
                    load_roles(conn, found.map_or(0, |(id, _)| id))?;
                    // The iteration count real users get, so it does not tell them apart.
                    return Ok(ScramLookup {
                        user: None,
                        credentials: ScramCredentials::fake_with(&secret, &name, iterations),
                    });
                }
            };
            let roles = load_roles(conn, id)?;
            Ok(ScramLookup {
                user: Some(User { id, name, roles }),
                credentials,
            })
        })
        .await
    }
}

/// Maps a database error to the store error.
fn db(e: rusqlite::Error) -> AuthError {
    AuthError::Store(e.to_string())
}

fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if f.code == ErrorCode::ConstraintViolation
            && f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE)
}

/// The id and password hash of the user `name`.
fn find_user(conn: &Connection, name: &str) -> Result<Option<(i32, String)>, AuthError> {
    let found: Option<(i64, String)> = conn
        .query_row(
            "SELECT id, password_hash FROM users WHERE name = ?1",
            [name],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .optional()
        .map_err(db)?;
    found.map(|(id, hash)| Ok((user_id(id)?, hash))).transpose()
}

/// The id and SCRAM credentials (`None` if not stored yet) of the user `name`.
#[allow(clippy::type_complexity)] // Row columns, read once here.
fn find_scram(
    conn: &Connection,
    name: &str,
) -> Result<Option<(i32, Option<ScramCredentials>)>, AuthError> {
    type Row = (
        i64,
        Option<Vec<u8>>,
        Option<i64>,
        Option<Vec<u8>>,
        Option<Vec<u8>>,
    );
    let found: Option<Row> = conn
        .query_row(
            "SELECT id, scram_salt, scram_iterations, scram_stored_key, scram_server_key
             FROM users WHERE name = ?1",
            [name],
            |row| {
                Ok((
                    row.get(0)?,
                    row.get(1)?,
                    row.get(2)?,
                    row.get(3)?,
                    row.get(4)?,
                ))
            },
        )
        .optional()
        .map_err(db)?;
    let Some((id, salt, iterations, stored_key, server_key)) = found else {
        return Ok(None);
    };
    let id = user_id(id)?;
    let credentials = common::scram_from_columns(id, salt, iterations, stored_key, server_key)?;
    Ok(Some((id, credentials)))
}

/// The store's secret for fake SCRAM salts, created on first open of a store without one.
/// Read before written, so opening a read-only database that has one works.
fn load_or_create_scram_secret(conn: &Connection) -> Result<[u8; 32], AuthError> {
    let read = || -> Result<Option<Vec<u8>>, AuthError> {
        conn.query_row(
            "SELECT value FROM settings WHERE name = ?1",
            [SCRAM_SECRET_SETTING],
            |row| row.get(0),
        )
        .optional()
        .map_err(db)
    };
    let value = match read()? {
        Some(value) => value,
        None => {
            let secret = common::new_scram_secret();
            // OR IGNORE: another process may have created it since the read; theirs wins.
            conn.execute(
                "INSERT OR IGNORE INTO settings (name, value) VALUES (?1, ?2)",
                params![SCRAM_SECRET_SETTING, secret],
            )
            .map_err(db)?;
            read()?.ok_or_else(|| AuthError::Store("SCRAM secret vanished".into()))?
        }
    };
    common::scram_secret_from(value)
}

fn load_roles(conn: &Connection, id: i32) -> Result<Vec<String>, AuthError> {
    let mut stmt = conn
        .prepare_cached("SELECT role FROM user_roles WHERE user_id = ?1 ORDER BY role")
        .map_err(db)?;
    let roles = stmt
        .query_map([id], |row| row.get(0))
        .map_err(db)?
        .collect::<Result<Vec<String>, _>>()
        .map_err(db)?;
    Ok(roles)
}

fn insert_roles(conn: &Connection, id: i32, roles: &[String]) -> Result<(), AuthError> {
    let mut stmt = conn
        .prepare_cached("INSERT INTO user_roles (user_id, role) VALUES (?1, ?2)")
        .map_err(db)?;
    for role in roles {
        stmt.execute(params![id, role]).map_err(db)?;
    }
    Ok(())
}

/// Brings the schema up to [`SCHEMA_VERSION`], in one transaction.
fn migrate(conn: &mut Connection) -> Result<(), AuthError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db)?;
    let version: i64 = tx
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(db)?;
    let version = usize::try_from(version)
        .ok()
        .filter(|v| *v <= SCHEMA_VERSION)
        .ok_or_else(|| {
            AuthError::Store(format!(
                "schema version {version} is not one this program knows (up to {SCHEMA_VERSION}); \
                 written by a newer version?"
            ))
        })?;
    if version == SCHEMA_VERSION {
        return Ok(());
    }
    for sql in &MIGRATIONS[version..] {
        tx.execute_batch(sql).map_err(db)?;
    }
    // PRAGMA takes no bound parameters; the value is our own constant.
    tx.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION}"))
        .map_err(db)?;
    tx.commit().map_err(db)
}

/// Creates `path` empty with owner-only permissions if it does not exist, so SQLite (which
/// gives its journal files the database file's mode) never exposes the hashes to others.
#[cfg(unix)]
fn create_private(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(not(unix))]
fn create_private(_path: &Path) -> std::io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::HashParams;

    fn hasher() -> PasswordHasher {
        PasswordHasher::new(HashParams {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
            max_concurrent: 4,
        })
        .unwrap()
    }

    fn roles(r: &[&str]) -> Vec<String> {
        r.iter().map(|s| s.to_string()).collect()
    }

    fn pw(s: &str) -> Secret {
        Secret::new(s)
    }

    #[tokio::test]
    async fn add_get_list_delete() {
        let store = SqliteUserStore::open_in_memory(hasher()).unwrap();
        assert_eq!(store.user_count().await.unwrap(), 0);
        assert!(store.list_users().await.unwrap().is_empty());

        let bob = store
            .add_user("bob", &pw("b"), &roles(&["ops", "admin", "ops"]))
            .await
            .unwrap();
        assert_eq!(bob.roles, roles(&["admin", "ops"]));
        let alice = store.add_user("alice", &pw("a"), &[]).await.unwrap();
        assert_ne!(alice.id, bob.id);
        assert_eq!(store.user_count().await.unwrap(), 2);

        assert_eq!(store.get_user("bob").await.unwrap(), Some(bob.clone()));
        assert_eq!(store.get_user("carol").await.unwrap(), None);
        assert_eq!(
            store.list_users().await.unwrap(),
            vec![alice.clone(), bob.clone()]
        );

        store.delete_user("bob").await.unwrap();
        assert!(matches!(
            store.delete_user("bob").await,
            Err(AuthError::NoSuchUser(n)) if n == "bob"
        ));
        assert_eq!(store.list_users().await.unwrap(), vec![alice]);
        // The cascade removed bob's roles.
        let conn = store.conn.lock().unwrap();
        let left: i64 = conn
            .query_row("SELECT COUNT(*) FROM user_roles", [], |r| r.get(0))
            .unwrap();
        assert_eq!(left, 0);
    }

    #[tokio::test]
    async fn unknown_users_and_wrong_passwords_each_cost_one_argon2_check() {
        let store = SqliteUserStore::open_in_memory(hasher()).unwrap();
        store.add_user("alice", &pw("a"), &[]).await.unwrap();
        let before = store.hasher.argon2_checks();
        assert_eq!(
            store.verify_password("alice", &pw("b")).await.unwrap(),
            None
        );
        assert_eq!(store.hasher.argon2_checks(), before + 1);
        assert_eq!(
            store.verify_password("nobody", &pw("b")).await.unwrap(),
            None
        );
        assert_eq!(
            store.hasher.argon2_checks(),
            before + 2,
            "an unknown user costs a real hash check"
        );
    }

    #[tokio::test]
    async fn ids_are_not_reused() {
        let store = SqliteUserStore::open_in_memory(hasher()).unwrap();
        let a = store.add_user("a", &pw("x"), &[]).await.unwrap();
        store.delete_user("a").await.unwrap();
        let b = store.add_user("a", &pw("x"), &[]).await.unwrap();
        assert!(b.id > a.id);
    }

    #[tokio::test]
    async fn duplicate_user() {
        let store = SqliteUserStore::open_in_memory(hasher()).unwrap();
        store.add_user("alice", &pw("a"), &[]).await.unwrap();
        assert!(matches!(
            store.add_user("alice", &pw("other"), &[]).await,
            Err(AuthError::UserExists(n)) if n == "alice"
        ));
        // Names are case-sensitive.
        store.add_user("Alice", &pw("a"), &[]).await.unwrap();
        assert_eq!(store.user_count().await.unwrap(), 2);
    }

    #[tokio::test]
    async fn verify_passwords() {
        let store = SqliteUserStore::open_in_memory(hasher()).unwrap();
        let alice = store
            .add_user("alice", &pw("s3cret"), &roles(&["admin"]))
            .await
            .unwrap();
        let got = store.verify_password("alice", &pw("s3cret")).await.unwrap();
        assert_eq!(got, Some(alice));
        assert_eq!(
            store.verify_password("alice", &pw("wrong")).await.unwrap(),
            None
        );
        assert_eq!(
            store
                .verify_password("nobody", &pw("s3cret"))
                .await
                .unwrap(),
            None
        );
        assert_eq!(store.verify_password("", &pw("")).await.unwrap(), None);

        // Through the trait object, as the protocols use it.
        let dyn_store: Arc<dyn UserStore> = Arc::new(store);
        assert!(dyn_store
            .verify_password("alice", &pw("s3cret"))
            .await
            .unwrap()
            .is_some());
    }

    #[tokio::test]
    async fn passwd_and_roles() {
        let store = SqliteUserStore::open_in_memory(hasher()).unwrap();
        store.add_user("alice", &pw("old"), &[]).await.unwrap();
        store.set_password("alice", &pw("new")).await.unwrap();
        assert!(store
            .verify_password("alice", &pw("old"))
            .await
            .unwrap()
            .is_none());
        assert!(store
            .verify_password("alice", &pw("new"))
            .await
            .unwrap()
            .is_some());
        assert!(matches!(
            store.set_password("bob", &pw("x")).await,
            Err(AuthError::NoSuchUser(_))
        ));

        store.set_roles("alice", &roles(&["b", "a"])).await.unwrap();
        let alice = store.get_user("alice").await.unwrap().unwrap();
        assert_eq!(alice.roles, roles(&["a", "b"]));
        assert!(alice.has_role("a"));
        store.set_roles("alice", &[]).await.unwrap();
        assert!(store
            .get_user("alice")
            .await
            .unwrap()
            .unwrap()
            .roles
            .is_empty());
        assert!(matches!(
            store.set_roles("bob", &roles(&["a"])).await,
            Err(AuthError::NoSuchUser(_))
        ));
    }

    #[tokio::test]
    async fn invalid_input_is_rejected() {
        let store = SqliteUserStore::open_in_memory(hasher()).unwrap();
        let long_name = "n".repeat(257);
        for name in ["", "a\nb", "tab\there", "nul\0", long_name.as_str()] {
            assert!(
                matches!(
                    store.add_user(name, &pw("x"), &[]).await,
                    Err(AuthError::Invalid {
                        field: "user name",
                        ..
                    })
                ),
                "{name:?}"
            );
        }
        store
            .add_user(&"n".repeat(256), &pw("x"), &[])
            .await
            .unwrap();
        store.add_user("élodie d'Arc", &pw("x"), &[]).await.unwrap();

        for bad in [String::new(), "p".repeat(1025)] {
            assert!(matches!(
                store.add_user("carol", &Secret::new(bad), &[]).await,
                Err(AuthError::Invalid {
                    field: "password",
                    ..
                })
            ));
        }
        let long_role = "r".repeat(65);
        for role in ["", "a b", "a,b", "é", long_role.as_str()] {
            assert!(
                matches!(
                    store.add_user("carol", &pw("x"), &roles(&[role])).await,
                    Err(AuthError::Invalid { field: "role", .. })
                ),
                "{role:?}"
            );
        }
        store
            .add_user("carol", &pw("x"), &roles(&["A-z_0.9", &"r".repeat(64)]))
            .await
            .unwrap();
        assert!(matches!(
            store.set_password("carol", &pw("")).await,
            Err(AuthError::Invalid { .. })
        ));
        assert!(matches!(
            store.set_roles("carol", &roles(&["no spaces"])).await,
            Err(AuthError::Invalid { .. })
        ));
    }

    #[tokio::test]
    async fn reopening_keeps_users() {
        let dir = tempfile::tempdir().unwrap();
        let path = SqliteUserStore::default_path(dir.path());
        assert!(path.ends_with(USERS_DB_FILE));
        let alice = {
            let store = SqliteUserStore::open(&path, hasher()).unwrap();
            store
                .add_user("alice", &pw("pw"), &roles(&["admin"]))
                .await
                .unwrap()
        };
        let store = SqliteUserStore::open(&path, hasher()).unwrap();
        assert_eq!(store.list_users().await.unwrap(), vec![alice.clone()]);
        assert_eq!(
            store.verify_password("alice", &pw("pw")).await.unwrap(),
            Some(alice)
        );

        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "mode {mode:o}");
        }
    }

    #[tokio::test]
    async fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("u.db");
        Connection::open(&path)
            .unwrap()
            .execute_batch("PRAGMA user_version = 99")
            .unwrap();
        let err = SqliteUserStore::open(&path, hasher()).unwrap_err();
        assert!(
            matches!(err, AuthError::Store(ref m) if m.contains("99")),
            "{err}"
        );
    }

    #[test]
    fn missing_directory_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent").join(USERS_DB_FILE);
        assert!(matches!(
            SqliteUserStore::open(path, hasher()),
            Err(AuthError::Store(_))
        ));
    }

    #[tokio::test]
    async fn ids_beyond_i32_are_refused() {
        let store = SqliteUserStore::open_in_memory(hasher()).unwrap();
        store
            .conn
            .lock()
            .unwrap()
            .execute(
                "INSERT INTO users (id, name, password_hash) VALUES (?1, 'max', 'x')",
                [i64::from(i32::MAX)],
            )
            .unwrap();
        assert!(matches!(
            store.add_user("next", &pw("x"), &[]).await,
            Err(AuthError::Store(_))
        ));
        // The failed insert was rolled back.
        assert_eq!(store.get_user("next").await.unwrap(), None);
    }

    #[tokio::test]
    async fn corrupt_hash_is_an_error_not_a_denial() {
        let store = SqliteUserStore::open_in_memory(hasher()).unwrap();
        store.add_user("alice", &pw("pw"), &[]).await.unwrap();
        store
            .conn
            .lock()
            .unwrap()
            .execute("UPDATE users SET password_hash = 'garbage'", [])
            .unwrap();
        assert!(matches!(
            store.verify_password("alice", &pw("pw")).await,
            Err(AuthError::Hash(_))
        ));
    }

    /// Whether `lookup` holds real credentials that `password` matches.
    fn scram_matches(lookup: &ScramLookup, password: &str) -> bool {
        let c = &lookup.credentials;
        lookup.user.is_some() && ScramCredentials::derive(password, &c.salt, c.iterations) == *c
    }

    /// A store keeping SCRAM credentials at the fewest iterations clients accept.
    fn scram_store() -> SqliteUserStore {
        SqliteUserStore::open_in_memory(hasher())
            .unwrap()
            .with_scram(4096)
            .unwrap()
    }

    /// How many users have SCRAM columns filled in.
    fn scram_rows(store: &SqliteUserStore) -> i64 {
        store
            .conn
            .lock()
            .unwrap()
            .query_row(
                "SELECT COUNT(*) FROM users WHERE scram_salt IS NOT NULL
                    OR scram_iterations IS NOT NULL OR scram_stored_key IS NOT NULL
                    OR scram_server_key IS NOT NULL",
                [],
                |r| r.get(0),
            )
            .unwrap()
    }

    #[tokio::test]
    async fn without_scram_no_verifier_is_stored() {
        let store = SqliteUserStore::open_in_memory(hasher()).unwrap();
        assert_eq!(store.scram_iterations(), None);
        store.add_user("alice", &pw("pw"), &[]).await.unwrap();
        let alice = store.verify_password("alice", &pw("pw")).await.unwrap();
        store.login_accepted(&alice.unwrap(), &pw("pw")).await;
        assert_eq!(scram_rows(&store), 0, "argon2id only");
        assert!(store.scram_lookup("alice").await.unwrap().user.is_none());
    }

    #[tokio::test]
    async fn turning_scram_off_drops_the_verifiers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("u.db");
        let on = SqliteUserStore::open(&path, hasher())
            .unwrap()
            .with_scram(4096)
            .unwrap();
        on.add_user("alice", &pw("a"), &[]).await.unwrap();
        on.add_user("bob", &pw("b"), &[]).await.unwrap();
        assert_eq!(scram_rows(&on), 2);
        drop(on);
        let off = SqliteUserStore::open(&path, hasher()).unwrap();
        // Setting a password while SCRAM is off clears that user's verifier...
        off.set_password("alice", &pw("a2")).await.unwrap();
        assert_eq!(scram_rows(&off), 1);
        // ...and dropping clears everyone's.
        assert_eq!(off.drop_scram_credentials().await.unwrap(), 1);
        assert_eq!(scram_rows(&off), 0);
        assert!(off
            .verify_password("bob", &pw("b"))
            .await
            .unwrap()
            .is_some());
        // A store that still had SCRAM on would no longer find credentials for them.
        let on = SqliteUserStore::open(&path, hasher())
            .unwrap()
            .with_scram(4096)
            .unwrap();
        assert!(on.scram_lookup("bob").await.unwrap().user.is_none());
    }

    #[test]
    fn scram_iterations_are_checked() {
        for bad in [0, 4095, 1_000_001] {
            let store = SqliteUserStore::open_in_memory(hasher()).unwrap();
            assert!(matches!(
                store.with_scram(bad),
                Err(AuthError::Invalid {
                    field: "SCRAM iterations",
                    ..
                })
            ));
        }
    }

    #[tokio::test]
    async fn scram_credentials_follow_the_password() {
        let store = scram_store();
        let alice = store
            .add_user("alice", &pw("old"), &roles(&["admin"]))
            .await
            .unwrap();
        let lookup = store.scram_lookup("alice").await.unwrap();
        assert_eq!(lookup.user.as_ref(), Some(&alice));
        assert_eq!(lookup.credentials.iterations, 4096);
        assert!(scram_matches(&lookup, "old"));
        assert!(!scram_matches(&lookup, "new"));

        store.set_password("alice", &pw("new")).await.unwrap();
        let after = store.scram_lookup("alice").await.unwrap();
        assert!(scram_matches(&after, "new"));
        assert_ne!(
            after.credentials.salt, lookup.credentials.salt,
            "fresh salt"
        );
    }

    #[tokio::test]
    async fn scram_unknown_user_gets_stable_fake_salt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("u.db");
        let open = || {
            SqliteUserStore::open(&path, hasher())
                .unwrap()
                .with_scram(5000)
                .unwrap()
        };
        let store = open();
        let first = store.scram_lookup("nobody").await.unwrap();
        let again = store.scram_lookup("nobody").await.unwrap();
        assert!(first.user.is_none());
        assert_eq!(first.credentials.salt, again.credentials.salt);
        assert_eq!(first.credentials.salt.len(), 16);
        // The count real credentials get, so that it does not tell unknown users apart.
        assert_eq!(first.credentials.iterations, 5000);
        assert_ne!(first.credentials.stored_key, again.credentials.stored_key);
        assert_ne!(
            first.credentials.salt,
            store
                .scram_lookup("somebody")
                .await
                .unwrap()
                .credentials
                .salt
        );
        drop(store);
        // The secret is in the database, so the salt survives a restart.
        let reopened = open();
        assert_eq!(
            reopened
                .scram_lookup("nobody")
                .await
                .unwrap()
                .credentials
                .salt,
            first.credentials.salt
        );
        // Another store has its own secret.
        let other = scram_store();
        assert_ne!(
            other.scram_lookup("nobody").await.unwrap().credentials.salt,
            first.credentials.salt
        );
    }

    #[tokio::test]
    async fn user_from_before_scram_gains_it_after_an_accepted_password_login() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("u.db");
        {
            // A database as the first schema version left it.
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(MIGRATIONS[0]).unwrap();
            conn.execute_batch("PRAGMA user_version = 1").unwrap();
            conn.execute(
                "INSERT INTO users (name, password_hash) VALUES ('old', ?1)",
                [hasher().hash_blocking("pw").unwrap()],
            )
            .unwrap();
        }
        let store = SqliteUserStore::open(&path, hasher())
            .unwrap()
            .with_scram(4096)
            .unwrap();
        let before = store.scram_lookup("old").await.unwrap();
        assert!(before.user.is_none(), "no SCRAM credentials yet: fake");
        // A wrong password stores nothing.
        assert!(store
            .verify_password("old", &pw("wrong"))
            .await
            .unwrap()
            .is_none());
        // Nor does the right one by itself: the caller may still deny the login (a penalised
        // source), and a guesser must not see the salt change.
        let old = store.verify_password("old", &pw("pw")).await.unwrap();
        assert!(old.is_some());
        assert_eq!(scram_rows(&store), 0);
        assert_eq!(
            store.scram_lookup("old").await.unwrap().credentials.salt,
            before.credentials.salt
        );

        // Once the login is accepted, they are stored.
        store.login_accepted(old.as_ref().unwrap(), &pw("pw")).await;
        let after = store.scram_lookup("old").await.unwrap();
        assert_eq!(after.user, old);
        assert!(scram_matches(&after, "pw"));
        // Later logins leave them alone.
        store.login_accepted(old.as_ref().unwrap(), &pw("pw")).await;
        assert_eq!(
            store.scram_lookup("old").await.unwrap().credentials,
            after.credentials
        );
        // A password that is not (or no longer) the stored one stores nothing.
        store.set_password("old", &pw("new")).await.unwrap();
        let renewed = store.scram_lookup("old").await.unwrap().credentials;
        store.login_accepted(old.as_ref().unwrap(), &pw("pw")).await;
        assert_eq!(
            store.scram_lookup("old").await.unwrap().credentials,
            renewed
        );

        // A store set to another count renews them at the next accepted login.
        drop(store);
        let stronger = SqliteUserStore::open(&path, hasher())
            .unwrap()
            .with_scram(8192)
            .unwrap();
        stronger
            .login_accepted(old.as_ref().unwrap(), &pw("new"))
            .await;
        let upgraded = stronger.scram_lookup("old").await.unwrap();
        assert_eq!(upgraded.credentials.iterations, 8192);
        assert!(scram_matches(&upgraded, "new"));
    }

    #[tokio::test]
    async fn logins_of_one_user_at_once_derive_scram_credentials_once() {
        let store = SqliteUserStore::open_in_memory(hasher())
            .unwrap()
            .with_scram(4096)
            .unwrap();
        store.add_user("crowd", &pw("pw"), &[]).await.unwrap();
        let user = store.verify_password("crowd", &pw("pw")).await.unwrap();
        let user = user.unwrap();
        // At another count than stored, so each of them would derive new ones.
        let password = pw("pw");
        let (a, b, c) = tokio::join!(
            store.refresh_scram(&user, &password, 8192),
            store.refresh_scram(&user, &password, 8192),
            store.refresh_scram(&user, &password, 8192),
        );
        assert_eq!([a, b, c], [true, false, false]);
        assert_eq!(
            store
                .scram_lookup("crowd")
                .await
                .unwrap()
                .credentials
                .iterations,
            8192
        );
        // The claim is given back: a later login may derive again.
        assert!(store.deriving.is_empty());
        assert!(store.refresh_scram(&user, &pw("pw"), 16384).await);
    }

    #[tokio::test]
    async fn incomplete_scram_record_is_an_error() {
        let store = scram_store();
        store.add_user("alice", &pw("pw"), &[]).await.unwrap();
        store
            .conn
            .lock()
            .unwrap()
            .execute("UPDATE users SET scram_server_key = NULL", [])
            .unwrap();
        assert!(matches!(
            store.scram_lookup("alice").await,
            Err(AuthError::Store(_))
        ));
    }

    #[tokio::test]
    async fn default_scram_lookup_is_always_fake() {
        struct NoScram;
        #[async_trait]
        impl UserStore for NoScram {
            async fn verify_password(
                &self,
                _: &str,
                _: &Secret,
            ) -> Result<Option<User>, AuthError> {
                Ok(None)
            }
            async fn find_user(&self, _: &str) -> Result<Option<User>, AuthError> {
                Ok(None)
            }
        }
        let a = NoScram.scram_lookup("x").await.unwrap();
        assert!(a.user.is_none());
        assert_eq!(
            a.credentials.salt,
            NoScram.scram_lookup("x").await.unwrap().credentials.salt
        );
    }
}
