//! The client side: a typed wrapper over [`openserver::client::Client`].
//!
//! Requests are sent without waiting: the server's answers (JOINED, ERROR) arrive on
//! [`ChatEvents`] among the pushed MESSAGE and PRESENCE events, since the protocol carries no
//! request ids to match them by.

use crate::messages::{Event, LimitError, Request, PROTOCOL_ID};
use openserver::client::{Client, ClientConfig, ClientError, Incoming, Subscription};
use openserver::wire::Message;

/// Why a chat request was not sent.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ChatClientError {
    /// A field is over the protocol's limits; checked here so the server need not refuse it.
    #[error(transparent)]
    Invalid(#[from] LimitError),
    /// The connection failed or is closed.
    #[error(transparent)]
    Client(#[from] ClientError),
}

/// Sends chat requests. Cheap to clone.
#[derive(Clone)]
pub struct ChatClient {
    client: Client,
}

/// The server's chat events, in arrival order.
pub struct ChatEvents {
    packets: Subscription,
    /// Watched for the final close, since the subscription outlives connections.
    client: Client,
}

impl ChatClient {
    /// Connects to `addr` and logs in with DatabaseAuth.
    pub async fn connect(
        addr: &str,
        user: &str,
        password: &str,
    ) -> Result<(ChatClient, ChatEvents), ClientError> {
        let client = Client::connect(addr, ClientConfig::default()).await?;
        if let Err(e) = client.authenticate_db(user, password).await {
            client.quit().await;
            return Err(e);
        }
        Ok(ChatClient::new(client))
    }

    /// Wraps a connected client (authenticated or not) and subscribes to the chat protocol,
    /// replacing any earlier subscription to it.
    pub fn new(client: Client) -> (ChatClient, ChatEvents) {
        let packets = client.subscribe(PROTOCOL_ID);
        let events = ChatEvents {
            packets,
            client: client.clone(),
        };
        (ChatClient { client }, events)
    }

    /// The underlying client, for keep-alive, quitting, or raw packets.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Asks to enter `room`; [`Event::Joined`] follows.
    pub async fn join(&self, room: &str) -> Result<(), ChatClientError> {
        self.send(Request::Join(room.to_owned())).await
    }

    /// Leaves `room`.
    pub async fn leave(&self, room: &str) -> Result<(), ChatClientError> {
        self.send(Request::Leave(room.to_owned())).await
    }

    /// Says `text` in `room`; it comes back as an [`Event::Message`] like everyone's.
    pub async fn say(&self, room: &str, text: &str) -> Result<(), ChatClientError> {
        self.send(Request::Say {
            room: room.to_owned(),
            text: text.to_owned(),
        })
        .await
    }

    /// Sends QUIT and closes the connection.
    pub async fn quit(&self) {
        self.client.quit().await;
    }

    async fn send(&self, request: Request) -> Result<(), ChatClientError> {
        request.validate()?;
        let body = request.to_frame().body;
        Ok(self.client.send(PROTOCOL_ID, body).await?)
    }
}

impl ChatEvents {
    /// The next event; `None` once the client is closed and every event was read. The
    /// server's Capabilities ERRORs about chat (not authenticated, malformed packet) and
    /// undecodable chat packets come as [`Event::Error`].
    pub async fn next(&mut self) -> Option<Event> {
        let incoming = tokio::select! {
            // Drain what arrived before reporting the close.
            biased;
            incoming = self.packets.recv() => incoming?,
            _ = self.client.closed() => return None,
        };
        Some(match incoming {
            Incoming::Packet(body) => Event::decode(&body).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "malformed chat packet from server");
                Event::Error(format!("malformed packet from server: {e}"))
            }),
            Incoming::Error(text) => Event::Error(text),
            Incoming::Lagged(n) => Event::Error(format!("{n} events dropped: reading too slowly")),
            other => Event::Error(format!("unexpected delivery: {other:?}")),
        })
    }
}
