//! Every route of `hgpt serve` over loopback HTTP, with the in-process fake
//! controller and backend: the reference's routes, the OpenAI API, the runs
//! API with its event stream, files, limits, the token, metrics, and the
//! store across restarts.

use hgpt_core::catalog::Catalog;
use hgpt_core::pipeline::{Pipeline, PipelineConfig};
use hgpt_core::prompt::Prompts;
use hgpt_media::{LocalMedia, MediaConfig};
use hgpt_server::{RunLimits, ServerConfig, ServerError, serve};
use hgpt_store::{NewRun, Store};
use hgpt_testkit::hf::sample_png;
use hgpt_testkit::inproc::{FakeBackend, ScriptedLlm};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const PLAN: &str = r#"[{"task": "image-to-text", "id": 0, "dep": [-1], "args": {"image": "/a.jpg"}},
{"task": "object-detection", "id": 1, "dep": [-1], "args": {"image": "/a.jpg"}},
{"task": "text-to-speech", "id": 2, "dep": [0], "args": {"text": "<GENERATED>-0"}},
{"task": "automatic-speech-recognition", "id": 3, "dep": [2], "args": {"audio": "<GENERATED>-2"}}]"#;

/// How a test server is set up.
struct Setup {
    token: Option<String>,
    limits: RunLimits,
    task_latency: Duration,
    max_upload_bytes: usize,
    max_body_bytes: usize,
    /// Makes the fake backend panic instead of answering.
    panicking_backend: bool,
    keep_runs_for: Option<Duration>,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            token: None,
            limits: RunLimits::default(),
            task_latency: Duration::ZERO,
            max_upload_bytes: 1 << 20,
            max_body_bytes: 64 << 10,
            panicking_backend: false,
            keep_runs_for: None,
        }
    }
}

struct TestServer {
    url: String,
    client: reqwest::Client,
    shutdown: Option<oneshot::Sender<()>>,
    handle: JoinHandle<Result<(), ServerError>>,
}

impl TestServer {
    fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.at(path)).send().await.unwrap()
    }

    async fn post(&self, path: &str, body: Value) -> reqwest::Response {
        self.client
            .post(self.at(path))
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// Stop and wait until every run is stored.
    async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        self.handle.await.unwrap().unwrap();
    }
}

/// A folder with the media root (holding `/a.jpg`), the output dir and the
/// data dir.
fn folders(root: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let media = root.join("media");
    std::fs::create_dir_all(&media).unwrap();
    std::fs::write(media.join("a.jpg"), sample_png()).unwrap();
    (media, root.join("out"), root.join("data"))
}

async fn start(root: &Path, setup: Setup) -> TestServer {
    let (media_root, out_dir, data_dir) = folders(root);
    let media = MediaConfig {
        media_root,
        out_dir,
        ..MediaConfig::default()
    };
    let backend = if setup.panicking_backend {
        FakeBackend::with_responder(setup.task_latency, |_| panic!("the fake backend broke"))
    } else {
        FakeBackend::new(setup.task_latency)
    };
    let pipeline = Pipeline::new(
        Arc::new(ScriptedLlm::with_plan(PLAN)),
        Arc::new(backend),
        Arc::new(LocalMedia::new(media.clone()).unwrap()),
        Arc::new(Catalog::builtin().unwrap()),
        Arc::new(Prompts::default()),
        PipelineConfig::default(),
    );
    let store = Store::open(&data_dir).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let config = ServerConfig {
        limits: setup.limits,
        api_token: setup.token,
        max_body_bytes: setup.max_body_bytes,
        max_upload_bytes: setup.max_upload_bytes,
        media,
        cors_origins: Vec::new(),
        keep_runs_for: setup.keep_runs_for,
    };
    let (shutdown, stopped) = oneshot::channel::<()>();
    let handle = tokio::spawn(serve(
        listener,
        Arc::new(pipeline),
        store,
        config,
        async move {
            let _ = stopped.await;
        },
    ));
    TestServer {
        url,
        client: reqwest::Client::new(),
        shutdown: Some(shutdown),
        handle,
    }
}

fn messages(text: &str) -> Value {
    json!({"messages": [{"role": "user", "content": text}]})
}

