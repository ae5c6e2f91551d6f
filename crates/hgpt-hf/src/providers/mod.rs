//! The inference providers the Hugging Face router fronts, each with its own
//! request and response shapes (following the `huggingface_hub` 2.x
//! InferenceClient's provider helpers). A provider is one module here plus
//! one line in [`PROVIDERS`].

mod fal_ai;
mod hf_inference;
mod replicate;
mod together;

use crate::HfBackend;
use crate::mapping::ProviderEntry;
use crate::request::{WireBody, WireRequest};
use crate::{error_chain, error_in_success, error_message};
use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hgpt_core::backend::{InferenceError, InferenceRequest, MediaStore};
use hgpt_core::output::{Blob, InferenceOutput};
use hgpt_core::task::{ResourceKind, TaskKind};
use reqwest::header::AUTHORIZATION;
use serde_json::Value;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// One provider behind the router.
#[async_trait]
pub(crate) trait Provider: Send + Sync {
    /// Its name on the router and in the Hub's mapping.
    fn name(&self) -> &'static str;
    /// Whether hgpt can call it for a task.
    fn serves(&self, task: TaskKind) -> bool;
    /// Its own API's base URL for a task, used with its own key.
    fn direct_base(&self, task: TaskKind) -> &'static str;
    /// The `Authorization` value for its own key.
    fn direct_authorization(&self, key: &str) -> String {
        format!("Bearer {key}")
    }
    /// Run one task on the model the mapping entry names.
    async fn run(&self, call: &Call<'_>) -> Result<InferenceOutput, InferenceError>;
}

/// Every provider hgpt can call, by name.
static PROVIDERS: &[&dyn Provider] = &[
    &hf_inference::HfInference,
    &fal_ai::FalAi,
    &replicate::Replicate,
    &together::Together,
];

/// The names of the providers hgpt can call.
pub const PROVIDER_NAMES: &[&str] = &["hf-inference", "fal-ai", "replicate", "together"];

/// The provider called `name`, if hgpt has it.
pub(crate) fn provider(name: &str) -> Option<&'static dyn Provider> {
    PROVIDERS.iter().copied().find(|p| p.name() == name)
}

/// Everything one provider call needs: where to send it, how to
/// authenticate, how to wait for queued jobs and fetch result files.
pub(crate) struct Call<'a> {
    /// The task.
    pub request: &'a InferenceRequest,
    /// The provider's mapping of the model.
    pub entry: &'a ProviderEntry,
    /// `{router}/{provider}`, or the provider's own API.
    pub base: String,
    /// Whether `base` is the Hugging Face router.
    pub via_router: bool,
    /// The Hub (adapter weights are named by their Hub URL).
    pub hub_endpoint: &'a str,
    /// The `Authorization` header value, if any.
    pub authorization: Option<String>,
    /// Sends requests with retries and loading waits.
    pub http: &'a HfBackend,
    /// Downloads result files (address-checked) and checks their kind.
    pub media: &'a dyn MediaStore,
    /// Between two polls of a queued job.
    pub poll_interval: Duration,
    /// When the task is given up, over all its requests and polls.
    pub deadline: Instant,
    /// Set once the provider accepted a job (it has an id): failing over to
    /// another provider from then on could pay for the task twice.
    pub accepted: AtomicBool,
    /// The job time limit (for messages).
    pub job_timeout: Duration,
}

