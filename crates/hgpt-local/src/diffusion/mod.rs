//! Stable Diffusion text-to-image and image-to-image, as diffusers'
//! `StableDiffusionPipeline` and `StableDiffusionImg2ImgPipeline` run them,
//! and SDXL as `StableDiffusionXLPipeline` and
//! `StableDiffusionXLImg2ImgPipeline` do: the CLIP text encoders of
//! [`crate::vision::ClipTextEncoder`], a UNet of candle's blocks, candle's
//! autoencoder blocks, the schedulers of [`scheduler`], classifier-free
//! guidance, and the pipelines' pre- and post-processing. Reads diffusers
//! repositories (`model_index.json`, `unet/`, `vae/`, `text_encoder/`,
//! `tokenizer/`, `scheduler/`, and SDXL's `text_encoder_2/` and
//! `tokenizer_2/`), float16 weight variants as f32.
//!
//! - [`config`]: the UNet and autoencoder configs, checked.
//! - [`scheduler`]: PNDM, DDIM, Euler and Euler ancestral as diffusers
//!   computes them.
//! - `text`: the prompt conditioning (one encoder, or SDXL's two).
//! - `unet`: the denoiser, with SDXL's size and pooled-text conditioning.
//!
//! Noise comes from a seeded generator of hgpt's own ([`Noise::seeded`]): a
//! seed gives the same image on every run, not the image diffusers gives for
//! that seed (its generator is PyTorch's); [`StableDiffusion::generate_with_noise`]
//! takes given noise instead, which is how the parity tests feed diffusers'.

mod blocks;
pub mod config;
mod prompt;
pub mod scheduler;
mod text;
mod unet;
mod unet_cpu;
mod vae;
mod vae_cpu;

use crate::error::{LocalError, bad_input};
use crate::files::ModelFiles;
use crate::noise::SeededNormal;
use crate::pipeline::{DIFFUSERS, ModelKind, Pipeline};
use crate::vision::preprocess::{Resample, decode_image, resize_like_pil};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use config::{UnetConfig, VaeConfig};
use hgpt_core::backend::{ResolvedArgs, StepProgress};
use hgpt_core::output::{Blob, InferenceOutput};
use hgpt_core::task::TaskKind;
use image::RgbImage;
use scheduler::{Scheduler, SchedulerConfig, SchedulerKind, TimestepSpacing};
use serde_json::Value;
use text::Conditioning;
use unet::{AddedConditioning, Unet};
use vae::Autoencoder;

/// The seed of requests that name none.
pub const DEFAULT_SEED: u64 = 0;
/// The longest side of an image hgpt makes or reads.
pub const MAX_SIDE: usize = 2048;
/// The most pixels of an image hgpt makes with a UNet that attends over
/// every latent pixel (SD 1.x and 2.x; 768 x 768, SD 2.1's size): candle's
/// blocks (off the CPU) hold that attention's 9216 x 9216 score matrix per
/// head and guided batch row (5.4 GB over SD 1.5's 8 heads and 2 rows; the
/// CPU blocks attend in query blocks); larger images given to
/// image-to-image are scaled down to it.
pub const MAX_PIXELS: usize = 768 * 768;
/// The most pixels with a UNet whose first attention is at half the latent
/// resolution or less (SDXL; 1024 x 1024, its size): 4096 tokens, 1.3 GB of
/// scores over SDXL's 10 heads and 2 rows in candle's blocks, and their
/// autoencoder's own attention over 16384 latent pixels, 1 GB.
pub const MAX_PIXELS_LATE_ATTENTION: usize = 1024 * 1024;
/// The most denoising steps a request may ask for.
pub const MAX_STEPS: usize = 1000;

/// The weight files of each part, in order of preference: full precision,
/// the float16 variant, a PyTorch state dict.
const UNET_WEIGHTS: &str = "unet/diffusion_pytorch_model.safetensors|unet/diffusion_pytorch_model.fp16.safetensors|unet/diffusion_pytorch_model.bin";
const VAE_WEIGHTS: &str = "vae/diffusion_pytorch_model.safetensors|vae/diffusion_pytorch_model.fp16.safetensors|vae/diffusion_pytorch_model.bin";
const TEXT_WEIGHTS: &str = "text_encoder/model.safetensors|text_encoder/model.fp16.safetensors|text_encoder/pytorch_model.bin";
const TEXT_2_WEIGHTS: &str = "text_encoder_2/model.safetensors|text_encoder_2/model.fp16.safetensors|text_encoder_2/pytorch_model.bin";
/// The tokenizer files: `tokenizer.json`, else the BPE files.
const TOKENIZER_FILES: &str = "tokenizer/tokenizer.json|tokenizer/vocab.json";

/// Every file (`a|b`: either) a Stable Diffusion repository needs here.
pub const REQUIRED_FILES: &[&str] = &[
    "model_index.json",
    "unet/config.json",
    UNET_WEIGHTS,
    "vae/config.json",
    VAE_WEIGHTS,
    "text_encoder/config.json",
    TEXT_WEIGHTS,
    TOKENIZER_FILES,
    "scheduler/scheduler_config.json",
];

