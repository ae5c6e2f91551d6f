//! The OpenAI-compatible chat completion client.

use crate::sse::{SseEvent, SseParser};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::{self, BoxStream};
use hgpt_core::backend::{ChatMessage, ChatModel, ChatRequest, LlmError, TextStream};
use hgpt_core::shape::OutputShape;
use reqwest::header::{self, HeaderMap, HeaderName, HeaderValue};
use reqwest::{Response, StatusCode, Url};
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::time::{Instant, timeout_at};

/// Longest wait between two retries computed by exponential backoff.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Longest `Retry-After` the client is willing to honour.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// How much of a server's error text or bad answer is quoted in errors.
const QUOTE_CHARS: usize = 500;

/// Settings of an [`OpenAiClient`].
#[derive(Clone, PartialEq, Eq)]
pub struct OpenAiConfig {
    /// The API root, e.g. `https://api.openai.com/v1` or `http://127.0.0.1:8000/v1`;
    /// `/chat/completions` is appended.
    pub base_url: String,
    /// Sent as `Authorization: Bearer <key>` when set and non-empty.
    pub api_key: Option<String>,
    /// The model name sent with every request.
    pub model: String,
    /// Limit for one attempt of [`ChatModel::complete`]; for streams, the limit
    /// for the answer to start and for each silence between two pieces.
    pub request_timeout: Duration,
    /// How many times a failed attempt (connection error, 408, 429, 5xx) is
    /// retried.
    pub max_retries: u32,
    /// Wait before the first retry; doubled for each further one.
    pub retry_base_delay: Duration,
    /// Extra HTTP headers sent with every request.
    pub extra_headers: Vec<(String, String)>,
}

impl Default for OpenAiConfig {
    fn default() -> Self {
        Self {
            base_url: String::new(),
            api_key: None,
            model: String::new(),
            request_timeout: Duration::from_secs(120),
            max_retries: 3,
            retry_base_delay: Duration::from_millis(500),
            extra_headers: Vec::new(),
        }
    }
}

impl fmt::Debug for OpenAiConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAiConfig")
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("model", &self.model)
            .field("request_timeout", &self.request_timeout)
            .field("max_retries", &self.max_retries)
            .field("retry_base_delay", &self.retry_base_delay)
            .field(
                "extra_headers",
                &self
                    .extra_headers
                    .iter()
                    .map(|(k, _)| k)
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// A [`ChatModel`] speaking the OpenAI chat completions protocol, as served
/// by OpenAI, vLLM, llama.cpp, Ollama, LM Studio, TGI and others.
#[derive(Debug, Clone)]
pub struct OpenAiClient {
    config: OpenAiConfig,
    endpoint: Url,
    headers: HeaderMap,
    http: reqwest::Client,
    /// Set once the server has rejected `response_format`: it is not sent again.
    no_response_format: Arc<AtomicBool>,
}

/// The `response_format` asking for an answer of this shape (OpenAI
/// structured outputs; also understood by vLLM and llama.cpp's server).
pub fn response_format(shape: &OutputShape) -> serde_json::Value {
    serde_json::json!({
        "type": "json_schema",
        "json_schema": {
            "name": shape.name(),
            "strict": true,
            "schema": shape.json_schema(),
        },
    })
}

/// Whether a refusal is about the request's `response_format` (a server
/// that does not support structured outputs), not about the request itself.
fn rejects_response_format(error: &LlmError) -> bool {
    match error {
        LlmError::Status { status, message } => {
            matches!(status, 400 | 415 | 422 | 501)
                && ["response_format", "json_schema", "structured", "grammar"]
                    .iter()
                    .any(|word| message.to_ascii_lowercase().contains(word))
        }
        _ => false,
    }
}

/// The JSON body of a chat completion request.
#[derive(Serialize)]
struct RequestBody<'a> {
    model: &'a str,
    messages: &'a [ChatMessage],
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    logit_bias: &'a BTreeMap<String, f32>,
    /// Structured outputs: `{"type": "json_schema", "json_schema": {...}}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    response_format: Option<serde_json::Value>,
    stream: bool,
}

