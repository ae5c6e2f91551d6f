//! A BERT encoder for sentence embeddings, shaped for CPU throughput.
//!
//! It computes what `transformers`' `BertModel` computes for the real tokens
//! of each text, but:
//! - tokens are packed (`[total tokens, hidden]`): padding never goes through
//!   the linear layers, the layer norms or the activation;
//! - every linear layer is one 2-D product against a weight stored
//!   transposed (`[in, out]`, contiguous), and the query, key and value
//!   projections are one product (the query weights scaled by
//!   `1 / sqrt(head_dim)` at load);
//! - on the CPU (f32), each linear layer is a few direct `gemm` calls run in
//!   parallel on rayon's threads, each computing a block of output columns
//!   with the bias, the residual or the exact (erf) GELU fused in; and the
//!   attention runs per text and head, in parallel, straight from the packed
//!   projections, so a text attends to its own tokens and nothing is padded
//!   or masked;
//! - elsewhere (CUDA, Metal) the same packed encoder runs on candle's
//!   operations, re-padding the texts for the attention scores only and
//!   masking the padded keys as `transformers` does.

use crate::kernels::{Dense, Epilogue, attention_cpu, op_f32, op_f32_mut};
use candle_core::{CpuStorage, DType, Device, Layout, Module, Tensor};
use candle_nn::ops::softmax_last_dim;
use candle_nn::{Embedding, LayerNorm, VarBuilder};
use candle_transformers::models::bert::{Config, HiddenAct};

struct Layer {
    qkv: Dense,
    attention_out: Dense,
    attention_norm: LayerNorm,
    intermediate: Dense,
    output: Dense,
    output_norm: LayerNorm,
}

/// The BERT encoder (`BertModel` without the pooler).
pub(crate) struct Bert {
    word_embeddings: Embedding,
    position_embeddings: Embedding,
    token_type_embeddings: Embedding,
    embeddings_norm: LayerNorm,
    layers: Vec<Layer>,
    heads: usize,
    hidden: usize,
    activation: HiddenAct,
    device: Device,
    /// Whether to run the CPU kernels (f32 on the CPU) rather than candle's
    /// generic operations.
    cpu_kernels: bool,
}

/// One tokenized text: its token ids and token type ids (same length).
pub(crate) struct Sequence<'a> {
    /// Token ids.
    pub ids: &'a [u32],
    /// Token type (segment) ids.
    pub type_ids: &'a [u32],
}

/// How packed tokens are laid out for attention, per head and padded to
/// the longest text, and back.
struct Heads {
    /// The longest text's length.
    longest: usize,
    /// `[3 * batch * heads * longest]`: for each row of the query, key and
    /// value blocks `[3, batch, heads, longest, head_dim]`, the row of the
    /// packed projections seen as `[tokens * 3 * heads, head_dim]` (a padded
    /// position reads a real token of its own text; it is masked out).
    split: Tensor,
    /// `[tokens * heads]`: for each packed token and head, its row of the
    /// attention output seen as `[batch * heads * longest, head_dim]`.
    merge: Tensor,
    /// `[batch, 1, 1, longest]`: 0 for real keys, the lowest f32 for padding;
    /// none when no text is padded.
    mask: Option<Tensor>,
}

