//! `hgpt serve` as a process against loopback fake controller and inference
//! servers: the API with a token, the official `openai` Python client, a
//! graceful stop on SIGTERM, and `hgpt runs list/show` reading the store.

use hgpt_core::task::TaskKind;
use hgpt_testkit::hf::{FakeHf, sample_png};
use hgpt_testkit::openai::{FakeLlm, LlmReply};
use hgpt_testkit::venv_python;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

const CATALOG: &str = r#"{"id": "cap/a", "task": "image-to-text", "downloads": 100, "description": "captioner"}
{"id": "det/a", "task": "object-detection", "downloads": 100, "description": "detector"}
{"id": "tts/a", "task": "text-to-speech", "downloads": 10, "description": "speaker"}
"#;

const PLAN: &str = r#"[{"task": "image-to-text", "id": 0, "dep": [-1], "args": {"image": "/a.jpg"}},
{"task": "object-detection", "id": 1, "dep": [-1], "args": {"image": "/a.jpg"}},
{"task": "text-to-speech", "id": 2, "dep": [0], "args": {"text": "<GENERATED>-0"}}]"#;

const ANSWER: &str = "A cat on a couch, read aloud.";
const TOKEN: &str = "test-token";

async fn fakes() -> (FakeLlm, FakeHf) {
    let llm = FakeLlm::from_fn(|call| {
        let system = call.system();
        LlmReply::text(if system.starts_with("#1") {
            PLAN.to_string()
        } else if system.starts_with("#2") {
            json!({"id": call.first_candidate(), "reason": "first"}).to_string()
        } else {
            ANSWER.to_string()
        })
    })
    .await;
    let hf = FakeHf::with_models([
        ("cap/a", TaskKind::ImageToText),
        ("det/a", TaskKind::ObjectDetection),
        ("tts/a", TaskKind::TextToSpeech),
    ])
    .await;
    (llm, hf)
}

/// A folder with media, outputs, a catalog and the data dir.
fn workspace() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("media")).unwrap();
    std::fs::write(dir.path().join("media/a.jpg"), sample_png()).unwrap();
    std::fs::write(dir.path().join("catalog.jsonl"), CATALOG).unwrap();
    dir
}

fn hgpt(dir: &Path, llm: Option<(&FakeLlm, &FakeHf)>) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_hgpt"));
    command
        .env_clear()
        .current_dir(dir)
        .env("HGPT_CATALOG", dir.join("catalog.jsonl"))
        // Downloads, if any, stay on loopback (and fail).
        .env("HF_ENDPOINT", "http://127.0.0.1:9")
        .env("HGPT_MEDIA_ROOT", dir.join("media"))
        .env("HGPT_OUT_DIR", dir.join("out"))
        .env("HGPT_DATA_DIR", dir.join("data"));
    if let Some((llm, hf)) = llm {
        command
            .env("HGPT_LLM_BASE_URL", llm.url())
            .env("HGPT_LLM_MODEL", "fake-model")
            .env("HGPT_HF_BASE_URL", hf.url());
    }
    command
}

