//! The Stable Diffusion autoencoder (`AutoencoderKL`), assembled so that
//! the posterior's mean and variance are at hand: image-to-image samples the
//! posterior with its own seeded noise, as diffusers does with its
//! generator. On the CPU the encoder and decoder run on hgpt's own kernels
//! ([`super::vae_cpu`]); elsewhere on candle's blocks.

use super::config::VaeConfig;
use super::vae_cpu::{Decoder, Encoder};
use candle_core::{Module, Result, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, GroupNorm, VarBuilder, conv2d, group_norm};
use candle_transformers::models::stable_diffusion::unet_2d_blocks::{
    DownEncoderBlock2D, DownEncoderBlock2DConfig, UNetMidBlock2D, UNetMidBlock2DConfig,
    UpDecoderBlock2D, UpDecoderBlock2DConfig,
};

/// The autoencoders' normalisation epsilon.
const EPS: f64 = 1e-6;

fn same_conv(inputs: usize, outputs: usize, vb: VarBuilder) -> Result<Conv2d> {
    let cfg = Conv2dConfig {
        padding: 1,
        ..Default::default()
    };
    conv2d(inputs, outputs, 3, cfg, vb)
}

fn mid_block(channels: usize, groups: usize, vb: VarBuilder) -> Result<UNetMidBlock2D> {
    let cfg = UNetMidBlock2DConfig {
        resnet_eps: EPS,
        output_scale_factor: 1.0,
        attn_num_head_channels: None,
        resnet_groups: Some(groups),
        ..Default::default()
    };
    UNetMidBlock2D::new(vb, channels, None, cfg)
}

/// `AutoencoderKL`'s encoder, quantisation convolutions and decoder.
#[derive(Debug)]
pub struct Autoencoder {
    encoder: Half<Encoder, CandleEncoder>,
    quant_conv: Option<Conv2d>,
    post_quant_conv: Option<Conv2d>,
    decoder: Half<Decoder, CandleDecoder>,
}

/// The encoder or decoder: hgpt's on the CPU, candle's blocks elsewhere.
enum Half<Cpu, Candle> {
    Cpu(Box<Cpu>),
    Candle(Box<Candle>),
}

impl<Cpu, Candle> std::fmt::Debug for Half<Cpu, Candle> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Cpu(_) => "Cpu",
            Self::Candle(_) => "Candle",
        })
    }
}

/// The encoder of candle's blocks (before `quant_conv`).
struct CandleEncoder {
    conv_in: Conv2d,
    blocks: Vec<DownEncoderBlock2D>,
    mid: UNetMidBlock2D,
    norm: GroupNorm,
    conv_out: Conv2d,
}

impl CandleEncoder {
    fn load(cfg: &VaeConfig, vb: VarBuilder) -> Result<Self> {
        let channels = &cfg.block_out_channels;
        let (Some(&first), Some(&last)) = (channels.first(), channels.last()) else {
            candle_core::bail!("the autoencoder has no blocks");
        };
        let groups = cfg.norm_num_groups;
        let mut blocks = Vec::with_capacity(channels.len());
        for (i, &out) in channels.iter().enumerate() {
            let block_cfg = DownEncoderBlock2DConfig {
                num_layers: cfg.layers_per_block,
                resnet_eps: EPS,
                resnet_groups: groups,
                add_downsample: i + 1 < channels.len(),
                downsample_padding: 0,
                ..Default::default()
            };
            let inputs = if i == 0 { first } else { channels[i - 1] };
            blocks.push(DownEncoderBlock2D::new(
                vb.pp("down_blocks").pp(i),
                inputs,
                out,
                block_cfg,
            )?);
        }
        Ok(Self {
            conv_in: same_conv(cfg.in_channels, first, vb.pp("conv_in"))?,
            blocks,
            mid: mid_block(last, groups, vb.pp("mid_block"))?,
            norm: group_norm(groups, last, EPS, vb.pp("conv_norm_out"))?,
            conv_out: same_conv(last, 2 * cfg.latent_channels, vb.pp("conv_out"))?,
        })
    }

    fn forward(&self, images: &Tensor) -> Result<Tensor> {
        let mut xs = self.conv_in.forward(images)?;
        for block in &self.blocks {
            xs = block.forward(&xs)?;
        }
        let xs = self.mid.forward(&xs, None)?;
        self.conv_out
            .forward(&candle_nn::ops::silu(&self.norm.forward(&xs)?)?)
    }
}

/// The decoder of candle's blocks (after `post_quant_conv`).
struct CandleDecoder {
    conv_in: Conv2d,
    mid: UNetMidBlock2D,
    blocks: Vec<UpDecoderBlock2D>,
    norm: GroupNorm,
    conv_out: Conv2d,
}

