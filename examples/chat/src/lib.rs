#![forbid(unsafe_code)]
#![warn(missing_docs)]
//! # chat
//!
//! An example application protocol for openserver: chat rooms on protocol id `0x0100`,
//! written only with openserver's public API.
//!
//! - [`messages`]: the typed messages, encoded with the .NET `BinaryWriter` conventions like
//!   the built-in protocols, with their table of command bytes.
//! - [`server`]: [`ChatProtocol`](server::ChatProtocol), a [`Protocol`](openserver::protocol::Protocol)
//!   that requires authentication, with rooms shared by all sessions and server push to their
//!   members.
//! - [`client`]: [`ChatClient`](client::ChatClient), a typed wrapper over
//!   [`openserver::client::Client`], and its event stream.
//!
//! Two binaries use them: `chat-server` and `chat-client`. In three terminals:
//!
//! ```text
//! cargo run -p chat --bin chat-server -- --add-user alice:secret1 --add-user bob:secret2
//! cargo run -p chat --bin chat-client -- --user alice --room lobby
//! cargo run -p chat --bin chat-client -- --user bob --room lobby
//! ```
//!
//! Lines typed into a client are said in the room; each client prints `[room] user: text`.

pub mod client;
pub mod messages;
pub mod server;
