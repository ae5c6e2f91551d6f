//! Text generation for the captioning and visual question answering
//! decoders: the generation settings a transformers pipeline resolves from a
//! model's files, the tokenizer that turns generated ids back into text, and
//! greedy decoding or beam search with the logits processors those settings
//! switch on.

use crate::error::LocalError;
use crate::files::ModelFiles;
use serde_json::{Map, Value};
use tokenizers::Tokenizer;

/// transformers' global default `max_length`.
const DEFAULT_MAX_LENGTH: usize = 20;

/// The image-to-text pipeline's own default `max_new_tokens`.
pub const PIPELINE_MAX_NEW_TOKENS: usize = 256;

/// The generation settings hgpt applies, as a transformers pipeline resolves
/// them: the model's `generation_config.json` (or, without one, the
/// generation fields of `config.json` and its decoder's sub-config), over the
/// pipeline's default of 256 new tokens. As in transformers, a model's
/// `max_length` other than the global default 20 replaces the pipeline's
/// `max_new_tokens`; a model's own `max_new_tokens` does not.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationConfig {
    /// Longest sequence, prompt included (used when `max_new_tokens` is `None`).
    pub max_length: usize,
    /// New tokens at most, when set (wins over `max_length`).
    pub max_new_tokens: Option<usize>,
    /// Shortest sequence, prompt included, before an end token may come.
    pub min_length: usize,
    /// Fewest new tokens before an end token may come.
    pub min_new_tokens: Option<usize>,
    /// Tokens that end the sequence.
    pub eos_token_ids: Vec<u32>,
    /// The decoder's first token (encoder-decoder models).
    pub decoder_start_token_id: Option<u32>,
    /// `bos_token_id`.
    pub bos_token_id: Option<u32>,
    /// `pad_token_id`.
    pub pad_token_id: Option<u32>,
    /// `repetition_penalty` (1.0: off).
    pub repetition_penalty: f32,
    /// `no_repeat_ngram_size` (0: off).
    pub no_repeat_ngram_size: usize,
    /// `num_beams`: more than one decodes by beam search.
    pub num_beams: usize,
    /// `length_penalty`: a finished beam's score is its log-probability
    /// divided by its new tokens to this power.
    pub length_penalty: f32,
    /// `early_stopping`: when beam search stops.
    pub early_stopping: EarlyStopping,
    /// `do_sample` (hgpt decodes deterministically; sampling is reported).
    pub do_sample: bool,
}

/// When beam search stops (transformers' `early_stopping`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EarlyStopping {
    /// `False` (the default): when the best running beam, scored at its
    /// current length, cannot beat the worst of `num_beams` finished ones.
    Heuristic,
    /// `True`: as soon as `num_beams` sequences are finished.
    Done,
    /// `"never"`: the same test, with the best running beam scored at the
    /// longest length it could reach when the length penalty is positive.
    Never,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        Self {
            max_length: DEFAULT_MAX_LENGTH,
            max_new_tokens: Some(PIPELINE_MAX_NEW_TOKENS),
            min_length: 0,
            min_new_tokens: None,
            eos_token_ids: Vec::new(),
            decoder_start_token_id: None,
            bos_token_id: None,
            pad_token_id: None,
            repetition_penalty: 1.0,
            no_repeat_ngram_size: 0,
            num_beams: 1,
            length_penalty: 1.0,
            early_stopping: EarlyStopping::Heuristic,
            do_sample: false,
        }
    }
}

impl GenerationConfig {
    /// The settings of a model's files: `generation_config.json` when
    /// present, else `config.json`'s generation fields, then those of its
    /// `sub_config` (`"decoder"`, `"text_config"`) that are still unset.
    pub fn load(files: &ModelFiles, sub_config: &str) -> Result<Self, LocalError> {
        let fields = match files.json_if_present::<Value>("generation_config.json")? {
            Some(Value::Object(map)) => map,
            Some(_) => {
                return Err(files.load_error("generation_config.json is not a JSON object"));
            }
            None => {
                let config: Value = files.json("config.json")?;
                let mut fields = generation_fields(&config);
                if let Some(sub) = config.get(sub_config) {
                    for (key, value) in generation_fields(sub) {
                        fields.entry(key).or_insert(value);
                    }
                }
                fields
            }
        };
        Self::from_fields(&fields).map_err(|e| {
            files.load_error(format!(
                "generation settings: {e} (generation_config.json or config.json)"
            ))
        })
    }

