//! The dense prediction transformers for depth: `DPTForDepthEstimation` with
//! its own ViT (`Intel/dpt-large`) or the hybrid of a BiT ResNet and a ViT
//! (`Intel/dpt-hybrid-midas`), and `DepthAnythingForDepthEstimation` on a
//! DINOv2 backbone (`depth-anything/Depth-Anything-V2-*-hf`), as
//! transformers (4.57) computes them.
//!
//! Both take hidden states of a few backbone layers, reassemble them into
//! feature maps at four scales (a projection, then an up- or
//! down-sampling), fuse the maps from coarse to fine with pre-activation
//! residual units and bilinear upsampling, and turn the finest into depth
//! with a small convolutional head. Everything after the backbone runs on
//! channels-last maps ([`super::conv`]).

use super::bit::{BitBackbone, BitConfig};
use super::conv::{Conv, ConvTranspose, Interpolation, Rows, fold_batch_norm, resize};
use super::encoder::{Encoder, ImageSize, LayerStyle, PatchEmbeddings, VitConfig};
use crate::kernels::{Dense, Epilogue, dense_activation};
use candle_core::{Result, Tensor};
use candle_nn::{Activation, LayerNorm, VarBuilder, layer_norm};
use serde::Deserialize;
use serde_json::Value;

/// PyTorch's `BatchNorm2d` epsilon, which DPT's fusion residuals use.
const BATCH_NORM_EPS: f64 = 1e-5;

/// The parts of a DPT `config.json` hgpt reads (transformers' defaults
/// where absent).
#[derive(Debug, Clone, Deserialize)]
pub struct DptConfig {
    #[serde(flatten)]
    vit: VitConfig,
    #[serde(default)]
    is_hybrid: bool,
    #[serde(default)]
    backbone_config: Option<Value>,
    #[serde(default = "dpt_out_indices")]
    backbone_out_indices: Vec<usize>,
    #[serde(default = "project")]
    readout_type: String,
    #[serde(flatten)]
    neck: NeckConfig,
    #[serde(default)]
    use_batch_norm_in_fusion_residual: bool,
    #[serde(default)]
    use_bias_in_fusion_residual: Option<bool>,
    #[serde(default)]
    add_projection: bool,
    #[serde(default)]
    backbone_featmap_shape: Option<Vec<usize>>,
    #[serde(default)]
    neck_ignore_stages: Option<Vec<usize>>,
}

/// transformers' BiT configuration when a hybrid DPT's config has none.
fn default_hybrid_backbone() -> Value {
    serde_json::json!({
        "global_padding": "same",
        "layer_type": "bottleneck",
        "depths": [3, 4, 9],
        "out_features": ["stage1", "stage2", "stage3"],
        "embedding_dynamic_padding": true,
    })
}

/// The neck's sizes, shared by DPT and Depth Anything.
#[derive(Debug, Clone, Deserialize)]
struct NeckConfig {
    #[serde(default = "reassemble_factors")]
    reassemble_factors: Vec<f64>,
    #[serde(default = "neck_hidden_sizes")]
    neck_hidden_sizes: Vec<usize>,
    #[serde(default = "fusion_hidden_size")]
    fusion_hidden_size: usize,
    #[serde(default = "head_in_index")]
    head_in_index: i64,
}

fn dpt_out_indices() -> Vec<usize> {
    vec![2, 5, 8, 11]
}
fn project() -> String {
    "project".into()
}
fn reassemble_factors() -> Vec<f64> {
    vec![4.0, 2.0, 1.0, 0.5]
}
fn neck_hidden_sizes() -> Vec<usize> {
    vec![96, 192, 384, 768]
}
fn fusion_hidden_size() -> usize {
    256
}
fn head_in_index() -> i64 {
    -1
}

/// The parts of a Depth Anything `config.json` hgpt reads.
#[derive(Debug, Clone, Deserialize)]
pub struct DepthAnythingConfig {
    backbone_config: Option<Dinov2Config>,
    #[serde(default = "fourteen")]
    patch_size: usize,
    #[serde(default = "depth_anything_neck")]
    neck_hidden_sizes: Vec<usize>,
    #[serde(default = "sixty_four")]
    fusion_hidden_size: usize,
    #[serde(default = "reassemble_factors")]
    reassemble_factors: Vec<f64>,
    #[serde(default = "head_in_index")]
    head_in_index: i64,
    #[serde(default = "thirty_two")]
    head_hidden_size: usize,
    #[serde(default = "relative")]
    depth_estimation_type: String,
    #[serde(default)]
    max_depth: Option<f64>,
}

