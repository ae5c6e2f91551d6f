//! Stage 2: choosing a model for a task.
//!
//! Candidates are the top catalog entries of the task type, checked for
//! availability concurrently and cut to the configured number. None -> the
//! task fails; one -> chosen without the LLM; more -> one single-choice LLM
//! call whose answer is parsed robustly (JSON in prose, then a regex), with
//! the top candidate as the fallback when the answer names no candidate.

use crate::backend::{
    Availability, ChatMessage, ChatModel, ChatRequest, InferenceBackend, LlmError,
};
use crate::catalog::{Catalog, CatalogEntry};
use crate::lenient_json;
use crate::prompt::{StagePrompt, render};
use crate::record::{ModelChoice, SkippedModel};
use crate::shape::{ChoiceShape, OutputShape};
use crate::task::TaskKind;
use futures::future::join_all;
use regex::Regex;
use serde_json::Value;
use std::sync::LazyLock;

/// A model that could run a task.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// Its catalog entry.
    pub entry: CatalogEntry,
    /// Where it would run.
    pub endpoint: String,
    /// What the backend said about it.
    pub availability: Availability,
}

/// The outcome of selection for one task.
#[derive(Debug, Clone, PartialEq)]
pub struct Selection {
    /// The chosen model and why.
    pub choice: ModelChoice,
    /// Where it runs.
    pub endpoint: String,
    /// The other usable candidates, best first, for fallback when the chosen
    /// model fails.
    pub alternatives: Vec<Candidate>,
}

/// Why no model could be chosen.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SelectionError {
    /// No candidate is available.
    #[error("no available model for {task}{}", reason.as_ref().map(|r| format!(" ({r})")).unwrap_or_default())]
    NoModel {
        /// The task type.
        task: TaskKind,
        /// Why the best-ranked model was refused, when one was considered.
        reason: Option<String>,
    },
}

/// The usable candidates of a task, and why the best-ranked refused one was refused.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Candidates {
    /// Usable models, best first.
    pub usable: Vec<Candidate>,
    /// The considered models that are not usable, best-ranked first, and why.
    pub refused: Vec<SkippedModel>,
}

/// Settings of selection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SelectionConfig {
    /// Catalog entries considered before availability checks (reference: 10).
    pub considered: usize,
    /// Candidates shown to the LLM (reference: 5).
    pub candidates: usize,
    /// Description length in the prompt (reference: 100).
    pub max_description_len: usize,
}

impl Default for SelectionConfig {
    fn default() -> Self {
        Self {
            considered: 10,
            candidates: 5,
            max_description_len: 100,
        }
    }
}

/// The usable candidates for a task: the top `considered` catalog entries,
/// checked concurrently, in rank order, cut to `candidates`. Models that
/// would have to be downloaded first are offered only when no model can run
/// without a download.
pub async fn candidates(
    catalog: &Catalog,
    backend: &dyn InferenceBackend,
    task: TaskKind,
    config: &SelectionConfig,
) -> Candidates {
    let entries: Vec<&CatalogEntry> = catalog
        .ranked(&crate::task::TaskName::Known(task))
        .into_iter()
        .take(config.considered)
        .collect();
    let checks = entries.iter().map(|e| backend.availability(task, &e.id));
    let results = join_all(checks).await;
    let refused = entries
        .iter()
        .zip(&results)
        .filter_map(|(entry, availability)| match availability {
            Availability::Unavailable(reason) => Some(SkippedModel {
                id: entry.id.clone(),
                reason: reason.clone(),
            }),
            _ => None,
        })
        .collect();
    let ready = |a: &Availability| a.is_usable() && !matches!(a, Availability::Pullable(_));
    let any_ready = results.iter().any(ready);
    let usable = entries
        .into_iter()
        .zip(results)
        .filter(|(_, availability)| {
            if any_ready {
                ready(availability)
            } else {
                availability.is_usable()
            }
        })
        .take(config.candidates)
        .map(|(entry, availability)| Candidate {
            endpoint: backend.endpoint(&entry.id),
            entry: entry.clone(),
            availability,
        })
        .collect();
    Candidates { usable, refused }
}

