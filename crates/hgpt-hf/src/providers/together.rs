//! Together: OpenAI-style routes: images (`/v1/images/generations`, answered
//! in base64), speech (`/v1/audio/speech`, answered as audio bytes) and
//! videos (`/v2/videos`, a job polled at `/v2/videos/{id}`).

use super::{Call, Provider, data_url, output_kind, parameters, text_field, valid_job_id};
use crate::request::{require_media, require_text};
use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hgpt_core::backend::InferenceError;
use hgpt_core::output::{Blob, InferenceOutput};
use hgpt_core::task::{ResourceKind, TaskKind};
use serde_json::{Map, Value, json};

pub(crate) struct Together;

#[async_trait]
impl Provider for Together {
    fn name(&self) -> &'static str {
        "together"
    }

    fn serves(&self, task: TaskKind) -> bool {
        matches!(
            task,
            TaskKind::TextToImage
                | TaskKind::ImageToImage
                | TaskKind::TextToSpeech
                | TaskKind::TextToVideo
        )
    }

    fn direct_base(&self, _task: TaskKind) -> &'static str {
        "https://api.together.xyz"
    }

    async fn run(&self, call: &Call<'_>) -> Result<InferenceOutput, InferenceError> {
        let request = call.request;
        let task = request.task;
        let model = call.entry.provider_id.clone();
        let mut params = parameters(request);
        // Images and videos take `steps` (speech keeps its parameters).
        if task != TaskKind::TextToSpeech
            && let Some(steps) = params.remove("num_inference_steps")
        {
            params.insert("steps".into(), steps);
        }
        if task == TaskKind::TextToVideo
            && let Some(size) = params.remove("target_size")
        {
            for side in ["width", "height"] {
                if let Some(value) = size.get(side) {
                    params.insert(side.into(), value.clone());
                }
            }
        }
        match task {
            TaskKind::TextToSpeech => {
                let mut body = Map::new();
                body.insert("input".into(), json!(require_text(task, &request.args)?));
                body.extend(params);
                // Last: a parameter must not pick another model.
                body.insert("model".into(), json!(model));
                let reply = call
                    .post_json("/v1/audio/speech", Value::Object(body), &[])
                    .await?;
                Ok(InferenceOutput::Media(
                    call.media_reply(reply, ResourceKind::Audio)?,
                ))
            }
            TaskKind::TextToVideo => {
                let mut body = Map::new();
                body.insert("prompt".into(), json!(require_text(task, &request.args)?));
                body.extend(params);
                body.insert("model".into(), json!(model));
                video(call, Value::Object(body)).await
            }
            _ => {
                let mut body = Map::new();
                if task == TaskKind::ImageToImage {
                    let image = require_media(task, &request.args, ResourceKind::Image)?;
                    let url = data_url(image, "image/jpeg");
                    let prompt = request.args.text.clone().unwrap_or_default();
                    body.insert("prompt".into(), json!(prompt));
                    let lowered = model.to_ascii_lowercase();
                    if lowered.contains("kontext") && lowered.contains("flux.1") {
                        body.insert("image_url".into(), json!(url));
                    } else {
                        body.insert("reference_images".into(), json!([url]));
                    }
                } else {
                    body.insert("prompt".into(), json!(require_text(task, &request.args)?));
                }
                body.insert("response_format".into(), json!("base64"));
                body.extend(params);
                body.insert("model".into(), json!(model));
                let answer = call
                    .post_for_json("/v1/images/generations", Value::Object(body), &[])
                    .await?;
                let encoded = answer
                    .pointer("/data/0/b64_json")
                    .and_then(Value::as_str)
                    .ok_or_else(|| call.malformed("no image at data[0].b64_json"))?;
                let bytes = B64
                    .decode(encoded.trim())
                    .map_err(|e| call.malformed(format!("the image is not base64: {e}")))?;
                let blob = Blob::sniffed(bytes);
                let kind = output_kind(task).unwrap_or(ResourceKind::Image);
                match blob.mime.as_deref() {
                    Some(mime) if mime.starts_with("image/") => Ok(InferenceOutput::Media(blob)),
                    _ => Err(call.malformed(format!("data[0].b64_json is not {kind} content"))),
                }
            }
        }
    }
}

/// Submit a video job and poll it until it completes or fails.
async fn video(call: &Call<'_>, body: Value) -> Result<InferenceOutput, InferenceError> {
    let mut job = call.post_for_json("/v2/videos", body, &[]).await?;
    let id = text_field(&job, "id")
        .filter(|id| valid_job_id(id))
        .ok_or_else(|| call.malformed("the video job has no usable id"))?
        .to_string();
    call.mark_accepted();
    loop {
        match text_field(&job, "status") {
            None | Some("queued") | Some("in_progress") => {
                call.wait_for_next_poll().await?;
                job = call.get_json(&format!("/v2/videos/{id}"), &id).await?;
            }
            Some("completed") => break,
            Some("failed") => {
                let message = job
                    .pointer("/error/message")
                    .and_then(Value::as_str)
                    .unwrap_or("no error given");
                return Err(InferenceError::Server {
                    model: call.model().to_string(),
                    status: 500,
                    message: format!("together video job {id} failed: {message}"),
                });
            }
            Some(other) => {
                return Err(call.malformed(format!("unknown video job status {other:?}")));
            }
        }
    }
    let url = job
        .pointer("/outputs/video_url")
        .and_then(Value::as_str)
        .ok_or_else(|| call.malformed("the completed video job has no outputs.video_url"))?;
    Ok(InferenceOutput::Media(
        call.fetch(url, ResourceKind::Video).await?,
    ))
}
