//! One decoder for the GGUF families the controller runs (llama, qwen2,
//! qwen3, phi3, gemma3), on candle's quantized matmuls.
//!
//! The weights are immutable and shared; the attention state lives in a
//! separate [`KvCache`], so one loaded model serves many conversations, a
//! prefilled prompt prefix can be copied instead of recomputed, and a cache
//! can be written to disk and read back.

use crate::attention::Attend;
use crate::error::{ControllerError, Result};
use crate::gguf::GgufFile;
use crate::qmatmul::QWeight;
use candle_core::quantized::{QStorage, QTensor};
use candle_core::{D, DType, Device, Tensor};
use std::borrow::Cow;
use std::sync::Arc;

/// How the rotary embedding pairs dimensions (llama.cpp's rope types).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RopeStyle {
    /// Adjacent pairs (llama.cpp `NORM`; llama GGUF q/k are permuted for it).
    Interleaved,
    /// First half with second half (llama.cpp `NEOX`).
    Halves,
}

/// The feed-forward activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Activation {
    Silu,
    GeluTanh,
}

/// Hyper-parameters read from the GGUF metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// `general.architecture`.
    pub arch: String,
    /// Transformer blocks.
    pub layers: usize,
    /// Width of the residual stream.
    pub hidden: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Dimensions of a head that are rotated.
    pub rope_dim: usize,
    /// RMS norm epsilon.
    pub norm_eps: f64,
    /// The context length the model was trained for.
    pub trained_context: usize,
    /// Vocabulary size (rows of the embedding).
    pub vocab: usize,
}

/// A projection: quantized weight and optional bias.
#[derive(Debug, Clone)]
struct Linear {
    weight: QWeight,
    bias: Option<Tensor>,
}

impl Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.weight.forward(x)?;
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }
}

#[derive(Debug, Clone)]
enum Attention {
    Separate { q: Linear, k: Linear, v: Linear },
    Fused(Linear),
}

#[derive(Debug, Clone)]
enum FeedForward {
    Separate { gate: Linear, up: Linear },
    Fused(Linear),
}

#[derive(Debug, Clone)]
struct Layer {
    attn_norm: Tensor,
    attention: Attention,
    q_norm: Option<Tensor>,
    k_norm: Option<Tensor>,
    output: Linear,
    post_attn_norm: Option<Tensor>,
    ffn_norm: Tensor,
    feed_forward: FeedForward,
    down: Linear,
    post_ffn_norm: Option<Tensor>,
    /// Sliding-window size, for layers that attend to recent tokens only.
    window: Option<usize>,
    /// Which rotary table this layer uses.
    rope: usize,
}

/// Cosine and sine tables for one rotary base.
#[derive(Debug, Clone)]
struct RopeTable {
    cos: Tensor,
    sin: Tensor,
}

/// A loaded decoder.
pub struct Model {
    config: Config,
    device: Device,
    /// The token table; the same matrix as `lm_head` when the model ties them.
    embedding: QWeight,
    embedding_scale: Option<f64>,
    layers: Vec<Layer>,
    final_norm: Tensor,
    lm_head: QWeight,
    ropes: Vec<RopeTable>,
    rope_style: RopeStyle,
    activation: Activation,
    /// Query scale applied before the scores (1/sqrt(head_dim) by default).
    query_scale: f64,
    /// Positions the rope tables cover (the context this model runs with).
    context: usize,
    weight_bytes: usize,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn corrupt(gguf: &GgufFile, message: String) -> ControllerError {
    ControllerError::Corrupt {
        path: gguf.path().to_path_buf(),
        message,
    }
}

/// Loads tensors and counts their bytes.
struct Loader<'a> {
    gguf: &'a mut GgufFile,
    device: &'a Device,
    bytes: usize,
}

