//! The committed fuzz corpus (`fuzz/corpus/<target>/`), replayed through the functions the fuzz
//! targets call (`switchyard::fuzzing`): every input that once found a panic, or new code, stays
//! a test on the stable toolchain. A panic or a broken invariant fails the target's test and
//! names the file.

use std::path::{Path, PathBuf};

use switchyard::fuzzing::{self, Violation};

fn corpus(target: &str) -> Vec<PathBuf> {
    let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&folder)
        .unwrap_or_else(|e| panic!("{}: {e}", folder.display()))
        .map(|entry| entry.expect("a corpus entry").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    files
}

/// Runs every input of `target`'s corpus through `body`; fails naming each input that panics or
/// breaks an invariant.
fn replay(target: &str, body: fn(&[u8]) -> Result<(), Violation>) {
    let files = corpus(target);
    assert!(!files.is_empty(), "fuzz/corpus/{target} is empty");
    let mut failed = Vec::new();
    for path in &files {
        let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        match std::panic::catch_unwind(|| body(&data)) {
            Ok(Ok(())) => {}
            Ok(Err(violation)) => failed.push(format!("{}: {violation}", path.display())),
            Err(_) => failed.push(format!("{}: panicked", path.display())),
        }
    }
    assert!(failed.is_empty(), "{} of {} inputs failed:\n{}", failed.len(), files.len(), failed.join("\n"));
}

#[test]
fn gateway_config_corpus() {
    replay("gateway_config", fuzzing::gateway_config);
}

#[test]
fn keys_corpus() {
    replay("keys", fuzzing::keys);
}

#[test]
fn typed_keys_corpus() {
    replay("typed_keys", fuzzing::typed_keys);
}

#[test]
fn orca_corpus() {
    replay("orca", fuzzing::orca);
}

#[test]
fn kserve_request_corpus() {
    replay("kserve_request", fuzzing::kserve_request);
}
