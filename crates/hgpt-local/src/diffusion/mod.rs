//! Stable Diffusion text-to-image and image-to-image, as diffusers'
//! `StableDiffusionPipeline` and `StableDiffusionImg2ImgPipeline` run them:
//! the CLIP text encoder of [`crate::vision::ClipTextEncoder`], candle's UNet
//! and autoencoder blocks, the schedulers of [`scheduler`], classifier-free
//! guidance, and the pipelines' pre- and post-processing. Reads diffusers
//! repositories (`model_index.json`, `unet/`, `vae/`, `text_encoder/`,
//! `tokenizer/`, `scheduler/`), float16 weight variants as f32.
//!
//! - [`config`]: the UNet and autoencoder configs, checked.
//! - [`scheduler`]: PNDM, DDIM and Euler as diffusers computes them.
//!
//! Noise comes from a seeded generator of hgpt's own ([`Noise::seeded`]): a
//! seed gives the same image on every run, not the image diffusers gives for
//! that seed (its generator is PyTorch's); [`StableDiffusion::generate_with_noise`]
//! takes given noise instead, which is how the parity tests feed diffusers'.

pub mod config;
mod prompt;
pub mod scheduler;
mod vae;

use crate::error::{LocalError, bad_input};
use crate::files::ModelFiles;
use crate::noise::SeededNormal;
use crate::pipeline::{DIFFUSERS, ModelKind, Pipeline};
use crate::vision::ClipTextEncoder;
use crate::vision::clip::TowerConfig;
use crate::vision::preprocess::{Resample, decode_image, resize_like_pil};
use candle_core::{DType, Device, Tensor};
use candle_transformers::models::stable_diffusion::unet_2d::UNet2DConditionModel;
use config::{UnetConfig, VaeConfig};
use hgpt_core::backend::{ResolvedArgs, StepProgress};
use hgpt_core::output::{Blob, InferenceOutput};
use hgpt_core::task::TaskKind;
use image::RgbImage;
use prompt::PromptTokenizer;
use scheduler::{Scheduler, SchedulerConfig, SchedulerKind, TimestepSpacing};
use serde_json::Value;
use vae::Autoencoder;

/// The seed of requests that name none.
pub const DEFAULT_SEED: u64 = 0;
/// The longest side of an image hgpt makes or reads.
pub const MAX_SIDE: usize = 2048;
/// The most pixels of an image hgpt makes (768 x 768, SD 2.1's size):
/// attention over its latent pixels holds a 9216 x 9216 score matrix per
/// head and guided batch row (5.4 GB over SD 1.5's 8 heads and 2 rows);
/// larger images given to image-to-image are scaled down to it.
pub const MAX_PIXELS: usize = 768 * 768;
/// The most denoising steps a request may ask for.
pub const MAX_STEPS: usize = 1000;

/// The weight files of each part, in order of preference: full precision,
/// the float16 variant, a PyTorch state dict.
const UNET_WEIGHTS: &str = "unet/diffusion_pytorch_model.safetensors|unet/diffusion_pytorch_model.fp16.safetensors|unet/diffusion_pytorch_model.bin";
const VAE_WEIGHTS: &str = "vae/diffusion_pytorch_model.safetensors|vae/diffusion_pytorch_model.fp16.safetensors|vae/diffusion_pytorch_model.bin";
const TEXT_WEIGHTS: &str = "text_encoder/model.safetensors|text_encoder/model.fp16.safetensors|text_encoder/pytorch_model.bin";
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

/// The `model_index.json` classes of the pipelines hgpt runs.
pub const PIPELINE_CLASSES: &[&str] =
    &["StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline"];

/// The scheduler run when the repository names one hgpt does not have.
const FALLBACK_SCHEDULER: SchedulerKind = SchedulerKind::Ddim;

/// A Stable Diffusion pipeline (SD 1.x, 2.x, sd-turbo), loaded.
pub struct StableDiffusion {
    id: String,
    tokenizer: PromptTokenizer,
    text_encoder: ClipTextEncoder,
    unet: UNet2DConditionModel,
    vae: Autoencoder,
    scaling_factor: f64,
    vae_scale: usize,
    latent_channels: usize,
    scheduler_kind: SchedulerKind,
    scheduler_config: SchedulerConfig,
    default_side: usize,
    turbo: bool,
    weight_bytes: u64,
    device: Device,
}