/// One server-sent event.
#[derive(Debug)]
struct Sse {
    id: Option<u64>,
    event: Option<String>,
    data: String,
}

fn parse_sse(text: &str) -> Vec<Sse> {
    text.split("\n\n")
        .filter_map(|block| {
            let mut event = Sse {
                id: None,
                event: None,
                data: String::new(),
            };
            let mut any = false;
            for line in block.lines() {
                if let Some(value) = line.strip_prefix("id:") {
                    event.id = value.trim().parse().ok();
                } else if let Some(value) = line.strip_prefix("event:") {
                    event.event = Some(value.trim().to_string());
                } else if let Some(value) = line.strip_prefix("data:") {
                    event
                        .data
                        .push_str(value.strip_prefix(' ').unwrap_or(value));
                    any = true;
                }
            }
            any.then_some(event)
        })
        .collect()
}

/// The whole event stream of a run (it closes when the run ends).
async fn events(server: &TestServer, id: &str, last_event_id: Option<u64>) -> Vec<Sse> {
    let mut request = server
        .client
        .get(server.at(&format!("/v1/runs/{id}/events")));
    if let Some(last) = last_event_id {
        request = request.header("Last-Event-ID", last.to_string());
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    parse_sse(&response.text().await.unwrap())
}

/// A run's event stream read until `needle` appears, then dropped (the run
/// goes on).
async fn events_until(server: &TestServer, id: &str, needle: &str) -> String {
    let mut response = server
        .client
        .get(server.at(&format!("/v1/runs/{id}/events")))
        .send()
        .await
        .unwrap();
    let mut text = String::new();
    while !text.contains(needle) {
        let chunk = response.chunk().await.unwrap().unwrap();
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    text
}

fn error_message(body: &Value) -> &str {
    body["error"]["message"].as_str().unwrap_or_default()
}

async fn create_run(server: &TestServer, text: &str) -> String {
    let response = server.post("/v1/runs", messages(text)).await;
    assert_eq!(response.status(), 202);
    assert!(response.headers().contains_key("location"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["state"], "queued");
    body["id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn reference_routes_answer_in_the_reference_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), Setup::default()).await;

    let response = server
        .post("/hugginggpt", messages("describe /a.jpg"))
        .await;
    assert_eq!(response.status(), 200);
    assert!(response.headers().contains_key("x-hgpt-run-id"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body, json!({"message": "Here is the answer."}));

    let plan: Value = server
        .post("/tasks", messages("describe /a.jpg"))
        .await
        .json()
        .await
        .unwrap();
    let plan = plan.as_array().unwrap();
    assert_eq!(plan.len(), 4);
    assert_eq!(plan[2]["task"], "text-to-speech");
    assert_eq!(plan[2]["dep"], json!([0]));

    let results: Value = server
        .post("/results", messages("describe /a.jpg"))
        .await
        .json()
        .await
        .unwrap();
    let results = results.as_object().unwrap();
    assert_eq!(results.len(), 4);
    assert_eq!(results["1"]["task"]["task"], "object-detection");
    assert!(results["1"]["inference result"]["generated image"].is_string());
    assert!(results["1"]["choose model result"]["id"].is_string());

    // CORS is on, so the reference's web client (served from this machine)
    // can call these routes; without a token, pages from elsewhere cannot.
    let preflight = |origin: &'static str| {
        server
            .client
            .request(reqwest::Method::OPTIONS, server.at("/hugginggpt"))
            .header("Origin", origin)
            .header("Access-Control-Request-Method", "POST")
            .header("Access-Control-Request-Headers", "content-type")
            .send()
    };
    let local = preflight("http://localhost:9999").await.unwrap();
    assert!(local.status().is_success());
    assert_eq!(
        local.headers()["access-control-allow-origin"],
        "http://localhost:9999"
    );
    let foreign = preflight("http://evil.example").await.unwrap();
    assert!(
        !foreign
            .headers()
            .contains_key("access-control-allow-origin")
    );
    server.stop().await;
}

#[tokio::test]
async fn bad_requests_get_json_errors() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), Setup::default()).await;
    let cases: Vec<(reqwest::RequestBuilder, u16, &str)> = vec![
        (
            server
                .client
                .post(server.at("/hugginggpt"))
                .header("content-type", "application/json")
                .body("{not json"),
            400,
            "invalid JSON",
        ),
        (
            server.client.post(server.at("/hugginggpt")).body("{}"),
            400,
            "Content-Type",
        ),
        (
            server.client.post(server.at("/tasks")).json(&json!({})),
            400,
            "needs `messages`",
        ),
        (
            server
                .client
                .post(server.at("/v1/runs"))
                .json(&json!({"messages": [{"role": "assistant", "content": "hi"}]})),
            400,
            "last message",
        ),
        (
            server.client.get(server.at("/v1/runs/run_missing")),
            404,
            "no run",
        ),
        (
            server.client.get(server.at("/v1/runs/run_missing/events")),
            404,
            "no run",
        ),
        (
            server.client.get(server.at("/v1/runs?limit=0")),
            400,
            "`limit`",
        ),
        (
            server.client.get(server.at("/v1/runs?before=garbage")),
            400,
            "cursor",
        ),
        (server.client.get(server.at("/nope")), 404, "no such route"),
        (server.client.put(server.at("/v1/runs")), 405, "method"),
        (
            server.client.get(server.at("/v1/runs/x/cancel")),
            405,
            "method",
        ),
        (
            server.client.get(server.at("/v1/runs/%ff")),
            400,
            "bad path",
        ),
        (
            server
                .client
                .get(server.at("/v1/runs"))
                .header("Host", "rebound.example"),
            403,
            "localhost",
        ),
        (
            server
                .client
                .post(server.at("/v1/runs"))
                .json(&json!({"request": "x".repeat(70 << 10)})),
            413,
            "limit",
        ),
    ];
    for (request, status, needle) in cases {
        let response = request.send().await.unwrap();
        let got = response.status().as_u16();
        let body: Value = response.json().await.unwrap();
        assert_eq!(got, status, "{body}");
        assert!(
            error_message(&body).contains(needle),
            "{needle:?} not in {body}"
        );
        assert!(body["error"]["type"].is_string(), "{body}");
    }
    // Still serving.
    assert_eq!(server.get("/healthz").await.status(), 200);
    server.stop().await;
}

#[tokio::test]
async fn openai_chat_completions_answer_and_stream() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), Setup::default()).await;

    let models: Value = server.get("/v1/models").await.json().await.unwrap();
    assert_eq!(models["data"][0]["id"], "hugginggpt");
    let model: Value = server
        .get("/v1/models/hugginggpt")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(model["object"], "model");
    assert_eq!(server.get("/v1/models/gpt-4").await.status(), 404);

    let response = server
        .post(
            "/v1/chat/completions",
            json!({"model": "hugginggpt", "messages": [{"role": "user", "content": "describe /a.jpg"}]}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let run_id = response.headers()["x-hgpt-run-id"]
        .to_str()
        .unwrap()
        .to_string();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "Here is the answer."
    );
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(body["hgpt"]["run_id"], run_id);
    assert_eq!(body["hgpt"]["plan"].as_array().unwrap().len(), 4);
    assert_eq!(body["hgpt"]["tasks"].as_array().unwrap().len(), 4);

    let response = server
        .post(
            "/v1/chat/completions",
            json!({"model": "hugginggpt", "stream": true, "messages": [{"role": "user", "content": "describe /a.jpg"}]}),
        )
        .await;
    assert_eq!(response.status(), 200);
    assert!(response.headers().contains_key("x-hgpt-run-id"));
    let events = parse_sse(&response.text().await.unwrap());
    assert_eq!(events.last().unwrap().data, "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(&e.data).unwrap())
        .collect();
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk")
    );
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, "Here is the answer.");
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "stop");
    assert_eq!(last["hgpt"]["tasks"].as_array().unwrap().len(), 4);
    assert!(
        chunks
            .iter()
            .any(|c| c["hgpt"]["plan"].as_array().is_some_and(|p| p.len() == 4))
    );

    let response = server
        .post(
            "/v1/chat/completions",
            json!({"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "model_not_found");
    server.stop().await;
}

#[tokio::test]
async fn runs_stream_their_events_and_replay_them_to_late_clients() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(
        dir.path(),
        Setup {
            task_latency: Duration::from_millis(50),
            ..Setup::default()
        },
    )
    .await;
    let id = create_run(&server, "describe /a.jpg").await;
    let live = events(&server, &id, None).await;

    // Numbered from 1 without gaps, typed, from queued to succeeded.
    for (index, event) in live.iter().enumerate() {
        assert_eq!(event.id, Some(index as u64 + 1));
        let data: Value = serde_json::from_str(&event.data).unwrap();
        assert_eq!(Some(data["type"].as_str().unwrap()), event.event.as_deref());
    }
    let kinds: Vec<&str> = live.iter().filter_map(|e| e.event.as_deref()).collect();
    assert_eq!(kinds.first(), Some(&"state"));
    assert!(live[0].data.contains("queued"));
    assert!(live.last().unwrap().data.contains("\"succeeded\""));
    for kind in [
        "planned",
        "model_chosen",
        "task_started",
        "answer_delta",
        "finished",
    ] {
        assert!(kinds.contains(&kind), "no {kind} in {kinds:?}");
    }
    assert_eq!(kinds.iter().filter(|k| **k == "task_finished").count(), 4);
    let planned = kinds.iter().position(|k| *k == "planned").unwrap();
    let first_finished = kinds.iter().position(|k| *k == "task_finished").unwrap();
    assert!(planned < first_finished);

    // The record is the one `hgpt run --json` prints.
    let run: Value = server
        .get(&format!("/v1/runs/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(run["state"], "succeeded");
    assert_eq!(run["request"], "describe /a.jpg");
    assert_eq!(run["record"]["answer"], "Here is the answer.");
    assert_eq!(run["record"]["tasks"].as_array().unwrap().len(), 4);
    assert!(run["finished_at_ms"].as_u64() >= run["started_at_ms"].as_u64());

    // A late client gets the same events from the store; a reconnecting one
    // only those after its Last-Event-ID.
    let replayed = events(&server, &id, None).await;
    assert_eq!(replayed.len(), live.len());
    for (a, b) in live.iter().zip(&replayed) {
        assert_eq!((a.id, &a.event, &a.data), (b.id, &b.event, &b.data));
    }
    let resumed = events(&server, &id, Some(5)).await;
    assert_eq!(resumed.len(), live.len() - 5);
    assert_eq!(resumed[0].id, Some(6));
    let after: Value = server
        .get(&format!("/v1/runs/{id}/events?after=abc"))
        .await
        .json()
        .await
        .unwrap();
    assert!(error_message(&after).contains("event number"));

    let list: Value = server.get("/v1/runs").await.json().await.unwrap();
    assert_eq!(list["data"][0]["id"], id.as_str());
    assert_eq!(list["data"][0]["state"], "succeeded");
    server.stop().await;
}

#[tokio::test]
async fn a_client_reconnecting_mid_run_misses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(
        dir.path(),
        Setup {
            task_latency: Duration::from_millis(300),
            ..Setup::default()
        },
    )
    .await;
    let id = create_run(&server, "describe /a.jpg").await;
    // Read the first events, then drop the connection mid-run.
    let seen = parse_sse(&events_until(&server, &id, "event: task_started").await);
    let last = seen.iter().filter_map(|e| e.id).max().unwrap();
    let rest = events(&server, &id, Some(last)).await;
    assert_eq!(rest[0].id, Some(last + 1));
    assert!(rest.last().unwrap().data.contains("\"succeeded\""));
    let all = events(&server, &id, None).await;
    assert_eq!(all.len() as u64, last + rest.len() as u64);
    server.stop().await;
}

#[tokio::test]
async fn runs_can_be_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(
        dir.path(),
        Setup {
            task_latency: Duration::from_secs(60),
            ..Setup::default()
        },
    )
    .await;
    let id = create_run(&server, "describe /a.jpg").await;
    let response = server
        .post(&format!("/v1/runs/{id}/cancel"), json!({}))
        .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["state"], "cancelled");
    let stream = events(&server, &id, None).await;
    assert!(stream.last().unwrap().data.contains("\"cancelled\""));
    let run: Value = server
        .get(&format!("/v1/runs/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(run["state"], "cancelled");

    let again = server
        .post(&format!("/v1/runs/{id}/cancel"), json!({}))
        .await;
    assert_eq!(again.status(), 409);
    let missing = server.post("/v1/runs/run_nope/cancel", json!({})).await;
    assert_eq!(missing.status(), 404);
    server.stop().await;
}

#[tokio::test]
async fn a_full_queue_answers_429_with_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(
        dir.path(),
        Setup {
            task_latency: Duration::from_secs(60),
            limits: RunLimits {
                max_running: 1,
                max_queued: 1,
                shutdown_grace: Duration::ZERO,
            },
            ..Setup::default()
        },
    )
    .await;
    let running = create_run(&server, "one").await;
    let queued = create_run(&server, "two").await;
    let refused = server.post("/v1/runs", messages("three")).await;
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().contains_key("retry-after"));
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["type"], "rate_limit_error");
    // Synchronous routes share the same limit.
    let refused = server.post("/hugginggpt", messages("four")).await;
    assert_eq!(refused.status(), 429);

    let health: Value = server.get("/healthz").await.json().await.unwrap();
    assert_eq!(
        (health["running"].as_u64(), health["queued"].as_u64()),
        (Some(1), Some(1))
    );
    let metrics = server.get("/metrics").await.text().await.unwrap();
    assert!(metrics.contains("hgpt_runs_rejected_total 2"), "{metrics}");
    assert!(
        metrics.contains("hgpt_runs{state=\"queued\"} 1"),
        "{metrics}"
    );

    // Room again once a run ends.
    server
        .post(&format!("/v1/runs/{queued}/cancel"), json!({}))
        .await;
    let accepted = server.post("/v1/runs", messages("five")).await;
    assert_eq!(accepted.status(), 202);
    server
        .post(&format!("/v1/runs/{running}/cancel"), json!({}))
        .await;
    server.stop().await;
}

