//! The UNet's blocks on hgpt's CPU kernels, one batch row at a time on
//! channels-last maps ([`Rows`]): Winograd 3x3 convolutions, group norms
//! fused with their SiLU, the timestep's embedding added per channel, and
//! transformer blocks on the fused linear layers, self-attention in query
//! blocks ([`attention_cpu`], a head at a time, so no whole score matrix
//! is held) and GEGLU with the exact GELU, as diffusers computes it.
//! [`super::unet`] keeps candle's blocks for other devices.

use super::blocks::{Resnet, dense, linear, same_conv};
use crate::kernels::{Dense, Epilogue, attention_cpu, gelu_in_place};
use crate::vision::attention::{attend, merge_heads, split_heads};
use crate::vision::conv::{Conv, GroupNorm, Interpolation, Rows, resize};
use candle_core::{Result, Tensor};
use candle_nn::{LayerNorm, Module, VarBuilder};
use candle_transformers::models::stable_diffusion::unet_2d::UNet2DConditionModelConfig;
use rayon::prelude::*;

/// The transformers' group norm epsilon (`Transformer2DModel`'s).
const TRANSFORMER_NORM_EPS: f64 = 1e-6;
/// The transformer blocks' layer norm epsilon.
const LAYER_NORM_EPS: f64 = 1e-5;

/// `BasicTransformerBlock`: self-attention, cross-attention to the text,
/// GEGLU feed-forward, each after a layer norm and added back.
struct TransformerBlock {
    norm1: LayerNorm,
    /// Queries (scaled by `1 / sqrt(head_dim)`), keys and values.
    qkv: Dense,
    self_out: Dense,
    norm2: LayerNorm,
    /// Queries, scaled.
    cross_q: Dense,
    /// Keys and values of the text.
    cross_kv: Dense,
    cross_out: Dense,
    norm3: LayerNorm,
    ff_in: Dense,
    ff_out: Dense,
    heads: usize,
}

impl TransformerBlock {
    fn load(vb: VarBuilder, width: usize, heads: usize, context: usize) -> Result<Self> {
        let scale = 1.0 / ((width / heads) as f64).sqrt();
        let norm = |name: &str| candle_nn::layer_norm(width, LAYER_NORM_EPS, vb.pp(name));
        let attn1 = vb.pp("attn1");
        let attn2 = vb.pp("attn2");
        let qkv = Tensor::cat(
            &[
                (linear(attn1.pp("to_q"), width, width, false)?.0 * scale)?,
                linear(attn1.pp("to_k"), width, width, false)?.0,
                linear(attn1.pp("to_v"), width, width, false)?.0,
            ],
            0,
        )?;
        let cross_q = (linear(attn2.pp("to_q"), width, width, false)?.0 * scale)?;
        let cross_kv = Tensor::cat(
            &[
                linear(attn2.pp("to_k"), context, width, false)?.0,
                linear(attn2.pp("to_v"), context, width, false)?.0,
            ],
            0,
        )?;
        let inner = 4 * width;
        Ok(Self {
            norm1: norm("norm1")?,
            qkv: Dense::new(qkv, None)?,
            self_out: dense(attn1.pp("to_out.0"), width, width, true)?,
            norm2: norm("norm2")?,
            cross_q: Dense::new(cross_q, None)?,
            cross_kv: Dense::new(cross_kv, None)?,
            cross_out: dense(attn2.pp("to_out.0"), width, width, true)?,
            norm3: norm("norm3")?,
            ff_in: dense(vb.pp("ff.net.0.proj"), width, 2 * inner, true)?,
            ff_out: dense(vb.pp("ff.net.2"), inner, width, true)?,
            heads,
        })
    }

    /// `x` `[tokens, width]`, `context` `[text tokens, context width]`.
    fn forward(&self, x: &Tensor, context: &Tensor) -> Result<Tensor> {
        let tokens = x.dim(0)?;
        let qkv = self.qkv.forward(&self.norm1.forward(x)?, Epilogue::Bias)?;
        let attended = attention_cpu(&qkv, &[tokens], self.heads, false)?;
        let x = self.self_out.forward(&attended, Epilogue::Residual(x))?;

        let q = self
            .cross_q
            .forward(&self.norm2.forward(&x)?, Epilogue::Bias)?;
        let kv = self.cross_kv.forward(context, Epilogue::Bias)?;
        let width = q.dim(1)?;
        let heads = |t: &Tensor| split_heads(&t.unsqueeze(0)?, self.heads);
        let attended = attend(
            &heads(&q)?,
            &heads(&kv.narrow(1, 0, width)?)?,
            &heads(&kv.narrow(1, width, width)?)?,
            1.0,
            None,
        )?;
        let attended = merge_heads(&attended)?.squeeze(0)?;
        let x = self.cross_out.forward(&attended, Epilogue::Residual(&x))?;

        let projected = self
            .ff_in
            .forward(&self.norm3.forward(&x)?, Epilogue::Bias)?;
        self.ff_out
            .forward(&geglu(&projected)?, Epilogue::Residual(&x))
    }
}