/// The server process, killed if a test fails before stopping it.
struct Served {
    child: Option<Child>,
    url: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Start `hgpt serve` on a free port and read its address from stderr.
fn serve(mut command: Command) -> Served {
    let mut child = command
        .args(["serve", "--bind", "127.0.0.1:0"])
        .env("HGPT_API_TOKEN", TOKEN)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let url = loop {
        let line = lines
            .next()
            .expect("hgpt serve exited before listening")
            .unwrap();
        if let Some(address) = line.split("listening on ").nth(1) {
            break address.trim().to_string();
        }
    };
    // Keep draining stderr so the server never blocks on it.
    std::thread::spawn(move || for _ in lines {});
    Served {
        child: Some(child),
        url,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_answers_clients_stops_gracefully_and_keeps_its_runs() {
    let dir = workspace();
    let (llm, hf) = fakes().await;
    let mut served = serve(hgpt(dir.path(), Some((&llm, &hf))));
    let client = reqwest::Client::new();

    // The token is required.
    let refused = client
        .post(format!("{}/v1/runs", served.url))
        .json(&json!({"request": "describe /a.jpg"}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);

    let created: Value = client
        .post(format!("{}/v1/runs", served.url))
        .bearer_auth(TOKEN)
        .json(&json!({"request": "describe /a.jpg"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap().to_string();
    let events = client
        .get(format!("{}/v1/runs/{id}/events", served.url))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(events.contains("event: finished"), "{events}");
    assert_eq!(events.matches("event: task_finished").count(), 3);

    // The official openai client, streaming and not.
    let python = venv_python();
    let url = served.url.clone();
    let checked = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/openai_client.py"))
            .args([&url, TOKEN, ANSWER])
            .env("NO_PROXY", "127.0.0.1")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        checked.status.success(),
        "openai client check failed:\n{}\n{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );

    // SIGTERM: the server stops and exits cleanly.
    let mut child = served.child.take().unwrap();
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");

    // The store outlives it: runs list/show read it.
    let list = hgpt(dir.path(), None)
        .args(["runs", "list", "--json"])
        .output()
        .unwrap();
    assert!(list.status.success());
    let list: Value = serde_json::from_slice(&list.stdout).unwrap();
    let runs = list["data"].as_array().unwrap();
    assert_eq!(runs.len(), 3, "{list}");
    assert!(runs.iter().all(|r| r["state"] == "succeeded"), "{list}");
    assert_eq!(runs.last().unwrap()["id"], id.as_str());

    let show = hgpt(dir.path(), None)
        .args(["runs", "show", &id, "--events"])
        .output()
        .unwrap();
    assert!(show.status.success());
    let run: Value = serde_json::from_slice(&show.stdout).unwrap();
    assert_eq!(run["record"]["answer"], ANSWER);
    assert_eq!(run["record"]["tasks"].as_array().unwrap().len(), 3);
    assert_eq!(
        run["events"].as_array().unwrap().last().unwrap()["data"]["state"],
        "succeeded"
    );

    let table = hgpt(dir.path(), None)
        .args(["runs", "list"])
        .output()
        .unwrap();
    let table = String::from_utf8(table.stdout).unwrap();
    assert!(
        table
            .lines()
            .any(|l| l.starts_with(&id) && l.contains("succeeded")),
        "{table}"
    );

    let pruned = hgpt(dir.path(), None)
        .args(["runs", "prune", "--keep", "1"])
        .output()
        .unwrap();
    assert!(pruned.status.success());
    assert!(String::from_utf8_lossy(&pruned.stderr).contains("deleted 2 runs"));
    let list = hgpt(dir.path(), None)
        .args(["runs", "list", "--json"])
        .output()
        .unwrap();
    let list: Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    let nothing_said = hgpt(dir.path(), None)
        .args(["runs", "prune"])
        .output()
        .unwrap();
    assert!(!nothing_said.status.success());

    let missing = hgpt(dir.path(), None)
        .args(["runs", "show", "run_nope"])
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no run \"run_nope\""));
}

#[test]
fn serve_without_an_llm_explains_and_runs_list_is_empty_without_a_store() {
    let dir = workspace();
    let empty_cache = tempfile::tempdir().unwrap();
    let out = hgpt(dir.path(), None)
        .arg("serve")
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_HUB_CACHE", empty_cache.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("hgpt models pull") && stderr.contains("HGPT_LLM_BASE_URL"),
        "{stderr}"
    );

    let list = hgpt(dir.path(), None)
        .args(["runs", "list", "--json"])
        .output()
        .unwrap();
    assert!(list.status.success());
    let list: Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(list, json!({"data": [], "next": null}));
    assert!(
        !dir.path().join("data").exists(),
        "reading created the store"
    );
}
