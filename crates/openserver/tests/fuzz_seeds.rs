//! Replays the fuzz seed corpora through the fuzz entry points, so stable `cargo test` checks
//! the same invariants on them without cargo-fuzz or a nightly toolchain.

use openserver::fuzzing;
use std::path::PathBuf;

/// Runs every file of `fuzz/corpus/<target>/` through `run`; fails if there are none.
fn replay(target: &str, run: fn(&[u8])) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("seed corpus {} missing: {e}", dir.display()));
    let mut count = 0;
    for entry in entries {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        // Name the seed on failure; the assertion message alone does not say which one broke.
        let outcome = std::panic::catch_unwind(|| run(&data));
        assert!(outcome.is_ok(), "seed {} failed", path.display());
        count += 1;
    }
    assert!(count > 0, "seed corpus {} is empty", dir.display());
}

#[test]
fn frame_decoder_seeds() {
    replay("frame_decoder", fuzzing::frame_decoder);
}

#[test]
fn capabilities_seeds() {
    replay("capabilities", fuzzing::capabilities);
}

#[test]
fn keepalive_seeds() {
    replay("keepalive", fuzzing::keepalive);
}

#[test]
fn winauth_seeds() {
    replay("winauth", fuzzing::winauth);
}

#[test]
fn dbauth_seeds() {
    replay("dbauth", fuzzing::dbauth);
}

#[test]
fn hello_seeds() {
    replay("hello", fuzzing::hello);
}

#[test]
fn scram_messages_seeds() {
    replay("scram_messages", fuzzing::scram_messages);
}

#[test]
fn scram_server_seeds() {
    replay("scram_server", fuzzing::scram_server);
}

#[test]
fn app_envelope_seeds() {
    replay("app_envelope", fuzzing::app_envelope);
}