/// What an SDXL repository needs besides [`REQUIRED_FILES`].
pub const XL_FILES: &[&str] = &[
    "text_encoder_2/config.json",
    TEXT_2_WEIGHTS,
    "tokenizer_2/tokenizer.json|tokenizer_2/vocab.json",
];

/// The `model_index.json` classes of the pipelines hgpt runs.
pub const PIPELINE_CLASSES: &[&str] = &[
    "StableDiffusionPipeline",
    "StableDiffusionImg2ImgPipeline",
    "StableDiffusionXLPipeline",
    "StableDiffusionXLImg2ImgPipeline",
];

/// SDXL's size conditioning: original size, crop corner, target size.
const TIME_IDS: usize = 6;

/// Whether a cached diffusers repository has every file its pipeline
/// reads ([`REQUIRED_FILES`], and [`XL_FILES`] when `model_index.json`
/// names a second text encoder).
pub fn has_every_part(files: &ModelFiles) -> bool {
    files.has_all(REQUIRED_FILES) && (!names_second_encoder(files) || files.has_all(XL_FILES))
}

/// Refuse SDXL pipelines hgpt does not condition as they need: the
/// refiner (one text encoder, aesthetic-score conditioning).
fn check_xl_index(files: &ModelFiles, index: &Value) -> Result<(), LocalError> {
    let names = |key| names_component(index, key);
    let aesthetic = index
        .get("requires_aesthetics_score")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if aesthetic || !names("text_encoder") || !names("text_encoder_2") {
        return Err(LocalError::Unsupported(format!(
            "{} is an SDXL refiner (aesthetic-score conditioning or a single text encoder); \
             hgpt runs SDXL base and turbo pipelines",
            files.id()
        )));
    }
    Ok(())
}

fn names_second_encoder(files: &ModelFiles) -> bool {
    files
        .json::<Value>("model_index.json")
        .is_ok_and(|index| names_component(&index, "text_encoder_2"))
}

/// Whether `model_index.json` names a component (`[library, class]`, not
/// `null` or `[null, null]`).
fn names_component(index: &Value, key: &str) -> bool {
    index
        .get(key)
        .is_some_and(|entry| !entry.is_null() && entry.get(0).is_none_or(|v| !v.is_null()))
}

/// One loaded part's weights.
struct Part {
    vb: VarBuilder<'static>,
    /// Bytes in memory.
    bytes: u64,
}

/// The weights of a part (`names`: its files, `a|b` in order of
/// preference), errors naming the part.
fn load_part(
    files: &ModelFiles,
    names: &str,
    what: &str,
    device: &Device,
) -> Result<Part, LocalError> {
    files
        .weights_from(names, device)
        .map(|w| Part {
            vb: w.vb,
            bytes: in_memory_bytes(w.bytes, &w.file),
        })
        .map_err(|e| match e {
            LocalError::Load { model, message } => LocalError::Load {
                model,
                message: format!("{what}: {message}"),
            },
            other => other,
        })
}

/// The scheduler run when the repository names one hgpt does not have.
const FALLBACK_SCHEDULER: SchedulerKind = SchedulerKind::Ddim;

/// A Stable Diffusion pipeline (SD 1.x, 2.x, sd-turbo, SDXL,
/// sdxl-turbo), loaded.
pub struct StableDiffusion {
    id: String,
    text: Conditioning,
    unet: Unet,
    vae: Autoencoder,
    scaling_factor: f64,
    vae_scale: usize,
    latent_channels: usize,
    scheduler_kind: SchedulerKind,
    scheduler_config: SchedulerConfig,
    default_side: usize,
    max_pixels: usize,
    defaults: [Defaults; 2],
    weight_bytes: u64,
    device: Device,
}

impl std::fmt::Debug for StableDiffusion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StableDiffusion")
            .field("id", &self.id)
            .field("scheduler", &self.scheduler_kind)
            .field("xl", &self.is_xl())
            .field("defaults", &self.defaults)
            .finish_non_exhaustive()
    }
}

