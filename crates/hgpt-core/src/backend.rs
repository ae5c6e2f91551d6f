//! The seams between the core and the outside world: the controller LLM, the
//! inference backends and the resource store. Implementations live in other
//! crates (`hgpt-llm`, `hgpt-hf`, `hgpt-media`, local backends) and in tests.

use crate::output::{Blob, Detection, InferenceOutput, Segment};
use crate::shape::OutputShape;
use crate::task::{ResourceKind, TaskKind};
use async_trait::async_trait;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;

/// Who said a chat message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions to the model.
    System,
    /// The user.
    User,
    /// The model.
    Assistant,
}

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// Who said it.
    pub role: Role,
    /// What was said.
    pub content: String,
}

impl ChatMessage {
    /// A message with the given role.
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
        }
    }
    /// A system message.
    pub fn system(content: impl Into<String>) -> Self {
        Self::new(Role::System, content)
    }
    /// A user message.
    pub fn user(content: impl Into<String>) -> Self {
        Self::new(Role::User, content)
    }
    /// An assistant message.
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new(Role::Assistant, content)
    }
}

/// A chat completion request to the controller LLM.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChatRequest {
    /// The conversation, system prompt first.
    pub messages: Vec<ChatMessage>,
    /// Sampling temperature (`None`: the server's default).
    pub temperature: Option<f32>,
    /// Cap on generated tokens.
    pub max_tokens: Option<u32>,
    /// Token id -> bias, passed through to servers that support it.
    pub logit_bias: BTreeMap<String, f32>,
    /// The shape the answer must take: enforced token by token by the embedded
    /// controller, sent as `response_format` to servers that support it.
    pub shape: Option<OutputShape>,
}

/// Why a call to the controller LLM failed.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum LlmError {
    /// No LLM is configured.
    #[error("no LLM is configured: {0}")]
    NotConfigured(String),
    /// The server could not be reached.
    #[error("cannot reach the LLM server: {0}")]
    Connect(String),
    /// The server answered with an error status.
    #[error("the LLM server answered {status}: {message}")]
    Status {
        /// HTTP status.
        status: u16,
        /// The server's message.
        message: String,
    },
    /// The server's answer did not follow the protocol.
    #[error("malformed answer from the LLM server: {0}")]
    Protocol(String),
    /// The call took too long.
    #[error("the LLM call timed out after {0:?}")]
    Timeout(Duration),
    /// The embedded controller failed (model file, context window, grammar).
    #[error("the embedded controller failed: {0}")]
    Embedded(String),
    /// A shaped answer (a plan) reached the token limit before it was
    /// complete; `text` is what was written.
    #[error("the answer reached the {max_tokens}-token limit before it was complete")]
    Unfinished {
        /// The text so far.
        text: String,
        /// The limit.
        max_tokens: usize,
    },
}

/// A stream of text deltas from the LLM.
pub type TextStream = BoxStream<'static, Result<String, LlmError>>;

/// The controller LLM: any chat model that can complete and stream.
#[async_trait]
pub trait ChatModel: Send + Sync {
    /// The model's name as sent to the server (used for token counting).
    fn model_name(&self) -> &str;
    /// Complete a conversation and return the whole answer.
    async fn complete(&self, request: ChatRequest) -> Result<String, LlmError>;
    /// Complete a conversation, yielding the answer as it is produced.
    async fn stream(&self, request: ChatRequest) -> Result<TextStream, LlmError>;
}

/// Whether a backend can serve a model right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Availability {
    /// The backend says it can serve the model.
    Available,
    /// The backend says it cannot, and why.
    Unavailable(String),
    /// The backend cannot tell; treated as available.
    Unknown,
    /// Not here yet: the backend downloads it on first use (the text says
    /// what and within which limit).
    Pullable(String),
}

impl Availability {
    /// Whether selection may pick the model (`Unknown` and `Pullable` count
    /// as available).
    pub fn is_usable(&self) -> bool {
        !matches!(self, Self::Unavailable(_))
    }
}

/// How far a model download has got, over all of its files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DownloadProgress {
    /// Bytes downloaded so far.
    pub done_bytes: u64,
    /// Bytes to download in all.
    pub total_bytes: u64,
}

/// Receives [`DownloadProgress`] while a backend prepares a model.
pub type ProgressFn<'a> = &'a (dyn Fn(DownloadProgress) + Send + Sync);

/// How far a running task has got, in its model's own steps (a diffusion
/// model's denoising steps).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepProgress {
    /// Steps done.
    pub done: u64,
    /// Steps in all.
    pub total: u64,
}

/// Receives [`StepProgress`] while a backend runs a task.
pub type StepProgressFn<'a> = &'a (dyn Fn(StepProgress) + Send + Sync);

/// Arguments of a task after `<GENERATED>` references and paths are resolved.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResolvedArgs {
    /// The `text` argument.
    pub text: Option<String>,
    /// The `image` argument, loaded.
    pub image: Option<Blob>,
    /// The `audio` argument, loaded.
    pub audio: Option<Blob>,
    /// The `video` argument, loaded.
    pub video: Option<Blob>,
    /// Every other argument as the plan gave it (`context`, `question`,
    /// `sentences`, `candidate_labels`, `table`, `tgt_lang`, ...).
    pub other: BTreeMap<String, Value>,
}

