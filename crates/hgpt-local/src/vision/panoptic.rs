//! `DetrForSegmentation` (`facebook/detr-resnet-50-panoptic`) and the
//! image-segmentation pipeline's panoptic, instance and semantic outputs, as
//! transformers (4.57) computes them.
//!
//! On top of DETR's detections, an attention map of each query over the
//! encoder's output (softmax over heads and pixels together) goes through a
//! small convolutional head that upsamples it with the backbone's earlier
//! maps (an FPN with group norms and nearest-neighbour upsampling) into a
//! mask per query at a quarter of the input's resolution. The
//! post-processing keeps confident queries, weighs their masks by their
//! scores and gives each pixel to the best one (`compute_segments`, which
//! the pipeline's panoptic and instance outputs share for DETR); the
//! semantic output gives each pixel the class with the most mask
//! probability, summed over queries.

use super::conv::{Conv, GroupNorm, Interpolation, Rows, resize, resize_values};
use super::detr::{DetrConfig, DetrForObjectDetection};
use super::encoder::{class_count, class_names};
use super::preprocess::{ImageProcessor, ProcessorKind, decode_image};
use super::segformer::{class_segments, mask_segment, resized_argmax};
use super::{image_bytes, number_arg};
use crate::error::{LocalError, bad_input};
use crate::files::{ModelFiles, WEIGHTS};
use crate::kernels::{Dense, Epilogue};
use crate::pipeline::Pipeline;
use candle_core::{Device, Result, Tensor};
use candle_nn::VarBuilder;
use hgpt_core::backend::ResolvedArgs;
use hgpt_core::output::{InferenceOutput, Segment};
use hgpt_core::task::TaskKind;
use image::RgbImage;
use rayon::prelude::*;

/// The mask head (`DetrMaskHeadSmallConv`): five 3x3 convolutions with
/// group norms and ReLU, the last three after adding an adapted backbone map
/// (`H/16`, `H/8`, `H/4`), then a 3x3 convolution to one channel.
#[derive(Debug, Clone)]
struct MaskHead {
    layers: Vec<(Conv, GroupNorm)>,
    adapters: Vec<Conv>,
    out: Conv,
}

impl MaskHead {
    /// `dim` input channels (`d_model + heads`), `context` = `d_model`,
    /// `fpn` the widths of the backbone maps at `H/16`, `H/8`, `H/4`.
    fn load(vb: VarBuilder, dim: usize, context: usize, fpn: [usize; 3]) -> Result<Self> {
        if !dim.is_multiple_of(8) {
            candle_core::bail!(
                "the mask head's width {dim} (d_model + heads) is not a multiple of 8"
            );
        }
        let widths = [dim, context / 2, context / 4, context / 8, context / 16];
        if widths.contains(&0) {
            candle_core::bail!("d_model {context} is too small for the mask head");
        }
        let layers = (0..5)
            .map(|i| {
                let inputs = if i == 0 { dim } else { widths[i - 1] };
                let conv = Conv::load(
                    vb.pp(format!("lay{}", i + 1)),
                    (inputs, widths[i]),
                    3,
                    (1, 1),
                    true,
                )?;
                let groups = if i == 0 { 8 } else { widths[i].min(8) };
                let norm = GroupNorm::load(vb.pp(format!("gn{}", i + 1)), widths[i], groups)?;
                Ok((conv, norm))
            })
            .collect::<Result<_>>()?;
        let adapters = (0..3)
            .map(|i| {
                Conv::load(
                    vb.pp(format!("adapter{}", i + 1)),
                    (fpn[i], widths[i + 1]),
                    1,
                    (1, 0),
                    true,
                )
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            layers,
            adapters,
            out: Conv::load(vb.pp("out_lay"), (widths[4], 1), 3, (1, 1), true)?,
        })
    }

