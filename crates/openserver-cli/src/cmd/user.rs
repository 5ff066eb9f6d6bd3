//! `openserver user`: manage the accounts in the server's SQLite user store.

use crate::config::{AuthConfig, FileConfig};
use anyhow::{anyhow, bail, Context as _, Result};
use clap::{Args, Subcommand};
use openserver::auth::{AuthError, PasswordHasher, SqliteUserStore};
use openserver::wire::Secret;
use std::path::{Path, PathBuf};

/// Arguments of `openserver user`.
#[derive(Args, Debug)]
pub struct UserArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: UserCommand,

    /// Server data directory; the users are stored in `users.db` inside it
    /// [default: `data_dir` of --config, else ./openserver-data].
    #[arg(long, global = true, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// The server's configuration file: its `data_dir`, `[hash]` and `[auth]` settings apply,
    /// so new hashes cost what the server's unknown-user check costs, and SCRAM verifiers are
    /// stored only if the server offers ScramAuth, at its iteration count.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// The `openserver user` subcommands.
#[derive(Subcommand, Debug)]
pub enum UserCommand {
    /// Add a user (creates the data directory and database if needed).
    Add {
        /// Login name: up to 256 bytes, no control characters; case-sensitive.
        name: String,
        /// Role to grant, for example `admin`; repeat the option or separate roles with commas.
        #[arg(long = "role", value_name = "ROLE", value_delimiter = ',')]
        roles: Vec<String>,
        /// Read the password from the first line of standard input instead of prompting.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Delete a user.
    Del {
        /// Login name of the user to delete.
        name: String,
    },
    /// Change a user's password.
    Passwd {
        /// Login name of the user.
        name: String,
        /// Read the new password from the first line of standard input instead of prompting.
        #[arg(long)]
        password_stdin: bool,
    },
    /// List the users, one per line: id, name, roles (comma-separated).
    List {},
}

/// Runs `openserver user ...`.
pub async fn run(args: UserArgs) -> Result<()> {
    let config = match &args.config {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    let data_dir = args.data_dir.clone().unwrap_or(config.data_dir.clone());
    let db_path = SqliteUserStore::default_path(&data_dir);
    match args.command {
        UserCommand::Add {
            name,
            roles,
            password_stdin,
        } => {
            // Check everything we can before asking for a password.
            SqliteUserStore::validate_name(&name)?;
            SqliteUserStore::validate_roles(&roles)?;
            std::fs::create_dir_all(&data_dir)
                .with_context(|| format!("cannot create data directory {}", data_dir.display()))?;
            let store = open(&db_path, &config)?;
            if store.get_user(&name).await?.is_some() {
                bail!("user {name} already exists");
            }
            let password = read_password(password_stdin).await?;
            let user = store
                .add_user(&name, &password, &roles)
                .await
                .map_err(|e| explain(e, &format!("add user {name}")))?;
            println!("added user {} (id {})", user.name, user.id);
        }
        UserCommand::Del { name } => {
            let store = open_existing(&db_path, &config)?;
            store
                .delete_user(&name)
                .await
                .map_err(|e| explain(e, &format!("delete user {name}")))?;
            println!("deleted user {name}");
        }
        UserCommand::Passwd {
            name,
            password_stdin,
        } => {
            let store = open_existing(&db_path, &config)?;
            if store.get_user(&name).await?.is_none() {
                bail!("no user named {name}");
            }
            let password = read_password(password_stdin).await?;
            store
                .set_password(&name, &password)
                .await
                .map_err(|e| explain(e, &format!("change the password of {name}")))?;
            println!("changed the password of {name}");
        }
        UserCommand::List {} => {
            let store = open_existing(&db_path, &config)?;
            let users = store.list_users().await?;
            if users.is_empty() {
                eprintln!("no users in {}", db_path.display());
            }
            let id_width = users
                .iter()
                .map(|u| u.id.to_string().len())
                .max()
                .unwrap_or(0);
            let name_width = users.iter().map(|u| u.name.len()).max().unwrap_or(0);
            for user in &users {
                let roles = if user.roles.is_empty() {
                    "-".to_owned()
                } else {
                    user.roles.join(",")
                };
                println!(
                    "{:>id_width$}  {:<name_width$}  {roles}",
                    user.id, user.name
                );
            }
        }
    }
    Ok(())
}

fn open(path: &Path, config: &FileConfig) -> Result<SqliteUserStore> {
    let hasher = PasswordHasher::new(config.hash.clone()).context("invalid [hash] settings")?;
    open_store(path, hasher, &config.auth)
}

/// Opens the user database with the `[auth]` settings: SCRAM verifiers at
/// `scram_iterations` while `scram` is on, none otherwise (a password set then has none).
pub fn open_store(
    path: &Path,
    hasher: PasswordHasher,
    auth: &AuthConfig,
) -> Result<SqliteUserStore> {
    let store = SqliteUserStore::open(path, hasher)
        .with_context(|| format!("cannot open user database {}", path.display()))?;
    if !auth.scram {
        return Ok(store);
    }
    store
        .with_scram(auth.scram_iterations)
        .context("invalid auth.scram_iterations")
}

/// Opens the store only if it exists, so a mistyped `--data-dir` is reported instead of
/// silently creating an empty database.
fn open_existing(path: &Path, config: &FileConfig) -> Result<SqliteUserStore> {
    if !path.exists() {
        bail!(
            "no user database at {} (add a user first, or check --data-dir)",
            path.display()
        );
    }
    open(path, config)
}

/// Turns store errors into messages for people; `action` completes "cannot ...".
fn explain(err: AuthError, action: &str) -> anyhow::Error {
    match err {
        AuthError::UserExists(name) => anyhow!("user {name} already exists"),
        AuthError::NoSuchUser(name) => anyhow!("no user named {name}"),
        other => anyhow::Error::new(other).context(format!("cannot {action}")),
    }
}

/// Reads the password from stdin or, by default, the terminal, off the async threads.
async fn read_password(from_stdin: bool) -> Result<Secret> {
    let password = tokio::task::spawn_blocking(move || {
        if from_stdin {
            super::read_stdin_line()
        } else {
            prompt_twice()
        }
    })
    .await
    .context("password reader failed")??;
    SqliteUserStore::validate_password(&password)?;
    Ok(password)
}

fn prompt_twice() -> Result<Secret> {
    let first = rpassword::prompt_password("Password: ")
        .context("cannot read the password from the terminal (use --password-stdin?)")?;
    let second = rpassword::prompt_password("Repeat password: ")
        .context("cannot read the password from the terminal")?;
    if first != second {
        bail!("passwords do not match");
    }
    Ok(Secret::new(first))
}
