//! Alerts on lost connections: the administrator hears about a lost client before the
//! application notices.
//!
//! A task follows the server's [`SessionEvent`]s. A session that closes for a reason in
//! `alerts.on` (by default the two that mean a lost connection: `keep_alive_lost` and
//! `io_error`), for a user in `alerts.users` or holding a role in `alerts.roles` (both empty:
//! everybody who logged in), becomes an [`Alert`]. Sessions that never logged in alert only
//! with `alerts.anonymous = true`: otherwise anyone who can reach the port could spend the
//! alert budget by resetting connections and push a real user's alert into a late summary. The [`limiter`] lets `max_per_minute` of them through
//! and folds the rest into one summary per `summary_interval`. Each sink (`webhook.rs`,
//! `command.rs`) has its own task and bounded queue, so a slow sink delays neither the
//! server nor the other sink.

pub mod command;
pub mod limiter;
pub mod payload;
pub mod webhook;

use anyhow::{bail, Result};
use command::CommandSink;
use limiter::{Limiter, Verdict};
use openserver::auth::User;
use openserver::server::SessionEvent;
use openserver::session::CloseReason;
use payload::{Alert, SessionAlert};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;
use webhook::Webhook;

/// Alerts waiting for one sink. Alerts are rate-limited, so this many means the sink has
/// been stuck for minutes; more are dropped (and logged).
const SINK_QUEUE: usize = 64;

/// The close reasons `alerts.on` accepts: every [`CloseReason::label`].
pub const CLOSE_REASONS: [&str; 12] = CloseReason::LABELS;

/// `[alerts]`: where alerts go, about what, how many.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlertsConfig {
    /// `http://` or `https://` URL that each alert is POSTed to as JSON; absent: none.
    pub webhook: Option<String>,
    /// CA certificates (PEM) trusted for an `https` webhook instead of the system's.
    pub webhook_ca: Option<PathBuf>,
    /// Program and arguments run once per alert; empty: none.
    pub command: Vec<String>,
    /// Close reasons that alert.
    pub on: Vec<String>,
    /// Only sessions of these users (with `roles`: of these users or roles).
    pub users: Vec<String>,
    /// Only sessions of users holding one of these roles.
    pub roles: Vec<String>,
    /// Also alert on sessions that never logged in (only while `users` and `roles` are
    /// empty). Off by default: strangers would share the budget with real users.
    pub anonymous: bool,
    /// Single alerts in any 60 seconds; the rest go into summaries. 0: summaries only.
    pub max_per_minute: u32,
    /// How long a summary gathers what the rate limit holds back.
    #[serde(with = "humantime_serde")]
    pub summary_interval: Duration,
    /// Bound on one webhook attempt, and on one run of the command.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            webhook: None,
            webhook_ca: None,
            command: Vec::new(),
            on: vec!["keep_alive_lost".into(), "io_error".into()],
            users: Vec::new(),
            roles: Vec::new(),
            anonymous: false,
            max_per_minute: 10,
            summary_interval: Duration::from_secs(60),
            timeout: Duration::from_secs(10),
        }
    }
}

impl AlertsConfig {
    /// Checks the values; errors name the key.
    pub fn validate(&self) -> Result<()> {
        if let Some(url) = &self.webhook {
            webhook::parse_url(url)?;
        }
        if self.webhook_ca.is_some() && self.webhook.is_none() {
            bail!("alerts.webhook_ca is set but alerts.webhook is not");
        }
        if self.command.first().is_some_and(|p| p.trim().is_empty()) {
            bail!("alerts.command must start with a program");
        }
        if let Some(bad) = self
            .on
            .iter()
            .find(|r| !CLOSE_REASONS.contains(&r.as_str()))
        {
            bail!(
                "alerts.on: unknown close reason {bad:?} (known: {})",
                CLOSE_REASONS.join(", ")
            );
        }
        if self.summary_interval.is_zero() {
            bail!("alerts.summary_interval must be longer than zero");
        }
        if self.timeout.is_zero() {
            bail!("alerts.timeout must be longer than zero");
        }
        Ok(())
    }

