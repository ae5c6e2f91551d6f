//! Object detection with DETR checkpoints (`DetrForObjectDetection`): a
//! bottleneck ResNet ([`super::resnet`], timm's or transformers' weight
//! names), a 1x1 projection to `d_model`, sine position embeddings, a
//! post-norm transformer encoder, a decoder over learned object queries, and
//! the class and box heads.

use super::attention::{attend, merge_heads, self_attention, split_heads};
use super::detection::{DetectionModel, Mlp, Predictions};
use super::encoder::{class_count, class_names};
use super::resnet::{FeatureMap, ResNet, ResNetNames, ResNetOptions};
use crate::error::LocalError;
use crate::files::ModelFiles;
use crate::kernels::{Dense, Epilogue, dense_activation};
use candle_core::{Device, Result, Tensor};
use candle_nn::{Activation, LayerNorm, Linear, VarBuilder, layer_norm, linear};
use serde::Deserialize;
use std::collections::BTreeMap;

/// transformers' `ResNetConfig` fields DETR's own backbone reads.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct ResNetBackboneConfig {
    /// `bottleneck` (ResNet-50 and deeper) or `basic`.
    pub layer_type: String,
    /// Whether the first stage starts with a stride of 2.
    pub downsample_in_first_stage: bool,
    /// Whether a block's stride is on its first 1x1 convolution.
    pub downsample_in_bottleneck: bool,
}

impl Default for ResNetBackboneConfig {
    fn default() -> Self {
        Self {
            layer_type: "bottleneck".into(),
            downsample_in_first_stage: false,
            downsample_in_bottleneck: false,
        }
    }
}

/// The parts of a DETR `config.json` hgpt reads (transformers' defaults).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct DetrConfig {
    /// Width of the transformer.
    pub d_model: usize,
    /// Encoder layers.
    pub encoder_layers: usize,
    /// Decoder layers.
    pub decoder_layers: usize,
    /// Encoder attention heads.
    pub encoder_attention_heads: usize,
    /// Decoder attention heads.
    pub decoder_attention_heads: usize,
    /// Encoder MLP width.
    pub encoder_ffn_dim: usize,
    /// Decoder MLP width.
    pub decoder_ffn_dim: usize,
    /// Object queries.
    pub num_queries: usize,
    /// MLP activation.
    pub activation_function: Activation,
    /// `sine` (the only kind DETR checkpoints use) or `learned`.
    pub position_embedding_type: String,
    /// Whether the backbone has timm's weight names.
    pub use_timm_backbone: bool,
    /// The timm backbone's name (`resnet50`, `resnet101`).
    pub backbone: Option<String>,
    /// transformers' own backbone (when `use_timm_backbone` is false).
    pub backbone_config: Option<ResNetBackboneConfig>,
    /// DC5: the last stage dilated instead of strided (`null` in configs
    /// made with transformers' own backbone).
    pub dilation: Option<bool>,
    /// Input channels.
    pub num_channels: usize,
    /// Class index (as a string) to label.
    pub id2label: BTreeMap<String, String>,
}

impl Default for DetrConfig {
    fn default() -> Self {
        Self {
            d_model: 256,
            encoder_layers: 6,
            decoder_layers: 6,
            encoder_attention_heads: 8,
            decoder_attention_heads: 8,
            encoder_ffn_dim: 2048,
            decoder_ffn_dim: 2048,
            num_queries: 100,
            activation_function: Activation::Relu,
            position_embedding_type: "sine".into(),
            use_timm_backbone: true,
            backbone: Some("resnet50".into()),
            backbone_config: None,
            dilation: None,
            num_channels: 3,
            id2label: BTreeMap::new(),
        }
    }
}

