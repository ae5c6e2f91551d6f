//! The bottleneck ResNet backbone of DETR, with its batch norms frozen and
//! folded into the convolutions at load time.
//!
//! Two weight layouts name the same network:
//! - timm's (and torchvision's), as the Hub's DETR checkpoints have them:
//!   `conv1`, `bn1`, `layer{1..4}.{i}.conv{1..3}` / `bn{1..3}`,
//!   `downsample.0` / `downsample.1`;
//! - transformers' own `ResNetBackbone` (`use_timm_backbone=False`):
//!   `embedder.embedder.convolution` / `normalization`,
//!   `encoder.stages.{s}.layers.{i}.layer.{0..2}.*`, `shortcut.*`.
//!
//! The depth of each stage and the widths are read from the weights, so the
//! same code runs ResNet-50, ResNet-101 and smaller test networks.

use super::conv::{Conv, Rows, fold_batch_norm};
use crate::kernels::Epilogue;
use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, VarBuilder};

/// The epsilon DETR's frozen batch norm adds to the variance.
const FROZEN_BN_EPS: f32 = 1e-5;

/// How a checkpoint's ResNet is laid out, and how to run it.
#[derive(Debug, Clone, Copy)]
pub struct ResNetOptions {
    /// The weights' names.
    pub names: ResNetNames,
    /// Whether stage 1 starts with a stride of 2 too.
    pub downsample_first_stage: bool,
    /// Whether a block's stride is on its first 1x1 convolution rather than
    /// its 3x3 one.
    pub stride_in_reduce: bool,
    /// Run channels last on the CPU kernels (im2col rows and fused linear
    /// layers), else NCHW with candle's convolutions.
    pub channels_last: bool,
}

/// How a checkpoint names its ResNet weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResNetNames {
    /// timm / torchvision names.
    Timm,
    /// transformers' `ResNetBackbone` names.
    Transformers,
}

impl ResNetNames {
    /// `(convolution, batch norm)` paths of the stem.
    fn stem(self) -> (String, String) {
        match self {
            Self::Timm => ("conv1".into(), "bn1".into()),
            Self::Transformers => (
                "embedder.embedder.convolution".into(),
                "embedder.embedder.normalization".into(),
            ),
        }
    }

    /// The path of block `block` of stage `stage` (both from 0).
    fn block(self, stage: usize, block: usize) -> String {
        match self {
            Self::Timm => format!("layer{}.{block}", stage + 1),
            Self::Transformers => format!("encoder.stages.{stage}.layers.{block}"),
        }
    }

    /// `(convolution, batch norm)` paths of convolution `index` (0..3) of a
    /// bottleneck block.
    fn conv(self, block: &str, index: usize) -> (String, String) {
        match self {
            Self::Timm => (
                format!("{block}.conv{}", index + 1),
                format!("{block}.bn{}", index + 1),
            ),
            Self::Transformers => (
                format!("{block}.layer.{index}.convolution"),
                format!("{block}.layer.{index}.normalization"),
            ),
        }
    }

    /// `(convolution, batch norm)` paths of a block's shortcut projection.
    fn shortcut(self, block: &str) -> (String, String) {
        match self {
            Self::Timm => (
                format!("{block}.downsample.0"),
                format!("{block}.downsample.1"),
            ),
            Self::Transformers => (
                format!("{block}.shortcut.convolution"),
                format!("{block}.shortcut.normalization"),
            ),
        }
    }
}

/// A convolution with its frozen batch norm folded in, run on the CPU as
/// one linear layer over the im2col rows of a `[pixels, channels]` map
/// (channels last), elsewhere with candle's convolution.
#[derive(Debug, Clone)]
enum FoldedConv {
    /// A channels-last convolution.
    Rows(Conv),
    /// candle's NCHW convolution.
    Candle(Conv2d),
}

/// A convolution with its frozen batch norm folded in.
fn folded_conv(
    vb: &VarBuilder,
    (conv, norm): (&str, &str),
    stride: usize,
    padding: usize,
    channels_last: bool,
) -> Result<FoldedConv> {
    let weight = vb.get_unchecked_dtype(&format!("{conv}.weight"), DType::F32)?;
    let (weight, bias) = fold_batch_norm(&weight, None, vb.pp(norm), f64::from(FROZEN_BN_EPS))?;
    if channels_last {
        return Ok(FoldedConv::Rows(Conv::new(
            &weight,
            Some(bias),
            stride,
            padding,
        )?));
    }
    let (_, _, kh, kw) = weight.dims4()?;
    if kh != kw {
        candle_core::bail!("{conv}.weight: the kernel is {kh}x{kw}, not square");
    }
    let config = Conv2dConfig {
        stride,
        padding,
        ..Default::default()
    };
    Ok(FoldedConv::Candle(Conv2d::new(weight, Some(bias), config)))
}