    /// Whether any sink is configured.
    pub fn enabled(&self) -> bool {
        self.webhook.is_some() || !self.command.is_empty()
    }
}

/// Which closed sessions alert.
#[derive(Debug, Clone)]
struct Filter {
    on: HashSet<String>,
    users: HashSet<String>,
    roles: HashSet<String>,
    anonymous: bool,
}

impl Filter {
    fn new(config: &AlertsConfig) -> Self {
        Filter {
            on: config.on.iter().cloned().collect(),
            users: config.users.iter().cloned().collect(),
            roles: config.roles.iter().cloned().collect(),
            anonymous: config.anonymous,
        }
    }

    fn matches(&self, reason: &CloseReason, user: Option<&User>) -> bool {
        if !self.on.contains(reason.label()) {
            return false;
        }
        let Some(user) = user else {
            return self.anonymous && self.users.is_empty() && self.roles.is_empty();
        };
        if self.users.is_empty() && self.roles.is_empty() {
            return true;
        }
        self.users.contains(&user.name) || user.roles.iter().any(|r| self.roles.contains(r))
    }
}

/// Starts the alert tasks on `events` if a sink is configured. Call before the server runs,
/// so no event is missed. Fails on a configuration that cannot work (an unreadable
/// `webhook_ca`).
pub fn start(config: &AlertsConfig, events: broadcast::Receiver<SessionEvent>) -> Result<()> {
    if !config.enabled() {
        return Ok(());
    }
    let mut sinks = Vec::new();
    if let Some(url) = &config.webhook {
        let hook = Webhook::new(url, config.webhook_ca.as_deref(), config.timeout)?;
        let (tx, rx) = sink_queue();
        tokio::spawn(hook.run(rx));
        sinks.push(("webhook", tx));
    }
    if !config.command.is_empty() {
        let command = CommandSink::new(config.command.clone(), config.timeout);
        let (tx, rx) = sink_queue();
        tokio::spawn(command.run(rx));
        sinks.push(("command", tx));
    }
    let dispatcher = Dispatcher {
        filter: Filter::new(config),
        limiter: Limiter::new(config.max_per_minute, config.summary_interval),
        sinks,
    };
    tokio::spawn(dispatcher.run(events));
    tracing::info!(
        // Scheme, host and port only: the path or query may carry the hook's token.
        webhook = config
            .webhook
            .as_deref()
            .and_then(|url| url.parse().ok())
            .map(|uri| webhook::display_url(&uri))
            .unwrap_or_default(),
        command = config.command.first().map_or("", String::as_str),
        on = ?config.on,
        "alerts on"
    );
    Ok(())
}

/// One sink's queue: bounded, so a stuck sink costs at most [`SINK_QUEUE`] alerts of memory.
fn sink_queue() -> (mpsc::Sender<Alert>, mpsc::Receiver<Alert>) {
    mpsc::channel(SINK_QUEUE)
}