impl Bert {
    /// Load from `vb` (weights with or without the `bert.` prefix).
    pub fn load(vb: VarBuilder, config: &Config) -> candle_core::Result<Self> {
        let vb = if vb.contains_tensor("bert.embeddings.word_embeddings.weight") {
            vb.pp("bert")
        } else {
            vb
        };
        let h = config.hidden_size;
        let heads = config.num_attention_heads;
        if heads == 0 || !h.is_multiple_of(heads) {
            candle_core::bail!("hidden size {h} is not a multiple of the {heads} attention heads");
        }
        let eps = config.layer_norm_eps;
        let emb = vb.pp("embeddings");
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let vb = vb.pp(format!("encoder.layer.{i}"));
                let att = vb.pp("attention");
                let part = |name: &str| -> candle_core::Result<(Tensor, Tensor)> {
                    let vb = att.pp("self").pp(name);
                    Ok((vb.get((h, h), "weight")?, vb.get(h, "bias")?))
                };
                let (q, k, v) = (part("query")?, part("key")?, part("value")?);
                // Scaling the query scales the attention scores as BERT does.
                let scale = 1.0 / ((h / heads) as f64).sqrt();
                let q = ((q.0 * scale)?, (q.1 * scale)?);
                Ok(Layer {
                    qkv: Dense::from_parts(&[q.0, k.0, v.0], &[q.1, k.1, v.1])?,
                    attention_out: Dense::load(h, h, att.pp("output.dense"))?,
                    attention_norm: candle_nn::layer_norm(h, eps, att.pp("output.LayerNorm"))?,
                    intermediate: Dense::load(
                        h,
                        config.intermediate_size,
                        vb.pp("intermediate.dense"),
                    )?,
                    output: Dense::load(config.intermediate_size, h, vb.pp("output.dense"))?,
                    output_norm: candle_nn::layer_norm(h, eps, vb.pp("output.LayerNorm"))?,
                })
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self {
            word_embeddings: candle_nn::embedding(config.vocab_size, h, emb.pp("word_embeddings"))?,
            position_embeddings: candle_nn::embedding(
                config.max_position_embeddings,
                h,
                emb.pp("position_embeddings"),
            )?,
            token_type_embeddings: candle_nn::embedding(
                config.type_vocab_size,
                h,
                emb.pp("token_type_embeddings"),
            )?,
            embeddings_norm: candle_nn::layer_norm(h, eps, emb.pp("LayerNorm"))?,
            layers,
            heads,
            hidden: h,
            activation: config.hidden_act,
            cpu_kernels: vb.device().is_cpu() && vb.dtype() == DType::F32,
            device: vb.device().clone(),
        })
    }

    /// The hidden states of every token of every text, packed text after text
    /// into `[total tokens, hidden]` (no padding; a text without tokens has
    /// no rows).
    pub fn forward(&self, batch: &[Sequence<'_>]) -> candle_core::Result<Tensor> {
        let batch: Vec<&Sequence> = batch.iter().filter(|s| !s.ids.is_empty()).collect();
        if batch.is_empty() {
            return Tensor::zeros((0, self.hidden), DType::F32, &self.device);
        }
        let lengths: Vec<usize> = batch.iter().map(|s| s.ids.len()).collect();
        let mut ids = Vec::with_capacity(lengths.iter().sum());
        let mut type_ids = Vec::with_capacity(ids.capacity());
        let mut positions = Vec::with_capacity(ids.capacity());
        for seq in &batch {
            if seq.type_ids.len() != seq.ids.len() {
                candle_core::bail!("token ids and token type ids differ in length");
            }
            ids.extend_from_slice(seq.ids);
            type_ids.extend_from_slice(seq.type_ids);
            positions.extend(0..seq.ids.len() as u32);
        }
        let total = ids.len();
        let tensor = |v: Vec<u32>| Tensor::from_vec(v, total, &self.device);
        let words = self.word_embeddings.forward(&tensor(ids)?)?;
        let types = self.token_type_embeddings.forward(&tensor(type_ids)?)?;
        let places = self.position_embeddings.forward(&tensor(positions)?)?;
        let summed = if self.cpu_kernels {
            // In place: candle's parallel add can stall on a busy machine.
            words.inplace_op3(&types, &places, &AddTwo)?;
            words
        } else {
            ((words + types)? + places)?
        };
        let mut hidden = self.embeddings_norm.forward(&summed)?;
        let heads = if self.cpu_kernels {
            None
        } else {
            Some(self.heads(&lengths)?)
        };
        for layer in &self.layers {
            hidden = self.layer(layer, &hidden, &lengths, heads.as_ref())?;
        }
        Ok(hidden)
    }

    /// The attention layout for texts of `lengths` tokens (none empty).
    fn heads(&self, lengths: &[usize]) -> candle_core::Result<Heads> {
        let (batch, heads) = (lengths.len(), self.heads);
        let longest = lengths.iter().copied().max().unwrap_or(0);
        let tokens: usize = lengths.iter().sum();
        let mut offsets = Vec::with_capacity(batch);
        let mut offset = 0;
        for &len in lengths {
            offsets.push(offset);
            offset += len;
        }
        let mut split = Vec::with_capacity(3 * batch * heads * longest);
        for part in 0..3 {
            for (&start, &len) in offsets.iter().zip(lengths) {
                for head in 0..heads {
                    for pos in 0..longest {
                        let token = start + pos.min(len - 1);
                        split.push(((token * 3 + part) * heads + head) as u32);
                    }
                }
            }
        }
        let mut merge = Vec::with_capacity(tokens * heads);
        for (text, &len) in lengths.iter().enumerate() {
            for pos in 0..len {
                merge.extend((0..heads).map(|head| ((text * heads + head) * longest + pos) as u32));
            }
        }
        let mask = if lengths.iter().all(|&len| len == longest) {
            None
        } else {
            let mask: Vec<f32> = lengths
                .iter()
                .flat_map(|&len| {
                    (0..longest).map(move |pos| if pos < len { 0.0 } else { f32::MIN })
                })
                .collect();
            Some(Tensor::from_vec(
                mask,
                (batch, 1, 1, longest),
                &self.device,
            )?)
        };
        Ok(Heads {
            longest,
            split: Tensor::from_vec(split, 3 * batch * heads * longest, &self.device)?,
            merge: Tensor::from_vec(merge, tokens * heads, &self.device)?,
            mask,
        })
    }

    /// One encoder layer on the packed hidden states `x`; the attention
    /// runs per text on the CPU, or through `heads` otherwise.
    fn layer(
        &self,
        layer: &Layer,
        x: &Tensor,
        lengths: &[usize],
        heads: Option<&Heads>,
    ) -> candle_core::Result<Tensor> {
        let cpu = self.cpu_kernels;
        let qkv = layer.qkv.forward_with(x, Epilogue::Bias, cpu)?;
        let context = match heads {
            Some(at) => self.attention(&qkv, at)?,
            None => attention_cpu(&qkv, lengths, self.heads, false)?,
        };
        let attended = layer
            .attention_norm
            .forward(
                &layer
                    .attention_out
                    .forward_with(&context, Epilogue::Residual(x), cpu)?,
            )?;
        let inner = match self.activation {
            HiddenAct::Gelu => layer
                .intermediate
                .forward_with(&attended, Epilogue::Gelu, cpu)?,
            HiddenAct::GeluApproximate => layer
                .intermediate
                .forward_with(&attended, Epilogue::Bias, cpu)?
                .gelu()?,
            HiddenAct::Relu => layer
                .intermediate
                .forward_with(&attended, Epilogue::Bias, cpu)?
                .relu()?,
        };
        layer.output_norm.forward(&layer.output.forward_with(
            &inner,
            Epilogue::Residual(&attended),
            cpu,
        )?)
    }

    /// Self-attention with candle's operations: the packed projections `qkv`
    /// (`[tokens, 3 * hidden]`, queries scaled) laid out per head and padded,
    /// then packed back into `[tokens, hidden]`.
    fn attention(&self, qkv: &Tensor, at: &Heads) -> candle_core::Result<Tensor> {
        let (tokens, width) = qkv.dims2()?;
        let (hidden, heads) = (width / 3, self.heads);
        let head_dim = hidden / heads;
        let batch = at.split.dim(0)? / (3 * heads * at.longest);
        // One gather lays the projections out per head and pads the texts.
        let qkv = qkv
            .reshape((tokens * 3 * heads, head_dim))?
            .index_select(&at.split, 0)?
            .reshape((3, batch, heads, at.longest, head_dim))?;
        let (q, k, v) = (qkv.get(0)?, qkv.get(1)?, qkv.get(2)?);
        let scores = q.matmul(&k.t()?)?;
        let scores = match &at.mask {
            Some(mask) => scores.broadcast_add(mask)?,
            None => scores,
        };
        // And one gather packs the heads' outputs back.
        softmax_last_dim(&scores)?
            .matmul(&v)?
            .reshape((batch * heads * at.longest, head_dim))?
            .index_select(&at.merge, 0)?
            .reshape((tokens, hidden))
    }
}

