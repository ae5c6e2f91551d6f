//! From logits to the wire shapes, as the transformers pipelines do it:
//! label scores, `simple` entity grouping and extractive answer spans.
//!
//! Scores are computed in `f32` like the pipelines' numpy code, so they match
//! theirs to float precision; they are widened to `f64` only at the end.

use crate::error::{LocalError, bad_input};
use hgpt_core::backend::ResolvedArgs;
use hgpt_core::output::{Entity, ScoredLabel};
use hgpt_core::task::TaskKind;
use serde_json::Value;

/// Labels the audio-classification pipeline returns when `top_k` is absent.
const AUDIO_TOP_K: usize = 5;

/// `top_k` and `function_to_apply` as the audio-classification pipeline
/// reads them: `top_k` absent is 5 and `null` every label;
/// `function_to_apply` is softmax unless given.
pub(crate) fn classification_args(
    task: TaskKind,
    args: &ResolvedArgs,
) -> Result<(Option<usize>, ScoreFunction), LocalError> {
    let top_k = match args.other.get("top_k") {
        None => Some(AUDIO_TOP_K),
        Some(Value::Null) => None,
        Some(value) => Some(
            value
                .as_u64()
                .filter(|&k| k > 0)
                .and_then(|k| usize::try_from(k).ok())
                .ok_or_else(|| bad_input(task, "top_k must be a positive integer"))?,
        ),
    };
    let function = match args.other.get("function_to_apply") {
        None | Some(Value::Null) => ScoreFunction::Softmax,
        Some(Value::String(name)) => ScoreFunction::parse(name).ok_or_else(|| {
            bad_input(
                task,
                format!("function_to_apply must be softmax, sigmoid or none, not {name:?}"),
            )
        })?,
        Some(other) => {
            return Err(bad_input(
                task,
                format!("function_to_apply must be a string, not {other}"),
            ));
        }
    };
    Ok((top_k, function))
}

/// Logits as labelled scores, best first, cut to `top_k` (`None`: all).
pub(crate) fn ranked_labels(
    logits: &[f32],
    labels: &[String],
    top_k: Option<usize>,
    function: ScoreFunction,
) -> Vec<ScoredLabel> {
    let mut labelled: Vec<ScoredLabel> = function
        .apply(logits)
        .iter()
        .zip(labels)
        .map(|(&score, label)| ScoredLabel {
            label: label.clone(),
            score: f64::from(score),
        })
        .collect();
    labelled.sort_by(|a, b| b.score.total_cmp(&a.score));
    if let Some(k) = top_k {
        labelled.truncate(k);
    }
    labelled
}

/// How classification logits become scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScoreFunction {
    /// Softmax over the labels (single-label models).
    Softmax,
    /// Independent sigmoids (multi-label models, one-label models).
    Sigmoid,
    /// The raw logits (regression models).
    Identity,
}

impl ScoreFunction {
    /// Parse the pipeline's `function_to_apply` names: `softmax`,
    /// `sigmoid`, `none`.
    pub fn parse(name: &str) -> Option<Self> {
        match name.trim().to_ascii_lowercase().as_str() {
            "softmax" => Some(Self::Softmax),
            "sigmoid" => Some(Self::Sigmoid),
            "none" => Some(Self::Identity),
            _ => None,
        }
    }

    /// The pipeline's default for a model: regression gets raw logits,
    /// multi-label and one-label models sigmoid, the rest softmax.
    pub fn for_model(problem_type: Option<&str>, num_labels: usize) -> Self {
        match problem_type {
            Some("regression") => Self::Identity,
            Some("multi_label_classification") => Self::Sigmoid,
            _ if num_labels == 1 => Self::Sigmoid,
            _ => Self::Softmax,
        }
    }

    /// Apply to one row of logits.
    pub fn apply(self, logits: &[f32]) -> Vec<f32> {
        match self {
            Self::Softmax => softmax(logits),
            Self::Sigmoid => logits.iter().map(|&x| 1.0 / (1.0 + (-x).exp())).collect(),
            Self::Identity => logits.to_vec(),
        }
    }
}

