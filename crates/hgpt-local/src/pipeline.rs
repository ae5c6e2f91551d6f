//! The seam between the backend and the model families: a loaded pipeline
//! answers requests of its task types with the wire protocol's shapes.

use crate::error::LocalError;
use crate::files::ModelFiles;
use candle_core::Device;
use hgpt_core::backend::{ResolvedArgs, StepProgress};
use hgpt_core::output::InferenceOutput;
use hgpt_core::task::TaskKind;
use serde::Deserialize;

/// A model loaded and ready to run. Running is CPU- or GPU-bound: callers run
/// it on a blocking thread.
pub trait Pipeline: Send + Sync {
    /// The task types it serves.
    fn tasks(&self) -> &[TaskKind];
    /// Run one request.
    fn run(&self, task: TaskKind, args: &ResolvedArgs) -> Result<InferenceOutput, LocalError>;
    /// Run one request, reporting its steps where the model has any (a
    /// diffusion model's denoising steps); others keep the default, [`Self::run`].
    fn run_with_progress(
        &self,
        task: TaskKind,
        args: &ResolvedArgs,
        _progress: &dyn Fn(StepProgress),
    ) -> Result<InferenceOutput, LocalError> {
        self.run(task, args)
    }
    /// Bytes of weights it holds (for the memory budget).
    fn weight_bytes(&self) -> u64;
}

/// The part of `config.json` that tells which family a model is (for a
/// diffusers repository, which has `model_index.json` instead, the
/// pipeline class as its architecture and [`DIFFUSERS`] as its type).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ModelKind {
    /// `bert`, `distilbert`, `roberta`, `xlm-roberta`, `vit`, `yolos`, ...
    #[serde(default)]
    pub model_type: Option<String>,
    /// `BertForSequenceClassification`, ...
    #[serde(default)]
    pub architectures: Vec<String>,
    /// A composite model's encoder (`vision-encoder-decoder`).
    #[serde(default)]
    pub encoder: Option<PartKind>,
    /// A composite model's decoder.
    #[serde(default)]
    pub decoder: Option<PartKind>,
    /// A separate backbone (`backbone_config`: DETR's ResNet, DPT-hybrid's
    /// BiT, Depth Anything's DINOv2).
    #[serde(default)]
    pub backbone_config: Option<PartKind>,
}

/// The `model_type` given to diffusers repositories (`model_index.json`).
pub const DIFFUSERS: &str = "diffusers";

/// `model_index.json`: the pipeline class.
#[derive(Debug, Deserialize)]
struct ModelIndex {
    #[serde(rename = "_class_name")]
    class_name: String,
}

impl ModelKind {
    /// What a model is, from its `config.json`, or for a diffusers
    /// repository (no `config.json`) its `model_index.json`.
    pub fn read(files: &ModelFiles) -> Result<Self, LocalError> {
        if files.get("config.json").is_none() && files.get("model_index.json").is_some() {
            let index: ModelIndex = files.json("model_index.json")?;
            return Ok(Self::diffusers(index.class_name));
        }
        files.json("config.json")
    }

    /// A diffusers pipeline of this `_class_name`.
    pub fn diffusers(class_name: String) -> Self {
        Self {
            model_type: Some(DIFFUSERS.to_string()),
            architectures: vec![class_name],
            ..Self::default()
        }
    }
}

/// The `model_type` of one part of a composite model.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct PartKind {
    /// `vit`, `gpt2`, ...
    #[serde(default)]
    pub model_type: Option<String>,
}