impl ResolvedArgs {
    /// The loaded resource of a media kind.
    pub fn media(&self, kind: ResourceKind) -> Option<&Blob> {
        match kind {
            ResourceKind::Image => self.image.as_ref(),
            ResourceKind::Audio => self.audio.as_ref(),
            ResourceKind::Video => self.video.as_ref(),
            ResourceKind::Text => None,
        }
    }

    /// Another argument as a string, if present and textual (numbers are
    /// rendered; lists of strings are joined with newlines).
    pub fn other_text(&self, key: &str) -> Option<String> {
        match self.other.get(key)? {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            Value::Array(items) => Some(
                items
                    .iter()
                    .map(|v| {
                        v.as_str()
                            .map(str::to_string)
                            .unwrap_or_else(|| v.to_string())
                    })
                    .collect::<Vec<_>>()
                    .join("\n"),
            ),
            _ => None,
        }
    }
}

/// One call to an inference backend.
#[derive(Debug, Clone, PartialEq)]
pub struct InferenceRequest {
    /// The task type.
    pub task: TaskKind,
    /// The model id (`org/name`).
    pub model: String,
    /// The resolved arguments.
    pub args: ResolvedArgs,
}

/// Why an inference call failed.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum InferenceError {
    /// The server answered with an error (after any retries).
    #[error("{model} failed ({status}): {message}")]
    Server {
        /// The model id.
        model: String,
        /// HTTP status.
        status: u16,
        /// The server's message.
        message: String,
    },
    /// The server could not be reached.
    #[error("cannot reach the inference server for {model}: {message}")]
    Transport {
        /// The model id.
        model: String,
        /// What went wrong.
        message: String,
    },
    /// The task's arguments do not fit the task (e.g. no image for an image task).
    #[error("bad input for {task}: {message}")]
    BadInput {
        /// The task type.
        task: TaskKind,
        /// What is wrong.
        message: String,
    },
    /// The backend cannot run this task type or model.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// The response could not be decoded.
    #[error("unexpected response from {model}: {message}")]
    Decode {
        /// The model id.
        model: String,
        /// What did not match.
        message: String,
    },
    /// The call took too long.
    #[error("{model} timed out after {after:?}")]
    Timeout {
        /// The model id.
        model: String,
        /// How long it waited.
        after: Duration,
    },
}

/// Something that runs models: remote endpoints, an in-process runtime, or a
/// router over several.
#[async_trait]
pub trait InferenceBackend: Send + Sync {
    /// Where a model would run, as shown to the LLM during selection
    /// (e.g. `"huggingface"` or `"local"`).
    fn endpoint(&self, model: &str) -> String;
    /// Whether this backend has any way to run the task type (a local
    /// runtime has pipelines for some types only). Planning offers only the
    /// types the backend runs.
    fn runs_task(&self, _task: TaskKind) -> bool {
        true
    }
    /// Whether the model can be served now. Backends that cannot tell answer
    /// [`Availability::Unknown`].
    async fn availability(&self, task: TaskKind, model: &str) -> Availability;
    /// Make the model ready to run (download it when it is
    /// [`Availability::Pullable`]), reporting download progress. Called
    /// before [`Self::infer`]; backends with nothing to prepare keep the default.
    async fn prepare(
        &self,
        _task: TaskKind,
        _model: &str,
        _progress: ProgressFn<'_>,
    ) -> Result<(), InferenceError> {
        Ok(())
    }
    /// Run one task on one model.
    async fn infer(&self, request: &InferenceRequest) -> Result<InferenceOutput, InferenceError>;
    /// Run one task, reporting its steps where the model has any. Backends
    /// whose models report none keep the default, which is [`Self::infer`].
    async fn infer_with_progress(
        &self,
        request: &InferenceRequest,
        _progress: StepProgressFn<'_>,
    ) -> Result<InferenceOutput, InferenceError> {
        self.infer(request).await
    }
}

/// Why a resource could not be loaded or stored.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum MediaError {
    /// A path outside the allowed roots, a private address, a bad scheme.
    #[error("refused {reference:?}: {reason}")]
    Refused {
        /// The path or URL as given.
        reference: String,
        /// Why it was refused.
        reason: String,
    },
    /// The resource does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// Reading, downloading or writing failed.
    #[error("{reference}: {message}")]
    Io {
        /// The path or URL.
        reference: String,
        /// What went wrong.
        message: String,
    },
    /// The content is not what was expected (e.g. not an image).
    #[error("invalid {kind} content in {reference}: {message}")]
    Invalid {
        /// The expected kind.
        kind: ResourceKind,
        /// The path or URL.
        reference: String,
        /// What is wrong.
        message: String,
    },
}

/// Where resources named in plans come from and generated ones go.
#[async_trait]
pub trait MediaStore: Send + Sync {
    /// Load a resource named in a plan: a path (resolved under the media root
    /// or the output directory, never outside) or an http(s) URL.
    async fn load(&self, reference: &str, kind: ResourceKind) -> Result<Blob, MediaError>;
    /// Store a generated resource under a unique name; returns its path as
    /// reported to users and to later tasks.
    async fn save(&self, kind: ResourceKind, blob: &Blob) -> Result<String, MediaError>;
    /// Draw labelled boxes onto an image.
    async fn draw_detections(
        &self,
        image: &Blob,
        detections: &[Detection],
    ) -> Result<Blob, MediaError>;
    /// Overlay coloured segment masks onto an image.
    async fn draw_segments(&self, image: &Blob, segments: &[Segment]) -> Result<Blob, MediaError>;
}
