//! The library's layers point one way: wire <- session <- protocol <- server/client <- app and
//! channels (which sit beside each other at the top). A lower
//! layer's sources never name a higher layer (comments aside), so that the session knows
//! nothing of the server and a protocol reaches server facilities only through the seams the
//! lower layers define (`session::telemetry::SessionHost`, `protocol::admin::SessionDirectory`).

use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`.
fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for entry in std::fs::read_dir(&dir).expect("source folder readable") {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                todo.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files
}

/// The code lines (not comments) of `folder`'s sources that name one of `above`.
fn upward_imports(folder: &str, above: &[&str]) -> Vec<String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let files = sources(&src.join(folder));
    assert!(!files.is_empty(), "no sources under src/{folder}");
    let mut found = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("source readable");
        for (n, line) in text.lines().enumerate() {
            let code = line.trim_start();
            if code.starts_with("//") {
                continue;
            }
            for layer in above {
                // `crate::server`, and `use crate::{server, ...}` spelled either way.
                let named = code.contains(&format!("crate::{layer}"))
                    || (code.starts_with("use crate::{") && code.contains(layer));
                if named {
                    found.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
                }
            }
        }
    }
    found
}

#[test]
fn session_names_neither_protocol_nor_the_faces() {
    let found = upward_imports(
        "session",
        &["server", "client", "protocol", "channels", "app"],
    );
    assert!(
        found.is_empty(),
        "session/ reaches up:\n{}",
        found.join("\n")
    );
}

#[test]
fn protocol_names_neither_face() {
    let found = upward_imports("protocol", &["server", "client", "channels", "app"]);
    assert!(
        found.is_empty(),
        "protocol/ reaches up:\n{}",
        found.join("\n")
    );
}

#[test]
fn wire_names_no_layer_above() {
    let found = upward_imports(
        "wire",
        &["session", "protocol", "server", "client", "channels", "app"],
    );
    assert!(found.is_empty(), "wire/ reaches up:\n{}", found.join("\n"));
}
