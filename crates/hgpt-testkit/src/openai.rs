//! Fake OpenAI-compatible chat server.
//!
//! [`FakeLlm`] serves `POST /v1/chat/completions` and `GET /v1/models` on
//! 127.0.0.1 with an ephemeral port. Every chat request is recorded as an
//! [`LlmCall`] and answered by a responder function returning an
//! [`LlmReply`]: plain JSON, or Server-Sent Events when the request asks for
//! `stream: true`.
//!
//! ```no_run
//! # async fn demo() {
//! use hgpt_testkit::openai::{FakeLlm, LlmReply};
//! let llm = FakeLlm::from_fn(|call| {
//!     if call.system().contains("plan") {
//!         LlmReply::text("[]")
//!     } else {
//!         LlmReply::text("Hello there")
//!     }
//! })
//! .await;
//! let base_url = llm.url(); // http://127.0.0.1:PORT/v1
//! # let _ = base_url;
//! # }
//! ```

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Decides the answer to each chat request.
pub type Responder = Arc<dyn Fn(&LlmCall) -> LlmReply + Send + Sync>;

/// The model name `GET /v1/models` lists unless another is configured.
pub const DEFAULT_MODEL: &str = "fake-model";

/// One message of a recorded request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LlmMessage {
    /// `system`, `user`, `assistant`, ...
    pub role: String,
    /// The text (parts of a multi-part content are joined with newlines).
    pub content: String,
}

/// A chat request as the fake server received it.
#[derive(Debug, Clone)]
pub struct LlmCall {
    /// The `model` field.
    pub model: String,
    /// The conversation.
    pub messages: Vec<LlmMessage>,
    /// The `stream` field (false when absent).
    pub stream: bool,
    /// The `temperature` field.
    pub temperature: Option<f64>,
    /// The `max_tokens` field.
    pub max_tokens: Option<u64>,
    /// The `Authorization` header.
    pub authorization: Option<String>,
    /// All request headers (names lowercase).
    pub headers: Vec<(String, String)>,
    /// The whole JSON body, for fields not broken out above (`logit_bias`, ...).
    pub body: Value,
    /// When the request arrived.
    pub received_at: Instant,
}

impl LlmCall {
    /// The content of the first system message, or `""`.
    pub fn system(&self) -> &str {
        self.messages
            .iter()
            .find(|m| m.role == "system")
            .map_or("", |m| m.content.as_str())
    }

    /// The content of the last user message, or `""`.
    pub fn last_user(&self) -> &str {
        self.messages
            .iter()
            .rev()
            .find(|m| m.role == "user")
            .map_or("", |m| m.content.as_str())
    }

    /// The id of the first candidate the last user message lists (the
    /// selection prompt), or `"none"`.
    pub fn first_candidate(&self) -> &str {
        crate::first_listed_candidate(self.last_user()).unwrap_or("none")
    }

    /// Whether any message contains `needle`.
    pub fn contains(&self, needle: &str) -> bool {
        self.messages.iter().any(|m| m.content.contains(needle))
    }

    /// A request header by (case-insensitive) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What the answer body is.
#[derive(Debug, Clone)]
enum ReplyBody {
    /// A completion with this text.
    Text(String),
    /// An OpenAI-style error.
    Error { status: u16, message: String },
    /// Exactly these bytes.
    Raw {
        status: u16,
        content_type: String,
        body: Vec<u8>,
    },
}

/// How the fake server answers one request.
#[derive(Debug, Clone)]
pub struct LlmReply {
    body: ReplyBody,
    delay: Duration,
    chunk_delay: Duration,
    headers: Vec<(String, String)>,
    never_stream: bool,
    break_after: Option<usize>,
    piece_chars: Option<usize>,
}

impl LlmReply {
    fn new(body: ReplyBody) -> Self {
        Self {
            body,
            delay: Duration::ZERO,
            chunk_delay: Duration::ZERO,
            headers: Vec::new(),
            never_stream: false,
            break_after: None,
            piece_chars: None,
        }
    }

    /// A successful completion. Streamed requests get it as SSE: a role
    /// chunk, one content chunk per word (whitespace kept), a
    /// `finish_reason` chunk and `data: [DONE]`.
    pub fn text(text: impl Into<String>) -> Self {
        Self::new(ReplyBody::Text(text.into()))
    }

    /// An error status with an OpenAI error body
    /// `{"error": {"message", "type", "param", "code"}}`.
    pub fn error(status: u16, message: impl Into<String>) -> Self {
        Self::new(ReplyBody::Error {
            status,
            message: message.into(),
        })
    }

    /// Exactly `body` with this status and content type (for malformed answers).
    pub fn raw(status: u16, content_type: impl Into<String>, body: impl Into<Vec<u8>>) -> Self {
        Self::new(ReplyBody::Raw {
            status,
            content_type: content_type.into(),
            body: body.into(),
        })
    }

    /// Wait this long before answering.
    pub fn with_delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Wait this long before each SSE chunk of a streamed answer.
    pub fn with_chunk_delay(mut self, delay: Duration) -> Self {
        self.chunk_delay = delay;
        self
    }