/// A feature map: NCHW for candle's convolutions, or `[height * width,
/// channels]` rows (channels last) for the CPU kernels.
#[derive(Debug, Clone)]
pub enum FeatureMap {
    /// `[1, channels, height, width]`.
    Nchw(Tensor),
    /// Rows of pixels.
    Rows {
        /// `[height * width, channels]`.
        pixels: Tensor,
        /// `(height, width)`.
        size: (usize, usize),
    },
}

impl FeatureMap {
    /// `([height * width, channels], (height, width))`.
    pub fn into_rows(self) -> Result<(Tensor, (usize, usize))> {
        match self {
            Self::Rows { pixels, size } => Ok((pixels, size)),
            Self::Nchw(xs) => {
                let (_, c, h, w) = xs.dims4()?;
                Ok((xs.reshape((c, h * w))?.t()?.contiguous()?, (h, w)))
            }
        }
    }
}

/// What follows a convolution.
#[derive(Clone, Copy)]
enum After<'a> {
    /// Nothing (a shortcut projection).
    Nothing,
    /// ReLU.
    Relu,
    /// The residual added, then ReLU.
    ResidualRelu(&'a FeatureMap),
}

impl FoldedConv {
    fn forward(&self, xs: &FeatureMap, after: After) -> Result<FeatureMap> {
        match (self, xs) {
            (Self::Rows(conv), FeatureMap::Rows { pixels, size }) => {
                let residual = match after {
                    After::ResidualRelu(FeatureMap::Rows { pixels, .. }) => Some(pixels),
                    After::ResidualRelu(FeatureMap::Nchw(_)) => {
                        candle_core::bail!("a channels-first residual for a channels-last map")
                    }
                    _ => None,
                };
                let epilogue = match (after, residual) {
                    (After::Nothing, _) => Epilogue::Bias,
                    (After::Relu, _) => Epilogue::Relu,
                    (After::ResidualRelu(_), Some(r)) => Epilogue::ResidualRelu(r),
                    (After::ResidualRelu(_), None) => Epilogue::Relu,
                };
                let input = Rows {
                    pixels: pixels.clone(),
                    size: *size,
                };
                let out = conv.forward(&input, epilogue)?;
                Ok(FeatureMap::Rows {
                    pixels: out.pixels,
                    size: out.size,
                })
            }
            (Self::Candle(conv), FeatureMap::Nchw(x)) => {
                let y = conv.forward(x)?;
                Ok(FeatureMap::Nchw(match after {
                    After::Nothing => y,
                    After::Relu => y.relu()?,
                    After::ResidualRelu(FeatureMap::Nchw(r)) => (y + r)?.relu()?,
                    After::ResidualRelu(FeatureMap::Rows { .. }) => {
                        candle_core::bail!("a channels-last residual for a channels-first map")
                    }
                }))
            }
            _ => candle_core::bail!("the feature map's layout does not fit the convolution"),
        }
    }
}

/// A 3x3, stride-2 max pool with one pixel of padding over a map whose
/// values are all at least 0 (after a ReLU), so padding never wins.
fn max_pool(xs: FeatureMap) -> Result<FeatureMap> {
    match xs {
        FeatureMap::Nchw(xs) => Ok(FeatureMap::Nchw(
            xs.pad_with_zeros(2, 1, 1)?
                .pad_with_zeros(3, 1, 1)?
                .max_pool2d_with_stride(3, 2)?,
        )),
        FeatureMap::Rows {
            pixels,
            size: (h, w),
        } => {
            let c = pixels.dim(1)?;
            let input = pixels.flatten_all()?.to_vec1::<f32>()?;
            let (out_h, out_w) = ((h + 2 - 3) / 2 + 1, (w + 2 - 3) / 2 + 1);
            let mut out = vec![0f32; out_h * out_w * c];
            for oy in 0..out_h {
                for ox in 0..out_w {
                    let dst = &mut out[(oy * out_w + ox) * c..(oy * out_w + ox + 1) * c];
                    for iy in (2 * oy).saturating_sub(1)..(2 * oy + 2).min(h) {
                        for ix in (2 * ox).saturating_sub(1)..(2 * ox + 2).min(w) {
                            let src = &input[(iy * w + ix) * c..(iy * w + ix + 1) * c];
                            for (d, &v) in dst.iter_mut().zip(src) {
                                *d = d.max(v);
                            }
                        }
                    }
                }
            }
            Ok(FeatureMap::Rows {
                pixels: Tensor::from_vec(out, (out_h * out_w, c), pixels.device())?,
                size: (out_h, out_w),
            })
        }
    }
}

