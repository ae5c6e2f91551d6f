//! Zero-shot image classification with CLIP (`CLIPModel`): a causal text
//! transformer and a ViT (with `pre_layrnorm`), both projected into one
//! space; each candidate label, put into the hypothesis template, is scored
//! by its scaled cosine similarity to the image, softmaxed over the labels,
//! as the transformers pipeline does.

use super::attention::self_attention;
use super::encoder::PatchEmbeddings;
use super::image_bytes;
use super::preprocess::{ImageProcessor, ProcessorKind, decode_image};
use crate::error::{LocalError, bad_input};
use crate::files::{ModelFiles, WEIGHTS};
use crate::generate::GenerationTokenizer;
use crate::kernels::{Dense, Epilogue, dense_activation};
use crate::pipeline::Pipeline;
use crate::text::postprocess::softmax;
use candle_core::{D, Device, Module, Result, Tensor};
use candle_nn::{Activation, Embedding, LayerNorm, VarBuilder, layer_norm};
use hgpt_core::backend::ResolvedArgs;
use hgpt_core::output::{InferenceOutput, ScoredLabel};
use hgpt_core::task::TaskKind;
use serde::Deserialize;
use serde_json::Value;

/// The pipeline's default hypothesis template.
pub const DEFAULT_TEMPLATE: &str = "This is a photo of {}.";

/// A CLIP tower's activation: `quick_gelu` (`x sigmoid(1.702 x)`, the
/// OpenAI checkpoints') or one candle knows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ClipActivation {
    /// `x * sigmoid(1.702 * x)`.
    QuickGelu,
    /// Another activation.
    Other(Activation),
}

impl<'de> Deserialize<'de> for ClipActivation {
    fn deserialize<De: serde::Deserializer<'de>>(
        deserializer: De,
    ) -> std::result::Result<Self, De::Error> {
        let name = String::deserialize(deserializer)?;
        if name == "quick_gelu" {
            return Ok(Self::QuickGelu);
        }
        serde_json::from_value(Value::String(name))
            .map(Self::Other)
            .map_err(serde::de::Error::custom)
    }
}

/// One tower's config (transformers' defaults are the ViT-B/32 ones).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct TowerConfig {
    /// Width.
    pub hidden_size: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Layers.
    pub num_hidden_layers: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// MLP activation.
    pub hidden_act: ClipActivation,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
    /// Text: vocabulary size.
    pub vocab_size: usize,
    /// Text: longest text, in tokens.
    pub max_position_embeddings: usize,
    /// Text: the end token; 2 in the OpenAI checkpoints, which means "the
    /// highest id" (transformers' legacy pooling).
    pub eos_token_id: u32,
    /// Vision: input side.
    pub image_size: usize,
    /// Vision: patch side.
    pub patch_size: usize,
}

impl Default for TowerConfig {
    fn default() -> Self {
        Self {
            hidden_size: 512,
            intermediate_size: 2048,
            num_hidden_layers: 12,
            num_attention_heads: 8,
            hidden_act: ClipActivation::QuickGelu,
            layer_norm_eps: 1e-5,
            vocab_size: 49408,
            max_position_embeddings: 77,
            eos_token_id: 49407,
            image_size: 224,
            patch_size: 32,
        }
    }
}

/// A CLIP `config.json`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct ClipConfig {
    /// The text tower.
    pub text_config: TowerConfig,
    /// The vision tower.
    pub vision_config: TowerConfig,
    /// Width of the shared space.
    pub projection_dim: usize,
}

impl Default for ClipConfig {
    fn default() -> Self {
        Self {
            text_config: TowerConfig::default(),
            vision_config: TowerConfig {
                hidden_size: 768,
                intermediate_size: 3072,
                num_attention_heads: 12,
                ..TowerConfig::default()
            },
            projection_dim: 512,
        }
    }
}

impl TowerConfig {
    /// Whether the sizes fit together (`what` names the tower in messages).
    pub fn check(&self, what: &str) -> std::result::Result<(), String> {
        let (d, heads) = (self.hidden_size, self.num_attention_heads);
        if d == 0 || heads == 0 || !d.is_multiple_of(heads) {
            return Err(format!(
                "{what}: hidden_size {d} must be a positive multiple of num_attention_heads {heads}"
            ));
        }
        if self.num_hidden_layers == 0 {
            return Err(format!("{what}: num_hidden_layers must be positive"));
        }
        Ok(())
    }
}

