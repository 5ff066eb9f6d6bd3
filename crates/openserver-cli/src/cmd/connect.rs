//! What the client commands (`hello`, `sessions`) share: where to connect, how to trust the
//! server, and how to log in.

use anyhow::{bail, Context as _, Result};
use clap::{Args, ValueEnum};
use openserver::client::{Client, ClientConfig, ClientError};
use openserver::tls::{ClientTls, ServerVerification};
use std::path::PathBuf;

/// Connection and login flags of the client commands.
#[derive(Args, Debug)]
pub struct ConnectArgs {
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
    /// Trust server certificates issued by the CA in this PEM file (for a development server:
    /// DATA_DIR/tls/ca.pem).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["fingerprint", "no_tls"])]
    pub ca: Option<PathBuf>,
    /// Trust exactly the server certificate with this SHA-256 fingerprint (as `serve` prints
    /// it; colons optional).
    #[arg(long, value_name = "SHA256", conflicts_with = "no_tls")]
    pub fingerprint: Option<String>,
    /// Connect in plaintext (to a server started with --no-tls).
    #[arg(long)]
    pub no_tls: bool,
    /// Verify the server under this name instead of the host in --server.
    #[arg(long, value_name = "NAME")]
    pub server_name: Option<String>,
    /// Client certificate (PEM) to present; with --auth cert it is the login.
    #[arg(long, value_name = "FILE", requires = "key")]
    pub cert: Option<PathBuf>,
    /// Private key (PEM) of --cert.
    #[arg(long, value_name = "FILE", requires = "cert")]
    pub key: Option<PathBuf>,
}

/// Which login the client commands use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AuthKind {
    /// DatabaseAuth (protocol 3).
    Db,
    /// WinAuth (protocol 2), with `--domain`.
    Win,
    /// A client certificate (`--cert`, `--key`) verified by the server's client CA; no
    /// password.
    Cert,
    /// ScramAuth (protocol 4, SCRAM-SHA-256): the password never leaves this machine. The
    /// server must enable it.
    Scram,
}

/// Connects as `args` say and logs in; on a failed login the connection is closed and the
/// error says why.
pub async fn connect_and_login(args: &ConnectArgs) -> Result<Client> {
    if args.auth == AuthKind::Cert && args.cert.is_none() {
        bail!("--auth cert needs --cert FILE and --key FILE");
    }
    let password = match args.auth {
        AuthKind::Cert => String::new(),
        _ => crate::cmd::read_password(args.password_stdin, "Password: ")?,
    };
    let mut config = ClientConfig::default();
    if !args.no_tls {
        let verification = match (&args.ca, &args.fingerprint) {
            (Some(ca), _) => ServerVerification::CaFile(ca.clone()),
            (None, Some(fp)) => ServerVerification::Fingerprint(fp.clone()),
            (None, None) => ServerVerification::SystemRoots,
        };
        let mut tls = ClientTls::new(verification);
        if let Some(name) = &args.server_name {
            tls = tls.with_server_name(name.clone());
        }
        if let (Some(cert), Some(key)) = (&args.cert, &args.key) {
            tls = tls.with_client_cert(cert.clone(), key.clone());
        }
        config = config.with_tls(tls);
    }
    let client = Client::connect(args.server.clone(), config)
        .await
        .context("cannot connect (for a development server pass --ca DATA_DIR/tls/ca.pem or --fingerprint; --no-tls for a plaintext one)")?;
    let login = match args.auth {
        AuthKind::Cert => Ok(()),
        AuthKind::Db => client
            .authenticate_db(&args.user, &password)
            .await
            .map(|_| ()),
        AuthKind::Win => {
            client
                .authenticate_win(&args.user, &password, &args.domain)
                .await
        }
        AuthKind::Scram => client.authenticate_scram(&args.user, &password).await,
    };
    match login {
        Ok(()) => Ok(client),
        Err(ClientError::AccessDenied) => {
            client.quit().await;
            bail!("access denied for user {:?} on {}", args.user, args.server)
        }
        Err(e) => {
            client.quit().await;
            Err(e).context("login failed")
        }
    }
}