fn fourteen() -> usize {
    14
}
fn depth_anything_neck() -> Vec<usize> {
    vec![48, 96, 192, 384]
}
fn sixty_four() -> usize {
    64
}
fn thirty_two() -> usize {
    32
}
fn relative() -> String {
    "relative".into()
}

/// A DINOv2 backbone's `backbone_config`.
#[derive(Debug, Clone, Deserialize)]
struct Dinov2Config {
    #[serde(default)]
    model_type: Option<String>,
    #[serde(default = "dinov2_hidden")]
    hidden_size: usize,
    #[serde(default = "twelve")]
    num_hidden_layers: usize,
    #[serde(default = "twelve")]
    num_attention_heads: usize,
    #[serde(default = "four")]
    mlp_ratio: f64,
    #[serde(default = "gelu")]
    hidden_act: Activation,
    #[serde(default = "dinov2_eps")]
    layer_norm_eps: f64,
    #[serde(default = "dinov2_image")]
    image_size: ImageSize,
    #[serde(default = "fourteen")]
    patch_size: usize,
    #[serde(default = "three")]
    num_channels: usize,
    #[serde(default = "yes")]
    qkv_bias: bool,
    #[serde(default)]
    use_swiglu_ffn: bool,
    #[serde(default = "yes")]
    apply_layernorm: bool,
    #[serde(default)]
    out_indices: Option<Vec<usize>>,
    #[serde(default)]
    out_features: Option<Vec<String>>,
}

fn dinov2_hidden() -> usize {
    768
}
fn twelve() -> usize {
    12
}
fn four() -> f64 {
    4.0
}
fn gelu() -> Activation {
    Activation::Gelu
}
fn dinov2_eps() -> f64 {
    1e-6
}
fn dinov2_image() -> ImageSize {
    ImageSize::Square(224)
}
fn three() -> usize {
    3
}
fn yes() -> bool {
    true
}

impl Dinov2Config {
    /// The encoder's numbers in ViT terms.
    fn vit(&self) -> VitConfig {
        VitConfig {
            hidden_size: self.hidden_size,
            num_hidden_layers: self.num_hidden_layers,
            num_attention_heads: self.num_attention_heads,
            // transformers: int(hidden_size * mlp_ratio).
            intermediate_size: (self.hidden_size as f64 * self.mlp_ratio) as usize,
            hidden_act: self.hidden_act,
            layer_norm_eps: self.layer_norm_eps,
            image_size: Some(self.image_size),
            patch_size: self.patch_size,
            num_channels: self.num_channels,
            qkv_bias: self.qkv_bias,
            ..VitConfig::default()
        }
    }

    /// The hidden states the backbone hands on, as indices into
    /// `[embeddings, layer 1, ..., layer n]`: `out_indices`, else the
    /// `stageN` names of `out_features`, else the last layer.
    fn out_indices(&self) -> std::result::Result<Vec<usize>, String> {
        if let Some(indices) = &self.out_indices {
            return Ok(indices.clone());
        }
        match &self.out_features {
            None => Ok(vec![self.num_hidden_layers]),
            Some(names) => names
                .iter()
                .map(|name| match name.as_str() {
                    "stem" => Ok(0),
                    other => other
                        .strip_prefix("stage")
                        .and_then(|n| n.parse().ok())
                        .ok_or_else(|| format!("unknown backbone stage {other:?}")),
                })
                .collect(),
        }
    }
}

/// What the reassembly does with the `[CLS]` token (`readout_type`).
#[derive(Debug, Clone)]
enum Readout {
    /// Dropped.
    Ignore,
    /// Added to every patch token.
    Add,
    /// Concatenated to every patch token and projected back, then the
    /// activation.
    Project(Dense, Activation),
}

/// How a reassembled map changes scale.
#[derive(Debug, Clone)]
enum Rescale {
    Up(ConvTranspose),
    Keep,
    Down(Conv),
}

/// What the backbone hands the neck at one scale.
#[derive(Debug, Clone)]
enum StageInput {
    /// A transformer layer's tokens, `[1 + rows * cols, hidden]`, `[CLS]`
    /// first.
    Tokens(Tensor),
    /// A convolutional map (DPT-hybrid's first two scales).
    Map(Rows),
}

/// How one scale's tokens become a map: the readout, a 1x1 projection and
/// the rescaling.
#[derive(Debug, Clone)]
struct TokenMap {
    readout: Readout,
    projection: Conv,
    rescale: Rescale,
}

/// One scale of the neck: tokens (or a backbone map) to a map at the
/// fusion width.
#[derive(Debug, Clone)]
struct Reassemble {
    /// `None` for a scale that takes a backbone map as it is
    /// (`neck_ignore_stages`).
    tokens: Option<TokenMap>,
    /// The neck's 3x3 convolution to the fusion width (`neck.convs.{i}`).
    to_fusion: Conv,
}

