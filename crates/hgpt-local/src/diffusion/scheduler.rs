//! The noise schedulers of diffusers that Stable Diffusion repositories name
//! in `scheduler/scheduler_config.json`: `PNDMScheduler` (PLMS steps, SD
//! 1.5's default), `DDIMScheduler` (deterministic, `eta` 0) and
//! `EulerDiscreteScheduler` (sd-turbo's) and `EulerAncestralDiscreteScheduler`
//! (sdxl-turbo's, which adds fresh noise at each step), with diffusers' beta
//! schedules, timestep spacings and prediction types. Scalars are computed in
//! f32 as diffusers' float32 tensors hold them.

use candle_core::{Result, Tensor};
use serde::Deserialize;

/// The scheduler classes hgpt runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchedulerKind {
    /// `PNDMScheduler` (pseudo linear multistep; `skip_prk_steps` or not).
    Pndm,
    /// `DDIMScheduler` with `eta` 0.
    Ddim,
    /// `EulerDiscreteScheduler` without churn.
    Euler,
    /// `EulerAncestralDiscreteScheduler`: Euler to a lower sigma, then
    /// fresh noise back up to the next step's.
    EulerAncestral,
}

impl SchedulerKind {
    /// The class a `_class_name` names; `None` for classes hgpt does not run.
    pub fn from_class(class: &str) -> Option<Self> {
        match class {
            "PNDMScheduler" => Some(Self::Pndm),
            "DDIMScheduler" => Some(Self::Ddim),
            "EulerDiscreteScheduler" => Some(Self::Euler),
            "EulerAncestralDiscreteScheduler" => Some(Self::EulerAncestral),
            _ => None,
        }
    }

    /// Whether the scheduler works in sigmas (the Euler family) rather than
    /// in alphas.
    pub fn is_euler(self) -> bool {
        matches!(self, Self::Euler | Self::EulerAncestral)
    }
}

/// What the model predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PredictionType {
    /// The noise (SD 1.x, sd-turbo).
    Epsilon,
    /// The velocity (SD 2.x 768).
    VPrediction,
}

/// How inference timesteps are spread over the training ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimestepSpacing {
    /// Evenly from 0 to the last, rounded.
    Linspace,
    /// Multiples of the step ratio, plus `steps_offset`.
    Leading,
    /// Counted back from the last training timestep.
    Trailing,
}

/// `scheduler_config.json`. Fields left out take the class's defaults.
#[derive(Debug, Clone, Deserialize)]
pub struct SchedulerConfig {
    /// `_class_name`.
    #[serde(rename = "_class_name", default)]
    pub class_name: Option<String>,
    #[serde(default = "default_train_timesteps")]
    num_train_timesteps: usize,
    #[serde(default = "default_beta_start")]
    beta_start: f64,
    #[serde(default = "default_beta_end")]
    beta_end: f64,
    #[serde(default = "default_beta_schedule")]
    beta_schedule: String,
    #[serde(default)]
    trained_betas: Option<Vec<f32>>,
    #[serde(default = "default_prediction")]
    prediction_type: PredictionType,
    #[serde(default)]
    steps_offset: usize,
    #[serde(default)]
    set_alpha_to_one: Option<bool>,
    #[serde(default)]
    skip_prk_steps: bool,
    #[serde(default)]
    timestep_spacing: Option<TimestepSpacing>,
    #[serde(default)]
    clip_sample: Option<bool>,
    #[serde(default = "default_clip_range")]
    clip_sample_range: f32,
    #[serde(default)]
    thresholding: bool,
    #[serde(default)]
    rescale_betas_zero_snr: bool,
    #[serde(default)]
    interpolation_type: Option<String>,
    #[serde(default)]
    use_karras_sigmas: Option<bool>,
    #[serde(default)]
    use_exponential_sigmas: Option<bool>,
    #[serde(default)]
    use_beta_sigmas: Option<bool>,
    #[serde(default)]
    timestep_type: Option<String>,
    #[serde(default)]
    final_sigmas_type: Option<String>,
}

fn default_train_timesteps() -> usize {
    1000
}
fn default_beta_start() -> f64 {
    0.0001
}
fn default_beta_end() -> f64 {
    0.02
}
fn default_beta_schedule() -> String {
    "linear".into()
}
fn default_prediction() -> PredictionType {
    PredictionType::Epsilon
}
fn default_clip_range() -> f32 {
    1.0
}

