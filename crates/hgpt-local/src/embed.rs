//! Sentence embeddings with BERT-family sentence-transformers models
//! (feature-extraction and sentence-similarity).
//!
//! Pooling and normalisation come from the model's own files: `modules.json`
//! (is there a `Normalize` module, where is the pooling config),
//! `1_Pooling/config.json` (CLS, mean, max or mean-sqrt-len pooling) and
//! `sentence_bert_config.json` (`max_seq_length`).

use crate::bert::{Bert, Sequence};
use crate::error::{LocalError, bad_input};
use crate::files::{ModelFiles, WEIGHTS, Weights};
use crate::pipeline::Pipeline;
use candle_core::{Device, Tensor};
use candle_transformers::models::bert::Config;
use hgpt_core::backend::ResolvedArgs;
use hgpt_core::output::InferenceOutput;
use hgpt_core::task::TaskKind;
use serde::Deserialize;
use serde_json::Value;
use tokenizers::{Tokenizer, TruncationParams};

/// How token vectors become one sentence vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// The first token's vector.
    Cls,
    /// The mean over real (unpadded) tokens.
    Mean,
    /// The element-wise maximum over real tokens.
    Max,
    /// The sum over real tokens divided by the square root of their count.
    MeanSqrtLen,
}

#[derive(Debug, Default, Deserialize)]
struct PoolingConfig {
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_sqrt_len_tokens: bool,
}

#[derive(Debug, Deserialize)]
struct Module {
    #[serde(default)]
    path: String,
    #[serde(rename = "type", default)]
    kind: String,
}

#[derive(Debug, Default, Deserialize)]
struct SentenceBertConfig {
    max_seq_length: Option<usize>,
}

/// Texts embedded per forward pass.
const BATCH: usize = 32;

/// A loaded sentence-embedding model.
pub struct SentenceEmbedder {
    model: Bert,
    tokenizer: Tokenizer,
    pooling: Pooling,
    normalize: bool,
    weight_bytes: u64,
}

impl SentenceEmbedder {
    /// Load from cached files.
    pub fn load(files: &ModelFiles, device: &Device) -> Result<Self, LocalError> {
        let paths = files.require(&["config.json", "tokenizer.json", WEIGHTS])?;
        let config: Config = files.json("config.json")?;
        let modules: Vec<Module> = files.json_if_present("modules.json")?.unwrap_or_default();
        let normalize = modules.iter().any(|m| m.kind.ends_with(".Normalize"));
        let pooling_path = modules
            .iter()
            .find(|m| m.kind.ends_with(".Pooling"))
            .map(|m| format!("{}/config.json", m.path.trim_end_matches('/')))
            .unwrap_or_else(|| "1_Pooling/config.json".to_string());
        let pooling = match files.json_if_present::<PoolingConfig>(&pooling_path)? {
            Some(c) if c.pooling_mode_cls_token => Pooling::Cls,
            Some(c) if c.pooling_mode_max_tokens => Pooling::Max,
            Some(c) if c.pooling_mode_mean_sqrt_len_tokens => Pooling::MeanSqrtLen,
            Some(c) if c.pooling_mode_mean_tokens => Pooling::Mean,
            _ => Pooling::Mean,
        };
        let max_length = files
            .json_if_present::<SentenceBertConfig>("sentence_bert_config.json")?
            .and_then(|c| c.max_seq_length)
            .unwrap_or(config.max_position_embeddings)
            .min(config.max_position_embeddings);
        let tokenizer = load_tokenizer(files, &paths[1], max_length)?;
        let Weights {
            vb,
            bytes: weight_bytes,
            file,
        } = files.weights(device)?;
        let model =
            Bert::load(vb, &config).map_err(|e| files.load_error(format!("{file}: {e}")))?;
        Ok(Self {
            model,
            tokenizer,
            pooling,
            normalize,
            weight_bytes,
        })
    }

    /// The pooling the model uses.
    pub fn pooling(&self) -> Pooling {
        self.pooling
    }

    /// Whether embeddings are L2-normalised by default.
    pub fn normalizes(&self) -> bool {
        self.normalize
    }

    /// The token ids the model sees for a text (after truncation).
    pub fn token_ids(&self, text: &str) -> Result<Vec<u32>, LocalError> {
        let encoding = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| LocalError::Compute(format!("tokenizer: {e}")))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Embed texts, `normalize` overriding the model's default when given.
    pub fn embed(
        &self,
        texts: &[String],
        normalize: Option<bool>,
    ) -> Result<Vec<Vec<f32>>, LocalError> {
        let normalize = normalize.unwrap_or(self.normalize);
        let mut out = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(BATCH) {
            out.extend(self.embed_batch(chunk, normalize)?);
        }
        Ok(out)
    }

