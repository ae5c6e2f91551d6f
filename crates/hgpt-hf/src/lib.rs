//! The Hugging Face inference protocol backend of hgpt.
//!
//! [`HfBackend`] runs tasks on the hosted inference API (the router's
//! `hf-inference` provider), on dedicated Inference Endpoints or on any local
//! model server that speaks the same protocol: `POST {base}/models/{id}` with
//! the per-task bodies of the wire reference, responses decoded into
//! [`InferenceOutput`]. Models that are loading are waited for (bounded);
//! rate limits, server errors and connection failures are retried with
//! exponential backoff.

#![warn(missing_docs)]

mod config;
mod decode;
mod directory;
mod hub;
mod mapping;
mod providers;
mod request;
mod router;

pub use config::{DEFAULT_BASE_URL, HfConfig};
pub use decode::decode_response;
pub use directory::{Lookup, ProviderDirectory};
pub use hub::{DEFAULT_HUB_ENDPOINT, HubApi, HubError, ListedModel, card_summary};
pub use mapping::{MappingError, MappingStatus, ModelProviders, ProviderEntry, parse_model_info};
pub use providers::PROVIDER_NAMES;
pub use request::{WireBody, WireRequest, build_request, is_local_only};
pub use router::{DEFAULT_ROUTER_URL, ProviderOrder, RouterBackend, RouterConfig};

use async_trait::async_trait;
use bytes::Bytes;
use hgpt_core::backend::{Availability, InferenceBackend, InferenceError, InferenceRequest};
use hgpt_core::output::InferenceOutput;
use hgpt_core::task::TaskKind;
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, RETRY_AFTER};
use serde_json::Value;
use std::time::{Duration, Instant};

/// Why an [`HfBackend`] could not be built.
#[derive(Debug, thiserror::Error)]
pub enum HfError {
    /// A base URL is not an http(s) URL.
    #[error("invalid base URL {url:?}: {reason}")]
    BaseUrl {
        /// The URL as configured.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The access token cannot be sent in an HTTP header.
    #[error("the Hugging Face token contains characters that cannot be sent in a header")]
    Token,
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}

/// An [`InferenceBackend`] that speaks the Hugging Face inference protocol.
#[derive(Debug, Clone)]
pub struct HfBackend {
    config: HfConfig,
    client: reqwest::Client,
}

/// A base URL without trailing slashes, checked to be http(s).
pub(crate) fn normalized_base(url: &str) -> Result<String, HfError> {
    let trimmed = url.trim().trim_end_matches('/');
    let rest = trimmed
        .strip_prefix("http://")
        .or_else(|| trimmed.strip_prefix("https://"))
        .ok_or_else(|| HfError::BaseUrl {
            url: url.to_string(),
            reason: "it must start with http:// or https://".into(),
        })?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err(HfError::BaseUrl {
            url: url.to_string(),
            reason: "it has no host".into(),
        });
    }
    Ok(trimmed.to_string())
}

/// `host:port` (or `host`) of an http(s) URL.
fn host_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host)
}

/// Whether a model id is safe to put into a URL path (`org/name` of the Hub's
/// characters, no empty or dot segments).
pub(crate) fn valid_model_id(model: &str) -> bool {
    !model.is_empty()
        && model.split('/').all(|segment| {
            !segment.is_empty()
                && segment != "."
                && segment != ".."
                && segment
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        })
}

/// The message of an error body: `{"error": "..." | ["...", ...], "error_type"?}`,
/// else the body text, else the status's reason.
pub(crate) fn error_message(status: StatusCode, body: &[u8]) -> (String, Option<f64>) {
    if let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(body) {
        let message = match map.get("error") {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Array(items)) => Some(
                items
                    .iter()
                    .map(|v| {
                        v.as_str()
                            .map(str::to_string)
                            .unwrap_or_else(|| v.to_string())
                    })
                    .collect::<Vec<_>>()
                    .join("; "),
            ),
            Some(Value::Object(inner)) => inner
                .get("message")
                .and_then(Value::as_str)
                .map(str::to_string)
                .or_else(|| Some(Value::Object(inner.clone()).to_string())),
            _ => map
                .get("message")
                .and_then(Value::as_str)
                .map(str::to_string),
        };
        let estimated = map.get("estimated_time").and_then(Value::as_f64);
        if let Some(mut message) = message {
            if let Some(kind) = map.get("error_type").and_then(Value::as_str) {
                message.push_str(&format!(" ({kind})"));
            }
            return (message, estimated);
        }
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        let reason = status.canonical_reason().unwrap_or("no message");
        return (reason.to_string(), None);
    }
    let mut cut = text.len().min(500);
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    (text[..cut].to_string(), None)
}

