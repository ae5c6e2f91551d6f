//! hgpt's provider requests against the reference implementation of these
//! protocols, the official `huggingface_hub` InferenceClient (PyPI, pinned in
//! `scripts/python-test-env.sh`): for each provider and task both send their
//! request to the same loopback fake router and the test compares method,
//! path, query, body and the headers that matter, and the Hub API calls each
//! makes to learn the provider's model id.

mod common;

use common::hosted::*;
use hgpt_core::backend::{InferenceBackend, InferenceRequest, ResolvedArgs};
use hgpt_core::output::Blob;
use hgpt_core::task::TaskKind;
use hgpt_hf::{ProviderOrder, RouterBackend};
use hgpt_testkit::hf::{sample_png, sample_wav};
use hgpt_testkit::router::{FakeRouter, RouterCall};
use hgpt_testkit::venv_python;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::process::Command;

struct Case {
    provider: &'static str,
    task: TaskKind,
    model: &'static str,
    text: Option<&'static str>,
    params: Value,
}

fn cases() -> Vec<Case> {
    let case = |provider, task, model, text| Case {
        provider,
        task,
        model,
        text,
        params: json!({}),
    };
    let sized = json!({"width": 64, "height": 48, "num_inference_steps": 4, "seed": 7});
    vec![
        Case {
            params: sized.clone(),
            ..case("fal-ai", TaskKind::TextToImage, T2I, Some("a red fox"))
        },
        case("fal-ai", TaskKind::TextToSpeech, TTS, Some("hello there")),
        case("fal-ai", TaskKind::AutomaticSpeechRecognition, ASR, None),
        case("fal-ai", TaskKind::ImageToImage, I2I, Some("make it blue")),
        case("fal-ai", TaskKind::TextToVideo, T2V, Some("a fox running")),
        Case {
            params: sized.clone(),
            ..case("replicate", TaskKind::TextToImage, T2I, Some("a red fox"))
        },
        case(
            "replicate",
            TaskKind::TextToSpeech,
            TTS,
            Some("hello there"),
        ),
        case("replicate", TaskKind::AutomaticSpeechRecognition, ASR, None),
        case(
            "replicate",
            TaskKind::ImageToImage,
            I2I,
            Some("make it blue"),
        ),
        case(
            "replicate",
            TaskKind::TextToVideo,
            T2V,
            Some("a fox running"),
        ),
        Case {
            params: sized,
            ..case("together", TaskKind::TextToImage, T2I, Some("a red fox"))
        },
        case("together", TaskKind::TextToSpeech, TTS, Some("hello there")),
        case(
            "together",
            TaskKind::ImageToImage,
            I2I,
            Some("make it blue"),
        ),
        case(
            "together",
            TaskKind::TextToVideo,
            T2V,
            Some("a fox running"),
        ),
        case("hf-inference", TaskKind::ObjectDetection, DETR, None),
        // `auto`: the first provider of the Hub's mapping (fal-ai here).
        case("auto", TaskKind::TextToImage, T2I, Some("a red fox")),
    ]
}

/// The calls of the fake's log between `/marker/{i}` and the next marker.
fn split_by_marker(calls: Vec<RouterCall>) -> Vec<Vec<RouterCall>> {
    let mut groups: Vec<Vec<RouterCall>> = Vec::new();
    for call in calls {
        if call.path.starts_with("/marker/") {
            groups.push(Vec::new());
        } else if let Some(group) = groups.last_mut() {
            group.push(call);
        }
    }
    groups
}

/// The first request to the provider (the submission).
fn submission(calls: &[RouterCall]) -> &RouterCall {
    calls
        .iter()
        .find(|c| c.method == "POST")
        .unwrap_or_else(|| panic!("no POST among {calls:?}"))
}