    /// Stream the text in pieces of this many characters (about a token
    /// each at 4) instead of one per word.
    pub fn with_pieces_of(mut self, chars: usize) -> Self {
        self.piece_chars = Some(chars.max(1));
        self
    }

    /// Add a response header (e.g. `Retry-After`).
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Answer with plain JSON even when the request asks for a stream.
    pub fn ignoring_stream(mut self) -> Self {
        self.never_stream = true;
        self
    }

    /// For streamed answers: send this many SSE chunks (the role chunk
    /// counts), pause briefly so they reach the client, then break the
    /// connection without finishing the body.
    pub fn breaking_after(mut self, chunks: usize) -> Self {
        self.break_after = Some(chunks);
        self
    }
}

struct Shared {
    responder: Responder,
    model: String,
    calls: Mutex<Vec<LlmCall>>,
    served: AtomicUsize,
}

impl Shared {
    fn calls(&self) -> MutexGuard<'_, Vec<LlmCall>> {
        // A panicking responder must not hide the calls from the test.
        self.calls
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A running fake OpenAI-compatible server; stops when dropped.
pub struct FakeLlm {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for FakeLlm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeLlm")
            .field("addr", &self.addr)
            .field("model", &self.shared.model)
            .field("calls", &self.shared.calls().len())
            .finish()
    }
}

impl FakeLlm {
    /// Start a server answering with `responder`; `/v1/models` lists
    /// [`DEFAULT_MODEL`].
    pub async fn start(responder: Responder) -> Self {
        Self::start_with_model(DEFAULT_MODEL, responder).await
    }

    /// Start a server whose `/v1/models` lists `model`.
    pub async fn start_with_model(model: impl Into<String>, responder: Responder) -> Self {
        let shared = Arc::new(Shared {
            responder,
            model: model.into(),
            calls: Mutex::new(Vec::new()),
            served: AtomicUsize::new(0),
        });
        let app = Router::new()
            .route("/v1/chat/completions", post(chat_completions))
            .route("/v1/models", get(models))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener
            .local_addr()
            .expect("local address of the fake LLM");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            // SSE chunks are small writes: no Nagle delay, as real servers.
            let listener = listener.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await;
        });
        Self {
            addr,
            shared,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Start a server answering with a closure.
    pub async fn from_fn(responder: impl Fn(&LlmCall) -> LlmReply + Send + Sync + 'static) -> Self {
        Self::start(Arc::new(responder)).await
    }

    /// Start a server giving these replies in order, then repeating the last
    /// (an empty list answers 500).
    pub async fn scripted(replies: Vec<LlmReply>) -> Self {
        let next = AtomicUsize::new(0);
        Self::from_fn(move |_| {
            let i = next.fetch_add(1, Ordering::SeqCst);
            match replies.get(i).or_else(|| replies.last()) {
                Some(reply) => reply.clone(),
                None => LlmReply::error(500, "the fake LLM has no scripted reply"),
            }
        })
        .await
    }

    /// The API root to configure clients with: `http://127.0.0.1:PORT/v1`.
    pub fn url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// The socket address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every chat request received so far, in arrival order.
    pub fn calls(&self) -> Vec<LlmCall> {
        self.shared.calls().clone()
    }

    /// How many chat requests were received so far.
    pub fn call_count(&self) -> usize {
        self.shared.calls().len()
    }

    /// How many chat requests were answered completely so far (streams count
    /// once their last chunk was sent).
    pub fn served(&self) -> usize {
        self.shared.served.load(Ordering::SeqCst)
    }

    /// Stop accepting connections and wait (up to 5 s) for open ones to end.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let Some(mut task) = self.task.take() else {
            return;
        };
        if tokio::time::timeout(Duration::from_secs(5), &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
    }
}

impl Drop for FakeLlm {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

async fn models(State(shared): State<Arc<Shared>>) -> Response {
    axum::Json(json!({
        "object": "list",
        "data": [{"id": shared.model, "object": "model", "created": 0, "owned_by": "hgpt-testkit"}],
    }))
    .into_response()
}

fn message_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn parse_call(headers: &HeaderMap, body: Value) -> LlmCall {
    let messages = body
        .get("messages")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .map(|m| LlmMessage {
                    role: m
                        .get("role")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string(),
                    content: message_text(m.get("content").unwrap_or(&Value::Null)),
                })
                .collect()
        })
        .unwrap_or_default();
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    LlmCall {
        model: body
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        messages,
        stream: body.get("stream").and_then(Value::as_bool).unwrap_or(false),
        temperature: body.get("temperature").and_then(Value::as_f64),
        max_tokens: body.get("max_tokens").and_then(Value::as_u64),
        authorization: headers
            .iter()
            .find(|(k, _)| k == "authorization")
            .map(|(_, v)| v.clone()),
        headers,
        body,
        received_at: Instant::now(),
    }
}

fn error_response(status: u16, message: &str) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let kind = match status.as_u16() {
        401 => "invalid_request_error",
        429 => "rate_limit_error",
        400..=499 => "invalid_request_error",
        _ => "server_error",
    };
    let body = json!({"error": {"message": message, "type": kind, "param": null, "code": null}});
    (status, axum::Json(body)).into_response()
}

