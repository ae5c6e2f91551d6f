//! Request bodies of the inference protocol, decoded into the arguments the
//! local pipelines read.
//!
//! A body is JSON `{"inputs": ..., "parameters": {...}}` (options may also sit
//! at the root, TEI style), or the raw bytes of an image or audio file, with or
//! without a `Content-Type`. `parameters.*` and root options land in
//! [`ResolvedArgs::other`].

use crate::error::ApiError;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use bytes::Bytes;
use hgpt_core::backend::ResolvedArgs;
use hgpt_core::output::{Blob, sniff_mime};
use hgpt_core::task::{ResourceKind, TaskKind};
use serde_json::{Map, Value};

/// A decoded request: the task to run and one set of arguments per input.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Call {
    /// The task (sentence-similarity when a feature-extraction model got a
    /// `{source_sentence, sentences}` body).
    pub(crate) task: TaskKind,
    /// Arguments, one per input (several for a batch of texts).
    pub(crate) inputs: Vec<ResolvedArgs>,
    /// Whether `inputs` was a list of texts (the answer is a list per input).
    pub(crate) batch: bool,
    /// The parameters and root options, as sent.
    pub(crate) params: Map<String, Value>,
}

/// The media type of the body without parameters, lower-cased.
fn content_type(headers: &axum::http::HeaderMap) -> Option<String> {
    let value = headers
        .get(axum::http::header::CONTENT_TYPE)?
        .to_str()
        .ok()?;
    let essence = value.split(';').next().unwrap_or(value).trim();
    (!essence.is_empty()).then(|| essence.to_ascii_lowercase())
}

fn is_json_type(essence: &str) -> bool {
    essence == "application/json" || essence.ends_with("+json") || essence == "text/json"
}

fn is_binary_type(essence: &str) -> bool {
    essence.starts_with("image/")
        || essence.starts_with("audio/")
        || essence.starts_with("video/")
        || essence == "application/octet-stream"
}

/// The media a task can take as a raw body, if any.
fn raw_media(task: TaskKind) -> Option<ResourceKind> {
    match task.inputs() {
        [ResourceKind::Image] | [ResourceKind::Image, ResourceKind::Text] => {
            Some(ResourceKind::Image)
        }
        [ResourceKind::Audio] => Some(ResourceKind::Audio),
        _ => None,
    }
}

/// Decode a request body for `task`.
pub(crate) fn decode(
    task: TaskKind,
    headers: &axum::http::HeaderMap,
    body: Bytes,
) -> Result<Call, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::invalid(format!(
            "the request body is empty; {task} expects {}",
            expected_body(task)
        )));
    }
    let declared = content_type(headers);
    let task = if task == TaskKind::TextToImage && carries_image(declared.as_deref(), &body) {
        TaskKind::ImageToImage
    } else {
        task
    };
    let json = match declared.as_deref() {
        Some(essence) if is_json_type(essence) => Some(parse_json(&body)?),
        Some(essence) if is_binary_type(essence) => None,
        // No (or a generic) Content-Type: file bytes are recognised by their
        // magic numbers, anything else must be JSON.
        _ if sniff_mime(&body).is_some() => None,
        _ => match serde_json::from_slice::<Value>(&body) {
            Ok(value) => Some(value),
            Err(_) if raw_media(task).is_some() => None,
            Err(err) => return Err(malformed(&err)),
        },
    };
    match json {
        Some(value) => decode_json(task, value),
        None => {
            let kind = raw_media(task).ok_or_else(|| {
                ApiError::invalid(format!(
                    "{task} takes a JSON body ({}), not raw file bytes",
                    expected_body(task)
                ))
            })?;
            let declared =
                declared.filter(|e| is_binary_type(e) && e != "application/octet-stream");
            let blob = media_blob(kind, body, declared)?;
            Ok(Call {
                task,
                inputs: vec![with_media(ResolvedArgs::default(), kind, blob)],
                batch: false,
                params: Map::new(),
            })
        }
    }
}

