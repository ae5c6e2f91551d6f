//! Whisper speech recognition (`WhisperForConditionalGeneration`) as the
//! transformers 4.57 `automatic-speech-recognition` pipeline runs it: the
//! log-mel features of `WhisperFeatureExtractor` (30 s windows), the
//! convolutional encoder with pre-norm layers, the decoder with self- and
//! cross-attention (cross keys and values computed once per window), and
//! `WhisperForConditionalGeneration.generate`'s prompt (start token,
//! language, detected when not given, task, `<|notimestamps|>`), logits
//! processors (suppressed tokens, tokens suppressed at the start, the
//! timestamp rules) and greedy or beam search; long audio in overlapping
//! chunks merged as the pipeline's `_decode_asr` does, with optional
//! segment timestamps.

use crate::audio;
use crate::error::{LocalError, bad_input};
use crate::files::{ModelFiles, WEIGHTS};
use crate::generate::{GenerationConfig, StepDecoder, clean_up_tokenization, generate};
use crate::kernels::{Dense, Epilogue, dense_activation};
use crate::pipeline::Pipeline;
use crate::speech::{chunk_spans, chunking};
use crate::vision::attention::{attend, causal_mask, merge_heads, self_attention, split_heads};
use candle_core::{D, Device, Module, Result, Tensor};
use candle_nn::{Activation, Embedding, LayerNorm, VarBuilder, layer_norm};
use hgpt_core::backend::ResolvedArgs;
use hgpt_core::output::InferenceOutput;
use hgpt_core::task::TaskKind;
use rayon::prelude::*;
use rustfft::FftPlanner;
use rustfft::num_complex::Complex;
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

/// Longest audio transcribed, in seconds (in chunks).
const MAX_SECONDS: u32 = 1800;
/// The most windows one request may decode.
const MAX_WINDOWS: usize = 1000;
/// Most decoding passes over one window (a pass after a segment left
/// unfinished decodes the rest of the window again).
const MAX_PASSES_PER_WINDOW: usize = 16;
/// The pipeline's default number of beams (its `_default_generation_config`,
/// which a model's own `num_beams` does not override).
const PIPELINE_NUM_BEAMS: usize = 5;
/// LayerNorm epsilon of every Whisper layer norm (PyTorch's default).
const LAYER_NORM_EPS: f64 = 1e-5;

/// Whisper's languages: token code and name (transformers' `LANGUAGES`).
const LANGUAGES: &[(&str, &str)] = &[
    ("en", "english"),
    ("zh", "chinese"),
    ("de", "german"),
    ("es", "spanish"),
    ("ru", "russian"),
    ("ko", "korean"),
    ("fr", "french"),
    ("ja", "japanese"),
    ("pt", "portuguese"),
    ("tr", "turkish"),
    ("pl", "polish"),
    ("ca", "catalan"),
    ("nl", "dutch"),
    ("ar", "arabic"),
    ("sv", "swedish"),
    ("it", "italian"),
    ("id", "indonesian"),
    ("hi", "hindi"),
    ("fi", "finnish"),
    ("vi", "vietnamese"),
    ("he", "hebrew"),
    ("uk", "ukrainian"),
    ("el", "greek"),
    ("ms", "malay"),
    ("cs", "czech"),
    ("ro", "romanian"),
    ("da", "danish"),
    ("hu", "hungarian"),
    ("ta", "tamil"),
    ("no", "norwegian"),
    ("th", "thai"),
    ("ur", "urdu"),
    ("hr", "croatian"),
    ("bg", "bulgarian"),
    ("lt", "lithuanian"),
    ("la", "latin"),
    ("mi", "maori"),
    ("ml", "malayalam"),
    ("cy", "welsh"),
    ("sk", "slovak"),
    ("te", "telugu"),
    ("fa", "persian"),
    ("lv", "latvian"),
    ("bn", "bengali"),
    ("sr", "serbian"),
    ("az", "azerbaijani"),
    ("sl", "slovenian"),
    ("kn", "kannada"),
    ("et", "estonian"),
    ("mk", "macedonian"),
    ("br", "breton"),
    ("eu", "basque"),
    ("is", "icelandic"),
    ("hy", "armenian"),
    ("ne", "nepali"),
    ("mn", "mongolian"),
    ("bs", "bosnian"),
    ("kk", "kazakh"),
    ("sq", "albanian"),
    ("sw", "swahili"),
    ("gl", "galician"),
    ("mr", "marathi"),
    ("pa", "punjabi"),
    ("si", "sinhala"),
    ("km", "khmer"),
    ("sn", "shona"),
    ("yo", "yoruba"),
    ("so", "somali"),
    ("af", "afrikaans"),
    ("oc", "occitan"),
    ("ka", "georgian"),
    ("be", "belarusian"),
    ("tg", "tajik"),
    ("sd", "sindhi"),
    ("gu", "gujarati"),
    ("am", "amharic"),
    ("yi", "yiddish"),
    ("lo", "lao"),
    ("uz", "uzbek"),
    ("fo", "faroese"),
    ("ht", "haitian creole"),
    ("ps", "pashto"),
    ("tk", "turkmen"),
    ("nn", "nynorsk"),
    ("mt", "maltese"),
    ("sa", "sanskrit"),
    ("lb", "luxembourgish"),
    ("my", "myanmar"),
    ("bo", "tibetan"),
    ("tl", "tagalog"),
    ("mg", "malagasy"),
    ("as", "assamese"),
    ("tt", "tatar"),
    ("haw", "hawaiian"),
    ("ln", "lingala"),
    ("ha", "hausa"),
    ("ba", "bashkir"),
    ("jw", "javanese"),
    ("su", "sundanese"),
    ("yue", "cantonese"),
];

/// Other names transformers accepts for a language (`TO_LANGUAGE_CODE`).
const LANGUAGE_ALIASES: &[(&str, &str)] = &[
    ("burmese", "my"),
    ("valencian", "ca"),
    ("flemish", "nl"),
    ("haitian", "ht"),
    ("letzeburgesch", "lb"),
    ("pushto", "ps"),
    ("panjabi", "pa"),
    ("moldavian", "ro"),
    ("moldovan", "ro"),
    ("sinhalese", "si"),
    ("castilian", "es"),
    ("mandarin", "zh"),
];

fn default_feature_size() -> usize {
    80
}
fn default_rate() -> u32 {
    16_000
}
fn default_hop() -> usize {
    160
}
fn default_chunk_length() -> usize {
    30
}
fn default_n_fft() -> usize {
    400
}

/// `preprocessor_config.json` (`WhisperFeatureExtractor`).
#[derive(Debug, Clone, Deserialize)]
struct ExtractorConfig {
    #[serde(default = "default_feature_size")]
    feature_size: usize,
    #[serde(default = "default_rate")]
    sampling_rate: u32,
    #[serde(default = "default_hop")]
    hop_length: usize,
    #[serde(default = "default_chunk_length")]
    chunk_length: usize,
    #[serde(default = "default_n_fft")]
    n_fft: usize,
    #[serde(default)]
    dither: f64,
}

/// `WhisperFeatureExtractor`'s log-mel spectrogram: the samples padded with
/// zeros or cut to one window, a centred STFT (reflect padding, periodic
/// Hann window), the power spectrum through a Slaney mel filter bank,
/// `log10` floored at 1e-10, values more than 8 below the maximum raised to
/// it, then `(x + 4) / 4`.
#[derive(Debug, Clone)]
pub struct LogMel {
    n_fft: usize,
    hop_length: usize,
    n_samples: usize,
    sampling_rate: u32,
    chunk_length: usize,
    mels: usize,
    /// `[mels][n_fft / 2 + 1]`.
    filters: Vec<f64>,
    window: Vec<f64>,
}

/// transformers' Slaney mel scale.
fn hertz_to_mel(hz: f64) -> f64 {
    if hz >= 1000.0 {
        15.0 + (hz / 1000.0).ln() * (27.0 / 6.4f64.ln())
    } else {
        3.0 * hz / 200.0
    }
}

fn mel_to_hertz(mel: f64) -> f64 {
    if mel >= 15.0 {
        1000.0 * ((6.4f64.ln() / 27.0) * (mel - 15.0)).exp()
    } else {
        200.0 * mel / 3.0
    }
}

/// `num` values from `start` to `stop` as `numpy.linspace`.
fn linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    if num == 1 {
        return vec![start];
    }
    let step = (stop - start) / (num - 1) as f64;
    let mut values: Vec<f64> = (0..num).map(|i| start + i as f64 * step).collect();
    if let Some(last) = values.last_mut() {
        *last = stop;
    }
    values
}

