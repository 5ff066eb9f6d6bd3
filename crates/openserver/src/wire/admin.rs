//! Session administration, "Admin" (protocol 5, openserver only): list the server's sessions
//! and kick one, on this node or (LIST_ALL, KICK_ON) on every node of a cluster. The server
//! runs it only for users holding the admin role.

use super::{protocol_id, DecodeError, Message, Reader, WireWrite};
use bytes::{BufMut, BytesMut};
use std::time::SystemTime;

/// Command byte of [`AdminMessage::List`].
pub const LIST: u8 = 0x01;
/// Command byte of [`AdminMessage::Sessions`].
pub const SESSIONS: u8 = 0x02;
/// Command byte of [`AdminMessage::Kick`].
pub const KICK: u8 = 0x03;
/// Command byte of [`AdminMessage::Kicked`].
pub const KICKED: u8 = 0x04;
/// Command byte of [`AdminMessage::NotFound`].
pub const NOT_FOUND: u8 = 0x05;
/// Command byte of [`AdminMessage::ListAll`].
pub const LIST_ALL: u8 = 0x06;
/// Command byte of [`AdminMessage::AllSessions`].
pub const ALL_SESSIONS: u8 = 0x07;
/// Command byte of [`AdminMessage::KickOn`].
pub const KICK_ON: u8 = 0x08;
/// Command byte of [`AdminMessage::Error`].
pub const ERROR: u8 = 0xFF;

/// The fewest bytes one [`SessionInfo`] takes: id, two empty strings, two date-times and an
/// empty array. Checked against the body before a claimed count allocates anything.
const MIN_SESSION_INFO_LEN: usize = 8 + 1 + 1 + 8 + 8 + 4;

/// One session as [`AdminMessage::Sessions`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    /// The session id (sent as an i64; ids never reach 2^63).
    pub id: u64,
    /// The user it is logged in as; empty if it has not logged in.
    pub user: String,
    /// The peer's address, `ip:port`.
    pub peer: String,
    /// When the connection was accepted.
    pub since: SystemTime,
    /// When the last frame arrived from the peer (`since` until one has).
    pub last_activity: SystemTime,
    /// The protocols the session uses (those the server has started for it), ascending.
    pub protocols: Vec<u16>,
}

impl SessionInfo {
    fn decode(r: &mut Reader<'_>) -> Result<SessionInfo, DecodeError> {
        Ok(SessionInfo {
            // The wire carries an i64; the cast back restores every u64 bit for bit.
            id: r.i64()? as u64,
            user: r.string()?,
            peer: r.string()?,
            since: r.date_time()?,
            last_activity: r.date_time()?,
            protocols: r.array_of(2, |r| r.u16())?,
        })
    }

    fn encode(&self, dst: &mut BytesMut) {
        dst.put_i64_le(self.id as i64);
        dst.put_string(&self.user);
        dst.put_string(&self.peer);
        dst.put_date_time(self.since);
        dst.put_date_time(self.last_activity);
        dst.put_count(self.protocols.len());
        for id in &self.protocols {
            dst.put_u16_le(*id);
        }
    }
}

/// One session of a cluster as [`AdminMessage::AllSessions`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSessionInfo {
    /// The node it is on (its `--node-id`); empty on a server that is not in a cluster.
    pub node: String,
    /// The session, with its id on that node.
    pub session: SessionInfo,
}

/// An Admin packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminMessage {
    /// Client: list every open session.
    List,
    /// Server: the open sessions, ascending by id.
    Sessions(Vec<SessionInfo>),
    /// Client: close this session (the server sends it QUIT first).
    Kick {
        /// The session to close.
        session_id: u64,
    },
    /// Server: the session was closed.
    Kicked {
        /// The session closed.
        session_id: u64,
    },
    /// Server: no open session has this id.
    NotFound {
        /// The id asked for.
        session_id: u64,
    },
    /// Client: list every open session of every node (of this node alone, outside a cluster).
    ListAll {
        /// The most sessions listed per node (0: the server's default, 10,000); a node with
        /// more lists its lowest ids and counts the rest in `omitted`.
        max_per_node: u32,
    },
    /// Server: the sessions of every node that answered, ascending by node then id.
    AllSessions {
        /// The sessions.
        sessions: Vec<NodeSessionInfo>,
        /// Nodes that did not answer in time: their sessions are missing from the list.
        unanswered: u32,
        /// Sessions left out because their node had more than `max_per_node`.
        omitted: u32,
    },
    /// Client: close this session of this node (the server sends it QUIT first). Answered
    /// with KICKED or NOT_FOUND.
    KickOn {
        /// The node the session is on; empty for the node that receives the command.
        node: String,
        /// The session's id on that node.
        session_id: u64,
    },
    /// Either side: the request could not be processed. (The openserver server reports
    /// errors with a Capabilities ERROR instead, as for every protocol.)
    Error(String),
}

