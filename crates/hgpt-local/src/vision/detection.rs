//! The object-detection pipeline shared by the detection families (YOLOS,
//! DETR): preprocessing from the model's processor config, the model's class
//! logits and boxes, then the image processor's
//! `post_process_object_detection` and the pipeline's threshold.

use super::preprocess::{ImageProcessor, ProcessorKind, decode_image};
use super::{image_bytes, number_arg};
use crate::error::LocalError;
use crate::files::{ModelFiles, WEIGHTS};
use crate::pipeline::Pipeline;
use crate::text::postprocess::softmax;
use candle_core::{Device, Tensor};
use candle_nn::{Linear, Module, VarBuilder, linear};
use hgpt_core::backend::ResolvedArgs;
use hgpt_core::output::{BoundingBox, Detection, InferenceOutput};
use hgpt_core::task::TaskKind;
use image::RgbImage;

/// The object-detection pipeline's default score threshold.
pub const DEFAULT_THRESHOLD: f64 = 0.5;

/// A `num_layers`-deep MLP with ReLU between layers (`layers.{i}`).
#[derive(Debug, Clone)]
pub(crate) struct Mlp {
    layers: Vec<Linear>,
}

impl Mlp {
    pub(crate) fn load(
        input: usize,
        hidden: usize,
        output: usize,
        depth: usize,
        vb: VarBuilder,
    ) -> candle_core::Result<Self> {
        let vb = vb.pp("layers");
        let layers = (0..depth)
            .map(|i| {
                let from = if i == 0 { input } else { hidden };
                let to = if i + 1 == depth { output } else { hidden };
                linear(from, to, vb.pp(i))
            })
            .collect::<candle_core::Result<_>>()?;
        Ok(Self { layers })
    }

    pub(crate) fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let mut xs = xs.clone();
        for (i, layer) in self.layers.iter().enumerate() {
            xs = layer.forward(&xs)?;
            if i + 1 < self.layers.len() {
                xs = xs.relu()?;
            }
        }
        Ok(xs)
    }
}

/// The raw model outputs for one image, one row per detection token or
/// object query.
#[derive(Debug, Clone, PartialEq)]
pub struct Predictions {
    /// Class logits, the last class being "no object".
    pub logits: Vec<Vec<f32>>,
    /// `(cx, cy, w, h)` in 0..1 of the processed image.
    pub boxes: Vec<Vec<f32>>,
}

impl Predictions {
    /// The first image's rows of batched `logits` and `boxes`.
    pub fn first(logits: &Tensor, boxes: &Tensor) -> Result<Self, LocalError> {
        Ok(Self {
            logits: logits.get(0)?.to_vec2::<f32>()?,
            boxes: boxes.get(0)?.to_vec2::<f32>()?,
        })
    }
}

/// One detection before labels are looked up.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RawDetection {
    /// Detection-token index.
    pub token: usize,
    /// The best real class.
    pub label: usize,
    /// Its softmax probability.
    pub score: f32,
    /// `(xmin, ymin, xmax, ymax)` in pixels of the original image, unrounded.
    pub bbox: [f32; 4],
}

/// The image processor's `post_process_object_detection` for one image:
/// softmax over the classes, best class but the last (no object), keep
/// scores strictly above `threshold` (compared in float32), boxes from
/// centre/size to corners scaled by the original `(height, width)`, in
/// detection-token order.
pub fn post_process(
    logits: &[Vec<f32>],
    boxes: &[Vec<f32>],
    original: (u32, u32),
    threshold: f64,
) -> Vec<RawDetection> {
    let threshold = threshold as f32;
    let (height, width) = (original.0 as f32, original.1 as f32);
    logits
        .iter()
        .zip(boxes)
        .enumerate()
        .filter_map(|(token, (row, bbox))| {
            let probs = softmax(row);
            let real = probs.get(..probs.len().saturating_sub(1))?;
            let (label, &score) = real.iter().enumerate().fold(
                None,
                |best: Option<(usize, &f32)>, (i, p)| match best {
                    Some((_, b)) if *b >= *p => best,
                    _ => Some((i, p)),
                },
            )?;
            if score.is_nan() || score <= threshold {
                return None;
            }
            let [cx, cy, w, h] = <[f32; 4]>::try_from(bbox.as_slice()).ok()?;
            let corners = [cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h];
            Some(RawDetection {
                token,
                label,
                score,
                bbox: [
                    corners[0] * width,
                    corners[1] * height,
                    corners[2] * width,
                    corners[3] * height,
                ],
            })
        })
        .collect()
}

/// A detection network: class logits and boxes for pixel values.
pub trait DetectionModel: Send + Sync {
    /// The outputs for the first image of pixel values `[batch, 3, H, W]`.
    fn predict(&self, pixel_values: &Tensor) -> Result<Predictions, LocalError>;
}

