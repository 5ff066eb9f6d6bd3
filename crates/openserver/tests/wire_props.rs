//! Property tests of the wire format: every message round-trips through its body and its frame,
//! and the frame decoder's result never depends on how the stream is chunked.

mod support;

use bytes::BytesMut;
use openserver::wire::admin::{AdminMessage, NodeSessionInfo, SessionInfo};
use openserver::wire::capabilities::CapabilitiesMessage;
use openserver::wire::codec::DEFAULT_MAX_PAYLOAD;
use openserver::wire::dbauth::DatabaseAuthMessage;
use openserver::wire::hello::HelloMessage;
use openserver::wire::keepalive::KeepAliveMessage;
use openserver::wire::token::TokenAuthMessage;
use openserver::wire::winauth::WinAuthMessage;
use openserver::wire::{Frame, Message, Secret};
use proptest::collection::vec;
use proptest::prelude::*;
use std::fmt::Debug;
use support::{decode_all, decode_chunks};

fn capabilities() -> impl Strategy<Value = CapabilitiesMessage> {
    prop_oneof![
        Just(CapabilitiesMessage::GetProtocolIds),
        vec(any::<u16>(), 0..64).prop_map(CapabilitiesMessage::ProtocolIds),
        (any::<u16>(), any::<String>()).prop_map(|(protocol_id, message)| {
            CapabilitiesMessage::Error {
                protocol_id,
                message,
            }
        }),
    ]
}

fn keepalive() -> impl Strategy<Value = KeepAliveMessage> {
    prop_oneof![
        Just(KeepAliveMessage::KeepAlive),
        Just(KeepAliveMessage::Quit)
    ]
}

fn winauth() -> impl Strategy<Value = WinAuthMessage> {
    prop_oneof![
        (any::<String>(), any::<String>(), any::<String>()).prop_map(|(user, password, domain)| {
            WinAuthMessage::Authenticate {
                user,
                password: Secret::new(password),
                domain,
            }
        }),
        Just(WinAuthMessage::Authenticated),
        Just(WinAuthMessage::AccessDenied),
        any::<String>().prop_map(WinAuthMessage::Error),
    ]
}

fn token_auth() -> impl Strategy<Value = TokenAuthMessage> {
    prop_oneof![
        any::<String>().prop_map(|t| TokenAuthMessage::Authenticate {
            token: Secret::new(t)
        }),
        (any::<i32>(), any::<String>(), any::<String>(), any::<i32>()).prop_map(
            |(user_id, user, resume, resume_ttl_secs)| TokenAuthMessage::Authenticated {
                user_id,
                user,
                resume: Secret::new(resume),
                resume_ttl_secs,
            }
        ),
        any::<String>().prop_map(|reason| TokenAuthMessage::AccessDenied { reason }),
        Just(TokenAuthMessage::RequestResume),
        (any::<String>(), any::<i32>()).prop_map(|(t, ttl_secs)| TokenAuthMessage::Resume {
            token: Secret::new(t),
            ttl_secs,
        }),
        any::<String>().prop_map(TokenAuthMessage::Error),
    ]
}

fn dbauth() -> impl Strategy<Value = DatabaseAuthMessage> {
    prop_oneof![
        (any::<String>(), any::<String>()).prop_map(|(user, password)| {
            DatabaseAuthMessage::Authenticate {
                user,
                password: Secret::new(password),
            }
        }),
        any::<i32>().prop_map(|user_id| DatabaseAuthMessage::Authenticated { user_id }),
        Just(DatabaseAuthMessage::AccessDenied),
        Just(DatabaseAuthMessage::UserNotFound),
        Just(DatabaseAuthMessage::InvalidPassword),
        Just(DatabaseAuthMessage::EmailNotVerified),
        any::<String>().prop_map(DatabaseAuthMessage::Error),
    ]
}

/// A date-time the wire keeps exactly: whole 100 ns ticks after the Unix epoch.
fn date_time() -> impl Strategy<Value = std::time::SystemTime> {
    (621_355_968_000_000_000i64..3_000_000_000_000_000_000)
        .prop_map(openserver::wire::primitives::system_time_from_ticks)
}

fn session_info() -> impl Strategy<Value = SessionInfo> {
    (
        any::<u64>(),
        any::<String>(),
        any::<String>(),
        date_time(),
        date_time(),
        vec(any::<u16>(), 0..5),
    )
        .prop_map(
            |(id, user, peer, since, last_activity, protocols)| SessionInfo {
                id,
                user,
                peer,
                since,
                last_activity,
                protocols,
            },
        )
}

