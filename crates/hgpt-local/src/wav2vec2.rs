//! wav2vec2: speech recognition with a CTC head (`Wav2Vec2ForCTC`, greedy
//! CTC decoding as `Wav2Vec2CTCTokenizer` does it) and audio classification
//! (`Wav2Vec2ForSequenceClassification`), as the transformers pipelines run
//! them: the waveform at the feature extractor's rate, normalised to zero
//! mean and unit variance, through the convolutional feature encoder, the
//! positional convolution and the transformer encoder (post-norm layers as
//! in wav2vec2-base, pre-norm "stable" layers as in the large and XLSR
//! models).

use crate::audio;
use crate::error::{LocalError, bad_input};
use crate::files::{ModelFiles, WEIGHTS};
use crate::kernels::{Dense, Epilogue, dense_activation};
use crate::pipeline::Pipeline;
use crate::speech::{Chunking, chunk_spans, chunking};
use crate::text::postprocess::{ScoreFunction, classification_args, ranked_labels};
use crate::vision::attention::self_attention;
use candle_core::{D, Device, Result, Tensor};
use candle_nn::{Activation, LayerNorm, VarBuilder, layer_norm};
use hgpt_core::backend::ResolvedArgs;
use hgpt_core::output::{InferenceOutput, ScoredLabel};
use hgpt_core::task::TaskKind;
use serde::Deserialize;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};

/// Longest audio transcribed, in seconds (in chunks).
const MAX_SECONDS: u32 = 3600;
/// Longest audio classified, in seconds: the classifier sees all of it at
/// once, and its first feature map holds 3200 x 512 values per second.
const MAX_CLASSIFY_SECONDS: u32 = 120;
/// Audio longer than this is transcribed in chunks of this length (with
/// the pipeline's default strides) when the request names no chunking.
const AUTO_CHUNK_SECONDS: f64 = 30.0;

fn default_true() -> bool {
    true
}
fn default_eps() -> f64 {
    1e-5
}
fn default_proj() -> usize {
    256
}
fn default_gelu() -> Activation {
    Activation::Gelu
}

/// The parts of `config.json` the model needs.
#[derive(Debug, Clone, Deserialize)]
struct Config {
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    intermediate_size: usize,
    #[serde(default = "default_gelu")]
    hidden_act: Activation,
    conv_dim: Vec<usize>,
    conv_kernel: Vec<usize>,
    conv_stride: Vec<usize>,
    #[serde(default)]
    conv_bias: bool,
    #[serde(default)]
    feat_extract_norm: Option<String>,
    #[serde(default = "default_gelu")]
    feat_extract_activation: Activation,
    #[serde(default)]
    do_stable_layer_norm: bool,
    num_conv_pos_embeddings: usize,
    num_conv_pos_embedding_groups: usize,
    #[serde(default = "default_eps")]
    layer_norm_eps: f64,
    #[serde(default)]
    pad_token_id: Option<u32>,
    #[serde(default = "default_vocab")]
    vocab_size: usize,
    #[serde(default = "default_proj")]
    classifier_proj_size: usize,
    #[serde(default)]
    use_weighted_layer_sum: bool,
    #[serde(default)]
    add_adapter: bool,
    #[serde(default)]
    adapter_attn_dim: Option<usize>,
    #[serde(default)]
    id2label: BTreeMap<String, String>,
}

/// `preprocessor_config.json`.
#[derive(Debug, Clone, Deserialize)]
struct FeatureExtractor {
    #[serde(default = "default_rate")]
    sampling_rate: u32,
    #[serde(default = "default_true")]
    do_normalize: bool,
}

fn default_vocab() -> usize {
    32
}

fn default_rate() -> u32 {
    16_000
}

/// One convolution of the feature encoder and what follows it.
#[derive(Debug, Clone)]
struct ConvLayer {
    weight: Tensor,
    bias: Option<Tensor>,
    stride: usize,
    norm: ConvNorm,
}

#[derive(Debug, Clone)]
enum ConvNorm {
    None,
    /// GroupNorm with one group per channel: each channel over time.
    PerChannel {
        weight: Tensor,
        bias: Tensor,
    },
    /// LayerNorm over the channels of each frame.
    Layer(LayerNorm),
}

/// One transformer layer.
#[derive(Debug, Clone)]
struct Layer {
    qkv: Dense,
    out: Dense,
    layer_norm: LayerNorm,
    intermediate: Dense,
    output: Dense,
    final_layer_norm: LayerNorm,
}

