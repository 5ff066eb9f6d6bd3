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
//! Three layers, each in its own folder:
//!
//! - [`wire`]: the wire format, no I/O. `codec.rs` frames bytes; `primitives.rs` holds the
//!   .NET `BinaryWriter` encodings; one file per built-in protocol's messages.
//! - [`session`]: one connection. [`Session`](session::Session) is the handle handlers and
//!   push use; `outbox.rs` its bounded queue of encoded frames; `engine.rs` the one task per
//!   connection that reads frames, writes the outbox in batches and keeps the deadlines and
//!   the heartbeat on a single timer; `driver.rs` the server side on top of it: the auth gate,
//!   in-order dispatch to protocol handlers, logins.
//! - [`protocol`]: the [`Protocol`](protocol::Protocol) trait and the built-in protocols, one
//!   file each (keep-alive, WinAuth, DatabaseAuth, ScramAuth, Admin, Hello).
//! - [`auth`]: the [`UserStore`](auth::UserStore) trait, the SQLite store, argon2id hashing
//!   and SCRAM-SHA-256.
//! - [`tls`]: rustls configuration for both sides, certificate reload, development certificates.
//! - [`app`]: the application layer on top: typed protocols (serde types as MessagePack),
//!   requests answered by id, structured errors, push from handlers, `on_close`.
//! - The public faces: [`server`] and [`client`]. In `server/`: `mod.rs` is the listener,
//!   per-connection task (TLS handshake, certificate login) and shutdown; `config.rs` the
//!   limits; `gate.rs` and `penalty.rs` the pre-login caps and per-source login penalties;
//!   `registry.rs` the live sessions for push and administration; `live.rs` the limits that
//!   SIGHUP can swap; `events.rs` and `metrics.rs` what operators observe.
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
