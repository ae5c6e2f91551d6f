//! The BiT ResNet backbone of DPT-hybrid (`Intel/dpt-hybrid-midas`), as
//! transformers' `BitBackbone` computes it with `layer_type="bottleneck"`:
//! weight-standardised convolutions (standardised once, at load time),
//! group norms, TensorFlow-style `SAME` padding, on channels-last maps.

use super::conv::{Conv, GroupNorm, Padding, Rows};
use candle_core::{DType, Result, Tensor};
use candle_nn::VarBuilder;
use rayon::prelude::*;
use serde::Deserialize;

/// The epsilon of BiT's weight standardisation.
const STANDARDIZE_EPS: f64 = 1e-8;

/// The parts of a BiT `backbone_config` hgpt reads.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct BitConfig {
    #[serde(default)]
    global_padding: Option<String>,
    #[serde(default = "preactivation")]
    layer_type: String,
    #[serde(default = "relu")]
    hidden_act: String,
    #[serde(default = "thirty_two")]
    num_groups: usize,
    #[serde(default)]
    embedding_dynamic_padding: bool,
    #[serde(default = "thirty_two")]
    output_stride: usize,
    depths: Vec<usize>,
}

fn preactivation() -> String {
    "preactivation".into()
}
fn relu() -> String {
    "relu".into()
}
fn thirty_two() -> usize {
    32
}

/// A weight-standardised convolution (no bias): each output channel's
/// weights shifted to mean 0 and scaled to variance 1 (biased).
fn standardized_conv(vb: VarBuilder, stride: usize, padding: Padding) -> Result<(Conv, usize)> {
    let weight = vb.get_unchecked_dtype("weight", DType::F32)?;
    let (outputs, inputs, kh, kw) = weight.dims4()?;
    let flat = weight.reshape((outputs, inputs * kh * kw))?;
    let mean = flat.mean_keepdim(1)?;
    let centred = flat.broadcast_sub(&mean)?;
    let var = centred.sqr()?.mean_keepdim(1)?;
    let standardized = centred
        .broadcast_div(&(var + STANDARDIZE_EPS)?.sqrt()?)?
        .reshape((outputs, inputs, kh, kw))?;
    Ok((Conv::padded(&standardized, None, stride, padding)?, outputs))
}

/// One bottleneck layer (`BitBottleneckLayer`): 1x1, 3x3 (strided), 1x1,
/// each with a group norm, a projected shortcut in the first layer of a
/// stage, ReLU after the sum.
#[derive(Debug, Clone)]
struct Bottleneck {
    shortcut: Option<(Conv, GroupNorm)>,
    convs: [(Conv, GroupNorm); 3],
}

impl Bottleneck {
    fn load(
        vb: VarBuilder,
        stride: usize,
        first: bool,
        padding: Padding,
        groups: usize,
    ) -> Result<Self> {
        let conv = |name: &str, norm: &str, stride: usize| -> Result<(Conv, GroupNorm)> {
            let (conv, outputs) = standardized_conv(vb.pp(name), stride, padding)?;
            Ok((conv, GroupNorm::load(vb.pp(norm), outputs, groups)?))
        };
        Ok(Self {
            shortcut: first
                .then(|| conv("downsample.conv", "downsample.norm", stride))
                .transpose()?,
            convs: [
                conv("conv1", "norm1", 1)?,
                conv("conv2", "norm2", stride)?,
                conv("conv3", "norm3", 1)?,
            ],
        })
    }

    fn forward(&self, x: &Rows) -> Result<Rows> {
        use crate::kernels::Epilogue::Bias;
        let shortcut = match &self.shortcut {
            Some((conv, norm)) => norm.forward(&conv.forward(x, Bias)?, false, None)?,
            None => x.clone(),
        };
        let [(c1, n1), (c2, n2), (c3, n3)] = &self.convs;
        let h = n1.forward(&c1.forward(x, Bias)?, true, None)?;
        let h = n2.forward(&c2.forward(&h, Bias)?, true, None)?;
        n3.forward(&c3.forward(&h, Bias)?, true, Some(&shortcut))
    }
}

/// The BiT backbone: stem (7x7 convolution, group norm, 3x3 max pool) and
/// bottleneck stages; its outputs are every stage's map.
#[derive(Debug, Clone)]
pub(crate) struct BitBackbone {
    stem: Conv,
    stem_norm: GroupNorm,
    /// One zero on each side before the pool, when the padding is not
    /// `SAME`.
    stem_pad: bool,
    /// The pool's `SAME` padding (`embedding_dynamic_padding`).
    pool_same: bool,
    stages: Vec<Vec<Bottleneck>>,
}

