//! Where tests find the real test model: the Hugging Face cache laid out by
//! `scripts/fetch-minilm.sh` (`HGPT_TEST_HUB_DIR`, else `target/test-models/hub`), and the
//! SmolLM2 controller model laid out by `scripts/fetch-smollm2.sh`.

use std::path::PathBuf;

/// The hub cache folder holding all-MiniLM-L6-v2. Panics with the command to
/// run when it is missing, so a test never silently skips.
pub fn test_hub() -> PathBuf {
    let hub = std::env::var_os("HGPT_TEST_HUB_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/test-models/hub")
        });
    assert!(
        hub.join("models--sentence-transformers--all-MiniLM-L6-v2")
            .is_dir(),
        "the MiniLM test model is missing from {}: run `bash scripts/fetch-minilm.sh` (scripts/test does it)",
        hub.display()
    );
    hub
}

/// The snapshot folder of all-MiniLM-L6-v2 in [`test_hub`].
pub fn minilm_snapshot() -> PathBuf {
    let repo = test_hub().join("models--sentence-transformers--all-MiniLM-L6-v2");
    let commit = std::fs::read_to_string(repo.join("refs/main")).unwrap_or_default();
    repo.join("snapshots").join(commit.trim())
}

/// The real SmolLM2-135M-Instruct GGUF file (Q4_1) laid out by
/// `scripts/fetch-smollm2.sh` (`HGPT_TEST_GGUF_DIR`, else
/// `target/test-models/gguf`). Panics with the command to run when missing.
pub fn smollm2_gguf() -> PathBuf {
    let dir = std::env::var_os("HGPT_TEST_GGUF_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/test-models/gguf")
        });
    let file = dir.join("SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        file.is_file(),
        "the SmolLM2 test model is missing from {}: run `bash scripts/fetch-smollm2.sh` (scripts/test does it)",
        dir.display()
    );
    file
}
