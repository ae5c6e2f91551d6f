//! Text classification, token classification and extractive question
//! answering with BERT, DistilBERT and RoBERTa/XLM-R checkpoints.
//!
//! The results follow the transformers pipelines (4.57): all labels by score
//! for text classification, `aggregation_strategy="simple"` entity groups for
//! token classification, and the question-answering pipeline's span search
//! with windows over long contexts (`doc_stride`).

mod encoder;
mod heads;
pub mod postprocess;

pub use encoder::Family;
pub use postprocess::ScoreFunction;

use crate::error::{LocalError, bad_input};
use crate::files::{ModelFiles, WEIGHTS, Weights};
use crate::pipeline::Pipeline;
use candle_core::{Device, Tensor};
use encoder::{Encoder, TextConfig};
use heads::Head;
use hgpt_core::backend::ResolvedArgs;
use hgpt_core::output::{Answer, Entity, InferenceOutput, ScoredLabel};
use hgpt_core::task::TaskKind;
use postprocess::TokenPrediction;
use serde::Deserialize;
use serde_json::Value;
use std::borrow::Cow;
use tokenizers::{
    Decoder, Encoding, PostProcessor, Tokenizer, TruncationParams, TruncationStrategy,
};

fn unsupported_family(task: TaskKind, id: &str, model_type: &str) -> LocalError {
    let what = if model_type.is_empty() {
        "config.json names no model_type".to_string()
    } else {
        format!("it is a {model_type:?} model")
    };
    LocalError::Unsupported(format!(
        "hgpt runs {task} locally with bert, distilbert, roberta and xlm-roberta models; {id} cannot run: {what}"
    ))
}

/// The architecture suffix a checkpoint for `task` has.
fn architecture_suffix(task: TaskKind) -> &'static str {
    match task {
        TaskKind::TextClassification => "ForSequenceClassification",
        TaskKind::TokenClassification => "ForTokenClassification",
        _ => "ForQuestionAnswering",
    }
}

/// Raw outputs of the model head for one encoded input.
#[derive(Debug, Clone, PartialEq)]
pub enum Logits {
    /// `[num_labels]` (text classification).
    Sequence(Vec<f32>),
    /// `[seq_len][num_labels]`, special tokens included (token classification).
    Tokens(Vec<Vec<f32>>),
    /// `[seq_len]` start and end logits (question answering).
    Spans {
        /// Start logits.
        start: Vec<f32>,
        /// End logits.
        end: Vec<f32>,
    },
}

/// Parameters of question answering, as the transformers pipeline names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QaOptions {
    /// How many answers (default 1).
    pub top_k: usize,
    /// The longest answer in tokens (default 15).
    pub max_answer_len: usize,
    /// Also offer the empty answer, scored by the first token (default false).
    pub handle_impossible_answer: bool,
    /// Widen answers to whole words (default true).
    pub align_to_words: bool,
    /// Tokens per window; default `min(tokenizer model_max_length, 384)`,
    /// never more than the model takes.
    pub max_seq_len: Option<usize>,
    /// Overlap of consecutive windows; default `min(max_seq_len / 2, 128)`.
    pub doc_stride: Option<usize>,
}

impl Default for QaOptions {
    fn default() -> Self {
        Self {
            top_k: 1,
            max_answer_len: 15,
            handle_impossible_answer: false,
            align_to_words: true,
            max_seq_len: None,
            doc_stride: None,
        }
    }
}

/// The parts of `tokenizer_config.json` the pipelines read.
#[derive(Debug, Default, Deserialize)]
struct TokenizerConfig {
    #[serde(default)]
    model_max_length: Option<Value>,
    #[serde(default)]
    cls_token: Option<Value>,
    #[serde(default)]
    unk_token: Option<Value>,
}

/// A special token as `tokenizer_config.json` writes it: a string or
/// `{"content": ...}`.
fn token_content(value: Option<&Value>) -> Option<&str> {
    match value? {
        Value::String(s) => Some(s),
        Value::Object(map) => map.get("content")?.as_str(),
        _ => None,
    }
}

/// The question-answering pipeline's cap on its window length.
const QA_MAX_SEQ_LEN: usize = 384;
/// The question-answering pipeline's cap on its default stride.
const QA_MAX_STRIDE: usize = 128;
/// The shortest window a caller may ask for.
const QA_MIN_SEQ_LEN: usize = 8;