/// What a successful exchange produced.
enum Reply {
    /// The whole answer.
    Text(String),
    /// An event stream whose body is still to be read.
    Events(Response),
}

/// Why one attempt failed.
enum Failure {
    /// Worth another attempt, after at least the given wait if the server
    /// asked for one.
    Retry(LlmError, Option<Duration>),
    /// Final.
    Fatal(LlmError),
}

impl OpenAiClient {
    /// A client for the configured server. Fails with
    /// [`LlmError::NotConfigured`] when the base URL is not an http(s) URL,
    /// the model is empty, or a header cannot be sent.
    pub fn new(config: OpenAiConfig) -> Result<Self, LlmError> {
        let endpoint = chat_endpoint(&config.base_url)?;
        if config.model.trim().is_empty() {
            return Err(LlmError::NotConfigured(
                "the LLM model name is empty; set the model to use (e.g. \"gpt-4o-mini\")".into(),
            ));
        }
        let mut headers = HeaderMap::new();
        for (name, value) in &config.extra_headers {
            let bad = |what: &str| {
                LlmError::NotConfigured(format!("extra header {name:?} has an invalid {what}"))
            };
            let name = HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| bad("name"))?;
            let value = HeaderValue::from_str(value).map_err(|_| bad("value"))?;
            headers.append(name, value);
        }
        if let Some(key) = config.api_key.as_deref().filter(|k| !k.is_empty()) {
            let mut value = HeaderValue::from_str(&format!("Bearer {key}")).map_err(|_| {
                LlmError::NotConfigured(
                    "the API key contains characters not allowed in HTTP headers".into(),
                )
            })?;
            value.set_sensitive(true);
            headers.insert(header::AUTHORIZATION, value);
        }
        let mut builder = reqwest::Client::builder()
            .connect_timeout(config.request_timeout)
            .user_agent(concat!("hgpt/", env!("CARGO_PKG_VERSION")));
        if is_loopback(&endpoint) {
            // A local server never goes through a proxy from the environment.
            builder = builder.no_proxy();
        }
        let http = builder
            .build()
            .map_err(|e| LlmError::NotConfigured(format!("cannot set up the HTTP client: {e}")))?;
        Ok(Self {
            config,
            endpoint,
            headers,
            http,
            no_response_format: Arc::new(AtomicBool::new(false)),
        })
    }

    /// The settings this client was built with.
    pub fn config(&self) -> &OpenAiConfig {
        &self.config
    }

    /// The full URL requests are posted to (`{base_url}/chat/completions`).
    pub fn endpoint(&self) -> &str {
        self.endpoint.as_str()
    }

    /// Sends the request, retrying what is worth retrying.
    async fn exchange(&self, request: &ChatRequest, stream: bool) -> Result<Reply, LlmError> {
        let format = request
            .shape
            .as_ref()
            .filter(|_| !self.no_response_format.load(Ordering::Relaxed))
            .map(response_format);
        let shaped = format.is_some();
        match self.exchange_with(request, stream, format).await {
            Err(error) if shaped && rejects_response_format(&error) => {
                tracing::warn!(
                    "the LLM server rejects response_format ({error}); asking without it from now on"
                );
                self.no_response_format.store(true, Ordering::Relaxed);
                self.exchange_with(request, stream, None).await
            }
            other => other,
        }
    }

    async fn exchange_with(
        &self,
        request: &ChatRequest,
        stream: bool,
        response_format: Option<serde_json::Value>,
    ) -> Result<Reply, LlmError> {
        let body = RequestBody {
            model: &self.config.model,
            messages: &request.messages,
            temperature: request.temperature,
            max_tokens: request.max_tokens,
            logit_bias: &request.logit_bias,
            response_format,
            stream,
        };
        let body = Bytes::from(
            serde_json::to_vec(&body)
                .map_err(|e| LlmError::Protocol(format!("cannot encode the request: {e}")))?,
        );
        let mut attempt = 0u32;
        loop {
            match self.attempt(body.clone(), stream).await {
                Ok(reply) => return Ok(reply),
                Err(Failure::Fatal(error)) => return Err(error),
                Err(Failure::Retry(error, asked)) => {
                    if attempt >= self.config.max_retries {
                        return Err(error);
                    }
                    let wait = retry_delay(attempt, self.config.retry_base_delay, asked);
                    tracing::warn!(
                        attempt = attempt + 1,
                        max_retries = self.config.max_retries,
                        ?wait,
                        "LLM call failed, retrying: {error}"
                    );
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
            }
        }
    }

    /// One HTTP exchange.
    async fn attempt(&self, body: Bytes, stream: bool) -> Result<Reply, Failure> {
        let limit = self.config.request_timeout;
        let deadline = Instant::now() + limit;
        let accept = if stream {
            "text/event-stream"
        } else {
            "application/json"
        };
        let send = self
            .http
            .post(self.endpoint.clone())
            .headers(self.headers.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, accept)
            .body(body)
            .send();
        let response = match timeout_at(deadline, send).await {
            Err(_) => return Err(Failure::Fatal(LlmError::Timeout(limit))),
            Ok(Err(e)) if e.is_timeout() => return Err(Failure::Fatal(LlmError::Timeout(limit))),
            Ok(Err(e)) => {
                return Err(Failure::Retry(
                    LlmError::Connect(format!("{}: {}", self.endpoint, error_chain(&e))),
                    None,
                ));
            }
            Ok(Ok(response)) => response,
        };
        let status = response.status();
        if !status.is_success() {
            let asked = retry_after(response.headers());
            // The error text is best effort: a body that cannot be read
            // leaves the status alone to speak.
            let text = match timeout_at(deadline, response.bytes()).await {
                Ok(Ok(bytes)) => bytes,
                _ => Bytes::new(),
            };
            let error = LlmError::Status {
                status: status.as_u16(),
                message: error_message(status, &text),
            };
            return Err(if is_retryable(status) {
                Failure::Retry(error, asked)
            } else {
                Failure::Fatal(error)
            });
        }
        let event_stream = is_event_stream(response.headers());
        if stream && event_stream {
            return Ok(Reply::Events(response));
        }
        let text = match timeout_at(deadline, response.bytes()).await {
            Err(_) => return Err(Failure::Fatal(LlmError::Timeout(limit))),
            Ok(Err(e)) if e.is_timeout() => return Err(Failure::Fatal(LlmError::Timeout(limit))),
            Ok(Err(e)) => {
                return Err(Failure::Retry(
                    LlmError::Connect(format!("reading the answer failed: {}", error_chain(&e))),
                    None,
                ));
            }
            Ok(Ok(bytes)) => bytes,
        };
        let answer = if event_stream {
            collect_events(&text)
        } else {
            parse_completion(&text)
        };
        answer.map(Reply::Text).map_err(Failure::Fatal)
    }
}

