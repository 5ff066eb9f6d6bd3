//! Fuzz entry points: one function per target in `fuzz/fuzz_targets/`.
//!
//! Each takes arbitrary bytes, must never panic on its own, and asserts the invariants the wire
//! code promises, so that a failed assertion is a bug the fuzzer reports. The seed-replay test
//! (`tests/fuzz_seeds.rs`) runs the same functions on `fuzz/corpus/` under stable `cargo test`.

use crate::auth::scram::{
    self, ClientExchange, ClientFinal, ClientFirst, ScramCredentials, ScramError, ServerExchange,
    ServerFinal, ServerFirst,
};
use crate::server::proxy::{self, ProxyHeaderError};
use crate::wire::capabilities::CapabilitiesMessage;
use crate::wire::codec::DEFAULT_MAX_PAYLOAD;
use crate::wire::dbauth::DatabaseAuthMessage;
use crate::wire::hello::HelloMessage;
use crate::wire::keepalive::KeepAliveMessage;
use crate::wire::scram::ScramMessage;
use crate::wire::winauth::WinAuthMessage;
use crate::wire::{DecodeError, Frame, FrameCodec, Message, Reader, Secret};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use bytes::BytesMut;
use std::fmt::Debug;
use std::sync::OnceLock;
use tokio_util::codec::Decoder;

/// Decodes a byte stream with [`FrameCodec`], fed in chunks, and checks that chunking changes
/// nothing.
///
/// Input layout: byte 0 picks the chunk size (1 to 256), byte 1 the payload limit (`0xFF` for
/// the default, otherwise the byte's value, which the codec raises to at least 2); the rest is
/// the stream. Asserts that one-shot, chunked and byte-at-a-time decoding give the same frames,
/// the same error and the same stopping point, that the frames re-encode to exactly the bytes
/// consumed, and that no frame exceeds the limit.
pub fn frame_decoder(data: &[u8]) {
    let (chunk, max_payload, stream) = match data {
        [c, m, rest @ ..] => {
            let max = match *m {
                0xFF => DEFAULT_MAX_PAYLOAD,
                m => usize::from(m),
            };
            (usize::from(*c) + 1, max, rest)
        }
        _ => (1, DEFAULT_MAX_PAYLOAD, data),
    };

    let whole = decode_chunks(max_payload, std::iter::once(stream));
    let chunked = decode_chunks(max_payload, stream.chunks(chunk));
    let bytewise = decode_chunks(max_payload, stream.chunks(1));
    assert_eq!(whole, chunked, "chunk size {chunk} changed the result");
    assert_eq!(whole, bytewise, "byte-at-a-time feeding changed the result");

    // The frame encoding is canonical, so what was consumed is exactly the frames re-encoded.
    let mut reencoded = BytesMut::new();
    for frame in &whole.frames {
        frame
            .encode_into(&mut reencoded)
            .expect("a decoded frame fits the length field");
    }
    assert_eq!(&reencoded[..], &stream[..whole.consumed]);

    let limit = FrameCodec::new(max_payload).max_payload();
    for frame in &whole.frames {
        assert!(
            frame.body.len() + 2 <= limit,
            "frame over the payload limit"
        );
    }
    if whole.error.is_none() {
        assert_eq!(whole.consumed, stream.len(), "clean end left bytes behind");
    }
}

/// Classifies the first bytes a client got from a server ([`crate::wire::notice::classify`]), as a TLS
/// client does after a failed handshake. Asserts that a TLS record and a frame are never
/// confused, and that a recognised refusal notice is exactly a notice the server would send:
/// its text reads back to the same refusal, and its frame starts the input.
pub fn first_bytes(data: &[u8]) {
    use crate::wire::notice::{self, FirstBytes};
    match notice::classify(data) {
        FirstBytes::Tls => assert!(notice::looks_like_tls(data)),
        FirstBytes::Refused(refusal) => {
            assert_eq!(notice::Refusal::parse(&refusal.text()), Some(refusal));
            let frame = refusal
                .to_frame()
                .to_bytes()
                .expect("a notice fits a frame");
            assert!(
                data.starts_with(&frame),
                "a notice that is not the server's"
            );
        }
        FirstBytes::Plaintext => assert!(data.starts_with(&[0x53, 0x55])),
        FirstBytes::Unknown => {}
    }
}

