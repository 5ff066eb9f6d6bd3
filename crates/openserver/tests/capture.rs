//! The recorded Java client session against the wire code: every captured frame and body must
//! decode and re-encode byte for byte, whatever the chunking of the stream.

mod support;

use bytes::BytesMut;
use openserver::wire::capabilities::CapabilitiesMessage;
use openserver::wire::codec::DEFAULT_MAX_PAYLOAD;
use openserver::wire::dbauth::DatabaseAuthMessage;
use openserver::wire::hello::HelloMessage;
use openserver::wire::keepalive::KeepAliveMessage;
use openserver::wire::winauth::WinAuthMessage;
use openserver::wire::{protocol_id, Frame, FrameCodec, Message};
use support::{decode_all, decode_chunks, java_capture, stream, Side};
use tokio_util::codec::{Decoder, Encoder};

/// Decodes one captured frame, checking it is exactly one whole frame.
fn decode_one(bytes: &[u8]) -> Frame {
    let mut buf = BytesMut::from(bytes);
    let frame = FrameCodec::default()
        .decode_eof(&mut buf)
        .expect("captured frame decodes")
        .expect("captured frame is complete");
    assert!(buf.is_empty(), "bytes left after one frame: {buf:?}");
    frame
}

/// Decodes `body` as `M` and re-encodes it; returns the re-encoding.
fn reencode<M: Message>(body: &[u8]) -> Vec<u8> {
    let msg = M::decode(body).unwrap_or_else(|e| panic!("body {} fails: {e}", hex::encode(body)));
    let mut out = BytesMut::new();
    msg.encode(&mut out);
    out.to_vec()
}

#[test]
fn capture_has_both_sides_and_every_protocol() {
    let capture = java_capture();
    assert!(capture.iter().any(|f| f.side == Side::Client));
    assert!(capture.iter().any(|f| f.side == Side::Server));
    for id in [
        protocol_id::CAPABILITIES,
        protocol_id::KEEP_ALIVE,
        protocol_id::WIN_AUTH,
        protocol_id::DATABASE_AUTH,
        protocol_id::HELLO,
    ] {
        assert!(
            capture
                .iter()
                .any(|f| decode_one(&f.bytes).protocol_id == id),
            "no frame of protocol {id}"
        );
    }
}

#[test]
fn every_frame_decodes_and_reencodes_identically() {
    for captured in java_capture() {
        let frame = decode_one(&captured.bytes);
        let mut out = BytesMut::new();
        FrameCodec::default().encode(&frame, &mut out).unwrap();
        assert_eq!(hex::encode(&out), hex::encode(&captured.bytes));
        assert_eq!(frame.wire_len(), captured.bytes.len());
    }
}

#[test]
fn every_body_decodes_as_its_protocol_and_reencodes_identically() {
    for captured in java_capture() {
        let frame = decode_one(&captured.bytes);
        let body = &frame.body[..];
        let again = match frame.protocol_id {
            protocol_id::CAPABILITIES => reencode::<CapabilitiesMessage>(body),
            protocol_id::KEEP_ALIVE => reencode::<KeepAliveMessage>(body),
            protocol_id::WIN_AUTH => reencode::<WinAuthMessage>(body),
            protocol_id::DATABASE_AUTH => reencode::<DatabaseAuthMessage>(body),
            protocol_id::HELLO => reencode::<HelloMessage>(body),
            other => panic!("capture holds unknown protocol {other}"),
        };
        assert_eq!(hex::encode(again), hex::encode(body), "{:?}", captured.side);
    }
}

#[test]
fn captured_requests_decode_to_the_expected_messages() {
    let client: Vec<Frame> = java_capture()
        .iter()
        .filter(|f| f.side == Side::Client)
        .map(|f| decode_one(&f.bytes))
        .collect();
    assert_eq!(
        CapabilitiesMessage::decode(&client[0].body),
        Ok(CapabilitiesMessage::GetProtocolIds)
    );
    assert_eq!(
        DatabaseAuthMessage::decode(&client[2].body),
        Ok(DatabaseAuthMessage::Authenticate {
            user: "alice".into(),
            password: "secret".into(),
        })
    );
    assert_eq!(
        HelloMessage::decode(&client[3].body),
        Ok(HelloMessage("alice".into()))
    );
    assert_eq!(
        WinAuthMessage::decode(&client[8].body),
        Ok(WinAuthMessage::Authenticate {
            user: "alice".into(),
            password: "secret".into(),
            domain: String::new(),
        })
    );
    assert_eq!(
        KeepAliveMessage::decode(&client.last().unwrap().body),
        Ok(KeepAliveMessage::Quit)
    );
}

/// The frames each side's stream must decode to: the captured frames, one by one.
fn expected_frames(side: Side) -> Vec<Frame> {
    java_capture()
        .iter()
        .filter(|f| f.side == side)
        .map(|f| decode_one(&f.bytes))
        .collect()
}

#[test]
fn whole_streams_decode_to_the_captured_frames() {
    for side in [Side::Client, Side::Server] {
        let decoded = decode_all(DEFAULT_MAX_PAYLOAD, &stream(side));
        assert_eq!(decoded.error, None);
        assert_eq!(decoded.frames, expected_frames(side));
    }
}

#[test]
fn client_stream_split_anywhere_decodes_the_same() {
    let bytes = stream(Side::Client);
    let expected = decode_all(DEFAULT_MAX_PAYLOAD, &bytes);
    for cut in 0..=bytes.len() {
        let (a, b) = bytes.split_at(cut);
        assert_eq!(
            decode_chunks(DEFAULT_MAX_PAYLOAD, [a, b]),
            expected,
            "split at {cut}"
        );
    }
}

#[test]
fn streams_fed_one_byte_at_a_time_decode_the_same() {
    for side in [Side::Client, Side::Server] {
        let bytes = stream(side);
        let decoded = decode_chunks(DEFAULT_MAX_PAYLOAD, bytes.chunks(1));
        assert_eq!(decoded.error, None);
        assert_eq!(decoded.frames, expected_frames(side));
    }
}

#[test]
fn stream_cut_inside_a_frame_reports_truncation() {
    let bytes = stream(Side::Client);
    let first = java_capture()[0].bytes.len();
    // One byte into the second frame: the first frame decodes, then EOF inside a header.
    let decoded = decode_all(DEFAULT_MAX_PAYLOAD, &bytes[..first + 1]);
    assert_eq!(decoded.frames.len(), 1);
    assert!(decoded.error.unwrap().contains("closed inside a frame"));
}
