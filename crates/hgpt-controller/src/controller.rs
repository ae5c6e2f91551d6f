//! [`EmbeddedController`]: the engine behind hgpt's [`ChatModel`] seam. One
//! loaded model is shared by every run of the process; requests queue for it
//! and run on a blocking thread, streaming text back as it is produced.

use crate::engine::{Engine, GenerateRequest, Generation, Sampling, StopCause};
use crate::error::ControllerError;
use async_trait::async_trait;
use futures::StreamExt;
use hgpt_core::backend::{ChatModel, ChatRequest, LlmError, TextStream};
use std::sync::Arc;
use tokio::sync::{Mutex, mpsc};

/// Settings of the embedded controller's generations.
#[derive(Debug, Clone, PartialEq)]
pub struct ControllerSettings {
    /// Sampling; plans and model choices are greedy unless a temperature is set.
    pub sampling: Sampling,
    /// Cap on generated tokens when a request names none.
    pub max_tokens: usize,
}

impl Default for ControllerSettings {
    fn default() -> Self {
        Self {
            sampling: Sampling::default(),
            max_tokens: 1024,
        }
    }
}

/// The embedded controller LLM.
pub struct EmbeddedController {
    engine: Arc<Mutex<Engine>>,
    settings: ControllerSettings,
    name: String,
    context: usize,
}

impl std::fmt::Debug for EmbeddedController {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedController")
            .field("name", &self.name)
            .finish()
    }
}

fn llm_error(e: ControllerError) -> LlmError {
    LlmError::Embedded(e.to_string())
}

impl EmbeddedController {
    /// Wrap a loaded engine.
    pub fn new(engine: Engine, settings: ControllerSettings) -> Self {
        let name = format!("embedded:{}", engine.name());
        let context = engine.model().context();
        Self {
            engine: Arc::new(Mutex::new(engine)),
            settings,
            name,
            context,
        }
    }

    /// The context window the model runs with, in tokens.
    pub fn context_window(&self) -> usize {
        self.context
    }

    /// Bytes held by the model: weights and cached prompt prefixes.
    pub async fn memory_bytes(&self) -> usize {
        self.engine.lock().await.memory_bytes()
    }

    fn generate_request(&self, request: ChatRequest) -> GenerateRequest {
        let mut sampling = self.settings.sampling.clone();
        if request.shape.is_none()
            && let Some(t) = request.temperature
        {
            sampling.temperature = t;
        }
        GenerateRequest {
            messages: request.messages,
            shape: request.shape,
            max_tokens: request
                .max_tokens
                .map_or(self.settings.max_tokens, |m| m as usize),
            sampling,
        }
    }

    /// Run a generation on a blocking thread once the engine is free;
    /// `on_text` gets every piece of text and returns `false` to stop.
    pub async fn run(
        &self,
        request: GenerateRequest,
        mut on_text: impl FnMut(&str) -> bool + Send + 'static,
    ) -> Result<Generation, ControllerError> {
        let mut engine = self.engine.clone().lock_owned().await;
        tokio::task::spawn_blocking(move || engine.generate(&request, &mut on_text))
            .await
            .map_err(|e| ControllerError::Inference(format!("the generation thread failed: {e}")))?
    }
}

#[async_trait]
impl ChatModel for EmbeddedController {
    fn model_name(&self) -> &str {
        &self.name
    }

    async fn complete(&self, request: ChatRequest) -> Result<String, LlmError> {
        let request = self.generate_request(request);
        let (shaped, max_tokens) = (request.shape.is_some(), request.max_tokens);
        let generation = self.run(request, |_| true).await.map_err(llm_error)?;
        tracing::debug!(
            prompt = generation.prompt_tokens,
            cached = generation.cached_tokens,
            generated = generation.generated_tokens,
            forced = generation.forced_tokens,
            ms = generation.total.as_millis() as u64,
            "embedded completion"
        );
        if shaped && generation.stop == StopCause::Length {
            // Half a plan is not a plan: say so instead of letting it be read.
            return Err(LlmError::Unfinished {
                text: generation.text,
                max_tokens,
            });
        }
        Ok(generation.text)
    }

    /// Pieces as they are generated; a shaped answer (a plan) cut off at
    /// the token limit ends with [`LlmError::Unfinished`], as
    /// [`Self::complete`] reports it.
    async fn stream(&self, request: ChatRequest) -> Result<TextStream, LlmError> {
        let request = self.generate_request(request);
        let (shaped, max_tokens) = (request.shape.is_some(), request.max_tokens);
        let (tx, rx) = mpsc::unbounded_channel::<Result<String, LlmError>>();
        let engine = self.engine.clone();
        let errors = tx.clone();
        tokio::spawn(async move {
            let mut engine = engine.lock_owned().await;
            let outcome = tokio::task::spawn_blocking(move || {
                engine.generate(&request, &mut |piece: &str| {
                    tx.send(Ok(piece.to_string())).is_ok()
                })
            })
            .await;
            let error = match outcome {
                Ok(Ok(generation)) if shaped && generation.stop == StopCause::Length => {
                    Some(LlmError::Unfinished {
                        text: generation.text,
                        max_tokens,
                    })
                }
                Ok(Ok(_)) => None,
                Ok(Err(e)) => Some(llm_error(e)),
                Err(e) => Some(LlmError::Embedded(format!(
                    "the generation thread failed: {e}"
                ))),
            };
            if let Some(e) = error {
                let _ = errors.send(Err(e));
            }
        });
        Ok(tokio_stream(rx).boxed())
    }
}

fn tokio_stream<T: Send + 'static>(
    mut rx: mpsc::UnboundedReceiver<T>,
) -> impl futures::Stream<Item = T> + Send {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
