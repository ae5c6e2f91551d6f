//! In-process fakes of the core's traits, for pipeline tests and the
//! orchestration benchmark: a scripted controller LLM, an inference backend
//! with configurable latency that records overlap, and an in-memory media
//! store. No sockets involved.

use async_trait::async_trait;
use futures::{StreamExt, stream};
use hgpt_core::backend::{
    Availability, ChatModel, ChatRequest, InferenceBackend, InferenceError, InferenceRequest,
    LlmError, MediaError, MediaStore, StepProgress, StepProgressFn, TextStream,
};
use hgpt_core::output::{Blob, Detection, InferenceOutput, ScoredLabel, Segment};
use hgpt_core::task::{ResourceKind, TaskKind};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Which stage a controller request belongs to, told from its system prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Task planning.
    Plan,
    /// Model selection.
    Select,
    /// The final answer.
    Answer,
    /// Plain chat or a text task on the controller.
    Other,
}

/// Classify a controller request by its first message (the default prompts
/// start with `#1`, `#2`, `#4`).
pub fn stage_of(request: &ChatRequest) -> Stage {
    let first = request
        .messages
        .first()
        .map(|m| m.content.as_str())
        .unwrap_or_default();
    if first.starts_with("#1") {
        Stage::Plan
    } else if first.starts_with("#2") {
        Stage::Select
    } else if first.starts_with("#4") {
        Stage::Answer
    } else {
        Stage::Other
    }
}

type Responder = dyn Fn(&ChatRequest) -> Result<String, LlmError> + Send + Sync;

/// A controller LLM answering from a closure, after an optional delay.
pub struct ScriptedLlm {
    responder: Box<Responder>,
    delay: Duration,
    chunking: Chunking,
    gap: Duration,
    calls: Mutex<Vec<ChatRequest>>,
}

/// How a streamed answer is cut into pieces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunking {
    /// After every space (roughly a token each).
    Words,
    /// Pieces of at most this many bytes (whole characters).
    Bytes(usize),
}

impl Chunking {
    /// `text` in pieces.
    pub fn split(self, text: &str) -> Vec<String> {
        match self {
            Self::Words => text.split_inclusive(' ').map(str::to_string).collect(),
            Self::Bytes(size) => {
                let size = size.max(1);
                let mut pieces = Vec::new();
                let mut piece = String::new();
                for c in text.chars() {
                    if !piece.is_empty() && piece.len() + c.len_utf8() > size {
                        pieces.push(std::mem::take(&mut piece));
                    }
                    piece.push(c);
                }
                if !piece.is_empty() {
                    pieces.push(piece);
                }
                pieces
            }
        }
    }
}

impl ScriptedLlm {
    /// An LLM whose answers come from `responder`.
    pub fn new(
        responder: impl Fn(&ChatRequest) -> Result<String, LlmError> + Send + Sync + 'static,
    ) -> Self {
        Self {
            responder: Box::new(responder),
            delay: Duration::ZERO,
            chunking: Chunking::Words,
            gap: Duration::ZERO,
            calls: Mutex::new(Vec::new()),
        }
    }

    /// The usual script: `plan` for planning, the first candidate for
    /// selection, a fixed answer for the answer stage and plain chat.
    pub fn with_plan(plan: impl Into<String>) -> Self {
        let plan = plan.into();
        Self::new(move |request| {
            Ok(match stage_of(request) {
                Stage::Plan => plan.clone(),
                Stage::Select => first_candidate_choice(request),
                Stage::Answer => "Here is the answer.".to_string(),
                Stage::Other => "chat answer".to_string(),
            })
        })
    }

