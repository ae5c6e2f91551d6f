//! The denoising network (diffusers' `UNet2DConditionModel`), with SDXL's
//! `text_time` conditioning, which candle's own UNet leaves out: the pooled
//! text embedding and the size ids, embedded and added to the timestep's
//! embedding before the blocks read it. On the CPU the blocks run on hgpt's
//! kernels ([`super::unet_cpu`]); elsewhere candle's down, mid and up
//! blocks are assembled as the repository's config lays them out.

use super::config::TextTime;
use super::unet_cpu::CpuUnet;
use candle_core::{Result, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, GroupNorm, Module, VarBuilder};
use candle_transformers::models::stable_diffusion::embeddings::{TimestepEmbedding, Timesteps};
use candle_transformers::models::stable_diffusion::unet_2d::UNet2DConditionModelConfig;
use candle_transformers::models::stable_diffusion::unet_2d_blocks::{
    CrossAttnDownBlock2D, CrossAttnDownBlock2DConfig, CrossAttnUpBlock2D, CrossAttnUpBlock2DConfig,
    DownBlock2D, DownBlock2DConfig, UNetMidBlock2DCrossAttn, UNetMidBlock2DCrossAttnConfig,
    UpBlock2D, UpBlock2DConfig,
};

/// SDXL's extra conditioning for one batch: `text_embeds` `[batch, width]`
/// (the second text encoder's projected pooled output) and `time_ids`
/// `[batch, ids]` (original size, crop corner, target size).
#[derive(Debug, Clone, Copy)]
pub struct AddedConditioning<'a> {
    /// Pooled, projected text embeddings.
    pub text_embeds: &'a Tensor,
    /// Size and crop ids.
    pub time_ids: &'a Tensor,
}

/// `add_time_proj` and `add_embedding`.
#[derive(Debug)]
struct TextTimeEmbedding {
    time_proj: Timesteps,
    embedding: TimestepEmbedding,
}

#[derive(Debug)]
enum DownBlock {
    Plain(DownBlock2D),
    CrossAttn(CrossAttnDownBlock2D),
}

#[derive(Debug)]
enum UpBlock {
    Plain(UpBlock2D),
    CrossAttn(CrossAttnUpBlock2D),
}

impl UpBlock {
    fn resnets(&self) -> usize {
        match self {
            Self::Plain(b) => b.resnets.len(),
            Self::CrossAttn(b) => b.upblock.resnets.len(),
        }
    }
}

/// A UNet, loaded.
pub struct Unet {
    time_proj: Timesteps,
    time_embedding: TimestepEmbedding,
    text_time: Option<TextTimeEmbedding>,
    body: Body,
    center_input_sample: bool,
}

impl std::fmt::Debug for Unet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let body = match &self.body {
            Body::Cpu(_) => "cpu",
            Body::Candle(_) => "candle",
        };
        f.debug_struct("Unet")
            .field("body", &body)
            .field("text_time", &self.text_time.is_some())
            .finish_non_exhaustive()
    }
}

/// The blocks from `conv_in` to `conv_out`.
enum Body {
    Cpu(Box<CpuUnet>),
    Candle(Box<CandleUnet>),
}

