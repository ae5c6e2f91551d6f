//! The local backend: loading on first use, queueing, the memory budget.

use hgpt_core::backend::{
    Availability, InferenceBackend, InferenceError, InferenceRequest, ResolvedArgs,
};
use hgpt_core::output::InferenceOutput;
use hgpt_core::task::TaskKind;
use hgpt_local::{LocalBackend, LocalConfig, ModelCache};
use std::path::{Path, PathBuf};

fn minilm_snapshot() -> PathBuf {
    let hub = std::env::var_os("HGPT_TEST_HUB_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/test-models/hub")
        });
    let repo = hub.join("models--sentence-transformers--all-MiniLM-L6-v2");
    let commit = std::fs::read_to_string(repo.join("refs/main"))
        .expect("run `bash scripts/fetch-minilm.sh` first (scripts/test does it)");
    repo.join("snapshots").join(commit.trim())
}

/// A hub cache holding MiniLM under each of `ids`.
fn cache_with(ids: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for id in ids {
        let repo = dir
            .path()
            .join(format!("models--{}", id.replace('/', "--")));
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs/main"), "c0ffee").unwrap();
        copy_dir(&minilm_snapshot(), &repo.join("snapshots/c0ffee"));
    }
    dir
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::os::unix::fs::symlink(std::fs::canonicalize(entry.path()).unwrap(), target)
                .unwrap();
        }
    }
}

fn backend(cache: &Path, budget: u64) -> LocalBackend {
    LocalBackend::new(LocalConfig {
        cache: ModelCache::at(cache),
        memory_budget_bytes: budget,
        device: candle_core::Device::Cpu,
        pull: None,
    })
}

fn embed(model: &str, text: &str) -> InferenceRequest {
    InferenceRequest {
        task: TaskKind::FeatureExtraction,
        model: model.into(),
        args: ResolvedArgs {
            text: Some(text.into()),
            ..ResolvedArgs::default()
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_share_one_load() {
    let cache = cache_with(&["org/mini"]);
    let local = backend(cache.path(), 0);
    assert!(!local.is_loaded("org/mini"));
    let requests: Vec<_> = (0..6)
        .map(|i| embed("org/mini", &format!("sentence {i}")))
        .collect();
    let results = futures::future::join_all(requests.iter().map(|r| local.infer(r))).await;
    for result in results {
        assert!(
            matches!(result, Ok(InferenceOutput::Embeddings(_))),
            "{result:?}"
        );
    }
    let loaded = local.loaded();
    assert_eq!(loaded.len(), 1, "{loaded:?}");
    assert_eq!(loaded[0].model, "org/mini");
    assert!(loaded[0].bytes > 1_000_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_budget_unloads_the_least_recently_used_model() {
    let cache = cache_with(&["org/one", "org/two"]);
    let size = std::fs::metadata(minilm_snapshot().join("model.safetensors"))
        .unwrap()
        .len();
    let local = backend(cache.path(), size + size / 2);
    local.infer(&embed("org/one", "a")).await.unwrap();
    local.infer(&embed("org/two", "b")).await.unwrap();
    let loaded: Vec<String> = local.loaded().into_iter().map(|m| m.model).collect();
    assert_eq!(loaded, ["org/two"], "org/one was unloaded to make room");
    // Similarity reuses the loaded embedder rather than loading a second copy.
    let similarity = InferenceRequest {
        task: TaskKind::SentenceSimilarity,
        model: "org/two".into(),
        args: ResolvedArgs {
            text: Some("a cat".into()),
            other: [(
                "sentences".to_string(),
                serde_json::json!(["a kitten", "a truck"]),
            )]
            .into_iter()
            .collect(),
            ..ResolvedArgs::default()
        },
    };
    let InferenceOutput::Similarities(scores) = local.infer(&similarity).await.unwrap() else {
        panic!()
    };
    assert!(scores[0] > scores[1], "{scores:?}");
    assert_eq!(local.loaded().len(), 1);
}

#[tokio::test]
async fn a_model_over_the_budget_is_refused_with_the_numbers() {
    let cache = cache_with(&["org/mini"]);
    let local = backend(cache.path(), 1024);
    let error = local.infer(&embed("org/mini", "a")).await.unwrap_err();
    assert!(error.to_string().contains("memory budget"), "{error}");
    assert!(local.loaded().is_empty());
}

#[tokio::test]
async fn availability_and_errors() {
    let cache = cache_with(&["org/mini"]);
    let local = backend(cache.path(), 0);
    assert_eq!(local.endpoint("org/mini"), "local");
    assert_eq!(
        local
            .availability(TaskKind::FeatureExtraction, "org/mini")
            .await,
        Availability::Available
    );
    let Availability::Unavailable(reason) = local
        .availability(TaskKind::FeatureExtraction, "org/absent")
        .await
    else {
        panic!("an uncached model is unavailable")
    };
    assert!(reason.contains("not in the local cache"), "{reason}");
    assert!(
        !local
            .availability(TaskKind::TextToVideo, "org/mini")
            .await
            .is_usable()
    );
    let error = local.infer(&embed("org/absent", "a")).await.unwrap_err();
    assert!(
        matches!(&error, InferenceError::Unsupported(m) if m.contains("hgpt models pull org/absent")),
        "{error}"
    );
    let error = local.infer(&embed("org/mini", "")).await.unwrap_err();
    assert!(matches!(error, InferenceError::BadInput { .. }), "{error}");
}
