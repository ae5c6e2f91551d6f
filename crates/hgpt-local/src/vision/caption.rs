//! Image captioning (image-to-text) as the transformers pipeline does it: the
//! model's image processor, generation (greedy, or beam search) with the
//! model's generation settings, then the tokenizer's
//! `decode(skip_special_tokens=True)`.
//!
//! Families: vision-encoder-decoder ViT + GPT-2
//! (`nlpconnect/vit-gpt2-image-captioning`) and BLIP
//! (`Salesforce/blip-image-captioning-base`, [`super::blip`]).

use super::encoder::{VitConfig, VitModel};
use super::gpt2::{Gpt2Config, Gpt2Decoder};
use super::preprocess::{ImageProcessor, ProcessorKind, decode_image};
use super::{generation_for, image_bytes};
use crate::error::LocalError;
use crate::files::{ModelFiles, WEIGHTS};
use crate::generate::{GenerationConfig, GenerationTokenizer, generate};
use crate::pipeline::Pipeline;
use candle_core::{Device, Tensor};
use candle_nn::{Linear, VarBuilder, linear};
use hgpt_core::backend::ResolvedArgs;
use hgpt_core::output::InferenceOutput;
use hgpt_core::task::TaskKind;
use serde::Deserialize;
use serde_json::Value;

/// ViT's default `image_size`.
const VIT_IMAGE_SIZE: (usize, usize) = (224, 224);

/// A captioning network: pixel values in, generated ids out.
pub trait CaptionModel: Send + Sync {
    /// The ids of the caption of one image (`[1, 3, H, W]`), prompt included.
    fn generate(
        &self,
        pixel_values: &Tensor,
        generation: &GenerationConfig,
    ) -> Result<Vec<u32>, LocalError>;
}

#[derive(Debug, Deserialize)]
struct EncoderDecoderConfig {
    encoder: Value,
    decoder: Value,
    #[serde(default)]
    decoder_start_token_id: Option<u32>,
}

fn model_type(config: &Value) -> &str {
    config
        .get("model_type")
        .and_then(Value::as_str)
        .unwrap_or("unknown")
}

/// `VisionEncoderDecoderModel` with a ViT encoder and a GPT-2 decoder.
#[derive(Debug, Clone)]
pub struct VitGpt2 {
    encoder: VitModel,
    projection: Option<Linear>,
    decoder: Gpt2Decoder,
    start_token: u32,
    grid: (usize, usize),
    patch_size: usize,
}

impl VitGpt2 {
    /// Build from a `vision-encoder-decoder` config and weights (`encoder.*`,
    /// `decoder.*`, `enc_to_dec_proj.*` when the widths differ).
    pub fn load(
        files: &ModelFiles,
        generation: &GenerationConfig,
        vb: VarBuilder,
    ) -> Result<Self, LocalError> {
        let config: EncoderDecoderConfig = files.json("config.json")?;
        let bad = |e: String| files.load_error(format!("config.json: {e}"));
        let (encoder_type, decoder_type) =
            (model_type(&config.encoder), model_type(&config.decoder));
        if encoder_type != "vit" || decoder_type != "gpt2" {
            return Err(LocalError::Unsupported(format!(
                "hgpt runs vision-encoder-decoder models with a ViT encoder and a GPT-2 decoder; {} has a {encoder_type:?} encoder and a {decoder_type:?} decoder",
                files.id()
            )));
        }
        let encoder_config: VitConfig =
            serde_json::from_value(config.encoder).map_err(|e| bad(format!("encoder: {e}")))?;
        let grid = encoder_config
            .check(VIT_IMAGE_SIZE)
            .map_err(|e| bad(format!("encoder: {e}")))?;
        let decoder_config: Gpt2Config =
            serde_json::from_value(config.decoder).map_err(|e| bad(format!("decoder: {e}")))?;
        decoder_config
            .check()
            .map_err(|e| bad(format!("decoder: {e}")))?;
        let start_token = generation
            .decoder_start_token_id
            .or(config.decoder_start_token_id)
            .or(generation.bos_token_id)
            .ok_or_else(|| bad("no decoder_start_token_id or bos_token_id".into()))?;
        if start_token as usize >= decoder_config.vocab_size {
            return Err(bad(format!(
                "decoder_start_token_id {start_token} is outside the vocabulary of {}",
                decoder_config.vocab_size
            )));
        }
        let weights = |e: candle_core::Error| files.load_error(format!("weights: {e}"));
        let encoder = VitModel::load(&encoder_config, grid, vb.pp("encoder")).map_err(weights)?;
        let projection = if encoder_config.hidden_size == decoder_config.n_embd {
            None
        } else {
            Some(
                linear(
                    encoder_config.hidden_size,
                    decoder_config.n_embd,
                    vb.pp("enc_to_dec_proj"),
                )
                .map_err(weights)?,
            )
        };
        let decoder = Gpt2Decoder::load(&decoder_config, vb.pp("decoder")).map_err(weights)?;
        Ok(Self {
            encoder,
            projection,
            decoder,
            start_token,
            grid,
            patch_size: encoder_config.patch_size,
        })
    }

    /// The encoder's states as the decoder's cross-attention sees them
    /// (projected when the widths differ): `[1, tokens, n_embd]`.
    pub fn encode(&self, pixel_values: &Tensor) -> Result<Tensor, LocalError> {
        let states = self.encoder.forward(pixel_values)?;
        Ok(match &self.projection {
            Some(projection) => states.apply(projection)?,
            None => states,
        })
    }

