//! VITS text-to-speech (`VitsModel`: `facebook/mms-tts-eng` and the other
//! MMS-TTS languages), as transformers 4.57's `VitsTokenizer`, `VitsModel`
//! and `text-to-speech` pipeline run it, answering with a 16-bit mono WAV at
//! the model's `sampling_rate`.
//!
//! VitsModel draws Gaussian noise for the duration predictor
//! (`noise_scale_duration`) and the prior (`noise_scale`). hgpt draws it from
//! its own generator seeded per request (the `seed` parameter, 0 by
//! default), so the same request gives the same speech; it cannot give
//! PyTorch's draws, so only with both noise scales at 0 is the waveform
//! PyTorch's. `speaking_rate`, `noise_scale` and `noise_scale_duration`
//! (VitsModel attributes, set from the config) default to the config's
//! values and can be set per request, as can `speaker_id` for multi-speaker
//! checkpoints (the Python pipeline's one forward parameter); each is read
//! from the request's arguments or from their `forward_params` object. The
//! model runs on the CPU whatever device the backend uses.

mod layers;
mod model;
mod tokenizer;

use crate::audio;
use crate::error::{LocalError, bad_input};
use crate::files::{ModelFiles, WEIGHTS};
use crate::noise::SeededNormal;
use crate::pipeline::Pipeline;
use candle_core::Device;
use hgpt_core::backend::ResolvedArgs;
use hgpt_core::output::{Blob, InferenceOutput};
use hgpt_core::task::TaskKind;
use model::{Synthesis, Vits, VitsConfig};
use serde_json::Value;
use tokenizer::{TextError, VitsTokenizer};

/// Longest text read, in characters.
pub const MAX_CHARACTERS: usize = 1000;
/// Longest speech made at once, in seconds.
pub const MAX_SECONDS: u32 = 60;
/// The noise seed when the request names none.
pub const DEFAULT_SEED: u64 = 0;

const TASK: TaskKind = TaskKind::TextToSpeech;

/// The per-request knobs of a synthesis.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SpeechParams {
    /// Faster (above 1) or slower speech: durations are divided by it.
    pub speaking_rate: f64,
    /// Scale of the prior's noise (0: the prior's means).
    pub noise_scale: f64,
    /// Scale of the duration predictor's noise (0: the likeliest durations).
    pub noise_scale_duration: f64,
    /// Seed of the noise.
    pub seed: u64,
    /// The speaker of a multi-speaker model (`None`: no speaker
    /// conditioning, as VitsModel without `speaker_id`).
    pub speaker_id: Option<usize>,
}

/// What a synthesis made.
#[derive(Debug, Clone, PartialEq)]
pub struct Speech {
    /// The waveform, in [-1, 1].
    pub waveform: Vec<f32>,
    /// Samples per second.
    pub sampling_rate: u32,
    /// Spectrogram frames per token.
    pub durations: Vec<u32>,
}

/// A loaded VITS checkpoint with its tokenizer.
pub struct VitsPipeline {
    model: Vits,
    tokenizer: VitsTokenizer,
    config: VitsConfig,
    weight_bytes: u64,
}

impl VitsPipeline {
    /// Load from a model's files (weights on the CPU, whatever `device`).
    pub fn load(files: &ModelFiles, _device: &Device) -> Result<Self, LocalError> {
        files.require(&[
            "config.json",
            "vocab.json",
            "tokenizer_config.json",
            WEIGHTS,
        ])?;
        let config: VitsConfig = files.json("config.json")?;
        config
            .check()
            .map_err(|e| files.load_error(format!("config.json: {e}")))?;
        let tokenizer = VitsTokenizer::load(files)?;
        let weights = files.weights(&Device::Cpu)?;
        let model = Vits::load(&config, weights.vb)
            .map_err(|e| files.load_error(format!("{}: {e}", weights.file)))?;
        Ok(Self {
            model,
            tokenizer,
            config,
            weight_bytes: weights.bytes,
        })
    }

    /// The model's defaults: the config's rate and noise scales, seed 0, no
    /// speaker.
    pub fn default_params(&self) -> SpeechParams {
        SpeechParams {
            speaking_rate: self.config.speaking_rate,
            noise_scale: self.config.noise_scale,
            noise_scale_duration: self.config.noise_scale_duration,
            seed: DEFAULT_SEED,
            speaker_id: None,
        }
    }

    /// The output sampling rate.
    pub fn sampling_rate(&self) -> u32 {
        self.config.sampling_rate
    }

    /// The number of speakers (1 for a single-speaker model).
    pub fn speakers(&self) -> usize {
        self.model.speakers()
    }