    /// Wait this long before every answer.
    pub fn with_delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Stream answers in these pieces, waiting `gap` before each (a
    /// controller writing at a fixed rate).
    pub fn with_streaming(mut self, chunking: Chunking, gap: Duration) -> Self {
        self.chunking = chunking;
        self.gap = gap;
        self
    }

    /// Every request received, in order.
    pub fn calls(&self) -> Vec<ChatRequest> {
        self.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }

    async fn answer(&self, request: &ChatRequest) -> Result<String, LlmError> {
        if let Ok(mut calls) = self.calls.lock() {
            calls.push(request.clone());
        }
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        (self.responder)(request)
    }
}

/// A selection answer naming the first candidate listed in the request.
pub fn first_candidate_choice(request: &ChatRequest) -> String {
    let last = request
        .messages
        .last()
        .map(|m| m.content.as_str())
        .unwrap_or_default();
    let id = crate::first_listed_candidate(last).unwrap_or("none");
    format!("{{\"id\": \"{id}\", \"reason\": \"first listed\"}}")
}

#[async_trait]
impl ChatModel for ScriptedLlm {
    fn model_name(&self) -> &str {
        "scripted-llm"
    }

    async fn complete(&self, request: ChatRequest) -> Result<String, LlmError> {
        self.answer(&request).await
    }

    /// The answer in pieces; an answer cut off at the token limit streams
    /// its text, then the error.
    async fn stream(&self, request: ChatRequest) -> Result<TextStream, LlmError> {
        let (text, cut_off) = match self.answer(&request).await {
            Ok(text) => (text, None),
            Err(LlmError::Unfinished { text, max_tokens }) => (
                text.clone(),
                Some(LlmError::Unfinished { text, max_tokens }),
            ),
            Err(error) => return Err(error),
        };
        let pieces: Vec<Result<String, LlmError>> = self
            .chunking
            .split(&text)
            .into_iter()
            .map(Ok)
            .chain(cut_off.map(Err))
            .collect();
        let gap = self.gap;
        Ok(Box::pin(stream::iter(pieces).then(
            move |piece| async move {
                if !gap.is_zero() {
                    tokio::time::sleep(gap).await;
                }
                piece
            },
        )))
    }
}

/// How the fake backend answers one call.
pub type BackendResponder =
    dyn Fn(&InferenceRequest) -> Result<InferenceOutput, InferenceError> + Send + Sync;

/// An inference backend with a fixed latency that records every call and the
/// peak number of calls in flight at once.
pub struct FakeBackend {
    latency: Duration,
    responder: Box<BackendResponder>,
    unavailable: Vec<String>,
    steps: u64,
    in_flight: AtomicUsize,
    peak: AtomicUsize,
    calls: Mutex<Vec<InferenceRequest>>,
}

impl FakeBackend {
    /// A backend that answers every task with [`canned_output`].
    pub fn new(latency: Duration) -> Self {
        Self::with_responder(latency, |request| Ok(canned_output(request.task)))
    }

    /// A backend answering from a closure.
    pub fn with_responder(
        latency: Duration,
        responder: impl Fn(&InferenceRequest) -> Result<InferenceOutput, InferenceError>
        + Send
        + Sync
        + 'static,
    ) -> Self {
        Self {
            latency,
            responder: Box::new(responder),
            unavailable: Vec::new(),
            steps: 0,
            in_flight: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            calls: Mutex::new(Vec::new()),
        }
    }

    /// Report these models as unavailable.
    pub fn with_unavailable(mut self, models: &[&str]) -> Self {
        self.unavailable = models.iter().map(|m| m.to_string()).collect();
        self
    }

    /// Report this many steps over each call's latency (as a diffusion
    /// model reports its denoising steps) to callers that take progress.
    pub fn with_steps(mut self, steps: u64) -> Self {
        self.steps = steps;
        self
    }

    /// The most calls that were in flight at the same time.
    pub fn peak_concurrency(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }

    /// Every call, in the order they started.
    pub fn calls(&self) -> Vec<InferenceRequest> {
        self.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }
}

#[async_trait]
impl InferenceBackend for FakeBackend {
    fn endpoint(&self, _model: &str) -> String {
        "fake".to_string()
    }

    async fn availability(&self, _task: TaskKind, model: &str) -> Availability {
        if self.unavailable.iter().any(|m| m == model) {
            Availability::Unavailable("marked unavailable".to_string())
        } else {
            Availability::Available
        }
    }

    async fn infer(&self, request: &InferenceRequest) -> Result<InferenceOutput, InferenceError> {
        self.infer_with_progress(request, &|_| {}).await
    }

