//! The models of the fake Hub and router that the hosted-inference tests
//! share, mapped to providers the way the Hub maps them.

use hgpt_hf::{HfConfig, RouterConfig};
use hgpt_media::{LocalMedia, MediaConfig};
use hgpt_testkit::router::{FakeRouter, model_info};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

pub const T2I: &str = "black-forest-labs/FLUX.1-dev";
pub const TTS: &str = "hexgrad/Kokoro-82M";
pub const ASR: &str = "openai/whisper-large-v3";
pub const I2I: &str = "black-forest-labs/FLUX.1-Kontext-dev";
pub const T2V: &str = "Wan-AI/Wan2.2-T2V-A14B";
pub const DETR: &str = "facebook/detr-resnet-50";

pub fn models() -> BTreeMap<String, Value> {
    [
        (
            T2I,
            model_info(
                "text-to-image",
                &[
                    ("fal-ai", "fal-ai/flux/dev", "text-to-image", "live"),
                    (
                        "together",
                        "black-forest-labs/FLUX.1-dev",
                        "text-to-image",
                        "live",
                    ),
                    (
                        "replicate",
                        "black-forest-labs/flux-dev",
                        "text-to-image",
                        "staging",
                    ),
                    ("nscale", "flux-dev", "text-to-image", "live"),
                ],
            ),
        ),
        (
            TTS,
            model_info(
                "text-to-speech",
                &[
                    (
                        "replicate",
                        "jaaari/kokoro-82m:f559",
                        "text-to-speech",
                        "live",
                    ),
                    (
                        "fal-ai",
                        "fal-ai/kokoro/american-english",
                        "text-to-speech",
                        "live",
                    ),
                    ("together", "hexgrad/Kokoro-82M", "text-to-speech", "live"),
                ],
            ),
        ),
        (
            ASR,
            model_info(
                "automatic-speech-recognition",
                &[
                    (
                        "fal-ai",
                        "fal-ai/whisper",
                        "automatic-speech-recognition",
                        "live",
                    ),
                    (
                        "replicate",
                        "openai/whisper",
                        "automatic-speech-recognition",
                        "live",
                    ),
                    ("hf-inference", ASR, "automatic-speech-recognition", "error"),
                ],
            ),
        ),
        (
            I2I,
            model_info(
                "image-to-image",
                &[
                    (
                        "fal-ai",
                        "fal-ai/flux-kontext/dev",
                        "image-to-image",
                        "live",
                    ),
                    (
                        "replicate",
                        "black-forest-labs/flux-kontext-dev",
                        "image-to-image",
                        "live",
                    ),
                    (
                        "together",
                        "black-forest-labs/FLUX.1-kontext-dev",
                        "image-to-image",
                        "live",
                    ),
                ],
            ),
        ),
        (
            T2V,
            model_info(
                "text-to-video",
                &[
                    (
                        "fal-ai",
                        "fal-ai/wan/v2.2-a14b/text-to-video",
                        "text-to-video",
                        "live",
                    ),
                    (
                        "replicate",
                        "wan-video/wan-2.2-t2v",
                        "text-to-video",
                        "live",
                    ),
                    (
                        "together",
                        "Wan-AI/Wan2.2-T2V-A14B",
                        "text-to-video",
                        "live",
                    ),
                ],
            ),
        ),
        (DETR, {
            let mut info = model_info(
                "object-detection",
                &[("hf-inference", DETR, "object-detection", "live")],
            );
            info["inference"] = "warm".into();
            info
        }),
        (
            "google/vit-base-patch16-224",
            model_info(
                "image-classification",
                &[(
                    "hf-inference",
                    "google/vit-base-patch16-224",
                    "object-detection",
                    "live",
                )],
            ),
        ),
    ]
    .into_iter()
    .map(|(id, info)| (id.to_string(), info))
    .collect()
}

/// A media store in a temporary folder; `allow_private` lets it download
/// result files from the loopback fake.
pub fn media(allow_private: bool) -> (Arc<LocalMedia>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let media = LocalMedia::new(MediaConfig {
        media_root: dir.path().to_path_buf(),
        out_dir: dir.path().join("out"),
        allow_private_urls: allow_private,
        ..MediaConfig::default()
    })
    .unwrap();
    (Arc::new(media), dir)
}

/// The router and Hub both at the fake, with quick polls.
pub fn router_config(fake: &FakeRouter) -> RouterConfig {
    RouterConfig {
        router_url: fake.url().to_string(),
        hub_endpoint: fake.url().to_string(),
        poll_interval: Duration::from_millis(5),
        job_timeout: Duration::from_secs(10),
        ..RouterConfig::default()
    }
}

/// HTTP settings with quick retries.
pub fn http(token: Option<&str>) -> HfConfig {
    HfConfig {
        token: token.map(str::to_string),
        retry_base_delay: Duration::from_millis(1),
        retry_max_delay: Duration::from_millis(5),
        max_retries: 1,
        ..HfConfig::default()
    }
}