    /// The token ids of `text`, as `VitsTokenizer` gives them.
    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>, LocalError> {
        let length = text.chars().count();
        if length > MAX_CHARACTERS {
            return Err(bad_input(
                TASK,
                format!(
                    "the text is {length} characters long; hgpt speaks at most {MAX_CHARACTERS} \
                     at once: split it"
                ),
            ));
        }
        self.tokenizer.encode(text).map_err(|e| match e {
            TextError::NeedsUroman => LocalError::Unsupported(
                "this model reads romanised text (is_uroman) and the text has non-Latin \
                 characters: VitsTokenizer romanises them with the uroman package, which hgpt \
                 does not run; romanise the text first"
                    .into(),
            ),
            TextError::Empty => bad_input(
                TASK,
                "the text has no characters the model can speak (it reads only those in its \
                 vocab.json)",
            ),
            TextError::Unknown(token) => {
                bad_input(TASK, format!("{token:?} is not in the model's vocabulary"))
            }
        })
    }

    /// Speech for `text`.
    pub fn synthesize(&self, text: &str, params: &SpeechParams) -> Result<Speech, LocalError> {
        let ids = self.tokenize(text)?;
        self.check(params)?;
        let mut rng = SeededNormal::new(params.seed);
        let mut noise = || rng.sample();
        let mut run = Synthesis {
            speaking_rate: params.speaking_rate,
            noise_scale: params.noise_scale,
            noise_scale_duration: params.noise_scale_duration,
            speaker_id: params.speaker_id.filter(|_| self.speakers() > 1),
            noise: &mut noise,
        };
        let aligned = self.model.align(&ids, &mut run)?;
        let rate = u64::from(self.config.sampling_rate);
        let hop = self.config.hop() as u64;
        let limit = u64::from(MAX_SECONDS) * rate;
        let samples = aligned.frames().saturating_mul(hop);
        if samples > limit {
            return Err(bad_input(
                TASK,
                format!(
                    "the speech would last {:.0} s; hgpt makes at most {MAX_SECONDS} s at once: \
                     split the text",
                    samples as f64 / rate as f64
                ),
            ));
        }
        let waveform = self.model.render(&aligned, &mut run)?;
        Ok(Speech {
            waveform,
            sampling_rate: self.config.sampling_rate,
            durations: aligned.durations,
        })
    }

    /// Knobs in range, as VitsModel needs them.
    fn check(&self, params: &SpeechParams) -> Result<(), LocalError> {
        if !(params.speaking_rate.is_finite() && params.speaking_rate > 0.0) {
            return Err(bad_input(TASK, "speaking_rate must be a positive number"));
        }
        for (name, value) in [
            ("noise_scale", params.noise_scale),
            ("noise_scale_duration", params.noise_scale_duration),
        ] {
            if !(value.is_finite() && value >= 0.0) {
                return Err(bad_input(
                    TASK,
                    format!("{name} must be a non-negative number"),
                ));
            }
        }
        if let Some(id) = params.speaker_id
            && self.speakers() > 1
            && id >= self.speakers()
        {
            return Err(bad_input(
                TASK,
                format!("speaker_id must be in 0-{}", self.speakers() - 1),
            ));
        }
        Ok(())
    }

    /// The knobs a request sets over the model's defaults.
    pub fn params_from(&self, args: &ResolvedArgs) -> Result<SpeechParams, LocalError> {
        let mut params = self.default_params();
        let get = |name: &str| {
            args.other
                .get(name)
                .or_else(|| args.other.get("forward_params")?.get(name))
                .filter(|v| !v.is_null())
        };
        let number = |name: &str, value: &Value| {
            value
                .as_f64()
                .ok_or_else(|| bad_input(TASK, format!("{name} must be a number")))
        };
        let integer = |name: &str, value: &Value| {
            value
                .as_u64()
                .ok_or_else(|| bad_input(TASK, format!("{name} must be a non-negative integer")))
        };
        if let Some(v) = get("speaking_rate") {
            params.speaking_rate = number("speaking_rate", v)?;
        }
        if let Some(v) = get("noise_scale") {
            params.noise_scale = number("noise_scale", v)?;
        }
        if let Some(v) = get("noise_scale_duration") {
            params.noise_scale_duration = number("noise_scale_duration", v)?;
        }
        if let Some(v) = get("seed") {
            params.seed = integer("seed", v)?;
        }
        if let Some(v) = get("speaker_id") {
            let id = integer("speaker_id", v)?;
            params.speaker_id = Some(usize::try_from(id).unwrap_or(usize::MAX));
        }
        self.check(&params)?;
        Ok(params)
    }
}

impl Pipeline for VitsPipeline {
    fn tasks(&self) -> &[TaskKind] {
        &[TaskKind::TextToSpeech]
    }

    fn run(&self, task: TaskKind, args: &ResolvedArgs) -> Result<InferenceOutput, LocalError> {
        if task != TASK {
            return Err(LocalError::Unsupported(format!("VITS does not do {task}")));
        }
        let text = args
            .text
            .as_deref()
            .ok_or_else(|| bad_input(task, "missing argument `text`"))?;
        let params = self.params_from(args)?;
        let speech = self.synthesize(text, &params)?;
        let wav = audio::encode_wav(&speech.waveform, speech.sampling_rate)
            .map_err(|e| LocalError::Compute(e.to_string()))?;
        Ok(InferenceOutput::Media(Blob::sniffed(wav)))
    }

    fn weight_bytes(&self) -> u64 {
        self.weight_bytes
    }
}