impl SchedulerConfig {
    /// The prediction type the model was trained for.
    pub fn prediction_type(&self) -> PredictionType {
        self.prediction_type
    }

    /// The timestep spacing, the class's default when not given.
    pub fn spacing(&self, kind: SchedulerKind) -> TimestepSpacing {
        self.timestep_spacing.unwrap_or(match kind {
            SchedulerKind::Pndm | SchedulerKind::Ddim => TimestepSpacing::Leading,
            SchedulerKind::Euler | SchedulerKind::EulerAncestral => TimestepSpacing::Linspace,
        })
    }

    /// The training betas as diffusers computes them (float32).
    fn betas(&self) -> std::result::Result<Vec<f32>, String> {
        let n = self.num_train_timesteps;
        if let Some(betas) = &self.trained_betas {
            if betas.len() != n {
                return Err(format!(
                    "trained_betas has {} values for {n} timesteps",
                    betas.len()
                ));
            }
            return Ok(betas.clone());
        }
        let (start, end) = (self.beta_start as f32, self.beta_end as f32);
        match self.beta_schedule.as_str() {
            "linear" => Ok(linspace_f32(start, end, n)),
            "scaled_linear" => Ok(linspace_f32(start.sqrt(), end.sqrt(), n)
                .into_iter()
                .map(|b| b * b)
                .collect()),
            "squaredcos_cap_v2" => Ok(cosine_betas(n)),
            other => Err(format!("beta_schedule {other:?} is not one hgpt runs")),
        }
    }

    /// Refuse options this implementation does not follow.
    fn check(&self, kind: SchedulerKind) -> std::result::Result<(), String> {
        if self.steps_offset >= self.num_train_timesteps {
            return Err(format!(
                "steps_offset {} is not below num_train_timesteps {}",
                self.steps_offset, self.num_train_timesteps
            ));
        }
        if self.num_train_timesteps < 2 || self.num_train_timesteps > 100_000 {
            return Err(format!(
                "num_train_timesteps {} is out of range",
                self.num_train_timesteps
            ));
        }
        let unsupported = |what: &str| Err(format!("{what} is not supported"));
        if self.rescale_betas_zero_snr {
            return unsupported("rescale_betas_zero_snr");
        }
        if kind == SchedulerKind::Ddim && self.thresholding {
            return unsupported("thresholding");
        }
        if kind == SchedulerKind::Euler {
            if self.interpolation_type.as_deref().unwrap_or("linear") != "linear" {
                return unsupported("an interpolation_type other than linear");
            }
            for (flag, name) in [
                (self.use_karras_sigmas, "use_karras_sigmas"),
                (self.use_exponential_sigmas, "use_exponential_sigmas"),
                (self.use_beta_sigmas, "use_beta_sigmas"),
            ] {
                if flag == Some(true) {
                    return unsupported(name);
                }
            }
            if self.timestep_type.as_deref().unwrap_or("discrete") != "discrete" {
                return unsupported("a continuous timestep_type");
            }
            if !matches!(
                self.final_sigmas_type.as_deref().unwrap_or("zero"),
                "zero" | "sigma_min"
            ) {
                return unsupported("this final_sigmas_type");
            }
        }
        Ok(())
    }
}

/// `torch.linspace(start, end, n, dtype=float32)`: from both ends, as
/// PyTorch's CPU kernel fills it.
fn linspace_f32(start: f32, end: f32, n: usize) -> Vec<f32> {
    if n == 1 {
        return vec![start];
    }
    let step = (end - start) / (n - 1) as f32;
    (0..n)
        .map(|i| {
            if i < n / 2 {
                start + step * i as f32
            } else {
                end - step * (n - 1 - i) as f32
            }
        })
        .collect()
}

