//! Replays every fuzz target's corpus (`fuzz/corpus/<target>/`) and its
//! kept crashes (`fuzz/artifacts/<target>/`) through the target's body, on
//! stable: a crash once found and fixed stays fixed, and the checked-in
//! seeds keep decoding as they did.

use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut files: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_file()).collect();
    files.sort();
    files
}

#[test]
fn every_corpus_and_kept_crash_replays_without_a_panic() {
    let mut replayed = 0;
    for (target, body) in prism_fuzz_cases::TARGETS {
        let corpus = inputs(&fuzz_dir().join("corpus").join(target));
        assert!(
            !corpus.is_empty(),
            "fuzz/corpus/{target} has no seeds (run `cargo run -p prism-fuzz-cases --example seed`)"
        );
        for path in corpus.iter().chain(&inputs(&fuzz_dir().join("artifacts").join(target))) {
            let data = std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
            // The path in the panic message says which input failed.
            let outcome = std::panic::catch_unwind(|| body(&data));
            assert!(outcome.is_ok(), "{target}: {} panics", path.display());
            replayed += 1;
        }
    }
    assert!(replayed >= prism_fuzz_cases::TARGETS.len());
}

/// The seeds still reach past the decoders: a format change that makes
/// them all refused would leave the fuzzer exploring only error paths.
#[test]
fn every_seed_is_accepted_unless_it_is_meant_to_be_refused() {
    let mut wrong = Vec::new();
    for (target, body) in prism_fuzz_cases::TARGETS {
        for path in inputs(&fuzz_dir().join("corpus").join(target)) {
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let Some(seed) = name.strip_prefix("seed-") else { continue };
            let data = std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
            let refused = seed.starts_with("refused-");
            if body(&data) == refused {
                wrong.push(format!("{target}/{name} is {}", if refused { "accepted" } else { "refused" }));
            }
        }
    }
    assert!(wrong.is_empty(), "seeds that changed (re-run the seed example?):\n  {}", wrong.join("\n  "));
}

#[test]
fn every_target_has_a_fuzz_target_file() {
    for (target, _) in prism_fuzz_cases::TARGETS {
        let file = fuzz_dir().join("fuzz_targets").join(format!("{target}.rs"));
        let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert!(text.contains(&format!("prism_fuzz_cases::{target}(data)")), "{} calls another body", file.display());
    }
}
