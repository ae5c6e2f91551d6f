//! `hgpt serve-models` as a process, and another hgpt using it as its local
//! model server in hybrid mode.

use hgpt_testkit::hf::FakeHf;
use hgpt_testkit::models::test_hub;
use hgpt_testkit::openai::{FakeLlm, LlmReply};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// A running `hgpt serve-models`, killed on drop.
struct Server(Child, String);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_server() -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_hgpt"))
        .env_clear()
        .env("HF_HUB_CACHE", test_hub())
        .args([
            "serve-models",
            "--bind",
            "127.0.0.1:0",
            "--model",
            "sentence-transformers/all-MiniLM-L6-v2",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut line = String::new();
    BufReader::new(stderr).read_line(&mut line).unwrap();
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_default()
        .to_string();
    assert!(!url.is_empty(), "no address in {line:?}");
    Server(child, url)
}

#[tokio::test(flavor = "multi_thread")]
async fn serves_embeddings_and_acts_as_a_local_tier() {
    let server = tokio::task::spawn_blocking(start_server).await.unwrap();
    let client = reqwest::Client::new();
    let health = client
        .get(format!("{}/health", server.1))
        .send()
        .await
        .unwrap();
    assert!(health.status().is_success());
    let status: serde_json::Value = client
        .get(format!(
            "{}/status/sentence-transformers/all-MiniLM-L6-v2",
            server.1
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["loaded"], false);
    let embedding: serde_json::Value = client
        .post(format!(
            "{}/models/sentence-transformers/all-MiniLM-L6-v2",
            server.1
        ))
        .json(&serde_json::json!({"inputs": "hello world"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(embedding.as_array().map(Vec::len), Some(384), "{embedding}");

    // Another hgpt, with nothing cached in-process, runs the model on the server.
    const PLAN: &str = r#"[{"task": "sentence-similarity", "id": 0, "dep": [-1],
        "args": {"text": "A man is eating food.", "sentences": ["A man is eating a meal.", "A plane is taking off."]}}]"#;
    let llm = FakeLlm::from_fn(|call| {
        LlmReply::text(if call.system().starts_with("#1") {
            PLAN
        } else {
            "answered"
        })
    })
    .await;
    let remote = FakeHf::with_models(Vec::<(String, hgpt_core::task::TaskKind)>::new()).await;
    let empty_cache = tempfile::tempdir().unwrap();
    let mut run = Command::new(env!("CARGO_BIN_EXE_hgpt"));
    run.env_clear()
        .env("HGPT_LLM_BASE_URL", llm.url())
        .env("HGPT_LLM_MODEL", "fake-model")
        .env("HGPT_HF_BASE_URL", remote.url())
        .env("HGPT_LOCAL_ENDPOINT", &server.1)
        .env("HF_HUB_CACHE", empty_cache.path())
        .env("HF_ENDPOINT", "http://127.0.0.1:9")
        .env("HGPT_OUT_DIR", empty_cache.path().join("out"))
        .args(["run", "--json", "compare"]);
    let out = tokio::task::spawn_blocking(move || run.output().unwrap())
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let record: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let task = &record["tasks"][0];
    assert_eq!(task["status"], "ok", "{task:#}");
    assert_eq!(
        task["model"]["id"],
        "sentence-transformers/all-MiniLM-L6-v2"
    );
    assert_eq!(
        task["endpoint"], "local",
        "the loaded model on the server counts as local"
    );
    assert_eq!(remote.inference_calls().len(), 0, "nothing went remote");
}