#[async_trait]
impl ChatModel for OpenAiClient {
    fn model_name(&self) -> &str {
        &self.config.model
    }

    async fn complete(&self, request: ChatRequest) -> Result<String, LlmError> {
        match self.exchange(&request, false).await? {
            Reply::Text(text) => Ok(text),
            Reply::Events(response) => {
                // `exchange` only hands back open streams when asked to stream.
                drop(response);
                Err(LlmError::Protocol("unexpected event stream".into()))
            }
        }
    }

    async fn stream(&self, request: ChatRequest) -> Result<TextStream, LlmError> {
        match self.exchange(&request, true).await? {
            Reply::Text(text) if text.is_empty() => Ok(stream::empty().boxed()),
            Reply::Text(text) => Ok(stream::once(async move { Ok(text) }).boxed()),
            Reply::Events(response) => Ok(delta_stream(
                response.bytes_stream().boxed(),
                self.config.request_timeout,
            )),
        }
    }
}

/// Checks the base URL and appends `/chat/completions`.
fn chat_endpoint(base_url: &str) -> Result<Url, LlmError> {
    let base = base_url.trim();
    if base.is_empty() {
        return Err(LlmError::NotConfigured(
            "the LLM base URL is empty; set it to the server's API root, e.g. \
             \"https://api.openai.com/v1\" or \"http://127.0.0.1:8000/v1\""
                .into(),
        ));
    }
    let invalid = |why: &str| {
        LlmError::NotConfigured(format!(
            "the LLM base URL {base:?} {why}; expected an http(s) URL such as \
             \"http://127.0.0.1:8000/v1\""
        ))
    };
    let parsed = Url::parse(base).map_err(|e| invalid(&format!("is not a valid URL ({e})")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(invalid(&format!("uses the scheme {:?}", parsed.scheme())));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(invalid("has no host"));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(invalid("has a query or fragment"));
    }
    let mut root = parsed.as_str().trim_end_matches('/').to_string();
    // Accept a full endpoint URL as well as the API root.
    if let Some(stripped) = root.strip_suffix("/chat/completions") {
        root = stripped.to_string();
    }
    Url::parse(&format!("{root}/chat/completions"))
        .map_err(|e| invalid(&format!("is not a valid URL ({e})")))
}

fn is_loopback(url: &Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn is_retryable(status: StatusCode) -> bool {
    status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
}

fn is_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("text/event-stream")
        })
}