/// How a family's checkpoints name their task head (`config.json`
/// `architectures`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Head {
    /// Exactly this class (`ViTForImageClassification`).
    Class(&'static str),
    /// Any class ending so (`BertForSequenceClassification` for
    /// `ForSequenceClassification`).
    Suffix(&'static str),
    /// A bare encoder (`BertModel`); checkpoints of the family with any head
    /// load for it too.
    Bare,
}

impl Head {
    fn matches(self, architecture: &str) -> bool {
        match self {
            Self::Class(class) => architecture == class,
            Self::Suffix(suffix) => architecture.ends_with(suffix),
            Self::Bare => {
                architecture.ends_with("Model")
                    && !architecture.contains("For")
                    && !architecture.contains("Head")
                    && !architecture.ends_with("PreTrainedModel")
            }
        }
    }

    fn describe(self) -> String {
        match self {
            Self::Class(class) => class.to_string(),
            Self::Suffix(suffix) => format!("*{suffix}"),
            Self::Bare => "*Model".to_string(),
        }
    }
}

/// Loads a checkpoint of a family for one of its tasks.
pub type Loader = fn(TaskKind, &ModelFiles, &Device) -> Result<Box<dyn Pipeline>, LocalError>;

/// A model family hgpt runs locally: which checkpoints it takes, which task
/// each head serves, and how to load one.
pub struct Family {
    /// How messages name it.
    pub name: &'static str,
    /// The `config.json` `model_type`s of its checkpoints.
    pub model_types: &'static [&'static str],
    /// Its heads and the task each serves (a head may serve several).
    pub heads: &'static [(Head, TaskKind)],
    /// For composite models: the encoder and decoder `model_type`s it runs.
    pub parts: Option<(&'static [&'static str], &'static [&'static str])>,
    /// The `model_type`s of the separate backbones (`backbone_config`) it
    /// runs; a checkpoint naming another backbone is not the family's.
    pub backbones: &'static [&'static str],
    /// Loads a checkpoint.
    pub load: Loader,
}

impl std::fmt::Debug for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Family")
            .field("name", &self.name)
            .field("model_types", &self.model_types)
            .field("heads", &self.heads)
            .finish_non_exhaustive()
    }
}

impl Family {
    /// Whether some head of the family serves the task.
    pub fn serves(&self, task: TaskKind) -> bool {
        self.heads.iter().any(|(_, t)| *t == task)
    }

    /// Whether this checkpoint is of the family and has a head for `task`
    /// (a checkpoint with no `architectures` is taken by its `model_type`).
    fn accepts(&self, kind: &ModelKind, task: TaskKind) -> bool {
        if !self.runs(kind) {
            return false;
        }
        let heads = || self.heads.iter().filter(move |(_, t)| *t == task);
        if kind.architectures.is_empty() {
            return kind.model_type.is_some() && heads().next().is_some();
        }
        heads().any(|(head, _)| {
            (*head == Head::Bare && kind.model_type.is_some())
                || kind.architectures.iter().any(|a| head.matches(a))
        })
    }
}

impl Family {
    /// Whether the checkpoint's `model_type`, parts and backbone are ones
    /// this family runs (whatever its head).
    fn runs(&self, kind: &ModelKind) -> bool {
        let backbone = kind
            .backbone_config
            .as_ref()
            .and_then(|b| b.model_type.as_deref());
        kind.model_type
            .as_deref()
            .is_none_or(|m| self.model_types.contains(&m))
            && self.runs_parts(kind)
            && backbone.is_none_or(|b| self.backbones.contains(&b))
    }

    /// Whether a composite checkpoint's encoder and decoder are ones this
    /// family runs (always true for other families).
    fn runs_parts(&self, kind: &ModelKind) -> bool {
        let Some((encoders, decoders)) = self.parts else {
            return true;
        };
        let part = |p: &Option<PartKind>, allowed: &[&str]| {
            p.as_ref()
                .and_then(|p| p.model_type.as_deref())
                .is_some_and(|t| allowed.contains(&t))
        };
        part(&kind.encoder, encoders) && part(&kind.decoder, decoders)
    }
}