impl DetrConfig {
    pub(crate) fn check(&self) -> std::result::Result<(), String> {
        for (what, heads) in [
            ("encoder_attention_heads", self.encoder_attention_heads),
            ("decoder_attention_heads", self.decoder_attention_heads),
        ] {
            if self.d_model == 0 || heads == 0 || !self.d_model.is_multiple_of(heads) {
                return Err(format!(
                    "d_model {} must be a positive multiple of {what} {heads}",
                    self.d_model
                ));
            }
        }
        if !self.d_model.is_multiple_of(4) {
            return Err(format!(
                "d_model {} must be a multiple of 4 for sine position embeddings",
                self.d_model
            ));
        }
        if self.num_queries == 0 || self.decoder_layers == 0 {
            return Err("num_queries and decoder_layers must be positive".into());
        }
        if self.position_embedding_type != "sine" {
            return Err(format!(
                "position_embedding_type {:?} is not supported (only \"sine\")",
                self.position_embedding_type
            ));
        }
        if self.dilation == Some(true) {
            return Err("dilated (DC5) backbones are not supported".into());
        }
        if self.num_channels != 3 {
            return Err(format!(
                "num_channels is {}; only RGB models (3) are supported",
                self.num_channels
            ));
        }
        if self.use_timm_backbone {
            let name = self.backbone.as_deref().unwrap_or("");
            if !name.starts_with("resnet") {
                return Err(format!(
                    "the timm backbone {name:?} is not supported (ResNet-50 and deeper)"
                ));
            }
        } else {
            let backbone = self
                .backbone_config
                .as_ref()
                .ok_or("use_timm_backbone is false but there is no backbone_config".to_string())?;
            if backbone.layer_type != "bottleneck" {
                return Err(format!(
                    "the ResNet layer_type {:?} is not supported (only \"bottleneck\")",
                    backbone.layer_type
                ));
            }
        }
        Ok(())
    }
}

/// DETR attention: positions are added to the queries and keys, not the
/// values. The query projection is scaled by `1 / sqrt(head size)` at load,
/// as DETR scales the projected queries.
#[derive(Debug, Clone)]
struct Attention {
    /// Query and key projections side by side (their inputs are the same in
    /// self-attention).
    query_key: Dense,
    query: Dense,
    key: Dense,
    value: Dense,
    out_proj: Dense,
    heads: usize,
}

impl Attention {
    fn load(d: usize, heads: usize, vb: VarBuilder) -> Result<Self> {
        let scaling = ((d / heads) as f64).powf(-0.5);
        let part = |name: &str| -> Result<(Tensor, Tensor)> {
            let vb = vb.pp(name);
            Ok((vb.get((d, d), "weight")?, vb.get(d, "bias")?))
        };
        let (q, k) = (part("q_proj")?, part("k_proj")?);
        let q = ((q.0 * scaling)?, (q.1 * scaling)?);
        Ok(Self {
            query_key: Dense::from_parts(&[q.0.clone(), k.0.clone()], &[q.1.clone(), k.1.clone()])?,
            query: Dense::new(q.0, Some(q.1))?,
            key: Dense::new(k.0, Some(k.1))?,
            value: Dense::load(d, d, vb.pp("v_proj"))?,
            out_proj: Dense::load(d, d, vb.pp("out_proj"))?,
            heads,
        })
    }

    /// Self-attention of `xs` with `positions` added to queries and keys,
    /// then the output projection plus `xs`.
    fn self_attend(&self, xs: &Tensor, positions: &Tensor) -> Result<Tensor> {
        let query_key = self
            .query_key
            .forward(&xs.broadcast_add(positions)?, Epilogue::Bias)?;
        let value = self.value.forward(xs, Epilogue::Bias)?;
        let qkv = Tensor::cat(&[&query_key, &value], 2)?;
        let context = self_attention(&qkv, self.heads, false)?;
        self.out_proj.forward(&context, Epilogue::Residual(xs))
    }

    /// `queries` attend over `keys` (with positions added) and `values`; the
    /// output projection plus `residual`.
    fn cross_attend(
        &self,
        queries: &Tensor,
        keys: &Tensor,
        values: &Tensor,
        residual: &Tensor,
    ) -> Result<Tensor> {
        let query = split_heads(&self.query.forward(queries, Epilogue::Bias)?, self.heads)?;
        let key = split_heads(&self.key.forward(keys, Epilogue::Bias)?, self.heads)?;
        let value = split_heads(&self.value.forward(values, Epilogue::Bias)?, self.heads)?;
        let context = merge_heads(&attend(&query, &key, &value, 1.0, None)?)?;
        self.out_proj
            .forward(&context, Epilogue::Residual(residual))
    }
}