/// The wait the server asked for: `retry-after-ms` (OpenAI) or
/// `Retry-After` in seconds. HTTP dates are not honoured.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let seconds = |name: &str, scale: f64| {
        let value = headers
            .get(name)?
            .to_str()
            .ok()?
            .trim()
            .parse::<f64>()
            .ok()?;
        (value.is_finite() && value >= 0.0)
            .then(|| Duration::from_secs_f64((value / scale).min(MAX_RETRY_AFTER.as_secs_f64())))
    };
    seconds("retry-after-ms", 1000.0).or_else(|| seconds("retry-after", 1.0))
}

/// How long to wait before retry number `attempt + 1`: the server's
/// `Retry-After` when it gave one (capped), else exponential backoff from
/// `base` (capped).
pub(crate) fn retry_delay(attempt: u32, base: Duration, asked: Option<Duration>) -> Duration {
    if let Some(asked) = asked {
        return asked.min(MAX_RETRY_AFTER);
    }
    let factor = 2u32.saturating_pow(attempt.min(16));
    base.saturating_mul(factor).min(MAX_BACKOFF)
}

/// The message and all its sources, e.g. "error sending request: connection refused".
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        let part = inner.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = inner.source();
    }
    text
}

/// At most [`QUOTE_CHARS`] characters of `text`.
fn quote(text: &str) -> String {
    let text = text.trim();
    match text.char_indices().nth(QUOTE_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

/// The message of an error answer: OpenAI's `{"error": {"message"}}`,
/// `{"error": "..."}`, `{"message"}` / `{"detail"}` or plain text.
fn error_message(status: StatusCode, body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let from_json = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| json_error_message(&v));
    let message = from_json.unwrap_or_else(|| quote(&text));
    if message.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("no message")
            .to_string()
    } else {
        message
    }
}

fn json_error_message(value: &Value) -> Option<String> {
    let text = |v: &Value| match v {
        Value::String(s) if !s.trim().is_empty() => Some(quote(s)),
        Value::Null | Value::String(_) => None,
        other => Some(quote(&other.to_string())),
    };
    match value.get("error") {
        Some(Value::Object(error)) => error
            .get("message")
            .and_then(text)
            .or_else(|| error.get("type").and_then(text))
            .or_else(|| error.get("code").and_then(text))
            .or_else(|| Some(quote(&Value::Object(error.clone()).to_string()))),
        Some(other @ Value::String(_)) => text(other),
        _ => value
            .get("message")
            .and_then(text)
            .or_else(|| value.get("detail").and_then(text)),
    }
}

