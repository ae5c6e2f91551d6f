//! The Hub API calls hosted inference needs: a model's provider mapping,
//! model listings by task and downloads, and model cards.

use crate::mapping::{MappingError, ModelProviders, parse_model_info};
use crate::{error_chain, error_message, valid_model_id};
use reqwest::StatusCode;
use reqwest::header::AUTHORIZATION;
use serde_json::Value;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// The largest Hub API answer read (a listing of a few hundred models with
/// their configs is a few MiB; a model card rarely 100 KiB).
const MAX_ANSWER_BYTES: usize = 32 << 20;

/// The public Hub.
pub const DEFAULT_HUB_ENDPOINT: &str = "https://huggingface.co";

/// Whether `id` can be a Hub model id (`name` or `org/name`, at most 96
/// characters of the Hub's set), so that it never reaches another Hub route.
pub(crate) fn valid_hub_id(id: &str) -> bool {
    id.len() <= 96 && id.split('/').count() <= 2 && valid_model_id(id)
}

/// Why a Hub API call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HubError {
    /// No answer (connection refused, DNS, timeout).
    #[error("cannot reach the Hub API at {endpoint}: {message}")]
    Transport {
        /// The Hub endpoint.
        endpoint: String,
        /// What went wrong.
        message: String,
    },
    /// The Hub answered with an error status.
    #[error("the Hub API answered {status} for {what}: {message}")]
    Status {
        /// What was asked.
        what: String,
        /// HTTP status.
        status: u16,
        /// The Hub's message.
        message: String,
    },
    /// The answer is not what the API documents.
    #[error("unexpected answer from the Hub API for {what}: {message}")]
    Malformed {
        /// What was asked.
        what: String,
        /// What did not match.
        message: String,
    },
    /// A model id that cannot be put into a URL.
    #[error("invalid model id {0:?}")]
    ModelId(String),
}

/// One model of a listing (`GET /api/models?pipeline_tag=...`).
#[derive(Debug, Clone, PartialEq)]
pub struct ListedModel {
    /// `org/name`.
    pub id: String,
    /// Downloads over the last 30 days.
    pub downloads: Option<u64>,
    /// Likes.
    pub likes: Option<u64>,
    /// The model's task.
    pub pipeline_tag: Option<String>,
    /// Its tags.
    pub tags: Vec<String>,
    /// `config.architectures` and `config.model_type`, when the Hub has a
    /// config for it.
    pub architectures: Vec<String>,
    /// `config.model_type`.
    pub model_type: Option<String>,
    /// Providers serving it, in the Hub's order.
    pub providers: ModelProviders,
}

/// A client of the Hub API.
#[derive(Debug, Clone)]
pub struct HubApi {
    endpoint: String,
    token: Option<String>,
    client: reqwest::Client,
    timeout: Duration,
    requests: Arc<AtomicUsize>,
}