    /// Resolve the pipeline's settings from a model's generation fields.
    pub fn from_fields(fields: &Map<String, Value>) -> Result<Self, String> {
        let mut config = Self::default();
        if let Some(n) = count(fields, "max_length")? {
            config.max_length = n;
            if n != DEFAULT_MAX_LENGTH {
                config.max_new_tokens = None;
            }
        }
        config.min_length = count(fields, "min_length")?.unwrap_or(0);
        config.min_new_tokens = count(fields, "min_new_tokens")?;
        config.eos_token_ids = match fields.get("eos_token_id") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| token_id(v, "eos_token_id"))
                .collect::<Result<_, _>>()?,
            Some(value) => vec![token_id(value, "eos_token_id")?],
        };
        let optional_id = |key: &str| match fields.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(value) => token_id(value, key).map(Some),
        };
        config.decoder_start_token_id = optional_id("decoder_start_token_id")?;
        config.bos_token_id = optional_id("bos_token_id")?;
        config.pad_token_id = optional_id("pad_token_id")?;
        if let Some(penalty) = fields.get("repetition_penalty").filter(|v| !v.is_null()) {
            let penalty = penalty
                .as_f64()
                .filter(|p| p.is_finite() && *p > 0.0)
                .ok_or_else(|| {
                    format!("repetition_penalty must be a positive number, not {penalty}")
                })?;
            config.repetition_penalty = penalty as f32;
        }
        config.no_repeat_ngram_size = count(fields, "no_repeat_ngram_size")?.unwrap_or(0);
        config.num_beams = count(fields, "num_beams")?.unwrap_or(1).max(1);
        if let Some(penalty) = fields.get("length_penalty").filter(|v| !v.is_null()) {
            config.length_penalty = penalty
                .as_f64()
                .filter(|p| p.is_finite())
                .ok_or_else(|| format!("length_penalty must be a number, not {penalty}"))?
                as f32;
        }
        config.early_stopping = match fields.get("early_stopping") {
            None | Some(Value::Null) | Some(Value::Bool(false)) => EarlyStopping::Heuristic,
            Some(Value::Bool(true)) => EarlyStopping::Done,
            Some(Value::String(s)) if s == "never" => EarlyStopping::Never,
            Some(other) => {
                return Err(format!(
                    "early_stopping must be true, false or \"never\", not {other}"
                ));
            }
        };
        config.do_sample = fields
            .get("do_sample")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        Ok(config)
    }

    /// The shortest sequence, for a prompt of `prompt_len` tokens, that may
    /// end.
    pub fn min_total(&self, prompt_len: usize) -> usize {
        self.min_length
            .max(self.min_new_tokens.map_or(0, |n| prompt_len + n))
    }

    /// The longest sequence for a prompt of `prompt_len` tokens.
    pub fn max_total(&self, prompt_len: usize) -> usize {
        match self.max_new_tokens {
            Some(n) => prompt_len + n,
            None => self.max_length,
        }
    }

    /// Log the settings hgpt does not apply (it does not sample).
    pub fn warn_unapplied(&self, model: &str) {
        if self.do_sample {
            let instead = if self.num_beams > 1 {
                "beam search"
            } else {
                "greedy decoding"
            };
            tracing::warn!(model, "sampling is not implemented; {instead} instead");
        }
    }
}

/// The fields of a config object that are generation settings.
fn generation_fields(config: &Value) -> Map<String, Value> {
    const KEYS: &[&str] = &[
        "max_length",
        "min_length",
        "min_new_tokens",
        "eos_token_id",
        "decoder_start_token_id",
        "bos_token_id",
        "pad_token_id",
        "repetition_penalty",
        "no_repeat_ngram_size",
        "num_beams",
        "length_penalty",
        "early_stopping",
        "do_sample",
    ];
    KEYS.iter()
        .filter_map(|&key| {
            let value = config.get(key)?;
            (!value.is_null()).then(|| (key.to_string(), value.clone()))
        })
        .collect()
}

