//! The Stable Diffusion autoencoder (`AutoencoderKL`), assembled from
//! candle's encoder and decoder blocks so that the posterior's mean and
//! variance are at hand: image-to-image samples the posterior with its own
//! seeded noise, as diffusers does with its generator.

use super::config::VaeConfig;
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
    encoder_in: Conv2d,
    encoder_blocks: Vec<DownEncoderBlock2D>,
    encoder_mid: UNetMidBlock2D,
    encoder_norm: GroupNorm,
    encoder_out: Conv2d,
    quant_conv: Option<Conv2d>,
    post_quant_conv: Option<Conv2d>,
    decoder_in: Conv2d,
    decoder_mid: UNetMidBlock2D,
    decoder_blocks: Vec<UpDecoderBlock2D>,
    decoder_norm: GroupNorm,
    decoder_out: Conv2d,
}

impl Autoencoder {
    /// Build from a checked config and the weights of `vae/`.
    pub fn load(cfg: &VaeConfig, vb: VarBuilder) -> Result<Self> {
        let channels = &cfg.block_out_channels;
        let (first, last) = match (channels.first(), channels.last()) {
            (Some(&first), Some(&last)) => (first, last),
            _ => candle_core::bail!("the autoencoder has no blocks"),
        };
        let groups = cfg.norm_num_groups;
        let latent = cfg.latent_channels;
        let encoder = vb.pp("encoder");
        let mut encoder_blocks = Vec::with_capacity(channels.len());
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
            encoder_blocks.push(DownEncoderBlock2D::new(
                encoder.pp("down_blocks").pp(i),
                inputs,
                out,
                block_cfg,
            )?);
        }
        let decoder = vb.pp("decoder");
        let reversed: Vec<usize> = channels.iter().rev().copied().collect();
        let mut decoder_blocks = Vec::with_capacity(channels.len());
        for (i, &out) in reversed.iter().enumerate() {
            let block_cfg = UpDecoderBlock2DConfig {
                num_layers: cfg.layers_per_block + 1,
                resnet_eps: EPS,
                resnet_groups: groups,
                add_upsample: i + 1 < channels.len(),
                ..Default::default()
            };
            let inputs = if i == 0 { last } else { reversed[i - 1] };
            decoder_blocks.push(UpDecoderBlock2D::new(
                decoder.pp("up_blocks").pp(i),
                inputs,
                out,
                block_cfg,
            )?);
        }
        let pointwise = |channels: usize, name: &str| {
            conv2d(channels, channels, 1, Conv2dConfig::default(), vb.pp(name))
        };
        Ok(Self {
            encoder_in: same_conv(cfg.in_channels, first, encoder.pp("conv_in"))?,
            encoder_blocks,
            encoder_mid: mid_block(last, groups, encoder.pp("mid_block"))?,
            encoder_norm: group_norm(groups, last, EPS, encoder.pp("conv_norm_out"))?,
            encoder_out: same_conv(last, 2 * latent, encoder.pp("conv_out"))?,
            quant_conv: cfg
                .use_quant_conv
                .then(|| pointwise(2 * latent, "quant_conv"))
                .transpose()?,
            post_quant_conv: cfg
                .use_post_quant_conv
                .then(|| pointwise(latent, "post_quant_conv"))
                .transpose()?,
            decoder_in: same_conv(latent, last, decoder.pp("conv_in"))?,
            decoder_mid: mid_block(last, groups, decoder.pp("mid_block"))?,
            decoder_blocks,
            decoder_norm: group_norm(groups, first, EPS, decoder.pp("conv_norm_out"))?,
            decoder_out: same_conv(first, cfg.out_channels, decoder.pp("conv_out"))?,
        })
    }

    /// The posterior's mean and standard deviation for images `[batch, 3,
    /// h, w]` in [-1, 1] (the log-variance clamped to [-30, 20] as diffusers
    /// does).
    pub fn encode(&self, images: &Tensor) -> Result<(Tensor, Tensor)> {
        let mut xs = self.encoder_in.forward(images)?;
        for block in &self.encoder_blocks {
            xs = block.forward(&xs)?;
        }
        let xs = self.encoder_mid.forward(&xs, None)?;
        let xs = candle_nn::ops::silu(&self.encoder_norm.forward(&xs)?)?;
        let mut moments = self.encoder_out.forward(&xs)?;
        if let Some(conv) = &self.quant_conv {
            moments = conv.forward(&moments)?;
        }
        let half = moments.dim(1)? / 2;
        let mean = moments.narrow(1, 0, half)?;
        let log_variance = moments.narrow(1, half, half)?.clamp(-30f32, 20f32)?;
        let std = (log_variance * 0.5)?.exp()?;
        Ok((mean, std))
    }

    /// Images `[batch, 3, h, w]` (about [-1, 1], unclamped) from latents
    /// already divided by the scaling factor.
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        let mut xs = match &self.post_quant_conv {
            Some(conv) => conv.forward(latents)?,
            None => latents.clone(),
        };
        xs = self.decoder_in.forward(&xs)?;
        xs = self.decoder_mid.forward(&xs, None)?;
        for block in &self.decoder_blocks {
            xs = block.forward(&xs)?;
        }
        let xs = candle_nn::ops::silu(&self.decoder_norm.forward(&xs)?)?;
        self.decoder_out.forward(&xs)
    }
}
