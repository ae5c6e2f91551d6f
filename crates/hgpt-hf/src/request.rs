//! Request bodies of the Hugging Face inference protocol, per task type.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use hgpt_core::backend::{InferenceError, InferenceRequest, ResolvedArgs};
use hgpt_core::output::Blob;
use hgpt_core::task::{ResourceKind, TaskKind};
use serde_json::{Map, Value, json};

/// The body of one inference request.
#[derive(Debug, Clone, PartialEq)]
pub enum WireBody {
    /// A JSON document (sent as `application/json`).
    Json(Value),
    /// Raw file bytes, with the file's media type when known (no
    /// `Content-Type` header otherwise).
    Bytes {
        /// The file content.
        data: Bytes,
        /// Its media type, if known.
        content_type: Option<String>,
    },
}

/// One inference request in wire form, independent of the server's address.
#[derive(Debug, Clone, PartialEq)]
pub struct WireRequest {
    /// The `/pipeline/{task}` suffix to append after the model id, if any
    /// (feature-extraction and sentence-similarity).
    pub pipeline: Option<&'static str>,
    /// The body.
    pub body: WireBody,
    /// The `Accept` header to send, if any.
    pub accept: Option<&'static str>,
}

impl WireRequest {
    fn json(body: Value) -> Self {
        Self {
            pipeline: None,
            body: WireBody::Json(body),
            accept: None,
        }
    }

    fn bytes(blob: &Blob) -> Self {
        Self {
            pipeline: None,
            body: WireBody::Bytes {
                data: blob.bytes.clone(),
                content_type: blob.mime.clone(),
            },
            accept: None,
        }
    }
}

/// Parameters that are copied from a task's extra arguments into
/// `parameters`, per task type.
fn passthrough_parameters(task: TaskKind) -> &'static [&'static str] {
    match task {
        TaskKind::TextGeneration | TaskKind::Text2TextGeneration | TaskKind::Conversational => &[
            "max_new_tokens",
            "temperature",
            "top_p",
            "top_k",
            "repetition_penalty",
            "do_sample",
            "seed",
            "stop",
            "return_full_text",
        ],
        TaskKind::Summarization => &["max_length", "min_length", "truncation"],
        TaskKind::Translation => &["src_lang", "tgt_lang", "max_length", "truncation"],
        TaskKind::ZeroShotClassification => &["multi_label", "hypothesis_template"],
        TaskKind::ZeroShotImageClassification => &["hypothesis_template"],
        TaskKind::TextToImage => &[
            "width",
            "height",
            "num_inference_steps",
            "guidance_scale",
            "negative_prompt",
            "seed",
            "scheduler",
        ],
        TaskKind::ImageToImage => &[
            "negative_prompt",
            "num_inference_steps",
            "guidance_scale",
            "strength",
            "target_size",
            "seed",
        ],
        TaskKind::TextClassification
        | TaskKind::ImageClassification
        | TaskKind::AudioClassification
        | TaskKind::VisualQuestionAnswering
        | TaskKind::DocumentQuestionAnswering
        | TaskKind::QuestionAnswering => &["top_k"],
        TaskKind::ObjectDetection => &["threshold"],
        TaskKind::ImageSegmentation => &["threshold", "mask_threshold", "subtask"],
        _ => &[],
    }
}

/// Build `parameters` from the allowed extra arguments plus an explicit
/// `parameters` object, if the plan gave one.
pub(crate) fn parameters(task: TaskKind, args: &ResolvedArgs) -> Map<String, Value> {
    let mut out = Map::new();
    if let Some(Value::Object(given)) = args.other.get("parameters") {
        out.extend(given.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    for key in passthrough_parameters(task) {
        if let Some(value) = args.other.get(*key)
            && !value.is_null()
        {
            out.insert((*key).to_string(), value.clone());
        }
    }
    out
}

/// `{"inputs": inputs}` plus `parameters` when there are any.
fn with_parameters(inputs: Value, params: Map<String, Value>) -> Value {
    let mut body = Map::new();
    body.insert("inputs".into(), inputs);
    if !params.is_empty() {
        body.insert("parameters".into(), Value::Object(params));
    }
    Value::Object(body)
}

pub(crate) fn bad_input(task: TaskKind, message: impl Into<String>) -> InferenceError {
    InferenceError::BadInput {
        task,
        message: message.into(),
    }
}

/// A non-empty string argument: `text` or another named one.
fn non_empty(value: Option<String>) -> Option<String> {
    value.filter(|s| !s.trim().is_empty())
}

pub(crate) fn require_text(task: TaskKind, args: &ResolvedArgs) -> Result<String, InferenceError> {
    non_empty(args.text.clone()).ok_or_else(|| {
        bad_input(
            task,
            "missing argument `text` (the task needs a text input)",
        )
    })
}

pub(crate) fn require_media(
    task: TaskKind,
    args: &ResolvedArgs,
    kind: ResourceKind,
) -> Result<&Blob, InferenceError> {
    match args.media(kind) {
        Some(blob) if !blob.bytes.is_empty() => Ok(blob),
        Some(_) => Err(bad_input(
            task,
            format!("argument `{kind}` is an empty file"),
        )),
        None => Err(bad_input(
            task,
            format!("missing argument `{kind}` (the task needs an {kind})"),
        )),
    }
}

fn other_string(args: &ResolvedArgs, key: &str) -> Option<String> {
    non_empty(args.other_text(key))
}

/// A list argument: a JSON array, or a string split on `separator`.
fn string_list(value: &Value, separator: char) -> Vec<String> {
    let items: Vec<String> = match value {
        Value::Array(items) => items
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| v.to_string())
            })
            .collect(),
        Value::String(s) => s.split(separator).map(str::to_string).collect(),
        Value::Null => Vec::new(),
        other => vec![other.to_string()],
    };
    items
        .into_iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

