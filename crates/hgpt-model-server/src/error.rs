//! Error responses: `{"error": "...", "error_type": "..."}` with a fitting status.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use hgpt_local::LocalError;
use serde_json::json;

/// An error answered to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) kind: &'static str,
    pub(crate) message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            message: message.into(),
        }
    }

    /// 400: the request itself is malformed (bad JSON, missing `inputs`, an
    /// undecodable image).
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    /// 404: no such model or route.
    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 400: the server has no pipeline for what was asked.
    pub(crate) fn unsupported(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "unsupported", message)
    }

    /// 413: the body is over the limit.
    pub(crate) fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the request body is larger than this server's limit of {limit} bytes"),
        )
    }

    /// 500: something broke inside the server.
    pub(crate) fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", message)
    }
}

impl From<LocalError> for ApiError {
    fn from(error: LocalError) -> Self {
        let message = error.to_string();
        match error {
            LocalError::BadInput { .. } => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, "validation", message)
            }
            LocalError::MissingFiles { .. } | LocalError::TooLarge { .. } => {
                Self::not_found(message)
            }
            LocalError::Unsupported(_) => Self::unsupported(message),
            LocalError::Load { .. } => {
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, "load_error", message)
            }
            LocalError::Compute(_) => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "inference_error",
                message,
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(
                status = self.status.as_u16(),
                kind = self.kind,
                "{}",
                self.message
            );
        } else {
            tracing::debug!(
                status = self.status.as_u16(),
                kind = self.kind,
                "{}",
                self.message
            );
        }
        let body = json!({"error": self.message, "error_type": self.kind});
        (self.status, Json(body)).into_response()
    }
}
