//! The server side: [`ChatProtocol`], the rooms every session shares, and one handler per
//! session.
//!
//! Sends to other members use [`Session::push`]: a member whose queue is full is disconnected
//! as a slow consumer instead of holding up the room. A session leaves its rooms when its
//! handler is dropped, which the session driver does once the session has closed, however it
//! closed; the remaining members hear a PRESENCE left.

use crate::messages::{Event, Request, PROTOCOL_ID};
use async_trait::async_trait;
use bytes::Bytes;
use openserver::protocol::{HandlerError, Protocol, ProtocolHandler};
use openserver::session::{Session, SessionId};
use openserver::wire::Message;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

/// Rooms one session may be in at once, so a single client cannot grow the table without end.
pub const MAX_ROOMS_PER_SESSION: usize = 32;

/// One session in a room.
struct Member {
    /// The user name it joined as, kept for the PRESENCE left.
    user: String,
    /// Where to push the room's events.
    session: Session,
}

/// Room name to its members.
type Rooms = HashMap<String, HashMap<SessionId, Member>>;

/// The chat protocol. Clones share the rooms, so a clone kept aside can inspect them.
#[derive(Clone, Default)]
pub struct ChatProtocol {
    /// Every room with at least one member.
    rooms: Arc<Mutex<Rooms>>,
}

impl ChatProtocol {
    /// A protocol with no rooms yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The names of the rooms that have members, sorted.
    pub fn rooms(&self) -> Vec<String> {
        let mut names: Vec<String> = lock(&self.rooms).keys().cloned().collect();
        names.sort();
        names
    }

    /// The user names in `room`, sorted; empty if the room does not exist.
    pub fn members(&self, room: &str) -> Vec<String> {
        lock(&self.rooms).get(room).map(names).unwrap_or_default()
    }
}

impl std::fmt::Debug for ChatProtocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatProtocol")
            .field("rooms", &self.rooms())
            .finish()
    }
}

impl Protocol for ChatProtocol {
    fn id(&self) -> u16 {
        PROTOCOL_ID
    }

    fn name(&self) -> &'static str {
        "chat"
    }

    fn new_handler(&self, session: &Session) -> Box<dyn ProtocolHandler> {
        Box::new(ChatHandler {
            rooms: self.rooms.clone(),
            session_id: session.id(),
            joined: BTreeSet::new(),
        })
    }
}

/// One session's chat state.
struct ChatHandler {
    rooms: Arc<Mutex<Rooms>>,
    /// Kept so `Drop`, which has no session, can find this session's entries.
    session_id: SessionId,
    /// The rooms this session is in.
    joined: BTreeSet<String>,
}

#[async_trait]
impl ProtocolHandler for ChatHandler {
    async fn on_packet(&mut self, session: &Session, body: Bytes) -> Result<(), HandlerError> {
        // Undecodable bodies go back as the framework's Capabilities ERROR; requests that
        // decode but are refused get a chat ERROR.
        let request = Request::decode(&body)?;
        let refusal = match request.validate() {
            Ok(()) => self.handle(session, request),
            Err(e) => Err(e.to_string()),
        };
        if let Err(text) = refusal {
            session.send_message(&Event::Error(text)).await?;
        }
        Ok(())
    }
}

impl ChatHandler {
    /// Applies a valid request; `Err` is the text of the chat ERROR to send back.
    fn handle(&mut self, session: &Session, request: Request) -> Result<(), String> {
        // The protocol requires authentication, so the driver only calls us with a user.
        let user = session.user().map(|u| u.name).ok_or("not authenticated")?;
        // Everything below runs under the lock and pushes without waiting, so each member
        // sees a room's events in one order and the lock is never held across an await.
        let mut rooms = lock(&self.rooms);
        match request {
            Request::Join(room) => {
                if !self.joined.contains(&room) && self.joined.len() >= MAX_ROOMS_PER_SESSION {
                    return Err(format!("already in {MAX_ROOMS_PER_SESSION} rooms"));
                }
                let members = rooms.entry(room.clone()).or_default();
                if !self.joined.contains(&room) {
                    let presence = Event::Presence {
                        room: room.clone(),
                        user: user.clone(),
                        joined: true,
                    };
                    push_all(members, &presence);
                    let member = Member {
                        user,
                        session: session.clone(),
                    };
                    members.insert(self.session_id, member);
                    self.joined.insert(room.clone());
                }
                let joined = Event::Joined {
                    members: names(members),
                    room,
                };
                let _ = session.push(joined.to_frame());
            }
            Request::Leave(room) => {
                if !self.joined.remove(&room) {
                    return Err(format!("not in room {room:?}"));
                }
                leave(&mut rooms, &room, self.session_id);
            }
            Request::Say { room, text } => {
                let members = match rooms.get(&room) {
                    Some(members) if self.joined.contains(&room) => members,
                    _ => return Err(format!("not in room {room:?}")),
                };
                let message = Event::Message {
                    room,
                    from: user,
                    sent_at: SystemTime::now(),
                    text,
                };
                push_all(members, &message);
            }
        }
        Ok(())
    }
}

impl Drop for ChatHandler {
    fn drop(&mut self) {
        let mut rooms = lock(&self.rooms);
        for room in std::mem::take(&mut self.joined) {
            leave(&mut rooms, &room, self.session_id);
        }
    }
}

/// Removes a session from a room, tells the rest, and drops the room once empty.
fn leave(rooms: &mut Rooms, room: &str, id: SessionId) {
    let Some(members) = rooms.get_mut(room) else {
        return;
    };
    if let Some(gone) = members.remove(&id) {
        let presence = Event::Presence {
            room: room.to_owned(),
            user: gone.user,
            joined: false,
        };
        push_all(members, &presence);
    }
    if members.is_empty() {
        rooms.remove(room);
    }
}

/// Pushes an event to every member. Encoded once; frames share the bytes.
fn push_all(members: &HashMap<SessionId, Member>, event: &Event) {
    let frame = event.to_frame();
    for member in members.values() {
        // A full queue closes that member (slow consumer); its handler's drop then removes
        // it. A closed one is on its way out the same way. Neither concerns the sender.
        let _ = member.session.push(frame.clone());
    }
}

/// The sorted user names of a room's members.
fn names(members: &HashMap<SessionId, Member>) -> Vec<String> {
    let mut names: Vec<String> = members.values().map(|m| m.user.clone()).collect();
    names.sort();
    names
}

/// Locks the rooms; each update leaves them consistent, so a panicked holder's data is usable.
fn lock(rooms: &Mutex<Rooms>) -> MutexGuard<'_, Rooms> {
    rooms.lock().unwrap_or_else(PoisonError::into_inner)
}
