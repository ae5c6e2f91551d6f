//! Hosted inference through the router: provider mappings from the Hub API
//! (cached), every provider's request and response shapes, queued jobs, and
//! providers that misbehave. Against the loopback fake of the Hub and router.

mod common;

use common::hosted::*;
use hgpt_core::backend::{
    Availability, InferenceBackend, InferenceError, InferenceRequest, ResolvedArgs,
};
use hgpt_core::output::{Blob, InferenceOutput};
use hgpt_core::task::TaskKind;
use hgpt_hf::{HfConfig, ProviderOrder, RouterBackend, RouterConfig};
use hgpt_testkit::hf::{sample_png, sample_wav};
use hgpt_testkit::router::{FakeRouter, Faults};
use std::collections::BTreeMap;
use std::time::Duration;

async fn fake() -> FakeRouter {
    FakeRouter::start(models(), BTreeMap::new(), BTreeMap::new()).await
}

struct Setup {
    fake: FakeRouter,
    backend: RouterBackend,
    _dir: tempfile::TempDir,
}

async fn setup_with(edit: impl FnOnce(&mut RouterConfig, &mut HfConfig)) -> Setup {
    let fake = fake().await;
    let mut router = router_config(&fake);
    let mut http = http(Some("hf_test"));
    edit(&mut router, &mut http);
    let (media, dir) = media(true);
    let backend = RouterBackend::new(http, router, media).unwrap();
    Setup {
        fake,
        backend,
        _dir: dir,
    }
}

async fn setup() -> Setup {
    setup_with(|_, _| {}).await
}

fn request(task: TaskKind, model: &str, args: ResolvedArgs) -> InferenceRequest {
    InferenceRequest {
        task,
        model: model.to_string(),
        args,
    }
}

fn text(t: &str) -> ResolvedArgs {
    ResolvedArgs {
        text: Some(t.to_string()),
        ..ResolvedArgs::default()
    }
}

fn with_image(t: &str) -> ResolvedArgs {
    ResolvedArgs {
        text: Some(t.to_string()),
        image: Some(Blob::sniffed(sample_png())),
        ..ResolvedArgs::default()
    }
}

fn with_audio() -> ResolvedArgs {
    ResolvedArgs {
        audio: Some(Blob::sniffed(sample_wav())),
        ..ResolvedArgs::default()
    }
}

fn media_mime(output: &InferenceOutput) -> String {
    match output {
        InferenceOutput::Media(blob) => blob.mime.clone().unwrap_or_default(),
        other => panic!("expected a file, got {other:?}"),
    }
}

fn only(providers: &[&str]) -> ProviderOrder {
    ProviderOrder::Only(providers.iter().map(|p| p.to_string()).collect())
}

#[tokio::test]
async fn availability_follows_the_provider_mapping() {
    let s = setup().await;
    let b = &s.backend;
    assert_eq!(
        b.availability(TaskKind::TextToImage, T2I).await,
        Availability::Available
    );
    let Availability::Unavailable(why) = b.availability(TaskKind::ImageToImage, T2I).await else {
        panic!("a text-to-image model cannot edit images")
    };
    assert!(why.contains("fal-ai serves it for text-to-image"), "{why}");
    let Availability::Unavailable(why) =
        b.availability(TaskKind::TextToImage, "nobody/knows").await
    else {
        panic!("unknown models are not offered")
    };
    assert!(why.contains("does not know"), "{why}");
    // hf-inference serves a model for its pipeline tag only.
    let Availability::Unavailable(why) = b
        .availability(TaskKind::ObjectDetection, "google/vit-base-patch16-224")
        .await
    else {
        panic!("the mapping's task does not match the pipeline tag")
    };
    assert!(why.contains("pipeline_tag image-classification"), "{why}");
    assert_eq!(
        b.availability(TaskKind::ObjectDetection, DETR).await,
        Availability::Available
    );
    // Local-only tasks never reach the Hub.
    let before = s.fake.hub_calls().len();
    assert!(matches!(
        b.availability(TaskKind::DepthEstimation, DETR).await,
        Availability::Unavailable(_)
    ));
    assert_eq!(s.fake.hub_calls().len(), before);
}

