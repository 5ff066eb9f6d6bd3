#![forbid(unsafe_code)]
#![warn(missing_docs)]
//! # chat
//!
//! Chat rooms on openserver's channels ([`openserver::channels`]), with no protocol of its
//! own: a room is the channel `chat:ROOM`, a message is a publication whose data is the text
//! (UTF-8) and whose user the server stamps, who is online is the channel's presence, and
//! joins and leaves are its events. [`join`] shows a late joiner what was said before it came
//! (the channel's history) and subscribes from there, so nothing falls between the two; after
//! a reconnect the library resubscribes and recovers what was missed. The binaries
//! (`src/bin/`) are a server and a line-oriented client.
//!
//! ```text
//! cargo run -p chat --bin chat-server -- --add-user alice:secret1 --add-user bob:secret2
//! cargo run -p chat --bin chat-client -- --user alice --room lobby
//! cargo run -p chat --bin chat-client -- --user bob --room lobby
//! ```

use openserver::channels::{
    ChannelSubscription, ChannelsClient, ChannelsConfig, NamespaceConfig, PublicationMessage,
};
use openserver::client::ClientError;

/// Longest text in bytes (the server refuses longer publications with `too_large`).
pub const MAX_TEXT: usize = 4096;

/// The server's channel settings: a `chat` namespace where any logged-in user reads and
/// writes, the last 100 messages are kept for 5 minutes (the [`NamespaceConfig`] defaults),
/// and presence with joins and leaves is on (rooms are small enough for joins pushed to all).
pub fn config() -> ChannelsConfig {
    let mut config = ChannelsConfig {
        max_publication: MAX_TEXT,
        ..ChannelsConfig::default()
    };
    config.namespaces.insert(
        "chat".into(),
        NamespaceConfig {
            join_leave: true,
            ..NamespaceConfig::default()
        },
    );
    config
}

/// The channel of `room`.
pub fn channel(room: &str) -> String {
    format!("chat:{room}")
}

/// A room a client has joined.
pub struct Room {
    /// What was said before joining and is still kept, oldest first.
    pub recent: Vec<PublicationMessage>,
    /// The users in the room when it was joined (this one too), sorted, each once.
    pub members: Vec<String>,
    /// Everything from then on: messages, joins and leaves, across reconnects.
    pub messages: ChannelSubscription,
}

/// Joins `room`: reads its history, then subscribes from the history's end (publications in
/// between are recovered, not lost), then asks who is there.
pub async fn join(channels: &ChannelsClient, room: &str) -> Result<Room, ClientError> {
    let channel = channel(room);
    let history = channels.history(&channel, None, None).await?;
    let messages = channels
        .subscribe_since(&channel, Some(history.position))
        .await?;
    let mut members: Vec<String> = channels
        .presence(&channel)
        .await?
        .into_iter()
        .map(|c| c.user)
        .collect();
    members.sort();
    members.dedup();
    Ok(Room {
        recent: history.publications,
        members,
        messages,
    })
}