impl LogMel {
    /// The extractor of `preprocessor_config.json`'s settings:
    /// `feature_size` mel bins, `chunk_length` seconds per window.
    pub fn new(
        feature_size: usize,
        sampling_rate: u32,
        hop_length: usize,
        chunk_length: usize,
        n_fft: usize,
    ) -> std::result::Result<Self, String> {
        if feature_size == 0 || feature_size > 1024 {
            return Err(format!("feature_size {feature_size} is not from 1 to 1024"));
        }
        if !(2..=1 << 16).contains(&n_fft) || hop_length == 0 {
            return Err(format!(
                "n_fft {n_fft} and hop_length {hop_length} do not make an STFT"
            ));
        }
        if sampling_rate == 0 || sampling_rate > audio::MAX_RATE {
            return Err(format!("sampling_rate {sampling_rate} is out of range"));
        }
        let n_samples = chunk_length
            .checked_mul(sampling_rate as usize)
            .filter(|&n| n > n_fft && n <= 3600 * audio::MAX_RATE as usize)
            .ok_or_else(|| format!("chunk_length {chunk_length} s makes no window"))?;
        let bins = n_fft / 2 + 1;
        // The Slaney filter bank from 0 to 8 kHz, as WhisperFeatureExtractor
        // builds it.
        let mel_points = linspace(hertz_to_mel(0.0), hertz_to_mel(8000.0), feature_size + 2);
        let filter_freqs: Vec<f64> = mel_points.iter().map(|&m| mel_to_hertz(m)).collect();
        let fft_freqs = linspace(0.0, f64::from(sampling_rate / 2), bins);
        let mut filters = vec![0.0; feature_size * bins];
        for m in 0..feature_size {
            let (low, centre, high) = (filter_freqs[m], filter_freqs[m + 1], filter_freqs[m + 2]);
            let norm = 2.0 / (high - low);
            for (b, &f) in fft_freqs.iter().enumerate() {
                let down = -(low - f) / (centre - low);
                let up = (high - f) / (high - centre);
                filters[m * bins + b] = 0f64.max(down.min(up)) * norm;
            }
        }
        let window = (0..n_fft)
            .map(|i| 0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / n_fft as f64).cos())
            .collect();
        Ok(Self {
            n_fft,
            hop_length,
            n_samples,
            sampling_rate,
            chunk_length,
            mels: feature_size,
            filters,
            window,
        })
    }

    /// The number of mel bins.
    pub fn mels(&self) -> usize {
        self.mels
    }

    /// Frames per window (`nb_max_frames`).
    pub fn frames(&self) -> usize {
        self.n_samples / self.hop_length
    }

    /// The features `[mels][frames]` (row-major) of the first window of
    /// `samples`.
    pub fn features(&self, samples: &[f32]) -> Vec<f32> {
        let n = self.n_samples;
        let half = self.n_fft / 2;
        let signal = |i: usize| samples.get(i).map_or(0.0, |&s| f64::from(s));
        // Reflect padding on both sides, as numpy's and torch's centred STFT.
        let mut padded = Vec::with_capacity(n + 2 * half);
        padded.extend((0..half).map(|j| signal(half - j)));
        padded.extend((0..n).map(signal));
        padded.extend((0..half).map(|j| signal(n - 2 - j)));
        let frames = self.frames();
        let bins = self.n_fft / 2 + 1;
        let fft = FftPlanner::<f64>::new().plan_fft_forward(self.n_fft);
        // log10 of each frame's mel energies, frame-major.
        let mut log_spec = vec![0f64; frames * self.mels];
        log_spec
            .par_chunks_mut(self.mels)
            .enumerate()
            .for_each_init(
                || (vec![Complex::new(0.0, 0.0); self.n_fft], vec![0.0; bins]),
                |(buffer, power), (t, out)| {
                    let start = t * self.hop_length;
                    for (k, slot) in buffer.iter_mut().enumerate() {
                        *slot = Complex::new(padded[start + k] * self.window[k], 0.0);
                    }
                    fft.process(buffer);
                    for (p, c) in power.iter_mut().zip(buffer.iter()) {
                        *p = c.re * c.re + c.im * c.im;
                    }
                    for (m, value) in out.iter_mut().enumerate() {
                        let row = &self.filters[m * bins..(m + 1) * bins];
                        let energy: f64 = row.iter().zip(power.iter()).map(|(f, p)| f * p).sum();
                        *value = energy.max(1e-10).log10();
                    }
                },
            );
        let max = log_spec.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let floor = max - 8.0;
        let mut features = vec![0f32; self.mels * frames];
        for t in 0..frames {
            for m in 0..self.mels {
                let value = log_spec[t * self.mels + m].max(floor);
                features[m * frames + t] = ((value + 4.0) / 4.0) as f32;
            }
        }
        features
    }
}

fn default_gelu() -> Activation {
    Activation::Gelu
}

/// The parts of `config.json` the model needs.
#[derive(Debug, Clone, Deserialize)]
struct Config {
    vocab_size: usize,
    num_mel_bins: usize,
    d_model: usize,
    encoder_layers: usize,
    encoder_attention_heads: usize,
    decoder_layers: usize,
    decoder_attention_heads: usize,
    encoder_ffn_dim: usize,
    decoder_ffn_dim: usize,
    max_source_positions: usize,
    max_target_positions: usize,
    #[serde(default = "default_gelu")]
    activation_function: Activation,
}

impl Config {
    /// Sizes that make the weights' shapes consistent.
    fn check(&self) -> std::result::Result<(), String> {
        let d = self.d_model;
        for (heads, what) in [
            (self.encoder_attention_heads, "encoder_attention_heads"),
            (self.decoder_attention_heads, "decoder_attention_heads"),
        ] {
            if d == 0 || heads == 0 || !d.is_multiple_of(heads) {
                return Err(format!(
                    "d_model {d} is not a positive multiple of {what} {heads}"
                ));
            }
        }
        let sizes = [
            self.vocab_size,
            self.num_mel_bins,
            self.encoder_ffn_dim,
            self.decoder_ffn_dim,
            self.max_source_positions,
            self.max_target_positions,
            self.encoder_layers,
            self.decoder_layers,
        ];
        if sizes.contains(&0) {
            return Err("sizes and layer counts must be positive".into());
        }
        Ok(())
    }
}

/// An attention block's projections as Whisper stores them: the query
/// scaled by `1/sqrt(head size)` (bias included, as Whisper scales it),
/// the key without a bias, the value and the output with one.
struct Projections {
    query: (Tensor, Tensor),
    key: (Tensor, Tensor),
    value: (Tensor, Tensor),
    out: Dense,
}

impl Projections {
    fn load(d: usize, heads: usize, vb: VarBuilder) -> Result<Self> {
        let scale = 1.0 / ((d / heads) as f64).sqrt();
        let part = |name: &str| -> Result<(Tensor, Tensor)> {
            let p = vb.pp(name);
            Ok((p.get((d, d), "weight")?, p.get(d, "bias")?))
        };
        let query = part("q_proj")?;
        let key_weight = vb.pp("k_proj").get((d, d), "weight")?;
        let key_bias = Tensor::zeros(d, key_weight.dtype(), key_weight.device())?;
        Ok(Self {
            query: ((query.0 * scale)?, (query.1 * scale)?),
            key: (key_weight, key_bias),
            value: part("v_proj")?,
            out: Dense::load(d, d, vb.pp("out_proj"))?,
        })
    }

    /// Query, key and value as one layer.
    fn packed(&self) -> Result<Dense> {
        Dense::from_parts(
            &[
                self.query.0.clone(),
                self.key.0.clone(),
                self.value.0.clone(),
            ],
            &[
                self.query.1.clone(),
                self.key.1.clone(),
                self.value.1.clone(),
            ],
        )
    }

    /// The query alone, and the key and value as one layer.
    fn split(&self) -> Result<(Dense, Dense)> {
        Ok((
            Dense::new(self.query.0.clone(), Some(self.query.1.clone()))?,
            Dense::from_parts(
                &[self.key.0.clone(), self.value.0.clone()],
                &[self.key.1.clone(), self.value.1.clone()],
            )?,
        ))
    }
}

/// The feed-forward block of a layer.
#[derive(Debug, Clone)]
struct FeedForward {
    norm: LayerNorm,
    fc1: Dense,
    fc2: Dense,
    activation: Activation,
}

impl FeedForward {
    fn load(d: usize, ffn: usize, activation: Activation, vb: &VarBuilder) -> Result<Self> {
        Ok(Self {
            norm: layer_norm(d, LAYER_NORM_EPS, vb.pp("final_layer_norm"))?,
            fc1: Dense::load(d, ffn, vb.pp("fc1"))?,
            fc2: Dense::load(ffn, d, vb.pp("fc2"))?,
            activation,
        })
    }

