//! BLIP (`BlipForConditionalGeneration`, `BlipForQuestionAnswering`): a ViT
//! image encoder and BERT-style text transformers with cross-attention, with
//! transformers' weight names.
//!
//! - Captioning: the text decoder generates from `[DEC]` over the image's
//!   states.
//! - Visual question answering: the text encoder reads the question over the
//!   image's states; the text decoder generates the answer from `[DEC]` over
//!   the question's states. Generation ends at `[SEP]` (`sep_token_id`), as
//!   BLIP's own `generate` sets it.

use super::attention::{attend, causal_mask, merge_heads, self_attention, split_heads};
use super::caption::CaptionModel;
use super::encoder::PatchEmbeddings;
use super::preprocess::{ImageProcessor, ProcessorKind, decode_image};
use super::{image_bytes, question_arg};
use crate::error::LocalError;
use crate::files::{ModelFiles, WEIGHTS};
use crate::generate::{Generated, GenerationConfig, GenerationTokenizer, StepDecoder, generate};
use crate::kernels::{Dense, Epilogue, dense_activation};
use crate::pipeline::Pipeline;
use candle_core::{Device, Module, Result, Tensor};
use candle_nn::{Activation, Embedding, LayerNorm, VarBuilder, layer_norm};
use hgpt_core::backend::ResolvedArgs;
use hgpt_core::output::{Answer, InferenceOutput};
use hgpt_core::task::TaskKind;
use serde::Deserialize;

/// The parts of `vision_config` hgpt reads (transformers' defaults).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct BlipVisionConfig {
    /// Width.
    pub hidden_size: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Layers.
    pub num_hidden_layers: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// Input side.
    pub image_size: usize,
    /// Patch side.
    pub patch_size: usize,
    /// MLP activation.
    pub hidden_act: Activation,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
}

impl Default for BlipVisionConfig {
    fn default() -> Self {
        Self {
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            image_size: 384,
            patch_size: 16,
            hidden_act: Activation::Gelu,
            layer_norm_eps: 1e-5,
        }
    }
}

/// The parts of `text_config` hgpt reads (transformers' defaults).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct BlipTextConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Width.
    pub hidden_size: usize,
    /// Width of the states cross-attention reads.
    pub encoder_hidden_size: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Layers.
    pub num_hidden_layers: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// Longest sequence.
    pub max_position_embeddings: usize,
    /// MLP activation.
    pub hidden_act: Activation,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
    /// `[DEC]`: the first token of generation.
    pub bos_token_id: u32,
    /// `[SEP]`: the end of generation.
    pub sep_token_id: u32,
}

impl Default for BlipTextConfig {
    fn default() -> Self {
        Self {
            vocab_size: 30524,
            hidden_size: 768,
            encoder_hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 8,
            max_position_embeddings: 512,
            hidden_act: Activation::Gelu,
            layer_norm_eps: 1e-12,
            bos_token_id: 30522,
            sep_token_id: 102,
        }
    }
}

/// A BLIP `config.json`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct BlipConfig {
    /// The text transformers.
    pub text_config: BlipTextConfig,
    /// The image encoder.
    pub vision_config: BlipVisionConfig,
}

impl BlipConfig {
    /// Read and check a model's `config.json`.
    fn read(files: &ModelFiles) -> std::result::Result<Self, LocalError> {
        let config: Self = files.json("config.json")?;
        config
            .check()
            .map_err(|e| files.load_error(format!("config.json: {e}")))?;
        Ok(config)
    }