fn count(fields: &Map<String, Value>, key: &str) -> Result<Option<usize>, String> {
    match fields.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => value
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| format!("{key} must be a non-negative integer, not {value}")),
    }
}

fn token_id(value: &Value, key: &str) -> Result<u32, String> {
    value
        .as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| format!("{key} must be a token id, not {value}"))
}

/// A decoder that predicts one token at a time, keeping its own cache.
pub trait StepDecoder {
    /// Feed `tokens` (the prompt, then one new token per step) and return the
    /// logits of the token after the last.
    fn feed(&mut self, tokens: &[u32]) -> Result<Vec<f32>, LocalError>;
    /// The vocabulary size of the logits.
    fn vocab_size(&self) -> usize;
    /// The model's own logits processors (Whisper's token suppression and
    /// timestamp rules), run after those of the generation settings on the
    /// scores of the token after `ids`: raw logits in greedy decoding,
    /// log-probabilities in beam search, as transformers passes them. None
    /// by default.
    fn process_logits(&self, _ids: &[u32], _scores: &mut [f32]) {}
}

/// A generated sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct Generated {
    /// Every id, the prompt included.
    pub ids: Vec<u32>,
    /// The log-probability of the new tokens under the model (its raw
    /// logits, before the logits processors).
    pub log_prob: f64,
}

/// Decoding from `prompt` as `config` says: beam search with more than one
/// beam, greedy otherwise.
pub fn generate<D: StepDecoder + Clone>(
    mut decoder: D,
    prompt: &[u32],
    config: &GenerationConfig,
) -> Result<Generated, LocalError> {
    if config.num_beams > 1 {
        beam_search(decoder, prompt, config)
    } else {
        greedy(&mut decoder, prompt, config)
    }
}

/// Greedy decoding from `prompt` with `config`'s limits and logits
/// processors (repetition penalty, no-repeat n-grams, minimum length, in
/// transformers' order). Generation stops after an end token or at the
/// length limit.
pub fn greedy(
    decoder: &mut dyn StepDecoder,
    prompt: &[u32],
    config: &GenerationConfig,
) -> Result<Generated, LocalError> {
    if prompt.is_empty() {
        return Err(LocalError::Compute("generation needs a prompt".into()));
    }
    let max_total = config.max_total(prompt.len());
    let min_total = config.min_total(prompt.len());
    let mut ids = prompt.to_vec();
    let mut log_prob = 0.0;
    let mut logits = decoder.feed(prompt)?;
    while ids.len() < max_total {
        check_logits(&logits, decoder.vocab_size())?;
        let raw_log_norm = log_sum_exp(&logits);
        let mut processed = logits.clone();
        process(&mut processed, &ids, config, min_total);
        decoder.process_logits(&ids, &mut processed);
        let next = first_max(&processed);
        log_prob += f64::from(logits[next as usize]) - raw_log_norm;
        ids.push(next);
        if config.eos_token_ids.contains(&next) || ids.len() >= max_total {
            break;
        }
        logits = decoder.feed(&[next])?;
    }
    Ok(Generated { ids, log_prob })
}

/// The score transformers gives a beam that must not be chosen.
const NEVER: f32 = -1.0e9;

/// One running hypothesis of beam search.
#[derive(Clone)]
struct Beam<D> {
    ids: Vec<u32>,
    /// The sum of its tokens' processed log-probabilities.
    score: f32,
    /// The sum of its tokens' raw log-probabilities.
    raw: f64,
    decoder: D,
    /// The logits of its next token.
    logits: Vec<f32>,
}

/// A finished hypothesis (or an empty slot, scored [`NEVER`]).
#[derive(Clone)]
struct Finished {
    ids: Vec<u32>,
    /// Its score divided by its length to the length penalty.
    score: f32,
    raw: f64,
    done: bool,
}

/// One continuation of a running beam.
struct Candidate {
    beam: usize,
    token: u32,
    /// The beam's score plus the token's processed log-probability.
    score: f32,
    raw: f64,
    /// Whether it ends the sequence (an end token or the length limit).
    stops: bool,
}