impl Loader<'_> {
    fn qtensor(&mut self, name: &str) -> Result<Arc<QTensor>> {
        let t = self.gguf.tensor(name, self.device)?;
        self.bytes += t.storage_size_in_bytes();
        Ok(Arc::new(t))
    }

    fn optional_qtensor(&mut self, name: &str) -> Result<Option<Arc<QTensor>>> {
        if self.gguf.has_tensor(name) {
            self.qtensor(name).map(Some)
        } else {
            Ok(None)
        }
    }

    /// A small tensor (norms, biases) as f32, checked against its width.
    fn vector(&mut self, name: &str, len: usize) -> Result<Tensor> {
        let t = self.qtensor(name)?.dequantize(self.device)?;
        let t = t.flatten_all()?;
        if t.dim(0)? != len {
            return Err(corrupt(
                self.gguf,
                format!("{name} has {} values, expected {len}", t.dim(0)?),
            ));
        }
        Ok(t)
    }

    fn optional_vector(&mut self, name: &str, len: usize) -> Result<Option<Tensor>> {
        if self.gguf.has_tensor(name) {
            self.vector(name, len).map(Some)
        } else {
            Ok(None)
        }
    }

    /// A weight matrix `[rows, cols]` (outermost first) and its bias, checked.
    fn weight_and_bias(
        &mut self,
        name: &str,
        rows: usize,
        cols: usize,
    ) -> Result<(Arc<QTensor>, Option<Tensor>)> {
        let weight = self.qtensor(&format!("{name}.weight"))?;
        let dims = weight.shape().dims().to_vec();
        if dims != [rows, cols] {
            return Err(corrupt(
                self.gguf,
                format!("{name}.weight has shape {dims:?}, expected [{rows}, {cols}]"),
            ));
        }
        let bias = self.optional_vector(&format!("{name}.bias"), rows)?;
        Ok((weight, bias))
    }

    fn linear(&mut self, name: &str, rows: usize, cols: usize) -> Result<Linear> {
        let (weight, bias) = self.weight_and_bias(name, rows, cols)?;
        Ok(Linear {
            weight: QWeight::new(weight)?,
            bias,
        })
    }

    /// Projections of the same input (`(name, rows)`, each `[rows, cols]`),
    /// stacked into one `[Σ rows, cols]` matrix when they share a type and
    /// all or none have a bias: one product (and one quantization of the
    /// input) instead of several. Otherwise each on its own, in order.
    fn stacked(&mut self, parts: &[(String, usize)], cols: usize) -> Result<Stacked> {
        let mut loaded = Vec::with_capacity(parts.len());
        for (name, rows) in parts {
            loaded.push(self.weight_and_bias(name, *rows, cols)?);
        }
        let dtype = loaded[0].0.dtype();
        let biased = loaded.iter().filter(|(_, b)| b.is_some()).count();
        if loaded.iter().any(|(w, _)| w.dtype() != dtype) || (biased != 0 && biased != loaded.len())
        {
            return loaded
                .into_iter()
                .map(|(weight, bias)| {
                    Ok(Linear {
                        weight: QWeight::new(weight)?,
                        bias,
                    })
                })
                .collect::<Result<Vec<_>>>()
                .map(Stacked::Apart);
        }
        let mut bytes = Vec::new();
        for (weight, _) in &loaded {
            bytes.extend_from_slice(&weight.data()?);
        }
        let rows: usize = parts.iter().map(|(_, rows)| rows).sum();
        let storage = QStorage::from_data(Cow::Owned(bytes), self.device, dtype)?;
        let weight = Arc::new(QTensor::new(storage, (rows, cols))?);
        let biases: Vec<&Tensor> = loaded.iter().filter_map(|(_, b)| b.as_ref()).collect();
        let bias = (!biases.is_empty())
            .then(|| Tensor::cat(&biases, 0))
            .transpose()?;
        Ok(Stacked::Together(Linear {
            weight: QWeight::new(weight)?,
            bias,
        }))
    }
}

/// What [`Loader::stacked`] made of several projections.
enum Stacked {
    Together(Linear),
    Apart(Vec<Linear>),
}