/// A loaded BERT-family model with a classification or question-answering head.
pub struct TextPipeline {
    task: [TaskKind; 1],
    family: Family,
    encoder: Encoder,
    head: Head,
    /// Truncates single texts to `max_tokens`.
    tokenizer: Tokenizer,
    /// No truncation (question answering, first try).
    plain: Tokenizer,
    /// Windows of the default size and stride (question answering only).
    windowed: Option<Tokenizer>,
    default_window: (usize, usize),
    labels: Vec<String>,
    score_function: ScoreFunction,
    cls_id: Option<u32>,
    unk_id: Option<u32>,
    max_tokens: usize,
    tokenizer_max: Option<usize>,
    device: Device,
    weight_bytes: u64,
}

impl TextPipeline {
    /// Load `files` for `task` (text-classification, token-classification or
    /// question-answering). Unexpected weight names or shapes, a missing
    /// `id2label` and unsupported architectures are errors naming the problem.
    pub fn load(task: TaskKind, files: &ModelFiles, device: &Device) -> Result<Self, LocalError> {
        if !matches!(
            task,
            TaskKind::TextClassification
                | TaskKind::TokenClassification
                | TaskKind::QuestionAnswering
        ) {
            return Err(LocalError::Unsupported(format!(
                "the text pipelines do not serve {task}"
            )));
        }
        let paths = files.require(&["config.json", "tokenizer.json", WEIGHTS])?;
        let config: TextConfig = files.json("config.json")?;
        let model_type = config.model_type.as_deref().unwrap_or("");
        let family = Family::from_model_type(model_type)
            .ok_or_else(|| unsupported_family(task, files.id(), model_type))?;
        let suffix = architecture_suffix(task);
        if !config.architectures.is_empty()
            && !config.architectures.iter().any(|a| a.ends_with(suffix))
        {
            return Err(LocalError::Unsupported(format!(
                "{} is a {}, not a model for {task} (*{suffix})",
                files.id(),
                config.architectures.join(", ")
            )));
        }
        let labels = if task == TaskKind::QuestionAnswering {
            Vec::new()
        } else {
            labels_of(&config).map_err(|e| files.load_error(e))?
        };
        let score_function = ScoreFunction::for_model(config.problem_type.as_deref(), labels.len());
        let dims = config.dims(family).map_err(|e| files.load_error(e))?;
        let max_tokens = config
            .max_tokens(family, &dims)
            .map_err(|e| files.load_error(e))?;

        let tokenizer_config: TokenizerConfig = files
            .json_if_present("tokenizer_config.json")?
            .unwrap_or_default();
        let tokenizer_max = tokenizer_config
            .model_max_length
            .as_ref()
            .and_then(Value::as_f64)
            .filter(|n| *n >= 1.0 && *n < 1e9)
            .map(|n| n as usize);
        let mut plain = Tokenizer::from_file(&paths[1])
            .map_err(|e| files.load_error(format!("tokenizer.json: {e}")))?;
        plain.with_padding(None);
        plain
            .with_truncation(None)
            .map_err(|e| files.load_error(format!("tokenizer.json: {e}")))?;
        let max_length = tokenizer_max.unwrap_or(max_tokens).min(max_tokens);
        if max_length <= added_tokens(&plain, true) + 1 {
            return Err(files.load_error(format!(
                "the model takes only {max_length} tokens, too few for any input"
            )));
        }
        let tokenizer = truncating(&plain, max_length, 0, TruncationStrategy::LongestFirst)
            .map_err(|e| files.load_error(format!("tokenizer.json: {e}")))?;
        let default_window =
            qa_window(tokenizer_max, max_tokens, None, None).map_err(|e| files.load_error(e))?;
        let windowed = if task == TaskKind::QuestionAnswering {
            let (max_len, stride) = default_window;
            Some(
                truncating(&plain, max_len, stride, TruncationStrategy::OnlySecond)
                    .map_err(|e| files.load_error(format!("tokenizer.json: {e}")))?,
            )
        } else {
            None
        };
        let special = |value: Option<&Value>, fallbacks: &[&str]| {
            token_content(value)
                .and_then(|t| plain.token_to_id(t))
                .or_else(|| fallbacks.iter().find_map(|t| plain.token_to_id(t)))
        };
        let cls_id = special(tokenizer_config.cls_token.as_ref(), &["[CLS]", "<s>"]);
        let unk_id = special(tokenizer_config.unk_token.as_ref(), &["[UNK]", "<unk>"]);

        let Weights {
            vb,
            bytes: weight_bytes,
            file,
        } = files.weights(device)?;
        let prefix = family.prefix();
        let encoder_vb =
            if vb.contains_tensor(&format!("{prefix}.embeddings.word_embeddings.weight")) {
                vb.pp(prefix)
            } else {
                vb.clone()
            };
        let encoder = Encoder::load(family, &config, &dims, encoder_vb)
            .map_err(|e| files.load_error(format!("{file}: {e}")))?;
        let head = Head::load(task, family, dims.hidden, labels.len().max(1), &vb)
            .map_err(|e| files.load_error(format!("{file}: {e}")))?;
        Ok(Self {
            task: [task],
            family,
            encoder,
            head,
            tokenizer,
            plain,
            windowed,
            default_window,
            labels,
            score_function,
            cls_id,
            unk_id,
            max_tokens,
            tokenizer_max,
            device: device.clone(),
            weight_bytes,
        })
    }