/// The body of candle's blocks.
struct CandleUnet {
    conv_in: Conv2d,
    down_blocks: Vec<DownBlock>,
    mid_block: UNetMidBlock2DCrossAttn,
    up_blocks: Vec<UpBlock>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Unet {
    /// Build from weights (the `unet/` folder's) and a checked config
    /// (see [`super::config::UnetConfig`]).
    pub fn new(
        vb: VarBuilder,
        in_channels: usize,
        out_channels: usize,
        config: &UNet2DConditionModelConfig,
        text_time: Option<TextTime>,
    ) -> Result<Self> {
        let Some(first) = config.blocks.first() else {
            candle_core::bail!("the UNet has no blocks");
        };
        let base = first.out_channels;
        let time_dim = base * 4;
        let time_proj = Timesteps::new(base, config.flip_sin_to_cos, config.freq_shift);
        let time_embedding = TimestepEmbedding::new(vb.pp("time_embedding"), base, time_dim)?;
        let text_time = match text_time {
            Some(t) => Some(TextTimeEmbedding {
                time_proj: Timesteps::new(
                    t.time_embed_dim,
                    config.flip_sin_to_cos,
                    config.freq_shift,
                ),
                embedding: TimestepEmbedding::new(vb.pp("add_embedding"), t.input_dim, time_dim)?,
            }),
            None => None,
        };
        let channels = (in_channels, out_channels);
        let body = if vb.device().is_cpu() {
            Body::Cpu(Box::new(CpuUnet::load(vb, channels, config)?))
        } else {
            Body::Candle(Box::new(CandleUnet::load(vb, channels, config)?))
        };
        Ok(Self {
            time_proj,
            time_embedding,
            text_time,
            body,
            center_input_sample: config.center_input_sample,
        })
    }

    /// The predicted noise (or velocity) for latents `[batch, c, h, w]` at
    /// `timestep`, attending to `context` `[batch, tokens, width]`;
    /// `added` is required exactly when the UNet was built with
    /// [`TextTime`] conditioning.
    pub fn forward(
        &self,
        xs: &Tensor,
        timestep: f64,
        context: &Tensor,
        added: Option<AddedConditioning>,
    ) -> Result<Tensor> {
        let batch = xs.dim(0)?;
        let device = xs.device();
        let xs = if self.center_input_sample {
            ((xs * 2.0)? - 1.0)?
        } else {
            xs.clone()
        };
        let timesteps = (Tensor::ones(batch, xs.dtype(), device)? * timestep)?;
        let mut emb = self
            .time_embedding
            .forward(&self.time_proj.forward(&timesteps)?)?;
        match (&self.text_time, added) {
            (Some(text_time), Some(added)) => {
                let ids = added.time_ids.flatten_all()?;
                let time_embeds = text_time
                    .time_proj
                    .forward(&ids)?
                    .reshape((added.text_embeds.dim(0)?, ()))?;
                let input = Tensor::cat(&[added.text_embeds, &time_embeds], 1)?;
                emb = (emb + text_time.embedding.forward(&input)?)?;
            }
            (None, None) => {}
            (Some(_), None) => candle_core::bail!("this UNet needs text embeds and time ids"),
            (None, Some(_)) => candle_core::bail!("this UNet takes no text embeds or time ids"),
        }

        match &self.body {
            Body::Cpu(body) => body.forward(&xs, &emb, context),
            Body::Candle(body) => body.forward(&xs, &emb, context),
        }
    }
}

impl CandleUnet {
    fn load(
        vb: VarBuilder,
        (in_channels, out_channels): (usize, usize),
        config: &UNet2DConditionModelConfig,
    ) -> Result<Self> {
        let blocks = &config.blocks;
        let (Some(first), Some(last)) = (blocks.first(), blocks.last()) else {
            candle_core::bail!("the UNet has no blocks");
        };
        let n = blocks.len();
        let base = first.out_channels;
        let time_dim = base * 4;
        let padded = Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let conv_in = candle_nn::conv2d(in_channels, base, 3, padded, vb.pp("conv_in"))?;
        let down_vb = vb.pp("down_blocks");
        let mut down_blocks = Vec::with_capacity(n);
        for (i, block) in blocks.iter().enumerate() {
            let in_ch = if i == 0 {
                base
            } else {
                blocks[i - 1].out_channels
            };
            let plain = DownBlock2DConfig {
                num_layers: config.layers_per_block,
                resnet_eps: config.norm_eps,
                resnet_groups: config.norm_num_groups,
                add_downsample: i + 1 < n,
                downsample_padding: config.downsample_padding,
                ..Default::default()
            };
            let vb = down_vb.pp(i.to_string());
            down_blocks.push(match block.use_cross_attn {
                Some(depth) => DownBlock::CrossAttn(CrossAttnDownBlock2D::new(
                    vb,
                    in_ch,
                    block.out_channels,
                    Some(time_dim),
                    false,
                    CrossAttnDownBlock2DConfig {
                        downblock: plain,
                        attn_num_head_channels: block.attention_head_dim,
                        cross_attention_dim: config.cross_attention_dim,
                        sliced_attention_size: None,
                        use_linear_projection: config.use_linear_projection,
                        transformer_layers_per_block: depth,
                    },
                )?),
                None => DownBlock::Plain(DownBlock2D::new(
                    vb,
                    in_ch,
                    block.out_channels,
                    Some(time_dim),
                    plain,
                )?),
            });
        }

        // diffusers: the mid block has the last block's heads and depth.
        let mid_block = UNetMidBlock2DCrossAttn::new(
            vb.pp("mid_block"),
            last.out_channels,
            Some(time_dim),
            false,
            UNetMidBlock2DCrossAttnConfig {
                resnet_eps: config.norm_eps,
                output_scale_factor: config.mid_block_scale_factor,
                cross_attn_dim: config.cross_attention_dim,
                attn_num_head_channels: last.attention_head_dim,
                resnet_groups: Some(config.norm_num_groups),
                use_linear_projection: config.use_linear_projection,
                transformer_layers_per_block: last.use_cross_attn.unwrap_or(1),
                ..Default::default()
            },
        )?;

        let up_vb = vb.pp("up_blocks");
        let mut up_blocks = Vec::with_capacity(n);
        for i in 0..n {
            let block = &blocks[n - 1 - i];
            let prev_out = if i == 0 {
                last.out_channels
            } else {
                blocks[n - i].out_channels
            };
            let in_ch = blocks[(n - 1 - i).saturating_sub(1)].out_channels;
            let plain = UpBlock2DConfig {
                num_layers: config.layers_per_block + 1,
                resnet_eps: config.norm_eps,
                resnet_groups: config.norm_num_groups,
                add_upsample: i + 1 < n,
                ..Default::default()
            };
            let vb = up_vb.pp(i.to_string());
            up_blocks.push(match block.use_cross_attn {
                Some(depth) => UpBlock::CrossAttn(CrossAttnUpBlock2D::new(
                    vb,
                    in_ch,
                    prev_out,
                    block.out_channels,
                    Some(time_dim),
                    false,
                    CrossAttnUpBlock2DConfig {
                        upblock: plain,
                        attn_num_head_channels: block.attention_head_dim,
                        cross_attention_dim: config.cross_attention_dim,
                        sliced_attention_size: None,
                        use_linear_projection: config.use_linear_projection,
                        transformer_layers_per_block: depth,
                    },
                )?),
                None => UpBlock::Plain(UpBlock2D::new(
                    vb,
                    in_ch,
                    prev_out,
                    block.out_channels,
                    Some(time_dim),
                    plain,
                )?),
            });
        }

        let conv_norm_out = candle_nn::group_norm(
            config.norm_num_groups,
            base,
            config.norm_eps,
            vb.pp("conv_norm_out"),
        )?;
        let conv_out = candle_nn::conv2d(base, out_channels, 3, padded, vb.pp("conv_out"))?;
        Ok(Self {
            conv_in,
            down_blocks,
            mid_block,
            up_blocks,
            conv_norm_out,
            conv_out,
        })
    }