/// Numerically stable softmax in `f32`.
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.iter().map(|&x| (x - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

/// The index of the first maximum (numpy's `argmax`).
pub fn argmax(values: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    best
}

/// Every label with its score, best first (ties keep label order), cut to
/// `top_k` when given.
pub fn rank_labels(labels: &[String], scores: &[f32], top_k: Option<usize>) -> Vec<ScoredLabel> {
    let mut ranked: Vec<(usize, f32)> = scores.iter().copied().enumerate().collect();
    // A stable sort, descending: equal scores stay in label order as in Python.
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
    ranked.truncate(top_k.unwrap_or(usize::MAX));
    ranked
        .into_iter()
        .map(|(i, score)| ScoredLabel {
            label: labels
                .get(i)
                .cloned()
                .unwrap_or_else(|| format!("LABEL_{i}")),
            score: f64::from(score),
        })
        .collect()
}

/// One non-special token with its predicted label.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenPrediction {
    /// The token as the vocabulary spells it (or the original text for the
    /// unknown token).
    pub word: String,
    /// The predicted label (`B-PER`, `O`, ...).
    pub label: String,
    /// The label's probability.
    pub score: f32,
    /// Start character offset in the input.
    pub start: usize,
    /// End character offset in the input.
    pub end: usize,
}

/// `B-`/`I-` prefix and tag of a label; labels without one count as `I-`.
fn bio_tag(label: &str) -> (bool, &str) {
    if let Some(tag) = label.strip_prefix("B-") {
        (true, tag)
    } else if let Some(tag) = label.strip_prefix("I-") {
        (false, tag)
    } else {
        (false, label)
    }
}

/// The transformers pipeline's `aggregation_strategy="simple"`: adjacent
/// tokens with the same tag join a group unless the token is `B-`; a group
/// is named by its first label after the first `-`, scored by the mean of its
/// tokens, and its word is `decode` of its tokens. Groups named in `ignore`
/// are dropped afterwards (so an `O` token ends a group).
pub fn group_entities<E>(
    tokens: &[TokenPrediction],
    ignore: &[String],
    mut decode: impl FnMut(Vec<String>) -> Result<String, E>,
) -> Result<Vec<Entity>, E> {
    let mut groups: Vec<&[TokenPrediction]> = Vec::new();
    let mut start = 0;
    for i in 1..=tokens.len() {
        let split = match tokens.get(i) {
            None => true,
            Some(token) => {
                let (is_begin, tag) = bio_tag(&token.label);
                let (_, last_tag) = bio_tag(&tokens[i - 1].label);
                is_begin || tag != last_tag
            }
        };
        if split && i > start {
            groups.push(&tokens[start..i]);
            start = i;
        }
    }
    let mut entities = Vec::with_capacity(groups.len());
    for group in groups {
        let (Some(first), Some(last)) = (group.first(), group.last()) else {
            continue;
        };
        let name = first
            .label
            .split_once('-')
            .map_or(first.label.as_str(), |(_, rest)| rest);
        if ignore.iter().any(|i| i == name) {
            continue;
        }
        let sum: f32 = group.iter().map(|t| t.score).sum();
        let score = sum / group.len() as f32;
        let word = decode(group.iter().map(|t| t.word.clone()).collect())?;
        entities.push(Entity {
            entity_group: name.to_string(),
            score: f64::from(score),
            word,
            start: Some(first.start),
            end: Some(last.end),
        });
    }
    Ok(entities)
}

/// A candidate answer span in one window, in token indices.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SpanCandidate {
    /// First token.
    pub start: usize,
    /// Last token (inclusive).
    pub end: usize,
    /// `p_start * p_end`.
    pub score: f32,
}