#[tokio::test]
async fn a_token_guards_every_api_and_file_route() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(
        dir.path(),
        Setup {
            token: Some("s3cret".into()),
            ..Setup::default()
        },
    )
    .await;
    for path in [
        "/v1/runs",
        "/v1/models",
        "/metrics",
        "/files/a.jpg",
        "/v1/runs/x",
    ] {
        let response = server.get(path).await;
        assert_eq!(response.status(), 401, "{path}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["type"], "authentication_error");
    }
    let response = server.post("/hugginggpt", messages("hi")).await;
    assert_eq!(response.status(), 401);
    let wrong = server
        .client
        .get(server.at("/v1/models"))
        .bearer_auth("s3cre")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let right = server
        .client
        .get(server.at("/v1/models"))
        .bearer_auth("s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(right.status(), 200);
    assert_eq!(
        server
            .get("/files/a.jpg?access_token=s3cret")
            .await
            .status(),
        200
    );
    for open in ["/", "/healthz", "/assets/app.js", "/assets/app.css"] {
        assert_eq!(server.get(open).await.status(), 200, "{open}");
    }
    server.stop().await;
}

#[tokio::test]
async fn files_upload_by_content_and_serve_inside_the_roots() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(
        dir.path(),
        Setup {
            max_upload_bytes: 4096,
            ..Setup::default()
        },
    )
    .await;
    let upload = |bytes: Vec<u8>, name: &'static str| {
        let part = reqwest::multipart::Part::bytes(bytes).file_name(name);
        server
            .client
            .post(server.at("/v1/files"))
            .multipart(reqwest::multipart::Form::new().part("file", part))
            .send()
    };
    // A PNG named .txt is still a PNG.
    let response = upload(sample_png(), "photo.txt").await.unwrap();
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["content_type"], "image/png");
    let name = body["name"].as_str().unwrap();
    assert!(name.starts_with('/') && name.ends_with(".png"), "{name}");
    let served = server.get(body["url"].as_str().unwrap()).await;
    assert_eq!(served.status(), 200);
    assert_eq!(served.headers()["content-type"], "image/png");
    assert_eq!(served.bytes().await.unwrap().to_vec(), sample_png());

    // The name works in a request.
    let response = server
        .post("/results", messages(&format!("describe {name}")))
        .await;
    assert_eq!(response.status(), 200);

    let text = upload(b"just some text, not media".to_vec(), "a.png")
        .await
        .unwrap();
    assert_eq!(text.status(), 415);
    let big = upload(vec![0x89; 10_000], "big.png").await.unwrap();
    assert_eq!(big.status(), 413);
    let empty_form = server
        .client
        .post(server.at("/v1/files"))
        .multipart(reqwest::multipart::Form::new().text("other", "x"))
        .send()
        .await
        .unwrap();
    assert_eq!(empty_form.status(), 400);
    let not_multipart = server.post("/v1/files", json!({})).await;
    assert_eq!(not_multipart.status(), 400);

    // Inputs by name; only media; nothing hidden or outside the roots.
    assert_eq!(server.get("/files/a.jpg").await.status(), 200);
    std::fs::write(dir.path().join("secret.txt"), "no").unwrap();
    let media = dir.path().join("media");
    std::fs::write(media.join("hgpt.toml"), "api_key = \"sk-secret\"").unwrap();
    std::fs::write(media.join(".env"), "TOKEN=1").unwrap();
    std::fs::write(media.join(".hidden.png"), sample_png()).unwrap();
    for outside in [
        "/files/../secret.txt",
        "/files/%2e%2e/secret.txt",
        "/files/etc/passwd",
        "/files/missing.png",
        "/files/hgpt.toml",
        "/files/.env",
        "/files/.hidden.png",
    ] {
        assert_eq!(server.get(outside).await.status(), 404, "{outside}");
    }
    server.stop().await;
}

