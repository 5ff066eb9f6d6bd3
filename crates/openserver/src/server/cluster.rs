//! [`Cluster`]: push, kick and list sessions on every node of the server's cluster, through
//! the channels' broker ([`crate::channels::nodes`]). On a server that is not in a cluster
//! (the in-memory broker, or no channels), the same calls reach this node's sessions alone,
//! so application code need not know how it is deployed.

use super::registry::Registry;
use crate::channels::nodes::{
    NodeAnswer, NodeAnswers, NodeRequest, NodeSession, NodeSink, PushTarget,
};
use crate::channels::{Broker, BrokerError};
use crate::protocol::admin::SessionDirectory;
use crate::session::{Session, SessionId};
use crate::wire::admin::{NodeSessionInfo, SessionInfo};
use crate::wire::Frame;
use async_trait::async_trait;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// A cluster-wide operation did not fully happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClusterError {
    /// The other nodes could not be asked (the broker failed): nothing was sent to them. This
    /// node's own part may have happened.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// A node other than this one was named, on a server that is not in a cluster.
    #[error("there is no node {0:?}: this server is not in a cluster")]
    NotInCluster(String),
    /// Some nodes got the request but did not answer within the broker's command timeout:
    /// they may or may not have acted.
    #[error(
        "{unanswered} node(s) did not answer in time (they may or may not have acted); \
         {reached} session(s) were reached on this node and the nodes that answered"
    )]
    Incomplete {
        /// Sessions reached on the nodes that answered.
        reached: usize,
        /// Nodes that did not answer.
        unanswered: usize,
    },
}

/// One session of the cluster, as [`Cluster::sessions`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSession {
    /// The node it is on; empty outside a cluster.
    pub node: String,
    /// The session, with its id on that node.
    pub session: NodeSession,
}

/// Every node's sessions, as [`Cluster::sessions`] found them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterSessions {
    /// Ascending by node, then by id.
    pub sessions: Vec<ClusterSession>,
    /// Nodes that did not answer in time: their sessions are missing.
    pub unanswered: usize,
    /// Sessions not listed because their node had more than the most listed per node.
    pub omitted: usize,
}

/// How many sessions [`Cluster::sessions`] lists per node.
pub const DEFAULT_LISTED_PER_NODE: usize = 10_000;

/// The most [`Cluster::sessions_at_most`] lists per node: about 10 MB of answer, what Redis
/// lets a pub/sub connection fall behind by for a minute is 8 MB by default.
pub const MAX_LISTED_PER_NODE: usize = 100_000;

/// The sessions of every node of the server's cluster: get one with
/// [`ServerHandle::cluster`](super::ServerHandle::cluster). Cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    registry: Arc<Registry>,
    /// The channels' broker, which carries requests to the other nodes; `None` without
    /// channels (a node of its own).
    broker: Option<Arc<dyn Broker>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("node_id", &self.node_id())
            .finish_non_exhaustive()
    }
}

impl Cluster {
    pub(crate) fn new(registry: Arc<Registry>, broker: Option<Arc<dyn Broker>>) -> Self {
        Cluster { registry, broker }
    }

    /// This node's id in its cluster (`--node-id`); `None` outside one.
    pub fn node_id(&self) -> Option<&str> {
        self.broker.as_deref().and_then(Broker::node_id)
    }

    /// Whether `node` names this node: its id, or empty.
    fn is_here(&self, node: &str) -> bool {
        node.is_empty() || self.node_id() == Some(node)
    }

    /// This node's answer, and the other nodes' (all of them, or `node`).
    async fn ask(
        &self,
        node: Option<&str>,
        request: NodeRequest,
    ) -> Result<(Vec<(String, NodeAnswer)>, usize), ClusterError> {
        let here = node.is_none_or(|n| self.is_here(n));
        if let (Some(node), false, None) = (node, here, self.node_id()) {
            return Err(ClusterError::NotInCluster(node.to_string()));
        }
        let mut answers = Vec::new();
        if here {
            let name = self.node_id().unwrap_or_default().to_string();
            answers.push((name, self.registry.answer(&request)));
        }
        if node.is_none() || !here {
            if let Some(broker) = &self.broker {
                let NodeAnswers {
                    answers: theirs,
                    unanswered,
                } = broker.ask_nodes(node, &request).await?;
                answers.extend(theirs);
                return Ok((answers, unanswered));
            }
        }
        Ok((answers, 0))
    }

    /// Sums pushes; `Incomplete` if a node did not answer.
    async fn push(
        &self,
        node: Option<&str>,
        target: PushTarget,
        frame: Frame,
    ) -> Result<usize, ClusterError> {
        let request = NodeRequest::Push {
            target,
            protocol_id: frame.protocol_id,
            body: frame.body,
        };
        let (answers, unanswered) = self.ask(node, request).await?;
        let reached = answers
            .iter()
            .map(|(_, a)| match a {
                NodeAnswer::Pushed(n) => *n,
                _ => 0,
            })
            .sum();
        if unanswered > 0 {
            return Err(ClusterError::Incomplete {
                reached,
                unanswered,
            });
        }
        Ok(reached)
    }

    /// Pushes `frame` to session `id` of `node` (empty: this node); whether it was queued.
    /// A session whose queue is full is closed as a slow consumer, as on one node.
    pub async fn send_to(
        &self,
        node: &str,
        id: SessionId,
        frame: Frame,
    ) -> Result<bool, ClusterError> {
        self.push(Some(node), PushTarget::Session(id), frame)
            .await
            .map(|n| n > 0)
    }