impl Call<'_> {
    /// The Hub model id.
    pub fn model(&self) -> &str {
        &self.request.model
    }

    /// A decode error naming the model and provider.
    pub fn malformed(&self, message: impl Into<String>) -> InferenceError {
        InferenceError::Decode {
            model: self.model().to_string(),
            message: format!("{}: {}", self.entry.provider, message.into()),
        }
    }

    /// POST a JSON body to `{base}{path}` with the call's authorization.
    pub async fn post_json(
        &self,
        path: &str,
        body: Value,
        headers: &[(&str, &str)],
    ) -> Result<crate::Reply, InferenceError> {
        let wire = WireRequest {
            pipeline: None,
            body: WireBody::Json(body),
            accept: None,
        };
        self.post(path, &wire, headers).await
    }

    /// POST a wire request to `{base}{path}`, within the deadline. Requests
    /// to third-party providers start billed work: they are not repeated
    /// after a failure that may come after the provider accepted them.
    pub async fn post(
        &self,
        path: &str,
        wire: &WireRequest,
        headers: &[(&str, &str)],
    ) -> Result<crate::Reply, InferenceError> {
        let url = format!("{}{path}", self.base);
        tracing::debug!(provider = self.entry.provider, %url, "provider call");
        let once = self.entry.provider != "hf-inference";
        let remaining = self.deadline.saturating_duration_since(Instant::now());
        let send = self.http.send_with(
            self.model(),
            &url,
            wire,
            self.authorization.as_deref(),
            headers,
            once,
        );
        let reply = tokio::time::timeout(remaining, send)
            .await
            .map_err(|_| self.timeout())??;
        if let Some(message) = error_in_success(&reply.body) {
            return Err(InferenceError::Server {
                model: self.model().to_string(),
                status: 200,
                message: format!("{}: {message}", self.entry.provider),
            });
        }
        Ok(reply)
    }

    /// POST JSON and read a JSON object back.
    pub async fn post_for_json(
        &self,
        path: &str,
        body: Value,
        headers: &[(&str, &str)],
    ) -> Result<Value, InferenceError> {
        let reply = self.post_json(path, body, headers).await?;
        self.json(&reply.body)
    }

    /// A body that must be a JSON object.
    pub fn json(&self, body: &[u8]) -> Result<Value, InferenceError> {
        match serde_json::from_slice::<Value>(body) {
            Ok(value @ Value::Object(_)) => Ok(value),
            Ok(other) => Err(self.malformed(format!(
                "expected a JSON object, got {}",
                crate::decode::describe(&other)
            ))),
            Err(_) => Err(self.malformed(format!(
                "expected a JSON object, got {} bytes that are not JSON",
                body.len()
            ))),
        }
    }

    /// Record that the provider accepted a job.
    pub fn mark_accepted(&self) {
        self.accepted.store(true, Ordering::Relaxed);
    }

    /// GET `{base}{path}` (a job's status or result), as a JSON object; a
    /// 404 names the job as unknown. Connection failures, 429s and server
    /// errors are retried each poll interval until the deadline.
    pub async fn get_json(&self, path: &str, job: &str) -> Result<Value, InferenceError> {
        loop {
            match self.get_json_once(path, job).await {
                Err(err) if transient(&err) && self.deadline > Instant::now() => {
                    tracing::debug!(provider = self.entry.provider, %err, "poll failed; retrying");
                    self.wait_for_next_poll().await?;
                }
                other => return other,
            }
        }
    }

    async fn get_json_once(&self, path: &str, job: &str) -> Result<Value, InferenceError> {
        let url = format!("{}{path}", self.base);
        let remaining = self.deadline.saturating_duration_since(Instant::now());
        let mut request = self
            .http
            .client()
            .get(&url)
            .timeout(remaining.max(Duration::from_millis(1)));
        if let Some(value) = &self.authorization {
            request = request.header(AUTHORIZATION, value);
        }
        let response = match request.send().await {
            Ok(response) => response,
            Err(err) if err.is_timeout() => return Err(self.timeout()),
            Err(err) => {
                return Err(InferenceError::Transport {
                    model: self.model().to_string(),
                    message: format!("{}: {}", self.entry.provider, error_chain(&err)),
                });
            }
        };
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|err| InferenceError::Transport {
                model: self.model().to_string(),
                message: error_chain(&err),
            })?;
        if status == reqwest::StatusCode::NOT_FOUND {
            return Err(InferenceError::Server {
                model: self.model().to_string(),
                status: 404,
                message: format!(
                    "{} does not know job {job}: {}",
                    self.entry.provider,
                    error_message(status, &body).0
                ),
            });
        }
        if !status.is_success() {
            return Err(InferenceError::Server {
                model: self.model().to_string(),
                status: status.as_u16(),
                message: format!(
                    "{}: {}",
                    self.entry.provider,
                    error_message(status, &body).0
                ),
            });
        }
        self.json(&body)
    }

    /// The error of a job that did not finish in time.
    pub fn timeout(&self) -> InferenceError {
        InferenceError::Timeout {
            model: self.model().to_string(),
            after: self.job_timeout,
        }
    }

    /// Wait one poll interval, or fail when the job's time is up.
    pub async fn wait_for_next_poll(&self) -> Result<(), InferenceError> {
        let remaining = self.deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(self.timeout());
        }
        let interval = self.poll_interval.max(MIN_POLL_INTERVAL);
        tokio::time::sleep(interval.min(remaining)).await;
        Ok(())
    }

    /// A result file named by a provider: a `data:` URL decoded here, an
    /// http(s) URL downloaded through the media store (which refuses private
    /// addresses and checks that the content is of `kind`).
    pub async fn fetch(&self, url: &str, kind: ResourceKind) -> Result<Blob, InferenceError> {
        let failed =
            |message: String| self.malformed(format!("result file {}: {message}", short(url)));
        if let Some(data) = url.strip_prefix("data:") {
            let (meta, payload) = data
                .split_once(',')
                .ok_or_else(|| failed("a data URL without a comma".into()))?;
            if !meta.ends_with(";base64") {
                return Err(failed("a data URL that is not base64".into()));
            }
            let bytes = B64
                .decode(payload.trim())
                .map_err(|e| failed(format!("bad base64: {e}")))?;
            return blob_of_kind(Blob::sniffed(bytes), kind).map_err(failed);
        }
        let scheme_ok = url.split_once("://").is_some_and(|(scheme, _)| {
            scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https")
        });
        if !scheme_ok {
            return Err(failed("not an http(s) or data URL".into()));
        }
        self.media
            .load(url, kind)
            .await
            .map_err(|e| failed(e.to_string()))
    }

    /// Media bytes answered directly (a provider that returns the file).
    pub fn media_reply(
        &self,
        reply: crate::Reply,
        kind: ResourceKind,
    ) -> Result<Blob, InferenceError> {
        let declared = reply.content_type.as_deref().map(|ct| {
            ct.split(';')
                .next()
                .unwrap_or(ct)
                .trim()
                .to_ascii_lowercase()
        });
        let mut blob = Blob::sniffed(reply.body);
        if blob.mime.is_none() {
            blob.mime = declared;
        }
        blob_of_kind(blob, kind).map_err(|message| self.malformed(message))
    }
}