    /// The task it serves.
    pub fn task(&self) -> TaskKind {
        self.task[0]
    }

    /// The encoder family.
    pub fn family(&self) -> Family {
        self.family
    }

    /// The label names by index (empty for question answering).
    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// The most tokens one forward pass takes.
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// Tokenize one text (with special tokens, truncated to the model's
    /// length; offsets in characters).
    pub fn encode(&self, text: &str) -> Result<Encoding, LocalError> {
        self.tokenizer
            .encode_char_offsets(text, true)
            .map_err(|e| LocalError::Compute(format!("tokenizer: {e}")))
    }

    /// Tokenize a question and its context into one or more windows, as the
    /// question-answering pipeline does: question first, only the context is
    /// cut, consecutive windows overlap by `doc_stride` tokens.
    pub fn encode_pair(
        &self,
        question: &str,
        context: &str,
        options: &QaOptions,
    ) -> Result<Vec<Encoding>, LocalError> {
        let task = TaskKind::QuestionAnswering;
        let window = qa_window(
            self.tokenizer_max,
            self.max_tokens,
            options.max_seq_len,
            options.doc_stride,
        )
        .map_err(|e| bad_input(task, e))?;
        let (max_len, stride) = window;
        let tokenizer_error = |e: tokenizers::Error| LocalError::Compute(format!("tokenizer: {e}"));
        let whole = self
            .plain
            .encode_char_offsets((question, context), true)
            .map_err(tokenizer_error)?;
        if whole.len() <= max_len {
            return Ok(vec![whole]);
        }
        // The tokenizer asserts that every window has room for more than the
        // stride; check first so that a long question is an error, not a panic.
        let question_len = self
            .plain
            .encode_char_offsets(question, false)
            .map_err(tokenizer_error)?
            .len();
        let room = max_len.saturating_sub(added_tokens(&self.plain, true) + question_len);
        if room <= stride {
            return Err(bad_input(
                task,
                format!(
                    "the question is too long ({question_len} tokens): windows of {max_len} tokens with a stride of {stride} leave no room for the context"
                ),
            ));
        }
        let tokenizer = match &self.windowed {
            Some(windowed) if window == self.default_window => Cow::Borrowed(windowed),
            _ => Cow::Owned(
                truncating(&self.plain, max_len, stride, TruncationStrategy::OnlySecond)
                    .map_err(|e| bad_input(task, e.to_string()))?,
            ),
        };
        let mut first = tokenizer
            .encode_char_offsets((question, context), true)
            .map_err(|e| bad_input(task, e.to_string()))?;
        let rest = first.take_overflowing();
        let mut windows = vec![first];
        windows.extend(rest);
        Ok(windows)
    }