/// One line per candidate for the selection prompt.
pub fn describe_candidates(candidates: &[Candidate], max_description_len: usize) -> String {
    candidates
        .iter()
        .map(|c| {
            let likes = c
                .entry
                .likes
                .map_or_else(|| "unknown".to_string(), |l| l.to_string());
            let tags = if c.entry.tags.is_empty() {
                "none".to_string()
            } else {
                c.entry.tags.join(", ")
            };
            format!(
                "- {} | endpoint: {} | likes: {} | {} | tags: {}",
                c.entry.id,
                c.endpoint,
                likes,
                c.entry.short_description(max_description_len),
                tags
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The single-choice request for the LLM.
pub fn selection_request(
    prompt: &StagePrompt,
    user_request: &str,
    task: TaskKind,
    task_args: &Value,
    candidates: &[Candidate],
    max_description_len: usize,
) -> ChatRequest {
    let task_text = format!("{task} with arguments {task_args}");
    let mut messages = vec![ChatMessage::system(prompt.system.clone())];
    messages.extend(prompt.demos.iter().cloned());
    messages.push(ChatMessage::user(render(
        &prompt.user,
        &[
            ("input", user_request),
            ("task", &task_text),
            (
                "candidates",
                &describe_candidates(candidates, max_description_len),
            ),
        ],
    )));
    ChatRequest {
        messages,
        temperature: Some(0.0),
        shape: Some(OutputShape::Choice(ChoiceShape::new(
            candidates.iter().map(|c| c.entry.id.clone()).collect(),
        ))),
        ..ChatRequest::default()
    }
}

static ID_FIELD: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r#"(?i)["']?\bid["']?\s*[:=]\s*["']([^"'\n]+)["']"#)
        .unwrap_or_else(|e| unreachable!("static regex: {e}"))
});
static REASON_FIELD: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r#"(?is)["']?\breason["']?\s*[:=]\s*["'](.+?)["']\s*(?:[,}]|$)"#)
        .unwrap_or_else(|e| unreachable!("static regex: {e}"))
});

/// Read the LLM's `{"id", "reason"}` answer and map it onto a candidate.
///
/// Order of attempts: a JSON object anywhere in the text; a regex for `id` and
/// `reason`; a candidate id mentioned verbatim. The id is matched exactly,
/// then case-insensitively, then by the name after the `/`. An answer naming
/// no candidate yields the top candidate, with a reason that says so.
pub fn parse_choice(answer: &str, candidates: &[Candidate]) -> Option<ModelChoice> {
    let top = candidates.first()?;
    let (id, reason) = extract_id_and_reason(answer);
    let reason = reason.filter(|r| !r.trim().is_empty());
    let matched = id
        .as_deref()
        .and_then(|id| match_candidate(id, candidates))
        .or_else(|| longest_mention(answer, candidates));
    Some(match matched {
        Some(candidate) => ModelChoice {
            id: candidate.entry.id.clone(),
            reason: reason.unwrap_or_else(|| "chosen by the controller LLM".to_string()),
        },
        None => ModelChoice {
            id: top.entry.id.clone(),
            reason: match id {
                Some(id) => format!(
                    "the selector named {id:?}, which is not a candidate; using the top-ranked candidate"
                ),
                None => "the selector's answer named no model; using the top-ranked candidate"
                    .to_string(),
            },
        },
    })
}

/// The candidate whose id the text mentions, preferring the longest id when
/// one is a prefix of another (`detr-resnet-50` vs `detr-resnet-50-panoptic`).
fn longest_mention<'c>(text: &str, candidates: &'c [Candidate]) -> Option<&'c Candidate> {
    let mentioned: Vec<&Candidate> = candidates
        .iter()
        .filter(|c| text.contains(c.entry.id.as_str()))
        .collect();
    let longest = mentioned.iter().map(|c| c.entry.id.len()).max()?;
    let mut best = mentioned
        .into_iter()
        .filter(|c| c.entry.id.len() == longest);
    let first = best.next()?;
    best.next().is_none().then_some(first)
}

