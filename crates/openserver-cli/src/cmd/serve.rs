//! `openserver serve`: run the server.

use crate::cmd::reload::{Hangups, LogLevel, Reloader};
use crate::config::{FileConfig, LogFormat};
use crate::users::{StoreLocation, Users};
use anyhow::{Context as _, Result};
use clap::Args;
use openserver::auth::PasswordHasher;
use openserver::server::Server;
use openserver::tls::{self_signed, ServerTls};
use openserver::wire::Secret;
use rand::distributions::{Alphanumeric, DistString};
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Arguments of `openserver serve`; flags override the configuration file.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// TOML configuration file (see docs/CONFIG.md); without it, defaults apply.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:21843]; port 0 picks a free port.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Data directory holding users.db [default: ./openserver-data].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// The user store: postgres://USER@HOST:PORT/DB (password in the URL or PGPASSWORD),
    /// shared by every server given it, or sqlite:PATH [default: `[users] store` of
    /// --config, else users.db in the data directory].
    #[arg(long, value_name = "URL")]
    pub users: Option<String>,
    /// Join a cluster: the Redis every node shares, `redis://HOST:PORT` [default:
    /// `cluster.redis` of --config, else one node alone]. See docs/CLUSTER.md.
    #[arg(long, value_name = "URL")]
    pub cluster: Option<String>,
    /// This node's name in the cluster [default: `cluster.node_id`, else HOST-PORT].
    #[arg(long, value_name = "NAME")]
    pub node_id: Option<String>,
    /// Log every packet in and out in hex (passwords included: debugging only).
    #[arg(long)]
    pub log_packets: bool,
    /// TLS certificate chain (PEM); needs --tls-key. Default: a generated development
    /// certificate in DATA_DIR/tls/.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// CA (PEM) whose client certificates log in as the user their common name names.
    #[arg(long, value_name = "FILE")]
    pub tls_client_ca: Option<PathBuf>,
    /// Serve plaintext, for old clients and tests; refused on a non-loopback address unless
    /// --danger-allow-plaintext-non-loopback is also given.
    #[arg(long)]
    pub no_tls: bool,
    /// Allow --no-tls on a non-loopback address: passwords cross the network in the clear.
    #[arg(long)]
    pub danger_allow_plaintext_non_loopback: bool,
    /// Log line format on stderr [default: `[log] format` of --config, else text].
    #[arg(long, value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Serve Prometheus metrics on http://ADDR/metrics [default: `[metrics] listen` of
    /// --config, else off]. No authentication: keep it on loopback or a management network.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
    /// A load balancer (CIDR, or one address) whose connections start with a PROXY protocol
    /// header (v1 or v2) naming the client; repeatable, added to `server.trusted_proxies`.
    /// Connections from it without a valid header are closed; headers from other addresses
    /// are refused.
    #[arg(long = "trusted-proxy", value_name = "CIDR", value_parser = parse_trusted_proxy)]
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

/// `10.0.0.0/8`, or a single address such as `10.0.0.5` (its /32 or /128).
fn parse_trusted_proxy(value: &str) -> Result<ipnet::IpNet, String> {
    value
        .parse::<ipnet::IpNet>()
        .or_else(|_| value.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("{value:?} is neither a CIDR network (10.0.0.0/8) nor an IP address"))
}

/// Loads the configuration: file first, then flags.
pub fn effective_config(args: &ServeArgs) -> Result<FileConfig> {
    let mut config = match &args.config {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    if let Some(listen) = args.listen {
        config.server.listen = listen;
    }
    if let Some(dir) = &args.data_dir {
        config.data_dir = dir.clone();
    }
    if let Some(users) = &args.users {
        StoreLocation::parse(users).context("--users")?;
        config.users.store = Some(users.clone());
    }
    if let Some(url) = &args.cluster {
        config.cluster.redis = Some(url.clone());
    }
    if let Some(node) = &args.node_id {
        config.cluster.node_id = Some(node.clone());
    }
    config.cluster.validate()?;
    config.server.log_packets |= args.log_packets;
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        config.tls.cert = Some(cert.clone());
        config.tls.key = Some(key.clone());
    }
    if let Some(ca) = &args.tls_client_ca {
        config.tls.client_ca = Some(ca.clone());
    }
    if args.no_tls {
        config.tls.enabled = false;
    }
    config.tls.danger_allow_plaintext_non_loopback |= args.danger_allow_plaintext_non_loopback;
    if let Some(format) = args.log_format {
        config.log.format = format;
    }
    if let Some(addr) = args.metrics_listen {
        config.metrics.listen = Some(addr);
    }
    for net in &args.trusted_proxies {
        if !config.server.trusted_proxies.contains(net) {
            config.server.trusted_proxies.push(*net);
        }
    }
    config.check_tls()?;
    Ok(config)
}

