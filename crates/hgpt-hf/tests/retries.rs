//! Loading waits, retries, error mapping, auth and per-model endpoints.

mod common;

use common::*;
use hgpt_core::backend::{InferenceBackend, InferenceError};
use hgpt_core::output::InferenceOutput;
use hgpt_core::task::TaskKind;
use hgpt_hf::{HfBackend, HfConfig};
use hgpt_testkit::hf::{FakeHf, HfReply, always, canned_reply, sequence};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

fn classify() -> hgpt_core::backend::InferenceRequest {
    request(TaskKind::TextClassification, text("I love it"))
}

fn ok_reply() -> HfReply {
    canned_reply(TaskKind::TextClassification)
}

#[tokio::test]
async fn waits_for_a_loading_model_then_succeeds() {
    let server = FakeHf::start(sequence(vec![
        HfReply::loading(0.01),
        HfReply::loading(0.01),
        ok_reply(),
    ]))
    .await;
    let result = backend(&server).infer(&classify()).await;
    assert!(
        matches!(result, Ok(InferenceOutput::Labels(_))),
        "{result:?}"
    );
    let calls = server.calls();
    assert_eq!(calls.len(), 3);
    assert!(
        calls
            .iter()
            .all(|c| c.json == Some(json!({"inputs": "I love it"})))
    );
}

#[tokio::test]
async fn loading_waits_do_not_use_up_retries() {
    // More loading answers than max_retries, within the loading budget.
    let mut replies = vec![HfReply::loading(0.001); 6];
    replies.push(ok_reply());
    let server = FakeHf::start(sequence(replies)).await;
    let backend = HfBackend::new(HfConfig {
        max_retries: 1,
        ..config(&server.url())
    })
    .unwrap();
    let result = backend.infer(&classify()).await;
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(server.call_count(), 7);
}