    fn check(&self) -> std::result::Result<(), String> {
        let v = &self.vision_config;
        let t = &self.text_config;
        for (what, width, heads) in [
            ("vision_config", v.hidden_size, v.num_attention_heads),
            ("text_config", t.hidden_size, t.num_attention_heads),
        ] {
            if width == 0 || heads == 0 || !width.is_multiple_of(heads) {
                return Err(format!(
                    "{what}: hidden_size {width} must be a positive multiple of num_attention_heads {heads}"
                ));
            }
        }
        if v.patch_size == 0 || v.image_size < v.patch_size {
            return Err(format!(
                "vision_config: patch_size {} does not fit image_size {}",
                v.patch_size, v.image_size
            ));
        }
        if v.num_hidden_layers == 0 || t.num_hidden_layers == 0 {
            return Err("num_hidden_layers must be positive".into());
        }
        if t.vocab_size == 0 || t.max_position_embeddings == 0 {
            return Err(
                "text_config: vocab_size and max_position_embeddings must be positive".into(),
            );
        }
        for (what, id) in [
            ("bos_token_id", t.bos_token_id),
            ("sep_token_id", t.sep_token_id),
        ] {
            if id as usize >= t.vocab_size {
                return Err(format!(
                    "text_config: {what} {id} is outside the vocabulary of {}",
                    t.vocab_size
                ));
            }
        }
        Ok(())
    }
}

// ------------------------------------------------------------------ vision

#[derive(Debug, Clone)]
struct VisionLayer {
    layer_norm1: LayerNorm,
    /// Query (scaled by `1 / sqrt(head size)`), key and value.
    qkv: Dense,
    projection: Dense,
    layer_norm2: LayerNorm,
    fc1: Dense,
    fc2: Dense,
    activation: Activation,
    heads: usize,
}

