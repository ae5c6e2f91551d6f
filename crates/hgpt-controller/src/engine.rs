//! Generation: the chat prompt, prefix reuse, the decoding loop with the
//! grammar's token mask and forced tokens, sampling and stop tokens.

use crate::error::{ControllerError, Result};
use crate::gguf::GgufFile;
use crate::model::{KvCache, Model};
use crate::prompt_cache::{CacheHit, ModelIdentity, PrefixCache, common_prefix};
use crate::template::ChatTemplate;
use crate::tokenizer::Vocab;
use candle_core::Device;
use hgpt_core::backend::ChatMessage;
use hgpt_core::shape::OutputShape;
use llguidance::api::TopLevelGrammar;
use llguidance::{Matcher, ParserFactory};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How tokens are picked.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampling {
    /// 0 (or less) picks the most likely token (greedy).
    pub temperature: f32,
    /// Nucleus sampling: the smallest set of tokens whose probability reaches this.
    pub top_p: f32,
    /// Seed of the sampler.
    pub seed: u64,
    /// Penalty (> 1) for tokens among the last 64 generated ones.
    pub repeat_penalty: f32,
}

impl Default for Sampling {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_p: 1.0,
            seed: 299_792_458,
            repeat_penalty: 1.0,
        }
    }
}

/// Settings of a loaded engine.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineOptions {
    /// Positions the model runs with (capped at its trained context).
    pub context: usize,
    /// Where prefilled prompt prefixes are saved; `None` keeps them in memory only.
    pub cache_dir: Option<PathBuf>,
    /// A `tokenizer.json` to use instead of the GGUF vocabulary.
    pub tokenizer: Option<PathBuf>,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            context: 4096,
            cache_dir: None,
            tokenizer: None,
        }
    }
}

/// One generation.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    /// The conversation, system prompt first.
    pub messages: Vec<ChatMessage>,
    /// The shape the answer must take, if any.
    pub shape: Option<OutputShape>,
    /// Cap on generated tokens.
    pub max_tokens: usize,
    /// How tokens are picked.
    pub sampling: Sampling,
}

/// Why generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopCause {
    /// The model ended its turn, or the grammar was complete.
    Finished,
    /// The token limit was reached.
    Length,
    /// The caller stopped listening.
    Cancelled,
}

/// What a generation produced and what it cost.
#[derive(Debug, Clone)]
pub struct Generation {
    /// The generated text.
    pub text: String,
    /// Why it stopped.
    pub stop: StopCause,
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Prompt tokens taken from a cached prefix.
    pub cached_tokens: usize,
    /// Where the cached prefix came from.
    pub cache_hit: CacheHit,
    /// Tokens generated (sampled or forced by the grammar).
    pub generated_tokens: usize,
    /// Of those, tokens the grammar forced.
    pub forced_tokens: usize,
    /// Time spent feeding the prompt.
    pub prefill: Duration,
    /// Time until the first generated token.
    pub first_token: Duration,
    /// Time spent computing token masks.
    pub mask_time: Duration,
    /// Total time.
    pub total: Duration,
}

/// A loaded model ready to generate: weights, tokenizer, template, grammar
/// machinery and prefix caches. Not thread-safe by itself: callers hold it
/// behind a lock and run it on a blocking thread.
pub struct Engine {
    model: Model,
    vocab: Vocab,
    template: ChatTemplate,
    stop_tokens: Vec<u32>,
    /// Per token id: its text is only closing characters (`"`, `}`, `]`).
    closing: Vec<bool>,
    factory: Arc<ParserFactory>,
    prefixes: PrefixCache,
    name: String,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("name", &self.name).finish()
    }
}