impl Message for AdminMessage {
    const PROTOCOL_ID: u16 = protocol_id::ADMIN;

    fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let id = |r: &mut Reader<'_>| r.i64().map(|id| id as u64);
        let msg = match r.command()? {
            LIST => AdminMessage::List,
            SESSIONS => {
                AdminMessage::Sessions(r.array_of(MIN_SESSION_INFO_LEN, SessionInfo::decode)?)
            }
            KICK => AdminMessage::Kick {
                session_id: id(&mut r)?,
            },
            KICKED => AdminMessage::Kicked {
                session_id: id(&mut r)?,
            },
            NOT_FOUND => AdminMessage::NotFound {
                session_id: id(&mut r)?,
            },
            LIST_ALL => AdminMessage::ListAll {
                max_per_node: r.count()? as u32,
            },
            ALL_SESSIONS => AdminMessage::AllSessions {
                sessions: r.array_of(1 + MIN_SESSION_INFO_LEN, |r| {
                    Ok(NodeSessionInfo {
                        node: r.string()?,
                        session: SessionInfo::decode(r)?,
                    })
                })?,
                unanswered: r.count()? as u32,
                omitted: r.count()? as u32,
            },
            KICK_ON => AdminMessage::KickOn {
                node: r.string()?,
                session_id: id(&mut r)?,
            },
            ERROR => AdminMessage::Error(r.string_lossy()?),
            other => return Err(DecodeError::UnknownCommand(other)),
        };
        r.finish()?;
        Ok(msg)
    }

    fn encode(&self, dst: &mut BytesMut) {
        match self {
            AdminMessage::List => dst.put_u8(LIST),
            AdminMessage::Sessions(sessions) => {
                dst.put_u8(SESSIONS);
                dst.put_count(sessions.len());
                for session in sessions {
                    session.encode(dst);
                }
            }
            AdminMessage::Kick { session_id } => {
                dst.put_u8(KICK);
                dst.put_i64_le(*session_id as i64);
            }
            AdminMessage::Kicked { session_id } => {
                dst.put_u8(KICKED);
                dst.put_i64_le(*session_id as i64);
            }
            AdminMessage::NotFound { session_id } => {
                dst.put_u8(NOT_FOUND);
                dst.put_i64_le(*session_id as i64);
            }
            AdminMessage::ListAll { max_per_node } => {
                dst.put_u8(LIST_ALL);
                dst.put_count(*max_per_node as usize);
            }
            AdminMessage::AllSessions {
                sessions,
                unanswered,
                omitted,
            } => {
                dst.put_u8(ALL_SESSIONS);
                dst.put_count(sessions.len());
                for entry in sessions {
                    dst.put_string(&entry.node);
                    entry.session.encode(dst);
                }
                dst.put_count(*unanswered as usize);
                dst.put_count(*omitted as usize);
            }
            AdminMessage::KickOn { node, session_id } => {
                dst.put_u8(KICK_ON);
                dst.put_string(node);
                dst.put_i64_le(*session_id as i64);
            }
            AdminMessage::Error(message) => {
                dst.put_u8(ERROR);
                dst.put_string(message);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::primitives::system_time_from_ticks;

    fn round_trip(message: AdminMessage) {
        let frame = message.to_frame();
        assert_eq!(frame.protocol_id, protocol_id::ADMIN);
        assert_eq!(AdminMessage::decode(&frame.body).unwrap(), message);
    }

    #[test]
    fn every_message_round_trips() {
        // Whole ticks, since the wire keeps 100 ns.
        let since = system_time_from_ticks(638_000_000_000_000_000);
        round_trip(AdminMessage::List);
        round_trip(AdminMessage::Sessions(vec![]));
        round_trip(AdminMessage::Sessions(vec![
            SessionInfo {
                id: 1,
                user: String::new(),
                peer: "127.0.0.1:5000".into(),
                since,
                last_activity: since,
                protocols: vec![],
            },
            SessionInfo {
                id: u64::MAX,
                user: "alice".into(),
                peer: "[::1]:6000".into(),
                since,
                last_activity: system_time_from_ticks(638_000_000_100_000_000),
                protocols: vec![1, 3, 10],
            },
        ]));
        round_trip(AdminMessage::Kick { session_id: 42 });
        round_trip(AdminMessage::Kicked { session_id: 42 });
        round_trip(AdminMessage::NotFound { session_id: 7 });
        round_trip(AdminMessage::Error("no".into()));
        round_trip(AdminMessage::ListAll { max_per_node: 0 });
        round_trip(AdminMessage::AllSessions {
            sessions: vec![],
            unanswered: 0,
            omitted: 0,
        });
        round_trip(AdminMessage::AllSessions {
            sessions: vec![NodeSessionInfo {
                node: "n2".into(),
                session: SessionInfo {
                    id: 9,
                    user: "bob".into(),
                    peer: "127.0.0.2:1".into(),
                    since,
                    last_activity: since,
                    protocols: vec![6],
                },
            }],
            unanswered: 2,
            omitted: 3,
        });
        round_trip(AdminMessage::KickOn {
            node: "n3".into(),
            session_id: 5,
        });
    }

    #[test]
    fn cluster_commands_are_laid_out_as_documented() {
        let frame = AdminMessage::KickOn {
            node: "n2".into(),
            session_id: 7,
        }
        .to_frame();
        assert_eq!(
            hex::encode(&frame.body),
            ["08", "026e32", "0700000000000000"].concat()
        );
        let frame = AdminMessage::AllSessions {
            sessions: vec![],
            unanswered: 1,
            omitted: 2,
        }
        .to_frame();
        assert_eq!(hex::encode(&frame.body), "07000000000100000002000000");
        let frame = AdminMessage::ListAll { max_per_node: 5 }.to_frame();
        assert_eq!(hex::encode(&frame.body), "0605000000");
        // A claimed count the body cannot hold is refused before it allocates.
        let mut body = vec![ALL_SESSIONS];
        body.extend_from_slice(&i32::MAX.to_le_bytes());
        assert!(AdminMessage::decode(&body).is_err());
    }

    #[test]
    fn layout_is_as_documented() {
        let frame = AdminMessage::Kick { session_id: 0x0102 }.to_frame();
        assert_eq!(
            hex::encode(frame.to_bytes().unwrap()),
            ["5355", "0b000000", "0500", "03", "0201000000000000"].concat()
        );
        let info = SessionInfo {
            id: 2,
            user: "al".into(),
            peer: "p".into(),
            since: system_time_from_ticks(1),
            last_activity: system_time_from_ticks(2),
            protocols: vec![10],
        };
        let frame = AdminMessage::Sessions(vec![info]).to_frame();
        assert_eq!(
            hex::encode(&frame.body),
            [
                "02",               // SESSIONS
                "01000000",         // one session
                "0200000000000000", // id 2
                "02616c",           // "al"
                "0170",             // "p"
                "0100000000000000", // since, 1 tick
                "0200000000000000", // last activity, 2 ticks
                "01000000",         // one protocol
                "0a00",             // 10
            ]
            .concat()
        );
    }

    #[test]
    fn the_documented_example_matches() {
        // docs/PROTOCOL.md, section 4.7.
        let info = SessionInfo {
            id: 7,
            user: "alice".into(),
            peer: "127.0.0.1:50514".into(),
            since: system_time_from_ticks(638_717_516_430_000_000),
            last_activity: system_time_from_ticks(638_717_520_415_000_000),
            protocols: vec![3, 5],
        };
        let frame = AdminMessage::Sessions(vec![info]).to_frame();
        assert_eq!(
            hex::encode(frame.to_bytes().unwrap()),
            [
                "53553d000000",
                "0500",
                "02",
                "01000000",
                "0700000000000000",
                "05616c696365",
                "0f3132372e302e302e313a3530353134",
                "803fa176322edd08",
                "c0852764332edd08",
                "02000000",
                "03000500",
            ]
            .concat()
        );
        assert_eq!(
            hex::encode(AdminMessage::List.to_frame().to_bytes().unwrap()),
            "535503000000050001"
        );
        assert_eq!(
            hex::encode(
                AdminMessage::Kicked { session_id: 9 }
                    .to_frame()
                    .to_bytes()
                    .unwrap()
            ),
            "53550b0000000500040900000000000000"
        );
    }

    #[test]
    fn a_huge_claimed_count_fails_without_allocating() {
        let body = [SESSIONS, 0xff, 0xff, 0xff, 0x7f, 0];
        assert!(matches!(
            AdminMessage::decode(&body),
            Err(DecodeError::Truncated { .. })
        ));
        assert_eq!(
            AdminMessage::decode(&[0x09]),
            Err(DecodeError::UnknownCommand(0x09))
        );
        assert_eq!(
            AdminMessage::decode(&[LIST, 0]),
            Err(DecodeError::TrailingBytes(1))
        );
    }
}
