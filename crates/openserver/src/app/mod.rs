//! The application layer: typed protocols with request ids, structured errors and push.
//!
//! This layer sits on top of the others (wire <- session <- protocol <- server/client <- app)
//! and is what an application usually needs:
//!
//! - [`Api`]: a protocol declared as types: its id, request, response and push types, all
//!   serde types carried as MessagePack with field names (see [`envelope`]).
//! - [`Handler`]: the server side, shared by every session; it gets a [`Context`] per request
//!   that can push to this session, other sessions, users or everyone, and an
//!   [`on_close`](Handler::on_close) called exactly once per session.
//! - [`ServerBuilder::app`](crate::server::ServerBuilder::app) registers a handler;
//!   [`Client::api`](crate::client::Client::api) gives a typed [`Remote`] on the client.
//! - [`AppError`]: a code and a message, which reach the client as
//!   [`ClientError::Application`](crate::client::ClientError::Application).
//!
//! Requests carry an id and are answered by id, so one protocol can both answer and push.
//! The built-in DNOS protocols keep their own wire format; only protocols registered here use
//! the envelope.
//!
//! ```
//! use openserver::app::{Api, AppError, Context, Handler};
//! use serde::{Deserialize, Serialize};
//!
//! struct Greeter;
//! #[derive(Serialize, Deserialize)]
//! struct Greet { name: String }
//!
//! impl Api for Greeter {
//!     const ID: u16 = 0x0200;
//!     const NAME: &'static str = "greeter";
//!     type Request = Greet;
//!     type Response = String;
//!     type Push = String;
//! }
//!
//! impl Handler<Greeter> for Greeter {
//!     async fn request(&self, ctx: &Context<'_, Greeter>, req: Greet) -> Result<String, AppError> {
//!         if req.name.is_empty() {
//!             return Err(AppError::new("empty_name", "say who to greet"));
//!         }
//!         ctx.broadcast(&format!("{} was greeted", req.name));
//!         Ok(format!("Hello {}", req.name))
//!     }
//! }
//! ```

mod client;
pub mod envelope;
mod hub;
mod server;

pub use client::{PushError, Remote};
pub use hub::Hub;
pub(crate) use server::{answer_body, request_of};
pub use server::{Context, Handler};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// A typed application protocol: the declaration both sides share.
pub trait Api: Send + Sync + 'static {
    /// The protocol id. Ids 0-6 and 10 are the built-ins; 0x0100 and up are free.
    const ID: u16;
    /// A short name for logs and metrics.
    const NAME: &'static str;
    /// What the client asks.
    type Request: Serialize + DeserializeOwned + Send + Sync + 'static;
    /// What the server answers to a request.
    type Response: Serialize + DeserializeOwned + Send + 'static;
    /// What the server pushes unasked.
    type Push: Serialize + DeserializeOwned + Send + Sync + 'static;
}

/// What a [`Handler`] returns: the response, or the application's refusal.
pub type Result<T, E = AppError> = std::result::Result<T, E>;

/// An application's refusal of a request: a stable code for programs and a message for
/// people. The client receives it as
/// [`ClientError::Application`](crate::client::ClientError::Application).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message} ({code})")]
pub struct AppError {
    /// A short stable identifier, e.g. `"not_found"`.
    pub code: String,
    /// What happened and what to do, for a person.
    pub message: String,
}

impl AppError {
    /// The request's body did not decode as the protocol's request type.
    pub const BAD_REQUEST: &'static str = "bad_request";
    /// The server failed for its own reasons; the detail is in its log.
    pub const INTERNAL: &'static str = "internal";
    /// The server's protocol stack refused the request before the handler saw it (the
    /// session is not authenticated, or lacks the protocol's role). Codes starting with
    /// `openserver.` are the framework's; the client reports them as
    /// [`ClientError::Remote`](crate::client::ClientError::Remote), not as the
    /// application's refusal.
    pub const REFUSED: &'static str = "openserver.refused";
    /// The prefix of the framework's own codes; applications should not use it.
    pub const FRAMEWORK_PREFIX: &'static str = "openserver.";

    /// An error with this code and message.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        AppError {
            code: code.into(),
            message: message.into(),
        }
    }
}