impl Engine {
    /// Load a GGUF file: weights, vocabulary, chat template and stop tokens
    /// all come from the file (or the `tokenizer.json` named in `options`).
    pub fn load(path: &Path, device: &Device, options: &EngineOptions) -> Result<Self> {
        let mut gguf = GgufFile::open(path)?;
        gguf.architecture()?;
        let vocab = match &options.tokenizer {
            Some(json) => Vocab::from_tokenizer_json(json, &gguf)?,
            None => match Vocab::from_gguf(&gguf) {
                Ok(v) => v,
                Err(e) => {
                    let beside = path.with_file_name("tokenizer.json");
                    if beside.is_file() {
                        Vocab::from_tokenizer_json(&beside, &gguf)?
                    } else {
                        return Err(e);
                    }
                }
            },
        };
        let template_source = gguf
            .string("tokenizer.chat_template")
            .map(str::to_string)
            .ok_or_else(|| {
                ControllerError::Template(format!(
                    "{} has no tokenizer.chat_template; hgpt needs an instruct model's GGUF",
                    path.display()
                ))
            })?;
        let text_of = |id: Option<u32>| {
            id.and_then(|id| vocab.token_text(id))
                .unwrap_or_default()
                .to_string()
        };
        let template = ChatTemplate::new(
            &template_source,
            &text_of(vocab.bos()),
            &text_of(vocab.eos()),
        )?;
        let stop_tokens = stop_tokens(&gguf, &vocab);
        let eos = stop_tokens.first().copied().ok_or_else(|| {
            ControllerError::Tokenizer("the model names no end-of-turn token".into())
        })?;
        let model = Model::load(&mut gguf, device, options.context)?;
        if vocab.len() > model.config().vocab {
            return Err(ControllerError::Tokenizer(format!(
                "the tokenizer has {} tokens but the model only {}",
                vocab.len(),
                model.config().vocab
            )));
        }
        let env = vocab.tok_env(eos);
        let mut factory =
            ParserFactory::new_simple(&env).map_err(|e| ControllerError::Grammar(e.to_string()))?;
        factory.quiet();
        let closing = (0..vocab.len() as u32)
            .map(|id| {
                let bytes = vocab.text_bytes(id);
                !vocab.is_special(id)
                    && !bytes.is_empty()
                    && bytes.iter().all(|b| matches!(b, b'"' | b'}' | b']'))
            })
            .collect();
        let identity = ModelIdentity::of(path, model.context());
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "embedded".to_string());
        Ok(Self {
            model,
            vocab,
            template,
            stop_tokens,
            closing,
            factory: Arc::new(factory),
            prefixes: PrefixCache::new(identity, options.cache_dir.clone()),
            name,
        })
    }

    /// The model file's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The decoder.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The vocabulary.
    pub fn vocab(&self) -> &Vocab {
        &self.vocab
    }

    /// Bytes held: weights plus cached prefixes.
    pub fn memory_bytes(&self) -> usize {
        self.model.weight_bytes() + self.prefixes.bytes()
    }

    /// The prompt tokens of a conversation, and how many of them are the
    /// same for every request that differs only in its last message.
    pub fn prompt_tokens(&self, messages: &[ChatMessage]) -> Result<(Vec<u32>, usize)> {
        let tokens = self.vocab.encode(&self.template.render(messages)?)?;
        let stable = match messages.split_last() {
            Some((last, rest)) => {
                let mut probe = rest.to_vec();
                probe.push(ChatMessage::new(last.role, "\u{1}"));
                let other = self.vocab.encode(&self.template.render(&probe)?)?;
                common_prefix(&tokens, &other)
            }
            None => 0,
        };
        Ok((tokens, stable))
    }

    /// A grammar matcher for a shape.
    fn matcher(&self, shape: &OutputShape) -> Result<Matcher> {
        let grammar = TopLevelGrammar::from_lark(shape.lark());
        let parser = self
            .factory
            .create_parser(grammar)
            .map_err(|e| ControllerError::Grammar(format!("{} grammar: {e}", shape.name())))?;
        Ok(Matcher::new(Ok(parser)))
    }

    /// Generate an answer; `on_text` gets the text as it is produced and
    /// returns `false` to stop.
    pub fn generate(
        &mut self,
        request: &GenerateRequest,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Generation> {
        let started = Instant::now();
        let (tokens, stable) = self.prompt_tokens(&request.messages)?;
        // A choice always gets room to finish; a plan stops at the limit.
        let max_tokens = match request
            .shape
            .as_ref()
            .and_then(OutputShape::max_output_tokens)
        {
            Some(bound) => request.max_tokens.max(bound),
            None => request.max_tokens,
        };
        let reserve = max_tokens.min(self.model.context() / 4).max(1);
        // Shapes without a small bound (plans) are closed near the limit.
        let closable = request
            .shape
            .as_ref()
            .is_some_and(|s| s.max_output_tokens().is_none());
        if tokens.len() + reserve > self.model.context() {
            return Err(ControllerError::ContextTooLong {
                prompt: tokens.len(),
                context: self.model.context(),
                reserve,
            });
        }
        let mut matcher = request
            .shape
            .as_ref()
            .map(|s| self.matcher(s))
            .transpose()?;
        let (mut cache, hit) = self.prefixes.start(&self.model, &tokens, stable)?;
        let cached = cache.len();
        // Feed the stable part first and keep it for the next request.
        let mut logits = None;
        if stable > cached && stable < tokens.len() {
            logits = Some(self.model.forward(&tokens[cached..stable], &mut cache)?);
            self.prefixes.remember(&cache, stable)?;
        }
        if cache.len() < tokens.len() {
            logits = Some(self.model.forward(&tokens[cache.len()..], &mut cache)?);
        }
        let mut logits =
            logits.ok_or_else(|| ControllerError::Inference("the prompt is empty".into()))?;
        let prefill = started.elapsed();

        let mut sampler = Sampler::new(&request.sampling);
        let mut text = Utf8Stream::default();
        let mut generated: Vec<u32> = Vec::new();
        let mut forced_count = 0;
        let mut mask_time = Duration::ZERO;
        let mut first_token = None;
        let mut stop = StopCause::Length;
        'decode: while generated.len() < max_tokens {
            let mut next: Vec<u32> = Vec::new();
            if let Some(m) = matcher.as_mut() {
                let t = Instant::now();
                let forced = m.consume_ff_tokens();
                if !forced.is_empty() {
                    forced_count += forced.len();
                    next = forced;
                } else {
                    let mask = m
                        .compute_mask()
                        .map_err(|e| ControllerError::Grammar(e.to_string()))?;
                    let mut values = logits.to_vec1::<f32>()?;
                    // Near the limit a plan is closed rather than cut off:
                    // wherever the grammar allows closing characters, only
                    // they may follow.
                    let closing = closable
                        && max_tokens - generated.len() <= CLOSING_RESERVE
                        && self
                            .closing
                            .iter()
                            .enumerate()
                            .any(|(id, c)| *c && mask.is_allowed(id as u32));
                    for (id, v) in values.iter_mut().enumerate() {
                        let closes = self.closing.get(id).copied().unwrap_or(false);
                        if !mask.is_allowed(id as u32) || (closing && !closes) {
                            *v = f32::NEG_INFINITY;
                        }
                    }
                    mask_time += t.elapsed();
                    let token = sampler.pick(&mut values, &generated)?;
                    if self.stop_tokens.contains(&token) {
                        stop = StopCause::Finished;
                        break 'decode;
                    }
                    m.consume_token(token)
                        .map_err(|e| ControllerError::Grammar(e.to_string()))?;
                    next.push(token);
                }
            } else {
                let mut values = logits.to_vec1::<f32>()?;
                let token = sampler.pick(&mut values, &generated)?;
                if self.stop_tokens.contains(&token) {
                    stop = StopCause::Finished;
                    break 'decode;
                }
                next.push(token);
            }
            first_token.get_or_insert_with(|| started.elapsed());
            for &token in &next {
                generated.push(token);
                if let Some(piece) = text.push(self.vocab.text_bytes(token))
                    && !on_text(&piece)
                {
                    stop = StopCause::Cancelled;
                    break 'decode;
                }
            }
            if matcher.as_ref().is_some_and(Matcher::is_stopped) {
                stop = StopCause::Finished;
                break;
            }
            if generated.len() >= max_tokens {
                break;
            }
            if cache.len() + next.len() > self.model.context() {
                break;
            }
            logits = self.model.forward(&next, &mut cache)?;
        }
        if let Some(rest) = text.finish()
            && stop != StopCause::Cancelled
        {
            on_text(&rest);
        }
        Ok(Generation {
            text: text.into_text(),
            stop,
            prompt_tokens: tokens.len(),
            cached_tokens: cached,
            cache_hit: hit,
            generated_tokens: generated.len(),
            forced_tokens: forced_count,
            prefill,
            first_token: first_token.unwrap_or_else(|| started.elapsed()),
            mask_time,
            total: started.elapsed(),
        })
    }

    /// Logits after feeding `tokens` to a fresh cache (for parity checks).
    pub fn logits(&self, tokens: &[u32]) -> Result<Vec<f32>> {
        let mut cache = self.model.new_cache();
        Ok(self.model.forward(tokens, &mut cache)?.to_vec1::<f32>()?)
    }

    /// Logits after `prompt`, then after each token of `continuation` fed in
    /// turn (teacher forcing; for parity checks and benchmarks).
    pub fn forced_logits(&self, prompt: &[u32], continuation: &[u32]) -> Result<Vec<Vec<f32>>> {
        let mut cache: KvCache = self.model.new_cache();
        let mut out = Vec::with_capacity(continuation.len() + 1);
        out.push(self.model.forward(prompt, &mut cache)?.to_vec1::<f32>()?);
        for &token in continuation {
            out.push(self.model.forward(&[token], &mut cache)?.to_vec1::<f32>()?);
        }
        Ok(out)
    }
}