    async fn infer_with_progress(
        &self,
        request: &InferenceRequest,
        progress: StepProgressFn<'_>,
    ) -> Result<InferenceOutput, InferenceError> {
        if let Ok(mut calls) = self.calls.lock() {
            calls.push(request.clone());
        }
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        if self.steps == 0 && !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
        for done in 1..=self.steps {
            tokio::time::sleep(self.latency.div_f64(self.steps as f64)).await;
            progress(StepProgress {
                done,
                total: self.steps,
            });
        }
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        (self.responder)(request)
    }
}

/// A plausible output for every task type.
pub fn canned_output(task: TaskKind) -> InferenceOutput {
    let label = |l: &str, s: f64| ScoredLabel {
        label: l.to_string(),
        score: s,
    };
    match task {
        TaskKind::ObjectDetection => InferenceOutput::Detections(vec![Detection {
            label: "zebra".into(),
            score: 0.98,
            bbox: hgpt_core::output::BoundingBox {
                xmin: 0.0,
                ymin: 0.0,
                xmax: 1.0,
                ymax: 1.0,
            },
        }]),
        TaskKind::ImageSegmentation => InferenceOutput::Segments(Vec::<Segment>::new()),
        TaskKind::ImageToText | TaskKind::AutomaticSpeechRecognition => {
            InferenceOutput::Text(format!("text from {task}"))
        }
        TaskKind::SentenceSimilarity => InferenceOutput::Similarities(vec![0.5]),
        TaskKind::TextToSpeech | TaskKind::AudioToAudio => {
            InferenceOutput::Media(Blob::sniffed(crate::hf::sample_wav()))
        }
        TaskKind::TextToVideo => InferenceOutput::Media(Blob {
            bytes: crate::hf::sample_mp4().into(),
            mime: Some("video/mp4".into()),
        }),
        kind if kind.output() == Some(ResourceKind::Image) => {
            InferenceOutput::Media(Blob::sniffed(crate::hf::sample_png()))
        }
        kind if kind.output() == Some(ResourceKind::Text) => {
            InferenceOutput::Text(format!("text from {kind}"))
        }
        _ => InferenceOutput::Labels(vec![label("positive", 0.9), label("negative", 0.1)]),
    }
}

/// An in-memory media store: preloaded inputs by name; saves return
/// `mem://N.ext` names that load back.
#[derive(Default)]
pub struct MemoryMedia {
    files: Mutex<BTreeMap<String, Blob>>,
    saved: AtomicUsize,
}

impl MemoryMedia {
    /// A store holding these files.
    pub fn with_files(files: impl IntoIterator<Item = (String, Vec<u8>)>) -> Self {
        let files = files
            .into_iter()
            .map(|(name, bytes)| (name, Blob::sniffed(bytes)))
            .collect();
        Self {
            files: Mutex::new(files),
            saved: AtomicUsize::new(0),
        }
    }

    /// How many files were saved.
    pub fn saved_count(&self) -> usize {
        self.saved.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl MediaStore for MemoryMedia {
    async fn load(&self, reference: &str, _kind: ResourceKind) -> Result<Blob, MediaError> {
        let files = self
            .files
            .lock()
            .map_err(|_| MediaError::NotFound(reference.to_string()))?;
        files
            .get(reference)
            .cloned()
            .ok_or_else(|| MediaError::NotFound(reference.to_string()))
    }

    async fn save(&self, kind: ResourceKind, blob: &Blob) -> Result<String, MediaError> {
        let n = self.saved.fetch_add(1, Ordering::SeqCst);
        let name = format!("mem://{kind}-{n}.{}", blob.extension().unwrap_or("bin"));
        if let Ok(mut files) = self.files.lock() {
            files.insert(name.clone(), blob.clone());
        }
        Ok(name)
    }

    async fn draw_detections(
        &self,
        image: &Blob,
        _detections: &[Detection],
    ) -> Result<Blob, MediaError> {
        Ok(image.clone())
    }

    async fn draw_segments(&self, image: &Blob, _segments: &[Segment]) -> Result<Blob, MediaError> {
        Ok(image.clone())
    }
}

/// Shorthand for an `Arc` of any fake.
pub fn arc<T>(value: T) -> Arc<T> {
    Arc::new(value)
}
