//! The transformer encoders: BERT and RoBERTa/XLM-R from candle-transformers,
//! DistilBERT written here (candle's uses the tanh GELU approximation where
//! transformers uses the exact erf GELU).

use candle_core::{DType, Module, Tensor};
use candle_nn::{Activation, Embedding, LayerNorm, Linear, VarBuilder};
use candle_transformers::models::{bert, xlm_roberta};
use serde::Deserialize;
use std::collections::BTreeMap;

/// Which encoder family a checkpoint uses (from `config.json` `model_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `bert`: position ids from 0, token type ids.
    Bert,
    /// `distilbert`: no token type ids.
    DistilBert,
    /// `roberta` and `xlm-roberta`: position ids from `pad_token_id + 1`,
    /// no token type ids.
    Roberta,
}

impl Family {
    /// The family of a `model_type`, if hgpt runs it.
    pub fn from_model_type(model_type: &str) -> Option<Self> {
        match model_type {
            "bert" => Some(Self::Bert),
            "distilbert" => Some(Self::DistilBert),
            "roberta" | "xlm-roberta" => Some(Self::Roberta),
            _ => None,
        }
    }

    /// The weight-name prefix of the encoder inside a task model.
    pub fn prefix(self) -> &'static str {
        match self {
            Self::Bert => "bert",
            Self::DistilBert => "distilbert",
            Self::Roberta => "roberta",
        }
    }
}

/// The fields of `config.json` the text models read (BERT and DistilBERT
/// spell the sizes differently).
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct TextConfig {
    #[serde(default)]
    pub model_type: Option<String>,
    #[serde(default)]
    pub architectures: Vec<String>,
    #[serde(default)]
    pub vocab_size: Option<usize>,
    #[serde(default)]
    pub hidden_size: Option<usize>,
    #[serde(default)]
    pub num_hidden_layers: Option<usize>,
    #[serde(default)]
    pub num_attention_heads: Option<usize>,
    #[serde(default)]
    pub intermediate_size: Option<usize>,
    #[serde(default)]
    pub hidden_act: Option<String>,
    #[serde(default)]
    pub max_position_embeddings: Option<usize>,
    #[serde(default)]
    pub type_vocab_size: Option<usize>,
    #[serde(default)]
    pub layer_norm_eps: Option<f64>,
    #[serde(default)]
    pub pad_token_id: Option<u32>,
    #[serde(default)]
    pub position_embedding_type: Option<String>,
    // DistilBERT names.
    #[serde(default)]
    pub dim: Option<usize>,
    #[serde(default)]
    pub n_layers: Option<usize>,
    #[serde(default)]
    pub n_heads: Option<usize>,
    #[serde(default)]
    pub hidden_dim: Option<usize>,
    #[serde(default)]
    pub activation: Option<String>,
    // Heads.
    #[serde(default)]
    pub id2label: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub problem_type: Option<String>,
}

/// Sizes every family shares, validated.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Dims {
    pub vocab: usize,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub intermediate: usize,
    pub positions: usize,
}

fn need(value: Option<usize>, name: &str) -> Result<usize, String> {
    match value {
        Some(v) if v > 0 => Ok(v),
        Some(_) => Err(format!("config.json: {name} must be positive")),
        None => Err(format!("config.json lacks {name}")),
    }
}

impl TextConfig {
    pub fn dims(&self, family: Family) -> Result<Dims, String> {
        let dims = match family {
            Family::DistilBert => Dims {
                vocab: need(self.vocab_size, "vocab_size")?,
                hidden: need(self.dim, "dim")?,
                layers: need(self.n_layers, "n_layers")?,
                heads: need(self.n_heads, "n_heads")?,
                intermediate: need(self.hidden_dim, "hidden_dim")?,
                positions: need(self.max_position_embeddings, "max_position_embeddings")?,
            },
            Family::Bert | Family::Roberta => Dims {
                vocab: need(self.vocab_size, "vocab_size")?,
                hidden: need(self.hidden_size, "hidden_size")?,
                layers: need(self.num_hidden_layers, "num_hidden_layers")?,
                heads: need(self.num_attention_heads, "num_attention_heads")?,
                intermediate: need(self.intermediate_size, "intermediate_size")?,
                positions: need(self.max_position_embeddings, "max_position_embeddings")?,
            },
        };
        if !dims.hidden.is_multiple_of(dims.heads) {
            return Err(format!(
                "config.json: hidden size {} is not a multiple of the {} attention heads",
                dims.hidden, dims.heads
            ));
        }
        Ok(dims)
    }