/// Tokens before the limit at which a plan starts closing: enough for the
/// structure a plan can be in the middle of (a key, a reference, brackets).
const CLOSING_RESERVE: usize = 48;

/// The model's end-of-turn tokens: `tokenizer.ggml.eos_token_id`,
/// `tokenizer.ggml.eot_token_id`, and the end markers its vocabulary has.
fn stop_tokens(gguf: &GgufFile, vocab: &Vocab) -> Vec<u32> {
    let mut out = Vec::new();
    for key in [
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.eot_token_id",
        "tokenizer.ggml.eom_token_id",
    ] {
        if let Some(id) = gguf.unsigned(key).and_then(|v| u32::try_from(v).ok())
            && (id as usize) < vocab.len()
            && !out.contains(&id)
        {
            out.push(id);
        }
    }
    for text in [
        "<|im_end|>",
        "<|eot_id|>",
        "<|end|>",
        "<end_of_turn>",
        "<|endoftext|>",
        "<|eom_id|>",
    ] {
        if let Some(id) = vocab.token_id(text)
            && vocab.is_special(id)
            && !out.contains(&id)
        {
            out.push(id);
        }
    }
    out
}

fn argmax(values: &[f32]) -> Result<u32> {
    values
        .iter()
        .enumerate()
        .filter(|(_, v)| !v.is_nan())
        .max_by(|a, b| a.1.total_cmp(b.1))
        .filter(|(_, v)| v.is_finite())
        .map(|(i, _)| i as u32)
        .ok_or_else(|| ControllerError::Inference("no token is allowed here".into()))
}