#[tokio::test]
async fn gives_up_on_a_model_that_keeps_loading_past_the_budget() {
    let server = FakeHf::start(always(HfReply::loading(0.02))).await;
    let backend = HfBackend::new(HfConfig {
        max_loading_wait: Duration::from_millis(60),
        ..config(&server.url())
    })
    .unwrap();
    let result = backend.infer(&classify()).await;
    match result {
        Err(InferenceError::Server {
            status, message, ..
        }) => {
            assert_eq!(status, 503);
            assert!(message.contains("currently loading"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    let calls = server.call_count();
    assert!(
        calls >= 2,
        "it waited and retried at least once ({calls} calls)"
    );
}

#[tokio::test]
async fn server_errors_are_retried_then_reported_with_the_server_message() {
    let server = FakeHf::start(always(HfReply::error(500, "CUDA out of memory"))).await;
    let result = backend(&server).infer(&classify()).await;
    assert_eq!(
        result,
        Err(InferenceError::Server {
            model: MODEL.into(),
            status: 500,
            message: "CUDA out of memory".into()
        })
    );
    assert_eq!(server.call_count(), 1 + 3);

    let server = FakeHf::start(always(HfReply::error(502, "bad gateway"))).await;
    let backend = HfBackend::new(HfConfig {
        max_retries: 1,
        ..config(&server.url())
    })
    .unwrap();
    assert!(backend.infer(&classify()).await.is_err());
    assert_eq!(server.call_count(), 2);
}

#[tokio::test]
async fn a_503_without_estimated_time_is_retried_like_other_server_errors() {
    let server = FakeHf::start(sequence(vec![
        HfReply::error(503, "Service Unavailable"),
        ok_reply(),
    ]))
    .await;
    assert!(backend(&server).infer(&classify()).await.is_ok());
    assert_eq!(server.call_count(), 2);
}

#[tokio::test]
async fn rate_limits_are_retried_honouring_retry_after() {
    let server = FakeHf::start(sequence(vec![
        HfReply::error(429, "Rate limit reached").with_header("Retry-After", "0"),
        HfReply::error(429, "Rate limit reached"),
        ok_reply(),
    ]))
    .await;
    let result = backend(&server).infer(&classify()).await;
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(server.call_count(), 3);
}

#[tokio::test]
async fn client_errors_fail_at_once() {
    for (status, message) in [
        (404, "Model org/model does not exist"),
        (400, "Input validation error"),
        (422, "inputs must be a string"),
        (402, "You have exceeded your monthly included credits"),
    ] {
        let server = FakeHf::start(always(HfReply::error(status, message))).await;
        let result = backend(&server).infer(&classify()).await;
        assert_eq!(
            result,
            Err(InferenceError::Server {
                model: MODEL.into(),
                status,
                message: message.into()
            })
        );
        assert_eq!(server.call_count(), 1, "{status} is not retried");
    }
}

#[tokio::test]
async fn error_lists_and_plain_text_bodies_become_the_message() {
    let server = FakeHf::start(always(
        HfReply::json(json!({"error": ["too long", "bad"]})).with_status(400),
    ))
    .await;
    let Err(InferenceError::Server { message, .. }) = backend(&server).infer(&classify()).await
    else {
        panic!()
    };
    assert_eq!(message, "too long; bad");

    let server = FakeHf::start(always(
        HfReply::bytes("text/plain", "upstream exploded").with_status(400),
    ))
    .await;
    let Err(InferenceError::Server { message, .. }) = backend(&server).infer(&classify()).await
    else {
        panic!()
    };
    assert_eq!(message, "upstream exploded");
}

/// A loopback port with nothing listening.
fn dead_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[tokio::test]
async fn connection_failures_are_retried_then_a_transport_error() {
    let url = format!("http://127.0.0.1:{}", dead_port());
    let backend = HfBackend::new(config(&url)).unwrap();
    match backend.infer(&classify()).await {
        Err(InferenceError::Transport { model, message }) => {
            assert_eq!(model, MODEL);
            assert!(!message.is_empty());
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_slow_server_is_a_timeout() {
    let server = FakeHf::start(always(ok_reply().with_delay(Duration::from_secs(5)))).await;
    let backend = HfBackend::new(HfConfig {
        request_timeout: Duration::from_millis(100),
        ..config(&server.url())
    })
    .unwrap();
    let result = backend.infer(&classify()).await;
    assert_eq!(
        result,
        Err(InferenceError::Timeout {
            model: MODEL.into(),
            after: Duration::from_millis(100)
        })
    );
    assert_eq!(server.call_count(), 1, "a timeout is not retried");
}

#[tokio::test]
async fn the_bearer_token_is_sent_when_set() {
    let server = FakeHf::start(always(ok_reply())).await;
    let with_token = HfBackend::new(HfConfig {
        token: Some("hf_secret".into()),
        ..config(&server.url())
    })
    .unwrap();
    with_token.infer(&classify()).await.unwrap();
    backend(&server).infer(&classify()).await.unwrap();
    let calls = server.calls();
    assert_eq!(calls[0].authorization.as_deref(), Some("Bearer hf_secret"));
    assert_eq!(calls[0].bearer_token(), Some("hf_secret"));
    assert_eq!(calls[1].authorization, None);
}

#[tokio::test]
async fn trailing_slashes_of_the_base_url_are_trimmed() {
    let server = FakeHf::start(always(ok_reply())).await;
    let backend = HfBackend::new(config(&format!("{}//", server.url()))).unwrap();
    backend.infer(&classify()).await.unwrap();
    assert_eq!(server.calls()[0].path, "/models/org/model");
}

#[tokio::test]
async fn per_model_endpoints_route_to_their_own_server() {
    let hosted = FakeHf::start(always(ok_reply())).await;
    let local = FakeHf::start(always(HfReply::json(
        json!([{"label": "LOCAL", "score": 1.0}]),
    )))
    .await;
    let mut endpoints = BTreeMap::new();
    endpoints.insert("org/local-model".to_string(), format!("{}/", local.url()));
    let backend = HfBackend::new(HfConfig {
        model_endpoints: endpoints,
        ..config(&hosted.url())
    })
    .unwrap();

    let mut req = classify();
    req.model = "org/local-model".into();
    let out = backend.infer(&req).await.unwrap();
    assert_eq!(
        out,
        InferenceOutput::Labels(vec![hgpt_core::output::ScoredLabel {
            label: "LOCAL".into(),
            score: 1.0
        }])
    );
    backend.infer(&classify()).await.unwrap();

    assert_eq!(local.calls().len(), 1);
    assert_eq!(local.calls()[0].path, "/models/org/local-model");
    assert_eq!(hosted.calls().len(), 1);
    assert_eq!(hosted.calls()[0].model, MODEL);

    assert_eq!(
        backend.endpoint("org/local-model"),
        local.url().trim_start_matches("http://")
    );
    assert_eq!(backend.endpoint(MODEL), "huggingface");
}

#[tokio::test]
async fn invalid_model_ids_are_rejected_before_any_call() {
    let server = FakeHf::start(always(ok_reply())).await;
    let mut req = classify();
    req.model = "../../etc/passwd".into();
    let result = backend(&server).infer(&req).await;
    assert!(
        matches!(result, Err(InferenceError::BadInput { .. })),
        "{result:?}"
    );
    assert_eq!(server.call_count(), 0);
}

#[tokio::test]
async fn concurrent_calls_are_in_flight_together() {
    // Replies are held back far longer than the test runs: all four calls
    // reaching the server while none has an answer shows they run in parallel.
    let server = FakeHf::start(always(ok_reply().with_delay(Duration::from_secs(60)))).await;
    let backend = Arc::new(backend(&server));
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let backend = Arc::clone(&backend);
            tokio::spawn(async move { backend.infer(&classify()).await })
        })
        .collect();
    for _ in 0..2000 {
        if server.call_count() == 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(server.call_count(), 4);
    assert!(tasks.iter().all(|t| !t.is_finished()));
    for task in tasks {
        task.abort();
    }
}

#[test]
fn bad_configurations_are_rejected() {
    assert!(HfBackend::new(HfConfig::with_base_url("router.huggingface.co")).is_err());
    let mut endpoints = BTreeMap::new();
    endpoints.insert("a/b".to_string(), "localhost:8005".to_string());
    assert!(
        HfBackend::new(HfConfig {
            model_endpoints: endpoints,
            ..HfConfig::default()
        })
        .is_err()
    );
    assert!(
        HfBackend::new(HfConfig {
            token: Some("bad\ntoken".into()),
            ..HfConfig::default()
        })
        .is_err()
    );
    let defaults = HfConfig::default();
    assert_eq!(
        defaults.base_url,
        "https://router.huggingface.co/hf-inference"
    );
    assert_eq!(defaults.max_retries, 3);
    assert_eq!(defaults.request_timeout, Duration::from_secs(120));
    assert_eq!(defaults.endpoint_label, "huggingface");
}