#[derive(Debug, Clone)]
struct FeedForward {
    fc1: Dense,
    fc2: Dense,
    activation: Activation,
}

impl FeedForward {
    fn load(d: usize, width: usize, activation: Activation, vb: &VarBuilder) -> Result<Self> {
        Ok(Self {
            fc1: Dense::load(d, width, vb.pp("fc1"))?,
            fc2: Dense::load(width, d, vb.pp("fc2"))?,
            activation,
        })
    }

    /// The feed-forward block plus `xs`.
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let inner = dense_activation(&self.fc1, xs, self.activation)?;
        self.fc2.forward(&inner, Epilogue::Residual(xs))
    }
}

/// DETR's LayerNorms use torch's default epsilon.
const LAYER_NORM_EPS: f64 = 1e-5;

#[derive(Debug, Clone)]
struct EncoderLayer {
    self_attn: Attention,
    self_attn_layer_norm: LayerNorm,
    ffn: FeedForward,
    final_layer_norm: LayerNorm,
}

impl EncoderLayer {
    fn load(cfg: &DetrConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.d_model;
        Ok(Self {
            self_attn: Attention::load(d, cfg.encoder_attention_heads, vb.pp("self_attn"))?,
            self_attn_layer_norm: layer_norm(d, LAYER_NORM_EPS, vb.pp("self_attn_layer_norm"))?,
            ffn: FeedForward::load(d, cfg.encoder_ffn_dim, cfg.activation_function, &vb)?,
            final_layer_norm: layer_norm(d, LAYER_NORM_EPS, vb.pp("final_layer_norm"))?,
        })
    }

    fn forward(&self, xs: &Tensor, positions: &Tensor) -> Result<Tensor> {
        let xs = self
            .self_attn
            .self_attend(xs, positions)?
            .apply(&self.self_attn_layer_norm)?;
        self.ffn.forward(&xs)?.apply(&self.final_layer_norm)
    }
}

#[derive(Debug, Clone)]
struct DecoderLayer {
    self_attn: Attention,
    self_attn_layer_norm: LayerNorm,
    encoder_attn: Attention,
    encoder_attn_layer_norm: LayerNorm,
    ffn: FeedForward,
    final_layer_norm: LayerNorm,
}

impl DecoderLayer {
    fn load(cfg: &DetrConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.d_model;
        let heads = cfg.decoder_attention_heads;
        Ok(Self {
            self_attn: Attention::load(d, heads, vb.pp("self_attn"))?,
            self_attn_layer_norm: layer_norm(d, LAYER_NORM_EPS, vb.pp("self_attn_layer_norm"))?,
            encoder_attn: Attention::load(d, heads, vb.pp("encoder_attn"))?,
            encoder_attn_layer_norm: layer_norm(
                d,
                LAYER_NORM_EPS,
                vb.pp("encoder_attn_layer_norm"),
            )?,
            ffn: FeedForward::load(d, cfg.decoder_ffn_dim, cfg.activation_function, &vb)?,
            final_layer_norm: layer_norm(d, LAYER_NORM_EPS, vb.pp("final_layer_norm"))?,
        })
    }

    /// `keys` are the encoder states with their positions added.
    fn forward(
        &self,
        xs: &Tensor,
        query_positions: &Tensor,
        encoder_states: &Tensor,
        keys: &Tensor,
    ) -> Result<Tensor> {
        let xs = self
            .self_attn
            .self_attend(xs, query_positions)?
            .apply(&self.self_attn_layer_norm)?;
        let queries = (&xs + query_positions)?;
        let xs = self
            .encoder_attn
            .cross_attend(&queries, keys, encoder_states, &xs)?
            .apply(&self.encoder_attn_layer_norm)?;
        self.ffn.forward(&xs)?.apply(&self.final_layer_norm)
    }
}