impl Reassemble {
    fn load(
        vb: &VarBuilder,
        index: usize,
        (hidden, channels, fusion): (usize, usize, usize),
        factor: f64,
        readout: Option<Readout>,
    ) -> Result<Self> {
        let to_fusion = Conv::load(
            vb.pp("convs").pp(index),
            (channels, fusion),
            3,
            (1, 1),
            false,
        )?;
        let Some(readout) = readout else {
            return Ok(Self {
                tokens: None,
                to_fusion,
            });
        };
        let layer = vb.pp("reassemble_stage.layers").pp(index);
        let rescale = if factor > 1.0 && factor.fract() == 0.0 {
            Rescale::Up(ConvTranspose::load(
                layer.pp("resize"),
                (channels, channels),
                factor as usize,
            )?)
        } else if factor == 1.0 {
            Rescale::Keep
        } else if factor > 0.0 && factor < 1.0 && (1.0 / factor).fract() == 0.0 {
            let stride = (1.0 / factor) as usize;
            Rescale::Down(Conv::load(
                layer.pp("resize"),
                (channels, channels),
                3,
                (stride, 1),
                true,
            )?)
        } else {
            candle_core::bail!("reassemble factor {factor} is not an integer or its inverse");
        };
        Ok(Self {
            tokens: Some(TokenMap {
                readout,
                projection: Conv::load(
                    layer.pp("projection"),
                    (hidden, channels),
                    1,
                    (1, 0),
                    true,
                )?,
                rescale,
            }),
            to_fusion,
        })
    }

    /// One scale's input to a map at the fusion width.
    fn forward(&self, input: &StageInput, grid: (usize, usize)) -> Result<Rows> {
        let map = match (&self.tokens, input) {
            (Some(path), StageInput::Tokens(tokens)) => path.forward(tokens, grid)?,
            (None, StageInput::Map(map)) => map.clone(),
            _ => candle_core::bail!("the backbone's output does not fit the neck"),
        };
        self.to_fusion.forward(&map, Epilogue::Bias)
    }
}

impl TokenMap {
    /// `tokens` (`[1 + rows * cols, hidden]`, `[CLS]` first) to a map.
    fn forward(&self, tokens: &Tensor, grid: (usize, usize)) -> Result<Rows> {
        let count = grid.0 * grid.1;
        let (cls, patches) = (tokens.narrow(0, 0, 1)?, tokens.narrow(0, 1, count)?);
        let pixels = match &self.readout {
            Readout::Ignore => patches,
            Readout::Add => patches.broadcast_add(&cls)?,
            Readout::Project(dense, activation) => {
                let joined = Tensor::cat(&[&patches, &cls.broadcast_as(patches.shape())?], 1)?;
                dense_activation(dense, &joined, *activation)?
            }
        };
        let map = Rows { pixels, size: grid };
        let map = self.projection.forward(&map, Epilogue::Bias)?;
        match &self.rescale {
            Rescale::Up(conv) => conv.forward(&map),
            Rescale::Keep => Ok(map),
            Rescale::Down(conv) => conv.forward(&map, Epilogue::Bias),
        }
    }
}

/// `x + conv2(relu(conv1(relu(x))))`, batch norms folded into the
/// convolutions.
#[derive(Debug, Clone)]
struct PreActResidual {
    conv1: Conv,
    conv2: Conv,
}

impl PreActResidual {
    fn load(vb: VarBuilder, width: usize, batch_norm: bool, bias: bool) -> Result<Self> {
        let conv = |index: usize| -> Result<Conv> {
            let path = vb.pp(format!("convolution{index}"));
            let weight = path.get((width, width, 3, 3), "weight")?;
            let bias = bias.then(|| path.get(width, "bias")).transpose()?;
            if !batch_norm {
                return Conv::new(&weight, bias, 1, 1);
            }
            let norm = vb.pp(format!("batch_norm{index}"));
            let (weight, bias) = fold_batch_norm(&weight, bias.as_ref(), norm, BATCH_NORM_EPS)?;
            Conv::new(&weight, Some(bias), 1, 1)
        };
        Ok(Self {
            conv1: conv(1)?,
            conv2: conv(2)?,
        })
    }

    fn forward(&self, x: &Rows) -> Result<Rows> {
        let inner = self.conv1.forward(&x.relu()?, Epilogue::Relu)?;
        self.conv2.forward(&inner, Epilogue::Residual(&x.pixels))
    }
}

/// One fusion step: the coarser fused map plus this scale's map, refined,
/// upsampled and projected.
#[derive(Debug, Clone)]
struct Fusion {
    residual1: PreActResidual,
    residual2: PreActResidual,
    projection: Conv,
}

