//! Configuration of the Hugging Face backend.

use std::collections::BTreeMap;
use std::time::Duration;

/// The hosted serverless inference route of the Hugging Face router.
pub const DEFAULT_BASE_URL: &str = "https://router.huggingface.co/hf-inference";

/// Settings of [`HfBackend`](crate::HfBackend). Its `Debug` output hides the token.
#[derive(Clone, PartialEq)]
pub struct HfConfig {
    /// Base URL of the inference API; requests go to `{base_url}/models/{id}`.
    pub base_url: String,
    /// Access token sent as `Authorization: Bearer {token}`.
    pub token: Option<String>,
    /// Limit on one HTTP exchange (request and whole response).
    pub request_timeout: Duration,
    /// Retries after rate limits, server errors and connection failures.
    pub max_retries: u32,
    /// Total time to wait for a model that answers "currently loading".
    pub max_loading_wait: Duration,
    /// What [`endpoint`](hgpt_core::backend::InferenceBackend::endpoint) reports
    /// for models served from `base_url`.
    pub endpoint_label: String,
    /// Model id -> its own base URL (a dedicated endpoint or a local model
    /// server), used instead of `base_url` for that model.
    pub model_endpoints: BTreeMap<String, String>,
    /// First backoff delay between retries; doubled on each retry.
    pub retry_base_delay: Duration,
    /// Cap on one backoff delay, including a server's `Retry-After`.
    pub retry_max_delay: Duration,
    /// Limit on one availability (`/status`) probe.
    pub status_timeout: Duration,
}

impl Default for HfConfig {
    fn default() -> Self {
        Self {
            base_url: DEFAULT_BASE_URL.to_string(),
            token: None,
            request_timeout: Duration::from_secs(120),
            max_retries: 3,
            max_loading_wait: Duration::from_secs(120),
            endpoint_label: "huggingface".to_string(),
            model_endpoints: BTreeMap::new(),
            retry_base_delay: Duration::from_millis(500),
            retry_max_delay: Duration::from_secs(10),
            status_timeout: Duration::from_secs(5),
        }
    }
}

impl std::fmt::Debug for HfConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HfConfig")
            .field("base_url", &self.base_url)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("request_timeout", &self.request_timeout)
            .field("max_retries", &self.max_retries)
            .field("max_loading_wait", &self.max_loading_wait)
            .field("endpoint_label", &self.endpoint_label)
            .field("model_endpoints", &self.model_endpoints)
            .field("retry_base_delay", &self.retry_base_delay)
            .field("retry_max_delay", &self.retry_max_delay)
            .field("status_timeout", &self.status_timeout)
            .finish()
    }
}

impl HfConfig {
    /// The default configuration pointed at another base URL.
    pub fn with_base_url(base_url: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into(),
            ..Self::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_hides_the_token() {
        let config = HfConfig {
            token: Some("hf_secret".into()),
            ..HfConfig::default()
        };
        let text = format!("{config:?}");
        assert!(!text.contains("hf_secret"), "{text}");
        assert!(text.contains("<redacted>"), "{text}");
    }
}