    fn embed_batch(&self, texts: &[String], normalize: bool) -> Result<Vec<Vec<f32>>, LocalError> {
        // No padding: the encoder packs the texts' tokens.
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| LocalError::Compute(format!("tokenizer: {e}")))?;
        let batch: Vec<Sequence> = encodings
            .iter()
            .map(|e| Sequence {
                ids: e.get_ids(),
                type_ids: e.get_type_ids(),
            })
            .collect();
        let hidden = self.model.forward(&batch)?;
        let lengths: Vec<usize> = batch.iter().map(|s| s.ids.len()).collect();
        let pooled = pool_packed(&hidden, &lengths, self.pooling)?;
        let pooled = if normalize {
            l2_normalize(&pooled)?
        } else {
            pooled
        };
        Ok(pooled.to_vec2::<f32>()?)
    }
}

fn load_tokenizer(
    files: &ModelFiles,
    path: &std::path::Path,
    max_length: usize,
) -> Result<Tokenizer, LocalError> {
    let mut tokenizer =
        Tokenizer::from_file(path).map_err(|e| files.load_error(format!("tokenizer.json: {e}")))?;
    tokenizer.with_padding(None);
    tokenizer
        .with_truncation(Some(TruncationParams {
            max_length,
            ..TruncationParams::default()
        }))
        .map_err(|e| files.load_error(format!("tokenizer.json: {e}")))?;
    Ok(tokenizer)
}

/// Pool `[batch, seq, hidden]` token vectors into `[batch, hidden]`, counting
/// only tokens whose mask is 1: padded pooling as `sentence-transformers`
/// does it, the reference for [`pool_packed`].
#[cfg(test)]
fn pool(hidden: &Tensor, mask: &Tensor, pooling: Pooling) -> candle_core::Result<Tensor> {
    let mask = mask.to_dtype(hidden.dtype())?.unsqueeze(2)?;
    match pooling {
        Pooling::Cls => hidden.narrow(1, 0, 1)?.squeeze(1),
        Pooling::Mean | Pooling::MeanSqrtLen => {
            let summed = hidden.broadcast_mul(&mask)?.sum(1)?;
            let counts = mask.sum(1)?.clamp(1e-9, f64::MAX)?;
            let divisor = if pooling == Pooling::Mean {
                counts
            } else {
                counts.sqrt()?
            };
            summed.broadcast_div(&divisor)
        }
        Pooling::Max => {
            // Padded positions get a very low value so they never win.
            let penalty = ((mask.ones_like()? - &mask)? * -1e9)?;
            hidden.broadcast_add(&penalty)?.max(1)
        }
    }
}

/// Pool packed token vectors (`[total tokens, hidden]`, the texts' tokens
/// one text after another, `lengths` tokens each) into `[texts, hidden]`.
/// A text without tokens gets a zero vector.
fn pool_packed(
    hidden: &Tensor,
    lengths: &[usize],
    pooling: Pooling,
) -> candle_core::Result<Tensor> {
    let width = hidden.dim(1)?;
    let mut rows = Vec::with_capacity(lengths.len());
    let mut divisors = Vec::with_capacity(lengths.len());
    let mut start = 0;
    for &len in lengths {
        let tokens = hidden.narrow(0, start, len)?;
        start += len;
        let row = match pooling {
            _ if len == 0 => Tensor::zeros((1, width), hidden.dtype(), hidden.device())?,
            Pooling::Cls => tokens.narrow(0, 0, 1)?,
            Pooling::Mean | Pooling::MeanSqrtLen => tokens.sum_keepdim(0)?,
            Pooling::Max => tokens.max_keepdim(0)?,
        };
        rows.push(row);
        divisors.push(match pooling {
            Pooling::Mean => len.max(1) as f32,
            Pooling::MeanSqrtLen => (len.max(1) as f32).sqrt(),
            Pooling::Cls | Pooling::Max => 1.0,
        });
    }
    let pooled = Tensor::cat(&rows, 0)?;
    match pooling {
        Pooling::Mean | Pooling::MeanSqrtLen => {
            let divisors = Tensor::from_vec(divisors, (lengths.len(), 1), hidden.device())?;
            pooled.broadcast_div(&divisors.to_dtype(hidden.dtype())?)
        }
        Pooling::Cls | Pooling::Max => Ok(pooled),
    }
}

/// Divide each row by its L2 norm (as `torch.nn.functional.normalize`).
pub fn l2_normalize(rows: &Tensor) -> candle_core::Result<Tensor> {
    let norms = rows.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
    rows.broadcast_div(&norms)
}

fn texts_of(
    task: TaskKind,
    args: &ResolvedArgs,
    list_key: &str,
) -> Result<(Vec<String>, bool), LocalError> {
    if let Some(Value::Array(items)) = args.other.get(list_key) {
        let texts: Option<Vec<String>> = items
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect();
        let texts = texts.ok_or_else(|| {
            bad_input(task, format!("every item of {list_key:?} must be a string"))
        })?;
        if texts.is_empty() {
            return Err(bad_input(task, format!("{list_key:?} is empty")));
        }
        return Ok((texts, true));
    }
    match args.text.as_deref() {
        Some(text) if !text.trim().is_empty() => Ok((vec![text.to_string()], false)),
        _ => Err(bad_input(task, "no text to embed")),
    }
}