/// An init image for image-to-image and how much of it to noise away.
#[derive(Debug, Clone)]
pub struct InitImage {
    /// The image.
    pub image: RgbImage,
    /// In (0, 1]: the share of the schedule run from the noised image.
    pub strength: f64,
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenerationRequest {
    /// The prompt (may be empty).
    pub prompt: String,
    /// What to steer away from (the unconditional prompt is empty without).
    pub negative_prompt: Option<String>,
    /// Scheduler steps.
    pub num_inference_steps: usize,
    /// Classifier-free guidance scale; guidance runs above 1.
    pub guidance_scale: f64,
    /// Output width (text-to-image; multiple of 8).
    pub width: usize,
    /// Output height (text-to-image; multiple of 8).
    pub height: usize,
    /// Seed of the noise.
    pub seed: u64,
    /// Image-to-image's start.
    pub init: Option<InitImage>,
}

/// The random draws of one generation: the initial latents `[1, c, h, w]`
/// (text-to-image: diffusers' `latents`, before `init_noise_sigma`;
/// image-to-image: the noise added at the first step), for image-to-image
/// the standard normal noise of the posterior sample, and for schedulers
/// that add noise at each step (Euler ancestral), that noise.
#[derive(Debug, Clone)]
pub struct Noise {
    /// Initial latents or added noise.
    pub latents: Tensor,
    /// The posterior sample's noise (image-to-image).
    pub posterior: Option<Tensor>,
    /// The noise of each step run, in order (ancestral schedulers).
    pub steps: Vec<Tensor>,
}

impl Noise {
    /// Standard normal draws of `shape` from `seed`, in turn: the
    /// posterior's (when `posterior`), the latents, then `steps` steps'.
    pub fn seeded(
        seed: u64,
        shape: (usize, usize, usize, usize),
        posterior: bool,
        steps: usize,
        device: &Device,
    ) -> candle_core::Result<Self> {
        let mut rng = SeededNormal::new(seed);
        let mut noise = Self::start(&mut rng, shape, posterior, device)?;
        noise.steps = (0..steps)
            .map(|_| draw(&mut rng, shape, device))
            .collect::<candle_core::Result<_>>()?;
        Ok(noise)
    }

    /// The posterior's draws (when `posterior`) and the latents from
    /// `rng`, no step noise.
    fn start(
        rng: &mut SeededNormal,
        shape: (usize, usize, usize, usize),
        posterior: bool,
        device: &Device,
    ) -> candle_core::Result<Self> {
        let posterior = if posterior {
            Some(draw(rng, shape, device)?)
        } else {
            None
        };
        Ok(Self {
            latents: draw(rng, shape, device)?,
            posterior,
            steps: Vec::new(),
        })
    }
}

/// A standard normal tensor of `shape` from `rng`.
fn draw(
    rng: &mut SeededNormal,
    shape: (usize, usize, usize, usize),
    device: &Device,
) -> candle_core::Result<Tensor> {
    let count = shape.0 * shape.1 * shape.2 * shape.3;
    let values: Vec<f32> = (0..count).map(|_| rng.sample()).collect();
    Tensor::from_vec(values, shape, device)
}

/// The noise an ancestral scheduler adds at each step: given, or drawn
/// from the generator that drew the latents, a step at a time (as
/// [`Noise::seeded`] would draw them all up front).
enum StepNoise<'a> {
    Given(&'a [Tensor]),
    Drawn(SeededNormal),
}

impl StepNoise<'_> {
    /// The noise of the `done`-th step run, shaped like `like`.
    fn next(&mut self, done: usize, like: &Tensor) -> Result<Tensor, LocalError> {
        match self {
            Self::Given(steps) => steps.get(done).cloned().ok_or_else(|| {
                LocalError::Compute(format!("no noise for denoising step {}", done + 1))
            }),
            Self::Drawn(rng) => Ok(draw(rng, like.dims4()?, like.device())?),
        }
    }
}