/// An `error` object inside a successful answer or a stream event.
fn embedded_error(value: &Value) -> Option<LlmError> {
    let error = value.get("error").filter(|e| !e.is_null())?;
    let message = json_error_message(value).unwrap_or_else(|| quote(&error.to_string()));
    let code = error
        .get("code")
        .and_then(|c| {
            c.as_u64()
                .or_else(|| c.as_str().and_then(|s| s.parse().ok()))
        })
        .and_then(|c| u16::try_from(c).ok())
        .filter(|c| (400..600).contains(c));
    Some(match code {
        Some(status) => LlmError::Status { status, message },
        None => LlmError::Protocol(format!("the server reported an error: {message}")),
    })
}

/// The answer of a non-streaming completion.
fn parse_completion(body: &[u8]) -> Result<String, LlmError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        LlmError::Protocol(format!(
            "the answer is not JSON ({e}): {:?}",
            quote(&String::from_utf8_lossy(body))
        ))
    })?;
    if let Some(error) = embedded_error(&value) {
        return Err(error);
    }
    let choice = value
        .get("choices")
        .and_then(Value::as_array)
        .and_then(|choices| choices.first())
        .ok_or_else(|| {
            LlmError::Protocol(format!(
                "the answer has no choices: {}",
                quote(&value.to_string())
            ))
        })?;
    match choice.get("message").and_then(|m| m.get("content")) {
        Some(Value::String(content)) => Ok(content.clone()),
        Some(Value::Null) => Err(LlmError::Protocol(
            "choices[0].message.content is null: the model returned no text".into(),
        )),
        Some(other) => Err(LlmError::Protocol(format!(
            "choices[0].message.content is not a string: {}",
            quote(&other.to_string())
        ))),
        None => Err(LlmError::Protocol(format!(
            "the answer has no choices[0].message.content: {}",
            quote(&choice.to_string())
        ))),
    }
}

/// What one stream event means.
#[derive(Debug, PartialEq)]
enum Event {
    /// A piece of the answer.
    Delta(String),
    /// Nothing to show (role-only, usage-only, empty choices, finish reason).
    Nothing,
    /// `[DONE]`: the answer is complete.
    Done,
}

fn interpret_event(event: &SseEvent) -> Result<Event, LlmError> {
    let data = event.data.trim();
    if data == "[DONE]" {
        return Ok(Event::Done);
    }
    if data.is_empty() {
        return Ok(Event::Nothing);
    }
    let value: Value = serde_json::from_str(data).map_err(|e| {
        LlmError::Protocol(format!(
            "a stream event is not JSON ({e}): {:?}",
            quote(data)
        ))
    })?;
    if let Some(error) = embedded_error(&value) {
        return Err(error);
    }
    let content = value
        .get("choices")
        .and_then(Value::as_array)
        .and_then(|choices| choices.first())
        .and_then(|choice| choice.get("delta"))
        .and_then(|delta| delta.get("content"))
        .and_then(Value::as_str);
    Ok(match content {
        Some(text) if !text.is_empty() => Event::Delta(text.to_string()),
        _ => Event::Nothing,
    })
}

/// Concatenates the deltas of a complete event-stream body.
fn collect_events(body: &[u8]) -> Result<String, LlmError> {
    let mut parser = SseParser::new();
    let mut events = parser.feed(body);
    events.extend(parser.finish());
    let mut answer = String::new();
    for event in &events {
        match interpret_event(event)? {
            Event::Delta(text) => answer.push_str(&text),
            Event::Nothing => {}
            Event::Done => break,
        }
    }
    Ok(answer)
}

/// State of an answer being streamed.
struct DeltaStream {
    body: BoxStream<'static, reqwest::Result<Bytes>>,
    parser: SseParser,
    ready: VecDeque<Result<String, LlmError>>,
    finished: bool,
    idle_limit: Duration,
}

impl DeltaStream {
    fn take_events(&mut self, events: Vec<SseEvent>) {
        for event in events {
            if self.finished {
                return;
            }
            match interpret_event(&event) {
                Ok(Event::Delta(text)) => self.ready.push_back(Ok(text)),
                Ok(Event::Nothing) => {}
                Ok(Event::Done) => self.finished = true,
                Err(error) => {
                    self.ready.push_back(Err(error));
                    self.finished = true;
                }
            }
        }
    }

