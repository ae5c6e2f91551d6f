//! A fake of hosted inference as the Hub serves it: one loopback server that
//! plays the Hub API (`GET /api/models/{id}` with provider mappings, model
//! listings, model cards) and the router with its providers:
//! `hf-inference` (the wire protocol, answered by [`canned_reply`]),
//! `fal-ai` (direct calls and its queue), `replicate` (predictions, polled)
//! and `together` (images, speech, video jobs), with result files under
//! `/files/`. Every request is recorded. [`Faults`] make providers misbehave
//! the ways real ones do.

use crate::hf::{canned_reply, sample_mp4, sample_png, sample_wav};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hgpt_core::task::TaskKind;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;

/// One request the fake received.
#[derive(Debug, Clone)]
pub struct RouterCall {
    /// `GET`, `POST`.
    pub method: String,
    /// The path.
    pub path: String,
    /// The query string, if any.
    pub query: Option<String>,
    /// Headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body parsed as JSON, when it is JSON.
    pub json: Option<Value>,
    /// The raw body.
    pub body: Bytes,
}

impl RouterCall {
    /// The first value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Ways the fake providers misbehave (all off by default).
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Queued jobs and predictions end failed.
    pub jobs_fail: bool,
    /// Queued jobs never finish.
    pub jobs_never_finish: bool,
    /// Status polls answer 404: the provider forgot the job.
    pub jobs_unknown: bool,
    /// Result URLs point at this base instead of the fake's own `/files/`
    /// (a private address, say).
    pub result_base: Option<String>,
    /// Result files are HTML pages instead of the promised media.
    pub results_not_media: bool,
    /// How many status polls say "still running" before a job completes.
    pub polls_before_done: usize,
    /// How many status polls (of all jobs) first answer 503, as a gateway
    /// under load does.
    pub flaky_polls: usize,
}

struct Shared {
    url: String,
    models: BTreeMap<String, Value>,
    listings: BTreeMap<String, Value>,
    cards: BTreeMap<String, String>,
    faults: Mutex<Faults>,
    /// (Hub API, provider) answer delays.
    delays: Mutex<(std::time::Duration, std::time::Duration)>,
    calls: Mutex<Vec<RouterCall>>,
    polls: Mutex<BTreeMap<String, usize>>,
    results: Mutex<BTreeMap<String, Value>>,
    jobs: AtomicUsize,
    flaky_answered: AtomicUsize,
}

/// A running fake Hub API and router. Dropping it stops it.
pub struct FakeRouter {
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeRouter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A model's info document: its pipeline tag and provider mapping
/// `(provider, providerId, task, status)`, in the given order.
pub fn model_info(pipeline_tag: &str, mapping: &[(&str, &str, &str, &str)]) -> Value {
    let mut object = serde_json::Map::new();
    for (provider, provider_id, task, status) in mapping {
        object.insert(
            (*provider).to_string(),
            json!({"status": status, "providerId": provider_id, "task": task, "isModelAuthor": false}),
        );
    }
    json!({"pipeline_tag": pipeline_tag, "inferenceProviderMapping": object})
}

impl FakeRouter {
    /// Serve `models` (id -> [`model_info`] document; the object form's key
    /// order is written as given), `listings` (task -> `/api/models` answer)
    /// and `cards` (id -> README.md).
    pub async fn start(
        models: BTreeMap<String, Value>,
        listings: BTreeMap<String, Value>,
        cards: BTreeMap<String, String>,
    ) -> FakeRouter {
        let listener = match TcpListener::bind("127.0.0.1:0").await {
            Ok(listener) => listener,
            Err(e) => panic!("cannot bind a loopback port: {e}"),
        };
        let url = match listener.local_addr() {
            Ok(addr) => format!("http://{addr}"),
            Err(e) => panic!("no local address: {e}"),
        };
        let shared = Arc::new(Shared {
            url,
            models,
            listings,
            cards,
            faults: Mutex::new(Faults::default()),
            delays: Mutex::new(Default::default()),
            calls: Mutex::new(Vec::new()),
            polls: Mutex::new(BTreeMap::new()),
            results: Mutex::new(BTreeMap::new()),
            jobs: AtomicUsize::new(0),
            flaky_answered: AtomicUsize::new(0),
        });
        let app = Router::new()
            .fallback(handle)
            .layer(DefaultBodyLimit::max(64 * 1024 * 1024))
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeRouter { shared, task }
    }

