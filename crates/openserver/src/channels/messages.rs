//! The Channels protocol's messages, carried in the application envelope
//! ([`crate::app::envelope`]) of protocol [`CHANNELS_ID`]: what clients ask ([`Command`]),
//! what the server answers ([`Reply`]) and what it pushes ([`ChannelPush`]).
//! `docs/PROTOCOL.md` 4.8 is the byte-level reference.

use super::broker::{ClientInfo, Position};
use crate::app::Api;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// The protocol id of Channels.
pub const CHANNELS_ID: u16 = 0x0006;

/// The Channels protocol as a typed [`Api`], for [`Client::api`](crate::client::Client::api)
/// and for clients written from these types.
pub struct ChannelsApi;

impl Api for ChannelsApi {
    const ID: u16 = CHANNELS_ID;
    const NAME: &'static str = "channels";
    type Request = Command;
    type Response = Reply;
    type Push = ChannelPush;
}

/// A client's request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    /// Subscribe to `channel`; with `since`, first recover what was published after it.
    Subscribe {
        /// The channel's name.
        channel: String,
        /// The last position the client saw, to recover from.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since: Option<Position>,
    },
    /// Stop the subscription to `channel`.
    Unsubscribe {
        /// The channel's name.
        channel: String,
    },
    /// Publish `data` on `channel`; answered with its position.
    Publish {
        /// The channel's name.
        channel: String,
        /// The application's bytes (MessagePack bin).
        data: Bytes,
    },
    /// The sessions subscribed to `channel`.
    Presence {
        /// The channel's name.
        channel: String,
    },
    /// How many sessions and distinct users are subscribed to `channel`.
    PresenceCounts {
        /// The channel's name.
        channel: String,
    },
    /// Publications of `channel` kept in its history.
    History {
        /// The channel's name.
        channel: String,
        /// Only those after this position (which must be of the current epoch); from the
        /// oldest kept when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since: Option<Position>,
        /// At most this many (the server caps it at `max_history_limit`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u32>,
    },
}

impl Command {
    /// The channel the command is about.
    pub fn channel(&self) -> &str {
        match self {
            Command::Subscribe { channel, .. }
            | Command::Unsubscribe { channel }
            | Command::Publish { channel, .. }
            | Command::Presence { channel }
            | Command::PresenceCounts { channel }
            | Command::History { channel, .. } => channel,
        }
    }
}

/// What a recovery asked for with `since` came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Recovery {
    /// Every publication after `since` is in the answer: nothing was missed.
    Recovered,
    /// `since` is of another epoch (the history was lost, e.g. a restart): what was missed
    /// cannot be known.
    EpochChanged,
    /// Publications after `since` are no longer kept (too many or too old).
    TooOld,
}

impl Recovery {
    /// Every outcome, for metrics.
    pub const ALL: [Recovery; 3] = [
        Recovery::Recovered,
        Recovery::EpochChanged,
        Recovery::TooOld,
    ];

    /// A short stable label.
    pub fn label(self) -> &'static str {
        match self {
            Recovery::Recovered => "recovered",
            Recovery::EpochChanged => "epoch_changed",
            Recovery::TooOld => "too_old",
        }
    }
}

/// One publication as it reaches a client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicationMessage {
    /// Its channel.
    pub channel: String,
    /// The epoch of the channel's history.
    pub epoch: String,
    /// Its offset in that epoch.
    pub offset: u64,
    /// The application's bytes.
    pub data: Bytes,
    /// Who published it; empty for server code.
    pub user: String,
}

impl PublicationMessage {
    /// Its position.
    pub fn position(&self) -> Position {
        Position {
            epoch: self.epoch.clone(),
            offset: self.offset,
        }
    }
}

/// The answer to a subscribe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscribed {
    /// The position the subscription starts after: the client has, with this answer, seen
    /// everything up to it.
    pub position: Position,
    /// With `since`: whether the missed publications are recovered. Absent without `since`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery: Option<Recovery>,
    /// With a recovery: the missed publications, oldest first; then any published while the
    /// subscription started. Pushes follow only later publications.
    pub publications: Vec<PublicationMessage>,
}

/// The answer to a history request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryReply {
    /// The channel's latest position.
    pub position: Position,
    /// The publications asked for, oldest first.
    pub publications: Vec<PublicationMessage>,
}

/// The server's answer to a [`Command`] (the variant names the command answered).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    /// To [`Command::Subscribe`].
    Subscribed(Subscribed),
    /// To [`Command::Unsubscribe`].
    Unsubscribed {},
    /// To [`Command::Publish`]: the publication's position.
    Published(Position),
    /// To [`Command::Presence`].
    Presence {
        /// The sessions, oldest subscription first.
        clients: Vec<ClientInfo>,
    },
    /// To [`Command::PresenceCounts`].
    PresenceCounts {
        /// Sessions subscribed.
        sessions: u64,
        /// Distinct users among them.
        users: u64,
    },
    /// To [`Command::History`].
    History(HistoryReply),
}