impl StableDiffusion {
    /// Load a diffusers Stable Diffusion or SDXL repository.
    pub fn load(files: &ModelFiles, device: &Device) -> Result<Self, LocalError> {
        files.require(REQUIRED_FILES)?;
        let kind = ModelKind::read(files)?;
        let class = kind.architectures.join(", ");
        if kind.model_type.as_deref() != Some(DIFFUSERS)
            || !PIPELINE_CLASSES.contains(&class.as_str())
        {
            return Err(LocalError::Unsupported(format!(
                "{} is a {class}; hgpt runs diffusers {} repositories",
                files.id(),
                PIPELINE_CLASSES.join(", ")
            )));
        }
        let index: Value = files.json("model_index.json")?;
        let xl = class.starts_with("StableDiffusionXL");
        if xl {
            check_xl_index(files, &index)?;
            files.require(XL_FILES)?;
        }
        let config_error = |file: &str, e: String| files.load_error(format!("{file}: {e}"));
        let unet_config: UnetConfig = files.json("unet/config.json")?;
        let candle_unet = unet_config
            .to_candle()
            .map_err(|e| config_error("unet/config.json", e))?;
        let text_time = unet_config
            .text_time()
            .map_err(|e| config_error("unet/config.json", e))?;
        let vae_config: VaeConfig = files.json("vae/config.json")?;
        vae_config
            .check()
            .map_err(|e| config_error("vae/config.json", e))?;
        let latent = vae_config.latent_channels;
        if unet_config.in_channels != latent || unet_config.out_channels != latent {
            return Err(LocalError::Unsupported(format!(
                "{}: the UNet takes {} channels for {latent} latent channels (an inpainting or \
                 depth model?); hgpt runs plain text-to-image and image-to-image UNets",
                files.id(),
                unet_config.in_channels
            )));
        }
        let scheduler_config: SchedulerConfig = files.json("scheduler/scheduler_config.json")?;
        let scheduler_class = scheduler_config.class_name.clone().unwrap_or_default();
        let scheduler_kind = SchedulerKind::from_class(&scheduler_class).unwrap_or_else(|| {
            tracing::warn!(
                "{}: scheduler {scheduler_class:?} is not one hgpt runs; using {FALLBACK_SCHEDULER:?} with its config",
                files.id()
            );
            FALLBACK_SCHEDULER
        });
        // Check the scheduler config once, at load.
        Scheduler::new(scheduler_kind, &scheduler_config, 1)
            .map_err(|e| config_error("scheduler/scheduler_config.json", e))?;

        let (text, text_bytes) = if xl {
            let zero_unconditional = index
                .get("force_zeros_for_empty_prompt")
                .and_then(Value::as_bool)
                .unwrap_or(true);
            Conditioning::load_dual(
                files,
                (TEXT_WEIGHTS, TEXT_2_WEIGHTS),
                zero_unconditional,
                device,
            )?
        } else {
            Conditioning::load_single(files, TEXT_WEIGHTS, device)?
        };
        if unet_config.cross_attention_dim != text.width() {
            return Err(files.load_error(format!(
                "the UNet attends to {}-wide text embeddings; the text encoders give {}",
                unet_config.cross_attention_dim,
                text.width()
            )));
        }
        match (text_time, text.pooled_width()) {
            (None, None) => {}
            (Some(t), Some(pooled)) if t.input_dim == t.time_embed_dim * TIME_IDS + pooled => {}
            (Some(t), Some(pooled)) => {
                return Err(files.load_error(format!(
                    "the UNet's added embedding reads {} values; {TIME_IDS} time ids of {} and \
                     the {pooled}-wide pooled text make {}",
                    t.input_dim,
                    t.time_embed_dim,
                    t.time_embed_dim * TIME_IDS + pooled
                )));
            }
            (Some(_), None) => {
                return Err(files.load_error(
                    "the UNet takes SDXL's text_time conditioning but model_index.json names \
                     a Stable Diffusion (not XL) pipeline",
                ));
            }
            (None, Some(_)) => {
                return Err(files
                    .load_error("an SDXL pipeline whose UNet lacks the text_time conditioning"));
            }
        }
        let loaded = |what: &str| {
            let what = what.to_string();
            move |e: candle_core::Error| files.load_error(format!("{what}: {e}"))
        };
        let unet_part = load_part(files, UNET_WEIGHTS, "unet", device)?;
        let unet = Unet::new(
            unet_part.vb,
            unet_config.in_channels,
            unet_config.out_channels,
            &candle_unet,
            text_time,
        )
        .map_err(loaded("unet"))?;
        let vae_part = load_part(files, VAE_WEIGHTS, "vae", device)?;
        let vae = Autoencoder::load(&vae_config, vae_part.vb).map_err(loaded("vae"))?;

        let vae_scale = vae_config.scale_factor();
        let max_pixels = match unet_config.first_attention_level() {
            Some(0) => MAX_PIXELS,
            _ => MAX_PIXELS_LATE_ATTENTION,
        };
        let turbo = is_turbo(files.id(), scheduler_kind, &scheduler_config);
        Ok(Self {
            id: files.id().to_string(),
            text,
            unet,
            vae,
            scaling_factor: vae_config.scaling_factor,
            vae_scale,
            latent_channels: latent,
            scheduler_kind,
            scheduler_config,
            // The UNet's own size, cut to what a request may ask for.
            default_side: unet_config
                .sample_size
                .unwrap_or(64)
                .checked_mul(vae_scale)
                .map_or(MAX_SIDE, |side| side.min(MAX_SIDE))
                .min(max_pixels.isqrt() / 8 * 8),
            max_pixels,
            defaults: [TaskKind::TextToImage, TaskKind::ImageToImage]
                .map(|task| Defaults::for_model(xl, turbo, task)),
            weight_bytes: text_bytes + unet_part.bytes + vae_part.bytes,
            device: device.clone(),
        })
    }

    /// The ids the (first) text encoder reads for a prompt (padded to its
    /// length).
    pub fn prompt_ids(&self, prompt: &str) -> Result<Vec<u32>, LocalError> {
        self.text.prompt_ids(prompt)
    }

    /// Whether the model is an SDXL one.
    pub fn is_xl(&self) -> bool {
        self.text.pooled_width().is_some()
    }

    /// The defaults of a task's requests (see [`Defaults`]).
    pub fn defaults(&self, task: TaskKind) -> Defaults {
        self.defaults[usize::from(task == TaskKind::ImageToImage)]
    }

    /// The most pixels an image of this model may have.
    pub fn max_pixels(&self) -> usize {
        self.max_pixels
    }