impl ClipConfig {
    fn check(&self) -> std::result::Result<(), String> {
        self.text_config.check("text_config")?;
        self.vision_config.check("vision_config")?;
        let v = &self.vision_config;
        if v.patch_size == 0 || v.image_size < v.patch_size {
            return Err(format!(
                "vision_config: patch_size {} does not fit image_size {}",
                v.patch_size, v.image_size
            ));
        }
        if self.projection_dim == 0 {
            return Err("projection_dim must be positive".into());
        }
        Ok(())
    }
}

/// A pre-norm encoder layer of either tower.
#[derive(Debug, Clone)]
struct Layer {
    layer_norm1: LayerNorm,
    /// Query (scaled by `1 / sqrt(head size)`), key and value side by side.
    qkv: Dense,
    out_proj: Dense,
    layer_norm2: LayerNorm,
    fc1: Dense,
    fc2: Dense,
    activation: ClipActivation,
    heads: usize,
}

impl Layer {
    fn load(cfg: &TowerConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.hidden_size;
        let heads = cfg.num_attention_heads;
        let attn = vb.pp("self_attn");
        let part = |name: &str| -> Result<(Tensor, Tensor)> {
            let vb = attn.pp(name);
            Ok((vb.get((d, d), "weight")?, vb.get(d, "bias")?))
        };
        let (q, k, v) = (part("q_proj")?, part("k_proj")?, part("v_proj")?);
        let scale = ((d / heads) as f64).powf(-0.5);
        let q = ((q.0 * scale)?, (q.1 * scale)?);
        Ok(Self {
            layer_norm1: layer_norm(d, cfg.layer_norm_eps, vb.pp("layer_norm1"))?,
            qkv: Dense::from_parts(&[q.0, k.0, v.0], &[q.1, k.1, v.1])?.for_few_rows()?,
            out_proj: Dense::load(d, d, attn.pp("out_proj"))?.for_few_rows()?,
            layer_norm2: layer_norm(d, cfg.layer_norm_eps, vb.pp("layer_norm2"))?,
            fc1: Dense::load(d, cfg.intermediate_size, vb.pp("mlp.fc1"))?.for_few_rows()?,
            fc2: Dense::load(cfg.intermediate_size, d, vb.pp("mlp.fc2"))?.for_few_rows()?,
            activation: cfg.hidden_act,
            heads,
        })
    }

    /// `causal` masks later tokens (the text tower).
    fn forward(&self, xs: &Tensor, causal: bool) -> Result<Tensor> {
        let qkv = self
            .qkv
            .forward(&xs.apply(&self.layer_norm1)?, Epilogue::Bias)?;
        let context = self_attention(&qkv, self.heads, causal)?;
        let xs = self.out_proj.forward(&context, Epilogue::Residual(xs))?;
        let normed = xs.apply(&self.layer_norm2)?;
        let inner = match self.activation {
            ClipActivation::QuickGelu => self.fc1.forward(&normed, Epilogue::QuickGelu)?,
            ClipActivation::Other(activation) => dense_activation(&self.fc1, &normed, activation)?,
        };
        self.fc2.forward(&inner, Epilogue::Residual(&xs))
    }
}

fn layers(cfg: &TowerConfig, vb: VarBuilder) -> Result<Vec<Layer>> {
    (0..cfg.num_hidden_layers)
        .map(|i| Layer::load(cfg, vb.pp("encoder.layers").pp(i)))
        .collect()
}

/// The text tower (`CLIPTextModel`'s transformer): token and position
/// embeddings, causal pre-norm layers and the final LayerNorm.
#[derive(Debug, Clone)]
pub struct ClipTextEncoder {
    token_embedding: Embedding,
    positions: Tensor,
    layers: Vec<Layer>,
    final_layer_norm: LayerNorm,
}

impl ClipTextEncoder {
    /// Build from a text config and the weights under `text_model`.
    pub fn load(t: &TowerConfig, text: VarBuilder) -> Result<Self> {
        Ok(Self {
            token_embedding: Embedding::new(
                text.get(
                    (t.vocab_size, t.hidden_size),
                    "embeddings.token_embedding.weight",
                )?,
                t.hidden_size,
            ),
            positions: text.get(
                (t.max_position_embeddings, t.hidden_size),
                "embeddings.position_embedding.weight",
            )?,
            layers: layers(t, text.clone())?,
            final_layer_norm: layer_norm(
                t.hidden_size,
                t.layer_norm_eps,
                text.pp("final_layer_norm"),
            )?,
        })
    }

