//! Checking that loaded content fits the resource kind a task expects, and
//! file extensions per kind.

use bytes::Bytes;
use hgpt_core::backend::MediaError;
use hgpt_core::output::{Blob, sniff_mime};
use hgpt_core::task::ResourceKind;

/// The media type of a text resource.
pub(crate) const TEXT_MIME: &str = "text/plain; charset=utf-8";

fn invalid(kind: ResourceKind, reference: &str, message: impl Into<String>) -> MediaError {
    MediaError::Invalid {
        kind,
        reference: reference.to_string(),
        message: message.into(),
    }
}

/// The media type of an audio or video file extension of the given kind.
fn mime_for_extension(kind: ResourceKind, ext: &str) -> Option<&'static str> {
    let ext = ext.to_ascii_lowercase();
    match kind {
        ResourceKind::Audio => Some(match ext.as_str() {
            "wav" => "audio/wav",
            "flac" => "audio/flac",
            "mp3" => "audio/mpeg",
            "ogg" | "oga" => "audio/ogg",
            "opus" => "audio/opus",
            "m4a" => "audio/mp4",
            "aac" => "audio/aac",
            "webm" | "weba" => "audio/webm",
            _ => return None,
        }),
        ResourceKind::Video => Some(match ext.as_str() {
            "mp4" | "m4v" => "video/mp4",
            "webm" => "video/webm",
            "mov" => "video/quicktime",
            "mkv" => "video/x-matroska",
            "avi" => "video/x-msvideo",
            "ogv" => "video/ogg",
            "mpeg" | "mpg" => "video/mpeg",
            _ => return None,
        }),
        ResourceKind::Image | ResourceKind::Text => None,
    }
}

fn is_audio_or_video(mime: &str) -> bool {
    mime.starts_with("audio/") || mime.starts_with("video/")
}

/// Check that `bytes` hold content of `kind` and return them with their media
/// type. `extension` (of the file or URL path) and `declared` (an HTTP
/// `Content-Type`) only help when the content cannot be sniffed.
pub(crate) fn check(
    kind: ResourceKind,
    reference: &str,
    bytes: Bytes,
    extension: Option<&str>,
    declared: Option<&str>,
) -> Result<Blob, MediaError> {
    let mime = match kind {
        ResourceKind::Text => {
            if let Err(e) = std::str::from_utf8(&bytes) {
                return Err(invalid(kind, reference, format!("not UTF-8 text: {e}")));
            }
            TEXT_MIME.to_string()
        }
        ResourceKind::Image => match sniff_mime(&bytes) {
            Some(mime) if mime.starts_with("image/") => mime.to_string(),
            Some(mime) => {
                return Err(invalid(
                    kind,
                    reference,
                    format!("looks like {mime}, not an image"),
                ));
            }
            None => match image::guess_format(&bytes) {
                Ok(format) => format.to_mime_type().to_string(),
                Err(_) => {
                    return Err(invalid(kind, reference, "not a recognised image format"));
                }
            },
        },
        ResourceKind::Audio | ResourceKind::Video => {
            if bytes.is_empty() {
                return Err(invalid(kind, reference, "the file is empty"));
            }
            match sniff_mime(&bytes) {
                Some(mime) if is_audio_or_video(mime) => mime.to_string(),
                Some(mime) => {
                    return Err(invalid(
                        kind,
                        reference,
                        format!("looks like {mime}, not {kind}"),
                    ));
                }
                None => {
                    let by_extension = extension.and_then(|ext| mime_for_extension(kind, ext));
                    let by_header = declared
                        .map(|m| m.split(';').next().unwrap_or(m).trim().to_ascii_lowercase())
                        .filter(|m| m.starts_with(&format!("{kind}/")));
                    match (by_extension, by_header) {
                        (Some(mime), _) => mime.to_string(),
                        (None, Some(mime)) => mime,
                        (None, None) => {
                            return Err(invalid(
                                kind,
                                reference,
                                format!("not a recognised {kind} format"),
                            ));
                        }
                    }
                }
            }
        }
    };
    Ok(Blob {
        bytes,
        mime: Some(mime),
    })
}

