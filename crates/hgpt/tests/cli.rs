//! The `hgpt` binary end to end against loopback fake servers: an
//! OpenAI-compatible controller and a Hugging Face inference server.

use hgpt_core::task::TaskKind;
use hgpt_testkit::cache::{Hub, fixture_id, fixtures_dir};
use hgpt_testkit::hf::{FakeHf, sample_png};
use hgpt_testkit::hub::{COMMIT, FakeHub, MINILM, minilm_files};
use hgpt_testkit::models::test_hub;
use hgpt_testkit::openai::{FakeLlm, LlmCall, LlmReply};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

const CATALOG: &str = r#"{"id": "cap/a", "task": "image-to-text", "downloads": 100, "description": "captioner a"}
{"id": "cap/b", "task": "image-to-text", "downloads": 10, "description": "captioner b"}
{"id": "det/a", "task": "object-detection", "downloads": 100, "description": "detector a"}
{"id": "det/b", "task": "object-detection", "downloads": 10, "description": "detector b"}
{"id": "tts/a", "task": "text-to-speech", "downloads": 10, "description": "speaker a"}
{"id": "gray/a", "task": "image-to-image", "downloads": 10, "description": "image editor"}
"#;

const PLAN: &str = r#"Sure, here is the plan: [{"task": "image-to-text", "id": 0, "dep": [-1], "args": {"image": "/a.jpg"}},
{"task": "object-detection", "id": 1, "dep": [-1], "args": {"image": "/a.jpg"}}},
{"task": "text-to-speech", "id": 2, "dep": [0], "args": {"text": "<GENERATED-0>"}}]"#;

/// A workspace: media root with an image, an output dir and a catalog.
struct Workspace {
    dir: tempfile::TempDir,
}

impl Workspace {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("media")).unwrap();
        std::fs::write(dir.path().join("media/a.jpg"), sample_png()).unwrap();
        std::fs::write(dir.path().join("catalog.jsonl"), CATALOG).unwrap();
        Self { dir }
    }
    fn out_dir(&self) -> PathBuf {
        self.dir.path().join("out")
    }
    fn command(&self, llm: Option<&FakeLlm>, hf: &FakeHf, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_hgpt"));
        command
            .env_clear()
            .current_dir(self.dir.path())
            .env("HGPT_HF_BASE_URL", hf.url())
            // Downloads, if any, stay on loopback (and fail) unless a test
            // starts a fake Hub.
            .env("HF_ENDPOINT", "http://127.0.0.1:9")
            .env("HGPT_CATALOG", self.dir.path().join("catalog.jsonl"))
            .env("HGPT_MEDIA_ROOT", self.dir.path().join("media"))
            .env("HGPT_OUT_DIR", self.out_dir())
            .args(args);
        if let Some(llm) = llm {
            command
                .env("HGPT_LLM_BASE_URL", llm.url())
                .env("HGPT_LLM_MODEL", "fake-model");
        }
        command
    }
}

