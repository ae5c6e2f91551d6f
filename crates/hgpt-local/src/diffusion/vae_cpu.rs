//! The autoencoder's encoder and decoder on hgpt's CPU kernels:
//! channels-last maps ([`Rows`]), 3x3 convolutions by Winograd, group norms
//! fused with their SiLU, linear layers with fused residuals. The same
//! networks as candle's `DownEncoderBlock2D`s and `UpDecoderBlock2D`s, which
//! [`super::vae`] keeps for other devices; candle's CPU convolutions made
//! the decoder most of a one-step image's time, and the encoder most of an
//! image-to-image one's.

use super::blocks::{Resnet, linear, same_conv};
use crate::kernels::{Dense, Epilogue, attention_cpu};
use crate::vision::conv::{Conv, GroupNorm, Interpolation, Padding, Rows, resize};
use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

/// The autoencoders' normalisation epsilon.
const EPS: f64 = 1e-6;

fn norm(vb: VarBuilder, channels: usize, groups: usize) -> Result<GroupNorm> {
    Ok(GroupNorm::load(vb, channels, groups)?.with_eps(EPS))
}

/// The mid block's single-head self-attention over every latent pixel
/// (`Attention` with a residual connection), in blocks of queries so that
/// no whole score matrix is held.
struct Attention {
    norm: GroupNorm,
    /// Queries (scaled by `1 / sqrt(channels)`), keys and values.
    qkv: Dense,
    out: Dense,
}

impl Attention {
    fn load(vb: VarBuilder, channels: usize, groups: usize) -> Result<Self> {
        // diffusers' names, or the older ones it converts on load.
        let names = if vb.contains_tensor("to_q.weight") {
            ["to_q", "to_k", "to_v", "to_out.0"]
        } else {
            ["query", "key", "value", "proj_attn"]
        };
        let scale = 1.0 / (channels as f64).sqrt();
        let [q, k, v, out] = names.map(|name| linear(vb.pp(name), channels, channels, true));
        let ((q_weight, q_bias), (k_weight, k_bias), (v_weight, v_bias)) = (q?, k?, v?);
        let (out_weight, out_bias) = out?;
        let (Some(q_bias), Some(k_bias), Some(v_bias)) = (q_bias, k_bias, v_bias) else {
            candle_core::bail!("the autoencoder's attention has no biases");
        };
        Ok(Self {
            norm: norm(vb.pp("group_norm"), channels, groups)?,
            qkv: Dense::from_parts(
                &[(q_weight * scale)?, k_weight, v_weight],
                &[(q_bias * scale)?, k_bias, v_bias],
            )?,
            out: Dense::new(out_weight, out_bias)?,
        })
    }

    fn forward(&self, x: &Rows) -> Result<Rows> {
        let h = self.norm.forward(x, false, None)?;
        let qkv = self.qkv.forward(&h.pixels, Epilogue::Bias)?;
        let attended = attention_cpu(&qkv, &[h.pixels.dim(0)?], 1, false)?;
        let pixels = self.out.forward(&attended, Epilogue::Residual(&x.pixels))?;
        Ok(Rows {
            pixels,
            size: x.size,
        })
    }
}

/// `count` ResNet blocks, the first from `inputs` channels to `outputs`,
/// the rest keeping `outputs`.
fn resnets(
    vb: VarBuilder,
    count: usize,
    (inputs, outputs): (usize, usize),
    groups: usize,
) -> Result<Vec<Resnet>> {
    (0..count)
        .map(|j| {
            let from = if j == 0 { inputs } else { outputs };
            Resnet::load(vb.pp(j), (from, outputs), (groups, EPS), None, 1.0)
        })
        .collect()
}

/// The mid block: ResNet, attention, ResNet, at the lowest resolution.
struct MidBlock(Resnet, Attention, Resnet);

impl MidBlock {
    fn load(vb: VarBuilder, channels: usize, groups: usize) -> Result<Self> {
        Ok(Self(
            Resnet::load(
                vb.pp("resnets.0"),
                (channels, channels),
                (groups, EPS),
                None,
                1.0,
            )?,
            Attention::load(vb.pp("attentions.0"), channels, groups)?,
            Resnet::load(
                vb.pp("resnets.1"),
                (channels, channels),
                (groups, EPS),
                None,
                1.0,
            )?,
        ))
    }

    fn forward(&self, x: &Rows) -> Result<Rows> {
        self.2
            .forward(&self.1.forward(&self.0.forward(x, None)?)?, None)
    }
}

/// A channels-last map `[h * w, c]` of a tensor `[1, c, h, w]`.
fn to_rows(x: &Tensor) -> Result<Rows> {
    let (batch, channels, h, w) = x.dims4()?;
    if batch != 1 {
        candle_core::bail!("the autoencoder takes one image at a time, not {batch}");
    }
    Ok(Rows {
        pixels: x
            .squeeze(0)?
            .reshape((channels, h * w))?
            .t()?
            .contiguous()?,
        size: (h, w),
    })
}

/// The tensor `[1, c, h, w]` of a channels-last map.
fn from_rows(x: &Rows) -> Result<Tensor> {
    let (h, w) = x.size;
    x.pixels.t()?.reshape((x.channels()?, h, w))?.unsqueeze(0)
}

/// `AutoencoderKL`'s encoder, before `quant_conv`: the posterior's moments.
pub(super) struct Encoder {
    conv_in: Conv,
    /// Each level's ResNet blocks and (all but the last) its stride-2
    /// downsampling convolution.
    blocks: Vec<(Vec<Resnet>, Option<Conv>)>,
    mid: MidBlock,
    norm_out: GroupNorm,
    conv_out: Conv,
}