    fn for_few_rows(self) -> Result<Self> {
        Ok(Self {
            fc1: self.fc1.for_few_rows()?,
            fc2: self.fc2.for_few_rows()?,
            ..self
        })
    }

    /// `x + fc2(act(fc1(norm(x))))`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let inner = dense_activation(&self.fc1, &x.apply(&self.norm)?, self.activation)?;
        self.fc2.forward(&inner, Epilogue::Residual(x))
    }
}

/// One encoder layer (pre-norm self-attention, then the feed-forward).
#[derive(Debug, Clone)]
struct EncoderLayer {
    norm: LayerNorm,
    qkv: Dense,
    out: Dense,
    feed_forward: FeedForward,
}

/// The audio encoder.
#[derive(Debug, Clone)]
struct Encoder {
    conv1: (Tensor, Tensor),
    conv2: (Tensor, Tensor),
    positions: Tensor,
    layers: Vec<EncoderLayer>,
    norm: LayerNorm,
    heads: usize,
}

impl Encoder {
    fn load(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let d = cfg.d_model;
        let conv = |name: &str, inputs: usize| -> Result<(Tensor, Tensor)> {
            let p = vb.pp(name);
            Ok((p.get((d, inputs, 3), "weight")?, p.get(d, "bias")?))
        };
        let layers = (0..cfg.encoder_layers)
            .map(|i| {
                let vb = vb.pp("layers").pp(i);
                let attention =
                    Projections::load(d, cfg.encoder_attention_heads, vb.pp("self_attn"))?;
                Ok(EncoderLayer {
                    norm: layer_norm(d, LAYER_NORM_EPS, vb.pp("self_attn_layer_norm"))?,
                    qkv: attention.packed()?,
                    out: attention.out,
                    feed_forward: FeedForward::load(
                        d,
                        cfg.encoder_ffn_dim,
                        cfg.activation_function,
                        &vb,
                    )?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            conv1: conv("conv1", cfg.num_mel_bins)?,
            conv2: conv("conv2", d)?,
            positions: vb
                .pp("embed_positions")
                .get((cfg.max_source_positions, d), "weight")?,
            layers,
            norm: layer_norm(d, LAYER_NORM_EPS, vb.pp("layer_norm"))?,
            heads: cfg.encoder_attention_heads,
        })
    }

    /// The encoder states `[1, positions, d_model]` of features `[1, mels,
    /// frames]`.
    fn forward(&self, features: &Tensor) -> Result<Tensor> {
        let bias = |b: &Tensor| b.reshape((1, (), 1));
        let x = features
            .conv1d(&self.conv1.0, 1, 1, 1, 1)?
            .broadcast_add(&bias(&self.conv1.1)?)?
            .gelu_erf()?;
        let x = x
            .conv1d(&self.conv2.0, 1, 2, 1, 1)?
            .broadcast_add(&bias(&self.conv2.1)?)?
            .gelu_erf()?;
        let mut x = x
            .transpose(1, 2)?
            .contiguous()?
            .broadcast_add(&self.positions)?;
        for layer in &self.layers {
            let qkv = layer.qkv.forward(&x.apply(&layer.norm)?, Epilogue::Bias)?;
            let context = self_attention(&qkv, self.heads, false)?;
            x = layer.out.forward(&context, Epilogue::Residual(&x))?;
            x = layer.feed_forward.forward(&x)?;
        }
        x.apply(&self.norm)
    }
}

/// One decoder layer.
#[derive(Debug, Clone)]
struct DecoderLayer {
    self_norm: LayerNorm,
    self_qkv: Dense,
    self_out: Dense,
    cross_norm: LayerNorm,
    cross_query: Dense,
    cross_kv: Dense,
    cross_out: Dense,
    feed_forward: FeedForward,
}

/// A layer's cross-attention keys and values of one window's encoder
/// states (`[1, heads, positions, head size]`).
#[derive(Debug, Clone)]
struct CrossCache {
    key: Tensor,
    value: Tensor,
}

/// The text decoder with its output projection (tied to the token
/// embeddings unless the checkpoint has its own `proj_out`).
#[derive(Debug, Clone)]
struct Decoder {
    tokens: Embedding,
    positions: Embedding,
    layers: Vec<DecoderLayer>,
    norm: LayerNorm,
    head: Dense,
    heads: usize,
    vocab_size: usize,
    max_positions: usize,
}

impl Decoder {
    fn load(cfg: &Config, vb: VarBuilder, proj_out: Option<Tensor>) -> Result<Self> {
        let d = cfg.d_model;
        let heads = cfg.decoder_attention_heads;
        let token_table = vb.pp("embed_tokens").get((cfg.vocab_size, d), "weight")?;
        let layers = (0..cfg.decoder_layers)
            .map(|i| {
                let vb = vb.pp("layers").pp(i);
                let own = Projections::load(d, heads, vb.pp("self_attn"))?;
                let cross = Projections::load(d, heads, vb.pp("encoder_attn"))?;
                let (cross_query, cross_kv) = cross.split()?;
                Ok(DecoderLayer {
                    self_norm: layer_norm(d, LAYER_NORM_EPS, vb.pp("self_attn_layer_norm"))?,
                    self_qkv: own.packed()?.for_few_rows()?,
                    self_out: own.out.for_few_rows()?,
                    cross_norm: layer_norm(d, LAYER_NORM_EPS, vb.pp("encoder_attn_layer_norm"))?,
                    cross_query: cross_query.for_few_rows()?,
                    cross_kv,
                    cross_out: cross.out.for_few_rows()?,
                    feed_forward: FeedForward::load(
                        d,
                        cfg.decoder_ffn_dim,
                        cfg.activation_function,
                        &vb,
                    )?
                    .for_few_rows()?,
                })
            })
            .collect::<Result<_>>()?;
        // A head tied to the embeddings reads their table as it is.
        let head = match proj_out {
            Some(weight) => Dense::new(weight, None)?.for_few_rows()?,
            None => Dense::new(token_table.clone(), None)?,
        };
        Ok(Self {
            tokens: Embedding::new(token_table, d),
            positions: Embedding::new(
                vb.pp("embed_positions")
                    .get((cfg.max_target_positions, d), "weight")?,
                d,
            ),
            layers,
            norm: layer_norm(d, LAYER_NORM_EPS, vb.pp("layer_norm"))?,
            head,
            heads,
            vocab_size: cfg.vocab_size,
            max_positions: cfg.max_target_positions,
        })
    }

    /// Every layer's cross-attention keys and values of encoder states.
    fn cross_caches(&self, encoder_states: &Tensor) -> Result<Arc<[CrossCache]>> {
        self.layers
            .iter()
            .map(|layer| {
                let kv = layer.cross_kv.forward(encoder_states, Epilogue::Bias)?;
                let d = kv.dim(D::Minus1)? / 2;
                Ok(CrossCache {
                    key: split_heads(&kv.narrow(D::Minus1, 0, d)?, self.heads)?,
                    value: split_heads(&kv.narrow(D::Minus1, d, d)?, self.heads)?,
                })
            })
            .collect()
    }
}

/// The logits processors of Whisper's `generate` for one window, in its
/// order: tokens suppressed at the first generated position
/// (`begin_suppress_tokens`), tokens always suppressed (`suppress_tokens`),
/// then the timestamp rules when timestamps are asked for.
#[derive(Debug, Clone)]
struct Processors {
    begin_suppress: Vec<u32>,
    suppress: Vec<u32>,
    /// The prompt length: the index of the first generated token.
    begin_index: usize,
    timestamps: Option<TimestampRules>,
}

/// `WhisperTimeStampLogitsProcessor`'s settings.
#[derive(Debug, Clone)]
struct TimestampRules {
    no_timestamps: u32,
    timestamp_begin: u32,
    eos: u32,
    max_initial_timestamp_index: Option<usize>,
}

/// Sets `scores[range]` to minus infinity (the part inside the vocabulary).
fn ban(scores: &mut [f32], range: std::ops::Range<usize>) {
    let end = range.end.min(scores.len());
    if range.start < end {
        scores[range.start..end].fill(f32::NEG_INFINITY);
    }
}

fn ban_ids(scores: &mut [f32], ids: &[u32]) {
    for &id in ids {
        if let Some(score) = scores.get_mut(id as usize) {
            *score = f32::NEG_INFINITY;
        }
    }
}

impl Processors {
    fn apply(&self, ids: &[u32], scores: &mut [f32]) {
        if ids.len() == self.begin_index {
            ban_ids(scores, &self.begin_suppress);
        }
        ban_ids(scores, &self.suppress);
        if let Some(rules) = &self.timestamps {
            rules.apply(ids.get(self.begin_index..).unwrap_or(&[]), scores);
        }
    }
}

impl TimestampRules {
    /// The rules on the scores after `sampled` (the generated tokens so
    /// far): no `<|notimestamps|>`; timestamps in pairs except right before
    /// the end token; no timestamp earlier than the last; a timestamp first,
    /// at most `max_initial_timestamp_index`; and only timestamps when their
    /// total probability beats every text token's.
    fn apply(&self, sampled: &[u32], scores: &mut [f32]) {
        let begin = self.timestamp_begin as usize;
        let vocab = scores.len();
        ban_ids(scores, &[self.no_timestamps]);
        let is_timestamp = |t: &u32| *t >= self.timestamp_begin;
        let last_was_timestamp = sampled.last().is_some_and(is_timestamp);
        let penultimate_was_timestamp =
            sampled.len() < 2 || is_timestamp(&sampled[sampled.len() - 2]);
        if last_was_timestamp {
            if penultimate_was_timestamp {
                ban(scores, begin..vocab);
            } else {
                ban(scores, 0..self.eos as usize);
            }
        }
        if let Some(&last) = sampled.iter().rev().find(|t| **t >= self.timestamp_begin) {
            let last = if last_was_timestamp && !penultimate_was_timestamp {
                last as usize
            } else {
                last as usize + 1
            };
            ban(scores, begin..last);
        }
        if sampled.is_empty() {
            ban(scores, 0..begin);
            if let Some(index) = self.max_initial_timestamp_index {
                ban(scores, begin.saturating_add(index).saturating_add(1)..vocab);
            }
        }
        let log_probs = log_softmax(scores);
        let (text, stamps) = log_probs.split_at(begin.min(vocab));
        let timestamp_log_prob = log_sum_exp(stamps);
        let best_text = text.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        if timestamp_log_prob > best_text {
            ban(scores, 0..begin);
        }
    }
}

/// `log_softmax` in f32.
fn log_softmax(values: &[f32]) -> Vec<f32> {
    let total = log_sum_exp(values);
    values.iter().map(|&v| v - total).collect()
}

/// `logsumexp` in f32 (minus infinity for no values or all minus infinity).
fn log_sum_exp(values: &[f32]) -> f32 {
    let max = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() {
        return max;
    }
    let sum: f64 = values.iter().map(|&v| f64::from(v - max).exp()).sum();
    max + sum.ln() as f32
}

/// One window being decoded: every layer's self-attention cache, the shared
/// cross-attention keys and values (cloned with the session, as beam search
/// does, without copying).
#[derive(Clone)]
struct Session<'a> {
    decoder: &'a Decoder,
    cross: Arc<[CrossCache]>,
    past: Vec<Option<(Tensor, Tensor)>>,
    position: usize,
    processors: Option<Arc<Processors>>,
}

impl<'a> Session<'a> {
    fn new(
        decoder: &'a Decoder,
        cross: Arc<[CrossCache]>,
        processors: Option<Arc<Processors>>,
    ) -> Self {
        Self {
            decoder,
            cross,
            past: vec![None; decoder.layers.len()],
            position: 0,
            processors,
        }
    }

