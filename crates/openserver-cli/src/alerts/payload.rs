//! What an alert says: the JSON a webhook receives and a command reads on stdin, and the
//! environment variables a command gets. `docs/OPERATIONS.md` documents both.

use openserver::auth::User;
use openserver::session::{CloseReason, SessionId};
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

/// One alert, for every sink.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Alert {
    /// One session that closed for a reason in `alerts.on`.
    Session(SessionAlert),
    /// What the rate limit held back over a while.
    Summary(SummaryAlert),
}

/// A session closed for a reason the operator asked to hear about.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SessionAlert {
    /// Always `session_closed`.
    pub event: &'static str,
    /// The close reason's label (`keep_alive_lost`, `io_error`, ...).
    pub reason: &'static str,
    /// The close reason in words, with the error for `io_error` and `protocol_error`.
    pub detail: String,
    /// Whether the connection was lost rather than closed by either side.
    pub lost: bool,
    /// The user logged in on the session; `null` if none was.
    pub user: Option<String>,
    /// That user's roles.
    pub roles: Vec<String>,
    /// The client's address and port.
    pub peer: String,
    /// The session id, as in the server's log lines.
    pub session: SessionId,
    /// When the server saw the close, RFC 3339 in UTC.
    pub at: String,
    /// How long the connection lasted.
    pub duration_secs: f64,
}

/// The alerts the rate limit held back, in one.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SummaryAlert {
    /// Always `summary`.
    pub event: &'static str,
    /// Sessions held back.
    pub count: u64,
    /// Those sessions by close reason.
    pub by_reason: BTreeMap<String, u64>,
    /// Some of their users (at most [`USERS_SAMPLE`], first seen first).
    pub users_sample: Vec<String>,
    /// The time from the first event held back to this summary.
    pub window_secs: f64,
    /// Session events the alerter missed because it fell behind the server (it cannot
    /// tell which were alerts).
    pub missed_events: u64,
    /// When the summary was made, RFC 3339 in UTC.
    pub at: String,
}

/// How many user names a summary carries.
pub const USERS_SAMPLE: usize = 10;

impl SessionAlert {
    /// The alert for a session that closed `at`.
    pub fn new(
        id: SessionId,
        peer: SocketAddr,
        user: Option<&User>,
        reason: &CloseReason,
        duration: Duration,
        at: SystemTime,
    ) -> Self {
        SessionAlert {
            event: "session_closed",
            reason: reason.label(),
            detail: reason.to_string(),
            lost: reason.is_lost(),
            user: user.map(|u| u.name.clone()),
            roles: user.map(|u| u.roles.clone()).unwrap_or_default(),
            peer: peer.to_string(),
            session: id,
            at: rfc3339(at),
            duration_secs: round_ms(duration),
        }
    }
}

impl Alert {
    /// The JSON body.
    pub fn to_json(&self) -> String {
        // Plain strings and numbers: serialization cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The environment variables of an alert command.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        match self {
            Alert::Session(a) => vec![
                ("OPENSERVER_EVENT", a.event.to_string()),
                ("OPENSERVER_REASON", a.reason.to_string()),
                ("OPENSERVER_USER", a.user.clone().unwrap_or_default()),
                ("OPENSERVER_ROLES", a.roles.join(",")),
                ("OPENSERVER_PEER", a.peer.clone()),
                ("OPENSERVER_SESSION", a.session.to_string()),
                ("OPENSERVER_AT", a.at.clone()),
                ("OPENSERVER_COUNT", "1".to_string()),
            ],
            Alert::Summary(s) => vec![
                ("OPENSERVER_EVENT", s.event.to_string()),
                ("OPENSERVER_REASON", join(s.by_reason.keys())),
                ("OPENSERVER_USER", s.users_sample.join(",")),
                ("OPENSERVER_ROLES", String::new()),
                ("OPENSERVER_PEER", String::new()),
                ("OPENSERVER_SESSION", String::new()),
                ("OPENSERVER_AT", s.at.clone()),
                ("OPENSERVER_COUNT", s.count.to_string()),
            ],
        }
    }

    /// A short description for log lines.
    pub fn describe(&self) -> String {
        match self {
            Alert::Session(a) => format!("session {} {}", a.session, a.reason),
            Alert::Summary(s) => format!("summary of {} sessions", s.count),
        }
    }
}

fn join<'a>(items: impl Iterator<Item = &'a String>) -> String {
    items.map(String::as_str).collect::<Vec<_>>().join(",")
}

/// `at` as RFC 3339 in UTC, to the millisecond.
pub fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}

/// Seconds, rounded to the millisecond so the JSON stays readable.
pub fn round_ms(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_alert_has_the_documented_fields() {
        let user = User {
            id: 1,
            name: "bob".into(),
            roles: vec!["ops".into(), "field".into()],
        };
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_736_154_843_513);
        let alert = Alert::Session(SessionAlert::new(
            17,
            "203.0.113.9:50514".parse().unwrap(),
            Some(&user),
            &CloseReason::KeepAliveLost,
            Duration::from_micros(12_345_678),
            at,
        ));
        let json: serde_json::Value = serde_json::from_str(&alert.to_json()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "event": "session_closed",
                "reason": "keep_alive_lost",
                "detail": "keep_alive_lost",
                "lost": true,
                "user": "bob",
                "roles": ["ops", "field"],
                "peer": "203.0.113.9:50514",
                "session": 17,
                "at": "2025-01-06T09:14:03.513Z",
                "duration_secs": 12.346,
            })
        );
        let env = alert.env();
        let get = |k: &str| env.iter().find(|(n, _)| *n == k).unwrap().1.clone();
        assert_eq!(get("OPENSERVER_ROLES"), "ops,field");
        assert_eq!(get("OPENSERVER_SESSION"), "17");
    }

    #[test]
    fn a_session_without_login_has_a_null_user() {
        let alert = Alert::Session(SessionAlert::new(
            3,
            "127.0.0.1:1".parse().unwrap(),
            None,
            &CloseReason::Io("Connection reset by peer".into()),
            Duration::ZERO,
            SystemTime::UNIX_EPOCH,
        ));
        let json: serde_json::Value = serde_json::from_str(&alert.to_json()).unwrap();
        assert!(json["user"].is_null());
        assert_eq!(json["detail"], "i/o error: Connection reset by peer");
        assert_eq!(json["at"], "1970-01-01T00:00:00.000Z");
    }
}
