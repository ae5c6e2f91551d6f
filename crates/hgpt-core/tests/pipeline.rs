//! The four stages end to end against in-process fakes.

use hgpt_core::backend::{ChatMessage, InferenceError, LlmError};
use hgpt_core::catalog::Catalog;
use hgpt_core::output::InferenceOutput;
use hgpt_core::pipeline::{Pipeline, PipelineConfig, PipelineError};
use hgpt_core::prompt::Prompts;
use hgpt_core::record::{RunEvent, RunMode, RunRecord, TaskStatus};
use hgpt_core::task::TaskKind;
use hgpt_testkit::inproc::{
    Chunking, FakeBackend, MemoryMedia, ScriptedLlm, Stage, canned_output, first_candidate_choice,
    stage_of,
};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

const CATALOG: &str = r#"
{"id": "det/a", "task": "object-detection", "downloads": 100, "description": "detector a"}
{"id": "det/b", "task": "object-detection", "downloads": 50, "description": "detector b"}
{"id": "cap/a", "task": "image-to-text", "downloads": 100, "description": "captioner a"}
{"id": "cap/b", "task": "image-to-text", "downloads": 90, "description": "captioner b"}
{"id": "tts/a", "task": "text-to-speech", "downloads": 10, "description": "speaker a"}
{"id": "tts/b", "task": "text-to-speech", "downloads": 5, "description": "speaker b"}
{"id": "cls/only", "task": "image-classification", "description": "the only classifier"}
{"id": "t2i/a", "task": "text-to-image", "downloads": 3, "description": "painter a"}
{"id": "t2i/b", "task": "text-to-image", "downloads": 2, "description": "painter b"}
"#;

const DESCRIBE_COUNT_SPEAK: &str = r#"[
 {"task": "image-to-text", "id": 0, "dep": [-1], "args": {"image": "/a.jpg"}},
 {"task": "object-detection", "id": 1, "dep": [-1], "args": {"image": "/a.jpg"}},
 {"task": "text-to-speech", "id": 2, "dep": [0], "args": {"text": "<GENERATED>-0"}}
]"#;

fn media() -> Arc<MemoryMedia> {
    Arc::new(MemoryMedia::with_files([(
        "/a.jpg".to_string(),
        hgpt_testkit::hf::sample_png(),
    )]))
}

fn pipeline(llm: Arc<ScriptedLlm>, backend: Arc<FakeBackend>, config: PipelineConfig) -> Pipeline {
    let catalog = Arc::new(Catalog::from_jsonl(CATALOG, "test").unwrap());
    Pipeline::new(
        llm,
        backend,
        media(),
        catalog,
        Arc::new(Prompts::default()),
        config,
    )
}

async fn run(pipeline: &Pipeline, request: &str) -> (RunRecord, Vec<RunEvent>) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let record = pipeline.run(request, &[], Some(tx)).await.unwrap();
    let mut events = Vec::new();
    while let Ok(event) = rx.try_recv() {
        events.push(event);
    }
    (record, events)
}

