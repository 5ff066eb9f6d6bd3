//! Client settings.

use crate::protocol::keepalive::KeepAliveConfig;
use crate::tls::ClientTls;
use std::time::Duration;

/// How a [`Client`](super::Client) connects and behaves.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ClientConfig {
    /// Heartbeat timing once [`start_keep_alive`](super::Client::start_keep_alive) is called.
    pub keep_alive: KeepAliveConfig,
    /// Largest frame payload accepted from the server.
    pub max_frame: usize,
    /// Frames that may wait to be written, and packets that may wait in a subscription.
    pub queue_depth: usize,
    /// How long the server may take to accept one batch of writes.
    pub write_timeout: Duration,
    /// How long a request waits for its answer.
    pub request_timeout: Duration,
    /// How long a TCP connect may take.
    pub connect_timeout: Duration,
    /// TLS settings; `None` speaks plaintext.
    pub tls: Option<ClientTls>,
    /// Reconnect after a lost connection; off unless set.
    pub reconnect: Option<ReconnectPolicy>,
    /// Log every packet in and out, in hex.
    pub log_packets: bool,
    /// With [`reconnect`](Self::reconnect) on: after each login, ask a server that offers
    /// TokenAuth (7) for a resume token, and log in with it after a reconnect (falling back
    /// to the remembered login if it is refused), so that a crowd reconnecting after a node
    /// failure costs the servers no password hashing. On by default.
    pub resume_tokens: bool,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            keep_alive: KeepAliveConfig::default(),
            max_frame: 16 * 1024 * 1024,
            queue_depth: 1024,
            write_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            tls: None,
            reconnect: None,
            log_packets: false,
            resume_tokens: true,
        }
    }
}

impl ClientConfig {
    /// Turns on reconnecting with `policy`.
    pub fn with_reconnect(mut self, policy: ReconnectPolicy) -> Self {
        self.reconnect = Some(policy);
        self
    }

    /// Connects with TLS.
    pub fn with_tls(mut self, tls: ClientTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Sets the heartbeat timing.
    pub fn with_keep_alive(mut self, keep_alive: KeepAliveConfig) -> Self {
        self.keep_alive = keep_alive;
        self
    }

    /// Sets how long a request waits for its answer.
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Sets the largest frame payload accepted from the server.
    pub fn with_max_frame(mut self, max_frame: usize) -> Self {
        self.max_frame = max_frame;
        self
    }

    /// Sets how many frames may wait to be written, and how many packets a subscription
    /// keeps before it drops its oldest (at least one).
    pub fn with_queue_depth(mut self, queue_depth: usize) -> Self {
        self.queue_depth = queue_depth.max(1);
        self
    }

    /// Sets how long the server may take to accept one batch of writes.
    pub fn with_write_timeout(mut self, timeout: Duration) -> Self {
        self.write_timeout = timeout;
        self
    }

    /// Sets how long a TCP connect (and the TLS handshake) may take.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Logs every packet in and out, in hex (`true`), or not.
    pub fn with_log_packets(mut self, log_packets: bool) -> Self {
        self.log_packets = log_packets;
        self
    }
}

/// Exponential backoff between reconnect attempts.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReconnectPolicy {
    /// Wait before the first attempt.
    pub initial_delay: Duration,
    /// The wait doubles after each failed attempt up to this.
    pub max_delay: Duration,
    /// Give up after this many failed attempts in a row; `None` tries forever.
    pub max_attempts: Option<u32>,
}

impl Default for ReconnectPolicy {
    fn default() -> Self {
        ReconnectPolicy {
            initial_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
            max_attempts: None,
        }
    }
}

impl ReconnectPolicy {
    /// A policy with the given first and longest delay, retrying forever.
    pub fn new(initial_delay: Duration, max_delay: Duration) -> Self {
        ReconnectPolicy {
            initial_delay,
            max_delay,
            max_attempts: None,
        }
    }

    /// Gives up after `attempts` failures in a row.
    pub fn with_max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = Some(attempts);
        self
    }

    /// The wait before attempt `n` (0-based), with up to 25% random jitter so a crowd of
    /// clients does not reconnect in lockstep after a server restart.
    pub fn delay(&self, attempt: u32) -> Duration {
        let base = self
            .initial_delay
            .saturating_mul(2u32.saturating_pow(attempt.min(31)))
            .min(self.max_delay);
        let jitter = rand::random::<f64>() * 0.25;
        base.mul_f64(1.0 - jitter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let p = ReconnectPolicy::new(Duration::from_millis(100), Duration::from_secs(1));
        let d0 = p.delay(0);
        assert!(d0 <= Duration::from_millis(100) && d0 >= Duration::from_millis(75));
        let d3 = p.delay(3);
        assert!(d3 <= Duration::from_millis(800) && d3 >= Duration::from_millis(600));
        assert!(p.delay(30) <= Duration::from_secs(1));
    }
}