    fn forward(&self, xs: &Tensor, emb: &Tensor, context: &Tensor) -> Result<Tensor> {
        let (_, _, height, width) = xs.dims4()?;
        let xs = self.conv_in.forward(xs)?;
        let mut residuals = vec![xs.clone()];
        let mut xs = xs;
        for block in &self.down_blocks {
            let (out, states) = match block {
                DownBlock::Plain(b) => b.forward(&xs, Some(emb))?,
                DownBlock::CrossAttn(b) => b.forward(&xs, Some(emb), Some(context))?,
            };
            residuals.extend(states);
            xs = out;
        }
        let mut xs = self.mid_block.forward(&xs, Some(emb), Some(context))?;

        // Sides that do not halve evenly down the blocks are upsampled to
        // the residuals' own sizes.
        let factor = 1usize << (self.up_blocks.len().saturating_sub(1));
        let uneven = !height.is_multiple_of(factor) || !width.is_multiple_of(factor);
        let last = self.up_blocks.len().saturating_sub(1);
        for (i, block) in self.up_blocks.iter().enumerate() {
            let count = block.resnets();
            if count > residuals.len() {
                candle_core::bail!("the UNet's up blocks take more residuals than it made");
            }
            let skip = residuals.split_off(residuals.len() - count);
            let upsample_size = match residuals.last() {
                Some(next) if i < last && uneven => {
                    let (_, _, h, w) = next.dims4()?;
                    Some((h, w))
                }
                _ => None,
            };
            xs = match block {
                UpBlock::Plain(b) => b.forward(&xs, &skip, Some(emb), upsample_size)?,
                UpBlock::CrossAttn(b) => {
                    b.forward(&xs, &skip, Some(emb), upsample_size, Some(context))?
                }
            };
        }
        let xs = candle_nn::ops::silu(&self.conv_norm_out.forward(&xs)?)?;
        self.conv_out.forward(&xs)
    }
}
