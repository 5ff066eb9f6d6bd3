#![forbid(unsafe_code)]
#![warn(missing_docs)]
//! openserver: a TCP client/server application framework.
pub mod auth;
pub mod wire;