/// Turns events into alerts and hands them to the sinks.
struct Dispatcher {
    filter: Filter,
    limiter: Limiter,
    sinks: Vec<(&'static str, mpsc::Sender<Alert>)>,
}

impl Dispatcher {
    async fn run(mut self, mut events: broadcast::Receiver<SessionEvent>) {
        loop {
            let due = self.limiter.due();
            // Far enough to never fire; the branch is disabled without a due summary anyway.
            let wake = due.unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400));
            tokio::select! {
                event = events.recv() => match event {
                    Ok(event) => self.on_event(event),
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "alerts fell behind the server's session events; the next summary counts them");
                        self.limiter.missed(Instant::now(), n);
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                () = tokio::time::sleep_until(wake), if due.is_some() => self.flush(),
            }
        }
        // The server is gone: what was held still goes out.
        self.flush();
    }

    fn on_event(&mut self, event: SessionEvent) {
        let SessionEvent::Closed {
            id,
            peer,
            user,
            reason,
            duration,
            ..
        } = event
        else {
            return;
        };
        self.on_closed(id, peer, user, reason, duration);
    }

    /// A session closed: an alert if the filter takes it and the budget allows.
    fn on_closed(
        &mut self,
        id: openserver::session::SessionId,
        peer: std::net::SocketAddr,
        user: Option<User>,
        reason: CloseReason,
        duration: Duration,
    ) {
        if !self.filter.matches(&reason, user.as_ref()) {
            return;
        }
        let name = user.as_ref().map(|u| u.name.as_str());
        match self.limiter.offer(Instant::now(), reason.label(), name) {
            Verdict::Send => {
                let alert = SessionAlert::new(
                    id,
                    peer,
                    user.as_ref(),
                    &reason,
                    duration,
                    SystemTime::now(),
                );
                self.dispatch(Alert::Session(alert));
            }
            Verdict::Held => {}
        }
    }

    fn flush(&mut self) {
        if let Some(summary) = self.limiter.take_summary(Instant::now(), SystemTime::now()) {
            self.dispatch(Alert::Summary(summary));
        }
    }

    fn dispatch(&self, alert: Alert) {
        for (sink, queue) in &self.sinks {
            if queue.try_send(alert.clone()).is_err() {
                tracing::error!(
                    sink,
                    alert = alert.describe(),
                    "alert sink is stuck (queue full); alert dropped"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str, roles: &[&str]) -> User {
        User {
            id: 1,
            name: name.into(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
        }
    }

    fn session_alert(id: u64) -> Alert {
        Alert::Session(payload::SessionAlert::new(
            id,
            "127.0.0.1:5".parse().unwrap(),
            None,
            &CloseReason::KeepAliveLost,
            Duration::from_secs(1),
            SystemTime::now(),
        ))
    }

    #[tokio::test]
    async fn a_stuck_sink_loses_alerts_past_its_queue_and_holds_up_nobody() {
        let (stuck, mut stuck_rx) = sink_queue();
        let (healthy, mut healthy_rx) = sink_queue();
        let dispatcher = Dispatcher {
            filter: Filter::new(&AlertsConfig::default()),
            limiter: Limiter::new(1000, Duration::from_secs(60)),
            sinks: vec![("command", stuck), ("webhook", healthy)],
        };
        let total = SINK_QUEUE as u64 + 20;
        let mut delivered = Vec::new();
        for id in 0..total {
            // Never waits, though one sink reads nothing.
            dispatcher.dispatch(session_alert(id));
            while let Ok(alert) = healthy_rx.try_recv() {
                delivered.push(alert);
            }
        }
        assert_eq!(
            delivered.len() as u64,
            total,
            "the healthy sink got every alert"
        );
        // The stuck one holds the first SINK_QUEUE alerts; the rest were dropped, not queued.
        assert_eq!(stuck_rx.len(), SINK_QUEUE);
        let first = stuck_rx.try_recv().unwrap();
        assert_eq!(first.describe(), session_alert(0).describe());
    }

    #[test]
    fn defaults_alert_on_lost_connections_of_logged_in_users() {
        let config = AlertsConfig::default();
        assert!(!config.enabled());
        config.validate().unwrap();
        let f = Filter::new(&config);
        assert!(f.matches(&CloseReason::KeepAliveLost, Some(&user("a", &[]))));
        assert!(f.matches(&CloseReason::Io("reset".into()), Some(&user("a", &[]))));
        assert!(!f.matches(&CloseReason::Quit, Some(&user("a", &[]))));
        // A stranger's reset connection does not alert, so strangers cannot use up the budget.
        assert!(!f.matches(&CloseReason::Io("reset".into()), None));
        assert!(!f.matches(&CloseReason::KeepAliveLost, None));

        let f = Filter::new(&AlertsConfig {
            anonymous: true,
            ..AlertsConfig::default()
        });
        assert!(f.matches(&CloseReason::Io("reset".into()), None));
        assert!(!f.matches(&CloseReason::Idle, None));
    }

    #[tokio::test]
    async fn strangers_do_not_hold_back_a_users_alert() {
        let (tx, mut alerts) = mpsc::channel(64);
        let config = AlertsConfig::default();
        let mut dispatcher = Dispatcher {
            filter: Filter::new(&config),
            limiter: Limiter::new(config.max_per_minute, config.summary_interval),
            sinks: vec![("test", tx)],
        };
        let mut closed = |id, user: Option<User>| {
            dispatcher.on_closed(
                id,
                "192.0.2.9:4000".parse().unwrap(),
                user,
                CloseReason::Io("connection reset".into()),
                Duration::from_secs(1),
            )
        };
        for id in 0..15 {
            closed(id, None);
        }
        closed(99, Some(user("alice", &[])));
        let Some(Alert::Session(first)) = alerts.try_recv().ok() else {
            panic!("the user's lost connection alerts at once");
        };
        assert_eq!((first.session, first.user.as_deref()), (99, Some("alice")));
        assert!(alerts.try_recv().is_err(), "strangers sent nothing");
    }

    #[test]
    fn users_and_roles_narrow_it_down() {
        let config = AlertsConfig {
            users: vec!["alice".into()],
            roles: vec!["field".into()],
            ..AlertsConfig::default()
        };
        let f = Filter::new(&config);
        let lost = CloseReason::KeepAliveLost;
        assert!(f.matches(&lost, Some(&user("alice", &[]))));
        assert!(f.matches(&lost, Some(&user("bob", &["ops", "field"]))));
        assert!(!f.matches(&lost, Some(&user("bob", &["ops"]))));
        assert!(!f.matches(&lost, None));
    }

    #[tokio::test]
    async fn the_start_line_shows_no_webhook_secret() {
        let (events, rx) = broadcast::channel(4);
        let config = AlertsConfig {
            webhook: Some("http://127.0.0.1:9/hook/T0KEN?key=S3CRET".into()),
            ..AlertsConfig::default()
        };
        let ((), text) = webhook::tests::logged(async { start(&config, rx).unwrap() }).await;
        assert!(text.contains("alerts on"), "{text}");
        assert!(text.contains("http://127.0.0.1:9"), "{text}");
        assert!(
            !text.contains("T0KEN") && !text.contains("S3CRET"),
            "{text}"
        );
        drop(events);
    }

    #[test]
    fn every_close_reason_label_is_known() {
        let reasons = [
            CloseReason::Quit,
            CloseReason::PeerClosed,
            CloseReason::Local,
            CloseReason::Kicked,
            CloseReason::Idle,
            CloseReason::AuthTimeout,
            CloseReason::AuthFailures,
            CloseReason::KeepAliveLost,
            CloseReason::SlowConsumer,
            CloseReason::ProtocolError(String::new()),
            CloseReason::Io(String::new()),
            CloseReason::Shutdown,
        ];
        assert_eq!(reasons.map(|r| r.label()), CLOSE_REASONS);
    }

    #[test]
    fn bad_values_are_named() {
        let check = |config: AlertsConfig, key: &str| {
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains(key), "{err}");
        };
        check(
            AlertsConfig {
                on: vec!["keepalive_lost".into()],
                ..AlertsConfig::default()
            },
            "alerts.on",
        );
        check(
            AlertsConfig {
                webhook: Some("ftp://x".into()),
                ..AlertsConfig::default()
            },
            "alerts.webhook",
        );
        check(
            AlertsConfig {
                summary_interval: Duration::ZERO,
                ..AlertsConfig::default()
            },
            "alerts.summary_interval",
        );
        check(
            AlertsConfig {
                command: vec![String::new()],
                ..AlertsConfig::default()
            },
            "alerts.command",
        );
    }
}