/// DETR's sine position embedding of an unpadded `height` x `width` feature
/// map, `[1, height * width, 2 * half]` row-major, computed in float32 as
/// torch does (`normalize=True`, scale 2π, temperature 10000).
pub fn sine_positions(height: usize, width: usize, half: usize, device: &Device) -> Result<Tensor> {
    let scale = std::f32::consts::TAU;
    let dim_t: Vec<f32> = (0..half)
        .map(|k| 10000f32.powf((2 * (k / 2)) as f32 / half as f32))
        .collect();
    let encode = |position: f32, out: &mut Vec<f32>| {
        for (k, t) in dim_t.iter().enumerate() {
            let v = position / t;
            out.push(if k % 2 == 0 { v.sin() } else { v.cos() });
        }
    };
    let mut values = Vec::with_capacity(height * width * 2 * half);
    for y in 0..height {
        let y_embed = (y + 1) as f32 / (height as f32 + 1e-6) * scale;
        for x in 0..width {
            let x_embed = (x + 1) as f32 / (width as f32 + 1e-6) * scale;
            encode(y_embed, &mut values);
            encode(x_embed, &mut values);
        }
    }
    Tensor::from_vec(values, (1, height * width, 2 * half), device)
}

/// The DETR detection network.
#[derive(Debug, Clone)]
pub struct DetrForObjectDetection {
    backbone: ResNet,
    /// The 1x1 convolution to `d_model`, as a linear layer over pixels.
    input_projection: Dense,
    query_positions: Tensor,
    encoder: Vec<EncoderLayer>,
    decoder: Vec<DecoderLayer>,
    decoder_norm: LayerNorm,
    class_head: Linear,
    box_head: Mlp,
}

impl DetrForObjectDetection {
    /// Build from weights named as transformers saves them (`model.*`,
    /// `class_labels_classifier.*`, `bbox_predictor.*`).
    pub fn load(cfg: &DetrConfig, num_labels: usize, vb: VarBuilder) -> Result<Self> {
        let d = cfg.d_model;
        let model = vb.pp("model");
        let (names, first_stage, in_reduce) = match (&cfg.backbone_config, cfg.use_timm_backbone) {
            (Some(resnet), false) => (
                ResNetNames::Transformers,
                resnet.downsample_in_first_stage,
                resnet.downsample_in_bottleneck,
            ),
            _ => (ResNetNames::Timm, false, false),
        };
        let backbone = ResNet::load(
            model.pp("backbone.conv_encoder.model"),
            ResNetOptions {
                names,
                downsample_first_stage: first_stage,
                stride_in_reduce: in_reduce,
                channels_last: vb.device().is_cpu(),
            },
        )?;
        let projection = model.pp("input_projection");
        let weight = projection.get_unchecked_dtype("weight", candle_core::DType::F32)?;
        let channels = weight.dim(1)?;
        let input_projection = Dense::new(
            projection
                .get((d, channels, 1, 1), "weight")?
                .reshape((d, channels))?,
            Some(projection.get(d, "bias")?),
        )?;
        Ok(Self {
            backbone,
            input_projection,
            query_positions: model.get((cfg.num_queries, d), "query_position_embeddings.weight")?,
            encoder: (0..cfg.encoder_layers)
                .map(|i| EncoderLayer::load(cfg, model.pp("encoder.layers").pp(i)))
                .collect::<Result<_>>()?,
            decoder: (0..cfg.decoder_layers)
                .map(|i| DecoderLayer::load(cfg, model.pp("decoder.layers").pp(i)))
                .collect::<Result<_>>()?,
            decoder_norm: layer_norm(d, LAYER_NORM_EPS, model.pp("decoder.layernorm"))?,
            class_head: linear(d, num_labels + 1, vb.pp("class_labels_classifier"))?,
            box_head: Mlp::load(d, d, 4, 3, vb.pp("bbox_predictor"))?,
        })
    }

    /// The encoder's output `[1, H/32 * W/32, d_model]` for pixel values
    /// `[1, 3, H, W]`, with the sine positions of its feature map.
    pub fn encode(&self, pixel_values: &Tensor) -> Result<(Tensor, Tensor)> {
        let encoded = self.encode_all(pixel_values)?;
        Ok((encoded.memory, encoded.positions))
    }