/// A loaded object-detection pipeline.
pub struct ObjectDetector {
    model: Box<dyn DetectionModel>,
    processor: ImageProcessor,
    labels: Vec<String>,
    device: Device,
    weight_bytes: u64,
}

impl ObjectDetector {
    /// Load a YOLOS checkpoint (`config.json`, `preprocessor_config.json`,
    /// `model.safetensors` or `pytorch_model.bin`).
    pub fn load_yolos(files: &ModelFiles, device: &Device) -> Result<Self, LocalError> {
        files.require(&["config.json", "preprocessor_config.json", WEIGHTS])?;
        let processor = ImageProcessor::load(files, ProcessorKind::Detection)?;
        let weights = files.weights(device)?;
        let (model, labels) = super::yolos::load(files, weights.vb)?;
        Ok(Self {
            model: Box::new(model),
            processor,
            labels,
            device: device.clone(),
            weight_bytes: weights.bytes,
        })
    }

    /// Load a DETR checkpoint (`config.json`, `preprocessor_config.json`,
    /// `model.safetensors` or `pytorch_model.bin`).
    pub fn load_detr(files: &ModelFiles, device: &Device) -> Result<Self, LocalError> {
        files.require(&["config.json", "preprocessor_config.json", WEIGHTS])?;
        let processor = ImageProcessor::load(files, ProcessorKind::Detr)?;
        let weights = files.weights(device)?;
        let (model, labels) = super::detr::load(files, weights.vb)?;
        Ok(Self {
            model: Box::new(model),
            processor,
            labels,
            device: device.clone(),
            weight_bytes: weights.bytes,
        })
    }

    /// The preprocessing settings.
    pub fn processor(&self) -> &ImageProcessor {
        &self.processor
    }

    /// The labels by class index (without the no-object class).
    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// The raw outputs for the first image of pixel values `[batch, 3, H, W]`.
    pub fn predict(&self, pixel_values: &Tensor) -> Result<Predictions, LocalError> {
        let pixel_values = pixel_values.to_device(&self.device)?;
        self.model.predict(&pixel_values)
    }

    /// Detect objects in a decoded image: scores above `threshold`, boxes in
    /// pixels of the image truncated toward zero, in detection-token order.
    pub fn detect(&self, image: &RgbImage, threshold: f64) -> Result<Vec<Detection>, LocalError> {
        let task = TaskKind::ObjectDetection;
        let pixel_values = self.processor.preprocess(task, image, &self.device)?;
        let raw = self.predict(&pixel_values)?;
        let kept = post_process(
            &raw.logits,
            &raw.boxes,
            (image.height(), image.width()),
            threshold,
        );
        Ok(kept
            .into_iter()
            .map(|d| {
                let truncated = d.bbox.map(|v| f64::from(v.trunc()));
                Detection {
                    label: self
                        .labels
                        .get(d.label)
                        .cloned()
                        .unwrap_or_else(|| format!("LABEL_{}", d.label)),
                    score: f64::from(d.score),
                    bbox: BoundingBox {
                        xmin: truncated[0],
                        ymin: truncated[1],
                        xmax: truncated[2],
                        ymax: truncated[3],
                    },
                }
            })
            .collect())
    }
}

impl Pipeline for ObjectDetector {
    fn tasks(&self) -> &[TaskKind] {
        &[TaskKind::ObjectDetection]
    }

    fn run(&self, task: TaskKind, args: &ResolvedArgs) -> Result<InferenceOutput, LocalError> {
        if task != TaskKind::ObjectDetection {
            return Err(LocalError::Unsupported(format!(
                "an object detector cannot do {task}"
            )));
        }
        let image = decode_image(task, image_bytes(task, args)?)?;
        let threshold = number_arg(task, args, "threshold")?.unwrap_or(DEFAULT_THRESHOLD);
        Ok(InferenceOutput::Detections(self.detect(&image, threshold)?))
    }

    fn weight_bytes(&self) -> u64 {
        self.weight_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn post_processing_is_strict_and_scales_to_the_original() {
        // Four equal classes (the last is no-object): every real one has 0.25.
        let logits = vec![vec![0.0; 4]];
        let boxes = vec![vec![0.5, 0.5, 0.5, 1.0]];
        assert!(post_process(&logits, &boxes, (10, 20), 0.25).is_empty());
        let kept = post_process(&logits, &boxes, (10, 20), 0.24);
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].label, 0, "ties go to the first class");
        assert_eq!(kept[0].score, 0.25);
        assert_eq!(kept[0].bbox, [5.0, 0.0, 15.0, 10.0]);
    }
}
