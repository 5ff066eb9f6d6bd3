//! The fixed notices a server sends before it closes a connection it will not serve, and how a
//! client recognises them and the first bytes of the wrong transport.
//!
//! A notice is one plaintext frame, a Capabilities ERROR about protocol 0, whose text is one
//! of a few fixed sentences (see `docs/PROTOCOL.md`, "Refusals before login"). It is sent in
//! plaintext on TLS listeners too, before any TLS: the server does no handshake for a
//! connection it refuses, and a TLS client that reads a frame where it expected a TLS record
//! knows it was not served. DNOS clients see an ERROR (plaintext) or a failed handshake (TLS)
//! followed by the close, as they saw the close alone before.
//!
//! The texts carry nothing the refusal itself does not tell: that this address is refused
//! and, for a penalty, a wait rounded up to whole seconds, which the documented penalty
//! schedule and a few retries would reveal anyway.

use super::capabilities::CapabilitiesMessage;
use super::codec::MAGIC;
use super::{protocol_id, Frame, Message};
use std::time::Duration;

/// Why a server refused a connection before login, as its notice says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// Too many failed logins from the client's address: the address is penalised for about
    /// `retry_after` more (rounded up to whole seconds).
    FailedLogins {
        /// How long the penalty still runs.
        retry_after: Duration,
    },
    /// The address holds as many connections (or connections not yet logged in) as the
    /// server allows one address.
    TooManyFromAddress,
    /// The server holds as many connections (or connections not yet logged in) as it allows.
    Busy,
}

/// The start of every refusal notice.
const REFUSED: &str = "Connection refused: ";
/// The penalty notice, before its wait.
const FAILED_LOGINS: &str = "too many failed logins from this address. Retry in ";
/// The penalty notice, after its wait.
const SECONDS: &str = " s.";
/// The per-address cap's notice.
const TOO_MANY: &str = "too many connections from this address.";
/// The total cap's notice.
const BUSY: &str = "the server is busy. Retry later.";
/// What a plaintext server answers a TLS ClientHello with.
pub const PLAINTEXT_ONLY: &str = "This server speaks plaintext, not TLS.";

impl Refusal {
    /// The notice's text, for example `Connection refused: too many failed logins from this
    /// address. Retry in 8 s.` The wait is rounded up, so a client that waits that long is
    /// not refused again by the same penalty.
    pub fn text(&self) -> String {
        match self {
            Refusal::FailedLogins { retry_after } => {
                format!(
                    "{REFUSED}{FAILED_LOGINS}{}{SECONDS}",
                    whole_seconds(*retry_after)
                )
            }
            Refusal::TooManyFromAddress => format!("{REFUSED}{TOO_MANY}"),
            Refusal::Busy => format!("{REFUSED}{BUSY}"),
        }
    }

    /// The notice as the frame the server sends.
    pub fn to_frame(&self) -> Frame {
        error_frame(self.text())
    }

    /// Recognises a notice's text; `None` for any other text.
    pub fn parse(text: &str) -> Option<Refusal> {
        let rest = text.strip_prefix(REFUSED)?;
        if rest == TOO_MANY {
            return Some(Refusal::TooManyFromAddress);
        }
        if rest == BUSY {
            return Some(Refusal::Busy);
        }
        let secs = rest.strip_prefix(FAILED_LOGINS)?.strip_suffix(SECONDS)?;
        // At most a day (the longest penalty the configuration allows): no overflow, and a
        // server cannot make a client wait longer than that.
        if secs.is_empty() || secs.len() > 6 || !secs.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let secs: u64 = secs.parse().ok()?;
        Some(Refusal::FailedLogins {
            retry_after: Duration::from_secs(secs.min(86_400)),
        })
    }
}

/// `d` in whole seconds, rounded up, at least 1.
fn whole_seconds(d: Duration) -> u64 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    secs.max(1)
}

/// The plaintext server's answer to a TLS ClientHello, as a frame.
pub fn plaintext_only_frame() -> Frame {
    error_frame(PLAINTEXT_ONLY.to_string())
}

fn error_frame(message: String) -> Frame {
    CapabilitiesMessage::Error {
        protocol_id: protocol_id::CAPABILITIES,
        message,
    }
    .to_frame()
}