    /// The backbone and the encoder, keeping what the segmentation head
    /// reads.
    pub(crate) fn encode_all(&self, pixel_values: &Tensor) -> Result<Encoded> {
        let (batch, _, height, width) = pixel_values.dims4()?;
        if batch != 1 {
            candle_core::bail!("DETR runs one image at a time, not {batch}");
        }
        if height < 32 || width < 32 {
            candle_core::bail!(
                "a {width}x{height} input is smaller than the backbone's 32-pixel stride"
            );
        }
        let mut stages = self.backbone.forward_stages(pixel_values)?;
        let last = stages
            .pop()
            .ok_or_else(|| candle_core::Error::Msg("the ResNet has no stages".into()))?;
        let (pixels, grid) = last.into_rows()?;
        let projected = self.input_projection.forward(&pixels, Epilogue::Bias)?;
        let d = projected.dim(1)?;
        let positions = sine_positions(grid.0, grid.1, d / 2, pixel_values.device())?;
        let mut xs = projected.unsqueeze(0)?;
        for layer in &self.encoder {
            xs = layer.forward(&xs, &positions)?;
        }
        Ok(Encoded {
            stages,
            projected,
            grid,
            memory: xs,
            positions,
        })
    }

    /// The decoder's output, after its final norm: `[1, queries, d_model]`.
    pub(crate) fn decode(&self, encoded: &Encoded) -> Result<Tensor> {
        let keys = (&encoded.memory + &encoded.positions)?;
        let query_positions = self.query_positions.unsqueeze(0)?;
        let mut xs = query_positions.zeros_like()?;
        for layer in &self.decoder {
            xs = layer.forward(&xs, &query_positions, &encoded.memory, &keys)?;
        }
        xs.apply(&self.decoder_norm)
    }

    /// `(logits, boxes)` of decoded queries.
    pub(crate) fn heads(&self, decoded: &Tensor) -> Result<(Tensor, Tensor)> {
        let logits = decoded.apply(&self.class_head)?;
        let boxes = candle_nn::ops::sigmoid(&self.box_head.forward(decoded)?)?;
        Ok((logits, boxes))
    }

    /// `(logits [1, queries, labels + 1], boxes [1, queries, 4])`; boxes
    /// are `(cx, cy, w, h)` in 0..1 of the processed image.
    pub fn forward(&self, pixel_values: &Tensor) -> Result<(Tensor, Tensor)> {
        let encoded = self.encode_all(pixel_values)?;
        self.heads(&self.decode(&encoded)?)
    }
}

/// What DETR's backbone and encoder computed for one image.
pub(crate) struct Encoded {
    /// The backbone's maps before the last (`H/4`, `H/8`, `H/16`).
    pub(crate) stages: Vec<FeatureMap>,
    /// The last map projected to `d_model`: `[H/32 * W/32, d_model]`.
    pub(crate) projected: Tensor,
    /// `(H/32, W/32)`.
    pub(crate) grid: (usize, usize),
    /// The encoder's output, `[1, H/32 * W/32, d_model]`.
    pub(crate) memory: Tensor,
    /// The sine positions of the grid.
    pub(crate) positions: Tensor,
}

impl DetectionModel for DetrForObjectDetection {
    fn predict(&self, pixel_values: &Tensor) -> std::result::Result<Predictions, LocalError> {
        let (logits, boxes) = self.forward(pixel_values)?;
        Predictions::first(&logits, &boxes)
    }
}

/// Build the network of a DETR checkpoint and its labels (no-object
/// excluded).
pub(crate) fn load(
    files: &ModelFiles,
    vb: VarBuilder,
) -> std::result::Result<(DetrForObjectDetection, Vec<String>), LocalError> {
    let config: DetrConfig = files.json("config.json")?;
    config
        .check()
        .map_err(|e| files.load_error(format!("config.json: {e}")))?;
    let num_labels = class_count(&config.id2label);
    let model = DetrForObjectDetection::load(&config, num_labels, vb)
        .map_err(|e| files.load_error(format!("weights: {e}")))?;
    Ok((model, class_names(&config.id2label, num_labels)))
}
