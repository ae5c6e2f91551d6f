//! Image classification with ViT checkpoints (`ViTForImageClassification`):
//! the `[CLS]` token after the final LayerNorm goes through `classifier`.

use super::encoder::{VitConfig, VitModel};
use super::preprocess::{ImageProcessor, ProcessorKind, decode_image};
use super::{image_bytes, number_arg};
use crate::error::{LocalError, bad_input};
use crate::files::ModelFiles;
use crate::files::WEIGHTS;
use crate::pipeline::Pipeline;
use crate::text::postprocess::{ScoreFunction, ranked_labels};
use candle_core::{Device, Tensor};
use candle_nn::{Linear, VarBuilder, linear};
use hgpt_core::backend::ResolvedArgs;
use hgpt_core::output::{InferenceOutput, ScoredLabel};
use hgpt_core::task::TaskKind;
use image::RgbImage;
use serde_json::Value;

/// ViT's default `image_size`.
const DEFAULT_IMAGE_SIZE: (usize, usize) = (224, 224);

/// The transformers pipeline's default number of labels returned.
pub const DEFAULT_TOP_K: usize = 5;

/// The ViT classification network.
#[derive(Debug, Clone)]
pub struct VitForImageClassification {
    vit: VitModel,
    classifier: Linear,
}

impl VitForImageClassification {
    /// Build from weights named as transformers saves them (`vit.*`,
    /// `classifier.*`); `grid` is the patch grid of the configured image size.
    pub fn load(
        cfg: &VitConfig,
        grid: (usize, usize),
        num_labels: usize,
        vb: VarBuilder,
    ) -> candle_core::Result<Self> {
        Ok(Self {
            vit: VitModel::load(cfg, grid, vb.pp("vit"))?,
            classifier: linear(cfg.hidden_size, num_labels, vb.pp("classifier"))?,
        })
    }

    /// Logits `[batch, num_labels]` for pixel values `[batch, 3, H, W]`.
    pub fn forward(&self, pixel_values: &Tensor) -> candle_core::Result<Tensor> {
        self.vit
            .forward(pixel_values)?
            .narrow(1, 0, 1)?
            .squeeze(1)?
            .apply(&self.classifier)
    }
}

/// A loaded image-classification pipeline.
pub struct ImageClassifier {
    model: VitForImageClassification,
    processor: ImageProcessor,
    labels: Vec<String>,
    default_function: ScoreFunction,
    device: Device,
    weight_bytes: u64,
}

impl ImageClassifier {
    /// Load from a model's files (`config.json`, `preprocessor_config.json`,
    /// `model.safetensors` or `pytorch_model.bin`).
    pub fn load(files: &ModelFiles, device: &Device) -> Result<Self, LocalError> {
        files.require(&["config.json", "preprocessor_config.json", WEIGHTS])?;
        let config: VitConfig = files.json("config.json")?;
        let grid = config
            .check(DEFAULT_IMAGE_SIZE)
            .map_err(|e| files.load_error(format!("config.json: {e}")))?;
        let processor = ImageProcessor::load(files, ProcessorKind::Classification)?;
        let (h, w) = config.image_size.map_or(DEFAULT_IMAGE_SIZE, |s| s.hw());
        if let Some((ph, pw)) = processor.fixed_output()
            && (
                ph as usize / config.patch_size,
                pw as usize / config.patch_size,
            ) != grid
        {
            return Err(files.load_error(format!(
                "preprocessor_config.json makes {pw}x{ph} images but the model takes {w}x{h}"
            )));
        }
        let num_labels = config.num_labels();
        let weights = files.weights(device)?;
        let weight_bytes = weights.bytes;
        let model = VitForImageClassification::load(&config, grid, num_labels, weights.vb)
            .map_err(|e| files.load_error(format!("{}: {e}", weights.file)))?;
        // As the transformers pipeline: sigmoid for multi-label or one-label
        // models, softmax otherwise.
        let default_function = if config.problem_type.as_deref()
            == Some("multi_label_classification")
            || num_labels == 1
        {
            ScoreFunction::Sigmoid
        } else {
            ScoreFunction::Softmax
        };
        Ok(Self {
            model,
            processor,
            labels: config.labels(num_labels),
            default_function,
            device: device.clone(),
            weight_bytes,
        })
    }

    /// The preprocessing settings.
    pub fn processor(&self) -> &ImageProcessor {
        &self.processor
    }

    /// The labels by class index.
    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// Logits per image for pixel values `[batch, 3, H, W]`.
    pub fn logits(&self, pixel_values: &Tensor) -> Result<Vec<Vec<f32>>, LocalError> {
        let pixel_values = pixel_values.to_device(&self.device)?;
        Ok(self.model.forward(&pixel_values)?.to_vec2::<f32>()?)
    }

    /// Classify a decoded image: scores sorted descending, cut to `top_k`
    /// (default 5, at most the number of labels).
    pub fn classify(
        &self,
        image: &RgbImage,
        top_k: Option<usize>,
        function: Option<ScoreFunction>,
    ) -> Result<Vec<ScoredLabel>, LocalError> {
        let task = TaskKind::ImageClassification;
        let pixel_values = self.processor.preprocess(task, image, &self.device)?;
        let logits = self.logits(&pixel_values)?;
        let row = logits
            .first()
            .ok_or_else(|| LocalError::Compute("the model returned no logits".into()))?;
        Ok(ranked_labels(
            row,
            &self.labels,
            Some(top_k.unwrap_or(DEFAULT_TOP_K)),
            function.unwrap_or(self.default_function),
        ))
    }
}

impl Pipeline for ImageClassifier {
    fn tasks(&self) -> &[TaskKind] {
        &[TaskKind::ImageClassification]
    }

    fn run(&self, task: TaskKind, args: &ResolvedArgs) -> Result<InferenceOutput, LocalError> {
        if task != TaskKind::ImageClassification {
            return Err(LocalError::Unsupported(format!(
                "an image classifier cannot do {task}"
            )));
        }
        let top_k = match number_arg(task, args, "top_k")? {
            None => None,
            Some(k) if k >= 0.0 && k.fract() == 0.0 => Some(k as usize),
            Some(k) => {
                return Err(bad_input(
                    task,
                    format!("top_k must be a non-negative integer, not {k}"),
                ));
            }
        };
        let function = match args.other.get("function_to_apply") {
            None | Some(Value::Null) => None,
            Some(Value::String(name)) => Some(ScoreFunction::parse(name).ok_or_else(|| {
                bad_input(
                    task,
                    format!("function_to_apply must be softmax, sigmoid or none, not {name:?}"),
                )
            })?),
            Some(other) => {
                return Err(bad_input(
                    task,
                    format!("function_to_apply must be a string, not {other}"),
                ));
            }
        };
        let image = decode_image(task, image_bytes(task, args)?)?;
        Ok(InferenceOutput::Labels(
            self.classify(&image, top_k, function)?,
        ))
    }

    fn weight_bytes(&self) -> u64 {
        self.weight_bytes
    }
}