/// The kernel side of a convolution's weights.
fn kernel_side(vb: &VarBuilder, conv: &str) -> Result<usize> {
    vb.get_unchecked_dtype(&format!("{conv}.weight"), DType::F32)?
        .dim(3)
}

#[derive(Debug, Clone)]
struct Bottleneck {
    reduce: FoldedConv,
    spatial: FoldedConv,
    expand: FoldedConv,
    shortcut: Option<FoldedConv>,
}

impl Bottleneck {
    fn load(vb: &VarBuilder, options: &ResNetOptions, path: &str, stride: usize) -> Result<Self> {
        let ResNetOptions {
            names,
            stride_in_reduce,
            channels_last,
            ..
        } = *options;
        let conv = |index: usize, stride: usize| {
            let (c, n) = names.conv(path, index);
            let side = kernel_side(vb, &c)?;
            folded_conv(vb, (&c, &n), stride, side / 2, channels_last)
        };
        let (reduce_stride, spatial_stride) = if stride_in_reduce {
            (stride, 1)
        } else {
            (1, stride)
        };
        let (shortcut_conv, shortcut_norm) = names.shortcut(path);
        let shortcut = if vb.contains_tensor(&format!("{shortcut_conv}.weight")) {
            Some(folded_conv(
                vb,
                (&shortcut_conv, &shortcut_norm),
                stride,
                0,
                channels_last,
            )?)
        } else if stride != 1 {
            candle_core::bail!("{path}: a strided block needs a shortcut projection");
        } else {
            None
        };
        Ok(Self {
            reduce: conv(0, reduce_stride)?,
            spatial: conv(1, spatial_stride)?,
            expand: conv(2, 1)?,
            shortcut,
        })
    }

    fn forward(&self, xs: &FeatureMap) -> Result<FeatureMap> {
        let reduced = self.reduce.forward(xs, After::Relu)?;
        let spatial = self.spatial.forward(&reduced, After::Relu)?;
        let projected;
        let residual = match &self.shortcut {
            Some(shortcut) => {
                projected = shortcut.forward(xs, After::Nothing)?;
                &projected
            }
            None => xs,
        };
        self.expand.forward(&spatial, After::ResidualRelu(residual))
    }
}

/// A bottleneck ResNet: stem (7x7 convolution, max pool), then four stages.
#[derive(Debug, Clone)]
pub struct ResNet {
    stem: FoldedConv,
    stages: Vec<Vec<Bottleneck>>,
}

impl ResNet {
    /// Load from weights under `vb`, laid out as `options` says. Stage
    /// `s > 0` starts with a stride of 2 (stage 0 too when
    /// `downsample_first_stage`). Blocks are counted from the weights.
    pub fn load(vb: VarBuilder, options: ResNetOptions) -> Result<Self> {
        let ResNetOptions {
            names,
            downsample_first_stage,
            channels_last,
            ..
        } = options;
        let (stem_conv, stem_norm) = names.stem();
        let side = kernel_side(&vb, &stem_conv)?;
        let stem = folded_conv(&vb, (&stem_conv, &stem_norm), 2, side / 2, channels_last)?;
        let mut stages = Vec::new();
        for stage in 0..4 {
            let mut blocks = Vec::new();
            loop {
                let path = names.block(stage, blocks.len());
                let (first_conv, _) = names.conv(&path, 0);
                if !vb.contains_tensor(&format!("{first_conv}.weight")) {
                    break;
                }
                let (third_conv, _) = names.conv(&path, 2);
                if !vb.contains_tensor(&format!("{third_conv}.weight")) {
                    candle_core::bail!(
                        "{path} has no third convolution: only bottleneck ResNets (ResNet-50 and deeper) are supported"
                    );
                }
                let stride = if blocks.is_empty() && (stage > 0 || downsample_first_stage) {
                    2
                } else {
                    1
                };
                blocks.push(Bottleneck::load(&vb, &options, &path, stride)?);
            }
            if blocks.is_empty() {
                candle_core::bail!(
                    "no weights for stage {} of the ResNet backbone (looked for {})",
                    stage + 1,
                    names.conv(&names.block(stage, 0), 0).0
                );
            }
            stages.push(blocks);
        }
        Ok(Self { stem, stages })
    }

