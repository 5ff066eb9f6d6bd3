//! Admin (protocol 5, openserver only): list the server's sessions and kick one, on this
//! node or on every node of a cluster (LIST_ALL, KICK_ON). Added with
//! [`ServerBuilder::admin`](crate::server::ServerBuilder::admin); only users holding the
//! configured role reach it. The driver checks [`Protocol::required_role`] against the
//! login-time user before every packet; with a user store, every command is also checked
//! against the store as it is now, so a user deleted or demoted after logging in loses Admin
//! on sessions that are already open.

use super::{HandlerError, Protocol, ProtocolHandler};
use crate::auth::UserStore;
use crate::session::{Session, SessionId};
use crate::wire::admin::{AdminMessage, NodeSessionInfo, SessionInfo};
use crate::wire::{protocol_id, Message};
use async_trait::async_trait;
use bytes::Bytes;
use std::sync::Arc;

/// The server's open sessions, and those of the other nodes of its cluster, as Admin sees
/// them. Defined here and implemented by the server's cluster handle, so that this protocol
/// does not import the server.
#[async_trait]
pub(crate) trait SessionDirectory: Send + Sync + 'static {
    /// The open session of this node with this id.
    fn get(&self, id: SessionId) -> Option<Session>;

    /// Every open session of this node.
    fn snapshot(&self) -> Vec<Session>;

    /// Every node's sessions (this node's too), at most `max_per_node` of each (0: the
    /// default), with how many nodes did not answer in time and how many sessions were left
    /// out. `Err` says why the other nodes could not be asked.
    async fn all_sessions(
        &self,
        max_per_node: usize,
    ) -> Result<(Vec<NodeSessionInfo>, u32, u32), String>;

    /// Kicks session `id` of `node` (another node; this node's are kicked through
    /// [`get`](Self::get)); whether it was open. `Err`: the node could not be asked, or did
    /// not answer.
    async fn kick_on(&self, node: &str, id: SessionId) -> Result<bool, String>;

    /// This node's id in its cluster; `None` outside one.
    fn node_id(&self) -> Option<String>;
}

/// The server side of Admin.
pub struct Admin {
    /// The server's open sessions.
    registry: Arc<dyn SessionDirectory>,
    /// The role a user needs.
    role: Arc<str>,
    /// Where the role is checked again before every command; `None` on a server without a
    /// store (only certificate-less custom logins), where the login-time roles stand.
    store: Option<Arc<dyn UserStore>>,
}

impl Admin {
    /// Admin over `registry`, for users holding `role` in `store` (or, without a store, at
    /// login).
    pub(crate) fn new(
        registry: Arc<dyn SessionDirectory>,
        role: String,
        store: Option<Arc<dyn UserStore>>,
    ) -> Self {
        Admin {
            registry,
            role: role.into(),
            store,
        }
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
            role: self.role.clone(),
            store: self.store.clone(),
        })
    }
}

/// Per-session Admin state: the registry, and what the role is checked against.
struct AdminHandler {
    registry: Arc<dyn SessionDirectory>,
    role: Arc<str>,
    store: Option<Arc<dyn UserStore>>,
}

#[async_trait]
impl ProtocolHandler for AdminHandler {
    async fn on_packet(&mut self, session: &Session, body: Bytes) -> Result<(), HandlerError> {
        let message = AdminMessage::decode(&body)?;
        self.check_role(session).await?;
        match message {
            AdminMessage::List => {
                let sessions = self.list();
                session
                    .send_message(&AdminMessage::Sessions(sessions))
                    .await?;
            }
            AdminMessage::Kick { session_id } => self.kick(session, session_id).await?,
            AdminMessage::ListAll { max_per_node } => {
                let (sessions, unanswered, omitted) = self
                    .registry
                    .all_sessions(max_per_node as usize)
                    .await
                    .map_err(HandlerError::Rejected)?;
                session
                    .send_message(&AdminMessage::AllSessions {
                        sessions,
                        unanswered,
                        omitted,
                    })
                    .await?;
            }
            AdminMessage::KickOn { node, session_id } => {
                let here = node.is_empty() || self.registry.node_id().is_some_and(|n| n == node);
                if here {
                    self.kick(session, session_id).await?;
                } else {
                    self.kick_on(session, &node, session_id).await?;
                }
            }
            _ => {
                return Err(HandlerError::Rejected(
                    "only LIST, KICK, LIST_ALL and KICK_ON are accepted from a client".into(),
                ))
            }
        }
        Ok(())
    }
}

impl AdminHandler {
    /// Checks that the session's user still exists in the store, as the same account (same
    /// id), and still holds the role: the login-time copy the driver checked may be stale.
    async fn check_role(&self, session: &Session) -> Result<(), HandlerError> {
        let (Some(store), Some(user)) = (&self.store, session.user()) else {
            return Ok(());
        };
        let now = store.find_user(&user.name).await.map_err(|e| {
            tracing::error!(session = session.id(), protocol = "admin", error = %e, "user store failed");
            HandlerError::Internal(e.to_string())
        })?;
        match now {
            Some(now) if now.id == user.id && now.has_role(&self.role) => Ok(()),
            now => {
                tracing::warn!(
                    session = session.id(),
                    peer = %session.peer(),
                    user = %user.name,
                    deleted = now.as_ref().is_none_or(|u| u.id != user.id),
                    role = %self.role,
                    "admin command refused: the user no longer holds the role"
                );
                Err(HandlerError::Rejected(format!(
                    "Requires role {}; your account no longer holds it (log in again).",
                    self.role
                )))
            }
        }
    }

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

    /// Kicks a session of another node of the cluster.
    async fn kick_on(
        &self,
        admin: &Session,
        node: &str,
        session_id: u64,
    ) -> Result<(), HandlerError> {
        let kicked = self
            .registry
            .kick_on(node, session_id)
            .await
            .map_err(HandlerError::Rejected)?;
        tracing::info!(
            by = admin.user().map(|u| u.name).unwrap_or_default(),
            kicked = session_id,
            node,
            found = kicked,
            "session kick sent to another node"
        );
        let answer = if kicked {
            AdminMessage::Kicked { session_id }
        } else {
            AdminMessage::NotFound { session_id }
        };
        admin.send_message(&answer).await?;
        Ok(())
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
