//! Response decoding of the Hugging Face inference protocol, per task type.
//!
//! Every variant the wire reference lists is accepted (where the Python and
//! the JS clients disagree, both shapes are read).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use hgpt_core::backend::InferenceError;
use hgpt_core::output::{
    Answer, AudioSource, Blob, Detection, Entity, InferenceOutput, ScoredLabel, Segment, sniff_mime,
};
use hgpt_core::task::TaskKind;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// The media type without parameters, lower-cased.
fn essence(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or(content_type)
        .trim()
        .to_ascii_lowercase()
}

fn is_json_type(essence: &str) -> bool {
    essence == "application/json" || essence.ends_with("+json") || essence == "text/json"
}

fn is_media_type(essence: &str) -> bool {
    essence.starts_with("image/") || essence.starts_with("audio/") || essence.starts_with("video/")
}

/// Task types whose result is a generated file.
fn returns_media(task: TaskKind) -> bool {
    matches!(
        task,
        TaskKind::TextToImage
            | TaskKind::ImageToImage
            | TaskKind::TextToSpeech
            | TaskKind::TextToVideo
    ) || task.controlnet_model().is_some()
}

/// A short description of a JSON value for error messages.
pub(crate) fn describe(value: &Value) -> String {
    let mut text = value.to_string();
    if text.len() > 160 {
        let mut cut = 160;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str("...");
    }
    let kind = match value {
        Value::Null => "null".to_string(),
        Value::Bool(_) => "a boolean".to_string(),
        Value::Number(_) => "a number".to_string(),
        Value::String(_) => "a string".to_string(),
        Value::Array(items) => format!("a list of {} item(s)", items.len()),
        Value::Object(map) => {
            let keys: Vec<&str> = map.keys().map(String::as_str).take(8).collect();
            format!("an object with keys [{}]", keys.join(", "))
        }
    };
    format!("{kind}: {text}")
}

struct Ctx<'a> {
    task: TaskKind,
    model: &'a str,
}

impl Ctx<'_> {
    fn error(&self, message: impl Into<String>) -> InferenceError {
        InferenceError::Decode {
            model: self.model.to_string(),
            message: message.into(),
        }
    }

    fn mismatch(&self, expected: &str, found: &Value) -> InferenceError {
        self.error(format!(
            "{}: expected {expected}, found {}",
            self.task,
            describe(found)
        ))
    }
}

fn parse<T: DeserializeOwned>(value: &Value) -> Option<T> {
    T::deserialize(value).ok()
}

/// A list of `T`, also accepting a bare `T` and (when `nested`) `[[T]]`
/// (clients take the first inner list).
fn list_of<T: DeserializeOwned>(value: &Value, nested: bool) -> Option<Vec<T>> {
    match value {
        Value::Array(items) => {
            if nested && let Some(Value::Array(_)) = items.first() {
                return parse::<Vec<T>>(&items[0]);
            }
            parse::<Vec<T>>(value)
        }
        Value::Object(_) => parse::<T>(value).map(|item| vec![item]),
        _ => None,
    }
}

/// A generated text under `key` (or `generated_text`), in a list or a bare object.
fn text_field(value: &Value, keys: &[&str]) -> Option<String> {
    let object = match value {
        Value::Array(items) => match items.first()? {
            Value::Array(inner) => inner.first()?,
            first => first,
        },
        other => other,
    };
    let map = object.as_object()?;
    keys.iter()
        .find_map(|key| map.get(*key)?.as_str().map(str::to_string))
}

/// Decode base64, tolerating a `data:...;base64,` prefix and whitespace.
pub(crate) fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let payload = match text.strip_prefix("data:") {
        Some(rest) => rest.split_once(',')?.1,
        None => text,
    };
    let cleaned: String = payload.chars().filter(|c| !c.is_whitespace()).collect();
    B64.decode(cleaned.as_bytes())
        .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(cleaned.as_bytes()))
        .ok()
}

/// The declared media type of a data URL, if `text` is one.
fn data_url_mime(text: &str) -> Option<String> {
    let rest = text.strip_prefix("data:")?;
    let header = rest.split_once(',')?.0;
    let mime = header.split(';').next()?.trim();
    (!mime.is_empty()).then(|| mime.to_string())
}

fn blob_from_base64(text: &str, declared: Option<&str>) -> Option<Blob> {
    let bytes = decode_base64(text)?;
    let mime = sniff_mime(&bytes)
        .map(str::to_string)
        .or_else(|| data_url_mime(text))
        .or_else(|| declared.map(str::to_string));
    Some(Blob {
        bytes: Bytes::from(bytes),
        mime,
    })
}

/// A blob with the declared media type (when specific) or a sniffed one.
fn media_blob(body: Bytes, content_type: Option<&str>) -> Blob {
    let declared = content_type.map(essence).filter(|e| is_media_type(e));
    let mime = declared.or_else(|| sniff_mime(&body).map(str::to_string));
    Blob { bytes: body, mime }
}