fn b64(blob: &Blob) -> Value {
    Value::String(B64.encode(&blob.bytes))
}

/// A JSON value given either as JSON or as a string holding JSON.
fn json_argument(value: &Value) -> Option<Value> {
    match value {
        Value::String(s) => serde_json::from_str::<Value>(s)
            .ok()
            .filter(Value::is_object),
        Value::Object(_) => Some(value.clone()),
        _ => None,
    }
}

fn question_answering(task: TaskKind, args: &ResolvedArgs) -> Result<Value, InferenceError> {
    let text = non_empty(args.text.clone());
    let (question, context) = match other_string(args, "question") {
        // An explicit question: the context is `context`, else the text.
        Some(question) => (Some(question), other_string(args, "context").or(text)),
        None => (text, other_string(args, "context")),
    };
    let question =
        question.ok_or_else(|| bad_input(task, "missing argument `text` (the question)"))?;
    let context = context.ok_or_else(|| {
        bad_input(
            task,
            "missing argument `context`: question answering needs the question (`text`) and a \
             `context` to find the answer in",
        )
    })?;
    Ok(with_parameters(
        json!({"question": question, "context": context}),
        parameters(task, args),
    ))
}

fn sentence_similarity(task: TaskKind, args: &ResolvedArgs) -> Result<Value, InferenceError> {
    let text = non_empty(args.text.clone());
    let explicit_source = other_string(args, "source_sentence");
    let source_is_text = explicit_source.is_none();
    let source = explicit_source
        .or_else(|| text.clone())
        .ok_or_else(|| bad_input(task, "missing argument `text` (the source sentence)"))?;
    let mut sentences = args
        .other
        .get("sentences")
        .map(|v| string_list(v, '\n'))
        .unwrap_or_default();
    if sentences.is_empty() {
        sentences = ["text2", "target_sentence", "target", "sentence2"]
            .iter()
            .find_map(|key| other_string(args, key))
            .into_iter()
            .collect();
    }
    if sentences.is_empty() && !source_is_text {
        sentences.extend(text);
    }
    if sentences.is_empty() {
        return Err(bad_input(
            task,
            "missing argument `sentences` (the sentences to compare the text with)",
        ));
    }
    Ok(json!({"inputs": {"source_sentence": source, "sentences": sentences}}))
}

fn feature_extraction(task: TaskKind, args: &ResolvedArgs) -> Result<Value, InferenceError> {
    let inputs = match args.other.get("texts").map(|v| string_list(v, '\n')) {
        Some(texts) if !texts.is_empty() => json!(texts),
        _ => Value::String(require_text(task, args)?),
    };
    let mut body = Map::new();
    body.insert("inputs".into(), inputs);
    // TEI style: the options sit at the root.
    for key in [
        "normalize",
        "truncate",
        "truncation_direction",
        "prompt_name",
    ] {
        if let Some(value) = args.other.get(key)
            && !value.is_null()
        {
            body.insert(key.into(), value.clone());
        }
    }
    Ok(Value::Object(body))
}

fn zero_shot(task: TaskKind, args: &ResolvedArgs) -> Result<Value, InferenceError> {
    let text = require_text(task, args)?;
    let labels = ["candidate_labels", "labels", "classes"]
        .iter()
        .find_map(|key| args.other.get(*key))
        .map(|v| string_list(v, ','))
        .unwrap_or_default();
    if labels.is_empty() {
        return Err(bad_input(
            task,
            "missing argument `candidate_labels` (the labels to choose from)",
        ));
    }
    let mut params = parameters(task, args);
    params.insert("candidate_labels".into(), json!(labels));
    Ok(with_parameters(Value::String(text), params))
}

/// `{"inputs": <base64 image>, "parameters": {"candidate_labels": [...]}}`:
/// the labels from `candidate_labels` (a list or comma-separated), else the
/// task's text.
fn zero_shot_image(task: TaskKind, args: &ResolvedArgs) -> Result<Value, InferenceError> {
    let image = require_media(task, args, ResourceKind::Image)?;
    let labels = ["candidate_labels", "labels", "classes"]
        .iter()
        .find_map(|key| args.other.get(*key))
        .map(|v| string_list(v, ','))
        .or_else(|| {
            args.text
                .as_ref()
                .map(|t| string_list(&Value::String(t.clone()), ','))
        })
        .unwrap_or_default();
    if labels.is_empty() {
        return Err(bad_input(
            task,
            "missing candidate labels (the text: labels separated by commas)",
        ));
    }
    let mut params = parameters(task, args);
    params.insert("candidate_labels".into(), json!(labels));
    Ok(with_parameters(b64(image), params))
}