#[tokio::test]
async fn generated_files_are_served_by_their_record_path() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), Setup::default()).await;
    let response = server
        .post(
            "/v1/chat/completions",
            json!({"model": "hugginggpt", "messages": [{"role": "user", "content": "describe /a.jpg"}]}),
        )
        .await;
    let body: Value = response.json().await.unwrap();
    let tasks = body["hgpt"]["tasks"].as_array().unwrap();
    let image = tasks[1]["output"]["generated_image"].as_str().unwrap();
    let served = server
        .get(&format!("/files/{}", image.trim_start_matches('/')))
        .await;
    assert_eq!(served.status(), 200);
    assert_eq!(served.headers()["content-type"], "image/png");
    assert_eq!(
        served.bytes().await.unwrap().to_vec(),
        std::fs::read(image).unwrap()
    );
    server.stop().await;
}

#[tokio::test]
async fn metrics_count_runs_and_stage_latencies() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), Setup::default()).await;
    server
        .post("/hugginggpt", messages("describe /a.jpg"))
        .await;
    let response = server.get("/metrics").await;
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = response.text().await.unwrap();
    for line in [
        "hgpt_runs_finished_total{state=\"succeeded\"} 1",
        "hgpt_runs_stored{state=\"succeeded\"} 1",
        "hgpt_stage_duration_seconds_count{stage=\"total\"} 1",
        "hgpt_stage_duration_seconds_count{stage=\"plan\"} 1",
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line}:\n{text}");
    }
    server.stop().await;
}

