//! Task types of the plan format, their resources, and name normalisation.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The kind of resource a task consumes or produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResourceKind {
    /// Plain text.
    Text,
    /// An image file (png, jpeg, webp, ...).
    Image,
    /// An audio file (wav, flac, mp3, ...).
    Audio,
    /// A video file (mp4, webm, ...).
    Video,
}

impl ResourceKind {
    /// All resource kinds, in the order the reference resolves them.
    pub const ALL: [ResourceKind; 4] = [Self::Text, Self::Image, Self::Audio, Self::Video];

    /// The plan argument name of this kind (`"text"`, `"image"`, ...).
    pub fn arg_name(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Image => "image",
            Self::Audio => "audio",
            Self::Video => "video",
        }
    }

    /// The resource kind an argument name refers to, if it names one.
    pub fn from_arg_name(name: &str) -> Option<Self> {
        match name {
            "text" => Some(Self::Text),
            "image" => Some(Self::Image),
            "audio" => Some(Self::Audio),
            "video" => Some(Self::Video),
            _ => None,
        }
    }
}

impl fmt::Display for ResourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.arg_name())
    }
}

macro_rules! task_kinds {
    ($( $(#[$doc:meta])* $variant:ident => $name:literal, inputs: [$($input:ident),*], output: $output:ident ;)*) => {
        /// A task type of the plan format (the Hub's pipeline tags plus the ControlNet family).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum TaskKind {
            $( $(#[$doc])* $variant, )*
        }

        impl TaskKind {
            /// Every task type, in declaration order.
            pub const ALL: &'static [TaskKind] = &[$(TaskKind::$variant),*];

            /// The canonical (Hub) spelling, e.g. `"image-to-text"`.
            pub fn as_str(self) -> &'static str {
                match self { $(TaskKind::$variant => $name,)* }
            }

            /// The resources this task reads.
            pub fn inputs(self) -> &'static [ResourceKind] {
                match self { $(TaskKind::$variant => &[$(ResourceKind::$input),*],)* }
            }

            /// The resource this task generates, if any (`None` for predictions only).
            pub fn output(self) -> Option<ResourceKind> {
                match self { $(TaskKind::$variant => task_kinds!(@out $output),)* }
            }
        }
    };
    (@out None) => { None };
    (@out $kind:ident) => { Some(ResourceKind::$kind) };
}

task_kinds! {
    /// Named-entity recognition and similar per-token labelling.
    TokenClassification => "token-classification", inputs: [Text], output: None;
    /// Text-to-text generation (T5-style).
    Text2TextGeneration => "text2text-generation", inputs: [Text], output: Text;
    /// Summarise a text.
    Summarization => "summarization", inputs: [Text], output: Text;
    /// Translate a text.
    Translation => "translation", inputs: [Text], output: Text;
    /// Extractive question answering over a context.
    QuestionAnswering => "question-answering", inputs: [Text], output: None;
    /// Dialogue.
    Conversational => "conversational", inputs: [Text], output: Text;
    /// Open-ended text generation.
    TextGeneration => "text-generation", inputs: [Text], output: Text;
    /// Similarity of a sentence to others.
    SentenceSimilarity => "sentence-similarity", inputs: [Text], output: None;
    /// Embeddings of texts.
    FeatureExtraction => "feature-extraction", inputs: [Text], output: None;
    /// Classify a text.
    TextClassification => "text-classification", inputs: [Text], output: None;
    /// Classify a text against labels given at request time.
    ZeroShotClassification => "zero-shot-classification", inputs: [Text], output: None;
    /// Classify a table row.
    TabularClassification => "tabular-classification", inputs: [Text], output: None;
    /// Boxes and labels of objects in an image.
    ObjectDetection => "object-detection", inputs: [Image], output: Image;
    /// Classify an image.
    ImageClassification => "image-classification", inputs: [Image], output: None;
    /// Classify an image against labels given at request time (the text:
    /// comma-separated labels).
    ZeroShotImageClassification => "zero-shot-image-classification", inputs: [Image, Text], output: None;
    /// Transform an image (optionally guided by a text prompt).
    ImageToImage => "image-to-image", inputs: [Image, Text], output: Image;
    /// Caption an image.
    ImageToText => "image-to-text", inputs: [Image], output: Text;
    /// Generate an image from text.
    TextToImage => "text-to-image", inputs: [Text], output: Image;
    /// Generate a video from text.
    TextToVideo => "text-to-video", inputs: [Text], output: Video;
    /// Answer a question about an image.
    VisualQuestionAnswering => "visual-question-answering", inputs: [Image, Text], output: None;
    /// Answer a question about a document image.
    DocumentQuestionAnswering => "document-question-answering", inputs: [Image, Text], output: None;
    /// Segment an image into labelled masks.
    ImageSegmentation => "image-segmentation", inputs: [Image], output: Image;
    /// Estimate per-pixel depth.
    DepthEstimation => "depth-estimation", inputs: [Image], output: Image;
    /// Speak a text.
    TextToSpeech => "text-to-speech", inputs: [Text], output: Audio;
    /// Transcribe speech.
    AutomaticSpeechRecognition => "automatic-speech-recognition", inputs: [Audio], output: Text;
    /// Transform audio (enhancement, source separation).
    AudioToAudio => "audio-to-audio", inputs: [Audio], output: Audio;
    /// Classify audio.
    AudioClassification => "audio-classification", inputs: [Audio], output: None;
    /// ControlNet condition: canny edges of an image.
    CannyControl => "canny-control", inputs: [Image], output: Image;
    /// ControlNet condition: HED boundaries of an image.
    HedControl => "hed-control", inputs: [Image], output: Image;
    /// ControlNet condition: M-LSD lines of an image.
    MlsdControl => "mlsd-control", inputs: [Image], output: Image;
    /// ControlNet condition: normal map of an image.
    NormalControl => "normal-control", inputs: [Image], output: Image;
    /// ControlNet condition: OpenPose skeleton of an image.
    OpenposeControl => "openpose-control", inputs: [Image], output: Image;
    /// Text-to-image guided by a canny condition image.
    CannyTextToImage => "canny-text-to-image", inputs: [Image, Text], output: Image;
    /// Text-to-image guided by a depth condition image.
    DepthTextToImage => "depth-text-to-image", inputs: [Image, Text], output: Image;
    /// Text-to-image guided by a HED condition image.
    HedTextToImage => "hed-text-to-image", inputs: [Image, Text], output: Image;
    /// Text-to-image guided by an M-LSD condition image.
    MlsdTextToImage => "mlsd-text-to-image", inputs: [Image, Text], output: Image;
    /// Text-to-image guided by a normal-map condition image.
    NormalTextToImage => "normal-text-to-image", inputs: [Image, Text], output: Image;
    /// Text-to-image guided by an OpenPose condition image.
    OpenposeTextToImage => "openpose-text-to-image", inputs: [Image, Text], output: Image;
    /// Text-to-image guided by a segmentation condition image.
    SegTextToImage => "seg-text-to-image", inputs: [Image, Text], output: Image;
}

impl TaskKind {
    /// Parse a task name in any common spelling: `"Image Classification"`,
    /// `"image_classification"`, `"image-classification"`, and a few aliases
    /// (`"image captioning"`, `"speech recognition"`, `"tts"`, `"ner"`, ...).
    pub fn parse(name: &str) -> Option<TaskKind> {
        let normalized: String = name
            .trim()
            .trim_matches(|c: char| c == '"' || c == '\'' || c == '`')
            .chars()
            .map(|c| match c {
                '_' | ' ' | '.' | '/' => '-',
                c => c.to_ascii_lowercase(),
            })
            .collect();
        let mut collapsed = String::with_capacity(normalized.len());
        for c in normalized.chars() {
            if !(c == '-' && collapsed.ends_with('-')) {
                collapsed.push(c);
            }
        }
        let key = collapsed.trim_matches('-');
        if let Some(kind) = Self::ALL.iter().find(|k| k.as_str() == key) {
            return Some(*kind);
        }
        let alias = match key {
            "ner" | "named-entity-recognition" | "token-classifier" => Self::TokenClassification,
            "text-2-text-generation" | "text-to-text-generation" => Self::Text2TextGeneration,
            "summarisation" | "summarize" | "text-summarization" => Self::Summarization,
            "machine-translation" | "translate" => Self::Translation,
            "qa" | "extractive-question-answering" => Self::QuestionAnswering,
            "chat" | "conversation" | "dialogue" => Self::Conversational,
            "text-generator" | "generation" => Self::TextGeneration,
            "sentence-similarities" | "semantic-similarity" => Self::SentenceSimilarity,
            "embedding" | "embeddings" | "text-embedding" => Self::FeatureExtraction,
            "sentiment-analysis" | "text-classifier" | "sentiment-classification" => {
                Self::TextClassification
            }
            "image-captioning" | "image-caption" | "captioning" | "image-to-caption" => {
                Self::ImageToText
            }
            "image-generation" | "text-2-image" | "text2image" => Self::TextToImage,
            "video-generation" | "text2video" => Self::TextToVideo,
            "vqa" | "visual-qa" => Self::VisualQuestionAnswering,
            "document-qa" | "docqa" => Self::DocumentQuestionAnswering,
            "segmentation" | "semantic-segmentation" | "instance-segmentation" => {
                Self::ImageSegmentation
            }
            "depth" | "monocular-depth-estimation" => Self::DepthEstimation,
            "tts" | "speech-synthesis" | "text2speech" => Self::TextToSpeech,
            "asr" | "speech-recognition" | "speech-to-text" | "transcription" => {
                Self::AutomaticSpeechRecognition
            }
            "object-detector" | "detection" => Self::ObjectDetection,
            "image-classifier" => Self::ImageClassification,
            "image2image" => Self::ImageToImage,
            _ => return None,
        };
        Some(alias)
    }

    /// Task types the controller LLM can do itself (the reference's list): a
    /// single such task is answered as plain chat, and inside a larger plan it
    /// runs on the controller LLM.
    pub fn is_llm_capable(self) -> bool {
        matches!(
            self,
            Self::Summarization
                | Self::Translation
                | Self::Conversational
                | Self::TextGeneration
                | Self::Text2TextGeneration
        )
    }

    /// ControlNet condition extraction and conditioned generation, which the
    /// reference runs on local models only and never selects.
    pub fn controlnet_model(self) -> Option<&'static str> {
        Some(match self {
            Self::CannyControl | Self::CannyTextToImage => "lllyasviel/sd-controlnet-canny",
            Self::HedControl | Self::HedTextToImage => "lllyasviel/sd-controlnet-hed",
            Self::MlsdControl | Self::MlsdTextToImage => "lllyasviel/sd-controlnet-mlsd",
            Self::NormalControl | Self::NormalTextToImage => "lllyasviel/sd-controlnet-normal",
            Self::OpenposeControl | Self::OpenposeTextToImage => {
                "lllyasviel/sd-controlnet-openpose"
            }
            Self::DepthTextToImage => "lllyasviel/sd-controlnet-depth",
            Self::SegTextToImage => "lllyasviel/sd-controlnet-seg",
            _ => return None,
        })
    }

    /// For a conditioned text-to-image task given no text, the task the
    /// reference runs instead (`canny-text-to-image` -> `canny-control`,
    /// `seg-` -> `image-segmentation`, `depth-` -> `depth-estimation`).
    pub fn without_text(self) -> Option<TaskKind> {
        Some(match self {
            Self::CannyTextToImage => Self::CannyControl,
            Self::HedTextToImage => Self::HedControl,
            Self::MlsdTextToImage => Self::MlsdControl,
            Self::NormalTextToImage => Self::NormalControl,
            Self::OpenposeTextToImage => Self::OpenposeControl,
            Self::SegTextToImage => Self::ImageSegmentation,
            Self::DepthTextToImage => Self::DepthEstimation,
            _ => return None,
        })
    }
}

