//! ScramAuth (protocol 4): SCRAM-SHA-256 login against the [`UserStore`], so the password
//! never crosses the wire. The exchange itself is [`crate::auth::scram`]; this is its
//! per-session state machine.
//!
//! Idle → (CLIENT_FIRST, answered SERVER_FIRST) → awaiting the final → (CLIENT_FINAL, answered
//! SERVER_FINAL or ACCESS_DENIED) → done or idle again. A message out of that order, or one
//! that does not follow the SCRAM grammar, gets a Capabilities ERROR and puts the session back
//! to idle, so the next login starts over with a new nonce.
//!
//! A wrong proof, an unknown user and a client-final carrying another exchange's nonce (a
//! replay) are all login attempts that failed: each is answered ACCESS_DENIED and recorded with
//! [`Login::record_auth_failure`], like a wrong password on DatabaseAuth.
//!
//! So is an abandoned exchange: a CLIENT_FIRST (which costs the server a store lookup) that is
//! not followed by its CLIENT_FINAL, because another message came instead or the connection
//! ended. Every CLIENT_FIRST therefore ends in a success or a recorded failure, and
//! `security.max_auth_failures` bounds the lookups one connection can ask for, as the source's
//! penalty bounds those of many connections.

use super::{HandlerError, Protocol, ProtocolHandler};
use crate::auth::scram::{ClientFirst, ScramError, ServerExchange};
use crate::auth::{User, UserStore};
use crate::session::{Login, Session};
use crate::wire::scram::ScramMessage;
use crate::wire::{protocol_id, Message};
use async_trait::async_trait;
use bytes::Bytes;
use std::sync::Arc;

/// The server side of ScramAuth. Not registered by default: add it with
/// [`ServerBuilder::scram`](crate::server::ServerBuilder::scram).
#[derive(Clone)]
pub struct ScramAuth {
    /// Where credentials are looked up.
    store: Arc<dyn UserStore>,
}

impl ScramAuth {
    /// ScramAuth against `store`.
    pub fn new(store: Arc<dyn UserStore>) -> Self {
        ScramAuth { store }
    }
}

impl Protocol for ScramAuth {
    fn id(&self) -> u16 {
        protocol_id::SCRAM_AUTH
    }

    fn name(&self) -> &'static str {
        "scram_auth"
    }

    fn requires_auth(&self) -> bool {
        false
    }

    fn new_handler(&self, session: &Session) -> Box<dyn ProtocolHandler> {
        Box::new(ScramHandler {
            store: self.store.clone(),
            session: session.clone(),
            state: State::Idle,
        })
    }
}

/// One session's ScramAuth state.
struct ScramHandler {
    store: Arc<dyn UserStore>,
    /// The session, to record an exchange abandoned by closing the connection.
    session: Session,
    state: State,
}

impl Drop for ScramHandler {
    /// The session ended in the middle of an exchange: a failed login for the source's
    /// penalty, so that opening a connection per CLIENT_FIRST buys no free lookups.
    fn drop(&mut self) {
        if let State::AwaitingFinal { name, .. } = &self.state {
            if !self.session.is_authenticated() {
                tracing::debug!(session = self.session.id(), user = %name, "SCRAM exchange abandoned by closing");
                Login::new(&self.session).record_denied_login(name);
            }
        }
    }
}

enum State {
    /// No exchange under way.
    Idle,
    /// SERVER_FIRST sent; waiting for CLIENT_FINAL.
    AwaitingFinal {
        /// Boxed: most sessions never get here, and the idle state should stay small.
        exchange: Box<ServerExchange>,
        /// The user the exchange is for; `None` for fake credentials.
        user: Option<User>,
        /// The name the client gave, for logs.
        name: String,
    },
    /// Logged in; nothing more to do.
    Done,
}

const NAME: &str = "scram_auth";

