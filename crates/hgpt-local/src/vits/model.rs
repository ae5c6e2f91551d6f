//! `VitsModel` at inference, as transformers 4.57 runs it for one text: the
//! text encoder (post-norm transformer layers with windowed relative-position
//! attention and convolutional feed-forward layers, projected to the prior's
//! means and log-variances), the duration predictor (stochastic, its flows
//! run in reverse from noise, or plain), length regulation (durations rounded
//! up, each frame taking its token's prior), the residual coupling flows in
//! reverse (WaveNet layers) and the HiFi-GAN decoder.
//!
//! With one unpadded text every padding mask VitsModel multiplies by is all
//! ones, so none is applied here.

use super::layers::{Conv1d, ConvTranspose1d, DepthwiseConv1d, LayerNorm, Seq, values};
use crate::kernels::{Dense, Epilogue, activation_epilogue, gelu_in_place, softmax_in_place};
use candle_core::{Result, bail};
use candle_nn::{Activation, VarBuilder};
use rayon::prelude::*;
use serde::Deserialize;

/// Widest relative-attention window read from a config.
const MAX_WINDOW: usize = 1024;
/// Most upsampling stages of the decoder read from a config.
const MAX_UPSAMPLINGS: usize = 16;
/// Most output samples per spectrogram frame (mms-tts has 256).
const MAX_HOP: usize = 4096;

/// Smallest bin width, height and derivative of the rational-quadratic
/// splines.
const MIN_BIN: f32 = 1e-3;
/// PyTorch's `nn.LayerNorm` default epsilon (the depthwise-separable blocks
/// use it whatever the config says).
const DEFAULT_NORM_EPS: f64 = 1e-5;

/// `config.json` of a `VitsModel`, with `VitsConfig`'s defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub(crate) struct VitsConfig {
    pub(crate) vocab_size: usize,
    pub(crate) hidden_size: usize,
    pub(crate) num_hidden_layers: usize,
    pub(crate) num_attention_heads: usize,
    pub(crate) window_size: Option<usize>,
    pub(crate) use_bias: bool,
    pub(crate) ffn_dim: usize,
    pub(crate) ffn_kernel_size: usize,
    pub(crate) flow_size: usize,
    pub(crate) hidden_act: Activation,
    pub(crate) layer_norm_eps: f64,
    pub(crate) use_stochastic_duration_prediction: bool,
    pub(crate) num_speakers: usize,
    pub(crate) speaker_embedding_size: usize,
    pub(crate) upsample_initial_channel: usize,
    pub(crate) upsample_rates: Vec<usize>,
    pub(crate) upsample_kernel_sizes: Vec<usize>,
    pub(crate) resblock_kernel_sizes: Vec<usize>,
    pub(crate) resblock_dilation_sizes: Vec<Vec<usize>>,
    pub(crate) leaky_relu_slope: f32,
    pub(crate) depth_separable_channels: usize,
    pub(crate) depth_separable_num_layers: usize,
    pub(crate) duration_predictor_flow_bins: usize,
    pub(crate) duration_predictor_tail_bound: f32,
    pub(crate) duration_predictor_kernel_size: usize,
    pub(crate) duration_predictor_num_flows: usize,
    pub(crate) duration_predictor_filter_channels: usize,
    pub(crate) prior_encoder_num_flows: usize,
    pub(crate) prior_encoder_num_wavenet_layers: usize,
    pub(crate) wavenet_kernel_size: usize,
    pub(crate) wavenet_dilation_rate: usize,
    pub(crate) speaking_rate: f64,
    pub(crate) noise_scale: f64,
    pub(crate) noise_scale_duration: f64,
    pub(crate) sampling_rate: u32,
}

impl Default for VitsConfig {
    fn default() -> Self {
        Self {
            vocab_size: 38,
            hidden_size: 192,
            num_hidden_layers: 6,
            num_attention_heads: 2,
            window_size: Some(4),
            use_bias: true,
            ffn_dim: 768,
            ffn_kernel_size: 3,
            flow_size: 192,
            hidden_act: Activation::Relu,
            layer_norm_eps: 1e-5,
            use_stochastic_duration_prediction: true,
            num_speakers: 1,
            speaker_embedding_size: 0,
            upsample_initial_channel: 512,
            upsample_rates: vec![8, 8, 2, 2],
            upsample_kernel_sizes: vec![16, 16, 4, 4],
            resblock_kernel_sizes: vec![3, 7, 11],
            resblock_dilation_sizes: vec![vec![1, 3, 5]; 3],
            leaky_relu_slope: 0.1,
            depth_separable_channels: 2,
            depth_separable_num_layers: 3,
            duration_predictor_flow_bins: 10,
            duration_predictor_tail_bound: 5.0,
            duration_predictor_kernel_size: 3,
            duration_predictor_num_flows: 4,
            duration_predictor_filter_channels: 256,
            prior_encoder_num_flows: 4,
            prior_encoder_num_wavenet_layers: 4,
            wavenet_kernel_size: 5,
            wavenet_dilation_rate: 1,
            speaking_rate: 1.0,
            noise_scale: 0.667,
            noise_scale_duration: 0.8,
            sampling_rate: 16_000,
        }
    }
}

