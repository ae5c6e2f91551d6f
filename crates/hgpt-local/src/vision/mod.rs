//! Image classification (ViT), object detection (YOLOS, DETR), semantic and
//! panoptic segmentation (SegFormer, DETR), captioning (ViT + GPT-2, BLIP),
//! visual question answering (BLIP, ViLT), zero-shot classification (CLIP)
//! and depth estimation (DPT, Depth Anything), with the preprocessing and
//! post-processing of the transformers pipelines.
//!
//! - [`preprocess`]: decoding and the image processors (Pillow-exact resize).
//! - [`vit`]: `ViTForImageClassification` and the image-classification pipeline.
//! - [`detection`]: the object-detection pipeline; [`yolos`]
//!   (`YolosForObjectDetection`) and [`detr`] (`DetrForObjectDetection`, on
//!   the [`resnet`] backbone) are its networks.
//! - [`segformer`]: `SegformerForSemanticSegmentation` and the
//!   image-segmentation pipeline's semantic output; [`panoptic`]:
//!   `DetrForSegmentation` and its panoptic output.
//! - [`caption`]: the image-to-text pipeline; [`gpt2`] is its GPT-2 decoder
//!   with cross-attention.
//! - [`blip`]: BLIP captioning and visual question answering.
//! - [`vilt`]: ViLT visual question answering.
//! - [`clip`]: CLIP zero-shot image classification.
//! - [`depth`]: the depth-estimation pipeline; [`dpt`] holds its networks
//!   (DPT, Depth Anything), which run their necks on the channels-last
//!   convolutions and resizes of `conv`.

pub(crate) mod attention;
mod bit;
pub mod blip;
pub mod caption;
pub mod clip;
pub(crate) mod conv;
pub mod depth;
pub mod detection;
pub mod detr;
pub mod dpt;
pub(crate) mod encoder;
pub mod gpt2;
pub mod panoptic;
pub mod preprocess;
pub mod resnet;
pub mod segformer;
pub mod vilt;
pub mod vit;
mod winograd;
pub mod yolos;

pub use crate::text::postprocess::ScoreFunction;
pub use blip::{BlipCaptioner, BlipQuestionAnswerer, BlipVqa};
pub use caption::{CaptionModel, ImageCaptioner, VitGpt2};
pub use clip::{ClipModel, ClipTextEncoder, ZeroShotImageClassifier};
pub use depth::{DepthEstimator, DepthMap};
pub use detection::{DetectionModel, ObjectDetector, Predictions, RawDetection};
pub use detr::DetrForObjectDetection;
pub use dpt::DptForDepthEstimation;
pub use encoder::{ImageSize, VitConfig};
pub use panoptic::{DetrForSegmentation, PanopticSegmenter, PanopticSettings};
pub use preprocess::{ImageProcessor, ProcessorKind, Resample, SizeRule, decode_image};
pub use segformer::{SegformerForSemanticSegmentation, Segmenter};
pub use vilt::{ViltForQuestionAnswering, ViltQuestionAnswerer};
pub use vit::{ImageClassifier, VitForImageClassification};
pub use yolos::YolosForObjectDetection;

use crate::error::{LocalError, bad_input};
use crate::generate::{EarlyStopping, GenerationConfig};
use hgpt_core::backend::ResolvedArgs;
use hgpt_core::task::TaskKind;
use serde_json::Value;

/// The request's image bytes.
fn image_bytes(task: TaskKind, args: &ResolvedArgs) -> Result<&[u8], LocalError> {
    match &args.image {
        Some(blob) if !blob.bytes.is_empty() => Ok(&blob.bytes),
        Some(_) => Err(bad_input(task, "the image is empty (0 bytes)")),
        None => Err(bad_input(task, "no image given")),
    }
}

