//! Each Redis operation the broker runs: what its errors say it was doing, and the `op` label
//! its failures are counted under in `openserver_broker_errors_total`. The label is chosen
//! here, by name, so rewording an error message never moves a failure to another label.

/// One operation of the broker on Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Op {
    /// The first command on connecting.
    Ping,
    /// A publication (numbered, kept and published by one script).
    Publish,
    /// A presence join event.
    PublishJoin,
    /// A presence leave event.
    PublishLeave,
    /// A node subscription to a channel's topic.
    Subscribe,
    /// The last node subscription to a channel's topic ends.
    Unsubscribe,
    /// A counted channel subscribed again on a new pub/sub connection.
    Resubscribe,
    /// The pub/sub connection subscribes to this node's canary topic.
    SubscribeCanary,
    /// The pub/sub connection subscribes to the topics of other nodes' requests.
    SubscribeRequests,
    /// A canary goes out.
    PublishCanary,
    /// A channel's history is read.
    ReadHistory,
    /// A presence entry is added.
    AddPresence,
    /// A presence entry is removed.
    RemovePresence,
    /// A channel's presence is read.
    ReadPresence,
    /// The presence of dead nodes (or of a previous process of this node) is removed.
    Sweep,
    /// This node's lease is renewed.
    RenewLease,
    /// This node's lease is deleted on a clean shutdown.
    ReleaseLease,
    /// A request goes out to other nodes.
    AskNodes,
    /// An answer goes back to the node that asked.
    AnswerNode,
}

impl Op {
    /// Every operation, for the tests.
    #[cfg(test)]
    pub(super) const ALL: [Op; 19] = [
        Op::Ping,
        Op::Publish,
        Op::PublishJoin,
        Op::PublishLeave,
        Op::Subscribe,
        Op::Unsubscribe,
        Op::Resubscribe,
        Op::SubscribeCanary,
        Op::SubscribeRequests,
        Op::PublishCanary,
        Op::ReadHistory,
        Op::AddPresence,
        Op::RemovePresence,
        Op::ReadPresence,
        Op::Sweep,
        Op::RenewLease,
        Op::ReleaseLease,
        Op::AskNodes,
        Op::AnswerNode,
    ];

    /// What it does, as errors say it: "Redis at HOST failed to {what}".
    pub(super) fn what(self) -> &'static str {
        match self {
            Op::Ping => "answer PING",
            Op::Publish => "publish",
            Op::PublishJoin => "publish a join",
            Op::PublishLeave => "publish a leave",
            Op::Subscribe => "subscribe",
            Op::Unsubscribe => "unsubscribe",
            Op::Resubscribe => "resubscribe a channel",
            Op::SubscribeCanary => "subscribe to the canary",
            Op::SubscribeRequests => "subscribe to other nodes' requests",
            Op::PublishCanary => "publish the canary",
            Op::ReadHistory => "read history",
            Op::AddPresence => "add a presence entry",
            Op::RemovePresence => "remove a presence entry",
            Op::ReadPresence => "read presence",
            Op::Sweep => "sweep dead nodes' presence",
            Op::RenewLease => "renew the node's lease",
            Op::ReleaseLease => "release the lease",
            Op::AskNodes => "send a request to other nodes",
            Op::AnswerNode => "answer another node",
        }
    }

    /// The `op` label of its failures (one of
    /// [`BROKER_OPS`](crate::server::metrics::broker::BROKER_OPS)).
    pub(super) fn label(self) -> &'static str {
        match self {
            Op::Publish => "publish",
            Op::Subscribe
            | Op::Unsubscribe
            | Op::Resubscribe
            | Op::SubscribeCanary
            | Op::SubscribeRequests => "subscribe",
            Op::PublishCanary => "canary",
            Op::ReadHistory => "history",
            Op::PublishJoin
            | Op::PublishLeave
            | Op::AddPresence
            | Op::RemovePresence
            | Op::ReadPresence
            | Op::Sweep => "presence",
            Op::RenewLease | Op::ReleaseLease => "lease",
            Op::Ping | Op::AskNodes | Op::AnswerNode => "other",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::metrics::broker::BROKER_OPS;

    #[test]
    fn failed_operations_are_labelled_by_kind() {
        let expected = [
            (Op::Ping, "other"),
            (Op::Publish, "publish"),
            (Op::PublishJoin, "presence"),
            (Op::PublishLeave, "presence"),
            (Op::Subscribe, "subscribe"),
            (Op::Unsubscribe, "subscribe"),
            (Op::Resubscribe, "subscribe"),
            (Op::SubscribeCanary, "subscribe"),
            (Op::SubscribeRequests, "subscribe"),
            (Op::PublishCanary, "canary"),
            (Op::ReadHistory, "history"),
            (Op::AddPresence, "presence"),
            (Op::RemovePresence, "presence"),
            (Op::ReadPresence, "presence"),
            (Op::Sweep, "presence"),
            (Op::RenewLease, "lease"),
            (Op::ReleaseLease, "lease"),
            (Op::AskNodes, "other"),
            (Op::AnswerNode, "other"),
        ];
        assert_eq!(expected.len(), Op::ALL.len(), "every operation is checked");
        for op in Op::ALL {
            let (_, label) = expected.iter().find(|(o, _)| *o == op).unwrap();
            assert_eq!(op.label(), *label, "{op:?}");
            assert!(BROKER_OPS.contains(label), "{op:?}");
            assert!(!op.what().is_empty(), "{op:?}");
        }
        // Every label shown is one that some operation fails under.
        for label in BROKER_OPS {
            assert!(Op::ALL.iter().any(|op| op.label() == label), "{label}");
        }
    }
}