impl Fusion {
    /// `upsample` gives the size to upsample to from the refined map's.
    fn forward(
        &self,
        fused: &Rows,
        residual: Option<&Rows>,
        upsample_to: (usize, usize),
    ) -> Result<Rows> {
        let mut x = fused.clone();
        if let Some(residual) = residual {
            let residual = resize(
                residual,
                x.size,
                Interpolation::Bilinear {
                    align_corners: false,
                },
            )?;
            let refined = self.residual1.forward(&residual)?;
            x = Rows {
                pixels: (x.pixels + refined.pixels)?,
                size: x.size,
            };
        }
        let x = self.residual2.forward(&x)?;
        let x = resize(
            &x,
            upsample_to,
            Interpolation::Bilinear {
                align_corners: true,
            },
        )?;
        self.projection.forward(&x, Epilogue::Bias)
    }
}

/// The neck: reassembly at each scale, then fusion from coarse to fine.
#[derive(Debug, Clone)]
struct Neck {
    scales: Vec<Reassemble>,
    fusions: Vec<Fusion>,
    /// Depth Anything upsamples each fused map to the next scale's size
    /// (DPT doubles it).
    to_next_size: bool,
    head_in_index: usize,
}

/// How the residual units of a neck are built.
#[derive(Debug, Clone, Copy)]
struct FusionStyle {
    batch_norm: bool,
    bias: bool,
    to_next_size: bool,
}

impl Neck {
    fn load(
        vb: VarBuilder,
        config: &NeckConfig,
        hidden: usize,
        readout: impl Fn(usize) -> Result<Option<Readout>>,
        style: FusionStyle,
    ) -> Result<Self> {
        let fusion = config.fusion_hidden_size;
        let count = config.neck_hidden_sizes.len();
        if count == 0 || config.reassemble_factors.len() != count {
            candle_core::bail!(
                "{} reassemble factors for {count} neck sizes",
                config.reassemble_factors.len()
            );
        }
        let scales = config
            .neck_hidden_sizes
            .iter()
            .zip(&config.reassemble_factors)
            .enumerate()
            .map(|(i, (&channels, &factor))| {
                Reassemble::load(&vb, i, (hidden, channels, fusion), factor, readout(i)?)
            })
            .collect::<Result<_>>()?;
        let fusions = (0..count)
            .map(|i| {
                let layer = vb.pp("fusion_stage.layers").pp(i);
                Ok(Fusion {
                    residual1: PreActResidual::load(
                        layer.pp("residual_layer1"),
                        fusion,
                        style.batch_norm,
                        style.bias,
                    )?,
                    residual2: PreActResidual::load(
                        layer.pp("residual_layer2"),
                        fusion,
                        style.batch_norm,
                        style.bias,
                    )?,
                    projection: Conv::load(
                        layer.pp("projection"),
                        (fusion, fusion),
                        1,
                        (1, 0),
                        true,
                    )?,
                })
            })
            .collect::<Result<_>>()?;
        let head_in_index = match usize::try_from(config.head_in_index) {
            Ok(index) => index,
            Err(_) => count
                .checked_sub(config.head_in_index.unsigned_abs() as usize)
                .unwrap_or(count),
        };
        if head_in_index >= count {
            candle_core::bail!(
                "head_in_index {} is outside the {count} fused maps",
                config.head_in_index
            );
        }
        Ok(Self {
            scales,
            fusions,
            to_next_size: style.to_next_size,
            head_in_index,
        })
    }

    /// The fused map the head reads, from the backbone's output per scale.
    fn forward(&self, stages: &[StageInput], grid: (usize, usize)) -> Result<Rows> {
        if stages.len() != self.scales.len() {
            candle_core::bail!(
                "{} backbone states for {} neck scales",
                stages.len(),
                self.scales.len()
            );
        }
        let maps = self
            .scales
            .iter()
            .zip(stages)
            .map(|(scale, tokens)| scale.forward(tokens, grid))
            .collect::<Result<Vec<_>>>()?;
        // From the coarsest scale to the finest.
        let order: Vec<&Rows> = maps.iter().rev().collect();
        let mut fused: Option<Rows> = None;
        for (step, (map, fusion)) in order.iter().zip(&self.fusions).enumerate() {
            let base = fused.as_ref().unwrap_or(map);
            let upsample_to = match order.get(step + 1) {
                Some(next) if self.to_next_size => next.size,
                _ => (base.size.0 * 2, base.size.1 * 2),
            };
            let residual = fused.is_some().then_some(*map);
            let out = fusion.forward(base, residual, upsample_to)?;
            if step == self.head_in_index {
                return Ok(out);
            }
            fused = Some(out);
        }
        candle_core::bail!("the neck fused no map")
    }
}