/// Whether a body holds an image: its bytes, or base64 in a JSON
/// `"inputs"`. A text-to-image model sent one is asked to redraw it
/// (image-to-image), as the Python client's `image_to_image` sends it.
fn carries_image(declared: Option<&str>, body: &[u8]) -> bool {
    if declared.is_some_and(|e| e.starts_with("image/")) {
        return true;
    }
    if sniff_mime(body).is_some_and(|m| m.starts_with("image/")) {
        return true;
    }
    let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(body) else {
        return false;
    };
    map.get("inputs")
        .and_then(Value::as_str)
        .and_then(|text| decode_base64(ResourceKind::Image, text).ok())
        .is_some_and(|bytes| sniff_mime(&bytes).is_some_and(|m| m.starts_with("image/")))
}

fn malformed(err: &serde_json::Error) -> ApiError {
    ApiError::invalid(format!("the request body is not valid JSON: {err}"))
}

fn parse_json(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| malformed(&e))
}

/// What a body for `task` looks like, for error messages.
fn expected_body(task: TaskKind) -> &'static str {
    match task {
        TaskKind::FeatureExtraction => r#"{"inputs": "text" or ["text", ...]}"#,
        TaskKind::SentenceSimilarity => {
            r#"{"inputs": {"source_sentence": "...", "sentences": ["...", ...]}}"#
        }
        TaskKind::QuestionAnswering => r#"{"inputs": {"question": "...", "context": "..."}}"#,
        task if raw_media(task) == Some(ResourceKind::Image) => {
            r#"the image bytes, or {"inputs": "<base64 image>", "parameters": {...}}"#
        }
        task if raw_media(task) == Some(ResourceKind::Audio) => {
            r#"the audio bytes, or {"inputs": "<base64 audio>", "parameters": {...}}"#
        }
        _ => r#"{"inputs": "text", "parameters": {...}}"#,
    }
}

/// `inputs` and the options (root keys, then `parameters`, nulls dropped).
fn split_body(task: TaskKind, value: Value) -> Result<(Value, Map<String, Value>), ApiError> {
    let Value::Object(mut map) = value else {
        // A bare JSON value is the inputs.
        return Ok((value, Map::new()));
    };
    let inputs = match map.remove("inputs") {
        Some(Value::Null) | None => {
            return Err(ApiError::invalid(format!(
                "the body has no \"inputs\"; {task} expects {}",
                expected_body(task)
            )));
        }
        Some(inputs) => inputs,
    };
    let parameters = match map.remove("parameters") {
        Some(Value::Object(parameters)) => parameters,
        Some(Value::Null) | None => Map::new(),
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "\"parameters\" must be an object, not {}",
                kind_of(&other)
            )));
        }
    };
    // Transport options of the hosted API, not arguments.
    map.remove("options");
    map.remove("stream");
    let mut params = Map::new();
    for (key, value) in map.into_iter().chain(parameters) {
        if !value.is_null() {
            params.insert(key, value);
        }
    }
    Ok((inputs, params))
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn decode_json(task: TaskKind, value: Value) -> Result<Call, ApiError> {
    let (inputs, params) = split_body(task, value)?;
    let base = ResolvedArgs {
        other: params.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        ..ResolvedArgs::default()
    };
    let call = |task, inputs, batch| Call {
        task,
        inputs,
        batch,
        params: params.clone(),
    };
    let wrong = |what: &str| {
        ApiError::invalid(format!(
            "{task}: \"inputs\" must be {what}, not {}",
            kind_of(&inputs)
        ))
    };
    use TaskKind as T;
    match task {
        T::FeatureExtraction | T::SentenceSimilarity if inputs.get("source_sentence").is_some() => {
            let args = similarity_args(base, &inputs)?;
            Ok(call(T::SentenceSimilarity, vec![args], false))
        }
        T::SentenceSimilarity => Err(wrong("an object {source_sentence, sentences}")),
        T::FeatureExtraction => {
            let mut args = base;
            match &inputs {
                Value::String(text) => args.text = Some(text.clone()),
                Value::Array(items) if items.iter().all(Value::is_string) => {
                    args.other.insert("inputs".into(), inputs.clone());
                }
                _ => return Err(wrong("a string or a list of strings")),
            }
            Ok(call(task, vec![args], false))
        }
        T::QuestionAnswering => {
            let question = inputs.get("question").and_then(Value::as_str);
            let context = inputs.get("context").and_then(Value::as_str);
            let (Some(question), Some(context)) = (question, context) else {
                return Err(wrong("an object {question, context} of strings"));
            };
            let mut args = base;
            args.text = Some(question.to_string());
            args.other.insert("question".into(), question.into());
            args.other.insert("context".into(), context.into());
            Ok(call(task, vec![args], false))
        }
        task if raw_media(task).is_some() && !matches!(inputs, Value::Object(_)) => {
            let kind = raw_media(task).unwrap_or(ResourceKind::Image);
            let Value::String(encoded) = &inputs else {
                return Err(wrong(&format!("the {kind} as a base64 string")));
            };
            let blob = media_blob(kind, decode_base64(kind, encoded)?, None)?;
            Ok(call(task, vec![with_media(base, kind, blob)], false))
        }
        T::TextClassification | T::TokenClassification if inputs.is_array() => {
            let Value::Array(items) = &inputs else {
                return Err(wrong("a string or a list of strings"));
            };
            let texts: Option<Vec<&str>> = items.iter().map(Value::as_str).collect();
            let texts = texts.ok_or_else(|| wrong("a string or a list of strings"))?;
            if texts.is_empty() {
                return Err(ApiError::invalid(format!(
                    "{task}: \"inputs\" is an empty list"
                )));
            }
            let batch = texts
                .into_iter()
                .map(|text| ResolvedArgs {
                    text: Some(text.to_string()),
                    ..base.clone()
                })
                .collect();
            Ok(call(task, batch, true))
        }
        task => {
            let mut args = base;
            match &inputs {
                Value::String(text) => args.text = Some(text.clone()),
                Value::Object(fields) => object_args(&mut args, fields)?,
                _ => return Err(wrong("a string")),
            }
            Ok(call(task, vec![args], false))
        }
    }
}

