//! `hgpt models pull` against a loopback fake Hub.

use bytes::Bytes;
use hgpt_testkit::hub::{COMMIT, FakeHub, MINILM, minilm_files};
use hgpt_testkit::models::minilm_snapshot;
use std::collections::BTreeMap;
use std::process::{Command, Output};

/// `hgpt models pull ID` into `cache` from `hub`, nothing else in its
/// environment.
async fn pull(hub: &FakeHub, cache: &std::path::Path, id: &str) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_hgpt"));
    command
        .env_clear()
        .env("HF_ENDPOINT", hub.url())
        .env("HF_HUB_CACHE", cache)
        .args(["models", "pull", id]);
    tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap()
}

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
    let out = pull(&hub, cache.path(), id).await;
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
    let out = pull(&hub, cache.path(), "nobody/nothing").await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot pull nobody/nothing"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_model_with_only_pytorch_weights_is_pulled_as_such_and_runs() {
    // hgpt-local's fixture of a ViT classifier whose repository has no
    // safetensors (its main branch holds pytorch_model.bin).
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../hgpt-local/tests/fixtures/vit-imgcls-bin");
    let mut files: BTreeMap<String, Bytes> = [
        "config.json",
        "preprocessor_config.json",
        "pytorch_model.bin",
    ]
    .into_iter()
    .map(|name| {
        (
            name.to_string(),
            Bytes::from(std::fs::read(fixture.join(name)).unwrap()),
        )
    })
    .collect();
    files.insert("tf_model.h5".to_string(), Bytes::from_static(b"not wanted"));
    let id = "org/vit-bin-only";
    let hub = FakeHub::start(BTreeMap::from([(id.to_string(), files)])).await;
    let cache = tempfile::tempdir().unwrap();
    let out = pull(&hub, cache.path(), id).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("weights: pytorch_model.bin"), "{stderr}");
    assert!(
        !hub.requests().iter().any(|p| p.ends_with(".h5")),
        "{:?}",
        hub.requests()
    );

    // It loads and classifies an image.
    let local = hgpt_local::LocalBackend::new(hgpt_local::LocalConfig {
        cache: hgpt_local::ModelCache::at(cache.path()),
        memory_budget_bytes: 0,
        device: candle_core::Device::Cpu,
        pull: None,
    });
    let image = std::fs::read(fixture.join("../images/shapes_64x48.png")).unwrap();
    let request = hgpt_core::backend::InferenceRequest {
        task: hgpt_core::task::TaskKind::ImageClassification,
        model: id.to_string(),
        args: hgpt_core::backend::ResolvedArgs {
            image: Some(hgpt_core::output::Blob::sniffed(image)),
            ..Default::default()
        },
    };
    let output = local.run(&request).await.unwrap();
    assert!(
        matches!(&output, hgpt_core::output::InferenceOutput::Labels(labels) if !labels.is_empty()),
        "{output:?}"
    );
}

/// A local backend over `cache` that downloads from `hub` on first use.
fn pulling_backend(cache: &std::path::Path, hub: &FakeHub) -> hgpt_local::LocalBackend {
    hgpt_local::LocalBackend::new(hgpt_local::LocalConfig {
        cache: hgpt_local::ModelCache::at(cache),
        memory_budget_bytes: 0,
        device: candle_core::Device::Cpu,
        pull: Some(hgpt_local::AutoPull {
            max_bytes: 1 << 30,
            endpoint: Some(hub.url().to_string()),
            token: None,
        }),
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn only_models_a_local_family_runs_are_offered_for_download() {
    use hgpt_core::backend::{Availability, InferenceBackend};
    use hgpt_core::task::TaskKind;
    let config =
        |json: &str| BTreeMap::from([("config.json".to_string(), Bytes::from(json.to_string()))]);
    let hub = FakeHub::start(BTreeMap::from([
        (MINILM.to_string(), minilm_files()),
        (
            "org/clip".to_string(),
            config(r#"{"model_type": "clip", "architectures": ["CLIPModel"]}"#),
        ),
    ]))
    .await;
    let cache = tempfile::tempdir().unwrap();
    let local = pulling_backend(cache.path(), &hub);
    // A bert encoder: a local family embeds with it.
    assert!(matches!(
        local
            .availability(TaskKind::FeatureExtraction, MINILM)
            .await,
        Availability::Pullable(_)
    ));
    // A composite model no local family runs is not offered, with the reason;
    // its config is asked for once.
    let asked = || {
        hub.requests()
            .iter()
            .filter(|p| p.contains("org/clip"))
            .count()
    };
    let mut after_first = None;
    for _ in 0..2 {
        let Availability::Unavailable(reason) = local
            .availability(TaskKind::FeatureExtraction, "org/clip")
            .await
        else {
            panic!("CLIP is not a local sentence embedder")
        };
        assert!(
            reason.contains("CLIPModel") && reason.contains("BERT"),
            "{reason}"
        );
        assert!(asked() > 0);
        assert_eq!(*after_first.get_or_insert(asked()), asked(), "asked again");
    }
    // A model the Hub cannot describe stays a download candidate.
    assert!(matches!(
        local
            .availability(TaskKind::FeatureExtraction, "org/absent")
            .await,
        Availability::Pullable(_)
    ));
    // Nothing but configs was downloaded.
    assert!(!hub.requests().iter().any(|p| p.ends_with(".safetensors")));

    // A cached model of another family is unavailable, with the reason.
    let cached = tempfile::tempdir().unwrap();
    let snapshot = cached.path().join("models--org--clip/snapshots/abc");
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(cached.path().join("models--org--clip/refs")).unwrap();
    std::fs::write(cached.path().join("models--org--clip/refs/main"), "abc").unwrap();
    std::fs::write(
        snapshot.join("config.json"),
        r#"{"model_type": "clip", "architectures": ["CLIPModel"]}"#,
    )
    .unwrap();
    std::fs::write(snapshot.join("model.safetensors"), b"weights").unwrap();
    let local = pulling_backend(cached.path(), &hub);
    let Availability::Unavailable(reason) = local
        .availability(TaskKind::FeatureExtraction, "org/clip")
        .await
    else {
        panic!("a cached CLIP model is not a local sentence embedder")
    };
    assert!(reason.contains("CLIPModel"), "{reason}");
}