impl CandleDecoder {
    fn load(cfg: &VaeConfig, vb: VarBuilder) -> Result<Self> {
        let channels = &cfg.block_out_channels;
        let (Some(&first), Some(&last)) = (channels.first(), channels.last()) else {
            candle_core::bail!("the autoencoder has no blocks");
        };
        let groups = cfg.norm_num_groups;
        let reversed: Vec<usize> = channels.iter().rev().copied().collect();
        let mut blocks = Vec::with_capacity(channels.len());
        for (i, &out) in reversed.iter().enumerate() {
            let block_cfg = UpDecoderBlock2DConfig {
                num_layers: cfg.layers_per_block + 1,
                resnet_eps: EPS,
                resnet_groups: groups,
                add_upsample: i + 1 < channels.len(),
                ..Default::default()
            };
            let inputs = if i == 0 { last } else { reversed[i - 1] };
            blocks.push(UpDecoderBlock2D::new(
                vb.pp("up_blocks").pp(i),
                inputs,
                out,
                block_cfg,
            )?);
        }
        Ok(Self {
            conv_in: same_conv(cfg.latent_channels, last, vb.pp("conv_in"))?,
            mid: mid_block(last, groups, vb.pp("mid_block"))?,
            blocks,
            norm: group_norm(groups, first, EPS, vb.pp("conv_norm_out"))?,
            conv_out: same_conv(first, cfg.out_channels, vb.pp("conv_out"))?,
        })
    }

    fn forward(&self, latents: &Tensor) -> Result<Tensor> {
        let mut xs = self.conv_in.forward(latents)?;
        xs = self.mid.forward(&xs, None)?;
        for block in &self.blocks {
            xs = block.forward(&xs)?;
        }
        self.conv_out
            .forward(&candle_nn::ops::silu(&self.norm.forward(&xs)?)?)
    }
}

impl Autoencoder {
    /// Build from a checked config and the weights of `vae/`.
    pub fn load(cfg: &VaeConfig, vb: VarBuilder) -> Result<Self> {
        let channels = &cfg.block_out_channels;
        let groups = cfg.norm_num_groups;
        let latent = cfg.latent_channels;
        let (encoder, decoder) = if vb.device().is_cpu() {
            let layers = cfg.layers_per_block;
            (
                Half::Cpu(Box::new(Encoder::load(
                    vb.pp("encoder"),
                    channels,
                    layers,
                    groups,
                    (cfg.in_channels, latent),
                )?)),
                Half::Cpu(Box::new(Decoder::load(
                    vb.pp("decoder"),
                    channels,
                    layers,
                    groups,
                    (latent, cfg.out_channels),
                )?)),
            )
        } else {
            (
                Half::Candle(Box::new(CandleEncoder::load(cfg, vb.pp("encoder"))?)),
                Half::Candle(Box::new(CandleDecoder::load(cfg, vb.pp("decoder"))?)),
            )
        };
        let pointwise = |channels: usize, name: &str| {
            conv2d(channels, channels, 1, Conv2dConfig::default(), vb.pp(name))
        };
        Ok(Self {
            encoder,
            quant_conv: cfg
                .use_quant_conv
                .then(|| pointwise(2 * latent, "quant_conv"))
                .transpose()?,
            post_quant_conv: cfg
                .use_post_quant_conv
                .then(|| pointwise(latent, "post_quant_conv"))
                .transpose()?,
            decoder,
        })
    }

    /// The posterior's mean and standard deviation for an image `[1, 3, h,
    /// w]` in [-1, 1] (the log-variance clamped to [-30, 20] as diffusers
    /// does).
    pub fn encode(&self, images: &Tensor) -> Result<(Tensor, Tensor)> {
        let mut moments = match &self.encoder {
            Half::Cpu(encoder) => encoder.forward(images)?,
            Half::Candle(encoder) => encoder.forward(images)?,
        };
        if let Some(conv) = &self.quant_conv {
            moments = conv.forward(&moments)?;
        }
        let half = moments.dim(1)? / 2;
        let mean = moments.narrow(1, 0, half)?;
        let log_variance = moments.narrow(1, half, half)?.clamp(-30f32, 20f32)?;
        let std = (log_variance * 0.5)?.exp()?;
        Ok((mean, std))
    }

    /// An image `[1, 3, h, w]` (about [-1, 1], unclamped) from latents
    /// already divided by the scaling factor.
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        let xs = match &self.post_quant_conv {
            Some(conv) => conv.forward(latents)?,
            None => latents.clone(),
        };
        match &self.decoder {
            Half::Cpu(decoder) => decoder.forward(&xs),
            Half::Candle(decoder) => decoder.forward(&xs),
        }
    }
}
