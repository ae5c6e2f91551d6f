//! The model server on loopback with the real MiniLM model: every route, the
//! error answers, concurrency, shutdown, and hgpt's own remote backend
//! (`hgpt-hf`) pointed at it.

mod common;

use common::{Server, safetensors_with};
use hgpt_core::backend::{
    Availability, InferenceBackend, InferenceError, InferenceRequest, ResolvedArgs,
};
use hgpt_core::output::InferenceOutput;
use hgpt_core::task::TaskKind;
use hgpt_hf::{HfBackend, HfConfig};
use hgpt_local::pipeline;
use hgpt_model_server::{DEFAULT_MAX_BODY_BYTES, ModelServerConfig};
use hgpt_testkit::cache::{Hub, MINILM, fixture_id, fixtures_dir};
use hgpt_testkit::models::minilm_snapshot;
use serde_json::{Value, json};
use std::time::Duration;

/// MiniLM, two fixture checkpoints and three broken models.
fn hub() -> Hub {
    let hub = Hub::new();
    hub.with_minilm();
    for folder in ["vit-imgcls", "bert-seqcls"] {
        hub.add_dir(&fixture_id(folder), &fixtures_dir().join(folder));
    }
    let minilm = minilm_snapshot();
    let read = |name: &str| std::fs::read(minilm.join(name)).unwrap();
    hub.add_files(
        "hgpt-test/bad-weights",
        &[
            ("config.json", read("config.json")),
            ("modules.json", read("modules.json")),
            ("tokenizer.json", read("tokenizer.json")),
            ("model.safetensors", safetensors_with("not.a.bert.weight")),
        ],
    );
    hub.add_files(
        "hgpt-test/unknown-arch",
        &[
            (
                "config.json",
                br#"{"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}"#.to_vec(),
            ),
            ("model.safetensors", safetensors_with("wte.weight")),
        ],
    );
    hub.add_files(
        "hgpt-test/no-weights",
        &[(
            "config.json",
            br#"{"architectures": ["BertModel"]}"#.to_vec(),
        )],
    );
    hub
}

async fn start(hub: &Hub) -> Server {
    Server::start(hub.path(), ModelServerConfig::default()).await
}

fn png() -> Vec<u8> {
    std::fs::read(fixtures_dir().join("images/gradient_40x30.png")).unwrap()
}

struct Reply {
    status: u16,
    content_type: Option<String>,
    body: Value,
}

async fn reply(response: reqwest::Response) -> Reply {
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_string());
    let bytes = response.bytes().await.unwrap();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes)));
    Reply {
        status,
        content_type,
        body,
    }
}

async fn get(url: &str) -> Reply {
    reply(reqwest::get(url).await.unwrap()).await
}

async fn post_json(url: &str, body: Value) -> Reply {
    let client = reqwest::Client::new();
    reply(client.post(url).json(&body).send().await.unwrap()).await
}

/// Raw bytes with no Content-Type header at all.
async fn post_raw(url: &str, body: Vec<u8>) -> Reply {
    let client = reqwest::Client::new();
    let request = client.post(url).body(body).build().unwrap();
    assert!(request.headers().get("content-type").is_none());
    reply(client.execute(request).await.unwrap()).await
}

/// An error answer: the status, a message and the error type.
fn assert_error(reply: &Reply, status: u16, error_type: &str) -> String {
    assert_eq!(reply.status, status, "{}", reply.body);
    assert_eq!(
        reply.content_type.as_deref(),
        Some("application/json"),
        "{}",
        reply.body
    );
    assert_eq!(reply.body["error_type"], error_type, "{}", reply.body);
    let message = reply.body["error"].as_str().unwrap_or_default().to_string();
    assert!(!message.is_empty(), "{}", reply.body);
    message
}

fn floats(value: &Value) -> Vec<f64> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {value}"))
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect()
}

