//! Replays the committed fuzzing corpora (`fuzz/corpus/<target>/`) through the same harness
//! the cargo-fuzz targets run (`fuzz/src/lib.rs`), as plain tests: CI needs no fuzzer build to
//! keep every input the fuzzers found interesting passing. docs/reliability.md has the runs.
#![allow(clippy::unwrap_used)]

#[path = "../../fuzz/src/lib.rs"]
mod harness;

use std::path::{Path, PathBuf};

fn corpus(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    // An emptied corpus would pass without testing anything.
    assert!(
        files.len() >= 10,
        "{} holds {} inputs",
        dir.display(),
        files.len()
    );
    files
}

fn replay(target: &str, run: fn(&[u8])) {
    for file in corpus(target) {
        let bytes = std::fs::read(&file).unwrap();
        let outcome = std::panic::catch_unwind(|| run(&bytes));
        assert!(
            outcome.is_ok(),
            "{} fails the {target} harness",
            file.display()
        );
    }
}

#[test]
fn decode_request_corpus_passes() {
    replay("decode_request", harness::decode_request);
}

#[test]
fn tensor_conversion_corpus_passes() {
    replay("tensor_conversion", harness::tensor_conversion);
}

#[test]
fn model_signature_corpus_passes() {
    replay("model_signature", harness::model_signature);
}

#[test]
fn hardware_file_corpus_passes() {
    replay("hardware_file", harness::hardware_file);
}
