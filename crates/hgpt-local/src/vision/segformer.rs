//! `SegformerForSemanticSegmentation` and the image-segmentation pipeline's
//! semantic output, as transformers (4.57) computes them.
//!
//! candle-transformers has a SegFormer, but its decode head upsamples with
//! nearest neighbours and drops the classifier's bias where transformers
//! interpolates bilinearly and keeps it, so this is hgpt's own, on the same
//! tensor names.

use super::encoder::{class_count, class_names};
use super::image_bytes;
use super::preprocess::{ImageProcessor, ProcessorKind, decode_image};
use crate::error::{LocalError, bad_input};
use crate::files::{ModelFiles, WEIGHTS};
use crate::pipeline::Pipeline;
use base64::Engine;
use candle_core::{D, Device, Module, ModuleT, Tensor};
use candle_nn::{
    Activation, BatchNorm, Conv2d, Conv2dConfig, LayerNorm, Linear, VarBuilder, batch_norm, conv2d,
    layer_norm, linear,
};
use hgpt_core::backend::ResolvedArgs;
use hgpt_core::output::{InferenceOutput, Segment};
use hgpt_core::task::TaskKind;
use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use image::{ExtendedColorType, GrayImage, ImageEncoder, RgbImage};
use rayon::prelude::*;
use serde::Deserialize;
use std::collections::BTreeMap;

/// transformers builds every SegFormer norm with PyTorch's default epsilon
/// (the config's `layer_norm_eps` is not used by these layers).
const NORM_EPS: f64 = 1e-5;

/// The parts of a SegFormer `config.json` the model needs.
#[derive(Debug, Clone, Deserialize)]
pub struct SegformerConfig {
    #[serde(default = "three")]
    num_channels: usize,
    num_encoder_blocks: usize,
    depths: Vec<usize>,
    sr_ratios: Vec<usize>,
    hidden_sizes: Vec<usize>,
    patch_sizes: Vec<usize>,
    strides: Vec<usize>,
    num_attention_heads: Vec<usize>,
    mlp_ratios: Vec<f64>,
    #[serde(default = "gelu")]
    hidden_act: Activation,
    decoder_hidden_size: usize,
    #[serde(default)]
    id2label: BTreeMap<String, String>,
}

fn three() -> usize {
    3
}

fn gelu() -> Activation {
    Activation::Gelu
}

impl SegformerConfig {
    /// Every per-stage list has one entry per stage and the sizes divide.
    fn check(&self) -> Result<(), String> {
        let stages = self.num_encoder_blocks;
        let lists = [
            ("depths", self.depths.len()),
            ("sr_ratios", self.sr_ratios.len()),
            ("hidden_sizes", self.hidden_sizes.len()),
            ("patch_sizes", self.patch_sizes.len()),
            ("strides", self.strides.len()),
            ("num_attention_heads", self.num_attention_heads.len()),
            ("mlp_ratios", self.mlp_ratios.len()),
        ];
        if stages == 0 {
            return Err("num_encoder_blocks is 0".into());
        }
        if let Some((name, len)) = lists.iter().find(|(_, len)| *len != stages) {
            return Err(format!(
                "{name} has {len} entries for {stages} encoder blocks"
            ));
        }
        for (i, (&hidden, &heads)) in self
            .hidden_sizes
            .iter()
            .zip(&self.num_attention_heads)
            .enumerate()
        {
            if heads == 0 || !hidden.is_multiple_of(heads) {
                return Err(format!(
                    "stage {i}: hidden size {hidden} is not a multiple of {heads} heads"
                ));
            }
        }
        if self.strides.contains(&0) || self.sr_ratios.contains(&0) {
            return Err("strides and sr_ratios must be positive".into());
        }
        Ok(())
    }

    /// Label names by class index (`LABEL_i` where the config has none).
    fn labels(&self) -> Vec<String> {
        class_names(&self.id2label, class_count(&self.id2label))
    }
}

/// Efficient self-attention: keys and values from a sequence shrunk by a
/// strided convolution (`sr_ratio`).
struct Attention {
    query: Linear,
    key: Linear,
    value: Linear,
    reduction: Option<(Conv2d, LayerNorm)>,
    output: Linear,
    heads: usize,
}