/// The depth head.
#[derive(Debug, Clone)]
enum DepthHead {
    /// DPT's: an optional 3x3 projection (with ReLU), a 3x3 convolution to
    /// half the width, upsampling by 2, a 3x3 convolution to 32 with ReLU, a
    /// 1x1 convolution to depth with ReLU.
    Dpt {
        projection: Option<Conv>,
        convs: [Conv; 3],
    },
    /// Depth Anything's: as DPT's without the projection, upsampling to the
    /// patch grid times the patch size, and a sigmoid times `max_depth` for
    /// metric depth.
    DepthAnything {
        convs: [Conv; 3],
        patch_size: usize,
        metric: bool,
        max_depth: f64,
    },
}

impl DepthHead {
    /// The depth `[height * width]` of the fused map, and its size.
    fn forward(&self, x: &Rows, grid: (usize, usize)) -> Result<(Vec<f32>, (usize, usize))> {
        let align = Interpolation::Bilinear {
            align_corners: true,
        };
        let (convs, upsample_to) = match self {
            Self::Dpt { convs, .. } => (convs, None),
            Self::DepthAnything {
                convs, patch_size, ..
            } => (convs, Some((grid.0 * patch_size, grid.1 * patch_size))),
        };
        let mut x = x.clone();
        if let Self::Dpt {
            projection: Some(projection),
            ..
        } = self
        {
            x = projection.forward(&x, Epilogue::Relu)?;
        }
        let x = convs[0].forward(&x, Epilogue::Bias)?;
        let size = upsample_to.unwrap_or((x.size.0 * 2, x.size.1 * 2));
        let x = resize(&x, size, align)?;
        let x = convs[1].forward(&x, Epilogue::Relu)?;
        let out = match self {
            Self::DepthAnything {
                metric: true,
                max_depth,
                ..
            } => {
                let raw = convs[2].forward(&x, Epilogue::Bias)?;
                let depth = candle_nn::ops::sigmoid(&raw.pixels)?.affine(*max_depth, 0.0)?;
                Rows {
                    pixels: depth,
                    size: raw.size,
                }
            }
            Self::DepthAnything { max_depth, .. } => {
                let depth = convs[2].forward(&x, Epilogue::Relu)?;
                Rows {
                    pixels: depth.pixels.affine(*max_depth, 0.0)?,
                    size: depth.size,
                }
            }
            Self::Dpt { .. } => convs[2].forward(&x, Epilogue::Relu)?,
        };
        Ok((out.pixels.flatten_all()?.to_vec1::<f32>()?, out.size))
    }
}

/// How position embeddings are resized to another patch grid.
#[derive(Debug, Clone, Copy)]
enum PositionResize {
    /// DPT's ViT: bilinear, `align_corners=False`.
    Bilinear,
    /// DINOv2: bicubic.
    Bicubic,
}

/// How the backbone turns pixels into patch tokens.
#[derive(Debug, Clone)]
enum Patchify {
    /// Non-overlapping patches through one linear layer.
    Linear(PatchEmbeddings),
    /// DPT-hybrid: BiT's last stage map through a 1x1 projection; the maps of
    /// its other stages go to the neck as they are.
    Hybrid {
        bit: BitBackbone,
        projection: Conv,
        patch_size: usize,
        /// The one input size the hybrid takes (`image_size`).
        image_size: (usize, usize),
    },
}

/// The ViT-shaped backbone: `[CLS]` and patch tokens with position
/// embeddings, the encoder layers, and which layers' states the neck reads.
#[derive(Debug, Clone)]
struct Backbone {
    cls_token: Tensor,
    /// `[1 + side * side, hidden]`.
    position_embeddings: Tensor,
    position_side: usize,
    position_resize: PositionResize,
    patches: Patchify,
    encoder: Encoder,
    /// DINOv2's final LayerNorm, applied to each state handed on.
    layernorm: Option<LayerNorm>,
    /// Indices into `[embeddings, layer 1, ..., layer n]`.
    out_indices: Vec<usize>,
}