    /// The base URL (both the Hub endpoint and the router).
    pub fn url(&self) -> &str {
        &self.shared.url
    }

    /// Change how the providers behave from now on.
    pub fn set_faults(&self, faults: Faults) {
        *lock(&self.shared.faults) = faults;
    }

    /// Answer the Hub API after `hub` and provider submissions after
    /// `provider` (as a benchmark's stand-in for network and model time).
    pub fn set_delays(&self, hub: std::time::Duration, provider: std::time::Duration) {
        *lock(&self.shared.delays) = (hub, provider);
    }

    /// Every request so far.
    pub fn calls(&self) -> Vec<RouterCall> {
        lock(&self.shared.calls).clone()
    }

    /// The requests to the Hub API so far.
    pub fn hub_calls(&self) -> Vec<RouterCall> {
        self.calls()
            .into_iter()
            .filter(|c| c.path.starts_with("/api/"))
            .collect()
    }

    /// Forget the recorded requests.
    pub fn clear_calls(&self) {
        lock(&self.shared.calls).clear();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

fn json_reply(status: u16, value: Value) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        [("content-type", "application/json")],
        value.to_string(),
    )
        .into_response()
}

fn not_found(what: &str) -> Response {
    json_reply(404, json!({"error": format!("{what} not found")}))
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let call = RouterCall {
        method: method.to_string(),
        path: uri.path().to_string(),
        query: uri.query().map(str::to_string),
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
    };
    lock(&shared.calls).push(call.clone());
    let faults = lock(&shared.faults).clone();
    let path = call.path.clone();
    let (hub_delay, provider_delay) = *lock(&shared.delays);
    let delay = if path.starts_with("/api/") {
        hub_delay
    } else if call.method == "POST" {
        provider_delay
    } else {
        std::time::Duration::ZERO
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if let Some(rest) = path.strip_prefix("/api/models") {
        return hub_api(&shared, rest, &call);
    }
    if let Some(name) = path.strip_prefix("/files/") {
        return file(name, &faults);
    }
    if let Some(model) = path.strip_suffix("/resolve/main/README.md") {
        return match shared.cards.get(model.trim_start_matches('/')) {
            Some(card) => (StatusCode::OK, card.clone()).into_response(),
            None => not_found("README.md"),
        };
    }
    if let Some(rest) = path.strip_prefix("/hf-inference/models/") {
        let model = rest.split("/pipeline/").next().unwrap_or(rest);
        let task = shared
            .models
            .get(model)
            .and_then(|info| info.get("pipeline_tag"))
            .and_then(Value::as_str)
            .and_then(TaskKind::parse);
        return match task {
            Some(task) => canned_reply(task).into_response(),
            None => not_found(model),
        };
    }
    let is_poll = call.method == "GET"
        && ["/fal-ai/", "/replicate/", "/together/"]
            .iter()
            .any(|p| path.starts_with(p));
    if is_poll && shared.flaky_answered.fetch_add(1, Ordering::Relaxed) < faults.flaky_polls {
        return json_reply(503, json!({"error": "upstream overloaded"}));
    }
    if let Some(rest) = path.strip_prefix("/fal-ai/") {
        return fal_ai(&shared, rest, &call, &faults);
    }
    if let Some(rest) = path.strip_prefix("/replicate/") {
        return replicate(&shared, rest, &call, &faults);
    }
    if let Some(rest) = path.strip_prefix("/together/") {
        return together(&shared, rest, &call, &faults);
    }
    not_found(&format!("route {path}"))
}

fn hub_api(shared: &Shared, rest: &str, call: &RouterCall) -> Response {
    let id = rest.trim_start_matches('/');
    if id.is_empty() {
        let query = call.query.clone().unwrap_or_default();
        let task = query
            .split('&')
            .find_map(|pair| pair.strip_prefix("pipeline_tag="))
            .unwrap_or_default();
        return match shared.listings.get(task) {
            Some(listing) => json_reply(200, listing.clone()),
            None => json_reply(200, json!([])),
        };
    }
    match shared.models.get(id) {
        Some(info) => {
            let mut info = info.clone();
            if let Value::Object(map) = &mut info {
                map.insert("id".into(), json!(id));
                map.insert("_id".into(), json!("0123"));
            }
            json_reply(200, info)
        }
        None => json_reply(404, json!({"error": "Repository not found"})),
    }
}

fn file(name: &str, faults: &Faults) -> Response {
    if faults.results_not_media {
        return (
            StatusCode::OK,
            [("content-type", "text/html")],
            "<html><body>Sign in</body></html>",
        )
            .into_response();
    }
    let (mime, bytes) = match name.rsplit('.').next() {
        Some("png") => ("image/png", sample_png()),
        Some("wav") => ("audio/wav", sample_wav()),
        Some("mp4") => ("video/mp4", sample_mp4()),
        Some("txt") => ("text/plain", b"hello from a file".to_vec()),
        _ => return not_found(name),
    };
    (StatusCode::OK, [("content-type", mime)], bytes).into_response()
}

fn result_url(shared: &Shared, faults: &Faults, name: &str) -> String {
    let base = faults.result_base.as_deref().unwrap_or(&shared.url);
    format!("{base}/files/{name}")
}

fn new_job(shared: &Shared, prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        shared.jobs.fetch_add(1, Ordering::Relaxed) + 1
    )
}

/// Whether a job is done after this poll.
fn poll_done(shared: &Shared, faults: &Faults, job: &str) -> bool {
    if faults.jobs_never_finish {
        return false;
    }
    let mut polls = lock(&shared.polls);
    let count = polls.entry(job.to_string()).or_insert(0);
    *count += 1;
    *count > faults.polls_before_done
}

fn known_job(shared: &Shared, job: &str) -> bool {
    lock(&shared.polls).contains_key(job)
}

fn fal_answer(shared: &Shared, faults: &Faults, body: &Value) -> Value {
    if body.get("audio_url").is_some() {
        json!({"text": "hello from fal"})
    } else if body.get("text").is_some() {
        json!({"audio": {"url": result_url(shared, faults, "speech.wav"), "content_type": "audio/wav"}})
    } else if body.get("image_url").is_some() {
        json!({"images": [{"url": result_url(shared, faults, "edited.png")}]})
    } else {
        json!({"images": [{"url": result_url(shared, faults, "image.png"), "width": 8, "height": 8}]})
    }
}

/// A new job whose final answer is `result`.
fn submit(shared: &Shared, prefix: &str, result: Value) -> String {
    let job = new_job(shared, prefix);
    lock(&shared.polls).insert(job.clone(), 0);
    lock(&shared.results).insert(job.clone(), result);
    job
}

fn result_of(shared: &Shared, job: &str) -> Value {
    lock(&shared.results)
        .get(job)
        .cloned()
        .unwrap_or(Value::Null)
}

fn fal_ai(shared: &Shared, rest: &str, call: &RouterCall, faults: &Faults) -> Response {
    if call.method == "POST" {
        let body = call.json.clone().unwrap_or(Value::Null);
        let answer = if body.get("image_url").is_some() {
            json!({"images": [{"url": result_url(shared, faults, "edited.png")}]})
        } else if body.get("prompt").is_some() && call.query.is_some() {
            json!({"video": {"url": result_url(shared, faults, "video.mp4")}})
        } else {
            fal_answer(shared, faults, &body)
        };
        if call.query.as_deref() != Some("_subdomain=queue") {
            return json_reply(200, answer);
        }
        let job = submit(shared, "fal", answer);
        let app = rest.trim_end_matches('/');
        return json_reply(
            200,
            json!({
                "request_id": job,
                "status": "IN_QUEUE",
                "response_url": format!("https://queue.fal.run/{app}/requests/{job}"),
                "status_url": format!("https://queue.fal.run/{app}/requests/{job}/status"),
            }),
        );
    }
    // GET .../requests/{job}[/status].
    let rest = rest.trim_end_matches('/');
    let (rest, is_status) = match rest.strip_suffix("/status") {
        Some(rest) => (rest, true),
        None => (rest, false),
    };
    let Some(job) = rest
        .rsplit_once("/requests/")
        .map(|(_, job)| job.to_string())
    else {
        return not_found("fal route");
    };
    if faults.jobs_unknown || !known_job(shared, &job) {
        return json_reply(404, json!({"detail": format!("Request {job} not found")}));
    }
    if is_status {
        let status = if poll_done(shared, faults, &job) {
            "COMPLETED"
        } else {
            "IN_PROGRESS"
        };
        return json_reply(200, json!({"status": status, "request_id": job}));
    }
    if faults.jobs_fail {
        return json_reply(500, json!({"detail": "the GPU worker crashed"}));
    }
    json_reply(200, result_of(shared, &job))
}

/// What a prediction makes: judged by its input, and by the model's name
/// for video.
fn prediction_output(shared: &Shared, faults: &Faults, input: &Value, path: &str) -> Value {
    if input.get("audio").is_some() {
        json!("hello from replicate")
    } else if input.get("text").is_some() {
        json!(result_url(shared, faults, "speech.wav"))
    } else if input.get("image").is_some() {
        json!([result_url(shared, faults, "edited.png")])
    } else if path.contains("video")
        || input
            .get("prompt")
            .and_then(Value::as_str)
            .is_some_and(|p| p.contains("video"))
    {
        json!(result_url(shared, faults, "video.mp4"))
    } else {
        json!([result_url(shared, faults, "image.png")])
    }
}

fn replicate(shared: &Shared, rest: &str, call: &RouterCall, faults: &Faults) -> Response {
    if call.method == "POST" {
        let input = call
            .json
            .as_ref()
            .and_then(|b| b.get("input"))
            .cloned()
            .unwrap_or(Value::Null);
        let job = submit(
            shared,
            "pred",
            prediction_output(shared, faults, &input, &call.path),
        );
        return json_reply(
            201,
            json!({"id": job, "status": "starting", "output": null, "error": null,
                   "urls": {"get": format!("https://api.replicate.com/v1/predictions/{job}")}}),
        );
    }
    let Some(job) = rest.strip_prefix("v1/predictions/") else {
        return not_found("replicate route");
    };
    if faults.jobs_unknown || !known_job(shared, job) {
        return json_reply(404, json!({"detail": "Not found."}));
    }
    if !poll_done(shared, faults, job) {
        return json_reply(
            200,
            json!({"id": job, "status": "processing", "output": null}),
        );
    }
    if faults.jobs_fail {
        return json_reply(
            200,
            json!({"id": job, "status": "failed", "output": null, "error": "CUDA out of memory"}),
        );
    }
    json_reply(
        200,
        json!({"id": job, "status": "succeeded", "output": result_of(shared, job)}),
    )
}

fn together(shared: &Shared, rest: &str, call: &RouterCall, faults: &Faults) -> Response {
    match (call.method.as_str(), rest) {
        ("POST", "v1/images/generations") => json_reply(
            200,
            json!({"data": [{"b64_json": B64.encode(sample_png()), "index": 0}]}),
        ),
        ("POST", "v1/audio/speech") => (
            StatusCode::OK,
            [("content-type", "audio/wav")],
            sample_wav(),
        )
            .into_response(),
        ("POST", "v2/videos") => {
            let job = submit(shared, "vid", Value::Null);
            json_reply(200, json!({"id": job, "status": "queued"}))
        }
        ("GET", rest) if rest.starts_with("v2/videos/") => {
            let job = &rest["v2/videos/".len()..];
            if faults.jobs_unknown || !known_job(shared, job) {
                return json_reply(404, json!({"error": {"message": "job not found"}}));
            }
            if !poll_done(shared, faults, job) {
                return json_reply(200, json!({"id": job, "status": "in_progress"}));
            }
            if faults.jobs_fail {
                return json_reply(
                    200,
                    json!({"id": job, "status": "failed", "error": {"message": "content policy"}}),
                );
            }
            json_reply(
                200,
                json!({"id": job, "status": "completed",
                       "outputs": {"video_url": result_url(shared, faults, "video.mp4")}}),
            )
        }
        _ => not_found("together route"),
    }
}