    /// The last hidden states `[batch, tokens, hidden]` (after the final
    /// LayerNorm, `last_hidden_state`) of token ids `[batch, tokens]`.
    pub fn hidden_states(&self, tokens: &Tensor) -> Result<Tensor> {
        let mut xs = self.embed(tokens)?;
        for layer in &self.layers {
            xs = layer.forward(&xs, true)?;
        }
        xs.apply(&self.final_layer_norm)
    }

    /// `hidden_states[-2]`, the second-to-last layer's output (not
    /// normalised; what SDXL's pipelines condition on), and when `with_last`
    /// the `last_hidden_state` of the same run.
    pub fn penultimate_states(
        &self,
        tokens: &Tensor,
        with_last: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let Some((last, before)) = self.layers.split_last() else {
            candle_core::bail!("the text tower has no layers");
        };
        let mut xs = self.embed(tokens)?;
        for layer in before {
            xs = layer.forward(&xs, true)?;
        }
        let final_states = if with_last {
            Some(last.forward(&xs, true)?.apply(&self.final_layer_norm)?)
        } else {
            None
        };
        Ok((xs, final_states))
    }

    /// Token plus position embeddings of token ids `[batch, tokens]`.
    fn embed(&self, tokens: &Tensor) -> Result<Tensor> {
        let (_, count) = tokens.dims2()?;
        let longest = self.positions.dim(0)?;
        if count == 0 || count > longest {
            candle_core::bail!("a text of {count} tokens; the text tower reads 1 to {longest}");
        }
        self.token_embedding
            .forward(tokens)?
            .broadcast_add(&self.positions.narrow(0, 0, count)?)
    }
}

/// Where transformers' CLIP text tower pools a text: at its highest id
/// (`legacy`: configs whose `eos_token_id` is 2, the OpenAI checkpoints'),
/// else at its first end token (the last position when it has none).
pub fn pooled_position(ids: &[u32], legacy: bool, eos_token_id: u32) -> usize {
    if legacy {
        ids.iter()
            .enumerate()
            .fold(0, |best, (j, &id)| if id > ids[best] { j } else { best })
    } else {
        ids.iter()
            .position(|&id| id == eos_token_id)
            .unwrap_or(ids.len().saturating_sub(1))
    }
}

/// `CLIPModel`: both towers and their projections.
#[derive(Debug, Clone)]
pub struct ClipModel {
    text: ClipTextEncoder,
    text_projection: Dense,
    legacy_pooling: bool,
    eos_token_id: u32,
    class_embedding: Tensor,
    patch_embedding: PatchEmbeddings,
    vision_positions: Tensor,
    pre_layrnorm: LayerNorm,
    vision_layers: Vec<Layer>,
    post_layernorm: LayerNorm,
    visual_projection: Dense,
    logit_scale: f32,
    max_text_tokens: usize,
    image_size: usize,
}

impl ClipModel {
    /// Build from a config and weights named as transformers saves them.
    pub fn load(cfg: &ClipConfig, vb: VarBuilder) -> Result<Self> {
        let (t, v) = (&cfg.text_config, &cfg.vision_config);
        let text = vb.pp("text_model");
        let vision = vb.pp("vision_model");
        let patches = (v.image_size / v.patch_size).pow(2);
        let patch_weight = vision.get(
            (v.hidden_size, 3, v.patch_size, v.patch_size),
            "embeddings.patch_embedding.weight",
        )?;
        let logit_scale = vb.get((), "logit_scale")?.to_scalar::<f32>()?.exp();
        Ok(Self {
            text: ClipTextEncoder::load(t, text)?,
            text_projection: Dense::new(
                vb.get(
                    (cfg.projection_dim, t.hidden_size),
                    "text_projection.weight",
                )?,
                None,
            )?,
            legacy_pooling: t.eos_token_id == 2,
            eos_token_id: t.eos_token_id,
            class_embedding: vision.get(v.hidden_size, "embeddings.class_embedding")?,
            patch_embedding: PatchEmbeddings::new(patch_weight, None)?,
            vision_positions: vision.get(
                (patches + 1, v.hidden_size),
                "embeddings.position_embedding.weight",
            )?,
            pre_layrnorm: layer_norm(v.hidden_size, v.layer_norm_eps, vision.pp("pre_layrnorm"))?,
            vision_layers: layers(v, vision.clone())?,
            post_layernorm: layer_norm(
                v.hidden_size,
                v.layer_norm_eps,
                vision.pp("post_layernorm"),
            )?,
            visual_projection: Dense::new(
                vb.get(
                    (cfg.projection_dim, v.hidden_size),
                    "visual_projection.weight",
                )?,
                None,
            )?,
            logit_scale,
            max_text_tokens: t.max_position_embeddings,
            image_size: v.image_size,
        })
    }