/// Beam search as transformers 4.57's `_beam_search` runs it for one input:
/// `num_beams` running hypotheses, each step's best `2 * num_beams` (more
/// with several end tokens) continuations by summed log-probability after
/// the logits processors, finished ones scored by length
/// (`length_penalty`) and kept `num_beams` at a time, and its stopping
/// rules (`early_stopping`). Each hypothesis has its own decoder (a clone,
/// which shares what the hypotheses have in common). Returns the best
/// finished sequence; its `log_prob` is the sum of its tokens' raw
/// log-probabilities.
pub fn beam_search<D: StepDecoder + Clone>(
    mut decoder: D,
    prompt: &[u32],
    config: &GenerationConfig,
) -> Result<Generated, LocalError> {
    if prompt.is_empty() {
        return Err(LocalError::Compute("generation needs a prompt".into()));
    }
    let beams = config.num_beams.max(1);
    let max_total = config.max_total(prompt.len());
    let min_total = config.min_total(prompt.len());
    let vocab = decoder.vocab_size();
    let keep = 2.max(1 + config.eos_token_ids.len()) * beams;
    let logits = decoder.feed(prompt)?;
    if prompt.len() >= max_total {
        return Ok(Generated {
            ids: prompt.to_vec(),
            log_prob: 0.0,
        });
    }
    // Every beam starts as the prompt; all but the first are out of the
    // running until the first step has fanned out.
    let mut running: Vec<Beam<D>> = (0..beams)
        .map(|b| Beam {
            ids: prompt.to_vec(),
            score: if b == 0 { 0.0 } else { NEVER },
            raw: 0.0,
            decoder: decoder.clone(),
            logits: logits.clone(),
        })
        .collect();
    let mut finished = vec![
        Finished {
            ids: prompt.to_vec(),
            score: NEVER,
            raw: 0.0,
            done: false,
        };
        beams
    ];
    let mut may_improve = true;
    loop {
        let length = running[0].ids.len();
        let candidates = top_continuations(&running, vocab, keep, config, min_total, max_total)?;
        // The next running beams: the best continuations that do not stop.
        let running_scores: Vec<f32> = candidates
            .iter()
            .map(|c| if c.stops { c.score + NEVER } else { c.score })
            .collect();
        let order = descending(&running_scores);
        // Finished hypotheses: the best `beams` of those kept so far and the
        // top `beams` candidates that just stopped.
        let penalty = ((length + 1 - prompt.len()) as f32).powf(config.length_penalty);
        let full = finished.iter().all(|f| f.done) && config.early_stopping == EarlyStopping::Done;
        let mut merged = finished.clone();
        for (k, c) in candidates.iter().enumerate() {
            let just_finished = c.stops && k < beams;
            let mut score = c.score / penalty;
            for (applies, offset) in [
                (full, NEVER),
                (!may_improve, NEVER),
                (!just_finished, NEVER),
            ] {
                if applies {
                    score += offset;
                }
            }
            let mut ids = running[c.beam].ids.clone();
            ids.push(c.token);
            merged.push(Finished {
                ids,
                score,
                raw: c.raw,
                done: just_finished,
            });
        }
        let merged_scores: Vec<f32> = merged.iter().map(|f| f.score).collect();
        finished = descending(&merged_scores)
            .into_iter()
            .take(beams)
            .map(|i| merged[i].clone())
            .collect();
        running = order
            .into_iter()
            .take(beams)
            .map(|k| {
                let c = &candidates[k];
                let source = &running[c.beam];
                let mut ids = source.ids.clone();
                ids.push(c.token);
                Beam {
                    ids,
                    score: running_scores[k],
                    raw: c.raw,
                    decoder: source.decoder.clone(),
                    logits: Vec::new(),
                }
            })
            .collect();
        // Could a running beam still beat the worst finished one?
        let length = length + 1;
        let best_length =
            if config.early_stopping == EarlyStopping::Never && config.length_penalty > 0.0 {
                max_total - prompt.len()
            } else {
                length - prompt.len()
            };
        let best_possible = running[0].score / (best_length as f32).powf(config.length_penalty);
        let worst_finished = finished
            .iter()
            .map(|f| f.score)
            .fold(f32::INFINITY, f32::min);
        may_improve &= finished
            .iter()
            .any(|f| best_possible > if f.done { worst_finished } else { NEVER });
        let all_done = finished.iter().all(|f| f.done);
        if !may_improve
            || (all_done && config.early_stopping == EarlyStopping::Done)
            || candidates.iter().all(|c| c.stops)
        {
            break;
        }
        for beam in &mut running {
            let last = beam.ids[beam.ids.len() - 1];
            beam.logits = beam.decoder.feed(&[last])?;
        }
    }
    let best = finished.swap_remove(0);
    Ok(Generated {
        ids: best.ids,
        log_prob: best.raw,
    })
}

