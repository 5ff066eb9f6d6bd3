#![forbid(unsafe_code)]
#![warn(missing_docs)]
//! # openserver-bench
//!
//! The load engine behind `openserver bench`: drive a server with N connections each keeping D
//! requests in flight (closed loop) or at a fixed rate (open loop), compare openserver with a
//! bare frame-echo server and redis in the same run, and hold idle authenticated sessions to
//! measure the server's memory per session.
//!
//! - [`echo`]: the echo protocol (id [`echo::ECHO_PROTOCOL_ID`]) the bench's own servers
//!   register.
//! - [`target`]: the servers the bench starts: openserver, a bare tokio frame echo, redis.
//! - [`load`]: the engine: connection setup, pipelined requests, latency histograms.
//! - [`idle`]: held sessions with keep-alive, memory per session (the holding itself, shared
//!   with the worker processes, is in `hold`, which neither imports).
//! - [`compare`]: the same load against every target, alternating, with ratios.
//! - [`fanout`]: publish/subscribe fan-out against openserver Channels, nats and redis,
//!   with per-delivery latency, losses and memory per subscription.
//! - [`cluster`]: the fan-out against N `serve --cluster` nodes on one Redis, against one
//!   node alone, a cross-node latency probe, and idle-session memory on a cluster node.
//! - [`storm`]: the reconnect storm of a cluster behind HAProxy that loses a node.
//! - [`cli`]: the `openserver bench` arguments and their entry point.
//!
//! The load generator speaks raw frames ([`openserver::wire::FrameCodec`]) on its own
//! connections rather than through [`openserver::client::Client`]: the client's per-request
//! channel and task hops would cost more than the server under test, and DNOS answers of one
//! protocol arrive in order, so a FIFO of send times per connection matches answers.

mod channels_client;
pub mod cli;
pub mod cluster;
pub mod compare;
pub mod echo;
pub mod fanout;
mod hold;
pub mod idle;
pub mod load;
mod nats_client;
mod plot;
pub mod procfs;
mod redis_pubsub;
mod report;
pub mod stats;
pub mod storm;
mod stream;
pub mod target;
pub mod tls;
mod worker;

pub use load::{LoadReport, LoadSpec, Workload};