    /// The logits `[vocab]` of the token after `tokens`, fed after the
    /// tokens so far.
    fn forward(&mut self, tokens: &[u32]) -> Result<Tensor> {
        let decoder = self.decoder;
        let count = tokens.len();
        let start = self.position;
        if count == 0 || start + count > decoder.max_positions {
            candle_core::bail!(
                "the decoder takes 1 to {} tokens in all",
                decoder.max_positions
            );
        }
        let device = decoder.norm.weight().device();
        let ids = Tensor::new(tokens, device)?.unsqueeze(0)?;
        let positions =
            Tensor::arange(start as u32, (start + count) as u32, device)?.unsqueeze(0)?;
        let mut x = (decoder.tokens.forward(&ids)? + decoder.positions.forward(&positions)?)?;
        let mask = causal_mask(start, count, device)?;
        for ((layer, past), cross) in decoder
            .layers
            .iter()
            .zip(&mut self.past)
            .zip(self.cross.iter())
        {
            let qkv = layer
                .self_qkv
                .forward(&x.apply(&layer.self_norm)?, Epilogue::Bias)?;
            let d = qkv.dim(D::Minus1)? / 3;
            let query = split_heads(&qkv.narrow(D::Minus1, 0, d)?, decoder.heads)?;
            let mut key = split_heads(&qkv.narrow(D::Minus1, d, d)?, decoder.heads)?;
            let mut value = split_heads(&qkv.narrow(D::Minus1, 2 * d, d)?, decoder.heads)?;
            if let Some((past_key, past_value)) = past.as_ref() {
                key = Tensor::cat(&[past_key, &key], 2)?;
                value = Tensor::cat(&[past_value, &value], 2)?;
            }
            let attended = attend(&query, &key, &value, 1.0, mask.as_ref())?;
            *past = Some((key, value));
            x = layer
                .self_out
                .forward(&merge_heads(&attended)?, Epilogue::Residual(&x))?;
            let query = layer
                .cross_query
                .forward(&x.apply(&layer.cross_norm)?, Epilogue::Bias)?;
            let attended = attend(
                &split_heads(&query, decoder.heads)?,
                &cross.key,
                &cross.value,
                1.0,
                None,
            )?;
            x = layer
                .cross_out
                .forward(&merge_heads(&attended)?, Epilogue::Residual(&x))?;
            x = layer.feed_forward.forward(&x)?;
        }
        self.position += count;
        let last = x.narrow(1, count - 1, 1)?.apply(&decoder.norm)?;
        decoder.head.forward(&last, Epilogue::Bias)?.flatten_all()
    }
}

impl StepDecoder for Session<'_> {
    fn feed(&mut self, tokens: &[u32]) -> std::result::Result<Vec<f32>, LocalError> {
        Ok(self.forward(tokens)?.to_vec1::<f32>()?)
    }

    fn vocab_size(&self) -> usize {
        self.decoder.vocab_size
    }

    fn process_logits(&self, ids: &[u32], scores: &mut [f32]) {
        if let Some(processors) = &self.processors {
            processors.apply(ids, scores);
        }
    }
}

/// Whisper's generation fields beyond the common ones
/// (`generation_config.json`, or `config.json` without one).
#[derive(Debug, Clone, Default, Deserialize)]
struct WhisperGeneration {
    #[serde(default)]
    lang_to_id: Option<BTreeMap<String, u32>>,
    #[serde(default)]
    task_to_id: Option<BTreeMap<String, u32>>,
    #[serde(default)]
    no_timestamps_token_id: Option<u32>,
    #[serde(default)]
    suppress_tokens: Option<Vec<u32>>,
    #[serde(default)]
    begin_suppress_tokens: Option<Vec<u32>>,
    #[serde(default)]
    forced_decoder_ids: Option<Vec<(u32, Option<u32>)>>,
    #[serde(default)]
    is_multilingual: Option<bool>,
    #[serde(default)]
    max_initial_timestamp_index: Option<usize>,
    #[serde(default)]
    return_timestamps: Option<bool>,
}

/// What the model is asked to do with speech.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhisperTask {
    /// Speech to text in its language (`<|transcribe|>`).
    Transcribe,
    /// Speech to English text (`<|translate|>`).
    Translate,
}

impl WhisperTask {
    fn name(self) -> &'static str {
        match self {
            Self::Transcribe => "transcribe",
            Self::Translate => "translate",
        }
    }
}

/// The settings of one transcription, as the pipeline's `generate_kwargs`
/// give them.
#[derive(Debug, Clone)]
pub struct Options {
    /// The spoken language (a name, a code or a `<|xx|>` token); `None`
    /// detects it (multilingual models).
    pub language: Option<String>,
    /// The task; `None` keeps the generation config's.
    pub task: Option<WhisperTask>,
    /// Predict segment timestamps.
    pub timestamps: bool,
    /// Decoding limits and beam search settings.
    pub generation: GenerationConfig,
}

/// A transcript and, with timestamps, its segments as the pipeline's
/// `chunks` (`[{"text", "timestamp": [start, end]}]`).
#[derive(Debug, Clone, PartialEq)]
pub struct Transcript {
    /// The whole text.
    pub text: String,
    /// The timestamped segments, when asked for.
    pub chunks: Option<Value>,
}

/// One window's generated tokens and, for chunked audio, its
/// `(chunk, left stride, right stride)` lengths in seconds.
struct WindowTokens {
    tokens: Vec<u32>,
    stride: Option<(f64, f64, f64)>,
}

/// The tokenizer's decoding and what `_decode_asr` needs to know of its
/// tokens.
struct WhisperTokenizer {
    tokenizer: tokenizers::Tokenizer,
    special: HashSet<u32>,
    clean_up_spaces: bool,
    start_of_prev: Option<u32>,
}