impl VitsConfig {
    /// Sizes that would make shapes inconsistent, named.
    pub(crate) fn check(&self) -> std::result::Result<(), String> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_attention_heads", self.num_attention_heads),
            ("ffn_dim", self.ffn_dim),
            ("ffn_kernel_size", self.ffn_kernel_size),
            ("upsample_initial_channel", self.upsample_initial_channel),
            (
                "duration_predictor_flow_bins",
                self.duration_predictor_flow_bins,
            ),
            (
                "duration_predictor_filter_channels",
                self.duration_predictor_filter_channels,
            ),
            ("wavenet_dilation_rate", self.wavenet_dilation_rate),
            ("sampling_rate", self.sampling_rate as usize),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(format!("{name} must be positive"));
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(format!(
                "hidden_size {} is not a multiple of {} heads",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if self.window_size.is_some_and(|w| w == 0 || w > MAX_WINDOW) {
            return Err(format!(
                "window_size must be between 1 and {MAX_WINDOW} (or null)"
            ));
        }
        if self.upsample_rates.len() > MAX_UPSAMPLINGS {
            return Err(format!(
                "{} upsamplings; VITS decoders have at most {MAX_UPSAMPLINGS}",
                self.upsample_rates.len()
            ));
        }
        let hop = self
            .upsample_rates
            .iter()
            .try_fold(1usize, |hop, &rate| hop.checked_mul(rate));
        if hop.is_none_or(|hop| hop > MAX_HOP) {
            return Err(format!(
                "upsample_rates {:?} make more than {MAX_HOP} samples per frame",
                self.upsample_rates
            ));
        }
        if self.flow_size == 0 || !self.flow_size.is_multiple_of(2) {
            return Err(format!(
                "flow_size {} is not a positive even number",
                self.flow_size
            ));
        }
        if self.depth_separable_channels != 2 {
            return Err(format!(
                "depth_separable_channels is {}; VitsModel's duration flows take 2",
                self.depth_separable_channels
            ));
        }
        let odd = [
            (
                "duration_predictor_kernel_size",
                self.duration_predictor_kernel_size,
            ),
            ("wavenet_kernel_size", self.wavenet_kernel_size),
        ];
        if let Some((name, v)) = odd.iter().find(|(_, v)| v.is_multiple_of(2)) {
            return Err(format!("{name} {v} is not odd"));
        }
        if self
            .resblock_kernel_sizes
            .iter()
            .any(|k| k.is_multiple_of(2))
        {
            return Err("resblock_kernel_sizes must be odd".into());
        }
        if self.upsample_rates.len() != self.upsample_kernel_sizes.len() {
            return Err("upsample_rates and upsample_kernel_sizes differ in length".into());
        }
        if self.resblock_kernel_sizes.len() != self.resblock_dilation_sizes.len()
            || self.resblock_kernel_sizes.is_empty()
        {
            return Err(
                "resblock_kernel_sizes and resblock_dilation_sizes differ in length".into(),
            );
        }
        if self
            .resblock_dilation_sizes
            .iter()
            .flatten()
            .any(|&d| d == 0)
        {
            return Err("resblock dilations must be positive".into());
        }
        for (i, (&rate, &kernel)) in self
            .upsample_rates
            .iter()
            .zip(&self.upsample_kernel_sizes)
            .enumerate()
        {
            if rate == 0 || kernel < rate {
                return Err(format!(
                    "upsampling {i}: kernel {kernel} smaller than its rate {rate}"
                ));
            }
            if (self.upsample_initial_channel >> (i + 1)) == 0 {
                return Err(format!(
                    "upsample_initial_channel {} halves to nothing in {} upsamplings",
                    self.upsample_initial_channel,
                    self.upsample_rates.len()
                ));
            }
        }
        if self.duration_predictor_tail_bound.is_nan() || self.duration_predictor_tail_bound <= 0.0
        {
            return Err("duration_predictor_tail_bound must be positive".into());
        }
        if MIN_BIN * self.duration_predictor_flow_bins as f32 > 1.0 {
            return Err("too many duration_predictor_flow_bins".into());
        }
        if self.num_speakers > 1 && self.speaker_embedding_size == 0 {
            return Err("num_speakers > 1 needs a speaker_embedding_size".into());
        }
        if activation_epilogue(self.hidden_act).is_none() {
            return Err(format!(
                "hidden_act {:?} is not one hgpt runs (relu, gelu, gelu_new)",
                self.hidden_act
            ));
        }
        Ok(())
    }

    /// Output samples per spectrogram frame (at most [`MAX_HOP`], checked).
    pub(crate) fn hop(&self) -> usize {
        self.upsample_rates.iter().product()
    }
}

/// A linear layer (`nn.Linear`).
fn linear(vb: &VarBuilder, inputs: usize, outputs: usize, bias: bool) -> Result<Dense> {
    let weight = vb.get((outputs, inputs), "weight")?;
    let bias = bias.then(|| vb.get(outputs, "bias")).transpose()?;
    Dense::new(weight, bias)
}

/// A 1x1 convolution applied to one vector (speaker conditioning).
fn pointwise_vector(conv: &Conv1d, vector: &[f32]) -> Result<Vec<f32>> {
    Ok(conv
        .forward(&Seq {
            data: vector.to_vec(),
            channels: vector.len(),
        })?
        .data)
}

/// A linear layer on every row of `x`.
fn rows(dense: &Dense, x: &Seq, epilogue: Epilogue) -> Result<Seq> {
    let length = x.len();
    Ok(Seq {
        data: dense.forward_slice(&x.data, length, epilogue, None)?,
        channels: dense.outputs()?,
    })
}

/// Multi-head self-attention with windowed relative positions.
#[derive(Debug, Clone)]
struct Attention {
    /// Queries (scaled), keys and values side by side.
    qkv: Dense,
    out: Dense,
    heads: usize,
    /// `[2 * window + 1][head_dim]` key and value embeddings.
    relative: Option<(Vec<f32>, Vec<f32>, usize)>,
}

impl Attention {
    fn load(cfg: &VitsConfig, vb: VarBuilder) -> Result<Self> {
        let hidden = cfg.hidden_size;
        let head_dim = hidden / cfg.num_attention_heads;
        let scale = (head_dim as f64).powf(-0.5);
        let part = |name: &str| -> Result<(candle_core::Tensor, candle_core::Tensor)> {
            let p = vb.pp(name);
            let weight = p.get((hidden, hidden), "weight")?;
            let bias = if cfg.use_bias {
                p.get(hidden, "bias")?
            } else {
                candle_core::Tensor::zeros(
                    hidden,
                    candle_core::DType::F32,
                    &candle_core::Device::Cpu,
                )?
            };
            Ok((weight, bias))
        };
        let (q, k, v) = (part("q_proj")?, part("k_proj")?, part("v_proj")?);
        let q = ((q.0 * scale)?, (q.1 * scale)?);
        let relative = match cfg.window_size {
            Some(window) => {
                let shape = (1, 2 * window + 1, head_dim);
                Some((
                    values(&vb.get(shape, "emb_rel_k")?)?,
                    values(&vb.get(shape, "emb_rel_v")?)?,
                    window,
                ))
            }
            None => None,
        };
        Ok(Self {
            qkv: Dense::from_parts(&[q.0, k.0, v.0], &[q.1, k.1, v.1])?,
            out: linear(&vb.pp("out_proj"), hidden, hidden, cfg.use_bias)?,
            heads: cfg.num_attention_heads,
            relative,
        })
    }

