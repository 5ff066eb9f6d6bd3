//! Replays the fuzz seed corpora through the fuzz entry points, so stable `cargo test` checks
//! the same invariants on them without cargo-fuzz or a nightly toolchain, and checks that every
//! seed has the outcome recorded for it in `tests/data/fuzz-seed-outcomes.txt` (a seed for a
//! refused input must stay refused, for the reason recorded).
//!
//! After adding a seed, or changing what one is meant to do, rewrite the list with
//! `OPENSERVER_BLESS_SEEDS=1 cargo test -p openserver --test fuzz_seeds` and review the diff:
//! each line is `target/seed<TAB>outcome`.

use openserver::fuzzing;
use std::collections::BTreeMap;
use std::path::PathBuf;

const OUTCOMES: &str = "tests/data/fuzz-seed-outcomes.txt";

/// The recorded outcome of every seed of `target`, by seed file name.
fn recorded(target: &str) -> BTreeMap<String, String> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(OUTCOMES);
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let (name, outcome) = line.split_once('\t')?;
            let (t, seed) = name.split_once('/')?;
            (t == target).then(|| (seed.to_string(), outcome.to_string()))
        })
        .collect()
}

/// Rewrites `target`'s lines of the outcome list (bless mode).
fn bless(target: &str, outcomes: &BTreeMap<String, String>) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(OUTCOMES);
    // Targets run in parallel: one lock for the read-modify-write.
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = LOCK.lock().unwrap();
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let mut lines: Vec<String> = text
        .lines()
        .filter(|l| !l.starts_with(&format!("{target}/")))
        .map(str::to_string)
        .collect();
    lines.extend(
        outcomes
            .iter()
            .map(|(seed, o)| format!("{target}/{seed}\t{o}")),
    );
    lines.sort();
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
}

/// Runs every file of `fuzz/corpus/<target>/` through `run` and checks its outcome against the
/// recorded one; fails if there are none, or if a seed and the list disagree.
fn replay(target: &str, run: fn(&[u8])) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("seed corpus {} missing: {e}", dir.display()));
    let mut outcomes = BTreeMap::new();
    for entry in entries {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        // Name the seed on failure; the assertion message alone does not say which one broke.
        let checked = std::panic::catch_unwind(|| run(&data));
        assert!(checked.is_ok(), "seed {} failed", path.display());
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        outcomes.insert(name, fuzzing::outcome(target, &data));
    }
    assert!(
        !outcomes.is_empty(),
        "seed corpus {} is empty",
        dir.display()
    );
    if std::env::var_os("OPENSERVER_BLESS_SEEDS").is_some() {
        bless(target, &outcomes);
        return;
    }
    let expected = recorded(target);
    let mut wrong = Vec::new();
    for (seed, outcome) in &outcomes {
        match expected.get(seed) {
            Some(want) if want == outcome => {}
            Some(want) => wrong.push(format!(
                "{target}/{seed}: expected {want:?}, got {outcome:?}"
            )),
            None => wrong.push(format!(
                "{target}/{seed}: no expected outcome in {OUTCOMES}"
            )),
        }
    }
    for seed in expected.keys().filter(|s| !outcomes.contains_key(*s)) {
        wrong.push(format!(
            "{target}/{seed}: listed in {OUTCOMES} but not in the corpus"
        ));
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
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
fn token_auth_seeds() {
    replay("token_auth", fuzzing::token_auth);
}

#[test]
fn admin_seeds() {
    replay("admin", fuzzing::admin);
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
fn first_bytes_seeds() {
    replay("first_bytes", fuzzing::first_bytes);
}

#[test]
fn proxy_header_seeds() {
    replay("proxy_header", fuzzing::proxy_header);
}

#[test]
fn app_envelope_seeds() {
    replay("app_envelope", fuzzing::app_envelope);
}

#[test]
fn channels_messages_seeds() {
    replay("channels_messages", fuzzing::channels_messages);
}
