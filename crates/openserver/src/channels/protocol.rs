//! The server side of the Channels protocol: one handler per session that decodes each
//! request, enforces the session's publish rate, and answers through the engine.

use super::engine::{ChannelError, Engine};
use super::messages::{ChannelsApi, Command, Reply, CHANNELS_ID};
use crate::app::envelope;
use crate::app::{answer_body, request_of, Api as _, AppError};
use crate::protocol::{HandlerError, Protocol, ProtocolHandler};
use crate::session::Session;
use crate::wire::Frame;
use async_trait::async_trait;
use bytes::Bytes;
use std::collections::HashSet;
use std::sync::Arc;
use tokio::time::Instant;

/// Channels (0x0006) in the protocol stack.
pub(crate) struct ChannelsProtocol {
    pub(crate) engine: Arc<Engine>,
}

impl Protocol for ChannelsProtocol {
    fn id(&self) -> u16 {
        CHANNELS_ID
    }

    fn name(&self) -> &'static str {
        "channels"
    }

    fn new_handler(&self, _session: &Session) -> Box<dyn ProtocolHandler> {
        let rate = f64::from(self.engine.config().publishes_per_second);
        Box::new(ChannelsSession {
            engine: self.engine.clone(),
            bucket: TokenBucket::new(rate),
        })
    }
}

/// One session's use of Channels.
struct ChannelsSession {
    engine: Arc<Engine>,
    bucket: TokenBucket,
}

/// Publications allowed per second, with a burst of as many.
struct TokenBucket {
    rate: f64,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    fn new(rate: f64) -> Self {
        TokenBucket {
            rate,
            tokens: rate,
            at: Instant::now(),
        }
    }

    fn take(&mut self) -> bool {
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

impl ChannelsSession {
    /// Runs one command; `Ok(None)` when the answer was already queued (subscribe).
    async fn run(
        &mut self,
        session: &Session,
        id: u32,
        command: Command,
    ) -> Result<Option<Reply>, ChannelError> {
        let engine = &self.engine;
        Ok(Some(match command {
            Command::Subscribe { channel, since } => {
                engine.subscribe(session, id, &channel, since).await?;
                return Ok(None);
            }
            Command::Unsubscribe { channel } => {
                engine.unsubscribe(session, &channel).await?;
                Reply::Unsubscribed {}
            }
            Command::Publish { channel, data } => {
                // A refused size costs no token: only publications that go out count.
                let max = engine.config().max_publication;
                if data.len() > max {
                    return Err(ChannelError::TooLarge {
                        len: data.len(),
                        max,
                    });
                }
                if !self.bucket.take() {
                    return Err(ChannelError::RateLimited(
                        engine.config().publishes_per_second,
                    ));
                }
                Reply::Published(engine.publish(session, &channel, data).await?)
            }
            Command::Presence { channel } => Reply::Presence {
                clients: engine.presence_for(session, &channel).await?,
            },
            Command::PresenceCounts { channel } => {
                let clients = engine.presence_for(session, &channel).await?;
                let users: HashSet<&str> = clients.iter().map(|c| c.user.as_str()).collect();
                Reply::PresenceCounts {
                    sessions: clients.len() as u64,
                    users: users.len() as u64,
                }
            }
            Command::History {
                channel,
                since,
                limit,
            } => Reply::History(engine.history_for(session, &channel, since, limit).await?),
        }))
    }
}

#[async_trait]
impl ProtocolHandler for ChannelsSession {
    async fn on_packet(&mut self, session: &Session, body: Bytes) -> Result<(), HandlerError> {
        let (id, request) = request_of(&body)?;
        let answer = match envelope::decode_value::<Command>(request) {
            Ok(command) => self.run(session, id, command).await.map_err(AppError::from),
            Err(message) => Err(AppError::new(AppError::BAD_REQUEST, message)),
        };
        // `None`: answered already (a subscribe's answer goes out with its recovery).
        let Some(answer) = answer.transpose() else {
            return Ok(());
        };
        let body = answer_body(session, ChannelsApi::NAME, id, answer);
        session.send(Frame::new(CHANNELS_ID, body)).await?;
        Ok(())
    }

    async fn on_close(&mut self, session: &Session) {
        self.engine.session_closed(session).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_bucket_allows_a_burst_then_the_rate() {
        let mut bucket = TokenBucket::new(3.0);
        assert!((0..3).all(|_| bucket.take()));
        assert!(!bucket.take());
        tokio::time::advance(std::time::Duration::from_millis(340)).await;
        assert!(bucket.take());
        assert!(!bucket.take());
    }
}