/// Every family hgpt runs locally. A new family is its module plus one line
/// here.
pub static FAMILIES: &[Family] = &[
    Family {
        name: "BERT sentence embedding",
        model_types: &["bert"],
        heads: &[
            (Head::Bare, TaskKind::FeatureExtraction),
            (Head::Bare, TaskKind::SentenceSimilarity),
        ],
        parts: None,
        backbones: &[],
        load: |_, files, device| {
            Ok(Box::new(crate::embed::SentenceEmbedder::load(
                files, device,
            )?))
        },
    },
    Family {
        name: "BERT, DistilBERT, RoBERTa and XLM-R",
        model_types: &["bert", "distilbert", "roberta", "xlm-roberta"],
        heads: &[
            (
                Head::Suffix("ForSequenceClassification"),
                TaskKind::TextClassification,
            ),
            (
                Head::Suffix("ForTokenClassification"),
                TaskKind::TokenClassification,
            ),
            (
                Head::Suffix("ForQuestionAnswering"),
                TaskKind::QuestionAnswering,
            ),
        ],
        parts: None,
        backbones: &[],
        load: |task, files, device| {
            Ok(Box::new(crate::text::TextPipeline::load(
                task, files, device,
            )?))
        },
    },
    Family {
        name: "ViT",
        model_types: &["vit"],
        heads: &[(
            Head::Class("ViTForImageClassification"),
            TaskKind::ImageClassification,
        )],
        parts: None,
        backbones: &[],
        load: |_, files, device| {
            Ok(Box::new(crate::vision::ImageClassifier::load(
                files, device,
            )?))
        },
    },
    Family {
        name: "YOLOS",
        model_types: &["yolos"],
        heads: &[(
            Head::Class("YolosForObjectDetection"),
            TaskKind::ObjectDetection,
        )],
        parts: None,
        backbones: &[],
        load: |_, files, device| {
            Ok(Box::new(crate::vision::ObjectDetector::load_yolos(
                files, device,
            )?))
        },
    },
    Family {
        name: "DETR",
        model_types: &["detr"],
        heads: &[(
            Head::Class("DetrForObjectDetection"),
            TaskKind::ObjectDetection,
        )],
        parts: None,
        backbones: &["resnet"],
        load: |_, files, device| {
            Ok(Box::new(crate::vision::ObjectDetector::load_detr(
                files, device,
            )?))
        },
    },
    Family {
        name: "SegFormer",
        model_types: &["segformer"],
        heads: &[(
            Head::Class("SegformerForSemanticSegmentation"),
            TaskKind::ImageSegmentation,
        )],
        parts: None,
        backbones: &[],
        load: |_, files, device| Ok(Box::new(crate::vision::Segmenter::load(files, device)?)),
    },
    Family {
        name: "DETR panoptic segmentation",
        model_types: &["detr"],
        heads: &[(
            Head::Class("DetrForSegmentation"),
            TaskKind::ImageSegmentation,
        )],
        parts: None,
        backbones: &["resnet"],
        load: |_, files, device| {
            Ok(Box::new(crate::vision::PanopticSegmenter::load(
                files, device,
            )?))
        },
    },
    Family {
        name: "ViT + GPT-2 vision-encoder-decoder",
        model_types: &["vision-encoder-decoder"],
        heads: &[(
            Head::Class("VisionEncoderDecoderModel"),
            TaskKind::ImageToText,
        )],
        parts: Some((&["vit"], &["gpt2"])),
        backbones: &[],
        load: |_, files, device| {
            Ok(Box::new(crate::vision::ImageCaptioner::load_vit_gpt2(
                files, device,
            )?))
        },
    },
    Family {
        name: "BLIP captioning",
        model_types: &["blip"],
        heads: &[(
            Head::Class("BlipForConditionalGeneration"),
            TaskKind::ImageToText,
        )],
        parts: None,
        backbones: &[],
        load: |_, files, device| {
            Ok(Box::new(crate::vision::ImageCaptioner::load_blip(
                files, device,
            )?))
        },
    },
    Family {
        name: "CLIP",
        model_types: &["clip"],
        heads: &[(
            Head::Class("CLIPModel"),
            TaskKind::ZeroShotImageClassification,
        )],
        parts: None,
        backbones: &[],
        load: |_, files, device| {
            Ok(Box::new(crate::vision::ZeroShotImageClassifier::load(
                files, device,
            )?))
        },
    },
    Family {
        name: "ViLT question answering",
        model_types: &["vilt"],
        heads: &[(
            Head::Class("ViltForQuestionAnswering"),
            TaskKind::VisualQuestionAnswering,
        )],
        parts: None,
        backbones: &[],
        load: |_, files, device| {
            Ok(Box::new(crate::vision::ViltQuestionAnswerer::load(
                files, device,
            )?))
        },
    },
    Family {
        name: "DPT",
        model_types: &["dpt"],
        heads: &[(
            Head::Class("DPTForDepthEstimation"),
            TaskKind::DepthEstimation,
        )],
        parts: None,
        backbones: &["bit"],
        load: |_, files, device| {
            Ok(Box::new(crate::vision::DepthEstimator::load_dpt(
                files, device,
            )?))
        },
    },
    Family {
        name: "Depth Anything",
        model_types: &["depth_anything"],
        heads: &[(
            Head::Class("DepthAnythingForDepthEstimation"),
            TaskKind::DepthEstimation,
        )],
        parts: None,
        backbones: &["dinov2"],
        load: |_, files, device| {
            Ok(Box::new(
                crate::vision::DepthEstimator::load_depth_anything(files, device)?,
            ))
        },
    },
    Family {
        name: "BLIP question answering",
        model_types: &["blip"],
        heads: &[(
            Head::Class("BlipForQuestionAnswering"),
            TaskKind::VisualQuestionAnswering,
        )],
        parts: None,
        backbones: &[],
        load: |_, files, device| {
            Ok(Box::new(crate::vision::BlipQuestionAnswerer::load(
                files, device,
            )?))
        },
    },
    Family {
        name: "wav2vec2",
        model_types: &["wav2vec2"],
        heads: &[
            (
                Head::Class("Wav2Vec2ForCTC"),
                TaskKind::AutomaticSpeechRecognition,
            ),
            (
                Head::Class("Wav2Vec2ForSequenceClassification"),
                TaskKind::AudioClassification,
            ),
        ],
        parts: None,
        backbones: &[],
        load: |task, files, device| {
            Ok(Box::new(crate::wav2vec2::Wav2Vec2Pipeline::load(
                task, files, device,
            )?))
        },
    },
    Family {
        name: "Stable Diffusion",
        model_types: &[DIFFUSERS],
        heads: &[
            (
                Head::Class("StableDiffusionPipeline"),
                TaskKind::TextToImage,
            ),
            (
                Head::Class("StableDiffusionPipeline"),
                TaskKind::ImageToImage,
            ),
            (
                Head::Class("StableDiffusionImg2ImgPipeline"),
                TaskKind::ImageToImage,
            ),
            (
                Head::Class("StableDiffusionImg2ImgPipeline"),
                TaskKind::TextToImage,
            ),
            (
                Head::Class("StableDiffusionXLPipeline"),
                TaskKind::TextToImage,
            ),
            (
                Head::Class("StableDiffusionXLPipeline"),
                TaskKind::ImageToImage,
            ),
            (
                Head::Class("StableDiffusionXLImg2ImgPipeline"),
                TaskKind::ImageToImage,
            ),
            (
                Head::Class("StableDiffusionXLImg2ImgPipeline"),
                TaskKind::TextToImage,
            ),
        ],
        parts: None,
        backbones: &[],
        load: |_, files, device| {
            Ok(Box::new(crate::diffusion::StableDiffusion::load(
                files, device,
            )?))
        },
    },
    Family {
        name: "Audio Spectrogram Transformer",
        model_types: &["audio-spectrogram-transformer"],
        heads: &[(
            Head::Class("ASTForAudioClassification"),
            TaskKind::AudioClassification,
        )],
        parts: None,
        backbones: &[],
        load: |_, files, device| Ok(Box::new(crate::ast::AstClassifier::load(files, device)?)),
    },
    Family {
        name: "VITS",
        model_types: &["vits"],
        heads: &[(Head::Class("VitsModel"), TaskKind::TextToSpeech)],
        parts: None,
        backbones: &[],
        load: |_, files, device| Ok(Box::new(crate::vits::VitsPipeline::load(files, device)?)),
    },
    Family {
        name: "Whisper",
        model_types: &["whisper"],
        heads: &[(
            Head::Class("WhisperForConditionalGeneration"),
            TaskKind::AutomaticSpeechRecognition,
        )],
        parts: None,
        backbones: &[],
        load: |_, files, device| {
            Ok(Box::new(crate::whisper::WhisperPipeline::load(
                files, device,
            )?))
        },
    },
];