/// The encoder model shared by both heads.
#[derive(Debug, Clone)]
struct Wav2Vec2 {
    convs: Vec<ConvLayer>,
    conv_activation: Activation,
    projection_norm: LayerNorm,
    projection: Dense,
    pos_conv_weight: Tensor,
    pos_conv_bias: Tensor,
    pos_conv_groups: usize,
    pos_conv_kernel: usize,
    encoder_norm: LayerNorm,
    layers: Vec<Layer>,
    stable: bool,
    heads: usize,
    activation: Activation,
}

const GROUP_NORM_EPS: f64 = 1e-5;

impl Wav2Vec2 {
    fn load(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let layers_count = cfg.conv_dim.len();
        if cfg.conv_kernel.len() != layers_count || cfg.conv_stride.len() != layers_count {
            candle_core::bail!("conv_dim, conv_kernel and conv_stride differ in length");
        }
        if cfg
            .conv_kernel
            .iter()
            .chain(&cfg.conv_stride)
            .any(|&v| v == 0)
            || cfg.num_conv_pos_embeddings == 0
        {
            candle_core::bail!("convolution kernels and strides must be positive");
        }
        let norm_kind = cfg.feat_extract_norm.as_deref().unwrap_or("group");
        if !matches!(norm_kind, "group" | "layer") {
            candle_core::bail!("unknown feat_extract_norm {norm_kind:?}");
        }
        let fe = vb.pp("feature_extractor").pp("conv_layers");
        let mut convs = Vec::with_capacity(layers_count);
        let mut inputs = 1;
        for i in 0..layers_count {
            let vb = fe.pp(i);
            let (outputs, kernel) = (cfg.conv_dim[i], cfg.conv_kernel[i]);
            let weight = vb.pp("conv").get((outputs, inputs, kernel), "weight")?;
            let bias = if cfg.conv_bias {
                Some(vb.pp("conv").get(outputs, "bias")?)
            } else {
                None
            };
            let norm = match (norm_kind, i) {
                ("group", 0) => ConvNorm::PerChannel {
                    weight: vb.pp("layer_norm").get(outputs, "weight")?,
                    bias: vb.pp("layer_norm").get(outputs, "bias")?,
                },
                ("group", _) => ConvNorm::None,
                _ => ConvNorm::Layer(layer_norm(outputs, GROUP_NORM_EPS, vb.pp("layer_norm"))?),
            };
            convs.push(ConvLayer {
                weight,
                bias,
                stride: cfg.conv_stride[i],
                norm,
            });
            inputs = outputs;
        }
        let hidden = cfg.hidden_size;
        let heads = cfg.num_attention_heads;
        if heads == 0 || !hidden.is_multiple_of(heads) {
            candle_core::bail!("hidden_size {hidden} is not a multiple of {heads} heads");
        }
        let fp = vb.pp("feature_projection");
        let projection_norm = layer_norm(inputs, cfg.layer_norm_eps, fp.pp("layer_norm"))?;
        let projection = Dense::load(inputs, hidden, fp.pp("projection"))?;

        let enc = vb.pp("encoder");
        let groups = cfg.num_conv_pos_embedding_groups;
        let kernel = cfg.num_conv_pos_embeddings;
        if groups == 0 || !hidden.is_multiple_of(groups) {
            candle_core::bail!("hidden_size {hidden} is not a multiple of {groups} groups");
        }
        let pos = enc.pp("pos_conv_embed").pp("conv");
        let shape = (hidden, hidden / groups, kernel);
        // Weight norm over every dimension but the kernel's: new checkpoints
        // name its parts `parametrizations.weight.original{0,1}`, older
        // ones `weight_g` / `weight_v`.
        let (g, v) = if pos.contains_tensor("weight_g") {
            (
                pos.get((1, 1, kernel), "weight_g")?,
                pos.get(shape, "weight_v")?,
            )
        } else {
            let p = pos.pp("parametrizations").pp("weight");
            (
                p.get((1, 1, kernel), "original0")?,
                p.get(shape, "original1")?,
            )
        };
        let norm = v.sqr()?.sum_keepdim(0)?.sum_keepdim(1)?.sqrt()?;
        let pos_conv_weight = v.broadcast_div(&norm)?.broadcast_mul(&g)?;
        let pos_conv_bias = pos.get(hidden, "bias")?;
        let encoder_norm = layer_norm(hidden, cfg.layer_norm_eps, enc.pp("layer_norm"))?;
        let scale = 1.0 / ((hidden / heads) as f64).sqrt();
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| {
                let vb = enc.pp("layers").pp(i);
                let att = vb.pp("attention");
                let part = |name: &str| -> Result<(Tensor, Tensor)> {
                    let p = att.pp(name);
                    Ok((p.get((hidden, hidden), "weight")?, p.get(hidden, "bias")?))
                };
                let (q, k, v) = (part("q_proj")?, part("k_proj")?, part("v_proj")?);
                let q = ((q.0 * scale)?, (q.1 * scale)?);
                let ff = vb.pp("feed_forward");
                Ok(Layer {
                    qkv: Dense::from_parts(&[q.0, k.0, v.0], &[q.1, k.1, v.1])?,
                    out: Dense::load(hidden, hidden, att.pp("out_proj"))?,
                    layer_norm: layer_norm(hidden, cfg.layer_norm_eps, vb.pp("layer_norm"))?,
                    intermediate: Dense::load(
                        hidden,
                        cfg.intermediate_size,
                        ff.pp("intermediate_dense"),
                    )?,
                    output: Dense::load(cfg.intermediate_size, hidden, ff.pp("output_dense"))?,
                    final_layer_norm: layer_norm(
                        hidden,
                        cfg.layer_norm_eps,
                        vb.pp("final_layer_norm"),
                    )?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            convs,
            conv_activation: cfg.feat_extract_activation,
            projection_norm,
            projection,
            pos_conv_weight,
            pos_conv_bias,
            pos_conv_groups: groups,
            pos_conv_kernel: kernel,
            encoder_norm,
            layers,
            stable: cfg.do_stable_layer_norm,
            heads,
            activation: cfg.hidden_act,
        })
    }

    /// The frames the feature encoder makes of `samples` samples.
    fn frames(&self, samples: usize) -> usize {
        self.convs.iter().fold(samples, |length, conv| {
            let kernel = conv.weight.dims().get(2).copied().unwrap_or(1);
            if length < kernel {
                0
            } else {
                (length - kernel) / conv.stride + 1
            }
        })
    }

    /// The last hidden states `[frames, hidden]` of normalised samples.
    fn forward(&self, input: &Tensor) -> Result<Tensor> {
        // [1, 1, samples] -> [1, channels, frames]
        let mut x = input.unsqueeze(0)?.unsqueeze(0)?;
        for conv in &self.convs {
            x = x.conv1d(&conv.weight, 0, conv.stride, 1, 1)?;
            if let Some(bias) = &conv.bias {
                x = x.broadcast_add(&bias.reshape((1, (), 1))?)?;
            }
            x = match &conv.norm {
                ConvNorm::None => x,
                ConvNorm::PerChannel { weight, bias } => {
                    let mean = x.mean_keepdim(D::Minus1)?;
                    let centred = x.broadcast_sub(&mean)?;
                    let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
                    centred
                        .broadcast_div(&(var + GROUP_NORM_EPS)?.sqrt()?)?
                        .broadcast_mul(&weight.reshape((1, (), 1))?)?
                        .broadcast_add(&bias.reshape((1, (), 1))?)?
                }
                ConvNorm::Layer(norm) => x.transpose(1, 2)?.apply(norm)?.transpose(1, 2)?,
            };
            x = x.apply(&self.conv_activation)?;
        }
        let features = x.transpose(1, 2)?.squeeze(0)?.contiguous()?;
        let hidden = self
            .projection
            .forward(&features.apply(&self.projection_norm)?, Epilogue::Bias)?;
        // The positional convolution, "same" padded (an even kernel drops
        // its last frame).
        let frames = hidden.dim(0)?;
        let pos = hidden
            .t()?
            .unsqueeze(0)?
            .contiguous()?
            .conv1d(
                &self.pos_conv_weight,
                self.pos_conv_kernel / 2,
                1,
                1,
                self.pos_conv_groups,
            )?
            .broadcast_add(&self.pos_conv_bias.reshape((1, (), 1))?)?
            .narrow(2, 0, frames)?
            .apply(&self.conv_activation)?
            .squeeze(0)?
            .t()?;
        let mut x = (hidden + pos)?;
        if !self.stable {
            x = x.apply(&self.encoder_norm)?;
        }
        for layer in &self.layers {
            x = if self.stable {
                let normed = x.apply(&layer.layer_norm)?;
                let attended = self.attention(layer, &normed, &x)?;
                let inner = dense_activation(
                    &layer.intermediate,
                    &attended.apply(&layer.final_layer_norm)?,
                    self.activation,
                )?;
                layer
                    .output
                    .forward(&inner, Epilogue::Residual(&attended))?
            } else {
                let attended = self.attention(layer, &x, &x)?.apply(&layer.layer_norm)?;
                let inner = dense_activation(&layer.intermediate, &attended, self.activation)?;
                layer
                    .output
                    .forward(&inner, Epilogue::Residual(&attended))?
                    .apply(&layer.final_layer_norm)?
            };
        }
        if self.stable {
            x = x.apply(&self.encoder_norm)?;
        }
        Ok(x)
    }

    /// `residual + out_proj(attention(x))`.
    fn attention(&self, layer: &Layer, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        let qkv = layer.qkv.forward(&x.unsqueeze(0)?, Epilogue::Bias)?;
        let context = self_attention(&qkv, self.heads, false)?.squeeze(0)?;
        layer.out.forward(&context, Epilogue::Residual(residual))
    }
}

/// What the model's head does.
#[derive(Debug, Clone)]
enum Head {
    /// Per-frame vocabulary logits, greedily decoded.
    Ctc { lm_head: Dense, vocab: Vocabulary },
    /// Mean-pooled projection, then class logits.
    Classify {
        projector: Dense,
        classifier: Dense,
        labels: Vec<String>,
    },
}

/// `Wav2Vec2CTCTokenizer`'s decoding: consecutive repeats collapsed, the
/// padding (CTC blank) dropped, the word delimiter read as a space.
#[derive(Debug, Clone)]
struct Vocabulary {
    tokens: HashMap<u32, String>,
    pad: String,
    unk: String,
    word_delimiter: String,
    replace_word_delimiter: String,
    lower_case: bool,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct TokenizerConfig {
    #[serde(default)]
    pad_token: Option<Value>,
    #[serde(default)]
    word_delimiter_token: Option<Value>,
    #[serde(default)]
    replace_word_delimiter_char: Option<String>,
    #[serde(default)]
    clean_up_tokenization_spaces: Option<bool>,
    #[serde(default)]
    unk_token: Option<Value>,
    #[serde(default)]
    do_lower_case: bool,
}

/// A special token as `tokenizer_config.json` writes it: a string or
/// `{"content": ...}`.
fn token_text(value: &Option<Value>) -> Option<String> {
    match value.as_ref()? {
        Value::String(s) => Some(s.clone()),
        Value::Object(map) => map.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

impl Vocabulary {
    fn load(files: &ModelFiles) -> std::result::Result<(Self, bool), LocalError> {
        let vocab: BTreeMap<String, Value> = files.json("vocab.json")?;
        // A multilingual vocabulary nests one per language.
        let tokens: HashMap<u32, String> = vocab
            .iter()
            .filter_map(|(token, id)| Some((u32::try_from(id.as_u64()?).ok()?, token.clone())))
            .collect();
        if tokens.is_empty() {
            return Err(files.load_error(
                "vocab.json holds no token ids (a vocabulary per language is not supported)",
            ));
        }
        let config: TokenizerConfig = files
            .json_if_present("tokenizer_config.json")?
            .unwrap_or_default();
        let vocabulary = Self {
            tokens,
            pad: token_text(&config.pad_token).unwrap_or_else(|| "<pad>".into()),
            unk: token_text(&config.unk_token).unwrap_or_else(|| "<unk>".into()),
            word_delimiter: token_text(&config.word_delimiter_token).unwrap_or_else(|| "|".into()),
            replace_word_delimiter: config.replace_word_delimiter_char.unwrap_or(" ".into()),
            lower_case: config.do_lower_case,
        };
        Ok((
            vocabulary,
            config.clean_up_tokenization_spaces.unwrap_or(false),
        ))
    }

    /// The token of an id (an id the vocabulary lacks reads as the unknown
    /// token).
    fn token(&self, id: u32) -> &str {
        self.tokens.get(&id).unwrap_or(&self.unk)
    }

    /// Each character of the transcript of per-frame ids with the frames it
    /// spans, as `Wav2Vec2CTCTokenizer` gives `char_offsets`: runs of one
    /// id, blanks dropped, the word delimiter read as its replacement.
    fn char_offsets(&self, ids: &[u32]) -> Vec<Offset> {
        let mut offsets = Vec::new();
        let mut start = 0;
        while start < ids.len() {
            let run = ids[start..]
                .iter()
                .take_while(|&&id| id == ids[start])
                .count();
            let token = self.token(ids[start]);
            if token != self.pad {
                let text = if token == self.word_delimiter {
                    &self.replace_word_delimiter
                } else {
                    token
                };
                offsets.push(Offset {
                    text: text.to_string(),
                    start,
                    end: start + run,
                });
            }
            start += run;
        }
        offsets
    }

    /// Words and the frames they span, from character offsets, as
    /// `Wav2Vec2CTCTokenizer._get_word_offsets` groups them.
    fn word_offsets(&self, chars: &[Offset]) -> Vec<Offset> {
        let mut words: Vec<Offset> = Vec::new();
        let mut in_word = false;
        for char in chars {
            let is_space = char.text == self.replace_word_delimiter;
            match (in_word, is_space) {
                (true, false) => {
                    if let Some(word) = words.last_mut() {
                        word.text.push_str(&char.text);
                        word.end = char.end;
                    }
                }
                (false, false) => words.push(char.clone()),
                (_, true) => {}
            }
            in_word = !is_space;
        }
        words
    }

    /// The text of per-frame token ids.
    fn decode(&self, ids: &[u32], clean_up: bool) -> String {
        let mut text = String::new();
        let mut previous = None;
        for &id in ids {
            if previous == Some(id) {
                continue;
            }
            previous = Some(id);
            let token = self.token(id);
            if token == self.pad {
                continue;
            }
            if token == self.word_delimiter {
                text.push_str(&self.replace_word_delimiter);
            } else {
                text.push_str(token);
            }
        }
        let mut text = text.trim().to_string();
        if self.lower_case {
            text = text.to_lowercase();
        }
        if clean_up {
            clean_up_spaces(&text)
        } else {
            text
        }
    }
}

/// A piece of a transcript and the logit frames `[start, end)` it spans.
#[derive(Debug, Clone, PartialEq)]
struct Offset {
    text: String,
    start: usize,
    end: usize,
}

/// The timestamps a CTC transcription can carry (`return_timestamps`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timestamps {
    /// One chunk per character (spaces included).
    Char,
    /// One chunk per word.
    Word,
}

/// `return_timestamps` as the pipeline takes it for CTC models: `"char"` or
/// `"word"`; `true` (which the pipeline refuses for CTC) reads as `"word"`.
fn timestamps(
    task: TaskKind,
    args: &ResolvedArgs,
) -> std::result::Result<Option<Timestamps>, LocalError> {
    match args.other.get("return_timestamps") {
        None | Some(Value::Null) | Some(Value::Bool(false)) => Ok(None),
        Some(Value::Bool(true)) => Ok(Some(Timestamps::Word)),
        Some(Value::String(s)) if s == "word" => Ok(Some(Timestamps::Word)),
        Some(Value::String(s)) if s == "char" => Ok(Some(Timestamps::Char)),
        Some(other) => Err(bad_input(
            task,
            format!("return_timestamps must be \"char\" or \"word\" for a CTC model, not {other}"),
        )),
    }
}

/// The index of each row's largest value (the first of ties).
fn argmax_rows(rows: &[Vec<f32>]) -> Vec<u32> {
    rows.iter()
        .map(|row| {
            row.iter()
                .enumerate()
                .fold((0usize, f32::NEG_INFINITY), |best, (i, &v)| {
                    if v > best.1 { (i, v) } else { best }
                })
                .0 as u32
        })
        .collect()
}

/// transformers' `clean_up_tokenization`.
fn clean_up_spaces(text: &str) -> String {
    [
        (" .", "."),
        (" ?", "?"),
        (" !", "!"),
        (" ,", ","),
        (" ' ", "'"),
        (" n't", "n't"),
        (" 'm", "'m"),
        (" 's", "'s"),
        (" 've", "'ve"),
        (" 're", "'re"),
    ]
    .iter()
    .fold(text.to_string(), |acc, (from, to)| acc.replace(from, to))
}

/// A loaded wav2vec2 checkpoint with its head.
pub struct Wav2Vec2Pipeline {
    model: Wav2Vec2,
    head: Head,
    clean_up: bool,
    extractor: FeatureExtractor,
    device: Device,
    weight_bytes: u64,
    task: TaskKind,
}

impl Wav2Vec2Pipeline {
    /// Load for speech recognition (a CTC head) or audio classification.
    pub fn load(
        task: TaskKind,
        files: &ModelFiles,
        device: &Device,
    ) -> std::result::Result<Self, LocalError> {
        files.require(&["config.json", "preprocessor_config.json", WEIGHTS])?;
        let cfg: Config = files.json("config.json")?;
        let extractor: FeatureExtractor = files.json("preprocessor_config.json")?;
        let unsupported = if cfg.use_weighted_layer_sum {
            Some("use_weighted_layer_sum")
        } else if cfg.add_adapter {
            Some("an adapter after the encoder (add_adapter)")
        } else if cfg.adapter_attn_dim.is_some() {
            Some("per-language attention adapters (adapter_attn_dim, as in MMS)")
        } else {
            None
        };
        if let Some(what) = unsupported {
            return Err(LocalError::Unsupported(format!(
                "{}: hgpt's wav2vec2 does not run {what}",
                files.id()
            )));
        }
        let weights = files.weights(device)?;
        let weight_bytes = weights.bytes;
        let failed = |e: candle_core::Error| files.load_error(format!("{}: {e}", weights.file));
        let model = Wav2Vec2::load(&cfg, weights.vb.pp("wav2vec2")).map_err(failed)?;
        let hidden = cfg.hidden_size;
        let (head, clean_up) = match task {
            TaskKind::AutomaticSpeechRecognition => {
                let (vocab, clean_up) = Vocabulary::load(files)?;
                let lm_head = Dense::load(hidden, cfg.vocab_size, weights.vb.pp("lm_head"))
                    .map_err(failed)?;
                if cfg.pad_token_id.is_some_and(|pad| {
                    vocab
                        .tokens
                        .get(&pad)
                        .is_some_and(|token| *token != vocab.pad)
                }) {
                    return Err(files.load_error(format!(
                        "config.json's pad_token_id does not name the tokenizer's pad token {:?}",
                        vocab.pad
                    )));
                }
                (Head::Ctc { lm_head, vocab }, clean_up)
            }
            TaskKind::AudioClassification => {
                let labels = crate::vision::encoder::class_names(
                    &cfg.id2label,
                    crate::vision::encoder::class_count(&cfg.id2label),
                );
                let proj = cfg.classifier_proj_size;
                let projector =
                    Dense::load(hidden, proj, weights.vb.pp("projector")).map_err(failed)?;
                let classifier =
                    Dense::load(proj, labels.len(), weights.vb.pp("classifier")).map_err(failed)?;
                (
                    Head::Classify {
                        projector,
                        classifier,
                        labels,
                    },
                    false,
                )
            }
            other => {
                return Err(LocalError::Unsupported(format!(
                    "wav2vec2 does not do {other}"
                )));
            }
        };
        Ok(Self {
            model,
            head,
            clean_up,
            extractor,
            device: device.clone(),
            weight_bytes,
            task,
        })
    }

    /// The feature extractor's input for mono samples at its rate:
    /// normalised to zero mean and unit variance (numpy's `var` + 1e-7).
    fn input_values(&self, samples: &[f32]) -> Vec<f32> {
        if !self.extractor.do_normalize {
            return samples.to_vec();
        }
        let n = samples.len().max(1) as f64;
        let mean = samples.iter().map(|&s| f64::from(s)).sum::<f64>() / n;
        let var = samples
            .iter()
            .map(|&s| (f64::from(s) - mean).powi(2))
            .sum::<f64>()
            / n;
        let scale = 1.0 / (var + 1e-7).sqrt();
        samples
            .iter()
            .map(|&s| ((f64::from(s) - mean) * scale) as f32)
            .collect()
    }

    /// The last hidden states of raw mono samples at the model's rate.
    fn hidden_states(&self, samples: &[f32]) -> std::result::Result<Tensor, LocalError> {
        if self.model.frames(samples.len()) == 0 {
            return Err(bad_input(
                self.task,
                "the audio is too short for the model's feature encoder",
            ));
        }
        let input = Tensor::from_vec(self.input_values(samples), samples.len(), &self.device)?;
        Ok(self.model.forward(&input)?)
    }

    /// Per-frame CTC logits `[frames, vocabulary]` (speech recognition
    /// checkpoints only).
    pub fn ctc_logits(&self, samples: &[f32]) -> std::result::Result<Vec<Vec<f32>>, LocalError> {
        let Head::Ctc { lm_head, .. } = &self.head else {
            return Err(LocalError::Unsupported("not a CTC checkpoint".into()));
        };
        let hidden = self.hidden_states(samples)?;
        Ok(lm_head.forward(&hidden, Epilogue::Bias)?.to_vec2()?)
    }

    /// Class logits (audio classification checkpoints only).
    pub fn class_logits(&self, samples: &[f32]) -> std::result::Result<Vec<f32>, LocalError> {
        let Head::Classify {
            projector,
            classifier,
            ..
        } = &self.head
        else {
            return Err(LocalError::Unsupported(
                "not a classification checkpoint".into(),
            ));
        };
        let hidden = self.hidden_states(samples)?;
        let pooled = projector
            .forward(&hidden, Epilogue::Bias)?
            .mean_keepdim(0)?;
        Ok(classifier
            .forward(&pooled, Epilogue::Bias)?
            .squeeze(0)?
            .to_vec1()?)
    }

    /// Samples per logit frame (`inputs_to_logits_ratio`).
    fn samples_per_frame(&self) -> usize {
        self.model.convs.iter().map(|c| c.stride).product()
    }

    /// Transcribe long audio as the pipeline does with `chunk_length_s`:
    /// overlapping chunks, each normalised and run alone, the frames of
    /// each chunk's strides dropped, the rest decoded as one sequence.
    /// `stride_s` is the (left, right) overlap in seconds.
    pub fn transcribe_chunked(
        &self,
        samples: &[f32],
        chunk_length_s: f64,
        stride_s: (f64, f64),
    ) -> std::result::Result<String, LocalError> {
        let ids = self.chunked_frame_ids(samples, chunk_length_s, stride_s)?;
        Ok(self.vocabulary()?.decode(&ids, self.clean_up))
    }

    /// The CTC head's vocabulary.
    fn vocabulary(&self) -> std::result::Result<&Vocabulary, LocalError> {
        match &self.head {
            Head::Ctc { vocab, .. } => Ok(vocab),
            Head::Classify { .. } => Err(LocalError::Unsupported("not a CTC checkpoint".into())),
        }
    }

    /// The most likely token of every frame the chunks keep, in order.
    fn chunked_frame_ids(
        &self,
        samples: &[f32],
        chunk_length_s: f64,
        stride_s: (f64, f64),
    ) -> std::result::Result<Vec<u32>, LocalError> {
        let task = self.task;
        let rate = f64::from(self.sampling_rate());
        let align = self.samples_per_frame() as f64;
        let aligned = |seconds: f64| (seconds * rate / align).round_ties_even() * align;
        let (chunk_len, left, right) = (
            aligned(chunk_length_s),
            aligned(stride_s.0),
            aligned(stride_s.1),
        );
        let longest = f64::from(MAX_SECONDS) * rate;
        let valid = |x: f64| x.is_finite() && (0.0..=longest).contains(&x);
        if !(valid(chunk_len) && valid(left) && valid(right)) || chunk_len <= left + right {
            return Err(bad_input(
                task,
                "chunk_length_s must be longer than the two strides together",
            ));
        }
        let strides = (left as usize, right as usize);
        let mut ids = Vec::new();
        for span in chunk_spans(samples.len(), chunk_len as usize, strides) {
            let chunk = &samples[span.start..span.end];
            // A tail shorter than the encoder's first window adds nothing.
            if self.model.frames(chunk.len()) == 0 {
                continue;
            }
            let frames = argmax_rows(&self.ctc_logits(chunk)?);
            // The pipeline's `rescale_stride`, from samples to frames.
            let input_n = chunk.len() as f64;
            let token_n = (input_n * (1.0 / align)).round_ties_even();
            let frames_of = |stride: usize| (stride as f64 / input_n * token_n).round_ties_even();
            let drop_left = frames_of(span.stride_left) as usize;
            let drop_right = frames_of(span.stride_right) as usize;
            let keep_to = (token_n as usize)
                .saturating_sub(drop_right)
                .min(frames.len());
            ids.extend_from_slice(&frames[drop_left.min(keep_to)..keep_to]);
        }
        Ok(ids)
    }

    /// Transcribe raw mono samples at the model's rate.
    pub fn transcribe(&self, samples: &[f32]) -> std::result::Result<String, LocalError> {
        let ids = argmax_rows(&self.ctc_logits(samples)?);
        Ok(self.vocabulary()?.decode(&ids, self.clean_up))
    }

    /// A transcript and, when asked, its timestamped chunks (`[{text,
    /// timestamp: [start, end]}]` in seconds, as the pipeline gives them).
    fn transcribe_request(
        &self,
        samples: &[f32],
        chunking: Option<Chunking>,
        timestamps: Option<Timestamps>,
    ) -> std::result::Result<InferenceOutput, LocalError> {
        let ids = match chunking {
            Some((length, strides)) => self.chunked_frame_ids(samples, length, strides)?,
            None => argmax_rows(&self.ctc_logits(samples)?),
        };
        let vocab = self.vocabulary()?;
        let text = vocab.decode(&ids, self.clean_up);
        let chunks = timestamps.map(|level| {
            let chars = vocab.char_offsets(&ids);
            let offsets = match level {
                Timestamps::Char => chars,
                Timestamps::Word => vocab.word_offsets(&chars),
            };
            let seconds = |frame: usize| {
                (frame * self.samples_per_frame()) as f64 / f64::from(self.sampling_rate())
            };
            Value::Array(
                offsets
                    .into_iter()
                    .map(|o| {
                        serde_json::json!({
                            "text": o.text,
                            "timestamp": [seconds(o.start), seconds(o.end)],
                        })
                    })
                    .collect(),
            )
        });
        Ok(InferenceOutput::Transcription { text, chunks })
    }

    /// Classify raw mono samples at the model's rate: scores sorted, cut to
    /// `top_k` (`None`: every label).
    pub fn classify(
        &self,
        samples: &[f32],
        top_k: Option<usize>,
        function: ScoreFunction,
    ) -> std::result::Result<Vec<ScoredLabel>, LocalError> {
        let Head::Classify { labels, .. } = &self.head else {
            return Err(LocalError::Unsupported(
                "not a classification checkpoint".into(),
            ));
        };
        let logits = self.class_logits(samples)?;
        Ok(ranked_labels(&logits, labels, top_k, function))
    }

    /// The sample rate the model takes.
    pub fn sampling_rate(&self) -> u32 {
        self.extractor.sampling_rate
    }
}

impl Pipeline for Wav2Vec2Pipeline {
    fn tasks(&self) -> &[TaskKind] {
        std::slice::from_ref(&self.task)
    }

    fn run(
        &self,
        task: TaskKind,
        args: &ResolvedArgs,
    ) -> std::result::Result<InferenceOutput, LocalError> {
        if task != self.task {
            return Err(LocalError::Unsupported(format!(
                "this wav2vec2 checkpoint does {}, not {task}",
                self.task
            )));
        }
        let blob = args
            .audio
            .as_ref()
            .filter(|b| !b.bytes.is_empty())
            .ok_or_else(|| bad_input(task, "missing argument `audio`"))?;
        let limit = if task == TaskKind::AutomaticSpeechRecognition {
            MAX_SECONDS
        } else {
            MAX_CLASSIFY_SECONDS
        };
        let audio = audio::load(&blob.bytes, self.sampling_rate(), limit)
            .map_err(|e| bad_input(task, e.to_string()))?;
        match task {
            TaskKind::AutomaticSpeechRecognition => self.transcribe_request(
                &audio.samples,
                chunking(args, audio.seconds(), AUTO_CHUNK_SECONDS, MAX_SECONDS)?,
                timestamps(task, args)?,
            ),
            _ => {
                let (top_k, function) = classification_args(task, args)?;
                Ok(InferenceOutput::Labels(self.classify(
                    &audio.samples,
                    top_k,
                    function,
                )?))
            }
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
    fn ctc_decoding_collapses_repeats_and_drops_blanks() {
        let tokens: HashMap<u32, String> = ["<pad>", "<s>", "</s>", "<unk>", "|", "A", "B", "'"]
            .iter()
            .enumerate()
            .map(|(i, t)| (i as u32, t.to_string()))
            .collect();
        let vocab = Vocabulary {
            tokens,
            pad: "<pad>".into(),
            unk: "<unk>".into(),
            word_delimiter: "|".into(),
            replace_word_delimiter: " ".into(),
            lower_case: false,
        };
        // A A <pad> A | | B <pad> B </s> 99 (unknown id)
        let ids = [5, 5, 0, 5, 4, 4, 6, 0, 6, 2, 99];
        assert_eq!(vocab.decode(&ids, false), "AA BB</s><unk>");
        let lower = Vocabulary {
            lower_case: true,
            ..vocab.clone()
        };
        assert_eq!(lower.decode(&[5, 4, 6], false), "a b");
        assert_eq!(vocab.decode(&[4, 5, 4, 0, 4, 6, 4], false), "A  B");
        assert_eq!(clean_up_spaces("A 's B ."), "A's B.");
    }
}
