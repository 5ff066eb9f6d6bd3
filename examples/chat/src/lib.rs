#![forbid(unsafe_code)]
#![warn(missing_docs)]
//! # chat
//!
//! Chat rooms on openserver's typed application API ([`openserver::app`]), in the style of
//! the scoreboard example: clients JOIN and LEAVE rooms and SAY things there; every member
//! gets what is said, and hears who comes and goes, as pushes. The app's own code is this
//! file: the messages, the handler, and [`join`], which rejoins after a reconnect. The
//! binaries (`src/bin/`) are a server and a line-oriented client.
//!
//! ```text
//! cargo run -p chat --bin chat-server -- --add-user alice:secret1 --add-user bob:secret2
//! cargo run -p chat --bin chat-client -- --user alice --room lobby
//! cargo run -p chat --bin chat-client -- --user bob --room lobby
//! ```

use openserver::app::{self, Api, AppError, Context, Handler, Remote};
use openserver::client::ClientError;
use openserver::session::SessionId;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

/// The chat protocol: its id and its message types.
pub struct Chat;

impl Api for Chat {
    const ID: u16 = 0x0100;
    const NAME: &'static str = "chat";
    type Request = Request;
    type Response = Members;
    type Push = Event;
}

/// What a client asks. Every request is answered with the room's members after it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Request {
    /// Enters a room (joining again changes nothing); the other members hear a presence.
    Join(String),
    /// Leaves a room; the remaining members hear a presence.
    Leave(String),
    /// Says `text` in a room the session is in: every member, the speaker too, gets it.
    Say {
        /// The room.
        room: String,
        /// What is said, at most [`MAX_TEXT`] bytes.
        text: String,
    },
}

/// The user names in a room, sorted (one per session).
pub type Members = Vec<String>;

/// What the server pushes to a room's members.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Event {
    /// Someone said something.
    Message {
        /// The room.
        room: String,
        /// The speaker's user name.
        from: String,
        /// When the server relayed it.
        sent_at: SystemTime,
        /// What was said.
        text: String,
    },
    /// Someone joined (`true`) or left (`false`, also by disconnecting).
    Presence {
        /// The room.
        room: String,
        /// Who.
        user: String,
        /// Joined or left.
        joined: bool,
    },
}

/// Longest room name in bytes. With [`MAX_TEXT`] and [`MAX_ROOMS_PER_SESSION`], the limits
/// that keep one client from growing the server's memory without end.
pub const MAX_ROOM: usize = 64;
/// Longest text in bytes.
pub const MAX_TEXT: usize = 4096;
/// Rooms one session may be in at once.
pub const MAX_ROOMS_PER_SESSION: usize = 32;

/// The server's rooms. Clones share them.
#[derive(Clone, Default)]
pub struct Rooms(Arc<Mutex<Table>>);
/// Room name, then the member sessions with their user names.
type Table = BTreeMap<String, HashMap<SessionId, String>>;

impl Handler<Chat> for Rooms {
    async fn request(&self, ctx: &Context<'_, Chat>, req: Request) -> app::Result<Members> {
        let id = ctx.session_id();
        let user = ctx.user().map(|u| u.name).unwrap_or_default();
        // Pushes never wait, so they go out under the lock: members see one order.
        let mut rooms = self.lock();
        let (Request::Join(room) | Request::Leave(room) | Request::Say { room, .. }) = &req;
        let (room, member) = (
            room.clone(),
            rooms.get(room).is_some_and(|m| m.contains_key(&id)),
        );
        let in_rooms = rooms.values().filter(|m| m.contains_key(&id)).count();
        match req {
            _ if room.is_empty() || room.len() > MAX_ROOM => {
                Err(AppError::new("bad_room", "1-64 bytes"))
            }
            Request::Join(_) if !member && in_rooms >= MAX_ROOMS_PER_SESSION => {
                Err(AppError::new("too_many_rooms", "in 32 rooms already"))
            }
            Request::Say { text, .. } if text.len() > MAX_TEXT => {
                Err(AppError::new("too_long", "4096 bytes at most"))
            }
            Request::Join(_) => {
                let members = rooms.entry(room.clone()).or_default();
                if !member {
                    let joined = Event::Presence {
                        room,
                        user: user.clone(),
                        joined: true,
                    };
                    ctx.push_to_sessions(members.keys().copied(), &joined);
                    members.insert(id, user);
                }
                Ok(names(members))
            }
            _ if !member => Err(AppError::new("not_member", format!("not in room {room:?}"))),
            Request::Leave(_) => Ok(leave(ctx, &mut rooms, &room, id)),
            Request::Say { text, .. } => {
                let members = &rooms[&room];
                let said = Event::Message {
                    room,
                    from: user,
                    sent_at: SystemTime::now(),
                    text,
                };
                ctx.push_to_sessions(members.keys().copied(), &said);
                Ok(names(members))
            }
        }
    }

    async fn on_close(&self, ctx: &Context<'_, Chat>) {
        let mut rooms = self.lock();
        for room in rooms.keys().cloned().collect::<Vec<_>>() {
            leave(ctx, &mut rooms, &room, ctx.session_id());
        }
    }
}

/// Takes session `id` out of `room` and tells the rest; the members left.
fn leave(ctx: &Context<'_, Chat>, rooms: &mut Table, room: &str, id: SessionId) -> Members {
    let Some(members) = rooms.get_mut(room) else {
        return Vec::new();
    };
    if let Some(user) = members.remove(&id) {
        let left = Event::Presence {
            room: room.into(),
            user,
            joined: false,
        };
        ctx.push_to_sessions(members.keys().copied(), &left);
    }
    let names = names(members);
    if members.is_empty() {
        rooms.remove(room);
    }
    names
}

fn names(members: &HashMap<SessionId, String>) -> Members {
    let mut names: Members = members.values().cloned().collect();
    names.sort();
    names
}

/// Client side: joins `room` and has it rejoined after every automatic reconnect (the server
/// forgets a lost session's rooms), so pushes keep coming to the same
/// [`Remote::next_push`]. Returns the members.
pub async fn join(chat: &Remote<Chat>, room: &str) -> Result<Members, ClientError> {
    let join = Request::Join(room.to_owned());
    let members = chat.request(&join).await?;
    chat.on_reconnect(move |chat| {
        let join = join.clone();
        async move { chat.request(&join).await.map(drop) }
    });
    Ok(members)
}

impl Rooms {
    /// The rooms that have members, sorted.
    pub fn rooms(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    /// The user names in `room`, sorted; empty if it has no members.
    pub fn members(&self, room: &str) -> Members {
        self.lock().get(room).map(names).unwrap_or_default()
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        // Each update leaves the rooms consistent, so a panicked holder's data is usable.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
