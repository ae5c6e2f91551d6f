//! The ViT transformer shared by ViT and YOLOS: config, patch embedding and
//! pre-norm encoder layers (`layernorm_before` -> attention -> residual ->
//! `layernorm_after` -> MLP -> residual), with the transformers weight names.

use candle_core::{Module, Result, Tensor};
use candle_nn::{
    Activation, Conv2d, Conv2dConfig, LayerNorm, Linear, VarBuilder, conv2d, layer_norm, linear,
    linear_no_bias,
};
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

/// Non-overlapping patches projected by a strided convolution:
/// `[B, 3, H, W]` -> `[B, rows * cols, hidden]`.
#[derive(Debug, Clone)]
pub(crate) struct PatchEmbeddings {
    projection: Conv2d,
    patch_size: usize,
}

impl PatchEmbeddings {
    pub(crate) fn load(cfg: &VitConfig, vb: VarBuilder) -> Result<Self> {
        let config = Conv2dConfig {
            stride: cfg.patch_size,
            ..Default::default()
        };
        let projection = conv2d(
            cfg.num_channels,
            cfg.hidden_size,
            cfg.patch_size,
            config,
            vb.pp("projection"),
        )?;
        Ok(Self {
            projection,
            patch_size: cfg.patch_size,
        })
    }

    /// The patch grid `(rows, cols)` of an input of `height` x `width`.
    pub(crate) fn grid(&self, height: usize, width: usize) -> (usize, usize) {
        (height / self.patch_size, width / self.patch_size)
    }

    pub(crate) fn forward(&self, pixel_values: &Tensor) -> Result<Tensor> {
        self.projection
            .forward(pixel_values)?
            .flatten_from(2)?
            .transpose(1, 2)
    }
}

#[derive(Debug, Clone)]
struct Layer {
    query: Linear,
    key: Linear,
    value: Linear,
    attention_output: Linear,
    intermediate: Linear,
    output: Linear,
    layernorm_before: LayerNorm,
    layernorm_after: LayerNorm,
    activation: Activation,
    heads: usize,
    head_size: usize,
}

impl Layer {
    fn load(cfg: &VitConfig, vb: VarBuilder) -> Result<Self> {
        let hidden = cfg.hidden_size;
        let qkv = |name: &str| {
            let vb = vb.pp("attention").pp("attention").pp(name);
            if cfg.qkv_bias {
                linear(hidden, hidden, vb)
            } else {
                linear_no_bias(hidden, hidden, vb)
            }
        };
        Ok(Self {
            query: qkv("query")?,
            key: qkv("key")?,
            value: qkv("value")?,
            attention_output: linear(hidden, hidden, vb.pp("attention.output.dense"))?,
            intermediate: linear(hidden, cfg.intermediate_size, vb.pp("intermediate.dense"))?,
            output: linear(cfg.intermediate_size, hidden, vb.pp("output.dense"))?,
            layernorm_before: layer_norm(hidden, cfg.layer_norm_eps, vb.pp("layernorm_before"))?,
            layernorm_after: layer_norm(hidden, cfg.layer_norm_eps, vb.pp("layernorm_after"))?,
            activation: cfg.hidden_act,
            heads: cfg.num_attention_heads,
            head_size: hidden / cfg.num_attention_heads,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let (batch, seq, hidden) = xs.dims3()?;
        let normed = xs.apply(&self.layernorm_before)?;
        let split = |t: Tensor| {
            t.reshape((batch, seq, self.heads, self.head_size))?
                .transpose(1, 2)?
                .contiguous()
        };
        let query = split(normed.apply(&self.query)?)?;
        let key = split(normed.apply(&self.key)?)?;
        let value = split(normed.apply(&self.value)?)?;
        let scale = 1.0 / (self.head_size as f64).sqrt();
        let scores = (query.matmul(&key.t()?)? * scale)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let context = probs
            .matmul(&value)?
            .transpose(1, 2)?
            .reshape((batch, seq, hidden))?;
        let xs = (context.apply(&self.attention_output)? + xs)?;
        let mlp = xs
            .apply(&self.layernorm_after)?
            .apply(&self.intermediate)?
            .apply(&self.activation)?
            .apply(&self.output)?;
        mlp + xs
    }
}

/// The stack of encoder layers (`encoder.layer.{i}`).
#[derive(Debug, Clone)]
pub(crate) struct Encoder {
    layers: Vec<Layer>,
}

impl Encoder {
    pub(crate) fn load(cfg: &VitConfig, vb: VarBuilder) -> Result<Self> {
        let vb = vb.pp("layer");
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| Layer::load(cfg, vb.pp(i)))
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