/// The sentences to compare with: a list, or one sentence per line.
fn sentences_of(args: &ResolvedArgs) -> Option<Vec<String>> {
    let sentences: Vec<String> = match args.other.get("sentences")? {
        Value::Array(items) => items
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<_>>()?,
        Value::String(text) => text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect(),
        _ => return None,
    };
    (!sentences.is_empty()).then_some(sentences)
}

impl Pipeline for SentenceEmbedder {
    fn tasks(&self) -> &[TaskKind] {
        &[TaskKind::FeatureExtraction, TaskKind::SentenceSimilarity]
    }

    fn run(&self, task: TaskKind, args: &ResolvedArgs) -> Result<InferenceOutput, LocalError> {
        match task {
            TaskKind::FeatureExtraction => {
                let (texts, is_list) = texts_of(task, args, "inputs")?;
                let normalize = args.other.get("normalize").and_then(Value::as_bool);
                let vectors = self.embed(&texts, normalize)?;
                let value = if is_list {
                    serde_json::to_value(&vectors)
                } else {
                    serde_json::to_value(vectors.first().cloned().unwrap_or_default())
                }
                .map_err(|e| LocalError::Compute(e.to_string()))?;
                Ok(InferenceOutput::Embeddings(value))
            }
            TaskKind::SentenceSimilarity => {
                let source = args
                    .other_text("source_sentence")
                    .or_else(|| args.text.clone())
                    .filter(|s| !s.trim().is_empty())
                    .ok_or_else(|| bad_input(task, "no source sentence"))?;
                let sentences = sentences_of(args).ok_or_else(|| {
                    bad_input(task, "\"sentences\" must be a non-empty list of strings")
                })?;
                let mut all = vec![source];
                all.extend(sentences);
                let vectors = self.embed(&all, Some(true))?;
                let (first, rest) = vectors
                    .split_first()
                    .ok_or_else(|| LocalError::Compute("no embeddings".into()))?;
                let scores = rest
                    .iter()
                    .map(|v| v.iter().zip(first).map(|(a, b)| f64::from(a * b)).sum())
                    .collect();
                Ok(InferenceOutput::Similarities(scores))
            }
            other => Err(LocalError::Unsupported(format!(
                "a sentence-embedding model cannot do {other}"
            ))),
        }
    }

    fn weight_bytes(&self) -> u64 {
        self.weight_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooling_ignores_padding() {
        let hidden = Tensor::new(&[[[1f32, 2.], [3., 4.], [100., 100.]]], &Device::Cpu).unwrap();
        let mask = Tensor::new(&[[1u32, 1, 0]], &Device::Cpu).unwrap();
        let get = |p| pool(&hidden, &mask, p).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(get(Pooling::Cls), vec![vec![1., 2.]]);
        assert_eq!(get(Pooling::Mean), vec![vec![2., 3.]]);
        assert_eq!(get(Pooling::Max), vec![vec![3., 4.]]);
        let sqrt = get(Pooling::MeanSqrtLen);
        assert!((sqrt[0][0] - 4.0 / 2f32.sqrt()).abs() < 1e-6);
    }

    #[test]
    fn packed_pooling_matches_padded_pooling() {
        // Two texts of 3 and 1 tokens, hidden size 2.
        let packed =
            Tensor::new(&[[1f32, -2.], [3., 4.], [5., 0.], [7., 8.]], &Device::Cpu).unwrap();
        let padded = Tensor::new(
            &[
                [[1f32, -2.], [3., 4.], [5., 0.]],
                [[7., 8.], [9., 9.], [9., 9.]],
            ],
            &Device::Cpu,
        )
        .unwrap();
        let mask = Tensor::new(&[[1u32, 1, 1], [1, 0, 0]], &Device::Cpu).unwrap();
        for pooling in [
            Pooling::Cls,
            Pooling::Mean,
            Pooling::Max,
            Pooling::MeanSqrtLen,
        ] {
            let got = pool_packed(&packed, &[3, 1], pooling).unwrap();
            let want = pool(&padded, &mask, pooling).unwrap();
            assert_eq!(
                got.to_vec2::<f32>().unwrap(),
                want.to_vec2::<f32>().unwrap(),
                "{pooling:?}"
            );
        }
        // A text without tokens pools to zeros, wherever it is.
        let got = pool_packed(&packed, &[0, 3, 1, 0], Pooling::Mean).unwrap();
        let got = got.to_vec2::<f32>().unwrap();
        assert_eq!(got[0], vec![0., 0.]);
        assert_eq!(got[1], vec![3., 2. / 3.]);
        assert_eq!(got[2], vec![7., 8.]);
        assert_eq!(got[3], vec![0., 0.]);
    }

    #[test]
    fn normalization_gives_unit_rows() {
        let rows = Tensor::new(&[[3f32, 4.], [0., 0.]], &Device::Cpu).unwrap();
        let normed = l2_normalize(&rows).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(normed, vec![vec![0.6, 0.8], vec![0., 0.]]);
    }
}
