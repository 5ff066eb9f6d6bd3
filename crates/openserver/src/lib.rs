#![forbid(unsafe_code)]
#![warn(missing_docs)]
//! # openserver
//!
//! A TCP client/server application framework for real-time, stateful sessions, wire compatible
//! with DotNetOpenServer: its Java, C# and Objective-C clients work against an openserver
//! server unchanged.
//!
//! Clients keep one TCP session open and exchange binary packets. Each packet travels in a
//! frame (magic + length) and names a protocol by id; protocols are pluggable, and nothing but
//! Capabilities and authentication runs before the session has authenticated.
//!
//! # Layout
//!
//! Layers that point one way: wire <- session <- protocol <- server/client <- binaries. A
//! lower layer never imports a higher one (`tests/layers.rs` checks); what it needs from
//! above it gets through a trait it defines and the higher layer implements. One line per
//! folder:
//!
//! - [`wire`]: the wire format, no I/O: frame codec, .NET primitives, one file per protocol.
//! - [`session`]: one connection: [`Session`](session::Session), its outbox, the engine task,
//!   the [`Login`](session::Login) powers, and `SessionHost`, the seam to the server above.
//! - [`protocol`]: the [`Protocol`](protocol::Protocol) trait and the built-in protocols, one
//!   file each; Admin reads sessions through its own `SessionDirectory` trait.
//! - [`auth`]: the [`UserStore`](auth::UserStore) trait, the SQLite store (`sqlite.rs`), the
//!   PostgreSQL store for servers that share users (`postgres.rs`), the rules and password work
//!   both share (`common.rs`), argon2id, SCRAM, and tokens (`token.rs`: the application's
//!   JWTs and the resume tokens of TokenAuth, protocol 7).
//! - [`tls`]: rustls for both sides, certificate reload, development certificates.
//! - [`server`]: listener and caps (`mod.rs`), the server side of a connection (`driver.rs`:
//!   auth gate, dispatch, logins), `link.rs` (its `SessionHost`), `proxy.rs` (PROXY protocol
//!   headers of trusted load balancers), config, gate, penalties, registry, live limits,
//!   events, `cluster.rs` (push, kick and list on every node of a cluster);
//!   `server/metrics/`: Prometheus metrics.
//! - [`client`]: the async client library and its connection task; automatic reconnect with
//!   hooks that restore the application's server-side state (`client/restore.rs`).
//! - [`app`]: the application layer on top: typed protocols (serde types as MessagePack),
//!   requests answered by id, structured errors, push from handlers, `on_close`.
//! - [`channels`]: beside `app`, on top: publish/subscribe with presence, history and
//!   recovery (the Channels protocol, 6), on a `Broker` trait with an in-memory broker and a
//!   Redis one for several nodes (`channels/redis/`); its client side too.
//!
//! # A server in a few lines
//!
//! ```no_run
//! use openserver::auth::{PasswordHasher, SqliteUserStore, HashParams};
//! use openserver::server::{Server, ServerConfig};
//! use std::sync::Arc;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let store = SqliteUserStore::open("users.db", PasswordHasher::new(HashParams::default())?)?;
//! let server = Server::builder(ServerConfig::default())
//!     .user_store(Arc::new(store))
//!     .hello()
//!     .bind()
//!     .await?;
//! server.run_until(async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! # Ok(()) }
//! ```
//!
//! `docs/PROTOCOL.md` describes the wire protocol for client authors, `docs/CONFIG.md` every
//! setting and `docs/SECURITY.md` the threat model and the protections against it.

pub mod app;
pub mod auth;
pub mod channels;
pub mod client;
pub mod protocol;
pub mod server;
pub mod session;
pub mod tls;
pub mod wire;

/// Re-exported so that signatures using them need no dependency of their own.
pub use async_trait::async_trait;
pub use bytes::{self, Bytes};

// The README's Rust examples, compiled (not run) by `cargo test --doc`.
#[doc = include_str!("../../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

// Entry points shared by the fuzz targets and their seed-replay tests.
#[doc(hidden)]
pub mod fuzzing;