    /// One query's mask logits (`[H/4 * W/4]`) from its input map and the
    /// adapted backbone maps.
    fn forward(&self, x: &Rows, adapted: &[Rows]) -> Result<Rows> {
        let mut x = x.clone();
        for (i, (conv, norm)) in self.layers.iter().enumerate() {
            if i >= 2 {
                let fpn = &adapted[i - 2];
                let up = resize(&x, fpn.size, Interpolation::Nearest)?;
                x = Rows {
                    pixels: (&fpn.pixels + up.pixels)?,
                    size: fpn.size,
                };
            }
            x = norm.forward(&conv.forward(&x, Epilogue::Bias)?, true, None)?;
        }
        self.out.forward(&x, Epilogue::Bias)
    }
}

/// The DETR panoptic segmentation network.
#[derive(Debug, Clone)]
pub struct DetrForSegmentation {
    detr: DetrForObjectDetection,
    /// `bbox_attention.q_linear`, scaled by `1 / sqrt(head_dim)`.
    query: Dense,
    /// `bbox_attention.k_linear`.
    key: Dense,
    heads: usize,
    mask_head: MaskHead,
}

/// What the network predicts for one image.
#[derive(Debug, Clone)]
pub struct PanopticPrediction {
    /// `[queries][labels + 1]` class logits (the last is no object).
    pub logits: Vec<Vec<f32>>,
    /// Mask logits, `[queries, height * width]` row-major.
    pub masks: Vec<f32>,
    /// `(height, width)` of the masks (a quarter of the input's).
    pub size: (usize, usize),
}

impl DetrForSegmentation {
    /// Build from weights named as transformers saves them (`detr.*`,
    /// `bbox_attention.*`, `mask_head.*`).
    pub fn load(cfg: &DetrConfig, num_labels: usize, vb: VarBuilder) -> Result<Self> {
        let detr = DetrForObjectDetection::load(cfg, num_labels, vb.pp("detr"))?;
        let d = cfg.d_model;
        let heads = cfg.encoder_attention_heads;
        let scale = ((d / heads) as f64).powf(-0.5);
        let q = vb.pp("bbox_attention.q_linear");
        let query = Dense::new(
            (q.get((d, d), "weight")? * scale)?,
            Some((q.get(d, "bias")? * scale)?),
        )?;
        let key = Dense::load(d, d, vb.pp("bbox_attention.k_linear"))?;
        // The adapters' input widths are the backbone's stage widths.
        let head = vb.pp("mask_head");
        let width = |i: usize| -> Result<usize> {
            head.pp(format!("adapter{i}"))
                .get_unchecked_dtype("weight", candle_core::DType::F32)?
                .dim(1)
        };
        let fpn = [width(1)?, width(2)?, width(3)?];
        let mask_head = MaskHead::load(head, d + heads, d, fpn)?;
        Ok(Self {
            detr,
            query,
            key,
            heads,
            mask_head,
        })
    }

    /// Class logits and mask logits for pixel values `[1, 3, H, W]`.
    pub fn forward(&self, pixel_values: &Tensor) -> Result<PanopticPrediction> {
        let encoded = self.detr.encode_all(pixel_values)?;
        let decoded = self.detr.decode(&encoded)?;
        let (logits, _) = self.detr.heads(&decoded)?;
        let logits = logits.squeeze(0)?.to_vec2::<f32>()?;
        let attention = self.attention_maps(&decoded.squeeze(0)?, &encoded.memory.squeeze(0)?)?;
        let (rows, cols) = encoded.grid;
        let pixels = rows * cols;
        let d = encoded.projected.dim(1)?;
        let projected = encoded.projected.flatten_all()?.to_vec1::<f32>()?;
        if encoded.stages.len() != 3 {
            candle_core::bail!(
                "the mask head needs a backbone with 4 stages, not {}",
                encoded.stages.len() + 1
            );
        }
        // The backbone maps at H/16, H/8, H/4, adapted once for every query.
        let adapted = encoded
            .stages
            .iter()
            .rev()
            .zip(&self.mask_head.adapters)
            .map(|(map, adapter)| {
                let (pixels, size) = map.clone().into_rows()?;
                adapter.forward(&Rows { pixels, size }, Epilogue::Bias)
            })
            .collect::<Result<Vec<_>>>()?;
        let device = pixel_values.device();
        let heads = self.heads;
        let masks = attention
            .par_chunks(pixels * heads)
            .map(|query_maps| -> Result<(Vec<f32>, (usize, usize))> {
                // [pixels, d + heads]: the projected map, then the query's
                // attention per head.
                let mut input = Vec::with_capacity(pixels * (d + heads));
                for p in 0..pixels {
                    input.extend_from_slice(&projected[p * d..(p + 1) * d]);
                    input.extend((0..heads).map(|h| query_maps[h * pixels + p]));
                }
                let x = Rows {
                    pixels: Tensor::from_vec(input, (pixels, d + heads), device)?,
                    size: (rows, cols),
                };
                let mask = self.mask_head.forward(&x, &adapted)?;
                Ok((mask.pixels.flatten_all()?.to_vec1::<f32>()?, mask.size))
            })
            .collect::<Result<Vec<_>>>()?;
        let size = masks.first().map_or((0, 0), |(_, size)| *size);
        Ok(PanopticPrediction {
            logits,
            masks: masks.into_iter().flat_map(|(mask, _)| mask).collect(),
            size,
        })
    }

