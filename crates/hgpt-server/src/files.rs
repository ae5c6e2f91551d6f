//! `POST /v1/files` (upload) and `GET /files/{path}` (inputs and generated
//! outputs), both confined to the media root and the output directory.

use crate::AppState;
use crate::error::{ApiError, ApiPath};
use axum::Json;
use axum::body::Body;
use axum::extract::multipart::MultipartError;
use axum::extract::{Multipart, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hgpt_core::backend::MediaStore;
use hgpt_core::output::{Blob, sniff_mime};
use hgpt_core::task::ResourceKind;
use hgpt_media::LocalMedia;
use serde_json::json;
use std::io::Read;
use std::path::{Path, PathBuf};
use tokio_util::io::ReaderStream;

/// The kind of resource a sniffed media type is, for the types uploads take.
fn upload_kind(mime: &str) -> Option<ResourceKind> {
    match mime.split('/').next()? {
        "image" => Some(ResourceKind::Image),
        "audio" => Some(ResourceKind::Audio),
        "video" => Some(ResourceKind::Video),
        _ => None,
    }
}

fn multipart_error(error: MultipartError, limit: usize) -> ApiError {
    if error.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::too_large(limit)
    } else {
        ApiError::invalid(format!("malformed multipart body: {}", error.body_text()))
    }
}

/// Store an uploaded image, audio or video file (the multipart field `file`)
/// in the output directory; its type comes from its content, never from its
/// name or declared type.
pub(crate) async fn upload(
    State(state): State<AppState>,
    multipart: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Result<Response, ApiError> {
    let limit = state.config.max_upload_bytes;
    // Each upload is held in memory while it arrives: a few at a time.
    let _receiving = state
        .uploads
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| ApiError::shutting_down())?;
    let mut multipart = multipart.map_err(|e| {
        ApiError::invalid(format!(
            "the body must be multipart/form-data with a `file` field: {}",
            e.body_text()
        ))
    })?;
    let mut field = loop {
        match multipart
            .next_field()
            .await
            .map_err(|e| multipart_error(e, limit))?
        {
            Some(field) if field.name() == Some("file") => break field,
            Some(_) => continue,
            None => return Err(ApiError::invalid("the form has no `file` field")),
        }
    };
    let mut bytes = Vec::new();
    while let Some(chunk) = field.chunk().await.map_err(|e| multipart_error(e, limit))? {
        if bytes.len() + chunk.len() > limit {
            return Err(ApiError::too_large(limit));
        }
        bytes.extend_from_slice(&chunk);
    }
    if bytes.is_empty() {
        return Err(ApiError::invalid("the uploaded file is empty"));
    }
    let Some((mime, kind)) = sniff_mime(&bytes).and_then(|m| Some((m, upload_kind(m)?))) else {
        return Err(ApiError::unsupported_media(
            "the file is not an image, audio or video format this server knows \
             (png, jpeg, gif, webp, bmp, wav, flac, ogg, mp3, mp4, webm)",
        ));
    };
    let size = bytes.len();
    let blob = Blob {
        bytes: bytes.into(),
        mime: Some(mime.to_string()),
    };
    let saved = state
        .media
        .save(kind, &blob)
        .await
        .map_err(|e| ApiError::internal(format!("cannot store the upload: {e}")))?;
    let file_name = PathBuf::from(&saved)
        .file_name()
        .and_then(|n| n.to_str())
        .map(str::to_string)
        .ok_or_else(|| ApiError::internal("the stored upload has no file name"))?;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "name": format!("/{file_name}"),
            "url": format!("/files/{file_name}"),
            "content_type": mime,
            "bytes": size,
        })),
    )
        .into_response())
}

/// The media type to serve a file as, when its content is an image, audio
/// or video format: nothing else is served (the media root may be a folder
/// with configuration, keys or code in it).
fn served_type(head: &[u8]) -> Option<&'static str> {
    sniff_mime(head).filter(|mime| upload_kind(mime).is_some())
}

/// Whether a path names something hidden (a component starting with `.`).
fn is_hidden(path: &Path) -> bool {
    path.components()
        .any(|part| part.as_os_str().to_string_lossy().starts_with('.'))
}

/// Whether `path` (canonical, inside one of the roots) is hidden below the
/// root it is in; the roots themselves may sit anywhere (`~/.local/...`).
fn hidden_below_root(media: &LocalMedia, path: &Path) -> bool {
    [media.media_root(), media.out_dir()]
        .into_iter()
        .filter_map(|root| path.strip_prefix(root).ok())
        .min_by_key(|rest| rest.components().count())
        .is_none_or(is_hidden)
}

/// Serve an image, audio or video file from the media root or the output
/// directory. `path` is a name relative to them, or an absolute path inside
/// them without its leading `/`. Anything else (hidden files, other types,
/// paths outside) is 404, whatever the reason.
pub(crate) async fn serve_file(
    State(state): State<AppState>,
    ApiPath(path): ApiPath<String>,
) -> Result<Response, ApiError> {
    let media = state.media.clone();
    let reference = format!("/{}", path.trim_start_matches('/'));
    let found = tokio::task::spawn_blocking(move || {
        let path = media.resolve_file(&reference).ok()?;
        if hidden_below_root(&media, &path) {
            return None;
        }
        let mut head = [0u8; 16];
        let mut file = std::fs::File::open(&path).ok()?;
        let read = file.read(&mut head).ok()?;
        let size = file.metadata().ok()?.len();
        Some((path.clone(), served_type(&head[..read])?, size))
    })
    .await
    .map_err(|e| ApiError::internal(format!("file lookup failed: {e}")))?;
    let Some((path, mime, size)) = found else {
        return Err(ApiError::not_found(format!("no file {path:?}")));
    };
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(|_| ApiError::not_found(format!("no file {path:?}", path = path.display())))?;
    let headers = [
        (header::CONTENT_TYPE, HeaderValue::from_static(mime)),
        (header::CONTENT_LENGTH, HeaderValue::from(size)),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("default-src 'none'; sandbox"),
        ),
        (
            header::CACHE_CONTROL,
            HeaderValue::from_static("private, max-age=3600"),
        ),
    ];
    Ok((headers, Body::from_stream(ReaderStream::new(file))).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uploads_take_media_only() {
        assert_eq!(upload_kind("image/png"), Some(ResourceKind::Image));
        assert_eq!(upload_kind("audio/wav"), Some(ResourceKind::Audio));
        assert_eq!(upload_kind("video/webm"), Some(ResourceKind::Video));
        assert_eq!(upload_kind("text/plain"), None);
    }

    #[test]
    fn only_media_content_is_served() {
        assert_eq!(served_type(b"\x89PNG\r\n\x1a\n0000"), Some("image/png"));
        assert_eq!(served_type(b"RIFF\0\0\0\0WAVEfmt "), Some("audio/wav"));
        assert_eq!(served_type(b"api_key = \"sk-...\""), None);
        assert_eq!(served_type(b"<script>"), None);
    }

    #[test]
    fn hidden_paths_are_recognised() {
        assert!(is_hidden(Path::new(".env")));
        assert!(is_hidden(Path::new("a/.git/config")));
        assert!(!is_hidden(Path::new("srv/hgpt-out/image-1.png")));
    }
}