/// The `keep` best continuations of the running beams by summed processed
/// log-probability, best first (ties to the lower beam, then token).
fn top_continuations<D: StepDecoder>(
    running: &[Beam<D>],
    vocab: usize,
    keep: usize,
    config: &GenerationConfig,
    min_total: usize,
    max_total: usize,
) -> Result<Vec<Candidate>, LocalError> {
    let mut candidates = Vec::with_capacity(running.len() * keep);
    for (b, beam) in running.iter().enumerate() {
        check_logits(&beam.logits, vocab)?;
        let raw = log_softmax(&beam.logits);
        let mut processed = raw.clone();
        process(&mut processed, &beam.ids, config, min_total);
        beam.decoder.process_logits(&beam.ids, &mut processed);
        let scores: Vec<f32> = processed.iter().map(|lp| lp + beam.score).collect();
        for v in descending(&scores).into_iter().take(keep) {
            let stops =
                config.eos_token_ids.contains(&(v as u32)) || beam.ids.len() + 1 >= max_total;
            candidates.push(Candidate {
                beam: b,
                token: v as u32,
                score: scores[v],
                raw: beam.raw + f64::from(raw[v]),
                stops,
            });
        }
    }
    let scores: Vec<f32> = candidates.iter().map(|c| c.score).collect();
    let order = descending(&scores);
    let mut slots: Vec<Option<Candidate>> = candidates.into_iter().map(Some).collect();
    Ok(order
        .into_iter()
        .take(keep)
        .filter_map(|i| slots[i].take())
        .collect())
}

/// The indices of `values` from the largest down, equal values in index
/// order.
fn descending(values: &[f32]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[b].total_cmp(&values[a]));
    order
}

/// `log_softmax` of `logits` in f32, as PyTorch computes it.
fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| f64::from(l - max).exp()).sum();
    let log_sum = sum.ln() as f32;
    logits.iter().map(|&l| l - max - log_sum).collect()
}

/// The logits processors the settings switch on, in transformers' order:
/// repetition penalty, no-repeat n-grams, then the end tokens banned while
/// the sequence is shorter than `min_total`.
fn process(values: &mut [f32], ids: &[u32], config: &GenerationConfig, min_total: usize) {
    penalise_repetition(values, ids, config.repetition_penalty);
    ban_repeated_ngrams(values, ids, config.no_repeat_ngram_size);
    if ids.len() < min_total {
        for &eos in &config.eos_token_ids {
            if let Some(l) = values.get_mut(eos as usize) {
                *l = f32::NEG_INFINITY;
            }
        }
    }
}

/// Refuses logits that do not cover the vocabulary.
fn check_logits(logits: &[f32], vocab: usize) -> Result<(), LocalError> {
    if logits.len() == vocab {
        Ok(())
    } else {
        Err(LocalError::Compute(format!(
            "the decoder gave {} logits for a vocabulary of {vocab}",
            logits.len()
        )))
    }
}

/// `log(sum(exp(x)))`, computed stably in f64.
fn log_sum_exp(values: &[f32]) -> f64 {
    let max = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() {
        return f64::from(max);
    }
    let sum: f64 = values
        .iter()
        .map(|&v| (f64::from(v) - f64::from(max)).exp())
        .sum();
    f64::from(max) + sum.ln()
}

/// The index of the first largest value (as `torch.argmax`).
fn first_max(values: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    best as u32
}

