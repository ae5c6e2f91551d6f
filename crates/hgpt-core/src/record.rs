//! What a run produces: per-task records, the run record printed by
//! `hgpt run --json`, and the live events emitted while it runs.

use crate::plan::PlanTaskView;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// The model chosen for a task and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelChoice {
    /// The model id (or the controller LLM's name for text tasks it runs).
    pub id: String,
    /// Why it was chosen.
    pub reason: String,
}

/// A catalog model selection did not offer, and why (no provider serves
/// it, no local family runs it, access denied, ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedModel {
    /// The model id.
    pub id: String,
    /// Why it was not offered.
    pub reason: String,
}

/// How a task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskStatus {
    /// It produced an output.
    Ok,
    /// It ran (or tried to) and failed.
    Failed,
    /// It never ran because a dependency failed or was skipped.
    Skipped,
}

/// What a task produced.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskOutput {
    /// Generated text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generated_text: Option<String>,
    /// Path of a generated image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generated_image: Option<String>,
    /// Path of generated audio.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generated_audio: Option<String>,
    /// Path of a generated video.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generated_video: Option<String>,
    /// Predictions (labels, boxes, answers, scores, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predicted: Option<Value>,
}

impl TaskOutput {
    /// The reference's result keys (`"generated text"`, `"predicted"`, ...).
    pub fn to_reference_json(&self) -> Value {
        let mut map = serde_json::Map::new();
        let mut put = |key: &str, value: Option<Value>| {
            if let Some(value) = value {
                map.insert(key.to_string(), value);
            }
        };
        put(
            "generated text",
            self.generated_text.clone().map(Value::String),
        );
        put(
            "generated image",
            self.generated_image.clone().map(Value::String),
        );
        put(
            "generated audio",
            self.generated_audio.clone().map(Value::String),
        );
        put(
            "generated video",
            self.generated_video.clone().map(Value::String),
        );
        put("predicted", self.predicted.clone());
        Value::Object(map)
    }
}

/// The record of one task of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    /// Task id.
    pub id: usize,
    /// Task type.
    pub task: String,
    /// Dependencies (`[-1]` for none).
    pub dep: Vec<i64>,
    /// Arguments after resolution (references replaced by paths or text).
    pub args: BTreeMap<String, Value>,
    /// The model that ran it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelChoice>,
    /// Where the model ran (`huggingface`, `local`, `controller-llm`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Top-ranked catalog models that were not offered to selection, and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped_models: Vec<SkippedModel>,
    /// How it ended.
    pub status: TaskStatus,
    /// What it produced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<TaskOutput>,
    /// Why it failed or was skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When it started, in ms since the run started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_ms: Option<u64>,
    /// When it finished, in ms since the run started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_ms: Option<u64>,
}

impl TaskRecord {
    /// The reference's `/results` record:
    /// `{"task": {...}, "inference result": {...}, "choose model result": {...}}`.
    pub fn to_reference_json(&self) -> Value {
        let result = match (&self.output, &self.error) {
            (Some(output), _) => output.to_reference_json(),
            (None, Some(error)) => serde_json::json!({ "error": error }),
            (None, None) => serde_json::json!({}),
        };
        serde_json::json!({
            "task": {"task": self.task, "id": self.id, "dep": self.dep, "args": self.args},
            "inference result": result,
            "choose model result": self.model,
        })
    }
}

/// How the request was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunMode {
    /// A plan of tasks ran and the answer came from their results.
    Tasks,
    /// Answered as plain chat (empty or unusable plan, or a single text task).
    Chat,
}

/// Time spent in each stage, in ms.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageTimings {
    /// Planning LLM call and post-processing.
    pub plan_ms: u64,
    /// From plan to the last model choice (overlaps execution).
    pub selection_ms: u64,
    /// From plan to the last task finished.
    pub execution_ms: u64,
    /// The answer LLM call.
    pub answer_ms: u64,
    /// The whole run.
    pub total_ms: u64,
}

/// The complete record of a run (`hgpt run --json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// The user's request.
    pub request: String,
    /// How it was answered.
    pub mode: RunMode,
    /// Why it fell back to chat, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_reason: Option<String>,
    /// The post-processed plan.
    pub plan: Vec<PlanTaskView>,
    /// Repairs made to the plan.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plan_warnings: Vec<String>,
    /// The planner's raw answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_raw: Option<String>,
    /// One record per task, in plan order.
    pub tasks: Vec<TaskRecord>,
    /// The final answer.
    pub answer: String,
    /// Set when the run could not finish (for example the answer call failed);
    /// everything done before is still in the record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Stage timings.
    pub timings: StageTimings,
    /// The controller LLM.
    pub llm_model: String,
}

impl RunRecord {
    /// The reference's `/results` map: `{id: record}`.
    pub fn reference_results(&self) -> Value {
        Value::Object(
            self.tasks
                .iter()
                .map(|t| (t.id.to_string(), t.to_reference_json()))
                .collect(),
        )
    }
}

/// A live event of a run, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RunEvent {
    /// A task of a plan still being written is certain and handed to
    /// selection (the plan streams; `planned` follows when it is complete).
    TaskPlanned {
        /// The task.
        task: PlanTaskView,
    },
    /// The plan is ready (complete; tasks already announced by
    /// `task_planned` are in it too).
    Planned {
        /// The tasks.
        plan: Vec<PlanTaskView>,
        /// Repairs made to it.
        warnings: Vec<String>,
    },
    /// The run is answered as plain chat.
    ChatFallback {
        /// Why.
        reason: String,
    },
    /// Model selection began for a task.
    Selecting {
        /// Task id.
        id: usize,
    },
    /// A model was chosen for a task.
    ModelChosen {
        /// Task id.
        id: usize,
        /// The choice.
        model: ModelChoice,
        /// Where it runs.
        endpoint: String,
    },
    /// A task started running.
    TaskStarted {
        /// Task id.
        id: usize,
        /// ms since the run started.
        at_ms: u64,
        /// The model it runs on.
        model: ModelChoice,
        /// Where that model runs.
        endpoint: String,
    },
    /// A task's model is being downloaded before it runs (several times
    /// a second while it lasts, and once at the end).
    ModelDownload {
        /// Task id.
        id: usize,
        /// The model.
        model: String,
        /// Bytes downloaded so far.
        done_bytes: u64,
        /// Bytes to download in all.
        total_bytes: u64,
    },
    /// A running task's model reports its steps (a diffusion model's
    /// denoising steps; at most a few times a second, and at the last).
    TaskProgress {
        /// Task id.
        id: usize,
        /// The model.
        model: String,
        /// Steps done.
        done: u64,
        /// Steps in all.
        total: u64,
    },
    /// A task ended (ok, failed or skipped).
    TaskFinished {
        /// Its record.
        record: Box<TaskRecord>,
    },
    /// The answer is being written.
    AnswerStarted,
    /// A piece of the answer.
    AnswerDelta {
        /// The text to append.
        text: String,
    },
    /// The run is over.
    Finished {
        /// The final record.
        record: Box<RunRecord>,
    },
}
