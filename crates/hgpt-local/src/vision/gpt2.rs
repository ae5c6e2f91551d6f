//! GPT-2 as the decoder of a vision-encoder-decoder model: causal
//! self-attention with a key/value cache, cross-attention over the image
//! encoder's states (`add_cross_attention`), transformers' weight names
//! (`transformer.h.{i}.attn.c_attn`, ... stored as `Conv1D`, `[in, out]`).

use super::attention::{attend, causal_mask, merge_heads, split_heads};
use crate::error::LocalError;
use crate::generate::StepDecoder;
use crate::kernels::{Dense, Epilogue, dense_activation};
use candle_core::{D, Device, Module, Result, Tensor};
use candle_nn::{Activation, Embedding, LayerNorm, VarBuilder, layer_norm};
use serde::Deserialize;

/// The parts of a GPT-2 `config.json` that hgpt reads.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct Gpt2Config {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Longest sequence (position embeddings).
    pub n_positions: usize,
    /// Width.
    pub n_embd: usize,
    /// Layers.
    pub n_layer: usize,
    /// Attention heads.
    pub n_head: usize,
    /// MLP width (`None`: 4 x `n_embd`).
    pub n_inner: Option<usize>,
    /// MLP activation (`gelu_new` is the tanh form).
    pub activation_function: Activation,
    /// LayerNorm epsilon.
    pub layer_norm_epsilon: f64,
    /// Whether blocks have cross-attention.
    pub add_cross_attention: bool,
    /// Scale attention scores by 1/sqrt(head size).
    pub scale_attn_weights: bool,
    /// Also scale them by 1/(layer index + 1).
    pub scale_attn_by_inverse_layer_idx: bool,
}

impl Default for Gpt2Config {
    fn default() -> Self {
        Self {
            vocab_size: 50257,
            n_positions: 1024,
            n_embd: 768,
            n_layer: 12,
            n_head: 12,
            n_inner: None,
            activation_function: Activation::NewGelu,
            layer_norm_epsilon: 1e-5,
            add_cross_attention: false,
            scale_attn_weights: true,
            scale_attn_by_inverse_layer_idx: false,
        }
    }
}

impl Gpt2Config {
    /// Check the numbers the decoder is built from.
    pub fn check(&self) -> std::result::Result<(), String> {
        if self.n_embd == 0 || self.n_head == 0 || !self.n_embd.is_multiple_of(self.n_head) {
            return Err(format!(
                "n_embd {} must be a positive multiple of n_head {}",
                self.n_embd, self.n_head
            ));
        }
        if self.n_layer == 0 || self.vocab_size == 0 || self.n_positions == 0 {
            return Err("n_layer, vocab_size and n_positions must be positive".into());
        }
        if !self.add_cross_attention {
            return Err("the decoder has no cross-attention (add_cross_attention is false)".into());
        }
        Ok(())
    }
}

/// A `Conv1D` (weight `[in, out]`) as a linear layer, for the few rows of
/// decoding.
fn conv1d(input: usize, output: usize, vb: VarBuilder) -> Result<Dense> {
    let weight = vb.get((input, output), "weight")?.t()?;
    let bias = vb.get(output, "bias")?;
    Dense::new(weight, Some(bias))?.for_few_rows()
}

#[derive(Debug, Clone)]
struct Block {
    ln_1: LayerNorm,
    c_attn: Dense,
    attn_proj: Dense,
    ln_cross: LayerNorm,
    q_attn: Dense,
    cross_kv: Dense,
    cross_proj: Dense,
    ln_2: LayerNorm,
    c_fc: Dense,
    mlp_proj: Dense,
    activation: Activation,
    heads: usize,
    scale: f64,
}

