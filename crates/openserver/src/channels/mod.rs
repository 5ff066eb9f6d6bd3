//! Channels: publish/subscribe with presence, history and recovery.
//!
//! Clients subscribe to named channels, publish to them, see who else is there, and never
//! silently miss a publication across a reconnect: each channel numbers its publications
//! ([`Position`]: an epoch and an offset that only grows), keeps the latest in a history, and
//! a client that resubscribes with its last position gets everything it missed, in order,
//! before anything newer, or is told plainly ([`Recovery`]) that it cannot be had.
//!
//! - Names: `chat:lobby` is channel `lobby` of namespace `chat`, a name without `:` belongs to
//!   the default namespace, and `#alice` is alice's personal channel, which only her sessions
//!   may subscribe to. Each namespace's rules come from [`ChannelsConfig`] (the `[channels]`
//!   table of `openserver serve`'s TOML file): who may subscribe and publish, history size and
//!   time to live, presence and join/leave, the most subscribers; an unknown namespace is
//!   refused.
//! - The protocol: Channels, id [`CHANNELS_ID`] (0x0006), on the application envelope
//!   (`docs/PROTOCOL.md` 4.8); [`messages`] has its types.
//! - The server side: [`ServerBuilder::channels`](crate::server::ServerBuilder::channels)
//!   enables it (`openserver serve` always does); [`Channels`] publishes from server code and
//!   reads presence and history; a [`ChannelPolicy`] adds the application's own decisions;
//!   subscriptions show on the event bus and in the metrics.
//! - The engine sits on a [`Broker`] (numbering, history, presence, delivery between nodes);
//!   [`MemoryBroker`] is the one-node default, [`RedisBroker`] lets several nodes share
//!   channels through one Redis (`docs/CLUSTER.md`). The broker also carries what one node
//!   asks of the others ([`nodes`]: push, kick, list sessions), for the server's
//!   [`Cluster`](crate::server::Cluster).
//! - The client side: [`Client::channels`](crate::client::Client::channels) gives a
//!   [`ChannelsClient`] whose subscriptions survive the client's reconnects.
//!
//! Files: `config.rs` (settings), `name.rs` (channel names), `messages.rs` (the protocol's
//! types), `broker.rs` (the trait), `nodes.rs` (requests between nodes), `memory.rs` (the in-memory broker), `redis/`
//! (the Redis broker), `engine.rs` (rules,
//! local subscribers, fan-out, recovery), `protocol.rs` (the server side of the protocol),
//! `client.rs` (the client library).

mod broker;
mod client;
mod config;
mod engine;
mod memory;
pub mod messages;
pub mod name;
pub mod nodes;
pub(crate) mod protocol;
mod redis;

pub use self::redis::{RedisBroker, RedisBrokerConfig};
pub use broker::{
    Broker, BrokerError, BrokerSink, ClientInfo, History, HistoryOptions, Position, Publication,
};
pub use client::{ChannelItem, ChannelSubscription, ChannelsClient, Gap};
pub use config::{Access, ChannelsConfig, NamespaceConfig};
pub use engine::{Action, ChannelError, ChannelPolicy, Channels};
pub use memory::MemoryBroker;
pub use messages::{ChannelsApi, PublicationMessage, Recovery, CHANNELS_ID};

pub(crate) use broker::unix_ms;
pub(crate) use engine::Engine;