    /// The encoder's own final states (before any projection).
    pub fn encoder_states(&self, pixel_values: &Tensor) -> Result<Tensor, LocalError> {
        Ok(self.encoder.forward(pixel_values)?)
    }

    /// Decoder logits `[tokens, vocab]` for teacher-forced `tokens`.
    pub fn logits(&self, pixel_values: &Tensor, tokens: &[u32]) -> Result<Tensor, LocalError> {
        let states = self.encode(pixel_values)?;
        Ok(self.decoder.logits(&states, tokens)?.squeeze(0)?)
    }

    /// The GPT-2 decoder.
    pub fn decoder(&self) -> &Gpt2Decoder {
        &self.decoder
    }

    /// The input size the encoder takes, `(height, width)`.
    fn input_size(&self) -> (usize, usize) {
        (self.grid.0 * self.patch_size, self.grid.1 * self.patch_size)
    }
}

impl CaptionModel for VitGpt2 {
    fn generate(
        &self,
        pixel_values: &Tensor,
        generation: &GenerationConfig,
    ) -> Result<Vec<u32>, LocalError> {
        let states = self.encode(pixel_values)?;
        let session = self.decoder.session(&states)?;
        Ok(generate(session, &[self.start_token], generation)?.ids)
    }
}

/// A loaded image-to-text pipeline.
pub struct ImageCaptioner {
    model: Box<dyn CaptionModel>,
    processor: ImageProcessor,
    tokenizer: GenerationTokenizer,
    generation: GenerationConfig,
    device: Device,
    weight_bytes: u64,
}

impl ImageCaptioner {
    /// Load a ViT + GPT-2 vision-encoder-decoder model (`config.json`,
    /// `preprocessor_config.json`, the weights, and `tokenizer.json` or
    /// `vocab.json` + `merges.txt`).
    pub fn load_vit_gpt2(files: &ModelFiles, device: &Device) -> Result<Self, LocalError> {
        files.require(&["config.json", "preprocessor_config.json", WEIGHTS])?;
        let generation = GenerationConfig::load(files, "decoder")?;
        generation.warn_unapplied(files.id());
        let processor = ImageProcessor::load(files, ProcessorKind::Classification)?;
        let tokenizer = GenerationTokenizer::load(files)?;
        let weights = files.weights(device)?;
        let model = VitGpt2::load(files, &generation, weights.vb)?;
        let (h, w) = model.input_size();
        if let Some((ph, pw)) = processor.fixed_output()
            && (ph as usize, pw as usize) != (h, w)
        {
            return Err(files.load_error(format!(
                "preprocessor_config.json makes {pw}x{ph} images but the model takes {w}x{h}"
            )));
        }
        Ok(Self {
            model: Box::new(model),
            processor,
            tokenizer,
            generation,
            device: device.clone(),
            weight_bytes: weights.bytes,
        })
    }

    /// Load a BLIP captioning model (`BlipForConditionalGeneration`:
    /// `config.json`, `preprocessor_config.json`, the weights,
    /// `tokenizer.json`).
    pub fn load_blip(files: &ModelFiles, device: &Device) -> Result<Self, LocalError> {
        files.require(&[
            "config.json",
            "preprocessor_config.json",
            "tokenizer.json",
            WEIGHTS,
        ])?;
        let generation = GenerationConfig::load(files, "text_config")?;
        generation.warn_unapplied(files.id());
        let tokenizer = GenerationTokenizer::load(files)?;
        let (model, processor, weight_bytes) = super::blip::load_captioner(files, device)?;
        Ok(Self {
            model: Box::new(model),
            processor,
            tokenizer,
            generation,
            device: device.clone(),
            weight_bytes,
        })
    }

    /// The generation settings in force.
    pub fn generation(&self) -> &GenerationConfig {
        &self.generation
    }

    /// The generated ids for an image under `generation` (see
    /// [`ImageCaptioner::generation`] for the model's own settings).
    pub fn generate_ids(
        &self,
        image: &image::RgbImage,
        generation: &GenerationConfig,
    ) -> Result<Vec<u32>, LocalError> {
        let task = TaskKind::ImageToText;
        let pixel_values = self.processor.preprocess(task, image, &self.device)?;
        self.model.generate(&pixel_values, generation)
    }

    /// The caption of an image under `generation`.
    pub fn caption(
        &self,
        image: &image::RgbImage,
        generation: &GenerationConfig,
    ) -> Result<String, LocalError> {
        let ids = self.generate_ids(image, generation)?;
        self.tokenizer.decode(&ids)
    }
}

impl Pipeline for ImageCaptioner {
    fn tasks(&self) -> &[TaskKind] {
        &[TaskKind::ImageToText]
    }

    fn run(&self, task: TaskKind, args: &ResolvedArgs) -> Result<InferenceOutput, LocalError> {
        if task != TaskKind::ImageToText {
            return Err(LocalError::Unsupported(format!(
                "an image captioner cannot do {task}"
            )));
        }
        let generation = generation_for(task, args, &self.generation)?;
        let image = decode_image(task, image_bytes(task, args)?)?;
        Ok(InferenceOutput::Text(self.caption(&image, &generation)?))
    }

    fn weight_bytes(&self) -> u64 {
        self.weight_bytes
    }
}