    /// The head's raw output for one encoded input.
    pub fn logits(&self, encoding: &Encoding) -> Result<Logits, LocalError> {
        if encoding.is_empty() {
            return Err(LocalError::Compute("no tokens to run".into()));
        }
        let row = |values: &[u32]| -> Result<Tensor, LocalError> {
            Ok(Tensor::new(values, &self.device)?.unsqueeze(0)?)
        };
        let ids = row(encoding.get_ids())?;
        let type_ids = row(encoding.get_type_ids())?;
        let mask = row(encoding.get_attention_mask())?;
        let hidden = self.encoder.forward(&ids, &type_ids, &mask)?;
        let out = self.head.forward(&hidden)?.squeeze(0)?;
        Ok(match self.head {
            Head::Tokens(_) => Logits::Tokens(out.to_vec2()?),
            Head::Spans(_) => {
                let pairs: Vec<Vec<f32>> = out.to_vec2()?;
                let (start, end) = pairs
                    .iter()
                    .map(|p| {
                        (
                            p.first().copied().unwrap_or(0.0),
                            p.get(1).copied().unwrap_or(0.0),
                        )
                    })
                    .unzip();
                Logits::Spans { start, end }
            }
            _ => Logits::Sequence(out.to_vec1()?),
        })
    }

    fn require_task(&self, task: TaskKind) -> Result<(), LocalError> {
        if self.task() == task {
            Ok(())
        } else {
            Err(LocalError::Unsupported(format!(
                "this model is loaded for {}, not {task}",
                self.task()
            )))
        }
    }

    /// Text classification: every label with its score, best first, cut to
    /// `top_k` when given. `function` overrides the model's default (softmax,
    /// or sigmoid for multi-label models).
    pub fn classify(
        &self,
        text: &str,
        top_k: Option<usize>,
        function: Option<ScoreFunction>,
    ) -> Result<Vec<ScoredLabel>, LocalError> {
        self.require_task(TaskKind::TextClassification)?;
        let encoding = self.encode(text)?;
        let Logits::Sequence(logits) = self.logits(&encoding)? else {
            return Err(LocalError::Compute("unexpected head output".into()));
        };
        let scores = function.unwrap_or(self.score_function).apply(&logits);
        Ok(postprocess::rank_labels(&self.labels, &scores, top_k))
    }

    /// Token classification with `simple` aggregation; groups whose label is
    /// in `ignore` (the pipeline's default: `O`) are left out.
    pub fn entities(&self, text: &str, ignore: &[String]) -> Result<Vec<Entity>, LocalError> {
        self.require_task(TaskKind::TokenClassification)?;
        let encoding = self.encode(text)?;
        let Logits::Tokens(rows) = self.logits(&encoding)? else {
            return Err(LocalError::Compute("unexpected head output".into()));
        };
        let mut tokens = Vec::with_capacity(rows.len());
        let ids = encoding.get_ids();
        let special = encoding.get_special_tokens_mask();
        let offsets = encoding.get_offsets();
        for (i, row) in rows.iter().enumerate() {
            if special.get(i).copied().unwrap_or(1) != 0 {
                continue;
            }
            let (Some(&id), Some(&(start, end))) = (ids.get(i), offsets.get(i)) else {
                continue;
            };
            // The unknown token stands for the text it covers.
            let word = if Some(id) == self.unk_id {
                postprocess::char_slice(text, start, end).to_string()
            } else {
                self.plain
                    .id_to_token(id)
                    .or_else(|| encoding.get_tokens().get(i).cloned())
                    .unwrap_or_default()
            };
            let scores = postprocess::softmax(row);
            let best = postprocess::argmax(&scores);
            tokens.push(TokenPrediction {
                word,
                label: self
                    .labels
                    .get(best)
                    .cloned()
                    .unwrap_or_else(|| format!("LABEL_{best}")),
                score: scores.get(best).copied().unwrap_or(0.0),
                start,
                end,
            });
        }
        postprocess::group_entities(&tokens, ignore, |words| self.tokens_to_string(words))
    }

    /// `convert_tokens_to_string`: the tokenizer's decoder over the tokens,
    /// or the tokens joined by spaces when it has none.
    fn tokens_to_string(&self, tokens: Vec<String>) -> Result<String, LocalError> {
        match self.plain.get_decoder() {
            Some(decoder) => decoder
                .decode(tokens)
                .map_err(|e| LocalError::Compute(format!("decoder: {e}"))),
            None => Ok(tokens.join(" ")),
        }
    }