impl VisionLayer {
    fn load(cfg: &BlipVisionConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.hidden_size;
        let heads = cfg.num_attention_heads;
        let qkv = vb.pp("self_attn.qkv");
        let (weight, bias) = (qkv.get((3 * d, d), "weight")?, qkv.get(3 * d, "bias")?);
        // Scaling the query scales the attention scores as BLIP does.
        let scale = ((d / heads) as f64).powf(-0.5);
        let scaled = |t: &Tensor| -> Result<Tensor> {
            Tensor::cat(&[(t.narrow(0, 0, d)? * scale)?, t.narrow(0, d, 2 * d)?], 0)
        };
        Ok(Self {
            layer_norm1: layer_norm(d, cfg.layer_norm_eps, vb.pp("layer_norm1"))?,
            qkv: Dense::new(scaled(&weight)?, Some(scaled(&bias)?))?,
            projection: Dense::load(d, d, vb.pp("self_attn.projection"))?,
            layer_norm2: layer_norm(d, cfg.layer_norm_eps, vb.pp("layer_norm2"))?,
            fc1: Dense::load(d, cfg.intermediate_size, vb.pp("mlp.fc1"))?,
            fc2: Dense::load(cfg.intermediate_size, d, vb.pp("mlp.fc2"))?,
            activation: cfg.hidden_act,
            heads,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let qkv = self
            .qkv
            .forward(&xs.apply(&self.layer_norm1)?, Epilogue::Bias)?;
        let context = self_attention(&qkv, self.heads, false)?;
        let xs = self.projection.forward(&context, Epilogue::Residual(xs))?;
        let inner = dense_activation(&self.fc1, &xs.apply(&self.layer_norm2)?, self.activation)?;
        self.fc2.forward(&inner, Epilogue::Residual(&xs))
    }
}

/// `BlipVisionModel`: its output is every token's state after
/// `post_layernorm`, `[1, 1 + patches, hidden]`.
#[derive(Debug, Clone)]
struct VisionModel {
    class_embedding: Tensor,
    patch_embedding: PatchEmbeddings,
    position_embedding: Tensor,
    layers: Vec<VisionLayer>,
    post_layernorm: LayerNorm,
    image_size: usize,
}

impl VisionModel {
    fn load(cfg: &BlipVisionConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.hidden_size;
        let embeddings = vb.pp("embeddings");
        let patches = (cfg.image_size / cfg.patch_size).pow(2);
        let p = cfg.patch_size;
        let patch = embeddings.pp("patch_embedding");
        Ok(Self {
            class_embedding: embeddings.get((1, 1, d), "class_embedding")?,
            patch_embedding: PatchEmbeddings::new(
                patch.get((d, 3, p, p), "weight")?,
                Some(patch.get(d, "bias")?),
            )?,
            position_embedding: embeddings.get((1, patches + 1, d), "position_embedding")?,
            layers: (0..cfg.num_hidden_layers)
                .map(|i| VisionLayer::load(cfg, vb.pp("encoder.layers").pp(i)))
                .collect::<Result<_>>()?,
            post_layernorm: layer_norm(d, cfg.layer_norm_eps, vb.pp("post_layernorm"))?,
            image_size: cfg.image_size,
        })
    }

    fn forward(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let (batch, _, height, width) = pixel_values.dims4()?;
        if (height, width) != (self.image_size, self.image_size) {
            candle_core::bail!(
                "the vision model takes {0}x{0} images, not {width}x{height}",
                self.image_size
            );
        }
        let patches = self.patch_embedding.forward(pixel_values)?;
        let (_, _, d) = patches.dims3()?;
        let class = self.class_embedding.broadcast_as((batch, 1, d))?;
        let mut xs =
            Tensor::cat(&[&class, &patches], 1)?.broadcast_add(&self.position_embedding)?;
        for layer in &self.layers {
            xs = layer.forward(&xs)?;
        }
        xs.apply(&self.post_layernorm)
    }
}

// -------------------------------------------------------------------- text

/// BERT attention with its output block (`dense`, residual, `LayerNorm`).
#[derive(Debug, Clone)]
struct TextAttention {
    query: Dense,
    key: Dense,
    value: Dense,
    dense: Dense,
    layer_norm: LayerNorm,
    heads: usize,
    scale: f64,
}

impl TextAttention {
    fn load(cfg: &BlipTextConfig, key_width: usize, vb: VarBuilder) -> Result<Self> {
        let d = cfg.hidden_size;
        Ok(Self {
            query: Dense::load(d, d, vb.pp("self.query"))?.for_few_rows()?,
            key: Dense::load(key_width, d, vb.pp("self.key"))?.for_few_rows()?,
            value: Dense::load(key_width, d, vb.pp("self.value"))?.for_few_rows()?,
            dense: Dense::load(d, d, vb.pp("output.dense"))?.for_few_rows()?,
            layer_norm: layer_norm(d, cfg.layer_norm_eps, vb.pp("output.LayerNorm"))?,
            heads: cfg.num_attention_heads,
            scale: 1.0 / ((d / cfg.num_attention_heads) as f64).sqrt(),
        })
    }

    fn keys_values(&self, states: &Tensor) -> Result<(Tensor, Tensor)> {
        Ok((
            split_heads(&self.key.forward(states, Epilogue::Bias)?, self.heads)?,
            split_heads(&self.value.forward(states, Epilogue::Bias)?, self.heads)?,
        ))
    }

    fn forward(
        &self,
        xs: &Tensor,
        key: &Tensor,
        value: &Tensor,
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let query = split_heads(&self.query.forward(xs, Epilogue::Bias)?, self.heads)?;
        let attended = merge_heads(&attend(&query, key, value, self.scale, mask)?)?;
        self.dense
            .forward(&attended, Epilogue::Residual(xs))?
            .apply(&self.layer_norm)
    }
}

#[derive(Debug, Clone)]
struct TextLayer {
    attention: TextAttention,
    cross: TextAttention,
    intermediate: Dense,
    output: Dense,
    output_norm: LayerNorm,
    activation: Activation,
}

impl TextLayer {
    fn load(cfg: &BlipTextConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.hidden_size;
        Ok(Self {
            attention: TextAttention::load(cfg, d, vb.pp("attention"))?,
            cross: TextAttention::load(cfg, cfg.encoder_hidden_size, vb.pp("crossattention"))?,
            intermediate: Dense::load(d, cfg.intermediate_size, vb.pp("intermediate.dense"))?
                .for_few_rows()?,
            output: Dense::load(cfg.intermediate_size, d, vb.pp("output.dense"))?.for_few_rows()?,
            output_norm: layer_norm(d, cfg.layer_norm_eps, vb.pp("output.LayerNorm"))?,
            activation: cfg.hidden_act,
        })
    }

    fn forward(
        &self,
        xs: &Tensor,
        cache: &mut LayerCache,
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (mut key, mut value) = self.attention.keys_values(xs)?;
        if let Some((past_key, past_value)) = &cache.past {
            key = Tensor::cat(&[past_key, &key], 2)?;
            value = Tensor::cat(&[past_value, &value], 2)?;
        }
        let xs = self.attention.forward(xs, &key, &value, mask)?;
        cache.past = Some((key, value));
        let xs = self
            .cross
            .forward(&xs, &cache.cross.0, &cache.cross.1, None)?;
        let inner = dense_activation(&self.intermediate, &xs, self.activation)?;
        self.output
            .forward(&inner, Epilogue::Residual(&xs))?
            .apply(&self.output_norm)
    }
}

#[derive(Debug, Clone)]
struct LayerCache {
    cross: (Tensor, Tensor),
    past: Option<(Tensor, Tensor)>,
}

/// `BlipTextModel` (no pooler): embeddings with LayerNorm, then post-norm
/// layers with self- and cross-attention.
#[derive(Debug, Clone)]
struct TextModel {
    word_embeddings: Embedding,
    position_embeddings: Embedding,
    embeddings_norm: LayerNorm,
    layers: Vec<TextLayer>,
    max_positions: usize,
}

impl TextModel {
    fn load(cfg: &BlipTextConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.hidden_size;
        let embeddings = vb.pp("embeddings");
        Ok(Self {
            word_embeddings: Embedding::new(
                embeddings.get((cfg.vocab_size, d), "word_embeddings.weight")?,
                d,
            ),
            position_embeddings: Embedding::new(
                embeddings.get(
                    (cfg.max_position_embeddings, d),
                    "position_embeddings.weight",
                )?,
                d,
            ),
            embeddings_norm: layer_norm(d, cfg.layer_norm_eps, embeddings.pp("LayerNorm"))?,
            layers: (0..cfg.num_hidden_layers)
                .map(|i| TextLayer::load(cfg, vb.pp("encoder.layer").pp(i)))
                .collect::<Result<_>>()?,
            max_positions: cfg.max_position_embeddings,
        })
    }

    fn caches(&self, encoder_states: &Tensor) -> Result<Vec<LayerCache>> {
        self.layers
            .iter()
            .map(|layer| {
                Ok(LayerCache {
                    cross: layer.cross.keys_values(encoder_states)?,
                    past: None,
                })
            })
            .collect()
    }

    /// The states of `tokens` following `start` cached ones; `causal` masks
    /// later tokens.
    fn forward(
        &self,
        tokens: &[u32],
        start: usize,
        caches: &mut [LayerCache],
        causal: bool,
    ) -> Result<Tensor> {
        let count = tokens.len();
        if start + count > self.max_positions {
            candle_core::bail!("the text model takes at most {} tokens", self.max_positions);
        }
        let device = self.word_embeddings.embeddings().device();
        let ids = Tensor::new(tokens, device)?.unsqueeze(0)?;
        let positions =
            Tensor::arange(start as u32, (start + count) as u32, device)?.unsqueeze(0)?;
        let mut xs = (self.word_embeddings.forward(&ids)?
            + self.position_embeddings.forward(&positions)?)?
        .apply(&self.embeddings_norm)?;
        let mask = if causal {
            causal_mask(start, count, device)?
        } else {
            None
        };
        for (layer, cache) in self.layers.iter().zip(caches.iter_mut()) {
            xs = layer.forward(&xs, cache, mask.as_ref())?;
        }
        Ok(xs)
    }
}

/// `BlipTextLMHeadModel`: the causal text model and its prediction head.
#[derive(Debug, Clone)]
struct TextDecoder {
    bert: TextModel,
    transform: Dense,
    transform_norm: LayerNorm,
    activation: Activation,
    decoder: Dense,
    vocab_size: usize,
}

impl TextDecoder {
    fn load(cfg: &BlipTextConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.hidden_size;
        let bert = TextModel::load(cfg, vb.pp("bert"))?;
        let head = vb.pp("cls.predictions");
        // A head tied to the embeddings reads their table as it is.
        let tied = !head.contains_tensor("decoder.weight");
        let weight = if tied {
            bert.word_embeddings.embeddings().clone()
        } else {
            head.get((cfg.vocab_size, d), "decoder.weight")?
        };
        let bias = if head.contains_tensor("bias") {
            head.get(cfg.vocab_size, "bias")?
        } else {
            head.get(cfg.vocab_size, "decoder.bias")?
        };
        Ok(Self {
            bert,
            transform: Dense::load(d, d, head.pp("transform.dense"))?.for_few_rows()?,
            transform_norm: layer_norm(d, cfg.layer_norm_eps, head.pp("transform.LayerNorm"))?,
            activation: cfg.hidden_act,
            decoder: if tied {
                Dense::new(weight, Some(bias))?
            } else {
                Dense::new(weight, Some(bias))?.for_few_rows()?
            },
            vocab_size: cfg.vocab_size,
        })
    }

    fn session(&self, encoder_states: &Tensor) -> Result<TextSession<'_>> {
        Ok(TextSession {
            decoder: self,
            caches: self.bert.caches(encoder_states)?,
            position: 0,
        })
    }
}

/// One sequence being generated by the text decoder (cloned, it shares
/// the caches it has so far).
#[derive(Clone)]
struct TextSession<'a> {
    decoder: &'a TextDecoder,
    caches: Vec<LayerCache>,
    position: usize,
}

