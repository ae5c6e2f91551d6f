//! The JSON routes: the reference's, OpenAI's, the runs API and operations.

use crate::conversation::{self, Conversation};
use crate::error::{ApiError, ApiPath};
use crate::metrics::Gauges;
use crate::runs::{CancelOnDrop, LiveRun, Outcome, now_ms};
use crate::{AppState, MODEL_NAME, RUN_ID_HEADER};
use axum::extract::rejection::JsonRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::stream::{self, BoxStream, StreamExt};
use hgpt_store::{RunState, Store, StoredEvent};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

/// The routes of this module.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/hugginggpt", post(hugginggpt))
        .route("/tasks", post(tasks))
        .route("/results", post(results))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .route("/v1/models/{id}", get(model))
        .route("/v1/runs", post(create_run).get(list_runs))
        .route("/v1/runs/{id}", get(show_run))
        .route("/v1/runs/{id}/events", get(run_events))
        .route("/v1/runs/{id}/cancel", post(cancel_run))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
}

type JsonBody = Result<Json<Value>, JsonRejection>;

/// Run a blocking store call off the async threads.
async fn with_store<T: Send + 'static>(
    state: &AppState,
    call: impl FnOnce(&Store) -> Result<T, hgpt_store::StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    let store = state.runs.store().clone();
    tokio::task::spawn_blocking(move || call(&store))
        .await
        .map_err(|e| ApiError::internal(format!("run store task failed: {e}")))?
        .map_err(ApiError::from)
}

fn run_id_header(id: &str) -> [(&'static str, HeaderValue); 1] {
    let value = HeaderValue::from_str(id).unwrap_or(HeaderValue::from_static("invalid"));
    [(RUN_ID_HEADER, value)]
}

/// Start a run and wait for it to end.
async fn run_to_end(
    state: &AppState,
    conversation: Conversation,
) -> Result<(Arc<LiveRun>, Outcome), ApiError> {
    let run = state.runs.start(conversation)?;
    // A client that goes away (a timeout, "stop generating") cancels it.
    let _cancel = CancelOnDrop(run.clone());
    let outcome = run.finished().await;
    Ok((run, outcome))
}

/// The error for a run that did not succeed.
fn failure(outcome: &Outcome) -> ApiError {
    let error = outcome.error.clone().unwrap_or_default();
    match outcome.state {
        RunState::Cancelled => ApiError::conflict(format!("the run was cancelled: {error}")),
        RunState::Interrupted => ApiError::shutting_down(),
        _ => ApiError::upstream(format!("the run failed: {error}")),
    }
}

fn body_conversation(body: JsonBody, allow_request: bool) -> Result<Conversation, ApiError> {
    let Json(body) = body?;
    conversation::from_body(&body, allow_request)
}

// ---- the reference's routes ----

async fn hugginggpt(State(state): State<AppState>, body: JsonBody) -> Result<Response, ApiError> {
    let conversation = body_conversation(body, false)?;
    let (run, outcome) = run_to_end(&state, conversation).await?;
    match (&outcome.record, outcome.state) {
        (Some(record), RunState::Succeeded) => Ok((
            run_id_header(&run.id),
            Json(json!({"message": record.answer})),
        )
            .into_response()),
        _ => Err(failure(&outcome)),
    }
}

async fn tasks(State(state): State<AppState>, body: JsonBody) -> Result<Json<Value>, ApiError> {
    let conversation = body_conversation(body, false)?;
    // Planning calls the controller like a run does, so it takes a slot too.
    let _slot = state.runs.planning_slot().await?;
    let outcome = state
        .runs
        .pipeline()
        .plan(&conversation.request, &conversation.history)
        .await
        .map_err(|e| ApiError::upstream(e.to_string()))?;
    match outcome.plan {
        Ok(plan) => Ok(Json(plan.to_json())),
        Err(e) => Err(ApiError::upstream(format!(
            "the planner's answer is not a usable plan: {e}; it answered: {}",
            outcome.raw
        ))
        .with_code("bad_plan")),
    }
}

async fn results(State(state): State<AppState>, body: JsonBody) -> Result<Response, ApiError> {
    let conversation = body_conversation(body, false)?;
    let (run, outcome) = run_to_end(&state, conversation).await?;
    match &outcome.record {
        Some(record) => {
            Ok((run_id_header(&run.id), Json(record.reference_results())).into_response())
        }
        None => Err(failure(&outcome)),
    }
}

// ---- the OpenAI API ----

fn model_object() -> Value {
    json!({"id": MODEL_NAME, "object": "model", "created": 0, "owned_by": "hgpt"})
}

async fn models() -> Json<Value> {
    Json(json!({"object": "list", "data": [model_object()]}))
}

async fn model(ApiPath(id): ApiPath<String>) -> Result<Json<Value>, ApiError> {
    if id == MODEL_NAME {
        Ok(Json(model_object()))
    } else {
        Err(unknown_model(&id))
    }
}

fn unknown_model(id: &str) -> ApiError {
    ApiError::not_found(format!(
        "The model `{id}` does not exist; this server serves `{MODEL_NAME}`"
    ))
    .with_code("model_not_found")
}

async fn chat_completions(
    State(state): State<AppState>,
    body: JsonBody,
) -> Result<Response, ApiError> {
    let Json(body) = body?;
    match body.get("model") {
        Some(Value::String(model)) if model == MODEL_NAME => {}
        Some(Value::String(model)) => return Err(unknown_model(model)),
        _ => {
            return Err(ApiError::invalid(
                "`model` is required (use \"hugginggpt\")",
            ));
        }
    }
    let stream = match body.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(stream)) => *stream,
        Some(_) => return Err(ApiError::invalid("`stream` must be a boolean")),
    };
    let conversation = conversation::from_body(&body, false)?;
    let created = now_ms() / 1000;
    if stream {
        let run = state.runs.start(conversation)?;
        let headers = run_id_header(&run.id);
        let chunks = completion_chunks(run, created);
        return Ok((headers, Sse::new(chunks).keep_alive(KeepAlive::default())).into_response());
    }
    let (run, outcome) = run_to_end(&state, conversation).await?;
    let record = match (&outcome.record, outcome.state) {
        (Some(record), RunState::Succeeded) => record,
        _ => return Err(failure(&outcome)),
    };
    let body = json!({
        "id": format!("chatcmpl-{}", run.id),
        "object": "chat.completion",
        "created": created,
        "model": MODEL_NAME,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": record.answer},
            "finish_reason": "stop",
            "logprobs": null
        }],
        "hgpt": {"run_id": run.id, "plan": record.plan, "tasks": record.tasks},
    });
    Ok((run_id_header(&run.id), Json(body)).into_response())
}

