//! Runs the loopback fake servers as a process, for trying the CLI (or a
//! browser test) without any real LLM or inference endpoint:
//!
//! ```sh
//! cargo run -p hgpt-testkit --example fake_backends -- [LLM_DELAY_MS] [TASK_DELAY_MS]
//! ```
//!
//! It prints the variables to export. The fake controller plans a fixed
//! four-task request over `/a.jpg` (caption and detection in parallel, then
//! speech of the caption, then a transcription of that speech), picks the first
//! candidate, and answers with the files it was shown. The inference server
//! answers every model of the built-in catalog with a canned response of its
//! task type. Test tooling only: nothing real runs here.

use hgpt_core::catalog::Catalog;
use hgpt_testkit::hf::{FakeHf, HfReply, canned_reply};
use hgpt_testkit::openai::{FakeLlm, LlmReply};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

const PLAN: &str = r#"[{"task": "image-to-text", "id": 0, "dep": [-1], "args": {"image": "/a.jpg"}},
{"task": "object-detection", "id": 1, "dep": [-1], "args": {"image": "/a.jpg"}},
{"task": "text-to-speech", "id": 2, "dep": [0], "args": {"text": "<GENERATED>-0"}},
{"task": "automatic-speech-recognition", "id": 3, "dep": [2], "args": {"audio": "<GENERATED>-2"}}]"#;

#[tokio::main]
async fn main() {
    let mut args = std::env::args()
        .skip(1)
        .map(|a| a.parse::<u64>().unwrap_or(0));
    let llm_delay = Duration::from_millis(args.next().unwrap_or(400));
    let task_delay = Duration::from_millis(args.next().unwrap_or(1500));
    let tasks: BTreeMap<String, hgpt_core::task::TaskKind> = Catalog::builtin()
        .map(|c| {
            c.entries()
                .iter()
                .filter_map(|e| Some((e.id.clone(), e.task_name().kind()?)))
                .collect()
        })
        .unwrap_or_default();
    let llm = FakeLlm::from_fn(move |call| {
        let system = call.system();
        let text = if system.starts_with("#1") {
            PLAN.to_string()
        } else if system.starts_with("#2") {
            format!(
                "{{\"id\": \"{}\", \"reason\": \"the first candidate\"}}",
                call.first_candidate()
            )
        } else if system.starts_with("#4") {
            let files: Vec<&str> = call
                .last_user()
                .split('"')
                .filter(|s| s.starts_with('/') && s.contains('.'))
                .collect();
            format!("Here is what the models found. Files: {}", files.join(", "))
        } else {
            "Hello from the fake controller.".to_string()
        };
        LlmReply::text(text)
            .with_delay(llm_delay)
            .with_chunk_delay(Duration::from_millis(30))
    })
    .await;
    let hf = FakeHf::start(Arc::new(move |call: &hgpt_testkit::hf::HfCall| match tasks
        .get(&call.model)
    {
        Some(_) if call.is_status => HfReply::status_loaded(true),
        Some(task) => canned_reply(*task).with_delay(task_delay),
        None => HfReply::error(404, format!("Model {} does not exist", call.model)),
    }))
    .await;
    println!(
        "export HGPT_LLM_BASE_URL={} HGPT_LLM_MODEL=fake-model HGPT_HF_BASE_URL={}",
        llm.url(),
        hf.url()
    );
    let _ = tokio::signal::ctrl_c().await;
}
