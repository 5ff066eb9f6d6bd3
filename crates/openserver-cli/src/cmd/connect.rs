//! What the client commands (`hello`, `sessions`) share: where to connect, how to trust the
//! server, and how to log in.

use anyhow::{anyhow, bail, Result};
use clap::{Args, ValueEnum};
use openserver::client::{Client, ClientConfig, ClientError};
use openserver::tls::{ClientTls, ServerVerification};
use openserver::wire::notice::Refusal;
use std::path::{Path, PathBuf};

/// Connection and login flags of the client commands.
#[derive(Args, Debug)]
pub struct ConnectArgs {
    /// Server address.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:21843")]
    pub server: String,
    /// User name to log in as (needed, except with --auth cert: the certificate names the
    /// user).
    #[arg(long)]
    pub user: Option<String>,
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
    /// Print log lines on stderr: -v for what the client does, -vv for more.
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
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
    /// TokenAuth (protocol 7): a token signed by the application's backend (`openserver
    /// token issue` makes one), read where the password would be; it names the user, so
    /// `--user` is not needed.
    Token,
}

/// The `--server` default's port, for the hint when a port is missing.
const DEFAULT_PORT: u16 = 21843;

/// Connects as `args` say and logs in; on a failed login the connection is closed and the
/// error says why, in one `error:` line and, where it helps, a `hint:` line.
pub async fn connect_and_login(args: &ConnectArgs) -> Result<Client> {
    check_args(args)?;
    let user = login_user(args)?;
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
        .map_err(|e| explain(e, args))?;
    let login = match args.auth {
        // Done in the TLS handshake; a certificate that logged in nobody shows at the first
        // request (see `explain_request`).
        AuthKind::Cert => Ok(()),
        AuthKind::Db => client.authenticate_db(&user, &password).await.map(|_| ()),
        AuthKind::Win => {
            client
                .authenticate_win(&user, &password, &args.domain)
                .await
        }
        AuthKind::Scram => client.authenticate_scram(&user, &password).await,
        AuthKind::Token => client.authenticate_token(&password).await.map(|_| ()),
    };
    match login {
        Ok(()) => Ok(client),
        Err(e) => {
            client.quit().await;
            Err(explain_login(e, args, &user))
        }
    }
}

/// Checks the flags a connection needs before any connection is made, naming the flag.
fn check_args(args: &ConnectArgs) -> Result<()> {
    let server = &args.server;
    let port_ok = server
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if !port_ok {
        let host = server.trim_end_matches(':');
        bail!(
            "--server needs HOST:PORT, not {server:?}\nhint: the default port is {DEFAULT_PORT}: \
             --server {host}:{DEFAULT_PORT}"
        );
    }
    if args.no_tls && (args.cert.is_some() || args.auth == AuthKind::Cert) {
        bail!("a client certificate needs TLS: drop --no-tls, or log in with a password");
    }
    if args.auth == AuthKind::Cert && args.cert.is_none() {
        bail!("--auth cert needs --cert FILE and --key FILE");
    }
    if args.no_tls {
        return Ok(());
    }
    if let Some(fp) = &args.fingerprint {
        if openserver::tls::parse_fingerprint(fp).is_err() {
            bail!(
                "--fingerprint needs 64 hex digits (colons optional), as `openserver serve` \
                 prints them, not {fp:?}"
            );
        }
    }
    for (flag, path) in [
        ("--ca", &args.ca),
        ("--cert", &args.cert),
        ("--key", &args.key),
    ] {
        if let Some(path) = path {
            readable(flag, path)?;
        }
    }
    Ok(())
}

/// Fails with "cannot read FLAG FILE: why" unless `path` can be read.
fn readable(flag: &str, path: &Path) -> Result<()> {
    std::fs::File::open(path)
        .map(drop)
        .map_err(|e| anyhow!("cannot read {flag} {}: {}", path.display(), io_reason(&e)))
}

/// An I/O error's reason without the "(os error N)" suffix.
fn io_reason(e: &std::io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error") {
        Some(at) => text[..at].to_string(),
        None => text,
    }
}

/// The user to log in as: `--user`, or with `--auth cert` the certificate's common name
/// (a `--user` that differs from it is refused: the server would log in the certificate's).
fn login_user(args: &ConnectArgs) -> Result<String> {
    if args.auth == AuthKind::Token {
        return Ok(args
            .user
            .clone()
            .unwrap_or_else(|| "the token's user".to_string()));
    }
    if args.auth != AuthKind::Cert {
        return args
            .user
            .clone()
            .ok_or_else(|| anyhow!("--user NAME is needed to log in"));
    }
    let Some(cert) = &args.cert else {
        bail!("--auth cert needs --cert FILE and --key FILE");
    };
    let named = openserver::tls::certificate_file_user(cert)
        .map_err(|e| anyhow!("--cert {}: {e}", cert.display()))?;
    let Some(named) = named else {
        bail!(
            "--cert {} has no subject common name, so it names no user to log in as",
            cert.display()
        );
    };
    match &args.user {
        Some(user) if *user != named => bail!(
            "--user {user} does not match the certificate, which logs in as {named}\nhint: with \
             --auth cert the certificate names the user: drop --user, or use {user}'s certificate"
        ),
        _ => Ok(named),
    }
}