/// A `chat.completion.chunk` with `delta`, and extra fields.
fn chunk(id: &str, created: u64, delta: Value, finish: Option<&str>, hgpt: Option<Value>) -> Event {
    let mut body = json!({
        "id": format!("chatcmpl-{id}"),
        "object": "chat.completion.chunk",
        "created": created,
        "model": MODEL_NAME,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": null}],
    });
    if let Some(hgpt) = hgpt {
        body["hgpt"] = hgpt;
    }
    Event::default().data(body.to_string())
}

/// The run's events as OpenAI stream chunks: the role first, the plan as an
/// extra field when it is known, the answer as content deltas, then a
/// finishing chunk (or an error object) and `[DONE]`.
fn completion_chunks(
    run: Arc<LiveRun>,
    created: u64,
) -> BoxStream<'static, Result<Event, Infallible>> {
    let id = run.id.clone();
    let first = chunk(
        &id,
        created,
        json!({"role": "assistant", "content": ""}),
        None,
        Some(json!({"run_id": id})),
    );
    // The stream owns the run: dropped early (the client left), it cancels it.
    let follower = Arc::new(CancelOnDrop(run.clone()));
    let body = follow(run, 0).filter_map(move |event| {
        let id = id.clone();
        let run = follower.0.clone();
        async move {
            let data = &event.data;
            match data.get("type").and_then(Value::as_str)? {
                "planned" => Some(chunk(
                    &id,
                    created,
                    json!({}),
                    None,
                    Some(json!({"run_id": id, "plan": data.get("plan")})),
                )),
                "answer_delta" => {
                    let text = data.get("text").and_then(Value::as_str)?;
                    Some(chunk(&id, created, json!({"content": text}), None, None))
                }
                "state" => {
                    let terminal = data
                        .get("state")
                        .and_then(Value::as_str)
                        .and_then(|s| s.parse::<RunState>().ok())
                        .is_some_and(RunState::is_terminal);
                    if !terminal {
                        return None;
                    }
                    let outcome = run.outcome()?;
                    match (&outcome.record, outcome.state) {
                        (Some(record), RunState::Succeeded) => Some(chunk(
                            &id,
                            created,
                            json!({}),
                            Some("stop"),
                            Some(json!({"run_id": id, "tasks": record.tasks})),
                        )),
                        _ => Some(Event::default().data(failure(&outcome).body().to_string())),
                    }
                }
                _ => None,
            }
        }
    });
    stream::once(async move { first })
        .chain(body)
        .chain(stream::once(async { Event::default().data("[DONE]") }))
        .map(Ok)
        .boxed()
}

// ---- the runs API ----