impl Block {
    fn load(cfg: &Gpt2Config, index: usize, vb: VarBuilder) -> Result<Self> {
        let d = cfg.n_embd;
        let inner = cfg.n_inner.unwrap_or(4 * d);
        let eps = cfg.layer_norm_epsilon;
        let mut scale = 1.0;
        if cfg.scale_attn_weights {
            scale /= ((d / cfg.n_head) as f64).sqrt();
        }
        if cfg.scale_attn_by_inverse_layer_idx {
            scale /= (index + 1) as f64;
        }
        Ok(Self {
            ln_1: layer_norm(d, eps, vb.pp("ln_1"))?,
            c_attn: conv1d(d, 3 * d, vb.pp("attn.c_attn"))?,
            attn_proj: conv1d(d, d, vb.pp("attn.c_proj"))?,
            ln_cross: layer_norm(d, eps, vb.pp("ln_cross_attn"))?,
            q_attn: conv1d(d, d, vb.pp("crossattention.q_attn"))?,
            cross_kv: conv1d(d, 2 * d, vb.pp("crossattention.c_attn"))?,
            cross_proj: conv1d(d, d, vb.pp("crossattention.c_proj"))?,
            ln_2: layer_norm(d, eps, vb.pp("ln_2"))?,
            c_fc: conv1d(d, inner, vb.pp("mlp.c_fc"))?,
            mlp_proj: conv1d(inner, d, vb.pp("mlp.c_proj"))?,
            activation: cfg.activation_function,
            heads: cfg.n_head,
            scale,
        })
    }

    /// The cross-attention keys and values of the encoder states.
    fn cross_cache(&self, encoder_states: &Tensor) -> Result<(Tensor, Tensor)> {
        let kv = self.cross_kv.forward(encoder_states, Epilogue::Bias)?;
        let d = kv.dim(D::Minus1)? / 2;
        Ok((
            split_heads(&kv.narrow(D::Minus1, 0, d)?, self.heads)?,
            split_heads(&kv.narrow(D::Minus1, d, d)?, self.heads)?,
        ))
    }

    fn forward(
        &self,
        xs: &Tensor,
        cache: &mut LayerCache,
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let qkv = self
            .c_attn
            .forward(&xs.apply(&self.ln_1)?, Epilogue::Bias)?;
        let d = qkv.dim(D::Minus1)? / 3;
        let query = split_heads(&qkv.narrow(D::Minus1, 0, d)?, self.heads)?;
        let mut key = split_heads(&qkv.narrow(D::Minus1, d, d)?, self.heads)?;
        let mut value = split_heads(&qkv.narrow(D::Minus1, 2 * d, d)?, self.heads)?;
        if let Some((past_key, past_value)) = &cache.past {
            key = Tensor::cat(&[past_key, &key], 2)?;
            value = Tensor::cat(&[past_value, &value], 2)?;
        }
        let attended = attend(&query, &key, &value, self.scale, mask)?;
        cache.past = Some((key, value));
        let xs = self
            .attn_proj
            .forward(&merge_heads(&attended)?, Epilogue::Residual(xs))?;

        let query = self
            .q_attn
            .forward(&xs.apply(&self.ln_cross)?, Epilogue::Bias)?;
        let query = split_heads(&query, self.heads)?;
        let attended = attend(&query, &cache.cross.0, &cache.cross.1, self.scale, None)?;
        let xs = self
            .cross_proj
            .forward(&merge_heads(&attended)?, Epilogue::Residual(&xs))?;

        let inner = dense_activation(&self.c_fc, &xs.apply(&self.ln_2)?, self.activation)?;
        self.mlp_proj.forward(&inner, Epilogue::Residual(&xs))
    }
}

#[derive(Debug, Clone)]
struct LayerCache {
    cross: (Tensor, Tensor),
    past: Option<(Tensor, Tensor)>,
}

/// `GPT2LMHeadModel` with cross-attention.
#[derive(Debug, Clone)]
pub struct Gpt2Decoder {
    wte: Embedding,
    wpe: Embedding,
    blocks: Vec<Block>,
    ln_f: LayerNorm,
    lm_head: Dense,
    vocab_size: usize,
    n_positions: usize,
}