/// GEGLU: of each row's `[hidden, gate]` halves, `hidden * gelu(gate)`
/// (the exact, erf GELU).
fn geglu(projected: &Tensor) -> Result<Tensor> {
    let (rows, width) = projected.dims2()?;
    let half = width / 2;
    let values = projected.flatten_all()?.to_vec1::<f32>()?;
    let mut out = vec![0f32; rows * half];
    out.par_chunks_mut(half.max(1))
        .zip(values.par_chunks(width.max(1)))
        .for_each_init(Vec::new, |gate: &mut Vec<f32>, (out, row)| {
            gate.clear();
            gate.extend_from_slice(&row[half..]);
            gelu_in_place(gate);
            for ((o, h), g) in out.iter_mut().zip(&row[..half]).zip(gate.iter()) {
                *o = h * g;
            }
        });
    Tensor::from_vec(out, (rows, half), projected.device())
}

/// `Transformer2DModel`: group norm, projection in, transformer blocks,
/// projection out, added back.
struct Transformer {
    norm: GroupNorm,
    proj_in: Dense,
    blocks: Vec<TransformerBlock>,
    proj_out: Dense,
}

impl Transformer {
    fn load(
        vb: VarBuilder,
        channels: usize,
        heads: usize,
        depth: usize,
        config: &UNet2DConditionModelConfig,
    ) -> Result<Self> {
        let blocks = (0..depth)
            .map(|i| {
                TransformerBlock::load(
                    vb.pp("transformer_blocks").pp(i),
                    channels,
                    heads,
                    config.cross_attention_dim,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            norm: GroupNorm::load(vb.pp("norm"), channels, config.norm_num_groups)?
                .with_eps(TRANSFORMER_NORM_EPS),
            proj_in: dense(vb.pp("proj_in"), channels, channels, true)?,
            blocks,
            proj_out: dense(vb.pp("proj_out"), channels, channels, true)?,
        })
    }

    fn forward(&self, x: &Rows, context: &Tensor) -> Result<Rows> {
        let normed = self.norm.forward(x, false, None)?;
        let mut h = self.proj_in.forward(&normed.pixels, Epilogue::Bias)?;
        for block in &self.blocks {
            h = block.forward(&h, context)?;
        }
        Ok(Rows {
            pixels: self.proj_out.forward(&h, Epilogue::Residual(&x.pixels))?,
            size: x.size,
        })
    }
}

/// A down or up block: ResNet blocks, each followed by a transformer in a
/// cross-attention block, then a down- or upsampling convolution.
struct Block {
    resnets: Vec<Resnet>,
    attentions: Vec<Transformer>,
    sampler: Option<Conv>,
}

impl Block {
    /// ResNet `i` and its transformer, if any.
    fn layer(&self, i: usize, x: &Rows, emb: &Tensor, context: &Tensor) -> Result<Rows> {
        let x = self.resnets[i].forward(x, Some(emb))?;
        match self.attentions.get(i) {
            Some(attention) => attention.forward(&x, context),
            None => Ok(x),
        }
    }
}

/// The UNet's body, from `conv_in` to `conv_out`.
pub(super) struct CpuUnet {
    conv_in: Conv,
    down: Vec<Block>,
    mid: (Resnet, Transformer, Resnet),
    up: Vec<Block>,
    norm_out: GroupNorm,
    conv_out: Conv,
}

impl CpuUnet {
    /// The weights of `unet/` for a checked config.
    pub(super) fn load(
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
        let layers = config.layers_per_block;
        let transformers = |vb: VarBuilder, count: usize, i: usize| -> Result<Vec<Transformer>> {
            let block = &blocks[i];
            match block.use_cross_attn {
                Some(depth) => (0..count)
                    .map(|j| {
                        Transformer::load(
                            vb.pp("attentions").pp(j),
                            block.out_channels,
                            block.attention_head_dim,
                            depth,
                            config,
                        )
                    })
                    .collect(),
                None => Ok(Vec::new()),
            }
        };

        let mut down = Vec::with_capacity(n);
        for (i, block) in blocks.iter().enumerate() {
            let vb = vb.pp("down_blocks").pp(i);
            let inputs = if i == 0 {
                base
            } else {
                blocks[i - 1].out_channels
            };
            let out = block.out_channels;
            let resnets = (0..layers)
                .map(|j| {
                    let from = if j == 0 { inputs } else { out };
                    Resnet::load(
                        vb.pp("resnets").pp(j),
                        (from, out),
                        (config.norm_num_groups, config.norm_eps),
                        Some(time_dim),
                        1.0,
                    )
                })
                .collect::<Result<Vec<_>>>()?;
            let sampler = (i + 1 < n)
                .then(|| {
                    Conv::load(
                        vb.pp("downsamplers.0.conv"),
                        (out, out),
                        3,
                        (2, config.downsample_padding),
                        true,
                    )
                })
                .transpose()?;
            down.push(Block {
                resnets,
                attentions: transformers(vb.clone(), layers, i)?,
                sampler,
            });
        }

        let mid_vb = vb.pp("mid_block");
        let width = last.out_channels;
        let scale = config.mid_block_scale_factor;
        let mid = (
            Resnet::load(
                mid_vb.pp("resnets.0"),
                (width, width),
                (config.norm_num_groups, config.norm_eps),
                Some(time_dim),
                scale,
            )?,
            Transformer::load(
                mid_vb.pp("attentions.0"),
                width,
                last.attention_head_dim,
                last.use_cross_attn.unwrap_or(1),
                config,
            )?,
            Resnet::load(
                mid_vb.pp("resnets.1"),
                (width, width),
                (config.norm_num_groups, config.norm_eps),
                Some(time_dim),
                scale,
            )?,
        );

        let mut up = Vec::with_capacity(n);
        for i in 0..n {
            let vb = vb.pp("up_blocks").pp(i);
            let level = n - 1 - i;
            let out = blocks[level].out_channels;
            let prev = if i == 0 {
                width
            } else {
                blocks[level + 1].out_channels
            };
            let skip_in = blocks[level.saturating_sub(1)].out_channels;
            let resnets = (0..=layers)
                .map(|j| {
                    let skip = if j == layers { skip_in } else { out };
                    let from = if j == 0 { prev } else { out };
                    Resnet::load(
                        vb.pp("resnets").pp(j),
                        (from + skip, out),
                        (config.norm_num_groups, config.norm_eps),
                        Some(time_dim),
                        1.0,
                    )
                })
                .collect::<Result<Vec<_>>>()?;
            let sampler = (i + 1 < n)
                .then(|| same_conv(vb.pp("upsamplers.0.conv"), out, out))
                .transpose()?;
            up.push(Block {
                resnets,
                attentions: transformers(vb.clone(), layers + 1, level)?,
                sampler,
            });
        }

        Ok(Self {
            conv_in: same_conv(vb.pp("conv_in"), in_channels, base)?,
            down,
            mid,
            up,
            norm_out: GroupNorm::load(vb.pp("conv_norm_out"), base, config.norm_num_groups)?
                .with_eps(config.norm_eps),
            conv_out: same_conv(vb.pp("conv_out"), base, out_channels)?,
        })
    }

