//! `openserver hello`: log in to a server and say hello, the smallest end-to-end check.

use anyhow::{bail, Context as _, Result};
use clap::{Args, ValueEnum};
use openserver::client::{Client, ClientConfig, ClientError};

/// Arguments of `openserver hello`.
#[derive(Args, Debug)]
pub struct HelloArgs {
    /// Server address.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:21843")]
    pub server: String,
    /// User name to log in as.
    #[arg(long)]
    pub user: String,
    /// Read the password from the first line of standard input instead of prompting.
    #[arg(long)]
    pub password_stdin: bool,
    /// Authentication protocol.
    #[arg(long, value_enum, default_value_t = AuthKind::Db)]
    pub auth: AuthKind,
    /// Domain for `--auth win` (empty by default).
    #[arg(long, default_value = "")]
    pub domain: String,
    /// Text to send; the server answers "Hello MESSAGE".
    pub message: String,
}

/// Which password protocol `hello` logs in with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AuthKind {
    /// DatabaseAuth (protocol 3).
    Db,
    /// WinAuth (protocol 2), with `--domain`.
    Win,
}

/// Connects, logs in, says hello, prints the answer.
pub async fn run(args: HelloArgs) -> Result<()> {
    let password = crate::cmd::read_password(args.password_stdin, "Password: ")?;
    let client = Client::connect(args.server.clone(), ClientConfig::default())
        .await
        .context("cannot connect")?;
    let login = match args.auth {
        AuthKind::Db => client
            .authenticate_db(&args.user, &password)
            .await
            .map(|_| ()),
        AuthKind::Win => {
            client
                .authenticate_win(&args.user, &password, &args.domain)
                .await
        }
    };
    match login {
        Ok(()) => {}
        Err(ClientError::AccessDenied) => {
            client.quit().await;
            bail!("access denied for user {:?} on {}", args.user, args.server)
        }
        Err(e) => {
            client.quit().await;
            return Err(e).context("login failed");
        }
    }
    let answer = client.hello(&args.message).await.context("hello failed")?;
    println!("{answer}");
    client.quit().await;
    Ok(())
}
