//! Availability probes (`GET {base}/status/{id}`).

mod common;

use common::*;
use hgpt_core::backend::{Availability, InferenceBackend};
use hgpt_core::task::TaskKind;
use hgpt_hf::{HfBackend, HfConfig};
use hgpt_testkit::hf::{FakeHf, HfReply, always};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Duration;

async fn probe(reply: HfReply) -> (Availability, Vec<hgpt_testkit::hf::HfCall>) {
    let server = FakeHf::start(always(reply)).await;
    let availability = backend(&server)
        .availability(TaskKind::ImageClassification, MODEL)
        .await;
    let calls = server.calls();
    (availability, calls)
}

#[tokio::test]
async fn a_loaded_model_is_available() {
    let (availability, calls) = probe(HfReply::status_loaded(true)).await;
    assert_eq!(availability, Availability::Available);
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].method, "GET");
    assert_eq!(calls[0].path, "/status/org/model");
    assert!(calls[0].is_status);
}

#[tokio::test]
async fn a_loadable_model_is_unknown() {
    let (availability, _) = probe(HfReply::status_loaded(false)).await;
    assert_eq!(availability, Availability::Unknown);
    let (availability, _) = probe(HfReply::json(json!({"loaded": false}))).await;
    assert_eq!(availability, Availability::Unknown);
}

#[tokio::test]
async fn a_model_too_big_for_the_api_is_unavailable() {
    let (availability, _) = probe(HfReply::json(json!({"loaded": false, "state": "TooBig"}))).await;
    let Availability::Unavailable(reason) = availability else {
        panic!("{availability:?}")
    };
    assert!(reason.contains("too big"), "{reason}");
}

#[tokio::test]
async fn a_missing_status_route_is_unknown() {
    for status in [404, 405] {
        let (availability, _) = probe(HfReply::error(status, "Not Found")).await;
        assert_eq!(availability, Availability::Unknown, "{status}");
    }
}

#[tokio::test]
async fn an_unreachable_server_is_unavailable() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let backend = HfBackend::new(config(&format!("http://127.0.0.1:{port}"))).unwrap();
    let availability = backend
        .availability(TaskKind::TextClassification, MODEL)
        .await;
    assert!(
        matches!(availability, Availability::Unavailable(_)),
        "{availability:?}"
    );
}

#[tokio::test]
async fn a_status_probe_that_hangs_is_unavailable() {
    let server = FakeHf::start(always(
        HfReply::status_loaded(true).with_delay(Duration::from_secs(60)),
    ))
    .await;
    let backend = HfBackend::new(HfConfig {
        status_timeout: Duration::from_millis(100),
        ..config(&server.url())
    })
    .unwrap();
    let availability = backend
        .availability(TaskKind::TextClassification, MODEL)
        .await;
    assert!(
        matches!(availability, Availability::Unavailable(_)),
        "{availability:?}"
    );
}

#[tokio::test]
async fn controlnet_tasks_are_unavailable_without_a_call() {
    let server = FakeHf::start(always(HfReply::status_loaded(true))).await;
    let availability = backend(&server)
        .availability(TaskKind::CannyControl, "lllyasviel/sd-controlnet-canny")
        .await;
    let Availability::Unavailable(reason) = availability else {
        panic!("{availability:?}")
    };
    assert!(reason.contains("local"), "{reason}");
    assert_eq!(server.call_count(), 0);
}

#[tokio::test]
async fn probes_use_the_per_model_endpoint_and_the_token() {
    let hosted = FakeHf::start(always(HfReply::error(404, "nope"))).await;
    let local = FakeHf::start(always(HfReply::status_loaded(true))).await;
    let mut endpoints = BTreeMap::new();
    endpoints.insert("org/local".to_string(), local.url());
    let backend = HfBackend::new(HfConfig {
        model_endpoints: endpoints,
        token: Some("hf_x".into()),
        ..config(&hosted.url())
    })
    .unwrap();
    assert_eq!(
        backend
            .availability(TaskKind::TextClassification, "org/local")
            .await,
        Availability::Available
    );
    assert_eq!(
        backend
            .availability(TaskKind::TextClassification, MODEL)
            .await,
        Availability::Unknown
    );
    assert_eq!(local.calls()[0].path, "/status/org/local");
    assert_eq!(local.calls()[0].bearer_token(), Some("hf_x"));
    assert_eq!(hosted.calls().len(), 1);
}

#[tokio::test]
async fn canned_servers_answer_status_for_their_models_only() {
    let server = FakeHf::with_models([("org/known", TaskKind::TextClassification)]).await;
    let backend = backend(&server);
    assert_eq!(
        backend
            .availability(TaskKind::TextClassification, "org/known")
            .await,
        Availability::Available
    );
    // An unknown model answers 404, which cannot be told apart from a missing route.
    assert_eq!(
        backend
            .availability(TaskKind::TextClassification, "org/unknown")
            .await,
        Availability::Unknown
    );
}
