//! Audio Spectrogram Transformer (`ASTForAudioClassification`, e.g.
//! `MIT/ast-finetuned-audioset-10-10-0.4593`): Kaldi-style log-mel filter
//! banks of the waveform, cut or padded to a fixed number of frames and
//! normalised with the dataset's mean and deviation, cut into overlapping
//! 16x16 patches, a ViT encoder with a class and a distillation token, and
//! a classifier on their average. The filter banks follow transformers'
//! `ASTFeatureExtractor` on its numpy path (the one it takes without
//! torchaudio): Hann-windowed 25 ms frames every 10 ms, DC offset removed,
//! pre-emphasis 0.97, a 512-point FFT, triangular filters on the Kaldi mel
//! scale, natural log.

use crate::audio;
use crate::error::{LocalError, bad_input};
use crate::files::{ModelFiles, WEIGHTS};
use crate::kernels::{Dense, Epilogue};
use crate::pipeline::Pipeline;
use crate::text::postprocess::{classification_args, ranked_labels};
use crate::vision::encoder::{Encoder, VitConfig, class_count, class_names};
use candle_core::{Device, Result, Tensor};
use candle_nn::{LayerNorm, VarBuilder, layer_norm};
use hgpt_core::backend::ResolvedArgs;
use hgpt_core::output::InferenceOutput;
use hgpt_core::task::TaskKind;
use rustfft::FftPlanner;
use rustfft::num_complex::Complex;
use serde::Deserialize;

const FRAME_LENGTH: usize = 400;
const HOP_LENGTH: usize = 160;
const FFT_LENGTH: usize = 512;
const PREEMPHASIS: f64 = 0.97;
const MEL_FLOOR: f64 = 1.192_092_955_078_125e-7;
const MAX_SECONDS: u32 = 600;

/// `preprocessor_config.json` of an `ASTFeatureExtractor`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
struct ExtractorConfig {
    sampling_rate: u32,
    num_mel_bins: usize,
    max_length: usize,
    do_normalize: bool,
    mean: f64,
    std: f64,
}

impl Default for ExtractorConfig {
    fn default() -> Self {
        Self {
            sampling_rate: 16_000,
            num_mel_bins: 128,
            max_length: 1024,
            do_normalize: true,
            mean: -4.267_739_3,
            std: 4.568_997_4,
        }
    }
}

/// The AST-specific parts of `config.json` (the encoder's come from
/// [`VitConfig`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
struct AstShape {
    frequency_stride: usize,
    time_stride: usize,
    max_length: usize,
    num_mel_bins: usize,
}

impl Default for AstShape {
    fn default() -> Self {
        Self {
            frequency_stride: 10,
            time_stride: 10,
            max_length: 1024,
            num_mel_bins: 128,
        }
    }
}

/// Log-mel filter banks as `ASTFeatureExtractor` computes them.
#[derive(Debug, Clone)]
pub struct FilterBank {
    window: Vec<f64>,
    /// `[frequency bin][mel bin]`.
    filters: Vec<Vec<f64>>,
    mel_bins: usize,
}

fn hertz_to_kaldi_mel(hz: f64) -> f64 {
    1127.0 * (1.0 + hz / 700.0).ln()
}

impl FilterBank {
    /// Filters for `mel_bins` bands from 20 Hz to half the sampling rate.
    pub fn new(mel_bins: usize, sampling_rate: u32) -> Self {
        let bins = FFT_LENGTH / 2 + 1;
        // numpy's symmetric Hann window (`periodic=False`).
        let window = (0..FRAME_LENGTH)
            .map(|i| {
                0.5 - 0.5
                    * (2.0 * std::f64::consts::PI * i as f64 / (FRAME_LENGTH - 1) as f64).cos()
            })
            .collect();
        let mel_min = hertz_to_kaldi_mel(20.0);
        let mel_max = hertz_to_kaldi_mel(f64::from(sampling_rate / 2));
        let points = mel_bins + 2;
        // np.linspace
        let step = (mel_max - mel_min) / (points - 1) as f64;
        let mel_points: Vec<f64> = (0..points)
            .map(|i| {
                if i == points - 1 {
                    mel_max
                } else {
                    mel_min + i as f64 * step
                }
            })
            .collect();
        let bin_width = f64::from(sampling_rate) / ((bins - 1) * 2) as f64;
        let filters = (0..bins)
            .map(|bin| {
                let mel = hertz_to_kaldi_mel(bin_width * bin as f64);
                (0..mel_bins)
                    .map(|m| {
                        let down = -(mel_points[m] - mel) / (mel_points[m + 1] - mel_points[m]);
                        let up =
                            (mel_points[m + 2] - mel) / (mel_points[m + 2] - mel_points[m + 1]);
                        down.min(up).max(0.0)
                    })
                    .collect()
            })
            .collect();
        Self {
            window,
            filters,
            mel_bins,
        }
    }