    async fn next_item(mut self) -> Option<(Result<String, LlmError>, Self)> {
        loop {
            if let Some(item) = self.ready.pop_front() {
                return Some((item, self));
            }
            if self.finished {
                return None;
            }
            match tokio::time::timeout(self.idle_limit, self.body.next()).await {
                Err(_) => {
                    self.finished = true;
                    return Some((Err(LlmError::Timeout(self.idle_limit)), self));
                }
                Ok(Some(Ok(bytes))) => {
                    let events = self.parser.feed(&bytes);
                    self.take_events(events);
                }
                Ok(Some(Err(e))) => {
                    self.finished = true;
                    let error = if e.is_timeout() {
                        LlmError::Timeout(self.idle_limit)
                    } else {
                        LlmError::Connect(format!("the answer broke off: {}", error_chain(&e)))
                    };
                    return Some((Err(error), self));
                }
                Ok(None) => {
                    let events = self.parser.finish();
                    self.take_events(events);
                    self.finished = true;
                }
            }
        }
    }
}

/// The text deltas of an event-stream body. Ends at `[DONE]` or the end of
/// the body; an error ends it after one `Err` item.
fn delta_stream(
    body: BoxStream<'static, reqwest::Result<Bytes>>,
    idle_limit: Duration,
) -> TextStream {
    let state = DeltaStream {
        body,
        parser: SseParser::new(),
        ready: VecDeque::new(),
        finished: false,
        idle_limit,
    };
    stream::unfold(state, DeltaStream::next_item).boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(data: &str) -> SseEvent {
        SseEvent {
            data: data.into(),
            ..SseEvent::default()
        }
    }

    #[test]
    fn endpoint_is_built_from_the_base_url() {
        let url = |base: &str| chat_endpoint(base).map(|u| u.to_string());
        assert_eq!(
            url("http://127.0.0.1:8000/v1").as_deref(),
            Ok("http://127.0.0.1:8000/v1/chat/completions")
        );
        assert_eq!(
            url("https://api.openai.com/v1/").as_deref(),
            Ok("https://api.openai.com/v1/chat/completions")
        );
        assert_eq!(
            url(" http://h/v1/chat/completions ").as_deref(),
            Ok("http://h/v1/chat/completions")
        );
        for bad in [
            "",
            "127.0.0.1:8000/v1",
            "ftp://h/v1",
            "http://",
            "not a url",
            "http://h/v1?x=1",
        ] {
            assert!(
                matches!(chat_endpoint(bad), Err(LlmError::NotConfigured(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let base = Duration::from_millis(500);
        assert_eq!(retry_delay(0, base, None), Duration::from_millis(500));
        assert_eq!(retry_delay(1, base, None), Duration::from_millis(1000));
        assert_eq!(retry_delay(2, base, None), Duration::from_millis(2000));
        assert_eq!(retry_delay(30, base, None), MAX_BACKOFF);
        assert_eq!(retry_delay(u32::MAX, Duration::MAX, None), MAX_BACKOFF);
    }

    #[test]
    fn retry_after_overrides_backoff_and_is_capped() {
        let base = Duration::from_secs(3600);
        assert_eq!(retry_delay(2, base, Some(Duration::ZERO)), Duration::ZERO);
        assert_eq!(
            retry_delay(0, base, Some(Duration::from_secs(2))),
            Duration::from_secs(2)
        );
        assert_eq!(
            retry_delay(0, base, Some(Duration::from_secs(9999))),
            MAX_RETRY_AFTER
        );
    }

    #[test]
    fn retry_after_headers() {
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert("retry-after", HeaderValue::from_static("3"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(3)));
        headers.insert("retry-after", HeaderValue::from_static("1.5"));
        assert_eq!(retry_after(&headers), Some(Duration::from_millis(1500)));
        headers.insert("retry-after", HeaderValue::from_static("100000"));
        assert_eq!(retry_after(&headers), Some(MAX_RETRY_AFTER));
        headers.insert(
            "retry-after",
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&headers), None);
        headers.insert("retry-after", HeaderValue::from_static("-1"));
        assert_eq!(retry_after(&headers), None);
        headers.insert("retry-after-ms", HeaderValue::from_static("250"));
        assert_eq!(retry_after(&headers), Some(Duration::from_millis(250)));
    }

    #[test]
    fn error_messages() {
        let status = StatusCode::BAD_REQUEST;
        let msg = |body: &str| error_message(status, body.as_bytes());
        assert_eq!(
            msg(r#"{"error":{"message":"bad key","type":"auth","code":"x"}}"#),
            "bad key"
        );
        assert_eq!(
            msg(r#"{"error":{"message":null,"type":"invalid_request"}}"#),
            "invalid_request"
        );
        assert_eq!(msg(r#"{"error":"model not found"}"#), "model not found");
        assert_eq!(msg(r#"{"detail":"Not Found"}"#), "Not Found");
        assert_eq!(
            msg(r#"{"object":"error","message":"too long"}"#),
            "too long"
        );
        assert_eq!(msg("  upstream exploded \n"), "upstream exploded");
        assert_eq!(msg(""), "Bad Request");
        let long = "x".repeat(QUOTE_CHARS * 3);
        assert_eq!(msg(&long).chars().count(), QUOTE_CHARS + 1);
    }

    #[test]
    fn completion_bodies() {
        let ok = br#"{"choices":[{"index":0,"message":{"role":"assistant","content":"hi"}}]}"#;
        assert_eq!(parse_completion(ok), Ok("hi".to_string()));
        let null = br#"{"choices":[{"message":{"role":"assistant","content":null}}]}"#;
        assert!(
            matches!(parse_completion(null), Err(LlmError::Protocol(m)) if m.contains("content is null"))
        );
        assert!(matches!(
            parse_completion(br#"{"choices":[]}"#),
            Err(LlmError::Protocol(_))
        ));
        assert!(
            matches!(parse_completion(b"<html>oops</html>"), Err(LlmError::Protocol(m)) if m.contains("not JSON"))
        );
        let error = br#"{"error":{"message":"overloaded","code":503}}"#;
        assert_eq!(
            parse_completion(error),
            Err(LlmError::Status {
                status: 503,
                message: "overloaded".into()
            })
        );
    }

    #[test]
    fn stream_events() {
        assert_eq!(interpret_event(&event("[DONE]")), Ok(Event::Done));
        assert_eq!(interpret_event(&event(" [DONE] ")), Ok(Event::Done));
        let delta = r#"{"choices":[{"index":0,"delta":{"content":"He"}}]}"#;
        assert_eq!(
            interpret_event(&event(delta)),
            Ok(Event::Delta("He".into()))
        );
        let role = r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#;
        assert_eq!(interpret_event(&event(role)), Ok(Event::Nothing));
        let finish = r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#;
        assert_eq!(interpret_event(&event(finish)), Ok(Event::Nothing));
        let usage = r#"{"choices":[],"usage":{"total_tokens":3}}"#;
        assert_eq!(interpret_event(&event(usage)), Ok(Event::Nothing));
        assert!(matches!(
            interpret_event(&event("{nope")),
            Err(LlmError::Protocol(_))
        ));
        let error = r#"{"error":{"message":"context too long","code":400}}"#;
        assert_eq!(
            interpret_event(&event(error)),
            Err(LlmError::Status {
                status: 400,
                message: "context too long".into()
            })
        );
    }

    #[test]
    fn a_whole_event_stream_body_is_collected() {
        let body = b"data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n\
                     data: {\"choices\":[{\"delta\":{\"content\":\"b\"}}]}\n\n\
                     data: [DONE]\n\n\
                     data: {\"choices\":[{\"delta\":{\"content\":\"ignored\"}}]}\n\n";
        assert_eq!(collect_events(body), Ok("ab".to_string()));
    }

    #[test]
    fn debug_hides_the_key() {
        let config = OpenAiConfig {
            api_key: Some("sk-secret".into()),
            ..OpenAiConfig::default()
        };
        assert!(!format!("{config:?}").contains("sk-secret"));
    }
}
