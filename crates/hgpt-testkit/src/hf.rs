//! Fake Hugging Face inference server.
//!
//! [`FakeHf`] listens on `127.0.0.1` (ephemeral port), records every call and
//! answers through a [`Responder`]: a closure from the recorded [`HfCall`] to
//! an [`HfReply`]. Routes: `POST /models/{id}` and
//! `POST /models/{id}/pipeline/{task}` (inference), `GET /status/{id}`
//! (availability); any other route is recorded and answered 404.
//!
//! ```no_run
//! # async fn demo() {
//! use hgpt_core::task::TaskKind;
//! use hgpt_testkit::hf::FakeHf;
//! let server = FakeHf::with_models([("google/vit-base-patch16-224", TaskKind::ImageClassification)]).await;
//! let base_url = server.url(); // give this to the backend as its base URL
//! # let _ = base_url;
//! # }
//! ```

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hgpt_core::task::TaskKind;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Decides the reply to each recorded call.
pub type Responder = Arc<dyn Fn(&HfCall) -> HfReply + Send + Sync>;

/// One request the fake server received.
#[derive(Debug, Clone)]
pub struct HfCall {
    /// HTTP method (`POST`, `GET`).
    pub method: String,
    /// The request path, e.g. `/models/org/name/pipeline/feature-extraction`.
    pub path: String,
    /// The model id from the path (`org/name`); empty for unknown routes.
    pub model: String,
    /// The `/pipeline/{task}` suffix, if present.
    pub pipeline: Option<String>,
    /// Whether this is a `GET /status/{id}` call.
    pub is_status: bool,
    /// The `Content-Type` header, if sent.
    pub content_type: Option<String>,
    /// The `Authorization` header, if sent.
    pub authorization: Option<String>,
    /// The `Accept` header, if sent.
    pub accept: Option<String>,
    /// Every header, names lower-cased, in arrival order.
    pub headers: Vec<(String, String)>,
    /// The raw body.
    pub body: Bytes,
    /// The body parsed as JSON, when it is JSON.
    pub json: Option<Value>,
    /// When the server received the call.
    pub received_at: Instant,
}

impl HfCall {
    /// The first value of a header (name matched case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The token of an `Authorization: Bearer ...` header.
    pub fn bearer_token(&self) -> Option<&str> {
        self.authorization.as_deref()?.strip_prefix("Bearer ")
    }

    /// Whether this is an inference (`POST /models/...`) call.
    pub fn is_inference(&self) -> bool {
        !self.is_status && !self.model.is_empty()
    }
}

/// The fake server's answer to one call.
#[derive(Debug, Clone, PartialEq)]
pub struct HfReply {
    /// HTTP status.
    pub status: u16,
    /// The `Content-Type` header; `None` sends none.
    pub content_type: Option<String>,
    /// Extra headers (for example `Retry-After`).
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Bytes,
    /// How long the server waits before answering.
    pub delay: Duration,
}

impl HfReply {
    /// 200 with a JSON body.
    pub fn json(value: Value) -> Self {
        Self {
            status: 200,
            content_type: Some("application/json".into()),
            headers: Vec::new(),
            body: Bytes::from(value.to_string()),
            delay: Duration::ZERO,
        }
    }

    /// 200 with raw bytes of the given media type.
    pub fn bytes(content_type: impl Into<String>, data: impl Into<Bytes>) -> Self {
        Self {
            status: 200,
            content_type: Some(content_type.into()),
            headers: Vec::new(),
            body: data.into(),
            delay: Duration::ZERO,
        }
    }

    /// 200 with raw bytes and no `Content-Type` header.
    pub fn untyped(data: impl Into<Bytes>) -> Self {
        Self {
            content_type: None,
            ..Self::bytes("", data)
        }
    }

    /// An error status with the body `{"error": message}`.
    pub fn error(status: u16, message: impl Into<String>) -> Self {
        Self::json(json!({"error": message.into()})).with_status(status)
    }

    /// 503 "model is loading" with `estimated_time` in seconds.
    pub fn loading(estimated_time: f64) -> Self {
        Self::json(json!({
            "error": "Model is currently loading",
            "estimated_time": estimated_time,
        }))
        .with_status(503)
    }

    /// A `/status/{id}` answer: `{"loaded": loaded, "state": ...}`.
    pub fn status_loaded(loaded: bool) -> Self {
        let state = if loaded { "Loaded" } else { "Loadable" };
        Self::json(json!({
            "loaded": loaded,
            "state": state,
            "compute_type": "cpu",
            "framework": "transformers",
        }))
    }