/// The shortest pause between two polls, whatever the configuration says.
const MIN_POLL_INTERVAL: Duration = Duration::from_millis(5);

/// Whether a poll's failure may pass: no answer, rate limited, or a gateway
/// or overload status (a 500 is the job's own failure, reported at once).
fn transient(err: &InferenceError) -> bool {
    match err {
        InferenceError::Transport { .. } => true,
        InferenceError::Server { status, .. } => matches!(*status, 429 | 502 | 503 | 504),
        _ => false,
    }
}

/// A URL cut for messages (data URLs are long).
fn short(url: &str) -> String {
    if url.len() <= 80 {
        return url.to_string();
    }
    let mut cut = 60;
    while !url.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}...", &url[..cut])
}

/// `blob` when its media type is of `kind`.
fn blob_of_kind(blob: Blob, kind: ResourceKind) -> Result<Blob, String> {
    let prefix = match kind {
        ResourceKind::Image => "image/",
        ResourceKind::Audio => "audio/",
        ResourceKind::Video => "video/",
        ResourceKind::Text => return Ok(blob),
    };
    match blob.mime.as_deref() {
        Some(mime) if mime.starts_with(prefix) => Ok(blob),
        Some(mime) => Err(format!("expected {kind} content, got {mime}")),
        None => Err(format!(
            "expected {kind} content, got {} bytes of unknown type",
            blob.bytes.len()
        )),
    }
}

/// The media kind a generating task returns.
pub(crate) fn output_kind(task: TaskKind) -> Option<ResourceKind> {
    match task {
        TaskKind::TextToImage | TaskKind::ImageToImage => Some(ResourceKind::Image),
        TaskKind::TextToSpeech => Some(ResourceKind::Audio),
        TaskKind::TextToVideo => Some(ResourceKind::Video),
        _ => None,
    }
}

/// A blob as a `data:` URL (how providers take input files).
pub(crate) fn data_url(blob: &Blob, default_mime: &str) -> String {
    let mime = blob.mime.as_deref().unwrap_or(default_mime);
    format!("data:{mime};base64,{}", B64.encode(&blob.bytes))
}

/// The task's parameters (as hf-inference takes them) as a JSON object,
/// nulls dropped at every depth (as the Python client's `filter_none`).
pub(crate) fn parameters(request: &InferenceRequest) -> serde_json::Map<String, Value> {
    crate::request::parameters(request.task, &request.args)
        .into_iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| (k, without_nulls(v)))
        .collect()
}

fn without_nulls(value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, without_nulls(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(without_nulls).collect()),
        other => other,
    }
}

/// A string field of a JSON object.
pub(crate) fn text_field<'v>(value: &'v Value, key: &str) -> Option<&'v str> {
    value.get(key).and_then(Value::as_str)
}

/// Whether a job id from a provider is safe to put into a URL path.
pub(crate) fn valid_job_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}
