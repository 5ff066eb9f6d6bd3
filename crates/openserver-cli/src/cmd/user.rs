//! `openserver user`: manage the accounts in the server's user store (the SQLite file in the
//! data directory, or the one `--users` / `[users] store` names).

use crate::config::FileConfig;
use crate::users::{is_default_sqlite, StoreLocation, Users};
use anyhow::{anyhow, bail, Context as _, Result};
use clap::{Args, Subcommand};
use openserver::auth::{self, AuthError, PasswordHasher};
use openserver::wire::Secret;
use std::path::PathBuf;

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

    /// The user store: postgres://USER@HOST:PORT/DB (password in the URL or PGPASSWORD) or
    /// sqlite:PATH [default: `[users] store` of --config, else users.db in the data
    /// directory].
    #[arg(long, global = true, value_name = "URL")]
    pub users: Option<String>,
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
    let config = FileConfig { data_dir, ..config };
    let location = StoreLocation::resolve(args.users.as_deref(), &config)?;
    let hasher = PasswordHasher::new(config.hash.clone()).context("invalid [hash] settings")?;
    match args.command {
        UserCommand::Add {
            name,
            roles,
            password_stdin,
        } => {
            // Check everything we can before asking for a password.
            auth::validate_name(&name)?;
            auth::validate_roles(&roles)?;
            if is_default_sqlite(&location, &config.data_dir) {
                let dir = &config.data_dir;
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create data directory {}", dir.display()))?;
            }
            let store = Users::open(&location, hasher, &config).await?;
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
            let store = Users::open_existing(&location, hasher, &config).await?;
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
            let store = Users::open_existing(&location, hasher, &config).await?;
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
            let store = Users::open_existing(&location, hasher, &config).await?;
            let users = store.list_users().await?;
            if users.is_empty() {
                eprintln!("no users in {}", location.describe());
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
    auth::validate_password(&password)?;
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