#[tokio::test]
async fn the_web_interface_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), Setup::default()).await;
    let page = server.get("/").await;
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(page.text().await.unwrap().contains("/assets/app.js"));
    let script = server.get("/assets/app.js").await;
    assert!(
        script.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
    server.stop().await;
}

#[tokio::test]
async fn runs_survive_a_restart_and_cut_off_runs_are_marked_interrupted() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), Setup::default()).await;
    let done = create_run(&server, "describe /a.jpg").await;
    let live = events(&server, &done, None).await;
    server.stop().await;

    // A run cut off by a shutdown: no grace, a model that never answers.
    let server = start(
        dir.path(),
        Setup {
            task_latency: Duration::from_secs(60),
            limits: RunLimits {
                shutdown_grace: Duration::ZERO,
                ..RunLimits::default()
            },
            ..Setup::default()
        },
    )
    .await;
    let cut = create_run(&server, "describe /a.jpg").await;
    events_until(&server, &cut, "event: task_started").await;
    server.stop().await;

    // A run left running by a crash.
    let store = Store::open(&dir.path().join("data")).unwrap();
    store
        .insert_run(&NewRun {
            id: "run_crashed".into(),
            created_at_ms: 1,
            request: "lost".into(),
            messages: json!([]),
        })
        .unwrap();
    store.set_running("run_crashed", 2).unwrap();
    drop(store);

    let server = start(dir.path(), Setup::default()).await;
    let run: Value = server
        .get(&format!("/v1/runs/{done}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(run["state"], "succeeded");
    assert_eq!(run["record"]["answer"], "Here is the answer.");
    assert_eq!(events(&server, &done, None).await.len(), live.len());

    let run: Value = server
        .get(&format!("/v1/runs/{cut}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(run["state"], "interrupted");
    assert!(run["error"].as_str().unwrap().contains("shut down"));
    let stream = events(&server, &cut, None).await;
    assert!(stream.last().unwrap().data.contains("\"interrupted\""));

    let run: Value = server
        .get("/v1/runs/run_crashed")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(run["state"], "interrupted");
    let stream = events(&server, "run_crashed", None).await;
    assert_eq!(stream.len(), 1);
    assert_eq!(stream[0].id, Some(1));
    assert!(stream[0].data.contains("\"interrupted\""));

    let list: Value = server.get("/v1/runs?limit=2").await.json().await.unwrap();
    assert_eq!(list["data"].as_array().unwrap().len(), 2);
    let next = list["next"].as_str().unwrap().to_string();
    let rest: Value = server
        .get(&format!("/v1/runs?limit=2&before={next}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(rest["data"].as_array().unwrap().len(), 1);
    assert!(rest["next"].is_null());
    server.stop().await;
}

#[tokio::test]
async fn a_failing_store_degrades_health_but_runs_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), Setup::default()).await;
    let health: Value = server.get("/healthz").await.json().await.unwrap();
    assert_eq!(health["status"], "ok");

    // Break the store under the server's feet.
    let db = dir.path().join("data").join(hgpt_store::DB_FILE_NAME);
    let connection = rusqlite::Connection::open(&db).unwrap();
    connection.execute_batch("DROP TABLE events;").unwrap();
    drop(connection);

    let response = server
        .post("/hugginggpt", messages("describe /a.jpg"))
        .await;
    assert_eq!(response.status(), 200);
    let health: Value = server.get("/healthz").await.json().await.unwrap();
    assert_eq!(health["status"], "degraded", "{health}");
    assert!(health["store_write_failures"].as_u64().unwrap() >= 1);
    let metrics = server.get("/metrics").await.text().await.unwrap();
    let failures = metrics
        .lines()
        .find_map(|l| l.strip_prefix("hgpt_store_write_failures_total "))
        .unwrap();
    assert_ne!(failures, "0");
    server.stop().await;
}

#[tokio::test]
async fn an_empty_last_event_id_replays_everything() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), Setup::default()).await;
    let id = create_run(&server, "describe /a.jpg").await;
    let all = events(&server, &id, None).await;
    let response = server
        .client
        .get(server.at(&format!("/v1/runs/{id}/events")))
        .header("Last-Event-ID", "")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(parse_sse(&response.text().await.unwrap()).len(), all.len());
    server.stop().await;
}