impl Backbone {
    fn load(
        cfg: &VitConfig,
        style: LayerStyle,
        vb: VarBuilder,
        out_indices: Vec<usize>,
        final_norm: bool,
        hybrid: Option<&BitConfig>,
    ) -> Result<Self> {
        let hidden = cfg.hidden_size;
        let grid = cfg
            .check((384, 384))
            .map_err(|e| candle_core::Error::Msg(format!("config: {e}")))?;
        if let Some(&index) = out_indices.iter().find(|&&i| i > cfg.num_hidden_layers) {
            candle_core::bail!(
                "backbone output {index} is past the last of {} layers",
                cfg.num_hidden_layers
            );
        }
        let embeddings = vb.pp("embeddings");
        let position_embeddings = embeddings
            .get((1, 1 + grid.0 * grid.1, hidden), "position_embeddings")?
            .squeeze(0)?;
        if grid.0 != grid.1 {
            candle_core::bail!(
                "the position embeddings' grid ({}x{}) is not square",
                grid.1,
                grid.0
            );
        }
        Ok(Self {
            cls_token: embeddings
                .get((1, 1, hidden), "cls_token")?
                .reshape((1, hidden))?,
            position_embeddings,
            position_side: grid.0,
            position_resize: match style {
                LayerStyle::Vit => PositionResize::Bilinear,
                LayerStyle::Dinov2 => PositionResize::Bicubic,
            },
            patches: match hybrid {
                None => Patchify::Linear(PatchEmbeddings::load(
                    cfg,
                    embeddings.pp("patch_embeddings"),
                )?),
                Some(bit) => {
                    let projection = embeddings.pp("projection");
                    let weight =
                        projection.get_unchecked_dtype("weight", candle_core::DType::F32)?;
                    let bias = projection.get(weight.dim(0)?, "bias")?;
                    Patchify::Hybrid {
                        bit: BitBackbone::load(bit, embeddings.pp("backbone"))?,
                        projection: Conv::new(&weight, Some(bias), 1, 0)?,
                        patch_size: cfg.patch_size,
                        image_size: (grid.0 * cfg.patch_size, grid.1 * cfg.patch_size),
                    }
                }
            },
            encoder: Encoder::load_styled(cfg, style, vb.pp("encoder"))?,
            layernorm: final_norm
                .then(|| layer_norm(hidden, cfg.layer_norm_eps, vb.pp("layernorm")))
                .transpose()?,
            out_indices,
        })
    }

    /// The position embeddings for a patch grid.
    fn positions(&self, grid: (usize, usize)) -> Result<Tensor> {
        let side = self.position_side;
        if grid == (side, side) {
            return Ok(self.position_embeddings.clone());
        }
        let kind = match self.position_resize {
            PositionResize::Bilinear => Interpolation::Bilinear {
                align_corners: false,
            },
            PositionResize::Bicubic => Interpolation::Bicubic,
        };
        let patches = Rows {
            pixels: self.position_embeddings.narrow(0, 1, side * side)?,
            size: (side, side),
        };
        let resized = resize(&patches, grid, kind)?;
        Tensor::cat(
            &[&self.position_embeddings.narrow(0, 0, 1)?, &resized.pixels],
            0,
        )
    }

    /// The patch tokens (`[rows * cols, hidden]`), their grid, and the maps a
    /// hybrid hands the neck directly.
    fn patchify(&self, pixel_values: &Tensor) -> Result<(Tensor, (usize, usize), Vec<Rows>)> {
        let (_, _, height, width) = pixel_values.dims4()?;
        match &self.patches {
            Patchify::Linear(patches) => {
                let grid = patches.grid(height, width);
                if grid.0 == 0 || grid.1 == 0 {
                    candle_core::bail!("a {width}x{height} input is smaller than one patch");
                }
                Ok((patches.forward(pixel_values)?.squeeze(0)?, grid, Vec::new()))
            }
            Patchify::Hybrid {
                bit,
                projection,
                patch_size,
                image_size,
            } => {
                if (height, width) != *image_size {
                    candle_core::bail!(
                        "DPT-hybrid takes {}x{} inputs only; the processed image is {width}x{height}",
                        image_size.1,
                        image_size.0
                    );
                }
                let mut maps = bit.forward(pixel_values)?;
                let Some(last) = maps.pop() else {
                    candle_core::bail!("the BiT backbone has no stages");
                };
                let grid = (height / patch_size, width / patch_size);
                if last.size != grid {
                    candle_core::bail!(
                        "the BiT backbone's map ({}x{}) does not fit the {}x{} patch grid",
                        last.size.1,
                        last.size.0,
                        grid.1,
                        grid.0
                    );
                }
                let tokens = projection.forward(&last, Epilogue::Bias)?.pixels;
                Ok((tokens, grid, maps))
            }
        }
    }