    /// `out_proj(attention(x)) + x`.
    fn forward(&self, x: &Seq) -> Result<Seq> {
        let (length, hidden) = (x.len(), x.channels);
        let head_dim = hidden / self.heads;
        let qkv = rows(&self.qkv, x, Epilogue::Bias)?;
        let at = |t: usize, part: usize, head: usize| {
            let start = t * 3 * hidden + part * hidden + head * head_dim;
            &qkv.data[start..start + head_dim]
        };
        let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
        // Rows of queries in parallel, each over every head.
        let mut context = vec![0f32; length * hidden];
        context
            .par_chunks_mut(hidden)
            .enumerate()
            .for_each(|(i, row)| {
                let mut scores = vec![0f32; length];
                for head in 0..self.heads {
                    let q = at(i, 0, head);
                    for (j, score) in scores.iter_mut().enumerate() {
                        *score = dot(q, at(j, 1, head));
                    }
                    // Keys within the window also meet their relative
                    // embedding.
                    let window = self.relative.as_ref().map(|(keys, values, window)| {
                        let span = i.saturating_sub(*window)..=(i + window).min(length - 1);
                        (keys, values, span, *window)
                    });
                    if let Some((keys, _, span, window)) = &window {
                        for j in span.clone() {
                            let r = (j + window - i) * head_dim;
                            scores[j] += dot(q, &keys[r..r + head_dim]);
                        }
                    }
                    softmax_in_place(&mut scores);
                    let out = &mut row[head * head_dim..(head + 1) * head_dim];
                    for (j, &p) in scores.iter().enumerate() {
                        out.iter_mut()
                            .zip(at(j, 2, head))
                            .for_each(|(o, v)| *o += p * v);
                    }
                    if let Some((_, values, span, window)) = &window {
                        for j in span.clone() {
                            let r = (j + window - i) * head_dim;
                            let p = scores[j];
                            out.iter_mut()
                                .zip(&values[r..r + head_dim])
                                .for_each(|(o, v)| *o += p * v);
                        }
                    }
                }
            });
        Ok(Seq {
            data: self
                .out
                .forward_slice(&context, length, Epilogue::Bias, Some(&x.data))?,
            channels: hidden,
        })
    }
}

/// One post-norm encoder layer.
#[derive(Debug, Clone)]
struct EncoderLayer {
    attention: Attention,
    layer_norm: LayerNorm,
    conv_1: Conv1d,
    conv_2: Conv1d,
    activation: Activation,
    final_layer_norm: LayerNorm,
}

impl EncoderLayer {
    fn load(cfg: &VitsConfig, vb: VarBuilder) -> Result<Self> {
        let (hidden, kernel) = (cfg.hidden_size, cfg.ffn_kernel_size);
        let padding = ((kernel - 1) / 2, kernel / 2);
        let ff = vb.pp("feed_forward");
        let conv = |name: &str, inputs: usize, outputs: usize| -> Result<Conv1d> {
            let p = ff.pp(name);
            Conv1d::new(
                &p.get((outputs, inputs, kernel), "weight")?,
                Some(p.get(outputs, "bias")?),
                1,
                padding,
            )
        };
        Ok(Self {
            attention: Attention::load(cfg, vb.pp("attention"))?,
            layer_norm: LayerNorm::load(hidden, cfg.layer_norm_eps, vb.pp("layer_norm"))?,
            conv_1: conv("conv_1", hidden, cfg.ffn_dim)?,
            conv_2: conv("conv_2", cfg.ffn_dim, hidden)?,
            activation: cfg.hidden_act,
            final_layer_norm: LayerNorm::load(
                hidden,
                cfg.layer_norm_eps,
                vb.pp("final_layer_norm"),
            )?,
        })
    }

    fn forward(&self, x: &Seq) -> Result<Seq> {
        let mut x = self.attention.forward(x)?;
        self.layer_norm.apply(&mut x);
        let epilogue = activation_epilogue(self.activation).ok_or_else(|| {
            candle_core::Error::Msg(format!("hidden_act {:?} is not supported", self.activation))
        })?;
        let inner = self.conv_1.forward_with(&x, None, epilogue)?;
        let mut x = self.conv_2.forward_with(&inner, Some(&x), Epilogue::Bias)?;
        self.final_layer_norm.apply(&mut x);
        Ok(x)
    }
}

/// The text encoder: embeddings, layers, and the prior's statistics.
#[derive(Debug, Clone)]
struct TextEncoder {
    /// `[vocab][hidden]`, scaled by `sqrt(hidden)`.
    embeddings: Vec<f32>,
    layers: Vec<EncoderLayer>,
    project: Dense,
    hidden: usize,
    vocab: usize,
}

impl TextEncoder {
    fn load(cfg: &VitsConfig, vb: VarBuilder) -> Result<Self> {
        let hidden = cfg.hidden_size;
        let scale = (hidden as f64).sqrt() as f32;
        let embeddings = values(
            &vb.pp("embed_tokens")
                .get((cfg.vocab_size, hidden), "weight")?,
        )?;
        Ok(Self {
            embeddings: embeddings.into_iter().map(|v| v * scale).collect(),
            layers: (0..cfg.num_hidden_layers)
                .map(|i| EncoderLayer::load(cfg, vb.pp("encoder").pp("layers").pp(i)))
                .collect::<Result<_>>()?,
            project: {
                let p = vb.pp("project");
                Dense::new(
                    p.get((2 * cfg.flow_size, hidden, 1), "weight")?
                        .squeeze(2)?,
                    Some(p.get(2 * cfg.flow_size, "bias")?),
                )?
            },
            hidden,
            vocab: cfg.vocab_size,
        })
    }