impl std::fmt::Debug for StableDiffusion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StableDiffusion")
            .field("id", &self.id)
            .field("scheduler", &self.scheduler_kind)
            .field("turbo", &self.turbo)
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
/// image-to-image: the noise added at the first step) and for image-to-image
/// the standard normal noise of the posterior sample.
#[derive(Debug, Clone)]
pub struct Noise {
    /// Initial latents or added noise.
    pub latents: Tensor,
    /// The posterior sample's noise (image-to-image).
    pub posterior: Option<Tensor>,
}

impl Noise {
    /// Standard normal draws of `shape` from `seed` (two streams: latents
    /// and, when `posterior`, the posterior's).
    pub fn seeded(
        seed: u64,
        shape: (usize, usize, usize, usize),
        posterior: bool,
        device: &Device,
    ) -> candle_core::Result<Self> {
        let mut rng = SeededNormal::new(seed);
        let count = shape.0 * shape.1 * shape.2 * shape.3;
        let mut draw = || -> candle_core::Result<Tensor> {
            let values: Vec<f32> = (0..count).map(|_| rng.sample()).collect();
            Tensor::from_vec(values, shape, device)
        };
        let posterior = if posterior { Some(draw()?) } else { None };
        Ok(Self {
            latents: draw()?,
            posterior,
        })
    }
}