impl WhisperTokenizer {
    fn load(files: &ModelFiles) -> std::result::Result<Self, LocalError> {
        let path = files.require(&["tokenizer.json"])?;
        let tokenizer = tokenizers::Tokenizer::from_file(&path[0])
            .map_err(|e| files.load_error(format!("tokenizer.json: {e}")))?;
        let special = tokenizer
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, token)| token.special)
            .map(|(id, _)| id)
            .collect();
        let clean_up_spaces = files
            .json_if_present::<Value>("tokenizer_config.json")?
            .and_then(|c| c.get("clean_up_tokenization_spaces")?.as_bool())
            .unwrap_or(false);
        let start_of_prev = tokenizer.token_to_id("<|startofprev|>");
        Ok(Self {
            tokenizer,
            special,
            clean_up_spaces,
            start_of_prev,
        })
    }

    /// The text of `ids` (special tokens kept, as `_decode_asr` decodes).
    fn decode(&self, ids: &[u32]) -> std::result::Result<String, LocalError> {
        let text = self
            .tokenizer
            .decode(ids, false)
            .map_err(|e| LocalError::Compute(format!("cannot decode the generated tokens: {e}")))?;
        Ok(if self.clean_up_spaces {
            clean_up_tokenization(&text)
        } else {
            text
        })
    }

    /// The language name of a language token (`<|fr|>` -> `french`).
    fn language_of(&self, id: u32) -> Option<&'static str> {
        let token = self.tokenizer.id_to_token(id)?;
        let code = token.strip_prefix("<|")?.strip_suffix("|>")?;
        LANGUAGES
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(_, name)| *name)
    }
}

/// A loaded Whisper checkpoint.
pub struct WhisperPipeline {
    extractor: LogMel,
    encoder: Encoder,
    decoder: Decoder,
    tokenizer: WhisperTokenizer,
    generation: GenerationConfig,
    whisper: WhisperGeneration,
    decoder_start: u32,
    time_precision: f64,
    weight_bytes: u64,
    device: Device,
}

impl WhisperPipeline {
    /// Load `config.json`, `generation_config.json`,
    /// `preprocessor_config.json`, `tokenizer.json` and the weights.
    pub fn load(files: &ModelFiles, device: &Device) -> std::result::Result<Self, LocalError> {
        files.require(&["config.json", "preprocessor_config.json", WEIGHTS])?;
        let cfg: Config = files.json("config.json")?;
        cfg.check()
            .map_err(|e| files.load_error(format!("config.json: {e}")))?;
        let fe: ExtractorConfig = files.json("preprocessor_config.json")?;
        if fe.dither != 0.0 {
            return Err(LocalError::Unsupported(format!(
                "{}: hgpt's Whisper does not dither its features (dither {})",
                files.id(),
                fe.dither
            )));
        }
        let extractor = LogMel::new(
            fe.feature_size,
            fe.sampling_rate,
            fe.hop_length,
            fe.chunk_length,
            fe.n_fft,
        )
        .map_err(|e| files.load_error(format!("preprocessor_config.json: {e}")))?;
        if extractor.mels() != cfg.num_mel_bins
            || extractor.frames() != 2 * cfg.max_source_positions
        {
            return Err(files.load_error(format!(
                "the features ({} mel bins, {} frames) do not fit the encoder ({} mel bins, {} frames)",
                extractor.mels(),
                extractor.frames(),
                cfg.num_mel_bins,
                2 * cfg.max_source_positions
            )));
        }
        let mut generation = GenerationConfig::load(files, "")?;
        generation.num_beams = PIPELINE_NUM_BEAMS;
        let fields: Value = match files.json_if_present("generation_config.json")? {
            Some(value) => value,
            None => files.json("config.json")?,
        };
        let whisper: WhisperGeneration = serde_json::from_value(fields)
            .map_err(|e| files.load_error(format!("generation settings: {e}")))?;
        let decoder_start = generation
            .decoder_start_token_id
            .ok_or_else(|| files.load_error("no decoder_start_token_id"))?;
        let vocab = cfg.vocab_size as u32;
        let mut named: Vec<u32> = vec![decoder_start];
        named.extend(&generation.eos_token_ids);
        named.extend(whisper.no_timestamps_token_id);
        named.extend(whisper.lang_to_id.iter().flat_map(|m| m.values()));
        named.extend(whisper.task_to_id.iter().flat_map(|m| m.values()));
        named.extend(
            whisper
                .forced_decoder_ids
                .iter()
                .flatten()
                .filter_map(|(_, id)| *id),
        );
        if let Some(bad) = named.iter().find(|&&id| id >= vocab) {
            return Err(files.load_error(format!(
                "the generation settings name token {bad}, outside the vocabulary of {vocab}"
            )));
        }
        let tokenizer = WhisperTokenizer::load(files)?;
        let weights = files.weights(device)?;
        let weight_bytes = weights.bytes;
        let failed = |e: candle_core::Error| files.load_error(format!("{}: {e}", weights.file));
        let vb = weights.vb.pp("model");
        let encoder = Encoder::load(&cfg, vb.pp("encoder")).map_err(failed)?;
        let proj_out = if weights.vb.contains_tensor("proj_out.weight") {
            Some(
                weights
                    .vb
                    .get((cfg.vocab_size, cfg.d_model), "proj_out.weight")
                    .map_err(failed)?,
            )
        } else {
            None
        };
        let decoder = Decoder::load(&cfg, vb.pp("decoder"), proj_out).map_err(failed)?;
        Ok(Self {
            time_precision: fe.chunk_length as f64 / cfg.max_source_positions as f64,
            extractor,
            encoder,
            decoder,
            tokenizer,
            generation,
            whisper,
            decoder_start,
            weight_bytes,
            device: device.clone(),
        })
    }

    /// The sample rate the model takes.
    pub fn sampling_rate(&self) -> u32 {
        self.extractor.sampling_rate
    }

    /// The generation settings requests start from: the model's, with the
    /// pipeline's 5 beams.
    pub fn generation_config(&self) -> &GenerationConfig {
        &self.generation
    }

    /// Default options: the model's settings, language detected.
    pub fn default_options(&self) -> Options {
        Options {
            language: None,
            task: None,
            timestamps: self.whisper.return_timestamps.unwrap_or(false),
            generation: self.generation.clone(),
        }
    }

    /// The log-mel features `[mels][frames]` of the first window of
    /// `samples` (at the model's rate).
    pub fn input_features(&self, samples: &[f32]) -> Vec<f32> {
        self.extractor.features(samples)
    }

    /// The cross-attention caches of one window's features `[mels][frames]`.
    fn encode(&self, features: Vec<f32>) -> std::result::Result<Arc<[CrossCache]>, LocalError> {
        let features = Tensor::from_vec(
            features,
            (1, self.extractor.mels(), self.extractor.frames()),
            &self.device,
        )?;
        let states = self.encoder.forward(&features)?;
        Ok(self.decoder.cross_caches(&states)?)
    }

    /// The language token `detect_language` picks: the most likely language
    /// token after the start token.
    fn detect(
        &self,
        cross: &Arc<[CrossCache]>,
        lang_to_id: &BTreeMap<String, u32>,
    ) -> std::result::Result<u32, LocalError> {
        let mut session = Session::new(&self.decoder, cross.clone(), None);
        let logits = session.feed(&[self.decoder_start])?;
        let mut best: Option<(u32, f32)> = None;
        let mut ids: Vec<u32> = lang_to_id.values().copied().collect();
        ids.sort_unstable();
        for id in ids {
            let score = logits
                .get(id as usize)
                .copied()
                .unwrap_or(f32::NEG_INFINITY);
            if best.is_none_or(|(_, s)| score > s) {
                best = Some((id, score));
            }
        }
        best.map(|(id, _)| id)
            .ok_or_else(|| LocalError::Compute("the model has no language tokens".into()))
    }

    /// The language token of the first window of `samples`, as
    /// `detect_language` picks it (multilingual models).
    pub fn detect_language(&self, samples: &[f32]) -> std::result::Result<u32, LocalError> {
        let lang_to_id = self.whisper.lang_to_id.as_ref().ok_or_else(|| {
            LocalError::Unsupported("this Whisper model has no language tokens".into())
        })?;
        self.detect(&self.encode(self.extractor.features(samples))?, lang_to_id)
    }

