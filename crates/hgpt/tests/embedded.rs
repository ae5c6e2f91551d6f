//! The whole job with no network and no external LLM: the embedded
//! controller (the real SmolLM2-135M-Instruct GGUF) plans, selects and
//! answers, and the real MiniLM model runs in-process. `hgpt run --json` in a
//! fresh process, then again with the planning prefix read from disk, and
//! `hgpt serve` with one loaded controller shared by concurrent runs.

use hgpt_testkit::models::{smollm2_gguf, test_hub};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

/// Held by each test for its whole run: both run the 135M model, and two
/// processes computing at once on a small machine only slow each other down.
static CPU: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const REQUEST: &str = "How similar is 'A man is eating food.' to 'A man is eating a meal.' and to 'A plane is taking off.'?";

/// Planning demonstrations for the 135M model. It does not plan so much as
/// copy the demonstration closest to the request (with the default set it
/// copies the last one whatever is asked, and its greedy strings are at the
/// mercy of the last bit of arithmetic), so it gets a set of two: a question
/// that needs no task, and [`REQUEST`] with its plan. Any user can give their
/// own set the same way (`[prompts] plan_demos`). What the tests check is the
/// machinery: grammar, caches, selection, MiniLM and the answer.
fn demos() -> String {
    const PLAN: &str = r#"[{"task": "sentence-similarity", "id": 0, "dep": [-1], "args": {"text": "A man is eating food.", "sentences": "A man is eating a meal.\nA plane is taking off."}}]"#;
    json!([
        {"role": "user", "content": "What is the difference between a virus and a bacterium?"},
        {"role": "assistant", "content": "[]"},
        {"role": "user", "content": REQUEST},
        {"role": "assistant", "content": PLAN},
    ])
    .to_string()
}

/// `hgpt` with the embedded controller, local models only, offline. Answers
/// are capped at 160 tokens: the 135M model tends to repeat itself.
fn hgpt(dir: &Path) -> Command {
    let config = dir.join("hgpt.toml");
    std::fs::write(dir.join("demos.json"), demos()).unwrap();
    std::fs::write(
        &config,
        "[llm]\nmax_tokens = 160\n[prompts]\nplan_demos = \"demos.json\"\n",
    )
    .unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_hgpt"));
    command
        .env_clear()
        .current_dir(dir)
        .env("HGPT_CONFIG", &config)
        .env("HGPT_LLM_LOCAL", smollm2_gguf())
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_HUB_CACHE", test_hub())
        .env("HGPT_INFERENCE_MODE", "local")
        // Nothing may leave the machine even if a stage tried.
        .env("HGPT_HF_BASE_URL", "http://127.0.0.1:9")
        .env("HF_ENDPOINT", "http://127.0.0.1:9")
        .env("XDG_CACHE_HOME", dir.join("cache"))
        .env("HGPT_MEDIA_ROOT", dir.join("media"))
        .env("HGPT_OUT_DIR", dir.join("out"))
        .env("HGPT_DATA_DIR", dir.join("data"));
    command
}

fn prompt_cache_files(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("cache/hgpt/prompt-cache"))
        .map(|entries| entries.count())
        .unwrap_or(0)
}

/// The sentence-similarity task of a run record, checked to have run MiniLM
/// in-process with sensible scores.
fn check_similarity(record: &Value) {
    let tasks = record["tasks"].as_array().expect("tasks");
    let task = tasks
        .iter()
        .find(|t| t["task"] == "sentence-similarity")
        .unwrap_or_else(|| panic!("no sentence-similarity task: {record:#}"));
    assert_eq!(task["status"], "ok", "{task:#}");
    assert_eq!(
        task["model"]["id"],
        "sentence-transformers/all-MiniLM-L6-v2"
    );
    assert_eq!(task["endpoint"], "local");
    let scores = task["output"]["predicted"].as_array().expect("scores");
    assert!(!scores.is_empty(), "{task:#}");
    assert!(
        scores
            .iter()
            .all(|s| s.as_f64().is_some_and(|s| (-1.0..=1.0).contains(&s))),
        "{task:#}"
    );
}

