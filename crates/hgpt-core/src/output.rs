//! Typed inference results in the shapes of the Hugging Face inference wire
//! protocol. The remote backend decodes into these; a model server encodes
//! them (serialisation emits the Python client's shape).

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Raw bytes of a resource with its media type when known.
#[derive(Debug, Clone, PartialEq)]
pub struct Blob {
    /// The file content.
    pub bytes: Bytes,
    /// The media type (`image/png`, `audio/flac`, ...) if known.
    pub mime: Option<String>,
}

impl Blob {
    /// A blob whose media type is sniffed from its first bytes.
    pub fn sniffed(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        let mime = sniff_mime(&bytes).map(str::to_string);
        Self { bytes, mime }
    }

    /// The file extension that fits this blob's content (sniffed first, then
    /// the declared media type), without a dot.
    pub fn extension(&self) -> Option<&'static str> {
        let mime = sniff_mime(&self.bytes).or(self.mime.as_deref())?;
        extension_for_mime(mime)
    }
}

/// The media type of well-known file formats, from their magic bytes.
pub fn sniff_mime(bytes: &[u8]) -> Option<&'static str> {
    let starts = |magic: &[u8]| bytes.starts_with(magic);
    Some(if starts(b"\x89PNG\r\n\x1a\n") {
        "image/png"
    } else if starts(b"\xff\xd8\xff") {
        "image/jpeg"
    } else if starts(b"GIF87a") || starts(b"GIF89a") {
        "image/gif"
    } else if bytes.len() >= 12 && starts(b"RIFF") && &bytes[8..12] == b"WEBP" {
        "image/webp"
    } else if bytes.len() >= 12 && starts(b"RIFF") && &bytes[8..12] == b"WAVE" {
        "audio/wav"
    } else if starts(b"fLaC") {
        "audio/flac"
    } else if starts(b"OggS") {
        "audio/ogg"
    } else if starts(b"ID3") || (bytes.len() >= 2 && bytes[0] == 0xff && bytes[1] & 0xe0 == 0xe0) {
        "audio/mpeg"
    } else if bytes.len() >= 12 && &bytes[4..8] == b"ftyp" {
        "video/mp4"
    } else if starts(b"\x1a\x45\xdf\xa3") {
        "video/webm"
    } else if starts(b"BM") {
        "image/bmp"
    } else {
        return None;
    })
}

/// The usual file extension of a media type.
pub fn extension_for_mime(mime: &str) -> Option<&'static str> {
    let essence = mime.split(';').next().unwrap_or(mime).trim();
    Some(match essence {
        "image/png" => "png",
        "image/jpeg" | "image/jpg" => "jpg",
        "image/gif" => "gif",
        "image/webp" => "webp",
        "image/bmp" => "bmp",
        "audio/wav" | "audio/x-wav" | "audio/wave" => "wav",
        "audio/flac" | "audio/x-flac" => "flac",
        "audio/ogg" => "ogg",
        "audio/mpeg" | "audio/mp3" => "mp3",
        "video/mp4" => "mp4",
        "video/webm" => "webm",
        _ => return None,
    })
}

/// A label with a confidence score (classification tasks).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoredLabel {
    /// The class label.
    pub label: String,
    /// Its probability or score.
    pub score: f64,
}

/// An entity group from token classification.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entity {
    /// The entity type (`PER`, `LOC`, ...). Older servers say `entity`.
    #[serde(alias = "entity")]
    pub entity_group: String,
    /// The group's score.
    pub score: f64,
    /// The text of the entity.
    pub word: String,
    /// Start offset in characters, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<usize>,
    /// End offset in characters, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<usize>,
}

/// An answer span (question answering, visual and document QA).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    /// The answer text.
    pub answer: String,
    /// Its score.
    pub score: f64,
    /// Start offset in the context, when the answer is a span.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<usize>,
    /// End offset in the context, when the answer is a span.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<usize>,
}

/// A bounding box in pixel coordinates of the input image.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BoundingBox {
    /// Left edge.
    pub xmin: f64,
    /// Top edge.
    pub ymin: f64,
    /// Right edge.
    pub xmax: f64,
    /// Bottom edge.
    pub ymax: f64,
}

/// A detected object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Detection {
    /// The object's class.
    pub label: String,
    /// Its score.
    pub score: f64,
    /// Where it is.
    #[serde(rename = "box")]
    pub bbox: BoundingBox,
}

/// A segment of an image segmentation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Segment {
    /// The segment's class.
    pub label: String,
    /// Its score (`null` for semantic segmentation).
    #[serde(default)]
    pub score: Option<f64>,
    /// The mask as a base64-encoded single-channel PNG.
    pub mask: String,
}

/// One output of audio-to-audio.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AudioSource {
    /// What the source is (e.g. a speaker or a stem).
    pub label: String,
    /// The audio's media type.
    #[serde(rename = "content-type")]
    pub content_type: String,
    /// The audio as base64.
    pub blob: String,
}

/// The result of one inference call, by response shape.
#[derive(Debug, Clone, PartialEq)]
pub enum InferenceOutput {
    /// Generated text: summarisation, translation, generation, captioning.
    Text(String),
    /// Speech recognition: the transcript and optional timestamped chunks.
    Transcription {
        /// The transcript.
        text: String,
        /// `[{text, timestamp}]` chunks when the server returned them.
        chunks: Option<Value>,
    },
    /// Labels with scores: text, image, audio and zero-shot classification.
    Labels(Vec<ScoredLabel>),
    /// Token classification entity groups.
    Entities(Vec<Entity>),
    /// Question answering (extractive, visual, document).
    Answers(Vec<Answer>),
    /// Sentence similarity scores, one per compared sentence.
    Similarities(Vec<f64>),
    /// Feature extraction: nested floats as the server returned them.
    Embeddings(Value),
    /// Object detection.
    Detections(Vec<Detection>),
    /// Image segmentation.
    Segments(Vec<Segment>),
    /// Depth estimation: the depth image and/or the raw tensor.
    Depth {
        /// The depth map as an image.
        image: Option<Blob>,
        /// The raw predicted depth, when returned.
        predicted: Option<Value>,
    },
    /// A generated file: image, audio or video bytes.
    Media(Blob),
    /// Audio-to-audio sources.
    AudioSources(Vec<AudioSource>),
    /// Any other JSON result (tabular classification, table QA, ...).
    Json(Value),
}