/// Load the pipeline serving `task` for a cached model.
pub fn load(
    task: TaskKind,
    files: &ModelFiles,
    device: &Device,
) -> Result<Box<dyn Pipeline>, LocalError> {
    let kind = ModelKind::read(files)?;
    (family_for(task, files.id(), &kind)?.load)(task, files, device)
}

/// The family that runs a checkpoint of this `config.json` for `task`, or
/// an error naming the families that serve the task and what the checkpoint
/// is.
pub fn family_for(
    task: TaskKind,
    id: &str,
    kind: &ModelKind,
) -> Result<&'static Family, LocalError> {
    FAMILIES
        .iter()
        .find(|f| f.accepts(kind, task))
        .ok_or_else(|| unsupported(task, id, kind))
}

/// Why no family runs this checkpoint for `task`: what runs it, and what the
/// checkpoint is.
fn unsupported(task: TaskKind, id: &str, kind: &ModelKind) -> LocalError {
    let serving: Vec<String> = FAMILIES
        .iter()
        .filter(|f| f.serves(task))
        .map(|f| {
            let heads: Vec<String> = f
                .heads
                .iter()
                .filter(|(_, t)| *t == task)
                .map(|(h, _)| h.describe())
                .collect();
            format!("{} checkpoints ({})", f.name, heads.join(", "))
        })
        .collect();
    if serving.is_empty() {
        return LocalError::Unsupported(format!("hgpt has no local pipeline for {task}"));
    }
    if kind.model_type.as_deref() == Some(DIFFUSERS) {
        let class = kind.architectures.join(", ");
        return LocalError::Unsupported(format!(
            "hgpt runs {task} locally with {}; {id} is a diffusers {class}",
            serving.join(" or ")
        ));
    }
    let mut what = match (&kind.model_type, kind.architectures.is_empty()) {
        (None, true) => "config.json names neither model_type nor architectures".to_string(),
        (Some(m), true) => format!("a {m:?} model"),
        (None, false) => kind.architectures.join(", "),
        (Some(m), false) => format!("a {m:?} model ({})", kind.architectures.join(", ")),
    };
    if let Some(backbone) = kind
        .backbone_config
        .as_ref()
        .and_then(|b| b.model_type.as_deref())
    {
        what.push_str(&format!(" on a {backbone:?} backbone"));
    }
    LocalError::Unsupported(format!(
        "hgpt runs {task} locally with {}; {id} is {what}",
        serving.join(" or ")
    ))
}

