//! The official Python client (`huggingface_hub`'s InferenceClient, from the
//! venv that `scripts/python-test-env.sh` makes) against the model server,
//! for every pipeline the server serves.

mod common;

use common::Server;
use hgpt_local::{ModelFiles, pipeline};
use hgpt_model_server::ModelServerConfig;
use hgpt_testkit::cache::{Hub, MINILM, fixture_folders, fixture_id, fixtures_dir};
use hgpt_testkit::venv_python;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_inference_client_reads_every_served_pipeline() {
    let python = venv_python();
    let hub = Hub::new();
    hub.with_minilm().with_fixtures();
    let server = Server::start(hub.path(), ModelServerConfig::default()).await;
    let hf_home = tempfile::tempdir().unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/client_check.py");
    let mut command = Command::new(python);
    command
        .arg(script)
        .arg(&server.url)
        .arg("--fixtures")
        .arg(fixtures_dir())
        // No Hub traffic: a dead loopback endpoint, no token, no telemetry.
        // (HF_HUB_OFFLINE would block the loopback calls too.)
        .env("HF_ENDPOINT", "http://127.0.0.1:9")
        .env("HF_HOME", hf_home.path())
        .env("HF_HUB_DISABLE_TELEMETRY", "1")
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost");
    for name in [
        "HF_HUB_OFFLINE",
        "HF_TOKEN",
        "HUGGING_FACE_HUB_TOKEN",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ] {
        command.env_remove(name);
    }
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "client_check.py failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    let summary: Value = stdout
        .lines()
        .last()
        .and_then(|line| serde_json::from_str(line).ok())
        .unwrap_or_else(|| panic!("no summary from client_check.py:\n{stdout}\n{stderr}"));
    eprintln!("huggingface_hub client check: {summary}");

    assert_eq!(
        summary["checked"][MINILM],
        json!(["feature-extraction", "sentence-similarity"]),
        "{summary}"
    );
    // Each fixture was checked, every task it does, when its pipeline exists;
    // only then is it skipped, with a reason.
    for folder in fixture_folders() {
        let id = fixture_id(&folder);
        let files = ModelFiles::from_dir(&id, fixtures_dir().join(&folder));
        let task = pipeline::task_of(&files).unwrap_or_else(|| panic!("no task for {folder}"));
        let checked = &summary["checked"][&id];
        let skipped = &summary["skipped"][&id];
        if pipeline::supports(task) {
            // A pipeline's default task first (text-to-image models do
            // image-to-image too).
            let first = checked.as_array().and_then(|tasks| tasks.first());
            assert_eq!(first, Some(&json!(task.as_str())), "{id}: {summary}");
            assert!(skipped.is_null(), "{id}: {summary}");
            for task in pipeline::tasks_of(&files) {
                assert!(
                    checked
                        .as_array()
                        .is_some_and(|tasks| tasks.contains(&json!(task.as_str()))),
                    "{id}: {task} was not checked: {summary}"
                );
            }
        } else {
            assert!(
                checked.is_null() && skipped.as_str().unwrap_or("").contains("not served"),
                "{id}: {summary}"
            );
        }
    }
    server.stop().await.unwrap();
}