impl TextSession<'_> {
    fn forward(&mut self, tokens: &[u32]) -> Result<Tensor> {
        let d = self.decoder;
        let xs = d
            .bert
            .forward(tokens, self.position, &mut self.caches, true)?;
        self.position += tokens.len();
        let transformed = dense_activation(&d.transform, &xs, d.activation)?;
        d.decoder
            .forward(&transformed.apply(&d.transform_norm)?, Epilogue::Bias)
    }
}

impl StepDecoder for TextSession<'_> {
    fn feed(&mut self, tokens: &[u32]) -> std::result::Result<Vec<f32>, LocalError> {
        let logits = self.forward(tokens)?;
        let last = logits.dim(1)? - 1;
        Ok(logits.narrow(1, last, 1)?.flatten_all()?.to_vec1::<f32>()?)
    }

    fn vocab_size(&self) -> usize {
        self.decoder.vocab_size
    }
}

// ------------------------------------------------------------------ models

/// The parts both BLIP heads share: the image encoder, the text decoder and
/// their generation settings.
#[derive(Debug, Clone)]
struct BlipCore {
    vision: VisionModel,
    decoder: TextDecoder,
    bos: u32,
    sep: u32,
}

impl BlipCore {
    fn load(
        files: &ModelFiles,
        config: &BlipConfig,
        vb: &VarBuilder,
    ) -> std::result::Result<Self, LocalError> {
        let weights = |e: candle_core::Error| files.load_error(format!("weights: {e}"));
        let vision =
            VisionModel::load(&config.vision_config, vb.pp("vision_model")).map_err(weights)?;
        let decoder =
            TextDecoder::load(&config.text_config, vb.pp("text_decoder")).map_err(weights)?;
        Ok(Self {
            vision,
            decoder,
            bos: config.text_config.bos_token_id,
            sep: config.text_config.sep_token_id,
        })
    }