#[tokio::test(start_paused = true)]
async fn multi_step_plan_runs_in_dependency_order_with_overlap() {
    let llm = Arc::new(ScriptedLlm::with_plan(DESCRIBE_COUNT_SPEAK));
    let backend = Arc::new(FakeBackend::new(Duration::from_millis(100)));
    let p = pipeline(llm.clone(), backend.clone(), PipelineConfig::default());
    let (record, events) = run(&p, "describe /a.jpg, count the zebras and read it aloud").await;

    assert_eq!(record.mode, RunMode::Tasks);
    assert!(
        record.tasks.iter().all(|t| t.status == TaskStatus::Ok),
        "{:#?}",
        record.tasks
    );
    assert_eq!(
        backend.peak_concurrency(),
        2,
        "caption and detection ran at the same time"
    );
    let tts = &record.tasks[2];
    assert_eq!(
        tts.args["text"], "text from image-to-text",
        "the reference resolved to task 0's text"
    );
    assert!(
        tts.output
            .as_ref()
            .unwrap()
            .generated_audio
            .as_ref()
            .unwrap()
            .ends_with(".wav")
    );
    let detection = record.tasks[1].output.as_ref().unwrap();
    assert!(
        detection.generated_image.is_some(),
        "boxes are drawn onto a new image"
    );
    assert_eq!(detection.predicted.as_ref().unwrap()[0]["label"], "zebra");
    assert!(tts.started_ms.unwrap() >= record.tasks[0].finished_ms.unwrap());
    assert_eq!(record.answer, "Here is the answer.");
    assert!(matches!(events.last(), Some(RunEvent::Finished { .. })));
    let deltas: String = events
        .iter()
        .filter_map(|e| match e {
            RunEvent::AnswerDelta { text } => Some(text.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(deltas, record.answer, "the answer streams as deltas");
    let answer_prompt = &llm
        .calls()
        .into_iter()
        .rfind(|c| stage_of(c) == Stage::Answer)
        .unwrap();
    let user = &answer_prompt.messages.last().unwrap().content;
    assert!(
        user.contains("text from image-to-text") && user.contains("cap/a"),
        "{user}"
    );
}

#[tokio::test(start_paused = true)]
async fn every_selection_starts_at_once_not_along_the_chain() {
    let chain = r#"[
     {"task": "text-to-image", "id": 0, "dep": [-1], "args": {"text": "a zebra"}},
     {"task": "image-to-text", "id": 1, "dep": [0], "args": {"image": "<GENERATED>-0"}},
     {"task": "text-to-speech", "id": 2, "dep": [1], "args": {"text": "<GENERATED>-1"}}
    ]"#;
    let llm = Arc::new(ScriptedLlm::with_plan(chain).with_delay(Duration::from_millis(200)));
    let backend = Arc::new(FakeBackend::new(Duration::from_millis(200)));
    let p = pipeline(llm.clone(), backend, PipelineConfig::default());
    let (record, events) = run(&p, "draw a zebra, describe it, read it").await;
    assert!(
        record.tasks.iter().all(|t| t.status == TaskStatus::Ok),
        "{:#?}",
        record.tasks
    );
    let first_finish = events
        .iter()
        .position(|e| matches!(e, RunEvent::TaskFinished { .. }))
        .unwrap();
    let chosen_before: usize = events[..first_finish]
        .iter()
        .filter(|e| matches!(e, RunEvent::ModelChosen { .. }))
        .count();
    assert_eq!(
        chosen_before, 3,
        "all three models were chosen before the first task finished"
    );
    // plan + 3 selections + answer, each 200 ms; tasks 3 x 200 ms on the critical path:
    // serial selection would take 200 * (1 + 3 + 3 + 1) = 1600 ms.
    assert!(record.timings.total_ms < 1600, "{:?}", record.timings);
}

#[tokio::test(start_paused = true)]
async fn a_failed_task_skips_its_dependents_and_the_answer_still_runs() {
    let backend = Arc::new(FakeBackend::with_responder(
        Duration::from_millis(10),
        |request| {
            if request.task == TaskKind::ImageToText {
                Err(InferenceError::Server {
                    model: request.model.clone(),
                    status: 500,
                    message: "GPU on fire".into(),
                })
            } else {
                Ok(canned_output(request.task))
            }
        },
    ));
    let config = PipelineConfig {
        fallback_models: 0,
        ..PipelineConfig::default()
    };
    let llm = Arc::new(ScriptedLlm::with_plan(DESCRIBE_COUNT_SPEAK));
    let p = pipeline(llm.clone(), backend, config);
    let (record, _) = run(&p, "describe, count, speak").await;
    assert_eq!(record.tasks[0].status, TaskStatus::Failed);
    assert!(
        record.tasks[0]
            .error
            .as_ref()
            .unwrap()
            .contains("GPU on fire")
    );
    assert_eq!(
        record.tasks[1].status,
        TaskStatus::Ok,
        "the independent task went on"
    );
    assert_eq!(record.tasks[2].status, TaskStatus::Skipped);
    assert!(record.tasks[2].error.as_ref().unwrap().contains("task 0"));
    assert!(record.error.is_none());
    let answer_prompt = llm
        .calls()
        .into_iter()
        .rfind(|c| stage_of(c) == Stage::Answer)
        .unwrap();
    let user = &answer_prompt.messages.last().unwrap().content;
    assert!(
        user.contains("GPU on fire") && user.contains("skipped"),
        "{user}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_failing_model_falls_back_to_the_next_candidate() {
    let backend = Arc::new(FakeBackend::with_responder(Duration::ZERO, |request| {
        if request.model == "det/a" {
            Err(InferenceError::Server {
                model: request.model.clone(),
                status: 503,
                message: "overloaded".into(),
            })
        } else {
            Ok(canned_output(request.task))
        }
    }));
    let plan =
        r#"[{"task": "object-detection", "id": 0, "dep": [-1], "args": {"image": "/a.jpg"}}]"#;
    let p = pipeline(
        Arc::new(ScriptedLlm::with_plan(plan)),
        backend.clone(),
        PipelineConfig::default(),
    );
    let (record, _) = run(&p, "count zebras in /a.jpg").await;
    let task = &record.tasks[0];
    assert_eq!(task.status, TaskStatus::Ok);
    let model = task.model.as_ref().unwrap();
    assert_eq!(model.id, "det/b");
    assert!(model.reason.contains("overloaded"), "{}", model.reason);
    assert_eq!(backend.calls().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn no_available_model_fails_the_task_and_one_candidate_needs_no_llm_call() {
    let plan = r#"[{"task": "object-detection", "id": 0, "dep": [-1], "args": {"image": "/a.jpg"}},
                   {"task": "image-classification", "id": 1, "dep": [-1], "args": {"image": "/a.jpg"}}]"#;
    let llm = Arc::new(ScriptedLlm::with_plan(plan));
    let backend = Arc::new(FakeBackend::new(Duration::ZERO).with_unavailable(&["det/a", "det/b"]));
    let p = pipeline(llm.clone(), backend, PipelineConfig::default());
    let (record, _) = run(&p, "detect and classify").await;
    assert_eq!(record.tasks[0].status, TaskStatus::Failed);
    assert_eq!(
        record.tasks[0].error.as_deref(),
        Some("no available model for object-detection (det/a: marked unavailable)"),
        "the error says why the best model was refused"
    );
    assert_eq!(record.tasks[1].status, TaskStatus::Ok);
    assert_eq!(record.tasks[1].model.as_ref().unwrap().id, "cls/only");
    let selections = llm
        .calls()
        .iter()
        .filter(|c| stage_of(c) == Stage::Select)
        .count();
    assert_eq!(
        selections, 0,
        "one candidate is chosen without asking the LLM"
    );
}

#[tokio::test(start_paused = true)]
async fn selection_answer_outside_the_candidates_uses_the_top_one() {
    let plan = r#"[{"task": "object-detection", "id": 0, "dep": [-1], "args": {"image": "/a.jpg"}},
                   {"task": "image-to-text", "id": 1, "dep": [-1], "args": {"image": "/a.jpg"}}]"#;
    let llm = Arc::new(ScriptedLlm::new(move |request| {
        Ok(match stage_of(request) {
            Stage::Plan => plan.to_string(),
            Stage::Select => "I would go with {'id': 'made/up', 'reason': 'vibes'}".to_string(),
            _ => "done".to_string(),
        })
    }));
    let p = pipeline(
        llm,
        Arc::new(FakeBackend::new(Duration::ZERO)),
        PipelineConfig::default(),
    );
    let (record, _) = run(&p, "go").await;
    assert_eq!(record.tasks[0].model.as_ref().unwrap().id, "det/a");
    assert!(
        record.tasks[0]
            .model
            .as_ref()
            .unwrap()
            .reason
            .contains("made/up")
    );
}

#[tokio::test(start_paused = true)]
async fn a_plan_cut_off_at_the_token_limit_is_answered_as_chat_saying_so() {
    let llm = Arc::new(ScriptedLlm::new(|request| match stage_of(request) {
        Stage::Plan => Err(LlmError::Unfinished {
            text:
                r#"[{"task": "image-to-text", "id": 0, "dep": [-1], "args": {"image": "/a.jpg an"#
                    .into(),
            max_tokens: 64,
        }),
        _ => Ok("chat answer".into()),
    }));
    let backend = Arc::new(FakeBackend::new(Duration::ZERO));
    let p = pipeline(llm, backend.clone(), PipelineConfig::default());
    let record = p.run("describe /a.jpg", &[], None).await.unwrap();
    assert_eq!(record.mode, RunMode::Chat);
    let reason = record.fallback_reason.unwrap_or_default();
    assert!(
        reason.contains("did not finish within the 64-token limit"),
        "{reason}"
    );
    assert!(
        record
            .plan_raw
            .unwrap_or_default()
            .starts_with("[{\"task\"")
    );
    assert_eq!(record.answer, "chat answer");
    assert!(backend.calls().is_empty());
}

#[tokio::test(start_paused = true)]
async fn chat_fallbacks() {
    for (plan, reason_part) in [
        ("[]", "no task"),
        ("I am not able to produce JSON today.", "could not be used"),
        (
            r#"[{"task": "summarization", "id": 0, "dep": [-1], "args": {"text": "long text"}}]"#,
            "single summarization",
        ),
        (
            r#"[{"task": "image-to-text", "id": 0, "dep": [-1], "args": {"image": "<GENERATED>-4"}}]"#,
            "no task 4",
        ),
    ] {
        let llm = Arc::new(ScriptedLlm::with_plan(plan));
        let backend = Arc::new(FakeBackend::new(Duration::ZERO));
        let p = pipeline(llm.clone(), backend.clone(), PipelineConfig::default());
        let history = [ChatMessage::user("hi"), ChatMessage::assistant("hello")];
        let record = p.run("tell me a joke", &history, None).await.unwrap();
        assert_eq!(record.mode, RunMode::Chat, "{plan}");
        assert!(
            record
                .fallback_reason
                .as_ref()
                .unwrap()
                .contains(reason_part),
            "{:?}",
            record.fallback_reason
        );
        assert_eq!(record.answer, "chat answer");
        assert!(backend.calls().is_empty());
        let chat = llm.calls().pop().unwrap();
        assert_eq!(
            chat.messages.len(),
            4,
            "system, the history, then the request"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn unknown_task_types_fail_on_that_task_only() {
    let plan = r#"[{"task": "juggling", "id": 0, "dep": [-1], "args": {}},
                   {"task": "image-classification", "id": 1, "dep": [-1], "args": {"image": "/a.jpg"}}]"#;
    let p = pipeline(
        Arc::new(ScriptedLlm::with_plan(plan)),
        Arc::new(FakeBackend::new(Duration::ZERO)),
        PipelineConfig::default(),
    );
    let (record, _) = run(&p, "juggle").await;
    assert_eq!(record.tasks[0].status, TaskStatus::Failed);
    assert!(
        record.tasks[0]
            .error
            .as_ref()
            .unwrap()
            .contains("unknown task type \"juggling\"")
    );
    assert_eq!(record.tasks[1].status, TaskStatus::Ok);
}

#[tokio::test(start_paused = true)]
async fn text_tasks_inside_a_plan_run_on_the_controller() {
    let plan = r#"[{"task": "image-to-text", "id": 0, "dep": [-1], "args": {"image": "/a.jpg"}},
                   {"task": "translation", "id": 1, "dep": [0], "args": {"text": "<GENERATED>-0", "tgt_lang": "French"}}]"#;
    let llm = Arc::new(ScriptedLlm::new(move |request| {
        Ok(match stage_of(request) {
            Stage::Plan => plan.to_string(),
            Stage::Select => first_candidate_choice(request),
            Stage::Answer => "answer".to_string(),
            Stage::Other => format!(
                "translated: {}",
                request.messages[0].content.contains("into French")
            ),
        })
    }));
    let backend = Arc::new(FakeBackend::new(Duration::ZERO));
    let p = pipeline(llm, backend.clone(), PipelineConfig::default());
    let (record, _) = run(&p, "caption it in French").await;
    let translation = &record.tasks[1];
    assert_eq!(translation.status, TaskStatus::Ok);
    assert_eq!(translation.endpoint.as_deref(), Some("controller-llm"));
    assert_eq!(translation.model.as_ref().unwrap().id, "scripted-llm");
    assert_eq!(
        translation
            .output
            .as_ref()
            .unwrap()
            .generated_text
            .as_deref(),
        Some("translated: true")
    );
    assert_eq!(
        backend.calls().len(),
        1,
        "only the caption went to the backend"
    );
}

#[tokio::test(start_paused = true)]
async fn bad_inputs_fail_the_task_with_a_message() {
    let plan = r#"[{"task": "image-classification", "id": 0, "dep": [-1], "args": {"image": "/missing.jpg"}},
                   {"task": "image-classification", "id": 1, "dep": [-1], "args": {"image": 42}}]"#;
    let p = pipeline(
        Arc::new(ScriptedLlm::with_plan(plan)),
        Arc::new(FakeBackend::new(Duration::ZERO)),
        PipelineConfig::default(),
    );
    let (record, _) = run(&p, "classify").await;
    assert!(
        record.tasks[0]
            .error
            .as_ref()
            .unwrap()
            .contains("/missing.jpg")
    );
    assert!(
        record.tasks[1]
            .error
            .as_ref()
            .unwrap()
            .contains("must be a path or URL")
    );
}

#[tokio::test(start_paused = true)]
async fn run_timeout_cancels_the_rest_and_keeps_what_finished() {
    let slow = Arc::new(FakeBackend::new(Duration::from_secs(60)));
    let config = PipelineConfig {
        run_timeout: Duration::from_secs(5),
        ..PipelineConfig::default()
    };
    let p = pipeline(
        Arc::new(ScriptedLlm::with_plan(DESCRIBE_COUNT_SPEAK)),
        slow,
        config,
    );
    let (record, _) = run(&p, "slow").await;
    for task in &record.tasks {
        assert_eq!(task.status, TaskStatus::Failed, "{task:?}");
        assert!(task.error.as_ref().unwrap().contains("time limit"));
    }
    assert_eq!(
        record.tasks[0].model.as_ref().unwrap().id,
        "cap/a",
        "what was done is kept"
    );
    assert!(!record.answer.is_empty(), "the answer still runs");
}

#[tokio::test(start_paused = true)]
async fn large_results_are_cut_before_the_answer_stage() {
    let plan = r#"[{"task": "image-to-text", "id": 0, "dep": [-1], "args": {"image": "/a.jpg"}},
                   {"task": "image-classification", "id": 1, "dep": [-1], "args": {"image": "/a.jpg"}}]"#;
    let backend = Arc::new(FakeBackend::with_responder(Duration::ZERO, |request| {
        Ok(match request.task {
            TaskKind::ImageToText => InferenceOutput::Text("word ".repeat(20_000)),
            _ => InferenceOutput::Labels(
                (0..500)
                    .map(|i| hgpt_core::output::ScoredLabel {
                        label: format!("l{i}"),
                        score: 0.001,
                    })
                    .collect(),
            ),
        })
    }));
    let llm = Arc::new(ScriptedLlm::with_plan(plan));
    let p = pipeline(llm.clone(), backend, PipelineConfig::default());
    let (record, _) = run(&p, "big").await;
    assert_eq!(
        record.tasks[0]
            .output
            .as_ref()
            .unwrap()
            .generated_text
            .as_ref()
            .unwrap()
            .len(),
        100_000,
        "the record keeps everything"
    );
    let answer_prompt = llm
        .calls()
        .into_iter()
        .rfind(|c| stage_of(c) == Stage::Answer)
        .unwrap();
    let user = &answer_prompt.messages.last().unwrap().content;
    assert!(user.contains("[cut:"), "long results carry a note");
    assert!(user.len() < 30_000, "prompt of {} bytes", user.len());
}

#[tokio::test(start_paused = true)]
async fn planning_failure_is_an_error_and_answer_failure_keeps_the_tasks() {
    let llm = Arc::new(ScriptedLlm::new(|_| {
        Err(LlmError::Connect("refused".into()))
    }));
    let p = pipeline(
        llm,
        Arc::new(FakeBackend::new(Duration::ZERO)),
        PipelineConfig::default(),
    );
    assert!(matches!(
        p.run("x", &[], None).await,
        Err(PipelineError::Planning(_))
    ));

    let llm = Arc::new(ScriptedLlm::new(|request| match stage_of(request) {
        Stage::Plan => Ok(DESCRIBE_COUNT_SPEAK.to_string()),
        Stage::Select => Ok(first_candidate_choice(request)),
        _ => Err(LlmError::Status {
            status: 500,
            message: "answer model down".into(),
        }),
    }));
    let p = pipeline(
        llm,
        Arc::new(FakeBackend::new(Duration::ZERO)),
        PipelineConfig::default(),
    );
    let record = p.run("x", &[], None).await.unwrap();
    assert!(record.error.as_ref().unwrap().contains("answer model down"));
    assert!(record.tasks.iter().all(|t| t.status == TaskStatus::Ok));
}

#[tokio::test]
async fn history_is_trimmed_to_fit_the_context() {
    let llm = Arc::new(ScriptedLlm::with_plan("[]"));
    let config = PipelineConfig {
        context_window: 4000,
        ..PipelineConfig::default()
    };
    let p = pipeline(llm, Arc::new(FakeBackend::new(Duration::ZERO)), config);
    let history: Vec<ChatMessage> = (0..40)
        .map(|i| {
            if i % 2 == 0 {
                ChatMessage::user(format!("old question {i} {}", "x ".repeat(300)))
            } else {
                ChatMessage::assistant(format!("answer {i}"))
            }
        })
        .collect();
    let request = p.plan_request("now", &history);
    let user = &request.messages.last().unwrap().content;
    assert!(
        !user.contains("old question 0 "),
        "the oldest turns were dropped"
    );
    assert!(user.contains("old question 38"), "the newest turn was kept");
}

#[tokio::test(start_paused = true)]
async fn no_selection_outlives_the_run() {
    // Task 1 waits on task 0, which fails at once (unknown type); task 1's
    // selection is still asking a slow LLM when the run ends.
    let plan = r#"[{"task": "juggling", "id": 0, "dep": [-1], "args": {}},
                   {"task": "object-detection", "id": 1, "dep": [0], "args": {"image": "<GENERATED>-0"}}]"#;
    let llm = Arc::new(ScriptedLlm::new(move |request| {
        Ok(match stage_of(request) {
            Stage::Plan => plan.to_string(),
            Stage::Select => first_candidate_choice(request),
            _ => "answer".to_string(),
        })
    }));
    let slow_selector = Arc::new(SlowStage {
        inner: llm,
        stage: Stage::Select,
        delay: Duration::from_secs(100),
    });
    let catalog = Arc::new(Catalog::from_jsonl(CATALOG, "test").unwrap());
    let p = Pipeline::new(
        slow_selector,
        Arc::new(FakeBackend::new(Duration::ZERO)),
        media(),
        catalog,
        Arc::new(Prompts::default()),
        PipelineConfig::default(),
    );
    let (tx, mut rx) = mpsc::unbounded_channel();
    let started = tokio::time::Instant::now();
    let record = p.run("go", &[], Some(tx)).await.unwrap();
    assert_eq!(record.tasks[1].status, TaskStatus::Skipped);
    let mut events = Vec::new();
    while let Some(event) = rx.recv().await {
        events.push(event);
    }
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "the event channel closed with the run"
    );
    assert!(
        matches!(events.last(), Some(RunEvent::Finished { .. })),
        "nothing came after finished"
    );
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, RunEvent::ModelChosen { .. }))
    );
}

