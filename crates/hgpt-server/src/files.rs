//! `POST /v1/files` (upload) and `GET /files/{path}` (inputs and generated
//! outputs), both confined to the media root and the output directory.

use crate::AppState;
use crate::error::ApiError;
use axum::Json;
use axum::body::Body;
use axum::extract::multipart::MultipartError;
use axum::extract::{Multipart, Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hgpt_core::backend::MediaStore;
use hgpt_core::output::{Blob, sniff_mime};
use hgpt_core::task::ResourceKind;
use serde_json::json;
use std::io::Read;
use std::path::PathBuf;
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

/// The media type to serve a file as: sniffed from its first bytes, text
/// for `.txt`, else opaque bytes.
fn served_type(path: &std::path::Path, head: &[u8]) -> &'static str {
    if let Some(mime) = sniff_mime(head) {
        return mime;
    }
    match path.extension().and_then(|e| e.to_str()) {
        Some("txt") => "text/plain; charset=utf-8",
        Some("json") => "application/json",
        _ => "application/octet-stream",
    }
}

/// Serve a file from the media root or the output directory. `path` is a
/// name relative to them, or an absolute path inside them without its
/// leading `/`. Anything else is 404, whatever the reason.
pub(crate) async fn serve_file(
    State(state): State<AppState>,
    Path(path): Path<String>,
) -> Result<Response, ApiError> {
    let media = state.media.clone();
    let reference = format!("/{}", path.trim_start_matches('/'));
    let found = tokio::task::spawn_blocking(move || {
        let path = media.resolve_file(&reference).ok()?;
        let mut head = [0u8; 16];
        let mut file = std::fs::File::open(&path).ok()?;
        let read = file.read(&mut head).ok()?;
        let size = file.metadata().ok()?.len();
        Some((path.clone(), served_type(&path, &head[..read]), size))
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
    fn served_types_come_from_content_first() {
        let png = b"\x89PNG\r\n\x1a\n0000";
        assert_eq!(served_type("x.txt".as_ref(), png), "image/png");
        assert_eq!(
            served_type("x.txt".as_ref(), b"hello"),
            "text/plain; charset=utf-8"
        );
        assert_eq!(
            served_type("x.html".as_ref(), b"<script>"),
            "application/octet-stream"
        );
    }
}
