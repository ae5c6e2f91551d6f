//! Object detection with YOLOS checkpoints (`YolosForObjectDetection`).
//!
//! Tokens are `[CLS]`, the patches (row-major), then the detection tokens.
//! The position embeddings (and the per-layer mid position embeddings) have
//! their patch part resized to the input's patch grid with torch's bicubic
//! interpolation (`align_corners=False`, A = -0.75, border clamp). Two
//! 3-layer MLP heads read the detection tokens after the final LayerNorm.

use super::encoder::{Encoder, PatchEmbeddings, VitConfig};
use super::preprocess::{ImageProcessor, ProcessorKind, decode_image};
use super::{image_bytes, number_arg};
use crate::error::LocalError;
use crate::files::ModelFiles;
use crate::files::WEIGHTS;
use crate::pipeline::Pipeline;
use crate::text::postprocess::softmax;
use candle_core::{Device, Tensor};
use candle_nn::{LayerNorm, Linear, Module, VarBuilder, layer_norm, linear};
use hgpt_core::backend::ResolvedArgs;
use hgpt_core::output::{BoundingBox, Detection, InferenceOutput};
use hgpt_core::task::TaskKind;
use image::RgbImage;

/// YOLOS's default `image_size` (`[height, width]`).
const DEFAULT_IMAGE_SIZE: (usize, usize) = (512, 864);

/// The object-detection pipeline's default score threshold.
pub const DEFAULT_THRESHOLD: f64 = 0.5;

/// A `num_layers`-deep MLP with ReLU between layers (`layers.{i}`).
#[derive(Debug, Clone)]
struct Mlp {
    layers: Vec<Linear>,
}