#[tokio::test]
async fn a_client_leaving_a_streamed_completion_cancels_its_run() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(
        dir.path(),
        Setup {
            task_latency: Duration::from_secs(60),
            ..Setup::default()
        },
    )
    .await;
    let mut response = server
        .post(
            "/v1/chat/completions",
            json!({"model": "hugginggpt", "stream": true, "messages": [{"role": "user", "content": "describe /a.jpg"}]}),
        )
        .await;
    let id = response.headers()["x-hgpt-run-id"]
        .to_str()
        .unwrap()
        .to_string();
    response.chunk().await.unwrap().unwrap();
    drop(response);
    // The run ends cancelled (it would otherwise wait a minute on the model).
    let stream = events(&server, &id, None).await;
    assert!(
        stream.last().unwrap().data.contains("\"cancelled\""),
        "{:?}",
        stream.last()
    );
    server.stop().await;
}

#[tokio::test]
async fn planning_requests_share_the_run_limit() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(
        dir.path(),
        Setup {
            task_latency: Duration::from_secs(60),
            limits: RunLimits {
                max_running: 1,
                max_queued: 0,
                shutdown_grace: Duration::ZERO,
            },
            ..Setup::default()
        },
    )
    .await;
    let busy = create_run(&server, "one").await;
    let refused = server.post("/tasks", messages("describe /a.jpg")).await;
    assert_eq!(refused.status(), 429);
    server
        .post(&format!("/v1/runs/{busy}/cancel"), json!({}))
        .await;
    let planned = server.post("/tasks", messages("describe /a.jpg")).await;
    assert_eq!(planned.status(), 200);
    server.stop().await;
}