/// `RepetitionPenaltyLogitsProcessor`: every token already in the sequence
/// gets its logit divided by the penalty (multiplied when negative).
fn penalise_repetition(logits: &mut [f32], ids: &[u32], penalty: f32) {
    if penalty == 1.0 {
        return;
    }
    let mut seen = std::collections::HashSet::new();
    for &id in ids {
        if seen.insert(id)
            && let Some(l) = logits.get_mut(id as usize)
        {
            *l = if *l < 0.0 { *l * penalty } else { *l / penalty };
        }
    }
}

/// `NoRepeatNGramLogitsProcessor`: a token that would repeat an n-gram
/// already in the sequence is banned.
fn ban_repeated_ngrams(logits: &mut [f32], ids: &[u32], n: usize) {
    if n == 0 || ids.len() + 1 < n {
        return;
    }
    let prefix = &ids[ids.len() + 1 - n..];
    for window in ids.windows(n) {
        if window[..n - 1] == *prefix
            && let Some(l) = logits.get_mut(window[n - 1] as usize)
        {
            *l = f32::NEG_INFINITY;
        }
    }
}

/// Turns generated ids into text as the transformers tokenizer's
/// `decode(ids, skip_special_tokens=True)` does, including its optional
/// clean-up of spaces before punctuation.
pub struct GenerationTokenizer {
    tokenizer: Tokenizer,
    clean_up_spaces: bool,
}

impl GenerationTokenizer {
    /// Load from `tokenizer.json`, or for byte-level BPE repositories without
    /// one, from `vocab.json` and `merges.txt` with the special tokens of
    /// `tokenizer_config.json`.
    pub fn load(files: &ModelFiles) -> Result<Self, LocalError> {
        let tokenizer_config: Value = files
            .json_if_present("tokenizer_config.json")?
            .unwrap_or(Value::Null);
        let tokenizer = if let Some(path) = files.get("tokenizer.json") {
            Tokenizer::from_file(&path)
                .map_err(|e| files.load_error(format!("tokenizer.json: {e}")))?
        } else if files.has_all(&["vocab.json", "merges.txt"]) {
            byte_level_bpe(files, &tokenizer_config)?
        } else {
            return Err(LocalError::MissingFiles {
                model: files.id().to_string(),
                missing: "tokenizer.json (or vocab.json and merges.txt)".into(),
            });
        };
        let clean_up_spaces = tokenizer_config
            .get("clean_up_tokenization_spaces")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        Ok(Self {
            tokenizer,
            clean_up_spaces,
        })
    }

    /// The text of `ids`, special tokens skipped.
    pub fn decode(&self, ids: &[u32]) -> Result<String, LocalError> {
        let text = self
            .tokenizer
            .decode(ids, true)
            .map_err(|e| LocalError::Compute(format!("cannot decode the generated tokens: {e}")))?;
        Ok(if self.clean_up_spaces {
            clean_up_tokenization(&text)
        } else {
            text
        })
    }

    /// The ids of `text` (`what` in messages) for `task`, refused as bad
    /// input when there are more than `limit`.
    pub fn encode_within(
        &self,
        task: hgpt_core::task::TaskKind,
        what: &str,
        text: &str,
        limit: usize,
    ) -> Result<Vec<u32>, LocalError> {
        let ids = self.encode(text)?;
        if ids.len() > limit {
            return Err(crate::error::bad_input(
                task,
                format!(
                    "{what} is {} tokens long; the model reads at most {limit}",
                    ids.len()
                ),
            ));
        }
        Ok(ids)
    }

    /// The ids of `text` with the tokenizer's special tokens
    /// (`[CLS] ... [SEP]` for BERT).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, LocalError> {
        let encoding = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| LocalError::Compute(format!("cannot tokenize the text: {e}")))?;
        Ok(encoding.get_ids().to_vec())
    }
}