#[tokio::test]
async fn providers_can_be_limited_and_need_credentials() {
    let s = setup_with(|router, _| router.providers = only(&["hf-inference"])).await;
    let Availability::Unavailable(why) = s.backend.availability(TaskKind::TextToImage, T2I).await
    else {
        panic!("no enabled provider serves it")
    };
    assert!(
        why.contains("fal-ai (not in [huggingface] providers)"),
        "{why}"
    );
    assert!(why.contains("nscale (hgpt cannot call it"), "{why}");

    let s = setup_with(|_, http| http.token = None).await;
    let Availability::Unavailable(why) = s.backend.availability(TaskKind::TextToImage, T2I).await
    else {
        panic!("third-party providers need a token")
    };
    assert!(why.contains("needs HF_TOKEN or its own key"), "{why}");
    // A provider's own key is enough for that provider.
    let s = setup_with(|router, http| {
        http.token = None;
        router
            .provider_keys
            .insert("together".into(), "tgp_key".into());
    })
    .await;
    assert_eq!(
        s.backend.availability(TaskKind::TextToImage, T2I).await,
        Availability::Available
    );
    // A failing health check removes the provider.
    let s = setup_with(|router, _| router.providers = only(&["hf-inference"])).await;
    let Availability::Unavailable(why) = s
        .backend
        .availability(TaskKind::AutomaticSpeechRecognition, ASR)
        .await
    else {
        panic!("hf-inference failed its health check")
    };
    assert!(why.contains("health check failed"), "{why}");
}

#[tokio::test]
async fn mappings_are_fetched_once_and_cached_on_disk() {
    let cache = tempfile::tempdir().unwrap();
    let dir = cache.path().to_path_buf();
    let s = setup_with(|router, _| router.mapping_cache_dir = Some(dir.clone())).await;
    let lookups = (0..8).map(|_| s.backend.availability(TaskKind::TextToImage, T2I));
    let answers = futures::future::join_all(lookups).await;
    assert!(answers.iter().all(|a| *a == Availability::Available));
    s.backend
        .infer(&request(TaskKind::TextToImage, T2I, text("a red fox")))
        .await
        .unwrap();
    let hub = s.fake.hub_calls();
    assert_eq!(hub.len(), 1, "{hub:?}");
    assert_eq!(hub[0].path, format!("/api/models/{T2I}"));
    let query = hub[0].query.clone().unwrap_or_default();
    assert!(query.contains("expand=inferenceProviderMapping"), "{query}");
    assert_eq!(hub[0].header("authorization"), Some("Bearer hf_test"));

    // A second process reads the disk cache: no Hub call at all.
    let (store, _media_dir) = media(true);
    let mut router = router_config(&s.fake);
    router.mapping_cache_dir = Some(dir.clone());
    let second = RouterBackend::new(http(Some("hf_test")), router, store).unwrap();
    s.fake.clear_calls();
    assert_eq!(
        second.availability(TaskKind::TextToImage, T2I).await,
        Availability::Available
    );
    assert!(s.fake.hub_calls().is_empty());

    // An expired entry is fetched again.
    let (store, _media_dir) = media(true);
    let mut router = router_config(&s.fake);
    router.mapping_cache_dir = Some(dir);
    router.mapping_ttl = Duration::ZERO;
    let expired = RouterBackend::new(http(Some("hf_test")), router, store).unwrap();
    expired.availability(TaskKind::TextToImage, T2I).await;
    assert_eq!(s.fake.hub_calls().len(), 1);
}