/// The best spans of one window and its null (no answer) score.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowSpans {
    /// Best first.
    pub spans: Vec<SpanCandidate>,
    /// `p_start[0] * p_end[0]` before the first token is masked.
    pub null_score: f32,
}

/// The question-answering pipeline's span search for one window: logits of
/// tokens that may not be in an answer (`allowed` false) become -10000, then
/// softmax per side, the first token's probabilities become 0, and spans
/// `start <= end < start + max_answer_len` are scored `p_start * p_end`. The
/// `top` best spans with a positive score come back, best first.
///
/// The pipeline takes its `top` candidates before dropping spans that touch
/// masked tokens; those all score exactly 0 (their probabilities underflow),
/// so when fewer than `top` positive spans exist the pipeline pads with
/// arbitrary zero-score spans. Those are left out here.
pub fn best_spans(
    start_logits: &[f32],
    end_logits: &[f32],
    allowed: &[bool],
    top: usize,
    max_answer_len: usize,
) -> WindowSpans {
    let mask = |logits: &[f32]| -> Vec<f32> {
        logits
            .iter()
            .zip(allowed)
            .map(|(&x, &ok)| if ok { x } else { -10000.0 })
            .collect()
    };
    let mut p_start = softmax(&mask(start_logits));
    let mut p_end = softmax(&mask(end_logits));
    let null_score = match (p_start.first(), p_end.first()) {
        (Some(s), Some(e)) => s * e,
        _ => 0.0,
    };
    if let (Some(s), Some(e)) = (p_start.first_mut(), p_end.first_mut()) {
        *s = 0.0;
        *e = 0.0;
    }
    let n = p_start.len().min(p_end.len()).min(allowed.len());
    let mut spans = Vec::new();
    for s in 0..n {
        if !allowed[s] {
            continue;
        }
        for e in s..n.min(s + max_answer_len) {
            let score = p_start[s] * p_end[e];
            if allowed[e] && score > 0.0 {
                spans.push(SpanCandidate {
                    start: s,
                    end: e,
                    score,
                });
            }
        }
    }
    // Best first; equal scores in row-major (start, end) order.
    spans.sort_by(|a, b| b.score.total_cmp(&a.score));
    spans.truncate(top);
    WindowSpans { spans, null_score }
}

