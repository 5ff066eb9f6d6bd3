//! Requests between nodes on Redis pub/sub: every node listens on the all-nodes topic and on
//! its own, and answers on the asker's own topic. A request is MessagePack
//! `[from, nonce, ["Request", request]]`; its answer carries the same nonce. PUBLISH returns
//! how many nodes listen, which is how many answers the asker waits for (up to
//! `command_timeout`): a node that is down is not listening, so it is not waited for.

use super::super::nodes::{NodeAnswer, NodeAnswers, NodeRequest};
use super::keys::{escape, unescape};
use super::{new_epoch, Inner, Op};
use crate::channels::BrokerError;
use crate::session::lock;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use tokio::sync::mpsc;

/// Answers kept for one request before more are dropped (one per node is expected).
const MAX_ANSWERS: usize = 1024;

#[derive(Debug, Serialize, Deserialize)]
struct Envelope {
    /// The sender's escaped node id.
    from: String,
    /// Pairs an answer with its request.
    nonce: String,
    body: Body,
}

#[derive(Debug, Serialize, Deserialize)]
enum Body {
    Request(NodeRequest),
    Answer(NodeAnswer),
}

fn encode(envelope: &Envelope) -> Result<Vec<u8>, BrokerError> {
    rmp_serde::to_vec(envelope)
        .map_err(|e| BrokerError(format!("cannot encode a request to other nodes: {e}")))
}

/// Removes the asker's mailbox however the wait ends.
struct Mailbox<'a> {
    inner: &'a Inner,
    nonce: String,
}

impl Drop for Mailbox<'_> {
    fn drop(&mut self) {
        lock(&self.inner.asks).remove(&self.nonce);
    }
}

/// Sends `request` to `to` (an unescaped node id) or to every other node, and gathers the
/// answers.
pub(super) async fn ask(
    inner: &Inner,
    to: Option<&str>,
    request: &NodeRequest,
) -> Result<NodeAnswers, BrokerError> {
    inner.check()?;
    if inner.pubsub.lock().await.is_none() {
        return Err(BrokerError(format!(
            "this node's pub/sub connection to Redis at {} is down (reconnecting): answers \
             from other nodes cannot arrive; try again",
            inner.target
        )));
    }
    let nonce = new_epoch();
    let (tx, mut rx) = mpsc::channel(MAX_ANSWERS);
    lock(&inner.asks).insert(nonce.clone(), tx);
    let _mailbox = Mailbox {
        inner,
        nonce: nonce.clone(),
    };
    let topic = match to {
        None => inner.keys.commands().to_string(),
        Some(node) => inner.keys.commands_of(&escape(node)),
    };
    let bytes = encode(&Envelope {
        from: inner.keys.node().to_string(),
        nonce,
        body: Body::Request(request.clone()),
    })?;
    let listening: u64 = inner
        .run(
            Op::AskNodes,
            redis::cmd("PUBLISH")
                .arg(&topic)
                .arg(bytes)
                .query_async(&mut inner.conn()),
        )
        .await?;
    let expected = match to {
        // This node listens on the all-nodes topic too, and ignores its own requests.
        None => listening.saturating_sub(1) as usize,
        Some(node) if listening == 0 => {
            return Err(BrokerError(format!(
                "node {node:?} is not connected to Redis at {}: no such node id, or it is down",
                inner.target
            )))
        }
        Some(_) => listening as usize,
    };
    let mut answers = Vec::with_capacity(expected.min(MAX_ANSWERS));
    let deadline = tokio::time::Instant::now() + inner.config.command_timeout;
    while answers.len() < expected {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(answer)) => answers.push(answer),
            Ok(None) | Err(_) => break,
        }
    }
    Ok(NodeAnswers {
        unanswered: expected - answers.len(),
        answers,
    })
}

/// Handles one message of the all-nodes topic or of this node's own: answers a request (on
/// a task, so the pub/sub reader never waits for Redis), or hands an answer to its asker.
pub(super) fn receive(inner: &Arc<Inner>, bytes: &[u8]) {
    let envelope: Envelope = match rmp_serde::from_slice(bytes) {
        Ok(envelope) => envelope,
        Err(e) => {
            tracing::warn!(error = %e, "unreadable request from another node; ignored");
            return;
        }
    };
    match envelope.body {
        Body::Request(_) if envelope.from == inner.keys.node() => {}
        Body::Request(request) => {
            let Some(sink) = inner.node_sink.get().and_then(std::sync::Weak::upgrade) else {
                return;
            };
            let answer = sink.answer(&request);
            let reply = Envelope {
                from: inner.keys.node().to_string(),
                nonce: envelope.nonce,
                body: Body::Answer(answer),
            };
            let topic = inner.keys.commands_of(&envelope.from);
            let inner = inner.clone();
            tokio::spawn(async move {
                let sent = match encode(&reply) {
                    Ok(bytes) => inner
                        .run(
                            Op::AnswerNode,
                            redis::cmd("PUBLISH")
                                .arg(&topic)
                                .arg(bytes)
                                .query_async::<u64>(&mut inner.conn()),
                        )
                        .await
                        .map(drop),
                    Err(e) => Err(e),
                };
                if let Err(e) = sent {
                    tracing::warn!(error = %e, "could not answer another node's request");
                }
            });
        }
        Body::Answer(answer) => {
            let node = unescape(&envelope.from).unwrap_or(envelope.from);
            if let Some(mailbox) = lock(&inner.asks).get(&envelope.nonce) {
                // Full: more answers than nodes; the extra ones are not wanted.
                let _ = mailbox.try_send((node, answer));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channels::nodes::PushTarget;

    #[test]
    fn envelopes_read_back_and_garbage_is_refused() {
        let envelope = Envelope {
            from: "n%201".into(),
            nonce: "ab".into(),
            body: Body::Request(NodeRequest::Push {
                target: PushTarget::User("alice".into()),
                protocol_id: 0x0100,
                body: bytes::Bytes::from_static(b"\x01\x02"),
            }),
        };
        let bytes = encode(&envelope).unwrap();
        let back: Envelope = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(back.from, "n%201");
        assert!(matches!(
            back.body,
            Body::Request(NodeRequest::Push { ref body, .. }) if body.as_ref() == b"\x01\x02"
        ));
        assert!(rmp_serde::from_slice::<Envelope>(b"\x93\xa1x").is_err());
        assert!(rmp_serde::from_slice::<Envelope>(&[0xdd, 0xff, 0xff, 0xff, 0xff]).is_err());
    }
}