impl Attention {
    fn load(vb: VarBuilder, hidden: usize, heads: usize, sr: usize) -> candle_core::Result<Self> {
        let own = vb.pp("self");
        let reduction = if sr > 1 {
            let config = Conv2dConfig {
                stride: sr,
                ..Default::default()
            };
            Some((
                conv2d(hidden, hidden, sr, config, own.pp("sr"))?,
                layer_norm(hidden, NORM_EPS, own.pp("layer_norm"))?,
            ))
        } else {
            None
        };
        Ok(Self {
            query: linear(hidden, hidden, own.pp("query"))?,
            key: linear(hidden, hidden, own.pp("key"))?,
            value: linear(hidden, hidden, own.pp("value"))?,
            reduction,
            output: linear(hidden, hidden, vb.pp("output").pp("dense"))?,
            heads,
        })
    }

    /// `x` is `[batch, height * width, hidden]`.
    fn forward(&self, x: &Tensor, height: usize, width: usize) -> candle_core::Result<Tensor> {
        let (batch, tokens, hidden) = x.dims3()?;
        let head_dim = hidden / self.heads;
        let split = |t: Tensor| -> candle_core::Result<Tensor> {
            let n = t.dim(1)?;
            t.reshape((batch, n, self.heads, head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = split(self.query.forward(x)?)?;
        let context = match &self.reduction {
            Some((conv, norm)) => {
                let grid = x.transpose(1, 2)?.reshape((batch, hidden, height, width))?;
                let reduced = conv.forward(&grid)?.flatten_from(2)?.transpose(1, 2)?;
                norm.forward(&reduced)?
            }
            None => x.clone(),
        };
        let k = split(self.key.forward(&context)?)?;
        let v = split(self.value.forward(&context)?)?;
        let scores = (q.matmul(&k.t()?)? / (head_dim as f64).sqrt())?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let out = probs
            .matmul(&v)?
            .transpose(1, 2)?
            .reshape((batch, tokens, hidden))?;
        self.output.forward(&out)
    }
}

/// The depth-wise 3x3 convolution (stride 1, padding 1) of the Mix-FFN.
///
/// candle runs a grouped convolution one group at a time (a full
/// convolution per channel), which made these layers most of SegFormer's
/// time; on the CPU it is a direct loop instead, on the token-major layout
/// the Mix-FFN holds (`[batch, height * width, channels]`), so that no
/// transposes are needed and each tap is one contiguous run of channels.
struct DepthwiseConv {
    conv: Conv2d,
    /// `[3 * 3][channels]` and `[channels]`, for the CPU loop.
    taps: Vec<f32>,
    biases: Vec<f32>,
}

impl DepthwiseConv {
    fn load(channels: usize, vb: VarBuilder) -> candle_core::Result<Self> {
        let weight = vb.get((channels, 1, 3, 3), "weight")?;
        let bias = vb.get(channels, "bias")?;
        let taps = weight
            .reshape((channels, 9))?
            .t()?
            .flatten_all()?
            .to_vec1::<f32>()?;
        Ok(Self {
            taps,
            biases: bias.to_vec1::<f32>()?,
            conv: Conv2d::new(
                weight,
                Some(bias),
                Conv2dConfig {
                    padding: 1,
                    groups: channels,
                    ..Default::default()
                },
            ),
        })
    }

    /// `x` is `[batch, height * width, channels]`; so is the result.
    fn forward(&self, x: &Tensor, height: usize, width: usize) -> candle_core::Result<Tensor> {
        let (batch, tokens, channels) = x.dims3()?;
        if tokens != height * width || channels != self.biases.len() {
            candle_core::bail!(
                "depth-wise convolution of {} channels on a {height}x{width} grid given {tokens} \
                 tokens of {channels} channels",
                self.biases.len()
            );
        }
        if !x.device().is_cpu() {
            let grid = x
                .transpose(1, 2)?
                .reshape((batch, channels, height, width))?;
            return self.conv.forward(&grid)?.flatten_from(2)?.transpose(1, 2);
        }
        let input = x.flatten_all()?.to_vec1::<f32>()?;
        let mut out = vec![0f32; batch * tokens * channels];
        out.par_chunks_mut(width * channels)
            .enumerate()
            .for_each(|(index, out_row)| {
                let (image, y) = (index / height, index % height);
                let image = &input[image * tokens * channels..][..tokens * channels];
                for (x, out) in out_row.chunks_exact_mut(channels).enumerate() {
                    for ky in 0..3 {
                        let Some(row) = (y + ky).checked_sub(1).filter(|r| *r < height) else {
                            continue;
                        };
                        for kx in 0..3 {
                            let Some(col) = (x + kx).checked_sub(1).filter(|c| *c < width) else {
                                continue;
                            };
                            let tap = &self.taps[(ky * 3 + kx) * channels..][..channels];
                            let source = &image[(row * width + col) * channels..][..channels];
                            for ((o, k), v) in out.iter_mut().zip(tap).zip(source) {
                                *o += k * v;
                            }
                        }
                    }
                    for (o, b) in out.iter_mut().zip(&self.biases) {
                        *o += b;
                    }
                }
            });
        Tensor::from_vec(out, (batch, tokens, channels), x.device())
    }
}

/// Linear, depth-wise 3x3 convolution, activation, linear.
struct MixFeedForward {
    dense1: Linear,
    depthwise: DepthwiseConv,
    activation: Activation,
    dense2: Linear,
}

impl MixFeedForward {
    fn forward(&self, x: &Tensor, height: usize, width: usize) -> candle_core::Result<Tensor> {
        let h = self.dense1.forward(x)?;
        let h = self.depthwise.forward(&h, height, width)?;
        self.dense2.forward(&self.activation.forward(&h)?)
    }
}

struct Layer {
    norm1: LayerNorm,
    attention: Attention,
    norm2: LayerNorm,
    mlp: MixFeedForward,
}

impl Layer {
    fn forward(&self, x: &Tensor, height: usize, width: usize) -> candle_core::Result<Tensor> {
        let x = (x + self
            .attention
            .forward(&self.norm1.forward(x)?, height, width)?)?;
        &x + self.mlp.forward(&self.norm2.forward(&x)?, height, width)?
    }
}

/// One encoder stage: overlapping patch embedding, layers, norm.
struct Stage {
    patch: Conv2d,
    patch_norm: LayerNorm,
    layers: Vec<Layer>,
    norm: LayerNorm,
    /// The decode head's projection of this stage to the decoder width,
    /// folded with this stage's part of the fusion convolution.
    decoder_proj: Linear,
}

/// The SegFormer encoder and its all-MLP decode head.
pub struct SegformerForSemanticSegmentation {
    stages: Vec<Stage>,
    batch_norm: BatchNorm,
    classifier: Conv2d,
}

impl SegformerForSemanticSegmentation {
    /// Load from weights with transformers' names.
    pub fn load(
        config: &SegformerConfig,
        num_labels: usize,
        vb: VarBuilder,
    ) -> candle_core::Result<Self> {
        let encoder = vb.pp("segformer").pp("encoder");
        let head = vb.pp("decode_head");
        let decoder = config.decoder_hidden_size;
        let mut channels = config.num_channels;
        let mut stages = Vec::with_capacity(config.num_encoder_blocks);
        for i in 0..config.num_encoder_blocks {
            let hidden = config.hidden_sizes[i];
            let patch_size = config.patch_sizes[i];
            let patch_vb = encoder.pp("patch_embeddings").pp(i);
            let patch = conv2d(
                channels,
                hidden,
                patch_size,
                Conv2dConfig {
                    padding: patch_size / 2,
                    stride: config.strides[i],
                    ..Default::default()
                },
                patch_vb.pp("proj"),
            )?;
            let mlp_hidden = (hidden as f64 * config.mlp_ratios[i]) as usize;
            let layers = (0..config.depths[i])
                .map(|j| {
                    let lvb = encoder.pp("block").pp(i).pp(j);
                    let mlp = lvb.pp("mlp");
                    Ok(Layer {
                        norm1: layer_norm(hidden, NORM_EPS, lvb.pp("layer_norm_1"))?,
                        attention: Attention::load(
                            lvb.pp("attention"),
                            hidden,
                            config.num_attention_heads[i],
                            config.sr_ratios[i],
                        )?,
                        norm2: layer_norm(hidden, NORM_EPS, lvb.pp("layer_norm_2"))?,
                        mlp: MixFeedForward {
                            dense1: linear(hidden, mlp_hidden, mlp.pp("dense1"))?,
                            depthwise: DepthwiseConv::load(
                                mlp_hidden,
                                mlp.pp("dwconv").pp("dwconv"),
                            )?,
                            activation: config.hidden_act,
                            dense2: linear(mlp_hidden, hidden, mlp.pp("dense2"))?,
                        },
                    })
                })
                .collect::<candle_core::Result<Vec<_>>>()?;
            stages.push(Stage {
                patch,
                patch_norm: layer_norm(hidden, NORM_EPS, patch_vb.pp("layer_norm"))?,
                layers,
                norm: layer_norm(hidden, NORM_EPS, encoder.pp("layer_norm").pp(i))?,
                decoder_proj: linear(hidden, decoder, head.pp("linear_c").pp(i).pp("proj"))?,
            });
            channels = hidden;
        }
        // The head projects each stage to the decoder width, resizes it to
        // the first stage's grid, concatenates the stages (last first) and
        // mixes them with a 1x1 convolution. Projection and mixing are linear
        // and resizing acts on each channel alone, so the mixing folds into
        // each stage's projection at load time: the 1x1 convolution over all
        // stages at full resolution (most of the head's work) disappears.
        let stages_count = stages.len();
        let fuse = head
            .pp("linear_fuse")
            .get((decoder, decoder * stages_count, 1, 1), "weight")?
            .reshape((decoder, decoder * stages_count))?;
        for (i, stage) in stages.iter_mut().enumerate() {
            let block = fuse.narrow(1, (stages_count - 1 - i) * decoder, decoder)?;
            let weight = block.matmul(stage.decoder_proj.weight())?;
            let bias = match stage.decoder_proj.bias() {
                Some(b) => Some(block.matmul(&b.unsqueeze(1)?)?.squeeze(1)?),
                None => None,
            };
            stage.decoder_proj = Linear::new(weight, bias);
        }
        Ok(Self {
            stages,
            batch_norm: batch_norm(decoder, NORM_EPS, head.pp("batch_norm"))?,
            classifier: conv2d(
                decoder,
                num_labels,
                1,
                Conv2dConfig::default(),
                head.pp("classifier"),
            )?,
        })
    }

    /// Logits `[batch, labels, H/4, W/4]` (for the usual first stride 4) of
    /// pixel values `[batch, channels, H, W]`.
    pub fn forward(&self, pixel_values: &Tensor) -> candle_core::Result<Tensor> {
        let mut x = pixel_values.clone();
        let mut projected = Vec::with_capacity(self.stages.len());
        for stage in &self.stages {
            let embedded = stage.patch.forward(&x)?;
            let (batch, hidden, height, width) = embedded.dims4()?;
            let mut h = stage
                .patch_norm
                .forward(&embedded.flatten_from(2)?.transpose(1, 2)?)?;
            for layer in &stage.layers {
                h = layer.forward(&h, height, width)?;
            }
            h = stage.norm.forward(&h)?;
            let decoded = stage.decoder_proj.forward(&h)?;
            let decoder = decoded.dim(D::Minus1)?;
            projected.push(
                decoded
                    .transpose(1, 2)?
                    .reshape((batch, decoder, height, width))?,
            );
            x = h
                .reshape((batch, height, width, hidden))?
                .permute((0, 3, 1, 2))?
                .contiguous()?;
        }
        let (_, _, height, width) = projected
            .first()
            .ok_or_else(|| candle_core::Error::Msg("no encoder stages".into()))?
            .dims4()?;
        let mut fused: Option<Tensor> = None;
        for p in projected.iter().rev() {
            let (_, _, h, w) = p.dims4()?;
            let resized = if (h, w) == (height, width) {
                p.clone()
            } else {
                p.upsample_bilinear2d(height, width, false)?
            };
            fused = Some(match fused {
                Some(sum) => (sum + resized)?,
                None => resized,
            });
        }
        let fused = fused.ok_or_else(|| candle_core::Error::Msg("no encoder stages".into()))?;
        let normed = self.batch_norm.forward_t(&fused, false)?.relu()?;
        self.classifier.forward(&normed)
    }
}

/// A loaded SegFormer with its image processor: the image-segmentation
/// pipeline's semantic output.
pub struct Segmenter {
    model: SegformerForSemanticSegmentation,
    processor: ImageProcessor,
    labels: Vec<String>,
    device: Device,
    weight_bytes: u64,
}

impl Segmenter {
    /// Load from a model's files (`config.json`, `preprocessor_config.json`,
    /// `model.safetensors` or `pytorch_model.bin`).
    pub fn load(files: &ModelFiles, device: &Device) -> Result<Self, LocalError> {
        files.require(&["config.json", "preprocessor_config.json", WEIGHTS])?;
        let config: SegformerConfig = files.json("config.json")?;
        config
            .check()
            .map_err(|e| files.load_error(format!("config.json: {e}")))?;
        let processor = ImageProcessor::load(files, ProcessorKind::Classification)?;
        let labels = config.labels();
        let weights = files.weights(device)?;
        let model = SegformerForSemanticSegmentation::load(&config, labels.len(), weights.vb)
            .map_err(|e| files.load_error(format!("{}: {e}", weights.file)))?;
        Ok(Self {
            model,
            processor,
            labels,
            device: device.clone(),
            weight_bytes: weights.bytes,
        })
    }

    /// Raw logits `[labels, h, w]` of a decoded image.
    pub fn logits(&self, image: &RgbImage) -> Result<Tensor, LocalError> {
        let task = TaskKind::ImageSegmentation;
        let pixel_values = self.processor.preprocess(task, image, &self.device)?;
        Ok(self.model.forward(&pixel_values)?.squeeze(0)?)
    }

    /// The class of every pixel of the image: the logits resized to the
    /// image (bilinear, as transformers' post-processing) and the best class
    /// per pixel (the first on ties), row-major.
    pub fn classes(&self, image: &RgbImage) -> Result<Vec<u32>, LocalError> {
        let logits = self.logits(image)?;
        let (classes, height, width) = logits.dims3()?;
        // Pixel-major, so that each pixel's classes are contiguous.
        let by_pixel = logits.permute((1, 2, 0))?.flatten_all()?.to_vec1::<f32>()?;
        let (out_w, out_h) = image.dimensions();
        Ok(resized_argmax(
            &by_pixel,
            classes,
            (height, width),
            (out_h as usize, out_w as usize),
        ))
    }

    /// One segment per class present, in class order, each with its mask
    /// (255 inside, 0 outside, as a PNG) and no score.
    pub fn segment(&self, image: &RgbImage) -> Result<Vec<Segment>, LocalError> {
        let classes = self.classes(image)?;
        class_segments(&classes, &self.labels, image.dimensions())
    }
}

/// The two source positions and the weight of the second, per output
/// position, for a bilinear resize from `input` to `output` positions with
/// half-pixel centres (PyTorch's `align_corners=False`).
fn bilinear_taps(input: usize, output: usize) -> Vec<(usize, usize, f64)> {
    let scale = input as f64 / output as f64;
    (0..output)
        .map(|o| {
            let source = (scale * (o as f64 + 0.5) - 0.5).max(0.0);
            let first = (source.floor() as usize).min(input - 1);
            let second = (first + 1).min(input - 1);
            (first, second, (source - first as f64).clamp(0.0, 1.0))
        })
        .collect()
}

/// For each pixel of an `out` image, the first class whose logit, resized
/// bilinearly from the `[in_h, in_w, classes]` map, is largest. Each value
/// is interpolated in f64 and rounded to f32, exactly as candle's
/// `upsample_bilinear2d` computes it, but the resized maps (150 classes of
/// a whole image) are never held, and rows go in parallel.
pub(crate) fn resized_argmax(
    by_pixel: &[f32],
    classes: usize,
    (in_h, in_w): (usize, usize),
    (out_h, out_w): (usize, usize),
) -> Vec<u32> {
    let mut out = vec![0u32; out_h * out_w];
    if classes == 0 || in_h == 0 || in_w == 0 || out_w == 0 {
        return out;
    }
    let rows = bilinear_taps(in_h, out_h);
    let cols = bilinear_taps(in_w, out_w);
    let pixel = |y: usize, x: usize| &by_pixel[(y * in_w + x) * classes..][..classes];
    out.par_chunks_mut(out_w)
        .zip(rows.par_iter())
        .for_each(|(row, &(y0, y1, wy))| {
            for (slot, &(x0, x1, wx)) in row.iter_mut().zip(&cols) {
                let (a, b, c, d) = (pixel(y0, x0), pixel(y0, x1), pixel(y1, x0), pixel(y1, x1));
                let mut best = (0u32, f32::NEG_INFINITY);
                for k in 0..classes {
                    let top = f64::from(a[k]) * (1.0 - wx) + f64::from(b[k]) * wx;
                    let bottom = f64::from(c[k]) * (1.0 - wx) + f64::from(d[k]) * wx;
                    let value = (top * (1.0 - wy) + bottom * wy) as f32;
                    if k == 0 || value > best.1 {
                        best = (k as u32, value);
                    }
                }
                *slot = best.0;
            }
        });
    out
}

/// One unscored segment per class in `classes` (a class per pixel of a
/// `(width, height)` image), in class order, named by `labels` (`LABEL_{id}`
/// past their end).
pub(crate) fn class_segments(
    classes: &[u32],
    labels: &[String],
    (width, height): (u32, u32),
) -> Result<Vec<Segment>, LocalError> {
    let mut present = classes.to_vec();
    present.sort_unstable();
    present.dedup();
    present
        .into_par_iter()
        .map(|class| {
            let label = labels
                .get(class as usize)
                .cloned()
                .unwrap_or_else(|| format!("LABEL_{class}"));
            mask_segment(label, None, classes, class, (width, height))
        })
        .collect()
}

/// A segment whose mask is the pixels of `map` equal to `id` (255 inside, 0
/// outside, as a base64 PNG of `(width, height)`).
pub(crate) fn mask_segment<T: PartialEq + Copy>(
    label: String,
    score: Option<f64>,
    map: &[T],
    id: T,
    (width, height): (u32, u32),
) -> Result<Segment, LocalError> {
    let pixels = map.iter().map(|&c| if c == id { 255 } else { 0 }).collect();
    let mask = GrayImage::from_raw(width, height, pixels)
        .ok_or_else(|| LocalError::Compute("the segmentation map does not fit the image".into()))?;
    // Two-level masks compress well with the fast settings.
    let mut png = Vec::new();
    PngEncoder::new_with_quality(&mut png, CompressionType::Fast, FilterType::NoFilter)
        .write_image(mask.as_raw(), width, height, ExtendedColorType::L8)
        .map_err(|e| LocalError::Compute(format!("cannot encode a mask: {e}")))?;
    Ok(Segment {
        label,
        score,
        mask: base64::engine::general_purpose::STANDARD.encode(png),
    })
}

impl Pipeline for Segmenter {
    fn tasks(&self) -> &[TaskKind] {
        &[TaskKind::ImageSegmentation]
    }

    fn run(&self, task: TaskKind, args: &ResolvedArgs) -> Result<InferenceOutput, LocalError> {
        if task != TaskKind::ImageSegmentation {
            return Err(LocalError::Unsupported(format!(
                "a semantic segmenter cannot do {task}"
            )));
        }
        if let Some(subtask) = args.other.get("subtask").and_then(|v| v.as_str())
            && subtask != "semantic"
        {
            return Err(bad_input(
                task,
                format!("SegFormer segments semantically; subtask {subtask:?} is not available"),
            ));
        }
        let image = decode_image(task, image_bytes(task, args)?)?;
        Ok(InferenceOutput::Segments(self.segment(&image)?))
    }

    fn weight_bytes(&self) -> u64 {
        self.weight_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType;

    #[test]
    fn resized_argmax_equals_candles_resize_then_argmax() {
        let (classes, in_h, in_w) = (7, 5, 6);
        // Values with ties and repeats, so that "first on ties" matters.
        let values: Vec<f32> = (0..classes * in_h * in_w)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) / 4.0)
            .collect();
        let logits = Tensor::from_vec(values, (classes, in_h, in_w), &Device::Cpu).unwrap();
        let by_pixel = logits
            .permute((1, 2, 0))
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        for (out_h, out_w) in [(13, 11), (3, 4), (5, 6), (1, 1)] {
            let expected = logits
                .unsqueeze(0)
                .unwrap()
                .upsample_bilinear2d(out_h, out_w, false)
                .unwrap()
                .squeeze(0)
                .unwrap()
                .argmax(0)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_dtype(DType::U32)
                .unwrap()
                .to_vec1::<u32>()
                .unwrap();
            let ours = resized_argmax(&by_pixel, classes, (in_h, in_w), (out_h, out_w));
            assert_eq!(ours, expected, "{out_h}x{out_w}");
        }
    }
}