fn similarity_args(mut args: ResolvedArgs, inputs: &Value) -> Result<ResolvedArgs, ApiError> {
    let task = TaskKind::SentenceSimilarity;
    let source = inputs
        .get("source_sentence")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            ApiError::invalid(format!("{task}: \"source_sentence\" must be a string"))
        })?;
    let sentences = match inputs.get("sentences") {
        Some(Value::Array(items)) if items.iter().all(Value::is_string) => {
            Value::Array(items.clone())
        }
        _ => {
            return Err(ApiError::invalid(format!(
                "{task}: \"sentences\" must be a list of strings"
            )));
        }
    };
    args.text = Some(source.to_string());
    args.other
        .insert("source_sentence".into(), Value::String(source.to_string()));
    args.other.insert("sentences".into(), sentences);
    Ok(args)
}

/// Fields of an object `inputs`: `image`/`audio`/`video` (base64) become
/// media, `text` the text, anything else another argument.
fn object_args(args: &mut ResolvedArgs, fields: &Map<String, Value>) -> Result<(), ApiError> {
    for (key, value) in fields {
        let kind = ResourceKind::from_arg_name(key);
        match (kind, value) {
            (Some(ResourceKind::Text), Value::String(text)) => args.text = Some(text.clone()),
            (Some(kind), Value::String(encoded)) if kind != ResourceKind::Text => {
                let blob = media_blob(kind, decode_base64(kind, encoded)?, None)?;
                *args = with_media(std::mem::take(args), kind, blob);
            }
            _ => {
                args.other.insert(key.clone(), value.clone());
            }
        }
    }
    Ok(())
}

fn with_media(mut args: ResolvedArgs, kind: ResourceKind, blob: Blob) -> ResolvedArgs {
    match kind {
        ResourceKind::Image => args.image = Some(blob),
        ResourceKind::Audio => args.audio = Some(blob),
        ResourceKind::Video => args.video = Some(blob),
        ResourceKind::Text => {}
    }
    args
}

