//! Visual question answering with ViLT (`ViltForQuestionAnswering`): the
//! question's BERT embeddings and the image's patches in one ViT encoder,
//! then a pooler and an answer classifier scored with sigmoids, as the
//! transformers pipeline does.
//!
//! The patch position embeddings are resized to the image's patch grid with
//! bilinear interpolation (`align_corners=True`). transformers shuffles the
//! patches on the way in; attention does not depend on their order, so
//! hgpt keeps them in row-major order. A `max_image_length` smaller than
//! the patch count makes transformers keep a random subset; hgpt keeps them
//! all.

use super::conv::{Interpolation, Rows, resize};
use super::encoder::{Encoder, PatchEmbeddings, VitConfig};
use super::preprocess::{ImageProcessor, ProcessorKind, decode_image};
use super::{image_bytes, number_arg, question_arg};
use crate::error::{LocalError, bad_input};
use crate::files::{ModelFiles, WEIGHTS};
use crate::generate::GenerationTokenizer;
use crate::pipeline::Pipeline;
use crate::text::postprocess::ScoreFunction;
use candle_core::{Device, Module, Result, Tensor};
use candle_nn::{Embedding, LayerNorm, Linear, VarBuilder, layer_norm, linear};
use hgpt_core::backend::ResolvedArgs;
use hgpt_core::output::{Answer, InferenceOutput};
use hgpt_core::task::TaskKind;
use serde::Deserialize;

/// The pipeline's default number of answers.
pub const DEFAULT_TOP_K: usize = 5;

/// The ViLT-only parts of its `config.json` (the encoder's are a
/// [`VitConfig`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct ViltTextConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Token types of the text embeddings.
    pub type_vocab_size: usize,
    /// Modality types (text 0, image 1).
    pub modality_type_vocab_size: usize,
    /// Longest question, in tokens.
    pub max_position_embeddings: usize,
}

impl Default for ViltTextConfig {
    fn default() -> Self {
        Self {
            vocab_size: 30522,
            type_vocab_size: 2,
            modality_type_vocab_size: 2,
            max_position_embeddings: 40,
        }
    }
}

/// The ViLT question-answering network.
#[derive(Debug, Clone)]
pub struct ViltForQuestionAnswering {
    word_embeddings: Embedding,
    position_embeddings: Embedding,
    text_token_types: Tensor,
    text_norm: LayerNorm,
    cls_token: Tensor,
    patch_positions: Tensor,
    patches: PatchEmbeddings,
    modality_types: Tensor,
    encoder: Encoder,
    layernorm: LayerNorm,
    pooler: Linear,
    classifier_in: Linear,
    classifier_norm: LayerNorm,
    classifier_out: Linear,
    grid: usize,
    max_positions: usize,
}

impl ViltForQuestionAnswering {
    /// Build from weights named as transformers saves them (`vilt.*`,
    /// `classifier.*`).
    pub fn load(
        cfg: &VitConfig,
        text: &ViltTextConfig,
        num_labels: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        let d = cfg.hidden_size;
        let (image_size, _) = cfg.image_size.map_or((384, 384), |s| s.hw());
        let grid = image_size / cfg.patch_size;
        let vilt = vb.pp("vilt");
        let embeddings = vilt.pp("embeddings");
        let words = embeddings.pp("text_embeddings");
        let classifier = vb.pp("classifier");
        Ok(Self {
            word_embeddings: Embedding::new(
                words.get((text.vocab_size, d), "word_embeddings.weight")?,
                d,
            ),
            position_embeddings: Embedding::new(
                words.get(
                    (text.max_position_embeddings, d),
                    "position_embeddings.weight",
                )?,
                d,
            ),
            text_token_types: words
                .get((text.type_vocab_size, d), "token_type_embeddings.weight")?,
            text_norm: layer_norm(d, cfg.layer_norm_eps, words.pp("LayerNorm"))?,
            cls_token: embeddings.get((1, 1, d), "cls_token")?,
            patch_positions: embeddings.get((1, grid * grid + 1, d), "position_embeddings")?,
            patches: PatchEmbeddings::load(cfg, embeddings.pp("patch_embeddings"))?,
            modality_types: embeddings.get(
                (text.modality_type_vocab_size, d),
                "token_type_embeddings.weight",
            )?,
            encoder: Encoder::load(cfg, vilt.pp("encoder"))?.for_few_rows()?,
            layernorm: layer_norm(d, cfg.layer_norm_eps, vilt.pp("layernorm"))?,
            pooler: linear(d, d, vilt.pp("pooler.dense"))?,
            classifier_in: linear(d, 2 * d, classifier.pp("0"))?,
            classifier_norm: layer_norm(2 * d, 1e-5, classifier.pp("1"))?,
            classifier_out: linear(2 * d, num_labels, classifier.pp("3"))?,
            grid,
            max_positions: text.max_position_embeddings,
        })
    }

    /// The longest question it reads, in tokens.
    pub fn max_question_tokens(&self) -> usize {
        self.max_positions
    }