/// In place on the CPU: `x = (x + a) + b`, all of one shape.
struct AddTwo;

impl candle_core::InplaceOp3 for AddTwo {
    fn name(&self) -> &'static str {
        "add-two"
    }

    fn cpu_fwd(
        &self,
        x: &mut CpuStorage,
        x_layout: &Layout,
        a: &CpuStorage,
        a_layout: &Layout,
        b: &CpuStorage,
        b_layout: &Layout,
    ) -> candle_core::Result<()> {
        let x = op_f32_mut(self.name(), x, x_layout)?;
        let a = op_f32(self.name(), a, a_layout)?;
        let b = op_f32(self.name(), b, b_layout)?;
        if a.len() != x.len() || b.len() != x.len() {
            candle_core::bail!("add-two: the shapes differ");
        }
        for ((x, a), b) in x.iter_mut().zip(a).zip(b) {
            *x = (*x + a) + b;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_transformers::models::bert::BertModel;
    use std::collections::HashMap;

    fn tiny_config(prefixed: bool) -> Config {
        Config {
            vocab_size: 50,
            hidden_size: 16,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            intermediate_size: 24,
            max_position_embeddings: 32,
            model_type: prefixed.then(|| "bert".to_string()),
            ..Config::default()
        }
    }

    fn random_weights(config: &Config, prefix: &str) -> HashMap<String, Tensor> {
        let dev = &Device::Cpu;
        let (h, i) = (config.hidden_size, config.intermediate_size);
        let mut ts = HashMap::new();
        let mut put = |name: String, shape: &[usize]| {
            let t = Tensor::randn(0f32, 0.5, shape, dev).unwrap();
            ts.insert(format!("{prefix}{name}"), t);
        };
        put(
            "embeddings.word_embeddings.weight".into(),
            &[config.vocab_size, h],
        );
        put(
            "embeddings.position_embeddings.weight".into(),
            &[config.max_position_embeddings, h],
        );
        put("embeddings.token_type_embeddings.weight".into(), &[2, h]);
        let norm = |name: &str, put: &mut dyn FnMut(String, &[usize])| {
            put(format!("{name}.weight"), &[h]);
            put(format!("{name}.bias"), &[h]);
        };
        norm("embeddings.LayerNorm", &mut put);
        for l in 0..config.num_hidden_layers {
            let p = format!("encoder.layer.{l}");
            for part in ["query", "key", "value"] {
                put(format!("{p}.attention.self.{part}.weight"), &[h, h]);
                put(format!("{p}.attention.self.{part}.bias"), &[h]);
            }
            put(format!("{p}.attention.output.dense.weight"), &[h, h]);
            put(format!("{p}.attention.output.dense.bias"), &[h]);
            norm(&format!("{p}.attention.output.LayerNorm"), &mut put);
            put(format!("{p}.intermediate.dense.weight"), &[i, h]);
            put(format!("{p}.intermediate.dense.bias"), &[i]);
            put(format!("{p}.output.dense.weight"), &[h, i]);
            put(format!("{p}.output.dense.bias"), &[h]);
            norm(&format!("{p}.output.LayerNorm"), &mut put);
        }
        ts
    }

    /// The packed encoder gives, for every real token, what candle's padded
    /// `BertModel` gives.
    /// With the CPU kernels, or (`cpu_kernels` false) with the generic
    /// path other devices take.
    fn matches_candle(prefix: &str, cpu_kernels: bool) {
        let config = tiny_config(!prefix.is_empty());
        let weights = random_weights(&config, prefix);
        let vb = VarBuilder::from_tensors(weights, DType::F32, &Device::Cpu);
        let mut ours = Bert::load(vb.clone(), &config).unwrap();
        assert!(ours.cpu_kernels);
        ours.cpu_kernels = cpu_kernels;
        let theirs = BertModel::load(vb, &config).unwrap();
        let texts: [&[u32]; 3] = [&[2, 7, 9, 3], &[2, 11, 3], &[2, 5, 6, 8, 40, 3]];
        let types: [&[u32]; 3] = [&[0, 0, 0, 0], &[0, 1, 1], &[0, 0, 0, 1, 1, 1]];
        let batch: Vec<Sequence> = texts
            .iter()
            .zip(types)
            .map(|(ids, type_ids)| Sequence { ids, type_ids })
            .collect();
        let packed = ours.forward(&batch).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(packed.len(), 13);
        let longest = 6;
        let pad = |rows: &[&[u32]]| -> Tensor {
            let rows: Vec<Vec<u32>> = rows
                .iter()
                .map(|r| {
                    let mut r = r.to_vec();
                    r.resize(longest, 0);
                    r
                })
                .collect();
            Tensor::new(rows, &Device::Cpu).unwrap()
        };
        let mask: Vec<Vec<u32>> = texts
            .iter()
            .map(|t| (0..longest).map(|i| u32::from(i < t.len())).collect())
            .collect();
        let mask = Tensor::new(mask, &Device::Cpu).unwrap();
        let padded = theirs
            .forward(&pad(&texts), &pad(&types), Some(&mask))
            .unwrap()
            .to_vec3::<f32>()
            .unwrap();
        let mut row = 0;
        for (text, states) in texts.iter().zip(&padded) {
            for state in &states[..text.len()] {
                let diff = state
                    .iter()
                    .zip(&packed[row])
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                assert!(diff < 1e-5, "token row {row}: max diff {diff}");
                row += 1;
            }
        }
        // One text alone (no padding) gives the same rows as in the batch.
        let alone = ours
            .forward(&batch[1..2])
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        for (a, b) in alone.iter().zip(&packed[4..7]) {
            let diff = a
                .iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max);
            assert!(diff < 1e-5, "alone vs batched: {diff}");
        }
    }

    #[test]
    fn packed_encoder_matches_candles_bert() {
        matches_candle("", true);
    }

    #[test]
    fn generic_path_matches_candles_bert() {
        matches_candle("", false);
    }

    #[test]
    fn weights_with_the_bert_prefix_load() {
        matches_candle("bert.", true);
    }

    #[test]
    fn texts_without_tokens_have_no_rows() {
        let config = tiny_config(false);
        let vb = VarBuilder::from_tensors(random_weights(&config, ""), DType::F32, &Device::Cpu);
        let model = Bert::load(vb, &config).unwrap();
        let empty = Sequence {
            ids: &[],
            type_ids: &[],
        };
        assert_eq!(model.forward(&[]).unwrap().dims(), [0, 16]);
        let some = Sequence {
            ids: &[2, 9, 3],
            type_ids: &[0, 0, 0],
        };
        let alone = model.forward(&[some]).unwrap().to_vec2::<f32>().unwrap();
        let some = Sequence {
            ids: &[2, 9, 3],
            type_ids: &[0, 0, 0],
        };
        let mixed = model
            .forward(&[empty, some])
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert_eq!(alone, mixed);
        let bad = Sequence {
            ids: &[2, 9, 3],
            type_ids: &[0],
        };
        assert!(model.forward(&[bad]).is_err());
    }
}