async fn chat_completions(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return error_response(400, &format!("the request body is not JSON: {e}")),
    };
    let call = parse_call(&headers, body);
    shared.calls().push(call.clone());
    let reply = (shared.responder)(&call);
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let streamed = call.stream && !reply.never_stream && matches!(reply.body, ReplyBody::Text(_));
    let mut response = match &reply.body {
        ReplyBody::Text(text) if streamed => sse_response(&shared, &call.model, text, &reply),
        ReplyBody::Text(text) => {
            shared.served.fetch_add(1, Ordering::SeqCst);
            axum::Json(completion_json(&call, text)).into_response()
        }
        ReplyBody::Error { status, message } => {
            shared.served.fetch_add(1, Ordering::SeqCst);
            error_response(*status, message)
        }
        ReplyBody::Raw {
            status,
            content_type,
            body,
        } => {
            shared.served.fetch_add(1, Ordering::SeqCst);
            let status = StatusCode::from_u16(*status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let mut response = (status, body.clone()).into_response();
            if let Ok(value) = HeaderValue::from_str(content_type) {
                response.headers_mut().insert(header::CONTENT_TYPE, value);
            }
            response
        }
    };
    for (name, value) in &reply.headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            response.headers_mut().append(name, value);
        }
    }
    response
}

fn word_count(text: &str) -> usize {
    text.split_whitespace().count()
}

fn completion_json(call: &LlmCall, text: &str) -> Value {
    let prompt_tokens: usize = call.messages.iter().map(|m| word_count(&m.content)).sum();
    let completion_tokens = word_count(text);
    json!({
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 0,
        "model": call.model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "finish_reason": "stop",
        }],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    })
}

/// The text cut into deltas at word ends, whitespace kept with the word before.
fn deltas(text: &str) -> Vec<&str> {
    text.split_inclusive(char::is_whitespace).collect()
}

/// `text` in pieces of `size` characters (the last may be shorter).
pub fn pieces_of(text: &str, size: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    chars
        .chunks(size.max(1))
        .map(|piece| piece.iter().collect())
        .collect()
}

fn chunk(model: &str, delta: Value, finish_reason: Option<&str>) -> Bytes {
    let value = json!({
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    });
    Bytes::from(format!("data: {value}\n\n"))
}

fn sse_response(shared: &Arc<Shared>, model: &str, text: &str, reply: &LlmReply) -> Response {
    let mut chunks = vec![chunk(
        model,
        json!({"role": "assistant", "content": ""}),
        None,
    )];
    let pieces: Vec<String> = match reply.piece_chars {
        Some(size) => pieces_of(text, size),
        None => deltas(text).into_iter().map(str::to_string).collect(),
    };
    chunks.extend(
        pieces
            .into_iter()
            .map(|d| chunk(model, json!({"content": d}), None)),
    );
    chunks.push(chunk(model, json!({}), Some("stop")));
    chunks.push(Bytes::from_static(b"data: [DONE]\n\n"));
    struct Feed {
        chunks: std::vec::IntoIter<Bytes>,
        sent: usize,
        delay: Duration,
        break_after: Option<usize>,
        broken: bool,
        shared: Arc<Shared>,
    }
    let feed = Feed {
        chunks: chunks.into_iter(),
        sent: 0,
        delay: reply.chunk_delay,
        break_after: reply.break_after,
        broken: false,
        shared: shared.clone(),
    };
    let body = futures::stream::unfold(feed, |mut feed| async move {
        if feed.broken {
            return None;
        }
        if feed.break_after.is_some_and(|n| feed.sent >= n) {
            feed.broken = true;
            // Let the chunks already produced reach the client first.
            tokio::time::sleep(feed.delay.max(Duration::from_millis(20))).await;
            let error = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "fake break");
            return Some((Err(error), feed));
        }
        let next = feed.chunks.next();
        let Some(bytes) = next else {
            feed.shared.served.fetch_add(1, Ordering::SeqCst);
            return None;
        };
        if !feed.delay.is_zero() {
            tokio::time::sleep(feed.delay).await;
        }
        feed.sent += 1;
        Some((Ok::<_, std::io::Error>(bytes), feed))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(body))
        .unwrap_or_else(|_| error_response(500, "cannot build the stream"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_keep_all_text() {
        let text = "Hello  big\nworld ";
        let parts = deltas(text);
        assert_eq!(parts.concat(), text);
        assert!(parts.len() >= 3);
    }

    #[test]
    fn call_helpers() {
        let body = json!({
            "model": "m",
            "messages": [
                {"role": "system", "content": "plan things"},
                {"role": "user", "content": "first"},
                {"role": "assistant", "content": "ok"},
                {"role": "user", "content": [{"type": "text", "text": "second"}]},
            ],
            "stream": true,
        });
        let call = parse_call(&HeaderMap::new(), body);
        assert_eq!(call.system(), "plan things");
        assert_eq!(call.last_user(), "second");
        assert!(call.contains("ok"));
        assert!(!call.contains("missing"));
        assert!(call.stream);
    }
}