/// A `Retry-After` given in seconds.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<f64>()
        .ok()?;
    (value.is_finite() && value >= 0.0).then(|| Duration::try_from_secs_f64(value).ok())?
}

/// The text of an error and its sources.
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(inner) = source {
        let text = inner.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = inner.source();
    }
    message
}

/// A successful response's content type and body.
pub(crate) struct Reply {
    pub(crate) content_type: Option<String>,
    pub(crate) body: Bytes,
}

impl HfBackend {
    /// Build the backend and its HTTP client (rustls).
    pub fn new(config: HfConfig) -> Result<Self, HfError> {
        let mut config = config;
        config.base_url = normalized_base(&config.base_url)?;
        for url in config.model_endpoints.values_mut() {
            *url = normalized_base(url)?;
        }
        if let Some(token) = &config.token
            && reqwest::header::HeaderValue::from_str(&format!("Bearer {token}")).is_err()
        {
            return Err(HfError::Token);
        }
        let client = reqwest::Client::builder()
            .use_rustls_tls()
            .user_agent(concat!("hgpt/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| HfError::Client(error_chain(&e)))?;
        Ok(Self { config, client })
    }

    /// The configuration in use (base URLs normalised).
    pub fn config(&self) -> &HfConfig {
        &self.config
    }

    /// The base URL that serves `model`: its own endpoint or the default.
    pub fn base_for(&self, model: &str) -> &str {
        self.config
            .model_endpoints
            .get(model)
            .map_or(&self.config.base_url, String::as_str)
    }

    /// The URL an inference request for `model` goes to.
    pub fn inference_url(&self, model: &str, pipeline: Option<&str>) -> String {
        let base = self.base_for(model);
        match pipeline {
            Some(task) => format!("{base}/models/{model}/pipeline/{task}"),
            None => format!("{base}/models/{model}"),
        }
    }

    /// The HTTP client (shared with the router's polls and Hub calls).
    pub(crate) fn client(&self) -> &reqwest::Client {
        &self.client
    }

    fn with_auth(&self, builder: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.config.token {
            Some(token) => builder.header(AUTHORIZATION, format!("Bearer {token}")),
            None => builder,
        }
    }

    fn backoff(&self, retry: u32) -> Duration {
        let factor = 1u32 << retry.min(16);
        self.config
            .retry_base_delay
            .saturating_mul(factor)
            .min(self.config.retry_max_delay)
    }

    /// Send one request with the configured token, retries and loading
    /// waits; the body of the successful response.
    async fn send(
        &self,
        model: &str,
        url: &str,
        wire: &WireRequest,
    ) -> Result<Reply, InferenceError> {
        let auth = self.config.token.as_ref().map(|t| format!("Bearer {t}"));
        self.send_with(model, url, wire, auth.as_deref(), &[], false)
            .await
    }

    /// [`Self::send`] with an explicit `Authorization` value and extra headers
    /// (a provider called with its own key, `Prefer: wait`). A `once`
    /// request (submitting a billed job) is not repeated after a connection
    /// failure or a server error, which may come after the job was accepted;
    /// only a 429 (not accepted) is retried.
    pub(crate) async fn send_with(
        &self,
        model: &str,
        url: &str,
        wire: &WireRequest,
        authorization: Option<&str>,
        headers: &[(&str, &str)],
        once: bool,
    ) -> Result<Reply, InferenceError> {
        let max_retries = self.config.max_retries;
        let transient_retries = if once { 0 } else { max_retries };
        let mut retries = 0u32;
        let mut loading_since: Option<Instant> = None;
        loop {
            let mut builder = self.client.post(url).timeout(self.config.request_timeout);
            if let Some(value) = authorization {
                builder = builder.header(AUTHORIZATION, value);
            }
            for (name, value) in headers {
                builder = builder.header(*name, *value);
            }
            if let Some(accept) = wire.accept {
                builder = builder.header(ACCEPT, accept);
            }
            builder = match &wire.body {
                WireBody::Json(value) => builder.json(value),
                WireBody::Bytes { data, content_type } => {
                    let builder = match content_type {
                        Some(ct) => builder.header(CONTENT_TYPE, ct.as_str()),
                        None => builder,
                    };
                    builder.body(data.clone())
                }
            };
            let outcome = match builder.send().await {
                Ok(response) => {
                    let status = response.status();
                    let headers = response.headers().clone();
                    response.bytes().await.map(|body| (status, headers, body))
                }
                Err(err) => Err(err),
            };
            let (status, headers, body) = match outcome {
                Ok(parts) => parts,
                Err(err) if err.is_timeout() => {
                    return Err(InferenceError::Timeout {
                        model: model.to_string(),
                        after: self.config.request_timeout,
                    });
                }
                Err(err) => {
                    let message = error_chain(&err);
                    if retries < transient_retries {
                        let delay = self.backoff(retries);
                        retries += 1;
                        tracing::debug!(model, %message, ?delay, retries, "inference call failed; retrying");
                        tokio::time::sleep(delay).await;
                        continue;
                    }
                    return Err(InferenceError::Transport {
                        model: model.to_string(),
                        message,
                    });
                }
            };
            if status.is_success() {
                let content_type = headers
                    .get(CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                return Ok(Reply { content_type, body });
            }
            let (message, estimated_time) = error_message(status, &body);
            if status == StatusCode::SERVICE_UNAVAILABLE
                && let Some(estimated) = estimated_time
            {
                let since = *loading_since.get_or_insert_with(Instant::now);
                let remaining = self.config.max_loading_wait.saturating_sub(since.elapsed());
                if remaining.is_zero() {
                    return Err(InferenceError::Server {
                        model: model.to_string(),
                        status: status.as_u16(),
                        message: format!(
                            "{message} (still loading after {:?})",
                            self.config.max_loading_wait
                        ),
                    });
                }
                let estimated = if estimated.is_finite() {
                    estimated.max(0.0)
                } else {
                    0.0
                };
                let estimated = Duration::try_from_secs_f64(estimated).unwrap_or(remaining);
                // Never spin: wait at least a little, at most what is left.
                let floor = self.config.retry_base_delay.min(Duration::from_secs(1));
                let wait = estimated
                    .max(floor)
                    .max(Duration::from_millis(1))
                    .min(remaining);
                tracing::debug!(model, ?wait, "model is loading; waiting");
                tokio::time::sleep(wait).await;
                continue;
            }
            let retryable =
                status == StatusCode::TOO_MANY_REQUESTS || (status.is_server_error() && !once);
            if retryable && retries < max_retries {
                let delay = retry_after(&headers)
                    .map(|d| d.min(self.config.retry_max_delay))
                    .unwrap_or_else(|| self.backoff(retries));
                retries += 1;
                tracing::debug!(model, status = status.as_u16(), %message, ?delay, retries, "retrying");
                tokio::time::sleep(delay).await;
                continue;
            }
            return Err(InferenceError::Server {
                model: model.to_string(),
                status: status.as_u16(),
                message,
            });
        }
    }
}

/// A 2xx JSON body that is an error document (`{"error": ...}` alone or with
/// `error_type`), which some servers send with status 200.
pub(crate) fn error_in_success(body: &[u8]) -> Option<String> {
    let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(body) else {
        return None;
    };
    let only_error_keys = map.keys().all(|k| {
        matches!(
            k.as_str(),
            "error" | "error_type" | "estimated_time" | "warnings"
        )
    });
    if !map.contains_key("error") || !only_error_keys {
        return None;
    }
    Some(error_message(StatusCode::OK, body).0)
}

#[async_trait]
impl InferenceBackend for HfBackend {
    fn endpoint(&self, model: &str) -> String {
        match self.config.model_endpoints.get(model) {
            Some(url) => host_of(url).to_string(),
            None => self.config.endpoint_label.clone(),
        }
    }

    async fn availability(&self, task: TaskKind, model: &str) -> Availability {
        if is_local_only(task) {
            return Availability::Unavailable(format!("{task} runs on local models only"));
        }
        if !valid_model_id(model) {
            return Availability::Unavailable(format!("invalid model id {model:?}"));
        }
        let url = format!("{}/status/{model}", self.base_for(model));
        let request = self.with_auth(self.client.get(&url).timeout(self.config.status_timeout));
        let response = match request.send().await {
            Ok(response) => response,
            Err(err) if err.is_timeout() => {
                return Availability::Unavailable(format!(
                    "no answer from {} within {:?}",
                    self.endpoint(model),
                    self.config.status_timeout
                ));
            }
            Err(err) => {
                return Availability::Unavailable(format!(
                    "cannot reach {}: {}",
                    self.endpoint(model),
                    error_chain(&err)
                ));
            }
        };
        let status = response.status();
        let body = match response.bytes().await {
            Ok(body) => body,
            Err(err) => return Availability::Unavailable(error_chain(&err)),
        };
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            let (message, _) = error_message(status, &body);
            return Availability::Unavailable(format!("access denied ({status}): {message}"));
        }
        if !status.is_success() {
            // 404/405: no status route (or an unknown model, which selection
            // cannot tell apart); anything else: cannot tell.
            return Availability::Unknown;
        }
        let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(&body) else {
            return Availability::Unknown;
        };
        let state = map.get("state").and_then(Value::as_str).unwrap_or("");
        match state.to_ascii_lowercase().as_str() {
            "toobig" => {
                return Availability::Unavailable(format!(
                    "{model} is too big for the inference API"
                ));
            }
            "error" | "failed" | "unavailable" | "disabled" => {
                let detail = map.get("error").and_then(Value::as_str).unwrap_or(state);
                return Availability::Unavailable(format!("{model} cannot be served: {detail}"));
            }
            "loaded" => return Availability::Available,
            _ => {}
        }
        match map.get("loaded").and_then(Value::as_bool) {
            Some(true) => Availability::Available,
            _ => Availability::Unknown,
        }
    }

    async fn infer(&self, request: &InferenceRequest) -> Result<InferenceOutput, InferenceError> {
        let wire = build_request(request)?;
        let model = request.model.as_str();
        if !valid_model_id(model) {
            return Err(InferenceError::BadInput {
                task: request.task,
                message: format!("invalid model id {model:?}"),
            });
        }
        let url = self.inference_url(model, wire.pipeline);
        tracing::debug!(task = %request.task, model, %url, "inference call");
        let reply = self.send(model, &url, &wire).await?;
        if let Some(message) = error_in_success(&reply.body) {
            return Err(InferenceError::Server {
                model: model.to_string(),
                status: 200,
                message,
            });
        }
        decode_response(
            request.task,
            model,
            reply.content_type.as_deref(),
            reply.body,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_are_trimmed_and_checked() {
        assert_eq!(normalized_base("http://h:1/x//").unwrap(), "http://h:1/x");
        assert!(normalized_base("ftp://h").is_err());
        assert!(normalized_base("http://").is_err());
    }

    #[test]
    fn hosts_of_urls() {
        assert_eq!(host_of("http://127.0.0.1:8005/x"), "127.0.0.1:8005");
        assert_eq!(host_of("https://user@example.com"), "example.com");
    }

    #[test]
    fn model_ids() {
        assert!(valid_model_id("google/vit-base-patch16-224"));
        assert!(valid_model_id("gpt2"));
        assert!(!valid_model_id("../etc"));
        assert!(!valid_model_id("a//b"));
        assert!(!valid_model_id("a/b?x=1"));
        assert!(!valid_model_id(""));
    }

    #[test]
    fn error_bodies() {
        let (m, t) = error_message(
            StatusCode::SERVICE_UNAVAILABLE,
            br#"{"error": "Model x is currently loading", "estimated_time": 20.5}"#,
        );
        assert_eq!(m, "Model x is currently loading");
        assert_eq!(t, Some(20.5));
        let (m, _) = error_message(StatusCode::BAD_REQUEST, br#"{"error": ["a", "b"]}"#);
        assert_eq!(m, "a; b");
        let (m, _) = error_message(
            StatusCode::BAD_REQUEST,
            br#"{"error": "bad", "error_type": "validation"}"#,
        );
        assert_eq!(m, "bad (validation)");
        let (m, _) = error_message(StatusCode::BAD_GATEWAY, b"");
        assert_eq!(m, "Bad Gateway");
        let (m, _) = error_message(StatusCode::BAD_GATEWAY, b"upstream down");
        assert_eq!(m, "upstream down");
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let backend = HfBackend::new(HfConfig {
            retry_base_delay: Duration::from_millis(500),
            retry_max_delay: Duration::from_secs(10),
            ..HfConfig::default()
        })
        .unwrap();
        assert_eq!(backend.backoff(0), Duration::from_millis(500));
        assert_eq!(backend.backoff(1), Duration::from_secs(1));
        assert_eq!(backend.backoff(2), Duration::from_secs(2));
        assert_eq!(backend.backoff(10), Duration::from_secs(10));
        assert_eq!(backend.backoff(u32::MAX), Duration::from_secs(10));
    }
}