    /// Pushes `frame` to every session logged in as `user`, on every node; returns how many
    /// got it.
    pub async fn send_to_user(&self, user: &str, frame: Frame) -> Result<usize, ClusterError> {
        self.push(None, PushTarget::User(user.to_string()), frame)
            .await
    }

    /// Pushes `frame` to every logged-in session of every node; returns how many got it.
    pub async fn broadcast(&self, frame: Frame) -> Result<usize, ClusterError> {
        self.push(None, PushTarget::Everyone, frame).await
    }

    /// Kicks session `id` of `node` (empty: this node): QUIT, then close as
    /// [`CloseReason::Kicked`](crate::session::CloseReason::Kicked). Whether it was open.
    pub async fn kick(&self, node: &str, id: SessionId) -> Result<bool, ClusterError> {
        let (answers, unanswered) = self
            .ask(Some(node), NodeRequest::Kick { session: id })
            .await?;
        let kicked = answers
            .iter()
            .any(|(_, a)| matches!(a, NodeAnswer::Kicked(true)));
        if unanswered > 0 {
            return Err(ClusterError::Incomplete {
                reached: usize::from(kicked),
                unanswered,
            });
        }
        Ok(kicked)
    }

    /// Kicks every session logged in as `user`, on every node (however many sessions each
    /// node has: no listing is involved); returns the sessions kicked, by node then id.
    pub async fn kick_user(&self, user: &str) -> Result<Vec<(String, SessionId)>, ClusterError> {
        let request = NodeRequest::KickUser {
            user: user.to_string(),
        };
        let (answers, unanswered) = self.ask(None, request).await?;
        let mut kicked: Vec<(String, SessionId)> = answers
            .into_iter()
            .flat_map(|(node, answer)| {
                let ids = match answer {
                    NodeAnswer::KickedSessions(ids) => ids,
                    _ => Vec::new(),
                };
                ids.into_iter().map(move |id| (node.clone(), id))
            })
            .collect();
        kicked.sort_unstable();
        if unanswered > 0 {
            return Err(ClusterError::Incomplete {
                reached: kicked.len(),
                unanswered,
            });
        }
        Ok(kicked)
    }

    /// The sessions of every node that answered within the broker's command timeout, the
    /// [`DEFAULT_LISTED_PER_NODE`] lowest ids of each.
    pub async fn sessions(&self) -> Result<ClusterSessions, ClusterError> {
        self.sessions_at_most(DEFAULT_LISTED_PER_NODE).await
    }

    /// As [`sessions`](Self::sessions), listing at most `max_per_node` of each node (1 to
    /// [`MAX_LISTED_PER_NODE`]; outside that range, the nearest bound).
    pub async fn sessions_at_most(
        &self,
        max_per_node: usize,
    ) -> Result<ClusterSessions, ClusterError> {
        let max = max_per_node.clamp(1, MAX_LISTED_PER_NODE);
        let (answers, unanswered) = self.ask(None, NodeRequest::Sessions { max }).await?;
        let mut omitted = 0;
        let mut sessions: Vec<ClusterSession> = answers
            .into_iter()
            .flat_map(|(node, answer)| {
                let list = match answer {
                    NodeAnswer::Sessions {
                        sessions,
                        omitted: left,
                    } => {
                        omitted += left;
                        sessions
                    }
                    _ => Vec::new(),
                };
                list.into_iter().map(move |session| ClusterSession {
                    node: node.clone(),
                    session,
                })
            })
            .collect();
        sessions.sort_unstable_by(|a, b| (&a.node, a.session.id).cmp(&(&b.node, b.session.id)));
        Ok(ClusterSessions {
            sessions,
            unanswered,
            omitted,
        })
    }
}

fn from_unix_ms(ms: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
}

#[async_trait]
impl SessionDirectory for Cluster {
    fn get(&self, id: SessionId) -> Option<Session> {
        self.registry.get(id)
    }

    fn snapshot(&self) -> Vec<Session> {
        self.registry.snapshot()
    }

    async fn all_sessions(
        &self,
        max_per_node: usize,
    ) -> Result<(Vec<NodeSessionInfo>, u32, u32), String> {
        let max = match max_per_node {
            0 => DEFAULT_LISTED_PER_NODE,
            n => n,
        };
        let found = self
            .sessions_at_most(max)
            .await
            .map_err(|e| e.to_string())?;
        let sessions = found
            .sessions
            .into_iter()
            .map(|s| NodeSessionInfo {
                node: s.node,
                session: SessionInfo {
                    id: s.session.id,
                    user: s.session.user,
                    peer: s.session.peer,
                    since: from_unix_ms(s.session.since_ms),
                    last_activity: from_unix_ms(s.session.last_activity_ms),
                    protocols: s.session.protocols,
                },
            })
            .collect();
        Ok((
            sessions,
            found.unanswered as u32,
            u32::try_from(found.omitted).unwrap_or(u32::MAX),
        ))
    }

    async fn kick_on(&self, node: &str, id: SessionId) -> Result<bool, String> {
        self.kick(node, id).await.map_err(|e| e.to_string())
    }

    fn node_id(&self) -> Option<String> {
        Cluster::node_id(self).map(str::to_string)
    }
}