    /// How many tokens the model's position embeddings cover.
    pub fn max_tokens(&self, family: Family, dims: &Dims) -> Result<usize, String> {
        match family {
            Family::Roberta => {
                // Positions start at padding_idx + 1.
                let offset = self.pad_token_id.unwrap_or(1) as usize + 1;
                dims.positions
                    .checked_sub(offset)
                    .filter(|n| *n > 0)
                    .ok_or_else(|| {
                        format!(
                            "config.json: max_position_embeddings {} leaves no room after padding_idx {}",
                            dims.positions,
                            offset - 1
                        )
                    })
            }
            Family::Bert | Family::DistilBert => Ok(dims.positions),
        }
    }
}

fn activation(name: Option<&str>) -> Result<Activation, String> {
    match name.unwrap_or("gelu") {
        "gelu" => Ok(Activation::Gelu),
        "gelu_new" | "gelu_pytorch_tanh" => Ok(Activation::NewGelu),
        "relu" => Ok(Activation::Relu),
        other => Err(format!("unsupported activation {other:?}")),
    }
}

/// A loaded encoder: token ids in, hidden states `[batch, seq, hidden]` out.
pub(crate) enum Encoder {
    Bert(bert::BertModel),
    DistilBert(DistilBert),
    Roberta(xlm_roberta::XLMRobertaModel),
}

impl Encoder {
    /// Load the encoder under `vb` (already narrowed to its prefix).
    /// Errors are messages naming the problem (a missing tensor, a shape).
    pub fn load(
        family: Family,
        config: &TextConfig,
        dims: &Dims,
        vb: VarBuilder,
    ) -> Result<Self, String> {
        if let Some(kind) = &config.position_embedding_type
            && kind != "absolute"
        {
            return Err(format!(
                "position_embedding_type {kind:?} is not supported (only \"absolute\")"
            ));
        }
        match family {
            Family::Bert => {
                let hidden_act = match activation(config.hidden_act.as_deref())? {
                    Activation::Gelu => bert::HiddenAct::Gelu,
                    Activation::NewGelu => bert::HiddenAct::GeluApproximate,
                    _ => bert::HiddenAct::Relu,
                };
                let cfg = bert::Config {
                    vocab_size: dims.vocab,
                    hidden_size: dims.hidden,
                    num_hidden_layers: dims.layers,
                    num_attention_heads: dims.heads,
                    intermediate_size: dims.intermediate,
                    hidden_act,
                    hidden_dropout_prob: 0.0,
                    max_position_embeddings: dims.positions,
                    type_vocab_size: config.type_vocab_size.unwrap_or(2),
                    initializer_range: 0.02,
                    layer_norm_eps: config.layer_norm_eps.unwrap_or(1e-12),
                    pad_token_id: config.pad_token_id.unwrap_or(0) as usize,
                    position_embedding_type: bert::PositionEmbeddingType::Absolute,
                    use_cache: false,
                    classifier_dropout: None,
                    model_type: None,
                };
                bert::BertModel::load(vb, &cfg)
                    .map(Self::Bert)
                    .map_err(|e| e.to_string())
            }
            Family::Roberta => {
                let cfg = xlm_roberta::Config {
                    hidden_size: dims.hidden,
                    layer_norm_eps: config.layer_norm_eps.unwrap_or(1e-5),
                    attention_probs_dropout_prob: 0.0,
                    hidden_dropout_prob: 0.0,
                    num_attention_heads: dims.heads,
                    position_embedding_type: "absolute".into(),
                    intermediate_size: dims.intermediate,
                    hidden_act: activation(config.hidden_act.as_deref())?,
                    num_hidden_layers: dims.layers,
                    vocab_size: dims.vocab,
                    max_position_embeddings: dims.positions,
                    type_vocab_size: config.type_vocab_size.unwrap_or(1),
                    pad_token_id: config.pad_token_id.unwrap_or(1),
                };
                xlm_roberta::XLMRobertaModel::new(&cfg, vb)
                    .map(Self::Roberta)
                    .map_err(|e| e.to_string())
            }
            Family::DistilBert => {
                let act = activation(config.activation.as_deref())?;
                DistilBert::load(dims, act, vb)
                    .map(Self::DistilBert)
                    .map_err(|e| e.to_string())
            }
        }
    }

    /// Hidden states for `ids`, `type_ids` and `mask`, each `[batch, seq]` u32.
    pub fn forward(
        &self,
        ids: &Tensor,
        type_ids: &Tensor,
        mask: &Tensor,
    ) -> candle_core::Result<Tensor> {
        match self {
            Self::Bert(model) => model.forward(ids, type_ids, Some(mask)),
            Self::Roberta(model) => {
                // RoBERTa has one token type; its tokenizers' pair type ids are ignored.
                let zeros = ids.zeros_like()?;
                model.forward(ids, mask, &zeros, None, None, None)
            }
            Self::DistilBert(model) => model.forward(ids, mask),
        }
    }
}

