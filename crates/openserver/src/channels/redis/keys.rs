//! Key and topic names. Channel names and node ids are escaped (`%XX` for every byte that is
//! not a letter, a digit or one of `-_.#@/+=!~`), so that `:`, the separator, never comes from
//! a name and every name has one key of each kind.

use std::fmt::Write;

fn plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-_.#@/+=!~".contains(&b)
}

/// `name` with every byte outside the plain set as `%XX`.
pub(crate) fn escape(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for &b in name.as_bytes() {
        if plain(b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// The name [`escape`] was given; `None` if `s` is not an escaped name.
pub(crate) fn unescape(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The names of one deployment (one prefix, one node).
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    prefix: String,
    /// The escaped node id.
    node: String,
    /// The topic of requests to every node (made once: checked for every message).
    commands: String,
    /// The topic of requests and answers to this node.
    own_commands: String,
}

/// The keys of one channel.
pub(crate) struct ChannelKeys {
    /// Hash: `epoch`, `top` (the last offset).
    pub meta: String,
    /// Stream: the kept publications, entry id `OFFSET-0`.
    pub stream: String,
    /// Hash: presence, field `NODE/SESSION`.
    pub presence: String,
    /// Pub/sub topic: publications, joins, leaves.
    pub topic: String,
}

impl Keys {
    pub(crate) fn new(prefix: &str, node: &str) -> Keys {
        let node = escape(node);
        Keys {
            commands: format!("{prefix}nodes:cmd"),
            own_commands: format!("{prefix}node:{node}:cmd"),
            prefix: prefix.to_string(),
            node,
        }
    }

    /// What every key starts with.
    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The escaped node id, as the node's keys and presence fields hold it.
    pub(crate) fn node(&self) -> &str {
        &self.node
    }

    /// The keys of `channel`. The scripts build the same from the escaped name; keep both in
    /// step (`scripts.rs`).
    pub(crate) fn channel(&self, channel: &str) -> ChannelKeys {
        let base = format!("{}ch:{}", self.prefix, escape(channel));
        ChannelKeys {
            meta: format!("{base}:meta"),
            stream: format!("{base}:stream"),
            presence: format!("{base}:presence"),
            topic: format!("{base}:pub"),
        }
    }

    /// The channel whose topic is `topic`, if it is one of ours.
    pub(crate) fn channel_of_topic(&self, topic: &str) -> Option<String> {
        let escaped = topic
            .strip_prefix(&self.prefix)?
            .strip_prefix("ch:")?
            .strip_suffix(":pub")?;
        unescape(escaped)
    }

    /// This node's presence field for `session` in a channel's presence hash.
    pub(crate) fn presence_field(&self, session: u64) -> String {
        format!("{}/{session}", self.node)
    }

    /// The set of live nodes' escaped ids (those with presence entries).
    pub(crate) fn nodes(&self) -> String {
        format!("{}nodes", self.prefix)
    }

    /// This node's lease (a string with this process's token, expiring).
    pub(crate) fn lease(&self) -> String {
        format!("{}node:{}:lease", self.prefix, self.node)
    }

    /// The set of this node's presence entries, members `SESSION ESCAPED_CHANNEL`.
    pub(crate) fn node_presence(&self) -> String {
        format!("{}node:{}:presence", self.prefix, self.node)
    }

    /// The pub/sub topic of requests to every node.
    pub(crate) fn commands(&self) -> &str {
        &self.commands
    }

    /// The pub/sub topic of requests and answers to the node whose escaped id is `node`.
    pub(crate) fn commands_of(&self, node: &str) -> String {
        format!("{}node:{node}:cmd", self.prefix)
    }

    /// This node's own [`commands_of`](Self::commands_of) topic.
    pub(crate) fn own_commands(&self) -> &str {
        &self.own_commands
    }

    /// The topic of this node's canary (the health check).
    pub(crate) fn canary(&self) -> String {
        format!("{}node:{}:canary", self.prefix, self.node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_escape_unambiguously_and_read_back() {
        for name in ["lobby", "chat:room 7", "#alice", "a%3Ab", "é:{x}", ""] {
            let e = escape(name);
            assert!(!e.contains(':') && !e.contains('{') && !e.contains(' '));
            assert_eq!(unescape(&e).as_deref(), Some(name));
        }
        assert_ne!(escape("a:b"), escape("a%3Ab"));
        assert_eq!(unescape("%4"), None);
        assert_eq!(unescape("%zz"), None);
        let keys = Keys::new("os:", "n 1");
        let ch = keys.channel("chat:lobby");
        assert_eq!(ch.meta, "os:ch:chat%3Alobby:meta");
        assert_eq!(
            keys.channel_of_topic(&ch.topic).as_deref(),
            Some("chat:lobby")
        );
        assert_eq!(keys.channel_of_topic("other:ch:x:pub"), None);
        assert_eq!(keys.lease(), "os:node:n%201:lease");
        assert_eq!(keys.presence_field(42), "n%201/42");
        assert_eq!(keys.commands(), "os:nodes:cmd");
        assert_eq!(keys.own_commands(), "os:node:n%201:cmd");
        assert_eq!(keys.commands_of("n%201"), keys.own_commands());
    }
}