fn tabular(task: TaskKind, args: &ResolvedArgs) -> Result<Value, InferenceError> {
    let table = ["table", "data"]
        .iter()
        .find_map(|key| args.other.get(*key).and_then(json_argument))
        .or_else(|| {
            args.text
                .as_deref()
                .and_then(|t| json_argument(&Value::String(t.into())))
        })
        .ok_or_else(|| {
            bad_input(
                task,
                "missing argument `table` (an object of column name -> values)",
            )
        })?;
    Ok(json!({"inputs": {"data": table}}))
}

fn question_text(task: TaskKind, args: &ResolvedArgs) -> Result<String, InferenceError> {
    other_string(args, "question")
        .or_else(|| non_empty(args.text.clone()))
        .ok_or_else(|| bad_input(task, "missing argument `text` (the question)"))
}

/// Build the wire form of an inference request: body, pipeline suffix and
/// `Accept` header. Fails with [`InferenceError::BadInput`] when a required
/// argument is missing and [`InferenceError::Unsupported`] for task types the
/// protocol cannot serve (the ControlNet family).
pub fn build_request(request: &InferenceRequest) -> Result<WireRequest, InferenceError> {
    let task = request.task;
    let args = &request.args;
    use TaskKind as T;
    let wire = match task {
        T::TextClassification
        | T::TokenClassification
        | T::Summarization
        | T::Translation
        | T::Text2TextGeneration
        | T::TextGeneration
        | T::Conversational
        | T::TextToImage
        | T::TextToSpeech
        | T::TextToVideo => {
            let text = require_text(task, args)?;
            WireRequest::json(with_parameters(Value::String(text), parameters(task, args)))
        }
        T::QuestionAnswering => WireRequest::json(question_answering(task, args)?),
        T::SentenceSimilarity => WireRequest {
            pipeline: Some("sentence-similarity"),
            ..WireRequest::json(sentence_similarity(task, args)?)
        },
        T::FeatureExtraction => WireRequest {
            pipeline: Some("feature-extraction"),
            ..WireRequest::json(feature_extraction(task, args)?)
        },
        T::ZeroShotClassification => WireRequest::json(zero_shot(task, args)?),
        T::ZeroShotImageClassification => WireRequest::json(zero_shot_image(task, args)?),
        T::TabularClassification => WireRequest::json(tabular(task, args)?),
        T::ImageClassification
        | T::ObjectDetection
        | T::ImageSegmentation
        | T::ImageToText
        | T::DepthEstimation => {
            let image = require_media(task, args, ResourceKind::Image)?;
            let params = parameters(task, args);
            if params.is_empty() {
                WireRequest::bytes(image)
            } else {
                WireRequest::json(with_parameters(b64(image), params))
            }
        }
        T::AutomaticSpeechRecognition | T::AudioClassification | T::AudioToAudio => {
            let audio = require_media(task, args, ResourceKind::Audio)?;
            let params = parameters(task, args);
            if params.is_empty() {
                WireRequest::bytes(audio)
            } else {
                WireRequest::json(with_parameters(b64(audio), params))
            }
        }
        T::ImageToImage => {
            let image = require_media(task, args, ResourceKind::Image)?;
            let prompt = non_empty(args.text.clone()).or_else(|| other_string(args, "prompt"));
            let params = parameters(task, args);
            let mut wire = match prompt {
                None if params.is_empty() => WireRequest::bytes(image),
                prompt => {
                    let mut params = params;
                    if let Some(prompt) = prompt {
                        params.insert("prompt".into(), Value::String(prompt));
                    }
                    WireRequest::json(with_parameters(b64(image), params))
                }
            };
            wire.accept = Some("image/png");
            wire
        }
        T::VisualQuestionAnswering | T::DocumentQuestionAnswering => {
            let image = require_media(task, args, ResourceKind::Image)?;
            let question = question_text(task, args)?;
            WireRequest::json(with_parameters(
                json!({"image": b64(image), "question": question}),
                parameters(task, args),
            ))
        }
        T::CannyControl
        | T::HedControl
        | T::MlsdControl
        | T::NormalControl
        | T::OpenposeControl
        | T::CannyTextToImage
        | T::DepthTextToImage
        | T::HedTextToImage
        | T::MlsdTextToImage
        | T::NormalTextToImage
        | T::OpenposeTextToImage
        | T::SegTextToImage => {
            return Err(InferenceError::Unsupported(format!(
                "{task} runs on local models only; the Hugging Face inference API does not serve it"
            )));
        }
    };
    Ok(wire)
}

/// Whether a task type can only run on local models (the ControlNet family).
pub fn is_local_only(task: TaskKind) -> bool {
    task.controlnet_model().is_some()
}