/// Decodes a Capabilities body; see [`winauth`] for the invariants.
pub fn capabilities(data: &[u8]) {
    check_message::<CapabilitiesMessage>(data, |m| match m {
        CapabilitiesMessage::GetProtocolIds | CapabilitiesMessage::ProtocolIds(_) => {
            Canonical::Exact
        }
        CapabilitiesMessage::Error { message, .. } => Canonical::lossy(message),
    });
}

/// Decodes a Keep-alive body: one command byte, so a decoded body re-encodes to itself.
pub fn keepalive(data: &[u8]) {
    check_message::<KeepAliveMessage>(data, |_| Canonical::Exact);
}

/// Decodes a WinAuth body and checks the invariants every message target shares:
///
/// - the re-encoding decodes to the same message and is the body of `to_frame()`;
/// - bodies are self-delimiting: one byte more is `TrailingBytes(1)`, one byte less fails;
/// - fields without strings re-encode byte for byte;
/// - strictly decoded strings re-encode byte for byte unless the input used an over-long 7-bit
///   length prefix (which the reader accepts, like .NET's), and then the re-encoding is shorter;
/// - an ERROR text with U+FFFD may have been decoded lossily from invalid UTF-8 (the Java
///   client's Latin-1 bytes), so only the round trip of the decoded message holds for it.
pub fn winauth(data: &[u8]) {
    check_message::<WinAuthMessage>(data, |m| match m {
        WinAuthMessage::Authenticate { .. } => Canonical::UnlessOverlong,
        WinAuthMessage::Authenticated | WinAuthMessage::AccessDenied => Canonical::Exact,
        WinAuthMessage::Error(message) => Canonical::lossy(message),
    });
}

/// Decodes a DatabaseAuth body; see [`winauth`] for the invariants.
pub fn dbauth(data: &[u8]) {
    check_message::<DatabaseAuthMessage>(data, |m| match m {
        DatabaseAuthMessage::Authenticate { .. } => Canonical::UnlessOverlong,
        DatabaseAuthMessage::Error(message) => Canonical::lossy(message),
        DatabaseAuthMessage::Authenticated { .. }
        | DatabaseAuthMessage::AccessDenied
        | DatabaseAuthMessage::UserNotFound
        | DatabaseAuthMessage::InvalidPassword
        | DatabaseAuthMessage::EmailNotVerified => Canonical::Exact,
    });
}

/// Decodes a TokenAuth body (see [`winauth`] for the invariants), then checks the token of
/// an AUTHENTICATE (and the whole input, as text) with a verifier that has an application
/// key: any string must be refused or accepted, never panic. A random input essentially
/// never carries a valid signature, so acceptance is not asserted either way.
pub fn token_auth(data: &[u8]) {
    use crate::wire::token::TokenAuthMessage;
    let verifier = token_verifier();
    let msg = check_message::<TokenAuthMessage>(data, |m| match m {
        TokenAuthMessage::Error(message) => Canonical::lossy(message),
        TokenAuthMessage::RequestResume => Canonical::Exact,
        _ => Canonical::UnlessOverlong,
    });
    if let Some(TokenAuthMessage::Authenticate { token }) = msg {
        let _ = verifier.verify(token.expose()).map_err(|e| e.to_string());
        let _ = crate::auth::token::claimed_user(token.expose());
    }
    let _ = verifier.verify(&String::from_utf8_lossy(data));
}

/// The verifier of the `token_auth` target: HS256 with a fixed secret (the seeds' tokens are
/// signed with it).
fn token_verifier() -> &'static crate::auth::token::TokenVerifier {
    use crate::auth::token::{TokenConfig, TokenKey, TokenVerifier};
    static VERIFIER: OnceLock<TokenVerifier> = OnceLock::new();
    VERIFIER.get_or_init(|| {
        TokenVerifier::new(&TokenConfig {
            key: Some(TokenKey::Hs256(Secret::new(
                "fuzzing secret, at least 32 bytes",
            ))),
            resume_secret: Secret::new("fuzzing resume secret, 32 bytes!"),
            ..TokenConfig::default()
        })
        .expect("valid fuzzing keys")
    })
}

