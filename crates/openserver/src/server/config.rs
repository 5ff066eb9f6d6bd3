//! Server settings. Every limit has a safe default and a knob; `docs/CONFIG.md` lists them.

use crate::protocol::keepalive::KeepAliveConfig;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::time::Duration;

/// The default TCP port of DotNetOpenServer, kept so existing clients need no change.
pub const DEFAULT_PORT: u16 = 21843;

/// Everything a [`Server`](super::Server) needs to know.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on. Port 0 picks a free port.
    pub listen: SocketAddr,
    /// WinAuth accepts an empty domain or this one (case-insensitive). Empty: only empty.
    pub realm: String,
    /// Log every packet in and out, in hex (the original's LogPackets). Passwords included:
    /// for debugging only.
    pub log_packets: bool,
    /// Connection, frame, queue and time limits.
    pub limits: Limits,
    /// Heartbeat timing for sessions that run keep-alive.
    pub keep_alive: KeepAliveConfig,
    /// Defences against password guessing and floods of connections that never log in.
    pub security: Security,
    /// Load balancers (CIDR networks, such as `10.0.0.5/32`) whose connections start with a
    /// PROXY protocol header (v1 or v2) naming the client; the client's address is then the
    /// session's peer everywhere. A connection from one of them without a valid header is
    /// closed, and a header from any other address is refused. Empty (the default): no
    /// PROXY headers.
    pub trusted_proxies: Vec<IpNet>,
    /// Read every string as UTF-8 and refuse one that is not, instead of learning from such a
    /// string that the peer writes one byte per char (the DotNetOpenServer Java and
    /// Objective-C clients) and answering it that way.
    pub strict_utf8: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT)),
            realm: String::new(),
            log_packets: false,
            limits: Limits::default(),
            keep_alive: KeepAliveConfig::default(),
            security: Security::default(),
            trusted_proxies: Vec::new(),
            strict_utf8: false,
        }
    }
}

/// Limits that keep one peer, or many, from exhausting the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Connections open at once; further connections are closed on accept.
    pub max_connections: usize,
    /// Connections open at once from one IP address.
    pub max_connections_per_ip: usize,
    /// The listen backlog: connections the kernel queues before they are accepted.
    pub listen_backlog: u32,
    /// Largest frame payload before authentication, in bytes.
    pub max_frame_unauthenticated: usize,
    /// Largest frame payload after authentication, in bytes.
    pub max_frame_authenticated: usize,
    /// Frames that may wait in one session's outbound queue.
    pub outbound_queue: usize,
    /// How long the peer may take to accept one batch of writes before it counts as a slow
    /// consumer and is disconnected.
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    /// A session from which nothing arrives for this long is closed.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// A TLS handshake that has not completed this long after accept is abandoned.
    #[serde(with = "humantime_serde")]
    pub tls_handshake_timeout: Duration,
    /// A session that has not authenticated this long after accept is closed.
    #[serde(with = "humantime_serde")]
    pub auth_timeout: Duration,
    /// On shutdown, how long sessions get to drain before the server returns anyway.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Largest PROXY protocol header accepted from a trusted proxy, in bytes (v1 headers are
    /// at most 107 by their specification); a longer one closes the connection before it is
    /// read. Its time is `tls_handshake_timeout`.
    pub max_proxy_header: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 50_000,
            // Carrier-grade NAT puts thousands of phones behind one address, so this is high;
            // it still keeps a single address from taking more than 2% of the server.
            max_connections_per_ip: 1_000,
            listen_backlog: 4096,
            // A login needs well under 2 KiB (names <= 256 bytes, passwords <= 1024).
            max_frame_unauthenticated: 4 * 1024,
            max_frame_authenticated: 16 * 1024 * 1024,
            outbound_queue: 1024,
            write_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(300),
            tls_handshake_timeout: Duration::from_secs(5),
            auth_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(10),
            // The PROXY specification's buffer for a v2 header with addresses and a few TLVs.
            max_proxy_header: 536,
        }
    }
}

/// Defences against password guessing and against floods of connections that never log in.
/// `docs/SECURITY.md` explains each one and the server it follows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Security {
    /// Denied logins one connection may make; the last denial is still sent, then the
    /// connection is closed (sshd `MaxAuthTries`).
    pub max_auth_failures: u32,
    /// Connections accepted but not yet logged in, at most; more are closed on accept (sshd
    /// `MaxStartups`, its "full" value).
    pub max_unauthenticated: usize,
    /// From this many connections not yet logged in, new ones are dropped at random, with a
    /// chance rising linearly from 0 here to 1 at `max_unauthenticated` (sshd `MaxStartups`,
    /// its "start" value). Equal to `max_unauthenticated`: no early drop, a plain cap.
    pub unauthenticated_drop_start: usize,
    /// Connections not yet logged in from one source (an IPv4 address or an IPv6 /64).
    pub max_unauthenticated_per_ip: usize,
    /// Penalise sources that fail logins (sshd `PerSourcePenalties`): while penalised, their
    /// new connections are closed on accept and their logins are denied.
    pub penalties: bool,
    /// Failed logins a source may make before penalties start.
    pub penalty_free_failures: u32,
    /// The first penalty; it doubles with every further failed login.
    #[serde(with = "humantime_serde")]
    pub penalty_initial: Duration,
    /// The longest penalty. A source quiet for this long after its penalty ends is forgotten.
    #[serde(with = "humantime_serde")]
    pub penalty_max: Duration,
    /// Sources the penalty table remembers at once; when full, those closest to being
    /// forgotten are dropped first.
    pub penalty_max_sources: usize,
    /// Connections refused on accept (penalty, caps) that are told why at once: each gets a
    /// fixed one-frame notice and is kept for at most 2 s so the notice arrives. More
    /// refusals at the same time are closed without a word; 0 closes every one that way.
    pub refusal_notices: usize,
}