    /// This reply with another status.
    pub fn with_status(mut self, status: u16) -> Self {
        self.status = status;
        self
    }

    /// This reply, sent after waiting `delay`.
    pub fn with_delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// This reply with an extra header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub(crate) fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, self.body).into_response();
        let headers = response.headers_mut();
        headers.remove(axum::http::header::CONTENT_TYPE);
        if let Some(ct) = self.content_type.as_deref()
            && let Ok(value) = HeaderValue::from_str(ct)
        {
            headers.insert(axum::http::header::CONTENT_TYPE, value);
        }
        for (name, value) in &self.headers {
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                headers.append(name, value);
            }
        }
        response
    }
}

/// A responder that answers calls in order with `replies` (the n-th call
/// gets the n-th reply; calls after the last get the last one again).
pub fn sequence(replies: Vec<HfReply>) -> Responder {
    let next = AtomicUsize::new(0);
    Arc::new(move |_call: &HfCall| {
        let n = next.fetch_add(1, Ordering::SeqCst);
        match replies.get(n).or(replies.last()) {
            Some(reply) => reply.clone(),
            None => HfReply::error(500, "no reply configured"),
        }
    })
}

/// A responder that answers every call with the same reply.
pub fn always(reply: HfReply) -> Responder {
    Arc::new(move |_call: &HfCall| reply.clone())
}

/// A responder for a set of models: inference calls get
/// [`canned_reply`] of the model's task type, status calls
/// [`HfReply::status_loaded`]`(true)`, unknown models 404
/// `{"error": "Model X does not exist"}`.
pub fn canned_by_model(models: BTreeMap<String, TaskKind>) -> Responder {
    Arc::new(move |call: &HfCall| match models.get(&call.model) {
        Some(_) if call.is_status => HfReply::status_loaded(true),
        Some(task) => canned_reply(*task),
        None => HfReply::error(404, format!("Model {} does not exist", call.model)),
    })
}

/// A running fake inference server. Dropping it stops it.
pub struct FakeHf {
    addr: SocketAddr,
    calls: Arc<Mutex<Vec<HfCall>>>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for FakeHf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeHf")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

#[derive(Clone)]
struct AppState {
    responder: Responder,
    calls: Arc<Mutex<Vec<HfCall>>>,
}

fn lock(calls: &Mutex<Vec<HfCall>>) -> MutexGuard<'_, Vec<HfCall>> {
    calls
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Model id and pipeline suffix of `org/name[/pipeline/task]`.
fn split_model_path(rest: &str) -> (String, Option<String>) {
    let rest = rest.trim_matches('/');
    match rest.split_once("/pipeline/") {
        Some((model, task)) => (model.to_string(), Some(task.to_string())),
        None => (rest.to_string(), None),
    }
}

fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

async fn handle(
    State(state): State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    let (model, pipeline, is_status, routed) = if let Some(rest) = path
        .strip_prefix("/models/")
        .filter(|_| method == Method::POST)
    {
        let (model, pipeline) = split_model_path(rest);
        let routed = !model.is_empty();
        (model, pipeline, false, routed)
    } else if let Some(rest) = path
        .strip_prefix("/status/")
        .filter(|_| method == Method::GET)
    {
        let model = rest.trim_matches('/').to_string();
        let routed = !model.is_empty();
        (model, None, true, routed)
    } else {
        (String::new(), None, false, false)
    };
    let call = HfCall {
        method: method.to_string(),
        path: path.clone(),
        model: if routed { model } else { String::new() },
        pipeline,
        is_status,
        content_type: header_text(&headers, "content-type"),
        authorization: header_text(&headers, "authorization"),
        accept: header_text(&headers, "accept"),
        headers: headers
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        json: serde_json::from_slice(&body).ok(),
        body,
        received_at: Instant::now(),
    };
    lock(&state.calls).push(call.clone());
    if !routed {
        return HfReply::error(404, format!("no route for {method} {path}")).into_response();
    }
    let reply = (state.responder)(&call);
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    reply.into_response()
}

impl FakeHf {
    /// Start a server answering through `responder`.
    ///
    /// # Panics
    /// When no loopback port can be bound (use [`FakeHf::try_start`] to
    /// handle that).
    pub async fn start(responder: Responder) -> FakeHf {
        match Self::try_start(responder).await {
            Ok(server) => server,
            Err(err) => panic!("cannot start the fake HF server on 127.0.0.1: {err}"),
        }
    }