    /// Extractive question answering: the best `options.top_k` answers from
    /// `context`, best first, with character offsets into `context`.
    pub fn answer(
        &self,
        question: &str,
        context: &str,
        options: &QaOptions,
    ) -> Result<Vec<Answer>, LocalError> {
        let task = TaskKind::QuestionAnswering;
        self.require_task(task)?;
        if options.top_k == 0 {
            return Err(bad_input(task, "top_k must be at least 1"));
        }
        if options.max_answer_len == 0 {
            return Err(bad_input(task, "max_answer_len must be at least 1"));
        }
        let windows = self.encode_pair(question, context, options)?;
        let candidates = if options.align_to_words {
            options.top_k.saturating_mul(2).saturating_add(10)
        } else {
            options.top_k
        };
        let mut answers: Vec<Answer> = Vec::new();
        let mut null_score = 1_000_000f64;
        for window in &windows {
            let Logits::Spans { start, end } = self.logits(window)? else {
                return Err(LocalError::Compute("unexpected head output".into()));
            };
            // Context tokens and the CLS token may be (part of) an answer.
            let allowed: Vec<bool> = window
                .get_sequence_ids()
                .iter()
                .zip(window.get_ids())
                .zip(window.get_attention_mask())
                .map(|((sequence, id), mask)| {
                    (*sequence == Some(1) || Some(*id) == self.cls_id) && *mask == 1
                })
                .collect();
            let found =
                postprocess::best_spans(&start, &end, &allowed, candidates, options.max_answer_len);
            null_score = null_score.min(f64::from(found.null_score));
            for span in found.spans {
                let (from, to) = char_span(window, span.start, span.end, options.align_to_words);
                let text = postprocess::char_slice(context, from, to);
                let lower = text.to_lowercase();
                match answers
                    .iter_mut()
                    .find(|a| a.answer.to_lowercase() == lower)
                {
                    // The same answer found again adds up.
                    Some(existing) => existing.score += f64::from(span.score),
                    None => answers.push(Answer {
                        answer: text.to_string(),
                        score: f64::from(span.score),
                        start: Some(from),
                        end: Some(to),
                    }),
                }
            }
        }
        if options.handle_impossible_answer {
            answers.push(Answer {
                answer: String::new(),
                score: null_score,
                start: Some(0),
                end: Some(0),
            });
        }
        // Stable: equal scores keep the order they were found in.
        answers.sort_by(|a, b| b.score.total_cmp(&a.score));
        answers.truncate(options.top_k);
        Ok(answers)
    }
}

/// Character span of tokens `s..=e` of a window: widened to whole words of
/// the context when asked (falling back to the tokens' own offsets when the
/// tokenizer has no words for them).
fn char_span(window: &Encoding, s: usize, e: usize, align_to_words: bool) -> (usize, usize) {
    if align_to_words
        && let (Some((_, first)), Some((_, last))) =
            (window.token_to_word(s), window.token_to_word(e))
        && let (Some((from, _)), Some((_, to))) = (
            window.word_to_chars(first, 1),
            window.word_to_chars(last, 1),
        )
    {
        return (from, to);
    }
    let offsets = window.get_offsets();
    let from = offsets.get(s).map_or(0, |o| o.0);
    let to = offsets.get(e).map_or(from, |o| o.1);
    (from, to)
}

/// Special tokens the tokenizer adds to one text or a pair.
fn added_tokens(tokenizer: &Tokenizer, pair: bool) -> usize {
    tokenizer
        .get_post_processor()
        .map_or(0, |p| p.added_tokens(pair))
}

/// A copy of `tokenizer` that truncates.
fn truncating(
    tokenizer: &Tokenizer,
    max_length: usize,
    stride: usize,
    strategy: TruncationStrategy,
) -> tokenizers::Result<Tokenizer> {
    let mut tokenizer = tokenizer.clone();
    tokenizer.with_truncation(Some(TruncationParams {
        max_length,
        stride,
        strategy,
        ..TruncationParams::default()
    }))?;
    Ok(tokenizer)
}

/// Window length and stride of question answering, as the pipeline picks them.
fn qa_window(
    tokenizer_max: Option<usize>,
    max_tokens: usize,
    max_seq_len: Option<usize>,
    doc_stride: Option<usize>,
) -> Result<(usize, usize), String> {
    let max_len = max_seq_len
        .unwrap_or_else(|| tokenizer_max.unwrap_or(QA_MAX_SEQ_LEN).min(QA_MAX_SEQ_LEN))
        .min(max_tokens);
    if max_len < QA_MIN_SEQ_LEN {
        return Err(format!(
            "max_seq_len must be at least {QA_MIN_SEQ_LEN} tokens"
        ));
    }
    let stride = doc_stride.unwrap_or_else(|| (max_len / 2).min(QA_MAX_STRIDE));
    if stride > max_len {
        return Err(format!(
            "doc_stride ({stride}) is larger than max_seq_len ({max_len})"
        ));
    }
    Ok((max_len, stride))
}