    /// `(hidden states, prior statistics [means | log-variances])`.
    fn forward(&self, ids: &[u32]) -> Result<(Seq, Seq)> {
        let mut x = Seq::zeros(0, self.hidden);
        for &id in ids {
            let id = id as usize;
            if id >= self.vocab {
                bail!(
                    "token id {id} is outside the model's {} embeddings",
                    self.vocab
                );
            }
            x.data
                .extend_from_slice(&self.embeddings[id * self.hidden..(id + 1) * self.hidden]);
        }
        for layer in &self.layers {
            x = layer.forward(&x)?;
        }
        let stats = rows(&self.project, &x, Epilogue::Bias)?;
        Ok((x, stats))
    }
}

/// `VitsDilatedDepthSeparableConv`: residual blocks of a dilated depthwise
/// convolution and a pointwise one, each followed by a layer norm and GELU.
#[derive(Debug, Clone)]
struct DepthSeparable {
    layers: Vec<(DepthwiseConv1d, LayerNorm, Conv1d, LayerNorm)>,
}

impl DepthSeparable {
    fn load(cfg: &VitsConfig, vb: VarBuilder) -> Result<Self> {
        let (channels, kernel) = (cfg.hidden_size, cfg.duration_predictor_kernel_size);
        let mut dilation = 1usize;
        let layers = (0..cfg.depth_separable_num_layers)
            .map(|i| {
                let layer = (
                    DepthwiseConv1d::load(
                        &vb.pp("convs_dilated").pp(i),
                        channels,
                        kernel,
                        dilation,
                    )?,
                    LayerNorm::load(channels, DEFAULT_NORM_EPS, vb.pp("norms_1").pp(i))?,
                    Conv1d::pointwise(&vb.pp("convs_pointwise").pp(i), (channels, channels))?,
                    LayerNorm::load(channels, DEFAULT_NORM_EPS, vb.pp("norms_2").pp(i))?,
                );
                dilation = dilation
                    .checked_mul(kernel)
                    .ok_or_else(|| candle_core::Error::Msg("dilation overflows".into()))?;
                Ok(layer)
            })
            .collect::<Result<_>>()?;
        Ok(Self { layers })
    }

    /// The blocks on `x` plus `conditioning` (same shape) when given.
    fn forward(&self, mut x: Seq, conditioning: Option<&Seq>) -> Result<Seq> {
        if let Some(c) = conditioning {
            x.data.iter_mut().zip(&c.data).for_each(|(x, c)| *x += c);
        }
        for (dilated, norm_1, pointwise, norm_2) in &self.layers {
            let mut h = dilated.forward(&x);
            norm_1.apply(&mut h);
            gelu_in_place(&mut h.data);
            let mut h = pointwise.forward(&h)?;
            norm_2.apply(&mut h);
            gelu_in_place(&mut h.data);
            x.data.iter_mut().zip(&h.data).for_each(|(x, h)| *x += h);
        }
        Ok(x)
    }
}

/// `VitsConvFlow`: a rational-quadratic spline coupling on the second of two
/// channels.
#[derive(Debug, Clone)]
struct ConvFlow {
    conv_pre: Conv1d,
    conv_dds: DepthSeparable,
    conv_proj: Conv1d,
    bins: usize,
    tail_bound: f32,
    filter_channels: usize,
}

impl ConvFlow {
    fn load(cfg: &VitsConfig, vb: VarBuilder) -> Result<Self> {
        let (filter, bins) = (cfg.hidden_size, cfg.duration_predictor_flow_bins);
        Ok(Self {
            conv_pre: Conv1d::pointwise(&vb.pp("conv_pre"), (1, filter))?,
            conv_dds: DepthSeparable::load(cfg, vb.pp("conv_dds"))?,
            conv_proj: Conv1d::pointwise(&vb.pp("conv_proj"), (filter, 3 * bins - 1))?,
            bins,
            tail_bound: cfg.duration_predictor_tail_bound,
            filter_channels: filter,
        })
    }