    /// `DetrMHAttentionMap`: per query, per head and pixel, the softmax over
    /// heads and pixels together of the query-key products;
    /// `[queries][heads][pixels]`, flattened.
    fn attention_maps(&self, decoded: &Tensor, memory: &Tensor) -> Result<Vec<f32>> {
        let q = self
            .query
            .forward(decoded, Epilogue::Bias)?
            .to_vec2::<f32>()?;
        let k = self.key.forward(memory, Epilogue::Bias)?;
        let (pixels, d) = k.dims2()?;
        let k = k.flatten_all()?.to_vec1::<f32>()?;
        let head_dim = d / self.heads;
        let heads = self.heads;
        let mut out = vec![0f32; q.len() * heads * pixels];
        out.par_chunks_mut(heads * pixels)
            .zip(&q)
            .for_each(|(weights, query)| {
                for h in 0..heads {
                    let qh = &query[h * head_dim..(h + 1) * head_dim];
                    for p in 0..pixels {
                        let kh = &k[p * d + h * head_dim..p * d + (h + 1) * head_dim];
                        weights[h * pixels + p] = qh.iter().zip(kh).map(|(a, b)| a * b).sum();
                    }
                }
                crate::kernels::softmax_in_place(weights);
            });
        Ok(out)
    }
}

/// The panoptic post-processing's thresholds (the pipeline's defaults:
/// 0.9, 0.5, 0.5).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PanopticSettings {
    /// Queries scoring at most this are dropped.
    pub threshold: f64,
    /// A query's weighted mask probability that counts as its area.
    pub mask_threshold: f64,
    /// A segment is kept when the pixels it wins are more than this share of
    /// its area.
    pub overlap_mask_area_threshold: f64,
}

impl Default for PanopticSettings {
    fn default() -> Self {
        Self {
            threshold: 0.9,
            mask_threshold: 0.5,
            overlap_mask_area_threshold: 0.5,
        }
    }
}

/// One segment of a panoptic segmentation.
#[derive(Debug, Clone, PartialEq)]
pub struct PanopticSegment {
    /// The segment's id in the map (from 1).
    pub id: i32,
    /// Its class.
    pub label_id: usize,
    /// Its query's score, rounded to 6 decimals.
    pub score: f64,
}