    /// The request an invocation asks for, the model's defaults filling in
    /// what it leaves out (see [`Defaults`]).
    pub fn request(
        &self,
        task: TaskKind,
        args: &ResolvedArgs,
    ) -> Result<GenerationRequest, LocalError> {
        let defaults = self.defaults(task);
        let prompt = args
            .text
            .clone()
            .or_else(|| text_param(args, "prompt"))
            .or_else(|| args.other_text("inputs"));
        let prompt = match (task, prompt) {
            (_, Some(prompt)) => prompt,
            (TaskKind::ImageToImage, None) => String::new(),
            (_, None) => return Err(bad_input(task, "no prompt given")),
        };
        let steps = match param(args, "num_inference_steps") {
            Some(value) => bounded_integer(task, "num_inference_steps", value, 1, MAX_STEPS)?,
            None => defaults.steps,
        };
        let guidance_scale = match param(args, "guidance_scale") {
            Some(value) => number(value).filter(|g| *g >= 0.0).ok_or_else(|| {
                bad_input(
                    task,
                    format!("guidance_scale must be a number of 0 or more, not {value}"),
                )
            })?,
            None => defaults.guidance_scale,
        };
        let negative_prompt = match param(args, "negative_prompt") {
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => {
                return Err(bad_input(
                    task,
                    format!("negative_prompt must be a string, not {other}"),
                ));
            }
            None => None,
        };
        let seed = match param(args, "seed") {
            Some(value) => seed(task, value)?,
            None => DEFAULT_SEED,
        };
        let side = |key: &str| match param(args, key) {
            Some(value) => {
                let n = bounded_integer(task, key, value, 8, MAX_SIDE)?;
                if !n.is_multiple_of(8) {
                    return Err(bad_input(
                        task,
                        format!("{key} must be a multiple of 8, not {n}"),
                    ));
                }
                Ok(n)
            }
            None => Ok(self.default_side.min(MAX_SIDE)),
        };
        let (width, height) = (side("width")?, side("height")?);
        if width * height > self.max_pixels {
            return Err(bad_input(
                task,
                format!(
                    "{width}x{height} is more than the {} pixels hgpt makes with this model",
                    self.max_pixels
                ),
            ));
        }
        let init = if task == TaskKind::ImageToImage {
            let bytes = match &args.image {
                Some(blob) if !blob.bytes.is_empty() => &blob.bytes,
                Some(_) => return Err(bad_input(task, "the image is empty (0 bytes)")),
                None => return Err(bad_input(task, "no image given")),
            };
            let strength = match param(args, "strength") {
                Some(value) => {
                    number(value)
                        .filter(|s| *s > 0.0 && *s <= 1.0)
                        .ok_or_else(|| {
                            bad_input(
                                task,
                                format!("strength must be a number in (0, 1], not {value}"),
                            )
                        })?
                }
                None => defaults.strength,
            };
            Some(InitImage {
                image: decode_image(task, bytes)?,
                strength,
            })
        } else {
            None
        };
        Ok(GenerationRequest {
            prompt,
            negative_prompt,
            num_inference_steps: steps,
            guidance_scale,
            width,
            height,
            seed,
            init,
        })
    }

    /// Generate an image with noise from the request's seed; `on_step(done,
    /// total)` is called after each denoising step.
    pub fn generate(
        &self,
        request: &GenerationRequest,
        on_step: &dyn Fn(usize, usize),
    ) -> Result<RgbImage, LocalError> {
        let task = request_task(request);
        let prepared = self.prepare_init(request)?;
        let (height, width) = match &prepared {
            Some(image) => (
                image.dim(2)? / self.vae_scale,
                image.dim(3)? / self.vae_scale,
            ),
            None => (
                request.height / self.vae_scale,
                request.width / self.vae_scale,
            ),
        };
        if height == 0 || width == 0 {
            return Err(bad_input(task, "the image is smaller than one latent"));
        }
        let shape = (1, self.latent_channels, height, width);
        let mut rng = SeededNormal::new(request.seed);
        let noise = Noise::start(&mut rng, shape, prepared.is_some(), &self.device)?;
        let steps = StepNoise::Drawn(rng);
        let decoded = self.denoise(request, prepared.as_ref(), &noise, steps, on_step)?;
        to_rgb(&decoded)
    }

    /// Generate with given noise: the decoded image `[3, h, w]` before the
    /// pipelines' clamp to [-1, 1] (see [`to_rgb`]).
    pub fn generate_with_noise(
        &self,
        request: &GenerationRequest,
        noise: &Noise,
        on_step: &dyn Fn(usize, usize),
    ) -> Result<Tensor, LocalError> {
        let prepared = self.prepare_init(request)?;
        self.denoise(
            request,
            prepared.as_ref(),
            noise,
            StepNoise::Given(&noise.steps),
            on_step,
        )
    }