#[test]
fn run_json_goes_through_all_four_stages_in_process() {
    let _cpu = CPU.blocking_lock();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("media")).unwrap();
    let run = || {
        hgpt(dir.path())
            .args(["run", "--json", REQUEST])
            .output()
            .unwrap()
    };
    let out = run();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let record: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    check_similarity(&record);
    let scores = record["tasks"][0]["output"]["predicted"]
        .as_array()
        .unwrap();
    assert!(
        scores[0].as_f64() > scores[1].as_f64(),
        "the meal is closer to the food than the plane: {scores:?}"
    );
    let answer = record["answer"].as_str().unwrap_or_default();
    assert!(!answer.trim().is_empty(), "{record:#}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    // The planning prompt's fixed prefix was saved for the next process.
    assert!(prompt_cache_files(dir.path()) >= 1);

    // A second process reads it back and plans the same way.
    let again = run();
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let second: Value = serde_json::from_slice(&again.stdout).unwrap();
    check_similarity(&second);
    assert_eq!(
        second["plan"], record["plan"],
        "greedy plans are reproducible"
    );
}

/// A running `hgpt serve`, with every stderr line kept.
struct Served {
    child: Child,
    url: String,
    log: Arc<Mutex<Vec<String>>>,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(mut command: Command) -> Served {
    let mut child = command
        .args(["serve", "--bind", "127.0.0.1:0"])
        .env("HGPT_LOG", "hgpt=info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let log = Arc::new(Mutex::new(Vec::new()));
    let url = loop {
        let line = lines
            .next()
            .unwrap_or_else(|| panic!("hgpt serve exited: {:?}", log.lock().unwrap()))
            .unwrap();
        log.lock().unwrap().push(line.clone());
        if let Some(address) = line.split("listening on ").nth(1) {
            break address.trim().to_string();
        }
    };
    let kept = log.clone();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            kept.lock().unwrap().push(line);
        }
    });
    Served { child, url, log }
}

async fn json_of(request: reqwest::RequestBuilder) -> Value {
    request.send().await.unwrap().json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_shares_one_loaded_controller_across_eight_concurrent_runs() {
    let _cpu = CPU.lock().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("media")).unwrap();
    let served = serve(hgpt(dir.path()));
    let client = reqwest::Client::new();
    let requests = [
        REQUEST,
        "how similar are 'a cat sits on the mat' and 'a kitten rests on a rug'?",
        "hello, how are you today?",
        "what is the capital of France?",
        "compare the sentences 'I like tea' and 'I enjoy tea'",
        "tell me a joke",
        "how similar are 'the sky is blue' and 'grass is green'?",
        "thanks, that's all",
    ];
    let mut ids = Vec::new();
    for request in requests {
        let created = json_of(
            client
                .post(format!("{}/v1/runs", served.url))
                .json(&json!({ "request": request })),
        )
        .await;
        ids.push(created["id"].as_str().expect("run id").to_string());
    }
    // All eight were accepted before any finished; now wait for each.
    let waits = ids.iter().map(|id| {
        let client = client.clone();
        let url = format!("{}/v1/runs/{id}/events", served.url);
        async move { client.get(url).send().await.unwrap().text().await.unwrap() }
    });
    let events = futures::future::join_all(waits).await;
    for (id, events) in ids.iter().zip(&events) {
        assert!(events.contains("event: finished"), "{id}: {events}");
    }
    for id in &ids {
        let run = json_of(client.get(format!("{}/v1/runs/{id}", served.url))).await;
        assert_eq!(run["state"], "succeeded", "{run:#}");
        assert!(
            !run["record"]["answer"]
                .as_str()
                .unwrap_or_default()
                .is_empty(),
            "{run:#}"
        );
    }
    let log = served.log.lock().unwrap().clone();
    let loads = log
        .iter()
        .filter(|l| l.contains("loaded the embedded controller"))
        .count();
    assert_eq!(loads, 1, "{log:#?}");
    assert!(
        log.iter().any(|l| l.contains("controller embedded:")),
        "{log:#?}"
    );
}