/// `post_process_panoptic_segmentation` for one image with no labels fused:
/// the segment id of each pixel of a `target` `(height, width)` image (0
/// where no segment is) and the segments.
pub fn panoptic_segments(
    prediction: &PanopticPrediction,
    target: (usize, usize),
    settings: PanopticSettings,
) -> (Vec<i32>, Vec<PanopticSegment>) {
    let (height, width) = target;
    let no_object = prediction
        .logits
        .first()
        .map_or(0, |l| l.len().saturating_sub(1));
    let area = prediction.size.0 * prediction.size.1;
    // Queries that are confident and not "no object", in query order.
    let kept: Vec<(usize, f32, usize)> = prediction
        .logits
        .iter()
        .enumerate()
        .filter_map(|(query, logits)| {
            let mut probs = logits.clone();
            crate::kernels::softmax_in_place(&mut probs);
            let (label, score) =
                probs
                    .iter()
                    .enumerate()
                    .fold((0, f32::NEG_INFINITY), |best, (i, &p)| {
                        if p > best.1 { (i, p) } else { best }
                    });
            (label != no_object && f64::from(score) > settings.threshold)
                .then_some((query, score, label))
        })
        .collect();
    let mut segmentation = vec![0i32; height * width];
    if kept.is_empty() {
        return (vec![-1; height * width], Vec::new());
    }
    // Each kept query's probabilities at the image's size, weighed by its
    // score.
    let weighted: Vec<Vec<f32>> = kept
        .par_iter()
        .map(|&(query, score, _)| {
            let probs: Vec<f32> = prediction.masks[query * area..(query + 1) * area]
                .iter()
                .map(|&x| 1.0 / (1.0 + (-x).exp()))
                .collect();
            let bilinear = Interpolation::Bilinear {
                align_corners: false,
            };
            resize_values(&probs, 1, prediction.size, target, bilinear)
                .into_iter()
                .map(|p| p * score)
                .collect()
        })
        .collect();
    // The best query at each pixel (the first on ties).
    let owner: Vec<usize> = (0..height * width)
        .into_par_iter()
        .map(|pixel| {
            let mut best = 0;
            for (k, probs) in weighted.iter().enumerate().skip(1) {
                if probs[pixel] > weighted[best][pixel] {
                    best = k;
                }
            }
            best
        })
        .collect();
    let mut segments = Vec::new();
    let mut next_id = 0;
    for (k, &(_, score, label)) in kept.iter().enumerate() {
        let won = owner.iter().filter(|&&o| o == k).count();
        let original = weighted[k]
            .iter()
            .filter(|&&p| f64::from(p) >= settings.mask_threshold)
            .count();
        let exists = won > 0
            && original > 0
            && f64::from(won as f32 / original as f32) > settings.overlap_mask_area_threshold;
        if !exists {
            continue;
        }
        next_id += 1;
        for (slot, &o) in segmentation.iter_mut().zip(&owner) {
            if o == k {
                *slot = next_id;
            }
        }
        segments.push(PanopticSegment {
            id: next_id,
            label_id: label,
            score: round6(f64::from(score)),
        });
    }
    (segmentation, segments)
}

/// `post_process_semantic_segmentation` for one image: the class of each
/// pixel of a `target` `(height, width)` image. Each query's class
/// probabilities ("no object" dropped) times its mask probabilities, summed
/// over queries, are resized bilinearly (`align_corners=False`) and the best
/// class is taken (the first on ties), without holding the resized scores
/// of every class ([`resized_argmax`]).
pub fn semantic_map(prediction: &PanopticPrediction, target: (usize, usize)) -> Vec<u32> {
    let classes = prediction
        .logits
        .first()
        .map_or(0, |l| l.len().saturating_sub(1));
    let area = prediction.size.0 * prediction.size.1;
    if classes == 0 || area == 0 || prediction.masks.len() < prediction.logits.len() * area {
        return vec![0; target.0 * target.1];
    }
    let probabilities: Vec<Vec<f32>> = prediction
        .logits
        .iter()
        .map(|logits| {
            let mut p = logits.clone();
            crate::kernels::softmax_in_place(&mut p);
            p.truncate(classes);
            p
        })
        .collect();
    // `[h * w, classes]`: the class scores at the masks' resolution.
    let mut scores = vec![0f32; area * classes];
    scores
        .par_chunks_mut(classes)
        .enumerate()
        .for_each(|(pixel, out)| {
            for (query, p) in probabilities.iter().enumerate() {
                let mask = 1.0 / (1.0 + (-prediction.masks[query * area + pixel]).exp());
                out.iter_mut().zip(p).for_each(|(o, p)| *o += p * mask);
            }
        });
    resized_argmax(&scores, classes, prediction.size, target)
}