/// `id2label` as a list by index; every index from 0 must be present.
fn labels_of(config: &TextConfig) -> Result<Vec<String>, String> {
    let map = config
        .id2label
        .as_ref()
        .filter(|m| !m.is_empty())
        .ok_or("config.json has no id2label, so the labels are unknown")?;
    let mut labels = vec![None; map.len()];
    for (key, label) in map {
        let index: usize = key
            .parse()
            .map_err(|_| format!("config.json: id2label key {key:?} is not an index"))?;
        let slot = labels.get_mut(index).ok_or_else(|| {
            format!(
                "config.json: id2label skips indices (has {index} of {})",
                map.len()
            )
        })?;
        *slot = Some(label.clone());
    }
    labels
        .into_iter()
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| "config.json: id2label skips indices".to_string())
}

/// A parameter from the arguments, or from their `parameters` object.
fn param<'a>(args: &'a ResolvedArgs, key: &str) -> Option<&'a Value> {
    args.other
        .get(key)
        .or_else(|| args.other.get("parameters")?.get(key))
        .filter(|v| !v.is_null())
}

/// A positive integer parameter (numbers or numeric strings).
fn positive(task: TaskKind, key: &str, value: &Value) -> Result<usize, LocalError> {
    let n = match value {
        Value::Number(n) => n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && *f >= 0.0)
                .map(|f| f as u64)
        }),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    };
    n.filter(|n| *n >= 1)
        .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
        .ok_or_else(|| {
            bad_input(
                task,
                format!("{key} must be a positive integer, not {value}"),
            )
        })
}

fn flag(task: TaskKind, key: &str, value: &Value) -> Result<bool, LocalError> {
    match value {
        Value::Bool(b) => Ok(*b),
        Value::String(s) if s.eq_ignore_ascii_case("true") => Ok(true),
        Value::String(s) if s.eq_ignore_ascii_case("false") => Ok(false),
        _ => Err(bad_input(
            task,
            format!("{key} must be true or false, not {value}"),
        )),
    }
}

/// The text to classify: `text`, else `inputs`; never empty.
fn input_text(task: TaskKind, args: &ResolvedArgs) -> Result<String, LocalError> {
    args.text
        .clone()
        .or_else(|| args.other_text("inputs"))
        .or_else(|| args.other_text("text"))
        .filter(|t| !t.trim().is_empty())
        .ok_or_else(|| bad_input(task, "the text is empty"))
}