impl Default for Security {
    fn default() -> Self {
        Security {
            max_auth_failures: 3,
            max_unauthenticated: 1024,
            unauthenticated_drop_start: 512,
            max_unauthenticated_per_ip: 32,
            penalties: true,
            penalty_free_failures: 3,
            penalty_initial: Duration::from_secs(1),
            penalty_max: Duration::from_secs(300),
            penalty_max_sources: 65_536,
            refusal_notices: 64,
        }
    }
}

impl Security {
    /// Checks the `[server.security]` settings, naming the one at fault.
    fn validate(&self) -> Result<(), String> {
        let positive = [
            (
                "security.max_auth_failures",
                self.max_auth_failures as usize,
            ),
            ("security.max_unauthenticated", self.max_unauthenticated),
            (
                "security.max_unauthenticated_per_ip",
                self.max_unauthenticated_per_ip,
            ),
            ("security.penalty_max_sources", self.penalty_max_sources),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(format!("{name} must be at least 1"));
            }
        }
        if self.unauthenticated_drop_start > self.max_unauthenticated {
            return Err(
                "security.unauthenticated_drop_start must not exceed security.max_unauthenticated"
                    .into(),
            );
        }
        if self.penalty_initial.is_zero() {
            return Err("security.penalty_initial must be longer than zero".into());
        }
        if self.penalty_max < self.penalty_initial {
            return Err(
                "security.penalty_max must not be shorter than security.penalty_initial".into(),
            );
        }
        // Longer is a ban, better done by a firewall; the bound also keeps instant arithmetic
        // in the penalty table far from overflow.
        if self.penalty_max > Duration::from_secs(24 * 3600) {
            return Err("security.penalty_max must be at most 24h".into());
        }
        Ok(())
    }
}

impl Limits {
    /// Checks values that would make the server unusable, naming the setting.
    pub fn validate(&self) -> Result<(), String> {
        let l = self;
        let positive = [
            ("limits.max_connections", l.max_connections),
            ("limits.max_connections_per_ip", l.max_connections_per_ip),
            ("limits.listen_backlog", l.listen_backlog as usize),
            ("limits.outbound_queue", l.outbound_queue),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(format!("{name} must be at least 1"));
            }
        }
        if !(108..=65_551).contains(&l.max_proxy_header) {
            return Err(
                "limits.max_proxy_header must be between 108 (a v1 header) and 65551 (the v2 maximum)"
                    .into(),
            );
        }
        if l.max_frame_unauthenticated < 2 || l.max_frame_authenticated < 2 {
            return Err("limits.max_frame_* must be at least 2 bytes".into());
        }
        if l.max_frame_unauthenticated > l.max_frame_authenticated {
            return Err(
                "limits.max_frame_unauthenticated must not exceed limits.max_frame_authenticated"
                    .into(),
            );
        }
        if l.max_frame_authenticated > i32::MAX as usize {
            return Err(format!(
                "limits.max_frame_authenticated must be at most {}",
                i32::MAX
            ));
        }
        let durations = [
            ("limits.write_timeout", l.write_timeout),
            ("limits.idle_timeout", l.idle_timeout),
            ("limits.auth_timeout", l.auth_timeout),
            ("limits.tls_handshake_timeout", l.tls_handshake_timeout),
        ];
        for (name, value) in durations {
            if value.is_zero() {
                return Err(format!("{name} must be longer than zero"));
            }
        }
        Ok(())
    }
}

impl ServerConfig {
    /// Checks values that would make the server unusable, naming the setting.
    pub fn validate(&self) -> Result<(), String> {
        self.limits.validate()?;
        validate_keep_alive(&self.keep_alive)?;
        self.security.validate()?;
        Ok(())
    }
}

/// Checks the `[server.keep_alive]` timing, naming the setting at fault.
pub(crate) fn validate_keep_alive(keep_alive: &KeepAliveConfig) -> Result<(), String> {
    let durations = [
        ("keep_alive.interval", keep_alive.interval),
        ("keep_alive.timeout", keep_alive.timeout),
    ];
    for (name, value) in durations {
        if value.is_zero() {
            return Err(format!("{name} must be longer than zero"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        ServerConfig::default().validate().unwrap();
    }

    #[test]
    fn zero_limits_are_named() {
        let mut c = ServerConfig::default();
        c.limits.outbound_queue = 0;
        assert!(c.validate().unwrap_err().contains("outbound_queue"));
    }

    #[test]
    fn security_settings_are_checked() {
        let check = |edit: fn(&mut Security)| {
            let mut c = ServerConfig::default();
            edit(&mut c.security);
            c.validate()
        };
        assert!(check(|s| s.max_auth_failures = 0)
            .unwrap_err()
            .contains("max_auth_failures"));
        assert!(
            check(|s| s.unauthenticated_drop_start = s.max_unauthenticated + 1)
                .unwrap_err()
                .contains("unauthenticated_drop_start")
        );
        assert!(check(|s| s.penalty_max = Duration::from_millis(10))
            .unwrap_err()
            .contains("penalty_max"));
        assert!(
            check(|s| s.penalty_max = Duration::from_secs(2 * 24 * 3600))
                .unwrap_err()
                .contains("24h")
        );
        check(|s| s.unauthenticated_drop_start = s.max_unauthenticated).unwrap();
        check(|s| s.unauthenticated_drop_start = 0).unwrap();
    }
}