fn admin() -> impl Strategy<Value = AdminMessage> {
    prop_oneof![
        Just(AdminMessage::List),
        vec(session_info(), 0..4).prop_map(AdminMessage::Sessions),
        any::<u64>().prop_map(|session_id| AdminMessage::Kick { session_id }),
        any::<u64>().prop_map(|session_id| AdminMessage::Kicked { session_id }),
        any::<u64>().prop_map(|session_id| AdminMessage::NotFound { session_id }),
        (0..=i32::MAX as u32).prop_map(|max_per_node| AdminMessage::ListAll { max_per_node }),
        (
            vec(
                (any::<String>(), session_info())
                    .prop_map(|(node, session)| NodeSessionInfo { node, session }),
                0..4
            ),
            0..=i32::MAX as u32,
            0..=i32::MAX as u32
        )
            .prop_map(
                |(sessions, unanswered, omitted)| AdminMessage::AllSessions {
                    sessions,
                    unanswered,
                    omitted
                }
            ),
        (any::<String>(), any::<u64>())
            .prop_map(|(node, session_id)| AdminMessage::KickOn { node, session_id }),
        any::<String>().prop_map(AdminMessage::Error),
    ]
}

fn hello() -> impl Strategy<Value = HelloMessage> {
    any::<String>().prop_map(HelloMessage)
}

/// Splits `bytes` into chunks whose sizes cycle through `sizes` (each at least 1).
fn chunked<'a>(bytes: &'a [u8], sizes: &[usize]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut rest = bytes;
    for &size in sizes.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (head, tail) = rest.split_at(size.clamp(1, rest.len()));
        out.push(head);
        rest = tail;
    }
    out
}

/// A message survives its body, its frame, and the frame decoder under any chunking.
fn check_message<M: Message + PartialEq + Clone + Debug>(
    msg: &M,
    sizes: &[usize],
) -> Result<(), TestCaseError> {
    let mut body = BytesMut::new();
    msg.encode(&mut body);
    prop_assert_eq!(&M::decode(&body), &Ok(msg.clone()));

    let frame = msg.to_frame();
    prop_assert_eq!(frame.protocol_id, M::PROTOCOL_ID);
    prop_assert_eq!(&frame.body[..], &body[..]);
    let wire = frame.to_bytes().unwrap();
    prop_assert_eq!(wire.len(), frame.wire_len());

    let expected = vec![frame];
    let whole = decode_all(DEFAULT_MAX_PAYLOAD, &wire);
    prop_assert_eq!(whole.error, None);
    prop_assert_eq!(&whole.frames, &expected);
    let pieces = decode_chunks(DEFAULT_MAX_PAYLOAD, chunked(&wire, sizes));
    prop_assert_eq!(pieces.error, None);
    prop_assert_eq!(&pieces.frames, &expected);
    prop_assert_eq!(&M::decode(&pieces.frames[0].body), &Ok(msg.clone()));
    Ok(())
}

fn chunk_sizes() -> impl Strategy<Value = Vec<usize>> {
    vec(1usize..24, 1..8)
}

/// Payload limits: the default, and small ones so that `TooLarge` shows up often.
fn max_payload() -> impl Strategy<Value = usize> {
    prop_oneof![Just(DEFAULT_MAX_PAYLOAD), 0usize..40]
}

/// How to spoil an encoded stream of valid frames.
#[derive(Debug, Clone)]
enum Damage {
    None,
    /// Cut the stream to this fraction of its length (per mille).
    Truncate(u16),
    /// Overwrite the byte at this fraction of its length (per mille).
    Overwrite(u16, u8),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        Just(Damage::None),
        (0u16..1000).prop_map(Damage::Truncate),
        (0u16..1000, any::<u8>()).prop_map(|(at, b)| Damage::Overwrite(at, b)),
    ]
}

fn frames() -> impl Strategy<Value = Vec<Frame>> {
    vec((any::<u16>(), vec(any::<u8>(), 0..40)), 0..6).prop_map(|frames| {
        frames
            .into_iter()
            .map(|(id, body)| Frame::new(id, body))
            .collect()
    })
}

fn encode_frames(frames: &[Frame]) -> Vec<u8> {
    let mut bytes = BytesMut::new();
    for frame in frames {
        frame.encode_into(&mut bytes).unwrap();
    }
    bytes.to_vec()
}

/// A stream of valid frames, possibly damaged, so that every error kind and clean ends occur;
/// with the frames and the number of leading bytes the damage left intact.
fn damaged_stream() -> impl Strategy<Value = (Vec<Frame>, Vec<u8>, usize, bool)> {
    (frames(), damage()).prop_map(|(frames, damage)| {
        let mut bytes = encode_frames(&frames);
        let at = |per_mille: u16| bytes.len() * usize::from(per_mille) / 1000;
        let (intact, truncated) = match damage {
            Damage::None => (bytes.len(), true),
            Damage::Truncate(p) => {
                let k = at(p);
                bytes.truncate(k);
                (k, true)
            }
            Damage::Overwrite(p, b) => {
                let i = at(p);
                match bytes.get_mut(i) {
                    Some(slot) if *slot != b => {
                        *slot = b;
                        (i, false)
                    }
                    _ => (bytes.len(), true),
                }
            }
        };
        (frames, bytes, intact, truncated)
    })
}