    /// The token id of a language as `generate`'s `language` names it: a
    /// `<|xx|>` token, a name (`french`) or a code (`fr`).
    fn language_id(&self, language: &str) -> std::result::Result<u32, LocalError> {
        let task = TaskKind::AutomaticSpeechRecognition;
        let lang_to_id = self.whisper.lang_to_id.as_ref().ok_or_else(|| {
            bad_input(
                task,
                "this Whisper model takes no language (it has no language tokens)",
            )
        })?;
        let language = language.to_lowercase();
        let token = if lang_to_id.contains_key(&language) {
            language.clone()
        } else if let Some((code, _)) = LANGUAGES.iter().find(|(_, name)| *name == language) {
            format!("<|{code}|>")
        } else if let Some((_, code)) = LANGUAGE_ALIASES.iter().find(|(name, _)| *name == language)
        {
            format!("<|{code}|>")
        } else if LANGUAGES.iter().any(|(code, _)| *code == language) {
            format!("<|{language}|>")
        } else {
            return Err(bad_input(
                task,
                format!(
                    "unsupported language {language:?}: give a Whisper language name or code (english, en, ...)"
                ),
            ));
        };
        lang_to_id.get(&token).copied().ok_or_else(|| {
            bad_input(
                task,
                format!("{token} is not a language of this model (its lang_to_id)"),
            )
        })
    }

    /// Check the options before any audio is decoded.
    fn check_options(&self, options: &Options) -> std::result::Result<(), LocalError> {
        let task = TaskKind::AutomaticSpeechRecognition;
        if self.whisper.is_multilingual == Some(false)
            && (options.task.is_some() || options.language.is_some())
        {
            return Err(bad_input(
                task,
                "this Whisper model is English-only: it takes no language or task",
            ));
        }
        if let Some(language) = &options.language {
            self.language_id(language)?;
        }
        if let Some(t) = options.task {
            let known = self
                .whisper
                .task_to_id
                .as_ref()
                .is_some_and(|m| m.contains_key(t.name()));
            if !known {
                return Err(bad_input(
                    task,
                    format!("this Whisper model has no {} task", t.name()),
                ));
            }
        }
        if options.timestamps && self.whisper.no_timestamps_token_id.is_none() {
            return Err(bad_input(
                task,
                "this Whisper model cannot predict timestamps (no no_timestamps_token_id)",
            ));
        }
        Ok(())
    }

    /// The decoder prompt of `generate` (`_retrieve_init_tokens`): the start
    /// token, the language (given, forced by the generation config, or
    /// detected), the task, and `<|notimestamps|>` unless timestamps are
    /// asked for.
    fn prompt(
        &self,
        options: &Options,
        cross: &Arc<[CrossCache]>,
    ) -> std::result::Result<Vec<u32>, LocalError> {
        let whisper = &self.whisper;
        let mut init: Vec<Option<u32>> = vec![Some(self.decoder_start)];
        if options.task.is_none()
            && options.language.is_none()
            && let Some(forced) = &whisper.forced_decoder_ids
            && forced.first().is_some_and(|(index, _)| *index == 1)
        {
            let mut rest = forced.as_slice();
            let mut index = 1;
            while let Some(((at, id), tail)) = rest.split_first()
                && *at == index
            {
                init.push(*id);
                rest = tail;
                index += 1;
            }
            if !rest.is_empty() {
                return Err(LocalError::Unsupported(
                    "the generation config's forced_decoder_ids do not follow Whisper's prompt"
                        .into(),
                ));
            }
        }
        let language_undefined = init.len() <= 1 || init[1].is_none();
        let language = match (&options.language, &whisper.lang_to_id) {
            (Some(language), _) => Some(self.language_id(language)?),
            (None, Some(lang_to_id)) if language_undefined => Some(self.detect(cross, lang_to_id)?),
            _ => None,
        };
        if let Some(id) = language {
            if init.len() > 1 {
                init[1] = Some(id);
            } else {
                init.push(Some(id));
            }
        }
        let task_ids: Vec<u32> = whisper
            .task_to_id
            .iter()
            .flat_map(|m| m.values().copied())
            .collect();
        if let Some(task) = options.task {
            let id = whisper
                .task_to_id
                .as_ref()
                .and_then(|m| m.get(task.name()))
                .copied()
                .ok_or_else(|| LocalError::Unsupported(format!("no {} task", task.name())))?;
            init.push(Some(id));
            for slot in init.iter_mut() {
                if slot.is_some_and(|t| task_ids.contains(&t)) {
                    *slot = Some(id);
                }
            }
        } else if options.language.is_some()
            && let Some(task_to_id) = &whisper.task_to_id
            && !init.iter().flatten().any(|t| task_ids.contains(t))
            && let Some(&transcribe) = task_to_id.get("transcribe")
        {
            init.push(Some(transcribe));
        }
        if let Some(no_timestamps) = whisper.no_timestamps_token_id {
            let last = init.last().copied().flatten();
            if !options.timestamps && last != Some(no_timestamps) {
                init.push(Some(no_timestamps));
            } else if options.timestamps && last == Some(no_timestamps) {
                init.pop();
            }
        }
        Ok(init.into_iter().flatten().collect())
    }

    /// The tokens generated for one window of samples (prompt and end
    /// tokens left out), as `generate` returns them: decoding starts at the
    /// window's first frame and, when the tokens end with an unfinished
    /// segment after a timestamp pair, starts again from that pair's time
    /// (the rest of the features, zero-padded), with the same prompt, until
    /// the window is done. The tokens of each pass up to its last complete
    /// segment are kept.
    fn generate_window(
        &self,
        samples: &[f32],
        options: &Options,
    ) -> std::result::Result<Vec<u32>, LocalError> {
        let features = self.extractor.features(samples);
        let (mels, frames) = (self.extractor.mels(), self.extractor.frames());
        let mut cross = self.encode(features.clone())?;
        let prompt = self.prompt(options, &cross)?;
        let timestamp_begin = self
            .whisper
            .no_timestamps_token_id
            .map_or(u32::MAX, |id| id + 1);
        let timestamps = match (options.timestamps, self.whisper.no_timestamps_token_id) {
            (true, Some(no_timestamps)) => Some(TimestampRules {
                no_timestamps,
                timestamp_begin,
                eos: options
                    .generation
                    .eos_token_ids
                    .first()
                    .copied()
                    .or(options.generation.bos_token_id)
                    .unwrap_or(0),
                max_initial_timestamp_index: self.whisper.max_initial_timestamp_index,
            }),
            _ => None,
        };
        let processors = Arc::new(Processors {
            begin_suppress: self
                .whisper
                .begin_suppress_tokens
                .clone()
                .unwrap_or_default(),
            suppress: self.whisper.suppress_tokens.clone().unwrap_or_default(),
            begin_index: prompt.len(),
            timestamps,
        });
        let mut generation = options.generation.clone();
        let limit = self.decoder.max_positions;
        match generation.max_new_tokens {
            Some(new) if prompt.len() + new > limit => {
                return Err(bad_input(
                    TaskKind::AutomaticSpeechRecognition,
                    format!(
                        "max_new_tokens {new} and the {}-token prompt exceed the decoder's {limit} positions",
                        prompt.len()
                    ),
                ));
            }
            Some(_) => {}
            None => generation.max_length = generation.max_length.min(limit),
        }
        let mut tokens = Vec::new();
        let mut seek = 0;
        // Each pass after an unfinished segment re-encodes the rest of the
        // window; a model that keeps ending that way stops here.
        for _ in 0..MAX_PASSES_PER_WINDOW {
            let session = Session::new(&self.decoder, cross, Some(processors.clone()));
            let generated = generate(session, &prompt, &generation)?;
            let mut sequence = generated.ids.get(prompt.len()..).unwrap_or(&[]).to_vec();
            if sequence
                .last()
                .is_some_and(|t| generation.eos_token_ids.first() == Some(t))
            {
                sequence.pop();
            }
            let (kept, advance) = complete_segments(&sequence, timestamp_begin, frames - seek);
            tokens.extend_from_slice(kept);
            seek += advance;
            if seek >= frames || advance == 0 {
                break;
            }
            // The features from `seek` on, zero-padded to a window.
            let mut rest = vec![0f32; mels * frames];
            for m in 0..mels {
                let row = &features[m * frames + seek..(m + 1) * frames];
                rest[m * frames..m * frames + row.len()].copy_from_slice(row);
            }
            cross = self.encode(rest)?;
        }
        Ok(tokens)
    }

    /// The generated tokens of the first window of `samples` (at the
    /// model's rate), as `generate` returns them: no prompt, no end token.
    pub fn generate_ids(
        &self,
        samples: &[f32],
        options: &Options,
    ) -> std::result::Result<Vec<u32>, LocalError> {
        self.check_options(options)?;
        self.generate_window(samples, options)
    }

