//! Micro-benchmarks of the wire layer: the frame codec (small and 64 KiB payloads, many
//! frames coalesced in one read) and the built-in messages' encode/decode.
//!
//! `cargo bench -p openserver-bench` runs them; `-- --quick` for a fast pass.

use bytes::BytesMut;
use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use openserver::wire::capabilities::CapabilitiesMessage;
use openserver::wire::dbauth::DatabaseAuthMessage;
use openserver::wire::hello::HelloMessage;
use openserver::wire::{Frame, FrameCodec, Message, Secret};
use tokio_util::codec::{Decoder, Encoder};

fn wire(frame: &Frame) -> Vec<u8> {
    frame.to_bytes().expect("small frame").to_vec()
}

fn frame_codec(c: &mut Criterion) {
    let small = HelloMessage("bench".into()).to_frame();
    let large = Frame::new(0x7E00, vec![0x5a; 64 * 1024]);
    let mut group = c.benchmark_group("frame_decode");
    for (name, frame) in [("small", &small), ("64KiB", &large)] {
        let bytes = wire(frame);
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        group.bench_function(name, |b| {
            let mut codec = FrameCodec::new(16 * 1024 * 1024);
            b.iter_batched(
                || BytesMut::from(&bytes[..]),
                |mut buf| black_box(codec.decode(&mut buf).expect("valid")),
                BatchSize::SmallInput,
            )
        });
    }
    // What one read of a pipelined connection holds: 64 small frames back to back.
    let coalesced: Vec<u8> = (0..64).flat_map(|_| wire(&small)).collect();
    group.throughput(Throughput::Elements(64));
    group.bench_function("coalesced_64_small", |b| {
        let mut codec = FrameCodec::new(16 * 1024 * 1024);
        b.iter_batched(
            || BytesMut::from(&coalesced[..]),
            |mut buf| {
                let mut n = 0;
                while let Some(frame) = codec.decode(&mut buf).expect("valid") {
                    black_box(frame);
                    n += 1;
                }
                n
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();

    let mut group = c.benchmark_group("frame_encode");
    for (name, frame) in [("small", &small), ("64KiB", &large)] {
        group.throughput(Throughput::Bytes(frame.wire_len() as u64));
        group.bench_function(name, |b| {
            let mut codec = FrameCodec::default();
            let mut dst = BytesMut::with_capacity(2 * frame.wire_len());
            b.iter(|| {
                dst.clear();
                codec.encode(black_box(frame), &mut dst).expect("fits");
                black_box(dst.len())
            })
        });
    }
    group.finish();
}

fn messages(c: &mut Criterion) {
    let capabilities = CapabilitiesMessage::ProtocolIds(vec![1, 2, 3, 10, 0x7E00]);
    let login = DatabaseAuthMessage::Authenticate {
        user: "alice".into(),
        password: Secret::new("correct horse battery staple"),
    };
    let hello = HelloMessage("world".into());
    let mut group = c.benchmark_group("message_encode");
    group.bench_function("capabilities_protocol_ids", |b| {
        b.iter(|| black_box(&capabilities).to_frame())
    });
    group.bench_function("dbauth_authenticate", |b| {
        b.iter(|| black_box(&login).to_frame())
    });
    group.bench_function("hello", |b| b.iter(|| black_box(&hello).to_frame()));
    group.finish();

    let mut group = c.benchmark_group("message_decode");
    let body = capabilities.to_frame().body;
    group.bench_function("capabilities_protocol_ids", |b| {
        b.iter(|| CapabilitiesMessage::decode(black_box(&body)).expect("valid"))
    });
    let body = login.to_frame().body;
    group.bench_function("dbauth_authenticate", |b| {
        b.iter(|| DatabaseAuthMessage::decode(black_box(&body)).expect("valid"))
    });
    let body = hello.to_frame().body;
    group.bench_function("hello", |b| {
        b.iter(|| HelloMessage::decode(black_box(&body)).expect("valid"))
    });
    // The server's whole Hello turn: decode the request, build and encode the reply.
    group.bench_function("hello_reply_roundtrip", |b| {
        b.iter(|| {
            let request = HelloMessage::decode(black_box(&body)).expect("valid");
            request.reply().to_frame()
        })
    });
    // The same turn as the server's Hello handler takes it: the name borrowed from the
    // request and the framed answer written into the session's outgoing buffer.
    group.bench_function("hello_server_turn", |b| {
        let mut out = BytesMut::with_capacity(1024);
        b.iter(|| {
            out.clear();
            let name = HelloMessage::parse(black_box(&body)).expect("valid");
            Frame::encode_with(HelloMessage::PROTOCOL_ID, &mut out, |dst| {
                HelloMessage::encode_reply(name, dst)
            })
            .expect("fits")
        })
    });
    group.finish();
}

criterion_group!(benches, frame_codec, messages);
criterion_main!(benches);