/// Delays one stage of a controller.
struct SlowStage {
    inner: Arc<ScriptedLlm>,
    stage: Stage,
    delay: Duration,
}

#[async_trait::async_trait]
impl hgpt_core::backend::ChatModel for SlowStage {
    fn model_name(&self) -> &str {
        self.inner.model_name()
    }
    async fn complete(&self, request: hgpt_core::backend::ChatRequest) -> Result<String, LlmError> {
        if stage_of(&request) == self.stage {
            tokio::time::sleep(self.delay).await;
        }
        self.inner.complete(request).await
    }
    async fn stream(
        &self,
        request: hgpt_core::backend::ChatRequest,
    ) -> Result<hgpt_core::backend::TextStream, LlmError> {
        self.inner.stream(request).await
    }
}

#[tokio::test(start_paused = true)]
async fn the_concurrency_cap_counts_running_tasks_only() {
    let plan = r#"[{"task": "image-to-text", "id": 0, "dep": [-1], "args": {"image": "/a.jpg"}},
                   {"task": "object-detection", "id": 1, "dep": [-1], "args": {"image": "/a.jpg"}},
                   {"task": "image-classification", "id": 2, "dep": [-1], "args": {"image": "/a.jpg"}}]"#;
    let backend = Arc::new(FakeBackend::new(Duration::from_millis(50)));
    let config = PipelineConfig {
        max_concurrency: 1,
        ..PipelineConfig::default()
    };
    let p = pipeline(
        Arc::new(ScriptedLlm::with_plan(plan)),
        backend.clone(),
        config,
    );
    let (record, _) = run(&p, "three things").await;
    assert!(record.tasks.iter().all(|t| t.status == TaskStatus::Ok));
    assert_eq!(backend.peak_concurrency(), 1);
}