    /// What the neck reads (a hybrid's backbone maps, then the selected
    /// layers' states, `[1 + rows * cols, hidden]` each) and the patch grid,
    /// for pixel values `[1, 3, H, W]`.
    fn forward(&self, pixel_values: &Tensor) -> Result<(Vec<StageInput>, (usize, usize))> {
        let (patches, grid, maps) = self.patchify(pixel_values)?;
        let tokens = Tensor::cat(&[&self.cls_token, &patches], 0)?
            .broadcast_add(&self.positions(grid)?)?
            .unsqueeze(0)?;
        let last = self.out_indices.iter().copied().max().unwrap_or(0);
        let mut kept = vec![None; self.out_indices.len()];
        let mut keep = |index: usize, state: &Tensor| -> Result<()> {
            for (slot, _) in kept
                .iter_mut()
                .zip(&self.out_indices)
                .filter(|(_, i)| **i == index)
            {
                let state = state.squeeze(0)?;
                *slot = Some(match &self.layernorm {
                    Some(norm) => state.apply(norm)?,
                    None => state,
                });
            }
            Ok(())
        };
        keep(0, &tokens)?;
        self.encoder.forward_with(&tokens, |i, state| {
            if i < last {
                keep(i + 1, &state)?;
            }
            Ok(state)
        })?;
        let states = kept.into_iter().map(|state| {
            state
                .map(StageInput::Tokens)
                .ok_or_else(|| candle_core::Error::Msg("a backbone state was not kept".into()))
        });
        let inputs = maps
            .into_iter()
            .map(|map| Ok(StageInput::Map(map)))
            .chain(states)
            .collect::<Result<Vec<_>>>()?;
        Ok((inputs, grid))
    }
}

/// A depth network of either family: backbone, neck and head.
#[derive(Debug, Clone)]
pub struct DptForDepthEstimation {
    backbone: Backbone,
    neck: Neck,
    head: DepthHead,
    /// DPT's own ViT reshapes its tokens to a square grid.
    square_only: bool,
}

impl DptForDepthEstimation {
    /// `DPTForDepthEstimation` with its own ViT (`dpt.*`, `neck.*`,
    /// `head.*`).
    pub fn load_dpt(config: &DptConfig, vb: VarBuilder) -> Result<Self> {
        let backbone_config = config.backbone_config.clone().filter(|v| !v.is_null());
        let bit = match (config.is_hybrid, backbone_config) {
            (false, None) => None,
            (false, Some(_)) => candle_core::bail!(
                "DPT on a separate backbone (backbone_config) is not supported; DPT with its own ViT or BiT hybrid is"
            ),
            (true, value) => {
                let value = value.unwrap_or_else(default_hybrid_backbone);
                let bit: BitConfig = serde_json::from_value(value)
                    .map_err(|e| candle_core::Error::Msg(format!("backbone_config: {e}")))?;
                Some(bit)
            }
        };
        // A hybrid's first two scales are BiT maps, handed on unchanged.
        let ignored: &[usize] = match &bit {
            Some(_) => &[0, 1],
            None => &[],
        };
        let ignore_stages = config.neck_ignore_stages.as_deref();
        if bit.is_some() && ignore_stages.is_some_and(|stages| stages != ignored) {
            candle_core::bail!("DPT-hybrid needs neck_ignore_stages [0, 1]");
        }
        let vit = &config.vit;
        let hidden = vit.hidden_size;
        let readout = |i: usize| -> Result<Option<Readout>> {
            if ignored.contains(&i) {
                return Ok(None);
            }
            Ok(Some(match config.readout_type.as_str() {
                "ignore" => Readout::Ignore,
                "add" => Readout::Add,
                "project" => Readout::Project(
                    Dense::load(
                        2 * hidden,
                        hidden,
                        vb.pp("neck.reassemble_stage.readout_projects").pp(i).pp(0),
                    )?,
                    vit.hidden_act,
                ),
                other => candle_core::bail!("unknown readout_type {other:?}"),
            }))
        };
        let batch_norm = config.use_batch_norm_in_fusion_residual;
        let style = FusionStyle {
            batch_norm,
            bias: config.use_bias_in_fusion_residual.unwrap_or(!batch_norm),
            to_next_size: false,
        };
        let neck = Neck::load(vb.pp("neck"), &config.neck, hidden, readout, style)?;
        let fusion = config.neck.fusion_hidden_size;
        if fusion < 2 {
            candle_core::bail!("fusion_hidden_size {fusion} is too small for the head");
        }
        let head = vb.pp("head");
        let projection = config
            .add_projection
            .then(|| Conv::load(head.pp("projection"), (fusion, fusion), 3, (1, 1), true))
            .transpose()?;
        let convs = [
            Conv::load(head.pp("head.0"), (fusion, fusion / 2), 3, (1, 1), true)?,
            Conv::load(head.pp("head.2"), (fusion / 2, 32), 3, (1, 1), true)?,
            Conv::load(head.pp("head.4"), (32, 1), 1, (1, 0), true)?,
        ];
        // transformers' hidden_states include the embeddings first; a hybrid
        // takes the layers after its BiT maps'.
        let out_indices = config
            .backbone_out_indices
            .iter()
            .skip(ignored.len())
            .map(|i| i + 1)
            .collect();
        if let (Some(_), Some(shape)) = (&bit, &config.backbone_featmap_shape)
            && shape.len() != 4
        {
            candle_core::bail!("backbone_featmap_shape {shape:?} is not [1, C, H, W]");
        }
        Ok(Self {
            backbone: Backbone::load(
                vit,
                LayerStyle::Vit,
                vb.pp("dpt"),
                out_indices,
                false,
                bit.as_ref(),
            )?,
            neck,
            head: DepthHead::Dpt { projection, convs },
            square_only: bit.is_none(),
        })
    }

