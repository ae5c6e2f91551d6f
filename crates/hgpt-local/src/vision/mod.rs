//! Image classification (ViT), object detection (YOLOS) and semantic
//! segmentation (SegFormer), with the preprocessing and post-processing of the
//! transformers pipelines.
//!
//! - [`preprocess`]: decoding and the image processors (Pillow-exact resize).
//! - [`vit`]: `ViTForImageClassification` and the image-classification pipeline.
//! - [`yolos`]: `YolosForObjectDetection` and the object-detection pipeline.
//! - [`segformer`]: `SegformerForSemanticSegmentation` and the
//!   image-segmentation pipeline's semantic output.

mod encoder;
pub mod preprocess;
pub mod segformer;
pub mod vit;
pub mod yolos;

pub use crate::text::postprocess::ScoreFunction;
pub use encoder::{ImageSize, VitConfig};
pub use preprocess::{ImageProcessor, ProcessorKind, Resample, SizeRule, decode_image};
pub use segformer::{SegformerForSemanticSegmentation, Segmenter};
pub use vit::{ImageClassifier, VitForImageClassification};
pub use yolos::{ObjectDetector, Predictions, RawDetection, YolosForObjectDetection};

use crate::error::{LocalError, bad_input};
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