fn minilm_fixture() -> Value {
    let path = fixtures_dir().join("minilm/embeddings.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn assert_close(actual: &[f64], expected: &Value, tolerance: f64) {
    let expected = floats(expected);
    assert_eq!(actual.len(), expected.len());
    for (i, (a, e)) in actual.iter().zip(&expected).enumerate() {
        assert!((a - e).abs() <= tolerance, "item {i}: {a} vs {e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_info_models_and_status() {
    let hub = hub();
    let server = start(&hub).await;
    let url = &server.url;

    let health = get(&format!("{url}/health")).await;
    assert_eq!(
        (health.status, &health.body),
        (200, &json!({"status": "ok"}))
    );

    let models = get(&format!("{url}/models")).await;
    assert_eq!(models.status, 200);
    let ids: Vec<&str> = models
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    let mut expected = vec![MINILM, "hgpt-test/bad-weights"];
    if pipeline::supports(TaskKind::ImageClassification) {
        expected.push("hgpt-fixtures/vit-imgcls");
    }
    if pipeline::supports(TaskKind::TextClassification) {
        expected.push("hgpt-fixtures/bert-seqcls");
    }
    expected.sort();
    assert_eq!(
        ids, expected,
        "unknown-arch and no-weights are not servable"
    );
    let minilm = models
        .body
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == MINILM)
        .unwrap();
    assert_eq!(
        minilm,
        &json!({"id": MINILM, "task": "feature-extraction",
                "tasks": ["feature-extraction", "sentence-similarity"], "loaded": false})
    );

    let status_url = format!("{url}/status/{MINILM}");
    let status = get(&status_url).await;
    assert_eq!(status.status, 200);
    assert_eq!(status.body["loaded"], false);
    let info = get(&format!("{url}/info")).await;
    assert_eq!(info.status, 200);
    assert_eq!(info.body["router"], "hgpt-model-server");
    assert_eq!(info.body["model_id"], Value::Null, "several models");
    assert_eq!(info.body["models"], models.body);

    // Using the model loads it.
    let embedded = post_json(&format!("{url}/models/{MINILM}"), json!({"inputs": "hi"})).await;
    assert_eq!(embedded.status, 200, "{}", embedded.body);
    let status = get(&status_url).await;
    assert_eq!(
        status.body,
        json!({"loaded": true, "state": "Loaded", "task": "feature-extraction"})
    );
    let models = get(&format!("{url}/models")).await;
    assert!(
        models
            .body
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == MINILM && m["loaded"] == true)
    );

    // What the Python client calls for a model URL.
    let model_info = get(&format!("{url}/models/{MINILM}/info")).await;
    assert_eq!(model_info.status, 200);
    assert_eq!(model_info.body["model_id"], MINILM);
    assert_eq!(model_info.body["model_pipeline_tag"], "feature-extraction");
    assert_eq!(model_info.body["loaded"], true);
    let model_health = get(&format!("{url}/models/{MINILM}/health")).await;
    assert_eq!(model_health.status, 200);

    for missing in [
        "org/missing",
        "hgpt-test/unknown-arch",
        "hgpt-test/no-weights",
        "a/b/c",
    ] {
        let status = get(&format!("{url}/status/{missing}")).await;
        assert_error(&status, 404, "not_found");
        let info = get(&format!("{url}/models/{missing}/info")).await;
        assert_error(&info, 404, "not_found");
    }
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allow_list_limits_what_is_served() {
    let hub = hub();
    let config = ModelServerConfig {
        models: vec![MINILM.to_string()],
        ..ModelServerConfig::default()
    };
    assert_eq!(config.max_body_bytes, DEFAULT_MAX_BODY_BYTES);
    let server = Server::start(hub.path(), config).await;
    let url = &server.url;
    let models = get(&format!("{url}/models")).await;
    assert_eq!(models.body.as_array().unwrap().len(), 1, "{}", models.body);
    let info = get(&format!("{url}/info")).await;
    assert_eq!(info.body["model_id"], MINILM);
    assert_eq!(info.body["model_pipeline_tag"], "feature-extraction");

    // Cached, but not on the list.
    let other = post_json(
        &format!("{url}/models/hgpt-test/bad-weights"),
        json!({"inputs": "x"}),
    )
    .await;
    let message = assert_error(&other, 404, "not_found");
    assert!(message.contains(MINILM), "{message}");
    assert_error(
        &get(&format!("{url}/status/hgpt-test/bad-weights")).await,
        404,
        "not_found",
    );
    let ok = post_json(&format!("{url}/models/{MINILM}"), json!({"inputs": "x"})).await;
    assert_eq!(ok.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feature_extraction_matches_sentence_transformers() {
    let hub = hub();
    let server = start(&hub).await;
    let fixture = minilm_fixture();
    let cases = fixture["sentences"].as_array().unwrap();
    let (first, second) = (&cases[0], &cases[1]);
    let plain = format!("{}/models/{MINILM}", server.url);
    let piped = format!("{}/models/{MINILM}/pipeline/feature-extraction", server.url);

    // One text: one vector.
    let one = post_json(&plain, json!({"inputs": first["text"]})).await;
    assert_eq!(one.status, 200, "{}", one.body);
    assert_close(&floats(&one.body), &first["embedding"], 1e-4);

    // A list: one vector per text.
    let two = post_json(&piped, json!({"inputs": [first["text"], second["text"]]})).await;
    assert_eq!(two.status, 200, "{}", two.body);
    let rows = two.body.as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert_close(&floats(&rows[0]), &first["embedding"], 1e-4);
    assert_close(&floats(&rows[1]), &second["embedding"], 1e-4);

    // TEI-style root option and `parameters` both reach the pipeline.
    for body in [
        json!({"inputs": first["text"], "normalize": false}),
        json!({"inputs": first["text"], "parameters": {"normalize": false}}),
    ] {
        let raw = post_json(&piped, body).await;
        assert_eq!(raw.status, 200, "{}", raw.body);
        assert_close(&floats(&raw.body), &first["raw_embedding"], 1e-4);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentence_similarity_by_route_or_by_body_shape() {
    let hub = hub();
    let server = start(&hub).await;
    let expected = minilm_fixture()["sentence_similarity"].clone();
    let body = json!({"inputs": {
        "source_sentence": expected["source_sentence"],
        "sentences": expected["sentences"],
    }});
    for url in [
        format!("{}/models/{MINILM}", server.url),
        format!(
            "{}/models/{MINILM}/pipeline/sentence-similarity",
            server.url
        ),
        format!("{}/models/{MINILM}/pipeline/feature-extraction", server.url),
    ] {
        let scores = post_json(&url, body.clone()).await;
        assert_eq!(scores.status, 200, "{url}: {}", scores.body);
        assert_close(&floats(&scores.body), &expected["scores"], 1e-4);
    }
    let wrong = post_json(
        &format!(
            "{}/models/{MINILM}/pipeline/sentence-similarity",
            server.url
        ),
        json!({"inputs": "just one sentence"}),
    )
    .await;
    let message = assert_error(&wrong, 400, "invalid_request");
    assert!(message.contains("source_sentence"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_image_bodies_need_no_content_type() {
    let hub = hub();
    let server = start(&hub).await;
    let vit = format!("{}/models/{}", server.url, fixture_id("vit-imgcls"));
    let reply = post_raw(&vit, png()).await;
    if pipeline::supports(TaskKind::ImageClassification) {
        assert_eq!(reply.status, 200, "{}", reply.body);
        let labels = reply.body.as_array().unwrap();
        assert!(!labels.is_empty());
        for label in labels {
            assert!(
                label["label"].is_string() && label["score"].is_f64(),
                "{label}"
            );
        }
        let expected: Value = serde_json::from_str(
            &std::fs::read_to_string(fixtures_dir().join("vit-imgcls/expected.json")).unwrap(),
        )
        .unwrap();
        let case = expected["cases"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["image"] == "images/gradient_40x30.png")
            .unwrap();
        let want: Vec<&Value> = case["pipeline"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| &l["label"])
            .collect();
        let got: Vec<&Value> = labels.iter().map(|l| &l["label"]).collect();
        assert_eq!(got, want);
    } else {
        // Until the vision pipeline exists, the image task is refused cleanly.
        let message = assert_error(&reply, 400, "unsupported");
        assert!(message.contains("image-classification"), "{message}");
    }

    // Bytes that are no image are a bad request, whatever the pipeline.
    let garbage = post_raw(&vit, b"\x00\x01 definitely not an image".to_vec()).await;
    let message = assert_error(&garbage, 400, "invalid_image");
    assert!(message.contains("cannot decode the image"), "{message}");
    let bad_b64 = post_json(&vit, json!({"inputs": "@@not base64@@"})).await;
    assert_error(&bad_b64, 400, "invalid_request");

    // A text model does not take raw bytes.
    let text = post_raw(&format!("{}/models/{MINILM}", server.url), png()).await;
    let message = assert_error(&text, 400, "invalid_request");
    assert!(message.contains("JSON body"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_json_errors_and_the_server_stays_up() {
    let hub = hub();
    let server = Server::start(
        hub.path(),
        ModelServerConfig {
            max_body_bytes: 4096,
            ..ModelServerConfig::default()
        },
    )
    .await;
    let url = &server.url;
    let minilm = format!("{url}/models/{MINILM}");
    let client = reqwest::Client::new();

    // 400: malformed JSON, missing inputs, wrong input shapes.
    let malformed = client
        .post(&minilm)
        .header("content-type", "application/json")
        .body("{\"inputs\": ")
        .send()
        .await
        .unwrap();
    let message = assert_error(&reply(malformed).await, 400, "invalid_request");
    assert!(message.contains("not valid JSON"), "{message}");
    let no_inputs = post_json(&minilm, json!({"parameters": {"normalize": true}})).await;
    let message = assert_error(&no_inputs, 400, "invalid_request");
    assert!(message.contains("inputs"), "{message}");
    assert_error(
        &post_json(&minilm, json!({"inputs": 42})).await,
        400,
        "invalid_request",
    );
    assert_error(
        &post_json(&minilm, json!({"inputs": "x", "parameters": [1]})).await,
        400,
        "invalid_request",
    );

    // 404: unknown models, ids that are not ids, unknown tasks and routes.
    for model in ["org/missing", "hgpt-test/../x"] {
        let reply = post_json(&format!("{url}/models/{model}"), json!({"inputs": "x"})).await;
        assert_error(&reply, 404, "not_found");
    }
    let message = assert_error(
        &post_json(&format!("{url}/models/org/missing"), json!({"inputs": "x"})).await,
        404,
        "not_found",
    );
    assert!(message.contains("org/missing"), "{message}");
    assert_error(
        &post_json(
            &format!("{minilm}/pipeline/juggling"),
            json!({"inputs": "x"}),
        )
        .await,
        404,
        "not_found",
    );
    assert_error(&get(&format!("{url}/nowhere")).await, 404, "not_found");
    let deleted = reply(client.delete(&minilm).send().await.unwrap()).await;
    assert_error(&deleted, 405, "method_not_allowed");

    // 413: a body over the limit.
    let big = "x".repeat(64 * 1024);
    let too_big = post_json(&minilm, json!({"inputs": big})).await;
    let message = assert_error(&too_big, 413, "payload_too_large");
    assert!(message.contains("4096"), "{message}");

    // 422: the pipeline rejects the input.
    let empty = post_json(&minilm, json!({"inputs": "   "})).await;
    let message = assert_error(&empty, 422, "validation");
    assert!(message.contains("no text"), "{message}");

    // 400: a model whose task the server cannot tell, or a task it cannot run.
    let unknown = post_json(
        &format!("{url}/models/hgpt-test/unknown-arch"),
        json!({"inputs": "x"}),
    )
    .await;
    let message = assert_error(&unknown, 400, "unsupported");
    assert!(message.contains("/pipeline/"), "{message}");
    let asr = post_raw(
        &format!("{minilm}/pipeline/automatic-speech-recognition"),
        b"RIFF\0\0\0\0WAVEfmt ".to_vec(),
    )
    .await;
    assert_error(&asr, 400, "unsupported");

    // 500: weights with unexpected names.
    let bad = post_json(
        &format!("{url}/models/hgpt-test/bad-weights"),
        json!({"inputs": "x"}),
    )
    .await;
    let message = assert_error(&bad, 500, "load_error");
    assert!(message.contains("hgpt-test/bad-weights"), "{message}");

    // 404: a model whose files are only partly cached.
    let files_missing = post_json(
        &format!("{url}/models/hgpt-test/no-weights/pipeline/feature-extraction"),
        json!({"inputs": "x"}),
    )
    .await;
    let message = assert_error(&files_missing, 404, "not_found");
    assert!(message.contains("model.safetensors"), "{message}");

    // Still serving.
    let health = get(&format!("{url}/health")).await;
    assert_eq!(health.status, 200);
    let ok = post_json(&minilm, json!({"inputs": "still here"})).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_requests_all_succeed() {
    let hub = hub();
    let server = start(&hub).await;
    let client = reqwest::Client::new();
    let minilm = format!("{}/models/{MINILM}", server.url);
    let requests = (0..8).map(|i| {
        let body = if i % 2 == 0 {
            json!({"inputs": format!("sentence number {}", i % 4)})
        } else {
            json!({"inputs": {"source_sentence": "a cat", "sentences": ["a kitten", "a truck"]}})
        };
        let request = client.post(&minilm).json(&body).send();
        async move { reply(request.await.unwrap()).await }
    });
    let replies = futures::future::join_all(requests).await;
    for (i, reply) in replies.iter().enumerate() {
        assert_eq!(reply.status, 200, "request {i}: {}", reply.body);
        if i % 2 == 1 {
            let scores = floats(&reply.body);
            assert!(scores[0] > scores[1], "{scores:?}");
            assert_eq!(reply.body, replies[1].body);
        } else {
            assert_eq!(floats(&reply.body).len(), 384);
        }
    }
    // The same text, embedded concurrently, gives the same vector.
    assert_eq!(replies[0].body, replies[4].body);
    assert_ne!(replies[0].body, replies[2].body);
    assert_eq!(
        server.backend.loaded().len(),
        1,
        "one load for all requests"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_is_graceful() {
    let hub = hub();
    let server = start(&hub).await;
    let addr = server.addr;
    assert_eq!(get(&format!("{}/health", server.url)).await.status, 200);
    server.stop().await.unwrap();
    let refused = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::net::TcpStream::connect(addr),
    )
    .await
    .unwrap();
    assert!(refused.is_err(), "the port is closed after shutdown");
}

fn hf_backend(url: &str) -> HfBackend {
    HfBackend::new(HfConfig {
        max_retries: 0,
        ..HfConfig::with_base_url(url)
    })
    .unwrap()
}

fn request(task: TaskKind, model: &str, args: ResolvedArgs) -> InferenceRequest {
    InferenceRequest {
        task,
        model: model.into(),
        args,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hgpt_hf_backend_round_trips_through_the_server() {
    let hub = hub();
    let server = start(&hub).await;
    let remote = hf_backend(&server.url);
    let fixture = minilm_fixture();
    let case = &fixture["sentences"][0];

    assert_eq!(
        remote
            .availability(TaskKind::FeatureExtraction, MINILM)
            .await,
        Availability::Unknown,
        "not loaded yet"
    );
    let embedding = remote
        .infer(&request(
            TaskKind::FeatureExtraction,
            MINILM,
            ResolvedArgs {
                text: case["text"].as_str().map(str::to_string),
                ..ResolvedArgs::default()
            },
        ))
        .await
        .unwrap();
    let InferenceOutput::Embeddings(vector) = embedding else {
        panic!("{embedding:?}")
    };
    assert_close(&floats(&vector), &case["embedding"], 1e-4);
    assert_eq!(
        remote
            .availability(TaskKind::FeatureExtraction, MINILM)
            .await,
        Availability::Available
    );

    let expected = &fixture["sentence_similarity"];
    let similarity = remote
        .infer(&request(
            TaskKind::SentenceSimilarity,
            MINILM,
            ResolvedArgs {
                text: expected["source_sentence"].as_str().map(str::to_string),
                other: [("sentences".to_string(), expected["sentences"].clone())]
                    .into_iter()
                    .collect(),
                ..ResolvedArgs::default()
            },
        ))
        .await
        .unwrap();
    let InferenceOutput::Similarities(scores) = similarity else {
        panic!("{similarity:?}")
    };
    assert_close(&scores, &expected["scores"], 1e-4);

    // A batch of texts.
    let batch = remote
        .infer(&request(
            TaskKind::FeatureExtraction,
            MINILM,
            ResolvedArgs {
                other: [("texts".to_string(), json!(["one", "two", "three"]))]
                    .into_iter()
                    .collect(),
                ..ResolvedArgs::default()
            },
        ))
        .await
        .unwrap();
    let InferenceOutput::Embeddings(rows) = batch else {
        panic!("{batch:?}")
    };
    assert_eq!(rows.as_array().unwrap().len(), 3);

    // Errors come back with the server's status and message.
    let missing = remote
        .infer(&request(
            TaskKind::FeatureExtraction,
            "org/missing",
            ResolvedArgs {
                text: Some("x".into()),
                ..ResolvedArgs::default()
            },
        ))
        .await
        .unwrap_err();
    let InferenceError::Server {
        status, message, ..
    } = missing
    else {
        panic!("{missing:?}")
    };
    assert_eq!(status, 404);
    assert!(message.contains("org/missing"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_classification_is_nested_and_takes_batches() {
    if !pipeline::supports(TaskKind::TextClassification) {
        return;
    }
    let hub = hub();
    let server = start(&hub).await;
    let url = format!("{}/models/{}", server.url, fixture_id("bert-seqcls"));
    let labels_of = |value: &Value| -> Vec<String> {
        value
            .as_array()
            .unwrap_or_else(|| panic!("not a list: {value}"))
            .iter()
            .map(|l| {
                assert!(l["score"].is_f64(), "{l}");
                l["label"].as_str().unwrap().to_string()
            })
            .collect()
    };
    let one = post_json(
        &url,
        json!({"inputs": "I love it", "parameters": {"top_k": 2}}),
    )
    .await;
    assert_eq!(one.status, 200, "{}", one.body);
    let outer = one.body.as_array().unwrap();
    assert_eq!(outer.len(), 1, "one input, one inner list: {}", one.body);
    assert_eq!(labels_of(&outer[0]).len(), 2);

    let two = post_json(&url, json!({"inputs": ["I love it", "I hate it"]})).await;
    assert_eq!(two.status, 200, "{}", two.body);
    let outer = two.body.as_array().unwrap();
    assert_eq!(outer.len(), 2, "{}", two.body);
    // The first of the batch is what the single request answered.
    assert_eq!(labels_of(&outer[0])[0], labels_of(&one.body[0])[0]);
    assert!(!labels_of(&outer[1]).is_empty());
}