/// Decode the body of a successful response for `task`.
///
/// `content_type` is the response's `Content-Type` header. Binary bodies
/// (image, audio, video) become [`InferenceOutput::Media`] for generating
/// tasks (media type from the header, sniffed when it is missing or generic);
/// JSON bodies are read per task, and a shape that does not fit the task is an
/// [`InferenceError::Decode`] naming the task and what was found.
pub fn decode_response(
    task: TaskKind,
    model: &str,
    content_type: Option<&str>,
    body: Bytes,
) -> Result<InferenceOutput, InferenceError> {
    let ctx = Ctx { task, model };
    let declared = content_type.map(essence).filter(|e| !e.is_empty());
    let declared_json = declared.as_deref().is_some_and(is_json_type);
    let declared_media = declared.as_deref().is_some_and(is_media_type);
    let looks_binary = sniff_mime(&body).is_some();

    if !declared_json && (declared_media || looks_binary) {
        return decode_binary(&ctx, body, content_type);
    }
    match serde_json::from_slice::<Value>(&body) {
        Ok(value) => decode_json(&ctx, &value),
        Err(err) if declared_json || !returns_media(task) => {
            let preview = String::from_utf8_lossy(&body[..body.len().min(120)]).into_owned();
            Err(ctx.error(format!(
                "{task}: the response is not valid JSON ({err}); it starts with {preview:?}"
            )))
        }
        // A generating task answered with bytes of an unknown format.
        Err(_) => Ok(InferenceOutput::Media(media_blob(body, content_type))),
    }
}

fn decode_binary(
    ctx: &Ctx<'_>,
    body: Bytes,
    content_type: Option<&str>,
) -> Result<InferenceOutput, InferenceError> {
    let blob = media_blob(body, content_type);
    match ctx.task {
        task if returns_media(task) => Ok(InferenceOutput::Media(blob)),
        TaskKind::AudioToAudio => Ok(InferenceOutput::Media(blob)),
        TaskKind::DepthEstimation => Ok(InferenceOutput::Depth {
            image: Some(blob),
            predicted: None,
        }),
        task => Err(ctx.error(format!(
            "{task}: expected a JSON result, found {} bytes of {}",
            blob.bytes.len(),
            blob.mime.as_deref().unwrap_or("binary data")
        ))),
    }
}

fn decode_json(ctx: &Ctx<'_>, value: &Value) -> Result<InferenceOutput, InferenceError> {
    use TaskKind as T;
    let task = ctx.task;
    match task {
        T::TextClassification
        | T::ImageClassification
        | T::AudioClassification
        | T::ZeroShotImageClassification => list_of::<ScoredLabel>(value, true)
            .map(InferenceOutput::Labels)
            .ok_or_else(|| ctx.mismatch("a list of {label, score}", value)),
        T::ZeroShotClassification => zero_shot(value)
            .map(InferenceOutput::Labels)
            .ok_or_else(|| ctx.mismatch("[{label, score}] or {sequence, labels, scores}", value)),
        T::TokenClassification => list_of::<Entity>(value, true)
            .map(InferenceOutput::Entities)
            .ok_or_else(|| {
                ctx.mismatch("a list of {entity_group, score, word, start, end}", value)
            }),
        T::QuestionAnswering | T::VisualQuestionAnswering | T::DocumentQuestionAnswering => {
            list_of::<Answer>(value, true)
                .map(InferenceOutput::Answers)
                .ok_or_else(|| {
                    ctx.mismatch("{answer, score, start?, end?} or a list of them", value)
                })
        }
        T::SentenceSimilarity => similarities(value)
            .map(InferenceOutput::Similarities)
            .ok_or_else(|| ctx.mismatch("a list of numbers", value)),
        T::FeatureExtraction => {
            if is_nested_numbers(value) {
                Ok(InferenceOutput::Embeddings(value.clone()))
            } else {
                Err(ctx.mismatch("nested lists of numbers", value))
            }
        }
        T::Summarization => text_field(value, &["summary_text", "generated_text"])
            .map(InferenceOutput::Text)
            .ok_or_else(|| ctx.mismatch("[{summary_text}]", value)),
        T::Translation => text_field(value, &["translation_text", "generated_text"])
            .map(InferenceOutput::Text)
            .ok_or_else(|| ctx.mismatch("[{translation_text}]", value)),
        T::TextGeneration | T::Text2TextGeneration | T::Conversational | T::ImageToText => {
            text_field(value, &["generated_text"])
                .map(InferenceOutput::Text)
                .ok_or_else(|| ctx.mismatch("[{generated_text}] or {generated_text}", value))
        }
        T::AutomaticSpeechRecognition => {
            transcription(value).ok_or_else(|| ctx.mismatch("{text, chunks?}", value))
        }
        T::ObjectDetection => list_of::<Detection>(value, false)
            .map(InferenceOutput::Detections)
            .ok_or_else(|| ctx.mismatch("a list of {label, score, box}", value)),
        T::ImageSegmentation => segments(ctx, value),
        T::DepthEstimation => depth(ctx, value),
        T::AudioToAudio => list_of::<AudioSource>(value, false)
            .filter(|sources| sources.iter().all(|s| decode_base64(&s.blob).is_some()))
            .map(InferenceOutput::AudioSources)
            .ok_or_else(|| ctx.mismatch("a list of {label, content-type, blob: <base64>}", value)),
        T::TabularClassification => Ok(InferenceOutput::Json(value.clone())),
        task if returns_media(task) => media_in_json(value)
            .map(InferenceOutput::Media)
            .ok_or_else(|| ctx.mismatch("image, audio or video bytes", value)),
        _ => Ok(InferenceOutput::Json(value.clone())),
    }
}

