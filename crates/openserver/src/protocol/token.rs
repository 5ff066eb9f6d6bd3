//! TokenAuth (protocol 7): logs in with a signed token (the application's JWT, or a resume
//! token this service issued), and hands out resume tokens to sessions logged in any way.

use super::{HandlerError, Protocol, ProtocolHandler};
use crate::auth::token::{TokenError, TokenKind, TokenUser, TokenVerifier};
use crate::auth::{User, UserStore};
use crate::session::{Login, Session};
use crate::wire::protocol_id;
use crate::wire::token::{denied, TokenAuthMessage};
use async_trait::async_trait;
use bytes::Bytes;
use std::sync::Arc;

/// The server side of TokenAuth.
#[derive(Clone)]
pub struct TokenAuth {
    verifier: Arc<TokenVerifier>,
    /// Resume logins need the user to still exist; application tokens take the id and roles
    /// of a user the store holds.
    store: Option<Arc<dyn UserStore>>,
}

impl TokenAuth {
    /// TokenAuth with these keys; `store` as above.
    pub fn new(verifier: Arc<TokenVerifier>, store: Option<Arc<dyn UserStore>>) -> Self {
        TokenAuth { verifier, store }
    }

    /// The user `token` logs in as, or why not (the detail for the log).
    async fn check(&self, token: &str) -> Result<User, (&'static str, String)> {
        let claims = self.verifier.verify(token).map_err(|e| match e {
            TokenError::Expired => (denied::EXPIRED, e.to_string()),
            TokenError::Invalid(_) => (denied::INVALID, e.to_string()),
        })?;
        let TokenUser { name, roles, kind } = claims;
        let stored = match &self.store {
            Some(store) => store
                .find_user(&name)
                .await
                .map_err(|e| (denied::INVALID, format!("the user store failed: {e}")))?,
            None => None,
        };
        match (stored, kind) {
            (Some(user), TokenKind::ResumeStored) => Ok(user),
            (None, TokenKind::ResumeStored) => Err((
                denied::INVALID,
                "a resume token of a user the store no longer holds".to_string(),
            )),
            // The token's roles, where it has some, are what the application grants now.
            (Some(user), TokenKind::Application) => Ok(User {
                roles: roles.unwrap_or(user.roles),
                ..user
            }),
            // Vouched for by the application (now, or at the login being resumed).
            (_, TokenKind::Application | TokenKind::ResumeExternal) => Ok(User {
                id: 0,
                name,
                roles: roles.unwrap_or_default(),
            }),
        }
    }

    /// A resume token for `user`; id 0 marks a user the store does not hold.
    fn resume_for(&self, user: &User) -> Result<(crate::wire::Secret, i32), HandlerError> {
        let token = self
            .verifier
            .issue_resume(user, user.id != 0)
            .map_err(|e| HandlerError::Internal(e.to_string()))?;
        let ttl = i32::try_from(self.verifier.resume_ttl().as_secs()).unwrap_or(i32::MAX);
        Ok((token, ttl))
    }
}

impl Protocol for TokenAuth {
    fn id(&self) -> u16 {
        protocol_id::TOKEN_AUTH
    }

    fn name(&self) -> &'static str {
        "token_auth"
    }

    fn requires_auth(&self) -> bool {
        false
    }

    fn new_handler(&self, _session: &Session) -> Box<dyn ProtocolHandler> {
        Box::new(self.clone())
    }
}

#[async_trait]
impl ProtocolHandler for TokenAuth {
    async fn on_packet(&mut self, session: &Session, body: Bytes) -> Result<(), HandlerError> {
        match session.decode(&body)? {
            TokenAuthMessage::Authenticate { token } => {
                if session.is_authenticated() {
                    return Err(HandlerError::Rejected("already authenticated".into()));
                }
                // Judged by the state the attempt arrived in, as password logins are.
                let penalized = session.source_penalized();
                let answer = match self.check(token.expose()).await {
                    Ok(user) if !penalized => {
                        tracing::info!(
                            session = session.id(),
                            peer = %session.peer(),
                            protocol = self.name(),
                            user = %user.name,
                            "authenticated"
                        );
                        let (resume, resume_ttl_secs) = self.resume_for(&user)?;
                        let answer = TokenAuthMessage::Authenticated {
                            user_id: user.id,
                            user: user.name.clone(),
                            resume,
                            resume_ttl_secs,
                        };
                        Login::new(session).authenticate(user);
                        answer
                    }
                    outcome => {
                        let (reason, detail, name) = match outcome {
                            Ok(user) => {
                                (denied::INVALID, "source penalised".to_string(), user.name)
                            }
                            Err((reason, detail)) => (
                                reason,
                                detail,
                                crate::auth::token::claimed_user(token.expose())
                                    .unwrap_or_default(),
                            ),
                        };
                        tracing::info!(
                            session = session.id(),
                            peer = %session.peer(),
                            protocol = self.name(),
                            claimed_user = %name,
                            error = %detail,
                            during_penalty = penalized,
                            "authentication denied"
                        );
                        Login::new(session).record_denied_login(&name);
                        TokenAuthMessage::AccessDenied {
                            reason: reason.to_string(),
                        }
                    }
                };
                session.send_message(&answer).await?;
                Ok(())
            }
            TokenAuthMessage::RequestResume => {
                let Some(user) = session.user() else {
                    return Err(HandlerError::Rejected(
                        "log in first: a resume token is for a logged-in session".into(),
                    ));
                };
                let (token, ttl_secs) = self.resume_for(&user)?;
                session
                    .send_message(&TokenAuthMessage::Resume { token, ttl_secs })
                    .await?;
                Ok(())
            }
            _ => Err(HandlerError::Rejected(
                "only AUTHENTICATE and REQUEST_RESUME are accepted from a client".into(),
            )),
        }
    }
}
