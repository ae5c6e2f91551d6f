//! The ViT transformer shared by ViT, YOLOS, DPT and (with layer scales)
//! DINOv2: config, patch embedding and pre-norm encoder layers
//! (`layernorm_before` -> attention -> residual -> `layernorm_after` -> MLP
//! -> residual), with the transformers weight names.

use super::attention::self_attention;
use crate::kernels::{Dense, Epilogue, dense_activation};
use candle_core::{Result, Tensor};
use candle_nn::{Activation, LayerNorm, VarBuilder, layer_norm};
use serde::Deserialize;
use std::collections::BTreeMap;

/// `image_size` of a config: one side, or `[height, width]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum ImageSize {
    /// A square.
    Square(usize),
    /// `[height, width]`.
    Pair([usize; 2]),
}

impl ImageSize {
    /// `(height, width)`.
    pub fn hw(self) -> (usize, usize) {
        match self {
            Self::Square(n) => (n, n),
            Self::Pair([h, w]) => (h, w),
        }
    }
}

/// The parts of a ViT or YOLOS `config.json` that hgpt reads (transformers
/// defaults where a field is absent).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct VitConfig {
    /// Width of the token vectors.
    pub hidden_size: usize,
    /// Number of encoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads per layer.
    pub num_attention_heads: usize,
    /// Width of the MLP.
    pub intermediate_size: usize,
    /// MLP activation (`gelu` is the exact erf form).
    pub hidden_act: Activation,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
    /// Input size the position embeddings were trained for (`None`: the
    /// family's default).
    pub image_size: Option<ImageSize>,
    /// Side of a square patch.
    pub patch_size: usize,
    /// Input channels.
    pub num_channels: usize,
    /// Whether query, key and value have biases.
    pub qkv_bias: bool,
    /// Class index (as a string) to label.
    pub id2label: BTreeMap<String, String>,
    /// `single_label_classification`, `multi_label_classification`, ...
    pub problem_type: Option<String>,
    /// YOLOS: number of detection tokens.
    pub num_detection_tokens: usize,
    /// YOLOS: whether position embeddings are added after every layer but the last.
    pub use_mid_position_embeddings: bool,
}

impl Default for VitConfig {
    fn default() -> Self {
        Self {
            hidden_size: 768,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            intermediate_size: 3072,
            hidden_act: Activation::Gelu,
            layer_norm_eps: 1e-12,
            image_size: None,
            patch_size: 16,
            num_channels: 3,
            qkv_bias: true,
            id2label: BTreeMap::new(),
            problem_type: None,
            num_detection_tokens: 100,
            use_mid_position_embeddings: true,
        }
    }
}

impl VitConfig {
    /// Check the numbers the model is built from; `default_size` is the
    /// family's default `image_size`. Returns the patch grid `(rows, cols)`.
    pub fn check(
        &self,
        default_size: (usize, usize),
    ) -> std::result::Result<(usize, usize), String> {
        if self.hidden_size == 0 || self.num_attention_heads == 0 {
            return Err("hidden_size and num_attention_heads must be positive".into());
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if self.num_hidden_layers == 0 {
            return Err("num_hidden_layers must be positive".into());
        }
        if self.num_channels != 3 {
            return Err(format!(
                "num_channels is {}; only RGB models (3) are supported",
                self.num_channels
            ));
        }
        if !(self.layer_norm_eps.is_finite() && self.layer_norm_eps >= 0.0) {
            return Err("layer_norm_eps must be a non-negative number".into());
        }
        let (h, w) = self.image_size.map_or(default_size, ImageSize::hw);
        if self.patch_size == 0 || h < self.patch_size || w < self.patch_size {
            return Err(format!(
                "patch_size {} does not fit image_size {h}x{w}",
                self.patch_size
            ));
        }
        Ok((h / self.patch_size, w / self.patch_size))
    }

    /// The labels by class index, `LABEL_i` where `id2label` has none.
    pub fn labels(&self, count: usize) -> Vec<String> {
        class_names(&self.id2label, count)
    }

    /// Number of classes (`len(id2label)`, 2 when absent, as transformers).
    pub fn num_labels(&self) -> usize {
        class_count(&self.id2label)
    }
}

/// Class names by index from a config's `id2label`, `LABEL_i` where it has
/// none (as transformers names them).
pub(crate) fn class_names(id2label: &BTreeMap<String, String>, count: usize) -> Vec<String> {
    (0..count)
        .map(|i| {
            id2label
                .get(&i.to_string())
                .cloned()
                .unwrap_or_else(|| format!("LABEL_{i}"))
        })
        .collect()
}

/// Number of classes a config's `id2label` gives: its length, 2 when it is
/// absent (transformers' default).
pub(crate) fn class_count(id2label: &BTreeMap<String, String>) -> usize {
    if id2label.is_empty() {
        2
    } else {
        id2label.len()
    }
}

/// Non-overlapping patches projected as a strided convolution does:
/// `[B, 3, H, W]` -> `[B, rows * cols, hidden]`. The patches are cut out as
/// rows of `channels * patch * patch` values and go through one linear
/// layer (the convolution's weights, flattened).
#[derive(Debug, Clone)]
pub(crate) struct PatchEmbeddings {
    projection: Dense,
    patch_size: usize,
}

impl PatchEmbeddings {
    pub(crate) fn load(cfg: &VitConfig, vb: VarBuilder) -> Result<Self> {
        let (p, c, d) = (cfg.patch_size, cfg.num_channels, cfg.hidden_size);
        let vb = vb.pp("projection");
        Self::new(vb.get((d, c, p, p), "weight")?, Some(vb.get(d, "bias")?))
    }

