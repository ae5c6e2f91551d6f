//! hgpt's model server: the local (candle) pipelines of
//! [`hgpt_local::LocalBackend`] over HTTP, speaking the Hugging Face inference
//! protocol, so that the `huggingface_hub` Python client, hgpt's own remote
//! backend (`HGPT_HF_BASE_URL`) or any HTTP load balancer can use them.
//!
//! Routes:
//! - `POST /models/{id}` and `POST /models/{id}/pipeline/{task}` (`id` is
//!   `org/name` or `name`): run a model. The task is the suffix, else the
//!   model's own (from its `config.json`); a `{source_sentence, sentences}`
//!   body makes a feature-extraction model do sentence-similarity. Bodies and
//!   answers are those of the wire reference; raw image or audio bytes need no
//!   `Content-Type`.
//! - `GET /health` -> `{"status": "ok"}`; `GET /info`; `GET /models` ->
//!   `[{id, task, tasks, loaded}]`; `GET /status/{id}` -> `{loaded, state,
//!   task}`; `GET /models/{id}/info` and `GET /models/{id}/health` (what the
//!   Python client's `get_endpoint_info` and `health_check` call for a model URL).
//!
//! Errors are `{"error": "...", "error_type": "..."}`: 400 for a malformed
//! request, 404 for a model or route the server does not serve, 413 for a body
//! over the limit, 422 for inputs a pipeline rejects, 500 for load and compute
//! failures. Models load synchronously on first use (never a 503 "loading").

#![warn(missing_docs)]

mod error;
mod models;
mod request;
mod response;

use crate::error::ApiError;
use crate::models::{Catalog, ServedModel, answerable, parse_model_path};
use axum::extract::rejection::{BytesRejection, FailedToBufferBody, PathRejection};
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::HeaderMap;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::ListenerExt;
use axum::{Json, Router};
use bytes::Bytes;
use futures::FutureExt as _;
use hgpt_core::backend::InferenceRequest;
use hgpt_core::task::TaskKind;
use hgpt_local::{LocalBackend, pipeline};
use serde_json::{Value, json};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

/// The default limit on a request body: 64 MiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 << 20;

/// Settings of the model server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelServerConfig {
    /// Model ids the server serves; empty: every model in the local cache.
    pub models: Vec<String>,
    /// Largest request body accepted (larger ones get 413).
    pub max_body_bytes: usize,
}

impl Default for ModelServerConfig {
    fn default() -> Self {
        Self {
            models: Vec::new(),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        }
    }
}

#[derive(Clone)]
struct AppState {
    backend: Arc<LocalBackend>,
    config: Arc<ModelServerConfig>,
}

impl AppState {
    fn catalog(&self) -> Catalog<'_> {
        Catalog {
            backend: &self.backend,
            allowed: &self.config.models,
        }
    }
}

/// The server's routes over a local backend.
pub fn router(backend: Arc<LocalBackend>, config: ModelServerConfig) -> Router {
    let limit = config.max_body_bytes;
    let state = AppState {
        backend,
        config: Arc::new(config),
    };
    Router::new()
        .route("/health", get(health))
        .route("/info", get(info))
        .route("/models", get(list_models))
        .route("/models/{*rest}", get(model_get).post(model_post))
        .route("/status/{*id}", get(status))
        .fallback(unknown_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn(catch_panics))
        .with_state(state)
}

/// Serve on `listener` until `shutdown` completes, then finish the requests
/// in flight and return.
pub async fn serve(
    listener: tokio::net::TcpListener,
    backend: Arc<LocalBackend>,
    config: ModelServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Ok(address) = listener.local_addr() {
        tracing::info!(%address, "model server listening");
    }
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, router(backend, config))
        .with_graceful_shutdown(shutdown)
        .await
}

/// A bug in a handler answers 500 instead of dropping the connection.
async fn catch_panics(request: Request, next: Next) -> Response {
    match AssertUnwindSafe(next.run(request)).catch_unwind().await {
        Ok(response) => response,
        Err(_) => {
            ApiError::internal("the server hit a bug while handling this request").into_response()
        }
    }
}

async fn unknown_route(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!(
        "no route {}; try POST /models/{{id}}, GET /models, /status/{{id}} or /health",
        uri.path()
    ))
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed on {}", uri.path()),
    )
}

async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

fn server_info() -> serde_json::Map<String, Value> {
    let mut map = serde_json::Map::new();
    map.insert("router".into(), json!("hgpt-model-server"));
    map.insert("version".into(), json!(env!("CARGO_PKG_VERSION")));
    map.insert("framework".into(), json!("candle"));
    map
}