    /// The inverse of the flow on `[length, 2]` latents.
    fn reverse(&self, latents: &mut Seq, conditioning: &Seq) -> Result<()> {
        let first = latents.columns(0..1);
        let h = self.conv_pre.forward(&first)?;
        let h = self.conv_dds.forward(h, Some(conditioning))?;
        let params = self.conv_proj.forward(&h)?;
        let scale = (self.filter_channels as f64).sqrt() as f32;
        let bins = self.bins;
        for t in 0..latents.len() {
            let p = params.row(t);
            let widths: Vec<f32> = p[..bins].iter().map(|v| v / scale).collect();
            let heights: Vec<f32> = p[bins..2 * bins].iter().map(|v| v / scale).collect();
            let x = latents.data[2 * t + 1];
            latents.data[2 * t + 1] =
                spline_inverse(x, &widths, &heights, &p[2 * bins..], self.tail_bound)?;
        }
        Ok(())
    }
}

/// The inverse of the unconstrained rational-quadratic spline of
/// transformers' `_unconstrained_rational_quadratic_spline` (identity
/// outside `[-tail_bound, tail_bound]`), step by step in f32 as PyTorch
/// computes it.
fn spline_inverse(
    x: f32,
    unnormalized_widths: &[f32],
    unnormalized_heights: &[f32],
    unnormalized_derivatives: &[f32],
    tail_bound: f32,
) -> Result<f32> {
    if !(-tail_bound..=tail_bound).contains(&x) {
        return Ok(x);
    }
    let bins = unnormalized_widths.len();
    let edge = ((1.0 - f64::from(MIN_BIN)).exp() - 1.0).ln() as f32;
    let mut derivatives = Vec::with_capacity(bins + 1);
    derivatives.push(edge);
    derivatives.extend_from_slice(unnormalized_derivatives);
    derivatives.push(edge);
    let derivatives: Vec<f32> = derivatives
        .iter()
        .map(|&d| MIN_BIN + if d > 20.0 { d } else { d.exp().ln_1p() })
        .collect();
    let knots = |unnormalized: &[f32]| {
        let mut sizes = unnormalized.to_vec();
        softmax_in_place(&mut sizes);
        let spread = (1.0 - f64::from(MIN_BIN) * bins as f64) as f32;
        let mut cumulative = Vec::with_capacity(bins + 1);
        cumulative.push(0f32);
        let mut sum = 0f64;
        for s in &sizes {
            sum += f64::from(MIN_BIN + spread * s);
            cumulative.push(sum as f32);
        }
        let mut cumulative: Vec<f32> = cumulative
            .iter()
            .map(|c| 2.0 * tail_bound * c - tail_bound)
            .collect();
        cumulative[0] = -tail_bound;
        cumulative[bins] = tail_bound;
        let sizes: Vec<f32> = cumulative.windows(2).map(|w| w[1] - w[0]).collect();
        (cumulative, sizes)
    };
    let (cumwidths, widths) = knots(unnormalized_widths);
    let (mut cumheights, heights) = knots(unnormalized_heights);
    cumheights[bins] += 1e-6;
    let bin = cumheights.iter().filter(|&&c| x >= c).count().max(1) - 1;
    let bin = bin.min(bins - 1);
    let delta = heights[bin] / widths[bin];
    let (d0, d1) = (derivatives[bin], derivatives[bin + 1]);
    let height = heights[bin];
    let intermediate1 = d0 + d1 - 2.0 * delta;
    let intermediate2 = x - cumheights[bin];
    let intermediate3 = intermediate2 * intermediate1;
    let a = height * (delta - d0) + intermediate3;
    let b = height * d0 - intermediate3;
    let c = -delta * intermediate2;
    let discriminant = b * b - 4.0 * a * c;
    if discriminant.is_nan() || discriminant < 0.0 {
        bail!("the duration flow's spline has no inverse here (discriminant {discriminant})");
    }
    let root = (2.0 * c) / (-b - discriminant.sqrt());
    Ok(root * widths[bin] + cumwidths[bin])
}

/// `VitsElementwiseAffine` on two channels.
#[derive(Debug, Clone)]
struct Affine {
    translate: Vec<f32>,
    log_scale: Vec<f32>,
}

impl Affine {
    fn load(vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            translate: values(&vb.get((2, 1), "translate")?)?,
            log_scale: values(&vb.get((2, 1), "log_scale")?)?,
        })
    }

    fn reverse(&self, latents: &mut Seq) {
        for row in latents.data.chunks_exact_mut(2) {
            for ((v, t), s) in row.iter_mut().zip(&self.translate).zip(&self.log_scale) {
                *v = (*v - t) * (-s).exp();
            }
        }
    }
}

/// How durations are predicted.
#[derive(Debug, Clone)]
enum DurationPredictor {
    /// `VitsStochasticDurationPredictor`, run in reverse from noise.
    Stochastic {
        conv_pre: Conv1d,
        conv_dds: DepthSeparable,
        conv_proj: Conv1d,
        cond: Option<Conv1d>,
        /// The flows run in reverse order (the first spline flow is skipped,
        /// as VitsModel does).
        flows: Vec<ConvFlow>,
        affine: Affine,
    },
    /// `VitsDurationPredictor`: two convolutions and a projection.
    Plain {
        conv_1: Conv1d,
        norm_1: LayerNorm,
        conv_2: Conv1d,
        norm_2: LayerNorm,
        proj: Conv1d,
        cond: Option<Conv1d>,
    },
}

impl DurationPredictor {
    fn load(cfg: &VitsConfig, vb: VarBuilder) -> Result<Self> {
        let hidden = cfg.hidden_size;
        let speakers = cfg.num_speakers > 1;
        let cond = |outputs: usize| -> Result<Option<Conv1d>> {
            speakers
                .then(|| Conv1d::pointwise(&vb.pp("cond"), (cfg.speaker_embedding_size, outputs)))
                .transpose()
        };
        if cfg.use_stochastic_duration_prediction {
            let mut flows = (1..=cfg.duration_predictor_num_flows)
                .map(|i| ConvFlow::load(cfg, vb.pp("flows").pp(i)))
                .collect::<Result<Vec<_>>>()?;
            flows.reverse();
            // VitsModel drops the last of the reversed spline flows (the
            // first one).
            flows.pop();
            Ok(Self::Stochastic {
                conv_pre: Conv1d::pointwise(&vb.pp("conv_pre"), (hidden, hidden))?,
                conv_dds: DepthSeparable::load(cfg, vb.pp("conv_dds"))?,
                conv_proj: Conv1d::pointwise(&vb.pp("conv_proj"), (hidden, hidden))?,
                cond: cond(hidden)?,
                flows,
                affine: Affine::load(vb.pp("flows").pp(0))?,
            })
        } else {
            let (filter, kernel) = (
                cfg.duration_predictor_filter_channels,
                cfg.duration_predictor_kernel_size,
            );
            let conv = |name: &str, inputs: usize| -> Result<Conv1d> {
                let p = vb.pp(name);
                Conv1d::new(
                    &p.get((filter, inputs, kernel), "weight")?,
                    Some(p.get(filter, "bias")?),
                    1,
                    (kernel / 2, kernel / 2),
                )
            };
            Ok(Self::Plain {
                conv_1: conv("conv_1", hidden)?,
                norm_1: LayerNorm::load(filter, cfg.layer_norm_eps, vb.pp("norm_1"))?,
                conv_2: conv("conv_2", filter)?,
                norm_2: LayerNorm::load(filter, cfg.layer_norm_eps, vb.pp("norm_2"))?,
                proj: Conv1d::pointwise(&vb.pp("proj"), (filter, 1))?,
                cond: cond(hidden)?,
            })
        }
    }