    /// From a convolution's `weight` (`[hidden, channels, patch, patch]`)
    /// and `bias`.
    pub(crate) fn new(weight: Tensor, bias: Option<Tensor>) -> Result<Self> {
        let (d, c, p, _) = weight.dims4()?;
        Ok(Self {
            projection: Dense::new(weight.reshape((d, c * p * p))?, bias)?,
            patch_size: p,
        })
    }

    /// The patch grid `(rows, cols)` of an input of `height` x `width`.
    pub(crate) fn grid(&self, height: usize, width: usize) -> (usize, usize) {
        (height / self.patch_size, width / self.patch_size)
    }

    pub(crate) fn forward(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let (batch, channels, height, width) = pixel_values.dims4()?;
        let p = self.patch_size;
        let (rows, cols) = self.grid(height, width);
        // Pixels past the last whole patch are left out, as the
        // convolution leaves them.
        let patches = pixel_values
            .narrow(2, 0, rows * p)?
            .narrow(3, 0, cols * p)?
            .reshape((batch, channels, rows, p, cols, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .reshape((batch, rows * cols, channels * p * p))?;
        self.projection.forward(&patches, Epilogue::Bias)
    }
}

/// How an encoder's layers name their weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LayerStyle {
    /// ViT's: `layernorm_before`, `intermediate.dense`, `output.dense`,
    /// `layernorm_after`.
    Vit,
    /// DINOv2's: `norm1`, `mlp.fc1`, `mlp.fc2`, `norm2`, and layer scales
    /// (`layer_scale{1,2}.lambda1`) on both branches, folded into the
    /// attention output and `fc2` at load time.
    Dinov2,
}

#[derive(Debug, Clone)]
struct Layer {
    /// Query (scaled by `1 / sqrt(head_size)`), key and value side by side.
    qkv: Dense,
    attention_output: Dense,
    intermediate: Dense,
    output: Dense,
    layernorm_before: LayerNorm,
    layernorm_after: LayerNorm,
    activation: Activation,
    heads: usize,
}

impl Layer {
    fn load(cfg: &VitConfig, style: LayerStyle, vb: VarBuilder) -> Result<Self> {
        let hidden = cfg.hidden_size;
        let heads = cfg.num_attention_heads;
        let part = |name: &str| -> Result<(Tensor, Tensor)> {
            let vb = vb.pp("attention").pp("attention").pp(name);
            let weight = vb.get((hidden, hidden), "weight")?;
            let bias = if cfg.qkv_bias {
                vb.get(hidden, "bias")?
            } else {
                Tensor::zeros(hidden, weight.dtype(), weight.device())?
            };
            Ok((weight, bias))
        };
        let (q, k, v) = (part("query")?, part("key")?, part("value")?);
        // Scaling the query scales the attention scores as ViT does.
        let scale = 1.0 / ((hidden / heads) as f64).sqrt();
        let q = ((q.0 * scale)?, (q.1 * scale)?);
        let inner = cfg.intermediate_size;
        let (before, intermediate, output, after) = match style {
            LayerStyle::Vit => (
                "layernorm_before",
                "intermediate.dense",
                "output.dense",
                "layernorm_after",
            ),
            LayerStyle::Dinov2 => ("norm1", "mlp.fc1", "mlp.fc2", "norm2"),
        };
        // `x W^T + b` scaled per output by `layer_scale`, when the style has one.
        let scaled = |inputs: usize, path: &str, layer_scale: &str| -> Result<Dense> {
            let dense = vb.pp(path);
            let weight = dense.get((hidden, inputs), "weight")?;
            let bias = dense.get(hidden, "bias")?;
            if style == LayerStyle::Vit {
                return Dense::new(weight, Some(bias));
            }
            let lambda = vb.pp(layer_scale).get(hidden, "lambda1")?;
            Dense::new(
                weight.broadcast_mul(&lambda.unsqueeze(1)?)?,
                Some((bias * lambda)?),
            )
        };
        Ok(Self {
            qkv: Dense::from_parts(&[q.0, k.0, v.0], &[q.1, k.1, v.1])?,
            attention_output: scaled(hidden, "attention.output.dense", "layer_scale1")?,
            intermediate: Dense::load(hidden, inner, vb.pp(intermediate))?,
            output: scaled(inner, output, "layer_scale2")?,
            layernorm_before: layer_norm(hidden, cfg.layer_norm_eps, vb.pp(before))?,
            layernorm_after: layer_norm(hidden, cfg.layer_norm_eps, vb.pp(after))?,
            activation: cfg.hidden_act,
            heads,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let qkv = self
            .qkv
            .forward(&xs.apply(&self.layernorm_before)?, Epilogue::Bias)?;
        let context = self_attention(&qkv, self.heads, false)?;
        let xs = self
            .attention_output
            .forward(&context, Epilogue::Residual(xs))?;
        let inner = dense_activation(
            &self.intermediate,
            &xs.apply(&self.layernorm_after)?,
            self.activation,
        )?;
        self.output.forward(&inner, Epilogue::Residual(&xs))
    }
}

/// The stack of encoder layers (`encoder.layer.{i}`).
#[derive(Debug, Clone)]
pub(crate) struct Encoder {
    layers: Vec<Layer>,
}

impl Encoder {
    pub(crate) fn load(cfg: &VitConfig, vb: VarBuilder) -> Result<Self> {
        Self::load_styled(cfg, LayerStyle::Vit, vb)
    }

    /// These layers for inputs of a few hundred tokens at most (ViLT's image
    /// patches and text), where repacking the weights on every call costs
    /// more than the few-rows kernel loses: see [`Dense::for_few_rows`].
    pub(crate) fn for_few_rows(self) -> Result<Self> {
        let layers = self
            .layers
            .into_iter()
            .map(|layer| {
                Ok(Layer {
                    qkv: layer.qkv.for_few_rows()?,
                    attention_output: layer.attention_output.for_few_rows()?,
                    intermediate: layer.intermediate.for_few_rows()?,
                    output: layer.output.for_few_rows()?,
                    ..layer
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self { layers })
    }

    /// Layers named and built as `style` says.
    pub(crate) fn load_styled(cfg: &VitConfig, style: LayerStyle, vb: VarBuilder) -> Result<Self> {
        let vb = vb.pp("layer");
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| Layer::load(cfg, style, vb.pp(i)))
            .collect::<Result<_>>()?;
        Ok(Self { layers })
    }

    /// Run every layer; `after(i, hidden)` may change the output of layer `i`.
    pub(crate) fn forward_with(
        &self,
        xs: &Tensor,
        mut after: impl FnMut(usize, Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let mut xs = xs.clone();
        for (i, layer) in self.layers.iter().enumerate() {
            xs = after(i, layer.forward(&xs)?)?;
        }
        Ok(xs)
    }
}

/// The bare ViT (`ViTModel`): `[CLS]` plus patch tokens, position
/// embeddings, the encoder and the final LayerNorm. Its output is every
/// token's state, `[batch, 1 + rows * cols, hidden]`.
#[derive(Debug, Clone)]
pub(crate) struct VitModel {
    cls_token: Tensor,
    position_embeddings: Tensor,
    patches: PatchEmbeddings,
    encoder: Encoder,
    layernorm: LayerNorm,
    grid: (usize, usize),
    hidden: usize,
}

impl VitModel {
    /// Build from weights under `vb` (`embeddings.*`, `encoder.*`,
    /// `layernorm.*`); `grid` is the patch grid of the configured image size.
    pub(crate) fn load(cfg: &VitConfig, grid: (usize, usize), vb: VarBuilder) -> Result<Self> {
        let hidden = cfg.hidden_size;
        let embeddings = vb.pp("embeddings");
        Ok(Self {
            cls_token: embeddings.get((1, 1, hidden), "cls_token")?,
            position_embeddings: embeddings
                .get((1, 1 + grid.0 * grid.1, hidden), "position_embeddings")?,
            patches: PatchEmbeddings::load(cfg, embeddings.pp("patch_embeddings"))?,
            encoder: Encoder::load(cfg, vb.pp("encoder"))?,
            layernorm: layer_norm(hidden, cfg.layer_norm_eps, vb.pp("layernorm"))?,
            grid,
            hidden,
        })
    }

    /// Every token's final state for pixel values `[batch, 3, H, W]`.
    pub(crate) fn forward(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let (batch, _, height, width) = pixel_values.dims4()?;
        let grid = self.patches.grid(height, width);
        if grid != self.grid {
            candle_core::bail!(
                "a {width}x{height} input gives a {}x{} patch grid; the model expects {}x{}",
                grid.1,
                grid.0,
                self.grid.1,
                self.grid.0
            );
        }
        let patches = self.patches.forward(pixel_values)?;
        let cls = self
            .cls_token
            .broadcast_as((batch, 1, self.hidden))?
            .contiguous()?;
        let xs = Tensor::cat(&[&cls, &patches], 1)?.broadcast_add(&self.position_embeddings)?;
        self.encoder
            .forward_with(&xs, |_, hs| Ok(hs))?
            .apply(&self.layernorm)
    }
}