impl HubApi {
    /// A client of the Hub at `endpoint` (`HF_ENDPOINT`), sending `token`.
    pub fn new(
        endpoint: &str,
        token: Option<String>,
        client: reqwest::Client,
        timeout: Duration,
    ) -> Self {
        Self {
            endpoint: endpoint.trim().trim_end_matches('/').to_string(),
            token,
            client,
            timeout,
            requests: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// A client with its own HTTP client (rustls).
    pub fn connect(
        endpoint: &str,
        token: Option<String>,
        timeout: Duration,
    ) -> Result<Self, crate::HfError> {
        let client = reqwest::Client::builder()
            .use_rustls_tls()
            .user_agent(concat!("hgpt/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| crate::HfError::Client(error_chain(&e)))?;
        Ok(Self::new(endpoint, token, client, timeout))
    }

    /// The Hub endpoint in use.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// How many requests this client (and its clones) sent to the Hub.
    pub fn request_count(&self) -> usize {
        self.requests.load(Ordering::Relaxed)
    }

    async fn get(&self, what: &str, url: &str) -> Result<(StatusCode, bytes::Bytes), HubError> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let mut request = self.client.get(url).timeout(self.timeout);
        if let Some(token) = &self.token {
            request = request.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        let transport = |err: reqwest::Error| HubError::Transport {
            endpoint: self.endpoint.clone(),
            message: error_chain(&err),
        };
        let mut response = request.send().await.map_err(transport)?;
        let status = response.status();
        let too_big = || HubError::Malformed {
            what: what.to_string(),
            message: format!("the answer is over {} MiB", MAX_ANSWER_BYTES >> 20),
        };
        if response
            .content_length()
            .is_some_and(|n| n > MAX_ANSWER_BYTES as u64)
        {
            return Err(too_big());
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(transport)? {
            if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err(too_big());
            }
            body.extend_from_slice(&chunk);
        }
        tracing::debug!(what, status = status.as_u16(), "Hub API call");
        Ok((status, bytes::Bytes::from(body)))
    }

    fn status_error(what: &str, status: StatusCode, body: &[u8]) -> HubError {
        HubError::Status {
            what: what.to_string(),
            status: status.as_u16(),
            message: error_message(status, body).0,
        }
    }

    /// The providers serving `model`, its `pipeline_tag` and hf-inference
    /// state, in one call; `None` when the Hub does not know the model.
    pub async fn model_providers(&self, model: &str) -> Result<Option<ModelProviders>, HubError> {
        if !valid_hub_id(model) {
            return Err(HubError::ModelId(model.to_string()));
        }
        let url = format!(
            "{}/api/models/{model}?expand=inferenceProviderMapping&expand=pipeline_tag&expand=inference",
            self.endpoint
        );
        let (status, body) = self.get(model, &url).await?;
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(Self::status_error(model, status, &body));
        }
        parse_model_info(&body)
            .map(Some)
            .map_err(|MappingError(message)| HubError::Malformed {
                what: model.to_string(),
                message,
            })
    }

    /// The `limit` most downloaded models of a task, with their downloads,
    /// likes, tags, config architectures and provider mapping.
    pub async fn list_models(
        &self,
        task: &str,
        limit: usize,
    ) -> Result<Vec<ListedModel>, HubError> {
        let what = format!("the {task} listing");
        let mut url =
            reqwest::Url::parse(&format!("{}/api/models", self.endpoint)).map_err(|e| {
                HubError::Malformed {
                    what: what.clone(),
                    message: format!("bad endpoint: {e}"),
                }
            })?;
        url.query_pairs_mut()
            .append_pair("pipeline_tag", task)
            .append_pair("sort", "downloads")
            .append_pair("direction", "-1")
            .append_pair("limit", &limit.to_string());
        for field in [
            "downloads",
            "likes",
            "tags",
            "pipeline_tag",
            "config",
            "inferenceProviderMapping",
        ] {
            url.query_pairs_mut().append_pair("expand", field);
        }
        let (status, body) = self.get(&what, url.as_str()).await?;
        if !status.is_success() {
            return Err(Self::status_error(&what, status, &body));
        }
        let malformed = |message: String| HubError::Malformed {
            what: what.clone(),
            message,
        };
        let items: Vec<Value> = serde_json::from_slice(&body)
            .map_err(|e| malformed(format!("not a list of models: {e}")))?;
        items
            .iter()
            .map(|item| listed_model(item).map_err(&malformed))
            .collect()
    }

    /// The model card's text (`README.md`), if the repository has one.
    pub async fn model_card(&self, model: &str) -> Result<Option<String>, HubError> {
        if !valid_hub_id(model) {
            return Err(HubError::ModelId(model.to_string()));
        }
        let url = format!("{}/{model}/resolve/main/README.md", self.endpoint);
        let (status, body) = self.get(model, &url).await?;
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(Self::status_error(model, status, &body));
        }
        Ok(Some(String::from_utf8_lossy(&body).into_owned()))
    }
}

fn listed_model(item: &Value) -> Result<ListedModel, String> {
    let id = item
        .get("id")
        .or_else(|| item.get("modelId"))
        .and_then(Value::as_str)
        .ok_or_else(|| format!("a model without an id: {}", crate::decode::describe(item)))?;
    let count = |key: &str| item.get(key).and_then(Value::as_u64);
    let strings = |value: Option<&Value>| -> Vec<String> {
        value
            .and_then(Value::as_array)
            .map(|items| {
                items
                    .iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    };
    // Listings send the mapping as a list, whose order a `Value` keeps.
    let providers = parse_model_info(item.to_string().as_bytes())
        .map_err(|MappingError(message)| format!("{id}: {message}"))?;
    let config = item.get("config");
    Ok(ListedModel {
        id: id.to_string(),
        downloads: count("downloads"),
        likes: count("likes"),
        pipeline_tag: item
            .get("pipeline_tag")
            .and_then(Value::as_str)
            .map(str::to_string),
        tags: strings(item.get("tags")),
        architectures: strings(config.and_then(|c| c.get("architectures"))),
        model_type: config
            .and_then(|c| c.get("model_type"))
            .and_then(Value::as_str)
            .map(str::to_string),
        providers,
    })
}

/// A one-paragraph description from a model card: the first paragraph of
/// prose after the YAML header, without headings, images, badges, HTML or
/// Markdown link syntax, cut to `max_chars` at a word boundary.
pub fn card_summary(card: &str, max_chars: usize) -> Option<String> {
    let body = match card.strip_prefix("---") {
        Some(rest) => rest.split_once("\n---").map_or("", |(_, after)| {
            after.split_once('\n').map_or("", |(_, b)| b)
        }),
        None => card,
    };
    let mut in_code = false;
    let mut paragraph: Vec<String> = Vec::new();
    for line in body.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if in_code {
            continue;
        }
        let skip = trimmed.starts_with('#')
            || trimmed.starts_with('<')
            || trimmed.starts_with("![")
            || trimmed.starts_with("[![")
            || trimmed.starts_with('|')
            || trimmed.starts_with('>')
            || trimmed.starts_with("---");
        if trimmed.is_empty() || skip {
            if !paragraph.is_empty() {
                break;
            }
            continue;
        }
        paragraph.push(plain_markdown(trimmed));
    }
    let text = paragraph.join(" ");
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if text.is_empty() {
        return None;
    }
    if text.chars().count() <= max_chars {
        return Some(text);
    }
    let cut: String = text.chars().take(max_chars).collect();
    let cut = match cut.rfind(' ') {
        Some(space) if space > max_chars / 2 => &cut[..space],
        _ => cut.as_str(),
    };
    Some(format!("{}...", cut.trim_end_matches([',', ';', ':', ' '])))
}

/// `[text](url)` as `text`, emphasis markers and inline code ticks dropped,
/// list markers removed.
fn plain_markdown(line: &str) -> String {
    let line = line
        .strip_prefix("- ")
        .or_else(|| line.strip_prefix("* "))
        .unwrap_or(line);
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(open) = rest.find('[') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        match after.find("](").and_then(|close| {
            after[close + 2..]
                .find(')')
                .map(|end| (close, close + 2 + end))
        }) {
            Some((close, end)) => {
                out.push_str(&after[..close]);
                rest = &after[end + 1..];
            }
            None => {
                out.push('[');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out.replace("**", "").replace('`', "")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn card_summaries_take_the_first_prose_paragraph() {
        let card = "---\nlicense: mit\ntags:\n- vision\n---\n\n# BLIP\n\n![img](x.png)\n\nModel card for [BLIP](https://arxiv.org) trained on **COCO**.\nIt captions `images`.\n\nSecond paragraph.";
        assert_eq!(
            card_summary(card, 200).as_deref(),
            Some("Model card for BLIP trained on COCO. It captions images.")
        );
        let long = "word ".repeat(100);
        let summary = card_summary(&long, 50).unwrap();
        assert!(summary.ends_with("...") && summary.len() <= 53, "{summary}");
        assert_eq!(
            card_summary("---\nlicense: mit\n---\n# Title only\n", 100),
            None
        );
        assert_eq!(
            card_summary("```\ncode\n```\nprose [unclosed", 100).as_deref(),
            Some("prose [unclosed")
        );
    }

    #[test]
    fn listed_models_read_counts_config_and_mapping() {
        let item: Value = serde_json::from_str(
            r#"{"id": "o/m", "downloads": 12, "likes": 3, "pipeline_tag": "text-to-speech",
                "tags": ["tts", 5], "config": {"architectures": ["VitsModel"], "model_type": "vits"},
                "inferenceProviderMapping": [{"provider": "fal-ai", "providerId": "f/m", "task": "text-to-speech", "status": "live"}]}"#,
        )
        .unwrap();
        let model = listed_model(&item).unwrap();
        assert_eq!(model.downloads, Some(12));
        assert_eq!(model.tags, ["tts"]);
        assert_eq!(model.architectures, ["VitsModel"]);
        assert_eq!(model.model_type.as_deref(), Some("vits"));
        assert_eq!(model.providers.entries[0].provider, "fal-ai");
        assert!(listed_model(&serde_json::json!({"downloads": 1})).is_err());
    }
}