/// Picks tokens: greedy, or temperature and top-p with a seeded generator.
struct Sampler {
    settings: Sampling,
    state: u64,
}

impl Sampler {
    fn new(settings: &Sampling) -> Self {
        Self {
            settings: settings.clone(),
            state: settings.seed,
        }
    }

    /// SplitMix64: a small, well-mixed generator; enough for sampling.
    fn next_f64(&mut self) -> f64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    fn pick(&mut self, logits: &mut [f32], recent: &[u32]) -> Result<u32> {
        let penalty = self.settings.repeat_penalty;
        if penalty > 0.0 && (penalty - 1.0).abs() > f32::EPSILON {
            for &t in recent.iter().rev().take(64) {
                if let Some(v) = logits.get_mut(t as usize) {
                    *v = if *v > 0.0 { *v / penalty } else { *v * penalty };
                }
            }
        }
        if self.settings.temperature <= 0.0 {
            return argmax(logits);
        }
        let max = logits
            .iter()
            .copied()
            .filter(|v| v.is_finite())
            .fold(f32::NEG_INFINITY, f32::max);
        if !max.is_finite() {
            return Err(ControllerError::Inference(
                "no token is allowed here".into(),
            ));
        }
        let mut probs: Vec<(u32, f64)> = logits
            .iter()
            .enumerate()
            .filter(|(_, v)| v.is_finite())
            .map(|(i, v)| {
                (
                    i as u32,
                    f64::from((v - max) / self.settings.temperature).exp(),
                )
            })
            .collect();
        probs.sort_by(|a, b| b.1.total_cmp(&a.1));
        let total: f64 = probs.iter().map(|p| p.1).sum();
        let top_p = f64::from(self.settings.top_p.clamp(0.0, 1.0)).max(f64::MIN_POSITIVE);
        let mut kept = 0.0;
        let mut cut = probs.len();
        for (i, p) in probs.iter().enumerate() {
            kept += p.1 / total;
            if kept >= top_p {
                cut = i + 1;
                break;
            }
        }
        probs.truncate(cut);
        let kept_total: f64 = probs.iter().map(|p| p.1).sum();
        let mut target = self.next_f64() * kept_total;
        for (id, p) in &probs {
            target -= p;
            if target <= 0.0 {
                return Ok(*id);
            }
        }
        probs
            .last()
            .map(|p| p.0)
            .ok_or_else(|| ControllerError::Inference("no token is allowed here".into()))
    }
}