    /// Generation from `[DEC]` over `states`, ending at `[SEP]`.
    fn generate(
        &self,
        states: &Tensor,
        generation: &GenerationConfig,
    ) -> std::result::Result<Generated, LocalError> {
        let mut generation = generation.clone();
        generation.eos_token_ids = vec![self.sep];
        let session = self.decoder.session(states)?;
        generate(session, &[self.bos], &generation)
    }

    fn image_size(&self) -> usize {
        self.vision.image_size
    }
}

/// `BlipForConditionalGeneration`.
#[derive(Debug, Clone)]
pub struct BlipCaptioner {
    core: BlipCore,
}

impl BlipCaptioner {
    /// Build from `config.json` and weights (`vision_model.*`,
    /// `text_decoder.*`).
    pub fn load(files: &ModelFiles, vb: VarBuilder) -> std::result::Result<Self, LocalError> {
        let config = BlipConfig::read(files)?;
        Ok(Self {
            core: BlipCore::load(files, &config, &vb)?,
        })
    }

    /// The image's states `[1, 1 + patches, vision hidden]`.
    pub fn image_embeds(&self, pixel_values: &Tensor) -> std::result::Result<Tensor, LocalError> {
        Ok(self.core.vision.forward(pixel_values)?)
    }

    /// Decoder logits `[tokens, vocab]` for teacher-forced `tokens`.
    pub fn logits(
        &self,
        pixel_values: &Tensor,
        tokens: &[u32],
    ) -> std::result::Result<Tensor, LocalError> {
        let states = self.image_embeds(pixel_values)?;
        let mut session = self.core.decoder.session(&states)?;
        Ok(session.forward(tokens)?.squeeze(0)?)
    }

