//! Channel settings: namespaces (who may subscribe and publish, history, presence, the most
//! subscribers), personal channels, and the limits per session. `docs/CONFIG.md` (section
//! `[channels]`) documents every key.

use super::broker::HistoryOptions;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// Who may do something on a channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Access {
    /// Any logged-in user (`"users"`).
    Users,
    /// Users holding this role (`"role:NAME"`).
    Role(String),
    /// Only server code (`"server"`): no client.
    Server,
}

impl TryFrom<String> for Access {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        match s.as_str() {
            "users" => Ok(Access::Users),
            "server" => Ok(Access::Server),
            _ => match s.strip_prefix("role:") {
                Some(role) if !role.is_empty() => Ok(Access::Role(role.to_string())),
                _ => Err(format!(
                    "{s:?} is not an access rule: use \"users\", \"server\" or \"role:NAME\""
                )),
            },
        }
    }
}

impl From<Access> for String {
    fn from(access: Access) -> String {
        match access {
            Access::Users => "users".into(),
            Access::Server => "server".into(),
            Access::Role(role) => format!("role:{role}"),
        }
    }
}

/// One namespace: the rules of every channel named `NAMESPACE:...` (or of channels without a
/// `:`, for the default namespace).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NamespaceConfig {
    /// Who may subscribe (and read presence and history).
    pub subscribe: Access,
    /// Who may publish from a client; server code always may.
    pub publish: Access,
    /// Publications kept per channel for history and recovery; 0 keeps none (a client that
    /// resubscribes after missing any is told they cannot be recovered).
    pub history_size: usize,
    /// How long a publication is kept.
    #[serde(with = "humantime_serde")]
    pub history_ttl: Duration,
    /// Keep who is subscribed, for presence queries.
    pub presence: bool,
    /// Push join and leave events to the channel's subscribers. Off by default: each join is
    /// pushed to every subscriber, so N sessions joining one channel cost N²/2 pushes (50
    /// million for 10,000), which only small rooms can afford.
    pub join_leave: bool,
    /// Sessions subscribed to one channel at most (on this server).
    pub max_subscribers: usize,
}

impl Default for NamespaceConfig {
    fn default() -> Self {
        NamespaceConfig {
            subscribe: Access::Users,
            publish: Access::Users,
            history_size: 100,
            history_ttl: Duration::from_secs(300),
            presence: true,
            join_leave: false,
            max_subscribers: 100_000,
        }
    }
}

impl NamespaceConfig {
    /// The defaults of personal channels (`#user`): only server code publishes, and nobody
    /// else is there to see presence or joins.
    pub fn personal() -> Self {
        NamespaceConfig {
            publish: Access::Server,
            presence: false,
            max_subscribers: 1_000,
            ..NamespaceConfig::default()
        }
    }

    pub(crate) fn history(&self, meta_ttl: Duration) -> HistoryOptions {
        HistoryOptions {
            size: self.history_size,
            ttl: self.history_ttl,
            meta_ttl: meta_ttl.max(self.history_ttl),
        }
    }
}

/// Everything about channels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChannelsConfig {
    /// The namespace of channel names without a `:`.
    pub default: NamespaceConfig,
    /// Named namespaces: `chat` rules `chat:lobby`. A channel of a namespace not listed is
    /// refused.
    pub namespaces: BTreeMap<String, NamespaceConfig>,
    /// Personal channels, `#alice`: only alice's sessions may subscribe (and only if
    /// `subscribe` allows them too).
    pub personal: NamespaceConfig,
    /// Channels one session may be subscribed to at once.
    pub max_channels_per_session: usize,
    /// Longest channel name, in bytes, namespace included.
    pub max_channel_name: usize,
    /// Largest publication's data, in bytes.
    pub max_publication: usize,
    /// Publications one session may make per second (a burst of as many is allowed).
    pub publishes_per_second: u32,
    /// Most publications one history request returns.
    pub max_history_limit: usize,
    /// How long a channel's epoch and last offset outlive its last publication (at least the
    /// namespace's `history_ttl`), so that a client that missed nothing is not told its
    /// position is from another epoch.
    #[serde(with = "humantime_serde")]
    pub history_meta_ttl: Duration,
}

impl Default for ChannelsConfig {
    fn default() -> Self {
        ChannelsConfig {
            default: NamespaceConfig::default(),
            namespaces: BTreeMap::new(),
            personal: NamespaceConfig::personal(),
            max_channels_per_session: 128,
            max_channel_name: 255,
            max_publication: 64 * 1024,
            publishes_per_second: 50,
            max_history_limit: 1_000,
            history_meta_ttl: Duration::from_secs(3600),
        }
    }
}

impl ChannelsConfig {
    /// Checks every value; the error names the setting.
    pub fn validate(&self) -> Result<(), String> {
        for (name, ns) in &self.namespaces {
            let valid = !name.is_empty()
                && name.len() <= 64
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
            if !valid {
                return Err(format!(
                    "channels.namespaces: {name:?} is not a namespace name (1-64 of a-z, 0-9, \
                     _, - and .)"
                ));
            }
            validate_namespace(&format!("channels.namespaces.{name}"), ns)?;
        }
        validate_namespace("channels.default", &self.default)?;
        validate_namespace("channels.personal", &self.personal)?;
        let positive = [
            ("max_channels_per_session", self.max_channels_per_session),
            ("max_channel_name", self.max_channel_name),
            ("max_publication", self.max_publication),
            ("publishes_per_second", self.publishes_per_second as usize),
            ("max_history_limit", self.max_history_limit),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(format!("channels.{key} must be at least 1"));
            }
        }
        if self.max_channel_name > 4096 {
            return Err("channels.max_channel_name must be at most 4096".into());
        }
        Ok(())
    }
}

fn validate_namespace(key: &str, ns: &NamespaceConfig) -> Result<(), String> {
    if ns.max_subscribers == 0 {
        return Err(format!("{key}.max_subscribers must be at least 1"));
    }
    if ns.history_size > 0 && ns.history_ttl.is_zero() {
        return Err(format!(
            "{key}.history_ttl must be more than 0 when history_size is set"
        ));
    }
    if ns.history_size > 1_000_000 {
        return Err(format!("{key}.history_size must be at most 1000000"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_rules_read_and_write_as_strings() {
        for (text, access) in [
            ("users", Access::Users),
            ("server", Access::Server),
            ("role:ops", Access::Role("ops".into())),
        ] {
            assert_eq!(Access::try_from(text.to_string()), Ok(access.clone()));
            assert_eq!(String::from(access), text);
        }
        assert!(Access::try_from("role:".to_string())
            .unwrap_err()
            .contains("not an access rule"));
        assert!(Access::try_from("everyone".to_string()).is_err());
    }

    #[test]
    fn the_defaults_are_valid_and_bad_values_are_named() {
        let config = ChannelsConfig::default();
        assert_eq!(config.validate(), Ok(()));
        assert_eq!(config.default.history_size, 100);
        assert_eq!(config.default.history_ttl, Duration::from_secs(300));
        assert!(config.default.presence);
        assert!(!config.default.join_leave);
        let mut bad = config.clone();
        bad.namespaces
            .insert("no spaces".into(), NamespaceConfig::default());
        assert!(bad.validate().unwrap_err().contains("\"no spaces\""));
        let mut bad = config.clone();
        bad.max_publication = 0;
        assert!(bad.validate().unwrap_err().contains("max_publication"));
        let mut bad = config;
        bad.default.max_subscribers = 0;
        assert!(bad
            .validate()
            .unwrap_err()
            .contains("channels.default.max_subscribers"));
    }
}