/// Turns token bytes into text pieces, holding back incomplete UTF-8.
#[derive(Default)]
struct Utf8Stream {
    pending: Vec<u8>,
    text: String,
}

impl Utf8Stream {
    /// Add bytes; returns the newly complete text, if any.
    fn push(&mut self, bytes: &[u8]) -> Option<String> {
        self.pending.extend_from_slice(bytes);
        let valid = match std::str::from_utf8(&self.pending) {
            Ok(_) => self.pending.len(),
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            // An invalid sequence (not just an unfinished one): replace it.
            Err(e) => e.valid_up_to() + e.error_len().unwrap_or(1),
        };
        if valid == 0 {
            return None;
        }
        let piece = String::from_utf8_lossy(&self.pending[..valid]).into_owned();
        self.pending.drain(..valid);
        self.text.push_str(&piece);
        Some(piece)
    }

    /// Whatever is left, lossily.
    fn finish(&mut self) -> Option<String> {
        if self.pending.is_empty() {
            return None;
        }
        let piece = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        self.text.push_str(&piece);
        Some(piece)
    }

    fn into_text(self) -> String {
        self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_stream_holds_back_partial_characters() {
        let mut s = Utf8Stream::default();
        let e = "é".as_bytes();
        assert_eq!(s.push(&e[..1]), None);
        assert_eq!(s.push(&e[1..]).as_deref(), Some("é"));
        assert_eq!(s.push(b"a\xff").as_deref(), Some("a\u{FFFD}"));
        assert_eq!(s.into_text(), "éa\u{FFFD}");
    }

    #[test]
    fn greedy_sampler_takes_the_largest_allowed_logit() {
        let mut s = Sampler::new(&Sampling::default());
        let mut logits = vec![0.5, f32::NEG_INFINITY, 2.0, f32::NAN];
        assert_eq!(s.pick(&mut logits, &[]).unwrap(), 2);
        let mut none = vec![f32::NEG_INFINITY; 3];
        assert!(s.pick(&mut none, &[]).is_err());
    }

    #[test]
    fn seeded_sampling_repeats_and_respects_top_p() {
        let settings = Sampling {
            temperature: 1.0,
            top_p: 0.5,
            seed: 7,
            repeat_penalty: 1.0,
        };
        let logits = vec![3.0, 1.0, 0.0, -1.0];
        let run = || {
            let mut s = Sampler::new(&settings);
            (0..20)
                .map(|_| s.pick(&mut logits.clone(), &[]).unwrap())
                .collect::<Vec<_>>()
        };
        let a = run();
        assert_eq!(a, run());
        // Token 0 alone holds more than half the probability.
        assert!(a.iter().all(|t| *t == 0), "{a:?}");
    }
}