/// The extension a saved resource of `kind` gets: the blob's own when it fits
/// the kind, otherwise png / wav / mp4 / txt.
pub(crate) fn save_extension(kind: ResourceKind, blob: &Blob) -> &'static str {
    let own = match kind {
        ResourceKind::Text => None,
        ResourceKind::Image => blob
            .extension()
            .filter(|e| matches!(*e, "png" | "jpg" | "gif" | "webp" | "bmp")),
        ResourceKind::Audio | ResourceKind::Video => blob
            .extension()
            .filter(|e| matches!(*e, "wav" | "flac" | "ogg" | "mp3" | "mp4" | "webm")),
    };
    own.unwrap_or(match kind {
        ResourceKind::Image => "png",
        ResourceKind::Audio => "wav",
        ResourceKind::Video => "mp4",
        ResourceKind::Text => "txt",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PNG_MAGIC: &[u8] = b"\x89PNG\r\n\x1a\n0000";

    #[test]
    fn images_are_sniffed() {
        let blob = check(
            ResourceKind::Image,
            "a",
            Bytes::from_static(PNG_MAGIC),
            None,
            None,
        )
        .unwrap();
        assert_eq!(blob.mime.as_deref(), Some("image/png"));
        let err = check(
            ResourceKind::Image,
            "a",
            Bytes::from_static(b"hello"),
            None,
            None,
        );
        assert!(matches!(
            err,
            Err(MediaError::Invalid {
                kind: ResourceKind::Image,
                ..
            })
        ));
        let wav = b"RIFF\0\0\0\0WAVEfmt ";
        let err = check(
            ResourceKind::Image,
            "a",
            Bytes::from_static(wav),
            None,
            None,
        );
        assert!(matches!(err, Err(MediaError::Invalid { .. })));
    }

    #[test]
    fn audio_falls_back_to_extension_then_header() {
        let unknown = Bytes::from_static(b"\0\0\0\x20something");
        let blob = check(
            ResourceKind::Audio,
            "a.m4a",
            unknown.clone(),
            Some("m4a"),
            None,
        )
        .unwrap();
        assert_eq!(blob.mime.as_deref(), Some("audio/mp4"));
        let blob = check(
            ResourceKind::Audio,
            "u",
            unknown.clone(),
            None,
            Some("audio/x-foo; q=1"),
        )
        .unwrap();
        assert_eq!(blob.mime.as_deref(), Some("audio/x-foo"));
        assert!(
            check(
                ResourceKind::Audio,
                "a.txt",
                unknown.clone(),
                Some("txt"),
                None
            )
            .is_err()
        );
        assert!(check(ResourceKind::Video, "a.m4a", unknown, Some("m4a"), None).is_err());
        let png = Bytes::from_static(PNG_MAGIC);
        assert!(check(ResourceKind::Audio, "a.wav", png, Some("wav"), None).is_err());
    }

    #[test]
    fn text_must_be_utf8() {
        let blob = check(
            ResourceKind::Text,
            "t",
            Bytes::from_static(b"hi"),
            None,
            None,
        )
        .unwrap();
        assert_eq!(blob.mime.as_deref(), Some(TEXT_MIME));
        let err = check(
            ResourceKind::Text,
            "t",
            Bytes::from_static(b"\xff\xfe"),
            None,
            None,
        );
        assert!(matches!(
            err,
            Err(MediaError::Invalid {
                kind: ResourceKind::Text,
                ..
            })
        ));
    }

    #[test]
    fn save_extension_fits_the_kind() {
        let text = Blob {
            bytes: Bytes::from_static(b"BMW is a car"),
            mime: None,
        };
        assert_eq!(save_extension(ResourceKind::Text, &text), "txt");
        assert_eq!(save_extension(ResourceKind::Audio, &text), "wav");
        let png = Blob::sniffed(Bytes::from_static(PNG_MAGIC));
        assert_eq!(save_extension(ResourceKind::Image, &png), "png");
        assert_eq!(save_extension(ResourceKind::Video, &png), "mp4");
    }
}