/// The characters `start..end` of `text` (Python slicing: clamped, empty when
/// `start >= end`).
pub fn char_slice(text: &str, start: usize, end: usize) -> &str {
    if start >= end {
        return "";
    }
    let byte_at = |n: usize| {
        text.char_indices()
            .nth(n)
            .map_or(text.len(), |(byte, _)| byte)
    };
    let (from, to) = (byte_at(start), byte_at(end));
    &text[from..to]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audio_classification_arguments_as_the_pipeline_reads_them() {
        let task = TaskKind::AudioClassification;
        let with = |pairs: &[(&str, Value)]| ResolvedArgs {
            other: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            ..ResolvedArgs::default()
        };
        assert_eq!(
            classification_args(task, &with(&[])).unwrap(),
            (Some(5), ScoreFunction::Softmax)
        );
        assert_eq!(
            classification_args(task, &with(&[("top_k", Value::Null)]))
                .unwrap()
                .0,
            None
        );
        let (k, f) = classification_args(
            task,
            &with(&[("top_k", 2.into()), ("function_to_apply", "sigmoid".into())]),
        )
        .unwrap();
        assert_eq!((k, f), (Some(2), ScoreFunction::Sigmoid));
        assert!(classification_args(task, &with(&[("top_k", 0.into())])).is_err());
        assert!(classification_args(task, &with(&[("function_to_apply", "max".into())])).is_err());
        let labels = vec!["a".to_string(), "b".to_string(), "c".to_string()];
        let ranked = ranked_labels(&[0.0, 2.0, 1.0], &labels, None, ScoreFunction::Softmax);
        assert_eq!(
            ranked.iter().map(|l| l.label.as_str()).collect::<Vec<_>>(),
            ["b", "c", "a"]
        );
    }

    fn token(word: &str, label: &str, score: f32, start: usize, end: usize) -> TokenPrediction {
        TokenPrediction {
            word: word.into(),
            label: label.into(),
            score,
            start,
            end,
        }
    }

    fn join(tokens: Vec<String>) -> Result<String, ()> {
        Ok(tokens.join("|"))
    }

    #[test]
    fn softmax_and_sigmoid() {
        let p = softmax(&[0.0, 0.0]);
        assert_eq!(p, vec![0.5, 0.5]);
        let s = ScoreFunction::Sigmoid.apply(&[0.0]);
        assert_eq!(s, vec![0.5]);
        assert_eq!(
            ScoreFunction::for_model(Some("multi_label_classification"), 3),
            ScoreFunction::Sigmoid
        );
        assert_eq!(ScoreFunction::for_model(None, 3), ScoreFunction::Softmax);
        assert_eq!(ScoreFunction::for_model(None, 1), ScoreFunction::Sigmoid);
        assert_eq!(ScoreFunction::parse("NONE"), Some(ScoreFunction::Identity));
    }

    #[test]
    fn labels_are_ranked_stably() {
        let labels: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let ranked = rank_labels(&labels, &[0.2, 0.4, 0.4], None);
        let names: Vec<&str> = ranked.iter().map(|l| l.label.as_str()).collect();
        assert_eq!(names, ["b", "c", "a"]);
        assert_eq!(rank_labels(&labels, &[0.2, 0.4, 0.4], Some(1)).len(), 1);
    }

    #[test]
    fn grouping_follows_the_simple_strategy() {
        let tokens = [
            token("john", "I-PER", 0.5, 0, 4),
            token("smith", "I-PER", 0.7, 5, 10),
            token("lives", "B-PER", 0.9, 11, 16),
            token("in", "O", 0.8, 17, 19),
            token("paris", "I-LOC", 0.6, 20, 25),
            token(".", "O", 0.9, 25, 26),
            token("x", "B-LOC", 0.4, 27, 28),
            token("y", "I-PER", 0.4, 28, 29),
        ];
        let groups = group_entities(&tokens, &["O".to_string()], join).unwrap();
        let summary: Vec<(&str, &str, usize, usize)> = groups
            .iter()
            .map(|g| {
                (
                    g.entity_group.as_str(),
                    g.word.as_str(),
                    g.start.unwrap(),
                    g.end.unwrap(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("PER", "john|smith", 0, 10),
                ("PER", "lives", 11, 16),
                ("LOC", "paris", 20, 25),
                ("LOC", "x", 27, 28),
                ("PER", "y", 28, 29),
            ]
        );
        assert!((groups[0].score - 0.6).abs() < 1e-6);
    }

    #[test]
    fn spans_respect_mask_and_length() {
        // Token 0 is CLS, 1 is question, 2..5 context.
        let allowed = [true, false, true, true, true];
        let start = [5.0, 9.0, 1.0, 3.0, 0.0];
        let end = [5.0, 9.0, 0.0, 1.0, 4.0];
        let found = best_spans(&start, &end, &allowed, 10, 2);
        assert!(found.null_score > 0.0);
        for span in &found.spans {
            assert!(span.start >= 2 && span.end >= span.start && span.end < span.start + 2);
        }
        assert_eq!(
            (found.spans[0].start, found.spans[0].end),
            (3, 4),
            "{found:?}"
        );
        // (2,2), (2,3), (3,3), (3,4), (4,4)
        assert_eq!(found.spans.len(), 5);
        assert!(found.spans.windows(2).all(|w| w[0].score >= w[1].score));
    }

    #[test]
    fn char_slices_like_python() {
        assert_eq!(char_slice("déjà vu", 2, 4), "jà");
        assert_eq!(char_slice("abc", 1, 10), "bc");
        assert_eq!(char_slice("abc", 2, 1), "");
    }
}