#[tokio::test]
async fn a_panicking_backend_fails_the_run_not_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(
        dir.path(),
        Setup {
            panicking_backend: true,
            ..Setup::default()
        },
    )
    .await;
    let id = create_run(&server, "describe /a.jpg").await;
    let stream = events(&server, &id, None).await;
    let last: Value = serde_json::from_str(&stream.last().unwrap().data).unwrap();
    assert_eq!(last["type"], "state");
    assert!(
        ["failed", "succeeded"].contains(&last["state"].as_str().unwrap()),
        "{last}"
    );
    let health: Value = server.get("/healthz").await.json().await.unwrap();
    assert_eq!(
        (health["running"].as_u64(), health["queued"].as_u64()),
        (Some(0), Some(0))
    );
    let again = server.post("/v1/runs", messages("describe /a.jpg")).await;
    assert_eq!(again.status(), 202);
    server.stop().await;
}

#[tokio::test]
async fn one_data_directory_serves_one_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), Setup::default()).await;
    // Answering, so it holds its data directory.
    assert_eq!(server.get("/healthz").await.status(), 200);
    let store = Store::open(&dir.path().join("data")).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let pipeline = Pipeline::new(
        Arc::new(ScriptedLlm::with_plan(PLAN)),
        Arc::new(FakeBackend::new(Duration::ZERO)),
        Arc::new(hgpt_testkit::inproc::MemoryMedia::default()),
        Arc::new(Catalog::builtin().unwrap()),
        Arc::new(Prompts::default()),
        PipelineConfig::default(),
    );
    let second = serve(
        listener,
        Arc::new(pipeline),
        store,
        ServerConfig {
            media: MediaConfig {
                media_root: dir.path().join("media"),
                out_dir: dir.path().join("out"),
                ..MediaConfig::default()
            },
            ..ServerConfig::default()
        },
        std::future::ready(()),
    )
    .await;
    let error = second.unwrap_err().to_string();
    assert!(error.contains("another hgpt serve"), "{error}");
    server.stop().await;
}