    /// Answer logits `[num_labels]` for question ids and pixel values
    /// `[1, 3, H, W]`.
    pub fn forward(&self, input_ids: &[u32], pixel_values: &Tensor) -> Result<Tensor> {
        let device = pixel_values.device();
        let count = input_ids.len();
        if count == 0 || count > self.max_positions {
            candle_core::bail!(
                "the question is {count} tokens; the model reads 1 to {}",
                self.max_positions
            );
        }
        let ids = Tensor::new(input_ids, device)?;
        let positions = Tensor::arange(0u32, count as u32, device)?;
        let text = (self.word_embeddings.forward(&ids)?
            + self.position_embeddings.forward(&positions)?)?
        .broadcast_add(&self.text_token_types.get(0)?)?
        .apply(&self.text_norm)?
        .broadcast_add(&self.modality_types.get(0)?)?;

        let (_, _, height, width) = pixel_values.dims4()?;
        let (rows, cols) = self.patches.grid(height, width);
        if rows == 0 || cols == 0 {
            candle_core::bail!("a {width}x{height} input is smaller than one patch");
        }
        let patches = self.patches.forward(pixel_values)?.squeeze(0)?;
        let grid = Rows {
            pixels: self
                .patch_positions
                .narrow(1, 1, self.grid * self.grid)?
                .squeeze(0)?,
            size: (self.grid, self.grid),
        };
        let aligned = Interpolation::Bilinear {
            align_corners: true,
        };
        let patch_positions = resize(&grid, (rows, cols), aligned)?.pixels;
        let image = Tensor::cat(
            &[
                (self.cls_token.squeeze(0)? + self.patch_positions.narrow(1, 0, 1)?.squeeze(0)?)?,
                (patches + patch_positions)?,
            ],
            0,
        )?
        .broadcast_add(&self.modality_types.get(1)?)?;

        let xs = Tensor::cat(&[&text, &image], 0)?.unsqueeze(0)?;
        let xs = self
            .encoder
            .forward_with(&xs, |_, hs| Ok(hs))?
            .apply(&self.layernorm)?;
        let pooled = xs
            .narrow(1, 0, 1)?
            .squeeze(1)?
            .apply(&self.pooler)?
            .tanh()?;
        pooled
            .apply(&self.classifier_in)?
            .apply(&self.classifier_norm)?
            .gelu_erf()?
            .apply(&self.classifier_out)?
            .squeeze(0)
    }
}

/// A loaded visual-question-answering pipeline with a ViLT model.
pub struct ViltQuestionAnswerer {
    model: ViltForQuestionAnswering,
    processor: ImageProcessor,
    tokenizer: GenerationTokenizer,
    labels: Vec<String>,
    device: Device,
    weight_bytes: u64,
}

impl ViltQuestionAnswerer {
    /// Load from a model's files (`config.json`, `preprocessor_config.json`,
    /// `tokenizer.json`, the weights).
    pub fn load(files: &ModelFiles, device: &Device) -> std::result::Result<Self, LocalError> {
        files.require(&[
            "config.json",
            "preprocessor_config.json",
            "tokenizer.json",
            WEIGHTS,
        ])?;
        let config: VitConfig = files.json("config.json")?;
        let text: ViltTextConfig = files.json("config.json")?;
        config
            .check((384, 384))
            .map_err(|e| files.load_error(format!("config.json: {e}")))?;
        let processor = ImageProcessor::load(files, ProcessorKind::Vilt)?;
        let tokenizer = GenerationTokenizer::load(files)?;
        let num_labels = config.num_labels();
        let weights = files.weights(device)?;
        let model = ViltForQuestionAnswering::load(&config, &text, num_labels, weights.vb)
            .map_err(|e| files.load_error(format!("weights: {e}")))?;
        Ok(Self {
            model,
            processor,
            tokenizer,
            labels: config.labels(num_labels),
            device: device.clone(),
            weight_bytes: weights.bytes,
        })
    }

    /// The question's token ids (`[CLS] ... [SEP]`).
    pub fn encode_question(&self, question: &str) -> std::result::Result<Vec<u32>, LocalError> {
        super::encode_question(&self.tokenizer, question, self.model.max_question_tokens())
    }

    /// The answer logits for a question about a decoded image.
    pub fn logits(
        &self,
        image: &image::RgbImage,
        question: &str,
    ) -> std::result::Result<Vec<f32>, LocalError> {
        let ids = self.encode_question(question)?;
        let pixel_values =
            self.processor
                .preprocess(TaskKind::VisualQuestionAnswering, image, &self.device)?;
        Ok(self.model.forward(&ids, &pixel_values)?.to_vec1::<f32>()?)
    }

    /// The `top_k` best answers, scored with sigmoids, best first.
    pub fn answer(
        &self,
        image: &image::RgbImage,
        question: &str,
        top_k: usize,
    ) -> std::result::Result<Vec<Answer>, LocalError> {
        let logits = self.logits(image, question)?;
        let scores = ScoreFunction::Sigmoid.apply(&logits);
        let mut ranked: Vec<(usize, f32)> = scores.into_iter().enumerate().collect();
        // Stable: ties keep label order, as torch.topk does on the CPU.
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
        ranked.truncate(top_k.min(self.labels.len()));
        Ok(ranked
            .into_iter()
            .map(|(label, score)| Answer {
                answer: self.labels[label].clone(),
                score: f64::from(score),
                start: None,
                end: None,
            })
            .collect())
    }
}

impl Pipeline for ViltQuestionAnswerer {
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
        let top_k = match number_arg(task, args, "top_k")? {
            None => DEFAULT_TOP_K,
            Some(k) if k >= 1.0 && k.fract() == 0.0 => k as usize,
            Some(k) => {
                return Err(bad_input(
                    task,
                    format!("top_k must be a positive integer, not {k}"),
                ));
            }
        };
        let question = question_arg(args)?;
        let image = decode_image(task, image_bytes(task, args)?)?;
        Ok(InferenceOutput::Answers(
            self.answer(&image, question, top_k)?,
        ))
    }

    fn weight_bytes(&self) -> u64 {
        self.weight_bytes
    }
}
