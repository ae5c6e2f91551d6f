//! A pipeline's prompt conditioning, as diffusers' `encode_prompt` computes
//! it: Stable Diffusion's one CLIP text encoder (its last hidden state), or
//! SDXL's two (their second-to-last layers' outputs side by side, and the
//! second encoder's pooled output through its projection).

use super::prompt::PromptTokenizer;
use super::{Part, load_part};
use crate::error::LocalError;
use crate::files::ModelFiles;
use crate::vision::ClipTextEncoder;
use crate::vision::clip::{TowerConfig, pooled_position};
use candle_core::{Device, Tensor};
use serde::Deserialize;

/// One CLIP text encoder with its tokenizer.
struct PromptEncoder {
    tokenizer: PromptTokenizer,
    encoder: ClipTextEncoder,
    width: usize,
}

/// `CLIPTextModelWithProjection`'s pooling: the hidden state at the end
/// token through `text_projection` (no bias, not normalised).
struct Pooling {
    projection: Tensor,
    legacy: bool,
    eos_token_id: u32,
}

/// What the UNet is conditioned on for a batch of prompts.
#[derive(Debug)]
pub struct Embeddings {
    /// The text embeddings the cross-attention reads, `[rows, tokens, width]`.
    pub context: Tensor,
    /// SDXL: the pooled, projected embeddings `[rows, width]`.
    pub pooled: Option<Tensor>,
}

/// The text side of a pipeline: SD's `text_encoder/` (its last hidden
/// state), or with SDXL's `text_encoder_2/` beside it (both encoders'
/// second-to-last layers).
pub(super) struct Conditioning {
    first: PromptEncoder,
    second: Option<SecondEncoder>,
}

/// SDXL's second text encoder.
struct SecondEncoder {
    encoder: PromptEncoder,
    pooling: Pooling,
    /// `force_zeros_for_empty_prompt`: with no negative prompt, the
    /// unconditional embeddings are zeros rather than those of "".
    zero_unconditional: bool,
}

/// `projection_dim` of a `CLIPTextModelWithProjection` config.
#[derive(Deserialize)]
struct ProjectionConfig {
    #[serde(default = "default_projection_dim")]
    projection_dim: usize,
}

fn default_projection_dim() -> usize {
    512
}

impl PromptEncoder {
    /// The encoder in `folder` (weights `weights`), its tokenizer in
    /// `tokenizer_folder`; the config too, for what else it says.
    fn load(
        files: &ModelFiles,
        folder: &str,
        weights: &str,
        tokenizer_folder: &str,
        device: &Device,
    ) -> Result<(Self, TowerConfig, Part), LocalError> {
        let config_file = format!("{folder}/config.json");
        let config: TowerConfig = files.json(&config_file)?;
        config
            .check(&config_file)
            .map_err(|e| files.load_error(e))?;
        let part = load_part(files, weights, folder, device)?;
        let encoder = ClipTextEncoder::load(&config, part.vb.pp("text_model"))
            .map_err(|e| files.load_error(format!("{folder}: {e}")))?;
        let tokenizer =
            PromptTokenizer::load(files, tokenizer_folder, config.max_position_embeddings)?;
        let encoder = Self {
            tokenizer,
            encoder,
            width: config.hidden_size,
        };
        Ok((encoder, config, part))
    }

    /// Token ids `[rows, length]` of texts.
    fn tokens(
        &self,
        texts: &[&str],
        device: &Device,
    ) -> Result<(Tensor, Vec<Vec<u32>>), LocalError> {
        let ids = texts
            .iter()
            .map(|text| self.tokenizer.ids(text))
            .collect::<Result<Vec<_>, _>>()?;
        let flat: Vec<u32> = ids.iter().flatten().copied().collect();
        let tokens = Tensor::from_vec(flat, (texts.len(), self.tokenizer.length()), device)?;
        Ok((tokens, ids))
    }
}

impl Conditioning {
    /// SD's: `text_encoder/` and `tokenizer/`. Returns the weights' bytes
    /// in memory.
    pub(super) fn load_single(
        files: &ModelFiles,
        weights: &str,
        device: &Device,
    ) -> Result<(Self, u64), LocalError> {
        let (first, _, part) =
            PromptEncoder::load(files, "text_encoder", weights, "tokenizer", device)?;
        Ok((
            Self {
                first,
                second: None,
            },
            part.bytes,
        ))
    }