/// What the first bytes a peer sent say about it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FirstBytes {
    /// A TLS record (handshake, alert, ...): the peer speaks TLS.
    Tls,
    /// A refusal notice.
    Refused(Refusal),
    /// Some other session-layer frame (or the start of one): the peer speaks plaintext.
    Plaintext,
    /// Neither, or too few bytes to tell.
    Unknown,
}

/// Classifies the first bytes received from a peer: a TLS record, a refusal notice, another
/// frame. Looks at most at one frame's worth of `bytes`, which may hold more or be cut short.
pub fn classify(bytes: &[u8]) -> FirstBytes {
    if looks_like_tls(bytes) {
        return FirstBytes::Tls;
    }
    let [m0, m1, ..] = *bytes else {
        return FirstBytes::Unknown;
    };
    if u16::from_le_bytes([m0, m1]) != MAGIC {
        return FirstBytes::Unknown;
    }
    let mut buf = bytes::BytesMut::from(bytes);
    // A notice is small: a codec limit of 1 KiB reads it whole and nothing larger.
    let mut codec = super::FrameCodec::new(1024);
    if let Ok(Some(frame)) = tokio_util::codec::Decoder::decode(&mut codec, &mut buf) {
        if frame.protocol_id == protocol_id::CAPABILITIES {
            if let Ok(CapabilitiesMessage::Error { message, .. }) =
                CapabilitiesMessage::decode(&frame.body)
            {
                if let Some(refusal) = Refusal::parse(&message) {
                    return FirstBytes::Refused(refusal);
                }
            }
        }
    }
    FirstBytes::Plaintext
}

/// Whether `bytes` start like a TLS record: a content type from change_cipher_spec (20) to
/// application_data (23), then protocol version major 3 (SSL 3.0 to TLS 1.3 all use it). A
/// frame starts `53 55`, so the two never overlap.
pub fn looks_like_tls(bytes: &[u8]) -> bool {
    matches!(bytes, [20..=23, 3, ..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_read_back_and_round_the_wait_up() {
        let penalty = Refusal::FailedLogins {
            retry_after: Duration::from_millis(7_200),
        };
        assert_eq!(
            penalty.text(),
            "Connection refused: too many failed logins from this address. Retry in 8 s."
        );
        assert_eq!(
            Refusal::parse(&penalty.text()),
            Some(Refusal::FailedLogins {
                retry_after: Duration::from_secs(8)
            })
        );
        let short = Refusal::FailedLogins {
            retry_after: Duration::from_millis(1),
        };
        assert!(short.text().ends_with("Retry in 1 s."));
        for r in [Refusal::TooManyFromAddress, Refusal::Busy] {
            assert_eq!(Refusal::parse(&r.text()), Some(r));
        }
        for other in [
            "",
            "Connection refused: ",
            "Connection refused: too many failed logins from this address. Retry in  s.",
            "Connection refused: too many failed logins from this address. Retry in -1 s.",
            "Connection refused: too many failed logins from this address. Retry in 9999999 s.",
            "Not authenticated.",
        ] {
            assert_eq!(Refusal::parse(other), None, "{other:?}");
        }
    }

    #[test]
    fn first_bytes_tell_tls_from_frames_and_notices() {
        // A TLS alert (what a TLS server answers a frame with) and a ClientHello's start.
        assert_eq!(
            classify(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x32]),
            FirstBytes::Tls
        );
        assert_eq!(classify(&[0x16, 0x03, 0x01, 0x01, 0x00]), FirstBytes::Tls);
        let notice = Refusal::Busy.to_frame().to_bytes().unwrap();
        assert_eq!(classify(&notice), FirstBytes::Refused(Refusal::Busy));
        let other = plaintext_only_frame().to_bytes().unwrap();
        assert_eq!(classify(&other), FirstBytes::Plaintext);
        // Cut short, a frame is still a frame.
        assert_eq!(classify(&notice[..4]), FirstBytes::Plaintext);
        assert_eq!(classify(&[0x53]), FirstBytes::Unknown);
        assert_eq!(classify(b"HTTP/1.1 400"), FirstBytes::Unknown);
        assert_eq!(classify(&[]), FirstBytes::Unknown);
    }
}