fn extract_id_and_reason(answer: &str) -> (Option<String>, Option<String>) {
    for object in lenient_json::scan_objects(answer) {
        let id = object.get("id").and_then(value_text);
        if id.is_some() {
            let reason = object.get("reason").and_then(value_text);
            return (id, reason);
        }
    }
    let id = ID_FIELD
        .captures(answer)
        .and_then(|c| c.get(1))
        .map(|m| m.as_str().trim().to_string());
    let reason = REASON_FIELD
        .captures(answer)
        .and_then(|c| c.get(1))
        .map(|m| m.as_str().trim().to_string());
    (id, reason)
}

fn value_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.trim().to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn match_candidate<'c>(id: &str, candidates: &'c [Candidate]) -> Option<&'c Candidate> {
    let id = id
        .trim()
        .trim_matches(|c| c == '`' || c == '"' || c == '\'');
    candidates
        .iter()
        .find(|c| c.entry.id == id)
        .or_else(|| {
            candidates
                .iter()
                .find(|c| c.entry.id.eq_ignore_ascii_case(id))
        })
        .or_else(|| {
            let name = |s: &str| s.rsplit('/').next().unwrap_or(s).to_ascii_lowercase();
            let wanted = name(id);
            let hits: Vec<&Candidate> = candidates
                .iter()
                .filter(|c| name(&c.entry.id) == wanted)
                .collect();
            (hits.len() == 1).then(|| hits[0])
        })
}