/// Decodes a Hello body; see [`winauth`] for the invariants. Also checks that the body is a
/// length prefix announcing exactly the string's bytes, followed by those bytes.
pub fn hello(data: &[u8]) {
    if let Some(HelloMessage(s)) =
        check_message::<HelloMessage>(data, |_| Canonical::UnlessOverlong)
    {
        assert!(data.ends_with(s.as_bytes()));
        let mut prefix = Reader::new(&data[..data.len() - s.len()]);
        assert_eq!(prefix.varint_len(), Ok(s.len()));
        assert_eq!(prefix.finish(), Ok(()));
    }
}

/// Decodes an Admin (5) body; see [`winauth`] for the invariants. Date-times keep 100 ns
/// ticks and strings may be overlong, so only the round trip is asserted; a claimed session
/// count never allocates more than the body could hold.
pub fn admin(data: &[u8]) {
    use crate::wire::admin::AdminMessage;
    if let Some(msg) = check_message::<AdminMessage>(data, |_| Canonical::RoundTripOnly) {
        let listed = match &msg {
            AdminMessage::Sessions(list) => list.len(),
            AdminMessage::AllSessions { sessions, .. } => sessions.len(),
            _ => 0,
        };
        assert!(
            listed * 30 <= data.len(),
            "more sessions than the body holds"
        );
    }
}

/// Reads a PROXY protocol header (v1 or v2) from the start of a stream the way the listener
/// reads a trusted proxy's connection.
///
/// Input layout: byte 0 picks the size bound (`108 + 16 * byte`, as `limits.max_proxy_header`);
/// the rest is the stream. Asserts that an accepted header is within the bound and the input,
/// that it is found without its end being overrun (every shorter prefix is incomplete, so the
/// reader never takes a byte of the session's stream), and that the bytes after it change
/// nothing.
pub fn proxy_header(data: &[u8]) {
    let Some((&bound, stream)) = data.split_first() else {
        return;
    };
    let max = 108 + 16 * usize::from(bound);
    let Ok((len, addr)) = proxy::header_from_bytes(stream, max) else {
        return;
    };
    assert!(
        len <= stream.len() && len <= max,
        "{len} of {}",
        stream.len()
    );
    assert_eq!(
        proxy::header_from_bytes(&stream[..len], max),
        Ok((len, addr)),
        "the bytes after the header changed it"
    );
    for short in 0..len {
        assert!(
            matches!(
                proxy::header_from_bytes(&stream[..short], max),
                Err(ProxyHeaderError::Truncated(_))
            ),
            "a {short}-byte prefix of a {len}-byte header is not incomplete"
        );
    }
}

/// Decodes a ScramAuth body (see [`winauth`] for the invariants), then runs every SCRAM
/// grammar parser on the input read as text (lossily) and on the string the body carried, if
/// any. Parsers must not panic, and what they accept must hold together:
///
/// - a client-first message is its gs2 header (`n,,` or `y,,`) followed by the bare part, and
///   its user name and nonce survive the client's own encoding and a second parse;
/// - a client-final message is exactly its part without proof, `,p=` and the canonical base64 of
///   the 32-byte proof (base64 has one accepted spelling);
/// - a server-first message has a printable nonce, a salt and a positive iteration count;
/// - a server-final `v=` is the canonical base64 of a 32-byte signature;
/// - a `saslname` without literal commas unescapes and escapes back to itself.
pub fn scram_messages(data: &[u8]) {
    let msg = check_message::<ScramMessage>(data, |m| match m {
        ScramMessage::AccessDenied => Canonical::Exact,
        ScramMessage::Error(text) => Canonical::lossy(text),
        _ => Canonical::UnlessOverlong,
    });
    scram_grammar(&String::from_utf8_lossy(data));
    match msg {
        Some(
            ScramMessage::ClientFirst(text)
            | ScramMessage::ServerFirst(text)
            | ScramMessage::ClientFinal(text)
            | ScramMessage::ServerFinal(text)
            | ScramMessage::Error(text),
        ) => scram_grammar(&text),
        Some(ScramMessage::AccessDenied) | None => {}
    }
}