    /// Log durations of the tokens with hidden states `x`, from `noise`
    /// (`[length, 2]`, already scaled; stochastic predictor only).
    fn forward(&self, x: &Seq, speaker: Option<&[f32]>, noise: Seq) -> Result<Vec<f32>> {
        let conditioning = |cond: &Option<Conv1d>| -> Result<Option<Vec<f32>>> {
            match (cond, speaker) {
                (Some(cond), Some(speaker)) => Ok(Some(pointwise_vector(cond, speaker)?)),
                _ => Ok(None),
            }
        };
        match self {
            Self::Stochastic {
                conv_pre,
                conv_dds,
                conv_proj,
                cond,
                flows,
                affine,
            } => {
                let mut h = conv_pre.forward(x)?;
                if let Some(c) = conditioning(cond)? {
                    h.add_row(&c);
                }
                let h = conv_dds.forward(h, None)?;
                let h = conv_proj.forward(&h)?;
                let mut latents = noise;
                for flow in flows {
                    latents.flip_channels();
                    flow.reverse(&mut latents, &h)?;
                }
                latents.flip_channels();
                affine.reverse(&mut latents);
                Ok(latents.columns(0..1).data)
            }
            Self::Plain {
                conv_1,
                norm_1,
                conv_2,
                norm_2,
                proj,
                cond,
            } => {
                let mut x = x.clone();
                if let Some(c) = conditioning(cond)? {
                    x.add_row(&c);
                }
                let mut h = conv_1.forward_with(&x, None, Epilogue::Relu)?;
                norm_1.apply(&mut h);
                let mut h = conv_2.forward_with(&h, None, Epilogue::Relu)?;
                norm_2.apply(&mut h);
                Ok(proj.forward(&h)?.data)
            }
        }
    }
}

/// `VitsWaveNet`: gated dilated convolutions with residual and skip outputs.
#[derive(Debug, Clone)]
struct WaveNet {
    in_layers: Vec<Conv1d>,
    res_skip_layers: Vec<Conv1d>,
    cond: Option<Conv1d>,
    hidden: usize,
}

impl WaveNet {
    fn load(cfg: &VitsConfig, layers: usize, vb: VarBuilder) -> Result<Self> {
        let hidden = cfg.hidden_size;
        let mut dilation = 1usize;
        let mut in_layers = Vec::with_capacity(layers);
        let mut res_skip_layers = Vec::with_capacity(layers);
        for i in 0..layers {
            in_layers.push(Conv1d::load(
                &vb.pp("in_layers").pp(i),
                (hidden, 2 * hidden),
                cfg.wavenet_kernel_size,
                dilation,
                true,
            )?);
            let outputs = if i + 1 < layers { 2 * hidden } else { hidden };
            res_skip_layers.push(Conv1d::pointwise(
                &vb.pp("res_skip_layers").pp(i),
                (hidden, outputs),
            )?);
            dilation = dilation
                .checked_mul(cfg.wavenet_dilation_rate)
                .ok_or_else(|| candle_core::Error::Msg("dilation overflows".into()))?;
        }
        let cond = (cfg.num_speakers > 1)
            .then(|| {
                Conv1d::pointwise(
                    &vb.pp("cond_layer"),
                    (cfg.speaker_embedding_size, 2 * hidden * layers),
                )
            })
            .transpose()?;
        Ok(Self {
            in_layers,
            res_skip_layers,
            cond,
            hidden,
        })
    }

    fn forward(&self, mut x: Seq, speaker: Option<&[f32]>) -> Result<Seq> {
        let hidden = self.hidden;
        let conditioning = match (&self.cond, speaker) {
            (Some(cond), Some(speaker)) => Some(pointwise_vector(cond, speaker)?),
            _ => None,
        };
        let mut output = Seq::zeros(x.len(), hidden);
        let last = self.in_layers.len().saturating_sub(1);
        for (i, (in_layer, res_skip)) in
            self.in_layers.iter().zip(&self.res_skip_layers).enumerate()
        {
            let mut h = in_layer.forward(&x)?;
            if let Some(c) = &conditioning {
                h.add_row(&c[i * 2 * hidden..(i + 1) * 2 * hidden]);
            }
            let mut acts = Seq::zeros(h.len(), hidden);
            for (a, row) in acts
                .data
                .chunks_exact_mut(hidden)
                .zip(h.data.chunks_exact(2 * hidden))
            {
                let (tanh, gate) = row.split_at(hidden);
                for ((a, t), g) in a.iter_mut().zip(tanh).zip(gate) {
                    *a = t.tanh() * (1.0 / (1.0 + (-g).exp()));
                }
            }
            let res_skip = res_skip.forward(&acts)?;
            if i < last {
                for ((x, o), row) in x
                    .data
                    .chunks_exact_mut(hidden)
                    .zip(output.data.chunks_exact_mut(hidden))
                    .zip(res_skip.data.chunks_exact(2 * hidden))
                {
                    x.iter_mut().zip(&row[..hidden]).for_each(|(x, r)| *x += r);
                    o.iter_mut().zip(&row[hidden..]).for_each(|(o, s)| *o += s);
                }
            } else {
                output
                    .data
                    .iter_mut()
                    .zip(&res_skip.data)
                    .for_each(|(o, s)| *o += s);
            }
        }
        Ok(output)
    }
}