    /// `[frames][mel bins]` log filter-bank energies of mono samples.
    pub fn compute(&self, samples: &[f32]) -> Vec<Vec<f32>> {
        if samples.len() < FRAME_LENGTH {
            return Vec::new();
        }
        let frames = 1 + (samples.len() - FRAME_LENGTH) / HOP_LENGTH;
        let fft = FftPlanner::<f64>::new().plan_fft_forward(FFT_LENGTH);
        let mut buffer = vec![Complex::new(0.0, 0.0); FFT_LENGTH];
        let mut frame = vec![0f64; FRAME_LENGTH];
        let mut power = vec![0f64; FFT_LENGTH / 2 + 1];
        (0..frames)
            .map(|f| {
                let start = f * HOP_LENGTH;
                for (x, &s) in frame.iter_mut().zip(&samples[start..start + FRAME_LENGTH]) {
                    *x = f64::from(s);
                }
                let mean = frame.iter().sum::<f64>() / FRAME_LENGTH as f64;
                frame.iter_mut().for_each(|x| *x -= mean);
                for i in (1..FRAME_LENGTH).rev() {
                    frame[i] -= PREEMPHASIS * frame[i - 1];
                }
                frame[0] *= 1.0 - PREEMPHASIS;
                for (i, slot) in buffer.iter_mut().enumerate() {
                    let value = if i < FRAME_LENGTH {
                        frame[i] * self.window[i]
                    } else {
                        0.0
                    };
                    *slot = Complex::new(value, 0.0);
                }
                fft.process(&mut buffer);
                for (p, c) in power.iter_mut().zip(&buffer) {
                    // numpy keeps the spectrum as complex64 before the power.
                    let (re, im) = (f64::from(c.re as f32), f64::from(c.im as f32));
                    *p = re.hypot(im).powi(2);
                }
                (0..self.mel_bins)
                    .map(|m| {
                        let energy: f64 = power
                            .iter()
                            .zip(&self.filters)
                            .map(|(p, row)| p * row[m])
                            .sum();
                        energy.max(MEL_FLOOR).ln() as f32
                    })
                    .collect()
            })
            .collect()
    }
}

/// The model: patch embedding, tokens, encoder, final norm, classifier.
#[derive(Debug, Clone)]
struct AstModel {
    patch_weight: Tensor,
    patch_bias: Tensor,
    cls_token: Tensor,
    distillation_token: Tensor,
    position_embeddings: Tensor,
    encoder: Encoder,
    layernorm: LayerNorm,
    head_norm: LayerNorm,
    classifier: Dense,
    frequency_stride: usize,
}

impl AstModel {
    fn load(cfg: &VitConfig, shape: &AstShape, labels: usize, vb: VarBuilder) -> Result<Self> {
        let hidden = cfg.hidden_size;
        let heads = cfg.num_attention_heads;
        if heads == 0 || !hidden.is_multiple_of(heads) {
            candle_core::bail!("hidden_size {hidden} is not a multiple of {heads} heads");
        }
        let patch = cfg.patch_size;
        if patch == 0 || shape.frequency_stride == 0 || shape.time_stride == 0 {
            candle_core::bail!("patch_size and the strides must be positive");
        }
        if shape.frequency_stride != shape.time_stride {
            candle_core::bail!(
                "frequency_stride {} differs from time_stride {}: not supported",
                shape.frequency_stride,
                shape.time_stride
            );
        }
        if shape.num_mel_bins < patch || shape.max_length < patch {
            candle_core::bail!("a patch is larger than the spectrogram");
        }
        let rows = (shape.num_mel_bins - patch) / shape.frequency_stride + 1;
        let cols = (shape.max_length - patch) / shape.time_stride + 1;
        let base = vb.pp("audio_spectrogram_transformer");
        let emb = base.pp("embeddings");
        let projection = emb.pp("patch_embeddings").pp("projection");
        Ok(Self {
            patch_weight: projection.get((hidden, 1, patch, patch), "weight")?,
            patch_bias: projection.get(hidden, "bias")?,
            cls_token: emb.get((1, 1, hidden), "cls_token")?,
            distillation_token: emb.get((1, 1, hidden), "distillation_token")?,
            position_embeddings: emb.get(
                (
                    1,
                    rows.checked_mul(cols)
                        .and_then(|n| n.checked_add(2))
                        .ok_or_else(|| candle_core::Error::Msg("too many patches".into()))?,
                    hidden,
                ),
                "position_embeddings",
            )?,
            encoder: Encoder::load(cfg, base.pp("encoder"))?,
            layernorm: layer_norm(hidden, cfg.layer_norm_eps, base.pp("layernorm"))?,
            head_norm: layer_norm(
                hidden,
                cfg.layer_norm_eps,
                vb.pp("classifier").pp("layernorm"),
            )?,
            classifier: Dense::load(hidden, labels, vb.pp("classifier").pp("dense"))?,
            frequency_stride: shape.frequency_stride,
        })
    }