impl Encoder {
    /// The weights under `encoder`; `channels` from the highest resolution
    /// level to the lowest, `layers` ResNet blocks per level.
    pub(super) fn load(
        vb: VarBuilder,
        channels: &[usize],
        layers: usize,
        groups: usize,
        (image, latent): (usize, usize),
    ) -> Result<Self> {
        let (Some(&first), Some(&last)) = (channels.first(), channels.last()) else {
            candle_core::bail!("the autoencoder has no blocks");
        };
        let mut blocks = Vec::with_capacity(channels.len());
        let mut inputs = first;
        for (i, &outputs) in channels.iter().enumerate() {
            let vb = vb.pp("down_blocks").pp(i);
            let resnets = resnets(vb.pp("resnets"), layers, (inputs, outputs), groups)?;
            // diffusers pads one zero after each side, then convolves with
            // stride 2: on even sides, the `Same` padding.
            let downsample = (i + 1 < channels.len())
                .then(|| -> Result<Conv> {
                    let vb = vb.pp("downsamplers.0.conv");
                    let weight = vb.get((outputs, outputs, 3, 3), "weight")?;
                    let bias = vb.get(outputs, "bias")?;
                    Conv::padded(&weight, Some(bias), 2, Padding::Same)
                })
                .transpose()?;
            blocks.push((resnets, downsample));
            inputs = outputs;
        }
        Ok(Self {
            conv_in: same_conv(vb.pp("conv_in"), image, first)?,
            blocks,
            mid: MidBlock::load(vb.pp("mid_block"), last, groups)?,
            norm_out: norm(vb.pp("conv_norm_out"), last, groups)?,
            conv_out: same_conv(vb.pp("conv_out"), last, 2 * latent)?,
        })
    }

    /// The moments `[1, 2 * latent, h / 8, w / 8]` (for three levels of
    /// downsampling) of an image `[1, 3, h, w]` whose sides halve evenly.
    pub(super) fn forward(&self, image: &Tensor) -> Result<Tensor> {
        let mut x = self.conv_in.forward(&to_rows(image)?, Epilogue::Bias)?;
        for (resnets, downsample) in &self.blocks {
            for resnet in resnets {
                x = resnet.forward(&x, None)?;
            }
            if let Some(conv) = downsample {
                let (h, w) = x.size;
                if h % 2 == 1 || w % 2 == 1 {
                    candle_core::bail!("the encoder halves a {h}x{w} map, which is odd");
                }
                x = conv.forward(&x, Epilogue::Bias)?;
            }
        }
        let x = self.mid.forward(&x)?;
        from_rows(
            &self
                .conv_out
                .forward(&self.norm_out.forward_silu(&x)?, Epilogue::Bias)?,
        )
    }
}

/// An `UpDecoderBlock2D`: ResNet blocks, then (all but the last) a nearest
/// 2x upsampling and a 3x3 convolution.
struct UpBlock {
    resnets: Vec<Resnet>,
    upsample: Option<Conv>,
}

/// `AutoencoderKL`'s decoder after `post_quant_conv`.
pub(super) struct Decoder {
    conv_in: Conv,
    mid: MidBlock,
    blocks: Vec<UpBlock>,
    norm_out: GroupNorm,
    conv_out: Conv,
}

impl Decoder {
    /// The weights under `decoder`; `channels` from the highest resolution
    /// level to the lowest, `layers` ResNet blocks per level (the decoder
    /// runs one more).
    pub(super) fn load(
        vb: VarBuilder,
        channels: &[usize],
        layers: usize,
        groups: usize,
        (latent, out): (usize, usize),
    ) -> Result<Self> {
        let (Some(&first), Some(&last)) = (channels.first(), channels.last()) else {
            candle_core::bail!("the autoencoder has no blocks");
        };
        let mut blocks = Vec::with_capacity(channels.len());
        let mut inputs = last;
        for (i, &outputs) in channels.iter().rev().enumerate() {
            let vb = vb.pp("up_blocks").pp(i);
            let resnets = resnets(vb.pp("resnets"), layers + 1, (inputs, outputs), groups)?;
            let upsample = (i + 1 < channels.len())
                .then(|| same_conv(vb.pp("upsamplers.0.conv"), outputs, outputs))
                .transpose()?;
            blocks.push(UpBlock { resnets, upsample });
            inputs = outputs;
        }
        Ok(Self {
            conv_in: same_conv(vb.pp("conv_in"), latent, last)?,
            mid: MidBlock::load(vb.pp("mid_block"), last, groups)?,
            blocks,
            norm_out: norm(vb.pp("conv_norm_out"), first, groups)?,
            conv_out: same_conv(vb.pp("conv_out"), first, out)?,
        })
    }

    /// The image `[1, out, 8h, 8w]` (for three levels of upsampling) of
    /// latents `[1, latent, h, w]`.
    pub(super) fn forward(&self, latents: &Tensor) -> Result<Tensor> {
        let mut x = self.conv_in.forward(&to_rows(latents)?, Epilogue::Bias)?;
        x = self.mid.forward(&x)?;
        for block in &self.blocks {
            for resnet in &block.resnets {
                x = resnet.forward(&x, None)?;
            }
            if let Some(conv) = &block.upsample {
                let (h, w) = x.size;
                let up = resize(&x, (2 * h, 2 * w), Interpolation::Nearest)?;
                x = conv.forward(&up, Epilogue::Bias)?;
            }
        }
        from_rows(
            &self
                .conv_out
                .forward(&self.norm_out.forward_silu(&x)?, Epilogue::Bias)?,
        )
    }
}