    /// The init image as `VaeImageProcessor.preprocess` makes it: each side
    /// cut down to a multiple of the VAE's scale (Lanczos resize), values
    /// in [-1, 1], `[1, 3, h, w]`.
    fn prepare_init(&self, request: &GenerationRequest) -> Result<Option<Tensor>, LocalError> {
        let Some(init) = &request.init else {
            return Ok(None);
        };
        let task = TaskKind::ImageToImage;
        let (w, h) = fitted_size(
            init.image.width() as usize,
            init.image.height() as usize,
            self.max_pixels,
        );
        let (width, height) = (w - w % self.vae_scale, h - h % self.vae_scale);
        if width == 0 || height == 0 {
            return Err(bad_input(
                task,
                format!(
                    "a {w}x{h} image is smaller than the autoencoder's {0}x{0} cell",
                    self.vae_scale
                ),
            ));
        }
        if width.max(height) > MAX_SIDE || width * height > self.max_pixels {
            return Err(bad_input(
                task,
                format!(
                    "a {w}x{h} image is larger than hgpt reads (sides up to {MAX_SIDE}, {} pixels)",
                    self.max_pixels
                ),
            ));
        }
        let resized = resize_like_pil(&init.image, width as u32, height as u32, Resample::Lanczos);
        let values: Vec<f32> = resized
            .as_raw()
            .iter()
            .map(|&v| v as f32 / 255.0 * 2.0 - 1.0)
            .collect();
        let image = Tensor::from_vec(values, (height, width, 3), &self.device)?
            .permute((2, 0, 1))?
            .unsqueeze(0)?
            .contiguous()?;
        Ok(Some(image))
    }

    /// The scheduler set for a request's steps.
    fn scheduler(&self, request: &GenerationRequest) -> Result<Scheduler, LocalError> {
        Scheduler::new(
            self.scheduler_kind,
            &self.scheduler_config,
            request.num_inference_steps,
        )
        .map_err(|e| bad_input(request_task(request), e))
    }

    fn denoise(
        &self,
        request: &GenerationRequest,
        init: Option<&Tensor>,
        noise: &Noise,
        mut step_noise: StepNoise,
        on_step: &dyn Fn(usize, usize),
    ) -> Result<Tensor, LocalError> {
        let task = request_task(request);
        let mut scheduler = self.scheduler(request)?;
        let count = scheduler.timesteps().len();
        let (start, mut latents) = match (init, &request.init) {
            (Some(image), Some(settings)) => {
                let steps = request.num_inference_steps;
                let kept = ((steps as f64 * settings.strength).floor() as usize).min(steps);
                let start = steps - kept;
                if start >= count || kept == 0 {
                    return Err(bad_input(
                        task,
                        format!(
                            "strength {} leaves no step of {steps}; raise strength or num_inference_steps",
                            settings.strength
                        ),
                    ));
                }
                let (mean, std) = self.vae.encode(image)?;
                let posterior = noise.posterior.as_ref().ok_or_else(|| {
                    LocalError::Compute("image-to-image needs the posterior's noise".into())
                })?;
                let sample = (mean + std.mul(posterior)?)?;
                let init_latents = (sample * self.scaling_factor)?;
                (
                    start,
                    scheduler.add_noise(&init_latents, &noise.latents, start)?,
                )
            }
            _ => {
                let spacing = self.scheduler_config.spacing(self.scheduler_kind);
                let sigma = scheduler.init_noise_sigma(spacing);
                (0, (&noise.latents * sigma)?)
            }
        };
        let guide = request.guidance_scale > 1.0;
        let rows = if guide { 2 } else { 1 };
        let embeddings = self.text.embed(
            &request.prompt,
            request.negative_prompt.as_deref(),
            guide,
            &self.device,
        )?;
        // SDXL: the image's size as original and target, no crop, each row.
        let (_, _, latent_h, latent_w) = latents.dims4()?;
        let (h, w) = (
            (latent_h * self.vae_scale) as f32,
            (latent_w * self.vae_scale) as f32,
        );
        let time_ids = Tensor::new(&[h, w, 0.0, 0.0, h, w], &self.device)?
            .unsqueeze(0)?
            .repeat((rows, 1))?;
        let added = embeddings
            .pooled
            .as_ref()
            .map(|text_embeds| AddedConditioning {
                text_embeds,
                time_ids: &time_ids,
            });
        let total = count - start;
        for (done, index) in (start..count).enumerate() {
            let timestep = scheduler.timesteps()[index];
            let input = if guide {
                Tensor::cat(&[&latents, &latents], 0)?
            } else {
                latents.clone()
            };
            let input = scheduler.scale_model_input(&input, index)?;
            let mut prediction = self
                .unet
                .forward(&input, timestep, &embeddings.context, added)?;
            if guide {
                let unconditional = prediction.narrow(0, 0, 1)?;
                let conditional = prediction.narrow(0, 1, 1)?;
                let steer = ((conditional - &unconditional)? * request.guidance_scale)?;
                prediction = (unconditional + steer)?;
            }
            let added = if scheduler.adds_noise_each_step() {
                Some(step_noise.next(done, &latents)?)
            } else {
                None
            };
            latents = scheduler.step(index, &prediction, &latents, added.as_ref())?;
            on_step(done + 1, total);
        }
        let decoded = self.vae.decode(&(latents / self.scaling_factor)?)?;
        Ok(decoded.squeeze(0)?)
    }
}

