#![forbid(unsafe_code)]
#![warn(missing_docs)]
//! # scoreboard
//!
//! A live scoreboard on openserver's typed application API ([`openserver::app`]): clients
//! SET a game's score, GET it, and WATCH a game to have every later SET pushed to them. Users
//! come from the server's SQLite store. The app's own code is this file: the messages, the
//! handler, and (in `src/bin/scoreboard.rs`) the client calls.
//!
//! ```text
//! cargo run -p scoreboard --bin scoreboard-server -- --add-user alice:secret1
//! echo secret1 | cargo run -p scoreboard --bin scoreboard -- --user alice watch chess
//! echo secret1 | cargo run -p scoreboard --bin scoreboard -- --user alice set chess 3
//! ```

use openserver::app::{self, Api, AppError, Context, Handler};
use openserver::session::SessionId;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, PoisonError};

/// The scoreboard protocol: its id and its three message types.
pub struct Scoreboard;

impl Api for Scoreboard {
    const ID: u16 = 0x0300;
    const NAME: &'static str = "scoreboard";
    type Request = Request;
    type Response = Score;
    type Push = Update;
}

/// What a client asks.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Request {
    /// Sets a game's score; every watcher of the game hears it.
    Set {
        /// The game, 1 to [`MAX_NAME`] bytes.
        game: String,
        /// Its new score.
        score: i64,
    },
    /// Asks for a game's score.
    Get(String),
    /// Pushes every later SET of this game to the asking session; answers the score now.
    Watch(String),
}

/// The answer to every request: the game's score after it (`None`: never set).
pub type Score = Option<i64>;

/// A SET, pushed to the game's watchers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Update {
    /// The game.
    pub game: String,
    /// Its new score.
    pub score: i64,
}

/// Longest game name in bytes; at most [`MAX_GAMES`] games are kept. Bad input gets an
/// error, never unbounded memory.
pub const MAX_NAME: usize = 64;
/// See [`MAX_NAME`].
pub const MAX_GAMES: usize = 10_000;

/// The server's state: every game's score and watchers.
#[derive(Default)]
pub struct Board(Mutex<HashMap<String, Game>>);
type Game = (Score, HashSet<SessionId>);

impl Handler<Scoreboard> for Board {
    async fn request(&self, ctx: &Context<'_, Scoreboard>, req: Request) -> app::Result<Score> {
        let mut games = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let (Request::Set { game, .. } | Request::Get(game) | Request::Watch(game)) = &req;
        let new = !games.contains_key(game);
        if game.is_empty() || game.len() > MAX_NAME || (new && games.len() >= MAX_GAMES) {
            return Err(AppError::new("bad_game", "1-64 bytes, 10000 games at most"));
        }
        Ok(match req {
            Request::Set { game, score } => {
                let entry = games.entry(game.clone()).or_default();
                entry.0 = Some(score);
                ctx.push_to_sessions(entry.1.iter().copied(), &Update { game, score });
                Some(score)
            }
            Request::Get(game) => games.get(&game).and_then(|g| g.0),
            Request::Watch(game) => {
                let entry = games.entry(game).or_default();
                entry.1.insert(ctx.session_id());
                entry.0
            }
        })
    }

    async fn on_close(&self, ctx: &Context<'_, Scoreboard>) {
        let mut games = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let id = ctx.session_id();
        games
            .values_mut()
            .for_each(|(_, watchers)| _ = watchers.remove(&id));
    }
}
