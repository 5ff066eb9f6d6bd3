//! `[cluster]` / `--cluster URL --node-id NAME`: several `serve` nodes as one service, their
//! channels on one Redis (`openserver::channels::RedisBroker`; docs/CLUSTER.md). Unset, the
//! node is alone with the in-memory broker.

use anyhow::{Context as _, Result};
use openserver::channels::{RedisBroker, RedisBrokerConfig};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

/// The `[cluster]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// The Redis all nodes share, `redis://[user:password@]HOST:PORT[/DB]` (`rediss://` for
    /// TLS); unset: one node.
    pub redis: Option<String>,
    /// With `rediss://`: the PEM file of the CA that signed Redis's certificate; unset, the
    /// system's trusted roots.
    pub tls_ca_file: Option<std::path::PathBuf>,
    /// This node's name among the nodes (stable across restarts, unique among live nodes).
    /// Unset: the machine's host name and the listening port.
    pub node_id: Option<String>,
    /// Prefix of every Redis key and topic, so that several services share one Redis.
    pub prefix: String,
    /// The longest one Redis command may take; also the readiness canary's bound.
    #[serde(with = "humantime_serde")]
    pub command_timeout: Duration,
    /// How often the node renews its lease in Redis.
    #[serde(with = "humantime_serde")]
    pub lease_renew: Duration,
    /// A node not heard from for this long is dead: its sessions leave presence.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        let broker = RedisBrokerConfig::default();
        ClusterConfig {
            redis: None,
            tls_ca_file: None,
            node_id: None,
            prefix: broker.prefix,
            command_timeout: broker.command_timeout,
            lease_renew: broker.lease_renew,
            lease_ttl: broker.lease_ttl,
        }
    }
}

impl ClusterConfig {
    /// The broker's settings, for a node listening on `port`; `None` without `redis`.
    pub fn broker_config(&self, port: u16) -> Result<Option<RedisBrokerConfig>> {
        let Some(url) = &self.redis else {
            return Ok(None);
        };
        let node_id = match &self.node_id {
            Some(id) => id.clone(),
            None => default_node_id(port),
        };
        let config = RedisBrokerConfig {
            node_id,
            prefix: self.prefix.clone(),
            command_timeout: self.command_timeout,
            lease_renew: self.lease_renew,
            lease_ttl: self.lease_ttl,
            tls_ca_file: self.tls_ca_file.clone(),
            ..RedisBrokerConfig::new(url.clone())
        };
        config
            .validate()
            .map_err(|e| anyhow::anyhow!("[cluster]: {e}"))?;
        Ok(Some(config))
    }

    /// Checks what can be checked without connecting.
    pub fn validate(&self) -> Result<()> {
        if self.node_id.is_some() && self.redis.is_none() {
            anyhow::bail!("cluster.node_id is set but cluster.redis is not: a node id names a node of a cluster; set cluster.redis (--cluster) too");
        }
        self.broker_config(1).map(|_| ())
    }
}

/// `HOST-PORT`: stable across restarts of a node on a fixed port, distinct between nodes of
/// one machine. Port 0 (a test's free port) gets a random suffix instead.
fn default_node_id(port: u16) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty() && !h.contains(char::is_whitespace))
        .unwrap_or_else(|| "node".to_string());
    if port == 0 {
        format!("{host}-{:08x}", rand::random::<u32>())
    } else {
        format!("{host}-{port}")
    }
}

/// Connects the broker; the error names the Redis and what to check.
pub async fn connect(config: RedisBrokerConfig) -> Result<Arc<RedisBroker>> {
    let node = config.node_id.clone();
    RedisBroker::connect(config)
        .await
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("cannot join the cluster as node {node:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_section_becomes_the_brokers_settings_and_bad_ones_are_named() {
        assert_eq!(ClusterConfig::default().broker_config(1).unwrap(), None);
        let tls = ClusterConfig {
            redis: Some("rediss://db:6380/".into()),
            tls_ca_file: Some("/etc/openserver/redis-ca.pem".into()),
            node_id: Some("n1".into()),
            ..ClusterConfig::default()
        };
        let broker = tls.broker_config(21841).unwrap().unwrap();
        assert_eq!(broker.node_id, "n1");
        assert!(broker.is_tls());
        assert_eq!(broker.tls_ca_file, tls.tls_ca_file);
        let plain_with_ca = ClusterConfig {
            redis: Some("redis://db:6379/".into()),
            ..tls.clone()
        };
        let err = plain_with_ca.validate().unwrap_err().to_string();
        assert!(
            err.contains("[cluster]") && err.contains("rediss://"),
            "{err}"
        );
        let lone_id = ClusterConfig {
            node_id: Some("n1".into()),
            ..ClusterConfig::default()
        };
        assert!(lone_id
            .validate()
            .unwrap_err()
            .to_string()
            .contains("cluster.redis"));
    }
}