/// The user-facing error for a failed connect: what happened, and a hint where one helps.
pub fn explain(e: ClientError, args: &ConnectArgs) -> anyhow::Error {
    let server = &args.server;
    match e {
        ClientError::NotListening { .. } => anyhow!(
            "nothing listens on {server}: is the server running?\nhint: start it with \
             `openserver serve`, or pass --server HOST:PORT of the running one"
        ),
        ClientError::BadAddress { .. } => anyhow!(
            "--server needs HOST:PORT, not {server:?}\nhint: the default port is {DEFAULT_PORT}"
        ),
        ClientError::TlsConfig(message) => anyhow!("{message}"),
        ClientError::TlsVerification { message, .. } => anyhow!(
            "cannot verify the server at {server}: {message}\nhint: for a development server pass \
             --ca DATA_DIR/tls/ca.pem or --fingerprint SHA256 (as `openserver serve` prints it)"
        ),
        ClientError::TlsHandshake { message, .. } => anyhow!(
            "TLS handshake with {server} failed: {message}\nhint: likely causes: too many failed \
             logins from this address (the server refuses it for a while: wait and retry), or \
             a server that speaks plaintext (add --no-tls)"
        ),
        ClientError::Refused { refusal, .. } => refused(server, refusal),
        ClientError::ServerSpeaksTls { .. } => {
            anyhow!("the server at {server} speaks TLS: drop --no-tls")
        }
        ClientError::ServerSpeaksPlaintext { .. } => {
            anyhow!("the server at {server} speaks plaintext: use --no-tls")
        }
        other => anyhow!("cannot connect to {server}: {}", strip_addr(&other, server)),
    }
}

/// `e`'s text without a leading "cannot connect to ADDR: ", which the caller says itself.
fn strip_addr(e: &ClientError, server: &str) -> String {
    let text = e.to_string();
    text.strip_prefix(&format!("cannot connect to {server}: "))
        .map_or(text.clone(), str::to_owned)
}

/// The error for a refusal notice.
fn refused(server: &str, refusal: Refusal) -> anyhow::Error {
    match refusal {
        Refusal::FailedLogins { retry_after } => anyhow!(
            "the server at {server} refused the connection: too many failed logins from this \
             address; try again in {} s\nhint: each further failed login from this address \
             makes the wait longer; check the user name and password first",
            retry_after.as_secs()
        ),
        Refusal::TooManyFromAddress => anyhow!(
            "the server at {server} refused the connection: too many connections from this \
             address\nhint: close some of them, or raise max_connections_per_ip / \
             security.max_unauthenticated_per_ip on the server"
        ),
        _ => anyhow!(
            "the server at {server} refused the connection: it is busy (connection caps \
             reached); try again later"
        ),
    }
}

/// The user-facing error for a failed login.
fn explain_login(e: ClientError, args: &ConnectArgs, user: &str) -> anyhow::Error {
    let server = &args.server;
    match e {
        ClientError::AccessDenied if args.auth == AuthKind::Token => anyhow!(
            "access denied on {server}: the token is not valid there\nhint: check that it was \
             signed with the key of the server's [auth.token], for its issuer and audience"
        ),
        ClientError::TokenExpired => {
            anyhow!("access denied on {server}: the token has expired\nhint: get a new one")
        }
        ClientError::AccessDenied => anyhow!(
            "access denied for user {user:?} on {server}\nhint: check the user name and \
             password; after 3 failed logins from one address the server refuses it for a while"
        ),
        ClientError::Remote { message, .. } if message.starts_with("Protocol ") => anyhow!(
            "the server at {server} does not offer --auth {} ({})",
            auth_name(args.auth),
            message.trim_end_matches('.')
        ),
        e @ (ClientError::Refused { .. }
        | ClientError::ServerSpeaksTls { .. }
        | ClientError::ServerSpeaksPlaintext { .. }) => explain(e, args),
        ClientError::Closed(_) if args.auth == AuthKind::Cert => anyhow!(
            "the server at {server} closed the connection after the TLS handshake\nhint: it \
             may not accept this client certificate: check its --tls-client-ca"
        ),
        e => anyhow!("login to {server} failed: {e}"),
    }
}

/// The user-facing error for a failed request after login, `what` naming the request.
pub fn explain_request(e: ClientError, args: &ConnectArgs, what: &str) -> anyhow::Error {
    let server = &args.server;
    match e {
        ClientError::Remote { message, .. }
            if args.auth == AuthKind::Cert && message.starts_with("Not authenticated") =>
        {
            let user = login_user(args).unwrap_or_default();
            anyhow!(
                "the server at {server} did not log in {user:?} by its certificate\nhint: the \
                 server needs --tls-client-ca with the CA that issued it, and a user named {user:?}"
            )
        }
        e @ (ClientError::Refused { .. }
        | ClientError::ServerSpeaksTls { .. }
        | ClientError::ServerSpeaksPlaintext { .. }) => explain(e, args),
        e => anyhow!("{what} failed: {e}"),
    }
}

/// `--auth`'s value as typed.
fn auth_name(auth: AuthKind) -> &'static str {
    match auth {
        AuthKind::Db => "db",
        AuthKind::Win => "win",
        AuthKind::Cert => "cert",
        AuthKind::Scram => "scram",
        AuthKind::Token => "token",
    }
}