    /// Start a server answering through `responder`, or the bind error.
    pub async fn try_start(responder: Responder) -> std::io::Result<FakeHf> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let calls = Arc::new(Mutex::new(Vec::new()));
        let state = AppState {
            responder,
            calls: Arc::clone(&calls),
        };
        let app = Router::new()
            .fallback(handle)
            .layer(DefaultBodyLimit::max(256 * 1024 * 1024))
            .with_state(state);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await;
        });
        Ok(FakeHf {
            addr,
            calls,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// Start a server that serves `models` with [`canned_by_model`].
    pub async fn with_models<I, K>(models: I) -> FakeHf
    where
        I: IntoIterator<Item = (K, TaskKind)>,
        K: Into<String>,
    {
        let map = models.into_iter().map(|(k, v)| (k.into(), v)).collect();
        Self::start(canned_by_model(map)).await
    }

    /// The base URL, e.g. `http://127.0.0.1:PORT` (no trailing slash).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every call received so far, in arrival order.
    pub fn calls(&self) -> Vec<HfCall> {
        lock(&self.calls).clone()
    }

    /// The inference calls received so far (no status or unknown routes).
    pub fn inference_calls(&self) -> Vec<HfCall> {
        lock(&self.calls)
            .iter()
            .filter(|c| c.is_inference())
            .cloned()
            .collect()
    }

    /// How many calls were received so far.
    pub fn call_count(&self) -> usize {
        lock(&self.calls).len()
    }

    /// Forget the recorded calls.
    pub fn clear_calls(&self) {
        lock(&self.calls).clear();
    }

    /// Stop the server and wait for it to finish (in-flight replies are
    /// completed first).
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for FakeHf {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

// ---------------------------------------------------------------------------
// Canned responses and tiny media files.

/// A realistic successful reply for a task type, in the Python client's
/// shapes: JSON predictions, or PNG / WAV / MP4 bytes for generating tasks.
pub fn canned_reply(task: TaskKind) -> HfReply {
    use TaskKind as T;
    let labels = |pairs: &[(&str, f64)]| -> Value {
        Value::Array(
            pairs
                .iter()
                .map(|(l, s)| json!({"label": l, "score": s}))
                .collect(),
        )
    };
    match task {
        T::TokenClassification => HfReply::json(json!([
            {"entity_group": "PER", "score": 0.9987, "word": "Sarah", "start": 11, "end": 16},
            {"entity_group": "LOC", "score": 0.9971, "word": "London", "start": 29, "end": 35},
        ])),
        T::Text2TextGeneration | T::TextGeneration | T::Conversational => HfReply::json(
            json!([{"generated_text": "The quick brown fox jumps over the lazy dog."}]),
        ),
        T::Summarization => HfReply::json(json!([{
            "summary_text": "A short summary of the given text."
        }])),
        T::Translation => HfReply::json(json!([{"translation_text": "Bonjour le monde."}])),
        T::QuestionAnswering => {
            HfReply::json(json!({"answer": "Paris", "score": 0.9731, "start": 28, "end": 33}))
        }
        T::SentenceSimilarity => HfReply::json(json!([0.8213, 0.1047])),
        T::FeatureExtraction => HfReply::json(json!([[
            0.0213, -0.0871, 0.0442, 0.1309, -0.0058, 0.0761, -0.1123, 0.0337
        ]])),
        T::TextClassification => HfReply::json(Value::Array(vec![labels(&[
            ("POSITIVE", 0.9998),
            ("NEGATIVE", 0.0002),
        ])])),
        T::ZeroShotClassification => {
            HfReply::json(labels(&[("positive", 0.91), ("negative", 0.09)]))
        }
        T::TabularClassification => HfReply::json(json!(["1"])),
        T::ObjectDetection => HfReply::json(json!([
            {"label": "cat", "score": 0.9982, "box": {"xmin": 1, "ymin": 1, "xmax": 6, "ymax": 6}},
            {"label": "remote", "score": 0.9551, "box": {"xmin": 0, "ymin": 5, "xmax": 3, "ymax": 7}},
        ])),
        T::ImageClassification => HfReply::json(labels(&[
            ("tabby, tabby cat", 0.9412),
            ("Egyptian cat", 0.0387),
        ])),
        T::ZeroShotImageClassification => HfReply::json(labels(&[("cat", 0.93), ("dog", 0.07)])),
        T::ImageToText => {
            HfReply::json(json!([{"generated_text": "a cat sitting on a couch with a remote"}]))
        }
        T::VisualQuestionAnswering => HfReply::json(
            json!([{"answer": "two", "score": 0.9412}, {"answer": "one", "score": 0.0311}]),
        ),
        T::DocumentQuestionAnswering => {
            HfReply::json(json!([{"answer": "us-001", "score": 0.9721, "start": 16, "end": 16}]))
        }
        T::ImageSegmentation => {
            let mask: Vec<u8> = (0..64).map(|i| if (i % 8) < 4 { 255 } else { 0 }).collect();
            let other: Vec<u8> = mask.iter().map(|v| 255 - v).collect();
            HfReply::json(json!([
                {"label": "cat", "score": 0.9931, "mask": B64.encode(png_gray(8, 8, &mask))},
                {"label": "couch", "score": 0.9512, "mask": B64.encode(png_gray(8, 8, &other))},
            ]))
        }
        T::DepthEstimation => {
            let depth: Vec<u8> = (0..64u8).map(|i| i * 4).collect();
            let predicted: Vec<Vec<f64>> = (0..8)
                .map(|y| (0..8).map(|x| f64::from(y * 8 + x) / 10.0).collect())
                .collect();
            HfReply::json(json!({
                "predicted_depth": predicted,
                "depth": B64.encode(png_gray(8, 8, &depth)),
            }))
        }
        T::AutomaticSpeechRecognition => HfReply::json(json!({
            "text": "hello world",
            "chunks": [
                {"text": "hello", "timestamp": [0.0, 0.4]},
                {"text": "world", "timestamp": [0.5, 0.9]},
            ],
        })),
        T::AudioToAudio => HfReply::json(json!([
            {"label": "speech_0", "content-type": "audio/wav", "blob": B64.encode(sample_wav())},
        ])),
        T::AudioClassification => HfReply::json(labels(&[("speech", 0.8821), ("music", 0.0712)])),
        T::TextToSpeech => HfReply::bytes("audio/wav", sample_wav()),
        T::TextToVideo => HfReply::bytes("video/mp4", sample_mp4()),
        T::ImageToImage
        | T::TextToImage
        | T::CannyControl
        | T::HedControl
        | T::MlsdControl
        | T::NormalControl
        | T::OpenposeControl
        | T::CannyTextToImage
        | T::DepthTextToImage
        | T::HedTextToImage
        | T::MlsdTextToImage
        | T::NormalTextToImage
        | T::OpenposeTextToImage
        | T::SegTextToImage => HfReply::bytes("image/png", sample_png()),
    }
}

/// A valid 8x8 RGB PNG (a colour gradient).
pub fn sample_png() -> Vec<u8> {
    let mut pixels = Vec::with_capacity(8 * 8 * 3);
    for y in 0..8u8 {
        for x in 0..8u8 {
            pixels.extend_from_slice(&[x * 32, y * 32, 128]);
        }
    }
    png_rgb(8, 8, &pixels)
}

/// A valid mono 16-bit 16 kHz WAV file holding 50 ms of a 440 Hz tone.
pub fn sample_wav() -> Vec<u8> {
    let rate = 16_000u32;
    let samples: Vec<i16> = (0..rate / 20)
        .map(|i| {
            let t = f64::from(i) / f64::from(rate);
            ((t * 440.0 * std::f64::consts::TAU).sin() * 8000.0) as i16
        })
        .collect();
    wav_pcm16(rate, &samples)
}

/// A few bytes that start like an MP4 file (`ftyp` box) and sniff as
/// `video/mp4`; not playable.
pub fn sample_mp4() -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&24u32.to_be_bytes());
    out.extend_from_slice(b"ftypisom");
    out.extend_from_slice(&0x200u32.to_be_bytes());
    out.extend_from_slice(b"isomiso2");
    out.extend_from_slice(&8u32.to_be_bytes());
    out.extend_from_slice(b"free");
    out
}

/// Encode a mono 16-bit PCM WAV file.
pub fn wav_pcm16(sample_rate: u32, samples: &[i16]) -> Vec<u8> {
    let data_len = (samples.len() * 2) as u32;
    let mut out = Vec::with_capacity(44 + samples.len() * 2);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data_len).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes()); // fmt chunk size
    out.extend_from_slice(&1u16.to_le_bytes()); // PCM
    out.extend_from_slice(&1u16.to_le_bytes()); // mono
    out.extend_from_slice(&sample_rate.to_le_bytes());
    out.extend_from_slice(&(sample_rate * 2).to_le_bytes()); // byte rate
    out.extend_from_slice(&2u16.to_le_bytes()); // block align
    out.extend_from_slice(&16u16.to_le_bytes()); // bits per sample
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    for sample in samples {
        out.extend_from_slice(&sample.to_le_bytes());
    }
    out
}