/// A JSON body with every `data:` URL's media type dropped: hgpt labels
/// inputs with their sniffed type, where the Python client hard-codes or
/// guesses one (fal-ai's ASR always says audio/mpeg; raw bytes get a default).
fn without_data_url_types(value: &Value) -> Value {
    match value {
        Value::String(s) if s.starts_with("data:") => {
            let payload = s.split_once(";base64,").map_or(s.as_str(), |(_, p)| p);
            Value::String(format!("data:;base64,{payload}"))
        }
        Value::Array(items) => Value::Array(items.iter().map(without_data_url_types).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), without_data_url_types(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// `expand` values of a Hub API query.
fn expands(call: &RouterCall) -> Vec<String> {
    call.query
        .as_deref()
        .unwrap_or_default()
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .filter(|(k, _)| *k == "expand" || *k == "expand%5B%5D" || *k == "expand[]")
        .map(|(_, v)| v.to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_requests_match_the_python_inference_client() {
    let python = venv_python();
    let fake = FakeRouter::start(models(), BTreeMap::new(), BTreeMap::new()).await;
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("in.png");
    let audio = dir.path().join("in.wav");
    std::fs::write(&image, sample_png()).unwrap();
    std::fs::write(&audio, sample_wav()).unwrap();
    let cases = cases();
    let described: Vec<Value> = cases
        .iter()
        .map(|c| {
            json!({"provider": c.provider, "task": c.task.as_str(), "model": c.model,
                   "text": c.text, "params": c.params, "image": image, "audio": audio})
        })
        .collect();
    let cases_file = dir.path().join("cases.json");
    std::fs::write(&cases_file, serde_json::to_vec(&described).unwrap()).unwrap();
    let script = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python/provider_requests.py");
    let mut command = Command::new(python);
    command
        .arg(script)
        .arg(fake.url())
        .arg(&cases_file)
        .env("HF_ENDPOINT", fake.url())
        .env("HF_HOME", dir.path().join("hf-home"))
        .env("HF_HUB_DISABLE_TELEMETRY", "1")
        // A logged-in user: the Hub API calls carry the token too.
        .env("HF_TOKEN", "hf_test")
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost");
    for name in [
        "HF_HUB_OFFLINE",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "http_proxy",
        "https_proxy",
    ] {
        command.env_remove(name);
    }
    let output = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let python_calls = split_by_marker(fake.calls());
    assert_eq!(python_calls.len(), cases.len() + 1);

    let mut compared_hub_calls = 0;
    for (case, python) in cases.iter().zip(&python_calls) {
        let label = format!("{} {}", case.provider, case.task);
        fake.clear_calls();
        let (store, _media_dir) = media(true);
        let mut router = router_config(&fake);
        router.providers = match case.provider {
            "auto" => ProviderOrder::Auto,
            name => ProviderOrder::Only(vec![name.to_string()]),
        };
        let backend = RouterBackend::new(http(Some("hf_test")), router, store).unwrap();
        let mut args = ResolvedArgs {
            text: case.text.map(str::to_string),
            ..ResolvedArgs::default()
        };
        if matches!(
            case.task,
            TaskKind::ImageToImage | TaskKind::ObjectDetection
        ) {
            args.image = Some(Blob::sniffed(sample_png()));
        }
        if case.task == TaskKind::AutomaticSpeechRecognition {
            args.audio = Some(Blob::sniffed(sample_wav()));
        }
        if let Value::Object(params) = &case.params {
            args.other = params.clone().into_iter().collect();
        }
        let request = InferenceRequest {
            task: case.task,
            model: case.model.to_string(),
            args,
        };
        backend
            .infer(&request)
            .await
            .unwrap_or_else(|e| panic!("{label}: {e}"));
        let ours = fake.calls();

        let (theirs, mine) = (submission(python), submission(&ours));
        assert_eq!(mine.path, theirs.path, "{label}: path");
        assert_eq!(mine.query, theirs.query, "{label}: query");
        match (&theirs.json, &mine.json) {
            (Some(theirs), Some(mine)) => assert_eq!(
                without_data_url_types(mine),
                without_data_url_types(theirs),
                "{label}: body"
            ),
            _ => assert_eq!(mine.body, theirs.body, "{label}: raw body"),
        }
        for header in ["authorization", "prefer"] {
            assert_eq!(
                mine.header(header),
                theirs.header(header),
                "{label}: {header}"
            );
        }
        let json_body = theirs.json.is_some();
        if json_body {
            assert_eq!(
                mine.header("content-type"),
                Some("application/json"),
                "{label}"
            );
            assert_eq!(
                theirs.header("content-type"),
                Some("application/json"),
                "{label}"
            );
        }

        // The Hub API: the same model's info, with at least the fields the
        // client asks for (hgpt also asks for the pipeline tag and warm state
        // in the same call instead of a second one).
        let hub = |calls: &[RouterCall]| -> Vec<RouterCall> {
            calls
                .iter()
                .filter(|c| c.path.starts_with("/api/"))
                .cloned()
                .collect()
        };
        let (their_hub, my_hub) = (hub(python), hub(&ours));
        assert_eq!(my_hub.len(), 1, "{label}: one Hub call, {my_hub:?}");
        // The client caches mappings per process: only a model's first case
        // asks the Hub.
        compared_hub_calls += their_hub.len();
        for call in &their_hub {
            assert_eq!(call.path, my_hub[0].path, "{label}: Hub path");
            for field in expands(call) {
                assert!(
                    expands(&my_hub[0]).contains(&field),
                    "{label}: expand {field}"
                );
            }
            assert_eq!(
                call.header("authorization"),
                my_hub[0].header("authorization")
            );
        }
    }
    let models: std::collections::BTreeSet<_> = cases.iter().map(|c| c.model).collect();
    assert!(
        compared_hub_calls >= models.len(),
        "{compared_hub_calls} Hub calls compared"
    );
}