    /// The normalised embedding `[projection_dim]` of pixel values
    /// `[1, 3, side, side]`.
    pub fn image_embeds(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let (_, _, height, width) = pixel_values.dims4()?;
        if (height, width) != (self.image_size, self.image_size) {
            candle_core::bail!(
                "the vision tower takes {0}x{0} images, not {width}x{height}",
                self.image_size
            );
        }
        let patches = self.patch_embedding.forward(pixel_values)?.squeeze(0)?;
        let class = self.class_embedding.unsqueeze(0)?;
        let mut xs = (Tensor::cat(&[&class, &patches], 0)? + &self.vision_positions)?
            .unsqueeze(0)?
            .apply(&self.pre_layrnorm)?;
        for layer in &self.vision_layers {
            xs = layer.forward(&xs, false)?;
        }
        let pooled = xs
            .narrow(1, 0, 1)?
            .squeeze(1)?
            .apply(&self.post_layernorm)?;
        normalized(&self.visual_projection.forward(&pooled, Epilogue::Bias)?)?.squeeze(0)
    }

    /// The normalised embedding `[projection_dim]` of one tokenized text.
    pub fn text_embeds(&self, ids: &[u32]) -> Result<Tensor> {
        self.texts_embeds(&[ids.to_vec()])?.squeeze(0)
    }

    /// The normalised embeddings `[texts, projection_dim]` of tokenized
    /// texts, run as one batch: shorter texts are padded at the end, which
    /// the causal mask keeps from every position that is pooled.
    pub fn texts_embeds(&self, texts: &[Vec<u32>]) -> Result<Tensor> {
        let longest = texts.iter().map(Vec::len).max().unwrap_or(0);
        if texts.iter().any(Vec::is_empty) || longest > self.max_text_tokens {
            candle_core::bail!(
                "a text of {longest} tokens; the text tower reads 1 to {}",
                self.max_text_tokens
            );
        }
        let device = self.text.positions.device();
        let padded: Vec<u32> = texts
            .iter()
            .flat_map(|ids| {
                let last = ids[ids.len() - 1];
                ids.iter()
                    .copied()
                    .chain(std::iter::repeat_n(last, longest - ids.len()))
            })
            .collect();
        let tokens = Tensor::from_vec(padded, (texts.len(), longest), device)?;
        let xs = self.text.hidden_states(&tokens)?;
        let pooled = texts
            .iter()
            .enumerate()
            .map(|(i, ids)| {
                let at = pooled_position(ids, self.legacy_pooling, self.eos_token_id);
                xs.get(i)?.narrow(0, at, 1)
            })
            .collect::<Result<Vec<_>>>()?;
        let pooled = Tensor::cat(&pooled, 0)?;
        normalized(&self.text_projection.forward(&pooled, Epilogue::Bias)?)
    }

    /// `exp(logit_scale)`.
    pub fn logit_scale(&self) -> f32 {
        self.logit_scale
    }

    /// The longest text the text tower reads.
    pub fn max_text_tokens(&self) -> usize {
        self.max_text_tokens
    }
}

/// Rows divided by their L2 norm.
fn normalized(xs: &Tensor) -> Result<Tensor> {
    xs.broadcast_div(&xs.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?)
}

/// A loaded zero-shot-image-classification pipeline.
pub struct ZeroShotImageClassifier {
    model: ClipModel,
    processor: ImageProcessor,
    tokenizer: GenerationTokenizer,
    device: Device,
    weight_bytes: u64,
}

impl ZeroShotImageClassifier {
    /// Load from a model's files (`config.json`, `preprocessor_config.json`,
    /// `tokenizer.json`, the weights).
    pub fn load(files: &ModelFiles, device: &Device) -> std::result::Result<Self, LocalError> {
        files.require(&[
            "config.json",
            "preprocessor_config.json",
            "tokenizer.json",
            WEIGHTS,
        ])?;
        let config: ClipConfig = files.json("config.json")?;
        config
            .check()
            .map_err(|e| files.load_error(format!("config.json: {e}")))?;
        let processor = ImageProcessor::load(files, ProcessorKind::Classification)?;
        let side = config.vision_config.image_size as u32;
        if processor.fixed_output() != Some((side, side)) {
            return Err(files.load_error(format!(
                "preprocessor_config.json does not make the {side}x{side} images the model takes"
            )));
        }
        let tokenizer = GenerationTokenizer::load(files)?;
        let weights = files.weights(device)?;
        let model = ClipModel::load(&config, weights.vb)
            .map_err(|e| files.load_error(format!("weights: {e}")))?;
        Ok(Self {
            model,
            processor,
            tokenizer,
            device: device.clone(),
            weight_bytes: weights.bytes,
        })
    }