impl BitBackbone {
    /// From `bit.*` weights under `vb`.
    pub(crate) fn load(config: &BitConfig, vb: VarBuilder) -> Result<Self> {
        if config.layer_type != "bottleneck" {
            candle_core::bail!(
                "BiT layer_type {:?} is not supported; \"bottleneck\" is",
                config.layer_type
            );
        }
        if config.hidden_act != "relu" {
            candle_core::bail!("BiT hidden_act {:?} is not supported", config.hidden_act);
        }
        let same = match config
            .global_padding
            .as_deref()
            .map(str::to_ascii_lowercase)
        {
            Some(p) if p == "same" => true,
            None => false,
            Some(other) => candle_core::bail!("BiT global_padding {other:?} is not supported"),
        };
        // Stage 1 keeps the stem's stride of 4, each later one halves.
        let mut stride_so_far = 4;
        for stage in 1..config.depths.len() {
            if stride_so_far >= config.output_stride {
                candle_core::bail!(
                    "BiT stage {stage} would be dilated (output_stride {}); not supported",
                    config.output_stride
                );
            }
            stride_so_far *= 2;
        }
        let vb = vb.pp("bit");
        let padding_for = |kernel: usize, stride: usize| {
            if same {
                Padding::Same
            } else {
                // PyTorch's symmetric padding of timm's get_padding.
                Padding::Fixed(((stride - 1) + (kernel - 1)) / 2)
            }
        };
        let (stem, width) = standardized_conv(vb.pp("embedder.convolution"), 2, padding_for(7, 2))?;
        let stem_norm = GroupNorm::load(vb.pp("embedder.norm"), width, config.num_groups)?;
        let stages = config
            .depths
            .iter()
            .enumerate()
            .map(|(s, &depth)| {
                let stride = if s == 0 { 1 } else { 2 };
                (0..depth)
                    .map(|l| {
                        let layer = vb.pp(format!("encoder.stages.{s}.layers.{l}"));
                        let layer_stride = if l == 0 { stride } else { 1 };
                        let padding = padding_for(3, layer_stride);
                        Bottleneck::load(layer, layer_stride, l == 0, padding, config.num_groups)
                    })
                    .collect::<Result<Vec<_>>>()
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            stem,
            stem_norm,
            stem_pad: !same,
            pool_same: config.embedding_dynamic_padding,
            stages,
        })
    }

    /// Every stage's output map for pixel values `[1, 3, H, W]`.
    pub(crate) fn forward(&self, pixel_values: &Tensor) -> Result<Vec<Rows>> {
        let (_, channels, height, width) = pixel_values.dims4()?;
        let x = Rows {
            pixels: pixel_values
                .squeeze(0)?
                .permute((1, 2, 0))?
                .reshape((height * width, channels))?
                .contiguous()?,
            size: (height, width),
        };
        let x = self.stem.forward(&x, crate::kernels::Epilogue::Bias)?;
        let mut x = self.stem_norm.forward(&x, true, None)?;
        if self.stem_pad {
            x = pad_zeros(&x, 1)?;
        }
        let pool = if self.pool_same {
            Padding::Same
        } else {
            Padding::Fixed(0)
        };
        let mut x = max_pool(&x, 3, 2, pool)?;
        let mut outputs = Vec::with_capacity(self.stages.len());
        for stage in &self.stages {
            for layer in stage {
                x = layer.forward(&x)?;
            }
            outputs.push(x.clone());
        }
        Ok(outputs)
    }
}

/// `amount` zeros around a map.
fn pad_zeros(x: &Rows, amount: usize) -> Result<Rows> {
    let (h, w) = x.size;
    let c = x.channels()?;
    let values = x.pixels.flatten_all()?.to_vec1::<f32>()?;
    let (ph, pw) = (h + 2 * amount, w + 2 * amount);
    let mut out = vec![0f32; ph * pw * c];
    for y in 0..h {
        let dst = ((y + amount) * pw + amount) * c;
        out[dst..dst + w * c].copy_from_slice(&values[y * w * c..(y + 1) * w * c]);
    }
    Ok(Rows {
        pixels: Tensor::from_vec(out, (ph * pw, c), x.pixels.device())?,
        size: (ph, pw),
    })
}

/// A max pool whose padding zeros take part, as `DynamicPad2d` followed by
/// `max_pool2d` computes it.
fn max_pool(x: &Rows, kernel: usize, stride: usize, padding: Padding) -> Result<Rows> {
    let (h, w) = x.size;
    let c = x.channels()?;
    let along = |n: usize| {
        padding
            .along(n, kernel, stride)
            .ok_or_else(|| candle_core::Error::Msg(format!("a {h}x{w} map is too small to pool")))
    };
    let ((out_h, top), (out_w, left)) = (along(h)?, along(w)?);
    let values = x.pixels.flatten_all()?.to_vec1::<f32>()?;
    let mut out = vec![f32::NEG_INFINITY; out_h * out_w * c];
    out.par_chunks_mut(out_w * c)
        .enumerate()
        .for_each(|(oy, row)| {
            for ox in 0..out_w {
                let dst = &mut row[ox * c..(ox + 1) * c];
                for ky in 0..kernel {
                    for kx in 0..kernel {
                        let (iy, ix) = (oy * stride + ky, ox * stride + kx);
                        let inside = iy >= top && ix >= left && iy - top < h && ix - left < w;
                        if inside {
                            let src = ((iy - top) * w + ix - left) * c;
                            for (d, &v) in dst.iter_mut().zip(&values[src..src + c]) {
                                *d = d.max(v);
                            }
                        } else {
                            dst.iter_mut().for_each(|d| *d = d.max(0.0));
                        }
                    }
                }
            }
        });
    Ok(Rows {
        pixels: Tensor::from_vec(out, (out_h * out_w, c), x.pixels.device())?,
        size: (out_h, out_w),
    })
}