    /// The input side the vision model takes.
    pub fn image_size(&self) -> usize {
        self.core.image_size()
    }
}

impl CaptionModel for BlipCaptioner {
    fn generate(
        &self,
        pixel_values: &Tensor,
        generation: &GenerationConfig,
    ) -> std::result::Result<Vec<u32>, LocalError> {
        let states = self.image_embeds(pixel_values)?;
        Ok(self.core.generate(&states, generation)?.ids)
    }
}

/// `BlipForQuestionAnswering`.
#[derive(Debug, Clone)]
pub struct BlipVqa {
    core: BlipCore,
    encoder: TextModel,
}

impl BlipVqa {
    /// Build from `config.json` and weights (`vision_model.*`,
    /// `text_encoder.*`, `text_decoder.*`).
    pub fn load(files: &ModelFiles, vb: VarBuilder) -> std::result::Result<Self, LocalError> {
        let config = BlipConfig::read(files)?;
        if config.text_config.encoder_hidden_size != config.text_config.hidden_size {
            return Err(files.load_error(format!(
                "config.json: the answer decoder reads the question's states, so text_config's encoder_hidden_size ({}) must equal its hidden_size ({})",
                config.text_config.encoder_hidden_size, config.text_config.hidden_size
            )));
        }
        let core = BlipCore::load(files, &config, &vb)?;
        let encoder = TextModel::load(&config.text_config, vb.pp("text_encoder"))
            .map_err(|e| files.load_error(format!("weights: {e}")))?;
        Ok(Self { core, encoder })
    }

    /// The image's states.
    pub fn image_embeds(&self, pixel_values: &Tensor) -> std::result::Result<Tensor, LocalError> {
        Ok(self.core.vision.forward(pixel_values)?)
    }

    /// The question's states over the image `[1, tokens, hidden]`.
    pub fn question_embeds(
        &self,
        pixel_values: &Tensor,
        question: &[u32],
    ) -> std::result::Result<Tensor, LocalError> {
        let image = self.image_embeds(pixel_values)?;
        let mut caches = self.encoder.caches(&image)?;
        Ok(self.encoder.forward(question, 0, &mut caches, false)?)
    }

    /// Answer decoder logits `[tokens, vocab]` for teacher-forced `tokens`.
    pub fn logits(
        &self,
        pixel_values: &Tensor,
        question: &[u32],
        tokens: &[u32],
    ) -> std::result::Result<Tensor, LocalError> {
        let states = self.question_embeds(pixel_values, question)?;
        let mut session = self.core.decoder.session(&states)?;
        Ok(session.forward(tokens)?.squeeze(0)?)
    }

    /// The generated answer ids and their log-probability.
    pub fn answer(
        &self,
        pixel_values: &Tensor,
        question: &[u32],
        generation: &GenerationConfig,
    ) -> std::result::Result<Generated, LocalError> {
        let states = self.question_embeds(pixel_values, question)?;
        self.core.generate(&states, generation)
    }
}

/// Reads the image processor and checks it makes the images the vision
/// model takes.
fn blip_processor(
    files: &ModelFiles,
    image_size: usize,
) -> std::result::Result<ImageProcessor, LocalError> {
    let processor = ImageProcessor::load(files, ProcessorKind::Classification)?;
    match processor.fixed_output() {
        Some((h, w)) if (h as usize, w as usize) == (image_size, image_size) => Ok(processor),
        Some((h, w)) => Err(files.load_error(format!(
            "preprocessor_config.json makes {w}x{h} images but the model takes {image_size}x{image_size}"
        ))),
        None => Err(files.load_error(
            "preprocessor_config.json must resize to a fixed size for BLIP",
        )),
    }
}