fn zero_shot(value: &Value) -> Option<Vec<ScoredLabel>> {
    let legacy = |v: &Value| -> Option<Vec<ScoredLabel>> {
        let map = v.as_object()?;
        let labels = map.get("labels")?.as_array()?;
        let scores = map.get("scores")?.as_array()?;
        if labels.len() != scores.len() {
            return None;
        }
        labels
            .iter()
            .zip(scores)
            .map(|(l, s)| {
                Some(ScoredLabel {
                    label: l.as_str()?.to_string(),
                    score: s.as_f64()?,
                })
            })
            .collect()
    };
    match value {
        Value::Object(_) => legacy(value).or_else(|| parse::<ScoredLabel>(value).map(|l| vec![l])),
        Value::Array(items) => match items.first() {
            Some(first @ Value::Object(map)) if map.contains_key("labels") => legacy(first),
            _ => list_of::<ScoredLabel>(value, true),
        },
        _ => None,
    }
}

fn similarities(value: &Value) -> Option<Vec<f64>> {
    match value {
        Value::Number(n) => Some(vec![n.as_f64()?]),
        Value::Array(items) => match items.first() {
            Some(Value::Array(_)) => similarities(&items[0]),
            _ => items.iter().map(Value::as_f64).collect(),
        },
        _ => None,
    }
}

fn is_nested_numbers(value: &Value) -> bool {
    match value {
        Value::Number(_) => true,
        Value::Array(items) => items.iter().all(is_nested_numbers),
        _ => false,
    }
}

fn transcription(value: &Value) -> Option<InferenceOutput> {
    let object = match value {
        Value::Array(items) => items.first()?,
        other => other,
    };
    let map = object.as_object()?;
    let text = map.get("text")?.as_str()?.to_string();
    let chunks = map.get("chunks").filter(|c| !c.is_null()).cloned();
    Some(InferenceOutput::Transcription { text, chunks })
}

fn segments(ctx: &Ctx<'_>, value: &Value) -> Result<InferenceOutput, InferenceError> {
    let segments = list_of::<Segment>(value, false)
        .ok_or_else(|| ctx.mismatch("a list of {label, score, mask: <base64 PNG>}", value))?;
    let mut out = Vec::with_capacity(segments.len());
    for mut segment in segments {
        if segment.mask.starts_with("data:")
            && let Some((_, payload)) = segment.mask.split_once(',')
        {
            segment.mask = payload.to_string();
        }
        if decode_base64(&segment.mask).is_none() {
            return Err(ctx.error(format!(
                "{}: the mask of segment {:?} is not valid base64",
                ctx.task, segment.label
            )));
        }
        out.push(segment);
    }
    Ok(InferenceOutput::Segments(out))
}

fn depth(ctx: &Ctx<'_>, value: &Value) -> Result<InferenceOutput, InferenceError> {
    let object = match value {
        Value::Array(items) => items.first().unwrap_or(value),
        other => other,
    };
    let Some(map) = object.as_object() else {
        return Err(ctx.mismatch("{predicted_depth, depth: <base64 image>}", value));
    };
    let image = match map.get("depth") {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) => Some(blob_from_base64(text, None).ok_or_else(|| {
            ctx.error(format!("{}: `depth` is not a valid base64 image", ctx.task))
        })?),
        Some(other) => {
            return Err(ctx.mismatch("`depth` as a base64 image", other));
        }
    };
    let predicted = map.get("predicted_depth").filter(|v| !v.is_null()).cloned();
    if image.is_none() && predicted.is_none() {
        return Err(ctx.mismatch("{predicted_depth, depth: <base64 image>}", value));
    }
    Ok(InferenceOutput::Depth { image, predicted })
}

/// A generated file inside JSON: a base64 string, or an object holding one
/// under a usual key.
fn media_in_json(value: &Value) -> Option<Blob> {
    match value {
        Value::String(text) => {
            blob_from_base64(text, None).filter(|b| !b.bytes.is_empty() && b.mime.is_some())
        }
        Value::Array(items) => media_in_json(items.first()?),
        Value::Object(map) => {
            let declared = ["content-type", "content_type", "mime"]
                .iter()
                .find_map(|k| map.get(*k)?.as_str());
            [
                "image",
                "audio",
                "video",
                "blob",
                "data",
                "generated_image",
                "generated_audio",
            ]
            .iter()
            .find_map(|key| {
                let text = map.get(*key)?.as_str()?;
                blob_from_base64(text, declared).filter(|b| !b.bytes.is_empty())
            })
        }
        _ => None,
    }
}