#[tokio::test]
async fn cache_files_from_the_future_or_beyond_time_are_not_trusted() {
    let cache = tempfile::tempdir().unwrap();
    let file = cache.path().join("black-forest-labs--FLUX.1-dev.json");
    // 2096 and u64::MAX seconds: both claim "the Hub does not know it".
    for stamp in [4_000_000_000u64, u64::MAX] {
        let entry = serde_json::json!({"model": T2I, "fetched_at_unix": stamp, "providers": null});
        std::fs::write(&file, entry.to_string()).unwrap();
        let dir = cache.path().to_path_buf();
        let s = setup_with(|router, _| router.mapping_cache_dir = Some(dir)).await;
        assert_eq!(
            s.backend.availability(TaskKind::TextToImage, T2I).await,
            Availability::Available,
            "stamp {stamp}"
        );
        assert_eq!(
            s.fake.hub_calls().len(),
            1,
            "stamp {stamp}: asked the Hub again"
        );
    }
}

#[tokio::test]
async fn hf_inference_goes_through_the_router() {
    let s = setup().await;
    let output = s
        .backend
        .infer(&request(TaskKind::ObjectDetection, DETR, with_image("")))
        .await
        .unwrap();
    assert!(
        matches!(output, InferenceOutput::Detections(ref d) if !d.is_empty()),
        "{output:?}"
    );
    let call = s
        .fake
        .calls()
        .into_iter()
        .find(|c| c.method == "POST")
        .unwrap();
    assert_eq!(call.path, format!("/hf-inference/models/{DETR}"));
    assert_eq!(call.header("authorization"), Some("Bearer hf_test"));
}

#[tokio::test]
async fn every_provider_serves_its_tasks() {
    // (provider, task, model, args, expected media prefix or transcript)
    let cases: Vec<(&str, TaskKind, &str, ResolvedArgs, &str)> = vec![
        (
            "fal-ai",
            TaskKind::TextToImage,
            T2I,
            text("a red fox"),
            "image/",
        ),
        (
            "fal-ai",
            TaskKind::TextToSpeech,
            TTS,
            text("hello"),
            "audio/",
        ),
        (
            "fal-ai",
            TaskKind::AutomaticSpeechRecognition,
            ASR,
            with_audio(),
            "hello from fal",
        ),
        (
            "fal-ai",
            TaskKind::ImageToImage,
            I2I,
            with_image("make it blue"),
            "image/",
        ),
        (
            "fal-ai",
            TaskKind::TextToVideo,
            T2V,
            text("a fox running"),
            "video/",
        ),
        (
            "replicate",
            TaskKind::TextToImage,
            T2I,
            text("a red fox"),
            "image/",
        ),
        (
            "replicate",
            TaskKind::TextToSpeech,
            TTS,
            text("hello"),
            "audio/",
        ),
        (
            "replicate",
            TaskKind::AutomaticSpeechRecognition,
            ASR,
            with_audio(),
            "hello from replicate",
        ),
        (
            "replicate",
            TaskKind::ImageToImage,
            I2I,
            with_image("make it blue"),
            "image/",
        ),
        (
            "replicate",
            TaskKind::TextToVideo,
            T2V,
            text("a video of a fox"),
            "video/",
        ),
        (
            "together",
            TaskKind::TextToImage,
            T2I,
            text("a red fox"),
            "image/",
        ),
        (
            "together",
            TaskKind::TextToSpeech,
            TTS,
            text("hello"),
            "audio/",
        ),
        (
            "together",
            TaskKind::ImageToImage,
            I2I,
            with_image("make it blue"),
            "image/",
        ),
        (
            "together",
            TaskKind::TextToVideo,
            T2V,
            text("a fox running"),
            "video/",
        ),
    ];
    for (provider, task, model, args, expected) in cases {
        let s = setup_with(|router, _| router.providers = only(&[provider])).await;
        s.fake.set_faults(Faults {
            polls_before_done: 2,
            ..Faults::default()
        });
        let output = s
            .backend
            .infer(&request(task, model, args))
            .await
            .unwrap_or_else(|e| panic!("{provider} {task}: {e}"));
        match &output {
            InferenceOutput::Transcription { text, .. } => assert_eq!(text, expected),
            other => assert!(
                media_mime(other).starts_with(expected),
                "{provider} {task}: {other:?}"
            ),
        }
        let posts: Vec<_> = s
            .fake
            .calls()
            .into_iter()
            .filter(|c| c.method == "POST")
            .collect();
        assert_eq!(posts.len(), 1, "{provider} {task}: {posts:?}");
        assert!(
            posts[0].path.starts_with(&format!("/{provider}/")),
            "{provider} {task}: {}",
            posts[0].path
        );
        assert_eq!(posts[0].header("authorization"), Some("Bearer hf_test"));
    }
}