/// The name of the family that runs a model with these `config.json` fields
/// for `task` (as a catalog or the Hub API lists them), if any.
pub fn family_name(
    task: TaskKind,
    architectures: &[String],
    model_type: Option<&str>,
) -> Option<&'static str> {
    let kind = ModelKind {
        model_type: model_type.map(str::to_string),
        architectures: architectures.to_vec(),
        ..ModelKind::default()
    };
    FAMILIES
        .iter()
        .find(|f| f.accepts(&kind, task))
        .map(|f| f.name)
}

/// Whether the cache holds the model at all: a `config.json`, or a
/// diffusers repository's `model_index.json`.
pub fn is_present(files: &ModelFiles) -> bool {
    files.get("config.json").is_some() || files.get("model_index.json").is_some()
}

/// Whether a cached model has every file a local pipeline reads: a config
/// and weights, or a whole diffusers pipeline.
pub fn is_complete(files: &ModelFiles) -> bool {
    files.has_all(&["config.json", crate::files::WEIGHTS])
        || crate::diffusion::has_every_part(files)
}

/// Whether hgpt has a local pipeline for this task type.
pub fn supports(task: TaskKind) -> bool {
    FAMILIES.iter().any(|f| f.serves(task))
}

/// The task a cached model does by default, from its files: a
/// sentence-transformers layout (`modules.json`) is feature-extraction;
/// otherwise the task of the first family head its `config.json` names
/// (exact classes first, then suffixes like `*ForSequenceClassification`,
/// then bare encoders; a diffusers repository by its `model_index.json`
/// pipeline class). `None` when no family takes it.
pub fn task_of(files: &ModelFiles) -> Option<TaskKind> {
    tasks_of(files).first().copied()
}