    /// The output `[batch, out, h, w]` for latents `[batch, in, h, w]`,
    /// each row with its embedding (`emb` `[batch, time_dim]`) and text
    /// (`context` `[batch, tokens, width]`).
    pub(super) fn forward(&self, xs: &Tensor, emb: &Tensor, context: &Tensor) -> Result<Tensor> {
        let batch = xs.dim(0)?;
        let rows = (0..batch)
            .map(|b| {
                let emb = candle_nn::ops::silu(&emb.narrow(0, b, 1)?)?;
                self.forward_row(&xs.get(b)?, &emb, &context.get(b)?)
            })
            .collect::<Result<Vec<_>>>()?;
        Tensor::stack(&rows, 0)
    }

    /// One row: latents `[c, h, w]`.
    fn forward_row(&self, latents: &Tensor, emb: &Tensor, context: &Tensor) -> Result<Tensor> {
        let (channels, h, w) = latents.dims3()?;
        let x = Rows {
            pixels: latents.reshape((channels, h * w))?.t()?.contiguous()?,
            size: (h, w),
        };
        let mut x = self.conv_in.forward(&x, Epilogue::Bias)?;
        let mut skips = vec![x.clone()];
        for block in &self.down {
            for i in 0..block.resnets.len() {
                x = block.layer(i, &x, emb, context)?;
                skips.push(x.clone());
            }
            if let Some(conv) = &block.sampler {
                x = conv.forward(&x, Epilogue::Bias)?;
                skips.push(x.clone());
            }
        }
        x = self.mid.0.forward(&x, Some(emb))?;
        x = self.mid.1.forward(&x, context)?;
        x = self.mid.2.forward(&x, Some(emb))?;
        for block in &self.up {
            for i in 0..block.resnets.len() {
                let skip = skips
                    .pop()
                    .ok_or_else(|| candle_core::Error::Msg("the UNet ran out of skips".into()))?;
                let joined = Rows {
                    pixels: Tensor::cat(&[&x.pixels, &skip.pixels], 1)?,
                    size: x.size,
                };
                x = block.layer(i, &joined, emb, context)?;
            }
            if let Some(conv) = &block.sampler {
                // Twice the size, or the next skip's when a side did not
                // halve evenly on the way down.
                let (h, w) = x.size;
                let to = skips.last().map_or((2 * h, 2 * w), |s| s.size);
                x = conv.forward(&resize(&x, to, Interpolation::Nearest)?, Epilogue::Bias)?;
            }
        }
        let x = self
            .conv_out
            .forward(&self.norm_out.forward_silu(&x)?, Epilogue::Bias)?;
        let (h, w) = x.size;
        x.pixels.t()?.reshape((x.channels()?, h, w))
    }
}
