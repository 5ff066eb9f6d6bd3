//! WinAuth (protocol 2): user name, password and domain. The domain may be empty; a non-empty
//! domain must equal the configured realm (case-insensitively, as Windows domains compare).

use super::{password, HandlerError, Protocol, ProtocolHandler};
use crate::auth::UserStore;
use crate::session::Session;
use crate::wire::protocol_id;
use crate::wire::winauth::WinAuthMessage;
use async_trait::async_trait;
use bytes::Bytes;
use std::sync::Arc;

/// The server side of WinAuth.
#[derive(Clone)]
pub struct WinAuth {
    /// Where credentials are checked.
    store: Arc<dyn UserStore>,
    /// The only non-empty domain accepted.
    realm: Arc<str>,
}

impl WinAuth {
    /// WinAuth against `store`, accepting an empty domain or `realm`.
    pub fn new(store: Arc<dyn UserStore>, realm: impl Into<String>) -> Self {
        WinAuth {
            store,
            realm: realm.into().into(),
        }
    }

    fn domain_ok(&self, domain: &str) -> bool {
        domain.is_empty() || (!self.realm.is_empty() && domain.eq_ignore_ascii_case(&self.realm))
    }
}

impl Protocol for WinAuth {
    fn id(&self) -> u16 {
        protocol_id::WIN_AUTH
    }

    fn name(&self) -> &'static str {
        "win_auth"
    }

    fn requires_auth(&self) -> bool {
        false
    }

    fn new_handler(&self, _session: &Session) -> Box<dyn ProtocolHandler> {
        Box::new(self.clone())
    }
}

#[async_trait]
impl ProtocolHandler for WinAuth {
    async fn on_packet(&mut self, session: &Session, body: Bytes) -> Result<(), HandlerError> {
        let WinAuthMessage::Authenticate {
            user,
            password,
            domain,
        } = session.decode(&body)?
        else {
            return Err(HandlerError::Rejected(
                "only AUTHENTICATE is accepted from a client".into(),
            ));
        };
        let domain_ok = self.domain_ok(&domain);
        let answer = match password::login(
            &*self.store,
            session,
            self.name(),
            &user,
            &password,
            domain_ok,
        )
        .await?
        {
            Some(_) => WinAuthMessage::Authenticated,
            None => WinAuthMessage::AccessDenied,
        };
        session.send_message(&answer).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{AuthError, User};
    use crate::wire::Secret;

    struct NoUsers;

    #[async_trait]
    impl UserStore for NoUsers {
        async fn verify_password(&self, _: &str, _: &Secret) -> Result<Option<User>, AuthError> {
            Ok(None)
        }

        async fn find_user(&self, _: &str) -> Result<Option<User>, AuthError> {
            Ok(None)
        }
    }

    #[test]
    fn domain_rules() {
        let open = WinAuth::new(Arc::new(NoUsers), "");
        assert!(open.domain_ok(""));
        assert!(!open.domain_ok("CORP"));
        let corp = WinAuth::new(Arc::new(NoUsers), "corp");
        assert!(corp.domain_ok(""));
        assert!(corp.domain_ok("CORP"));
        assert!(!corp.domain_ok("other"));
    }
}