impl Gpt2Decoder {
    /// Build from weights under `vb` (`transformer.*`, and `lm_head.weight`
    /// when it is not tied to the token embeddings).
    pub fn load(cfg: &Gpt2Config, vb: VarBuilder) -> Result<Self> {
        let d = cfg.n_embd;
        let transformer = vb.pp("transformer");
        let wte_weight = transformer.get((cfg.vocab_size, d), "wte.weight")?;
        // A head tied to the embeddings reads their table as it is.
        let lm_head = if vb.contains_tensor("lm_head.weight") {
            Dense::new(vb.get((cfg.vocab_size, d), "lm_head.weight")?, None)?.for_few_rows()?
        } else {
            Dense::new(wte_weight.clone(), None)?
        };
        let blocks = (0..cfg.n_layer)
            .map(|i| Block::load(cfg, i, transformer.pp("h").pp(i)))
            .collect::<Result<_>>()?;
        Ok(Self {
            wte: Embedding::new(wte_weight, d),
            wpe: Embedding::new(transformer.get((cfg.n_positions, d), "wpe.weight")?, d),
            blocks,
            ln_f: layer_norm(d, cfg.layer_norm_epsilon, transformer.pp("ln_f"))?,
            lm_head,
            vocab_size: cfg.vocab_size,
            n_positions: cfg.n_positions,
        })
    }

    /// A decoding session over encoder states `[1, tokens, n_embd]`.
    pub fn session(&self, encoder_states: &Tensor) -> Result<Gpt2Session<'_>> {
        let caches = self
            .blocks
            .iter()
            .map(|block| {
                Ok(LayerCache {
                    cross: block.cross_cache(encoder_states)?,
                    past: None,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Gpt2Session {
            decoder: self,
            caches,
            position: 0,
            device: encoder_states.device().clone(),
        })
    }

    /// Logits `[1, tokens, vocab]` for teacher-forced `tokens` (tests).
    pub fn logits(&self, encoder_states: &Tensor, tokens: &[u32]) -> Result<Tensor> {
        let mut session = self.session(encoder_states)?;
        session.forward(tokens)
    }
}

/// One caption being generated: the caches of every layer (cloned, it
/// shares the caches it has so far).
#[derive(Clone)]
pub struct Gpt2Session<'a> {
    decoder: &'a Gpt2Decoder,
    caches: Vec<LayerCache>,
    position: usize,
    device: Device,
}

impl Gpt2Session<'_> {
    /// Logits `[1, tokens.len(), vocab]` after feeding `tokens`.
    fn forward(&mut self, tokens: &[u32]) -> Result<Tensor> {
        let count = tokens.len();
        let start = self.position;
        if start + count > self.decoder.n_positions {
            candle_core::bail!(
                "the decoder takes at most {} tokens",
                self.decoder.n_positions
            );
        }
        let ids = Tensor::new(tokens, &self.device)?.unsqueeze(0)?;
        let positions =
            Tensor::arange(start as u32, (start + count) as u32, &self.device)?.unsqueeze(0)?;
        let mut xs = (self.decoder.wte.forward(&ids)? + self.decoder.wpe.forward(&positions)?)?;
        let mask = causal_mask(start, count, &self.device)?;
        for (block, cache) in self.decoder.blocks.iter().zip(&mut self.caches) {
            xs = block.forward(&xs, cache, mask.as_ref())?;
        }
        self.position += count;
        self.decoder
            .lm_head
            .forward(&xs.apply(&self.decoder.ln_f)?, Epilogue::Bias)
    }
}

impl StepDecoder for Gpt2Session<'_> {
    fn feed(&mut self, tokens: &[u32]) -> std::result::Result<Vec<f32>, LocalError> {
        let logits = self.forward(tokens)?;
        let last = logits.dim(1)? - 1;
        Ok(logits.narrow(1, last, 1)?.flatten_all()?.to_vec1::<f32>()?)
    }

    fn vocab_size(&self) -> usize {
        self.decoder.vocab_size
    }
}
