//! Replicate: predictions (`POST {base}/v1/models/{id}/predictions`, or
//! `/v1/predictions` with a version for `owner/name:version` ids), sent with
//! `Prefer: wait`; a prediction still running when that wait ends is polled
//! at `/v1/predictions/{id}` until it succeeds, fails or is cancelled.

use super::{Call, Provider, data_url, output_kind, parameters, text_field, valid_job_id};
use crate::request::{require_media, require_text};
use async_trait::async_trait;
use hgpt_core::backend::InferenceError;
use hgpt_core::output::InferenceOutput;
use hgpt_core::task::{ResourceKind, TaskKind};
use serde_json::{Map, Value, json};

pub(crate) struct Replicate;

#[async_trait]
impl Provider for Replicate {
    fn name(&self) -> &'static str {
        "replicate"
    }

    fn serves(&self, task: TaskKind) -> bool {
        matches!(
            task,
            TaskKind::AutomaticSpeechRecognition
                | TaskKind::TextToImage
                | TaskKind::TextToSpeech
                | TaskKind::TextToVideo
                | TaskKind::ImageToImage
        )
    }

    fn direct_base(&self, _task: TaskKind) -> &'static str {
        "https://api.replicate.com"
    }

    async fn run(&self, call: &Call<'_>) -> Result<InferenceOutput, InferenceError> {
        let id = call.entry.provider_id.as_str();
        let (model, version) = match id.split_once(':') {
            Some((model, version)) => (model, Some(version)),
            None => (id, None),
        };
        let version_ok = version.is_none_or(valid_job_id);
        if !crate::valid_model_id(model) || !version_ok {
            return Err(call.malformed(format!("unusable provider model id {id:?}")));
        }
        let mut body = Map::new();
        body.insert("input".into(), Value::Object(input(call)?));
        let path = match version {
            Some(version) => {
                body.insert("version".into(), json!(version));
                "/v1/predictions".to_string()
            }
            None => format!("/v1/models/{model}/predictions"),
        };
        let mut prediction = call
            .post_for_json(&path, Value::Object(body), &[("prefer", "wait")])
            .await?;
        loop {
            let status = text_field(&prediction, "status");
            let has_output = prediction.get("output").is_some_and(|o| !o.is_null());
            match status {
                Some("succeeded") => break,
                None if has_output => break,
                Some("failed") | Some("canceled") | Some("aborted") => {
                    let error = prediction
                        .get("error")
                        .map(|e| e.as_str().map_or_else(|| e.to_string(), str::to_string))
                        .unwrap_or_else(|| "no error given".into());
                    return Err(InferenceError::Server {
                        model: call.model().to_string(),
                        status: 500,
                        message: format!(
                            "replicate prediction {}: {error}",
                            status.unwrap_or_default()
                        ),
                    });
                }
                Some("starting") | Some("processing") | None => {
                    let job = text_field(&prediction, "id")
                        .filter(|job| valid_job_id(job))
                        .ok_or_else(|| call.malformed("a running prediction without a usable id"))?
                        .to_string();
                    call.mark_accepted();
                    call.wait_for_next_poll().await?;
                    prediction = call
                        .get_json(&format!("/v1/predictions/{job}"), &job)
                        .await?;
                }
                Some(other) => {
                    return Err(call.malformed(format!("unknown prediction status {other:?}")));
                }
            }
        }
        finish(call, &prediction).await
    }
}

/// The prediction's `input` per task, as the Python client builds it.
fn input(call: &Call<'_>) -> Result<Map<String, Value>, InferenceError> {
    let request = call.request;
    let task = request.task;
    let mut input = Map::new();
    match task {
        TaskKind::AutomaticSpeechRecognition => {
            let audio = require_media(task, &request.args, ResourceKind::Audio)?;
            input.insert("audio".into(), json!(data_url(audio, "audio/wav")));
        }
        TaskKind::ImageToImage => {
            let image = require_media(task, &request.args, ResourceKind::Image)?;
            let url = data_url(image, "image/jpeg");
            input.insert("image".into(), json!(url));
            input.insert("images".into(), json!([url]));
            input.insert("input_image".into(), json!(url));
            input.insert("input_images".into(), json!([url]));
            if let Some(prompt) = request
                .args
                .text
                .as_deref()
                .filter(|t| !t.trim().is_empty())
            {
                input.insert("prompt".into(), json!(prompt));
            }
        }
        TaskKind::TextToSpeech => {
            input.insert("text".into(), json!(require_text(task, &request.args)?));
        }
        _ => {
            input.insert("prompt".into(), json!(require_text(task, &request.args)?));
        }
    }
    input.extend(parameters(request));
    if task == TaskKind::TextToImage && call.entry.adapter_weights_path.is_some() {
        input.insert(
            "lora_weights".into(),
            json!(format!("https://huggingface.co/{}", request.model)),
        );
    }
    Ok(input)
}

/// The task's output from a finished prediction.
async fn finish(call: &Call<'_>, prediction: &Value) -> Result<InferenceOutput, InferenceError> {
    let task = call.request.task;
    let output = prediction.get("output").unwrap_or(&Value::Null);
    let first = match output {
        Value::Array(items) => items.first().unwrap_or(&Value::Null),
        other => other,
    };
    if task == TaskKind::AutomaticSpeechRecognition {
        let text = match first {
            Value::String(text) => Some(text.clone()),
            Value::Object(_) => match (
                text_field(first, "translation"),
                text_field(first, "transcription"),
                text_field(first, "txt_file"),
            ) {
                (Some(text), _, _) | (None, Some(text), _) => Some(text.to_string()),
                (None, None, Some(url)) => {
                    let file = call.fetch(url, ResourceKind::Text).await?;
                    Some(String::from_utf8_lossy(&file.bytes).into_owned())
                }
                _ => None,
            },
            _ => None,
        };
        let text =
            text.ok_or_else(|| call.malformed("the prediction's output holds no transcription"))?;
        return Ok(InferenceOutput::Transcription { text, chunks: None });
    }
    let kind = output_kind(task).ok_or_else(|| call.malformed(format!("{task} is not served")))?;
    let url = first
        .as_str()
        .ok_or_else(|| call.malformed("the prediction's output is not a file URL"))?;
    Ok(InferenceOutput::Media(call.fetch(url, kind).await?))
}