/// Python's `round(x, 6)`.
fn round6(x: f64) -> f64 {
    format!("{x:.6}").parse().unwrap_or(x)
}

/// A loaded DETR panoptic model with its image processor: the
/// image-segmentation pipeline's panoptic output.
pub struct PanopticSegmenter {
    model: DetrForSegmentation,
    processor: ImageProcessor,
    labels: Vec<String>,
    device: Device,
    weight_bytes: u64,
}

impl PanopticSegmenter {
    /// Load from a model's files (`config.json`, `preprocessor_config.json`,
    /// the weights).
    pub fn load(files: &ModelFiles, device: &Device) -> std::result::Result<Self, LocalError> {
        files.require(&["config.json", "preprocessor_config.json", WEIGHTS])?;
        let config: DetrConfig = files.json("config.json")?;
        config
            .check()
            .map_err(|e| files.load_error(format!("config.json: {e}")))?;
        let processor = ImageProcessor::load(files, ProcessorKind::Detr)?;
        let num_labels = class_count(&config.id2label);
        let weights = files.weights(device)?;
        let model = DetrForSegmentation::load(&config, num_labels, weights.vb)
            .map_err(|e| files.load_error(format!("{}: {e}", weights.file)))?;
        Ok(Self {
            model,
            processor,
            labels: class_names(&config.id2label, num_labels),
            device: device.clone(),
            weight_bytes: weights.bytes,
        })
    }

    /// The network's output for a decoded image.
    pub fn predict(&self, image: &RgbImage) -> std::result::Result<PanopticPrediction, LocalError> {
        let task = TaskKind::ImageSegmentation;
        let pixel_values = self.processor.preprocess(task, image, &self.device)?;
        Ok(self.model.forward(&pixel_values)?)
    }

    /// The pipeline's segments: each with its label, score and mask.
    pub fn segment(
        &self,
        image: &RgbImage,
        settings: PanopticSettings,
    ) -> std::result::Result<Vec<Segment>, LocalError> {
        let prediction = self.predict(image)?;
        let (width, height) = image.dimensions();
        let (map, segments) =
            panoptic_segments(&prediction, (height as usize, width as usize), settings);
        segments
            .into_par_iter()
            .map(|segment| {
                let label = self
                    .labels
                    .get(segment.label_id)
                    .cloned()
                    .unwrap_or_else(|| format!("LABEL_{}", segment.label_id));
                mask_segment(
                    label,
                    Some(segment.score),
                    &map,
                    segment.id,
                    (width, height),
                )
            })
            .collect()
    }
}

/// Which of the image-segmentation pipeline's outputs a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Subtask {
    /// Segments with scores, each pixel in at most one (the default). For
    /// DETR, `"instance"` is the same computation.
    Panoptic,
    /// One mask per class present, without scores.
    Semantic,
}

impl PanopticSegmenter {
    /// The pipeline's semantic output: a mask per class present, classes in
    /// id order, no scores.
    pub fn semantic(&self, image: &RgbImage) -> std::result::Result<Vec<Segment>, LocalError> {
        let prediction = self.predict(image)?;
        let (width, height) = image.dimensions();
        let map = semantic_map(&prediction, (height as usize, width as usize));
        class_segments(&map, &self.labels, (width, height))
    }
}

impl Pipeline for PanopticSegmenter {
    fn tasks(&self) -> &[TaskKind] {
        &[TaskKind::ImageSegmentation]
    }