/// The generation settings of a request: the model's, then the
/// `max_new_tokens` argument and the wire protocol's `generation_parameters`
/// (transformers' `generate_kwargs` are read the same way): `max_new_tokens`,
/// `num_beams` and `early_stopping`. Other generation parameters are
/// refused by name, since hgpt does not sample.
pub(crate) fn generation_for(
    task: TaskKind,
    args: &ResolvedArgs,
    model: &GenerationConfig,
) -> Result<GenerationConfig, LocalError> {
    let mut generation = model.clone();
    let mut set = |key: &str, value: &Value| -> Result<(), LocalError> {
        let integer = |low: u64, high: u64| {
            value
                .as_u64()
                .or_else(|| value.as_str().and_then(|s| s.trim().parse().ok()))
                .filter(|n| (low..=high).contains(n))
                .map(|n| n as usize)
                .ok_or_else(|| {
                    bad_input(
                        task,
                        format!("{key} must be an integer from {low} to {high}, not {value}"),
                    )
                })
        };
        match key {
            "max_new_tokens" => generation.max_new_tokens = Some(integer(1, 4096)?),
            "num_beams" => generation.num_beams = integer(1, MAX_BEAMS)?,
            "early_stopping" => {
                generation.early_stopping = match value {
                    Value::Bool(false) => EarlyStopping::Heuristic,
                    Value::Bool(true) => EarlyStopping::Done,
                    Value::String(s) if s == "never" => EarlyStopping::Never,
                    _ => {
                        return Err(bad_input(
                            task,
                            format!("early_stopping must be true, false or \"never\", not {value}"),
                        ));
                    }
                }
            }
            _ => {
                return Err(bad_input(
                    task,
                    format!(
                        "the generation parameter {key} is not supported (hgpt takes \
                         max_new_tokens, num_beams and early_stopping)"
                    ),
                ));
            }
        }
        Ok(())
    };
    if let Some(value) = args.other.get("max_new_tokens").filter(|v| !v.is_null()) {
        set("max_new_tokens", value)?;
    }
    for name in ["generation_parameters", "generate_kwargs"] {
        match args.other.get(name) {
            None | Some(Value::Null) => {}
            Some(Value::Object(parameters)) => {
                for (key, value) in parameters.iter().filter(|(_, v)| !v.is_null()) {
                    set(key, value)?;
                }
            }
            Some(other) => {
                return Err(bad_input(
                    task,
                    format!("{name} must be an object, not {other}"),
                ));
            }
        }
    }
    Ok(generation)
}

/// The most beams a request may ask for (each is one more decoder pass per
/// token).
const MAX_BEAMS: u64 = 16;

/// A numeric argument (a JSON number or a numeric string), if present.
fn number_arg(task: TaskKind, args: &ResolvedArgs, key: &str) -> Result<Option<f64>, LocalError> {
    let value = match args.other.get(key) {
        None | Some(Value::Null) => return Ok(None),
        Some(value) => value,
    };
    let number = match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    match number {
        Some(n) if n.is_finite() => Ok(Some(n)),
        _ => Err(bad_input(
            task,
            format!("{key} must be a number, not {value}"),
        )),
    }
}

/// The question of a visual-question-answering request: the `question`
/// argument (the wire protocol's `inputs.question`) or the task's text.
fn question_arg(args: &ResolvedArgs) -> Result<&str, LocalError> {
    let task = TaskKind::VisualQuestionAnswering;
    match args.other.get("question") {
        Some(Value::String(question)) => Ok(question),
        Some(Value::Null) | None => args
            .text
            .as_deref()
            .ok_or_else(|| bad_input(task, "no question given")),
        Some(other) => Err(bad_input(
            task,
            format!("the question must be a string, not {other}"),
        )),
    }
}

/// A visual question's token ids, refused when empty or longer than
/// `limit`.
fn encode_question(
    tokenizer: &crate::generate::GenerationTokenizer,
    question: &str,
    limit: usize,
) -> Result<Vec<u32>, LocalError> {
    let task = TaskKind::VisualQuestionAnswering;
    if question.trim().is_empty() {
        return Err(bad_input(task, "the question is empty"));
    }
    tokenizer.encode_within(task, "the question", question, limit)
}