/// Question and context: `question` (else the text) and `context`, also
/// accepted inside an `inputs` object.
fn question_and_context(args: &ResolvedArgs) -> Result<(String, String), LocalError> {
    let task = TaskKind::QuestionAnswering;
    let nested = |key: &str| {
        args.other
            .get("inputs")
            .and_then(|v| v.get(key))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let question = args
        .other_text("question")
        .or_else(|| nested("question"))
        .or_else(|| args.text.clone())
        .filter(|q| !q.trim().is_empty())
        .ok_or_else(|| {
            bad_input(
                task,
                "missing \"question\" (give it as \"question\" or as the text)",
            )
        })?;
    let context = args
        .other_text("context")
        .or_else(|| nested("context"))
        .filter(|c| !c.trim().is_empty())
        .ok_or_else(|| bad_input(task, "missing \"context\" (the passage to answer from)"))?;
    Ok((question, context))
}

fn qa_options(args: &ResolvedArgs) -> Result<QaOptions, LocalError> {
    let task = TaskKind::QuestionAnswering;
    let mut options = QaOptions::default();
    let number = |key: &str| param(args, key).map(|v| positive(task, key, v)).transpose();
    if let Some(n) = number("top_k")? {
        options.top_k = n;
    }
    if let Some(n) = number("max_answer_len")? {
        options.max_answer_len = n;
    }
    options.max_seq_len = number("max_seq_len")?;
    options.doc_stride = match param(args, "doc_stride") {
        // A stride of 0 is allowed (windows without overlap).
        Some(Value::Number(n)) if n.as_u64() == Some(0) => Some(0),
        Some(v) => Some(positive(task, "doc_stride", v)?),
        None => None,
    };
    if let Some(v) = param(args, "handle_impossible_answer") {
        options.handle_impossible_answer = flag(task, "handle_impossible_answer", v)?;
    }
    if let Some(v) = param(args, "align_to_words") {
        options.align_to_words = flag(task, "align_to_words", v)?;
    }
    Ok(options)
}

impl Pipeline for TextPipeline {
    fn tasks(&self) -> &[TaskKind] {
        &self.task
    }

    fn run(&self, task: TaskKind, args: &ResolvedArgs) -> Result<InferenceOutput, LocalError> {
        self.require_task(task)?;
        match task {
            TaskKind::TextClassification => {
                let text = input_text(task, args)?;
                // All labels unless top_k says otherwise (`null` also means all).
                let top_k = param(args, "top_k")
                    .map(|v| positive(task, "top_k", v))
                    .transpose()?;
                let function = match param(args, "function_to_apply") {
                    None => None,
                    Some(v) => Some(v.as_str().and_then(ScoreFunction::parse).ok_or_else(
                        || {
                            bad_input(
                                task,
                                format!(
                                    "function_to_apply must be \"softmax\", \"sigmoid\" or \"none\", not {v}"
                                ),
                            )
                        },
                    )?),
                };
                Ok(InferenceOutput::Labels(
                    self.classify(&text, top_k, function)?,
                ))
            }
            TaskKind::TokenClassification => {
                let text = input_text(task, args)?;
                if let Some(v) = param(args, "aggregation_strategy")
                    && !v.as_str().is_some_and(|s| s.eq_ignore_ascii_case("simple"))
                {
                    return Err(bad_input(
                        task,
                        format!("only aggregation_strategy \"simple\" is served locally, not {v}"),
                    ));
                }
                let ignore = match param(args, "ignore_labels") {
                    None => vec!["O".to_string()],
                    Some(Value::Array(items)) => items
                        .iter()
                        .map(|v| v.as_str().map(str::to_string))
                        .collect::<Option<Vec<_>>>()
                        .ok_or_else(|| {
                            bad_input(task, "ignore_labels must be a list of strings")
                        })?,
                    Some(v) => {
                        return Err(bad_input(
                            task,
                            format!("ignore_labels must be a list of strings, not {v}"),
                        ));
                    }
                };
                Ok(InferenceOutput::Entities(self.entities(&text, &ignore)?))
            }
            TaskKind::QuestionAnswering => {
                let (question, context) = question_and_context(args)?;
                let options = qa_options(args)?;
                Ok(InferenceOutput::Answers(
                    self.answer(&question, &context, &options)?,
                ))
            }
            other => Err(LocalError::Unsupported(format!(
                "the text pipelines do not serve {other}"
            ))),
        }
    }

    fn weight_bytes(&self) -> u64 {
        self.weight_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qa_windows_follow_the_pipeline_defaults() {
        assert_eq!(qa_window(Some(128), 128, None, None), Ok((128, 64)));
        assert_eq!(qa_window(Some(512), 512, None, None), Ok((384, 128)));
        assert_eq!(qa_window(None, 512, None, None), Ok((384, 128)));
        assert_eq!(
            qa_window(Some(512), 512, Some(100), Some(20)),
            Ok((100, 20))
        );
        assert!(qa_window(Some(512), 512, Some(4), None).is_err());
        assert!(qa_window(Some(512), 512, Some(100), Some(101)).is_err());
    }

    #[test]
    fn labels_need_every_index() {
        let config = |pairs: &[(&str, &str)]| TextConfig {
            id2label: Some(
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..TextConfig::default()
        };
        assert_eq!(
            labels_of(&config(&[("1", "b"), ("0", "a")])),
            Ok(vec!["a".to_string(), "b".to_string()])
        );
        assert!(labels_of(&config(&[("0", "a"), ("2", "c")])).is_err());
        assert!(labels_of(&config(&[("x", "a")])).is_err());
        assert!(labels_of(&TextConfig::default()).is_err());
    }

    #[test]
    fn integer_parameters_accept_numbers_and_strings() {
        let task = TaskKind::QuestionAnswering;
        assert_eq!(positive(task, "k", &Value::from(3)).ok(), Some(3));
        assert_eq!(positive(task, "k", &Value::from("2")).ok(), Some(2));
        assert!(positive(task, "k", &Value::from(0)).is_err());
        assert!(positive(task, "k", &Value::from(-1)).is_err());
        assert!(positive(task, "k", &Value::from(1.5)).is_err());
    }
}