/// `VitsResidualCouplingLayer`: the second half of the channels shifted by
/// a WaveNet of the first.
#[derive(Debug, Clone)]
struct CouplingLayer {
    conv_pre: Conv1d,
    wavenet: WaveNet,
    conv_post: Conv1d,
    half: usize,
}

impl CouplingLayer {
    fn load(cfg: &VitsConfig, vb: VarBuilder) -> Result<Self> {
        let half = cfg.flow_size / 2;
        Ok(Self {
            conv_pre: Conv1d::pointwise(&vb.pp("conv_pre"), (half, cfg.hidden_size))?,
            wavenet: WaveNet::load(cfg, cfg.prior_encoder_num_wavenet_layers, vb.pp("wavenet"))?,
            conv_post: Conv1d::pointwise(&vb.pp("conv_post"), (cfg.hidden_size, half))?,
            half,
        })
    }

    fn reverse(&self, x: &mut Seq, speaker: Option<&[f32]>) -> Result<()> {
        let half = self.half;
        let h = self.conv_pre.forward(&x.columns(0..half))?;
        let h = self.wavenet.forward(h, speaker)?;
        let mean = self.conv_post.forward(&h)?;
        for (row, m) in x
            .data
            .chunks_exact_mut(2 * half)
            .zip(mean.data.chunks_exact(half))
        {
            row[half..].iter_mut().zip(m).for_each(|(v, m)| *v -= m);
        }
        Ok(())
    }
}

/// `HifiGanResidualBlock`: pairs of dilated and plain convolutions, each
/// pair added to its input.
#[derive(Debug, Clone)]
struct ResidualBlock {
    pairs: Vec<(Conv1d, Conv1d)>,
}

impl ResidualBlock {
    fn forward(&self, x: &Seq, slope: f32) -> Result<Seq> {
        let mut x = x.clone();
        for (conv1, conv2) in &self.pairs {
            let h = conv1.forward_leaky(&x, slope, None)?;
            x = conv2.forward_leaky(&h, slope, Some(&x))?;
        }
        Ok(x)
    }
}

/// `VitsHifiGan`: the spectrogram upsampled to a waveform.
#[derive(Debug, Clone)]
struct HifiGan {
    conv_pre: Conv1d,
    cond: Option<Conv1d>,
    upsamplers: Vec<ConvTranspose1d>,
    /// Per upsampling, its residual blocks.
    resblocks: Vec<Vec<ResidualBlock>>,
    conv_post: Conv1d,
    slope: f32,
}

impl HifiGan {
    fn load(cfg: &VitsConfig, vb: VarBuilder) -> Result<Self> {
        let initial = cfg.upsample_initial_channel;
        let conv_pre = Conv1d::load(&vb.pp("conv_pre"), (cfg.flow_size, initial), 7, 1, true)?;
        let mut upsamplers = Vec::new();
        let mut resblocks = Vec::new();
        let mut channels = initial;
        for (i, (&rate, &kernel)) in cfg
            .upsample_rates
            .iter()
            .zip(&cfg.upsample_kernel_sizes)
            .enumerate()
        {
            let outputs = initial >> (i + 1);
            upsamplers.push(ConvTranspose1d::load(
                &vb.pp("upsampler").pp(i),
                (channels, outputs),
                kernel,
                rate,
                (kernel - rate) / 2,
            )?);
            channels = outputs;
            let blocks = cfg
                .resblock_kernel_sizes
                .iter()
                .zip(&cfg.resblock_dilation_sizes)
                .enumerate()
                .map(|(j, (&kernel, dilations))| {
                    let p = vb
                        .pp("resblocks")
                        .pp(i * cfg.resblock_kernel_sizes.len() + j);
                    let pairs = dilations
                        .iter()
                        .enumerate()
                        .map(|(d, &dilation)| {
                            Ok((
                                Conv1d::load(
                                    &p.pp("convs1").pp(d),
                                    (channels, channels),
                                    kernel,
                                    dilation,
                                    true,
                                )?,
                                Conv1d::load(
                                    &p.pp("convs2").pp(d),
                                    (channels, channels),
                                    kernel,
                                    1,
                                    true,
                                )?,
                            ))
                        })
                        .collect::<Result<_>>()?;
                    Ok(ResidualBlock { pairs })
                })
                .collect::<Result<_>>()?;
            resblocks.push(blocks);
        }
        let cond = (cfg.num_speakers > 1)
            .then(|| Conv1d::pointwise(&vb.pp("cond"), (cfg.speaker_embedding_size, initial)))
            .transpose()?;
        Ok(Self {
            conv_pre,
            cond,
            upsamplers,
            resblocks,
            conv_post: Conv1d::load(&vb.pp("conv_post"), (channels, 1), 7, 1, false)?,
            slope: cfg.leaky_relu_slope,
        })
    }

    /// The waveform of a `[frames, flow_size]` spectrogram.
    fn forward(&self, spectrogram: &Seq, speaker: Option<&[f32]>) -> Result<Vec<f32>> {
        let mut x = self.conv_pre.forward(spectrogram)?;
        if let (Some(cond), Some(speaker)) = (&self.cond, speaker) {
            x.add_row(&pointwise_vector(cond, speaker)?);
        }
        for (upsampler, blocks) in self.upsamplers.iter().zip(&self.resblocks) {
            x = upsampler.forward(&x.leaky_relu(self.slope))?;
            let mut sum: Option<Seq> = None;
            for block in blocks {
                let y = block.forward(&x, self.slope)?;
                sum = Some(match sum {
                    None => y,
                    Some(mut s) => {
                        s.data.iter_mut().zip(&y.data).for_each(|(s, y)| *s += y);
                        s
                    }
                });
            }
            if let Some(mut s) = sum {
                let count = blocks.len() as f32;
                s.data.iter_mut().for_each(|v| *v /= count);
                x = s;
            }
        }
        // PyTorch's default slope here, not the config's.
        let mut waveform = self.conv_post.forward_leaky(&x, 0.01, None)?.data;
        waveform.iter_mut().for_each(|v| *v = v.tanh());
        Ok(waveform)
    }
}