#[tokio::test]
async fn a_half_sent_request_does_not_hold_up_shutdown() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let server = start(
        dir.path(),
        Setup {
            limits: RunLimits {
                shutdown_grace: Duration::ZERO,
                ..RunLimits::default()
            },
            ..Setup::default()
        },
    )
    .await;
    let address = server.url.trim_start_matches("http://").to_string();
    let mut stalled = tokio::net::TcpStream::connect(&address).await.unwrap();
    stalled
        .write_all(b"POST /v1/runs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"req")
        .await
        .unwrap();
    // Make sure the server is reading it before stopping.
    assert_eq!(server.get("/healthz").await.status(), 200);
    server.stop().await;
    drop(stalled);
}

#[tokio::test]
async fn runs_past_the_retention_period_are_deleted_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), Setup::default()).await;
    let old = create_run(&server, "describe /a.jpg").await;
    events(&server, &old, None).await;
    server.stop().await;

    // Finished a few ms ago: older than a 1 ms retention period, so gone once
    // the retention pass at start has run (in the background: poll for it).
    let server = start(
        dir.path(),
        Setup {
            keep_runs_for: Some(Duration::from_millis(1)),
            ..Setup::default()
        },
    )
    .await;
    let mut gone = false;
    for _ in 0..200 {
        if server.get(&format!("/v1/runs/{old}")).await.status() == 404 {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(gone, "the old run was not deleted");
    server.stop().await;

    // Without a retention period runs stay.
    let server = start(dir.path(), Setup::default()).await;
    let kept = create_run(&server, "describe /a.jpg").await;
    events(&server, &kept, None).await;
    server.stop().await;
    let server = start(dir.path(), Setup::default()).await;
    assert_eq!(server.get(&format!("/v1/runs/{kept}")).await.status(), 200);
    server.stop().await;
}
