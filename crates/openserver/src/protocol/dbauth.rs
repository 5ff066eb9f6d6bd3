//! DatabaseAuth (protocol 3): user name and password checked against the [`UserStore`]; the
//! answer carries the user's numeric id.

use super::{password, HandlerError, Protocol, ProtocolHandler};
use crate::auth::UserStore;
use crate::session::Session;
use crate::wire::dbauth::DatabaseAuthMessage;
use crate::wire::protocol_id;
use async_trait::async_trait;
use bytes::Bytes;
use std::sync::Arc;

/// The server side of DatabaseAuth.
#[derive(Clone)]
pub struct DatabaseAuth {
    /// Where credentials are checked.
    store: Arc<dyn UserStore>,
}

impl DatabaseAuth {
    /// DatabaseAuth against `store`.
    pub fn new(store: Arc<dyn UserStore>) -> Self {
        DatabaseAuth { store }
    }
}

impl Protocol for DatabaseAuth {
    fn id(&self) -> u16 {
        protocol_id::DATABASE_AUTH
    }

    fn name(&self) -> &'static str {
        "database_auth"
    }

    fn requires_auth(&self) -> bool {
        false
    }

    fn new_handler(&self, _session: &Session) -> Box<dyn ProtocolHandler> {
        Box::new(self.clone())
    }
}

#[async_trait]
impl ProtocolHandler for DatabaseAuth {
    async fn on_packet(&mut self, session: &Session, body: Bytes) -> Result<(), HandlerError> {
        let DatabaseAuthMessage::Authenticate { user, password } = session.decode(&body)? else {
            return Err(HandlerError::Rejected(
                "only AUTHENTICATE is accepted from a client".into(),
            ));
        };
        let answer =
            match password::login(&*self.store, session, self.name(), &user, &password, true)
                .await?
            {
                Some(user) => DatabaseAuthMessage::Authenticated { user_id: user.id },
                None => DatabaseAuthMessage::AccessDenied,
            };
        session.send_message(&answer).await?;
        Ok(())
    }
}