/// What decoding a damaged stream must give, from the frames it was made of: every frame that
/// lies wholly in the intact part decodes to itself, up to the first one over the limit, which
/// is an error; a stream that was only cut ends cleanly exactly when it was cut between frames.
fn check_damaged(
    frames: &[Frame],
    bytes: &[u8],
    intact: usize,
    only_cut: bool,
    max: usize,
    decoded: &support::Decoded,
) -> Result<(), TestCaseError> {
    let limit = openserver::wire::FrameCodec::new(max).max_payload();
    let mut ends = vec![0];
    for frame in frames {
        ends.push(ends.last().unwrap() + frame.wire_len());
    }
    // Frames wholly inside the intact part, and the first one over the limit.
    let whole = ends[1..].iter().take_while(|end| **end <= intact).count();
    let too_large = frames
        .iter()
        .position(|f| f.body.len() + 2 > limit)
        .unwrap_or(frames.len());
    if too_large < whole {
        prop_assert_eq!(&decoded.frames[..], &frames[..too_large]);
        prop_assert!(
            decoded.error.is_some(),
            "a frame over the limit is an error"
        );
        return Ok(());
    }
    prop_assert!(
        decoded.frames.len() >= whole,
        "lost intact frames: {:?}",
        decoded
    );
    prop_assert_eq!(&decoded.frames[..whole], &frames[..whole]);
    if only_cut {
        prop_assert_eq!(decoded.frames.len(), whole);
        prop_assert_eq!(
            decoded.error.is_none(),
            bytes.len() == ends[whole],
            "clean end exactly at a frame boundary: {:?}",
            decoded
        );
    }
    Ok(())
}

proptest! {
    #[test]
    fn capabilities_round_trip(msg in capabilities(), sizes in chunk_sizes()) {
        check_message(&msg, &sizes)?;
    }

    #[test]
    fn keepalive_round_trip(msg in keepalive(), sizes in chunk_sizes()) {
        check_message(&msg, &sizes)?;
    }

    #[test]
    fn winauth_round_trip(msg in winauth(), sizes in chunk_sizes()) {
        check_message(&msg, &sizes)?;
    }

    #[test]
    fn dbauth_round_trip(msg in dbauth(), sizes in chunk_sizes()) {
        check_message(&msg, &sizes)?;
    }

    #[test]
    fn token_auth_round_trip(msg in token_auth(), sizes in chunk_sizes()) {
        check_message(&msg, &sizes)?;
    }

    #[test]
    fn admin_round_trip(msg in admin(), sizes in chunk_sizes()) {
        check_message(&msg, &sizes)?;
    }

    #[test]
    fn hello_round_trip(msg in hello(), sizes in chunk_sizes()) {
        check_message(&msg, &sizes)?;
    }

    #[test]
    fn valid_frames_decode_to_themselves(frames in frames(), sizes in chunk_sizes()) {
        let bytes = encode_frames(&frames);
        let decoded = decode_chunks(DEFAULT_MAX_PAYLOAD, chunked(&bytes, &sizes));
        prop_assert_eq!(decoded.error, None);
        prop_assert_eq!(decoded.frames, frames);
    }

    #[test]
    fn damaged_streams_decode_what_survived_in_any_chunking(
        (frames, bytes, intact, only_cut) in damaged_stream(),
        sizes in chunk_sizes(),
        max in max_payload(),
    ) {
        let whole = decode_all(max, &bytes);
        check_damaged(&frames, &bytes, intact, only_cut, max, &whole)?;
        prop_assert_eq!(&decode_chunks(max, chunked(&bytes, &sizes)), &whole);
        prop_assert_eq!(&decode_chunks(max, bytes.chunks(1)), &whole);
    }

    #[test]
    fn random_bytes_decode_the_same_in_any_chunking(
        bytes in vec(any::<u8>(), 0..128),
        sizes in chunk_sizes(),
        max in max_payload(),
    ) {
        // Random bytes mostly fail on the magic; lead with a valid one half the time.
        let whole = decode_all(max, &bytes);
        if bytes.first().is_some_and(|b| *b != 0x53) {
            prop_assert!(whole.frames.is_empty() && whole.error.is_some(), "{:?}", whole);
        }
        prop_assert_eq!(&decode_chunks(max, chunked(&bytes, &sizes)), &whole);
        let mut led = vec![0x53, 0x55];
        led.extend_from_slice(&bytes);
        let whole = decode_all(max, &led);
        // Whatever decoded is the stream's own bytes: the frames re-encode to its prefix.
        let reencoded = encode_frames(&whole.frames);
        prop_assert_eq!(&led[..reencoded.len()], &reencoded[..]);
        if whole.error.is_none() {
            prop_assert_eq!(reencoded.len(), led.len(), "a clean end consumed everything");
        }
        prop_assert_eq!(&decode_chunks(max, chunked(&led, &sizes)), &whole);
        prop_assert_eq!(&decode_chunks(max, led.chunks(1)), &whole);
    }
}