/// `betas_for_alpha_bar` with the cosine transform (`squaredcos_cap_v2`).
fn cosine_betas(n: usize) -> Vec<f32> {
    let alpha_bar = |t: f64| {
        ((t + 0.008) / 1.008 * std::f64::consts::PI / 2.0)
            .cos()
            .powi(2)
    };
    (0..n)
        .map(|i| {
            let (t1, t2) = (i as f64 / n as f64, (i + 1) as f64 / n as f64);
            (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(0.999) as f32
        })
        .collect()
}

/// `numpy.round` (half to even).
fn round_half_even(x: f64) -> f64 {
    let r = x.round();
    if (x - x.trunc()).abs() == 0.5 && r % 2.0 != 0.0 {
        r - x.signum()
    } else {
        r
    }
}

/// A scheduler set for one run of `num_inference_steps`.
#[derive(Debug)]
pub struct Scheduler {
    kind: SchedulerKind,
    prediction: PredictionType,
    alphas_cumprod: Vec<f32>,
    final_alpha_cumprod: f32,
    num_train_timesteps: usize,
    num_inference_steps: usize,
    timesteps: Vec<f64>,
    /// Euler: one sigma per timestep, then the final one.
    sigmas: Vec<f32>,
    clip_sample: Option<f32>,
    pndm: PndmState,
}

/// PNDM's running state (`ets`, `counter`, `cur_sample`).
#[derive(Debug, Default)]
struct PndmState {
    ets: Vec<Tensor>,
    counter: usize,
    cur_sample: Option<Tensor>,
    cur_model_output: Option<Tensor>,
    prk_steps: usize,
}

impl Scheduler {
    /// A scheduler of `kind` set for `steps` inference steps.
    pub fn new(
        kind: SchedulerKind,
        config: &SchedulerConfig,
        steps: usize,
    ) -> std::result::Result<Self, String> {
        config.check(kind)?;
        let n = config.num_train_timesteps;
        if steps == 0 || steps > n {
            return Err(format!(
                "num_inference_steps must be between 1 and {n}, not {steps}"
            ));
        }
        let betas = config.betas()?;
        let mut alphas_cumprod = Vec::with_capacity(n);
        let mut product = 1.0f32;
        for beta in betas {
            product *= 1.0 - beta;
            alphas_cumprod.push(product);
        }
        let set_alpha_to_one = config
            .set_alpha_to_one
            .unwrap_or(kind == SchedulerKind::Ddim);
        let final_alpha_cumprod = if set_alpha_to_one {
            1.0
        } else {
            alphas_cumprod[0]
        };
        let spacing = config.spacing(kind);
        let ascending = spaced_timesteps(spacing, n, steps, config.steps_offset, !kind.is_euler());
        let mut scheduler = Self {
            kind,
            prediction: config.prediction_type,
            alphas_cumprod,
            final_alpha_cumprod,
            num_train_timesteps: n,
            num_inference_steps: steps,
            timesteps: Vec::new(),
            sigmas: Vec::new(),
            clip_sample: (kind == SchedulerKind::Ddim && config.clip_sample.unwrap_or(true))
                .then_some(config.clip_sample_range),
            pndm: PndmState::default(),
        };
        match kind {
            SchedulerKind::Pndm => {
                scheduler.timesteps =
                    pndm_timesteps(&ascending, n, steps, config.skip_prk_steps, &mut scheduler);
            }
            SchedulerKind::Ddim => {
                scheduler.timesteps = ascending.iter().rev().copied().collect();
            }
            SchedulerKind::Euler | SchedulerKind::EulerAncestral => {
                let timesteps: Vec<f64> = ascending.iter().rev().copied().collect();
                let train_sigmas: Vec<f32> = scheduler
                    .alphas_cumprod
                    .iter()
                    .map(|&a| ((1.0 - a) / a).sqrt())
                    .collect();
                let mut sigmas: Vec<f32> = timesteps
                    .iter()
                    .map(|&t| interpolate(&train_sigmas, t) as f32)
                    .collect();
                sigmas.push(match config.final_sigmas_type.as_deref() {
                    Some("sigma_min") if kind == SchedulerKind::Euler => train_sigmas[0],
                    _ => 0.0,
                });
                scheduler.timesteps = timesteps;
                scheduler.sigmas = sigmas;
            }
        }
        if scheduler
            .timesteps
            .iter()
            .any(|&t| t < 0.0 || t >= n as f64)
        {
            return Err(format!(
                "steps_offset {} puts timesteps outside the {n} training ones",
                config.steps_offset
            ));
        }
        Ok(scheduler)
    }

    /// The timesteps to run, in order (PNDM with `skip_prk_steps` repeats
    /// one: a run of `n` steps evaluates the model `n + 1` times).
    pub fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    /// The scale of the initial noise (`init_noise_sigma`).
    pub fn init_noise_sigma(&self, spacing: TimestepSpacing) -> f64 {
        match self.kind {
            SchedulerKind::Pndm | SchedulerKind::Ddim => 1.0,
            SchedulerKind::Euler | SchedulerKind::EulerAncestral => {
                let max = self.sigmas.iter().copied().fold(0.0f32, f32::max);
                match spacing {
                    TimestepSpacing::Linspace | TimestepSpacing::Trailing => max as f64,
                    TimestepSpacing::Leading => (max * max + 1.0).sqrt() as f64,
                }
            }
        }
    }

    /// The model input at step `index` (`scale_model_input`).
    pub fn scale_model_input(&self, sample: &Tensor, index: usize) -> Result<Tensor> {
        if self.kind.is_euler() {
            let sigma = self.sigma(index)?;
            sample / ((sigma * sigma + 1.0).sqrt() as f64)
        } else {
            Ok(sample.clone())
        }
    }

    /// `add_noise`: the original samples noised to the level of step
    /// `index` (image-to-image's start).
    pub fn add_noise(&self, original: &Tensor, noise: &Tensor, index: usize) -> Result<Tensor> {
        if self.kind.is_euler() {
            original + (noise * self.sigma(index)? as f64)?
        } else {
            let alpha = self.alpha_at(self.timestep_at(index)? as i64)?;
            (original * alpha.sqrt() as f64)? + (noise * (1.0 - alpha).sqrt() as f64)?
        }
    }

    /// Whether [`Scheduler::step`] draws fresh noise (a standard normal
    /// tensor shaped like the sample) at each step.
    pub fn adds_noise_each_step(&self) -> bool {
        self.kind == SchedulerKind::EulerAncestral
    }

    /// One denoising step at step `index`: the sample of the next step.
    /// `noise` is the step's fresh noise, needed when
    /// [`Scheduler::adds_noise_each_step`].
    pub fn step(
        &mut self,
        index: usize,
        model_output: &Tensor,
        sample: &Tensor,
        noise: Option<&Tensor>,
    ) -> Result<Tensor> {
        let timestep = self.timestep_at(index)?;
        match self.kind {
            SchedulerKind::Pndm => self.pndm_step(timestep as i64, model_output, sample),
            SchedulerKind::Ddim => self.ddim_step(timestep as i64, model_output, sample),
            SchedulerKind::Euler => self.euler_step(index, model_output, sample),
            SchedulerKind::EulerAncestral => {
                let noise = noise.ok_or_else(|| {
                    candle_core::Error::Msg(
                        "the Euler ancestral scheduler needs noise at each step".into(),
                    )
                })?;
                self.euler_ancestral_step(index, model_output, sample, noise)
            }
        }
    }

    fn timestep_at(&self, index: usize) -> Result<f64> {
        self.timesteps
            .get(index)
            .copied()
            .ok_or_else(|| candle_core::Error::Msg(format!("no scheduler step {index}")))
    }

    fn sigma(&self, index: usize) -> Result<f32> {
        self.sigmas
            .get(index)
            .copied()
            .ok_or_else(|| candle_core::Error::Msg(format!("no scheduler sigma {index}")))
    }

    /// `alphas_cumprod[t]`, or the final one for `t < 0`.
    fn alpha_at(&self, t: i64) -> Result<f32> {
        if t < 0 {
            return Ok(self.final_alpha_cumprod);
        }
        self.alphas_cumprod
            .get(t as usize)
            .copied()
            .ok_or_else(|| candle_core::Error::Msg(format!("timestep {t} is out of range")))
    }

    fn stride(&self) -> i64 {
        (self.num_train_timesteps / self.num_inference_steps) as i64
    }

    fn ddim_step(&self, t: i64, model_output: &Tensor, sample: &Tensor) -> Result<Tensor> {
        let prev_t = t - self.stride();
        let alpha_t = self.alpha_at(t)?;
        let alpha_prev = self.alpha_at(prev_t)?;
        let beta_t = 1.0 - alpha_t;
        let (mut original, epsilon) = match self.prediction {
            PredictionType::Epsilon => (
                ((sample - (model_output * beta_t.sqrt() as f64)?)? / alpha_t.sqrt() as f64)?,
                model_output.clone(),
            ),
            PredictionType::VPrediction => (
                ((sample * alpha_t.sqrt() as f64)? - (model_output * beta_t.sqrt() as f64)?)?,
                ((model_output * alpha_t.sqrt() as f64)? + (sample * beta_t.sqrt() as f64)?)?,
            ),
        };
        if let Some(range) = self.clip_sample {
            original = original.clamp(-range, range)?;
        }
        let direction = (epsilon * (1.0 - alpha_prev).sqrt() as f64)?;
        (original * alpha_prev.sqrt() as f64)? + direction
    }

    fn pndm_step(&mut self, t: i64, model_output: &Tensor, sample: &Tensor) -> Result<Tensor> {
        if self.pndm.counter < self.pndm.prk_steps {
            return self.pndm_prk_step(t, model_output, sample);
        }
        let stride = self.stride();
        let state = &mut self.pndm;
        let (mut t, mut prev_t) = (t, t - stride);
        if state.counter != 1 {
            let keep = state.ets.len().saturating_sub(3);
            state.ets.drain(..keep);
            state.ets.push(model_output.clone());
        } else {
            prev_t = t;
            t += stride;
        }
        let ets = &state.ets;
        let last = |k: usize| -> Result<&Tensor> {
            ets.get(ets.len().wrapping_sub(k))
                .ok_or_else(|| candle_core::Error::Msg("PNDM has no history".into()))
        };
        let mut sample = sample.clone();
        let output = match (ets.len(), state.counter) {
            (1, 0) => {
                state.cur_sample = Some(sample.clone());
                model_output.clone()
            }
            (1, 1) => {
                let averaged = ((model_output + last(1)?)? / 2.0)?;
                if let Some(cur) = state.cur_sample.take() {
                    sample = cur;
                }
                averaged
            }
            (2, _) => (((last(1)? * 3.0)? - last(2)?)? / 2.0)?,
            (3, _) => ((((last(1)? * 23.0)? - (last(2)? * 16.0)?)? + (last(3)? * 5.0)?)? / 12.0)?,
            _ => {
                let sum = ((((last(1)? * 55.0)? - (last(2)? * 59.0)?)? + (last(3)? * 37.0)?)?
                    - (last(4)? * 9.0)?)?;
                (sum * (1.0 / 24.0))?
            }
        };
        state.counter += 1;
        self.pndm_prev_sample(&sample, t, prev_t, &output)
    }

    /// The Runge-Kutta warm-up steps PNDM runs when `skip_prk_steps` is
    /// false.
    fn pndm_prk_step(&mut self, t: i64, model_output: &Tensor, sample: &Tensor) -> Result<Tensor> {
        let half = self.stride() / 2;
        let state = &mut self.pndm;
        let diff_to_prev = if state.counter % 2 == 1 { 0 } else { half };
        let prev_t = t - diff_to_prev;
        let t = self
            .timesteps
            .get(state.counter / 4 * 4)
            .copied()
            .unwrap_or_default() as i64;
        let accumulate = |acc: &Option<Tensor>, weight: f64| -> Result<Tensor> {
            let term = (model_output * weight)?;
            match acc {
                Some(acc) => acc + term,
                None => Ok(term),
            }
        };
        let output = match state.counter % 4 {
            0 => {
                state.cur_model_output = Some(accumulate(&None, 1.0 / 6.0)?);
                state.ets.push(model_output.clone());
                state.cur_sample = Some(sample.clone());
                model_output.clone()
            }
            1 | 2 => {
                state.cur_model_output = Some(accumulate(&state.cur_model_output, 1.0 / 3.0)?);
                model_output.clone()
            }
            _ => {
                let total = accumulate(&state.cur_model_output, 1.0 / 6.0)?;
                state.cur_model_output = None;
                total
            }
        };
        let cur_sample = state.cur_sample.clone().unwrap_or_else(|| sample.clone());
        state.counter += 1;
        self.pndm_prev_sample(&cur_sample, t, prev_t, &output)
    }

    /// PNDM's `_get_prev_sample` (formula 9 of the paper).
    fn pndm_prev_sample(
        &self,
        sample: &Tensor,
        t: i64,
        prev_t: i64,
        model_output: &Tensor,
    ) -> Result<Tensor> {
        let alpha_t = self.alpha_at(t)?;
        let alpha_prev = self.alpha_at(prev_t)?;
        let beta_t = 1.0 - alpha_t;
        let beta_prev = 1.0 - alpha_prev;
        let model_output = match self.prediction {
            PredictionType::Epsilon => model_output.clone(),
            PredictionType::VPrediction => {
                ((model_output * alpha_t.sqrt() as f64)? + (sample * beta_t.sqrt() as f64)?)?
            }
        };
        let sample_coeff = (alpha_prev / alpha_t).sqrt();
        let denominator = alpha_t * beta_prev.sqrt() + (alpha_t * beta_t * alpha_prev).sqrt();
        let correction = ((model_output * (alpha_prev - alpha_t) as f64)? / denominator as f64)?;
        (sample * sample_coeff as f64)? - correction
    }

    fn euler_step(&self, index: usize, model_output: &Tensor, sample: &Tensor) -> Result<Tensor> {
        let sigma = self.sigma(index)?;
        let next = self.sigma(index + 1)?;
        let derivative = self.euler_derivative(sigma, model_output, sample)?;
        sample + (derivative * (next - sigma) as f64)?
    }

    /// `(sample - predicted original) / sigma`, the ODE's derivative.
    fn euler_derivative(
        &self,
        sigma: f32,
        model_output: &Tensor,
        sample: &Tensor,
    ) -> Result<Tensor> {
        let original = match self.prediction {
            PredictionType::Epsilon => (sample - (model_output * sigma as f64)?)?,
            PredictionType::VPrediction => {
                let scale = sigma * sigma + 1.0;
                ((model_output * (-sigma / scale.sqrt()) as f64)? + (sample / scale as f64)?)?
            }
        };
        (sample - original)? / sigma as f64
    }

    /// An Euler step down to `sigma_down`, then `noise` scaled to
    /// `sigma_up`: together the next step's noise level.
    fn euler_ancestral_step(
        &self,
        index: usize,
        model_output: &Tensor,
        sample: &Tensor,
        noise: &Tensor,
    ) -> Result<Tensor> {
        let sigma = self.sigma(index)?;
        let next = self.sigma(index + 1)?;
        let up = (next * next * (sigma * sigma - next * next) / (sigma * sigma)).sqrt();
        let down = (next * next - up * up).sqrt();
        let derivative = self.euler_derivative(sigma, model_output, sample)?;
        let stepped = (sample + (derivative * (down - sigma) as f64)?)?;
        stepped + (noise * up as f64)?
    }
}

/// The inference timesteps in ascending order, as `set_timesteps` spaces
/// them (before PNDM's reordering); `linspace` ones are rounded to integers
/// (PNDM, DDIM) or kept fractional (Euler, as float32).
fn spaced_timesteps(
    spacing: TimestepSpacing,
    n: usize,
    steps: usize,
    offset: usize,
    round_linspace: bool,
) -> Vec<f64> {
    match spacing {
        TimestepSpacing::Linspace => (0..steps)
            .map(|i| {
                let value = if steps == 1 {
                    0.0
                } else {
                    (n - 1) as f64 * i as f64 / (steps - 1) as f64
                };
                if round_linspace {
                    round_half_even(value)
                } else {
                    value as f32 as f64
                }
            })
            .collect(),
        TimestepSpacing::Leading => {
            let ratio = n / steps;
            (0..steps).map(|i| (i * ratio + offset) as f64).collect()
        }
        TimestepSpacing::Trailing => {
            // numpy's arange(n, 0, -ratio) has `steps` values; counting them
            // by `t > 0` would add one when rounding leaves a sliver.
            let ratio = n as f64 / steps as f64;
            let mut out: Vec<f64> = (0..steps)
                .map(|i| round_half_even(n as f64 - i as f64 * ratio) - 1.0)
                .collect();
            out.reverse();
            out
        }
    }
}

/// PNDM's timesteps: the PLMS ones (the second-to-last repeated when the
/// Runge-Kutta steps are skipped), or the Runge-Kutta warm-up then PLMS.
fn pndm_timesteps(
    ascending: &[f64],
    n: usize,
    steps: usize,
    skip_prk_steps: bool,
    scheduler: &mut Scheduler,
) -> Vec<f64> {
    if skip_prk_steps {
        let len = ascending.len();
        let mut plms: Vec<f64> = ascending[..len.saturating_sub(1)].to_vec();
        if len >= 2 {
            plms.push(ascending[len - 2]);
        }
        plms.extend(ascending.last());
        plms.reverse();
        return plms;
    }
    const ORDER: usize = 4;
    let half = (n / steps / 2) as f64;
    let tail = &ascending[ascending.len().saturating_sub(ORDER)..];
    let mut prk: Vec<f64> = tail.iter().flat_map(|&t| [t, t + half]).collect();
    // `prk_timesteps[:-1].repeat(2)[1:-1]`, reversed.
    prk.pop();
    let mut doubled: Vec<f64> = prk.iter().flat_map(|&t| [t, t]).collect();
    doubled.remove(0);
    doubled.pop();
    doubled.reverse();
    scheduler.pndm.prk_steps = doubled.len();
    let plms = ascending[..ascending.len().saturating_sub(3)]
        .iter()
        .rev()
        .copied();
    doubled.into_iter().chain(plms).collect()
}

/// `np.interp` of `values` (at 0, 1, 2, ...) at `x`.
fn interpolate(values: &[f32], x: f64) -> f64 {
    let last = values.len().saturating_sub(1);
    if x <= 0.0 {
        return values.first().copied().unwrap_or(0.0) as f64;
    }
    if x >= last as f64 {
        return values.get(last).copied().unwrap_or(0.0) as f64;
    }
    let low = x.floor() as usize;
    let frac = x - low as f64;
    let (a, b) = (values[low] as f64, values[low + 1] as f64);
    a + (b - a) * frac
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> SchedulerConfig {
        serde_json::from_str(json).unwrap()
    }

    const SD15: &str = r#"{"_class_name": "PNDMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
        "beta_start": 0.00085, "num_train_timesteps": 1000, "set_alpha_to_one": false,
        "skip_prk_steps": true, "steps_offset": 1, "trained_betas": null}"#;

    #[test]
    fn timesteps_follow_diffusers() {
        // Values printed by diffusers 0.36 for these configs.
        let pndm = Scheduler::new(SchedulerKind::Pndm, &config(SD15), 4).unwrap();
        assert_eq!(pndm.timesteps(), &[751.0, 501.0, 501.0, 251.0, 1.0]);
        let ddim = Scheduler::new(SchedulerKind::Ddim, &config(SD15), 3).unwrap();
        assert_eq!(ddim.timesteps(), &[667.0, 334.0, 1.0]);
        let trailing = config(
            r#"{"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
                "timestep_spacing": "trailing"}"#,
        );
        let euler = Scheduler::new(SchedulerKind::Euler, &trailing, 1).unwrap();
        assert_eq!(euler.timesteps(), &[999.0]);
        let euler = Scheduler::new(SchedulerKind::Euler, &trailing, 4).unwrap();
        assert_eq!(euler.timesteps(), &[999.0, 749.0, 499.0, 249.0]);
        let linspace = Scheduler::new(SchedulerKind::Euler, &config("{}"), 3).unwrap();
        assert_eq!(linspace.timesteps(), &[999.0, 499.5, 0.0]);
        let linspace = Scheduler::new(
            SchedulerKind::Ddim,
            &config(r#"{"timestep_spacing": "linspace"}"#),
            3,
        )
        .unwrap();
        assert_eq!(linspace.timesteps(), &[999.0, 500.0, 0.0]);
        let prk = config(r#"{"skip_prk_steps": false}"#);
        let prk = Scheduler::new(SchedulerKind::Pndm, &prk, 10).unwrap();
        assert_eq!(prk.timesteps().len(), 19);
        assert_eq!(
            &prk.timesteps()[..16],
            &[
                900.0, 850.0, 850.0, 800.0, 800.0, 750.0, 750.0, 700.0, 700.0, 650.0, 650.0, 600.0,
                600.0, 500.0, 400.0, 300.0
            ]
        );
    }

    #[test]
    fn pndm_runge_kutta_warm_up_follows_diffusers() {
        // diffusers 0.36: PNDMScheduler(SD betas, skip_prk_steps=False,
        // steps_offset=1), 10 steps, sample [1, -0.5], model outputs
        // [0.1 (i + 1), 0.3 - 0.05 i] at step i.
        let config = config(
            r#"{"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
                "skip_prk_steps": false, "set_alpha_to_one": false, "steps_offset": 1}"#,
        );
        let mut pndm = Scheduler::new(SchedulerKind::Pndm, &config, 10).unwrap();
        assert_eq!(pndm.timesteps().len(), 19);
        let device = candle_core::Device::Cpu;
        let mut sample = Tensor::new(&[1.0f32, -0.5], &device).unwrap();
        let mut seen = Vec::new();
        for i in 0..pndm.timesteps().len() {
            let output =
                Tensor::new(&[0.1 * (i + 1) as f32, 0.3 - 0.05 * i as f32], &device).unwrap();
            sample = pndm.step(i, &output, &sample, None).unwrap();
            seen.push(sample.to_vec1::<f32>().unwrap());
        }
        for (index, want) in [
            (3, [1.459_785_3, -0.947_768_6]),
            (12, [2.288_113_8, -2.386_078_8]),
            (18, [1.839_230_4, -3.844_902_5]),
        ] {
            for (got, want) in seen[index].iter().zip(want) {
                assert!((got - want).abs() < 1e-5, "step {index}: {:?}", seen[index]);
            }
        }
    }

    #[test]
    fn euler_ancestral_steps_follow_diffusers() {
        // diffusers 0.36: EulerAncestralDiscreteScheduler(SD betas,
        // steps_offset=1), the sample [1, -0.5] times init_noise_sigma, model
        // outputs [0.1 (i + 1), 0.3 - 0.05 i] + 0.01 x (x the scaled
        // input), and the step noises given.
        let device = candle_core::Device::Cpu;
        let noises = [[0.3f32, -1.2], [-0.7, 0.4], [1.1, 0.2]];
        for (json, steps, spacing, want) in [
            (
                r#""timestep_spacing": "trailing""#,
                2,
                TimestepSpacing::Trailing,
                [13.070_482, -13.778_515],
            ),
            (
                r#""timestep_spacing": "leading", "prediction_type": "v_prediction""#,
                3,
                TimestepSpacing::Leading,
                [0.233_692_33, -1.016_034_8],
            ),
        ] {
            let config = config(&format!(
                r#"{{"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
                    "steps_offset": 1, {json}}}"#
            ));
            let kind = SchedulerKind::EulerAncestral;
            let mut scheduler = Scheduler::new(kind, &config, steps).unwrap();
            assert!(scheduler.adds_noise_each_step());
            let sigma = scheduler.init_noise_sigma(spacing);
            let mut sample = (Tensor::new(&[1.0f32, -0.5], &device).unwrap() * sigma).unwrap();
            for (i, noise) in noises.iter().enumerate().take(steps) {
                let input = scheduler.scale_model_input(&sample, i).unwrap();
                let output = (Tensor::new(&[0.1 * (i + 1) as f32, 0.3 - 0.05 * i as f32], &device)
                    .unwrap()
                    + (input * 0.01).unwrap())
                .unwrap();
                let noise = Tensor::new(noise, &device).unwrap();
                sample = scheduler.step(i, &output, &sample, Some(&noise)).unwrap();
            }
            let got = sample.to_vec1::<f32>().unwrap();
            for (g, w) in got.iter().zip(want) {
                assert!((g - w).abs() < 1e-4 * w.abs().max(1.0), "{json}: {got:?}");
            }
            let mut again = Scheduler::new(kind, &config, steps).unwrap();
            let err = again.step(0, &sample, &sample, None).unwrap_err();
            assert!(err.to_string().contains("noise"), "{err}");
        }
    }

    #[test]
    fn sigmas_and_bad_configs() {
        let trailing = config(
            r#"{"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
                "timestep_spacing": "trailing"}"#,
        );
        let euler = Scheduler::new(SchedulerKind::Euler, &trailing, 1).unwrap();
        // diffusers: sigmas [14.614647, 0.0], init_noise_sigma 14.614647.
        assert!(
            (euler.sigmas[0] - 14.614_647).abs() < 1e-4,
            "{:?}",
            euler.sigmas
        );
        assert_eq!(euler.sigmas[1], 0.0);
        assert!((euler.init_noise_sigma(TimestepSpacing::Trailing) - 14.614_647).abs() < 1e-4);
        // Step counts whose ratio does not divide 1000 exactly still give as
        // many timesteps as asked (numpy's arange does).
        for steps in [19, 38, 76, 87, 93, 99, 103] {
            assert!(
                Scheduler::new(SchedulerKind::Euler, &trailing, steps).is_ok(),
                "{steps} trailing steps"
            );
        }
        let offset = config(r#"{"steps_offset": 1000}"#);
        let err = Scheduler::new(SchedulerKind::Ddim, &offset, 2).unwrap_err();
        assert!(err.contains("steps_offset"), "{err}");
        assert!(Scheduler::new(SchedulerKind::Ddim, &config(SD15), 0).is_err());
        assert!(Scheduler::new(SchedulerKind::Ddim, &config(SD15), 1001).is_err());
        let karras = config(r#"{"use_karras_sigmas": true}"#);
        let err = Scheduler::new(SchedulerKind::Euler, &karras, 2).unwrap_err();
        assert!(err.contains("use_karras_sigmas"), "{err}");
        let odd = config(r#"{"beta_schedule": "sigmoid"}"#);
        assert!(Scheduler::new(SchedulerKind::Ddim, &odd, 2).is_err());
        let short = config(r#"{"trained_betas": [0.1, 0.2]}"#);
        assert!(Scheduler::new(SchedulerKind::Ddim, &short, 2).is_err());
    }
}