#[async_trait]
impl ProtocolHandler for ScramHandler {
    async fn on_packet(&mut self, session: &Session, body: Bytes) -> Result<(), HandlerError> {
        // Whatever arrives, the exchange under way is over unless the step below continues it.
        let state = std::mem::replace(&mut self.state, State::Idle);
        let message = ScramMessage::decode(&body);
        if let State::AwaitingFinal { name, .. } = &state {
            if !matches!(message, Ok(ScramMessage::ClientFinal(_))) && !session.is_authenticated() {
                abandoned(session, name);
            }
        }
        let message = message?;
        if session.is_authenticated() {
            self.state = State::Done;
            return Err(HandlerError::Rejected("already authenticated".into()));
        }
        match (message, state) {
            (ScramMessage::ClientFirst(first), State::Idle) => {
                self.client_first(session, &first).await
            }
            (
                ScramMessage::ClientFinal(last),
                State::AwaitingFinal {
                    exchange,
                    user,
                    name,
                },
            ) => {
                self.client_final(session, &last, exchange, user, &name)
                    .await
            }
            (ScramMessage::ClientFirst(_), _) => Err(HandlerError::Rejected(
                "CLIENT_FIRST during an exchange; start over".into(),
            )),
            (ScramMessage::ClientFinal(_), _) => Err(HandlerError::Rejected(
                "CLIENT_FINAL without CLIENT_FIRST; start over".into(),
            )),
            (ScramMessage::Error(text), _) => {
                tracing::debug!(
                    session = session.id(),
                    text,
                    "client abandoned the exchange"
                );
                Ok(())
            }
            _ => Err(HandlerError::Rejected(
                "only CLIENT_FIRST and CLIENT_FINAL are accepted from a client".into(),
            )),
        }
    }

    async fn on_error(&mut self, session: &Session, message: &str) {
        tracing::debug!(
            session = session.id(),
            message,
            "peer reported a protocol error"
        );
        if let State::AwaitingFinal { name, .. } = &self.state {
            if !session.is_authenticated() {
                abandoned(session, name);
            }
            self.state = State::Idle;
        }
    }
}

/// Records an exchange given up before its CLIENT_FINAL as a failed login for `name`.
fn abandoned(session: &Session, name: &str) {
    let failures = Login::new(session).record_denied_login(name);
    tracing::info!(
        session = session.id(),
        peer = %session.peer(),
        protocol = NAME,
        user = name,
        failures,
        "SCRAM exchange abandoned; counted as a failed login"
    );
}

impl ScramHandler {
    async fn client_first(&mut self, session: &Session, message: &str) -> Result<(), HandlerError> {
        let first = ClientFirst::parse(message).map_err(rejected)?;
        let lookup = self.store.scram_lookup(first.user()).await.map_err(|e| {
            tracing::error!(session = session.id(), protocol = NAME, error = %e, "user store failed");
            HandlerError::Internal(e.to_string())
        })?;
        let (server_first, exchange) = ServerExchange::start(&first, &lookup);
        session
            .send_message(&ScramMessage::ServerFirst(server_first))
            .await?;
        self.state = State::AwaitingFinal {
            exchange: Box::new(exchange),
            user: lookup.user,
            name: first.user().to_owned(),
        };
        Ok(())
    }

    async fn client_final(
        &mut self,
        session: &Session,
        message: &str,
        exchange: Box<ServerExchange>,
        user: Option<User>,
        name: &str,
    ) -> Result<(), HandlerError> {
        // Judged by the state the attempt arrived in; the proof is checked all the same, so a
        // penalised denial looks and costs like any other.
        let penalized = session.source_penalized();
        match (exchange.finish(message), user) {
            (Ok(server_final), Some(user)) if !penalized => {
                tracing::info!(
                    session = session.id(),
                    peer = %session.peer(),
                    protocol = NAME,
                    user = %user.name,
                    "authenticated"
                );
                Login::new(session).authenticate(user);
                self.state = State::Done;
                session
                    .send_message(&ScramMessage::ServerFinal(server_final))
                    .await?;
                Ok(())
            }
            // A proof that did not verify (fake credentials never verify), a replayed
            // client-final, or a penalised source.
            (Ok(_) | Err(ScramError::InvalidProof | ScramError::NonceMismatch), _) => {
                // Logged before the denial is recorded: recording it may start a penalty, whose own
                // line then follows this one.
                let failures = session.auth_failures().saturating_add(1);
                tracing::info!(
                    session = session.id(),
                    peer = %session.peer(),
                    protocol = NAME,
                    user = name,
                    failures,
                    during_penalty = penalized,
                    "authentication denied"
                );
                Login::new(session).record_denied_login(name);
                session.send_message(&ScramMessage::AccessDenied).await?;
                Ok(())
            }
            // A malformed final ends the exchange as surely as none: it counts too.
            (Err(e), _) => {
                abandoned(session, name);
                Err(rejected(e))
            }
        }
    }
}

/// A grammar or exchange error, told to the client in the Capabilities ERROR.
fn rejected(e: ScramError) -> HandlerError {
    HandlerError::Rejected(e.to_string())
}
