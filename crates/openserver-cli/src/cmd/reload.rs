//! SIGHUP: re-read the configuration and apply what can change without a restart.
//!
//! Applied: the TLS certificate and key (re-read from their files), `server.limits` except
//! `listen_backlog`, `server.keep_alive`, and `log.level`; each to what starts after the
//! reload (new connections, keep-alives started later), never to sessions already open.
//! Users need nothing: the store is read on every login. Every other changed key is named in
//! a warning and ignored until a restart. A file that does not load changes nothing.

use crate::config::FileConfig;
use anyhow::Result;
use openserver::server::ServerHandle;
use openserver::tls::ServerTls;
use std::collections::BTreeSet;

/// Installs a new log filter, such as `"info,openserver=debug"`.
type SetFilter = Box<dyn Fn(&str) -> Result<()> + Send + Sync>;

/// Changes the log filter of the running process.
pub struct LogLevel {
    /// `None` when `RUST_LOG` decides the filter.
    set: Option<SetFilter>,
}

impl LogLevel {
    /// A log level that `set` changes.
    pub fn reloadable(set: impl Fn(&str) -> Result<()> + Send + Sync + 'static) -> Self {
        LogLevel {
            set: Some(Box::new(set)),
        }
    }

    /// A log level fixed for the process's life (`RUST_LOG` set).
    pub fn fixed() -> Self {
        LogLevel { set: None }
    }
}

/// Re-reads the configuration on SIGHUP and applies it to a running server.
pub struct Reloader {
    /// Loads the configuration as at start: the file, then the command line's flags.
    load: Box<dyn Fn() -> Result<FileConfig> + Send + Sync>,
    /// The configuration in force (what the last reload applied, not what it read).
    current: FileConfig,
    handle: ServerHandle,
    tls: Option<ServerTls>,
    log: LogLevel,
}

impl Reloader {
    /// A reloader for the server behind `handle`, started with `current`.
    pub fn new(
        load: impl Fn() -> Result<FileConfig> + Send + Sync + 'static,
        current: FileConfig,
        handle: ServerHandle,
        tls: Option<ServerTls>,
        log: LogLevel,
    ) -> Self {
        Reloader {
            load: Box::new(load),
            current,
            handle,
            tls,
            log,
        }
    }

    /// Reloads on every SIGHUP until the signal stream ends.
    pub async fn run(mut self, mut hangups: Hangups) {
        while hangups.recv().await {
            tracing::info!("SIGHUP received: reloading the configuration");
            self.reload();
        }
    }

    /// One reload: load, then apply what can change now and name what cannot.
    pub fn reload(&mut self) {
        let new = match (self.load)() {
            Ok(new) => new,
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "configuration reload failed; nothing changed");
                return;
            }
        };
        if let Some(tls) = &self.tls {
            match tls.reload() {
                Ok(()) => {
                    tracing::info!(fingerprint = %tls.fingerprint(), "TLS certificate reloaded")
                }
                Err(e) => {
                    tracing::error!(error = %e, "TLS certificate reload failed; keeping the old one")
                }
            }
        }
        let changed = changed_keys(&self.current, &new);
        let (applied, ignored): (Vec<&String>, Vec<&String>) =
            changed.iter().partition(|key| reloadable(key));
        let section = |prefix: &str| applied.iter().any(|key| key.starts_with(prefix));
        if section("server.limits.") {
            let mut limits = new.server.limits.clone();
            // Fixed when the socket started listening.
            limits.listen_backlog = self.current.server.limits.listen_backlog;
            match self.handle.set_limits(limits.clone()) {
                Ok(()) => self.current.server.limits = limits,
                Err(e) => tracing::error!(error = %e, "limits not reloaded"),
            }
        }
        if section("server.keep_alive.") {
            match self.handle.set_keep_alive(new.server.keep_alive) {
                Ok(()) => self.current.server.keep_alive = new.server.keep_alive,
                Err(e) => tracing::error!(error = %e, "keep-alive timing not reloaded"),
            }
        }
        if section("log.level") {
            match &self.log.set {
                Some(set) => match set(&new.log.level) {
                    Ok(()) => self.current.log.level = new.log.level.clone(),
                    Err(e) => tracing::error!(error = %format!("{e:#}"), "log level not reloaded"),
                },
                None => {
                    tracing::warn!("RUST_LOG is set and overrides log.level; log level unchanged")
                }
            }
        }
        if !ignored.is_empty() {
            let keys = ignored
                .iter()
                .map(|k| k.as_str())
                .collect::<Vec<_>>()
                .join(", ");
            tracing::warn!(settings = %keys, "changed settings need a restart; ignored until then");
        }
        let applied = applied
            .iter()
            .map(|k| k.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        tracing::info!(applied = %applied, "configuration reloaded");
    }
}

/// Whether a changed key takes effect without a restart.
fn reloadable(key: &str) -> bool {
    (key.starts_with("server.limits.") && key != "server.limits.listen_backlog")
        || key.starts_with("server.keep_alive.")
        || key == "log.level"
}