/// The pipelines' post-processing: `[3, h, w]` around [-1, 1] to 8-bit RGB
/// The size an image-to-image input is drawn at: its own, or scaled down
/// (shape kept) to fit `max_pixels` and [`MAX_SIDE`]; diffusers would draw
/// it at its full size.
fn fitted_size(width: usize, height: usize, max_pixels: usize) -> (usize, usize) {
    let (w, h) = (width.max(1) as f64, height.max(1) as f64);
    let fit = (max_pixels as f64 / (w * h))
        .sqrt()
        .min(MAX_SIDE as f64 / w.max(h))
        .min(1.0);
    (
        ((w * fit).floor() as usize).max(1),
        ((h * fit).floor() as usize).max(1),
    )
}

/// (`(x / 2 + 0.5).clamp(0, 1) * 255`, rounded).
pub fn to_rgb(decoded: &Tensor) -> Result<RgbImage, LocalError> {
    let (channels, height, width) = decoded.dims3()?;
    if channels != 3 {
        return Err(LocalError::Compute(format!(
            "the autoencoder made {channels} channels, not 3"
        )));
    }
    let values = ((decoded / 2.0)? + 0.5)?
        .clamp(0f32, 1f32)?
        .permute((1, 2, 0))?
        .flatten_all()?
        .to_dtype(DType::F32)?
        .to_vec1::<f32>()?;
    let bytes: Vec<u8> = values
        .iter()
        .map(|&v| (v * 255.0).round_ties_even() as u8)
        .collect();
    RgbImage::from_raw(width as u32, height as u32, bytes)
        .ok_or_else(|| LocalError::Compute("the image has the wrong number of pixels".into()))
}

/// PNG bytes of an image.
pub fn png(image: &RgbImage) -> Result<Vec<u8>, LocalError> {
    use image::ImageEncoder;
    let mut bytes = Vec::new();
    image::codecs::png::PngEncoder::new(&mut bytes)
        .write_image(
            image.as_raw(),
            image.width(),
            image.height(),
            image::ExtendedColorType::Rgb8,
        )
        .map_err(|e| LocalError::Compute(format!("cannot encode the image: {e}")))?;
    Ok(bytes)
}

/// A request's defaults: diffusers' pipeline defaults (50 steps; SD:
/// guidance 7.5, img2img strength 0.8; SDXL: guidance 5, img2img strength
/// 0.3), or the turbo models' cards (text-to-image: 1 step, no guidance;
/// image-to-image: 2 steps, strength 0.5).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Defaults {
    /// Scheduler steps.
    pub steps: usize,
    /// Guidance scale.
    pub guidance_scale: f64,
    /// Image-to-image strength.
    pub strength: f64,
}

impl Defaults {
    /// The defaults of a model (SDXL or not, `turbo` or not) for a task.
    pub fn for_model(xl: bool, turbo: bool, task: TaskKind) -> Self {
        match (turbo, task) {
            (false, _) if xl => Self {
                steps: 50,
                guidance_scale: 5.0,
                strength: 0.3,
            },
            (false, _) => Self {
                steps: 50,
                guidance_scale: 7.5,
                strength: 0.8,
            },
            (true, TaskKind::ImageToImage) => Self {
                steps: 2,
                guidance_scale: 0.0,
                strength: 0.5,
            },
            (true, _) => Self {
                steps: 1,
                guidance_scale: 0.0,
                strength: 0.5,
            },
        }
    }
}

/// Whether a model is a distilled turbo model: its repository name says
/// `turbo` (stabilityai/sd-turbo, sdxl-turbo), or it ships the turbo
/// models' scheduler (Euler or Euler ancestral with trailing timesteps,
/// which spends a single step on the whole schedule; SD 1.5, 2.1 and SDXL
/// ship PNDM, DDIM or Euler with leading ones).
pub fn is_turbo(id: &str, kind: SchedulerKind, config: &SchedulerConfig) -> bool {
    let name = id.rsplit('/').next().unwrap_or(id).to_ascii_lowercase();
    name.contains("turbo") || (kind.is_euler() && config.spacing(kind) == TimestepSpacing::Trailing)
}

fn request_task(request: &GenerationRequest) -> TaskKind {
    if request.init.is_some() {
        TaskKind::ImageToImage
    } else {
        TaskKind::TextToImage
    }
}

/// Bytes the weights of a file take as f32 (float16 variants double).
fn in_memory_bytes(file_bytes: u64, file: &str) -> u64 {
    if file.contains(".fp16.") {
        file_bytes * 2
    } else {
        file_bytes
    }
}

/// A parameter from the arguments, or from their `parameters` object.
fn param<'a>(args: &'a ResolvedArgs, key: &str) -> Option<&'a Value> {
    args.other
        .get(key)
        .or_else(|| args.other.get("parameters")?.get(key))
        .filter(|v| !v.is_null())
}

fn text_param(args: &ResolvedArgs, key: &str) -> Option<String> {
    param(args, key)?.as_str().map(str::to_string)
}

/// A finite number (or numeric string).
fn number(value: &Value) -> Option<f64> {
    match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
    .filter(|f: &f64| f.is_finite())
}