    /// `DepthAnythingForDepthEstimation` (`backbone.*`, `neck.*`, `head.*`).
    pub fn load_depth_anything(config: &DepthAnythingConfig, vb: VarBuilder) -> Result<Self> {
        let Some(backbone) = &config.backbone_config else {
            candle_core::bail!("Depth Anything needs a backbone_config");
        };
        if backbone
            .model_type
            .as_deref()
            .is_some_and(|t| t != "dinov2")
        {
            candle_core::bail!(
                "a {:?} backbone is not supported; DINOv2 is",
                backbone.model_type.as_deref().unwrap_or_default()
            );
        }
        if backbone.use_swiglu_ffn {
            candle_core::bail!("DINOv2 with SwiGLU feed-forward layers (giant) is not supported");
        }
        if backbone.patch_size != config.patch_size {
            candle_core::bail!(
                "the backbone's patch size {} differs from the head's {}",
                backbone.patch_size,
                config.patch_size
            );
        }
        let metric = match config.depth_estimation_type.as_str() {
            "relative" => false,
            "metric" => true,
            other => candle_core::bail!("unknown depth_estimation_type {other:?}"),
        };
        let neck_config = NeckConfig {
            reassemble_factors: config.reassemble_factors.clone(),
            neck_hidden_sizes: config.neck_hidden_sizes.clone(),
            fusion_hidden_size: config.fusion_hidden_size,
            head_in_index: config.head_in_index,
        };
        let hidden = backbone.hidden_size;
        let style = FusionStyle {
            batch_norm: false,
            bias: true,
            to_next_size: true,
        };
        let neck = Neck::load(
            vb.pp("neck"),
            &neck_config,
            hidden,
            |_| Ok(Some(Readout::Ignore)),
            style,
        )?;
        let fusion = config.fusion_hidden_size;
        if fusion < 2 {
            candle_core::bail!("fusion_hidden_size {fusion} is too small for the head");
        }
        let head = vb.pp("head");
        let convs = [
            Conv::load(head.pp("conv1"), (fusion, fusion / 2), 3, (1, 1), true)?,
            Conv::load(
                head.pp("conv2"),
                (fusion / 2, config.head_hidden_size),
                3,
                (1, 1),
                true,
            )?,
            Conv::load(
                head.pp("conv3"),
                (config.head_hidden_size, 1),
                1,
                (1, 0),
                true,
            )?,
        ];
        let out_indices = backbone.out_indices().map_err(candle_core::Error::Msg)?;
        Ok(Self {
            backbone: Backbone::load(
                &backbone.vit(),
                LayerStyle::Dinov2,
                vb.pp("backbone"),
                out_indices,
                backbone.apply_layernorm,
                None,
            )?,
            neck,
            head: DepthHead::DepthAnything {
                convs,
                patch_size: config.patch_size,
                metric,
                // transformers: max_depth if max_depth else 1.
                max_depth: config.max_depth.filter(|d| *d != 0.0).unwrap_or(1.0),
            },
            square_only: false,
        })
    }

    /// The predicted depth `[height * width]` (row-major) and its `(height,
    /// width)`, for pixel values `[1, 3, H, W]`.
    pub fn forward(&self, pixel_values: &Tensor) -> Result<(Vec<f32>, (usize, usize))> {
        let (_, _, height, width) = pixel_values.dims4()?;
        let grid = match &self.backbone.patches {
            Patchify::Linear(patches) => patches.grid(height, width),
            Patchify::Hybrid { .. } => (0, 0),
        };
        if self.square_only && grid.0 != grid.1 {
            candle_core::bail!(
                "DPT's ViT needs a square patch grid; the processed image ({width}x{height}) gives {}x{}",
                grid.1,
                grid.0
            );
        }
        let (states, grid) = self.backbone.forward(pixel_values)?;
        let fused = self.neck.forward(&states, grid)?;
        self.head.forward(&fused, grid)
    }
}