/// Decode base64 (standard or URL-safe, padded or not), tolerating a
/// `data:...;base64,` prefix and whitespace.
fn decode_base64(kind: ResourceKind, text: &str) -> Result<Bytes, ApiError> {
    let trimmed = text.trim();
    if trimmed.starts_with("http://") || trimmed.starts_with("https://") {
        return Err(ApiError::invalid(format!(
            "this server does not fetch URLs; send the {kind} bytes as the body or base64 in \"inputs\""
        )));
    }
    let payload = match trimmed.strip_prefix("data:") {
        Some(rest) => rest.split_once(',').map_or(rest, |(_, data)| data),
        None => trimmed,
    };
    let cleaned: String = payload.chars().filter(|c| !c.is_whitespace()).collect();
    [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
        .iter()
        .find_map(|engine| engine.decode(cleaned.as_bytes()).ok())
        .map(Bytes::from)
        .ok_or_else(|| {
            ApiError::invalid(format!(
                "\"inputs\" is not valid base64 (expected the {kind} file encoded as base64)"
            ))
        })
}

/// A media blob, checked to be an image when an image is expected.
fn media_blob(
    kind: ResourceKind,
    bytes: Bytes,
    declared: Option<String>,
) -> Result<Blob, ApiError> {
    if bytes.is_empty() {
        return Err(ApiError::invalid(format!("the {kind} is empty")));
    }
    let sniffed = sniff_mime(&bytes);
    if kind == ResourceKind::Image && !sniffed.is_some_and(|m| m.starts_with("image/")) {
        return Err(ApiError::new(
            axum::http::StatusCode::BAD_REQUEST,
            "invalid_image",
            format!(
                "cannot decode the image: {} bytes that are not a PNG, JPEG, WebP, GIF or BMP file",
                bytes.len()
            ),
        ));
    }
    let mime = sniffed.map(str::to_string).or(declared);
    Ok(Blob { bytes, mime })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderMap, HeaderValue, header::CONTENT_TYPE};
    use serde_json::json;

    const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR";

    fn json_headers() -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers
    }

    fn decode_json_body(task: TaskKind, body: Value) -> Result<Call, ApiError> {
        decode(task, &json_headers(), Bytes::from(body.to_string()))
    }

    #[test]
    fn a_text_to_image_model_sent_an_image_redraws_it() {
        // The Python client's image_to_image: base64 in "inputs", the prompt
        // as a parameter.
        let call = decode_json_body(
            TaskKind::TextToImage,
            json!({"inputs": STANDARD.encode(PNG), "parameters": {"prompt": "a red car", "strength": 0.5}}),
        )
        .unwrap();
        assert_eq!(call.task, TaskKind::ImageToImage);
        let args = &call.inputs[0];
        assert_eq!(args.image.as_ref().unwrap().bytes.as_ref(), PNG);
        assert_eq!(args.other["prompt"], json!("a red car"));
        // Raw image bytes too; a prompt stays text-to-image.
        let raw = decode(
            TaskKind::TextToImage,
            &HeaderMap::new(),
            Bytes::from_static(PNG),
        )
        .unwrap();
        assert_eq!(raw.task, TaskKind::ImageToImage);
        let text = decode_json_body(TaskKind::TextToImage, json!({"inputs": "a red car"})).unwrap();
        assert_eq!(text.task, TaskKind::TextToImage);
        assert_eq!(text.inputs[0].text.as_deref(), Some("a red car"));
    }

    #[test]
    fn parameters_and_root_options_become_arguments() {
        let call = decode_json_body(
            TaskKind::FeatureExtraction,
            json!({"inputs": ["a", "b"], "normalize": false, "truncate": null,
                   "parameters": {"prompt_name": "query"}, "options": {"wait_for_model": true}}),
        )
        .unwrap();
        let args = &call.inputs[0];
        assert_eq!(args.other["inputs"], json!(["a", "b"]));
        assert_eq!(args.other["normalize"], json!(false));
        assert_eq!(args.other["prompt_name"], json!("query"));
        assert!(!args.other.contains_key("truncate"));
        assert!(!args.other.contains_key("options"));
    }

    #[test]
    fn a_similarity_body_switches_the_task() {
        let call = decode_json_body(
            TaskKind::FeatureExtraction,
            json!({"inputs": {"source_sentence": "a", "sentences": ["b", "c"]}}),
        )
        .unwrap();
        assert_eq!(call.task, TaskKind::SentenceSimilarity);
        assert_eq!(call.inputs[0].other["sentences"], json!(["b", "c"]));
        assert_eq!(
            call.inputs[0].other_text("source_sentence").as_deref(),
            Some("a")
        );
        let err = decode_json_body(
            TaskKind::SentenceSimilarity,
            json!({"inputs": {"source_sentence": "a", "sentences": "b"}}),
        )
        .unwrap_err();
        assert_eq!(err.status, 400);
    }

    #[test]
    fn question_answering_and_batches() {
        let call = decode_json_body(
            TaskKind::QuestionAnswering,
            json!({"inputs": {"question": "q", "context": "c"}, "parameters": {"top_k": 2}}),
        )
        .unwrap();
        assert_eq!(call.inputs[0].other["context"], json!("c"));
        assert_eq!(call.inputs[0].other["top_k"], json!(2));
        let call =
            decode_json_body(TaskKind::TextClassification, json!({"inputs": ["x", "y"]})).unwrap();
        assert!(call.batch);
        assert_eq!(call.inputs.len(), 2);
        assert_eq!(call.inputs[1].text.as_deref(), Some("y"));
        let err =
            decode_json_body(TaskKind::QuestionAnswering, json!({"inputs": "q"})).unwrap_err();
        assert_eq!(err.status, 400);
    }

    #[test]
    fn images_come_raw_or_as_base64() {
        let call = decode(
            TaskKind::ImageClassification,
            &HeaderMap::new(),
            Bytes::from_static(PNG),
        )
        .unwrap();
        let image = call.inputs[0].image.as_ref().unwrap();
        assert_eq!(image.mime.as_deref(), Some("image/png"));
        let encoded = format!("data:image/png;base64,{}", STANDARD.encode(PNG));
        let call = decode_json_body(
            TaskKind::ObjectDetection,
            json!({"inputs": encoded, "parameters": {"threshold": 0.3}}),
        )
        .unwrap();
        assert_eq!(call.inputs[0].image.as_ref().unwrap().bytes, PNG);
        assert_eq!(call.inputs[0].other["threshold"], json!(0.3));
        for bad in [&b"not an image"[..], b"{\"inputs\": 1"] {
            let err = decode(
                TaskKind::ImageClassification,
                &HeaderMap::new(),
                Bytes::from(bad),
            )
            .unwrap_err();
            assert_eq!((err.status.as_u16(), err.kind), (400, "invalid_image"));
        }
        let err =
            decode_json_body(TaskKind::ImageClassification, json!({"inputs": "%%%"})).unwrap_err();
        assert!(err.message.contains("base64"), "{}", err.message);
    }

    #[test]
    fn malformed_bodies() {
        let err = decode(
            TaskKind::FeatureExtraction,
            &json_headers(),
            Bytes::from_static(b"{\"inputs\": "),
        )
        .unwrap_err();
        assert!(err.message.contains("not valid JSON"), "{}", err.message);
        let err =
            decode_json_body(TaskKind::TextClassification, json!({"parameters": {}})).unwrap_err();
        assert!(err.message.contains("no \"inputs\""), "{}", err.message);
        let err = decode(
            TaskKind::TextClassification,
            &HeaderMap::new(),
            Bytes::from_static(PNG),
        )
        .unwrap_err();
        assert!(err.message.contains("JSON body"), "{}", err.message);
        let err = decode(
            TaskKind::TextClassification,
            &HeaderMap::new(),
            Bytes::new(),
        )
        .unwrap_err();
        assert!(err.message.contains("empty"), "{}", err.message);
    }
}