impl Model {
    /// Load the decoder of a GGUF file onto `device`, with rotary tables for
    /// `context` positions (capped at the trained context).
    pub fn load(gguf: &mut GgufFile, device: &Device, context: usize) -> Result<Self> {
        let arch = gguf.architecture()?;
        let key = |name: &str| format!("{arch}.{name}");
        let layers = gguf.required(&key("block_count"))?;
        let hidden = gguf.required(&key("embedding_length"))?;
        let heads = gguf.required(&key("attention.head_count"))?;
        let kv_heads = gguf
            .unsigned(&key("attention.head_count_kv"))
            .map(|v| v as usize)
            .unwrap_or(heads);
        let ffn = gguf.required(&key("feed_forward_length"))?;
        if heads == 0
            || kv_heads == 0
            || !heads.is_multiple_of(kv_heads)
            || layers == 0
            || layers > 1024
        {
            return Err(corrupt(
                gguf,
                format!("implausible shape: {layers} layers, {heads} heads, {kv_heads} kv heads"),
            ));
        }
        let head_dim = gguf
            .unsigned(&key("attention.key_length"))
            .map(|v| v as usize)
            .unwrap_or(hidden / heads);
        let rope_dim = gguf
            .unsigned(&key("rope.dimension_count"))
            .map(|v| v as usize)
            .unwrap_or(head_dim);
        if head_dim == 0 || rope_dim == 0 || rope_dim > head_dim || !rope_dim.is_multiple_of(2) {
            return Err(corrupt(
                gguf,
                format!("implausible head width {head_dim} / rotary width {rope_dim}"),
            ));
        }
        let norm_eps = gguf
            .float(&key("attention.layer_norm_rms_epsilon"))
            .unwrap_or(1e-6);
        let trained_context = gguf
            .unsigned(&key("context_length"))
            .map(|v| v as usize)
            .unwrap_or(4096);
        let context = context.min(trained_context).max(1);
        let rope_base = gguf.float(&key("rope.freq_base")).unwrap_or(10_000.0);
        let embd_shape = gguf
            .tensor_shape("token_embd.weight")
            .ok_or_else(|| corrupt(gguf, "the tensor token_embd.weight is missing".into()))?;
        let vocab = match embd_shape.as_slice() {
            [rows, cols] if *cols == hidden => *rows,
            other => {
                return Err(corrupt(
                    gguf,
                    format!("token_embd.weight has shape {other:?}, expected [vocab, {hidden}]"),
                ));
            }
        };
        let gemma = arch == "gemma3";
        let window = gguf
            .unsigned(&key("attention.sliding_window"))
            .map(|v| v as usize)
            .filter(|w| *w > 0);

        let mut loader = Loader {
            gguf,
            device,
            bytes: 0,
        };
        let embedding = QWeight::new(loader.qtensor("token_embd.weight")?)?;
        let lm_head = match loader.optional_qtensor("output.weight")? {
            Some(t) => QWeight::new(t)?,
            None => embedding.clone(),
        };
        let final_norm = loader.vector("output_norm.weight", hidden)?;
        // Llama 3.x and Phi-3 long-context files carry per-frequency factors.
        let freq_factors = match loader.optional_qtensor("rope_freqs.weight")? {
            Some(t) => Some(t),
            None => loader.optional_qtensor("rope_factors_short.weight")?,
        }
        .map(|t| {
            t.dequantize(device)
                .and_then(|t| t.flatten_all()?.to_vec1::<f32>())
        })
        .transpose()?;
        if let Some(f) = &freq_factors
            && f.len() != rope_dim / 2
        {
            return Err(corrupt(
                loader.gguf,
                format!(
                    "rope frequency factors have {} values, expected {}",
                    f.len(),
                    rope_dim / 2
                ),
            ));
        }

        let q_width = heads * head_dim;
        let kv_width = kv_heads * head_dim;
        let mut blocks = Vec::with_capacity(layers);
        for i in 0..layers {
            let p = format!("blk.{i}");
            let attention = if loader.gguf.has_tensor(&format!("{p}.attn_qkv.weight")) {
                Attention::Fused(loader.linear(
                    &format!("{p}.attn_qkv"),
                    q_width + 2 * kv_width,
                    hidden,
                )?)
            } else {
                let parts = [
                    (format!("{p}.attn_q"), q_width),
                    (format!("{p}.attn_k"), kv_width),
                    (format!("{p}.attn_v"), kv_width),
                ];
                match loader.stacked(&parts, hidden)? {
                    Stacked::Together(qkv) => Attention::Fused(qkv),
                    Stacked::Apart(apart) => match <[Linear; 3]>::try_from(apart) {
                        Ok([q, k, v]) => Attention::Separate { q, k, v },
                        Err(_) => {
                            return Err(corrupt(loader.gguf, "attention: 3 projections".into()));
                        }
                    },
                }
            };
            let feed_forward = if loader.gguf.has_tensor(&format!("{p}.ffn_gate.weight")) {
                let parts = [(format!("{p}.ffn_gate"), ffn), (format!("{p}.ffn_up"), ffn)];
                match loader.stacked(&parts, hidden)? {
                    Stacked::Together(gate_up) => FeedForward::Fused(gate_up),
                    Stacked::Apart(apart) => match <[Linear; 2]>::try_from(apart) {
                        Ok([gate, up]) => FeedForward::Separate { gate, up },
                        Err(_) => {
                            return Err(corrupt(loader.gguf, "feed-forward: 2 projections".into()));
                        }
                    },
                }
            } else {
                FeedForward::Fused(loader.linear(&format!("{p}.ffn_up"), 2 * ffn, hidden)?)
            };
            // Gemma 3: every sixth layer attends globally with the long rope
            // base; the others use a sliding window and base 10 000.
            let (layer_window, rope) = if gemma {
                if (i + 1) % 6 == 0 {
                    (None, 0)
                } else {
                    (window, 1)
                }
            } else {
                // llama.cpp runs the other families without a window (it
                // disables phi3's), and so does hgpt.
                (None, 0)
            };
            blocks.push(Layer {
                attn_norm: loader.vector(&format!("{p}.attn_norm.weight"), hidden)?,
                attention,
                q_norm: loader.optional_vector(&format!("{p}.attn_q_norm.weight"), head_dim)?,
                k_norm: loader.optional_vector(&format!("{p}.attn_k_norm.weight"), head_dim)?,
                output: loader.linear(&format!("{p}.attn_output"), hidden, q_width)?,
                post_attn_norm: loader
                    .optional_vector(&format!("{p}.post_attention_norm.weight"), hidden)?,
                ffn_norm: loader.vector(&format!("{p}.ffn_norm.weight"), hidden)?,
                feed_forward,
                down: loader.linear(&format!("{p}.ffn_down"), hidden, ffn)?,
                post_ffn_norm: loader
                    .optional_vector(&format!("{p}.post_ffw_norm.weight"), hidden)?,
                window: layer_window,
                rope,
            });
        }
        let weight_bytes = loader.bytes;
        let scaling = |base: f64, factor: f64| {
            rope_table(
                rope_dim,
                base,
                factor,
                freq_factors.as_deref(),
                context,
                device,
            )
        };
        let linear_factor = gguf
            .float(&key("rope.scaling.factor"))
            .filter(|_| gguf.string(&key("rope.scaling.type")) == Some("linear"))
            .unwrap_or(1.0);
        let mut ropes = vec![scaling(rope_base, linear_factor)?];
        if gemma {
            let local_base = gguf.float(&key("rope.freq_base_swa")).unwrap_or(10_000.0);
            ropes.push(scaling(local_base, 1.0)?);
        }
        let rope_style = if arch == "llama" {
            RopeStyle::Interleaved
        } else {
            RopeStyle::Halves
        };
        Ok(Self {
            config: Config {
                arch,
                layers,
                hidden,
                heads,
                kv_heads,
                head_dim,
                rope_dim,
                norm_eps,
                trained_context,
                vocab,
            },
            device: device.clone(),
            embedding,
            embedding_scale: gemma.then(|| (hidden as f64).sqrt()),
            layers: blocks,
            final_norm,
            lm_head,
            ropes,
            rope_style,
            activation: if gemma {
                Activation::GeluTanh
            } else {
                Activation::Silu
            },
            query_scale: 1.0 / (head_dim as f64).sqrt(),
            context,
            weight_bytes,
        })
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Positions this model runs with (its KV caches hold at most this many).
    pub fn context(&self) -> usize {
        self.context
    }

    /// Bytes of weights held.
    pub fn weight_bytes(&self) -> usize {
        self.weight_bytes
    }

    /// The device the weights are on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// An empty cache for this model.
    pub fn new_cache(&self) -> KvCache {
        KvCache {
            layers: Vec::new(),
            tokens: Vec::new(),
            capacity: 0,
        }
    }

    /// Feed `tokens` after what `cache` holds; returns the logits of the last
    /// position (`[vocab]`, f32). Long inputs are fed in chunks.
    pub fn forward(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Tensor> {
        const CHUNK: usize = 256;
        if tokens.is_empty() {
            return Err(ControllerError::Inference("no tokens to feed".into()));
        }
        if cache.len() + tokens.len() > self.context {
            return Err(ControllerError::ContextTooLong {
                prompt: cache.len() + tokens.len(),
                context: self.context,
                reserve: 0,
            });
        }
        if let Some(bad) = tokens.iter().find(|t| **t as usize >= self.config.vocab) {
            return Err(ControllerError::Inference(format!(
                "token id {bad} is outside the vocabulary of {}",
                self.config.vocab
            )));
        }
        let mut logits = None;
        for chunk in tokens.chunks(CHUNK) {
            logits = Some(self.forward_chunk(chunk, cache)?);
        }
        logits.ok_or_else(|| ControllerError::Inference("no tokens to feed".into()))
    }

    fn forward_chunk(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Tensor> {
        let seq = tokens.len();
        let start = cache.len();
        cache.reserve(self, start + seq)?;
        let ids = Tensor::new(tokens, &self.device)?;
        let mut x = self.embedding.embedding(&ids)?;
        if let Some(scale) = self.embedding_scale {
            x = (x * scale)?;
        }
        let eps = self.config.norm_eps as f32;
        for (index, layer) in self.layers.iter().enumerate() {
            let h = candle_nn::ops::rms_norm(&x, &layer.attn_norm, eps)?;
            let mut a = self.attention(layer, &h, index, start, cache)?;
            if let Some(norm) = &layer.post_attn_norm {
                a = candle_nn::ops::rms_norm(&a, norm, eps)?;
            }
            x = (x + a)?;
            let h = candle_nn::ops::rms_norm(&x, &layer.ffn_norm, eps)?;
            let (gate, up) = match &layer.feed_forward {
                FeedForward::Separate { gate, up } => (gate.forward(&h)?, up.forward(&h)?),
                FeedForward::Fused(fused) => {
                    let both = fused.forward(&h)?;
                    let half = both.dim(D::Minus1)? / 2;
                    (
                        both.narrow(D::Minus1, 0, half)?,
                        both.narrow(D::Minus1, half, half)?,
                    )
                }
            };
            let gate = match self.activation {
                Activation::Silu => candle_nn::ops::silu(&gate)?,
                Activation::GeluTanh => gate.gelu()?,
            };
            let mut f = layer.down.forward(&(gate * up)?)?;
            if let Some(norm) = &layer.post_ffn_norm {
                f = candle_nn::ops::rms_norm(&f, norm, eps)?;
            }
            x = (x + f)?;
        }
        cache.tokens.extend_from_slice(tokens);
        let last = x.narrow(0, seq - 1, 1)?;
        let last = candle_nn::ops::rms_norm(&last, &self.final_norm, eps)?;
        let logits = self.lm_head.forward(&last)?;
        Ok(logits.squeeze(0)?.to_dtype(DType::F32)?)
    }

    fn rotate(&self, x: &Tensor, table: &RopeTable, start: usize) -> Result<Tensor> {
        // x: [heads, seq, head_dim]
        let seq = x.dim(1)?;
        let cos = table.cos.narrow(0, start, seq)?;
        let sin = table.sin.narrow(0, start, seq)?;
        let rot = |t: &Tensor| -> Result<Tensor> {
            let t = t.unsqueeze(0)?.contiguous()?;
            let out = match self.rope_style {
                RopeStyle::Interleaved => candle_nn::rotary_emb::rope_i(&t, &cos, &sin)?,
                RopeStyle::Halves => candle_nn::rotary_emb::rope(&t, &cos, &sin)?,
            };
            Ok(out.squeeze(0)?)
        };
        let dim = self.config.head_dim;
        let rope_dim = self.config.rope_dim;
        if rope_dim == dim {
            rot(x)
        } else {
            let head = rot(&x.narrow(D::Minus1, 0, rope_dim)?)?;
            let tail = x.narrow(D::Minus1, rope_dim, dim - rope_dim)?;
            Ok(Tensor::cat(&[&head, &tail], D::Minus1)?)
        }
    }

    fn attention(
        &self,
        layer: &Layer,
        h: &Tensor,
        index: usize,
        start: usize,
        cache: &mut KvCache,
    ) -> Result<Tensor> {
        let c = &self.config;
        let seq = h.dim(0)?;
        let (q, k, v) = match &layer.attention {
            Attention::Separate { q, k, v } => (q.forward(h)?, k.forward(h)?, v.forward(h)?),
            Attention::Fused(qkv) => {
                let all = qkv.forward(h)?;
                let qw = c.heads * c.head_dim;
                let kw = c.kv_heads * c.head_dim;
                (
                    all.narrow(1, 0, qw)?,
                    all.narrow(1, qw, kw)?,
                    all.narrow(1, qw + kw, kw)?,
                )
            }
        };
        // [seq, heads * dim] -> [heads, seq, dim]
        let split = |t: Tensor, heads: usize| -> Result<Tensor> {
            Ok(t.reshape((seq, heads, c.head_dim))?
                .transpose(0, 1)?
                .contiguous()?)
        };
        let mut q = split(q, c.heads)?;
        let mut k = split(k, c.kv_heads)?;
        let v = split(v, c.kv_heads)?;
        let eps = c.norm_eps as f32;
        if let Some(norm) = &layer.q_norm {
            q = candle_nn::ops::rms_norm(&q, norm, eps)?;
        }
        if let Some(norm) = &layer.k_norm {
            k = candle_nn::ops::rms_norm(&k, norm, eps)?;
        }
        let table = &self.ropes[layer.rope];
        let q = self.rotate(&q, table, start)?;
        let k = self.rotate(&k, table, start)?;
        let (keys, values) = cache.append(index, &k, &v, start)?;
        if self.device.is_cpu() {
            let attend = Attend {
                start,
                window: layer.window,
                scale: self.query_scale as f32,
            };
            return layer.output.forward(&attend.apply(&q, &keys, &values)?);
        }
        let total = start + seq;
        let group = c.heads / c.kv_heads;
        // Query heads that share a key/value head are stacked as rows, so GQA
        // needs no copies of the keys: [kv_heads, group * seq, dim].
        let q = (q * self.query_scale)?.reshape((c.kv_heads, group * seq, c.head_dim))?;
        let scores = q.matmul(&keys.t()?)?;
        let scores = match attention_mask(seq, start, layer.window, group) {
            Some(mask) => {
                let mask = Tensor::from_vec(mask, (group * seq, total), &self.device)?;
                scores.broadcast_add(&mask)?
            }
            None => scores,
        };
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let out = probs.matmul(&values)?; // [kv_heads, group * seq, dim]
        let out = out
            .reshape((c.heads, seq, c.head_dim))?
            .transpose(0, 1)?
            .reshape((seq, c.heads * c.head_dim))?;
        layer.output.forward(&out)
    }
}

/// The additive mask for `seq` new queries after `start` cached positions,
/// repeated for `group` stacked heads; `None` when nothing is masked.
fn attention_mask(
    seq: usize,
    start: usize,
    window: Option<usize>,
    group: usize,
) -> Option<Vec<f32>> {
    let total = start + seq;
    let allowed = |query: usize, key: usize| key <= query && window.is_none_or(|w| query - key < w);
    let needs_mask = seq > 1 || window.is_some_and(|w| total > w);
    if !needs_mask {
        return None;
    }
    let mut row_block = Vec::with_capacity(seq * total);
    for i in 0..seq {
        let query = start + i;
        row_block.extend((0..total).map(|key| {
            if allowed(query, key) {
                0.0
            } else {
                f32::NEG_INFINITY
            }
        }));
    }
    let mut mask = Vec::with_capacity(group * seq * total);
    for _ in 0..group {
        mask.extend_from_slice(&row_block);
    }
    Some(mask)
}

fn rope_table(
    rope_dim: usize,
    base: f64,
    linear_factor: f64,
    freq_factors: Option<&[f32]>,
    positions: usize,
    device: &Device,
) -> Result<RopeTable> {
    let half = rope_dim / 2;
    let inv_freq: Vec<f64> = (0..half)
        .map(|i| {
            let f = 1.0 / base.powf(2.0 * i as f64 / rope_dim as f64);
            let f = f / freq_factors.map_or(1.0, |ff| f64::from(ff[i]));
            f / linear_factor
        })
        .collect();
    let mut cos = Vec::with_capacity(positions * half);
    let mut sin = Vec::with_capacity(positions * half);
    for p in 0..positions {
        for f in &inv_freq {
            let angle = p as f64 * f;
            cos.push(angle.cos() as f32);
            sin.push(angle.sin() as f32);
        }
    }
    Ok(RopeTable {
        cos: Tensor::from_vec(cos, (positions, half), device)?,
        sin: Tensor::from_vec(sin, (positions, half), device)?,
    })
}

/// The attention keys and values of the tokens fed so far, per layer, in
/// buffers that grow by doubling (`[kv_heads, capacity, head_dim]`).
#[derive(Debug)]
pub struct KvCache {
    layers: Vec<(Tensor, Tensor)>,
    tokens: Vec<u32>,
    capacity: usize,
}

impl KvCache {
    /// Positions held.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The tokens whose state is held.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// Forget everything after the first `len` positions.
    pub fn truncate(&mut self, len: usize) {
        self.tokens.truncate(len);
    }

    /// Bytes held by the buffers.
    pub fn bytes(&self) -> usize {
        self.layers
            .iter()
            .map(|(k, v)| (k.elem_count() + v.elem_count()) * 4)
            .sum()
    }

    fn reserve(&mut self, model: &Model, needed: usize) -> Result<()> {
        if needed <= self.capacity && self.layers.len() == model.layers.len() {
            return Ok(());
        }
        let c = &model.config;
        let capacity = needed.next_power_of_two().max(64).min(model.context);
        let len = self.len();
        let mut layers = Vec::with_capacity(c.layers);
        for i in 0..c.layers {
            let k = Tensor::zeros(
                (c.kv_heads, capacity, c.head_dim),
                DType::F32,
                &model.device,
            )?;
            let v = Tensor::zeros(
                (c.kv_heads, capacity, c.head_dim),
                DType::F32,
                &model.device,
            )?;
            if let Some((old_k, old_v)) = self.layers.get(i)
                && len > 0
            {
                k.slice_set(&old_k.narrow(1, 0, len)?.contiguous()?, 1, 0)?;
                v.slice_set(&old_v.narrow(1, 0, len)?.contiguous()?, 1, 0)?;
            }
            layers.push((k, v));
        }
        self.layers = layers;
        self.capacity = capacity;
        Ok(())
    }

    /// Write a layer's new keys and values at `start`; returns views of all
    /// of them (`[kv_heads, start + seq, head_dim]`).
    fn append(
        &mut self,
        layer: usize,
        k: &Tensor,
        v: &Tensor,
        start: usize,
    ) -> Result<(Tensor, Tensor)> {
        let (keys, values) = self
            .layers
            .get(layer)
            .ok_or_else(|| ControllerError::Inference(format!("no cache for layer {layer}")))?;
        keys.slice_set(k, 1, start)?;
        values.slice_set(v, 1, start)?;
        let total = start + k.dim(1)?;
        Ok((keys.narrow(1, 0, total)?, values.narrow(1, 0, total)?))
    }

    /// An independent copy of the first `len` positions.
    pub fn fork(&self, len: usize) -> Result<Self> {
        let len = len.min(self.len());
        let mut layers = Vec::with_capacity(self.layers.len());
        let capacity = len.next_power_of_two().max(64).min(self.capacity.max(64));
        for (k, v) in &self.layers {
            let copy = |t: &Tensor| -> Result<Tensor> {
                let (heads, _, dim) = t.dims3()?;
                let out = Tensor::zeros((heads, capacity, dim), DType::F32, t.device())?;
                if len > 0 {
                    out.slice_set(&t.narrow(1, 0, len)?.contiguous()?, 1, 0)?;
                }
                Ok(out)
            };
            layers.push((copy(k)?, copy(v)?));
        }
        Ok(Self {
            layers,
            tokens: self.tokens[..len].to_vec(),
            capacity,
        })
    }

    /// The held state as named tensors (`k.{layer}`, `v.{layer}`), for saving.
    pub fn tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let len = self.len();
        let mut out = Vec::with_capacity(self.layers.len() * 2);
        for (i, (k, v)) in self.layers.iter().enumerate() {
            out.push((format!("k.{i}"), k.narrow(1, 0, len)?.contiguous()?));
            out.push((format!("v.{i}"), v.narrow(1, 0, len)?.contiguous()?));
        }
        Ok(out)
    }

    /// A cache from saved tensors, checked against the model's shapes.
    pub fn from_tensors(
        model: &Model,
        tokens: Vec<u32>,
        mut tensors: std::collections::HashMap<String, Tensor>,
    ) -> Result<Self> {
        let c = &model.config;
        let len = tokens.len();
        if len > model.context {
            return Err(ControllerError::Inference(
                "saved cache longer than the context".into(),
            ));
        }
        let mut cache = Self {
            layers: Vec::new(),
            tokens: Vec::new(),
            capacity: 0,
        };
        if len == 0 {
            return Ok(cache);
        }
        cache.reserve(model, len)?;
        for i in 0..c.layers {
            for (slot, name) in [(0, format!("k.{i}")), (1, format!("v.{i}"))] {
                let t = tensors.remove(&name).ok_or_else(|| {
                    ControllerError::Inference(format!("saved cache lacks {name}"))
                })?;
                if t.dims() != [c.kv_heads, len, c.head_dim] || t.dtype() != DType::F32 {
                    return Err(ControllerError::Inference(format!(
                        "saved cache tensor {name} has shape {:?}",
                        t.dims()
                    )));
                }
                let t = t.to_device(&model.device)?;
                let dst = if slot == 0 {
                    &cache.layers[i].0
                } else {
                    &cache.layers[i].1
                };
                dst.slice_set(&t, 1, 0)?;
            }
        }
        cache.tokens = tokens;
        Ok(cache)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_is_causal_and_windowed() {
        // Two new queries after one cached position, no window.
        let m = attention_mask(2, 1, None, 1).unwrap();
        let inf = f32::NEG_INFINITY;
        assert_eq!(m, vec![0.0, 0.0, inf, 0.0, 0.0, 0.0]);
        // A single query needs no mask unless the window cuts.
        assert!(attention_mask(1, 5, None, 2).is_none());
        assert!(attention_mask(1, 2, Some(4), 1).is_none());
        let m = attention_mask(1, 4, Some(2), 1).unwrap();
        assert_eq!(m, vec![inf, inf, inf, 0.0, 0.0]);
        // Stacked heads repeat the rows.
        let m = attention_mask(2, 0, None, 2).unwrap();
        assert_eq!(m.len(), 2 * 2 * 2);
        assert_eq!(&m[..4], &m[4..]);
    }
}