    /// The last stage's feature map (`H/32` x `W/32`) of pixel values
    /// `[1, 3, H, W]`.
    pub fn forward(&self, pixel_values: &Tensor) -> Result<FeatureMap> {
        self.forward_stages(pixel_values)?
            .pop()
            .ok_or_else(|| candle_core::Error::Msg("the ResNet has no stages".into()))
    }

    /// Every stage's feature map (`H/4`, `H/8`, `H/16`, `H/32`) of pixel
    /// values `[1, 3, H, W]`.
    pub fn forward_stages(&self, pixel_values: &Tensor) -> Result<Vec<FeatureMap>> {
        let input = match &self.stem {
            FoldedConv::Rows(_) => {
                let (_, c, h, w) = pixel_values.dims4()?;
                FeatureMap::Rows {
                    pixels: pixel_values.reshape((c, h * w))?.t()?.contiguous()?,
                    size: (h, w),
                }
            }
            FoldedConv::Candle(_) => FeatureMap::Nchw(pixel_values.clone()),
        };
        let mut xs = max_pool(self.stem.forward(&input, After::Relu)?)?;
        let mut outputs = Vec::with_capacity(self.stages.len());
        for stage in &self.stages {
            for block in stage {
                xs = block.forward(&xs)?;
            }
            outputs.push(xs.clone());
        }
        Ok(outputs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use std::collections::HashMap;

    /// A small random bottleneck ResNet with timm's names: stem 4 channels,
    /// stages of 2, 1, 1, 2 blocks, widths 8 out (2 inside).
    fn random_weights() -> HashMap<String, Tensor> {
        let device = Device::Cpu;
        let mut weights = HashMap::new();
        let mut conv = |name: &str, out: usize, inp: usize, k: usize| {
            let w = Tensor::randn(0f32, 0.5, (out, inp, k, k), &device).unwrap();
            weights.insert(format!("{name}.weight"), w);
        };
        conv("conv1", 4, 3, 7);
        let mut inputs = 4;
        let mut convs = vec![];
        for (stage, depth) in [2, 1, 1, 2].into_iter().enumerate() {
            for block in 0..depth {
                let path = format!("layer{}.{block}", stage + 1);
                conv(&format!("{path}.conv1"), 2, inputs, 1);
                conv(&format!("{path}.conv2"), 2, 2, 3);
                conv(&format!("{path}.conv3"), 8, 2, 1);
                convs.push((format!("{path}.bn1"), 2));
                convs.push((format!("{path}.bn2"), 2));
                convs.push((format!("{path}.bn3"), 8));
                if block == 0 {
                    conv(&format!("{path}.downsample.0"), 8, inputs, 1);
                    convs.push((format!("{path}.downsample.1"), 8));
                }
                inputs = 8;
            }
        }
        convs.push(("bn1".into(), 4));
        for (norm, channels) in convs {
            for (name, base) in [
                ("weight", 1.0),
                ("bias", 0.0),
                ("running_mean", 0.0),
                ("running_var", 1.0),
            ] {
                let noise = Tensor::rand(0f32, 0.5, channels, &device).unwrap();
                weights.insert(format!("{norm}.{name}"), (noise + base).unwrap());
            }
        }
        weights
    }

    #[test]
    fn channels_last_kernels_match_candles_convolutions() {
        let weights = random_weights();
        let pixels = Tensor::randn(0f32, 1.0, (1, 3, 70, 97), &Device::Cpu).unwrap();
        let run = |channels_last: bool| {
            let vb = VarBuilder::from_tensors(weights.clone(), DType::F32, &Device::Cpu);
            let options = ResNetOptions {
                names: ResNetNames::Timm,
                downsample_first_stage: false,
                stride_in_reduce: false,
                channels_last,
            };
            let net = ResNet::load(vb, options).unwrap();
            net.forward(&pixels).unwrap().into_rows().unwrap()
        };
        let (fast, size) = run(true);
        let (slow, slow_size) = run(false);
        assert_eq!(size, (3, 4));
        assert_eq!(size, slow_size);
        let diff = (fast - slow)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-3, "{diff}");
    }
}