async fn create_run(State(state): State<AppState>, body: JsonBody) -> Result<Response, ApiError> {
    let conversation = body_conversation(body, true)?;
    let run = state.runs.start(conversation)?;
    let location = HeaderValue::from_str(&format!("/v1/runs/{}", run.id))
        .unwrap_or(HeaderValue::from_static("/v1/runs"));
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        Json(json!({"id": run.id, "state": "queued"})),
    )
        .into_response())
}

async fn list_runs(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let limit = match query.get("limit") {
        None => 20,
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=200).contains(n))
            .ok_or_else(|| ApiError::invalid("`limit` must be a number from 1 to 200"))?,
    };
    let before = query.get("before").cloned();
    let page = with_store(&state, move |store| {
        store.list_runs(limit, before.as_deref())
    })
    .await?;
    Ok(Json(json!({"data": page.runs, "next": page.next})))
}

async fn show_run(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    if let Some(run) = state.runs.live(&id) {
        return Ok(Json(json!(run.row())));
    }
    let lookup = id.clone();
    match with_store(&state, move |store| store.run(&lookup)).await? {
        Some(row) => Ok(Json(json!(row))),
        None => Err(no_run(&id)),
    }
}

fn no_run(id: &str) -> ApiError {
    ApiError::not_found(format!("no run {id:?}"))
}

/// A run's events after `after`, then its live ones until it ends.
fn follow(run: Arc<LiveRun>, after: u64) -> BoxStream<'static, StoredEvent> {
    let changes = run.subscribe();
    stream::unfold(Some((run, after, changes)), |state| async move {
        let (run, cursor, mut changes) = state?;
        loop {
            let (batch, ended) = run.events_after(cursor);
            if let Some(last) = batch.last() {
                let seq = last.seq;
                return Some((batch, Some((run, seq, changes))));
            }
            if ended || changes.changed().await.is_err() {
                return None;
            }
        }
    })
    .flat_map(stream::iter)
    .boxed()
}

fn sse_event(event: &StoredEvent) -> Event {
    let kind = event
        .data
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("message");
    Event::default()
        .id(event.seq.to_string())
        .event(kind)
        .data(event.data.to_string())
}

async fn run_events(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let last_event_id = headers
        .get("last-event-id")
        .filter(|value| !value.as_bytes().trim_ascii().is_empty());
    let after = match (last_event_id, query.get("after")) {
        (Some(value), _) => value
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok()),
        (None, Some(value)) => value.parse::<u64>().ok(),
        (None, None) => Some(0),
    }
    .ok_or_else(|| ApiError::invalid("`Last-Event-ID` (or `after`) must be an event number"))?;
    let events = match state.runs.live(&id) {
        Some(run) => follow(run, after)
            .map(|e| Ok::<_, Infallible>(sse_event(&e)))
            .boxed(),
        None => {
            let lookup = id.clone();
            let stored = with_store(&state, move |store| {
                Ok(match store.run(&lookup)? {
                    Some(_) => Some(store.events(&lookup, after)?),
                    None => None,
                })
            })
            .await?
            .ok_or_else(|| no_run(&id))?;
            stream::iter(
                stored
                    .into_iter()
                    .map(|e| Ok::<_, Infallible>(sse_event(&e))),
            )
            .boxed()
        }
    };
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response())
}

async fn cancel_run(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    if let Some(run) = state.runs.cancel(&id) {
        let already_ended = run.outcome().is_some();
        let outcome = run.finished().await;
        if outcome.state == RunState::Cancelled && !already_ended {
            return Ok(Json(json!({"id": id, "state": "cancelled"})));
        }
        return Err(ApiError::conflict(format!(
            "run {id} had already ended ({})",
            outcome.state.as_str()
        )));
    }
    let lookup = id.clone();
    match with_store(&state, move |store| store.run(&lookup)).await? {
        Some(row) => Err(ApiError::conflict(format!(
            "run {id} has already ended ({})",
            row.state.as_str()
        ))),
        None => Err(no_run(&id)),
    }
}

// ---- operations ----

async fn healthz(State(state): State<AppState>) -> Json<Value> {
    let (queued, running) = state.runs.load();
    let store_failures = state.runs.store_failures();
    Json(json!({
        // Degraded: runs still run, but some of what they did was not stored.
        "status": if store_failures == 0 { "ok" } else { "degraded" },
        "version": env!("CARGO_PKG_VERSION"),
        "queued": queued,
        "running": running,
        "store_write_failures": store_failures,
    }))
}

async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let stored = with_store(&state, |store| store.count_by_state()).await?;
    let (queued, running) = state.runs.load();
    let text = state.runs.metrics.render(&Gauges {
        queued,
        running,
        store_failures: state.runs.store_failures(),
        stored: stored
            .into_iter()
            .map(|(s, n)| (s.as_str().to_string(), n))
            .collect(),
    });
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        text,
    )
        .into_response())
}