async fn output(mut command: Command, stdin: &str) -> Output {
    let stdin = stdin.to_string();
    tokio::task::spawn_blocking(move || {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap()
}

/// The selection answer naming the first candidate in the prompt.
fn first_candidate(call: &LlmCall) -> String {
    format!(
        "Let me think. {{\"id\": \"{}\", \"reason\": \"best fit\"}}",
        call.first_candidate()
    )
}

/// A controller that plans `plan`, picks the first candidate and answers with
/// a fixed sentence plus every generated path it was shown.
async fn controller(plan: &'static str) -> FakeLlm {
    FakeLlm::from_fn(move |call| {
        let system = call.system();
        LlmReply::text(if system.starts_with("#1") {
            plan.to_string()
        } else if system.starts_with("#2") {
            first_candidate(call)
        } else if system.starts_with("#4") {
            let paths: Vec<&str> = call
                .last_user()
                .split('"')
                .filter(|s| s.contains("/out/"))
                .collect();
            format!("All done. Files: {}", paths.join(" "))
        } else {
            "Just chatting.".to_string()
        })
    })
    .await
}

async fn inference_server() -> FakeHf {
    FakeHf::with_models([
        ("cap/a", TaskKind::ImageToText),
        ("cap/b", TaskKind::ImageToText),
        ("det/a", TaskKind::ObjectDetection),
        ("det/b", TaskKind::ObjectDetection),
        ("tts/a", TaskKind::TextToSpeech),
        ("gray/a", TaskKind::ImageToImage),
    ])
    .await
}

/// The ids of `hgpt models list --json`'s entries, in order.
fn catalog_ids(list: &Value) -> Vec<&str> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect()
}

fn json(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn run_json_records_a_multi_step_run_and_writes_files() {
    let ws = Workspace::new();
    let (llm, hf) = (controller(PLAN).await, inference_server().await);
    let args = [
        "run",
        "--json",
        "describe /a.jpg, count the zebras, read it aloud",
    ];
    let out = output(ws.command(Some(&llm), &hf, &args), "").await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let record = json(&out);

    assert_eq!(
        record["request"],
        "describe /a.jpg, count the zebras, read it aloud"
    );
    assert_eq!(record["mode"], "tasks");
    assert_eq!(record["plan"].as_array().unwrap().len(), 3);
    assert_eq!(record["plan"][0]["dep"], serde_json::json!([-1]));
    let tasks = record["tasks"].as_array().unwrap();
    for task in tasks {
        assert_eq!(task["status"], "ok", "{task:#}");
        assert!(task["started_ms"].as_u64().unwrap() <= task["finished_ms"].as_u64().unwrap());
    }
    assert_eq!(tasks[0]["model"]["id"], "cap/a");
    assert_eq!(tasks[0]["model"]["reason"], "best fit");
    assert_eq!(tasks[1]["model"]["id"], "det/a");
    assert_eq!(tasks[2]["model"]["id"], "tts/a");
    assert_eq!(
        tasks[2]["model"]["reason"],
        "the only available candidate for this task"
    );
    let caption = tasks[0]["output"]["generated_text"].as_str().unwrap();
    assert_eq!(
        tasks[2]["args"]["text"], caption,
        "<GENERATED-0> resolved to the caption"
    );

    let drawn = PathBuf::from(tasks[1]["output"]["generated_image"].as_str().unwrap());
    assert!(
        drawn.starts_with(ws.out_dir().canonicalize().unwrap()),
        "{drawn:?}"
    );
    let drawn_bytes = std::fs::read(&drawn).unwrap();
    assert!(
        drawn_bytes.starts_with(b"\x89PNG") && drawn_bytes != sample_png(),
        "boxes were drawn"
    );
    assert!(
        tasks[1]["output"]["predicted"]
            .as_array()
            .is_some_and(|p| !p.is_empty())
    );
    let audio = PathBuf::from(tasks[2]["output"]["generated_audio"].as_str().unwrap());
    assert!(
        std::fs::read(&audio).unwrap().starts_with(b"RIFF"),
        "the speech was saved as a file"
    );
    let answer = record["answer"].as_str().unwrap();
    assert!(
        answer.starts_with("All done.") && answer.contains(audio.to_str().unwrap()),
        "{answer}"
    );

    let calls = hf.inference_calls();
    let image_calls: Vec<_> = calls
        .iter()
        .filter(|c| c.model == "cap/a" || c.model == "det/a")
        .collect();
    assert_eq!(image_calls.len(), 2);
    assert!(
        image_calls
            .iter()
            .all(|c| c.body.as_ref() == sample_png().as_slice()),
        "images go as raw bytes"
    );
    let tts_call = calls.iter().find(|c| c.model == "tts/a").unwrap();
    assert_eq!(tts_call.json.as_ref().unwrap()["inputs"], caption);
}

#[tokio::test(flavor = "multi_thread")]
async fn run_streams_the_answer_to_stdout() {
    let ws = Workspace::new();
    let (llm, hf) = (controller(PLAN).await, inference_server().await);
    let out = output(ws.command(Some(&llm), &hf, &["run", "describe /a.jpg"]), "").await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout.starts_with("All done. Files: ") && stdout.ends_with('\n'),
        "{stdout}"
    );
    assert!(stdout.contains(".wav"), "{stdout}");
    let answer_call = llm
        .calls()
        .into_iter()
        .find(|c| c.system().starts_with("#4"))
        .unwrap();
    assert!(answer_call.stream, "the answer was requested as a stream");
}

#[tokio::test(flavor = "multi_thread")]
async fn without_an_llm_offline_it_says_what_to_pull() {
    let ws = Workspace::new();
    let hf = inference_server().await;
    let empty_cache = tempfile::tempdir().unwrap();
    let mut command = ws.command(None, &hf, &["run", "hello"]);
    command
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_HUB_CACHE", empty_cache.path());
    let out = output(command, "").await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("hgpt models pull Qwen/Qwen2.5-1.5B-Instruct-GGUF")
            && stderr.contains("--llm-local")
            && stderr.contains("HGPT_LLM_BASE_URL")
            && stderr.contains("offline"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"));
}

#[tokio::test(flavor = "multi_thread")]
async fn plan_prints_the_reference_shape() {
    let ws = Workspace::new();
    let (llm, hf) = (controller(PLAN).await, inference_server().await);
    let out = output(
        ws.command(Some(&llm), &hf, &["plan", "describe /a.jpg"]),
        "",
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan = json(&out);
    assert_eq!(
        plan[2],
        serde_json::json!({"task": "text-to-speech", "id": 2, "dep": [0], "args": {"text": "<GENERATED>-0"}})
    );
    assert_eq!(hf.call_count(), 0, "planning runs nothing");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unusable_plan_is_answered_as_chat_and_explained() {
    let ws = Workspace::new();
    let (llm, hf) = (
        controller("I'd rather not make a plan.").await,
        inference_server().await,
    );
    let out = output(
        ws.command(Some(&llm), &hf, &["run", "--json", "hi there"]),
        "",
    )
    .await;
    assert!(out.status.success());
    let record = json(&out);
    assert_eq!(record["mode"], "chat");
    assert!(
        record["fallback_reason"]
            .as_str()
            .unwrap()
            .contains("no task list")
    );
    assert_eq!(record["answer"], "Just chatting.");

    let out = output(ws.command(Some(&llm), &hf, &["plan", "hi there"]), "").await;
    assert!(
        !out.status.success(),
        "an unusable plan is an error for `hgpt plan`"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("I'd rather not"));
}

#[tokio::test(flavor = "multi_thread")]
async fn paths_outside_the_media_root_and_private_urls_are_refused() {
    const PLAN: &str = r#"[{"task": "image-to-text", "id": 0, "dep": [-1], "args": {"image": "../../../../etc/passwd"}},
        {"task": "object-detection", "id": 1, "dep": [-1], "args": {"image": "http://127.0.0.1:9/secret.png"}},
        {"task": "text-to-speech", "id": 2, "dep": [0], "args": {"text": "<GENERATED>-0"}}]"#;
    let ws = Workspace::new();
    let (llm, hf) = (controller(PLAN).await, inference_server().await);
    let out = output(ws.command(Some(&llm), &hf, &["run", "--json", "look"]), "").await;
    assert!(
        out.status.success(),
        "the run reaches the answer: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let record = json(&out);
    let error = |i: usize| {
        record["tasks"][i]["error"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(record["tasks"][0]["status"], "failed");
    assert!(error(0).contains("refused"), "{}", error(0));
    assert_eq!(record["tasks"][1]["status"], "failed");
    assert!(error(1).contains("refused"), "{}", error(1));
    assert_eq!(record["tasks"][2]["status"], "skipped");
    assert_eq!(hf.inference_calls().len(), 0, "nothing reached a model");
}

#[tokio::test(flavor = "multi_thread")]
async fn chat_carries_earlier_turns_into_later_requests() {
    const PLAN: &str =
        r#"[{"task": "object-detection", "id": 0, "dep": [-1], "args": {"image": "/a.jpg"}}]"#;
    let ws = Workspace::new();
    let (llm, hf) = (controller(PLAN).await, inference_server().await);
    let stdin = "find the zebras in /a.jpg\nnow make that image black and white\n";
    let out = output(ws.command(Some(&llm), &hf, &["chat"]), stdin).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plans: Vec<LlmCall> = llm
        .calls()
        .into_iter()
        .filter(|c| c.system().starts_with("#1"))
        .collect();
    assert_eq!(plans.len(), 2);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let first_answer = stdout.lines().next().unwrap();
    assert!(first_answer.contains("/out/"), "{first_answer}");
    let second = plans[1].last_user();
    assert!(
        second.contains("find the zebras in /a.jpg") && second.contains(first_answer.trim()),
        "{second}"
    );
    assert!(!plans[0].last_user().contains("black and white"));
}

#[tokio::test(flavor = "multi_thread")]
async fn models_list_ranks_the_catalog() {
    let ws = Workspace::new();
    let hf = inference_server().await;
    let args = ["models", "list", "--task", "Object Detection", "--json"];
    let out = output(ws.command(None, &hf, &args), "").await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list = json(&out);
    let ids = catalog_ids(&list);
    assert_eq!(ids, ["det/a", "det/b"]);
    assert_eq!(list[0]["downloads"], 100);

    let mut builtin = ws.command(None, &hf, &["models", "list"]);
    builtin.env_remove("HGPT_CATALOG");
    let out = output(builtin, "").await;
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.starts_with("ID") && table.contains("facebook/detr-resnet-50"),
        "{table}"
    );

    let out = output(
        ws.command(None, &hf, &["models", "list", "--task", "juggling"]),
        "",
    )
    .await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown task type"));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_references_catalog_format_loads_with_nan_and_a_broken_line() {
    let ws = Workspace::new();
    let hf = inference_server().await;
    // As Python's json writes the reference's p0_models.jsonl: NaN for
    // missing numbers; and one line cut short.
    let catalog = ws.dir.path().join("p0_models.jsonl");
    std::fs::write(
        &catalog,
        concat!(
            r#"{"id": "det/nan", "task": "object-detection", "downloads": NaN, "likes": NaN, "meta": {"tags": ["detr"]}, "description": "no counts"}"#,
            "\n",
            r#"{"id": "det/cut", "task": "object-detec"#,
            "\n",
            r#"{"id": "det/ok", "task": "object-detection", "downloads": 5, "likes": Infinity}"#,
            "\n",
        ),
    )
    .unwrap();
    let args = ["models", "list", "--task", "object-detection", "--json"];
    let mut command = ws.command(None, &hf, &args);
    command.env("HGPT_CATALOG", &catalog);
    let out = output(command, "").await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning: catalog line skipped:") && stderr.contains("p0_models.jsonl:2:"),
        "{stderr}"
    );
    let list = json(&out);
    let ids = catalog_ids(&list);
    assert_eq!(ids, ["det/ok", "det/nan"]);
    assert!(list[1].get("downloads").is_none());

    // `[catalog] strict = true` refuses it instead.
    std::fs::write(
        ws.dir.path().join("hgpt.toml"),
        "[catalog]\nstrict = true\n",
    )
    .unwrap();
    let mut command = ws.command(None, &hf, &args);
    command.env("HGPT_CATALOG", &catalog);
    let out = output(command, "").await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("p0_models.jsonl:2: invalid JSON"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn output_into_a_closed_pipe_ends_quietly() {
    let ws = Workspace::new();
    let hf = inference_server().await;
    let mut command = ws.command(None, &hf, &["models", "list"]);
    command.env_remove("HGPT_CATALOG");
    let out = tokio::task::spawn_blocking(move || {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The reader goes away before the table is written, as `head`
        // does after its lines.
        drop(child.stdout.take());
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    assert!(stderr.is_empty(), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_planning_failure_exits_non_zero_with_the_servers_message() {
    let ws = Workspace::new();
    let llm = FakeLlm::scripted(vec![LlmReply::error(401, "invalid api key")]).await;
    let hf = inference_server().await;
    let out = output(ws.command(Some(&llm), &hf, &["run", "hello"]), "").await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("planning failed") && stderr.contains("invalid api key"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn local_mode_answers_with_an_in_process_model() {
    const PLAN: &str = r#"[{"task": "sentence-similarity", "id": 0, "dep": [-1],
        "args": {"text": "A man is eating food.", "sentences": ["A man is eating a meal.", "A plane is taking off."]}}]"#;
    let ws = Workspace::new();
    let (llm, hf) = (controller(PLAN).await, inference_server().await);
    let mut command = ws.command(
        Some(&llm),
        &hf,
        &["run", "--json", "how similar are these sentences?"],
    );
    command
        .env_remove("HGPT_CATALOG")
        .env("HF_HUB_CACHE", test_hub())
        .env("HGPT_INFERENCE_MODE", "local");
    let out = output(command, "").await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let record = json(&out);
    let task = &record["tasks"][0];
    assert_eq!(task["status"], "ok", "{task:#}");
    assert_eq!(
        task["model"]["id"],
        "sentence-transformers/all-MiniLM-L6-v2"
    );
    assert_eq!(task["endpoint"], "local");
    let scores: Vec<f64> = task["output"]["predicted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(scores.len(), 2);
    assert!(scores[0] > 0.5 && scores[1] < 0.3, "{scores:?}");
    assert_eq!(hf.call_count(), 0, "nothing went to the remote endpoint");
    assert!(record["answer"].as_str().unwrap().starts_with("All done."));
    let selections = llm
        .calls()
        .iter()
        .filter(|c| c.system().starts_with("#2"))
        .count();
    assert_eq!(
        selections, 0,
        "only MiniLM is cached, so it is chosen without asking"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn local_mode_offline_says_how_to_fetch_a_missing_model() {
    const PLAN: &str =
        r#"[{"task": "object-detection", "id": 0, "dep": [-1], "args": {"image": "/a.jpg"}}]"#;
    let ws = Workspace::new();
    let (llm, hf) = (controller(PLAN).await, inference_server().await);
    let empty_cache = tempfile::tempdir().unwrap();
    let mut command = ws.command(
        Some(&llm),
        &hf,
        &["run", "--json", "count the zebras in /a.jpg"],
    );
    command
        .env_remove("HGPT_CATALOG")
        .env("HF_HUB_CACHE", empty_cache.path())
        .env("HF_HUB_OFFLINE", "1")
        .env("HGPT_INFERENCE_MODE", "local");
    let out = output(command, "").await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let record = json(&out);
    let error = record["tasks"][0]["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        error.starts_with("no available model for object-detection")
            && error.contains("hgpt models pull facebook/detr-resnet-50"),
        "{error}"
    );
    assert_eq!(hf.call_count(), 0);
}

const SIMILARITY_PLAN: &str = r#"[{"task": "sentence-similarity", "id": 0, "dep": [-1],
    "args": {"text": "A man is eating food.", "sentences": ["A man is eating a meal.", "A plane is taking off."]}}]"#;

/// `hgpt run --json` in local mode over an empty cache, with MiniLM on a
/// fake Hub; returns the output, the cache and the Hub.
async fn run_with_a_fake_hub(download_limit_mb: &str) -> (Output, tempfile::TempDir, FakeHub) {
    let ws = Workspace::new();
    let (llm, hf) = (controller(SIMILARITY_PLAN).await, inference_server().await);
    let hub = FakeHub::start(BTreeMap::from([(MINILM.to_string(), minilm_files())])).await;
    let cache = tempfile::tempdir().unwrap();
    let mut command = ws.command(
        Some(&llm),
        &hf,
        &["run", "--json", "how similar are these sentences?"],
    );
    command
        .env_remove("HGPT_CATALOG")
        .env("HF_ENDPOINT", hub.url())
        .env("HF_HUB_CACHE", cache.path())
        .env("HGPT_MODEL_DOWNLOAD_LIMIT_MB", download_limit_mb)
        .env("HGPT_INFERENCE_MODE", "local");
    let out = output(command, "").await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(hf.call_count(), 0, "nothing went to the remote endpoint");
    (out, cache, hub)
}

#[tokio::test(flavor = "multi_thread")]
async fn local_mode_downloads_a_missing_model_on_first_use() {
    let (out, cache, _hub) = run_with_a_fake_hub("2048").await;
    let record = json(&out);
    let task = &record["tasks"][0];
    assert_eq!(task["status"], "ok", "{task:#}");
    assert_eq!(task["model"]["id"], MINILM);
    assert_eq!(task["endpoint"], "local");
    let scores = task["output"]["predicted"].as_array().unwrap();
    assert!(scores[0].as_f64().unwrap() > 0.5, "{scores:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("task #0: downloading {MINILM} (")),
        "{stderr}"
    );
    let snapshot = cache
        .path()
        .join("models--sentence-transformers--all-MiniLM-L6-v2/snapshots")
        .join(COMMIT);
    assert!(snapshot.join("model.safetensors").is_file());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_download_beyond_the_limit_fails_saying_what_to_pull() {
    let (out, cache, hub) = run_with_a_fake_hub("1").await;
    let record = json(&out);
    let error = record["tasks"][0]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("more than the limit of 1 MiB")
            && error.contains(&format!("hgpt models pull {MINILM}")),
        "{error}"
    );
    // Only its config was fetched (to tell that a local family runs it).
    let snapshot = cache
        .path()
        .join("models--sentence-transformers--all-MiniLM-L6-v2/snapshots")
        .join(COMMIT);
    assert!(
        !snapshot.join("model.safetensors").exists(),
        "no weights were written"
    );
    assert!(
        hub.requests()
            .iter()
            .any(|p| p.contains("model.safetensors")),
        "the size was asked for"
    );
}

/// `hgpt run --json request` in local mode, offline, with a catalog of the
/// fixture checkpoints `(folder, task)` in a hub cache: the run's record,
/// after asserting that it succeeded, that nothing went to the remote
/// endpoint and that every task ran locally.
async fn run_on_fixtures(
    ws: &Workspace,
    llm: &FakeLlm,
    hf: &FakeHf,
    models: &[(&str, &str)],
    request: &str,
) -> Value {
    let catalog = ws.dir.path().join("fixtures-catalog.jsonl");
    let lines: String = models
        .iter()
        .map(|(folder, task)| {
            format!(
                "{{\"id\": \"{}\", \"task\": \"{task}\", \"downloads\": 10}}\n",
                fixture_id(folder)
            )
        })
        .collect();
    std::fs::write(&catalog, lines).unwrap();
    let hub = Hub::new();
    hub.with_fixtures();
    let mut command = ws.command(Some(llm), hf, &["run", "--json", request]);
    command
        .env("HGPT_CATALOG", &catalog)
        .env("HF_HUB_CACHE", hub.path())
        .env("HF_HUB_OFFLINE", "1")
        .env("HGPT_INFERENCE_MODE", "local");
    let out = output(command, "").await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let record = json(&out);
    assert_eq!(hf.call_count(), 0, "nothing went to the remote endpoint");
    for task in record["tasks"].as_array().unwrap() {
        assert_eq!(task["status"], "ok", "{task:#}");
        assert_eq!(task["endpoint"], "local", "{task:#}");
    }
    record
}

/// The output of a fixture checkpoint's local pipeline for the workspace's
/// image, computed in-process.
fn fixture_output(
    folder: &str,
    task: TaskKind,
    text: Option<&str>,
) -> hgpt_core::output::InferenceOutput {
    use hgpt_core::output::Blob;
    let args = hgpt_core::backend::ResolvedArgs {
        image: Some(Blob::sniffed(sample_png())),
        text: text.map(str::to_string),
        ..Default::default()
    };
    run_fixture(folder, task, args)
}

#[tokio::test(flavor = "multi_thread")]
async fn local_mode_runs_the_signature_request_in_process() {
    // "What is in /a.jpg, how many zebras are there?": captioning, detection
    // and visual question answering, all on the fixture checkpoints.
    const PLAN: &str = r#"[{"task": "image-to-text", "id": 0, "dep": [-1], "args": {"image": "/a.jpg"}},
        {"task": "object-detection", "id": 1, "dep": [-1], "args": {"image": "/a.jpg"}},
        {"task": "visual-question-answering", "id": 2, "dep": [-1],
         "args": {"image": "/a.jpg", "text": "how many zebras are there?"}}]"#;
    let ws = Workspace::new();
    let (llm, hf) = (controller(PLAN).await, inference_server().await);
    let record = run_on_fixtures(
        &ws,
        &llm,
        &hf,
        &[
            ("vit-gpt2-caption", "image-to-text"),
            ("yolos-det", "object-detection"),
            ("blip-vqa", "visual-question-answering"),
        ],
        "what is in /a.jpg, how many zebras are there?",
    )
    .await;
    let tasks = record["tasks"].as_array().unwrap();
    // Each output is what the pipeline gives for the image.
    use hgpt_core::output::InferenceOutput;
    let InferenceOutput::Text(caption) =
        fixture_output("vit-gpt2-caption", TaskKind::ImageToText, None)
    else {
        panic!("not a caption")
    };
    assert_eq!(tasks[0]["output"]["generated_text"], caption.as_str());
    let InferenceOutput::Detections(detections) =
        fixture_output("yolos-det", TaskKind::ObjectDetection, None)
    else {
        panic!("not detections")
    };
    let labels: Vec<&str> = tasks[1]["output"]["predicted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["label"].as_str().unwrap())
        .collect();
    let want: Vec<&str> = detections.iter().map(|d| d.label.as_str()).collect();
    assert_eq!(labels, want);
    assert!(
        tasks[1]["output"]["generated_image"].is_string(),
        "the boxes are drawn"
    );
    let question = "how many zebras are there?";
    let InferenceOutput::Answers(answers) = fixture_output(
        "blip-vqa",
        TaskKind::VisualQuestionAnswering,
        Some(question),
    ) else {
        panic!("not answers")
    };
    let answer = &tasks[2]["output"]["predicted"][0];
    assert_eq!(answer["answer"], answers[0].answer.as_str());
    assert!((answer["score"].as_f64().unwrap() - answers[0].score).abs() < 1e-12);
    // The answer stage saw every result.
    let calls = llm.calls();
    let response = calls
        .iter()
        .find(|c| c.system().starts_with("#4"))
        .expect("a response call");
    let prompt = response.last_user();
    for needle in [caption.as_str(), answers[0].answer.as_str()] {
        assert!(prompt.contains(needle), "{needle:?} not in {prompt}");
    }
}

/// Hosted inference: the Hub's provider mappings decide which catalog models
/// selection is offered, the record says why the others were skipped, the
/// task runs through the router's provider, and a second run reads the
/// mappings from the disk cache without asking the Hub again.
#[tokio::test(flavor = "multi_thread")]
async fn hosted_inference_offers_only_models_a_provider_serves() {
    use hgpt_testkit::router::{FakeRouter, model_info};
    const SPEAK: &str =
        r#"[{"task": "text-to-speech", "id": 0, "dep": [-1], "args": {"text": "hello there"}}]"#;
    let ws = Workspace::new();
    let catalog = ws.dir.path().join("tts.jsonl");
    std::fs::write(
        &catalog,
        concat!(
            r#"{"id": "tts/unknown", "task": "text-to-speech", "downloads": 300}"#,
            "\n",
            r#"{"id": "tts/image-only", "task": "text-to-speech", "downloads": 200}"#,
            "\n",
            r#"{"id": "hexgrad/Kokoro-82M", "task": "text-to-speech", "downloads": 100}"#,
            "\n",
        ),
    )
    .unwrap();
    let models = [
        (
            "hexgrad/Kokoro-82M".to_string(),
            model_info(
                "text-to-speech",
                &[("fal-ai", "fal-ai/kokoro", "text-to-speech", "live")],
            ),
        ),
        (
            "tts/image-only".to_string(),
            model_info(
                "text-to-image",
                &[("fal-ai", "fal-ai/flux", "text-to-image", "live")],
            ),
        ),
    ]
    .into_iter()
    .collect();
    let router = FakeRouter::start(models, BTreeMap::new(), BTreeMap::new()).await;
    let llm = controller(SPEAK).await;
    let unused = inference_server().await;
    let run = || {
        let mut command = ws.command(Some(&llm), &unused, &["run", "--json", "say hello"]);
        // Hosted only: hgpt speaks locally too now (VITS).
        command
            .env_remove("HGPT_HF_BASE_URL")
            .env("HGPT_INFERENCE_MODE", "remote")
            .env("HGPT_CATALOG", &catalog)
            .env("HF_ENDPOINT", router.url())
            .env("HGPT_HF_ROUTER_URL", router.url())
            .env("HF_TOKEN", "hf_test")
            .env("HGPT_ALLOW_PRIVATE_URLS", "true")
            .env("XDG_CACHE_HOME", ws.dir.path().join("cache"))
            .env("HOME", ws.dir.path());
        command
    };
    let out = output(run(), "").await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let record = json(&out);
    let task = &record["tasks"][0];
    assert_eq!(task["status"], "ok", "{task:#}");
    assert_eq!(task["model"]["id"], "hexgrad/Kokoro-82M");
    let skipped = task["skipped_models"].as_array().unwrap();
    assert_eq!(skipped[0]["id"], "tts/unknown");
    assert!(
        skipped[0]["reason"]
            .as_str()
            .unwrap()
            .contains("does not know")
    );
    assert_eq!(skipped[1]["id"], "tts/image-only");
    assert!(
        skipped[1]["reason"]
            .as_str()
            .unwrap()
            .contains("fal-ai serves it for text-to-image"),
        "{skipped:?}"
    );
    let audio = task["output"]["generated_audio"].as_str().unwrap();
    assert!(std::fs::read(audio).unwrap().starts_with(b"RIFF"));
    let speech = router
        .calls()
        .into_iter()
        .find(|c| c.method == "POST")
        .unwrap();
    assert_eq!(speech.path, "/fal-ai/fal-ai/kokoro");
    assert_eq!(speech.json.unwrap()["text"], "hello there");
    assert!(
        unused.calls().is_empty(),
        "no self-hosted server is involved"
    );

    // The known models' mappings are on disk now; the unknown one is too.
    let hub_calls = router.hub_calls().len();
    assert_eq!(hub_calls, 3);
    let again = output(run(), "").await;
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert_eq!(
        router.hub_calls().len(),
        hub_calls,
        "a warm run asks the Hub nothing"
    );
}

/// `hgpt models sync` builds the catalog from the Hub API (listings, provider
/// mappings, model cards), and `models list` then ranks it and says where
/// each model can run.
#[tokio::test(flavor = "multi_thread")]
async fn models_sync_builds_the_catalog_from_the_hub() {
    use hgpt_testkit::router::FakeRouter;
    let listings: BTreeMap<String, Value> = [
        (
            "text-to-image".to_string(),
            serde_json::json!([
                {"id": "black-forest-labs/FLUX.1-dev", "downloads": 900, "likes": 50,
                 "pipeline_tag": "text-to-image", "tags": ["diffusers"],
                 "inferenceProviderMapping": [
                    {"provider": "fal-ai", "providerId": "fal-ai/flux/dev", "task": "text-to-image", "status": "live"},
                    {"provider": "together", "providerId": "flux", "task": "text-to-image", "status": "live"}]},
                {"id": "nobody/sd", "downloads": 10, "likes": 1, "pipeline_tag": "text-to-image", "tags": []},
            ]),
        ),
        (
            "image-classification".to_string(),
            serde_json::json!([
                {"id": "google/vit-base-patch16-224", "downloads": 500, "likes": 20,
                 "pipeline_tag": "image-classification", "tags": ["vision"],
                 "config": {"architectures": ["ViTForImageClassification"], "model_type": "vit"},
                 "inferenceProviderMapping": [
                    {"provider": "hf-inference", "providerId": "google/vit-base-patch16-224",
                     "task": "image-classification", "status": "live"}]},
            ]),
        ),
    ]
    .into_iter()
    .collect();
    let cards: BTreeMap<String, String> = [(
        "black-forest-labs/FLUX.1-dev".to_string(),
        "---\nlicense: other\n---\n# FLUX\n\nA 12B rectified flow transformer that draws images from text.\n".to_string(),
    )]
    .into_iter()
    .collect();
    let router = FakeRouter::start(BTreeMap::new(), listings, cards).await;
    let ws = Workspace::new();
    let hf = inference_server().await;
    let data = ws.dir.path().join("data");
    let command = |args: &[&str]| {
        let mut command = ws.command(None, &hf, args);
        command
            .env_remove("HGPT_CATALOG")
            .env("HF_ENDPOINT", router.url())
            .env("HGPT_DATA_DIR", &data);
        command
    };
    let args = [
        "models",
        "sync",
        "--task",
        "text-to-image",
        "--task",
        "image-classification",
        "--task",
        "text-to-speech",
        "--limit",
        "5",
    ];
    let out = output(command(&args), "").await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("wrote 3 models of 3 task types"),
        "{stderr}"
    );
    let listing = router
        .hub_calls()
        .into_iter()
        .find(|c| {
            c.query
                .as_deref()
                .is_some_and(|q| q.contains("text-to-image"))
        })
        .unwrap();
    let query = listing.query.unwrap();
    for part in [
        "sort=downloads",
        "direction=-1",
        "limit=5",
        "expand=inferenceProviderMapping",
        "expand=downloads",
    ] {
        assert!(query.contains(part), "{query}");
    }

    let out = output(command(&["models", "list", "--json"]), "").await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list = json(&out);
    assert_eq!(
        catalog_ids(&list),
        [
            "black-forest-labs/FLUX.1-dev",
            "nobody/sd",
            "google/vit-base-patch16-224"
        ]
    );
    assert_eq!(list[0]["downloads"], 900);
    assert_eq!(
        list[0]["providers"],
        serde_json::json!(["fal-ai", "together"])
    );
    assert_eq!(
        list[0]["description"],
        "A 12B rectified flow transformer that draws images from text."
    );
    assert_eq!(list[2]["local_family"], "ViT");

    let out = output(
        command(&["models", "list", "--task", "image-classification"]),
        "",
    )
    .await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("RUNS ON"), "{text}");
    assert!(text.contains("local (ViT), hf-inference"), "{text}");
}

/// The router's OpenAI-compatible chat as the controller: a model id (with
/// a routing suffix) and HF_TOKEN are all it takes.
#[tokio::test(flavor = "multi_thread")]
async fn the_routers_chat_is_a_controller_that_needs_only_an_hf_token() {
    let ws = Workspace::new();
    let llm = controller(PLAN).await;
    let hf = inference_server().await;
    let mut command = ws.command(None, &hf, &["run", "--json", "describe /a.jpg"]);
    command
        .env("HGPT_HF_ROUTER_URL", format!("http://{}", llm.addr()))
        .env("HF_TOKEN", "hf_router")
        .env("HGPT_LLM_MODEL", "openai/gpt-oss-120b:fastest");
    let out = output(command, "").await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let record = json(&out);
    assert_eq!(record["mode"], "tasks");
    assert!(record["answer"].as_str().unwrap().starts_with("All done."));
    let calls = llm.calls();
    assert!(
        calls.len() >= 3,
        "plan, selection and answer went to the router"
    );
    for call in &calls {
        assert_eq!(call.model, "openai/gpt-oss-120b:fastest");
        assert_eq!(call.authorization.as_deref(), Some("Bearer hf_router"));
    }
}

/// "What does /a.wav say, and what kind of sound is it?" in local mode:
/// speech recognition (wav2vec2) and audio classification (AST) on the
/// fixture checkpoints, the WAV read from the media root.
#[tokio::test(flavor = "multi_thread")]
async fn local_mode_transcribes_and_classifies_audio_in_process() {
    const PLAN: &str = r#"[{"task": "automatic-speech-recognition", "id": 0, "dep": [-1], "args": {"audio": "/a.wav"}},
        {"task": "audio-classification", "id": 1, "dep": [-1], "args": {"audio": "/a.wav"}}]"#;
    let ws = Workspace::new();
    let clip = fixtures_dir().join("wav2vec2-ctc").join("chirp.wav");
    std::fs::copy(&clip, ws.dir.path().join("media/a.wav")).unwrap();
    let (llm, hf) = (controller(PLAN).await, inference_server().await);
    let record = run_on_fixtures(
        &ws,
        &llm,
        &hf,
        &[
            ("wav2vec2-ctc", "automatic-speech-recognition"),
            ("ast-audiocls", "audio-classification"),
        ],
        "what does /a.wav say, and what kind of sound is it?",
    )
    .await;
    let tasks = record["tasks"].as_array().unwrap();
    let read = |folder: &str| -> Value {
        let text =
            std::fs::read_to_string(fixtures_dir().join(folder).join("expected.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    };
    let asr = read("wav2vec2-ctc");
    let chirp = asr["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["clip"] == "chirp.wav")
        .unwrap();
    assert_eq!(
        tasks[0]["output"]["generated_text"], chirp["pipeline"]["text"],
        "{:#}",
        tasks[0]
    );
    let ast = read("ast-audiocls");
    let best = &ast["cases"][0]["pipeline"][0]["label"];
    assert_eq!(ast["cases"][0]["clip"], "chirp.wav");
    assert_eq!(
        tasks[1]["output"]["predicted"][0]["label"], *best,
        "{:#}",
        tasks[1]
    );
}

/// Run a fixture checkpoint in process on `args`, as the local backend would.
fn run_fixture(
    folder: &str,
    task: TaskKind,
    args: hgpt_core::backend::ResolvedArgs,
) -> hgpt_core::output::InferenceOutput {
    let files = hgpt_local::ModelFiles::from_dir(&fixture_id(folder), fixtures_dir().join(folder));
    let pipeline = hgpt_local::pipeline::load(task, &files, &candle_core::Device::Cpu).unwrap();
    pipeline.run(task, &args).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn local_mode_transcribes_a_recording_and_reads_it_aloud_in_a_new_voice() {
    // Whisper transcribes, VITS speaks the transcript: a WAV in the output
    // folder, the same one the VITS pipeline makes from that transcript.
    const PLAN: &str = r#"[{"task": "automatic-speech-recognition", "id": 0, "dep": [-1], "args": {"audio": "/a.wav"}},
        {"task": "text-to-speech", "id": 1, "dep": [0], "args": {"text": "<GENERATED>-0"}}]"#;
    let ws = Workspace::new();
    let clip = fixtures_dir().join("wav2vec2-ctc").join("chirp.wav");
    std::fs::copy(&clip, ws.dir.path().join("media/a.wav")).unwrap();
    let (llm, hf) = (controller(PLAN).await, inference_server().await);
    let record = run_on_fixtures(
        &ws,
        &llm,
        &hf,
        &[
            ("whisper-tiny-random", "automatic-speech-recognition"),
            ("vits-tts", "text-to-speech"),
        ],
        "transcribe /a.wav and read the transcript aloud in a new voice",
    )
    .await;
    let tasks = record["tasks"].as_array().unwrap();
    let expected: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures_dir().join("whisper-tiny-random/expected.json")).unwrap(),
    )
    .unwrap();
    let chirp = expected["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["clip"] == "chirp.wav")
        .unwrap();
    let transcript = tasks[0]["output"]["generated_text"].as_str().unwrap();
    assert_eq!(
        transcript.trim(),
        chirp["pipeline"]["text"].as_str().unwrap().trim(),
        "{:#}",
        tasks[0]
    );
    assert_eq!(tasks[1]["args"]["text"], transcript);
    let audio = PathBuf::from(tasks[1]["output"]["generated_audio"].as_str().unwrap());
    assert!(
        audio.starts_with(ws.out_dir().canonicalize().unwrap()),
        "{audio:?}"
    );
    let spoken = std::fs::read(&audio).unwrap();
    let direct = run_fixture(
        "vits-tts",
        TaskKind::TextToSpeech,
        hgpt_core::backend::ResolvedArgs {
            text: Some(transcript.to_string()),
            ..Default::default()
        },
    );
    let hgpt_core::output::InferenceOutput::Media(direct) = direct else {
        panic!("VITS answers audio");
    };
    assert_eq!(
        spoken,
        direct.bytes.to_vec(),
        "the speech of the transcript"
    );
    let decoded = hgpt_local::audio::decode(&spoken, 60).unwrap();
    assert_eq!(decoded.rate, 16_000);
    assert!(
        decoded.samples.iter().any(|s| s.abs() > 1e-3),
        "not silence"
    );
    let answer = record["answer"].as_str().unwrap();
    assert!(answer.contains(audio.to_str().unwrap()), "{answer}");
}

#[tokio::test(flavor = "multi_thread")]
async fn local_mode_draws_a_red_circle_then_describes_the_picture() {
    // Stable Diffusion draws, the captioner describes what it drew: a PNG in
    // the output folder, and the caption the captioner gives that PNG.
    const PLAN: &str = r#"[{"task": "text-to-image", "id": 0, "dep": [-1], "args": {"text": "a red circle"}},
        {"task": "image-to-text", "id": 1, "dep": [0], "args": {"image": "<GENERATED>-0"}}]"#;
    let ws = Workspace::new();
    let (llm, hf) = (controller(PLAN).await, inference_server().await);
    let record = run_on_fixtures(
        &ws,
        &llm,
        &hf,
        &[
            ("sd-tiny", "text-to-image"),
            ("vit-gpt2-caption", "image-to-text"),
        ],
        "draw a red circle, then describe the picture",
    )
    .await;
    let tasks = record["tasks"].as_array().unwrap();
    let drawn = PathBuf::from(tasks[0]["output"]["generated_image"].as_str().unwrap());
    assert!(
        drawn.starts_with(ws.out_dir().canonicalize().unwrap()),
        "{drawn:?}"
    );
    let png = std::fs::read(&drawn).unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG was drawn");
    let direct = run_fixture(
        "sd-tiny",
        TaskKind::TextToImage,
        hgpt_core::backend::ResolvedArgs {
            text: Some("a red circle".into()),
            ..Default::default()
        },
    );
    let hgpt_core::output::InferenceOutput::Media(direct) = direct else {
        panic!("Stable Diffusion answers an image");
    };
    assert_eq!(
        png,
        direct.bytes.to_vec(),
        "the model's image for the prompt"
    );
    let caption = run_fixture(
        "vit-gpt2-caption",
        TaskKind::ImageToText,
        hgpt_core::backend::ResolvedArgs {
            image: Some(hgpt_core::output::Blob::sniffed(png)),
            ..Default::default()
        },
    );
    let hgpt_core::output::InferenceOutput::Text(caption) = caption else {
        panic!("the captioner answers text");
    };
    assert_eq!(
        tasks[1]["output"]["generated_text"], caption,
        "{:#}",
        tasks[1]
    );
    let answer = record["answer"].as_str().unwrap();
    assert!(answer.contains(drawn.to_str().unwrap()), "{answer}");
}