#[tokio::test]
async fn queued_jobs_are_polled_until_done() {
    let s = setup_with(|router, _| router.providers = only(&["fal-ai"])).await;
    s.fake.set_faults(Faults {
        polls_before_done: 3,
        ..Faults::default()
    });
    s.backend
        .infer(&request(TaskKind::TextToVideo, T2V, text("a fox")))
        .await
        .unwrap();
    let calls = s.fake.calls();
    let submit = calls.iter().find(|c| c.method == "POST").unwrap();
    assert_eq!(submit.path, "/fal-ai/fal-ai/wan/v2.2-a14b/text-to-video");
    assert_eq!(submit.query.as_deref(), Some("_subdomain=queue"));
    let polls: Vec<_> = calls
        .iter()
        .filter(|c| c.path.ends_with("/status"))
        .collect();
    assert_eq!(polls.len(), 4, "three still running, then done");
    assert!(
        polls[0]
            .path
            .starts_with("/fal-ai/fal-ai/wan/v2.2-a14b/text-to-video/requests/")
    );
    assert_eq!(polls[0].query.as_deref(), Some("_subdomain=queue"));
}

async fn failure(
    provider: &str,
    task: TaskKind,
    model: &str,
    args: ResolvedArgs,
    faults: Faults,
) -> InferenceError {
    let s = setup_with(|router, _| {
        router.providers = only(&[provider]);
        router.job_timeout = Duration::from_millis(300);
    })
    .await;
    s.fake.set_faults(faults);
    match s.backend.infer(&request(task, model, args)).await {
        Ok(output) => panic!("{provider} {task} should fail, got {output:?}"),
        Err(err) => err,
    }
}

#[tokio::test]
async fn bad_provider_answers_fail_clearly() {
    let failing = Faults {
        jobs_fail: true,
        ..Faults::default()
    };
    let err = failure(
        "replicate",
        TaskKind::TextToImage,
        T2I,
        text("x"),
        failing.clone(),
    )
    .await;
    assert!(err.to_string().contains("CUDA out of memory"), "{err}");
    let err = failure(
        "fal-ai",
        TaskKind::TextToVideo,
        T2V,
        text("x"),
        failing.clone(),
    )
    .await;
    assert!(err.to_string().contains("GPU worker crashed"), "{err}");
    let err = failure("together", TaskKind::TextToVideo, T2V, text("x"), failing).await;
    assert!(err.to_string().contains("content policy"), "{err}");

    let unknown = Faults {
        jobs_unknown: true,
        ..Faults::default()
    };
    for (provider, task, model) in [
        ("fal-ai", TaskKind::TextToVideo, T2V),
        ("replicate", TaskKind::TextToSpeech, TTS),
        ("together", TaskKind::TextToVideo, T2V),
    ] {
        let err = failure(provider, task, model, text("x"), unknown.clone()).await;
        assert!(
            err.to_string().contains("does not know job"),
            "{provider}: {err}"
        );
    }

    let stuck = Faults {
        jobs_never_finish: true,
        ..Faults::default()
    };
    for (provider, task, model) in [
        ("fal-ai", TaskKind::TextToVideo, T2V),
        ("replicate", TaskKind::TextToImage, T2I),
        ("together", TaskKind::TextToVideo, T2V),
    ] {
        // A job that never finishes ends in a timeout at the job limit
        // (300 ms here), not in a hang.
        let err = failure(provider, task, model, text("x"), stuck.clone()).await;
        assert!(
            matches!(err, InferenceError::Timeout { .. }),
            "{provider}: {err}"
        );
    }

    let not_media = Faults {
        results_not_media: true,
        ..Faults::default()
    };
    let err = failure("fal-ai", TaskKind::TextToImage, T2I, text("x"), not_media).await;
    assert!(err.to_string().contains("image"), "{err}");
}

