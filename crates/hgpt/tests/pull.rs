//! `hgpt models pull` against a loopback fake Hub.

use bytes::Bytes;
use hgpt_testkit::hub::{COMMIT, FakeHub, minilm_files};
use hgpt_testkit::models::minilm_snapshot;
use std::collections::BTreeMap;
use std::process::Command;

#[tokio::test(flavor = "multi_thread")]
async fn pull_fetches_only_what_hgpt_needs_into_the_cache() {
    let snapshot = minilm_snapshot();
    let mut files = minilm_files();
    files.insert(
        "pytorch_model.bin".to_string(),
        Bytes::from_static(b"not wanted"),
    );
    files.insert(
        "onnx/model.onnx".to_string(),
        Bytes::from_static(b"not wanted"),
    );
    let id = "sentence-transformers/all-MiniLM-L6-v2";
    let hub = FakeHub::start(BTreeMap::from([(id.to_string(), files)])).await;
    let cache = tempfile::tempdir().unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_hgpt"));
    command
        .env_clear()
        .env("HF_ENDPOINT", hub.url())
        .env("HF_HUB_CACHE", cache.path())
        .args(["models", "pull", id]);
    let out = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let pulled = cache
        .path()
        .join("models--sentence-transformers--all-MiniLM-L6-v2/snapshots")
        .join(COMMIT);
    assert_eq!(
        std::fs::read(pulled.join("model.safetensors")).unwrap(),
        std::fs::read(snapshot.join("model.safetensors")).unwrap()
    );
    assert!(pulled.join("1_Pooling/config.json").is_file());
    assert!(!pulled.join("pytorch_model.bin").exists());
    let requested = hub.requests();
    assert!(
        !requested
            .iter()
            .any(|p| p.ends_with(".bin") || p.contains("onnx")),
        "{requested:?}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains(&pulled.display().to_string()));

    // What was pulled loads and runs.
    let local = hgpt_local::LocalBackend::new(hgpt_local::LocalConfig {
        cache: hgpt_local::ModelCache::at(cache.path()),
        memory_budget_bytes: 0,
        device: candle_core::Device::Cpu,
        pull: None,
    });
    local
        .can_serve(hgpt_core::task::TaskKind::FeatureExtraction, id)
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn pulling_an_unknown_model_fails_clearly() {
    let hub = FakeHub::start(BTreeMap::new()).await;
    let cache = tempfile::tempdir().unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_hgpt"));
    command
        .env_clear()
        .env("HF_ENDPOINT", hub.url())
        .env("HF_HUB_CACHE", cache.path())
        .args(["models", "pull", "nobody/nothing"]);
    let out = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot pull nobody/nothing"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