    /// SDXL's: `text_encoder/` with `tokenizer/`, and `text_encoder_2/`
    /// (with its projection) with `tokenizer_2/`.
    pub(super) fn load_dual(
        files: &ModelFiles,
        weights: (&str, &str),
        zero_unconditional: bool,
        device: &Device,
    ) -> Result<(Self, u64), LocalError> {
        let (first, _, first_part) =
            PromptEncoder::load(files, "text_encoder", weights.0, "tokenizer", device)?;
        let (second, config, second_part) =
            PromptEncoder::load(files, "text_encoder_2", weights.1, "tokenizer_2", device)?;
        let projection: ProjectionConfig = files.json("text_encoder_2/config.json")?;
        let projection = second_part
            .vb
            .get(
                (projection.projection_dim, config.hidden_size),
                "text_projection.weight",
            )
            .map_err(|e| files.load_error(format!("text_encoder_2: {e}")))?;
        if first.tokenizer.length() != second.tokenizer.length() {
            return Err(files.load_error(format!(
                "the tokenizers pad to {} and {} tokens; SDXL's embeddings stand side by side",
                first.tokenizer.length(),
                second.tokenizer.length()
            )));
        }
        let second = SecondEncoder {
            encoder: second,
            pooling: Pooling {
                projection,
                legacy: config.eos_token_id == 2,
                eos_token_id: config.eos_token_id,
            },
            zero_unconditional,
        };
        let conditioning = Self {
            first,
            second: Some(second),
        };
        Ok((conditioning, first_part.bytes + second_part.bytes))
    }

    /// The width of the text embeddings (the UNet's `cross_attention_dim`).
    pub(super) fn width(&self) -> usize {
        self.first.width + self.second.as_ref().map_or(0, |s| s.encoder.width)
    }

    /// The width of the pooled embeddings (SDXL).
    pub(super) fn pooled_width(&self) -> Option<usize> {
        self.second
            .as_ref()
            .and_then(|s| s.pooling.projection.dim(0).ok())
    }

    /// The first tokenizer's ids of a prompt.
    pub(super) fn prompt_ids(&self, prompt: &str) -> Result<Vec<u32>, LocalError> {
        self.first.tokenizer.ids(prompt)
    }

    /// The embeddings of `prompt`, preceded when `guide` by the
    /// unconditional ones: the negative prompt's, else the empty prompt's
    /// (SDXL with `force_zeros_for_empty_prompt`: zeros).
    pub(super) fn embed(
        &self,
        prompt: &str,
        negative: Option<&str>,
        guide: bool,
        device: &Device,
    ) -> Result<Embeddings, LocalError> {
        let zeros = self.second.as_ref().is_some_and(|s| s.zero_unconditional);
        if guide && negative.is_none() && zeros {
            let conditional = self.embed_texts(&[prompt], device)?;
            let unconditional = |t: &Tensor| Tensor::cat(&[&t.zeros_like()?, t], 0);
            return Ok(Embeddings {
                context: unconditional(&conditional.context)?,
                pooled: conditional.pooled.as_ref().map(unconditional).transpose()?,
            });
        }
        if guide {
            self.embed_texts(&[negative.unwrap_or(""), prompt], device)
        } else {
            self.embed_texts(&[prompt], device)
        }
    }

    /// The embeddings of texts, a row each.
    fn embed_texts(&self, texts: &[&str], device: &Device) -> Result<Embeddings, LocalError> {
        let (tokens, _) = self.first.tokens(texts, device)?;
        let Some(second) = &self.second else {
            return Ok(Embeddings {
                context: self.first.encoder.hidden_states(&tokens)?,
                pooled: None,
            });
        };
        let (first_states, _) = self.first.encoder.penultimate_states(&tokens, false)?;
        let (tokens, ids) = second.encoder.tokens(texts, device)?;
        let (second_states, last) = second.encoder.encoder.penultimate_states(&tokens, true)?;
        let last = last.ok_or_else(|| {
            LocalError::Compute("the second text encoder gave no last hidden state".into())
        })?;
        let pooling = &second.pooling;
        let pooled = ids
            .iter()
            .enumerate()
            .map(|(row, ids)| {
                let at = pooled_position(ids, pooling.legacy, pooling.eos_token_id);
                last.get(row)?.narrow(0, at, 1)
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let pooled = Tensor::cat(&pooled, 0)?.matmul(&pooling.projection.t()?)?;
        Ok(Embeddings {
            context: Tensor::cat(&[&first_states, &second_states], 2)?,
            pooled: Some(pooled),
        })
    }
}