#[tokio::test]
async fn polls_ride_out_an_overloaded_gateway() {
    for (provider, task, model) in [
        ("fal-ai", TaskKind::TextToVideo, T2V),
        ("replicate", TaskKind::TextToImage, T2I),
        ("together", TaskKind::TextToVideo, T2V),
    ] {
        let s = setup_with(|router, _| router.providers = only(&[provider])).await;
        s.fake.set_faults(Faults {
            flaky_polls: 3,
            ..Faults::default()
        });
        let output = s
            .backend
            .infer(&request(task, model, text("a fox")))
            .await
            .unwrap_or_else(|e| panic!("{provider}: {e}"));
        assert!(matches!(output, InferenceOutput::Media(_)), "{provider}");
        let posts = s.fake.calls().iter().filter(|c| c.method == "POST").count();
        assert_eq!(posts, 1, "{provider}: the job was submitted once");
    }
}

#[tokio::test]
async fn an_accepted_job_that_fails_is_not_paid_for_twice() {
    let s = setup_with(|router, _| router.providers = only(&["fal-ai", "together"])).await;
    s.fake.set_faults(Faults {
        jobs_fail: true,
        ..Faults::default()
    });
    let err = s
        .backend
        .infer(&request(TaskKind::TextToVideo, T2V, text("a fox")))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("GPU worker crashed"), "{err}");
    let posts: Vec<_> = s
        .fake
        .calls()
        .into_iter()
        .filter(|c| c.method == "POST")
        .map(|c| c.path)
        .collect();
    assert_eq!(
        posts.len(),
        1,
        "no second provider after fal-ai accepted the job: {posts:?}"
    );
}

#[tokio::test]
async fn result_files_on_private_addresses_are_refused() {
    let fake = fake().await;
    let mut router = router_config(&fake);
    router.providers = only(&["fal-ai"]);
    let (media, _dir) = media(false);
    let backend = RouterBackend::new(http(Some("hf_test")), router, media).unwrap();
    fake.set_faults(Faults {
        result_base: Some("http://10.1.2.3".into()),
        ..Faults::default()
    });
    let err = backend
        .infer(&request(TaskKind::TextToImage, T2I, text("x")))
        .await
        .unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("10.1.2.3") && message.contains("result file"),
        "{message}"
    );
}

#[tokio::test]
async fn a_failing_provider_hands_over_to_the_next() {
    let s = setup_with(|router, _| router.providers = only(&["fal-ai", "together"])).await;
    s.fake.set_faults(Faults {
        results_not_media: true,
        ..Faults::default()
    });
    let output = s
        .backend
        .infer(&request(TaskKind::TextToImage, T2I, text("a fox")))
        .await
        .unwrap();
    assert!(media_mime(&output).starts_with("image/"));
    let posts: Vec<_> = s
        .fake
        .calls()
        .into_iter()
        .filter(|c| c.method == "POST")
        .map(|c| c.path)
        .collect();
    assert_eq!(
        posts,
        ["/fal-ai/fal-ai/flux/dev", "/together/v1/images/generations"]
    );
}

#[tokio::test]
async fn a_providers_own_key_calls_it_directly() {
    let fake = fake().await;
    let mut router = router_config(&fake);
    router.providers = only(&["fal-ai"]);
    router
        .provider_keys
        .insert("fal-ai".into(), "fal_secret".into());
    router
        .provider_urls
        .insert("fal-ai".into(), format!("{}/fal-ai", fake.url()));
    let (media, _dir) = media(true);
    let backend = RouterBackend::new(http(None), router, media).unwrap();
    backend
        .infer(&request(TaskKind::TextToImage, T2I, text("a fox")))
        .await
        .unwrap();
    let post = fake
        .calls()
        .into_iter()
        .find(|c| c.method == "POST")
        .unwrap();
    assert_eq!(post.header("authorization"), Some("Key fal_secret"));
    assert_eq!(post.path, "/fal-ai/fal-ai/flux/dev");
}
