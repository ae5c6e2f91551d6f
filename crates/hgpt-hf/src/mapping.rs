//! Which inference providers serve a model, as the Hub API publishes it
//! (`GET /api/models/{id}?expand[]=inferenceProviderMapping`).
//!
//! The Hub answers the mapping as an object keyed by provider (model info) or
//! as a list of objects with a `provider` field (model listings); both are
//! read, and the order is kept: it follows the user's provider preferences.

use hgpt_core::task::TaskKind;
use serde::de::{Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// How a provider's health check sees a mapped model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MappingStatus {
    /// In production.
    Live,
    /// Being set up by the model's author; callable, meant for tests.
    Staging,
    /// The provider's latest automated health check failed.
    Error,
}

/// One provider serving one model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderEntry {
    /// The provider's name on the router (`hf-inference`, `fal-ai`, ...).
    pub provider: String,
    /// The provider's own id of the model (`fal-ai/flux/dev`, ...).
    pub provider_id: String,
    /// The task the provider serves the model for (the Hub's task name).
    pub task: String,
    /// Live, staging or failing.
    pub status: MappingStatus,
    /// LoRA weights inside the Hub repository, for adapter models.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapter_weights_path: Option<String>,
}

impl ProviderEntry {
    /// Whether this entry serves `task` (the Hub calls chat `conversational`).
    pub fn serves(&self, task: TaskKind) -> bool {
        self.task == task.as_str()
    }
}

/// What the Hub says about where a model runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelProviders {
    /// Providers in the Hub's order (the user's preferences first).
    pub entries: Vec<ProviderEntry>,
    /// The model's `pipeline_tag`, which `hf-inference` serves it for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline_tag: Option<String>,
    /// `hf-inference`'s state of the model (`warm` when loaded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inference: Option<String>,
}

/// A mapping the Hub sent that hgpt cannot read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unreadable provider mapping: {0}")]
pub struct MappingError(pub String);

/// The mapping as sent: a list of entries, or an object keyed by provider
/// with its keys in document order (serde_json's `Map` would sort them).
enum RawMapping {
    List(Vec<Value>),
    Object(Vec<(String, Value)>),
}