/// Every task a cached model does, its default ([`task_of`]) first: the
/// tasks of the best family heads its config names (a Stable Diffusion
/// repository does text-to-image and image-to-image). Empty when no family
/// takes it.
pub fn tasks_of(files: &ModelFiles) -> Vec<TaskKind> {
    if files.get("modules.json").is_some() {
        return vec![TaskKind::FeatureExtraction];
    }
    let Ok(kind) = ModelKind::read(files) else {
        return Vec::new();
    };
    let of_type = |f: &&Family| f.runs(&kind);
    let rank = |head: Head| match head {
        Head::Class(_) => 0,
        Head::Suffix(_) => 1,
        Head::Bare => 2,
    };
    let heads: Vec<(Head, TaskKind)> = FAMILIES
        .iter()
        .filter(of_type)
        .flat_map(|f| f.heads.iter().copied())
        .filter(|(head, _)| kind.architectures.iter().any(|a| head.matches(a)))
        .collect();
    let Some(best) = heads.iter().map(|(head, _)| rank(*head)).min() else {
        return Vec::new();
    };
    let mut tasks: Vec<TaskKind> = Vec::new();
    for (_, task) in heads.iter().filter(|(head, _)| rank(*head) == best) {
        if !tasks.contains(task) {
            tasks.push(*task);
        }
    }
    tasks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files_with(config: &str, extra: &[&str]) -> (tempfile::TempDir, ModelFiles) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), config).unwrap();
        for name in extra {
            std::fs::write(dir.path().join(name), "[]").unwrap();
        }
        let files = ModelFiles::from_dir("org/m", dir.path());
        (dir, files)
    }

    #[test]
    fn tasks_come_from_the_architecture() {
        let cases = [
            (
                "BertForSequenceClassification",
                Some(TaskKind::TextClassification),
            ),
            (
                "RobertaForTokenClassification",
                Some(TaskKind::TokenClassification),
            ),
            (
                "DistilBertForQuestionAnswering",
                Some(TaskKind::QuestionAnswering),
            ),
            (
                "ViTForImageClassification",
                Some(TaskKind::ImageClassification),
            ),
            ("YolosForObjectDetection", Some(TaskKind::ObjectDetection)),
            ("VitsModel", Some(TaskKind::TextToSpeech)),
            ("BertModel", Some(TaskKind::FeatureExtraction)),
            ("GPT2LMHeadModel", None),
            ("BertForMaskedLM", None),
        ];
        for (arch, expected) in cases {
            let (_dir, files) = files_with(&format!(r#"{{"architectures": ["{arch}"]}}"#), &[]);
            assert_eq!(task_of(&files), expected, "{arch}");
        }
        let (_dir, files) = files_with("{}", &[]);
        assert_eq!(task_of(&files), None);
        let (_dir, files) = files_with("not json", &[]);
        assert_eq!(task_of(&files), None);
    }

    #[test]
    fn other_families_heads_are_not_taken_for_these_tasks() {
        // A question-answering head of a family without a text pipeline is
        // not text question answering; composite models are not encoders.
        let cases = [
            (
                r#"{"model_type": "blip", "architectures": ["BlipForQuestionAnswering"]}"#,
                Some(TaskKind::VisualQuestionAnswering),
            ),
            (
                r#"{"model_type": "clip", "architectures": ["CLIPModel"]}"#,
                Some(TaskKind::ZeroShotImageClassification),
            ),
            (
                r#"{"model_type": "vision-encoder-decoder", "architectures": ["VisionEncoderDecoderModel"]}"#,
                None,
            ),
            (
                r#"{"model_type": "vision-encoder-decoder", "architectures": ["VisionEncoderDecoderModel"],
                    "encoder": {"model_type": "vit"}, "decoder": {"model_type": "gpt2"}}"#,
                Some(TaskKind::ImageToText),
            ),
            (
                r#"{"model_type": "vision-encoder-decoder", "architectures": ["VisionEncoderDecoderModel"],
                    "encoder": {"model_type": "vit"}, "decoder": {"model_type": "trocr"}}"#,
                None,
            ),
            (
                r#"{"model_type": "distilbert", "architectures": ["DistilBertForQuestionAnswering"]}"#,
                Some(TaskKind::QuestionAnswering),
            ),
            (
                r#"{"model_type": "bert", "architectures": ["BertModel"]}"#,
                Some(TaskKind::FeatureExtraction),
            ),
            // DPT runs its own ViT or the BiT hybrid; DETR a ResNet; Depth
            // Anything DINOv2; other backbones are not taken.
            (
                r#"{"model_type": "dpt", "architectures": ["DPTForDepthEstimation"],
                    "is_hybrid": true, "backbone_config": {"model_type": "bit"}}"#,
                Some(TaskKind::DepthEstimation),
            ),
            (
                r#"{"model_type": "dpt", "architectures": ["DPTForDepthEstimation"],
                    "backbone_config": {"model_type": "beit"}}"#,
                None,
            ),
            (
                r#"{"model_type": "detr", "architectures": ["DetrForSegmentation"],
                    "backbone_config": {"model_type": "resnet"}}"#,
                Some(TaskKind::ImageSegmentation),
            ),
            (
                r#"{"model_type": "detr", "architectures": ["DetrForObjectDetection"],
                    "backbone_config": {"model_type": "swin"}}"#,
                None,
            ),
            (
                r#"{"model_type": "depth_anything", "architectures": ["DepthAnythingForDepthEstimation"],
                    "backbone_config": {"model_type": "dinov2"}}"#,
                Some(TaskKind::DepthEstimation),
            ),
        ];
        for (config, expected) in cases {
            let (_dir, files) = files_with(config, &[]);
            assert_eq!(task_of(&files), expected, "{config}");
        }
        let (_dir, files) = files_with(cases[8].0, &[]);
        let err = load(TaskKind::DepthEstimation, &files, &Device::Cpu)
            .err()
            .unwrap();
        assert!(
            matches!(&err, LocalError::Unsupported(m) if m.contains("on a \"beit\" backbone")),
            "{err}"
        );
        let (_dir, files) = files_with(cases[0].0, &[]);
        let err = load(TaskKind::QuestionAnswering, &files, &Device::Cpu)
            .err()
            .unwrap();
        assert!(
            matches!(&err, LocalError::Unsupported(m) if m.contains("*ForQuestionAnswering") && m.contains("\"blip\"")),
            "{err}"
        );
    }

    #[test]
    fn every_task_a_family_serves_is_supported_and_others_are_not() {
        for family in FAMILIES {
            assert!(!family.model_types.is_empty(), "{family:?}");
            for (_, task) in family.heads {
                assert!(supports(*task), "{family:?}");
            }
        }
        assert!(supports(TaskKind::TextToSpeech));
        assert!(!supports(TaskKind::TextToVideo));
        let (_dir, files) = files_with(r#"{"model_type": "bert"}"#, &[]);
        let err = load(TaskKind::TextToVideo, &files, &Device::Cpu)
            .err()
            .unwrap();
        assert!(err.to_string().contains("no local pipeline"), "{err}");
        // Text to speech is VITS's; another model is named as what it is.
        let err = load(TaskKind::TextToSpeech, &files, &Device::Cpu)
            .err()
            .unwrap();
        assert!(
            matches!(&err, LocalError::Unsupported(m) if m.contains("VITS checkpoints (VitsModel)") && m.contains("\"bert\"")),
            "{err}"
        );
    }

    #[test]
    fn diffusers_repositories_are_known_by_their_model_index() {
        let index = |class: &str| {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(
                dir.path().join("model_index.json"),
                format!(
                    r#"{{"_class_name": "{class}", "unet": ["diffusers", "UNet2DConditionModel"]}}"#
                ),
            )
            .unwrap();
            let files = ModelFiles::from_dir("org/sd", dir.path());
            (dir, files)
        };
        let cases = [
            ("StableDiffusionPipeline", Some(TaskKind::TextToImage)),
            (
                "StableDiffusionImg2ImgPipeline",
                Some(TaskKind::ImageToImage),
            ),
            ("StableDiffusionXLPipeline", Some(TaskKind::TextToImage)),
            (
                "StableDiffusionXLImg2ImgPipeline",
                Some(TaskKind::ImageToImage),
            ),
            ("StableDiffusionImageVariationPipeline", None),
        ];
        for (class, expected) in cases {
            let (_dir, files) = index(class);
            assert_eq!(task_of(&files), expected, "{class}");
            if let Some(task) = expected {
                let other = if task == TaskKind::TextToImage {
                    TaskKind::ImageToImage
                } else {
                    TaskKind::TextToImage
                };
                assert_eq!(tasks_of(&files), [task, other], "{class}");
            }
        }
        assert!(supports(TaskKind::TextToImage) && supports(TaskKind::ImageToImage));
        let (_dir, files) = index("StableDiffusion3Pipeline");
        let err = load(TaskKind::TextToImage, &files, &Device::Cpu)
            .err()
            .unwrap();
        assert!(
            matches!(&err, LocalError::Unsupported(m) if m.contains("StableDiffusion3Pipeline") && m.contains("Stable Diffusion checkpoints")),
            "{err}"
        );
        // A config.json decides when both are present.
        let (dir, files) = index("StableDiffusionPipeline");
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"architectures": ["ViTForImageClassification"]}"#,
        )
        .unwrap();
        assert_eq!(task_of(&files), Some(TaskKind::ImageClassification));
        assert_eq!(
            family_name(
                TaskKind::TextToImage,
                &["StableDiffusionPipeline".into()],
                Some(DIFFUSERS)
            ),
            Some("Stable Diffusion")
        );
    }

    #[test]
    fn a_sentence_transformers_layout_is_feature_extraction() {
        let (_dir, files) = files_with(
            r#"{"architectures": ["BertForSequenceClassification"]}"#,
            &["modules.json"],
        );
        assert_eq!(task_of(&files), Some(TaskKind::FeatureExtraction));
    }
}