/// A GPT-2 style tokenizer from `vocab.json` and `merges.txt`.
fn byte_level_bpe(files: &ModelFiles, tokenizer_config: &Value) -> Result<Tokenizer, LocalError> {
    use tokenizers::models::bpe::BPE;
    use tokenizers::{AddedToken, decoders::byte_level::ByteLevel};
    let paths = files.require(&["vocab.json", "merges.txt"])?;
    let path_str = |i: usize| paths[i].to_string_lossy().into_owned();
    let bpe = BPE::from_file(&path_str(0), &path_str(1))
        .build()
        .map_err(|e| files.load_error(format!("vocab.json / merges.txt: {e}")))?;
    let mut tokenizer = Tokenizer::new(bpe);
    let add_prefix_space = tokenizer_config
        .get("add_prefix_space")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    tokenizer.with_pre_tokenizer(Some(ByteLevel::new(add_prefix_space, true, true)));
    tokenizer.with_decoder(Some(ByteLevel::default()));
    let special: Vec<AddedToken> = special_tokens(tokenizer_config)
        .into_iter()
        .map(|content| AddedToken::from(content, true))
        .collect();
    tokenizer.add_special_tokens(&special);
    Ok(tokenizer)
}

/// The special tokens a `tokenizer_config.json` names (`added_tokens_decoder`
/// entries marked special, and `bos`/`eos`/`unk`/`pad` tokens).
fn special_tokens(tokenizer_config: &Value) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    if let Some(Value::Object(added)) = tokenizer_config.get("added_tokens_decoder") {
        for entry in added.values() {
            if entry.get("special").and_then(Value::as_bool) == Some(true)
                && let Some(content) = entry.get("content").and_then(Value::as_str)
            {
                out.push(content.to_string());
            }
        }
    }
    for key in ["bos_token", "eos_token", "unk_token", "pad_token"] {
        let content = match tokenizer_config.get(key) {
            Some(Value::String(s)) => Some(s.as_str()),
            Some(Value::Object(o)) => o.get("content").and_then(Value::as_str),
            _ => None,
        };
        if let Some(content) = content
            && !out.iter().any(|t| t == content)
        {
            out.push(content.to_string());
        }
    }
    out
}