    fn run(
        &self,
        task: TaskKind,
        args: &ResolvedArgs,
    ) -> std::result::Result<InferenceOutput, LocalError> {
        if task != TaskKind::ImageSegmentation {
            return Err(LocalError::Unsupported(format!(
                "a panoptic segmenter cannot do {task}"
            )));
        }
        let subtask = match args.other.get("subtask") {
            None | Some(serde_json::Value::Null) => Subtask::Panoptic,
            Some(serde_json::Value::String(s)) if s == "panoptic" || s == "instance" => {
                Subtask::Panoptic
            }
            Some(serde_json::Value::String(s)) if s == "semantic" => Subtask::Semantic,
            Some(other) => {
                return Err(bad_input(
                    task,
                    format!(
                        "subtask must be \"panoptic\", \"instance\" or \"semantic\", not {other}"
                    ),
                ));
            }
        };
        let defaults = PanopticSettings::default();
        let setting = |key: &str, default: f64| -> std::result::Result<f64, LocalError> {
            let value = number_arg(task, args, key)?.unwrap_or(default);
            if (0.0..=1.0).contains(&value) {
                Ok(value)
            } else {
                Err(bad_input(
                    task,
                    format!("{key} must be between 0 and 1, not {value}"),
                ))
            }
        };
        let settings = PanopticSettings {
            threshold: setting("threshold", defaults.threshold)?,
            mask_threshold: setting("mask_threshold", defaults.mask_threshold)?,
            overlap_mask_area_threshold: setting(
                "overlap_mask_area_threshold",
                defaults.overlap_mask_area_threshold,
            )?,
        };
        let image = decode_image(task, image_bytes(task, args)?)?;
        Ok(InferenceOutput::Segments(match subtask {
            Subtask::Panoptic => self.segment(&image, settings)?,
            Subtask::Semantic => self.semantic(&image)?,
        }))
    }

    fn weight_bytes(&self) -> u64 {
        self.weight_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prediction(
        logits: Vec<Vec<f32>>,
        masks: Vec<f32>,
        size: (usize, usize),
    ) -> PanopticPrediction {
        PanopticPrediction {
            logits,
            masks,
            size,
        }
    }

    #[test]
    fn confident_queries_split_the_image() {
        // Two confident queries (labels 0 and 1), one "no object", one unsure.
        let logits = vec![
            vec![10.0, 0.0, 0.0],
            vec![0.0, 10.0, 0.0],
            vec![0.0, 0.0, 10.0],
            vec![1.0, 1.0, 0.0],
        ];
        // 1x2 masks: query 0 wins the left pixel, query 1 the right one.
        let masks = vec![5.0, -5.0, -5.0, 5.0, 5.0, 5.0, 5.0, 5.0];
        let (map, segments) = panoptic_segments(
            &prediction(logits, masks, (1, 2)),
            (1, 2),
            PanopticSettings::default(),
        );
        assert_eq!(map, vec![1, 2]);
        assert_eq!(segments.len(), 2);
        assert_eq!((segments[0].id, segments[0].label_id), (1, 0));
        assert_eq!((segments[1].id, segments[1].label_id), (2, 1));
    }

    #[test]
    fn semantic_classes_follow_the_masks_at_any_size() {
        // Query 0 says class 0 on the left, query 1 class 1 on the right;
        // the "no object" query's mask covers everything but counts for
        // nothing.
        let logits = vec![
            vec![10.0, 0.0, 0.0],
            vec![0.0, 10.0, 0.0],
            vec![0.0, 0.0, 10.0],
        ];
        let masks = vec![5.0, -5.0, -5.0, 5.0, 9.0, 9.0];
        let prediction = prediction(logits, masks, (1, 2));
        assert_eq!(semantic_map(&prediction, (1, 2)), vec![0, 1]);
        // Resized to 2x4: the left half is class 0, the right half class 1.
        assert_eq!(
            semantic_map(&prediction, (2, 4)),
            vec![0, 0, 1, 1, 0, 0, 1, 1]
        );
        let tall = semantic_map(&prediction, (40, 2));
        assert!(tall.chunks(2).all(|row| row == [0, 1]));
    }

    #[test]
    fn nothing_confident_leaves_no_segment() {
        let logits = vec![vec![0.0, 0.0, 5.0]];
        let (map, segments) = panoptic_segments(
            &prediction(logits, vec![1.0; 4], (2, 2)),
            (3, 3),
            PanopticSettings::default(),
        );
        assert!(segments.is_empty());
        assert_eq!(map, vec![-1; 9]);
    }

    #[test]
    fn python_rounding_to_six_places() {
        assert_eq!(round6(0.123_456_789), 0.123457);
        assert_eq!(round6(0.999_999_9), 1.0);
    }
}