fn scram_grammar(text: &str) {
    match ClientFirst::parse(text) {
        Ok(first) => {
            assert!(matches!(first.gs2_header(), "n,," | "y,,"));
            assert_eq!(format!("{}{}", first.gs2_header(), first.bare()), text);
            assert!(!first.user().is_empty() && !first.nonce().is_empty());
            let again = ClientExchange::with_nonce(first.user(), &Secret::new("pw"), first.nonce())
                .expect("a parsed user name is not empty");
            let reparsed =
                ClientFirst::parse(&again.client_first()).expect("the client's own message parses");
            assert_eq!(
                (reparsed.user(), reparsed.nonce()),
                (first.user(), first.nonce())
            );
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
    match ClientFinal::parse(text) {
        Ok(last) => {
            assert!(last.without_proof.starts_with("c="));
            assert_eq!(
                format!("{},p={}", last.without_proof, BASE64.encode(last.proof)),
                text
            );
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
    match ServerFirst::parse(text) {
        Ok(first) => {
            assert!(!first.salt.is_empty() && first.iterations > 0);
            assert!(first
                .nonce
                .bytes()
                .all(|b| (0x21..=0x7e).contains(&b) && b != b','));
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
    match ServerFinal::parse(text) {
        Ok(ServerFinal::Verifier(signature)) => {
            assert!(text.starts_with(&format!("v={}", BASE64.encode(signature))));
        }
        Ok(ServerFinal::Error(value)) => assert!(text.starts_with(&format!("e={value}"))),
        Err(e) => {
            let _ = e.to_string();
        }
    }
    if !text.contains(',') {
        if let Ok(name) = scram::decode_saslname(text) {
            assert_eq!(scram::encode_saslname(&name), text);
        }
    }
}

/// The password behind [`scram_server`]'s fixed credentials, the server nonce it always uses,
/// and the credentials themselves: those of RFC 7677's example, so its messages succeed.
const FUZZ_PASSWORD: &str = "pencil";
const FUZZ_SERVER_NONCE: &str = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";

fn fuzz_credentials() -> &'static ScramCredentials {
    static CREDENTIALS: OnceLock<ScramCredentials> = OnceLock::new();
    CREDENTIALS.get_or_init(|| {
        let salt = BASE64
            .decode("W22ZaJ0SNY7soEsUEjb6gQ==")
            .expect("the RFC 7677 salt is base64");
        ScramCredentials::derive(FUZZ_PASSWORD, &salt, 4096)
    })
}

/// Runs a server exchange on arbitrary messages: the input up to the first NUL byte is the
/// client-first message, the rest the client-final one (both read as text, lossily). The
/// credentials are fixed (password `pencil`, RFC 7677's salt) and so is the server nonce.
///
/// Asserts that nothing panics and that the server never accepts a proof it should not: a
/// success must carry exactly the proof a holder of the password computes for that
/// AuthMessage, and answer with exactly the matching server signature; the same client-final
/// fails against an exchange with another server nonce (no replay) and against fake
/// credentials (unknown users never log in).
pub fn scram_server(data: &[u8]) {
    let (first, last) = match data.iter().position(|&b| b == 0) {
        Some(at) => (&data[..at], Some(&data[at + 1..])),
        None => (data, None),
    };
    let first = String::from_utf8_lossy(first);
    let Ok(client_first) = ClientFirst::parse(&first) else {
        return;
    };
    let credentials = fuzz_credentials();
    let start = |authentic, nonce| {
        ServerExchange::start_with_nonce(&client_first, credentials, authentic, nonce)
    };
    let (server_first, exchange) = start(true, FUZZ_SERVER_NONCE);
    assert!(server_first.starts_with(&format!("r={}{FUZZ_SERVER_NONCE},", client_first.nonce())));
    assert!(
        ServerFirst::parse(&server_first).is_ok(),
        "{server_first:?}"
    );
    let Some(last) = last else {
        return;
    };
    let last = String::from_utf8_lossy(last);
    let (_, fake) = start(false, FUZZ_SERVER_NONCE);
    assert!(
        fake.finish(&last).is_err(),
        "fake credentials accepted a proof"
    );
    let server_final = match exchange.finish(&last) {
        Ok(server_final) => server_final,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    let parsed = ClientFinal::parse(&last).expect("an accepted client-final parses");
    let auth_message = [
        client_first.bare().as_bytes(),
        b",",
        server_first.as_bytes(),
        b",",
        parsed.without_proof.as_bytes(),
    ];
    let (proof, signature) = scram::reference_proof(FUZZ_PASSWORD, credentials, &auth_message);
    assert_eq!(
        parsed.proof, proof,
        "accepted a proof the password does not give"
    );
    assert_eq!(server_final, format!("v={}", BASE64.encode(signature)));
    let (_, replay) = start(true, "another-server-nonce");
    assert_eq!(replay.finish(&last), Err(ScramError::NonceMismatch));
}

/// What `target`'s input `data` does, in one line: the outcome each seed in `fuzz/corpus/` is
/// expected to have (`tests/fuzz_seeds.rs` compares them with a recorded list), so a seed
/// meant to be refused cannot start to decode, nor a valid one start to fail, unnoticed.
///
/// Messages: `ok <Variant>` or `error: <text>`. Frame streams: the frames decoded and the
/// first error. SCRAM server exchanges: how far the exchange got. Panics on an unknown target.
pub fn outcome(target: &str, data: &[u8]) -> String {
    fn message<M: Message + Debug>(data: &[u8]) -> String {
        match M::decode(data) {
            Ok(msg) => {
                let debug = format!("{msg:?}");
                let end = debug.find([' ', '(', '{']).unwrap_or(debug.len());
                format!("ok {}", &debug[..end])
            }
            Err(e) => format!("error: {e}"),
        }
    }
    match target {
        "frame_decoder" => {
            let (max_payload, stream) = match data {
                [_, m, rest @ ..] => (
                    match *m {
                        0xFF => DEFAULT_MAX_PAYLOAD,
                        m => usize::from(m),
                    },
                    rest,
                ),
                _ => (DEFAULT_MAX_PAYLOAD, data),
            };
            let out = decode_chunks(max_payload, std::iter::once(stream));
            match out.error {
                None => format!("{} frames", out.frames.len()),
                Some(e) => format!("{} frames, then error: {e}", out.frames.len()),
            }
        }
        "capabilities" => message::<CapabilitiesMessage>(data),
        "admin" => message::<crate::wire::admin::AdminMessage>(data),
        "keepalive" => message::<KeepAliveMessage>(data),
        "winauth" => message::<WinAuthMessage>(data),
        "dbauth" => message::<DatabaseAuthMessage>(data),
        "hello" => message::<HelloMessage>(data),
        "scram_messages" => message::<ScramMessage>(data),
        "scram_server" => {
            let (first, last) = match data.iter().position(|&b| b == 0) {
                Some(at) => (&data[..at], Some(&data[at + 1..])),
                None => (data, None),
            };
            let client_first = match ClientFirst::parse(&String::from_utf8_lossy(first)) {
                Ok(first) => first,
                Err(e) => return format!("client-first refused: {e}"),
            };
            let (_, exchange) = ServerExchange::start_with_nonce(
                &client_first,
                fuzz_credentials(),
                true,
                FUZZ_SERVER_NONCE,
            );
            let Some(last) = last else {
                return "server-first sent".into();
            };
            match exchange.finish(&String::from_utf8_lossy(last)) {
                Ok(_) => "logged in".into(),
                Err(e) => format!("client-final refused: {e}"),
            }
        }
        "first_bytes" => format!("{:?}", crate::wire::notice::classify(data)),
        "app_envelope" => {
            use crate::app::envelope::{decode_value, Envelope};
            let (name, id, body) = match Envelope::decode(data) {
                Err(e) => return format!("error: {e}"),
                Ok(Envelope::Request { id, body }) => ("request", Some(id), body),
                Ok(Envelope::Response { id, body }) => ("response", Some(id), body),
                Ok(Envelope::Error { id, body }) => ("error", Some(id), body),
                Ok(Envelope::Push { body }) => ("push", None, body),
            };
            let app_error = match decode_value::<crate::app::AppError>(body) {
                Ok(e) => format!("AppError {}", e.code),
                Err(_) => "no AppError".into(),
            };
            format!("{name} {id:?}, {} bytes, {app_error}", body.len())
        }
        "channels_messages" => {
            use crate::app::envelope::{decode_value, Envelope};
            use crate::channels::messages::{ChannelPush, Command, Reply};
            let body = match Envelope::decode(data) {
                Err(e) => return format!("error: {e}"),
                Ok(
                    Envelope::Request { body, .. }
                    | Envelope::Response { body, .. }
                    | Envelope::Error { body, .. }
                    | Envelope::Push { body },
                ) => body,
            };
            if let Ok(c) = decode_value::<Command>(body) {
                return format!(
                    "command {:?} on {:?}",
                    variant(&format!("{c:?}")),
                    c.channel()
                );
            }
            if let Ok(r) = decode_value::<Reply>(body) {
                return format!("reply {:?}", variant(&format!("{r:?}")));
            }
            match decode_value::<ChannelPush>(body) {
                Ok(p) => format!("push {:?}", variant(&format!("{p:?}"))),
                Err(_) => "no channels message".into(),
            }
        }
        "proxy_header" => match data.split_first() {
            None => "empty".into(),
            Some((&bound, stream)) => {
                match proxy::header_from_bytes(stream, 108 + 16 * usize::from(bound)) {
                    Ok((len, addr)) => format!("{len}-byte header, client {addr:?}"),
                    Err(e) => format!("error: {e}"),
                }
            }
        },
        "token_auth" => {
            use crate::wire::token::TokenAuthMessage;
            match TokenAuthMessage::decode(data) {
                Err(e) => format!("error: {e}"),
                Ok(TokenAuthMessage::Authenticate { token }) => {
                    match token_verifier().verify(token.expose()) {
                        Ok(user) => format!("Authenticate: accepted {:?}", user.name),
                        Err(e) => format!("Authenticate: {e}"),
                    }
                }
                Ok(m) => format!("ok {}", variant(&format!("{m:?}"))),
            }
        }
        other => panic!("no fuzz target {other}"),
    }
}

/// What a decoded message's re-encoding must be, compared with the input body.
enum Canonical {
    /// The same bytes.
    Exact,
    /// The same bytes, or fewer when the input had an over-long length prefix.
    UnlessOverlong,
    /// Nothing beyond the round trip of the decoded message.
    RoundTripOnly,
}

impl Canonical {
    /// For a lossily decoded text: lossy decoding only ever inserts U+FFFD, so a text without one
    /// was valid UTF-8 and behaves like a strict string.
    fn lossy(text: &str) -> Self {
        if text.contains('\u{FFFD}') {
            Canonical::RoundTripOnly
        } else {
            Canonical::UnlessOverlong
        }
    }
}

/// Decodes `data` as `M`; if that succeeds, asserts the shared invariants and the one `canon`
/// picks, and returns the message.
fn check_message<M>(data: &[u8], canon: impl FnOnce(&M) -> Canonical) -> Option<M>
where
    M: Message + PartialEq + Debug,
{
    let msg = match M::decode(data) {
        Ok(msg) => msg,
        Err(err) => {
            // Error text goes to logs and ERROR replies; formatting it must not panic either.
            let _ = err.to_string();
            return None;
        }
    };

    let mut encoded = BytesMut::new();
    msg.encode(&mut encoded);
    assert_eq!(
        M::decode(&encoded).as_ref(),
        Ok(&msg),
        "re-encoding decodes differently"
    );
    let frame = msg.to_frame();
    assert_eq!(frame.protocol_id, M::PROTOCOL_ID);
    assert_eq!(&frame.body[..], &encoded[..]);

    let mut longer = data.to_vec();
    longer.push(0);
    assert_eq!(M::decode(&longer), Err(DecodeError::TrailingBytes(1)));
    let (_, shorter) = data.split_last().expect("an empty body never decodes");
    assert!(M::decode(shorter).is_err(), "a cut body still decoded");

    match canon(&msg) {
        Canonical::Exact => assert_eq!(&encoded[..], data),
        Canonical::UnlessOverlong => assert!(
            encoded[..] == *data || encoded.len() < data.len(),
            "re-encoding differs without being shorter"
        ),
        Canonical::RoundTripOnly => {}
    }
    Some(msg)
}

/// What decoding a stream produced: the frames, the first error, and the bytes consumed by
/// the frames.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    frames: Vec<Frame>,
    /// Compared by display text: `FrameError` has no `PartialEq` (it can hold an `io::Error`).
    error: Option<String>,
    consumed: usize,
}

/// Feeds `chunks` to a fresh codec as a framed reader would: decode after every chunk until it
/// needs more, then `decode_eof` at the end, stopping at the first error.
fn decode_chunks<'a>(max_payload: usize, chunks: impl IntoIterator<Item = &'a [u8]>) -> Outcome {
    let mut codec = FrameCodec::new(max_payload);
    let mut buf = BytesMut::new();
    let mut fed = 0;
    let mut frames = Vec::new();
    let mut error = None;
    'feed: for chunk in chunks {
        buf.extend_from_slice(chunk);
        fed += chunk.len();
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(err) => {
                    error = Some(err.to_string());
                    break 'feed;
                }
            }
        }
    }
    if error.is_none() {
        loop {
            match codec.decode_eof(&mut buf) {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(err) => {
                    error = Some(err.to_string());
                    break;
                }
            }
        }
    }
    Outcome {
        frames,
        error,
        consumed: fed - buf.len(),
    }
}

/// Decodes an application envelope (`app::envelope`), then its MessagePack value as an
/// [`AppError`](crate::app::AppError) and as a few shapes an application might use. Nothing
/// may panic, and an envelope that decodes is exactly its parts again: kind, the id in
/// little-endian (not for a push), the value's bytes.
pub fn app_envelope(data: &[u8]) {
    use crate::app::envelope::{self, Envelope};
    let Ok(decoded) = Envelope::decode(data) else {
        return;
    };
    let (kind, id, body) = match decoded {
        Envelope::Request { id, body } => (envelope::REQUEST, Some(id), body),
        Envelope::Response { id, body } => (envelope::RESPONSE, Some(id), body),
        Envelope::Error { id, body } => (envelope::ERROR, Some(id), body),
        Envelope::Push { body } => (envelope::PUSH, None, body),
    };
    let mut again = vec![kind];
    if let Some(id) = id {
        again.extend_from_slice(&id.to_le_bytes());
    }
    again.extend_from_slice(body);
    assert_eq!(again, data);
    let _ = envelope::decode_value::<crate::app::AppError>(body);
    let _ = envelope::decode_value::<(String, i64)>(body);
    let _ = envelope::decode_value::<Vec<Option<String>>>(body);
    let _ = envelope::decode_value::<std::collections::HashMap<String, Vec<u8>>>(body);
}

/// The variant name at the start of a `Debug` rendering.
fn variant(debug: &str) -> String {
    debug
        .split(|c: char| !c.is_alphanumeric() && c != '_')
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Decodes a Channels body ([`crate::channels::messages`]): the envelope, then the value as a
/// command, a reply and a push. Asserts that whatever decodes re-encodes to a value that
/// decodes to the same thing (what the server answers from is what the client sent).
pub fn channels_messages(data: &[u8]) {
    use crate::app::envelope::{self, decode_value, Envelope};
    use crate::channels::messages::{ChannelPush, Command, Reply};
    let Ok(decoded) = Envelope::decode(data) else {
        return;
    };
    let body = match decoded {
        Envelope::Request { body, .. }
        | Envelope::Response { body, .. }
        | Envelope::Error { body, .. }
        | Envelope::Push { body } => body,
    };
    fn again<T>(value: T)
    where
        T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + Debug,
    {
        let bytes = envelope::encode(envelope::PUSH, 0, &value).expect("a decoded value encodes");
        let back: T = decode_value(&bytes[1..]).expect("a re-encoded value decodes");
        assert_eq!(back, value);
    }
    if let Ok(c) = decode_value::<Command>(body) {
        again(c);
    }
    if let Ok(r) = decode_value::<Reply>(body) {
        again(r);
    }
    if let Ok(p) = decode_value::<ChannelPush>(body) {
        again(p);
    }
}