impl StableDiffusion {
    /// Load a diffusers Stable Diffusion repository.
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
                PIPELINE_CLASSES.join(" and ")
            )));
        }
        let config_error = |file: &str, e: String| files.load_error(format!("{file}: {e}"));
        let unet_config: UnetConfig = files.json("unet/config.json")?;
        let candle_unet = unet_config
            .to_candle()
            .map_err(|e| config_error("unet/config.json", e))?;
        let vae_config: VaeConfig = files.json("vae/config.json")?;
        vae_config
            .check()
            .map_err(|e| config_error("vae/config.json", e))?;
        let text_config: TowerConfig = files.json("text_encoder/config.json")?;
        text_config
            .check("text_encoder/config.json")
            .map_err(|e| files.load_error(e))?;
        let latent = vae_config.latent_channels;
        if unet_config.in_channels != latent || unet_config.out_channels != latent {
            return Err(LocalError::Unsupported(format!(
                "{}: the UNet takes {} channels for {latent} latent channels (an inpainting or \
                 depth model?); hgpt runs plain text-to-image and image-to-image UNets",
                files.id(),
                unet_config.in_channels
            )));
        }
        if unet_config.cross_attention_dim != text_config.hidden_size {
            return Err(files.load_error(format!(
                "the UNet attends to {}-wide text embeddings; the text encoder gives {}",
                unet_config.cross_attention_dim, text_config.hidden_size
            )));
        }
        let scheduler_config: SchedulerConfig = files.json("scheduler/scheduler_config.json")?;
        let class = scheduler_config.class_name.clone().unwrap_or_default();
        let scheduler_kind = SchedulerKind::from_class(&class).unwrap_or_else(|| {
            tracing::warn!(
                "{}: scheduler {class:?} is not one hgpt runs; using {FALLBACK_SCHEDULER:?} with its config",
                files.id()
            );
            FALLBACK_SCHEDULER
        });
        // Check the scheduler config once, at load.
        Scheduler::new(scheduler_kind, &scheduler_config, 1)
            .map_err(|e| config_error("scheduler/scheduler_config.json", e))?;

        let load_part = |names: &str, what: &str| {
            files
                .weights_from(names, device)
                .map(|w| (w.vb, in_memory_bytes(w.bytes, &w.file)))
                .map_err(|e| match e {
                    LocalError::Load { model, message } => LocalError::Load {
                        model,
                        message: format!("{what}: {message}"),
                    },
                    other => other,
                })
        };
        let loaded = |what: &str| {
            let what = what.to_string();
            move |e: candle_core::Error| files.load_error(format!("{what}: {e}"))
        };
        let (text_vb, text_bytes) = load_part(TEXT_WEIGHTS, "text_encoder")?;
        let text_encoder = ClipTextEncoder::load(&text_config, text_vb.pp("text_model"))
            .map_err(loaded("text_encoder"))?;
        let tokenizer = PromptTokenizer::load(files, text_config.max_position_embeddings)?;
        let (unet_vb, unet_bytes) = load_part(UNET_WEIGHTS, "unet")?;
        let unet = UNet2DConditionModel::new(
            unet_vb,
            unet_config.in_channels,
            unet_config.out_channels,
            false,
            candle_unet,
        )
        .map_err(loaded("unet"))?;
        let (vae_vb, vae_bytes) = load_part(VAE_WEIGHTS, "vae")?;
        let vae = Autoencoder::load(&vae_config, vae_vb).map_err(loaded("vae"))?;

        let vae_scale = vae_config.scale_factor();
        let turbo = is_turbo(files.id(), scheduler_kind, &scheduler_config);
        Ok(Self {
            id: files.id().to_string(),
            tokenizer,
            text_encoder,
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
                .min(MAX_PIXELS.isqrt() / 8 * 8),
            turbo,
            weight_bytes: text_bytes + unet_bytes + vae_bytes,
            device: device.clone(),
        })
    }

    /// The ids the text encoder reads for a prompt (padded to its length).
    pub fn prompt_ids(&self, prompt: &str) -> Result<Vec<u32>, LocalError> {
        self.tokenizer.ids(prompt)
    }

    /// Whether the model runs as a distilled turbo model (one step, no
    /// guidance by default).
    pub fn is_turbo(&self) -> bool {
        self.turbo
    }

    /// The request an invocation asks for, the model's defaults filling in
    /// what it leaves out (see [`Defaults`]).
    pub fn request(
        &self,
        task: TaskKind,
        args: &ResolvedArgs,
    ) -> Result<GenerationRequest, LocalError> {
        let defaults = Defaults::for_model(self.turbo, task);
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
        if width * height > MAX_PIXELS {
            return Err(bad_input(
                task,
                format!("{width}x{height} is more than the {MAX_PIXELS} pixels hgpt makes"),
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
        let noise = Noise::seeded(request.seed, shape, prepared.is_some(), &self.device)?;
        let decoded = self.denoise(request, prepared.as_ref(), &noise, on_step)?;
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
        self.denoise(request, prepared.as_ref(), noise, on_step)
    }

    /// The init image as `VaeImageProcessor.preprocess` makes it: each side
    /// cut down to a multiple of the VAE's scale (Lanczos resize), values
    /// in [-1, 1], `[1, 3, h, w]`.
    fn prepare_init(&self, request: &GenerationRequest) -> Result<Option<Tensor>, LocalError> {
        let Some(init) = &request.init else {
            return Ok(None);
        };
        let task = TaskKind::ImageToImage;
        let (w, h) = fitted_size(init.image.width() as usize, init.image.height() as usize);
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
        if width.max(height) > MAX_SIDE || width * height > MAX_PIXELS {
            return Err(bad_input(
                task,
                format!(
                    "a {w}x{h} image is larger than hgpt reads (sides up to {MAX_SIDE}, {MAX_PIXELS} pixels)"
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

    /// The prompt embeddings `[1 or 2, tokens, width]`: the negative (or
    /// empty) prompt's first when guiding.
    fn text_embeddings(
        &self,
        request: &GenerationRequest,
        guide: bool,
    ) -> Result<Tensor, LocalError> {
        let mut ids = Vec::new();
        let mut rows = 1;
        if guide {
            ids.extend(
                self.tokenizer
                    .ids(request.negative_prompt.as_deref().unwrap_or(""))?,
            );
            rows = 2;
        }
        ids.extend(self.tokenizer.ids(&request.prompt)?);
        let tokens = Tensor::from_vec(ids, (rows, self.tokenizer.length()), &self.device)?;
        Ok(self.text_encoder.hidden_states(&tokens)?)
    }

    fn denoise(
        &self,
        request: &GenerationRequest,
        init: Option<&Tensor>,
        noise: &Noise,
        on_step: &dyn Fn(usize, usize),
    ) -> Result<Tensor, LocalError> {
        let task = request_task(request);
        let mut scheduler = Scheduler::new(
            self.scheduler_kind,
            &self.scheduler_config,
            request.num_inference_steps,
        )
        .map_err(|e| bad_input(task, e))?;
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
        let embeddings = self.text_embeddings(request, guide)?;
        let total = count - start;
        for (done, index) in (start..count).enumerate() {
            let timestep = scheduler.timesteps()[index];
            let input = if guide {
                Tensor::cat(&[&latents, &latents], 0)?
            } else {
                latents.clone()
            };
            let input = scheduler.scale_model_input(&input, index)?;
            let mut prediction = self.unet.forward(&input, timestep, &embeddings)?;
            if guide {
                let unconditional = prediction.narrow(0, 0, 1)?;
                let conditional = prediction.narrow(0, 1, 1)?;
                let steer = ((conditional - &unconditional)? * request.guidance_scale)?;
                prediction = (unconditional + steer)?;
            }
            latents = scheduler.step(index, &prediction, &latents)?;
            on_step(done + 1, total);
        }
        let decoded = self.vae.decode(&(latents / self.scaling_factor)?)?;
        Ok(decoded.squeeze(0)?)
    }
}

/// The pipelines' post-processing: `[3, h, w]` around [-1, 1] to 8-bit RGB
/// The size an image-to-image input is drawn at: its own, or scaled down
/// (shape kept) to fit [`MAX_PIXELS`] and [`MAX_SIDE`]; diffusers would draw
/// it at its full size.
fn fitted_size(width: usize, height: usize) -> (usize, usize) {
    let (w, h) = (width.max(1) as f64, height.max(1) as f64);
    let fit = (MAX_PIXELS as f64 / (w * h))
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

/// A request's defaults: diffusers' pipeline defaults (50 steps, guidance
/// 7.5, img2img strength 0.8), or the turbo models' cards (text-to-image: 1
/// step, no guidance; image-to-image: 2 steps, strength 0.5).
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
    /// The defaults of a model (`turbo` or not) for a task.
    pub fn for_model(turbo: bool, task: TaskKind) -> Self {
        match (turbo, task) {
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
/// `turbo` (stabilityai/sd-turbo), or it ships the turbo models' scheduler
/// (Euler with trailing timesteps, which spends a single step on the whole
/// schedule; SD 1.5 and 2.1 ship PNDM or DDIM with leading ones).
pub fn is_turbo(id: &str, kind: SchedulerKind, config: &SchedulerConfig) -> bool {
    let name = id.rsplit('/').next().unwrap_or(id).to_ascii_lowercase();
    name.contains("turbo")
        || (kind == SchedulerKind::Euler && config.spacing(kind) == TimestepSpacing::Trailing)
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
        assert_eq!(fitted_size(640, 480), (640, 480));
        let (w, h) = fitted_size(4000, 3000);
        assert!(
            w * h <= MAX_PIXELS && w * h > MAX_PIXELS * 9 / 10,
            "{w}x{h}"
        );
        assert!((w as f64 / h as f64 - 4.0 / 3.0).abs() < 0.01);
        let (w, h) = fitted_size(20_000, 10);
        assert!(w <= MAX_SIDE && h >= 1, "{w}x{h}");
    }

    #[test]
    fn seeded_noise_is_standard_normal_and_repeatable() {
        let a = Noise::seeded(7, (1, 4, 16, 16), true, &Device::Cpu).unwrap();
        let b = Noise::seeded(7, (1, 4, 16, 16), true, &Device::Cpu).unwrap();
        let values = a.latents.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(
            values,
            b.latents.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
        let n = values.len() as f32;
        let mean = values.iter().sum::<f32>() / n;
        let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / n;
        assert!(mean.abs() < 0.1 && (var - 1.0).abs() < 0.15, "{mean} {var}");
        let other = Noise::seeded(8, (1, 4, 16, 16), false, &Device::Cpu).unwrap();
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
            Defaults::for_model(true, TaskKind::ImageToImage),
            Defaults {
                steps: 2,
                guidance_scale: 0.0,
                strength: 0.5
            }
        );
        assert_eq!(Defaults::for_model(false, TaskKind::TextToImage).steps, 50);
    }
}
