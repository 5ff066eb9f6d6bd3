//! Which user store the CLI opens (`[users] store`, `--users`): the SQLite file in the data
//! directory by default, another SQLite file, or PostgreSQL. [`Users`] gives `serve` and
//! `openserver user` one set of calls over either.

use crate::config::FileConfig;
use anyhow::{bail, Context as _, Result};
use openserver::auth::{
    redact_url, AuthError, PasswordHasher, PostgresUserStore, SqliteUserStore, User, UserStore,
};
use openserver::wire::Secret;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where the users are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// A SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL URL (may hold a password: show it with [`StoreLocation::describe`]).
    Postgres(String),
}

impl StoreLocation {
    /// `postgres://...` / `postgresql://...`, or `sqlite:PATH`.
    pub fn parse(value: &str) -> Result<StoreLocation> {
        if value.starts_with("postgres://") || value.starts_with("postgresql://") {
            return Ok(StoreLocation::Postgres(value.to_owned()));
        }
        if let Some(path) = value.strip_prefix("sqlite:") {
            if path.is_empty() {
                bail!("sqlite: needs a file path, as in sqlite:/var/lib/openserver/users.db");
            }
            return Ok(StoreLocation::Sqlite(PathBuf::from(path)));
        }
        bail!(
            "{:?} is not a user store: use postgres://USER@HOST:PORT/DB or sqlite:PATH",
            redact_url(value)
        )
    }

    /// The store `flag` (`--users`) names, else `[users] store`, else `DATA_DIR/users.db`.
    pub fn resolve(flag: Option<&str>, config: &FileConfig) -> Result<StoreLocation> {
        match flag.or(config.users.store.as_deref()) {
            Some(value) => Self::parse(value),
            None => Ok(StoreLocation::Sqlite(SqliteUserStore::default_path(
                &config.data_dir,
            ))),
        }
    }

    /// For messages: the file, or the URL with its password replaced by `***`.
    pub fn describe(&self) -> String {
        match self {
            StoreLocation::Sqlite(path) => path.display().to_string(),
            StoreLocation::Postgres(url) => redact_url(url),
        }
    }
}

/// An open user store of either kind, with the `[auth]` SCRAM settings applied.
#[derive(Clone)]
pub enum Users {
    /// The SQLite store.
    Sqlite(SqliteUserStore),
    /// The PostgreSQL store.
    Postgres(PostgresUserStore),
}

/// The same call on whichever store it is.
macro_rules! either {
    ($self:expr, $store:ident => $call:expr) => {
        match $self {
            Users::Sqlite($store) => $call,
            Users::Postgres($store) => $call,
        }
    };
}

impl Users {
    /// Opens the store at `location` (creating its schema): SCRAM verifiers at
    /// `auth.scram_iterations` while `auth.scram` is on, none otherwise.
    pub async fn open(
        location: &StoreLocation,
        hasher: PasswordHasher,
        config: &FileConfig,
    ) -> Result<Users> {
        let store = match location {
            StoreLocation::Sqlite(path) => Users::Sqlite(
                SqliteUserStore::open(path, hasher)
                    .with_context(|| format!("cannot open user database {}", path.display()))?,
            ),
            StoreLocation::Postgres(url) => Users::Postgres(
                PostgresUserStore::open(url, hasher, config.users.postgres_options())
                    .await
                    .map_err(|e| anyhow::anyhow!(scrub(&e.to_string(), url)))?,
            ),
        };
        if !config.auth.scram {
            return Ok(store);
        }
        let iterations = config.auth.scram_iterations;
        Ok(match store {
            Users::Sqlite(s) => Users::Sqlite(
                s.with_scram(iterations)
                    .context("invalid auth.scram_iterations")?,
            ),
            Users::Postgres(s) => Users::Postgres(
                s.with_scram(iterations)
                    .context("invalid auth.scram_iterations")?,
            ),
        })
    }

    /// Opens the store only if it exists: a SQLite file must be there already, so a
    /// mistyped `--data-dir` is reported instead of silently creating an empty database.
    pub async fn open_existing(
        location: &StoreLocation,
        hasher: PasswordHasher,
        config: &FileConfig,
    ) -> Result<Users> {
        if let StoreLocation::Sqlite(path) = location {
            if !path.exists() {
                bail!(
                    "no user database at {} (add a user first, or check --data-dir / --users)",
                    path.display()
                );
            }
        }
        Self::open(location, hasher, config).await
    }

