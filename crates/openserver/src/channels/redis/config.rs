//! The Redis broker's settings.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// How a [`RedisBroker`](super::RedisBroker) reaches Redis and keeps its node's lease.
/// `docs/CLUSTER.md` ("Channels on Redis") explains each setting.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisBrokerConfig {
    /// The Redis server: `redis://[user:password@]host[:port][/db]`, or `rediss://...` for
    /// TLS (the server's certificate checked against `tls_ca_file`, or the system's roots).
    /// Standalone Redis 7 or later; not Redis Cluster.
    pub url: String,
    /// With a `rediss://` URL: the PEM file of the CA that signed Redis's certificate (a
    /// private CA); unset, the system's trusted roots. Refused with a `redis://` URL, where it
    /// would be silently unused.
    pub tls_ca_file: Option<std::path::PathBuf>,
    /// This node's name among the nodes sharing the Redis: its presence entries and lease are
    /// filed under it. Keep it stable across restarts (a restarted node then removes the
    /// presence its previous life left at once, instead of after the lease expires); two live
    /// nodes must never share one. Default: `node-` and 8 random hex digits.
    pub node_id: String,
    /// Prefix of every key and pub/sub topic, so that several services share one Redis.
    pub prefix: String,
    /// The longest any one Redis command may take before it fails (as a broker error).
    #[serde(with = "humantime_serde")]
    pub command_timeout: Duration,
    /// The longest a connection to Redis may take to open.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How often the node renews its lease, and checks its pub/sub connection with a canary
    /// (two lost in a row while commands work: the connection is reopened).
    #[serde(with = "humantime_serde")]
    pub lease_renew: Duration,
    /// How long a lease lasts without renewal: a node not heard from for this long is taken
    /// for dead, and its sessions are removed from presence (with leave events).
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// How often this node looks for dead nodes' leases. A dead node's sessions leave presence
    /// at most `lease_ttl + sweep_every` after its last renewal.
    #[serde(with = "humantime_serde")]
    pub sweep_every: Duration,
    /// The first wait before reconnecting the pub/sub connection; doubled after each failed
    /// attempt up to `reconnect_max_delay`.
    #[serde(with = "humantime_serde")]
    pub reconnect_delay: Duration,
    /// The longest wait between two reconnection attempts.
    #[serde(with = "humantime_serde")]
    pub reconnect_max_delay: Duration,
}

/// The URL without user and password, for messages and logs.
pub(crate) fn redact(url: &str) -> String {
    match (url.split_once("://"), url.rsplit_once('@')) {
        (Some((scheme, _)), Some((_, host))) => format!("{scheme}://{host}"),
        _ => url.to_string(),
    }
}

impl std::fmt::Debug for RedisBrokerConfig {
    /// As derived, but the URL without its password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBrokerConfig")
            .field("url", &redact(&self.url))
            .field("tls_ca_file", &self.tls_ca_file)
            .field("node_id", &self.node_id)
            .field("prefix", &self.prefix)
            .field("command_timeout", &self.command_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("lease_renew", &self.lease_renew)
            .field("lease_ttl", &self.lease_ttl)
            .field("sweep_every", &self.sweep_every)
            .field("reconnect_delay", &self.reconnect_delay)
            .field("reconnect_max_delay", &self.reconnect_max_delay)
            .finish()
    }
}

impl Default for RedisBrokerConfig {
    fn default() -> Self {
        RedisBrokerConfig {
            url: "redis://127.0.0.1:6379/".into(),
            tls_ca_file: None,
            node_id: format!("node-{:08x}", rand::random::<u32>()),
            prefix: "openserver:".into(),
            command_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(2),
            lease_renew: Duration::from_secs(2),
            lease_ttl: Duration::from_secs(6),
            sweep_every: Duration::from_secs(1),
            reconnect_delay: Duration::from_millis(100),
            reconnect_max_delay: Duration::from_secs(5),
        }
    }
}

impl RedisBrokerConfig {
    /// The default settings for the Redis at `url`.
    pub fn new(url: impl Into<String>) -> Self {
        RedisBrokerConfig {
            url: url.into(),
            ..Self::default()
        }
    }

    /// Whether the URL asks for TLS (`rediss://`).
    pub fn is_tls(&self) -> bool {
        self.url
            .get(..9)
            .is_some_and(|s| s.eq_ignore_ascii_case("rediss://"))
    }

    /// Checks the settings; `Err` says which one is wrong and how to fix it.
    pub fn validate(&self) -> Result<(), String> {
        if self.tls_ca_file.is_some() && !self.is_tls() {
            return Err(format!(
                "tls_ca_file is set but the Redis URL {} is not rediss://: use rediss:// for \
                 TLS, or drop tls_ca_file",
                redact(&self.url)
            ));
        }
        if self.node_id.is_empty()
            || self
                .node_id
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(format!(
                "node id {:?} must be non-empty, without white space or control characters",
                self.node_id
            ));
        }
        if self
            .prefix
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(format!(
                "key prefix {:?} must not hold white space or control characters",
                self.prefix
            ));
        }
        for (name, d) in [
            ("command_timeout", self.command_timeout),
            ("connect_timeout", self.connect_timeout),
            ("lease_renew", self.lease_renew),
            ("sweep_every", self.sweep_every),
            ("reconnect_delay", self.reconnect_delay),
        ] {
            if d.is_zero() {
                return Err(format!("{name} must be more than 0"));
            }
        }
        if self.lease_ttl < self.lease_renew * 2 {
            return Err(format!(
                "lease_ttl ({:?}) must be at least twice lease_renew ({:?}), or a node that is \
                 merely slow is taken for dead",
                self.lease_ttl, self.lease_renew
            ));
        }
        if self.reconnect_max_delay < self.reconnect_delay {
            return Err("reconnect_max_delay must be at least reconnect_delay".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_settings_are_named() {
        let c = RedisBrokerConfig::default();
        c.validate().unwrap();
        assert_ne!(c.node_id, RedisBrokerConfig::default().node_id);
        let bad = RedisBrokerConfig {
            lease_ttl: Duration::from_secs(3),
            ..c.clone()
        };
        assert!(bad.validate().unwrap_err().contains("lease_ttl"));
        let bad = RedisBrokerConfig {
            node_id: "a b".into(),
            ..c.clone()
        };
        assert!(bad.validate().unwrap_err().contains("node id"));
        let bad = RedisBrokerConfig {
            command_timeout: Duration::ZERO,
            ..c
        };
        assert!(bad.validate().unwrap_err().contains("command_timeout"));
        let bad = RedisBrokerConfig {
            tls_ca_file: Some("ca.pem".into()),
            ..RedisBrokerConfig::new("redis://db:6379")
        };
        assert!(bad.validate().unwrap_err().contains("rediss://"));
        let tls = RedisBrokerConfig {
            tls_ca_file: Some("ca.pem".into()),
            ..RedisBrokerConfig::new("rediss://db:6379")
        };
        tls.validate().unwrap();
        assert!(tls.is_tls() && !RedisBrokerConfig::new("redis://x").is_tls());
        let secret = RedisBrokerConfig::new("redis://u:hunter2@db:6379/0");
        assert!(!format!("{secret:?}").contains("hunter2"));
        assert_eq!(redact("redis://u:secret@db:6379/0"), "redis://db:6379/0");
        assert_eq!(redact("redis://db:6379"), "redis://db:6379");
    }
}