/// Additive attention bias `[batch, 1, 1, seq]`: 0 where `mask` is 1, the
/// lowest f32 where it is 0.
fn attention_bias(mask: &Tensor) -> candle_core::Result<Tensor> {
    let mask = mask.to_dtype(DType::F32)?.unsqueeze(1)?.unsqueeze(1)?;
    (mask.ones_like()? - mask)? * f64::from(f32::MIN)
}

/// DistilBERT (`DistilBertModel`): word + learned position embeddings, then
/// post-norm blocks of self-attention and a feed-forward network.
pub(crate) struct DistilBert {
    word_embeddings: Embedding,
    position_embeddings: Embedding,
    embeddings_norm: LayerNorm,
    layers: Vec<DistilBertLayer>,
    heads: usize,
}

struct DistilBertLayer {
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    attention_norm: LayerNorm,
    lin1: Linear,
    lin2: Linear,
    output_norm: LayerNorm,
    activation: Activation,
}

/// DistilBERT's LayerNorm epsilon (fixed in transformers).
const DISTILBERT_EPS: f64 = 1e-12;

impl DistilBert {
    fn load(dims: &Dims, activation: Activation, vb: VarBuilder) -> candle_core::Result<Self> {
        let h = dims.hidden;
        let emb = vb.pp("embeddings");
        let layers = (0..dims.layers)
            .map(|i| {
                let vb = vb.pp(format!("transformer.layer.{i}"));
                let att = vb.pp("attention");
                Ok(DistilBertLayer {
                    q: candle_nn::linear(h, h, att.pp("q_lin"))?,
                    k: candle_nn::linear(h, h, att.pp("k_lin"))?,
                    v: candle_nn::linear(h, h, att.pp("v_lin"))?,
                    out: candle_nn::linear(h, h, att.pp("out_lin"))?,
                    attention_norm: candle_nn::layer_norm(
                        h,
                        DISTILBERT_EPS,
                        vb.pp("sa_layer_norm"),
                    )?,
                    lin1: candle_nn::linear(h, dims.intermediate, vb.pp("ffn.lin1"))?,
                    lin2: candle_nn::linear(dims.intermediate, h, vb.pp("ffn.lin2"))?,
                    output_norm: candle_nn::layer_norm(
                        h,
                        DISTILBERT_EPS,
                        vb.pp("output_layer_norm"),
                    )?,
                    activation,
                })
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self {
            word_embeddings: candle_nn::embedding(dims.vocab, h, emb.pp("word_embeddings"))?,
            position_embeddings: candle_nn::embedding(
                dims.positions,
                h,
                emb.pp("position_embeddings"),
            )?,
            embeddings_norm: candle_nn::layer_norm(h, DISTILBERT_EPS, emb.pp("LayerNorm"))?,
            layers,
            heads: dims.heads,
        })
    }

    fn forward(&self, ids: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
        let (_, seq) = ids.dims2()?;
        let positions = Tensor::arange(0u32, seq as u32, ids.device())?;
        let words = self.word_embeddings.forward(ids)?;
        let hidden = words.broadcast_add(&self.position_embeddings.forward(&positions)?)?;
        let mut hidden = self.embeddings_norm.forward(&hidden)?;
        let bias = attention_bias(mask)?;
        for layer in &self.layers {
            hidden = layer.forward(&hidden, &bias, self.heads)?;
        }
        Ok(hidden)
    }
}

impl DistilBertLayer {
    fn forward(&self, x: &Tensor, bias: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
        let (batch, seq, hidden) = x.dims3()?;
        let head_dim = hidden / heads;
        let split = |t: Tensor| -> candle_core::Result<Tensor> {
            t.reshape((batch, seq, heads, head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = split((self.q.forward(x)? / (head_dim as f64).sqrt())?)?;
        let k = split(self.k.forward(x)?)?;
        let v = split(self.v.forward(x)?)?;
        let scores = q.matmul(&k.t()?)?.broadcast_add(bias)?;
        let weights = candle_nn::ops::softmax_last_dim(&scores)?;
        let context = weights
            .matmul(&v)?
            .transpose(1, 2)?
            .reshape((batch, seq, hidden))?;
        let attended = self
            .attention_norm
            .forward(&(self.out.forward(&context)? + x)?)?;
        let ffn = self
            .lin2
            .forward(&self.activation.forward(&self.lin1.forward(&attended)?)?)?;
        self.output_norm.forward(&(ffn + attended)?)
    }
}