    /// Transcribe samples at the model's rate as the pipeline does: one
    /// window, or with `chunking` (`chunk_length_s`, (left, right) strides
    /// in seconds) overlapping chunks whose token sequences are merged.
    pub fn transcribe(
        &self,
        samples: &[f32],
        options: &Options,
        chunking: Option<Chunking>,
    ) -> std::result::Result<Transcript, LocalError> {
        let task = TaskKind::AutomaticSpeechRecognition;
        if samples.is_empty() {
            return Err(bad_input(task, "the audio holds no samples"));
        }
        self.check_options(options)?;
        let windows = match chunking {
            None => vec![WindowTokens {
                tokens: self.generate_window(samples, options)?,
                stride: None,
            }],
            Some((length, (left, right))) => {
                let rate = f64::from(self.sampling_rate());
                let samples_of = |seconds: f64| (seconds * rate).round_ties_even();
                let (chunk_len, left, right) =
                    (samples_of(length), samples_of(left), samples_of(right));
                let longest = f64::from(MAX_SECONDS) * rate;
                if !(chunk_len.is_finite() && chunk_len <= longest && chunk_len > left + right) {
                    return Err(bad_input(
                        task,
                        "chunk_length_s must be longer than the two strides together",
                    ));
                }
                let (chunk_len, left, right) = (chunk_len as usize, left as usize, right as usize);
                let step = chunk_len - left - right;
                if samples.len().div_ceil(step) > MAX_WINDOWS {
                    return Err(bad_input(
                        task,
                        format!(
                            "these chunk and stride lengths make more than {MAX_WINDOWS} chunks"
                        ),
                    ));
                }
                chunk_spans(samples.len(), chunk_len, (left, right))
                    .into_iter()
                    .map(|span| {
                        let chunk = &samples[span.start..span.end];
                        Ok(WindowTokens {
                            tokens: self.generate_window(chunk, options)?,
                            stride: Some((
                                chunk.len() as f64 / rate,
                                span.stride_left as f64 / rate,
                                span.stride_right as f64 / rate,
                            )),
                        })
                    })
                    .collect::<std::result::Result<_, LocalError>>()?
            }
        };
        self.decode_asr(&windows, options.timestamps)
    }

    /// The pipeline's `_decode_asr` without word timestamps: each window's
    /// tokens read in order (language tokens noted, other special tokens
    /// skipped, timestamp pairs closing segments, timestamps inside a stride
    /// left to the neighbouring window), the text tokens of overlapping
    /// windows merged by [`longest_common_sequence`], the text of each
    /// segment decoded.
    fn decode_asr(
        &self,
        windows: &[WindowTokens],
        timestamps: bool,
    ) -> std::result::Result<Transcript, LocalError> {
        let precision = self.time_precision;
        let timestamp_begin = self
            .whisper
            .no_timestamps_token_id
            .map_or(u32::MAX, |id| id + 1);
        let mut last_language: Option<&'static str> = None;
        let mut chunks: Vec<Segment> = Vec::new();
        let mut chunk = Segment::default();
        let mut time_offset = 0.0;
        let mut previous: Vec<Vec<u32>> = Vec::new();
        let mut skip = false;
        for window in windows {
            let tokens = self.strip_prompt(&window.tokens);
            let mut last_timestamp: Option<u32> = None;
            let mut first_timestamp = f64::from(timestamp_begin);
            let mut current_max = 0.0;
            let mut previous_segments = 0.0;
            let mut penultimate = 0.0;
            if let Some((chunk_len, stride_left, stride_right)) = window.stride {
                time_offset -= stride_left;
                let right_stride_start = chunk_len - stride_right;
                if stride_left != 0.0 {
                    first_timestamp = stride_left / precision + f64::from(timestamp_begin);
                }
                if stride_right != 0.0 {
                    for &token in tokens.iter().rev() {
                        if token >= timestamp_begin {
                            if last_timestamp.is_some()
                                && f64::from(token - timestamp_begin) * precision
                                    < right_stride_start
                            {
                                break;
                            }
                            last_timestamp = Some(token);
                        }
                    }
                }
            }
            let mut current: Vec<u32> = Vec::new();
            for (i, &token) in tokens.iter().enumerate() {
                if self.tokenizer.special.contains(&token) {
                    if let Some(language) = self.tokenizer.language_of(token) {
                        if last_language.is_some_and(|l| l != language) && !timestamps {
                            previous.push(std::mem::take(&mut current));
                            chunk.text =
                                self.tokenizer.decode(&longest_common_sequence(&previous))?;
                            chunks.push(std::mem::replace(&mut chunk, Segment::new(last_language)));
                            previous.clear();
                        }
                        chunk.language = Some(language);
                        last_language = Some(language);
                    }
                } else if token >= timestamp_begin {
                    let timestamp = f64::from(token - timestamp_begin) * precision;
                    if timestamp < current_max {
                        let single_ending = i >= 2
                            && !(tokens[i - 1] >= timestamp_begin
                                && tokens[i - 2] >= timestamp_begin);
                        if single_ending {
                            previous_segments += precision * 1500.0;
                        } else {
                            current_max = penultimate;
                            previous_segments += penultimate;
                        }
                    }
                    penultimate = current_max;
                    current_max = timestamp;
                    let time = round2(
                        f64::from(token - timestamp_begin) * precision
                            + time_offset
                            + previous_segments,
                    );
                    if last_timestamp.is_some_and(|last| token >= last) {
                        skip = true;
                    } else if skip || (!previous.is_empty() && f64::from(token) < first_timestamp) {
                        skip = false;
                    } else if chunk.start.is_none() {
                        chunk.start = Some(time);
                    } else if Some(time) != chunk.start {
                        chunk.end = Some(time);
                        previous.push(std::mem::take(&mut current));
                        chunk.text = self.tokenizer.decode(&longest_common_sequence(&previous))?;
                        chunks.push(std::mem::replace(&mut chunk, Segment::new(last_language)));
                        previous.clear();
                    }
                } else {
                    current.push(token);
                }
            }
            if let Some((chunk_len, _, stride_right)) = window.stride {
                time_offset += chunk_len - stride_right;
            }
            if !current.is_empty() {
                previous.push(current);
            } else if !previous.iter().any(|p| !p.is_empty()) {
                chunk = Segment::new(last_language);
                previous.clear();
            }
        }
        if !previous.is_empty() {
            chunk.text = self.tokenizer.decode(&longest_common_sequence(&previous))?;
            chunks.push(chunk);
        }
        let text: String = chunks.iter().map(|c| c.text.as_str()).collect();
        let chunks = timestamps.then(|| {
            Value::Array(
                chunks
                    .into_iter()
                    .map(|c| json!({"text": c.text, "timestamp": [c.start, c.end]}))
                    .collect(),
            )
        });
        Ok(Transcript { text, chunks })
    }

    /// `_strip_prompt`: tokens that start with `<|startofprev|>` keep only
    /// what follows the start token (nothing without one).
    fn strip_prompt<'t>(&self, tokens: &'t [u32]) -> &'t [u32] {
        match (tokens.first(), self.tokenizer.start_of_prev) {
            (Some(first), Some(prev)) if *first == prev => tokens
                .iter()
                .position(|&t| t == self.decoder_start)
                .map_or(&[][..], |i| &tokens[i..]),
            _ => tokens,
        }
    }
}

/// Frames of features per encoder position (Whisper's two convolutions'
/// strides).
const INPUT_STRIDE: usize = 2;

/// `_retrieve_segment` on one pass's tokens: with timestamp pairs, the
/// tokens up to the last complete segment and the frames to advance (to the
/// pair's first timestamp, or the whole rest after a single final
/// timestamp); without, all of them and the whole rest (`rest` frames).
fn complete_segments(sequence: &[u32], timestamp_begin: u32, rest: usize) -> (&[u32], usize) {
    let is_timestamp: Vec<bool> = sequence.iter().map(|&t| t >= timestamp_begin).collect();
    let n = sequence.len();
    let single_ending = n >= 2 && !is_timestamp[n - 2] && is_timestamp[n - 1];
    let Some(last_pair) = (1..n)
        .rev()
        .find(|&i| is_timestamp[i - 1] && is_timestamp[i])
    else {
        return (sequence, rest);
    };
    if single_ending {
        return (sequence, rest);
    }
    let end = last_pair + 1;
    let position = (sequence[end - 2] - timestamp_begin) as usize;
    (&sequence[..end], position * INPUT_STRIDE)
}

/// One segment of `_decode_asr`.
#[derive(Debug, Clone, Default)]
struct Segment {
    language: Option<&'static str>,
    start: Option<f64>,
    end: Option<f64>,
    text: String,
}

impl Segment {
    fn new(language: Option<&'static str>) -> Self {
        Self {
            language,
            ..Self::default()
        }
    }
}