/// A BLIP captioning model and its processor, for [`super::ImageCaptioner`].
pub(crate) fn load_captioner(
    files: &ModelFiles,
    device: &Device,
) -> std::result::Result<(BlipCaptioner, ImageProcessor, u64), LocalError> {
    files.require(&["config.json", "preprocessor_config.json", WEIGHTS])?;
    let weights = files.weights(device)?;
    let model = BlipCaptioner::load(files, weights.vb)?;
    let processor = blip_processor(files, model.image_size())?;
    Ok((model, processor, weights.bytes))
}

/// A loaded visual-question-answering pipeline with a BLIP model.
pub struct BlipQuestionAnswerer {
    model: BlipVqa,
    processor: ImageProcessor,
    tokenizer: GenerationTokenizer,
    generation: GenerationConfig,
    device: Device,
    weight_bytes: u64,
}

impl BlipQuestionAnswerer {
    /// Load from a model's files (`config.json`, `preprocessor_config.json`,
    /// `tokenizer.json`, the weights, `generation_config.json` if any).
    pub fn load(files: &ModelFiles, device: &Device) -> std::result::Result<Self, LocalError> {
        files.require(&[
            "config.json",
            "preprocessor_config.json",
            "tokenizer.json",
            WEIGHTS,
        ])?;
        let generation = GenerationConfig::load(files, "text_config")?;
        generation.warn_unapplied(files.id());
        let tokenizer = GenerationTokenizer::load(files)?;
        let weights = files.weights(device)?;
        let model = BlipVqa::load(files, weights.vb)?;
        let processor = blip_processor(files, model.core.image_size())?;
        Ok(Self {
            model,
            processor,
            tokenizer,
            generation,
            device: device.clone(),
            weight_bytes: weights.bytes,
        })
    }

    /// The question's token ids (`[CLS] ... [SEP]`).
    pub fn encode_question(&self, question: &str) -> std::result::Result<Vec<u32>, LocalError> {
        super::encode_question(&self.tokenizer, question, self.model.encoder.max_positions)
    }

    /// The generation settings of the model's files.
    pub fn generation(&self) -> &GenerationConfig {
        &self.generation
    }

    /// The answer to a question about an image under `generation`, with
    /// the probability the model gives that answer (the product of its
    /// tokens' probabilities).
    pub fn answer(
        &self,
        image: &image::RgbImage,
        question: &str,
        generation: &GenerationConfig,
    ) -> std::result::Result<Answer, LocalError> {
        let generated = self.generate(image, question, generation)?;
        Ok(Answer {
            answer: self.tokenizer.decode(&generated.ids)?.trim().to_string(),
            score: generated.log_prob.exp(),
            start: None,
            end: None,
        })
    }

    /// The generated answer, ids and probability.
    pub fn generate(
        &self,
        image: &image::RgbImage,
        question: &str,
        generation: &GenerationConfig,
    ) -> std::result::Result<Generated, LocalError> {
        let task = TaskKind::VisualQuestionAnswering;
        let question = self.encode_question(question)?;
        let pixel_values = self.processor.preprocess(task, image, &self.device)?;
        self.model.answer(&pixel_values, &question, generation)
    }
}

impl Pipeline for BlipQuestionAnswerer {
    fn tasks(&self) -> &[TaskKind] {
        &[TaskKind::VisualQuestionAnswering]
    }

    fn run(
        &self,
        task: TaskKind,
        args: &ResolvedArgs,
    ) -> std::result::Result<InferenceOutput, LocalError> {
        if task != TaskKind::VisualQuestionAnswering {
            return Err(LocalError::Unsupported(format!(
                "a visual question answerer cannot do {task}"
            )));
        }
        let question = question_arg(args)?;
        let generation = super::generation_for(task, args, &self.generation)?;
        let image = decode_image(task, image_bytes(task, args)?)?;
        Ok(InferenceOutput::Answers(vec![self.answer(
            &image,
            question,
            &generation,
        )?]))
    }

    fn weight_bytes(&self) -> u64 {
        self.weight_bytes
    }
}