/// What the server pushes to a subscribed session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChannelPush {
    /// A publication on a channel the session is subscribed to.
    Publication(PublicationMessage),
    /// A session joined the channel.
    Join {
        /// The channel.
        channel: String,
        /// Who joined.
        client: ClientInfo,
    },
    /// A session left the channel.
    Leave {
        /// The channel.
        channel: String,
        /// Who left.
        client: ClientInfo,
    },
    /// The server ended the session's subscription.
    Ended {
        /// The channel.
        channel: String,
        /// Why, as a stable label (`server`: server code unsubscribed it).
        reason: String,
    },
}

/// Error codes of Channels answers (the `code` of an ERROR).
pub mod codes {
    /// The channel name is empty, too long or holds white space or a control character.
    pub const BAD_CHANNEL: &str = "bad_channel";
    /// The channel's namespace is not configured.
    pub const UNKNOWN_NAMESPACE: &str = "unknown_namespace";
    /// The session's user may not do this on this channel.
    pub const FORBIDDEN: &str = "forbidden";
    /// The session is already subscribed to the channel.
    pub const ALREADY_SUBSCRIBED: &str = "already_subscribed";
    /// The session is not subscribed to the channel.
    pub const NOT_SUBSCRIBED: &str = "not_subscribed";
    /// The session holds `max_channels_per_session` subscriptions.
    pub const TOO_MANY_CHANNELS: &str = "too_many_channels";
    /// The channel has `max_subscribers` subscribers.
    pub const TOO_MANY_SUBSCRIBERS: &str = "too_many_subscribers";
    /// The data is larger than `max_publication`.
    pub const TOO_LARGE: &str = "too_large";
    /// The session publishes faster than `publishes_per_second`.
    pub const RATE_LIMITED: &str = "rate_limited";
    /// The namespace keeps no presence.
    pub const NO_PRESENCE: &str = "no_presence";
    /// A history position of another epoch, or a recovery that ran out of room: retry.
    pub const UNAVAILABLE: &str = "unavailable";
    /// The broker failed; the operation may not have happened.
    pub const BROKER: &str = "broker_error";
    /// Channels are not enabled on this server.
    pub const DISABLED: &str = "disabled";
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::envelope::{self, Envelope, PUSH, REQUEST, RESPONSE};
    use proptest::prelude::*;

    fn position() -> impl Strategy<Value = Position> {
        ("[0-9a-f]{1,16}", any::<u64>()).prop_map(|(epoch, offset)| Position { epoch, offset })
    }

    fn client() -> impl Strategy<Value = ClientInfo> {
        (".{0,8}", any::<u64>(), any::<u64>()).prop_map(|(user, session, since)| ClientInfo {
            user,
            session,
            since,
        })
    }

    fn data() -> impl Strategy<Value = Bytes> {
        proptest::collection::vec(any::<u8>(), 0..32).prop_map(Bytes::from)
    }

    fn publication() -> impl Strategy<Value = PublicationMessage> {
        (".{0,8}", "[0-9a-f]{1,16}", any::<u64>(), data(), ".{0,8}").prop_map(
            |(channel, epoch, offset, data, user)| PublicationMessage {
                channel,
                epoch,
                offset,
                data,
                user,
            },
        )
    }

    fn command() -> impl Strategy<Value = Command> {
        let channel = ".{0,12}";
        prop_oneof![
            (channel, proptest::option::of(position()))
                .prop_map(|(channel, since)| Command::Subscribe { channel, since }),
            channel.prop_map(|channel| Command::Unsubscribe { channel }),
            (channel, data()).prop_map(|(channel, data)| Command::Publish { channel, data }),
            channel.prop_map(|channel| Command::Presence { channel }),
            channel.prop_map(|channel| Command::PresenceCounts { channel }),
            (
                channel,
                proptest::option::of(position()),
                proptest::option::of(any::<u32>())
            )
                .prop_map(|(channel, since, limit)| Command::History {
                    channel,
                    since,
                    limit
                }),
        ]
    }

    fn reply() -> impl Strategy<Value = Reply> {
        let recovery = proptest::option::of(prop_oneof![
            Just(Recovery::Recovered),
            Just(Recovery::EpochChanged),
            Just(Recovery::TooOld)
        ]);
        let pubs = || proptest::collection::vec(publication(), 0..3);
        prop_oneof![
            (position(), recovery, pubs()).prop_map(|(position, recovery, publications)| {
                Reply::Subscribed(Subscribed {
                    position,
                    recovery,
                    publications,
                })
            }),
            Just(Reply::Unsubscribed {}),
            position().prop_map(Reply::Published),
            proptest::collection::vec(client(), 0..3)
                .prop_map(|clients| Reply::Presence { clients }),
            (any::<u64>(), any::<u64>())
                .prop_map(|(sessions, users)| Reply::PresenceCounts { sessions, users }),
            (position(), pubs()).prop_map(|(position, publications)| Reply::History(
                HistoryReply {
                    position,
                    publications
                }
            )),
        ]
    }