#[tokio::test]
async fn planning_and_selection_requests_carry_their_shapes() {
    use hgpt_core::shape::OutputShape;
    let llm = Arc::new(ScriptedLlm::with_plan(DESCRIBE_COUNT_SPEAK));
    let p = pipeline(
        llm.clone(),
        Arc::new(FakeBackend::new(Duration::ZERO)),
        PipelineConfig::default(),
    );
    // Only task types the catalog has a model for, and the controller's own text tasks.
    let kinds = p.plannable_tasks();
    for kind in [
        TaskKind::ObjectDetection,
        TaskKind::ImageToText,
        TaskKind::TextToSpeech,
        TaskKind::Summarization,
    ] {
        assert!(kinds.contains(&kind), "{kind:?} missing from {kinds:?}");
    }
    assert!(!kinds.contains(&TaskKind::DepthEstimation));
    assert!(!kinds.contains(&TaskKind::CannyControl));
    let request = p.plan_request("describe /a.jpg", &[]);
    match &request.shape {
        Some(OutputShape::Plan(shape)) => assert_eq!(shape.tasks, kinds),
        other => panic!("planning request shape {other:?}"),
    }
    assert!(request.messages[0].content.contains("object-detection"));
    assert!(!request.messages[0].content.contains("depth-estimation"));
    let _ = run(&p, "describe /a.jpg").await;
    let choices: Vec<_> = llm
        .calls()
        .into_iter()
        .filter(|c| stage_of(c) == Stage::Select)
        .collect();
    assert!(!choices.is_empty());
    for call in choices {
        match &call.shape {
            Some(OutputShape::Choice(shape)) => assert_eq!(shape.ids.len(), 2, "{:?}", shape.ids),
            other => panic!("selection request shape {other:?}"),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_model_reports_its_steps_while_its_task_runs() {
    let llm = Arc::new(ScriptedLlm::with_plan(DESCRIBE_COUNT_SPEAK));
    let backend = Arc::new(FakeBackend::new(Duration::from_millis(1000)).with_steps(10));
    let p = pipeline(llm, backend, PipelineConfig::default());
    let (record, events) = run(&p, "describe /a.jpg, count the zebras and read it aloud").await;
    assert!(record.tasks.iter().all(|t| t.status == TaskStatus::Ok));
    for task in &record.tasks {
        let position = |wanted: &dyn Fn(&RunEvent) -> bool| events.iter().position(wanted);
        let started =
            position(&|e| matches!(e, RunEvent::TaskStarted { id, .. } if *id == task.id)).unwrap();
        let finished =
            position(&|e| matches!(e, RunEvent::TaskFinished { record } if record.id == task.id))
                .unwrap();
        let steps: Vec<(usize, u64, u64)> = events
            .iter()
            .enumerate()
            .filter_map(|(at, e)| match e {
                RunEvent::TaskProgress {
                    id,
                    model,
                    done,
                    total,
                } if *id == task.id => {
                    assert_eq!(Some(model), task.model.as_ref().map(|m| &m.id));
                    Some((at, *done, *total))
                }
                _ => None,
            })
            .collect();
        assert!(!steps.is_empty(), "task {} reported no steps", task.id);
        assert!(
            steps
                .iter()
                .all(|(at, _, _)| started < *at && *at < finished),
            "steps come between the task's start and end: {steps:?}"
        );
        assert!(steps.windows(2).all(|w| w[0].1 < w[1].1), "{steps:?}");
        assert_eq!(
            steps.last().map(|s| (s.1, s.2)),
            Some((10, 10)),
            "the last step is always sent"
        );
    }
}

/// A record with its timings cleared, for comparing runs.
fn timeless(record: &RunRecord) -> serde_json::Value {
    let mut value = serde_json::to_value(record).unwrap();
    value["timings"] = serde_json::Value::Null;
    for task in value["tasks"].as_array_mut().unwrap() {
        task["started_ms"] = serde_json::Value::Null;
        task["finished_ms"] = serde_json::Value::Null;
    }
    value
}

/// A controller that plans with `plan` (cut off at a 64-token limit when
/// `cut_off`), streaming it as `streaming` says.
fn planner(plan: &'static str, cut_off: bool, streaming: Option<Chunking>) -> ScriptedLlm {
    let llm = ScriptedLlm::new(move |request| match stage_of(request) {
        Stage::Plan if cut_off => Err(LlmError::Unfinished {
            text: plan.to_string(),
            max_tokens: 64,
        }),
        Stage::Plan => Ok(plan.to_string()),
        Stage::Select => Ok(first_candidate_choice(request)),
        Stage::Answer => Ok("Here is the answer.".to_string()),
        Stage::Other => Ok("chat answer".to_string()),
    });
    match streaming {
        Some(chunking) => llm.with_streaming(chunking, Duration::from_millis(5)),
        None => llm,
    }
}

/// Plans for the streaming comparisons: well formed, with escapes, braces
/// and references inside strings, out of order, unfolded, with text tasks,
/// and each malformed shape the whole-plan tests cover.
const STREAMED_PLANS: &[(&str, bool)] = &[
    (DESCRIBE_COUNT_SPEAK, false),
    (
        r#"Sure! ```json
[{"task": "text-to-image", "id": 0, "dep": [-1], "args": {"text": "a \"red\" {circle} [big] \\ <GENERATED>"}},
 {'task': 'image-to-text', 'id': 1, 'dep': [0], 'args': {'image': '<GENERATED-0>'}},
 {"task": "translation", "id": 2, "dep": [1], "args": {"text": "<node>-1", "tgt_lang": "French"}}]
```"#,
        false,
    ),
    (
        r#"[{"task": "text-to-speech", "id": 3, "dep": [2], "args": {"text": "<GENERATED>-2"}},
            {"task": "text-to-image", "id": 0, "dep": [-1], "args": {"text": "x"}},
            {"task": "image-to-text", "id": 2, "dep": [0, 1], "args": {"image": "<GENERATED>-0"}}]"#,
        false,
    ),
    (
        r#"[{"task": "text-to-image", "id": 0, "dep": [-1], "args": {"text": "a"}},
            {"task": "text-to-image", "id": 1, "dep": [-1], "args": {"text": "b"}},
            {"task": "image-to-text", "id": 2, "dep": [0, 1], "args": {"image": "<GENERATED>-0,<GENERATED>-1"}},
            {"task": "text-to-speech", "id": 3, "dep": [2], "args": {"text": "<GENERATED>-2"}}]"#,
        false,
    ),
    (
        r#"[{"task": "juggling", "id": 0, "dep": [-1], "args": {}},
            {"task": "image-classification", "id": 1, "dep": [-1], "args": {"image": "/a.jpg"}}]"#,
        false,
    ),
    (
        r#"[{"task": "image-to-text", "id": 0, "dep": [-1], "args": {"image": "/a.jpg an"#,
        true,
    ),
    ("[]", false),
    ("I am not able to produce JSON today.", false),
    (
        r#"[{"task": "summarization", "id": 0, "dep": [-1], "args": {"text": "long text"}}]"#,
        false,
    ),
    (
        r#"[{"task": "image-to-text", "id": 0, "dep": [-1], "args": {"image": "<GENERATED>-4"}}]"#,
        false,
    ),
    (
        r#"[{"task": "image-to-text", "id": 0, "dep": [-1], "args": {"image": "/a.jpg"}}}, {"task": "object-detection", "id": 1, "args": {"image": "/a.jpg"}}]"#,
        false,
    ),
];

#[tokio::test(start_paused = true)]
async fn a_streamed_plan_gives_the_whole_plans_record_in_any_chunking() {
    let whole_config = PipelineConfig {
        stream_plan: false,
        ..PipelineConfig::default()
    };
    for &(plan, cut_off) in STREAMED_PLANS {
        let whole = pipeline(
            Arc::new(planner(plan, cut_off, None)),
            Arc::new(FakeBackend::new(Duration::from_millis(50))),
            whole_config.clone(),
        );
        let (expected, whole_events) = run(&whole, "the request").await;
        assert!(
            !whole_events
                .iter()
                .any(|e| matches!(e, RunEvent::TaskPlanned { .. })),
            "the whole-plan path announces no task early"
        );
        for chunking in [Chunking::Bytes(1), Chunking::Bytes(7), Chunking::Words] {
            let streamed = pipeline(
                Arc::new(planner(plan, cut_off, Some(chunking))),
                Arc::new(FakeBackend::new(Duration::from_millis(50))),
                PipelineConfig::default(),
            );
            let (record, events) = run(&streamed, "the request").await;
            assert_eq!(
                timeless(&record),
                timeless(&expected),
                "{chunking:?}: {plan}"
            );
            // Every task announced early is in the plan, announced before it
            // was chosen a model or started.
            for (at, event) in events.iter().enumerate() {
                let RunEvent::TaskPlanned { task } = event else {
                    continue;
                };
                assert!(record.plan.contains(task), "{task:?}");
                let later = events.iter().position(|e| {
                    matches!(e, RunEvent::Selecting { id } | RunEvent::TaskStarted { id, .. } if *id == task.id)
                });
                assert!(later.is_none_or(|l| l > at), "{chunking:?}: {plan}");
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_task_starts_before_the_plan_is_complete() {
    let llm = Arc::new(planner(
        DESCRIBE_COUNT_SPEAK,
        false,
        Some(Chunking::Bytes(4)),
    ));
    let p = pipeline(
        llm,
        Arc::new(FakeBackend::new(Duration::from_millis(10))),
        PipelineConfig::default(),
    );
    let (record, events) = run(&p, "describe /a.jpg, count the zebras and read it aloud").await;
    assert!(record.tasks.iter().all(|t| t.status == TaskStatus::Ok));
    let position = |wanted: &dyn Fn(&RunEvent) -> bool| events.iter().position(wanted).unwrap();
    let planned = position(&|e| matches!(e, RunEvent::Planned { .. }));
    let first_finished = position(&|e| matches!(e, RunEvent::TaskFinished { .. }));
    assert!(
        first_finished < planned,
        "task {:?} ran to its end while the plan was still being written",
        events[first_finished]
    );
    let announced = position(&|e| matches!(e, RunEvent::TaskPlanned { task } if task.id == 0));
    let started = position(&|e| matches!(e, RunEvent::TaskStarted { id: 0, .. }));
    assert!(announced < started && started < planned);
}

#[tokio::test(start_paused = true)]
async fn a_plan_that_turns_out_malformed_keeps_the_tasks_that_ran() {
    // Task 0 is certain and runs; the duplicate id makes the finished plan
    // unusable, so nothing else runs, the record says why, and the answer
    // is written from what ran.
    let plan = r#"[{"task": "object-detection", "id": 0, "dep": [-1], "args": {"image": "/a.jpg"}},
                   {"task": "image-classification", "id": 0, "args": {"image": "/a.jpg"}},
                   {"task": "image-to-text", "id": 1, "args": {"image": "/a.jpg"}}]"#;
    for chunking in [Chunking::Bytes(1), Chunking::Words] {
        let backend = Arc::new(FakeBackend::new(Duration::from_millis(10)));
        let p = pipeline(
            Arc::new(planner(plan, false, Some(chunking))),
            backend.clone(),
            PipelineConfig::default(),
        );
        let (record, _) = run(&p, "look at /a.jpg").await;
        assert_eq!(record.mode, RunMode::Tasks, "{record:#?}");
        assert_eq!(record.tasks.len(), 1);
        assert_eq!(record.tasks[0].task, "object-detection");
        assert_eq!(record.tasks[0].status, TaskStatus::Ok);
        assert_eq!(record.plan.len(), 1);
        let warning = record.plan_warnings.last().unwrap();
        assert!(
            warning.contains("two tasks have id 0") && warning.contains("already started"),
            "{warning}"
        );
        assert_eq!(record.answer, "Here is the answer.");
        assert_eq!(backend.calls().len(), 1);
        // The whole-plan path answers the same plan as chat.
        let whole = pipeline(
            Arc::new(planner(plan, false, None)),
            Arc::new(FakeBackend::new(Duration::ZERO)),
            PipelineConfig {
                stream_plan: false,
                ..PipelineConfig::default()
            },
        );
        assert_eq!(run(&whole, "look").await.0.mode, RunMode::Chat);
    }
}