/// Runs the server until SIGINT or SIGTERM, then drains and returns. On SIGHUP it reloads
/// the configuration as `args` load it (`cmd::reload`); `log` changes the log level.
pub async fn run(config: FileConfig, args: ServeArgs, log: LogLevel) -> Result<()> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data directory {}", config.data_dir.display()))?;
    let hasher = PasswordHasher::new(config.hash.clone()).context("invalid [hash] settings")?;
    let location = StoreLocation::resolve(None, &config)?;
    let store = Users::open(&location, hasher.clone(), &config).await?;
    tracing::info!(store = %location.describe(), "user store open");
    if !config.auth.scram {
        // A verifier nobody can use is only a cheaper target for whoever steals the users.
        let dropped = store.drop_scram_credentials().await?;
        if dropped > 0 {
            tracing::info!(
                users = dropped,
                "ScramAuth is off: deleted the stored SCRAM verifiers"
            );
        }
    }
    // Compute the unknown-user dummy hash now, not during the first login.
    hasher.warm_up().await?;
    create_first_admin(&store).await?;

    let mut builder = Server::builder(config.server.clone())
        .user_store(store.into_user_store())
        .hello()
        .channels(config.channels.clone());
    let broker = match config.cluster.broker_config(config.server.listen.port())? {
        Some(broker_config) => {
            let node = broker_config.node_id.clone();
            let broker = crate::cluster::connect(broker_config).await?;
            builder = builder.channel_broker(broker.clone());
            println!("cluster node {node}");
            Some(broker)
        }
        None => None,
    };
    if config.auth.scram {
        builder = builder.scram();
    }
    builder = builder.token_auth(config.auth.token.resolve()?);
    if config.admin.enabled {
        builder = builder.admin(config.admin.role.clone());
    }
    let tls = server_tls(&config)?;
    // Registered before `listening on` is printed, so that no SIGHUP is lost.
    let hangups = Hangups::register()?;
    if let Some(tls) = &tls {
        builder = builder.tls(tls.clone());
    } else {
        // `check_tls` has refused plaintext off loopback unless this was asked for.
        if config.tls.danger_allow_plaintext_non_loopback {
            builder = builder.danger_allow_plaintext_non_loopback();
        }
        tracing::warn!("TLS is off: passwords cross the network in the clear");
    }
    let server = builder
        .bind()
        .await
        .with_context(|| format!("cannot listen on {}", config.server.listen))?;
    // Subscribed before the server runs, so no session goes unseen.
    crate::alerts::start(&config.alerts, server.handle().events())?;
    if let Some(addr) = config.metrics.listen {
        let (addr, endpoint) = crate::metrics::bind(addr, server.handle()).await?;
        tokio::spawn(endpoint);
        // Before `listening on`, which stays the last startup line scripts wait for.
        println!("metrics on {addr}");
    }
    if let Some((addr, api)) =
        crate::http_api::bind(&config.http_api, tls.as_ref(), server.handle()).await?
    {
        tokio::spawn(api);
        tracing::info!(%addr, "HTTP API listening");
        println!("http api on {addr}");
    }
    let reloader = Reloader::new(
        move || effective_config(&args),
        config.clone(),
        server.handle(),
        tls,
        log,
    );
    tokio::spawn(reloader.run(hangups));
    let shutdown = shutdown_signal()?;
    // Scripts read this line to learn the real port.
    println!("listening on {}", server.local_addr());
    std::io::stdout().flush()?;
    server.run_until(shutdown).await?;
    if let Some(broker) = broker {
        // The sessions are gone: take them out of presence now rather than at lease expiry.
        if let Err(e) = broker.shutdown().await {
            tracing::warn!(error = %e, "could not leave the cluster cleanly; the lease expiry will");
        }
    }
    tracing::info!("stopped");
    Ok(())
}

/// Loads or generates the certificate; prints its fingerprint so clients can pin it.
fn server_tls(config: &FileConfig) -> Result<Option<ServerTls>> {
    let tls = &config.tls;
    if !tls.enabled {
        return Ok(None);
    }
    let (cert, key) = match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => (cert.clone(), key.clone()),
        _ => {
            let dir = config.data_dir.join("tls");
            let set = self_signed::ensure(&dir, &tls.names)
                .with_context(|| format!("cannot create a certificate in {}", dir.display()))?;
            if set.created {
                println!(
                    "generated a development TLS certificate; clients can trust {}",
                    set.ca.display()
                );
            }
            (set.cert, set.key)
        }
    };
    let server_tls = ServerTls::from_pem_files(&cert, &key, tls.client_ca.as_deref())?;
    println!("tls certificate sha256 {}", server_tls.fingerprint());
    Ok(Some(server_tls))
}

/// On a first start with no users, creates `admin` with a random password and prints it once
/// (once per store: of servers sharing one, only the first to start prints it).
async fn create_first_admin(store: &Users) -> Result<()> {
    if store.user_count().await? > 0 {
        return Ok(());
    }
    let password = Alphanumeric.sample_string(&mut rand::thread_rng(), 24);
    let added = store
        .add_user(
            "admin",
            &Secret::new(password.clone()),
            &["admin".to_string()],
        )
        .await;
    match added {
        Ok(_) => {
            println!("created user admin with password {password} (shown only this once)")
        }
        // Servers sharing a store that start together: another one created it first.
        Err(openserver::auth::AuthError::UserExists(_)) => {}
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

/// Registers SIGINT and SIGTERM handlers now (so a signal sent as soon as `listening on` is
/// printed is not lost) and returns a future that resolves on either.
#[cfg(unix)]
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => tracing::info!("SIGINT received"),
            _ = term.recv() => tracing::info!("SIGTERM received"),
        }
    })
}

/// Returns a future that resolves on Ctrl-C.
#[cfg(not(unix))]
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}