    /// The model.
    pub fn model(&self) -> &ClipModel {
        &self.model
    }

    /// The token ids of a hypothesis.
    pub fn encode(&self, text: &str) -> std::result::Result<Vec<u32>, LocalError> {
        self.tokenizer.encode_within(
            TaskKind::ZeroShotImageClassification,
            &format!("{text:?}"),
            text,
            self.model.max_text_tokens(),
        )
    }

    /// Score each label for a decoded image: softmax over the labels of the
    /// scaled cosine similarities, best first (ties keep label order).
    pub fn classify(
        &self,
        image: &image::RgbImage,
        labels: &[String],
        template: &str,
    ) -> std::result::Result<Vec<ScoredLabel>, LocalError> {
        let task = TaskKind::ZeroShotImageClassification;
        let pixel_values = self.processor.preprocess(task, image, &self.device)?;
        let image = self.model.image_embeds(&pixel_values)?;
        let texts = labels
            .iter()
            .map(|label| self.encode(&template.replacen("{}", label, 1)))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let cosines = self
            .model
            .texts_embeds(&texts)?
            .matmul(&image.unsqueeze(1)?)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let logits: Vec<f32> = cosines
            .iter()
            .map(|c| c * self.model.logit_scale())
            .collect();
        let scores = softmax(&logits);
        let mut ranked: Vec<ScoredLabel> = labels
            .iter()
            .zip(scores)
            .map(|(label, score)| ScoredLabel {
                label: label.clone(),
                score: f64::from(score),
            })
            .collect();
        ranked.sort_by(|a, b| b.score.total_cmp(&a.score));
        Ok(ranked)
    }
}

/// The candidate labels of a request: `candidate_labels` (a list, or one
/// comma-separated string), else the task's text, comma-separated.
fn candidate_labels(args: &ResolvedArgs) -> std::result::Result<Vec<String>, LocalError> {
    let task = TaskKind::ZeroShotImageClassification;
    let split = |text: &str| -> Vec<String> {
        text.split(',')
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()
    };
    let labels = match args.other.get("candidate_labels") {
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_str().map(|s| s.trim().to_string()).ok_or_else(|| {
                    bad_input(task, format!("candidate labels must be strings, not {v}"))
                })
            })
            .collect::<std::result::Result<Vec<_>, _>>()?,
        Some(Value::String(text)) => split(text),
        Some(Value::Null) | None => args.text.as_deref().map(split).unwrap_or_default(),
        Some(other) => {
            return Err(bad_input(
                task,
                format!("candidate_labels must be a list of strings, not {other}"),
            ));
        }
    };
    if labels.is_empty() || labels.iter().any(String::is_empty) {
        return Err(bad_input(
            task,
            "no candidate labels (give them as the text, separated by commas)",
        ));
    }
    Ok(labels)
}

impl Pipeline for ZeroShotImageClassifier {
    fn tasks(&self) -> &[TaskKind] {
        &[TaskKind::ZeroShotImageClassification]
    }

    fn run(
        &self,
        task: TaskKind,
        args: &ResolvedArgs,
    ) -> std::result::Result<InferenceOutput, LocalError> {
        if task != TaskKind::ZeroShotImageClassification {
            return Err(LocalError::Unsupported(format!(
                "a zero-shot image classifier cannot do {task}"
            )));
        }
        let labels = candidate_labels(args)?;
        let template = match args.other.get("hypothesis_template") {
            None | Some(Value::Null) => DEFAULT_TEMPLATE,
            Some(Value::String(t)) if t.contains("{}") => t.as_str(),
            Some(other) => {
                return Err(bad_input(
                    task,
                    format!("hypothesis_template must be a string with {{}}, not {other}"),
                ));
            }
        };
        let image = decode_image(task, image_bytes(task, args)?)?;
        Ok(InferenceOutput::Labels(
            self.classify(&image, &labels, template)?,
        ))
    }

    fn weight_bytes(&self) -> u64 {
        self.weight_bytes
    }
}