impl Mlp {
    fn load(
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

    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
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

/// The YOLOS detection network.
#[derive(Debug, Clone)]
pub struct YolosForObjectDetection {
    cls_token: Tensor,
    detection_tokens: Tensor,
    position_embeddings: Tensor,
    mid_position_embeddings: Option<Tensor>,
    patches: PatchEmbeddings,
    encoder: Encoder,
    layernorm: LayerNorm,
    class_head: Mlp,
    box_head: Mlp,
    grid: (usize, usize),
    hidden: usize,
    detections: usize,
    layers: usize,
}

impl YolosForObjectDetection {
    /// Build from weights named as transformers saves them (`vit.*`,
    /// `class_labels_classifier.*`, `bbox_predictor.*`); `grid` is the patch
    /// grid of the configured image size.
    pub fn load(
        cfg: &VitConfig,
        grid: (usize, usize),
        num_labels: usize,
        vb: VarBuilder,
    ) -> candle_core::Result<Self> {
        let hidden = cfg.hidden_size;
        let detections = cfg.num_detection_tokens;
        let seq = 1 + grid.0 * grid.1 + detections;
        let vit = vb.pp("vit");
        let embeddings = vit.pp("embeddings");
        let layers = cfg.num_hidden_layers;
        let mid_position_embeddings = if cfg.use_mid_position_embeddings && layers > 1 {
            Some(
                vit.pp("encoder")
                    .get((layers - 1, 1, seq, hidden), "mid_position_embeddings")?
                    .reshape((layers - 1, seq, hidden))?,
            )
        } else {
            None
        };
        Ok(Self {
            cls_token: embeddings.get((1, 1, hidden), "cls_token")?,
            detection_tokens: embeddings.get((1, detections, hidden), "detection_tokens")?,
            position_embeddings: embeddings.get((1, seq, hidden), "position_embeddings")?,
            mid_position_embeddings,
            patches: PatchEmbeddings::load(cfg, embeddings.pp("patch_embeddings"))?,
            encoder: Encoder::load(cfg, vit.pp("encoder"))?,
            layernorm: layer_norm(hidden, cfg.layer_norm_eps, vit.pp("layernorm"))?,
            class_head: Mlp::load(
                hidden,
                hidden,
                num_labels + 1,
                3,
                vb.pp("class_labels_classifier"),
            )?,
            box_head: Mlp::load(hidden, hidden, 4, 3, vb.pp("bbox_predictor"))?,
            grid,
            hidden,
            detections,
            layers,
        })
    }

    /// `(logits [batch, tokens, labels + 1], boxes [batch, tokens, 4])` for
    /// pixel values `[batch, 3, H, W]`; boxes are `(cx, cy, w, h)` in 0..1.
    pub fn forward(&self, pixel_values: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        let (batch, _, height, width) = pixel_values.dims4()?;
        let grid = self.patches.grid(height, width);
        if grid.0 == 0 || grid.1 == 0 {
            candle_core::bail!("a {width}x{height} input is smaller than one patch");
        }
        let patches = self.patches.forward(pixel_values)?;
        let cls = self
            .cls_token
            .broadcast_as((batch, 1, self.hidden))?
            .contiguous()?;
        let detection = self
            .detection_tokens
            .broadcast_as((batch, self.detections, self.hidden))?
            .contiguous()?;
        let position =
            resize_patch_positions(&self.position_embeddings, self.grid, grid, self.detections)?;
        let xs = Tensor::cat(&[&cls, &patches, &detection], 1)?.broadcast_add(&position)?;
        let mid = self
            .mid_position_embeddings
            .as_ref()
            .map(|m| resize_patch_positions(m, self.grid, grid, self.detections))
            .transpose()?;
        let last = self.layers - 1;
        let xs = self.encoder.forward_with(&xs, |i, hs| match &mid {
            Some(mid) if i < last => hs.broadcast_add(&mid.narrow(0, i, 1)?),
            _ => Ok(hs),
        })?;
        let xs = xs.apply(&self.layernorm)?;
        let seq = xs.dim(1)?;
        let tokens = xs.narrow(1, seq - self.detections, self.detections)?;
        let logits = self.class_head.forward(&tokens)?;
        let boxes = candle_nn::ops::sigmoid(&self.box_head.forward(&tokens)?)?;
        Ok((logits, boxes))
    }
}

/// The weights of torch's 1-D bicubic resize from `input` to `output`
/// samples (`align_corners=False`, A = -0.75, indices clamped to the
/// border), as a dense row-major `[output, input]` matrix. Computed in
/// float32 like torch's CPU kernel.
pub fn bicubic_weights(input: usize, output: usize) -> Vec<f32> {
    const A: f32 = -0.75;
    let near = |x: f32| ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
    let far = |x: f32| ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A;
    let scale = input as f32 / output as f32;
    let mut matrix = vec![0f32; output * input];
    let last = input as i64 - 1;
    for o in 0..output {
        let real = scale * (o as f32 + 0.5) - 0.5;
        let base = real.floor();
        let t = real - base;
        let coefficients = [far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)];
        for (j, c) in coefficients.into_iter().enumerate() {
            let index = (base as i64 + j as i64 - 1).clamp(0, last) as usize;
            matrix[o * input + index] += c;
        }
    }
    matrix
}

/// Resize the patch part of position embeddings `[n, 1 + rows*cols + det,
/// hidden]` from grid `from` to grid `to`, keeping the `[CLS]` and
/// detection-token parts.
fn resize_patch_positions(
    positions: &Tensor,
    from: (usize, usize),
    to: (usize, usize),
    detections: usize,
) -> candle_core::Result<Tensor> {
    if from == to {
        return Ok(positions.clone());
    }
    let (n, _, hidden) = positions.dims3()?;
    let count = from.0 * from.1;
    let device = positions.device();
    let cls = positions.narrow(1, 0, 1)?;
    let det = positions.narrow(1, 1 + count, detections)?;
    // [n, count, hidden] -> [n * hidden * rows, cols]
    let grid = positions
        .narrow(1, 1, count)?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((n * hidden * from.0, from.1))?;
    let across = Tensor::from_vec(bicubic_weights(from.1, to.1), (to.1, from.1), device)?;
    let down = Tensor::from_vec(bicubic_weights(from.0, to.0), (to.0, from.0), device)?;
    // Along the columns: [n*hidden*rows, to.cols]
    let columns = grid.matmul(&across.t()?)?;
    // Along the rows: [n*hidden, to.cols, rows] x [rows, to.rows]
    let rows = columns
        .reshape((n * hidden, from.0, to.1))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((n * hidden * to.1, from.0))?
        .matmul(&down.t()?)?;
    // [n*hidden, to.cols, to.rows] -> [n, to.rows*to.cols, hidden]
    let patches = rows
        .reshape((n * hidden, to.1, to.0))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((n, hidden, to.0 * to.1))?
        .transpose(1, 2)?
        .contiguous()?;
    Tensor::cat(&[&cls, &patches, &det], 1)
}

/// The raw model outputs for one image, one row per detection token.
#[derive(Debug, Clone, PartialEq)]
pub struct Predictions {
    /// Class logits, the last class being "no object".
    pub logits: Vec<Vec<f32>>,
    /// `(cx, cy, w, h)` in 0..1 of the processed image.
    pub boxes: Vec<Vec<f32>>,
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

/// A loaded object-detection pipeline.
pub struct ObjectDetector {
    model: YolosForObjectDetection,
    processor: ImageProcessor,
    labels: Vec<String>,
    device: Device,
    weight_bytes: u64,
}

impl ObjectDetector {
    /// Load from a model's files (`config.json`, `preprocessor_config.json`,
    /// `model.safetensors` or `pytorch_model.bin`).
    pub fn load(files: &ModelFiles, device: &Device) -> Result<Self, LocalError> {
        files.require(&["config.json", "preprocessor_config.json", WEIGHTS])?;
        let config: VitConfig = files.json("config.json")?;
        let grid = config
            .check(DEFAULT_IMAGE_SIZE)
            .map_err(|e| files.load_error(format!("config.json: {e}")))?;
        let processor = ImageProcessor::load(files, ProcessorKind::Detection)?;
        let num_labels = config.num_labels();
        let weights = files.weights(device)?;
        let weight_bytes = weights.bytes;
        let model = YolosForObjectDetection::load(&config, grid, num_labels, weights.vb)
            .map_err(|e| files.load_error(format!("{}: {e}", weights.file)))?;
        Ok(Self {
            model,
            processor,
            labels: config.labels(num_labels),
            device: device.clone(),
            weight_bytes,
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
        let (logits, boxes) = self.model.forward(&pixel_values)?;
        Ok(Predictions {
            logits: logits.get(0)?.to_vec2::<f32>()?,
            boxes: boxes.get(0)?.to_vec2::<f32>()?,
        })
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
    fn same_size_bicubic_is_identity() {
        let m = bicubic_weights(3, 3);
        assert_eq!(m, vec![1., 0., 0., 0., 1., 0., 0., 0., 1.]);
    }

    #[test]
    fn bicubic_rows_sum_to_one() {
        for (i, o) in [(4, 6), (6, 4), (4, 8), (2, 7)] {
            let m = bicubic_weights(i, o);
            for row in m.chunks(i) {
                let sum: f32 = row.iter().sum();
                assert!((sum - 1.0).abs() < 1e-6, "{i}->{o}: {row:?}");
            }
        }
    }

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