    fn push() -> impl Strategy<Value = ChannelPush> {
        prop_oneof![
            publication().prop_map(ChannelPush::Publication),
            (".{0,8}", client())
                .prop_map(|(channel, client)| ChannelPush::Join { channel, client }),
            (".{0,8}", client())
                .prop_map(|(channel, client)| ChannelPush::Leave { channel, client }),
            (".{0,8}", "[a-z_]{0,12}")
                .prop_map(|(channel, reason)| ChannelPush::Ended { channel, reason }),
        ]
    }

    fn round_trip<T>(kind: u8, value: &T) -> T
    where
        T: Serialize + serde::de::DeserializeOwned,
    {
        let bytes = envelope::encode(kind, 7, value).unwrap();
        let body = match Envelope::decode(&bytes).unwrap() {
            Envelope::Request { body, .. }
            | Envelope::Response { body, .. }
            | Envelope::Error { body, .. }
            | Envelope::Push { body } => body,
        };
        envelope::decode_value(body).unwrap()
    }

    proptest! {
        #[test]
        fn commands_round_trip(c in command()) {
            prop_assert_eq!(round_trip(REQUEST, &c), c);
        }

        #[test]
        fn replies_round_trip(r in reply()) {
            prop_assert_eq!(round_trip(RESPONSE, &r), r);
        }

        #[test]
        fn pushes_round_trip(p in push()) {
            prop_assert_eq!(round_trip(PUSH, &p), p);
        }

        #[test]
        fn arbitrary_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = envelope::decode_value::<Command>(&body);
            let _ = envelope::decode_value::<Reply>(&body);
            let _ = envelope::decode_value::<ChannelPush>(&body);
        }
    }

    #[test]
    fn data_travels_as_msgpack_bin() {
        let bytes = envelope::encode(
            REQUEST,
            1,
            &Command::Publish {
                channel: "a".into(),
                data: Bytes::from_static(b"hi"),
            },
        )
        .unwrap();
        // {"publish": {"channel": "a", "data": bin8 "hi"}}
        let mut expected = vec![0x01, 1, 0, 0, 0, 0x81, 0xa7];
        expected.extend_from_slice(b"publish");
        expected.extend_from_slice(&[0x82, 0xa7]);
        expected.extend_from_slice(b"channel");
        expected.extend_from_slice(&[0xa1, b'a', 0xa4]);
        expected.extend_from_slice(b"data");
        expected.extend_from_slice(&[0xc4, 0x02, b'h', b'i']);
        assert_eq!(&bytes[..], &expected[..]);
    }

    /// The example in docs/PROTOCOL.md 4.8, byte for byte.
    #[test]
    fn the_documented_example() {
        let frame = |body: Bytes| {
            let bytes = crate::wire::Frame::new(CHANNELS_ID, body)
                .to_bytes()
                .unwrap();
            bytes
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let position = |offset| Position {
            epoch: "9f86d081884c7d65".into(),
            offset,
        };
        let subscribe = Command::Subscribe {
            channel: "chat:lobby".into(),
            since: None,
        };
        let subscribed = Reply::Subscribed(Subscribed {
            position: position(0),
            recovery: None,
            publications: vec![],
        });
        let publish = Command::Publish {
            channel: "chat:lobby".into(),
            data: Bytes::from_static(b"hi"),
        };
        let push = ChannelPush::Publication(PublicationMessage {
            channel: "chat:lobby".into(),
            epoch: "9f86d081884c7d65".into(),
            offset: 1,
            data: Bytes::from_static(b"hi"),
            user: "alice".into(),
        });
        let published = Reply::Published(position(1));
        let lines = [
            (
                "C",
                frame(envelope::encode(REQUEST, 1, &subscribe).unwrap()),
            ),
            (
                "S",
                frame(envelope::encode(RESPONSE, 1, &subscribed).unwrap()),
            ),
            ("C", frame(envelope::encode(REQUEST, 2, &publish).unwrap())),
            ("S", frame(envelope::encode(PUSH, 0, &push).unwrap())),
            (
                "S",
                frame(envelope::encode(RESPONSE, 2, &published).unwrap()),
            ),
        ];
        let doc = include_str!("../../../../docs/PROTOCOL.md");
        let section = doc
            .split("### 4.8 Channels (6)")
            .nth(1)
            .expect("PROTOCOL.md has 4.8");
        let documented: Vec<String> = section
            .lines()
            .filter(|l| l.starts_with("C  ") || l.starts_with("S  "))
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .take(lines.len())
            .collect();
        let wanted: Vec<String> = lines
            .iter()
            .map(|(side, b)| format!("{side} {b}"))
            .collect();
        assert_eq!(documented, wanted);
    }
}