    /// Class logits of normalised filter banks `[frames, mel bins]`.
    fn forward(&self, input: &Tensor) -> Result<Tensor> {
        // [frames, mel] -> [1, 1, mel, frames]
        let image = input.t()?.unsqueeze(0)?.unsqueeze(0)?.contiguous()?;
        let patches = image
            .conv2d(&self.patch_weight, 0, self.frequency_stride, 1, 1)?
            .broadcast_add(&self.patch_bias.reshape((1, (), 1, 1))?)?;
        let patches = patches.flatten_from(2)?.transpose(1, 2)?;
        let tokens = Tensor::cat(&[&self.cls_token, &self.distillation_token, &patches], 1)?
            .broadcast_add(&self.position_embeddings)?;
        let hidden = self
            .encoder
            .forward_with(&tokens, |_, h| Ok(h))?
            .apply(&self.layernorm)?;
        let pooled = ((hidden.narrow(1, 0, 1)? + hidden.narrow(1, 1, 1)?)? / 2.0)?;
        self.classifier
            .forward(&pooled.apply(&self.head_norm)?, Epilogue::Bias)?
            .flatten_all()
    }
}

/// A loaded AST classifier.
pub struct AstClassifier {
    model: AstModel,
    bank: FilterBank,
    extractor: ExtractorConfig,
    labels: Vec<String>,
    device: Device,
    weight_bytes: u64,
}

impl AstClassifier {
    /// Load from a model's files.
    pub fn load(files: &ModelFiles, device: &Device) -> std::result::Result<Self, LocalError> {
        files.require(&["config.json", "preprocessor_config.json", WEIGHTS])?;
        let cfg: VitConfig = files.json("config.json")?;
        let shape: AstShape = files.json("config.json")?;
        let extractor: ExtractorConfig = files.json("preprocessor_config.json")?;
        if extractor.num_mel_bins != shape.num_mel_bins || extractor.max_length != shape.max_length
        {
            return Err(files.load_error(format!(
                "preprocessor_config.json makes {}x{} filter banks but the model takes {}x{}",
                extractor.max_length, extractor.num_mel_bins, shape.max_length, shape.num_mel_bins
            )));
        }
        let labels = class_names(&cfg.id2label, class_count(&cfg.id2label));
        let weights = files.weights(device)?;
        let weight_bytes = weights.bytes;
        let model = AstModel::load(&cfg, &shape, labels.len(), weights.vb)
            .map_err(|e| files.load_error(format!("{}: {e}", weights.file)))?;
        Ok(Self {
            model,
            bank: FilterBank::new(extractor.num_mel_bins, extractor.sampling_rate),
            extractor,
            labels,
            device: device.clone(),
            weight_bytes,
        })
    }

    /// The model's input for mono samples at its rate: `[max_length][mel
    /// bins]` log filter banks, zero-padded or cut, normalised.
    pub fn input_values(&self, samples: &[f32]) -> Vec<Vec<f32>> {
        // Frames past `max_length` are cut anyway: do not compute them.
        let needed = (self.extractor.max_length.max(1) - 1) * HOP_LENGTH + FRAME_LENGTH;
        let mut bank = self.bank.compute(&samples[..samples.len().min(needed)]);
        bank.resize(
            self.extractor.max_length,
            vec![0.0; self.extractor.num_mel_bins],
        );
        if self.extractor.do_normalize {
            let (mean, scale) = (
                self.extractor.mean as f32,
                (self.extractor.std * 2.0) as f32,
            );
            for row in &mut bank {
                row.iter_mut().for_each(|v| *v = (*v - mean) / scale);
            }
        }
        bank
    }

    /// Class logits of mono samples at the model's rate.
    pub fn logits(&self, samples: &[f32]) -> std::result::Result<Vec<f32>, LocalError> {
        let input = self.input_values(samples);
        let flat: Vec<f32> = input.concat();
        let tensor = Tensor::from_vec(
            flat,
            (self.extractor.max_length, self.extractor.num_mel_bins),
            &self.device,
        )?;
        Ok(self.model.forward(&tensor)?.to_vec1()?)
    }
}

impl Pipeline for AstClassifier {
    fn tasks(&self) -> &[TaskKind] {
        &[TaskKind::AudioClassification]
    }

    fn run(
        &self,
        task: TaskKind,
        args: &ResolvedArgs,
    ) -> std::result::Result<InferenceOutput, LocalError> {
        if task != TaskKind::AudioClassification {
            return Err(LocalError::Unsupported(format!("AST does not do {task}")));
        }
        let blob = args
            .audio
            .as_ref()
            .filter(|b| !b.bytes.is_empty())
            .ok_or_else(|| bad_input(task, "missing argument `audio`"))?;
        let audio = audio::load(&blob.bytes, self.extractor.sampling_rate, MAX_SECONDS)
            .map_err(|e| bad_input(task, e.to_string()))?;
        if audio.samples.len() < FRAME_LENGTH {
            return Err(bad_input(task, "the audio is shorter than one 25 ms frame"));
        }
        let (top_k, function) = classification_args(task, args)?;
        let logits = self.logits(&audio.samples)?;
        let labelled = ranked_labels(&logits, &self.labels, top_k, function);
        Ok(InferenceOutput::Labels(labelled))
    }

    fn weight_bytes(&self) -> u64 {
        self.weight_bytes
    }
}