impl<'de> Deserialize<'de> for RawMapping {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Raw;
        impl<'de> Visitor<'de> for Raw {
            type Value = RawMapping;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a provider mapping (an object or a list)")
            }
            fn visit_unit<E>(self) -> Result<RawMapping, E> {
                Ok(RawMapping::List(Vec::new()))
            }
            fn visit_none<E>(self) -> Result<RawMapping, E> {
                Ok(RawMapping::List(Vec::new()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawMapping, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<Value>()? {
                    items.push(item);
                }
                Ok(RawMapping::List(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawMapping, A::Error> {
                let mut pairs = Vec::new();
                while let Some((key, value)) = map.next_entry::<String, Value>()? {
                    pairs.push((key, value));
                }
                Ok(RawMapping::Object(pairs))
            }
        }
        deserializer.deserialize_any(Raw)
    }
}

impl RawMapping {
    /// The readable entries; one the Hub describes in a way hgpt does not
    /// know (a new status, a missing field) is left out with a warning
    /// instead of costing the model its other providers.
    fn entries(&self) -> Vec<ProviderEntry> {
        let read = |result: Result<ProviderEntry, MappingError>| match result {
            Ok(entry) => Some(entry),
            Err(err) => {
                tracing::warn!(%err, "ignoring a provider mapping entry");
                None
            }
        };
        match self {
            RawMapping::List(items) => items
                .iter()
                .filter_map(|item| read(entry(None, item)))
                .collect(),
            RawMapping::Object(pairs) => pairs
                .iter()
                .filter_map(|(provider, value)| read(entry(Some(provider), value)))
                .collect(),
        }
    }
}

#[derive(Deserialize)]
struct InfoDocument {
    #[serde(rename = "inferenceProviderMapping", default)]
    mapping: Option<RawMapping>,
    #[serde(default)]
    pipeline_tag: Option<Value>,
    #[serde(default)]
    inference: Option<Value>,
}

/// One entry from its JSON object; `provider` comes from the key in the
/// object form.
fn entry(provider: Option<&str>, value: &Value) -> Result<ProviderEntry, MappingError> {
    let text = |key: &str| value.get(key).and_then(Value::as_str);
    let provider = provider
        .or_else(|| text("provider"))
        .ok_or_else(|| MappingError(format!("an entry names no provider: {value}")))?;
    let provider_id =
        text("providerId").ok_or_else(|| MappingError(format!("{provider}: no providerId")))?;
    let task = text("task").ok_or_else(|| MappingError(format!("{provider}: no task")))?;
    let status = match text("status") {
        Some("live") => MappingStatus::Live,
        Some("staging") => MappingStatus::Staging,
        Some("error") => MappingStatus::Error,
        other => {
            return Err(MappingError(format!(
                "{provider}: unknown status {other:?}"
            )));
        }
    };
    Ok(ProviderEntry {
        provider: provider.to_string(),
        provider_id: provider_id.to_string(),
        task: task.to_string(),
        status,
        adapter_weights_path: text("adapterWeightsPath").map(str::to_string),
    })
}

/// Read a model info document (`{"inferenceProviderMapping": ..., "pipeline_tag"?,
/// "inference"?}`), keeping the mapping's order. A model without the field
/// has no providers.
pub fn parse_model_info(body: &[u8]) -> Result<ModelProviders, MappingError> {
    let info: InfoDocument = serde_json::from_slice(body)
        .map_err(|e| MappingError(format!("not a model info object: {e}")))?;
    Ok(ModelProviders {
        entries: match &info.mapping {
            Some(raw) => raw.entries(),
            None => Vec::new(),
        },
        pipeline_tag: info
            .pipeline_tag
            .as_ref()
            .and_then(Value::as_str)
            .map(str::to_string),
        inference: info
            .inference
            .as_ref()
            .and_then(Value::as_str)
            .map(str::to_string),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_object_form_keeps_the_hubs_order() {
        let body = br#"{"_id": "x", "id": "org/m", "pipeline_tag": "text-to-image",
            "inferenceProviderMapping": {
              "together": {"status": "live", "providerId": "org/m-t", "task": "text-to-image"},
              "fal-ai": {"status": "staging", "providerId": "fal-ai/m", "task": "text-to-image", "isModelAuthor": false},
              "hf-inference": {"status": "error", "providerId": "org/m", "task": "text-to-image"}
            }}"#;
        let info = parse_model_info(body).unwrap();
        let names: Vec<_> = info.entries.iter().map(|e| e.provider.as_str()).collect();
        assert_eq!(names, ["together", "fal-ai", "hf-inference"]);
        assert_eq!(info.entries[1].provider_id, "fal-ai/m");
        assert_eq!(info.entries[1].status, MappingStatus::Staging);
        assert_eq!(info.entries[2].status, MappingStatus::Error);
        assert_eq!(info.pipeline_tag.as_deref(), Some("text-to-image"));
        assert!(info.entries[0].serves(TaskKind::TextToImage));
        assert!(!info.entries[0].serves(TaskKind::ImageToImage));
    }

    #[test]
    fn the_list_form_and_missing_mappings() {
        let body = br#"{"inferenceProviderMapping": [
            {"provider": "replicate", "providerId": "o/m:v1", "task": "text-to-speech", "status": "live"},
            {"provider": "fal-ai", "providerId": "fal-ai/m", "task": "text-to-speech", "status": "live",
             "adapterWeightsPath": "lora.safetensors"}], "inference": "warm"}"#;
        let info = parse_model_info(body).unwrap();
        assert_eq!(info.entries[0].provider, "replicate");
        assert_eq!(
            info.entries[1].adapter_weights_path.as_deref(),
            Some("lora.safetensors")
        );
        assert_eq!(info.inference.as_deref(), Some("warm"));
        assert!(
            parse_model_info(br#"{"id": "a/b"}"#)
                .unwrap()
                .entries
                .is_empty()
        );
        assert!(
            parse_model_info(br#"{"inferenceProviderMapping": null}"#)
                .unwrap()
                .entries
                .is_empty()
        );
    }

    #[test]
    fn entries_hgpt_cannot_read_are_left_out() {
        let body = br#"{"inferenceProviderMapping": {
            "fal-ai": {"status": "live", "task": "t"},
            "together": {"status": "retired", "providerId": "p", "task": "t"},
            "replicate": {"status": "live", "providerId": "r", "task": "t"}}}"#;
        let info = parse_model_info(body).unwrap();
        assert_eq!(info.entries.len(), 1);
        assert_eq!(info.entries[0].provider, "replicate");
        let cases = [
            (
                Some("fal-ai"),
                r#"{"status": "live", "task": "t"}"#,
                "providerId",
            ),
            (
                Some("fal-ai"),
                r#"{"status": "gone", "providerId": "p", "task": "t"}"#,
                "status",
            ),
            (
                None,
                r#"{"providerId": "p", "task": "t", "status": "live"}"#,
                "provider",
            ),
        ];
        for (provider, bad, needle) in cases {
            let value: Value = serde_json::from_str(bad).unwrap();
            let err = entry(provider, &value).unwrap_err().to_string();
            assert!(err.contains(needle), "{err}");
        }
    }

    #[test]
    fn unreadable_mappings_name_the_problem() {
        for (body, needle) in [
            (&br#"{"inferenceProviderMapping": 3}"#[..], "mapping"),
            (b"[1, 2]", "model info"),
            (b"<html>", "model info"),
        ] {
            let err = parse_model_info(body).unwrap_err().to_string();
            assert!(err.contains(needle), "{err}");
        }
    }
}