/// Python's `round(x, 2)`: the nearest multiple of 0.01 by the exact value.
fn round2(x: f64) -> f64 {
    format!("{x:.2}").parse().unwrap_or(x)
}

/// `_find_longest_common_sequence` of transformers' Whisper tokenizer: each
/// sequence joined to the merged ones at the best-matching overlap (most
/// matching tokens for its length, longer overlaps winning ties), the
/// left sequence trusted for the first half of the overlap and the right
/// one for the second.
pub fn longest_common_sequence(sequences: &[Vec<u32>]) -> Vec<u32> {
    let Some((first, rest)) = sequences.split_first() else {
        return Vec::new();
    };
    let mut left_sequence: &[u32] = first;
    let mut total = Vec::new();
    for right_sequence in rest {
        let (left_length, right_length) = (left_sequence.len(), right_sequence.len());
        let mut best = 0.0;
        let mut best_indices = (left_length, left_length, 0, 0);
        for i in 1..left_length + right_length {
            let eps = i as f64 / 10000.0;
            let left_start = left_length.saturating_sub(i);
            let left_stop = left_length.min(left_length + right_length - i);
            let right_start = i.saturating_sub(left_length);
            let right_stop = right_length.min(i);
            let left = &left_sequence[left_start..left_stop];
            let right = &right_sequence[right_start..right_stop];
            let matches = left.iter().zip(right).filter(|(a, b)| a == b).count();
            let matching = matches as f64 / i as f64 + eps;
            if matches > 1 && matching > best {
                best = matching;
                best_indices = (left_start, left_stop, right_start, right_stop);
            }
        }
        let (left_start, left_stop, right_start, right_stop) = best_indices;
        let left_mid = (left_stop + left_start) / 2;
        let right_mid = (right_stop + right_start) / 2;
        total.extend_from_slice(&left_sequence[..left_mid]);
        left_sequence = &right_sequence[right_mid.min(right_length)..];
    }
    total.extend_from_slice(left_sequence);
    total
}

pub use crate::speech::Chunking;

/// A request's options: `return_timestamps` (top level, as the pipeline
/// takes it), `language` and `task` (top level or in `generate_kwargs` /
/// `generation_parameters`), and the generation settings the captioners
/// take (`max_new_tokens`, `num_beams`, `early_stopping`).
fn request_options(
    pipeline: &WhisperPipeline,
    args: &ResolvedArgs,
) -> std::result::Result<Options, LocalError> {
    let task = TaskKind::AutomaticSpeechRecognition;
    let mut options = pipeline.default_options();
    let mut rest = args.clone();
    let mut own: BTreeMap<&str, Value> = BTreeMap::new();
    for key in ["language", "task"] {
        if let Some(value) = rest.other.remove(key).filter(|v| !v.is_null()) {
            own.insert(key, value);
        }
    }
    for name in ["generate_kwargs", "generation_parameters"] {
        if let Some(Value::Object(parameters)) = rest.other.get_mut(name) {
            for key in ["language", "task"] {
                if let Some(value) = parameters.remove(key).filter(|v| !v.is_null()) {
                    own.insert(key, value);
                }
            }
        }
    }
    for key in ["chunk_length_s", "stride_length_s", "return_timestamps"] {
        rest.other.remove(key);
    }
    options.generation = crate::vision::generation_for(task, &rest, &pipeline.generation)?;
    let text = |key: &str, value: &Value| {
        value
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| bad_input(task, format!("{key} must be a string, not {value}")))
    };
    if let Some(value) = own.get("language") {
        options.language = Some(text("language", value)?);
    }
    if let Some(value) = own.get("task") {
        options.task = Some(match text("task", value)?.as_str() {
            "transcribe" => WhisperTask::Transcribe,
            "translate" => WhisperTask::Translate,
            other => {
                return Err(bad_input(
                    task,
                    format!("task must be \"transcribe\" or \"translate\", not {other:?}"),
                ));
            }
        });
    }
    match args.other.get("return_timestamps") {
        None | Some(Value::Null) | Some(Value::Bool(false)) => {}
        Some(Value::Bool(true)) => options.timestamps = true,
        Some(Value::String(s)) if s == "word" => {
            return Err(LocalError::Unsupported(
                "hgpt's Whisper gives segment timestamps only (return_timestamps true), not word timestamps"
                    .into(),
            ));
        }
        Some(other) => {
            return Err(bad_input(
                task,
                format!("return_timestamps must be true or false, not {other}"),
            ));
        }
    }
    Ok(options)
}

impl Pipeline for WhisperPipeline {
    fn tasks(&self) -> &[TaskKind] {
        &[TaskKind::AutomaticSpeechRecognition]
    }

    fn run(
        &self,
        task: TaskKind,
        args: &ResolvedArgs,
    ) -> std::result::Result<InferenceOutput, LocalError> {
        if task != TaskKind::AutomaticSpeechRecognition {
            return Err(LocalError::Unsupported(format!(
                "Whisper does automatic-speech-recognition, not {task}"
            )));
        }
        let blob = args
            .audio
            .as_ref()
            .filter(|b| !b.bytes.is_empty())
            .ok_or_else(|| bad_input(task, "missing argument `audio`"))?;
        let options = request_options(self, args)?;
        let audio = audio::load(&blob.bytes, self.sampling_rate(), MAX_SECONDS)
            .map_err(|e| bad_input(task, e.to_string()))?;
        let window_seconds = self.extractor.chunk_length as f64;
        // Audio over one window is chunked by the window's length (where
        // transformers would run its sequential long-form decoding).
        let chunking = chunking(args, audio.seconds(), window_seconds, MAX_SECONDS)?;
        let transcript = self.transcribe(&audio.samples, &options, chunking)?;
        Ok(InferenceOutput::Transcription {
            text: transcript.text,
            chunks: transcript.chunks,
        })
    }

    fn weight_bytes(&self) -> u64 {
        self.weight_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlapping_sequences_merge_at_their_best_match() {
        // The overlap "3 4" is trusted to the left for its first half.
        assert_eq!(
            longest_common_sequence(&[vec![1, 2, 3, 4], vec![3, 4, 5, 6]]),
            [1, 2, 3, 4, 5, 6]
        );
        // No overlap of two matching tokens: concatenated.
        assert_eq!(
            longest_common_sequence(&[vec![1, 2], vec![3, 4], vec![]]),
            [1, 2, 3, 4]
        );
        assert!(longest_common_sequence(&[]).is_empty());
    }

    #[test]
    fn the_slaney_scale_round_trips_and_filters_are_triangles() {
        for hz in [0.0, 440.0, 1000.0, 4000.0, 8000.0] {
            assert!((mel_to_hertz(hertz_to_mel(hz)) - hz).abs() < 1e-9);
        }
        let extractor = LogMel::new(80, 16_000, 160, 30, 400).unwrap();
        assert_eq!((extractor.mels(), extractor.frames()), (80, 3000));
        assert!(extractor.filters.iter().all(|f| *f >= 0.0));
        assert!(LogMel::new(0, 16_000, 160, 30, 400).is_err());
        assert!(LogMel::new(80, 16_000, 160, 0, 400).is_err());
    }

    #[test]
    fn timestamps_come_in_pairs_and_never_go_back() {
        let rules = TimestampRules {
            no_timestamps: 5,
            timestamp_begin: 6,
            eos: 3,
            max_initial_timestamp_index: Some(1),
        };
        let vocab = 10;
        // First position: only timestamps up to the initial limit.
        let mut scores = vec![0.0; vocab];
        rules.apply(&[], &mut scores);
        let allowed: Vec<usize> = (0..vocab).filter(|&i| scores[i].is_finite()).collect();
        assert_eq!(allowed, [6, 7]);
        // After a text token then one timestamp: no text below the end
        // token, no earlier time.
        let mut scores = vec![0.0; vocab];
        scores[3] = 5.0;
        rules.apply(&[1, 8], &mut scores);
        let allowed: Vec<usize> = (0..vocab).filter(|&i| scores[i].is_finite()).collect();
        assert_eq!(allowed, [3, 4, 8, 9]);
        // Timestamps together more likely than any other token: only them.
        let mut scores = vec![0.0; vocab];
        rules.apply(&[1, 8], &mut scores);
        let allowed: Vec<usize> = (0..vocab).filter(|&i| scores[i].is_finite()).collect();
        assert_eq!(allowed, [8, 9]);
        // After a pair: text only (timestamps would repeat the pair).
        let mut scores = vec![0.0; vocab];
        scores[1] = 10.0;
        rules.apply(&[7, 8], &mut scores);
        assert!(scores[6..].iter().all(|s| s.is_infinite()));
        assert!(scores[1].is_finite());
    }
}