/// A whole number in `[low, high]` (numbers or numeric strings).
fn bounded_integer(
    task: TaskKind,
    key: &str,
    value: &Value,
    low: usize,
    high: usize,
) -> Result<usize, LocalError> {
    number(value)
        .filter(|f| f.fract() == 0.0 && *f >= low as f64 && *f <= high as f64)
        .map(|f| f as usize)
        .ok_or_else(|| {
            bad_input(
                task,
                format!("{key} must be a whole number from {low} to {high}, not {value}"),
            )
        })
}

fn seed(task: TaskKind, value: &Value) -> Result<u64, LocalError> {
    let parsed = match value {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    };
    parsed.ok_or_else(|| {
        bad_input(
            task,
            format!("seed must be a whole number of 0 or more, not {value}"),
        )
    })
}

impl Pipeline for StableDiffusion {
    fn tasks(&self) -> &[TaskKind] {
        &[TaskKind::TextToImage, TaskKind::ImageToImage]
    }

    fn run(&self, task: TaskKind, args: &ResolvedArgs) -> Result<InferenceOutput, LocalError> {
        self.run_with_progress(task, args, &|_| {})
    }

    /// Reports each denoising step.
    fn run_with_progress(
        &self,
        task: TaskKind,
        args: &ResolvedArgs,
        progress: &dyn Fn(StepProgress),
    ) -> Result<InferenceOutput, LocalError> {
        let request = self.request(task, args)?;
        let image = self.generate(&request, &|done, total| {
            progress(StepProgress {
                done: done as u64,
                total: total as u64,
            })
        })?;
        Ok(InferenceOutput::Media(Blob {
            bytes: png(&image)?.into(),
            mime: Some("image/png".into()),
        }))
    }

    fn weight_bytes(&self) -> u64 {
        self.weight_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_inputs_are_scaled_down_to_fit() {
        assert_eq!(fitted_size(640, 480, MAX_PIXELS), (640, 480));
        let (w, h) = fitted_size(4000, 3000, MAX_PIXELS);
        assert!(
            w * h <= MAX_PIXELS && w * h > MAX_PIXELS * 9 / 10,
            "{w}x{h}"
        );
        assert!((w as f64 / h as f64 - 4.0 / 3.0).abs() < 0.01);
        let (w, h) = fitted_size(20_000, 10, MAX_PIXELS);
        assert!(w <= MAX_SIDE && h >= 1, "{w}x{h}");
        let (w, h) = fitted_size(4000, 3000, MAX_PIXELS_LATE_ATTENTION);
        assert!(w * h > MAX_PIXELS * 3 / 2, "{w}x{h}");
        let (w, h) = fitted_size(20_000, 10, MAX_PIXELS_LATE_ATTENTION);
        assert!(w <= MAX_SIDE && h >= 1, "{w}x{h}");
    }

    #[test]
    fn seeded_noise_is_standard_normal_and_repeatable() {
        let a = Noise::seeded(7, (1, 4, 16, 16), true, 2, &Device::Cpu).unwrap();
        let b = Noise::seeded(7, (1, 4, 16, 16), true, 0, &Device::Cpu).unwrap();
        assert_eq!(a.steps.len(), 2);
        assert!(b.steps.is_empty());
        let values = a.latents.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(
            values,
            b.latents.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
        let n = values.len() as f32;
        let mean = values.iter().sum::<f32>() / n;
        let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / n;
        assert!(mean.abs() < 0.1 && (var - 1.0).abs() < 0.15, "{mean} {var}");
        let other = Noise::seeded(8, (1, 4, 16, 16), false, 0, &Device::Cpu).unwrap();
        assert!(other.posterior.is_none());
        assert_ne!(
            values,
            other
                .latents
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        );
    }

    #[test]
    fn turbo_models_are_recognised() {
        let euler: SchedulerConfig =
            serde_json::from_str(r#"{"timestep_spacing": "trailing"}"#).unwrap();
        let pndm: SchedulerConfig = serde_json::from_str(r#"{"skip_prk_steps": true}"#).unwrap();
        assert!(is_turbo("stabilityai/sd-turbo", SchedulerKind::Pndm, &pndm));
        assert!(is_turbo("org/distilled", SchedulerKind::Euler, &euler));
        assert!(!is_turbo(
            "stable-diffusion-v1-5/stable-diffusion-v1-5",
            SchedulerKind::Pndm,
            &pndm
        ));
        assert!(!is_turbo("turbo-org/sd", SchedulerKind::Pndm, &pndm));
        assert_eq!(
            Defaults::for_model(true, true, TaskKind::ImageToImage),
            Defaults {
                steps: 2,
                guidance_scale: 0.0,
                strength: 0.5
            }
        );
        assert_eq!(
            Defaults::for_model(false, false, TaskKind::TextToImage).steps,
            50
        );
        let xl = Defaults::for_model(true, false, TaskKind::ImageToImage);
        assert_eq!((xl.guidance_scale, xl.strength), (5.0, 0.3));
        assert!(is_turbo(
            "org/distilled-xl",
            SchedulerKind::EulerAncestral,
            &euler
        ));
    }
}