/// transformers' `clean_up_tokenization`.
pub fn clean_up_tokenization(text: &str) -> String {
    text.replace(" .", ".")
        .replace(" ?", "?")
        .replace(" !", "!")
        .replace(" ,", ",")
        .replace(" ' ", "'")
        .replace(" n't", "n't")
        .replace(" 'm", "'m")
        .replace(" 's", "'s")
        .replace(" 've", "'ve")
        .replace(" 're", "'re")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => unreachable!(),
        }
    }

    #[test]
    fn the_pipeline_honours_max_length_but_not_max_new_tokens() {
        // As transformers 4.57's pipeline resolves them (checked in Python).
        let cases = [
            (json!({"max_new_tokens": 5}), Some(256), 20),
            (json!({"max_length": 12}), None, 12),
            (json!({"max_length": 20}), Some(256), 20),
            (json!({}), Some(256), 20),
        ];
        for (model, new_tokens, max_length) in cases {
            let config = GenerationConfig::from_fields(&fields(model.clone())).unwrap();
            assert_eq!(config.max_new_tokens, new_tokens, "{model}");
            assert_eq!(config.max_length, max_length, "{model}");
        }
        let config = GenerationConfig::from_fields(&fields(json!({"max_length": 12}))).unwrap();
        assert_eq!(config.max_total(1), 12);
        assert_eq!(GenerationConfig::default().max_total(1), 257);
    }

    #[test]
    fn bad_generation_fields_are_named() {
        for (value, key) in [
            (json!({"max_length": -1}), "max_length"),
            (json!({"eos_token_id": "x"}), "eos_token_id"),
            (json!({"repetition_penalty": 0}), "repetition_penalty"),
        ] {
            let err = GenerationConfig::from_fields(&fields(value)).unwrap_err();
            assert!(err.contains(key), "{err}");
        }
        let config =
            GenerationConfig::from_fields(&fields(json!({"eos_token_id": [3, 5]}))).unwrap();
        assert_eq!(config.eos_token_ids, vec![3, 5]);
        for (value, key) in [
            (json!({"early_stopping": "soon"}), "early_stopping"),
            (json!({"length_penalty": "long"}), "length_penalty"),
        ] {
            let err = GenerationConfig::from_fields(&fields(value)).unwrap_err();
            assert!(err.contains(key), "{err}");
        }
    }

    #[test]
    fn beam_settings_are_read_as_transformers_names_them() {
        let config = GenerationConfig::from_fields(&fields(json!({
            "num_beams": 4, "early_stopping": "never", "length_penalty": 2.0
        })))
        .unwrap();
        assert_eq!(
            (
                config.num_beams,
                config.early_stopping,
                config.length_penalty
            ),
            (4, EarlyStopping::Never, 2.0)
        );
        let config =
            GenerationConfig::from_fields(&fields(json!({"early_stopping": true}))).unwrap();
        assert_eq!(config.early_stopping, EarlyStopping::Done);
        let config = GenerationConfig::from_fields(&fields(json!({}))).unwrap();
        assert_eq!(
            (
                config.num_beams,
                config.early_stopping,
                config.length_penalty
            ),
            (1, EarlyStopping::Heuristic, 1.0)
        );
    }

    /// Scripted logits: step i returns `steps[i]`.
    struct Scripted {
        steps: Vec<Vec<f32>>,
        fed: Vec<Vec<u32>>,
    }

    impl StepDecoder for Scripted {
        fn feed(&mut self, tokens: &[u32]) -> Result<Vec<f32>, LocalError> {
            self.fed.push(tokens.to_vec());
            let step = (self.fed.len() - 1).min(self.steps.len() - 1);
            Ok(self.steps[step].clone())
        }
        fn vocab_size(&self) -> usize {
            4
        }
    }

    #[test]
    fn greedy_stops_at_the_end_token_or_the_length_limit() {
        let steps = vec![
            vec![0.0, 1.0, 0.0, 0.5],
            vec![0.0, 0.0, 2.0, 0.5],
            vec![0.0, 0.0, 0.0, 3.0],
        ];
        let config = GenerationConfig {
            eos_token_ids: vec![3],
            ..GenerationConfig::default()
        };
        let mut decoder = Scripted {
            steps: steps.clone(),
            fed: Vec::new(),
        };
        let generated = greedy(&mut decoder, &[0], &config).unwrap();
        assert_eq!(generated.ids, [0, 1, 2, 3]);
        // The product of each chosen token's softmax probability.
        let p = |row: &[f32], i: usize| {
            let sum: f64 = row.iter().map(|&v| f64::from(v).exp()).sum();
            f64::from(row[i]).exp() / sum
        };
        let want = p(&steps[0], 1) * p(&steps[1], 2) * p(&steps[2], 3);
        assert!((generated.log_prob.exp() - want).abs() < 1e-12);
        assert_eq!(decoder.fed, [vec![0], vec![1], vec![2]]);

        let short = GenerationConfig {
            max_new_tokens: None,
            max_length: 3,
            ..config.clone()
        };
        let mut decoder = Scripted {
            steps: steps.clone(),
            fed: Vec::new(),
        };
        assert_eq!(greedy(&mut decoder, &[0], &short).unwrap().ids, [0, 1, 2]);

        // min_length keeps the end token away until the sequence is long enough.
        let long = GenerationConfig {
            min_length: 5,
            ..config
        };
        let mut decoder = Scripted {
            steps,
            fed: Vec::new(),
        };
        assert_eq!(
            greedy(&mut decoder, &[0], &long).unwrap().ids,
            [0, 1, 2, 0, 0, 3]
        );
    }

    #[test]
    fn repetition_processors_change_the_choice() {
        let mut logits = vec![2.0, -1.0, 1.5];
        penalise_repetition(&mut logits, &[0, 1, 0], 2.0);
        assert_eq!(logits, [1.0, -2.0, 1.5]);
        let mut logits = vec![0.0; 4];
        // 1 2 ... 1 -> 2 would repeat the bigram "1 2".
        ban_repeated_ngrams(&mut logits, &[1, 2, 3, 1], 2);
        assert_eq!(logits[2], f32::NEG_INFINITY);
        assert_eq!(logits.iter().filter(|l| l.is_infinite()).count(), 1);
    }

    #[test]
    fn spaces_before_punctuation_are_cleaned() {
        assert_eq!(
            clean_up_tokenization("a dog , is n't it ? yes ."),
            "a dog, isn't it? yes."
        );
    }
}
