//! Shared helpers of the hgpt-hf integration tests.
#![allow(dead_code)]

pub mod hosted;

use bytes::Bytes;
use hgpt_core::backend::{InferenceBackend, InferenceError, InferenceRequest, ResolvedArgs};
use hgpt_core::output::{Blob, InferenceOutput};
use hgpt_core::task::TaskKind;
use hgpt_hf::{HfBackend, HfConfig};
use hgpt_testkit::hf::{FakeHf, HfCall, HfReply, always, sample_png, sample_wav};
use serde_json::Value;
use std::time::Duration;

pub const MODEL: &str = "org/model";

/// A configuration for a fake server with tiny delays.
pub fn config(url: &str) -> HfConfig {
    HfConfig {
        retry_base_delay: Duration::from_millis(1),
        retry_max_delay: Duration::from_millis(5),
        max_loading_wait: Duration::from_secs(5),
        request_timeout: Duration::from_secs(10),
        status_timeout: Duration::from_secs(5),
        ..HfConfig::with_base_url(url)
    }
}

pub fn backend(server: &FakeHf) -> HfBackend {
    HfBackend::new(config(&server.url())).unwrap()
}

pub fn request(task: TaskKind, args: ResolvedArgs) -> InferenceRequest {
    InferenceRequest {
        task,
        model: MODEL.to_string(),
        args,
    }
}

pub fn text(t: &str) -> ResolvedArgs {
    ResolvedArgs {
        text: Some(t.to_string()),
        ..ResolvedArgs::default()
    }
}

pub fn png_blob() -> Blob {
    Blob {
        bytes: Bytes::from(sample_png()),
        mime: Some("image/png".into()),
    }
}

pub fn wav_blob() -> Blob {
    Blob {
        bytes: Bytes::from(sample_wav()),
        mime: Some("audio/wav".into()),
    }
}

pub fn image_args() -> ResolvedArgs {
    ResolvedArgs {
        image: Some(png_blob()),
        ..ResolvedArgs::default()
    }
}

pub fn audio_args() -> ResolvedArgs {
    ResolvedArgs {
        audio: Some(wav_blob()),
        ..ResolvedArgs::default()
    }
}

/// `args` with extra arguments.
pub fn with_other(mut args: ResolvedArgs, pairs: &[(&str, Value)]) -> ResolvedArgs {
    for (k, v) in pairs {
        args.other.insert((*k).to_string(), v.clone());
    }
    args
}

/// Run one task against a fresh fake server that answers `reply`; the result
/// and the calls the server saw.
pub async fn run(
    task: TaskKind,
    args: ResolvedArgs,
    reply: HfReply,
) -> (Result<InferenceOutput, InferenceError>, Vec<HfCall>) {
    let server = FakeHf::start(always(reply)).await;
    let backend = backend(&server);
    let result = backend.infer(&request(task, args)).await;
    let calls = server.calls();
    server.shutdown().await;
    (result, calls)
}

/// Run and expect success with exactly one call.
pub async fn run_ok(
    task: TaskKind,
    args: ResolvedArgs,
    reply: HfReply,
) -> (InferenceOutput, HfCall) {
    let (result, mut calls) = run(task, args, reply).await;
    let output = match result {
        Ok(output) => output,
        Err(err) => panic!("{task} failed: {err}"),
    };
    assert_eq!(calls.len(), 1, "{task}: expected one call");
    (output, calls.remove(0))
}

/// Decode `reply` for `task` (the request must be valid).
pub async fn decode(task: TaskKind, args: ResolvedArgs, reply: HfReply) -> InferenceOutput {
    run_ok(task, args, reply).await.0
}

/// Assert a JSON call to the plain model route.
pub fn assert_json_call(call: &HfCall, pipeline: Option<&str>) -> Value {
    assert_eq!(call.method, "POST");
    match pipeline {
        Some(task) => assert_eq!(call.path, format!("/models/{MODEL}/pipeline/{task}")),
        None => assert_eq!(call.path, format!("/models/{MODEL}")),
    }
    assert_eq!(call.model, MODEL);
    assert_eq!(call.pipeline.as_deref(), pipeline);
    assert_eq!(call.content_type.as_deref(), Some("application/json"));
    call.json.clone().expect("a JSON body")
}

/// Assert a raw-bytes call to the plain model route.
pub fn assert_bytes_call(call: &HfCall, blob: &Blob) {
    assert_eq!(call.method, "POST");
    assert_eq!(call.path, format!("/models/{MODEL}"));
    assert_eq!(call.pipeline, None);
    assert_eq!(call.content_type, blob.mime);
    assert_eq!(call.body, blob.bytes);
}