    /// The store for the server's login protocols.
    pub fn into_user_store(self) -> Arc<dyn UserStore> {
        either!(self, s => Arc::new(s))
    }

    /// See [`SqliteUserStore::add_user`].
    pub async fn add_user(
        &self,
        name: &str,
        password: &Secret,
        roles: &[String],
    ) -> Result<User, AuthError> {
        either!(self, s => s.add_user(name, password, roles).await)
    }

    /// See [`SqliteUserStore::delete_user`].
    pub async fn delete_user(&self, name: &str) -> Result<(), AuthError> {
        either!(self, s => s.delete_user(name).await)
    }

    /// See [`SqliteUserStore::set_password`].
    pub async fn set_password(&self, name: &str, password: &Secret) -> Result<(), AuthError> {
        either!(self, s => s.set_password(name, password).await)
    }

    /// See [`SqliteUserStore::list_users`].
    pub async fn list_users(&self) -> Result<Vec<User>, AuthError> {
        either!(self, s => s.list_users().await)
    }

    /// See [`SqliteUserStore::get_user`].
    pub async fn get_user(&self, name: &str) -> Result<Option<User>, AuthError> {
        either!(self, s => s.get_user(name).await)
    }

    /// See [`SqliteUserStore::user_count`].
    pub async fn user_count(&self) -> Result<u64, AuthError> {
        either!(self, s => s.user_count().await)
    }

    /// See [`SqliteUserStore::drop_scram_credentials`].
    pub async fn drop_scram_credentials(&self) -> Result<u64, AuthError> {
        either!(self, s => s.drop_scram_credentials().await)
    }
}

/// `message` without the password of `url`, should it appear in it.
fn scrub(message: &str, url: &str) -> String {
    match url_password(url) {
        Some(password) if password.len() >= 4 => message.replace(&password, "***"),
        _ => message.to_owned(),
    }
}

/// The password in a URL's user info, as written.
fn url_password(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let (userinfo, _) = authority.rsplit_once('@')?;
    Some(userinfo.split_once(':')?.1.to_owned())
}

/// Whether `path` is the default SQLite file in `data_dir` (created with the directory).
pub fn is_default_sqlite(location: &StoreLocation, data_dir: &Path) -> bool {
    matches!(location, StoreLocation::Sqlite(p) if *p == SqliteUserStore::default_path(data_dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse_and_hide_passwords() {
        assert_eq!(
            StoreLocation::parse("sqlite:/x/u.db").unwrap(),
            StoreLocation::Sqlite("/x/u.db".into())
        );
        let pg = StoreLocation::parse("postgres://os:s3cret@db:5432/users").unwrap();
        assert_eq!(pg.describe(), "postgres://os:***@db:5432/users");
        assert!(StoreLocation::parse("sqlite:").is_err());
        let err = StoreLocation::parse("mysql://os:s3cret@db/users")
            .unwrap_err()
            .to_string();
        assert!(err.contains("postgres://USER@HOST:PORT/DB"), "{err}");
        assert!(!err.contains("s3cret"), "{err}");
    }

    #[test]
    fn the_flag_wins_over_the_file_and_the_default_is_the_data_dir() {
        let mut config = FileConfig {
            data_dir: "/d".into(),
            ..FileConfig::default()
        };
        let default = StoreLocation::resolve(None, &config).unwrap();
        assert_eq!(default, StoreLocation::Sqlite("/d/users.db".into()));
        assert!(is_default_sqlite(&default, Path::new("/d")));
        config.users.store = Some("postgres://a@h/db".into());
        assert_eq!(
            StoreLocation::resolve(None, &config).unwrap(),
            StoreLocation::Postgres("postgres://a@h/db".into())
        );
        assert_eq!(
            StoreLocation::resolve(Some("sqlite:/e.db"), &config).unwrap(),
            StoreLocation::Sqlite("/e.db".into())
        );
    }

    #[test]
    fn scrub_removes_the_url_password() {
        assert_eq!(
            scrub("failed for s3cret!", "postgres://os:s3cret@db/users"),
            "failed for ***!"
        );
        assert_eq!(url_password("postgres://os@db/users"), None);
    }
}