async fn info(State(state): State<AppState>) -> Json<Value> {
    let models = state.catalog().list();
    let mut map = server_info();
    // A one-model server describes that model, as TGI and TEI do.
    let single = match models.as_slice() {
        [only] => Some(only),
        _ => None,
    };
    map.insert("model_id".into(), json!(single.map(|m| &m.id)));
    map.insert(
        "model_pipeline_tag".into(),
        json!(single.map(|m| m.task.as_str())),
    );
    map.insert("models".into(), json!(models));
    map.insert(
        "max_client_body_bytes".into(),
        json!(state.config.max_body_bytes),
    );
    Json(Value::Object(map))
}

async fn list_models(State(state): State<AppState>) -> Json<Vec<ServedModel>> {
    Json(state.catalog().list())
}

fn model_info(model: &ServedModel) -> Value {
    let mut map = server_info();
    map.insert("model_id".into(), json!(model.id));
    map.insert("model_pipeline_tag".into(), json!(model.task.as_str()));
    map.insert("tasks".into(), json!(model.tasks));
    map.insert("loaded".into(), json!(model.loaded));
    Value::Object(map)
}

fn path_error(rejection: PathRejection) -> ApiError {
    ApiError::not_found(rejection.body_text())
}

async fn status(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let Path(id) = path.map_err(path_error)?;
    let model = state.catalog().served(id.trim_matches('/'))?;
    let status = if model.loaded { "Loaded" } else { "Loadable" };
    Ok(Json(json!({
        "loaded": model.loaded,
        "state": status,
        "task": model.task,
    })))
}

/// `GET /models/{id}[/info|/health]`.
async fn model_get(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let Path(rest) = path.map_err(path_error)?;
    let rest = rest.trim_matches('/');
    let (id, health) = match rest.rsplit_once('/') {
        Some((id, "health")) => (id, true),
        Some((id, "info")) => (id, false),
        _ => (rest, false),
    };
    let model = state.catalog().served(id)?;
    Ok(Json(if health {
        json!({"status": "ok"})
    } else {
        model_info(&model)
    }))
}

fn body_error(rejection: BytesRejection, limit: usize) -> ApiError {
    match rejection {
        BytesRejection::FailedToBufferBody(FailedToBufferBody::LengthLimitError(_)) => {
            ApiError::too_large(limit)
        }
        other => ApiError::invalid(format!(
            "cannot read the request body: {}",
            other.body_text()
        )),
    }
}

async fn model_post(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match infer(&state, path, &headers, body).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

async fn infer(
    state: &AppState,
    path: Result<Path<String>, PathRejection>,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|r| body_error(r, state.config.max_body_bytes))?;
    let Path(rest) = path.map_err(path_error)?;
    let target = parse_model_path(&rest)?;
    let model = target.model;
    let files = state.catalog().files(&model)?;
    let task = match &target.pipeline {
        Some(name) => TaskKind::parse(name)
            .ok_or_else(|| ApiError::not_found(format!("unknown task {name:?}")))?,
        None => pipeline::task_of(&files).ok_or_else(|| {
            ApiError::unsupported(format!(
                "cannot tell which task {model} does (its config.json names no architecture \
                 this server knows); POST to /models/{model}/pipeline/{{task}}"
            ))
        })?,
    };
    // The body is checked first, so that a malformed request is reported as
    // such whatever the server runs.
    let call = request::decode(task, headers, body)?;
    if call.task != task && !answerable(task, &files).contains(&call.task) {
        return Err(ApiError::unsupported(format!(
            "{model} does {task}, not {}",
            call.task
        )));
    }
    if !pipeline::supports(call.task) {
        return Err(ApiError::unsupported(format!(
            "this server has no local pipeline for {} (it runs {})",
            call.task,
            supported_tasks().join(", ")
        )));
    }
    tracing::debug!(%model, task = %call.task, inputs = call.inputs.len(), "inference request");
    let mut outputs = Vec::with_capacity(call.inputs.len());
    for args in call.inputs {
        let request = InferenceRequest {
            task: call.task,
            model: model.clone(),
            args,
        };
        outputs.push(state.backend.run(&request).await?);
    }
    response::encode(call.task, outputs, call.batch, &call.params)
}

fn supported_tasks() -> Vec<&'static str> {
    TaskKind::ALL
        .iter()
        .filter(|t| pipeline::supports(**t))
        .map(|t| t.as_str())
        .collect()
}