/// The dotted keys whose values differ between `old` and `new` (set in one, unset in the
/// other included), in key order. Computed on the serialized form, so sections added to the
/// file later are covered without code here.
fn changed_keys(old: &FileConfig, new: &FileConfig) -> Vec<String> {
    let (Ok(old), Ok(new)) = (toml::Value::try_from(old), toml::Value::try_from(new)) else {
        // Both serialize (`config check` prints them); should they not, nothing is
        // known to have changed and nothing is applied.
        return Vec::new();
    };
    let mut out = Vec::new();
    diff("", &old, &new, &mut out);
    out
}

fn diff(prefix: &str, old: &toml::Value, new: &toml::Value, out: &mut Vec<String>) {
    let empty = toml::Table::new();
    match (old, new) {
        (toml::Value::Table(a), toml::Value::Table(b)) => {
            let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for key in keys {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                match (a.get(key), b.get(key)) {
                    (Some(x), Some(y)) => diff(&path, x, y, out),
                    (Some(x), None) => diff(&path, x, &toml::Value::Table(empty.clone()), out),
                    (None, Some(y)) => diff(&path, &toml::Value::Table(empty.clone()), y, out),
                    (None, None) => {}
                }
            }
        }
        (a, b) if a != b => out.push(prefix.to_string()),
        _ => {}
    }
}

/// SIGHUPs, registered before the server announces itself so that none is lost.
pub struct Hangups {
    #[cfg(unix)]
    signal: tokio::signal::unix::Signal,
}

impl Hangups {
    /// Registers the SIGHUP handler now.
    #[cfg(unix)]
    pub fn register() -> Result<Hangups> {
        use anyhow::Context as _;
        use tokio::signal::unix::{signal, SignalKind};
        let signal = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
        Ok(Hangups { signal })
    }

    /// Without SIGHUP (not Unix), nothing ever arrives.
    #[cfg(not(unix))]
    pub fn register() -> Result<Hangups> {
        Ok(Hangups {})
    }

    /// Waits for the next SIGHUP; `false` once no more can come.
    async fn recv(&mut self) -> bool {
        #[cfg(unix)]
        {
            self.signal.recv().await.is_some()
        }
        #[cfg(not(unix))]
        {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openserver::server::Server;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    #[test]
    fn changed_keys_are_dotted_and_cover_unset_values() {
        let old = FileConfig::default();
        let mut new = FileConfig::default();
        new.server.limits.idle_timeout = Duration::from_secs(1);
        new.server.realm = "CORP".into();
        new.tls.cert = Some("c.pem".into());
        new.tls.key = Some("k.pem".into());
        assert_eq!(
            changed_keys(&old, &new),
            vec![
                "server.limits.idle_timeout",
                "server.realm",
                "tls.cert",
                "tls.key"
            ]
        );
        assert!(changed_keys(&old, &old).is_empty());
        assert!(reloadable("server.limits.idle_timeout"));
        assert!(!reloadable("server.limits.listen_backlog"));
        assert!(reloadable("server.keep_alive.interval"));
        assert!(reloadable("log.level"));
        assert!(!reloadable("log.format"));
        assert!(!reloadable("server.listen"));
    }

    #[tokio::test]
    async fn reload_applies_limits_keep_alive_and_level_and_survives_bad_files() {
        let mut start = FileConfig::default();
        start.server.listen = "127.0.0.1:0".parse().unwrap();
        let server = Server::builder(start.server.clone()).bind().await.unwrap();
        let handle = server.handle();
        // What the "file" holds at each reload; an Err is a file that does not load.
        let file: Arc<Mutex<Result<FileConfig, String>>> = Arc::new(Mutex::new(Ok(start.clone())));
        let levels = Arc::new(Mutex::new(Vec::new()));
        let log = {
            let levels = levels.clone();
            LogLevel::reloadable(move |level| {
                levels.lock().unwrap().push(level.to_string());
                Ok(())
            })
        };
        let mut reloader = Reloader::new(
            {
                let file = file.clone();
                move || file.lock().unwrap().clone().map_err(anyhow::Error::msg)
            },
            start.clone(),
            handle.clone(),
            None,
            log,
        );

        let mut edited = start.clone();
        edited.server.limits.max_frame_authenticated = 8192;
        edited.server.limits.listen_backlog = 1;
        edited.server.keep_alive.interval = Duration::from_secs(3);
        edited.log.level = "debug".into();
        edited.data_dir = "/elsewhere".into();
        *file.lock().unwrap() = Ok(edited.clone());
        reloader.reload();
        assert_eq!(handle.limits().max_frame_authenticated, 8192);
        assert_eq!(
            handle.limits().listen_backlog,
            start.server.limits.listen_backlog,
            "the backlog is fixed at bind"
        );
        assert_eq!(
            handle.keep_alive().unwrap().interval,
            Duration::from_secs(3)
        );
        assert_eq!(*levels.lock().unwrap(), vec!["debug".to_string()]);
        // What was not applied still counts as a change next time.
        assert_eq!(
            changed_keys(&reloader.current, &edited),
            vec!["data_dir", "server.limits.listen_backlog"]
        );

        *file.lock().unwrap() = Err("line 1: broken".into());
        reloader.reload();
        assert_eq!(handle.limits().max_frame_authenticated, 8192);
        assert_eq!(levels.lock().unwrap().len(), 1);
        drop(server);
    }
}
