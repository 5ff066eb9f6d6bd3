//! Admin (protocol 5, openserver only): list the server's sessions and kick one. Added with
//! [`ServerBuilder::admin`](crate::server::ServerBuilder::admin); only users holding the
//! configured role reach it (the driver checks [`Protocol::required_role`] before every
//! packet).

use super::{HandlerError, Protocol, ProtocolHandler};
use crate::session::{Session, SessionId};
use crate::wire::admin::{AdminMessage, SessionInfo};
use crate::wire::{protocol_id, Message};
use async_trait::async_trait;
use bytes::Bytes;
use std::sync::Arc;

/// The server's open sessions, as Admin sees them. Defined here and implemented by the
/// server's session registry, so that this protocol does not import the server.
pub(crate) trait SessionDirectory: Send + Sync + 'static {
    /// The open session with this id.
    fn get(&self, id: SessionId) -> Option<Session>;

    /// Every open session.
    fn snapshot(&self) -> Vec<Session>;
}

/// The server side of Admin.
pub struct Admin {
    /// The server's open sessions.
    registry: Arc<dyn SessionDirectory>,
    /// The role a user needs.
    role: String,
}

impl Admin {
    /// Admin over `registry`, for users holding `role`.
    pub(crate) fn new(registry: Arc<dyn SessionDirectory>, role: String) -> Self {
        Admin { registry, role }
    }
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin").field("role", &self.role).finish()
    }
}

impl Protocol for Admin {
    fn id(&self) -> u16 {
        protocol_id::ADMIN
    }

    fn name(&self) -> &'static str {
        "admin"
    }

    fn required_role(&self) -> Option<&str> {
        Some(&self.role)
    }

    fn new_handler(&self, _session: &Session) -> Box<dyn ProtocolHandler> {
        Box::new(AdminHandler {
            registry: self.registry.clone(),
        })
    }
}

/// Per-session Admin state: none beyond the registry.
struct AdminHandler {
    registry: Arc<dyn SessionDirectory>,
}

#[async_trait]
impl ProtocolHandler for AdminHandler {
    async fn on_packet(&mut self, session: &Session, body: Bytes) -> Result<(), HandlerError> {
        match AdminMessage::decode(&body)? {
            AdminMessage::List => {
                let sessions = self.list();
                session
                    .send_message(&AdminMessage::Sessions(sessions))
                    .await?;
            }
            AdminMessage::Kick { session_id } => self.kick(session, session_id).await?,
            _ => {
                return Err(HandlerError::Rejected(
                    "only LIST and KICK are accepted from a client".into(),
                ))
            }
        }
        Ok(())
    }
}

impl AdminHandler {
    /// Every open session, ascending by id.
    fn list(&self) -> Vec<SessionInfo> {
        let mut sessions: Vec<SessionInfo> = self
            .registry
            .snapshot()
            .into_iter()
            .map(|s| SessionInfo {
                id: s.id(),
                user: s.user().map(|u| u.name).unwrap_or_default(),
                peer: s.peer().to_string(),
                since: s.since(),
                last_activity: s.last_activity(),
                protocols: s.protocols(),
            })
            .collect();
        sessions.sort_unstable_by_key(|s| s.id);
        sessions
    }

    async fn kick(&self, admin: &Session, session_id: u64) -> Result<(), HandlerError> {
        let Some(target) = self.registry.get(session_id) else {
            admin
                .send_message(&AdminMessage::NotFound { session_id })
                .await?;
            return Ok(());
        };
        tracing::info!(
            by = admin.user().map(|u| u.name).unwrap_or_default(),
            kicked = session_id,
            kicked_user = target.user().map(|u| u.name).unwrap_or_default(),
            kicked_peer = %target.peer(),
            "session kicked"
        );
        let answer = AdminMessage::Kicked { session_id };
        if target.id() == admin.id() {
            // Kicking oneself: answer before the session closes, or the answer is lost.
            admin.send_message(&answer).await?;
            target.kick();
        } else {
            target.kick();
            admin.send_message(&answer).await?;
        }
        Ok(())
    }
}