/// How one synthesis runs: the sampling knobs VitsModel reads from its
/// attributes, the speaker and the noise.
pub(crate) struct Synthesis<'a> {
    /// `1 / length_scale`.
    pub(crate) speaking_rate: f64,
    /// Scale of the prior's noise.
    pub(crate) noise_scale: f64,
    /// Scale of the duration predictor's noise.
    pub(crate) noise_scale_duration: f64,
    /// The speaker of a multi-speaker model (checked to be in range).
    pub(crate) speaker_id: Option<usize>,
    /// Standard normal draws.
    pub(crate) noise: &'a mut dyn FnMut() -> f32,
}

/// A text encoded and aligned: the prior's statistics per token and the
/// frames each token lasts.
#[derive(Debug, Clone)]
pub(crate) struct Aligned {
    /// `[tokens, means | log-variances]`.
    stats: Seq,
    /// Frames per token.
    pub(crate) durations: Vec<u32>,
}

impl Aligned {
    /// The spectrogram frames (at least one, as VitsModel clamps).
    pub(crate) fn frames(&self) -> u64 {
        self.durations
            .iter()
            .map(|&d| u64::from(d))
            .sum::<u64>()
            .max(1)
    }
}

/// A loaded `VitsModel`.
#[derive(Debug, Clone)]
pub(crate) struct Vits {
    text_encoder: TextEncoder,
    duration_predictor: DurationPredictor,
    flows: Vec<CouplingLayer>,
    decoder: HifiGan,
    /// `[speakers][embedding]`.
    speakers: Option<Vec<Vec<f32>>>,
    flow_size: usize,
}

impl Vits {
    pub(crate) fn load(cfg: &VitsConfig, vb: VarBuilder) -> Result<Self> {
        let speakers = if cfg.num_speakers > 1 {
            let table = values(
                &vb.pp("embed_speaker")
                    .get((cfg.num_speakers, cfg.speaker_embedding_size), "weight")?,
            )?;
            Some(
                table
                    .chunks_exact(cfg.speaker_embedding_size)
                    .map(<[f32]>::to_vec)
                    .collect(),
            )
        } else {
            None
        };
        Ok(Self {
            text_encoder: TextEncoder::load(cfg, vb.pp("text_encoder"))?,
            duration_predictor: DurationPredictor::load(cfg, vb.pp("duration_predictor"))?,
            flows: (0..cfg.prior_encoder_num_flows)
                .map(|i| CouplingLayer::load(cfg, vb.pp("flow").pp("flows").pp(i)))
                .collect::<Result<_>>()?,
            decoder: HifiGan::load(cfg, vb.pp("decoder"))?,
            speakers,
            flow_size: cfg.flow_size,
        })
    }

    /// The number of speakers (1 for a single-speaker model).
    pub(crate) fn speakers(&self) -> usize {
        self.speakers.as_ref().map_or(1, Vec::len)
    }

    /// The embedding of the requested speaker, when the model has several
    /// and one is named (VitsModel conditions on nothing otherwise).
    fn speaker(&self, run: &Synthesis) -> Result<Option<&[f32]>> {
        match (&self.speakers, run.speaker_id) {
            (Some(table), Some(id)) => table
                .get(id)
                .map(|s| Some(s.as_slice()))
                .ok_or_else(|| candle_core::Error::Msg(format!("no speaker {id}"))),
            _ => Ok(None),
        }
    }

    /// Encode token ids and predict how long each lasts.
    pub(crate) fn align(&self, ids: &[u32], run: &mut Synthesis) -> Result<Aligned> {
        let speaker = self.speaker(run)?;
        let (hidden, stats) = self.text_encoder.forward(ids)?;
        let mut noise = Seq::zeros(ids.len(), 2);
        if run.noise_scale_duration != 0.0 {
            let scale = run.noise_scale_duration as f32;
            noise
                .data
                .iter_mut()
                .for_each(|v| *v = (run.noise)() * scale);
        }
        let log_durations = self.duration_predictor.forward(&hidden, speaker, noise)?;
        let length_scale = (1.0 / run.speaking_rate) as f32;
        let durations = log_durations
            .iter()
            .map(|l| (l.exp() * length_scale).ceil())
            .map(|d| {
                if d >= 1.0 {
                    d.min(u32::MAX as f32) as u32
                } else {
                    0
                }
            })
            .collect();
        Ok(Aligned { stats, durations })
    }

    /// The waveform of an aligned text: each frame drawn from its token's
    /// prior, the flows in reverse, the decoder.
    pub(crate) fn render(&self, aligned: &Aligned, run: &mut Synthesis) -> Result<Vec<f32>> {
        let speaker = self.speaker(run)?;
        let flow = self.flow_size;
        let frames = usize::try_from(aligned.frames())
            .map_err(|_| candle_core::Error::Msg("too many frames".into()))?;
        let mut latents = Seq::zeros(frames, flow);
        let scale = run.noise_scale as f32;
        let mut rows = latents.data.chunks_exact_mut(flow);
        for (token, &duration) in aligned.durations.iter().enumerate() {
            let stats = aligned.stats.row(token);
            for row in rows.by_ref().take(duration as usize) {
                for (c, v) in row.iter_mut().enumerate() {
                    let (mean, log_variance) = (stats[c], stats[flow + c]);
                    *v = if scale != 0.0 {
                        mean + (run.noise)() * log_variance.exp() * scale
                    } else {
                        mean
                    };
                }
            }
        }
        for layer in self.flows.iter().rev() {
            latents.flip_channels();
            layer.reverse(&mut latents, speaker)?;
        }
        self.decoder.forward(&latents, speaker)
    }
}