/// Choose among candidates: none -> error, one -> no LLM call, more -> ask.
/// An LLM failure falls back to the top candidate (with the error as reason).
pub async fn choose(
    llm: &dyn ChatModel,
    prompt: &StagePrompt,
    user_request: &str,
    task: TaskKind,
    task_args: &Value,
    mut candidates: Vec<Candidate>,
    config: &SelectionConfig,
) -> Result<Selection, SelectionError> {
    if candidates.is_empty() {
        return Err(SelectionError::NoModel { task, reason: None });
    }
    let choice = if candidates.len() == 1 {
        ModelChoice {
            id: candidates[0].entry.id.clone(),
            reason: "the only available candidate for this task".to_string(),
        }
    } else {
        let request = selection_request(
            prompt,
            user_request,
            task,
            task_args,
            &candidates,
            config.max_description_len,
        );
        let answer: Result<String, LlmError> = llm.complete(request).await;
        match answer {
            Ok(text) => parse_choice(&text, &candidates),
            Err(e) => Some(ModelChoice {
                id: candidates[0].entry.id.clone(),
                reason: format!("the selection call failed ({e}); using the top-ranked candidate"),
            }),
        }
        .ok_or(SelectionError::NoModel { task, reason: None })?
    };
    let position = candidates
        .iter()
        .position(|c| c.entry.id == choice.id)
        .unwrap_or(0);
    let chosen = candidates.remove(position);
    Ok(Selection {
        choice,
        endpoint: chosen.endpoint,
        alternatives: candidates,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(id: &str) -> Candidate {
        Candidate {
            entry: CatalogEntry {
                id: id.to_string(),
                task: "object-detection".into(),
                downloads: None,
                likes: Some(3),
                tags: vec!["detr".into()],
                description: "A detector.".into(),
                ..CatalogEntry::default()
            },
            endpoint: "huggingface".into(),
            availability: Availability::Unknown,
        }
    }

    fn cands() -> Vec<Candidate> {
        vec![
            candidate("facebook/detr-resnet-50"),
            candidate("hustvl/yolos-tiny"),
        ]
    }

    /// A backend with a fixed availability per model.
    struct Availabilities(Vec<(&'static str, Availability)>);

    #[async_trait::async_trait]
    impl InferenceBackend for Availabilities {
        fn endpoint(&self, _model: &str) -> String {
            "local".into()
        }
        async fn availability(&self, _task: TaskKind, model: &str) -> Availability {
            self.0
                .iter()
                .find(|(m, _)| *m == model)
                .map_or(Availability::Unknown, |(_, a)| a.clone())
        }
        async fn infer(
            &self,
            _request: &crate::backend::InferenceRequest,
        ) -> Result<crate::output::InferenceOutput, crate::backend::InferenceError> {
            Err(crate::backend::InferenceError::Unsupported(
                "not here".into(),
            ))
        }
    }

    #[tokio::test]
    async fn models_to_download_are_offered_only_when_nothing_is_ready() {
        let catalog = Catalog::from_jsonl(
            r#"{"id": "big/a", "task": "object-detection", "downloads": 100}
{"id": "cached/b", "task": "object-detection", "downloads": 10}
{"id": "big/c", "task": "object-detection", "downloads": 1}"#,
            "test",
        )
        .unwrap();
        let pull = || Availability::Pullable("download".into());
        let ids = |found: &Candidates| -> Vec<String> {
            found.usable.iter().map(|c| c.entry.id.clone()).collect()
        };
        let config = SelectionConfig::default();
        let some_cached = Availabilities(vec![
            ("big/a", pull()),
            ("cached/b", Availability::Available),
            ("big/c", pull()),
        ]);
        let found = candidates(&catalog, &some_cached, TaskKind::ObjectDetection, &config).await;
        assert_eq!(ids(&found), ["cached/b"]);
        let none_cached = Availabilities(vec![
            ("big/a", pull()),
            ("cached/b", Availability::Unavailable("gone".into())),
            ("big/c", pull()),
        ]);
        let found = candidates(&catalog, &none_cached, TaskKind::ObjectDetection, &config).await;
        assert_eq!(ids(&found), ["big/a", "big/c"]);
    }

    #[test]
    fn strict_json() {
        let c = parse_choice(
            r#"{"id": "hustvl/yolos-tiny", "reason": "small and fast"}"#,
            &cands(),
        )
        .unwrap();
        assert_eq!(
            c,
            ModelChoice {
                id: "hustvl/yolos-tiny".into(),
                reason: "small and fast".into()
            }
        );
    }

    #[test]
    fn json_in_prose_with_single_quotes() {
        let c = parse_choice(
            "I pick {'id': 'hustvl/yolos-tiny', 'reason': 'it's tiny'} as asked.",
            &cands(),
        )
        .unwrap();
        assert_eq!(c.id, "hustvl/yolos-tiny");
        assert_eq!(c.reason, "it's tiny");
    }

    #[test]
    fn regex_fallback_on_broken_json() {
        let c = parse_choice(r#"{"id": "hustvl/yolos-tiny", "reason": "fast" "#, &cands()).unwrap();
        assert_eq!(c.id, "hustvl/yolos-tiny");
        assert_eq!(c.reason, "fast");
        let c = parse_choice("id = 'HUSTVL/YOLOS-TINY'", &cands()).unwrap();
        assert_eq!(c.id, "hustvl/yolos-tiny");
    }

    #[test]
    fn name_without_org_and_verbatim_mentions() {
        assert_eq!(
            parse_choice(r#"{"id": "yolos-tiny"}"#, &cands())
                .unwrap()
                .id,
            "hustvl/yolos-tiny"
        );
        let c = parse_choice("hustvl/yolos-tiny looks best here.", &cands()).unwrap();
        assert_eq!(c.id, "hustvl/yolos-tiny");
    }

    #[test]
    fn the_longest_mentioned_id_wins() {
        let cands = vec![
            candidate("facebook/detr-resnet-50"),
            candidate("facebook/detr-resnet-50-panoptic"),
        ];
        let c = parse_choice("I pick facebook/detr-resnet-50-panoptic.", &cands).unwrap();
        assert_eq!(c.id, "facebook/detr-resnet-50-panoptic");
    }

    #[test]
    fn unknown_id_falls_back_to_top_candidate() {
        let c = parse_choice(r#"{"id": "openai/gpt-9", "reason": "x"}"#, &cands()).unwrap();
        assert_eq!(c.id, "facebook/detr-resnet-50");
        assert!(
            c.reason.contains("openai/gpt-9") && c.reason.contains("not a candidate"),
            "{}",
            c.reason
        );
        let c = parse_choice("no idea", &cands()).unwrap();
        assert_eq!(c.id, "facebook/detr-resnet-50");
        assert!(parse_choice("x", &[]).is_none());
    }

    #[test]
    fn candidate_lines_show_endpoint_likes_cut_description_and_tags() {
        let text = describe_candidates(&cands(), 5);
        assert_eq!(
            text.lines().next().unwrap(),
            "- facebook/detr-resnet-50 | endpoint: huggingface | likes: 3 | A det… | tags: detr"
        );
    }
}