impl fmt::Display for TaskKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for TaskKind {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for TaskKind {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        TaskKind::parse(&name)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown task type {name:?}")))
    }
}

/// A task name from a plan: a known type, or the LLM's own spelling of one we
/// do not know (reported on that task instead of failing the plan).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TaskName {
    /// A task type hgpt knows.
    Known(TaskKind),
    /// A name that matches no task type, kept as the LLM wrote it.
    Unknown(String),
}

impl TaskName {
    /// Parse a name, keeping it verbatim when it is not a known type.
    pub fn parse(name: &str) -> Self {
        match TaskKind::parse(name) {
            Some(kind) => Self::Known(kind),
            None => Self::Unknown(name.trim().to_string()),
        }
    }

    /// The known kind, if any.
    pub fn kind(&self) -> Option<TaskKind> {
        match self {
            Self::Known(kind) => Some(*kind),
            Self::Unknown(_) => None,
        }
    }

    /// The spelling to show: canonical for known types, verbatim otherwise.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Known(kind) => kind.as_str(),
            Self::Unknown(name) => name,
        }
    }
}

impl fmt::Display for TaskName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for TaskName {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for TaskName {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(TaskName::parse(&String::deserialize(deserializer)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_other_spellings() {
        for name in [
            "Image Classification",
            "image_classification",
            "image-classification",
            " IMAGE-CLASSIFICATION ",
            "'image classification'",
        ] {
            assert_eq!(
                TaskKind::parse(name),
                Some(TaskKind::ImageClassification),
                "{name}"
            );
        }
        assert_eq!(
            TaskKind::parse("Text2Text Generation"),
            Some(TaskKind::Text2TextGeneration)
        );
        assert_eq!(
            TaskKind::parse("ASR"),
            Some(TaskKind::AutomaticSpeechRecognition)
        );
        assert_eq!(
            TaskKind::parse("image captioning"),
            Some(TaskKind::ImageToText)
        );
        assert_eq!(TaskKind::parse("juggling"), None);
    }

    #[test]
    fn every_canonical_name_round_trips() {
        for kind in TaskKind::ALL {
            assert_eq!(TaskKind::parse(kind.as_str()), Some(*kind));
        }
        assert_eq!(TaskKind::ALL.len(), 39);
    }

    #[test]
    fn unknown_names_are_kept() {
        assert_eq!(
            TaskName::parse(" Juggling "),
            TaskName::Unknown("Juggling".into())
        );
    }
}
