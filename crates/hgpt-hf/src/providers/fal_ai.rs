//! fal.ai: quick tasks answered in one call (`POST {base}/{providerId}`),
//! long ones through its queue (submit, poll the status, fetch the result).

use super::{Call, Provider, data_url, output_kind, parameters, text_field, valid_job_id};
use crate::request::{require_media, require_text};
use async_trait::async_trait;
use hgpt_core::backend::InferenceError;
use hgpt_core::output::InferenceOutput;
use hgpt_core::task::{ResourceKind, TaskKind};
use serde_json::{Map, Value, json};

pub(crate) struct FalAi;

/// Tasks fal.ai runs as queued jobs.
fn queued(task: TaskKind) -> bool {
    matches!(task, TaskKind::TextToVideo | TaskKind::ImageToImage)
}

/// Where the result file's URL sits in a task's answer.
fn result_pointer(task: TaskKind) -> &'static str {
    match task {
        TaskKind::TextToSpeech => "/audio/url",
        TaskKind::TextToVideo => "/video/url",
        _ => "/images/0/url",
    }
}

#[async_trait]
impl Provider for FalAi {
    fn name(&self) -> &'static str {
        "fal-ai"
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

    fn direct_base(&self, task: TaskKind) -> &'static str {
        if queued(task) {
            "https://queue.fal.run"
        } else {
            "https://fal.run"
        }
    }

    fn direct_authorization(&self, key: &str) -> String {
        format!("Key {key}")
    }

    async fn run(&self, call: &Call<'_>) -> Result<InferenceOutput, InferenceError> {
        let request = call.request;
        let task = request.task;
        let id = &call.entry.provider_id;
        if !crate::valid_model_id(id) {
            return Err(call.malformed(format!("unusable provider model id {id:?}")));
        }
        let payload = payload(call)?;
        if !queued(task) {
            let answer = call.post_for_json(&format!("/{id}"), payload, &[]).await?;
            return finish(call, &answer).await;
        }
        let query = if call.via_router {
            "?_subdomain=queue"
        } else {
            ""
        };
        let submitted = call
            .post_for_json(&format!("/{id}{query}"), payload, &[])
            .await?;
        let job = text_field(&submitted, "request_id")
            .filter(|job| valid_job_id(job))
            .ok_or_else(|| call.malformed("the queue answered no usable request_id"))?
            .to_string();
        call.mark_accepted();
        let job_path = match text_field(&submitted, "response_url") {
            Some(url) => response_path(url)
                .filter(|path| path.ends_with(&format!("/requests/{job}")))
                .ok_or_else(|| call.malformed(format!("unusable response_url {url:?}")))?,
            None => format!("/{id}/requests/{job}"),
        };
        let mut status = text_field(&submitted, "status").map(str::to_string);
        loop {
            match status.as_deref() {
                Some("COMPLETED") => break,
                None | Some("IN_QUEUE") | Some("IN_PROGRESS") => {
                    call.wait_for_next_poll().await?;
                    let state = call
                        .get_json(&format!("{job_path}/status{query}"), &job)
                        .await?;
                    status = text_field(&state, "status").map(str::to_string);
                    if status.is_none() {
                        return Err(call.malformed(format!("job {job}: a status without `status`")));
                    }
                }
                Some(other) => {
                    return Err(InferenceError::Server {
                        model: request.model.clone(),
                        status: 500,
                        message: format!("fal-ai job {job} ended {other}"),
                    });
                }
            }
        }
        let answer = call.get_json(&format!("{job_path}{query}"), &job).await?;
        finish(call, &answer).await
    }
}

/// The request body per task, as the Python client builds it.
fn payload(call: &Call<'_>) -> Result<Value, InferenceError> {
    let request = call.request;
    let task = request.task;
    let mut params: Map<String, Value> = parameters(request);
    let mut body = Map::new();
    match task {
        TaskKind::AutomaticSpeechRecognition => {
            let audio = require_media(task, &request.args, ResourceKind::Audio)?;
            body.insert("audio_url".into(), json!(data_url(audio, "audio/mpeg")));
        }
        TaskKind::TextToSpeech => {
            body.insert("text".into(), json!(require_text(task, &request.args)?));
        }
        TaskKind::ImageToImage => {
            let image = require_media(task, &request.args, ResourceKind::Image)?;
            let url = data_url(image, "image/jpeg");
            body.insert("image_url".into(), json!(url));
            body.insert("image_urls".into(), json!([url]));
            if let Some(prompt) = request
                .args
                .text
                .as_deref()
                .filter(|t| !t.trim().is_empty())
            {
                body.insert("prompt".into(), json!(prompt));
            }
            if let Some(size) = params.remove("target_size") {
                params.insert("image_size".into(), size);
            }
        }
        _ => {
            body.insert("prompt".into(), json!(require_text(task, &request.args)?));
        }
    }
    body.extend(params);
    if task == TaskKind::TextToImage
        && body.contains_key("width")
        && body.contains_key("height")
        && let (Some(width), Some(height)) = (body.remove("width"), body.remove("height"))
    {
        body.insert(
            "image_size".into(),
            json!({"width": width, "height": height}),
        );
    }
    if let Some(path) = &call.entry.adapter_weights_path
        && matches!(
            task,
            TaskKind::TextToImage | TaskKind::TextToVideo | TaskKind::ImageToImage
        )
    {
        let lora = format!(
            "{}/{}/resolve/main/{path}",
            call.hub_endpoint, request.model
        );
        body.insert("loras".into(), json!([{"path": lora, "scale": 1}]));
        if task == TaskKind::TextToImage && call.entry.provider_id == "fal-ai/lora" {
            body.insert(
                "model_name".into(),
                json!("stabilityai/stable-diffusion-xl-base-1.0"),
            );
        }
    }
    Ok(Value::Object(body))
}

/// The task's output from fal.ai's answer.
async fn finish(call: &Call<'_>, answer: &Value) -> Result<InferenceOutput, InferenceError> {
    let task = call.request.task;
    if task == TaskKind::AutomaticSpeechRecognition {
        let text = text_field(answer, "text")
            .ok_or_else(|| call.malformed("the transcription has no `text` string"))?;
        return Ok(InferenceOutput::Transcription {
            text: text.to_string(),
            chunks: None,
        });
    }
    let kind = output_kind(task).ok_or_else(|| call.malformed(format!("{task} is not served")))?;
    let pointer = result_pointer(task);
    let url = answer
        .pointer(pointer)
        .and_then(Value::as_str)
        .ok_or_else(|| call.malformed(format!("no result URL at {pointer}")))?;
    Ok(InferenceOutput::Media(call.fetch(url, kind).await?))
}

/// The path of a queue `response_url` (`https://queue.fal.run/{app}/requests/{id}`),
/// checked to hold only safe path characters.
fn response_path(url: &str) -> Option<String> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let path = &rest[rest.find('/')?..];
    let path = path.split(['?', '#']).next().unwrap_or(path);
    // The same characters as a Hub id, segment by segment.
    let safe = path.strip_prefix('/').is_some_and(crate::valid_model_id);
    safe.then(|| path.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_paths_are_checked() {
        assert_eq!(
            response_path("https://queue.fal.run/fal-ai/wan/requests/abc-1").as_deref(),
            Some("/fal-ai/wan/requests/abc-1")
        );
        assert_eq!(response_path("https://h/a/../b"), None);
        assert_eq!(response_path("https://h/a b"), None);
        assert_eq!(response_path("https://h"), None);
        assert_eq!(
            response_path("https://h/a/requests/x?y=1").as_deref(),
            Some("/a/requests/x")
        );
    }
}