/// Encode an 8-bit RGB PNG (`pixels` is `width * height * 3` bytes, row-major).
///
/// # Panics
/// When `pixels` has the wrong length.
pub fn png_rgb(width: u32, height: u32, pixels: &[u8]) -> Vec<u8> {
    png_encode(width, height, 2, 3, pixels)
}

/// Encode an 8-bit greyscale PNG (`pixels` is `width * height` bytes).
///
/// # Panics
/// When `pixels` has the wrong length.
pub fn png_gray(width: u32, height: u32, pixels: &[u8]) -> Vec<u8> {
    png_encode(width, height, 0, 1, pixels)
}

fn png_encode(width: u32, height: u32, color_type: u8, channels: usize, pixels: &[u8]) -> Vec<u8> {
    let row = width as usize * channels;
    assert_eq!(
        pixels.len(),
        row * height as usize,
        "pixel buffer does not match the size"
    );
    // Filter type 0 (none) before each row.
    let mut raw = Vec::with_capacity((row + 1) * height as usize);
    for line in pixels.chunks(row.max(1)).take(height as usize) {
        raw.push(0);
        raw.extend_from_slice(line);
    }
    let mut ihdr = Vec::with_capacity(13);
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, color_type, 0, 0, 0]);
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    png_chunk(&mut out, b"IHDR", &ihdr);
    png_chunk(&mut out, b"IDAT", &zlib_stored(&raw));
    png_chunk(&mut out, b"IEND", &[]);
    out
}

fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let start = out.len();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let crc = crc32(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
}

/// A zlib stream of uncompressed (stored) deflate blocks.
fn zlib_stored(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x78, 0x01];
    let mut blocks = data.chunks(65_535).peekable();
    if blocks.peek().is_none() {
        out.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
    }
    while let Some(block) = blocks.next() {
        let last = blocks.peek().is_none();
        out.push(u8::from(last));
        let len = block.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(block);
    }
    out.extend_from_slice(&adler32(data).to_be_bytes());
    out
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn adler32(data: &[u8]) -> u32 {
    let (mut a, mut b) = (1u32, 0u32);
    for &byte in data {
        a = (a + u32::from(byte)) % 65_521;
        b = (b + a) % 65_521;
    }
    (b << 16) | a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_match_known_values() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        assert_eq!(adler32(b"Wikipedia"), 0x11e6_0398);
    }

    #[test]
    fn media_samples_have_their_magic() {
        assert!(sample_png().starts_with(b"\x89PNG\r\n\x1a\n"));
        let wav = sample_wav();
        assert_eq!(&wav[0..4], b"RIFF");
        assert_eq!(&wav[8..12], b"WAVE");
        assert_eq!(wav.len(), 44 + 800 * 2);
        assert_eq!(&sample_mp4()[4..8], b"ftyp");
    }

    #[test]
    fn model_paths_split() {
        assert_eq!(split_model_path("org/name"), ("org/name".into(), None));
        assert_eq!(
            split_model_path("org/name/pipeline/feature-extraction"),
            ("org/name".into(), Some("feature-extraction".into()))
        );
    }

    #[test]
    fn every_task_has_a_canned_reply() {
        for task in TaskKind::ALL {
            let reply = canned_reply(*task);
            assert_eq!(reply.status, 200, "{task}");
            assert!(!reply.body.is_empty(), "{task}");
        }
    }

    #[tokio::test]
    async fn records_calls_and_answers_through_the_responder() {
        let server = FakeHf::with_models([("org/model", TaskKind::TextClassification)]).await;
        let url = server.url();
        let port = server.addr().port();
        // A raw HTTP/1.1 exchange keeps the testkit free of an HTTP client.
        let reply = raw_request(
            port,
            &format!(
                "POST /models/org/model HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer t\r\n\
                 Content-Length: 2\r\nConnection: close\r\n\r\nhi",
                url.trim_start_matches("http://")
            ),
        )
        .await;
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
        assert!(reply.contains("POSITIVE"), "{reply}");
        let missing = raw_request(
            port,
            "GET /status/org/other HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
        assert!(
            missing.contains("Model org/other does not exist"),
            "{missing}"
        );
        let calls = server.calls();
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0].model, "org/model");
        assert_eq!(calls[0].content_type, None);
        assert_eq!(calls[0].bearer_token(), Some("t"));
        assert_eq!(&calls[0].body[..], b"hi");
        assert!(calls[1].is_status);
        server.shutdown().await;
    }

    async fn raw_request(port: u16, request: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        stream.read_to_end(&mut out).await.unwrap();
        String::from_utf8_lossy(&out).into_owned()
    }
}
